/*
 * sgd.h - the update kernel: scores an event's active features and applies
 * one step of SGD, AdaGrad, FTRL-Proximal or lazy Adam to their rows, in
 * place.
 *
 * This is the one module that reads and writes embedding rows concurrently
 * without locks (Hogwild). See the comment at the top of sgd.c for why the
 * race is accepted and what it can and cannot do.
 *
 * Kernels take (layout, features, n, ...) and never start threads. They know
 * rows only through their layout (row.h), not the model that stores them.
 */
#ifndef HOGREC_SGD_H
#define HOGREC_SGD_H

#include <stdbool.h>
#include <stdint.h>

#include "hogrec/event.h"    /* HR_MAX_CTX */
#include "hogrec/row.h"      /* hr_row_layout, hr_loss, the link */
#include "hogrec/schedule.h" /* hr_optimizer, hr_group */

/* Most active features of one event: global, user, item, context, the
 * user's and the item's catalog attributes. */
#define HR_MAX_ACTIVE (3 + HR_MAX_CTX + 2 * HR_MAX_ATTRS)

/* One active feature: its row and value. */
typedef struct hr_active {
    float *row;      /* borrowed; row storage never moves */
    float x;         /* feature value */
    uint8_t group;   /* hr_group of its factors (GLOBAL: bias only) */
    uint8_t has_v;   /* 0 for the global row (w0 has no factors) */
    uint8_t side;    /* 0: none; 1: the user's side, 2: the item's side (the id and
                        its catalog attributes): pairs within a side are left out */
} hr_active;

/* Per-step parameters, resolved by the trainer from the live schedule. */
typedef struct {
    hr_loss loss;
    hr_optimizer opt;
    float rate[HR_GROUP_COUNT];    /* learning rate per group, this step */
    float l2[HR_GROUP_COUNT];      /* L2 per group */
    float clip;                    /* max gradient norm (0 = none) */
    float ftrl_beta, ftrl_l1;      /* FTRL on linear weights */
    float adam_beta1, adam_beta2;  /* Adam moment decays, in [0, 1) */
    float adam_eps;                /* Adam denominator term, > 0 */
} hr_step_params;

typedef enum {
    HR_STEP_APPLIED,
    HR_STEP_CLIPPED,          /* applied with the gradient scaled down */
    HR_STEP_SKIPPED_NONFINITE /* nothing (or not all) written: NaN/Inf */
} hr_step_result;

/* Raw score y = w0 + sum w_f x_f + sum_{f<g} <v_f, v_g> x_f x_g, in O(n k). */
double hr_sgd_score(const hr_row_layout *L, const hr_active *a, int n);

/* Scores, then updates every active row for (label, weight). *y_before
 * receives the raw score before the update and *pred_before (may be NULL)
 * the prediction (sigmoid or identity): progressive validation.
 * Never writes a NaN or Inf into a row. */
hr_step_result hr_sgd_step(const hr_row_layout *L, const hr_active *a, int n,
                           float label, float weight, const hr_step_params *p,
                           double *y_before, double *pred_before);

/* The general kernel, any shape and optimizer: what hr_sgd_step runs when
 * hr_sgd_fast_shape is false, and the reference the fused kernel is tested
 * against (within a tolerance: it sums in another order and fuses
 * multiply-adds; the variant "exact" is bit-identical to it). */
hr_step_result hr_sgd_step_general(const hr_row_layout *L, const hr_active *a, int n,
                                   float label, float weight, const hr_step_params *p,
                                   double *y_before, double *pred_before);

/* Most active features, and most of them with factors, of a shape the
 * fused kernel takes: user, item, up to 4 context features with factors,
 * and linear-only features (the global bias among them). */
#define HR_FAST_MAX_ACTIVE 11
#define HR_FAST_MAX_FACTORS 6

/* Whether hr_sgd_step takes the fused kernel: F32 rows, SGD or AdaGrad,
 * 3..HR_FAST_MAX_ACTIVE features of which 2..HR_FAST_MAX_FACTORS have
 * factors (any sides), no row named twice. */
bool hr_sgd_fast_shape(const hr_row_layout *L, const hr_active *a, int n,
                       const hr_step_params *p);

/* The fused kernel (sgd_fast.c), for a shape hr_sgd_fast_shape accepts:
 * the same model and contract as hr_sgd_step_general (a row with a
 * non-finite new value is left as it was, the step then reports
 * HR_STEP_SKIPPED_NONFINITE), in the plain dot-product form, one pass for
 * the score and one that computes gradient, state and weight per
 * coordinate. Runs the variant hr_sgd_kernel_select chose. */
hr_step_result hr_sgd_step_fast(const hr_row_layout *L, const hr_active *a, int n,
                                float label, float weight, const hr_step_params *p,
                                double *y_before, double *pred_before);

/* Chooses the variant of the fused kernel for the whole process: "generic"
 * (portable C, GCC/clang vector extensions), "avx2" (AVX2 and FMA),
 * "avx512" (AVX-512F), "exact" (the pair path of sgd.c, bit-identical to
 * the general kernel and to other CPUs; other shapes run the general
 * kernel) or "auto" (the widest this CPU runs; the default, chosen at the
 * first step). Returns false, and changes nothing, for an unknown name or
 * a variant this CPU or build lacks. Thread-safe; steps already running
 * finish on the variant they started with. */
bool hr_sgd_kernel_select(const char *name);
/* Whether this CPU and build can run the variant (the names above). */
bool hr_sgd_kernel_available(const char *name);
/* Writes the names of the variants this CPU and build run, widest first,
 * separated by spaces, into buf (len bytes, truncated to fit). */
void hr_sgd_kernel_list(char *buf, size_t len);
/* The chosen variant's name (static storage); resolves "auto" if nothing
 * was chosen yet. */
const char *hr_sgd_kernel_name(void);

/* Row bookkeeping: count += 1, last_seen = now. */
void hr_sgd_touch(const hr_row_layout *L, float *row, uint32_t now);
uint32_t hr_sgd_row_count(const hr_row_layout *L, const float *row);
uint32_t hr_sgd_row_last_seen(const hr_row_layout *L, const float *row);

/* Copies a live row into dst, packed: L->floats floats, the weights then
 * the state (fuzzy under Hogwild: each float is one consistent value, the
 * row as a whole may mix before and after an update). */
void hr_sgd_row_read(const hr_row_layout *L, const float *row, float *dst);
/* Overwrites a row from a packed copy (restore, init, reset). */
void hr_sgd_row_write(const hr_row_layout *L, float *row, const float *src);

/* ---- bf16 rows (hr_storage BF16, row.h) ----
 *
 * The kernels above take rows of either storage. A BF16 row's factors are
 * widened to f32, the step runs in f32 (the F32 kernel on the widened
 * copy: the same arithmetic), and every value the step changed is stored
 * back: factors stochastically rounded to bf16 (rounded up with the
 * probability of the dropped fraction, so the expected stored value is the
 * f32 one and steps far below a bf16 ulp still move a weight on average),
 * bias and state as f32. The random bits come from a per-thread PRNG. */

/* bf16 <-> f32. hr_bf16_round rounds to nearest even; hr_bf16_round_sr
 * adds r16 (16 random bits) below the kept bits and truncates. Both keep
 * a finite value finite (truncating where rounding up would overflow). */
float hr_bf16_to_float(uint16_t h);
uint16_t hr_bf16_round(float f);
uint16_t hr_bf16_round_sr(float f, uint32_t r16);
/* Seeds the calling thread's rounding PRNG (otherwise seeded from a fixed
 * constant and the thread's order of first use). */
void hr_sgd_sr_seed(uint64_t seed);

/* A row of either storage as a packed F32 row (hr_row_layout_f32(L).floats
 * floats): factors widened, the rest copied; hr_sgd_row_read for F32. */
void hr_sgd_row_to_f32(const hr_row_layout *L, const float *row, float *dst);
/* Overwrites a row from a packed F32 row (init, reset): BF16 factors
 * rounded to nearest even (deterministic); hr_sgd_row_write for F32. */
void hr_sgd_row_from_f32(const hr_row_layout *L, float *row, const float *src);
/* The factors and the bias of a row as k+1 floats: an F32 row itself
 * (borrowed, live), or a BF16 row converted into buf (k+1 floats), which
 * is returned. */
const float *hr_sgd_row_weights(const hr_row_layout *L, const float *row, float *buf);
/* Rows [0, nrows) of a block (leading dimension lda, in floats) as a dense
 * f32 matrix out[nrows x (k+1)]: factors then bias (BF16 rows). */
void hr_sgd_block_to_f32(const hr_row_layout *L, const float *block, uint32_t nrows,
                         uint32_t lda, float *out);

/* Top-K helper: out[i] = <q, v_i> + b_i over a block of rows, plain loop.
 * The reference the BLAS path is checked against. */
void hr_sgd_block_scores_ref(const hr_row_layout *L, const float *block,
                             uint32_t nrows, uint32_t lda, const float *q,
                             float *out);

#endif

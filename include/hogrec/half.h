/*
 * half.h - half-precision (IEEE fp16) copies of item rows for top-K
 * candidate scans: the row format, conversion, and the scan kernels.
 *
 * A half row holds the k factors and the bias of an fp32 row rounded to
 * nearest fp16, zero-padded to `dims` (a multiple of 8), then the row's
 * L2 norm over those k+1 values as one float (rounded up), which bounds the
 * error of a half score (hr_half_error_bound). A row with a value outside
 * fp16's range is stored as zeros with norm +inf: its bound is infinite, so
 * a scan always re-scores it exactly.
 *
 * Conversion and the scan run with F16C/AVX2/FMA where the CPU has them
 * (checked at run time, never assumed at build time) and with portable
 * scalar code otherwise; the scalar code is the reference the fast kernels
 * are tested against.
 *
 * Like sgd.c, half.c reads live fp32 rows while trainers write them, and
 * its half rows are rewritten while queries scan them (Hogwild: each value
 * read is one that was written; a row may mix before and after). Keep such
 * accesses in half.c; tests/tsan.supp names it.
 *
 * Threads: any; kernels start none.
 */
#ifndef HOGREC_HALF_H
#define HOGREC_HALF_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "hogrec/row.h"

/* Layout of a half row, in uint16 units. */
typedef struct {
    uint32_t k;      /* factors; the bias is value k */
    uint32_t dims;   /* k+1 rounded up to 8: the values a scan multiplies */
    uint32_t norm;   /* offset of the float norm (= dims) */
    uint32_t stride; /* uint16 from one half row to the next (dims + 2) */
} hr_half_layout;

hr_half_layout hr_half_layout_make(uint32_t k);

/* fp32 -> fp16 (round to nearest even; overflow -> inf) and back, one value,
 * portable code. */
uint16_t hr_half_from_float(float f);
float hr_half_to_float(uint16_t h);

/* Whether the fast kernels run (the CPU has AVX2, FMA and F16C), and a
 * switch for tests and benchmarks: false forces the scalar code. */
bool hr_half_fast_available(void);
void hr_half_set_fast(bool on);

/* Writes the half copy of the live fp32 row `row` (layout L) into hrow. */
void hr_half_row_write(const hr_row_layout *L, const hr_half_layout *H, const float *row,
                       uint16_t *hrow);

/* The norm stored in a half row (+inf for a row out of fp16 range). */
static inline float hr_half_row_norm(const hr_half_layout *H, const uint16_t *hrow)
{
    float n;
    memcpy(&n, hrow + H->norm, sizeof n);
    return n;
}

/* out[i] = sum_d qx[d] * value_d of half row i, d < dims, for nrows rows
 * stride H->stride apart. qx has H->dims floats (the query, 1 for the bias,
 * zeros after). Fast kernel when enabled, else the reference. */
void hr_half_block_scores(const hr_half_layout *H, const uint16_t *block, uint32_t nrows,
                          const float *qx, float *out);
/* The plain loop the kernel is checked against. */
void hr_half_block_scores_ref(const hr_half_layout *H, const uint16_t *block, uint32_t nrows,
                              const float *qx, float *out);

/* The same for a batch of queries: qt holds them transposed, H->dims rows
 * of nq8 floats (query j's value d at qt[d * nq8 + j]; nq8 a multiple of 8,
 * unused queries zero); out[i * nq8 + j] is row i's score for query j. */
void hr_half_block_scores_many(const hr_half_layout *H, const uint16_t *block, uint32_t nrows,
                               const float *qt, uint32_t nq8, float *out);
void hr_half_block_scores_many_ref(const hr_half_layout *H, const uint16_t *block,
                                   uint32_t nrows, const float *qt, uint32_t nq8, float *out);

/* Per-query constants of the error bound: for the query qx (H->dims floats)
 * c[0] multiplies a row's norm, c[1] is added. |s - s_half| <= c[0] * norm
 * + c[1], where s is any fp32 evaluation (any summation order) of the row's
 * fp32 score and s_half the half score in fp32 from any kernel above; and
 * s_half - (c[0] * norm + c[1]) <= s <= s_half + (c[0] * norm + c[1])
 * when each side is evaluated in fp32 with up to three roundings.
 * Returns false if qx is not finite (no bound: score in fp32). */
bool hr_half_error_bound(const hr_half_layout *H, const float *qx, float c[2]);

#endif

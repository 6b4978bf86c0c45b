/*
 * test_sgd.c - the update kernel against plain references: the score against
 * the O(n^2 k) pairwise formula, the SGD step against finite differences of
 * the loss, AdaGrad and FTRL coordinates against their formulas, lazy Adam
 * against a plain double-precision Adam on finite-difference gradients (with
 * its per-row step count and bias correction), the NaN/Inf guard and the
 * gradient clip; bf16 rows: the codec, a step on a bf16 row against the f32
 * step on its widened copy, and steps far below a bf16 ulp that must still
 * move a weight on average (stochastic rounding).
 */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "hogrec/sgd.h"

#define K 8
#define NF 5

typedef struct {
    hr_row_layout L;
    float rows[NF][64];
    hr_active a[NF];
} world;

/* One row per chunk: a row's state follows its weights, so a world row
 * below is one packed row, and the kernel needs no model. */
static hr_row_layout layout_for(hr_state_kind st)
{
    return hr_row_layout_make(K, st, 1);
}

static void make_world(world *w, hr_state_kind st, uint64_t seed)
{
    memset(w, 0, sizeof *w);
    w->L = layout_for(st);
    assert_true(w->L.floats <= 64);
    assert_true(w->L.state == 0 || w->L.state == w->L.stride);
    assert_true(w->L.adam_v == 0 || w->L.adam_v == 2 * w->L.stride);
    hr_rng rng;
    hr_rng_seed(&rng, seed);
    for (int f = 0; f < NF; f++) {
        for (uint32_t d = 0; d < K; d++)
            w->rows[f][d] = f == 0 ? 0 : (float)(hr_rng_normal(&rng) * 0.3);
        w->rows[f][w->L.bias] = (float)(hr_rng_normal(&rng) * 0.2);
        if (w->L.acc)
            for (uint32_t d = 0; d <= K; d++)
                w->rows[f][w->L.acc + d] = 0.5f;
        w->a[f].row = w->rows[f];
        w->a[f].x = f < 3 ? 1.0f : (float)(0.5 + hr_rng_uniform(&rng));
        w->a[f].group = f == 0 ? HR_GROUP_GLOBAL : f == 1 ? HR_GROUP_USER : f == 2 ? HR_GROUP_ITEM : HR_GROUP_CONTEXT;
        w->a[f].has_v = f != 0;
    }
}

/* The plain reference: w0 + sum w_f x_f + sum_{f<g} <v_f, v_g> x_f x_g,
 * leaving out the pairs within a side (hr_active.side, when not 0). */
static double ref_score(const world *w)
{
    double y = 0;
    for (int f = 0; f < NF; f++)
        y += (double)w->rows[f][w->L.bias] * w->a[f].x;
    for (int f = 0; f < NF; f++)
        for (int g = f + 1; g < NF; g++) {
            if (!w->a[f].has_v || !w->a[g].has_v || (w->a[f].side && w->a[f].side == w->a[g].side))
                continue;
            double dot = 0;
            for (int d = 0; d < K; d++)
                dot += (double)w->rows[f][d] * w->rows[g][d];
            y += dot * w->a[f].x * w->a[g].x;
        }
    return y;
}

static double ref_loss(const world *w, double label)
{
    double p = 1.0 / (1.0 + exp(-ref_score(w))); /* the reference, written out */
    return -(label * log(p) + (1 - label) * log(1 - p));
}

static void test_score_matches_pairwise(void **state)
{
    (void)state;
    for (uint64_t seed = 1; seed <= 20; seed++) {
        world w;
        make_world(&w, HR_STATE_SGD, seed);
        assert_float_equal(hr_sgd_score(&w.L, w.a, NF), ref_score(&w), 1e-4);
    }
}

static hr_step_params sgd_params(float rate)
{
    hr_step_params p;
    memset(&p, 0, sizeof p);
    p.loss = HR_LOSS_LOGISTIC;
    p.opt = HR_OPT_SGD;
    for (int g = 0; g < HR_GROUP_COUNT; g++)
        p.rate[g] = rate;
    return p;
}

static void test_sgd_step_is_the_gradient(void **state)
{
    (void)state;
    const float rate = 1e-2f;
    for (uint64_t seed = 1; seed <= 5; seed++) {
        for (int label = 0; label <= 1; label++) {
            world w, before;
            make_world(&w, HR_STATE_SGD, seed);
            before = w;
            /* finite differences on a copy (central, h = 1e-3, in double) */
            double num[NF][K + 1];
            for (int f = 0; f < NF; f++) {
                for (uint32_t d = 0; d <= K; d++) {
                    if (d < K && !w.a[f].has_v) {
                        num[f][d] = 0;
                        continue;
                    }
                    uint32_t at = d < K ? d : w.L.bias;
                    world t = before;
                    for (int g = 0; g < NF; g++)
                        t.a[g].row = t.rows[g];
                    float h = 1e-3f, orig = t.rows[f][at];
                    t.rows[f][at] = orig + h;
                    double lp = ref_loss(&t, label);
                    t.rows[f][at] = orig - h;
                    double lm = ref_loss(&t, label);
                    num[f][d] = (lp - lm) / (2 * h);
                }
            }
            hr_step_params p = sgd_params(rate);
            double y;
            assert_int_equal(hr_sgd_step(&w.L, w.a, NF, (float)label, 1.0f, &p, &y, NULL), HR_STEP_APPLIED);
            assert_float_equal(y, ref_score(&before), 1e-4);
            for (int f = 0; f < NF; f++)
                for (uint32_t d = 0; d <= K; d++) {
                    uint32_t at = d < K ? d : w.L.bias;
                    double step = (before.rows[f][at] - w.rows[f][at]) / rate;
                    assert_float_equal(step, num[f][d], 2e-3);
                }
        }
    }
}

/* Sides (catalog attributes): the user with feature 3, the item with
 * feature 4; their pairs within a side are left out of the score and of the
 * gradient (checked against the pairwise reference and finite differences). */
static void test_sides_leave_out_their_pairs(void **state)
{
    (void)state;
    const float rate = 1e-2f;
    for (uint64_t seed = 1; seed <= 5; seed++) {
        world w, before;
        make_world(&w, HR_STATE_SGD, seed);
        double all_pairs = hr_sgd_score(&w.L, w.a, NF);
        w.a[1].side = w.a[3].side = 1;
        w.a[2].side = w.a[4].side = 2;
        assert_float_equal(hr_sgd_score(&w.L, w.a, NF), ref_score(&w), 1e-4);
        assert_true(fabs(hr_sgd_score(&w.L, w.a, NF) - all_pairs) > 1e-6); /* not a no-op */
        before = w;
        double num[NF][K + 1];
        for (int f = 0; f < NF; f++)
            for (uint32_t d = 0; d <= K; d++) {
                uint32_t at = d < K ? d : w.L.bias;
                world t = before;
                for (int g = 0; g < NF; g++)
                    t.a[g].row = t.rows[g];
                float h = 1e-3f, orig = t.rows[f][at];
                t.rows[f][at] = orig + h;
                double lp = ref_loss(&t, 1);
                t.rows[f][at] = orig - h;
                double lm = ref_loss(&t, 1);
                num[f][d] = d < K && !w.a[f].has_v ? 0 : (lp - lm) / (2 * h);
            }
        hr_step_params p = sgd_params(rate);
        double y;
        assert_int_equal(hr_sgd_step(&w.L, w.a, NF, 1.0f, 1.0f, &p, &y, NULL), HR_STEP_APPLIED);
        assert_float_equal(y, ref_score(&before), 1e-4);
        for (int f = 0; f < NF; f++)
            for (uint32_t d = 0; d <= K; d++) {
                uint32_t at = d < K ? d : w.L.bias;
                assert_float_equal((before.rows[f][at] - w.rows[f][at]) / rate, num[f][d], 2e-3);
            }
    }
}

static void test_adagrad_coordinate(void **state)
{
    (void)state;
    world w, before;
    make_world(&w, HR_STATE_ADAGRAD, 7);
    before = w;
    hr_step_params p = sgd_params(0.1f);
    p.opt = HR_OPT_ADAGRAD;
    double y;
    hr_sgd_step(&w.L, w.a, NF, 1.0f, 1.0f, &p, &y, NULL);
    double pr = 1.0 / (1.0 + exp(-y));
    double g = pr - 1.0;
    /* the user bias: gradient g * x, accumulator 0.5 + g^2 */
    double gb = g * w.a[1].x;
    double G = 0.5 + gb * gb;
    assert_float_equal(w.rows[1][w.L.acc + K], G, 1e-5);
    assert_float_equal(w.rows[1][w.L.bias], before.rows[1][w.L.bias] - 0.1 * gb / sqrt(G), 1e-5);
    /* a user factor: g * x * (s_d - v x) */
    double s0 = 0;
    for (int f = 1; f < NF; f++)
        s0 += before.rows[f][0] * w.a[f].x;
    double gv = g * (s0 - before.rows[1][0]);
    double Gv = 0.5 + gv * gv;
    assert_float_equal(w.rows[1][0], before.rows[1][0] - 0.1 * gv / sqrt(Gv), 1e-5);
}

static void test_ftrl_l1_keeps_weights_at_zero(void **state)
{
    (void)state;
    world w;
    make_world(&w, HR_STATE_FTRL, 9);
    for (int f = 0; f < NF; f++)
        w.rows[f][w.L.bias] = 0;
    hr_step_params p = sgd_params(0.1f);
    p.opt = HR_OPT_FTRL;
    p.ftrl_beta = 1;
    p.ftrl_l1 = 100; /* far above any |z| one step can reach */
    double y;
    hr_sgd_step(&w.L, w.a, NF, 1.0f, 1.0f, &p, &y, NULL);
    for (int f = 0; f < NF; f++) {
        assert_true(w.rows[f][w.L.bias] == 0.0f);
        assert_true(w.rows[f][w.L.ftrl] != 0.0f); /* z moved */
    }
    p.ftrl_l1 = 0;
    hr_sgd_step(&w.L, w.a, NF, 1.0f, 1.0f, &p, &y, NULL);
    for (int f = 0; f < NF; f++)
        assert_true(w.rows[f][w.L.bias] > 0.0f); /* positive label pushes up */
}

/* The finite-difference gradient of the loss at every weight of the world
 * (central, h = 1e-3, in double), [feature][d], d = K the bias. */
static void fd_gradient(const world *w, double label, double num[NF][K + 1])
{
    for (int f = 0; f < NF; f++)
        for (uint32_t d = 0; d <= K; d++) {
            if (d < K && !w->a[f].has_v) {
                num[f][d] = 0;
                continue;
            }
            uint32_t at = d < K ? d : w->L.bias;
            world t = *w;
            for (int g = 0; g < NF; g++)
                t.a[g].row = t.rows[g];
            float h = 1e-3f, orig = t.rows[f][at];
            t.rows[f][at] = orig + h;
            double lp = ref_loss(&t, label);
            t.rows[f][at] = orig - h;
            double lm = ref_loss(&t, label);
            num[f][d] = (lp - lm) / (2 * h);
        }
}

static hr_step_params adam_params(float rate)
{
    hr_step_params p = sgd_params(rate);
    p.opt = HR_OPT_ADAM;
    p.adam_beta1 = 0.9f;
    p.adam_beta2 = 0.999f;
    p.adam_eps = 1e-8f;
    return p;
}

/* Five steps of the kernel against plain Adam in double on the
 * finite-difference gradients (no L2), alternating labels: every weight and
 * both moments agree, and each row counts its steps. With sides (catalog
 * attributes: Adam's third row block beside them), the gradients leave out
 * the pairs within a side. */
static void adam_vs_reference(bool sides)
{
    const double rate = 0.01, b1 = 0.9, b2 = 0.999, eps = 1e-8;
    world w;
    make_world(&w, HR_STATE_ADAM, 21);
    if (sides) {
        w.a[1].side = w.a[3].side = 1;
        w.a[2].side = w.a[4].side = 2;
    }
    assert_true(w.L.adam != 0 && w.L.acc == 0 && w.L.floats == 3 * w.L.stride);
    double W[NF][K + 1], M[NF][K + 1] = {{0}}, V[NF][K + 1] = {{0}};
    for (int f = 0; f < NF; f++)
        for (uint32_t d = 0; d <= K; d++)
            W[f][d] = w.rows[f][d < K ? d : w.L.bias];
    hr_step_params p = adam_params((float)rate);
    for (int step = 1; step <= 5; step++) {
        double label = step % 2;
        double num[NF][K + 1];
        fd_gradient(&w, label, num);
        double y;
        assert_int_equal(hr_sgd_step(&w.L, w.a, NF, (float)label, 1.0f, &p, &y, NULL), HR_STEP_APPLIED);
        for (int f = 0; f < NF; f++) {
            uint32_t count;
            memcpy(&count, &w.rows[f][w.L.adam + K + 1], sizeof count);
            assert_int_equal(count, step);
            for (uint32_t d = 0; d <= K; d++) {
                if (d < K && !w.a[f].has_v)
                    continue;
                M[f][d] = b1 * M[f][d] + (1 - b1) * num[f][d];
                V[f][d] = b2 * V[f][d] + (1 - b2) * num[f][d] * num[f][d];
                double mh = M[f][d] / (1 - pow(b1, step)), vh = V[f][d] / (1 - pow(b2, step));
                W[f][d] -= rate * mh / (sqrt(vh) + eps);
                uint32_t at = d < K ? d : w.L.bias;
                assert_float_equal(w.rows[f][at], W[f][d], 1e-4);
                assert_float_equal(w.rows[f][w.L.adam + d], M[f][d], 1e-4);
                assert_float_equal(w.rows[f][w.L.adam_v + d], V[f][d], 1e-5);
            }
        }
    }
}

static void test_adam_matches_reference(void **state)
{
    (void)state;
    adam_vs_reference(false);
    adam_vs_reference(true);
}

/* Lazy: a row with x = 0 is not stepped (moments and count unchanged), and
 * when it is stepped later its bias correction is its own first step's: the
 * move is rate * g / (|g| + eps), about rate, not the damped move that the
 * global update count would give. */
static void test_adam_bias_correction_is_per_row(void **state)
{
    (void)state;
    world w;
    make_world(&w, HR_STATE_ADAM, 23);
    hr_step_params p = adam_params(0.01f);
    const float x4 = w.a[4].x;
    w.a[4].x = 0;
    double y;
    for (int i = 0; i < 10; i++)
        hr_sgd_step(&w.L, w.a, NF, (float)(i % 2), 1.0f, &p, &y, NULL);
    uint32_t c4, c1;
    memcpy(&c4, &w.rows[4][w.L.adam + K + 1], sizeof c4);
    memcpy(&c1, &w.rows[1][w.L.adam + K + 1], sizeof c1);
    assert_int_equal(c4, 0);
    assert_int_equal(c1, 10);
    for (uint32_t d = 0; d <= K; d++)
        assert_true(w.rows[4][w.L.adam + d] == 0.0f && w.rows[4][w.L.adam_v + d] == 0.0f);
    w.a[4].x = x4;
    world before = w;
    hr_sgd_step(&w.L, w.a, NF, 1.0f, 1.0f, &p, &y, NULL);
    memcpy(&c4, &w.rows[4][w.L.adam + K + 1], sizeof c4);
    assert_int_equal(c4, 1);
    /* first step of row 4: |move| = rate * |g| / (|g| + eps) for every coordinate */
    for (uint32_t d = 0; d <= K; d++) {
        uint32_t at = d < K ? d : w.L.bias;
        assert_float_equal(fabs(w.rows[4][at] - before.rows[4][at]), 0.01, 1e-4);
    }
}

static void test_adam_nonfinite_is_never_written(void **state)
{
    (void)state;
    world w, before;
    make_world(&w, HR_STATE_ADAM, 25);
    before = w;
    hr_step_params p = adam_params(0.1f);
    double y;
    assert_int_equal(hr_sgd_step(&w.L, w.a, NF, NAN, 1.0f, &p, &y, NULL), HR_STEP_SKIPPED_NONFINITE);
    assert_memory_equal(w.rows, before.rows, sizeof w.rows);
    w.a[3].x = 1e30f; /* g^2 overflows the second moment */
    hr_sgd_step(&w.L, w.a, NF, 1.0f, 1.0f, &p, &y, NULL);
    for (int f = 0; f < NF; f++)
        for (uint32_t d = 0; d < w.L.floats; d++)
            if (d != w.L.count && d != w.L.last_seen && d != w.L.adam + K + 1)
                assert_true(isfinite(w.rows[f][d]));
}

static void test_nonfinite_is_never_written(void **state)
{
    (void)state;
    world w, before;
    make_world(&w, HR_STATE_ADAGRAD, 11);
    before = w;
    hr_step_params p = sgd_params(0.1f);
    p.opt = HR_OPT_ADAGRAD;
    double y;
    assert_int_equal(hr_sgd_step(&w.L, w.a, NF, NAN, 1.0f, &p, &y, NULL), HR_STEP_SKIPPED_NONFINITE);
    assert_memory_equal(w.rows, before.rows, sizeof w.rows);
    w.a[3].x = INFINITY;
    assert_int_equal(hr_sgd_step(&w.L, w.a, NF, 1.0f, 1.0f, &p, &y, NULL), HR_STEP_SKIPPED_NONFINITE);
    for (int f = 0; f < NF; f++)
        for (uint32_t d = 0; d < w.L.floats; d++)
            assert_true(isfinite(w.rows[f][d]));
}

static void test_clip_bounds_the_step(void **state)
{
    (void)state;
    world w, before;
    make_world(&w, HR_STATE_SGD, 13);
    for (int f = 3; f < NF; f++)
        w.a[f].x = 1000.0f; /* a huge gradient */
    before = w;
    hr_step_params p = sgd_params(1.0f);
    p.clip = 0.5f;
    double y = hr_sgd_score(&w.L, w.a, NF);
    float label = y > 0 ? 0.0f : 1.0f; /* the wrong side: |gradient| ~ 1 */
    assert_int_equal(hr_sgd_step(&w.L, w.a, NF, label, 1.0f, &p, &y, NULL), HR_STEP_CLIPPED);
    double norm2 = 0;
    for (int f = 0; f < NF; f++)
        for (uint32_t d = 0; d <= K; d++) {
            uint32_t at = d < K ? d : w.L.bias;
            double delta = w.rows[f][at] - before.rows[f][at];
            norm2 += delta * delta;
        }
    assert_float_equal(sqrt(norm2), 0.5, 1e-3); /* rate 1: the step is the clipped gradient */
}

static void test_block_scores_reference(void **state)
{
    (void)state;
    world w;
    make_world(&w, HR_STATE_SGD, 17);
    float q[K], out[NF];
    for (int d = 0; d < K; d++)
        q[d] = 0.1f * (float)d - 0.3f;
    hr_sgd_block_scores_ref(&w.L, &w.rows[0][0], NF, 64, q, out);
    for (int f = 0; f < NF; f++) {
        double s = w.rows[f][w.L.bias];
        for (int d = 0; d < K; d++)
            s += (double)q[d] * w.rows[f][d];
        assert_float_equal(out[f], s, 1e-5);
    }
}

/* ---- the fused kernel (sgd_fast.c) against the general kernel ----
 *
 * The general kernel sums s = sum p_f and 0.5 (|s|^2 - sum |p_f|^2) without
 * fused multiply-adds; the fused kernel sums pair by pair with them. Both
 * round each operation to float (eps = 2^-24 = 6e-8) over sums of at most
 * k = 128 terms, so their scores differ by a few hundred eps of the terms'
 * magnitude: |y_fast - y_gen| <= TOL (|y| + T), where T = sum |w_f x_f| +
 * sum_d (sum_f |x_f v_fd|)^2 bounds every partial sum of either form. A
 * new value differs by the same relative amount of what went into it: the
 * old value and the step, |new_fast - new_gen| <= TOL (|old| + |new_gen -
 * old|), and the prediction as the score (the sigmoid's slope is <= 1/4).
 * TOL = 1e-5 leaves a wide margin over what the cases below measure (the
 * test prints it) and is far below what a wrong term or sign gives. */
#define TOL 1e-5

/* The variants the fused kernel has; those this CPU or build lacks are
 * skipped (and said so). */
static const char *const fast_kernels[] = {"generic", "avx2", "avx512"};
#define NFAST (sizeof fast_kernels / sizeof fast_kernels[0])

/* Worst measured |fast - gen| / bound, per variant, for the report. */
static double worst[NFAST];

/* The terms' magnitude T of the score (see TOL). */
static double score_terms(const hr_row_layout *L, const hr_active *a, int n)
{
    double t = 0;
    for (int f = 0; f < n; f++)
        t += fabs((double)a[f].row[L->bias] * a[f].x);
    for (uint32_t d = 0; d < L->k; d++) {
        double s = 0;
        for (int f = 0; f < n; f++)
            if (a[f].has_v)
                s += fabs((double)a[f].row[d] * a[f].x);
        t += s * s;
    }
    return t;
}

/* Every float of the rows after one step (a: the event on the rows as they
 * were, `before`; fast, gen: the same floats after each kernel's step):
 * bit-equal, or |fast - gen| <= TOL (|old| + |gen - old| + S), where S is
 * the magnitude of what went into the step of that float. The gradient of
 * v_fd is g x_f P_fd + l2 v_fd, formed from terms up to Gs = |g|' |x_f|
 * sum_g |x_g v_gd| + l2 |v_fd| (the general kernel forms P_fd as s_d minus
 * a part of it, so its rounding scales with all of s_d, not with P_fd;
 * |g|' = weight (|pred| + |label| + T) bounds g and its rounding through
 * the score); the bias's from |g|' |x_f| + l2 |w_f|. A weight's step is
 * rate Gs (AdaGrad: over sqrt of the new state), a state's 2 Gs^2. */
static void assert_step_close(const hr_row_layout *L, const hr_active *a, int n,
                              const hr_step_params *p, float label, float weight, double pred,
                              const float *before, const float *fast, const float *gen,
                              size_t nfloats, double *worst_ratio)
{
    double *extra = calloc(nfloats, sizeof *extra);
    assert_non_null(extra);
    const double gs = fabs(weight) * (fabs(pred) + fabs(label) + score_terms(L, a, n));
    const bool ada = p->opt != HR_OPT_SGD && L->acc;
    for (int f = 0; f < n; f++) {
        const size_t at = (size_t)(a[f].row - before);
        const hr_group bg = a[f].has_v ? HR_GROUP_BIAS : HR_GROUP_GLOBAL;
        for (uint32_t d = 0; d <= L->k; d++) {
            if (d < L->k && !a[f].has_v)
                continue;
            double part = 1, rate = p->rate[bg], l2 = p->l2[bg];
            if (d < L->k) {
                part = 0;
                for (int g = 0; g < n; g++)
                    if (a[g].has_v)
                        part += fabs((double)a[g].row[d] * a[g].x);
                rate = p->rate[a[f].group];
                l2 = p->l2[a[f].group];
            }
            const size_t w = at + (d < L->k ? d : L->bias);
            double Gs = gs * fabs(a[f].x) * part + l2 * fabs(before[w]);
            double step = rate * Gs;
            if (ada) {
                const size_t st = at + L->acc + d;
                double G = gen[st] > 0 ? gen[st] : before[st];
                step /= sqrt(G > 0 ? G : 1e-30);
                extra[st] = 2 * Gs * Gs;
            }
            extra[w] = step;
        }
    }
    for (size_t i = 0; i < nfloats; i++) {
        if (!memcmp(&fast[i], &gen[i], sizeof(float)))
            continue;
        assert_true(isfinite(fast[i]) && isfinite(gen[i]));
        double bound = TOL * (fabs(before[i]) + fabs((double)gen[i] - before[i]) + extra[i]);
        double diff = fabs((double)fast[i] - gen[i]);
        if (diff > bound)
            print_error("float %zu: fast %.9g general %.9g before %.9g (bound %.3g)\n", i,
                        fast[i], gen[i], before[i], bound);
        assert_true(diff <= bound);
        if (bound > 0 && diff / bound > *worst_ratio)
            *worst_ratio = diff / bound;
    }
    free(extra);
}

/* The pair (global, user, item), 200 steps per call, each from the same
 * rows for both kernels: the variant "exact" bit for bit (the same IEEE
 * operations in the same order as the general kernel, and sgd.c is built
 * without contraction into fused multiply-adds); the fused variants
 * within TOL (this was a bit-identity check of the pair path, which the
 * fused kernel replaced in hr_sgd_step). Feature values other than 1 (and
 * 0: that row untouched), clip on and off, and a row whose accumulators
 * overflow (that row left as it was, the other updated, as the general
 * kernel does). */
static void check_pair_against_general(const char *kernel, uint32_t k, hr_state_kind st,
                                       hr_optimizer opt, float clip, uint64_t seed, double *wr,
                                       bool zero_state)
{
    const bool exact = !strcmp(kernel, "exact");
    assert_true(hr_sgd_kernel_select(kernel));
    hr_row_layout L = hr_row_layout_make(k, st, 1);
    const size_t nf = L.floats;
    float *fast = calloc(3 * nf, sizeof(float)), *gen = calloc(3 * nf, sizeof(float));
    float *before = calloc(3 * nf, sizeof(float));
    assert_non_null(fast);
    assert_non_null(gen);
    assert_non_null(before);
    hr_rng rng;
    hr_rng_seed(&rng, seed);
    for (int f = 0; f < 3; f++) {
        float *r = fast + f * nf;
        for (uint32_t d = 0; d < k; d++)
            r[d] = f == 0 ? 0 : (float)(hr_rng_normal(&rng) * 0.3);
        r[L.bias] = (float)(hr_rng_normal(&rng) * 0.2);
        if (L.acc)
            for (uint32_t d = 0; d <= k; d++) /* zero_state: every other one 0 */
                r[L.acc + d] = zero_state && d % 2 ? 0.0f : (float)(0.1 + hr_rng_uniform(&rng));
    }
    hr_step_params p;
    memset(&p, 0, sizeof p);
    p.loss = seed % 2 ? HR_LOSS_LOGISTIC : HR_LOSS_SQUARED;
    p.opt = opt;
    p.clip = clip;
    for (int g = 0; g < HR_GROUP_COUNT; g++) {
        p.rate[g] = 0.05f + 0.01f * (float)g;
        p.l2[g] = 0.001f * (float)g;
    }
    const float xs[][3] = {{1, 1, 1}, {1, 0.7f, 1.3f}, {0, 1, 1}, {1, 0, 2}, {1, 1.5f, 0}};
    for (int step = 0; step < 200; step++) {
        const float *x = xs[step % 5];
        if (step == 150 && L.acc) /* the user's new accumulators are not finite from here on */
            for (uint32_t d = 0; d < k; d++)
                fast[nf + L.acc + d] = INFINITY;
        for (int f = 1; zero_state && f < 3; f++) /* again: the steps made them > 0 */
            for (uint32_t d = 1; d <= k; d += 2)
                fast[f * nf + L.acc + d] = 0;
        memcpy(gen, fast, 3 * nf * sizeof(float));
        memcpy(before, fast, 3 * nf * sizeof(float));
        hr_active af[3], ag[3];
        for (int f = 0; f < 3; f++) {
            af[f] = (hr_active){fast + f * nf, x[f], f == 0 ? HR_GROUP_GLOBAL
                                                   : f == 1 ? HR_GROUP_USER
                                                            : HR_GROUP_ITEM, f != 0,
                                  (uint8_t)f /* sides: none, the user's, the item's */};
            ag[f] = af[f];
            ag[f].row = gen + f * nf;
        }
        assert_true(hr_sgd_fast_shape(&L, af, 3, &p));
        float label = p.loss == HR_LOSS_LOGISTIC ? (float)(step % 2) : (float)(1 + step % 5);
        double yf, yg, pf, pg;
        hr_step_result rf = hr_sgd_step(&L, af, 3, label, 1.5f, &p, &yf, &pf);
        hr_step_result rg = hr_sgd_step_general(&L, ag, 3, label, 1.5f, &p, &yg, &pg);
        assert_int_equal(rf, rg);
        if (exact) {
            assert_memory_equal(&yf, &yg, sizeof yf);
            assert_memory_equal(&pf, &pg, sizeof pf);
            assert_memory_equal(fast, gen, 3 * nf * sizeof(float));
        } else {
            hr_active ab[3];
            for (int f = 0; f < 3; f++) {
                ab[f] = af[f];
                ab[f].row = before + f * nf;
            }
            double T = score_terms(&L, ab, 3);
            if (!isfinite(yg)) { /* the rows diverged (k 200, squared loss): nothing written */
                assert_false(isfinite(yf));
                assert_memory_equal(fast, gen, 3 * nf * sizeof(float));
                continue;
            }
            assert_true(fabs(yf - yg) <= TOL * (fabs(yg) + T));
            assert_true(fabs(pf - pg) <= TOL * (fabs(pg) + T));
            assert_step_close(&L, ab, 3, &p, label, 1.5f, pg, before, fast, gen, 3 * nf, wr);
        }
        if (step >= 150 && L.acc && opt != HR_OPT_SGD && x[1] != 0) {
            assert_int_equal(rf, HR_STEP_SKIPPED_NONFINITE);
            /* the user's factors and their state (its bias has its own) */
            assert_memory_equal(fast + nf, before + nf, k * sizeof(float));
            assert_memory_equal(fast + nf + L.acc, before + nf + L.acc, k * sizeof(float));
        }
    }
    free(fast);
    free(gen);
    free(before);
}

static void test_pair_path_equals_general(void **state)
{
    (void)state;
    /* k in {16, 32, 64, 128} has compile-time trip counts, the others run
     * time ones; 200 diverges under squared loss (both kernels skip it) */
    const uint32_t ks[] = {1, 8, 13, 16, 32, 64, 128, 200};
    const char *kernels[NFAST + 1] = {"exact"};
    for (size_t v = 0; v < NFAST; v++)
        kernels[v + 1] = fast_kernels[v];
    for (size_t v = 0; v < NFAST + 1; v++) {
        if (!hr_sgd_kernel_available(kernels[v]))
            continue; /* said so in test_kernel_select */
        double wr = 0;
        uint64_t seed = 1;
        for (size_t i = 0; i < sizeof ks / sizeof ks[0]; i++) {
            for (int c = 0; c < 3; c++) {
                float clip = c == 0 ? 0 : c == 1 ? 100 : 0.05f; /* off, rarely, often */
                check_pair_against_general(kernels[v], ks[i], HR_STATE_SGD, HR_OPT_SGD, clip,
                                           seed++, &wr, false);
                check_pair_against_general(kernels[v], ks[i], HR_STATE_ADAGRAD, HR_OPT_ADAGRAD,
                                           clip, seed++, &wr, false);
                check_pair_against_general(kernels[v], ks[i], HR_STATE_ADAGRAD, HR_OPT_SGD, clip,
                                           seed++, &wr, false);
                check_pair_against_general(kernels[v], ks[i], HR_STATE_SGD, HR_OPT_ADAGRAD, clip,
                                           seed++, &wr, false);
            }
        }
        print_message("pair, kernel %s: worst |fast - general| / bound %.3f\n", kernels[v], wr);
    }
    assert_true(hr_sgd_kernel_select("auto"));
}

/* The pair with every other AdaGrad state 0 before each step (a new state
 * can then be 0 and its weight 0/0, or values so large their squares
 * overflow): the rows that come out finite are written, the others left as
 * they were, as the general kernel does. The same events as above. */
static void test_pair_scratch_path(void **state)
{
    (void)state;
    const uint32_t ks[] = {7, 16, 32, 64, 128};
    for (size_t v = 0; v < NFAST; v++) {
        if (!hr_sgd_kernel_available(fast_kernels[v]))
            continue;
        double wr = 0;
        uint64_t seed = 500;
        for (size_t i = 0; i < sizeof ks / sizeof ks[0]; i++)
            for (int c = 0; c < 2; c++) {
                float clip = c == 0 ? 0 : 0.05f;
                check_pair_against_general(fast_kernels[v], ks[i], HR_STATE_ADAGRAD,
                                           HR_OPT_ADAGRAD, clip, seed++, &wr, true);
            }
        print_message("pair, kernel %s, zero states: worst |fast - general| / bound %.3f\n",
                      fast_kernels[v], wr);
    }
    assert_true(hr_sgd_kernel_select("auto"));
}

/* Which variants run here; selecting one that does not is refused and
 * changes nothing. */
static void test_kernel_select(void **state)
{
    (void)state;
    assert_true(hr_sgd_kernel_select("auto"));
    const char *best = hr_sgd_kernel_name();
    assert_true(hr_sgd_kernel_available(best));
    assert_false(hr_sgd_kernel_select("no-such-kernel"));
    assert_false(hr_sgd_kernel_select(NULL));
    assert_string_equal(hr_sgd_kernel_name(), best);
    assert_true(hr_sgd_kernel_available("generic"));
    assert_true(hr_sgd_kernel_available("exact"));
#if defined(__x86_64__)
    __builtin_cpu_init();
    assert_int_equal(hr_sgd_kernel_available("avx2"),
                     __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"));
    assert_int_equal(hr_sgd_kernel_available("avx512"),
                     __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") &&
                         __builtin_cpu_supports("fma"));
#endif
    for (size_t v = 0; v < NFAST; v++) {
        bool ok = hr_sgd_kernel_available(fast_kernels[v]);
        assert_int_equal(hr_sgd_kernel_select(fast_kernels[v]), ok);
        if (ok)
            assert_string_equal(hr_sgd_kernel_name(), fast_kernels[v]);
        else
            print_message("kernel %s: skipped, this CPU or build lacks it\n", fast_kernels[v]);
    }
    assert_true(hr_sgd_kernel_select("auto"));
    assert_string_equal(hr_sgd_kernel_name(), best);
}

/* One random event for both kernels: global bias, user, item, 0-4 context
 * features with factors, 0-2 linear-only features; random sides (a side
 * as the model makes it: the id and its attributes), feature values
 * (some 1, some 0), weights, labels, optimizer, state and clip. */
typedef struct {
    hr_row_layout L;
    hr_step_params p;
    int n;
    float label, weight;
    float *rows; /* n rows of L.floats */
    hr_active a[HR_FAST_MAX_ACTIVE];
} fast_case;

static void make_fast_case(fast_case *c, hr_rng *rng, uint32_t k)
{
    static const hr_state_kind sts[] = {HR_STATE_SGD, HR_STATE_ADAGRAD, HR_STATE_FTRL};
    hr_state_kind st = sts[hr_rng_below(rng, 3)];
    c->L = hr_row_layout_make(k, st, 1 + (uint32_t)hr_rng_below(rng, 3));
    memset(&c->p, 0, sizeof c->p);
    c->p.loss = hr_rng_below(rng, 4) ? HR_LOSS_LOGISTIC : HR_LOSS_SQUARED;
    c->p.opt = hr_rng_below(rng, 2) ? HR_OPT_ADAGRAD : HR_OPT_SGD;
    int cl = (int)hr_rng_below(rng, 3);
    c->p.clip = cl == 0 ? 0 : cl == 1 ? (float)(0.01 + hr_rng_uniform(rng)) : 1e6f;
    for (int g = 0; g < HR_GROUP_COUNT; g++) {
        c->p.rate[g] = (float)(0.01 + 0.1 * hr_rng_uniform(rng));
        c->p.l2[g] = (float)(0.01 * hr_rng_uniform(rng));
    }
    int nctx = (int)hr_rng_below(rng, 5), nlin = (int)hr_rng_below(rng, 3);
    c->n = 3 + nctx + nlin;
    const bool sided = hr_rng_below(rng, 2);
    /* rows chunk_rows apart, as in a model's chunks: the state L.state on */
    const size_t span = (size_t)c->L.state + c->L.stride;
    for (int f = 0; f < c->n; f++) {
        float *r = c->rows + (size_t)f * span;
        const bool has_v = f == 1 || f == 2 || (f >= 3 && f < 3 + nctx);
        for (uint32_t d = 0; d < k; d++)
            r[d] = has_v ? (float)(hr_rng_normal(rng) * 0.3) : 0;
        r[c->L.bias] = (float)(hr_rng_normal(rng) * 0.2);
        if (c->L.acc)
            for (uint32_t d = 0; d <= k; d++)
                r[c->L.acc + d] = (float)(0.01 + hr_rng_uniform(rng));
        uint64_t xr = hr_rng_below(rng, 8);
        float x = f == 0 ? 1.0f : xr == 0 ? 0.0f : xr < 4 ? 1.0f : (float)(0.25 + 2 * hr_rng_uniform(rng));
        uint8_t side = 0;
        if (sided && has_v)
            side = f == 1 ? 1 : f == 2 ? 2 : (uint8_t)hr_rng_below(rng, 3);
        c->a[f] = (hr_active){r, x,
                              f == 0 ? HR_GROUP_GLOBAL
                              : f == 1 ? HR_GROUP_USER
                              : f == 2 ? HR_GROUP_ITEM
                                       : HR_GROUP_CONTEXT,
                              has_v, side};
    }
    c->label = c->p.loss == HR_LOSS_LOGISTIC ? (float)hr_rng_below(rng, 2)
                                             : (float)(1 + hr_rng_below(rng, 5));
    c->weight = (float)(0.5 + 1.5 * hr_rng_uniform(rng));
}

/* Runs the case on a copy for each kernel; returns both results. */
static void run_both(const fast_case *c, float *fast, float *gen, size_t bytes, hr_step_result *rf,
                     hr_step_result *rg, double *yf, double *yg, double *pf, double *pg)
{
    hr_active af[HR_FAST_MAX_ACTIVE], ag[HR_FAST_MAX_ACTIVE];
    memcpy(fast, c->rows, bytes);
    memcpy(gen, c->rows, bytes);
    for (int f = 0; f < c->n; f++) {
        af[f] = ag[f] = c->a[f];
        af[f].row = fast + (c->a[f].row - c->rows);
        ag[f].row = gen + (c->a[f].row - c->rows);
    }
    assert_true(hr_sgd_fast_shape(&c->L, af, c->n, &c->p));
    *rf = hr_sgd_step(&c->L, af, c->n, c->label, c->weight, &c->p, yf, pf);
    *rg = hr_sgd_step_general(&c->L, ag, c->n, c->label, c->weight, &c->p, yg, pg);
}

/* The rows of a random event as made, then as the fused and the general
 * kernel leave them: room for HR_FAST_MAX_ACTIVE rows of k <= 128 with
 * their state, chunk_rows <= 3. */
typedef struct {
    float *rows, *fast, *gen;
    size_t bytes; /* of each */
} fast_bufs;

static fast_bufs fast_bufs_make(void)
{
    const size_t span = 3 * (128 + 4);
    fast_bufs b = {.bytes = HR_FAST_MAX_ACTIVE * span * 3 * sizeof(float)};
    b.rows = calloc(1, b.bytes);
    b.fast = calloc(1, b.bytes);
    b.gen = calloc(1, b.bytes);
    assert_non_null(b.rows);
    assert_non_null(b.fast);
    assert_non_null(b.gen);
    return b;
}

static void fast_bufs_free(fast_bufs *b)
{
    free(b->rows);
    free(b->fast);
    free(b->gen);
}

/* Thousands of random events (k in 1, 7, 16, 33, 64, 128), each variant
 * that runs here against the general kernel within TOL. */
static void test_fast_kernel_matches_general(void **state)
{
    (void)state;
    const uint32_t ks[] = {1, 7, 16, 33, 64, 128};
    fast_bufs b = fast_bufs_make();
    float *rows = b.rows, *fast = b.fast, *gen = b.gen;
    const size_t bytes = b.bytes;
    for (size_t v = 0; v < NFAST; v++) {
        if (!hr_sgd_kernel_select(fast_kernels[v]))
            continue; /* said so in test_kernel_select */
        hr_rng rng;
        hr_rng_seed(&rng, 77);
        int cases = 0, clipped = 0, shapes[HR_FAST_MAX_FACTORS + 1] = {0};
        double wr = 0;
        for (size_t ki = 0; ki < sizeof ks / sizeof ks[0]; ki++) {
            for (int i = 0; i < 600; i++) {
                fast_case c;
                c.rows = rows;
                memset(rows, 0, bytes);
                make_fast_case(&c, &rng, ks[ki]);
                hr_step_result rf, rg;
                double yf, yg, pf, pg;
                run_both(&c, fast, gen, bytes, &rf, &rg, &yf, &yg, &pf, &pg);
                assert_int_equal(rf, rg);
                double T = score_terms(&c.L, c.a, c.n);
                if (!(fabs(yf - yg) <= TOL * (fabs(yg) + T)))
                    print_error("score: fast %.17g general %.17g (T %.3g)\n", yf, yg, T);
                assert_true(fabs(yf - yg) <= TOL * (fabs(yg) + T));
                assert_true(fabs(pf - pg) <= TOL * (fabs(pg) + T));
                assert_step_close(&c.L, c.a, c.n, &c.p, c.label, c.weight, pg, rows, fast, gen,
                                  bytes / sizeof(float), &wr);
                cases++;
                clipped += rg == HR_STEP_CLIPPED;
                int m = 0;
                for (int f = 0; f < c.n; f++)
                    m += c.a[f].has_v;
                shapes[m]++;
            }
        }
        print_message("kernel %s: %d events (%d clipped; with 2..6 rows with factors: %d %d %d "
                      "%d %d), worst |fast - general| / bound %.3f\n",
                      fast_kernels[v], cases, clipped, shapes[2], shapes[3], shapes[4], shapes[5],
                      shapes[6], wr);
        if (wr > worst[v])
            worst[v] = wr;
    }
    assert_true(hr_sgd_kernel_select("auto"));
    fast_bufs_free(&b);
}

/* Non-finite inputs: a row whose new values are not all finite is left as
 * it was and the step says so, exactly as in the general kernel (the same
 * result, the same rows untouched); a non-finite score writes nothing. */
static void test_fast_kernel_nonfinite(void **state)
{
    (void)state;
    fast_bufs b = fast_bufs_make();
    float *rows = b.rows, *fast = b.fast, *gen = b.gen;
    const size_t bytes = b.bytes;
    for (size_t v = 0; v < NFAST; v++) {
        if (!hr_sgd_kernel_select(fast_kernels[v]))
            continue;
        hr_rng rng;
        hr_rng_seed(&rng, 91);
        int skipped = 0;
        for (int i = 0; i < 600; i++) {
            fast_case c;
            c.rows = rows;
            memset(rows, 0, bytes);
            make_fast_case(&c, &rng, i % 2 ? 64 : 33);
            int kind = i % 5, f = (int)hr_rng_below(&rng, (uint64_t)c.n);
            float bad = i % 10 < 5 ? INFINITY : NAN;
            if (kind == 0) /* a factor or a bias */
                c.a[f].row[hr_rng_below(&rng, c.L.k + 1)] = bad;
            else if (kind == 1 && c.L.acc) /* an accumulator: that row's new state */
                c.a[f].row[c.L.acc + hr_rng_below(&rng, c.L.k + 1)] = bad;
            else if (kind == 2) /* a feature value */
                c.a[f].x = bad;
            else if (kind == 3)
                c.label = bad;
            else
                c.weight = bad;
            hr_step_result rf, rg;
            double yf, yg, pf, pg;
            run_both(&c, fast, gen, bytes, &rf, &rg, &yf, &yg, &pf, &pg);
            assert_int_equal(rf, rg);
            skipped += rf == HR_STEP_SKIPPED_NONFINITE;
            /* the same rows untouched, and where the step wrote, close */
            for (int g = 0; g < c.n; g++) {
                size_t at = (size_t)(c.a[g].row - rows);
                const size_t nrow[] = {c.L.stride, c.L.state ? c.L.stride : 0};
                const size_t off[] = {0, c.L.state};
                for (int part = 0; part < 2; part++) {
                    if (!nrow[part])
                        continue;
                    size_t o = at + off[part], len = nrow[part] * sizeof(float);
                    bool fu = !memcmp(fast + o, rows + o, len), gu = !memcmp(gen + o, rows + o, len);
                    assert_int_equal(fu, gu);
                }
            }
            if (isfinite(yg) && isfinite(pg)) { /* what was written: close */
                double wr = 0;
                assert_step_close(&c.L, c.a, c.n, &c.p, c.label, c.weight, pg, rows, fast, gen,
                                  bytes / sizeof(float), &wr);
            }
        }
        print_message("kernel %s: 600 events with a NaN or Inf, %d skipped as non-finite\n",
                      fast_kernels[v], skipped);
        assert_true(skipped > 300);
    }
    assert_true(hr_sgd_kernel_select("auto"));
    fast_bufs_free(&b);
}

/* ---- bf16 rows ---- */

static float ulp_bf16(float x)
{
    int e;
    frexpf(fabsf(x), &e);
    return ldexpf(1.0f, e - 8); /* 8 significant bits */
}

/* The codec: nearest-even within half an ulp; stochastic rounding gives one
 * of the two neighbours (truncation with no random bits, up with all of
 * them unless exact); exact values unchanged; finite stays finite. */
static void test_bf16_codec(void **state)
{
    (void)state;
    hr_rng rng;
    hr_rng_seed(&rng, 3);
    for (int i = 0; i < 20000; i++) {
        float x = (float)(hr_rng_normal(&rng) * pow(10, (int)(i % 9) - 4));
        float n = hr_bf16_to_float(hr_bf16_round(x));
        assert_true(fabsf(n - x) <= 0.5f * ulp_bf16(x));
        uint32_t u;
        memcpy(&u, &x, sizeof u);
        float lo = hr_bf16_to_float((uint16_t)(u >> 16));
        float s = hr_bf16_to_float(hr_bf16_round_sr(x, (uint32_t)hr_rng_next(&rng)));
        assert_true(s == lo || fabsf(s - lo) == ulp_bf16(lo) || (lo == 0 && s != 0));
        assert_true(hr_bf16_to_float(hr_bf16_round_sr(x, 0)) == lo);
        if (lo != x)
            assert_true(fabsf(hr_bf16_to_float(hr_bf16_round_sr(x, 0xffff))) > fabsf(lo));
        assert_true(hr_bf16_to_float(hr_bf16_round_sr(lo, 0xffff)) == lo);
    }
    assert_true(isfinite(hr_bf16_to_float(hr_bf16_round(3.4028235e38f))));
    assert_true(isfinite(hr_bf16_to_float(hr_bf16_round_sr(3.4028235e38f, 0xffff))));
    assert_true(isfinite(hr_bf16_to_float(hr_bf16_round_sr(-3.4028235e38f, 0xffff))));
}

/* A step on bf16 rows is the f32 step on their widened copies: the same
 * score, result, biases and optimizer state bit for bit, and each factor
 * the f32 result rounded to a neighbouring bf16 value (unchanged where the
 * f32 step left it). Every optimizer, the pair shape and context features. */
static void check_bf16_step(uint32_t k, hr_state_kind st, hr_optimizer opt, int n, uint64_t seed)
{
    hr_row_layout L = hr_row_layout_make_storage(k, st, 1, HR_STORAGE_BF16);
    hr_row_layout F = hr_row_layout_f32(&L);
    assert_int_equal(L.storage, HR_STORAGE_BF16);
    assert_true(k < 8 ? L.stride <= F.stride : L.stride < F.stride); /* the weights */
    float *h = calloc((size_t)n * L.floats, sizeof(float));
    float *w = calloc((size_t)n * F.floats, sizeof(float));
    float *before = calloc((size_t)n * F.floats, sizeof(float));
    float *after = calloc(F.floats, sizeof(float));
    assert_true(h && w && before && after);
    hr_rng rng;
    hr_rng_seed(&rng, seed);
    for (int f = 0; f < n; f++) {
        float *r = w + (size_t)f * F.floats;
        for (uint32_t d = 0; d < k; d++)
            r[d] = f == 0 ? 0 : (float)(hr_rng_normal(&rng) * 0.3);
        r[F.bias] = (float)(hr_rng_normal(&rng) * 0.2);
        if (F.acc)
            for (uint32_t d = 0; d <= k; d++)
                r[F.acc + d] = (float)(0.1 + hr_rng_uniform(&rng));
        hr_sgd_row_from_f32(&L, h + (size_t)f * L.floats, r);
        hr_sgd_row_to_f32(&L, h + (size_t)f * L.floats, r); /* the reference starts rounded */
    }
    hr_step_params p;
    memset(&p, 0, sizeof p);
    p.loss = seed % 2 ? HR_LOSS_LOGISTIC : HR_LOSS_SQUARED;
    p.opt = opt;
    p.clip = 100;
    p.ftrl_beta = 1;
    p.adam_beta1 = 0.9f;
    p.adam_beta2 = 0.999f;
    p.adam_eps = 1e-8f;
    for (int g = 0; g < HR_GROUP_COUNT; g++) {
        p.rate[g] = 0.05f + 0.01f * (float)g;
        p.l2[g] = 0.001f * (float)g;
    }
    for (int step = 0; step < 50; step++) {
        hr_active ah[HR_MAX_ACTIVE], aw[HR_MAX_ACTIVE];
        for (int f = 0; f < n; f++) {
            ah[f] = (hr_active){h + (size_t)f * L.floats, f < 3 ? 1.0f : 0.5f + 0.25f * (float)f,
                                (uint8_t)(f == 0   ? HR_GROUP_GLOBAL
                                          : f == 1 ? HR_GROUP_USER
                                          : f == 2 ? HR_GROUP_ITEM
                                                   : HR_GROUP_CONTEXT),
                                f != 0, 0};
            aw[f] = ah[f];
            aw[f].row = w + (size_t)f * F.floats;
        }
        memcpy(before, w, (size_t)n * F.floats * sizeof(float));
        float label = p.loss == HR_LOSS_LOGISTIC ? (float)(step % 2) : (float)(1 + step % 5);
        double yh, yw, ph, pw;
        assert_memory_equal(&(double){hr_sgd_score(&L, ah, n)}, &(double){hr_sgd_score(&F, aw, n)},
                            sizeof(double));
        hr_step_result rh = hr_sgd_step(&L, ah, n, label, 1.0f, &p, &yh, &ph);
        hr_step_result rw = hr_sgd_step(&F, aw, n, label, 1.0f, &p, &yw, &pw);
        assert_int_equal(rh, rw);
        assert_memory_equal(&yh, &yw, sizeof yh);
        for (int f = 0; f < n; f++) {
            float *r = w + (size_t)f * F.floats, *b = before + (size_t)f * F.floats;
            hr_sgd_row_to_f32(&L, h + (size_t)f * L.floats, after);
            assert_memory_equal(after + F.bias, r + F.bias, 3 * sizeof(float));
            if (F.state)
                assert_memory_equal(after + F.stride, r + F.stride,
                                    (F.floats - F.stride) * sizeof(float));
            for (uint32_t d = 0; d < k; d++) {
                if (r[d] == b[d])
                    assert_true(after[d] == r[d]);
                else
                    assert_true(fabsf(after[d] - r[d]) <= ulp_bf16(r[d]));
                r[d] = after[d]; /* both go on from the stored value */
            }
        }
    }
    free(h);
    free(w);
    free(before);
    free(after);
}

static void test_bf16_step_is_the_f32_step_rounded(void **state)
{
    (void)state;
    hr_sgd_sr_seed(11);
    const uint32_t ks[] = {1, 13, 64};
    uint64_t seed = 1;
    for (size_t i = 0; i < sizeof ks / sizeof ks[0]; i++) {
        for (int n = 3; n <= 5; n += 2) {
            check_bf16_step(ks[i], HR_STATE_SGD, HR_OPT_SGD, n, seed++);
            check_bf16_step(ks[i], HR_STATE_ADAGRAD, HR_OPT_ADAGRAD, n, seed++);
            check_bf16_step(ks[i], HR_STATE_FTRL, HR_OPT_FTRL, n, seed++);
            check_bf16_step(ks[i], HR_STATE_ADAM, HR_OPT_ADAM, n, seed++);
        }
    }
}

/* Steps far below a bf16 ulp (about 1/2000 of one) move the weights as the
 * f32 steps do, on average: the mean drift of 64 factors over 50000 steps
 * is within 10% of the f32 run's. Rounding to nearest would keep every
 * factor where it started (drift 0). */
static void test_bf16_small_steps_move_on_average(void **state)
{
    (void)state;
    hr_sgd_sr_seed(5);
    const uint32_t k = 64;
    hr_row_layout L = hr_row_layout_make_storage(k, HR_STATE_SGD, 1, HR_STORAGE_BF16);
    hr_row_layout F = hr_row_layout_f32(&L);
    float w[3][F.floats], h[3][L.floats], wide[F.floats];
    memset(w, 0, sizeof w);
    for (uint32_t d = 0; d < k; d++) {
        w[1][d] = 1.0f;
        w[2][d] = 0.5f;
    }
    for (int f = 0; f < 3; f++)
        hr_sgd_row_from_f32(&L, h[f], w[f]);
    hr_step_params p;
    memset(&p, 0, sizeof p);
    p.loss = HR_LOSS_SQUARED;
    p.opt = HR_OPT_SGD;
    for (int g = 0; g < HR_GROUP_COUNT; g++)
        p.rate[g] = 1e-7f;
    double step0 = 0;
    for (int step = 0; step < 50000; step++) {
        hr_active aw[3], ah[3];
        for (int f = 0; f < 3; f++) {
            aw[f] = (hr_active){w[f], 1.0f,
                                (uint8_t)(f == 0 ? HR_GROUP_GLOBAL : f == 1 ? HR_GROUP_USER : HR_GROUP_ITEM),
                                f != 0, 0};
            ah[f] = aw[f];
            ah[f].row = h[f];
        }
        double y, pr;
        hr_sgd_step(&F, aw, 3, 100.0f, 1.0f, &p, &y, &pr);
        if (step == 0)
            step0 = 1e-7 * (100.0 - y) * 0.5; /* the first step of a user factor */
        hr_sgd_step(&L, ah, 3, 100.0f, 1.0f, &p, &y, &pr);
    }
    assert_true(step0 < ulp_bf16(1.0f) / 1000);
    for (int f = 1; f <= 2; f++) {
        const double start = f == 1 ? 1.0 : 0.5;
        double dw = 0, dh = 0;
        hr_sgd_row_to_f32(&L, h[f], wide);
        for (uint32_t d = 0; d < k; d++) {
            dw += w[f][d] - start;
            dh += wide[d] - start;
        }
        dw /= k;
        dh /= k;
        assert_true(dw > 0.05);
        assert_true(fabs(dh - dw) < 0.1 * dw);
    }
}


int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_score_matches_pairwise),
        cmocka_unit_test(test_sgd_step_is_the_gradient),
        cmocka_unit_test(test_adagrad_coordinate),
        cmocka_unit_test(test_ftrl_l1_keeps_weights_at_zero),
        cmocka_unit_test(test_adam_matches_reference),
        cmocka_unit_test(test_adam_bias_correction_is_per_row),
        cmocka_unit_test(test_adam_nonfinite_is_never_written),
        cmocka_unit_test(test_nonfinite_is_never_written),
        cmocka_unit_test(test_clip_bounds_the_step),
        cmocka_unit_test(test_block_scores_reference),
        cmocka_unit_test(test_sides_leave_out_their_pairs),
        cmocka_unit_test(test_pair_path_equals_general),
        cmocka_unit_test(test_pair_scratch_path),
        cmocka_unit_test(test_kernel_select),
        cmocka_unit_test(test_fast_kernel_matches_general),
        cmocka_unit_test(test_fast_kernel_nonfinite),
        cmocka_unit_test(test_bf16_codec),
        cmocka_unit_test(test_bf16_step_is_the_f32_step_rounded),
        cmocka_unit_test(test_bf16_small_steps_move_on_average),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

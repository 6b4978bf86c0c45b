/*
 * sgd.c - the update kernel, and the only code that touches embedding rows
 * concurrently.
 *
 * DESIGN - the deliberate race (Hogwild, Niu et al. 2011). Trainer threads
 * read and write rows with plain loads and stores and no lock, while query
 * threads read them. Two trainers updating the same row may lose one of
 * the two increments of a coordinate, and a reader may see a row half
 * before and half after an update. For sparse SGD this costs nothing
 * measurable in quality (each update touches a few rows of millions) and
 * removes all synchronization from the hot path. What it cannot do:
 *   - tear a float: aligned 4-byte loads and stores are atomic on the
 *     machines we build for, so every coordinate read is a value that was
 *     written (a bf16 factor is an aligned 2-byte value: the same holds);
 *   - write a NaN or Inf: every written value is checked first;
 *   - move a row: rows live in chunks that are never reallocated.
 * ThreadSanitizer reports these accesses as races; tests/tsan.supp
 * suppresses reports in this file, and only this file, so everything else
 * stays checked. Keep every racy access to row contents in here.
 *
 * Called from: trainer threads (hr_sgd_step, hr_sgd_touch), HTTP threads
 * (hr_sgd_score, hr_sgd_block_scores_ref), the checkpoint thread
 * (hr_sgd_row_read/write).
 */
#include "hogrec/sgd.h"

#include <assert.h>
#include <math.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "sgd_internal.h"

static inline uint32_t load_u32(const float *row, uint32_t at)
{
    uint32_t v;
    memcpy(&v, row + at, sizeof v);
    return v;
}

static inline void store_u32(float *row, uint32_t at, uint32_t v)
{
    memcpy(row + at, &v, sizeof v);
}

/* Sum of a[0..n) in 8 independent lanes, so the compiler can vectorize it
 * (a plain float reduction must stay sequential without -ffast-math). */
static inline float hsum(const float *a, uint32_t n)
{
    float acc[8] = {0};
    uint32_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++)
            acc[j] += a[i + j];
    for (; i < n; i++)
        acc[0] += a[i];
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/* Whether any of a[0..n) is NaN or Inf: an integer OR over the exponent
 * bits, which vectorizes. */
static inline bool any_nonfinite(const float *a, uint32_t n)
{
    uint32_t bad = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &a[i], sizeof u);
        bad |= (u & 0x7f800000u) == 0x7f800000u;
    }
    return bad != 0;
}

#ifndef NDEBUG /* used by assert() only */
/* The layout rule of row.c, which every layout here comes from. */
static bool layout_ok(const hr_row_layout *L)
{
    if (L->storage == HR_STORAGE_BF16) {
        if (L->stride == 0 || (L->parts && (L->state == 0 || L->state % L->stride)))
            return false;
        hr_row_layout want = hr_row_layout_make_storage(
            L->k, hr_row_layout_state(L), L->parts ? L->state / L->stride : 1, HR_STORAGE_BF16);
        return memcmp(&want, L, sizeof want) == 0;
    }
    return L->storage == HR_STORAGE_F32 && L->k >= 1 && L->bias == L->k &&
           L->count == L->k + 1 && L->last_seen == L->k + 2 &&
           L->stride >= L->k + 3 && L->stride % 4 == 0 &&
           (L->state == 0 ? L->floats == L->stride && L->acc == 0 && L->ftrl == 0 &&
                                L->adam == 0 && L->adam_v == 0
            : L->adam   ? L->floats == 3 * L->stride && L->adam == L->state &&
                            L->adam_v == 2 * L->state && L->acc == 0 && L->ftrl == 0
                        : L->floats == 2 * L->stride && L->acc == L->state && L->adam_v == 0) &&
           (L->ftrl == 0 || L->ftrl == L->state + L->k + 1);
}
#endif

/* s[d] = sum_f v_fd x_f; returns sum_f w_f x_f + 0.5 sum_d (s_d^2 - sum_f v_fd^2 x_f^2),
 * less the pairs within a side (hr_active.side): for side c, with S_c its
 * features' sum (side_sum[c - 1], k floats each, filled when any feature
 * has a side; *sided says whether one did), 0.5 (|S_c|^2 - sum_{f in c} |v_f x_f|^2).
 * tmp is k floats of scratch. */
static double score_into(const hr_row_layout *L, const hr_active *a, int n, float *s, float *tmp,
                         float *side_sum, bool *sided)
{
    const uint32_t k = L->k;
    assert(layout_ok(L));
    assert(n >= 1 && n <= HR_MAX_ACTIVE); /* the model resolves at most this many */
    double lin = 0;
    bool any_side = false;
    for (uint32_t d = 0; d < k; d++)
        s[d] = tmp[d] = 0;
    for (int f = 0; f < n; f++) {
        const float *r = a[f].row;
        const float x = a[f].x;
        lin += (double)r[L->bias] * x;
        if (!a[f].has_v)
            continue;
        any_side |= a[f].side != 0;
        for (uint32_t d = 0; d < k; d++) {
            float vx = r[d] * x;
            s[d] += vx;
            tmp[d] += vx * vx;
        }
    }
    float sq = hsum(tmp, k);
    for (uint32_t d = 0; d < k; d++)
        tmp[d] = s[d] * s[d];
    float ss = hsum(tmp, k);
    double y = lin + 0.5 * ((double)ss - sq);
    *sided = any_side;
    if (!any_side)
        return y;
    /* the pairs within each side: 0.5 (|S_c|^2 - sum_{f in c} |v_f x_f|^2) */
    for (uint32_t d = 0; d < 2 * k; d++)
        side_sum[d] = 0;
    double own = 0;
    for (int f = 0; f < n; f++) {
        if (!a[f].has_v || !a[f].side)
            continue;
        float *sc = side_sum + (size_t)(a[f].side - 1) * k;
        const float *r = a[f].row;
        const float x = a[f].x;
        for (uint32_t d = 0; d < k; d++) {
            float vx = r[d] * x;
            sc[d] += vx;
            tmp[d] = vx * vx;
        }
        own += hsum(tmp, k);
    }
    double sides = 0;
    for (uint32_t c = 0; c < 2; c++) {
        const float *sc = side_sum + (size_t)c * k;
        for (uint32_t d = 0; d < k; d++)
            tmp[d] = sc[d] * sc[d];
        sides += hsum(tmp, k);
    }
    return y - 0.5 * (sides - own);
}

static double score_bf16(const hr_row_layout *L, const hr_active *a, int n);
static hr_step_result step_bf16(const hr_row_layout *L, const hr_active *a, int n, float label,
                                float weight, const hr_step_params *p, double *y_before,
                                double *pred_before);

double hr_sgd_score(const hr_row_layout *L, const hr_active *a, int n)
{
    if (L->storage == HR_STORAGE_BF16)
        return score_bf16(L, a, n);
    float s[L->k], tmp[L->k], side_sum[2 * L->k];
    bool sided;
    return score_into(L, a, n, s, tmp, side_sum, &sided);
}


/* Lazy Adam (Kingma and Ba 2015) on one row: the bias with gradient gb and,
 * when t is not NULL, the factors with gradient gf * t[d]. The row keeps its
 * own step count, so the bias correction is per row: a row seen for the
 * tenth time is corrected as the tenth step, however many updates other
 * rows had. Values are written only if finite; the step count advances when
 * anything was written. Returns how many parts (bias, factors) were
 * refused as non-finite. */
static int adam_row(const hr_row_layout *L, float *r, float gb, const float *t, float gf,
                    hr_group bg, hr_group vg, const hr_step_params *p)
{
    const uint32_t k = L->k;
    float *m = r + L->adam, *v = r + L->adam_v;
    uint32_t step = load_u32(r, L->adam + k + 1);
    if (step != UINT32_MAX)
        step++;
    const float b1 = p->adam_beta1, b2 = p->adam_beta2, eps = p->adam_eps;
    const float c1 = (float)(1.0 - pow(b1, (double)step));
    const float c2 = (float)(1.0 - pow(b2, (double)step));
    int bad = 0, wrote = 0;

    float wb = r[L->bias], rate = p->rate[bg];
    float gr = gb + p->l2[bg] * wb;
    float mb = b1 * m[k] + (1 - b1) * gr;
    float vb = b2 * v[k] + (1 - b2) * gr * gr;
    float nb = wb - rate * (mb / c1) / (sqrtf(vb / c2) + eps);
    if (isfinite(mb) && isfinite(vb) && isfinite(nb)) {
        m[k] = mb;
        v[k] = vb;
        r[L->bias] = nb;
        wrote = 1;
    } else {
        bad++;
    }

    if (t) {
        float nm[k], nv[k], nw[k];
        const float rate_v = p->rate[vg], l2_v = p->l2[vg];
        for (uint32_t d = 0; d < k; d++) {
            float w = r[d];
            float g = gf * t[d] + l2_v * w;
            nm[d] = b1 * m[d] + (1 - b1) * g;
            nv[d] = b2 * v[d] + (1 - b2) * g * g;
            nw[d] = w - rate_v * (nm[d] / c1) / (sqrtf(nv[d] / c2) + eps);
        }
        if (any_nonfinite(nm, k) || any_nonfinite(nv, k) || any_nonfinite(nw, k)) {
            bad++;
        } else {
            memcpy(m, nm, k * sizeof(float));
            memcpy(v, nv, k * sizeof(float));
            memcpy(r, nw, k * sizeof(float));
            wrote = 1;
        }
    }
    if (wrote)
        store_u32(r, L->adam + k + 1, step);
    return bad;
}

hr_step_result hr_sgd_step_general(const hr_row_layout *L, const hr_active *a, int n, float label,
                                   float weight, const hr_step_params *p, double *y_before,
                                   double *pred_before)
{
    if (L->storage == HR_STORAGE_BF16)
        return step_bf16(L, a, n, label, weight, p, y_before, pred_before);
    const uint32_t k = L->k;
    float s[k], tmp[k], nv[k], nG[k], side_sum[2 * k];
    bool sided;
    double y = score_into(L, a, n, s, tmp, side_sum, &sided), g;
    hr_step_result first = step_gradient(p, y, label, weight, y_before, pred_before, &g);
    if (first != HR_STEP_APPLIED || g == 0)
        return first;

    /* dy/dv_fd = x_f (s_d - v_fd x_f), or x_f (s_d - S_cd) for a feature of
     * side c (its pairs within the side left out), kept per feature for the update;
     * |grad|^2 = g^2 * (sum_f x_f^2 + sum_f sum_d dy/dv_fd^2) for the clip. */
    float dv[n * k];
    double norm2 = 0;
    for (int f = 0; f < n; f++) {
        const float x = a[f].x;
        norm2 += (double)x * x;
        if (!a[f].has_v)
            continue;
        const float *r = a[f].row;
        float *t = dv + (size_t)f * k;
        if (sided && a[f].side) {
            const float *sc = side_sum + (size_t)(a[f].side - 1) * k;
            for (uint32_t d = 0; d < k; d++) {
                t[d] = x * (s[d] - sc[d]);
                tmp[d] = t[d] * t[d];
            }
        } else {
            for (uint32_t d = 0; d < k; d++) {
                t[d] = x * (s[d] - r[d] * x);
                tmp[d] = t[d] * t[d];
            }
        }
        if (p->clip > 0)
            norm2 += hsum(tmp, k);
    }
    hr_step_result result = p->clip > 0 ? clip_gradient(&g, norm2, p->clip) : HR_STEP_APPLIED;
    if (result == HR_STEP_SKIPPED_NONFINITE)
        return result;

    const float gf = (float)g;
    int nonfinite = 0;
    for (int f = 0; f < n; f++) {
        float *r = a[f].row;
        const float x = a[f].x;
        if (x == 0)
            continue;
        const hr_group bg = a[f].has_v ? HR_GROUP_BIAS : HR_GROUP_GLOBAL;
        if (p->opt == HR_OPT_ADAM && L->adam) {
            nonfinite += adam_row(L, r, gf * x, a[f].has_v ? dv + (size_t)f * k : NULL, gf, bg,
                                  (hr_group)a[f].group, p);
            continue;
        }
        nonfinite += update_bias(L, r, gf * x, p->rate[bg], p->l2[bg], p);
        if (!a[f].has_v)
            continue;
        /* New factor values go to scratch in a branch-free (vectorizable)
         * loop, and are written only if all are finite. */
        const float rate_v = p->rate[a[f].group], l2_v = p->l2[a[f].group];
        const float *t = dv + (size_t)f * k;
        if (p->opt != HR_OPT_SGD && L->acc) {
            const float *acc = r + L->acc;
            for (uint32_t d = 0; d < k; d++) {
                float v = r[d];
                float gr = gf * t[d] + l2_v * v;
                float G = acc[d] + gr * gr;
                nG[d] = G;
                nv[d] = v - rate_v * gr / sqrtf(G);
            }
            if (any_nonfinite(nv, k) || any_nonfinite(nG, k)) {
                nonfinite++;
                continue;
            }
            memcpy(r + L->acc, nG, k * sizeof(float));
        } else {
            for (uint32_t d = 0; d < k; d++) {
                float v = r[d];
                nv[d] = v - rate_v * (gf * t[d] + l2_v * v);
            }
            if (any_nonfinite(nv, k)) {
                nonfinite++;
                continue;
            }
        }
        memcpy(r, nv, k * sizeof(float));
    }
    return nonfinite ? HR_STEP_SKIPPED_NONFINITE : result;
}

/* ---- the kernel "exact": global bias, user and item, SGD or AdaGrad ----
 *
 * What hr_sgd_step ran for this shape before the fused kernel (sgd_fast.c),
 * kept as the kernel variant "exact" for results that do not depend on the
 * CPU. The same arithmetic as hr_sgd_step_general, operation for operation and
 * in the same order (the sums in the same 8 lanes), so its results are
 * bit-identical (sgd.c is compiled with -ffp-contract=off, so neither path
 * fuses a multiply-add the other does not; test_sgd checks it). What it
 * saves: the zeroed and re-read scratch arrays of s, s^2, the squares and
 * the gradients (n*k floats), and the separate finiteness passes. Pass 1
 * reads both factor rows once for the score (and the gradient norm when
 * clipping); pass 2 reads them and the AdaGrad state once more and
 * computes gradient, state and weight per coordinate, OR-ing the exponent
 * test into a flag as it goes; a row is copied in from the scratch only if
 * all of its new values are finite, as in the general path. */

/* Pass 1. Returns the raw score; *norm2 gets sum_d (t_u,d^2) and
 * sum_d (t_i,d^2) in the general path's order when clip is set. */
static inline __attribute__((always_inline)) double pair_score(
    const float *restrict u, const float *restrict v, float xu, float xv, uint32_t k, double lin,
    bool clip, float *restrict hu, float *restrict hv)
{
    /* Lane j of each accumulator sums coordinates j, j+8, ...: hsum's lanes.
     * GCC/clang vector extensions, portable C: element-wise IEEE ops,
     * lowered to whatever vector width the target has. */
    typedef float v8 __attribute__((vector_size(32)));
    v8 vsq = {0}, vss = {0}, vtu = {0}, vtv = {0};
    uint32_t i = 0;
    for (; i + 8 <= k; i += 8) {
        v8 ur, vr;
        memcpy(&ur, u + i, sizeof ur);
        memcpy(&vr, v + i, sizeof vr);
        v8 a = ur * xu, b = vr * xv;
        v8 s = (0.0f + a) + b;
        vsq += (0.0f + a * a) + b * b;
        vss += s * s;
        if (clip) {
            v8 tu = xu * (s - ur * xu), tv = xv * (s - vr * xv);
            vtu += tu * tu;
            vtv += tv * tv;
        }
    }
    float sq[8], ss[8], tu2[8], tv2[8];
    memcpy(sq, &vsq, sizeof sq);
    memcpy(ss, &vss, sizeof ss);
    memcpy(tu2, &vtu, sizeof tu2);
    memcpy(tv2, &vtv, sizeof tv2);
    for (; i < k; i++) {
        float a = u[i] * xu, b = v[i] * xv;
        float s = (0.0f + a) + b;
        sq[0] += (0.0f + a * a) + b * b;
        ss[0] += s * s;
        if (clip) {
            float tu = xu * (s - u[i] * xu), tv = xv * (s - v[i] * xv);
            tu2[0] += tu * tu;
            tv2[0] += tv * tv;
        }
    }
#define LANES(x) (((x[0] + x[1]) + (x[2] + x[3])) + ((x[4] + x[5]) + (x[6] + x[7])))
    if (clip) {
        *hu = LANES(tu2);
        *hv = LANES(tv2);
    }
    float fsq = LANES(sq), fss = LANES(ss);
#undef LANES
    return lin + 0.5 * ((double)fss - fsq);
}

static inline bool nonfinite_bits(float f)
{
    uint32_t b;
    memcpy(&b, &f, sizeof b);
    return (b & 0x7f800000u) == 0x7f800000u;
}

/* Pass 2: new factors (and accumulators, when ada) of both rows into the
 * scratch; returns a bit per row (1 user, 2 item) whose values are not all
 * finite. */
static inline __attribute__((always_inline)) unsigned pair_update(
    const float *restrict u, const float *restrict v, const float *restrict au,
    const float *restrict av, float xu, float xv, uint32_t k, float gf, float ru, float lu,
    float rv, float lv, bool ada, float *restrict nu, float *restrict nGu, float *restrict nv,
    float *restrict nGv)
{
    unsigned bad_u = 0, bad_v = 0;
    for (uint32_t d = 0; d < k; d++) {
        float uw = u[d], vw = v[d];
        float s = (0.0f + uw * xu) + vw * xv;
        float tu = xu * (s - uw * xu), tv = xv * (s - vw * xv);
        if (ada) {
            float gu = gf * tu + lu * uw, gv = gf * tv + lv * vw;
            float Gu = au[d] + gu * gu, Gv = av[d] + gv * gv;
            nGu[d] = Gu;
            nGv[d] = Gv;
            nu[d] = uw - ru * gu / sqrtf(Gu);
            nv[d] = vw - rv * gv / sqrtf(Gv);
            bad_u |= nonfinite_bits(Gu);
            bad_v |= nonfinite_bits(Gv);
        } else {
            nu[d] = uw - ru * (gf * tu + lu * uw);
            nv[d] = vw - rv * (gf * tv + lv * vw);
        }
        bad_u |= nonfinite_bits(nu[d]);
        bad_v |= nonfinite_bits(nv[d]);
    }
    return (bad_u ? 1u : 0u) | (bad_v ? 2u : 0u);
}

static hr_step_result step_pair(const hr_row_layout *L, const hr_active *a, float label,
                                float weight, const hr_step_params *p, double *y_before,
                                double *pred_before)
{
    const uint32_t k = L->k;
    float *w0 = a[0].row, *u = a[1].row, *v = a[2].row;
    const float x0 = a[0].x, xu = a[1].x, xv = a[2].x;
    double lin = 0;
    lin += (double)w0[L->bias] * x0;
    lin += (double)u[L->bias] * xu;
    lin += (double)v[L->bias] * xv;
    const bool clip = p->clip > 0;
    float hu = 0, hv = 0;
    double y = clip ? pair_score(u, v, xu, xv, k, lin, true, &hu, &hv)
                    : pair_score(u, v, xu, xv, k, lin, false, &hu, &hv), g;
    hr_step_result first = step_gradient(p, y, label, weight, y_before, pred_before, &g);
    if (first != HR_STEP_APPLIED || g == 0)
        return first;
    hr_step_result result = HR_STEP_APPLIED;
    if (clip) {
        double norm2 = 0;
        norm2 += (double)x0 * x0;
        norm2 += (double)xu * xu;
        norm2 += hu;
        norm2 += (double)xv * xv;
        norm2 += hv;
        if ((result = clip_gradient(&g, norm2, p->clip)) == HR_STEP_SKIPPED_NONFINITE)
            return result;
    }

    const float gf = (float)g;
    int nonfinite = 0;
    for (int f = 0; f < 3; f++)
        if (a[f].x != 0)
            nonfinite += update_bias(L, a[f].row, gf * a[f].x,
                                     p->rate[f ? HR_GROUP_BIAS : HR_GROUP_GLOBAL],
                                     p->l2[f ? HR_GROUP_BIAS : HR_GROUP_GLOBAL], p);
    const bool ada = p->opt != HR_OPT_SGD && L->acc;
    const float ru = p->rate[a[1].group], lu = p->l2[a[1].group];
    const float rv = p->rate[a[2].group], lv = p->l2[a[2].group];
    float nu[k], nv[k], nGu[ada ? k : 1], nGv[ada ? k : 1];
    unsigned bad = ada ? pair_update(u, v, u + L->acc, v + L->acc, xu, xv, k, gf, ru, lu, rv, lv,
                                     true, nu, nGu, nv, nGv)
                       : pair_update(u, v, NULL, NULL, xu, xv, k, gf, ru, lu, rv, lv, false, nu,
                                     nGu, nv, nGv);
    if (xu != 0) {
        if (bad & 1u) {
            nonfinite++;
        } else {
            if (ada)
                memcpy(u + L->acc, nGu, k * sizeof(float));
            memcpy(u, nu, k * sizeof(float));
        }
    }
    if (xv != 0) {
        if (bad & 2u) {
            nonfinite++;
        } else {
            if (ada)
                memcpy(v + L->acc, nGv, k * sizeof(float));
            memcpy(v, nv, k * sizeof(float));
        }
    }
    return nonfinite ? HR_STEP_SKIPPED_NONFINITE : result;
}

/* The kernel "exact": the pair path above for user and item only, the
 * general kernel for every other shape; bit-identical to the general
 * kernel throughout (hr_sgd_kernel_select("exact")). */
hr_step_result hr_sgd_step_exact(const hr_row_layout *L, const hr_active *a, int n, float label,
                                 float weight, const hr_step_params *p, double *y_before,
                                 double *pred_before)
{
    if (n == 3 && !a[0].has_v && a[1].has_v && a[2].has_v)
        return step_pair(L, a, label, weight, p, y_before, pred_before);
    return hr_sgd_step_general(L, a, n, label, weight, p, y_before, pred_before);
}

bool hr_sgd_fast_shape(const hr_row_layout *L, const hr_active *a, int n, const hr_step_params *p)
{
    if (L->storage != HR_STORAGE_F32 || (p->opt != HR_OPT_SGD && p->opt != HR_OPT_ADAGRAD) ||
        n < 3 || n > HR_FAST_MAX_ACTIVE)
        return false;
    int m = 0;
    for (int f = 0; f < n; f++) {
        m += a[f].has_v != 0;
        for (int g = 0; g < f; g++) /* a row named twice: the general kernel */
            if (a[g].row == a[f].row)
                return false;
    }
    return m >= 2 && m <= HR_FAST_MAX_FACTORS;
}

hr_step_result hr_sgd_step(const hr_row_layout *L, const hr_active *a, int n, float label,
                           float weight, const hr_step_params *p, double *y_before,
                           double *pred_before)
{
    if (L->storage == HR_STORAGE_BF16)
        return step_bf16(L, a, n, label, weight, p, y_before, pred_before);
    if (hr_sgd_fast_shape(L, a, n, p))
        return hr_sgd_step_fast(L, a, n, label, weight, p, y_before, pred_before);
    return hr_sgd_step_general(L, a, n, label, weight, p, y_before, pred_before);
}

void hr_sgd_touch(const hr_row_layout *L, float *row, uint32_t now)
{
    uint32_t c = load_u32(row, L->count);
    if (c != UINT32_MAX)
        store_u32(row, L->count, c + 1);
    if (load_u32(row, L->last_seen) != now)
        store_u32(row, L->last_seen, now);
}

uint32_t hr_sgd_row_count(const hr_row_layout *L, const float *row)
{
    return load_u32(row, L->count);
}

uint32_t hr_sgd_row_last_seen(const hr_row_layout *L, const float *row)
{
    return load_u32(row, L->last_seen);
}

void hr_sgd_row_read(const hr_row_layout *L, const float *row, float *dst)
{
    assert(layout_ok(L));
    if (L->storage == HR_STORAGE_BF16) { /* the weights, then each state part */
        for (uint32_t j = 0; j <= L->parts; j++)
            memcpy(dst + (size_t)j * L->stride, row + (size_t)j * L->state,
                   (size_t)L->stride * sizeof(float));
        return;
    }
    memcpy(dst, row, (size_t)L->stride * sizeof(float));
    if (L->state)
        memcpy(dst + L->stride, row + L->state, (size_t)L->stride * sizeof(float));
    if (L->adam_v)
        memcpy(dst + 2 * L->stride, row + L->adam_v, (size_t)L->stride * sizeof(float));
}

void hr_sgd_row_write(const hr_row_layout *L, float *row, const float *src)
{
    assert(layout_ok(L));
    if (L->storage == HR_STORAGE_BF16) {
        for (uint32_t j = 0; j <= L->parts; j++)
            memcpy(row + (size_t)j * L->state, src + (size_t)j * L->stride,
                   (size_t)L->stride * sizeof(float));
        return;
    }
    memcpy(row, src, (size_t)L->stride * sizeof(float));
    if (L->state)
        memcpy(row + L->state, src + L->stride, (size_t)L->stride * sizeof(float));
    if (L->adam_v)
        memcpy(row + L->adam_v, src + 2 * L->stride, (size_t)L->stride * sizeof(float));
}

void hr_sgd_block_scores_ref(const hr_row_layout *L, const float *block, uint32_t nrows,
                             uint32_t lda, const float *q, float *out)
{
    float buf[L->k + 1];
    for (uint32_t i = 0; i < nrows; i++) {
        const float *r = hr_sgd_row_weights(L, block + (size_t)i * lda, buf);
        double acc = r[L->storage == HR_STORAGE_BF16 ? L->k : L->bias];
        for (uint32_t d = 0; d < L->k; d++)
            acc += (double)q[d] * r[d];
        out[i] = (float)acc;
    }
}

/* ---- bf16 rows ----
 *
 * Factor d of a BF16 row is the uint16 at byte 2d of the row; it is read
 * and written as a whole (2-byte aligned loads and stores do not tear on
 * the machines we build for), the same Hogwild rule as the floats above. */

float hr_bf16_to_float(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint16_t bf16_finish(uint32_t u, uint32_t rounded)
{
    if ((u & 0x7f800000u) == 0x7f800000u) /* NaN or Inf: keep it, NaN quiet */
        return (uint16_t)((u >> 16) | ((u & 0x7fffffu) ? 0x40u : 0u));
    if ((rounded & 0x7f800000u) == 0x7f800000u) /* rounding up would overflow */
        return (uint16_t)(u >> 16);
    return (uint16_t)(rounded >> 16);
}

uint16_t hr_bf16_round(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return bf16_finish(u, u + 0x7fffu + ((u >> 16) & 1u));
}

uint16_t hr_bf16_round_sr(float f, uint32_t r16)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return bf16_finish(u, u + (r16 & 0xffffu));
}

/* The rounding PRNG: xorshift64* per thread, seeded on first use from a
 * fixed constant and the order in which threads first round. */
static _Thread_local uint64_t sr_state;
static _Thread_local uint64_t sr_bits; /* unused random bits, 16 at a time */
static _Thread_local unsigned sr_left;
static atomic_uint_fast64_t sr_threads;

static uint64_t splitmix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

void hr_sgd_sr_seed(uint64_t seed)
{
    sr_state = splitmix64(seed) | 1u;
    sr_left = 0;
}

static inline uint32_t sr_next16(void)
{
    if (!sr_left) {
        if (!sr_state)
            hr_sgd_sr_seed(0x5eedb16full + atomic_fetch_add(&sr_threads, 1));
        uint64_t x = sr_state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        sr_state = x;
        sr_bits = x * 0x2545f4914f6cdd1dull;
        sr_left = 4;
    }
    uint32_t r = (uint32_t)(sr_bits >> 48);
    sr_bits <<= 16;
    sr_left--;
    return r;
}

const float *hr_sgd_row_weights(const hr_row_layout *L, const float *row, float *buf)
{
    if (L->storage != HR_STORAGE_BF16)
        return row;
    uint16_t h[L->k]; /* one read of the live factors */
    memcpy(h, row, (size_t)L->k * sizeof *h);
    for (uint32_t d = 0; d < L->k; d++)
        buf[d] = hr_bf16_to_float(h[d]);
    buf[L->k] = row[L->bias];
    return buf;
}

void hr_sgd_block_to_f32(const hr_row_layout *L, const float *block, uint32_t nrows,
                         uint32_t lda, float *out)
{
    const uint32_t k = L->k, kq = k + 1;
    if (L->storage != HR_STORAGE_BF16) {
        for (uint32_t i = 0; i < nrows; i++)
            memcpy(out + (size_t)i * kq, block + (size_t)i * lda, (size_t)kq * sizeof *out);
        return;
    }
    uint16_t h[k];
    for (uint32_t i = 0; i < nrows; i++) {
        const float *r = block + (size_t)i * lda;
        float *o = out + (size_t)i * kq;
        memcpy(h, r, (size_t)k * sizeof *h); /* one read of the live factors */
        for (uint32_t d = 0; d < k; d++) { /* a shift: vectorizes */
            uint32_t u = (uint32_t)h[d] << 16;
            memcpy(&o[d], &u, sizeof u);
        }
        o[k] = r[L->bias];
    }
}

void hr_sgd_row_to_f32(const hr_row_layout *L, const float *row, float *dst)
{
    assert(layout_ok(L));
    if (L->storage != HR_STORAGE_BF16) {
        hr_sgd_row_read(L, row, dst);
        return;
    }
    const hr_row_layout F = hr_row_layout_f32(L);
    float packed[L->floats]; /* one read of the live row: weights, then the state parts */
    hr_sgd_row_read(L, row, packed);
    memset(dst, 0, (size_t)F.stride * sizeof *dst);
    for (uint32_t d = 0; d < L->k; d++) {
        uint16_t h;
        memcpy(&h, (const char *)packed + 2 * (size_t)d, sizeof h);
        dst[d] = hr_bf16_to_float(h);
    }
    memcpy(dst + F.bias, packed + L->bias, 3 * sizeof *dst); /* bias, count, last_seen */
    memcpy(dst + F.stride, packed + L->stride, (size_t)(F.floats - F.stride) * sizeof *dst);
}

void hr_sgd_row_from_f32(const hr_row_layout *L, float *row, const float *src)
{
    assert(layout_ok(L));
    if (L->storage != HR_STORAGE_BF16) {
        hr_sgd_row_write(L, row, src);
        return;
    }
    const hr_row_layout F = hr_row_layout_f32(L);
    float packed[L->floats];
    memset(packed, 0, sizeof packed);
    for (uint32_t d = 0; d < L->k; d++) {
        uint16_t h = hr_bf16_round(src[d]);
        memcpy((char *)packed + 2 * (size_t)d, &h, sizeof h);
    }
    memcpy(packed + L->bias, src + F.bias, 3 * sizeof *packed);
    memcpy(packed + L->stride, src + F.stride, (size_t)(F.floats - F.stride) * sizeof *packed);
    hr_sgd_row_write(L, row, packed);
}

static double score_bf16(const hr_row_layout *L, const hr_active *a, int n)
{
    const hr_row_layout F = hr_row_layout_f32(L);
    const uint32_t kq = L->k + 1;
    float w[(size_t)n * kq];
    hr_active b[n];
    for (int f = 0; f < n; f++) {
        b[f] = a[f];
        b[f].row = w + (size_t)f * kq;
        hr_sgd_row_weights(L, a[f].row, b[f].row);
    }
    float s[L->k], tmp[L->k], side_sum[2 * L->k];
    bool sided;
    return score_into(&F, b, n, s, tmp, side_sum, &sided);
}

/* Widened copies of the distinct rows (a row named twice shares one copy,
 * as it shares the live row in the F32 kernel), the F32 step on them, then
 * every value the step changed stored back. */
static hr_step_result step_bf16(const hr_row_layout *L, const hr_active *a, int n, float label,
                                float weight, const hr_step_params *p, double *y_before,
                                double *pred_before)
{
    if (n < 1 || n > HR_MAX_ACTIVE) /* the model resolves 1..HR_MAX_ACTIVE */
        return HR_STEP_SKIPPED_NONFINITE;
    const hr_row_layout F = hr_row_layout_f32(L);
    const size_t fl = F.floats;
    const uint32_t k = L->k;
    float stack[4096]; /* 16 KB: 15 rows of k=64 AdaGrad, before and after */
    float *buf = (size_t)n * fl * 2 <= sizeof stack / sizeof *stack ? stack
                                                           : malloc((size_t)n * fl * 2 * sizeof *buf);
    if (!buf)
        return HR_STEP_SKIPPED_NONFINITE; /* nothing written */
    float *before = buf + (size_t)n * fl; /* the copies as read */
    hr_active b[HR_MAX_ACTIVE];
    int owner[HR_MAX_ACTIVE], nu = 0; /* owner[f]: the copy of a[f].row */
    for (int f = 0; f < n; f++) {
        owner[f] = -1;
        for (int g = 0; g < f && owner[f] < 0; g++)
            if (a[g].row == a[f].row)
                owner[f] = owner[g];
        if (owner[f] < 0) {
            owner[f] = nu++;
            float *copy = buf + (size_t)owner[f] * fl;
            hr_sgd_row_to_f32(L, a[f].row, copy);
            memcpy(before + (size_t)owner[f] * fl, copy, fl * sizeof *copy);
        }
        b[f] = a[f];
        b[f].row = buf + (size_t)owner[f] * fl;
    }
    hr_step_result res = hr_sgd_step(&F, b, n, label, weight, p, y_before, pred_before);
    bool stored[HR_MAX_ACTIVE] = {false};
    for (int f = 0; f < n; f++) {
        if (stored[owner[f]])
            continue;
        stored[owner[f]] = true;
        const float *nw = b[f].row, *old = before + (size_t)owner[f] * fl;
        float *r = a[f].row;
        /* What the step wrote, it wrote whole (the F32 kernel copies a
         * row's new factors, or state, in one go): so do we. */
        if (memcmp(nw, old, (size_t)k * sizeof *nw) != 0) {
            uint32_t rnd[k];
            uint16_t h[k];
            for (uint32_t d = 0; d < k; d++)
                rnd[d] = sr_next16();
            for (uint32_t d = 0; d < k; d++) /* a value already bf16 stays as it is */
                h[d] = hr_bf16_round_sr(nw[d], rnd[d]);
            memcpy(r, h, (size_t)k * sizeof *h);
        }
        if (memcmp(&nw[F.bias], &old[F.bias], sizeof *nw) != 0)
            r[L->bias] = nw[F.bias];
        const uint32_t nstate = F.floats - F.stride;
        if (nstate && memcmp(nw + F.stride, old + F.stride, nstate * sizeof *nw) != 0)
            for (uint32_t j = 0; j < L->parts; j++) { /* piece by piece */
                uint32_t at = j * L->stride, len = nstate - at < L->stride ? nstate - at : L->stride;
                memcpy(r + (size_t)(j + 1) * L->state, nw + F.stride + at, len * sizeof *nw);
            }
    }
    if (buf != stack)
        free(buf);
    return res;
}

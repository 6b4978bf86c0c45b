/*
 * sgd_fast_body.h - the fused kernel's body, included by sgd_fast.c once per
 * instruction-set variant (no include guard, on purpose). The includer
 * defines:
 *   FK(name)  the variant's name for a function (name_generic, name_avx2, ...)
 *   FK_ATTR   the variant's function attributes (its target("...")), on every
 *             function here, so the inlined helpers compile for that target
 *   FK_W      floats per vector of pass 1 (8: 32 bytes; 16: 64 bytes)
 * and includes sgd_internal.h, <math.h>, <string.h> first.
 *
 * The model is hr_sgd_step_general's: y = sum_f w_f x_f + sum over pairs
 * (f, g) of features with factors that are not on the same side of
 * <v_f, v_g> x_f x_g; here in the plain form, pair by pair. With p_f = x_f
 * v_f, feature f's partners sum P_f = sum_{g paired with f} p_g, and
 * dy/dv_f = x_f P_f. The pair (user and item only) is one dot product:
 * y = lin + x_u x_v <u, v>, dy/du = x_u x_v v, dy/dv = x_u x_v u.
 * Pass 1 (vector extensions, two accumulators) sums the score, and
 * |dy/dv_f|^2 when clipping; pass 2 (a plain loop the compiler vectorizes
 * for the variant's target, restrict rows) computes per coordinate the
 * gradient, the AdaGrad state and the new weight into a row-sized scratch,
 * OR-ing the exponent test into a flag per row as it goes.
 */

/* Loops over the features (m <= HR_FAST_MAX_FACTORS, known at compile
 * time) unrolled whole, so the coordinate loop around them vectorizes. */
#ifndef FK_UNROLL
#if defined(__clang__) /* unrolls them unasked; a forced unroll it cannot do fails -Werror */
#define FK_UNROLL
#else
#define FK_UNROLL _Pragma("GCC unroll 8")
#endif
#endif
/* The coordinate loop of pass 2 reads the rows and writes the scratch,
 * which never overlap: no run-time aliasing checks (GCC gives up on
 * vectorizing beyond 10 of them, and drops restrict when inlining; clang
 * keeps restrict, and its assume_safety would force vectorization where
 * its cost model declines, which -Werror turns into an error). */
#ifndef FK_IVDEP
#if defined(__clang__)
#define FK_IVDEP _Pragma("clang loop vectorize(assume_safety)")
#else
#define FK_IVDEP _Pragma("GCC ivdep")
#endif
#endif

typedef float FK(vf) __attribute__((vector_size(FK_W * sizeof(float))));

FK_ATTR static inline __attribute__((always_inline)) float FK(hsum)(const FK(vf) * v)
{
    float l[FK_W];
    memcpy(l, v, sizeof l);
    for (int w = FK_W / 2; w >= 1; w /= 2) /* pairwise: a tree of adds */
        for (int j = 0; j < w; j++)
            l[j] += l[j + w];
    return l[0];
}

/* One block of FK_W coordinates at i: the score into *acc, |x_f P_f|^2 into
 * h[f] when clip. pair: m == 2 and the two are paired (c unused). */
FK_ATTR static inline __attribute__((always_inline)) void
FK(block1)(const int m, const bool pair, const bool clip, float *const *rw, const float *xs,
           const float (*c)[HR_FAST_MAX_FACTORS], uint32_t i, FK(vf) * acc, FK(vf) * h)
{
    FK(vf) w[HR_FAST_MAX_FACTORS];
    FK_UNROLL
    for (int f = 0; f < m; f++)
        memcpy(&w[f], rw[f] + i, sizeof w[f]);
    if (pair) {
        *acc += w[0] * w[1];
        if (clip) {
            h[0] += w[1] * w[1];
            h[1] += w[0] * w[0];
        }
        return;
    }
    FK(vf) pf[HR_FAST_MAX_FACTORS], part[HR_FAST_MAX_FACTORS];
    FK_UNROLL
    for (int f = 0; f < m; f++) {
        pf[f] = w[f] * xs[f];
        part[f] = (FK(vf)){0};
    }
    FK_UNROLL
    for (int f = 0; f < m; f++)
        FK_UNROLL
        for (int g = f + 1; g < m; g++) {
            FK(vf) pg = pf[g] * c[f][g]; /* c is 0 or 1: branch-free */
            *acc += pf[f] * pg;
            if (clip) {
                part[f] += pg;
                part[g] += pf[f] * c[f][g];
            }
        }
    if (clip)
        FK_UNROLL
        for (int f = 0; f < m; f++) {
            FK(vf) t = part[f] * xs[f];
            h[f] += t * t;
        }
}

/* Pass 1: returns sum_pairs <p_f, p_g> (pair: <u, v>, without x_u x_v) and,
 * when clip, hsq[f] = |x_f P_f|^2 (pair: |v|^2 for u, |u|^2 for v, without
 * (x_u x_v)^2). */
FK_ATTR static inline __attribute__((always_inline)) float
FK(pass1)(const int m, const uint32_t k, const bool pair, const bool clip, float *const *rw,
          const float *xs, const float (*c)[HR_FAST_MAX_FACTORS], float *hsq)
{
    FK(vf) acc0 = {0}, acc1 = {0}, h[HR_FAST_MAX_FACTORS];
    FK_UNROLL
    for (int f = 0; f < m; f++)
        h[f] = acc0;
    uint32_t i = 0;
    for (; i + 2 * FK_W <= k; i += 2 * FK_W) {
        FK(block1)(m, pair, clip, rw, xs, c, i, &acc0, h);
        FK(block1)(m, pair, clip, rw, xs, c, i + FK_W, &acc1, h);
    }
    for (; i + FK_W <= k; i += FK_W)
        FK(block1)(m, pair, clip, rw, xs, c, i, &acc0, h);
    acc0 += acc1;
    float dot = FK(hsum)(&acc0);
    float ht[HR_FAST_MAX_FACTORS] = {0};
    for (; i < k; i++) { /* the tail, k not a multiple of FK_W */
        if (pair) {
            float u = rw[0][i], v = rw[1][i];
            dot += u * v;
            ht[0] += v * v;
            ht[1] += u * u;
            continue;
        }
        float pf[HR_FAST_MAX_FACTORS], part[HR_FAST_MAX_FACTORS] = {0};
        FK_UNROLL
        for (int f = 0; f < m; f++)
            pf[f] = rw[f][i] * xs[f];
        FK_UNROLL
        for (int f = 0; f < m; f++)
            FK_UNROLL
            for (int g = f + 1; g < m; g++) {
                if (c[f][g] == 0)
                    continue;
                dot += pf[f] * pf[g];
                part[f] += pf[g];
                part[g] += pf[f];
            }
        FK_UNROLL
        for (int f = 0; f < m; f++) {
            float t = part[f] * xs[f];
            ht[f] += t * t;
        }
    }
    if (clip)
        FK_UNROLL
        for (int f = 0; f < m; f++)
            hsq[f] = FK(hsum)(&h[f]) + ht[f];
    return dot;
}

/* Pass 2 for the pair (rows u, v; AdaGrad state su, sv when ada): new
 * weights into nu, nv, new state into gu, gv; returns a bit per row whose
 * new values are not all finite. cu = gf x_u x_v. */
FK_ATTR static inline __attribute__((always_inline)) unsigned
FK(pass2_pair)(const uint32_t k, const bool ada, const float *restrict u, const float *restrict v,
               const float *restrict su, const float *restrict sv, float cu, float ru, float lu,
               float rv, float lv, float *restrict nu, float *restrict nv, float *restrict gu,
               float *restrict gv)
{
    uint32_t bad_u = 0, bad_v = 0;
    FK_IVDEP
    for (uint32_t d = 0; d < k; d++) {
        float uw = u[d], vw = v[d];
        float gru = cu * vw + lu * uw, grv = cu * uw + lv * vw;
        float nwu, nwv;
        if (ada) {
            float Gu = su[d] + gru * gru, Gv = sv[d] + grv * grv;
            gu[d] = Gu;
            gv[d] = Gv;
            nwu = uw - ru * gru / sqrtf(Gu);
            nwv = vw - rv * grv / sqrtf(Gv);
            uint32_t bu, bv;
            memcpy(&bu, &Gu, sizeof bu);
            memcpy(&bv, &Gv, sizeof bv);
            bad_u |= (bu & 0x7f800000u) == 0x7f800000u;
            bad_v |= (bv & 0x7f800000u) == 0x7f800000u;
        } else {
            nwu = uw - ru * gru;
            nwv = vw - rv * grv;
        }
        nu[d] = nwu;
        nv[d] = nwv;
        uint32_t bu, bv;
        memcpy(&bu, &nwu, sizeof bu);
        memcpy(&bv, &nwv, sizeof bv);
        bad_u |= (bu & 0x7f800000u) == 0x7f800000u;
        bad_v |= (bv & 0x7f800000u) == 0x7f800000u;
    }
    return (bad_u ? 1u : 0u) | (bad_v ? 2u : 0u);
}

/* Pass 2 for m features with factors (rows r0.., AdaGrad state s0.. when
 * ada; restrict, one parameter each, so the loop needs no aliasing checks):
 * row f's new weights into n<f>, its new state into g<f> (k floats each); returns
 * a bit per row whose new values are not all finite. gx[f] = gf x_f. */
FK_ATTR static inline __attribute__((always_inline)) unsigned
FK(pass2_ctx)(const int m, const uint32_t k, const bool ada, const float *restrict r0,
              const float *restrict r1, const float *restrict r2, const float *restrict r3,
              const float *restrict r4, const float *restrict r5, const float *restrict s0,
              const float *restrict s1, const float *restrict s2, const float *restrict s3,
              const float *restrict s4, const float *restrict s5, const float *xs_in,
              const float *gx_in, const float *rate_in, const float *l2_in,
              const float (*c_in)[HR_FAST_MAX_FACTORS], float *restrict n0, float *restrict n1,
              float *restrict n2, float *restrict n3, float *restrict n4, float *restrict n5,
              float *restrict g0, float *restrict g1, float *restrict g2, float *restrict g3,
              float *restrict g4, float *restrict g5)
{
#define FK_NW(f) ((f) == 0 ? n0 : (f) == 1 ? n1 : (f) == 2 ? n2 : (f) == 3 ? n3 : (f) == 4 ? n4 : n5)
#define FK_NG(f) ((f) == 0 ? g0 : (f) == 1 ? g1 : (f) == 2 ? g2 : (f) == 3 ? g3 : (f) == 4 ? g4 : g5)
#define FK_ROW(f) ((f) == 0 ? r0 : (f) == 1 ? r1 : (f) == 2 ? r2 : (f) == 3 ? r3 : (f) == 4 ? r4 : r5)
#define FK_ST(f) ((f) == 0 ? s0 : (f) == 1 ? s1 : (f) == 2 ? s2 : (f) == 3 ? s3 : (f) == 4 ? s4 : s5)
    float xs[HR_FAST_MAX_FACTORS], gx[HR_FAST_MAX_FACTORS], rate[HR_FAST_MAX_FACTORS],
        l2[HR_FAST_MAX_FACTORS], c[HR_FAST_MAX_FACTORS][HR_FAST_MAX_FACTORS];
    uint32_t bad[HR_FAST_MAX_FACTORS];
    FK_UNROLL
    for (int f = 0; f < m; f++) {
        xs[f] = xs_in[f];
        gx[f] = gx_in[f];
        rate[f] = rate_in[f];
        l2[f] = l2_in[f];
        bad[f] = 0;
        FK_UNROLL
        for (int g = 0; g < m; g++)
            c[f][g] = c_in[f][g];
    }
    FK_IVDEP
    for (uint32_t d = 0; d < k; d++) {
        float w[HR_FAST_MAX_FACTORS], pf[HR_FAST_MAX_FACTORS], part[HR_FAST_MAX_FACTORS];
        FK_UNROLL
        for (int f = 0; f < m; f++) {
            w[f] = FK_ROW(f)[d];
            pf[f] = w[f] * xs[f];
            part[f] = 0;
        }
        FK_UNROLL
        for (int f = 0; f < m; f++)
            FK_UNROLL
            for (int g = f + 1; g < m; g++) { /* c is 0 or 1: branch-free */
                part[f] += c[f][g] * pf[g];
                part[g] += c[f][g] * pf[f];
            }
        FK_UNROLL
        for (int f = 0; f < m; f++) {
            float gr = gx[f] * part[f] + l2[f] * w[f];
            float n;
            if (ada) {
                float G = FK_ST(f)[d] + gr * gr;
                FK_NG(f)[d] = G;
                n = w[f] - rate[f] * gr / sqrtf(G);
                uint32_t b;
                memcpy(&b, &G, sizeof b);
                bad[f] |= (b & 0x7f800000u) == 0x7f800000u;
            } else {
                n = w[f] - rate[f] * gr;
            }
            FK_NW(f)[d] = n;
            uint32_t b;
            memcpy(&b, &n, sizeof b);
            bad[f] |= (b & 0x7f800000u) == 0x7f800000u;
        }
    }
#undef FK_ROW
#undef FK_ST
#undef FK_NW
#undef FK_NG
    unsigned mask = 0;
    FK_UNROLL
    for (int f = 0; f < m; f++)
        mask |= bad[f] ? 1u << f : 0u;
    return mask;
}

/* Pass 1 and 2 with m and k known at compile time where that pays: the
 * pair at k in {16, 32, 64, 128}. */
FK_ATTR static float FK(score)(const int m, const uint32_t k, const bool pair, const bool clip,
                               float *const *rw, const float *xs,
                               const float (*c)[HR_FAST_MAX_FACTORS], float *hsq)
{
#define FK_P1(M, K, PAIR)                                                                          \
    return clip ? FK(pass1)(M, K, PAIR, true, rw, xs, c, hsq)                                      \
                : FK(pass1)(M, K, PAIR, false, rw, xs, c, hsq)
    if (pair) {
        switch (k) {
        case 16: FK_P1(2, 16, true);
        case 32: FK_P1(2, 32, true);
        case 64: FK_P1(2, 64, true);
        case 128: FK_P1(2, 128, true);
        default: FK_P1(2, k, true);
        }
    }
    switch (m) {
    case 2: FK_P1(2, k, false);
    case 3: FK_P1(3, k, false);
    case 4: FK_P1(4, k, false);
    case 5: FK_P1(5, k, false);
    default: FK_P1(6, k, false);
    }
#undef FK_P1
}

FK_ATTR static unsigned FK(update)(const int m, const uint32_t k, const bool pair, const bool ada,
                                   float *const *rw, float *const *st, const float *xs,
                                   const float *gx, const float *rate, const float *l2,
                                   const float (*c)[HR_FAST_MAX_FACTORS], float *restrict nw,
                                   float *restrict ng)
{
    if (pair) {
        const float cu = gx[0] * xs[1]; /* gf x_u x_v */
#define FK_P2(K)                                                                                   \
    return ada ? FK(pass2_pair)(K, true, rw[0], rw[1], st[0], st[1], cu, rate[0], l2[0], rate[1],  \
                                l2[1], nw, nw + (K), ng, ng + (K))                                 \
               : FK(pass2_pair)(K, false, rw[0], rw[1], NULL, NULL, cu, rate[0], l2[0], rate[1],   \
                                l2[1], nw, nw + (K), NULL, NULL)
        switch (k) {
        case 16: FK_P2(16);
        case 32: FK_P2(32);
        case 64: FK_P2(64);
        case 128: FK_P2(128);
        default: FK_P2(k);
        }
#undef FK_P2
    }
#define FK_SCRATCH                                                                                 \
    nw, nw + k, nw + 2 * k, nw + 3 * k, nw + 4 * k, nw + 5 * k, ng, ng + k, ng + 2 * k, ng + 3 * k,  \
        ng + 4 * k, ng + 5 * k
#define FK_PC(M)                                                                                   \
    return ada ? FK(pass2_ctx)(M, k, true, rw[0], rw[1], rw[2], rw[3], rw[4], rw[5], st[0], st[1],   \
                               st[2], st[3], st[4], st[5], xs, gx, rate, l2, c, FK_SCRATCH)      \
               : FK(pass2_ctx)(M, k, false, rw[0], rw[1], rw[2], rw[3], rw[4], rw[5], NULL, NULL,  \
                               NULL, NULL, NULL, NULL, xs, gx, rate, l2, c, FK_SCRATCH)
    switch (m) {
    case 2: FK_PC(2);
    case 3: FK_PC(3);
    case 4: FK_PC(4);
    case 5: FK_PC(5);
    default: FK_PC(6);
    }
#undef FK_PC
#undef FK_SCRATCH
}

/* The step: hr_sgd_step_general's contract, for the shapes of
 * hr_sgd_fast_shape. */
FK_ATTR static hr_step_result FK(step)(const hr_row_layout *L, const hr_active *a, int n,
                                       float label, float weight, const hr_step_params *p,
                                       double *y_before, double *pred_before)
{
    const uint32_t k = L->k;
    float *rw[HR_FAST_MAX_FACTORS] = {0}, *st[HR_FAST_MAX_FACTORS] = {0};
    float xs[HR_FAST_MAX_FACTORS];
    uint8_t side[HR_FAST_MAX_FACTORS];
    int m = 0;
    double lin = 0;
    for (int f = 0; f < n; f++) {
        lin += (double)a[f].row[L->bias] * a[f].x;
        if (a[f].has_v) {
            rw[m] = a[f].row;
            st[m] = a[f].row + L->acc;
            xs[m] = a[f].x;
            side[m++] = a[f].side;
        }
    }
    /* c[f][g]: 1 when f and g form a pair of the model (not on one side) */
    float c[HR_FAST_MAX_FACTORS][HR_FAST_MAX_FACTORS];
    FK_UNROLL
    for (int f = 0; f < m; f++)
        for (int g = 0; g < m; g++)
            c[f][g] = f != g && !(side[f] && side[f] == side[g]) ? 1.0f : 0.0f;
    const bool pair = m == 2 && c[0][1] != 0;
    const bool clip = p->clip > 0;
    float hsq[HR_FAST_MAX_FACTORS] = {0};
    float dot = FK(score)(m, k, pair, clip, rw, xs, (const float(*)[HR_FAST_MAX_FACTORS])c, hsq);
    const float xuv = pair ? xs[0] * xs[1] : 1.0f;
    double y = lin + (double)(pair ? dot * xuv : dot), g;
    hr_step_result first = step_gradient(p, y, label, weight, y_before, pred_before, &g);
    if (first != HR_STEP_APPLIED || g == 0)
        return first;
    hr_step_result result = HR_STEP_APPLIED;
    if (clip) {
        double norm2 = 0;
        for (int f = 0, j = 0; f < n; f++) {
            norm2 += (double)a[f].x * a[f].x;
            if (a[f].has_v) {
                norm2 += pair ? (double)hsq[j] * xuv * xuv : hsq[j];
                j++;
            }
        }
        if ((result = clip_gradient(&g, norm2, p->clip)) == HR_STEP_SKIPPED_NONFINITE)
            return result;
    }

    const float gf = (float)g;
    int nonfinite = 0;
    float rate[HR_FAST_MAX_FACTORS], l2[HR_FAST_MAX_FACTORS], gx[HR_FAST_MAX_FACTORS];
    for (int f = 0, j = 0; f < n; f++) {
        if (a[f].x != 0) {
            const hr_group bg = a[f].has_v ? HR_GROUP_BIAS : HR_GROUP_GLOBAL;
            nonfinite += update_bias(L, a[f].row, gf * a[f].x, p->rate[bg], p->l2[bg], p);
        }
        if (a[f].has_v) {
            rate[j] = p->rate[a[f].group];
            l2[j] = p->l2[a[f].group];
            gx[j++] = gf * a[f].x;
        }
    }
    const bool ada = p->opt != HR_OPT_SGD && L->acc;
    float nw[HR_FAST_MAX_FACTORS * (size_t)k], ng[HR_FAST_MAX_FACTORS * (size_t)k];
    unsigned bad = FK(update)(m, k, pair, ada, rw, st, xs, gx, rate, l2,
                              (const float(*)[HR_FAST_MAX_FACTORS])c, nw, ng);
    FK_UNROLL
    for (int f = 0; f < m; f++) {
        if (xs[f] == 0) /* a feature of value 0 is not updated (nor counted) */
            continue;
        if (bad & (1u << f)) {
            nonfinite++;
            continue;
        }
        if (ada)
            memcpy(st[f], ng + (size_t)f * k, k * sizeof(float));
        memcpy(rw[f], nw + (size_t)f * k, k * sizeof(float));
    }
    return nonfinite ? HR_STEP_SKIPPED_NONFINITE : result;
}

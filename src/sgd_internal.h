/*
 * sgd_internal.h - what the kernels of sgd.c (the general kernel and the
 * exact pair path) and sgd_fast.c (the fused kernel) share: the training
 * link, the gradient clip and the linear-weight update, inline so each
 * kernel keeps them in its loop. Private to src/.
 */
#ifndef HOGREC_SGD_INTERNAL_H
#define HOGREC_SGD_INTERNAL_H

#include <math.h>

#include "hogrec/sgd.h"

/* One coordinate of FTRL-Proximal (McMahan et al. 2013) on a linear weight.
 * alpha is the learning rate; z and n are the per-coordinate state. */
static inline float ftrl_weight(float z, float nacc, float alpha, float beta, float l1, float l2)
{
    if (fabsf(z) <= l1)
        return 0.0f;
    float sign = z < 0 ? -1.0f : 1.0f;
    return -(z - sign * l1) / ((beta + sqrtf(nacc)) / alpha + l2);
}

/* Linear weight of one feature; returns 1 if a non-finite value was refused.
 * Inlined into both kernels: three calls per event, each re-testing the
 * optimizer, cost the pair path about 20 ns at k=64 as calls. */
static inline __attribute__((always_inline)) int
update_bias(const hr_row_layout *L, float *r, float gb, float rate, float l2,
            const hr_step_params *p)
{
    float wb = r[L->bias];
    if (p->opt == HR_OPT_FTRL && L->ftrl) {
        float z = r[L->ftrl], na = r[L->ftrl + 1];
        float nn = na + gb * gb;
        float sigma = (sqrtf(nn) - sqrtf(na)) / rate;
        float nz = z + gb - sigma * wb;
        float nw = ftrl_weight(nz, nn, rate, p->ftrl_beta, p->ftrl_l1, l2);
        if (!isfinite(nz) || !isfinite(nn) || !isfinite(nw))
            return 1;
        r[L->ftrl] = nz;
        r[L->ftrl + 1] = nn;
        r[L->bias] = nw;
    } else if (p->opt != HR_OPT_SGD && L->acc) {
        float gr = gb + l2 * wb;
        float G = r[L->acc + L->k] + gr * gr;
        float nw = wb - rate * gr / sqrtf(G);
        if (!isfinite(G) || !isfinite(nw))
            return 1;
        r[L->acc + L->k] = G;
        r[L->bias] = nw;
    } else {
        float nw = wb - rate * (gb + l2 * wb);
        if (!isfinite(nw))
            return 1;
        r[L->bias] = nw;
    }
    return 0;
}

/* Gradient clipping, both kernels: the gradient's norm is |g| sqrt(norm2)
 * (norm2: the squared norm of dy/dtheta); above clip, *g is scaled down to
 * it (HR_STEP_CLIPPED); a non-finite norm skips the step. */
static inline hr_step_result clip_gradient(double *g, double norm2, double clip)
{
    double norm = fabs(*g) * sqrt(norm2);
    if (!isfinite(norm))
        return HR_STEP_SKIPPED_NONFINITE;
    if (norm > clip) {
        *g *= clip / norm;
        return HR_STEP_CLIPPED;
    }
    return HR_STEP_APPLIED;
}

/* The link in training (both kernels, so the pair path stays bit-identical
 * to the general one): the logistic's sigmoid with a float exp. The
 * gradient is formed in float (gf) anyway, and a float sigmoid is within
 * 1e-7 of the double one; glibc's double exp cost about 15 ns per event.
 * Scoring (hr_sgd_score, hr_row_link) keeps the double sigmoid. */
static inline double train_link(hr_loss loss, double y)
{
    if (loss == HR_LOSS_SQUARED)
        return y;
    return 1.0f / (1.0f + expf((float)-y));
}

/* Every kernel's step from the score y: records y and the prediction
 * (pred_before may be NULL), and *g = dLoss/dy (both losses). Returns
 * HR_STEP_SKIPPED_NONFINITE when y or *g is not finite, else
 * HR_STEP_APPLIED (the caller has nothing more to do when *g is 0). */
static inline hr_step_result step_gradient(const hr_step_params *p, double y, float label,
                                           float weight, double *y_before, double *pred_before,
                                           double *g)
{
    *y_before = y;
    double pred = train_link(p->loss, y);
    if (pred_before)
        *pred_before = pred;
    *g = weight * (pred - label);
    return isfinite(y) && isfinite(*g) ? HR_STEP_APPLIED : HR_STEP_SKIPPED_NONFINITE;
}

/* The kernel "exact" (sgd.c): the user-and-item pair path, bit-identical to
 * hr_sgd_step_general (which it runs for every other shape). For the
 * shapes hr_sgd_fast_shape accepts. */
hr_step_result hr_sgd_step_exact(const hr_row_layout *L, const hr_active *a, int n, float label,
                                 float weight, const hr_step_params *p, double *y_before,
                                 double *pred_before);

#endif

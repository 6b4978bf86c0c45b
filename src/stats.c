/*
 * stats.c - progressive-validation window and log2 histograms.
 * Writers: trainer threads (a batch per lock). Readers: HTTP stats, replay.
 *
 * Every loop over scores ends on any float input: points whose prediction,
 * label or weight is not finite never enter the window (they are counted),
 * and hr_auc drops NaN scores and advances its tie loop by at least one.
 */
#include "hogrec/stats.h"

#include <assert.h>
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

struct hr_progress {
    pthread_mutex_t mu;
    hr_progress_point *ring; /* window points, oldest overwritten */
    size_t window;           /* ring capacity */
    size_t head;             /* next write position */
    uint64_t total;          /* points ever added */
    uint64_t nonfinite;      /* points refused: prediction, label or weight not finite */
    double loss_sum;         /* sum of losses ever */
    int squared;             /* squared loss instead of logistic */
};

double hr_logloss(double p, double label)
{
    const double eps = 1e-7;
    if (p < eps)
        p = eps;
    if (p > 1 - eps)
        p = 1 - eps;
    /* A click label needs one log: the other term is 0 times a finite log
     * (a zero) added to a nonzero log, so the general form gives the same
     * bits (test_stats checks it). */
    if (label == 1)
        return -log(p);
    if (label == 0)
        return -log(1 - p);
    return -(label * log(p) + (1 - label) * log(1 - p));
}

static double point_loss(const hr_progress *p, const hr_progress_point *x)
{
    if (p->squared) {
        double e = (double)x->pred - x->label;
        return e * e;
    }
    return hr_logloss(x->pred, x->label);
}

hr_status hr_progress_create(size_t window, int squared, hr_progress **out)
{
    *out = NULL;
    if (window < 1)
        return HR_EINVAL;
    hr_progress *p = calloc(1, sizeof *p);
    if (!p)
        return HR_ENOMEM;
    p->ring = calloc(window, sizeof *p->ring);
    if (!p->ring) {
        free(p);
        return HR_ENOMEM;
    }
    p->window = window;
    p->squared = squared;
    pthread_mutex_init(&p->mu, NULL);
    *out = p;
    return HR_OK;
}

void hr_progress_destroy(hr_progress *p)
{
    if (!p)
        return;
    pthread_mutex_destroy(&p->mu);
    free(p->ring);
    free(p);
}

static bool point_finite(const hr_progress_point *x)
{
    return isfinite(x->pred) && isfinite(x->label) && isfinite(x->weight);
}

void hr_progress_add(hr_progress *p, const hr_progress_point *pts, size_t n)
{
    double loss = 0;
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        if (point_finite(&pts[i]))
            loss += point_loss(p, &pts[i]);
        else
            bad++;
    }
    pthread_mutex_lock(&p->mu);
    assert(p->head < p->window);
    if (bad == 0) {
        /* All finite (the usual case): the last window's worth, in at most
         * two spans of the ring; the same ring and head as point by point. */
        size_t skip = n > p->window ? n - p->window : 0;
        size_t head = (p->head + skip % p->window) % p->window, left = n - skip;
        while (left) {
            size_t span = p->window - head < left ? p->window - head : left;
            memcpy(p->ring + head, pts + (n - left), span * sizeof *pts);
            head = head + span == p->window ? 0 : head + span;
            left -= span;
        }
        p->head = head;
    } else {
        for (size_t i = 0; i < n; i++) {
            if (!point_finite(&pts[i]))
                continue;
            p->ring[p->head] = pts[i];
            p->head = p->head + 1 == p->window ? 0 : p->head + 1;
        }
    }
    p->total += n - bad;
    p->nonfinite += bad;
    p->loss_sum += loss;
    pthread_mutex_unlock(&p->mu);
}

void hr_progress_reset(hr_progress *p)
{
    pthread_mutex_lock(&p->mu);
    p->head = 0;
    p->total = 0;
    p->nonfinite = 0;
    p->loss_sum = 0;
    pthread_mutex_unlock(&p->mu);
}

typedef struct {
    float s, l;
} pair;

/* A total order as long as no score is NaN (hr_auc drops those first). */
static int cmp_pair(const void *a, const void *b)
{
    float x = ((const pair *)a)->s, y = ((const pair *)b)->s;
    return (x > y) - (x < y);
}

double hr_auc(const float *scores, const float *labels, size_t n_in)
{
    pair *v = malloc((n_in ? n_in : 1) * sizeof *v);
    if (!v)
        return NAN;
    size_t n = 0, npos = 0;
    for (size_t i = 0; i < n_in; i++) {
        if (isnan(scores[i]) || isnan(labels[i]))
            continue; /* no rank: left out */
        v[n].s = scores[i];
        v[n].l = labels[i];
        npos += labels[i] >= 0.5f;
        n++;
    }
    size_t nneg = n - npos;
    if (npos == 0 || nneg == 0) {
        free(v);
        return NAN;
    }
    qsort(v, n, sizeof *v, cmp_pair);
    double rank_sum = 0; /* sum of (1-based, tie-averaged) ranks of positives */
    for (size_t i = 0; i < n;) {
        size_t j = i + 1; /* a run of equal scores, at least one long */
        while (j < n && v[j].s == v[i].s)
            j++;
        double avg = (double)(i + 1 + j) / 2.0;
        for (size_t t = i; t < j; t++)
            if (v[t].l >= 0.5f)
                rank_sum += avg;
        i = j;
    }
    free(v);
    return (rank_sum - (double)npos * (npos + 1) / 2.0) / ((double)npos * nneg);
}

void hr_progress_get(hr_progress *p, size_t last_n, hr_progress_report *out)
{
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&p->mu);
    size_t have = p->total < p->window ? (size_t)p->total : p->window;
    size_t n = last_n && last_n < have ? last_n : have;
    assert(n <= p->window && p->head < p->window);
    hr_progress_point *copy = malloc((n ? n : 1) * sizeof *copy);
    if (copy)
        for (size_t i = 0; i < n; i++)
            copy[i] = p->ring[(p->head + p->window - n + i) % p->window];
    out->total = p->total;
    out->nonfinite = p->nonfinite;
    out->loss_total = p->total ? p->loss_sum / (double)p->total : NAN;
    pthread_mutex_unlock(&p->mu);
    if (!copy) {
        out->loss = out->rmse = out->auc = out->mean_pred = out->mean_label = NAN;
        return;
    }
    double wsum = 0, lsum = 0, se = 0, mp = 0, ml = 0;
    float *sc = malloc((n ? n : 1) * sizeof *sc), *lb = malloc((n ? n : 1) * sizeof *lb);
    for (size_t i = 0; i < n; i++) {
        double w = copy[i].weight > 0 ? copy[i].weight : 0;
        wsum += w;
        lsum += w * point_loss(p, &copy[i]);
        double e = (double)copy[i].pred - copy[i].label;
        se += w * e * e;
        mp += w * copy[i].pred;
        ml += w * copy[i].label;
        if (sc && lb) {
            sc[i] = copy[i].pred;
            lb[i] = copy[i].label;
        }
    }
    out->n = n;
    out->loss = wsum > 0 ? lsum / wsum : NAN;
    out->rmse = wsum > 0 ? sqrt(se / wsum) : NAN;
    out->mean_pred = wsum > 0 ? mp / wsum : NAN;
    out->mean_label = wsum > 0 ? ml / wsum : NAN;
    out->auc = (!p->squared && sc && lb) ? hr_auc(sc, lb, n) : NAN;
    free(sc);
    free(lb);
    free(copy);
}

void hr_hist_add(hr_hist *h, uint64_t value)
{
    unsigned b = value ? 64 - (unsigned)__builtin_clzll(value) : 0;
    if (b >= HR_HIST_BUCKETS)
        b = HR_HIST_BUCKETS - 1;
    atomic_fetch_add_explicit(&h->b[b], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->count, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum, value, memory_order_relaxed);
}

static inline void owned_add(atomic_uint_fast64_t *c, uint64_t n)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

void hr_hist_add_owned(hr_hist *h, uint64_t value)
{
    unsigned b = value ? 64 - (unsigned)__builtin_clzll(value) : 0;
    if (b >= HR_HIST_BUCKETS)
        b = HR_HIST_BUCKETS - 1;
    owned_add(&h->b[b], 1);
    owned_add(&h->count, 1);
    owned_add(&h->sum, value);
}

void hr_hist_add_counts_owned(hr_hist *h, const uint64_t b[HR_HIST_BUCKETS], uint64_t count,
                              uint64_t sum)
{
    for (int i = 0; i < HR_HIST_BUCKETS; i++)
        if (b[i])
            owned_add(&h->b[i], b[i]);
    owned_add(&h->count, count);
    owned_add(&h->sum, sum);
}

void hr_hist_merge(hr_hist *dst, const hr_hist *const *srcs, size_t n)
{
    uint64_t b[HR_HIST_BUCKETS] = {0}, count = 0, sum = 0;
    for (size_t s = 0; s < n; s++) {
        hr_hist *src = (hr_hist *)srcs[s];
        for (int i = 0; i < HR_HIST_BUCKETS; i++)
            b[i] += atomic_load_explicit(&src->b[i], memory_order_relaxed);
        count += atomic_load_explicit(&src->count, memory_order_relaxed);
        sum += atomic_load_explicit(&src->sum, memory_order_relaxed);
    }
    for (int i = 0; i < HR_HIST_BUCKETS; i++)
        atomic_store_explicit(&dst->b[i], b[i], memory_order_relaxed);
    atomic_store_explicit(&dst->count, count, memory_order_relaxed);
    atomic_store_explicit(&dst->sum, sum, memory_order_relaxed);
}

uint64_t hr_hist_quantile(const hr_hist *h, double q)
{
    assert(q >= 0 && q <= 1); /* the code's constants */
    uint64_t counts[HR_HIST_BUCKETS], total = 0;
    for (int i = 0; i < HR_HIST_BUCKETS; i++) {
        counts[i] = atomic_load_explicit(&((hr_hist *)h)->b[i], memory_order_relaxed);
        total += counts[i];
    }
    if (!total)
        return 0;
    uint64_t target = (uint64_t)ceil(q * (double)total), seen = 0;
    if (target < 1)
        target = 1;
    for (int i = 0; i < HR_HIST_BUCKETS; i++) {
        seen += counts[i];
        if (seen >= target)
            return i == 0 ? 0 : (1ull << i) - 1;
    }
    return UINT64_MAX;
}

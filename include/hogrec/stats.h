/*
 * stats.h - live learning statistics: progressive validation (every event is
 * scored before it is learned from) over a sliding window, and histograms.
 *
 * Progressive validation keeps the last `window` (prediction, label, weight)
 * triples in a ring. From it: windowed logloss (logistic) or RMSE (squared),
 * AUC, and calibration (mean prediction against mean label). Totals since
 * start are kept too. Trainers add points in batches (one lock per batch);
 * readers take a snapshot under the same lock and compute outside it.
 *
 * hr_hist is a lock-free log2 histogram (staleness, latencies).
 */
#ifndef HOGREC_STATS_H
#define HOGREC_STATS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "hogrec/common.h"

typedef struct {
    float pred;   /* probability (logistic) or value (squared), before learning */
    float label;
    float weight;
} hr_progress_point;

typedef struct hr_progress hr_progress;

typedef struct {
    uint64_t total;        /* points ever added (finite ones) */
    uint64_t nonfinite;    /* points refused: prediction, label or weight NaN or infinite */
    double loss_total;     /* mean loss over all points (logloss or squared error) */
    size_t n;              /* points in the window used */
    double loss;           /* mean weighted logloss (logistic) or MSE (squared) */
    double rmse;           /* sqrt of mean squared error over the window */
    double auc;            /* AUC over the window (NAN if one class only) */
    double mean_pred;      /* calibration: mean prediction ... */
    double mean_label;     /* ... against mean label */
} hr_progress_report;

/* squared: whether points are squared-loss (RMSE) rather than logistic. */
hr_status hr_progress_create(size_t window, int squared, hr_progress **out);
void hr_progress_destroy(hr_progress *p); /* NULL is a no-op */

/* Adds n points (copied). A point whose prediction, label or weight is not
 * finite is not added, only counted (report.nonfinite): one NaN would make
 * every windowed figure NaN. Thread-safe. */
void hr_progress_add(hr_progress *p, const hr_progress_point *pts, size_t n);

/* Report over the most recent min(last_n, window) points (last_n 0 = all of
 * the window). Thread-safe; O(n log n) for the AUC. */
void hr_progress_get(hr_progress *p, size_t last_n, hr_progress_report *out);

/* Clears the window and totals (for a fresh measurement). */
void hr_progress_reset(hr_progress *p);

/* Logloss of one prediction, clamped to avoid log(0). */
double hr_logloss(double p, double label);

/* AUC of n (score, label>=0.5) pairs by the rank statistic with ties
 * averaged; +-infinity rank as the largest and smallest scores, pairs with a
 * NaN score or label are left out. NAN if only one class remains. Sorts a
 * copy; scores and labels borrowed. */
double hr_auc(const float *scores, const float *labels, size_t n);

/* ---- log2 histogram ---- */

#define HR_HIST_BUCKETS 48
typedef struct {
    atomic_uint_fast64_t b[HR_HIST_BUCKETS]; /* bucket i counts values in [2^(i-1), 2^i), 0 in b[0] */
    atomic_uint_fast64_t count;
    atomic_uint_fast64_t sum;
} hr_hist;

/* Adds a value; any number of threads may add at once. */
void hr_hist_add(hr_hist *h, uint64_t value);
/* Adds a value when this thread is the only writer of h (readers may run):
 * plain relaxed loads and stores, no locked read-modify-write. */
void hr_hist_add_owned(hr_hist *h, uint64_t value);
/* The bucket a value falls in (what hr_hist_add counts it in). */
static inline unsigned hr_hist_bucket(uint64_t value)
{
    unsigned b = value ? 64 - (unsigned)__builtin_clzll(value) : 0;
    return b < HR_HIST_BUCKETS ? b : HR_HIST_BUCKETS - 1;
}
/* Adds counts gathered by the caller (b[i] values in bucket i, count values
 * in all summing to sum) when this thread is the only writer of h: the
 * trainers gather a batch's values and add them once. */
void hr_hist_add_counts_owned(hr_hist *h, const uint64_t b[HR_HIST_BUCKETS], uint64_t count,
                              uint64_t sum);
/* dst = sum of srcs (each read with relaxed loads). */
void hr_hist_merge(hr_hist *dst, const hr_hist *const *srcs, size_t n);
/* Upper bound of the bucket holding quantile q in [0, 1]; 0 if empty. */
uint64_t hr_hist_quantile(const hr_hist *h, double q);

#endif

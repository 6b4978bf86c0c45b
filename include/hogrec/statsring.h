/*
 * statsring.h - the last hour (or more) of the server's figures, one sample
 * a second, for the dashboard's charts (GET /v1/stats/history).
 *
 * Design: a fixed ring of samples, oldest overwritten, filled by a thread
 * of its own that wakes once a second. Each sample is taken from the same
 * snapshot /metrics renders (hr_metrics_gather, scope HR_METRICS_PROM: no
 * checkpoint lock, so a running checkpoint never delays a sample): the
 * progressive window's loss, AUC and calibration, the queue depth and the
 * model's size as they are; counters (accepted, trained, rejected, refused,
 * updates) as rates over the interval since the previous sample; freshness
 * as the p50/p99 of the histogram's buckets added over the interval
 * (hr_hist_quantile over the difference); the effective learning rate of
 * each parameter group as hr_schedule_group_rate gives it at the current
 * update count and the median staleness. Schedule changes are not sampled:
 * the JSON lists the schedule box's history (version, install time) as
 * markers.
 *
 * Threads: the sampler thread writes; hr_statsring_json and
 * hr_statsring_take may be called from any thread (one mutex guards the
 * ring; the snapshot is gathered outside it).
 */
#ifndef HOGREC_STATSRING_H
#define HOGREC_STATSRING_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "hogrec/app.h"
#include "hogrec/common.h"
#include "hogrec/schedule.h"

#define HR_STATSRING_DEFAULT_CAPACITY 3600 /* samples: an hour at one a second */

/* One sample. Rates are per second over the interval since the previous
 * sample (0 for the first one); NAN where the figure is undefined. */
typedef struct {
    uint64_t t_ms;            /* wall time, Unix milliseconds */
    double loss;              /* progressive loss over the window */
    double auc;               /* progressive AUC over the window */
    double mean_prediction;   /* calibration: mean prediction ... */
    double mean_label;        /* ... against the observed positive rate */
    double accepted_ps;       /* events accepted per second */
    double trained_ps;        /* events trained per second */
    double rejected_ps;       /* events rejected per second */
    double refused_ps;        /* events refused (429) per second */
    double updates_ps;        /* model updates per second */
    uint64_t queue_depth;     /* events waiting for a trainer */
    uint64_t freshness_p50_us; /* over the interval; 0 when nothing was applied */
    uint64_t freshness_p99_us;
    double lr[HR_GROUP_COUNT]; /* effective rate per parameter group */
    uint64_t model_bytes;     /* memory of the model */
    uint64_t users, items;    /* ids the model holds */
    uint64_t schedule_version; /* live schedule at the sample */
} hr_statsring_point;

typedef struct hr_statsring hr_statsring;

/* A ring of capacity samples (>= 2) of app (borrowed; must outlive the
 * ring). With period_ms > 0 a thread takes a sample every period_ms; with 0
 * no thread runs (the caller samples: tests). *out is new; HR_ENOMEM or
 * HR_EINVAL (capacity < 2), HR_EIO when the thread cannot start. */
hr_status hr_statsring_start(hr_app *app, size_t capacity, unsigned period_ms,
                             hr_statsring **out);

/* Stops the thread (waits for it); the ring stays readable, with no new
 * samples (the app may close after this). NULL or repeated: a no-op. */
void hr_statsring_halt(hr_statsring *r);

/* Halts the thread and frees the ring. NULL is a no-op. */
void hr_statsring_stop(hr_statsring *r);

/* Takes one sample now (what the thread does each period). */
void hr_statsring_take(hr_statsring *r);

/* Samples held now (at most the capacity). */
size_t hr_statsring_count(hr_statsring *r);

/* The samples newer than since_ms (Unix ms; 0 = all held), oldest first,
 * and the schedule changes installed after since_ms, as a new JSON object
 * {"now_ms", "interval_ms", "capacity", "groups": [names], "samples": [...],
 * "markers": [{"version", "t_ms"}]}; NULL when out of memory. */
json_t *hr_statsring_json(hr_statsring *r, uint64_t since_ms);

#endif

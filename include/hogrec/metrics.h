/*
 * metrics.h - what the server reports about itself, declared once: every
 * figure of GET /v1/stats (JSON) and GET /metrics (Prometheus text) is one
 * row of HR_METRICS below, and both answers are rendered from that list
 * over one snapshot of the app's parts.
 *
 * Design: as memcached and Redis declare their stats, an X-macro list. A row
 * is one of
 *   BOTH(section, key, prom_name, type, help, kind, value)
 *     in /v1/stats at {section: {key: value}} and in /metrics as the family
 *     prom_name with its TYPE and HELP; the normal case;
 *   STATS(section, key, kind, value)
 *     in /v1/stats only (detail /metrics does not export);
 *   PROM(prom_name, type, help, kind, value)
 *     in /metrics only.
 * section is a dotted path of JSON objects ("progressive.window"; "" = the
 * top level); type is counter or gauge; kind is u64, f64 (JSON null when
 * not finite; Prometheus NaN/+Inf/-Inf) or bool; value is a field of the
 * snapshot `s` (an lvalue, so that tests can set it). Rows come in /v1/stats
 * order; /metrics keeps the same order. A new figure is one row here plus,
 * when the snapshot does not have it yet, one field and one line of
 * hr_metrics_gather. tests/test_metrics.c checks that every BOTH row is
 * found in both answers and that neither answer has a figure no row (or
 * HR_METRICS_FAMILIES) declares.
 *
 * Besides the rows: the families that are not one sample (HR_METRICS_FAMILIES:
 * per-route HTTP counts and latency histograms, the freshness summary) and
 * two JSON objects other modules write (schedule, checkpoint).
 *
 * The per-route HTTP counters belong to the HTTP server (http.c counts into
 * hr_metrics_route); this module only renders them.
 *
 * Threads: gather and render from any thread (everything read is
 * thread-safe); a snapshot belongs to the thread that gathered it.
 */
#ifndef HOGREC_METRICS_H
#define HOGREC_METRICS_H

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hogrec/app.h"
#include "hogrec/cluster.h"
#include "hogrec/common.h"
#include "hogrec/dedup.h"
#include "hogrec/events.h"
#include "hogrec/queue.h"
#include "hogrec/stats.h"
#include "hogrec/trainer.h"
#include "hogrec/watermark.h"

/* clang-format off */
#define HR_METRICS(BOTH, STATS, PROM)                                                            \
    BOTH("events", "accepted", "hogrec_events_accepted_total", counter,                          \
         "Events accepted (queued, and logged with a database).", u64, s->queue.accepted)        \
    BOTH("events", "trained", "hogrec_events_trained_total", counter,                            \
         "Accepted events the trainers applied to the model (sampled negatives not counted).",   \
         u64, s->trainer.trained)                                                                \
    BOTH("events", "applied_seq", "hogrec_events_applied_seq", gauge,                            \
         "Highest seq such that every accepted event up to it is applied to the model (what "    \
         "min_seq waits for).", u64, s->applied_seq)                                             \
    BOTH("events", "rejected", "hogrec_events_rejected_total", counter,                          \
         "Events rejected as invalid (listed by index in the reply).", u64, s->events.rejected)  \
    BOTH("events", "refused", "hogrec_events_refused_total", counter,                            \
         "Events of requests refused whole with 429 (queue full).", u64, s->events.refused)      \
    BOTH("events", "duplicates", "hogrec_events_duplicate_total", counter,                       \
         "Events not applied again: their id was applied within dedup_window.", u64,             \
         s->events.duplicates)                                                                   \
    BOTH("queue", "depth", "hogrec_queue_depth", gauge,                                          \
         "Events in the queue waiting for a trainer.", u64, s->queue.depth)                      \
    BOTH("queue", "capacity", "hogrec_queue_capacity", gauge,                                    \
         "Events the queue holds at most.", u64, s->queue.capacity)                              \
    BOTH("model", "users", "hogrec_model_users", gauge, "User ids the model holds.", u64,        \
         s->model_users)                                                                         \
    BOTH("model", "items", "hogrec_model_items", gauge, "Item ids the model holds.", u64,        \
         s->model_items)                                                                         \
    STATS("model", "k", u64, s->model_k)                                                         \
    BOTH("model", "bytes", "hogrec_model_bytes", gauge,                                          \
         "Bytes of memory the model's rows, marks and id indexes use.", u64, s->model_bytes)     \
    STATS("model", "expired_ids", u64, s->model_expired_ids)                                     \
    BOTH("updates", "total", "hogrec_updates_total", counter,                                    \
         "Model update steps since start, sampled negatives included.", u64, s->trainer.updates) \
    STATS("updates", "negatives", u64, s->trainer.negatives)                                     \
    STATS("updates", "clipped", u64, s->trainer.clipped)                                         \
    STATS("updates", "skipped_nonfinite", u64, s->trainer.skipped_nonfinite)                     \
    STATS("updates", "default_user", u64, s->trainer.default_user)                               \
    STATS("updates", "default_item", u64, s->trainer.default_item)                               \
    STATS("updates", "per_second", f64, s->updates_per_second)                                   \
    STATS("updates", "per_second_avg", f64, s->updates_per_second_avg)                           \
    STATS("updates", "negative_sampling", bool, s->negative_sampling)                            \
    STATS("", "uptime_seconds", f64, s->uptime_seconds)                                          \
    BOTH("dedup", "ids", "hogrec_dedup_ids", gauge,                                              \
         "Event ids remembered within dedup_window.", u64, s->dedup.ids)                         \
    BOTH("dedup", "capacity", "hogrec_dedup_capacity", gauge,                                    \
         "Event ids remembered at most (dedup_capacity).", u64, s->dedup.capacity)               \
    BOTH("dedup", "evicted", "hogrec_dedup_evicted_total", counter,                              \
         "Event ids forgotten within dedup_window to make room (dedup_capacity reached): "       \
         "a resend of one is applied again.", u64, s->dedup.evicted)                             \
    STATS("recommend", "queries", u64, s->recommend_queries)                                     \
    STATS("recommend", "sgemm_batches", u64, s->recommend_batches)                               \
    STATS("progressive", "total", u64, s->progress.total)                                        \
    BOTH("progressive", "nonfinite", "hogrec_progressive_nonfinite_total", counter,              \
         "Predictions left out of the progressive statistics because they were NaN or "          \
         "infinite.", u64, s->progress.nonfinite)                                                \
    STATS("progressive", "loss_total", f64, s->progress.loss_total)                              \
    STATS("progressive.window", "n", u64, s->progress.n)                                         \
    BOTH("progressive.window", "loss", "hogrec_progressive_loss", gauge,                         \
         "Progressive validation loss over the window (logloss or RMSE; NaN before any "         \
         "event).", f64, s->progress.loss)                                                       \
    STATS("progressive.window", "rmse", f64, s->progress.rmse)                                   \
    BOTH("progressive.window", "auc", "hogrec_progressive_auc", gauge,                           \
         "Progressive validation AUC over the window (NaN without both labels).", f64,           \
         s->progress.auc)                                                                        \
    STATS("progressive.window", "mean_prediction", f64, s->progress.mean_pred)                   \
    STATS("progressive.window", "mean_label", f64, s->progress.mean_label)                       \
    STATS("progressive.recent_1000", "n", u64, s->recent.n)                                      \
    STATS("progressive.recent_1000", "loss", f64, s->recent.loss)                                \
    STATS("progressive.recent_1000", "rmse", f64, s->recent.rmse)                                \
    STATS("progressive.recent_1000", "auc", f64, s->recent.auc)                                  \
    STATS("progressive.recent_1000", "mean_prediction", f64, s->recent.mean_pred)                \
    STATS("progressive.recent_1000", "mean_label", f64, s->recent.mean_label)                    \
    STATS("staleness_updates", "count", u64, s->staleness.count)                                 \
    STATS("staleness_updates", "p50", u64, s->staleness.p50)                                     \
    STATS("staleness_updates", "p99", u64, s->staleness.p99)                                     \
    STATS("staleness_updates", "p999", u64, s->staleness.p999)                                   \
    STATS("freshness_us", "count", u64, s->freshness_us.count)                                   \
    STATS("freshness_us", "p50", u64, s->freshness_us.p50)                                       \
    STATS("freshness_us", "p99", u64, s->freshness_us.p99)                                       \
    STATS("freshness_us", "p999", u64, s->freshness_us.p999)                                     \
    /* /v1/stats has it as schedule.version, inside the schedule's own JSON */                   \
    PROM("hogrec_schedule_version", gauge, "Version of the live learning-rate schedule.", u64,   \
         s->schedule_version)                                                                    \
    PROM("hogrec_ready", gauge, "1 when /readyz answers 200, else 0.", u64, s->ready)           \
    /* cluster mode (--redis); all 0 in standalone mode */                                     \
    BOTH("cluster", "enabled", "hogrec_cluster_enabled", gauge,                                  \
         "1 in cluster mode (--redis), else 0.", u64, s->cluster_enabled)                        \
    BOTH("cluster", "leader", "hogrec_cluster_leader", gauge,                                    \
         "1 while this node is its cluster's trainer leader, else 0.", u64, s->cluster_leader)   \
    BOTH("cluster", "ready", "hogrec_cluster_ready", gauge,                                      \
         "1 while this node is ready in its cluster (deltas applied; the leader: lease held, "   \
         "stream read), else 0.", u64, s->cluster_ready)                                         \
    BOTH("cluster", "epoch", "hogrec_cluster_epoch", gauge,                                      \
         "Lease epoch this node holds (leader) or follows (newest delta applied).", u64,         \
         s->cluster.epoch)                                                                       \
    BOTH("cluster", "deltas_applied", "hogrec_cluster_deltas_applied_total", counter,            \
         "Row deltas this node applied (as a follower).", u64, s->cluster.deltas_applied)        \
    BOTH("cluster", "deltas_published", "hogrec_cluster_deltas_published_total", counter,        \
         "Row deltas this node published (as the leader).", u64, s->cluster.deltas_published)    \
    BOTH("cluster", "lag_entries", "hogrec_cluster_lag_entries", gauge,                          \
         "Event stream entries (requests) not yet in this node's model (measured every second).",\
         u64, s->cluster.lag_entries)                                                            \
    BOTH("cluster", "lag_seconds", "hogrec_cluster_lag_seconds", gauge,                          \
         "Time between the event stream's last entry and the one this node's model covers "      \
         "(Redis clock; 0 when caught up; measured every second).", f64, s->cluster_lag_seconds) \
    BOTH("cluster", "redis_errors", "hogrec_cluster_redis_errors_total", counter,                \
         "Redis calls that failed (the node thread's, the event appends').", u64,                \
         s->cluster.redis_errors)                                                                \
    BOTH("cluster", "redis_reconnects", "hogrec_cluster_redis_reconnects_total", counter,        \
         "Reconnections of the node thread's and the cluster report's Redis connections.", u64,  \
         s->cluster.redis_reconnects)                                                            \
    BOTH("cluster", "lease_reclaims", "hogrec_cluster_lease_reclaims_total", counter,            \
         "Times this node took its lease back with the same epoch after Redis was away.", u64,   \
         s->cluster.lease_reclaims)

/* The families of /metrics that are not one sample: name, type, HELP. */
#define HR_METRICS_FAMILIES(X)                                                                   \
    X(HR_METRICS_HTTP_REQUESTS, "hogrec_http_requests_total", counter,                           \
      "HTTP requests answered, by route and status class.")                                      \
    X(HR_METRICS_HTTP_DURATION, "hogrec_http_request_duration_seconds", histogram,               \
      "Time from request headers to response queued.")                                           \
    X(HR_METRICS_FRESHNESS, "hogrec_freshness_seconds", summary,                                 \
      "Time from an event queued to its update applied (quantiles: upper bounds of log2 "       \
      "buckets).")
/* clang-format on */

/* ---- per-route HTTP counters (owned by the HTTP server) ---- */

/* Status classes counted per route: 2xx, 4xx but 429, 429, 5xx. */
enum { HR_METRICS_2XX, HR_METRICS_4XX, HR_METRICS_429, HR_METRICS_5XX, HR_METRICS_STATUSES };

typedef struct {
    const char *label;                                   /* route label; static string */
    atomic_uint_fast64_t by_status[HR_METRICS_STATUSES]; /* requests answered */
    hr_hist latency_us;                                  /* first call to answer queued, us */
} hr_metrics_route;

/* Counts one answer: its HTTP status and latency (microseconds). Any thread. */
void hr_metrics_route_record(hr_metrics_route *m, int status, uint64_t latency_us);

/* ---- updates per second ---- */

/* The rate of updates between two samples at least a second apart. */
typedef struct {
    pthread_mutex_t mu; /* guards the rest */
    double t;           /* wall time of the last sample, seconds */
    uint64_t updates;   /* updates at that time */
    double rate;        /* updates/s between the last two samples */
} hr_metrics_rate;

void hr_metrics_rate_init(hr_metrics_rate *r);    /* starts the clock now */
void hr_metrics_rate_destroy(hr_metrics_rate *r);

/* ---- the snapshot ---- */

typedef struct {
    uint64_t count;             /* values added */
    uint64_t sum;               /* their sum */
    uint64_t p50, p99, p999;    /* upper bounds of the log2 buckets holding them */
} hr_metrics_hist;

typedef struct {
    hr_queue_stats queue;
    hr_trainer_counts trainer;
    hr_events_counts events;    /* rejected, duplicates, refused: the events module's */
    uint64_t applied_seq;       /* the trainers' applied watermark */
    hr_dedup_stats dedup;
    uint64_t model_users, model_items, model_k, model_bytes, model_expired_ids;
    double updates_per_second;     /* between the last two samples a second apart */
    double updates_per_second_avg; /* since start */
    double uptime_seconds;
    bool negative_sampling;        /* the trainers sample negatives now */
    uint64_t recommend_queries, recommend_batches; /* top-K queries, sgemm batches */
    hr_progress_report progress;   /* the whole window */
    hr_progress_report recent;     /* the last 1000 points */
    hr_metrics_hist staleness;     /* updates */
    hr_metrics_hist freshness_us;  /* microseconds */
    uint64_t schedule_version;
    uint64_t ready;                /* 1 when /readyz answers 200, else 0 */
    hr_cluster_counts cluster;     /* zero in standalone mode */
    uint64_t cluster_enabled, cluster_leader, cluster_ready; /* its flags as 0/1 */
    double cluster_lag_seconds;    /* cluster.lag_ms / 1000 */
    json_t *schedule;              /* owned: the live schedule's JSON, or NULL */
    json_t *checkpoint;            /* owned: persistence's JSON, or NULL */
    const hr_metrics_route *routes; /* borrowed: per-route HTTP counters, or NULL */
    size_t nroutes;
} hr_metrics_snapshot;

typedef enum {
    HR_METRICS_PROM,  /* what /metrics shows */
    HR_METRICS_STATS  /* everything: also the parts only /v1/stats shows */
} hr_metrics_scope;

/* Fills *out from app's parts (borrowed). HR_METRICS_PROM leaves the
 * parts only /v1/stats shows zero or NULL (the rate sample, the last-1000
 * report, the schedule and checkpoint JSON: the checkpoint's waits for a
 * running checkpoint's lock, which a scrape must not). rate (STATS only) is
 * sampled. The recommend counts and the
 * routes are the HTTP server's: its caller fills them. Release with
 * hr_metrics_snapshot_release. */
void hr_metrics_gather(hr_app *app, hr_metrics_scope scope, hr_metrics_rate *rate,
                       hr_metrics_snapshot *out);

/* Drops what the snapshot owns (the JSON objects). NULL is a no-op. */
void hr_metrics_snapshot_release(hr_metrics_snapshot *s);

/* GET /v1/stats: a new JSON object, or NULL when out of memory. */
json_t *hr_metrics_json(const hr_metrics_snapshot *s);

/* GET /metrics: Prometheus text format 0.0.4, new (free()), *len bytes;
 * NULL when out of memory. */
char *hr_metrics_prom(const hr_metrics_snapshot *s, size_t *len);

#endif

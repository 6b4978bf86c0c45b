/*
 * metrics.c - the server's figures: a snapshot of the app's parts, rendered
 * as /v1/stats JSON and as /metrics Prometheus text; see metrics.h.
 *
 * Design: both renderers walk the one list, HR_METRICS, over the same
 * snapshot; they hold no figure of their own. JSON objects are created in
 * the order their first row names them (jansson keeps insertion order), so
 * the list's order is the answer's. The Prometheus renderer writes into a
 * growing buffer and gives up (NULL) when an allocation fails.
 *
 * Workload: one gather per GET /v1/stats or scrape of /metrics; the AUC of
 * the progressive window (a sort of at most `progress_window` points) is the
 * only cost beyond a few atomic loads.
 *
 * Threads: any; the snapshot is the caller's.
 */
#include "hogrec/metrics.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hogrec/events.h"
#include "hogrec/json.h"
#include "hogrec/persist.h"
#include "hogrec/schedule.h"

/* ---- counting ---- */

void hr_metrics_route_record(hr_metrics_route *m, int status, uint64_t latency_us)
{
    int s = status == 429   ? HR_METRICS_429
            : status >= 500 ? HR_METRICS_5XX
            : status >= 400 ? HR_METRICS_4XX
                            : HR_METRICS_2XX;
    atomic_fetch_add_explicit(&m->by_status[s], 1, memory_order_relaxed);
    hr_hist_add(&m->latency_us, latency_us);
}

void hr_metrics_rate_init(hr_metrics_rate *r)
{
    pthread_mutex_init(&r->mu, NULL);
    r->t = hr_wall_time();
    r->updates = 0;
    r->rate = 0;
}

void hr_metrics_rate_destroy(hr_metrics_rate *r)
{
    pthread_mutex_destroy(&r->mu);
}

static double rate_sample(hr_metrics_rate *r, uint64_t updates)
{
    double now = hr_wall_time();
    pthread_mutex_lock(&r->mu);
    if (now - r->t >= 1.0) {
        r->rate = (double)(updates - r->updates) / (now - r->t);
        r->t = now;
        r->updates = updates;
    }
    double rate = r->rate;
    pthread_mutex_unlock(&r->mu);
    return rate;
}

/* ---- the snapshot ---- */

static void hist_read(const hr_hist *h, hr_metrics_hist *out)
{
    out->count = atomic_load(&h->count);
    out->sum = atomic_load(&h->sum);
    out->p50 = hr_hist_quantile(h, 0.5);
    out->p99 = hr_hist_quantile(h, 0.99);
    out->p999 = hr_hist_quantile(h, 0.999);
}

void hr_metrics_gather(hr_app *app, hr_metrics_scope scope, hr_metrics_rate *rate,
                       hr_metrics_snapshot *out)
{
    memset(out, 0, sizeof *out);
    const hr_model *m = app->model;
    double now = hr_wall_time();
    hr_queue_get_stats(app->queue, &out->queue);
    hr_trainer_get_counts(app->trainer, &out->trainer);
    out->applied_seq = hr_watermark_get(hr_trainer_applied(app->trainer));
    hr_dedup_get_stats(hr_events_dedup(app->events), now, &out->dedup);
    hr_events_get_counts(app->events, &out->events);
    out->model_users = hr_model_id_count(m, HR_TABLE_USER);
    out->model_items = hr_model_id_count(m, HR_TABLE_ITEM);
    out->model_k = hr_model_layout(m)->k;
    out->model_bytes = hr_model_bytes(m);
    out->model_expired_ids = hr_model_expired_total(m);
    hr_progress_get(app->progress, 0, &out->progress);
    hist_read(hr_trainer_staleness(app->trainer), &out->staleness);
    hist_read(hr_trainer_freshness(app->trainer), &out->freshness_us);
    const hr_schedule *sched = hr_schedbox_current(app->sched);
    out->schedule_version = sched->version;
    out->ready = hr_app_not_ready(app) ? 0 : 1;
    hr_cluster_get_counts(app->cluster, &out->cluster);
    out->cluster_enabled = out->cluster.enabled;
    out->cluster_leader = out->cluster.leader;
    out->cluster_ready = out->cluster.ready;
    out->cluster_lag_seconds = (double)out->cluster.lag_ms / 1000.0;
    out->negative_sampling = hr_trainer_negatives_active(app->trainer);
    out->uptime_seconds = now - app->started;
    out->updates_per_second_avg =
        out->uptime_seconds > 0 ? (double)out->trainer.updates / out->uptime_seconds : 0.0;
    if (scope != HR_METRICS_STATS)
        return;
    if (rate)
        out->updates_per_second = rate_sample(rate, out->trainer.updates);
    hr_progress_get(app->progress, 1000, &out->recent);
    out->schedule = hr_schedule_to_json(sched);
    out->checkpoint = app->persist ? hr_persist_stats(app->persist)
                                   : json_pack("{s:b}", "enabled", 0);
}

void hr_metrics_snapshot_release(hr_metrics_snapshot *s)
{
    if (!s)
        return;
    json_decref(s->schedule);
    json_decref(s->checkpoint);
    s->schedule = s->checkpoint = NULL;
}

/* ---- /v1/stats ---- */

static json_t *json_u64(uint64_t v)
{
    return json_integer((json_int_t)v);
}

static json_t *json_f64(double v)
{
    return hr_json_real_or_null(v);
}

static json_t *json_bool(bool v)
{
    return json_boolean(v);
}

/* The object at the dotted path below root ("" = root), created when
 * missing; NULL when out of memory. */
static json_t *section(json_t *root, const char *path)
{
    json_t *o = root;
    while (o && *path) {
        const char *dot = strchr(path, '.');
        size_t n = dot ? (size_t)(dot - path) : strlen(path);
        char name[64];
        if (n >= sizeof name)
            return NULL;
        memcpy(name, path, n);
        name[n] = 0;
        json_t *next = json_object_get(o, name);
        if (!next) {
            next = json_object();
            if (json_object_set_new(o, name, next) != 0)
                return NULL;
        }
        o = next;
        path += dot ? n + 1 : n;
    }
    return o;
}

/* Sets root[path][key] = v (taken); false when out of memory. */
static bool put(json_t *root, const char *path, const char *key, json_t *v)
{
    json_t *o = section(root, path);
    if (!o) {
        json_decref(v);
        return false;
    }
    return json_object_set_new(o, key, v) == 0;
}

json_t *hr_metrics_json(const hr_metrics_snapshot *s)
{
    json_t *root = json_object();
    bool ok = root != NULL;
#define JSON_ROW(sec, key, kind, value) ok = ok && put(root, sec, key, json_##kind(value));
#define JSON_BOTH(sec, key, name, type, help, kind, value) JSON_ROW(sec, key, kind, value)
#define JSON_PROM(name, type, help, kind, value)
    HR_METRICS(JSON_BOTH, JSON_ROW, JSON_PROM)
#undef JSON_ROW
#undef JSON_BOTH
#undef JSON_PROM
    if (ok && s->schedule)
        ok = json_object_set(root, "schedule", s->schedule) == 0;
    if (ok && s->checkpoint)
        ok = json_object_set(root, "checkpoint", s->checkpoint) == 0;
    if (!ok) {
        json_decref(root);
        return NULL;
    }
    return root;
}

/* ---- /metrics ---- */

typedef struct {
    char *buf;
    size_t len, cap;
    bool oom;
} sbuf;

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void sb_printf(sbuf *b, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->buf ? b->buf + b->len : NULL, b->buf ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0 || b->oom)
            return;
        if (b->buf && b->len + (size_t)n < b->cap) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = (b->cap ? b->cap * 2 : 8192) + (size_t)n;
        char *p = realloc(b->buf, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->buf = p;
        b->cap = cap;
    }
}

/* v as the Prometheus text format spells it: NaN, +Inf, -Inf, or the
 * shortest %g that reads back as v. */
static void prom_float(char out[32], double v)
{
    if (isnan(v)) {
        snprintf(out, 32, "NaN");
        return;
    }
    if (isinf(v)) {
        snprintf(out, 32, v > 0 ? "+Inf" : "-Inf");
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(out, 32, "%.*g", prec, v);
        if (strtod(out, NULL) == v)
            return;
    }
}

static void family(sbuf *b, const char *name, const char *type, const char *help)
{
    sb_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* One family of one unlabelled sample. */
static void emit_u64(sbuf *b, const char *type, const char *name, const char *help, uint64_t v)
{
    family(b, name, type, help);
    sb_printf(b, "%s %" PRIu64 "\n", name, v);
}

static void emit_f64(sbuf *b, const char *type, const char *name, const char *help, double v)
{
    char num[32];
    prom_float(num, v);
    family(b, name, type, help);
    sb_printf(b, "%s %s\n", name, num);
}

enum {
#define FAMILY_ID(id, name, type, help) id,
    HR_METRICS_FAMILIES(FAMILY_ID)
#undef FAMILY_ID
};

static const struct {
    const char *name, *type, *help;
} families[] = {
#define FAMILY_ROW(id, name, type, help) [id] = {name, #type, help},
    HR_METRICS_FAMILIES(FAMILY_ROW)
#undef FAMILY_ROW
};

static const char *const status_label[HR_METRICS_STATUSES] = {
    [HR_METRICS_2XX] = "2xx", [HR_METRICS_4XX] = "4xx", [HR_METRICS_429] = "429",
    [HR_METRICS_5XX] = "5xx"};

static void emit_family(sbuf *b, int id)
{
    family(b, families[id].name, families[id].type, families[id].help);
}

static void emit_routes(sbuf *b, const hr_metrics_snapshot *s)
{
    char num[32];
    emit_family(b, HR_METRICS_HTTP_REQUESTS);
    for (size_t i = 0; i < s->nroutes; i++)
        for (int c = 0; c < HR_METRICS_STATUSES; c++)
            sb_printf(b, "hogrec_http_requests_total{route=\"%s\",status=\"%s\"} %" PRIu64 "\n",
                      s->routes[i].label, status_label[c],
                      (uint64_t)atomic_load(&s->routes[i].by_status[c]));
    emit_family(b, HR_METRICS_HTTP_DURATION);
    for (size_t i = 0; i < s->nroutes; i++) {
        const char *label = s->routes[i].label;
        const hr_hist *hh = &s->routes[i].latency_us;
        uint64_t cum = 0;
        /* bucket j holds [2^(j-1), 2^j) us: le = 2^j us; print 1 us .. ~67 s */
        for (int j = 0; j <= 26; j++) {
            cum += atomic_load(&hh->b[j]);
            prom_float(num, (double)(1ull << j) * 1e-6);
            sb_printf(b, "hogrec_http_request_duration_seconds_bucket{route=\"%s\",le=\"%s\"} %" PRIu64 "\n",
                      label, num, cum);
        }
        /* count is read once: the +Inf bucket and _count must agree */
        uint64_t count = atomic_load(&hh->count);
        if (count < cum)
            count = cum;
        prom_float(num, (double)atomic_load(&hh->sum) * 1e-6);
        sb_printf(b, "hogrec_http_request_duration_seconds_bucket{route=\"%s\",le=\"+Inf\"} %" PRIu64 "\n"
                     "hogrec_http_request_duration_seconds_sum{route=\"%s\"} %s\n"
                     "hogrec_http_request_duration_seconds_count{route=\"%s\"} %" PRIu64 "\n",
                  label, count, label, num, label, count);
    }
}

static void emit_freshness(sbuf *b, const hr_metrics_snapshot *s)
{
    const hr_metrics_hist *fr = &s->freshness_us;
    char q50[32], q99[32], sum[32];
    prom_float(q50, (double)fr->p50 * 1e-6);
    prom_float(q99, (double)fr->p99 * 1e-6);
    prom_float(sum, (double)fr->sum * 1e-6);
    emit_family(b, HR_METRICS_FRESHNESS);
    sb_printf(b,
              "hogrec_freshness_seconds{quantile=\"0.5\"} %s\n"
              "hogrec_freshness_seconds{quantile=\"0.99\"} %s\n"
              "hogrec_freshness_seconds_sum %s\n"
              "hogrec_freshness_seconds_count %" PRIu64 "\n",
              q50, q99, sum, fr->count);
}

char *hr_metrics_prom(const hr_metrics_snapshot *s, size_t *len)
{
    sbuf b = {0};
    emit_routes(&b, s);
#define PROM_ROW(name, type, help, kind, value) emit_##kind(&b, #type, name, help, value);
#define PROM_BOTH(sec, key, name, type, help, kind, value) PROM_ROW(name, type, help, kind, value)
#define PROM_STATS(sec, key, kind, value)
    HR_METRICS(PROM_BOTH, PROM_STATS, PROM_ROW)
#undef PROM_ROW
#undef PROM_BOTH
#undef PROM_STATS
    emit_freshness(&b, s);
    if (b.oom) {
        free(b.buf);
        return NULL;
    }
    *len = b.len;
    return b.buf;
}

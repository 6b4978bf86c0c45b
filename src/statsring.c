/*
 * statsring.c - per-second samples of the server's figures; see statsring.h.
 *
 * The sampler keeps the previous snapshot's counters and the freshness
 * histogram's buckets, so that each sample holds what happened in its own
 * interval. A sample is built outside the ring's lock and copied in.
 */
#include "hogrec/statsring.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hogrec/json.h"
#include "hogrec/metrics.h"
#include "hogrec/stats.h"
#include "hogrec/trainer.h"

struct hr_statsring {
    hr_app *app;                 /* borrowed */
    unsigned period_ms;          /* between samples; 0 = no thread */
    pthread_mutex_t mu;          /* guards ring, head, count and prev */
    hr_statsring_point *ring;    /* capacity samples, oldest overwritten */
    size_t capacity, head, count; /* head: next write position */
    /* the previous sample's counters (rates over the interval) */
    bool have_prev;
    double prev_t;               /* wall seconds */
    uint64_t prev_accepted, prev_trained, prev_rejected, prev_refused, prev_updates;
    uint64_t prev_fresh[HR_HIST_BUCKETS]; /* freshness buckets at the previous sample */
    /* the thread */
    pthread_t thread;
    bool running;                /* the thread was started */
    pthread_mutex_t stop_mu;     /* guards stop */
    pthread_cond_t stop_cv;      /* stop set; CLOCK_MONOTONIC */
    bool stop;
};

static double per_second(uint64_t now, uint64_t before, double dt)
{
    return dt > 0 && now >= before ? (double)(now - before) / dt : 0.0;
}

void hr_statsring_take(hr_statsring *r)
{
    hr_app *app = r->app;
    hr_metrics_snapshot s;
    hr_metrics_gather(app, HR_METRICS_PROM, NULL, &s);
    double now = hr_wall_time();
    const hr_hist *fh = hr_trainer_freshness(app->trainer);
    uint64_t fresh[HR_HIST_BUCKETS];
    for (int i = 0; i < HR_HIST_BUCKETS; i++)
        fresh[i] = atomic_load_explicit(&((hr_hist *)fh)->b[i], memory_order_relaxed);
    const hr_schedule *sched = hr_schedbox_current(app->sched);

    hr_statsring_point p;
    memset(&p, 0, sizeof p);
    p.t_ms = (uint64_t)(now * 1000.0);
    p.loss = s.progress.loss;
    p.auc = s.progress.auc;
    p.mean_prediction = s.progress.mean_pred;
    p.mean_label = s.progress.mean_label;
    p.queue_depth = s.queue.depth;
    p.model_bytes = s.model_bytes;
    p.users = s.model_users;
    p.items = s.model_items;
    p.schedule_version = sched->version;
    for (int g = 0; g < HR_GROUP_COUNT; g++)
        p.lr[g] = hr_schedule_group_rate(sched, (hr_group)g, s.trainer.updates, s.staleness.p50);

    pthread_mutex_lock(&r->mu);
    if (r->have_prev) {
        double dt = now - r->prev_t;
        p.accepted_ps = per_second(s.queue.accepted, r->prev_accepted, dt);
        p.trained_ps = per_second(s.trainer.trained, r->prev_trained, dt);
        p.rejected_ps = per_second(s.events.rejected, r->prev_rejected, dt);
        p.refused_ps = per_second(s.events.refused, r->prev_refused, dt);
        p.updates_ps = per_second(s.trainer.updates, r->prev_updates, dt);
        hr_hist delta; /* the buckets added since the previous sample */
        memset(&delta, 0, sizeof delta);
        for (int i = 0; i < HR_HIST_BUCKETS; i++)
            atomic_store_explicit(&delta.b[i],
                                  fresh[i] >= r->prev_fresh[i] ? fresh[i] - r->prev_fresh[i] : 0,
                                  memory_order_relaxed);
        p.freshness_p50_us = hr_hist_quantile(&delta, 0.5);
        p.freshness_p99_us = hr_hist_quantile(&delta, 0.99);
    }
    r->have_prev = true;
    r->prev_t = now;
    r->prev_accepted = s.queue.accepted;
    r->prev_trained = s.trainer.trained;
    r->prev_rejected = s.events.rejected;
    r->prev_refused = s.events.refused;
    r->prev_updates = s.trainer.updates;
    memcpy(r->prev_fresh, fresh, sizeof fresh);
    r->ring[r->head] = p;
    r->head = (r->head + 1) % r->capacity;
    if (r->count < r->capacity)
        r->count++;
    pthread_mutex_unlock(&r->mu);
    hr_metrics_snapshot_release(&s);
}

static void *sampler(void *arg)
{
    hr_statsring *r = arg;
    pthread_mutex_lock(&r->stop_mu);
    while (!r->stop) {
        pthread_mutex_unlock(&r->stop_mu);
        hr_statsring_take(r);
        pthread_mutex_lock(&r->stop_mu);
        struct timespec dl = hr_deadline_after(r->period_ms / 1000.0);
        while (!r->stop && pthread_cond_timedwait(&r->stop_cv, &r->stop_mu, &dl) != ETIMEDOUT)
            ;
    }
    pthread_mutex_unlock(&r->stop_mu);
    return NULL;
}

hr_status hr_statsring_start(hr_app *app, size_t capacity, unsigned period_ms,
                             hr_statsring **out)
{
    *out = NULL;
    if (capacity < 2)
        return HR_EINVAL;
    hr_statsring *r = calloc(1, sizeof *r);
    if (!r)
        return HR_ENOMEM;
    r->ring = calloc(capacity, sizeof *r->ring);
    if (!r->ring) {
        free(r);
        return HR_ENOMEM;
    }
    r->app = app;
    r->capacity = capacity;
    r->period_ms = period_ms;
    pthread_mutex_init(&r->mu, NULL);
    pthread_mutex_init(&r->stop_mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&r->stop_cv, &ca);
    pthread_condattr_destroy(&ca);
    if (period_ms > 0) {
        if (pthread_create(&r->thread, NULL, sampler, r) != 0) {
            hr_statsring_stop(r);
            return HR_EIO;
        }
        r->running = true;
    }
    *out = r;
    return HR_OK;
}

void hr_statsring_halt(hr_statsring *r)
{
    if (!r || !r->running)
        return;
    pthread_mutex_lock(&r->stop_mu);
    r->stop = true;
    pthread_cond_broadcast(&r->stop_cv);
    pthread_mutex_unlock(&r->stop_mu);
    pthread_join(r->thread, NULL);
    r->running = false;
}

void hr_statsring_stop(hr_statsring *r)
{
    if (!r)
        return;
    hr_statsring_halt(r);
    pthread_cond_destroy(&r->stop_cv);
    pthread_mutex_destroy(&r->stop_mu);
    pthread_mutex_destroy(&r->mu);
    free(r->ring);
    free(r);
}

size_t hr_statsring_count(hr_statsring *r)
{
    pthread_mutex_lock(&r->mu);
    size_t n = r->count;
    pthread_mutex_unlock(&r->mu);
    return n;
}

static json_t *point_json(const hr_statsring_point *p)
{
    json_t *lr = json_object();
    for (int g = 0; g < HR_GROUP_COUNT; g++)
        json_object_set_new(lr, hr_group_to_string((hr_group)g), hr_json_real_or_null(p->lr[g]));
    return json_pack("{s:I,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:I,s:I,s:I,s:o,s:I,s:I,s:I,s:I}",
                     "t_ms", (json_int_t)p->t_ms,
                     "loss", hr_json_real_or_null(p->loss),
                     "auc", hr_json_real_or_null(p->auc),
                     "mean_prediction", hr_json_real_or_null(p->mean_prediction),
                     "mean_label", hr_json_real_or_null(p->mean_label),
                     "accepted_ps", hr_json_real_or_null(p->accepted_ps),
                     "trained_ps", hr_json_real_or_null(p->trained_ps),
                     "rejected_ps", hr_json_real_or_null(p->rejected_ps),
                     "refused_ps", hr_json_real_or_null(p->refused_ps),
                     "updates_ps", hr_json_real_or_null(p->updates_ps),
                     "queue_depth", (json_int_t)p->queue_depth,
                     "freshness_p50_us", (json_int_t)p->freshness_p50_us,
                     "freshness_p99_us", (json_int_t)p->freshness_p99_us,
                     "lr", lr,
                     "model_bytes", (json_int_t)p->model_bytes,
                     "users", (json_int_t)p->users,
                     "items", (json_int_t)p->items,
                     "schedule_version", (json_int_t)p->schedule_version);
}

json_t *hr_statsring_json(hr_statsring *r, uint64_t since_ms)
{
    json_t *samples = json_array(), *markers = json_array(), *groups = json_array();
    json_t *body = json_pack("{s:I,s:I,s:I,s:o,s:o,s:o}", "now_ms",
                             (json_int_t)(hr_wall_time() * 1000.0), "interval_ms",
                             (json_int_t)r->period_ms, "capacity", (json_int_t)r->capacity,
                             "groups", groups, "samples", samples, "markers", markers);
    if (!body)
        return NULL;
    for (int g = 0; g < HR_GROUP_COUNT; g++)
        json_array_append_new(groups, json_string(hr_group_to_string((hr_group)g)));
    /* Copy out under the lock, render outside it. */
    pthread_mutex_lock(&r->mu);
    size_t n = 0, start = (r->head + r->capacity - r->count) % r->capacity;
    hr_statsring_point *copy = malloc((r->count ? r->count : 1) * sizeof *copy);
    if (copy)
        for (size_t i = 0; i < r->count; i++) {
            const hr_statsring_point *p = &r->ring[(start + i) % r->capacity];
            if (p->t_ms > since_ms)
                copy[n++] = *p;
        }
    pthread_mutex_unlock(&r->mu);
    if (!copy) {
        json_decref(body);
        return NULL;
    }
    for (size_t i = 0; i < n; i++)
        json_array_append_new(samples, point_json(&copy[i]));
    free(copy);
    size_t total = hr_schedbox_history(r->app->sched, NULL, 0);
    hr_sched_change *ch = malloc((total ? total : 1) * sizeof *ch);
    if (ch) {
        size_t got = hr_schedbox_history(r->app->sched, ch, total);
        if (got > total)
            got = total;
        for (size_t i = 0; i < got; i++) {
            uint64_t t = (uint64_t)(ch[i].wall_time * 1000.0);
            if (t > since_ms)
                json_array_append_new(markers, json_pack("{s:I,s:I}", "version",
                                                         (json_int_t)ch[i].version, "t_ms",
                                                         (json_int_t)t));
        }
        free(ch);
    }
    return body;
}

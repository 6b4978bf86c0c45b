/*
 * app.c - builds a running hogrec from a config and tears it down in order:
 *   open:  schedule box -> model -> queue -> progress -> database lock
 *          -> persistence (restore)
 *          -> trainers (and their maintenance thread) -> ingest -> events
 *          -> catalog (standalone: records loaded, ids interned, attributes set;
 *             cluster mode: kept by the cluster from the event stream)
 *          -> cluster (with --redis: connections, settings check)
 *                                                      (hr_app_open_loading)
 *          -> start-up replay: the checkpoint's serving state, then the
 *             logged events after it through the events module, trained
 *          -> persistence start (log thread, periodic checkpoints)
 *          -> the cluster's node thread -> ready      (hr_app_finish_loading)
 *   close: cluster stop (a leader publishes, releases) -> trainers stop (drain or not) -> final checkpoint -> unlock
 *                                                          (hr_app_stop)
 *          -> free all
 * Persistence is handed the parts it works on (persist.h); it does not see
 * the app. Called from the main thread.
 */
#include "hogrec/app.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hogrec/api.h"
#include "hogrec/catalog.h"
#include "hogrec/cluster.h"
#include "hogrec/dblock.h"
#include "hogrec/guard.h"
#include "hogrec/log.h"
#include "hogrec/persist.h"
#include "hogrec/sgd.h"
#include "hogrec/trials.h"

#define REPLAY_BATCH 256 /* logged events per hr_events_replay */

hr_status hr_app_open(const hr_config *cfg, hr_app **out, hr_error *err)
{
    hr_status st = hr_app_open_loading(cfg, out, err);
    if (st == HR_OK && (st = hr_app_finish_loading(*out, err)) != HR_OK) {
        hr_app_close(*out, false);
        *out = NULL;
    }
    return st;
}

/* ---- start-up replay ---- */

typedef struct {
    hr_app *app;
    hr_event evs[REPLAY_BATCH];
    uint64_t ids[REPLAY_BATCH];    /* event-id hashes, 0 = none */
    double arrived[REPLAY_BATCH];  /* arrival wall times, NaN = unknown */
    size_t n;
    hr_persist_replay fig;
} replay_ctx;

static hr_status replay_flush(replay_ctx *rc)
{
    if (rc->n == 0)
        return HR_OK;
    hr_status st = hr_events_replay(rc->app->events, rc->evs, rc->ids, rc->arrived, rc->n);
    rc->fig.replayed += rc->n;
    rc->n = 0;
    return st;
}

/* One logged event (hr_persist_log_fn): parsed, batched, replayed. */
static hr_status replay_event(void *arg, uint64_t seq, double arrived, const char *json,
                              size_t len)
{
    replay_ctx *rc = arg;
    json_error_t jerr;
    json_t *obj = json_loadb(json, len, 0, &jerr);
    hr_error err = {{0}, {0}};
    const json_t *eid = NULL;
    hr_status st = obj ? hr_api_event_from_json(rc->app->model, obj, &rc->evs[rc->n], &eid, &err)
                       : HR_EINVAL;
    rc->ids[rc->n] = st == HR_OK && eid ? hr_events_id_hash(eid) : 0;
    json_decref(obj);
    if (st != HR_OK) {
        if (rc->fig.skipped++ == 0)
            hr_log("warn", "a logged event cannot be replayed (later ones are counted in stats)",
                   json_pack("{s:I,s:s}", "seq", (json_int_t)seq, "detail", err.message));
        return HR_OK;
    }
    rc->arrived[rc->n] = arrived;
    rc->evs[rc->n++].seq = seq;
    return rc->n == REPLAY_BATCH ? replay_flush(rc) : HR_OK;
}

/* Brings the serving state and the model up to the end of the event log:
 * the checkpoint's serving state, then every event logged after it, replayed
 * through the events module and trained; then persistence starts. */
static hr_status replay_log(hr_app *app, hr_error *err)
{
    uint64_t t0 = hr_now_ns();
    replay_ctx *rc = calloc(1, sizeof *rc);
    if (!rc)
        return hr_error_set(err, HR_ENOMEM, NULL, "out of memory");
    rc->app = app;
    /* Schedules count updates since the model began, not since this start. */
    hr_trainer_set_base_updates(app->trainer, hr_persist_restored_updates(app->persist));
    hr_status st = hr_persist_load_serving(app->persist, app->events, err);
    if (st == HR_OK)
        st = hr_persist_read_log(app->persist, replay_event, rc, err);
    if (st == HR_OK && (st = replay_flush(rc)) != HR_OK)
        hr_error_set(err, st, NULL, "replaying the event log: %s", hr_status_to_string(st));
    if (st == HR_OK) {
        hr_trainer_wait_idle(app->trainer);
        /* Everything up to the log's end is in the model now (the checkpoint
         * covers what was not replayed): read-your-writes may count on it. */
        hr_watermark_publish(hr_trainer_applied(app->trainer), hr_ingest_last_seq(app->ingest));
        rc->fig.seconds = (double)(hr_now_ns() - t0) * 1e-9;
        hr_persist_running run = {app->trainer, app->ingest, app->events};
        st = hr_persist_start(app->persist, &run, &rc->fig, err);
    }
    free(rc);
    return st;
}

hr_status hr_app_finish_loading(hr_app *app, hr_error *err)
{
    hr_status st;
    if (app->persist && (st = replay_log(app, err)) != HR_OK)
        return st;
    if (app->cluster && (st = hr_cluster_start(app->cluster, err)) != HR_OK)
        return st;
    atomic_store(&app->ready, 1);
    return HR_OK;
}

/* The guard of schedule changes: restore points unless cluster mode or id
 * expiry rule them out (guard.h). */
static hr_status open_guard(hr_app *app, hr_error *err)
{
    const hr_config *c = &app->cfg;
    hr_guard_config gc = {
        .watch_on = c->guard != 0,
        .restore_points = !c->redis[0] && c->expire_seconds <= 0,
        .margin = c->guard_margin,
        .windows = (unsigned)c->guard_windows,
        .watch = (unsigned)c->guard_watch,
        .nonfinite = c->guard_nonfinite,
        .window = (uint64_t)c->progress_window,
        .memory_bytes = (size_t)c->guard_memory_mb << 20,
        .why_off = c->redis[0] ? "no restore points in cluster mode"
                               : "no restore points with id expiry (expire_seconds > 0)",
    };
    return hr_guard_create(&gc, app->model, app->trainer, app->sched, app->progress, &app->guard,
                           err);
}

/* Counterfactual trials (trials.h): refused without a database and in
 * cluster mode. */
static hr_status open_trials(hr_app *app, hr_error *err)
{
    const hr_config *c = &app->cfg;
    hr_trials_config tc = {
        .refuse = c->redis[0] ? "trials are not available in cluster mode in this version" : NULL,
        .memory_bytes = (size_t)c->trial_memory_mb << 20,
        .cpu_share = c->trial_cpu_share,
        .curve_events = (uint64_t)c->trial_curve_events,
        .trainer = hr_trainer_config_from(c),
    };
    snprintf(tc.db, sizeof tc.db, "%s", c->db);
    return hr_trials_create(&tc, app->model, app->sched, app->guard, &app->trials, err);
}

hr_status hr_app_open_loading(const hr_config *cfg, hr_app **out, hr_error *err)
{
    *out = NULL;
    hr_app *app = calloc(1, sizeof *app);
    if (!app)
        return hr_error_set(err, HR_ENOMEM, NULL, "out of memory");
    app->cfg = *cfg;
    app->cfg.schedule = cfg->schedule ? json_deep_copy(cfg->schedule) : NULL;
    app->started = hr_wall_time();
    hr_status st;
    if (app->cfg.redis[0] && (st = hr_cluster_check_config(&app->cfg, err)) != HR_OK)
        goto fail;

    hr_schedule sched;
    if (app->cfg.schedule) {
        if ((st = hr_schedule_from_json(app->cfg.schedule, &sched, err)) != HR_OK)
            goto fail;
    } else {
        hr_schedule_defaults(&sched);
    }
    if ((st = hr_schedbox_create(&sched, &app->sched, err)) != HR_OK)
        goto fail;

    const char *kernel = hr_config_kernel_to_string(app->cfg.update_kernel);
    if (!hr_sgd_kernel_select(kernel)) { /* process-wide (sgd.h) */
        char runs[64];
        hr_sgd_kernel_list(runs, sizeof runs);
        st = hr_error_set(err, HR_EINVAL, "update_kernel",
                          "update_kernel %s: this CPU or build cannot run it (it runs: %s)", kernel,
                          runs);
        goto fail;
    }
    hr_model_config mc;
    if ((st = hr_model_config_from(&app->cfg, &sched, &mc, err)) != HR_OK)
        goto fail;
    if ((st = hr_model_create(&mc, &app->model, err)) != HR_OK)
        goto fail;
    if ((st = hr_queue_create((size_t)app->cfg.queue_capacity, &app->queue)) != HR_OK) {
        hr_error_set(err, st, "queue_capacity", "creating the queue: %s", hr_status_to_string(st));
        goto fail;
    }
    if ((st = hr_progress_create((size_t)app->cfg.progress_window, mc.loss == HR_LOSS_SQUARED,
                                 &app->progress)) != HR_OK) {
        hr_error_set(err, st, "progress_window", "%s", hr_status_to_string(st));
        goto fail;
    }
    hr_evlog *log = NULL;
    if (app->cfg.db[0]) { /* in cluster mode the file is the node's checkpoint (cluster.h) */
        if ((st = hr_dblock_acquire(app->cfg.db, &app->dblock, err)) != HR_OK ||
            (!app->cfg.redis[0] &&
             (st = hr_persist_open(&(hr_persist_parts){app->cfg, app->model, app->sched},
                                   &app->persist, &log, err)) != HR_OK))
            goto fail;
    }
    hr_trainer_config tc = hr_trainer_config_from(&app->cfg);
    if ((st = hr_trainer_start(app->model, app->queue, app->sched, app->progress, &tc,
                               &app->trainer)) != HR_OK) {
        hr_error_set(err, st, "threads", "starting trainers: %s", hr_status_to_string(st));
        goto fail;
    }
    if ((st = hr_ingest_create(app->queue, app->trainer, log, &app->ingest)) != HR_OK) {
        hr_error_set(err, st, NULL, "%s", hr_status_to_string(st));
        goto fail;
    }
    hr_events_config ec = hr_events_config_from(&app->cfg);
    if ((st = hr_events_create(&ec, app->model, app->ingest, &app->events)) != HR_OK) {
        hr_error_set(err, st, NULL, "creating the serving state: %s", hr_status_to_string(st));
        goto fail;
    }
    /* The catalog: standalone, its records in the database (loaded here);
     * in cluster mode in memory (persist NULL), loaded with the local
     * checkpoint and kept by the cluster's node thread (cluster.h). */
    {
        size_t skipped = 0;
        if ((st = hr_catalog_create(app->model, app->events, app->persist, &app->catalog)) !=
            HR_OK) {
            hr_error_set(err, st, NULL, "creating the catalog: %s", hr_status_to_string(st));
            goto fail;
        }
        if ((st = hr_catalog_load(app->catalog, &skipped, err)) != HR_OK)
            goto fail;
        if (skipped)
            hr_log("warn", "catalog records that no longer validate were skipped",
                   json_pack("{s:I}", "records", (json_int_t)skipped));
    }
    if ((st = open_guard(app, err)) != HR_OK || (st = open_trials(app, err)) != HR_OK)
        goto fail;
    if (app->cfg.redis[0] &&
        (st = hr_cluster_open(&app->cfg,
                              &(hr_cluster_parts){app->model, app->events, app->trainer, app->sched,
                                                  app->catalog},
                              &app->cluster, err)) != HR_OK)
        goto fail;
    *out = app;
    return HR_OK;
fail:
    hr_app_close(app, false);
    return st;
}

void hr_app_stop(hr_app *app, bool drain)
{
    if (!app)
        return;
    atomic_store(&app->ready, 0);
    hr_cluster_stop(app->cluster); /* a leader publishes what it trained, then releases */
    hr_trials_destroy(app->trials); /* its thread stopped; it applies through the guard */
    app->trials = NULL;
    hr_guard_destroy(app->guard); /* its tap off the trainers before they stop */
    app->guard = NULL;
    if (app->trainer)
        hr_trainer_stop(app->trainer, drain, NULL);
    hr_catalog_detach(app->catalog); /* no catalog write reaches a closed database */
    hr_persist_close(app->persist,
                     app->model != NULL && app->trainer != NULL && app->events != NULL);
    app->persist = NULL;
    hr_dblock_release(app->dblock);
    app->dblock = NULL;
}

void hr_app_close(hr_app *app, bool drain)
{
    if (!app)
        return;
    hr_app_stop(app, drain);
    hr_cluster_destroy(app->cluster);
    hr_catalog_destroy(app->catalog);
    hr_events_destroy(app->events);
    hr_ingest_destroy(app->ingest);
    hr_trainer_destroy(app->trainer);
    hr_progress_destroy(app->progress);
    hr_queue_destroy(app->queue);
    hr_model_destroy(app->model);
    hr_schedbox_destroy(app->sched);
    hr_config_free(&app->cfg);
    free(app);
}

const char *hr_app_not_ready(hr_app *app)
{
    if (!atomic_load(&app->ready))
        return "loading";
    if (app->cluster)
        return hr_cluster_not_ready(app->cluster);
    if (app->persist)
        return hr_persist_health(app->persist);
    return NULL;
}

/*
 * persist.c - a running hogrec's databases: restore at open, the event log's
 * tail for the start-up replay (which app.c runs), checkpoints (periodic, on
 * demand, final), health. See persist.h. SQL lives in store.c; the log's
 * group commit in evlog.c.
 *
 * DESIGN
 * - Files: <db> holds checkpoints (store kind MAIN); <db>-events holds the
 *   event log (kind LOG). Two files because SQLite has one writer per file.
 * - A checkpoint is one transaction: pause the trainers just long enough to
 *   read the seq watermark W (every event <= W is trained), resume them,
 *   then copy rows in batches of CKPT_BATCH while training and serving go
 *   on. The copy is fuzzy (a row may already hold updates of events > W);
 *   restore replays the events > W, so those few are applied twice, which
 *   Hogwild tolerates. The row is marked complete in the same transaction,
 *   so a crash leaves the previous checkpoint.
 * - Incremental: rows whose dirty mark is set (the trainer marks rows after
 *   writing them; the mark is taken before the row is copied, so a later
 *   update marks it again). Every full_every increments, a full checkpoint.
 *   A failed checkpoint has taken marks it did not save, so the next one is
 *   full. Restore reads the chain newest first and keeps the first copy of
 *   each row it meets.
 * - The serving state (events.h: recent items per user, popularity, event
 *   ids within the de-duplication window) is saved in the same transaction,
 *   after the rows, at its own cut S >= W (read after W). Users' recent
 *   items are incremental like rows (rings changed since the previous
 *   checkpoint's S; all of them in a full checkpoint or when the previous
 *   one had no serving state); the rest is written whole. At start it is
 *   loaded (hr_persist_load_serving), then the app replays the log after W
 *   (hr_persist_read_log) through the events module, which trains every
 *   replayed event and applies those after S.
 * - After a checkpoint commits, the log is trimmed up to W.
 * - Health: the event log's (events get 503) or the last checkpoint's
 *   failure; both retry by themselves (the log probes every RETRY_MS, the
 *   periodic thread retries a failed checkpoint every RETRY_MS).
 *
 * Threads: open/load_serving/read_log/start/close from the main thread;
 * hr_persist_checkpoint from an HTTP thread or the periodic thread
 * (serialized by ckpt_mu); health and stats from any thread.
 */
#include "hogrec/persist.h"

#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hogrec/log.h"
#include "hogrec/sgd.h"
#include "hogrec/store.h"

#define CKPT_BATCH 256      /* rows copied from the model per batch */
#define RETRY_MS 500        /* recovery probes */
#define TICK_MS 100         /* periodic thread's check period */
#define BUSY_MS 1000        /* wait for another writer's lock */
#define FORGET_BUSY_MS 10000 /* forgetting a user waits this long for the log's writer */
#define MAX_HISTORY 4096    /* schedule history entries saved */

struct hr_persist {
    hr_persist_parts parts;      /* from open (config copied, pointers borrowed) */
    hr_persist_running run;      /* from start (borrowed); NULLs before */
    double opened;               /* wall time at open */
    hr_store *main;              /* owned; under ckpt_mu after open */
    hr_store *logstore;          /* owned by log; used here only before hr_evlog_start */
    hr_evlog *log;               /* owned */
    uint64_t log_trimmed_to;     /* the log holds no seq at or below this (0: it starts at
                                  * the initial model); under ckpt_mu after open */
    char shape[256];             /* model shape JSON, checked against checkpoints */

    pthread_mutex_t ckpt_mu;     /* one checkpoint at a time; guards the fields below */
    hr_store_ckpt last;          /* last complete checkpoint (id 0: none) */
    unsigned increments;         /* incremental checkpoints since the last full one */
    bool force_full;             /* next checkpoint must be full */
    uint64_t ckpt_ok, ckpt_failed;
    char last_error[256];        /* "" if the last checkpoint succeeded */
    double last_attempt;         /* wall time */
    hr_status_board ckpt_health; /* NULL, or why checkpoints fail; set under ckpt_mu */

    pthread_mutex_t mu;          /* periodic thread's sleep and stop */
    pthread_cond_t cv;
    bool stop;
    bool thread_started;
    pthread_t thread;

    bool serving_known;          /* last has a serving state (schema 3 or later) */
    uint64_t serving_seq;        /* its cut S */
    double serving_taken;        /* wall time its scores are as of */

    uint64_t restored_rows;      /* at open */
    double restore_seconds;
    hr_persist_replay replay;    /* the caller's figures, written before started */
    atomic_bool started;         /* hr_persist_start ran (release after replay) */
};

static void model_shape(const hr_model *m, char *out, size_t n)
{
    const hr_model_config *c = hr_model_get_config(m);
    const hr_row_layout *L = hr_model_layout(m);
    snprintf(out, n,
             "{\"k\":%u,\"floats\":%u,\"state\":%d,\"loss\":%d,\"ctx_rows\":%u,\"seed\":%" PRIu64
             ",\"float\":\"%s\"%s}",
             c->k, L->floats, (int)c->state, (int)c->loss, c->max_rows[HR_TABLE_CTX], c->seed,
             __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ ? "le" : "be",
             /* f32 shapes as before the storage option */
             L->storage == HR_STORAGE_BF16 ? ",\"storage\":\"bf16\"" : "");
}

/* Under ckpt_mu. */
static void set_ckpt_health(hr_persist *p, const char *why)
{
    if (!why) {
        hr_status_board_set(&p->ckpt_health, NULL, NULL);
        return;
    }
    char text[320];
    snprintf(text, sizeof text, "checkpoints failing: %s", why);
    hr_status_board_set(&p->ckpt_health, text, "checkpoints failing");
}

/* ---- restore ---- */

typedef struct {
    hr_model *m;
    const hr_row_layout *L;
    uint8_t *seen[HR_TABLE_COUNT]; /* one bit per row: taken from a newer checkpoint */
    uint32_t max_rows[HR_TABLE_COUNT];
    uint64_t rows;
    hr_error *err;
} restore_ctx;

static hr_status restore_row(void *arg, unsigned table, uint32_t row, const char *key,
                             size_t klen, const void *data, size_t bytes)
{
    restore_ctx *rc = arg;
    if (table >= HR_TABLE_COUNT)
        return hr_error_set(rc->err, HR_ECORRUPT, "db", "checkpoint row in unknown table %u",
                            table);
    if (row >= rc->max_rows[table])
        return hr_error_set(rc->err, HR_EINVAL, "db",
                            "checkpoint has row %" PRIu32 " in table %u, beyond this config's "
                            "limit (%" PRIu32 "): raise max_users/max_items",
                            row, table, rc->max_rows[table]);
    uint8_t *bit = &rc->seen[table][row >> 3];
    uint8_t mask = (uint8_t)(1u << (row & 7));
    if (*bit & mask)
        return HR_OK; /* a newer checkpoint of the chain had it */
    *bit |= mask;
    bool ids = table == HR_TABLE_USER || table == HR_TABLE_ITEM;
    if (ids && row > 0) {
        if (!key)
            return HR_OK; /* a free row (its id expired) */
        hr_status st = hr_model_insert_id_at(rc->m, (hr_table_id)table, key, klen, row);
        if (st == HR_EINVAL && hr_model_lookup(rc->m, (hr_table_id)table, key, klen) != HR_ID_NONE)
            return HR_OK; /* the id moved to another row later (expired, came back) */
        if (st != HR_OK)
            return hr_error_set(rc->err, st, "db", "restoring id at row %" PRIu32 ": %s", row,
                                hr_status_to_string(st));
    }
    if (bytes != (size_t)rc->L->floats * sizeof(float))
        return hr_error_set(rc->err, HR_ECORRUPT, "db",
                            "checkpoint row %" PRIu32 " of table %u has %zu bytes, expected %zu",
                            row, table, bytes, (size_t)rc->L->floats * sizeof(float));
    /* Copy out of SQLite's buffer: it is not aligned for floats. */
    float buf[rc->L->floats];
    memcpy(buf, data, bytes);
    hr_sgd_row_write(rc->L, hr_model_row(rc->m, (hr_table_id)table, row), buf);
    rc->rows++;
    return HR_OK;
}

typedef struct {
    hr_schedbox *box;
    hr_error *err;
} sched_ctx;

static hr_status restore_sched(void *arg, uint64_t version, double wall_time, uint64_t at_update,
                               double loss_before, double loss_after, const char *json)
{
    (void)wall_time;
    sched_ctx *sc = arg;
    if (version < 2)
        return HR_OK; /* version 1 is the config's schedule */
    json_error_t jerr;
    json_t *obj = json_loads(json, 0, &jerr);
    hr_schedule s;
    hr_status st = obj ? hr_schedule_from_json(obj, &s, sc->err) : HR_ECORRUPT;
    json_decref(obj);
    if (st != HR_OK) {
        hr_log("warn", "saved schedule not restored",
               json_pack("{s:I,s:s}", "version", (json_int_t)version, "detail",
                         sc->err ? sc->err->message : ""));
        return HR_OK;
    }
    uint64_t v;
    if (hr_schedbox_swap(sc->box, &s, at_update, loss_before, &v, sc->err) == HR_OK &&
        isfinite(loss_after))
        hr_schedbox_note_loss_after(sc->box, v, loss_after);
    return HR_OK;
}

static void clear_dirty(hr_model *m)
{
    for (int t = 0; t < HR_TABLE_COUNT; t++) {
        uint32_t rows = hr_model_rows(m, (hr_table_id)t);
        bool ids = t == HR_TABLE_USER || t == HR_TABLE_ITEM;
        for (uint32_t r = 0; r < rows; r++) {
            size_t len;
            if (ids && r > 0 && !hr_model_key(m, (hr_table_id)t, r, &len))
                continue; /* free row: its chunk may not exist */
            hr_model_take_dirty(m, (hr_table_id)t, r);
        }
    }
}

static hr_status restore(hr_persist *p, hr_error *err)
{
    hr_model *m = p->parts.model;
    hr_status st = hr_store_ckpt_latest(p->main, &p->last, err);
    if (st != HR_OK || p->last.id == 0)
        return st;
    hr_storage was = hr_storage_of_shape(p->last.shape), now = hr_model_layout(m)->storage;
    if (was != now) /* the weights are not converted: refused, naming both */
        return hr_error_set(err, HR_EINVAL, "storage",
                            "%s stores embedding weights as %s; this config stores them as %s "
                            "(set storage to %s, or use another db)",
                            p->parts.cfg.db, hr_storage_to_string(was), hr_storage_to_string(now),
                            hr_storage_to_string(was));
    if (strcmp(p->last.shape, p->shape) != 0)
        return hr_error_set(err, HR_EINVAL, "db",
                            "%s was written by a model of another shape: %s; this config makes "
                            "%s (change the config back, or use another db)",
                            p->parts.cfg.db, p->last.shape, p->shape);
    double t0 = hr_wall_time();
    restore_ctx rc = {.m = m, .L = hr_model_layout(m), .err = err};
    const hr_model_config *mc = hr_model_get_config(m);
    for (int t = 0; t < HR_TABLE_COUNT; t++) {
        rc.max_rows[t] = mc->max_rows[t] ? mc->max_rows[t] : 1;
        rc.seen[t] = calloc(rc.max_rows[t] / 8 + 1, 1);
        if (!rc.seen[t])
            st = hr_error_set(err, HR_ENOMEM, NULL, "out of memory");
    }
    if (st == HR_OK)
        st = hr_store_chain_rows(p->main, &p->last, restore_row, &rc, err);
    for (int t = 0; t < HR_TABLE_COUNT; t++)
        free(rc.seen[t]);
    if (st != HR_OK)
        return st;
    sched_ctx sc = {p->parts.sched, err};
    if ((st = hr_store_schedule_rows(p->main, p->last.id, restore_sched, &sc, err)) != HR_OK)
        return st;
    if ((st = hr_store_serving(p->main, p->last.id, &p->serving_known, &p->serving_seq,
                               &p->serving_taken, err)) != HR_OK)
        return st;
    clear_dirty(m);
    p->restored_rows = rc.rows;
    p->restore_seconds = hr_wall_time() - t0;
    /* Continue the chain: count the increments since its full checkpoint. */
    p->increments = (unsigned)(p->last.id - p->last.base);
    return HR_OK;
}

/* The message that refuses a damaged database (it is never modified). */
static hr_status refuse_corrupt(const char *path, const hr_error *why, hr_error *err)
{
    return hr_error_set(err, HR_ECORRUPT, "db",
                        "database %s is corrupt (%s): refusing to start; restore a backup or "
                        "move the file away (it was not modified)",
                        path, why->message);
}

hr_status hr_persist_open(const hr_persist_parts *app, hr_persist **out, hr_evlog **log,
                          hr_error *err)
{
    *out = NULL;
    *log = NULL;
    hr_persist *p = calloc(1, sizeof *p);
    if (!p)
        return hr_error_set(err, HR_ENOMEM, NULL, "out of memory");
    p->parts = *app;
    p->parts.cfg.schedule = NULL; /* not read; the caller owns it */
    p->opened = hr_wall_time();
    atomic_init(&p->started, false);
    pthread_mutex_init(&p->ckpt_mu, NULL);
    pthread_mutex_init(&p->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&p->cv, &ca);
    pthread_condattr_destroy(&ca);
    model_shape(app->model, p->shape, sizeof p->shape);
    hr_status st;
    hr_error e2;

    /* No quick_check on the main file: it would read every old checkpoint
     * (seconds at 1M rows); a bad header fails at open, and a damaged page
     * of the chain fails the restore below, which refuses the same way. */
    hr_store_options mo = {.kind = HR_STORE_MAIN, .sync_full = true, .busy_ms = BUSY_MS,
                           .quick_check = false};
    if ((st = hr_store_open(app->cfg.db, &mo, &p->main, &e2)) != HR_OK) {
        if (st != HR_ECORRUPT)
            hr_error_set(err, st, "db", "database %s: %s", app->cfg.db, e2.message);
        else
            refuse_corrupt(app->cfg.db, &e2, err);
        goto fail;
    }
    char *snap = NULL; /* a cluster node's checkpoint (snapshot.h) is not a database */
    if ((st = hr_store_snapshot_meta_get(p->main, &snap, &e2)) == HR_OK && snap) {
        free(snap);
        st = hr_error_set(err, HR_EINVAL, "db",
                          "%s is a cluster node's checkpoint, not a standalone database: pass "
                          "another --db path (or run it with --redis)",
                          app->cfg.db);
        goto fail;
    }
    if (st != HR_OK) {
        if (err)
            *err = e2;
        goto fail;
    }
    if ((st = restore(p, &e2)) != HR_OK) {
        if (st == HR_ECORRUPT)
            refuse_corrupt(app->cfg.db, &e2, err);
        else if (err)
            *err = e2;
        goto fail;
    }

    char logpath[HR_CONFIG_STR + 16];
    snprintf(logpath, sizeof logpath, "%s-events", app->cfg.db);
    bool sync = app->cfg.durability != HR_CONFIG_DURABILITY_INTERVAL;
    hr_store_options lo = {.kind = HR_STORE_LOG, .sync_full = sync, .busy_ms = BUSY_MS,
                           .quick_check = true};
    if ((st = hr_store_open(logpath, &lo, &p->logstore, &e2)) != HR_OK) {
        if (st == HR_ECORRUPT)
            hr_error_set(err, st, "db",
                         "event log %s is corrupt (%s): refusing to start; restore a backup or "
                         "move the file away (it was not modified)",
                         logpath, e2.message);
        else
            hr_error_set(err, st, "db", "event log %s: %s", logpath, e2.message);
        goto fail;
    }
    uint64_t last_seq = 0, trimmed = 0;
    if ((st = hr_store_log_last_seq(p->logstore, &last_seq, err)) != HR_OK ||
        (st = hr_store_log_trimmed_to(p->logstore, &trimmed, err)) != HR_OK) {
        hr_store_close(p->logstore);
        p->logstore = NULL;
        goto fail;
    }
    p->log_trimmed_to = trimmed;
    if (trimmed > p->last.seq)
        hr_log("warn", "the event log was trimmed past the newest checkpoint (an older "
                       "database file?): events in between are lost",
               json_pack("{s:I,s:I}", "trimmed_to", (json_int_t)trimmed, "checkpoint_seq",
                         (json_int_t)p->last.seq));
    if (p->last.seq > last_seq)
        last_seq = p->last.seq;
    hr_evlog_options eo = {.sync = sync, .interval_ms = (unsigned)app->cfg.sync_interval_ms,
                           .retry_ms = RETRY_MS};
    if ((st = hr_evlog_create(p->logstore, &eo, last_seq, &p->log, err)) != HR_OK) {
        p->logstore = NULL;
        goto fail;
    }
    *out = p;
    *log = p->log;
    return HR_OK;
fail:
    hr_persist_close(p, false);
    return st;
}

/* ---- start-up: the serving state, the log tail ---- */

uint64_t hr_persist_restored_updates(const hr_persist *p)
{
    return p->last.updates;
}

hr_status hr_persist_read_log(hr_persist *p, hr_persist_log_fn fn, void *ctx, hr_error *err)
{
    if (!p->logstore)
        return hr_error_set(err, HR_EINVAL, NULL, "the event log is not readable after start");
    return hr_store_log_scan(p->logstore, p->last.seq, fn, ctx, err);
}

/* Loading the serving state of the last checkpoint (before the replay). */
static hr_status load_history(void *ctx, const char *user, size_t ulen, uint64_t seq,
                              const void *items, size_t bytes)
{
    void **a = ctx;
    return hr_events_load_history(a[0], user, ulen, seq, items, bytes, a[1]);
}

static hr_status load_popularity(void *ctx, const void *data, size_t bytes)
{
    void **a = ctx;
    return hr_events_load_blob(a[0], "popularity", data, bytes, a[1]);
}

static hr_status load_dedup(void *ctx, const void *data, size_t bytes)
{
    void **a = ctx;
    return hr_events_load_blob(a[0], "dedup", data, bytes, a[1]);
}

hr_status hr_persist_load_serving(hr_persist *p, hr_events *e, hr_error *err)
{
    if (!p->serving_known)
        return HR_OK;
    hr_error e2 = {{0}, {0}};
    void *a[2] = {e, &e2};
    hr_status st = hr_events_load_begin(e, p->serving_seq, p->serving_taken, &e2);
    if (st == HR_OK)
        st = hr_store_chain_history(p->main, &p->last, load_history, a, &e2);
    if (st == HR_OK)
        st = hr_store_serving_blobs(p->main, p->last.id, "popularity", load_popularity, a, &e2);
    if (st == HR_OK)
        st = hr_store_serving_blobs(p->main, p->last.id, "dedup", load_dedup, a, &e2);
    hr_events_load_end(e);
    if (st == HR_ECORRUPT)
        return refuse_corrupt(p->parts.cfg.db, &e2, err);
    if (st != HR_OK && err)
        *err = e2;
    return st;
}

static void *periodic(void *arg);

hr_status hr_persist_start(hr_persist *p, const hr_persist_running *run,
                           const hr_persist_replay *replay, hr_error *err)
{
    p->run = *run;
    p->replay = *replay;
    atomic_store_explicit(&p->started, true, memory_order_release);
    p->logstore = NULL; /* the log's thread owns it from here */
    hr_status st;
    if ((st = hr_evlog_start(p->log, err)) != HR_OK)
        return st;
    if (pthread_create(&p->thread, NULL, periodic, p) != 0)
        return hr_error_set(err, HR_ENOMEM, NULL, "cannot start the checkpoint thread");
    p->thread_started = true;
    return HR_OK;
}

/* ---- checkpoints ---- */

typedef struct {
    uint32_t row;
    const char *key;   /* borrowed from the model (valid for its life), or NULL */
    size_t klen;
    bool free_row;     /* write a "free" marker: no key, no data */
} pending_row;

/* Writes one table's rows (all, or the dirty ones). Under ckpt_mu. */
static hr_status write_table(hr_persist *p, int64_t id, hr_table_id t, bool full, float *buf,
                             uint64_t *nrows, hr_error *err)
{
    hr_model *m = p->parts.model;
    const hr_row_layout *L = hr_model_layout(m);
    const size_t bytes = (size_t)L->floats * sizeof(float);
    const bool ids = t == HR_TABLE_USER || t == HR_TABLE_ITEM;
    uint32_t rows = hr_model_rows(m, t);
    pending_row batch[CKPT_BATCH];
    uint32_t r = 0;
    while (r < rows) {
        /* Copy a batch out of the model (training goes on meanwhile)... */
        size_t n = 0;
        for (; r < rows && n < CKPT_BATCH; r++) {
            size_t klen = 0;
            const char *key = NULL;
            if (ids && r > 0) {
                key = hr_model_key(m, t, r, &klen);
                if (!key) {
                    /* A free row: its id expired. An incremental checkpoint
                     * writes a marker, so a restore does not bring the id
                     * back from an older checkpoint of the chain; a full one
                     * has nothing older to mask. */
                    if (hr_model_take_dirty(m, t, r) && !full)
                        batch[n++] = (pending_row){r, NULL, 0, true};
                    continue;
                }
            }
            if (!hr_model_take_dirty(m, t, r) && !full)
                continue;
            hr_sgd_row_read(L, hr_model_row(m, t, r), buf + n * L->floats);
            batch[n++] = (pending_row){r, key, klen, false};
        }
        /* ...then write it. */
        for (size_t i = 0; i < n; i++) {
            hr_status st =
                batch[i].free_row
                    ? hr_store_ckpt_row(p->main, id, (unsigned)t, batch[i].row, NULL, 0, NULL, 0, err)
                    : hr_store_ckpt_row(p->main, id, (unsigned)t, batch[i].row, batch[i].key,
                                        batch[i].klen, buf + i * L->floats, bytes, err);
            if (st != HR_OK)
                return st;
        }
        *nrows += n;
    }
    return HR_OK;
}

static hr_status write_schedule(hr_persist *p, int64_t id, hr_error *err)
{
    hr_sched_change *h = malloc(MAX_HISTORY * sizeof *h);
    if (!h)
        return hr_error_set(err, HR_ENOMEM, NULL, "out of memory");
    size_t n = hr_schedbox_history(p->parts.sched, h, MAX_HISTORY);
    if (n > MAX_HISTORY)
        n = MAX_HISTORY;
    hr_status st = HR_OK;
    for (size_t i = 0; i < n && st == HR_OK; i++) {
        json_t *j = hr_schedule_to_json(h[i].schedule);
        char *text = j ? json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
        json_decref(j);
        if (!text) {
            st = hr_error_set(err, HR_ENOMEM, NULL, "out of memory");
            break;
        }
        st = hr_store_ckpt_schedule(p->main, id, h[i].version, h[i].wall_time, h[i].at_update,
                                    h[i].loss_before, h[i].loss_after, text, err);
        free(text);
    }
    free(h);
    return st;
}

/* The serving state's sink: the store, inside the checkpoint's transaction. */
typedef struct {
    hr_persist *p;
    int64_t id;
} serving_sink;

static hr_status sink_header(void *ctx, uint64_t seq, double taken, hr_error *err)
{
    serving_sink *s = ctx;
    return hr_store_ckpt_serving(s->p->main, s->id, seq, taken, err);
}

static hr_status sink_history(void *ctx, const char *user, size_t ulen, uint64_t seq,
                              const void *items, size_t bytes, hr_error *err)
{
    serving_sink *s = ctx;
    return hr_store_ckpt_history(s->p->main, s->id, user, ulen, seq, items, bytes, err);
}

static hr_status sink_blob(void *ctx, const char *kind, uint32_t part, const void *data,
                           size_t bytes, hr_error *err)
{
    serving_sink *s = ctx;
    return hr_store_ckpt_blob(s->p->main, s->id, kind, part, data, bytes, err);
}

/* How far the log may be trimmed after a checkpoint at seq w: to w, or, so
 * that trials (trials.h) can replay the last trial_retain_events events /
 * trial_retain_seconds seconds, to the newest checkpoint at or before that
 * much. When none is that old: not at all while the log still starts at the
 * initial model (a trial replays from there), else to the oldest checkpoint
 * kept. Under ckpt_mu. */
static uint64_t trim_target(hr_persist *p, uint64_t w)
{
    const hr_config *c = &p->parts.cfg;
    if (c->trial_retain_events <= 0 && c->trial_retain_seconds <= 0)
        return w;
    uint64_t last = hr_evlog_last_seq(p->log), max_seq = UINT64_MAX;
    if (c->trial_retain_events > 0)
        max_seq = last > (uint64_t)c->trial_retain_events ? last - (uint64_t)c->trial_retain_events
                                                          : 0;
    double max_started = c->trial_retain_seconds > 0 ? hr_wall_time() - c->trial_retain_seconds
                                                     : INFINITY;
    hr_store_ckpt k;
    hr_error e2;
    if (hr_store_ckpt_at(p->main, max_seq, max_started, &k, &e2) != HR_OK)
        return w;
    if (k.id == 0 && p->log_trimmed_to == 0)
        return 0; /* every event since the initial model is still there: keep them */
    if (k.id == 0 && hr_store_ckpt_from(p->main, 0, &k, &e2) != HR_OK)
        return w;
    return k.id && k.seq < w ? k.seq : w;
}

/* Under ckpt_mu. */
static hr_status checkpoint_locked(hr_persist *p, json_t **info, hr_error *err)
{
    const hr_persist_parts *app = &p->parts;
    double t0 = hr_wall_time();
    p->last_attempt = t0;
    bool full = p->force_full || p->last.id == 0 || p->increments >= (unsigned)app->cfg.full_every;
    /* The watermark: pause just long enough to read it. */
    uint64_t seq = 0, updates = 0;
    if (p->run.trainer) {
        seq = hr_trainer_pause(p->run.trainer);
        updates = hr_trainer_updates(p->run.trainer);
        hr_trainer_resume(p->run.trainer);
    }
    if (seq < p->last.seq)
        seq = p->last.seq;
    const hr_row_layout *L = hr_model_layout(app->model);
    float *buf = malloc((size_t)CKPT_BATCH * L->floats * sizeof(float));
    if (!buf)
        return hr_error_set(err, HR_ENOMEM, NULL, "out of memory");
    int64_t id = 0;
    uint64_t nrows = 0;
    hr_status st = hr_store_ckpt_begin(p->main, full, seq, updates, p->shape, &id, err);
    if (st == HR_OK)
        st = write_schedule(p, id, err);
    for (int t = 0; t < HR_TABLE_COUNT && st == HR_OK; t++)
        st = write_table(p, id, (hr_table_id)t, full, buf, &nrows, err);
    /* The serving state, at a cut read after the watermark (so >= it). */
    uint64_t serving_seq = 0;
    bool serving = st == HR_OK && p->run.events &&
                   hr_store_user_version(p->main) >= 3;
    if (serving) {
        serving_sink ss = {p, id};
        hr_events_sink sink = {&ss, sink_header, sink_history, sink_blob};
        uint64_t since = full || !p->serving_known ? 0 : p->serving_seq;
        st = hr_events_save(p->run.events, since, &sink, &serving_seq, err);
    }
    double seconds = hr_wall_time() - t0;
    if (st == HR_OK)
        st = hr_store_ckpt_commit(p->main, id, nrows, seconds, (int)app->cfg.keep_checkpoints, err);
    free(buf);
    if (st != HR_OK) {
        hr_store_ckpt_abort(p->main);
        /* Dirty marks taken by this attempt are lost: the next one is full. */
        if (id)
            p->force_full = true;
        p->ckpt_failed++;
        snprintf(p->last_error, sizeof p->last_error, "%s", err ? err->message : "failed");
        set_ckpt_health(p, p->last_error);
        return st;
    }
    hr_error e2;
    hr_store_ckpt_latest(p->main, &p->last, &e2);
    p->serving_known = serving;
    p->serving_seq = serving_seq;
    p->increments = full ? 0 : p->increments + 1;
    p->force_full = false;
    p->ckpt_ok++;
    p->last_error[0] = 0;
    set_ckpt_health(p, NULL);
    uint64_t upto = trim_target(p, seq);
    hr_evlog_trim(p->log, upto);
    if (upto > p->log_trimmed_to)
        p->log_trimmed_to = upto;
    if (info)
        *info = json_pack("{s:I, s:s, s:I, s:I, s:I, s:f}", "id", (json_int_t)id, "kind",
                          full ? "full" : "incremental", "base", (json_int_t)p->last.base, "seq",
                          (json_int_t)seq, "rows", (json_int_t)nrows, "seconds", seconds);
    return HR_OK;
}

hr_status hr_persist_checkpoint(hr_persist *p, json_t **info, hr_error *err)
{
    if (info)
        *info = NULL;
    hr_error local;
    if (!err)
        err = &local;
    pthread_mutex_lock(&p->ckpt_mu);
    hr_status st = checkpoint_locked(p, info, err);
    pthread_mutex_unlock(&p->ckpt_mu);
    return st;
}

/* ---- catalog and forgetting (under ckpt_mu: never inside a checkpoint) ---- */

hr_status hr_persist_catalog_put(hr_persist *p, const char *kind, size_t n,
                                 const char *const *ids, const size_t *idlen,
                                 const char *const *records, const size_t *rlen, hr_error *err)
{
    pthread_mutex_lock(&p->ckpt_mu);
    hr_status st = n == 1 ? hr_store_catalog_put(p->main, kind, ids[0], idlen[0], records[0],
                                                 rlen[0], hr_wall_time(), err)
                          : hr_store_catalog_put_many(p->main, kind, n, ids, idlen, records, rlen,
                                                      hr_wall_time(), err);
    pthread_mutex_unlock(&p->ckpt_mu);
    return st;
}

hr_status hr_persist_catalog_delete(hr_persist *p, const char *kind, const char *id, size_t idlen,
                                    bool *found, hr_error *err)
{
    pthread_mutex_lock(&p->ckpt_mu);
    hr_status st = hr_store_catalog_delete(p->main, kind, id, idlen, found, err);
    pthread_mutex_unlock(&p->ckpt_mu);
    return st;
}

hr_status hr_persist_catalog_load(hr_persist *p, hr_store_catalog_fn fn, void *ctx, hr_error *err)
{
    pthread_mutex_lock(&p->ckpt_mu);
    hr_status st = hr_store_catalog_scan(p->main, fn, ctx, err);
    pthread_mutex_unlock(&p->ckpt_mu);
    return st;
}

hr_status hr_persist_forget_user(hr_persist *p, const char *id, size_t idlen, uint64_t *deleted,
                                 hr_error *err)
{
    *deleted = 0;
    pthread_mutex_lock(&p->ckpt_mu); /* a checkpoint that copied the row has committed */
    hr_status st = hr_store_forget_user(p->main, id, idlen, deleted, err);
    pthread_mutex_unlock(&p->ckpt_mu);
    if (st != HR_OK)
        return st;
    /* The log's own connection belongs to its thread: a second one, whose
     * transaction waits for (and holds up) the group commits. */
    char logpath[HR_CONFIG_STR + 16];
    snprintf(logpath, sizeof logpath, "%s-events", p->parts.cfg.db);
    hr_store_options lo = {.kind = HR_STORE_LOG, .sync_full = true, .busy_ms = FORGET_BUSY_MS};
    hr_store *log = NULL;
    uint64_t n = 0;
    if ((st = hr_store_open(logpath, &lo, &log, err)) == HR_OK)
        st = hr_store_forget_user(log, id, idlen, &n, err);
    hr_store_close(log);
    *deleted += n;
    return st;
}

/* Whether a periodic checkpoint is due now. */
static bool due(hr_persist *p)
{
    const hr_config *c = &p->parts.cfg;
    uint64_t last_seq = hr_ingest_last_seq(p->run.ingest);
    double now = hr_wall_time();
    pthread_mutex_lock(&p->ckpt_mu);
    bool failing = p->last_error[0] != 0;
    double since = now - (p->last.id ? p->last.started : p->opened);
    double since_attempt = now - p->last_attempt;
    uint64_t covered = p->last.seq;
    pthread_mutex_unlock(&p->ckpt_mu);
    if (failing)
        return since_attempt * 1000 >= RETRY_MS;
    if (last_seq <= covered)
        return false; /* nothing new */
    if (c->checkpoint_interval > 0 && since >= c->checkpoint_interval)
        return true;
    return c->checkpoint_events > 0 && last_seq - covered >= (uint64_t)c->checkpoint_events;
}

static void *periodic(void *arg)
{
    hr_persist *p = arg;
    pthread_mutex_lock(&p->mu);
    while (!p->stop) {
        struct timespec ts = hr_deadline_after(TICK_MS * 1e-3);
        pthread_cond_timedwait(&p->cv, &p->mu, &ts);
        if (p->stop)
            break;
        pthread_mutex_unlock(&p->mu);
        if (due(p)) {
            hr_error err;
            hr_persist_checkpoint(p, NULL, &err);
        }
        pthread_mutex_lock(&p->mu);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

const char *hr_persist_health(hr_persist *p)
{
    const char *h = p->log ? hr_evlog_health(p->log) : NULL;
    return h ? h : hr_status_board_get(&p->ckpt_health);
}

json_t *hr_persist_stats(hr_persist *p)
{
    pthread_mutex_lock(&p->ckpt_mu);
    json_t *last = p->last.id
                       ? json_pack("{s:I, s:s, s:I, s:I, s:I, s:f, s:f}", "id",
                                   (json_int_t)p->last.id, "kind",
                                   p->last.full ? "full" : "incremental", "base",
                                   (json_int_t)p->last.base, "seq", (json_int_t)p->last.seq,
                                   "rows", (json_int_t)p->last.nrows, "seconds", p->last.seconds,
                                   "time", p->last.started)
                       : json_null();
    json_t *ck = json_pack("{s:o, s:I, s:I, s:s?}", "last", last, "taken",
                           (json_int_t)p->ckpt_ok, "failed", (json_int_t)p->ckpt_failed, "error",
                           p->last_error[0] ? p->last_error : NULL);
    pthread_mutex_unlock(&p->ckpt_mu);
    uint64_t durable = 0, commits = 0, failures = 0, pending = 0;
    hr_evlog_counts(p->log, &durable, &commits, &failures, &pending);
    const char *h = hr_evlog_health(p->log);
    json_t *lg = json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:s?}", "durability",
                           hr_config_durability_to_string(p->parts.cfg.durability), "last_seq",
                           (json_int_t)hr_evlog_last_seq(p->log), "committed_seq",
                           (json_int_t)durable, "commits", (json_int_t)commits, "failures",
                           (json_int_t)failures, "pending", (json_int_t)pending, "error", h);
    /* The replay figures are written by the loading thread before started
     * turns true (a release store), so read them only after seeing it. */
    json_t *start = atomic_load_explicit(&p->started, memory_order_acquire)
                        ? json_pack("{s:I, s:f, s:I, s:I, s:f}", "restored_rows",
                                    (json_int_t)p->restored_rows, "restore_seconds",
                                    p->restore_seconds, "replayed", (json_int_t)p->replay.replayed,
                                    "replay_skipped", (json_int_t)p->replay.skipped,
                                    "replay_seconds", p->replay.seconds)
                        : json_pack("{s:b, s:I, s:f}", "loading", 1, "restored_rows",
                                    (json_int_t)p->restored_rows, "restore_seconds",
                                    p->restore_seconds);
    const char *health = hr_persist_health(p);
    return json_pack("{s:s, s:o, s:o, s:o, s:s?}", "db", p->parts.cfg.db, "checkpoints", ck,
                     "event_log", lg, "start", start, "health", health);
}

void hr_persist_close(hr_persist *p, bool final)
{
    if (!p)
        return;
    if (p->thread_started) {
        pthread_mutex_lock(&p->mu);
        p->stop = true;
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
        pthread_join(p->thread, NULL);
    }
    if (final && p->main && p->log && !p->logstore) {
        hr_error err;
        if (hr_persist_checkpoint(p, NULL, &err) != HR_OK)
            hr_log("error", "final checkpoint failed (the event log keeps the events)",
                   json_pack("{s:s}", "detail", err.message));
    }
    hr_evlog_destroy(p->log); /* commits what is buffered, trims */
    hr_store_close(p->main);
    hr_status_board_free(&p->ckpt_health);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    pthread_mutex_destroy(&p->ckpt_mu);
    free(p);
}

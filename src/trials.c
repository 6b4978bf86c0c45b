/*
 * trials.c - counterfactual trials of schedules on the logged stream (see
 * hogrec/trials.h for the design).
 *
 * State: `mu` guards the list of trials and every trial's fields that the
 * HTTP threads read (status, progress, results); a trial's thread takes it
 * for a short copy after each slice. The models, trainers and events of a
 * run are the thread's alone. Cancel sets a flag and signals `cv`, on which
 * the thread sleeps its duty-cycle pauses.
 *
 * Threads: start/get/cancel/apply (HTTP threads), one worker per trial.
 */
#include "hogrec/trials.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hogrec/api.h"
#include "hogrec/json.h"
#include "hogrec/log.h"
#include "hogrec/queue.h"
#include "hogrec/sgd.h"
#include "hogrec/stats.h"
#include "hogrec/store.h"

#define BUSY_MS 1000 /* a read waits this long for a writer's lock */

typedef enum { T_RUNNING, T_DONE, T_CANCELLED, T_FAILED } trial_status;
static const char *const status_names[] = {"running", "done", "cancelled", "failed"};

/* One curve point: the loss and AUC of a stretch of the window. */
typedef struct {
    uint64_t events; /* window events trained at the end of the stretch */
    double loss, auc;
} curve_point;

/* One run: the baseline (index 0) or a candidate (1..n). */
typedef struct {
    hr_schedule sched;
    bool finished;
    uint64_t events;       /* window events trained */
    double loss, auc, mean_pred, mean_label;
    uint64_t points, skipped_nonfinite;
    double seconds;        /* busy time (the sleeps not counted) */
    curve_point *curve;    /* owned */
    size_t ncurve, capcurve;
} run;

typedef struct trial {
    struct hr_trials *owner;
    char id[16];
    trial_status status;   /* under mu */
    char error[320];       /* T_FAILED: why (a prefix and an hr_error message) */
    atomic_bool cancel;
    int nruns;             /* 1 + candidates */
    run runs[1 + HR_TRIALS_MAX_CANDIDATES];
    /* the window */
    uint64_t from_seq, to_seq; /* events (from_seq, to_seq] */
    hr_store_ckpt ckpt;        /* the state the warm-up starts from (id 0: the initial model) */
    uint64_t curve_events;
    double created;            /* wall time */
    /* progress */
    uint64_t done, total;      /* events replayed (warm-up + every run's window) */
    uint64_t applied_version;  /* 0 until applied */
    pthread_t thread;
    bool joined;
    hr_trials_slice_fn *hook; /* the slice hook when it started (may be NULL) */
    void *hook_ctx;
} trial;

struct hr_trials {
    hr_trials_config cfg;
    hr_model *live;
    hr_schedbox *box;
    hr_guard *guard;
    pthread_mutex_t mu;        /* guards the list and the trials' shared fields */
    pthread_cond_t cv;         /* cancel (CLOCK_MONOTONIC) */
    trial *list[HR_TRIALS_KEPT];
    size_t n;
    uint64_t next_id;
    hr_trials_slice_fn *hook;  /* under mu: hr_trials_set_slice_hook */
    void *hook_ctx;
};

/* ---- helpers ---- */

static bool is_running(const trial *tr) { return tr->status == T_RUNNING; }

/* The optimizer state the model's rows have (as PUT /v1/admin/schedule checks). */
static hr_optimizer rows_state(const hr_model *m)
{
    return hr_model_supports(m, HR_OPT_ADAM)      ? HR_OPT_ADAM
           : hr_model_supports(m, HR_OPT_FTRL)    ? HR_OPT_FTRL
           : hr_model_supports(m, HR_OPT_ADAGRAD) ? HR_OPT_ADAGRAD
                                                  : HR_OPT_SGD;
}

static void free_trial(trial *tr)
{
    if (!tr)
        return;
    for (int i = 0; i < tr->nruns; i++)
        free(tr->runs[i].curve);
    free(tr);
}

static trial *find(hr_trials *t, const char *id)
{
    for (size_t i = 0; i < t->n; i++)
        if (strcmp(t->list[i]->id, id) == 0)
            return t->list[i];
    return NULL;
}

/* Sleeps `seconds` unless cancelled first. */
static void pause_for(trial *tr, double seconds)
{
    hr_trials *t = tr->owner;
    if (seconds <= 0)
        return;
    pthread_mutex_lock(&t->mu);
    struct timespec ts = hr_deadline_after(seconds);
    while (!atomic_load(&tr->cancel) && pthread_cond_timedwait(&t->cv, &t->mu, &ts) != ETIMEDOUT)
        ;
    pthread_mutex_unlock(&t->mu);
}

/* The calling thread's CPU time, seconds. */
static double thread_cpu_s(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0)
        return 0;
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The duty cycle after one slice of `events` that started at thread CPU
 * time cpu0: sleeps so that the thread keeps to cpu_share of one core
 * (the read and the replays alike). Returns false when cancelled. */
static bool duty_cycle(trial *tr, hr_trials_phase phase, size_t events, double cpu0)
{
    double share = tr->owner->cfg.cpu_share > 0 && tr->owner->cfg.cpu_share <= 1
                       ? tr->owner->cfg.cpu_share
                       : 1;
    double busy = thread_cpu_s() - cpu0;
    if (busy < 0)
        busy = 0;
    double pause = share < 1 ? busy * (1 - share) / share : 0;
    if (tr->hook)
        tr->hook(tr->hook_ctx, phase, events, busy, pause);
    pause_for(tr, pause);
    return !atomic_load(&tr->cancel);
}

/* ---- rebuilding the state at the window's start (the trial thread) ---- */

typedef struct {
    hr_model *m;
    const hr_row_layout *L;
    uint8_t *seen[HR_TABLE_COUNT];
    uint32_t max_rows[HR_TABLE_COUNT];
    hr_error *err;
} restore_ctx;

/* A checkpoint row into the private model (newest of the chain first: the
 * first copy of a row wins), as persist.c restores the live one. */
static hr_status restore_row(void *arg, unsigned table, uint32_t row, const char *key,
                             size_t klen, const void *data, size_t bytes)
{
    restore_ctx *rc = arg;
    if (table >= HR_TABLE_COUNT || row >= rc->max_rows[table])
        return hr_error_set(rc->err, HR_ECORRUPT, "db", "checkpoint row %u of table %u out of range",
                            row, table);
    uint8_t *bit = &rc->seen[table][row >> 3];
    uint8_t mask = (uint8_t)(1u << (row & 7));
    if (*bit & mask)
        return HR_OK;
    *bit |= mask;
    if ((table == HR_TABLE_USER || table == HR_TABLE_ITEM) && row > 0) {
        if (!key)
            return HR_OK;
        hr_status st = hr_model_insert_id_at(rc->m, (hr_table_id)table, key, klen, row);
        if (st == HR_EINVAL && hr_model_lookup(rc->m, (hr_table_id)table, key, klen) != HR_ID_NONE)
            return HR_OK;
        if (st != HR_OK)
            return hr_error_set(rc->err, st, "db", "restoring id at row %u: %s", row,
                                hr_status_to_string(st));
    }
    if (bytes != (size_t)rc->L->floats * sizeof(float))
        return hr_error_set(rc->err, HR_ECORRUPT, "db", "checkpoint row of %zu bytes", bytes);
    float buf[rc->L->floats];
    memcpy(buf, data, bytes);
    hr_sgd_row_write(rc->L, hr_model_row(rc->m, (hr_table_id)table, row), buf);
    return HR_OK;
}

static hr_status restore_ckpt(hr_store *main, const hr_store_ckpt *k, hr_model *m, hr_error *err)
{
    if (k->id == 0)
        return HR_OK; /* the initial model */
    restore_ctx rc = {.m = m, .L = hr_model_layout(m), .err = err};
    const hr_model_config *mc = hr_model_get_config(m);
    hr_status st = HR_OK;
    for (int t = 0; t < HR_TABLE_COUNT; t++) {
        rc.max_rows[t] = mc->max_rows[t] ? mc->max_rows[t] : 1;
        rc.seen[t] = calloc(rc.max_rows[t] / 8 + 1, 1);
        if (!rc.seen[t])
            st = hr_error_set(err, HR_ENOMEM, NULL, "out of memory");
    }
    if (st == HR_OK)
        st = hr_store_chain_rows(main, k, restore_row, &rc, err);
    for (int t = 0; t < HR_TABLE_COUNT; t++)
        free(rc.seen[t]);
    return st;
}

/* The logged events (from, to], parsed and resolved against the private
 * model (new ids interned there). */
typedef struct {
    hr_model *m;
    hr_event *ev;
    size_t n, cap;
    uint64_t to;
    uint64_t skipped;
    uint64_t last;      /* the last seq read */
    size_t page_left;   /* rows left in this page */
    bool end;           /* a seq past `to` was met */
} read_ctx;

static hr_status read_event(void *arg, uint64_t seq, double arrived, const char *json, size_t len)
{
    (void)arrived;
    read_ctx *rc = arg;
    if (seq > rc->to) {
        rc->end = true;
        return HR_ESTOPPED; /* past the window: stop the scan */
    }
    rc->last = seq;
    hr_status page = --rc->page_left ? HR_OK : HR_ESTOPPED; /* the page is full: stop */
    json_error_t jerr;
    json_t *obj = json_loadb(json, len, 0, &jerr);
    hr_event ev;
    hr_error err;
    hr_status st = obj ? hr_api_event_from_json(rc->m, obj, &ev, NULL, &err) : HR_EINVAL;
    json_decref(obj);
    if (st != HR_OK) {
        rc->skipped++;
        return page;
    }
    if (rc->n == rc->cap) {
        size_t cap = rc->cap ? rc->cap * 2 : 4096;
        hr_event *e = realloc(rc->ev, cap * sizeof *e);
        if (!e)
            return HR_ENOMEM;
        rc->ev = e;
        rc->cap = cap;
    }
    ev.seq = seq;
    rc->ev[rc->n++] = ev;
    return page;
}

/* Reads the logged events (rc->last, rc->to] into rc in pages of `page`
 * rows by seq: each page is one scan, its read transaction ended before
 * the duty-cycle pause that follows it. HR_ESTOPPED when cancelled. */
static hr_status read_log(trial *tr, hr_store *log, read_ctx *rc, size_t page, hr_error *err)
{
    for (;;) {
        double cpu0 = thread_cpu_s();
        size_t had = rc->n + (size_t)rc->skipped;
        rc->page_left = page;
        hr_status st = hr_store_log_scan(log, rc->last, read_event, rc, err);
        if (st != HR_OK && st != HR_ESTOPPED)
            return st;
        bool more = st == HR_ESTOPPED && !rc->end;
        if (!duty_cycle(tr, HR_TRIALS_READ, rc->n + (size_t)rc->skipped - had, cpu0))
            return HR_ESTOPPED;
        if (!more || rc->last >= rc->to)
            return HR_OK;
    }
}

/* Row r's catalog attributes and pin, from src into dst's row r. */
static hr_status copy_row_attrs(const hr_model *src, hr_model *dst, hr_table_id t, uint32_t r,
                                hr_error *err)
{
    hr_feat f[HR_MAX_ATTRS];
    uint32_t na = hr_model_attrs(src, t, r, f);
    bool pin = hr_model_attrs_pinned(src, t, r);
    hr_status st = na || pin ? hr_model_set_attrs(dst, t, r, f, na, pin) : HR_OK;
    if (st != HR_OK)
        hr_error_set(err, st, NULL, "copying catalog attributes: %s", hr_status_to_string(st));
    return st;
}

/* The catalog attributes (and pins) of the live model's users and items, as
 * they are now, into the private one: each attributed id at its row there
 * (restored from the checkpoint), else at its live row when that is free,
 * else at a new row. Read before the log, so the events of the warm-up and
 * the window train with them, as the live trainers did. Lock-free reads
 * of the live model (the trial thread). */
static hr_status copy_attrs(const hr_model *live, hr_model *m, hr_error *err)
{
    hr_feat f[HR_MAX_ATTRS];
    for (int t = HR_TABLE_USER; t <= HR_TABLE_ITEM; t++) {
        if (hr_model_attrs_count(live, (hr_table_id)t) == 0)
            continue;
        uint32_t n = hr_model_rows(live, (hr_table_id)t);
        for (uint32_t r = 1; r < n; r++) {
            uint32_t na = hr_model_attrs(live, (hr_table_id)t, r, f);
            bool pin = hr_model_attrs_pinned(live, (hr_table_id)t, r);
            size_t klen;
            const char *key = na || pin ? hr_model_key(live, (hr_table_id)t, r, &klen) : NULL;
            if (!key)
                continue;
            uint32_t row = hr_model_lookup(m, (hr_table_id)t, key, klen);
            hr_status st = HR_OK;
            if (row == HR_ID_NONE) {
                if (hr_model_insert_id_at(m, (hr_table_id)t, key, klen, r) == HR_OK) {
                    row = r;
                    hr_model_reset_row(m, (hr_table_id)t, r); /* a fresh row, as intern's */
                } else
                    st = hr_model_intern(m, (hr_table_id)t, key, klen, &row, NULL);
            }
            if (st == HR_OK)
                st = hr_model_set_attrs(m, (hr_table_id)t, row, f, na, pin);
            if (st != HR_OK)
                return hr_error_set(err, st, NULL, "copying catalog attributes: %s",
                                    hr_status_to_string(st));
        }
    }
    return HR_OK;
}

/* A copy of src (ids at the same rows, every row's floats and catalog
 * attributes). */
static hr_status copy_model(const hr_model *src, hr_model **out, hr_error *err)
{
    hr_status st = hr_model_create(hr_model_get_config(src), out, err);
    if (st != HR_OK)
        return st;
    hr_model *dst = *out;
    const hr_row_layout *L = hr_model_layout(src);
    float *buf = malloc((size_t)L->floats * sizeof(float));
    if (!buf)
        st = hr_error_set(err, HR_ENOMEM, NULL, "out of memory");
    for (int t = 0; t < HR_TABLE_COUNT && st == HR_OK; t++) {
        bool ids = t == HR_TABLE_USER || t == HR_TABLE_ITEM;
        uint32_t n = hr_model_rows(src, (hr_table_id)t);
        for (uint32_t r = 0; r < n && st == HR_OK; r++) {
            if (ids && r > 0) {
                size_t klen;
                const char *key = hr_model_key(src, (hr_table_id)t, r, &klen);
                if (!key)
                    continue; /* a free row */
                if ((st = hr_model_insert_id_at(dst, (hr_table_id)t, key, klen, r)) != HR_OK) {
                    hr_error_set(err, st, NULL, "copying the model: %s", hr_status_to_string(st));
                    break;
                }
            }
            hr_sgd_row_read(L, hr_model_row(src, (hr_table_id)t, r), buf);
            hr_sgd_row_write(L, hr_model_row(dst, (hr_table_id)t, r), buf);
            if (ids && r > 0)
                st = copy_row_attrs(src, dst, (hr_table_id)t, r, err);
        }
    }
    free(buf);
    if (st != HR_OK) {
        hr_model_destroy(dst);
        *out = NULL;
    }
    return st;
}

/* ---- one run: a private one-thread trainer over a copy ---- */

typedef struct {
    hr_model *model;
    hr_queue *queue;
    hr_schedbox *box;
    hr_progress *progress;
    hr_trainer *trainer;
} engine;

static void engine_close(engine *e)
{
    if (e->trainer)
        hr_trainer_stop(e->trainer, false, NULL);
    hr_trainer_destroy(e->trainer);
    hr_progress_destroy(e->progress);
    hr_queue_destroy(e->queue);
    hr_schedbox_destroy(e->box);
    hr_model_destroy(e->model);
    memset(e, 0, sizeof *e);
}

/* Takes model; the trainer is left paused (replay_paused trains on the
 * caller's thread), its clock at `updates`. */
static hr_status engine_open(hr_trials *t, hr_model *model, const hr_schedule *s, size_t points,
                             uint64_t updates, engine *e, hr_error *err)
{
    memset(e, 0, sizeof *e);
    e->model = model;
    hr_trainer_config tc = t->cfg.trainer;
    tc.threads = 1;
    bool squared = hr_model_get_config(model)->loss == HR_LOSS_SQUARED;
    hr_status st;
    if ((st = hr_schedbox_create(s, &e->box, err)) != HR_OK ||
        (st = hr_queue_create(64, &e->queue)) != HR_OK ||
        (st = hr_progress_create(points ? points : 1, squared, &e->progress)) != HR_OK ||
        (st = hr_trainer_start(model, e->queue, e->box, e->progress, &tc, &e->trainer)) != HR_OK) {
        engine_close(e);
        return hr_error_set(err, st, NULL, "starting a private trainer: %s", hr_status_to_string(st));
    }
    hr_trainer_set_base_updates(e->trainer, updates);
    hr_trainer_pause(e->trainer);
    return HR_OK;
}

/* Trains evs[0..n) in slices of a trainer batch, each event stamped with
 * the update count at its slice's start (as the queue would), sleeping
 * after each slice for the duty cycle. on_slice (may be NULL) is called
 * after each. Returns false when cancelled. */
typedef void slice_fn(trial *tr, void *ctx, size_t done_in_run);
static bool train_events(trial *tr, engine *e, hr_event *evs, size_t n, slice_fn *on_slice,
                         void *ctx)
{
    hr_trials *t = tr->owner;
    size_t batch = t->cfg.trainer.batch ? t->cfg.trainer.batch : 256;
    for (size_t i = 0; i < n; i += batch) {
        if (atomic_load(&tr->cancel))
            return false;
        size_t m = n - i < batch ? n - i : batch;
        double cpu0 = thread_cpu_s();
        uint64_t now = hr_trainer_updates(e->trainer);
        for (size_t j = 0; j < m; j++) {
            evs[i + j].enq_updates = now;
            evs[i + j].enq_ns = 0;
        }
        hr_trainer_replay_paused(e->trainer, evs + i, m);
        pthread_mutex_lock(&t->mu);
        tr->done += m;
        pthread_mutex_unlock(&t->mu);
        if (on_slice)
            on_slice(tr, ctx, i + m);
        if (!duty_cycle(tr, HR_TRIALS_TRAIN, m, cpu0))
            return false;
    }
    return !atomic_load(&tr->cancel);
}

typedef struct {
    engine *e;
    run *r;
    uint64_t next_point;   /* window events at the next curve point */
    uint64_t points_at;    /* progress points at the last curve point */
    uint64_t total;        /* window events */
    double busy_t0;
} run_ctx;

static void on_run_slice(trial *tr, void *arg, size_t done)
{
    run_ctx *rc = arg;
    if (done < rc->next_point && done < rc->total)
        return;
    hr_progress_report all; /* only its total: one point, not a copy and an AUC of them all */
    hr_progress_get(rc->e->progress, 1, &all);
    hr_progress_report seg;
    hr_progress_get(rc->e->progress, (size_t)(all.total - rc->points_at), &seg);
    rc->points_at = all.total;
    rc->next_point = done + tr->curve_events;
    curve_point p = {done, seg.n ? seg.loss : NAN, seg.auc};
    hr_trials *t = tr->owner;
    pthread_mutex_lock(&t->mu);
    run *r = rc->r;
    if (r->ncurve == r->capcurve) {
        size_t cap = r->capcurve ? r->capcurve * 2 : 64;
        curve_point *c = realloc(r->curve, cap * sizeof *c);
        if (c) {
            r->curve = c;
            r->capcurve = cap;
        }
    }
    if (r->ncurve < r->capcurve)
        r->curve[r->ncurve++] = p;
    r->events = done;
    pthread_mutex_unlock(&t->mu);
}

/* ---- the trial thread ---- */

typedef struct {
    trial *tr;
    hr_store *main, *log; /* taken */
} job;

static void fail_trial(trial *tr, const char *fmt, const char *detail)
{
    hr_trials *t = tr->owner;
    pthread_mutex_lock(&t->mu);
    tr->status = T_FAILED;
    snprintf(tr->error, sizeof tr->error, fmt, detail);
    pthread_mutex_unlock(&t->mu);
    hr_log("warn", "trial failed", json_pack("{s:s,s:s}", "trial", tr->id, "why", tr->error));
}

static void *trial_main(void *arg)
{
    job *jb = arg;
    trial *tr = jb->tr;
    hr_trials *t = tr->owner;
    hr_error err = {{0}, {0}};
    hr_model *base = NULL;
    read_ctx rd = {0};
    bool ok = false;
    const hr_model_config *mc = hr_model_get_config(t->live);
    if (hr_model_create(mc, &base, &err) != HR_OK) {
        fail_trial(tr, "creating the private model: %s", err.message);
        goto out;
    }
    if (restore_ckpt(jb->main, &tr->ckpt, base, &err) != HR_OK) {
        fail_trial(tr, "restoring the checkpoint: %s", err.message);
        goto out;
    }
    if (copy_attrs(t->live, base, &err) != HR_OK) {
        fail_trial(tr, "%s", err.message);
        goto out;
    }
    rd.m = base;
    rd.to = tr->to_seq;
    rd.last = tr->ckpt.seq;
    size_t page = t->cfg.trainer.batch ? t->cfg.trainer.batch : 256;
    hr_status st = read_log(tr, jb->log, &rd, page, &err);
    if (st == HR_ESTOPPED)
        goto out; /* cancelled */
    if (st != HR_OK) {
        fail_trial(tr, "reading the event log: %s",
                   err.message[0] ? err.message : hr_status_to_string(st));
        goto out;
    }
    hr_store_close(jb->main);
    hr_store_close(jb->log);
    jb->main = jb->log = NULL;
    /* warm-up (events <= from_seq) and window (the rest) */
    size_t nwarm = 0;
    while (nwarm < rd.n && rd.ev[nwarm].seq <= tr->from_seq)
        nwarm++;
    size_t nwin = rd.n - nwarm;
    pthread_mutex_lock(&t->mu);
    tr->total = nwarm + nwin * (uint64_t)tr->nruns;
    pthread_mutex_unlock(&t->mu);
    uint64_t updates = tr->ckpt.updates;
    unsigned negs = t->cfg.trainer.negatives;
    size_t points = nwin * (1 + (size_t)negs);
    if (nwarm) { /* trains base itself: it becomes the state at the window's start */
        engine e;
        if (engine_open(t, base, &tr->runs[0].sched, 1, updates, &e, &err) != HR_OK) {
            base = NULL; /* engine_open freed it */
            fail_trial(tr, "%s", err.message);
            goto out;
        }
        bool go = train_events(tr, &e, rd.ev, nwarm, NULL, NULL);
        updates = hr_trainer_updates(e.trainer);
        e.model = NULL; /* kept */
        engine_close(&e);
        if (!go)
            goto out;
    }
    for (int i = 0; i < tr->nruns; i++) {
        engine e;
        hr_model *m = NULL;
        if (copy_model(base, &m, &err) != HR_OK ||
            engine_open(t, m, &tr->runs[i].sched, points, updates, &e, &err) != HR_OK) {
            fail_trial(tr, "%s", err.message);
            goto out;
        }
        run_ctx rc = {.e = &e, .r = &tr->runs[i], .next_point = tr->curve_events, .total = nwin};
        uint64_t t0 = hr_now_ns();
        bool go = train_events(tr, &e, rd.ev + nwarm, nwin, on_run_slice, &rc);
        double secs = (double)(hr_now_ns() - t0) * 1e-9;
        hr_progress_report rep;
        hr_progress_get(e.progress, 0, &rep);
        hr_trainer_counts c;
        hr_trainer_get_counts(e.trainer, &c);
        pthread_mutex_lock(&t->mu);
        run *r = &tr->runs[i];
        r->loss = rep.n ? rep.loss : NAN;
        r->auc = rep.auc;
        r->mean_pred = rep.n ? rep.mean_pred : NAN;
        r->mean_label = rep.n ? rep.mean_label : NAN;
        r->points = rep.total;
        r->skipped_nonfinite = c.skipped_nonfinite;
        r->seconds = secs;
        r->finished = go;
        pthread_mutex_unlock(&t->mu);
        engine_close(&e);
        if (!go)
            goto out;
    }
    ok = true;
out:
    hr_store_close(jb->main);
    hr_store_close(jb->log);
    free(rd.ev);
    hr_model_destroy(base);
    pthread_mutex_lock(&t->mu);
    if (tr->status == T_RUNNING)
        tr->status = ok ? T_DONE : T_CANCELLED;
    trial_status end = tr->status;
    pthread_mutex_unlock(&t->mu);
    hr_log("info", "trial ended",
           json_pack("{s:s,s:s,s:I}", "trial", tr->id, "status", status_names[end],
                     "skipped_events", (json_int_t)rd.skipped));
    free(jb);
    return NULL;
}

/* ---- public ---- */

hr_status hr_trials_create(const hr_trials_config *cfg, hr_model *model, hr_schedbox *box,
                           hr_guard *guard, hr_trials **out, hr_error *err)
{
    *out = NULL;
    if (cfg->curve_events < 1 || !(cfg->cpu_share > 0 && cfg->cpu_share <= 1))
        return hr_error_set(err, HR_EINVAL, "trial_cpu_share",
                            "trials: curve_events >= 1 and cpu_share in (0, 1]");
    hr_trials *t = calloc(1, sizeof *t);
    if (!t)
        return hr_error_set(err, HR_ENOMEM, NULL, "out of memory");
    t->cfg = *cfg;
    t->live = model;
    t->box = box;
    t->guard = guard;
    pthread_mutex_init(&t->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&t->cv, &ca);
    pthread_condattr_destroy(&ca);
    t->next_id = 1;
    *out = t;
    return HR_OK;
}

void hr_trials_set_slice_hook(hr_trials *t, hr_trials_slice_fn *fn, void *ctx)
{
    pthread_mutex_lock(&t->mu);
    t->hook = fn;
    t->hook_ctx = ctx;
    pthread_mutex_unlock(&t->mu);
}

static void join_trial(trial *tr)
{
    if (!tr->joined) {
        pthread_join(tr->thread, NULL);
        tr->joined = true;
    }
}

void hr_trials_destroy(hr_trials *t)
{
    if (!t)
        return;
    pthread_mutex_lock(&t->mu);
    for (size_t i = 0; i < t->n; i++)
        atomic_store(&t->list[i]->cancel, true);
    pthread_cond_broadcast(&t->cv);
    pthread_mutex_unlock(&t->mu);
    for (size_t i = 0; i < t->n; i++) {
        join_trial(t->list[i]);
        free_trial(t->list[i]);
    }
    pthread_cond_destroy(&t->cv);
    pthread_mutex_destroy(&t->mu);
    free(t);
}

/* Parses the body's candidates into tr->runs[1..]; every bad candidate is
 * named in err. */
static hr_status parse_candidates(hr_trials *t, const json_t *arr, trial *tr, hr_error *err)
{
    if (!json_is_array(arr) || json_array_size(arr) < 1 ||
        json_array_size(arr) > HR_TRIALS_MAX_CANDIDATES)
        return hr_error_set(err, HR_EINVAL, "candidates",
                            "candidates must be an array of 1 to %d schedules",
                            HR_TRIALS_MAX_CANDIDATES);
    char msg[sizeof err->message];
    size_t len = 0;
    msg[0] = 0;
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v) {
        hr_error e = {{0}, {0}};
        hr_schedule s;
        hr_status st = hr_schedule_from_json(v, &s, &e);
        if (st == HR_OK)
            st = hr_schedule_check_state(&s, rows_state(t->live), &e);
        if (st != HR_OK) {
            len += (size_t)snprintf(msg + len, len < sizeof msg ? sizeof msg - len : 0,
                                    "%scandidates[%zu]: %s%s%s", len ? "; " : "", i, e.field,
                                    e.field[0] ? ": " : "", e.message);
            continue;
        }
        tr->runs[1 + i].sched = s;
    }
    if (len)
        return hr_error_set(err, HR_EINVAL, "candidates", "%s", msg);
    tr->nruns = 1 + (int)json_array_size(arr);
    return HR_OK;
}

static hr_status open_stores(hr_trials *t, hr_store **main, hr_store **log, hr_error *err)
{
    char logpath[HR_CONFIG_STR + 16];
    snprintf(logpath, sizeof logpath, "%s-events", t->cfg.db);
    hr_store_options mo = {.kind = HR_STORE_MAIN, .busy_ms = BUSY_MS};
    hr_store_options lo = {.kind = HR_STORE_LOG, .busy_ms = BUSY_MS};
    hr_status st = hr_store_open(t->cfg.db, &mo, main, err);
    if (st == HR_OK && (st = hr_store_open(logpath, &lo, log, err)) != HR_OK) {
        hr_store_close(*main);
        *main = NULL;
    }
    return st;
}

/* Resolves the window (from, to] and the state to start from; the 409's
 * message says what is available. Under mu. */
static hr_status resolve_window(hr_store *main, hr_store *log, const json_t *win, trial *tr,
                                const char **code, hr_error *err)
{
    uint64_t end = 0, trimmed = 0, from = 0;
    hr_status st;
    if ((st = hr_store_log_last_seq(log, &end, err)) != HR_OK ||
        (st = hr_store_log_trimmed_to(log, &trimmed, err)) != HR_OK) {
        *code = "unavailable";
        return st;
    }
    const json_t *ev = json_object_get(win, "events"), *since = json_object_get(win, "since");
    if (ev) {
        uint64_t n = (uint64_t)json_integer_value(ev);
        from = n >= end ? 0 : end - n;
    } else {
        uint64_t first = 0;
        if ((st = hr_store_log_since(log, json_number_value(since), &first, err)) != HR_OK) {
            *code = "unavailable";
            return st;
        }
        if (first == 0) {
            *code = "window_not_retained";
            return hr_error_set(err, HR_ENOTFOUND, "window",
                                "no event was logged since %.3f (the newest seq is %llu)",
                                json_number_value(since), (unsigned long long)end);
        }
        from = first - 1;
        if (trimmed > 0 && first <= trimmed + 1)
            from = trimmed - 1; /* it may reach before what the log keeps: refused below */
    }
    if (end <= from || end <= trimmed) {
        *code = "window_not_retained";
        return hr_error_set(err, HR_ENOTFOUND, "window", "the window holds no logged event");
    }
    hr_store_ckpt k;
    if ((st = hr_store_ckpt_at(main, from, INFINITY, &k, err)) != HR_OK) {
        *code = "unavailable";
        return st;
    }
    bool usable = k.id ? k.seq >= trimmed : trimmed == 0; /* id 0: the initial model */
    if (!usable) {
        hr_store_ckpt first;
        uint64_t avail = 0, at = end;
        if (trimmed == 0) {
            avail = end;
            at = 0;
        } else if (hr_store_ckpt_from(main, trimmed, &first, err) == HR_OK && first.id &&
                   first.seq < end) {
            avail = end - first.seq;
            at = first.seq;
        }
        *code = "window_not_retained";
        return hr_error_set(err, HR_ENOTFOUND, "window",
                            "the window starts after seq %llu, but the model there cannot be "
                            "rebuilt: available are the last %llu events (after seq %llu, up to "
                            "%llu); the log keeps trial_retain_events/trial_retain_seconds from "
                            "a checkpoint (keep_checkpoints)",
                            (unsigned long long)from, (unsigned long long)avail,
                            (unsigned long long)at, (unsigned long long)end);
    }
    tr->ckpt = k;
    tr->from_seq = from;
    tr->to_seq = end;
    return HR_OK;
}

hr_status hr_trials_start(hr_trials *t, const json_t *body, json_t **out, const char **code,
                          hr_error *err)
{
    *out = NULL;
    *code = "invalid";
    if (t->cfg.refuse || !t->cfg.db[0]) {
        *code = "trials_unavailable";
        return hr_error_set(err, HR_EUNSUPPORTED, NULL, "%s",
                            t->cfg.refuse ? t->cfg.refuse
                                          : "trials replay the event log: this server runs "
                                            "without a database (--db \"\")");
    }
    if (!json_is_object(body))
        return hr_error_set(err, HR_EINVAL, NULL, "the body must be a JSON object");
    const json_t *win = json_object_get(body, "window");
    const json_t *ev = json_object_get(win, "events"), *since = json_object_get(win, "since");
    if (!json_is_object(win) || (ev != NULL) == (since != NULL) ||
        (ev && (!json_is_integer(ev) || json_integer_value(ev) < 1)) ||
        (since && (!json_is_number(since) || !isfinite(json_number_value(since)))))
        return hr_error_set(err, HR_EINVAL, "window",
                            "window must be {\"events\": N >= 1} or {\"since\": unix seconds}");
    const json_t *ce = json_object_get(body, "curve_events");
    if (ce && (!json_is_integer(ce) || json_integer_value(ce) < 1))
        return hr_error_set(err, HR_EINVAL, "curve_events", "curve_events must be an integer >= 1");
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)body, key, val) {
        if (strcmp(key, "window") && strcmp(key, "candidates") && strcmp(key, "curve_events"))
            return hr_error_set(err, HR_EINVAL, key, "unknown field %s", key);
    }
    trial *tr = calloc(1, sizeof *tr);
    if (!tr)
        return hr_error_set(err, HR_ENOMEM, NULL, "out of memory");
    hr_status st = parse_candidates(t, json_object_get(body, "candidates"), tr, err);
    if (st != HR_OK) {
        free_trial(tr);
        return st;
    }
    tr->owner = t;
    tr->runs[0].sched = *hr_schedbox_current(t->box);
    tr->curve_events = ce ? (uint64_t)json_integer_value(ce) : t->cfg.curve_events;
    tr->created = hr_wall_time();
    atomic_init(&tr->cancel, false);
    pthread_mutex_lock(&t->mu);
    tr->hook = t->hook;
    tr->hook_ctx = t->hook_ctx;
    for (size_t i = 0; i < t->n; i++)
        if (is_running(t->list[i])) {
            *code = "trial_running";
            st = hr_error_set(err, HR_EBUSY, NULL, "trial %s is running (one at a time; DELETE "
                                                   "it to cancel)", t->list[i]->id);
            goto fail;
        }
    hr_store *main = NULL, *log = NULL;
    if ((st = open_stores(t, &main, &log, err)) != HR_OK) {
        *code = "unavailable";
        goto fail;
    }
    if ((st = resolve_window(main, log, win, tr, code, err)) != HR_OK)
        goto fail_stores;
    /* the private copy: two models, the events, the window's points */
    uint64_t nev = tr->to_seq - tr->ckpt.seq, nwin = tr->to_seq - tr->from_seq;
    size_t need = 2 * hr_model_bytes(t->live) + (size_t)nev * sizeof(hr_event) +
                  (size_t)nwin * (1 + t->cfg.trainer.negatives) * sizeof(hr_progress_point);
    if (need > t->cfg.memory_bytes) {
        *code = "trial_too_large";
        st = hr_error_set(err, HR_EFULL, NULL,
                          "the private copy would take %zu bytes (2 models of %zu bytes, %llu "
                          "events), over trial_memory_mb (%zu bytes)",
                          need, hr_model_bytes(t->live), (unsigned long long)nev,
                          t->cfg.memory_bytes);
        goto fail_stores;
    }
    if (t->n == HR_TRIALS_KEPT) { /* forget the oldest finished one */
        size_t i = 0;
        while (i < t->n && (is_running(t->list[i]) || t->list[i]->applied_version == UINT64_MAX))
            i++;
        if (i == t->n) {
            *code = "trial_running";
            st = hr_error_set(err, HR_EBUSY, NULL, "no finished trial to forget");
            goto fail_stores;
        }
        join_trial(t->list[i]);
        free_trial(t->list[i]);
        memmove(&t->list[i], &t->list[i + 1], (t->n - i - 1) * sizeof t->list[0]);
        t->n--;
    }
    snprintf(tr->id, sizeof tr->id, "t%llu", (unsigned long long)t->next_id++);
    tr->status = T_RUNNING;
    tr->total = nev - (tr->from_seq - tr->ckpt.seq) + nwin * (uint64_t)tr->nruns;
    job *jb = malloc(sizeof *jb);
    if (!jb || (jb->tr = tr, jb->main = main, jb->log = log,
                pthread_create(&tr->thread, NULL, trial_main, jb) != 0)) {
        free(jb);
        *code = "unavailable";
        st = hr_error_set(err, HR_ENOMEM, NULL, "cannot start the trial thread");
        goto fail_stores;
    }
    t->list[t->n++] = tr;
    *out = json_pack("{s:s, s:s, s:i, s:{s:I, s:I, s:I}, s:{s:I, s:I}, s:I, s:I}", "id", tr->id,
                     "status", "running", "candidates", tr->nruns - 1, "window", "from_seq",
                     (json_int_t)tr->from_seq, "to_seq", (json_int_t)tr->to_seq, "events",
                     (json_int_t)nwin, "start", "checkpoint", (json_int_t)tr->ckpt.id, "seq",
                     (json_int_t)tr->ckpt.seq, "warmup_events",
                     (json_int_t)(tr->from_seq - tr->ckpt.seq), "memory_bytes", (json_int_t)need);
    pthread_mutex_unlock(&t->mu);
    hr_log("info", "trial started", json_pack("{s:s,s:I,s:i}", "trial", tr->id, "events",
                                              (json_int_t)nwin, "candidates", tr->nruns - 1));
    return HR_OK;
fail_stores:
    hr_store_close(main);
    hr_store_close(log);
fail:
    pthread_mutex_unlock(&t->mu);
    free_trial(tr);
    return st;
}

/* The runs ranked by loss (non-finite last); order[0] is the best. Under mu. */
static int rank_runs(const trial *tr, int *order)
{
    int n = 0;
    for (int i = 0; i < tr->nruns; i++)
        if (tr->runs[i].finished)
            order[n++] = i;
    for (int a = 1; a < n; a++)
        for (int b = a; b > 0; b--) {
            double x = tr->runs[order[b - 1]].loss, y = tr->runs[order[b]].loss;
            bool swap = isfinite(y) && (!isfinite(x) || y < x);
            if (!swap)
                break;
            int tmp = order[b - 1];
            order[b - 1] = order[b];
            order[b] = tmp;
        }
    return n;
}

/* The winner: the best candidate if it beats the baseline; 0 if none. */
static int winner_of(const trial *tr)
{
    if (tr->status != T_DONE)
        return 0;
    int order[1 + HR_TRIALS_MAX_CANDIDATES];
    int n = rank_runs(tr, order);
    return n && order[0] != 0 && isfinite(tr->runs[order[0]].loss) ? order[0] : 0;
}

static json_t *run_json(const run *r, const run *baseline, int index)
{
    json_t *curve = json_array();
    for (size_t i = 0; i < r->ncurve; i++)
        json_array_append_new(curve, json_pack("{s:I, s:o, s:o}", "events",
                                               (json_int_t)r->curve[i].events, "loss",
                                               hr_json_real_or_null(r->curve[i].loss), "auc",
                                               hr_json_real_or_null(r->curve[i].auc)));
    json_t *j = json_pack("{s:o, s:o, s:b, s:I, s:o, s:o, s:o, s:o, s:I, s:f, s:o}", "index",
                          index ? json_integer(index) : json_null(), "schedule",
                          hr_schedule_to_json(&r->sched), "finished", r->finished, "events",
                          (json_int_t)r->events, "loss", hr_json_real_or_null(r->loss), "auc",
                          hr_json_real_or_null(r->auc), "mean_prediction",
                          hr_json_real_or_null(r->mean_pred), "mean_label",
                          hr_json_real_or_null(r->mean_label), "skipped_nonfinite",
                          (json_int_t)r->skipped_nonfinite, "seconds", r->seconds, "curve", curve);
    if (j && baseline)
        json_object_set_new(j, "loss_vs_baseline",
                            hr_json_real_or_null(r->finished && baseline->finished
                                                     ? r->loss - baseline->loss
                                                     : NAN));
    return j;
}

json_t *hr_trials_get(hr_trials *t, const char *id)
{
    pthread_mutex_lock(&t->mu);
    trial *tr = find(t, id);
    if (!tr) {
        pthread_mutex_unlock(&t->mu);
        return NULL;
    }
    bool squared = hr_model_get_config(t->live)->loss == HR_LOSS_SQUARED;
    json_t *cands = json_array(), *ranking = json_array();
    for (int i = 1; i < tr->nruns; i++)
        json_array_append_new(cands, run_json(&tr->runs[i], &tr->runs[0], i));
    int order[1 + HR_TRIALS_MAX_CANDIDATES];
    int n = rank_runs(tr, order);
    for (int k = 0; k < n; k++) {
        const run *r = &tr->runs[order[k]];
        json_array_append_new(
            ranking, json_pack("{s:i, s:o, s:o, s:o}", "rank", k + 1, "index",
                               order[k] ? json_integer(order[k]) : json_null(), "loss",
                               hr_json_real_or_null(r->loss), "loss_vs_baseline",
                               hr_json_real_or_null(tr->runs[0].finished
                                                        ? r->loss - tr->runs[0].loss
                                                        : NAN)));
    }
    int w = winner_of(tr);
    json_t *j = json_pack(
        "{s:s, s:s, s:s, s:f, s:{s:I, s:I}, s:{s:I, s:I, s:I}, s:{s:I, s:I}, s:I, s:I, s:o, s:o, "
        "s:o, s:o, s:o}",
        "id", tr->id, "status", status_names[tr->status], "loss_kind",
        squared ? "mse" : "logloss", "created", tr->created, "progress", "events_done",
        (json_int_t)tr->done, "events_total", (json_int_t)tr->total, "window", "from_seq",
        (json_int_t)tr->from_seq, "to_seq", (json_int_t)tr->to_seq, "events",
        (json_int_t)(tr->to_seq - tr->from_seq), "start", "checkpoint", (json_int_t)tr->ckpt.id,
        "seq", (json_int_t)tr->ckpt.seq, "curve_events", (json_int_t)tr->curve_events,
        "warmup_events", (json_int_t)(tr->from_seq - tr->ckpt.seq), "baseline",
        run_json(&tr->runs[0], NULL, 0), "candidates", cands, "ranking", ranking, "winner",
        w ? json_integer(w) : json_null(), "applied_version",
        tr->applied_version ? json_integer((json_int_t)tr->applied_version) : json_null());
    if (j && tr->status == T_FAILED)
        json_object_set_new(j, "error", json_string(tr->error));
    pthread_mutex_unlock(&t->mu);
    return j;
}

hr_status hr_trials_cancel(hr_trials *t, const char *id, hr_error *err)
{
    pthread_mutex_lock(&t->mu);
    trial *tr = find(t, id);
    if (tr) {
        atomic_store(&tr->cancel, true);
        pthread_cond_broadcast(&t->cv);
    }
    pthread_mutex_unlock(&t->mu);
    if (!tr)
        return hr_error_set(err, HR_ENOTFOUND, NULL, "no trial %s", id);
    return HR_OK;
}

hr_status hr_trials_apply(hr_trials *t, const char *id, json_t **out, const char **code,
                          hr_error *err)
{
    *out = NULL;
    pthread_mutex_lock(&t->mu);
    trial *tr = find(t, id);
    hr_status st = HR_OK;
    hr_schedule s;
    char note[256];
    if (!tr) {
        *code = "not_found";
        st = hr_error_set(err, HR_ENOTFOUND, NULL, "no trial %s", id);
    } else if (tr->status != T_DONE) {
        *code = "not_finished";
        st = hr_error_set(err, HR_EBUSY, NULL, "trial %s is %s: only a finished trial applies",
                          id, status_names[tr->status]);
    } else if (tr->applied_version) {
        *code = "already_applied";
        st = hr_error_set(err, HR_EBUSY, NULL, "trial %s was applied already (version %llu)", id,
                          (unsigned long long)tr->applied_version);
    } else {
        int w = winner_of(tr);
        if (!w) {
            *code = "no_better_candidate";
            st = hr_error_set(err, HR_EBUSY, NULL,
                              "no candidate of trial %s beat the current schedule (loss %.6g)",
                              id, tr->runs[0].loss);
        } else {
            s = tr->runs[w].sched;
            snprintf(note, sizeof note,
                     "applied from trial %s: candidate %d, loss %.6g vs baseline %.6g over %llu "
                     "events (seq %llu to %llu)",
                     id, w, tr->runs[w].loss, tr->runs[0].loss,
                     (unsigned long long)(tr->to_seq - tr->from_seq),
                     (unsigned long long)tr->from_seq + 1, (unsigned long long)tr->to_seq);
            tr->applied_version = UINT64_MAX; /* claimed: a second apply waits for none */
        }
    }
    pthread_mutex_unlock(&t->mu);
    if (st != HR_OK)
        return st;
    uint64_t version = 0;
    bool restore = false;
    if (t->guard) {
        st = hr_guard_apply_note(t->guard, &s, note, &version, &restore, err);
    } else {
        st = hr_schedbox_swap_note(t->box, &s, 0, NAN, note, &version, err);
    }
    pthread_mutex_lock(&t->mu);
    tr->applied_version = st == HR_OK ? version : 0;
    pthread_mutex_unlock(&t->mu);
    if (st != HR_OK) {
        *code = "invalid";
        return st;
    }
    *out = json_pack("{s:s, s:I, s:b, s:s, s:o}", "trial", id, "version", (json_int_t)version,
                     "restore_point", restore, "note", note, "schedule", hr_schedule_to_json(&s));
    hr_log("info", "schedule changed",
           json_pack("{s:I, s:s}", "version", (json_int_t)version, "trial", id));
    return HR_OK;
}

/*
 * guard.c - restore points for schedule changes, their undo, and the
 * divergence guard's watch (see hogrec/guard.h for the design).
 *
 * State: `mu` guards everything but the recorded events, which the trainer
 * tap appends under `tap_mu` (held for a memcpy per batch, and only while a
 * restore point is held: `recording` is read first, without the lock).
 * Apply and revert pause the trainers while they hold `mu`; the tap never
 * takes `mu`, so a paused trainer never waits for it.
 *
 * Threads: apply, undo, status (HTTP threads), the watch thread, the tap
 * (trainer threads).
 */
#include "hogrec/guard.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hogrec/log.h"
#include "hogrec/sgd.h"

#define WATCH_TICK_MS 10

struct hr_guard {
    hr_guard_config cfg;
    hr_model *model;
    hr_trainer *trainer;
    hr_schedbox *box;
    hr_progress *progress;

    pthread_mutex_t mu;     /* guards the fields down to the tap's */
    bool held;              /* a restore point is held */
    float *rows[HR_TABLE_COUNT]; /* packed copies of rows [0, nrows[t]) */
    uint32_t nrows[HR_TABLE_COUNT];
    size_t row_bytes;       /* bytes of rows[] */
    uint64_t updates_at;    /* the schedule's clock at the restore point */
    hr_schedule prev;       /* the schedule before the change */
    uint64_t version;       /* the change's version */
    double loss_before;     /* window loss before the change (NAN: none) */
    char why_none[160];     /* why no restore point is held ("" if one is) */
    /* the watch */
    uint64_t trained_at;    /* trainer `trained` at the change */
    uint64_t skipped_prev, steps_prev; /* counters at the last window's end */
    unsigned windows_seen, over_streak;
    double last_loss;       /* loss of the last window watched */
    json_t *last_revert;    /* owned; NULL until one */
    uint64_t reverts;

    pthread_mutex_t tap_mu; /* guards the event record */
    atomic_bool recording;
    hr_event *evs;          /* events applied since the restore point */
    size_t nev, cap;
    bool overflow;          /* the record outgrew the memory limit */

    pthread_t thread;
    pthread_mutex_t stop_mu;
    pthread_cond_t stop_cv;
    bool stop, started;
};

/* ---- the record (trainer threads) ---- */

static void tap(void *ctx, const hr_event *evs, size_t n)
{
    hr_guard *g = ctx;
    if (!atomic_load_explicit(&g->recording, memory_order_acquire))
        return;
    pthread_mutex_lock(&g->tap_mu);
    if (!g->overflow) {
        if (g->nev + n > g->cap) {
            size_t cap = g->cap ? g->cap : 4096;
            while (cap < g->nev + n)
                cap *= 2;
            hr_event *e = NULL;
            if (g->row_bytes + cap * sizeof *e <= g->cfg.memory_bytes)
                e = realloc(g->evs, cap * sizeof *e);
            if (e) {
                g->evs = e;
                g->cap = cap;
            } else {
                g->overflow = true; /* the watch frees the restore point */
            }
        }
        if (!g->overflow) {
            memcpy(g->evs + g->nev, evs, n * sizeof *evs);
            g->nev += n;
        }
    }
    pthread_mutex_unlock(&g->tap_mu);
}

/* ---- restore points (caller holds mu) ---- */

static void do_release(hr_guard *g, const char *why)
{
    atomic_store_explicit(&g->recording, false, memory_order_release);
    pthread_mutex_lock(&g->tap_mu);
    free(g->evs);
    g->evs = NULL;
    g->nev = g->cap = 0;
    g->overflow = false;
    pthread_mutex_unlock(&g->tap_mu);
    for (int t = 0; t < HR_TABLE_COUNT; t++) {
        free(g->rows[t]);
        g->rows[t] = NULL;
        g->nrows[t] = 0;
    }
    g->row_bytes = 0;
    g->held = false;
    snprintf(g->why_none, sizeof g->why_none, "%s", why);
}

/* Copies every row; trainers paused. false (nothing kept) when it would not
 * fit the limit or memory runs out; why_none says which. */
static bool do_mark(hr_guard *g)
{
    const hr_row_layout *L = hr_model_layout(g->model);
    size_t bytes = 0;
    for (int t = 0; t < HR_TABLE_COUNT; t++)
        bytes += (size_t)hr_model_rows(g->model, (hr_table_id)t) * L->floats * sizeof(float);
    if (bytes > g->cfg.memory_bytes) {
        do_release(g, "");
        snprintf(g->why_none, sizeof g->why_none,
                 "no restore point: the rows take %zu bytes, over guard_memory_mb (%zu bytes)",
                 bytes, g->cfg.memory_bytes);
        return false;
    }
    do_release(g, "");
    for (int t = 0; t < HR_TABLE_COUNT; t++) {
        uint32_t n = hr_model_rows(g->model, (hr_table_id)t);
        g->rows[t] = malloc((size_t)n * L->floats * sizeof(float) + 1);
        if (!g->rows[t]) {
            do_release(g, "no restore point: out of memory copying the rows");
            return false;
        }
        for (uint32_t r = 0; r < n; r++)
            hr_sgd_row_read(L, hr_model_row(g->model, (hr_table_id)t, r),
                            g->rows[t] + (size_t)r * L->floats);
        g->nrows[t] = n;
    }
    g->row_bytes = bytes;
    g->updates_at = hr_trainer_updates(g->trainer);
    g->held = true;
    g->why_none[0] = '\0';
    atomic_store_explicit(&g->recording, true, memory_order_release);
    return true;
}

static int by_seq(const void *a, const void *b)
{
    uint64_t x = ((const hr_event *)a)->seq, y = ((const hr_event *)b)->seq;
    return x < y ? -1 : x > y;
}

/* The undo: trainers paused by the caller, restore point held. */
static hr_status do_revert(hr_guard *g, const char *note, json_t **info, hr_error *err)
{
    const hr_row_layout *L = hr_model_layout(g->model);
    atomic_store_explicit(&g->recording, false, memory_order_release);
    pthread_mutex_lock(&g->tap_mu);
    hr_event *evs = g->evs;
    size_t nev = g->nev;
    g->evs = NULL;
    g->nev = g->cap = 0;
    pthread_mutex_unlock(&g->tap_mu);
    /* the rows: the copy, and rows handed out since as new */
    for (int t = 0; t < HR_TABLE_COUNT; t++) {
        uint32_t now = hr_model_rows(g->model, (hr_table_id)t);
        for (uint32_t r = 0; r < now; r++) {
            if (r < g->nrows[t]) {
                hr_sgd_row_write(L, hr_model_row(g->model, (hr_table_id)t, r),
                                 g->rows[t] + (size_t)r * L->floats);
                hr_model_mark_dirty(g->model, (hr_table_id)t, r);
            } else {
                hr_model_reset_row(g->model, (hr_table_id)t, r);
            }
        }
    }
    hr_trainer_set_updates(g->trainer, g->updates_at);
    uint64_t version = 0;
    hr_status st = hr_schedbox_swap_note(g->box, &g->prev, g->updates_at, g->loss_before, note,
                                         &version, err);
    if (st != HR_OK) { /* cannot happen: prev was valid when installed */
        free(evs);
        do_release(g, "no restore point: the undo failed");
        return st;
    }
    if (nev) {
        qsort(evs, nev, sizeof *evs, by_seq); /* batches were tapped as they finished */
        hr_trainer_replay_paused(g->trainer, evs, nev);
    }
    free(evs);
    g->reverts++;
    json_t *j = json_pack("{s:I, s:I, s:I, s:s}", "undone_version", (json_int_t)g->version,
                          "version", (json_int_t)version, "replayed", (json_int_t)nev, "note",
                          note);
    do_release(g, "no restore point: the last change was undone");
    if (info)
        *info = j ? json_deep_copy(j) : NULL;
    json_decref(g->last_revert);
    g->last_revert = j;
    hr_log("warn", "schedule change undone", j ? json_deep_copy(j) : NULL);
    return HR_OK;
}

/* ---- the watch ---- */

/* One look, under mu: a window passed? over? revert or keep. */
/* Frees a restore point whose record overflowed; returns whether it did. */
static bool do_check_overflow(hr_guard *g)
{
    pthread_mutex_lock(&g->tap_mu);
    bool overflow = g->overflow;
    pthread_mutex_unlock(&g->tap_mu);
    if (!overflow)
        return false;
    do_release(g, "no restore point: the events since the change outgrew guard_memory_mb");
    hr_log("warn", "restore point freed",
           json_pack("{s:s}", "why", "events since the change outgrew guard_memory_mb"));
    return true;
}

static void do_watch(hr_guard *g)
{
    if (!g->held || do_check_overflow(g) || !g->cfg.watch_on)
        return;
    hr_trainer_counts c;
    hr_trainer_get_counts(g->trainer, &c);
    uint64_t since = c.trained - g->trained_at;
    if (since < (uint64_t)(g->windows_seen + 1) * g->cfg.window)
        return;
    g->windows_seen = (unsigned)(since / g->cfg.window);
    hr_progress_report rep;
    hr_progress_get(g->progress, (size_t)g->cfg.window, &rep);
    uint64_t steps = c.updates - g->steps_prev, skipped = c.skipped_nonfinite - g->skipped_prev;
    g->steps_prev = c.updates;
    g->skipped_prev = c.skipped_nonfinite;
    double nf = steps ? (double)skipped / (double)steps : 0;
    g->last_loss = rep.loss;
    bool over = nf > g->cfg.nonfinite ||
                (isfinite(g->loss_before) &&
                 (!isfinite(rep.loss) || rep.loss > g->loss_before * (1 + g->cfg.margin)));
    g->over_streak = over ? g->over_streak + 1 : 0;
    if (g->over_streak >= g->cfg.windows) {
        char note[256];
        snprintf(note, sizeof note,
                 "reverted by guard: loss %.6g > %.6g x (1 + %g) (before %.6g) or non-finite "
                 "steps %.4g > %g, %u windows in a row of %llu events, %u windows after version %llu",
                 rep.loss, g->loss_before, g->cfg.margin, g->loss_before, nf, g->cfg.nonfinite,
                 g->over_streak, (unsigned long long)g->cfg.window, g->windows_seen,
                 (unsigned long long)g->version);
        unsigned seen = g->windows_seen, streak = g->over_streak;
        double before = g->loss_before;
        hr_error err = {{0}, {0}};
        hr_trainer_pause(g->trainer);
        json_t *info = NULL;
        if (do_revert(g, note, &info, &err) == HR_OK && g->last_revert) {
            json_object_set_new(g->last_revert, "by", json_string("guard"));
            json_object_set_new(g->last_revert, "loss", json_real(rep.loss));
            json_object_set_new(g->last_revert, "loss_before", json_real(before));
            json_object_set_new(g->last_revert, "nonfinite_share", json_real(nf));
            json_object_set_new(g->last_revert, "windows_over", json_integer(streak));
            json_object_set_new(g->last_revert, "windows_seen", json_integer(seen));
        }
        json_decref(info);
        hr_trainer_resume(g->trainer);
        return;
    }
    if (g->windows_seen >= g->cfg.watch && g->over_streak == 0) {
        char why[160];
        snprintf(why, sizeof why, "no restore point: version %llu was kept after %u windows",
                 (unsigned long long)g->version, g->windows_seen);
        do_release(g, why);
    }
}

static void *watch_main(void *arg)
{
    hr_guard *g = arg;
    pthread_mutex_lock(&g->stop_mu);
    while (!g->stop) {
        pthread_mutex_unlock(&g->stop_mu);
        pthread_mutex_lock(&g->mu);
        do_watch(g);
        pthread_mutex_unlock(&g->mu);
        pthread_mutex_lock(&g->stop_mu);
        struct timespec ts = hr_deadline_after(WATCH_TICK_MS * 1e-3);
        while (!g->stop && pthread_cond_timedwait(&g->stop_cv, &g->stop_mu, &ts) != ETIMEDOUT)
            ;
    }
    pthread_mutex_unlock(&g->stop_mu);
    return NULL;
}

/* ---- public ---- */

hr_status hr_guard_create(const hr_guard_config *cfg, hr_model *model, hr_trainer *trainer,
                          hr_schedbox *box, hr_progress *progress, hr_guard **out, hr_error *err)
{
    *out = NULL;
    if (cfg->window < 1 || cfg->windows < 1 || cfg->watch < 1)
        return hr_error_set(err, HR_EINVAL, "guard", "guard windows must be >= 1");
    hr_guard *g = calloc(1, sizeof *g);
    if (!g)
        return hr_error_set(err, HR_ENOMEM, NULL, "out of memory");
    g->cfg = *cfg;
    g->model = model;
    g->trainer = trainer;
    g->box = box;
    g->progress = progress;
    pthread_mutex_init(&g->mu, NULL);
    pthread_mutex_init(&g->tap_mu, NULL);
    pthread_mutex_init(&g->stop_mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&g->stop_cv, &ca);
    pthread_condattr_destroy(&ca);
    atomic_init(&g->recording, false);
    snprintf(g->why_none, sizeof g->why_none, "%s",
             cfg->restore_points ? "no restore point: no schedule change yet"
                                 : (cfg->why_off ? cfg->why_off : "no restore points"));
    g->last_loss = NAN;
    g->loss_before = NAN;
    hr_trainer_pause(trainer);
    hr_trainer_set_tap(trainer, tap, g);
    hr_trainer_resume(trainer);
    if (pthread_create(&g->thread, NULL, watch_main, g) != 0) {
        hr_guard_destroy(g);
        return hr_error_set(err, HR_ENOMEM, NULL, "cannot start the guard thread");
    }
    g->started = true;
    *out = g;
    return HR_OK;
}

void hr_guard_destroy(hr_guard *g)
{
    if (!g)
        return;
    if (g->started) {
        pthread_mutex_lock(&g->stop_mu);
        g->stop = true;
        pthread_cond_signal(&g->stop_cv);
        pthread_mutex_unlock(&g->stop_mu);
        pthread_join(g->thread, NULL);
    }
    hr_trainer_pause(g->trainer);
    hr_trainer_set_tap(g->trainer, NULL, NULL);
    hr_trainer_resume(g->trainer);
    do_release(g, "");
    json_decref(g->last_revert);
    pthread_cond_destroy(&g->stop_cv);
    pthread_mutex_destroy(&g->stop_mu);
    pthread_mutex_destroy(&g->tap_mu);
    pthread_mutex_destroy(&g->mu);
    free(g);
}

hr_status hr_guard_apply(hr_guard *g, const hr_schedule *s, uint64_t *version, bool *restore,
                         hr_error *err)
{
    return hr_guard_apply_note(g, s, NULL, version, restore, err);
}

hr_status hr_guard_apply_note(hr_guard *g, const hr_schedule *s, const char *note,
                              uint64_t *version, bool *restore, hr_error *err)
{
    hr_status st = hr_schedule_validate(s, err);
    if (st != HR_OK)
        return st;
    pthread_mutex_lock(&g->mu);
    hr_trainer_pause(g->trainer);
    hr_progress_report rep;
    hr_progress_get(g->progress, (size_t)g->cfg.window, &rep);
    hr_schedule prev = *hr_schedbox_current(g->box);
    bool made = g->cfg.restore_points && do_mark(g);
    if (!g->cfg.restore_points)
        do_release(g, g->cfg.why_off ? g->cfg.why_off : "no restore points");
    uint64_t v = 0;
    st = hr_schedbox_swap_note(g->box, s, hr_trainer_updates(g->trainer), rep.loss, note, &v, err);
    if (st != HR_OK) {
        do_release(g, "no restore point: the last change failed");
        made = false;
    } else if (made) {
        g->prev = prev;
        g->version = v;
        g->loss_before = rep.loss;
        hr_trainer_counts c;
        hr_trainer_get_counts(g->trainer, &c);
        g->trained_at = c.trained;
        g->steps_prev = c.updates;
        g->skipped_prev = c.skipped_nonfinite;
        g->windows_seen = g->over_streak = 0;
        g->last_loss = NAN;
    }
    hr_trainer_resume(g->trainer);
    pthread_mutex_unlock(&g->mu);
    if (version)
        *version = v;
    if (restore)
        *restore = made;
    return st;
}

hr_status hr_guard_undo(hr_guard *g, json_t **info, hr_error *err)
{
    if (info)
        *info = NULL;
    pthread_mutex_lock(&g->mu);
    if (g->held)
        do_check_overflow(g);
    if (!g->held) {
        hr_status st = hr_error_set(err, HR_ENOTFOUND, NULL, "nothing to undo: %s", g->why_none);
        pthread_mutex_unlock(&g->mu);
        return st;
    }
    char note[256];
    snprintf(note, sizeof note, "undone by hand: version %llu", (unsigned long long)g->version);
    hr_trainer_pause(g->trainer);
    hr_status st = do_revert(g, note, info, err);
    if (st == HR_OK && g->last_revert)
        json_object_set_new(g->last_revert, "by", json_string("hand"));
    hr_trainer_resume(g->trainer);
    pthread_mutex_unlock(&g->mu);
    return st;
}

json_t *hr_guard_status(hr_guard *g)
{
    pthread_mutex_lock(&g->mu);
    pthread_mutex_lock(&g->tap_mu);
    size_t nev = g->nev;
    pthread_mutex_unlock(&g->tap_mu);
    json_t *j = json_pack(
        "{s:b, s:f, s:I, s:I, s:f, s:I, s:I, s:b, s:I, s:I, s:I, s:I, s:o, s:o, s:I}", "watch",
        g->cfg.watch_on, "margin", g->cfg.margin, "windows", (json_int_t)g->cfg.windows,
        "watch_windows", (json_int_t)g->cfg.watch, "nonfinite", g->cfg.nonfinite,
        "window_events", (json_int_t)g->cfg.window, "memory_bytes",
        (json_int_t)g->cfg.memory_bytes, "restore_point", g->held, "version",
        (json_int_t)(g->held ? g->version : 0), "bytes",
        (json_int_t)(g->held ? g->row_bytes + nev * sizeof(hr_event) : 0), "events_since",
        (json_int_t)(g->held ? nev : 0), "windows_seen", (json_int_t)g->windows_seen,
        "last_revert", g->last_revert ? json_deep_copy(g->last_revert) : json_null(),
        "loss_before", isfinite(g->loss_before) ? json_real(g->loss_before) : json_null(),
        "reverts", (json_int_t)g->reverts);
    if (j && !g->held)
        json_object_set_new(j, "why_none", json_string(g->why_none));
    pthread_mutex_unlock(&g->mu);
    return j;
}

uint64_t hr_guard_reverts(hr_guard *g)
{
    pthread_mutex_lock(&g->mu);
    uint64_t n = g->reverts;
    pthread_mutex_unlock(&g->mu);
    return n;
}

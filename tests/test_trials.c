/* ctest-labels: concurrent */
/*
 * test_trials.c - counterfactual trials through a real app with a database
 * (trainer threads, ingest, the event log, checkpoints): on a planted world
 * whose best constant SGD rate is known, a trial ranks a too-small, a good
 * and a too-large eta0 in that order; its baseline's loss over the window
 * equals a fresh replay of the same events (a new app without a database
 * fed the same stream) within TOLERANCE; a window the log and checkpoints
 * cannot rebuild is refused and says what is available, and the retention
 * setting keeps it; no database, over the memory limit, bad candidates are
 * refused; a cancelled trial stops and cannot be applied; an applied winner
 * shows in the schedule history with the trial's id.
 */
#include "testutil.h"

#include <math.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "hogrec/api.h"
#include "hogrec/app.h"
#include "hogrec/catalog.h"
#include "hogrec/persist.h"
#include "hogrec/trials.h"

/* The baseline's window loss against a fresh replay's: both train the same
 * events in the same order from the same initial rows under the same
 * constant rate on one thread, so only float summation order could differ. */
#define TOLERANCE 1e-4

#define BASE_SCHEDULE "{\"optimizer\":\"sgd\",\"type\":\"constant\",\"eta0\":0.05}"
#define SMALL "{\"optimizer\":\"sgd\",\"type\":\"constant\",\"eta0\":0.003}"
#define GOOD "{\"optimizer\":\"sgd\",\"type\":\"constant\",\"eta0\":0.1}"
#define LARGE "{\"optimizer\":\"sgd\",\"type\":\"constant\",\"eta0\":10}"

static char dir[512];

static hr_app *open_app(const char *db, const char *const *kv)
{
    hr_config c;
    tu_small_config(&c, db);
    hr_error err;
    const char *base[] = {"schedule", BASE_SCHEDULE, "batch", "64", "progress_window", "10000",
                          "trial_cpu_share", "1", "trial_curve_events", "1000",
                          "durability", "sync", NULL};
    for (size_t i = 0; base[i]; i += 2)
        if (hr_config_set(&c, base[i], base[i + 1], &err) != HR_OK)
            fail_msg("%s: %s", base[i], err.message);
    for (size_t i = 0; kv && kv[i]; i += 2)
        if (hr_config_set(&c, kv[i], kv[i + 1], &err) != HR_OK)
            fail_msg("%s: %s", kv[i], err.message);
    hr_app *app = NULL;
    if (hr_app_open(&c, &app, &err) != HR_OK)
        fail_msg("hr_app_open: %s", err.message);
    hr_config_free(&c);
    assert_non_null(app->trials);
    return app;
}

static const char *db_path(const char *name)
{
    static char p[600];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return p;
}

/* ---- the planted world ---- */

#define PU 50
#define PI 40
#define PK 4

typedef struct {
    double u[PU][PK], i[PI][PK], ib[PI];
} planted;

/* One event of the stream: ids and label. */
typedef struct {
    unsigned u, i;
    int label;
} pev;

static void planted_stream(pev *out, size_t n, uint64_t seed)
{
    static planted w;
    hr_rng rng;
    hr_rng_seed(&rng, seed);
    for (int u = 0; u < PU; u++)
        for (int d = 0; d < PK; d++)
            w.u[u][d] = hr_rng_normal(&rng);
    for (int i = 0; i < PI; i++) {
        for (int d = 0; d < PK; d++)
            w.i[i][d] = hr_rng_normal(&rng);
        w.ib[i] = 0.5 * hr_rng_normal(&rng);
    }
    for (size_t e = 0; e < n; e++) {
        unsigned u = (unsigned)hr_rng_below(&rng, PU), i = (unsigned)hr_rng_below(&rng, PI);
        double dot = 0;
        for (int d = 0; d < PK; d++)
            dot += w.u[u][d] * w.i[i][d];
        double p = 1 / (1 + exp(-(3.0 * dot / sqrt(PK) + w.ib[i])));
        out[e] = (pev){u, i, hr_rng_uniform(&rng) < p};
    }
}

/* Submits the stream (logged, as POST /v1/events would) and waits until
 * the trainers applied it. */
static void submit(hr_app *app, const pev *s, size_t n)
{
    enum { B = 256 };
    hr_event evs[B];
    char text[B][96];
    const char *json[B];
    size_t len[B];
    for (size_t i = 0; i < n; i += B) {
        size_t m = n - i < B ? n - i : B;
        for (size_t j = 0; j < m; j++) {
            const pev *p = &s[i + j];
            len[j] = (size_t)snprintf(text[j], sizeof text[j],
                                      "{\"user\":\"u%u\",\"item\":\"i%u\",\"label\":%d}", p->u,
                                      p->i, p->label);
            json[j] = text[j];
            json_error_t jerr;
            json_t *obj = json_loads(text[j], 0, &jerr);
            hr_error err;
            assert_int_equal(hr_api_event_from_json(app->model, obj, &evs[j], NULL, &err), HR_OK);
            json_decref(obj);
        }
        uint64_t seq;
        hr_error err;
        assert_int_equal(hr_ingest_submit(app->ingest, evs, json, len, m, true, &seq, &err), HR_OK);
    }
    hr_trainer_wait_idle(app->trainer);
}

static json_t *body_of(const char *window, const char *const *cands, size_t n)
{
    char text[2048];
    size_t len = (size_t)snprintf(text, sizeof text, "{\"window\":%s,\"candidates\":[", window);
    for (size_t i = 0; i < n; i++)
        len += (size_t)snprintf(text + len, sizeof text - len, "%s%s", i ? "," : "", cands[i]);
    snprintf(text + len, sizeof text - len, "]}");
    json_error_t jerr;
    json_t *j = json_loads(text, 0, &jerr);
    if (!j)
        fail_msg("%s: %s", text, jerr.text);
    return j;
}

/* Starts a trial; returns its id (static buffer). */
static const char *start(hr_app *app, const char *window, const char *const *cands, size_t n)
{
    static char id[16];
    json_t *body = body_of(window, cands, n), *out = NULL;
    const char *code = NULL;
    hr_error err;
    hr_status st = hr_trials_start(app->trials, body, &out, &code, &err);
    json_decref(body);
    if (st != HR_OK)
        fail_msg("trial refused: %s: %s", code, err.message);
    snprintf(id, sizeof id, "%s", json_string_value(json_object_get(out, "id")));
    json_decref(out);
    return id;
}

/* Starts a trial expected to be refused; returns the status, *code set. */
static hr_status refused(hr_app *app, const char *window, const char *const *cands, size_t n,
                         const char **code, hr_error *err)
{
    json_t *body = body_of(window, cands, n), *out = NULL;
    hr_status st = hr_trials_start(app->trials, body, &out, code, err);
    json_decref(body);
    assert_null(out);
    assert_int_not_equal(st, HR_OK);
    return st;
}

/* Polls the trial until it is no longer running (bounded); a new object. */
static json_t *wait_trial(hr_app *app, const char *id)
{
    for (int i = 0; i < 60000; i++) {
        json_t *j = hr_trials_get(app->trials, id);
        assert_non_null(j);
        if (strcmp(json_string_value(json_object_get(j, "status")), "running") != 0)
            return j;
        json_decref(j);
        usleep(10000);
    }
    fail_msg("trial %s still running after 600 s", id);
    return NULL;
}

static double cand_loss(json_t *t, int index)
{
    json_t *c = json_array_get(json_object_get(t, "candidates"), (size_t)index - 1);
    return json_real_value(json_object_get(c, "loss"));
}

/* ---- tests ---- */

/* The ranking, the baseline against a fresh replay, and apply. */
static void test_ranks_rates_and_baseline_matches_fresh_replay(void **state)
{
    (void)state;
    const size_t n = 20000, window = 10000;
    pev *s = malloc(n * sizeof *s);
    assert_non_null(s);
    planted_stream(s, n, 7);
    hr_app *app = open_app(db_path("rank.db"), NULL);
    submit(app, s, n);
    const char *cands[] = {SMALL, GOOD, LARGE};
    char id[16];
    snprintf(id, sizeof id, "%s", start(app, "{\"events\":10000}", cands, 3));
    json_t *t = wait_trial(app, id);
    char *dump = json_dumps(json_object_get(t, "ranking"), JSON_COMPACT);
    print_message("trial %s ranking %s\n", id, dump);
    free(dump);
    assert_string_equal(json_string_value(json_object_get(t, "status")), "done");
    json_t *prog = json_object_get(t, "progress");
    assert_int_equal(json_integer_value(json_object_get(prog, "events_done")),
                     json_integer_value(json_object_get(prog, "events_total")));
    assert_int_equal(json_integer_value(json_object_get(t, "warmup_events")), n - window);
    double small = cand_loss(t, 1), good = cand_loss(t, 2), large = cand_loss(t, 3);
    assert_true(good < small);
    assert_true(small < large);
    assert_int_equal(json_integer_value(json_object_get(t, "winner")), 2);
    json_t *ranking = json_object_get(t, "ranking");
    assert_int_equal(json_integer_value(json_object_get(json_array_get(ranking, 0), "index")), 2);
    /* the curve: one point per 1000 window events */
    json_t *c2 = json_array_get(json_object_get(t, "candidates"), 1);
    assert_int_equal(json_array_size(json_object_get(c2, "curve")), window / 1000);
    assert_true(json_real_value(json_object_get(c2, "auc")) > 0.6);

    /* a fresh replay of the same events under the baseline schedule */
    double baseline = json_real_value(
        json_object_get(json_object_get(t, "baseline"), "loss"));
    hr_app *fresh = open_app("", NULL);
    submit(fresh, s, n);
    hr_progress_report rep;
    hr_progress_get(fresh->progress, window, &rep);
    print_message("baseline loss %.9f, fresh replay %.9f (diff %.3g)\n", baseline, rep.loss,
                  fabs(baseline - rep.loss));
    assert_true(fabs(baseline - rep.loss) <= TOLERANCE);
    hr_app_close(fresh, true);

    /* apply: the winner through the guard, in the history with the trial id */
    json_t *out = NULL;
    const char *code = NULL;
    hr_error err;
    assert_int_equal(hr_trials_apply(app->trials, id, &out, &code, &err), HR_OK);
    json_decref(out);
    assert_true(fabs(hr_schedbox_current(app->sched)->eta0 - 0.1) < 1e-12);
    size_t nh = hr_schedbox_history(app->sched, NULL, 0);
    hr_sched_change *h = calloc(nh, sizeof *h);
    assert_non_null(h);
    size_t got = hr_schedbox_history(app->sched, h, nh);
    char want[32];
    snprintf(want, sizeof want, "trial %s", id);
    assert_non_null(strstr(h[(got < nh ? got : nh) - 1].note, want));
    free(h);
    assert_int_equal(hr_trials_apply(app->trials, id, &out, &code, &err), HR_EBUSY);
    assert_string_equal(code, "already_applied");
    json_t *again = hr_trials_get(app->trials, id);
    assert_true(json_integer_value(json_object_get(again, "applied_version")) > 1);
    json_decref(again);
    json_decref(t);
    hr_app_close(app, true);
    free(s);
}

/* Takes a checkpoint, then submits `more` events (their commit carries the
 * trim the checkpoint asked for). */
static void checkpoint_then(hr_app *app, const pev *s, size_t more)
{
    hr_error err;
    assert_int_equal(hr_persist_checkpoint(app->persist, NULL, &err), HR_OK);
    submit(app, s, more);
}

/* Retention: without it, a window reaching before the newest checkpoint is
 * refused, saying what is available; with it, the same window replays from
 * the older checkpoint (a warm-up of the events between). */
static void test_window_retention(void **state)
{
    (void)state;
    const size_t n = 11000;
    pev *s = malloc(n * sizeof *s);
    assert_non_null(s);
    planted_stream(s, n, 11);
    const char *cands[] = {GOOD};
    for (int retain = 0; retain < 2; retain++) {
        const char *kv[] = {"trial_retain_events", retain ? "100000" : "0", NULL};
        hr_app *app = open_app(db_path(retain ? "keep.db" : "nokeep.db"), kv);
        submit(app, s, 5000);
        checkpoint_then(app, s + 5000, 5000);
        checkpoint_then(app, s + 10000, 1000);
        hr_error err;
        const char *code = NULL;
        if (!retain) {
            assert_int_equal(refused(app, "{\"events\":3000}", cands, 1, &code, &err),
                             HR_ENOTFOUND);
            assert_string_equal(code, "window_not_retained");
            print_message("409: %s\n", err.message);
            assert_non_null(strstr(err.message, "the last 1000 events"));
            /* within what is kept: from the newest checkpoint, no warm-up */
            json_t *t = wait_trial(app, start(app, "{\"events\":1000}", cands, 1));
            assert_string_equal(json_string_value(json_object_get(t, "status")), "done");
            assert_int_equal(json_integer_value(json_object_get(t, "warmup_events")), 0);
            json_decref(t);
        } else {
            json_t *t = wait_trial(app, start(app, "{\"events\":3000}", cands, 1));
            assert_string_equal(json_string_value(json_object_get(t, "status")), "done");
            json_t *st = json_object_get(t, "start");
            assert_int_equal(json_integer_value(json_object_get(st, "seq")), 5000);
            assert_int_equal(json_integer_value(json_object_get(t, "warmup_events")), 3000);
            json_decref(t);
            /* all 11000 events are within the 100000 retained, and the log
             * was never trimmed: "since" a time before everything replays
             * the whole log from the initial model (before, the log was
             * trimmed to the oldest checkpoint: a 409) */
            t = wait_trial(app, start(app, "{\"since\":1}", cands, 1));
            assert_string_equal(json_string_value(json_object_get(t, "status")), "done");
            assert_int_equal(json_integer_value(json_object_get(json_object_get(t, "start"), "seq")),
                             0);
            json_decref(t);
            /* and a restart (its final checkpoint) keeps them too */
            hr_app_close(app, true);
            app = open_app(db_path("keep.db"), kv);
            t = wait_trial(app, start(app, "{\"events\":11000}", cands, 1));
            assert_string_equal(json_string_value(json_object_get(t, "status")), "done");
            json_decref(t);
        }
        hr_app_close(app, true);
    }
    free(s);
}

/* A catalog of every user and item: a user's group of 3, an item's number
 * (a rank 0-6) and category of 2; written before any event, so the ids are
 * interned in the same order in every app. Their attributes enter every
 * event as FM features, so they change what the model learns. */
static void put_catalog(hr_app *app)
{
    hr_catalog_record recs[PI > PU ? PI : PU];
    hr_error err;
    for (int kind = HR_CATALOG_USER; kind <= HR_CATALOG_ITEM; kind++) {
        int count = kind == HR_CATALOG_USER ? PU : PI;
        for (int i = 0; i < count; i++) {
            char id[16], text[160];
            snprintf(id, sizeof id, "%c%d", kind == HR_CATALOG_USER ? 'u' : 'i', i);
            if (kind == HR_CATALOG_USER)
                snprintf(text, sizeof text, "{\"features\":{\"group\":\"g%d\"}}", i % 3);
            else
                snprintf(text, sizeof text,
                         "{\"features\":{\"rank\":%d},\"categories\":[\"c%d\"]}", i % 7,
                         i % 2);
            json_error_t jerr;
            json_t *obj = json_loads(text, 0, &jerr);
            assert_non_null(obj);
            assert_int_equal(hr_catalog_parse(obj, id, strlen(id), &recs[i], &err), HR_OK);
            json_decref(obj);
        }
        if (hr_catalog_put(app->catalog, (hr_catalog_kind)kind, recs, (size_t)count, NULL, &err) !=
            HR_OK)
            fail_msg("catalog: %s", err.message);
    }
}

/* The loss over the last `window` events of a fresh replay of s[0..n) by
 * a new app without a database, with or without the catalog. */
static double fresh_loss(const pev *s, size_t n, size_t window, bool catalog)
{
    hr_app *fresh = open_app("", NULL);
    if (catalog)
        put_catalog(fresh);
    submit(fresh, s, n);
    hr_progress_report rep;
    hr_progress_get(fresh->progress, window, &rep);
    hr_app_close(fresh, true);
    return rep.loss;
}

/* With a catalog, the trial's private model has the live model's catalog
 * attributes: its baseline equals a fresh replay by a new app with the same
 * catalog (and not one without it: the attributes matter). */
static void test_baseline_with_catalog_matches_fresh_replay(void **state)
{
    (void)state;
    const size_t n = 20000, window = 10000;
    pev *s = malloc(n * sizeof *s);
    assert_non_null(s);
    planted_stream(s, n, 19);
    hr_app *app = open_app(db_path("catalog.db"), NULL);
    put_catalog(app);
    submit(app, s, n);
    const char *cands[] = {GOOD};
    json_t *t = wait_trial(app, start(app, "{\"events\":10000}", cands, 1));
    assert_string_equal(json_string_value(json_object_get(t, "status")), "done");
    double baseline = json_real_value(json_object_get(json_object_get(t, "baseline"), "loss"));
    json_decref(t);
    hr_app_close(app, true);
    double with = fresh_loss(s, n, window, true), without = fresh_loss(s, n, window, false);
    print_message("baseline loss %.9f, fresh replay with the catalog %.9f (diff %.3g), "
                  "without %.9f\n",
                  baseline, with, fabs(baseline - with), without);
    assert_true(fabs(with - without) > 10 * TOLERANCE);
    assert_true(fabs(baseline - with) <= TOLERANCE);
    free(s);
}

/* What the slice hook saw of the log read (the trial thread writes, the
 * test reads after the trial ended). */
typedef struct {
    double share;
    const char *logpath;    /* the event log's file */
    size_t read_slices, read_rows, train_slices, bad_pause;
    int probes, probes_ok;  /* checkpoints tried and completed during the read */
    char probe_error[200];
} read_watch;

/* A writer's commit on the event log's file, then a TRUNCATE checkpoint of
 * its WAL, on a connection of the test's own (no busy timeout: a lock held
 * is an immediate SQLITE_BUSY, or busy = 1 from the checkpoint). */
static bool probe_log(read_watch *w)
{
    sqlite3 *db = NULL;
    bool ok = false;
    sqlite3_stmt *st = NULL;
    if (sqlite3_open_v2(w->logpath, &db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK ||
        sqlite3_exec(db, "CREATE TABLE IF NOT EXISTS probe (x INTEGER); "
                         "INSERT INTO probe VALUES (1)", NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(db, "PRAGMA wal_checkpoint(TRUNCATE)", -1, &st, NULL) != SQLITE_OK ||
        sqlite3_step(st) != SQLITE_ROW) {
        snprintf(w->probe_error, sizeof w->probe_error, "%s", sqlite3_errmsg(db));
    } else if (sqlite3_column_int(st, 0) != 0) {
        snprintf(w->probe_error, sizeof w->probe_error, "checkpoint busy (%d of %d frames)",
                 sqlite3_column_int(st, 2), sqlite3_column_int(st, 1));
    } else {
        ok = true;
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return ok;
}

static void watch_slice(void *ctx, hr_trials_phase phase, size_t events, double cpu_seconds,
                        double pause_seconds)
{
    read_watch *w = ctx;
    double want = cpu_seconds * (1 - w->share) / w->share;
    if (cpu_seconds < 0 || fabs(pause_seconds - want) > 1e-9 * (1 + want))
        w->bad_pause++;
    if (phase == HR_TRIALS_TRAIN) {
        w->train_slices++;
        return;
    }
    w->read_slices++;
    w->read_rows += events;
    if (w->probes < 4) { /* the first pauses of the read: the log is free */
        w->probes++;
        w->probes_ok += probe_log(w);
    }
}

/* The log read keeps to trial_cpu_share like the replays: it is read in
 * pages, each followed by the same duty-cycle pause (in proportion to the
 * thread's CPU time), and no read transaction is open across a pause: a
 * writer commits and a TRUNCATE checkpoint of the log's WAL completes
 * while the trial is between pages. */
static void test_log_read_is_duty_cycled(void **state)
{
    (void)state;
    const size_t n = 3000, batch = 64;
    pev *s = malloc(n * sizeof *s);
    assert_non_null(s);
    planted_stream(s, n, 17);
    const char *half[] = {"trial_cpu_share", "0.5", NULL};
    char logpath[700];
    snprintf(logpath, sizeof logpath, "%s-events", db_path("duty.db"));
    hr_app *app = open_app(db_path("duty.db"), half);
    submit(app, s, n);
    read_watch w = {.share = 0.5, .logpath = logpath};
    hr_trials_set_slice_hook(app->trials, watch_slice, &w);
    const char *cands[] = {GOOD};
    json_t *t = wait_trial(app, start(app, "{\"events\":1000}", cands, 1));
    assert_string_equal(json_string_value(json_object_get(t, "status")), "done");
    json_decref(t);
    print_message("read: %zu slices, %zu rows; train: %zu slices; checkpoints during the read: "
                  "%d of %d completed %s\n",
                  w.read_slices, w.read_rows, w.train_slices, w.probes_ok, w.probes,
                  w.probe_error);
    /* every row of the log went through the duty cycle, a page of a batch at a time */
    assert_int_equal(w.read_rows, n);
    assert_true(w.read_slices >= n / batch);
    assert_true(w.train_slices >= (n - 1000) / batch + 1000 / batch * 2);
    assert_int_equal(w.bad_pause, 0);
    assert_int_equal(w.probes, 4);
    assert_int_equal(w.probes_ok, 4);
    hr_trials_set_slice_hook(app->trials, NULL, NULL);
    hr_app_close(app, true);
    free(s);
}

/* No database, over the memory limit, bad candidates and windows, one at a
 * time; cancel. */
static void test_refusals_and_cancel(void **state)
{
    (void)state;
    const char *cands[] = {GOOD, SMALL};
    hr_error err;
    const char *code = NULL;
    hr_app *none = open_app("", NULL);
    assert_int_equal(refused(none, "{\"events\":10}", cands, 1, &code, &err), HR_EUNSUPPORTED);
    assert_string_equal(code, "trials_unavailable");
    assert_non_null(strstr(err.message, "without a database"));
    hr_app_close(none, true);

    const size_t n = 20000;
    pev *s = malloc(n * sizeof *s);
    assert_non_null(s);
    planted_stream(s, n, 13);
    const char *small_mem[] = {"trial_memory_mb", "0", NULL};
    hr_app *app = open_app(db_path("refuse.db"), small_mem);
    submit(app, s, 1000);
    assert_int_equal(refused(app, "{\"events\":10}", cands, 1, &code, &err), HR_EFULL);
    assert_string_equal(code, "trial_too_large");
    assert_non_null(strstr(err.message, "trial_memory_mb"));
    hr_app_close(app, true);

    const char *slow[] = {"trial_cpu_share", "0.01", NULL};
    app = open_app(db_path("cancel.db"), slow);
    submit(app, s, n);
    const char *bad[] = {GOOD, "{\"type\":\"constant\",\"eta0\":-1}"};
    assert_int_equal(refused(app, "{\"events\":10}", bad, 2, &code, &err), HR_EINVAL);
    assert_non_null(strstr(err.message, "candidates[1]"));
    assert_int_equal(refused(app, "{\"events\":0}", cands, 1, &code, &err), HR_EINVAL);
    assert_int_equal(refused(app, "{\"events\":1,\"since\":1}", cands, 1, &code, &err), HR_EINVAL);
    char id[16];
    snprintf(id, sizeof id, "%s", start(app, "{\"events\":20000}", cands, 2));
    assert_int_equal(refused(app, "{\"events\":10}", cands, 1, &code, &err), HR_EBUSY);
    assert_string_equal(code, "trial_running");
    assert_int_equal(hr_trials_cancel(app->trials, id, &err), HR_OK);
    json_t *t = wait_trial(app, id);
    assert_string_equal(json_string_value(json_object_get(t, "status")), "cancelled");
    json_t *prog = json_object_get(t, "progress");
    assert_true(json_integer_value(json_object_get(prog, "events_done")) <
                json_integer_value(json_object_get(prog, "events_total")));
    json_decref(t);
    json_t *out = NULL;
    assert_int_equal(hr_trials_apply(app->trials, id, &out, &code, &err), HR_EBUSY);
    assert_string_equal(code, "not_finished");
    assert_int_equal(hr_trials_apply(app->trials, "t999", &out, &code, &err), HR_ENOTFOUND);
    assert_int_equal(hr_trials_cancel(app->trials, "t999", &err), HR_ENOTFOUND);
    assert_null(hr_trials_get(app->trials, "t999"));
    hr_app_close(app, true);
    free(s);
}

int main(void)
{
    snprintf(dir, sizeof dir, "%s", tu_tmpdir());
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ranks_rates_and_baseline_matches_fresh_replay),
        cmocka_unit_test(test_window_retention),
        cmocka_unit_test(test_refusals_and_cancel),
        cmocka_unit_test(test_log_read_is_duty_cycled),
        cmocka_unit_test(test_baseline_with_catalog_matches_fresh_replay),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    tu_rmtree(dir);
    return rc;
}

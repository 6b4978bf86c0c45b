/* ctest-labels: concurrent */
/*
 * test_guard.c - the undo of schedule changes through a real app (trainer
 * threads, queue, ingest): the divergence guard reverts a runaway rate on a
 * planted world within its windows and the AUC comes back; a manual undo
 * leaves the model as if the change had never been made (bit for bit, one
 * trainer thread), and there is nothing to undo (409 in HTTP) before a
 * change, after an undo, and without restore points. Every event is in the
 * model exactly once: the item rows' event counts add up to the events
 * submitted (with one trainer thread: two can lose a count increment to
 * the Hogwild race, which would hide nothing but make the count inexact).
 */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hogrec/app.h"
#include "hogrec/guard.h"
#include "hogrec/sgd.h"

#define WINDOW 2000   /* progress_window: events per guard window */
#define GUARD_WINDOWS 2

/* kv: more options as name, value pairs ending with NULL. */
static hr_app *open_app(int threads, const char *const *kv)
{
    hr_config c;
    hr_config_defaults(&c);
    hr_error err;
    c.db[0] = 0;
    const char *base[] = {"k", "8", "negative_sampling", "off", "context_bits", "8",
                          "chunk_rows", "1024", "queue_capacity", "8192", "batch", "64",
                          "progress_window", "2000", "guard_windows", "2", "guard_watch", "10",
                          "guard_margin", "0.1", NULL};
    for (size_t i = 0; base[i]; i += 2)
        assert_int_equal(hr_config_set(&c, base[i], base[i + 1], &err), HR_OK);
    char buf[16];
    snprintf(buf, sizeof buf, "%d", threads);
    assert_int_equal(hr_config_set(&c, "threads", buf, &err), HR_OK);
    for (size_t i = 0; kv && kv[i]; i += 2)
        if (hr_config_set(&c, kv[i], kv[i + 1], &err) != HR_OK)
            fail_msg("%s: %s", kv[i], err.message);
    hr_app *app = NULL;
    if (hr_app_open(&c, &app, &err) != HR_OK)
        fail_msg("hr_app_open: %s", err.message);
    hr_config_free(&c);
    assert_non_null(app->guard);
    return app;
}

static hr_event event_for(hr_app *app, unsigned user, unsigned item, float label)
{
    char id[32];
    hr_event ev;
    memset(&ev, 0, sizeof ev);
    snprintf(id, sizeof id, "u%u", user);
    assert_int_equal(hr_model_intern(app->model, HR_TABLE_USER, id, strlen(id), &ev.user, NULL), HR_OK);
    snprintf(id, sizeof id, "i%u", item);
    assert_int_equal(hr_model_intern(app->model, HR_TABLE_ITEM, id, strlen(id), &ev.item, NULL), HR_OK);
    ev.label = label;
    ev.weight = 1;
    ev.flags = HR_EV_EXPLICIT_LABEL;
    return ev;
}

static void submit(hr_app *app, hr_event *evs, size_t n)
{
    hr_error err;
    uint64_t seq;
    for (size_t i = 0; i < n; i += 512) {
        size_t m = n - i < 512 ? n - i : 512;
        assert_int_equal(hr_ingest_submit(app->ingest, evs + i, NULL, NULL, m, true, &seq, &err), HR_OK);
    }
    hr_trainer_wait_idle(app->trainer);
}

/* Events in the model: the sum of the item rows' event counts. */
static uint64_t events_counted(hr_app *app)
{
    const hr_row_layout *L = hr_model_layout(app->model);
    uint64_t n = 0;
    for (uint32_t r = 0; r < hr_model_rows(app->model, HR_TABLE_ITEM); r++)
        n += hr_sgd_row_count(L, hr_model_row(app->model, HR_TABLE_ITEM, r));
    return n;
}

static hr_schedule parse_schedule(const char *text)
{
    json_error_t jerr;
    json_t *j = json_loads(text, 0, &jerr);
    assert_non_null(j);
    hr_schedule s;
    hr_error err;
    assert_int_equal(hr_schedule_from_json(j, &s, &err), HR_OK);
    json_decref(j);
    return s;
}

static json_int_t status_int(hr_app *app, const char *key)
{
    json_t *st = hr_guard_status(app->guard);
    json_int_t v = json_integer_value(json_object_get(st, key));
    json_decref(st);
    return v;
}

/* The note of the newest history entry (static buffer). */
static const char *last_note(hr_app *app)
{
    static char note[256];
    size_t n = hr_schedbox_history(app->sched, NULL, 0);
    hr_sched_change *h = calloc(n, sizeof *h);
    assert_non_null(h);
    size_t m = hr_schedbox_history(app->sched, h, n);
    snprintf(note, sizeof note, "%s", h[(m < n ? m : n) - 1].note);
    free(h);
    return note;
}

/* ---- the planted world (testutil's, as test_trainer's) ---- */

static double truth_p(const tu_planted *w, unsigned u, unsigned i)
{
    return 1 / (1 + exp(-tu_planted_logit(w, u, i)));
}

static void planted_events(hr_app *app, const tu_planted *w, hr_rng *rng, hr_event *out, size_t n,
                           float *labels)
{
    for (size_t e = 0; e < n; e++) {
        unsigned u = (unsigned)hr_rng_below(rng, TU_PU), i = (unsigned)hr_rng_below(rng, TU_PI);
        float label = hr_rng_uniform(rng) < truth_p(w, u, i) ? 1.0f : 0.0f;
        out[e] = event_for(app, u, i, label);
        if (labels)
            labels[e] = label;
    }
}

static double model_auc(hr_app *app, const hr_event *test, const float *labels, size_t n)
{
    float *pred = malloc(n * sizeof *pred);
    assert_non_null(pred);
    for (size_t e = 0; e < n; e++)
        pred[e] = (float)hr_model_predict(app->model, &test[e]);
    double auc = hr_auc(pred, labels, n);
    free(pred);
    return auc;
}

/* Converge, apply eta0 = 50 (every multiplier 1), feed a window at a
 * time: the guard reverts after GUARD_WINDOWS windows over the margin, the
 * AUC comes back to 0.99 of what it was, and every event is counted once (one trainer thread, see above;
 * the guard's watch and undo run beside it on threads of their own). */
static void test_guard_reverts_runaway_rate(void **state)
{
    (void)state;
    static tu_planted w;
    hr_rng rng;
    hr_rng_seed(&rng, 2024);
    tu_planted_make(&w, &rng);
    hr_app *app = open_app(1, NULL);
    const size_t ntrain = 60000, ntest = 20000;
    hr_event *train = malloc(ntrain * sizeof *train), *test = malloc(ntest * sizeof *test);
    float *labels = malloc(ntest * sizeof *labels);
    hr_event *win = malloc(WINDOW * sizeof *win);
    assert_true(train && test && labels && win);
    planted_events(app, &w, &rng, train, ntrain, NULL);
    planted_events(app, &w, &rng, test, ntest, labels);
    submit(app, train, ntrain);
    uint64_t submitted = ntrain;
    double auc_before = model_auc(app, test, labels, ntest);
    const hr_schedule before = *hr_schedbox_current(app->sched);

    hr_schedule bad = parse_schedule(
        "{\"optimizer\":\"adagrad\",\"type\":\"constant\",\"eta0\":50,"
        "\"multipliers\":{\"global\":1,\"bias\":1,\"user\":1,\"item\":1,\"context\":1}}");
    bool restore = false;
    hr_error err;
    assert_int_equal(hr_guard_apply(app->guard, &bad, NULL, &restore, &err), HR_OK);
    assert_true(restore);
    assert_true(hr_schedbox_current(app->sched)->eta0 == 50);

    int reverted_at = 0;
    double auc_diverged = NAN;
    for (int win_i = 1; win_i <= 10 && !reverted_at; win_i++) {
        planted_events(app, &w, &rng, win, WINDOW, NULL);
        submit(app, win, WINDOW);
        submitted += WINDOW;
        if (win_i == 1)
            auc_diverged = model_auc(app, test, labels, ntest);
        /* the watch thread looks every 10 ms: wait until it saw this window */
        struct timespec t0;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (;;) {
            if (hr_guard_reverts(app->guard) > 0) {
                reverted_at = win_i;
                break;
            }
            if (status_int(app, "windows_seen") >= win_i)
                break;
            struct timespec now;
            clock_gettime(CLOCK_MONOTONIC, &now);
            if (now.tv_sec - t0.tv_sec > 60)
                fail_msg("the guard did not look at window %d within 60 s", win_i);
            struct timespec ms = {0, 2000000};
            nanosleep(&ms, NULL);
        }
    }
    print_message("guard: AUC before %.4f, one window after the change %.4f, reverted after "
                  "window %d\n", auc_before, auc_diverged, reverted_at);
    assert_int_equal(reverted_at, GUARD_WINDOWS);
    hr_trainer_wait_idle(app->trainer);
    double auc_after = model_auc(app, test, labels, ntest);
    print_message("guard: AUC after the revert %.4f (%.4f of before)\n", auc_after,
                  auc_after / auc_before);
    assert_true(auc_diverged < auc_before - 0.01); /* the change did hurt */
    assert_true(auc_after >= 0.99 * auc_before);
    assert_int_equal(events_counted(app), submitted);
    /* the previous schedule is back, as a new version with the numbers */
    const hr_schedule *cur = hr_schedbox_current(app->sched);
    assert_true(cur->eta0 == before.eta0 && cur->optimizer == before.optimizer &&
                cur->multiplier[HR_GROUP_ITEM] == before.multiplier[HR_GROUP_ITEM]);
    assert_int_equal(cur->version, 3);
    assert_non_null(strstr(last_note(app), "reverted by guard: loss "));
    json_t *st = hr_guard_status(app->guard);
    json_t *lr = json_object_get(st, "last_revert");
    assert_string_equal(json_string_value(json_object_get(lr, "by")), "guard");
    print_message("guard: revert at loss %.4f against %.4f before, %lld events replayed\n",
                  json_real_value(json_object_get(lr, "loss")),
                  json_real_value(json_object_get(lr, "loss_before")),
                  (long long)json_integer_value(json_object_get(lr, "replayed")));
    assert_int_equal(json_integer_value(json_object_get(lr, "windows_over")), GUARD_WINDOWS);
    assert_true(json_real_value(json_object_get(lr, "loss")) >
                json_real_value(json_object_get(lr, "loss_before")) * 1.1);
    assert_true(json_is_false(json_object_get(st, "restore_point")));
    json_decref(st);
    /* and training goes on, every event once */
    planted_events(app, &w, &rng, win, WINDOW, NULL);
    submit(app, win, WINDOW);
    submitted += WINDOW;
    assert_int_equal(events_counted(app), submitted);
    hr_app_close(app, true);
    free(train);
    free(test);
    free(labels);
    free(win);
}

/* Packed rows of every table, last_seen cleared (a wall-clock second). */
static float *rows_copy(hr_app *app, size_t *n)
{
    const hr_row_layout *L = hr_model_layout(app->model);
    size_t total = 0;
    for (int t = 0; t < HR_TABLE_COUNT; t++)
        total += hr_model_rows(app->model, (hr_table_id)t);
    float *out = calloc(total * L->floats, sizeof(float));
    assert_non_null(out);
    size_t at = 0;
    for (int t = 0; t < HR_TABLE_COUNT; t++)
        for (uint32_t r = 0; r < hr_model_rows(app->model, (hr_table_id)t); r++, at++) {
            hr_sgd_row_read(L, hr_model_row(app->model, (hr_table_id)t, r), out + at * L->floats);
            out[at * L->floats + L->last_seen] = 0;
        }
    *n = total * L->floats;
    return out;
}

/* One trainer thread (a deterministic order): A trains events E0; B applied,
 * trains E1 (new ids among them), undone by hand. The model equals that of
 * an app that trained E0 then E1 under the original schedule only, bit for
 * bit; a second undo, and one before any change, find nothing. */
static void test_manual_undo_is_exact(void **state)
{
    (void)state;
    const char *const kv[] = {"guard", "0", NULL}; /* the watch off: undo by hand only */
    hr_app *a = open_app(1, kv), *b = open_app(1, kv);
    hr_error err;
    assert_int_equal(hr_guard_undo(a->guard, NULL, &err), HR_ENOTFOUND);
    assert_non_null(strstr(err.message, "no schedule change yet"));

    static tu_planted w;
    hr_rng rng;
    hr_rng_seed(&rng, 77);
    tu_planted_make(&w, &rng);
    const size_t n0 = 5000, n1 = 3000;
    hr_event *e0 = malloc(n0 * sizeof *e0), *e1 = malloc(n1 * sizeof *e1);
    hr_event *f0 = malloc(n0 * sizeof *f0), *f1 = malloc(n1 * sizeof *f1);
    assert_true(e0 && e1 && f0 && f1);
    hr_rng r2 = rng;
    planted_events(a, &w, &rng, e0, n0, NULL);
    planted_events(b, &w, &r2, f0, n0, NULL);
    submit(a, e0, n0);
    submit(b, f0, n0);

    hr_schedule s = parse_schedule("{\"optimizer\":\"sgd\",\"type\":\"constant\",\"eta0\":1}");
    bool restore = false;
    assert_int_equal(hr_guard_apply(a->guard, &s, NULL, &restore, &err), HR_OK);
    assert_true(restore);
    /* E1 brings new users (rows handed out after the restore point) */
    hr_rng r3 = rng;
    for (size_t i = 0; i < n1; i++) {
        unsigned u = (unsigned)hr_rng_below(&rng, TU_PU + 50), it = (unsigned)hr_rng_below(&rng, TU_PI);
        unsigned u2 = (unsigned)hr_rng_below(&r3, TU_PU + 50), it2 = (unsigned)hr_rng_below(&r3, TU_PI);
        float l = (float)(i % 3 == 0);
        e1[i] = event_for(a, u, it, l);
        f1[i] = event_for(b, u2, it2, l);
    }
    submit(a, e1, n1);
    json_t *info = NULL;
    assert_int_equal(hr_guard_undo(a->guard, &info, &err), HR_OK);
    assert_int_equal(json_integer_value(json_object_get(info, "replayed")), n1);
    assert_int_equal(json_integer_value(json_object_get(info, "undone_version")), 2);
    json_decref(info);
    assert_non_null(strstr(last_note(a), "undone by hand"));
    assert_int_equal(hr_schedbox_current(a->sched)->optimizer, HR_OPT_ADAGRAD);
    submit(b, f1, n1);

    size_t na, nb;
    float *ra = rows_copy(a, &na), *rb = rows_copy(b, &nb);
    assert_int_equal(na, nb);
    assert_memory_equal(ra, rb, na * sizeof(float));
    assert_int_equal(events_counted(a), n0 + n1);
    assert_int_equal(hr_trainer_updates(a->trainer), hr_trainer_updates(b->trainer));

    assert_int_equal(hr_guard_undo(a->guard, NULL, &err), HR_ENOTFOUND);
    assert_non_null(strstr(err.message, "undone"));
    free(ra);
    free(rb);
    free(e0);
    free(e1);
    free(f0);
    free(f1);
    hr_app_close(a, true);
    hr_app_close(b, true);
}

/* A restore point that would not fit guard_memory_mb is not made: the
 * change applies, undo says why. */
static void test_no_restore_point_over_the_memory_limit(void **state)
{
    (void)state;
    const char *const kv[] = {"guard_memory_mb", "0", NULL};
    hr_app *app = open_app(1, kv);
    hr_schedule s = parse_schedule("{\"optimizer\":\"sgd\",\"type\":\"constant\",\"eta0\":0.5}");
    bool restore = true;
    hr_error err;
    assert_int_equal(hr_guard_apply(app->guard, &s, NULL, &restore, &err), HR_OK);
    assert_false(restore);
    assert_true(hr_schedbox_current(app->sched)->eta0 == 0.5);
    assert_int_equal(hr_guard_undo(app->guard, NULL, &err), HR_ENOTFOUND);
    assert_non_null(strstr(err.message, "guard_memory_mb"));
    hr_app_close(app, true);
}

/* An undo right after the change: nothing to replay, the rows as they were. */
static void test_undo_with_no_event_since(void **state)
{
    (void)state;
    const char *const kv[] = {"guard", "0", NULL};
    hr_app *app = open_app(1, kv);
    hr_event ev = event_for(app, 1, 2, 1.0f);
    submit(app, &ev, 1);
    size_t n0, n1;
    float *before = rows_copy(app, &n0);
    hr_schedule s = parse_schedule("{\"optimizer\":\"sgd\",\"type\":\"constant\",\"eta0\":0.5}");
    hr_error err;
    assert_int_equal(hr_guard_apply(app->guard, &s, NULL, NULL, &err), HR_OK);
    json_t *info = NULL;
    assert_int_equal(hr_guard_undo(app->guard, &info, &err), HR_OK);
    assert_int_equal(json_integer_value(json_object_get(info, "replayed")), 0);
    json_decref(info);
    float *after = rows_copy(app, &n1);
    assert_int_equal(n0, n1);
    assert_memory_equal(before, after, n0 * sizeof(float));
    free(before);
    free(after);
    hr_app_close(app, true);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_guard_reverts_runaway_rate),
        cmocka_unit_test(test_manual_undo_is_exact),
        cmocka_unit_test(test_no_restore_point_over_the_memory_limit),
        cmocka_unit_test(test_undo_with_no_event_since),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

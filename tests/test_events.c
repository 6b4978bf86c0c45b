/*
 * test_events.c - tests of the events module (src/events.c) and the serving
 * state it owns (src/history.c, src/dedup.c), then of that state across
 * restarts of the real binary.
 *
 * In-process: popularity counts positive events only and decays with its
 * half-life (checked against 2^(-age/half_life), also across an epoch move);
 * a ring skips events it already took (by seq); dedup ids are exported only
 * once confirmed, and a refused (429) batch gives its ids back and creates no
 * user or item id; a posted batch reports its invalid events by index (an
 * event whose id table is full too) and the counters count them; a saved
 * state loads into a model whose ids sit at other rows and still names the
 * same ids.
 *
 * Real binary ($HOGREC_BIN serve --port 0 --db ...), as a forked child:
 *   - the popular fallback and exclude_seen come back as they were after
 *     SIGTERM, and after kill -9 (a checkpoint, then events only in the log);
 *   - a server killed with SIGKILL while two client threads send batches of
 *     events with ids (checkpoints happen meanwhile): after the restart every
 *     batch sent (acknowledged or not) is sent again; every acknowledged
 *     batch is all duplicates, and each id is applied exactly once: the
 *     trained-event count equals the number of ids and each item's popularity
 *     (half-life 0: a count) equals the number of its ids.
 * No assertion fails while a child runs (it would outlive the test): results
 * are collected, the child is stopped, then checked. Loops are bounded.
 */
/* ctest-labels: concurrent */
#include <curl/curl.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "hogrec/api.h"
#include "hogrec/app.h"
#include "hogrec/events.h"
#include "testutil.h"

/* ---- in-process fixtures ---- */

static hr_app *open_app_users(const char *db, double half_life, int64_t max_users)
{
    hr_config c;
    tu_small_config(&c, db);
    c.max_users = max_users;
    c.queue_capacity = 64;
    c.history_per_user = 4;
    c.popular_half_life = half_life;
    hr_app *app = NULL;
    hr_error err = {{0}, {0}};
    hr_status st = hr_app_open(&c, &app, &err);
    hr_config_free(&c);
    if (st != HR_OK)
        fail_msg("hr_app_open: %s", err.message);
    return app;
}

static hr_app *open_app(const char *db, double half_life)
{
    return open_app_users(db, half_life, 1024);
}

/* Posts events "user item label id" (id "" = none) through the events
 * module, waiting for durability. */
static hr_status submit(hr_app *app, const char *const (*evs)[4], size_t n, hr_events_outcome *res)
{
    json_t *arr = json_array(), *errors = json_array();
    for (size_t i = 0; i < n; i++) {
        json_t *o = json_pack("{s:s, s:s, s:i}", "user", evs[i][0], "item", evs[i][1], "label",
                              atoi(evs[i][2]));
        if (evs[i][3][0])
            json_object_set_new(o, "id", json_string(evs[i][3]));
        json_array_append_new(arr, o);
    }
    hr_events_pending *p = NULL;
    hr_error err = {{0}, {0}};
    hr_status st = hr_events_post(app->events, arr, errors, true, res, &p, &err);
    assert_null(p);
    assert_int_equal(res->rejected, 0);
    assert_int_equal(json_array_size(errors), 0);
    json_decref(arr);
    json_decref(errors);
    return st;
}

static uint32_t row_of(hr_app *app, hr_table_id t, const char *id)
{
    return hr_model_lookup(app->model, t, id, strlen(id));
}

static double score_of(hr_app *app, const char *item)
{
    uint32_t r = row_of(app, HR_TABLE_ITEM, item);
    return r == HR_ID_NONE ? 0 : hr_history_score(hr_events_history(app->events), r, hr_wall_time());
}

/* ---- popularity ---- */

static void test_popularity_positive_only(void **state)
{
    (void)state;
    hr_app *app = open_app("", 0); /* no decay: scores are counts */
    const char *const evs[][4] = {
        {"u1", "hot", "1", ""}, {"u2", "hot", "1", ""}, {"u3", "cold", "0", ""},
        {"u4", "cold", "0", ""}, {"u5", "cold", "0", ""}, {"u6", "warm", "1", ""},
    };
    hr_events_outcome res;
    assert_int_equal(submit(app, evs, 6, &res), HR_OK);
    assert_int_equal(res.accepted, 6);
    assert_true(score_of(app, "hot") == 2);
    assert_true(score_of(app, "warm") == 1);
    assert_true(score_of(app, "cold") == 0); /* label 0: seen, not popular */
    hr_topk_item top[4];
    size_t n = hr_events_popular(app->events, 4, NULL, top);
    assert_int_equal(n, 2);
    assert_int_equal(top[0].row, row_of(app, HR_TABLE_ITEM, "hot"));
    assert_int_equal(top[1].row, row_of(app, HR_TABLE_ITEM, "warm"));
    /* label-0 events are still in the user's recent items (exclude_seen). */
    uint32_t recent[4];
    assert_int_equal(hr_events_recent(app->events, row_of(app, HR_TABLE_USER, "u3"), recent, 4),
                     1);
    assert_int_equal(recent[0], row_of(app, HR_TABLE_ITEM, "cold"));
    hr_app_close(app, true);
}

static void test_popularity_decay(void **state)
{
    (void)state;
    const double H = 100;
    hr_history *h;
    assert_int_equal(hr_history_create(16, 16, 0, H, &h), HR_OK);
    double t0 = hr_wall_time();
    hr_history_pop_add(h, 1, t0);
    hr_history_pop_add(h, 2, t0 + H);
    hr_history_pop_add(h, 2, t0 + 2 * H);
    double now = t0 + 3 * H;
    /* 2^-3 for item 1; 2^-2 + 2^-1 for item 2 */
    assert_true(fabs(hr_history_score(h, 1, now) - 0.125) < 1e-6);
    assert_true(fabs(hr_history_score(h, 2, now) - 0.75) < 1e-6);
    /* An event 100 half-lives later moves the epoch: old scores become tiny,
     * the new one weighs 1, and nothing overflows. */
    double later = t0 + 100 * H;
    hr_history_pop_add(h, 3, later);
    assert_true(fabs(hr_history_score(h, 3, later) - 1.0) < 1e-6);
    assert_true(hr_history_score(h, 2, later) < 1e-20);
    assert_true(isfinite(hr_history_score(h, 2, later)));
    /* Set as of a time: read back decayed from it. */
    hr_history_pop_set(h, 4, 8.0, later);
    assert_true(fabs(hr_history_score(h, 4, later + 3 * H) - 1.0) < 1e-5);
    float copy[6];
    hr_history_pop_copy(h, 6, later + 3 * H, copy);
    assert_true(fabs(copy[4] - 1.0) < 1e-5);
    assert_true(copy[0] == 0 && copy[5] == 0);
    hr_history_destroy(h);
}

/* ---- rings ---- */

static void test_ring_skips_events_it_took(void **state)
{
    (void)state;
    hr_history *h;
    assert_int_equal(hr_history_create(16, 16, 3, 0, &h), HR_OK);
    hr_history_add(h, 5, 1, 10);
    hr_history_add(h, 5, 2, 11);
    hr_history_add(h, 5, 3, 11); /* seq not above the ring's: already in it */
    hr_history_add(h, 5, 4, 9);
    uint32_t out[3];
    uint64_t seq;
    assert_int_equal(hr_history_recent(h, 5, out, 3, &seq), 2);
    assert_int_equal(seq, 11);
    assert_int_equal(out[0], 2);
    assert_int_equal(out[1], 1);
    const uint32_t items[] = {7, 6, 5, 4}; /* most recent first; 3 kept */
    assert_int_equal(hr_history_set_ring(h, 5, items, 4, 20), HR_OK);
    hr_history_add(h, 5, 9, 20);
    assert_int_equal(hr_history_recent(h, 5, out, 3, &seq), 3);
    assert_int_equal(seq, 20);
    assert_int_equal(out[0], 7);
    assert_int_equal(out[2], 5);
    hr_history_add(h, 5, 9, 21);
    assert_int_equal(hr_history_recent(h, 5, out, 3, NULL), 3);
    assert_int_equal(out[0], 9);
    assert_int_equal(out[1], 7);
    hr_history_destroy(h);
}

/* ---- ids ---- */

static hr_status count_id(void *ctx, uint64_t h, double t)
{
    (void)h;
    (void)t;
    (*(int *)ctx)++;
    return HR_OK;
}

static int exported(hr_dedup *d, double now)
{
    int n = 0;
    assert_int_equal(hr_dedup_export(d, now, count_id, &n), HR_OK);
    return n;
}

static void test_dedup_claim_confirm_export(void **state)
{
    (void)state;
    hr_dedup *d;
    assert_int_equal(hr_dedup_create(1024, 10, &d), HR_OK);
    assert_true(hr_dedup_claim(d, 42, 100));
    assert_false(hr_dedup_claim(d, 42, 101)); /* pending claims are duplicates too */
    assert_int_equal(exported(d, 101), 0);    /* but not exported */
    hr_dedup_confirm(d, 42);
    assert_int_equal(exported(d, 101), 1);
    assert_int_equal(exported(d, 111), 0); /* past the window */
    hr_dedup_release(d, 42);
    assert_int_equal(exported(d, 101), 0);
    assert_true(hr_dedup_claim(d, 42, 102));
    /* remember: idempotent, and nothing already past the window */
    hr_dedup_remember(d, 7, 100, 105);
    hr_dedup_remember(d, 7, 100, 105);
    hr_dedup_remember(d, 8, 90, 105);
    assert_int_equal(exported(d, 105), 1);
    assert_false(hr_dedup_claim(d, 7, 106));
    assert_true(hr_dedup_claim(d, 8, 106));
    hr_dedup_destroy(d);
    hr_dedup_destroy(NULL);
}

static void test_submit_duplicates_and_refused_batch(void **state)
{
    (void)state;
    hr_app *app = open_app("", 0);
    const char *const a[][4] = {{"u1", "i1", "1", "x"}, {"u1", "i2", "1", "y"},
                                {"u2", "i1", "1", "x"}};
    hr_events_outcome res;
    assert_int_equal(submit(app, a, 3, &res), HR_OK);
    assert_int_equal(res.accepted, 2);
    assert_int_equal(res.duplicates, 1);
    assert_int_equal(submit(app, a, 3, &res), HR_OK);
    assert_int_equal(res.accepted, 0);
    assert_int_equal(res.duplicates, 3);
    assert_true(score_of(app, "i1") == 1);
    /* A batch the queue cannot take (trainers paused, 64 slots) is refused
     * whole and gives its ids back: the resend is accepted. */
    hr_trainer_wait_idle(app->trainer);
    hr_trainer_pause(app->trainer);
    const char *const fill[][4] = {{"f", "f1", "1", ""}};
    hr_status st = HR_OK;
    for (int i = 0; i < 65 && st == HR_OK; i++)
        st = submit(app, fill, 1, &res);
    assert_int_equal(st, HR_EFULL);
    const char *const b[][4] = {{"u3", "i3", "1", "z1"}, {"u3", "i4", "1", "z2"}};
    assert_int_equal(submit(app, b, 2, &res), HR_EFULL);
    assert_int_equal(res.accepted, 0);
    hr_trainer_resume(app->trainer);
    hr_trainer_wait_idle(app->trainer);
    assert_int_equal(submit(app, b, 2, &res), HR_OK);
    assert_int_equal(res.accepted, 2);
    assert_true(score_of(app, "i3") == 1);
    /* counted: the refused fill event and batch, the duplicates */
    hr_events_counts ec;
    hr_events_get_counts(app->events, &ec);
    assert_int_equal(ec.refused, 1 + 2);
    assert_int_equal(ec.duplicates, 1 + 3);
    assert_int_equal(ec.rejected, 0);
    hr_app_close(app, true);
}

/* A posted batch: elements the caller already reported are skipped,
 * invalid ones listed by index, an event whose user table is full is
 * rejected with its error in index order (creating nothing) while the
 * others go on. */
static void test_post_rejects_by_index(void **state)
{
    (void)state;
    hr_app *app = open_app_users("", 0, 2); /* room for two user ids */
    json_t *events = json_loads("[null, {\"user\":\"a\",\"item\":\"i1\"},"
                                " {\"user\":\"b\",\"item\":\"i1\",\"bogus\":1},"
                                " {\"user\":\"b\",\"item\":\"i2\",\"id\":\"e3\"},"
                                " {\"user\":\"c\",\"item\":\"i3\",\"id\":\"e4\"},"
                                " {\"user\":\"a\",\"item\":\"i4\"}, 7]",
                                0, NULL);
    assert_non_null(events);
    json_t *errors = json_pack("[{s:i,s:s}]", "index", 0, "message", "not JSON");
    hr_events_outcome out;
    hr_events_pending *p = NULL;
    hr_error err = {{0}, {0}};
    assert_int_equal(hr_events_post(app->events, events, errors, true, &out, &p, &err), HR_OK);
    assert_null(p);
    assert_int_equal(out.accepted, 3);
    assert_int_equal(out.rejected, 4);
    assert_int_equal(out.duplicates, 0);
    assert_int_equal(out.first_seq, 1);
    static const struct {
        int index;
        const char *field;
    } want[] = {{0, NULL}, {2, "bogus"}, {4, "user"}, {6, NULL}};
    assert_int_equal(json_array_size(errors), HR_ARRAY_LEN(want));
    for (size_t i = 0; i < HR_ARRAY_LEN(want); i++) {
        json_t *e = json_array_get(errors, i);
        assert_int_equal(json_integer_value(json_object_get(e, "index")), want[i].index);
        if (want[i].field)
            assert_string_equal(json_string_value(json_object_get(e, "field")), want[i].field);
        else
            assert_null(json_object_get(e, "field"));
    }
    /* the rejected event created nothing and gave its event id back */
    assert_int_equal(row_of(app, HR_TABLE_USER, "c"), HR_ID_NONE);
    assert_int_equal(row_of(app, HR_TABLE_ITEM, "i3"), HR_ID_NONE);
    assert_int_equal(hr_model_id_count(app->model, HR_TABLE_USER), 2);
    hr_events_counts ec;
    hr_events_get_counts(app->events, &ec);
    assert_int_equal(ec.rejected, 4);
    json_decref(errors);
    errors = json_array();
    json_t *again = json_pack("[{s:s,s:s,s:s},{s:s,s:s,s:s}]", "user", "a", "item", "i3", "id",
                              "e4", "user", "b", "item", "i2", "id", "e3");
    assert_int_equal(hr_events_post(app->events, again, errors, true, &out, &p, &err), HR_OK);
    assert_int_equal(out.accepted, 1); /* e4 was released, e3 is a duplicate */
    assert_int_equal(out.duplicates, 1);
    assert_int_equal(out.first_seq, 4);
    json_decref(again);
    json_decref(errors);
    json_decref(events);
    hr_app_close(app, true);
}

/* A batch refused with 429 (queue full) creates no ids: ids are resolved
 * only for admitted events. */
static void test_refused_batch_creates_no_ids(void **state)
{
    (void)state;
    hr_app *app = open_app("", 0);
    hr_trainer_wait_idle(app->trainer);
    hr_trainer_pause(app->trainer);
    const char *const fill[][4] = {{"f", "f1", "1", ""}};
    hr_events_outcome res;
    hr_status st = HR_OK;
    for (int i = 0; i < 65 && st == HR_OK; i++)
        st = submit(app, fill, 1, &res);
    assert_int_equal(st, HR_EFULL);
    uint32_t users = hr_model_id_count(app->model, HR_TABLE_USER);
    uint32_t items = hr_model_id_count(app->model, HR_TABLE_ITEM);
    const char *const b[][4] = {{"new-u1", "new-i1", "1", ""}, {"new-u2", "new-i2", "0", "n2"}};
    assert_int_equal(submit(app, b, 2, &res), HR_EFULL);
    assert_int_equal(res.accepted, 0);
    assert_int_equal(hr_model_id_count(app->model, HR_TABLE_USER), users);
    assert_int_equal(hr_model_id_count(app->model, HR_TABLE_ITEM), items);
    assert_int_equal(row_of(app, HR_TABLE_USER, "new-u1"), HR_ID_NONE);
    hr_trainer_resume(app->trainer);
    hr_trainer_wait_idle(app->trainer);
    hr_app_close(app, true);
}

/* ---- save and load ---- */

typedef struct {
    uint64_t seq;
    double taken;
    size_t nhist, nblob;
    struct {
        char user[32];
        size_t ulen;
        uint64_t seq;
        uint8_t items[512];
        size_t bytes;
    } hist[16];
    struct {
        char kind[16];
        uint8_t *data;
        size_t bytes;
    } blob[8];
} mem_sink;

static hr_status m_header(void *ctx, uint64_t seq, double taken, hr_error *err)
{
    (void)err;
    mem_sink *m = ctx;
    m->seq = seq;
    m->taken = taken;
    return HR_OK;
}

static hr_status m_history(void *ctx, const char *user, size_t ulen, uint64_t seq,
                           const void *items, size_t bytes, hr_error *err)
{
    (void)err;
    mem_sink *m = ctx;
    assert_true(m->nhist < 16 && ulen < 32 && bytes <= 512);
    memcpy(m->hist[m->nhist].user, user, ulen);
    m->hist[m->nhist].ulen = ulen;
    m->hist[m->nhist].seq = seq;
    memcpy(m->hist[m->nhist].items, items, bytes);
    m->hist[m->nhist++].bytes = bytes;
    return HR_OK;
}

static hr_status m_blob(void *ctx, const char *kind, uint32_t part, const void *data,
                        size_t bytes, hr_error *err)
{
    (void)err;
    (void)part;
    mem_sink *m = ctx;
    assert_true(m->nblob < 8);
    snprintf(m->blob[m->nblob].kind, 16, "%s", kind);
    m->blob[m->nblob].data = malloc(bytes);
    memcpy(m->blob[m->nblob].data, data, bytes);
    m->blob[m->nblob++].bytes = bytes;
    return HR_OK;
}

static void test_save_load_by_key(void **state)
{
    (void)state;
    hr_app *a = open_app("", 0);
    const char *const evs[][4] = {{"ua", "i1", "1", "e1"}, {"ua", "i2", "1", "e2"},
                                  {"ub", "i2", "1", "e3"}, {"ub", "i3", "0", "e4"}};
    hr_events_outcome res;
    assert_int_equal(submit(a, evs, 4, &res), HR_OK);
    mem_sink *m = calloc(1, sizeof *m);
    hr_events_sink sink = {m, m_header, m_history, m_blob};
    uint64_t cut;
    hr_error err;
    assert_int_equal(hr_events_save(a->events, 0, &sink, &cut, &err), HR_OK);
    assert_int_equal(cut, 4);
    assert_int_equal(m->seq, 4);
    assert_int_equal(m->nhist, 2);
    /* Incremental: no ring changed after seq 4. */
    mem_sink *m2 = calloc(1, sizeof *m2);
    hr_events_sink sink2 = {m2, m_header, m_history, m_blob};
    assert_int_equal(hr_events_save(a->events, 4, &sink2, &cut, &err), HR_OK);
    assert_int_equal(m2->nhist, 0);
    for (size_t i = 0; i < m2->nblob; i++)
        free(m2->blob[i].data);
    free(m2);

    /* Another model whose ids sit at other rows (other ids came first). */
    hr_app *b = open_app("", 0);
    const char *const other[][4] = {{"zz", "i3", "0", ""}, {"zy", "q", "0", ""},
                                    {"ub", "i2", "0", ""}};
    assert_int_equal(submit(b, other, 3, &res), HR_OK);
    assert_true(row_of(b, HR_TABLE_ITEM, "i2") != row_of(a, HR_TABLE_ITEM, "i2"));
    assert_int_equal(hr_events_load_begin(b->events, m->seq, m->taken, &err), HR_OK);
    for (size_t i = 0; i < m->nhist; i++)
        assert_int_equal(hr_events_load_history(b->events, m->hist[i].user, m->hist[i].ulen,
                                                m->hist[i].seq, m->hist[i].items,
                                                m->hist[i].bytes, &err),
                         HR_OK);
    for (size_t i = 0; i < m->nblob; i++)
        assert_int_equal(hr_events_load_blob(b->events, m->blob[i].kind, m->blob[i].data,
                                             m->blob[i].bytes, &err),
                         HR_OK);
    hr_events_load_end(b->events);
    /* Same ids, wherever their rows are. */
    assert_true(fabs(score_of(b, "i2") - 2) < 1e-4);
    assert_true(fabs(score_of(b, "i1") - 1) < 1e-4);
    assert_true(score_of(b, "i3") == 0);
    uint32_t recent[4];
    assert_int_equal(hr_events_recent(b->events, row_of(b, HR_TABLE_USER, "ua"), recent, 4), 2);
    assert_int_equal(recent[0], row_of(b, HR_TABLE_ITEM, "i2"));
    assert_int_equal(recent[1], row_of(b, HR_TABLE_ITEM, "i1"));
    assert_int_equal(hr_events_recent(b->events, row_of(b, HR_TABLE_USER, "ub"), recent, 4), 2);
    assert_int_equal(recent[0], row_of(b, HR_TABLE_ITEM, "i3"));
    /* The ids are known: a resend is all duplicates. */
    assert_int_equal(submit(b, evs, 4, &res), HR_OK);
    assert_int_equal(res.duplicates, 4);
    /* A damaged record is refused. */
    uint8_t bad[3] = {1, 2, 3};
    assert_int_equal(hr_events_load_blob(b->events, "popularity", bad, 3, &err), HR_ECORRUPT);
    for (size_t i = 0; i < m->nblob; i++)
        free(m->blob[i].data);
    free(m);
    hr_app_close(a, true);
    hr_app_close(b, true);
}

/* ---- the real binary ---- */

typedef tu_child child;

#define CHILD_BOUND 300 /* seconds a child may live: generous, one needs a few */

/* Starts `hogrec serve` on db with extra flags (NULL-terminated); waits for
 * "ready". Returns false (child stopped) if it does not get there. */
static bool spawn(child *ch, const char *db, const char *const *extra)
{
    const char *bin = getenv("HOGREC_BIN");
    const char *argv[40] = {bin, "serve", "--port", "0", "--db", db, "--threads", "1",
                            "--max-users", "4096", "--max-items", "4096", "--k", "8",
                            "--negative-sampling", "off", "--admin-token", "tok"};
    int argc = 18;
    for (int i = 0; extra && extra[i] && argc < 38; i++)
        argv[argc++] = extra[i];
    argv[argc] = NULL;
    return tu_node_spawn(ch, argv, CHILD_BOUND);
}

/* Stops the child with sig; returns its wait status. */
static int stop_child(child *ch, int sig)
{
    kill(ch->pid, sig);
    int status = tu_child_wait(ch);
    if (status == -1) /* it is gone now: safe to fail */
        fail_msg("the server outlived its %d s bound and was killed", CHILD_BOUND);
    return status;
}

/* One request; no assertions (used while a child runs and from threads).
 * Returns the status (0 if the request failed) and the parsed body. */
static long http(int port, const char *method, const char *path, const char *body, json_t **out)
{
    return tu_http(port, method, path, body, "Bearer tok", out);
}

static json_int_t jint(json_t *o, const char *a, const char *b)
{
    return json_integer_value(json_object_get(json_object_get(o, a), b));
}

/* What the restart tests compare: the popular fallback (items, scores) and
 * the recommendations of users with history (item lists). */
typedef struct {
    json_t *popular;  /* items array of an unknown user's recommendation */
    json_t *seen[3];  /* items array for u0..u2, exclude_seen on */
} views;

static void views_take(int port, views *v)
{
    json_t *o;
    http(port, "GET", "/v1/recommend?user=nobody&k=20", NULL, &o);
    v->popular = json_incref(json_object_get(o, "items"));
    json_decref(o);
    for (int u = 0; u < 3; u++) {
        char path[80];
        snprintf(path, sizeof path, "/v1/recommend?user=u%d&k=200", u);
        http(port, "GET", path, NULL, &o);
        v->seen[u] = json_incref(json_object_get(o, "items"));
        json_decref(o);
    }
}

static void views_free(views *v)
{
    json_decref(v->popular);
    for (int u = 0; u < 3; u++)
        json_decref(v->seen[u]);
}

/* Posts the restart tests' events: user u<j % 3> clicks item p<j % 7 ...>,
 * label-0 events on "cold" (never popular), ids "r<round>-<j>". */
static long post_round(int port, int round)
{
    json_t *arr = json_array();
    for (int j = 0; j < 40; j++) {
        char user[16], item[16], id[32];
        snprintf(user, sizeof user, "u%d", j % 3);
        snprintf(item, sizeof item, "p%d", (j * j + round) % 11);
        snprintf(id, sizeof id, "r%d-%d", round, j);
        json_array_append_new(arr, json_pack("{s:s,s:s,s:i,s:s}", "user", user, "item", item,
                                             "label", 1, "id", id));
        json_array_append_new(arr, json_pack("{s:s,s:s,s:i}", "user", "u9", "item", "cold",
                                             "label", 0));
    }
    char *body = json_dumps(arr, JSON_COMPACT);
    json_decref(arr);
    long st = http(port, "POST", "/v1/events", body, NULL);
    free(body);
    return st;
}

/* The items u<u> clicked in rounds [0, rounds). */
static bool clicked(int u, int rounds, const char *item)
{
    for (int r = 0; r < rounds; r++)
        for (int j = u; j < 40; j += 3) {
            char it[16];
            snprintf(it, sizeof it, "p%d", (j * j + r) % 11);
            if (!strcmp(it, item))
                return true;
        }
    return false;
}

static void check_after_restart(const views *before, const views *after, int rounds)
{
    /* The popular fallback: the same items in the same order, scores within
     * the decay of the seconds between (half-life one day). */
    assert_true(json_array_size(before->popular) > 0);
    assert_int_equal(json_array_size(after->popular), json_array_size(before->popular));
    for (size_t i = 0; i < json_array_size(before->popular); i++) {
        json_t *x = json_array_get(before->popular, i), *y = json_array_get(after->popular, i);
        assert_string_equal(json_string_value(json_object_get(x, "item")),
                            json_string_value(json_object_get(y, "item")));
        double sx = json_real_value(json_object_get(x, "score"));
        double sy = json_real_value(json_object_get(y, "score"));
        if (fabs(sx - sy) > 1e-3 * sx)
            fail_msg("popular item %zu: score %g before, %g after", i, sx, sy);
        assert_string_not_equal(json_string_value(json_object_get(y, "item")), "cold");
    }
    /* exclude_seen: no user is recommended an item it clicked. */
    for (int u = 0; u < 3; u++) {
        assert_true(json_array_size(after->seen[u]) > 0);
        size_t i;
        json_t *it;
        json_array_foreach(after->seen[u], i, it) {
            const char *item = json_string_value(json_object_get(it, "item"));
            if (clicked(u, rounds, item))
                fail_msg("u%d was recommended %s, which it clicked", u, item);
        }
        assert_int_equal(json_array_size(after->seen[u]), json_array_size(before->seen[u]));
    }
}

static const char *bin_or_skip(void)
{
    const char *bin = getenv("HOGREC_BIN");
    if (!bin || access(bin, X_OK) != 0)
        TU_SKIP("HOGREC_BIN not set or not executable (run through ctest)");
    return bin;
}

static void restart_test(int sig)
{
    bin_or_skip();
    const char *dir = tu_tmpdir();
    char db[600];
    snprintf(db, sizeof db, "%s/r.db", dir);
    const char *const flags[] = {"--checkpoint-interval", "0", "--checkpoint-events", "0", NULL};
    child ch;
    assert_true(spawn(&ch, db, flags));
    long s1 = post_round(ch.port, 0);
    long sc = 0;
    if (sig == SIGKILL) /* a checkpoint, then events only in the log */
        sc = http(ch.port, "POST", "/v1/admin/checkpoint", "", NULL);
    long s2 = post_round(ch.port, 1);
    views before;
    views_take(ch.port, &before);
    int status = stop_child(&ch, sig);
    assert_int_equal(s1, 202);
    assert_int_equal(s2, 202);
    if (sig == SIGKILL) {
        assert_int_equal(sc, 200);
        assert_true(WIFSIGNALED(status));
    } else {
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    /* Nothing learnt from the seen-lists before: each excludes what its user
     * clicked already. */
    assert_true(spawn(&ch, db, flags));
    views after;
    views_take(ch.port, &after);
    json_t *dup = NULL; /* the ids are known again */
    long sd = http(ch.port, "POST", "/v1/events", "{\"user\":\"u0\",\"item\":\"p1\",\"id\":\"r1-0\"}",
                   &dup);
    status = stop_child(&ch, SIGTERM);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    check_after_restart(&before, &after, 2);
    assert_int_equal(sd, 202);
    assert_int_equal(json_integer_value(json_object_get(dup, "duplicates")), 1);
    json_decref(dup);
    views_free(&before);
    views_free(&after);
    tu_rmtree(dir);
}

static void test_restart_sigterm_keeps_serving_state(void **state)
{
    (void)state;
    restart_test(SIGTERM);
}

static void test_restart_kill9_keeps_serving_state(void **state)
{
    (void)state;
    restart_test(SIGKILL);
}

/* ---- kill -9 mid-ingest, then resend everything ---- */

#define BATCH 10
#define MAX_BATCHES 400 /* per sender */
#define ITEMS 37

typedef struct {
    int port;
    int sender;              /* 0 or 1: batch b of sender s has ids (s*MAX_BATCHES+b)*BATCH + j */
    int sent;                /* batches sent (the last may be unanswered) */
    bool acked[MAX_BATCHES]; /* 202 received */
    atomic_int *acked_total;
} sender;

static char *batch_body(int sender_no, int b)
{
    json_t *arr = json_array();
    for (int j = 0; j < BATCH; j++) {
        int id = (sender_no * MAX_BATCHES + b) * BATCH + j;
        char user[16], item[16], eid[16];
        snprintf(user, sizeof user, "k%d", id % 101);
        snprintf(item, sizeof item, "it%d", id % ITEMS);
        snprintf(eid, sizeof eid, "e%d", id);
        json_array_append_new(arr, json_pack("{s:s,s:s,s:s}", "user", user, "item", item, "id",
                                             eid));
    }
    char *s = json_dumps(arr, JSON_COMPACT);
    json_decref(arr);
    return s;
}

static void *send_loop(void *arg)
{
    sender *s = arg;
    for (int b = 0; b < MAX_BATCHES; b++) {
        char *body = batch_body(s->sender, b);
        s->sent = b + 1;
        long st = http(s->port, "POST", "/v1/events", body, NULL);
        free(body);
        if (st != 202)
            break; /* the server is gone */
        s->acked[b] = true;
        atomic_fetch_add(s->acked_total, 1);
    }
    return NULL;
}

static void test_kill9_mid_ingest_applies_each_id_once(void **state)
{
    (void)state;
    bin_or_skip();
    const char *dir = tu_tmpdir();
    char db[600];
    snprintf(db, sizeof db, "%s/k.db", dir);
    /* A checkpoint is taken while it ingests (ids before it are restored
     * from the checkpoint, the later ones from the log); popularity without
     * decay, so an item's score is its number of events. */
    const char *const flags[] = {"--checkpoint-interval", "0", "--checkpoint-events", "0",
                                 "--popular-half-life", "0", NULL};
    child ch;
    assert_true(spawn(&ch, db, flags));
    atomic_int acked = 0;
    static sender snd[2];
    memset(snd, 0, sizeof snd);
    pthread_t th[2];
    for (int i = 0; i < 2; i++) {
        snd[i] = (sender){.port = ch.port, .sender = i, .acked_total = &acked};
        pthread_create(&th[i], NULL, send_loop, &snd[i]);
    }
    /* A checkpoint after 30 acknowledged batches; the kill once 60 are:
     * both senders are mid-request. */
    long ckpt = 0;
    for (int want = 30; want <= 60; want += 30) {
        for (int i = 0; i < 20000 && atomic_load(&acked) < want; i++) {
            struct timespec ts = {0, 1000000L};
            nanosleep(&ts, NULL);
        }
        if (want == 30)
            ckpt = http(ch.port, "POST", "/v1/admin/checkpoint", "", NULL);
    }
    int status = stop_child(&ch, SIGKILL);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    assert_int_equal(ckpt, 200);
    assert_true(atomic_load(&acked) >= 60);
    int ids = 0, per_item[ITEMS] = {0};
    for (int i = 0; i < 2; i++)
        for (int b = 0; b < snd[i].sent; b++)
            for (int j = 0; j < BATCH; j++) {
                ids++;
                per_item[((i * MAX_BATCHES + b) * BATCH + j) % ITEMS]++;
            }

    /* Restart; resend every batch either sender sent. */
    assert_true(spawn(&ch, db, flags));
    int bad_status = 0, acked_not_dup = 0, not_whole = 0;
    long accepted = 0, duplicates = 0;
    for (int i = 0; i < 2; i++)
        for (int b = 0; b < snd[i].sent; b++) {
            char *body = batch_body(i, b);
            json_t *o;
            long st = http(ch.port, "POST", "/v1/events", body, &o);
            free(body);
            json_int_t a = json_integer_value(json_object_get(o, "accepted"));
            json_int_t d = json_integer_value(json_object_get(o, "duplicates"));
            json_decref(o);
            if (st != 202) {
                bad_status++;
                continue;
            }
            accepted += a;
            duplicates += d;
            if (snd[i].acked[b] && d != BATCH)
                acked_not_dup++;
            if (a + d != BATCH)
                not_whole++;
        }
    /* Everything trained: the replayed log tail plus what was accepted now. */
    json_t *stats = NULL;
    json_int_t trained = 0, replayed = 0;
    for (int i = 0; i < 500; i++) {
        json_decref(stats);
        http(ch.port, "GET", "/v1/stats", NULL, &stats);
        trained = jint(stats, "events", "trained");
        json_t *start = json_object_get(json_object_get(stats, "checkpoint"), "start");
        replayed = json_integer_value(json_object_get(start, "replayed"));
        if (jint(stats, "queue", "depth") == 0 && trained >= replayed + accepted)
            break;
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    json_t *pop = NULL;
    http(ch.port, "GET", "/v1/recommend?user=nobody&k=100", NULL, &pop);
    status = stop_child(&ch, SIGTERM);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    print_message("[          ] %d ids sent (%d batches acknowledged before the kill); resend: "
                  "%ld accepted, %ld duplicates; %lld trained after the restart (%lld replayed)\n",
                  ids, atomic_load(&acked), accepted, duplicates, (long long)trained,
                  (long long)replayed);
    assert_int_equal(bad_status, 0);
    assert_int_equal(acked_not_dup, 0);
    assert_int_equal(not_whole, 0);
    assert_int_equal(accepted + duplicates, ids);
    assert_true(duplicates >= atomic_load(&acked) * BATCH);
    /* Each id applied exactly once: training (this process trained what
     * the log replayed and what was accepted now) and popularity. */
    assert_int_equal(trained, replayed + accepted);
    assert_true(replayed < ids - accepted); /* some came from the checkpoint */
    json_t *items = json_object_get(pop, "items");
    assert_int_equal(json_array_size(items), ITEMS);
    size_t i;
    json_t *it;
    json_array_foreach(items, i, it) {
        int k = atoi(json_string_value(json_object_get(it, "item")) + 2);
        double sc = json_real_value(json_object_get(it, "score"));
        if (sc != per_item[k])
            fail_msg("item it%d: popularity %g, %d ids", k, sc, per_item[k]);
    }
    json_decref(pop);
    json_decref(stats);
    tu_rmtree(dir);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_popularity_positive_only),
        cmocka_unit_test(test_popularity_decay),
        cmocka_unit_test(test_ring_skips_events_it_took),
        cmocka_unit_test(test_dedup_claim_confirm_export),
        cmocka_unit_test(test_submit_duplicates_and_refused_batch),
        cmocka_unit_test(test_refused_batch_creates_no_ids),
        cmocka_unit_test(test_post_rejects_by_index),
        cmocka_unit_test(test_save_load_by_key),
        cmocka_unit_test(test_restart_sigterm_keeps_serving_state),
        cmocka_unit_test(test_restart_kill9_keeps_serving_state),
        cmocka_unit_test(test_kill9_mid_ingest_applies_each_id_once),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}

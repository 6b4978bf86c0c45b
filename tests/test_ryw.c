/*
 * test_ryw.c - read-your-writes over HTTP: GET|POST /v1/predict and GET
 * /v1/recommend with min_seq (the seq of a 202) and wait_ms, on a real
 * in-process app and server (port 0, 127.0.0.1).
 *
 * Determinism: the trainers are paused (hr_trainer_pause) while events are
 * posted, a client thread sends the min_seq query, the test waits until it
 * sleeps on the node's watermark (hr_watermark_waiters), and only then
 * resumes the trainers: an answer that did not wait would show the model
 * before those events. Verdicts assert flags and scores, never times.
 */
/* ctest-labels: concurrent */
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hogrec/app.h"
#include "hogrec/http.h"
#include "hogrec/watermark.h"
#include "testutil.h"

typedef struct {
    hr_app *app;
    hr_http *http;
    int port;
} server;

static void start(server *s, int64_t max_wait_ms, double shutdown_timeout)
{
    hr_config c;
    tu_small_config(&c, "");
    c.threads = 2;
    c.http_threads = 4;
    c.max_wait_ms = max_wait_ms;
    c.shutdown_timeout = shutdown_timeout;
    hr_error e = {{0}, {0}};
    assert_int_equal(hr_app_open(&c, &s->app, &e), HR_OK);
    assert_int_equal(hr_http_start(s->app, &s->http, &e), HR_OK);
    s->port = hr_http_port(s->http);
    hr_config_free(&c);
}

static void stop(server *s)
{
    assert_int_equal(hr_http_stop(s->http), 0);
    hr_app_close(s->app, true);
}

static hr_watermark *applied(server *s)
{
    return hr_trainer_applied(s->app->trainer);
}

/* Waits (bounded) until n requests sleep on the node's watermark. */
static void await_waiters(server *s, unsigned n)
{
    for (int i = 0; i < 60000 && hr_watermark_waiters(applied(s)) != n; i++)
        usleep(1000);
    assert_int_equal(hr_watermark_waiters(applied(s)), n);
}

/* POSTs n events of user u to items i0.. (label 1); returns the 202's seq. */
static json_int_t post_events(server *s, const char *u, int n)
{
    char body[4096];
    size_t len = 0;
    body[len++] = '[';
    for (int i = 0; i < n; i++)
        len += (size_t)snprintf(body + len, sizeof body - len, "%s{\"user\":\"%s\",\"item\":\"i%d\"}",
                                i ? "," : "", u, i % 3);
    snprintf(body + len, sizeof body - len, "]");
    json_t *r = NULL;
    assert_int_equal(tu_http(s->port, "POST", "/v1/events", body, NULL, &r), 202);
    assert_int_equal(json_integer_value(json_object_get(r, "accepted")), n);
    json_int_t seq = json_integer_value(json_object_get(r, "seq"));
    json_decref(r);
    assert_true(seq > 0);
    return seq;
}

static double score_of(server *s, const char *path)
{
    json_t *r = NULL;
    assert_int_equal(tu_http(s->port, "GET", path, NULL, NULL, &r), 200);
    assert_true(json_is_number(json_object_get(r, "score")));
    assert_null(json_object_get(r, "applied")); /* only with min_seq */
    double v = json_number_value(json_object_get(r, "score"));
    json_decref(r);
    return v;
}

/* A request sent from a thread. */
typedef struct {
    server *s;
    const char *method;
    char path[256];
    const char *body;
    long status;
    json_t *reply;
} bg_req;

static void *bg_run(void *arg)
{
    bg_req *b = arg;
    b->status = tu_http(b->s->port, b->method, b->path, b->body, NULL, &b->reply);
    return NULL;
}

static void expect_applied(json_t *r, bool applied, json_int_t seq)
{
    assert_true(json_is_boolean(json_object_get(r, "applied")));
    assert_int_equal(json_is_true(json_object_get(r, "applied")), applied);
    json_int_t got = json_integer_value(json_object_get(r, "applied_seq"));
    if (applied)
        assert_true(got >= seq);
    else
        assert_true(got < seq);
}

/* Paused trainers, events posted, a min_seq query (kind 0: GET predict,
 * 1: POST predict, 2: GET recommend) sleeping on the watermark, trainers
 * resumed: the answer says applied and shows the trained model, the one
 * hr_trainer_wait_idle leaves. Returns the seq. (One query at a time: a
 * second one could be queued behind the first on its pool thread, see
 * http_query.c.) */
static json_int_t waited_query(server *s, int kind)
{
    double before = score_of(s, "/v1/predict?user=u1&item=i1");
    hr_trainer_pause(s->app->trainer);
    json_int_t seq = post_events(s, "u1", 40);
    bg_req q = {s, kind == 1 ? "POST" : "GET", "/v1/predict", NULL, 0, NULL};
    char body[128];
    snprintf(body, sizeof body,
             "{\"pairs\":[{\"user\":\"u1\",\"item\":\"i1\"}],\"min_seq\":%lld,\"wait_ms\":60000}",
             (long long)seq);
    if (kind == 0)
        snprintf(q.path, sizeof q.path, "/v1/predict?user=u1&item=i1&min_seq=%lld&wait_ms=60000",
                 (long long)seq);
    else if (kind == 1)
        q.body = body;
    else
        snprintf(q.path, sizeof q.path,
                 "/v1/recommend?user=u1&k=3&exclude_seen=false&min_seq=%lld&wait_ms=60000",
                 (long long)seq);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, bg_run, &q), 0);
    await_waiters(s, 1);
    assert_true(hr_watermark_get(applied(s)) < (uint64_t)seq);
    hr_trainer_resume(s->app->trainer);
    pthread_join(t, NULL);
    hr_trainer_wait_idle(s->app->trainer);
    double after = score_of(s, "/v1/predict?user=u1&item=i1");
    assert_true(after != before); /* the events moved the score */
    assert_int_equal(q.status, 200);
    expect_applied(q.reply, true, seq);
    if (kind == 0) {
        assert_true(json_number_value(json_object_get(q.reply, "score")) == after);
        assert_null(json_object_get(q.reply, "unknown"));
    } else if (kind == 1) {
        assert_true(json_number_value(json_array_get(json_object_get(q.reply, "scores"), 0)) ==
                    after);
    } else {
        assert_true(json_array_size(json_object_get(q.reply, "items")) > 0);
        assert_null(json_object_get(q.reply, "fallback"));
    }
    json_decref(q.reply);
    return seq;
}

static void test_min_seq_waits_for_the_events(void **state)
{
    (void)state;
    server s;
    start(&s, 60000, 30);
    post_events(&s, "u0", 3);
    hr_trainer_wait_idle(s.app->trainer);
    json_int_t seq = 0;
    for (int kind = 0; kind < 3; kind++)
        seq = waited_query(&s, kind);

    /* Already applied: no wait, applied at once. */
    json_t *r = NULL;
    char path[160];
    snprintf(path, sizeof path, "/v1/predict?user=u1&item=i1&min_seq=%lld&wait_ms=0",
             (long long)seq);
    assert_int_equal(tu_http(s.port, "GET", path, NULL, NULL, &r), 200);
    expect_applied(r, true, seq);
    json_decref(r);

    /* The node's applied seq in /v1/stats and /metrics. */
    assert_int_equal(tu_http(s.port, "GET", "/v1/stats", NULL, NULL, &r), 200);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(r, "events"),
                                                        "applied_seq")),
                     seq);
    json_decref(r);
    stop(&s);
}

/* Paused trainers: a min_seq query answers after wait_ms with applied
 * false and the node's applied seq below min_seq. */
static void test_min_seq_not_applied_in_time(void **state)
{
    (void)state;
    server s;
    start(&s, 1000, 30);
    json_int_t first = post_events(&s, "u1", 2);
    hr_trainer_wait_idle(s.app->trainer);
    hr_trainer_pause(s.app->trainer);
    json_int_t seq = post_events(&s, "u2", 5);
    char path[160];
    json_t *r = NULL;
    snprintf(path, sizeof path, "/v1/predict?user=u2&item=i1&min_seq=%lld&wait_ms=50",
             (long long)seq);
    assert_int_equal(tu_http(s.port, "GET", path, NULL, NULL, &r), 200);
    expect_applied(r, false, seq);
    assert_int_equal(json_integer_value(json_object_get(r, "applied_seq")), first);
    json_decref(r);
    char body[128];
    snprintf(body, sizeof body, "{\"pairs\":[{\"user\":\"u2\",\"item\":\"i1\"}],\"min_seq\":%lld,"
                                "\"wait_ms\":50}", (long long)seq);
    assert_int_equal(tu_http(s.port, "POST", "/v1/predict", body, NULL, &r), 200);
    expect_applied(r, false, seq);
    json_decref(r);
    /* wait_ms omitted: the default wait, then the same answer */
    snprintf(path, sizeof path, "/v1/recommend?user=u2&min_seq=%lld", (long long)seq);
    assert_int_equal(tu_http(s.port, "GET", path, NULL, NULL, &r), 200);
    expect_applied(r, false, seq);
    json_decref(r);
    /* an earlier seq is applied */
    snprintf(path, sizeof path, "/v1/recommend?user=u2&min_seq=%lld&wait_ms=0", (long long)first);
    assert_int_equal(tu_http(s.port, "GET", path, NULL, NULL, &r), 200);
    expect_applied(r, true, first);
    json_decref(r);
    hr_trainer_resume(s.app->trainer);
    stop(&s);
}

/* A 400 invalid whose message starts with field. */
static void expect_invalid(server *s, const char *method, const char *path, const char *body,
                           const char *field)
{
    json_t *r = NULL;
    long st = tu_http(s->port, method, path, body, NULL, &r);
    if (st != 400)
        fail_msg("%s %s %s: %ld, not 400", method, path, body ? body : "", st);
    json_t *e = json_object_get(r, "error");
    assert_string_equal(json_string_value(json_object_get(e, "code")), "invalid");
    const char *msg = json_string_value(json_object_get(e, "message"));
    assert_non_null(msg);
    if (strncmp(msg, field, strlen(field)) != 0)
        fail_msg("%s %s: message '%s' does not name %s", method, path, msg, field);
    json_decref(r);
}

static void test_min_seq_bad_values(void **state)
{
    (void)state;
    server s;
    start(&s, 500, 30);
    json_int_t seq = post_events(&s, "u1", 4);
    char path[200], body[200];
    /* beyond the last seq handed out: can never be applied */
    snprintf(path, sizeof path, "/v1/predict?user=u1&item=i1&min_seq=%lld", (long long)seq + 1);
    expect_invalid(&s, "GET", path, NULL, "min_seq");
    snprintf(path, sizeof path, "/v1/recommend?user=u1&min_seq=%lld", (long long)seq + 1);
    expect_invalid(&s, "GET", path, NULL, "min_seq");
    snprintf(body, sizeof body, "{\"pairs\":[],\"min_seq\":%lld}", (long long)seq + 1);
    expect_invalid(&s, "POST", "/v1/predict", body, "min_seq");
    /* wait_ms above max_wait_ms, or without min_seq */
    expect_invalid(&s, "GET", "/v1/predict?user=u1&item=i1&min_seq=1&wait_ms=501", NULL,
                   "wait_ms");
    expect_invalid(&s, "GET", "/v1/recommend?user=u1&wait_ms=10", NULL, "wait_ms");
    expect_invalid(&s, "POST", "/v1/predict", "{\"pairs\":[],\"wait_ms\":10}", "wait_ms");
    expect_invalid(&s, "POST", "/v1/predict", "{\"pairs\":[],\"min_seq\":1,\"wait_ms\":501}",
                   "wait_ms");
    /* not integers >= 0 */
    static const char *const bad[] = {"x", "-1", "", "1.5", "%2B1", "1e3", "99999999999999999999",
                                      "%201"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        snprintf(path, sizeof path, "/v1/predict?user=u1&item=i1&min_seq=%s", bad[i]);
        expect_invalid(&s, "GET", path, NULL, "min_seq");
        snprintf(path, sizeof path, "/v1/recommend?user=u1&min_seq=1&wait_ms=%s", bad[i]);
        expect_invalid(&s, "GET", path, NULL, "wait_ms");
    }
    expect_invalid(&s, "GET", "/v1/predict?user=u1&item=i1&min_seq", NULL, "min_seq");
    expect_invalid(&s, "GET", "/v1/predict?user=u1&item=i1&min_seq=1&min_seq=1", NULL, "min_seq");
    static const char *const bad_json[] = {"\"1\"", "-1", "1.5", "true", "null", "[1]"};
    for (size_t i = 0; i < sizeof bad_json / sizeof *bad_json; i++) {
        snprintf(body, sizeof body, "{\"pairs\":[],\"min_seq\":%s}", bad_json[i]);
        expect_invalid(&s, "POST", "/v1/predict", body, "min_seq");
        snprintf(body, sizeof body, "{\"pairs\":[],\"min_seq\":1,\"wait_ms\":%s}", bad_json[i]);
        expect_invalid(&s, "POST", "/v1/predict", body, "wait_ms");
    }
    /* a bad pair is reported before any wait */
    expect_invalid(&s, "POST", "/v1/predict", "{\"pairs\":[{\"user\":\"u1\"}],\"min_seq\":1}",
                   "pairs[0].item");
    /* members other than pairs, min_seq, wait_ms */
    expect_invalid(&s, "POST", "/v1/predict", "{\"pairs\":[],\"min_seq\":1,\"x\":1}", "pairs");
    stop(&s);
}

/* A server stopping ends a min_seq wait at once: hr_http_stop returns
 * within shutdown_timeout although the wait could last a minute. */
static void test_stop_ends_the_wait(void **state)
{
    (void)state;
    server s;
    start(&s, 60000, 5);
    hr_trainer_pause(s.app->trainer);
    json_int_t seq = post_events(&s, "u1", 3);
    bg_req q = {&s, "GET", "", NULL, 0, NULL};
    snprintf(q.path, sizeof q.path, "/v1/predict?user=u1&item=i1&min_seq=%lld&wait_ms=60000",
             (long long)seq);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, bg_run, &q), 0);
    await_waiters(&s, 1);
    assert_int_equal(hr_http_stop(s.http), 0); /* not abandoned */
    pthread_join(t, NULL);
    /* The answer (applied false) may or may not get out before the daemon
     * closes the connection. */
    if (q.status != 0) {
        assert_int_equal(q.status, 200);
        expect_applied(q.reply, false, seq);
    }
    json_decref(q.reply);
    hr_trainer_resume(s.app->trainer);
    hr_app_close(s.app, true);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_min_seq_waits_for_the_events),
        cmocka_unit_test(test_min_seq_not_applied_in_time),
        cmocka_unit_test(test_min_seq_bad_values),
        cmocka_unit_test(test_stop_ends_the_wait),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

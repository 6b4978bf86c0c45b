/*
 * test_statsring.c - the per-second history of the server's figures
 * (src/statsring.c) and the dashboard's routes (src/http_dash.c): GET
 * /v1/stats/history, the embedded files under /ui/ (Content-Type, ETag and
 * 304, the Content-Security-Policy), the redirect of /, and the explorer's
 * /v1/similar and /v1/user.
 *
 * The ring's own tests take samples by hand (a ring without its thread), so
 * that what each sample holds does not depend on timing; the HTTP test
 * waits, bounded, for the server's ring to hold a sample.
 */
/* ctest-labels: concurrent */
#include "testutil.h"

#include <curl/curl.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "hogrec/app.h"
#include "hogrec/http.h"
#include "hogrec/statsring.h"

#define TOKEN "t0ken"

typedef struct {
    hr_app *app;
    hr_http *http;
    int port;
} server;

static void start(server *s, const char *token)
{
    hr_config c;
    tu_small_config(&c, "");
    c.threads = 1;
    c.http_threads = 2;
    strcpy(c.admin_token, token);
    hr_error e;
    assert_int_equal(hr_app_open(&c, &s->app, &e), HR_OK);
    assert_int_equal(hr_http_start(s->app, &s->http, &e), HR_OK);
    s->port = hr_http_port(s->http);
    hr_config_free(&c);
}

static void stop(server *s)
{
    hr_http_stop(s->http);
    hr_app_close(s->app, true);
}

static void post_events(server *s, const char *body)
{
    json_t *out = NULL;
    assert_int_equal(tu_http(s->port, "POST", "/v1/events", body, NULL, &out), 202);
    json_decref(out);
    hr_trainer_wait_idle(s->app->trainer);
}

static json_t *get_ok(server *s, const char *path)
{
    json_t *out = NULL;
    long st = tu_http(s->port, "GET", path, NULL, NULL, &out);
    if (st != 200)
        fail_msg("GET %s: %ld", path, st);
    assert_non_null(out);
    return out;
}

static void expect_400(server *s, const char *path)
{
    json_t *out = NULL;
    long st = tu_http(s->port, "GET", path, NULL, NULL, &out);
    if (st != 400)
        fail_msg("GET %s: %ld, not 400", path, st);
    const char *code = json_string_value(json_object_get(json_object_get(out, "error"), "code"));
    assert_non_null(code);
    assert_string_equal(code, "invalid");
    json_decref(out);
}

static const char *EVENTS =
    "[{\"user\":\"u1\",\"item\":\"i1\",\"label\":1},{\"user\":\"u2\",\"item\":\"i2\",\"label\":0},"
    "{\"user\":\"u1\",\"item\":\"i3\",\"label\":0},{\"user\":\"u3\",\"item\":\"i1\",\"label\":1}]";

/* Samples hold the interval's rates, the window's figures and the model's
 * size; the ring keeps the last `capacity`, oldest first; since filters. */
static void test_samples_and_ring(void **state)
{
    (void)state;
    server s;
    start(&s, TOKEN);
    hr_statsring *r;
    assert_int_equal(hr_statsring_start(s.app, 3, 0, &r), HR_OK);
    hr_statsring_take(r);
    post_events(&s, EVENTS);
    hr_statsring_take(r);
    json_t *j = hr_statsring_json(r, 0);
    json_t *smp = json_object_get(j, "samples");
    assert_int_equal(json_array_size(smp), 2);
    json_t *a = json_array_get(smp, 0), *b = json_array_get(smp, 1);
    assert_true(json_real_value(json_object_get(b, "accepted_ps")) > 0);
    assert_true(json_real_value(json_object_get(b, "trained_ps")) > 0);
    assert_true(json_real_value(json_object_get(b, "updates_ps")) > 0);
    assert_true(json_real_value(json_object_get(a, "accepted_ps")) == 0);
    assert_int_equal(json_integer_value(json_object_get(b, "users")), 3);
    assert_int_equal(json_integer_value(json_object_get(b, "items")), 3);
    assert_true(json_is_null(json_object_get(a, "loss")));         /* an empty window: no loss */
    assert_true(json_is_null(json_object_get(a, "auc")));
    assert_true(json_is_real(json_object_get(b, "loss")));         /* 4 points in the window */
    assert_true(json_is_real(json_object_get(b, "mean_label")));
    assert_true(fabs(json_real_value(json_object_get(b, "mean_label")) - 0.5) < 1e-9);
    assert_true(json_is_real(json_object_get(json_object_get(b, "lr"), "item")));
    assert_int_equal(json_array_size(json_object_get(j, "groups")), HR_GROUP_COUNT);
    json_int_t t0 = json_integer_value(json_object_get(a, "t_ms"));
    json_int_t t1 = json_integer_value(json_object_get(b, "t_ms"));
    assert_true(t1 >= t0);
    /* the initial schedule is a marker */
    assert_int_equal(json_array_size(json_object_get(j, "markers")), 1);
    json_decref(j);
    /* past the capacity: the oldest go, order stays */
    for (int i = 0; i < 4; i++)
        hr_statsring_take(r);
    assert_int_equal(hr_statsring_count(r), 3);
    j = hr_statsring_json(r, 0);
    smp = json_object_get(j, "samples");
    assert_int_equal(json_array_size(smp), 3);
    json_int_t prev = 0;
    for (size_t i = 0; i < 3; i++) {
        json_int_t t = json_integer_value(json_object_get(json_array_get(smp, i), "t_ms"));
        assert_true(t >= prev && t >= t1);
        prev = t;
    }
    json_decref(j);
    /* since: only newer samples */
    j = hr_statsring_json(r, (uint64_t)prev);
    assert_int_equal(json_array_size(json_object_get(j, "samples")), 0);
    assert_int_equal(json_array_size(json_object_get(j, "markers")), 0);
    json_decref(j);
    hr_statsring_stop(r);
    hr_statsring_stop(NULL);
    stop(&s);
}

/* GET /v1/stats/history: the server's ring fills; a schedule change is a
 * marker; a bad since is a 400 JSON error. */
static void test_history_route(void **state)
{
    (void)state;
    server s;
    start(&s, TOKEN);
    post_events(&s, EVENTS);
    json_t *j = NULL;
    for (int i = 0; i < 600; i++) { /* the sampler runs once a second: 60 s at most */
        j = get_ok(&s, "/v1/stats/history?since=0");
        if (json_array_size(json_object_get(j, "samples")) >= 1)
            break;
        json_decref(j);
        j = NULL;
        usleep(100 * 1000);
    }
    assert_non_null(j);
    assert_int_equal(json_integer_value(json_object_get(j, "capacity")), 3600);
    assert_int_equal(json_array_size(json_object_get(j, "markers")), 1);
    json_decref(j);
    json_t *out = NULL;
    assert_int_equal(tu_http(s.port, "PUT", "/v1/admin/schedule",
                             "{\"type\":\"constant\",\"eta0\":0.05}", "Bearer " TOKEN, &out),
                     200);
    json_decref(out);
    j = get_ok(&s, "/v1/stats/history");
    json_t *mk = json_object_get(j, "markers");
    assert_int_equal(json_array_size(mk), 2);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(mk, 1), "version")), 2);
    json_decref(j);
    expect_400(&s, "/v1/stats/history?since=abc");
    expect_400(&s, "/v1/stats/history?since=-1");
    expect_400(&s, "/v1/stats/history?since=");
    expect_400(&s, "/v1/stats/history?since=12345678901234567890");
    stop(&s);
}

typedef struct {
    char etag[64], csp[512], ctype[128], location[64];
} headers;

static size_t on_header(char *p, size_t size, size_t n, void *cls)
{
    headers *h = cls;
    size_t len = size * n;
    struct {
        const char *name;
        char *dst;
        size_t cap;
    } want[] = {{"ETag: ", h->etag, sizeof h->etag},
                {"Content-Security-Policy: ", h->csp, sizeof h->csp},
                {"Content-Type: ", h->ctype, sizeof h->ctype},
                {"Location: ", h->location, sizeof h->location}};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        size_t nl = strlen(want[i].name);
        if (len > nl + 2 && strncasecmp(p, want[i].name, nl) == 0)
            snprintf(want[i].dst, want[i].cap, "%.*s", (int)(len - nl - 2), p + nl);
    }
    return len;
}

static size_t discard(char *p, size_t size, size_t n, void *cls)
{
    (void)p;
    (void)cls;
    return size * n;
}

static long fetch(server *s, const char *path, const char *inm, headers *h)
{
    memset(h, 0, sizeof *h);
    CURL *c = curl_easy_init();
    assert_non_null(c);
    char url[256], hdr[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", s->port, path);
    struct curl_slist *l = NULL;
    if (inm) {
        snprintf(hdr, sizeof hdr, "If-None-Match: %s", inm);
        l = curl_slist_append(l, hdr);
    }
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, l);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 60L);
    assert_int_equal(curl_easy_perform(c), CURLE_OK);
    long st = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &st);
    curl_slist_free_all(l);
    curl_easy_cleanup(c);
    return st;
}

/* The embedded files: types, ETag revalidation, the CSP; / redirects. */
static void test_ui_files(void **state)
{
    (void)state;
    server s;
    start(&s, "");
    headers h;
    assert_int_equal(fetch(&s, "/", NULL, &h), 302);
    assert_string_equal(h.location, "/ui/");
    assert_int_equal(fetch(&s, "/ui/", NULL, &h), 200);
    assert_true(strncmp(h.ctype, "text/html", 9) == 0);
    assert_non_null(strstr(h.csp, "default-src 'self'"));
    assert_null(strstr(h.csp, "unsafe-inline"));
    assert_true(h.etag[0] == '"');
    char etag[64];
    snprintf(etag, sizeof etag, "%s", h.etag);
    assert_int_equal(fetch(&s, "/ui/", etag, &h), 304);
    assert_int_equal(fetch(&s, "/ui/index.html", etag, &h), 304);
    assert_int_equal(fetch(&s, "/ui/index.html", "\"other\"", &h), 200);
    assert_int_equal(fetch(&s, "/ui/app.js", NULL, &h), 200);
    assert_true(strncmp(h.ctype, "text/javascript", 15) == 0);
    assert_string_not_equal(h.etag, etag); /* a file's own */
    assert_int_equal(fetch(&s, "/ui/style.css", NULL, &h), 200);
    assert_true(strncmp(h.ctype, "text/css", 8) == 0);
    assert_int_equal(fetch(&s, "/ui/nope.js", NULL, &h), 404);
    assert_true(strncmp(h.ctype, "application/json", 16) == 0);
    assert_int_equal(fetch(&s, "/ui", NULL, &h), 404);
    stop(&s);
}

/* /v1/similar: the nearest items by cosine, the item itself left out;
 * /v1/user: known, cold, its items once each. */
static void test_explorer_routes(void **state)
{
    (void)state;
    server s;
    start(&s, "");
    post_events(&s, EVENTS);
    json_t *j = get_ok(&s, "/v1/similar?item=i1&k=5");
    assert_true(json_is_true(json_object_get(j, "known")));
    json_t *items = json_object_get(j, "items");
    assert_int_equal(json_array_size(items), 2); /* i2, i3: not i1 itself */
    double prev = 2;
    for (size_t i = 0; i < json_array_size(items); i++) {
        json_t *it = json_array_get(items, i);
        assert_string_not_equal(json_string_value(json_object_get(it, "item")), "i1");
        double sc = json_real_value(json_object_get(it, "score"));
        assert_true(sc <= prev && sc >= -1.0001 && sc <= 1.0001);
        prev = sc;
    }
    json_decref(j);
    j = get_ok(&s, "/v1/similar?item=i1&k=1");
    assert_int_equal(json_array_size(json_object_get(j, "items")), 1);
    json_decref(j);
    j = get_ok(&s, "/v1/similar?item=nothing");
    assert_true(json_is_false(json_object_get(j, "known")));
    assert_int_equal(json_array_size(json_object_get(j, "items")), 0);
    json_decref(j);
    expect_400(&s, "/v1/similar");
    expect_400(&s, "/v1/similar?item=i1&k=0");
    expect_400(&s, "/v1/similar?item=i1&k=x");
    expect_400(&s, "/v1/similar?item=%FF");
    j = get_ok(&s, "/v1/user?user=u1");
    assert_true(json_is_true(json_object_get(j, "known")));
    json_t *seen = json_object_get(j, "seen");
    assert_int_equal(json_array_size(seen), 2);
    assert_false(strcmp(json_string_value(json_array_get(seen, 0)),
                        json_string_value(json_array_get(seen, 1))) == 0);
    json_decref(j);
    j = get_ok(&s, "/v1/user?user=nobody");
    assert_true(json_is_false(json_object_get(j, "known")));
    assert_true(json_is_true(json_object_get(j, "cold")));
    json_decref(j);
    expect_400(&s, "/v1/user");
    stop(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_samples_and_ring),
        cmocka_unit_test(test_history_route),
        cmocka_unit_test(test_ui_files),
        cmocka_unit_test(test_explorer_routes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

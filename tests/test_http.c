/*
 * test_http.c - integration tests of the HTTP server (src/http.c).
 *
 * Each test starts a real app and server in-process on a free port
 * (port 0, 127.0.0.1) and talks HTTP to it with libcurl, or with a raw
 * socket where curl would fix the request up (two Content-Length headers, no
 * length at all, hand-made chunked bodies). In-process, a test can pause the
 * trainers (hr_trainer_pause), which makes the 429 path deterministic: a
 * batch that fits the queue's capacity but not its free space is refused
 * whole. One test runs the real binary ($HOGREC_BIN serve --port 0) as a
 * child and stops it with SIGTERM.
 *
 * Verdicts never depend on timing; every loop is bounded in count.
 */
/* ctest-labels: concurrent */
#include <arpa/inet.h>
#include <errno.h>
#include <curl/curl.h>
#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "hogrec/api.h"
#include "hogrec/app.h"
#include "hogrec/http.h"
#include "hogrec/serve.h"
#include "helper_faultvfs.h"
#include "testutil.h"

#define TOKEN "t0ken"
#define CHILD_BOUND 120 /* seconds a child may live: generous, one needs about 3 */

typedef struct {
    hr_app *app;
    hr_http *http;
    uint16_t port;
} server;

/* db: SQLite file ("" = no persistence). loading: leave the app loading
 * (hr_app_open_loading only; the test finishes it). */
static void start_app(server *s, int64_t queue_capacity, const char *token, int64_t max_body,
                      const char *db, int64_t http_threads, bool loading)
{
    hr_config c;
    tu_small_config(&c, db);
    c.max_users = 4096;
    c.max_items = 4096;
    c.threads = 2;
    c.http_threads = http_threads;
    c.queue_capacity = queue_capacity;
    c.max_body_bytes = max_body;
    c.max_batch_events = 1000;
    strcpy(c.admin_token, token);
    hr_error e;
    if (loading)
        assert_int_equal(hr_app_open_loading(&c, &s->app, &e), HR_OK);
    else
        assert_int_equal(hr_app_open(&c, &s->app, &e), HR_OK);
    assert_int_equal(hr_http_start(s->app, &s->http, &e), HR_OK);
    s->port = hr_http_port(s->http);
    assert_true(s->port > 0);
    hr_config_free(&c);
}

static void start_full(server *s, int64_t queue_capacity, const char *token, int64_t max_body,
                       const char *db, int64_t http_threads)
{
    start_app(s, queue_capacity, token, max_body, db, http_threads, false);
}

static void start_body(server *s, int64_t queue_capacity, const char *token, int64_t max_body)
{
    start_full(s, queue_capacity, token, max_body, "", 2);
}

static void start(server *s, int64_t queue_capacity, const char *token)
{
    start_body(s, queue_capacity, token, 65536);
}

static void stop(server *s)
{
    hr_http_stop(s->http);
    hr_app_close(s->app, true);
}

/* ---- a libcurl client ---- */

typedef struct {
    char *data;
    size_t len;
} buf;

static size_t on_data(char *p, size_t size, size_t n, void *cls)
{
    buf *b = cls;
    char *d = realloc(b->data, b->len + size * n + 1);
    assert_non_null(d);
    memcpy(d + b->len, p, size * n);
    b->data = d;
    b->len += size * n;
    d[b->len] = 0;
    return size * n;
}

typedef struct {
    long status;
    json_t *json;       /* parsed body or NULL */
    char *text;         /* raw body */
    char retry_after[16];
    char allow[64];
} reply;

static size_t on_header(char *p, size_t size, size_t n, void *cls)
{
    reply *r = cls;
    size_t len = size * n;
    if (len > 13 && strncasecmp(p, "Retry-After: ", 13) == 0)
        snprintf(r->retry_after, sizeof r->retry_after, "%.*s", (int)(len - 15), p + 13);
    if (len > 7 && strncasecmp(p, "Allow: ", 7) == 0)
        snprintf(r->allow, sizeof r->allow, "%.*s", (int)(len - 9), p + 7);
    return len;
}

static reply call(const server *s, const char *method, const char *path, const char *ctype,
                  const char *body, size_t len, const char *auth)
{
    CURL *c = curl_easy_init();
    assert_non_null(c);
    char url[2048];
    snprintf(url, sizeof url, "http://127.0.0.1:%u%s", s->port, path);
    buf b = {0};
    reply r;
    memset(&r, 0, sizeof r);
    struct curl_slist *h = NULL;
    char hdr[300];
    if (ctype) {
        snprintf(hdr, sizeof hdr, "Content-Type: %s", ctype);
        h = curl_slist_append(h, hdr);
    }
    if (auth) {
        snprintf(hdr, sizeof hdr, "Authorization: %s", auth);
        h = curl_slist_append(h, hdr);
    }
    h = curl_slist_append(h, "Expect:");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    if (body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)len);
    }
    if (strcmp(method, "HEAD") == 0)
        curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &r);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 60L);
    CURLcode rc = curl_easy_perform(c);
    if (rc != CURLE_OK)
        fail_msg("curl %s %s: %s", method, path, curl_easy_strerror(rc));
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    r.text = b.data ? b.data : strdup("");
    r.json = json_loads(r.text, 0, NULL);
    return r;
}

static reply get(const server *s, const char *path)
{
    return call(s, "GET", path, NULL, NULL, 0, NULL);
}

static reply post(const server *s, const char *path, const char *body)
{
    return call(s, "POST", path, "application/json", body, strlen(body), NULL);
}

static void done(reply *r)
{
    json_decref(r->json);
    free(r->text);
}

/* Asserts an error reply: the status and {"error": {"code", "message"}}. */
static void expect_error(reply r, long status, const char *code)
{
    if (r.status != status)
        fail_msg("expected %ld, got %ld: %s", status, r.status, r.text);
    json_t *e = json_object_get(r.json, "error");
    assert_true(json_is_object(e));
    assert_true(json_is_string(json_object_get(e, "message")));
    if (code)
        assert_string_equal(json_string_value(json_object_get(e, "code")), code);
    done(&r);
}

static json_int_t jint(json_t *o, const char *path)
{
    /* "a.b" */
    char key[64];
    const char *dot = strchr(path, '.');
    if (dot) {
        snprintf(key, sizeof key, "%.*s", (int)(dot - path), path);
        return jint(json_object_get(o, key), dot + 1);
    }
    json_t *v = json_object_get(o, path);
    assert_true(json_is_integer(v));
    return json_integer_value(v);
}

/* ---- raw socket client ---- */

/* Sends req (len bytes), reads until the peer closes or a whole response
 * with its Content-Length arrived; returns the status code. */
static int raw(const server *s, const char *req, size_t len, char *out, size_t cap)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(s->port)};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    struct timeval tv = {30, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    size_t off = 0;
    while (off < len) {
        ssize_t n = send(fd, req + off, len - off, MSG_NOSIGNAL);
        if (n <= 0)
            break;
        off += (size_t)n;
    }
    size_t got = 0;
    for (int i = 0; i < 1000 && got + 1 < cap; i++) {
        ssize_t n = recv(fd, out + got, cap - 1 - got, 0);
        if (n <= 0)
            break;
        got += (size_t)n;
        out[got] = 0;
        const char *end = strstr(out, "\r\n\r\n");
        const char *cl = strcasestr(out, "Content-Length: ");
        if (end && cl && got >= (size_t)(end + 4 - out) + (size_t)atol(cl + 16))
            break;
    }
    out[got] = 0;
    close(fd);
    int status = 0;
    if (sscanf(out, "HTTP/1.%*d %d", &status) != 1)
        return 0;
    return status;
}

/* ---- tests ---- */

static void test_health_ready_metrics(void **state)
{
    (void)state;
    server s;
    start(&s, 1024, TOKEN);
    reply r = get(&s, "/healthz");
    assert_int_equal(r.status, 200);
    assert_string_equal(json_string_value(json_object_get(r.json, "status")), "ok");
    done(&r);
    r = get(&s, "/readyz");
    assert_int_equal(r.status, 200);
    done(&r);
    atomic_store(&s.app->ready, 0); /* as while loading */
    expect_error(get(&s, "/readyz"), 503, "not_ready");
    atomic_store(&s.app->ready, 1);
    r = call(&s, "HEAD", "/healthz", NULL, NULL, 0, NULL);
    assert_int_equal(r.status, 200);
    done(&r);
    r = get(&s, "/metrics");
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.text, "hogrec_http_requests_total{route=\"healthz\",status=\"2xx\"} 2"));
    assert_non_null(strstr(r.text, "hogrec_http_requests_total{route=\"readyz\",status=\"5xx\"} 1"));
    assert_non_null(strstr(r.text, "hogrec_http_request_duration_seconds_bucket{route=\"healthz\",le=\"+Inf\"} 2"));
    assert_non_null(strstr(r.text, "hogrec_queue_capacity 1024"));
    done(&r);
    stop(&s);
}

static void test_events_predict_stats(void **state)
{
    (void)state;
    server s;
    start(&s, 1024, TOKEN);
    reply r = post(&s, "/v1/events", "{\"user\":\"u1\",\"item\":\"i1\"}");
    assert_int_equal(r.status, 202);
    assert_int_equal(jint(r.json, "accepted"), 1);
    assert_int_equal(jint(r.json, "rejected"), 0);
    assert_int_equal(jint(r.json, "seq"), 1);
    done(&r);
    /* invalid events reported by index, valid ones accepted */
    r = post(&s, "/v1/events",
             "[{\"user\":\"u1\",\"item\":\"i2\",\"label\":0},{\"user\":[1],\"item\":\"i\"},"
             "{\"user\":2,\"item\":3,\"label\":7},{\"user\":\"u2\",\"item\":\"i1\",\"weight\":2}]");
    assert_int_equal(r.status, 202);
    assert_int_equal(jint(r.json, "accepted"), 2);
    assert_int_equal(jint(r.json, "rejected"), 2);
    json_t *errs = json_object_get(r.json, "errors");
    assert_int_equal(json_array_size(errs), 2);
    assert_int_equal(jint(json_array_get(errs, 0), "index"), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(errs, 0), "field")), "user");
    assert_int_equal(jint(json_array_get(errs, 1), "index"), 2);
    done(&r);
    /* an empty batch */
    r = post(&s, "/v1/events", "[]");
    assert_int_equal(r.status, 202);
    assert_int_equal(jint(r.json, "accepted"), 0);
    done(&r);
    /* the same id twice: applied once */
    r = post(&s, "/v1/events", "[{\"user\":\"u3\",\"item\":\"i1\",\"id\":\"e-1\"},"
                               "{\"user\":\"u3\",\"item\":\"i1\",\"id\":\"e-1\"}]");
    assert_int_equal(jint(r.json, "accepted"), 1);
    assert_int_equal(jint(r.json, "duplicates"), 1);
    done(&r);
    r = post(&s, "/v1/events", "{\"user\":\"u3\",\"item\":\"i1\",\"id\":\"e-1\"}");
    assert_int_equal(jint(r.json, "accepted"), 0);
    assert_int_equal(jint(r.json, "duplicates"), 1);
    done(&r);

    hr_trainer_wait_idle(s.app->trainer);
    r = get(&s, "/v1/stats");
    assert_int_equal(r.status, 200);
    assert_int_equal(jint(r.json, "events.accepted"), 4);
    assert_int_equal(jint(r.json, "events.trained"), 4);
    assert_int_equal(jint(r.json, "events.rejected"), 2);
    assert_int_equal(jint(r.json, "queue.capacity"), 1024);
    assert_int_equal(jint(r.json, "model.users"), 3);
    assert_int_equal(jint(r.json, "model.items"), 2);
    assert_int_equal(jint(r.json, "model.k"), 8);
    assert_int_equal(jint(r.json, "schedule.version"), 1);
    assert_true(json_is_object(json_object_get(r.json, "progressive")));
    assert_true(json_is_object(json_object_get(r.json, "freshness_us")));
    done(&r);

    /* predict: POST pairs in order, GET one; unknown ids flagged */
    r = post(&s, "/v1/predict", "{\"pairs\":[{\"user\":\"u1\",\"item\":\"i1\"},"
                                "{\"user\":\"nobody\",\"item\":\"i1\",\"features\":{\"d\":\"x\"}}]}");
    assert_int_equal(r.status, 200);
    json_t *sc = json_object_get(r.json, "scores");
    assert_int_equal(json_array_size(sc), 2);
    double p0 = json_real_value(json_array_get(sc, 0));
    assert_true(p0 > 0 && p0 < 1);
    json_t *unk = json_object_get(r.json, "unknown");
    assert_int_equal(json_array_size(unk), 1);
    assert_int_equal(jint(json_array_get(unk, 0), "index"), 1);
    assert_true(json_is_true(json_object_get(json_array_get(unk, 0), "user")));
    done(&r);
    r = get(&s, "/v1/predict?user=u1&item=i1");
    assert_int_equal(r.status, 200);
    assert_true(fabs(json_real_value(json_object_get(r.json, "score")) - p0) < 1e-6);
    assert_null(json_object_get(r.json, "unknown"));
    done(&r);
    expect_error(get(&s, "/v1/predict?user=u1"), 400, "invalid");
    expect_error(post(&s, "/v1/predict", "{\"pairs\":[{\"user\":{},\"item\":1}]}"), 400, "invalid");
    expect_error(post(&s, "/v1/predict", "{\"pairs\":{}}"), 400, "invalid");
    expect_error(post(&s, "/v1/predict", "{\"pairs\":[1,"), 400, "malformed_json");
    stop(&s);
}

static void test_ndjson_and_chunked(void **state)
{
    (void)state;
    server s;
    start(&s, 1024, TOKEN);
    const char *nd = "{\"user\":\"a\",\"item\":\"x\"}\n\n{\"user\":\"b\",\"item\":\"y\"}\r\n"
                     "not json\n{\"user\":\"c\"}\n{\"user\":\"c\",\"item\":\"x\"}";
    reply r = call(&s, "POST", "/v1/events", "application/x-ndjson", nd, strlen(nd), NULL);
    assert_int_equal(r.status, 202);
    assert_int_equal(jint(r.json, "accepted"), 3);
    assert_int_equal(jint(r.json, "rejected"), 2);
    json_t *errs = json_object_get(r.json, "errors");
    assert_int_equal(jint(json_array_get(errs, 0), "index"), 2);
    assert_int_equal(jint(json_array_get(errs, 1), "index"), 3);
    done(&r);
    /* chunked JSON array, split mid-token */
    char req[1024], out[4096];
    const char *part1 = "[{\"user\":\"ch\",\"it", *part2 = "em\":\"x\"},{\"user\":\"ch\",\"item\":\"y\"}]";
    int n = snprintf(req, sizeof req,
                     "POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n%zx\r\n%s\r\n%zx\r\n%s\r\n0\r\n\r\n",
                     strlen(part1), part1, strlen(part2), part2);
    assert_int_equal(raw(&s, req, (size_t)n, out, sizeof out), 202);
    assert_non_null(strstr(out, "\"accepted\":2"));
    /* chunked NDJSON */
    const char *l1 = "{\"user\":\"nd\",\"item\":\"x\"}\n", *l2 = "{\"user\":\"nd\",\"item\":\"z\"}\n";
    n = snprintf(req, sizeof req,
                 "POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\n"
                 "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n%zx\r\n%s\r\n%zx\r\n%s\r\n0\r\n\r\n",
                 strlen(l1), l1, strlen(l2), l2);
    assert_int_equal(raw(&s, req, (size_t)n, out, sizeof out), 202);
    assert_non_null(strstr(out, "\"accepted\":2"));
    /* an NDJSON body of nothing but garbage cannot be parsed at all */
    expect_error(call(&s, "POST", "/v1/events", "application/x-ndjson", "x\ny\n", 4, NULL), 400,
                 "malformed_json");
    stop(&s);
}

static void test_error_statuses(void **state)
{
    (void)state;
    server s;
    start(&s, 64, TOKEN);
    char out[4096], req[512];
    /* 400 */
    expect_error(post(&s, "/v1/events", "{\"user\":"), 400, "malformed_json");
    expect_error(post(&s, "/v1/events", "42"), 400, "malformed_json");
    expect_error(post(&s, "/v1/events", "\"str\""), 400, "malformed_json");
    expect_error(post(&s, "/v1/events", "{\"user\":1,\"user\":2,\"item\":3}"), 400, NULL);
    /* two Content-Length headers */
    int n = snprintf(req, sizeof req,
                     "POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     "Content-Length: 2\r\nContent-Length: 2\r\nConnection: close\r\n\r\n[]");
    assert_int_equal(raw(&s, req, (size_t)n, out, sizeof out), 400);
    assert_non_null(strstr(out, "Content-Length"));
    n = snprintf(req, sizeof req,
                 "POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 "Content-Length: 2\r\nContent-Length: 5\r\nConnection: close\r\n\r\n[]");
    int st = raw(&s, req, (size_t)n, out, sizeof out);
    assert_true(st == 400 || st == 0); /* MHD may drop the connection itself */
    /* 401 */
    expect_error(get(&s, "/v1/admin/schedule"), 401, "unauthorized");
    expect_error(call(&s, "GET", "/v1/admin/schedule", NULL, NULL, 0, "Bearer wrong"), 401, NULL);
    expect_error(call(&s, "GET", "/v1/admin/schedule", NULL, NULL, 0, "Bearer t0ken2"), 401, NULL);
    expect_error(call(&s, "GET", "/v1/admin/schedule", NULL, NULL, 0, "Basic t0ken"), 401, NULL);
    /* 404 */
    expect_error(get(&s, "/nope"), 404, "not_found");
    expect_error(get(&s, "/v1/events/x"), 404, "not_found");
    /* 405 with Allow */
    reply r = get(&s, "/v1/events");
    assert_string_equal(r.allow, "POST");
    expect_error(r, 405, "method_not_allowed");
    expect_error(call(&s, "DELETE", "/v1/recommend?user=u", NULL, NULL, 0, NULL), 405, NULL);
    expect_error(call(&s, "POST", "/healthz", "application/json", "{}", 2, NULL), 405, NULL);
    /* 411: a body route without a length */
    n = snprintf(req, sizeof req, "POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: "
                                  "application/json\r\nConnection: close\r\n\r\n");
    assert_int_equal(raw(&s, req, (size_t)n, out, sizeof out), 411);
    assert_non_null(strstr(out, "length_required"));
    /* 413: body over max_body_bytes (declared, and chunked without a length) */
    size_t big = 70000;
    char *body = malloc(big + 1);
    memset(body, ' ', big);
    body[0] = '[';
    body[big - 1] = ']';
    body[big] = 0;
    expect_error(call(&s, "POST", "/v1/events", "application/json", body, big, NULL), 413,
                 "payload_too_large");
    free(body);
    char *chunked = malloc(80000);
    size_t off = (size_t)sprintf(chunked, "POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: "
                                          "application/json\r\nTransfer-Encoding: chunked\r\n"
                                          "Connection: close\r\n\r\n");
    for (int i = 0; i < 18; i++) { /* 18 chunks of 4000 bytes = 72000 */
        off += (size_t)sprintf(chunked + off, "fa0\r\n");
        memset(chunked + off, ' ', 4000);
        off += 4000;
        off += (size_t)sprintf(chunked + off, "\r\n");
    }
    off += (size_t)sprintf(chunked + off, "0\r\n\r\n");
    assert_int_equal(raw(&s, chunked, off, out, sizeof out), 413);
    free(chunked);
    /* 413: more events than the queue can ever hold (capacity 64) */
    char *batch = malloc(100 * 40 + 3);
    off = (size_t)sprintf(batch, "[");
    for (int i = 0; i < 65; i++)
        off += (size_t)sprintf(batch + off, "%s{\"user\":%d,\"item\":1}", i ? "," : "", i);
    sprintf(batch + off, "]");
    expect_error(post(&s, "/v1/events", batch), 413, "too_many_events");
    free(batch);
    /* 415 */
    expect_error(call(&s, "POST", "/v1/events", "text/plain", "{}", 2, NULL), 415,
                 "unsupported_media_type");
    expect_error(call(&s, "POST", "/v1/predict", "application/x-ndjson", "{}", 2, NULL), 415, NULL);
    /* 503: checkpoint without persistence */
    expect_error(call(&s, "POST", "/v1/admin/checkpoint", NULL, NULL, 0, "Bearer " TOKEN), 503,
                 "persistence_off");
    /* recommend parameter errors */
    expect_error(get(&s, "/v1/recommend"), 400, "invalid");
    expect_error(get(&s, "/v1/recommend?user=u&k=0"), 400, "invalid");
    expect_error(get(&s, "/v1/recommend?user=u&k=abc"), 400, "invalid");
    expect_error(get(&s, "/v1/recommend?user=u&exclude_seen=maybe"), 400, "invalid");
    /* nothing above changed what was accepted, and the server still serves */
    r = get(&s, "/v1/stats");
    assert_int_equal(r.status, 200);
    assert_int_equal(jint(r.json, "events.accepted"), 0);
    done(&r);
    stop(&s);
}

static void test_admin_disabled_without_token(void **state)
{
    (void)state;
    server s;
    start(&s, 64, "");
    expect_error(call(&s, "GET", "/v1/admin/schedule", NULL, NULL, 0, "Bearer "), 404, "not_found");
    stop(&s);
}

static void test_queue_full_429(void **state)
{
    (void)state;
    server s;
    start(&s, 16, TOKEN);
    hr_trainer_pause(s.app->trainer);
    const char *ten = "[{\"user\":1,\"item\":1},{\"user\":1,\"item\":2},{\"user\":1,\"item\":3},"
                      "{\"user\":1,\"item\":4},{\"user\":1,\"item\":5},{\"user\":1,\"item\":6},"
                      "{\"user\":1,\"item\":7},{\"user\":1,\"item\":8},{\"user\":1,\"item\":9},"
                      "{\"user\":1,\"item\":10,\"id\":\"last\"}]";
    reply r = post(&s, "/v1/events", ten);
    assert_int_equal(r.status, 202);
    done(&r);
    r = post(&s, "/v1/events", ten); /* 10 fit the capacity (16), not the free space (6) */
    assert_string_equal(r.retry_after, "1");
    expect_error(r, 429, "queue_full");
    hr_trainer_resume(s.app->trainer);
    hr_trainer_wait_idle(s.app->trainer);
    r = get(&s, "/v1/stats");
    assert_int_equal(jint(r.json, "events.accepted"), 10);
    assert_int_equal(jint(r.json, "events.refused"), 9); /* "last" was a duplicate */
    assert_int_equal(jint(r.json, "events.trained"), 10);
    done(&r);
    /* the resent batch is accepted whole; its id was released by the 429,
     * but the first batch's "last" is a duplicate */
    r = post(&s, "/v1/events", ten);
    assert_int_equal(r.status, 202);
    assert_int_equal(jint(r.json, "accepted"), 9);
    assert_int_equal(jint(r.json, "duplicates"), 1);
    done(&r);
    stop(&s);
}

typedef struct {
    const server *s;
    int posted;  /* requests answered 202 */
    int other;   /* requests answered otherwise */
} streamer;

static void *stream_events(void *arg)
{
    streamer *st = arg;
    char body[2048];
    for (int i = 0; i < 150; i++) {
        size_t off = (size_t)sprintf(body, "[");
        for (int j = 0; j < 10; j++)
            off += (size_t)sprintf(body + off, "%s{\"user\":\"s%d\",\"item\":\"it%d\",\"label\":%d}",
                                   j ? "," : "", (i * 7 + j) % 31, (i + j * 3) % 17, (i + j) & 1);
        sprintf(body + off, "]");
        CURL *c = curl_easy_init();
        char url[128];
        snprintf(url, sizeof url, "http://127.0.0.1:%u/v1/events", st->s->port);
        struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
        curl_easy_setopt(c, CURLOPT_URL, url);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
        buf b = {0};
        curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
        long status = 0;
        if (curl_easy_perform(c) == CURLE_OK)
            curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
        if (status == 202)
            st->posted++;
        else
            st->other++;
        free(b.data);
        curl_slist_free_all(h);
        curl_easy_cleanup(c);
    }
    return NULL;
}

static void test_schedule_change_while_streaming(void **state)
{
    (void)state;
    server s;
    start(&s, 1 << 16, TOKEN);
    streamer st = {&s, 0, 0};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, stream_events, &st), 0);
    const char *auth = "Bearer " TOKEN;
    for (int v = 0; v < 5; v++) {
        char body[256];
        snprintf(body, sizeof body,
                 "{\"type\":\"invpow\",\"eta0\":%g,\"t0\":1000,\"power\":0.5,"
                 "\"multipliers\":{\"item\":%g}}", 0.05 * (v + 1), 1.0 + v);
        reply r = call(&s, "PUT", "/v1/admin/schedule", "application/json", body, strlen(body), auth);
        assert_int_equal(r.status, 200);
        assert_int_equal(jint(r.json, "version"), v + 2);
        assert_true(fabs(json_real_value(json_object_get(r.json, "eta0")) - 0.05 * (v + 1)) < 1e-12);
        done(&r);
    }
    /* invalid schedules: 400 naming the field, nothing installed */
    const char *bad[] = {"{\"type\":\"constant\",\"eta0\":-1}", "{\"type\":\"warp\",\"eta0\":1}",
                         "{\"type\":\"constant\",\"eta0\":\"x\"}", "{\"eta0\":1}",
                         "{\"type\":\"constant\",\"eta0\":0.1,\"optimizer\":\"ftrl\"}", "[1]", "{"};
    const char *field[] = {"eta0", "type", "eta0", "type", "optimizer", NULL, NULL};
    for (size_t i = 0; i < HR_ARRAY_LEN(bad); i++) {
        reply r = call(&s, "PUT", "/v1/admin/schedule", "application/json", bad[i], strlen(bad[i]),
                       auth);
        if (r.status != 400)
            fail_msg("%s: %ld %s", bad[i], r.status, r.text);
        if (field[i])
            assert_non_null(strstr(json_string_value(json_object_get(json_object_get(r.json, "error"),
                                                                     "message")),
                                   field[i]));
        done(&r);
    }
    pthread_join(t, NULL);
    assert_int_equal(st.other, 0);
    assert_int_equal(st.posted, 150);
    hr_trainer_wait_idle(s.app->trainer);
    reply r = call(&s, "GET", "/v1/admin/schedule", NULL, NULL, 0, auth);
    assert_int_equal(jint(r.json, "version"), 6);
    done(&r);
    r = call(&s, "GET", "/v1/admin/schedule/history", NULL, NULL, 0, auth);
    assert_int_equal(r.status, 200);
    assert_int_equal(json_array_size(json_object_get(r.json, "history")), 6);
    done(&r);
    r = get(&s, "/v1/stats");
    assert_int_equal(jint(r.json, "events.accepted"), 1500);
    assert_int_equal(jint(r.json, "events.trained"), 1500);
    assert_int_equal(jint(r.json, "schedule.version"), 6);
    done(&r);
    r = call(&s, "GET", "/v1/admin/config", NULL, NULL, 0, auth);
    assert_int_equal(r.status, 200);
    assert_string_equal(json_string_value(json_object_get(r.json, "admin_token")), "(set)");
    done(&r);
    stop(&s);
}

/* GET /v1/admin/schedule/history is a read: the loss after a change is
 * noted by the trainers' maintenance thread, not by the GET. */
static void test_schedule_history_get_is_a_read(void **state)
{
    (void)state;
    server s;
    start(&s, 1 << 16, TOKEN);
    const char *auth = "Bearer " TOKEN;
    hr_app *app = s.app;
    /* A window of updates (progress_window: 10000) after version 1. */
    enum { N = 10240 };
    hr_event *evs = calloc(N, sizeof *evs);
    assert_non_null(evs);
    for (unsigned e = 0; e < N; e++) {
        char id[32];
        snprintf(id, sizeof id, "u%u", e % 101);
        assert_int_equal(hr_model_intern(app->model, HR_TABLE_USER, id, strlen(id), &evs[e].user,
                                         NULL), HR_OK);
        snprintf(id, sizeof id, "i%u", e % 37);
        assert_int_equal(hr_model_intern(app->model, HR_TABLE_ITEM, id, strlen(id), &evs[e].item,
                                         NULL), HR_OK);
        evs[e].label = (float)(e % 2);
        evs[e].weight = 1;
        evs[e].flags = HR_EV_EXPLICIT_LABEL;
    }
    hr_error err;
    for (unsigned e = 0; e < N; e += 1024) {
        uint64_t seq;
        assert_int_equal(hr_ingest_submit(app->ingest, evs + e, NULL, NULL, 1024, true, &seq, &err),
                         HR_OK);
    }
    hr_trainer_wait_idle(app->trainer);
    /* Noted with no GET made (bounded wait for the maintenance tick). */
    hr_sched_change h[2];
    for (int i = 0; i < 3000; i++) {
        assert_int_equal(hr_schedbox_history(app->sched, h, 2), 1);
        if (!isnan(h[0].loss_after))
            break;
        struct timespec ts = {0, 10 * 1000000};
        nanosleep(&ts, NULL);
    }
    assert_true(isfinite(h[0].loss_after));
    /* With the trainers (and their maintenance thread) stopped, a change
     * whose window has passed (installed at update 0) stays unmeasured: a
     * GET that wrote would note it. Two GETs answer the same. */
    hr_trainer_stop(app->trainer, true, NULL);
    hr_schedule sc = *hr_schedbox_current(app->sched);
    sc.eta0 /= 2;
    assert_int_equal(hr_schedbox_swap(app->sched, &sc, 0, NAN, NULL, &err), HR_OK);
    reply r1 = call(&s, "GET", "/v1/admin/schedule/history", NULL, NULL, 0, auth);
    reply r2 = call(&s, "GET", "/v1/admin/schedule/history", NULL, NULL, 0, auth);
    assert_int_equal(r1.status, 200);
    assert_string_equal(r1.text, r2.text);
    json_t *hist = json_object_get(r1.json, "history");
    assert_int_equal(json_array_size(hist), 2);
    double shown = json_real_value(json_object_get(json_array_get(hist, 0), "loss_after"));
    assert_true(fabs(shown - h[0].loss_after) <= 1e-7 * h[0].loss_after); /* 9 digits */
    assert_true(json_is_null(json_object_get(json_array_get(hist, 1), "loss_after")));
    assert_int_equal(hr_schedbox_history(app->sched, h, 2), 2);
    assert_true(isnan(h[1].loss_after));
    done(&r1);
    done(&r2);
    free(evs);
    stop(&s);
}

typedef struct {
    char item[32];
    double score;
} ranked;

static int by_score_desc(const void *a, const void *b)
{
    const ranked *x = a, *y = b;
    return x->score > y->score ? -1 : x->score < y->score;
}

static void test_recommend_against_reference(void **state)
{
    (void)state;
    server s;
    start(&s, 1 << 16, TOKEN);
    /* 40 items, 6 users with varied labels: a model with distinct scores */
    char body[65536];
    size_t off = (size_t)sprintf(body, "[");
    int nev = 0;
    for (int pass = 0; pass < 3; pass++)
        for (int u = 0; u < 6; u++)
            for (int i = 0; i < 40; i++)
                if ((u * 13 + i * 7 + pass) % 5 != 0)
                    off += (size_t)sprintf(body + off, "%s{\"user\":\"u%d\",\"item\":\"i%d\",\"label\":%d}",
                                           nev++ ? "," : "", u, i, (u + i) % 3 == 0);
    sprintf(body + off, "]");
    assert_true(nev <= 1000);
    reply r = post(&s, "/v1/events", body);
    assert_int_equal(r.status, 202);
    done(&r);
    /* u9 has seen only i0 and i1 */
    r = post(&s, "/v1/events", "[{\"user\":\"u9\",\"item\":\"i0\"},{\"user\":\"u9\",\"item\":\"i1\"}]");
    done(&r);
    hr_trainer_wait_idle(s.app->trainer);
    hr_trainer_pause(s.app->trainer); /* a still model for the comparison */

    /* scalar reference: hr_model_predict for every item, ranked */
    const hr_model *m = s.app->model;
    ranked ref[64];
    int n = 0;
    for (int i = 0; i < 40; i++) {
        hr_event ev;
        memset(&ev, 0, sizeof ev);
        char id[32];
        int len = snprintf(id, sizeof id, "i%d", i);
        ev.user = hr_model_lookup(m, HR_TABLE_USER, "u9", 2);
        ev.item = hr_model_lookup(m, HR_TABLE_ITEM, id, (size_t)len);
        assert_true(ev.item != HR_ID_NONE);
        if (i < 2)
            continue; /* seen */
        strcpy(ref[n].item, id);
        ref[n++].score = hr_model_predict(m, &ev);
    }
    qsort(ref, (size_t)n, sizeof *ref, by_score_desc);
    r = get(&s, "/v1/recommend?user=u9&k=5");
    assert_int_equal(r.status, 200);
    assert_null(json_object_get(r.json, "fallback"));
    json_t *items = json_object_get(r.json, "items");
    assert_int_equal(json_array_size(items), 5);
    for (size_t i = 0; i < 5; i++) {
        json_t *it = json_array_get(items, i);
        const char *name = json_string_value(json_object_get(it, "item"));
        double sc = json_real_value(json_object_get(it, "score"));
        assert_true(strcmp(name, "i0") != 0 && strcmp(name, "i1") != 0);
        /* same score as the reference for that item, and as good as the k-th */
        for (int j = 0; j < n; j++)
            if (strcmp(ref[j].item, name) == 0)
                assert_true(fabs(ref[j].score - sc) < 1e-5);
        assert_true(sc >= ref[4].score - 1e-5);
        if (fabs(ref[i].score - (i + 1 < 5 ? ref[i + 1].score : -1)) > 1e-5 &&
            (i == 0 || fabs(ref[i].score - ref[i - 1].score) > 1e-5))
            assert_string_equal(name, ref[i].item); /* no near-tie: exact rank */
    }
    done(&r);
    /* exclude_seen=false brings seen items back; exclude= drops named ones */
    r = get(&s, "/v1/recommend?user=u9&k=40&exclude_seen=false&exclude=i3,i4,nosuch");
    items = json_object_get(r.json, "items");
    assert_int_equal(json_array_size(items), 38);
    int seen_back = 0;
    for (size_t i = 0; i < json_array_size(items); i++) {
        const char *name = json_string_value(json_object_get(json_array_get(items, i), "item"));
        assert_true(strcmp(name, "i3") != 0 && strcmp(name, "i4") != 0);
        seen_back += !strcmp(name, "i0") || !strcmp(name, "i1");
    }
    assert_int_equal(seen_back, 2);
    done(&r);
    /* k > items: everything eligible */
    r = get(&s, "/v1/recommend?user=u9&k=1000");
    assert_int_equal(json_array_size(json_object_get(r.json, "items")), 38);
    done(&r);
    /* unknown user: the most popular items, marked */
    r = get(&s, "/v1/recommend?user=stranger&k=3");
    assert_int_equal(r.status, 200);
    assert_string_equal(json_string_value(json_object_get(r.json, "fallback")), "popular");
    items = json_object_get(r.json, "items");
    assert_int_equal(json_array_size(items), 3);
    assert_true(json_real_value(json_object_get(json_array_get(items, 0), "score")) >=
                json_real_value(json_object_get(json_array_get(items, 2), "score")));
    done(&r);
    hr_trainer_resume(s.app->trainer);
    stop(&s);
}

static void test_jsontestsuite_n_files(void **state)
{
    (void)state;
    const char *dir = tu_shared_data("jsontestsuite/test_parsing");
    if (!dir)
        TU_SKIP("jsontestsuite not found under ../shared/data (or $HOGREC_SHARED_DATA)");
    char dirpath[4096];
    snprintf(dirpath, sizeof dirpath, "%s", dir);
    server s;
    start_body(&s, 1024, TOKEN, 1 << 20); /* some n_* files are 100 kB */
    DIR *d = opendir(dirpath);
    assert_non_null(d);
    struct dirent *de;
    int files = 0;
    while ((de = readdir(d)) != NULL && files < 1000) {
        if (strncmp(de->d_name, "n_", 2) != 0)
            continue;
        char path[8192];
        snprintf(path, sizeof path, "%s/%s", dirpath, de->d_name);
        FILE *f = fopen(path, "rb");
        assert_non_null(f);
        char *body = malloc(1 << 20);
        size_t len = fread(body, 1, (1 << 20) - 1, f);
        fclose(f);
        reply r = call(&s, "POST", "/v1/events", "application/json", body, len, NULL);
        if (r.status != 400)
            fail_msg("%s: expected 400, got %ld %s", de->d_name, r.status, r.text);
        done(&r);
        r = call(&s, "POST", "/v1/predict", "application/json", body, len, NULL);
        if (r.status != 400)
            fail_msg("%s (predict): expected 400, got %ld", de->d_name, r.status);
        done(&r);
        free(body);
        files++;
    }
    closedir(d);
    print_message("[          ] %d n_* bodies answered 400\n", files);
    assert_true(files > 0);
    reply r = get(&s, "/healthz");
    assert_int_equal(r.status, 200);
    done(&r);
    r = get(&s, "/v1/stats");
    assert_int_equal(jint(r.json, "events.accepted"), 0);
    done(&r);
    stop(&s);
}

/* The real binary: listens on a free port, logs it, exits 0 on SIGTERM. */
static void test_serve_binary_sigterm(void **state)
{
    (void)state;
    const char *bin = getenv("HOGREC_BIN");
    if (!bin || access(bin, X_OK) != 0)
        TU_SKIP("HOGREC_BIN not set or not executable (run through ctest)");
    char *argv[] = {(char *)bin, "serve", "--port", "0", "--db", "", "--threads", "1",
                    "--max-users", "1024", "--max-items", "1024", NULL};
    tu_child ch;
    tu_child_spawn(&ch, argv, CHILD_BOUND, NULL, NULL);
    /* Wait for "ready" (after "listening": the log tail, if any, is
     * replayed in between). No assertion may fail while the child runs:
     * it would outlive the test and hold ctest's output open. */
    json_t *ready = tu_child_log_until(&ch, "ready", NULL, 0);
    int json_lines = ch.non_json == 0; /* every log line is one JSON object */
    long st_events = 0, st_health = 0;
    if (ch.port && ready) {
        server s = {NULL, NULL, (uint16_t)ch.port};
        reply r = post(&s, "/v1/events", "{\"user\":\"a\",\"item\":\"b\"}");
        st_events = r.status;
        done(&r);
        r = get(&s, "/healthz");
        st_health = r.status;
        done(&r);
    }
    json_decref(ready);
    if (!ch.port || !ready || !json_lines) {
        kill(ch.pid, SIGKILL);
        tu_child_wait(&ch);
        fail_msg("no listening and ready lines in the log (json lines: %d)", json_lines);
    }
    kill(ch.pid, SIGTERM);
    int status = tu_child_wait(&ch);
    assert_int_equal(st_events, 202);
    assert_int_equal(st_health, 200);
    assert_true(status != -1 && WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

/* ---- events with persistence: the commit wait does not hold a pool thread ---- */

/* A request from a worker thread: no cmocka assertions there (they longjmp);
 * status 0 when curl fails. */
static reply tcall(const server *s, const char *method, const char *path, const char *body)
{
    reply r;
    memset(&r, 0, sizeof r);
    CURL *c = curl_easy_init();
    if (!c) {
        r.text = strdup("");
        return r;
    }
    char url[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%u%s", s->port, path);
    buf b = {0};
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    h = curl_slist_append(h, "Expect:");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    if (body)
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 60L);
    if (curl_easy_perform(c) == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    r.text = b.data ? b.data : strdup("");
    r.json = json_loads(r.text, 0, NULL);
    return r;
}

static json_int_t jget(json_t *o, const char *a, const char *b, const char *c)
{
    json_t *v = json_object_get(json_object_get(json_object_get(o, a), b), c);
    return json_is_integer(v) ? json_integer_value(v) : -1;
}

#define POSTERS 3
#define POSTS 20
#define PER_POST 5

typedef struct {
    const server *s;
    int id;
    int ok, bad;          /* 202s; anything else, or a 202 not yet committed */
    json_int_t accepted;  /* events the 202s accepted */
    json_int_t max_seq;
    char first_bad[256];
} poster;

/* Posts POSTS batches; after each 202 the stats must show its seq committed
 * (a 202 promises a durable event). */
static void *post_batches(void *arg)
{
    poster *p = arg;
    char body[1024];
    for (int i = 0; i < POSTS; i++) {
        size_t off = (size_t)sprintf(body, "[");
        for (int j = 0; j < PER_POST; j++)
            off += (size_t)sprintf(body + off, "%s{\"user\":\"a%d\",\"item\":\"b%d\",\"label\":%d}",
                                   j ? "," : "", p->id * 7 + j, (i + j) % 13, (i + j) & 1);
        sprintf(body + off, "]");
        reply r = tcall(p->s, "POST", "/v1/events", body);
        json_t *seq = json_object_get(r.json, "seq");
        if (r.status == 202 && json_is_integer(seq)) {
            p->ok++;
            p->accepted += json_integer_value(json_object_get(r.json, "accepted"));
            json_int_t sq = json_integer_value(seq);
            if (sq > p->max_seq)
                p->max_seq = sq;
            reply st = tcall(p->s, "GET", "/v1/stats", NULL);
            json_int_t committed = jget(st.json, "checkpoint", "event_log", "committed_seq");
            if (committed < sq && !p->bad++)
                snprintf(p->first_bad, sizeof p->first_bad, "202 seq %lld, committed %lld",
                         (long long)sq, (long long)committed);
            done(&st);
        } else if (!p->bad++) {
            snprintf(p->first_bad, sizeof p->first_bad, "%ld: %.200s", r.status, r.text);
        }
        done(&r);
    }
    return NULL;
}

typedef struct {
    const server *s;
    int ok, bad;
} predictor;

static void *predict_loop(void *arg)
{
    predictor *p = arg;
    for (int i = 0; i < 40; i++) {
        reply r = tcall(p->s, "GET", "/v1/predict?user=a1&item=b2", NULL);
        if (r.status == 200)
            p->ok++;
        else
            p->bad++;
        done(&r);
    }
    return NULL;
}

/* The fault-VFS hook that holds the event log's commit (on the committer
 * thread, inside its first write) until the test releases it. */
static pthread_mutex_t hold_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t hold_cv = PTHREAD_COND_INITIALIZER;
static int hold_state; /* 0 idle, 1 a commit is held, 2 released */

static void hold_commit(void)
{
    pthread_mutex_lock(&hold_mu);
    hold_state = 1;
    pthread_cond_broadcast(&hold_cv);
    while (hold_state != 2)
        pthread_cond_wait(&hold_cv, &hold_mu);
    pthread_mutex_unlock(&hold_mu);
}

static void hold_next_commit(void)
{
    pthread_mutex_lock(&hold_mu);
    hold_state = 0;
    pthread_mutex_unlock(&hold_mu);
    fv_on_write(".db-events-wal", 1, hold_commit);
}

static void wait_held(void)
{
    pthread_mutex_lock(&hold_mu);
    while (hold_state != 1)
        pthread_cond_wait(&hold_cv, &hold_mu);
    pthread_mutex_unlock(&hold_mu);
}

static void release_commit(void)
{
    fv_on_write(NULL, 0, NULL);
    pthread_mutex_lock(&hold_mu);
    hold_state = 2;
    pthread_cond_broadcast(&hold_cv);
    pthread_mutex_unlock(&hold_mu);
}

typedef struct {
    const server *s;
    const char *body;
    reply r;
    atomic_int answered;
} one_post;

static void *post_one(void *arg)
{
    one_post *p = arg;
    p->r = tcall(p->s, "POST", "/v1/events", p->body);
    atomic_store(&p->answered, 1);
    return NULL;
}

/* Many posters and predictors at once: every 202 is committed when it
 * arrives and the log holds every accepted event. */
static void test_events_durable_concurrent(void **state)
{
    (void)state;
    fv_install();
    const char *dir = tu_tmpdir();
    char db[512];
    snprintf(db, sizeof db, "%s/t.db", dir);
    server s;
    start_full(&s, 8192, TOKEN, 65536, db, 2);
    poster ps[POSTERS];
    predictor pr[2];
    pthread_t tp[POSTERS], tq[2];
    for (int i = 0; i < POSTERS; i++) {
        ps[i] = (poster){.s = &s, .id = i};
        assert_int_equal(pthread_create(&tp[i], NULL, post_batches, &ps[i]), 0);
    }
    for (int i = 0; i < 2; i++) {
        pr[i] = (predictor){.s = &s};
        assert_int_equal(pthread_create(&tq[i], NULL, predict_loop, &pr[i]), 0);
    }
    json_int_t accepted = 0, max_seq = 0;
    for (int i = 0; i < POSTERS; i++) {
        pthread_join(tp[i], NULL);
        if (ps[i].bad)
            fail_msg("poster %d: %d bad, first: %s", i, ps[i].bad, ps[i].first_bad);
        assert_int_equal(ps[i].ok, POSTS);
        accepted += ps[i].accepted;
        if (ps[i].max_seq > max_seq)
            max_seq = ps[i].max_seq;
    }
    for (int i = 0; i < 2; i++) {
        pthread_join(tq[i], NULL);
        assert_int_equal(pr[i].bad, 0);
    }
    assert_int_equal(accepted, POSTERS * POSTS * PER_POST);
    assert_int_equal(max_seq, accepted); /* seqs 1..accepted, none lost */
    reply r = get(&s, "/v1/stats");
    assert_int_equal(r.status, 200);
    assert_int_equal(jint(r.json, "events.accepted"), accepted);
    assert_int_equal(jget(r.json, "checkpoint", "event_log", "last_seq"), accepted);
    assert_true(jget(r.json, "checkpoint", "event_log", "committed_seq") >= accepted);
    done(&r);
    stop(&s);

    /* Reopened, the log (and the final checkpoint) account for them all. */
    start_full(&s, 8192, TOKEN, 65536, db, 2);
    r = get(&s, "/v1/stats");
    assert_int_equal(jget(r.json, "checkpoint", "event_log", "last_seq"), accepted);
    done(&r);
    stop(&s);
    tu_rmtree(dir);
}

/* With one pool thread: an events request waiting for a held commit does not
 * hold that thread (a predict is answered meanwhile); released, it gets its
 * 202. A held commit that then fails answers 503. */
static void test_events_commit_wait_does_not_block(void **state)
{
    (void)state;
    fv_install();
    const char *dir = tu_tmpdir();
    char db[512];
    snprintf(db, sizeof db, "%s/t.db", dir);
    server s;
    start_full(&s, 8192, TOKEN, 65536, db, 1);
    reply r = post(&s, "/v1/events", "{\"user\":\"u1\",\"item\":\"i1\"}");
    assert_int_equal(r.status, 202);
    done(&r);

    /* held, then committed */
    hold_next_commit();
    one_post p = {.s = &s, .body = "{\"user\":\"u2\",\"item\":\"i2\",\"id\":\"x1\"}"};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, post_one, &p), 0);
    wait_held();
    r = get(&s, "/v1/predict?user=u1&item=i1");
    assert_int_equal(r.status, 200);
    done(&r);
    r = get(&s, "/healthz");
    assert_int_equal(r.status, 200);
    done(&r);
    assert_int_equal(atomic_load(&p.answered), 0); /* still waiting for the commit */
    release_commit();
    pthread_join(t, NULL);
    if (p.r.status != 202)
        fail_msg("expected 202, got %ld: %s", p.r.status, p.r.text);
    assert_int_equal(jint(p.r.json, "seq"), 2);
    done(&p.r);

    /* held, then failed: 503, and the id may be resent */
    hold_next_commit();
    one_post q = {.s = &s, .body = "{\"user\":\"u3\",\"item\":\"i3\",\"id\":\"x2\"}"};
    assert_int_equal(pthread_create(&t, NULL, post_one, &q), 0);
    wait_held();
    r = get(&s, "/v1/predict?user=u1&item=i1");
    assert_int_equal(r.status, 200);
    done(&r);
    assert_int_equal(atomic_load(&q.answered), 0);
    fv_fail_writes(".db-events-wal", SQLITE_IOERR_WRITE);
    release_commit();
    pthread_join(t, NULL);
    expect_error(q.r, 503, "unavailable");

    /* Recovery (the log probes every second; bounded), then the resend. */
    fv_fail_writes(NULL, 0);
    long ready = 0;
    for (int i = 0; i < 3000 && ready != 200; i++) {
        r = get(&s, "/readyz");
        ready = r.status;
        done(&r);
        if (ready != 200) {
            struct timespec ts = {0, 10 * 1000000L};
            nanosleep(&ts, NULL);
        }
    }
    assert_int_equal(ready, 200);
    r = post(&s, "/v1/events", q.body);
    assert_int_equal(r.status, 202);
    assert_int_equal(jint(r.json, "accepted"), 1);
    assert_int_equal(jint(r.json, "duplicates"), 0);
    done(&r);

    /* Stopping with a request suspended on a held commit: the stop waits for
     * it, nothing hangs once the commit goes through. */
    hold_next_commit();
    one_post w = {.s = &s, .body = "{\"user\":\"u4\",\"item\":\"i4\"}"};
    assert_int_equal(pthread_create(&t, NULL, post_one, &w), 0);
    wait_held();
    hr_http_quiesce(s.http);
    release_commit();
    stop(&s);
    pthread_join(t, NULL);
    assert_int_equal(w.r.status, 202);
    done(&w.r);
    tu_rmtree(dir);
}

/* ---- serving while the event log replays ---- */

static void test_loading_then_ready(void **state)
{
    (void)state;
    const char *dir = tu_tmpdir();
    char db[512];
    snprintf(db, sizeof db, "%s/t.db", dir);
    server s;
    /* a first life leaves events in the log for the second to replay */
    start_full(&s, 8192, TOKEN, 65536, db, 2);
    reply r = post(&s, "/v1/events", "[{\"user\":\"a\",\"item\":\"x\"},{\"user\":\"b\",\"item\":\"y\"}]");
    assert_int_equal(r.status, 202);
    done(&r);
    hr_http_stop(s.http);
    hr_app_close(s.app, false); /* no drain, but the log has them */

    start_app(&s, 8192, TOKEN, 65536, db, 2, true);
    r = get(&s, "/readyz");
    expect_error(r, 503, "not_ready");
    r = post(&s, "/v1/events", "{\"user\":\"c\",\"item\":\"z\"}");
    expect_error(r, 503, "loading");
    r = get(&s, "/v1/predict?user=a&item=x");
    assert_int_equal(r.status, 200); /* predictions are answered while loading */
    done(&r);
    r = get(&s, "/healthz");
    assert_int_equal(r.status, 200);
    done(&r);
    r = call(&s, "POST", "/v1/admin/checkpoint", NULL, NULL, 0, "Bearer " TOKEN);
    expect_error(r, 503, "loading");

    hr_error e;
    assert_int_equal(hr_app_finish_loading(s.app, &e), HR_OK);
    r = get(&s, "/readyz");
    assert_int_equal(r.status, 200);
    done(&r);
    r = post(&s, "/v1/events", "{\"user\":\"c\",\"item\":\"z\"}");
    assert_int_equal(r.status, 202);
    json_t *o = json_loads(r.text, 0, NULL);
    assert_int_equal(json_integer_value(json_object_get(o, "seq")), 3); /* after the replayed 1, 2 */
    json_decref(o);
    done(&r);
    stop(&s);
    tu_rmtree(dir);
}

/* ---- every error is JSON, no input gets a 5xx ---- */

/* The body of a raw reply (after the header block), or "". */
static const char *raw_body(const char *out)
{
    const char *b = strstr(out, "\r\n\r\n");
    return b ? b + 4 : "";
}

/* Asserts a raw reply is status with a JSON error body of code (or any). */
static void expect_raw_error(const char *out, int got, int status, const char *code)
{
    if (got != status)
        fail_msg("expected %d, got %d: %.300s", status, got, out);
    assert_non_null(strcasestr(out, "Content-Type: application/json"));
    json_t *v = json_loads(raw_body(out), 0, NULL);
    if (!v)
        fail_msg("body is not JSON: %.300s", raw_body(out));
    json_t *e = json_object_get(v, "error");
    assert_true(json_is_string(json_object_get(e, "message")));
    if (code)
        assert_string_equal(json_string_value(json_object_get(e, "code")), code);
    json_decref(v);
}

/* A reply to a bad value: never a 5xx; a 4xx is the JSON error; a 2xx is
 * JSON too (but /metrics, which is text). head: a HEAD reply, which has no
 * body to check. what: for the failure message. */
static void expect_no_5xx(reply r, bool json_2xx, bool head, const char *what)
{
    if (r.status >= 500 || r.status < 200)
        fail_msg("%s: got %ld: %.200s", what, r.status, r.text);
    if (head) {
        done(&r);
        return;
    }
    if (r.status >= 400) {
        json_t *e = json_object_get(r.json, "error");
        if (!json_is_string(json_object_get(e, "code")) ||
            !json_is_string(json_object_get(e, "message")))
            fail_msg("%s: %ld without the JSON error: %.200s", what, r.status, r.text);
    } else if (json_2xx && !r.json) {
        fail_msg("%s: %ld not JSON: %.200s", what, r.status, r.text);
    }
    done(&r);
}

#define BIG_VALUE 100000 /* bytes of a "100 KB" value */

/* Query-string values: invalid UTF-8, empty, 100 KB, control characters,
 * a NUL byte. */
static const char *const bad_query_values[] = {"u%FF", "%C3%28", "", NULL /* big */,
                                               "%01%1Fx%7F", "a%00b", "%0D%0Ax:%20y"};

static void test_every_route_bad_values(void **state)
{
    (void)state;
    server s;
    start(&s, 1024, TOKEN);
    reply r = post(&s, "/v1/events", "[{\"user\":\"u1\",\"item\":\"i1\"},{\"user\":\"u1\",\"item\":\"i2\"}]");
    assert_int_equal(r.status, 202);
    done(&r);
    char *big = malloc(BIG_VALUE + 1);
    memset(big, 'a', BIG_VALUE);
    big[BIG_VALUE] = 0;
    char *url = malloc(BIG_VALUE + 512), what[256];
    /* GET routes: each parameter they read, plus one they do not */
    static const struct {
        const char *path;
        const char *params[5]; /* name=value pairs of a valid request */
        bool admin, json;
    } gets[] = {
        {"/v1/predict", {"user=u1", "item=i1", "x=1"}, false, true},
        {"/v1/recommend", {"user=u1", "k=2", "exclude_seen=true", "exclude=i1", "x=1"}, false, true},
        {"/v1/stats", {"x=1"}, false, true},
        {"/healthz", {"x=1"}, false, true},
        {"/readyz", {"x=1"}, false, true},
        {"/metrics", {"x=1"}, false, false},
        {"/v1/admin/schedule", {"x=1"}, true, true},
        {"/v1/admin/schedule/history", {"x=1"}, true, true},
        {"/v1/admin/config", {"x=1"}, true, true},
    };
    for (size_t g = 0; g < sizeof gets / sizeof gets[0]; g++) {
        for (size_t p = 0; p < 5 && gets[g].params[p]; p++) {
            for (size_t v = 0; v < sizeof bad_query_values / sizeof bad_query_values[0]; v++) {
                const char *val = bad_query_values[v] ? bad_query_values[v] : big;
                size_t off = (size_t)sprintf(url, "%s", gets[g].path);
                for (size_t q = 0; q < 5 && gets[g].params[q]; q++) {
                    const char *pv = gets[g].params[q];
                    if (q == p)
                        off += (size_t)sprintf(url + off, "%c%.*s=%s", q ? '&' : '?',
                                               (int)(strchr(pv, '=') - pv), pv, val);
                    else
                        off += (size_t)sprintf(url + off, "%c%s", q ? '&' : '?', pv);
                }
                snprintf(what, sizeof what, "GET %.120s (value %zu)", url, v);
                for (int m = 0; m < 2; m++) /* GET, HEAD */
                    expect_no_5xx(call(&s, m ? "HEAD" : "GET", url, NULL, NULL, 0,
                                       gets[g].admin ? "Bearer " TOKEN : NULL),
                                  gets[g].json, m == 1, what);
            }
        }
    }
    /* Body routes: each documented field set to a bad value. Raw invalid
     * UTF-8 and a raw control character make the body not JSON. */
    static const char *const bad_json_values[] = {"\"u\xff\"", "\"\"", NULL /* big */,
                                                  "\"\\u0001\\u001f\\u0000\"", "\"a\x01" "b\"",
                                                  "true", "null", "[]", "{}", "-1e999", "1e308"};
    static const struct {
        const char *method, *path, *fmt; /* fmt: the body, %s = the value */
        const char *fields[12];          /* field names substituted, for the message */
        bool admin;
    } bodies[] = {
        {"POST", "/v1/events", "{\"user\":%s,\"item\":\"i1\"}", {"user"}, false},
        {"POST", "/v1/events", "{\"user\":\"u1\",\"item\":%s}", {"item"}, false},
        {"POST", "/v1/events", "{\"user\":\"u1\",\"item\":\"i1\",\"label\":%s}", {"label"}, false},
        {"POST", "/v1/events", "{\"user\":\"u1\",\"item\":\"i1\",\"rating\":%s}", {"rating"}, false},
        {"POST", "/v1/events", "{\"user\":\"u1\",\"item\":\"i1\",\"weight\":%s}", {"weight"}, false},
        {"POST", "/v1/events", "{\"user\":\"u1\",\"item\":\"i1\",\"ts\":%s}", {"ts"}, false},
        {"POST", "/v1/events", "{\"user\":\"u1\",\"item\":\"i1\",\"id\":%s}", {"id"}, false},
        {"POST", "/v1/events", "{\"user\":\"u1\",\"item\":\"i1\",\"features\":{\"f\":%s}}",
         {"features.f"}, false},
        {"POST", "/v1/events", "{\"user\":\"u1\",\"item\":\"i1\",\"features\":%s}", {"features"},
         false},
        {"POST", "/v1/events", "[%s]", {"[event]"}, false},
        {"POST", "/v1/predict", "{\"pairs\":[{\"user\":%s,\"item\":\"i1\"}]}", {"user"}, false},
        {"POST", "/v1/predict", "{\"pairs\":[{\"user\":\"u1\",\"item\":%s}]}", {"item"}, false},
        {"POST", "/v1/predict", "{\"pairs\":[{\"user\":\"u1\",\"item\":\"i1\",\"features\":%s}]}",
         {"features"}, false},
        {"POST", "/v1/predict", "{\"pairs\":%s}", {"pairs"}, false},
        {"PUT", "/v1/admin/schedule", "{\"optimizer\":%s}", {"optimizer"}, true},
        {"PUT", "/v1/admin/schedule", "{\"type\":%s}", {"type"}, true},
        {"PUT", "/v1/admin/schedule", "{\"eta0\":%s}", {"eta0"}, true},
        {"PUT", "/v1/admin/schedule", "{\"multipliers\":{\"item\":%s}}", {"multipliers.item"},
         true},
        {"PUT", "/v1/admin/schedule", "{\"staleness\":{\"enabled\":%s}}", {"staleness.enabled"},
         true},
        {"PUT", "/v1/admin/schedule", "{\"ftrl\":%s}", {"ftrl"}, true},
    };
    char *body = malloc(BIG_VALUE + 512), *bigstr = malloc(BIG_VALUE + 3);
    sprintf(bigstr, "\"%s\"", big);
    for (size_t b = 0; b < sizeof bodies / sizeof bodies[0]; b++) {
        for (size_t v = 0; v < sizeof bad_json_values / sizeof bad_json_values[0]; v++) {
            const char *val = bad_json_values[v] ? bad_json_values[v] : bigstr;
            int n = sprintf(body, bodies[b].fmt, val);
            snprintf(what, sizeof what, "%s %s %s=value %zu", bodies[b].method, bodies[b].path,
                     bodies[b].fields[0], v);
            expect_no_5xx(call(&s, bodies[b].method, bodies[b].path, "application/json", body,
                               (size_t)n, bodies[b].admin ? "Bearer " TOKEN : NULL),
                          true, false, what);
        }
    }
    /* and the server still answers */
    r = get(&s, "/v1/predict?user=u1&item=i1");
    assert_int_equal(r.status, 200);
    done(&r);
    free(body);
    free(bigstr);
    free(url);
    free(big);
    stop(&s);
}

/* The cases the issue reported, each with its exact answer. */
static void test_reported_cases(void **state)
{
    (void)state;
    server s;
    start(&s, 1024, TOKEN);
    /* an id that is not UTF-8 was a 500 "out of memory" */
    expect_error(get(&s, "/v1/recommend?user=u%FF"), 400, "invalid");
    expect_error(get(&s, "/v1/predict?user=u%FF&item=i1"), 400, "invalid");
    expect_error(get(&s, "/v1/recommend?user=u1&usr=u2"), 400, "invalid"); /* unknown */
    expect_error(get(&s, "/v1/recommend?user=u1&user=u2"), 400, "invalid"); /* twice */
    /* a control character is a valid id, echoed escaped */
    reply r = get(&s, "/v1/recommend?user=u%01");
    assert_int_equal(r.status, 200);
    assert_string_equal(json_string_value(json_object_get(r.json, "user")), "u\x01");
    done(&r);
    /* "label": true is not a number */
    r = post(&s, "/v1/events", "{\"user\":\"u1\",\"item\":\"i1\",\"label\":true}");
    assert_int_equal(r.status, 202);
    assert_int_equal(jint(r.json, "accepted"), 0);
    assert_int_equal(jint(r.json, "rejected"), 1);
    assert_string_equal(
        json_string_value(json_object_get(json_array_get(json_object_get(r.json, "errors"), 0),
                                          "field")),
        "label");
    done(&r);
    /* a body route without Content-Type: 415 */
    char out[8192], req[512];
    static const char *const body_routes[] = {"POST /v1/events", "POST /v1/predict",
                                              "PUT /v1/admin/schedule"};
    for (size_t i = 0; i < 3; i++) {
        int n = snprintf(req, sizeof req,
                         "%s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " TOKEN
                         "\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
                         body_routes[i]);
        expect_raw_error(out, raw(&s, req, (size_t)n, out, sizeof out), 415,
                         "unsupported_media_type");
    }
    r = get(&s, "/v1/stats");
    assert_int_equal(jint(r.json, "events.accepted"), 0);
    done(&r);
    stop(&s);
}

/* A declared Content-Length over max_body_bytes is answered 413 before any
 * body is sent, with or without Expect: 100-continue (and never 100). */
/* A declared body a little over max_body_bytes (here 8x, within the
 * server's drain bound) is read before the 413 is answered: a client still
 * sending it must be able to send every byte and then read the answer
 * (answered at once, the server closed a socket with unread data, which
 * resets it: curl then failed with "Failed sending data to the peer").
 * Five rounds, each sending 512 KiB, then a GET on the same connection. */
static void test_413_after_body_read(void **state)
{
    (void)state;
    server s;
    start(&s, 1024, TOKEN);
    size_t body = 8 * 65536, cap = body + 256;
    char *req = malloc(cap), *out = malloc(4096);
    for (int round = 0; round < 5; round++) {
        int hl = snprintf(req, cap,
                          "POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          "Content-Length: %zu\r\n\r\n",
                          body);
        memset(req + hl, ' ', body);
        size_t len = (size_t)hl + body;
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        assert_true(fd >= 0);
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(s.port)};
        inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
        struct timeval tv = {30, 0};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
        for (size_t off = 0; off < len;) {
            ssize_t n = send(fd, req + off, len - off, MSG_NOSIGNAL);
            if (n <= 0)
                fail_msg("round %d: send failed after %zu of %zu bytes: %s", round, off, len,
                         n < 0 ? strerror(errno) : "closed");
            off += (size_t)n;
        }
        size_t got = 0;
        for (int i = 0; i < 1000 && got + 1 < 4096; i++) {
            ssize_t n = recv(fd, out + got, 4095 - got, 0);
            if (n < 0)
                fail_msg("round %d: reading the answer: %s", round, strerror(errno));
            if (n == 0)
                break;
            got += (size_t)n;
            out[got] = 0;
            const char *end = strstr(out, "\r\n\r\n"), *cl = strcasestr(out, "Content-Length: ");
            if (end && cl && got >= (size_t)(end + 4 - out) + (size_t)atol(cl + 16))
                break; /* the whole answer (the connection may stay open) */
        }
        out[got] = 0;
        int status = 0;
        if (sscanf(out, "HTTP/1.%*d %d", &status) != 1 || status != 413 ||
            !strstr(out, "payload_too_large"))
            fail_msg("round %d: answer %.200s", round, out);
        /* the body was read, so the connection is still good for the next
         * request (answered at once, it was closed under the body) */
        static const char next[] = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
        if (send(fd, next, sizeof next - 1, MSG_NOSIGNAL) != (ssize_t)(sizeof next - 1))
            fail_msg("round %d: the connection was closed after the 413", round);
        ssize_t n = recv(fd, out, 4095, 0);
        out[n > 0 ? n : 0] = 0;
        if (sscanf(out, "HTTP/1.%*d %d", &status) != 1 || status != 200)
            fail_msg("round %d: no answer on the same connection after the 413 (%.120s)", round,
                     out);
        close(fd);
    }
    free(req);
    free(out);
    stop(&s);
}

static void test_declared_length_413_at_once(void **state)
{
    (void)state;
    server s;
    start(&s, 1024, TOKEN);
    char out[4096], req[512];
    for (int expect = 0; expect < 2; expect++) {
        int n = snprintf(req, sizeof req,
                         "POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         "%sContent-Length: 10000000000\r\n\r\n",
                         expect ? "Expect: 100-continue\r\n" : "");
        /* no body is sent: only an answer that needs none ends the read
         * (the raw client waits up to 30 s, far beyond any normal answer) */
        int st = raw(&s, req, (size_t)n, out, sizeof out);
        assert_null(strstr(out, "100 Continue"));
        expect_raw_error(out, st, 413, "payload_too_large");
    }
    stop(&s);
}

/* The answers libmicrohttpd gives before the handler runs carry the JSON
 * error too; and framing it would get wrong is refused at once. */
static void test_library_answers_json(void **state)
{
    (void)state;
    server s;
    start(&s, 1024, TOKEN);
    size_t cap = 200000;
    char *req = malloc(cap), *out = malloc(8192);
    int n;
    /* a 50 KB query string (over memory_limit): 414 */
    n = sprintf(req, "GET /v1/predict?user=");
    memset(req + n, 'a', 50000);
    n += 50000;
    n += sprintf(req + n, "&item=i HTTP/1.1\r\nHost: x\r\n\r\n");
    expect_raw_error(out, raw(&s, req, (size_t)n, out, 8192), 414, "uri_too_long");
    /* a 100 KB value */
    n = sprintf(req, "GET /v1/recommend?user=");
    memset(req + n, 'a', BIG_VALUE);
    n += BIG_VALUE;
    n += sprintf(req + n, " HTTP/1.1\r\nHost: x\r\n\r\n");
    expect_raw_error(out, raw(&s, req, (size_t)n, out, 8192), 414, "uri_too_long");
    /* a 40 KB header: 431 */
    n = sprintf(req, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ");
    memset(req + n, 'a', 40000);
    n += 40000;
    n += sprintf(req + n, "\r\n\r\n");
    expect_raw_error(out, raw(&s, req, (size_t)n, out, 8192), 431, "header_too_large");
    /* malformed requests: 400 */
    static const struct {
        const char *req;
        int status;
        const char *code;
    } cases[] = {
        {"GET /healthz HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n", 400, "bad_request"},
        {"GET /healthz\r\nHost: x\r\n\r\n", 400, "bad_request"},
        {"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n", 505, "http_version_not_supported"},
        {"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
         "Transfer-Encoding: chunked\r\n\r\nzz\r\n[]\r\n0\r\n\r\n",
         400, "bad_request"},
        {"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
         "Transfer-Encoding: chunked\r\n\r\nfffffffffffffffffffff\r\n[]\r\n0\r\n\r\n",
         413, "payload_too_large"},
        /* an unknown coding MHD would read until the connection closes */
        {"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
         "Transfer-Encoding: gzip\r\n\r\n",
         400, "bad_request"},
        {"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
         "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n[]\r\n0\r\n\r\n",
         400, "bad_request"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        expect_raw_error(out, raw(&s, cases[i].req, strlen(cases[i].req), out, 8192),
                         cases[i].status, cases[i].code);
    reply r = get(&s, "/healthz");
    assert_int_equal(r.status, 200);
    done(&r);
    free(req);
    free(out);
    stop(&s);
}

/* ---- shutdown is bounded: a request that does not end does not keep the
 * process alive. The server runs as a child: this test program exec'ed
 * again with HOGREC_TEST_SERVE_CHILD set (a fresh process, so the fault VFS
 * can hold a write in it), running hr_serve_main with a short
 * --shutdown-timeout.
 * fd 3 takes commands ('h': hold the next write to the file named by
 * HOGREC_TEST_HOLD, 'r': release it); fd 4 answers ('h' armed, 'H' a write
 * is held). The parent reads the child's log lines from its stderr. No
 * assertion is about time: each wait is for an event, and a reaper kills
 * the child after a generous bound (CHILD_BOUND), which ends every wait and
 * fails the test. ---- */

#define CHILD_ENV "HOGREC_TEST_SERVE_CHILD"

static void hold_and_tell(void)
{
    char c = 'H';
    if (write(4, &c, 1) != 1)
        _exit(90);
    hold_commit();
}

static void *child_control(void *arg)
{
    (void)arg;
    char c;
    while (read(3, &c, 1) == 1) {
        if (c == 'h') {
            pthread_mutex_lock(&hold_mu);
            hold_state = 0;
            pthread_mutex_unlock(&hold_mu);
            fv_on_write(getenv("HOGREC_TEST_HOLD"), 1, hold_and_tell);
            if (write(4, &c, 1) != 1)
                _exit(91);
        } else if (c == 'r') {
            release_commit();
        }
    }
    return NULL;
}

static int serve_child(void)
{
    fv_install();
    pthread_t t;
    if (pthread_create(&t, NULL, child_control, NULL) != 0)
        return 92;
    pthread_detach(t);
    char *argv[] = {"serve", "--port", "0", "--db", getenv(CHILD_ENV), "--admin-token", TOKEN,
                    "--shutdown-timeout", getenv("HOGREC_TEST_TIMEOUT"), "--threads", "1",
                    "--http-threads", "2",
                    "--k", "8", "--context-bits", "8", "--chunk-rows", "64", "--max-users", "4096",
                    "--max-items", "4096", "--checkpoint-interval", "0",
                    "--checkpoint-events", "0", "--negative-sampling", "off", NULL};
    return hr_serve_main((int)HR_ARRAY_LEN(argv) - 1, argv);
}

typedef struct {
    tu_child ch; /* its log, port and reaper */
    pid_t pid;
    int ctl;     /* write end of its fd 3 */
    int ack;     /* read end of its fd 4 */
    uint16_t port;
} serve_child_t;

typedef struct {
    const char *db, *hold, *timeout;
    int ctl_read, ack_write; /* the child's ends of the command pipes */
} child_setup;

/* In the child, before the exec: its command pipes on fds 3 and 4, and
 * the settings serve_child reads. */
static void child_env(void *arg)
{
    child_setup *c = arg;
    dup2(c->ctl_read, 3);
    dup2(c->ack_write, 4);
    for (int fd = 5; fd < 64; fd++)
        close(fd);
    setenv(CHILD_ENV, c->db, 1);
    setenv("HOGREC_TEST_HOLD", c->hold, 1);
    setenv("HOGREC_TEST_TIMEOUT", c->timeout, 1);
    /* The child abandons threads on purpose (a stuck MHD pool): under
     * TSan that is no finding. */
    char tsan[1024];
    const char *prev = getenv("TSAN_OPTIONS");
    snprintf(tsan, sizeof tsan, "%s report_thread_leaks=0", prev ? prev : "");
    setenv("TSAN_OPTIONS", tsan, 1);
}

/* Starts the child on db with --shutdown-timeout timeout; 'h' will hold
 * writes to files ending in hold. Waits for its "ready" line; returns false
 * (child gone) if it never came. */
static bool child_start(serve_child_t *ch, const char *db, const char *hold,
                        const char *timeout)
{
    int ctlp[2], ackp[2];
    assert_int_equal(pipe(ctlp), 0);
    assert_int_equal(pipe(ackp), 0);
    child_setup setup = {db, hold, timeout, ctlp[0], ackp[1]};
    char *argv[] = {"/proc/self/exe", NULL};
    tu_child_spawn(&ch->ch, argv, CHILD_BOUND, child_env, &setup);
    close(ctlp[0]);
    close(ackp[1]);
    ch->pid = ch->ch.pid;
    ch->ctl = ctlp[1];
    ch->ack = ackp[0];
    json_t *ready = tu_child_log_until(&ch->ch, "ready", NULL, 0);
    ch->port = (uint16_t)ch->ch.port;
    json_decref(ready);
    return ready && ch->port != 0;
}

/* Sends a command to the child and reads the answer byte ('h' or 'H');
 * false if the child is gone. */
static bool child_cmd(serve_child_t *ch, char cmd, char want)
{
    if (cmd && write(ch->ctl, &cmd, 1) != 1)
        return false;
    if (!want)
        return true;
    char c = 0;
    return read(ch->ack, &c, 1) == 1 && c == want;
}

/* Reads log lines until one whose msg is `until` (returned, new) or EOF
 * (NULL). */
static json_t *child_log_until(serve_child_t *ch, const char *until)
{
    return tu_child_log_until(&ch->ch, until, NULL, 0);
}

/* Waits for the child's exit; returns its wait status, or -1 if the reaper
 * had to kill it. */
static int child_wait(serve_child_t *ch)
{
    return tu_child_wait(&ch->ch);
}

static void child_close(serve_child_t *ch)
{
    close(ch->ctl);
    close(ch->ack);
}

typedef struct {
    uint16_t port;
    const char *method, *path, *body, *auth;
    long status; /* 0 if the connection ended without an answer */
} bg_request;

static void *bg_request_run(void *arg)
{
    bg_request *b = arg;
    b->status = tu_http(b->port, b->method, b->path, b->body ? b->body : "", b->auth, NULL);
    return NULL;
}

static json_int_t jpath(json_t *o, const char *a, const char *b)
{
    json_t *v = json_object_get(o, a);
    if (b)
        v = json_object_get(v, b);
    return json_is_integer(v) ? json_integer_value(v) : -1;
}

/* An events request suspended on a commit that does not end: SIGTERM logs
 * it as abandoned once shutdown_timeout runs out; the commit then ends, the
 * final checkpoint is written, the process exits 0 and the database opens
 * with the event in its log. */
static void test_sigterm_with_suspended_request(void **state)
{
    (void)state;
    const char *dir = tu_tmpdir();
    char db[512];
    snprintf(db, sizeof db, "%s/t.db", dir);
    serve_child_t ch;
    bool up = child_start(&ch, db, ".db-events-wal", "2");
    bool armed = up && child_cmd(&ch, 'h', 'h');
    bg_request req = {ch.port, "POST", "/v1/events", "{\"user\":\"u\",\"item\":\"i\"}", NULL, 0};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, bg_request_run, &req), 0);
    bool held = armed && child_cmd(&ch, 0, 'H');
    kill(ch.pid, SIGTERM);
    json_t *ab = held ? child_log_until(&ch, "shutdown abandoned requests") : NULL;
    child_cmd(&ch, 'r', 0); /* the disk comes back */
    json_t *stopped = child_log_until(&ch, "stopped");
    json_t *watchdog = child_log_until(&ch, "shutdown abandoned");
    int status = child_wait(&ch);
    pthread_join(t, NULL);
    child_close(&ch);
    assert_true(up && armed && held);
    assert_non_null(ab);
    /* suspended on the commit, or (SIGTERM came first) waiting for it on
     * its pool thread: handed to its handler and abandoned either way */
    assert_int_equal(jpath(ab, "answering", NULL), 1);
    assert_int_equal(jpath(ab, "requests", NULL), 1);
    assert_int_equal(jpath(ab, "routes", "events"), 1);
    assert_non_null(stopped);
    assert_int_equal(jpath(stopped, "abandoned_requests", NULL), 1);
    assert_null(watchdog);
    assert_true(status != -1 && WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    json_decref(ab);
    json_decref(stopped);

    server s; /* the final checkpoint and the log are whole */
    start_full(&s, 8192, TOKEN, 65536, db, 2);
    reply r = get(&s, "/v1/stats");
    assert_int_equal(jget(r.json, "checkpoint", "event_log", "last_seq"), 1);
    done(&r);
    stop(&s);
    tu_rmtree(dir);
}

/* A handler that never returns (a checkpoint whose write hangs) and holds
 * what the final checkpoint needs: SIGTERM abandons the request, the
 * watchdog then ends the process with status 1 naming the stage, and the
 * database still opens. */
static void test_sigterm_with_stuck_handler(void **state)
{
    (void)state;
    const char *dir = tu_tmpdir();
    char db[512];
    snprintf(db, sizeof db, "%s/t.db", dir);
    serve_child_t ch;
    bool up = child_start(&ch, db, ".db-wal", "1");
    bool armed = up && child_cmd(&ch, 'h', 'h');
    bg_request req = {ch.port, "POST", "/v1/admin/checkpoint", NULL, "Bearer " TOKEN, 0};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, bg_request_run, &req), 0);
    bool held = armed && child_cmd(&ch, 0, 'H');
    kill(ch.pid, SIGTERM);
    json_t *ab = held ? child_log_until(&ch, "shutdown abandoned requests") : NULL;
    json_t *watchdog = ab ? child_log_until(&ch, "shutdown abandoned") : NULL;
    int status = child_wait(&ch);
    pthread_join(t, NULL);
    child_close(&ch);
    assert_true(up && armed && held);
    assert_non_null(ab);
    assert_int_equal(jpath(ab, "routes", "admin_checkpoint"), 1);
    assert_int_equal(jpath(ab, "answering", NULL), 1); /* in its handler */
    assert_non_null(watchdog);
    assert_string_equal(json_string_value(json_object_get(watchdog, "stage")),
                        "drain and final checkpoint");
    assert_string_equal(json_string_value(json_object_get(watchdog, "reason")), "timeout");
    assert_int_equal(req.status, 0); /* never answered */
    assert_true(status != -1 && WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 1);
    json_decref(ab);
    json_decref(watchdog);

    server s;
    start_full(&s, 8192, TOKEN, 65536, db, 2);
    stop(&s);
    tu_rmtree(dir);
}

int main(void)
{
    if (getenv(CHILD_ENV))
        return serve_child();
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_health_ready_metrics),
        cmocka_unit_test(test_events_predict_stats),
        cmocka_unit_test(test_ndjson_and_chunked),
        cmocka_unit_test(test_error_statuses),
        cmocka_unit_test(test_admin_disabled_without_token),
        cmocka_unit_test(test_queue_full_429),
        cmocka_unit_test(test_schedule_change_while_streaming),
        cmocka_unit_test(test_schedule_history_get_is_a_read),
        cmocka_unit_test(test_recommend_against_reference),
        cmocka_unit_test(test_jsontestsuite_n_files),
        cmocka_unit_test(test_serve_binary_sigterm),
        cmocka_unit_test(test_events_durable_concurrent),
        cmocka_unit_test(test_events_commit_wait_does_not_block),
        cmocka_unit_test(test_loading_then_ready),
        cmocka_unit_test(test_every_route_bad_values),
        cmocka_unit_test(test_reported_cases),
        cmocka_unit_test(test_declared_length_413_at_once),
        cmocka_unit_test(test_413_after_body_read),
        cmocka_unit_test(test_library_answers_json),
        cmocka_unit_test(test_sigterm_with_suspended_request),
        cmocka_unit_test(test_sigterm_with_stuck_handler),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}

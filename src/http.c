/*
 * http.c - the HTTP server; see http.h.
 *
 * Design: libmicrohttpd with its epoll internal thread pool. Each request
 * is a small state machine in the access handler:
 *   first call   allocate the request state, find the route, check headers
 *                (two Content-Length headers, size, method, media type,
 *                auth) and remember the first error, if any (a declared
 *                body over max_body_bytes, 413, and framing in doubt, 400,
 *                are answered at once, before any body is read);
 *   middle calls buffer the body up to max_body_bytes (past it: discard and
 *                remember 413);
 *   last call    answer: the remembered error or the route's handler.
 * Every answer is given on the last call (a GET answered on the first call
 * would be sent with Connection: close). Every error goes through
 * reply_error(), which writes {"error": {"code", "message"}}, and every
 * answer is counted (route, status class, latency) for /metrics as it is
 * queued. Request state is freed once, in the completed callback.
 *
 * POST /v1/events with persistence does not block a pool thread on the
 * event log's commit (an fsync): the last call submits without waiting,
 * suspends the connection and asks the log to call events_durable() once
 * the commit is done; that callback (on the log's committer thread) stores
 * the outcome in the request and resumes the connection; MHD then calls the
 * handler again, which answers 202 or 503 from the stored outcome. A
 * suspended connection is neither timed out nor closed by MHD, so the
 * request state outlives the callback. hr_http_stop waits until every
 * request that was suspended has completed before stopping the daemon.
 *
 * Stopping is bounded (shutdown_timeout): requests still in flight when it
 * runs out - a handler that does not return, a commit that does not end -
 * are logged and abandoned with the daemon; requests that arrive meanwhile
 * on open connections get 503 shutting_down without touching the app.
 *
 * Limits (connections, per-IP connections, idle timeout, per-connection
 * memory) are daemon options from the config; body size and events per
 * batch are checked here.
 *
 * Threads: handlers run on MHD pool threads and call the engine's
 * thread-safe functions (ingest, model lookups and predictions, stats).
 */
#include "hogrec/http.h"

#include <arpa/inet.h>
#include <cblas.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <microhttpd.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "hogrec/api.h"
#include "hogrec/events.h"
#include "hogrec/json.h"
#include "hogrec/log.h"
#include "hogrec/persist.h"
#include "hogrec/recommend.h"
#include "hogrec/sgd.h"
#include "hogrec/topk.h"
#include "http_mhd.h"

#define TOPK_BATCH 32             /* recommendations scored in one sgemm at most */

/* ---- routes ---- */

typedef enum {
    R_EVENTS,
    R_PREDICT,
    R_RECOMMEND,
    R_STATS,
    R_SCHEDULE,
    R_SCHEDULE_HISTORY,
    R_CHECKPOINT,
    R_CONFIG,
    R_HEALTHZ,
    R_READYZ,
    R_METRICS,
    R_NOT_FOUND,
    R_COUNT
} route_id;

enum { M_GET = 1, M_POST = 2, M_PUT = 4, M_HEAD = 8 };

typedef struct {
    const char *path;   /* exact path */
    const char *label;  /* for /metrics */
    unsigned methods;   /* M_* allowed */
    unsigned body;      /* methods that require a JSON body */
    bool ndjson;        /* accepts application/x-ndjson */
    bool admin;         /* behind the bearer token */
    const char *allow;  /* Allow header for 405 */
} route;

static const route routes[R_COUNT] = {
    [R_EVENTS] = {"/v1/events", "events", M_POST, M_POST, true, false, "POST"},
    [R_PREDICT] = {"/v1/predict", "predict", M_GET | M_POST | M_HEAD, M_POST, false, false,
                   "GET, HEAD, POST"},
    [R_RECOMMEND] = {"/v1/recommend", "recommend", M_GET | M_HEAD, 0, false, false, "GET, HEAD"},
    [R_STATS] = {"/v1/stats", "stats", M_GET | M_HEAD, 0, false, false, "GET, HEAD"},
    [R_SCHEDULE] = {"/v1/admin/schedule", "admin_schedule", M_GET | M_PUT | M_HEAD, M_PUT, false,
                    true, "GET, HEAD, PUT"},
    [R_SCHEDULE_HISTORY] = {"/v1/admin/schedule/history", "admin_schedule_history",
                            M_GET | M_HEAD, 0, false, true, "GET, HEAD"},
    [R_CHECKPOINT] = {"/v1/admin/checkpoint", "admin_checkpoint", M_POST, 0, false, true, "POST"},
    [R_CONFIG] = {"/v1/admin/config", "admin_config", M_GET | M_HEAD, 0, false, true, "GET, HEAD"},
    [R_HEALTHZ] = {"/healthz", "healthz", M_GET | M_HEAD, 0, false, false, "GET, HEAD"},
    [R_READYZ] = {"/readyz", "readyz", M_GET | M_HEAD, 0, false, false, "GET, HEAD"},
    [R_METRICS] = {"/metrics", "metrics", M_GET | M_HEAD, 0, false, false, "GET, HEAD"},
    [R_NOT_FOUND] = {NULL, "not_found", 0, 0, false, false, ""},
};

static route_id route_of(const char *url)
{
    for (int i = 0; i < R_NOT_FOUND; i++)
        if (strcmp(url, routes[i].path) == 0)
            return (route_id)i;
    return R_NOT_FOUND;
}

static unsigned method_of(const char *m)
{
    if (strcmp(m, "GET") == 0)
        return M_GET;
    if (strcmp(m, "POST") == 0)
        return M_POST;
    if (strcmp(m, "PUT") == 0)
        return M_PUT;
    if (strcmp(m, "HEAD") == 0)
        return M_HEAD;
    return 0;
}

/* ---- metrics ---- */

/* Status classes counted per route. */
enum { S_2XX, S_4XX, S_429, S_5XX, S_COUNT };
static const char *const status_label[S_COUNT] = {"2xx", "4xx", "429", "5xx"};

typedef struct {
    atomic_uint_fast64_t by_status[S_COUNT]; /* requests answered */
    hr_hist latency_us;                      /* first call to completion, microseconds */
} route_metrics;

struct hr_http {
    hr_app *app;                 /* borrowed */
    struct MHD_Daemon *daemon;
    uint16_t port;
    size_t max_body;             /* bytes */
    hr_topk_batcher *topk;       /* concurrent recommendations scored together */
    route_metrics metrics[R_COUNT];
    pthread_mutex_t rate_mu;     /* guards the updates/s sample */
    double rate_t;               /* wall time of the last sample */
    uint64_t rate_updates;       /* updates at that time */
    double rate;                 /* updates/s between the last two samples */
    pthread_mutex_t susp_mu;     /* guards suspended */
    pthread_cond_t susp_cv;      /* suspended dropped to 0 */
    unsigned suspended;          /* events requests suspended for a commit and
                                    not completed yet */
    atomic_uint inflight[R_COUNT]; /* requests from first call to completed, by route */
    atomic_bool stopping;        /* hr_http_stop began: new requests get 503 */
};

/* ---- per-request state ---- */

/* Where a POST /v1/events with persistence is. */
enum { EV_NONE, EV_WAITING, EV_DONE };

/* What POST /v1/events keeps from submitting to answering. */
typedef struct {
    int phase;            /* EV_*: EV_DONE is set by events_durable before resuming */
    json_t *errors;       /* owned until answered: per-event errors */
    size_t ok, rejected, dups; /* counts of events */
    uint64_t first;       /* seq of the first accepted event */
    hr_status st;         /* the commit's outcome (EV_DONE) */
    char why[256];        /* why it failed */
} events_state;

typedef struct {
    route_id route;
    unsigned method;
    uint64_t t0;          /* hr_now_ns() at the first call */
    int status;           /* HTTP status answered, 0 until then */
    /* the first error found before the body arrived */
    int err_status;
    const char *err_code;
    char err_msg[192];
    const char *allow;    /* Allow header with a 405 */
    bool ndjson;          /* body is application/x-ndjson */
    char *body;           /* owned; NUL-terminated */
    size_t len, cap;
    struct MHD_Connection *conn; /* borrowed: the connection (while suspended) */
    events_state ev;      /* POST /v1/events */
} request;

static void request_fail(request *r, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void request_fail(request *r, int status, const char *code, const char *fmt, ...)
{
    if (r->err_status)
        return; /* keep the first */
    r->err_status = status;
    r->err_code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->err_msg, sizeof r->err_msg, fmt, ap);
    va_end(ap);
}

/* ---- replies ---- */

static __thread hr_http *tls_http; /* the server of the request being answered */

/* Counts the answer and its latency (first call to response queued) for
 * /metrics, before the client can see the response. */
static void record(const request *r)
{
    hr_http *h = tls_http;
    if (!h)
        return;
    route_metrics *m = &h->metrics[r->route];
    int s = r->status == 429 ? S_429 : r->status >= 500 ? S_5XX : r->status >= 400 ? S_4XX : S_2XX;
    atomic_fetch_add_explicit(&m->by_status[s], 1, memory_order_relaxed);
    hr_hist_add(&m->latency_us, (hr_now_ns() - r->t0) / 1000);
}

static enum MHD_Result reply_text(struct MHD_Connection *c, request *r, int status,
                                  char *text, size_t len, const char *ctype)
{
    struct MHD_Response *resp =
        text ? MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE)
             : MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    if (!resp) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    if (status == 429)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, "1");
    if (status == 405 && r->allow)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, r->allow);
    if (status == 401)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    r->status = status;
    record(r);
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)status, resp);
    MHD_destroy_response(resp);
    return ret;
}

/* Answers a JSON body (taken). */
static enum MHD_Result reply_json(struct MHD_Connection *c, request *r, int status, json_t *body)
{
    char *s = body ? json_dumps(body, JSON_COMPACT | JSON_REAL_PRECISION(9)) : NULL;
    json_decref(body);
    if (!s)
        return reply_text(c, r, 500, strdup("{\"error\":{\"code\":\"internal\",\"message\":"
                                            "\"out of memory\"}}"),
                          strlen("{\"error\":{\"code\":\"internal\",\"message\":"
                                 "\"out of memory\"}}"),
                          "application/json");
    return reply_text(c, r, status, s, strlen(s), "application/json");
}

/* The one error path: {"error": {"code": code, "message": printf(fmt)}}. */
static enum MHD_Result reply_error(struct MHD_Connection *c, request *r, int status,
                                   const char *code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static enum MHD_Result reply_error(struct MHD_Connection *c, request *r, int status,
                                   const char *code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return reply_json(c, r, status, hr_api_error_json(code, msg));
}

/* The error for an hr_error from a validator: 400 naming the field. */
static enum MHD_Result reply_invalid(struct MHD_Connection *c, request *r, const char *where,
                                     const hr_error *e)
{
    size_t fl = strlen(e->field);
    if (fl && strncmp(e->message, e->field, fl) != 0)
        return reply_error(c, r, 400, "invalid", "%s%s: %s", where, e->field, e->message);
    return reply_error(c, r, 400, "invalid", "%s%s", where, e->message);
}

/* ---- helpers ---- */

/* Constant-time comparison of the Authorization header with "Bearer TOKEN". */
static bool auth_ok(const char *header, const char *token)
{
    if (!header || strncmp(header, "Bearer ", 7) != 0)
        return false;
    const char *given = header + 7;
    size_t a = strlen(given), b = strlen(token);
    unsigned char diff = (unsigned char)(a != b);
    for (size_t i = 0; i < b; i++)
        diff |= (unsigned char)(token[i] ^ (i < a ? given[i] : 0));
    return diff == 0;
}

typedef struct {
    unsigned n; /* Content-Length headers seen */
} header_scan;

static enum MHD_Result count_cl(void *cls, enum MHD_ValueKind kind, const char *key,
                                const char *value)
{
    (void)kind;
    (void)value;
    if (strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH) == 0)
        ((header_scan *)cls)->n++;
    return MHD_YES;
}

static bool media_is(const char *ctype, const char *want)
{
    size_t n = strlen(want);
    return strncasecmp(ctype, want, n) == 0 && (ctype[n] == 0 || ctype[n] == ';' ||
                                                ctype[n] == ' ');
}

/* Parses a JSON body into a new value, or answers 400 and returns NULL. */
static json_t *parse_body(request *r, json_error_t *jerr)
{
    return json_loadb(r->body ? r->body : "", r->len, JSON_REJECT_DUPLICATES, jerr);
}

static json_t *id_json(const char *key, size_t len)
{
    return json_stringn(key, len);
}

/* ---- POST /v1/events ---- */

/* Answers POST /v1/events from r->ev and the outcome st (why: detail). */
static enum MHD_Result answer_events(hr_http *h, struct MHD_Connection *c, request *r,
                                     hr_status st, const char *why)
{
    (void)h;
    events_state *ev = &r->ev;
    json_t *errors = ev->errors;
    ev->errors = NULL;
    enum MHD_Result ret;
    if (st == HR_OK) {
        json_t *body = json_pack("{s:I,s:I,s:I,s:o,s:I}", "accepted", (json_int_t)ev->ok,
                                 "rejected", (json_int_t)ev->rejected, "duplicates",
                                 (json_int_t)ev->dups, "errors", errors, "seq",
                                 (json_int_t)(ev->ok ? ev->first + ev->ok - 1 : 0));
        ret = reply_json(c, r, 202, body);
    } else {
        json_decref(errors);
        if (st == HR_EFULL) {
            ret = reply_error(c, r, 429, "queue_full",
                              "the queue cannot take these %zu events now; nothing was accepted, "
                              "resend the whole request", ev->ok);
        } else if (st == HR_ESTOPPED) {
            ret = reply_error(c, r, 503, "shutting_down", "the server is stopping");
        } else {
            ret = reply_error(c, r, 503, "unavailable", "%s",
                              why && why[0] ? why : hr_status_to_string(st));
        }
    }
    return ret;
}

/* The event log's notify callback for a suspended POST /v1/events: runs
 * once, on the log's committer thread (or in handle_events when the outcome
 * is already known). Stores the outcome and resumes the connection; after
 * MHD_resume_connection the request may be freed at any time, so nothing is
 * touched after it. (on_completed counts the request as finished.) */
static void events_durable(void *arg, hr_status st, const char *why)
{
    request *r = arg;
    r->ev.st = st;
    snprintf(r->ev.why, sizeof r->ev.why, "%s", why ? why : "");
    r->ev.phase = EV_DONE;
    MHD_resume_connection(r->conn);
}

/* A commit waited for on the pool thread (while stopping). */
typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done;
    hr_status st;
    char why[256];
} durable_wait;

static void durable_signal(void *arg, hr_status st, const char *why)
{
    durable_wait *w = arg;
    pthread_mutex_lock(&w->mu);
    w->st = st;
    snprintf(w->why, sizeof w->why, "%s", why ? why : "");
    w->done = true;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

/* Takes pending (see hr_events_notify). */
static enum MHD_Result answer_events_when_durable(hr_http *h, struct MHD_Connection *c,
                                                  request *r, hr_events_pending *pending)
{
    durable_wait w = {.done = false};
    pthread_mutex_init(&w.mu, NULL);
    pthread_cond_init(&w.cv, NULL);
    hr_events_notify(h->app->events, pending, durable_signal, &w);
    pthread_mutex_lock(&w.mu);
    while (!w.done)
        pthread_cond_wait(&w.cv, &w.mu);
    pthread_mutex_unlock(&w.mu);
    pthread_cond_destroy(&w.cv);
    pthread_mutex_destroy(&w.mu);
    return answer_events(h, c, r, w.st, w.why);
}

static enum MHD_Result handle_events(hr_http *h, struct MHD_Connection *c, request *r)
{
    if (r->ev.phase == EV_DONE) /* resumed: the commit is done */
        return answer_events(h, c, r, r->ev.st, r->ev.why);
    if (r->ev.phase == EV_WAITING) /* cannot happen: suspended connections get no calls */
        return MHD_YES;
    hr_app *app = h->app;
    if (!atomic_load(&app->ready)) /* the log tail is replaying: seqs must not interleave */
        return reply_error(c, r, 503, "loading",
                           "the server is loading its model; retry when /readyz answers 200");
    json_t *events, *errors = json_array();
    size_t n;
    if (r->ndjson) {
        events = json_array();
        size_t parsed = hr_api_ndjson_split(r->body, r->len, events, errors);
        if (json_array_size(events) > 0 && parsed == 0) {
            json_decref(events);
            json_decref(errors);
            return reply_error(c, r, 400, "malformed_json", "no line of the NDJSON body is JSON");
        }
    } else {
        json_error_t jerr;
        json_t *v = parse_body(r, &jerr);
        if (!v) {
            json_decref(errors);
            return reply_error(c, r, 400, "malformed_json", "body is not JSON: %s (line %d, column %d)",
                               jerr.text, jerr.line, jerr.column);
        }
        if (json_is_object(v)) {
            events = json_array();
            json_array_append_new(events, v);
        } else if (json_is_array(v)) {
            events = v;
        } else {
            json_decref(v);
            json_decref(errors);
            return reply_error(c, r, 400, "invalid", "body must be an event object or an array of events");
        }
    }
    n = json_array_size(events);
    if (n > (size_t)app->cfg.max_batch_events || n > (size_t)app->cfg.queue_capacity) {
        json_decref(events);
        json_decref(errors);
        return reply_error(c, r, 413, "too_many_events",
                           "%zu events in one request; at most %" PRId64, n,
                           app->cfg.max_batch_events < app->cfg.queue_capacity
                               ? app->cfg.max_batch_events
                               : app->cfg.queue_capacity);
    }
    /* Validation, ids, submit and serving state: the events module (see
     * events.h), which also counts what it rejects, drops and refuses. With
     * persistence the commit is awaited without holding this thread. */
    hr_events_outcome out;
    hr_events_pending *pending = NULL;
    hr_error e = {{0}, {0}};
    hr_status st = hr_events_post(app->events, events, errors, app->persist == NULL, &out,
                                  &pending, &e);
    json_decref(events);
    events_state *ev = &r->ev;
    ev->errors = errors;
    ev->ok = st == HR_EFULL ? out.refused : out.accepted; /* a 429 names the refused */
    ev->rejected = out.rejected;
    ev->dups = out.duplicates;
    ev->first = out.first_seq;
    if (pending) {
        /* Queued and logged: answer once the commit is done, without
         * holding this pool thread (see the file comment) - unless the
         * server is stopping: MHD must not get a suspended connection after
         * hr_http_stop counted them, so wait here (the stop bounds that). */
        r->conn = c;
        pthread_mutex_lock(&h->susp_mu);
        bool suspend = !atomic_load(&h->stopping);
        if (suspend)
            h->suspended++;
        pthread_mutex_unlock(&h->susp_mu);
        if (!suspend)
            return answer_events_when_durable(h, c, r, pending);
        ev->phase = EV_WAITING;
        MHD_suspend_connection(c);
        hr_events_notify(app->events, pending, events_durable, r);
        return MHD_YES;
    }
    return answer_events(h, c, r, st, e.message);
}

/* ---- /v1/predict ---- */

static json_t *unknown_json(unsigned u)
{
    return json_pack("{s:b,s:b}", "user", (u & HR_API_UNKNOWN_USER) != 0, "item",
                     (u & HR_API_UNKNOWN_ITEM) != 0);
}

/* The query parameters of a request, for the hr_api_*_query parsers. */
typedef struct {
    hr_api_param *p;
    size_t n, cap;
} param_list;

static enum MHD_Result add_param(void *cls, enum MHD_ValueKind kind, const char *key,
                                 size_t key_size, const char *value, size_t value_size)
{
    (void)kind;
    param_list *l = cls;
    if (l->n < l->cap)
        l->p[l->n++] = (hr_api_param){key, key_size, value, value ? value_size : 0};
    return MHD_YES;
}

/* Collects the request's query parameters (keys and values borrowed from
 * MHD until the request completes) into l->p (new: free()). false when
 * out of memory. */
static bool query_params(struct MHD_Connection *c, param_list *l)
{
    l->n = 0;
    l->cap = (size_t)MHD_get_connection_values(c, MHD_GET_ARGUMENT_KIND, NULL, NULL);
    l->p = malloc((l->cap ? l->cap : 1) * sizeof *l->p);
    if (!l->p)
        return false;
    MHD_get_connection_values_n(c, MHD_GET_ARGUMENT_KIND, add_param, l);
    return true;
}

static enum MHD_Result handle_predict_get(hr_http *h, struct MHD_Connection *c, request *r)
{
    param_list l;
    if (!query_params(c, &l))
        return reply_error(c, r, 503, "unavailable", "out of memory");
    hr_api_predict_req q;
    hr_error e = {{0}, {0}};
    const hr_model *m = h->app->model;
    hr_status st = hr_api_predict_query(m, l.p, l.n, &q, &e);
    free(l.p);
    if (st != HR_OK)
        return reply_invalid(c, r, "", &e);
    json_t *body = json_pack("{s:f}", "score", hr_model_predict(m, &q.ev));
    if (q.unknown)
        json_object_set_new(body, "unknown", unknown_json(q.unknown));
    return reply_json(c, r, 200, body);
}

static enum MHD_Result handle_predict_post(hr_http *h, struct MHD_Connection *c, request *r)
{
    json_error_t jerr;
    json_t *v = parse_body(r, &jerr);
    if (!v)
        return reply_error(c, r, 400, "malformed_json", "body is not JSON: %s (line %d, column %d)",
                           jerr.text, jerr.line, jerr.column);
    json_t *pairs = json_object_get(v, "pairs");
    if (!json_is_object(v) || json_object_size(v) != 1 || !json_is_array(pairs)) {
        json_decref(v);
        return reply_error(c, r, 400, "invalid", "pairs: body must be {\"pairs\": [...]}");
    }
    size_t n = json_array_size(pairs);
    if (n > (size_t)h->app->cfg.max_batch_events) {
        json_decref(v);
        return reply_error(c, r, 413, "too_many_pairs", "%zu pairs; at most %" PRId64, n,
                           h->app->cfg.max_batch_events);
    }
    json_t *scores = json_array(), *unknown = json_array();
    for (size_t i = 0; i < n; i++) {
        hr_event ev;
        unsigned unk;
        hr_error e = {{0}, {0}};
        if (hr_api_pair_from_json(h->app->model, json_array_get(pairs, i), &ev, &unk, &e) !=
            HR_OK) {
            json_decref(v);
            json_decref(scores);
            json_decref(unknown);
            char where[48];
            snprintf(where, sizeof where, "pairs[%zu].", i);
            return reply_invalid(c, r, where, &e);
        }
        json_array_append_new(scores, json_real(hr_model_predict(h->app->model, &ev)));
        if (unk) {
            json_t *u = unknown_json(unk);
            json_object_set_new(u, "index", json_integer((json_int_t)i));
            json_array_append_new(unknown, u);
        }
    }
    json_decref(v);
    json_t *body = json_pack("{s:o}", "scores", scores);
    if (json_array_size(unknown))
        json_object_set_new(body, "unknown", unknown);
    else
        json_decref(unknown);
    return reply_json(c, r, 200, body);
}

/* ---- GET /v1/recommend ---- */

static enum MHD_Result handle_recommend(hr_http *h, struct MHD_Connection *c, request *r)
{
    const hr_model *m = h->app->model;
    param_list l;
    hr_api_recommend_req *q = malloc(sizeof *q);
    if (!q || !query_params(c, &l)) {
        free(q);
        return reply_error(c, r, 503, "unavailable", "out of memory");
    }
    hr_error e = {{0}, {0}};
    hr_status st = hr_api_recommend_query(m, l.p, l.n, q, &e);
    free(l.p);
    if (st != HR_OK) {
        free(q);
        return reply_invalid(c, r, "", &e);
    }
    /* Ranking and final scores: the recommend module (see recommend.h). */
    hr_recommend_query rq = {q->user_row, q->k, q->exclude_seen, q->exclude, q->nexclude};
    hr_recommend_item *items = malloc((size_t)q->k * sizeof *items);
    size_t n = 0;
    bool fallback = false;
    st = items ? hr_recommend(m, h->app->events, h->topk, &rq, items, &n, &fallback) : HR_ENOMEM;
    if (st != HR_OK) {
        free(q);
        free(items);
        return reply_error(c, r, 503, "unavailable", "out of memory");
    }
    json_t *list = json_array();
    for (size_t i = 0; i < n; i++) {
        size_t len;
        const char *key = hr_model_key(m, HR_TABLE_ITEM, items[i].row, &len);
        if (key)
            json_array_append_new(list, json_pack("{s:o,s:f}", "item", id_json(key, len),
                                                  "score", items[i].score));
    }
    json_t *body = json_pack("{s:s%,s:o}", "user", q->user, q->user_len, "items", list);
    if (fallback)
        json_object_set_new(body, "fallback", json_string("popular"));
    free(q);
    free(items);
    return reply_json(c, r, 200, body);
}

/* ---- GET /v1/stats ---- */

static double updates_rate(hr_http *h, uint64_t updates)
{
    double now = hr_wall_time();
    pthread_mutex_lock(&h->rate_mu);
    if (now - h->rate_t >= 1.0) {
        h->rate = (double)(updates - h->rate_updates) / (now - h->rate_t);
        h->rate_t = now;
        h->rate_updates = updates;
    }
    double r = h->rate;
    pthread_mutex_unlock(&h->rate_mu);
    return r;
}

static json_t *progress_json(hr_progress *p, size_t last_n)
{
    hr_progress_report rep;
    hr_progress_get(p, last_n, &rep);
    return json_pack("{s:I,s:o,s:o,s:o,s:o,s:o}", "n", (json_int_t)rep.n, "loss",
                     hr_json_real_or_null(rep.loss), "rmse", hr_json_real_or_null(rep.rmse), "auc",
                     hr_json_real_or_null(rep.auc), "mean_prediction", hr_json_real_or_null(rep.mean_pred),
                     "mean_label", hr_json_real_or_null(rep.mean_label));
}

static json_t *hist_json(const hr_hist *hh)
{
    return json_pack("{s:I,s:I,s:I,s:I}", "count",
                     (json_int_t)atomic_load(&hh->count), "p50",
                     (json_int_t)hr_hist_quantile(hh, 0.5), "p99",
                     (json_int_t)hr_hist_quantile(hh, 0.99), "p999",
                     (json_int_t)hr_hist_quantile(hh, 0.999));
}

static json_t *stats_json(hr_http *h)
{
    hr_app *app = h->app;
    hr_queue_stats qs;
    hr_queue_get_stats(app->queue, &qs);
    hr_trainer_counts tc;
    hr_trainer_get_counts(app->trainer, &tc);
    const hr_model *m = app->model;
    hr_progress_report all;
    hr_progress_get(app->progress, 0, &all);
    const hr_schedule *s = hr_schedbox_current(app->sched);
    double uptime = hr_wall_time() - app->started;
    hr_events_counts ec;
    hr_events_get_counts(app->events, &ec);
    json_t *o = json_pack(
        "{s:{s:I,s:I,s:I,s:I,s:I},s:{s:I,s:I},s:{s:I,s:I,s:I,s:I,s:I},"
        "s:{s:I,s:I,s:I,s:I,s:I,s:I,s:f,s:f,s:b},s:f}",
        "events", "accepted", (json_int_t)qs.accepted, "trained", (json_int_t)tc.trained,
        "rejected", (json_int_t)ec.rejected, "refused", (json_int_t)ec.refused,
        "duplicates", (json_int_t)ec.duplicates,
        "queue", "depth", (json_int_t)qs.depth, "capacity", (json_int_t)qs.capacity,
        "model", "users", (json_int_t)hr_model_id_count(m, HR_TABLE_USER), "items",
        (json_int_t)hr_model_id_count(m, HR_TABLE_ITEM), "k",
        (json_int_t)hr_model_layout(m)->k, "bytes", (json_int_t)hr_model_bytes(m),
        "expired_ids", (json_int_t)hr_model_expired_total(m),
        "updates", "total", (json_int_t)tc.updates, "negatives", (json_int_t)tc.negatives,
        "clipped", (json_int_t)tc.clipped, "skipped_nonfinite",
        (json_int_t)tc.skipped_nonfinite, "default_user", (json_int_t)tc.default_user,
        "default_item", (json_int_t)tc.default_item, "per_second",
        updates_rate(h, tc.updates), "per_second_avg",
        uptime > 0 ? (double)tc.updates / uptime : 0.0, "negative_sampling",
        hr_trainer_negatives_active(app->trainer), "uptime_seconds", uptime);
    uint64_t tk_batches = 0, tk_queries = 0;
    hr_topk_batcher_counts(h->topk, &tk_batches, &tk_queries);
    hr_dedup_stats ds;
    hr_dedup_get_stats(hr_events_dedup(app->events), hr_wall_time(), &ds);
    json_object_set_new(o, "dedup", json_pack("{s:I,s:I,s:I}", "ids", (json_int_t)ds.ids,
                                              "capacity", (json_int_t)ds.capacity, "evicted",
                                              (json_int_t)ds.evicted));
    json_object_set_new(o, "recommend", json_pack("{s:I,s:I}", "queries", (json_int_t)tk_queries,
                                                  "sgemm_batches", (json_int_t)tk_batches));
    json_object_set_new(o, "progressive",
                        json_pack("{s:I,s:I,s:o,s:o,s:o}", "total", (json_int_t)all.total,
                                  "nonfinite", (json_int_t)all.nonfinite,
                                  "loss_total", hr_json_real_or_null(all.loss_total), "window",
                                  progress_json(app->progress, 0), "recent_1000",
                                  progress_json(app->progress, 1000)));
    json_object_set_new(o, "staleness_updates", hist_json(hr_trainer_staleness(app->trainer)));
    json_object_set_new(o, "freshness_us", hist_json(hr_trainer_freshness(app->trainer)));
    json_object_set_new(o, "schedule", hr_schedule_to_json(s));
    json_object_set_new(o, "checkpoint",
                        app->persist ? hr_persist_stats(app->persist)
                                     : json_pack("{s:b}", "enabled", 0));
    return o;
}

/* ---- GET /metrics ---- */

typedef struct {
    char *buf;
    size_t len, cap;
    bool oom;
} sbuf;

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void sb_printf(sbuf *b, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->buf ? b->buf + b->len : NULL, b->buf ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0 || b->oom)
            return;
        if (b->buf && b->len + (size_t)n < b->cap) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = (b->cap ? b->cap * 2 : 8192) + (size_t)n;
        char *p = realloc(b->buf, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->buf = p;
        b->cap = cap;
    }
}

/* v as the Prometheus text format spells it: NaN, +Inf, -Inf, or the
 * shortest %g that reads back as v. */
static void prom_float(char out[32], double v)
{
    if (isnan(v)) {
        snprintf(out, 32, "NaN");
        return;
    }
    if (isinf(v)) {
        snprintf(out, 32, v > 0 ? "+Inf" : "-Inf");
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(out, 32, "%.*g", prec, v);
        if (strtod(out, NULL) == v)
            return;
    }
}

/* One family of one unlabelled sample, with its HELP and TYPE. */
static void emit_u64(sbuf *b, const char *type, const char *name, const char *help, uint64_t v)
{
    sb_printf(b, "# HELP %s %s\n# TYPE %s %s\n%s %" PRIu64 "\n", name, help, name, type, name, v);
}

static void emit_f64(sbuf *b, const char *type, const char *name, const char *help, double v)
{
    char num[32];
    prom_float(num, v);
    sb_printf(b, "# HELP %s %s\n# TYPE %s %s\n%s %s\n", name, help, name, type, name, num);
}

/* The unlabelled families of /metrics, one line each: TYPE, name, HELP,
 * kind (u64: an integer; f64: a double) and value, an expression over the
 * locals of metrics_text (h, app, qs, tc, rep, ds, ec). A new counter or gauge is
 * one line here. */
#define SCALAR_METRICS(X)                                                                        \
    X(counter, "hogrec_events_accepted_total", "Events accepted (queued, and logged with a "    \
      "database).", u64, qs.accepted)                                                           \
    X(counter, "hogrec_events_trained_total", "Accepted events the trainers applied to the "    \
      "model (sampled negatives not counted).", u64, tc.trained)                                 \
    X(counter, "hogrec_events_rejected_total", "Events rejected as invalid (listed by index in " \
      "the reply).", u64, ec.rejected)                                                           \
    X(counter, "hogrec_events_refused_total", "Events of requests refused whole with 429 "      \
      "(queue full).", u64, ec.refused)                                                          \
    X(counter, "hogrec_events_duplicate_total", "Events not applied again: their id was "       \
      "applied within dedup_window.", u64, ec.duplicates)                                        \
    X(counter, "hogrec_dedup_evicted_total", "Event ids forgotten within dedup_window to make "  \
      "room (dedup_capacity reached): a resend of one is applied again.", u64, ds.evicted)       \
    X(gauge, "hogrec_dedup_ids", "Event ids remembered within dedup_window.", u64, ds.ids)      \
    X(gauge, "hogrec_dedup_capacity", "Event ids remembered at most (dedup_capacity).", u64,    \
      ds.capacity)                                                                               \
    X(gauge, "hogrec_queue_depth", "Events in the queue waiting for a trainer.", u64, qs.depth)  \
    X(gauge, "hogrec_queue_capacity", "Events the queue holds at most.", u64, qs.capacity)       \
    X(counter, "hogrec_updates_total", "Model update steps since start, sampled negatives "     \
      "included.", u64, tc.updates)                                                              \
    X(gauge, "hogrec_model_users", "User ids the model holds.", u64,                             \
      hr_model_id_count(app->model, HR_TABLE_USER))                                              \
    X(gauge, "hogrec_model_items", "Item ids the model holds.", u64,                             \
      hr_model_id_count(app->model, HR_TABLE_ITEM))                                              \
    X(gauge, "hogrec_model_bytes", "Bytes of memory the model's rows, marks and id indexes "    \
      "use.", u64, hr_model_bytes(app->model))                                                   \
    X(gauge, "hogrec_progressive_loss", "Progressive validation loss over the window (logloss " \
      "or RMSE; NaN before any event).", f64, rep.loss)                                          \
    X(gauge, "hogrec_progressive_auc", "Progressive validation AUC over the window (NaN "      \
      "without both labels).", f64, rep.auc)                                                     \
    X(counter, "hogrec_progressive_nonfinite_total", "Predictions left out of the progressive " \
      "statistics because they were NaN or infinite.", u64, rep.nonfinite)                     \
    X(gauge, "hogrec_schedule_version", "Version of the live learning-rate schedule.", u64,     \
      hr_schedbox_current(app->sched)->version)                                                  \
    X(gauge, "hogrec_ready", "1 when /readyz answers 200, else 0.", u64,                         \
      hr_app_not_ready(app) ? 0 : 1)

static char *metrics_text(hr_http *h, size_t *len)
{
    sbuf b = {0};
    char num[32];
    sb_printf(&b, "# HELP hogrec_http_requests_total HTTP requests answered, by route and status class.\n"
                  "# TYPE hogrec_http_requests_total counter\n");
    for (int i = 0; i < R_COUNT; i++)
        for (int s = 0; s < S_COUNT; s++)
            sb_printf(&b, "hogrec_http_requests_total{route=\"%s\",status=\"%s\"} %" PRIu64 "\n",
                      routes[i].label, status_label[s],
                      (uint64_t)atomic_load(&h->metrics[i].by_status[s]));
    sb_printf(&b, "# HELP hogrec_http_request_duration_seconds Time from request headers to response queued.\n"
                  "# TYPE hogrec_http_request_duration_seconds histogram\n");
    for (int i = 0; i < R_COUNT; i++) {
        const hr_hist *hh = &h->metrics[i].latency_us;
        uint64_t cum = 0;
        /* bucket j holds [2^(j-1), 2^j) us: le = 2^j us; print 1 us .. ~67 s */
        for (int j = 0; j <= 26; j++) {
            cum += atomic_load(&hh->b[j]);
            prom_float(num, (double)(1ull << j) * 1e-6);
            sb_printf(&b, "hogrec_http_request_duration_seconds_bucket{route=\"%s\",le=\"%s\"} %" PRIu64 "\n",
                      routes[i].label, num, cum);
        }
        /* count is read once: the +Inf bucket and _count must agree */
        uint64_t count = atomic_load(&hh->count);
        if (count < cum)
            count = cum;
        prom_float(num, (double)atomic_load(&hh->sum) * 1e-6);
        sb_printf(&b, "hogrec_http_request_duration_seconds_bucket{route=\"%s\",le=\"+Inf\"} %" PRIu64 "\n"
                      "hogrec_http_request_duration_seconds_sum{route=\"%s\"} %s\n"
                      "hogrec_http_request_duration_seconds_count{route=\"%s\"} %" PRIu64 "\n",
                  routes[i].label, count, routes[i].label, num, routes[i].label, count);
    }
    hr_app *app = h->app;
    hr_queue_stats qs;
    hr_queue_get_stats(app->queue, &qs);
    hr_trainer_counts tc;
    hr_trainer_get_counts(app->trainer, &tc);
    hr_progress_report rep;
    hr_progress_get(app->progress, 0, &rep);
    hr_dedup_stats ds;
    hr_dedup_get_stats(hr_events_dedup(app->events), hr_wall_time(), &ds);
    hr_events_counts ec;
    hr_events_get_counts(app->events, &ec);
#define EMIT_SCALAR(type, name, help, kind, value) emit_##kind(&b, #type, name, help, value);
    SCALAR_METRICS(EMIT_SCALAR)
#undef EMIT_SCALAR
    const hr_hist *fr = hr_trainer_freshness(app->trainer);
    char q50[32], q99[32];
    prom_float(q50, (double)hr_hist_quantile(fr, 0.5) * 1e-6);
    prom_float(q99, (double)hr_hist_quantile(fr, 0.99) * 1e-6);
    prom_float(num, (double)atomic_load(&fr->sum) * 1e-6);
    sb_printf(&b,
              "# HELP hogrec_freshness_seconds Time from an event queued to its update applied "
              "(quantiles: upper bounds of log2 buckets).\n"
              "# TYPE hogrec_freshness_seconds summary\n"
              "hogrec_freshness_seconds{quantile=\"0.5\"} %s\n"
              "hogrec_freshness_seconds{quantile=\"0.99\"} %s\n"
              "hogrec_freshness_seconds_sum %s\n"
              "hogrec_freshness_seconds_count %" PRIu64 "\n",
              q50, q99, num, (uint64_t)atomic_load(&fr->count));
    if (b.oom) {
        free(b.buf);
        return NULL;
    }
    *len = b.len;
    return b.buf;
}

/* ---- admin ---- */

static enum MHD_Result handle_schedule_put(hr_http *h, struct MHD_Connection *c, request *r)
{
    hr_app *app = h->app;
    json_error_t jerr;
    json_t *v = parse_body(r, &jerr);
    if (!v)
        return reply_error(c, r, 400, "malformed_json", "body is not JSON: %s (line %d, column %d)",
                           jerr.text, jerr.line, jerr.column);
    hr_schedule s;
    hr_error e = {{0}, {0}};
    hr_status st = hr_schedule_from_json(v, &s, &e);
    json_decref(v);
    if (st != HR_OK)
        return reply_invalid(c, r, "", &e);
    hr_optimizer rows = hr_model_supports(app->model, HR_OPT_FTRL)      ? HR_OPT_FTRL
                        : hr_model_supports(app->model, HR_OPT_ADAGRAD) ? HR_OPT_ADAGRAD
                                                                        : HR_OPT_SGD;
    if (hr_schedule_check_state(&s, rows, &e) != HR_OK)
        return reply_invalid(c, r, "", &e);
    hr_progress_report rep;
    hr_progress_get(app->progress, 0, &rep);
    uint64_t version;
    st = hr_schedbox_swap(app->sched, &s, hr_trainer_updates(app->trainer), rep.loss, &version, &e);
    if (st != HR_OK)
        return reply_invalid(c, r, "", &e);
    hr_log("info", "schedule changed", json_pack("{s:I}", "version", (json_int_t)version));
    return reply_json(c, r, 200, hr_schedule_to_json(hr_schedbox_current(app->sched)));
}

static enum MHD_Result handle_schedule_history(hr_http *h, struct MHD_Connection *c, request *r)
{
    hr_app *app = h->app;
    /* Note the loss after the latest change once a window of updates passed. */
    const hr_schedule *cur = hr_schedbox_current(app->sched);
    hr_sched_change last[1];
    size_t total = hr_schedbox_history(app->sched, last, 0);
    if (total > 0) {
        hr_sched_change *all = malloc(total * sizeof *all);
        if (all) {
            size_t n = hr_schedbox_history(app->sched, all, total);
            if (n > total)
                n = total;
            const hr_sched_change *ch = &all[n - 1];
            if (n > 0 && ch->version == cur->version && isnan(ch->loss_after) &&
                hr_trainer_updates(app->trainer) >=
                    ch->at_update + (uint64_t)app->cfg.progress_window) {
                hr_progress_report rep;
                hr_progress_get(app->progress, 0, &rep);
                hr_schedbox_note_loss_after(app->sched, ch->version, rep.loss);
            }
            free(all);
        }
    }
    return reply_json(c, r, 200, json_pack("{s:o}", "history",
                                           hr_schedbox_history_json(app->sched)));
}

static enum MHD_Result handle_checkpoint(hr_http *h, struct MHD_Connection *c, request *r)
{
    if (!h->app->persist)
        return reply_error(c, r, 503, "persistence_off",
                           "persistence is off (the server runs without a database)");
    if (!atomic_load(&h->app->ready))
        return reply_error(c, r, 503, "loading", "the server is loading its model");
    json_t *info = NULL;
    hr_error e = {{0}, {0}};
    hr_status st = hr_persist_checkpoint(h->app->persist, &info, &e);
    if (st != HR_OK) {
        json_decref(info);
        return reply_error(c, r, st == HR_EBUSY ? 429 : 503, "checkpoint_failed", "%s",
                           e.message[0] ? e.message : hr_status_to_string(st));
    }
    return reply_json(c, r, 200, info ? info : json_object());
}

/* ---- the access handler ---- */

static void first_call(hr_http *h, struct MHD_Connection *c, request *r, const char *url,
                       const char *method)
{
    hr_app *app = h->app;
    r->route = route_of(url);
    r->method = method_of(method);
    const route *rt = &routes[r->route];
    header_scan hs = {0};
    MHD_get_connection_values(c, MHD_HEADER_KIND, count_cl, &hs);
    const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                                 MHD_HTTP_HEADER_CONTENT_LENGTH);
    const char *te = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                                 MHD_HTTP_HEADER_TRANSFER_ENCODING);
    if (hs.n > 1) {
        request_fail(r, 400, "bad_request", "more than one Content-Length header");
        return;
    }
    /* Framing libmicrohttpd would get wrong: it reads an unknown coding
     * until the connection closes, and prefers chunked over a length. */
    if (te && strcasecmp(te, "chunked") != 0) {
        request_fail(r, 400, "bad_request", "Transfer-Encoding %s; only chunked is supported", te);
        return;
    }
    if (te && cl) {
        request_fail(r, 400, "bad_request", "both Content-Length and Transfer-Encoding");
        return;
    }
    if (cl) {
        char *end;
        errno = 0;
        unsigned long long n = strtoull(cl, &end, 10);
        if (errno == 0 && end != cl && n > h->max_body) {
            request_fail(r, 413, "payload_too_large", "body of %llu bytes; at most %zu", n,
                         h->max_body);
            return;
        }
    }
    if (r->route == R_NOT_FOUND) {
        request_fail(r, 404, "not_found", "no route %s", url);
        return;
    }
    if (rt->admin && !app->cfg.admin_token[0]) {
        request_fail(r, 404, "not_found", "admin API disabled: no admin_token is configured");
        return;
    }
    if (!(rt->methods & r->method)) {
        r->allow = rt->allow;
        request_fail(r, 405, "method_not_allowed", "%s does not accept %s (allowed: %s)", url,
                     method, rt->allow);
        return;
    }
    if (rt->admin &&
        !auth_ok(MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION),
                 app->cfg.admin_token)) {
        request_fail(r, 401, "unauthorized", "admin routes need Authorization: Bearer <token>");
        return;
    }
    if (rt->body & r->method) {
        if (!cl && !te) {
            request_fail(r, 411, "length_required", "a body with Content-Length or chunked "
                                                     "Transfer-Encoding is required");
            return;
        }
        const char *ct = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                                     MHD_HTTP_HEADER_CONTENT_TYPE);
        if (ct && rt->ndjson && media_is(ct, "application/x-ndjson"))
            r->ndjson = true;
        else if (!ct || !media_is(ct, "application/json"))
            request_fail(r, 415, "unsupported_media_type",
                         "Content-Type %s; send application/json%s", ct ? ct : "missing",
                         rt->ndjson ? " or application/x-ndjson" : "");
    }
}

static enum MHD_Result dispatch(hr_http *h, struct MHD_Connection *c, request *r)
{
    if (r->err_status)
        return reply_error(c, r, r->err_status, r->err_code, "%s", r->err_msg);
    switch (r->route) {
    case R_EVENTS:
        return handle_events(h, c, r);
    case R_PREDICT:
        return r->method == M_POST ? handle_predict_post(h, c, r) : handle_predict_get(h, c, r);
    case R_RECOMMEND:
        return handle_recommend(h, c, r);
    case R_STATS:
        return reply_json(c, r, 200, stats_json(h));
    case R_SCHEDULE:
        if (r->method == M_PUT)
            return handle_schedule_put(h, c, r);
        return reply_json(c, r, 200, hr_schedule_to_json(hr_schedbox_current(h->app->sched)));
    case R_SCHEDULE_HISTORY:
        return handle_schedule_history(h, c, r);
    case R_CHECKPOINT:
        return handle_checkpoint(h, c, r);
    case R_CONFIG:
        return reply_json(c, r, 200, hr_config_to_json(&h->app->cfg));
    case R_HEALTHZ:
        return reply_json(c, r, 200, json_pack("{s:s}", "status", "ok"));
    case R_READYZ: {
        const char *why = hr_app_not_ready(h->app);
        if (why)
            return reply_error(c, r, 503, "not_ready", "%s", why);
        return reply_json(c, r, 200, json_pack("{s:s}", "status", "ready"));
    }
    case R_METRICS: {
        size_t len = 0;
        char *t = metrics_text(h, &len);
        if (!t)
            return reply_error(c, r, 503, "unavailable", "out of memory");
        return reply_text(c, r, 200, t, len, "text/plain; version=0.0.4");
    }
    case R_NOT_FOUND:
    case R_COUNT:
        break;
    }
    return reply_error(c, r, 404, "not_found", "no such route");
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
    (void)version;
    hr_http *h = cls;
    request *r = *con_cls;
    if (!r) {
        r = calloc(1, sizeof *r);
        if (!r)
            return MHD_NO;
        r->t0 = hr_now_ns();
        *con_cls = r;
        if (atomic_load(&h->stopping)) { /* the app may be closing: do not touch it */
            r->route = route_of(url);
            request_fail(r, 503, "shutting_down", "the server is stopping");
        } else {
            first_call(h, c, r, url, method);
        }
        atomic_fetch_add(&h->inflight[r->route], 1);
        if (r->err_status == 413 || r->err_status == 400) {
            /* A declared body over max_body_bytes, or framing in doubt:
             * answered now, before any body is read; with a response
             * queued MHD sends no 100 Continue and closes the connection
             * after the answer. */
            tls_http = h;
            return dispatch(h, c, r);
        }
        return MHD_YES;
    }
    if (*upload_data_size) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (r->err_status)
            return MHD_YES; /* discard */
        if (r->len + n > h->max_body) {
            request_fail(r, 413, "payload_too_large", "body larger than %zu bytes", h->max_body);
            free(r->body);
            r->body = NULL;
            r->len = r->cap = 0;
            return MHD_YES; /* (MHD 0.9.75 refuses a response queued mid-body) */
        }
        if (r->len + n + 1 > r->cap) {
            size_t cap = r->cap ? r->cap : 4096;
            while (cap < r->len + n + 1)
                cap *= 2;
            if (cap > h->max_body + 1)
                cap = h->max_body + 1;
            char *p = realloc(r->body, cap);
            if (!p) {
                request_fail(r, 503, "unavailable", "out of memory");
                return MHD_YES;
            }
            r->body = p;
            r->cap = cap;
        }
        memcpy(r->body + r->len, upload_data, n);
        r->len += n;
        r->body[r->len] = 0;
        return MHD_YES;
    }
    tls_http = h;
    return dispatch(h, c, r);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    hr_http *h = cls;
    (void)c;
    (void)toe;
    request *r = *con_cls;
    if (!r)
        return;
    json_decref(r->ev.errors);
    atomic_fetch_sub(&h->inflight[r->route], 1);
    if (r->ev.phase != EV_NONE) { /* was suspended: hr_http_stop may wait for it */
        pthread_mutex_lock(&h->susp_mu);
        if (--h->suspended == 0)
            pthread_cond_broadcast(&h->susp_cv);
        pthread_mutex_unlock(&h->susp_mu);
    }
    free(r->body);
    free(r);
    *con_cls = NULL;
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = 0;
    hr_log("warn", "libmicrohttpd", json_pack("{s:s}", "detail", msg));
}

/* ---- lifecycle ---- */

hr_status hr_http_start(hr_app *app, hr_http **out, hr_error *err)
{
    *out = NULL;
    hr_http *h = calloc(1, sizeof *h);
    if (!h)
        return hr_error_set(err, HR_ENOMEM, NULL, "out of memory");
    h->app = app;
    h->max_body = (size_t)app->cfg.max_body_bytes;
    pthread_mutex_init(&h->rate_mu, NULL);
    pthread_mutex_init(&h->susp_mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&h->susp_cv, &ca);
    pthread_condattr_destroy(&ca);
    h->rate_t = hr_wall_time();
    hr_status st = hr_topk_batcher_create(app->model, TOPK_BATCH, &h->topk);
    if (st != HR_OK) {
        hr_http_stop(h);
        return hr_error_set(err, st, NULL, "out of memory");
    }
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)app->cfg.port);
    if (inet_pton(AF_INET, app->cfg.bind, &sa.sin_addr) != 1) {
        hr_http_stop(h);
        return hr_error_set(err, HR_EINVAL, "bind", "bind: '%s' is not an IPv4 address",
                            app->cfg.bind);
    }
    hr_http_mhd_init(); /* libmicrohttpd's own error answers in JSON */
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ITC |
                     MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    h->daemon = MHD_start_daemon(
        flags, 0, NULL, NULL, on_request, h,
        MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
        MHD_OPTION_THREAD_POOL_SIZE, (unsigned)app->cfg.http_threads,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)app->cfg.max_connections,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)app->cfg.per_ip_connections,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)app->cfg.connection_timeout,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)app->cfg.memory_limit,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
        MHD_OPTION_END);
    if (!h->daemon) {
        hr_http_stop(h);
        return hr_error_set(err, HR_EIO, "port", "cannot listen on %s:%" PRId64 ": %s",
                            app->cfg.bind, app->cfg.port, strerror(errno));
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->daemon, MHD_DAEMON_INFO_BIND_PORT);
    h->port = info ? info->port : (uint16_t)app->cfg.port;
    *out = h;
    return HR_OK;
}

uint16_t hr_http_port(const hr_http *h)
{
    return h->port;
}

void hr_http_quiesce(hr_http *h)
{
    if (h && h->daemon) {
        MHD_socket s = MHD_quiesce_daemon(h->daemon);
        if (s != MHD_INVALID_SOCKET)
            close(s);
    }
}

/* MHD_stop_daemon on a thread of its own, so that hr_http_stop can stop
 * waiting for it: MHD joins its pool threads, and one stuck in a handler
 * never ends. Heap-allocated; left to the process when abandoned. */
typedef struct {
    struct MHD_Daemon *daemon;
    pthread_mutex_t mu;
    pthread_cond_t cv; /* done set; CLOCK_MONOTONIC */
    bool done;
} daemon_stopper;

static void *stop_daemon(void *arg)
{
    daemon_stopper *ds = arg;
    MHD_stop_daemon(ds->daemon);
    pthread_mutex_lock(&ds->mu);
    ds->done = true;
    pthread_cond_broadcast(&ds->cv);
    pthread_mutex_unlock(&ds->mu);
    return NULL;
}

/* Stops the daemon unless that takes past deadline; whether it stopped. */
static bool stop_daemon_by(struct MHD_Daemon *d, const struct timespec *deadline)
{
    daemon_stopper *ds = calloc(1, sizeof *ds);
    if (!ds) {
        MHD_stop_daemon(d);
        return true;
    }
    ds->daemon = d;
    pthread_mutex_init(&ds->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&ds->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_t t;
    bool threaded = pthread_create(&t, NULL, stop_daemon, ds) == 0;
    if (!threaded)
        stop_daemon(ds);
    pthread_mutex_lock(&ds->mu);
    while (!ds->done && pthread_cond_timedwait(&ds->cv, &ds->mu, deadline) != ETIMEDOUT)
        ;
    bool done = ds->done;
    pthread_mutex_unlock(&ds->mu);
    if (!done) {
        pthread_detach(t);
        return false;
    }
    if (threaded)
        pthread_join(t, NULL);
    pthread_cond_destroy(&ds->cv);
    pthread_mutex_destroy(&ds->mu);
    free(ds);
    return true;
}

/* Logs the requests still in flight, by route; returns their count (at
 * least 1). */
static unsigned log_abandoned(hr_http *h, unsigned suspended, double timeout)
{
    json_t *by_route = json_object();
    unsigned n = 0;
    for (int i = 0; i < R_COUNT; i++) {
        unsigned c = atomic_load(&h->inflight[i]);
        if (c)
            json_object_set_new(by_route, routes[i].label, json_integer(c));
        n += c;
    }
    hr_log("error", "shutdown abandoned requests",
           json_pack("{s:I,s:I,s:o,s:f}", "requests", (json_int_t)n, "suspended",
                     (json_int_t)suspended, "routes", by_route, "timeout_seconds", timeout));
    return n ? n : 1;
}

unsigned hr_http_stop(hr_http *h)
{
    if (!h)
        return 0;
    if (h->daemon) {
        pthread_mutex_lock(&h->susp_mu); /* from here on no request suspends */
        atomic_store(&h->stopping, true);
        pthread_mutex_unlock(&h->susp_mu);
        double timeout = h->app->cfg.shutdown_timeout;
        struct timespec dl = hr_deadline_after(timeout);
        /* MHD must not be stopped with suspended connections: wait until
         * the event log settled every commit they wait for (it runs until
         * the app closes, after this) and their answers went out. */
        pthread_mutex_lock(&h->susp_mu);
        while (h->suspended && pthread_cond_timedwait(&h->susp_cv, &h->susp_mu, &dl) != ETIMEDOUT)
            ;
        unsigned suspended = h->suspended;
        pthread_mutex_unlock(&h->susp_mu);
        /* Past the bound the daemon and h are left as they are: the event
         * log may still call back into a suspended request, and a stuck
         * handler still uses h. */
        if (suspended)
            return log_abandoned(h, suspended, timeout);
        if (!stop_daemon_by(h->daemon, &dl))
            return log_abandoned(h, 0, timeout);
    }
    hr_topk_batcher_destroy(h->topk);
    pthread_mutex_destroy(&h->rate_mu);
    pthread_cond_destroy(&h->susp_cv);
    pthread_mutex_destroy(&h->susp_mu);
    free(h);
    return 0;
}

/* ---- hogrec serve ---- */

/* Write end and read end of the stop pipe (see hr_serve_main). */
static int stop_pipe[2] = {-1, -1};

/* What the shutdown is doing, for the watchdog's log line. */
static _Atomic(const char *) shutdown_stage = "requests";

/* The shutdown watchdog: the requests get shutdown_timeout (hr_http_stop
 * bounds that), then the drain and the final checkpoint get as long again.
 * Past that, or at a second SIGTERM/SIGINT, it logs the stage and ends the
 * process with status 1: no final checkpoint, the event log keeps what was
 * acknowledged. */
static _Atomic double watchdog_until;  /* wall time; moved on at each stage */
static atomic_bool shutdown_done;      /* the stop finished: the watchdog stands down */

static void *shutdown_watchdog(void *arg)
{
    (void)arg;
    const char *reason = "timeout";
    for (;;) {
        double left = atomic_load(&watchdog_until) - hr_wall_time();
        if (left <= 0)
            break;
        struct pollfd pfd = {stop_pipe[0], POLLIN, 0};
        int ms = left > 1e6 ? 1000000000 : (int)(left * 1000) + 1;
        if (poll(&pfd, 1, ms) > 0) {
            reason = "second signal";
            break;
        }
    }
    if (atomic_load(&shutdown_done)) /* the process is exiting anyway */
        return NULL;
    hr_log("error", "shutdown abandoned",
           json_pack("{s:s,s:s}", "stage", atomic_load(&shutdown_stage), "reason", reason));
    _exit(1);
}

static void on_stop_signal(int sig)
{
    int saved = errno;
    unsigned char b = (unsigned char)sig;
    ssize_t r = write(stop_pipe[1], &b, 1); /* async-signal-safe */
    (void)r;
    errno = saved;
}

int hr_serve_main(int argc, char **argv)
{
    hr_config cfg;
    hr_error err = {{0}, {0}};
    bool help = false;
    const char *pos[1];
    int npos = 0;
    /* argv[0] is "serve": skip it. */
    hr_status st = hr_config_from_args(&cfg, argc - 1, argv + 1, "config/hogrec.json", NULL, 0,
                                       pos, 0, &npos, &help, &err);
    if (help) {
        printf("usage: hogrec serve [options]\n\n");
        hr_config_print_help(stdout, NULL, 0);
        hr_config_free(&cfg);
        return 0;
    }
    if (st != HR_OK) {
        hr_log("error", "bad configuration",
                 json_pack("{s:s,s:s}", "field", err.field, "detail", err.message));
        hr_config_free(&cfg);
        return 2;
    }
    hr_log_set_level(cfg.log_level);
    /* SIGTERM/SIGINT go through a handler that writes to a pipe the main
     * thread reads. (Not sigwait with a blocked mask: threads that exist
     * before main, such as OpenBLAS's, would take the signal with its
     * default action and kill the process.) */
    if (pipe2(stop_pipe, O_CLOEXEC) != 0) {
        hr_log("error", "cannot create the stop pipe", json_pack("{s:s}", "detail", strerror(errno)));
        hr_config_free(&cfg);
        return 1;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    hr_log("info", "starting", json_pack("{s:s,s:I,s:s}", "bind", cfg.bind, "port",
                                           (json_int_t)cfg.port, "db", cfg.db));
    hr_app *app = NULL;
    /* Listen while the event log replays: /readyz says "loading" (503),
     * predictions are answered, events wait for ready. */
    st = hr_app_open_loading(&cfg, &app, &err);
    hr_config_free(&cfg);
    if (st != HR_OK) {
        hr_log("error", "cannot open", json_pack("{s:s,s:s,s:s}", "status",
                                                   hr_status_to_string(st), "field", err.field,
                                                   "detail", err.message));
        return 1;
    }
    hr_http *http = NULL;
    st = hr_http_start(app, &http, &err);
    if (st != HR_OK) {
        hr_log("error", "cannot serve", json_pack("{s:s}", "detail", err.message));
        hr_app_close(app, false);
        return 1;
    }
    hr_log("info", "listening", json_pack("{s:s,s:i,s:I,s:s}", "bind", app->cfg.bind, "port",
                                            (int)hr_http_port(http), "http_threads",
                                            (json_int_t)app->cfg.http_threads, "blas_kernel",
                                            openblas_get_corename()));
    if ((st = hr_app_finish_loading(app, &err)) != HR_OK) {
        hr_log("error", "cannot load", json_pack("{s:s,s:s}", "status", hr_status_to_string(st),
                                                   "detail", err.message));
        hr_http_quiesce(http);
        hr_http_stop(http);
        hr_app_close(app, false);
        return 1;
    }
    hr_log("info", "ready", NULL);
    unsigned char sigbyte = 0;
    while (read(stop_pipe[0], &sigbyte, 1) < 0 && errno == EINTR)
        ;
    int sig = sigbyte;
    hr_log("info", "stopping", json_pack("{s:s}", "signal", sig == SIGINT ? "SIGINT" : "SIGTERM"));
    const double timeout = app->cfg.shutdown_timeout;
    atomic_store(&watchdog_until, hr_wall_time() + 2 * timeout); /* hr_http_stop: timeout */
    pthread_t wd;
    if (pthread_create(&wd, NULL, shutdown_watchdog, NULL) == 0)
        pthread_detach(wd);
    hr_http_quiesce(http);
    unsigned abandoned = hr_http_stop(http); /* answers what is in flight */
    atomic_store(&shutdown_stage, "drain and final checkpoint");
    atomic_store(&watchdog_until, hr_wall_time() + timeout);
    if (abandoned) {
        /* Requests still running may read the app: close the database,
         * free nothing, and end here (no exit handlers while they run). */
        hr_app_stop(app, true);
        atomic_store(&shutdown_done, true);
        hr_log("info", "stopped", json_pack("{s:I}", "abandoned_requests", (json_int_t)abandoned));
        _exit(0);
    }
    hr_app_close(app, true);
    atomic_store(&shutdown_done, true);
    hr_log("info", "stopped", NULL);
    return 0;
}

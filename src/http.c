/*
 * http.c - the HTTP server; see http.h.
 *
 * Design: libmicrohttpd with its epoll internal thread pool. Each request
 * is a small state machine in the access handler:
 *   first call   allocate the request state, find the route, check headers
 *                (two Content-Length headers, size, method, media type,
 *                auth) and remember the first error, if any;
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
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "hogrec/api.h"
#include "hogrec/events.h"
#include "hogrec/log.h"
#include "hogrec/persist.h"
#include "hogrec/sgd.h"
#include "hogrec/topk.h"

#define MAX_K 1000                /* largest k of /v1/recommend */
#define TOPK_BATCH 32             /* recommendations scored in one sgemm at most */
#define MAX_EXCLUDE 1000          /* largest exclude= list */

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
    atomic_uint_fast64_t rejected;   /* events invalid, reported by index */
    atomic_uint_fast64_t duplicates; /* events dropped as repeated ids */
    atomic_uint_fast64_t refused;    /* events refused whole with 429 */
    pthread_mutex_t rate_mu;     /* guards the updates/s sample */
    double rate_t;               /* wall time of the last sample */
    uint64_t rate_updates;       /* updates at that time */
    double rate;                 /* updates/s between the last two samples */
    pthread_mutex_t susp_mu;     /* guards suspended */
    pthread_cond_t susp_cv;      /* suspended dropped to 0 */
    unsigned suspended;          /* events requests suspended for a commit and
                                    not completed yet */
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

/* Splits an NDJSON body into an array; lines that do not parse become
 * JSON null with their parse error recorded in *errors. Returns the number
 * of lines that parsed. */
static size_t ndjson_split(request *r, json_t *arr, json_t *errors)
{
    size_t parsed = 0, idx = 0;
    const char *p = r->body ? r->body : "", *end = p + r->len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        const char *q = p;
        while (q < le && (*q == ' ' || *q == '\t' || *q == '\r'))
            q++;
        if (q < le) {
            json_error_t jerr;
            json_t *v = json_loadb(p, (size_t)(le - p), JSON_REJECT_DUPLICATES, &jerr);
            if (v) {
                parsed++;
            } else {
                hr_api_printable(jerr.text);
                json_array_append_new(errors, json_pack("{s:I,s:s+}", "index", (json_int_t)idx,
                                                        "message", "not JSON: ", jerr.text));
                v = json_null();
            }
            json_array_append_new(arr, v);
            idx++;
        }
        p = le + 1;
    }
    return parsed;
}

/* Answers POST /v1/events from r->ev and the outcome st (why: detail). */
static enum MHD_Result answer_events(hr_http *h, struct MHD_Connection *c, request *r,
                                     hr_status st, const char *why)
{
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
            atomic_fetch_add(&h->refused, ev->ok);
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
        size_t parsed = ndjson_split(r, events, errors);
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
    hr_event *evs = malloc((n ? n : 1) * sizeof *evs);
    uint64_t *ids = malloc((n ? n : 1) * sizeof *ids);
    char **texts = app->persist ? calloc(n ? n : 1, sizeof *texts) : NULL;
    size_t *lens = app->persist ? calloc(n ? n : 1, sizeof *lens) : NULL;
    if (!evs || !ids || (app->persist && (!texts || !lens))) {
        free(evs);
        free(ids);
        free(texts);
        free(lens);
        json_decref(events);
        json_decref(errors);
        return reply_error(c, r, 503, "unavailable", "out of memory");
    }
    size_t ok = 0, rejected = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *obj = json_array_get(events, i);
        if (json_is_null(obj) && r->ndjson) { /* a line that did not parse, already reported */
            rejected++;
            continue;
        }
        hr_error e = {{0}, {0}};
        const json_t *eid = NULL;
        hr_status st = hr_api_event_from_json(app->model, obj, &evs[ok], &eid, &e);
        if (st != HR_OK) {
            rejected++;
            json_t *item = json_pack("{s:I,s:s}", "index", (json_int_t)i, "message", e.message);
            if (item && e.field[0])
                json_object_set_new(item, "field", json_string(e.field));
            json_array_append_new(errors, item);
            continue;
        }
        ids[ok] = eid ? hr_events_id_hash(eid) : 0;
        if (texts) {
            texts[ok] = hr_api_event_text(obj, &lens[ok]);
            if (!texts[ok]) {
                rejected++;
                json_array_append_new(errors, json_pack("{s:I,s:s}", "index", (json_int_t)i,
                                                        "message", "out of memory"));
                continue;
            }
        }
        ok++;
    }
    json_decref(events);
    /* Ids, submit and serving state: the events module (see events.h). With
     * persistence the commit is awaited without holding this thread. */
    hr_events_batch batch = {evs, ids, texts, lens, ok};
    hr_events_result res;
    hr_events_pending *pending = NULL;
    hr_error e = {{0}, {0}};
    hr_status st = hr_events_submit(app->events, &batch, app->persist == NULL, &res, &pending, &e);
    atomic_fetch_add(&h->rejected, rejected);
    atomic_fetch_add(&h->duplicates, res.duplicates);
    events_state *ev = &r->ev;
    ev->errors = errors;
    ev->ok = ok - res.duplicates;
    ev->rejected = rejected;
    ev->dups = res.duplicates;
    ev->first = res.first_seq;
    for (size_t i = 0; texts && i < ok; i++)
        free(texts[i]);
    free(texts);
    free(lens);
    free(ids);
    free(evs);
    if (pending) {
        /* Queued and logged: answer once the commit is done, without
         * holding this pool thread (see the file comment). */
        r->conn = c;
        ev->phase = EV_WAITING;
        pthread_mutex_lock(&h->susp_mu);
        h->suspended++;
        pthread_mutex_unlock(&h->susp_mu);
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

static enum MHD_Result handle_predict_get(hr_http *h, struct MHD_Connection *c, request *r)
{
    const char *user = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "user");
    const char *item = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "item");
    if (!user || !*user || !item || !*item)
        return reply_error(c, r, 400, "invalid", "user and item query parameters are required");
    size_t ul = strlen(user), il = strlen(item);
    if (ul > HR_ID_MAX_LEN || il > HR_ID_MAX_LEN)
        return reply_error(c, r, 400, "invalid", "ids are at most %d bytes", HR_ID_MAX_LEN);
    hr_event ev;
    memset(&ev, 0, sizeof ev);
    unsigned unk = 0;
    const hr_model *m = h->app->model;
    ev.user = hr_api_lookup(m, HR_TABLE_USER, user, ul, &unk, HR_API_UNKNOWN_USER);
    ev.item = hr_api_lookup(m, HR_TABLE_ITEM, item, il, &unk, HR_API_UNKNOWN_ITEM);
    json_t *body = json_pack("{s:f}", "score", hr_model_predict(m, &ev));
    if (unk)
        json_object_set_new(body, "unknown", unknown_json(unk));
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

static bool parse_bool(const char *s, bool *out)
{
    if (!strcmp(s, "true") || !strcmp(s, "1")) {
        *out = true;
        return true;
    }
    if (!strcmp(s, "false") || !strcmp(s, "0")) {
        *out = false;
        return true;
    }
    return false;
}

static enum MHD_Result handle_recommend(hr_http *h, struct MHD_Connection *c, request *r)
{
    const hr_model *m = h->app->model;
    const char *user = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "user");
    const char *ks = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "k");
    const char *es = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "exclude_seen");
    const char *ex = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "exclude");
    if (!user || !*user || strlen(user) > HR_ID_MAX_LEN)
        return reply_error(c, r, 400, "invalid", "user: 1 to %d bytes required", HR_ID_MAX_LEN);
    long k = 10;
    if (ks) {
        char *end;
        errno = 0;
        k = strtol(ks, &end, 10);
        if (errno || end == ks || *end || k < 1 || k > MAX_K)
            return reply_error(c, r, 400, "invalid", "k: an integer in [1, %d]", MAX_K);
    }
    bool exclude_seen = true;
    if (es && !parse_bool(es, &exclude_seen))
        return reply_error(c, r, 400, "invalid", "exclude_seen: true or false");
    /* Excluded rows: named items, then the user's recent items. */
    size_t cap = MAX_EXCLUDE + (size_t)h->app->cfg.history_per_user, nex = 0;
    uint32_t *rows = malloc((cap ? cap : 1) * sizeof *rows);
    hr_topk_item *items = malloc((size_t)k * sizeof *items);
    if (!rows || !items) {
        free(rows);
        free(items);
        return reply_error(c, r, 503, "unavailable", "out of memory");
    }
    if (ex && *ex) {
        const char *p = ex;
        for (;;) {
            const char *comma = strchr(p, ',');
            size_t len = comma ? (size_t)(comma - p) : strlen(p);
            if (len > 0 && len <= HR_ID_MAX_LEN) {
                if (nex == MAX_EXCLUDE) {
                    free(rows);
                    free(items);
                    return reply_error(c, r, 400, "invalid", "exclude: at most %d items",
                                       MAX_EXCLUDE);
                }
                uint32_t row = hr_model_lookup(m, HR_TABLE_ITEM, p, len);
                if (row != HR_ID_NONE && row != 0)
                    rows[nex++] = row;
            }
            if (!comma)
                break;
            p = comma + 1;
        }
    }
    uint32_t urow = hr_model_lookup(m, HR_TABLE_USER, user, strlen(user));
    bool known = urow != HR_ID_NONE && urow != 0;
    if (known && exclude_seen)
        nex += hr_events_recent(h->app->events, urow, rows + nex, cap - nex);
    hr_topk_sort_rows(rows, nex);
    hr_topk_exclude excl = {rows, nex};
    uint32_t eff = known ? hr_model_effective_row(m, HR_TABLE_USER, urow) : 0;
    size_t n = 0;
    json_t *list = json_array();
    json_t *body;
    if (eff == 0) {
        n = hr_events_popular(h->app->events, (uint32_t)k, &excl, items);
        for (size_t i = 0; i < n; i++) {
            size_t len;
            const char *key = hr_model_key(m, HR_TABLE_ITEM, items[i].row, &len);
            if (key)
                json_array_append_new(list, json_pack("{s:o,s:f}", "item", id_json(key, len),
                                                      "score", (double)items[i].score));
        }
        body = json_pack("{s:s,s:o,s:s}", "user", user, "items", list, "fallback", "popular");
    } else {
        const hr_row_layout *L = hr_model_layout(m);
        float *urow_copy = malloc(L->floats * sizeof(float));
        float *g = malloc(L->floats * sizeof(float));
        hr_status st = urow_copy && g ? HR_OK : HR_ENOMEM;
        if (st == HR_OK) {
            hr_sgd_row_read(L, hr_model_row(m, HR_TABLE_USER, eff), urow_copy);
            hr_sgd_row_read(L, hr_model_row(m, HR_TABLE_GLOBAL, 0), g);
            hr_topk_request req = {urow_copy, (uint32_t)k, &excl, items, 0};
            st = hr_topk_query_batched(h->topk, &req);
            n = req.n;
        }
        if (st != HR_OK) {
            free(urow_copy);
            free(g);
            free(rows);
            free(items);
            json_decref(list);
            return reply_error(c, r, 503, "unavailable", "out of memory");
        }
        double base = (double)g[L->bias] + urow_copy[L->bias];
        for (size_t i = 0; i < n; i++) {
            size_t len;
            const char *key = hr_model_key(m, HR_TABLE_ITEM, items[i].row, &len);
            if (key)
                json_array_append_new(
                    list, json_pack("{s:o,s:f}", "item", id_json(key, len), "score",
                                    hr_model_link(m, base + (double)items[i].score)));
        }
        free(urow_copy);
        free(g);
        body = json_pack("{s:s,s:o}", "user", user, "items", list);
    }
    free(rows);
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

static json_t *num_or_null(double v)
{
    return isfinite(v) ? json_real(v) : json_null();
}

static json_t *progress_json(hr_progress *p, size_t last_n)
{
    hr_progress_report rep;
    hr_progress_get(p, last_n, &rep);
    return json_pack("{s:I,s:o,s:o,s:o,s:o,s:o}", "n", (json_int_t)rep.n, "loss",
                     num_or_null(rep.loss), "rmse", num_or_null(rep.rmse), "auc",
                     num_or_null(rep.auc), "mean_prediction", num_or_null(rep.mean_pred),
                     "mean_label", num_or_null(rep.mean_label));
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
    json_t *o = json_pack(
        "{s:{s:I,s:I,s:I,s:I,s:I},s:{s:I,s:I},s:{s:I,s:I,s:I,s:I,s:I},"
        "s:{s:I,s:I,s:I,s:I,s:I,s:I,s:f,s:f,s:b},s:f}",
        "events", "accepted", (json_int_t)qs.accepted, "trained", (json_int_t)tc.trained,
        "rejected", (json_int_t)atomic_load(&h->rejected), "refused", (json_int_t)qs.refused,
        "duplicates", (json_int_t)atomic_load(&h->duplicates),
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
    json_object_set_new(o, "recommend", json_pack("{s:I,s:I}", "queries", (json_int_t)tk_queries,
                                                  "sgemm_batches", (json_int_t)tk_batches));
    json_object_set_new(o, "progressive",
                        json_pack("{s:I,s:o,s:o,s:o}", "total", (json_int_t)all.total,
                                  "loss_total", num_or_null(all.loss_total), "window",
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

static char *metrics_text(hr_http *h, size_t *len)
{
    sbuf b = {0};
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
            sb_printf(&b, "hogrec_http_request_duration_seconds_bucket{route=\"%s\",le=\"%g\"} %" PRIu64 "\n",
                      routes[i].label, (double)(1ull << j) * 1e-6, cum);
        }
        sb_printf(&b, "hogrec_http_request_duration_seconds_bucket{route=\"%s\",le=\"+Inf\"} %" PRIu64 "\n"
                      "hogrec_http_request_duration_seconds_sum{route=\"%s\"} %g\n"
                      "hogrec_http_request_duration_seconds_count{route=\"%s\"} %" PRIu64 "\n",
                  routes[i].label, (uint64_t)atomic_load(&hh->count), routes[i].label,
                  (double)atomic_load(&hh->sum) * 1e-6, routes[i].label,
                  (uint64_t)atomic_load(&hh->count));
    }
    hr_app *app = h->app;
    hr_queue_stats qs;
    hr_queue_get_stats(app->queue, &qs);
    hr_trainer_counts tc;
    hr_trainer_get_counts(app->trainer, &tc);
    hr_progress_report rep;
    hr_progress_get(app->progress, 0, &rep);
    const hr_hist *fr = hr_trainer_freshness(app->trainer);
    sb_printf(&b,
              "# TYPE hogrec_events_accepted_total counter\nhogrec_events_accepted_total %" PRIu64 "\n"
              "# TYPE hogrec_events_trained_total counter\nhogrec_events_trained_total %" PRIu64 "\n"
              "# TYPE hogrec_events_rejected_total counter\nhogrec_events_rejected_total %" PRIu64 "\n"
              "# TYPE hogrec_events_refused_total counter\nhogrec_events_refused_total %" PRIu64 "\n"
              "# TYPE hogrec_events_duplicate_total counter\nhogrec_events_duplicate_total %" PRIu64 "\n"
              "# TYPE hogrec_queue_depth gauge\nhogrec_queue_depth %" PRIu64 "\n"
              "# TYPE hogrec_queue_capacity gauge\nhogrec_queue_capacity %" PRIu64 "\n"
              "# TYPE hogrec_updates_total counter\nhogrec_updates_total %" PRIu64 "\n"
              "# TYPE hogrec_model_users gauge\nhogrec_model_users %u\n"
              "# TYPE hogrec_model_items gauge\nhogrec_model_items %u\n"
              "# TYPE hogrec_model_bytes gauge\nhogrec_model_bytes %zu\n"
              "# TYPE hogrec_progressive_loss gauge\nhogrec_progressive_loss %g\n"
              "# TYPE hogrec_progressive_auc gauge\nhogrec_progressive_auc %g\n"
              "# TYPE hogrec_freshness_seconds summary\n"
              "hogrec_freshness_seconds{quantile=\"0.5\"} %g\n"
              "hogrec_freshness_seconds{quantile=\"0.99\"} %g\n"
              "hogrec_freshness_seconds_count %" PRIu64 "\n"
              "# TYPE hogrec_schedule_version gauge\nhogrec_schedule_version %" PRIu64 "\n"
              "# TYPE hogrec_ready gauge\nhogrec_ready %d\n",
              qs.accepted, tc.trained, (uint64_t)atomic_load(&h->rejected), qs.refused,
              (uint64_t)atomic_load(&h->duplicates), qs.depth, qs.capacity, tc.updates,
              hr_model_id_count(app->model, HR_TABLE_USER),
              hr_model_id_count(app->model, HR_TABLE_ITEM), hr_model_bytes(app->model),
              rep.loss, rep.auc, (double)hr_hist_quantile(fr, 0.5) * 1e-6,
              (double)hr_hist_quantile(fr, 0.99) * 1e-6, (uint64_t)atomic_load(&fr->count),
              hr_schedbox_current(app->sched)->version, hr_app_not_ready(app) ? 0 : 1);
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
    if (!hr_model_supports(app->model, s.optimizer))
        return reply_error(c, r, 400, "invalid",
                           "optimizer: the model's rows lack the state %s needs (start the "
                           "server with state=%s or ftrl)",
                           hr_optimizer_to_string(s.optimizer),
                           hr_optimizer_to_string(s.optimizer));
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
        else if (ct && !media_is(ct, "application/json"))
            request_fail(r, 415, "unsupported_media_type",
                         "Content-Type %s; send application/json%s", ct,
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
        first_call(h, c, r, url, method);
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
            return MHD_YES;
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
    pthread_cond_init(&h->susp_cv, NULL);
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

void hr_http_stop(hr_http *h)
{
    if (!h)
        return;
    if (h->daemon) {
        /* MHD must not be stopped with suspended connections: wait until
         * the event log settled every commit they wait for (it runs until
         * the app closes, after this) and their answers went out. */
        pthread_mutex_lock(&h->susp_mu);
        while (h->suspended)
            pthread_cond_wait(&h->susp_cv, &h->susp_mu);
        pthread_mutex_unlock(&h->susp_mu);
        MHD_stop_daemon(h->daemon);
    }
    hr_topk_batcher_destroy(h->topk);
    pthread_mutex_destroy(&h->rate_mu);
    pthread_cond_destroy(&h->susp_cv);
    pthread_mutex_destroy(&h->susp_mu);
    free(h);
}

/* ---- hogrec serve ---- */

/* Write end and read end of the stop pipe (see hr_serve_main). */
static int stop_pipe[2] = {-1, -1};

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
    hr_http_quiesce(http);
    hr_http_stop(http); /* answers what is in flight */
    hr_app_close(app, true);
    hr_log("info", "stopped", NULL);
    return 0;
}

/*
 * http.c - the HTTP server; see http.h.
 *
 * Design: libmicrohttpd with its epoll internal thread pool. Each request
 * is a small state machine in the access handler:
 *   first call   allocate the request state, find the route, check headers
 *                (two Content-Length headers, size, method, media type,
 *                auth) and remember the first error, if any (a declared
 *                body over max_body_bytes, 413, and framing in doubt, 400,
 *                are answered at once, before any body is read; except a
 *                declared body at most DRAIN_BYTES over the limit: it is
 *                read and dropped first, as for a body found too large while
 *                reading it, so the client still sending it reads the 413
 *                instead of a reset from closing a socket with unread data);
 *   middle calls buffer the body up to max_body_bytes (past it: discard and
 *                remember 413);
 *   last call    answer: the remembered error or the route's handler
 *                (routes[], one line per route; the handlers live in
 *                http_<resource>.c, see http_internal.h).
 * Every answer is given on the last call (a GET answered on the first call
 * would be sent with Connection: close). Every error goes through
 * hr_http_reply_error(), which writes {"error": {"code", "message"}}, and
 * every answer is counted (route, status class, latency) for /metrics as it
 * is queued. Request state is freed once, in the completed callback.
 *
 * POST /v1/events with persistence does not block a pool thread on the
 * event log's commit (an fsync): the last call submits without waiting,
 * suspends the connection and asks the log to call events_durable()
 * (http_events.c) once the commit is done; that callback (on the log's
 * committer thread) stores the outcome in the request and resumes the
 * connection; MHD then calls the handler again, which answers 202 or 503
 * from the stored outcome. A
 * suspended connection is neither timed out nor closed by MHD, so the
 * request state outlives the callback. hr_http_stop waits until every
 * request handed to its handler (suspended ones included) has completed -
 * its answer sent - before stopping the daemon, which would otherwise close
 * a connection whose answer is queued but not yet written.
 *
 * Stopping is bounded (shutdown_timeout): requests still in flight when it
 * runs out - a handler that does not return, a commit that does not end -
 * are logged and abandoned with the daemon; requests that arrive meanwhile
 * on open connections get 503 shutting_down without touching the app.
 *
 * Limits (connections, per-IP connections, idle timeout, per-connection
 * memory) are daemon options from the config; body size is checked here,
 * events per batch in the handler.
 *
 * Threads: handlers run on MHD pool threads and call the engine's
 * thread-safe functions (ingest, model lookups and predictions, stats).
 */
#include "hogrec/http.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
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
#include "hogrec/cluster.h"
#include "hogrec/log.h"
#include "hogrec/metrics.h"
#include "hogrec/topk.h"
#include "hogrec/watermark.h"
#include "http_internal.h"
#include "http_mhd.h"

#define TOPK_BATCH 32             /* recommendations scored in one sgemm at most */
#define DRAIN_BYTES (1u << 20)  /* a declared body this far over max_body_bytes is read, then 413 */

/* ---- routes ---- */

/* A new route: one line here, one in routes[], and its handler (see
 * http_internal.h). tests/contracts read both to compare them with
 * openapi.yaml. */
typedef enum {
    R_EVENTS,
    R_PREDICT,
    R_RECOMMEND,
    R_STATS,
    R_SCHEDULE,
    R_SCHEDULE_HISTORY,
    R_SCHEDULE_UNDO,
    R_CHECKPOINT,
    R_CONFIG,
    R_HEALTHZ,
    R_READYZ,
    R_METRICS,
    R_CLUSTER,
    R_ROOT,
    R_UI,
    R_STATS_HISTORY,
    R_SIMILAR,
    R_USER,
    R_SNAPSHOT,
    R_TRIALS,
    R_TRIAL,
    R_TRIAL_APPLY,
    R_ITEMS,
    R_ITEM,
    R_USERS,
    R_USER_RECORD,
    R_NOT_FOUND,
    R_COUNT
} route_id;

typedef struct {
    const char *path;   /* exact path; "{name}" matches one segment; "/x/" all below */
    const char *label;  /* for /metrics */
    unsigned methods;   /* M_* allowed (HEAD is answered as GET, without the body) */
    unsigned body;      /* methods that require a JSON body */
    bool ndjson;        /* accepts application/x-ndjson */
    bool admin;         /* behind the bearer token */
    hr_http_handler *handler; /* answers the request (any allowed method) */
    unsigned admin_methods; /* methods behind the bearer token on a route that is not admin */
} route;

static const route routes[R_COUNT] = {
    [R_EVENTS] = {"/v1/events", "events", M_POST, M_POST, true, false, hr_http_events, 0},
    [R_PREDICT] = {"/v1/predict", "predict", M_GET | M_POST | M_HEAD, M_POST, false, false,
                   hr_http_predict, 0},
    [R_RECOMMEND] = {"/v1/recommend", "recommend", M_GET | M_HEAD, 0, false, false,
                     hr_http_recommend, 0},
    [R_STATS] = {"/v1/stats", "stats", M_GET | M_HEAD, 0, false, false, hr_http_stats, 0},
    [R_SCHEDULE] = {"/v1/admin/schedule", "admin_schedule", M_GET | M_PUT | M_HEAD, M_PUT, false,
                    true, hr_http_schedule, 0},
    [R_SCHEDULE_HISTORY] = {"/v1/admin/schedule/history", "admin_schedule_history",
                            M_GET | M_HEAD, 0, false, true, hr_http_schedule_history, 0},
    [R_SCHEDULE_UNDO] = {"/v1/admin/schedule/undo", "admin_schedule_undo", M_POST, 0, false, true,
                         hr_http_schedule_undo, 0},
    [R_CHECKPOINT] = {"/v1/admin/checkpoint", "admin_checkpoint", M_POST, 0, false, true,
                      hr_http_checkpoint, 0},
    [R_CONFIG] = {"/v1/admin/config", "admin_config", M_GET | M_HEAD, 0, false, true,
                  hr_http_config, 0},
    [R_HEALTHZ] = {"/healthz", "healthz", M_GET | M_HEAD, 0, false, false, hr_http_healthz, 0},
    [R_READYZ] = {"/readyz", "readyz", M_GET | M_HEAD, 0, false, false, hr_http_readyz, 0},
    [R_METRICS] = {"/metrics", "metrics", M_GET | M_HEAD, 0, false, false, hr_http_metrics, 0},
    [R_CLUSTER] = {"/v1/cluster", "cluster", M_GET | M_HEAD, 0, false, false, hr_http_cluster, 0},
    [R_ROOT] = {"/", "root", M_GET | M_HEAD, 0, false, false, hr_http_root, 0},
    [R_UI] = {"/ui/", "ui", M_GET | M_HEAD, 0, false, false, hr_http_ui, 0}, /* and below */
    [R_STATS_HISTORY] = {"/v1/stats/history", "stats_history", M_GET | M_HEAD, 0, false, false,
                         hr_http_stats_history, 0},
    [R_SIMILAR] = {"/v1/similar", "similar", M_GET | M_HEAD, 0, false, false, hr_http_similar, 0},
    [R_USER] = {"/v1/user", "user", M_GET | M_HEAD, 0, false, false, hr_http_user, 0},
    [R_SNAPSHOT] = {"/v1/admin/snapshot", "admin_snapshot", M_GET | M_HEAD, 0, false, true,
                    hr_http_snapshot, 0},
    [R_TRIALS] = {"/v1/admin/trials", "admin_trials", M_POST, M_POST, false, true, hr_http_trials, 0},
    [R_TRIAL] = {"/v1/admin/trials/{id}", "admin_trial", M_GET | M_HEAD | M_DELETE, 0, false, true,
                 hr_http_trial, 0},
    [R_TRIAL_APPLY] = {"/v1/admin/trials/{id}/apply", "admin_trial_apply", M_POST, 0, false, true,
                       hr_http_trial_apply, 0},
    [R_ITEMS] = {"/v1/items", "items", M_POST, M_POST, true, false, hr_http_catalog_bulk, 0},
    [R_ITEM] = {"/v1/items/{id}", "item", M_GET | M_HEAD | M_PUT | M_DELETE, M_PUT, false, false,
                hr_http_catalog_record, 0},
    [R_USERS] = {"/v1/users", "users", M_POST, M_POST, true, false, hr_http_catalog_bulk, 0},
    [R_USER_RECORD] = {"/v1/users/{id}", "user_record", M_GET | M_HEAD | M_PUT | M_DELETE, M_PUT,
                       false, false, hr_http_catalog_record, M_DELETE},
    [R_NOT_FOUND] = {NULL, "not_found", 0, 0, false, false, NULL, 0},
};

/* Whether url matches a path with "{name}" segments, each of which
 * matches one non-empty segment. */
static bool template_match(const char *path, const char *url)
{
    while (*path && *url) {
        if (*path == '{') {
            const char *end = strchr(path, '}');
            size_t seg = strcspn(url, "/");
            if (!end || seg == 0)
                return false;
            path = end + 1;
            url += seg;
        } else if (*path++ != *url++) {
            return false;
        }
    }
    return *path == 0 && *url == 0;
}

/* A path ending in '/' (but "/") also matches every path below it; a path
 * with "{name}" segments matches any one segment there. */
static route_id route_of(const char *url)
{
    for (int i = 0; i < R_NOT_FOUND; i++) {
        size_t n = strlen(routes[i].path);
        if (strcmp(url, routes[i].path) == 0 ||
            (strchr(routes[i].path, '{') && template_match(routes[i].path, url)) ||
            (n > 1 && routes[i].path[n - 1] == '/' && strncmp(url, routes[i].path, n) == 0))
            return (route_id)i;
    }
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
    if (strcmp(m, "DELETE") == 0)
        return M_DELETE;
    return 0;
}

/* The Allow header of a route: its methods, "GET, HEAD, POST, PUT, DELETE" order. */
static void allow_of(unsigned methods, char *out, size_t size)
{
    static const struct {
        unsigned flag;
        const char *name;
    } order[] = {{M_GET, "GET"}, {M_HEAD, "HEAD"}, {M_POST, "POST"}, {M_PUT, "PUT"},
                 {M_DELETE, "DELETE"}};
    size_t len = 0;
    out[0] = 0;
    for (size_t i = 0; i < sizeof order / sizeof order[0]; i++)
        if (methods & order[i].flag)
            len += (size_t)snprintf(out + len, len < size ? size - len : 0, "%s%s",
                                    len ? ", " : "", order[i].name);
}

/* ---- per-request state ---- */

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
    hr_metrics_route_record(&h->metrics[r->route], r->status, (hr_now_ns() - r->t0) / 1000);
}

enum MHD_Result hr_http_reply_text(struct MHD_Connection *c, request *r, int status, char *text,
                                   size_t len, const char *ctype)
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
    if (status == 405 && r->allow[0])
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, r->allow);
    if (status == 401)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    r->status = status;
    record(r);
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)status, resp);
    MHD_destroy_response(resp);
    return ret;
}

enum MHD_Result hr_http_reply_static(struct MHD_Connection *c, request *r, int status,
                                     const char *data, size_t len, const char *ctype,
                                     const char *const *headers)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(
        data ? len : 0, (void *)(data ? data : ""), MHD_RESPMEM_PERSISTENT);
    if (!resp)
        return MHD_NO;
    if (ctype)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    for (size_t i = 0; headers && headers[i] && headers[i + 1]; i += 2)
        MHD_add_response_header(resp, headers[i], headers[i + 1]);
    return hr_http_reply_response(c, r, status, resp);
}

enum MHD_Result hr_http_reply_response(struct MHD_Connection *c, request *r, int status,
                                       struct MHD_Response *resp)
{
    r->status = status;
    record(r);
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)status, resp);
    MHD_destroy_response(resp);
    return ret;
}

enum MHD_Result hr_http_reply_json(struct MHD_Connection *c, request *r, int status,
                                   json_t *body)
{
    char *s = body ? json_dumps(body, JSON_COMPACT | JSON_REAL_PRECISION(9)) : NULL;
    json_decref(body);
    if (!s)
        return hr_http_reply_text(c, r, 500,
                                  strdup("{\"error\":{\"code\":\"internal\",\"message\":"
                                         "\"out of memory\"}}"),
                                  strlen("{\"error\":{\"code\":\"internal\",\"message\":"
                                         "\"out of memory\"}}"),
                                  "application/json");
    return hr_http_reply_text(c, r, status, s, strlen(s), "application/json");
}

enum MHD_Result hr_http_reply_error(struct MHD_Connection *c, request *r, int status,
                                    const char *code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return hr_http_reply_json(c, r, status, hr_api_error_json(code, msg));
}

enum MHD_Result hr_http_reply_invalid(struct MHD_Connection *c, request *r, const char *where,
                                      const hr_error *e)
{
    size_t fl = strlen(e->field);
    if (fl && strncmp(e->message, e->field, fl) != 0)
        return hr_http_reply_error(c, r, 400, "invalid", "%s%s: %s", where, e->field, e->message);
    return hr_http_reply_error(c, r, 400, "invalid", "%s%s", where, e->message);
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

json_t *hr_http_parse_body(request *r, json_error_t *jerr)
{
    return json_loadb(r->body ? r->body : "", r->len, JSON_REJECT_DUPLICATES, jerr);
}

enum MHD_Result hr_http_reply_malformed(struct MHD_Connection *c, request *r,
                                        const json_error_t *jerr)
{
    return hr_http_reply_error(c, r, 400, "malformed_json",
                               "body is not JSON: %s (line %d, column %d)", jerr->text, jerr->line,
                               jerr->column);
}

json_t *hr_http_body_list(struct MHD_Connection *c, request *r, const char *what,
                          json_t **errors, enum MHD_Result *ret)
{
    json_t *list;
    *errors = json_array();
    if (r->ndjson) {
        list = json_array();
        size_t parsed = hr_api_ndjson_split(r->body, r->len, list, *errors);
        if (json_array_size(list) > 0 && parsed == 0) {
            json_decref(list);
            list = NULL;
            *ret = hr_http_reply_error(c, r, 400, "malformed_json",
                                       "no line of the NDJSON body is JSON");
        }
    } else {
        json_error_t jerr;
        json_t *v = hr_http_parse_body(r, &jerr);
        list = v && json_is_array(v) ? v : json_array();
        if (!v) {
            json_decref(list);
            list = NULL;
            *ret = hr_http_reply_malformed(c, r, &jerr);
        } else if (json_is_object(v)) {
            json_array_append_new(list, v);
        } else if (!json_is_array(v)) {
            json_decref(v);
            json_decref(list);
            list = NULL;
            *ret = hr_http_reply_error(c, r, 400, "invalid", "body must be %s", what);
        }
    }
    if (!list) {
        json_decref(*errors);
        *errors = NULL;
    }
    return list;
}

/* ---- the access handler ---- */

static void first_call(hr_http *h, struct MHD_Connection *c, request *r, const char *url,
                       const char *method)
{
    hr_app *app = h->app;
    r->route = route_of(url);
    r->url = url;
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
            r->drain = n - h->max_body <= DRAIN_BYTES;
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
        allow_of(rt->methods, r->allow, sizeof r->allow);
        request_fail(r, 405, "method_not_allowed", "%s does not accept %s (allowed: %s)", url,
                     method, r->allow);
        return;
    }
    if ((rt->admin_methods & r->method) && !app->cfg.admin_token[0]) {
        request_fail(r, 404, "not_found", "admin API disabled: no admin_token is configured");
        return;
    }
    if ((rt->admin || (rt->admin_methods & r->method)) &&
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
    if (!r->answering) { /* the first dispatch: from here on hr_http_stop waits for it */
        pthread_mutex_lock(&h->susp_mu);
        h->answering++;
        r->answering = true;
        pthread_mutex_unlock(&h->susp_mu);
    }
    if (r->err_status)
        return hr_http_reply_error(c, r, r->err_status, r->err_code, "%s", r->err_msg);
    hr_http_handler *handler = routes[r->route].handler;
    if (!handler) /* cannot happen: first_call failed R_NOT_FOUND */
        return hr_http_reply_error(c, r, 404, "not_found", "no such route");
    return handler(h, c, r);
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
        if ((r->err_status == 413 && !r->drain) || r->err_status == 400) {
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

bool hr_http_suspend(hr_http *h, struct MHD_Connection *c, request *r)
{
    assert(r->answering); /* counted at dispatch: hr_http_stop waits for it */
    bool suspend = !atomic_load(&h->stopping);
    if (suspend) {
        r->conn = c;
        r->ev.phase = EV_WAITING;
        MHD_suspend_connection(c); /* outside susp_mu: MHD takes its own locks */
    }
    return suspend;
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
    if (r->answering) { /* hr_http_stop may wait for it */
        pthread_mutex_lock(&h->susp_mu);
        if (--h->answering == 0)
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
    hr_metrics_rate_init(&h->rate);
    pthread_mutex_init(&h->susp_mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&h->susp_cv, &ca);
    pthread_condattr_destroy(&ca);
    h->nroutes = R_COUNT;
    h->metrics = calloc(R_COUNT, sizeof *h->metrics);
    h->inflight = calloc(R_COUNT, sizeof *h->inflight);
    hr_status st = h->metrics && h->inflight ? HR_OK : HR_ENOMEM;
    for (int i = 0; st == HR_OK && i < R_COUNT; i++)
        h->metrics[i].label = routes[i].label;
    if (st == HR_OK)
        st = hr_topk_batcher_create(app->model, TOPK_BATCH, &h->topk);
    if (st == HR_OK)
        st = hr_statsring_start(app, HR_STATSRING_DEFAULT_CAPACITY, 1000, &h->ring);
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
static unsigned log_abandoned(hr_http *h, unsigned answering, double timeout)
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
           json_pack("{s:I,s:I,s:o,s:f}", "requests", (json_int_t)n, "answering",
                     (json_int_t)answering, "routes", by_route, "timeout_seconds", timeout));
    return n ? n : 1;
}

unsigned hr_http_stop(hr_http *h)
{
    if (!h)
        return 0;
    hr_statsring_halt(h->ring); /* no sample of an app that may close after this */
    if (h->daemon) {
        pthread_mutex_lock(&h->susp_mu); /* from here on no request suspends */
        atomic_store(&h->stopping, true);
        pthread_mutex_unlock(&h->susp_mu);
        hr_watermark_wake(h->app->cluster ? hr_cluster_applied(h->app->cluster)
                                          : hr_trainer_applied(h->app->trainer)); /* min_seq waits end now */
        double timeout = h->app->cfg.shutdown_timeout;
        struct timespec dl = hr_deadline_after(timeout);
        /* MHD must not be stopped with suspended connections, nor while a
         * handler's answer is queued but not written (MHD_stop_daemon closes
         * the connection under it): wait until every request handed to its
         * handler completed - the event log settles the commits suspended
         * ones wait for (it runs until the app closes, after this). */
        pthread_mutex_lock(&h->susp_mu);
        while (h->answering && pthread_cond_timedwait(&h->susp_cv, &h->susp_mu, &dl) != ETIMEDOUT)
            ;
        unsigned answering = h->answering;
        pthread_mutex_unlock(&h->susp_mu);
        /* Past the bound the daemon and h are left as they are: the event
         * log may still call back into a suspended request, and a stuck
         * handler still uses h. */
        if (answering)
            return log_abandoned(h, answering, timeout);
        if (!stop_daemon_by(h->daemon, &dl))
            return log_abandoned(h, 0, timeout);
    }
    hr_statsring_stop(h->ring);
    hr_topk_batcher_destroy(h->topk);
    free(h->metrics);
    free(h->inflight);
    hr_metrics_rate_destroy(&h->rate);
    pthread_cond_destroy(&h->susp_cv);
    pthread_mutex_destroy(&h->susp_mu);
    free(h);
    return 0;
}


/*
 * http_internal.h - what the HTTP server's files share: the server and
 * request structs, the route handlers' signature, and the reply functions
 * (the one error path). Private to src/http*.c.
 *
 * Files: http.c is the machinery (route table, the request state machine:
 * headers, body, limits, suspend/resume; auth; replies; start and stop);
 * the handlers are grouped by resource:
 *   http_events.c  POST /v1/events
 *   http_query.c   GET|POST /v1/predict, GET /v1/recommend
 *   http_admin.c   /v1/admin/schedule, /schedule/history, /checkpoint, /config,
 *                  /snapshot (cluster mode), /trials
 *   http_stats.c   /v1/stats, /metrics, /healthz, /readyz, /v1/cluster
 *   http_dash.c    the dashboard: /, /ui/, /v1/stats/history, /v1/similar, /v1/user
 *   http_catalog.c /v1/items, /v1/items/{id}, /v1/users, /v1/users/{id}
 * A route is one line of route_id and of routes[] in http.c plus its
 * handler here.
 *
 * A handler runs on the request's last call (the body is complete), on an
 * MHD pool thread; it answers through hr_http_reply_* exactly once and
 * returns what that returned (or MHD_YES after suspending the connection,
 * see http_events.c).
 */
#ifndef HOGREC_HTTP_INTERNAL_H
#define HOGREC_HTTP_INTERNAL_H

#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hogrec/app.h"
#include "hogrec/http.h"
#include "hogrec/metrics.h"
#include "hogrec/statsring.h"
#include "hogrec/topk.h"

/* Methods, as bit flags (route table, request->method). */
enum { M_GET = 1, M_POST = 2, M_PUT = 4, M_HEAD = 8, M_DELETE = 16 };

struct hr_http {
    hr_app *app;                 /* borrowed */
    struct MHD_Daemon *daemon;
    uint16_t port;
    size_t max_body;             /* bytes */
    hr_topk_batcher *topk;       /* concurrent recommendations scored together */
    size_t nroutes;              /* entries of metrics and inflight (the routes) */
    hr_metrics_route *metrics;   /* owned [nroutes]: answers and latency by route */
    atomic_uint *inflight;       /* owned [nroutes]: requests from first call to completed */
    hr_metrics_rate rate;        /* updates/s for /v1/stats */
    hr_statsring *ring;          /* per-second samples for /v1/stats/history */
    pthread_mutex_t susp_mu;     /* guards answering */
    pthread_cond_t susp_cv;      /* answering dropped to 0 (while stopping) */
    unsigned answering;          /* requests handed to their handler (body
                                    complete) and not completed yet, suspended
                                    ones included: hr_http_stop waits for them */
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
    char entry[48];       /* cluster mode: the event stream entry id ("" none) */
    bool cluster;         /* cluster mode: a 429 is the leader's backlog */
    hr_status st;         /* the commit's outcome (EV_DONE) */
    char why[256];        /* why it failed */
} events_state;

typedef struct {
    int route;            /* index into http.c's routes[] */
    const char *url;      /* the path, borrowed from MHD (valid until completed) */
    unsigned method;      /* M_* */
    uint64_t t0;          /* hr_now_ns() at the first call */
    int status;           /* HTTP status answered, 0 until then */
    /* the first error found before the body arrived */
    int err_status;
    bool drain;           /* a 413 answered after its (bounded) body is read */
    const char *err_code;
    char err_msg[192];
    char allow[32];       /* Allow header with a 405 */
    bool ndjson;          /* body is application/x-ndjson */
    char *body;           /* owned; NUL-terminated */
    size_t len, cap;
    struct MHD_Connection *conn; /* borrowed: the connection (while suspended) */
    bool answering;       /* counted in hr_http.answering (set at the first dispatch) */
    events_state ev;      /* POST /v1/events */
} request;

/* A route's handler (see the file comment). */
typedef enum MHD_Result hr_http_handler(hr_http *h, struct MHD_Connection *c, request *r);

hr_http_handler hr_http_events;           /* http_events.c */
hr_http_handler hr_http_predict;          /* http_query.c */
hr_http_handler hr_http_recommend;
hr_http_handler hr_http_schedule;         /* http_admin.c */
hr_http_handler hr_http_schedule_history;
hr_http_handler hr_http_schedule_undo;
hr_http_handler hr_http_checkpoint;
hr_http_handler hr_http_config;
hr_http_handler hr_http_snapshot;
hr_http_handler hr_http_trials;           /* http_admin.c: counterfactual trials */
hr_http_handler hr_http_trial;
hr_http_handler hr_http_trial_apply;
hr_http_handler hr_http_stats;            /* http_stats.c */
hr_http_handler hr_http_metrics;
hr_http_handler hr_http_healthz;
hr_http_handler hr_http_readyz;
hr_http_handler hr_http_cluster;
hr_http_handler hr_http_root;             /* http_dash.c */
hr_http_handler hr_http_ui;
hr_http_handler hr_http_stats_history;
hr_http_handler hr_http_similar;
hr_http_handler hr_http_user;
hr_http_handler hr_http_catalog_bulk;     /* http_catalog.c */
hr_http_handler hr_http_catalog_record;

/* ---- replies (http.c) ---- */

/* Answers text (taken: free(); NULL = empty body) of len bytes with
 * Content-Type ctype, and counts the answer for /metrics. */
enum MHD_Result hr_http_reply_text(struct MHD_Connection *c, request *r, int status, char *text,
                                   size_t len, const char *ctype);

/* Answers len bytes of data (borrowed, static: NULL = empty body) with
 * Content-Type ctype (NULL: none) and the extra headers, name/value pairs
 * in one NULL-terminated array (borrowed for the call; NULL: none). */
enum MHD_Result hr_http_reply_static(struct MHD_Connection *c, request *r, int status,
                                     const char *data, size_t len, const char *ctype,
                                     const char *const *headers);

/* Answers with a response the handler built (taken: destroyed here), for
 * bodies that are no text (a file); counts it for /metrics. */
enum MHD_Result hr_http_reply_response(struct MHD_Connection *c, request *r, int status,
                                       struct MHD_Response *resp);

/* Answers a JSON body (taken; NULL: 500 out of memory). */
enum MHD_Result hr_http_reply_json(struct MHD_Connection *c, request *r, int status,
                                   json_t *body);

/* The one error path: {"error": {"code": code, "message": printf(fmt)}}. */
enum MHD_Result hr_http_reply_error(struct MHD_Connection *c, request *r, int status,
                                    const char *code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* The error for an hr_error from a validator: 400 naming the field, the
 * field prefixed with where ("pairs[3]."). */
enum MHD_Result hr_http_reply_invalid(struct MHD_Connection *c, request *r, const char *where,
                                      const hr_error *e);

/* The request's body parsed as JSON: a new value, or NULL with *jerr. */
json_t *hr_http_parse_body(request *r, json_error_t *jerr);

/* The 400 for a body hr_http_parse_body refused, with jansson's detail. */
enum MHD_Result hr_http_reply_malformed(struct MHD_Connection *c, request *r,
                                        const json_error_t *jerr);

/* The body of a bulk route as a list of objects: NDJSON (one per line; a
 * line that is not JSON becomes an entry of *errors by its index), one JSON
 * object, or an array. A new array, and *errors a new array; or NULL when
 * the body is none of these: the 400 (malformed_json, or invalid saying the
 * body must be `what`) was answered and *ret holds what to return. */
json_t *hr_http_body_list(struct MHD_Connection *c, request *r, const char *what,
                          json_t **errors, enum MHD_Result *ret);

/* ---- suspend/resume (http.c) ---- */

/* Suspends c so that this pool thread is free while the request waits (the
 * request is already counted for hr_http_stop, since its dispatch); the
 * handler is called again (r->ev.phase set by whoever resumes it with
 * MHD_resume_connection) once it is resumed. false, with nothing
 * suspended, when the server is stopping: the caller then waits on its own
 * thread (the stop waits for it, bounded). */
bool hr_http_suspend(hr_http *h, struct MHD_Connection *c, request *r);

#endif

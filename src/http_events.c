/*
 * http_events.c - POST /v1/events: the body (one event, a JSON array, or
 * NDJSON) decoded into events, handed to the events module (ids, submit,
 * serving state), and answered 202 with the counts and per-event errors, or
 * 429/503 when the batch was refused whole.
 *
 * With persistence the commit of the event log is awaited without holding
 * the pool thread: the handler suspends the connection and the log calls
 * events_durable() once the commit is done, which resumes it; MHD then calls
 * the handler again, which answers from what it stored in the request (see
 * http.c for how stopping waits for suspended requests).
 *
 * Threads: MHD pool threads; events_durable on the event log's committer.
 */
#include <inttypes.h>
#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "hogrec/api.h"
#include "hogrec/cluster.h"
#include "hogrec/events.h"
#include "http_internal.h"


/* Answers POST /v1/events from r->ev and the outcome st (why: detail). */
static enum MHD_Result answer_events(struct MHD_Connection *c, request *r, hr_status st,
                                     const char *why)
{
    events_state *ev = &r->ev;
    json_t *errors = ev->errors;
    ev->errors = NULL;
    enum MHD_Result ret;
    if (st == HR_OK) {
        json_t *body = json_pack("{s:I,s:I,s:I,s:o,s:I}", "accepted", (json_int_t)ev->ok,
                                 "rejected", (json_int_t)ev->rejected, "duplicates",
                                 (json_int_t)ev->dups, "errors", errors, "seq",
                                 (json_int_t)(ev->ok && ev->first ? ev->first + ev->ok - 1 : 0));
        if (body && ev->entry[0])
            json_object_set_new(body, "entry", json_string(ev->entry));
        ret = hr_http_reply_json(c, r, 202, body);
    } else {
        json_decref(errors);
        if (st == HR_EFULL && ev->cluster) {
            ret = hr_http_reply_error(c, r, 429, "backlog_full", "%s", why ? why : "backlog");
        } else if (st == HR_EFULL) {
            ret = hr_http_reply_error(
                c, r, 429, "queue_full",
                "the queue cannot take these %zu events now; nothing was accepted, "
                "resend the whole request",
                ev->ok);
        } else if (st == HR_ESTOPPED) {
            ret = hr_http_reply_error(c, r, 503, "shutting_down", "the server is stopping");
        } else {
            ret = hr_http_reply_error(c, r, 503, "unavailable", "%s",
                                      why && why[0] ? why : hr_status_to_string(st));
        }
    }
    return ret;
}

/* The event log's notify callback for a suspended POST /v1/events: runs
 * once, on the log's committer thread (or in hr_http_events when the outcome
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
    return answer_events(c, r, w.st, w.why);
}

enum MHD_Result hr_http_events(hr_http *h, struct MHD_Connection *c, request *r)
{
    if (r->ev.phase == EV_DONE) /* resumed: the commit is done */
        return answer_events(c, r, r->ev.st, r->ev.why);
    if (r->ev.phase == EV_WAITING) /* cannot happen: suspended connections get no calls */
        return MHD_YES;
    hr_app *app = h->app;
    if (!atomic_load(&app->ready)) /* the log tail is replaying: seqs must not interleave */
        return hr_http_reply_error(
            c, r, 503, "loading",
            "the server is loading its model; retry when /readyz answers 200");
    json_t *errors;
    enum MHD_Result ret;
    json_t *events = hr_http_body_list(c, r, "an event object or an array of events", &errors, &ret);
    if (!events)
        return ret;
    size_t n;
    n = json_array_size(events);
    if (n > (size_t)app->cfg.max_batch_events || n > (size_t)app->cfg.queue_capacity) {
        json_decref(events);
        json_decref(errors);
        return hr_http_reply_error(
            c, r, 413, "too_many_events", "%zu events in one request; at most %" PRId64, n,
            app->cfg.max_batch_events < app->cfg.queue_capacity ? app->cfg.max_batch_events
                                                                : app->cfg.queue_capacity);
    }
    /* Validation, ids, submit and serving state: the events module (see
     * events.h), which also counts what it rejects, drops and refuses. With
     * persistence the commit is awaited without holding this thread. In
     * cluster mode the events go to the cluster's event stream instead,
     * acknowledged by Redis before the answer (cluster.h). */
    hr_events_outcome out;
    hr_events_pending *pending = NULL;
    hr_error e = {{0}, {0}};
    hr_status st =
        app->cluster
            ? hr_cluster_post(app->cluster, events, errors, &out, r->ev.entry,
                              sizeof r->ev.entry, &e)
            : hr_events_post(app->events, events, errors, app->persist == NULL, &out, &pending,
                             &e);
    r->ev.cluster = app->cluster != NULL;
    json_decref(events);
    events_state *ev = &r->ev;
    ev->errors = errors;
    ev->ok = st == HR_EFULL ? out.refused : out.accepted; /* a 429 names the refused */
    ev->rejected = out.rejected;
    ev->dups = out.duplicates;
    ev->first = out.first_seq;
    if (pending) {
        /* Queued and logged: answer once the commit is done, without
         * holding this pool thread - unless the server is stopping. */
        if (!hr_http_suspend(h, c, r))
            return answer_events_when_durable(h, c, r, pending);
        hr_events_notify(app->events, pending, events_durable, r);
        return MHD_YES;
    }
    return answer_events(c, r, st, e.message);
}

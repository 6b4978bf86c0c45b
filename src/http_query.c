/*
 * http_query.c - the read routes of the model: GET /v1/predict (one pair
 * from the query string), POST /v1/predict (a batch of pairs), GET
 * /v1/recommend (top-K items for a user, or the popular items for an
 * unknown one).
 *
 * Query strings are parsed by the api module (hr_api_*_query) from the
 * parameters MHD decoded; scores come from the model (one dot product) and
 * top-K (one sgemv per item block, concurrent requests batched into one
 * sgemm by the server's hr_topk_batcher).
 *
 * Read-your-writes: with min_seq (a seq from a 202 of POST /v1/events)
 * each route first waits until this node's applied watermark (watermark.h;
 * the trainer pool publishes it in standalone mode) reaches min_seq, or
 * wait_ms passes, or the server begins to stop; then it looks the ids up
 * and scores, and says in "applied" whether min_seq was reached. The wait
 * blocks the pool thread (at most max_wait_ms, and it ends at once when
 * hr_http_stop wakes the watermark): applying is normally a matter of
 * milliseconds, and a suspended connection would need a timer to resume
 * it at its deadline, which MHD does not offer; the price is that each
 * waiting request holds one of the http_threads.
 *
 * Threads: MHD pool threads; everything called is thread-safe.
 */
#include <inttypes.h>
#include <jansson.h>
#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hogrec/api.h"
#include "hogrec/catalog.h"
#include "hogrec/events.h"
#include "hogrec/recommend.h"
#include "hogrec/sgd.h"
#include "hogrec/topk.h"
#include "hogrec/cluster.h"
#include "hogrec/watermark.h"
#include "http_internal.h"

static json_t *id_json(const char *key, size_t len)
{
    return json_stringn(key, len);
}

/* ---- read-your-writes ---- */

/* What a min_seq wait found. */
typedef struct {
    bool given;       /* min_seq was given: answer with applied and applied_seq */
    bool applied;     /* the node's applied position reached min_seq */
    uint64_t seq;     /* the node's applied position after the wait */
    char entry[48];   /* cluster mode: the entry the model covers ("" standalone) */
} ryw_outcome;

/* This node's applied position: the trainer pool's watermark, or in
 * cluster mode the entry its model covers (cluster.h). */
static hr_watermark *node_applied(hr_http *h)
{
    return h->app->cluster ? hr_cluster_applied(h->app->cluster)
                           : hr_trainer_applied(h->app->trainer);
}

/* Cluster mode: min_seq is the entry id of a 202; waits until the model
 * covers it (bounded as in standalone mode). */
static hr_status await_entry(hr_http *h, const hr_api_wait *w, ryw_outcome *out, hr_error *e)
{
    int64_t wait_ms;
    hr_status st = hr_api_wait_check(w, UINT64_MAX, h->app->cfg.max_wait_ms, &wait_ms, e);
    if (st != HR_OK || !w->given)
        return st;
    if (!w->is_entry)
        return hr_error_set(e, HR_EINVAL, "min_seq",
                            "min_seq: in cluster mode the \"entry\" of a 202 (MS-SEQ)");
    uint64_t deadline = hr_now_ns() + (uint64_t)wait_ms * 1000000u;
    hr_watermark_wait(node_applied(h), hr_cluster_entry_pack(w->entry_ms, w->entry_seq), deadline,
                      &h->stopping, NULL);
    out->applied = hr_cluster_covers(h->app->cluster, w->entry_ms, w->entry_seq, out->entry,
                                     sizeof out->entry);
    return HR_OK;
}

/* Checks w (hr_api_wait_check against the config and the last seq handed
 * out) and, when min_seq was given, waits for it. HR_EINVAL with e naming
 * the parameter. */
static hr_status await_min_seq(hr_http *h, const hr_api_wait *w, ryw_outcome *out, hr_error *e)
{
    int64_t wait_ms;
    out->given = w->given;
    out->applied = false;
    out->seq = 0;
    out->entry[0] = 0;
    if (h->app->cluster)
        return await_entry(h, w, out, e);
    if (w->is_entry)
        return hr_error_set(e, HR_EINVAL, "min_seq", "min_seq: an integer in [0, %" PRId64 "]",
                            INT64_MAX);
    hr_status st = hr_api_wait_check(w, hr_ingest_last_seq(h->app->ingest),
                                     h->app->cfg.max_wait_ms, &wait_ms, e);
    if (st != HR_OK || !w->given)
        return st;
    uint64_t deadline = hr_now_ns() + (uint64_t)wait_ms * 1000000u;
    out->applied = hr_watermark_wait(node_applied(h), w->min_seq, deadline, &h->stopping,
                                     &out->seq);
    return HR_OK;
}

/* Adds "applied" and "applied_seq" to body (borrowed) when min_seq was given. */
static void add_outcome(json_t *body, const ryw_outcome *o)
{
    if (!body || !o->given)
        return;
    json_object_set_new(body, "applied", json_boolean(o->applied));
    if (o->entry[0])
        json_object_set_new(body, "applied_entry", json_string(o->entry));
    else
        json_object_set_new(body, "applied_seq", json_integer((json_int_t)o->seq));
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
        return hr_http_reply_error(c, r, 503, "unavailable", "out of memory");
    hr_api_predict_req q;
    hr_error e = {{0}, {0}};
    const hr_model *m = h->app->model;
    hr_status st = hr_api_predict_query(m, l.p, l.n, &q, &e);
    ryw_outcome o;
    if (st == HR_OK)
        st = await_min_seq(h, &q.wait, &o, &e);
    /* After a wait the ids are looked up again: what was applied meanwhile
     * may have created them. */
    if (st == HR_OK && o.given)
        st = hr_api_predict_query(m, l.p, l.n, &q, &e);
    free(l.p);
    if (st != HR_OK)
        return hr_http_reply_invalid(c, r, "", &e);
    json_t *body = json_pack("{s:f}", "score", hr_model_predict(m, &q.ev));
    if (q.unknown)
        json_object_set_new(body, "unknown", unknown_json(q.unknown));
    add_outcome(body, &o);
    return hr_http_reply_json(c, r, 200, body);
}

static enum MHD_Result handle_predict_post(hr_http *h, struct MHD_Connection *c, request *r)
{
    json_error_t jerr;
    json_t *v = hr_http_parse_body(r, &jerr);
    if (!v)
        return hr_http_reply_malformed(c, r, &jerr);
    json_t *pairs = json_object_get(v, "pairs");
    hr_api_wait w = {.given = false, .wait_ms = -1};
    size_t members = 1 + (json_object_get(v, "min_seq") != NULL) +
                     (json_object_get(v, "wait_ms") != NULL);
    if (!json_is_object(v) || json_object_size(v) != members || !json_is_array(pairs)) {
        json_decref(v);
        return hr_http_reply_error(
            c, r, 400, "invalid",
            "pairs: body must be {\"pairs\": [...]} (and optionally min_seq, wait_ms)");
    }
    size_t n = json_array_size(pairs);
    if (n > (size_t)h->app->cfg.max_batch_events) {
        json_decref(v);
        return hr_http_reply_error(c, r, 413, "too_many_pairs", "%zu pairs; at most %" PRId64, n,
                                   h->app->cfg.max_batch_events);
    }
    hr_error we = {{0}, {0}};
    ryw_outcome o = {.given = false};
    hr_status wst = hr_api_wait_from_json(v, &w, &we);
    if (wst == HR_OK && w.given) {
        /* Validate the pairs before waiting: a bad one is a 400 at once. */
        for (size_t i = 0; i < n; i++) {
            hr_event ev;
            unsigned unk;
            hr_error e = {{0}, {0}};
            if (hr_api_pair_from_json(h->app->model, json_array_get(pairs, i), &ev, &unk, &e) !=
                HR_OK) {
                json_decref(v);
                char where[48];
                snprintf(where, sizeof where, "pairs[%zu].", i);
                return hr_http_reply_invalid(c, r, where, &e);
            }
        }
    }
    if (wst == HR_OK)
        wst = await_min_seq(h, &w, &o, &we);
    if (wst != HR_OK) {
        json_decref(v);
        return hr_http_reply_invalid(c, r, "", &we);
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
            return hr_http_reply_invalid(c, r, where, &e);
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
    add_outcome(body, &o);
    return hr_http_reply_json(c, r, 200, body);
}

enum MHD_Result hr_http_predict(hr_http *h, struct MHD_Connection *c, request *r)
{
    return r->method == M_POST ? handle_predict_post(h, c, r) : handle_predict_get(h, c, r);
}

/* ---- GET /v1/recommend ---- */

enum MHD_Result hr_http_recommend(hr_http *h, struct MHD_Connection *c, request *r)
{
    const hr_model *m = h->app->model;
    param_list l;
    hr_api_recommend_req *q = malloc(sizeof *q);
    if (!q || !query_params(c, &l)) {
        free(q);
        return hr_http_reply_error(c, r, 503, "unavailable", "out of memory");
    }
    hr_error e = {{0}, {0}};
    hr_status st = hr_api_recommend_query(m, l.p, l.n, q, &e);
    ryw_outcome o;
    if (st == HR_OK)
        st = await_min_seq(h, &q->wait, &o, &e);
    if (st == HR_OK && o.given) /* the user and excluded items after the wait */
        st = hr_api_recommend_query(m, l.p, l.n, q, &e);
    free(l.p);
    if (st != HR_OK) {
        free(q);
        return hr_http_reply_invalid(c, r, "", &e);
    }
    /* The catalog's filter: hidden and expired items, the categories asked. */
    hr_catalog_filter_t filt = {NULL, 0, 0};
    if (h->app->catalog &&
        (st = hr_catalog_filter(h->app->catalog, q->categories, q->exclude_categories,
                                hr_wall_time(), &filt, &e)) != HR_OK) {
        free(q);
        return st == HR_EINVAL ? hr_http_reply_invalid(c, r, "", &e)
                               : hr_http_reply_error(c, r, 503, "unavailable", "out of memory");
    }
    /* Ranking and final scores: the recommend module (see recommend.h). */
    hr_recommend_query rq = {q->user_row, q->k, q->exclude_seen, q->exclude, q->nexclude,
                             filt.allow, filt.rows, filt.count};
    hr_recommend_item *items = malloc((size_t)q->k * sizeof *items);
    size_t n = 0;
    bool fallback = false;
    st = items ? hr_recommend(m, h->app->events, h->topk, &rq, items, &n, &fallback) : HR_ENOMEM;
    free(filt.allow);
    if (st != HR_OK) {
        free(q);
        free(items);
        return hr_http_reply_error(c, r, 503, "unavailable", "out of memory");
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
    add_outcome(body, &o);
    free(q);
    free(items);
    return hr_http_reply_json(c, r, 200, body);
}

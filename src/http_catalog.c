/*
 * http_catalog.c - the catalog routes (catalog.h):
 *   PUT    /v1/items/{id}, /v1/users/{id}   one record (the body; "id" optional)
 *   GET    /v1/items/{id}, /v1/users/{id}   the stored record
 *   DELETE /v1/items/{id}                   the record (the id stays in the model)
 *   DELETE /v1/users/{id}                   forgets the user (admin token): model
 *                                           row, recent items, record, logged events
 *   POST   /v1/items, /v1/users             records in bulk: NDJSON or a JSON array,
 *                                           each with its "id"; per-record errors
 * Writes are answered once stored (the main database's commit with --db).
 * In cluster mode a write is a change appended to the cluster's event
 * stream (hr_cluster_catalog_append), answered 202 with its "entry" once
 * Redis acknowledged it; every node applies it in stream order (cluster.c,
 * "Catalog"), so a GET on a node shows it once that node covers the entry.
 *
 * Threads: MHD pool threads; the catalog is thread-safe.
 */
#include <jansson.h>
#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hogrec/api.h"
#include "hogrec/catalog.h"
#include "hogrec/cluster.h"
#include "http_internal.h"

/* The kind a path names ("/v1/items..." or "/v1/users..."). */
static hr_catalog_kind kind_of(const char *url)
{
    return strncmp(url, "/v1/items", 9) == 0 ? HR_CATALOG_ITEM : HR_CATALOG_USER;
}

/* The status of a failed catalog write. */
static enum MHD_Result reply_failed(struct MHD_Connection *c, request *r, hr_status st,
                                    const hr_error *e)
{
    switch (st) {
    case HR_EINVAL: return hr_http_reply_invalid(c, r, "", e);
    case HR_EFULL:
        return hr_http_reply_error(c, r, 507, "full", "%s", e->message);
    case HR_ESTOPPED:
        return hr_http_reply_error(c, r, 503, "shutting_down", "the server is stopping");
    default:
        return hr_http_reply_error(c, r, 503, "unavailable", "%s",
                                   e->message[0] ? e->message : hr_status_to_string(st));
    }
}

static enum MHD_Result no_catalog(struct MHD_Connection *c, request *r)
{
    return hr_http_reply_error(c, r, 503, "unavailable", "the catalog is not open");
}

/* Cluster mode: appends change text (taken; NULL: out of memory or an id
 * that is not UTF-8) and answers 202 with reply (taken; "entry" added). */
static enum MHD_Result cluster_write(hr_http *h, struct MHD_Connection *c, request *r, char *text,
                                     json_t *reply)
{
    if (!text || !reply) {
        free(text);
        json_decref(reply);
        return text ? hr_http_reply_error(c, r, 503, "unavailable", "out of memory")
                    : hr_http_reply_error(c, r, 400, "invalid", "ids must be UTF-8 in cluster mode");
    }
    char entry[64];
    hr_error e = {{0}, {0}};
    hr_status st = hr_cluster_catalog_append(h->app->cluster, text, strlen(text), entry,
                                             sizeof entry, &e);
    free(text);
    if (st != HR_OK) {
        json_decref(reply);
        if (st == HR_EFULL)
            return hr_http_reply_error(c, r, 429, "backlog_full", "%s", e.message);
        if (st == HR_EINVAL)
            return hr_http_reply_error(c, r, 413, "too_large", "%s", e.message);
        return hr_http_reply_error(c, r, 503, "unavailable", "%s",
                                   e.message[0] ? e.message : hr_status_to_string(st));
    }
    json_object_set_new(reply, "entry", json_string(entry));
    return hr_http_reply_json(c, r, 202, reply);
}

enum MHD_Result hr_http_catalog_record(hr_http *h, struct MHD_Connection *c, request *r)
{
    hr_catalog *cat = h->app->catalog;
    if (!cat)
        return no_catalog(c, r);
    hr_catalog_kind kind = kind_of(r->url);
    /* the {id} segment (route /v1/items/{id}; "/v1/users/" is as long) */
    const char *id = r->url + strlen("/v1/items/");
    size_t idlen = strlen(id);
    if (idlen == 0 || idlen > HR_ID_MAX_LEN)
        return hr_http_reply_error(c, r, 404, "not_found", "%s: the id must be 1 to %d bytes",
                                   r->url, HR_ID_MAX_LEN);
    hr_error e = {{0}, {0}};
    hr_status st;
    if (r->method == M_GET || r->method == M_HEAD) {
        json_t *doc = hr_catalog_get(cat, kind, id, idlen);
        if (!doc)
            return hr_http_reply_error(c, r, 404, "not_found", "no %s '%s' in the catalog",
                                       hr_catalog_kind_to_string(kind), id);
        return hr_http_reply_json(c, r, 200, doc);
    }
    if (r->method == M_DELETE && h->app->cluster)
        return cluster_write(h, c, r,
                             kind == HR_CATALOG_USER ? hr_catalog_change_forget(id, idlen)
                                                     : hr_catalog_change_delete(kind, id, idlen),
                             json_pack("{s:s%}", "id", id, idlen));
    if (r->method == M_DELETE && kind == HR_CATALOG_USER) {
        hr_catalog_forgotten f;
        if ((st = hr_catalog_forget_user(cat, id, idlen, &f, &e)) != HR_OK)
            return reply_failed(c, r, st, &e);
        return hr_http_reply_json(c, r, 200,
                                  json_pack("{s:s%,s:b,s:b,s:I}", "id", id, idlen, "record",
                                            f.record, "model", f.model, "db_rows",
                                            (json_int_t)f.db_rows));
    }
    if (r->method == M_DELETE) {
        if ((st = hr_catalog_delete(cat, kind, id, idlen, &e)) == HR_ENOTFOUND)
            return hr_http_reply_error(c, r, 404, "not_found", "%s", e.message);
        if (st != HR_OK)
            return reply_failed(c, r, st, &e);
        return hr_http_reply_json(c, r, 200, json_pack("{s:s%,s:b}", "id", id, idlen, "deleted", 1));
    }
    /* PUT */
    json_error_t jerr;
    json_t *body = hr_http_parse_body(r, &jerr);
    if (!body)
        return hr_http_reply_malformed(c, r, &jerr);
    hr_catalog_record rec;
    st = hr_catalog_parse(body, id, idlen, &rec, &e);
    json_decref(body);
    if (st != HR_OK)
        return hr_http_reply_invalid(c, r, "", &e);
    json_t *reply = json_deep_copy(rec.doc);
    if (h->app->cluster) {
        char *text = hr_catalog_change_put(kind, &rec, 1);
        hr_catalog_record_free(&rec);
        return cluster_write(h, c, r, text, reply);
    }
    bool created = false;
    if ((st = hr_catalog_put(cat, kind, &rec, 1, &created, &e)) != HR_OK) {
        json_decref(reply);
        return reply_failed(c, r, st, &e);
    }
    if (reply)
        json_object_set_new(reply, "created", json_boolean(created));
    return hr_http_reply_json(c, r, 200, reply);
}

enum MHD_Result hr_http_catalog_bulk(hr_http *h, struct MHD_Connection *c, request *r)
{
    hr_catalog *cat = h->app->catalog;
    if (!cat)
        return no_catalog(c, r);
    hr_catalog_kind kind = kind_of(r->url);
    json_t *errors;
    enum MHD_Result ret;
    json_t *recs = hr_http_body_list(c, r, "a record, an array of records or NDJSON", &errors, &ret);
    if (!recs)
        return ret;
    size_t n = json_array_size(recs);
    if (n > (size_t)h->app->cfg.max_batch_events) {
        json_decref(recs);
        json_decref(errors);
        return hr_http_reply_error(c, r, 400, "too_many_records",
                                   "%zu records; at most %lld per request (max_batch_events)", n,
                                   (long long)h->app->cfg.max_batch_events);
    }
    hr_catalog_record *ok = calloc(n ? n : 1, sizeof *ok);
    if (!ok) {
        json_decref(recs);
        json_decref(errors);
        return hr_http_reply_error(c, r, 503, "unavailable", "out of memory");
    }
    size_t nok = 0, rejected = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_array_get(recs, i);
        if (json_is_null(v)) { /* a line the splitter listed in errors */
            rejected++;
            continue;
        }
        hr_error e = {{0}, {0}};
        if (hr_catalog_parse(v, NULL, 0, &ok[nok], &e) == HR_OK) {
            nok++;
            continue;
        }
        rejected++;
        json_t *err = json_pack("{s:I,s:s}", "index", (json_int_t)i, "message", e.message);
        if (err && e.field[0])
            json_object_set_new(err, "field", json_string(e.field));
        json_array_append_new(errors, err);
    }
    json_decref(recs);
    if (h->app->cluster) {
        char *text = nok ? hr_catalog_change_put(kind, ok, nok) : NULL;
        for (size_t i = 0; i < nok; i++)
            hr_catalog_record_free(&ok[i]);
        free(ok);
        json_t *reply = json_pack("{s:I,s:I,s:o}", "accepted", (json_int_t)nok, "rejected",
                                  (json_int_t)rejected, "errors", errors);
        if (nok == 0)
            return hr_http_reply_json(c, r, 202, reply);
        return cluster_write(h, c, r, text, reply);
    }
    hr_error e = {{0}, {0}};
    hr_status st = hr_catalog_put(cat, kind, ok, nok, NULL, &e); /* takes the records */
    free(ok);
    if (st != HR_OK) {
        json_decref(errors);
        return reply_failed(c, r, st, &e);
    }
    return hr_http_reply_json(c, r, 200,
                              json_pack("{s:I,s:I,s:o}", "accepted", (json_int_t)nok, "rejected",
                                        (json_int_t)rejected, "errors", errors));
}

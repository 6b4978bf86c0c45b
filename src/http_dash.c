/*
 * http_dash.c - the operator dashboard's routes: GET / (redirect to /ui/),
 * GET /ui/<file> (the files of web/, embedded at build time), GET
 * /v1/stats/history (the per-second samples of the statsring module) and
 * the explorer's two reads, GET /v1/similar (an item's nearest items by
 * embedding) and GET /v1/user (whether a user is cold, its recent items).
 *
 * The dashboard's files are answered with their ETag (a hash of the bytes,
 * computed at build time; If-None-Match -> 304), Cache-Control: no-cache
 * (revalidate each time) and a Content-Security-Policy that allows only the
 * server's own scripts, styles and fetches: no inline script or style, no
 * other origin, no framing.
 *
 * Threads: MHD pool threads; the ring, the model and the events' recent
 * lists are safe to read from any thread.
 */
#include <jansson.h>
#include <microhttpd.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hogrec/api.h"
#include "hogrec/events.h"
#include "hogrec/recommend.h"
#include "hogrec/statsring.h"
#include "http_internal.h"
#include "web_assets.h"

#define UI_PREFIX "/ui/"
#define UI_CSP                                                                                     \
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "           \
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "               \
    "frame-ancestors 'none'"
#define SIMILAR_DEFAULT_K 10
#define SEEN_MAX 100 /* recent items /v1/user lists at most */

/* ---- the embedded files ---- */

static const hr_web_asset *asset_named(const char *name)
{
    if (!*name)
        name = "index.html";
    for (int i = 0; i < hr_web_asset_count; i++)
        if (strcmp(hr_web_assets[i].name, name) == 0)
            return &hr_web_assets[i];
    return NULL;
}

/* Whether an If-None-Match header names etag (or is "*"). */
static bool etag_matches(const char *inm, const char *etag)
{
    if (!inm)
        return false;
    if (strcmp(inm, "*") == 0)
        return true;
    size_t n = strlen(etag);
    for (const char *p = strstr(inm, etag); p; p = strstr(p + 1, etag)) {
        bool start = p == inm || p[-1] == ' ' || p[-1] == ',' || (p - inm >= 2 && p[-1] == '/' &&
                                                                  p[-2] == 'W');
        bool end = p[n] == 0 || p[n] == ',' || p[n] == ' ';
        if (start && end)
            return true;
    }
    return false;
}

enum MHD_Result hr_http_ui(hr_http *h, struct MHD_Connection *c, request *r)
{
    (void)h;
    const hr_web_asset *a = asset_named(r->url + strlen(UI_PREFIX));
    if (!a)
        return hr_http_reply_error(c, r, 404, "not_found", "no file %s", r->url);
    const char *headers[] = {MHD_HTTP_HEADER_ETAG,
                             a->etag,
                             MHD_HTTP_HEADER_CACHE_CONTROL,
                             "no-cache",
                             "Content-Security-Policy",
                             UI_CSP,
                             "X-Content-Type-Options",
                             "nosniff",
                             "Referrer-Policy",
                             "no-referrer",
                             NULL};
    const char *inm = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                                  MHD_HTTP_HEADER_IF_NONE_MATCH);
    if (etag_matches(inm, a->etag))
        return hr_http_reply_static(c, r, 304, NULL, 0, NULL, headers);
    return hr_http_reply_static(c, r, 200, a->data, a->len, a->ctype, headers);
}

enum MHD_Result hr_http_root(hr_http *h, struct MHD_Connection *c, request *r)
{
    (void)h;
    static const char text[] = "see /ui/\n";
    const char *headers[] = {MHD_HTTP_HEADER_LOCATION, UI_PREFIX, NULL};
    return hr_http_reply_static(c, r, 302, text, sizeof text - 1, "text/plain; charset=utf-8",
                                headers);
}

/* ---- query parameters ---- */

typedef struct {
    const char *const *names; /* the parameters the route reads, NULL-terminated */
    unsigned seen;            /* bit i: names[i] was given */
    const char *bad;          /* the first unknown or repeated one (borrowed), or NULL */
} param_check;

static enum MHD_Result check_param(void *cls, enum MHD_ValueKind kind, const char *key,
                                   const char *value)
{
    (void)kind;
    (void)value;
    param_check *pc = cls;
    for (unsigned i = 0; pc->names[i]; i++)
        if (strcmp(key, pc->names[i]) == 0) {
            if (pc->seen & (1u << i))
                break;
            pc->seen |= 1u << i;
            return MHD_YES;
        }
    pc->bad = key;
    return MHD_NO;
}

/* Whether every parameter is one of names, each given once (the API's rule,
 * openapi.yaml); else answers the 400 and returns false (*ret set). */
static bool params_ok(struct MHD_Connection *c, request *r, const char *const *names,
                      enum MHD_Result *ret)
{
    param_check pc = {names, 0, NULL};
    MHD_get_connection_values(c, MHD_GET_ARGUMENT_KIND, check_param, &pc);
    if (!pc.bad)
        return true;
    char name[64];
    snprintf(name, sizeof name, "%s", pc.bad);
    hr_api_printable(name);
    *ret = hr_http_reply_error(c, r, 400, "invalid", "%s: unknown or repeated parameter", name);
    return false;
}

/* ---- GET /v1/stats/history ---- */

/* since: decimal digits (Unix milliseconds), at most 19 of them. */
static bool parse_ms(const char *v, uint64_t *out)
{
    uint64_t x = 0;
    size_t i = 0;
    for (; v[i] >= '0' && v[i] <= '9' && i < 19; i++)
        x = x * 10 + (uint64_t)(v[i] - '0');
    if (i == 0 || v[i])
        return false;
    *out = x;
    return true;
}

enum MHD_Result hr_http_stats_history(hr_http *h, struct MHD_Connection *c, request *r)
{
    static const char *const names[] = {"since", NULL};
    enum MHD_Result ret;
    if (!params_ok(c, r, names, &ret))
        return ret;
    const char *since = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "since");
    uint64_t ms = 0;
    if (since && !parse_ms(since, &ms))
        return hr_http_reply_error(c, r, 400, "invalid",
                                   "since: Unix time in milliseconds, 1 to 19 decimal digits");
    return hr_http_reply_json(c, r, 200, hr_statsring_json(h->ring, ms));
}

/* ---- the explorer ---- */

/* The id parameter `name` (borrowed): 1..HR_ID_MAX_LEN bytes of UTF-8
 * without NUL; false otherwise. */
static bool id_param(struct MHD_Connection *c, const char *name, const char **id, size_t *len)
{
    const char *v = NULL;
    size_t vl = 0;
    if (MHD_lookup_connection_value_n(c, MHD_GET_ARGUMENT_KIND, name, strlen(name), &v, &vl) !=
            MHD_YES ||
        !v || vl == 0 || vl > HR_ID_MAX_LEN || memchr(v, 0, vl))
        return false;
    json_t *s = json_stringn(v, vl); /* NULL when not UTF-8 */
    json_decref(s);
    *id = v;
    *len = vl;
    return s != NULL;
}

enum MHD_Result hr_http_similar(hr_http *h, struct MHD_Connection *c, request *r)
{
    static const char *const names[] = {"item", "k", NULL};
    enum MHD_Result ret;
    if (!params_ok(c, r, names, &ret))
        return ret;
    const hr_model *m = h->app->model;
    const char *id, *kv = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "k");
    size_t len;
    if (!id_param(c, "item", &id, &len))
        return hr_http_reply_error(c, r, 400, "invalid",
                                   "item: an id of 1 to %d bytes of UTF-8 is required",
                                   HR_ID_MAX_LEN);
    uint64_t k = SIMILAR_DEFAULT_K;
    if (kv && (!parse_ms(kv, &k) || k < 1 || k > HR_API_MAX_K))
        return hr_http_reply_error(c, r, 400, "invalid", "k: an integer in [1, %d]",
                                   HR_API_MAX_K);
    uint32_t row = hr_model_lookup(m, HR_TABLE_ITEM, id, len);
    json_t *list = json_array();
    bool known = row != HR_ID_NONE && row != 0;
    if (known) {
        hr_recommend_item *items = malloc((size_t)k * sizeof *items);
        size_t n = 0;
        if (!items || hr_recommend_similar(m, row, (uint32_t)k, items, &n) != HR_OK) {
            free(items);
            json_decref(list);
            return hr_http_reply_error(c, r, 503, "unavailable", "out of memory");
        }
        for (size_t i = 0; i < n; i++) {
            size_t kl;
            const char *key = hr_model_key(m, HR_TABLE_ITEM, items[i].row, &kl);
            if (key)
                json_array_append_new(list, json_pack("{s:s%,s:f}", "item", key, kl, "score",
                                                      items[i].score));
        }
        free(items);
    }
    return hr_http_reply_json(c, r, 200,
                              json_pack("{s:s%,s:b,s:o}", "item", id, len, "known", known,
                                        "items", list));
}

enum MHD_Result hr_http_user(hr_http *h, struct MHD_Connection *c, request *r)
{
    static const char *const names[] = {"user", NULL};
    enum MHD_Result ret;
    if (!params_ok(c, r, names, &ret))
        return ret;
    const hr_model *m = h->app->model;
    const char *id;
    size_t len;
    if (!id_param(c, "user", &id, &len))
        return hr_http_reply_error(c, r, 400, "invalid",
                                   "user: an id of 1 to %d bytes of UTF-8 is required",
                                   HR_ID_MAX_LEN);
    uint32_t row = hr_model_lookup(m, HR_TABLE_USER, id, len);
    bool known = row != HR_ID_NONE && row != 0;
    /* cold: scored as the default row (unknown, or below min_count), which
     * is when /v1/recommend falls back to the popular items */
    bool cold = !known || hr_model_effective_row(m, HR_TABLE_USER, row) == 0;
    json_t *seen = json_array();
    if (known) {
        uint32_t rows[SEEN_MAX];
        size_t n = hr_events_recent(h->app->events, row, rows, SEEN_MAX);
        for (size_t i = 0; i < n && i < SEEN_MAX; i++) {
            bool again = false; /* the recent list repeats items: list each once */
            for (size_t j = 0; j < i && !again; j++)
                again = rows[j] == rows[i];
            size_t kl;
            if (again)
                continue;
            const char *key = hr_model_key(m, HR_TABLE_ITEM, rows[i], &kl);
            if (key)
                json_array_append_new(seen, json_stringn(key, kl));
        }
    }
    return hr_http_reply_json(c, r, 200,
                              json_pack("{s:s%,s:b,s:b,s:o}", "user", id, len, "known", known,
                                        "cold", cold, "seen", seen));
}

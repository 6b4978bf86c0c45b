/*
 * catalog.c - users and items beyond their ids; see catalog.h.
 *
 * DESIGN
 * - Memory: per kind a JSON object id -> canonical record (jansson's hash
 *   table, keys with their length). Item categories are numbered as first
 *   seen (cat_index: name -> number) and each has a bitmap over item rows
 *   (bit r: the item at row r is in it); `blocked` is the bitmap of hidden
 *   and expired items. All bitmaps have `nwords` words, grown together
 *   when a record lands on a row past them.
 * - Expiry: next_expiry is the earliest expires_at still in the future
 *   when it was computed; a filter built at or after it rescans the item
 *   records once (under the write lock) and blocks what expired. So a
 *   filter costs a pass over a few bitmaps, and the items only when
 *   something expired since the last filter.
 * - Writes: wmu serializes writers; the database write comes first (a
 *   failed write changes nothing), then memory under the rwlock's write
 *   side. Filters and reads take its read side. Model attributes are set
 *   while holding wmu (the model's own atomics make them visible).
 *
 * Workload: writes are rare next to reads (a catalog update per item
 * change, a filter per recommendation).
 */
#include "hogrec/catalog.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hogrec/api.h"
#include "hogrec/persist.h"

struct hr_catalog {
    hr_model *model;              /* borrowed */
    hr_events *events;            /* borrowed: recent items of a forgotten user */
    struct hr_persist *persist;   /* borrowed; NULL: memory only; under wmu */
    bool detached;                /* hr_catalog_detach ran: writes refused; under wmu */
    pthread_mutex_t wmu;          /* one writer at a time (database, then memory) */
    pthread_rwlock_t lock;        /* guards everything below */
    json_t *map[HR_CATALOG_KINDS]; /* id -> canonical record (owned) */
    json_t *cat_index;            /* item category -> its number (owned) */
    uint32_t ncats;               /* categories numbered */
    uint64_t *cat_bits[HR_CATALOG_MAX_DISTINCT]; /* owned, nwords words each */
    uint64_t *blocked;            /* owned, nwords words: hidden or expired items */
    uint32_t nwords;              /* words of every bitmap */
    uint32_t nblocked;            /* bits set in blocked */
    double next_expiry;           /* earliest future expires_at not yet applied (INFINITY: none) */
    json_t *urow;                 /* cluster mode: user id -> the row its record was applied
                                     to (owned; NULL until the first change applied) */
};

static const char *const kind_name[HR_CATALOG_KINDS] = {"user", "item"};

const char *hr_catalog_kind_to_string(hr_catalog_kind k)
{
    return (unsigned)k < HR_CATALOG_KINDS ? kind_name[k] : "unknown";
}

static hr_table_id table_of(hr_catalog_kind k)
{
    return k == HR_CATALOG_USER ? HR_TABLE_USER : HR_TABLE_ITEM;
}

hr_status hr_catalog_create(hr_model *model, hr_events *events, struct hr_persist *persist,
                            hr_catalog **out)
{
    *out = NULL;
    hr_catalog *c = calloc(1, sizeof *c);
    if (!c)
        return HR_ENOMEM;
    c->model = model;
    c->events = events;
    c->persist = persist;
    c->next_expiry = INFINITY;
    pthread_mutex_init(&c->wmu, NULL);
    pthread_rwlock_init(&c->lock, NULL);
    c->map[0] = json_object();
    c->map[1] = json_object();
    c->cat_index = json_object();
    if (!c->map[0] || !c->map[1] || !c->cat_index) {
        hr_catalog_destroy(c);
        return HR_ENOMEM;
    }
    *out = c;
    return HR_OK;
}

void hr_catalog_destroy(hr_catalog *c)
{
    if (!c)
        return;
    for (int k = 0; k < HR_CATALOG_KINDS; k++)
        json_decref(c->map[k]);
    json_decref(c->cat_index);
    json_decref(c->urow);
    for (uint32_t i = 0; i < c->ncats; i++)
        free(c->cat_bits[i]);
    free(c->blocked);
    pthread_rwlock_destroy(&c->lock);
    pthread_mutex_destroy(&c->wmu);
    free(c);
}

void hr_catalog_detach(hr_catalog *c)
{
    if (!c)
        return;
    pthread_mutex_lock(&c->wmu);
    c->persist = NULL;
    c->detached = true;
    pthread_mutex_unlock(&c->wmu);
}

/* ---- validation (pure) ---- */

void hr_catalog_record_free(hr_catalog_record *r)
{
    if (r) {
        json_decref(r->doc);
        r->doc = NULL;
    }
}

static hr_status parse_features(const json_t *v, json_t *out, hr_error *err)
{
    if (!json_is_object(v))
        return hr_error_set(err, HR_EINVAL, "features", "features must be an object");
    if (json_object_size(v) > HR_CATALOG_MAX_FEATURES)
        return hr_error_set(err, HR_EINVAL, "features", "at most %d features",
                            HR_CATALOG_MAX_FEATURES);
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)v, key, val) {
        size_t klen = strlen(key);
        if (klen == 0 || klen > HR_ID_MAX_LEN)
            return hr_error_set(err, HR_EINVAL, "features", "feature names must be 1 to %d bytes",
                                HR_ID_MAX_LEN);
        if (json_is_number(val)) {
            double x = json_number_value(val);
            if (!isfinite(x) || fabs(x) > 1e6)
                return hr_error_set(err, HR_EINVAL, "features",
                                    "feature '%s' must be finite and at most 1e6 in size", key);
        } else if (!json_is_string(val) || json_string_length(val) > HR_ID_MAX_LEN) {
            return hr_error_set(err, HR_EINVAL, "features",
                                "feature '%s' must be a string of at most %d bytes or a number",
                                key, HR_ID_MAX_LEN);
        }
        json_object_set(out, key, val);
    }
    return HR_OK;
}

static hr_status parse_categories(const json_t *v, json_t *out, hr_error *err)
{
    if (!json_is_array(v))
        return hr_error_set(err, HR_EINVAL, "categories", "categories must be an array of strings");
    if (json_array_size(v) > HR_CATALOG_MAX_CATEGORIES)
        return hr_error_set(err, HR_EINVAL, "categories", "at most %d categories",
                            HR_CATALOG_MAX_CATEGORIES);
    size_t i;
    json_t *s;
    json_array_foreach(v, i, s) {
        size_t n = json_string_length(s);
        if (!json_is_string(s) || n == 0 || n > HR_CATALOG_MAX_CATEGORY_LEN ||
            memchr(json_string_value(s), ',', n) || memchr(json_string_value(s), 0, n))
            return hr_error_set(err, HR_EINVAL, "categories",
                                "categories[%zu] must be a string of 1 to %d bytes without ',' "
                                "or NUL",
                                i, HR_CATALOG_MAX_CATEGORY_LEN);
        bool seen = false;
        for (size_t j = 0; j < json_array_size(out) && !seen; j++)
            seen = json_equal(json_array_get(out, j), s);
        if (!seen)
            json_array_append(out, s);
    }
    return HR_OK;
}

hr_status hr_catalog_parse(const json_t *obj, const char *id, size_t idlen,
                           hr_catalog_record *out, hr_error *err)
{
    memset(out, 0, sizeof *out);
    if (!json_is_object(obj))
        return hr_error_set(err, HR_EINVAL, "", "a record must be a JSON object");
    static const char *const names[] = {"id", "features", "categories", "hidden", "expires_at"};
    const json_t *f[5] = {NULL};
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)obj, key, v) {
        size_t i = 0;
        while (i < 5 && strcmp(key, names[i]) != 0)
            i++;
        if (i == 5)
            return hr_error_set(err, HR_EINVAL, key, "unknown field '%s'", key);
        f[i] = v;
    }
    hr_status st;
    if (f[0]) {
        char buf[HR_ID_MAX_LEN + 1];
        size_t n;
        if ((st = hr_api_id(f[0], "id", buf, &n, err)) != HR_OK)
            return st;
        if (id && (n != idlen || memcmp(buf, id, n) != 0))
            return hr_error_set(err, HR_EINVAL, "id", "id does not match the path's id");
        memcpy(out->id, buf, n + 1);
        out->idlen = n;
    } else if (id) {
        if (idlen == 0 || idlen > HR_ID_MAX_LEN || memchr(id, 0, idlen))
            return hr_error_set(err, HR_EINVAL, "id", "id must be 1 to %d bytes without NUL",
                                HR_ID_MAX_LEN);
        memcpy(out->id, id, idlen);
        out->id[idlen] = 0;
        out->idlen = idlen;
    } else {
        return hr_error_set(err, HR_EINVAL, "id", "id is required");
    }
    if (f[3] && !json_is_boolean(f[3]))
        return hr_error_set(err, HR_EINVAL, "hidden", "hidden must be true or false");
    if (f[4] && !json_is_null(f[4]) &&
        (!json_is_number(f[4]) || !isfinite(json_number_value(f[4])) ||
         json_number_value(f[4]) < 0))
        return hr_error_set(err, HR_EINVAL, "expires_at",
                            "expires_at must be a number of epoch seconds >= 0, or null");
    json_t *feats = json_object(), *cats = json_array();
    json_t *doc = json_object();
    if (!feats || !cats || !doc) {
        json_decref(feats);
        json_decref(cats);
        json_decref(doc);
        return hr_error_set(err, HR_ENOMEM, NULL, "out of memory");
    }
    st = HR_OK;
    if (f[1])
        st = parse_features(f[1], feats, err);
    if (st == HR_OK && f[2])
        st = parse_categories(f[2], cats, err);
    json_object_set_new(doc, "id", json_stringn(out->id, out->idlen));
    json_object_set_new(doc, "features", feats);
    json_object_set_new(doc, "categories", cats);
    json_object_set_new(doc, "hidden", json_boolean(f[3] && json_is_true(f[3])));
    if (f[4] && !json_is_null(f[4]))
        json_object_set_new(doc, "expires_at", json_real(json_number_value(f[4])));
    if (st != HR_OK || !json_object_get(doc, "id")) {
        json_decref(doc);
        return st != HR_OK ? st : hr_error_set(err, HR_EINVAL, "id", "id must be UTF-8");
    }
    out->doc = doc;
    return HR_OK;
}

/* ---- attributes ---- */

/* The value of each of a record's n model attributes: its side's
 * attr_value, divided by sqrt(n) or n as attr_norm says (a number
 * attribute: times its number). */
static float attr_scale(const hr_model *m, hr_catalog_kind kind, uint32_t n)
{
    const hr_model_config *mc = hr_model_get_config(m);
    float v = mc->attr_value[kind == HR_CATALOG_USER ? 0 : 1];
    if (n > 1 && mc->attr_norm == HR_CONFIG_ATTR_NORM_SQRT)
        v /= sqrtf((float)n);
    else if (n > 1 && mc->attr_norm == HR_CONFIG_ATTR_NORM_COUNT)
        v /= (float)n;
    return v;
}

/* The model attributes of a record: its features then its categories,
 * hashed under "<kind>:<field>", each with the value attr_scale (a number
 * times it). At 1 (the weight of an event's own features) MovieLens' time
 * split and u1 lost 1 to 2 points of test AUC with u.user and u.item; at
 * 0.1 both gained a little, hence the default attr_value (README). */
static uint32_t attrs_of(const hr_model *m, hr_catalog_kind kind, const json_t *doc, hr_feat *out)
{
    uint32_t n = 0;
    char field[HR_ID_MAX_LEN + 16];
    const char *key;
    json_t *v;
    json_object_foreach(json_object_get(doc, "features"), key, v) {
        if (n == HR_MAX_ATTRS)
            break;
        int fl = snprintf(field, sizeof field, "%s:%s", kind_name[kind], key);
        if (json_is_string(v)) {
            out[n].row = hr_model_ctx_row(m, field, (size_t)fl, json_string_value(v),
                                          json_string_length(v));
            out[n].x = 1.0f;
        } else {
            out[n].row = hr_model_ctx_row(m, field, (size_t)fl, NULL, 0);
            out[n].x = (float)json_number_value(v);
        }
        n++;
    }
    int fl = snprintf(field, sizeof field, "%s:category", kind_name[kind]);
    size_t i;
    json_array_foreach(json_object_get(doc, "categories"), i, v) {
        if (n == HR_MAX_ATTRS)
            break;
        out[n].row = hr_model_ctx_row(m, field, (size_t)fl, json_string_value(v),
                                      json_string_length(v));
        out[n].x = 1.0f;
        n++;
    }
    const float scale = attr_scale(m, kind, n);
    for (uint32_t i = 0; i < n; i++)
        out[i].x *= scale;
    return n;
}

/* ---- bitmaps (under the write lock) ---- */

static bool bit_get(const uint64_t *b, uint32_t nwords, uint32_t r)
{
    return r / 64 < nwords && (b[r / 64] >> (r % 64)) & 1;
}

static void bit_put(uint64_t *b, uint32_t r, bool on)
{
    if (on)
        b[r / 64] |= 1ull << (r % 64);
    else
        b[r / 64] &= ~(1ull << (r % 64));
}

static hr_status grow_words(hr_catalog *c, uint32_t row)
{
    uint32_t need = row / 64 + 1;
    if (need <= c->nwords)
        return HR_OK;
    uint32_t want = c->nwords ? c->nwords : 16;
    while (want < need)
        want *= 2;
    uint64_t *b = realloc(c->blocked, want * sizeof *b);
    if (!b)
        return HR_ENOMEM;
    memset(b + c->nwords, 0, (want - c->nwords) * sizeof *b);
    c->blocked = b;
    for (uint32_t i = 0; i < c->ncats; i++) {
        uint64_t *cb = realloc(c->cat_bits[i], want * sizeof *cb);
        if (!cb)
            return HR_ENOMEM; /* the others keep their size: nwords unchanged */
        memset(cb + c->nwords, 0, (want - c->nwords) * sizeof *cb);
        c->cat_bits[i] = cb;
    }
    c->nwords = want;
    return HR_OK;
}

/* The number of a category; -1 when unknown and !add, or no room. */
static int cat_number(hr_catalog *c, const json_t *name, bool add)
{
    json_t *n = json_object_getn(c->cat_index, json_string_value(name), json_string_length(name));
    if (n)
        return (int)json_integer_value(n);
    if (!add || c->ncats >= HR_CATALOG_MAX_DISTINCT)
        return -1;
    uint64_t *b = calloc(c->nwords ? c->nwords : 1, sizeof *b);
    if (!b)
        return -1;
    c->cat_bits[c->ncats] = b;
    json_object_setn_new(c->cat_index, json_string_value(name), json_string_length(name),
                         json_integer(c->ncats));
    return (int)c->ncats++;
}

static bool doc_blocked(const json_t *doc, double now)
{
    const json_t *e = json_object_get(doc, "expires_at");
    return json_is_true(json_object_get(doc, "hidden")) || (e && json_number_value(e) <= now);
}

/* Sets (on) or clears the filter bits of an item record at row. */
static void item_bits(hr_catalog *c, const json_t *doc, uint32_t row, bool on, double now)
{
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(doc, "categories"), i, v) {
        int k = cat_number(c, v, false);
        if (k >= 0)
            bit_put(c->cat_bits[k], row, on);
    }
    bool was = bit_get(c->blocked, c->nwords, row);
    bool now_blocked = on && doc_blocked(doc, now);
    if (was != now_blocked) {
        bit_put(c->blocked, row, now_blocked);
        c->nblocked += now_blocked ? 1 : (uint32_t)-1;
    }
    const json_t *e = json_object_get(doc, "expires_at");
    if (on && e && json_number_value(e) > now && json_number_value(e) < c->next_expiry)
        c->next_expiry = json_number_value(e);
}

/* Blocks items whose expiry passed; the next expiry. Under the write lock. */
static void apply_expiry(hr_catalog *c, double now)
{
    c->next_expiry = INFINITY;
    const char *key;
    size_t klen;
    json_t *doc;
    json_object_keylen_foreach(c->map[HR_CATALOG_ITEM], key, klen, doc) {
        const json_t *e = json_object_get(doc, "expires_at");
        if (!e)
            continue;
        double t = json_number_value(e);
        uint32_t row = hr_model_lookup(c->model, HR_TABLE_ITEM, key, klen);
        if (t <= now && row != HR_ID_NONE && !bit_get(c->blocked, c->nwords, row)) {
            bit_put(c->blocked, row, true);
            c->nblocked++;
        } else if (t > now && t < c->next_expiry) {
            c->next_expiry = t;
        }
    }
}

/* ---- writes ---- */

/* Applies one stored record to memory (under wmu and the write lock). */
static hr_status apply_put(hr_catalog *c, hr_catalog_kind kind, hr_catalog_record *r,
                           bool *created, hr_error *err)
{
    hr_table_id t = table_of(kind);
    uint32_t row;
    hr_status st = hr_model_intern(c->model, t, r->id, r->idlen, &row, NULL);
    if (st != HR_OK)
        return hr_error_set(err, st, "id", "%s '%s': %s", kind_name[kind], r->id,
                            st == HR_EFULL ? "the id table is full" : hr_status_to_string(st));
    double now = hr_wall_time();
    json_t *old = json_object_getn(c->map[kind], r->id, r->idlen);
    if (created)
        *created = old == NULL;
    if (kind == HR_CATALOG_ITEM) {
        if ((st = grow_words(c, row)) != HR_OK)
            return hr_error_set(err, st, NULL, "out of memory");
        size_t i;
        json_t *v;
        json_array_foreach(json_object_get(r->doc, "categories"), i, v)
            if (cat_number(c, v, true) < 0)
                return hr_error_set(err, HR_EINVAL, "categories",
                                    "the catalog holds %d distinct categories already",
                                    HR_CATALOG_MAX_DISTINCT);
        if (old)
            item_bits(c, old, row, false, now);
        item_bits(c, r->doc, row, true, now);
    }
    hr_feat f[HR_MAX_ATTRS];
    uint32_t n = attrs_of(c->model, kind, r->doc, f);
    if ((st = hr_model_set_attrs(c->model, t, row, f, n, true)) != HR_OK)
        return hr_error_set(err, st, NULL, "setting attributes: %s", hr_status_to_string(st));
    json_object_setn_new(c->map[kind], r->id, r->idlen, r->doc);
    r->doc = NULL;
    return HR_OK;
}

hr_status hr_catalog_put(hr_catalog *c, hr_catalog_kind kind, hr_catalog_record *recs, size_t n,
                         bool *created, hr_error *err)
{
    hr_status st = HR_OK;
    char **texts = calloc(n ? n : 1, sizeof *texts);
    const char **ids = calloc(n ? n : 1, sizeof *ids);
    size_t *tlen = calloc(n ? n : 1, sizeof *tlen), *idlen = calloc(n ? n : 1, sizeof *idlen);
    if (!texts || !ids || !tlen || !idlen)
        st = hr_error_set(err, HR_ENOMEM, NULL, "out of memory");
    for (size_t i = 0; st == HR_OK && i < n; i++) {
        texts[i] = json_dumps(recs[i].doc, JSON_COMPACT | JSON_SORT_KEYS | JSON_REAL_PRECISION(17));
        if (!texts[i])
            st = hr_error_set(err, HR_ENOMEM, NULL, "out of memory");
        else
            tlen[i] = strlen(texts[i]);
        ids[i] = recs[i].id;
        idlen[i] = recs[i].idlen;
    }
    pthread_mutex_lock(&c->wmu);
    if (st == HR_OK && c->detached)
        st = hr_error_set(err, HR_ESTOPPED, NULL, "the server is stopping");
    if (st == HR_OK && c->persist && n)
        st = hr_persist_catalog_put(c->persist, kind_name[kind], n, ids, idlen,
                                    (const char *const *)texts, tlen, err);
    if (st == HR_OK) {
        pthread_rwlock_wrlock(&c->lock);
        for (size_t i = 0; st == HR_OK && i < n; i++)
            st = apply_put(c, kind, &recs[i], created ? &created[i] : NULL, err);
        pthread_rwlock_unlock(&c->lock);
    }
    pthread_mutex_unlock(&c->wmu);
    for (size_t i = 0; i < n; i++) {
        free(texts ? texts[i] : NULL);
        hr_catalog_record_free(&recs[i]);
    }
    free(texts);
    free(ids);
    free(tlen);
    free(idlen);
    return st;
}

json_t *hr_catalog_get(hr_catalog *c, hr_catalog_kind kind, const char *id, size_t idlen)
{
    pthread_rwlock_rdlock(&c->lock);
    json_t *doc = json_object_getn(c->map[kind], id, idlen);
    json_t *copy = doc ? json_deep_copy(doc) : NULL;
    pthread_rwlock_unlock(&c->lock);
    return copy;
}

/* Removes a record from memory (under wmu and the write lock); whether
 * there was one. */
static bool drop_record(hr_catalog *c, hr_catalog_kind kind, const char *id, size_t idlen)
{
    json_t *old = json_object_getn(c->map[kind], id, idlen);
    if (!old)
        return false;
    uint32_t row = hr_model_lookup(c->model, table_of(kind), id, idlen);
    if (row != HR_ID_NONE && row != 0) {
        if (kind == HR_CATALOG_ITEM)
            item_bits(c, old, row, false, hr_wall_time());
        hr_model_set_attrs(c->model, table_of(kind), row, NULL, 0, false);
    }
    json_object_deln(c->map[kind], id, idlen);
    return true;
}

hr_status hr_catalog_delete(hr_catalog *c, hr_catalog_kind kind, const char *id, size_t idlen,
                            hr_error *err)
{
    pthread_mutex_lock(&c->wmu);
    bool found = false;
    hr_status st = c->detached ? hr_error_set(err, HR_ESTOPPED, NULL, "the server is stopping")
                               : HR_OK;
    if (st == HR_OK && c->persist)
        st = hr_persist_catalog_delete(c->persist, kind_name[kind], id, idlen, &found, err);
    if (st == HR_OK) {
        pthread_rwlock_wrlock(&c->lock);
        found = drop_record(c, kind, id, idlen) || found;
        pthread_rwlock_unlock(&c->lock);
        if (!found)
            st = hr_error_set(err, HR_ENOTFOUND, "id", "no %s '%.*s' in the catalog",
                              kind_name[kind], (int)(idlen > 64 ? 64 : idlen), id);
    }
    pthread_mutex_unlock(&c->wmu);
    return st;
}

hr_status hr_catalog_forget_user(hr_catalog *c, const char *id, size_t idlen,
                                 hr_catalog_forgotten *out, hr_error *err)
{
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&c->wmu);
    if (c->detached) {
        pthread_mutex_unlock(&c->wmu);
        return hr_error_set(err, HR_ESTOPPED, NULL, "the server is stopping");
    }
    pthread_rwlock_wrlock(&c->lock);
    out->record = drop_record(c, HR_CATALOG_USER, id, idlen);
    pthread_rwlock_unlock(&c->lock);
    uint32_t row = hr_model_lookup(c->model, HR_TABLE_USER, id, idlen);
    if (row != HR_ID_NONE && row != 0) {
        hr_history_set_ring(hr_events_history(c->events), row, NULL, 0, 0);
        out->model = hr_model_forget(c->model, HR_TABLE_USER, row) == HR_OK;
    }
    hr_status st = HR_OK;
    if (c->persist)
        st = hr_persist_forget_user(c->persist, id, idlen, &out->db_rows, err);
    pthread_mutex_unlock(&c->wmu);
    return st;
}

size_t hr_catalog_count(hr_catalog *c, hr_catalog_kind kind)
{
    pthread_rwlock_rdlock(&c->lock);
    size_t n = json_object_size(c->map[kind]);
    pthread_rwlock_unlock(&c->lock);
    return n;
}

/* ---- load ---- */

typedef struct {
    hr_catalog *c;
    size_t skipped;
} load_ctx;

static hr_status load_one(void *arg, const char *kind, const char *id, size_t idlen,
                          const char *record, size_t rlen)
{
    load_ctx *lc = arg;
    hr_catalog *c = lc->c;
    hr_catalog_kind k = strcmp(kind, "user") == 0 ? HR_CATALOG_USER : HR_CATALOG_ITEM;
    json_t *obj = json_loadb(record, rlen, 0, NULL);
    hr_catalog_record r;
    hr_error e = {{0}, {0}};
    hr_status st = obj ? hr_catalog_parse(obj, id, idlen, &r, &e) : HR_EINVAL;
    json_decref(obj);
    if (st == HR_OK) {
        pthread_rwlock_wrlock(&c->lock);
        st = apply_put(c, k, &r, NULL, &e);
        pthread_rwlock_unlock(&c->lock);
        hr_catalog_record_free(&r);
    }
    if (st == HR_ENOMEM)
        return st;
    if (st != HR_OK)
        lc->skipped++;
    return HR_OK;
}

hr_status hr_catalog_load(hr_catalog *c, size_t *skipped, hr_error *err)
{
    load_ctx lc = {c, 0};
    hr_status st = HR_OK;
    pthread_mutex_lock(&c->wmu);
    if (c->persist)
        st = hr_persist_catalog_load(c->persist, load_one, &lc, err);
    pthread_mutex_unlock(&c->wmu);
    if (skipped)
        *skipped = lc.skipped;
    return st;
}

/* ---- filters ---- */

/* Splits a comma-separated list into (ptr, len) pairs; empty entries are
 * an error. */
static hr_status split_list(const char *s, const char *param, const char **p, size_t *len,
                            size_t *n, hr_error *err)
{
    *n = 0;
    if (!s || !*s)
        return HR_OK;
    for (const char *a = s;;) {
        const char *e = strchr(a, ',');
        size_t l = e ? (size_t)(e - a) : strlen(a);
        if (l == 0 || l > HR_CATALOG_MAX_CATEGORY_LEN)
            return hr_error_set(err, HR_EINVAL, param, "%s: each category must be 1 to %d bytes",
                                param, HR_CATALOG_MAX_CATEGORY_LEN);
        if (*n == HR_CATALOG_MAX_FILTER)
            return hr_error_set(err, HR_EINVAL, param, "%s: at most %d categories", param,
                                HR_CATALOG_MAX_FILTER);
        p[*n] = a;
        len[(*n)++] = l;
        if (!e)
            return HR_OK;
        a = e + 1;
    }
}

hr_status hr_catalog_filter(hr_catalog *c, const char *categories,
                            const char *exclude_categories, double now,
                            hr_catalog_filter_t *out, hr_error *err)
{
    memset(out, 0, sizeof *out);
    const char *inc[HR_CATALOG_MAX_FILTER], *exc[HR_CATALOG_MAX_FILTER];
    size_t il[HR_CATALOG_MAX_FILTER], el[HR_CATALOG_MAX_FILTER], ni, ne;
    hr_status st = split_list(categories, "categories", inc, il, &ni, err);
    if (st == HR_OK)
        st = split_list(exclude_categories, "exclude_categories", exc, el, &ne, err);
    if (st != HR_OK)
        return st;
    pthread_rwlock_rdlock(&c->lock);
    if (now >= c->next_expiry) {
        pthread_rwlock_unlock(&c->lock);
        pthread_rwlock_wrlock(&c->lock);
        if (now >= c->next_expiry)
            apply_expiry(c, now);
        pthread_rwlock_unlock(&c->lock);
        pthread_rwlock_rdlock(&c->lock);
    }
    if (ni == 0 && ne == 0 && c->nblocked == 0) {
        pthread_rwlock_unlock(&c->lock);
        return HR_OK; /* nothing restricted */
    }
    uint32_t rows = hr_model_rows(c->model, HR_TABLE_ITEM);
    uint32_t words = (rows + 63) / 64;
    uint64_t *a = malloc((words ? words : 1) * sizeof *a);
    if (!a) {
        pthread_rwlock_unlock(&c->lock);
        return hr_error_set(err, HR_ENOMEM, NULL, "out of memory");
    }
    const uint32_t cw = words < c->nwords ? words : c->nwords; /* words the bitmaps cover */
    if (ni == 0) {
        memset(a, 0xff, words * sizeof *a);
    } else {
        memset(a, 0, words * sizeof *a);
        for (size_t i = 0; i < ni; i++) {
            json_t *k = json_object_getn(c->cat_index, inc[i], il[i]);
            const uint64_t *b = k ? c->cat_bits[json_integer_value(k)] : NULL;
            for (uint32_t w = 0; b && w < cw; w++)
                a[w] |= b[w];
        }
    }
    for (size_t i = 0; i < ne; i++) {
        json_t *k = json_object_getn(c->cat_index, exc[i], el[i]);
        const uint64_t *b = k ? c->cat_bits[json_integer_value(k)] : NULL;
        for (uint32_t w = 0; b && w < cw; w++)
            a[w] &= ~b[w];
    }
    for (uint32_t w = 0; w < cw; w++)
        a[w] &= ~c->blocked[w];
    pthread_rwlock_unlock(&c->lock);
    if (rows % 64)
        a[words - 1] &= (1ull << (rows % 64)) - 1;
    uint64_t count = 0;
    for (uint32_t w = 0; w < words; w++)
        count += (uint64_t)__builtin_popcountll(a[w]);
    out->allow = a;
    out->rows = rows;
    out->count = (uint32_t)count;
    return HR_OK;
}

/* ---- cluster mode: changes in the event stream's order ----
 *
 * A write on any node becomes a change text appended to the cluster's
 * event stream; every node applies the changes it reads, in stream order,
 * on its node thread (hr_catalog_apply_change), never the HTTP thread.
 * The leader interns ids (its deltas carry them); a follower applies a
 * change only after the delta covering it, so it looks ids up and never
 * creates a row. A forgotten user's row is found on a follower through
 * urow: the delta that covers the forget entry removed the id already. */

/* A change object {"op", "kind", ...} as compact text with sorted keys;
 * NULL (out of memory, or an id that is not UTF-8). Takes o. */
static char *change_dump(json_t *o)
{
    char *text = o ? json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS | JSON_REAL_PRECISION(17)) : NULL;
    json_decref(o);
    return text;
}

char *hr_catalog_change_put(hr_catalog_kind kind, const hr_catalog_record *recs, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; a && i < n; i++)
        if (json_array_append(a, recs[i].doc) != 0) {
            json_decref(a);
            a = NULL;
        }
    return a ? change_dump(json_pack("{s:s,s:s,s:o}", "op", "put", "kind", kind_name[kind],
                                     "records", a))
             : NULL;
}

char *hr_catalog_change_delete(hr_catalog_kind kind, const char *id, size_t idlen)
{
    json_t *j = json_stringn(id, idlen);
    return j ? change_dump(json_pack("{s:s,s:s,s:o}", "op", "delete", "kind", kind_name[kind],
                                     "id", j))
             : NULL;
}

char *hr_catalog_change_forget(const char *id, size_t idlen)
{
    json_t *j = json_stringn(id, idlen);
    return j ? change_dump(json_pack("{s:s,s:s,s:o}", "op", "forget", "kind", "user", "id", j))
             : NULL;
}

/* The row a user's record was last applied to (urow), HR_ID_NONE. */
static uint32_t remembered_row(hr_catalog *c, const char *id, size_t idlen)
{
    json_t *v = c->urow ? json_object_getn(c->urow, id, idlen) : NULL;
    return v ? (uint32_t)json_integer_value(v) : HR_ID_NONE;
}

/* Applies one validated record in cluster mode (under wmu and the write
 * lock): with intern (the leader) as a standalone write does; without (a
 * follower, a snapshot's records) only onto a row the model already holds,
 * else it is left out (*unbound): the leader could not intern the id
 * either (its delta would have brought it), so both leave it out. Takes r. */
static hr_status put_cluster(hr_catalog *c, hr_catalog_kind kind, hr_catalog_record *r,
                             bool intern, bool *unbound, hr_error *err)
{
    *unbound = false;
    uint32_t row = hr_model_lookup(c->model, table_of(kind), r->id, r->idlen);
    hr_status st = HR_OK;
    if (!intern && row == HR_ID_NONE) {
        *unbound = true;
    } else {
        st = apply_put(c, kind, r, NULL, err);
        row = hr_model_lookup(c->model, table_of(kind), r->id, r->idlen);
    }
    if (st == HR_OK && kind == HR_CATALOG_USER && row != HR_ID_NONE) {
        if (!c->urow)
            c->urow = json_object();
        if (c->urow)
            json_object_setn_new(c->urow, r->id, r->idlen, json_integer(row));
    }
    hr_catalog_record_free(r);
    return st;
}

/* Forgets a user in cluster mode (under wmu, not the lock). The leader
 * (intern): as hr_catalog_forget_user without a database; its next delta
 * carries the freed row. A follower: the record, the attributes and the
 * recent items of the row the user had (the delta covering this change
 * removed the id: the row is the one remembered, else the one it still
 * holds); the row's contents came with that delta. */
static void forget_cluster(hr_catalog *c, const char *id, size_t idlen, bool intern,
                           hr_catalog_applied *out)
{
    uint32_t row = intern ? hr_model_lookup(c->model, HR_TABLE_USER, id, idlen) : HR_ID_NONE;
    if (!intern) {
        row = remembered_row(c, id, idlen);
        if (row == HR_ID_NONE)
            row = hr_model_lookup(c->model, HR_TABLE_USER, id, idlen);
    }
    pthread_rwlock_wrlock(&c->lock);
    out->found = drop_record(c, HR_CATALOG_USER, id, idlen);
    if (c->urow)
        json_object_deln(c->urow, id, idlen);
    pthread_rwlock_unlock(&c->lock);
    if (row == HR_ID_NONE || row == 0 || row >= hr_model_rows(c->model, HR_TABLE_USER))
        return;
    hr_history_set_ring(hr_events_history(c->events), row, NULL, 0, 0);
    if (intern)
        out->model = hr_model_forget(c->model, HR_TABLE_USER, row) == HR_OK;
    else
        hr_model_set_attrs(c->model, HR_TABLE_USER, row, NULL, 0, false);
}

hr_status hr_catalog_apply_change(hr_catalog *c, const char *text, size_t len, bool intern,
                                  hr_catalog_applied *out, hr_error *err)
{
    memset(out, 0, sizeof *out);
    json_error_t jerr;
    json_t *o = json_loadb(text, len, 0, &jerr);
    const char *op = json_string_value(json_object_get(o, "op"));
    const char *kn = json_string_value(json_object_get(o, "kind"));
    if (!op || !kn || (strcmp(kn, "user") != 0 && strcmp(kn, "item") != 0)) {
        json_decref(o);
        return hr_error_set(err, HR_EINVAL, "catalog", "a catalog change without op or kind: %s",
                            o ? "" : jerr.text);
    }
    hr_catalog_kind kind = strcmp(kn, "user") == 0 ? HR_CATALOG_USER : HR_CATALOG_ITEM;
    const json_t *idj = json_object_get(o, "id");
    hr_status st = HR_OK;
    pthread_mutex_lock(&c->wmu);
    if (strcmp(op, "put") == 0) {
        size_t i;
        json_t *v;
        json_array_foreach(json_object_get(o, "records"), i, v) {
            hr_catalog_record r;
            hr_error e = {{0}, {0}};
            bool unbound = false;
            if (hr_catalog_parse(v, NULL, 0, &r, &e) != HR_OK) {
                out->skipped++;
                continue;
            }
            pthread_rwlock_wrlock(&c->lock);
            st = put_cluster(c, kind, &r, intern, &unbound, &e);
            pthread_rwlock_unlock(&c->lock);
            if (st == HR_ENOMEM) {
                *err = e;
                break;
            }
            out->skipped += st != HR_OK;
            out->unbound += unbound;
            out->applied += st == HR_OK && !unbound;
            st = HR_OK;
        }
    } else if (json_is_string(idj) && strcmp(op, "delete") == 0) {
        pthread_rwlock_wrlock(&c->lock);
        out->found = drop_record(c, kind, json_string_value(idj), json_string_length(idj));
        pthread_rwlock_unlock(&c->lock);
        out->applied = 1;
    } else if (json_is_string(idj) && strcmp(op, "forget") == 0 && kind == HR_CATALOG_USER) {
        forget_cluster(c, json_string_value(idj), json_string_length(idj), intern, out);
        out->applied = 1;
    } else {
        st = hr_error_set(err, HR_EINVAL, "catalog", "an unknown catalog change '%.32s'", op);
    }
    pthread_mutex_unlock(&c->wmu);
    json_decref(o);
    return st;
}

hr_status hr_catalog_each(hr_catalog *c, hr_catalog_record_fn fn, void *ctx, hr_error *err)
{
    hr_status st = HR_OK;
    pthread_rwlock_rdlock(&c->lock);
    for (int k = 0; k < HR_CATALOG_KINDS && st == HR_OK; k++) {
        const char *key;
        size_t klen;
        json_t *doc;
        json_object_keylen_foreach(c->map[k], key, klen, doc) {
            char *text = json_dumps(doc, JSON_COMPACT | JSON_SORT_KEYS | JSON_REAL_PRECISION(17));
            st = text ? fn(ctx, (hr_catalog_kind)k, key, klen, text, strlen(text), err)
                      : hr_error_set(err, HR_ENOMEM, NULL, "out of memory");
            free(text);
            if (st != HR_OK)
                break;
        }
    }
    pthread_rwlock_unlock(&c->lock);
    return st;
}

void hr_catalog_clear(hr_catalog *c)
{
    pthread_mutex_lock(&c->wmu);
    pthread_rwlock_wrlock(&c->lock);
    for (int k = 0; k < HR_CATALOG_KINDS; k++) {
        const char *key;
        size_t klen;
        json_t *doc;
        void *tmp;
        json_object_keylen_foreach_safe(c->map[k], tmp, key, klen, doc)
            drop_record(c, (hr_catalog_kind)k, key, klen);
    }
    /* rows of users whose id a delta or snapshot removed: drop_record did
     * not find them by id */
    const char *key;
    json_t *v;
    json_object_foreach(c->urow, key, v) {
        uint32_t row = (uint32_t)json_integer_value(v);
        if (row != 0 && row < hr_model_rows(c->model, HR_TABLE_USER))
            hr_model_set_attrs(c->model, HR_TABLE_USER, row, NULL, 0, false);
    }
    if (c->urow)
        json_object_clear(c->urow);
    pthread_rwlock_unlock(&c->lock);
    pthread_mutex_unlock(&c->wmu);
}

hr_status hr_catalog_load_record(hr_catalog *c, hr_catalog_kind kind, const char *id, size_t idlen,
                                 const char *text, size_t len, bool *unbound, hr_error *err)
{
    *unbound = false;
    json_error_t jerr;
    json_t *obj = json_loadb(text, len, 0, &jerr);
    hr_catalog_record r;
    hr_status st = obj ? hr_catalog_parse(obj, id, idlen, &r, err)
                       : hr_error_set(err, HR_EINVAL, "record", "%s", jerr.text);
    json_decref(obj);
    if (st != HR_OK)
        return st;
    pthread_mutex_lock(&c->wmu);
    pthread_rwlock_wrlock(&c->lock);
    st = put_cluster(c, kind, &r, false, unbound, err);
    pthread_rwlock_unlock(&c->lock);
    pthread_mutex_unlock(&c->wmu);
    return st;
}

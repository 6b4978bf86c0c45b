/*
 * api.c - JSON <-> structs for the public API; see api.h. Pure and
 * reentrant: called from HTTP threads, replay and the start-up log replay.
 */
#include "hogrec/api.h"

#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

hr_status hr_api_id(const json_t *v, const char *field, char *buf, size_t *len, hr_error *err)
{
    if (json_is_string(v)) {
        size_t n = json_string_length(v);
        if (n == 0 || n > HR_ID_MAX_LEN)
            return hr_error_set(err, HR_EINVAL, field, "%s must be 1 to %d bytes", field,
                                HR_ID_MAX_LEN);
        memcpy(buf, json_string_value(v), n);
        buf[n] = 0;
        *len = n;
        return HR_OK;
    }
    if (json_is_integer(v)) {
        int n = snprintf(buf, HR_ID_MAX_LEN + 1, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        *len = (size_t)n;
        return HR_OK;
    }
    if (!v)
        return hr_error_set(err, HR_EINVAL, field, "%s is required", field);
    return hr_error_set(err, HR_EINVAL, field, "%s must be a string or an integer", field);
}

static hr_status number(const json_t *v, const char *field, double *out, hr_error *err)
{
    if (!json_is_number(v))
        return hr_error_set(err, HR_EINVAL, field, "%s must be a number", field);
    *out = json_number_value(v);
    if (!isfinite(*out))
        return hr_error_set(err, HR_EINVAL, field, "%s must be finite", field);
    return HR_OK;
}

static hr_status features(const hr_model *m, const json_t *obj, hr_event *ev, hr_error *err)
{
    if (!json_is_object(obj))
        return hr_error_set(err, HR_EINVAL, "features", "features must be an object");
    if (json_object_size(obj) > HR_MAX_CTX)
        return hr_error_set(err, HR_EINVAL, "features", "at most %d features", HR_MAX_CTX);
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)obj, key, val) {
        size_t klen = strlen(key);
        if (klen == 0 || klen > HR_ID_MAX_LEN)
            return hr_error_set(err, HR_EINVAL, "features", "feature names must be 1 to %d bytes",
                                HR_ID_MAX_LEN);
        hr_feat *f = &ev->ctx[ev->nctx];
        if (json_is_string(val)) {
            f->row = hr_model_ctx_row(m, key, klen, json_string_value(val),
                                      json_string_length(val));
            f->x = 1.0f;
        } else if (json_is_number(val)) {
            double x = json_number_value(val);
            if (!isfinite(x) || fabs(x) > 1e6)
                return hr_error_set(err, HR_EINVAL, "features",
                                    "feature '%s' must be finite and at most 1e6 in size", key);
            f->row = hr_model_ctx_row(m, key, klen, NULL, 0);
            f->x = (float)x;
        } else {
            return hr_error_set(err, HR_EINVAL, "features",
                                "feature '%s' must be a string or a number", key);
        }
        ev->nctx++;
    }
    return HR_OK;
}

/* Reads the fields of obj into val[i] (borrowed; NULL when absent) for the
 * n allowed names; a key not among them is an error naming it. One pass
 * over the object's keys, the allowed names declared once by the caller.
 * (jansson's json_unpack_ex with JSON_STRICT does the same, but builds a
 * hash set of the keys on every call: measured 2.3 times the cost of a
 * whole event decode, about 9% of POST /v1/events throughput.) */
static hr_status read_fields(const json_t *obj, const char *const *names, size_t n,
                             const json_t **val, hr_error *err)
{
    for (size_t i = 0; i < n; i++)
        val[i] = NULL;
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)obj, key, v) {
        size_t i = 0;
        while (i < n && strcmp(key, names[i]) != 0)
            i++;
        if (i == n)
            return hr_error_set(err, HR_EINVAL, key, "unknown field '%s'", key);
        val[i] = v;
    }
    return HR_OK;
}

hr_status hr_api_event_parse(const hr_model *m, const json_t *obj, hr_event *ev,
                             hr_api_event_refs *refs, hr_error *err)
{
    memset(ev, 0, sizeof *ev);
    ev->weight = 1.0f;
    memset(refs, 0, sizeof *refs);
    if (!json_is_object(obj))
        return hr_error_set(err, HR_EINVAL, "", "an event must be a JSON object");
    const bool squared = hr_model_get_config(m)->loss == HR_LOSS_SQUARED;
    enum { USER, ITEM, LABEL, RATING, WEIGHT, TS, FEATURES, ID, NFIELDS };
    static const char *const names[NFIELDS] = {"user", "item", "label", "rating",
                                               "weight", "ts", "features", "id"};
    const json_t *f[NFIELDS];
    hr_status st;
    if ((st = read_fields(obj, names, NFIELDS, f, err)) != HR_OK)
        return st;
    char id[HR_ID_MAX_LEN + 1];
    size_t len;
    if ((st = hr_api_id(f[USER], "user", id, &len, err)) != HR_OK ||
        (st = hr_api_id(f[ITEM], "item", id, &len, err)) != HR_OK)
        return st;
    double d = 0;
    if (squared) {
        if (!f[RATING])
            return hr_error_set(err, HR_EINVAL, "rating", "rating is required by a squared-loss model");
        if ((st = number(f[RATING], "rating", &d, err)) != HR_OK)
            return st;
        if (fabs(d) > 1e6) /* a float label, squared in the loss */
            return hr_error_set(err, HR_EINVAL, "rating", "rating must be at most 1e6 in size");
        ev->label = (float)d;
        if (f[LABEL])
            return hr_error_set(err, HR_EINVAL, "label", "label is for logistic models; send rating");
    } else {
        if (f[RATING])
            return hr_error_set(err, HR_EINVAL, "rating",
                                "rating needs a squared-loss model; send label 0 or 1");
        ev->label = 1.0f;
        if (f[LABEL]) {
            /* a number, as documented: true and false are not labels */
            if ((st = number(f[LABEL], "label", &d, err)) != HR_OK)
                return st;
            if (d != 0 && d != 1)
                return hr_error_set(err, HR_EINVAL, "label", "label must be 0 or 1");
            ev->label = (float)d;
            ev->flags |= HR_EV_EXPLICIT_LABEL;
        }
    }
    if (f[WEIGHT]) {
        if ((st = number(f[WEIGHT], "weight", &d, err)) != HR_OK)
            return st;
        if (d < 0 || d > 1e6)
            return hr_error_set(err, HR_EINVAL, "weight", "weight must be in [0, 1e6]");
        ev->weight = (float)d;
    }
    if (f[TS]) {
        if ((st = number(f[TS], "ts", &d, err)) != HR_OK)
            return st;
        ev->ts = d;
    }
    if (f[ID] && (st = hr_api_id(f[ID], "id", id, &len, err)) != HR_OK)
        return st;
    if (f[FEATURES] && (st = features(m, f[FEATURES], ev, err)) != HR_OK)
        return st;
    refs->user = f[USER];
    refs->item = f[ITEM];
    refs->id = f[ID];
    return HR_OK;
}

hr_status hr_api_event_resolve(hr_model *m, const hr_api_event_refs *refs, hr_event *ev,
                               hr_error *err)
{
    char id[HR_ID_MAX_LEN + 1];
    size_t len = 0;
    hr_status st;
    if ((st = hr_api_id(refs->user, "user", id, &len, err)) != HR_OK)
        return st;
    if ((st = hr_model_intern(m, HR_TABLE_USER, id, len, &ev->user, NULL)) != HR_OK)
        return hr_error_set(err, st, "user", "user table: %s", hr_status_to_string(st));
    if ((st = hr_api_id(refs->item, "item", id, &len, err)) != HR_OK)
        return st;
    if ((st = hr_model_intern(m, HR_TABLE_ITEM, id, len, &ev->item, NULL)) != HR_OK)
        return hr_error_set(err, st, "item", "item table: %s", hr_status_to_string(st));
    return HR_OK;
}

hr_status hr_api_event_from_json(hr_model *m, const json_t *obj, hr_event *ev,
                                 const json_t **event_id, hr_error *err)
{
    hr_api_event_refs refs;
    if (event_id)
        *event_id = NULL;
    hr_status st = hr_api_event_parse(m, obj, ev, &refs, err);
    if (st == HR_OK)
        st = hr_api_event_resolve(m, &refs, ev, err);
    if (st == HR_OK && event_id)
        *event_id = refs.id;
    return st;
}

hr_status hr_api_event_lookup(const hr_model *m, const json_t *obj, hr_event *ev,
                              unsigned *unknown, hr_error *err)
{
    *unknown = 0;
    hr_api_event_refs refs;
    hr_status st = hr_api_event_parse(m, obj, ev, &refs, err);
    if (st != HR_OK)
        return st;
    char id[HR_ID_MAX_LEN + 1];
    size_t len;
    hr_api_id(refs.user, "user", id, &len, NULL);
    ev->user = hr_api_lookup(m, HR_TABLE_USER, id, len, unknown, HR_API_UNKNOWN_USER);
    hr_api_id(refs.item, "item", id, &len, NULL);
    ev->item = hr_api_lookup(m, HR_TABLE_ITEM, id, len, unknown, HR_API_UNKNOWN_ITEM);
    return HR_OK;
}

/* A key or string json_dumps writes as it is (nothing escaped): printable
 * ASCII but '"' and '\\', and no NUL inside. */
static bool plain_text(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e || s[i] == '"' ||
            s[i] == '\\')
            return false;
    return true;
}

/* json_dumps(obj, JSON_COMPACT | JSON_SORT_KEYS) of a flat object of
 * plain strings, integers, true, false and null, written directly (keys
 * sorted as json_dumps sorts them: bytewise, a prefix first); NULL for
 * any other value (the caller uses json_dumps) or out of memory. */
static char *plain_dump(const json_t *obj, size_t *len)
{
    enum { MAX_KEYS = 16 };
    struct {
        const char *k;
        size_t kn;
        const json_t *v;
    } f[MAX_KEYS];
    size_t n = 0, bytes = 2;
    const char *k;
    const json_t *v;
    if (!json_is_object(obj) || json_object_size(obj) > MAX_KEYS)
        return NULL;
    void *it = json_object_iter((json_t *)obj);
    for (; it; it = json_object_iter_next((json_t *)obj, it)) {
        k = json_object_iter_key(it);
        v = json_object_iter_value(it);
        size_t kn = json_object_iter_key_len(it);
        if (strlen(k) != kn || !plain_text(k, kn))
            return NULL;
        if (json_is_string(v)) {
            if (!plain_text(json_string_value(v), json_string_length(v)))
                return NULL;
            bytes += json_string_length(v) + 2;
        } else if (json_is_integer(v) || json_is_true(v) || json_is_false(v) || json_is_null(v)) {
            bytes += 21;
        } else {
            return NULL;
        }
        bytes += kn + 4;
        size_t at = n++; /* insertion sort: a handful of keys */
        while (at > 0 && strcmp(f[at - 1].k, k) > 0) {
            f[at] = f[at - 1];
            at--;
        }
        f[at].k = k;
        f[at].kn = kn;
        f[at].v = v;
    }
    char *out = malloc(bytes + 1), *w = out;
    if (!out)
        return NULL;
    *w++ = '{';
    for (size_t i = 0; i < n; i++) {
        if (i)
            *w++ = ',';
        *w++ = '"';
        memcpy(w, f[i].k, f[i].kn);
        w += f[i].kn;
        *w++ = '"';
        *w++ = ':';
        v = f[i].v;
        if (json_is_string(v)) {
            *w++ = '"';
            memcpy(w, json_string_value(v), json_string_length(v));
            w += json_string_length(v);
            *w++ = '"';
        } else if (json_is_integer(v)) {
            json_int_t x = json_integer_value(v);
            unsigned long long u = x < 0 ? 0ull - (unsigned long long)x : (unsigned long long)x;
            char digits[24];
            int nd = 0;
            do
                digits[nd++] = (char)('0' + u % 10);
            while ((u /= 10) != 0);
            if (x < 0)
                *w++ = '-';
            while (nd > 0)
                *w++ = digits[--nd];
        } else {
            const char *lit = json_is_true(v) ? "true" : json_is_false(v) ? "false" : "null";
            size_t ln = strlen(lit);
            memcpy(w, lit, ln);
            w += ln;
        }
    }
    *w++ = '}';
    *w = '\0';
    *len = (size_t)(w - out);
    return out;
}

char *hr_api_event_text(const json_t *obj, size_t *len)
{
    size_t n;
    char *p = plain_dump(obj, &n);
    if (p) {
        if (len)
            *len = n;
        return p;
    }
    char *s = json_dumps(obj, JSON_COMPACT | JSON_SORT_KEYS);
    if (s && len)
        *len = strlen(s);
    return s;
}

/* ---- NDJSON lines ----
 *
 * Most event lines are flat objects of plain values. plain_object() reads
 * exactly those, in one pass without jansson's lexer: every key and string
 * printable ASCII without escapes, every value a string, an integer of at
 * most 18 digits, a number with a fraction or exponent (strtod, as jansson
 * reads it; finite only), true, false or null; no key twice; blanks around
 * tokens; nothing after the closing brace but blanks. It builds the value
 * jansson would (same types, values, key order). Anything else - nesting,
 * escapes, other bytes, a syntax error - returns NULL and the line goes
 * through json_loadb, which parses it or gives its error message, so what a
 * line means and every error text are jansson's. test_api compares the two
 * on generated and edge-case lines and on JSONTestSuite's files. */

static const char *skip_blanks(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
        p++;
    return p;
}

/* A plain string at p (the opening quote): sets *s, *n to its contents and
 * returns the byte after the closing quote, or NULL if not plain. */
static const char *plain_string(const char *p, const char *end, const char **s, size_t *n)
{
    const char *q = ++p;
    while (q < end && *q != '"') {
        unsigned char c = (unsigned char)*q;
        if (c < 0x20 || c > 0x7e || c == '\\')
            return NULL;
        q++;
    }
    if (q >= end)
        return NULL;
    *s = p;
    *n = (size_t)(q - p);
    return q + 1;
}

static bool is_digit(char c) { return c >= '0' && c <= '9'; }

/* A number at p in JSON's grammar: a new integer or real, and *next after
 * it; NULL if not plain (too long, not finite, not a number). */
static json_t *plain_number(const char *p, const char *end, const char **next)
{
    const char *q = p;
    bool real = false;
    if (q < end && *q == '-')
        q++;
    if (q < end && *q == '0')
        q++;
    else if (q < end && is_digit(*q))
        while (q < end && is_digit(*q))
            q++;
    else
        return NULL;
    const char *int_end = q;
    if (q < end && *q == '.') {
        real = true;
        if (++q >= end || !is_digit(*q))
            return NULL;
        while (q < end && is_digit(*q))
            q++;
    }
    if (q < end && (*q == 'e' || *q == 'E')) {
        real = true;
        q++;
        if (q < end && (*q == '+' || *q == '-'))
            q++;
        if (q >= end || !is_digit(*q))
            return NULL;
        while (q < end && is_digit(*q))
            q++;
    }
    char buf[48];
    size_t n = (size_t)(q - p);
    if (n >= sizeof buf || (!real && int_end - p - (*p == '-') > 18))
        return NULL;
    memcpy(buf, p, n);
    buf[n] = '\0';
    *next = q;
    if (!real)
        return json_integer((json_int_t)strtoll(buf, NULL, 10));
    double d = strtod(buf, NULL);
    return isfinite(d) ? json_real(d) : NULL;
}

static bool word_at(const char *p, const char *end, const char *w, size_t n)
{
    return (size_t)(end - p) >= n && memcmp(p, w, n) == 0;
}

/* The flat object on [p, end) as jansson would parse it, or NULL: see above. */
static json_t *plain_object(const char *p, const char *end)
{
    enum { MAX_KEYS = 16 };
    const char *keys[MAX_KEYS];
    size_t klens[MAX_KEYS], nkeys = 0;
    p = skip_blanks(p, end);
    if (p >= end || *p != '{')
        return NULL;
    json_t *obj = json_object();
    if (!obj)
        return NULL;
    p = skip_blanks(p + 1, end);
    if (p < end && *p == '}')
        goto close;
    for (;;) {
        const char *k, *sv;
        size_t kn, svn;
        if (p >= end || *p != '"' || !(p = plain_string(p, end, &k, &kn)) || nkeys == MAX_KEYS)
            goto fail;
        for (size_t i = 0; i < nkeys; i++)
            if (klens[i] == kn && memcmp(keys[i], k, kn) == 0)
                goto fail; /* a duplicate: jansson's error */
        keys[nkeys] = k;
        klens[nkeys++] = kn;
        p = skip_blanks(p, end);
        if (p >= end || *p != ':')
            goto fail;
        p = skip_blanks(p + 1, end);
        if (p >= end)
            goto fail;
        json_t *v = NULL;
        if (*p == '"') {
            if ((p = plain_string(p, end, &sv, &svn)) != NULL)
                v = json_stringn_nocheck(sv, svn);
        } else if (*p == '-' || is_digit(*p)) {
            v = plain_number(p, end, &p);
        } else if (word_at(p, end, "true", 4)) {
            v = json_true();
            p += 4;
        } else if (word_at(p, end, "false", 5)) {
            v = json_false();
            p += 5;
        } else if (word_at(p, end, "null", 4)) {
            v = json_null();
            p += 4;
        }
        if (!v)
            goto fail;
        if (json_object_setn_new_nocheck(obj, k, kn, v) != 0)
            goto fail; /* it took v, also on failure */
        p = skip_blanks(p, end);
        if (p < end && *p == ',') {
            p = skip_blanks(p + 1, end);
            continue;
        }
        if (p < end && *p == '}')
            break;
        goto fail;
    }
close:
    if (skip_blanks(p + 1, end) != end)
        goto fail;
    return obj;
fail:
    json_decref(obj);
    return NULL;
}

size_t hr_api_ndjson_split(const char *body, size_t len, json_t *arr, json_t *errors)
{
    size_t parsed = 0, idx = 0;
    const char *p = body ? body : "", *end = p + (body ? len : 0);
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        const char *q = p;
        while (q < le && (*q == ' ' || *q == '\t' || *q == '\r'))
            q++;
        if (q < le) {
            json_error_t jerr;
            json_t *v = plain_object(p, le);
            if (!v)
                v = json_loadb(p, (size_t)(le - p), JSON_REJECT_DUPLICATES, &jerr);
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
        if (!nl)
            break;
        p = nl + 1;
    }
    return parsed;
}

hr_status hr_api_pair_from_json(const hr_model *m, const json_t *obj, hr_event *ev,
                                unsigned *unknown, hr_error *err)
{
    memset(ev, 0, sizeof *ev);
    ev->weight = 1.0f;
    *unknown = 0;
    if (!json_is_object(obj))
        return hr_error_set(err, HR_EINVAL, "", "a pair must be a JSON object");
    static const char *const names[3] = {"user", "item", "features"};
    const json_t *f[3];
    hr_status st;
    if ((st = read_fields(obj, names, 3, f, err)) != HR_OK)
        return st;
    char id[HR_ID_MAX_LEN + 1];
    size_t len;
    if ((st = hr_api_id(f[0], "user", id, &len, err)) != HR_OK)
        return st;
    ev->user = hr_api_lookup(m, HR_TABLE_USER, id, len, unknown, HR_API_UNKNOWN_USER);
    if ((st = hr_api_id(f[1], "item", id, &len, err)) != HR_OK)
        return st;
    ev->item = hr_api_lookup(m, HR_TABLE_ITEM, id, len, unknown, HR_API_UNKNOWN_ITEM);
    if (f[2] && (st = features(m, f[2], ev, err)) != HR_OK)
        return st;
    return HR_OK;
}

/* ---- query strings ---- */

/* True when s[0..len) is well-formed UTF-8 (no overlong forms, no
 * surrogates, nothing above U+10FFFF), the rule JSON text and so every id
 * an event can name follow. NUL bytes are valid. */
static bool utf8_valid(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s, *end = p + len;
    while (p < end) {
        unsigned c = *p;
        size_t n;
        unsigned min;
        if (c < 0x80) {
            p++;
            continue;
        } else if (c >= 0xc2 && c <= 0xdf) {
            n = 1, min = 0x80, c &= 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            n = 2, min = 0x800, c &= 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            n = 3, min = 0x10000, c &= 0x07;
        } else {
            return false;
        }
        if ((size_t)(end - p) <= n)
            return false;
        for (size_t i = 1; i <= n; i++) {
            if ((p[i] & 0xc0) != 0x80)
                return false;
            c = (c << 6) | (p[i] & 0x3f);
        }
        if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
            return false;
        p += n + 1;
    }
    return true;
}

static bool key_is(const hr_api_param *p, const char *name)
{
    size_t n = strlen(name);
    return p->key_len == n && memcmp(p->key, name, n) == 0;
}

/* Finds each parameter of `names` (NULL-terminated, at most 8) in params:
 * found[i] is the parameter or NULL. An unknown or repeated parameter is
 * HR_EINVAL. */
static hr_status find_params(const hr_api_param *params, size_t n, const char *const *names,
                             const hr_api_param **found, hr_error *err)
{
    size_t nn = 0;
    while (names[nn])
        found[nn++] = NULL;
    for (size_t i = 0; i < n; i++) {
        size_t j = 0;
        while (j < nn && !key_is(&params[i], names[j]))
            j++;
        if (j == nn) {
            char key[41];
            size_t kl = params[i].key_len < 40 ? params[i].key_len : 40;
            memcpy(key, params[i].key, kl);
            key[kl] = 0;
            hr_api_printable(key); /* NUL bytes end it early: fine for a message */
            if (key[0] == 0) /* "&&", "=v" or a name starting with NUL: name the query */
                return hr_error_set(err, HR_EINVAL, "query", "a query parameter has no name");
            return hr_error_set(err, HR_EINVAL, key, "unknown query parameter '%s'", key);
        }
        if (found[j])
            return hr_error_set(err, HR_EINVAL, names[j], "%s: given more than once", names[j]);
        found[j] = &params[i];
    }
    return HR_OK;
}

/* A required id parameter: 1..HR_ID_MAX_LEN bytes of UTF-8 without NUL
 * (an event's id is a JSON string, which the API parses without NULs). */
static hr_status id_param(const hr_api_param *p, const char *name, hr_error *err)
{
    if (!p || !p->value || p->value_len == 0 || p->value_len > HR_ID_MAX_LEN ||
        memchr(p->value, 0, p->value_len) || !utf8_valid(p->value, p->value_len))
        return hr_error_set(err, HR_EINVAL, name, "%s: 1 to %d bytes of UTF-8 required", name,
                            HR_ID_MAX_LEN);
    return HR_OK;
}

/* An optional integer parameter: decimal digits only, at most max. */
static hr_status uint_param(const hr_api_param *p, const char *name, uint64_t max, uint64_t *out,
                            hr_error *err)
{
    uint64_t v = 0;
    size_t i = 0;
    bool ok = p->value && p->value_len > 0 && p->value_len <= 20;
    for (; ok && i < p->value_len; i++) {
        unsigned d = (unsigned char)p->value[i] - '0';
        if (d > 9 || v > (max - d) / 10)
            ok = false;
        else
            v = v * 10 + d;
    }
    if (!ok)
        return hr_error_set(err, HR_EINVAL, name, "%s: an integer in [0, %" PRIu64 "]", name,
                            max);
    *out = v;
    return HR_OK;
}

/* A stream entry id "MS-SEQ" (each part 1-20 digits, no overflow) of len
 * bytes into w (is_entry). false when text is not one. */
static bool entry_text(const char *text, size_t len, hr_api_wait *w)
{
    const char *dash = text ? memchr(text, '-', len) : NULL;
    if (!dash)
        return false;
    hr_api_param a = {.value = text, .value_len = (size_t)(dash - text)};
    hr_api_param b = {.value = dash + 1, .value_len = len - (size_t)(dash - text) - 1};
    hr_error ignore = {{0}, {0}};
    if (uint_param(&a, "min_seq", UINT64_MAX, &w->entry_ms, &ignore) != HR_OK ||
        uint_param(&b, "min_seq", UINT64_MAX, &w->entry_seq, &ignore) != HR_OK)
        return false;
    w->is_entry = true;
    return true;
}

/* min_seq and wait_ms of a query (either may be NULL: not given). */
static hr_status wait_params(const hr_api_param *min_seq, const hr_api_param *wait_ms,
                             hr_api_wait *out, hr_error *err)
{
    out->given = min_seq != NULL;
    out->min_seq = 0;
    out->wait_ms = -1;
    out->is_entry = false;
    hr_status st;
    if (min_seq && !entry_text(min_seq->value, min_seq->value_len, out) &&
        (st = uint_param(min_seq, "min_seq", INT64_MAX, &out->min_seq, err)) != HR_OK)
        return st;
    uint64_t w = 0;
    if (wait_ms && (st = uint_param(wait_ms, "wait_ms", HR_API_MAX_WAIT_MS, &w, err)) != HR_OK)
        return st;
    if (wait_ms)
        out->wait_ms = (int64_t)w;
    return HR_OK;
}

hr_status hr_api_wait_from_json(const json_t *obj, hr_api_wait *out, hr_error *err)
{
    out->given = false;
    out->min_seq = 0;
    out->wait_ms = -1;
    const json_t *ms = json_object_get(obj, "min_seq"), *wm = json_object_get(obj, "wait_ms");
    out->is_entry = false;
    if (ms && json_is_string(ms) &&
        entry_text(json_string_value(ms), json_string_length(ms), out)) {
        out->given = true;
    } else if (ms) {
        if (!json_is_integer(ms) || json_integer_value(ms) < 0)
            return hr_error_set(err, HR_EINVAL, "min_seq", "min_seq: an integer >= 0");
        out->given = true;
        out->min_seq = (uint64_t)json_integer_value(ms);
    }
    if (wm) {
        if (!json_is_integer(wm) || json_integer_value(wm) < 0 ||
            json_integer_value(wm) > HR_API_MAX_WAIT_MS)
            return hr_error_set(err, HR_EINVAL, "wait_ms", "wait_ms: an integer in [0, %d]",
                                HR_API_MAX_WAIT_MS);
        out->wait_ms = (int64_t)json_integer_value(wm);
    }
    return HR_OK;
}

hr_status hr_api_wait_check(const hr_api_wait *w, uint64_t last_seq, int64_t max_wait_ms,
                            int64_t *wait_ms, hr_error *err)
{
    if (!w->given) {
        *wait_ms = 0;
        if (w->wait_ms >= 0)
            return hr_error_set(err, HR_EINVAL, "wait_ms", "wait_ms: only with min_seq");
        return HR_OK;
    }
    if (w->wait_ms > max_wait_ms)
        return hr_error_set(err, HR_EINVAL, "wait_ms",
                            "wait_ms: an integer in [0, %" PRId64 "] (max_wait_ms)", max_wait_ms);
    if (w->min_seq > last_seq)
        return hr_error_set(err, HR_EINVAL, "min_seq",
                            "min_seq: %" PRIu64 " is beyond the last seq accepted (%" PRIu64
                            "), so it can never be applied",
                            w->min_seq, last_seq);
    *wait_ms = w->wait_ms >= 0 ? w->wait_ms
               : HR_API_DEFAULT_WAIT_MS < max_wait_ms ? HR_API_DEFAULT_WAIT_MS
                                                      : max_wait_ms;
    return HR_OK;
}

hr_status hr_api_predict_query(const hr_model *m, const hr_api_param *params, size_t n,
                               hr_api_predict_req *out, hr_error *err)
{
    memset(out, 0, sizeof *out);
    out->ev.weight = 1.0f;
    static const char *const names[] = {"user", "item", "min_seq", "wait_ms", NULL};
    const hr_api_param *f[4];
    hr_status st;
    if ((st = find_params(params, n, names, f, err)) != HR_OK ||
        (st = id_param(f[0], "user", err)) != HR_OK || (st = id_param(f[1], "item", err)) != HR_OK ||
        (st = wait_params(f[2], f[3], &out->wait, err)) != HR_OK)
        return st;
    out->ev.user = hr_api_lookup(m, HR_TABLE_USER, f[0]->value, f[0]->value_len, &out->unknown,
                                 HR_API_UNKNOWN_USER);
    out->ev.item = hr_api_lookup(m, HR_TABLE_ITEM, f[1]->value, f[1]->value_len, &out->unknown,
                                 HR_API_UNKNOWN_ITEM);
    return HR_OK;
}

hr_status hr_api_recommend_query(const hr_model *m, const hr_api_param *params, size_t n,
                                 hr_api_recommend_req *out, hr_error *err)
{
    out->user[0] = 0;
    out->user_len = 0;
    out->user_row = 0;
    out->k = 10;
    out->exclude_seen = true;
    out->nexclude = 0;
    out->categories[0] = out->exclude_categories[0] = 0;
    static const char *const names[] = {"user",    "k",       "exclude_seen",       "exclude",
                                        "min_seq", "wait_ms", "categories", "exclude_categories",
                                        NULL};
    const hr_api_param *f[8];
    hr_status st;
    if ((st = find_params(params, n, names, f, err)) != HR_OK ||
        (st = id_param(f[0], "user", err)) != HR_OK ||
        (st = wait_params(f[4], f[5], &out->wait, err)) != HR_OK)
        return st;
    if (f[1]) {
        const hr_api_param *p = f[1];
        uint32_t k = 0;
        size_t i = 0;
        /* digits only; more than 4 of them is out of range anyway */
        for (; p->value && i < p->value_len && i < 5 && p->value[i] >= '0' && p->value[i] <= '9';
             i++)
            k = k * 10 + (uint32_t)(p->value[i] - '0');
        if (!p->value || i == 0 || i != p->value_len || k < 1 || k > HR_API_MAX_K)
            return hr_error_set(err, HR_EINVAL, "k", "k: an integer in [1, %d]", HR_API_MAX_K);
        out->k = k;
    }
    if (f[2]) {
        const hr_api_param *p = f[2];
        const char *v = p->value ? p->value : "";
        size_t vl = p->value ? p->value_len : 0;
        if ((vl == 4 && !memcmp(v, "true", 4)) || (vl == 1 && v[0] == '1'))
            out->exclude_seen = true;
        else if ((vl == 5 && !memcmp(v, "false", 5)) || (vl == 1 && v[0] == '0'))
            out->exclude_seen = false;
        else
            return hr_error_set(err, HR_EINVAL, "exclude_seen", "exclude_seen: true or false");
    }
    if (f[3] && f[3]->value) {
        const char *p = f[3]->value, *end = p + f[3]->value_len;
        size_t named = 0;
        while (p <= end) {
            const char *comma = memchr(p, ',', (size_t)(end - p));
            const char *e = comma ? comma : end;
            size_t len = (size_t)(e - p);
            if (len > HR_ID_MAX_LEN)
                return hr_error_set(err, HR_EINVAL, "exclude", "exclude: ids are 1 to %d bytes",
                                    HR_ID_MAX_LEN);
            if (len > 0) {
                if (++named > HR_API_MAX_EXCLUDE)
                    return hr_error_set(err, HR_EINVAL, "exclude", "exclude: at most %d items",
                                        HR_API_MAX_EXCLUDE);
                uint32_t row = hr_model_lookup(m, HR_TABLE_ITEM, p, len);
                if (row != HR_ID_NONE && row != 0)
                    out->exclude[out->nexclude++] = row;
            }
            if (!comma)
                break;
            p = comma + 1;
        }
    }
    for (int i = 0; i < 2; i++) { /* categories, exclude_categories: checked by the catalog */
        const hr_api_param *p = f[6 + i];
        char *dst = i == 0 ? out->categories : out->exclude_categories;
        if (!p)
            continue;
        if (!p->value || p->value_len == 0 || p->value_len >= HR_API_MAX_CATEGORIES_PARAM ||
            memchr(p->value, 0, p->value_len) || !utf8_valid(p->value, p->value_len))
            return hr_error_set(err, HR_EINVAL, names[6 + i],
                                "%s: comma-separated categories, 1 to %d bytes of UTF-8",
                                names[6 + i], HR_API_MAX_CATEGORIES_PARAM - 1);
        memcpy(dst, p->value, p->value_len);
        dst[p->value_len] = 0;
    }
    memcpy(out->user, f[0]->value, f[0]->value_len);
    out->user[f[0]->value_len] = 0;
    out->user_len = f[0]->value_len;
    unsigned unk = 0;
    out->user_row = hr_api_lookup(m, HR_TABLE_USER, out->user, out->user_len, &unk, 1);
    return HR_OK;
}

uint32_t hr_api_lookup(const hr_model *m, hr_table_id t, const char *id, size_t len,
                       unsigned *unknown, unsigned flag)
{
    uint32_t row = hr_model_lookup(m, t, id, len);
    if (row == HR_ID_NONE || row == 0) {
        *unknown |= flag;
        return 0;
    }
    return row;
}

void hr_api_printable(char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s >= 0x80 || (unsigned char)*s < 0x20)
            *s = '?';
}

json_t *hr_api_error_json(const char *code, const char *message)
{
    char msg[512];
    snprintf(msg, sizeof msg, "%s", message ? message : "");
    /* Parser messages may quote the client's bytes, which need not be UTF-8. */
    hr_api_printable(msg);
    return json_pack("{s:{s:s,s:s}}", "error", "code", code, "message", msg);
}

/*
 * test_api.c - JSON <-> structs (src/api.c): event validation (which
 * creates no id) and resolution, predict pairs, the query strings of
 * predict and recommend, the error body.
 */
#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hogrec/api.h"
#include "testutil.h"

static hr_model *make_model(const char *loss)
{
    hr_config c;
    hr_config_defaults(&c);
    c.k = 4;
    c.max_users = 64;
    c.max_items = 64;
    c.chunk_rows = 64;
    c.context_bits = 4;
    assert_int_equal(hr_config_set(&c, "loss", loss, NULL), HR_OK);
    hr_schedule s;
    hr_schedule_defaults(&s);
    hr_model_config mc;
    assert_int_equal(hr_model_config_from(&c, &s, &mc, NULL), HR_OK);
    hr_model *m = NULL;
    assert_int_equal(hr_model_create(&mc, &m, NULL), HR_OK);
    hr_config_free(&c);
    return m;
}

static hr_status ev_from(hr_model *m, const char *text, hr_event *ev, hr_error *e)
{
    json_t *v = json_loads(text, 0, NULL);
    assert_non_null(v);
    hr_status st = hr_api_event_from_json(m, v, ev, NULL, e);
    json_decref(v);
    return st;
}

static void test_event_valid(void **state)
{
    (void)state;
    hr_model *m = make_model("logistic");
    hr_event ev;
    hr_error e;
    assert_int_equal(ev_from(m, "{\"user\":\"u1\",\"item\":7,\"label\":0,\"weight\":2,"
                                "\"ts\":1.5,\"features\":{\"dev\":\"ios\",\"age\":3},\"id\":\"e1\"}",
                             &ev, &e),
                     HR_OK);
    assert_true(ev.user > 0 && ev.item > 0);
    assert_true(ev.label == 0.0f && ev.weight == 2.0f && ev.ts == 1.5);
    assert_int_equal(ev.nctx, 2);
    assert_int_equal(hr_model_lookup(m, HR_TABLE_ITEM, "7", 1), ev.item); /* integer id = decimal */
    assert_int_equal(ev_from(m, "{\"user\":\"u1\",\"item\":\"x\"}", &ev, &e), HR_OK);
    assert_true(ev.label == 1.0f); /* default label */
    hr_model_destroy(m);
}

static void test_event_invalid_names_field(void **state)
{
    (void)state;
    hr_model *m = make_model("logistic");
    struct {
        const char *json, *field;
    } cases[] = {
        {"{\"item\":\"i\"}", "user"},
        {"{\"user\":[1],\"item\":\"i\"}", "user"},
        {"{\"user\":\"u\",\"item\":1.5}", "item"},
        {"{\"user\":\"u\",\"item\":\"i\",\"label\":2}", "label"},
        {"{\"user\":\"u\",\"item\":\"i\",\"label\":\"1\"}", "label"},
        {"{\"user\":\"u\",\"item\":\"i\",\"label\":true}", "label"}, /* a number, 0 or 1 */
        {"{\"user\":\"u\",\"item\":\"i\",\"label\":false}", "label"},
        {"{\"user\":\"u\",\"item\":\"i\",\"weight\":true}", "weight"},
        {"{\"user\":\"u\",\"item\":\"i\",\"ts\":\"1\"}", "ts"},
        {"{\"user\":\"u\",\"item\":\"i\",\"id\":true}", "id"},
        {"{\"user\":true,\"item\":\"i\"}", "user"},
        {"{\"user\":\"u\",\"item\":\"i\",\"features\":{\"a\":true}}", "features"},
        {"{\"user\":\"u\",\"item\":\"i\",\"weight\":-1}", "weight"},
        {"{\"user\":\"u\",\"item\":\"i\",\"rating\":3}", "rating"},
        {"{\"user\":\"u\",\"item\":\"i\",\"features\":[1]}", "features"},
        {"{\"user\":\"u\",\"item\":\"i\",\"features\":{\"a\":null}}", "features"},
        {"{\"user\":\"u\",\"item\":\"i\",\"bogus\":1}", "bogus"},
        /* an unknown field whose value is the same JSON value as a known one's */
        {"{\"user\":\"u\",\"item\":\"i\",\"weight\":null,\"bogus\":null}", "bogus"},
        {"{\"bogus\":true,\"user\":\"u\",\"item\":\"i\",\"label\":true}", "bogus"},
        {"{\"user\":\"\",\"item\":\"i\"}", "user"},
    };
    for (size_t i = 0; i < HR_ARRAY_LEN(cases); i++) {
        hr_event ev;
        hr_error e = {{0}, {0}};
        assert_int_equal(ev_from(m, cases[i].json, &ev, &e), HR_EINVAL);
        assert_string_equal(e.field, cases[i].field);
    }
    /* nothing was interned by the invalid events */
    assert_int_equal(hr_model_id_count(m, HR_TABLE_USER), 0);
    assert_int_equal(hr_model_id_count(m, HR_TABLE_ITEM), 0);
    json_t *arr = json_array();
    hr_event ev;
    assert_int_equal(hr_api_event_from_json(m, arr, &ev, NULL, NULL), HR_EINVAL);
    json_decref(arr);
    hr_model_destroy(m);
}

static void test_squared_needs_rating(void **state)
{
    (void)state;
    hr_model *m = make_model("squared");
    hr_event ev;
    hr_error e;
    assert_int_equal(ev_from(m, "{\"user\":1,\"item\":2,\"rating\":4.5}", &ev, &e), HR_OK);
    assert_true(ev.label == 4.5f);
    assert_int_equal(ev_from(m, "{\"user\":1,\"item\":2}", &ev, &e), HR_EINVAL);
    assert_string_equal(e.field, "rating");
    /* Found by tests/fuzz/fuzz_event (corpus/event/regress-rating-float-overflow.json):
     * a rating that is a finite double but not a finite float became an
     * infinite label, and the model trained on it (progressive mse inf). */
    assert_int_equal(ev_from(m, "{\"user\":1,\"item\":2,\"rating\":1e39}", &ev, &e), HR_EINVAL);
    assert_string_equal(e.field, "rating");
    assert_int_equal(ev_from(m, "{\"user\":1,\"item\":2,\"rating\":-1e7}", &ev, &e), HR_EINVAL);
    assert_string_equal(e.field, "rating");
    assert_int_equal(ev_from(m, "{\"user\":1,\"item\":2,\"rating\":-1e6}", &ev, &e), HR_OK);
    assert_true(ev.label == -1e6f);
    hr_model_destroy(m);
}

/* Validation resolves nothing; resolution creates the ids it names. */
static void test_event_parse_then_resolve(void **state)
{
    (void)state;
    hr_model *m = make_model("logistic");
    json_t *v = json_loads("{\"user\":\"u1\",\"item\":7,\"label\":0,\"id\":\"e1\","
                           "\"features\":{\"dev\":\"ios\"}}", 0, NULL);
    assert_non_null(v);
    hr_event ev, direct;
    hr_api_event_refs refs;
    hr_error e = {{0}, {0}};
    assert_int_equal(hr_api_event_parse(m, v, &ev, &refs, &e), HR_OK);
    assert_int_equal(hr_model_id_count(m, HR_TABLE_USER), 0);
    assert_int_equal(hr_model_id_count(m, HR_TABLE_ITEM), 0);
    assert_int_equal(ev.user, 0);
    assert_int_equal(ev.item, 0);
    assert_ptr_equal(refs.user, json_object_get(v, "user"));
    assert_ptr_equal(refs.item, json_object_get(v, "item"));
    assert_ptr_equal(refs.id, json_object_get(v, "id"));
    assert_int_equal(hr_api_event_resolve(m, &refs, &ev, &e), HR_OK);
    assert_int_equal(ev.user, hr_model_lookup(m, HR_TABLE_USER, "u1", 2));
    assert_int_equal(ev.item, hr_model_lookup(m, HR_TABLE_ITEM, "7", 1));
    /* the two steps give what hr_api_event_from_json gives */
    const json_t *eid = NULL;
    assert_int_equal(hr_api_event_from_json(m, v, &direct, &eid, &e), HR_OK);
    assert_memory_equal(&ev, &direct, sizeof ev);
    assert_ptr_equal(eid, refs.id);
    /* a pair names only user, item and features */
    unsigned unk;
    json_t *pair = json_loads("{\"user\":\"u1\",\"item\":7,\"label\":1}", 0, NULL);
    assert_int_equal(hr_api_pair_from_json(m, pair, &ev, &unk, &e), HR_EINVAL);
    assert_string_equal(e.field, "label");
    assert_string_equal(e.message, "unknown field 'label'");
    json_decref(pair);
    json_decref(v);
    hr_model_destroy(m);
}

static void test_pair_unknown_creates_nothing(void **state)
{
    (void)state;
    hr_model *m = make_model("logistic");
    hr_event ev;
    hr_error e;
    assert_int_equal(ev_from(m, "{\"user\":\"u1\",\"item\":\"i1\"}", &ev, &e), HR_OK);
    json_t *p = json_loads("{\"user\":\"u1\",\"item\":\"nope\",\"features\":{\"f\":1}}", 0, NULL);
    unsigned unk = 99;
    assert_int_equal(hr_api_pair_from_json(m, p, &ev, &unk, &e), HR_OK);
    assert_int_equal(unk, HR_API_UNKNOWN_ITEM);
    assert_int_equal(ev.item, 0);
    assert_true(ev.user > 0);
    assert_int_equal(ev.nctx, 1);
    assert_int_equal(hr_model_id_count(m, HR_TABLE_ITEM), 1);
    double pr = hr_model_predict(m, &ev);
    assert_true(pr > 0 && pr < 1);
    json_decref(p);
    p = json_loads("{\"user\":\"u1\",\"item\":\"i1\",\"label\":1}", 0, NULL);
    assert_int_equal(hr_api_pair_from_json(m, p, &ev, &unk, &e), HR_EINVAL);
    assert_string_equal(e.field, "label");
    json_decref(p);
    p = json_loads("{\"user\":{},\"item\":\"i1\"}", 0, NULL);
    assert_int_equal(hr_api_pair_from_json(m, p, &ev, &unk, &e), HR_EINVAL);
    assert_string_equal(e.field, "user");
    json_decref(p);
    hr_model_destroy(m);
}

static void test_error_json(void **state)
{
    (void)state;
    json_t *e = hr_api_error_json("bad", "oops");
    char *s = json_dumps(e, JSON_COMPACT | JSON_SORT_KEYS);
    assert_string_equal(s, "{\"error\":{\"code\":\"bad\",\"message\":\"oops\"}}");
    free(s);
    json_decref(e);
}

/* Splits body (len bytes) and returns the compact text of [lines, errors]. */
static char *split(const char *body, size_t len, size_t *parsed)
{
    json_t *arr = json_array(), *errors = json_array();
    *parsed = hr_api_ndjson_split(body, len, arr, errors);
    json_t *both = json_pack("[oo]", arr, errors);
    char *s = json_dumps(both, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(both);
    return s;
}

static void test_ndjson_split(void **state)
{
    (void)state;
    size_t parsed;
    /* blank lines (spaces, tabs, CR) are skipped, CRLF works, the last line
     * needs no newline; a bad line is null and reported by its index among
     * the non-blank lines */
    const char body[] = "{\"a\":1}\r\n\n \t\r\n[2]\nnope\n{\"b\":3}";
    char *s = split(body, sizeof body - 1, &parsed);
    assert_int_equal(parsed, 3);
    assert_string_equal(s, "[[{\"a\":1},[2],null,{\"b\":3}],[{\"index\":2,\"message\":"
                           "\"not JSON: '[' or '{' expected near 'nope'\"}]]");
    free(s);
    /* only the first len bytes count; NULL is an empty body */
    s = split("{}\n{\"x\":", 3, &parsed);
    assert_int_equal(parsed, 1);
    assert_string_equal(s, "[[{}],[]]");
    free(s);
    s = split(NULL, 0, &parsed);
    assert_int_equal(parsed, 0);
    assert_string_equal(s, "[[],[]]");
    free(s);
    /* a duplicate key is an error; bytes that are not UTF-8 are quoted as '?' */
    const char bad[] = "{\"a\":1,\"a\":2}\n[\"\xff\"]";
    s = split(bad, sizeof bad - 1, &parsed);
    assert_int_equal(parsed, 0);
    json_t *v = json_loads(s, 0, NULL);
    assert_non_null(v);
    json_t *errs = json_array_get(v, 1);
    assert_int_equal(json_array_size(errs), 2);
    assert_non_null(strstr(json_string_value(json_object_get(json_array_get(errs, 0), "message")),
                           "duplicate"));
    const char *m = json_string_value(json_object_get(json_array_get(errs, 1), "message"));
    for (const char *p = m; *p; p++)
        assert_true((unsigned char)*p >= 0x20 && (unsigned char)*p < 0x80);
    json_decref(v);
    free(s);
}

/* The reference split: every non-blank line through json_loadb, as
 * hr_api_ndjson_split did before its plain-object reader. Returns the
 * compact text (key order kept) of [lines, errors] and sets *parsed. */
static char *split_ref(const char *body, size_t len, size_t *parsed)
{
    json_t *arr = json_array(), *errors = json_array();
    size_t idx = 0;
    *parsed = 0;
    const char *p = body, *end = body + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p)), *le = nl ? nl : end, *q = p;
        while (q < le && (*q == ' ' || *q == '\t' || *q == '\r'))
            q++;
        if (q < le) {
            json_error_t jerr;
            json_t *v = json_loadb(p, (size_t)(le - p), JSON_REJECT_DUPLICATES, &jerr);
            if (v) {
                (*parsed)++;
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
    json_t *both = json_pack("[oo]", arr, errors);
    char *s = json_dumps(both, JSON_COMPACT);
    json_decref(both);
    return s;
}

/* hr_api_ndjson_split's result (same text form as split_ref). */
static char *split_fast(const char *body, size_t len, size_t *parsed)
{
    json_t *arr = json_array(), *errors = json_array();
    *parsed = hr_api_ndjson_split(body, len, arr, errors);
    json_t *both = json_pack("[oo]", arr, errors);
    char *s = json_dumps(both, JSON_COMPACT);
    json_decref(both);
    return s;
}

static void assert_split_equal(const char *body, size_t len)
{
    size_t pf, pr;
    char *f = split_fast(body, len, &pf), *r = split_ref(body, len, &pr);
    if (pf != pr || strcmp(f, r) != 0)
        fail_msg("body %.*s:\n got  %s (%zu parsed)\n want %s (%zu parsed)", (int)len, body, f,
                 pf, r, pr);
    free(f);
    free(r);
}

/* A random token of a flat-object line: mostly plain, sometimes what the
 * plain reader must leave to jansson. */
static void random_value(hr_rng *g, char *out, size_t cap)
{
    static const char *const odd[] = {
        "\"a\\\"b\"", "\"\\u00e9\"", "\"\xc3\xa9\"", "\"\xff\"", "\"tab\there\"", "\"\"", "0", "-0",
        "007", "-", "1.", ".5", "1e", "1e+", "1E-3", "-0.0", "1e400", "-1e400", "1e-400",
        "123456789012345678", "1234567890123456789", "9223372036854775807",
        "9223372036854775808", "-9223372036854775808", "-9223372036854775809", "true", "false",
        "null", "tru", "nul", "True", "[1]", "{\"x\":1}", "{}", "[]", "0x10", "+1", "NaN",
        "Infinity", "1.5e3", "2.2250738585072014e-308", "4.9e-324", "1.7976931348623157e308"};
    switch (hr_rng_below(g, 4)) {
    case 0: { /* a plain id */
        snprintf(out, cap, "\"u%llu\"", (unsigned long long)hr_rng_below(g, 100000));
        break;
    }
    case 1: { /* an integer of 1 to 20 digits */
        int nd = 1 + (int)hr_rng_below(g, 20);
        size_t n = 0;
        if (hr_rng_below(g, 3) == 0)
            out[n++] = '-';
        for (int i = 0; i < nd && n + 2 < cap; i++)
            out[n++] = (char)('0' + (i == 0 && nd > 1 ? 1 + hr_rng_below(g, 9) : hr_rng_below(g, 10)));
        out[n] = '\0';
        break;
    }
    case 2: /* a real */
        snprintf(out, cap, "%.*g", 1 + (int)hr_rng_below(g, 17),
                 (hr_rng_uniform(g) - 0.5) * pow(10, (double)hr_rng_below(g, 40) - 20));
        if (!strpbrk(out, ".e"))
            strcat(out, ".5");
        break;
    default:
        snprintf(out, cap, "%s", odd[hr_rng_below(g, sizeof odd / sizeof *odd)]);
    }
}

static void test_ndjson_plain_lines_equal_jansson(void **state)
{
    (void)state;
    /* edge cases of the plain reader, one body each and all in one */
    static const char *const lines[] = {
        "{\"user\":\"u1\",\"item\":\"i2\",\"label\":1}", "{}", " { } ", "{ \"a\" : 1 , \"b\" : \"x\" }",
        "{\"a\":1,}", "{\"a\":1 \"b\":2}", "{\"a\"1}", "{\"a\":}", "{\"a\":1}x", "{\"a\":1}{}",
        "{\"a\":1", "{\"a\"", "{", "}", "{\"a\":1,\"a\":2}", "{\"a\":1,\"b\":2,\"a\":3}",
        "{\"\":1}", "{\"a\":\"\"}", "{\"a\\u0062\":1}", "{\"a\":\"x\\ny\"}", "{\"a\":\"\x01\"}",
        "{\"a\":\"\x7f\"}", "{\"a\":truex}", "{\"a\":true,\"b\":false,\"c\":null}",
        "{\"a\":-}", "{\"a\":01}", "{\"a\":1.0}", "{\"a\":1e2}", "{\"a\":-1E+2}",
        "{\"a\":1e400}", "{\"a\":[1,2]}", "{\"a\":{\"b\":1}}", "[{\"a\":1}]", "\"s\"", "1",
        "{\"a\":1}\r", "\t{\"a\":1}\t\r", "{\"a\":1}\xc2\xa0", "{\"k1\":1,\"k2\":2,\"k3\":3,"
        "\"k4\":4,\"k5\":5,\"k6\":6,\"k7\":7,\"k8\":8,\"k9\":9,\"k10\":10,\"k11\":11,\"k12\":12,"
        "\"k13\":13,\"k14\":14,\"k15\":15,\"k16\":16,\"k17\":17}",
        "{\"a\":1}\0", "{\"a\":\"b\0\"}"};
    char all[4096];
    size_t at = 0;
    for (size_t i = 0; i < sizeof lines / sizeof *lines; i++) {
        size_t n = strlen(lines[i]);
        assert_split_equal(lines[i], n);
        memcpy(all + at, lines[i], n);
        at += n;
        all[at++] = '\n';
    }
    assert_split_equal(all, at);
    /* embedded NUL bytes (strlen stops at them above) */
    assert_split_equal("{\"a\":1}\0", 8);
    assert_split_equal("{\"a\":\"b\0\"}", 10);
    /* generated lines: keys from a small set (duplicates happen), values
     * plain and odd, random blanks, sometimes a byte dropped or changed */
    hr_rng g;
    hr_rng_seed(&g, 11);
    static const char *const keys[] = {"user", "item", "label", "ts", "weight", "id", "rating",
                                       "x"};
    for (int it = 0; it < 20000; it++) {
        char line[1024], v[128];
        size_t n = 0;
        int nk = (int)hr_rng_below(&g, 6);
        n += (size_t)snprintf(line + n, sizeof line - n, "%s{", hr_rng_below(&g, 8) ? "" : " ");
        for (int i = 0; i < nk; i++) {
            random_value(&g, v, sizeof v);
            n += (size_t)snprintf(line + n, sizeof line - n, "%s\"%s\"%s:%s%s", i ? "," : "",
                                  keys[hr_rng_below(&g, 8)], hr_rng_below(&g, 8) ? "" : " ",
                                  hr_rng_below(&g, 8) ? "" : "\t", v);
        }
        n += (size_t)snprintf(line + n, sizeof line - n, "}%s", hr_rng_below(&g, 8) ? "" : " \r");
        if (n > 2 && hr_rng_below(&g, 5) == 0) {
            size_t at2 = hr_rng_below(&g, n);
            if (hr_rng_below(&g, 2))
                memmove(line + at2, line + at2 + 1, n-- - at2);
            else
                line[at2] = "{}[]\":,. -1e\\x"[hr_rng_below(&g, 15)];
        }
        assert_split_equal(line, n);
    }
}

static void assert_text_equal(const json_t *obj)
{
    size_t n = 0;
    char *got = hr_api_event_text(obj, &n);
    char *want = json_dumps(obj, JSON_COMPACT | JSON_SORT_KEYS);
    assert_non_null(got);
    assert_non_null(want);
    if (strcmp(got, want) != 0 || n != strlen(want))
        fail_msg("event text %s (%zu bytes), json_dumps %s", got, n, want);
    free(got);
    free(want);
}

/* The log's text of an event equals json_dumps(COMPACT | SORT_KEYS) byte
 * for byte, whether written directly (flat, plain) or by jansson: keys that
 * sort by a prefix, integers at their limits, literals, escapes, non-ASCII,
 * reals, nesting, a key with a NUL byte, and generated objects. */
static void test_event_text_equals_json_dumps(void **state)
{
    (void)state;
    static const char *const objs[] = {
        "{}", "{\"user\":\"u1\",\"item\":\"i2\",\"label\":1}", "{\"b\":1,\"a\":2,\"ab\":3,\"\":4}",
        "{\"x\":9223372036854775807,\"y\":-9223372036854775808,\"z\":0,\"w\":-1}",
        "{\"t\":true,\"f\":false,\"n\":null}", "{\"s\":\"a\\\"b\\\\c/d\"}", "{\"s\":\"\\u00e9\\u0001\"}",
        "{\"s\":\"\x7f\"}", "{\"k\\u00e9\":1}", "{\"r\":1.5,\"i\":1}", "{\"r\":1e300}",
        "{\"features\":{\"a\":1},\"user\":\"u\"}", "{\"a\":[1,2]}", "{\"Z\":1,\"a\":1,\"_\":1,\"0\":1}"};
    for (size_t i = 0; i < sizeof objs / sizeof *objs; i++) {
        json_t *o = json_loads(objs[i], 0, NULL);
        assert_non_null(o);
        assert_text_equal(o);
        json_decref(o);
    }
    json_t *o = json_object();
    json_object_setn_new(o, "a\0b", 3, json_integer(1));
    json_object_set_new(o, "a", json_integer(2));
    assert_text_equal(o);
    json_decref(o);
    hr_rng g;
    hr_rng_seed(&g, 12);
    static const char *const keys[] = {"user", "item", "label", "ts", "weight", "id", "rating",
                                       "u", "users", "x"};
    for (int it = 0; it < 5000; it++) {
        o = json_object();
        int nk = (int)hr_rng_below(&g, 8);
        for (int i = 0; i < nk; i++) {
            char v[128];
            random_value(&g, v, sizeof v);
            json_t *jv = json_loads(v, JSON_DECODE_ANY, NULL);
            if (jv)
                json_object_set_new(o, keys[hr_rng_below(&g, 10)], jv);
        }
        assert_text_equal(o);
        json_decref(o);
    }
}

/* JSONTestSuite's parsing files (valid, invalid and either), each as a
 * body: the plain reader and jansson agree on every one. */
static void test_ndjson_plain_jsontestsuite(void **state)
{
    (void)state;
    const char *dir = tu_shared_data("jsontestsuite/test_parsing");
    if (!dir) {
        TU_SKIP("jsontestsuite not found under ../shared/data (or $HOGREC_SHARED_DATA)");
        return;
    }
    DIR *d = opendir(dir);
    assert_non_null(d);
    struct dirent *de;
    int files = 0;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        FILE *f = fopen(path, "rb");
        if (!f)
            continue;
        static char buf[1 << 16];
        size_t n = fread(buf, 1, sizeof buf, f);
        fclose(f);
        assert_split_equal(buf, n);
        files++;
    }
    closedir(d);
    assert_true(files > 100);
}

/* ---- query strings ---- */

/* Splits "k=v&k2=v2" (no percent-escapes; '~' stands for a NUL byte, '!'
 * for the byte 0xff) into params held in buf; returns the count. */
static size_t split_query(const char *q, char *buf, hr_api_param *p, size_t cap)
{
    strcpy(buf, q);
    for (char *c = buf; *c; c++)
        *c = *c == '!' ? (char)0xff : *c;
    size_t n = 0, len = strlen(buf);
    char *s = buf, *end = buf + len;
    while (s < end && n < cap) {
        char *amp = memchr(s, '&', (size_t)(end - s));
        char *e = amp ? amp : end;
        char *eq = memchr(s, '=', (size_t)(e - s));
        p[n].key = s;
        p[n].key_len = (size_t)((eq ? eq : e) - s);
        p[n].value = eq ? eq + 1 : NULL;
        p[n].value_len = eq ? (size_t)(e - eq - 1) : 0;
        for (char *c = s; c < e; c++)
            if (*c == '~')
                *c = 0;
        n++;
        s = e + 1;
    }
    return n;
}

static void test_predict_query(void **state)
{
    (void)state;
    hr_model *m = make_model("logistic");
    hr_event ev;
    hr_error e = {{0}, {0}};
    assert_int_equal(ev_from(m, "{\"user\":\"u1\",\"item\":\"i1\"}", &ev, &e), HR_OK);
    assert_int_equal(ev_from(m, "{\"user\":\"a\",\"item\":\"\\u0001\"}", &ev, &e), HR_OK);
    char buf[600];
    hr_api_param p[8];
    hr_api_predict_req q;
    size_t n = split_query("user=u1&item=i1", buf, p, 8);
    assert_int_equal(hr_api_predict_query(m, p, n, &q, &e), HR_OK);
    assert_int_equal(q.unknown, 0);
    assert_int_equal(q.ev.user, hr_model_lookup(m, HR_TABLE_USER, "u1", 2));
    assert_int_equal(q.ev.item, hr_model_lookup(m, HR_TABLE_ITEM, "i1", 2));
    n = split_query("item=nope&user=u1", buf, p, 8);
    assert_int_equal(hr_api_predict_query(m, p, n, &q, &e), HR_OK);
    assert_int_equal(q.unknown, HR_API_UNKNOWN_ITEM);
    assert_int_equal(q.ev.item, 0);
    /* a control character is part of an id (JSON escapes it) */
    n = split_query("user=a&item=\x01", buf, p, 8);
    assert_int_equal(hr_api_predict_query(m, p, n, &q, &e), HR_OK);
    assert_int_equal(q.unknown, 0);
    assert_int_equal(q.ev.item, hr_model_lookup(m, HR_TABLE_ITEM, "\x01", 1));
    /* errors name the parameter */
    char longid[300];
    memset(longid, 'x', 257);
    longid[257] = 0;
    char longq[600];
    snprintf(longq, sizeof longq, "user=u1&item=%s", longid);
    struct {
        const char *q, *field;
    } bad[] = {
        {"item=i1", "user"},         {"user=u1", "item"},        {"user=&item=i1", "user"},
        {"user&item=i1", "user"},    {"user=u!&item=i1", "user"}, {"user=u1&item=\xc3(", "item"},
        {"user=u1&item=\xed\xa0\x80", "item"}, /* a surrogate */
        {"user=u1&item=\xc0\xaf", "item"},     /* overlong */
        {"user=u1&item=i1&user=u2", "user"},   {"user=u1&item=i1&x=1", "x"},
        {"user=a~b&item=i1", "user"}, /* no id holds a NUL byte */
        {"user=u1&&item=i1", "query"}, {"user=u1&=x&item=i1", "query"}, /* no name (fuzz) */
        {longq, "item"},
    };
    for (size_t i = 0; i < HR_ARRAY_LEN(bad); i++) {
        n = split_query(bad[i].q, buf, p, 8);
        memset(&e, 0, sizeof e);
        assert_int_equal(hr_api_predict_query(m, p, n, &q, &e), HR_EINVAL);
        assert_string_equal(e.field, bad[i].field);
        assert_true(e.message[0]);
    }
    /* a 256-byte UTF-8 id is fine; the model is only read */
    longid[256] = 0;
    snprintf(longq, sizeof longq, "user=u1&item=%s", longid);
    n = split_query(longq, buf, p, 8);
    assert_int_equal(hr_api_predict_query(m, p, n, &q, &e), HR_OK);
    assert_int_equal(hr_model_id_count(m, HR_TABLE_ITEM), 2); /* i1 and \x01 */
    /* min_seq: a seq, or a stream entry id (cluster mode) */
    n = split_query("user=u1&item=i1&min_seq=17&wait_ms=5", buf, p, 8);
    assert_int_equal(hr_api_predict_query(m, p, n, &q, &e), HR_OK);
    assert_true(q.wait.given && !q.wait.is_entry);
    assert_int_equal(q.wait.min_seq, 17);
    n = split_query("user=u1&item=i1&min_seq=1700000000123-42", buf, p, 8);
    assert_int_equal(hr_api_predict_query(m, p, n, &q, &e), HR_OK);
    assert_true(q.wait.given && q.wait.is_entry);
    assert_int_equal(q.wait.entry_ms, 1700000000123ull);
    assert_int_equal(q.wait.entry_seq, 42);
    const char *bad_seq[] = {"min_seq=1-", "min_seq=-1", "min_seq=1-2-3", "min_seq=a-1",
                             "min_seq=99999999999999999999-1"};
    for (size_t i = 0; i < HR_ARRAY_LEN(bad_seq); i++) {
        snprintf(longq, sizeof longq, "user=u1&item=i1&%s", bad_seq[i]);
        n = split_query(longq, buf, p, 8);
        assert_int_equal(hr_api_predict_query(m, p, n, &q, &e), HR_EINVAL);
        assert_string_equal(e.field, "min_seq");
    }
    hr_api_wait w;
    json_t *j = json_loads("{\"min_seq\":\"5-6\"}", 0, NULL);
    assert_int_equal(hr_api_wait_from_json(j, &w, &e), HR_OK);
    assert_true(w.given && w.is_entry);
    assert_int_equal(w.entry_ms, 5);
    assert_int_equal(w.entry_seq, 6);
    json_decref(j);
    j = json_loads("{\"min_seq\":\"5\"}", 0, NULL);
    assert_int_equal(hr_api_wait_from_json(j, &w, &e), HR_EINVAL);
    json_decref(j);
    hr_model_destroy(m);
}

static void test_recommend_query(void **state)
{
    (void)state;
    hr_model *m = make_model("logistic");
    hr_event ev;
    hr_error e = {{0}, {0}};
    assert_int_equal(ev_from(m, "{\"user\":\"u1\",\"item\":\"i1\"}", &ev, &e), HR_OK);
    assert_int_equal(ev_from(m, "{\"user\":\"u1\",\"item\":\"i2\"}", &ev, &e), HR_OK);
    uint32_t i1 = hr_model_lookup(m, HR_TABLE_ITEM, "i1", 2);
    uint32_t i2 = hr_model_lookup(m, HR_TABLE_ITEM, "i2", 2);
    char buf[8000];
    hr_api_param p[8];
    hr_api_recommend_req *q = malloc(sizeof *q);
    size_t n = split_query("user=u1", buf, p, 8);
    assert_int_equal(hr_api_recommend_query(m, p, n, q, &e), HR_OK);
    assert_int_equal(q->k, 10); /* defaults */
    assert_true(q->exclude_seen);
    assert_int_equal(q->nexclude, 0);
    assert_int_equal(q->user_row, hr_model_lookup(m, HR_TABLE_USER, "u1", 2));
    assert_int_equal(q->user_len, 2);
    assert_string_equal(q->user, "u1");
    n = split_query("k=1000&exclude=i2,,nosuch,i1,&exclude_seen=0&user=stranger", buf, p, 8);
    assert_int_equal(hr_api_recommend_query(m, p, n, q, &e), HR_OK);
    assert_int_equal(q->k, 1000);
    assert_false(q->exclude_seen);
    assert_int_equal(q->user_row, 0); /* unknown */
    assert_int_equal(q->nexclude, 2);
    assert_int_equal(q->exclude[0], i2);
    assert_int_equal(q->exclude[1], i1);
    n = split_query("user=\x01\xc3\xa9&exclude=&exclude_seen=true&k=01", buf, p, 8);
    assert_int_equal(hr_api_recommend_query(m, p, n, q, &e), HR_OK);
    assert_int_equal(q->user_len, 3);
    assert_string_equal(q->user, "\x01\xc3\xa9");
    assert_int_equal(q->k, 1);
    assert_int_equal(q->nexclude, 0);
    /* exclude: at most 1000 ids, each at most 256 bytes */
    size_t off = (size_t)sprintf(buf + 4000, "user=u1&exclude=");
    for (int i = 0; i < 1000; i++)
        off += (size_t)sprintf(buf + 4000 + off, "%sx", i ? "," : "");
    char *many = strdup(buf + 4000);
    n = split_query(many, buf, p, 8);
    assert_int_equal(hr_api_recommend_query(m, p, n, q, &e), HR_OK);
    assert_int_equal(q->nexclude, 0);
    free(many);
    struct {
        const char *q, *field;
    } bad[] = {
        {"k=5", "user"},
        {"user=", "user"},
        {"user=u!", "user"},
        {"user=a~b", "user"},
        {"user=u1&k=0", "k"},
        {"user=u1&k=1001", "k"},
        {"user=u1&k=99999999999999999999", "k"},
        {"user=u1&k=", "k"},
        {"user=u1&k", "k"},
        {"user=u1&k=+5", "k"},
        {"user=u1&k=%205", "k"},
        {"user=u1&k=5x", "k"},
        {"user=u1&k=5~", "k"},
        {"user=u1&k=-1", "k"},
        {"user=u1&exclude_seen=maybe", "exclude_seen"},
        {"user=u1&exclude_seen=", "exclude_seen"},
        {"user=u1&exclude_seen=TRUE", "exclude_seen"},
        {"user=u1&k=2&k=3", "k"},
        {"user=u1&usr=u2", "usr"},
        {"user=u1&=x", "query"},
    };
    for (size_t i = 0; i < HR_ARRAY_LEN(bad); i++) {
        n = split_query(bad[i].q, buf, p, 8);
        memset(&e, 0, sizeof e);
        assert_int_equal(hr_api_recommend_query(m, p, n, q, &e), HR_EINVAL);
        assert_string_equal(e.field, bad[i].field);
    }
    off = (size_t)sprintf(buf + 4000, "user=u1&exclude=");
    for (int i = 0; i < 1001; i++)
        off += (size_t)sprintf(buf + 4000 + off, "%sx", i ? "," : "");
    many = strdup(buf + 4000);
    n = split_query(many, buf, p, 8);
    assert_int_equal(hr_api_recommend_query(m, p, n, q, &e), HR_EINVAL);
    assert_string_equal(e.field, "exclude");
    free(many);
    char longq[400] = "user=u1&exclude=i1,";
    memset(longq + strlen(longq), 'x', 257);
    n = split_query(longq, buf, p, 8);
    assert_int_equal(hr_api_recommend_query(m, p, n, q, &e), HR_EINVAL);
    assert_string_equal(e.field, "exclude");
    free(q);
    hr_model_destroy(m);
}

/* Error text is cut between UTF-8 characters, so it stays a JSON string
 * (an event's per-index errors are built from it). */
static void test_error_text_stays_utf8(void **state)
{
    (void)state;
    hr_model *m = make_model("logistic");
    for (int shift = 0; shift < 3; shift++) {
        /* an unknown field: 120 three-byte characters after `shift` ASCII bytes */
        char key[400];
        memset(key, 'k', (size_t)shift);
        size_t o = (size_t)shift;
        for (int i = 0; i < 120; i++, o += 3)
            memcpy(key + o, "\xe2\x82\xac", 3); /* the euro sign */
        key[o] = 0;
        json_t *v = json_pack("{s:s,s:s,s:i}", "user", "u", "item", "i", key, 1);
        assert_non_null(v);
        hr_event ev;
        hr_error e = {{0}, {0}};
        assert_int_equal(hr_api_event_from_json(m, v, &ev, NULL, &e), HR_EINVAL);
        json_t *msg = json_string(e.message), *field = json_string(e.field);
        assert_non_null(msg);
        assert_non_null(field);
        assert_true(strlen(e.message) > 200); /* cut, not dropped */
        json_decref(msg);
        json_decref(field);
        json_decref(v);
    }
    hr_model_destroy(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_event_valid),
        cmocka_unit_test(test_event_invalid_names_field),
        cmocka_unit_test(test_squared_needs_rating),
        cmocka_unit_test(test_event_parse_then_resolve),
        cmocka_unit_test(test_pair_unknown_creates_nothing),
        cmocka_unit_test(test_error_json),
        cmocka_unit_test(test_ndjson_split),
        cmocka_unit_test(test_ndjson_plain_lines_equal_jansson),
        cmocka_unit_test(test_ndjson_plain_jsontestsuite),
        cmocka_unit_test(test_event_text_equals_json_dumps),
        cmocka_unit_test(test_predict_query),
        cmocka_unit_test(test_recommend_query),
        cmocka_unit_test(test_error_text_stays_utf8),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

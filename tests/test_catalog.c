/* ctest-separate: test_movielens_attributes */
/* ctest-labels: concurrent */
/*
 * test_catalog.c - the catalog: record validation, writes and reads, the
 * model attributes a record sets, durability across a restart, the HTTP
 * routes and their auth, recommendation filters (top-K against a brute
 * force ranking), forgetting a user (no byte left in the files), a new
 * user scored through its attributes, and `hogrec replay --users --items`
 * on MovieLens (skipped when ../shared data is absent).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <math.h>

#include <cmocka.h>

#include "hogrec/app.h"
#include "hogrec/catalog.h"
#include "hogrec/http.h"
#include "hogrec/sgd.h"
#include "hogrec/topk.h"
#include "testutil.h"

static json_t *parse(const char *s)
{
    json_t *v = json_loads(s, 0, NULL);
    assert_non_null(v);
    return v;
}

/* hr_catalog_parse on text: its status; err's field into field. */
static hr_status try_parse(const char *text, const char *id, char *field)
{
    json_t *v = parse(text);
    hr_catalog_record r;
    hr_error e = {{0}, {0}};
    hr_status st = hr_catalog_parse(v, id, id ? strlen(id) : 0, &r, &e);
    json_decref(v);
    if (field)
        strcpy(field, e.field);
    hr_catalog_record_free(&r);
    return st;
}

static void test_parse_validates(void **state)
{
    (void)state;
    char f[64];
    assert_int_equal(try_parse("{\"features\":{\"a\":\"x\",\"n\":2},\"categories\":[\"c\"],"
                               "\"hidden\":true,\"expires_at\":1e9}",
                               "i1", f),
                     HR_OK);
    assert_int_equal(try_parse("{\"id\":7}", NULL, f), HR_OK);
    assert_int_equal(try_parse("{}", NULL, f), HR_EINVAL);
    assert_string_equal(f, "id");
    assert_int_equal(try_parse("{\"id\":\"other\"}", "i1", f), HR_EINVAL);
    assert_string_equal(f, "id");
    assert_int_equal(try_parse("{\"colour\":1}", "i1", f), HR_EINVAL);
    assert_string_equal(f, "colour");
    assert_int_equal(try_parse("{\"features\":[]}", "i1", f), HR_EINVAL);
    assert_string_equal(f, "features");
    assert_int_equal(try_parse("{\"features\":{\"a\":true}}", "i1", f), HR_EINVAL);
    assert_int_equal(try_parse("{\"features\":{\"a\":1e7}}", "i1", f), HR_EINVAL);
    assert_int_equal(try_parse("{\"features\":{\"a\":1,\"b\":1,\"c\":1,\"d\":1,\"e\":1,\"f\":1,"
                               "\"g\":1,\"h\":1,\"i\":1}}",
                               "i1", f),
                     HR_EINVAL);
    assert_int_equal(try_parse("{\"categories\":\"c\"}", "i1", f), HR_EINVAL);
    assert_string_equal(f, "categories");
    assert_int_equal(try_parse("{\"categories\":[\"\"]}", "i1", f), HR_EINVAL);
    assert_int_equal(try_parse("{\"categories\":[\"a,b\"]}", "i1", f), HR_EINVAL);
    assert_int_equal(try_parse("{\"categories\":[1]}", "i1", f), HR_EINVAL);
    assert_int_equal(try_parse("{\"categories\":[\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\",\"8\","
                               "\"9\"]}",
                               "i1", f),
                     HR_EINVAL);
    assert_int_equal(try_parse("{\"hidden\":1}", "i1", f), HR_EINVAL);
    assert_string_equal(f, "hidden");
    assert_int_equal(try_parse("{\"expires_at\":-1}", "i1", f), HR_EINVAL);
    assert_string_equal(f, "expires_at");
    assert_int_equal(try_parse("{\"expires_at\":null}", "i1", f), HR_OK);
    assert_int_equal(try_parse("[]", "i1", f), HR_EINVAL);

    /* canonical: repeats collapse, defaults filled in */
    json_t *v = parse("{\"categories\":[\"a\",\"b\",\"a\"]}");
    hr_catalog_record r;
    hr_error e;
    assert_int_equal(hr_catalog_parse(v, "x", 1, &r, &e), HR_OK);
    assert_int_equal(json_array_size(json_object_get(r.doc, "categories")), 2);
    assert_true(json_is_false(json_object_get(r.doc, "hidden")));
    assert_string_equal(json_string_value(json_object_get(r.doc, "id")), "x");
    hr_catalog_record_free(&r);
    json_decref(v);
}

static hr_app *open_app(const char *db)
{
    hr_config c;
    tu_small_config(&c, db);
    hr_app *app;
    hr_error e;
    assert_int_equal(hr_app_open(&c, &app, &e), HR_OK);
    hr_config_free(&c);
    return app;
}

static void put(hr_catalog *cat, hr_catalog_kind kind, const char *id, const char *text)
{
    json_t *v = parse(text);
    hr_catalog_record r;
    hr_error e = {{0}, {0}};
    assert_int_equal(hr_catalog_parse(v, id, strlen(id), &r, &e), HR_OK);
    json_decref(v);
    assert_int_equal(hr_catalog_put(cat, kind, &r, 1, NULL, &e), HR_OK);
}

static uint32_t attrs_of(hr_app *app, hr_table_id t, const char *id)
{
    uint32_t row = hr_model_lookup(app->model, t, id, strlen(id));
    assert_int_not_equal(row, HR_ID_NONE);
    hr_feat f[HR_MAX_ATTRS];
    return hr_model_attrs(app->model, t, row, f);
}

static void test_put_get_delete_and_attributes(void **state)
{
    (void)state;
    hr_app *app = open_app("");
    hr_catalog *cat = app->catalog;
    assert_non_null(cat);
    put(cat, HR_CATALOG_ITEM, "i1", "{\"features\":{\"lang\":\"en\",\"year\":3},"
                                    "\"categories\":[\"drama\",\"comedy\"]}");
    put(cat, HR_CATALOG_USER, "u1", "{\"features\":{\"gender\":\"F\"}}");
    /* the ids exist in the model now, with their attributes, pinned */
    assert_int_equal(attrs_of(app, HR_TABLE_ITEM, "i1"), 4);
    assert_int_equal(attrs_of(app, HR_TABLE_USER, "u1"), 1);
    assert_true(hr_model_attrs_pinned(app->model, HR_TABLE_ITEM,
                                      hr_model_lookup(app->model, HR_TABLE_ITEM, "i1", 2)));
    json_t *doc = hr_catalog_get(cat, HR_CATALOG_ITEM, "i1", 2);
    assert_non_null(doc);
    assert_int_equal(json_array_size(json_object_get(doc, "categories")), 2);
    json_decref(doc);
    assert_null(hr_catalog_get(cat, HR_CATALOG_USER, "i1", 2));
    assert_int_equal(hr_catalog_count(cat, HR_CATALOG_ITEM), 1);

    /* the attributes take part in a prediction: a user row with attributes
     * and one without score differently for the same pair */
    hr_event ev = {0};
    ev.item = hr_model_lookup(app->model, HR_TABLE_ITEM, "i1", 2);
    ev.user = hr_model_lookup(app->model, HR_TABLE_USER, "u1", 2);
    double with = hr_model_predict(app->model, &ev);
    /* a rewrite replaces them */
    put(cat, HR_CATALOG_ITEM, "i1", "{\"categories\":[\"drama\"]}");
    assert_int_equal(attrs_of(app, HR_TABLE_ITEM, "i1"), 1);
    assert_true(hr_model_predict(app->model, &ev) != with);

    hr_error e;
    assert_int_equal(hr_catalog_delete(cat, HR_CATALOG_ITEM, "i1", 2, &e), HR_OK);
    assert_int_equal(attrs_of(app, HR_TABLE_ITEM, "i1"), 0);
    assert_false(hr_model_attrs_pinned(app->model, HR_TABLE_ITEM, ev.item));
    assert_int_equal(hr_catalog_delete(cat, HR_CATALOG_ITEM, "i1", 2, &e), HR_ENOTFOUND);
    assert_null(hr_catalog_get(cat, HR_CATALOG_ITEM, "i1", 2));
    hr_app_close(app, true);
}

/* attr_value_user, attr_value_item and attr_norm set the values of a
 * record's attributes in the model as documented: the side's value, over
 * sqrt(n) or n for n attributes, a number attribute times its number. */
static void test_attribute_values(void **state)
{
    (void)state;
    static const char *const norms[] = {"none", "sqrt", "count"};
    for (int k = 0; k < 4; k++) {
        hr_config c;
        tu_small_config(&c, "");
        hr_error e;
        double vu = 0.1, vi = 0.1; /* the defaults (k == 3) */
        if (k < 3) {
            vu = 0.5;
            vi = 0.2;
            assert_int_equal(hr_config_set(&c, "attr_value_user", "0.5", &e), HR_OK);
            assert_int_equal(hr_config_set(&c, "attr_value_item", "0.2", &e), HR_OK);
            assert_int_equal(hr_config_set(&c, "attr_norm", norms[k], &e), HR_OK);
        }
        hr_app *app;
        assert_int_equal(hr_app_open(&c, &app, &e), HR_OK);
        hr_config_free(&c);
        /* the item: 4 attributes, one of them the number 3; the user: 2 */
        put(app->catalog, HR_CATALOG_ITEM, "i1",
            "{\"features\":{\"lang\":\"en\",\"year\":3},\"categories\":[\"drama\",\"comedy\"]}");
        put(app->catalog, HR_CATALOG_USER, "u1", "{\"features\":{\"gender\":\"F\",\"age\":\"25-34\"}}");
        double div[2] = {1, 1}; /* user (2 attributes), item (4) */
        if (k == 1) {
            div[0] = sqrt(2);
            div[1] = 2;
        } else if (k == 2) {
            div[0] = 2;
            div[1] = 4;
        }
        hr_feat f[HR_MAX_ATTRS];
        uint32_t row = hr_model_lookup(app->model, HR_TABLE_USER, "u1", 2);
        assert_int_equal(hr_model_attrs(app->model, HR_TABLE_USER, row, f), 2);
        for (int i = 0; i < 2; i++)
            assert_float_equal(f[i].x, vu / div[0], 1e-6);
        row = hr_model_lookup(app->model, HR_TABLE_ITEM, "i1", 2);
        assert_int_equal(hr_model_attrs(app->model, HR_TABLE_ITEM, row, f), 4);
        uint32_t year = hr_model_ctx_row(app->model, "item:year", 9, NULL, 0);
        int numbers = 0;
        for (int i = 0; i < 4; i++) {
            double mult = f[i].row == year ? 3 : 1;
            numbers += f[i].row == year;
            assert_float_equal(f[i].x, mult * vi / div[1], 1e-6);
        }
        assert_int_equal(numbers, 1);
        hr_app_close(app, true);
    }
    /* the bounds and the choices */
    hr_config c;
    hr_error e;
    hr_config_defaults(&c);
    assert_int_equal(hr_config_set(&c, "attr_norm", "log", &e), HR_EINVAL);
    assert_int_equal(hr_config_set(&c, "attr_value_user", "11", &e), HR_EINVAL);
    assert_int_equal(hr_config_set(&c, "attr_value_item", "-1", &e), HR_EINVAL);
    hr_config_free(&c);
}

static void test_records_survive_a_restart(void **state)
{
    (void)state;
    char dir[512], db[600];
    snprintf(dir, sizeof dir, "%s/catalog-XXXXXX", tu_tmpdir());
    assert_non_null(mkdtemp(dir));
    snprintf(db, sizeof db, "%s/h.db", dir);
    hr_app *app = open_app(db);
    put(app->catalog, HR_CATALOG_ITEM, "i9", "{\"categories\":[\"a\"],\"hidden\":true}");
    put(app->catalog, HR_CATALOG_USER, "u9", "{\"features\":{\"age\":\"18-24\"}}");
    hr_catalog_record two[2];
    hr_error e;
    json_t *a = parse("{\"id\":\"b1\",\"categories\":[\"x\"]}"),
           *b = parse("{\"id\":\"b2\",\"features\":{\"k\":1}}");
    assert_int_equal(hr_catalog_parse(a, NULL, 0, &two[0], &e), HR_OK);
    assert_int_equal(hr_catalog_parse(b, NULL, 0, &two[1], &e), HR_OK);
    json_decref(a);
    json_decref(b);
    assert_int_equal(hr_catalog_put(app->catalog, HR_CATALOG_ITEM, two, 2, NULL, &e), HR_OK);
    hr_app_close(app, true);

    app = open_app(db);
    assert_int_equal(hr_catalog_count(app->catalog, HR_CATALOG_ITEM), 3);
    assert_int_equal(hr_catalog_count(app->catalog, HR_CATALOG_USER), 1);
    json_t *doc = hr_catalog_get(app->catalog, HR_CATALOG_ITEM, "i9", 2);
    assert_non_null(doc);
    assert_true(json_is_true(json_object_get(doc, "hidden")));
    json_decref(doc);
    assert_int_equal(attrs_of(app, HR_TABLE_USER, "u9"), 1);
    assert_int_equal(attrs_of(app, HR_TABLE_ITEM, "b2"), 1);
    hr_app_close(app, true);
    tu_rmtree(dir);
}

/* ---- HTTP ---- */

typedef struct {
    hr_app *app;
    hr_http *http;
    int port;
} server;

static void start(server *s, const char *token, const char *db, int64_t max_batch)
{
    hr_config c;
    tu_small_config(&c, db);
    c.max_batch_events = max_batch;
    strcpy(c.admin_token, token);
    hr_error e;
    assert_int_equal(hr_app_open(&c, &s->app, &e), HR_OK);
    assert_int_equal(hr_http_start(s->app, &s->http, &e), HR_OK);
    s->port = hr_http_port(s->http);
    hr_config_free(&c);
}

static void stop(server *s)
{
    hr_http_stop(s->http);
    hr_app_close(s->app, true);
}

static void test_http_routes(void **state)
{
    (void)state;
    server s;
    start(&s, "tok", "", 3);
    json_t *out = NULL;
    assert_int_equal(tu_http(s.port, "PUT", "/v1/items/i1",
                             "{\"categories\":[\"c1\"],\"features\":{\"f\":\"v\"}}", NULL, &out),
                     200);
    assert_true(json_is_true(json_object_get(out, "created")));
    json_decref(out);
    assert_int_equal(tu_http(s.port, "GET", "/v1/items/i1", NULL, NULL, &out), 200);
    assert_string_equal(json_string_value(json_object_get(out, "id")), "i1");
    json_decref(out);
    assert_int_equal(tu_http(s.port, "GET", "/v1/items/none", NULL, NULL, NULL), 404);
    assert_int_equal(tu_http(s.port, "PUT", "/v1/items/i1", "{\"hidden\":2}", NULL, &out), 400);
    assert_string_equal(json_string_value(json_object_get(json_object_get(out, "error"), "code")),
                        "invalid");
    json_decref(out);
    assert_int_equal(tu_http(s.port, "PUT", "/v1/items/i1", "{\"id\":\"i2\"}", NULL, NULL), 400);
    /* bulk: per-record errors, the valid ones stored */
    assert_int_equal(tu_http(s.port, "POST", "/v1/users",
                             "[{\"id\":\"u1\",\"features\":{\"g\":\"m\"}},{\"features\":{}},"
                             "{\"id\":\"u2\"}]",
                             NULL, &out),
                     200);
    assert_int_equal(json_integer_value(json_object_get(out, "accepted")), 2);
    assert_int_equal(json_integer_value(json_object_get(out, "rejected")), 1);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(json_object_get(out, "errors"), 0), "index")), 1);
    json_decref(out);
    assert_int_equal(tu_http(s.port, "POST", "/v1/users", "[{\"id\":1},{\"id\":2},{\"id\":3},{\"id\":4}]",
                             NULL, NULL),
                     400); /* more than max_batch_events */
    assert_int_equal(tu_http(s.port, "GET", "/v1/users/u2", NULL, NULL, NULL), 200);
    /* deleting an item needs no token, forgetting a user does */
    assert_int_equal(tu_http(s.port, "DELETE", "/v1/items/i1", NULL, NULL, NULL), 200);
    assert_int_equal(tu_http(s.port, "DELETE", "/v1/items/i1", NULL, NULL, NULL), 404);
    assert_int_equal(tu_http(s.port, "DELETE", "/v1/users/u1", NULL, NULL, NULL), 401);
    assert_int_equal(tu_http(s.port, "DELETE", "/v1/users/u1", NULL, "Bearer nope", NULL), 401);
    assert_int_equal(tu_http(s.port, "GET", "/v1/users/u1", NULL, NULL, NULL), 200);
    assert_int_equal(tu_http(s.port, "DELETE", "/v1/users/u1", NULL, "Bearer tok", &out), 200);
    assert_true(json_is_true(json_object_get(out, "record")));
    json_decref(out);
    assert_int_equal(tu_http(s.port, "GET", "/v1/users/u1", NULL, NULL, NULL), 404);
    assert_int_equal(tu_http(s.port, "POST", "/v1/items/i1", "{}", NULL, NULL), 405);
    stop(&s);

    /* no admin token configured: forgetting is not available */
    start(&s, "", "", 3);
    assert_int_equal(tu_http(s.port, "PUT", "/v1/users/u1", "{}", NULL, NULL), 200);
    assert_int_equal(tu_http(s.port, "DELETE", "/v1/users/u1", NULL, NULL, NULL), 404);
    assert_int_equal(tu_http(s.port, "GET", "/v1/users/u1", NULL, NULL, NULL), 200);
    stop(&s);
}

/* ---- filters ---- */

/* Top-K with an allow bitmap keeping one row in `every` (dense and sparse
 * paths) equals a brute-force ranking of the allowed rows, and returns only
 * allowed rows. */
static void check_filtered_topk(uint32_t every)
{
    hr_model *m = tu_small_model(16, 1000);
    char id[16];
    for (int i = 0; i < 1000; i++) {
        snprintf(id, sizeof id, "i%d", i);
        uint32_t row;
        assert_int_equal(hr_model_intern(m, HR_TABLE_ITEM, id, strlen(id), &row, NULL), HR_OK);
    }
    uint32_t rows = hr_model_rows(m, HR_TABLE_ITEM);
    uint64_t *allow = calloc((rows + 63) / 64, sizeof *allow);
    uint32_t count = 0;
    for (uint32_t r = 1; r < rows; r++)
        if (r % every == 3) {
            allow[r / 64] |= 1ull << (r % 64);
            count++;
        }
    uint32_t excluded_row = 3 + every; /* allowed, but named in the exclusions */
    hr_topk_exclude ex = {&excluded_row, 1, allow, rows, count};
    const hr_row_layout *L = hr_model_layout(m);
    float q[64];
    for (uint32_t d = 0; d < L->k; d++)
        q[d] = (float)((int)(d * 7 % 5) - 2) * 0.3f;
    enum { K = 20 };
    hr_topk_item got[K], want_storage[K];
    size_t n = 0;
    assert_int_equal(hr_topk_query(m, q, K, &ex, got, &n), HR_OK);
    hr_topk_heap hp;
    hr_topk_heap_init(&hp, want_storage, K);
    for (uint32_t r = 1; r < rows; r++) {
        if (r % every != 3 || r == excluded_row)
            continue;
        float sc;
        hr_sgd_block_scores_ref(L, hr_model_row(m, HR_TABLE_ITEM, r), 1, L->stride, q, &sc);
        hr_topk_heap_offer(&hp, r, sc);
    }
    uint32_t nw = hr_topk_heap_finish(&hp);
    assert_int_equal(n, nw);
    for (size_t i = 0; i < n; i++) {
        assert_true(got[i].row % every == 3 && got[i].row != excluded_row);
        assert_int_equal(got[i].row, want_storage[i].row);
        assert_true(fabsf(got[i].score - want_storage[i].score) < 1e-4f);
    }
    /* the reference scan agrees */
    hr_topk_item ref[K];
    size_t nr = 0;
    assert_int_equal(hr_topk_query_ref(m, q, K, &ex, ref, &nr), HR_OK);
    assert_int_equal(nr, n);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(ref[i].row, got[i].row);
    free(allow);
    hr_model_destroy(m);
}

static void test_topk_filter_dense_and_sparse(void **state)
{
    (void)state;
    check_filtered_topk(2);  /* keeps half: the sgemv scan */
    check_filtered_topk(50); /* keeps 2%: row by row */
}

static json_t *recommend(int port, const char *query)
{
    json_t *out = NULL;
    char path[512];
    snprintf(path, sizeof path, "/v1/recommend?%s", query);
    assert_int_equal(tu_http(port, "GET", path, NULL, NULL, &out), 200);
    return out;
}

/* The items of a recommendation, as one string "a,b,c" (sorted by the server). */
static bool all_items_in(const json_t *out, const char *const *allowed, size_t nallowed,
                         size_t *n)
{
    const json_t *items = json_object_get(out, "items");
    *n = json_array_size(items);
    for (size_t i = 0; i < *n; i++) {
        const char *id = json_string_value(json_object_get(json_array_get(items, i), "item"));
        bool ok = false;
        for (size_t j = 0; j < nallowed && !ok; j++)
            ok = strcmp(id, allowed[j]) == 0;
        if (!ok)
            return false;
    }
    return true;
}

static void test_recommend_filters(void **state)
{
    (void)state;
    server s;
    start(&s, "tok", "", 1000);
    /* items: a1 a2 (category a), b1 b2 (b), ab (both), h (a, hidden), x (a, expired) */
    assert_int_equal(tu_http(s.port, "POST", "/v1/items",
                             "[{\"id\":\"a1\",\"categories\":[\"a\"]},"
                             "{\"id\":\"a2\",\"categories\":[\"a\"]},"
                             "{\"id\":\"b1\",\"categories\":[\"b\"]},"
                             "{\"id\":\"b2\",\"categories\":[\"b\"]},"
                             "{\"id\":\"ab\",\"categories\":[\"a\",\"b\"]},"
                             "{\"id\":\"h\",\"categories\":[\"a\"],\"hidden\":true},"
                             "{\"id\":\"x\",\"categories\":[\"a\"],\"expires_at\":1000}]",
                             NULL, NULL),
                     200);
    /* clicks on every item (popularity) by u0..u4 */
    char body[4096];
    size_t len = 0;
    const char *all[] = {"a1", "a2", "b1", "b2", "ab", "h", "x"};
    len += (size_t)snprintf(body + len, sizeof body - len, "[");
    for (int u = 0; u < 5; u++)
        for (int i = 0; i < 7; i++)
            len += (size_t)snprintf(body + len, sizeof body - len, "%s{\"user\":\"u%d\",\"item\":\"%s\"}",
                                    len > 1 ? "," : "", u, all[i]);
    snprintf(body + len, sizeof body - len, "]");
    assert_int_equal(tu_http(s.port, "POST", "/v1/events", body, NULL, NULL), 202);
    hr_trainer_wait_idle(s.app->trainer);

    const char *visible[] = {"a1", "a2", "b1", "b2", "ab"};
    const char *in_a[] = {"a1", "a2", "ab"};
    const char *not_b[] = {"a1", "a2"};
    size_t n;
    /* a known user (no exclude_seen) and an unknown one (popular fallback) */
    const char *users[] = {"user=u0&exclude_seen=false", "user=nobody"};
    for (int u = 0; u < 2; u++) {
        char q[256];
        snprintf(q, sizeof q, "%s&k=20", users[u]);
        json_t *out = recommend(s.port, q);
        assert_true(all_items_in(out, visible, 5, &n));
        assert_int_equal(n, 5); /* never h (hidden) nor x (expired) */
        assert_int_equal(json_object_get(out, "fallback") != NULL, u == 1);
        json_decref(out);
        snprintf(q, sizeof q, "%s&k=20&categories=a", users[u]);
        out = recommend(s.port, q);
        assert_true(all_items_in(out, in_a, 3, &n));
        assert_int_equal(n, 3);
        json_decref(out);
        snprintf(q, sizeof q, "%s&k=20&categories=a&exclude_categories=b", users[u]);
        out = recommend(s.port, q);
        assert_true(all_items_in(out, not_b, 2, &n));
        assert_int_equal(n, 2);
        json_decref(out);
        snprintf(q, sizeof q, "%s&k=20&categories=nosuch,b", users[u]);
        out = recommend(s.port, q);
        assert_int_equal(json_array_size(json_object_get(out, "items")), 3); /* b1 b2 ab */
        json_decref(out);
        snprintf(q, sizeof q, "%s&k=20&categories=nosuch", users[u]);
        out = recommend(s.port, q);
        assert_int_equal(json_array_size(json_object_get(out, "items")), 0);
        json_decref(out);
    }
    /* un-hiding brings h back; bad filters are 400s */
    assert_int_equal(tu_http(s.port, "PUT", "/v1/items/h", "{\"categories\":[\"a\"]}", NULL, NULL),
                     200);
    json_t *out = recommend(s.port, "user=u0&exclude_seen=false&k=20&categories=a");
    assert_int_equal(json_array_size(json_object_get(out, "items")), 4);
    json_decref(out);
    assert_int_equal(tu_http(s.port, "GET", "/v1/recommend?user=u0&categories=a,,b", NULL, NULL,
                             NULL),
                     400);
    assert_int_equal(tu_http(s.port, "GET", "/v1/recommend?user=u0&categories=", NULL, NULL, NULL),
                     400);
    stop(&s);
}

/* ---- the model uses attributes ---- */

/* Women click romance and not action, men the reverse; a new user with a
 * known gender and no event scores through what was learned about it, and
 * is recommended accordingly (not the popular fallback). Without the
 * attributes both new users would score every item alike. */
static void test_new_user_scores_through_attributes(void **state)
{
    (void)state;
    server s;
    start(&s, "tok", "", 100000);
    char body[1 << 16];
    size_t len = (size_t)snprintf(body, sizeof body, "[");
    for (int i = 0; i < 10; i++)
        len += (size_t)snprintf(body + len, sizeof body - len,
                                "%s{\"id\":\"r%d\",\"categories\":[\"romance\"]},"
                                "{\"id\":\"a%d\",\"categories\":[\"action\"]}",
                                i ? "," : "", i, i);
    snprintf(body + len, sizeof body - len, "]");
    assert_int_equal(tu_http(s.port, "POST", "/v1/items", body, NULL, NULL), 200);
    len = (size_t)snprintf(body, sizeof body, "[");
    for (int u = 0; u < 60; u++)
        len += (size_t)snprintf(body + len, sizeof body - len,
                                "%s{\"id\":\"u%d\",\"features\":{\"gender\":\"%s\"}}", u ? "," : "",
                                u, u % 2 ? "F" : "M");
    len += (size_t)snprintf(body + len, sizeof body - len,
                            ",{\"id\":\"newF\",\"features\":{\"gender\":\"F\"}},"
                            "{\"id\":\"newM\",\"features\":{\"gender\":\"M\"}}]");
    assert_int_equal(tu_http(s.port, "POST", "/v1/users", body, NULL, NULL), 200);
    for (int round = 0; round < 30; round++) {
        len = (size_t)snprintf(body, sizeof body, "[");
        for (int u = 0; u < 60; u++)
            for (int i = 0; i < 2; i++) {
                bool f = u % 2, romance = i == 0;
                len += (size_t)snprintf(body + len, sizeof body - len,
                                        "%s{\"user\":\"u%d\",\"item\":\"%c%d\",\"label\":%d}",
                                        len > 1 ? "," : "", u, romance ? 'r' : 'a',
                                        (u + round) % 10, f == romance);
            }
        snprintf(body + len, sizeof body - len, "]");
        assert_int_equal(tu_http(s.port, "POST", "/v1/events", body, NULL, NULL), 202);
    }
    hr_trainer_wait_idle(s.app->trainer);
    json_t *out;
    double sc[2][2];
    const char *users[2] = {"newF", "newM"}, *items[2] = {"r3", "a3"};
    for (int u = 0; u < 2; u++)
        for (int i = 0; i < 2; i++) {
            char q[128];
            snprintf(q, sizeof q, "/v1/predict?user=%s&item=%s", users[u], items[i]);
            assert_int_equal(tu_http(s.port, "GET", q, NULL, NULL, &out), 200);
            sc[u][i] = json_real_value(json_object_get(out, "score"));
            json_decref(out);
        }
    assert_true(sc[0][0] > sc[0][1] + 0.05); /* newF: romance over action */
    assert_true(sc[1][1] > sc[1][0] + 0.05); /* newM: the reverse */
    out = recommend(s.port, "user=newF&k=5");
    assert_null(json_object_get(out, "fallback"));
    json_t *list = json_object_get(out, "items");
    assert_int_equal(json_array_size(list), 5);
    for (size_t i = 0; i < 5; i++)
        assert_int_equal(json_string_value(json_object_get(json_array_get(list, i), "item"))[0], 'r');
    json_decref(out);
    stop(&s);
}

/* ---- forgetting a user ---- */

/* Whether the bytes of needle occur in the file at path (absent: no). */
static bool file_holds(const char *path, const char *needle)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return false;
    size_t cap = 1 << 20, len = 0;
    char *buf = malloc(cap);
    assert_non_null(buf);
    size_t n;
    while ((n = fread(buf + len, 1, cap - len, f)) > 0) {
        len += n;
        if (len == cap) {
            cap *= 2;
            buf = realloc(buf, cap);
            assert_non_null(buf);
        }
    }
    fclose(f);
    bool found = memmem(buf, len, needle, strlen(needle)) != NULL;
    free(buf);
    return found;
}

static bool any_file_holds(const char *db, const char *needle)
{
    static const char *const suffix[] = {"", "-wal", "-events", "-events-wal", "-journal",
                                         "-events-journal"};
    char path[700];
    for (size_t i = 0; i < sizeof suffix / sizeof *suffix; i++) {
        snprintf(path, sizeof path, "%s%s", db, suffix[i]);
        if (file_holds(path, needle))
            return true;
    }
    return false;
}

static void post_events(int port, const char *user, int from, int n)
{
    char body[8192];
    size_t len = (size_t)snprintf(body, sizeof body, "[");
    for (int i = 0; i < n; i++)
        len += (size_t)snprintf(body + len, sizeof body - len,
                                "%s{\"user\":\"%s\",\"item\":\"it%d\",\"features\":{\"dev\":\"d\"}}",
                                i ? "," : "", user, from + i);
    snprintf(body + len, sizeof body - len, "]");
    assert_int_equal(tu_http(port, "POST", "/v1/events", body, NULL, NULL), 202);
}

static void test_forget_user_leaves_nothing_in_the_files(void **state)
{
    (void)state;
    const char *gone = "forget-me-7f3a9c", *kept = "keep-me-41d2b0";
    char dir[512], db[600];
    snprintf(dir, sizeof dir, "%s/forget-XXXXXX", tu_tmpdir());
    assert_non_null(mkdtemp(dir));
    snprintf(db, sizeof db, "%s/h.db", dir);
    server s;
    start(&s, "tok", db, 1000);
    char path[300];
    snprintf(path, sizeof path, "/v1/users/%s", gone);
    assert_int_equal(tu_http(s.port, "PUT", path, "{\"features\":{\"age\":\"25-34\"}}", NULL, NULL),
                     200);
    /* events of both users, a checkpoint (rows, recent items), then more
     * events that only the event log holds */
    post_events(s.port, gone, 0, 20);
    post_events(s.port, kept, 0, 20);
    hr_trainer_wait_idle(s.app->trainer);
    assert_int_equal(tu_http(s.port, "POST", "/v1/admin/checkpoint", NULL, "Bearer tok", NULL),
                     200);
    post_events(s.port, gone, 20, 10);
    post_events(s.port, kept, 20, 10);
    hr_trainer_wait_idle(s.app->trainer);
    assert_true(any_file_holds(db, gone)); /* the check below can see it */

    json_t *out = NULL;
    assert_int_equal(tu_http(s.port, "DELETE", path, NULL, "Bearer tok", &out), 200);
    assert_true(json_is_true(json_object_get(out, "record")));
    assert_true(json_is_true(json_object_get(out, "model")));
    assert_true(json_integer_value(json_object_get(out, "db_rows")) >= 12); /* 10 logged events,
                                                                              a row, a record */
    json_decref(out);
    /* gone from memory at once */
    assert_int_equal(hr_model_lookup(s.app->model, HR_TABLE_USER, gone, strlen(gone)), HR_ID_NONE);
    assert_int_equal(tu_http(s.port, "GET", path, NULL, NULL, NULL), 404);
    assert_false(any_file_holds(db, gone));
    stop(&s); /* a final checkpoint */
    assert_false(any_file_holds(db, gone));
    assert_true(any_file_holds(db, kept));

    /* a restart brings nothing of it back; the other user is intact */
    start(&s, "tok", db, 1000);
    assert_int_equal(hr_model_lookup(s.app->model, HR_TABLE_USER, gone, strlen(gone)), HR_ID_NONE);
    assert_int_not_equal(hr_model_lookup(s.app->model, HR_TABLE_USER, kept, strlen(kept)),
                         HR_ID_NONE);
    assert_int_equal(tu_http(s.port, "GET", path, NULL, NULL, NULL), 404);
    char q[200];
    snprintf(q, sizeof q, "/v1/user?user=%s", gone);
    assert_int_equal(tu_http(s.port, "GET", q, NULL, NULL, &out), 200);
    assert_true(json_is_false(json_object_get(out, "known")));
    assert_int_equal(json_array_size(json_object_get(out, "seen")), 0);
    json_decref(out);
    stop(&s);
    assert_false(any_file_holds(db, gone));
    tu_rmtree(dir);
}

/* ---- MovieLens with attributes (hogrec replay) ---- */

/* Runs HOGREC_BIN replay with args; the "test" object of its summary (new). */
static json_t *replay_test(const char *args)
{
    char cmd[12288];
    snprintf(cmd, sizeof cmd, "'%s' replay --db '' --threads 1 --binarize 4 %s 2>/dev/null",
             getenv("HOGREC_BIN"), args);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char out[8192];
    size_t n = fread(out, 1, sizeof out - 1, p);
    out[n] = 0;
    assert_int_equal(pclose(p), 0);
    json_t *v = json_loads(out, 0, NULL);
    assert_non_null(v);
    json_t *t = json_incref(json_object_get(v, "test"));
    json_decref(v);
    assert_non_null(t);
    return t;
}

static void test_movielens_attributes(void **state)
{
    (void)state;
    const char *need[] = {"ml-100k/u.data", "ml-100k/u.user", "ml-100k/u.item",
                          "ml-100k/u1.base", "ml-100k/u1.test"};
    char path[5][1024];
    for (int i = 0; i < 5; i++) {
        const char *p = tu_shared_data(need[i]);
        if (!p) {
            TU_SKIP("ml-100k (u.data, u.user, u.item, u1.*) not found under ../shared/data (or "
                    "$HOGREC_SHARED_DATA): attribute quality check skipped");
            return; /* skip() does not return; the compiler does not know it */
        }
        snprintf(path[i], sizeof path[i], "%s", p);
    }
    /* the time split: u.data by timestamp (stable), first 80% / last 20% */
    FILE *f = fopen(path[0], "r");
    assert_non_null(f);
    char **lines = calloc(100000, sizeof *lines);
    size_t n = 0;
    char buf[256];
    while (n < 100000 && fgets(buf, sizeof buf, f))
        lines[n++] = strdup(buf);
    fclose(f);
    assert_int_equal(n, 100000);
    long *ts = malloc(n * sizeof *ts);
    size_t *ord = malloc(n * sizeof *ord);
    for (size_t i = 0; i < n; i++) {
        sscanf(lines[i], "%*s %*s %*s %ld", &ts[i]);
        ord[i] = i;
    }
    /* stable merge sort of ord by ts (equal stamps keep the file's order) */
    size_t *tmp = malloc(n * sizeof *tmp);
    for (size_t w = 1; w < n; w *= 2)
        for (size_t lo = 0; lo < n; lo += 2 * w) {
            size_t mid = lo + w < n ? lo + w : n, hi = lo + 2 * w < n ? lo + 2 * w : n;
            size_t a = lo, b = mid, o = lo;
            while (a < mid || b < hi)
                tmp[o++] = b >= hi || (a < mid && ts[ord[a]] <= ts[ord[b]]) ? ord[a++] : ord[b++];
            memcpy(ord + lo, tmp + lo, (hi - lo) * sizeof *ord);
        }
    char dir[512], base[600], test[600];
    snprintf(dir, sizeof dir, "%s/ml-XXXXXX", tu_tmpdir());
    assert_non_null(mkdtemp(dir));
    snprintf(base, sizeof base, "%s/time.base", dir);
    snprintf(test, sizeof test, "%s/time.test", dir);
    FILE *fb = fopen(base, "w"), *ft = fopen(test, "w");
    for (size_t i = 0; i < n; i++)
        fputs(lines[ord[i]], i < 80000 ? fb : ft);
    fclose(fb);
    fclose(ft);
    for (size_t i = 0; i < n; i++)
        free(lines[i]);
    free(lines);
    free(ts);
    free(ord);
    free(tmp);

    char args[8192], attrs[2200];
    snprintf(attrs, sizeof attrs, "--users '%s' --items '%s'", path[1], path[2]);
    double auc[2][2], cold[2];
    size_t ncold[2];
    for (int a = 0; a < 2; a++) {
        snprintf(args, sizeof args, "%s --test '%s' '%s'", a ? attrs : "", test, base);
        json_t *t = replay_test(args);
        auc[0][a] = json_real_value(json_object_get(t, "auc"));
        cold[a] = json_real_value(json_object_get(t, "cold_user_auc"));
        ncold[a] = (size_t)json_integer_value(json_object_get(t, "cold_user_events"));
        json_decref(t);
        snprintf(args, sizeof args, "%s --test '%s' '%s'", a ? attrs : "", path[4], path[3]);
        t = replay_test(args);
        auc[1][a] = json_real_value(json_object_get(t, "auc"));
        json_decref(t);
    }
    print_message("ML-100K, one pass, binarize 4: time split AUC %.4f without attributes, %.4f "
                  "with; cold-user rows (%zu) %.4f / %.4f; u1 %.4f / %.4f\n",
                  auc[0][0], auc[0][1], ncold[0], cold[0], cold[1], auc[1][0], auc[1][1]);
    assert_int_equal(ncold[0], 17048); /* the count of rows of users unseen in training */
    assert_int_equal(ncold[1], 17048);
    /* the attributes must not make either split worse; u1 keeps its bar */
    assert_true(auc[0][1] >= auc[0][0] - 0.002);
    assert_true(cold[1] >= cold[0] - 0.002);
    assert_true(auc[1][1] >= auc[1][0] - 0.002);
    assert_true(auc[1][1] >= 0.78);
    tu_rmtree(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_validates),
        cmocka_unit_test(test_put_get_delete_and_attributes),
        cmocka_unit_test(test_attribute_values),
        cmocka_unit_test(test_records_survive_a_restart),
        cmocka_unit_test(test_http_routes),
        cmocka_unit_test(test_topk_filter_dense_and_sparse),
        cmocka_unit_test(test_recommend_filters),
        cmocka_unit_test(test_forget_user_leaves_nothing_in_the_files),
        cmocka_unit_test(test_new_user_scores_through_attributes),
        cmocka_unit_test(test_movielens_attributes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

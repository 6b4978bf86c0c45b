/*
 * test_recommend.c - tests of the recommend module (src/recommend.c): the
 * k best items for a user with final scores.
 *
 * A small model is trained on seeded random events through the events
 * module, then: every score returned for a known user equals the plain
 * formula link(w0 + b_u + <v_u, v_i> + b_i) computed in double from the
 * rows (and the model's own prediction of the pair), and the items are the
 * best by that formula, best first; named items and, with exclude_seen,
 * the user's recent items are left out; the topk batcher gives what the
 * single query gives; an unknown user gets the popular items, flagged, in
 * the order and with the scores hr_events_popular gives.
 */
/* ctest-labels: concurrent */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hogrec/app.h"
#include "hogrec/catalog.h"
#include "hogrec/recommend.h"
#include "hogrec/sgd.h"
#include "testutil.h"

enum { USERS = 12, ITEMS = 90, EVENTS = 600 };

static hr_app *trained_app(const char *loss)
{
    hr_config c;
    tu_small_config(&c, "");
    c.max_users = 64;
    c.max_items = 256;
    c.chunk_rows = 32; /* several item blocks */
    c.context_bits = 6;
    c.queue_capacity = EVENTS;
    c.history_per_user = 4;
    c.popular_half_life = 0;
    assert_int_equal(hr_config_set(&c, "loss", loss, NULL), HR_OK);
    hr_app *app = NULL;
    hr_error err = {{0}, {0}};
    hr_status st = hr_app_open(&c, &app, &err);
    hr_config_free(&c);
    if (st != HR_OK)
        fail_msg("hr_app_open: %s", err.message);
    bool squared = strcmp(loss, "squared") == 0;
    hr_rng rng;
    hr_rng_seed(&rng, 20261127);
    json_t *arr = json_array(), *errors = json_array();
    for (int i = 0; i < EVENTS; i++) {
        char u[16], it[16];
        snprintf(u, sizeof u, "u%u", (unsigned)(hr_rng_next(&rng) % USERS));
        snprintf(it, sizeof it, "i%u", (unsigned)(hr_rng_next(&rng) % ITEMS));
        json_t *o = json_pack("{s:s,s:s}", "user", u, "item", it);
        if (squared)
            json_object_set_new(o, "rating", json_real((double)(hr_rng_next(&rng) % 5) + 1));
        else
            json_object_set_new(o, "label", json_integer((json_int_t)(hr_rng_next(&rng) % 2)));
        json_array_append_new(arr, o);
    }
    hr_events_outcome out;
    hr_events_pending *p = NULL;
    assert_int_equal(hr_events_post(app->events, arr, errors, true, &out, &p, &err), HR_OK);
    assert_int_equal(out.accepted, EVENTS);
    json_decref(arr);
    json_decref(errors);
    hr_trainer_wait_idle(app->trainer);
    return app;
}

static uint32_t row_of(hr_app *app, hr_table_id t, const char *id)
{
    return hr_model_lookup(app->model, t, id, strlen(id));
}

/* The plain formula for user row u and item row i. */
static double plain_score(const hr_model *m, uint32_t u, uint32_t i)
{
    const hr_row_layout *L = hr_model_layout(m);
    float *g = malloc(L->floats * sizeof *g), *vu = malloc(L->floats * sizeof *vu),
          *vi = malloc(L->floats * sizeof *vi);
    hr_sgd_row_read(L, hr_model_row(m, HR_TABLE_GLOBAL, 0), g);
    hr_sgd_row_read(L, hr_model_row(m, HR_TABLE_USER, u), vu);
    hr_sgd_row_read(L, hr_model_row(m, HR_TABLE_ITEM, i), vi);
    double y = (double)g[L->bias] + vu[L->bias] + vi[L->bias];
    for (uint32_t d = 0; d < L->k; d++)
        y += (double)vu[d] * vi[d];
    free(g);
    free(vu);
    free(vi);
    return hr_model_get_config(m)->loss == HR_LOSS_SQUARED ? y : 1.0 / (1.0 + exp(-y));
}

static bool in(const uint32_t *rows, size_t n, uint32_t r)
{
    for (size_t i = 0; i < n; i++)
        if (rows[i] == r)
            return true;
    return false;
}

/* hr_recommend for user u against the plain formula over every item. */
static void check_user(hr_app *app, uint32_t u, uint32_t k, bool exclude_seen,
                       const uint32_t *exclude, size_t nexclude)
{
    const hr_model *m = app->model;
    hr_recommend_query q = {u, k, exclude_seen, exclude, nexclude, NULL, 0, 0};
    hr_recommend_item *out = calloc(k, sizeof *out);
    size_t n;
    bool fallback = true;
    assert_int_equal(hr_recommend(m, app->events, NULL, &q, out, &n, &fallback), HR_OK);
    assert_false(fallback);
    uint32_t recent[8];
    size_t nrecent = exclude_seen ? hr_events_recent(app->events, u, recent, 8) : 0;
    /* every eligible item by the plain formula */
    double *all = calloc(hr_model_rows(m, HR_TABLE_ITEM), sizeof *all);
    size_t eligible = 0;
    for (uint32_t i = 1; i < hr_model_rows(m, HR_TABLE_ITEM); i++) {
        all[i] = NAN;
        if (!hr_model_key(m, HR_TABLE_ITEM, i, NULL) || in(exclude, nexclude, i) ||
            in(recent, nrecent, i))
            continue;
        all[i] = plain_score(m, u, i);
        eligible++;
    }
    assert_int_equal(n, eligible < k ? eligible : k);
    for (size_t j = 0; j < n; j++) {
        uint32_t r = out[j].row;
        assert_false(isnan(all[r])); /* eligible: not excluded, not seen */
        assert_true(fabs(out[j].score - all[r]) <= 1e-5 * (1 + fabs(all[r])));
        hr_event ev = {.user = u, .item = r, .weight = 1};
        assert_true(fabs(out[j].score - hr_model_predict(m, &ev)) <= 1e-5 * (1 + fabs(all[r])));
        if (j > 0)
            assert_true(out[j - 1].score >= out[j].score);
    }
    /* no eligible item left out scores better (beyond rounding) */
    for (uint32_t i = 1; n > 0 && i < hr_model_rows(m, HR_TABLE_ITEM); i++) {
        bool returned = false;
        for (size_t t = 0; t < n; t++)
            returned |= out[t].row == i;
        if (!returned && !isnan(all[i]))
            assert_true(all[i] <= out[n - 1].score + 1e-5);
    }
    /* the batcher gives the same */
    hr_topk_batcher *b;
    assert_int_equal(hr_topk_batcher_create(m, 8, &b), HR_OK);
    hr_recommend_item *out2 = calloc(k, sizeof *out2);
    size_t n2;
    assert_int_equal(hr_recommend(m, app->events, b, &q, out2, &n2, &fallback), HR_OK);
    assert_int_equal(n2, n);
    for (size_t j = 0; j < n; j++) {
        assert_int_equal(out2[j].row, out[j].row);
        assert_true(out2[j].score == out[j].score);
    }
    hr_topk_batcher_destroy(b);
    free(out2);
    free(all);
    free(out);
}

static void run_known_users(const char *loss)
{
    hr_app *app = trained_app(loss);
    for (unsigned u = 0; u < USERS; u++) {
        char id[16];
        snprintf(id, sizeof id, "u%u", u);
        uint32_t row = row_of(app, HR_TABLE_USER, id);
        assert_int_not_equal(row, HR_ID_NONE);
        check_user(app, row, 10, true, NULL, 0);
        check_user(app, row, ITEMS + 5, true, NULL, 0); /* more than there are */
        check_user(app, row, 1, false, NULL, 0);
    }
    hr_app_close(app, true);
}

static void test_known_user_final_scores_logistic(void **state)
{
    (void)state;
    run_known_users("logistic");
}

static void test_known_user_final_scores_squared(void **state)
{
    (void)state;
    run_known_users("squared");
}

static void test_exclusions(void **state)
{
    (void)state;
    hr_app *app = trained_app("logistic");
    uint32_t u = row_of(app, HR_TABLE_USER, "u3");
    uint32_t recent[8];
    size_t nrecent = hr_events_recent(app->events, u, recent, 8);
    assert_true(nrecent > 0);
    /* every item asked for: the recent ones are there only without exclude_seen */
    hr_recommend_item *out = calloc(ITEMS, sizeof *out);
    size_t n;
    bool fallback;
    hr_recommend_query q = {u, ITEMS, true, NULL, 0, NULL, 0, 0};
    assert_int_equal(hr_recommend(app->model, app->events, NULL, &q, out, &n, &fallback), HR_OK);
    for (size_t j = 0; j < n; j++)
        assert_false(in(recent, nrecent, out[j].row));
    q.exclude_seen = false;
    assert_int_equal(hr_recommend(app->model, app->events, NULL, &q, out, &n, &fallback), HR_OK);
    for (size_t r = 0; r < nrecent; r++) {
        bool found = false;
        for (size_t j = 0; j < n; j++)
            found |= out[j].row == recent[r];
        assert_true(found);
    }
    /* named items, in any order, duplicates allowed */
    uint32_t named[3] = {out[2].row, out[0].row, out[2].row};
    check_user(app, u, 10, false, named, 3);
    check_user(app, u, 10, true, named, 3);
    free(out);
    hr_app_close(app, true);
}

static void test_unknown_user_gets_popular(void **state)
{
    (void)state;
    hr_app *app = trained_app("logistic");
    uint32_t named[1] = {row_of(app, HR_TABLE_ITEM, "i7")};
    hr_recommend_query q = {0, 5, true, named, 1, NULL, 0, 0};
    hr_recommend_item out[5];
    size_t n;
    bool fallback = false;
    assert_int_equal(hr_recommend(app->model, app->events, NULL, &q, out, &n, &fallback), HR_OK);
    assert_true(fallback);
    hr_topk_item want[5];
    hr_topk_exclude ex = {named, 1, NULL, 0, 0};
    size_t nw = hr_events_popular(app->events, 5, &ex, want);
    assert_int_equal(n, nw);
    assert_int_equal(n, 5);
    for (size_t j = 0; j < n; j++) {
        assert_int_equal(out[j].row, want[j].row);
        assert_true(out[j].score == (double)want[j].score);
        assert_int_not_equal(out[j].row, named[0]);
        /* popularity (half-life 0): a count of positive events */
        assert_true(out[j].score >= 1 && out[j].score == floor(out[j].score));
    }
    hr_app_close(app, true);
}

/* Writes an item's catalog record (JSON text) through the catalog. */
static void put_item(hr_app *app, const char *id, const char *record)
{
    json_error_t jerr;
    json_t *obj = json_loads(record, 0, &jerr);
    assert_non_null(obj);
    hr_catalog_record rec;
    hr_error err = {{0}, {0}};
    assert_int_equal(hr_catalog_parse(obj, id, strlen(id), &rec, &err), HR_OK);
    assert_int_equal(hr_catalog_put(app->catalog, HR_CATALOG_ITEM, &rec, 1, NULL, &err), HR_OK);
    json_decref(obj);
}

/* An item whose own row ranks it last for a user gets a catalog category
 * that the model weighs high: it is the user's first recommendation, every
 * score is the model's prediction, best first, and no item left out
 * predicts better (top-K ranks with the items' attributes, not only their
 * own rows); the batcher gives the same. */
static void test_item_attribute_ranks_item_first(void **state)
{
    (void)state;
    hr_app *app = trained_app("logistic");
    hr_model *m = app->model;
    const hr_row_layout *L = hr_model_layout(m);
    uint32_t u = row_of(app, HR_TABLE_USER, "u3");
    char id[16];
    for (unsigned i = 0; i < ITEMS; i += 3) { /* other items: a genre each */
        snprintf(id, sizeof id, "i%u", i);
        char rec[64];
        snprintf(rec, sizeof rec, "{\"features\": {\"genre\": \"g%u\"}}", i % 4);
        put_item(app, id, rec);
    }
    uint32_t worst = 0;
    double worst_p = INFINITY;
    for (unsigned i = 0; i < ITEMS; i++) {
        snprintf(id, sizeof id, "i%u", i);
        uint32_t r = row_of(app, HR_TABLE_ITEM, id);
        hr_event ev = {.user = u, .item = r, .weight = 1};
        double p = r != HR_ID_NONE && i % 3 ? hr_model_predict(m, &ev) : INFINITY;
        if (p < worst_p) {
            worst_p = p;
            worst = r;
        }
    }
    size_t len;
    const char *wid = hr_model_key(m, HR_TABLE_ITEM, worst, &len);
    snprintf(id, sizeof id, "%.*s", (int)len, wid);
    /* a category whose context row no genre shares (the table is hashed) */
    hr_feat f[HR_MAX_ATTRS];
    bool alone = false;
    for (int c = 0; c < 64 && !alone; c++) {
        char rec[64];
        snprintf(rec, sizeof rec, "{\"categories\": [\"staff-pick-%d\"]}", c);
        put_item(app, id, rec);
        assert_int_equal(hr_model_attrs(m, HR_TABLE_ITEM, worst, f), 1);
        alone = true;
        for (uint32_t r = 1; r < hr_model_rows(m, HR_TABLE_ITEM); r++) {
            hr_feat g[HR_MAX_ATTRS];
            uint32_t na = r == worst ? 0 : hr_model_attrs(m, HR_TABLE_ITEM, r, g);
            for (uint32_t a = 0; a < na; a++)
                alone &= g[a].row != f[0].row;
        }
    }
    assert_true(alone);
    /* the category's weight: +4 to the item's logit (x is the category's value) */
    float *row = calloc(L->floats, sizeof *row);
    hr_sgd_row_read(L, hr_model_row(m, HR_TABLE_CTX, f[0].row), row);
    row[L->bias] += 4.0f / f[0].x;
    hr_sgd_row_write(L, hr_model_row(m, HR_TABLE_CTX, f[0].row), row);
    free(row);

    hr_recommend_query q = {u, 5, false, NULL, 0, NULL, 0, 0};
    hr_recommend_item out[5], out2[5];
    size_t n, n2;
    bool fallback = true;
    assert_int_equal(hr_recommend(m, app->events, NULL, &q, out, &n, &fallback), HR_OK);
    assert_false(fallback);
    assert_int_equal(n, 5);
    assert_int_equal(out[0].row, worst);
    for (size_t j = 0; j < n; j++) {
        hr_event ev = {.user = u, .item = out[j].row, .weight = 1};
        assert_true(fabs(out[j].score - hr_model_predict(m, &ev)) <= 1e-6);
        if (j > 0)
            assert_true(out[j - 1].score >= out[j].score);
    }
    for (uint32_t r = 1; r < hr_model_rows(m, HR_TABLE_ITEM); r++) {
        bool returned = false;
        for (size_t j = 0; j < n; j++)
            returned |= out[j].row == r;
        hr_event ev = {.user = u, .item = r, .weight = 1};
        if (!returned && hr_model_key(m, HR_TABLE_ITEM, r, NULL))
            assert_true(hr_model_predict(m, &ev) <= out[n - 1].score + 1e-6);
    }
    hr_topk_batcher *b;
    assert_int_equal(hr_topk_batcher_create(m, 8, &b), HR_OK);
    assert_int_equal(hr_recommend(m, app->events, b, &q, out2, &n2, &fallback), HR_OK);
    assert_int_equal(n2, n);
    for (size_t j = 0; j < n; j++)
        assert_int_equal(out2[j].row, out[j].row);
    hr_topk_batcher_destroy(b);
    hr_app_close(app, true);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_known_user_final_scores_logistic),
        cmocka_unit_test(test_known_user_final_scores_squared),
        cmocka_unit_test(test_exclusions),
        cmocka_unit_test(test_unknown_user_gets_popular),
        cmocka_unit_test(test_item_attribute_ranks_item_first),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

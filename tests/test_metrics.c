/*
 * test_metrics.c - the one list of figures (HR_METRICS) against the two
 * answers rendered from it: every row that is in both /v1/stats and
 * /metrics is found in both, at its place, with its value, HELP and TYPE;
 * neither answer carries a figure that no row (or HR_METRICS_FAMILIES)
 * declares; no two rows share a JSON path, a Prometheus name or a field of
 * the snapshot. Then the per-route HTTP counters, and a snapshot gathered
 * from a real app.
 */
/* ctest-labels: concurrent */
#include "testutil.h"

#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hogrec/app.h"
#include "hogrec/metrics.h"

typedef enum { K_u64, K_f64, K_bool } kind;
typedef enum { BOTH, STATS, PROM } side;

typedef struct {
    side side;
    const char *section, *key; /* JSON place (NULL for PROM rows) */
    const char *name, *type, *help; /* Prometheus family (NULL for STATS rows) */
    kind kind;
} row;

#define ROW_BOTH(sec, key, name, type, help, kind, value) {BOTH, sec, key, name, #type, help, K_##kind},
#define ROW_STATS(sec, key, kind, value) {STATS, sec, key, NULL, NULL, NULL, K_##kind},
#define ROW_PROM(name, type, help, kind, value) {PROM, NULL, NULL, name, #type, help, K_##kind},
static const row rows[] = {HR_METRICS(ROW_BOTH, ROW_STATS, ROW_PROM)};
#define NROWS (sizeof rows / sizeof rows[0])

typedef struct {
    const char *name, *type;
} family_decl;

#define FAMILY_DECL(id, name, type, help) {name, #type},
static const family_decl families[] = {HR_METRICS_FAMILIES(FAMILY_DECL)};
#define NFAMILIES (sizeof families / sizeof families[0])

/* Gives every row's field a value of its own (row i: 1000 + i for integers,
 * i + 0.25 for reals, or f64 when it is NaN; true for flags) and records it
 * in expect[i]. */
static void set_values(hr_metrics_snapshot *s, double f64, double expect[NROWS])
{
    memset(s, 0, sizeof *s);
    size_t i = 0;
#define SET_u64(lv) (lv = 1000 + i, expect[i] = (double)(1000 + i))
#define SET_f64(lv) (lv = isnan(f64) ? f64 : (double)i + 0.25, expect[i] = lv)
#define SET_bool(lv) (lv = true, expect[i] = 1)
#define SET_BOTH(sec, key, name, type, help, kind, value) SET_##kind(value), i++;
#define SET_STATS(sec, key, kind, value) SET_##kind(value), i++;
#define SET_PROM(name, type, help, kind, value) SET_##kind(value), i++;
    HR_METRICS(SET_BOTH, SET_STATS, SET_PROM)
    assert_int_equal(i, NROWS);
}

/* Reads every row's field back, in row order. */
static void get_values(const hr_metrics_snapshot *s, double got[NROWS])
{
    size_t i = 0;
#define GET(value) got[i++] = (double)(value);
#define GET_BOTH(sec, key, name, type, help, kind, value) GET(value)
#define GET_STATS(sec, key, kind, value) GET(value)
#define GET_PROM(name, type, help, kind, value) GET(value)
    HR_METRICS(GET_BOTH, GET_STATS, GET_PROM)
}

/* The value at the dotted path section, then key; NULL when missing. */
static json_t *json_at(json_t *root, const char *section, const char *key)
{
    json_t *o = root;
    char path[128];
    snprintf(path, sizeof path, "%s", section);
    for (char *save = NULL, *part = strtok_r(path, ".", &save); o && part;
         part = strtok_r(NULL, ".", &save))
        o = json_object_get(o, part);
    return o ? json_object_get(o, key) : NULL;
}

/* The line of text that starts with prefix, as a new string; NULL if none. */
static char *line_starting(const char *text, const char *prefix)
{
    size_t n = strlen(prefix);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (strncmp(p, prefix, n) == 0) {
            const char *end = strchr(p, '\n');
            return strndup(p, end ? (size_t)(end - p) : strlen(p));
        }
    return NULL;
}

/* Checks the family of row r in the Prometheus text: HELP, TYPE, then one
 * sample whose value is want (NaN matches NaN). */
static void check_prom_row(const char *text, const row *r, double want)
{
    char head[1024];
    snprintf(head, sizeof head, "# HELP %s %s\n# TYPE %s %s\n%s ", r->name, r->help, r->name,
             r->type, r->name);
    const char *at = strstr(text, head);
    if (!at)
        fail_msg("/metrics has no family %s with its HELP and TYPE", r->name);
    double v = strtod(at + strlen(head), NULL);
    if (isnan(want))
        assert_true(isnan(v));
    else
        assert_true(v == want);
}

static void check_json_row(json_t *root, const row *r, double want)
{
    json_t *v = json_at(root, r->section, r->key);
    if (!v)
        fail_msg("/v1/stats has no %s.%s", r->section, r->key);
    switch (r->kind) {
    case K_u64:
        assert_true(json_is_integer(v));
        assert_true((double)json_integer_value(v) == want);
        break;
    case K_f64:
        if (isnan(want))
            assert_true(json_is_null(v));
        else
            assert_true(json_is_real(v) && json_real_value(v) == want);
        break;
    case K_bool:
        assert_true(json_is_boolean(v) && json_is_true(v) == (want != 0));
        break;
    }
}

/* Renders s both ways and checks every row where its side says. */
static void check_rows(const hr_metrics_snapshot *s, const double expect[NROWS])
{
    json_t *root = hr_metrics_json(s);
    assert_non_null(root);
    size_t len = 0;
    char *text = hr_metrics_prom(s, &len);
    assert_non_null(text);
    assert_int_equal(strlen(text), len);
    for (size_t i = 0; i < NROWS; i++) {
        if (rows[i].side != PROM)
            check_json_row(root, &rows[i], expect[i]);
        if (rows[i].side != STATS)
            check_prom_row(text, &rows[i], expect[i]);
    }
    free(text);
    json_decref(root);
}

static void test_every_row_in_its_answers(void **state)
{
    (void)state;
    hr_metrics_snapshot s;
    double expect[NROWS], got[NROWS];
    size_t both = 0;
    for (size_t i = 0; i < NROWS; i++)
        both += rows[i].side == BOTH;
    assert_true(both > 0);
    set_values(&s, 0.0, expect);
    /* each row reads its own field: no field is declared twice */
    get_values(&s, got);
    for (size_t i = 0; i < NROWS; i++)
        assert_true(got[i] == expect[i]);
    check_rows(&s, expect);
    /* reals that are not finite: JSON null, Prometheus NaN */
    set_values(&s, NAN, expect);
    check_rows(&s, expect);
}

static bool declared_prom(const char *name, const char **type)
{
    for (size_t i = 0; i < NROWS; i++)
        if (rows[i].name && strcmp(rows[i].name, name) == 0) {
            *type = rows[i].type;
            return true;
        }
    for (size_t i = 0; i < NFAMILIES; i++)
        if (strcmp(families[i].name, name) == 0) {
            *type = families[i].type;
            return true;
        }
    return false;
}

/* The family a sample belongs to: its name, or for a histogram or summary
 * its name without _bucket/_sum/_count. NULL when undeclared. */
static bool sample_declared(const char *sample)
{
    const char *type;
    if (declared_prom(sample, &type))
        return true;
    static const char *const suffixes[] = {"_bucket", "_sum", "_count"};
    for (size_t k = 0; k < 3; k++) {
        size_t n = strlen(sample), m = strlen(suffixes[k]);
        if (n > m && strcmp(sample + n - m, suffixes[k]) == 0) {
            char base[256];
            snprintf(base, sizeof base, "%.*s", (int)(n - m), sample);
            if (declared_prom(base, &type) &&
                (strcmp(type, "histogram") == 0 || strcmp(type, "summary") == 0))
                return true;
        }
    }
    return false;
}

static bool declared_json(const char *path)
{
    for (size_t i = 0; i < NROWS; i++) {
        if (rows[i].side == PROM)
            continue;
        char p[256];
        snprintf(p, sizeof p, "%s%s%s", rows[i].section, rows[i].section[0] ? "." : "",
                 rows[i].key);
        if (strcmp(p, path) == 0)
            return true;
    }
    return false;
}

/* Every leaf below o (at path) must be a row; objects that are one of the
 * snapshot's blobs (the same json_t) are other modules' and skipped. */
static void walk_json(json_t *o, const char *path, const hr_metrics_snapshot *s, size_t *leaves)
{
    if (o == s->schedule || o == s->checkpoint)
        return;
    if (!json_is_object(o)) {
        if (!declared_json(path))
            fail_msg("/v1/stats has %s, which no row of HR_METRICS declares", path);
        (*leaves)++;
        return;
    }
    const char *key;
    json_t *v;
    json_object_foreach(o, key, v) {
        char p[256];
        snprintf(p, sizeof p, "%s%s%s", path, path[0] ? "." : "", key);
        walk_json(v, p, s, leaves);
    }
}

static void test_nothing_outside_the_list(void **state)
{
    (void)state;
    /* rows are unique: one JSON place, one Prometheus name each */
    for (size_t i = 0; i < NROWS; i++)
        for (size_t j = i + 1; j < NROWS; j++) {
            if (rows[i].side != PROM && rows[j].side != PROM &&
                strcmp(rows[i].section, rows[j].section) == 0)
                assert_string_not_equal(rows[i].key, rows[j].key);
            if (rows[i].name && rows[j].name)
                assert_string_not_equal(rows[i].name, rows[j].name);
        }
    hr_metrics_snapshot s;
    double expect[NROWS];
    set_values(&s, 0.0, expect);
    s.schedule = json_pack("{s:i}", "version", 3);
    s.checkpoint = json_pack("{s:b}", "enabled", 0);
    static hr_metrics_route routes[2];
    memset(routes, 0, sizeof routes);
    routes[0].label = "a";
    routes[1].label = "b";
    hr_metrics_route_record(&routes[0], 200, 10);
    s.routes = routes;
    s.nroutes = 2;

    json_t *root = hr_metrics_json(&s);
    assert_non_null(root);
    size_t leaves = 0;
    walk_json(root, "", &s, &leaves);
    size_t json_rows = 0;
    for (size_t i = 0; i < NROWS; i++)
        json_rows += rows[i].side != PROM;
    assert_int_equal(leaves, json_rows);
    assert_ptr_equal(json_object_get(root, "schedule"), s.schedule);
    assert_ptr_equal(json_object_get(root, "checkpoint"), s.checkpoint);
    json_decref(root);

    size_t len = 0;
    char *text = hr_metrics_prom(&s, &len);
    assert_non_null(text);
    size_t helps = 0;
    for (char *save = NULL, *line = strtok_r(text, "\n", &save); line;
         line = strtok_r(NULL, "\n", &save)) {
        char name[256];
        const char *type;
        if (strncmp(line, "# HELP ", 7) == 0 || strncmp(line, "# TYPE ", 7) == 0) {
            assert_int_equal(sscanf(line + 7, "%255s", name), 1);
            if (!declared_prom(name, &type))
                fail_msg("/metrics has family %s, which no row or family declares", name);
            helps += line[2] == 'H';
            continue;
        }
        assert_int_equal(sscanf(line, "%255[^{ ]", name), 1);
        if (!sample_declared(name))
            fail_msg("/metrics has sample %s, which no row or family declares", name);
    }
    size_t prom_rows = 0;
    for (size_t i = 0; i < NROWS; i++)
        prom_rows += rows[i].side != STATS;
    assert_int_equal(helps, prom_rows + NFAMILIES); /* each family once */
    free(text);
    hr_metrics_snapshot_release(&s);
    assert_null(s.schedule);
    hr_metrics_snapshot_release(NULL);
}

static void test_route_counters(void **state)
{
    (void)state;
    static hr_metrics_route r[1];
    memset(r, 0, sizeof r);
    r[0].label = "predict";
    static const int statuses[] = {200, 202, 400, 404, 429, 503, 500};
    for (size_t i = 0; i < sizeof statuses / sizeof statuses[0]; i++)
        hr_metrics_route_record(&r[0], statuses[i], 3);
    assert_int_equal(atomic_load(&r[0].by_status[HR_METRICS_2XX]), 2);
    assert_int_equal(atomic_load(&r[0].by_status[HR_METRICS_4XX]), 2);
    assert_int_equal(atomic_load(&r[0].by_status[HR_METRICS_429]), 1);
    assert_int_equal(atomic_load(&r[0].by_status[HR_METRICS_5XX]), 2);
    hr_metrics_snapshot s;
    memset(&s, 0, sizeof s);
    s.routes = r;
    s.nroutes = 1;
    size_t len;
    char *text = hr_metrics_prom(&s, &len);
    assert_non_null(text);
    static const char *const want[] = {
        "hogrec_http_requests_total{route=\"predict\",status=\"2xx\"} 2",
        "hogrec_http_requests_total{route=\"predict\",status=\"4xx\"} 2",
        "hogrec_http_requests_total{route=\"predict\",status=\"429\"} 1",
        "hogrec_http_requests_total{route=\"predict\",status=\"5xx\"} 2",
        /* 3 us falls in [2, 4): every bucket from le=4e-06 on holds all 7 */
        "hogrec_http_request_duration_seconds_bucket{route=\"predict\",le=\"2e-06\"} 0",
        "hogrec_http_request_duration_seconds_bucket{route=\"predict\",le=\"4e-06\"} 7",
        "hogrec_http_request_duration_seconds_bucket{route=\"predict\",le=\"+Inf\"} 7",
        "hogrec_http_request_duration_seconds_count{route=\"predict\"} 7",
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        char *line = line_starting(text, want[i]);
        if (!line || strcmp(line, want[i]) != 0)
            fail_msg("/metrics lacks the line %s", want[i]);
        free(line);
    }
    /* the sum: 7 answers of 3 us */
    char *sum = line_starting(text, "hogrec_http_request_duration_seconds_sum{route=\"predict\"} ");
    assert_non_null(sum);
    assert_true(fabs(strtod(strchr(sum, ' ') + 1, NULL) - 21e-6) < 1e-12);
    free(sum);
    free(text);
}

/* A snapshot gathered from a running app: the parts it reads and the
 * scope's promise (the /metrics scope leaves the /v1/stats-only parts). */
static void test_gather_from_app(void **state)
{
    (void)state;
    hr_config c;
    hr_config_defaults(&c);
    c.db[0] = 0;
    c.k = 8;
    c.max_users = 1024;
    c.max_items = 1024;
    c.chunk_rows = 64;
    c.context_bits = 8;
    c.threads = 1;
    c.queue_capacity = 321;
    hr_app *app = NULL;
    hr_error e;
    assert_int_equal(hr_app_open(&c, &app, &e), HR_OK);
    hr_config_free(&c);

    hr_metrics_rate rate;
    hr_metrics_rate_init(&rate);
    hr_metrics_snapshot s;
    hr_metrics_gather(app, HR_METRICS_STATS, &rate, &s);
    assert_int_equal(s.queue.capacity, 321);
    assert_int_equal(s.model_k, 8);
    assert_int_equal(s.ready, 1);
    assert_int_equal(s.dedup.capacity, app->cfg.dedup_capacity);
    assert_non_null(s.schedule);
    assert_int_equal(json_integer_value(json_object_get(s.schedule, "version")),
                     s.schedule_version);
    assert_non_null(s.checkpoint);
    assert_true(json_is_false(json_object_get(s.checkpoint, "enabled")));
    json_t *root = hr_metrics_json(&s);
    assert_non_null(root);
    assert_int_equal(json_integer_value(json_at(root, "queue", "capacity")), 321);
    assert_true(json_is_null(json_at(root, "progressive.window", "loss"))); /* no event yet */
    json_decref(root);
    hr_metrics_snapshot_release(&s);

    hr_metrics_gather(app, HR_METRICS_PROM, &rate, &s);
    assert_int_equal(s.queue.capacity, 321);
    assert_null(s.schedule);
    assert_null(s.checkpoint);
    size_t len;
    char *text = hr_metrics_prom(&s, &len);
    assert_non_null(text);
    char *line = line_starting(text, "hogrec_queue_capacity ");
    assert_non_null(line);
    assert_string_equal(line, "hogrec_queue_capacity 321");
    free(line);
    free(text);
    hr_metrics_snapshot_release(&s);
    hr_metrics_rate_destroy(&rate);
    hr_app_close(app, false);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_row_in_its_answers),
        cmocka_unit_test(test_nothing_outside_the_list),
        cmocka_unit_test(test_route_counters),
        cmocka_unit_test(test_gather_from_app),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

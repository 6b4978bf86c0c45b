/* ctest-labels: concurrent */
/* ctest-separate: test_movielens_quality */
/*
 * test_replay.c - offline replay: reading both formats, ordering, the test
 * evaluation, the `hogrec replay` command end to end on a generated file,
 * and the out-of-the-box quality bar on MovieLens 100K when the shared data
 * is present (skipped, saying so, when it is not).
 */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hogrec/replay.h"

static hr_app *open_default_app(const char *loss)
{
    hr_config c;
    hr_config_defaults(&c);
    hr_error err;
    c.db[0] = 0;
    assert_int_equal(hr_config_set(&c, "loss", loss, &err), HR_OK);
    hr_app *app;
    if (hr_app_open(&c, &app, &err) != HR_OK)
        fail_msg("open: %s", err.message);
    hr_config_free(&c);
    return app;
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void test_read_formats_and_order(void **state)
{
    (void)state;
    const char *dir = tu_tmpdir();
    char ml[512], nd[512];
    snprintf(ml, sizeof ml, "%s/r.data", dir);
    snprintf(nd, sizeof nd, "%s/r.ndjson", dir);
    write_file(ml, "1\t10\t5\t300\n2\t20\t3\t100\n1\t20\t4\t200\n");
    write_file(nd, "{\"user\":1,\"item\":\"10\",\"label\":0,\"ts\":5,\"features\":{\"dev\":\"ios\"}}\n"
                   "\n{\"user\":\"2\",\"item\":20}\n");
    hr_app *app = open_default_app("logistic");
    hr_event_list l;
    hr_error err;
    assert_int_equal(hr_replay_read(app->model, ml, HR_FMT_MOVIELENS, 4, 1, &l, &err), HR_OK);
    assert_int_equal(l.n, 3);
    assert_true(l.ev[0].label == 1 && l.ev[1].label == 0 && l.ev[2].label == 1);
    hr_replay_order_events(&l, HR_ORDER_TIME, 1);
    assert_true(l.ev[0].ts == 100 && l.ev[1].ts == 200 && l.ev[2].ts == 300);
    uint32_t u1 = hr_model_lookup(app->model, HR_TABLE_USER, "1", 1);
    assert_int_equal(l.ev[2].user, u1);
    hr_event_list_free(&l);

    assert_int_equal(hr_replay_read(app->model, nd, HR_FMT_NDJSON, 0, 1, &l, &err), HR_OK);
    assert_int_equal(l.n, 2);
    assert_int_equal(l.ev[0].user, u1); /* integer 1 is the id "1" */
    assert_true(l.ev[0].label == 0 && l.ev[0].nctx == 1 && l.ev[1].label == 1);
    hr_event_list_free(&l);

    /* test data maps unknown ids to the default row and creates none */
    write_file(ml, "99\t10\t5\t1\n");
    uint32_t users = hr_model_id_count(app->model, HR_TABLE_USER);
    assert_int_equal(hr_replay_read(app->model, ml, HR_FMT_MOVIELENS, 4, 0, &l, &err), HR_OK);
    assert_int_equal(l.ev[0].user, 0);
    assert_int_equal(hr_model_id_count(app->model, HR_TABLE_USER), users);
    hr_event_list_free(&l);

    write_file(nd, "{\"user\":\"new\",\"item\":\"10\",\"label\":0,\"features\":{\"dev\":\"ios\"}}\n");
    uint32_t items = hr_model_id_count(app->model, HR_TABLE_ITEM);
    assert_int_equal(hr_replay_read(app->model, nd, HR_FMT_NDJSON, 0, 0, &l, &err), HR_OK);
    assert_int_equal(l.ev[0].user, 0); /* unknown: the default row */
    assert_int_equal(l.ev[0].item, hr_model_lookup(app->model, HR_TABLE_ITEM, "10", 2));
    assert_true(l.ev[0].label == 0 && l.ev[0].nctx == 1);
    assert_int_equal(hr_model_id_count(app->model, HR_TABLE_USER), users);
    assert_int_equal(hr_model_id_count(app->model, HR_TABLE_ITEM), items);
    hr_event_list_free(&l);

    write_file(ml, "1\t10\n");
    assert_int_equal(hr_replay_read(app->model, ml, HR_FMT_MOVIELENS, 4, 1, &l, &err), HR_EINVAL);
    assert_non_null(strstr(err.message, "line 1"));
    write_file(nd, "{\"user\":1}\n");
    assert_int_equal(hr_replay_read(app->model, nd, HR_FMT_NDJSON, 0, 1, &l, &err), HR_EINVAL);
    assert_string_equal(err.field, "item");
    hr_app_close(app, true);
    tu_rmtree(dir);
}

static void test_replay_command_end_to_end(void **state)
{
    (void)state;
    const char *bin = getenv("HOGREC_BIN");
    if (!bin)
        TU_SKIP("HOGREC_BIN not set (run under ctest)");
    const char *dir = tu_tmpdir();
    char data[512], cmd[2048];
    snprintf(data, sizeof data, "%s/synthetic.data", dir);
    FILE *f = fopen(data, "w");
    hr_rng rng;
    hr_rng_seed(&rng, 9);
    for (int e = 0; e < 5000; e++) {
        unsigned u = (unsigned)hr_rng_below(&rng, 50), i = (unsigned)hr_rng_below(&rng, 40);
        int rating = ((u % 2) == (i % 2)) ? 5 : 1; /* users like items of their parity */
        fprintf(f, "%u\t%u\t%d\t%d\n", u, i, rating, e);
    }
    fclose(f);
    snprintf(cmd, sizeof cmd, "'%s' replay --binarize 4 --passes 2 --test '%s' '%s' 2>/dev/null", bin, data, data);
    FILE *p = popen(cmd, "r");
    char out[4096] = {0};
    size_t n = fread(out, 1, sizeof out - 1, p);
    assert_int_equal(pclose(p), 0);
    assert_true(n > 0);
    json_error_t jerr;
    json_t *j = json_loads(out, 0, &jerr);
    assert_non_null(j);
    assert_int_equal(json_integer_value(json_object_get(j, "events")), 10000);
    assert_int_equal(json_integer_value(json_object_get(j, "passes")), 2);
    double auc = json_number_value(json_object_get(json_object_get(j, "test"), "auc"));
    assert_true(auc > 0.95); /* the parity rule is learnable */
    json_decref(j);
    tu_rmtree(dir);
}

static void test_movielens_quality(void **state)
{
    (void)state;
    const char *base = tu_shared_data("ml-100k/u1.base");
    if (!base)
        TU_SKIP("ml-100k/u1.base not found under ../shared/data (or $HOGREC_SHARED_DATA): "
                "quality check skipped");
    char base_path[4096], test_path[4096];
    snprintf(base_path, sizeof base_path, "%s", base);
    snprintf(test_path, sizeof test_path, "%s", tu_shared_data("ml-100k/u1.test"));
    hr_app *app = open_default_app("logistic");
    hr_event_list train, test;
    hr_error err;
    assert_int_equal(hr_replay_read(app->model, base_path, HR_FMT_MOVIELENS, 4, 1, &train, &err), HR_OK);
    hr_replay_order_events(&train, HR_ORDER_TIME, 0);
    uint64_t seq;
    for (size_t i = 0; i < train.n; i += 1024) {
        size_t n = train.n - i < 1024 ? train.n - i : 1024;
        assert_int_equal(hr_ingest_submit(app->ingest, train.ev + i, NULL, NULL, n, true, &seq, &err), HR_OK);
    }
    hr_trainer_wait_idle(app->trainer);
    assert_int_equal(hr_replay_read(app->model, test_path, HR_FMT_MOVIELENS, 4, 0, &test, &err), HR_OK);
    hr_eval ev;
    hr_replay_evaluate(app->model, &test, &ev);
    print_message("ML-100K u1, one pass in time order, default config: test AUC %.4f logloss %.4f\n",
                  ev.auc, ev.logloss);
    assert_true(ev.auc >= 0.78); /* the bar for the default config */
    hr_event_list_free(&train);
    hr_event_list_free(&test);
    hr_app_close(app, true);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_read_formats_and_order),
        cmocka_unit_test(test_replay_command_end_to_end),
        cmocka_unit_test(test_movielens_quality),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

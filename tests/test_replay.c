/* ctest-labels: concurrent */
/* ctest-separate: test_movielens_quality */
/*
 * test_replay.c - offline replay: reading both formats, ordering, bad lines
 * skipped and counted (or fatal with --strict), the test evaluation, the
 * `hogrec replay` command end to end on generated files (its summary, its
 * progress line, its --help), and the out-of-the-box quality bar on
 * MovieLens 100K when the shared data is present (skipped, saying so, when
 * it is not).
 */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

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
    assert_int_equal(hr_replay_read(app->model, ml, HR_FMT_MOVIELENS, 4, 1, true, NULL, &l, &err), HR_OK);
    assert_int_equal(l.n, 3);
    assert_true(l.ev[0].label == 1 && l.ev[1].label == 0 && l.ev[2].label == 1);
    hr_replay_order_events(&l, HR_ORDER_TIME, 1);
    assert_true(l.ev[0].ts == 100 && l.ev[1].ts == 200 && l.ev[2].ts == 300);
    uint32_t u1 = hr_model_lookup(app->model, HR_TABLE_USER, "1", 1);
    assert_int_equal(l.ev[2].user, u1);
    hr_event_list_free(&l);

    assert_int_equal(hr_replay_read(app->model, nd, HR_FMT_NDJSON, 0, 1, true, NULL, &l, &err), HR_OK);
    assert_int_equal(l.n, 2);
    assert_int_equal(l.ev[0].user, u1); /* integer 1 is the id "1" */
    assert_true(l.ev[0].label == 0 && l.ev[0].nctx == 1 && l.ev[1].label == 1);
    hr_event_list_free(&l);

    /* test data maps unknown ids to the default row and creates none */
    write_file(ml, "99\t10\t5\t1\n");
    uint32_t users = hr_model_id_count(app->model, HR_TABLE_USER);
    assert_int_equal(hr_replay_read(app->model, ml, HR_FMT_MOVIELENS, 4, 0, true, NULL, &l, &err), HR_OK);
    assert_int_equal(l.ev[0].user, 0);
    assert_int_equal(hr_model_id_count(app->model, HR_TABLE_USER), users);
    hr_event_list_free(&l);

    write_file(nd, "{\"user\":\"new\",\"item\":\"10\",\"label\":0,\"features\":{\"dev\":\"ios\"}}\n");
    uint32_t items = hr_model_id_count(app->model, HR_TABLE_ITEM);
    assert_int_equal(hr_replay_read(app->model, nd, HR_FMT_NDJSON, 0, 0, true, NULL, &l, &err), HR_OK);
    assert_int_equal(l.ev[0].user, 0); /* unknown: the default row */
    assert_int_equal(l.ev[0].item, hr_model_lookup(app->model, HR_TABLE_ITEM, "10", 2));
    assert_true(l.ev[0].label == 0 && l.ev[0].nctx == 1);
    assert_int_equal(hr_model_id_count(app->model, HR_TABLE_USER), users);
    assert_int_equal(hr_model_id_count(app->model, HR_TABLE_ITEM), items);
    hr_event_list_free(&l);

    write_file(ml, "1\t10\n");
    assert_int_equal(hr_replay_read(app->model, ml, HR_FMT_MOVIELENS, 4, 1, true, NULL, &l, &err), HR_EINVAL);
    assert_non_null(strstr(err.message, "line 1"));
    write_file(nd, "{\"user\":1}\n");
    assert_int_equal(hr_replay_read(app->model, nd, HR_FMT_NDJSON, 0, 1, true, NULL, &l, &err), HR_EINVAL);
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

static void test_read_skips_bad_lines(void **state)
{
    (void)state;
    const char *dir = tu_tmpdir();
    char nd[512], ml[512];
    snprintf(nd, sizeof nd, "%s/bad.ndjson", dir);
    snprintf(ml, sizeof ml, "%s/bad.data", dir);
    write_file(nd, "{\"user\":\"a\",\"item\":\"x\"}\n"
                   "{\"user\":\"b\",\"item\":\n"            /* not JSON */
                   "{\"user\":\"c\"}\n"                      /* no item */
                   "{\"user\":\"d\",\"item\":\"y\",\"label\":7}\n" /* bad label */
                   "{\"user\":\"a\",\"item\":\"y\",\"label\":0}\n");
    write_file(ml, "1\t10\t5\t1\n1\t10\n2\t20\tfive\t3\n2\t20\t3\t4\n");
    hr_app *app = open_default_app("logistic");
    hr_event_list l;
    hr_replay_skips sk;
    hr_error err;
    assert_int_equal(hr_replay_read(app->model, nd, HR_FMT_NDJSON, 0, 1, false, &sk, &l, &err), HR_OK);
    assert_int_equal(l.n, 2);
    assert_int_equal(sk.lines, 3);
    assert_non_null(strstr(sk.first.message, "line 2"));
    assert_true(l.ev[0].label == 1 && l.ev[1].label == 0);
    /* the bad lines created no ids */
    assert_int_equal(hr_model_lookup(app->model, HR_TABLE_USER, "b", 1), HR_ID_NONE);
    assert_int_equal(hr_model_lookup(app->model, HR_TABLE_USER, "c", 1), HR_ID_NONE);
    assert_int_equal(hr_model_lookup(app->model, HR_TABLE_USER, "d", 1), HR_ID_NONE);
    hr_event_list_free(&l);

    /* strict: the first bad line is the error, nothing is returned */
    assert_int_equal(hr_replay_read(app->model, nd, HR_FMT_NDJSON, 0, 1, true, &sk, &l, &err), HR_EINVAL);
    assert_non_null(strstr(err.message, "line 2"));
    assert_int_equal(l.n, 0);
    assert_null(l.ev);

    assert_int_equal(hr_replay_read(app->model, ml, HR_FMT_MOVIELENS, 4, 1, false, &sk, &l, &err), HR_OK);
    assert_int_equal(l.n, 2);
    assert_int_equal(sk.lines, 2);
    assert_non_null(strstr(sk.first.message, "line 2"));
    hr_event_list_free(&l);
    assert_int_equal(hr_replay_read(app->model, ml, HR_FMT_MOVIELENS, 4, 1, true, NULL, &l, &err), HR_EINVAL);
    hr_app_close(app, true);
    tu_rmtree(dir);
}

/* Runs `hogrec replay ARGS` (args already quoted), stdout into out, stderr
 * into err_path; returns the exit status. */
static int run_replay(const char *args, const char *err_path, char *out, size_t cap)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "'%s' replay %s 2>'%s'", getenv("HOGREC_BIN"), args, err_path);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = 0;
    int rc = pclose(p);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

/* The last line of a file that starts with prefix, or "" (static buffer). */
static const char *last_line(const char *path, const char *prefix)
{
    static char last[1024];
    char line[1024];
    last[0] = 0;
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    while (fgets(line, sizeof line, f))
        if (strncmp(line, prefix, strlen(prefix)) == 0)
            snprintf(last, sizeof last, "%s", line);
    fclose(f);
    return last;
}

static void test_replay_command_bad_lines_and_rmse(void **state)
{
    (void)state;
    if (!getenv("HOGREC_BIN"))
        TU_SKIP("HOGREC_BIN not set (run under ctest)");
    const char *dir = tu_tmpdir();
    char data[512], errf[512], args[2048], out[8192];
    snprintf(data, sizeof data, "%s/ratings.ndjson", dir);
    snprintf(errf, sizeof errf, "%s/stderr", dir);
    FILE *f = fopen(data, "w");
    assert_non_null(f);
    hr_rng rng;
    hr_rng_seed(&rng, 11);
    for (int e = 0; e < 3000; e++) {
        unsigned u = (unsigned)hr_rng_below(&rng, 40), i = (unsigned)hr_rng_below(&rng, 30);
        fprintf(f, "{\"user\":%u,\"item\":%u,\"rating\":%d,\"ts\":%d}\n", u, i,
                (u % 2) == (i % 2) ? 5 : 2, e);
        if (e == 100)
            fputs("{\"user\":1,\"item\":\n", f); /* a truncated line */
        if (e == 200)
            fputs("{\"user\":1,\"item\":2,\"label\":1}\n", f); /* label in a ratings file */
    }
    fclose(f);

    /* default: both bad lines skipped, counted, reported */
    snprintf(args, sizeof args, "--loss squared --threads 1 '%s'", data);
    assert_int_equal(run_replay(args, errf, out, sizeof out), 0);
    json_error_t jerr;
    json_t *j = json_loads(out, 0, &jerr);
    if (!j)
        fail_msg("not JSON: %s (%s)", out, jerr.text);
    assert_int_equal(json_integer_value(json_object_get(j, "events")), 3000);
    assert_int_equal(json_integer_value(json_object_get(j, "skipped_lines")), 2);
    assert_non_null(strstr(last_line(errf, "hogrec replay:"), "skipped 2 bad lines"));

    /* the progress line shows the RMSE of the JSON */
    const char *line = last_line(errf, "replay: ");
    const char *at = strstr(line, " rmse ");
    if (!at)
        fail_msg("no rmse in the progress line: %s", line);
    double printed = strtod(at + 6, NULL);
    double rmse = json_number_value(json_object_get(json_object_get(j, "progressive"), "rmse"));
    print_message("progress line rmse %.4f, JSON rmse %.6f\n", printed, rmse);
    assert_true(rmse > 0);
    assert_true(fabs(printed - rmse) <= 0.00005 + 1e-12);
    json_decref(j);

    /* --strict: the first bad line stops the replay, naming the line */
    snprintf(args, sizeof args, "--loss squared --strict '%s'", data);
    assert_int_equal(run_replay(args, errf, out, sizeof out), 2);
    assert_string_equal(out, "");
    assert_non_null(strstr(last_line(errf, "hogrec replay:"), "line 102"));
    tu_rmtree(dir);
}

static void test_replay_help_lists_replay_options(void **state)
{
    (void)state;
    if (!getenv("HOGREC_BIN"))
        TU_SKIP("HOGREC_BIN not set (run under ctest)");
    const char *dir = tu_tmpdir();
    char errf[512], out[16384];
    snprintf(errf, sizeof errf, "%s/stderr", dir);
    assert_int_equal(run_replay("--help", errf, out, sizeof out), 0);
    const char *want[] = {"--k ", "--loss ", "--threads ", "--schedule ", "--passes ", "--test ",
                          "--strict ", "--db " /* its lock only */};
    for (size_t i = 0; i < sizeof want / sizeof *want; i++)
        if (!strstr(out, want[i]))
            fail_msg("replay --help lacks %s:\n%s", want[i], out);
    const char *serve_only[] = {"--port ", "--bind ", "--admin-token ",
                                "--checkpoint-interval ", "--max-body-bytes "};
    for (size_t i = 0; i < sizeof serve_only / sizeof *serve_only; i++)
        if (strstr(out, serve_only[i]))
            fail_msg("replay --help lists the serve option %s", serve_only[i]);
    /* a serve option given to replay is refused, saying why */
    assert_int_equal(run_replay("--port 9 x.ndjson", errf, out, sizeof out), 2);
    assert_non_null(strstr(last_line(errf, "hogrec replay:"), "does not apply to replay"));
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
    assert_int_equal(hr_replay_read(app->model, base_path, HR_FMT_MOVIELENS, 4, 1, true, NULL, &train, &err), HR_OK);
    hr_replay_order_events(&train, HR_ORDER_TIME, 0);
    uint64_t seq;
    for (size_t i = 0; i < train.n; i += 1024) {
        size_t n = train.n - i < 1024 ? train.n - i : 1024;
        assert_int_equal(hr_ingest_submit(app->ingest, train.ev + i, NULL, NULL, n, true, &seq, &err), HR_OK);
    }
    hr_trainer_wait_idle(app->trainer);
    assert_int_equal(hr_replay_read(app->model, test_path, HR_FMT_MOVIELENS, 4, 0, true, NULL, &test, &err), HR_OK);
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
        cmocka_unit_test(test_read_skips_bad_lines),
        cmocka_unit_test(test_replay_command_end_to_end),
        cmocka_unit_test(test_replay_command_bad_lines_and_rmse),
        cmocka_unit_test(test_replay_help_lists_replay_options),
        cmocka_unit_test(test_movielens_quality),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * test_config.c - the options table: defaults valid, bounds enforced, the
 * file, environment and flags in their order of precedence, unknown names
 * refused, each command's --help and flags limited to its options, choice
 * options parsed once into enums (an unknown value refused the same way from
 * the file, the environment, a flag or a command's own flag).
 */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hogrec/app.h"
#include "hogrec/config.h"
#include "hogrec/sgd.h"

static void test_defaults_and_bounds(void **state)
{
    (void)state;
    hr_config c;
    hr_config_defaults(&c);
    assert_int_equal(c.k, 16);
    assert_string_equal(c.bind, "127.0.0.1");
    assert_int_equal(c.durability, HR_CONFIG_DURABILITY_SYNC);
    hr_error err;
    assert_int_equal(hr_config_set(&c, "k", "0", &err), HR_EINVAL);
    assert_string_equal(err.field, "k");
    assert_int_equal(hr_config_set(&c, "k", "2.5", &err), HR_EINVAL);
    assert_int_equal(hr_config_set(&c, "loss", "hinge", &err), HR_EINVAL);
    assert_int_equal(hr_config_set(&c, "nope", "1", &err), HR_EINVAL);
    assert_int_equal(hr_config_set(&c, "grad_clip", "nan", &err), HR_EINVAL);
    assert_int_equal(hr_config_set(&c, "k", "64", &err), HR_OK);
    assert_int_equal(c.k, 64);
    assert_int_equal(hr_config_set(&c, "schedule", "[1]", &err), HR_EINVAL);
    hr_config_free(&c);
}

static void test_precedence_file_env_flags(void **state)
{
    (void)state;
    const char *dir = tu_tmpdir();
    char path[512];
    snprintf(path, sizeof path, "%s/c.json", dir);
    FILE *f = fopen(path, "w");
    fputs("{\"k\": 24, \"port\": 9000, \"threads\": 3, \"schedule\": {\"type\":\"constant\",\"eta0\":0.1}}", f);
    fclose(f);
    setenv("HOGREC_PORT", "9001", 1);
    setenv("HOGREC_THREADS", "4", 1);
    char arg_config[600];
    snprintf(arg_config, sizeof arg_config, "--config=%s", path);
    char *argv[] = {arg_config, "--threads", "5", "--extra-thing", "x", "FILE"};
    hr_extra_flag extra[] = {{.name = "extra_thing", .help = "test"}};
    hr_config c;
    hr_error err;
    const char *pos[2];
    int npos;
    bool help;
    assert_int_equal(hr_config_from_args(&c, 6, argv, NULL, extra, 1, pos, 2, &npos, &help, &err), HR_OK);
    assert_int_equal(c.k, 24);       /* file */
    assert_int_equal(c.port, 9001);  /* env over file */
    assert_int_equal(c.threads, 5);  /* flag over env */
    assert_non_null(c.schedule);
    assert_string_equal(extra[0].value, "x");
    assert_int_equal(npos, 1);
    assert_string_equal(pos[0], "FILE");
    hr_config_free(&c);
    unsetenv("HOGREC_PORT");
    unsetenv("HOGREC_THREADS");

    f = fopen(path, "w");
    fputs("{\"kk\": 1}", f);
    fclose(f);
    char *argv2[] = {arg_config};
    assert_int_equal(hr_config_from_args(&c, 1, argv2, NULL, NULL, 0, pos, 2, &npos, &help, &err), HR_EINVAL);
    assert_string_equal(err.field, "kk");
    hr_config_free(&c);
    char *argv3[] = {"--bogus", "1"};
    assert_int_equal(hr_config_from_args(&c, 2, argv3, NULL, NULL, 0, pos, 2, &npos, &help, &err), HR_EINVAL);
    hr_config_free(&c);
    tu_rmtree(dir);
}

static void test_load_text(void **state)
{
    (void)state;
    hr_config c;
    hr_error err;
    hr_config_defaults(&c);
    /* only the first len bytes are read; "_" keys are comments */
    const char *text = "{\"k\": 8, \"_note\": [1], \"loss\": \"squared\"}garbage";
    assert_int_equal(hr_config_load_text(&c, text, strlen(text) - 7, "t", &err), HR_OK);
    assert_int_equal(c.k, 8);
    assert_int_equal(c.loss, HR_LOSS_SQUARED);
    struct {
        const char *text, *field, *says;
    } bad[] = {
        {"{\"k\": 0}", "k", "must be in"},
        {"{\"k\": true}", "k", "wrong JSON type"},
        {"{\"k\": 1, \"k\": 2}", "config", "duplicate"},
        {"[1]", "config", "must be a JSON object"},
        {"{\"schedule\": 1}", "schedule", "JSON object"},
        {"", "config", "t:"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        assert_int_equal(hr_config_load_text(&c, bad[i].text, strlen(bad[i].text), "t", &err),
                         HR_EINVAL);
        assert_string_equal(err.field, bad[i].field);
        assert_non_null(strstr(err.message, bad[i].says));
    }
    assert_int_equal(c.k, 8); /* refused values change nothing */
    hr_config_free(&c);
}

static void test_help_lists_every_option(void **state)
{
    (void)state;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    hr_config_print_help(f, NULL, 0);
    fclose(f);
    const char *names[] = {"--k ", "--threads ", "--port ", "--db ", "--admin-token ", "--schedule "};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        assert_non_null(strstr(buf, names[i]));
    free(buf);
    hr_config c;
    hr_config_defaults(&c);
    json_t *j = hr_config_to_json(&c);
    assert_string_equal(json_string_value(json_object_get(j, "admin_token")), "");
    json_decref(j);
}

static char *help_text(hr_command cmd, const hr_extra_flag *extra, int nextra)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(f);
    hr_config_print_command_help(f, cmd, extra, nextra);
    fclose(f);
    return buf;
}

static void test_options_per_command(void **state)
{
    (void)state;
    hr_extra_flag extra[] = {{.name = "passes", .help = "replay: passes"},
                             {.name = "strict", .help = "replay: stop at a bad line", .is_switch = true}};
    char *serve = help_text(HR_CMD_SERVE, NULL, 0);
    char *replay = help_text(HR_CMD_REPLAY, extra, 2);
    const char *both[] = {"--k ", "--loss ", "--threads ", "--schedule ", "--seed ", "--config "};
    const char *serve_only[] = {"--port ", "--bind ", "--admin-token ",
                                "--durability ", "--max-body-bytes ", "--http-threads "};
    for (size_t i = 0; i < HR_ARRAY_LEN(both); i++) {
        assert_non_null(strstr(serve, both[i]));
        assert_non_null(strstr(replay, both[i]));
    }
    for (size_t i = 0; i < HR_ARRAY_LEN(serve_only); i++) {
        assert_non_null(strstr(serve, serve_only[i]));
        if (strstr(replay, serve_only[i]))
            fail_msg("replay help lists the serve option %s", serve_only[i]);
    }
    assert_non_null(strstr(replay, "--passes "));
    assert_non_null(strstr(replay, "--strict "));
    free(serve);
    free(replay);

    /* a serve flag is refused by replay, naming it; serve takes it */
    hr_config c;
    hr_error err;
    const char *pos[2];
    int npos;
    bool help;
    char *argv1[] = {"--port", "9", "FILE"};
    assert_int_equal(hr_config_from_command_args(&c, HR_CMD_REPLAY, 3, argv1, NULL, NULL, 0, pos,
                                                 2, &npos, &help, &err), HR_EINVAL);
    assert_string_equal(err.field, "port");
    assert_non_null(strstr(err.message, "replay"));
    hr_config_free(&c);
    assert_int_equal(hr_config_from_command_args(&c, HR_CMD_SERVE, 3, argv1, NULL, NULL, 0, pos,
                                                 2, &npos, &help, &err), HR_OK);
    assert_int_equal(c.port, 9);
    hr_config_free(&c);
    /* in the environment (one setting for every command) it is accepted */
    setenv("HOGREC_PORT", "9002", 1);
    char *argv2[] = {"--k", "8", "FILE"};
    assert_int_equal(hr_config_from_command_args(&c, HR_CMD_REPLAY, 3, argv2, NULL, NULL, 0, pos,
                                                 2, &npos, &help, &err), HR_OK);
    assert_int_equal(c.k, 8);
    hr_config_free(&c);
    unsetenv("HOGREC_PORT");

    /* a switch takes no value: the next argument stays positional */
    char *argv3[] = {"--strict", "FILE", "--passes", "3"};
    extra[0].value = extra[1].value = NULL;
    assert_int_equal(hr_config_from_command_args(&c, HR_CMD_REPLAY, 4, argv3, NULL, extra, 2, pos,
                                                 2, &npos, &help, &err), HR_OK);
    assert_non_null(extra[1].value);
    assert_string_equal(extra[0].value, "3");
    assert_int_equal(npos, 1);
    assert_string_equal(pos[0], "FILE");
    hr_config_free(&c);
    char *argv4[] = {"--strict=yes", "FILE"};
    assert_int_equal(hr_config_from_command_args(&c, HR_CMD_REPLAY, 2, argv4, NULL, extra, 2, pos,
                                                 2, &npos, &help, &err), HR_EINVAL);
    assert_string_equal(err.field, "strict");
    hr_config_free(&c);
}

/* Every choice option, a value it refuses, and the names it lists. */
static const struct {
    const char *option, *env, *flag, *bad, *choices;
} choice_options[] = {
    {"loss", "HOGREC_LOSS", "--loss", "hinge", "logistic|squared"},
    {"state", "HOGREC_STATE", "--state", "rmsprop", "auto|sgd|adagrad|ftrl"},
    {"negative_sampling", "HOGREC_NEGATIVE_SAMPLING", "--negative-sampling", "yes", "auto|on|off"},
    {"durability", "HOGREC_DURABILITY", "--durability", "fsync", "sync|interval"},
    {"log_level", "HOGREC_LOG_LEVEL", "--log-level", "verbose", "debug|info|warn|error"},
};

/* err names the option, the value and every choice. */
static void assert_choice_error(const hr_error *err, size_t i)
{
    assert_string_equal(err->field, choice_options[i].option);
    if (!strstr(err->message, choice_options[i].choices) || !strstr(err->message, choice_options[i].bad))
        fail_msg("%s: '%s' does not list %s and name '%s'", choice_options[i].option, err->message,
                 choice_options[i].choices, choice_options[i].bad);
}

static void test_unknown_choice_refused_everywhere(void **state)
{
    (void)state;
    const char *dir = tu_tmpdir();
    char path[512], arg_config[600];
    snprintf(path, sizeof path, "%s/c.json", dir);
    snprintf(arg_config, sizeof arg_config, "--config=%s", path);
    const char *pos[2];
    int npos;
    bool help;
    for (size_t i = 0; i < HR_ARRAY_LEN(choice_options); i++) {
        hr_config c;
        hr_error err = {{0}, {0}};
        /* the config file */
        FILE *f = fopen(path, "w");
        assert_non_null(f);
        fprintf(f, "{\"%s\": \"%s\"}", choice_options[i].option, choice_options[i].bad);
        fclose(f);
        char *argv1[] = {arg_config};
        assert_int_equal(hr_config_from_args(&c, 1, argv1, NULL, NULL, 0, pos, 2, &npos, &help, &err),
                         HR_EINVAL);
        assert_choice_error(&err, i);
        hr_config_free(&c);
        /* the environment */
        setenv(choice_options[i].env, choice_options[i].bad, 1);
        hr_config_defaults(&c);
        memset(&err, 0, sizeof err);
        assert_int_equal(hr_config_load_env(&c, &err), HR_EINVAL);
        assert_choice_error(&err, i);
        hr_config_free(&c);
        unsetenv(choice_options[i].env);
        /* a flag, both spellings */
        char eq[128];
        snprintf(eq, sizeof eq, "%s=%s", choice_options[i].flag, choice_options[i].bad);
        char *argv2[] = {(char *)choice_options[i].flag, (char *)choice_options[i].bad};
        char *argv3[] = {eq};
        memset(&err, 0, sizeof err);
        assert_int_equal(hr_config_from_args(&c, 2, argv2, NULL, NULL, 0, pos, 2, &npos, &help, &err),
                         HR_EINVAL);
        assert_choice_error(&err, i);
        hr_config_free(&c);
        memset(&err, 0, sizeof err);
        assert_int_equal(hr_config_from_args(&c, 1, argv3, NULL, NULL, 0, pos, 2, &npos, &help, &err),
                         HR_EINVAL);
        assert_choice_error(&err, i);
        hr_config_free(&c);
        /* hr_config_set, and a number where a name is wanted */
        hr_config_defaults(&c);
        json_t *before = hr_config_to_json(&c);
        assert_int_equal(hr_config_set(&c, choice_options[i].option, choice_options[i].bad, &err),
                         HR_EINVAL);
        assert_choice_error(&err, i);
        char num[96];
        snprintf(num, sizeof num, "{\"%s\": 1}", choice_options[i].option);
        assert_int_equal(hr_config_load_text(&c, num, strlen(num), "t", &err), HR_EINVAL);
        json_t *after = hr_config_to_json(&c);
        assert_true(json_equal(before, after)); /* refused values change nothing */
        json_decref(before);
        json_decref(after);
        /* --help lists the choices on the option's line */
        char *buf = NULL;
        size_t len = 0;
        f = open_memstream(&buf, &len);
        hr_config_print_help(f, NULL, 0);
        fclose(f);
        const char *line = strstr(buf, choice_options[i].flag);
        assert_non_null(line);
        const char *eol = strchr(line, '\n');
        const char *at = strstr(line, choice_options[i].choices);
        assert_true(at && eol && at < eol);
        free(buf);
        hr_config_free(&c);
    }
    tu_rmtree(dir);
}

/* Each name is parsed into its enum once, and shown (the config dump, as
 * GET /v1/admin/config answers it) as the same name. */
static void test_choices_parse_to_enums_and_show_as_names(void **state)
{
    (void)state;
    hr_config c;
    hr_error err;
    hr_config_defaults(&c);
    assert_int_equal(c.loss, HR_LOSS_LOGISTIC);
    assert_int_equal(c.state, HR_CONFIG_STATE_AUTO);
    assert_int_equal(c.negative_sampling, HR_CONFIG_NEG_AUTO);
    assert_int_equal(c.durability, HR_CONFIG_DURABILITY_SYNC);
    assert_int_equal(c.log_level, HR_LOG_INFO);
    const char *text = "{\"loss\": \"squared\", \"state\": \"ftrl\", \"negative_sampling\": \"off\","
                       " \"durability\": \"interval\", \"log_level\": \"warn\"}";
    assert_int_equal(hr_config_load_text(&c, text, strlen(text), "t", &err), HR_OK);
    assert_int_equal(c.loss, HR_LOSS_SQUARED);
    assert_int_equal(c.state, HR_CONFIG_STATE_FTRL);
    assert_int_equal(c.negative_sampling, HR_CONFIG_NEG_OFF);
    assert_int_equal(c.durability, HR_CONFIG_DURABILITY_INTERVAL);
    assert_int_equal(c.log_level, HR_LOG_WARN);
    json_t *j = hr_config_to_json(&c);
    assert_string_equal(json_string_value(json_object_get(j, "loss")), "squared");
    assert_string_equal(json_string_value(json_object_get(j, "state")), "ftrl");
    assert_string_equal(json_string_value(json_object_get(j, "negative_sampling")), "off");
    assert_string_equal(json_string_value(json_object_get(j, "durability")), "interval");
    assert_string_equal(json_string_value(json_object_get(j, "log_level")), "warn");
    json_decref(j);
    hr_config_free(&c);
    /* the to-strings name every value as the table does, and nothing else */
    for (int v = 0; v < HR_LOG_LEVEL_COUNT; v++) {
        hr_config_defaults(&c);
        assert_int_equal(hr_config_set(&c, "log_level", hr_log_level_to_string((hr_log_level)v), &err), HR_OK);
        assert_int_equal(c.log_level, v);
    }
    for (int v = 0; v < HR_LOSS_COUNT; v++) {
        assert_int_equal(hr_config_set(&c, "loss", hr_loss_to_string((hr_loss)v), &err), HR_OK);
        assert_int_equal(c.loss, v);
    }
    assert_string_equal(hr_log_level_to_string(HR_LOG_LEVEL_COUNT), "unknown");
    assert_string_equal(hr_config_state_to_string(HR_CONFIG_STATE_COUNT), "unknown");
    assert_string_equal(hr_config_neg_to_string(HR_CONFIG_NEG_ON), "on");
    assert_string_equal(hr_config_durability_to_string(HR_CONFIG_DURABILITY_INTERVAL), "interval");
}

/* A command's own flag with choices (replay's --format, --order) or bounds
 * (--passes) is checked by the same code as the table's options: the index
 * of the value or the number, or the same error. */
static void test_command_flag_choices(void **state)
{
    (void)state;
    static const char *const orders[] = {"file", "time", "shuffle", NULL};
    hr_extra_flag extra[] = {{.name = "order", .help = "replay: order", .choices = orders},
                             {.name = "test", .help = "replay: test file"},
                             {.name = "passes", .help = "replay: passes", .min = 1, .max = 100,
                              .is_integer = true}};
    hr_config c;
    hr_error err = {{0}, {0}};
    const char *pos[2];
    int npos;
    bool help;
    char *ok[] = {"--order", "shuffle", "--test=t.data", "FILE"};
    assert_int_equal(hr_config_from_command_args(&c, HR_CMD_REPLAY, 4, ok, NULL, extra, 2, pos, 2,
                                                 &npos, &help, &err), HR_OK);
    assert_int_equal(extra[0].choice, 2);
    assert_string_equal(extra[0].value, "shuffle");
    assert_int_equal(extra[1].choice, -1);
    assert_string_equal(extra[1].value, "t.data");
    hr_config_free(&c);
    char *none[] = {"FILE"};
    extra[0].value = extra[1].value = NULL;
    assert_int_equal(hr_config_from_command_args(&c, HR_CMD_REPLAY, 1, none, NULL, extra, 2, pos, 2,
                                                 &npos, &help, &err), HR_OK);
    assert_int_equal(extra[0].choice, -1); /* not given */
    assert_null(extra[0].value);
    hr_config_free(&c);
    char *bad[] = {"--order=random", "FILE"};
    assert_int_equal(hr_config_from_command_args(&c, HR_CMD_REPLAY, 2, bad, NULL, extra, 2, pos, 2,
                                                 &npos, &help, &err), HR_EINVAL);
    assert_string_equal(err.field, "order");
    assert_non_null(strstr(err.message, "file|time|shuffle"));
    assert_non_null(strstr(err.message, "'random'"));
    hr_config_free(&c);
    char *passes[] = {"--passes", "7", "FILE"};
    assert_int_equal(hr_config_from_command_args(&c, HR_CMD_REPLAY, 3, passes, NULL, extra, 3, pos,
                                                 2, &npos, &help, &err), HR_OK);
    assert_float_equal(extra[2].number, 7, 0);
    hr_config_free(&c);
    const struct {
        const char *value, *says;
    } bad_passes[] = {{"7x", "not a number"}, {"0", "[1, 100]"}, {"2.5", "integer"}, {"", "not a number"}};
    for (size_t i = 0; i < HR_ARRAY_LEN(bad_passes); i++) {
        char *argv[] = {"--passes", (char *)bad_passes[i].value, "FILE"};
        assert_int_equal(hr_config_from_command_args(&c, HR_CMD_REPLAY, 3, argv, NULL, extra, 3, pos,
                                                     2, &npos, &help, &err), HR_EINVAL);
        assert_string_equal(err.field, "passes");
        assert_non_null(strstr(err.message, bad_passes[i].says));
        hr_config_free(&c);
    }
    /* --help lists them */
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    hr_config_print_command_help(f, HR_CMD_REPLAY, extra, 2);
    fclose(f);
    assert_non_null(strstr(buf, "replay: order (file|time|shuffle)"));
    free(buf);
}

/* update_kernel: each name parses and shows as itself; opening an app
 * selects the variant for the process, and a variant this CPU (or build)
 * cannot run is refused at open, naming it and what the CPU runs. */
static void test_update_kernel(void **state)
{
    (void)state;
    static const char *const names[] = {"auto", "generic", "avx2", "avx512", "exact"};
    hr_error err;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        hr_config c;
        hr_config_defaults(&c);
        c.db[0] = 0;
        assert_int_equal(hr_config_set(&c, "max_users", "64", &err), HR_OK);
        assert_int_equal(hr_config_set(&c, "max_items", "64", &err), HR_OK);
        assert_int_equal(hr_config_set(&c, "chunk_rows", "64", &err), HR_OK);
        assert_int_equal(hr_config_set(&c, "update_kernel", names[i], &err), HR_OK);
        assert_string_equal(hr_config_kernel_to_string(c.update_kernel), names[i]);
        hr_sgd_kernel_select("exact"); /* something else than what the open should choose */
        hr_app *app = NULL;
        hr_status st = hr_app_open(&c, &app, &err);
        if (hr_sgd_kernel_available(names[i])) {
            assert_int_equal(st, HR_OK);
            if (strcmp(names[i], "auto") != 0) {
                assert_string_equal(hr_sgd_kernel_name(), names[i]);
            } else { /* the widest: the first the CPU runs */
                char runs[64];
                hr_sgd_kernel_list(runs, sizeof runs);
                assert_int_equal(strncmp(runs, hr_sgd_kernel_name(), strlen(hr_sgd_kernel_name())), 0);
            }
            hr_app_close(app, false);
        } else {
            printf("update_kernel %s: this CPU cannot run it, checking the refusal\n", names[i]);
            assert_int_equal(st, HR_EINVAL);
            assert_null(app);
            assert_string_equal(err.field, "update_kernel");
            assert_non_null(strstr(err.message, names[i]));
            assert_non_null(strstr(err.message, "it runs: "));
            assert_string_equal(hr_sgd_kernel_name(), "exact"); /* unchanged */
        }
        hr_config_free(&c);
    }
    hr_config c;
    hr_config_defaults(&c);
    assert_int_equal(c.update_kernel, HR_CONFIG_KERNEL_AUTO);
    assert_int_equal(hr_config_set(&c, "update_kernel", "sse9", &err), HR_EINVAL);
    assert_non_null(strstr(err.message, "auto|generic|avx2|avx512|exact"));
    assert_string_equal(hr_config_kernel_to_string(HR_CONFIG_KERNEL_COUNT), "unknown");
    hr_config_free(&c);
    hr_sgd_kernel_select("auto");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_and_bounds),
        cmocka_unit_test(test_precedence_file_env_flags),
        cmocka_unit_test(test_help_lists_every_option),
        cmocka_unit_test(test_options_per_command),
        cmocka_unit_test(test_load_text),
        cmocka_unit_test(test_unknown_choice_refused_everywhere),
        cmocka_unit_test(test_choices_parse_to_enums_and_show_as_names),
        cmocka_unit_test(test_command_flag_choices),
        cmocka_unit_test(test_update_kernel),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

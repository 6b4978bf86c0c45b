/*
 * test_config.c - the options table: defaults valid, bounds enforced, the
 * file, environment and flags in their order of precedence, unknown names
 * refused, each command's --help and flags limited to its options.
 */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hogrec/config.h"

static void test_defaults_and_bounds(void **state)
{
    (void)state;
    hr_config c;
    hr_config_defaults(&c);
    assert_int_equal(c.k, 16);
    assert_string_equal(c.bind, "127.0.0.1");
    assert_string_equal(c.durability, "sync");
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
    hr_extra_flag extra[] = {{"extra_thing", "test", NULL, false}};
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
    assert_string_equal(c.loss, "squared");
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
    hr_extra_flag extra[] = {{"passes", "replay: passes", NULL, false},
                             {"strict", "replay: stop at a bad line", NULL, true}};
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_and_bounds),
        cmocka_unit_test(test_precedence_file_env_flags),
        cmocka_unit_test(test_help_lists_every_option),
        cmocka_unit_test(test_options_per_command),
        cmocka_unit_test(test_load_text),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

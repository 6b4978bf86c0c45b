/* ctest-labels: concurrent */
/*
 * test_dblock.c - one owner per database (src/dblock.c).
 *
 * In process: a second lock of the same database is refused with the
 * holder's pid and command, and a release lets the next one in. Against the
 * real binary (HOGREC_BIN, set by ctest): a second `hogrec serve` and a
 * `hogrec replay --db` on the same database exit non-zero naming the first
 * server's pid, the first keeps serving, and after a kill -9 of it a new
 * server starts on the database. Every child is killed by a reaper after a
 * generous bound, so no wait in the test can last forever; nothing asserts
 * a time.
 */
#include "testutil.h"

#include <curl/curl.h>
#include <jansson.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "hogrec/app.h"
#include "hogrec/dblock.h"

static void test_second_lock_refused(void **state)
{
    (void)state;
    const char *dir = tu_tmpdir();
    char db[512], lockfile[600], want[64];
    snprintf(db, sizeof db, "%s/t.db", dir);
    snprintf(lockfile, sizeof lockfile, "%s-lock", db);
    hr_dblock *a = NULL, *b = NULL;
    hr_error err = {{0}, {0}};
    assert_int_equal(hr_dblock_acquire(db, &a, &err), HR_OK);
    assert_int_equal(access(lockfile, F_OK), 0);
    /* a second open, even in this process, is refused, naming the holder */
    assert_int_equal(hr_dblock_acquire(db, &b, &err), HR_EBUSY);
    assert_null(b);
    assert_string_equal(err.field, "db");
    snprintf(want, sizeof want, "process %ld (", (long)getpid());
    assert_non_null(strstr(err.message, want));
    assert_non_null(strstr(err.message, "test_dblock"));
    assert_non_null(strstr(err.message, db));
    hr_dblock_release(a);
    assert_int_equal(hr_dblock_acquire(db, &b, &err), HR_OK);
    hr_dblock_release(b);
    hr_dblock_release(NULL);

    /* an app on the database holds it until it closes */
    hr_config c;
    tu_small_config(&c, db);
    hr_app *app = NULL, *app2 = NULL;
    assert_int_equal(hr_app_open(&c, &app, &err), HR_OK);
    assert_int_equal(hr_app_open(&c, &app2, &err), HR_EBUSY);
    assert_null(app2);
    assert_non_null(strstr(err.message, want));
    hr_app_close(app, true);
    assert_int_equal(hr_app_open(&c, &app2, &err), HR_OK);
    hr_app_close(app2, true);
    hr_config_free(&c);
    tu_rmtree(dir);
}

/* ---- the real binary ---- */

#define BOUND 120 /* seconds a child may live: generous, each needs about 1 */

/* Whether the child logged "ready" (its lines appended to all). */
static bool ready(tu_child *ch, char *all, size_t cap)
{
    json_t *line = tu_child_log_until(ch, "ready", all, cap);
    json_decref(line);
    return line != NULL;
}

static void test_binary_one_owner(void **state)
{
    (void)state;
    const char *bin = getenv("HOGREC_BIN");
    if (!bin || access(bin, X_OK) != 0)
        TU_SKIP("HOGREC_BIN not set or not executable (run through ctest)");
    const char *dir = tu_tmpdir();
    char db[512];
    snprintf(db, sizeof db, "%s/t.db", dir);
    char *serve[] = {(char *)bin, "serve", "--port", "0", "--db", db, "--threads", "1",
                     "--max-users", "1024", "--max-items", "1024", "--checkpoint-interval",
                     "0", NULL};
    char events[600];
    snprintf(events, sizeof events, "%s/e.ndjson", dir);
    FILE *f = fopen(events, "w");
    assert_non_null(f);
    fputs("{\"user\":\"a\",\"item\":\"b\"}\n", f);
    fclose(f);
    char *replay[] = {(char *)bin, "replay", "--db", db, "--max-users", "1024", "--max-items",
                      "1024", events, NULL};

    tu_child first, second, rep, third;
    tu_child_spawn(&first, serve, BOUND, NULL, NULL);
    bool first_ready = ready(&first, NULL, 0);
    /* the second server and a replay on the same database are refused */
    static char second_log[16384], rep_log[16384];
    second_log[0] = rep_log[0] = 0;
    tu_child_spawn(&second, serve, BOUND, NULL, NULL);
    bool second_ready = ready(&second, second_log, sizeof second_log);
    int second_status = tu_child_wait(&second);
    tu_child_spawn(&rep, replay, BOUND, NULL, NULL);
    json_decref(tu_child_log_until(&rep, "-", rep_log, sizeof rep_log)); /* all of it (not JSON) */
    int rep_status = tu_child_wait(&rep);
    /* the first is unaffected */
    long health = first_ready ? tu_http(first.port, "GET", "/healthz", NULL, NULL, NULL) : 0;
    long posted = first_ready ? tu_http(first.port, "POST", "/v1/events",
                                        "{\"user\":\"u\",\"item\":\"i\"}", NULL, NULL)
                              : 0;
    pid_t first_pid = first.pid;
    kill(first.pid, SIGKILL);
    int first_status = tu_child_wait(&first);
    /* the lock died with it: a new server starts */
    tu_child_spawn(&third, serve, BOUND, NULL, NULL);
    bool third_ready = ready(&third, NULL, 0);
    long third_health = third_ready ? tu_http(third.port, "GET", "/healthz", NULL, NULL, NULL) : 0;
    kill(third.pid, SIGTERM);
    int third_status = tu_child_wait(&third);

    char want[64];
    snprintf(want, sizeof want, "process %ld (", (long)first_pid);
    assert_true(first_ready);
    assert_false(second_ready);
    assert_true(second_status != -1 && WIFEXITED(second_status));
    assert_int_not_equal(WEXITSTATUS(second_status), 0);
    if (!strstr(second_log, want) || !strstr(second_log, " serve ") || !strstr(second_log, db))
        fail_msg("the second server should name process %ld (its command and the database); "
                 "its log:\n%s", (long)first_pid, second_log);
    assert_true(rep_status != -1 && WIFEXITED(rep_status));
    assert_int_not_equal(WEXITSTATUS(rep_status), 0);
    if (!strstr(rep_log, want))
        fail_msg("replay --db should name process %ld; its output:\n%s", (long)first_pid,
                 rep_log);
    assert_int_equal(health, 200);
    assert_int_equal(posted, 202);
    assert_true(first_status != -1 && WIFSIGNALED(first_status));
    assert_true(third_ready);
    assert_int_equal(third_health, 200);
    assert_true(third_status != -1 && WIFEXITED(third_status));
    assert_int_equal(WEXITSTATUS(third_status), 0);
    tu_rmtree(dir);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_second_lock_refused),
        cmocka_unit_test(test_binary_one_owner),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}

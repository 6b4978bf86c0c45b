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
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
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
    hr_config_defaults(&c);
    snprintf(c.db, sizeof c.db, "%.200s", db);
    c.k = 4;
    c.max_users = 1024;
    c.max_items = 1024;
    c.chunk_rows = 64;
    c.context_bits = 4;
    c.threads = 1;
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

typedef struct {
    pid_t pid;
    FILE *err; /* its stderr */
    pthread_t reaper;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool exited, killed;
    int port;
} child;

static void *reaper(void *arg)
{
    child *ch = arg;
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += BOUND;
    pthread_mutex_lock(&ch->mu);
    while (!ch->exited && pthread_cond_timedwait(&ch->cv, &ch->mu, &until) == 0)
        ;
    if (!ch->exited) {
        ch->killed = true;
        kill(ch->pid, SIGKILL);
    }
    pthread_mutex_unlock(&ch->mu);
    return NULL;
}

/* Runs bin with args (NULL-terminated, argv[0] included), stderr to a pipe. */
static void spawn(child *ch, char *const argv[])
{
    int p[2];
    assert_int_equal(pipe(p), 0);
    fflush(NULL);
    ch->pid = fork();
    assert_true(ch->pid >= 0);
    if (ch->pid == 0) {
        dup2(p[1], 2);
        close(p[0]);
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0)
            dup2(devnull, 1);
        execv(argv[0], argv);
        _exit(127);
    }
    close(p[1]);
    ch->err = fdopen(p[0], "r");
    ch->exited = ch->killed = false;
    ch->port = 0;
    pthread_mutex_init(&ch->mu, NULL);
    pthread_cond_init(&ch->cv, NULL);
    assert_int_equal(pthread_create(&ch->reaper, NULL, reaper, ch), 0);
}

/* Reads stderr lines until a JSON line whose msg is `msg` (true) or EOF
 * (false); every line is appended to all (cap bytes) when not NULL. */
static bool read_until(child *ch, const char *msg, char *all, size_t cap)
{
    char line[4096];
    while (fgets(line, sizeof line, ch->err)) {
        if (all && strlen(all) + strlen(line) < cap)
            strcat(all, line);
        json_t *o = json_loads(line, 0, NULL);
        const char *m = json_string_value(json_object_get(o, "msg"));
        bool hit = m && !strcmp(m, msg);
        if (m && !strcmp(m, "listening"))
            ch->port = (int)json_integer_value(json_object_get(o, "port"));
        json_decref(o);
        if (hit)
            return true;
    }
    return false;
}

/* Waits for the exit; the wait status, or -1 if the reaper killed it. */
static int finish(child *ch)
{
    int status = 0;
    while (fgets((char[256]){0}, 256, ch->err)) /* the rest of its log */
        ;
    waitpid(ch->pid, &status, 0);
    pthread_mutex_lock(&ch->mu);
    ch->exited = true;
    bool killed = ch->killed;
    pthread_cond_broadcast(&ch->cv);
    pthread_mutex_unlock(&ch->mu);
    pthread_join(ch->reaper, NULL);
    fclose(ch->err);
    pthread_cond_destroy(&ch->cv);
    pthread_mutex_destroy(&ch->mu);
    return killed ? -1 : status;
}

static size_t sink(char *p, size_t size, size_t n, void *cls)
{
    (void)p;
    (void)cls;
    return size * n;
}

/* Status of one request to the child, 0 if none came. */
static long http(const child *ch, const char *method, const char *path, const char *body)
{
    CURL *c = curl_easy_init();
    if (!c)
        return 0;
    char url[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", ch->port, path);
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    if (body)
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, sink);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 60L);
    long status = 0;
    if (curl_easy_perform(c) == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    return status;
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

    child first, second, rep, third;
    spawn(&first, serve);
    bool first_ready = read_until(&first, "ready", NULL, 0);
    /* the second server and a replay on the same database are refused */
    static char second_log[16384], rep_log[16384];
    second_log[0] = rep_log[0] = 0;
    spawn(&second, serve);
    bool second_ready = read_until(&second, "ready", second_log, sizeof second_log);
    int second_status = finish(&second);
    spawn(&rep, replay);
    read_until(&rep, "-", rep_log, sizeof rep_log); /* its whole output (not JSON) */
    int rep_status = finish(&rep);
    /* the first is unaffected */
    long health = first_ready ? http(&first, "GET", "/healthz", NULL) : 0;
    long posted = first_ready ? http(&first, "POST", "/v1/events", "{\"user\":\"u\",\"item\":\"i\"}")
                              : 0;
    pid_t first_pid = first.pid;
    kill(first.pid, SIGKILL);
    int first_status = finish(&first);
    /* the lock died with it: a new server starts */
    spawn(&third, serve);
    bool third_ready = read_until(&third, "ready", NULL, 0);
    long third_health = third_ready ? http(&third, "GET", "/healthz", NULL) : 0;
    kill(third.pid, SIGTERM);
    int third_status = finish(&third);

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

/*
 * test_redis.c - the Redis connection against a real redis-server started
 * here (tu_redis_start): URL parsing, AUTH from the environment, commands,
 * scripts with the NOSCRIPT fallback, a crashed and a paused server, the
 * reconnection backoff, the settings verdicts.
 */
#include "testutil.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hogrec/redis.h"

/* The servers of the running test; the teardown stops them whatever
 * failed. */
static tu_redis g_srv[2];

static int teardown(void **state)
{
    (void)state;
    for (size_t i = 0; i < HR_ARRAY_LEN(g_srv); i++) {
        tu_redis_stop(&g_srv[i]);
        memset(&g_srv[i], 0, sizeof g_srv[i]);
    }
    unsetenv(HR_REDIS_PASSWORD_ENV);
    return 0;
}

static hr_redis_options test_options(void)
{
    hr_redis_options o;
    hr_redis_options_defaults(&o);
    o.connect_timeout_ms = 500;
    o.command_timeout_ms = 500;
    return o;
}

static void sleep_ms(int ms)
{
    nanosleep(&(struct timespec){ms / 1000, (long)(ms % 1000) * 1000000L}, NULL);
}

/* Calls PING until it answers (bounded: 10 s); returns whether it did. */
static bool ping_until_ok(hr_redis *r)
{
    uint64_t end = hr_now_ns() + 10000000000ull;
    while (hr_now_ns() < end) {
        if (hr_redis_call(r, NULL, NULL, "PING", NULL) == HR_OK)
            return true;
        sleep_ms(10);
    }
    return false;
}

static void test_url_parsing(void **state)
{
    (void)state;
    char host[64];
    int port = 0, db = -1;
    hr_error err = {{0}, {0}};
    assert_int_equal(hr_redis_parse_url("redis://127.0.0.1:6379", host, sizeof host, &port, &db, &err), HR_OK);
    assert_string_equal(host, "127.0.0.1");
    assert_int_equal(port, 6379);
    assert_int_equal(db, 0);
    assert_int_equal(hr_redis_parse_url("redis://cache.example:7000/3", host, sizeof host, &port, &db, &err), HR_OK);
    assert_string_equal(host, "cache.example");
    assert_int_equal(port, 7000);
    assert_int_equal(db, 3);
    assert_int_equal(hr_redis_parse_url("redis://[::1]:6380/", host, sizeof host, &port, &db, &err), HR_OK);
    assert_string_equal(host, "::1");
    assert_int_equal(port, 6380);
    assert_int_equal(db, 0);

    static const char *const bad[] = {
        "", "127.0.0.1:6379", "http://h:1", "rediss://h:6379", "unix:///tmp/r.sock",
        "redis://", "redis://h", "redis://h:", "redis://h:0", "redis://h:65536",
        "redis://h:12x", "redis://:6379", "redis://h:6379/x", "redis://h:6379/1/2",
        "redis://h:6379?db=1", "redis://[::1:6379", "redis://h:6379/99999999999",
    };
    for (size_t i = 0; i < HR_ARRAY_LEN(bad); i++) {
        memset(&err, 0, sizeof err);
        if (hr_redis_parse_url(bad[i], host, sizeof host, &port, &db, &err) != HR_EINVAL)
            fail_msg("'%s' was accepted", bad[i]);
        assert_string_equal(err.field, "redis");
        assert_true(strlen(err.message) > 0);
    }
    /* a password in the URL is refused and not echoed */
    memset(&err, 0, sizeof err);
    assert_int_equal(hr_redis_parse_url("redis://:s3cretpw@h:6379", host, sizeof host, &port, &db, &err), HR_EINVAL);
    assert_null(strstr(err.message, "s3cretpw"));
    assert_non_null(strstr(err.message, HR_REDIS_PASSWORD_ENV));
    /* hr_redis_open refuses the same, and bad options */
    hr_redis *r = NULL;
    assert_int_equal(hr_redis_open("http://h:1", NULL, &r, &err), HR_EINVAL);
    assert_null(r);
    hr_redis_options o = test_options();
    o.backoff_max_ms = o.backoff_min_ms - 1;
    assert_int_equal(hr_redis_open("redis://127.0.0.1:1", &o, &r, &err), HR_EINVAL);
    assert_null(r);
    hr_redis_destroy(NULL);
}

static void test_sha1(void **state)
{
    (void)state;
    char hex[41];
    hr_redis_sha1_hex("abc", 3, hex);
    assert_string_equal(hex, "a9993e364706816aba3e25717850c26c9cd0d89d");
    hr_redis_sha1_hex("", 0, hex);
    assert_string_equal(hex, "da39a3ee5e6b4b0d3255bfef95601890afd80709");
    const char *two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"; /* 56 bytes */
    hr_redis_sha1_hex(two, strlen(two), hex);
    assert_string_equal(hex, "84983e441c3bd26ebaae4aa1f95129e5e54670f1");
}

static void test_unreachable(void **state)
{
    (void)state;
    tu_redis *srv = &g_srv[0];
    tu_redis_start(srv); /* to learn a free port, then stop it */
    char url[64];
    snprintf(url, sizeof url, "%s", tu_redis_url(srv));
    tu_redis_stop(srv);
    hr_redis_options o = test_options();
    hr_redis *r = NULL;
    hr_error err = {{0}, {0}};
    assert_int_equal(hr_redis_open(url, &o, &r, &err), HR_EIO);
    assert_null(r);
    assert_non_null(strstr(err.message, "cannot connect"));
}

static void test_commands_and_errors(void **state)
{
    (void)state;
    tu_redis *srv = &g_srv[0];
    tu_redis_start(srv);
    hr_redis_options o = test_options();
    hr_redis *r = NULL;
    hr_error err = {{0}, {0}};
    unsetenv(HR_REDIS_PASSWORD_ENV);
    assert_int_equal(hr_redis_open(tu_redis_url(srv), &o, &r, &err), HR_OK);
    assert_true(hr_redis_connected(r));
    assert_non_null(strstr(hr_redis_address(r), "127.0.0.1:"));

    /* binary safe: a value with NUL bytes comes back whole */
    const char val[] = {'a', 0, 'b', 0, (char)0xff};
    const char *argv[] = {"SET", "bin", val};
    size_t lens[] = {3, 3, sizeof val};
    assert_int_equal(hr_redis_command(r, 3, argv, lens, NULL, &err), HR_OK);
    redisReply *rep = NULL;
    assert_int_equal(hr_redis_call(r, &rep, &err, "GET", "bin", NULL), HR_OK);
    assert_int_equal(rep->type, REDIS_REPLY_STRING);
    assert_int_equal(rep->len, sizeof val);
    assert_memory_equal(rep->str, val, sizeof val);
    freeReplyObject(rep);

    assert_int_equal(hr_redis_call(r, &rep, &err, "INCR", "n", NULL), HR_OK);
    assert_int_equal(rep->type, REDIS_REPLY_INTEGER);
    assert_int_equal(rep->integer, 1);
    freeReplyObject(rep);

    /* error replies: a status and Redis' text */
    rep = (redisReply *)1;
    assert_int_equal(hr_redis_call(r, &rep, &err, "LPUSH", "bin", "x", NULL), HR_EINVAL);
    assert_null(rep);
    assert_non_null(strstr(err.message, "WRONGTYPE"));
    assert_int_equal(hr_redis_call(r, NULL, &err, "NOSUCHCOMMAND", NULL), HR_EINVAL);
    assert_non_null(strstr(err.message, "unknown command"));
    /* the connection is still good after error replies */
    assert_int_equal(hr_redis_call(r, NULL, &err, "PING", NULL), HR_OK);
    assert_int_equal(hr_redis_reconnects(r), 0);

    /* a database in the URL is selected */
    char url[80];
    snprintf(url, sizeof url, "%s/2", tu_redis_url(srv));
    hr_redis *r2 = NULL;
    assert_int_equal(hr_redis_open(url, &o, &r2, &err), HR_OK);
    assert_int_equal(hr_redis_call(r2, NULL, &err, "SET", "indb2", "1", NULL), HR_OK);
    assert_int_equal(hr_redis_call(r, &rep, &err, "EXISTS", "indb2", NULL), HR_OK);
    assert_int_equal(rep->integer, 0);
    freeReplyObject(rep);
    hr_redis_destroy(r2);
    hr_redis_destroy(r);
    tu_redis_stop(srv);
}

static void test_auth(void **state)
{
    (void)state;
    static const char pw[] = "pw-Tq7yX2mZ";
    tu_redis *srv = &g_srv[0];
    srv->requirepass = pw;
    tu_redis_start(srv);
    hr_redis_options o = test_options();
    hr_redis *r = NULL;
    hr_error err = {{0}, {0}};

    unsetenv(HR_REDIS_PASSWORD_ENV); /* none: refused at open, saying why */
    assert_int_equal(hr_redis_open(tu_redis_url(srv), &o, &r, &err), HR_EINVAL);
    assert_null(r);
    assert_non_null(strstr(err.message, "NOAUTH"));
    assert_non_null(strstr(err.message, HR_REDIS_PASSWORD_ENV));

    static const char wrong[] = "wrong-Kd83hQ";
    setenv(HR_REDIS_PASSWORD_ENV, wrong, 1);
    memset(&err, 0, sizeof err);
    assert_int_equal(hr_redis_open(tu_redis_url(srv), &o, &r, &err), HR_EINVAL);
    assert_null(r);
    assert_non_null(strstr(err.message, "AUTH"));
    assert_null(strstr(err.message, wrong));
    assert_null(strstr(err.message, pw));

    setenv(HR_REDIS_PASSWORD_ENV, pw, 1);
    assert_int_equal(hr_redis_open(tu_redis_url(srv), &o, &r, &err), HR_OK);
    assert_int_equal(hr_redis_call(r, NULL, &err, "SET", "k", "v", NULL), HR_OK);
    assert_null(strstr(hr_redis_address(r), pw));
    /* a reconnection authenticates again: the server drops us, the next
     * call fails, the one after reconnects with AUTH and works */
    (void)hr_redis_call(r, NULL, &err, "CLIENT", "KILL", "TYPE", "normal", "SKIPME", "no", NULL); /* may answer first */
    assert_true(ping_until_ok(r));
    assert_int_equal(hr_redis_reconnects(r), 1);
    hr_redis_destroy(r);
    unsetenv(HR_REDIS_PASSWORD_ENV);
    tu_redis_stop(srv);
}

static void test_eval_noscript_fallback(void **state)
{
    (void)state;
    tu_redis *srv = &g_srv[0];
    tu_redis_start(srv);
    hr_redis_options o = test_options();
    hr_redis *r = NULL;
    hr_error err = {{0}, {0}};
    assert_int_equal(hr_redis_open(tu_redis_url(srv), &o, &r, &err), HR_OK);

    static const char script[] =
        "redis.call('SET', KEYS[1], ARGV[1]) return redis.call('STRLEN', KEYS[1]) + #ARGV";
    char sha[41];
    hr_redis_sha1_hex(script, strlen(script), sha);
    /* our SHA-1 is the server's */
    redisReply *rep = NULL;
    assert_int_equal(hr_redis_call(r, &rep, &err, "SCRIPT", "LOAD", script, NULL), HR_OK);
    assert_string_equal(rep->str, sha);
    freeReplyObject(rep);
    assert_int_equal(hr_redis_call(r, NULL, &err, "SCRIPT", "FLUSH", NULL), HR_OK);

    const char *args[] = {"key", "hello", "x"};
    for (int round = 0; round < 3; round++) {
        if (round == 2) /* flushed scripts are loaded again by the fallback */
            assert_int_equal(hr_redis_call(r, NULL, &err, "SCRIPT", "FLUSH", NULL), HR_OK);
        assert_int_equal(hr_redis_eval(r, script, 1, 3, args, NULL, &rep, &err), HR_OK);
        assert_int_equal(rep->type, REDIS_REPLY_INTEGER);
        assert_int_equal(rep->integer, 5 + 2);
        freeReplyObject(rep);
        assert_int_equal(hr_redis_call(r, &rep, &err, "SCRIPT", "EXISTS", sha, NULL), HR_OK);
        assert_int_equal(rep->element[0]->integer, 1);
        freeReplyObject(rep);
    }
    /* errors a script raises map to a status */
    static const char fenced[] = "return redis.error_reply('fenced: epoch 2 is newer')";
    assert_int_equal(hr_redis_eval(r, fenced, 0, 0, NULL, NULL, &rep, &err), HR_EBUSY);
    assert_null(rep);
    assert_non_null(strstr(err.message, "fenced: epoch 2 is newer"));
    static const char broken[] = "return redis.call('NOSUCH')";
    assert_int_equal(hr_redis_eval(r, broken, 0, 0, NULL, NULL, &rep, &err), HR_EINVAL);
    assert_int_equal(hr_redis_eval(r, script, 2, 1, args, NULL, &rep, &err), HR_EINVAL);
    hr_redis_destroy(r);
    tu_redis_stop(srv);
}

/* The wait an attempt announced ("... next attempt in N ms" after a
 * failed connect), or -1 when the call failed fast (no attempt made). */
static int attempt_wait(const hr_error *err)
{
    if (strstr(err->message, "is unreachable"))
        return -1;
    assert_non_null(strstr(err->message, "cannot connect"));
    const char *p = strstr(err->message, "next attempt in ");
    assert_non_null(p);
    return atoi(p + strlen("next attempt in "));
}

static void test_crash_and_reconnect(void **state)
{
    (void)state;
    tu_redis *srv = &g_srv[0];
    tu_redis_start(srv);
    hr_redis_options o = test_options();
    o.backoff_min_ms = 20;
    o.backoff_max_ms = 160;
    hr_redis *r = NULL;
    hr_error err = {{0}, {0}};
    assert_int_equal(hr_redis_open(tu_redis_url(srv), &o, &r, &err), HR_OK);
    assert_int_equal(hr_redis_call(r, NULL, &err, "SET", "before", "1", NULL), HR_OK);

    /* a paused server: the command times out (bounded), HR_EIO */
    tu_redis_kill(srv, SIGSTOP);
    uint64_t t0 = hr_now_ns();
    assert_int_equal(hr_redis_call(r, NULL, &err, "PING", NULL), HR_EIO);
    double waited = (double)(hr_now_ns() - t0) / 1e9;
    assert_true(waited < 0.5 + 5.0); /* the timeout, with a wide margin for a loaded machine */
    assert_non_null(strstr(err.message, "no reply within 500 ms"));
    assert_false(hr_redis_connected(r));
    tu_redis_kill(srv, SIGCONT);
    assert_true(ping_until_ok(r));
    assert_int_equal(hr_redis_reconnects(r), 1);

    /* kill -9: the next command fails with HR_EIO, quickly */
    tu_redis_kill(srv, SIGKILL);
    assert_int_equal(hr_redis_call(r, NULL, &err, "PING", NULL), HR_EIO);
    assert_false(hr_redis_connected(r));

    /* while it is down: attempts back off 20, 40, 80, 160, 160 ms; the
     * calls in between fail fast and say when the next attempt is */
    int waits[5], n = 0, fast = 0;
    for (int i = 0; i < 2000 && n < 5; i++) {
        memset(&err, 0, sizeof err);
        assert_int_equal(hr_redis_call(r, NULL, &err, "PING", NULL), HR_EIO);
        int w = attempt_wait(&err);
        if (w >= 0) {
            waits[n++] = w;
        } else {
            assert_non_null(strstr(err.message, "next attempt in"));
            fast++;
        }
        sleep_ms(5);
    }
    assert_int_equal(n, 5);
    assert_true(fast > 0);
    int expect[] = {20, 40, 80, 160, 160};
    for (int i = 0; i < 5; i++)
        assert_int_equal(waits[i], expect[i]);

    /* restarted on the same port: the connection comes back */
    tu_redis_start(srv);
    assert_true(ping_until_ok(r));
    assert_true(hr_redis_connected(r));
    assert_int_equal(hr_redis_reconnects(r), 2);
    redisReply *rep = NULL;
    assert_int_equal(hr_redis_call(r, &rep, &err, "GET", "before", NULL), HR_OK);
    assert_int_equal(rep->type, REDIS_REPLY_STRING); /* the AOF kept it */
    freeReplyObject(rep);
    hr_redis_destroy(r);
    tu_redis_stop(srv);
}

static void set_config(hr_redis *r, const char *name, const char *value)
{
    hr_error err = {{0}, {0}};
    if (hr_redis_call(r, NULL, &err, "CONFIG", "SET", name, value, NULL) != HR_OK)
        fail_msg("CONFIG SET %s %s: %s", name, value, err.message);
}

static void test_settings(void **state)
{
    (void)state;
    tu_redis *srv = &g_srv[0];
    tu_redis_start(srv);
    hr_redis *r = NULL;
    hr_error err = {{0}, {0}};
    hr_redis_options o = test_options();
    assert_int_equal(hr_redis_open(tu_redis_url(srv), &o, &r, &err), HR_OK);
    hr_redis_settings s;

    set_config(r, "appendfsync", "always");
    set_config(r, "maxmemory-policy", "noeviction");
    assert_int_equal(hr_redis_check_settings(r, false, &s, &err), HR_OK);
    assert_true(s.checked);
    assert_string_equal(s.appendonly, "yes");
    assert_string_equal(s.appendfsync, "always");
    assert_string_equal(s.maxmemory_policy, "noeviction");
    assert_int_equal(s.verdict, HR_REDIS_SETTINGS_OK);

    set_config(r, "appendfsync", "everysec");
    assert_int_equal(hr_redis_check_settings(r, false, &s, &err), HR_OK);
    assert_int_equal(s.verdict, HR_REDIS_SETTINGS_WARN);
    assert_non_null(strstr(s.message, "1 s"));

    set_config(r, "appendfsync", "always");
    set_config(r, "appendonly", "no");
    assert_int_equal(hr_redis_check_settings(r, false, &s, &err), HR_OK);
    assert_string_equal(s.appendonly, "no");
    assert_int_equal(s.verdict, HR_REDIS_SETTINGS_REFUSE);
    assert_non_null(strstr(s.message, "appendonly"));
    assert_int_equal(hr_redis_check_settings(r, true, &s, &err), HR_OK);
    assert_int_equal(s.verdict, HR_REDIS_SETTINGS_WARN);

    set_config(r, "appendonly", "yes");
    set_config(r, "maxmemory-policy", "allkeys-lru");
    assert_int_equal(hr_redis_check_settings(r, true, &s, &err), HR_OK);
    assert_string_equal(s.maxmemory_policy, "allkeys-lru");
    assert_int_equal(s.verdict, HR_REDIS_SETTINGS_REFUSE);
    assert_non_null(strstr(s.message, "noeviction"));
    assert_string_equal(hr_redis_verdict_to_string(s.verdict), "refuse");
    hr_redis_destroy(r);
    tu_redis_stop(srv);

    /* CONFIG renamed away: the settings could not be checked, a warning */
    static const char *const extra[] = {"--rename-command", "CONFIG", "", NULL};
    tu_redis *hidden = &g_srv[1];
    hidden->extra = extra;
    tu_redis_start(hidden);
    assert_int_equal(hr_redis_open(tu_redis_url(hidden), &o, &r, &err), HR_OK);
    assert_int_equal(hr_redis_check_settings(r, false, &s, &err), HR_OK);
    assert_false(s.checked);
    assert_int_equal(s.verdict, HR_REDIS_SETTINGS_WARN);
    assert_non_null(strstr(s.message, "could not be checked"));
    hr_redis_destroy(r);
    tu_redis_stop(hidden);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_url_parsing, teardown),
        cmocka_unit_test_teardown(test_sha1, teardown),
        cmocka_unit_test_teardown(test_unreachable, teardown),
        cmocka_unit_test_teardown(test_commands_and_errors, teardown),
        cmocka_unit_test_teardown(test_auth, teardown),
        cmocka_unit_test_teardown(test_eval_noscript_fallback, teardown),
        cmocka_unit_test_teardown(test_crash_and_reconnect, teardown),
        cmocka_unit_test_teardown(test_settings, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

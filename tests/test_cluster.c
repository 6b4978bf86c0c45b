/*
 * test_cluster.c - cluster mode end to end with real processes: a
 * redis-server started here (AOF on) and three `hogrec serve --redis`
 * nodes (a, b, c) of one cluster. One of them takes the lease and trains
 * from the event stream; the others follow its row deltas. Events are
 * posted round-robin to all three; once every node's model covers the
 * last acknowledged entry, the followers' scores equal the leader's bit
 * for bit and the leader trained exactly the events acknowledged. Then:
 * an event id posted to two nodes is applied once, and with Redis killed
 * a POST answers 503 with a JSON error, never a 202. And the max_backlog
 * bound (429), and a db refused in cluster mode.
 *
 * Waits are bounded polls for a state (the nodes run on a shared machine);
 * nothing asserts a duration.
 */
/* ctest-labels: concurrent */
#include "testutil.h"

#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "hogrec/estream.h"

#define NODES 3
#define REQUESTS 30       /* POSTs of EVENTS_PER events */
#define EVENTS_PER 100
#define USERS 40          /* the synthetic world */
#define ITEMS 60
#define TRAINED_VALUES 6  /* context values d=v0..v5 are trained; v6.. are not */
#define CHILD_BOUND 300   /* seconds a node may live */
#define WAIT_SECONDS 60   /* bound of every poll */

/* Nodes spawned by the running test: a failed assertion leaves the test
 * early, and the teardown kills what is left (the reaper threads end with
 * the test process, the nodes would not). */
static pid_t g_spawned[8];
static size_t g_nspawned;

static int kill_leftovers(void **state)
{
    (void)state;
    for (size_t i = 0; i < g_nspawned; i++)
        if (kill(g_spawned[i], 0) == 0 && waitpid(g_spawned[i], NULL, WNOHANG) == 0)
            kill(g_spawned[i], SIGKILL);
    g_nspawned = 0;
    return 0;
}

static void sleep_ms(int ms)
{
    nanosleep(&(struct timespec){ms / 1000, (long)(ms % 1000) * 1000000L}, NULL);
}

static const char *bin_or_skip(void)
{
    const char *bin = getenv("HOGREC_BIN");
    if (!bin || access(bin, X_OK) != 0)
        TU_SKIP("HOGREC_BIN not set or not executable (run through ctest)");
    return bin;
}

/* Starts node `id` of cluster `name` on Redis url; true once it logged
 * "ready" (listening, the node thread started; /readyz says when it
 * caught up). */
static bool spawn_node_with(tu_child *ch, const char *bin, const char *url, const char *name,
                            const char *id, const char *lease_ms, const char *max_backlog)
{
    const char *argv[] = {bin, "serve", "--port", "0", "--db", "", "--threads", "1",
                          "--max-users", "4096", "--max-items", "4096", "--k", "8",
                          "--negative-sampling", "off", "--redis", url, "--cluster", name,
                          "--node-id", id, "--publish-ms", "10", "--lease-ms", lease_ms,
                          "--max-backlog", max_backlog, NULL};
    tu_child_spawn(ch, (char *const *)argv, CHILD_BOUND, NULL, NULL);
    if (g_nspawned < sizeof g_spawned / sizeof g_spawned[0])
        g_spawned[g_nspawned++] = ch->pid;
    json_t *ready = tu_child_log_until(ch, "ready", NULL, 0);
    json_decref(ready);
    if (ready && ch->port)
        return true;
    kill(ch->pid, SIGKILL);
    tu_child_wait(ch);
    return false;
}

static bool spawn_node(tu_child *ch, const char *bin, const char *url, const char *name,
                       const char *id)
{
    return spawn_node_with(ch, bin, url, name, id, "3000", "0");
}

/* GET /v1/cluster of a node: new, or NULL. */
static json_t *cluster_of(int port)
{
    json_t *o = NULL;
    if (tu_http(port, "GET", "/v1/cluster", NULL, NULL, &o) != 200) {
        json_decref(o);
        return NULL;
    }
    return o;
}

static const char *str_at(json_t *o, const char *a, const char *b)
{
    json_t *v = json_object_get(o, a);
    if (b)
        v = json_object_get(v, b);
    return json_string_value(v) ? json_string_value(v) : "";
}

static hr_estream_id parse_id(const char *text)
{
    hr_estream_id id = {0, 0};
    hr_error err = {{0}, {0}};
    if (hr_estream_id_parse(text, &id, &err) != HR_OK)
        fail_msg("not a stream id: '%s'", text);
    return id;
}

/* Polls until every node answers /readyz 200 and exactly one says it is
 * the leader; returns its index. */
static int wait_leader_of(tu_child *n, int nodes)
{
    for (int round = 0; round < WAIT_SECONDS * 20; round++) {
        int leader = -1, leaders = 0, ready = 0;
        for (int i = 0; i < nodes; i++) {
            if (tu_http(n[i].port, "GET", "/readyz", NULL, NULL, NULL) == 200)
                ready++;
            json_t *o = cluster_of(n[i].port);
            if (o && !strcmp(str_at(o, "role", NULL), "leader")) {
                leader = i;
                leaders++;
            }
            json_decref(o);
        }
        if (ready == nodes && leaders == 1)
            return leader;
        sleep_ms(50);
    }
    fail_msg("no single leader with every node ready within %d s", WAIT_SECONDS);
    return -1;
}

static int wait_leader(tu_child *n) { return wait_leader_of(n, NODES); }

/* A request of EVENTS_PER events of request r (a fixed synthetic world:
 * user, item and label from r and the position). New string. */
static char *events_body(int r)
{
    size_t cap = (size_t)EVENTS_PER * 96 + 16, len = 0;
    char *b = malloc(cap);
    assert_non_null(b);
    len += (size_t)snprintf(b + len, cap - len, "[");
    for (int i = 0; i < EVENTS_PER; i++) {
        unsigned x = (unsigned)(r * EVENTS_PER + i) * 2654435761u;
        len += (size_t)snprintf(b + len, cap - len,
                                "%s{\"user\":\"u%u\",\"item\":\"i%u\",\"label\":%u,"
                                "\"features\":{\"d\":\"v%u\"}}",
                                i ? "," : "", (x >> 8) % USERS, (x >> 16) % ITEMS, (x >> 4) & 1,
                                (x >> 24) % TRAINED_VALUES);
    }
    snprintf(b + len, cap - len, "]");
    return b;
}

/* The score of (u<u>, i<i>) with context d=v<v> (POST /v1/predict);
 * values from TRAINED_VALUES on reach context rows no event trained. */
static double score_at(int port, int u, int i, int v)
{
    char body[160];
    snprintf(body, sizeof body,
             "{\"pairs\":[{\"user\":\"u%d\",\"item\":\"i%d\",\"features\":{\"d\":\"v%d\"}}]}",
             u, i, v);
    json_t *o = NULL;
    long s = tu_http(port, "POST", "/v1/predict", body, NULL, &o);
    assert_int_equal(s, 200);
    double sc = json_real_value(json_array_get(json_object_get(o, "scores"), 0));
    json_decref(o);
    return sc;
}

static void test_leader_and_followers(void **state)
{
    (void)state;
    const char *bin = bin_or_skip();
    unsetenv("HOGREC_REDIS_PASSWORD");
    tu_redis rs = {0};
    tu_redis_start(&rs);
    char url[64];
    snprintf(url, sizeof url, "%s", tu_redis_url(&rs));
    tu_child n[NODES];
    const char *ids[NODES] = {"a", "b", "c"};
    for (int i = 0; i < NODES; i++)
        assert_true(spawn_node(&n[i], bin, url, "t1", ids[i]));
    int leader = wait_leader(n);

    /* round-robin ingest: each 202 names its entry; the last one is the
     * newest (one stream, ids increase) */
    size_t accepted = 0;
    hr_estream_id last = {0, 0};
    for (int r = 0; r < REQUESTS; r++) {
        char *body = events_body(r);
        json_t *o = NULL;
        long s = tu_http(n[r % NODES].port, "POST", "/v1/events", body, NULL, &o);
        free(body);
        assert_int_equal(s, 202);
        accepted += (size_t)json_integer_value(json_object_get(o, "accepted"));
        hr_estream_id id = parse_id(str_at(o, "entry", NULL));
        assert_true(hr_estream_id_cmp(id, last) > 0);
        last = id;
        json_decref(o);
    }
    assert_int_equal(accepted, REQUESTS * EVENTS_PER);

    /* every node's model covers the last entry (the leader: published) */
    for (int i = 0; i < NODES; i++) {
        bool covered = false;
        for (int round = 0; round < WAIT_SECONDS * 20 && !covered; round++) {
            json_t *o = cluster_of(n[i].port);
            covered = o && hr_estream_id_cmp(parse_id(str_at(o, "applied", "covered_entry")),
                                             last) >= 0;
            json_decref(o);
            if (!covered)
                sleep_ms(50);
        }
        if (!covered)
            fail_msg("node %s does not cover the last entry within %d s", ids[i], WAIT_SECONDS);
    }
    /* the leader trained exactly the events acknowledged */
    json_t *stats = NULL;
    assert_int_equal(tu_http(n[leader].port, "GET", "/v1/stats", NULL, NULL, &stats), 200);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(stats, "events"), "trained")),
                     REQUESTS * EVENTS_PER);
    json_decref(stats);
    json_t *lc = cluster_of(n[leader].port);
    assert_non_null(lc);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(lc, "lag"), "events_fed")),
                     REQUESTS * EVENTS_PER);
    assert_int_equal(json_array_size(json_object_get(lc, "members")), NODES);
    json_decref(lc);

    /* the followers score exactly as the leader (rows carried bit for bit);
     * an unknown id scores through the default rows alike, and a context
     * value no event trained through the initial row every node made alike */
    int compared = 0;
    for (int u = 0; u <= USERS; u += 3)
        for (int i = 0; i <= ITEMS; i += 7) {
            int v = (u + i) % (TRAINED_VALUES + 3);
            double want = score_at(n[leader].port, u, i, v);
            for (int k = 0; k < NODES; k++) {
                double got = score_at(n[k].port, u, i, v);
                if (got != want)
                    fail_msg("u%d i%d d=v%d: node %s scores %.17g, the leader %.17g", u, i, v,
                             ids[k], got, want);
            }
            compared++;
        }
    assert_true(compared > 50);

    /* one event id posted to two nodes is applied once */
    const char *dup = "[{\"user\":\"u1\",\"item\":\"i1\",\"id\":\"dup-1\"}]";
    int fa = (leader + 1) % NODES, fb = (leader + 2) % NODES;
    json_t *o1 = NULL, *o2 = NULL;
    assert_int_equal(tu_http(n[fa].port, "POST", "/v1/events", dup, NULL, &o1), 202);
    assert_int_equal(tu_http(n[fb].port, "POST", "/v1/events", dup, NULL, &o2), 202);
    assert_int_equal(json_integer_value(json_object_get(o1, "accepted")), 1);
    assert_int_equal(json_integer_value(json_object_get(o1, "duplicates")), 0);
    assert_int_equal(json_integer_value(json_object_get(o2, "accepted")), 0);
    assert_int_equal(json_integer_value(json_object_get(o2, "duplicates")), 1);
    assert_null(json_object_get(o2, "entry"));
    hr_estream_id dup_entry = parse_id(str_at(o1, "entry", NULL));
    json_decref(o1);
    json_decref(o2);
    bool trained = false;
    for (int round = 0; round < WAIT_SECONDS * 20 && !trained; round++) {
        json_t *o = cluster_of(n[leader].port);
        trained = o && hr_estream_id_cmp(parse_id(str_at(o, "applied", "covered_entry")),
                                         dup_entry) >= 0;
        json_decref(o);
        if (!trained)
            sleep_ms(50);
    }
    assert_true(trained);
    assert_int_equal(tu_http(n[leader].port, "GET", "/v1/stats", NULL, NULL, &stats), 200);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(stats, "events"), "trained")),
                     REQUESTS * EVENTS_PER + 1);
    json_decref(stats);

    /* Redis down: a follower answers 503 with a JSON error, never 202 */
    tu_redis_kill(&rs, SIGKILL);
    json_t *e = NULL;
    long s = tu_http(n[fa].port, "POST", "/v1/events", "{\"user\":\"u2\",\"item\":\"i2\"}", NULL, &e);
    assert_int_equal(s, 503);
    assert_string_equal(str_at(json_object_get(e, "error"), "code", NULL), "unavailable");
    assert_true(strlen(str_at(json_object_get(e, "error"), "message", NULL)) > 0);
    json_decref(e);

    /* every node stops cleanly on SIGTERM, Redis down or not */
    for (int i = 0; i < NODES; i++)
        kill(n[i].pid, SIGTERM);
    for (int i = 0; i < NODES; i++) {
        int status = tu_child_wait(&n[i]);
        if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0))
            fail_msg("node %s did not exit 0 on SIGTERM (status %d)", ids[i], status);
    }
    tu_redis_stop(&rs);
}

/* max_backlog: while the leader is stopped (SIGSTOP, well within its
 * lease) the entries it has not covered pile up; past the bound a POST on
 * a follower is refused whole with 429 backlog_full and appends nothing;
 * once the leader runs again and covers them, it is accepted. */
static void test_backlog_bound(void **state)
{
    (void)state;
    const char *bin = bin_or_skip();
    tu_redis rs = {0};
    tu_redis_start(&rs);
    char url[64];
    snprintf(url, sizeof url, "%s", tu_redis_url(&rs));
    tu_child n[2];
    assert_true(spawn_node_with(&n[0], bin, url, "t2", "a", "60000", "2"));
    assert_true(spawn_node_with(&n[1], bin, url, "t2", "b", "60000", "2"));
    int leader = wait_leader_of(n, 2), f = 1 - leader;
    kill(n[leader].pid, SIGSTOP);
    const char *ev = "{\"user\":\"u1\",\"item\":\"i1\"}";
    for (int i = 0; i < 3; i++)
        assert_int_equal(tu_http(n[f].port, "POST", "/v1/events", ev, NULL, NULL), 202);
    json_t *o = NULL;
    assert_int_equal(tu_http(n[f].port, "POST", "/v1/events", ev, NULL, &o), 429);
    assert_string_equal(str_at(json_object_get(o, "error"), "code", NULL), "backlog_full");
    json_decref(o);
    kill(n[leader].pid, SIGCONT);
    long s = 0;
    for (int round = 0; round < WAIT_SECONDS * 20 && s != 202; round++) {
        s = tu_http(n[f].port, "POST", "/v1/events", ev, NULL, NULL);
        if (s != 202) {
            assert_int_equal(s, 429);
            sleep_ms(50);
        }
    }
    assert_int_equal(s, 202);
    json_t *st = NULL;
    for (int round = 0; round < WAIT_SECONDS * 20; round++) {
        json_decref(st);
        st = NULL;
        assert_int_equal(tu_http(n[leader].port, "GET", "/v1/stats", NULL, NULL, &st), 200);
        if (json_integer_value(json_object_get(json_object_get(st, "events"), "trained")) >= 4)
            break;
        sleep_ms(50);
    }
    /* the three accepted before the refusal and the one after: no more */
    assert_int_equal(json_integer_value(json_object_get(json_object_get(st, "events"), "trained")), 4);
    json_decref(st);
    for (int i = 0; i < 2; i++)
        kill(n[i].pid, SIGTERM);
    for (int i = 0; i < 2; i++) {
        int status = tu_child_wait(&n[i]);
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    tu_redis_stop(&rs);
}

/* A node refuses to start in cluster mode with a local database (this
 * version keeps none) and says so. */
static void test_refuses_db(void **state)
{
    (void)state;
    const char *bin = bin_or_skip();
    tu_redis rs = {0};
    tu_redis_start(&rs);
    char url[64];
    snprintf(url, sizeof url, "%s", tu_redis_url(&rs));
    const char *argv[] = {bin, "serve", "--port", "0", "--db", "x.db", "--redis", url, NULL};
    tu_child ch;
    tu_child_spawn(&ch, (char *const *)argv, CHILD_BOUND, NULL, NULL);
    json_t *line = tu_child_log_until(&ch, "cannot open", NULL, 0);
    assert_non_null(line);
    assert_string_equal(json_string_value(json_object_get(line, "field")), "db");
    json_decref(line);
    int status = tu_child_wait(&ch);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 1);
    tu_redis_stop(&rs);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_leader_and_followers, kill_leftovers),
        cmocka_unit_test_teardown(test_backlog_bound, kill_leftovers),
        cmocka_unit_test_teardown(test_refuses_db, kill_leftovers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

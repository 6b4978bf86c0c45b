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
 * bound (429), and a standalone database refused in cluster mode.
 * And failover: the leader killed (kill -9) mid-ingest, a follower takes
 * over and every event posted is in the survivors' model exactly once; a
 * paused leader (SIGSTOP past its lease) steps down without publishing.
 *
 * Waits are bounded polls for a state (the nodes run on a shared machine);
 * nothing asserts a duration.
 */
/* ctest-labels: concurrent */
#include "testutil.h"

#include <curl/curl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "hogrec/estream.h"
#include "hogrec/redis.h"

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
    return tu_node_spawn(ch, argv, CHILD_BOUND);
}

static bool spawn_node(tu_child *ch, const char *bin, const char *url, const char *name,
                       const char *id)
{
    return spawn_node_with(ch, bin, url, name, id, "3000", "0");
}

static int wait_leader(tu_child *n) { return tu_wait_leader(n, NODES, WAIT_SECONDS); }

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

/* GET /v1/recommend on node `port` for `user` (k items, exclude_seen),
 * once the node's model and serving state cover entry `last` (min_seq;
 * asked again while it answers "applied": false, bounded): the answer's
 * items as one text "item,item,..." (new) and whether it is the popular
 * fallback. */
static char *recommend_at(int port, const char *user, int k, hr_estream_id last, bool *fallback)
{
    char path[200], e[HR_ESTREAM_ID_LEN];
    snprintf(path, sizeof path, "/v1/recommend?user=%s&k=%d&exclude_seen=true&min_seq=%s", user,
             k, hr_estream_id_format(last, e));
    for (int round = 0; round < WAIT_SECONDS * 2; round++) {
        json_t *o = NULL;
        long s = tu_http(port, "GET", path, NULL, NULL, &o);
        if (s != 200)
            fail_msg("GET %s on port %d answered %ld", path, port, s);
        if (!json_is_true(json_object_get(o, "applied"))) {
            json_decref(o);
            continue; /* the wait (max_wait_ms) ended first: ask again */
        }
        json_t *items = json_object_get(o, "items");
        size_t cap = json_array_size(items) * 16 + 1, len = 0;
        char *text = calloc(cap, 1);
        assert_non_null(text);
        for (size_t i = 0; i < json_array_size(items); i++)
            len += (size_t)snprintf(text + len, cap - len, "%s%s", i ? "," : "",
                                    json_string_value(json_object_get(json_array_get(items, i),
                                                                      "item")));
        *fallback = json_object_get(o, "fallback") != NULL;
        json_decref(o);
        return text;
    }
    fail_msg("GET %s on port %d: min_seq never applied", path, port);
    return NULL;
}

/* The serving state alike on every node: for sampled users (and users
 * the model does not know, who get the popular fallback), GET
 * /v1/recommend with exclude_seen answers the same items on each node as
 * on node `ref`, once each covers entry `last`. Returns the lists
 * compared. */
static int compare_recommend(tu_child *n, int nodes, int ref, hr_estream_id last,
                             const char *what)
{
    int compared = 0;
    for (int u = -2; u < USERS; u += 3) {
        char user[32];
        if (u < 0)
            snprintf(user, sizeof user, "cold%d", -u); /* never posted */
        else
            snprintf(user, sizeof user, "u%d", u);
        bool fb_want = false;
        char *want = recommend_at(n[ref].port, user, 10, last, &fb_want);
        assert_true(strlen(want) > 0);
        assert_int_equal(fb_want, u < 0);
        for (int k = 0; k < nodes; k++) {
            if (k == ref)
                continue;
            bool fb = false;
            char *got = recommend_at(n[k].port, user, 10, last, &fb);
            if (strcmp(got, want) != 0 || fb != fb_want)
                fail_msg("%s: recommend for %s: node %d answers [%s]%s, node %d [%s]%s", what,
                         user, k, got, fb ? " (fallback)" : "", ref, want,
                         fb_want ? " (fallback)" : "");
            free(got);
            compared++;
        }
        free(want);
    }
    return compared;
}

static void test_leader_and_followers(void **state)
{
    (void)state;
    const char *bin = tu_hogrec_bin();
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
        hr_estream_id id = tu_stream_id(tu_json_str(o, "entry", NULL));
        assert_true(hr_estream_id_cmp(id, last) > 0);
        last = id;
        json_decref(o);
    }
    assert_int_equal(accepted, REQUESTS * EVENTS_PER);

    /* every node's model covers the last entry (the leader: published) */
    for (int i = 0; i < NODES; i++)
        if (!tu_wait_covered(n[i].port, last, WAIT_SECONDS))
            fail_msg("node %s does not cover the last entry within %d s", ids[i], WAIT_SECONDS);
    /* the leader trained exactly the events acknowledged */
    json_t *stats = NULL;
    assert_int_equal(tu_http(n[leader].port, "GET", "/v1/stats", NULL, NULL, &stats), 200);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(stats, "events"), "trained")),
                     REQUESTS * EVENTS_PER);
    json_decref(stats);
    json_t *lc = tu_cluster_of(n[leader].port);
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

    /* the serving state (recent items for exclude_seen, popularity for
     * the cold-start fallback) is the leader's on every node */
    assert_true(compare_recommend(n, NODES, leader, last, "round-robin") >= 2 * (USERS / 3));

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
    hr_estream_id dup_entry = tu_stream_id(tu_json_str(o1, "entry", NULL));
    json_decref(o1);
    json_decref(o2);
    bool trained = false;
    for (int round = 0; round < WAIT_SECONDS * 20 && !trained; round++) {
        json_t *o = tu_cluster_of(n[leader].port);
        trained = o && hr_estream_id_cmp(tu_stream_id(tu_json_str(o, "applied", "covered_entry")),
                                         dup_entry) >= 0;
        json_decref(o);
        if (!trained)
            tu_sleep_ms(50);
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
    assert_string_equal(tu_json_str(json_object_get(e, "error"), "code", NULL), "unavailable");
    assert_true(strlen(tu_json_str(json_object_get(e, "error"), "message", NULL)) > 0);
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
    const char *bin = tu_hogrec_bin();
    tu_redis rs = {0};
    tu_redis_start(&rs);
    char url[64];
    snprintf(url, sizeof url, "%s", tu_redis_url(&rs));
    tu_child n[2];
    assert_true(spawn_node_with(&n[0], bin, url, "t2", "a", "60000", "2"));
    assert_true(spawn_node_with(&n[1], bin, url, "t2", "b", "60000", "2"));
    int leader = tu_wait_leader(n, 2, WAIT_SECONDS), f = 1 - leader;
    kill(n[leader].pid, SIGSTOP);
    const char *ev = "{\"user\":\"u1\",\"item\":\"i1\"}";
    for (int i = 0; i < 3; i++)
        assert_int_equal(tu_http(n[f].port, "POST", "/v1/events", ev, NULL, NULL), 202);
    json_t *o = NULL;
    assert_int_equal(tu_http(n[f].port, "POST", "/v1/events", ev, NULL, &o), 429);
    assert_string_equal(tu_json_str(json_object_get(o, "error"), "code", NULL), "backlog_full");
    json_decref(o);
    kill(n[leader].pid, SIGCONT);
    long s = 0;
    for (int round = 0; round < WAIT_SECONDS * 20 && s != 202; round++) {
        s = tu_http(n[f].port, "POST", "/v1/events", ev, NULL, NULL);
        if (s != 202) {
            assert_int_equal(s, 429);
            tu_sleep_ms(50);
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
        tu_sleep_ms(50);
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

/* ---- failover (issue cases 2 and 5) ---- */

#define FO_LEASE_MS 1000  /* the nodes' lease in the failover tests */
#define FO_REQUESTS 80    /* POSTs of EVENTS_PER events with unique ids */
#define FO_CLIENTS 2
#define FO_MARGIN_MS 10000 /* slack for a slow shared machine (see below) */

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Request r of events_body, each event with the id "<tag>-<r>-<i>". New
 * string. */
static char *events_body_ids(const char *tag, int r)
{
    char *plain = events_body(r);
    size_t cap = strlen(plain) + (size_t)EVENTS_PER * 48 + 16, len = 0;
    char *b = malloc(cap);
    assert_non_null(b);
    int i = 0;
    for (const char *p = plain; *p; p++) {
        b[len++] = *p;
        if (*p == '{' && p[1] == '"' && !strncmp(p + 1, "\"user\"", 6))
            len += (size_t)snprintf(b + len, cap - len, "\"id\":\"%s-%d-%d\",", tag, r, i++);
    }
    b[len] = 0;
    free(plain);
    assert_int_equal(i, EVENTS_PER);
    return b;
}

/* A client thread: posts requests first, first + FO_CLIENTS, ... to the
 * ports round-robin; a request answered with anything but 202 is sent again
 * (same ids) until a 202, so each event ends up accepted once, or a
 * duplicate because an earlier attempt reached the stream. No cmocka
 * assertion here (not thread-safe): failures are counted. */
typedef struct {
    const char *tag;
    int first;
    int ports[2];
    atomic_int *done;     /* requests answered 202, all clients */
    uint64_t accepted, duplicates, retries, failed;
} fo_client;

static void *fo_client_main(void *arg)
{
    fo_client *cl = arg;
    for (int r = cl->first, k = 0; r < FO_REQUESTS; r += FO_CLIENTS, k++) {
        char *body = events_body_ids(cl->tag, r);
        bool ok = false;
        for (int attempt = 0; attempt < 400 && !ok; attempt++) {
            json_t *o = NULL;
            long st = tu_http(cl->ports[(k + attempt) % 2], "POST", "/v1/events", body, NULL, &o);
            if (st == 202) {
                cl->accepted += (uint64_t)json_integer_value(json_object_get(o, "accepted"));
                cl->duplicates += (uint64_t)json_integer_value(json_object_get(o, "duplicates"));
                ok = true;
            } else {
                cl->retries++;
                tu_sleep_ms(50);
            }
            json_decref(o);
        }
        free(body);
        if (!ok)
            cl->failed++;
        atomic_fetch_add(cl->done, 1);
    }
    return NULL;
}

/* Scores of sampled pairs (with context) on node a equal node b's; returns
 * the pairs compared. */
static int compare_scores(int port_a, int port_b, const char *what)
{
    int compared = 0;
    for (int u = 0; u <= USERS; u += 3)
        for (int i = 0; i <= ITEMS; i += 7) {
            int v = (u + i) % (TRAINED_VALUES + 3);
            double want = score_at(port_a, u, i, v), got = score_at(port_b, u, i, v);
            if (got != want)
                fail_msg("%s: u%d i%d d=v%d scores %.17g and %.17g", what, u, i, v, want, got);
            compared++;
        }
    return compared;
}

/* Polls the nodes (except `skip`) until one of them is the leader and
 * answers /readyz 200; returns its index, or -1 at the bound. *leader_ms
 * gets when it first said it is the leader, *ready_ms when it was ready
 * (mono_ms). */
static int wait_new_leader(tu_child *n, int nodes, int skip, int64_t min_epoch,
                           uint64_t *leader_ms, uint64_t *ready_ms)
{
    *leader_ms = 0;
    for (int round = 0; round < WAIT_SECONDS * 50; round++) {
        for (int i = 0; i < nodes; i++) {
            if (i == skip)
                continue;
            json_t *o = tu_cluster_of(n[i].port);
            bool lead = o && !strcmp(tu_json_str(o, "role", NULL), "leader") &&
                        json_integer_value(json_object_get(o, "epoch")) >= min_epoch;
            json_decref(o);
            if (!lead)
                continue;
            if (!*leader_ms)
                *leader_ms = mono_ms();
            if (tu_http(n[i].port, "GET", "/readyz", NULL, NULL, NULL) == 200) {
                *ready_ms = mono_ms();
                return i;
            }
        }
        tu_sleep_ms(20);
    }
    return -1;
}

static int64_t epoch_of(int port)
{
    json_t *o = tu_cluster_of(port);
    int64_t e = o ? (int64_t)json_integer_value(json_object_get(o, "epoch")) : -1;
    json_decref(o);
    return e;
}

/* Case 2: kill -9 of the leader mid-ingest. Two client threads post
 * events with unique ids round-robin to the two followers; a third of the
 * way in the leader is killed (SIGKILL, by pid). A follower becomes the
 * leader once the lease expires and continues from the entry of the last
 * delta it applied, so the events the dead leader trained but never
 * published are trained again. Once both survivors cover the stream's
 * last entry, each one's model counts every event exactly once (the item
 * rows' event counts, negative sampling off, sum to the events posted: a
 * new leader that read the stream from its start, or from an entry the
 * dead leader's rows had already gone past, counts some twice) and their
 * scores are equal. */
static void test_failover_kill_leader(void **state)
{
    (void)state;
    const char *bin = tu_hogrec_bin();
    unsetenv("HOGREC_REDIS_PASSWORD");
    tu_redis rs = {0};
    tu_redis_start(&rs);
    char url[64], lease[16];
    snprintf(url, sizeof url, "%s", tu_redis_url(&rs));
    snprintf(lease, sizeof lease, "%d", FO_LEASE_MS);
    tu_child n[NODES];
    const char *ids[NODES] = {"a", "b", "c"};
    for (int i = 0; i < NODES; i++)
        assert_true(spawn_node_with(&n[i], bin, url, "t3", ids[i], lease, "0"));
    int leader = wait_leader(n);
    int64_t epoch0 = epoch_of(n[leader].port);
    int f1 = (leader + 1) % NODES, f2 = (leader + 2) % NODES;

    atomic_int done = 0;
    fo_client cl[FO_CLIENTS];
    pthread_t th[FO_CLIENTS];
    for (int t = 0; t < FO_CLIENTS; t++) {
        cl[t] = (fo_client){.tag = "k", .first = t, .ports = {n[f1].port, n[f2].port},
                            .done = &done};
        if (t == 1) { /* the other thread starts on the other follower */
            cl[t].ports[0] = n[f2].port;
            cl[t].ports[1] = n[f1].port;
        }
        assert_int_equal(pthread_create(&th[t], NULL, fo_client_main, &cl[t]), 0);
    }
    for (int round = 0; round < WAIT_SECONDS * 100 && atomic_load(&done) < FO_REQUESTS / 3; round++)
        tu_sleep_ms(10);
    uint64_t killed_ms = mono_ms();
    kill(n[leader].pid, SIGKILL);
    tu_child_wait(&n[leader]);
    uint64_t leader_ms = 0, ready_ms = 0;
    int nl = wait_new_leader(n, NODES, leader, epoch0 + 1, &leader_ms, &ready_ms);
    for (int t = 0; t < FO_CLIENTS; t++)
        pthread_join(th[t], NULL);
    if (nl < 0)
        fail_msg("no survivor became a ready leader within %d s", WAIT_SECONDS);
    int other = nl == f1 ? f2 : f1;
    /* The bound: a new leader within the lease plus a second. The
     * margin is for this slow shared machine (2 cores, several builds):
     * a correctness bound (a follower does take over, without a restart),
     * not a benchmark; the figures measured are printed. */
    uint64_t took = leader_ms - killed_ms, ready = ready_ms - killed_ms;
    fprintf(stderr, "failover: kill -9 -> %s leader %llu ms, ready %llu ms (lease %d ms)\n",
            ids[nl], (unsigned long long)took, (unsigned long long)ready, FO_LEASE_MS);
    assert_true(took <= FO_LEASE_MS + 1000 + FO_MARGIN_MS);
    assert_true(epoch_of(n[nl].port) > epoch0);

    uint64_t accepted = 0, duplicates = 0, retries = 0;
    for (int t = 0; t < FO_CLIENTS; t++) {
        assert_int_equal(cl[t].failed, 0);
        accepted += cl[t].accepted;
        duplicates += cl[t].duplicates;
        retries += cl[t].retries;
    }
    fprintf(stderr, "failover: %llu events accepted, %llu duplicates on a resend, %llu resends\n",
            (unsigned long long)accepted, (unsigned long long)duplicates,
            (unsigned long long)retries);
    /* every event is accepted once, or a duplicate of an earlier attempt
     * that reached the stream (only a resend can be one: ids are unique) */
    assert_int_equal(accepted + duplicates, FO_REQUESTS * EVENTS_PER);
    if (retries == 0)
        assert_int_equal(duplicates, 0);

    hr_estream_id last = tu_stream_last(url, "t3");
    if (!tu_wait_covered(n[nl].port, last, WAIT_SECONDS) ||
        !tu_wait_covered(n[other].port, last, WAIT_SECONDS))
        fail_msg("the survivors do not cover the stream's last entry within %d s", WAIT_SECONDS);
    long long want = FO_REQUESTS * EVENTS_PER;
    long long cnt_nl = tu_events_counted(n[nl].port), cnt_o = tu_events_counted(n[other].port);
    if (cnt_nl != want || cnt_o != want)
        fail_msg("events in the model: new leader %lld, follower %lld; posted %lld", cnt_nl, cnt_o,
                 want);
    assert_true(compare_scores(n[nl].port, n[other].port, "survivors") > 50);
    /* the new leader took over the serving state it kept as a follower */
    tu_child surv[2] = {n[nl], n[other]};
    assert_true(compare_recommend(surv, 2, 0, last, "survivors") >= USERS / 3);

    kill(n[nl].pid, SIGTERM);
    kill(n[other].pid, SIGTERM);
    assert_true(WIFEXITED(tu_child_wait(&n[nl])));
    assert_true(WIFEXITED(tu_child_wait(&n[other])));
    tu_redis_stop(&rs);
}

/* Posts requests [from, to) of tag to the ports round-robin; each 202. */
static void post_range(const char *tag, int from, int to, const int *ports, int nports)
{
    for (int r = from; r < to; r++) {
        char *body = events_body_ids(tag, r);
        long s = tu_http(ports[r % nports], "POST", "/v1/events", body, NULL, NULL);
        free(body);
        assert_int_equal(s, 202);
    }
}

/* Case 5: the paused leader. The leader is stopped (SIGSTOP) past its
 * lease; a follower takes the lease with a newer epoch and publishes.
 * The old leader, continued (SIGCONT) while events keep coming, must see
 * the newer epoch and step down without publishing: no delta of its epoch
 * follows the new epoch's first one in the delta stream (read here with a
 * Redis client), its /v1/cluster says stepped_down, and the remaining
 * follower scores as the new leader does. */
static void test_paused_leader_steps_down(void **state)
{
    (void)state;
    const char *bin = tu_hogrec_bin();
    unsetenv("HOGREC_REDIS_PASSWORD");
    tu_redis rs = {0};
    tu_redis_start(&rs);
    char url[64], lease[16];
    snprintf(url, sizeof url, "%s", tu_redis_url(&rs));
    snprintf(lease, sizeof lease, "%d", FO_LEASE_MS);
    tu_child n[NODES];
    const char *ids[NODES] = {"a", "b", "c"};
    for (int i = 0; i < NODES; i++)
        assert_true(spawn_node_with(&n[i], bin, url, "t5", ids[i], lease, "0"));
    int old = wait_leader(n);
    int64_t epoch0 = epoch_of(n[old].port);
    int fol[2] = {(old + 1) % NODES, (old + 2) % NODES};
    int ports[2] = {n[fol[0]].port, n[fol[1]].port};
    json_t *oc = tu_cluster_of(n[old].port);
    assert_non_null(oc);
    char deltas_key[160];
    snprintf(deltas_key, sizeof deltas_key, "%s", tu_json_str(oc, "delta_stream", NULL));
    json_decref(oc);

    /* the old leader trains and publishes some, then stops past its lease */
    post_range("p", 0, 10, ports, 2);
    assert_true(tu_wait_covered(n[old].port, tu_stream_last(url, "t5"), WAIT_SECONDS));
    kill(n[old].pid, SIGSTOP);
    post_range("p", 10, 20, ports, 2); /* appended while it is stopped */
    uint64_t leader_ms = 0, ready_ms = 0;
    int nl = wait_new_leader(n, NODES, old, epoch0 + 1, &leader_ms, &ready_ms);
    if (nl < 0)
        fail_msg("no follower took the lease of the stopped leader within %d s", WAIT_SECONDS);
    int other = nl == fol[0] ? fol[1] : fol[0];
    int64_t epoch1 = epoch_of(n[nl].port);
    assert_true(epoch1 > epoch0);
    /* the new epoch's first delta exists before the old leader runs again */
    assert_true(tu_wait_covered(n[nl].port, tu_stream_last(url, "t5"), WAIT_SECONDS));

    kill(n[old].pid, SIGCONT);
    post_range("p", 20, 40, ports, 2); /* what the old leader would read */
    bool stepped = false;
    for (int round = 0; round < WAIT_SECONDS * 20 && !stepped; round++) {
        json_t *o = tu_cluster_of(n[old].port);
        stepped = o && !strcmp(tu_json_str(o, "role", NULL), "stepped_down");
        json_decref(o);
        if (!stepped)
            tu_sleep_ms(50);
    }
    if (!stepped)
        fail_msg("the paused leader %s did not step down within %d s", ids[old], WAIT_SECONDS);
    assert_int_not_equal(tu_http(n[old].port, "GET", "/readyz", NULL, NULL, NULL), 200);
    hr_estream_id last = tu_stream_last(url, "t5");
    if (!tu_wait_covered(n[nl].port, last, WAIT_SECONDS) ||
        !tu_wait_covered(n[other].port, last, WAIT_SECONDS))
        fail_msg("the new leader and the follower do not cover the last entry within %d s",
                 WAIT_SECONDS);

    /* the delta stream: epochs never go back (nothing of epoch0 after the
     * first delta of a newer epoch), and both epochs published */
    hr_redis *r = NULL;
    hr_error err = {{0}, {0}};
    if (hr_redis_open(url, NULL, &r, &err) != HR_OK)
        fail_msg("cannot connect to redis: %s", err.message);
    redisReply *rep = NULL;
    if (hr_redis_call(r, &rep, &err, "XRANGE", deltas_key, "-", "+", NULL) != HR_OK)
        fail_msg("XRANGE %s: %s", deltas_key, err.message);
    assert_int_equal(rep->type, REDIS_REPLY_ARRAY);
    long long prev = 0;
    size_t of_old = 0, of_new = 0;
    for (size_t i = 0; i < rep->elements; i++) {
        redisReply *e = rep->element[i], *f = e->element[1];
        long long ep = -1;
        for (size_t j = 0; j + 1 < f->elements; j += 2)
            if (!strcmp(f->element[j]->str, "e"))
                ep = strtoll(f->element[j + 1]->str, NULL, 10);
        if (ep < prev)
            fail_msg("delta %s of epoch %lld after one of epoch %lld", e->element[0]->str, ep,
                     prev);
        prev = ep;
        of_old += ep == epoch0;
        of_new += ep == epoch1;
    }
    freeReplyObject(rep);
    hr_redis_destroy(r);
    assert_true(of_old > 0);
    assert_true(of_new > 0);
    assert_int_equal(prev, epoch1);
    assert_int_equal(epoch_of(n[nl].port), epoch1);
    assert_true(compare_scores(n[nl].port, n[other].port, "new leader and follower") > 50);

    for (int i = 0; i < NODES; i++)
        kill(n[i].pid, SIGTERM);
    for (int i = 0; i < NODES; i++)
        assert_true(WIFEXITED(tu_child_wait(&n[i])));
    tu_redis_stop(&rs);
}

/* ---- the schedule across nodes ---- */

#define ADMIN_TOKEN "test-admin-token"
#define SAMPLE_USERS 8
#define SAMPLE_ITEMS 8

/* Scores of a fixed sample of trained pairs on a node, into out. */
static void sample_scores(int port, double out[SAMPLE_USERS * SAMPLE_ITEMS])
{
    for (int u = 0; u < SAMPLE_USERS; u++)
        for (int i = 0; i < SAMPLE_ITEMS; i++)
            out[u * SAMPLE_ITEMS + i] = score_at(port, u, i, u % TRAINED_VALUES);
}

/* The schedule version of a node (GET /v1/admin/schedule), -1 on error. */
static long long schedule_version_of(int port, json_t **sched)
{
    json_t *o = NULL;
    long s = tu_http(port, "GET", "/v1/admin/schedule", NULL, "Bearer " ADMIN_TOKEN, &o);
    long long v = s == 200 ? (long long)json_integer_value(json_object_get(o, "version")) : -1;
    if (sched)
        *sched = o;
    else
        json_decref(o);
    return v;
}

/* Polls every node until its schedule is version v and its history ends
 * with v; false at the bound. */
static bool wait_schedule_everywhere(tu_child *n, long long v)
{
    for (int i = 0; i < NODES; i++) {
        bool seen = false;
        for (int round = 0; round < WAIT_SECONDS * 20 && !seen; round++) {
            json_t *h = NULL;
            seen = schedule_version_of(n[i].port, NULL) == v &&
                   tu_http(n[i].port, "GET", "/v1/admin/schedule/history", NULL,
                           "Bearer " ADMIN_TOKEN, &h) == 200 &&
                   json_array_size(json_object_get(h, "history")) == (size_t)v &&
                   json_integer_value(json_object_get(
                       json_array_get(json_object_get(h, "history"), (size_t)v - 1), "version")) ==
                       v;
            json_decref(h);
            if (!seen)
                tu_sleep_ms(50);
        }
        if (!seen)
            return false;
    }
    return true;
}

/* A schedule change sent to a follower takes effect on the leader and is
 * visible on every node with the same version and history. First every
 * rate multiplier 0, sent to one follower: once every node shows version
 * 2, events trained after it leave the leader's scores bit for bit as
 * they were (a leader still on version 1 would move them). Then the
 * multipliers back to 1 on the other follower (version 3): the next
 * events move the scores again, and the followers score as the leader. */
static void test_schedule_across_nodes(void **state)
{
    (void)state;
    const char *bin = tu_hogrec_bin();
    unsetenv("HOGREC_REDIS_PASSWORD");
    setenv("HOGREC_ADMIN_TOKEN", ADMIN_TOKEN, 1);
    tu_redis rs = {0};
    tu_redis_start(&rs);
    char url[64];
    snprintf(url, sizeof url, "%s", tu_redis_url(&rs));
    tu_child n[NODES];
    const char *ids[NODES] = {"a", "b", "c"};
    for (int i = 0; i < NODES; i++)
        assert_true(spawn_node(&n[i], bin, url, "t6", ids[i]));
    unsetenv("HOGREC_ADMIN_TOKEN");
    int leader = wait_leader(n), f1 = (leader + 1) % NODES, f2 = (leader + 2) % NODES;
    int ports[2] = {n[f1].port, n[f2].port};
    for (int i = 0; i < NODES; i++)
        assert_int_equal(schedule_version_of(n[i].port, NULL), 1);

    post_range("s", 0, 6, ports, 2);
    hr_estream_id last = tu_stream_last(url, "t6");
    assert_true(tu_wait_covered(n[leader].port, last, WAIT_SECONDS));
    static double before[SAMPLE_USERS * SAMPLE_ITEMS], after[SAMPLE_USERS * SAMPLE_ITEMS];
    sample_scores(n[leader].port, before);

    /* version 2 on follower 1: no learning */
    const char *frozen = "{\"type\":\"constant\",\"eta0\":0.2,\"multipliers\":{\"global\":0,"
                         "\"bias\":0,\"user\":0,\"item\":0,\"context\":0}}";
    json_t *o = NULL;
    assert_int_equal(tu_http(n[f1].port, "PUT", "/v1/admin/schedule", frozen,
                             "Bearer " ADMIN_TOKEN, &o), 200);
    assert_int_equal(json_integer_value(json_object_get(o, "version")), 2);
    json_decref(o);
    /* a bad schedule is refused as in standalone mode and changes nothing */
    assert_int_equal(tu_http(n[f2].port, "PUT", "/v1/admin/schedule",
                             "{\"type\":\"constant\",\"eta0\":-1}", "Bearer " ADMIN_TOKEN, NULL),
                     400);
    if (!wait_schedule_everywhere(n, 2))
        fail_msg("schedule version 2 is not on every node within %d s", WAIT_SECONDS);
    json_t *ls = NULL;
    assert_int_equal(schedule_version_of(n[leader].port, &ls), 2);
    assert_true(json_real_value(json_object_get(json_object_get(ls, "multipliers"), "item")) == 0.0);
    json_decref(ls);
    long long counted = tu_events_counted(n[leader].port);
    post_range("s", 6, 12, ports, 2);
    last = tu_stream_last(url, "t6");
    assert_true(tu_wait_covered(n[leader].port, last, WAIT_SECONDS));
    assert_true(tu_events_counted(n[leader].port) > counted); /* it did train them */
    sample_scores(n[leader].port, after);
    for (int k = 0; k < SAMPLE_USERS * SAMPLE_ITEMS; k++)
        if (after[k] != before[k])
            fail_msg("pair %d: the leader's score moved (%.17g -> %.17g) under multipliers 0", k,
                     before[k], after[k]);

    /* version 3 on follower 2: learning again */
    const char *live = "{\"type\":\"constant\",\"eta0\":0.2}";
    assert_int_equal(tu_http(n[f2].port, "PUT", "/v1/admin/schedule", live,
                             "Bearer " ADMIN_TOKEN, &o), 200);
    assert_int_equal(json_integer_value(json_object_get(o, "version")), 3);
    json_decref(o);
    if (!wait_schedule_everywhere(n, 3))
        fail_msg("schedule version 3 is not on every node within %d s", WAIT_SECONDS);
    post_range("s", 12, 18, ports, 2);
    last = tu_stream_last(url, "t6");
    for (int i = 0; i < NODES; i++)
        assert_true(tu_wait_covered(n[i].port, last, WAIT_SECONDS));
    sample_scores(n[leader].port, after);
    int moved = 0;
    for (int k = 0; k < SAMPLE_USERS * SAMPLE_ITEMS; k++)
        moved += after[k] != before[k];
    assert_true(moved > 0);
    assert_true(compare_scores(n[leader].port, n[f1].port, "leader and follower") > 50);

    for (int i = 0; i < NODES; i++)
        kill(n[i].pid, SIGTERM);
    for (int i = 0; i < NODES; i++)
        assert_true(WIFEXITED(tu_child_wait(&n[i])));
    tu_redis_stop(&rs);
}

/* ---- read-your-writes across nodes ---- */

/* GET path on port: status; *o the body. */
static long get_json(int port, const char *path, json_t **o)
{
    return tu_http(port, "GET", path, NULL, NULL, o);
}

/* /v1/stats' cluster.<key> of a node as an integer (-1 when absent). */
static long long cluster_stat(int port, const char *key)
{
    json_t *o = NULL;
    long long v = -1;
    if (get_json(port, "/v1/stats", &o) == 200) {
        json_t *x = json_object_get(json_object_get(o, "cluster"), key);
        v = json_is_integer(x) ? (long long)json_integer_value(x) : json_is_real(x) ? 0 : -1;
    }
    json_decref(o);
    return v;
}

static size_t on_text(char *p, size_t size, size_t n, void *arg)
{
    char **buf = arg;
    size_t old = *buf ? strlen(*buf) : 0, add = size * n;
    char *b = realloc(*buf, old + add + 1);
    if (!b)
        return 0;
    memcpy(b + old, p, add);
    b[old + add] = 0;
    *buf = b;
    return add;
}

/* GET path on port as text: new string, or NULL. */
static char *http_text(int port, const char *path)
{
    CURL *c = curl_easy_init();
    if (!c)
        return NULL;
    char url[256], *text = NULL;
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_text);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &text);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 300L);
    if (curl_easy_perform(c) != CURLE_OK) {
        free(text);
        text = NULL;
    }
    curl_easy_cleanup(c);
    return text;
}

/* The value of sample `name` in a node's /metrics (-1 when absent). */
static double prom_value(int port, const char *name)
{
    char *text = http_text(port, "/metrics");
    double v = -1;
    size_t n = strlen(name);
    for (const char *p = text; p && *p;) {
        if (!strncmp(p, name, n) && p[n] == ' ')
            v = strtod(p + n + 1, NULL);
        const char *nl = strchr(p, '\n');
        p = nl ? nl + 1 : NULL;
    }
    free(text);
    return v;
}

/* The cluster figures of /v1/stats and /metrics on every node once the
 * nodes are quiet: one leader (cluster.leader), epoch and readiness, the
 * leader published and the followers applied deltas, and the lag (measured
 * every second) comes back to 0. */
static void check_cluster_figures(tu_child *n, int leader)
{
    for (int i = 0; i < NODES; i++) {
        assert_int_equal(cluster_stat(n[i].port, "enabled"), 1);
        assert_int_equal(cluster_stat(n[i].port, "leader"), i == leader);
        assert_int_equal(cluster_stat(n[i].port, "ready"), 1);
        assert_true(cluster_stat(n[i].port, "epoch") >= 1);
        assert_true(prom_value(n[i].port, "hogrec_cluster_leader") == (i == leader ? 1.0 : 0.0));
        assert_true(prom_value(n[i].port, "hogrec_cluster_epoch") >= 1.0);
        if (i == leader)
            assert_true(cluster_stat(n[i].port, "deltas_published") > 0);
        else
            assert_true(cluster_stat(n[i].port, "deltas_applied") > 0);
        bool caught_up = false;
        for (int round = 0; round < WAIT_SECONDS * 20 && !caught_up; round++) {
            caught_up = cluster_stat(n[i].port, "lag_entries") == 0 &&
                        prom_value(n[i].port, "hogrec_cluster_lag_seconds") == 0.0;
            if (!caught_up)
                tu_sleep_ms(50);
        }
        assert_true(caught_up);
    }
}

/* min_seq in cluster mode is the entry id of a 202: a query on another
 * node with it waits until that node's model covers the entry, then says
 * applied true and the entry it covers, and the score reflects the events
 * (it differs from the one before the post: a new user and item scored
 * through the default rows). Also through POST /v1/predict (a JSON string)
 * and recommend. An entry far in the future: applied false after wait_ms.
 * A standalone seq (an integer) is refused in cluster mode. */
static void test_read_your_writes(void **state)
{
    (void)state;
    const char *bin = tu_hogrec_bin();
    unsetenv("HOGREC_REDIS_PASSWORD");
    setenv("HOGREC_MAX_WAIT_MS", "20000", 1); /* generous: a slow machine */
    tu_redis rs = {0};
    tu_redis_start(&rs);
    char url[64];
    snprintf(url, sizeof url, "%s", tu_redis_url(&rs));
    tu_child n[NODES];
    const char *ids[NODES] = {"a", "b", "c"};
    for (int i = 0; i < NODES; i++)
        assert_true(spawn_node(&n[i], bin, url, "t7", ids[i]));
    unsetenv("HOGREC_MAX_WAIT_MS");
    int leader = wait_leader(n), na = (leader + 1) % NODES, nc = (leader + 2) % NODES;

    json_t *o = NULL;
    assert_int_equal(get_json(n[nc].port, "/v1/predict?user=ryw-u&item=ryw-i", &o), 200);
    double before = json_real_value(json_object_get(o, "score"));
    json_decref(o);
    char body[2048];
    size_t len = (size_t)snprintf(body, sizeof body, "[");
    for (int i = 0; i < 10; i++)
        len += (size_t)snprintf(body + len, sizeof body - len,
                                "%s{\"user\":\"ryw-u\",\"item\":\"ryw-i\",\"label\":1}",
                                i ? "," : "");
    snprintf(body + len, sizeof body - len, "]");
    assert_int_equal(tu_http(n[na].port, "POST", "/v1/events", body, NULL, &o), 202);
    char entry[64];
    snprintf(entry, sizeof entry, "%s", tu_json_str(o, "entry", NULL));
    json_decref(o);
    hr_estream_id want = tu_stream_id(entry);

    char path[256];
    snprintf(path, sizeof path, "/v1/predict?user=ryw-u&item=ryw-i&min_seq=%s&wait_ms=20000",
             entry);
    assert_int_equal(get_json(n[nc].port, path, &o), 200);
    if (!json_is_true(json_object_get(o, "applied")))
        fail_msg("node %s did not apply entry %s within 20 s", ids[nc], entry);
    assert_true(hr_estream_id_cmp(tu_stream_id(tu_json_str(o, "applied_entry", NULL)), want) >= 0);
    double after = json_real_value(json_object_get(o, "score"));
    json_decref(o);
    if (after == before)
        fail_msg("applied, but the score is still %.17g", after);

    /* POST /v1/predict with min_seq a JSON string; recommend */
    snprintf(body, sizeof body,
             "{\"pairs\":[{\"user\":\"ryw-u\",\"item\":\"ryw-i\"}],\"min_seq\":\"%s\","
             "\"wait_ms\":20000}", entry);
    assert_int_equal(tu_http(n[leader].port, "POST", "/v1/predict", body, NULL, &o), 200);
    assert_true(json_is_true(json_object_get(o, "applied")));
    assert_true(json_real_value(json_array_get(json_object_get(o, "scores"), 0)) == after);
    json_decref(o);
    snprintf(path, sizeof path, "/v1/recommend?user=ryw-u&k=3&min_seq=%s&wait_ms=20000", entry);
    assert_int_equal(get_json(n[na].port, path, &o), 200);
    assert_true(json_is_true(json_object_get(o, "applied")));
    json_decref(o);

    /* far in the future: not applied once wait_ms passed */
    assert_int_equal(
        get_json(n[nc].port, "/v1/predict?user=ryw-u&item=ryw-i&min_seq=99999999999999-0&wait_ms=200",
                 &o),
        200);
    assert_true(json_is_false(json_object_get(o, "applied")));
    assert_true(hr_estream_id_cmp(tu_stream_id(tu_json_str(o, "applied_entry", NULL)), want) >= 0);
    json_decref(o);
    /* a standalone seq means nothing here */
    assert_int_equal(get_json(n[nc].port, "/v1/predict?user=ryw-u&item=ryw-i&min_seq=5", &o), 400);
    assert_string_equal(tu_json_str(json_object_get(o, "error"), "code", NULL), "invalid");
    json_decref(o);
    check_cluster_figures(n, leader);

    for (int i = 0; i < NODES; i++)
        kill(n[i].pid, SIGTERM);
    for (int i = 0; i < NODES; i++)
        assert_true(WIFEXITED(tu_child_wait(&n[i])));
    tu_redis_stop(&rs);
}

/* ---- Redis killed and restarted (issue case 4) ---- */

#define RK_CLIENTS 2
#define RK_REQUESTS 90    /* POSTs of EVENTS_PER events with unique ids */
#define RK_DOWN_MS 2500   /* Redis stays down this long: past the lease */

/* A client thread of the Redis-kill test: posts requests first,
 * first + RK_CLIENTS, ... to the three nodes round-robin, each resent
 * (same ids) until a 202. Every answer is checked against the window in
 * which Redis was down for certain: a request sent after the kill and
 * answered before the restart began must be 503 with a JSON error
 * "unavailable". Counted, never asserted here (not thread-safe). */
typedef struct {
    int first;
    const int *ports;
    atomic_int *done;        /* requests answered 202, all clients */
    atomic_int *phase;       /* 0 up, 1 down (killed), 2 restarting or up again */
    uint64_t accepted, duplicates, resends, failed;
    uint64_t down_503;       /* 503 answers inside the down window */
    uint64_t down_bad;       /* anything else inside it (a 202 above all) */
    uint64_t other;          /* answers neither 202 nor 503 */
    char bad[160];           /* the first bad answer */
} rk_client;

static void *rk_client_main(void *arg)
{
    rk_client *cl = arg;
    for (int r = cl->first, k = 0; r < RK_REQUESTS; r += RK_CLIENTS, k++) {
        char *body = events_body_ids("r", r);
        bool ok = false;
        for (int attempt = 0; attempt < 2000 && !ok; attempt++) {
            json_t *o = NULL;
            int before = atomic_load(cl->phase);
            long st = tu_http(cl->ports[(k + attempt) % NODES], "POST", "/v1/events", body, NULL,
                              &o);
            bool in_down = before == 1 && atomic_load(cl->phase) == 1;
            const char *code = tu_json_str(json_object_get(o, "error"), "code", NULL);
            if (in_down) {
                if (st == 503 && !strcmp(code, "unavailable"))
                    cl->down_503++;
                else if (cl->down_bad++ == 0)
                    snprintf(cl->bad, sizeof cl->bad, "Redis down: answer %ld '%s'", st, code);
            }
            if (st == 202) {
                cl->accepted += (uint64_t)json_integer_value(json_object_get(o, "accepted"));
                cl->duplicates += (uint64_t)json_integer_value(json_object_get(o, "duplicates"));
                ok = true;
            } else {
                if (st != 503 && cl->other++ == 0 && !cl->bad[0])
                    snprintf(cl->bad, sizeof cl->bad, "answer %ld '%s'", st, code);
                cl->resends++;
                tu_sleep_ms(20);
            }
            json_decref(o);
        }
        free(body);
        if (!ok)
            cl->failed++;
        atomic_fetch_add(cl->done, 1);
    }
    return NULL;
}

/* Case 4: kill -9 of redis-server mid-ingest, then a restart on the same
 * port and AOF (appendfsync always: an acknowledged entry is on disk).
 * Two clients post events with unique ids round-robin to the three nodes
 * and resend every request until a 202. While Redis is down (longer than
 * the lease) every POST answers 503 "unavailable", and every node still
 * answers queries and GET /v1/cluster. After the restart every node is
 * ready again with exactly one leader (no node wedged or stepped down for
 * good), every connection of every node works again (appends on each
 * node, heartbeats of all three, the deltas followed, /v1/cluster without
 * a Redis error), every event acknowledged is counted exactly once in
 * every node's model and the followers score as the leader. */
static void test_redis_killed_and_restarted(void **state)
{
    (void)state;
    const char *bin = tu_hogrec_bin();
    unsetenv("HOGREC_REDIS_PASSWORD");
    static const char *const fsync_always[] = {"--appendfsync", "always", NULL};
    tu_redis rs = {.extra = fsync_always};
    tu_redis_start(&rs);
    char url[64], lease[16];
    snprintf(url, sizeof url, "%s", tu_redis_url(&rs));
    snprintf(lease, sizeof lease, "%d", FO_LEASE_MS);
    tu_child n[NODES];
    const char *ids[NODES] = {"a", "b", "c"};
    for (int i = 0; i < NODES; i++)
        assert_true(spawn_node_with(&n[i], bin, url, "t4", ids[i], lease, "0"));
    int leader0 = wait_leader(n);
    int ports[NODES];
    for (int i = 0; i < NODES; i++)
        ports[i] = n[i].port;

    atomic_int done = 0, phase = 0;
    rk_client cl[RK_CLIENTS];
    pthread_t th[RK_CLIENTS];
    for (int t = 0; t < RK_CLIENTS; t++) {
        cl[t] = (rk_client){.first = t, .ports = ports, .done = &done, .phase = &phase};
        assert_int_equal(pthread_create(&th[t], NULL, rk_client_main, &cl[t]), 0);
    }
    for (int round = 0; round < WAIT_SECONDS * 100 && atomic_load(&done) < RK_REQUESTS / 3; round++)
        tu_sleep_ms(10);
    tu_redis_kill(&rs, SIGKILL);
    atomic_store(&phase, 1);
    /* Redis down: queries and the cluster report still answer */
    uint64_t down_from = mono_ms();
    int queries = 0;
    while (mono_ms() - down_from < RK_DOWN_MS) {
        for (int i = 0; i < NODES; i++) {
            double sc = score_at(n[i].port, 1, 1, 1);
            assert_true(sc >= 0.0 && sc <= 1.0);
            json_t *o = tu_cluster_of(n[i].port);
            assert_non_null(o);
            assert_non_null(json_object_get(o, "redis_error"));
            json_decref(o);
            queries++;
        }
        tu_sleep_ms(100);
    }
    atomic_store(&phase, 2);
    tu_redis_start(&rs);
    uint64_t up_ms = mono_ms();

    for (int t = 0; t < RK_CLIENTS; t++)
        pthread_join(th[t], NULL);
    uint64_t accepted = 0, duplicates = 0, resends = 0, down_503 = 0;
    for (int t = 0; t < RK_CLIENTS; t++) {
        if (cl[t].failed || cl[t].down_bad || cl[t].other)
            fail_msg("client %d: %llu requests never accepted, %llu bad answers while Redis was "
                     "down, %llu neither 202 nor 503; %s",
                     t, (unsigned long long)cl[t].failed, (unsigned long long)cl[t].down_bad,
                     (unsigned long long)cl[t].other, cl[t].bad);
        accepted += cl[t].accepted;
        duplicates += cl[t].duplicates;
        resends += cl[t].resends;
        down_503 += cl[t].down_503;
    }
    fprintf(stderr, "redis restart: %llu events accepted, %llu duplicates on a resend, %llu "
                    "resends, %llu 503 while down, %d queries answered while down\n",
            (unsigned long long)accepted, (unsigned long long)duplicates,
            (unsigned long long)resends, (unsigned long long)down_503, queries);
    assert_true(down_503 > 0); /* the clients did post while Redis was down */
    assert_int_equal(accepted + duplicates, RK_REQUESTS * EVENTS_PER);

    /* every node ready again, one leader; each node's append path works */
    int leader = wait_leader(n);
    fprintf(stderr, "redis restart: leader %s before, %s after; all ready %llu ms after the "
                    "restart\n",
            ids[leader0], ids[leader], (unsigned long long)(mono_ms() - up_ms));
    /* Ready is the node's; its append connection may still wait out its
     * reconnect backoff (up to 2 s after the failures while Redis was
     * down) and answer 503 until then: a client resends, as above. */
    for (int i = 0; i < NODES; i++) {
        char ev[96];
        snprintf(ev, sizeof ev, "[{\"user\":\"u1\",\"item\":\"i2\",\"id\":\"after-%d\"}]", i);
        int code = 0, tries = 0;
        while ((code = tu_http(n[i].port, "POST", "/v1/events", ev, NULL, NULL)) == 503 &&
               ++tries < 100)
            tu_sleep_ms(50);
        if (tries)
            fprintf(stderr, "redis restart: node %s answered 503 %d times after ready\n", ids[i],
                    tries);
        assert_int_equal(code, 202);
    }
    hr_estream_id last = tu_stream_last(url, "t4");
    for (int i = 0; i < NODES; i++)
        if (!tu_wait_covered(n[i].port, last, WAIT_SECONDS))
            fail_msg("node %s does not cover the stream's last entry within %d s", ids[i],
                     WAIT_SECONDS);
    long long want = RK_REQUESTS * EVENTS_PER + NODES;
    for (int i = 0; i < NODES; i++) {
        long long got = tu_events_counted(n[i].port);
        if (got != want)
            fail_msg("node %s counts %lld events in its model; %lld acknowledged", ids[i], got,
                     want);
    }
    for (int i = 0; i < NODES; i++)
        if (i != leader)
            assert_true(compare_scores(n[leader].port, n[i].port, "leader and follower") > 50);
    /* heartbeats of all three are fresh, /v1/cluster reads Redis again */
    bool fresh = false;
    for (int round = 0; round < WAIT_SECONDS * 20 && !fresh; round++) {
        json_t *o = tu_cluster_of(n[(leader + 1) % NODES].port);
        json_t *m = json_object_get(o, "members");
        size_t live = 0;
        for (size_t k = 0; k < json_array_size(m); k++)
            live += !json_is_true(json_object_get(json_array_get(m, k), "stale"));
        fresh = o && !json_object_get(o, "redis_error") && live == NODES;
        json_decref(o);
        if (!fresh)
            tu_sleep_ms(50);
    }
    assert_true(fresh);
    /* the outage is in the figures: Redis errors and reconnections on
     * every node; a leader that kept its role took its lease back */
    for (int i = 0; i < NODES; i++) {
        assert_true(cluster_stat(n[i].port, "redis_errors") > 0);
        assert_true(cluster_stat(n[i].port, "redis_reconnects") > 0);
        assert_true(prom_value(n[i].port, "hogrec_cluster_redis_errors_total") > 0);
    }
    if (leader == leader0)
        assert_true(cluster_stat(n[leader].port, "lease_reclaims") > 0);
    check_cluster_figures(n, leader);

    for (int i = 0; i < NODES; i++)
        kill(n[i].pid, SIGTERM);
    for (int i = 0; i < NODES; i++) {
        int status = tu_child_wait(&n[i]);
        if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0))
            fail_msg("node %s did not exit 0 on SIGTERM (status %d)", ids[i], status);
    }
    tu_redis_stop(&rs);
}

/* A node refuses to start in cluster mode on a standalone database (its
 * --db is the node's own checkpoint file, cluster.h) and says so. */
static void test_refuses_db(void **state)
{
    (void)state;
    const char *bin = tu_hogrec_bin();
    tu_redis rs = {0};
    tu_redis_start(&rs);
    char url[64];
    snprintf(url, sizeof url, "%s", tu_redis_url(&rs));
    char dir[] = "/tmp/hogrec-refuses-db-XXXXXX", db[96];
    assert_non_null(mkdtemp(dir));
    snprintf(db, sizeof db, "%s/standalone.db", dir);
    /* a standalone database, made by a standalone server */
    const char *sa[] = {bin, "serve", "--port", "0", "--db", db, NULL};
    tu_child ch;
    tu_child_spawn(&ch, (char *const *)sa, CHILD_BOUND, NULL, NULL);
    json_t *ready = tu_child_log_until(&ch, "ready", NULL, 0);
    assert_non_null(ready);
    json_decref(ready);
    kill(ch.pid, SIGTERM);
    int status = tu_child_wait(&ch);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    const char *argv[] = {bin, "serve", "--port", "0", "--db", db, "--redis", url, NULL};
    tu_child_spawn(&ch, (char *const *)argv, CHILD_BOUND, NULL, NULL);
    json_t *line = tu_child_log_until(&ch, "cannot open", NULL, 0);
    assert_non_null(line);
    assert_string_equal(json_string_value(json_object_get(line, "field")), "db");
    const char *msg = json_string_value(json_object_get(line, "detail"));
    if (!msg || !strstr(msg, "not a cluster node's checkpoint"))
        fail_msg("refusal without the reason: %s", msg ? msg : "(none)");
    json_decref(line);
    status = tu_child_wait(&ch);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 1);
    char cmd[160];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
    tu_redis_stop(&rs);
}

/* Redis's total_net_output_bytes (INFO stats) through r. */
static long long redis_output_bytes(hr_redis *r)
{
    redisReply *rep = NULL;
    hr_error err = {{0}, {0}};
    if (hr_redis_call(r, &rep, &err, "INFO", "stats", NULL) != HR_OK)
        fail_msg("INFO stats: %s", err.message);
    const char *at = rep->type == REDIS_REPLY_STRING
                         ? strstr(rep->str, "total_net_output_bytes:")
                         : NULL;
    long long v = at ? strtoll(at + strlen("total_net_output_bytes:"), NULL, 10) : -1;
    freeReplyObject(rep);
    if (v < 0)
        fail_msg("INFO stats has no total_net_output_bytes");
    return v;
}

/* GET /v1/cluster (which the dashboard polls every second) reports the
 * delta stream's last id without fetching the last delta part: Redis sends
 * a small reply, not the part. Measured in Redis's own count of bytes sent
 * to its clients, over 20 requests, against the size of the last part (a
 * node with a 2 s publish interval puts 3000 new users and items in one
 * delta). Before, each request read the whole part (XREVRANGE). */
static void test_status_leaves_delta_on_server(void **state)
{
    (void)state;
    const char *bin = tu_hogrec_bin();
    tu_redis rs = {0};
    tu_redis_start(&rs);
    const char *url = tu_redis_url(&rs);
    const char *argv[] = {bin, "serve", "--port", "0", "--db", "", "--threads", "1",
                          "--max-users", "4096", "--max-items", "4096", "--k", "8",
                          "--negative-sampling", "off", "--redis", url, "--cluster", "dl",
                          "--node-id", "a", "--publish-ms", "2000", NULL};
    tu_child n[1];
    assert_true(tu_node_spawn(&n[0], argv, CHILD_BOUND));
    assert_int_equal(tu_wait_leader(n, 1, WAIT_SECONDS), 0);
    json_t *oc = tu_cluster_of(n[0].port);
    char deltas_key[160];
    snprintf(deltas_key, sizeof deltas_key, "%s", tu_json_str(oc, "delta_stream", NULL));
    json_decref(oc);
    enum { USERS_ITEMS = 3000 };
    size_t cap = (size_t)USERS_ITEMS * 64 + 16, len = 0;
    char *body = malloc(cap);
    assert_non_null(body);
    len += (size_t)snprintf(body + len, cap - len, "[");
    for (int i = 0; i < USERS_ITEMS; i++)
        len += (size_t)snprintf(body + len, cap - len,
                                "%s{\"user\":\"big%d\",\"item\":\"big%d\",\"label\":%d}",
                                i ? "," : "", i, i, i & 1);
    snprintf(body + len, cap - len, "]");
    assert_int_equal(tu_http(n[0].port, "POST", "/v1/events", body, NULL, NULL), 202);
    free(body);
    if (!tu_wait_covered(n[0].port, tu_stream_last(url, "dl"), WAIT_SECONDS))
        fail_msg("the leader did not publish the events within %d s", WAIT_SECONDS);

    hr_redis *r = NULL;
    hr_error err = {{0}, {0}};
    if (hr_redis_open(url, NULL, &r, &err) != HR_OK)
        fail_msg("cannot connect to redis: %s", err.message);
    redisReply *rep = NULL;
    if (hr_redis_call(r, &rep, &err, "XREVRANGE", deltas_key, "+", "-", "COUNT", "1", NULL) !=
        HR_OK)
        fail_msg("XREVRANGE %s: %s", deltas_key, err.message);
    size_t part = 0;
    for (size_t j = 0; rep->elements == 1 && j + 1 < rep->element[0]->element[1]->elements;
         j += 2)
        if (!strcmp(rep->element[0]->element[1]->element[j]->str, "d"))
            part = rep->element[0]->element[1]->element[j + 1]->len;
    freeReplyObject(rep);
    if (part < 32768)
        fail_msg("the last delta part has %zu bytes; the test needs one of at least 32 KiB", part);

    long long before = redis_output_bytes(r);
    for (int i = 0; i < 20; i++) {
        json_t *o = tu_cluster_of(n[0].port);
        assert_non_null(o);
        assert_string_not_equal(tu_json_str(o, "lag", "last_delta"), "");
        json_decref(o);
    }
    long long sent = redis_output_bytes(r) - before;
    print_message("Redis sent %lld bytes for 20 status requests; the last delta part has %zu\n",
                  sent, part);
    if ((size_t)sent > 20 * part / 8)
        fail_msg("Redis sent %lld bytes for 20 status requests, the last part has %zu", sent,
                 part);
    hr_redis_destroy(r);
    kill(n[0].pid, SIGTERM);
    assert_true(WIFEXITED(tu_child_wait(&n[0])));
    tu_redis_stop(&rs);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_leader_and_followers, tu_nodes_teardown),
        cmocka_unit_test_teardown(test_backlog_bound, tu_nodes_teardown),
        cmocka_unit_test_teardown(test_refuses_db, tu_nodes_teardown),
        cmocka_unit_test_teardown(test_status_leaves_delta_on_server, tu_nodes_teardown),
        cmocka_unit_test_teardown(test_failover_kill_leader, tu_nodes_teardown),
        cmocka_unit_test_teardown(test_paused_leader_steps_down, tu_nodes_teardown),
        cmocka_unit_test_teardown(test_redis_killed_and_restarted, tu_nodes_teardown),
        cmocka_unit_test_teardown(test_schedule_across_nodes, tu_nodes_teardown),
        cmocka_unit_test_teardown(test_read_your_writes, tu_nodes_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

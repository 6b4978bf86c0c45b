/*
 * test_cluster_catalog.c - the catalog in cluster mode, end to end with
 * real processes: a redis-server started here (AOF on) and `hogrec serve
 * --redis` nodes of one cluster.
 *
 * test_catalog_replicated: three nodes; item records written on
 * followers (a PUT and a bulk POST) are answered 202 with their entry and
 * show on every node (GET) once it covers that entry; a hidden item is
 * recommended by no node, categories= keeps to the category on every
 * node, and scores (the records' attributes enter them) are equal on
 * every node bit for bit. A user record, its forgetting (DELETE with the
 * admin token, on a follower): the record and the model row go on every
 * node (its recommendations become the fallback), while its events stay
 * in the Redis event stream until the leader trims it (checked after the
 * trim; the test's later events name the user again and bring it back,
 * as in standalone mode). The leader trims the
 * streams (delta_retention_ms) past the catalog entries; a node started
 * then bootstraps from a snapshot and has the records and the filters.
 *
 * test_catalog_survives_redis_restart: one node; records acknowledged,
 * then redis-server killed (kill -9) and restarted on its AOF
 * (appendfsync always), the node killed too; a new node built from Redis
 * alone has the records. A user forgotten there: its events are still in
 * the stream (nothing trims it), the record stays gone after the replay.
 *
 * test_catalog_in_local_checkpoint: one node with a local checkpoint
 * trims past the catalog entries, stops, and restarted from its
 * checkpoint has the records.
 *
 * Waits are bounded polls for a state; nothing asserts a duration.
 */
/* ctest-labels: concurrent */
#include "testutil.h"

#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "hogrec/estream.h"
#include "hogrec/redis.h"

#define NODES 3
#define USERS 12
#define ITEMS 30
#define CHILD_BOUND 300 /* seconds a node may live */
#define WAIT_SECONDS 60 /* bound of every poll */
#define TOKEN "cat-token"

/* Starts node `id` of cluster `name`, trimming with `retention` ms, its
 * local checkpoint at db ("": none) written every 0.2 s; true once it
 * logged "ready". */
static bool spawn_node_db(tu_child *ch, const char *bin, const char *url, const char *name,
                          const char *id, const char *retention, const char *db)
{
    const char *argv[] = {bin, "serve", "--port", "0", "--db", db, "--checkpoint-interval", "0.2",
                          "--threads", "1",
                          "--max-users", "4096", "--max-items", "4096", "--k", "8",
                          "--negative-sampling", "off", "--redis", url, "--cluster", name,
                          "--node-id", id, "--publish-ms", "10", "--lease-ms", "3000",
                          "--admin-token", TOKEN, "--delta-retention-ms", retention, NULL};
    return tu_node_spawn(ch, argv, CHILD_BOUND);
}

static bool spawn_node(tu_child *ch, const char *bin, const char *url, const char *name,
                       const char *id, const char *retention)
{
    return spawn_node_db(ch, bin, url, name, id, retention, "");
}


/* Posts events of users u0..u(USERS-1) on items i0..i(ITEMS-1) (tag
 * makes the ids new); the entry of the 202. */
static hr_estream_id post_events(int port, const char *tag)
{
    char body[16384];
    size_t len = (size_t)snprintf(body, sizeof body, "[");
    int n = 0;
    for (int u = 0; u < USERS; u++)
        for (int i = u % 3; i < ITEMS; i += 3) {
            len += (size_t)snprintf(body + len, sizeof body - len,
                                    "%s{\"user\":\"u%d\",\"item\":\"i%d\",\"label\":%d,"
                                    "\"id\":\"%s-%d-%d\"}",
                                    n++ ? "," : "", u, i, (u + i) % 2, tag, u, i);
            assert_true(len < sizeof body - 200);
        }
    snprintf(body + len, sizeof body - len, "]");
    json_t *o = NULL;
    assert_int_equal(tu_http(port, "POST", "/v1/events", body, NULL, &o), 202);
    hr_estream_id id = tu_stream_id(tu_json_str(o, "entry", NULL));
    json_decref(o);
    return id;
}

/* A catalog write expected to be answered 202 with an entry; the entry. */
static hr_estream_id catalog_write(int port, const char *method, const char *path,
                                   const char *body, const char *auth)
{
    json_t *o = NULL;
    long s = tu_http(port, method, path, body, auth, &o);
    if (s != 202)
        fail_msg("%s %s on port %d answered %ld, not 202", method, path, port, s);
    hr_estream_id id = tu_stream_id(tu_json_str(o, "entry", NULL));
    json_decref(o);
    return id;
}

/* GET /v1/recommend on the node at port, waiting (min_seq) until its
 * model, serving state and catalog cover entry `e`; the items as one
 * text ",i1,i2,...," (new) and whether it is the fallback. */
static char *recommend_after(int port, const char *user, const char *extra, hr_estream_id e,
                             bool *fallback)
{
    char path[300], b[HR_ESTREAM_ID_LEN];
    snprintf(path, sizeof path, "/v1/recommend?user=%s&k=%d&min_seq=%s%s", user, ITEMS,
             hr_estream_id_format(e, b), extra);
    for (int round = 0; round < WAIT_SECONDS * 2; round++) {
        json_t *o = NULL;
        long s = tu_http(port, "GET", path, NULL, NULL, &o);
        if (s != 200)
            fail_msg("GET %s on port %d answered %ld", path, port, s);
        if (!json_is_true(json_object_get(o, "applied"))) {
            json_decref(o);
            continue; /* the wait (max_wait_ms) ended first */
        }
        json_t *items = json_object_get(o, "items");
        size_t cap = json_array_size(items) * 16 + 2, len = 1;
        char *text = calloc(cap, 1);
        assert_non_null(text);
        text[0] = ',';
        for (size_t i = 0; i < json_array_size(items); i++)
            len += (size_t)snprintf(text + len, cap - len, "%s,",
                                    json_string_value(json_object_get(json_array_get(items, i),
                                                                      "item")));
        *fallback = json_object_get(o, "fallback") != NULL;
        json_decref(o);
        return text;
    }
    fail_msg("GET %s on port %d: min_seq never applied", path, port);
    return NULL;
}

/* Waits until the node at port covers entry e (model, serving state and
 * catalog: the read-your-writes watermark). */
static void wait_applied(int port, hr_estream_id e)
{
    bool fb;
    free(recommend_after(port, "u0", "", e, &fb));
}

static double score_at(int port, int u, int i)
{
    char body[160];
    snprintf(body, sizeof body, "{\"pairs\":[{\"user\":\"u%d\",\"item\":\"i%d\"}]}", u, i);
    json_t *o = NULL;
    assert_int_equal(tu_http(port, "POST", "/v1/predict", body, NULL, &o), 200);
    double sc = json_real_value(json_array_get(json_object_get(o, "scores"), 0));
    json_decref(o);
    return sc;
}

/* The item records of the test: even items in category "even", odd in
 * "odd", each with a feature; i3 hidden (written by its own PUT). */
static char *bulk_items(void)
{
    char *body = malloc(8192);
    assert_non_null(body);
    size_t len = (size_t)snprintf(body, 8192, "[");
    for (int i = 0; i < ITEMS; i++)
        len += (size_t)snprintf(body + len, 8192 - len,
                                "%s{\"id\":\"i%d\",\"categories\":[\"%s\"],\"features\":"
                                "{\"genre\":\"g%d\"}}",
                                i ? "," : "", i, i % 2 ? "odd" : "even", i % 4);
    snprintf(body + len, 8192 - len, "]");
    return body;
}

/* The record of path on the node at port: status, and *hidden. */
static long record_at(int port, const char *path, bool *hidden)
{
    json_t *o = NULL;
    long s = tu_http(port, "GET", path, NULL, NULL, &o);
    if (hidden)
        *hidden = json_is_true(json_object_get(o, "hidden"));
    json_decref(o);
    return s;
}

/* The filters on the node at port, once it covers e: i3 (hidden) is in no
 * answer; categories=even answers only even items; for user `u`. */
static void check_filters(int port, int u, hr_estream_id e, const char *what)
{
    char user[16];
    snprintf(user, sizeof user, "u%d", u);
    bool fb = false;
    char *all = recommend_after(port, user, "", e, &fb);
    if (strstr(all, ",i3,"))
        fail_msg("%s: the hidden item i3 is recommended on port %d: %s", what, port, all);
    if (strlen(all) < 10)
        fail_msg("%s: port %d recommends almost nothing: %s", what, port, all);
    char *even = recommend_after(port, user, "&categories=even", e, &fb);
    size_t got = 0;
    for (const char *p = even + 1; *p; got++) {
        int item = atoi(p + 1);
        if (item % 2 != 0)
            fail_msg("%s: categories=even on port %d answers i%d: %s", what, port, item, even);
        p = strchr(p, ',') + 1;
    }
    if (got == 0)
        fail_msg("%s: categories=even on port %d answers nothing", what, port);
    free(all);
    free(even);
}

/* Entries of the event stream of cluster `name`, up to entry `upto`,
 * whose events name user `user` (an XRANGE). */
static size_t stream_entries_of(const char *url, const char *name, const char *user,
                                hr_estream_id upto)
{
    char to[HR_ESTREAM_ID_LEN];
    hr_estream_id_format(upto, to);
    hr_redis *r = NULL;
    hr_error err = {{0}, {0}};
    if (hr_redis_open(url, NULL, &r, &err) != HR_OK)
        fail_msg("redis: %s", err.message);
    char key[128], needle[64];
    snprintf(key, sizeof key, "hogrec:{%s}:events", name);
    snprintf(needle, sizeof needle, "\"user\":\"%s\"", user);
    redisReply *rep = NULL;
    if (hr_redis_call(r, &rep, &err, "XRANGE", key, "-", to, NULL) != HR_OK)
        fail_msg("XRANGE: %s", err.message);
    size_t n = 0;
    for (size_t i = 0; rep->type == REDIS_REPLY_ARRAY && i < rep->elements; i++) {
        const redisReply *f = rep->element[i]->element[1];
        for (size_t j = 0; j + 1 < f->elements; j += 2)
            if (!strcmp(f->element[j]->str, "ev") && strstr(f->element[j + 1]->str, needle))
                n++;
    }
    freeReplyObject(rep);
    hr_redis_destroy(r);
    return n;
}

/* The event stream's trim point (events_trimmed), {0, 0} when none. */
static hr_estream_id events_trimmed(const char *url, const char *name)
{
    hr_redis *r = NULL;
    hr_error err = {{0}, {0}};
    if (hr_redis_open(url, NULL, &r, &err) != HR_OK)
        fail_msg("redis: %s", err.message);
    char key[128];
    snprintf(key, sizeof key, "hogrec:{%s}:events_trimmed", name);
    redisReply *rep = NULL;
    if (hr_redis_call(r, &rep, &err, "GET", key, NULL) != HR_OK)
        fail_msg("GET: %s", err.message);
    hr_estream_id t = {0, 0};
    if (rep->type == REDIS_REPLY_STRING)
        t = tu_stream_id(rep->str);
    freeReplyObject(rep);
    hr_redis_destroy(r);
    return t;
}

static void test_catalog_replicated(void **state)
{
    (void)state;
    const char *bin = tu_hogrec_bin();
    unsetenv("HOGREC_REDIS_PASSWORD");
    tu_redis rs = {0};
    tu_redis_start(&rs);
    char url[64];
    snprintf(url, sizeof url, "%s", tu_redis_url(&rs));
    tu_child n[NODES + 1];
    const char *ids[NODES + 1] = {"a", "b", "c", "d"};
    for (int i = 0; i < NODES; i++)
        assert_true(spawn_node(&n[i], bin, url, "cc", ids[i], "300"));
    int leader = tu_wait_leader(n, NODES, WAIT_SECONDS);
    int f1 = (leader + 1) % NODES, f2 = (leader + 2) % NODES;
    post_events(n[f1].port, "e1");

    /* records on the followers: a bulk POST on one, a PUT on the other */
    char *body = bulk_items();
    catalog_write(n[f1].port, "POST", "/v1/items", body, NULL);
    free(body);
    catalog_write(n[f2].port, "PUT", "/v1/items/i3",
                  "{\"categories\":[\"odd\"],\"hidden\":true,\"features\":{\"genre\":\"g3\"}}",
                  NULL);
    catalog_write(n[f2].port, "PUT", "/v1/users/u2", "{\"features\":{\"age\":\"20s\"}}", NULL);
    hr_estream_id after = post_events(n[f2].port, "e2"); /* trained with the attributes */
    for (int i = 0; i < NODES; i++) {
        wait_applied(n[i].port, after);
        bool hidden = false;
        assert_int_equal(record_at(n[i].port, "/v1/items/i3", &hidden), 200);
        assert_true(hidden);
        assert_int_equal(record_at(n[i].port, "/v1/items/i4", &hidden), 200);
        assert_false(hidden);
        assert_int_equal(record_at(n[i].port, "/v1/users/u2", NULL), 200);
        check_filters(n[i].port, 1, after, "written on followers");
    }
    /* the attributes enter the scores alike on every node */
    for (int u = 0; u < USERS; u += 2)
        for (int i = 0; i < ITEMS; i += 5)
            for (int k = 0; k < NODES; k++) {
                double want = score_at(n[leader].port, u, i), got = score_at(n[k].port, u, i);
                if (want != got)
                    fail_msg("score u%d i%d: node %s %.17g, leader %.17g", u, i, ids[k], got,
                             want);
            }

    /* forgetting u2 on a follower: record and row go on every node */
    bool fb = true;
    free(recommend_after(n[f1].port, "u2", "", after, &fb));
    assert_false(fb);
    hr_estream_id forgot = catalog_write(n[f1].port, "DELETE", "/v1/users/u2", NULL,
                                         "Bearer " TOKEN);
    for (int i = 0; i < NODES; i++) {
        char *got = recommend_after(n[i].port, "u2", "", forgot, &fb);
        free(got);
        if (!fb)
            fail_msg("node %s still knows u2 after it was forgotten", ids[i]);
        assert_int_equal(record_at(n[i].port, "/v1/users/u2", NULL), 404);
    }

    /* trimming past the catalog entries, then a new node bootstraps */
    hr_estream_id last = after;
    for (int round = 0; round < WAIT_SECONDS * 10; round++) {
        if (hr_estream_id_cmp(events_trimmed(url, "cc"), forgot) > 0)
            break;
        char tag[16];
        snprintf(tag, sizeof tag, "t%d", round);
        last = post_events(n[leader].port, tag);
        tu_sleep_ms(100);
    }
    assert_true(hr_estream_id_cmp(events_trimmed(url, "cc"), forgot) > 0);
    /* the user's events before the forget went with the trim */
    assert_int_equal(stream_entries_of(url, "cc", "u2", forgot), 0);
    assert_true(spawn_node(&n[NODES], bin, url, "cc", ids[NODES], "300"));
    tu_wait_leader(n, NODES + 1, WAIT_SECONDS);
    json_t *o = tu_cluster_of(n[NODES].port);
    json_t *snaps = json_object_get(o, "snapshots");
    if (json_integer_value(json_object_get(snaps, "loaded")) < 1)
        fail_msg("node d did not bootstrap from a snapshot");
    json_decref(o);
    bool hidden = false;
    assert_int_equal(record_at(n[NODES].port, "/v1/items/i3", &hidden), 200);
    assert_true(hidden);
    assert_int_equal(record_at(n[NODES].port, "/v1/items/i7", &hidden), 200);
    assert_int_equal(record_at(n[NODES].port, "/v1/users/u2", NULL), 404);
    check_filters(n[NODES].port, 1, last, "bootstrapped node");
    for (int u = 1; u < USERS; u += 3)
        for (int i = 0; i < ITEMS; i += 7)
            assert_true(score_at(n[leader].port, u, i) == score_at(n[NODES].port, u, i));

    for (int i = 0; i <= NODES; i++)
        kill(n[i].pid, SIGTERM);
    for (int i = 0; i <= NODES; i++) {
        int status = tu_child_wait(&n[i]);
        if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0))
            fail_msg("node %s did not exit 0 on SIGTERM (status %d)", ids[i], status);
    }
    tu_redis_stop(&rs);
}

static void test_catalog_survives_redis_restart(void **state)
{
    (void)state;
    const char *bin = tu_hogrec_bin();
    unsetenv("HOGREC_REDIS_PASSWORD");
    static const char *const fsync_always[] = {"--appendfsync", "always", NULL};
    tu_redis rs = {.extra = fsync_always};
    tu_redis_start(&rs);
    char url[64];
    snprintf(url, sizeof url, "%s", tu_redis_url(&rs));
    tu_child a, b;
    assert_true(spawn_node(&a, bin, url, "ck", "a", "0"));
    tu_wait_leader(&a, 1, WAIT_SECONDS);
    post_events(a.port, "e1");
    char *body = bulk_items();
    catalog_write(a.port, "POST", "/v1/items", body, NULL);
    free(body);
    catalog_write(a.port, "PUT", "/v1/items/i3", "{\"categories\":[\"odd\"],\"hidden\":true}",
                  NULL);
    /* the limit the README states: a forgotten user's events stay in the
     * event stream (nothing trims it here), the record goes */
    catalog_write(a.port, "PUT", "/v1/users/u5", "{\"features\":{\"age\":\"30s\"}}", NULL);
    hr_estream_id forgot = catalog_write(a.port, "DELETE", "/v1/users/u5", NULL, "Bearer " TOKEN);
    wait_applied(a.port, forgot);
    assert_int_equal(record_at(a.port, "/v1/users/u5", NULL), 404);
    assert_true(stream_entries_of(url, "ck", "u5", forgot) > 0);
    /* acknowledged: now Redis and the node die */
    tu_redis_kill(&rs, SIGKILL);
    kill(a.pid, SIGKILL);
    tu_child_wait(&a);
    tu_redis_start(&rs);
    assert_true(spawn_node(&b, bin, url, "ck", "b", "0"));
    tu_wait_leader(&b, 1, WAIT_SECONDS);
    hr_estream_id e = post_events(b.port, "e2");
    wait_applied(b.port, e);
    bool hidden = false;
    assert_int_equal(record_at(b.port, "/v1/items/i3", &hidden), 200);
    assert_true(hidden);
    assert_int_equal(record_at(b.port, "/v1/items/i8", &hidden), 200);
    assert_false(hidden);
    assert_int_equal(record_at(b.port, "/v1/users/u5", NULL), 404); /* replayed in order */
    check_filters(b.port, 4, e, "rebuilt after a Redis restart");
    kill(b.pid, SIGTERM);
    int status = tu_child_wait(&b);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    tu_redis_stop(&rs);
}

/* A node's local checkpoint carries the catalog: one node with --db
 * trims the streams past the catalog entries, stops, and restarted from
 * its checkpoint alone (the entries are gone from Redis) has the records
 * and the filters. */
static void test_catalog_in_local_checkpoint(void **state)
{
    (void)state;
    const char *bin = tu_hogrec_bin();
    unsetenv("HOGREC_REDIS_PASSWORD");
    tu_redis rs = {0};
    tu_redis_start(&rs);
    char url[64], dir[256], db[512];
    snprintf(url, sizeof url, "%s", tu_redis_url(&rs));
    snprintf(dir, sizeof dir, "%s", tu_tmpdir());
    snprintf(db, sizeof db, "%s/node-a.db", dir);
    tu_child a;
    assert_true(spawn_node_db(&a, bin, url, "cl", "a", "300", db));
    tu_wait_leader(&a, 1, WAIT_SECONDS);
    post_events(a.port, "e1");
    char *body = bulk_items();
    catalog_write(a.port, "POST", "/v1/items", body, NULL);
    free(body);
    hr_estream_id cat = catalog_write(a.port, "PUT", "/v1/items/i3",
                                      "{\"categories\":[\"odd\"],\"hidden\":true}", NULL);
    for (int round = 0; round < WAIT_SECONDS * 10; round++) {
        if (hr_estream_id_cmp(events_trimmed(url, "cl"), cat) > 0)
            break;
        char tag[16];
        snprintf(tag, sizeof tag, "t%d", round);
        post_events(a.port, tag);
        tu_sleep_ms(100);
    }
    assert_true(hr_estream_id_cmp(events_trimmed(url, "cl"), cat) > 0);
    kill(a.pid, SIGTERM);
    int status = tu_child_wait(&a);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);

    assert_true(spawn_node_db(&a, bin, url, "cl", "a", "300", db));
    tu_wait_leader(&a, 1, WAIT_SECONDS);
    hr_estream_id e = post_events(a.port, "e2");
    bool hidden = false;
    assert_int_equal(record_at(a.port, "/v1/items/i3", &hidden), 200);
    assert_true(hidden);
    assert_int_equal(record_at(a.port, "/v1/items/i6", &hidden), 200);
    check_filters(a.port, 2, e, "restarted from its local checkpoint");
    kill(a.pid, SIGTERM);
    status = tu_child_wait(&a);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    tu_redis_stop(&rs);
    tu_rmtree(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_catalog_replicated, tu_nodes_teardown),
        cmocka_unit_test_teardown(test_catalog_survives_redis_restart, tu_nodes_teardown),
        cmocka_unit_test_teardown(test_catalog_in_local_checkpoint, tu_nodes_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

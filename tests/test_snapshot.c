/*
 * test_snapshot.c - snapshots of a cluster node's model, the HTTP client
 * that fetches them, and bootstrap from them (issue case 3: a follower
 * killed and restarted catches up).
 *
 * Module level: a model written with hr_snapshot_write and loaded with
 * hr_snapshot_load into another model (which holds ids of its own at
 * other rows) scores and counts as the first; the file's meta comes back;
 * another model shape is refused. hr_httpc_get against a small server of
 * this test: Content-Length and chunked bodies reach the fd byte for
 * byte, a body cut short is HR_EIO, an error answer keeps its text.
 *
 * End to end with real processes (a redis-server of the test's own,
 * `hogrec serve --redis` nodes with a small delta_retention_ms so the
 * leader trims the streams while the test runs): GET /v1/admin/snapshot
 * needs the admin token and answers a file whose X-Hogrec-Delta names
 * the delta its meta records; a follower killed with kill -9 while events
 * are posted and the deltas it missed are trimmed, then restarted,
 * bootstraps from the leader's snapshot and then scores every sampled
 * pair as the leader does, with the same events counted; a node started
 * after trimming bootstraps too; and after every node died, a node that
 * finds the deltas trimmed stays unready and never takes the lease.
 *
 * Waits are bounded polls for a state; nothing asserts a duration.
 */
/* ctest-labels: concurrent */
#include "testutil.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <strings.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "hogrec/estream.h"
#include "hogrec/httpc.h"
#include "hogrec/redis.h"
#include "hogrec/sgd.h"
#include "hogrec/snapshot.h"

#define TOKEN "snap-token"
#define USERS 40
#define ITEMS 60
#define TRAINED_VALUES 6
#define EVENTS_PER 100
#define CHILD_BOUND 300   /* seconds a node may live */
#define WAIT_SECONDS 60   /* bound of every poll */
#define RETENTION "300"   /* delta_retention_ms of the nodes */

/* ---- module level: write and load ---- */

/* Fills the rows of model m from seed s: ids u<i> and i<i> at rows the
 * model picks, every row's floats set. */
static void fill_model(hr_model *m, unsigned s, int users, int items)
{
    const hr_row_layout *L = hr_model_layout(m);
    float row[L->floats];
    char key[32];
    for (int t = 0; t < HR_TABLE_COUNT; t++) {
        int n = t == HR_TABLE_USER ? users : t == HR_TABLE_ITEM ? items : -1;
        for (int i = 0; i < n; i++) {
            snprintf(key, sizeof key, "%c%d", t == HR_TABLE_USER ? 'u' : 'i', i);
            uint32_t r;
            assert_int_equal(hr_model_intern(m, (hr_table_id)t, key, strlen(key), &r, NULL),
                             HR_OK);
        }
        uint32_t rows = hr_model_rows(m, (hr_table_id)t);
        for (uint32_t r = 0; r < rows; r++) {
            for (uint32_t f = 0; f < L->floats; f++)
                row[f] = (float)((r * 31u + f * 7u + s * 13u + (unsigned)t) % 97) / 97.0f - 0.5f;
            hr_sgd_row_write(L, hr_model_row(m, (hr_table_id)t, r), row);
        }
    }
}

/* Every id of a is at the same row of b and every row's floats are equal;
 * b holds no id a does not. */
static void assert_same_model(hr_model *a, hr_model *b)
{
    const hr_row_layout *L = hr_model_layout(a);
    float ra[L->floats], rb[L->floats];
    for (int t = 0; t < HR_TABLE_COUNT; t++) {
        bool ids = t == HR_TABLE_USER || t == HR_TABLE_ITEM;
        if (ids)
            assert_int_equal(hr_model_id_count(a, (hr_table_id)t),
                             hr_model_id_count(b, (hr_table_id)t));
        uint32_t rows = hr_model_rows(a, (hr_table_id)t);
        for (uint32_t r = 0; r < rows; r++) {
            size_t la = 0, lb = 0;
            const char *ka = ids && r ? hr_model_key(a, (hr_table_id)t, r, &la) : NULL;
            const char *kb = ids && r ? hr_model_key(b, (hr_table_id)t, r, &lb) : NULL;
            if (ids && r) {
                assert_true((ka == NULL) == (kb == NULL));
                if (!ka)
                    continue;
                assert_int_equal(la, lb);
                assert_memory_equal(ka, kb, la);
            }
            hr_sgd_row_read(L, hr_model_row(a, (hr_table_id)t, r), ra);
            hr_sgd_row_read(L, hr_model_row(b, (hr_table_id)t, r), rb);
            assert_memory_equal(ra, rb, sizeof ra);
        }
    }
}

static void tmp_path(char *out, size_t cap, const char *what)
{
    snprintf(out, cap, "/tmp/hogrec-test-%s-XXXXXX", what);
    int fd = mkstemp(out);
    assert_true(fd >= 0);
    close(fd);
}

static void test_write_load_round_trip(void **state)
{
    (void)state;
    hr_model *a = tu_small_model(256, 256), *b = tu_small_model(256, 256);
    fill_model(a, 1, 50, 70);
    /* b has ids of its own: one the snapshot has at another row (i3 at
     * row 1 here), others the snapshot does not have (z..., w...), at rows
     * the snapshot fills (1-70 items, 1-50 users) and beyond (2 items, 3
     * users); its rows hold other values */
    uint32_t r;
    char key[16];
    assert_int_equal(hr_model_intern(b, HR_TABLE_ITEM, "i3", 2, &r, NULL), HR_OK);
    for (int i = 0; i < 71; i++) {
        snprintf(key, sizeof key, "z%d", i);
        assert_int_equal(hr_model_intern(b, HR_TABLE_ITEM, key, strlen(key), &r, NULL), HR_OK);
    }
    for (int i = 0; i < 53; i++) {
        snprintf(key, sizeof key, "w%d", i);
        assert_int_equal(hr_model_intern(b, HR_TABLE_USER, key, strlen(key), &r, NULL), HR_OK);
    }
    fill_model(b, 2, 0, 0);

    hr_schedule s;
    hr_schedule_defaults(&s);
    hr_schedbox *sa = NULL, *sb = NULL;
    hr_error err = {{0}, {0}};
    assert_int_equal(hr_schedbox_create(&s, &sa, &err), HR_OK);
    assert_int_equal(hr_schedbox_create(&s, &sb, &err), HR_OK);
    hr_schedule s2 = s;
    s2.eta0 = s.eta0 / 2;
    uint64_t v = 0;
    assert_int_equal(hr_schedbox_swap(sa, &s2, 10, 0.5, &v, &err), HR_OK);
    assert_int_equal(v, 2);

    char path[128];
    tmp_path(path, sizeof path, "snap");
    hr_snapshot_meta meta = {.delta = "1700000000000-3", .covered = "1700000000000-9",
                             .started = true, .epoch = 4, .seq = 17, .schedule_version = 2,
                             .taken = 1.5};
    hr_snapshot_stats ws, ls;
    hr_status wst = hr_snapshot_write(path, a, sa, NULL, &meta, &ws, &err);
    if (wst != HR_OK)
        fail_msg("write: %s", err.message);
    assert_true(ws.bytes > 0);
    assert_int_equal(ws.ids, 120);

    hr_snapshot_meta got;
    assert_int_equal(hr_snapshot_load(path, b, sb, NULL, &got, &ls, &err), HR_OK);
    assert_string_equal(got.delta, meta.delta);
    assert_string_equal(got.covered, meta.covered);
    assert_true(got.started);
    assert_int_equal(got.epoch, 4);
    assert_int_equal(got.seq, 17);
    assert_int_equal(got.schedule_version, 2);
    assert_int_equal(ls.rows, ws.rows);
    assert_int_equal(ls.removed, 5); /* the ids at rows beyond the snapshot's */
    assert_same_model(a, b);
    assert_int_equal(hr_model_lookup(b, HR_TABLE_ITEM, "z70", 3), HR_ID_NONE);
    assert_int_equal(hr_model_lookup(b, HR_TABLE_ITEM, "z5", 2), HR_ID_NONE);
    assert_int_equal(hr_model_lookup(b, HR_TABLE_ITEM, "i3", 2),
                     hr_model_lookup(a, HR_TABLE_ITEM, "i3", 2));
    /* the schedule change came with it */
    assert_int_equal(hr_schedbox_current(sb)->version, 2);
    assert_true(hr_schedbox_current(sb)->eta0 == s2.eta0);

    /* another shape is refused before anything is written */
    hr_model *other = tu_small_model(128, 256);
    fill_model(other, 3, 0, 0);
    hr_config c;
    tu_small_config(&c, "");
    c.k = 4;
    hr_model_config mc;
    assert_int_equal(hr_model_config_from(&c, &s, &mc, &err), HR_OK);
    hr_model *k4 = NULL;
    assert_int_equal(hr_model_create(&mc, &k4, &err), HR_OK);
    hr_config_free(&c);
    assert_int_equal(hr_snapshot_load(path, k4, sb, NULL, &got, NULL, &err), HR_EINVAL);
    assert_int_equal(hr_model_id_count(k4, HR_TABLE_ITEM), 0);

    /* a file that is not a snapshot */
    char junk[128];
    tmp_path(junk, sizeof junk, "junk");
    FILE *f = fopen(junk, "w");
    assert_non_null(f);
    fputs("not a database, not at all; just some text long enough to be a header........\n"
          "......................................................................\n",
          f);
    fclose(f);
    assert_int_not_equal(hr_snapshot_read_meta(junk, &got, &err), HR_OK);
    unlink(junk);
    unlink(path);
    hr_model_destroy(a);
    hr_model_destroy(b);
    hr_model_destroy(other);
    hr_model_destroy(k4);
    hr_schedbox_destroy(sa);
    hr_schedbox_destroy(sb);
}

/* A model of tu_small_config's shape stored as `storage`. */
static hr_model *small_model_as(hr_storage storage)
{
    hr_config c;
    tu_small_config(&c, "");
    c.max_users = 256;
    c.max_items = 256;
    c.storage = storage;
    hr_schedule s;
    hr_schedule_defaults(&s);
    hr_model_config mc;
    hr_error err;
    assert_int_equal(hr_model_config_from(&c, &s, &mc, &err), HR_OK);
    hr_model *m = NULL;
    assert_int_equal(hr_model_create(&mc, &m, &err), HR_OK);
    hr_config_free(&c);
    return m;
}

/* A snapshot records its storage: bf16 rows load into a bf16 model as they
 * were; a model of the other storage refuses it (not converted), naming
 * both, either way round, and is left empty. */
static void test_bf16_snapshot(void **state)
{
    (void)state;
    hr_schedule s;
    hr_schedule_defaults(&s);
    hr_schedbox *sb = NULL;
    hr_error err = {{0}, {0}};
    assert_int_equal(hr_schedbox_create(&s, &sb, &err), HR_OK);
    for (int way = 0; way < 2; way++) {
        hr_storage from = way ? HR_STORAGE_F32 : HR_STORAGE_BF16;
        hr_storage to = way ? HR_STORAGE_BF16 : HR_STORAGE_F32;
        hr_model *a = small_model_as(from), *same = small_model_as(from);
        hr_model *other = small_model_as(to);
        fill_model(a, 5, 20, 30);
        char path[128];
        tmp_path(path, sizeof path, "snapbf16");
        hr_snapshot_meta meta = {.delta = "1700000000000-1", .epoch = 1, .seq = 1};
        hr_snapshot_meta got;
        assert_int_equal(hr_snapshot_write(path, a, sb, NULL, &meta, NULL, &err), HR_OK);
        assert_int_equal(hr_snapshot_load(path, same, sb, NULL, &got, NULL, &err), HR_OK);
        assert_same_model(a, same);
        assert_int_equal(hr_snapshot_load(path, other, sb, NULL, &got, NULL, &err), HR_EINVAL);
        char want[128];
        snprintf(want, sizeof want, "stores embedding weights as %s; this node stores them as %s",
                 hr_storage_to_string(from), hr_storage_to_string(to));
        if (!strstr(err.message, want))
            fail_msg("message: %s", err.message);
        assert_int_equal(hr_model_id_count(other, HR_TABLE_ITEM), 0);
        unlink(path);
        hr_model_destroy(a);
        hr_model_destroy(same);
        hr_model_destroy(other);
    }
    hr_schedbox_destroy(sb);
}

/* ---- module level: the HTTP client ---- */

/* A one-connection server: accepts, reads the request head, answers
 * `reply` (len bytes) and closes. */
typedef struct {
    int lfd, port;
    const char *reply;
    size_t len;
    char request[2048];
} one_server;

static void *one_server_main(void *arg)
{
    one_server *s = arg;
    int fd = accept(s->lfd, NULL, NULL);
    if (fd < 0)
        return NULL;
    size_t got = 0;
    while (got + 1 < sizeof s->request) {
        ssize_t n = recv(fd, s->request + got, sizeof s->request - 1 - got, 0);
        if (n <= 0)
            break;
        got += (size_t)n;
        s->request[got] = 0;
        if (strstr(s->request, "\r\n\r\n"))
            break;
    }
    size_t sent = 0;
    while (sent < s->len) {
        ssize_t n = send(fd, s->reply + sent, s->len - sent, MSG_NOSIGNAL);
        if (n <= 0)
            break;
        sent += (size_t)n;
    }
    close(fd);
    return NULL;
}

/* Runs one GET against a server answering reply; the body lands in a
 * temporary file whose contents are returned (new) in *body. */
static hr_status get_once(const char *reply, size_t len, hr_httpc_response *resp, char **body,
                          size_t *blen, char *request, size_t rcap)
{
    one_server s = {.reply = reply, .len = len};
    s.lfd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(s.lfd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(s.lfd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(s.lfd, 1), 0);
    socklen_t al = sizeof a;
    assert_int_equal(getsockname(s.lfd, (struct sockaddr *)&a, &al), 0);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, one_server_main, &s), 0);
    char hp[64], path[128];
    snprintf(hp, sizeof hp, "127.0.0.1:%d", ntohs(a.sin_port));
    tmp_path(path, sizeof path, "body");
    int fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    hr_httpc_limits lim;
    hr_httpc_limits_defaults(&lim);
    lim.idle_ms = 5000;
    hr_error err = {{0}, {0}};
    hr_status st = hr_httpc_get(hp, "/v1/admin/snapshot", "Bearer t0k", fd, &lim, resp, &err);
    pthread_join(th, NULL);
    close(s.lfd);
    struct stat sb;
    assert_int_equal(fstat(fd, &sb), 0);
    *blen = (size_t)sb.st_size;
    *body = malloc(*blen + 1);
    assert_int_equal(pread(fd, *body, *blen, 0), (ssize_t)*blen);
    (*body)[*blen] = 0;
    close(fd);
    unlink(path);
    snprintf(request, rcap, "%s", s.request);
    return st;
}

static void test_httpc(void **state)
{
    (void)state;
    hr_httpc_response *resp = malloc(sizeof *resp);
    char *body = NULL, req[2048], v[64];
    size_t blen = 0;
    /* Content-Length, a binary body with NULs */
    static const char cl[] = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\nX-Hogrec-Delta:  5-1 \r\n"
                             "\r\nab\0cd\r\nef\n";
    assert_int_equal(get_once(cl, sizeof cl - 1, resp, &body, &blen, req, sizeof req), HR_OK);
    assert_int_equal(resp->status, 200);
    assert_int_equal(blen, 10);
    assert_memory_equal(body, "ab\0cd\r\nef\n", 10);
    assert_true(hr_httpc_header(resp, "x-hogrec-delta", v, sizeof v));
    assert_string_equal(v, "5-1");
    assert_false(hr_httpc_header(resp, "X-Missing", v, sizeof v));
    assert_non_null(strstr(req, "GET /v1/admin/snapshot HTTP/1.1\r\n"));
    assert_non_null(strstr(req, "\r\nAuthorization: Bearer t0k\r\n"));
    free(body);
    /* chunked, with an extension and a trailer */
    static const char ch[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                             "4;x=1\r\nwiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\n"
                             "T: 1\r\n\r\n";
    assert_int_equal(get_once(ch, sizeof ch - 1, resp, &body, &blen, req, sizeof req), HR_OK);
    assert_string_equal(body, "wikipedia in\r\n\r\nchunks.");
    free(body);
    /* the connection closes before the declared length */
    static const char cut[] = "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this";
    assert_int_equal(get_once(cut, sizeof cut - 1, resp, &body, &blen, req, sizeof req), HR_EIO);
    free(body);
    /* an error answer: its text, nothing written */
    static const char e401[] = "HTTP/1.1 401 Unauthorized\r\nContent-Length: 12\r\n\r\n{\"error\":1}\n";
    assert_int_equal(get_once(e401, sizeof e401 - 1, resp, &body, &blen, req, sizeof req), HR_OK);
    assert_int_equal(resp->status, 401);
    assert_int_equal(blen, 0);
    assert_string_equal(resp->error_body, "{\"error\":1}\n");
    free(body);
    /* not HTTP */
    static const char junk[] = "SSH-2.0-OpenSSH\r\n\r\n";
    assert_int_equal(get_once(junk, sizeof junk - 1, resp, &body, &blen, req, sizeof req),
                     HR_ECORRUPT);
    free(body);
    /* nobody listening; a bad address */
    hr_error err = {{0}, {0}};
    int fd = open("/dev/null", O_WRONLY);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(s, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t al = sizeof a;
    getsockname(s, (struct sockaddr *)&a, &al);
    close(s); /* a port nobody listens on now */
    char hp[64];
    snprintf(hp, sizeof hp, "127.0.0.1:%d", ntohs(a.sin_port));
    assert_int_equal(hr_httpc_get(hp, "/", NULL, fd, NULL, resp, &err), HR_EIO);
    assert_int_equal(hr_httpc_get("no-port", "/", NULL, fd, NULL, resp, &err), HR_EINVAL);
    close(fd);
    free(resp);
}

/* ---- end to end ---- */

/* Starts node `id` of cluster `name` (admin token TOKEN, delta retention
 * `retention` ms); true once it logged "ready" (listening; /readyz says
 * when it caught up). */
static bool spawn_node_db(tu_child *ch, const char *bin, const char *url, const char *name,
                          const char *id, const char *retention, const char *db);

static bool spawn_node(tu_child *ch, const char *bin, const char *url, const char *name,
                       const char *id, const char *retention)
{
    return spawn_node_db(ch, bin, url, name, id, retention, "");
}

/* spawn_node with a local checkpoint file db ("" none), written every
 * 0.2 s. */
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

static long long int_at(json_t *o, const char *a, const char *b)
{
    json_t *v = json_object_get(json_object_get(o, a), b);
    return json_is_integer(v) ? (long long)json_integer_value(v) : -1;
}

static bool is_ready(int port) { return tu_http(port, "GET", "/readyz", NULL, NULL, NULL) == 200; }

/* Polls until node `port` is ready and its role is `role`; false at the
 * bound. */
static bool wait_role(int port, const char *role)
{
    for (int round = 0; round < WAIT_SECONDS * 20; round++) {
        json_t *o = tu_cluster_of(port);
        bool ok = o && !strcmp(tu_json_str(o, "role", NULL), role) && is_ready(port);
        json_decref(o);
        if (ok)
            return true;
        tu_sleep_ms(50);
    }
    return false;
}

/* Request r of EVENTS_PER events, each with the id "<tag>-<r>-<i>". New. */
static char *events_body(const char *tag, int r)
{
    size_t cap = (size_t)EVENTS_PER * 160 + 16, len = 0;
    char *b = malloc(cap);
    assert_non_null(b);
    len += (size_t)snprintf(b + len, cap - len, "[");
    for (int i = 0; i < EVENTS_PER; i++) {
        unsigned x = (unsigned)(r * EVENTS_PER + i) * 2654435761u;
        len += (size_t)snprintf(b + len, cap - len,
                                "%s{\"id\":\"%s-%d-%d\",\"user\":\"u%u\",\"item\":\"i%u\","
                                "\"label\":%u,\"features\":{\"d\":\"v%u\"}}",
                                i ? "," : "", tag, r, i, (x >> 8) % USERS, (x >> 16) % ITEMS,
                                (x >> 4) & 1, (x >> 24) % TRAINED_VALUES);
    }
    snprintf(b + len, cap - len, "]");
    return b;
}

static void post_range(const char *tag, int from, int to, int port)
{
    for (int r = from; r < to; r++) {
        char *body = events_body(tag, r);
        long s = tu_http(port, "POST", "/v1/events", body, NULL, NULL);
        free(body);
        assert_int_equal(s, 202);
    }
}

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

/* Scores of sampled pairs on node a equal node b's; returns the pairs. */
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

/* A Redis connection of the test's own. */
static hr_redis *redis_of(const char *url)
{
    hr_redis *r = NULL;
    hr_error err = {{0}, {0}};
    if (hr_redis_open(url, NULL, &r, &err) != HR_OK)
        fail_msg("cannot connect to %s: %s", url, err.message);
    return r;
}

/* XINFO STREAM key's entries-added minus its length: how many entries
 * were ever deleted (trimming deletes the oldest: they are the first
 * that many ever added). 0 when there is no stream. */
static long long deleted_of(hr_redis *r, const char *key)
{
    redisReply *rep = NULL;
    hr_error err = {{0}, {0}};
    long long added = 0, len = 0;
    if (hr_redis_call(r, &rep, &err, "XINFO", "STREAM", key, NULL) != HR_OK)
        return 0;
    for (size_t i = 0; rep->type == REDIS_REPLY_ARRAY && i + 1 < rep->elements; i += 2) {
        if (rep->element[i]->type != REDIS_REPLY_STRING ||
            rep->element[i + 1]->type != REDIS_REPLY_INTEGER)
            continue;
        if (!strcmp(rep->element[i]->str, "entries-added"))
            added = rep->element[i + 1]->integer;
        else if (!strcmp(rep->element[i]->str, "length"))
            len = rep->element[i + 1]->integer;
    }
    freeReplyObject(rep);
    return added - len;
}

/* XINFO STREAM key's entries-added. */
static long long added_of(hr_redis *r, const char *key)
{
    redisReply *rep = NULL;
    hr_error err = {{0}, {0}};
    long long added = 0;
    if (hr_redis_call(r, &rep, &err, "XINFO", "STREAM", key, NULL) != HR_OK)
        return 0;
    for (size_t i = 0; rep->type == REDIS_REPLY_ARRAY && i + 1 < rep->elements; i += 2)
        if (rep->element[i]->type == REDIS_REPLY_STRING &&
            !strcmp(rep->element[i]->str, "entries-added") &&
            rep->element[i + 1]->type == REDIS_REPLY_INTEGER)
            added = rep->element[i + 1]->integer;
    freeReplyObject(rep);
    return added;
}

/* Posts requests of tag to port, two at a time, until more entries of
 * the delta stream of cluster name were trimmed than the `kept` first
 * ones (so some added after them are gone too) and the event stream lost
 * entries; *next counts the requests. */
static void post_until_trimmed(const char *url, const char *name, const char *tag, int port,
                               long long kept, int *next)
{
    hr_redis *r = redis_of(url);
    char dkey[96], ekey[96];
    snprintf(dkey, sizeof dkey, "hogrec:{%s}:deltas", name);
    snprintf(ekey, sizeof ekey, "hogrec:{%s}:events", name);
    bool trimmed = false;
    for (int round = 0; round < WAIT_SECONDS * 10 && !trimmed; round++) {
        post_range(tag, *next, *next + 2, port);
        *next += 2;
        tu_sleep_ms(100);
        trimmed = deleted_of(r, dkey) > kept && deleted_of(r, ekey) > 0;
    }
    hr_redis_destroy(r);
    if (!trimmed)
        fail_msg("the leader did not trim the streams past the first %lld deltas within %d s",
                 kept, WAIT_SECONDS);
}

/* GET /v1/admin/snapshot through libcurl (not the module under test). */
typedef struct {
    FILE *f;
    char delta[80];
} fetched;

static size_t on_header(char *b, size_t size, size_t n, void *arg)
{
    fetched *fe = arg;
    size_t len = size * n;
    if (len > 16 && !strncasecmp(b, "X-Hogrec-Delta:", 15)) {
        size_t k = len - 15;
        if (k >= sizeof fe->delta)
            k = sizeof fe->delta - 1;
        memcpy(fe->delta, b + 15, k);
        fe->delta[k] = 0;
        char *p = fe->delta, *e;
        while (*p == ' ')
            p++;
        memmove(fe->delta, p, strlen(p) + 1);
        for (e = fe->delta + strlen(fe->delta); e > fe->delta && (e[-1] == '\r' || e[-1] == '\n');)
            *--e = 0;
    }
    return len;
}

static long get_snapshot(int port, const char *auth, const char *path, char *delta, size_t cap)
{
    fetched fe = {fopen(path, "wb"), ""};
    assert_non_null(fe.f);
    CURL *h = curl_easy_init();
    char url[96];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/v1/admin/snapshot", port);
    struct curl_slist *hdr = NULL;
    if (auth)
        hdr = curl_slist_append(hdr, auth);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, fe.f);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, &fe);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, 120L);
    long status = 0;
    if (curl_easy_perform(h) == CURLE_OK)
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(hdr);
    curl_easy_cleanup(h);
    fclose(fe.f);
    snprintf(delta, cap, "%s", fe.delta);
    return status;
}

/* (c) The route: the admin token, a file whose header names its delta. */
static void test_snapshot_route(void **state)
{
    (void)state;
    const char *bin = tu_hogrec_bin();
    unsetenv("HOGREC_REDIS_PASSWORD");
    tu_redis rs = {0};
    tu_redis_start(&rs);
    char url[64];
    snprintf(url, sizeof url, "%s", tu_redis_url(&rs));
    tu_child a;
    assert_true(spawn_node(&a, bin, url, "s1", "a", "0"));
    assert_true(wait_role(a.port, "leader"));
    post_range("r", 0, 10, a.port);
    assert_true(tu_wait_covered(a.port, tu_stream_last(url, "s1"), WAIT_SECONDS));

    char path[128], delta[80];
    tmp_path(path, sizeof path, "route");
    assert_int_equal(get_snapshot(a.port, NULL, path, delta, sizeof delta), 401);
    assert_int_equal(get_snapshot(a.port, "Authorization: Bearer wrong", path, delta,
                                  sizeof delta), 401);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    assert_int_equal(get_snapshot(a.port, "Authorization: Bearer " TOKEN, path, delta,
                                  sizeof delta), 200);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    hr_snapshot_meta meta;
    hr_error err = {{0}, {0}};
    assert_int_equal(hr_snapshot_read_meta(path, &meta, &err), HR_OK);
    assert_string_equal(delta, meta.delta);
    /* a quiet leader: the snapshot is at its last delta, covering the
     * stream's last entry */
    json_t *o = tu_cluster_of(a.port);
    assert_string_equal(meta.delta, tu_json_str(o, "applied", "delta"));
    assert_string_equal(meta.covered, tu_json_str(o, "applied", "covered_entry"));
    json_decref(o);
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    fprintf(stderr, "snapshot: %lld bytes, %.0f ms (k 8, %d users, %d items, 2^16 context rows)\n",
            (long long)sb.st_size,
            (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6, USERS, ITEMS);
    unlink(path);

    kill(a.pid, SIGTERM);
    assert_true(WIFEXITED(tu_child_wait(&a)));
    tu_redis_stop(&rs);
}

/* (a) Issue case 3: a follower killed (kill -9) while events are posted
 * and the deltas it missed are trimmed; restarted, it cannot follow the
 * delta stream from where it was and bootstraps from the leader's
 * snapshot, then follows: once it covers the stream's last entry, it
 * scores every sampled pair as the leader does and counts the same
 * events. Then (b): a node started after trimming bootstraps too. */
static void test_follower_restart_bootstraps(void **state)
{
    (void)state;
    const char *bin = tu_hogrec_bin();
    unsetenv("HOGREC_REDIS_PASSWORD");
    tu_redis rs = {0};
    tu_redis_start(&rs);
    char url[64];
    snprintf(url, sizeof url, "%s", tu_redis_url(&rs));
    tu_child a, b;
    assert_true(spawn_node(&a, bin, url, "s2", "a", RETENTION));
    assert_true(wait_role(a.port, "leader"));
    assert_true(spawn_node(&b, bin, url, "s2", "b", RETENTION));
    assert_true(wait_role(b.port, "follower"));
    int next = 0;
    post_range("k", 0, 10, a.port);
    next = 10;
    hr_estream_id last = tu_stream_last(url, "s2");
    assert_true(tu_wait_covered(b.port, last, WAIT_SECONDS));
    /* b applied every delta that exists now (a quiet leader publishes
     * none) */
    hr_redis *r = redis_of(url);
    long long kept = added_of(r, "hogrec:{s2}:deltas");
    hr_redis_destroy(r);
    json_t *o = NULL;
    kill(b.pid, SIGKILL);
    tu_child_wait(&b);
    post_until_trimmed(url, "s2", "k", a.port, kept, &next);

    assert_true(spawn_node(&b, bin, url, "s2", "b", RETENTION));
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (!wait_role(b.port, "follower"))
        fail_msg("the restarted follower is not ready within %d s", WAIT_SECONDS);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    o = tu_cluster_of(b.port);
    assert_true(int_at(o, "snapshots", "loaded") >= 1);
    json_decref(o);
    fprintf(stderr, "bootstrap: restarted follower ready %.0f ms after its start was logged\n",
            (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6);
    post_range("k", next, next + 5, b.port); /* and it keeps following */
    next += 5;
    last = tu_stream_last(url, "s2");
    assert_true(tu_wait_covered(a.port, last, WAIT_SECONDS));
    assert_true(tu_wait_covered(b.port, last, WAIT_SECONDS));
    long long want = (long long)next * EVENTS_PER;
    assert_int_equal(tu_events_counted(a.port), want);
    assert_int_equal(tu_events_counted(b.port), want);
    assert_true(compare_scores(a.port, b.port, "restarted follower") > 50);

    /* (b) a node that never ran, started after trimming */
    tu_child c;
    assert_true(spawn_node(&c, bin, url, "s2", "c", RETENTION));
    if (!wait_role(c.port, "follower"))
        fail_msg("the new node is not ready within %d s", WAIT_SECONDS);
    o = tu_cluster_of(c.port);
    assert_true(int_at(o, "snapshots", "loaded") >= 1);
    json_decref(o);
    assert_true(tu_wait_covered(c.port, last, WAIT_SECONDS));
    assert_int_equal(tu_events_counted(c.port), want);
    assert_true(compare_scores(a.port, c.port, "new node") > 50);

    /* The trim points only move forward: set far ahead (as a newer leader
     * would have), they stay there while the leader trims on, which a
     * plain SET of its own older points would lower. */
    static const char *const ahead = "99999999999999-0";
    r = redis_of(url);
    const char *keys[] = {"hogrec:{s2}:deltas_trimmed", "hogrec:{s2}:events_trimmed"};
    redisReply *rep = NULL;
    hr_error err = {{0}, {0}};
    for (int k = 0; k < 2; k++) {
        assert_int_equal(hr_redis_call(r, &rep, &err, "SET", keys[k], ahead, NULL), HR_OK);
        freeReplyObject(rep);
    }
    post_until_trimmed(url, "s2", "k", a.port, deleted_of(r, "hogrec:{s2}:deltas"), &next);
    for (int k = 0; k < 2; k++) {
        assert_int_equal(hr_redis_call(r, &rep, &err, "GET", keys[k], NULL), HR_OK);
        assert_int_equal(rep->type, REDIS_REPLY_STRING);
        assert_string_equal(rep->str, ahead);
        freeReplyObject(rep);
    }
    hr_redis_destroy(r);

    kill(a.pid, SIGTERM);
    kill(b.pid, SIGTERM);
    kill(c.pid, SIGTERM);
    assert_true(WIFEXITED(tu_child_wait(&a)));
    assert_true(WIFEXITED(tu_child_wait(&b)));
    assert_true(WIFEXITED(tu_child_wait(&c)));
    tu_redis_stop(&rs);
}

/* Whole-cluster restart after trimming: every node died (kill -9), so no
 * peer has a snapshot; a node started then finds the deltas it would
 * rebuild from trimmed. It must not lead with a model that misses the
 * trimmed history: it stays unready ("bootstrapping") and the lease stays
 * free while it retries. */
static void test_whole_cluster_restart_refuses_to_lead(void **state)
{
    (void)state;
    const char *bin = tu_hogrec_bin();
    unsetenv("HOGREC_REDIS_PASSWORD");
    tu_redis rs = {0};
    tu_redis_start(&rs);
    char url[64];
    snprintf(url, sizeof url, "%s", tu_redis_url(&rs));
    tu_child a;
    assert_true(spawn_node(&a, bin, url, "s3", "a", RETENTION));
    assert_true(wait_role(a.port, "leader"));
    int next = 0;
    post_until_trimmed(url, "s3", "w", a.port, 0, &next);
    kill(a.pid, SIGKILL);
    tu_child_wait(&a);

    tu_child b;
    assert_true(spawn_node(&b, bin, url, "s3", "b", RETENTION));
    hr_redis *r = redis_of(url);
    /* polls for 3 lease times: never ready, never the leader, the lease
     * (free once a's expired) never taken */
    for (int round = 0; round < 90; round++) {
        json_t *o = tu_cluster_of(b.port);
        assert_non_null(o);
        assert_string_not_equal(tu_json_str(o, "role", NULL), "leader");
        json_decref(o);
        assert_false(is_ready(b.port));
        tu_sleep_ms(100);
    }
    json_t *o = tu_cluster_of(b.port);
    assert_true(json_is_true(json_object_get(json_object_get(o, "snapshots"), "bootstrapping")));
    json_decref(o);
    /* and it has no snapshot to give */
    char path[128], delta[80];
    tmp_path(path, sizeof path, "none");
    assert_int_equal(get_snapshot(b.port, "Authorization: Bearer " TOKEN, path, delta,
                                  sizeof delta), 409);
    unlink(path);
    redisReply *rep = NULL;
    hr_error err = {{0}, {0}};
    assert_int_equal(hr_redis_call(r, &rep, &err, "EXISTS", "hogrec:{s3}:leader", NULL), HR_OK);
    assert_int_equal(rep->integer, 0);
    freeReplyObject(rep);
    hr_redis_destroy(r);
    kill(b.pid, SIGTERM);
    assert_true(WIFEXITED(tu_child_wait(&b)));
    tu_redis_stop(&rs);
}

/* The covered entry of the local checkpoint at path ({0, 0} none yet). */
static hr_estream_id checkpoint_covered(const char *path)
{
    hr_snapshot_meta meta;
    hr_error err = {{0}, {0}};
    struct stat sb;
    if (stat(path, &sb) != 0 || hr_snapshot_read_meta(path, &meta, &err) != HR_OK ||
        !meta.covered[0])
        return (hr_estream_id){0, 0};
    return tu_stream_id(meta.covered);
}

/* Whole-cluster restart after trimming, with local checkpoints (--db in
 * cluster mode): every node killed with kill -9; the leader restarted
 * from its checkpoint loads it, leads (its checkpoint covers the trimmed
 * events), counts what the checkpoint covered plus the events posted
 * after, and a new node bootstraps from it. A standalone server refuses a
 * node's checkpoint file. */
static void test_whole_cluster_restart_from_checkpoint(void **state)
{
    (void)state;
    const char *bin = tu_hogrec_bin();
    unsetenv("HOGREC_REDIS_PASSWORD");
    tu_redis rs = {0};
    tu_redis_start(&rs);
    char url[64];
    snprintf(url, sizeof url, "%s", tu_redis_url(&rs));
    char dir[] = "/tmp/hogrec-ckpt-XXXXXX", da[96], db[96];
    assert_non_null(mkdtemp(dir));
    snprintf(da, sizeof da, "%s/a.ckpt", dir);
    snprintf(db, sizeof db, "%s/b.ckpt", dir);
    tu_child a, b;
    assert_true(spawn_node_db(&a, bin, url, "s4", "a", RETENTION, da));
    assert_true(wait_role(a.port, "leader"));
    assert_true(spawn_node_db(&b, bin, url, "s4", "b", RETENTION, db));
    assert_true(wait_role(b.port, "follower"));
    int next = 0;
    post_until_trimmed(url, "s4", "w", a.port, 0, &next);
    hr_estream_id last = tu_stream_last(url, "s4");
    assert_true(tu_wait_covered(a.port, last, WAIT_SECONDS));
    assert_true(tu_wait_covered(b.port, last, WAIT_SECONDS));
    const long long before = (long long)next * EVENTS_PER;
    assert_int_equal(tu_events_counted(a.port), before);
    bool saved = false;
    for (int round = 0; round < WAIT_SECONDS * 20 && !saved; round++) {
        saved = hr_estream_id_cmp(checkpoint_covered(da), last) >= 0;
        if (!saved)
            tu_sleep_ms(50);
    }
    if (!saved)
        fail_msg("the leader's checkpoint does not cover the last entry within %d s",
                 WAIT_SECONDS);
    kill(a.pid, SIGKILL);
    kill(b.pid, SIGKILL);
    tu_child_wait(&a);
    tu_child_wait(&b);

    /* the leader's node restarted with its checkpoint: it leads */
    assert_true(spawn_node_db(&a, bin, url, "s4", "a", RETENTION, da));
    if (!wait_role(a.port, "leader"))
        fail_msg("the node restarted from its checkpoint does not lead within %d s",
                 WAIT_SECONDS);
    assert_int_equal(tu_events_counted(a.port), before);
    post_range("w", next, next + 5, a.port);
    next += 5;
    last = tu_stream_last(url, "s4");
    assert_true(tu_wait_covered(a.port, last, WAIT_SECONDS));
    assert_int_equal(tu_events_counted(a.port), before + 5 * EVENTS_PER);

    /* a new node bootstraps from it */
    tu_child c;
    assert_true(spawn_node(&c, bin, url, "s4", "c", RETENTION));
    if (!wait_role(c.port, "follower"))
        fail_msg("the new node is not ready within %d s", WAIT_SECONDS);
    json_t *o = tu_cluster_of(c.port);
    assert_true(int_at(o, "snapshots", "loaded") >= 1);
    json_decref(o);
    assert_true(tu_wait_covered(c.port, last, WAIT_SECONDS));
    assert_int_equal(tu_events_counted(c.port), before + 5 * EVENTS_PER);
    assert_true(compare_scores(a.port, c.port, "node bootstrapped after the restart") > 50);
    kill(a.pid, SIGTERM);
    kill(c.pid, SIGTERM);
    assert_true(WIFEXITED(tu_child_wait(&a)));
    assert_true(WIFEXITED(tu_child_wait(&c)));

    /* a node's checkpoint is no standalone database */
    struct stat sb;
    assert_int_equal(stat(db, &sb), 0);
    const char *sa[] = {bin, "serve", "--port", "0", "--db", db, NULL};
    tu_child sc;
    tu_child_spawn(&sc, (char *const *)sa, CHILD_BOUND, NULL, NULL);
    json_t *line = tu_child_log_until(&sc, "cannot open", NULL, 0);
    assert_non_null(line);
    const char *msg = json_string_value(json_object_get(line, "detail"));
    if (!msg || !strstr(msg, "cluster node's checkpoint"))
        fail_msg("refusal without the reason: %s", msg ? msg : "(none)");
    json_decref(line);
    int status = tu_child_wait(&sc);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 1);
    char cmd[160];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
    tu_redis_stop(&rs);
}


int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_write_load_round_trip),
        cmocka_unit_test(test_bf16_snapshot),
        cmocka_unit_test(test_httpc),
        cmocka_unit_test_teardown(test_snapshot_route, tu_nodes_teardown),
        cmocka_unit_test_teardown(test_follower_restart_bootstraps, tu_nodes_teardown),
        cmocka_unit_test_teardown(test_whole_cluster_restart_refuses_to_lead, tu_nodes_teardown),
        cmocka_unit_test_teardown(test_whole_cluster_restart_from_checkpoint, tu_nodes_teardown),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}

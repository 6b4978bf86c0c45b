/*
 * test_estream.c - the cluster event stream against a real redis-server
 * started here (AOF on, appendfsync always): append/read round trips,
 * cluster-wide de-duplication across two connections (two nodes), the
 * de-duplication window, a lost reply and its resend (a TCP relay that
 * drops Redis' answer after the script ran), nothing claimed when Redis
 * refuses a write (OOM), kill -9 of redis-server while a thread appends and
 * a restart on the same AOF (every acknowledged entry is still there), the
 * backlog figure, trim, and two appenders in parallel. A catalog entry
 * (hr_estream_append_catalog) between event entries: its place, ordinal
 * and text.
 */
/* ctest-labels: concurrent */
#include "testutil.h"

#include <arpa/inet.h>
#include <inttypes.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "hogrec/api.h"
#include "hogrec/estream.h"
#include "hogrec/events.h"

static tu_redis g_srv;
static const char *const g_fsync_always[] = {"--appendfsync", "always", NULL};

static int teardown(void **state)
{
    (void)state;
    tu_redis_stop(&g_srv);
    memset(&g_srv, 0, sizeof g_srv);
    return 0;
}

static void start_server(void)
{
    g_srv.extra = g_fsync_always;
    tu_redis_start(&g_srv);
}

static hr_redis_options test_redis_options(void)
{
    hr_redis_options o;
    hr_redis_options_defaults(&o);
    o.connect_timeout_ms = 500;
    o.command_timeout_ms = 1000;
    o.backoff_min_ms = 20;
    o.backoff_max_ms = 200;
    return o;
}

static hr_estream *open_stream(const char *url, const char *cluster, uint64_t window_ms,
                               int connections)
{
    hr_redis_options ro = test_redis_options();
    hr_estream_options o;
    hr_estream_options_defaults(&o);
    o.cluster = cluster;
    o.dedup_window_ms = window_ms;
    o.connections = connections;
    hr_estream *s = NULL;
    hr_error err = {{0}, {0}};
    if (hr_estream_open(url, &ro, &o, &s, &err) != HR_OK)
        fail_msg("hr_estream_open: %s", err.message);
    return s;
}

/* ---- batches of events made the way the ingest path makes them ---- */

#define MAX_BATCH 64

typedef struct {
    size_t n;
    char *text[MAX_BATCH]; /* hr_api_event_text */
    size_t len[MAX_BATCH];
    uint64_t hash[MAX_BATCH]; /* hr_events_id_hash of "id"; 0 when none */
    double arrived;
} batch;

/* Event j of a batch: id "e<id>" (no id when id < 0), user and item from
 * the numbers given. */
static void batch_add(batch *b, long id, int user, int item)
{
    assert_true(b->n < MAX_BATCH);
    char us[32], is[32];
    snprintf(us, sizeof us, "u%d", user);
    snprintf(is, sizeof is, "i%d", item);
    json_t *o = json_pack("{s:s, s:s, s:i}", "user", us, "item", is, "label", 1);
    assert_non_null(o);
    b->hash[b->n] = 0;
    if (id >= 0) {
        char ids[32];
        snprintf(ids, sizeof ids, "e%ld", id);
        json_t *jid = json_string(ids);
        b->hash[b->n] = hr_events_id_hash(jid);
        assert_true(b->hash[b->n] != 0);
        json_object_set_new(o, "id", jid);
    }
    b->text[b->n] = hr_api_event_text(o, &b->len[b->n]);
    assert_non_null(b->text[b->n]);
    json_decref(o);
    b->n++;
}

static void batch_free(batch *b)
{
    for (size_t i = 0; i < b->n; i++)
        free(b->text[i]);
    memset(b, 0, sizeof *b);
}

static hr_status append(hr_estream *s, const batch *b, bool *dup, hr_estream_appended *out,
                        hr_error *err)
{
    return hr_estream_append(s, b->n, (const char *const *)b->text, b->len, b->hash, b->arrived,
                             dup, out, err);
}

static hr_estream_appended append_ok(hr_estream *s, const batch *b, bool *dup)
{
    hr_estream_appended out;
    hr_error err = {{0}, {0}};
    if (append(s, b, dup, &out, &err) != HR_OK)
        fail_msg("append: %s", err.message);
    return out;
}

/* ---- reading everything back ---- */

#define MAX_SEEN 4096

typedef struct {
    size_t entries;
    hr_estream_id id[MAX_SEEN];
    uint64_t ordinal[MAX_SEEN];
    double arrived[MAX_SEEN];
    size_t n[MAX_SEEN];
    size_t events;
    char *text[MAX_SEEN];   /* every event, in order (copies) */
    uint64_t hash[MAX_SEEN];
    size_t stop_after;      /* the callback refuses the entry after this many (0: never) */
} seen;

static hr_status collect(void *arg, const hr_estream_entry *e)
{
    seen *sn = arg;
    if (sn->stop_after && sn->entries == sn->stop_after)
        return HR_ESTOPPED;
    assert_true(sn->entries < MAX_SEEN && sn->events + e->n <= MAX_SEEN);
    size_t k = sn->entries++;
    sn->id[k] = e->id;
    sn->ordinal[k] = e->ordinal;
    sn->arrived[k] = e->arrived;
    sn->n[k] = e->n;
    for (size_t i = 0; i < e->n; i++) {
        assert_int_equal(strlen(e->text[i]), e->len[i]);
        sn->text[sn->events] = strdup(e->text[i]);
        sn->hash[sn->events++] = e->id_hash[i];
    }
    return HR_OK;
}

static void seen_free(seen *sn)
{
    for (size_t i = 0; i < sn->events; i++)
        free(sn->text[i]);
    free(sn);
}

/* Reads the whole stream after `after`, `chunk` entries per read. */
static seen *read_all(hr_estream *s, hr_estream_id after, size_t chunk)
{
    seen *sn = calloc(1, sizeof *sn);
    assert_non_null(sn);
    for (int round = 0; round < 100000; round++) {
        hr_estream_id last;
        size_t count = 0;
        hr_error err = {{0}, {0}};
        if (hr_estream_read(s, after, chunk, 0, collect, sn, &last, &count, &err) != HR_OK)
            fail_msg("read: %s", err.message);
        if (count == 0)
            return sn;
        assert_true(hr_estream_id_cmp(last, after) > 0);
        after = last;
    }
    fail_msg("read_all did not end");
    return sn;
}

static uint64_t length(hr_estream *s)
{
    uint64_t n = 0;
    hr_error err = {{0}, {0}};
    if (hr_estream_length(s, &n, &err) != HR_OK)
        fail_msg("length: %s", err.message);
    return n;
}

static const hr_estream_id ZERO = {0, 0};

/* ---- tests ---- */

static void test_ids(void **state)
{
    (void)state;
    hr_estream_id a, b;
    char buf[HR_ESTREAM_ID_LEN];
    hr_error err = {{0}, {0}};
    assert_int_equal(hr_estream_id_parse("1700000000123-7", &a, &err), HR_OK);
    assert_true(a.ms == 1700000000123ull && a.seq == 7);
    assert_string_equal(hr_estream_id_format(a, buf), "1700000000123-7");
    assert_int_equal(hr_estream_id_parse("18446744073709551615-18446744073709551615", &b, &err), HR_OK);
    assert_true(b.ms == UINT64_MAX && b.seq == UINT64_MAX);
    assert_string_equal(hr_estream_id_format(b, buf), "18446744073709551615-18446744073709551615");
    assert_int_equal(hr_estream_id_parse("42", &b, &err), HR_OK);
    assert_true(b.ms == 42 && b.seq == 0);
    static const char *const bad[] = {"", "-", "1-", "-1", "1-2-3", "a-1", "1-b", " 1-2", "1-2 ",
                                      "+1-2", "18446744073709551616-0", "0-18446744073709551616"};
    for (size_t i = 0; i < HR_ARRAY_LEN(bad); i++)
        if (hr_estream_id_parse(bad[i], &b, &err) != HR_EINVAL)
            fail_msg("'%s' parsed", bad[i]);
    assert_string_equal(err.field, "id");
    /* order: ms first, then seq */
    hr_estream_id x = {5, 9}, y = {6, 0}, z = {6, 1};
    assert_true(hr_estream_id_cmp(x, y) < 0);
    assert_true(hr_estream_id_cmp(y, z) < 0);
    assert_true(hr_estream_id_cmp(z, x) > 0);
    assert_int_equal(hr_estream_id_cmp(z, z), 0);
    assert_true(hr_estream_id_cmp(ZERO, x) < 0);
}

static void test_bad_arguments(void **state)
{
    (void)state;
    start_server();
    hr_estream *s = NULL;
    hr_error err = {{0}, {0}};
    hr_estream_options o;
    hr_estream_options_defaults(&o);
    static const char *const bad_names[] = {"", "a b", "x:y", "c{1}", "tooooooooooooooooooooooooooooooooooooooooooooooooooooooooooooooooong"};
    for (size_t i = 0; i < HR_ARRAY_LEN(bad_names); i++) {
        o.cluster = bad_names[i];
        if (hr_estream_open(tu_redis_url(&g_srv), NULL, &o, &s, &err) != HR_EINVAL)
            fail_msg("cluster name '%s' accepted", bad_names[i]);
        assert_null(s);
    }
    hr_estream_options_defaults(&o);
    o.connections = 0;
    assert_int_equal(hr_estream_open(tu_redis_url(&g_srv), NULL, &o, &s, &err), HR_EINVAL);
    assert_null(s);
    hr_estream_destroy(NULL);

    s = open_stream(tu_redis_url(&g_srv), "t", 60000, 1);
    batch b = {0};
    batch_add(&b, 1, 1, 1);
    hr_estream_appended out;
    /* a text holding a newline would split into two events */
    const char *nl[] = {"{\"a\":\n1}"};
    size_t nl_len[] = {strlen(nl[0])};
    uint64_t h[] = {0};
    assert_int_equal(hr_estream_append(s, 1, nl, nl_len, h, 1.0, NULL, &out, &err), HR_EINVAL);
    assert_int_equal(hr_estream_append(s, 0, nl, nl_len, h, 1.0, NULL, &out, &err), HR_EINVAL);
    b.arrived = NAN;
    assert_int_equal(append(s, &b, NULL, &out, &err), HR_EINVAL);
    assert_int_equal(length(s), 0);
    /* a block longer than the command timeout would look like a dead server */
    seen *sn = calloc(1, sizeof *sn);
    assert_int_equal(hr_estream_read(s, ZERO, 10, 1000, collect, sn, NULL, NULL, &err), HR_EINVAL);
    assert_int_equal(hr_estream_read(s, ZERO, 0, 0, collect, sn, NULL, NULL, &err), HR_EINVAL);
    seen_free(sn);
    batch_free(&b);
    hr_estream_destroy(s);
    tu_redis_stop(&g_srv);
}

static void test_round_trip(void **state)
{
    (void)state;
    start_server();
    hr_estream *s = open_stream(tu_redis_url(&g_srv), "rt", 60000, 2);
    hr_estream *reader = open_stream(tu_redis_url(&g_srv), "rt", 60000, 1);

    /* nothing yet: a read returns none, also after waiting */
    seen *sn = calloc(1, sizeof *sn);
    hr_estream_id last = {1, 1};
    size_t count = 99;
    hr_error err = {{0}, {0}};
    assert_int_equal(hr_estream_read(reader, ZERO, 10, 50, collect, sn, &last, &count, &err), HR_OK);
    assert_int_equal(count, 0);
    assert_int_equal(hr_estream_id_cmp(last, ZERO), 0);
    seen_free(sn);
    uint64_t ord = 99;
    assert_int_equal(hr_estream_last(reader, &last, &ord, &err), HR_OK);
    assert_int_equal(ord, 0);

    /* 60 appends of 1-23 events, ids on most, arrival times distinct */
    enum { APPENDS = 60 };
    hr_rng rng;
    hr_rng_seed(&rng, 9);
    batch *sent = calloc(APPENDS, sizeof *sent);
    hr_estream_appended got[APPENDS];
    long next_id = 1000;
    for (int a = 0; a < APPENDS; a++) {
        size_t n = 1 + (size_t)hr_rng_below(&rng, 23);
        for (size_t i = 0; i < n; i++)
            batch_add(&sent[a], hr_rng_below(&rng, 4) == 0 ? -1 : next_id++,
                      (int)hr_rng_below(&rng, 1000), (int)hr_rng_below(&rng, 1000));
        sent[a].arrived = 1700000000.0 + a * 0.125 + 0.000001 * a;
        bool dup[MAX_BATCH];
        got[a] = append_ok(s, &sent[a], dup);
        assert_int_equal(got[a].appended, n);
        assert_int_equal(got[a].duplicates, 0);
        for (size_t i = 0; i < n; i++)
            assert_false(dup[i]);
        assert_int_equal(got[a].ordinal, (uint64_t)a + 1);
        if (a > 0)
            assert_true(hr_estream_id_cmp(got[a - 1].id, got[a].id) < 0);
    }
    assert_int_equal(length(s), APPENDS);
    assert_int_equal(hr_estream_last(reader, &last, &ord, &err), HR_OK);
    assert_int_equal(hr_estream_id_cmp(last, got[APPENDS - 1].id), 0);
    assert_int_equal(ord, APPENDS);

    /* read back 7 entries at a time: the same entries, texts, hashes,
     * arrival times, in order */
    sn = read_all(reader, ZERO, 7);
    assert_int_equal(sn->entries, APPENDS);
    size_t ev = 0;
    for (int a = 0; a < APPENDS; a++) {
        assert_int_equal(hr_estream_id_cmp(sn->id[a], got[a].id), 0);
        assert_int_equal(sn->ordinal[a], (uint64_t)a + 1);
        assert_true(fabs(sn->arrived[a] - sent[a].arrived) < 1e-6);
        assert_int_equal(sn->n[a], sent[a].n);
        for (size_t i = 0; i < sent[a].n; i++, ev++) {
            assert_string_equal(sn->text[ev], sent[a].text[i]);
            assert_true(sn->hash[ev] == sent[a].hash[i]);
        }
    }
    assert_int_equal(sn->events, ev);
    seen_free(sn);

    /* a read after an entry starts right after it */
    sn = read_all(reader, got[APPENDS - 4].id, 100);
    assert_int_equal(sn->entries, 3);
    assert_int_equal(hr_estream_id_cmp(sn->id[0], got[APPENDS - 3].id), 0);
    seen_free(sn);

    /* a callback that refuses stops the read; last is the one before */
    sn = calloc(1, sizeof *sn);
    sn->stop_after = 5;
    assert_int_equal(hr_estream_read(reader, ZERO, 100, 0, collect, sn, &last, &count, &err),
                     HR_ESTOPPED);
    assert_int_equal(count, 5);
    assert_int_equal(hr_estream_id_cmp(last, got[4].id), 0);
    seen_free(sn);

    for (int a = 0; a < APPENDS; a++)
        batch_free(&sent[a]);
    free(sent);
    hr_estream_destroy(reader);
    hr_estream_destroy(s);
    tu_redis_stop(&g_srv);
}

/* A catalog entry between two event entries (hr_estream_append_catalog):
 * numbered in the same sequence, read back in its place with its text
 * and no events, by XREAD and XRANGE alike, counted in the backlog. */
typedef struct {
    size_t entries;
    uint64_t ordinal[8];
    size_t n[8];
    char *catalog[8]; /* copies; NULL for an event entry */
} cat_seen;

static hr_status cat_collect(void *arg, const hr_estream_entry *e)
{
    cat_seen *cs = arg;
    assert_true(cs->entries < 8);
    size_t k = cs->entries++;
    cs->ordinal[k] = e->ordinal;
    cs->n[k] = e->n;
    cs->catalog[k] = e->catalog ? strdup(e->catalog) : NULL;
    if (e->catalog)
        assert_int_equal(strlen(e->catalog), e->catalog_len);
    return HR_OK;
}

static void test_catalog_entries(void **state)
{
    (void)state;
    start_server();
    hr_estream *s = open_stream(tu_redis_url(&g_srv), "ce", 60000, 1);
    batch b1 = {0}, b2 = {0};
    batch_add(&b1, 1, 1, 1);
    batch_add(&b2, 2, 2, 2);
    b1.arrived = b2.arrived = 1700000000.0;
    hr_estream_appended a1 = append_ok(s, &b1, NULL), ac, a2;
    const char *change = "{\"id\":\"i1\",\"kind\":\"item\",\"op\":\"delete\"}";
    hr_error err = {{0}, {0}};
    assert_int_equal(hr_estream_append_catalog(s, change, strlen(change), 1700000001.0, &ac, &err),
                     HR_OK);
    a2 = append_ok(s, &b2, NULL);
    assert_int_equal(ac.ordinal, 2);
    assert_int_equal(a2.ordinal, 3);
    assert_true(hr_estream_id_cmp(a1.id, ac.id) < 0 && hr_estream_id_cmp(ac.id, a2.id) < 0);
    assert_int_equal(hr_estream_append_catalog(s, "", 0, 1.0, &ac, &err), HR_EINVAL);
    for (int how = 0; how < 2; how++) {
        cat_seen cs = {0};
        size_t count = 0;
        hr_status st = how == 0 ? hr_estream_read(s, ZERO, 10, 0, cat_collect, &cs, NULL, &count,
                                                  &err)
                                : hr_estream_range(s, ZERO, a2.id, 10, cat_collect, &cs, NULL,
                                                   &count, &err);
        assert_int_equal(st, HR_OK);
        assert_int_equal(count, 3);
        for (size_t k = 0; k < 3; k++)
            assert_int_equal(cs.ordinal[k], k + 1);
        assert_int_equal(cs.n[0], 1);
        assert_null(cs.catalog[0]);
        assert_int_equal(cs.n[1], 0);
        assert_non_null(cs.catalog[1]);
        assert_string_equal(cs.catalog[1], change);
        assert_int_equal(cs.n[2], 1);
        assert_null(cs.catalog[2]);
        for (size_t k = 0; k < 3; k++)
            free(cs.catalog[k]);
    }
    uint64_t backlog = 0;
    assert_int_equal(hr_estream_backlog(s, a1.id, &backlog, &err), HR_OK);
    assert_int_equal(backlog, 2);
    batch_free(&b1);
    batch_free(&b2);
    hr_estream_destroy(s);
    tu_redis_stop(&g_srv);
}

static void test_dedup_two_nodes(void **state)
{
    (void)state;
    start_server();
    hr_estream *a = open_stream(tu_redis_url(&g_srv), "dd", 60000, 1);
    hr_estream *b = open_stream(tu_redis_url(&g_srv), "dd", 60000, 1);
    hr_estream *other = open_stream(tu_redis_url(&g_srv), "other", 60000, 1);
    bool dup[MAX_BATCH];

    batch b1 = {0}, b2 = {0}, b3 = {0}, b4 = {0};
    batch_add(&b1, 1, 1, 1);
    batch_add(&b1, 2, 2, 2);
    b1.arrived = 10;
    hr_estream_appended o1 = append_ok(a, &b1, dup);
    assert_int_equal(o1.appended, 2);

    /* node b: id 1 again (same event, posted to another node), a new id 3,
     * and an event without id: only the last two are appended */
    batch_add(&b2, 1, 1, 1);
    batch_add(&b2, 3, 3, 3);
    batch_add(&b2, -1, 4, 4);
    b2.arrived = 11;
    hr_estream_appended o2 = append_ok(b, &b2, dup);
    assert_true(dup[0] && !dup[1] && !dup[2]);
    assert_int_equal(o2.appended, 2);
    assert_int_equal(o2.duplicates, 1);
    assert_int_equal(o2.ordinal, 2);

    /* all duplicates: acknowledged, no entry */
    hr_estream_appended o3 = append_ok(b, &b1, dup);
    assert_true(dup[0] && dup[1]);
    assert_int_equal(o3.appended, 0);
    assert_int_equal(o3.duplicates, 2);
    assert_int_equal(hr_estream_id_cmp(o3.id, ZERO), 0);
    assert_int_equal(o3.ordinal, 0);
    assert_int_equal(length(a), 2);

    /* the same id twice in one batch: the second is the duplicate */
    batch_add(&b3, 5, 5, 5);
    batch_add(&b3, 5, 5, 5);
    batch_add(&b3, -1, 6, 6);
    batch_add(&b3, -1, 6, 6); /* no id: never a duplicate */
    hr_estream_appended o4 = append_ok(a, &b3, dup);
    assert_true(!dup[0] && dup[1] && !dup[2] && !dup[3]);
    assert_int_equal(o4.appended, 3);

    /* another cluster on the same Redis is separate */
    hr_estream_appended o5 = append_ok(other, &b1, dup);
    assert_int_equal(o5.appended, 2);
    assert_int_equal(o5.ordinal, 1);
    assert_int_equal(length(other), 1);

    /* the stream holds each event once: b1's two, b2's id 3 and no-id event, b3's three */
    seen *sn = read_all(a, ZERO, 100);
    assert_int_equal(sn->entries, 3);
    assert_int_equal(sn->events, 7);
    assert_string_equal(sn->text[0], b1.text[0]);
    assert_string_equal(sn->text[1], b1.text[1]);
    assert_string_equal(sn->text[2], b2.text[1]);
    assert_string_equal(sn->text[3], b2.text[2]);
    assert_true(sn->hash[2] == b2.hash[1] && sn->hash[3] == 0);
    assert_string_equal(sn->text[4], b3.text[0]);
    seen_free(sn);

    batch_free(&b1);
    batch_free(&b2);
    batch_free(&b3);
    batch_free(&b4);
    hr_estream_destroy(other);
    hr_estream_destroy(b);
    hr_estream_destroy(a);
    tu_redis_stop(&g_srv);
}

/* The server's clock, ms. */
static uint64_t server_ms(hr_redis *r)
{
    redisReply *rep = NULL;
    hr_error err = {{0}, {0}};
    assert_int_equal(hr_redis_call(r, &rep, &err, "TIME", NULL), HR_OK);
    uint64_t ms = strtoull(rep->element[0]->str, NULL, 10) * 1000 +
                  strtoull(rep->element[1]->str, NULL, 10) / 1000;
    freeReplyObject(rep);
    return ms;
}

static void test_dedup_window(void **state)
{
    (void)state;
    start_server();
    hr_estream *s = open_stream(tu_redis_url(&g_srv), "win", 150, 1);
    batch b = {0};
    batch_add(&b, 77, 1, 1);
    bool dup[1];
    assert_int_equal(append_ok(s, &b, dup).appended, 1);
    /* a claim is a member of the window's id set, which expires (a
     * stream of a window long enough to look at it) */
    hr_estream *slow = open_stream(tu_redis_url(&g_srv), "win2", 60000, 1);
    assert_int_equal(append_ok(slow, &b, dup).appended, 1);
    hr_estream_destroy(slow);
    hr_redis *admin = NULL;
    hr_redis_options ro = test_redis_options();
    hr_error err = {{0}, {0}};
    assert_int_equal(hr_redis_open(tu_redis_url(&g_srv), &ro, &admin, &err), HR_OK);
    redisReply *rep = NULL; /* one id set: the current bucket */
    assert_int_equal(hr_redis_call(admin, &rep, &err, "KEYS", "hogrec:{win2}:eid:*", NULL), HR_OK);
    assert_int_equal(rep->elements, 1);
    char key[80];
    snprintf(key, sizeof key, "%s", rep->element[0]->str);
    freeReplyObject(rep);
    char hex[17];
    snprintf(hex, sizeof hex, "%016" PRIx64, b.hash[0]);
    assert_int_equal(hr_redis_call(admin, &rep, &err, "SISMEMBER", key, hex, NULL), HR_OK);
    assert_int_equal(rep->integer, 1);
    freeReplyObject(rep);
    /* it expires between one and two windows from now */
    assert_int_equal(hr_redis_call(admin, &rep, &err, "PTTL", key, NULL), HR_OK);
    assert_true(rep->integer > 0 && rep->integer <= 2 * 60000);
    freeReplyObject(rep);
    hr_redis_destroy(admin);
    /* an id in the previous window's set is still a duplicate (one window
     * of 1 h; retried when the bucket turned between the two reads) */
    hr_estream *hour = open_stream(tu_redis_url(&g_srv), "win3", 3600000, 1);
    batch p = {0};
    batch_add(&p, 4242, 1, 1);
    char phex[17];
    snprintf(phex, sizeof phex, "%016" PRIx64, p.hash[0]);
    assert_int_equal(hr_redis_open(tu_redis_url(&g_srv), &ro, &admin, &err), HR_OK);
    bool checked = false;
    for (int attempt = 0; attempt < 3 && !checked; attempt++) {
        uint64_t b1 = server_ms(admin) / 3600000, b2;
        char prev[80];
        snprintf(prev, sizeof prev, "hogrec:{win3}:eid:%" PRIu64, b1 - 1);
        assert_int_equal(hr_redis_call(admin, NULL, &err, "SADD", prev, phex, NULL), HR_OK);
        hr_estream_appended o = append_ok(hour, &p, dup);
        b2 = server_ms(admin) / 3600000;
        if (b1 == b2) {
            assert_int_equal(o.duplicates, 1);
            checked = true;
        }
    }
    assert_true(checked);
    hr_redis_destroy(admin);
    hr_estream_destroy(hour);
    batch_free(&p);

    /* the window runs out: the id is new again (polled, bounded) */
    bool expired = false;
    for (uint64_t end = hr_now_ns() + 10000000000ull; hr_now_ns() < end && !expired;) {
        hr_estream_appended o = append_ok(s, &b, dup);
        expired = o.appended == 1;
        if (!expired)
            tu_sleep_ms(10);
    }
    assert_true(expired);
    assert_int_equal(length(s), 2); /* the first and the one after the window */
    hr_estream_destroy(s);

    /* window 0: no de-duplication at all */
    s = open_stream(tu_redis_url(&g_srv), "nowin", 0, 1);
    assert_int_equal(append_ok(s, &b, dup).appended, 1);
    assert_int_equal(append_ok(s, &b, dup).appended, 1);
    seen *sn = read_all(s, ZERO, 10);
    assert_int_equal(sn->events, 2);
    assert_true(sn->hash[1] == b.hash[0]); /* the hash is still recorded */
    seen_free(sn);
    batch_free(&b);
    hr_estream_destroy(s);
    tu_redis_stop(&g_srv);
}

/* ---- a TCP relay that can lose Redis' reply ---- */

typedef struct {
    int listen_fd, port, upstream_port;
    atomic_bool stop;
    atomic_int drop;    /* replies still to lose (each loss closes the client side) */
    atomic_int dropped; /* replies lost so far */
    pthread_t thread;
} relay;

static bool send_all(int fd, const char *p, ssize_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, (size_t)n, MSG_NOSIGNAL);
        if (w <= 0)
            return false;
        p += w;
        n -= w;
    }
    return true;
}

/* Relays one client connection until a side closes, a reply is lost, or stop. */
static void relay_one(relay *rl, int cfd)
{
    int ufd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)rl->upstream_port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (ufd < 0 || connect(ufd, (struct sockaddr *)&a, sizeof a) != 0) {
        if (ufd >= 0)
            close(ufd);
        return;
    }
    char buf[65536];
    while (!atomic_load(&rl->stop)) {
        struct pollfd p[2] = {{cfd, POLLIN, 0}, {ufd, POLLIN, 0}};
        if (poll(p, 2, 50) <= 0)
            continue;
        if (p[0].revents) {
            ssize_t n = recv(cfd, buf, sizeof buf, 0);
            if (n <= 0 || !send_all(ufd, buf, n))
                break;
        }
        if (p[1].revents) {
            ssize_t n = recv(ufd, buf, sizeof buf, 0);
            if (n <= 0)
                break;
            if (atomic_load(&rl->drop) > 0) { /* Redis answered; the client never hears it */
                atomic_fetch_sub(&rl->drop, 1);
                atomic_fetch_add(&rl->dropped, 1);
                break;
            }
            if (!send_all(cfd, buf, n))
                break;
        }
    }
    close(ufd);
}

static void *relay_main(void *arg)
{
    relay *rl = arg;
    while (!atomic_load(&rl->stop)) {
        struct pollfd p = {rl->listen_fd, POLLIN, 0};
        if (poll(&p, 1, 50) <= 0)
            continue;
        int cfd = accept(rl->listen_fd, NULL, NULL);
        if (cfd < 0)
            continue;
        relay_one(rl, cfd);
        close(cfd);
    }
    return NULL;
}

static void relay_start(relay *rl, int upstream_port)
{
    memset(rl, 0, sizeof *rl);
    rl->upstream_port = upstream_port;
    rl->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(rl->listen_fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(rl->listen_fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(rl->listen_fd, 4), 0);
    socklen_t al = sizeof a;
    assert_int_equal(getsockname(rl->listen_fd, (struct sockaddr *)&a, &al), 0);
    rl->port = ntohs(a.sin_port);
    assert_int_equal(pthread_create(&rl->thread, NULL, relay_main, rl), 0);
}

static void relay_stop(relay *rl)
{
    atomic_store(&rl->stop, true);
    pthread_join(rl->thread, NULL);
    close(rl->listen_fd);
}

static void test_lost_reply_resend(void **state)
{
    (void)state;
    start_server();
    relay rl;
    relay_start(&rl, g_srv.port);
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", rl.port);
    hr_estream *s = open_stream(url, "lost", 60000, 1);
    hr_estream *direct = open_stream(tu_redis_url(&g_srv), "lost", 60000, 1);

    batch first = {0}, b = {0};
    batch_add(&first, 1, 1, 1);
    append_ok(s, &first, NULL); /* the script is now cached: the next call is one EVALSHA */
    for (long i = 0; i < 5; i++)
        batch_add(&b, 100 + i, (int)i, (int)i);
    b.arrived = 123.5;

    /* the script runs, its reply is lost: HR_EIO (the caller answers 503) */
    atomic_store(&rl.drop, 1);
    hr_estream_appended out;
    hr_error err = {{0}, {0}};
    assert_int_equal(append(s, &b, NULL, &out, &err), HR_EIO);
    assert_int_equal(atomic_load(&rl.dropped), 1);
    assert_int_equal(length(direct), 2); /* yet the entry is in the stream */

    /* the client resends: every event is a duplicate, no second entry */
    bool dup[5];
    out = append_ok(s, &b, dup);
    assert_int_equal(out.appended, 0);
    assert_int_equal(out.duplicates, 5);
    for (int i = 0; i < 5; i++)
        assert_true(dup[i]);
    /* and resent to another node, the same */
    out = append_ok(direct, &b, dup);
    assert_int_equal(out.appended, 0);
    assert_int_equal(length(direct), 2);

    seen *sn = read_all(direct, ZERO, 10);
    assert_int_equal(sn->events, 6); /* each event once */
    for (size_t i = 0; i < 5; i++)
        assert_string_equal(sn->text[1 + i], b.text[i]);
    seen_free(sn);

    batch_free(&first);
    batch_free(&b);
    hr_estream_destroy(direct);
    hr_estream_destroy(s);
    relay_stop(&rl);
    tu_redis_stop(&g_srv);
}

static void test_refused_write_claims_nothing(void **state)
{
    (void)state;
    start_server();
    hr_estream *s = open_stream(tu_redis_url(&g_srv), "oom", 60000, 1);
    hr_redis *admin = NULL;
    hr_redis_options ro = test_redis_options();
    hr_error err = {{0}, {0}};
    assert_int_equal(hr_redis_open(tu_redis_url(&g_srv), &ro, &admin, &err), HR_OK);
    batch b = {0};
    batch_add(&b, 1, 1, 1);
    batch_add(&b, 2, 2, 2);

    /* Redis over its memory limit refuses the XADD: HR_EFULL, and neither
     * an entry nor an id claim is left behind */
    assert_int_equal(hr_redis_call(admin, NULL, &err, "CONFIG", "SET", "maxmemory", "1", NULL), HR_OK);
    hr_estream_appended out;
    assert_int_equal(append(s, &b, NULL, &out, &err), HR_EFULL);
    assert_non_null(strstr(err.message, "OOM"));
    assert_int_equal(hr_redis_call(admin, NULL, &err, "CONFIG", "SET", "maxmemory", "0", NULL), HR_OK);
    redisReply *rep = NULL;
    assert_int_equal(hr_redis_call(admin, &rep, &err, "DBSIZE", NULL), HR_OK);
    assert_int_equal(rep->integer, 0);
    freeReplyObject(rep);

    /* an XADD that fails (the stream key holds a string): HR_EINVAL, and
     * the ids are not claimed either (the script writes nothing before the
     * XADD) */
    assert_int_equal(hr_redis_call(admin, NULL, &err, "SET", "hogrec:{oom}:events", "x", NULL), HR_OK);
    assert_int_equal(append(s, &b, NULL, &out, &err), HR_EINVAL);
    assert_non_null(strstr(err.message, "WRONGTYPE"));
    assert_int_equal(hr_redis_call(admin, NULL, &err, "DEL", "hogrec:{oom}:events", NULL), HR_OK);
    assert_int_equal(hr_redis_call(admin, &rep, &err, "DBSIZE", NULL), HR_OK);
    assert_int_equal(rep->integer, 0);
    freeReplyObject(rep);

    /* the resend once Redis has room: new, not duplicates */
    bool dup[2];
    out = append_ok(s, &b, dup);
    assert_int_equal(out.appended, 2);
    assert_int_equal(out.ordinal, 1);
    batch_free(&b);
    hr_redis_destroy(admin);
    hr_estream_destroy(s);
    tu_redis_stop(&g_srv);
}

/* ---- kill -9 of redis-server while a thread appends ---- */

#define MAX_ACKED 20000

typedef struct {
    hr_estream *s;
    atomic_bool stop;
    atomic_size_t acked;     /* appends acknowledged */
    atomic_size_t failed;    /* appends that failed (HR_EIO) */
    atomic_size_t other;     /* appends that failed otherwise, or were partly duplicates */
    atomic_size_t resent;    /* resends after a lost reply: all duplicates, no entry */
    atomic_long events;      /* events acknowledged: ids 1 .. events */
    hr_estream_id id[MAX_ACKED];
    uint64_t ordinal[MAX_ACKED];
} appender;

enum { CRASH_BATCH = 10 };

static void *appender_main(void *arg)
{
    appender *ap = arg;
    long next = 1;
    for (int i = 0; i < 1000000 && !atomic_load(&ap->stop); i++) {
        if (atomic_load(&ap->acked) == MAX_ACKED)
            break;
        batch b = {0};
        for (int j = 0; j < CRASH_BATCH; j++)
            batch_add(&b, next + j, j, j);
        b.arrived = (double)next;
        hr_estream_appended out;
        hr_error err = {{0}, {0}};
        hr_status st = append(ap->s, &b, NULL, &out, &err);
        batch_free(&b);
        if (st == HR_OK && out.appended == CRASH_BATCH) {
            size_t k = atomic_load(&ap->acked);
            ap->id[k] = out.id;
            ap->ordinal[k] = out.ordinal;
            atomic_store(&ap->acked, k + 1);
            next += CRASH_BATCH;
            atomic_store(&ap->events, next - 1);
        } else if (st == HR_OK && out.duplicates == CRASH_BATCH) {
            /* the first send ran but its reply was lost in the kill */
            atomic_fetch_add(&ap->resent, 1);
            next += CRASH_BATCH;
            atomic_store(&ap->events, next - 1);
        } else if (st == HR_OK) {
            atomic_fetch_add(&ap->other, 1);
            next += CRASH_BATCH;
        } else {
            atomic_fetch_add(st == HR_EIO ? &ap->failed : &ap->other, 1);
            tu_sleep_ms(2); /* resend the same batch (a 503 and a client retry) */
        }
    }
    return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Polls until *v >= want, bounded (10 s). */
static bool wait_for(atomic_size_t *v, size_t want)
{
    for (uint64_t end = hr_now_ns() + 10000000000ull; hr_now_ns() < end; tu_sleep_ms(2))
        if (atomic_load(v) >= want)
            return true;
    return false;
}

static void test_crash_and_restart(void **state)
{
    (void)state;
    start_server();
    appender *ap = calloc(1, sizeof *ap);
    assert_non_null(ap);
    ap->s = open_stream(tu_redis_url(&g_srv), "crash", 600000, 2);
    hr_estream *probe = open_stream(tu_redis_url(&g_srv), "crash", 600000, 1);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, appender_main, ap), 0);
    assert_true(wait_for(&ap->acked, 50));

    tu_redis_kill(&g_srv, SIGKILL); /* mid-ingest */
    size_t acked_at_kill = atomic_load(&ap->acked);
    /* Redis is gone: an append fails, promptly (bound: the command timeout
     * with a wide margin for a loaded machine), never a false success */
    batch b = {0};
    batch_add(&b, -1, 1, 1);
    hr_estream_appended out;
    hr_error err = {{0}, {0}};
    uint64_t t0 = hr_now_ns();
    assert_int_equal(append(probe, &b, NULL, &out, &err), HR_EIO);
    assert_true(hr_now_ns() - t0 < 6000000000ull);
    assert_true(wait_for(&ap->failed, 5)); /* the appender sees 503s too */
    /* nothing is acknowledged while Redis is down (one reply may have been
     * on its way at the kill) */
    size_t acked_down = atomic_load(&ap->acked);
    assert_true(acked_down <= acked_at_kill + 1);
    assert_true(wait_for(&ap->failed, atomic_load(&ap->failed) + 10));
    assert_int_equal(atomic_load(&ap->acked), acked_down);

    /* restart on the same port with the same AOF: appends work again after
     * the backoff */
    tu_redis_start(&g_srv);
    assert_true(wait_for(&ap->acked, acked_down + 20));
    atomic_store(&ap->stop, true);
    pthread_join(th, NULL);
    assert_int_equal(atomic_load(&ap->other), 0);
    for (int i = 0; i < 1000; i++) { /* the probe reconnects too (bounded) */
        if (append(probe, &b, NULL, &out, &err) == HR_OK)
            break;
        tu_sleep_ms(10);
    }

    /* every acknowledged entry is in the stream, with its events; the
     * ordinals are 1, 2, 3, ... with no gap; an event the appender resent
     * after a lost reply is there once (de-duplicated) */
    size_t acked = atomic_load(&ap->acked);
    seen *sn = read_all(probe, ZERO, 500);
    size_t j = 0;
    for (size_t e = 0; e < sn->entries; e++)
        assert_int_equal(sn->ordinal[e], (uint64_t)e + 1);
    for (size_t k = 0; k < acked; k++) {
        while (j < sn->entries && hr_estream_id_cmp(sn->id[j], ap->id[k]) < 0)
            j++;
        if (j == sn->entries || hr_estream_id_cmp(sn->id[j], ap->id[k]) != 0)
            fail_msg("acknowledged entry %zu (ordinal %" PRIu64 ") is missing after the restart",
                     k, ap->ordinal[k]);
        assert_int_equal(sn->ordinal[j], ap->ordinal[k]);
    }
    /* events: 1 .. the last acknowledged, each once (a resent batch is
     * there from its first send), plus the probe's, which have no id */
    size_t want = (size_t)atomic_load(&ap->events);
    assert_int_equal(want, (acked + atomic_load(&ap->resent)) * CRASH_BATCH);
    uint64_t *have = calloc(sn->events + 1, sizeof *have), *expect = calloc(want + 1, sizeof *expect);
    size_t count_ids = 0;
    for (size_t e = 0; e < sn->events; e++)
        if (sn->hash[e])
            have[count_ids++] = sn->hash[e];
    assert_int_equal(count_ids, want);
    for (size_t i = 0; i < want; i++) {
        char id[32];
        snprintf(id, sizeof id, "e%zu", i + 1);
        json_t *jid = json_string(id);
        expect[i] = hr_events_id_hash(jid);
        json_decref(jid);
    }
    qsort(have, want, sizeof *have, cmp_u64);
    qsort(expect, want, sizeof *expect, cmp_u64);
    assert_memory_equal(have, expect, want * sizeof *have);
    free(have);
    free(expect);
    print_message("acknowledged before the kill: %zu entries, after the restart: %zu, resent "
                  "after a lost reply: %zu; all in the stream\n",
                  acked_at_kill, acked - acked_down, atomic_load(&ap->resent));
    seen_free(sn);
    batch_free(&b);
    hr_estream_destroy(probe);
    hr_estream_destroy(ap->s);
    free(ap);
    tu_redis_stop(&g_srv);
}

static void test_backlog_and_trim(void **state)
{
    (void)state;
    start_server();
    hr_estream *s = open_stream(tu_redis_url(&g_srv), "bl", 60000, 1);
    hr_error err = {{0}, {0}};
    uint64_t bl = 99;
    assert_int_equal(hr_estream_backlog(s, ZERO, &bl, &err), HR_OK);
    assert_int_equal(bl, 0);
    enum { N = 12 };
    hr_estream_id ids[N];
    for (int i = 0; i < N; i++) {
        batch b = {0};
        batch_add(&b, i, i, i);
        batch_add(&b, -1, i, i);
        ids[i] = append_ok(s, &b, NULL).id;
        batch_free(&b);
    }
    assert_int_equal(hr_estream_backlog(s, ZERO, &bl, &err), HR_OK);
    assert_int_equal(bl, N);
    for (int i = 0; i < N; i++) {
        assert_int_equal(hr_estream_backlog(s, ids[i], &bl, &err), HR_OK);
        assert_int_equal(bl, (uint64_t)(N - 1 - i));
    }
    /* an id between two entries (covered up to entry 4 and a bit) */
    hr_estream_id mid = ids[4];
    mid.seq++;
    if (hr_estream_id_cmp(mid, ids[5]) < 0) {
        assert_int_equal(hr_estream_backlog(s, mid, &bl, &err), HR_OK);
        assert_int_equal(bl, N - 5);
    }
    hr_estream_id far = {UINT64_MAX, UINT64_MAX};
    assert_int_equal(hr_estream_backlog(s, far, &bl, &err), HR_OK);
    assert_int_equal(bl, 0);

    /* trim what the consumers cover (entries before ids[4]) */
    uint64_t removed = 0;
    assert_int_equal(hr_estream_trim(s, ids[4], &removed, &err), HR_OK);
    assert_int_equal(removed, 4);
    assert_int_equal(length(s), N - 4);
    assert_int_equal(hr_estream_trim(s, ids[4], &removed, &err), HR_OK);
    assert_int_equal(removed, 0);
    for (int i = 4; i < N; i++) { /* the figures of what is left do not change */
        assert_int_equal(hr_estream_backlog(s, ids[i], &bl, &err), HR_OK);
        assert_int_equal(bl, (uint64_t)(N - 1 - i));
    }
    /* a reader from the start sees the first ordinal is 5: entries it never
     * read were trimmed */
    seen *sn = read_all(s, ZERO, 100);
    assert_int_equal(sn->entries, N - 4);
    assert_int_equal(sn->ordinal[0], 5);
    assert_int_equal(hr_estream_id_cmp(sn->id[0], ids[4]), 0);
    seen_free(sn);
    /* appends go on from the ordinal after the last */
    batch b = {0};
    batch_add(&b, 1000, 1, 1);
    assert_int_equal(append_ok(s, &b, NULL).ordinal, N + 1);
    batch_free(&b);
    assert_int_equal(hr_estream_backlog(s, ids[N - 1], &bl, &err), HR_OK);
    assert_int_equal(bl, 1);

    /* a malformed entry (not ours) is reported, after the good ones */
    hr_redis *admin = NULL;
    hr_redis_options ro = test_redis_options();
    assert_int_equal(hr_redis_open(tu_redis_url(&g_srv), &ro, &admin, &err), HR_OK);
    assert_int_equal(hr_redis_call(admin, NULL, &err, "XADD", "hogrec:{bl}:events", "*", "v", "1",
                                   "k", "14", "n", "2", "t", "1", "ev", "{}", "ids",
                                   "00000000000000000000000000000000", NULL), HR_OK);
    sn = calloc(1, sizeof *sn);
    size_t count = 0;
    assert_int_equal(hr_estream_read(s, ids[N - 1], 10, 0, collect, sn, NULL, &count, &err),
                     HR_ECORRUPT);
    assert_int_equal(count, 1);
    assert_non_null(strstr(err.message, "lines"));
    seen_free(sn);
    hr_redis_destroy(admin);
    hr_estream_destroy(s);
    tu_redis_stop(&g_srv);
}

/* ---- two appenders in parallel ---- */

enum { PAR_APPENDS = 150, PAR_BATCH = 8 };

typedef struct {
    hr_estream *s;
    int who;
    hr_estream_id id[PAR_APPENDS];
    int fails;
} par_arg;

static void *par_main(void *arg)
{
    par_arg *p = arg;
    for (int a = 0; a < PAR_APPENDS; a++) {
        batch b = {0};
        for (int j = 0; j < PAR_BATCH; j++)
            batch_add(&b, (long)p->who * 1000000 + a * PAR_BATCH + j, p->who, a);
        b.arrived = a;
        hr_estream_appended out;
        hr_error err = {{0}, {0}};
        if (append(p->s, &b, NULL, &out, &err) != HR_OK || out.appended != PAR_BATCH)
            p->fails++;
        p->id[a] = out.id;
        batch_free(&b);
    }
    return NULL;
}

static void test_parallel_appenders(void **state)
{
    (void)state;
    start_server();
    hr_estream *shared = open_stream(tu_redis_url(&g_srv), "par", 60000, 2);
    hr_estream *own = open_stream(tu_redis_url(&g_srv), "par", 60000, 1);
    par_arg *p = calloc(3, sizeof *p);
    pthread_t th[3];
    for (int i = 0; i < 3; i++) { /* two threads share a pool, one is another node */
        p[i].s = i < 2 ? shared : own;
        p[i].who = i + 1;
        assert_int_equal(pthread_create(&th[i], NULL, par_main, &p[i]), 0);
    }
    for (int i = 0; i < 3; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < 3; i++)
        assert_int_equal(p[i].fails, 0);

    seen *sn = read_all(own, ZERO, 64);
    assert_int_equal(sn->entries, 3 * PAR_APPENDS);
    assert_int_equal(sn->events, 3 * PAR_APPENDS * PAR_BATCH);
    /* one order: ids increase, ordinals are 1..N, and each appender's
     * entries come in the order it appended them */
    size_t next[3] = {0, 0, 0};
    for (size_t e = 0; e < sn->entries; e++) {
        assert_int_equal(sn->ordinal[e], (uint64_t)e + 1);
        if (e > 0)
            assert_true(hr_estream_id_cmp(sn->id[e - 1], sn->id[e]) < 0);
        int w = -1;
        for (int i = 0; i < 3; i++)
            if (next[i] < PAR_APPENDS && hr_estream_id_cmp(p[i].id[next[i]], sn->id[e]) == 0)
                w = i;
        if (w < 0)
            fail_msg("entry %zu is no appender's next", e);
        next[w]++;
    }
    seen_free(sn);
    free(p);
    hr_estream_destroy(own);
    hr_estream_destroy(shared);
    tu_redis_stop(&g_srv);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_ids, teardown),
        cmocka_unit_test_teardown(test_bad_arguments, teardown),
        cmocka_unit_test_teardown(test_round_trip, teardown),
        cmocka_unit_test_teardown(test_catalog_entries, teardown),
        cmocka_unit_test_teardown(test_dedup_two_nodes, teardown),
        cmocka_unit_test_teardown(test_dedup_window, teardown),
        cmocka_unit_test_teardown(test_lost_reply_resend, teardown),
        cmocka_unit_test_teardown(test_refused_write_claims_nothing, teardown),
        cmocka_unit_test_teardown(test_crash_and_restart, teardown),
        cmocka_unit_test_teardown(test_backlog_and_trim, teardown),
        cmocka_unit_test_teardown(test_parallel_appenders, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

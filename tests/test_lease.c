/*
 * test_lease.c - the leader lease, the fencing epoch and membership
 * against a real redis-server started here: two nodes A and B, each with
 * its own connection. Waits are bounded polls (up to 5 s) for a state.
 */
/* ctest-labels: concurrent */
#include "testutil.h"

#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include "hogrec/lease.h"
#include "hogrec/redis.h"

static tu_redis g_srv;

typedef struct {
    hr_redis *ra, *rb, *rt; /* A's, B's and the test's own connection */
    hr_lease *a, *b;
} fixture;

static void sleep_ms(int ms)
{
    nanosleep(&(struct timespec){ms / 1000, (long)(ms % 1000) * 1000000L}, NULL);
}

static hr_redis *connect_one(void)
{
    hr_redis *r = NULL;
    hr_error err = {{0}, {0}};
    if (hr_redis_open(tu_redis_url(&g_srv), NULL, &r, &err) != HR_OK)
        fail_msg("connect: %s", err.message);
    return r;
}

static int setup(void **state)
{
    unsetenv(HR_REDIS_PASSWORD_ENV);
    memset(&g_srv, 0, sizeof g_srv);
    tu_redis_start(&g_srv);
    fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    f->ra = connect_one();
    f->rb = connect_one();
    f->rt = connect_one();
    hr_error err = {{0}, {0}};
    assert_int_equal(hr_lease_create(f->ra, "c1", "node-A", 300, &f->a, &err), HR_OK);
    assert_int_equal(hr_lease_create(f->rb, "c1", "node-B", 300, &f->b, &err), HR_OK);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    if (f) {
        hr_lease_destroy(f->a);
        hr_lease_destroy(f->b);
        hr_redis_destroy(f->ra);
        hr_redis_destroy(f->rb);
        hr_redis_destroy(f->rt);
        free(f);
    }
    tu_redis_stop(&g_srv);
    return 0;
}

/* Polls acquire on l until it takes the lease (bounded: 5 s). */
static bool acquire_within(hr_lease *l, hr_lease_state *st)
{
    uint64_t end = hr_now_ns() + 5000000000ull;
    hr_error err = {{0}, {0}};
    while (hr_now_ns() < end) {
        assert_int_equal(hr_lease_acquire(l, st, &err), HR_OK);
        if (st->held)
            return true;
        sleep_ms(10);
    }
    return false;
}

static void test_names(void **state)
{
    fixture *f = *state;
    hr_lease *l = NULL;
    hr_error err = {{0}, {0}};
    assert_int_equal(hr_lease_create(f->rt, "bad{name}", "n", 300, &l, &err), HR_EINVAL);
    assert_string_equal(err.field, "cluster");
    assert_int_equal(hr_lease_create(f->rt, "c", "has space", 300, &l, &err), HR_EINVAL);
    assert_string_equal(err.field, "node_id");
    assert_int_equal(hr_lease_create(f->rt, "c", "", 300, &l, &err), HR_EINVAL);
    assert_int_equal(hr_lease_create(f->rt, "c", "n", 5, &l, &err), HR_EINVAL);
    assert_string_equal(err.field, "ttl_ms");
    assert_null(l);
    assert_string_equal(hr_lease_key_prefix(f->a), "hogrec:{c1}:");
    assert_string_equal(hr_lease_epoch_key(f->a), "hogrec:{c1}:epoch");
    hr_lease_destroy(NULL);
}

/* The paused-leader case at module level. */
static void test_acquire_fail_over_and_fencing(void **state)
{
    fixture *f = *state;
    hr_error err = {{0}, {0}};
    hr_lease_state st;

    /* A takes epoch 1; B sees it held by A */
    assert_int_equal(hr_lease_acquire(f->a, &st, &err), HR_OK);
    assert_true(st.held);
    assert_int_equal(st.epoch, 1);
    assert_int_equal(hr_lease_epoch(f->a), 1);
    assert_int_equal(hr_lease_acquire(f->b, &st, &err), HR_OK);
    assert_false(st.held);
    assert_string_equal(st.holder, "node-A");
    assert_int_equal(st.epoch, 1);
    assert_int_equal(hr_lease_epoch(f->b), 0);
    /* B holds nothing to renew */
    assert_int_equal(hr_lease_renew(f->b, &st, &err), HR_EINVAL);

    /* A renews */
    assert_int_equal(hr_lease_renew(f->a, &st, &err), HR_OK);
    assert_true(st.held);
    assert_int_equal(st.epoch, 1);

    /* a fenced write with the current epoch goes through */
    const char *fields[] = {"*", "delta", "from-A"};
    char id[64];
    assert_int_equal(hr_lease_fenced_xadd(f->a, NULL, 1, "hogrec:{c1}:deltas", 3, fields, NULL,
                                          id, sizeof id, &err), HR_OK);
    assert_non_null(strchr(id, '-'));

    /* A pauses (stops renewing); after the ttl, B takes epoch 2 */
    assert_true(acquire_within(f->b, &st));
    assert_int_equal(st.epoch, 2);
    assert_string_equal(st.holder, "node-B");

    /* A wakes: its renewal reports the loss and who holds it now */
    assert_int_equal(hr_lease_renew(f->a, &st, &err), HR_OK);
    assert_false(st.held);
    assert_string_equal(st.holder, "node-B");
    assert_int_equal(st.epoch, 2);
    assert_int_equal(hr_lease_epoch(f->a), 0);

    /* A's write with epoch 1 is fenced; B's with epoch 2 goes through,
     * also over another connection (the publisher's own) */
    const char *stale[] = {"*", "delta", "from-A-after-pause"};
    assert_int_equal(hr_lease_fenced_xadd(f->a, NULL, 1, "hogrec:{c1}:deltas", 3, stale, NULL,
                                          id, sizeof id, &err), HR_EBUSY);
    assert_non_null(strstr(err.message, "fenced: epoch 2 is newer than 1"));
    const char *fresh[] = {"*", "delta", "from-B"};
    assert_int_equal(hr_lease_fenced_xadd(f->b, f->rt, 2, "hogrec:{c1}:deltas", 3, fresh, NULL,
                                          id, sizeof id, &err), HR_OK);
    redisReply *rep = NULL;
    assert_int_equal(hr_redis_call(f->rt, &rep, &err, "XRANGE", "hogrec:{c1}:deltas", "-", "+", NULL), HR_OK);
    assert_int_equal(rep->elements, 2); /* A's first and B's; not A's fenced one */
    assert_string_equal(rep->element[0]->element[1]->element[1]->str, "from-A");
    assert_string_equal(rep->element[1]->element[1]->element[1]->str, "from-B");
    freeReplyObject(rep);

    /* release by a non-holder is a no-op */
    bool released = true;
    assert_int_equal(hr_lease_release(f->a, &released, &err), HR_OK);
    assert_false(released);
    assert_int_equal(hr_lease_acquire(f->a, &st, &err), HR_OK);
    assert_false(st.held);
    assert_string_equal(st.holder, "node-B");
    /* the holder's release frees it; the next acquisition is epoch 3 */
    assert_int_equal(hr_lease_release(f->b, &released, &err), HR_OK);
    assert_true(released);
    assert_int_equal(hr_lease_acquire(f->a, &st, &err), HR_OK);
    assert_true(st.held);
    assert_int_equal(st.epoch, 3);
}

/* A second lease under the same node id (a restarted process) does not
 * take over the first one's key, nor renew it. */
static void test_same_node_id(void **state)
{
    fixture *f = *state;
    hr_error err = {{0}, {0}};
    hr_lease *a2 = NULL;
    assert_int_equal(hr_lease_create(f->rt, "c1", "node-A", 300, &a2, &err), HR_OK);
    hr_lease_state st;
    assert_int_equal(hr_lease_acquire(f->a, &st, &err), HR_OK);
    assert_true(st.held);
    assert_int_equal(hr_lease_acquire(a2, &st, &err), HR_OK);
    assert_false(st.held);
    assert_string_equal(st.holder, "node-A");
    assert_int_equal(hr_lease_renew(a2, &st, &err), HR_EINVAL);
    hr_lease_destroy(a2);
}

typedef struct {
    atomic_int calls;
    hr_lease_state now;
} lost_log;

static void on_lost(void *arg, const hr_lease_state *now)
{
    lost_log *log = arg;
    log->now = *now;
    atomic_fetch_add(&log->calls, 1);
}

static void test_renewal_thread(void **state)
{
    fixture *f = *state;
    hr_error err = {{0}, {0}};
    hr_lease_state st;
    lost_log log = {0};
    assert_int_equal(hr_lease_start_renewal(f->a, on_lost, &log, &err), HR_EINVAL); /* not held */
    assert_int_equal(hr_lease_acquire(f->a, &st, &err), HR_OK);
    assert_true(st.held);
    assert_int_equal(hr_lease_start_renewal(f->a, on_lost, &log, &err), HR_OK);
    assert_int_equal(hr_lease_start_renewal(f->a, on_lost, &log, &err), HR_EINVAL); /* runs */

    /* across several ttl (300 ms each), B never gets it */
    uint64_t end = hr_now_ns() + 1500000000ull;
    while (hr_now_ns() < end) {
        assert_int_equal(hr_lease_acquire(f->b, &st, &err), HR_OK);
        assert_false(st.held);
        assert_string_equal(st.holder, "node-A");
        sleep_ms(20);
    }
    assert_int_equal(atomic_load(&log.calls), 0);

    /* the key is stolen: the thread notices and calls back once */
    assert_int_equal(hr_redis_call(f->rt, NULL, &err, "SET", "hogrec:{c1}:leader", "thief 7", NULL), HR_OK);
    end = hr_now_ns() + 5000000000ull;
    while (atomic_load(&log.calls) == 0 && hr_now_ns() < end)
        sleep_ms(10);
    assert_int_equal(atomic_load(&log.calls), 1);
    assert_false(log.now.held);
    assert_string_equal(log.now.holder, "thief");
    assert_int_equal(log.now.epoch, 7);
    assert_int_equal(hr_lease_epoch(f->a), 0);
    hr_lease_stop_renewal(f->a);
    assert_int_equal(atomic_load(&log.calls), 1);

    /* deleted outright: the same */
    assert_int_equal(hr_redis_call(f->rt, NULL, &err, "DEL", "hogrec:{c1}:leader", NULL), HR_OK);
    lost_log log2 = {0};
    assert_true(acquire_within(f->b, &st));
    assert_int_equal(hr_lease_start_renewal(f->b, on_lost, &log2, &err), HR_OK);
    assert_int_equal(hr_redis_call(f->rt, NULL, &err, "DEL", "hogrec:{c1}:leader", NULL), HR_OK);
    end = hr_now_ns() + 5000000000ull;
    while (atomic_load(&log2.calls) == 0 && hr_now_ns() < end)
        sleep_ms(10);
    assert_int_equal(atomic_load(&log2.calls), 1);
    assert_string_equal(log2.now.holder, "");
    hr_lease_stop_renewal(f->b);
    /* stopping a stopped one is a no-op */
    hr_lease_stop_renewal(f->b);
}

/* Redis gone for longer than the ttl: the holder counts the lease lost. */
static void test_renewal_redis_down(void **state)
{
    fixture *f = *state;
    hr_error err = {{0}, {0}};
    hr_lease_state st;
    lost_log log = {0};
    assert_int_equal(hr_lease_acquire(f->a, &st, &err), HR_OK);
    assert_int_equal(hr_lease_start_renewal(f->a, on_lost, &log, &err), HR_OK);
    tu_redis_kill(&g_srv, SIGKILL);
    uint64_t end = hr_now_ns() + 5000000000ull;
    while (atomic_load(&log.calls) == 0 && hr_now_ns() < end)
        sleep_ms(10);
    assert_int_equal(atomic_load(&log.calls), 1);
    assert_false(log.now.held);
    assert_string_equal(log.now.holder, "");
    hr_lease_stop_renewal(f->a);
    assert_int_equal(hr_lease_epoch(f->a), 0);
}

/* Polls until the leader key of cluster c1 is gone (expired). */
static void wait_key_gone(fixture *f)
{
    hr_error err = {{0}, {0}};
    for (int i = 0; i < 500; i++) { /* 5 s */
        redisReply *rep = NULL;
        assert_int_equal(hr_redis_call(f->rt, &rep, &err, "EXISTS", "hogrec:{c1}:leader", NULL),
                         HR_OK);
        bool gone = rep->integer == 0;
        freeReplyObject(rep);
        if (gone)
            return;
        sleep_ms(10);
    }
    fail_msg("the leader key did not expire within 5 s");
}

/* A holder whose key expired (Redis restarted, or unreachable past the
 * ttl) takes it back with the same epoch while no node acquired since;
 * once another node did, the reclaim is refused and names it. */
static void test_reclaim(void **state)
{
    fixture *f = *state;
    hr_error err = {{0}, {0}};
    hr_lease_state st;
    assert_int_equal(hr_lease_acquire(f->a, &st, &err), HR_OK);
    assert_int_equal(st.epoch, 1);
    wait_key_gone(f);
    assert_int_equal(hr_lease_reclaim(f->a, 1, &st, &err), HR_OK);
    assert_true(st.held);
    assert_int_equal(st.epoch, 1);
    assert_int_equal(hr_lease_epoch(f->a), 1);
    assert_int_equal(hr_lease_acquire(f->b, &st, &err), HR_OK);
    assert_false(st.held);
    assert_string_equal(st.holder, "node-A");
    /* while held, a reclaim is a renewal */
    assert_int_equal(hr_lease_reclaim(f->a, 1, &st, &err), HR_OK);
    assert_true(st.held);
    assert_int_equal(hr_lease_renew(f->a, &st, &err), HR_OK);
    assert_true(st.held);
    /* B takes epoch 2 once it expires: A's reclaim of epoch 1 is refused */
    assert_true(acquire_within(f->b, &st));
    assert_int_equal(st.epoch, 2);
    assert_int_equal(hr_lease_reclaim(f->a, 1, &st, &err), HR_OK);
    assert_false(st.held);
    assert_string_equal(st.holder, "node-B");
    assert_int_equal(st.epoch, 2);
    /* and stays refused when the key is free again: epoch 2 existed */
    bool released = false;
    assert_int_equal(hr_lease_release(f->b, &released, &err), HR_OK);
    assert_true(released);
    assert_int_equal(hr_lease_reclaim(f->a, 1, &st, &err), HR_OK);
    assert_false(st.held);
    assert_string_equal(st.holder, "");
    assert_int_equal(st.epoch, 2);
    assert_int_equal(hr_lease_reclaim(f->a, 0, &st, &err), HR_EINVAL);
}

static void test_membership(void **state)
{
    fixture *f = *state;
    hr_error err = {{0}, {0}};
    json_t *lag = json_pack("{s:i, s:f}", "events", 12, "ms", 3.5);
    hr_lease_member_info ia = {.address = "127.0.0.1:8001", .role = "leader", .epoch = 1,
                               .heartbeat_ms = 60000, .lag = lag};
    hr_lease_member_info ib = {.address = "127.0.0.1:8002", .role = "follower", .epoch = 1,
                               .heartbeat_ms = 20, .lag = NULL};
    assert_int_equal(hr_lease_heartbeat(f->a, &ia, &err), HR_OK);
    assert_int_equal(hr_lease_heartbeat(f->b, &ib, &err), HR_OK);
    hr_lease_member_info bad = ia;
    bad.heartbeat_ms = 0;
    assert_int_equal(hr_lease_heartbeat(f->a, &bad, &err), HR_EINVAL);

    /* B stops heartbeating; poll until more than 3 x 20 ms went by on the
     * Redis clock: B is listed stale, A (period 60 s) is not */
    hr_lease_member *m = NULL;
    size_t n = 0;
    uint64_t end = hr_now_ns() + 5000000000ull;
    for (;;) {
        assert_int_equal(hr_lease_members(f->a, &m, &n, &err), HR_OK);
        assert_int_equal(n, 2);
        if (m[1].stale || hr_now_ns() > end)
            break;
        hr_lease_members_free(m, n);
        sleep_ms(10);
    }
    assert_string_equal(m[0].node_id, "node-A");
    assert_string_equal(m[1].node_id, "node-B");
    assert_false(m[0].stale);
    assert_true(m[1].stale);
    assert_true(m[1].age_ms > 60);
    assert_string_equal(json_string_value(json_object_get(m[0].entry, "address")), "127.0.0.1:8001");
    assert_string_equal(json_string_value(json_object_get(m[0].entry, "role")), "leader");
    assert_int_equal(json_integer_value(json_object_get(m[0].entry, "epoch")), 1);
    assert_true(json_equal(json_object_get(m[0].entry, "lag"), lag));
    assert_true(json_is_null(json_object_get(m[1].entry, "lag")));
    assert_true(json_integer_value(json_object_get(m[1].entry, "last_seen_ms")) > 1000000000000LL);
    hr_lease_members_free(m, n);

    /* a fresh heartbeat makes it current again; a leave removes it */
    ib.heartbeat_ms = 60000;
    assert_int_equal(hr_lease_heartbeat(f->b, &ib, &err), HR_OK);
    assert_int_equal(hr_lease_members(f->b, &m, &n, &err), HR_OK);
    assert_int_equal(n, 2);
    assert_false(m[1].stale);
    hr_lease_members_free(m, n);
    assert_int_equal(hr_lease_leave(f->b, &err), HR_OK);
    assert_int_equal(hr_lease_members(f->b, &m, &n, &err), HR_OK);
    assert_int_equal(n, 1);
    assert_string_equal(m[0].node_id, "node-A");
    hr_lease_members_free(m, n);
    /* an entry that is not ours is listed stale, not trusted */
    assert_int_equal(hr_redis_call(f->rt, NULL, &err, "HSET", "hogrec:{c1}:members", "junk", "not json", NULL), HR_OK);
    assert_int_equal(hr_lease_members(f->a, &m, &n, &err), HR_OK);
    assert_int_equal(n, 2);
    assert_string_equal(m[0].node_id, "junk"); /* sorted by node id */
    assert_true(m[0].stale);
    assert_null(m[0].entry);
    assert_false(m[1].stale);
    hr_lease_members_free(m, n);
    json_decref(lag);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_names, setup, teardown),
        cmocka_unit_test_setup_teardown(test_acquire_fail_over_and_fencing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_same_node_id, setup, teardown),
        cmocka_unit_test_setup_teardown(test_renewal_thread, setup, teardown),
        cmocka_unit_test_setup_teardown(test_renewal_redis_down, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reclaim, setup, teardown),
        cmocka_unit_test_setup_teardown(test_membership, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

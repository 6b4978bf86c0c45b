/*
 * test_queue.c - tests of the bounded MPMC event queue (src/queue.c).
 *
 * Single-threaded tests check FIFO order across ring wrap-around, payload
 * integrity, all-or-nothing admission, argument errors, close with and
 * without drain, and pop_timed. Threaded tests check that a blocked pusher
 * is released by pops (once its batch fits and the queue is down to half:
 * the wake-up hysteresis) or close, that the turn passes between waiting
 * pushers without a lost wake-up, wait_empty, and run the queue against a
 * model under many producers and consumers: every event arrives exactly
 * once, each consumer sees each producer's events in order, a batch is
 * never split or interleaved, and the counters agree with what the threads
 * recorded. No verdict depends on timing: sleeps only give threads a chance
 * to block, and the only timeout checked is pop_timed on an empty queue.
 *
 * Threads other than the test's own never call cmocka asserts (they would
 * longjmp across threads); they record the first failure for the main
 * thread to report.
 */
/* ctest-labels: concurrent */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hogrec/common.h"
#include "hogrec/event.h"
#include "hogrec/queue.h"
#include "testutil.h"

/* ---- events tagged with where they came from ---- */

/* An event saying: producer `prod`, sequence `seq`, index `idx` of a batch
 * numbered `batch` of `len` events, pushed on attempt `attempt`. The context
 * features carry a pattern derived from (prod, seq) to check the payload. */
static hr_event tagged(uint32_t prod, uint64_t seq, uint32_t batch,
                       uint32_t idx, uint32_t len, uint32_t attempt)
{
    hr_event e;
    memset(&e, 0, sizeof e);
    e.user = prod;
    e.item = batch;
    e.seq = seq;
    e.enq_updates = idx;
    e.enq_ns = len;
    e.ts = attempt;
    e.nctx = HR_MAX_CTX;
    e.label = (float)(seq & 1);
    e.weight = 1.0f;
    for (uint32_t i = 0; i < HR_MAX_CTX; i++) {
        e.ctx[i].row = (uint32_t)(seq * 31u + prod * 7u + i);
        e.ctx[i].x = (float)i;
    }
    return e;
}

static bool payload_ok(const hr_event *e)
{
    hr_event want = tagged(e->user, e->seq, e->item, (uint32_t)e->enq_updates,
                           (uint32_t)e->enq_ns, (uint32_t)e->ts);
    return memcmp(&want, e, sizeof want) == 0;
}

static hr_queue *make_queue(size_t capacity)
{
    hr_queue *q = NULL;
    assert_int_equal(hr_queue_create(capacity, &q), HR_OK);
    assert_non_null(q);
    return q;
}

static hr_queue_stats stats_of(hr_queue *q)
{
    hr_queue_stats st;
    hr_queue_get_stats(q, &st);
    return st;
}

/* Pushes events with seq first..first+n-1 of producer 0 as one batch. */
static hr_status push_seqs(hr_queue *q, uint64_t first, size_t n, bool wait)
{
    hr_event evs[64];
    assert_true(n <= HR_ARRAY_LEN(evs));
    for (size_t i = 0; i < n; i++)
        evs[i] = tagged(0, first + i, (uint32_t)first, (uint32_t)i, (uint32_t)n, 0);
    return hr_queue_push(q, evs, n, wait);
}

/* Pops everything left (without blocking) and checks it is first..first+n-1. */
static void expect_seqs(hr_queue *q, uint64_t first, size_t n)
{
    hr_event out[64];
    size_t got = 0;
    assert_true(n <= HR_ARRAY_LEN(out));
    assert_int_equal(hr_queue_pop_timed(q, out, HR_ARRAY_LEN(out), &got, 0), HR_OK);
    assert_int_equal(got, n);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(out[i].seq, first + i);
        assert_true(payload_ok(&out[i]));
    }
}

/* ---- single-threaded ---- */

static void test_create_and_args(void **state)
{
    (void)state;
    hr_queue *q = (hr_queue *)&q; /* must be overwritten */
    assert_int_equal(hr_queue_create(0, &q), HR_EINVAL);
    assert_null(q);
    assert_int_equal(hr_queue_create(4, NULL), HR_EINVAL);
    hr_queue_destroy(NULL);

    q = make_queue(1);
    hr_queue_stats st = stats_of(q);
    assert_int_equal(st.capacity, 1);
    assert_int_equal(st.depth, 0);
    assert_int_equal(st.accepted + st.refused + st.popped + st.abandoned, 0);

    hr_event ev = tagged(0, 1, 1, 0, 1, 0);
    hr_event out[2];
    size_t n = 99;
    assert_int_equal(hr_queue_push(q, NULL, 0, false), HR_OK); /* n == 0 */
    assert_int_equal(hr_queue_push(q, NULL, 1, false), HR_EINVAL);
    assert_int_equal(hr_queue_pop(q, out, 0, &n), HR_EINVAL); /* max == 0 */
    assert_int_equal(n, 0);
    assert_int_equal(hr_queue_pop(q, NULL, 1, &n), HR_EINVAL);
    assert_int_equal(hr_queue_push(q, &ev, 1, false), HR_OK);
    assert_int_equal(hr_queue_pop(q, out, 2, &n), HR_OK);
    assert_int_equal(n, 1);
    assert_true(payload_ok(&out[0]));
    hr_queue_destroy(q);
}

/* Random batch sizes pushed and popped through a 7-slot ring, hundreds of
 * wraps, against a model (next seq to push, next seq to pop). */
static void test_fifo_wraparound(void **state)
{
    (void)state;
    enum { CAP = 7, ROUNDS = 3000 };
    hr_queue *q = make_queue(CAP);
    hr_rng rng;
    hr_rng_seed(&rng, 42);
    uint64_t next_push = 0, next_pop = 0, refused = 0;
    hr_event out[CAP + 2];

    for (int r = 0; r < ROUNDS; r++) {
        size_t n = 1 + (size_t)hr_rng_below(&rng, CAP);
        size_t depth = (size_t)(next_push - next_pop);
        hr_status s = push_seqs(q, next_push, n, false);
        if (n <= CAP - depth) {
            assert_int_equal(s, HR_OK);
            next_push += n;
        } else {
            assert_int_equal(s, HR_EFULL);
            refused += n;
        }
        depth = (size_t)(next_push - next_pop);
        size_t max = 1 + (size_t)hr_rng_below(&rng, CAP + 2);
        size_t got = 99;
        if (depth == 0) {
            assert_int_equal(hr_queue_pop_timed(q, out, max, &got, 0), HR_OK);
            assert_int_equal(got, 0);
            continue;
        }
        assert_int_equal(hr_queue_pop(q, out, max, &got), HR_OK);
        assert_int_equal(got, depth < max ? depth : max);
        for (size_t i = 0; i < got; i++) {
            assert_int_equal(out[i].seq, next_pop + i);
            assert_true(payload_ok(&out[i]));
        }
        next_pop += got;
    }
    hr_queue_stats st = stats_of(q);
    assert_int_equal(st.accepted, next_push);
    assert_int_equal(st.popped, next_pop);
    assert_int_equal(st.refused, refused);
    assert_int_equal(st.depth, next_push - next_pop);
    assert_int_equal(st.abandoned, 0);
    assert_true(next_pop > 10 * CAP); /* it did wrap, many times */
    hr_queue_destroy(q);
}

static void test_all_or_nothing(void **state)
{
    (void)state;
    hr_queue *q = make_queue(8);
    assert_int_equal(push_seqs(q, 0, 5, false), HR_OK);
    assert_int_equal(push_seqs(q, 5, 4, false), HR_EFULL); /* 3 free */
    hr_queue_stats st = stats_of(q);
    assert_int_equal(st.accepted, 5);
    assert_int_equal(st.refused, 4);
    assert_int_equal(st.depth, 5); /* nothing of the refused batch */

    assert_int_equal(push_seqs(q, 5, 3, false), HR_OK); /* exactly fits */
    assert_int_equal(push_seqs(q, 8, 1, false), HR_EFULL);
    st = stats_of(q);
    assert_int_equal(st.accepted, 8);
    assert_int_equal(st.refused, 5);
    assert_int_equal(st.depth, 8);
    expect_seqs(q, 0, 8); /* the refused events never show up */

    /* Over capacity is an argument error, waiting or not, and counts nowhere. */
    assert_int_equal(push_seqs(q, 100, 9, false), HR_EINVAL);
    assert_int_equal(push_seqs(q, 100, 9, true), HR_EINVAL);
    st = stats_of(q);
    assert_int_equal(st.accepted, 8);
    assert_int_equal(st.refused, 5);
    assert_int_equal(st.popped, 8);
    assert_int_equal(st.depth, 0);

    /* A full-capacity batch fits an empty queue, even one that has wrapped. */
    assert_int_equal(push_seqs(q, 20, 3, false), HR_OK);
    expect_seqs(q, 20, 3);
    assert_int_equal(push_seqs(q, 30, 8, false), HR_OK);
    expect_seqs(q, 30, 8);
    hr_queue_destroy(q);
}

static void test_close_drain(void **state)
{
    (void)state;
    hr_queue *q = make_queue(4);
    assert_int_equal(push_seqs(q, 0, 3, false), HR_OK);
    assert_int_equal(push_seqs(q, 3, 2, false), HR_EFULL);
    hr_queue_close(q, true);
    hr_queue_close(q, true); /* idempotent */
    assert_int_equal(push_seqs(q, 3, 1, false), HR_ESTOPPED);
    assert_int_equal(push_seqs(q, 3, 1, true), HR_ESTOPPED);
    hr_queue_wait_empty(q); /* closed: returns at once */

    hr_event out[2];
    size_t n = 99;
    assert_int_equal(hr_queue_pop(q, out, 2, &n), HR_OK);
    assert_int_equal(n, 2);
    assert_int_equal(out[0].seq, 0);
    assert_int_equal(out[1].seq, 1);
    assert_int_equal(hr_queue_pop_timed(q, out, 2, &n, 1000), HR_OK);
    assert_int_equal(n, 1);
    assert_int_equal(out[0].seq, 2);
    assert_int_equal(hr_queue_pop(q, out, 2, &n), HR_ESTOPPED);
    assert_int_equal(n, 0);
    assert_int_equal(hr_queue_pop_timed(q, out, 2, &n, 1000), HR_ESTOPPED);
    assert_int_equal(n, 0);

    hr_queue_stats st = stats_of(q);
    assert_int_equal(st.accepted, 3);
    assert_int_equal(st.refused, 2); /* stopped pushes are not "refused" */
    assert_int_equal(st.popped, 3);
    assert_int_equal(st.abandoned, 0);
    assert_int_equal(st.depth, 0);
    hr_queue_destroy(q);
}

static void test_close_abandon(void **state)
{
    (void)state;
    hr_queue *q = make_queue(4);
    /* Make the contents wrap around the ring end first. */
    assert_int_equal(push_seqs(q, 0, 3, false), HR_OK);
    expect_seqs(q, 0, 3);
    assert_int_equal(push_seqs(q, 3, 2, false), HR_OK);
    assert_int_equal(push_seqs(q, 5, 2, false), HR_OK);
    hr_queue_close(q, false);

    hr_event out[4];
    size_t n = 99;
    assert_int_equal(hr_queue_pop(q, out, 4, &n), HR_ESTOPPED);
    assert_int_equal(n, 0);
    assert_int_equal(push_seqs(q, 7, 1, false), HR_ESTOPPED);
    hr_queue_wait_empty(q);
    hr_queue_close(q, false);
    hr_queue_close(q, true); /* changes nothing */

    hr_queue_stats st = stats_of(q);
    assert_int_equal(st.accepted, 7);
    assert_int_equal(st.popped, 3);
    assert_int_equal(st.abandoned, 4);
    assert_int_equal(st.depth, 0);
    assert_int_equal(st.refused, 0);
    hr_queue_destroy(q);
}

/* close(true) then close(false): the drain is given up, the rest abandoned. */
static void test_close_drain_then_abandon(void **state)
{
    (void)state;
    hr_queue *q = make_queue(8);
    assert_int_equal(push_seqs(q, 0, 6, false), HR_OK);
    hr_queue_close(q, true);
    hr_event out[2];
    size_t n = 0;
    assert_int_equal(hr_queue_pop(q, out, 2, &n), HR_OK);
    assert_int_equal(n, 2);
    hr_queue_close(q, false);
    assert_int_equal(hr_queue_pop(q, out, 2, &n), HR_ESTOPPED);
    assert_int_equal(n, 0);
    hr_queue_stats st = stats_of(q);
    assert_int_equal(st.popped, 2);
    assert_int_equal(st.abandoned, 4);
    assert_int_equal(st.depth, 0);
    hr_queue_destroy(q);
}

static void test_pop_timed(void **state)
{
    (void)state;
    hr_queue *q = make_queue(4);
    hr_event out[4];
    size_t n = 99;

    uint64_t t0 = hr_now_ns();
    assert_int_equal(hr_queue_pop_timed(q, out, 4, &n, 20), HR_OK);
    uint64_t t1 = hr_now_ns();
    assert_int_equal(n, 0);
    /* Both clocks are CLOCK_MONOTONIC and the deadline is taken after t0,
     * so this lower bound cannot fail on a slow machine. */
    assert_true(t1 - t0 >= 20ull * 1000000ull);

    n = 99;
    assert_int_equal(hr_queue_pop_timed(q, out, 4, &n, 0), HR_OK);
    assert_int_equal(n, 0);

    /* Events present: returned at once (the long timeout is an upper bound). */
    assert_int_equal(push_seqs(q, 0, 2, false), HR_OK);
    assert_int_equal(hr_queue_pop_timed(q, out, 4, &n, 60000), HR_OK);
    assert_int_equal(n, 2);
    assert_int_equal(out[0].seq, 0);
    assert_int_equal(out[1].seq, 1);

    hr_queue_stats st = stats_of(q);
    assert_int_equal(st.popped, 2);
    assert_int_equal(st.depth, 0);
    hr_queue_close(q, true);
    assert_int_equal(hr_queue_pop_timed(q, out, 4, &n, 60000), HR_ESTOPPED);
    hr_queue_destroy(q);
}

/* ---- threaded: blocking calls ---- */

typedef struct {
    hr_queue *q;
    uint64_t first; /* first seq of the batch */
    size_t n;
    hr_status status;
    atomic_bool done;
} push_job;

static void *push_thread(void *arg)
{
    push_job *j = arg;
    hr_event evs[16];
    for (size_t i = 0; i < j->n; i++)
        evs[i] = tagged(0, j->first + i, (uint32_t)j->first, (uint32_t)i,
                        (uint32_t)j->n, 0);
    j->status = hr_queue_push(j->q, evs, j->n, true);
    atomic_store(&j->done, true);
    return NULL;
}

/* Sleeps ms milliseconds, to give other threads a chance to run or reach
 * a blocking call. Never decides a verdict: a test checks only what must
 * hold however long this takes. */
static void nap(long ms)
{
    struct timespec ts = {0, ms * 1000000L};
    nanosleep(&ts, NULL);
}

static void let_others_run(void) { nap(20); }

/* Starts a pusher of n events from seq first on thread *t, lets it reach
 * its wait (a queue without room for them: it must not be done). */
static void start_blocked_pusher(push_job *j, pthread_t *t, hr_queue *q, uint64_t first, size_t n)
{
    *j = (push_job){.q = q, .first = first, .n = n};
    atomic_init(&j->done, false);
    assert_int_equal(pthread_create(t, NULL, push_thread, j), 0);
    let_others_run();
    assert_false(atomic_load(&j->done));
}

static void test_blocked_pusher_released_by_pop(void **state)
{
    (void)state;
    hr_queue *q = make_queue(4);
    assert_int_equal(push_seqs(q, 0, 4, false), HR_OK);

    push_job j;
    pthread_t t;
    start_blocked_pusher(&j, &t, q, 4, 2); /* the queue is full */

    hr_event out[4];
    size_t n = 0;
    assert_int_equal(hr_queue_pop(q, out, 1, &n), HR_OK);
    assert_int_equal(n, 1);
    assert_int_equal(out[0].seq, 0);
    let_others_run();
    assert_false(atomic_load(&j.done)); /* one free slot, batch of two */

    assert_int_equal(hr_queue_pop(q, out, 1, &n), HR_OK);
    assert_int_equal(out[0].seq, 1);
    assert_int_equal(pthread_join(t, NULL), 0); /* now it fits */
    assert_int_equal(j.status, HR_OK);
    expect_seqs(q, 2, 4);

    hr_queue_stats st = stats_of(q);
    assert_int_equal(st.accepted, 6);
    assert_int_equal(st.refused, 0);
    assert_int_equal(st.popped, 6);
    hr_queue_destroy(q);
}

static void test_blocked_pusher_released_by_close(void **state)
{
    (void)state;
    hr_queue *q = make_queue(4);
    assert_int_equal(push_seqs(q, 0, 3, false), HR_OK);

    push_job j = {.q = q, .first = 3, .n = 2};
    atomic_init(&j.done, false);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, push_thread, &j), 0);
    let_others_run();
    hr_queue_close(q, true);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(j.status, HR_ESTOPPED);

    expect_seqs(q, 0, 3); /* the drain holds nothing of the stopped batch */
    hr_event out[1];
    size_t n = 99;
    assert_int_equal(hr_queue_pop(q, out, 1, &n), HR_ESTOPPED);
    hr_queue_stats st = stats_of(q);
    assert_int_equal(st.accepted, 3);
    assert_int_equal(st.refused, 0);
    hr_queue_destroy(q);
}

/* Hysteresis: space freed by a pop wakes a waiting pusher only once its
 * batch fits and the queue is at or below half its capacity. */
static void test_blocked_pusher_waits_for_low_water(void **state)
{
    (void)state;
    hr_queue *q = make_queue(8);
    assert_int_equal(push_seqs(q, 0, 8, false), HR_OK);

    push_job j;
    pthread_t t;
    start_blocked_pusher(&j, &t, q, 8, 2); /* the queue is full */

    hr_event out[4];
    size_t n = 0;
    assert_int_equal(hr_queue_pop(q, out, 2, &n), HR_OK);
    assert_int_equal(n, 2);
    let_others_run();
    /* Room for the batch, but 6 of 8 queued: above the mark, not woken. */
    assert_false(atomic_load(&j.done));
    assert_int_equal(stats_of(q).depth, 6);

    assert_int_equal(hr_queue_pop(q, out, 2, &n), HR_OK);
    assert_int_equal(n, 2);
    assert_int_equal(pthread_join(t, NULL), 0); /* 4 of 8: at the mark */
    assert_int_equal(j.status, HR_OK);
    expect_seqs(q, 4, 6);
    hr_queue_destroy(q);
}

/* Two waiting pushers: the turn passes from the first admitted to the
 * second, whose batch size the next pops must see (no lost wake-up). */
static void test_blocked_pushers_hand_off(void **state)
{
    (void)state;
    hr_queue *q = make_queue(8);
    assert_int_equal(push_seqs(q, 0, 8, false), HR_OK);
    push_job j[2] = {{.q = q, .first = 8, .n = 4}, {.q = q, .first = 12, .n = 4}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++) {
        atomic_init(&j[i].done, false);
        assert_int_equal(pthread_create(&t[i], NULL, push_thread, &j[i]), 0);
        let_others_run();
    }
    hr_event out[8];
    size_t n = 0;
    /* Each pop of 4 admits one of them (whichever holds the turn). */
    assert_int_equal(hr_queue_pop(q, out, 4, &n), HR_OK);
    assert_int_equal(n, 4);
    assert_int_equal(hr_queue_pop(q, out, 4, &n), HR_OK);
    assert_int_equal(n, 4);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(pthread_join(t[i], NULL), 0);
        assert_int_equal(j[i].status, HR_OK);
    }
    /* Both batches whole, in some order: seqs 8..15, each batch consecutive. */
    assert_int_equal(hr_queue_pop_timed(q, out, 8, &n, 0), HR_OK);
    assert_int_equal(n, 8);
    uint64_t seen = 0;
    for (size_t b = 0; b < 8; b += 4) {
        assert_true(out[b].seq == 8 || out[b].seq == 12);
        for (size_t i = 0; i < 4; i++) {
            assert_int_equal(out[b + i].seq, out[b].seq + i);
            assert_true(payload_ok(&out[b + i]));
        }
        seen |= 1u << (out[b].seq == 12);
    }
    assert_int_equal(seen, 3);
    hr_queue_stats st = stats_of(q);
    assert_int_equal(st.accepted, 16);
    assert_int_equal(st.popped, 16);
    hr_queue_destroy(q);
}

typedef struct {
    hr_queue *q;
    hr_status status;
    size_t got;
} pop_job;

/* Pops until HR_ESTOPPED, in batches of at most 3. */
static void *pop_all_thread(void *arg)
{
    pop_job *j = arg;
    hr_event out[3];
    size_t n;
    while ((j->status = hr_queue_pop(j->q, out, 3, &n)) == HR_OK)
        j->got += n;
    return NULL;
}

static void test_blocked_consumers_released_by_close(void **state)
{
    (void)state;
    hr_queue *q = make_queue(4);
    pop_job j[3] = {{.q = q}, {.q = q}, {.q = q}};
    pthread_t t[3];
    for (int i = 0; i < 3; i++)
        assert_int_equal(pthread_create(&t[i], NULL, pop_all_thread, &j[i]), 0);
    let_others_run();
    hr_queue_close(q, false);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(pthread_join(t[i], NULL), 0);
        assert_int_equal(j[i].status, HR_ESTOPPED);
        assert_int_equal(j[i].got, 0);
    }
    hr_queue_destroy(q);
}

static void test_wait_empty(void **state)
{
    (void)state;
    hr_queue *q = make_queue(64);
    for (uint64_t s = 0; s < 50; s += 10)
        assert_int_equal(push_seqs(q, s, 10, false), HR_OK);
    pop_job j = {.q = q};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, pop_all_thread, &j), 0);
    hr_queue_wait_empty(q);
    hr_queue_stats st = stats_of(q); /* nobody pushes: stays empty */
    assert_int_equal(st.depth, 0);
    assert_int_equal(st.popped, 50);
    hr_queue_close(q, true);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(j.got, 50);
    assert_int_equal(j.status, HR_ESTOPPED);
    hr_queue_destroy(q);
}

/* ---- threaded: the queue against a model ---- */

enum {
    M_PRODUCERS = 4,
    M_CONSUMERS = 3,
    M_EVENTS = 20000, /* per producer */
    M_CAPACITY = 64,
    M_MAX_BATCH = 24,
    M_MAX_POP = 32,
};

typedef enum {
    PUSH_RETRY,   /* wait=false, a refused batch is resent whole */
    PUSH_WAIT,    /* wait=true */
    PUSH_MIXED,   /* each batch picks one of the two at random */
} push_mode;

typedef struct {
    hr_queue *q;
    uint32_t id;
    push_mode mode;
    uint64_t limit;          /* events to push at most */
    /* results, read after join */
    uint64_t pushed;         /* events accepted: seqs 0..pushed-1 */
    uint64_t refused_events; /* events of refused attempts */
    uint64_t refused_batches;
    hr_status last;          /* status that ended the run: OK or ESTOPPED */
    char error[160];         /* first unexpected thing, "" if none */
} producer;

static void *producer_thread(void *arg)
{
    producer *p = arg;
    hr_rng rng;
    hr_rng_seed(&rng, 1000 + p->id);
    hr_event batch[M_MAX_BATCH];
    uint32_t nbatch = 0;
    p->last = HR_OK;
    while (p->pushed < p->limit) {
        uint64_t left = p->limit - p->pushed;
        uint32_t len = 1 + (uint32_t)hr_rng_below(&rng, M_MAX_BATCH);
        if (len > left)
            len = (uint32_t)left;
        bool wait = p->mode == PUSH_WAIT ||
                    (p->mode == PUSH_MIXED && hr_rng_below(&rng, 2));
        for (uint32_t attempt = 0;; attempt++) {
            for (uint32_t i = 0; i < len; i++)
                batch[i] = tagged(p->id, p->pushed + i, nbatch, i, len, attempt);
            hr_status s = hr_queue_push(p->q, batch, len, wait);
            if (s == HR_OK)
                break;
            if (s == HR_EFULL && !wait) {
                p->refused_events += len;
                p->refused_batches++;
                sched_yield();
                continue;
            }
            if (s != HR_ESTOPPED && !p->error[0])
                snprintf(p->error, sizeof p->error, "producer %u: push gave %s",
                         p->id, hr_status_to_string(s));
            p->last = s;
            return NULL;
        }
        p->pushed += len;
        nbatch++;
    }
    return NULL;
}

/* Lets the abandon test stop the consumers at a known point: once `popped`
 * reaches `threshold`, each consumer parks (outside any queue call) until
 * `released`, so the queue fills up and close(false) finds it full. */
typedef struct {
    atomic_uint_least64_t popped;
    uint64_t threshold;
    atomic_int parked;
    atomic_bool released;
} gate;

typedef struct {
    hr_queue *q;
    uint32_t id;
    bool timed;               /* use pop_timed with a short timeout */
    gate *gate;               /* NULL: never park */
    uint8_t *seen;            /* [M_PRODUCERS * M_EVENTS] receive counts */
    int64_t last_seq[M_PRODUCERS]; /* last seq seen per producer, -1 none */
    uint64_t received;
    uint64_t pops;
    char error[200];
} consumer;

static void consumer_fail(consumer *c, const char *what, const hr_event *e)
{
    if (!c->error[0])
        snprintf(c->error, sizeof c->error,
                 "consumer %u: %s (producer %u seq %llu batch %u idx %llu)",
                 c->id, what, e->user, (unsigned long long)e->seq, e->item,
                 (unsigned long long)e->enq_updates);
}

/* One pop result is a contiguous slice of the global FIFO order, so any
 * batch in it that is not cut by the slice's ends is whole, in order and
 * from a single push attempt. */
static void check_slice(consumer *c, const hr_event *ev, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const hr_event *e = &ev[i];
        if (e->user >= M_PRODUCERS || e->seq >= M_EVENTS) {
            consumer_fail(c, "tag out of range", e);
            return;
        }
        if (!payload_ok(e))
            consumer_fail(c, "payload corrupted", e);
        if ((int64_t)e->seq <= c->last_seq[e->user])
            consumer_fail(c, "producer order broken", e);
        c->last_seq[e->user] = (int64_t)e->seq;
        uint8_t *seen = &c->seen[(size_t)e->user * M_EVENTS + e->seq];
        if (*seen < UINT8_MAX)
            (*seen)++;
        if (i == 0)
            continue;
        const hr_event *p = &ev[i - 1];
        bool prev_open = p->enq_updates + 1 < p->enq_ns;
        if (prev_open) {
            if (e->user != p->user || e->item != p->item ||
                e->enq_updates != p->enq_updates + 1 || e->seq != p->seq + 1)
                consumer_fail(c, "batch interleaved", e);
            else if (e->ts != p->ts)
                consumer_fail(c, "batch mixes push attempts", e);
        } else if (e->enq_updates != 0) {
            consumer_fail(c, "batch entered in part", e);
        }
    }
}

static void *consumer_thread(void *arg)
{
    consumer *c = arg;
    hr_rng rng;
    hr_rng_seed(&rng, 2000 + c->id);
    hr_event out[M_MAX_POP];
    for (;;) {
        gate *g = c->gate;
        if (g && atomic_load(&g->popped) >= g->threshold) {
            atomic_fetch_add(&g->parked, 1);
            while (!atomic_load(&g->released))
                nap(1);
            c->gate = NULL; /* from now on pop until stopped */
        }
        size_t max = 1 + (size_t)hr_rng_below(&rng, M_MAX_POP);
        size_t n = 0;
        hr_status s = c->timed ? hr_queue_pop_timed(c->q, out, max, &n, 2)
                               : hr_queue_pop(c->q, out, max, &n);
        if (s == HR_ESTOPPED) {
            if (n != 0 && !c->error[0])
                snprintf(c->error, sizeof c->error, "consumer %u: stopped with n=%zu",
                         c->id, n);
            return NULL;
        }
        if (s != HR_OK || n > max || (n == 0 && !c->timed)) {
            if (!c->error[0])
                snprintf(c->error, sizeof c->error, "consumer %u: pop gave %s n=%zu",
                         c->id, hr_status_to_string(s), n);
            return NULL;
        }
        c->pops++;
        c->received += n;
        if (g)
            atomic_fetch_add(&g->popped, n);
        check_slice(c, out, n);
    }
}

typedef struct {
    producer prod[M_PRODUCERS];
    consumer cons[M_CONSUMERS];
    gate gate;
    hr_queue_stats st;
} model_run;

/* Runs producers and consumers on one queue. With abandon_after == 0 the
 * producers push everything, then the queue is closed with drain. Else the
 * consumers park once that many events were popped (the producers still
 * have far more than a queueful left), the queue fills up as far as the
 * pending batches allow, and it is closed without drain; then the consumers
 * are let go and see HR_ESTOPPED. */
static void run_model(model_run *m, push_mode mode, uint64_t abandon_after)
{
    memset(m, 0, sizeof *m);
    atomic_init(&m->gate.popped, 0);
    atomic_init(&m->gate.parked, 0);
    atomic_init(&m->gate.released, false);
    m->gate.threshold = abandon_after;
    hr_queue *q = make_queue(M_CAPACITY);
    pthread_t pt[M_PRODUCERS], ct[M_CONSUMERS];
    for (uint32_t i = 0; i < M_CONSUMERS; i++) {
        consumer *c = &m->cons[i];
        c->q = q;
        c->id = i;
        c->timed = i == 0;
        c->gate = abandon_after ? &m->gate : NULL;
        c->seen = calloc((size_t)M_PRODUCERS * M_EVENTS, 1);
        assert_non_null(c->seen);
        for (int p = 0; p < M_PRODUCERS; p++)
            c->last_seq[p] = -1;
        assert_int_equal(pthread_create(&ct[i], NULL, consumer_thread, c), 0);
    }
    for (uint32_t i = 0; i < M_PRODUCERS; i++) {
        producer *p = &m->prod[i];
        p->q = q;
        p->id = i;
        p->mode = mode;
        p->limit = M_EVENTS;
        assert_int_equal(pthread_create(&pt[i], NULL, producer_thread, p), 0);
    }
    if (abandon_after) {
        /* Polls; how long each step takes decides nothing. */
        while (atomic_load(&m->gate.parked) < M_CONSUMERS)
            nap(1);
        /* The queue may stop a few slots short of full (every pending batch
         * larger than the room left), but while M_MAX_BATCH slots are free
         * any pending batch fits, so it gets at least this full. */
        hr_queue_stats st;
        for (hr_queue_get_stats(q, &st); st.depth <= M_CAPACITY - M_MAX_BATCH;
             hr_queue_get_stats(q, &st))
            nap(1);
        hr_queue_close(q, false);
        atomic_store(&m->gate.released, true);
    }
    for (int i = 0; i < M_PRODUCERS; i++)
        assert_int_equal(pthread_join(pt[i], NULL), 0);
    hr_queue_close(q, true); /* no-op after close(false) */
    for (int i = 0; i < M_CONSUMERS; i++)
        assert_int_equal(pthread_join(ct[i], NULL), 0);
    hr_queue_get_stats(q, &m->st);
    hr_queue_destroy(q);

    for (int i = 0; i < M_PRODUCERS; i++)
        if (m->prod[i].error[0])
            fail_msg("%s", m->prod[i].error);
    for (int i = 0; i < M_CONSUMERS; i++)
        if (m->cons[i].error[0])
            fail_msg("%s", m->cons[i].error);
}

/* Every accepted event arrived exactly once; returns the total received. For
 * each producer the events received form a prefix of its sequence (FIFO:
 * close(false) can only discard the newest). */
static uint64_t check_exactly_once(model_run *m, bool all_pushed)
{
    uint64_t total = 0;
    for (uint32_t p = 0; p < M_PRODUCERS; p++) {
        const producer *pr = &m->prod[p];
        if (all_pushed)
            assert_int_equal(pr->pushed, M_EVENTS);
        bool gap = false;
        for (uint64_t s = 0; s < M_EVENTS; s++) {
            unsigned times = 0;
            for (int c = 0; c < M_CONSUMERS; c++)
                times += m->cons[c].seen[(size_t)p * M_EVENTS + s];
            if (times > 1 || (times == 1 && (s >= pr->pushed || gap)) ||
                (times == 0 && all_pushed))
                fail_msg("producer %u seq %llu received %u times (pushed %llu)",
                         p, (unsigned long long)s, times,
                         (unsigned long long)pr->pushed);
            if (times == 0)
                gap = true;
            total += times;
        }
    }
    uint64_t received = 0;
    for (int c = 0; c < M_CONSUMERS; c++)
        received += m->cons[c].received;
    assert_int_equal(received, total);
    return total;
}

static void free_model(model_run *m)
{
    for (int c = 0; c < M_CONSUMERS; c++)
        free(m->cons[c].seen);
}

static void check_full_run(push_mode mode)
{
    model_run *m = calloc(1, sizeof *m);
    assert_non_null(m);
    run_model(m, mode, 0);
    uint64_t total = check_exactly_once(m, true);
    assert_int_equal(total, (uint64_t)M_PRODUCERS * M_EVENTS);

    uint64_t refused = 0, refused_batches = 0;
    for (int p = 0; p < M_PRODUCERS; p++) {
        assert_int_equal(m->prod[p].last, HR_OK);
        refused += m->prod[p].refused_events;
        refused_batches += m->prod[p].refused_batches;
    }
    if (mode == PUSH_WAIT)
        assert_int_equal(refused, 0);
    assert_int_equal(m->st.accepted, total);
    assert_int_equal(m->st.popped, total);
    assert_int_equal(m->st.refused, refused);
    assert_int_equal(m->st.abandoned, 0);
    assert_int_equal(m->st.depth, 0);
    assert_int_equal(m->st.capacity, M_CAPACITY);
    print_message("  %llu events, %llu refused in %llu batches\n",
                  (unsigned long long)total, (unsigned long long)refused,
                  (unsigned long long)refused_batches);
    free_model(m);
    free(m);
}

static void test_model_retry_refused(void **state)
{
    (void)state;
    check_full_run(PUSH_RETRY);
}

static void test_model_wait(void **state)
{
    (void)state;
    check_full_run(PUSH_WAIT);
}

static void test_model_mixed(void **state)
{
    (void)state;
    check_full_run(PUSH_MIXED);
}

/* close(false) under load with a (nearly) full queue: producers (waiting or
 * retrying) are stopped, what was queued is abandoned, each producer's
 * received events are a prefix of what it pushed, and accepted == popped +
 * abandoned. */
static void test_model_abandon(void **state)
{
    (void)state;
    model_run *m = calloc(1, sizeof *m);
    assert_non_null(m);
    /* Parks well before any producer could be done: at most the threshold, a
     * pop per consumer and a queueful can be accepted by then. */
    run_model(m, PUSH_MIXED, M_EVENTS / 4);
    uint64_t total = check_exactly_once(m, false);

    uint64_t pushed = 0, refused = 0;
    for (int p = 0; p < M_PRODUCERS; p++) {
        const producer *pr = &m->prod[p];
        assert_int_equal(pr->last, HR_ESTOPPED); /* none could finish */
        assert_true(pr->pushed < M_EVENTS);
        pushed += pr->pushed;
        refused += pr->refused_events;
    }
    assert_int_equal(m->st.accepted, pushed);
    assert_int_equal(m->st.popped, total);
    assert_int_equal(m->st.accepted, m->st.popped + m->st.abandoned);
    assert_true(m->st.abandoned > M_CAPACITY - M_MAX_BATCH);
    assert_true(m->st.abandoned <= M_CAPACITY);
    assert_true(m->st.popped >= M_EVENTS / 4);
    assert_int_equal(m->st.refused, refused);
    assert_int_equal(m->st.depth, 0);
    print_message("  %llu accepted, %llu popped, %llu abandoned\n",
                  (unsigned long long)m->st.accepted,
                  (unsigned long long)m->st.popped,
                  (unsigned long long)m->st.abandoned);
    free_model(m);
    free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_and_args),
        cmocka_unit_test(test_fifo_wraparound),
        cmocka_unit_test(test_all_or_nothing),
        cmocka_unit_test(test_close_drain),
        cmocka_unit_test(test_close_abandon),
        cmocka_unit_test(test_close_drain_then_abandon),
        cmocka_unit_test(test_pop_timed),
        cmocka_unit_test(test_blocked_pusher_released_by_pop),
        cmocka_unit_test(test_blocked_pusher_released_by_close),
        cmocka_unit_test(test_blocked_pusher_waits_for_low_water),
        cmocka_unit_test(test_blocked_pushers_hand_off),
        cmocka_unit_test(test_blocked_consumers_released_by_close),
        cmocka_unit_test(test_wait_empty),
        cmocka_unit_test(test_model_retry_refused),
        cmocka_unit_test(test_model_wait),
        cmocka_unit_test(test_model_mixed),
        cmocka_unit_test(test_model_abandon),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

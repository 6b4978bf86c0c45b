/*
 * test_watermark.c - the applied watermark: the module (monotonic publish,
 * waits that end at the target, the deadline, or a cancel and wake) and
 * the trainer pool's watermark (every seq up to it applied, with batches
 * finishing out of order on several trainer threads; events without a seq
 * do not hold it back; a pool started on a used queue).
 *
 * Threads that wait are observed through hr_watermark_waiters, so no
 * verdict depends on timing; failures in threads are counted and asserted
 * on the main thread.
 */
/* ctest-labels: concurrent */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hogrec/ingest.h"
#include "hogrec/trainer.h"
#include "hogrec/watermark.h"
#include "testutil.h"

#define HOUR_NS (3600ull * 1000000000ull)

/* Waits (bounded) until n threads sleep in hr_watermark_wait on w. */
static void await_waiters(hr_watermark *w, unsigned n)
{
    for (int i = 0; i < 60000 && hr_watermark_waiters(w) != n; i++)
        usleep(1000);
    assert_int_equal(hr_watermark_waiters(w), n);
}

/* ---- the module ---- */

static void test_publish_is_monotonic(void **state)
{
    (void)state;
    hr_watermark *w = NULL;
    assert_int_equal(hr_watermark_create(&w), HR_OK);
    assert_int_equal(hr_watermark_get(w), 0);
    assert_int_equal(hr_watermark_publish(w, 5), 5);
    assert_int_equal(hr_watermark_publish(w, 3), 5); /* never goes back */
    assert_int_equal(hr_watermark_get(w), 5);
    assert_int_equal(hr_watermark_publish(w, 9), 9);
    assert_int_equal(hr_watermark_get(w), 9);
    hr_watermark_destroy(w);
    hr_watermark_destroy(NULL);
}

static void test_wait_reached_or_deadline(void **state)
{
    (void)state;
    hr_watermark *w = NULL;
    assert_int_equal(hr_watermark_create(&w), HR_OK);
    hr_watermark_publish(w, 5);
    uint64_t v = 0;
    /* Reached: true even with a deadline in the past. */
    assert_true(hr_watermark_wait(w, 5, 0, NULL, &v));
    assert_int_equal(v, 5);
    assert_true(hr_watermark_wait(w, 0, 0, NULL, NULL));
    /* Not reached: false at the deadline, with the value seen. */
    v = 0;
    assert_false(hr_watermark_wait(w, 6, hr_now_ns() + 20000000u, NULL, &v));
    assert_int_equal(v, 5);
    assert_false(hr_watermark_wait(w, 6, 0, NULL, &v));
    assert_int_equal(hr_watermark_waiters(w), 0);
    hr_watermark_destroy(w);
}

typedef struct {
    hr_watermark *w;
    uint64_t target;
    atomic_bool *cancel;
    bool reached;
    uint64_t value;
} waiter;

static void *wait_thread(void *arg)
{
    waiter *a = arg;
    a->reached = hr_watermark_wait(a->w, a->target, hr_now_ns() + HOUR_NS, a->cancel, &a->value);
    return NULL;
}

static void test_wait_woken_by_publish(void **state)
{
    (void)state;
    hr_watermark *w = NULL;
    assert_int_equal(hr_watermark_create(&w), HR_OK);
    waiter a = {w, 7, NULL, false, 0}, b = {w, 9, NULL, false, 0};
    pthread_t ta, tb;
    assert_int_equal(pthread_create(&ta, NULL, wait_thread, &a), 0);
    assert_int_equal(pthread_create(&tb, NULL, wait_thread, &b), 0);
    await_waiters(w, 2);
    hr_watermark_publish(w, 6); /* wakes both, neither is done */
    hr_watermark_publish(w, 7);
    pthread_join(ta, NULL);
    assert_true(a.reached);
    assert_true(a.value >= 7);
    await_waiters(w, 1); /* b goes on waiting */
    hr_watermark_publish(w, 10);
    pthread_join(tb, NULL);
    assert_true(b.reached);
    assert_int_equal(b.value, 10);
    hr_watermark_destroy(w);
}

static void test_wait_cancelled(void **state)
{
    (void)state;
    hr_watermark *w = NULL;
    assert_int_equal(hr_watermark_create(&w), HR_OK);
    atomic_bool cancel = false;
    waiter a = {w, 1, &cancel, true, 99};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, wait_thread, &a), 0);
    await_waiters(w, 1);
    atomic_store(&cancel, true);
    hr_watermark_wake(w); /* without it the wait would last an hour */
    pthread_join(t, NULL);
    assert_false(a.reached);
    assert_int_equal(a.value, 0);
    /* A cancelled waiter does not wait at all. */
    assert_false(hr_watermark_wait(w, 1, hr_now_ns() + HOUR_NS, &cancel, NULL));
    hr_watermark_destroy(w);
}

/* ---- the trainer pool's watermark ---- */

typedef struct {
    hr_model *model;
    hr_queue *queue;
    hr_schedbox *sched;
    hr_progress *progress;
    hr_trainer *trainer;
    hr_ingest *ing;
} rig;

static void rig_start_trainer(rig *r, unsigned threads, unsigned batch)
{
    hr_trainer_config tc = {.threads = threads, .batch = batch, .neg_mode = HR_NEG_OFF, .seed = 1};
    assert_int_equal(
        hr_trainer_start(r->model, r->queue, r->sched, r->progress, &tc, &r->trainer), HR_OK);
    assert_int_equal(hr_ingest_create(r->queue, r->trainer, NULL, &r->ing), HR_OK);
}

static void fill(hr_event *ev, size_t n, unsigned tag);

/* prepopped: events pushed to and popped from the queue before the pool
 * starts (its counts do not start at 0). */
static void rig_open(rig *r, unsigned threads, unsigned batch, size_t prepopped)
{
    memset(r, 0, sizeof *r);
    r->model = tu_small_model(64, 64);
    assert_int_equal(hr_queue_create(1 << 14, &r->queue), HR_OK);
    if (prepopped) {
        hr_event ev[8];
        size_t got = 0;
        assert_true(prepopped <= 8);
        fill(ev, prepopped, 9);
        assert_int_equal(hr_queue_push(r->queue, ev, prepopped, false), HR_OK);
        assert_int_equal(hr_queue_pop(r->queue, ev, 8, &got), HR_OK);
        assert_int_equal(got, prepopped);
    }
    hr_schedule s;
    hr_schedule_defaults(&s);
    assert_int_equal(hr_schedbox_create(&s, &r->sched, NULL), HR_OK);
    assert_int_equal(hr_progress_create(1000, 0, &r->progress), HR_OK);
    rig_start_trainer(r, threads, batch);
}

static void rig_close(rig *r)
{
    hr_ingest_destroy(r->ing);
    hr_trainer_destroy(r->trainer);
    hr_progress_destroy(r->progress);
    hr_schedbox_destroy(r->sched);
    hr_queue_destroy(r->queue);
    hr_model_destroy(r->model);
}

static void fill(hr_event *ev, size_t n, unsigned tag)
{
    memset(ev, 0, n * sizeof *ev);
    for (size_t i = 0; i < n; i++) {
        ev[i].user = 1 + (uint32_t)((tag + i) % 32);
        ev[i].item = 1 + (uint32_t)((tag * 7 + i) % 32);
        ev[i].label = (float)((tag + i) % 2);
        ev[i].weight = 1;
    }
}

static uint64_t submit(rig *r, size_t n, unsigned tag)
{
    hr_event ev[8];
    assert_true(n <= 8);
    fill(ev, n, tag);
    uint64_t first = 0;
    hr_error e = {{0}, {0}};
    assert_int_equal(hr_ingest_submit(r->ing, ev, NULL, NULL, n, true, &first, &e), HR_OK);
    return first + n - 1;
}

static uint64_t trained(rig *r)
{
    hr_trainer_counts c;
    hr_trainer_get_counts(r->trainer, &c);
    return c.trained;
}

static void test_trainer_watermark_paused_and_idle(void **state)
{
    (void)state;
    rig r;
    rig_open(&r, 2, 4, 0);
    hr_watermark *w = hr_trainer_applied(r.trainer);
    uint64_t s1 = submit(&r, 5, 1);
    hr_trainer_wait_idle(r.trainer);
    assert_int_equal(hr_watermark_get(w), s1); /* idle: the last seq pushed */

    hr_trainer_pause(r.trainer);
    uint64_t s2 = submit(&r, 3, 2);
    assert_false(hr_watermark_wait(w, s2, hr_now_ns() + 20000000u, NULL, NULL));
    assert_int_equal(hr_watermark_get(w), s1); /* queued, not applied */
    hr_trainer_resume(r.trainer);
    assert_true(hr_watermark_wait(w, s2, hr_now_ns() + HOUR_NS, NULL, NULL));
    assert_true(trained(&r) >= s2);

    /* Events without a seq (replay command, benchmarks) hold nothing back. */
    hr_event ev[4];
    fill(ev, 4, 3);
    assert_int_equal(hr_queue_push(r.queue, ev, 4, true), HR_OK);
    uint64_t s3 = submit(&r, 2, 4);
    hr_trainer_wait_idle(r.trainer);
    assert_int_equal(hr_watermark_get(w), s3);

    rig_close(&r);

    /* A pool started on a queue something popped from before. */
    rig_open(&r, 2, 4, 3);
    uint64_t s4 = submit(&r, 6, 5);
    /* (Bounded: a pool that miscounted would never advance.) */
    assert_true(hr_watermark_wait(hr_trainer_applied(r.trainer), s4,
                                  hr_now_ns() + 60 * 1000000000ull, NULL, NULL));
    rig_close(&r);
}

#define POSTERS 3
#define POSTS 400

typedef struct {
    rig *r;
    unsigned id;
    atomic_uint *failures;
} poster;

/* Submits POSTS batches of 1..4 events; after each, waits for its last
 * seq to be applied and checks that at least that many events were trained
 * (seqs start at 1, one per event). */
static void *post_and_check(void *arg)
{
    poster *p = arg;
    for (unsigned i = 0; i < POSTS; i++) {
        size_t n = 1 + (p->id + i) % 4;
        hr_event ev[4];
        fill(ev, n, p->id * 1000 + i);
        uint64_t first = 0;
        hr_error e = {{0}, {0}};
        if (hr_ingest_submit(p->r->ing, ev, NULL, NULL, n, true, &first, &e) != HR_OK) {
            atomic_fetch_add(p->failures, 1);
            return NULL;
        }
        uint64_t last = first + n - 1;
        if (!hr_watermark_wait(hr_trainer_applied(p->r->trainer), last, hr_now_ns() + HOUR_NS,
                               NULL, NULL) ||
            trained(p->r) < last)
            atomic_fetch_add(p->failures, 1);
    }
    return NULL;
}

typedef struct {
    rig *r;
    atomic_bool stop;
    atomic_uint failures;
    uint64_t checks;
} checker;

/* Reads the watermark, then the trained count: never fewer than it. */
static void *check_loop(void *arg)
{
    checker *c = arg;
    hr_watermark *w = hr_trainer_applied(c->r->trainer);
    while (!atomic_load(&c->stop) && c->checks < 100000000u) {
        uint64_t v = hr_watermark_get(w);
        if (trained(c->r) < v)
            atomic_fetch_add(&c->failures, 1);
        c->checks++;
    }
    return NULL;
}

static void test_trainer_watermark_concurrent(void **state)
{
    (void)state;
    rig r;
    /* Several workers and small batches: batches finish out of order. */
    rig_open(&r, 4, 3, 0);
    atomic_uint failures = 0;
    poster p[POSTERS];
    pthread_t tp[POSTERS], tc;
    checker c = {.r = &r};
    atomic_init(&c.stop, false);
    atomic_init(&c.failures, 0);
    assert_int_equal(pthread_create(&tc, NULL, check_loop, &c), 0);
    for (unsigned i = 0; i < POSTERS; i++) {
        p[i] = (poster){&r, i, &failures};
        assert_int_equal(pthread_create(&tp[i], NULL, post_and_check, &p[i]), 0);
    }
    for (unsigned i = 0; i < POSTERS; i++)
        pthread_join(tp[i], NULL);
    atomic_store(&c.stop, true);
    pthread_join(tc, NULL);
    assert_int_equal(atomic_load(&failures), 0);
    assert_int_equal(atomic_load(&c.failures), 0);
    assert_true(c.checks > 0);
    hr_trainer_wait_idle(r.trainer);
    assert_int_equal(hr_watermark_get(hr_trainer_applied(r.trainer)), hr_ingest_last_seq(r.ing));
    assert_int_equal(trained(&r), hr_ingest_last_seq(r.ing));
    rig_close(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_publish_is_monotonic),
        cmocka_unit_test(test_wait_reached_or_deadline),
        cmocka_unit_test(test_wait_woken_by_publish),
        cmocka_unit_test(test_wait_cancelled),
        cmocka_unit_test(test_trainer_watermark_paused_and_idle),
        cmocka_unit_test(test_trainer_watermark_concurrent),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * queue.c - the bounded multi-producer multi-consumer queue of hr_event
 * between the producers and the trainer threads (see queue.h).
 *
 * Design: a ring buffer of `capacity` hr_event slots under one mutex. Every
 * call takes the lock once per batch and moves the batch event by event,
 * each event's used bytes only (the fixed fields and its nctx context
 * features: 48 bytes of 176 for an event without context, one cache line
 * in and out instead of three; the slots' other ctx entries are left as
 * they are), so batching amortizes the lock. Three
 * condition variables: not_empty (consumers), not_full (pushers in wait
 * mode) and empty (hr_queue_wait_empty). All of them use CLOCK_MONOTONIC so
 * that hr_queue_pop_timed is immune to wall-clock jumps.
 *
 * Wake-ups: waiters are counted and a condition is signalled only when
 * someone waits on it. A push signals one consumer; a consumer that leaves
 * events behind signals the next waiting one (baton passing), so a big batch
 * wakes as many consumers as it feeds and no more. Space freed by a pop
 * wakes the waiting pushers (a broadcast: their batches differ in size)
 * only with hysteresis: once the batch of the pusher whose turn it is fits
 * and the queue is at or below its low-water mark (half the capacity).
 * Under a producer faster than the trainers that is one wake-up per half
 * a queue of events, not one per pop (each a futex call and a switch to
 * the producer), and the trainers still find the queue at least half full.
 * No wake-up is lost: the pusher whose turn it is records its batch size
 * (head_need) under the lock before each wait, so a pop that frees enough
 * room sees it; while that record is stale (the turn has just passed) the
 * next pusher already has a wake-up pending from the admission that
 * passed the turn. Pops reach the mark as long as consumers pop, an empty
 * queue is below it, and close wakes everyone.
 *
 * Waiting pushers are served in arrival order (a ticket), so a big batch is
 * not starved by smaller batches that keep fitting first; the price is that
 * a small waiting batch may queue behind a big one. A push with wait=false
 * never waits: it is admitted whenever its batch fits now, else refused.
 *
 * Invariant (under the lock): accepted == popped + abandoned + count.
 *
 * Threads: producers (HTTP handlers, replay) push, trainer threads pop, the
 * shutdown path closes and waits, the stats endpoint reads the counters.
 */
#include "hogrec/queue.h"

#include <assert.h>
#include <stddef.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct hr_queue {
    pthread_mutex_t mu;         /* guards every field below but capacity */
    pthread_cond_t not_empty;   /* count > 0 or closed; consumers wait */
    pthread_cond_t not_full;    /* space freed, turn passed, or closed */
    pthread_cond_t empty;       /* count == 0 or closed; wait_empty waits */
    hr_event *ring;             /* capacity slots */
    size_t capacity;            /* slots in ring, >= 1; immutable */
    size_t head;                /* slot of the oldest queued event */
    size_t count;               /* events queued, <= capacity */
    bool closed;                /* no more pushes; set once, never cleared */
    unsigned pop_waiters;       /* consumers blocked on not_empty */
    unsigned push_waiters;      /* pushers blocked on not_full */
    unsigned empty_waiters;     /* callers blocked on empty */
    uint64_t next_ticket;       /* ticket the next waiting pusher takes */
    uint64_t serving;           /* ticket whose turn it is to be admitted */
    size_t head_need;           /* batch size of the waiting pusher holding
                                 * `serving`, set before each of its waits */
    uint64_t accepted;          /* events, see hr_queue_stats */
    uint64_t refused;
    uint64_t popped;
    uint64_t abandoned;
};

/* Copies n events, the used part of each (see the file comment). */
static void copy_used(hr_event *restrict dst, const hr_event *restrict src, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        memcpy(&dst[i], &src[i], offsetof(hr_event, ctx));
        size_t nctx = src[i].nctx < HR_MAX_CTX ? src[i].nctx : HR_MAX_CTX;
        if (nctx)
            memcpy(dst[i].ctx, src[i].ctx, nctx * sizeof src[i].ctx[0]);
    }
}

/* Copies n events in behind the newest. Caller holds q->mu and has checked
 * that n <= capacity - count. */
static void put(hr_queue *q, const hr_event *evs, size_t n)
{
    assert(n <= q->capacity - q->count);
    size_t tail = q->head + q->count;
    if (tail >= q->capacity)
        tail -= q->capacity;
    size_t first = q->capacity - tail;
    if (first > n)
        first = n;
    copy_used(q->ring + tail, evs, first);
    if (n > first)
        copy_used(q->ring, evs + first, n - first);
    q->count += n;
}

/* Moves min(max, count) of the oldest events to out; returns how many.
 * Caller holds q->mu. */
static size_t take(hr_queue *q, hr_event *out, size_t max)
{
    size_t n = q->count < max ? q->count : max;
    size_t first = q->capacity - q->head;
    if (first > n)
        first = n;
    copy_used(out, q->ring + q->head, first);
    if (n > first)
        copy_used(out + first, q->ring, n - first);
    q->head += n;
    if (q->head >= q->capacity)
        q->head -= q->capacity;
    q->count -= n;
    if (q->count == 0)
        q->head = 0; /* keeps later batches in one span more often */
    assert(q->head < q->capacity);
    return n;
}

#ifndef NDEBUG /* used by assert() only */
/* The invariant of the header comment. Caller holds q->mu. */
static bool counts_ok(const hr_queue *q)
{
    return q->count <= q->capacity && q->head < q->capacity &&
           q->accepted == q->popped + q->abandoned + q->count;
}
#endif

hr_status hr_queue_create(size_t capacity, hr_queue **out)
{
    if (out)
        *out = NULL;
    if (!out || capacity == 0)
        return HR_EINVAL;
    hr_queue *q = calloc(1, sizeof *q);
    if (!q)
        return HR_ENOMEM;
    q->capacity = capacity;
    q->ring = calloc(capacity, sizeof *q->ring); /* calloc checks overflow */
    if (!q->ring) {
        free(q);
        return HR_ENOMEM;
    }

    pthread_condattr_t ca;
    if (pthread_condattr_init(&ca) != 0)
        goto fail_attr;
    if (pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) != 0 ||
        pthread_mutex_init(&q->mu, NULL) != 0)
        goto fail_mu;
    if (pthread_cond_init(&q->not_empty, &ca) != 0)
        goto fail_not_empty;
    if (pthread_cond_init(&q->not_full, &ca) != 0)
        goto fail_not_full;
    if (pthread_cond_init(&q->empty, &ca) != 0)
        goto fail_empty;
    pthread_condattr_destroy(&ca);
    *out = q;
    return HR_OK;

fail_empty:
    pthread_cond_destroy(&q->not_full);
fail_not_full:
    pthread_cond_destroy(&q->not_empty);
fail_not_empty:
    pthread_mutex_destroy(&q->mu);
fail_mu:
    pthread_condattr_destroy(&ca);
fail_attr:
    free(q->ring);
    free(q);
    return HR_ENOMEM;
}

void hr_queue_destroy(hr_queue *q)
{
    if (!q)
        return;
    pthread_cond_destroy(&q->empty);
    pthread_cond_destroy(&q->not_full);
    pthread_cond_destroy(&q->not_empty);
    pthread_mutex_destroy(&q->mu);
    free(q->ring);
    free(q);
}

/* Events are copied; evs stays the caller's. A refused batch (HR_EFULL) adds
 * n to `refused`; HR_EINVAL and HR_ESTOPPED count nowhere. Waiting pushers
 * are admitted in arrival order; close wakes them with HR_ESTOPPED. */
hr_status hr_queue_push(hr_queue *q, const hr_event *evs, size_t n, bool wait)
{
    if (!q || (n > 0 && !evs) || n > q->capacity)
        return HR_EINVAL;
    if (n == 0)
        return HR_OK;

    pthread_mutex_lock(&q->mu);
    if (q->closed) {
        pthread_mutex_unlock(&q->mu);
        return HR_ESTOPPED;
    }
    bool fits = q->capacity - q->count >= n;
    if (!wait && !fits) {
        q->refused += n;
        pthread_mutex_unlock(&q->mu);
        return HR_EFULL;
    }
    if (wait && (!fits || q->push_waiters > 0)) {
        /* Wait for our turn and for room; waiters ahead of us go first. */
        uint64_t ticket = q->next_ticket++;
        q->push_waiters++;
        while (!q->closed &&
               (q->serving != ticket || q->capacity - q->count < n)) {
            if (q->serving == ticket)
                q->head_need = n; /* what a pop must free to wake us */
            pthread_cond_wait(&q->not_full, &q->mu);
        }
        q->push_waiters--;
        if (q->closed) {
            /* Tickets no longer matter: nothing is admitted after close. */
            pthread_mutex_unlock(&q->mu);
            return HR_ESTOPPED;
        }
        q->serving++;
    }
    put(q, evs, n);
    q->accepted += n;
    assert(counts_ok(q));
    if (q->pop_waiters > 0)
        pthread_cond_signal(&q->not_empty);
    if (wait && q->push_waiters > 0)
        pthread_cond_broadcast(&q->not_full); /* the next turn may fit now */
    pthread_mutex_unlock(&q->mu);
    return HR_OK;
}

/* Whether a pop should wake the waiting pushers (the hysteresis of the file
 * comment): the batch whose turn it is fits, and the queue is at or below
 * the low-water mark. Caller holds q->mu and has seen push_waiters > 0. */
static bool wake_pushers(const hr_queue *q)
{
    return q->capacity - q->count >= q->head_need && q->count <= q->capacity / 2;
}

/* Shared body of pop and pop_timed; timeout_ms < 0 waits without limit. */
static hr_status pop_common(hr_queue *q, hr_event *out, size_t max, size_t *n,
                            int timeout_ms)
{
    if (n)
        *n = 0;
    if (!q || !out || !n || max == 0)
        return HR_EINVAL;

    pthread_mutex_lock(&q->mu);
    bool have_deadline = false;
    struct timespec deadline = {0, 0};
    while (q->count == 0 && !q->closed) {
        if (timeout_ms == 0)
            break;
        if (timeout_ms > 0 && !have_deadline) {
            deadline = hr_deadline_after(timeout_ms * 1e-3);
            have_deadline = true;
        }
        q->pop_waiters++;
        int rc = have_deadline
                     ? pthread_cond_timedwait(&q->not_empty, &q->mu, &deadline)
                     : pthread_cond_wait(&q->not_empty, &q->mu);
        q->pop_waiters--;
        if (rc == ETIMEDOUT)
            break; /* events that came with the timeout are still taken */
    }
    if (q->count == 0) {
        hr_status st = q->closed ? HR_ESTOPPED : HR_OK;
        pthread_mutex_unlock(&q->mu);
        return st;
    }
    size_t got = take(q, out, max);
    q->popped += got;
    assert(got >= 1 && counts_ok(q));
    if (q->count > 0 && q->pop_waiters > 0)
        pthread_cond_signal(&q->not_empty); /* pass the baton */
    if (q->push_waiters > 0 && wake_pushers(q))
        pthread_cond_broadcast(&q->not_full);
    if (q->count == 0 && q->empty_waiters > 0)
        pthread_cond_broadcast(&q->empty);
    pthread_mutex_unlock(&q->mu);
    *n = got;
    return HR_OK;
}

/* out (max slots, max >= 1) is the caller's. HR_EINVAL on NULL or max == 0. */
hr_status hr_queue_pop(hr_queue *q, hr_event *out, size_t max, size_t *n)
{
    return pop_common(q, out, max, n, -1);
}

/* timeout_ms == 0 does not wait; timeout_ms < 0 waits like hr_queue_pop.
 * The timeout is measured on CLOCK_MONOTONIC. */
hr_status hr_queue_pop_timed(hr_queue *q, hr_event *out, size_t max, size_t *n,
                             int timeout_ms)
{
    return pop_common(q, out, max, n, timeout_ms);
}

/* close(false) after close(true) still discards what is left, so a shutdown
 * may drain first and give up later; close(true) after close(false) changes
 * nothing. Wakes every waiter. */
void hr_queue_close(hr_queue *q, bool drain)
{
    if (!q)
        return;
    pthread_mutex_lock(&q->mu);
    q->closed = true;
    if (!drain && q->count > 0) {
        q->abandoned += q->count;
        q->count = 0;
        q->head = 0;
    }
    assert(counts_ok(q));
    pthread_cond_broadcast(&q->not_empty);
    pthread_cond_broadcast(&q->not_full);
    pthread_cond_broadcast(&q->empty);
    pthread_mutex_unlock(&q->mu);
}

/* "Empty" means every queued event was handed to a consumer, not that the
 * consumers have finished with them. */
void hr_queue_wait_empty(hr_queue *q)
{
    if (!q)
        return;
    pthread_mutex_lock(&q->mu);
    while (q->count > 0 && !q->closed) {
        q->empty_waiters++;
        pthread_cond_wait(&q->empty, &q->mu);
        q->empty_waiters--;
    }
    pthread_mutex_unlock(&q->mu);
}

void hr_queue_get_stats(hr_queue *q, hr_queue_stats *out)
{
    if (!out)
        return;
    memset(out, 0, sizeof *out);
    if (!q)
        return;
    pthread_mutex_lock(&q->mu);
    out->accepted = q->accepted;
    out->refused = q->refused;
    out->popped = q->popped;
    out->abandoned = q->abandoned;
    out->depth = q->count;
    out->capacity = q->capacity;
    pthread_mutex_unlock(&q->mu);
}

/*
 * watermark.c - a monotonic applied position with waits (see watermark.h).
 *
 * The value is an atomic, raised with a compare-and-swap loop so that
 * publishers need no lock; the mutex only orders a raise against a waiter
 * that is about to sleep: a publisher that raised the value takes the mutex
 * before broadcasting, so a waiter that checked the value under the mutex
 * and then sleeps is woken. Called by publishers once per batch, so the
 * mutex and the broadcast are not on any per-event path.
 *
 * Threads: any.
 */
#include "hogrec/watermark.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

struct hr_watermark {
    _Atomic uint64_t value; /* the position; only raised */
    pthread_mutex_t mu;     /* orders raises against waiters going to sleep */
    pthread_cond_t cv;      /* broadcast when value rises or on wake (CLOCK_MONOTONIC) */
    unsigned waiters;       /* threads inside hr_watermark_wait's sleep; under mu */
};

hr_status hr_watermark_create(hr_watermark **out)
{
    *out = NULL;
    hr_watermark *w = calloc(1, sizeof *w);
    if (!w)
        return HR_ENOMEM;
    atomic_init(&w->value, 0);
    pthread_condattr_t ca;
    if (pthread_condattr_init(&ca) != 0) {
        free(w);
        return HR_ENOMEM;
    }
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    if (pthread_mutex_init(&w->mu, NULL) != 0) {
        pthread_condattr_destroy(&ca);
        free(w);
        return HR_ENOMEM;
    }
    if (pthread_cond_init(&w->cv, &ca) != 0) {
        pthread_condattr_destroy(&ca);
        pthread_mutex_destroy(&w->mu);
        free(w);
        return HR_ENOMEM;
    }
    pthread_condattr_destroy(&ca);
    *out = w;
    return HR_OK;
}

void hr_watermark_destroy(hr_watermark *w)
{
    if (!w)
        return;
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    free(w);
}

uint64_t hr_watermark_publish(hr_watermark *w, uint64_t v)
{
    uint64_t cur = atomic_load_explicit(&w->value, memory_order_relaxed);
    while (cur < v) {
        if (atomic_compare_exchange_weak_explicit(&w->value, &cur, v, memory_order_release,
                                                  memory_order_relaxed)) {
            pthread_mutex_lock(&w->mu);
            pthread_cond_broadcast(&w->cv);
            pthread_mutex_unlock(&w->mu);
            return v;
        }
    }
    return cur;
}

uint64_t hr_watermark_get(const hr_watermark *w)
{
    return atomic_load_explicit(&((hr_watermark *)w)->value, memory_order_acquire);
}

bool hr_watermark_wait(hr_watermark *w, uint64_t target, uint64_t deadline_ns,
                       const atomic_bool *cancel, uint64_t *value)
{
    uint64_t v = hr_watermark_get(w);
    if (v < target && hr_now_ns() < deadline_ns) {
        struct timespec ts = {(time_t)(deadline_ns / 1000000000u),
                              (long)(deadline_ns % 1000000000u)};
        pthread_mutex_lock(&w->mu);
        w->waiters++;
        while ((v = hr_watermark_get(w)) < target && !(cancel && atomic_load(cancel)))
            if (pthread_cond_timedwait(&w->cv, &w->mu, &ts) == ETIMEDOUT) {
                v = hr_watermark_get(w);
                break;
            }
        w->waiters--;
        pthread_mutex_unlock(&w->mu);
    }
    if (value)
        *value = v;
    return v >= target;
}

unsigned hr_watermark_waiters(hr_watermark *w)
{
    pthread_mutex_lock(&w->mu);
    unsigned n = w->waiters;
    pthread_mutex_unlock(&w->mu);
    return n;
}

void hr_watermark_wake(hr_watermark *w)
{
    pthread_mutex_lock(&w->mu);
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

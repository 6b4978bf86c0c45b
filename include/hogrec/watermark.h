/*
 * watermark.h - a node's applied position: a monotonic uint64 that one
 * module publishes and others read or wait on. In standalone mode the
 * trainer pool publishes the highest seq such that every event with a seq
 * up to it has been applied to the model (see trainer.h); read-your-writes
 * queries (min_seq on predict and recommend) wait on it with a deadline.
 *
 * Design: the value is an atomic (hr_watermark_get is one load); publishing
 * keeps the maximum and, only when the value advanced, broadcasts one
 * condvar (publishers call it once per batch, not per event). Waiters sleep
 * on that condvar (CLOCK_MONOTONIC) until the value reaches their target,
 * their deadline passes, or their cancel flag is set and hr_watermark_wake
 * is called (a server stopping ends the waits at once).
 *
 * Threads: any; publish from any number of threads.
 */
#ifndef HOGREC_WATERMARK_H
#define HOGREC_WATERMARK_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "hogrec/common.h"

typedef struct hr_watermark hr_watermark;

/* A watermark at 0. *out is new; free with hr_watermark_destroy. */
hr_status hr_watermark_create(hr_watermark **out);

/* Frees it. NULL is a no-op. No thread may be inside another call. */
void hr_watermark_destroy(hr_watermark *w);

/* Raises the value to v if v is above it (a lower v is ignored: the value
 * never goes back) and then wakes the waiters. Returns the value after. */
uint64_t hr_watermark_publish(hr_watermark *w, uint64_t v);

/* The value now. */
uint64_t hr_watermark_get(const hr_watermark *w);

/* Waits until the value is >= target, the monotonic time deadline_ns
 * (hr_now_ns() scale) passes, or *cancel (may be NULL) is true when the
 * waiter is woken (check on entry and on each hr_watermark_wake). Returns
 * whether the value reached target; *value (may be NULL) receives the value
 * seen last. Never waits when the target is already reached. */
bool hr_watermark_wait(hr_watermark *w, uint64_t target, uint64_t deadline_ns,
                       const atomic_bool *cancel, uint64_t *value);

/* Threads waiting now (inside hr_watermark_wait, target not reached). */
unsigned hr_watermark_waiters(hr_watermark *w);

/* Wakes every waiter so it re-checks its cancel flag: set the flag first. */
void hr_watermark_wake(hr_watermark *w);

#endif

/*
 * queue.h - bounded multi-producer multi-consumer queue of hr_event, between
 * the producers (HTTP handlers, replay) and the trainer threads.
 *
 * Admission is all or nothing per batch: a batch enters whole or is refused
 * (HR_EFULL) and nothing of it is queued, so a client can resend it whole.
 * Consumers pop in batches to amortize synchronization.
 *
 * Closing: hr_queue_close(q, drain=true) refuses new pushes and lets the
 * consumers pop what is left, then they see HR_ESTOPPED; drain=false also
 * discards what is left (counted as abandoned).
 *
 * Thread-safe: every function may be called from any thread.
 */
#ifndef HOGREC_QUEUE_H
#define HOGREC_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hogrec/common.h"
#include "hogrec/event.h"

typedef struct hr_queue hr_queue;

typedef struct {
    uint64_t accepted;  /* events admitted by push */
    uint64_t refused;   /* events refused because the batch did not fit */
    uint64_t popped;    /* events handed to consumers */
    uint64_t abandoned; /* events discarded by close(drain=false) */
    uint64_t depth;     /* events in the queue now */
    uint64_t capacity;  /* most events the queue holds */
} hr_queue_stats;

/* capacity >= 1. *out is new; free with hr_queue_destroy. */
hr_status hr_queue_create(size_t capacity, hr_queue **out);

/* Frees the queue. NULL is a no-op. No thread may be inside another call. */
void hr_queue_destroy(hr_queue *q);

/* Pushes n events (copied) all or nothing. If wait is false and the whole
 * batch does not fit now: HR_EFULL, nothing queued, n counted as refused.
 * If wait is true it blocks until the batch fits. HR_EINVAL if n > capacity,
 * HR_ESTOPPED after close. n == 0 is HR_OK. */
hr_status hr_queue_push(hr_queue *q, const hr_event *evs, size_t n, bool wait);

/* Pops up to max events into out, blocking until at least one is there.
 * *n receives the count. Returns HR_ESTOPPED (with *n = 0) once the queue is
 * closed and (drained or abandoned). */
hr_status hr_queue_pop(hr_queue *q, hr_event *out, size_t max, size_t *n);

/* Like hr_queue_pop but waits at most timeout_ms; *n = 0 and HR_OK on timeout. */
hr_status hr_queue_pop_timed(hr_queue *q, hr_event *out, size_t max, size_t *n,
                             int timeout_ms);

/* Closes the queue (idempotent). See the file comment for drain. */
void hr_queue_close(hr_queue *q, bool drain);

/* Blocks until the queue is empty (or closed). */
void hr_queue_wait_empty(hr_queue *q);

/* A consistent snapshot of the counters. */
void hr_queue_get_stats(hr_queue *q, hr_queue_stats *out);

#endif

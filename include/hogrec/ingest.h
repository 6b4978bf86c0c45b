/*
 * ingest.h - the one way events enter training: assign sequence numbers,
 * check the queue has room for the whole batch, append to the event log,
 * queue, then wait until the log has made them durable (or, split:
 * submit_nowait, then be notified).
 *
 * Under one lock: seq assignment, log append and queue push, so the queue
 * holds events in seq order (what checkpoints rely on, see trainer.h).
 * The durability wait happens outside the lock, so concurrent requests share
 * one commit (group commit).
 *
 * Threads: any (HTTP handlers, replay).
 */
#ifndef HOGREC_INGEST_H
#define HOGREC_INGEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hogrec/common.h"
#include "hogrec/evlog.h"
#include "hogrec/queue.h"
#include "hogrec/trainer.h"

typedef struct hr_ingest hr_ingest;

/* queue and trainer are borrowed; log may be NULL (no durability: the 202
 * then only promises the event is queued). The first seq handed out is
 * hr_evlog_last_seq(log) + 1 (or 1). *out is new. */
hr_status hr_ingest_create(hr_queue *queue, hr_trainer *trainer, hr_evlog *log,
                           hr_ingest **out);
void hr_ingest_destroy(hr_ingest *ing); /* NULL is a no-op */

/* Whether submit would take a batch of n events now, before anything is
 * done for them (hr_events resolves ids only for admitted batches):
 * HR_OK, HR_EIO (log failing), HR_EINVAL (n above the queue's capacity),
 * HR_EFULL (no room for n now). Room can only shrink by another push, so
 * the answer holds while the caller serializes every non-waiting submit
 * (hr_events does, under its mutex); consumers only free room. */
hr_status hr_ingest_admit(hr_ingest *ing, size_t n, hr_error *err);

/* Whether events go to an event log (the submits then take their texts). */
bool hr_ingest_has_log(const hr_ingest *ing);

/* Submits n events all or nothing. evs are stamped (seq, enq_updates,
 * enq_ns) and copied into the queue; json[i]/len[i] is the canonical JSON of
 * event i for the log (ignored without a log; may be NULL then).
 * wait_for_room: block while the queue is full (replay) instead of failing.
 * Returns HR_OK (*first_seq = seq of evs[0]), HR_EFULL (queue full; nothing
 * queued or logged), HR_EIO (log failing; nothing queued, or - if the failure
 * came at the commit - queued but not durable: err says which),
 * HR_ESTOPPED (shutting down). */
hr_status hr_ingest_submit(hr_ingest *ing, hr_event *evs, const char *const *json,
                           const size_t *len, size_t n, bool wait_for_room,
                           uint64_t *first_seq, hr_error *err);

/* The part of submit under the lock: stamps, queues and appends to the log,
 * but does not wait for the commit. Same arguments and returns as submit,
 * plus `arrived`, the wall time (seconds) logged with the events (submit
 * logs hr_wall_time()); HR_OK only means queued and appended (the HR_EIO
 * "queued but not durable" case does not arise here); the batch's last seq
 * is *first_seq + n - 1. Follow with hr_ingest_notify or hr_ingest_wait on
 * it before promising durability. */
hr_status hr_ingest_submit_nowait(hr_ingest *ing, hr_event *evs, const char *const *json,
                                  const size_t *len, size_t n, double arrived,
                                  bool wait_for_room, uint64_t *first_seq, hr_error *err);

/* hr_evlog_wait on the log; HR_OK at once without a log. */
hr_status hr_ingest_wait(hr_ingest *ing, uint64_t seq, hr_error *err);

/* hr_evlog_notify on the log (see evlog.h for when and where cb runs);
 * without a log, calls cb(arg, HR_OK, NULL) at once. */
hr_status hr_ingest_notify(hr_ingest *ing, uint64_t seq, hr_evlog_notify_fn cb, void *arg);

/* Like submit, but the events already carry seqs from the log (start-up
 * replay of the log tail): queued, not logged again. */
hr_status hr_ingest_replay(hr_ingest *ing, hr_event *evs, size_t n);

/* Highest seq handed out so far. */
uint64_t hr_ingest_last_seq(hr_ingest *ing);

#endif

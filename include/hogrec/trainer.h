/*
 * trainer.h - the pool of trainer threads: pop event batches from the queue,
 * score each event (progressive validation), sample negatives, and apply the
 * update kernel to the model's rows, Hogwild-style (no locks on rows).
 *
 * Rates come from the live schedule box, read once per batch (a swap applies
 * from the next batch; a batch is at most `batch` events). Staleness of an
 * event = the pool's update count when it is applied minus the count stamped
 * on it at enqueue (hr_trainer_updates()).
 *
 * Ordering promise used by checkpoints: producers push events to the queue in
 * increasing seq order. Then, while the pool is paused, every event with
 * seq <= hr_trainer_pause()'s result has been applied.
 *
 * The applied watermark (hr_trainer_applied) is the highest seq such that
 * every event with seq <= it has been applied (not just popped): batches
 * finish out of order, so it trails the highest seq applied while a batch
 * with lower seqs is still in flight. Events without a seq (0) do not count.
 * It advances at the end of a batch, and reaches the last seq pushed once
 * the queue is empty and no batch is in flight.
 *
 * Upkeep runs on one maintenance thread of the pool, started and stopped with
 * the trainer threads: the popularity sampler's rebuild, id expiry, and the
 * schedule history's loss_after (noted progress_window updates after a
 * change). It ticks on the monotonic clock, whether or not events arrive.
 *
 * Threads: start/stop/pause/resume from one control thread at a time; the
 * getters from any thread.
 */
#ifndef HOGREC_TRAINER_H
#define HOGREC_TRAINER_H

#include <stdbool.h>
#include <stdint.h>

#include "hogrec/common.h"
#include "hogrec/model.h"
#include "hogrec/queue.h"
#include "hogrec/schedule.h"
#include "hogrec/stats.h"
#include "hogrec/watermark.h"

typedef enum { HR_NEG_OFF, HR_NEG_ON, HR_NEG_AUTO } hr_neg_mode;

typedef struct {
    unsigned threads;    /* trainer threads, >= 1 */
    unsigned batch;      /* events popped at once, >= 1 */
    hr_neg_mode neg_mode;
    unsigned negatives;  /* sampled negatives per positive */
    double neg_alpha;    /* 0 = uniform over items, else popularity^alpha */
    uint64_t seed;       /* per-thread PRNGs derive from it */
    uint64_t progress_window; /* updates after a schedule change before its loss_after is noted */
} hr_trainer_config;

/* Counters; a snapshot from hr_trainer_get_counts. */
#define HR_TRAINER_COUNTERS(X)                                                  \
    X(trained)          /* queue events applied (negatives not counted) */     \
    X(clipped)          /* steps whose gradient was clipped */                  \
    X(skipped_nonfinite) /* steps not written: NaN/Inf */                       \
    X(negatives)        /* sampled negatives applied */                         \
    X(default_user)     /* steps through the shared default user row */         \
    X(default_item)     /* steps through the shared default item row */         \
    X(batches)          /* batches popped */

typedef struct {
#define HR_X_FIELD(name) uint64_t name;
    HR_TRAINER_COUNTERS(HR_X_FIELD)
#undef HR_X_FIELD
    uint64_t updates; /* kernel steps this run, negatives included (the workers' step counts) */
} hr_trainer_counts;

typedef struct hr_trainer hr_trainer;

hr_trainer_config hr_trainer_config_from(const hr_config *c);

/* Starts the trainer threads and the maintenance thread. model, queue,
 * schedbox and progress are borrowed and must outlive the pool. *out is new;
 * stop it, then destroy it. */
hr_status hr_trainer_start(hr_model *model, hr_queue *queue, hr_schedbox *sched,
                           hr_progress *progress, const hr_trainer_config *cfg,
                           hr_trainer **out);

/* Closes the queue (drain: train what is queued first; else abandon it),
 * joins the threads (the maintenance thread last) and fills *counts (may be
 * NULL). Idempotent. */
void hr_trainer_stop(hr_trainer *tr, bool drain, hr_trainer_counts *counts);

/* Frees the pool (stops it first, draining, if still running). NULL: no-op. */
void hr_trainer_destroy(hr_trainer *tr);

/* Parks every thread between batches; returns when all are parked, with the
 * highest seq such that every queued event with seq <= it has been applied.
 * Nests: each pause needs one resume. */
uint64_t hr_trainer_pause(hr_trainer *tr);
void hr_trainer_resume(hr_trainer *tr);

/* A tap sees every batch of queue events right after a trainer applied it
 * (on that trainer thread; evs borrowed for the call), before the trainer
 * can park: so while the pool is paused, every applied event was tapped.
 * Set or clear it (fn NULL) only while the pool is paused. */
typedef void hr_trainer_tap(void *ctx, const hr_event *evs, size_t n);
void hr_trainer_set_tap(hr_trainer *tr, hr_trainer_tap *fn, void *ctx);

/* Trains evs[0..n) on the calling thread, in order, as a trainer would
 * (current schedule, progressive points, negatives), without counting them
 * as queue events (`trained`, `batches` and the applied seq do not move;
 * the update count, which schedules read, does). Only while the caller
 * holds a pause: it borrows the first worker's state. evs borrowed. */
void hr_trainer_replay_paused(hr_trainer *tr, const hr_event *evs, size_t n);

/* Sets the update count hr_trainer_updates() returns (the schedule's clock)
 * to `total`. While paused. */
void hr_trainer_set_updates(hr_trainer *tr, uint64_t total);

/* Blocks until every event pushed so far has been applied (queue empty and
 * no batch in flight), or the pool is stopped. Sleeps on a condvar the
 * workers signal when they finish a batch (no polling). */
void hr_trainer_wait_idle(hr_trainer *tr);

/* Events applied so far (queue events; a batch counts once its last event
 * is written), without waiting; *max_seq (may be NULL) receives the highest
 * seq applied. Read under the pool's lock, so the rows those events wrote
 * are visible to the caller afterwards. When it equals the events pushed
 * so far, every one of them is applied. */
uint64_t hr_trainer_applied_count(hr_trainer *tr, uint64_t *max_seq);

/* The pool's update count (the base plus the sum over threads); stamp it on
 * events at enqueue. Schedules are functions of it. */
uint64_t hr_trainer_updates(const hr_trainer *tr);

/* Sets the count the pool started from (a restored checkpoint's), so a
 * decaying schedule goes on where it was instead of starting over. */
void hr_trainer_set_base_updates(hr_trainer *tr, uint64_t base);

void hr_trainer_get_counts(const hr_trainer *tr, hr_trainer_counts *out);

/* Staleness histogram (updates between enqueue and apply). Borrowed. */
const hr_hist *hr_trainer_staleness(const hr_trainer *tr);
/* Freshness histogram (microseconds from enqueue to applied). Borrowed. */
const hr_hist *hr_trainer_freshness(const hr_trainer *tr);

/* The applied watermark (see the file comment): borrowed, lives as long as
 * the pool. Read it, or wait on it, from any thread; the pool publishes to
 * it, and so may whoever knows more (the start-up replay: everything up to
 * the log's last seq is in the model once it is idle). */
hr_watermark *hr_trainer_applied(hr_trainer *tr);

/* Whether negative sampling is on now (auto turns it off at the first
 * explicit 0 label). */
bool hr_trainer_negatives_active(const hr_trainer *tr);

#endif

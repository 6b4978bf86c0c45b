/*
 * trials.h - counterfactual trials of learning-rate schedules on the logged
 * event stream: POST /v1/admin/trials, GET/DELETE /v1/admin/trials/{id},
 * POST /v1/admin/trials/{id}/apply.
 *
 * A trial takes up to HR_TRIALS_MAX_CANDIDATES candidate schedules and a
 * window (the last N logged events, or those logged since a wall time). On
 * a thread of its own it rebuilds the model as it was at the window's
 * start, on a private copy: the newest checkpoint at or before the start
 * (or the config's initial model when the log was never trimmed), plus the
 * logged events between it and the start trained under the current
 * schedule (the warm-up). Then, for the current schedule (the baseline)
 * and each candidate in turn, a copy of that state trains the window's
 * events in log order through a private one-thread trainer (the live
 * trainer's own code: same kernel, negatives, batch-wise rates), scoring
 * each event before learning from it. The live model, trainers and
 * schedule are never touched; the database is only read (connections of
 * the trial's own).
 *
 * Figures per run: the progressive loss (logloss, or MSE for squared
 * loss), AUC and calibration (mean prediction against mean label) over the
 * whole window, the skipped non-finite steps, and a curve: one point per
 * curve_events window events (the loss and AUC of that stretch). Runs are
 * ranked by loss (a non-finite loss ranks last); the winner is the best
 * candidate if it beats the baseline. Apply installs the winner through
 * the guard (a restore point, a history entry whose note names the trial).
 *
 * Cost: the private copy needs two models (the state at the window's
 * start and the run's copy: 2 x the live model's bytes), the events of
 * warm-up and window (sizeof(hr_event) each) and the window's progressive
 * points; a trial over memory_bytes is refused. The thread works in slices
 * of one trainer batch, in its log read as in its replays, and sleeps
 * after each in proportion to the thread CPU time the slice took, so that
 * it uses at most cpu_share of one core. The log is read in pages of a
 * batch by seq, each its own short read transaction: no read transaction
 * stays open across a pause, so the log's writers and its WAL checkpoints
 * never wait on a trial. One trial runs at a time.
 *
 * Threads: create/destroy from the main thread; start, get, cancel, apply
 * from HTTP threads (one mutex); each trial's work on its own thread.
 */
#ifndef HOGREC_TRIALS_H
#define HOGREC_TRIALS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hogrec/common.h"
#include "hogrec/config.h"
#include "hogrec/guard.h"
#include "hogrec/model.h"
#include "hogrec/schedule.h"
#include "hogrec/trainer.h"

#define HR_TRIALS_MAX_CANDIDATES 8
#define HR_TRIALS_KEPT 16 /* finished trials kept for GET (oldest forgotten) */

typedef struct {
    char db[HR_CONFIG_STR];    /* the database path; "" refuses every trial */
    const char *refuse;        /* non-NULL: why every trial is refused (static) */
    size_t memory_bytes;       /* most bytes of a trial's private copy */
    double cpu_share;          /* (0, 1]: share of one core the trial thread uses */
    uint64_t curve_events;     /* window events per curve point, >= 1 */
    hr_trainer_config trainer; /* how the copy trains (threads: one, whatever this says) */
} hr_trials_config;

typedef struct hr_trials hr_trials;

/* model (the live one: its config, ids and size are read), box (the
 * current schedule: the baseline) and guard (apply; may be NULL: the box
 * is swapped directly) are borrowed until destroy. *out is new. */
hr_status hr_trials_create(const hr_trials_config *cfg, hr_model *model, hr_schedbox *box,
                           hr_guard *guard, hr_trials **out, hr_error *err);
/* Cancels a running trial, waits for its thread, frees. NULL: no-op. */
void hr_trials_destroy(hr_trials *t);

/* The duty cycle: after each slice of work (a page of log rows read and
 * parsed, or a trainer batch replayed) the trial thread sleeps
 * cpu_seconds * (1 - cpu_share) / cpu_share, cpu_seconds being the
 * thread's CPU time (CLOCK_THREAD_CPUTIME_ID) for the slice. */
typedef enum {
    HR_TRIALS_READ,  /* a page of the event log read (no read transaction open) */
    HR_TRIALS_TRAIN, /* a batch of the warm-up or of a run trained */
} hr_trials_phase;

/* Called on the trial thread after each slice, before its pause: the
 * phase, the slice's events (rows for a read), its CPU time and the pause
 * about to be taken (seconds). For tests and diagnostics. */
typedef void hr_trials_slice_fn(void *ctx, hr_trials_phase phase, size_t events,
                                double cpu_seconds, double pause_seconds);
/* Installs fn (NULL: none) with ctx (borrowed until replaced or destroy)
 * for the trials started after the call. Thread-safe. */
void hr_trials_set_slice_hook(hr_trials *t, hr_trials_slice_fn *fn, void *ctx);

/* Starts a trial from a request body (borrowed): {"candidates": [schedule,
 * ...], "window": {"events": N} or {"since": unix seconds},
 * "curve_events": optional}. On HR_OK *out is a new JSON object (the id,
 * the window, the checkpoint, the events to replay). On error, *code (a
 * static string) and err say why:
 *   HR_EINVAL       "invalid"            the body, or a candidate (each named)
 *   HR_EUNSUPPORTED "trials_unavailable" no database, or cluster mode
 *   HR_EBUSY        "trial_running"      another trial is running
 *   HR_ENOTFOUND    "window_not_retained" the log and checkpoints cannot
 *                                        rebuild the window (err says
 *                                        what is available), or it is empty
 *   HR_EFULL        "trial_too_large"    over memory_bytes
 *   others          "unavailable"        reading the database failed */
hr_status hr_trials_start(hr_trials *t, const json_t *body, json_t **out, const char **code,
                          hr_error *err);

/* The state of trial `id` as a new JSON object (see the file comment and
 * openapi.yaml); NULL if there is no such trial. */
json_t *hr_trials_get(hr_trials *t, const char *id);

/* Cancels trial id (its thread stops at its next slice). HR_ENOTFOUND if
 * there is no such trial; a finished trial stays as it is (HR_OK). */
hr_status hr_trials_cancel(hr_trials *t, const char *id, hr_error *err);

/* Installs the winner of a finished trial through the guard, with a history
 * note naming the trial and the figures. *out: new JSON (version, the
 * schedule, the note). Errors as hr_trials_start's: HR_ENOTFOUND
 * "not_found"; HR_EBUSY "not_finished" (running, cancelled, failed),
 * "no_better_candidate" (the baseline won), "already_applied". */
hr_status hr_trials_apply(hr_trials *t, const char *id, json_t **out, const char **code,
                          hr_error *err);

#endif

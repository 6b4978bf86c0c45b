/*
 * guard.h - the undo of a schedule change, by hand or by the divergence
 * guard.
 *
 * A schedule applied through hr_guard_apply marks a restore point: with the
 * trainers paused, an in-memory copy of every row (weights, optimizer
 * state, counts) and the schedule's update count, exact at that point: the
 * rows hold every event the trainers popped and nothing else. From then on
 * every event the trainers apply is also recorded (a trainer tap). Undo =
 * pause, write the copy back (rows handed out since: their initial values),
 * put the update count back, install the previous schedule (a new history
 * version, with a note), train the recorded events again under it on the
 * calling thread, resume. Every acknowledged event is then in the model
 * exactly once: those before the restore point from the copy, those after
 * it from the replay, those still queued by the trainers afterwards.
 *
 * The watch: after a change, every `window` trained events the guard
 * compares the progressive loss (over the last progress_window events) with
 * the loss before the change, and the share of steps skipped as non-finite
 * in that window with `nonfinite`; `windows` consecutive windows over
 * (loss > before * (1 + margin), or not finite, or too many skipped steps)
 * revert the change as undo does, with the numbers in the history note.
 * After `watch` windows the change is kept and the restore point freed.
 *
 * Memory: the copy needs the rows' bytes, and the recorded events about
 * sizeof(hr_event) each. A restore point that would not fit memory_bytes
 * is not made (the change applies; undo answers that it cannot, and why);
 * one whose events outgrow it is freed (logged). The restore point lives
 * in memory only: a restart forgets it.
 *
 * Not with id expiry (expire_seconds > 0: a row reused for another id in
 * between would get the old id's values back) nor in cluster mode: there
 * hr_guard_apply installs the schedule without a restore point.
 *
 * Threads: apply, undo and status from HTTP threads (one mutex); the watch
 * on a thread of its own; the tap on trainer threads (a short lock).
 */
#ifndef HOGREC_GUARD_H
#define HOGREC_GUARD_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hogrec/common.h"
#include "hogrec/model.h"
#include "hogrec/schedule.h"
#include "hogrec/stats.h"
#include "hogrec/trainer.h"

typedef struct {
    bool watch_on;        /* run the watch (config `guard`); undo works either way */
    bool restore_points;  /* make restore points at all (off: expiry, cluster mode) */
    double margin;        /* over when loss > before * (1 + margin) */
    unsigned windows;     /* consecutive windows over that revert, >= 1 */
    unsigned watch;       /* windows watched, >= 1 */
    double nonfinite;     /* over when skipped non-finite / steps in a window > this */
    uint64_t window;      /* trained events per window, >= 1 (progress_window) */
    size_t memory_bytes;  /* most bytes of a restore point (rows + events) */
    const char *why_off;  /* when !restore_points: why, for undo's answer (static) */
} hr_guard_config;

typedef struct hr_guard hr_guard;

/* model, trainer, box and progress are borrowed until destroy; the trainer
 * must be running. Installs the tap and starts the watch thread. */
hr_status hr_guard_create(const hr_guard_config *cfg, hr_model *model, hr_trainer *trainer,
                          hr_schedbox *box, hr_progress *progress, hr_guard **out,
                          hr_error *err);
/* Stops the watch, removes the tap, frees. Before the trainer is stopped.
 * NULL is a no-op. */
void hr_guard_destroy(hr_guard *g);

/* Installs s (validated: HR_EINVAL with err) as hr_schedbox_swap does and
 * marks a restore point before it (see above; *restore, may be NULL,
 * receives whether one was made). *version (may be NULL): the new version. */
hr_status hr_guard_apply(hr_guard *g, const hr_schedule *s, uint64_t *version, bool *restore,
                         hr_error *err);

/* hr_guard_apply with a note for the history entry (borrowed for the
 * call; NULL: none), e.g. the trial that chose the schedule. */
hr_status hr_guard_apply_note(hr_guard *g, const hr_schedule *s, const char *note,
                              uint64_t *version, bool *restore, hr_error *err);

/* Undoes the last change by hand. HR_ENOTFOUND with err when there is no
 * restore point (none made, kept after the watch, freed, or undone);
 * *info (may be NULL) receives a new JSON object: the version installed,
 * the events replayed. */
hr_status hr_guard_undo(hr_guard *g, json_t **info, hr_error *err);

/* A new JSON object: the config, whether a restore point is held (its
 * version, bytes, events recorded), the windows watched, the last revert. */
json_t *hr_guard_status(hr_guard *g);

/* Reverts done so far (by the guard and by hand). */
uint64_t hr_guard_reverts(hr_guard *g);

#endif

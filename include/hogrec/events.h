/*
 * events.h - what happens to an accepted batch of events, in one place:
 * de-duplication of event ids (claim, then confirm or release), the ingest
 * submit (seq, queue, event log), and the serving state the batch changes -
 * each user's recent items (exclude_seen) and the recently-popular scores
 * (the fallback for unknown users). The HTTP handler submits through it; the
 * start-up log replay goes through it too, so the same state is rebuilt for
 * the replayed events; checkpoints save that state and a restart loads it.
 *
 * Order: a batch's ids are claimed, then under one mutex the batch is
 * submitted to ingest (which assigns its seqs) and applied to the serving
 * state, so the state takes events in seq order and `seq` (the highest seq
 * applied) is a cut: every event <= seq is in the state and no later one is
 * in the popularity scores. A checkpoint saves the cut it reads; a restart
 * loads it and applies only the replayed events after it (a user's ring also
 * skips events it already took, by its own last seq, since rings are copied
 * after the cut).
 *
 * Popularity counts positive events only (label 1; every event of a
 * squared-loss model), each weighing 1 when it arrives and halving every
 * half_life seconds (hr_history). Arrival times are the server's wall clock,
 * logged with each event, so windows and decay come out the same after a
 * replay.
 *
 * Ids: an event id is hashed (hr_events_id_hash) to 64 bits with a fixed
 * seed; the hashes are saved in checkpoints, so the function must not change.
 *
 * Threads: submit, notify and the reads from any thread; replay and load
 * from the loading thread before events are submitted; save from the
 * checkpoint thread.
 */
#ifndef HOGREC_EVENTS_H
#define HOGREC_EVENTS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hogrec/common.h"
#include "hogrec/config.h"
#include "hogrec/dedup.h"
#include "hogrec/event.h"
#include "hogrec/evlog.h"
#include "hogrec/history.h"
#include "hogrec/ingest.h"
#include "hogrec/model.h"
#include "hogrec/topk.h"

typedef struct hr_events hr_events;

typedef struct {
    uint32_t max_users, max_items; /* row bounds of the id tables (config max + 1) */
    uint32_t history_per_user;     /* ring size (0 = none) */
    double dedup_window;           /* seconds (0 = off) */
    size_t dedup_capacity;         /* ids remembered at most (32 bytes each) */
    double half_life;              /* popularity half-life, seconds (0 = no decay) */
    bool every_positive;           /* every event counts for popularity (squared loss) */
} hr_events_config;

/* From the process config. */
hr_events_config hr_events_config_from(const hr_config *c);

/* model and ingest are borrowed for the life of the module. *out is new. */
hr_status hr_events_create(const hr_events_config *c, hr_model *model, hr_ingest *ingest,
                           hr_events **out);
void hr_events_destroy(hr_events *e); /* NULL is a no-op */

/* Hash of an event's "id" value (string or integer, hr_api_id); 0 when the
 * value is not a valid id. id is borrowed. */
uint64_t hr_events_id_hash(const json_t *id);

/* A batch of valid, resolved events. The arrays are the caller's; submit
 * reorders them alike: the accepted events first, in their order (stamped
 * with their seqs), then the duplicates. */
typedef struct {
    hr_event *evs;  /* n events */
    uint64_t *ids;  /* n id hashes, 0 = no id; NULL: none has one */
    char **texts;   /* n canonical JSON texts for the log; NULL without a log */
    size_t *lens;   /* their lengths; NULL with texts */
    size_t n;
} hr_events_batch;

typedef struct {
    size_t accepted;    /* events submitted (the first `accepted` of the batch) */
    size_t duplicates;  /* events dropped: their id was seen within the window */
    uint64_t first_seq; /* seq of the first accepted event; 0 if none */
} hr_events_result;

/* A submitted batch waiting for its log commit. */
typedef struct hr_events_pending hr_events_pending;

/* Claims the batch's ids, submits the rest (all or nothing, never blocking
 * on a full queue) and applies them to the serving state. Returns what
 * hr_ingest_submit does (HR_EFULL: nothing accepted, ids released; HR_EIO,
 * HR_ESTOPPED); *res is filled in every case.
 * wait: block until the batch is durable (a failed commit releases its ids
 * and returns HR_EIO). !wait: on HR_OK with accepted > 0, *pending receives
 * a new handle that must go to hr_events_notify (else *pending is NULL). */
hr_status hr_events_submit(hr_events *e, hr_events_batch *b, bool wait, hr_events_result *res,
                           hr_events_pending **pending, hr_error *err);

/* Calls cb(arg, st, why) once the pending batch is durable or cannot be
 * (see hr_evlog_notify for the thread it runs on); a failed commit releases
 * the batch's ids first, so the client's resend is not dropped. Takes p. */
void hr_events_notify(hr_events *e, hr_events_pending *p, hr_evlog_notify_fn cb, void *arg);

/* Start-up log replay of n logged events (seqs set; ids[i] their id hashes
 * or 0; arrived[i] their arrival wall times, NaN if unknown: now): applies
 * those after the loaded cut to the serving state and the de-duplication
 * window, then queues all of them for training (hr_ingest_replay). */
hr_status hr_events_replay(hr_events *e, hr_event *evs, const uint64_t *ids,
                           const double *arrived, size_t n);

/* ---- serving reads ---- */

/* Up to max of user's recent item rows, most recent first. */
size_t hr_events_recent(hr_events *e, uint32_t user, uint32_t *out, size_t max);

/* The k most popular items now (score: decayed count), best first; see
 * hr_history_popular. */
size_t hr_events_popular(hr_events *e, uint32_t k, const hr_topk_exclude *ex, hr_topk_item *out);

/* Borrowed parts, for tests and stats. */
hr_history *hr_events_history(hr_events *e);
hr_dedup *hr_events_dedup(hr_events *e);

/* The cut: highest seq applied to the serving state (0 if none). */
uint64_t hr_events_seq(hr_events *e);

/* ---- checkpoints ---- */

/* Where hr_events_save writes (persist wires it to the store, inside the
 * checkpoint's transaction). Each function returns HR_OK or an error that
 * stops the save. */
typedef struct {
    void *ctx;
    hr_status (*header)(void *ctx, uint64_t seq, double taken, hr_error *err);
    hr_status (*history)(void *ctx, const char *user, size_t ulen, uint64_t seq,
                         const void *items, size_t bytes, hr_error *err);
    hr_status (*blob)(void *ctx, const char *kind, uint32_t part, const void *data,
                      size_t bytes, hr_error *err);
} hr_events_sink;

/* Saves the serving state: the cut (*seq receives it) and the time it is
 * taken at, the popularity scores and the event ids within the window (in
 * parts, "popularity" and "dedup"), and the rings of users whose last seq is
 * above `since` (all when since is 0). Ids are written as their keys. */
hr_status hr_events_save(hr_events *e, uint64_t since, const hr_events_sink *sink, uint64_t *seq,
                         hr_error *err);

/* Loading a saved state at start (before the log replay): begin with its
 * cut and time, then its rings (newest checkpoint of a chain first; the
 * first ring of a user wins) and its blobs, then end. Ids are interned. A
 * malformed record is HR_ECORRUPT. */
hr_status hr_events_load_begin(hr_events *e, uint64_t seq, double taken, hr_error *err);
hr_status hr_events_load_history(hr_events *e, const char *user, size_t ulen, uint64_t seq,
                                 const void *items, size_t bytes, hr_error *err);
hr_status hr_events_load_blob(hr_events *e, const char *kind, const void *data, size_t bytes,
                              hr_error *err);
void hr_events_load_end(hr_events *e);

#endif

/*
 * events.h - what happens to an accepted batch of events, in one place:
 * de-duplication of event ids (claim, then confirm or release), the ingest
 * submit (seq, queue, event log), and the serving state the batch changes -
 * each user's recent items (exclude_seen) and the recently-popular scores
 * (the fallback for unknown users). A source of events (the HTTP handler)
 * posts a batch of JSON events with one call, hr_events_post, which
 * validates, claims, admits, resolves ids, submits and applies, and counts
 * what it rejected, dropped and refused. The start-up log replay goes
 * through the module too, so the same state is rebuilt for the replayed
 * events; checkpoints save that state and a restart loads it.
 *
 * Order: a batch's event ids are claimed, then under one mutex the batch
 * is admitted (the queue has room for all of it), its user and item ids
 * are resolved (created only now: a refused batch creates none), it is
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
 * Threads: post, notify and the reads from any thread; replay and load
 * from the loading thread before events are submitted (in cluster mode:
 * the node thread, which alone feeds events); save from the checkpoint
 * thread (or the node thread, for a snapshot).
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

/* What became of a posted batch (hr_events_post). */
typedef struct {
    size_t accepted;    /* events queued (the 202's "accepted") */
    size_t rejected;    /* events invalid, each listed in errors */
    size_t duplicates;  /* events dropped: their id was seen within the window */
    size_t refused;     /* valid new events of a batch refused whole (HR_EFULL) */
    uint64_t first_seq; /* seq of the first accepted event; 0 if none */
} hr_events_outcome;

/* A submitted batch waiting for its log commit. */
typedef struct hr_events_pending hr_events_pending;

/* The one way a batch of client events enters (HTTP, and any other
 * source): each element of `events` (a JSON array, borrowed) is validated
 * (hr_api_event_parse); an invalid one is counted as rejected and
 * {"index", "field"?, "message"} is appended to `errors` (a borrowed
 * array; an element whose index `errors` already lists - a line the NDJSON
 * splitter could not parse - is counted as rejected and not looked at).
 * Then the valid events' ids are claimed (a duplicate is dropped), and
 * under the module's mutex: admission (hr_ingest_admit: all or nothing,
 * never blocking), then the user and item ids are resolved, created if new
 * (only now, so a refused batch creates none; an event whose id table is
 * full is rejected with its error, the others go on), then the submit
 * (seqs, queue, log) and the serving state.
 * Returns HR_OK (including when nothing was valid), HR_EFULL (queue full:
 * nothing accepted, ids released, out->refused events), HR_EIO (log
 * failing), HR_EINVAL (more events than the queue holds), HR_ESTOPPED,
 * HR_ENOMEM; *out is filled in every case and the counters
 * (hr_events_get_counts) count it.
 * wait: block until the batch is durable (a failed commit releases its ids
 * and returns HR_EIO). !wait: on HR_OK with accepted > 0, *pending receives
 * a new handle that must go to hr_events_notify (else *pending is NULL). */
hr_status hr_events_post(hr_events *e, const json_t *events, json_t *errors, bool wait,
                         hr_events_outcome *out, hr_events_pending **pending, hr_error *err);

/* Where hr_events_post_append hands a validated batch: n events (n >= 1),
 * their canonical texts (hr_api_event_text) and id hashes (0: none), all
 * borrowed for the call; arrived is the request's wall time. Sets
 * duplicate[i] for each event it drops as a repeated id and *appended to
 * the events it took. Returns HR_OK once they are durable where it puts
 * them, else an error (nothing acknowledged). */
typedef hr_status (*hr_events_append_fn)(void *arg, size_t n, const char *const *text,
                                         const size_t *len, const uint64_t *id_hash,
                                         double arrived, bool *duplicate, size_t *appended,
                                         hr_error *err);

/* The way a batch of client events enters when another log than this
 * node's holds them (cluster mode: the cluster's event stream, which also
 * de-duplicates ids; nothing is queued or applied here): validates
 * `events` exactly as hr_events_post does (invalid ones counted in
 * out->rejected and listed in `errors`), then hands the valid ones to
 * append(arg, ...) in ONE call (none when no event is valid). On HR_OK
 * out->accepted and out->duplicates are what append reported; otherwise
 * append's status (or HR_ENOMEM) with err, nothing accepted. The rejected
 * and duplicate counters (hr_events_get_counts) count the batch. */
hr_status hr_events_post_append(hr_events *e, const json_t *events, json_t *errors,
                                hr_events_append_fn append, void *arg, hr_events_outcome *out,
                                hr_error *err);

/* Events counted by hr_events_post since the module was created, whichever
 * source posted them. */
typedef struct {
    uint64_t rejected;   /* invalid, reported by index */
    uint64_t duplicates; /* dropped as repeated ids */
    uint64_t refused;    /* of batches refused whole because the queue was full */
} hr_events_counts;

/* A snapshot of the counters (each read atomically). */
void hr_events_get_counts(hr_events *e, hr_events_counts *out);

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

/* The serving-state half of hr_events_replay, nothing queued for
 * training: a cluster follower's path (its model comes from the leader's
 * row deltas, its recent items and popularity from the events it reads
 * itself). Same arguments and skips (seq at or below the cut); the
 * caller numbers the events above hr_events_seq. Any thread; events are
 * applied under the module's mutex. */
void hr_events_apply(hr_events *e, const hr_event *evs, const uint64_t *ids,
                     const double *arrived, size_t n);

/* ---- serving reads ---- */

/* Up to max of user's recent item rows, most recent first. */
size_t hr_events_recent(hr_events *e, uint32_t user, uint32_t *out, size_t max);

/* Most recent items kept per user (history_per_user). */
uint32_t hr_events_recent_max(const hr_events *e);

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

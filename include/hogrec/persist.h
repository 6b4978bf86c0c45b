/*
 * persist.h - the SQLite side of a running hogrec: restore at open, the
 * event log, periodic/on-demand/final checkpoints, health. Persistence knows
 * storage only: it is handed the parts it reads and writes (hr_persist_parts
 * at open, hr_persist_running at start), never the app. The start-up replay
 * of the logged events is the app's (app.c): it reads the log tail through
 * hr_persist_read_log.
 *
 * Order: open (restores the model and the schedule history) -> the trainers,
 * ingest and events start -> load_serving, read_log (the caller replays) ->
 * start (the log's thread, the periodic checkpoint thread) -> close.
 *
 * Threads: open, load_serving, read_log, start and close from the main
 * thread; hr_persist_checkpoint from an HTTP thread (admin); a background
 * thread runs periodic checkpoints; health and stats from any thread.
 */
#ifndef HOGREC_PERSIST_H
#define HOGREC_PERSIST_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "hogrec/common.h"
#include "hogrec/config.h"
#include "hogrec/events.h"
#include "hogrec/evlog.h"
#include "hogrec/ingest.h"
#include "hogrec/model.h"
#include "hogrec/schedule.h"
#include "hogrec/store.h"
#include "hogrec/trainer.h"

typedef struct hr_persist hr_persist;

/* What persistence restores into and checkpoints from, from open on. */
typedef struct {
    hr_config cfg;      /* copied at open; read: db, durability, sync_interval_ms,
                         * checkpoint_interval/events, full_every, keep_checkpoints
                         * (its schedule is not read) */
    hr_model *model;    /* borrowed until close: rows restored at open, copied by checkpoints */
    hr_schedbox *sched; /* borrowed until close: history restored at open, saved by checkpoints */
} hr_persist_parts;

/* What checkpoints also read once the app runs (hr_persist_start); each
 * borrowed until close. */
typedef struct {
    hr_trainer *trainer; /* the watermark (pause) and the update count */
    hr_ingest *ingest;   /* the last seq: is a periodic checkpoint due */
    hr_events *events;   /* the serving state saved with each checkpoint */
} hr_persist_running;

/* The start-up replay's figures, as the caller measured them; reported by
 * hr_persist_stats under "start". */
typedef struct {
    uint64_t replayed;   /* logged events replayed */
    uint64_t skipped;    /* logged events that could not be parsed */
    double seconds;      /* serving state load, replay and training them */
} hr_persist_replay;

/* Opens (creating or migrating) the database at app->cfg.db and restores the
 * last complete checkpoint into app->model (before trainers start) and the
 * schedule history into app->sched. Refuses a corrupt database with a clear
 * message. *app is copied. *log receives the event log (owned by the persist
 * object; hand it to ingest). */
hr_status hr_persist_open(const hr_persist_parts *app, hr_persist **out, hr_evlog **log,
                          hr_error *err);

/* The update count of the restored checkpoint (0 without one): the count
 * the trainers continue from (hr_trainer_set_base_updates). */
uint64_t hr_persist_restored_updates(const hr_persist *p);

/* Loads the restored checkpoint's serving state (recent items, popularity,
 * de-duplication window) into events; nothing without one. Before
 * hr_persist_read_log. events is borrowed for the call. */
hr_status hr_persist_load_serving(hr_persist *p, hr_events *events, hr_error *err);

/* Called for each event logged after the restored checkpoint, in seq order;
 * arrived is the logged arrival wall time (NaN when unknown); json/len are
 * borrowed for the call. Returning anything but HR_OK stops the read with
 * that status. */
typedef hr_status (*hr_persist_log_fn)(void *ctx, uint64_t seq, double arrived, const char *json,
                                       size_t len);

/* Reads the log tail after the restored checkpoint through fn. Before
 * hr_persist_start (the log's thread owns the log after it). */
hr_status hr_persist_read_log(hr_persist *p, hr_persist_log_fn fn, void *ctx, hr_error *err);

/* After the caller replayed the log tail and the trainers applied it: starts
 * the event log's thread and the periodic checkpoint thread. run is copied
 * (its pointers borrowed until close); replay (copied) is the start-up
 * figures for the stats. */
hr_status hr_persist_start(hr_persist *p, const hr_persist_running *run,
                           const hr_persist_replay *replay, hr_error *err);

/* Takes a checkpoint now (full or incremental as the chain says). *info
 * (may be NULL) receives a new JSON object describing it. */
hr_status hr_persist_checkpoint(hr_persist *p, json_t **info, hr_error *err);

/* The catalog's records (store.h, schema version 4): written, deleted and
 * read on the main database between checkpoints (a write waits for a
 * running checkpoint to commit). Any thread; put and delete are one
 * transaction each. n records of one kind per put (all or none). */
hr_status hr_persist_catalog_put(hr_persist *p, const char *kind, size_t n,
                                 const char *const *ids, const size_t *idlen,
                                 const char *const *records, const size_t *rlen, hr_error *err);
hr_status hr_persist_catalog_delete(hr_persist *p, const char *kind, const char *id, size_t idlen,
                                    bool *found, hr_error *err);
hr_status hr_persist_catalog_load(hr_persist *p, hr_store_catalog_fn fn, void *ctx, hr_error *err);

/* Forgets a user in both files (hr_store_forget_user): between checkpoints
 * on the main database, then on the event log through a connection of its
 * own. The caller removed the user from the model first (hr_model_forget),
 * so later checkpoints record the row as free. *deleted receives the rows
 * deleted. Any thread; takes seconds on a large database (VACUUM). */
hr_status hr_persist_forget_user(hr_persist *p, const char *id, size_t idlen, uint64_t *deleted,
                                 hr_error *err);

/* NULL when healthy, else why persistence is failing. */
const char *hr_persist_health(hr_persist *p);

/* A new JSON object: last checkpoint (id, seq, rows, seconds, time), event
 * log state, start-up figures. */
json_t *hr_persist_stats(hr_persist *p);

/* Stops the periodic thread, takes a final checkpoint (when `final` and
 * started), closes the database. NULL is a no-op. Call after the trainers
 * stopped. */
void hr_persist_close(hr_persist *p, bool final);

#endif

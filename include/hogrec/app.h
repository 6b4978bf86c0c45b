/*
 * app.h - one running hogrec: the model, queue, trainers, live schedule,
 * progressive statistics, ingest path and (optionally) persistence, built
 * from a config and torn down in the right order. The server and the replay
 * command each hold one; tests build their own.
 *
 * The struct is a set of pointers to modules, each owned by the app; the
 * modules do not see the app (persistence is handed the parts it saves and
 * restores; the app runs the start-up replay of the event log). Events
 * enter through `events` (HTTP) or `ingest` (replay command, benchmarks: no
 * serving state). Read-only after hr_app_open except `ready`.
 */
#ifndef HOGREC_APP_H
#define HOGREC_APP_H

#include <stdatomic.h>
#include <stdbool.h>

#include "hogrec/config.h"
#include "hogrec/events.h"
#include "hogrec/evlog.h"
#include "hogrec/ingest.h"
#include "hogrec/model.h"
#include "hogrec/queue.h"
#include "hogrec/schedule.h"
#include "hogrec/stats.h"
#include "hogrec/trainer.h"

struct hr_persist; /* persist.h: SQLite store, event log, checkpoints */
struct hr_dblock;  /* dblock.h: the database's owner lock */
struct hr_cluster; /* cluster.h: this node of a cluster on Redis */
struct hr_catalog; /* catalog.h: users' and items' records */
struct hr_guard;   /* guard.h: restore points and undo of schedule changes */
struct hr_trials;  /* trials.h: counterfactual trials of schedules */

typedef struct hr_app {
    hr_config cfg;              /* owned copy (its schedule JSON too) */
    hr_model *model;
    hr_queue *queue;
    hr_schedbox *sched;
    hr_progress *progress;
    hr_trainer *trainer;
    hr_ingest *ingest;
    hr_events *events;          /* accepted batches: ids, serving state, submit */
    struct hr_persist *persist; /* NULL when cfg.db is "" */
    struct hr_dblock *dblock;   /* held while persist is open; NULL without a db */
    struct hr_cluster *cluster; /* cluster mode (cfg.redis set); NULL standalone */
    struct hr_catalog *catalog; /* records of users and items (cluster mode: applied by the
                                   cluster's node thread from the event stream) */
    struct hr_guard *guard;     /* schedule changes go through it (PUT /v1/admin/schedule) */
    struct hr_trials *trials;   /* /v1/admin/trials */
    double started;             /* wall time at open */
    atomic_int ready;           /* 1 once the checkpoint and log tail are loaded */
} hr_app;

/* Builds and starts everything from cfg (copied; cfg->schedule is deep
 * copied). With persistence: takes the database's owner lock (HR_EBUSY
 * naming the holder if another process has it), opens the database, loads the last checkpoint,
 * starts the trainers and replays the log tail, then sets ready. *out is new;
 * close with hr_app_close. Same as hr_app_open_loading then
 * hr_app_finish_loading. */
hr_status hr_app_open(const hr_config *cfg, hr_app **out, hr_error *err);

/* The first half: everything up to the log replay (the last checkpoint is
 * loaded, trainers run); ready stays 0. The model can answer predictions
 * while loading; events must not be submitted until ready (their seqs would
 * interleave with the replayed ones). On error *out is NULL. */
hr_status hr_app_open_loading(const hr_config *cfg, hr_app **out, hr_error *err);

/* The second half: loads the checkpoint's serving state, replays the log
 * tail through the events module and waits until the trainers applied it,
 * starts persistence (the log's thread, periodic checkpoints), then sets
 * ready. On error the app stays not ready (close it). */
hr_status hr_app_finish_loading(hr_app *app, hr_error *err);

/* Stops the trainers (drain: train what is queued; else leave it - with
 * persistence it is still in the event log), writes a final checkpoint when
 * persistent, frees everything. NULL is a no-op. */
void hr_app_close(hr_app *app, bool drain);

/* The first half of hr_app_close: ready to 0, trainers stopped, final
 * checkpoint written, the database closed and its lock released
 * (app->persist and app->dblock NULL after it);
 * the model and the rest stay allocated for threads that may still read
 * them (requests abandoned at shutdown). hr_app_close may follow. */
void hr_app_stop(hr_app *app, bool drain);

/* NULL when ready to serve, else why not (loading, persistence failing). */
const char *hr_app_not_ready(hr_app *app);

#endif

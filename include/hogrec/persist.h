/*
 * persist.h - ties an app to its SQLite database: restore at start, the
 * event log, periodic/on-demand/final checkpoints, health.
 *
 * Threads: open/start/close from the main thread; checkpoint_now from an
 * HTTP thread (admin); a background thread runs periodic checkpoints.
 */
#ifndef HOGREC_PERSIST_H
#define HOGREC_PERSIST_H

#include <jansson.h>

#include "hogrec/app.h"

typedef struct hr_persist hr_persist;

/* Opens (creating or migrating) the database at app->cfg.db and restores the
 * last complete checkpoint into app->model (before trainers start) and the
 * schedule history. Refuses a corrupt database with a clear message.
 * *log receives the event log (owned by the persist object). */
hr_status hr_persist_open(hr_app *app, hr_persist **out, hr_evlog **log, hr_error *err);

/* After the trainers run: replays the logged events after the checkpoint
 * through app->ingest, waits until they are trained, then starts the
 * periodic checkpoint thread. */
hr_status hr_persist_start(hr_persist *p, hr_error *err);

/* Takes a checkpoint now (full or incremental as the chain says). *info
 * (may be NULL) receives a new JSON object describing it. */
hr_status hr_persist_checkpoint(hr_persist *p, json_t **info, hr_error *err);

/* NULL when healthy, else why persistence is failing. */
const char *hr_persist_health(hr_persist *p);

/* A new JSON object: last checkpoint (id, seq, rows, seconds, time), event
 * log state. */
json_t *hr_persist_stats(hr_persist *p);

/* Stops the periodic thread, takes a final checkpoint (when `final`), closes
 * the database. NULL is a no-op. Call after the trainers stopped. */
void hr_persist_close(hr_persist *p, bool final);

#endif

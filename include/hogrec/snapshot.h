/*
 * snapshot.h - a cluster node's whole model in one SQLite file, and back:
 * what GET /v1/admin/snapshot streams and what a node that cannot follow
 * the delta stream (it was trimmed past what the node applied) loads.
 *
 * The file is a checkpoint database of the store module (store.h, the
 * same schema and migrations as `--db`): one full checkpoint (every row of
 * the four tables with its id, weights and optimizer state), the schedule
 * history, the serving state (events.h, as a checkpoint holds it), and the meta (a JSON object: hr_snapshot_meta, in a one-row
 * table only snapshot files have) that says which delta the rows match. Restoring it is not a checkpoint
 * restore: the rows replace a live model's (a follower's, while queries
 * read it), ids are moved as a delta moves them, and ids the snapshot does
 * not hold are removed.
 *
 * Threads: write from the thread that keeps the model still (a cluster's
 * node thread: no training, no delta applied meanwhile; queries may
 * read); load likewise, on the model's one writer thread.
 */
#ifndef HOGREC_SNAPSHOT_H
#define HOGREC_SNAPSHOT_H

#include <stdbool.h>
#include <stdint.h>

#include "hogrec/common.h"
#include "hogrec/events.h"
#include "hogrec/model.h"
#include "hogrec/schedule.h"

#define HR_SNAPSHOT_ID_MAX 64 /* bytes of a stream id or event id kept */

/* What a snapshot's rows match. Strings are NUL-terminated. */
typedef struct {
    char delta[HR_SNAPSHOT_ID_MAX + 1];   /* the delta stream entry (last part) applied, "0-0" none */
    char covered[HR_SNAPSHOT_ID_MAX + 1]; /* the event stream entry the rows cover, "" none */
    bool started;                /* a delta was applied (else the epoch and seq mean nothing) */
    uint64_t epoch;              /* of that delta */
    uint64_t seq;                /* its number in its epoch (hr_delta_header.seq) */
    uint64_t schedule_version;   /* the live schedule's version */
    double taken;                /* wall time, epoch seconds */
} hr_snapshot_meta;

/* What a write or a load did. */
typedef struct {
    uint64_t rows;     /* rows written or loaded */
    uint64_t ids;      /* user and item ids among them */
    uint64_t removed;  /* load: ids of the model the snapshot did not hold */
    bool serving;      /* load: a serving state was loaded (events.h) */
    uint64_t bytes;    /* write: the file's size */
    double seconds;
} hr_snapshot_stats;

/* Writes model m (every row of every table; user and item rows only while
 * they hold an id), sched's history, the serving state of events (when
 * not NULL: recent items, popularity, event ids, as a checkpoint saves
 * them with hr_events_save; the caller keeps it still too) and *meta into
 * a new database at path (an absent or empty file; its -wal and -shm are
 * gone when this returns). Marks of the model are not touched. Errors
 * from the store (HR_EIO, HR_EFULL, ...) or HR_ENOMEM; the file may then
 * hold a part: remove it. st may be NULL. Borrowed: everything, for the
 * call. */
hr_status hr_snapshot_write(const char *path, hr_model *m, hr_schedbox *sched, hr_events *events,
                            const hr_snapshot_meta *meta, hr_snapshot_stats *st, hr_error *err);

/* Reads only the meta of the snapshot at path. HR_ECORRUPT when the file
 * is not a snapshot. */
hr_status hr_snapshot_read_meta(const char *path, hr_snapshot_meta *meta, hr_error *err);

/* Loads the snapshot at path into m: checks the model shape (HR_EINVAL
 * for another shape, before any write), then writes every row (an id row
 * takes its id, moving it from wherever m had it), removes the user and
 * item ids of m that the snapshot has no row for, loads the snapshot's
 * serving state into events (when not NULL and the snapshot has one,
 * st->serving: its rings replace the users' and its scores the items';
 * events' cut becomes the larger of its own and the snapshot's), and
 * installs the schedule changes newer than sched's current version. *meta receives the
 * snapshot's. HR_ECORRUPT (not a snapshot, a row of the wrong size or not
 * finite), HR_EINVAL (shape, a row beyond m's tables), store errors:
 * m may then hold part of the snapshot (load another). Leaves path's -wal
 * and -shm removed; path itself is the caller's. The model's change marks
 * are not set (a loaded row is not a change to publish). st may be NULL. */
hr_status hr_snapshot_load(const char *path, hr_model *m, hr_schedbox *sched, hr_events *events,
                           hr_snapshot_meta *meta, hr_snapshot_stats *st, hr_error *err);

/* The catalog (catalog.h) of a cluster node travels with its model:
 * hr_snapshot_write_catalog adds every record of cat to the snapshot at
 * path (written by hr_snapshot_write, before it is read or renamed: the
 * `catalog` table of the same file, one transaction per kind), and
 * hr_snapshot_load_catalog replaces cat's records with the file's (after
 * hr_snapshot_load: ids are looked up, none interned; a snapshot of an
 * older version has none, so cat ends empty; clear cat with
 * hr_catalog_clear before hr_snapshot_load moves the ids). *records (may be NULL) gets
 * how many; *unbound (load, may be NULL) those whose id the model does
 * not hold. Store errors, HR_ENOMEM. Same threads as write and load. */
struct hr_catalog;
hr_status hr_snapshot_write_catalog(const char *path, struct hr_catalog *cat, uint64_t *records,
                                    hr_error *err);
hr_status hr_snapshot_load_catalog(const char *path, struct hr_catalog *cat, uint64_t *records,
                                   uint64_t *unbound, hr_error *err);

#endif

/*
 * store.h - the one module that speaks SQLite: schema migrations, checkpoint
 * rows, the event-log table. Knows nothing of threads or the model; persist.c
 * and evlog.c decide what to write and when.
 *
 * Two kinds of database file: the main one (checkpoints, rows, schedule
 * history) and the event log (`<db>-events`). They are separate files because
 * SQLite has one writer per file: a checkpoint transaction that takes seconds
 * must not hold up the commits that acknowledge events.
 *
 * Every handle is one connection in WAL mode with prepared statements. A
 * handle is used by one thread at a time (callers serialize).
 *
 * SQLite errors map to: SQLITE_BUSY/LOCKED -> HR_EBUSY, SQLITE_FULL ->
 * HR_EFULL, SQLITE_CORRUPT/NOTADB -> HR_ECORRUPT, others -> HR_EIO; err says
 * what was being done and SQLite's message.
 */
#ifndef HOGREC_STORE_H
#define HOGREC_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hogrec/common.h"

typedef struct hr_store hr_store;

typedef enum {
    HR_STORE_MAIN, /* checkpoints */
    HR_STORE_LOG   /* event log */
} hr_store_kind;

typedef struct {
    hr_store_kind kind;
    bool sync_full;     /* synchronous=FULL (fsync every commit), else NORMAL */
    int busy_ms;        /* how long a statement waits for another writer's lock */
    int target_version; /* migrate up to this user_version; 0 = latest (tests use 1) */
    bool quick_check;   /* run PRAGMA quick_check at open (refuse if not "ok") */
} hr_store_options;

/* Opens (creating if absent) and migrates the database at path. A file that
 * is not a database or fails quick_check gives HR_ECORRUPT and is left as it
 * is. *out is new; close with hr_store_close. */
hr_status hr_store_open(const char *path, const hr_store_options *opt, hr_store **out,
                        hr_error *err);
void hr_store_close(hr_store *s); /* NULL is a no-op */

/* The latest schema version this binary knows for a kind. */
int hr_store_latest_version(hr_store_kind kind);
/* The database's user_version. */
int hr_store_user_version(hr_store *s);

/* ---- checkpoints (main database) ---- */

/* Rows are keyed by (checkpoint, table, row); tables are hr_table_id values. */
typedef struct {
    int64_t id;         /* 0 = none */
    int64_t base;       /* full checkpoint the chain starts at */
    bool full;
    uint64_t seq;       /* events covered */
    uint64_t nrows;
    uint64_t updates;
    double started;     /* epoch seconds */
    double seconds;
    char shape[256];    /* model shape JSON */
} hr_store_ckpt;

/* The latest complete checkpoint (id 0 if none). */
hr_status hr_store_ckpt_latest(hr_store *s, hr_store_ckpt *out, hr_error *err);
/* The newest complete checkpoint with seq <= max_seq and started <=
 * max_started (id 0 if none). */
hr_status hr_store_ckpt_at(hr_store *s, uint64_t max_seq, double max_started, hr_store_ckpt *out,
                           hr_error *err);
/* The complete checkpoint with the lowest seq >= min_seq (id 0 if none). */
hr_status hr_store_ckpt_from(hr_store *s, uint64_t min_seq, hr_store_ckpt *out, hr_error *err);
/* Number of complete checkpoints. */
hr_status hr_store_ckpt_count(hr_store *s, int64_t *out, hr_error *err);

/* Starts a checkpoint: BEGIN IMMEDIATE and its row (complete = 0). full:
 * base = its own id, else base = the latest complete checkpoint's base. *id
 * receives its id. */
hr_status hr_store_ckpt_begin(hr_store *s, bool full, uint64_t seq, uint64_t updates,
                              const char *shape, int64_t *id, hr_error *err);
/* Writes one row. key (klen bytes) may be NULL; data (bytes) may be empty. */
hr_status hr_store_ckpt_row(hr_store *s, int64_t id, unsigned table, uint32_t row,
                            const char *key, size_t klen, const void *data, size_t bytes,
                            hr_error *err);
/* Writes one schedule-history entry (ignored below schema version 2). */
hr_status hr_store_ckpt_schedule(hr_store *s, int64_t id, uint64_t version, double wall_time,
                                 uint64_t at_update, double loss_before, double loss_after,
                                 const char *json, hr_error *err);
/* Marks it complete, drops checkpoints no longer needed to restore the
 * newest `keep` complete ones (their chains included), COMMITs. */
hr_status hr_store_ckpt_commit(hr_store *s, int64_t id, uint64_t nrows, double seconds,
                               int keep, hr_error *err);
/* Rolls back an unfinished checkpoint (no-op if none). */
void hr_store_ckpt_abort(hr_store *s);

/* Called for each row of a chain, newest checkpoint first, each checkpoint's
 * rows in (table, row) order. key/data are borrowed for the call. Returning
 * anything but HR_OK stops the scan with that status. */
typedef hr_status (*hr_store_row_fn)(void *ctx, unsigned table, uint32_t row, const char *key,
                                     size_t klen, const void *data, size_t bytes);
/* Scans the chain ending at `last` (its full base and the increments up to
 * it). */
hr_status hr_store_chain_rows(hr_store *s, const hr_store_ckpt *last, hr_store_row_fn fn,
                              void *ctx, hr_error *err);

typedef hr_status (*hr_store_sched_fn)(void *ctx, uint64_t version, double wall_time,
                                       uint64_t at_update, double loss_before,
                                       double loss_after, const char *json);
/* Schedule history saved with a checkpoint, oldest first (none below schema
 * version 2). NAN for unknown losses. */
hr_status hr_store_schedule_rows(hr_store *s, int64_t id, hr_store_sched_fn fn, void *ctx,
                                 hr_error *err);

/* ---- serving state (main database; no-ops below schema version 3) ---- */

/* Writes the serving state's header of checkpoint id: the seq it covers and
 * the wall time its scores are as of. */
hr_status hr_store_ckpt_serving(hr_store *s, int64_t id, uint64_t seq, double taken,
                                hr_error *err);
/* Writes one user's recent items (an encoded blob, see sql/003). */
hr_status hr_store_ckpt_history(hr_store *s, int64_t id, const char *user, size_t ulen,
                                uint64_t seq, const void *items, size_t bytes, hr_error *err);
/* Writes part `part` of a whole-state blob of `kind` ("popularity", "dedup"). */
hr_status hr_store_ckpt_blob(hr_store *s, int64_t id, const char *kind, uint32_t part,
                             const void *data, size_t bytes, hr_error *err);
/* Reads checkpoint id's header; *found false when it has none. */
hr_status hr_store_serving(hr_store *s, int64_t id, bool *found, uint64_t *seq, double *taken,
                           hr_error *err);

/* Called for each user row of a chain, newest checkpoint first; arguments
 * borrowed for the call. */
typedef hr_status (*hr_store_history_fn)(void *ctx, const char *user, size_t ulen, uint64_t seq,
                                         const void *items, size_t bytes);
hr_status hr_store_chain_history(hr_store *s, const hr_store_ckpt *last, hr_store_history_fn fn,
                                 void *ctx, hr_error *err);
/* Called for each part of checkpoint id's blob of `kind`, in order. */
typedef hr_status (*hr_store_blob_fn)(void *ctx, const void *data, size_t bytes);
hr_status hr_store_serving_blobs(hr_store *s, int64_t id, const char *kind, hr_store_blob_fn fn,
                                 void *ctx, hr_error *err);

/* ---- catalog (main database; schema version 4) ---- */

/* Writes (replaces) the record of (kind "user" or "item", id): its
 * canonical JSON text, and the wall time. One statement, autocommit.
 * HR_EUNSUPPORTED below schema version 4. */
hr_status hr_store_catalog_put(hr_store *s, const char *kind, const char *id, size_t idlen,
                               const char *record, size_t rlen, double updated, hr_error *err);
/* The same for n records of one kind in one transaction (all or none). */
hr_status hr_store_catalog_put_many(hr_store *s, const char *kind, size_t n,
                                    const char *const *ids, const size_t *idlen,
                                    const char *const *records, const size_t *rlen,
                                    double updated, hr_error *err);
/* Deletes a record; *found says whether there was one. */
hr_status hr_store_catalog_delete(hr_store *s, const char *kind, const char *id, size_t idlen,
                                  bool *found, hr_error *err);
/* Called for each record, by kind then id; arguments borrowed for the call.
 * Returning anything but HR_OK stops the scan with that status. */
typedef hr_status (*hr_store_catalog_fn)(void *ctx, const char *kind, const char *id,
                                         size_t idlen, const char *record, size_t rlen);
/* Every record (nothing below schema version 4). */
hr_status hr_store_catalog_scan(hr_store *s, hr_store_catalog_fn fn, void *ctx, hr_error *err);

/* Forgets a user: on the main database, its embedding rows in every
 * checkpoint (a scan of the row table), its recent items in every
 * checkpoint's serving state and its catalog record; on the log database,
 * every logged event whose "user" is id. The deletes run with
 * secure_delete on (freed content zeroed), then the file is rewritten
 * (VACUUM: free pages that held older copies go) and its WAL truncated, so
 * no byte of the id stays in the file. Waits for other writers (busy_ms);
 * a VACUUM needs the whole file for as long as it runs. *deleted receives
 * the number of rows deleted. */
hr_status hr_store_forget_user(hr_store *s, const char *id, size_t idlen, uint64_t *deleted,
                               hr_error *err);
/* ---- snapshot meta (snapshot files, snapshot.h) ---- */

/* Writes the meta text of a snapshot file into a one-row table of its own
 * (created here, so a --db database never has it: no migration). Call
 * inside the snapshot's checkpoint transaction. */
hr_status hr_store_snapshot_meta_put(hr_store *s, const char *text, hr_error *err);
/* Reads it: *text is new (free), or NULL when the file has none. */
hr_status hr_store_snapshot_meta_get(hr_store *s, char **text, hr_error *err);

/* ---- event log (log database) ---- */

/* Rows written by one multi-row INSERT statement of the event log (whole
 * statements first, the rest row by row; what is stored does not depend on
 * it). */
#define HR_STORE_LOG_ROWS_PER_INSERT 64

/* In one transaction: inserts n events (seqs[i], arrival wall time
 * arrived[i] - NULL or NaN: unknown -, json[i] of len[i] bytes) and, when
 * trim_to > 0, deletes every seq <= trim_to. */
hr_status hr_store_log_write(hr_store *s, const uint64_t *seqs, const double *arrived,
                             const char *const *json, const size_t *len, size_t n,
                             uint64_t trim_to, hr_error *err);
/* The highest seq ever written: max(seq in the log, trimmed_to). */
hr_status hr_store_log_last_seq(hr_store *s, uint64_t *out, hr_error *err);
/* The highest seq deleted by trimming. */
hr_status hr_store_log_trimmed_to(hr_store *s, uint64_t *out, hr_error *err);
/* The lowest seq logged at or after wall time t (seconds); 0 if none.
 * HR_EINVAL below schema version 2 (no arrival times). */
hr_status hr_store_log_since(hr_store *s, double t, uint64_t *out, hr_error *err);
/* Number of events in the log. */
hr_status hr_store_log_count(hr_store *s, uint64_t *out, hr_error *err);

typedef hr_status (*hr_store_event_fn)(void *ctx, uint64_t seq, double arrived, const char *json,
                                       size_t len);
/* Calls fn for every event with seq > after, in seq order; arrived is NaN
 * when unknown (logged before schema version 2). */
hr_status hr_store_log_scan(hr_store *s, uint64_t after, hr_store_event_fn fn, void *ctx,
                            hr_error *err);
/* A tiny durable write: tells whether the log can commit again. */
hr_status hr_store_log_probe(hr_store *s, hr_error *err);

#endif

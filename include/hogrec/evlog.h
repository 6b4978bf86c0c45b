/*
 * evlog.h - the durable, append-only event log: what makes a 202 a promise.
 *
 * Every accepted event is appended (as its canonical JSON text) with its
 * sequence number before the 202 is sent. At start, events after the last
 * checkpoint's sequence number are replayed through the trainers. The log is
 * trimmed once a checkpoint covers it. Durability modes (config
 * "durability"): "sync" - hr_evlog_wait returns once the events are
 * committed and synced (group commit across concurrent requests); "interval"
 * - appends are committed every sync_interval_ms and hr_evlog_wait returns at
 * once (a crash can lose the last interval).
 *
 * Threads: append is called by the ingest path under its lock, in seq order;
 * wait and notify from HTTP threads; a background thread commits and runs
 * the notify callbacks.
 */
#ifndef HOGREC_EVLOG_H
#define HOGREC_EVLOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hogrec/common.h"

typedef struct hr_evlog hr_evlog;

/* Buffers n events with seqs first_seq .. first_seq+n-1 (consecutive, after
 * every seq appended before) that arrived at wall time `arrived` (seconds;
 * logged with them, for de-duplication windows and popularity decay after a
 * restart). json[i] (len[i] bytes) is borrowed for the call. Fails fast (HR_EIO, err says why) when the log is known to be
 * failing, so the caller can refuse the batch before queueing it. */
hr_status hr_evlog_append(hr_evlog *log, uint64_t first_seq, double arrived,
                          const char *const *json, const size_t *len, size_t n, hr_error *err);

/* Blocks until every event with seq <= seq is as durable as the mode
 * promises. HR_EIO (err says why) if that cannot be done. */
hr_status hr_evlog_wait(hr_evlog *log, uint64_t seq, hr_error *err);

/* Called once with the outcome of seq: HR_OK (durable as the mode promises)
 * or HR_EIO with why (a static or log-owned string, valid until
 * hr_evlog_destroy). */
typedef void (*hr_evlog_notify_fn)(void *arg, hr_status st, const char *why);

/* The asynchronous hr_evlog_wait: arranges for cb(arg, ...) to be called
 * exactly once when every event with seq <= seq is durable, or cannot be.
 * cb runs on the committer thread (or in the caller, before this returns,
 * when the outcome is already known; or in hr_evlog_destroy), never while
 * the log holds a lock: cb may take the caller's locks. arg is borrowed
 * until cb ran. Returns HR_OK, or HR_ENOMEM (cb will not be called). */
hr_status hr_evlog_notify(hr_evlog *log, uint64_t seq, hr_evlog_notify_fn cb, void *arg);

/* The highest seq ever appended (persisted across restarts); 0 if none. */
uint64_t hr_evlog_last_seq(const hr_evlog *log);

/* NULL when healthy, else a static or log-owned string saying why appends
 * fail now (e.g. "database or disk is full"). */
const char *hr_evlog_health(hr_evlog *log);

/* ---- lifecycle and upkeep (called by persist.c) ---- */

struct hr_store;

typedef struct {
    bool sync;            /* durability "sync": wait returns once committed and fsynced */
    unsigned interval_ms; /* durability "interval": commit period */
    unsigned retry_ms;    /* while failing: how often to probe for recovery */
    uint64_t trim_chunk;  /* most seqs one commit trims (0: HR_EVLOG_TRIM_CHUNK) */
} hr_evlog_options;

/* A trim deletes at most this many seqs per commit, so the commits that
 * acknowledge events never wait on one long delete (loadtest/bench_trim:
 * 80-100 ms per chunk where one delete of 900k rows held 0.8 s; smaller
 * chunks cost more commits in all). */
#define HR_EVLOG_TRIM_CHUNK 65536

/* Creates the log over an open log-database handle (taken: the log closes
 * it). last_seq: the highest seq already used (log, checkpoints). No thread
 * runs until hr_evlog_start; until then the caller may still use the store
 * (start-up replay). *out is new. */
hr_status hr_evlog_create(struct hr_store *store, const hr_evlog_options *opt, uint64_t last_seq,
                          hr_evlog **out, hr_error *err);
/* Starts the committer thread. */
hr_status hr_evlog_start(hr_evlog *log, hr_error *err);
/* Commits what is buffered, stops the thread (notify callbacks still
 * pending get HR_EIO), closes the store. NULL: no-op. */
void hr_evlog_destroy(hr_evlog *log);
/* Asks for every seq <= upto to be deleted: with the next commits, at most
 * trim_chunk seqs each, oldest first (the committer goes on by itself until
 * it is done). */
void hr_evlog_trim(hr_evlog *log, uint64_t upto);
/* Seqs committed so far (durable, or failed and reported) and commits made. */
void hr_evlog_counts(hr_evlog *log, uint64_t *durable_seq, uint64_t *commits,
                     uint64_t *failures, uint64_t *pending);

#endif

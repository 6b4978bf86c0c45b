/*
 * store.c - SQLite: schema migrations, checkpoint rows, the event-log table.
 * See store.h. The only file that includes sqlite3.h.
 *
 * Workload: a checkpoint appends up to millions of ~0.5 KB rows in one
 * transaction, in rowid order (the table's INTEGER PRIMARY KEY is
 * checkpoint << 40 | table << 32 | row), which is SQLite's cheapest insert;
 * a restore reads rowid ranges. The event log takes a small transaction per
 * group commit (every few ms under load; its rows go in INSERT statements of
 * HR_STORE_LOG_ROWS_PER_INSERT rows, which costs about 0.6x the CPU of one
 * statement per row) and a range delete after each checkpoint.
 *
 * Threads: a handle is used by one thread at a time; callers serialize.
 */
#include "hogrec/store.h"

#include <math.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sql_migrations.h"

#define ROW_ID(ckpt, table, row) (((int64_t)(ckpt) << 40) | ((int64_t)(table) << 32) | (int64_t)(row))

/* Prepared statements, by index; the SQL is in stmt_sql[]. */
enum {
    ST_BEGIN,
    ST_COMMIT,
    ST_ROLLBACK,
    /* main */
    ST_CKPT_LATEST,
    ST_CKPT_COUNT,
    ST_CKPT_MAXID,
    ST_CKPT_INSERT,
    ST_ROW_INSERT,
    ST_SCHED_INSERT,
    ST_CKPT_FINISH,
    ST_CKPT_KEEP_BASE,
    ST_PRUNE_ROWS,
    ST_PRUNE_CKPT,
    ST_PRUNE_SCHED,
    ST_CHAIN,
    ST_ROWS_RANGE,
    ST_SCHED_ROWS,
    ST_SERVING_INSERT,
    ST_HISTORY_INSERT,
    ST_BLOB_INSERT,
    ST_PRUNE_SERVING,
    ST_PRUNE_HISTORY,
    ST_PRUNE_BLOB,
    ST_SERVING_GET,
    ST_HISTORY_ROWS,
    ST_BLOB_ROWS,
    ST_CATALOG_PUT,
    ST_CATALOG_DELETE,
    ST_CATALOG_SCAN,
    ST_FORGET_ROWS,
    ST_FORGET_HISTORY,
    ST_CKPT_AT,
    ST_CKPT_FROM,
    /* log */
    ST_LOG_INSERT,
    ST_LOG_INSERT_ARRIVED,
    ST_LOG_TRIM,
    ST_LOG_SET_TRIMMED,
    ST_LOG_MAX,
    ST_LOG_TRIMMED,
    ST_LOG_COUNT,
    ST_LOG_SCAN,
    ST_LOG_SCAN_ARRIVED,
    ST_LOG_PROBE,
    ST_LOG_FORGET,
    ST_LOG_SINCE,
    ST_COUNT
};

static const struct {
    hr_store_kind kind; /* which database it belongs to (BEGIN etc.: both) */
    int min_version;    /* schema version it needs */
    const char *sql;
} stmt_sql[ST_COUNT] = {
    [ST_BEGIN] = {HR_STORE_MAIN, 0, "BEGIN IMMEDIATE"},
    [ST_COMMIT] = {HR_STORE_MAIN, 0, "COMMIT"},
    [ST_ROLLBACK] = {HR_STORE_MAIN, 0, "ROLLBACK"},
    [ST_CKPT_LATEST] = {HR_STORE_MAIN, 1,
                        "SELECT id, base, kind = 'full', seq, nrows, updates, started, "
                        "coalesce(seconds, 0), shape FROM checkpoint WHERE complete = 1 "
                        "ORDER BY id DESC LIMIT 1"},
    [ST_CKPT_COUNT] = {HR_STORE_MAIN, 1, "SELECT count(*) FROM checkpoint WHERE complete = 1"},
    [ST_CKPT_MAXID] = {HR_STORE_MAIN, 1, "SELECT coalesce(max(id), 0) FROM checkpoint"},
    [ST_CKPT_INSERT] = {HR_STORE_MAIN, 1,
                        "INSERT INTO checkpoint (id, kind, base, seq, shape, updates, started) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)"},
    [ST_ROW_INSERT] = {HR_STORE_MAIN, 1, "INSERT INTO row (id, key, data) VALUES (?, ?, ?)"},
    [ST_SCHED_INSERT] = {HR_STORE_MAIN, 2,
                         "INSERT INTO schedule_history (checkpoint, version, wall_time, "
                         "at_update, loss_before, loss_after, schedule) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?)"},
    [ST_CKPT_FINISH] = {HR_STORE_MAIN, 1,
                        "UPDATE checkpoint SET complete = 1, nrows = ?, seconds = ? WHERE id = ?"},
    [ST_CKPT_KEEP_BASE] = {HR_STORE_MAIN, 1,
                           "SELECT min(base) FROM (SELECT base FROM checkpoint WHERE complete = 1 "
                           "ORDER BY id DESC LIMIT ?)"},
    [ST_PRUNE_ROWS] = {HR_STORE_MAIN, 1, "DELETE FROM row WHERE id < ?"},
    [ST_PRUNE_CKPT] = {HR_STORE_MAIN, 1, "DELETE FROM checkpoint WHERE id < ?"},
    [ST_PRUNE_SCHED] = {HR_STORE_MAIN, 2, "DELETE FROM schedule_history WHERE checkpoint < ?"},
    [ST_CHAIN] = {HR_STORE_MAIN, 1,
                  "SELECT id FROM checkpoint WHERE complete = 1 AND base = ? AND id <= ? "
                  "ORDER BY id DESC"},
    [ST_ROWS_RANGE] = {HR_STORE_MAIN, 1,
                       "SELECT id, key, data FROM row WHERE id >= ? AND id < ? ORDER BY id"},
    [ST_SCHED_ROWS] = {HR_STORE_MAIN, 2,
                       "SELECT version, wall_time, at_update, loss_before, loss_after, schedule "
                       "FROM schedule_history WHERE checkpoint = ? ORDER BY version"},
    [ST_SERVING_INSERT] = {HR_STORE_MAIN, 3,
                           "INSERT INTO serving_state (checkpoint, seq, taken) VALUES (?, ?, ?)"},
    [ST_HISTORY_INSERT] = {HR_STORE_MAIN, 3,
                           "INSERT INTO serving_history (checkpoint, user, seq, items) "
                           "VALUES (?, ?, ?, ?)"},
    [ST_BLOB_INSERT] = {HR_STORE_MAIN, 3,
                        "INSERT INTO serving_blob (checkpoint, kind, part, data) VALUES (?, ?, ?, ?)"},
    [ST_PRUNE_SERVING] = {HR_STORE_MAIN, 3, "DELETE FROM serving_state WHERE checkpoint < ?"},
    [ST_PRUNE_HISTORY] = {HR_STORE_MAIN, 3, "DELETE FROM serving_history WHERE checkpoint < ?"},
    [ST_PRUNE_BLOB] = {HR_STORE_MAIN, 3, "DELETE FROM serving_blob WHERE checkpoint < ?"},
    [ST_SERVING_GET] = {HR_STORE_MAIN, 3,
                        "SELECT seq, taken FROM serving_state WHERE checkpoint = ?"},
    [ST_HISTORY_ROWS] = {HR_STORE_MAIN, 3,
                         "SELECT user, seq, items FROM serving_history WHERE checkpoint = ?"},
    [ST_BLOB_ROWS] = {HR_STORE_MAIN, 3,
                      "SELECT data FROM serving_blob WHERE checkpoint = ? AND kind = ? "
                      "ORDER BY part"},
    [ST_CATALOG_PUT] = {HR_STORE_MAIN, 4,
                        "INSERT OR REPLACE INTO catalog (kind, id, record, updated) "
                        "VALUES (?, ?, ?, ?)"},
    [ST_CATALOG_DELETE] = {HR_STORE_MAIN, 4, "DELETE FROM catalog WHERE kind = ? AND id = ?"},
    [ST_CATALOG_SCAN] = {HR_STORE_MAIN, 4, "SELECT kind, id, record FROM catalog ORDER BY kind, id"},
    /* user rows of every checkpoint (table 1: HR_TABLE_USER; no index on key: a scan) */
    [ST_FORGET_ROWS] = {HR_STORE_MAIN, 1, "DELETE FROM row WHERE ((id >> 32) & 255) = 1 AND key = ?"},
    [ST_FORGET_HISTORY] = {HR_STORE_MAIN, 3, "DELETE FROM serving_history WHERE user = ?"},
    [ST_LOG_FORGET] = {HR_STORE_LOG, 1,
                       "DELETE FROM event_log WHERE CAST(json_extract(event, '$.user') AS TEXT) = ?"},
    [ST_CKPT_AT] = {HR_STORE_MAIN, 1,
                    "SELECT id, base, kind = 'full', seq, nrows, updates, started, "
                    "coalesce(seconds, 0), shape FROM checkpoint WHERE complete = 1 "
                    "AND seq <= ? AND started <= ? ORDER BY id DESC LIMIT 1"},
    [ST_CKPT_FROM] = {HR_STORE_MAIN, 1,
                      "SELECT id, base, kind = 'full', seq, nrows, updates, started, "
                      "coalesce(seconds, 0), shape FROM checkpoint WHERE complete = 1 "
                      "AND seq >= ? ORDER BY seq, id LIMIT 1"},
    [ST_LOG_INSERT] = {HR_STORE_LOG, 1, "INSERT INTO event_log (seq, event) VALUES (?, ?)"},
    [ST_LOG_INSERT_ARRIVED] = {HR_STORE_LOG, 2,
                               "INSERT INTO event_log (seq, event, arrived) VALUES (?, ?, ?)"},
    [ST_LOG_TRIM] = {HR_STORE_LOG, 1, "DELETE FROM event_log WHERE seq <= ?"},
    [ST_LOG_SET_TRIMMED] = {HR_STORE_LOG, 1,
                            "UPDATE log_state SET trimmed_to = max(trimmed_to, ?) WHERE id = 1"},
    [ST_LOG_MAX] = {HR_STORE_LOG, 1,
                    "SELECT max(coalesce((SELECT max(seq) FROM event_log), 0), "
                    "(SELECT trimmed_to FROM log_state WHERE id = 1))"},
    [ST_LOG_TRIMMED] = {HR_STORE_LOG, 1, "SELECT trimmed_to FROM log_state WHERE id = 1"},
    [ST_LOG_COUNT] = {HR_STORE_LOG, 1, "SELECT count(*) FROM event_log"},
    [ST_LOG_SCAN] = {HR_STORE_LOG, 1, "SELECT seq, event FROM event_log WHERE seq > ? ORDER BY seq"},
    [ST_LOG_SCAN_ARRIVED] = {HR_STORE_LOG, 2,
                             "SELECT seq, event, arrived FROM event_log WHERE seq > ? ORDER BY seq"},
    [ST_LOG_PROBE] = {HR_STORE_LOG, 1,
                      "UPDATE log_state SET trimmed_to = -1 - trimmed_to WHERE id = 1"},
    [ST_LOG_SINCE] = {HR_STORE_LOG, 2, "SELECT min(seq) FROM event_log WHERE arrived >= ?"},
};

struct hr_store {
    sqlite3 *db;
    hr_store_kind kind;
    int version;                  /* user_version after migration */
    sqlite3_stmt *st[ST_COUNT];   /* prepared at open; NULL if not for this kind/version */
    sqlite3_stmt *log_many;       /* INSERT of HR_STORE_LOG_ROWS_PER_INSERT event rows (log,
                                     version >= 2; else NULL) */
    char path[512];               /* for messages */
};

static hr_status map_rc(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_OK:
    case SQLITE_DONE:
    case SQLITE_ROW: return HR_OK;
    case SQLITE_BUSY:
    case SQLITE_LOCKED: return HR_EBUSY;
    case SQLITE_FULL: return HR_EFULL;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB: return HR_ECORRUPT;
    case SQLITE_NOMEM: return HR_ENOMEM;
    default: return HR_EIO;
    }
}

/* Sets err from the connection's last error and returns the mapped status. */
static hr_status fail(hr_store *s, int rc, hr_error *err, const char *what)
{
    const char *msg = s && s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc);
    if (s && s->db && sqlite3_errcode(s->db) != rc)
        msg = sqlite3_errstr(rc);
    return hr_error_set(err, map_rc(rc), "db", "%s: %s", what, msg);
}

static void rollback(hr_store *s)
{
    if (!sqlite3_get_autocommit(s->db)) {
        sqlite3_reset(s->st[ST_ROLLBACK]);
        sqlite3_step(s->st[ST_ROLLBACK]);
        sqlite3_reset(s->st[ST_ROLLBACK]);
    }
}

/* Runs a statement that returns no rows (or whose rows are ignored). */
static int run(sqlite3_stmt *st)
{
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        ;
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* Reads one integer from a statement's first row (def if no row). */
static int one_int(sqlite3_stmt *st, int64_t def, int64_t *out)
{
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *out = sqlite3_column_type(st, 0) == SQLITE_NULL ? def : sqlite3_column_int64(st, 0);
        rc = SQLITE_OK;
    } else if (rc == SQLITE_DONE) {
        *out = def;
        rc = SQLITE_OK;
    }
    sqlite3_reset(st);
    return rc;
}

static int pragma_int(sqlite3 *db, const char *sql, int *out)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK)
        return rc;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *out = sqlite3_column_int(st, 0);
        rc = SQLITE_OK;
    } else if (rc == SQLITE_DONE) {
        rc = SQLITE_OK;
    }
    sqlite3_finalize(st);
    return rc;
}

int hr_store_latest_version(hr_store_kind kind)
{
    int v = 0;
    for (int i = 0; i < hr_sql_migration_count; i++)
        if (hr_sql_migrations[i].target == (int)kind && hr_sql_migrations[i].version > v)
            v = hr_sql_migrations[i].version;
    return v;
}

int hr_store_user_version(hr_store *s) { return s->version; }

/* Applies migrations after the current user_version, each in its own
 * transaction together with its user_version bump. */
static hr_status migrate(hr_store *s, int target, hr_error *err)
{
    int v = 0, rc = pragma_int(s->db, "PRAGMA user_version", &v);
    if (rc != SQLITE_OK)
        return fail(s, rc, err, "reading the schema version");
    int latest = hr_store_latest_version(s->kind);
    if (v > latest)
        return hr_error_set(err, HR_EUNSUPPORTED, "db",
                            "%s: schema version %d is newer than this binary knows (%d): "
                            "run a newer hogrec",
                            s->path, v, latest);
    for (int want = v + 1; want <= target; want++) {
        const hr_sql_migration *m = NULL;
        for (int i = 0; i < hr_sql_migration_count; i++)
            if (hr_sql_migrations[i].target == (int)s->kind && hr_sql_migrations[i].version == want)
                m = &hr_sql_migrations[i];
        if (!m)
            return hr_error_set(err, HR_EINVAL, "db", "no migration to schema version %d", want);
        char bump[64];
        snprintf(bump, sizeof bump, "PRAGMA user_version = %d", want);
        char *msg = NULL;
        rc = sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
        if (rc == SQLITE_OK)
            rc = sqlite3_exec(s->db, m->sql, NULL, NULL, &msg);
        if (rc == SQLITE_OK)
            rc = sqlite3_exec(s->db, bump, NULL, NULL, NULL);
        if (rc == SQLITE_OK)
            rc = sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL);
        if (rc != SQLITE_OK) {
            hr_status st = hr_error_set(err, map_rc(rc), "db", "%s: migration %s: %s", s->path,
                                        m->name, msg ? msg : sqlite3_errmsg(s->db));
            sqlite3_free(msg);
            sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
            return st;
        }
        v = want;
    }
    s->version = v;
    return HR_OK;
}

static hr_status check(hr_store *s, hr_error *err)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(s->db, "PRAGMA quick_check", -1, &st, NULL);
    if (rc != SQLITE_OK)
        return fail(s, rc, err, "checking the database");
    rc = sqlite3_step(st);
    hr_status out = HR_OK;
    if (rc == SQLITE_ROW) {
        const char *r = (const char *)sqlite3_column_text(st, 0);
        if (!r || strcmp(r, "ok") != 0)
            out = hr_error_set(err, HR_ECORRUPT, "db", "quick_check: %s", r ? r : "(null)");
    } else {
        out = fail(s, rc, err, "checking the database");
    }
    sqlite3_finalize(st);
    return out;
}

/* The multi-row event-log INSERT: one statement for HR_STORE_LOG_ROWS_PER_INSERT
 * rows, prepared once (a VALUES list of that many (?, ?, ?) tuples). Only on
 * a log database with arrival times (version >= 2); older ones insert row
 * by row. */
static hr_status prepare_log_many(hr_store *s, hr_error *err)
{
    if (!s->st[ST_LOG_INSERT_ARRIVED])
        return HR_OK;
    static const char head[] = "INSERT INTO event_log (seq, event, arrived) VALUES ";
    static const char tuple[] = "(?,?,?),";
    char sql[sizeof head + HR_STORE_LOG_ROWS_PER_INSERT * (sizeof tuple - 1)];
    size_t n = sizeof head - 1;
    memcpy(sql, head, n);
    for (int i = 0; i < HR_STORE_LOG_ROWS_PER_INSERT; i++) {
        memcpy(sql + n, tuple, sizeof tuple - 1);
        n += sizeof tuple - 1;
    }
    sql[n - 1] = 0; /* the last tuple's comma */
    int rc = sqlite3_prepare_v3(s->db, sql, (int)n, SQLITE_PREPARE_PERSISTENT, &s->log_many, NULL);
    return rc == SQLITE_OK ? HR_OK : fail(s, rc, err, "preparing the event-log insert");
}

hr_status hr_store_open(const char *path, const hr_store_options *opt, hr_store **out,
                        hr_error *err)
{
    *out = NULL;
    hr_store *s = calloc(1, sizeof *s);
    if (!s)
        return hr_error_set(err, HR_ENOMEM, NULL, "out of memory");
    s->kind = opt->kind;
    snprintf(s->path, sizeof s->path, "%s", path);
    hr_status st;
    int rc = sqlite3_open_v2(path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL);
    if (rc != SQLITE_OK) {
        st = fail(s, rc, err, "opening the database");
        goto fail;
    }
    sqlite3_extended_result_codes(s->db, 1);
    sqlite3_busy_timeout(s->db, opt->busy_ms);
    /* The first read of the header: a file that is not a database fails here. */
    int wal_ok = 0;
    sqlite3_stmt *jm;
    rc = sqlite3_prepare_v2(s->db, "PRAGMA journal_mode = WAL", -1, &jm, NULL);
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(jm);
        if (rc == SQLITE_ROW) {
            const char *mode = (const char *)sqlite3_column_text(jm, 0);
            wal_ok = mode && strcmp(mode, "wal") == 0;
            rc = SQLITE_OK;
        }
        sqlite3_finalize(jm);
    }
    if (rc != SQLITE_OK) {
        st = fail(s, rc, err, "opening the database");
        goto fail;
    }
    if (!wal_ok) {
        st = hr_error_set(err, HR_EIO, "db", "%s: cannot switch to WAL mode", path);
        goto fail;
    }
    if (opt->quick_check && (st = check(s, err)) != HR_OK)
        goto fail;
    /* FULL: every commit is fsynced before it returns (the 202 promise, and
     * a checkpoint must be on disk before the log it covers is trimmed).
     * NORMAL in WAL mode: a commit survives a process crash, not a power cut. */
    char *msg = NULL;
    char prag[160];
    snprintf(prag, sizeof prag,
             "PRAGMA synchronous = %s; PRAGMA journal_size_limit = 67108864; "
             "PRAGMA foreign_keys = OFF;",
             opt->sync_full ? "FULL" : "NORMAL");
    rc = sqlite3_exec(s->db, prag, NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        st = hr_error_set(err, map_rc(rc), "db", "%s: %s", path, msg ? msg : sqlite3_errstr(rc));
        sqlite3_free(msg);
        goto fail;
    }
    int target = opt->target_version ? opt->target_version : hr_store_latest_version(s->kind);
    if ((st = migrate(s, target, err)) != HR_OK)
        goto fail;
    for (int i = 0; i < ST_COUNT; i++) {
        bool mine = i <= ST_ROLLBACK || stmt_sql[i].kind == s->kind;
        if (!mine || stmt_sql[i].min_version > s->version)
            continue;
        rc = sqlite3_prepare_v3(s->db, stmt_sql[i].sql, -1, SQLITE_PREPARE_PERSISTENT, &s->st[i],
                                NULL);
        if (rc != SQLITE_OK) {
            st = fail(s, rc, err, "preparing statements (schema damaged?)");
            if (st == HR_EIO)
                st = HR_ECORRUPT;
            goto fail;
        }
    }
    if ((st = prepare_log_many(s, err)) != HR_OK)
        goto fail;
    *out = s;
    return HR_OK;
fail:
    hr_store_close(s);
    return st;
}

void hr_store_close(hr_store *s)
{
    if (!s)
        return;
    if (s->db) {
        if (s->st[ST_ROLLBACK])
            rollback(s);
        for (int i = 0; i < ST_COUNT; i++)
            sqlite3_finalize(s->st[i]);
        sqlite3_finalize(s->log_many);
        sqlite3_close(s->db);
    }
    free(s);
}

/* ---- checkpoints ---- */

/* One checkpoint row of a statement selecting the columns of ST_CKPT_LATEST
 * (bound by the caller); out->id 0 when there is none. Resets st. */
static int read_ckpt(sqlite3_stmt *st, hr_store_ckpt *out)
{
    memset(out, 0, sizeof *out);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        out->id = sqlite3_column_int64(st, 0);
        out->base = sqlite3_column_int64(st, 1);
        out->full = sqlite3_column_int(st, 2) != 0;
        out->seq = (uint64_t)sqlite3_column_int64(st, 3);
        out->nrows = (uint64_t)sqlite3_column_int64(st, 4);
        out->updates = (uint64_t)sqlite3_column_int64(st, 5);
        out->started = sqlite3_column_double(st, 6);
        out->seconds = sqlite3_column_double(st, 7);
        const char *shape = (const char *)sqlite3_column_text(st, 8);
        snprintf(out->shape, sizeof out->shape, "%s", shape ? shape : "");
        rc = SQLITE_OK;
    } else if (rc == SQLITE_DONE) {
        rc = SQLITE_OK;
    }
    sqlite3_reset(st);
    return rc;
}

hr_status hr_store_ckpt_latest(hr_store *s, hr_store_ckpt *out, hr_error *err)
{
    int rc = read_ckpt(s->st[ST_CKPT_LATEST], out);
    return rc == SQLITE_OK ? HR_OK : fail(s, rc, err, "reading the latest checkpoint");
}

hr_status hr_store_ckpt_at(hr_store *s, uint64_t max_seq, double max_started, hr_store_ckpt *out,
                           hr_error *err)
{
    sqlite3_stmt *st = s->st[ST_CKPT_AT];
    sqlite3_bind_int64(st, 1, max_seq > INT64_MAX ? INT64_MAX : (int64_t)max_seq);
    sqlite3_bind_double(st, 2, max_started < 1e300 ? max_started : 1e300); /* not Inf */
    int rc = read_ckpt(st, out);
    return rc == SQLITE_OK ? HR_OK : fail(s, rc, err, "finding a checkpoint");
}

hr_status hr_store_ckpt_from(hr_store *s, uint64_t min_seq, hr_store_ckpt *out, hr_error *err)
{
    sqlite3_stmt *st = s->st[ST_CKPT_FROM];
    sqlite3_bind_int64(st, 1, min_seq > INT64_MAX ? INT64_MAX : (int64_t)min_seq);
    int rc = read_ckpt(st, out);
    return rc == SQLITE_OK ? HR_OK : fail(s, rc, err, "finding a checkpoint");
}

hr_status hr_store_ckpt_count(hr_store *s, int64_t *out, hr_error *err)
{
    int rc = one_int(s->st[ST_CKPT_COUNT], 0, out);
    return rc == SQLITE_OK ? HR_OK : fail(s, rc, err, "counting checkpoints");
}

hr_status hr_store_ckpt_begin(hr_store *s, bool full, uint64_t seq, uint64_t updates,
                              const char *shape, int64_t *id, hr_error *err)
{
    int rc = run(s->st[ST_BEGIN]);
    if (rc != SQLITE_OK)
        return fail(s, rc, err, "starting a checkpoint");
    int64_t maxid = 0, base = 0;
    hr_store_ckpt last;
    hr_status hst = hr_store_ckpt_latest(s, &last, err);
    if (hst != HR_OK)
        goto out;
    if ((rc = one_int(s->st[ST_CKPT_MAXID], 0, &maxid)) != SQLITE_OK)
        goto fail;
    *id = maxid + 1;
    base = full || last.id == 0 ? *id : last.base;
    sqlite3_stmt *st = s->st[ST_CKPT_INSERT];
    sqlite3_bind_int64(st, 1, *id);
    sqlite3_bind_text(st, 2, base == *id ? "full" : "incremental", -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, base);
    sqlite3_bind_int64(st, 4, (int64_t)seq);
    sqlite3_bind_text(st, 5, shape, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 6, (int64_t)updates);
    sqlite3_bind_double(st, 7, hr_wall_time());
    rc = run(st);
    sqlite3_clear_bindings(st);
    if (rc == SQLITE_OK)
        return HR_OK;
fail:
    hst = fail(s, rc, err, "starting a checkpoint");
out:
    rollback(s);
    return hst;
}

hr_status hr_store_ckpt_row(hr_store *s, int64_t id, unsigned table, uint32_t row,
                            const char *key, size_t klen, const void *data, size_t bytes,
                            hr_error *err)
{
    sqlite3_stmt *st = s->st[ST_ROW_INSERT];
    sqlite3_bind_int64(st, 1, ROW_ID(id, table, row));
    if (key)
        sqlite3_bind_blob(st, 2, key, (int)klen, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 2);
    sqlite3_bind_blob(st, 3, bytes ? data : "", (int)bytes, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc == SQLITE_DONE)
        return HR_OK;
    return fail(s, rc, err, "writing checkpoint rows");
}

static void bind_loss(sqlite3_stmt *st, int i, double v)
{
    if (isfinite(v))
        sqlite3_bind_double(st, i, v);
    else
        sqlite3_bind_null(st, i);
}

hr_status hr_store_ckpt_schedule(hr_store *s, int64_t id, uint64_t version, double wall_time,
                                 uint64_t at_update, double loss_before, double loss_after,
                                 const char *json, hr_error *err)
{
    sqlite3_stmt *st = s->st[ST_SCHED_INSERT];
    if (!st)
        return HR_OK;
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_int64(st, 2, (int64_t)version);
    sqlite3_bind_double(st, 3, wall_time);
    sqlite3_bind_int64(st, 4, (int64_t)at_update);
    bind_loss(st, 5, loss_before);
    bind_loss(st, 6, loss_after);
    sqlite3_bind_text(st, 7, json, -1, SQLITE_STATIC);
    int rc = run(st);
    sqlite3_clear_bindings(st);
    return rc == SQLITE_OK ? HR_OK : fail(s, rc, err, "writing the schedule history");
}

static int bind_run(sqlite3_stmt *st, int64_t v)
{
    if (!st)
        return SQLITE_OK;
    sqlite3_bind_int64(st, 1, v);
    return run(st);
}

hr_status hr_store_ckpt_commit(hr_store *s, int64_t id, uint64_t nrows, double seconds, int keep,
                               hr_error *err)
{
    sqlite3_stmt *st = s->st[ST_CKPT_FINISH];
    sqlite3_bind_int64(st, 1, (int64_t)nrows);
    sqlite3_bind_double(st, 2, seconds);
    sqlite3_bind_int64(st, 3, id);
    int rc = run(st);
    int64_t minbase = 0;
    if (rc == SQLITE_OK) {
        sqlite3_bind_int(s->st[ST_CKPT_KEEP_BASE], 1, keep < 1 ? 1 : keep);
        rc = one_int(s->st[ST_CKPT_KEEP_BASE], 0, &minbase);
    }
    /* Everything older than the oldest chain still needed goes. */
    if (rc == SQLITE_OK && minbase > 1) {
        rc = bind_run(s->st[ST_PRUNE_ROWS], ROW_ID(minbase, 0, 0));
        if (rc == SQLITE_OK)
            rc = bind_run(s->st[ST_PRUNE_CKPT], minbase);
        if (rc == SQLITE_OK)
            rc = bind_run(s->st[ST_PRUNE_SCHED], minbase);
        if (rc == SQLITE_OK)
            rc = bind_run(s->st[ST_PRUNE_SERVING], minbase);
        if (rc == SQLITE_OK)
            rc = bind_run(s->st[ST_PRUNE_HISTORY], minbase);
        if (rc == SQLITE_OK)
            rc = bind_run(s->st[ST_PRUNE_BLOB], minbase);
    }
    if (rc == SQLITE_OK)
        rc = run(s->st[ST_COMMIT]);
    if (rc == SQLITE_OK)
        return HR_OK;
    hr_status hst = fail(s, rc, err, "committing a checkpoint");
    rollback(s);
    return hst;
}

void hr_store_ckpt_abort(hr_store *s) { rollback(s); }

/* The checkpoints of the chain ending at last, newest first. */
static hr_status chain_ids(hr_store *s, const hr_store_ckpt *last, int64_t *ids, size_t max,
                           size_t *n, hr_error *err)
{
    *n = 0;
    sqlite3_stmt *st = s->st[ST_CHAIN];
    sqlite3_bind_int64(st, 1, last->base);
    sqlite3_bind_int64(st, 2, last->id);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW && *n < max)
        ids[(*n)++] = sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW)
        return fail(s, rc, err, "reading the checkpoint chain");
    if (*n == 0 || ids[*n - 1] != last->base)
        return hr_error_set(err, HR_ECORRUPT, "db",
                            "checkpoint %lld: its full checkpoint %lld is missing",
                            (long long)last->id, (long long)last->base);
    return HR_OK;
}

hr_status hr_store_chain_rows(hr_store *s, const hr_store_ckpt *last, hr_store_row_fn fn,
                              void *ctx, hr_error *err)
{
    int64_t ids[4096];
    size_t n = 0;
    int rc;
    sqlite3_stmt *st;
    hr_status cst = chain_ids(s, last, ids, HR_ARRAY_LEN(ids), &n, err);
    if (cst != HR_OK)
        return cst;
    hr_status hst = HR_OK;
    st = s->st[ST_ROWS_RANGE];
    for (size_t i = 0; i < n && hst == HR_OK; i++) {
        sqlite3_bind_int64(st, 1, ROW_ID(ids[i], 0, 0));
        sqlite3_bind_int64(st, 2, ROW_ID(ids[i] + 1, 0, 0));
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
            int64_t rid = sqlite3_column_int64(st, 0);
            const void *key = sqlite3_column_blob(st, 1);
            size_t klen = (size_t)sqlite3_column_bytes(st, 1);
            bool has_key = sqlite3_column_type(st, 1) != SQLITE_NULL;
            const void *data = sqlite3_column_blob(st, 2);
            size_t bytes = (size_t)sqlite3_column_bytes(st, 2);
            hst = fn(ctx, (unsigned)((rid >> 32) & 0xff), (uint32_t)(rid & 0xffffffff),
                     has_key ? (key ? key : "") : NULL, klen, data, bytes);
            if (hst != HR_OK)
                break;
        }
        sqlite3_reset(st);
        if (hst == HR_OK && rc != SQLITE_DONE)
            hst = fail(s, rc, err, "reading checkpoint rows");
    }
    return hst;
}

hr_status hr_store_schedule_rows(hr_store *s, int64_t id, hr_store_sched_fn fn, void *ctx,
                                 hr_error *err)
{
    sqlite3_stmt *st = s->st[ST_SCHED_ROWS];
    if (!st)
        return HR_OK;
    sqlite3_bind_int64(st, 1, id);
    int rc;
    hr_status hst = HR_OK;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        double lb = sqlite3_column_type(st, 3) == SQLITE_NULL ? NAN : sqlite3_column_double(st, 3);
        double la = sqlite3_column_type(st, 4) == SQLITE_NULL ? NAN : sqlite3_column_double(st, 4);
        const char *json = (const char *)sqlite3_column_text(st, 5);
        hst = fn(ctx, (uint64_t)sqlite3_column_int64(st, 0), sqlite3_column_double(st, 1),
                 (uint64_t)sqlite3_column_int64(st, 2), lb, la, json ? json : "");
        if (hst != HR_OK)
            break;
    }
    sqlite3_reset(st);
    if (hst == HR_OK && rc != SQLITE_DONE)
        hst = fail(s, rc, err, "reading the schedule history");
    return hst;
}

/* ---- serving state (main database, schema version 3) ---- */

hr_status hr_store_ckpt_serving(hr_store *s, int64_t id, uint64_t seq, double taken,
                                hr_error *err)
{
    sqlite3_stmt *st = s->st[ST_SERVING_INSERT];
    if (!st)
        return HR_OK;
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_int64(st, 2, (int64_t)seq);
    sqlite3_bind_double(st, 3, taken);
    int rc = run(st);
    sqlite3_clear_bindings(st);
    return rc == SQLITE_OK ? HR_OK : fail(s, rc, err, "writing the serving state");
}

hr_status hr_store_ckpt_history(hr_store *s, int64_t id, const char *user, size_t ulen,
                                uint64_t seq, const void *items, size_t bytes, hr_error *err)
{
    sqlite3_stmt *st = s->st[ST_HISTORY_INSERT];
    if (!st)
        return HR_OK;
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_blob(st, 2, user, (int)ulen, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, (int64_t)seq);
    sqlite3_bind_blob(st, 4, bytes ? items : "", (int)bytes, SQLITE_STATIC);
    int rc = run(st);
    sqlite3_clear_bindings(st);
    return rc == SQLITE_OK ? HR_OK : fail(s, rc, err, "writing the users' recent items");
}

hr_status hr_store_ckpt_blob(hr_store *s, int64_t id, const char *kind, uint32_t part,
                             const void *data, size_t bytes, hr_error *err)
{
    sqlite3_stmt *st = s->st[ST_BLOB_INSERT];
    if (!st)
        return HR_OK;
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_text(st, 2, kind, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, part);
    sqlite3_bind_blob(st, 4, bytes ? data : "", (int)bytes, SQLITE_STATIC);
    int rc = run(st);
    sqlite3_clear_bindings(st);
    return rc == SQLITE_OK ? HR_OK : fail(s, rc, err, "writing the serving state");
}

hr_status hr_store_snapshot_meta_put(hr_store *s, const char *text, hr_error *err)
{
    int rc = sqlite3_exec(s->db,
                          "CREATE TABLE IF NOT EXISTS snapshot_meta (id INTEGER PRIMARY KEY "
                          "CHECK (id = 1), json TEXT NOT NULL)",
                          NULL, NULL, NULL);
    sqlite3_stmt *st = NULL;
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v2(s->db, "INSERT OR REPLACE INTO snapshot_meta (id, json) "
                                       "VALUES (1, ?1)", -1, &st, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_bind_text(st, 1, text, -1, SQLITE_STATIC);
        rc = run(st);
    }
    sqlite3_finalize(st);
    return rc == SQLITE_OK ? HR_OK : fail(s, rc, err, "writing the snapshot meta");
}

hr_status hr_store_snapshot_meta_get(hr_store *s, char **text, hr_error *err)
{
    *text = NULL;
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(s->db, "SELECT json FROM snapshot_meta WHERE id = 1", -1, &st,
                                NULL);
    if (rc != SQLITE_OK) { /* no such table: not a snapshot */
        sqlite3_finalize(st);
        return HR_OK;
    }
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        const char *t = (const char *)sqlite3_column_text(st, 0);
        *text = strdup(t ? t : "");
        rc = *text ? SQLITE_OK : SQLITE_NOMEM;
    } else if (rc == SQLITE_DONE) {
        rc = SQLITE_OK;
    }
    sqlite3_finalize(st);
    return rc == SQLITE_OK ? HR_OK : fail(s, rc, err, "reading the snapshot meta");
}

hr_status hr_store_serving(hr_store *s, int64_t id, bool *found, uint64_t *seq, double *taken,
                           hr_error *err)
{
    *found = false;
    sqlite3_stmt *st = s->st[ST_SERVING_GET];
    if (!st)
        return HR_OK;
    sqlite3_bind_int64(st, 1, id);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *found = true;
        *seq = (uint64_t)sqlite3_column_int64(st, 0);
        *taken = sqlite3_column_double(st, 1);
        rc = SQLITE_OK;
    } else if (rc == SQLITE_DONE) {
        rc = SQLITE_OK;
    }
    sqlite3_reset(st);
    return rc == SQLITE_OK ? HR_OK : fail(s, rc, err, "reading the serving state");
}

hr_status hr_store_chain_history(hr_store *s, const hr_store_ckpt *last, hr_store_history_fn fn,
                                 void *ctx, hr_error *err)
{
    sqlite3_stmt *st = s->st[ST_HISTORY_ROWS];
    if (!st)
        return HR_OK;
    int64_t ids[4096];
    size_t n = 0;
    hr_status hst = chain_ids(s, last, ids, HR_ARRAY_LEN(ids), &n, err);
    for (size_t i = 0; i < n && hst == HR_OK; i++) {
        sqlite3_bind_int64(st, 1, ids[i]);
        int rc;
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
            const void *user = sqlite3_column_blob(st, 0);
            size_t ulen = (size_t)sqlite3_column_bytes(st, 0);
            const void *items = sqlite3_column_blob(st, 2);
            size_t bytes = (size_t)sqlite3_column_bytes(st, 2);
            hst = fn(ctx, user ? user : "", ulen, (uint64_t)sqlite3_column_int64(st, 1), items,
                     bytes);
            if (hst != HR_OK)
                break;
        }
        sqlite3_reset(st);
        if (hst == HR_OK && rc != SQLITE_DONE)
            hst = fail(s, rc, err, "reading the users' recent items");
    }
    return hst;
}

hr_status hr_store_serving_blobs(hr_store *s, int64_t id, const char *kind, hr_store_blob_fn fn,
                                 void *ctx, hr_error *err)
{
    sqlite3_stmt *st = s->st[ST_BLOB_ROWS];
    if (!st)
        return HR_OK;
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_text(st, 2, kind, -1, SQLITE_STATIC);
    int rc;
    hr_status hst = HR_OK;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        hst = fn(ctx, sqlite3_column_blob(st, 0), (size_t)sqlite3_column_bytes(st, 0));
        if (hst != HR_OK)
            break;
    }
    sqlite3_reset(st);
    if (hst == HR_OK && rc != SQLITE_DONE)
        hst = fail(s, rc, err, "reading the serving state");
    return hst;
}

/* ---- event log ---- */

/* Binds one event to the three parameters from col (seq, text, arrival or
 * NULL when unknown); with_time false: the two of a version-1 log. */
static void bind_event(sqlite3_stmt *ins, int col, bool with_time, uint64_t seq,
                       const double *arrived, const char *json, size_t len)
{
    sqlite3_bind_int64(ins, col, (int64_t)seq);
    sqlite3_bind_text(ins, col + 1, json, (int)len, SQLITE_STATIC);
    if (with_time && arrived && isfinite(*arrived))
        sqlite3_bind_double(ins, col + 2, *arrived);
    else if (with_time)
        sqlite3_bind_null(ins, col + 2);
}

static int step_reset(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

hr_status hr_store_log_write(hr_store *s, const uint64_t *seqs, const double *arrived,
                             const char *const *json, const size_t *len, size_t n,
                             uint64_t trim_to, hr_error *err)
{
    int rc = run(s->st[ST_BEGIN]);
    const char *what = "event log: starting a transaction";
    sqlite3_stmt *ins = s->st[ST_LOG_INSERT_ARRIVED] ? s->st[ST_LOG_INSERT_ARRIVED]
                                                      : s->st[ST_LOG_INSERT];
    bool with_time = ins == s->st[ST_LOG_INSERT_ARRIVED];
    const size_t per = HR_STORE_LOG_ROWS_PER_INSERT;
    size_t i = 0;
    if (rc == SQLITE_OK && n)
        what = "event log: writing events";
    /* Whole statements of `per` rows (one step and reset for all), then the
     * rest row by row: the rows and their order are the same either way. */
    for (; s->log_many && n - i >= per && rc == SQLITE_OK; i += per) {
        for (size_t j = 0; j < per; j++)
            bind_event(s->log_many, (int)(3 * j + 1), true, seqs[i + j],
                       arrived ? &arrived[i + j] : NULL, json[i + j], len[i + j]);
        rc = step_reset(s->log_many);
    }
    for (; i < n && rc == SQLITE_OK; i++) {
        bind_event(ins, 1, with_time, seqs[i], arrived ? &arrived[i] : NULL, json[i], len[i]);
        rc = step_reset(ins);
    }
    if (rc == SQLITE_OK && trim_to > 0) {
        what = "event log: trimming";
        rc = bind_run(s->st[ST_LOG_TRIM], (int64_t)trim_to);
        if (rc == SQLITE_OK)
            rc = bind_run(s->st[ST_LOG_SET_TRIMMED], (int64_t)trim_to);
    }
    if (rc == SQLITE_OK) {
        what = "event log: committing";
        rc = run(s->st[ST_COMMIT]);
    }
    if (rc == SQLITE_OK)
        return HR_OK;
    hr_status st = fail(s, rc, err, what);
    rollback(s);
    return st;
}

hr_status hr_store_log_last_seq(hr_store *s, uint64_t *out, hr_error *err)
{
    int64_t v = 0;
    int rc = one_int(s->st[ST_LOG_MAX], 0, &v);
    *out = (uint64_t)v;
    return rc == SQLITE_OK ? HR_OK : fail(s, rc, err, "event log: reading the last seq");
}

hr_status hr_store_log_trimmed_to(hr_store *s, uint64_t *out, hr_error *err)
{
    int64_t v = 0;
    int rc = one_int(s->st[ST_LOG_TRIMMED], 0, &v);
    *out = (uint64_t)v;
    return rc == SQLITE_OK ? HR_OK : fail(s, rc, err, "event log: reading trimmed_to");
}

hr_status hr_store_log_since(hr_store *s, double t, uint64_t *out, hr_error *err)
{
    *out = 0;
    sqlite3_stmt *st = s->st[ST_LOG_SINCE];
    if (!st)
        return hr_error_set(err, HR_EINVAL, NULL, "the event log has no arrival times");
    sqlite3_bind_double(st, 1, t);
    int64_t v = 0;
    int rc = one_int(st, 0, &v);
    *out = (uint64_t)v;
    return rc == SQLITE_OK ? HR_OK : fail(s, rc, err, "event log: finding a time");
}

hr_status hr_store_log_count(hr_store *s, uint64_t *out, hr_error *err)
{
    int64_t v = 0;
    int rc = one_int(s->st[ST_LOG_COUNT], 0, &v);
    *out = (uint64_t)v;
    return rc == SQLITE_OK ? HR_OK : fail(s, rc, err, "event log: counting");
}

hr_status hr_store_log_scan(hr_store *s, uint64_t after, hr_store_event_fn fn, void *ctx,
                            hr_error *err)
{
    sqlite3_stmt *st = s->st[ST_LOG_SCAN_ARRIVED] ? s->st[ST_LOG_SCAN_ARRIVED] : s->st[ST_LOG_SCAN];
    bool with_time = st == s->st[ST_LOG_SCAN_ARRIVED];
    sqlite3_bind_int64(st, 1, (int64_t)after);
    int rc;
    hr_status hst = HR_OK;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *json = (const char *)sqlite3_column_text(st, 1);
        size_t len = (size_t)sqlite3_column_bytes(st, 1);
        double arrived = with_time && sqlite3_column_type(st, 2) != SQLITE_NULL
                             ? sqlite3_column_double(st, 2)
                             : NAN;
        hst = fn(ctx, (uint64_t)sqlite3_column_int64(st, 0), arrived, json ? json : "", len);
        if (hst != HR_OK)
            break;
    }
    sqlite3_reset(st);
    if (hst == HR_OK && rc != SQLITE_DONE)
        hst = fail(s, rc, err, "event log: reading");
    return hst;
}

hr_status hr_store_log_probe(hr_store *s, hr_error *err)
{
    /* SQLite does not write a row whose bytes do not change, so an UPDATE
     * to the same value commits nothing and succeeds on a full disk. The
     * probe flips trimmed_to and flips it back in one transaction: the page
     * is written, the value kept. */
    int rc = run(s->st[ST_BEGIN]);
    if (rc == SQLITE_OK)
        rc = run(s->st[ST_LOG_PROBE]);
    if (rc == SQLITE_OK)
        rc = run(s->st[ST_LOG_PROBE]);
    if (rc == SQLITE_OK)
        rc = run(s->st[ST_COMMIT]);
    if (rc == SQLITE_OK)
        return HR_OK;
    hr_status st = fail(s, rc, err, "event log");
    rollback(s);
    return st;
}

/* ---- catalog (main database, schema version 4) ---- */

hr_status hr_store_catalog_put(hr_store *s, const char *kind, const char *id, size_t idlen,
                               const char *record, size_t rlen, double updated, hr_error *err)
{
    sqlite3_stmt *st = s->st[ST_CATALOG_PUT];
    if (!st)
        return hr_error_set(err, HR_EUNSUPPORTED, "db", "catalog: schema version %d < 4",
                            s->version);
    sqlite3_bind_text(st, 1, kind, -1, SQLITE_STATIC);
    sqlite3_bind_blob(st, 2, id, (int)idlen, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, record, (int)rlen, SQLITE_STATIC);
    sqlite3_bind_double(st, 4, updated);
    int rc = run(st);
    sqlite3_clear_bindings(st);
    return rc == SQLITE_OK ? HR_OK : fail(s, rc, err, "catalog: writing a record");
}

hr_status hr_store_catalog_put_many(hr_store *s, const char *kind, size_t n,
                                    const char *const *ids, const size_t *idlen,
                                    const char *const *records, const size_t *rlen,
                                    double updated, hr_error *err)
{
    int rc = run(s->st[ST_BEGIN]);
    if (rc != SQLITE_OK)
        return fail(s, rc, err, "catalog: beginning a write");
    hr_status st = HR_OK;
    for (size_t i = 0; i < n && st == HR_OK; i++)
        st = hr_store_catalog_put(s, kind, ids[i], idlen[i], records[i], rlen[i], updated, err);
    if (st == HR_OK && (rc = run(s->st[ST_COMMIT])) != SQLITE_OK)
        st = fail(s, rc, err, "catalog: committing");
    if (st != HR_OK)
        rollback(s);
    return st;
}

hr_status hr_store_catalog_delete(hr_store *s, const char *kind, const char *id, size_t idlen,
                                  bool *found, hr_error *err)
{
    sqlite3_stmt *st = s->st[ST_CATALOG_DELETE];
    *found = false;
    if (!st)
        return hr_error_set(err, HR_EUNSUPPORTED, "db", "catalog: schema version %d < 4",
                            s->version);
    sqlite3_bind_text(st, 1, kind, -1, SQLITE_STATIC);
    sqlite3_bind_blob(st, 2, id, (int)idlen, SQLITE_STATIC);
    int rc = run(st);
    sqlite3_clear_bindings(st);
    if (rc != SQLITE_OK)
        return fail(s, rc, err, "catalog: deleting a record");
    *found = sqlite3_changes(s->db) > 0;
    return HR_OK;
}

hr_status hr_store_catalog_scan(hr_store *s, hr_store_catalog_fn fn, void *ctx, hr_error *err)
{
    sqlite3_stmt *st = s->st[ST_CATALOG_SCAN];
    if (!st)
        return HR_OK; /* an older schema has no catalog */
    int rc;
    hr_status hst = HR_OK;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *kind = (const char *)sqlite3_column_text(st, 0);
        const char *id = sqlite3_column_blob(st, 1);
        size_t idlen = (size_t)sqlite3_column_bytes(st, 1);
        const char *rec = (const char *)sqlite3_column_text(st, 2);
        size_t rlen = (size_t)sqlite3_column_bytes(st, 2);
        hst = fn(ctx, kind ? kind : "", id ? id : "", idlen, rec ? rec : "", rlen);
        if (hst != HR_OK)
            break;
    }
    sqlite3_reset(st);
    if (hst == HR_OK && rc != SQLITE_DONE)
        hst = fail(s, rc, err, "catalog: reading");
    return hst;
}

/* Rewrites the file without free pages (VACUUM) and empties its WAL, so
 * that no byte of deleted content stays in either. */
static int scrub(hr_store *s)
{
    int rc = sqlite3_exec(s->db, "VACUUM", NULL, NULL, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(s->db, "PRAGMA wal_checkpoint(TRUNCATE)", NULL, NULL, NULL);
    return rc;
}

/* Runs the delete statements `which` (bound to id as `kind` 'blob' or
 * 'text') in one transaction with secure_delete on, then scrubs. */
static hr_status forget(hr_store *s, const int *which, const bool *as_text, size_t n,
                        const char *id, size_t idlen, uint64_t *deleted, hr_error *err)
{
    *deleted = 0;
    int rc = sqlite3_exec(s->db, "PRAGMA secure_delete = ON", NULL, NULL, NULL);
    if (rc == SQLITE_OK)
        rc = run(s->st[ST_BEGIN]);
    for (size_t i = 0; rc == SQLITE_OK && i < n; i++) {
        sqlite3_stmt *st = s->st[which[i]];
        if (!st)
            continue; /* the schema predates that table */
        if (as_text[i])
            sqlite3_bind_text(st, 1, id, (int)idlen, SQLITE_STATIC);
        else
            sqlite3_bind_blob(st, 1, id, (int)idlen, SQLITE_STATIC);
        rc = run(st);
        sqlite3_clear_bindings(st);
        if (rc == SQLITE_OK)
            *deleted += (uint64_t)sqlite3_changes(s->db);
    }
    if (rc == SQLITE_OK)
        rc = run(s->st[ST_COMMIT]);
    if (rc != SQLITE_OK)
        rollback(s);
    sqlite3_exec(s->db, "PRAGMA secure_delete = OFF", NULL, NULL, NULL);
    if (rc == SQLITE_OK)
        rc = scrub(s);
    return rc == SQLITE_OK ? HR_OK : fail(s, rc, err, "forgetting a user");
}

hr_status hr_store_forget_user(hr_store *s, const char *id, size_t idlen, uint64_t *deleted,
                               hr_error *err)
{
    if (s->kind == HR_STORE_LOG) {
        static const int which[] = {ST_LOG_FORGET};
        static const bool text[] = {true};
        return forget(s, which, text, 1, id, idlen, deleted, err);
    }
    static const int which[] = {ST_FORGET_ROWS, ST_FORGET_HISTORY};
    static const bool text[] = {false, false};
    hr_status st = forget(s, which, text, 2, id, idlen, deleted, err);
    bool found;
    if (st == HR_OK && s->st[ST_CATALOG_DELETE]) {
        st = hr_store_catalog_delete(s, "user", id, idlen, &found, err);
        *deleted += found;
        /* the catalog row was deleted without secure_delete: scrub again */
        if (st == HR_OK && found) {
            int rc = scrub(s);
            if (rc != SQLITE_OK)
                st = fail(s, rc, err, "forgetting a user");
        }
    }
    return st;
}

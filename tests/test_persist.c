/*
 * test_persist.c - tests of checkpoints, the event log and crash recovery
 * (src/persist.c, src/evlog.c, src/store.c).
 *
 * Each test builds small apps (k=8, a few hundred ids, one trainer thread,
 * no negative sampling, so training is deterministic) over a database in a
 * fresh temporary directory, which a cmocka setup/teardown provides (the
 * fixture: directory, config, and an open app for most tests):
 *   - restore equals what was saved, bit for bit, for a quiet model;
 *   - incremental chains restore to the same model; pruning keeps chains;
 *   - a crash image (files copied while running) restores to the last
 *     checkpoint plus the replayed log (equal to the live model);
 *   - a child process killed with SIGKILL while ingesting and while
 *     committing a checkpoint: integrity_check passes, only complete
 *     checkpoints exist, every acknowledged event is covered by the
 *     checkpoint or in the log, and the restart replays them;
 *   - SQLite errors injected through a VFS shim (disk full, write errors as
 *     on a read-only file system), a lock held by another connection, a real
 *     full tmpfs when mounting works: events get refused, predictions go
 *     on, health says why, and it recovers once the cause is gone;
 *   - a corrupt database is refused and left untouched;
 *   - a database at the previous schema version is migrated.
 * No verdict depends on timing: the kill points are chosen by a VFS hook
 * or by counting acknowledged events, and recovery is awaited by polling a
 * condition (with a generous limit that only a hang would reach).
 */
/* ctest-labels: concurrent */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "helper_faultvfs.h"
#include "hogrec/api.h"
#include "hogrec/app.h"
#include "hogrec/persist.h"
#include "hogrec/sgd.h"
#include "hogrec/store.h"
#include "testutil.h"

/* ---- fixtures ---- */

static void cfg_set(hr_config *c, const char *name, const char *value)
{
    hr_error err;
    hr_status st = hr_config_set(c, name, value, &err);
    if (st != HR_OK)
        fail_msg("config %s=%s: %s", name, value, err.message);
}

static void make_config(hr_config *c, const char *db)
{
    hr_config_defaults(c);
    cfg_set(c, "k", "8");
    cfg_set(c, "max_users", "2000");
    cfg_set(c, "max_items", "2000");
    cfg_set(c, "context_bits", "4");
    cfg_set(c, "chunk_rows", "64");
    cfg_set(c, "threads", "1");
    cfg_set(c, "queue_capacity", "8192");
    cfg_set(c, "negative_sampling", "off");
    cfg_set(c, "checkpoint_interval", "0");
    cfg_set(c, "checkpoint_events", "0");
    cfg_set(c, "keep_checkpoints", "3");
    cfg_set(c, "full_every", "3");
    cfg_set(c, "db", db);
}

/* Each test's fixture: a fresh temporary directory, a config for the
 * database <dir>/t.db (make_config), and - with setup_open - an app open on
 * it. Tests change f->cfg before opening, open and close through app_open /
 * app_close; teardown closes what is still open (without drain) and removes
 * the directory. */
typedef struct {
    char dir[256];
    char db[300];   /* <dir>/t.db */
    hr_config cfg;  /* make_config(db) */
    hr_app *app;    /* the open app, or NULL */
    bool mounted;   /* dir is a tmpfs mount point (teardown unmounts it) */
} fixture;

/* Opens an app from f->cfg into f->app (none may be open). */
static hr_app *app_open(fixture *f)
{
    assert_null(f->app);
    hr_error err = {0};
    hr_status st = hr_app_open(&f->cfg, &f->app, &err);
    if (st != HR_OK)
        fail_msg("hr_app_open(%s): %s: %s", f->cfg.db, hr_status_to_string(st), err.message);
    return f->app;
}

static void app_close(fixture *f, bool drain)
{
    hr_app_close(f->app, drain);
    f->app = NULL;
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    snprintf(f->dir, sizeof f->dir, "%s", tu_tmpdir());
    snprintf(f->db, sizeof f->db, "%s/t.db", f->dir);
    make_config(&f->cfg, f->db);
    *state = f;
    return 0;
}

static int setup_open(void **state)
{
    setup(state);
    app_open(*state);
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    app_close(f, false);
    hr_config_free(&f->cfg);
    if (f->mounted)
        umount(f->dir);
    tu_rmtree(f->dir);
    free(f);
    return 0;
}

static char *path_in(const char *dir, const char *name)
{
    static char buf[4][512];
    static int i;
    char *p = buf[i++ & 3];
    snprintf(p, 512, "%s/%s", dir, name);
    return p;
}

/* Event i (deterministic): user/item from small pools, a context feature,
 * an explicit label and the id "e<i>". */
static json_t *event_json(uint32_t i)
{
    char user[16], item[16], id[16];
    snprintf(user, sizeof user, "u%u", (i * 7u) % 97u);
    snprintf(item, sizeof item, "i%u", (i * 13u) % 89u);
    snprintf(id, sizeof id, "e%u", i);
    return json_pack("{s:s, s:s, s:i, s:s, s:{s:s}}", "user", user, "item", item, "label",
                     (int)(i % 3 != 0), "id", id, "features", "dev", i % 2 ? "a" : "b");
}

static hr_status submit(hr_app *app, uint32_t i, uint64_t *seq, hr_error *err)
{
    json_t *o = event_json(i);
    size_t len;
    char *text = hr_api_event_text(o, &len);
    hr_event ev;
    hr_status st = hr_api_event_from_json(app->model, o, &ev, NULL, err);
    if (st == HR_OK) {
        const char *texts[1] = {text};
        st = hr_ingest_submit(app->ingest, &ev, texts, &len, 1, true, seq, err);
    }
    free(text);
    json_decref(o);
    return st;
}

static void submit_ok(hr_app *app, uint32_t from, uint32_t to)
{
    for (uint32_t i = from; i < to; i++) {
        uint64_t seq;
        hr_error err = {0};
        hr_status st = submit(app, i, &seq, &err);
        if (st != HR_OK)
            fail_msg("submit %u: %s: %s", i, hr_status_to_string(st), err.message);
    }
}

static json_t *checkpoint_ok(hr_app *app)
{
    json_t *info = NULL;
    hr_error err = {0};
    hr_status st = hr_persist_checkpoint(app->persist, &info, &err);
    if (st != HR_OK)
        fail_msg("checkpoint: %s: %s", hr_status_to_string(st), err.message);
    assert_non_null(info);
    return info;
}

static const char *info_kind(json_t *info)
{
    return json_string_value(json_object_get(info, "kind"));
}

/* ---- model snapshots ---- */

typedef struct {
    uint32_t rows[HR_TABLE_COUNT];
    float *data[HR_TABLE_COUNT];
    char **keys[HR_TABLE_COUNT]; /* NUL-terminated copies, NULL for none */
    uint32_t stride, last_seen;
} snap;

static bool id_table(int t) { return t == HR_TABLE_USER || t == HR_TABLE_ITEM; }

static void snap_take(const hr_model *m, snap *s)
{
    const hr_row_layout *L = hr_model_layout(m);
    s->stride = L->floats; /* packed rows */
    s->last_seen = L->last_seen;
    for (int t = 0; t < HR_TABLE_COUNT; t++) {
        uint32_t n = s->rows[t] = hr_model_rows(m, (hr_table_id)t);
        s->data[t] = calloc((size_t)n * L->floats, sizeof(float));
        s->keys[t] = calloc(n, sizeof(char *));
        for (uint32_t r = 0; r < n; r++) {
            size_t len = 0;
            const char *k = hr_model_key(m, (hr_table_id)t, r, &len);
            if (id_table(t) && r > 0 && !k)
                continue;
            if (k)
                s->keys[t][r] = strndup(k, len);
            hr_sgd_row_read(L, hr_model_row(m, (hr_table_id)t, r), s->data[t] + (size_t)r * L->floats);
        }
    }
}

static void snap_free(snap *s)
{
    for (int t = 0; t < HR_TABLE_COUNT; t++) {
        for (uint32_t r = 0; r < s->rows[t]; r++)
            free(s->keys[t][r]);
        free(s->keys[t]);
        free(s->data[t]);
    }
}

/* Asserts that two snapshots hold the same ids at the same rows and the same
 * row bits (all of them, or all but last_seen, a wall-clock stamp). */
static void snap_assert_equal(const snap *a, const snap *b, bool with_last_seen)
{
    for (int t = 0; t < HR_TABLE_COUNT; t++) {
        assert_int_equal(a->rows[t], b->rows[t]);
        for (uint32_t r = 0; r < a->rows[t]; r++) {
            const char *ka = a->keys[t][r], *kb = b->keys[t][r];
            if (!ka || !kb) {
                if (ka != kb)
                    fail_msg("table %d row %u: key %s vs %s", t, r, ka ? ka : "-", kb ? kb : "-");
            } else {
                assert_string_equal(ka, kb);
            }
            if (id_table(t) && r > 0 && !ka)
                continue;
            const float *ra = a->data[t] + (size_t)r * a->stride;
            const float *rb = b->data[t] + (size_t)r * b->stride;
            for (uint32_t f = 0; f < a->stride; f++) {
                if (!with_last_seen && f == a->last_seen)
                    continue;
                if (memcmp(&ra[f], &rb[f], sizeof(float)) != 0)
                    fail_msg("table %d row %u float %u: %a vs %a", t, r, f, ra[f], rb[f]);
            }
        }
    }
}

/* ---- direct SQLite checks ---- */

static sqlite3 *db_open(const char *path)
{
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    return db;
}

static int64_t db_int(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        fail_msg("%s: %s", sql, sqlite3_errmsg(db));
    int64_t v = -1;
    if (sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

static void assert_integrity(const char *path)
{
    sqlite3 *db = db_open(path);
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    const char *r = (const char *)sqlite3_column_text(st, 0);
    if (strcmp(r, "ok") != 0)
        fail_msg("integrity_check(%s): %s", path, r);
    sqlite3_finalize(st);
    sqlite3_close(db);
}

static void copy_file(const char *from, const char *to)
{
    FILE *in = fopen(from, "rb");
    if (!in)
        return; /* e.g. no -wal file */
    FILE *out = fopen(to, "wb");
    assert_non_null(out);
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        assert_int_equal(fwrite(buf, 1, n, out), n);
    fclose(in);
    fclose(out);
}

/* ---- restore ---- */

static void restore_bit_for_bit(fixture *f)
{
    hr_app *a = f->app;
    assert_null(hr_app_not_ready(a));
    submit_ok(a, 1, 600);
    hr_trainer_wait_idle(a->trainer);
    json_t *info = checkpoint_ok(a);
    assert_string_equal(info_kind(info), "full");
    json_decref(info);
    snap sa;
    snap_take(a->model, &sa);
    uint64_t updates = hr_trainer_updates(a->trainer);
    assert_true(updates >= 599); /* events 1..599 */
    app_close(f, true); /* final checkpoint of a quiet model: same rows */

    hr_app *b = app_open(f);
    snap sb;
    snap_take(b->model, &sb);
    snap_assert_equal(&sa, &sb, true);
    /* the schedule's clock goes on from the checkpoint */
    assert_int_equal(hr_trainer_updates(b->trainer), updates);
    json_t *stats = hr_persist_stats(b->persist);
    assert_true(json_integer_value(json_object_get(json_object_get(stats, "start"),
                                                   "restored_rows")) > 0);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(stats, "start"),
                                                        "replayed")), 0);
    json_decref(stats);
    /* New events continue after the old seqs. */
    uint64_t seq;
    hr_error err;
    assert_int_equal(submit(b, 1000, &seq, &err), HR_OK);
    assert_int_equal(seq, 600);
    app_close(f, true);
    snap_free(&sa);
    snap_free(&sb);
}

static void test_restore_bit_for_bit(void **state)
{
    restore_bit_for_bit(*state);
}

/* Adam's moments and per-row step counts (a third block of each row) are
 * in the checkpoint: the restored rows equal the saved ones, state and all. */
static void test_restore_bit_for_bit_adam(void **state)
{
    fixture *f = *state;
    json_error_t jerr;
    json_decref(f->cfg.schedule);
    f->cfg.schedule =
        json_loads("{\"optimizer\":\"adam\",\"type\":\"constant\",\"eta0\":0.01}", 0, &jerr);
    assert_non_null(f->cfg.schedule);
    app_open(f);
    assert_true(hr_model_supports(f->app->model, HR_OPT_ADAM));
    const hr_row_layout *La = hr_model_layout(f->app->model);
    assert_int_equal(La->floats, 3 * La->stride);
    restore_bit_for_bit(f);
    /* the step counts made it through: the user rows were stepped */
    hr_app *b = app_open(f);
    const hr_row_layout *L = hr_model_layout(b->model);
    uint64_t steps = 0;
    double vsum = 0; /* second moments start at 0: > 0 only if restored */
    for (uint32_t r = 0; r < hr_model_rows(b->model, HR_TABLE_USER); r++) {
        const float *row = hr_model_row(b->model, HR_TABLE_USER, r);
        uint32_t c;
        memcpy(&c, row + L->adam + L->k + 1, sizeof c);
        steps += c;
        for (uint32_t d = 0; d <= L->k; d++)
            vsum += row[L->adam_v + d];
    }
    assert_true(steps >= 599);
    assert_true(vsum > 0);
    app_close(f, false);
}

/* With min_count, an id below it trains through the shared row 0, but its
 * own row still counts its events: an incremental checkpoint must save that
 * count, or after a restart the id needs min_count events again. */
static void test_min_count_counts_survive_incremental(void **state)
{
    fixture *f = *state;
    cfg_set(&f->cfg, "min_count", "1000"); /* every id stays below it */
    hr_app *a = app_open(f);
    submit_ok(a, 1, 100);
    hr_trainer_wait_idle(a->trainer);
    json_t *info = checkpoint_ok(a);
    assert_string_equal(info_kind(info), "full");
    json_decref(info);
    submit_ok(a, 100, 300);
    hr_trainer_wait_idle(a->trainer);
    info = checkpoint_ok(a);
    assert_string_equal(info_kind(info), "incremental");
    json_decref(info);
    snap sa;
    snap_take(a->model, &sa);
    app_close(f, false); /* no final checkpoint: the incremental one is what there is */

    hr_app *b = app_open(f);
    snap sb;
    snap_take(b->model, &sb);
    snap_assert_equal(&sa, &sb, true);
    app_close(f, false);
    snap_free(&sa);
    snap_free(&sb);
}

static void test_incremental_chain(void **state)
{
    fixture *f = *state;
    hr_app *a = f->app; /* full_every 3, keep 3 */
    submit_ok(a, 1, 400);
    hr_trainer_wait_idle(a->trainer);
    json_t *i1 = checkpoint_ok(a);
    assert_string_equal(info_kind(i1), "full");
    int64_t full_rows = json_integer_value(json_object_get(i1, "rows"));
    /* Touch a few ids only: events 1..20 use 20 users and 20 items. */
    submit_ok(a, 1, 21);
    hr_trainer_wait_idle(a->trainer);
    json_t *i2 = checkpoint_ok(a);
    assert_string_equal(info_kind(i2), "incremental");
    int64_t inc_rows = json_integer_value(json_object_get(i2, "rows"));
    assert_true(inc_rows > 0 && inc_rows < full_rows / 2);
    submit_ok(a, 400, 450); /* new ids too */
    hr_trainer_wait_idle(a->trainer);
    json_t *i3 = checkpoint_ok(a);
    assert_string_equal(info_kind(i3), "incremental");
    json_t *i4 = checkpoint_ok(a); /* nothing changed */
    assert_string_equal(info_kind(i4), "incremental");
    assert_int_equal(json_integer_value(json_object_get(i4, "rows")), 0);
    snap sa;
    snap_take(a->model, &sa);
    app_close(f, false); /* final: the 4th increment -> full (full_every 3) */

    hr_app *b = app_open(f);
    snap sb;
    snap_take(b->model, &sb);
    snap_assert_equal(&sa, &sb, true);
    app_close(f, false);
    snap_free(&sb);

    /* Restore through the chain itself: drop the final full checkpoint. */
    sqlite3 *h = db_open(f->db);
    int64_t last = db_int(h, "SELECT max(id) FROM checkpoint");
    int64_t full_count = db_int(h, "SELECT count(*) FROM checkpoint WHERE kind = 'full'");
    assert_true(full_count >= 2);
    /* The closes above each wrote a checkpoint: keep only the chain 1..4. */
    char sql[400];
    snprintf(sql, sizeof sql, "DELETE FROM checkpoint WHERE id > 4; DELETE FROM schedule_history WHERE checkpoint > 4; "
             "DELETE FROM serving_state WHERE checkpoint > 4; "
             "DELETE FROM serving_history WHERE checkpoint > 4; "
             "DELETE FROM serving_blob WHERE checkpoint > 4; DELETE FROM row WHERE id >= %lld",
             (long long)5 << 40);
    assert_int_equal(sqlite3_exec(h, sql, NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(db_int(h, "SELECT count(*) FROM checkpoint WHERE base = 1"), 4);
    assert_true(last > 4);
    sqlite3_close(h);
    hr_app *c = app_open(f);
    snap sc;
    snap_take(c->model, &sc);
    snap_assert_equal(&sa, &sc, true);
    app_close(f, false);
    snap_free(&sc);
    snap_free(&sa);
    json_decref(i1);
    json_decref(i2);
    json_decref(i3);
    json_decref(i4);
}

/* An id that expires stays gone after a restart from an incremental chain. */
static void test_expired_id_stays_gone(void **state)
{
    fixture *f = *state;
    cfg_set(&f->cfg, "expire_seconds", "1000");
    hr_app *a = app_open(f);
    submit_ok(a, 1, 50);
    hr_trainer_wait_idle(a->trainer);
    json_t *info = checkpoint_ok(a); /* full: every id present */
    json_decref(info);
    uint64_t ids = (uint64_t)hr_model_id_count(a->model, HR_TABLE_USER) +
                   hr_model_id_count(a->model, HR_TABLE_ITEM);
    assert_true(ids > 0);
    /* seen from a day later, every id is past the 1000 s expiry */
    assert_int_equal(hr_model_expire(a->model, hr_model_clock(a->model) + 86400), ids);
    info = checkpoint_ok(a); /* incremental: the removals */
    assert_string_equal(info_kind(info), "incremental");
    json_decref(info);
    app_close(f, false);

    hr_app *b = app_open(f);
    assert_int_equal(hr_model_id_count(b->model, HR_TABLE_USER), 0);
    assert_int_equal(hr_model_id_count(b->model, HR_TABLE_ITEM), 0);
    assert_int_equal(hr_model_lookup(b->model, HR_TABLE_USER, "u7", 2), HR_ID_NONE);
    app_close(f, false);
}

static void test_keep_prunes_whole_chains(void **state)
{
    fixture *f = *state;
    hr_app *a = f->app; /* keep 3, full_every 3 */
    for (int i = 0; i < 9; i++) {
        submit_ok(a, (uint32_t)(1 + 10 * i), (uint32_t)(11 + 10 * i));
        hr_trainer_wait_idle(a->trainer);
        json_decref(checkpoint_ok(a));
    }
    /* ids 1..9: full at 1, 5, 9. The newest 3 (7, 8, 9) need chain 5. */
    sqlite3 *h = db_open(f->db);
    assert_int_equal(db_int(h, "SELECT min(id) FROM checkpoint"), 5);
    assert_int_equal(db_int(h, "SELECT count(*) FROM row WHERE id < (5 << 40)"), 0);
    assert_int_equal(db_int(h, "SELECT count(*) FROM checkpoint WHERE complete = 0"), 0);
    sqlite3_close(h);
    app_close(f, false);
}

/* A crash image: copy the files while the app runs (WAL included), open the
 * copy: last checkpoint + replayed log = the live model. */
static void test_crash_image_replays_log(void **state)
{
    fixture *f = *state;
    hr_app *a = f->app;
    submit_ok(a, 1, 300);
    hr_trainer_wait_idle(a->trainer);
    json_decref(checkpoint_ok(a));
    submit_ok(a, 300, 520);
    hr_trainer_wait_idle(a->trainer);
    snap sa;
    snap_take(a->model, &sa);
    const char *files[] = {"t.db", "t.db-wal", "t.db-events", "t.db-events-wal"};
    for (size_t i = 0; i < HR_ARRAY_LEN(files); i++) {
        char to[600];
        snprintf(to, sizeof to, "%s/copy-%s", f->dir, files[i]);
        copy_file(path_in(f->dir, files[i]), to);
    }
    app_close(f, true);

    cfg_set(&f->cfg, "db", path_in(f->dir, "copy-t.db"));
    hr_app *b = app_open(f);
    json_t *stats = hr_persist_stats(b->persist);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(stats, "start"),
                                                        "replayed")), 220);
    json_decref(stats);
    snap sb;
    snap_take(b->model, &sb);
    snap_assert_equal(&sa, &sb, false);
    uint64_t seq;
    hr_error err;
    assert_int_equal(submit(b, 9999, &seq, &err), HR_OK);
    assert_int_equal(seq, 520);
    app_close(f, true);
    snap_free(&sa);
    snap_free(&sb);
}

/* ---- kill -9 ---- */

/* What the child tells the parent, one fixed-size record per write. */
typedef struct {
    char tag;     /* 'A': event acknowledged; 'K': about to be killed */
    uint32_t i;   /* event number */
    uint64_t seq; /* its seq */
} report;

static int report_fd = -1;

static void send_report(char tag, uint32_t i, uint64_t seq)
{
    report r = {tag, i, seq};
    ssize_t n = write(report_fd, &r, sizeof r);
    (void)n;
}

static void hang_in_commit(void)
{
    send_report('K', 0, 0);
    for (;;)
        pause();
}

/* Child: ingest forever, acknowledging each event; a checkpoint every
 * `every` events; with hang_at_ckpt, the checkpoint after event
 * hang_at_ckpt blocks inside its commit (VFS hook) for the parent to kill. */
static void child_main(const hr_config *c, uint32_t every, uint32_t hang_at_ckpt)
{
    hr_app *app;
    hr_error err;
    if (hr_app_open(c, &app, &err) != HR_OK)
        _exit(3);
    for (uint32_t i = 1;; i++) {
        uint64_t seq;
        if (submit(app, i, &seq, &err) == HR_OK)
            send_report('A', i, seq);
        if (i % every == 0) {
            if (hang_at_ckpt && i >= hang_at_ckpt) {
                hr_trainer_wait_idle(app->trainer);
                fv_on_write(".db-wal", 2, hang_in_commit);
            }
            hr_persist_checkpoint(app->persist, NULL, &err);
        }
    }
}

typedef struct {
    report *r;
    size_t n, cap;
    bool killed_marker;
} reports;

static bool read_report(int fd, report *r)
{
    size_t got = 0;
    while (got < sizeof *r) {
        ssize_t n = read(fd, (char *)r + got, sizeof *r - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return false;
        got += (size_t)n;
    }
    return true;
}

/* Forks a child running child_main, reads its reports until `acks`
 * acknowledgements (or its 'K' marker when wait_marker), kills it with
 * SIGKILL, then reads what is left in the pipe. */
static void run_and_kill(const hr_config *c, uint32_t every, uint32_t hang_at, size_t acks,
                         bool wait_marker, reports *out)
{
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        report_fd = fds[1];
        child_main(c, every, hang_at);
        _exit(0);
    }
    close(fds[1]);
    memset(out, 0, sizeof *out);
    report r;
    bool killed = false;
    while (read_report(fds[0], &r)) {
        if (out->n == out->cap) {
            out->cap = out->cap ? out->cap * 2 : 1024;
            out->r = realloc(out->r, out->cap * sizeof *out->r);
        }
        if (r.tag == 'K')
            out->killed_marker = true;
        else
            out->r[out->n++] = r;
        if (!killed && (wait_marker ? out->killed_marker : out->n >= acks)) {
            kill(pid, SIGKILL);
            killed = true;
        }
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    close(fds[0]);
    assert_true(killed);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
}

/* The databases pass integrity_check, hold only complete checkpoints, and
 * every acknowledged event is covered by the checkpoint or in the log; then
 * a restart replays the log tail and knows every acknowledged id. */
static void check_recovery(fixture *f, const reports *rep, int64_t expect_ckpts_min)
{
    const char *db = f->db;
    char logdb[600];
    snprintf(logdb, sizeof logdb, "%s-events", db);
    assert_integrity(db);
    assert_integrity(logdb);
    sqlite3 *h = db_open(db);
    assert_int_equal(db_int(h, "SELECT count(*) FROM checkpoint WHERE complete = 0"), 0);
    int64_t nck = db_int(h, "SELECT count(*) FROM checkpoint");
    assert_true(nck >= expect_ckpts_min);
    int64_t cseq = nck ? db_int(h, "SELECT seq FROM checkpoint ORDER BY id DESC LIMIT 1") : 0;
    sqlite3_close(h);
    sqlite3 *l = db_open(logdb);
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(l, "SELECT event FROM event_log WHERE seq = ?", -1, &st,
                                        NULL),
                     SQLITE_OK);
    size_t in_log = 0;
    for (size_t k = 0; k < rep->n; k++) {
        const report *r = &rep->r[k];
        if ((int64_t)r->seq <= cseq)
            continue; /* covered by the checkpoint */
        sqlite3_bind_int64(st, 1, (int64_t)r->seq);
        if (sqlite3_step(st) != SQLITE_ROW)
            fail_msg("acknowledged seq %" PRIu64 " (event %u) is lost", r->seq, r->i);
        char want[32];
        snprintf(want, sizeof want, "\"id\":\"e%u\"", r->i);
        assert_non_null(strstr((const char *)sqlite3_column_text(st, 0), want));
        sqlite3_reset(st);
        in_log++;
    }
    sqlite3_finalize(st);
    int64_t tail = 0;
    {
        char q[100];
        snprintf(q, sizeof q, "SELECT count(*) FROM event_log WHERE seq > %lld", (long long)cseq);
        tail = db_int(l, q);
    }
    sqlite3_close(l);
    assert_true((size_t)tail >= in_log);

    hr_app *app = app_open(f);
    json_t *stats = hr_persist_stats(app->persist);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(stats, "start"),
                                                        "replayed")), tail);
    json_decref(stats);
    hr_trainer_counts tc;
    hr_trainer_get_counts(app->trainer, &tc);
    assert_int_equal(tc.trained, (uint64_t)tail);
    for (size_t k = 0; k < rep->n; k++) {
        json_t *o = event_json(rep->r[k].i);
        const char *u = json_string_value(json_object_get(o, "user"));
        const char *it = json_string_value(json_object_get(o, "item"));
        assert_true(hr_model_lookup(app->model, HR_TABLE_USER, u, strlen(u)) != HR_ID_NONE);
        assert_true(hr_model_lookup(app->model, HR_TABLE_ITEM, it, strlen(it)) != HR_ID_NONE);
        json_decref(o);
    }
    /* New seqs never reuse acknowledged ones. */
    uint64_t seq, maxack = 0;
    for (size_t k = 0; k < rep->n; k++)
        if (rep->r[k].seq > maxack)
            maxack = rep->r[k].seq;
    hr_error err;
    assert_int_equal(submit(app, 777777, &seq, &err), HR_OK);
    assert_true(seq > maxack);
    app_close(f, true);
}

static void test_kill9_during_ingest(void **state)
{
    fixture *f = *state;
    reports rep;
    run_and_kill(&f->cfg, 700, 0, 2500, false, &rep);
    assert_true(rep.n >= 2500);
    check_recovery(f, &rep, 1);
    free(rep.r);
}

static void test_kill9_during_checkpoint(void **state)
{
    fixture *f = *state;
    fv_install();
    reports rep;
    /* Checkpoints after 500 and 1000 events commit; the one after 1500
     * hangs after writing its second WAL frame, and is killed there. */
    run_and_kill(&f->cfg, 500, 1500, 0, true, &rep);
    assert_true(rep.killed_marker);
    assert_true(rep.n >= 1500);
    sqlite3 *h = db_open(f->db); /* recovery of the WAL drops the torn commit */
    assert_int_equal(db_int(h, "SELECT max(id) FROM checkpoint"), 2);
    sqlite3_close(h);
    check_recovery(f, &rep, 2);
    free(rep.r);
}

/* ---- faults ---- */

static void wait_healthy(hr_app *app)
{
    for (int i = 0; i < 3000 && hr_app_not_ready(app); i++) {
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    const char *why = hr_app_not_ready(app);
    if (why)
        fail_msg("not recovered after 30 s: %s", why);
}

static hr_event probe_event(hr_app *app)
{
    json_t *o = event_json(5);
    hr_event ev;
    hr_error err;
    assert_int_equal(hr_api_event_from_json(app->model, o, &ev, NULL, &err), HR_OK);
    json_decref(o);
    return ev;
}

/* The event log cannot write (error rc): no 202, predictions go on, health
 * says why; recovery once writes work again. */
static void log_fault(fixture *f, int rc, const char *expect)
{
    fv_install();
    hr_app *a = app_open(f);
    submit_ok(a, 1, 100);
    hr_trainer_wait_idle(a->trainer);
    hr_event ev = probe_event(a);
    double before = hr_model_predict(a->model, &ev);

    fv_fail_writes(".db-events-wal", rc);
    uint64_t seq;
    hr_error err = {0};
    hr_status st = submit(a, 100, &seq, &err);
    assert_int_equal(st, HR_EIO);
    const char *why = hr_app_not_ready(a);
    assert_non_null(why);
    if (!strstr(why, expect))
        fail_msg("health '%s' does not say '%s'", why, expect);
    assert_int_equal(submit(a, 101, &seq, &err), HR_EIO); /* fails fast now */
    double during = hr_model_predict(a->model, &ev);
    assert_true(during > 0 && during < 1);
    (void)before;

    fv_fail_writes(NULL, 0);
    wait_healthy(a);
    submit_ok(a, 102, 110);
    hr_trainer_wait_idle(a->trainer);
    app_close(f, true);
    assert_integrity(f->db);
    char logdb[600];
    snprintf(logdb, sizeof logdb, "%s-events", f->db);
    assert_integrity(logdb);
}

static void test_log_disk_full(void **state)
{
    log_fault(*state, SQLITE_FULL, "full");
}

static void test_log_write_error(void **state)
{
    log_fault(*state, SQLITE_IOERR_WRITE, "I/O");
}

static void test_checkpoint_disk_full(void **state)
{
    fixture *f = *state;
    fv_install();
    hr_app *a = app_open(f);
    submit_ok(a, 1, 200);
    hr_trainer_wait_idle(a->trainer);
    json_decref(checkpoint_ok(a));
    submit_ok(a, 1, 50);
    hr_trainer_wait_idle(a->trainer);

    fv_fail_writes(".db-wal", SQLITE_FULL);
    json_t *info = NULL;
    hr_error err = {0};
    assert_int_equal(hr_persist_checkpoint(a->persist, &info, &err), HR_EFULL);
    assert_null(info);
    const char *why = hr_app_not_ready(a);
    assert_non_null(why);
    assert_non_null(strstr(why, "full"));
    submit_ok(a, 50, 60); /* the log still keeps its promise */
    fv_fail_writes(NULL, 0);
    info = checkpoint_ok(a);
    assert_string_equal(info_kind(info), "full"); /* marks taken by the failed one */
    json_decref(info);
    assert_null(hr_app_not_ready(a));
    snap sa;
    hr_trainer_wait_idle(a->trainer);
    json_decref(checkpoint_ok(a));
    snap_take(a->model, &sa);
    app_close(f, true);
    hr_app *b = app_open(f);
    snap sb;
    snap_take(b->model, &sb);
    snap_assert_equal(&sa, &sb, true);
    app_close(f, true);
    snap_free(&sa);
    snap_free(&sb);
}

static void test_busy(void **state)
{
    fixture *f = *state;
    hr_app *a = f->app;
    submit_ok(a, 1, 100);
    hr_trainer_wait_idle(a->trainer);
    sqlite3 *h = db_open(f->db);
    sqlite3_busy_timeout(h, 0);
    assert_int_equal(sqlite3_exec(h, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    hr_error err = {0};
    assert_int_equal(hr_persist_checkpoint(a->persist, NULL, &err), HR_EBUSY);
    const char *why = hr_app_not_ready(a);
    assert_non_null(why);
    assert_non_null(strstr(why, "locked"));
    submit_ok(a, 100, 110); /* the log is another file: events still accepted */
    assert_int_equal(sqlite3_exec(h, "ROLLBACK", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(h);
    wait_healthy(a); /* the periodic thread retries the checkpoint */
    json_t *stats = hr_persist_stats(a->persist);
    assert_true(json_integer_value(json_object_get(json_object_get(stats, "checkpoints"),
                                                   "taken")) >= 1);
    json_decref(stats);
    app_close(f, true);
}

/* A real full file system, when this process may mount a tmpfs. */
static void test_tmpfs_full(void **state)
{
    fixture *f = *state;
    if (mount("tmpfs", f->dir, "tmpfs", 0, "size=1m") != 0)
        TU_SKIP("cannot mount a tmpfs here (%s)", strerror(errno));
    f->mounted = true;
    hr_app *a = app_open(f);
    submit_ok(a, 1, 50);
    /* Fill the file system. */
    char *filler = path_in(f->dir, "filler");
    int fd = open(filler, O_WRONLY | O_CREAT, 0600);
    assert_true(fd >= 0);
    char block[4096];
    memset(block, 0x5a, sizeof block);
    while (write(fd, block, sizeof block) == (ssize_t)sizeof block)
        ;
    close(fd);
    /* Events until the log fails (its WAL had some room left). */
    hr_status st = HR_OK;
    hr_error err = {0};
    uint64_t seq;
    for (uint32_t i = 50; i < 200000 && st == HR_OK; i++)
        st = submit(a, i, &seq, &err);
    assert_int_equal(st, HR_EIO);
    assert_non_null(hr_app_not_ready(a));
    hr_event ev = probe_event(a);
    double p = hr_model_predict(a->model, &ev);
    assert_true(p > 0 && p < 1);
    unlink(filler);
    wait_healthy(a);
    submit_ok(a, 300000, 300010);
    app_close(f, true);
    assert_integrity(f->db);
    umount(f->dir);
    f->mounted = false;
}

static void test_corrupt_refused(void **state)
{
    fixture *f = *state;
    const char *db = f->db;
    hr_app *a = f->app;
    submit_ok(a, 1, 100);
    hr_trainer_wait_idle(a->trainer);
    app_close(f, true);
    /* Overwrite the header. */
    int fd = open(db, O_WRONLY);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, "this is not a database!!", 24, 0), 24);
    close(fd);
    struct stat before, after;
    assert_int_equal(stat(db, &before), 0);
    hr_app *b = NULL;
    hr_error err = {0};
    assert_int_equal(hr_app_open(&f->cfg, &b, &err), HR_ECORRUPT);
    assert_null(b);
    assert_non_null(strstr(err.message, "corrupt"));
    assert_non_null(strstr(err.message, "refusing"));
    assert_int_equal(stat(db, &after), 0);
    assert_int_equal(before.st_size, after.st_size);
    char head[24];
    fd = open(db, O_RDONLY);
    assert_int_equal(read(fd, head, sizeof head), 24);
    close(fd);
    assert_memory_equal(head, "this is not a database!!", 24);
}

/* A valid header but damaged pages under the checkpoint rows. */
static void test_corrupt_pages_refused(void **state)
{
    fixture *f = *state;
    const char *db = f->db;
    hr_app *a = f->app;
    submit_ok(a, 1, 300);
    hr_trainer_wait_idle(a->trainer);
    app_close(f, true);
    struct stat sb;
    assert_int_equal(stat(db, &sb), 0);
    int fd = open(db, O_WRONLY);
    assert_true(fd >= 0);
    char junk[4096];
    memset(junk, 0x5a, sizeof junk);
    for (off_t off = 2 * 4096; off < sb.st_size; off += 4096)
        assert_int_equal(pwrite(fd, junk, sizeof junk, off), (ssize_t)sizeof junk);
    close(fd);
    hr_app *b = NULL;
    hr_error err = {0};
    assert_int_equal(hr_app_open(&f->cfg, &b, &err), HR_ECORRUPT);
    assert_null(b);
    assert_non_null(strstr(err.message, "refusing"));
}

static void test_migration_from_v1(void **state)
{
    fixture *f = *state;
    const char *db = f->db;
    /* A database created at schema version 1 by this store. */
    hr_store_options o = {.kind = HR_STORE_MAIN, .sync_full = true, .busy_ms = 1000,
                          .target_version = 1};
    hr_store *s;
    hr_error err;
    assert_int_equal(hr_store_open(db, &o, &s, &err), HR_OK);
    assert_int_equal(hr_store_user_version(s), 1);
    hr_store_close(s);
    sqlite3 *h = db_open(db);
    assert_int_equal(db_int(h, "SELECT count(*) FROM sqlite_master WHERE name = 'schedule_history'"),
                     0);
    sqlite3_close(h);
    /* The app migrates it and works; the migrated schema keeps checkpoints. */
    hr_app *a = app_open(f);
    submit_ok(a, 1, 100);
    hr_trainer_wait_idle(a->trainer);
    json_decref(checkpoint_ok(a));
    snap sa;
    snap_take(a->model, &sa);
    app_close(f, true);
    h = db_open(db);
    assert_int_equal(db_int(h, "PRAGMA user_version"), hr_store_latest_version(HR_STORE_MAIN));
    assert_true(db_int(h, "SELECT count(*) FROM schedule_history") > 0);
    /* Back to version 1 by hand (as an older binary left it), with a
     * checkpoint in it: the restore after migrating equals it. */
    assert_int_equal(sqlite3_exec(h,
                                  "DROP TABLE schedule_history; DROP TABLE serving_state; "
                                  "DROP TABLE serving_history; DROP TABLE serving_blob; DROP TABLE catalog; "
                                  "PRAGMA user_version = 1",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(h);
    hr_app *b = app_open(f);
    snap sb;
    snap_take(b->model, &sb);
    snap_assert_equal(&sa, &sb, true);
    app_close(f, true);
    h = db_open(db);
    assert_int_equal(db_int(h, "PRAGMA user_version"), hr_store_latest_version(HR_STORE_MAIN));
    sqlite3_close(h);
    snap_free(&sa);
    snap_free(&sb);
}

static void test_newer_schema_refused(void **state)
{
    fixture *f = *state;
    app_close(f, true);
    sqlite3 *h = db_open(f->db);
    assert_int_equal(sqlite3_exec(h, "PRAGMA user_version = 99", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(h);
    hr_app *b = NULL;
    hr_error err = {0};
    assert_int_not_equal(hr_app_open(&f->cfg, &b, &err), HR_OK);
    assert_non_null(strstr(err.message, "newer"));
}

static void test_shape_mismatch_refused(void **state)
{
    fixture *f = *state;
    submit_ok(f->app, 1, 10);
    app_close(f, true);
    cfg_set(&f->cfg, "k", "16");
    hr_app *b = NULL;
    hr_error err = {0};
    assert_int_equal(hr_app_open(&f->cfg, &b, &err), HR_EINVAL);
    assert_non_null(strstr(err.message, "shape"));
}

/* bf16 rows (storage bf16) restore bit for bit: their packed rows, factors
 * as bf16 and state as f32, are what the checkpoint holds. */
static void test_restore_bit_for_bit_bf16(void **state)
{
    fixture *f = *state;
    cfg_set(&f->cfg, "storage", "bf16");
    app_open(f);
    const hr_row_layout *L = hr_model_layout(f->app->model);
    assert_int_equal(L->storage, HR_STORAGE_BF16);
    assert_true(L->stride < hr_row_layout_f32(L).stride); /* the weights block */
    restore_bit_for_bit(f);
}

/* A checkpoint records its storage; a restore into the other one is
 * refused (not converted) with a message naming both, either way round. */
static void test_storage_mismatch_refused(void **state)
{
    fixture *f = *state;
    const char *const from[] = {"bf16", "f32"}, *const to[] = {"f32", "bf16"};
    for (int i = 0; i < 2; i++) {
        char dbname[64];
        snprintf(dbname, sizeof dbname, "s%d.db", i);
        cfg_set(&f->cfg, "db", path_in(f->dir, dbname));
        cfg_set(&f->cfg, "storage", from[i]);
        app_open(f);
        submit_ok(f->app, 1, 10);
        app_close(f, true);
        cfg_set(&f->cfg, "storage", to[i]);
        hr_app *b = NULL;
        hr_error err = {0};
        assert_int_equal(hr_app_open(&f->cfg, &b, &err), HR_EINVAL);
        assert_null(b);
        char want[128];
        snprintf(want, sizeof want, "stores embedding weights as %s; this config stores them as %s",
                 from[i], to[i]);
        if (!strstr(err.message, want))
            fail_msg("message: %s", err.message);
        cfg_set(&f->cfg, "storage", from[i]); /* and the same storage restores */
        app_open(f);
        app_close(f, false);
    }
}

static void test_interval_durability(void **state)
{
    fixture *f = *state;
    cfg_set(&f->cfg, "durability", "interval");
    cfg_set(&f->cfg, "sync_interval_ms", "5");
    hr_app *a = app_open(f);
    submit_ok(a, 1, 300);
    hr_trainer_wait_idle(a->trainer);
    snap sa;
    snap_take(a->model, &sa);
    app_close(f, true); /* commits what is buffered */
    a = app_open(f);
    snap sb;
    snap_take(a->model, &sb);
    snap_assert_equal(&sa, &sb, true);
    app_close(f, true);
    snap_free(&sa);
    snap_free(&sb);
}

int main(void)
{
    /* setup_open: the test starts with f->app open on <dir>/t.db; setup:
     * with the directory and config only (the test opens when ready). */
#define OPEN(t) cmocka_unit_test_setup_teardown(t, setup_open, teardown)
#define BARE(t) cmocka_unit_test_setup_teardown(t, setup, teardown)
    const struct CMUnitTest tests[] = {
        OPEN(test_restore_bit_for_bit),
        cmocka_unit_test_setup_teardown(test_restore_bit_for_bit_adam, setup, teardown),
        BARE(test_min_count_counts_survive_incremental),
        OPEN(test_incremental_chain),
        OPEN(test_keep_prunes_whole_chains),
        BARE(test_expired_id_stays_gone),
        OPEN(test_crash_image_replays_log),
        BARE(test_kill9_during_ingest),
        BARE(test_kill9_during_checkpoint),
        BARE(test_log_disk_full),
        BARE(test_log_write_error),
        BARE(test_checkpoint_disk_full),
        OPEN(test_busy),
        BARE(test_tmpfs_full),
        OPEN(test_corrupt_refused),
        OPEN(test_corrupt_pages_refused),
        BARE(test_migration_from_v1),
        OPEN(test_newer_schema_refused),
        OPEN(test_shape_mismatch_refused),
        BARE(test_restore_bit_for_bit_bf16),
        BARE(test_storage_mismatch_refused),
        BARE(test_interval_durability),
    };
#undef OPEN
#undef BARE
    return cmocka_run_group_tests(tests, NULL, NULL);
}

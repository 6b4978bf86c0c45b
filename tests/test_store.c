/*
 * test_store.c - tests of the SQLite layer (src/store.c).
 *
 * Migrations: a missing and an empty file are migrated to the latest
 * version (which is the highest NNN of sql/, read from the source tree), a
 * file left at version 1 is migrated up, a newer one is refused. Files
 * that are not a database, or fail quick_check, are refused as HR_ECORRUPT
 * and left byte for byte as they were. Checkpoints: rows (keys, no key,
 * empty data), the schedule history (NaN losses), and the serving state
 * (003: header, users' recent items, blobs in parts) read back as written;
 * an incremental chain reads newest first and starts at its full base; the
 * checkpoints kept are the newest `keep` with their chains. Transactions:
 * a checkpoint is invisible to another connection until committed, an
 * abort or a close drops it, and a second writer is HR_EBUSY. Event log:
 * writes, arrival times (NaN when unknown or below version 2), trim, the
 * last seq surviving a full trim, a scan stopped by its callback, and a
 * write that fails (injected disk full) changes nothing. Multi-row inserts:
 * batches around the statement size store exactly the rows one INSERT per
 * row stores, and a disk filling mid-statement fails the write as a whole.
 */
#include <dirent.h>
#include <math.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "helper_faultvfs.h"
#include "hogrec/store.h"
#include "testutil.h"

static const hr_store_options MAIN_OPT = {.kind = HR_STORE_MAIN, .sync_full = true,
                                          .busy_ms = 1000};
static const hr_store_options LOG_OPT = {.kind = HR_STORE_LOG, .sync_full = true,
                                         .busy_ms = 1000};

static hr_store *open_ok(const char *path, const hr_store_options *o)
{
    hr_store *s = NULL;
    hr_error err = {{0}, {0}};
    hr_status st = hr_store_open(path, o, &s, &err);
    if (st != HR_OK)
        fail_msg("hr_store_open %s: %s: %s", path, hr_status_to_string(st), err.message);
    return s;
}

static char *path_in(const char *dir, const char *name)
{
    static char p[4][512];
    static int i;
    char *out = p[i++ % 4];
    snprintf(out, 512, "%s/%s", dir, name);
    return out;
}

static int db_int(const char *path, const char *sql)
{
    sqlite3 *h;
    assert_int_equal(sqlite3_open_v2(path, &h, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(h, sql, -1, &st, NULL), SQLITE_OK);
    int v = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int(st, 0) : -1;
    sqlite3_finalize(st);
    sqlite3_close(h);
    return v;
}

/* The highest NNN of sql/NNN_*.sql (main) or sql/log_NNN_*.sql (log). */
static int newest_migration(bool log)
{
    const char *src = getenv("HOGREC_SOURCE_DIR");
    if (!src)
        return -1;
    char dir[600];
    snprintf(dir, sizeof dir, "%s/sql", src);
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    int best = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        const char *name = e->d_name;
        bool is_log = strncmp(name, "log_", 4) == 0;
        if (is_log != log || !strstr(name, ".sql"))
            continue;
        int v = atoi(is_log ? name + 4 : name);
        if (v > best)
            best = v;
    }
    closedir(d);
    return best;
}

/* ---- migrations ---- */

static void test_migrations_from_nothing(void **state)
{
    (void)state;
    int main_v = newest_migration(false), log_v = newest_migration(true);
    if (main_v < 0)
        fail_msg("HOGREC_SOURCE_DIR not set (run through ctest)");
    assert_int_equal(hr_store_latest_version(HR_STORE_MAIN), main_v);
    assert_int_equal(hr_store_latest_version(HR_STORE_LOG), log_v);
    assert_true(main_v >= 3); /* the serving state this file tests */
    const char *dir = tu_tmpdir();
    /* a missing file and an empty one */
    char *empty = path_in(dir, "empty.db");
    FILE *f = fopen(empty, "w");
    assert_non_null(f);
    fclose(f);
    const char *paths[] = {path_in(dir, "new.db"), empty};
    for (int i = 0; i < 2; i++) {
        hr_store *s = open_ok(paths[i], &MAIN_OPT);
        assert_int_equal(hr_store_user_version(s), main_v);
        hr_store_close(s);
        assert_int_equal(db_int(paths[i], "PRAGMA user_version"), main_v);
        assert_int_equal(db_int(paths[i], "SELECT count(*) FROM sqlite_master WHERE name IN "
                                          "('checkpoint', 'row', 'schedule_history', "
                                          "'serving_state', 'serving_history', 'serving_blob')"),
                         6);
        s = open_ok(paths[i], &MAIN_OPT); /* a second open changes nothing */
        assert_int_equal(hr_store_user_version(s), main_v);
        hr_store_close(s);
    }
    hr_store *s = open_ok(path_in(dir, "t.db-events"), &LOG_OPT);
    assert_int_equal(hr_store_user_version(s), log_v);
    hr_store_close(s);
    assert_int_equal(db_int(path_in(dir, "t.db-events"), "SELECT count(*) FROM sqlite_master "
                                                           "WHERE name IN ('event_log', 'log_state')"),
                     2);
    /* step by step: version 1, then up to the latest */
    char *old = path_in(dir, "old.db");
    hr_store_options o1 = MAIN_OPT;
    o1.target_version = 1;
    s = open_ok(old, &o1);
    assert_int_equal(hr_store_user_version(s), 1);
    hr_store_close(s);
    assert_int_equal(db_int(old, "SELECT count(*) FROM sqlite_master WHERE name = 'serving_state'"),
                     0);
    s = open_ok(old, &MAIN_OPT);
    assert_int_equal(hr_store_user_version(s), main_v);
    hr_store_close(s);
    /* a newer file is refused, not touched */
    sqlite3 *h;
    assert_int_equal(sqlite3_open(old, &h), SQLITE_OK);
    char sql[64];
    snprintf(sql, sizeof sql, "PRAGMA user_version = %d", main_v + 1);
    assert_int_equal(sqlite3_exec(h, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(h);
    hr_error err = {{0}, {0}};
    s = (hr_store *)1;
    assert_int_equal(hr_store_open(old, &MAIN_OPT, &s, &err), HR_EUNSUPPORTED);
    assert_null(s);
    assert_non_null(strstr(err.message, "newer"));
    assert_int_equal(db_int(old, "PRAGMA user_version"), main_v + 1);
    hr_store_close(NULL);
    tu_rmtree(dir);
}

/* Reads a whole file into a new buffer. */
static char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)len + 1);
    assert_int_equal(fread(b, 1, (size_t)len, f), (size_t)len);
    fclose(f);
    *n = (size_t)len;
    return b;
}

static void refused_unchanged(const char *path, const hr_store_options *o, const char *says)
{
    size_t n0, n1;
    char *before = slurp(path, &n0);
    hr_store *s = (hr_store *)1;
    hr_error err = {{0}, {0}};
    assert_int_equal(hr_store_open(path, o, &s, &err), HR_ECORRUPT);
    assert_null(s);
    assert_string_equal(err.field, "db");
    if (!strstr(err.message, says))
        fail_msg("'%s' does not say '%s'", err.message, says);
    char *after = slurp(path, &n1);
    assert_int_equal(n0, n1);
    assert_memory_equal(before, after, n0);
    free(before);
    free(after);
}

static hr_status no_row(void *ctx, unsigned t, uint32_t r, const char *k, size_t kl,
                        const void *d, size_t b)
{
    (void)ctx, (void)t, (void)r, (void)k, (void)kl, (void)d, (void)b;
    return HR_OK;
}

static void test_foreign_and_damaged_files_refused(void **state)
{
    (void)state;
    const char *dir = tu_tmpdir();
    /* not a database: text, and a file with an SQLite-like start */
    char *text = path_in(dir, "text.db");
    FILE *f = fopen(text, "w");
    assert_non_null(f);
    for (int i = 0; i < 200; i++)
        fprintf(f, "user,item,label\nu%d,i%d,1\n", i, i);
    fclose(f);
    refused_unchanged(text, &MAIN_OPT, "not a database");
    refused_unchanged(text, &LOG_OPT, "not a database");
    /* a database whose pages after the first two are overwritten */
    char *db = path_in(dir, "t.db");
    hr_store *s = open_ok(db, &MAIN_OPT);
    int64_t id;
    hr_error err = {{0}, {0}};
    assert_int_equal(hr_store_ckpt_begin(s, true, 1, 1, "{}", &id, &err), HR_OK);
    char data[512];
    memset(data, 7, sizeof data);
    for (uint32_t r = 0; r < 2000; r++)
        assert_int_equal(hr_store_ckpt_row(s, id, 1, r, "key", 3, data, sizeof data, &err),
                         HR_OK);
    assert_int_equal(hr_store_ckpt_commit(s, id, 2000, 0, 1, &err), HR_OK);
    hr_store_close(s); /* the last close folds the WAL into the file */
    struct stat sb;
    assert_int_equal(stat(db, &sb), 0);
    assert_true(sb.st_size > 16 * 4096);
    f = fopen(db, "r+b");
    assert_non_null(f);
    char junk[4096];
    memset(junk, 0x5a, sizeof junk);
    for (long off = 2 * 4096; off < sb.st_size; off += 4096) {
        fseek(f, off, SEEK_SET);
        fwrite(junk, 1, sizeof junk, f);
    }
    fclose(f);
    hr_store_options qc = MAIN_OPT;
    qc.quick_check = true;
    size_t n0;
    char *before = slurp(db, &n0);
    s = (hr_store *)1;
    hr_status st = hr_store_open(db, &qc, &s, &err);
    assert_int_equal(st, HR_ECORRUPT);
    assert_null(s);
    assert_true(err.message[0] != 0);
    size_t n1;
    char *after = slurp(db, &n1);
    assert_int_equal(n0, n1);
    assert_memory_equal(before, after, n0);
    free(before);
    free(after);
    /* without quick_check the damage shows at the first read of rows */
    s = NULL;
    if (hr_store_open(db, &MAIN_OPT, &s, &err) == HR_OK) {
        hr_store_ckpt last;
        st = hr_store_ckpt_latest(s, &last, &err);
        if (st == HR_OK && last.id)
            st = hr_store_chain_rows(s, &last, no_row, NULL, &err);
        assert_int_equal(st, HR_ECORRUPT);
        hr_store_close(s);
    }
    tu_rmtree(dir);
}

/* ---- checkpoints ---- */

typedef struct {
    unsigned table;
    uint32_t row;
    bool has_key;
    char key[32];
    size_t klen;
    unsigned char data[64];
    size_t bytes;
} row_rec;

typedef struct {
    row_rec r[64];
    size_t n;
} rows;

static hr_status take_row(void *ctx, unsigned table, uint32_t row, const char *key, size_t klen,
                          const void *data, size_t bytes)
{
    rows *rs = ctx;
    assert_true(rs->n < 64 && klen < 32 && bytes <= 64);
    row_rec *r = &rs->r[rs->n++];
    r->table = table;
    r->row = row;
    r->has_key = key != NULL;
    if (key)
        memcpy(r->key, key, klen);
    r->klen = klen;
    if (bytes)
        memcpy(r->data, data, bytes);
    r->bytes = bytes;
    return HR_OK;
}

static void write_row(hr_store *s, int64_t id, unsigned table, uint32_t row, const char *key,
                      unsigned char fill, size_t bytes)
{
    unsigned char data[64];
    memset(data, fill, sizeof data);
    hr_error err = {{0}, {0}};
    assert_int_equal(hr_store_ckpt_row(s, id, table, row, key, key ? strlen(key) : 0, data, bytes,
                                       &err),
                     HR_OK);
}

static void assert_row(const row_rec *r, unsigned table, uint32_t row, const char *key,
                       unsigned char fill, size_t bytes)
{
    assert_int_equal(r->table, table);
    assert_int_equal(r->row, row);
    assert_int_equal(r->has_key, key != NULL);
    if (key) {
        assert_int_equal(r->klen, strlen(key));
        assert_memory_equal(r->key, key, r->klen);
    }
    assert_int_equal(r->bytes, bytes);
    for (size_t i = 0; i < bytes; i++)
        assert_int_equal(r->data[i], fill);
}

typedef struct {
    uint64_t version[8], at[8];
    double wall[8], before[8], after[8];
    char json[8][64];
    size_t n;
} sched_rows;

static hr_status take_sched(void *ctx, uint64_t version, double wall, uint64_t at, double lb,
                            double la, const char *json)
{
    sched_rows *s = ctx;
    assert_true(s->n < 8);
    s->version[s->n] = version;
    s->wall[s->n] = wall;
    s->at[s->n] = at;
    s->before[s->n] = lb;
    s->after[s->n] = la;
    snprintf(s->json[s->n], 64, "%s", json);
    s->n++;
    return HR_OK;
}

typedef struct {
    char user[8][16];
    uint64_t seq[8];
    unsigned char items[8][32];
    size_t bytes[8];
    size_t n;
} hist_rows;

static hr_status take_hist(void *ctx, const char *user, size_t ulen, uint64_t seq,
                           const void *items, size_t bytes)
{
    hist_rows *h = ctx;
    assert_true(h->n < 8 && ulen < 16 && bytes <= 32);
    memcpy(h->user[h->n], user, ulen);
    h->user[h->n][ulen] = 0;
    h->seq[h->n] = seq;
    if (bytes)
        memcpy(h->items[h->n], items, bytes);
    h->bytes[h->n++] = bytes;
    return HR_OK;
}

typedef struct {
    char text[256];
    int parts;
} blob_acc;

static hr_status take_blob(void *ctx, const void *data, size_t bytes)
{
    blob_acc *b = ctx;
    size_t l = strlen(b->text);
    assert_true(l + bytes < sizeof b->text);
    memcpy(b->text + l, data, bytes);
    b->text[l + bytes] = 0;
    b->parts++;
    return HR_OK;
}

static void test_checkpoint_round_trip(void **state)
{
    (void)state;
    const char *dir = tu_tmpdir();
    char *db = path_in(dir, "t.db");
    hr_store *s = open_ok(db, &MAIN_OPT);
    hr_error err = {{0}, {0}};
    hr_store_ckpt last;
    assert_int_equal(hr_store_ckpt_latest(s, &last, &err), HR_OK);
    assert_int_equal(last.id, 0);
    int64_t n;
    assert_int_equal(hr_store_ckpt_count(s, &n, &err), HR_OK);
    assert_int_equal(n, 0);

    int64_t id;
    assert_int_equal(hr_store_ckpt_begin(s, true, 40, 1234, "{\"k\":8}", &id, &err), HR_OK);
    /* written out of order: read back in (table, row) order */
    write_row(s, id, 2, 7, "item-7", 0x27, 40);
    write_row(s, id, 1, 9, "user-9", 0x19, 40);
    write_row(s, id, 1, 3, "user-3", 0x13, 40);
    write_row(s, id, 3, 0, NULL, 0x30, 24); /* a row without key */
    write_row(s, id, 2, 1, "", 0x21, 0);    /* empty key and data */
    assert_int_equal(hr_store_ckpt_schedule(s, id, 1, 100.5, 0, NAN, NAN, "{\"eta0\":0.1}", &err),
                     HR_OK);
    assert_int_equal(hr_store_ckpt_schedule(s, id, 2, 200.25, 5000, 0.69, 0.5, "{\"eta0\":0.2}",
                                            &err),
                     HR_OK);
    assert_int_equal(hr_store_ckpt_serving(s, id, 39, 1.7e9, &err), HR_OK);
    assert_int_equal(hr_store_ckpt_history(s, id, "alice", 5, 38, "\x02\x00i1", 4, &err), HR_OK);
    assert_int_equal(hr_store_ckpt_history(s, id, "bob", 3, 12, "", 0, &err), HR_OK);
    assert_int_equal(hr_store_ckpt_blob(s, id, "popularity", 0, "part0-", 6, &err), HR_OK);
    assert_int_equal(hr_store_ckpt_blob(s, id, "popularity", 1, "part1", 5, &err), HR_OK);
    assert_int_equal(hr_store_ckpt_blob(s, id, "dedup", 0, "ids", 3, &err), HR_OK);
    assert_int_equal(hr_store_ckpt_commit(s, id, 5, 0.25, 3, &err), HR_OK);
    hr_store_close(s);

    s = open_ok(db, &MAIN_OPT);
    assert_int_equal(hr_store_ckpt_latest(s, &last, &err), HR_OK);
    assert_int_equal(last.id, id);
    assert_int_equal(last.base, id);
    assert_true(last.full);
    assert_int_equal(last.seq, 40);
    assert_int_equal(last.nrows, 5);
    assert_int_equal(last.updates, 1234);
    assert_true(last.seconds == 0.25);
    assert_true(last.started > 0);
    assert_string_equal(last.shape, "{\"k\":8}");
    assert_int_equal(hr_store_ckpt_count(s, &n, &err), HR_OK);
    assert_int_equal(n, 1);

    rows rs = {0};
    assert_int_equal(hr_store_chain_rows(s, &last, take_row, &rs, &err), HR_OK);
    assert_int_equal(rs.n, 5);
    assert_row(&rs.r[0], 1, 3, "user-3", 0x13, 40);
    assert_row(&rs.r[1], 1, 9, "user-9", 0x19, 40);
    assert_row(&rs.r[2], 2, 1, "", 0x21, 0);
    assert_row(&rs.r[3], 2, 7, "item-7", 0x27, 40);
    assert_row(&rs.r[4], 3, 0, NULL, 0x30, 24);

    sched_rows sr = {0};
    assert_int_equal(hr_store_schedule_rows(s, id, take_sched, &sr, &err), HR_OK);
    assert_int_equal(sr.n, 2);
    assert_int_equal(sr.version[0], 1);
    assert_true(sr.wall[0] == 100.5 && sr.at[0] == 0);
    assert_true(isnan(sr.before[0]) && isnan(sr.after[0]));
    assert_string_equal(sr.json[0], "{\"eta0\":0.1}");
    assert_int_equal(sr.version[1], 2);
    assert_true(sr.wall[1] == 200.25 && sr.at[1] == 5000);
    assert_true(sr.before[1] == 0.69 && sr.after[1] == 0.5);

    bool found = false;
    uint64_t seq = 0;
    double taken = 0;
    assert_int_equal(hr_store_serving(s, id, &found, &seq, &taken, &err), HR_OK);
    assert_true(found);
    assert_int_equal(seq, 39);
    assert_true(taken == 1.7e9);
    assert_int_equal(hr_store_serving(s, id + 1, &found, &seq, &taken, &err), HR_OK);
    assert_false(found);
    hist_rows hr = {0};
    assert_int_equal(hr_store_chain_history(s, &last, take_hist, &hr, &err), HR_OK);
    assert_int_equal(hr.n, 2);
    int a = strcmp(hr.user[0], "alice") == 0 ? 0 : 1;
    assert_string_equal(hr.user[a], "alice");
    assert_int_equal(hr.seq[a], 38);
    assert_int_equal(hr.bytes[a], 4);
    assert_memory_equal(hr.items[a], "\x02\x00i1", 4);
    assert_string_equal(hr.user[1 - a], "bob");
    assert_int_equal(hr.bytes[1 - a], 0);
    blob_acc pop = {{0}, 0}, dd = {{0}, 0};
    assert_int_equal(hr_store_serving_blobs(s, id, "popularity", take_blob, &pop, &err), HR_OK);
    assert_int_equal(pop.parts, 2);
    assert_string_equal(pop.text, "part0-part1"); /* in part order */
    assert_int_equal(hr_store_serving_blobs(s, id, "dedup", take_blob, &dd, &err), HR_OK);
    assert_string_equal(dd.text, "ids");
    hr_store_close(s);
    tu_rmtree(dir);
}

/* A checkpoint with one row per (table 1, row r) for r in rows[], value fill. */
static int64_t ckpt(hr_store *s, bool full, uint64_t seq, const uint32_t *rws, size_t n,
                    unsigned char fill, int keep)
{
    int64_t id;
    hr_error err = {{0}, {0}};
    assert_int_equal(hr_store_ckpt_begin(s, full, seq, seq, "{}", &id, &err), HR_OK);
    for (size_t i = 0; i < n; i++) {
        char key[16];
        snprintf(key, sizeof key, "k%u", rws[i]);
        write_row(s, id, 1, rws[i], key, fill, 8);
    }
    char user[16];
    snprintf(user, sizeof user, "u%llu", (unsigned long long)seq);
    assert_int_equal(hr_store_ckpt_history(s, id, user, strlen(user), seq, "", 0, &err), HR_OK);
    assert_int_equal(hr_store_ckpt_commit(s, id, n, 0, keep, &err), HR_OK);
    return id;
}

static void test_incremental_chains_and_keep(void **state)
{
    (void)state;
    const char *dir = tu_tmpdir();
    char *db = path_in(dir, "t.db");
    hr_store *s = open_ok(db, &MAIN_OPT);
    hr_error err = {{0}, {0}};
    const uint32_t all[] = {1, 2, 3}, two[] = {2}, three[] = {3, 1};
    int64_t f1 = ckpt(s, true, 10, all, 3, 0xa0, 2);
    int64_t i1 = ckpt(s, false, 20, two, 1, 0xa1, 2);
    int64_t i2 = ckpt(s, false, 30, three, 2, 0xa2, 2);
    hr_store_ckpt last;
    assert_int_equal(hr_store_ckpt_latest(s, &last, &err), HR_OK);
    assert_int_equal(last.id, i2);
    assert_int_equal(last.base, f1);
    assert_false(last.full);
    assert_int_equal(last.seq, 30);
    /* newest first: i2's rows, then i1's, then the full base's */
    rows rs = {0};
    assert_int_equal(hr_store_chain_rows(s, &last, take_row, &rs, &err), HR_OK);
    assert_int_equal(rs.n, 6);
    assert_row(&rs.r[0], 1, 1, "k1", 0xa2, 8);
    assert_row(&rs.r[1], 1, 3, "k3", 0xa2, 8);
    assert_row(&rs.r[2], 1, 2, "k2", 0xa1, 8);
    assert_row(&rs.r[3], 1, 1, "k1", 0xa0, 8);
    assert_row(&rs.r[4], 1, 2, "k2", 0xa0, 8);
    assert_row(&rs.r[5], 1, 3, "k3", 0xa0, 8);
    hist_rows hr = {0};
    assert_int_equal(hr_store_chain_history(s, &last, take_hist, &hr, &err), HR_OK);
    assert_int_equal(hr.n, 3);
    assert_string_equal(hr.user[0], "u30");
    assert_string_equal(hr.user[1], "u20");
    assert_string_equal(hr.user[2], "u10");
    /* keep 2: the chain f1..i2 is still needed */
    int64_t n;
    assert_int_equal(hr_store_ckpt_count(s, &n, &err), HR_OK);
    assert_int_equal(n, 3);
    /* a new full one, then keep 1: the old chain goes, rows and all */
    int64_t f2 = ckpt(s, true, 40, two, 1, 0xb0, 2);
    assert_int_equal(hr_store_ckpt_count(s, &n, &err), HR_OK);
    assert_int_equal(n, 4); /* f2 and i2 are the newest 2; i2 needs f1 */
    int64_t i3 = ckpt(s, false, 50, all, 3, 0xb1, 1);
    assert_int_equal(hr_store_ckpt_count(s, &n, &err), HR_OK);
    assert_int_equal(n, 2); /* i3 and its base f2 */
    assert_int_equal(hr_store_ckpt_latest(s, &last, &err), HR_OK);
    assert_int_equal(last.id, i3);
    assert_int_equal(last.base, f2);
    hr_store_close(s);
    assert_int_equal(db_int(db, "SELECT count(*) FROM checkpoint"), 2);
    assert_int_equal(db_int(db, "SELECT count(*) FROM row"), 4);
    assert_int_equal(db_int(db, "SELECT count(*) FROM serving_history"), 2);
    /* a chain whose base is gone is reported, not read half */
    s = open_ok(db, &MAIN_OPT);
    hr_store_ckpt orphan = last;
    orphan.base = f1;
    rs.n = 0;
    assert_int_equal(hr_store_chain_rows(s, &orphan, take_row, &rs, &err), HR_ECORRUPT);
    assert_true(err.message[0] != 0);
    hr_store_close(s);
    (void)i1;
    tu_rmtree(dir);
}

static void test_checkpoint_transactions(void **state)
{
    (void)state;
    const char *dir = tu_tmpdir();
    char *db = path_in(dir, "t.db");
    const uint32_t one[] = {1};
    hr_store *s = open_ok(db, &MAIN_OPT);
    int64_t first = ckpt(s, true, 5, one, 1, 1, 3);
    hr_store_options quick = MAIN_OPT;
    quick.busy_ms = 0;
    hr_store *other = open_ok(db, &quick);
    hr_error err = {{0}, {0}};
    /* begun, not committed: another connection sees the previous one, and
     * cannot start a checkpoint of its own (one writer) */
    int64_t id;
    assert_int_equal(hr_store_ckpt_begin(s, true, 9, 9, "{}", &id, &err), HR_OK);
    write_row(s, id, 1, 2, "k2", 2, 8);
    hr_store_ckpt last;
    assert_int_equal(hr_store_ckpt_latest(other, &last, &err), HR_OK);
    assert_int_equal(last.id, first);
    int64_t id2;
    assert_int_equal(hr_store_ckpt_begin(other, true, 9, 9, "{}", &id2, &err), HR_EBUSY);
    /* aborted: gone, and the next one takes its place */
    hr_store_ckpt_abort(s);
    hr_store_ckpt_abort(s); /* no-op without one */
    assert_int_equal(hr_store_ckpt_latest(s, &last, &err), HR_OK);
    assert_int_equal(last.id, first);
    int64_t next = ckpt(s, true, 9, one, 1, 3, 3);
    assert_true(next > first);
    /* closed mid-checkpoint: rolled back */
    assert_int_equal(hr_store_ckpt_begin(other, true, 11, 11, "{}", &id2, &err), HR_OK);
    write_row(other, id2, 1, 4, "k4", 4, 8);
    hr_store_close(other);
    assert_int_equal(hr_store_ckpt_latest(s, &last, &err), HR_OK);
    assert_int_equal(last.id, next);
    assert_int_equal(last.seq, 9);
    rows rs = {0};
    assert_int_equal(hr_store_chain_rows(s, &last, take_row, &rs, &err), HR_OK);
    assert_int_equal(rs.n, 1);
    assert_row(&rs.r[0], 1, 1, "k1", 3, 8);
    hr_store_close(s);
    assert_int_equal(db_int(db, "SELECT count(*) FROM checkpoint WHERE complete = 0"), 0);
    tu_rmtree(dir);
}

static hr_status count_sched(void *ctx, uint64_t v, double w, uint64_t a, double lb, double la,
                             const char *j)
{
    (void)v, (void)w, (void)a, (void)lb, (void)la, (void)j;
    (*(int *)ctx)++;
    return HR_OK;
}

static void test_older_schema_ignores_newer_parts(void **state)
{
    (void)state;
    const char *dir = tu_tmpdir();
    char *db = path_in(dir, "t.db");
    hr_store_options o = MAIN_OPT;
    o.target_version = 2; /* before the serving state */
    hr_store *s = open_ok(db, &o);
    hr_error err = {{0}, {0}};
    int64_t id;
    assert_int_equal(hr_store_ckpt_begin(s, true, 3, 3, "{}", &id, &err), HR_OK);
    assert_int_equal(hr_store_ckpt_serving(s, id, 3, 1.0, &err), HR_OK);
    assert_int_equal(hr_store_ckpt_history(s, id, "u", 1, 3, "", 0, &err), HR_OK);
    assert_int_equal(hr_store_ckpt_blob(s, id, "dedup", 0, "x", 1, &err), HR_OK);
    assert_int_equal(hr_store_ckpt_schedule(s, id, 1, 1.0, 0, NAN, NAN, "{}", &err), HR_OK);
    assert_int_equal(hr_store_ckpt_commit(s, id, 0, 0, 3, &err), HR_OK);
    bool found = true;
    uint64_t seq;
    double taken;
    assert_int_equal(hr_store_serving(s, id, &found, &seq, &taken, &err), HR_OK);
    assert_false(found);
    int k = 0;
    assert_int_equal(hr_store_schedule_rows(s, id, count_sched, &k, &err), HR_OK);
    assert_int_equal(k, 1); /* version 2 has the schedule history */
    hr_store_close(s);
    /* version 1: no schedule history either */
    char *db1 = path_in(dir, "v1.db");
    o.target_version = 1;
    s = open_ok(db1, &o);
    assert_int_equal(hr_store_ckpt_begin(s, true, 3, 3, "{}", &id, &err), HR_OK);
    assert_int_equal(hr_store_ckpt_schedule(s, id, 1, 1.0, 0, NAN, NAN, "{}", &err), HR_OK);
    assert_int_equal(hr_store_ckpt_commit(s, id, 0, 0, 3, &err), HR_OK);
    k = 0;
    assert_int_equal(hr_store_schedule_rows(s, id, count_sched, &k, &err), HR_OK);
    assert_int_equal(k, 0);
    hr_store_close(s);
    tu_rmtree(dir);
}

/* ---- event log ---- */

typedef struct {
    uint64_t seq[16];
    double arrived[16];
    char json[16][32];
    size_t n, stop_after;
} log_rows;

static hr_status take_event(void *ctx, uint64_t seq, double arrived, const char *json,
                            size_t len)
{
    log_rows *l = ctx;
    if (l->stop_after && l->n == l->stop_after)
        return HR_ESTOPPED;
    assert_true(l->n < 16 && len < 32);
    l->seq[l->n] = seq;
    l->arrived[l->n] = arrived;
    memcpy(l->json[l->n], json, len);
    l->json[l->n][len] = 0;
    l->n++;
    return HR_OK;
}

static hr_status log_write(hr_store *s, uint64_t first, size_t n, const double *arrived,
                           uint64_t trim, hr_error *err)
{
    uint64_t seqs[16];
    char text[16][32];
    const char *json[16];
    size_t len[16];
    for (size_t i = 0; i < n; i++) {
        seqs[i] = first + i;
        len[i] = (size_t)snprintf(text[i], sizeof text[i], "{\"e\":%llu}",
                                  (unsigned long long)(first + i));
        json[i] = text[i];
    }
    return hr_store_log_write(s, seqs, arrived, json, len, n, trim, err);
}

static void test_event_log(void **state)
{
    (void)state;
    const char *dir = tu_tmpdir();
    char *path = path_in(dir, "t.db-events");
    hr_store *s = open_ok(path, &LOG_OPT);
    hr_error err = {{0}, {0}};
    uint64_t v;
    assert_int_equal(hr_store_log_last_seq(s, &v, &err), HR_OK);
    assert_int_equal(v, 0);
    const double times[] = {100.5, NAN, 102};
    assert_int_equal(log_write(s, 1, 3, times, 0, &err), HR_OK);
    assert_int_equal(log_write(s, 4, 2, NULL, 0, &err), HR_OK);
    assert_int_equal(hr_store_log_count(s, &v, &err), HR_OK);
    assert_int_equal(v, 5);
    log_rows l = {0};
    assert_int_equal(hr_store_log_scan(s, 1, take_event, &l, &err), HR_OK);
    assert_int_equal(l.n, 4); /* after seq 1 */
    assert_int_equal(l.seq[0], 2);
    assert_string_equal(l.json[0], "{\"e\":2}");
    assert_true(isnan(l.arrived[0]));
    assert_true(l.arrived[1] == 102);
    assert_true(isnan(l.arrived[2]) && isnan(l.arrived[3]));
    /* a callback's status stops the scan and is returned */
    log_rows stop = {.stop_after = 2};
    assert_int_equal(hr_store_log_scan(s, 0, take_event, &stop, &err), HR_ESTOPPED);
    assert_int_equal(stop.n, 2);
    /* trim with a write, then alone */
    assert_int_equal(log_write(s, 6, 1, NULL, 2, &err), HR_OK);
    assert_int_equal(hr_store_log_trimmed_to(s, &v, &err), HR_OK);
    assert_int_equal(v, 2);
    assert_int_equal(log_write(s, 0, 0, NULL, 6, &err), HR_OK);
    assert_int_equal(hr_store_log_count(s, &v, &err), HR_OK);
    assert_int_equal(v, 0);
    assert_int_equal(hr_store_log_last_seq(s, &v, &err), HR_OK);
    assert_int_equal(v, 6); /* kept by trimmed_to */
    assert_int_equal(log_write(s, 0, 0, NULL, 3, &err), HR_OK); /* never lowered */
    assert_int_equal(hr_store_log_trimmed_to(s, &v, &err), HR_OK);
    assert_int_equal(v, 6);
    assert_int_equal(hr_store_log_probe(s, &err), HR_OK);
    /* a seq written twice fails the whole write */
    assert_int_equal(log_write(s, 7, 2, NULL, 0, &err), HR_OK);
    assert_int_equal(log_write(s, 9, 1, NULL, 0, &err), HR_OK);
    assert_int_equal(log_write(s, 8, 3, NULL, 0, &err), HR_EIO); /* 8 and 9 are taken */
    assert_int_equal(hr_store_log_count(s, &v, &err), HR_OK);
    assert_int_equal(v, 3); /* 7, 8, 9; not 10 */
    hr_store_close(s);

    /* version 1 of the log keeps no arrival times */
    char *old = path_in(dir, "old.db-events");
    hr_store_options o1 = LOG_OPT;
    o1.target_version = 1;
    s = open_ok(old, &o1);
    assert_int_equal(log_write(s, 1, 3, times, 0, &err), HR_OK);
    l.n = 0;
    assert_int_equal(hr_store_log_scan(s, 0, take_event, &l, &err), HR_OK);
    assert_int_equal(l.n, 3);
    for (size_t i = 0; i < 3; i++)
        assert_true(isnan(l.arrived[i]));
    hr_store_close(s);
    tu_rmtree(dir);
}

static void test_event_log_write_fails_whole(void **state)
{
    (void)state;
    fv_install();
    const char *dir = tu_tmpdir();
    char *path = path_in(dir, "t.db-events");
    hr_store *s = open_ok(path, &LOG_OPT);
    hr_error err = {{0}, {0}};
    assert_int_equal(log_write(s, 1, 2, NULL, 0, &err), HR_OK);
    fv_fail_writes(".db-events-wal", SQLITE_FULL);
    memset(&err, 0, sizeof err);
    assert_int_equal(log_write(s, 3, 8, NULL, 1, &err), HR_EFULL);
    assert_string_equal(err.field, "db");
    assert_non_null(strstr(err.message, "full"));
    assert_int_equal(hr_store_log_probe(s, &err), HR_EFULL);
    fv_fail_writes(".db-events-wal", SQLITE_IOERR_WRITE);
    assert_int_equal(log_write(s, 3, 8, NULL, 1, &err), HR_EIO);
    fv_fail_writes(NULL, 0);
    assert_int_equal(hr_store_log_probe(s, &err), HR_OK);
    uint64_t v;
    assert_int_equal(hr_store_log_count(s, &v, &err), HR_OK);
    assert_int_equal(v, 2); /* nothing of the failed writes, trim included */
    assert_int_equal(hr_store_log_trimmed_to(s, &v, &err), HR_OK);
    assert_int_equal(v, 0);
    assert_int_equal(log_write(s, 3, 1, NULL, 0, &err), HR_OK);
    hr_store_close(s);
    hr_store_options qc = LOG_OPT;
    qc.quick_check = true;
    s = open_ok(path, &qc);
    assert_int_equal(hr_store_log_last_seq(s, &v, &err), HR_OK);
    assert_int_equal(v, 3);
    hr_store_close(s);
    tu_rmtree(dir);
}

/* ---- event log: multi-row inserts ---- */

/* Generated events for the batch tests: seqs increasing with gaps, texts of
 * 0 to 300 bytes, arrival times finite or unknown (NaN), from a seeded
 * generator so every run writes the same. */
typedef struct {
    size_t n;
    uint64_t *seqs;
    double *arrived;
    char **json;
    size_t *len;
} gen_events;

static uint64_t gen_next(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

static void gen_make(gen_events *g, size_t n, uint64_t first_seq, uint64_t *rng)
{
    g->n = n;
    g->seqs = calloc(n + 1, sizeof *g->seqs);
    g->arrived = calloc(n + 1, sizeof *g->arrived);
    g->json = calloc(n + 1, sizeof *g->json);
    g->len = calloc(n + 1, sizeof *g->len);
    uint64_t seq = first_seq;
    for (size_t i = 0; i < n; i++) {
        g->seqs[i] = seq;
        seq += 1 + (gen_next(rng) % 4 == 0 ? gen_next(rng) % 3 : 0);
        g->arrived[i] = gen_next(rng) % 5 == 0 ? NAN : 1.7e9 + (double)(gen_next(rng) % 100000) / 8;
        size_t pad = gen_next(rng) % 7 == 0 ? 0 : (size_t)(gen_next(rng) % 260);
        g->json[i] = malloc(pad + 48);
        int w = snprintf(g->json[i], pad + 48, "{\"item\":\"i%llu\",\"user\":\"u%llu\",\"p\":\"",
                         (unsigned long long)(gen_next(rng) % 1000),
                         (unsigned long long)g->seqs[i]);
        for (size_t k = 0; k < pad; k++)
            g->json[i][w + (int)k] = (char)('a' + (g->seqs[i] + k) % 26);
        g->len[i] = (size_t)w + pad;
        memcpy(g->json[i] + g->len[i], "\"}", 2);
        g->len[i] += 2;
        if (i % 11 == 3)
            g->len[i] = 0; /* an empty text */
    }
}

static void gen_free(gen_events *g)
{
    for (size_t i = 0; i < g->n; i++)
        free(g->json[i]);
    free(g->seqs);
    free(g->arrived);
    free(g->json);
    free(g->len);
}

/* Writes g into a log database row by row with plain SQLite, one INSERT
 * per row: the one-row path the multi-row statements must equal. */
static void write_row_by_row(const char *path, const gen_events *g)
{
    sqlite3 *h;
    assert_int_equal(sqlite3_open_v2(path, &h, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    sqlite3_stmt *ins;
    assert_int_equal(sqlite3_exec(h, "BEGIN", NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(h, "INSERT INTO event_log (seq, event, arrived) "
                                        "VALUES (?, ?, ?)", -1, &ins, NULL), SQLITE_OK);
    for (size_t i = 0; i < g->n; i++) {
        sqlite3_bind_int64(ins, 1, (int64_t)g->seqs[i]);
        sqlite3_bind_text(ins, 2, g->json[i], (int)g->len[i], SQLITE_STATIC);
        if (isnan(g->arrived[i]))
            sqlite3_bind_null(ins, 3);
        else
            sqlite3_bind_double(ins, 3, g->arrived[i]);
        assert_int_equal(sqlite3_step(ins), SQLITE_DONE);
        sqlite3_reset(ins);
    }
    sqlite3_finalize(ins);
    assert_int_equal(sqlite3_exec(h, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(h);
}

/* Asserts both log files hold the same rows: seq, text bytes, arrival time
 * and the stored type of each, in rowid order; returns the row count. */
static size_t same_log_rows(const char *a, const char *b)
{
    static const char *sql = "SELECT seq, event, arrived, typeof(event), typeof(arrived) "
                             "FROM event_log ORDER BY rowid";
    sqlite3 *h[2];
    sqlite3_stmt *st[2];
    const char *paths[2] = {a, b};
    for (int k = 0; k < 2; k++) {
        assert_int_equal(sqlite3_open_v2(paths[k], &h[k], SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
        assert_int_equal(sqlite3_prepare_v2(h[k], sql, -1, &st[k], NULL), SQLITE_OK);
    }
    size_t rows = 0;
    for (;;) {
        int r0 = sqlite3_step(st[0]), r1 = sqlite3_step(st[1]);
        assert_int_equal(r0, r1);
        if (r0 != SQLITE_ROW)
            break;
        assert_int_equal(sqlite3_column_int64(st[0], 0), sqlite3_column_int64(st[1], 0));
        int n0 = sqlite3_column_bytes(st[0], 1), n1 = sqlite3_column_bytes(st[1], 1);
        assert_int_equal(n0, n1);
        assert_memory_equal(sqlite3_column_blob(st[0], 1) ? sqlite3_column_blob(st[0], 1) : "",
                            sqlite3_column_blob(st[1], 1) ? sqlite3_column_blob(st[1], 1) : "",
                            (size_t)n0);
        assert_string_equal(sqlite3_column_text(st[0], 3), sqlite3_column_text(st[1], 3));
        assert_string_equal(sqlite3_column_text(st[0], 4), sqlite3_column_text(st[1], 4));
        assert_true(sqlite3_column_double(st[0], 2) == sqlite3_column_double(st[1], 2));
        rows++;
    }
    for (int k = 0; k < 2; k++) {
        sqlite3_finalize(st[k]);
        sqlite3_close(h[k]);
    }
    return rows;
}

/* What hr_store_log_scan reads back, checked against g from index *at. */
typedef struct {
    const gen_events *g;
    size_t at;
    bool ok;
} scan_check;

static hr_status check_event(void *ctx, uint64_t seq, double arrived, const char *json, size_t len)
{
    scan_check *c = ctx;
    const gen_events *g = c->g;
    if (c->at >= g->n || seq != g->seqs[c->at] || len != g->len[c->at] ||
        memcmp(json, g->json[c->at], len) != 0 ||
        (isnan(g->arrived[c->at]) ? !isnan(arrived) : arrived != g->arrived[c->at]))
        c->ok = false;
    c->at++;
    return HR_OK;
}

/* Batch sizes around the statement size (1, R - 1, R, R + 1, several R and
 * a remainder), written one write per batch after another: the file holds
 * exactly the events in seq order with their texts and times, the same rows
 * as one INSERT per row writes, and hr_store_log_scan reads them back. */
static void test_event_log_batch_sizes(void **state)
{
    (void)state;
    const size_t R = HR_STORE_LOG_ROWS_PER_INSERT;
    const size_t sizes[] = {1, R - 1, R, R + 1, 2 * R, 2 * R + 1, 3 * R - 1, 5 * R + 7, 1, R};
    size_t total = 0;
    for (size_t k = 0; k < HR_ARRAY_LEN(sizes); k++)
        total += sizes[k];
    uint64_t rng = 0x9e3779b97f4a7c15u;
    gen_events g;
    gen_make(&g, total, 10, &rng);

    const char *dir = tu_tmpdir();
    char *path = path_in(dir, "many.db-events"), *ref = path_in(dir, "ref.db-events");
    hr_store *s = open_ok(path, &LOG_OPT);
    hr_store_close(open_ok(ref, &LOG_OPT)); /* the same schema, written below */
    hr_error err = {{0}, {0}};
    size_t at = 0;
    for (size_t k = 0; k < HR_ARRAY_LEN(sizes); k++) {
        assert_int_equal(hr_store_log_write(s, g.seqs + at, g.arrived + at,
                                            (const char *const *)g.json + at, g.len + at,
                                            sizes[k], 0, &err),
                         HR_OK);
        at += sizes[k];
        uint64_t count = 0, last = 0;
        assert_int_equal(hr_store_log_count(s, &count, &err), HR_OK);
        assert_int_equal(count, at);
        assert_int_equal(hr_store_log_last_seq(s, &last, &err), HR_OK);
        assert_int_equal(last, g.seqs[at - 1]);
    }
    scan_check c = {&g, 0, true};
    assert_int_equal(hr_store_log_scan(s, 0, check_event, &c, &err), HR_OK);
    assert_true(c.ok);
    assert_int_equal(c.at, total);
    hr_store_close(s);

    write_row_by_row(ref, &g);
    assert_int_equal(same_log_rows(path, ref), total);
    gen_free(&g);
    tu_rmtree(dir);
}

/* A disk that fills while the multi-row INSERTs run (a batch larger than
 * the page cache spills pages to the WAL mid-statement): the write fails
 * as a whole with HR_EFULL saying it was writing events, the file keeps
 * exactly what was committed before, and the next write works. */
static void test_event_log_full_mid_statement(void **state)
{
    (void)state;
    fv_install();
    const char *dir = tu_tmpdir();
    char *path = path_in(dir, "t.db-events");
    hr_store *s = open_ok(path, &LOG_OPT);
    hr_error err = {{0}, {0}};
    uint64_t rng = 42;
    gen_events before, big;
    gen_make(&before, 2 * HR_STORE_LOG_ROWS_PER_INSERT + 5, 1, &rng);
    assert_int_equal(hr_store_log_write(s, before.seqs, before.arrived,
                                        (const char *const *)before.json, before.len, before.n,
                                        0, &err),
                     HR_OK);
    /* about 6 MB of events: more than SQLite's default 2 MB page cache */
    gen_make(&big, 40000, before.seqs[before.n - 1] + 1, &rng);
    fv_fail_writes(".db-events-wal", SQLITE_FULL);
    long failed0 = fv_failed_writes();
    memset(&err, 0, sizeof err);
    assert_int_equal(hr_store_log_write(s, big.seqs, big.arrived, (const char *const *)big.json,
                                        big.len, big.n, 0, &err),
                     HR_EFULL);
    assert_true(fv_failed_writes() > failed0);
    if (!strstr(err.message, "writing events"))
        fail_msg("the failure was not during the inserts: %s", err.message);
    fv_fail_writes(NULL, 0);
    uint64_t v;
    assert_int_equal(hr_store_log_count(s, &v, &err), HR_OK);
    assert_int_equal(v, before.n);
    scan_check c = {&before, 0, true};
    assert_int_equal(hr_store_log_scan(s, 0, check_event, &c, &err), HR_OK);
    assert_true(c.ok);
    assert_int_equal(c.at, before.n);
    /* the same batch again, disk back: all of it */
    assert_int_equal(hr_store_log_write(s, big.seqs, big.arrived, (const char *const *)big.json,
                                        big.len, big.n, 0, &err),
                     HR_OK);
    assert_int_equal(hr_store_log_count(s, &v, &err), HR_OK);
    assert_int_equal(v, before.n + big.n);
    hr_store_close(s);
    hr_store_options qc = LOG_OPT;
    qc.quick_check = true;
    s = open_ok(path, &qc);
    assert_int_equal(hr_store_log_last_seq(s, &v, &err), HR_OK);
    assert_int_equal(v, big.seqs[big.n - 1]);
    hr_store_close(s);
    gen_free(&before);
    gen_free(&big);
    tu_rmtree(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_migrations_from_nothing),
        cmocka_unit_test(test_foreign_and_damaged_files_refused),
        cmocka_unit_test(test_checkpoint_round_trip),
        cmocka_unit_test(test_incremental_chains_and_keep),
        cmocka_unit_test(test_checkpoint_transactions),
        cmocka_unit_test(test_older_schema_ignores_newer_parts),
        cmocka_unit_test(test_event_log),
        cmocka_unit_test_teardown(test_event_log_write_fails_whole, fv_clear_faults),
        cmocka_unit_test(test_event_log_batch_sizes),
        cmocka_unit_test_teardown(test_event_log_full_mid_statement, fv_clear_faults),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

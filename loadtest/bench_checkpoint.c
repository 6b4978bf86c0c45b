/*
 * bench_checkpoint.c - persistence figures, each against a baseline
 * measured in the same run:
 *   - checkpoint time for 100k and 1M rows at k=64 (AdaGrad state: 544-byte
 *     rows), full and incremental with 1% of rows changed, against plain
 *     SQLite writing the same bytes as (INTEGER PRIMARY KEY, BLOB) rows in
 *     one transaction with the same pragmas (WAL, synchronous=FULL);
 *   - restart time (open: quick_check + restore) against reading the
 *     baseline table back;
 *   - predict latency p50/p99 while a full checkpoint runs, against the same
 *     loop without one;
 *   - event-log ingest rate (sync durability, group commit) against no log.
 *
 * usage: bench_checkpoint [max_rows]   (default 1000000; fixed seeds)
 * Runs in a temporary directory under $TMPDIR (default /tmp). Not a test.
 */
#include <inttypes.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hogrec/api.h"
#include "hogrec/app.h"
#include "hogrec/persist.h"
#include "hogrec/sgd.h"
#include "bench_machine.h"

static char dir[512];

static double now(void) { return (double)hr_now_ns() / 1e9; }

static void die(const char *what, const char *msg)
{
    fprintf(stderr, "bench_checkpoint: %s: %s\n", what, msg);
    exit(1);
}

static void machine(void)
{
    char model[256];
    bench_cpu_model(model, sizeof model);
    printf("machine: nproc=%ld, cpu=%s, sqlite %s, dir %s\n", sysconf(_SC_NPROCESSORS_ONLN),
           model, sqlite3_libversion(), dir);
}

static hr_app *open_app(const char *db, uint32_t rows)
{
    hr_config c;
    hr_config_defaults(&c);
    hr_error err;
    char v[64];
#define SET(name, fmt, val)                                                                    \
    snprintf(v, sizeof v, fmt, val);                                                           \
    if (hr_config_set(&c, name, v, &err) != HR_OK)                                             \
        die(name, err.message);
    SET("k", "%d", 64);
    SET("threads", "%d", 1);
    SET("max_users", "%u", rows / 2 + 16);
    SET("max_items", "%u", rows / 2 + 16);
    SET("context_bits", "%d", 4);
    SET("negative_sampling", "%s", "off");
    SET("checkpoint_interval", "%d", 0);
    SET("checkpoint_events", "%d", 0);
    SET("keep_checkpoints", "%d", 2);
    SET("queue_capacity", "%d", 1 << 20);
    SET("db", "%s", db);
#undef SET
    hr_app *app;
    if (hr_app_open(&c, &app, &err) != HR_OK)
        die("open", err.message);
    hr_config_free(&c);
    return app;
}

static void fill(hr_app *app, uint32_t rows)
{
    char id[32];
    uint32_t row;
    for (uint32_t i = 0; i < rows; i++) {
        int n = snprintf(id, sizeof id, "%c%u", i & 1 ? 'i' : 'u', i / 2);
        if (hr_model_intern(app->model, i & 1 ? HR_TABLE_ITEM : HR_TABLE_USER, id, (size_t)n,
                            &row, NULL) != HR_OK)
            die("intern", id);
    }
}

static double checkpoint(hr_app *app, const char *expect_kind, int64_t *nrows)
{
    json_t *info;
    hr_error err;
    double t0 = now();
    if (hr_persist_checkpoint(app->persist, &info, &err) != HR_OK)
        die("checkpoint", err.message);
    double t = now() - t0;
    const char *kind = json_string_value(json_object_get(info, "kind"));
    if (strcmp(kind, expect_kind) != 0)
        die("checkpoint kind", kind);
    *nrows = json_integer_value(json_object_get(info, "rows"));
    json_decref(info);
    return t;
}

static sqlite3 *baseline_open(const char *path)
{
    sqlite3 *db;
    if (sqlite3_open(path, &db) != SQLITE_OK)
        die("baseline open", sqlite3_errmsg(db));
    sqlite3_exec(db,
                 "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; "
                 "PRAGMA journal_size_limit=67108864;"
                 "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, data BLOB NOT NULL)",
                 NULL, NULL, NULL);
    return db;
}

/* Plain SQLite: n rows of `bytes` in one transaction. */
static double baseline_write(const char *path, int64_t n, size_t bytes)
{
    sqlite3 *db = baseline_open(path);
    sqlite3_exec(db, "DELETE FROM t", NULL, NULL, NULL);
    char *blob = malloc(bytes);
    for (size_t i = 0; i < bytes; i++)
        blob[i] = (char)(i * 31);
    sqlite3_stmt *st;
    sqlite3_prepare_v2(db, "INSERT INTO t (id, data) VALUES (?, ?)", -1, &st, NULL);
    double t0 = now();
    sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
    for (int64_t i = 0; i < n; i++) {
        memcpy(blob, &i, sizeof i);
        sqlite3_bind_int64(st, 1, i);
        sqlite3_bind_blob(st, 2, blob, (int)bytes, SQLITE_STATIC);
        if (sqlite3_step(st) != SQLITE_DONE)
            die("baseline insert", sqlite3_errmsg(db));
        sqlite3_reset(st);
    }
    sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    double t = now() - t0;
    sqlite3_finalize(st);
    sqlite3_close(db);
    free(blob);
    return t;
}

static double baseline_read(const char *path)
{
    sqlite3 *db = baseline_open(path);
    sqlite3_stmt *st;
    sqlite3_prepare_v2(db, "SELECT id, data FROM t ORDER BY id", -1, &st, NULL);
    double t0 = now();
    uint64_t sum = 0;
    while (sqlite3_step(st) == SQLITE_ROW)
        sum += (uint64_t)sqlite3_column_bytes(st, 1);
    double t = now() - t0;
    sqlite3_finalize(st);
    sqlite3_close(db);
    if (sum == 0)
        die("baseline read", "no rows");
    return t;
}

/* ---- predict latency ---- */

typedef struct {
    hr_app *app;
    uint32_t rows;
    size_t n;
    double *lat; /* ns per call */
    atomic_int *go;
} pred_arg;

static void *predictor(void *p_)
{
    pred_arg *p = p_;
    hr_rng rng;
    hr_rng_seed(&rng, 42);
    hr_event ev;
    memset(&ev, 0, sizeof ev);
    while (!atomic_load(p->go))
        ;
    volatile double sink = 0;
    for (size_t i = 0; i < p->n; i++) {
        ev.user = 1 + (uint32_t)hr_rng_below(&rng, p->rows / 2 - 1);
        ev.item = 1 + (uint32_t)hr_rng_below(&rng, p->rows / 2 - 1);
        uint64_t t0 = hr_now_ns();
        sink += hr_model_predict(p->app->model, &ev);
        p->lat[i] = (double)(hr_now_ns() - t0);
    }
    (void)sink;
    return NULL;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void pct(double *lat, size_t n, double *p50, double *p99)
{
    qsort(lat, n, sizeof *lat, cmp_d);
    *p50 = lat[n / 2];
    *p99 = lat[(size_t)(n * 0.99)];
}

/* Predict latency over n calls, with or without a full checkpoint running
 * (the checkpoint is forced full by taking one with full_every = 1 style:
 * we mark every row dirty so an incremental writes them all). */
static void predict_bench(hr_app *app, uint32_t rows)
{
    size_t n = 2000000;
    double *lat = malloc(n * sizeof *lat);
    atomic_int go = 0;
    pred_arg pa = {app, rows, n, lat, &go};
    pthread_t th;
    double p50a, p99a, p50b, p99b;

    pthread_create(&th, NULL, predictor, &pa);
    atomic_store(&go, 1);
    pthread_join(th, NULL);
    pct(lat, n, &p50a, &p99a);

    for (int t = 0; t < HR_TABLE_COUNT; t++)
        for (uint32_t r = 0; r < hr_model_rows(app->model, (hr_table_id)t); r++)
            hr_model_mark_dirty(app->model, (hr_table_id)t, r);
    atomic_store(&go, 0);
    pthread_create(&th, NULL, predictor, &pa);
    atomic_store(&go, 1);
    json_t *info;
    hr_error err;
    double t0 = now();
    if (hr_persist_checkpoint(app->persist, &info, &err) != HR_OK)
        die("checkpoint", err.message);
    double ck = now() - t0;
    json_decref(info);
    pthread_join(th, NULL);
    double pred_s = 0;
    for (size_t i = 0; i < n; i++)
        pred_s += lat[i];
    pct(lat, n, &p50b, &p99b);
    printf("predict, %zu calls: without checkpoint p50 %.0f ns p99 %.0f ns; during a %.2f s "
           "checkpoint of every row p50 %.0f ns p99 %.0f ns (p99 ratio %.2f; the calls spanned "
           "%.2f s)\n",
           n, p50a, p99a, ck, p50b, p99b, p99b / p99a, pred_s / 1e9);
    free(lat);
}

/* ---- ingest ---- */

typedef struct {
    hr_app *app;
    uint32_t first, count, batch;
} ingest_arg;

static void *ingester(void *a_)
{
    ingest_arg *a = a_;
    json_t **objs = calloc(a->batch, sizeof *objs);
    char **texts = calloc(a->batch, sizeof *texts);
    size_t *lens = calloc(a->batch, sizeof *lens);
    hr_event *evs = calloc(a->batch, sizeof *evs);
    for (uint32_t i = 0; i < a->count; i += a->batch) {
        uint32_t n = a->batch;
        for (uint32_t j = 0; j < n; j++) {
            uint32_t e = a->first + i + j;
            char u[16], it[16];
            snprintf(u, sizeof u, "u%u", (e * 7919u) % 50000u);
            snprintf(it, sizeof it, "i%u", (e * 104729u) % 50000u);
            objs[j] = json_pack("{s:s, s:s, s:i}", "user", u, "item", it, "label", (int)(e & 1));
            texts[j] = hr_api_event_text(objs[j], &lens[j]);
            hr_error err;
            if (hr_api_event_from_json(a->app->model, objs[j], &evs[j], NULL, &err) != HR_OK)
                die("event", err.message);
        }
        uint64_t seq;
        hr_error err;
        if (hr_ingest_submit(a->app->ingest, evs, (const char *const *)texts, lens, n, true, &seq,
                             &err) != HR_OK)
            die("submit", err.message);
        for (uint32_t j = 0; j < n; j++) {
            free(texts[j]);
            json_decref(objs[j]);
        }
    }
    free(objs);
    free(texts);
    free(lens);
    free(evs);
    return NULL;
}

static double ingest_rate(hr_app *app, unsigned threads, uint32_t per_thread, uint32_t batch)
{
    pthread_t th[16];
    ingest_arg args[16];
    double t0 = now();
    for (unsigned t = 0; t < threads; t++) {
        args[t] = (ingest_arg){app, t * per_thread, per_thread, batch};
        pthread_create(&th[t], NULL, ingester, &args[t]);
    }
    for (unsigned t = 0; t < threads; t++)
        pthread_join(th[t], NULL);
    return (double)threads * per_thread / (now() - t0);
}

static void ingest_bench(void)
{
    char db[600];
    snprintf(db, sizeof db, "%s/ingest.db", dir);
    struct {
        unsigned threads;
        uint32_t batch, per_thread;
    } cases[] = {{8, 1, 2000}, {8, 100, 20000}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        hr_app *nolog = open_app("", 200000);
        double r0 = ingest_rate(nolog, cases[c].threads, cases[c].per_thread, cases[c].batch);
        hr_app_close(nolog, false);
        hr_app *app = open_app(db, 200000);
        double r1 = ingest_rate(app, cases[c].threads, cases[c].per_thread, cases[c].batch);
        json_t *st = hr_persist_stats(app->persist);
        json_int_t commits =
            json_integer_value(json_object_get(json_object_get(st, "event_log"), "commits"));
        json_decref(st);
        hr_app_close(app, false);
        printf("ingest, %u threads x %u events per request: no log %.0f events/s; sync log %.0f "
               "events/s in %lld commits (%.1f events per fsync); ratio %.3f\n",
               cases[c].threads, cases[c].batch, r0, r1, (long long)commits,
               (double)cases[c].threads * cases[c].per_thread / (double)(commits ? commits : 1),
               r1 / r0);
    }
}

int main(int argc, char **argv)
{
    uint32_t max_rows = argc > 1 ? (uint32_t)strtoul(argv[1], NULL, 10) : 1000000;
    const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    snprintf(dir, sizeof dir, "%s/bench_checkpoint.XXXXXX", tmp);
    if (!mkdtemp(dir))
        die("mkdtemp", dir);
    machine();
    uint32_t sizes[] = {100000, 1000000};
    for (size_t s = 0; s < 2; s++) {
        uint32_t rows = sizes[s];
        if (rows > max_rows)
            break;
        char db[600], base[600];
        snprintf(db, sizeof db, "%s/ck%u.db", dir, rows);
        snprintf(base, sizeof base, "%s/base%u.db", dir, rows);
        hr_app *app = open_app(db, rows);
        fill(app, rows);
        size_t bytes = hr_model_layout(app->model)->floats * sizeof(float);
        int64_t nfull, ninc;
        double tfull = checkpoint(app, "full", &nfull);
        double bfull = baseline_write(base, nfull, bytes);
        /* 1% of the rows changed. */
        hr_rng rng;
        hr_rng_seed(&rng, 7);
        uint32_t changed = rows / 100;
        for (uint32_t i = 0; i < changed; i++) {
            hr_table_id t = i & 1 ? HR_TABLE_ITEM : HR_TABLE_USER;
            uint32_t r = 1 + (uint32_t)hr_rng_below(&rng, rows / 2 - 1);
            hr_model_mark_dirty(app->model, t, r);
        }
        double tinc = checkpoint(app, "incremental", &ninc);
        double binc = baseline_write(base, ninc, bytes);
        printf("%u rows, %zu bytes each: full checkpoint %lld rows %.3f s vs plain SQLite %.3f s "
               "(ratio %.2f, goal <= 1.5); incremental %lld rows %.3f s vs plain %.3f s (ratio "
               "%.2f); incremental/full %.4f for %.4f of the rows\n",
               rows, bytes, (long long)nfull, tfull, bfull, tfull / bfull, (long long)ninc, tinc,
               binc, tinc / binc, tinc / tfull, (double)ninc / (double)nfull);
        if (rows == sizes[1] || rows == max_rows || s == 1)
            predict_bench(app, rows);
        hr_app_close(app, false);
        if (rows >= 1000000 || rows == max_rows) {
            /* Restart: the final close wrote one more (empty) increment. */
            baseline_write(base, nfull, bytes);
            double t0 = now();
            hr_app *again = open_app(db, rows);
            double trestart = now() - t0;
            json_t *st = hr_persist_stats(again->persist);
            json_t *start = json_object_get(st, "start");
            printf("restart from %u rows: %.3f s (restore %.3f s of it, %lld rows) vs reading "
                   "the plain table back %.3f s\n",
                   rows, trestart, json_real_value(json_object_get(start, "restore_seconds")),
                   (long long)json_integer_value(json_object_get(start, "restored_rows")),
                   baseline_read(base));
            json_decref(st);
            hr_app_close(again, false);
        }
    }
    ingest_bench();
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
    return 0;
}

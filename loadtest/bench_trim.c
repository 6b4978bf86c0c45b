/*
 * bench_trim.c - the event log's trim: how long the commit that deletes the
 * events a checkpoint covers holds the commit thread (and so every 202 that
 * waits for the next commit), one delete against deletes of at most
 * HR_EVLOG_TRIM_CHUNK seqs per commit (what hr_evlog does), on the same
 * log file rebuilt for each, in the same run.
 *
 * usage: bench_trim [ROWS] [ROUNDS] [CHUNK]
 * (default 1000000 rows, 3 rounds, HR_EVLOG_TRIM_CHUNK seqs per commit)
 * Writes a temporary log database (about 100 bytes per row) under $TMPDIR
 * or /tmp and removes it. Not a test: prints figures, asserts nothing.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hogrec/common.h"
#include "hogrec/evlog.h"
#include "hogrec/store.h"
#include "bench_machine.h"

static void die(const char *what, const hr_error *err)
{
    fprintf(stderr, "%s: %s\n", what, err->message);
    exit(1);
}

/* A fresh log of rows events (seqs 1..rows), written in commits of 2000. */
static hr_store *build(const char *path, uint64_t rows)
{
    char p[600];
    for (const char *sfx = ""; sfx; sfx = !*sfx ? "-wal" : !strcmp(sfx, "-wal") ? "-shm" : NULL) {
        snprintf(p, sizeof p, "%s%s", path, sfx);
        unlink(p);
    }
    hr_store_options o = {.kind = HR_STORE_LOG, .sync_full = true, .busy_ms = 1000};
    hr_store *s;
    hr_error err;
    if (hr_store_open(path, &o, &s, &err) != HR_OK)
        die("open", &err);
    enum { B = 2000 };
    static uint64_t seqs[B];
    static double arrived[B];
    static const char *json[B];
    static size_t len[B];
    static const char text[] = "{\"user\":\"u123456\",\"item\":\"i654321\",\"label\":1,"
                               "\"context\":{\"device\":\"phone\"}}";
    for (uint64_t at = 1; at <= rows; at += B) {
        size_t n = rows - at + 1 < B ? (size_t)(rows - at + 1) : B;
        for (size_t i = 0; i < n; i++) {
            seqs[i] = at + i;
            arrived[i] = 1.7e9 + (double)(at + i) * 1e-5;
            json[i] = text;
            len[i] = sizeof text - 1;
        }
        if (hr_store_log_write(s, seqs, arrived, json, len, n, 0, &err) != HR_OK)
            die("write", &err);
    }
    return s;
}

/* Trims seqs 1..upto in commits of at most chunk seqs; returns the longest
 * commit in ms, *total_ms the sum. */
static double trim(hr_store *s, uint64_t upto, uint64_t chunk, double *total_ms)
{
    double longest = 0;
    *total_ms = 0;
    hr_error err;
    for (uint64_t done = 0; done < upto;) {
        uint64_t to = upto - done > chunk ? done + chunk : upto;
        uint64_t t0 = hr_now_ns();
        if (hr_store_log_write(s, NULL, NULL, NULL, NULL, 0, to, &err) != HR_OK)
            die("trim", &err);
        double ms = (hr_now_ns() - t0) / 1e6;
        *total_ms += ms;
        if (ms > longest)
            longest = ms;
        done = to;
    }
    return longest;
}

int main(int argc, char **argv)
{
    uint64_t rows = argc > 1 ? strtoull(argv[1], NULL, 10) : 1000000;
    int rounds = argc > 2 ? atoi(argv[2]) : 3;
    uint64_t chunk = argc > 3 ? strtoull(argv[3], NULL, 10) : HR_EVLOG_TRIM_CHUNK;
    if (rows < 2 || rounds < 1 || chunk < 1) {
        fprintf(stderr, "usage: bench_trim [ROWS >= 2] [ROUNDS >= 1] [CHUNK >= 1]\n");
        return 2;
    }
    bench_print_machine();
    const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    char path[512];
    snprintf(path, sizeof path, "%s/hogrec-bench-trim-%d.db", tmp, (int)getpid());
    uint64_t upto = rows - rows / 10; /* a checkpoint covering 90% of the log */
    printf("log of %llu events; trim to seq %llu; chunk %llu seqs per commit\n\n",
           (unsigned long long)rows, (unsigned long long)upto, (unsigned long long)chunk);
    printf("| round | one commit: ms | chunked: longest commit ms | chunked: all commits ms | "
           "longest / one commit |\n|---|---|---|---|---|\n");
    for (int r = 0; r < rounds; r++) {
        double one_total, ch_total;
        hr_store *s = build(path, rows);
        double one = trim(s, upto, upto, &one_total);
        hr_store_close(s);
        s = build(path, rows);
        double ch = trim(s, upto, chunk, &ch_total);
        hr_store_close(s);
        printf("| %d | %.1f | %.1f | %.1f | %.3f |\n", r + 1, one, ch, ch_total, ch / one);
        fflush(stdout);
    }
    for (const char *sfx = ""; sfx; sfx = !*sfx ? "-wal" : !strcmp(sfx, "-wal") ? "-shm" : NULL) {
        char p[600];
        snprintf(p, sizeof p, "%s%s", path, sfx);
        unlink(p);
    }
    return 0;
}

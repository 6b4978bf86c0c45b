/*
 * test_evlog.c - tests of the durable event log (src/evlog.c) over a real
 * SQLite file.
 *
 * Sync mode: a wait returns once the events are committed, and a reopened
 * log holds them (text, seq, arrival time) and knows the last seq; a notify
 * runs its callback exactly once, at once when the outcome is known, else
 * on the committer thread (which may take the log's own lock: callbacks run
 * unlocked) or, for a seq never committed, at destroy with HR_EIO.
 * Interval mode: a wait returns at once, the commit follows, and destroy
 * commits what is buffered. Failure (SQLite write faults injected with
 * helper_faultvfs): the failed commit gives HR_EIO to its waiters and its
 * notifies, appends then fail fast and keep failing while the probes do,
 * the log recovers by itself once writes work, and every event acknowledged before or after is in the file.
 * Trim: deleted with the next commits, at most trim_chunk seqs each, the
 * committer going on by itself, from where the file's last trim stopped;
 * the last seq survives a trim of everything. Threads appending in seq order (as ingest does) and waiting
 * outside the lock all get their events acknowledged and stored. Commits of
 * sizes around the multi-row INSERT store exactly their events; a disk that
 * fills in the middle of those statements refuses that commit only.
 *
 * No assertion is about time; every wait is bounded in count.
 */
/* ctest-labels: concurrent */
#include <math.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "helper_faultvfs.h"
#include "hogrec/evlog.h"
#include "hogrec/store.h"
#include "testutil.h"

#define T_ARRIVED 1.7e9 /* arrival time logged with the events */

typedef struct {
    char dir[256];
    char path[512]; /* <dir>/t.db-events, the name persist gives the log */
} logfile;

static void logfile_make(logfile *f)
{
    snprintf(f->dir, sizeof f->dir, "%s", tu_tmpdir());
    snprintf(f->path, sizeof f->path, "%s/t.db-events", f->dir);
}

static hr_store *open_store(const char *path)
{
    hr_store_options o = {.kind = HR_STORE_LOG, .sync_full = true, .busy_ms = 1000,
                          .quick_check = true};
    hr_store *s = NULL;
    hr_error err = {{0}, {0}};
    hr_status st = hr_store_open(path, &o, &s, &err);
    if (st != HR_OK)
        fail_msg("hr_store_open %s: %s", path, err.message);
    return s;
}

/* A log over path, continuing after the seqs its file holds; started
 * unless start is false. */
static hr_evlog *open_log_chunk(const char *path, bool sync, unsigned interval_ms, bool start,
                                 uint64_t trim_chunk)
{
    hr_store *s = open_store(path);
    uint64_t last = 0;
    hr_error err = {{0}, {0}};
    assert_int_equal(hr_store_log_last_seq(s, &last, &err), HR_OK);
    hr_evlog_options o = {.sync = sync, .interval_ms = interval_ms, .retry_ms = 5,
                          .trim_chunk = trim_chunk};
    hr_evlog *log = NULL;
    assert_int_equal(hr_evlog_create(s, &o, last, &log, &err), HR_OK);
    assert_int_equal(hr_evlog_last_seq(log), last);
    if (start)
        assert_int_equal(hr_evlog_start(log, &err), HR_OK);
    return log;
}

static hr_evlog *open_log(const char *path, bool sync, unsigned interval_ms, bool start)
{
    return open_log_chunk(path, sync, interval_ms, start, 0);
}

static int event_text(uint64_t seq, char *buf, size_t cap)
{
    return snprintf(buf, cap, "{\"item\":\"i%llu\",\"user\":\"u%llu\"}",
                    (unsigned long long)(seq % 97), (unsigned long long)seq);
}

/* Appends seqs first..first+n-1 (n <= 64) with their generated texts. */
static hr_status append(hr_evlog *log, uint64_t first, size_t n, hr_error *err)
{
    char text[64][64];
    const char *json[64];
    size_t len[64];
    assert_true(n <= 64);
    for (size_t i = 0; i < n; i++) {
        len[i] = (size_t)event_text(first + i, text[i], sizeof text[i]);
        json[i] = text[i];
    }
    return hr_evlog_append(log, first, T_ARRIVED, json, len, n, err);
}

/* What a file holds: seqs in scan order, each text and time checked. */
typedef struct {
    uint64_t seq[4096];
    size_t n;
    bool texts_ok, times_ok;
} contents;

static hr_status collect(void *ctx, uint64_t seq, double arrived, const char *json, size_t len)
{
    contents *c = ctx;
    char want[64];
    int n = event_text(seq, want, sizeof want);
    if ((size_t)n != len || memcmp(want, json, len) != 0)
        c->texts_ok = false;
    if (arrived != T_ARRIVED)
        c->times_ok = false;
    if (c->n < HR_ARRAY_LEN(c->seq))
        c->seq[c->n++] = seq;
    return HR_OK;
}

/* Reads the closed log file: its events in order, trimmed_to, last seq. */
static contents *read_file(const char *path, uint64_t *trimmed, uint64_t *last)
{
    hr_store *s = open_store(path);
    contents *c = calloc(1, sizeof *c);
    c->texts_ok = c->times_ok = true;
    hr_error err = {{0}, {0}};
    assert_int_equal(hr_store_log_scan(s, 0, collect, c, &err), HR_OK);
    uint64_t count = 0;
    assert_int_equal(hr_store_log_count(s, &count, &err), HR_OK);
    assert_int_equal(count, c->n);
    if (trimmed)
        assert_int_equal(hr_store_log_trimmed_to(s, trimmed, &err), HR_OK);
    if (last)
        assert_int_equal(hr_store_log_last_seq(s, last, &err), HR_OK);
    hr_store_close(s);
    assert_true(c->texts_ok);
    assert_true(c->times_ok);
    for (size_t i = 1; i < c->n; i++)
        assert_true(c->seq[i] > c->seq[i - 1]);
    return c;
}

static bool holds(const contents *c, uint64_t seq)
{
    for (size_t i = 0; i < c->n; i++)
        if (c->seq[i] == seq)
            return true;
    return false;
}

static void nap(void)
{
    nanosleep(&(struct timespec){0, 2 * 1000000L}, NULL);
}

/* ---- notify bookkeeping ---- */

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int calls;
    hr_status st;
    char why[256];
    hr_evlog *log;        /* when set, the callback takes the log's lock */
    uint64_t durable_seen; /* durable seq the callback read */
} note;

static void note_init(note *n)
{
    memset(n, 0, sizeof *n);
    pthread_mutex_init(&n->mu, NULL);
    pthread_cond_init(&n->cv, NULL);
    n->st = HR_STATUS_COUNT;
}

static void note_destroy(note *n)
{
    pthread_cond_destroy(&n->cv);
    pthread_mutex_destroy(&n->mu);
}

static void on_outcome(void *arg, hr_status st, const char *why)
{
    note *n = arg;
    uint64_t durable = 0;
    if (n->log) /* takes the log's mutex: deadlocks if called under it */
        hr_evlog_counts(n->log, &durable, NULL, NULL, NULL);
    pthread_mutex_lock(&n->mu);
    n->calls++;
    n->st = st;
    n->durable_seen = durable;
    snprintf(n->why, sizeof n->why, "%s", why ? why : "");
    pthread_cond_broadcast(&n->cv);
    pthread_mutex_unlock(&n->mu);
}

/* Waits (bounded in count) until n was called; returns the number of calls. */
static int note_wait(note *n)
{
    pthread_mutex_lock(&n->mu);
    for (int i = 0; i < 600 && n->calls == 0; i++) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += 1;
        pthread_cond_timedwait(&n->cv, &n->mu, &until);
    }
    int calls = n->calls;
    pthread_mutex_unlock(&n->mu);
    return calls;
}

/* ---- sync ---- */

static void test_sync_wait_then_reopen(void **state)
{
    (void)state;
    logfile f;
    logfile_make(&f);
    hr_evlog *log = open_log(f.path, true, 100, true);
    hr_error err = {{0}, {0}};
    assert_null(hr_evlog_health(log));
    assert_int_equal(append(log, 1, 3, &err), HR_OK);
    assert_int_equal(append(log, 4, 2, &err), HR_OK);
    assert_int_equal(hr_evlog_last_seq(log), 5);
    assert_int_equal(hr_evlog_wait(log, 5, &err), HR_OK);
    uint64_t durable, commits, failures, pending;
    hr_evlog_counts(log, &durable, &commits, &failures, &pending);
    assert_true(durable >= 5);
    assert_true(commits >= 1 && commits <= 2);
    assert_int_equal(failures, 0);
    assert_int_equal(pending, 0);
    /* committed before destroy: in the file, read by another connection */
    contents *c = read_file(f.path, NULL, NULL);
    assert_int_equal(c->n, 5);
    free(c);
    /* the outcome is known: the callback runs before notify returns */
    note n;
    note_init(&n);
    assert_int_equal(hr_evlog_notify(log, 5, on_outcome, &n), HR_OK);
    assert_int_equal(n.calls, 1);
    assert_int_equal(n.st, HR_OK);
    note_destroy(&n);
    hr_evlog_destroy(log);
    hr_evlog_destroy(NULL);

    uint64_t last = 0;
    c = read_file(f.path, NULL, &last);
    assert_int_equal(c->n, 5);
    for (size_t i = 0; i < 5; i++)
        assert_int_equal(c->seq[i], i + 1);
    assert_int_equal(last, 5);
    free(c);
    /* reopened: continues after seq 5 */
    log = open_log(f.path, true, 100, true);
    assert_int_equal(hr_evlog_last_seq(log), 5);
    assert_int_equal(append(log, 6, 1, &err), HR_OK);
    assert_int_equal(hr_evlog_wait(log, 6, &err), HR_OK);
    hr_evlog_destroy(log);
    c = read_file(f.path, NULL, &last);
    assert_int_equal(c->n, 6);
    assert_int_equal(last, 6);
    free(c);
    tu_rmtree(f.dir);
}

/* Registers a notify before the committer runs, then starts it: the
 * callback runs once, on the committer, and may take the log's lock. */
typedef struct {
    int calls;
    hr_status st;
    uint64_t durable_seen;
    int never_calls;
    hr_status never_st;
    char never_why[256];
} notify_result;

static void notify_run(void *arg)
{
    notify_result *r = arg;
    logfile f;
    logfile_make(&f);
    hr_evlog *log = open_log(f.path, true, 100, false);
    hr_error err = {{0}, {0}};
    note n, never;
    note_init(&n);
    note_init(&never);
    n.log = log;
    assert_int_equal(append(log, 1, 4, &err), HR_OK);
    assert_int_equal(hr_evlog_notify(log, 4, on_outcome, &n), HR_OK);
    assert_int_equal(n.calls, 0); /* nothing committed before the start */
    assert_int_equal(hr_evlog_notify(log, 9, on_outcome, &never), HR_OK);
    assert_int_equal(hr_evlog_start(log, &err), HR_OK);
    note_wait(&n);
    r->calls = n.calls;
    r->st = n.st;
    r->durable_seen = n.durable_seen;
    hr_evlog_destroy(log); /* seq 9 was never appended: HR_EIO here */
    r->never_calls = never.calls;
    r->never_st = never.st;
    snprintf(r->never_why, sizeof r->never_why, "%s", never.why);
    note_destroy(&n);
    note_destroy(&never);
    tu_rmtree(f.dir);
}

static void test_notify_once_unlocked(void **state)
{
    (void)state;
    notify_result r;
    /* a callback run under the log's lock would deadlock: in a child first */
    assert_true(tu_terminates(notify_run, &r, 120));
    memset(&r, 0, sizeof r);
    notify_run(&r);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.st, HR_OK);
    assert_true(r.durable_seen >= 4);
    assert_int_equal(r.never_calls, 1);
    assert_int_equal(r.never_st, HR_EIO);
    assert_true(r.never_why[0] != 0);
}

static void test_destroy_unstarted_settles_notifies(void **state)
{
    (void)state;
    logfile f;
    logfile_make(&f);
    hr_evlog *log = open_log(f.path, true, 100, false);
    hr_error err = {{0}, {0}};
    note n;
    note_init(&n);
    assert_int_equal(append(log, 1, 2, &err), HR_OK);
    assert_int_equal(hr_evlog_notify(log, 2, on_outcome, &n), HR_OK);
    assert_int_equal(n.calls, 0);
    hr_evlog_destroy(log);
    assert_int_equal(n.calls, 1);
    assert_int_equal(n.st, HR_EIO);
    note_destroy(&n);
    tu_rmtree(f.dir);
}

/* ---- interval ---- */

static void test_interval_mode(void **state)
{
    (void)state;
    logfile f;
    logfile_make(&f);
    /* not started: nothing can commit, yet the wait returns at once */
    hr_evlog *log = open_log(f.path, false, 5, false);
    hr_error err = {{0}, {0}};
    assert_int_equal(append(log, 1, 10, &err), HR_OK);
    assert_int_equal(hr_evlog_wait(log, 10, &err), HR_OK);
    note n;
    note_init(&n);
    assert_int_equal(hr_evlog_notify(log, 10, on_outcome, &n), HR_OK);
    assert_int_equal(n.calls, 1); /* known at once, too */
    assert_int_equal(n.st, HR_OK);
    note_destroy(&n);
    uint64_t durable, pending;
    hr_evlog_counts(log, &durable, NULL, NULL, &pending);
    assert_int_equal(durable, 0);
    assert_int_equal(pending, 10);
    /* started: committed within the period (waited for, not timed) */
    assert_int_equal(hr_evlog_start(log, &err), HR_OK);
    for (int i = 0; i < 30000 && durable < 10; i++) {
        nap();
        hr_evlog_counts(log, &durable, NULL, NULL, NULL);
    }
    assert_int_equal(durable, 10);
    contents *c = read_file(f.path, NULL, NULL);
    assert_int_equal(c->n, 10);
    free(c);
    /* destroy commits what is still buffered */
    assert_int_equal(append(log, 11, 5, &err), HR_OK);
    hr_evlog_destroy(log);
    uint64_t last;
    c = read_file(f.path, NULL, &last);
    assert_int_equal(c->n, 15);
    assert_int_equal(last, 15);
    free(c);
    tu_rmtree(f.dir);
}

/* ---- failure ---- */

static void failing_commit(int rc, const char *says)
{
    fv_install();
    logfile f;
    logfile_make(&f);
    hr_evlog *log = open_log(f.path, true, 100, true);
    hr_error err = {{0}, {0}};
    assert_int_equal(append(log, 1, 3, &err), HR_OK);
    assert_int_equal(hr_evlog_wait(log, 3, &err), HR_OK); /* acknowledged */

    fv_fail_writes(".db-events-wal", rc);
    note n;
    note_init(&n);
    hr_status st = append(log, 4, 2, &err);
    assert_int_equal(st, HR_OK); /* not known to fail yet */
    assert_int_equal(hr_evlog_notify(log, 5, on_outcome, &n), HR_OK);
    memset(&err, 0, sizeof err);
    assert_int_equal(hr_evlog_wait(log, 5, &err), HR_EIO);
    assert_true(err.message[0] != 0);
    assert_int_equal(note_wait(&n), 1);
    assert_int_equal(n.st, HR_EIO);
    assert_true(n.why[0] != 0);
    note_destroy(&n);
    const char *why = hr_evlog_health(log);
    assert_non_null(why);
    if (!strstr(why, says))
        fail_msg("health '%s' does not say '%s'", why, says);
    /* appends fail fast now; what was acknowledged stays acknowledged */
    memset(&err, 0, sizeof err);
    assert_int_equal(append(log, 6, 1, &err), HR_EIO);
    assert_true(err.message[0] != 0);
    assert_int_equal(hr_evlog_wait(log, 3, &err), HR_OK);
    uint64_t failures;
    hr_evlog_counts(log, NULL, NULL, &failures, NULL);
    assert_true(failures >= 1);
    assert_true(fv_failed_writes() > 0);
    /* while writes fail, so do the probes: the log stays failing (waited
     * for: two more failed writes, or the health turning wrongly good) */
    long seen = fv_failed_writes();
    for (int i = 0; i < 30000 && hr_evlog_health(log) && fv_failed_writes() < seen + 2; i++)
        nap();
    assert_true(fv_failed_writes() >= seen + 2);
    assert_non_null(hr_evlog_health(log));
    assert_int_equal(append(log, 6, 1, &err), HR_EIO);

    /* the disk comes back: the log probes and recovers by itself */
    fv_fail_writes(NULL, 0);
    for (int i = 0; i < 30000 && hr_evlog_health(log); i++)
        nap();
    assert_null(hr_evlog_health(log));
    uint64_t next = hr_evlog_last_seq(log) + 1;
    assert_int_equal(append(log, next, 2, &err), HR_OK);
    assert_int_equal(hr_evlog_wait(log, next + 1, &err), HR_OK);
    hr_evlog_destroy(log);

    /* every acknowledged event is in the file, which is sound */
    uint64_t last;
    contents *c = read_file(f.path, NULL, &last);
    for (uint64_t s = 1; s <= 3; s++)
        assert_true(holds(c, s));
    assert_true(holds(c, next));
    assert_true(holds(c, next + 1));
    assert_int_equal(last, next + 1);
    free(c);
    tu_rmtree(f.dir);
}

static void test_failed_commit_disk_full(void **state)
{
    (void)state;
    failing_commit(SQLITE_FULL, "full");
}

static void test_failed_commit_write_error(void **state)
{
    (void)state;
    failing_commit(SQLITE_IOERR_WRITE, "I/O");
}

/* ---- trim ---- */

static void test_trim(void **state)
{
    (void)state;
    logfile f;
    logfile_make(&f);
    hr_evlog *log = open_log(f.path, true, 100, true);
    hr_error err = {{0}, {0}};
    assert_int_equal(append(log, 1, 10, &err), HR_OK);
    assert_int_equal(hr_evlog_wait(log, 10, &err), HR_OK);
    hr_evlog_trim(log, 4);
    hr_evlog_trim(log, 2); /* lower: no effect */
    assert_int_equal(append(log, 11, 1, &err), HR_OK);
    assert_int_equal(hr_evlog_wait(log, 11, &err), HR_OK);
    uint64_t trimmed, last;
    contents *c = read_file(f.path, &trimmed, &last);
    assert_int_equal(c->n, 7);
    assert_int_equal(c->seq[0], 5);
    assert_int_equal(trimmed, 4);
    assert_int_equal(last, 11);
    free(c);
    /* everything trimmed (committed at destroy): the last seq is kept */
    hr_evlog_trim(log, 11);
    hr_evlog_destroy(log);
    c = read_file(f.path, &trimmed, &last);
    assert_int_equal(c->n, 0);
    assert_int_equal(trimmed, 11);
    assert_int_equal(last, 11);
    free(c);
    log = open_log(f.path, true, 100, true);
    assert_int_equal(hr_evlog_last_seq(log), 11);
    hr_evlog_destroy(log);
    tu_rmtree(f.dir);
}

/* Waits (bounded) until the file records a trim to upto; returns the
 * commits the log has made by then (the last of them did that trim). */
static uint64_t commits_when_trimmed(hr_evlog *log, const char *path, uint64_t upto)
{
    uint64_t trimmed = 0;
    for (int i = 0; i < 2000 && trimmed < upto; i++) {
        hr_store *s = open_store(path);
        hr_error err = {{0}, {0}};
        assert_int_equal(hr_store_log_trimmed_to(s, &trimmed, &err), HR_OK);
        hr_store_close(s);
        if (trimmed < upto)
            tu_sleep_ms(5);
    }
    assert_int_equal(trimmed, upto);
    uint64_t commits = 0;
    hr_evlog_counts(log, NULL, &commits, NULL, NULL);
    return commits;
}

/* A trim deletes at most trim_chunk seqs per commit, oldest first, and the
 * committer goes on by itself until it is done (so no commit that
 * acknowledges events waits on one long delete); a reopened log goes on
 * from the trim the file records. */
static void test_trim_in_chunks(void **state)
{
    (void)state;
    logfile f;
    logfile_make(&f);
    hr_evlog *log = open_log_chunk(f.path, true, 100, true, 3);
    hr_error err = {{0}, {0}};
    assert_int_equal(append(log, 1, 20, &err), HR_OK);
    assert_int_equal(hr_evlog_wait(log, 20, &err), HR_OK);
    uint64_t before = 0, trimmed, last;
    hr_evlog_counts(log, NULL, &before, NULL, NULL);
    hr_evlog_trim(log, 10); /* seqs 1-3, 4-6, 7-9, 10: four commits */
    assert_int_equal(commits_when_trimmed(log, f.path, 10), before + 4);
    contents *c = read_file(f.path, &trimmed, &last);
    assert_int_equal(trimmed, 10);
    assert_int_equal(c->n, 10);
    assert_int_equal(c->seq[0], 11);
    free(c);
    hr_evlog_destroy(log);
    /* reopened: trimmed_to 10 is where the next trim starts, so 12 is one commit */
    log = open_log_chunk(f.path, true, 100, true, 3);
    hr_evlog_counts(log, NULL, &before, NULL, NULL);
    hr_evlog_trim(log, 12);
    assert_int_equal(commits_when_trimmed(log, f.path, 12), before + 1);
    hr_evlog_destroy(log);
    c = read_file(f.path, &trimmed, &last);
    assert_int_equal(trimmed, 12);
    assert_int_equal(c->n, 8);
    assert_int_equal(c->seq[0], 13);
    assert_int_equal(last, 20);
    free(c);
    tu_rmtree(f.dir);
}

/* ---- threads ---- */

#define THREADS 4
#define ROUNDS 60

typedef struct {
    hr_evlog *log;
    pthread_mutex_t *order; /* the ingest lock: seqs are appended in order */
    uint64_t *next_seq;     /* under order */
    int no;
    int failures;
    note *notes;            /* ROUNDS, for the odd rounds */
} appender;

static void *append_loop(void *arg)
{
    appender *a = arg;
    for (int r = 0; r < ROUNDS; r++) {
        size_t n = 1 + (size_t)((r + a->no) % 5);
        pthread_mutex_lock(a->order);
        uint64_t first = *a->next_seq;
        hr_error err;
        hr_status st = append(a->log, first, n, &err);
        if (st == HR_OK)
            *a->next_seq += n;
        pthread_mutex_unlock(a->order);
        if (st != HR_OK) {
            a->failures++;
            continue;
        }
        if (r % 2 == 0) {
            if (hr_evlog_wait(a->log, first + n - 1, &err) != HR_OK)
                a->failures++;
        } else if (hr_evlog_notify(a->log, first + n - 1, on_outcome, &a->notes[r]) != HR_OK) {
            a->failures++;
        }
    }
    return NULL;
}

static void test_threads_group_commit(void **state)
{
    (void)state;
    logfile f;
    logfile_make(&f);
    hr_evlog *log = open_log(f.path, true, 100, true);
    pthread_mutex_t order = PTHREAD_MUTEX_INITIALIZER;
    uint64_t next_seq = 1;
    appender a[THREADS];
    pthread_t t[THREADS];
    note *notes = calloc((size_t)THREADS * ROUNDS, sizeof *notes);
    for (int i = 0; i < THREADS * ROUNDS; i++)
        note_init(&notes[i]);
    for (int i = 0; i < THREADS; i++) {
        a[i] = (appender){log, &order, &next_seq, i, 0, notes + (size_t)i * ROUNDS};
        assert_int_equal(pthread_create(&t[i], NULL, append_loop, &a[i]), 0);
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    for (int i = 0; i < THREADS; i++) {
        assert_int_equal(a[i].failures, 0);
        for (int r = 1; r < ROUNDS; r += 2) {
            note *n = &a[i].notes[r];
            assert_int_equal(note_wait(n), 1);
            assert_int_equal(n->st, HR_OK);
        }
    }
    uint64_t total = next_seq - 1, commits;
    hr_evlog_counts(log, NULL, &commits, NULL, NULL);
    assert_true(commits >= 1 && commits <= total);
    hr_evlog_destroy(log);
    for (int i = 0; i < THREADS * ROUNDS; i++) {
        assert_true(notes[i].calls <= 1); /* exactly once, never twice */
        note_destroy(&notes[i]);
    }
    free(notes);
    uint64_t last;
    contents *c = read_file(f.path, NULL, &last);
    assert_int_equal(c->n, total);
    assert_int_equal(last, total);
    for (size_t i = 0; i < c->n; i++)
        assert_int_equal(c->seq[i], i + 1);
    free(c);
    tu_rmtree(f.dir);
}

/* ---- commit sizes around the multi-row statement ---- */

/* Appends seqs first..first+n-1 in calls of at most 64 events. */
static void append_many(hr_evlog *log, uint64_t first, size_t n)
{
    hr_error err = {{0}, {0}};
    for (size_t done = 0; done < n;) {
        size_t k = n - done < 64 ? n - done : 64;
        assert_int_equal(append(log, first + done, k, &err), HR_OK);
        done += k;
    }
}

/* Each size buffered before the committer starts, so it is one commit: 1,
 * R - 1, R, R + 1 and several R plus a remainder (R = rows per INSERT
 * statement). After each, the file holds exactly seqs 1..last in order with
 * their texts and times. */
static void test_commit_sizes(void **state)
{
    (void)state;
    const size_t R = HR_STORE_LOG_ROWS_PER_INSERT;
    const size_t sizes[] = {1, R - 1, R, R + 1, 3 * R + 2};
    logfile f;
    logfile_make(&f);
    uint64_t next = 1;
    hr_error err = {{0}, {0}};
    for (size_t k = 0; k < HR_ARRAY_LEN(sizes); k++) {
        hr_evlog *log = open_log(f.path, true, 100, false);
        append_many(log, next, sizes[k]);
        next += sizes[k];
        assert_int_equal(hr_evlog_start(log, &err), HR_OK);
        assert_int_equal(hr_evlog_wait(log, next - 1, &err), HR_OK);
        uint64_t commits;
        hr_evlog_counts(log, NULL, &commits, NULL, NULL);
        assert_int_equal(commits, 1);
        hr_evlog_destroy(log);
        uint64_t last;
        contents *c = read_file(f.path, NULL, &last); /* texts and times checked */
        assert_int_equal(c->n, next - 1);
        assert_int_equal(last, next - 1);
        for (size_t i = 0; i < c->n; i++)
            assert_int_equal(c->seq[i], i + 1);
        free(c);
    }
    tu_rmtree(f.dir);
}

/* A disk that fills while a large commit's multi-row INSERTs run (more
 * events than SQLite's page cache holds: pages spill to the WAL
 * mid-statement): that commit is refused (HR_EIO to its notify), what was
 * acknowledged before stays acknowledged and in the file, none of the
 * refused events is, and the log recovers once the disk does. */
static void test_failed_commit_mid_statement(void **state)
{
    (void)state;
    fv_install();
    logfile f;
    logfile_make(&f);
    hr_evlog *log = open_log(f.path, true, 100, true);
    hr_error err = {{0}, {0}};
    append_many(log, 1, 3);
    assert_int_equal(hr_evlog_wait(log, 3, &err), HR_OK); /* acknowledged */
    hr_evlog_destroy(log);

    log = open_log(f.path, true, 100, false);
    const size_t big = 100000; /* about 4 MB of rows: the cache is 2 MB */
    append_many(log, 4, big);
    fv_fail_writes(".db-events-wal", SQLITE_FULL);
    note n;
    note_init(&n);
    assert_int_equal(hr_evlog_notify(log, 3 + big, on_outcome, &n), HR_OK);
    assert_int_equal(hr_evlog_start(log, &err), HR_OK);
    assert_int_equal(note_wait(&n), 1);
    assert_int_equal(n.st, HR_EIO);
    if (!strstr(n.why, "writing events") || !strstr(n.why, "full"))
        fail_msg("not refused while writing the events: '%s'", n.why);
    note_destroy(&n);
    assert_true(fv_failed_writes() > 0);
    assert_int_equal(hr_evlog_wait(log, 3, &err), HR_OK);
    memset(&err, 0, sizeof err);
    assert_int_equal(hr_evlog_wait(log, 4, &err), HR_EIO);

    fv_fail_writes(NULL, 0);
    for (int i = 0; i < 30000 && hr_evlog_health(log); i++)
        nap();
    assert_null(hr_evlog_health(log));
    uint64_t next = hr_evlog_last_seq(log) + 1;
    append_many(log, next, 1);
    assert_int_equal(hr_evlog_wait(log, next, &err), HR_OK);
    hr_evlog_destroy(log);

    contents *c = read_file(f.path, NULL, NULL);
    assert_int_equal(c->n, 4);
    for (uint64_t s = 1; s <= 3; s++)
        assert_true(holds(c, s));
    assert_true(holds(c, next));
    free(c);
    tu_rmtree(f.dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sync_wait_then_reopen),
        cmocka_unit_test(test_notify_once_unlocked),
        cmocka_unit_test(test_destroy_unstarted_settles_notifies),
        cmocka_unit_test(test_interval_mode),
        cmocka_unit_test_teardown(test_failed_commit_disk_full, fv_clear_faults),
        cmocka_unit_test_teardown(test_failed_commit_write_error, fv_clear_faults),
        cmocka_unit_test(test_trim),
        cmocka_unit_test(test_trim_in_chunks),
        cmocka_unit_test(test_threads_group_commit),
        cmocka_unit_test(test_commit_sizes),
        cmocka_unit_test_teardown(test_failed_commit_mid_statement, fv_clear_faults),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

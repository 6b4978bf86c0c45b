/*
 * evlog.c - the durable event log: buffering, group commit, health. See
 * evlog.h; the SQL is in store.c.
 *
 * DESIGN - why an SQLite table with group commit (and not a file of our
 * own): SQLite in WAL mode already gives an append that is atomic per
 * transaction, survives kill -9 and power loss (synchronous=FULL), detects
 * torn writes (WAL frame checksums), reports a full disk as SQLITE_FULL
 * without damaging what was committed, and can be read and trimmed with SQL
 * and backed up with the sqlite3 shell. A hand-written file would need all of
 * that re-done (framing, checksums, truncating a torn tail, trimming by
 * rewriting). What SQLite costs is about a millisecond per durable commit, so
 * commits are shared: the ingest path appends events to a buffer under its
 * lock; one committer thread takes everything buffered, writes it in one
 * transaction, fsyncs once and wakes the waiters. While it commits, new
 * events gather for the next commit, so under load one fsync covers many
 * requests and throughput is bounded by bandwidth, not by fsync latency.
 *
 * The log is its own database file (<db>-events) because SQLite has one
 * writer per file and a checkpoint transaction can take seconds.
 *
 * Failure: a failed commit fails every event buffered so far (their waiters
 * get HR_EIO: no 202) and turns the log unhealthy; appends then fail fast.
 * The committer probes the database every retry_ms and turns healthy again
 * when a probe commits.
 *
 * Waiting: hr_evlog_wait blocks on a condition variable; hr_evlog_notify
 * (HTTP threads that suspend their connection instead of blocking) leaves a
 * waiter {seq, callback} on a list. After each commit the committer detaches
 * the waiters it settled, unlocks, and calls them; at exit it settles every
 * one left (HR_EIO). Callbacks never run under mu, so they may take locks
 * of their own (libmicrohttpd's, when they resume a connection).
 *
 * Threads: append from the ingest path (under its lock); wait and notify
 * from HTTP threads; one committer thread; trim/counts from the checkpoint
 * thread.
 */
#include "hogrec/evlog.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hogrec/store.h"

/* Events buffered for one commit. */
typedef struct {
    uint64_t *seqs;
    double *arrived; /* wall time each event arrived at */
    size_t *offs;  /* start of each event's text in text */
    size_t *lens;
    const char **ptrs; /* filled just before writing */
    char *text;
    size_t n, cap;        /* events */
    size_t tlen, tcap;    /* text bytes */
} batch;

/* A range of seqs whose commit failed (their waiters get HR_EIO). */
typedef struct {
    uint64_t lo, hi;
} seq_range;

#define FAILED_RANGES 64

/* A pending hr_evlog_notify. */
typedef struct waiter {
    struct waiter *next;
    uint64_t seq;
    hr_evlog_notify_fn cb;
    void *arg;
    hr_status st;      /* outcome, once settled */
    const char *why;
} waiter;

struct hr_evlog {
    hr_store *store;              /* owned; the committer's after start */
    hr_evlog_options opt;
    pthread_mutex_t mu;
    pthread_cond_t work;          /* committer: something to do, or stop */
    pthread_cond_t done;          /* waiters: processed advanced or stopping */
    batch pend;                   /* appended, not yet taken; under mu */
    batch out;                    /* being committed; committer only */
    atomic_uint_fast64_t appended; /* highest seq appended (written under mu) */
    uint64_t processed;           /* highest seq whose commit finished; under mu */
    seq_range failed[FAILED_RANGES]; /* ring of failed ranges; under mu */
    unsigned nfailed;             /* ranges ever recorded; under mu */
    hr_status_board health;       /* NULL when healthy; set under mu */
    uint64_t trim_req, trimmed;   /* under mu */
    bool stop;                    /* under mu */
    bool started;
    bool exited;                  /* committer gone; under mu */
    pthread_t thread;
    uint64_t commits, failures;   /* under mu */
    waiter *waiters;              /* pending notifies, unordered; under mu */
};

static void batch_free(batch *b)
{
    free(b->seqs);
    free(b->arrived);
    free(b->offs);
    free(b->lens);
    free(b->ptrs);
    free(b->text);
    memset(b, 0, sizeof *b);
}

static hr_status batch_add(batch *b, uint64_t seq, double arrived, const char *json, size_t len)
{
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        uint64_t *s = realloc(b->seqs, cap * sizeof *s);
        if (s)
            b->seqs = s;
        size_t *o = realloc(b->offs, cap * sizeof *o);
        if (o)
            b->offs = o;
        size_t *l = realloc(b->lens, cap * sizeof *l);
        if (l)
            b->lens = l;
        const char **p = realloc(b->ptrs, cap * sizeof *p);
        if (p)
            b->ptrs = p;
        double *a = realloc(b->arrived, cap * sizeof *a);
        if (a)
            b->arrived = a;
        if (!s || !o || !l || !p || !a)
            return HR_ENOMEM;
        b->cap = cap;
    }
    if (b->tlen + len > b->tcap) {
        size_t cap = b->tcap ? b->tcap : 16384;
        while (cap < b->tlen + len)
            cap *= 2;
        char *t = realloc(b->text, cap);
        if (!t)
            return HR_ENOMEM;
        b->text = t;
        b->tcap = cap;
    }
    memcpy(b->text + b->tlen, json, len);
    b->seqs[b->n] = seq;
    b->arrived[b->n] = arrived;
    b->offs[b->n] = b->tlen;
    b->lens[b->n] = len;
    b->n++;
    b->tlen += len;
    return HR_OK;
}

/* Publishes a health message (NULL = healthy). Under mu. */
static void set_health(hr_evlog *log, const char *text)
{
    hr_status_board_set(&log->health, text, "event log failing (out of memory)");
}

static void record_failed(hr_evlog *log, uint64_t lo, uint64_t hi)
{
    log->failed[log->nfailed % FAILED_RANGES] = (seq_range){lo, hi};
    log->nfailed++;
}

static bool is_failed(const hr_evlog *log, uint64_t seq)
{
    unsigned n = log->nfailed < FAILED_RANGES ? log->nfailed : FAILED_RANGES;
    for (unsigned i = 0; i < n; i++)
        if (seq >= log->failed[i].lo && seq <= log->failed[i].hi)
            return true;
    return false;
}

/* The outcome for seq once processed >= seq or the committer exited. Under mu. */
static hr_status outcome(const hr_evlog *log, uint64_t seq, const char **why)
{
    *why = NULL;
    if (log->processed < seq) {
        *why = "event log closed before the commit";
        return HR_EIO;
    }
    if (is_failed(log, seq)) {
        const char *h = hr_status_board_get(&log->health);
        *why = h ? h : "event log: commit failed";
        return HR_EIO;
    }
    return HR_OK;
}

/* Detaches the waiters whose outcome is known (all of them when all), with
 * their outcome set. Under mu. */
static waiter *take_settled(hr_evlog *log, bool all)
{
    waiter *done = NULL, **pp = &log->waiters;
    while (*pp) {
        waiter *w = *pp;
        if (all || w->seq <= log->processed) {
            *pp = w->next;
            w->st = outcome(log, w->seq, &w->why);
            w->next = done;
            done = w;
        } else {
            pp = &w->next;
        }
    }
    return done;
}

/* Calls and frees detached waiters. Not under mu. */
static void run_settled(waiter *w)
{
    while (w) {
        waiter *next = w->next;
        w->cb(w->arg, w->st, w->why);
        free(w);
        w = next;
    }
}

static void *committer(void *arg)
{
    hr_evlog *log = arg;
    struct timespec next;
    next = hr_deadline_after(log->opt.interval_ms * 1e-3);
    pthread_mutex_lock(&log->mu);
    for (;;) {
        if (hr_status_board_get(&log->health)) {
            /* Failing: nothing is buffered (appends fail fast); probe. */
            if (log->stop)
                break;
            struct timespec ts;
            ts = hr_deadline_after(log->opt.retry_ms * 1e-3);
            pthread_cond_timedwait(&log->work, &log->mu, &ts);
            if (log->stop)
                break;
            pthread_mutex_unlock(&log->mu);
            hr_error err;
            hr_status st = hr_store_log_probe(log->store, &err);
            pthread_mutex_lock(&log->mu);
            if (st == HR_OK)
                set_health(log, NULL);
            else
                set_health(log, err.message);
            pthread_cond_broadcast(&log->done);
            continue;
        }
        if (log->pend.n == 0 && log->trim_req <= log->trimmed) {
            if (log->stop)
                break;
            pthread_cond_wait(&log->work, &log->mu);
            continue;
        }
        if (!log->opt.sync && !log->stop) {
            /* Interval mode: one commit per period, whatever has gathered. */
            if (pthread_cond_timedwait(&log->work, &log->mu, &next) != ETIMEDOUT)
                continue;
            next = hr_deadline_after(log->opt.interval_ms * 1e-3);
        }
        batch tmp = log->out;
        log->out = log->pend;
        log->pend = tmp;
        log->pend.n = log->pend.tlen = 0;
        uint64_t upto = atomic_load(&log->appended);
        uint64_t trim = log->trim_req; /* at most trim_chunk seqs past the last trim */
        if (trim > log->trimmed && trim - log->trimmed > log->opt.trim_chunk)
            trim = log->trimmed + log->opt.trim_chunk;
        pthread_mutex_unlock(&log->mu);

        batch *b = &log->out;
        for (size_t i = 0; i < b->n; i++)
            b->ptrs[i] = b->text + b->offs[i];
        hr_error err;
        hr_status st = hr_store_log_write(log->store, b->seqs, b->arrived, b->ptrs, b->lens,
                                          b->n, trim, &err);

        pthread_mutex_lock(&log->mu);
        if (st == HR_OK) {
            log->commits++;
            if (trim > log->trimmed)
                log->trimmed = trim;
        } else {
            log->failures++;
            /* This batch and whatever arrived meanwhile: no 202 for them. */
            if (b->n)
                record_failed(log, b->seqs[0], upto);
            if (log->pend.n) {
                record_failed(log, log->pend.seqs[0], atomic_load(&log->appended));
                upto = atomic_load(&log->appended);
                log->pend.n = log->pend.tlen = 0;
            }
            set_health(log, err.message);
        }
        b->n = b->tlen = 0;
        if (upto > log->processed)
            log->processed = upto;
        pthread_cond_broadcast(&log->done);
        waiter *settled = take_settled(log, false);
        if (settled) {
            pthread_mutex_unlock(&log->mu);
            run_settled(settled);
            pthread_mutex_lock(&log->mu);
        }
    }
    log->exited = true;
    pthread_cond_broadcast(&log->done);
    waiter *left = take_settled(log, true);
    pthread_mutex_unlock(&log->mu);
    run_settled(left);
    return NULL;
}

hr_status hr_evlog_create(hr_store *store, const hr_evlog_options *opt, uint64_t last_seq,
                          hr_evlog **out, hr_error *err)
{
    *out = NULL;
    hr_evlog *log = calloc(1, sizeof *log);
    if (!log) {
        hr_store_close(store);
        return hr_error_set(err, HR_ENOMEM, NULL, "out of memory");
    }
    log->store = store;
    log->opt = *opt;
    if (log->opt.interval_ms == 0)
        log->opt.interval_ms = 1;
    if (log->opt.retry_ms == 0)
        log->opt.retry_ms = 1000;
    if (log->opt.trim_chunk == 0)
        log->opt.trim_chunk = HR_EVLOG_TRIM_CHUNK;
    /* Trims go on from where the file's last one stopped (0 if unknown:
     * then the first chunks delete nothing, and each is one small commit). */
    if (hr_store_log_trimmed_to(store, &log->trimmed, err) != HR_OK)
        log->trimmed = 0;
    pthread_mutex_init(&log->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&log->work, &ca);
    pthread_cond_init(&log->done, &ca);
    pthread_condattr_destroy(&ca);
    atomic_init(&log->appended, last_seq);
    log->processed = last_seq;
    *out = log;
    return HR_OK;
}

hr_status hr_evlog_start(hr_evlog *log, hr_error *err)
{
    if (pthread_create(&log->thread, NULL, committer, log) != 0)
        return hr_error_set(err, HR_ENOMEM, NULL, "cannot start the event-log thread");
    log->started = true;
    return HR_OK;
}

void hr_evlog_destroy(hr_evlog *log)
{
    if (!log)
        return;
    if (log->started) {
        pthread_mutex_lock(&log->mu);
        log->stop = true;
        pthread_cond_broadcast(&log->work);
        pthread_mutex_unlock(&log->mu);
        pthread_join(log->thread, NULL);
    } else {
        pthread_mutex_lock(&log->mu);
        log->exited = true;
        waiter *left = take_settled(log, true);
        pthread_mutex_unlock(&log->mu);
        run_settled(left);
    }
    hr_store_close(log->store);
    batch_free(&log->pend);
    batch_free(&log->out);
    hr_status_board_free(&log->health);
    pthread_cond_destroy(&log->work);
    pthread_cond_destroy(&log->done);
    pthread_mutex_destroy(&log->mu);
    free(log);
}

hr_status hr_evlog_append(hr_evlog *log, uint64_t first_seq, double arrived,
                          const char *const *json, const size_t *len, size_t n, hr_error *err)
{
    pthread_mutex_lock(&log->mu);
    hr_status st = HR_OK;
    const char *h = hr_status_board_get(&log->health);
    if (h) {
        st = hr_error_set(err, HR_EIO, NULL, "%s", h);
        goto out;
    }
    if (log->stop || log->exited) {
        st = hr_error_set(err, HR_ESTOPPED, NULL, "event log closing");
        goto out;
    }
    size_t n0 = log->pend.n, t0 = log->pend.tlen;
    for (size_t i = 0; i < n; i++) {
        if (batch_add(&log->pend, first_seq + i, arrived, json[i], len[i]) != HR_OK) {
            log->pend.n = n0;
            log->pend.tlen = t0;
            st = hr_error_set(err, HR_EIO, NULL, "event log: out of memory");
            goto out;
        }
    }
    if (n)
        atomic_store(&log->appended, first_seq + n - 1);
    if (log->opt.sync)
        pthread_cond_signal(&log->work);
out:
    pthread_mutex_unlock(&log->mu);
    return st;
}

hr_status hr_evlog_wait(hr_evlog *log, uint64_t seq, hr_error *err)
{
    if (!log->opt.sync) {
        /* Interval mode: committed within interval_ms; a crash before then
         * loses the event (documented in the README). */
        const char *h = hr_status_board_get(&log->health);
        return h ? hr_error_set(err, HR_EIO, NULL, "%s", h) : HR_OK;
    }
    pthread_mutex_lock(&log->mu);
    while (log->processed < seq && !log->exited)
        pthread_cond_wait(&log->done, &log->mu);
    const char *why;
    hr_status st = outcome(log, seq, &why);
    if (st != HR_OK)
        hr_error_set(err, st, NULL, "%s", why);
    pthread_mutex_unlock(&log->mu);
    return st;
}

hr_status hr_evlog_notify(hr_evlog *log, uint64_t seq, hr_evlog_notify_fn cb, void *arg)
{
    if (!log->opt.sync) {
        /* Interval mode: as hr_evlog_wait, known at once. */
        const char *h = hr_status_board_get(&log->health);
        cb(arg, h ? HR_EIO : HR_OK, h);
        return HR_OK;
    }
    waiter *w = malloc(sizeof *w);
    if (!w)
        return HR_ENOMEM;
    w->seq = seq;
    w->cb = cb;
    w->arg = arg;
    pthread_mutex_lock(&log->mu);
    if (log->processed >= seq || log->exited) {
        w->st = outcome(log, seq, &w->why);
        pthread_mutex_unlock(&log->mu);
        w->next = NULL;
        run_settled(w);
        return HR_OK;
    }
    w->next = log->waiters;
    log->waiters = w;
    pthread_mutex_unlock(&log->mu);
    return HR_OK;
}

uint64_t hr_evlog_last_seq(const hr_evlog *log)
{
    return atomic_load(&((hr_evlog *)log)->appended);
}

const char *hr_evlog_health(hr_evlog *log) { return hr_status_board_get(&log->health); }

void hr_evlog_trim(hr_evlog *log, uint64_t upto)
{
    pthread_mutex_lock(&log->mu);
    if (upto > log->trim_req) {
        log->trim_req = upto;
        pthread_cond_signal(&log->work);
    }
    pthread_mutex_unlock(&log->mu);
}

void hr_evlog_counts(hr_evlog *log, uint64_t *durable_seq, uint64_t *commits, uint64_t *failures,
                     uint64_t *pending)
{
    pthread_mutex_lock(&log->mu);
    if (durable_seq)
        *durable_seq = log->processed;
    if (commits)
        *commits = log->commits;
    if (failures)
        *failures = log->failures;
    if (pending)
        *pending = log->pend.n;
    pthread_mutex_unlock(&log->mu);
}

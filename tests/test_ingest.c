/*
 * test_ingest.c - tests of the ingest path (src/ingest.c): seqs, queue
 * admission and the event log in one order.
 *
 * Over a real queue, trainer pool (paused where the queue must stay full)
 * and, in half of the cases, a real event log on a temporary file:
 * seqs are consecutive from the log's last one and stamped on the events;
 * a batch the queue cannot take is refused whole (HR_EFULL): nothing
 * queued, nothing logged, no seq used; after the pool stops, HR_ESTOPPED;
 * a log that fails its commit (injected write faults) gives HR_EIO and,
 * once known failing, refuses before queueing; a replay queues events with
 * their own seqs and logs nothing; threads submitting at once get disjoint
 * seqs, and the queue holds their events in seq order.
 */
/* ctest-labels: concurrent */
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "helper_faultvfs.h"
#include "hogrec/ingest.h"
#include "hogrec/store.h"
#include "testutil.h"

#define CAPACITY 8

typedef struct {
    char dir[256], path[512];
    hr_model *model;
    hr_queue *queue;
    hr_schedbox *sched;
    hr_progress *progress;
    hr_trainer *trainer;
    hr_evlog *log; /* NULL: no log */
    hr_ingest *ing;
} rig;

static void open_log(rig *r)
{
    hr_store_options o = {.kind = HR_STORE_LOG, .sync_full = true, .busy_ms = 1000};
    hr_store *s = NULL;
    hr_error err = {{0}, {0}};
    assert_int_equal(hr_store_open(r->path, &o, &s, &err), HR_OK);
    uint64_t last = 0;
    assert_int_equal(hr_store_log_last_seq(s, &last, &err), HR_OK);
    hr_evlog_options lo = {.sync = true, .interval_ms = 100, .retry_ms = 5};
    assert_int_equal(hr_evlog_create(s, &lo, last, &r->log, &err), HR_OK);
    assert_int_equal(hr_evlog_start(r->log, &err), HR_OK);
}

/* dir: where the log file is (NULL: a new temporary directory). */
static void rig_open(rig *r, bool with_log, size_t capacity, const char *dir)
{
    memset(r, 0, sizeof *r);
    snprintf(r->dir, sizeof r->dir, "%s", dir ? dir : tu_tmpdir());
    snprintf(r->path, sizeof r->path, "%s/t.db-events", r->dir);
    r->model = tu_small_model(64, 64);
    assert_int_equal(hr_queue_create(capacity, &r->queue), HR_OK);
    hr_schedule s;
    hr_schedule_defaults(&s);
    assert_int_equal(hr_schedbox_create(&s, &r->sched, NULL), HR_OK);
    assert_int_equal(hr_progress_create(1000, 0, &r->progress), HR_OK);
    hr_trainer_config tc = {.threads = 1, .batch = 4, .neg_mode = HR_NEG_OFF, .seed = 1};
    assert_int_equal(
        hr_trainer_start(r->model, r->queue, r->sched, r->progress, &tc, &r->trainer), HR_OK);
    if (with_log)
        open_log(r);
    assert_int_equal(hr_ingest_create(r->queue, r->trainer, r->log, &r->ing), HR_OK);
}

static void rig_close(rig *r, bool remove)
{
    hr_ingest_destroy(r->ing);
    hr_ingest_destroy(NULL);
    hr_trainer_destroy(r->trainer);
    hr_evlog_destroy(r->log);
    hr_progress_destroy(r->progress);
    hr_schedbox_destroy(r->sched);
    hr_queue_destroy(r->queue);
    hr_model_destroy(r->model);
    if (remove)
        tu_rmtree(r->dir);
}

/* n events (n <= 16) for user/item rows 1.., with their log texts. */
typedef struct {
    hr_event ev[16];
    char text[16][48];
    const char *json[16];
    size_t len[16];
    size_t n;
} batch;

static void batch_make(batch *b, size_t n, unsigned tag)
{
    assert_true(n <= 16);
    memset(b, 0, sizeof *b);
    b->n = n;
    for (size_t i = 0; i < n; i++) {
        b->ev[i].user = 1 + (uint32_t)((tag + i) % 8);
        b->ev[i].item = 1 + (uint32_t)(i % 8);
        b->ev[i].label = 1;
        b->ev[i].weight = 1;
        b->len[i] = (size_t)snprintf(b->text[i], sizeof b->text[i],
                                     "{\"item\":%zu,\"tag\":%u,\"user\":%zu}", i, tag, i);
        b->json[i] = b->text[i];
    }
}

static hr_status submit(rig *r, batch *b, uint64_t *first, hr_error *err)
{
    return hr_ingest_submit(r->ing, b->ev, r->log ? b->json : NULL, r->log ? b->len : NULL, b->n,
                            false, first, err);
}

static uint64_t depth(rig *r)
{
    hr_queue_stats qs;
    hr_queue_get_stats(r->queue, &qs);
    return qs.depth;
}

/* Events in the (closed) log file, and whether they are seqs 1..n in order. */
static uint64_t logged(rig *r, bool *in_order)
{
    hr_store_options o = {.kind = HR_STORE_LOG, .sync_full = true, .busy_ms = 1000};
    hr_store *s = NULL;
    hr_error err = {{0}, {0}};
    assert_int_equal(hr_store_open(r->path, &o, &s, &err), HR_OK);
    uint64_t n = 0, last = 0;
    assert_int_equal(hr_store_log_count(s, &n, &err), HR_OK);
    assert_int_equal(hr_store_log_last_seq(s, &last, &err), HR_OK);
    hr_store_close(s);
    if (in_order)
        *in_order = last == n;
    return n;
}

typedef struct {
    int calls;
    hr_status st;
} note;

static void on_outcome(void *arg, hr_status st, const char *why)
{
    (void)why;
    note *n = arg;
    n->calls++;
    n->st = st;
}

/* ---- seqs ---- */

static void seqs_case(bool with_log)
{
    rig r;
    rig_open(&r, with_log, 1024, NULL);
    batch b;
    uint64_t first = 99;
    hr_error err = {{0}, {0}};
    assert_int_equal(hr_ingest_last_seq(r.ing), 0);
    batch_make(&b, 3, 0);
    assert_int_equal(submit(&r, &b, &first, &err), HR_OK);
    assert_int_equal(first, 1);
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(b.ev[i].seq, 1 + i);
        assert_true(b.ev[i].enq_ns > 0);
    }
    batch_make(&b, 2, 1);
    assert_int_equal(submit(&r, &b, &first, &err), HR_OK);
    assert_int_equal(first, 4);
    assert_int_equal(b.ev[1].seq, 5);
    assert_int_equal(hr_ingest_last_seq(r.ing), 5);
    /* an empty batch uses no seq */
    assert_int_equal(hr_ingest_submit(r.ing, b.ev, NULL, NULL, 0, false, &first, &err), HR_OK);
    assert_int_equal(first, 0);
    assert_int_equal(hr_ingest_last_seq(r.ing), 5);
    /* the split form: queued and appended, then waited for or notified */
    batch_make(&b, 2, 2);
    assert_int_equal(hr_ingest_submit_nowait(r.ing, b.ev, with_log ? b.json : NULL,
                                             with_log ? b.len : NULL, 2, 1.7e9, false, &first,
                                             &err),
                     HR_OK);
    assert_int_equal(first, 6);
    assert_int_equal(hr_ingest_wait(r.ing, 7, &err), HR_OK);
    note n = {0, HR_STATUS_COUNT};
    assert_int_equal(hr_ingest_notify(r.ing, 7, on_outcome, &n), HR_OK);
    assert_int_equal(n.calls, 1); /* durable already (or no log): at once */
    assert_int_equal(n.st, HR_OK);
    hr_trainer_wait_idle(r.trainer);
    hr_trainer_counts tc;
    hr_trainer_get_counts(r.trainer, &tc);
    assert_int_equal(tc.trained, 7);
    rig_close(&r, !with_log);
    if (!with_log)
        return;
    bool in_order;
    assert_int_equal(logged(&r, &in_order), 7);
    assert_true(in_order);
    /* a new ingest over the reopened log continues after it */
    rig r2;
    rig_open(&r2, true, 1024, r.dir);
    assert_int_equal(hr_ingest_last_seq(r2.ing), 7);
    batch_make(&b, 1, 3);
    assert_int_equal(submit(&r2, &b, &first, &err), HR_OK);
    assert_int_equal(first, 8);
    rig_close(&r2, true);
}

static void test_seqs_without_log(void **state)
{
    (void)state;
    seqs_case(false);
}

static void test_seqs_with_log(void **state)
{
    (void)state;
    seqs_case(true);
}

/* ---- a full queue ---- */

static void full_case(bool with_log)
{
    rig r;
    rig_open(&r, with_log, CAPACITY, NULL);
    hr_trainer_pause(r.trainer); /* nothing leaves the queue */
    batch b;
    uint64_t first = 0;
    hr_error err = {{0}, {0}};
    batch_make(&b, CAPACITY - 2, 0);
    assert_int_equal(submit(&r, &b, &first, &err), HR_OK);
    assert_int_equal(depth(&r), CAPACITY - 2);
    uint64_t logged_before = r.log ? hr_evlog_last_seq(r.log) : 0;
    /* 3 do not fit in 2 free slots: refused whole */
    batch_make(&b, 3, 1);
    memset(&err, 0, sizeof err);
    first = 99;
    assert_int_equal(submit(&r, &b, &first, &err), HR_EFULL);
    assert_true(err.message[0] != 0);
    assert_int_equal(first, 0);
    assert_int_equal(depth(&r), CAPACITY - 2);               /* nothing queued */
    assert_int_equal(hr_ingest_last_seq(r.ing), CAPACITY - 2); /* no seq used */
    if (r.log)
        assert_int_equal(hr_evlog_last_seq(r.log), logged_before); /* nothing logged */
    /* more than the queue ever holds: refused too, nothing queued */
    batch big;
    batch_make(&big, CAPACITY + 1, 2);
    assert_int_not_equal(submit(&r, &big, &first, &err), HR_OK);
    assert_int_equal(depth(&r), CAPACITY - 2);
    /* what fits is taken, with the next seqs */
    batch_make(&b, 2, 3);
    assert_int_equal(submit(&r, &b, &first, &err), HR_OK);
    assert_int_equal(first, CAPACITY - 1);
    assert_int_equal(depth(&r), CAPACITY);
    hr_trainer_resume(r.trainer);
    hr_trainer_wait_idle(r.trainer);
    hr_trainer_counts tc;
    hr_trainer_get_counts(r.trainer, &tc);
    assert_int_equal(tc.trained, CAPACITY);
    rig_close(&r, !with_log);
    if (with_log) {
        bool in_order;
        assert_int_equal(logged(&r, &in_order), CAPACITY);
        assert_true(in_order);
        tu_rmtree(r.dir);
    }
}

static void test_full_queue_without_log(void **state)
{
    (void)state;
    full_case(false);
}

static void test_full_queue_with_log(void **state)
{
    (void)state;
    full_case(true);
}

/* ---- stopped ---- */

static void stopped_case(bool with_log)
{
    rig r;
    rig_open(&r, with_log, CAPACITY, NULL);
    batch b;
    uint64_t first = 0;
    hr_error err = {{0}, {0}};
    batch_make(&b, 2, 0);
    assert_int_equal(submit(&r, &b, &first, &err), HR_OK);
    hr_trainer_stop(r.trainer, true, NULL); /* closes the queue */
    batch_make(&b, 2, 1);
    assert_int_equal(submit(&r, &b, &first, &err), HR_ESTOPPED);
    assert_int_equal(hr_ingest_last_seq(r.ing), 2);
    if (r.log)
        assert_int_equal(hr_evlog_last_seq(r.log), 2);
    rig_close(&r, !with_log);
    if (with_log) {
        assert_int_equal(logged(&r, NULL), 2);
        tu_rmtree(r.dir);
    }
}

static void test_stopped_without_log(void **state)
{
    (void)state;
    stopped_case(false);
}

static void test_stopped_with_log(void **state)
{
    (void)state;
    stopped_case(true);
}

/* ---- a failing log ---- */

static void test_log_failing(void **state)
{
    (void)state;
    fv_install();
    rig r;
    rig_open(&r, true, 1024, NULL);
    hr_trainer_wait_idle(r.trainer);
    hr_trainer_pause(r.trainer);
    batch b;
    uint64_t first = 0;
    hr_error err = {{0}, {0}};
    batch_make(&b, 2, 0);
    assert_int_equal(submit(&r, &b, &first, &err), HR_OK);
    fv_fail_writes(".db-events-wal", SQLITE_FULL);
    /* failure at the commit: queued, not durable, HR_EIO saying so */
    batch_make(&b, 3, 1);
    memset(&err, 0, sizeof err);
    assert_int_equal(submit(&r, &b, &first, &err), HR_EIO);
    assert_true(err.message[0] != 0);
    assert_int_equal(depth(&r), 5);
    /* known failing: refused before queueing */
    batch_make(&b, 1, 2);
    memset(&err, 0, sizeof err);
    assert_int_equal(submit(&r, &b, &first, &err), HR_EIO);
    assert_non_null(strstr(err.message, "full"));
    assert_int_equal(depth(&r), 5);
    assert_int_equal(hr_ingest_last_seq(r.ing), 5);
    fv_fail_writes(NULL, 0);
    for (int i = 0; i < 30000 && hr_evlog_health(r.log); i++)
        nanosleep(&(struct timespec){0, 2 * 1000000L}, NULL);
    assert_null(hr_evlog_health(r.log));
    batch_make(&b, 1, 3);
    assert_int_equal(submit(&r, &b, &first, &err), HR_OK);
    assert_int_equal(first, 6);
    hr_trainer_resume(r.trainer);
    rig_close(&r, false);
    /* acknowledged 1, 2 and 6 are logged */
    assert_true(logged(&r, NULL) >= 3);
    tu_rmtree(r.dir);
}

/* ---- replay ---- */

static void test_replay_queues_without_logging(void **state)
{
    (void)state;
    rig r;
    rig_open(&r, true, 1024, NULL);
    batch b;
    uint64_t first = 0;
    hr_error err = {{0}, {0}};
    batch_make(&b, 5, 0);
    assert_int_equal(submit(&r, &b, &first, &err), HR_OK);
    rig_close(&r, false);
    /* restarted: the log tail after a checkpoint at seq 2 is replayed */
    rig r2;
    rig_open(&r2, true, 1024, r.dir);
    assert_int_equal(hr_ingest_last_seq(r2.ing), 5);
    hr_trainer_wait_idle(r2.trainer);
    hr_trainer_pause(r2.trainer);
    batch_make(&b, 3, 0);
    for (size_t i = 0; i < 3; i++)
        b.ev[i].seq = 3 + i;
    assert_int_equal(hr_ingest_replay(r2.ing, b.ev, 3), HR_OK);
    assert_int_equal(depth(&r2), 3);
    for (size_t i = 0; i < 3; i++) /* their own seqs, stamped for staleness */
        assert_int_equal(b.ev[i].seq, 3 + i);
    assert_int_equal(hr_evlog_last_seq(r2.log), 5);
    assert_int_equal(hr_ingest_last_seq(r2.ing), 5);
    hr_trainer_resume(r2.trainer);
    batch_make(&b, 1, 1);
    assert_int_equal(submit(&r2, &b, &first, &err), HR_OK);
    assert_int_equal(first, 6);
    hr_trainer_wait_idle(r2.trainer);
    hr_trainer_counts tc;
    hr_trainer_get_counts(r2.trainer, &tc);
    assert_int_equal(tc.trained, 4);
    rig_close(&r2, false);
    bool in_order;
    assert_int_equal(logged(&r, &in_order), 6); /* 1..5 and 6, nothing twice */
    assert_true(in_order);
    tu_rmtree(r.dir);

    /* without a log, a replay moves the next seq past its events */
    rig_open(&r, false, 1024, NULL);
    batch_make(&b, 2, 0);
    b.ev[0].seq = 10;
    b.ev[1].seq = 11;
    assert_int_equal(hr_ingest_replay(r.ing, b.ev, 2), HR_OK);
    assert_int_equal(hr_ingest_last_seq(r.ing), 11);
    batch_make(&b, 1, 1);
    assert_int_equal(submit(&r, &b, &first, &err), HR_OK);
    assert_int_equal(first, 12);
    rig_close(&r, true);
}

/* ---- threads ---- */

#define THREADS 4
#define ROUNDS 50

typedef struct {
    rig *r;
    int no;
    int failures;
} submitter;

static void *submit_loop(void *arg)
{
    submitter *s = arg;
    for (int i = 0; i < ROUNDS; i++) {
        batch b;
        batch_make(&b, 1 + (size_t)((i + s->no) % 4), (unsigned)s->no);
        uint64_t first;
        hr_error err;
        if (submit(s->r, &b, &first, &err) != HR_OK)
            s->failures++;
        for (size_t k = 0; k < b.n; k++)
            if (b.ev[k].seq != first + k)
                s->failures++;
    }
    return NULL;
}

static void test_threads_queue_in_seq_order(void **state)
{
    (void)state;
    rig r;
    rig_open(&r, true, THREADS * ROUNDS * 4, NULL);
    hr_trainer_wait_idle(r.trainer);
    hr_trainer_pause(r.trainer); /* the test pops the queue itself */
    pthread_t t[THREADS];
    submitter s[THREADS];
    for (int i = 0; i < THREADS; i++) {
        s[i] = (submitter){&r, i, 0};
        assert_int_equal(pthread_create(&t[i], NULL, submit_loop, &s[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(s[i].failures, 0);
    }
    uint64_t total = hr_ingest_last_seq(r.ing);
    assert_int_equal(depth(&r), total);
    hr_event *out = calloc(total, sizeof *out);
    size_t got = 0;
    for (int i = 0; i < 1000 && got < total; i++) {
        size_t n = 0;
        assert_int_equal(hr_queue_pop_timed(r.queue, out + got, total - got, &n, 100), HR_OK);
        got += n;
    }
    assert_int_equal(got, total);
    for (size_t i = 0; i < total; i++)
        assert_int_equal(out[i].seq, i + 1);
    free(out);
    hr_trainer_resume(r.trainer);
    rig_close(&r, false);
    bool in_order;
    assert_int_equal(logged(&r, &in_order), total);
    assert_true(in_order);
    tu_rmtree(r.dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_seqs_without_log),
        cmocka_unit_test(test_seqs_with_log),
        cmocka_unit_test(test_full_queue_without_log),
        cmocka_unit_test(test_full_queue_with_log),
        cmocka_unit_test(test_stopped_without_log),
        cmocka_unit_test(test_stopped_with_log),
        cmocka_unit_test_teardown(test_log_failing, fv_clear_faults),
        cmocka_unit_test(test_replay_queues_without_logging),
        cmocka_unit_test(test_threads_queue_in_seq_order),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * ingest.c - sequence numbers, the event log and the queue, in one order.
 * See ingest.h. Called from HTTP handler threads and replay.
 */
#include "hogrec/ingest.h"

#include <pthread.h>
#include <stdlib.h>

struct hr_ingest {
    pthread_mutex_t mu;   /* orders seq assignment, log append, queue push */
    hr_queue *queue;      /* borrowed */
    hr_trainer *trainer;  /* borrowed */
    hr_evlog *log;        /* borrowed, may be NULL */
    uint64_t last_seq;    /* highest seq handed out; under mu */
};

hr_status hr_ingest_create(hr_queue *queue, hr_trainer *trainer, hr_evlog *log, hr_ingest **out)
{
    hr_ingest *ing = calloc(1, sizeof *ing);
    if (!ing)
        return HR_ENOMEM;
    pthread_mutex_init(&ing->mu, NULL);
    ing->queue = queue;
    ing->trainer = trainer;
    ing->log = log;
    ing->last_seq = log ? hr_evlog_last_seq(log) : 0;
    *out = ing;
    return HR_OK;
}

void hr_ingest_destroy(hr_ingest *ing)
{
    if (!ing)
        return;
    pthread_mutex_destroy(&ing->mu);
    free(ing);
}

hr_status hr_ingest_admit(hr_ingest *ing, size_t n, hr_error *err)
{
    if (ing->log && hr_evlog_health(ing->log))
        return hr_error_set(err, HR_EIO, NULL, "event log unavailable: %s",
                            hr_evlog_health(ing->log));
    hr_queue_stats qs;
    hr_queue_get_stats(ing->queue, &qs);
    if (n > qs.capacity) /* what hr_queue_push answers */
        return hr_error_set(err, HR_EINVAL, NULL, "queue: %s", hr_status_to_string(HR_EINVAL));
    if (qs.depth + n > qs.capacity)
        return hr_error_set(err, HR_EFULL, NULL, "queue full");
    return HR_OK;
}

bool hr_ingest_has_log(const hr_ingest *ing) { return ing->log != NULL; }

static void stamp(hr_ingest *ing, hr_event *evs, size_t n, uint64_t first_seq)
{
    uint64_t updates = ing->trainer ? hr_trainer_updates(ing->trainer) : 0;
    uint64_t now = hr_now_ns();
    for (size_t i = 0; i < n; i++) {
        if (first_seq)
            evs[i].seq = first_seq + i;
        evs[i].enq_updates = updates;
        evs[i].enq_ns = now;
    }
}

hr_status hr_ingest_submit_nowait(hr_ingest *ing, hr_event *evs, const char *const *json,
                                  const size_t *len, size_t n, double arrived,
                                  bool wait_for_room, uint64_t *first_seq, hr_error *err)
{
    if (n == 0) {
        *first_seq = 0;
        return HR_OK;
    }
    hr_status st;
    pthread_mutex_lock(&ing->mu);
    uint64_t seq = ing->last_seq + 1;
    stamp(ing, evs, n, seq);
    if (ing->log && hr_evlog_health(ing->log)) {
        st = hr_error_set(err, HR_EIO, NULL, "event log unavailable: %s",
                          hr_evlog_health(ing->log));
        goto unlock;
    }
    /* Queue first: a full queue refuses the batch before anything is logged.
     * Without wait_for_room the push cannot block, so the lock is short. */
    st = hr_queue_push(ing->queue, evs, n, wait_for_room);
    if (st != HR_OK) {
        if (st == HR_EFULL)
            hr_error_set(err, st, NULL, "queue full");
        else
            hr_error_set(err, st, NULL, "queue: %s", hr_status_to_string(st));
        goto unlock;
    }
    /* Queued: the seqs are used, and the events will be trained even if the
     * append fails (then the caller sends no 202). */
    ing->last_seq = seq + n - 1;
    if (ing->log)
        st = hr_evlog_append(ing->log, seq, arrived, json, len, n, err);
unlock:
    pthread_mutex_unlock(&ing->mu);
    if (st == HR_OK)
        *first_seq = seq;
    return st;
}

hr_status hr_ingest_submit(hr_ingest *ing, hr_event *evs, const char *const *json,
                           const size_t *len, size_t n, bool wait_for_room, uint64_t *first_seq,
                           hr_error *err)
{
    *first_seq = 0;
    hr_status st = hr_ingest_submit_nowait(ing, evs, json, len, n, hr_wall_time(), wait_for_room,
                                           first_seq, err);
    if (st != HR_OK || n == 0)
        return st;
    return hr_ingest_wait(ing, *first_seq + n - 1, err);
}

hr_status hr_ingest_wait(hr_ingest *ing, uint64_t seq, hr_error *err)
{
    return ing->log ? hr_evlog_wait(ing->log, seq, err) : HR_OK;
}

hr_status hr_ingest_notify(hr_ingest *ing, uint64_t seq, hr_evlog_notify_fn cb, void *arg)
{
    if (!ing->log) {
        cb(arg, HR_OK, NULL);
        return HR_OK;
    }
    return hr_evlog_notify(ing->log, seq, cb, arg);
}

hr_status hr_ingest_replay(hr_ingest *ing, hr_event *evs, size_t n)
{
    pthread_mutex_lock(&ing->mu);
    stamp(ing, evs, n, 0);
    hr_status st = hr_queue_push(ing->queue, evs, n, true);
    if (st == HR_OK && n && evs[n - 1].seq > ing->last_seq)
        ing->last_seq = evs[n - 1].seq;
    pthread_mutex_unlock(&ing->mu);
    return st;
}

uint64_t hr_ingest_last_seq(hr_ingest *ing)
{
    pthread_mutex_lock(&ing->mu);
    uint64_t s = ing->last_seq;
    pthread_mutex_unlock(&ing->mu);
    return s;
}

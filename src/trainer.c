/*
 * trainer.c - the trainer threads (see trainer.h).
 *
 * DESIGN. Each worker loops: park if a pause is requested; pop a batch
 * (blocking at most POP_WAIT_MS, so pause and stop are noticed); read the
 * live schedule once; for each event: prefetch the rows of an event a few
 * ahead, touch the id rows (count, last_seen), score and update through the
 * kernel (sgd.c), record the pre-update prediction for progressive
 * validation, then the sampled negatives. All row writes are Hogwild.
 *
 * Pause protocol: pause sets a request and waits until every worker is
 * parked. A worker parks only between batches, so when all are parked every
 * popped event has been applied; since producers push in seq order and the
 * queue is FIFO, every event with seq <= the highest seq applied is applied.
 *
 * The applied watermark (hr_trainer_applied): the highest seq such that
 * every event with seq <= it has been applied. Workers finish batches out
 * of order, so it is not the highest seq applied. A worker registers each
 * popped batch (its lowest seq, and the count of events popped) under mu
 * before training it, and clears it under mu when done; at that point the
 * watermark is recomputed: if every event the queue handed out is
 * registered (the trainer's count equals the queue's popped count, read
 * under mu, so no popped batch is on its way to being registered), nothing
 * popped before can be missing, the queue holds only later seqs (FIFO, seq
 * order), and so the watermark is (lowest seq of any batch in flight) - 1,
 * or the highest seq applied when none is in flight. Otherwise it waits for
 * the next batch's end. Events without a seq (0) do not count. Cost: one
 * more lock of mu and one queue-stats read per batch; the watermark's
 * broadcast only when it advanced.
 *
 * Counters are per worker (one cache line each, written by their owner
 * only) and summed by readers; the update count, the staleness and
 * freshness histograms and the progressive-validation points of a batch
 * are added once per batch, after it. Per event, a step's rows go through
 * one model call (hr_model_event_rows) and each row it changed is marked
 * once (hr_model_mark_event); the global row, written by every step, is
 * marked once per batch after its last step.
 *
 * The global row is private per batch: every step writes the global bias
 * (and its AdaGrad accumulator), so with two workers its cache line would
 * move between the cores on every event. A worker copies the shared bias
 * slots into a row of its own at the start of a batch, trains the batch
 * against that copy (the kernel gets it as a[0].row), and folds its change
 * into the shared row at the end (fold_global: a compare-and-swap that
 * stores the worker's value when nobody folded meanwhile, so one worker
 * gives the same bits as steps on the shared row, else adds the change).
 * Staleness, within what Hogwild already allows: a worker's steps see the
 * other workers' global updates up to one batch late, and readers of the
 * shared row (scoring, checkpoints) see each worker's up to one batch
 * late; a pause or stop parks a worker only after its fold. Only F32 rows
 * under SGD or AdaGrad (whose bias slots are the bias and the bias
 * accumulator at acc + k); other storage and optimizers train the shared
 * row as before.
 *
 * Upkeep is one maintenance thread, started and stopped with the workers
 * (hr_trainer_start / hr_trainer_stop), ticking every UPKEEP_TICK_MS on the
 * monotonic clock: it rebuilds the popularity sampler once
 * SAMPLER_REBUILD_UPDATES updates passed since the last build (the first
 * time as soon as any update happened), expires ids (every tenth of
 * expire_seconds), and notes the loss after the latest schedule change once
 * progress_window updates passed after it. The workers' only upkeep-related
 * work is reading the sampler under its read lock.
 *
 * Clocks: intervals use the monotonic clock (condvars set to it); wall time
 * only where it is recorded (the model's last_seen).
 */
#include "hogrec/trainer.h"

#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "hogrec/sgd.h"
#include "hogrec/watermark.h"

#define POP_WAIT_MS 20
#ifndef PREFETCH_AHEAD /* events ahead whose rows are prefetched */
#define PREFETCH_AHEAD 4
#endif
#define SAMPLER_REBUILD_UPDATES (1u << 17)
#define UPKEEP_TICK_MS 50

typedef struct {
#define HR_X_ATOMIC(name) atomic_uint_fast64_t name;
    HR_TRAINER_COUNTERS(HR_X_ATOMIC)
#undef HR_X_ATOMIC
} counters;

typedef struct worker {
    _Alignas(HR_CACHE_LINE) atomic_uint_fast64_t updates; /* owner writes */
    counters c;                /* owner writes, anyone reads */
    hr_hist staleness;         /* owner writes (hr_hist_add_owned) */
    hr_hist freshness;         /* owner writes, microseconds */
    pthread_t thread;
    struct hr_trainer *tr;
    unsigned id;
    bool started;
    hr_rng rng;                /* owner only */
    hr_event *buf;             /* popped batch */
    uint64_t inflight_lo;      /* lowest seq > 0 of the batch in flight, 0 = none;
                                * under tr->mu */
    hr_progress_point *points; /* progressive points of a batch */
    size_t npoints, cap_points;
    float *global;             /* owner only: the private global row (see the
                                * file comment), mapped at the layout's size
                                * (only its bias slots are touched); NULL: none */
    size_t global_bytes;       /* mapped bytes of global */
} worker;

/* Popularity^alpha sampler: cumulative weights over item rows. */
typedef struct {
    uint32_t n;    /* rows covered: [0, n) */
    double *cdf;   /* cdf[i] = sum of weights of rows <= i */
} sampler;

struct hr_trainer {
    hr_model *model;
    hr_queue *queue;
    hr_schedbox *sched;
    hr_progress *progress;
    hr_trainer_config cfg;
    worker *w;
    unsigned nw;

    pthread_mutex_t mu;      /* guards the fields down to stopped */
    pthread_cond_t cv;       /* parks, pause and idle waits (CLOCK_MONOTONIC);
                              * broadcast when parked or done change */
    unsigned pause_req;      /* nesting count of pauses */
    unsigned parked;         /* workers parked (or exited) */
    uint64_t max_seq;        /* highest seq applied */
    uint64_t done;           /* queue events applied (under mu) */
    uint64_t registered;     /* queue events popped (since the queue's creation)
                              * whose batch was registered (under mu) */
    hr_watermark *applied;   /* the applied watermark (see the file comment) */
    bool stopped;            /* hr_trainer_stop ran */

    atomic_uint_fast64_t base_updates; /* update count before this start */
    atomic_bool neg_active;  /* negative sampling on now */
    hr_hist staleness;       /* merged view of the workers', rebuilt on read */
    hr_hist freshness;       /* merged view, microseconds */
    pthread_rwlock_t sampler_lock; /* guards sampler pointer swaps */
    sampler *pop_sampler;          /* NULL until built (alpha > 0) */

    /* The maintenance thread (upkeep_main). */
    pthread_mutex_t upkeep_mu;     /* guards upkeep_stop */
    pthread_cond_t upkeep_cv;      /* its sleep (CLOCK_MONOTONIC); signalled at stop */
    bool upkeep_stop;
    bool upkeep_started;
    pthread_t upkeep_thread;
    /* Below: the maintenance thread's own (no lock). */
    uint64_t built_at;             /* update count at the last sampler build */
    uint64_t next_rebuild;         /* update count from which to rebuild again */
    uint64_t next_expire_ns;       /* monotonic ns of the next expiry pass */
    uint64_t noted_version;        /* latest schedule version settled (loss_after noted
                                    * or known), 0 = none */
    uint64_t pending_version;      /* the change waiting for its window, 0 = none */
    uint64_t pending_due;          /* update count at which to note it */

    hr_trainer_tap *tap;           /* hr_trainer_set_tap; set while paused */
    void *tap_ctx;
};

static inline void bump(atomic_uint_fast64_t *c, uint64_t n)
{
    /* Single writer: a relaxed load and store, no locked RMW. */
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

hr_trainer_config hr_trainer_config_from(const hr_config *c)
{
    hr_trainer_config t;
    memset(&t, 0, sizeof t);
    t.threads = (unsigned)c->threads;
    t.batch = (unsigned)c->batch;
    t.neg_mode = c->negative_sampling == HR_CONFIG_NEG_ON    ? HR_NEG_ON
                 : c->negative_sampling == HR_CONFIG_NEG_OFF ? HR_NEG_OFF
                                                             : HR_NEG_AUTO;
    t.negatives = (unsigned)c->negatives;
    t.neg_alpha = c->negative_alpha;
    t.seed = (uint64_t)c->seed;
    t.progress_window = (uint64_t)c->progress_window;
    return t;
}

void hr_trainer_set_base_updates(hr_trainer *tr, uint64_t base)
{
    atomic_store_explicit(&tr->base_updates, base, memory_order_relaxed);
}

uint64_t hr_trainer_updates(const hr_trainer *tr)
{
    uint64_t s = atomic_load_explicit(&((hr_trainer *)tr)->base_updates, memory_order_relaxed);
    for (unsigned i = 0; i < tr->nw; i++)
        s += atomic_load_explicit(&tr->w[i].updates, memory_order_relaxed);
    return s;
}

static void sampler_free(sampler *s)
{
    if (s) {
        free(s->cdf);
        free(s);
    }
}

/* Rebuilds the popularity sampler from the item rows' event counts. */
static void rebuild_sampler(hr_trainer *tr)
{
    const hr_row_layout *L = hr_model_layout(tr->model);
    uint32_t n = hr_model_rows(tr->model, HR_TABLE_ITEM);
    sampler *s = malloc(sizeof *s);
    double *cdf = malloc((size_t)n * sizeof *cdf);
    if (!s || !cdf) {
        free(s);
        free(cdf);
        return;
    }
    double acc = 0;
    for (uint32_t r = 0; r < n; r++) {
        size_t len;
        double wgt = 0;
        if (r > 0 && hr_model_key(tr->model, HR_TABLE_ITEM, r, &len))
            wgt = pow((double)hr_sgd_row_count(L, hr_model_row(tr->model, HR_TABLE_ITEM, r)) + 1.0,
                      tr->cfg.neg_alpha);
        acc += wgt;
        cdf[r] = acc;
    }
    s->n = n;
    s->cdf = cdf;
    pthread_rwlock_wrlock(&tr->sampler_lock);
    sampler *old = tr->pop_sampler;
    tr->pop_sampler = s;
    pthread_rwlock_unlock(&tr->sampler_lock);
    sampler_free(old);
}

/* Draws a negative item row, or 0 if there is none to draw. Caller holds the
 * sampler read lock when alpha > 0. */
static uint32_t draw_negative(hr_trainer *tr, worker *w)
{
    if (tr->cfg.neg_alpha > 0 && tr->pop_sampler && tr->pop_sampler->n > 1) {
        const sampler *s = tr->pop_sampler;
        double total = s->cdf[s->n - 1];
        if (total <= 0)
            return 0;
        double u = hr_rng_uniform(&w->rng) * total;
        uint32_t lo = 0, hi = s->n - 1;
        while (lo < hi) {
            uint32_t mid = lo + (hi - lo) / 2;
            if (s->cdf[mid] > u)
                hi = mid;
            else
                lo = mid + 1;
        }
        return lo;
    }
    uint32_t n = hr_model_rows(tr->model, HR_TABLE_ITEM);
    if (n <= 1)
        return 0;
    for (int tries = 0; tries < 4; tries++) {
        uint32_t r = 1 + (uint32_t)hr_rng_below(&w->rng, n - 1);
        size_t len;
        if (hr_model_key(tr->model, HR_TABLE_ITEM, r, &len))
            return r;
    }
    return 0;
}

static void prefetch_event(const hr_model *m, const hr_event *ev)
{
    hr_model_prefetch(m, HR_TABLE_USER, ev->user);
    hr_model_prefetch(m, HR_TABLE_ITEM, ev->item);
}

static void add_point(worker *w, double pred, float label, float weight)
{
    if (w->npoints < w->cap_points)
        w->points[w->npoints++] = (hr_progress_point){(float)pred, label, weight};
}

typedef struct {
    hr_step_params p;
    const hr_row_layout *L;
    const hr_schedule *s;
    uint64_t t;          /* update count at batch start */
    float *global;       /* the row steps train as the global row: the worker's
                          * private copy, or NULL for the shared row */
    float global0[2];    /* the shared bias slots copied at batch start */
} batch_ctx;

/* The private global row (file comment): its bias slots, offsets in floats
 * from the row; the second is the bias accumulator, 0 without one. */
static void global_slots(const hr_row_layout *L, const hr_step_params *p, uint32_t slot[2])
{
    slot[0] = L->bias;
    slot[1] = p->opt == HR_OPT_ADAGRAD && L->acc ? L->acc + L->k : 0;
}

/* Maps the private global row for a layout: room up to its last bias slot
 * (the accumulator sits a chunk of rows away, so the mapping is sparse:
 * pages are committed only where touched). NULL where it does not apply. */
static float *global_map(const hr_row_layout *L, size_t *bytes)
{
    *bytes = 0;
    if (L->storage != HR_STORAGE_F32)
        return NULL;
    size_t floats = (size_t)(L->acc ? L->acc + L->k : L->bias) + 1;
    size_t b = floats * sizeof(float);
    void *r = mmap(NULL, b, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (r == MAP_FAILED)
        return NULL;
    *bytes = b;
    return r;
}

/* Starts a batch on the private global row when it applies (F32 storage,
 * SGD or AdaGrad): copies the shared bias slots into it. */
static void global_begin(hr_trainer *tr, worker *w, batch_ctx *bc)
{
    bc->global = NULL;
    if (!w->global || (bc->p.opt != HR_OPT_SGD && bc->p.opt != HR_OPT_ADAGRAD))
        return;
    float *shared = hr_model_row(tr->model, HR_TABLE_GLOBAL, 0);
    uint32_t slot[2];
    global_slots(bc->L, &bc->p, slot);
    for (int i = 0; i < 2; i++)
        if (slot[i]) {
            __atomic_load(&shared[slot[i]], &bc->global0[i], __ATOMIC_RELAXED);
            w->global[slot[i]] = bc->global0[i];
        }
    bc->global = w->global;
}

/* Folds one slot's change into the shared row: stores the worker's value
 * if the shared one is still what the batch started from, else adds the
 * change to whatever another worker folded meanwhile. */
static void fold_global(float *shared, float start, float end)
{
    if (memcmp(&start, &end, sizeof start) == 0)
        return;
    float expected = start, desired = end;
    while (!__atomic_compare_exchange(shared, &expected, &desired, false, __ATOMIC_RELAXED,
                                      __ATOMIC_RELAXED))
        desired = expected + (end - start);
}

/* Ends a batch on the private global row: folds each bias slot. */
static void global_end(hr_trainer *tr, const batch_ctx *bc)
{
    if (!bc->global)
        return;
    float *shared = hr_model_row(tr->model, HR_TABLE_GLOBAL, 0);
    uint32_t slot[2];
    global_slots(bc->L, &bc->p, slot);
    for (int i = 0; i < 2; i++)
        if (slot[i])
            fold_global(&shared[slot[i]], bc->global0[i], bc->global[slot[i]]);
}

/* One kernel step on ev, then its change marks (hr_model_mark_event; own_rows:
 * ev is a queued event whose id rows were touched, not a sampled negative);
 * returns the pre-update prediction. The global row is marked by the
 * caller, once per batch. */
static double apply(hr_trainer *tr, worker *w, const batch_ctx *bc, const hr_event *ev,
                    uint64_t staleness, bool own_rows)
{
    hr_model *m = tr->model;
    const hr_step_params *pp = &bc->p;
    hr_step_params scaled;
    if (bc->s->staleness_scaling && staleness > 0) {
        scaled = bc->p;
        float f = (float)(1.0 / (1.0 + (double)staleness / bc->s->staleness_tau));
        for (int g = 0; g < HR_GROUP_COUNT; g++)
            scaled.rate[g] *= f;
        pp = &scaled;
    }
    /* Resolved once: the rows trained are the rows marked dirty, even if
     * another thread moves an id past min_count meanwhile. */
    uint32_t eu, ei;
    hr_active a[HR_MAX_ACTIVE];
    int n = hr_model_event_rows(m, ev, &eu, &ei, a);
    if (bc->global)
        a[0].row = bc->global; /* the worker's copy (file comment) */
    double y, pred;
    hr_step_result r = hr_sgd_step(bc->L, a, n, ev->label, ev->weight, pp, &y, &pred);
    if (r == HR_STEP_CLIPPED)
        bump(&w->c.clipped, 1);
    else if (r == HR_STEP_SKIPPED_NONFINITE)
        bump(&w->c.skipped_nonfinite, 1);
    if (eu == 0)
        bump(&w->c.default_user, 1);
    if (ei == 0)
        bump(&w->c.default_item, 1);
    hr_model_mark_event(m, ev, eu, ei, n, own_rows);
    return pred;
}

static void resolve_params(hr_trainer *tr, batch_ctx *bc)
{
    const hr_model_config *mc = hr_model_get_config(tr->model);
    bc->L = hr_model_layout(tr->model);
    bc->s = hr_schedbox_current(tr->sched);
    bc->t = hr_trainer_updates(tr);
    memset(&bc->p, 0, sizeof bc->p);
    bc->p.loss = mc->loss;
    bc->p.opt = hr_model_supports(tr->model, bc->s->optimizer) ? bc->s->optimizer : HR_OPT_SGD;
    for (int g = 0; g < HR_GROUP_COUNT; g++) {
        bc->p.rate[g] = (float)hr_schedule_group_rate(bc->s, (hr_group)g, bc->t, 0);
        bc->p.l2[g] = (float)mc->l2[g];
    }
    bc->p.clip = (float)mc->grad_clip;
    bc->p.ftrl_beta = (float)bc->s->ftrl_beta;
    bc->p.ftrl_l1 = (float)bc->s->ftrl_l1;
    bc->p.adam_beta1 = (float)bc->s->adam_beta1;
    bc->p.adam_beta2 = (float)bc->s->adam_beta2;
    bc->p.adam_eps = (float)bc->s->adam_epsilon;
}

static void train_batch(hr_trainer *tr, worker *w, const hr_event *evs, size_t n)
{
    hr_model *m = tr->model;
    const uint32_t now = hr_model_clock(m);
    batch_ctx bc;
    resolve_params(tr, &bc);
    global_begin(tr, w, &bc);
    bool use_sampler = tr->cfg.neg_alpha > 0;
    if (use_sampler)
        pthread_rwlock_rdlock(&tr->sampler_lock);
    w->npoints = 0;
    uint64_t trained_updates = 0;
    uint64_t stale_b[HR_HIST_BUCKETS] = {0}, stale_sum = 0; /* added once, at the end */
    for (size_t i = 0; i < n && i < PREFETCH_AHEAD; i++)
        prefetch_event(m, &evs[i]);
    for (size_t i = 0; i < n; i++) {
        const hr_event *ev = &evs[i];
        if (i + PREFETCH_AHEAD < n)
            prefetch_event(m, &evs[i + PREFETCH_AHEAD]);
        if ((ev->flags & HR_EV_EXPLICIT_LABEL) && ev->label == 0 &&
            atomic_load_explicit(&tr->neg_active, memory_order_relaxed) &&
            tr->cfg.neg_mode == HR_NEG_AUTO)
            atomic_store(&tr->neg_active, false);
        uint64_t t_now = bc.t + trained_updates;
        uint64_t staleness = t_now > ev->enq_updates ? t_now - ev->enq_updates : 0;
        stale_b[hr_hist_bucket(staleness)]++;
        stale_sum += staleness;
        /* The id's own row counts the event even while it trains through
         * row 0 (min_count): apply marks it too (own_rows), so checkpoints
         * and deltas carry the count. */
        hr_model_touch_event(m, ev, now);
        double pred = apply(tr, w, &bc, ev, staleness, true);
        trained_updates++;
        add_point(w, pred, ev->label, ev->weight);
        if (ev->label > 0 && tr->cfg.negatives &&
            atomic_load_explicit(&tr->neg_active, memory_order_relaxed)) {
            for (unsigned j = 0; j < tr->cfg.negatives; j++) {
                uint32_t item = draw_negative(tr, w);
                if (item == 0 || item == ev->item)
                    continue;
                hr_event neg = *ev;
                neg.item = item;
                neg.label = 0;
                neg.flags = HR_EV_SAMPLED_NEGATIVE;
                double np = apply(tr, w, &bc, &neg, staleness, false);
                trained_updates++;
                add_point(w, np, 0, neg.weight);
                bump(&w->c.negatives, 1);
            }
        }
    }
    if (use_sampler)
        pthread_rwlock_unlock(&tr->sampler_lock);
    global_end(tr, &bc);
    /* Every step wrote the global row: one mark after the batch's last
     * write (a consumer that took the mark meanwhile finds it set again). */
    if (trained_updates)
        hr_model_mark_dirty(m, HR_TABLE_GLOBAL, 0);
    bump(&w->updates, trained_updates);
    hr_hist_add_counts_owned(&w->staleness, stale_b, n, stale_sum);
    /* Freshness: enqueue to the end of the batch that applied the event. */
    uint64_t end_ns = hr_now_ns();
    uint64_t fresh_b[HR_HIST_BUCKETS] = {0}, fresh_n = 0, fresh_sum = 0;
    for (size_t i = 0; i < n; i++)
        if (evs[i].enq_ns && end_ns > evs[i].enq_ns) {
            uint64_t us = (end_ns - evs[i].enq_ns) / 1000;
            fresh_b[hr_hist_bucket(us)]++;
            fresh_n++;
            fresh_sum += us;
        }
    if (fresh_n)
        hr_hist_add_counts_owned(&w->freshness, fresh_b, fresh_n, fresh_sum);
    hr_progress_add(tr->progress, w->points, w->npoints);
    bump(&w->c.trained, n);
    bump(&w->c.batches, 1);
}

/* ---- upkeep (the maintenance thread only) ---- */

/* The popularity sampler: at the first tick after any update, then every
 * SAMPLER_REBUILD_UPDATES updates. */
static void upkeep_sampler(hr_trainer *tr, uint64_t total)
{
    if (tr->cfg.neg_alpha <= 0 || total == tr->built_at || total < tr->next_rebuild)
        return;
    rebuild_sampler(tr);
    tr->built_at = total;
    tr->next_rebuild = total + SAMPLER_REBUILD_UPDATES;
}

/* Id expiry: a pass every tenth of expire_seconds (at least 1 ms apart). */
static void upkeep_expire(hr_trainer *tr, uint64_t now_ns)
{
    const hr_model_config *mc = hr_model_get_config(tr->model);
    if (mc->expire_seconds <= 0 || now_ns < tr->next_expire_ns)
        return;
    uint64_t period = (uint64_t)(mc->expire_seconds * 1e9 / 10);
    if (period < 1000000)
        period = 1000000;
    tr->next_expire_ns = now_ns + period;
    hr_model_expire(tr->model, hr_model_clock(tr->model));
}

/* The loss after the latest schedule change: the progressive loss once
 * progress_window updates passed after it (first note wins). */
static void upkeep_loss_after(hr_trainer *tr, uint64_t total)
{
    if (!tr->progress)
        return;
    const hr_schedule *cur = hr_schedbox_current(tr->sched);
    if (cur->version == tr->noted_version)
        return;
    if (cur->version != tr->pending_version) {
        /* A change not seen yet: read its history entry once. */
        size_t n = hr_schedbox_history(tr->sched, NULL, 0);
        hr_sched_change *all = n ? malloc(n * sizeof *all) : NULL;
        if (!all)
            return;
        size_t m = hr_schedbox_history(tr->sched, all, n);
        hr_sched_change ch = {.version = 0};
        if (m >= n) /* all[n - 1]: the latest when n was read */
            ch = all[n - 1];
        free(all);
        if (ch.version != cur->version)
            return; /* changed meanwhile: next tick */
        if (!isnan(ch.loss_after)) {
            tr->noted_version = ch.version; /* restored with it */
            return;
        }
        tr->pending_version = ch.version;
        tr->pending_due = ch.at_update + tr->cfg.progress_window;
    }
    if (total < tr->pending_due)
        return;
    hr_progress_report rep;
    hr_progress_get(tr->progress, 0, &rep);
    if (!isfinite(rep.loss))
        return; /* no measurement yet (no finite points): next tick */
    hr_schedbox_note_loss_after(tr->sched, tr->pending_version, rep.loss);
    tr->noted_version = tr->pending_version;
    tr->pending_version = 0;
}

static void *upkeep_main(void *arg)
{
    hr_trainer *tr = arg;
    pthread_mutex_lock(&tr->upkeep_mu);
    while (!tr->upkeep_stop) {
        pthread_mutex_unlock(&tr->upkeep_mu);
        uint64_t total = hr_trainer_updates(tr);
        upkeep_sampler(tr, total);
        upkeep_expire(tr, hr_now_ns());
        upkeep_loss_after(tr, total);
        pthread_mutex_lock(&tr->upkeep_mu);
        struct timespec ts = hr_deadline_after(UPKEEP_TICK_MS * 1e-3);
        while (!tr->upkeep_stop &&
               pthread_cond_timedwait(&tr->upkeep_cv, &tr->upkeep_mu, &ts) != ETIMEDOUT)
            ;
    }
    pthread_mutex_unlock(&tr->upkeep_mu);
    return NULL;
}

/* Recomputes the applied watermark (see the file comment). Caller holds
 * tr->mu. */
static void do_advance_applied(hr_trainer *tr)
{
    hr_queue_stats qs;
    hr_queue_get_stats(tr->queue, &qs);
    if (tr->registered != qs.popped)
        return; /* a popped batch is not registered yet: it may hold lower seqs */
    uint64_t wm = tr->max_seq;
    for (unsigned i = 0; i < tr->nw; i++) {
        uint64_t lo = tr->w[i].inflight_lo;
        if (lo && lo - 1 < wm)
            wm = lo - 1;
    }
    hr_watermark_publish(tr->applied, wm);
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    hr_trainer *tr = w->tr;
    for (;;) {
        pthread_mutex_lock(&tr->mu);
        if (tr->pause_req) {
            tr->parked++;
            pthread_cond_broadcast(&tr->cv);
            while (tr->pause_req)
                pthread_cond_wait(&tr->cv, &tr->mu);
            tr->parked--;
        }
        pthread_mutex_unlock(&tr->mu);

        size_t n = 0;
        hr_status st = hr_queue_pop_timed(tr->queue, w->buf, tr->cfg.batch, &n, POP_WAIT_MS);
        if (st == HR_ESTOPPED)
            break;
        if (n == 0)
            continue;
        uint64_t first = 0, last = 0;
        for (size_t i = 0; i < n; i++) {
            uint64_t s = w->buf[i].seq;
            if (s && (first == 0 || s < first))
                first = s;
            if (s > last)
                last = s;
        }
        pthread_mutex_lock(&tr->mu);
        w->inflight_lo = first;
        tr->registered += n;
        pthread_mutex_unlock(&tr->mu);
        train_batch(tr, w, w->buf, n);
        if (tr->tap)
            tr->tap(tr->tap_ctx, w->buf, n);
        pthread_mutex_lock(&tr->mu);
        if (last > tr->max_seq)
            tr->max_seq = last;
        tr->done += n;
        w->inflight_lo = 0;
        do_advance_applied(tr);
        pthread_cond_broadcast(&tr->cv);
        pthread_mutex_unlock(&tr->mu);
    }
    pthread_mutex_lock(&tr->mu);
    tr->parked++; /* an exited worker counts as parked for good */
    pthread_cond_broadcast(&tr->cv);
    pthread_mutex_unlock(&tr->mu);
    return NULL;
}

hr_status hr_trainer_start(hr_model *model, hr_queue *queue, hr_schedbox *sched,
                           hr_progress *progress, const hr_trainer_config *cfg, hr_trainer **out)
{
    *out = NULL;
    if (cfg->threads < 1 || cfg->batch < 1)
        return HR_EINVAL;
    hr_trainer *tr = calloc(1, sizeof *tr);
    if (!tr)
        return HR_ENOMEM;
    tr->model = model;
    tr->queue = queue;
    tr->sched = sched;
    tr->progress = progress;
    tr->cfg = *cfg;
    pthread_mutex_init(&tr->mu, NULL);
    pthread_mutex_init(&tr->upkeep_mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&tr->cv, &ca);
    pthread_cond_init(&tr->upkeep_cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_rwlock_init(&tr->sampler_lock, NULL);
    /* Sampled negatives are label-0 clicks: meaningless for ratings. */
    atomic_init(&tr->neg_active, cfg->neg_mode != HR_NEG_OFF && cfg->negatives > 0 &&
                                     hr_model_get_config(model)->loss == HR_LOSS_LOGISTIC);
    atomic_init(&tr->base_updates, 0);
    tr->w = aligned_alloc(HR_CACHE_LINE, ((sizeof(worker) * cfg->threads + HR_CACHE_LINE - 1) /
                                          HR_CACHE_LINE) * HR_CACHE_LINE);
    if (!tr->w) {
        free(tr);
        return HR_ENOMEM;
    }
    memset(tr->w, 0, sizeof(worker) * cfg->threads);
    if (hr_watermark_create(&tr->applied) != HR_OK) {
        free(tr->w);
        free(tr);
        return HR_ENOMEM;
    }
    /* Events popped before this pool started (an earlier pool on the same
     * queue) are not this pool's to register. */
    hr_queue_stats qs;
    hr_queue_get_stats(queue, &qs);
    tr->registered = qs.popped;
    if (cfg->neg_alpha > 0)
        rebuild_sampler(tr);
    hr_status st = HR_OK;
    for (unsigned i = 0; i < cfg->threads; i++) {
        worker *w = &tr->w[i];
        w->tr = tr;
        w->id = i;
        hr_rng_seed(&w->rng, cfg->seed * 0x9e3779b97f4a7c15ull + i + 1);
        w->buf = calloc(cfg->batch, sizeof *w->buf); /* the pop fills used bytes only */
        w->cap_points = (size_t)cfg->batch * (1 + cfg->negatives);
        w->points = malloc(w->cap_points * sizeof *w->points);
        w->global = global_map(hr_model_layout(model), &w->global_bytes); /* NULL: shared */
        if (!w->buf || !w->points) {
            st = HR_ENOMEM;
            break;
        }
    }
    tr->nw = cfg->threads;
    for (unsigned i = 0; st == HR_OK && i < cfg->threads; i++) {
        if (pthread_create(&tr->w[i].thread, NULL, worker_main, &tr->w[i]) != 0)
            st = HR_ENOMEM;
        else
            tr->w[i].started = true;
    }
    if (st == HR_OK) {
        if (pthread_create(&tr->upkeep_thread, NULL, upkeep_main, tr) != 0)
            st = HR_ENOMEM;
        else
            tr->upkeep_started = true;
    }
    if (st != HR_OK) {
        hr_trainer_destroy(tr);
        return st;
    }
    *out = tr;
    return HR_OK;
}

void hr_trainer_stop(hr_trainer *tr, bool drain, hr_trainer_counts *counts)
{
    pthread_mutex_lock(&tr->mu);
    bool was = tr->stopped;
    pthread_mutex_unlock(&tr->mu);
    if (!was) {
        /* Close first: without drain the queue is emptied before a paused
         * worker is released, so nothing more is trained. */
        hr_queue_close(tr->queue, drain);
        pthread_mutex_lock(&tr->mu);
        tr->stopped = true;
        tr->pause_req = 0; /* a stop overrides pauses */
        pthread_cond_broadcast(&tr->cv);
        pthread_mutex_unlock(&tr->mu);
        for (unsigned i = 0; i < tr->nw; i++)
            if (tr->w[i].started)
                pthread_join(tr->w[i].thread, NULL);
        /* Upkeep last: it goes on while the workers drain. */
        if (tr->upkeep_started) {
            pthread_mutex_lock(&tr->upkeep_mu);
            tr->upkeep_stop = true;
            pthread_cond_broadcast(&tr->upkeep_cv);
            pthread_mutex_unlock(&tr->upkeep_mu);
            pthread_join(tr->upkeep_thread, NULL);
            tr->upkeep_started = false;
        }
    }
    if (counts)
        hr_trainer_get_counts(tr, counts);
}

void hr_trainer_destroy(hr_trainer *tr)
{
    if (!tr)
        return;
    hr_trainer_stop(tr, true, NULL);
    for (unsigned i = 0; i < tr->nw; i++) {
        free(tr->w[i].buf);
        free(tr->w[i].points);
        if (tr->w[i].global)
            munmap(tr->w[i].global, tr->w[i].global_bytes);
    }
    free(tr->w);
    sampler_free(tr->pop_sampler);
    pthread_rwlock_destroy(&tr->sampler_lock);
    pthread_cond_destroy(&tr->upkeep_cv);
    pthread_mutex_destroy(&tr->upkeep_mu);
    pthread_cond_destroy(&tr->cv);
    pthread_mutex_destroy(&tr->mu);
    hr_watermark_destroy(tr->applied);
    free(tr);
}

uint64_t hr_trainer_pause(hr_trainer *tr)
{
    pthread_mutex_lock(&tr->mu);
    tr->pause_req++;
    while (tr->parked < tr->nw && !tr->stopped)
        pthread_cond_wait(&tr->cv, &tr->mu);
    uint64_t seq = tr->max_seq;
    pthread_mutex_unlock(&tr->mu);
    return seq;
}

void hr_trainer_resume(hr_trainer *tr)
{
    pthread_mutex_lock(&tr->mu);
    if (tr->pause_req)
        tr->pause_req--;
    pthread_cond_broadcast(&tr->cv);
    pthread_mutex_unlock(&tr->mu);
}

void hr_trainer_set_tap(hr_trainer *tr, hr_trainer_tap *fn, void *ctx)
{
    pthread_mutex_lock(&tr->mu);
    tr->tap = fn;
    tr->tap_ctx = ctx;
    pthread_mutex_unlock(&tr->mu);
}

void hr_trainer_replay_paused(hr_trainer *tr, const hr_event *evs, size_t n)
{
    worker *w = &tr->w[0]; /* parked: its state is ours until the resume */
    uint64_t trained = atomic_load(&w->c.trained), batches = atomic_load(&w->c.batches);
    for (size_t i = 0; i < n; i += tr->cfg.batch) {
        size_t m = n - i < tr->cfg.batch ? n - i : tr->cfg.batch;
        train_batch(tr, w, evs + i, m);
    }
    atomic_store(&w->c.trained, trained);
    atomic_store(&w->c.batches, batches);
}

void hr_trainer_set_updates(hr_trainer *tr, uint64_t total)
{
    uint64_t s = 0;
    for (unsigned i = 0; i < tr->nw; i++)
        s += atomic_load_explicit(&tr->w[i].updates, memory_order_relaxed);
    /* modular: base + s == total even when total < s */
    atomic_store_explicit(&tr->base_updates, total - s, memory_order_relaxed);
}

uint64_t hr_trainer_applied_count(hr_trainer *tr, uint64_t *max_seq)
{
    pthread_mutex_lock(&tr->mu);
    uint64_t done = tr->done;
    if (max_seq)
        *max_seq = tr->max_seq;
    pthread_mutex_unlock(&tr->mu);
    return done;
}

void hr_trainer_wait_idle(hr_trainer *tr)
{
    /* While done < accepted, an event is queued or in flight, so a worker
     * will advance done (or the pool stops); both broadcast under mu. */
    pthread_mutex_lock(&tr->mu);
    for (;;) {
        hr_queue_stats qs;
        hr_queue_get_stats(tr->queue, &qs);
        if (tr->stopped || tr->done >= qs.accepted)
            break;
        pthread_cond_wait(&tr->cv, &tr->mu);
    }
    pthread_mutex_unlock(&tr->mu);
}

void hr_trainer_get_counts(const hr_trainer *tr, hr_trainer_counts *out)
{
    memset(out, 0, sizeof *out);
    for (unsigned i = 0; i < tr->nw; i++) {
        const counters *c = &tr->w[i].c;
#define HR_X_SUM(name) out->name += atomic_load_explicit(&c->name, memory_order_relaxed);
        HR_TRAINER_COUNTERS(HR_X_SUM)
#undef HR_X_SUM
        out->updates += atomic_load_explicit(&tr->w[i].updates, memory_order_relaxed);
    }
}

/* Sums the workers' histograms into the pool's merged view. Concurrent
 * callers store the same sums; all fields are atomics. */
static const hr_hist *merged(const hr_trainer *tr, size_t off, hr_hist *dst)
{
    const hr_hist *src[256];
    size_t n = tr->nw < 256 ? tr->nw : 256;
    for (size_t i = 0; i < n; i++)
        src[i] = (const hr_hist *)((const char *)&tr->w[i] + off);
    hr_hist_merge(dst, src, n);
    return dst;
}

const hr_hist *hr_trainer_staleness(const hr_trainer *tr)
{
    return merged(tr, offsetof(worker, staleness), &((hr_trainer *)tr)->staleness);
}

const hr_hist *hr_trainer_freshness(const hr_trainer *tr)
{
    return merged(tr, offsetof(worker, freshness), &((hr_trainer *)tr)->freshness);
}

hr_watermark *hr_trainer_applied(hr_trainer *tr)
{
    return tr->applied;
}

bool hr_trainer_negatives_active(const hr_trainer *tr)
{
    return atomic_load(&((hr_trainer *)tr)->neg_active);
}

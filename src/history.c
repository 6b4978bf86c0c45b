/*
 * history.c - recent items per user and item popularity; see history.h.
 *
 * Both are directories of lazily allocated blocks of 4096 rows (published
 * with a compare-and-swap, never freed before destroy), so lookups take no
 * lock. A user's ring is [written, seq_lo, seq_hi, item0 .. item{H-1}]: the
 * next item goes to slot written % H. A ring is read and written under one
 * of 256 mutexes chosen by the user row.
 *
 * A popularity value is a float (its bits in an atomic_uint) holding the sum
 * of 2^((t_i - epoch) / half_life) over the item's positive events; the
 * score at time now is value * 2^((epoch - now) / half_life). When an event
 * arrives more than MAX_SPAN half-lives after the epoch, the epoch moves to
 * its time and every value is rescaled, under the write side of pop_lock;
 * adds, reads and copies hold the read side. The first weight added or set
 * puts the epoch at its own time (until then it is the creation time), so
 * two histories that take the same events hold the same bits whenever
 * they were created (cluster nodes; a node's start time would otherwise
 * round near-equal scores apart). Floats keep 24 bits: ranks and
 * scores are exact to about 1e-7 relative, and with half_life 0 (plain
 * counts) an item's count is exact up to 2^24 events.
 */
#include "hogrec/history.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK_SHIFT 12
#define BLOCK_ROWS (1u << BLOCK_SHIFT)
#define STRIPES 256
#define RING_HEAD 3    /* written, seq low word, seq high word */
#define MAX_SPAN 32.0  /* half-lives an added weight may span (2^32) */

struct hr_history {
    uint32_t max_users, max_items; /* row bounds */
    uint32_t per_user;             /* ring size H */
    double half_life;              /* seconds; 0 = no decay */
    _Atomic(uint32_t *) *users;    /* blocks of BLOCK_ROWS * (H + RING_HEAD) */
    _Atomic(atomic_uint *) *items; /* blocks of BLOCK_ROWS float values (bits) */
    pthread_rwlock_t pop_lock;     /* write side: moving the epoch */
    double epoch;                  /* wall seconds values are relative to; under pop_lock */
    atomic_bool epoch_set;         /* the first weight set the epoch (pin_epoch) */
    pthread_mutex_t mu[STRIPES];   /* by user row */
};

hr_status hr_history_create(uint32_t max_users, uint32_t max_items, uint32_t per_user,
                            double half_life, hr_history **out)
{
    hr_history *h = calloc(1, sizeof *h);
    if (!h)
        return HR_ENOMEM;
    h->max_users = max_users;
    h->max_items = max_items;
    h->per_user = per_user;
    h->half_life = half_life > 0 ? half_life : 0;
    h->epoch = hr_wall_time();
    h->users = calloc(((size_t)max_users >> BLOCK_SHIFT) + 1, sizeof *h->users);
    h->items = calloc(((size_t)max_items >> BLOCK_SHIFT) + 1, sizeof *h->items);
    if (!h->users || !h->items) {
        free(h->users);
        free(h->items);
        free(h);
        return HR_ENOMEM;
    }
    pthread_rwlock_init(&h->pop_lock, NULL);
    for (int i = 0; i < STRIPES; i++)
        pthread_mutex_init(&h->mu[i], NULL);
    *out = h;
    return HR_OK;
}

void hr_history_destroy(hr_history *h)
{
    if (!h)
        return;
    for (size_t b = 0; b <= (h->max_users >> BLOCK_SHIFT); b++)
        free(atomic_load(&h->users[b]));
    for (size_t b = 0; b <= (h->max_items >> BLOCK_SHIFT); b++)
        free(atomic_load(&h->items[b]));
    for (int i = 0; i < STRIPES; i++)
        pthread_mutex_destroy(&h->mu[i]);
    pthread_rwlock_destroy(&h->pop_lock);
    free(h->users);
    free(h->items);
    free(h);
}

/* Returns block b, allocating it (zeroed, `bytes`) when create is set. */
static void *block(_Atomic(void *) *slot, size_t bytes, bool create)
{
    void *p = atomic_load_explicit(slot, memory_order_acquire);
    if (p || !create)
        return p;
    void *fresh = calloc(1, bytes);
    if (!fresh)
        return NULL;
    void *expected = NULL;
    if (atomic_compare_exchange_strong_explicit(slot, &expected, fresh, memory_order_acq_rel,
                                                memory_order_acquire))
        return fresh;
    free(fresh);
    return expected;
}

static uint32_t *user_ring(hr_history *h, uint32_t user, bool create)
{
    size_t words = (size_t)h->per_user + RING_HEAD;
    uint32_t *blk = block((_Atomic(void *) *)&h->users[user >> BLOCK_SHIFT],
                          BLOCK_ROWS * words * sizeof(uint32_t), create);
    return blk ? blk + (size_t)(user & (BLOCK_ROWS - 1)) * words : NULL;
}

static atomic_uint *item_value(const hr_history *h, uint32_t item, bool create)
{
    atomic_uint *blk = block((_Atomic(void *) *)&h->items[item >> BLOCK_SHIFT],
                             BLOCK_ROWS * sizeof(atomic_uint), create);
    return blk ? blk + (item & (BLOCK_ROWS - 1)) : NULL;
}

static float load_f(atomic_uint *a)
{
    unsigned bits = atomic_load_explicit(a, memory_order_relaxed);
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static void store_f(atomic_uint *a, float f)
{
    unsigned bits;
    memcpy(&bits, &f, sizeof bits);
    atomic_store_explicit(a, bits, memory_order_relaxed);
}

static void add_f(atomic_uint *a, float d)
{
    unsigned old = atomic_load_explicit(a, memory_order_relaxed), nw;
    do {
        float f;
        memcpy(&f, &old, sizeof f);
        f += d;
        memcpy(&nw, &f, sizeof nw);
    } while (!atomic_compare_exchange_weak_explicit(a, &old, nw, memory_order_relaxed,
                                                    memory_order_relaxed));
}

static uint64_t ring_seq(const uint32_t *ring)
{
    return (uint64_t)ring[1] | (uint64_t)ring[2] << 32;
}

static void ring_set_seq(uint32_t *ring, uint64_t seq)
{
    ring[1] = (uint32_t)seq;
    ring[2] = (uint32_t)(seq >> 32);
}

hr_status hr_history_add(hr_history *h, uint32_t user, uint32_t item, uint64_t seq)
{
    if (item == 0 || item >= h->max_items || h->per_user == 0 || user == 0 ||
        user >= h->max_users)
        return HR_OK;
    uint32_t *ring = user_ring(h, user, true);
    if (!ring)
        return HR_ENOMEM;
    pthread_mutex_t *mu = &h->mu[user % STRIPES];
    pthread_mutex_lock(mu);
    if (seq == 0 || seq > ring_seq(ring)) {
        /* An item already the most recent is not repeated. */
        uint32_t w = ring[0];
        uint32_t *slots = ring + RING_HEAD;
        if (w == 0 || slots[(w - 1) % h->per_user] != item) {
            slots[w % h->per_user] = item;
            ring[0] = w + 1;
        }
        if (seq)
            ring_set_seq(ring, seq);
    }
    pthread_mutex_unlock(mu);
    return HR_OK;
}

size_t hr_history_recent(hr_history *h, uint32_t user, uint32_t *out, size_t max, uint64_t *seq)
{
    if (seq)
        *seq = 0;
    if (h->per_user == 0 || user == 0 || user >= h->max_users)
        return 0;
    uint32_t *ring = user_ring(h, user, false);
    if (!ring)
        return 0;
    pthread_mutex_t *mu = &h->mu[user % STRIPES];
    pthread_mutex_lock(mu);
    uint32_t w = ring[0];
    size_t n = w < h->per_user ? w : h->per_user;
    if (n > max)
        n = max;
    for (size_t i = 0; i < n; i++)
        out[i] = ring[RING_HEAD + (w - 1 - i) % h->per_user];
    if (seq)
        *seq = ring_seq(ring);
    pthread_mutex_unlock(mu);
    return n;
}

hr_status hr_history_set_ring(hr_history *h, uint32_t user, const uint32_t *items, size_t n,
                              uint64_t seq)
{
    if (h->per_user == 0 || user == 0 || user >= h->max_users)
        return HR_OK;
    uint32_t *ring = user_ring(h, user, true);
    if (!ring)
        return HR_ENOMEM;
    if (n > h->per_user)
        n = h->per_user;
    pthread_mutex_t *mu = &h->mu[user % STRIPES];
    pthread_mutex_lock(mu);
    /* Oldest first into slots 0..n-1, so the most recent is slot n-1. */
    for (size_t i = 0; i < n; i++)
        ring[RING_HEAD + i] = items[n - 1 - i];
    ring[0] = (uint32_t)n;
    ring_set_seq(ring, seq);
    pthread_mutex_unlock(mu);
    return HR_OK;
}

/* 2^((t - epoch) / half_life), or 1 without decay. */
static double weight(const hr_history *h, double t, double epoch)
{
    return h->half_life > 0 ? exp2((t - epoch) / h->half_life) : 1.0;
}

/* Moves the epoch to t and rescales every value. Takes pop_lock's write side. */
static void move_epoch(hr_history *h, double t)
{
    pthread_rwlock_wrlock(&h->pop_lock);
    if (h->half_life > 0 && (t - h->epoch) / h->half_life > MAX_SPAN) {
        float f = (float)weight(h, h->epoch, t);
        for (size_t b = 0; b <= (h->max_items >> BLOCK_SHIFT); b++) {
            atomic_uint *blk = atomic_load_explicit((_Atomic(atomic_uint *) *)&h->items[b],
                                                    memory_order_acquire);
            for (uint32_t i = 0; blk && i < BLOCK_ROWS; i++)
                store_f(&blk[i], load_f(&blk[i]) * f);
        }
        h->epoch = t;
    }
    pthread_rwlock_unlock(&h->pop_lock);
}

/* The first weight's time t becomes the epoch (every value is 0 until
 * then, so nothing is rescaled). */
static void pin_epoch(hr_history *h, double t)
{
    if (atomic_load_explicit(&h->epoch_set, memory_order_acquire))
        return;
    pthread_rwlock_wrlock(&h->pop_lock);
    if (!atomic_load_explicit(&h->epoch_set, memory_order_relaxed) && isfinite(t)) {
        h->epoch = t;
        atomic_store_explicit(&h->epoch_set, true, memory_order_release);
    }
    pthread_rwlock_unlock(&h->pop_lock);
}

hr_status hr_history_pop_add(hr_history *h, uint32_t item, double t)
{
    if (item == 0 || item >= h->max_items)
        return HR_OK;
    atomic_uint *v = item_value(h, item, true);
    if (!v)
        return HR_ENOMEM;
    pin_epoch(h, t);
    pthread_rwlock_rdlock(&h->pop_lock);
    if (h->half_life > 0 && (t - h->epoch) / h->half_life > MAX_SPAN) {
        pthread_rwlock_unlock(&h->pop_lock);
        move_epoch(h, t);
        pthread_rwlock_rdlock(&h->pop_lock);
    }
    add_f(v, (float)weight(h, t, h->epoch));
    pthread_rwlock_unlock(&h->pop_lock);
    return HR_OK;
}

hr_status hr_history_pop_set(hr_history *h, uint32_t item, double score, double t)
{
    if (item == 0 || item >= h->max_items)
        return HR_OK;
    atomic_uint *v = item_value(h, item, true);
    if (!v)
        return HR_ENOMEM;
    pin_epoch(h, t);
    pthread_rwlock_rdlock(&h->pop_lock);
    store_f(v, (float)(score * weight(h, t, h->epoch)));
    pthread_rwlock_unlock(&h->pop_lock);
    return HR_OK;
}

double hr_history_score(hr_history *h, uint32_t item, double now)
{
    if (item >= h->max_items)
        return 0;
    atomic_uint *v = item_value(h, item, false);
    if (!v)
        return 0;
    pthread_rwlock_rdlock(&h->pop_lock);
    double s = load_f(v) * weight(h, h->epoch, now);
    pthread_rwlock_unlock(&h->pop_lock);
    return s;
}

void hr_history_pop_copy(hr_history *h, uint32_t rows, double now, float *out)
{
    if (rows > h->max_items) {
        memset(out + h->max_items, 0, (size_t)(rows - h->max_items) * sizeof *out);
        rows = h->max_items;
    }
    pthread_rwlock_rdlock(&h->pop_lock);
    double f = weight(h, h->epoch, now);
    for (uint32_t b = 0; ((size_t)b << BLOCK_SHIFT) < rows; b++) {
        atomic_uint *blk = atomic_load_explicit((_Atomic(atomic_uint *) *)&h->items[b],
                                                memory_order_acquire);
        for (uint32_t i = 0; i < BLOCK_ROWS && (b << BLOCK_SHIFT) + i < rows; i++)
            out[(b << BLOCK_SHIFT) + i] = blk ? (float)(load_f(&blk[i]) * f) : 0.0f;
    }
    pthread_rwlock_unlock(&h->pop_lock);
}

static bool is_excluded(const hr_topk_exclude *ex, uint32_t row)
{
    if (ex && ex->allow && (row >= ex->allow_rows || !((ex->allow[row / 64] >> (row % 64)) & 1)))
        return true; /* a catalog filter: popular within it */
    for (size_t i = 0; ex && i < ex->n; i++) /* short lists: linear */
        if (ex->rows[i] == row)
            return true;
    return false;
}

size_t hr_history_popular(hr_history *h, const hr_model *m, uint32_t k, double now,
                          const hr_topk_exclude *ex, hr_topk_item *out)
{
    hr_topk_heap hp;
    hr_topk_heap_init(&hp, out, k);
    uint32_t rows = hr_model_rows(m, HR_TABLE_ITEM);
    if (rows > h->max_items)
        rows = h->max_items;
    pthread_rwlock_rdlock(&h->pop_lock);
    /* Ranked by the stored values (one factor away from the scores). */
    for (uint32_t b = 0; ((size_t)b << BLOCK_SHIFT) < rows; b++) {
        atomic_uint *blk = atomic_load_explicit((_Atomic(atomic_uint *) *)&h->items[b],
                                                memory_order_acquire);
        if (!blk)
            continue;
        for (uint32_t i = 0; i < BLOCK_ROWS && (b << BLOCK_SHIFT) + i < rows; i++) {
            uint32_t row = (b << BLOCK_SHIFT) + i;
            float c = load_f(&blk[i]);
            if (!(c > 0) || row == 0)
                continue;
            if (hp.n == hp.k && c < hp.h[0].score)
                continue;
            if (!hr_model_key(m, HR_TABLE_ITEM, row, NULL) || is_excluded(ex, row))
                continue;
            hr_topk_heap_offer(&hp, row, c);
        }
    }
    double f = weight(h, h->epoch, now);
    pthread_rwlock_unlock(&h->pop_lock);
    size_t n = hr_topk_heap_finish(&hp);
    for (size_t i = 0; i < n; i++)
        out[i].score = (float)(out[i].score * f);
    return n;
}

/*
 * history.c - recent items per user and item popularity; see history.h.
 *
 * Both are directories of lazily allocated blocks of 4096 rows (published
 * with a compare-and-swap, never freed before destroy), so lookups take no
 * lock. A user's ring is [written, item0 .. item{H-1}]: the next item goes
 * to slot written % H. A ring is read and written under one of 256 mutexes
 * chosen by the user row.
 */
#include "hogrec/history.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#define BLOCK_SHIFT 12
#define BLOCK_ROWS (1u << BLOCK_SHIFT)
#define STRIPES 256

struct hr_history {
    uint32_t max_users, max_items; /* row bounds */
    uint32_t per_user;             /* ring size H */
    _Atomic(uint32_t *) *users;    /* blocks of BLOCK_ROWS * (H + 1) */
    _Atomic(atomic_uint *) *items; /* blocks of BLOCK_ROWS counts */
    pthread_mutex_t mu[STRIPES];   /* by user row */
};

hr_status hr_history_create(uint32_t max_users, uint32_t max_items, uint32_t per_user,
                            hr_history **out)
{
    hr_history *h = calloc(1, sizeof *h);
    if (!h)
        return HR_ENOMEM;
    h->max_users = max_users;
    h->max_items = max_items;
    h->per_user = per_user;
    h->users = calloc(((size_t)max_users >> BLOCK_SHIFT) + 1, sizeof *h->users);
    h->items = calloc(((size_t)max_items >> BLOCK_SHIFT) + 1, sizeof *h->items);
    if (!h->users || !h->items) {
        free(h->users);
        free(h->items);
        free(h);
        return HR_ENOMEM;
    }
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
    size_t words = (size_t)h->per_user + 1;
    uint32_t *blk = block((_Atomic(void *) *)&h->users[user >> BLOCK_SHIFT],
                          BLOCK_ROWS * words * sizeof(uint32_t), create);
    return blk ? blk + (size_t)(user & (BLOCK_ROWS - 1)) * words : NULL;
}

static atomic_uint *item_count(const hr_history *h, uint32_t item, bool create)
{
    atomic_uint *blk = block((_Atomic(void *) *)&h->items[item >> BLOCK_SHIFT],
                             BLOCK_ROWS * sizeof(atomic_uint), create);
    return blk ? blk + (item & (BLOCK_ROWS - 1)) : NULL;
}

hr_status hr_history_add(hr_history *h, uint32_t user, uint32_t item)
{
    if (item == 0 || item >= h->max_items)
        return HR_OK;
    atomic_uint *c = item_count(h, item, true);
    if (!c)
        return HR_ENOMEM;
    atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
    if (h->per_user == 0 || user == 0 || user >= h->max_users)
        return HR_OK;
    uint32_t *ring = user_ring(h, user, true);
    if (!ring)
        return HR_ENOMEM;
    pthread_mutex_t *mu = &h->mu[user % STRIPES];
    pthread_mutex_lock(mu);
    /* An item already the most recent is not repeated. */
    uint32_t w = ring[0];
    if (w == 0 || ring[1 + (w - 1) % h->per_user] != item) {
        ring[1 + w % h->per_user] = item;
        ring[0] = w + 1;
    }
    pthread_mutex_unlock(mu);
    return HR_OK;
}

size_t hr_history_recent(hr_history *h, uint32_t user, uint32_t *out, size_t max)
{
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
        out[i] = ring[1 + (w - 1 - i) % h->per_user];
    pthread_mutex_unlock(mu);
    return n;
}

uint64_t hr_history_count(const hr_history *h, uint32_t item)
{
    if (item >= h->max_items)
        return 0;
    atomic_uint *c = item_count(h, item, false);
    return c ? atomic_load_explicit(c, memory_order_relaxed) : 0;
}

static bool is_excluded(const hr_topk_exclude *ex, uint32_t row)
{
    for (size_t i = 0; ex && i < ex->n; i++) /* short lists: linear */
        if (ex->rows[i] == row)
            return true;
    return false;
}

size_t hr_history_popular(const hr_history *h, const hr_model *m, uint32_t k,
                          const hr_topk_exclude *ex, hr_topk_item *out)
{
    hr_topk_heap hp;
    hr_topk_heap_init(&hp, out, k);
    uint32_t rows = hr_model_rows(m, HR_TABLE_ITEM);
    if (rows > h->max_items)
        rows = h->max_items;
    for (uint32_t b = 0; ((size_t)b << BLOCK_SHIFT) < rows; b++) {
        atomic_uint *blk = atomic_load_explicit((_Atomic(atomic_uint *) *)&h->items[b],
                                                memory_order_acquire);
        if (!blk)
            continue;
        for (uint32_t i = 0; i < BLOCK_ROWS && (b << BLOCK_SHIFT) + i < rows; i++) {
            uint32_t row = (b << BLOCK_SHIFT) + i;
            unsigned c = atomic_load_explicit(&blk[i], memory_order_relaxed);
            if (c == 0 || row == 0)
                continue;
            if (hp.n == hp.k && (float)c < hp.h[0].score)
                continue;
            if (!hr_model_key(m, HR_TABLE_ITEM, row, NULL) || is_excluded(ex, row))
                continue;
            hr_topk_heap_offer(&hp, row, (float)c);
        }
    }
    return hr_topk_heap_finish(&hp);
}

/*
 * dedup.c - event-id de-duplication window; see dedup.h.
 *
 * Two arrays under one mutex:
 *   heap   the remembered ids, a 4-ary min-heap by time (capacity entries
 *          of 24 bytes: hash, time, index slot);
 *   index  an open-addressing table of 2 * capacity slots (4 bytes each:
 *          heap position + 1, 0 = empty), linear probing, so it is at most
 *          half full and a probe always ends at an empty slot.
 * 32 bytes per id of capacity in all, allocated at create.
 *
 * A lookup walks from the home slot to the first empty slot; there are no
 * tombstones and no probe limit: a removed id leaves the index by backward
 * shift (Knuth 6.4, algorithm R), which keeps every remaining id reachable
 * from its home without an empty slot on the way. Each heap entry knows its
 * index slot and each index slot its heap position; both are updated
 * whenever either side moves an entry.
 *
 * Before a claim or remember, the ids older than the window are removed
 * from the top of the heap, so every id in the table is within the window
 * at that time. A new id that finds the table full (capacity ids, all in the
 * window) removes the oldest one, or is itself dropped when it is older
 * than all of them; either counts as evicted. Hence: while at most capacity
 * ids were added within the window, none is ever removed but by expiry or
 * release.
 *
 * The top bit of a stored hash marks a claim not yet confirmed; ids compare
 * on the other 63 bits.
 *
 * Threads: any; every function takes `mu` (it is never held while calling
 * out). A `do_` prefix means the caller holds it. One mutex is enough: an
 * operation is a few probes and, for removals, a sift of at most log4(n)
 * levels (10 at a million ids).
 */
#include "hogrec/dedup.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define PENDING (1ull << 63)
#define ARITY 4
#define CAPACITY_MAX ((size_t)UINT32_MAX / 2 - 1) /* index slots and positions fit 32 bits */

typedef struct {
    uint64_t hash; /* id hash (never 0); PENDING bit: claimed, not confirmed */
    double time;   /* wall seconds it was claimed (or seen, for remember) */
    uint32_t slot; /* its slot in index */
} entry;

struct hr_dedup {
    pthread_mutex_t mu; /* guards all below but the constants */
    entry *heap;        /* count entries, min-heap by time */
    uint32_t *index;    /* nslots slots: heap position + 1, 0 = empty */
    size_t capacity;    /* ids remembered at most (constant) */
    size_t nslots;      /* 2 * capacity (constant) */
    double window;      /* seconds; 0 = off (constant) */
    size_t count;       /* ids in the heap */
    uint64_t evicted;   /* in-window ids forgotten for room, since create */
};

hr_status hr_dedup_create(size_t capacity, double window, hr_dedup **out)
{
    *out = NULL;
    if (capacity == 0 || capacity > CAPACITY_MAX)
        return HR_EINVAL;
    hr_dedup *d = calloc(1, sizeof *d);
    if (!d)
        return HR_ENOMEM;
    d->window = window > 0 ? window : 0;
    d->capacity = capacity;
    d->nslots = 2 * capacity;
    if (d->window > 0) {
        d->heap = malloc(capacity * sizeof *d->heap);
        d->index = calloc(d->nslots, sizeof *d->index);
        if (!d->heap || !d->index) {
            free(d->heap);
            free(d->index);
            free(d);
            return HR_ENOMEM;
        }
    }
    pthread_mutex_init(&d->mu, NULL);
    *out = d;
    return HR_OK;
}

void hr_dedup_destroy(hr_dedup *d)
{
    if (!d)
        return;
    pthread_mutex_destroy(&d->mu);
    free(d->heap);
    free(d->index);
    free(d);
}

double hr_dedup_window(const hr_dedup *d)
{
    return d->window;
}

static uint64_t norm(uint64_t h)
{
    h &= ~PENDING;
    return h ? h : 1;
}

/* Home slot of h: its mixed bits scaled onto [0, nslots). */
static size_t home_of(const hr_dedup *d, uint64_t h)
{
    uint64_t x = (h & ~PENDING) * 0x9E3779B97F4A7C15ull;
    return (size_t)(((unsigned __int128)x * d->nslots) >> 64);
}

static size_t next_slot(const hr_dedup *d, size_t i)
{
    return i + 1 == d->nslots ? 0 : i + 1;
}

/* The index slot holding h, or the empty slot ending its probe; *found says
 * which. */
static size_t do_find(const hr_dedup *d, uint64_t h, bool *found)
{
    size_t i = home_of(d, h);
    while (d->index[i] != 0) {
        if ((d->heap[d->index[i] - 1].hash & ~PENDING) == h) {
            *found = true;
            return i;
        }
        i = next_slot(d, i);
    }
    *found = false;
    return i;
}

/* Empties index slot i, shifting later entries of its cluster back so that
 * each stays reachable from its home. */
static void do_index_remove(hr_dedup *d, size_t i)
{
    for (;;) {
        d->index[i] = 0;
        size_t k = i;
        for (;;) {
            k = next_slot(d, k);
            if (d->index[k] == 0)
                return;
            size_t home = home_of(d, d->heap[d->index[k] - 1].hash);
            /* k stays if its home lies cyclically in (i, k] */
            bool stays = i < k ? (i < home && home <= k) : (i < home || home <= k);
            if (!stays)
                break;
        }
        d->index[i] = d->index[k];
        d->heap[d->index[i] - 1].slot = (uint32_t)i;
        i = k;
    }
}

/* Puts e at heap position pos and points its index slot there. */
static void do_place(hr_dedup *d, size_t pos, entry e)
{
    d->heap[pos] = e;
    d->index[e.slot] = (uint32_t)(pos + 1);
}

static void do_sift_up(hr_dedup *d, size_t pos)
{
    entry e = d->heap[pos];
    while (pos > 0) {
        size_t parent = (pos - 1) / ARITY;
        if (d->heap[parent].time <= e.time)
            break;
        do_place(d, pos, d->heap[parent]);
        pos = parent;
    }
    do_place(d, pos, e);
}

static void do_sift_down(hr_dedup *d, size_t pos)
{
    entry e = d->heap[pos];
    for (;;) {
        size_t first = pos * ARITY + 1;
        if (first >= d->count)
            break;
        size_t end = first + ARITY < d->count ? first + ARITY : d->count;
        size_t m = first;
        for (size_t c = first + 1; c < end; c++)
            if (d->heap[c].time < d->heap[m].time)
                m = c;
        if (!(d->heap[m].time < e.time))
            break;
        do_place(d, pos, d->heap[m]);
        pos = m;
    }
    do_place(d, pos, e);
}

/* Removes the id at heap position pos. */
static void do_remove_at(hr_dedup *d, size_t pos)
{
    do_index_remove(d, d->heap[pos].slot);
    size_t last = --d->count;
    if (pos == last)
        return;
    d->heap[pos] = d->heap[last];
    d->index[d->heap[pos].slot] = (uint32_t)(pos + 1);
    if (pos > 0 && d->heap[(pos - 1) / ARITY].time > d->heap[pos].time)
        do_sift_up(d, pos);
    else
        do_sift_down(d, pos);
}

/* Removes the ids that are past the window at now. */
static void do_expire(hr_dedup *d, double now)
{
    while (d->count > 0 && !(now - d->heap[0].time < d->window))
        do_remove_at(d, 0);
}

/* Adds stored hash h (PENDING bit included) at time t; h must be absent
 * and the table expired at the caller's now. When full, the oldest id gives
 * way, or h is dropped if it is the oldest; either is counted. */
static void do_add(hr_dedup *d, uint64_t h, double t)
{
    if (d->count == d->capacity) {
        d->evicted++;
        if (t < d->heap[0].time)
            return;
        do_remove_at(d, 0);
    }
    bool found;
    size_t slot = do_find(d, h & ~PENDING, &found);
    size_t pos = d->count++;
    d->heap[pos] = (entry){.hash = h, .time = t, .slot = (uint32_t)slot};
    d->index[slot] = (uint32_t)(pos + 1);
    do_sift_up(d, pos);
}

bool hr_dedup_claim(hr_dedup *d, uint64_t h, double now)
{
    if (d->window <= 0)
        return true;
    h = norm(h);
    pthread_mutex_lock(&d->mu);
    do_expire(d, now);
    bool found;
    do_find(d, h, &found);
    if (!found)
        do_add(d, h | PENDING, now);
    pthread_mutex_unlock(&d->mu);
    return !found;
}

void hr_dedup_remember(hr_dedup *d, uint64_t h, double t, double now)
{
    if (d->window <= 0 || !isfinite(t) || !(now - t < d->window))
        return;
    h = norm(h);
    pthread_mutex_lock(&d->mu);
    do_expire(d, now);
    bool found;
    do_find(d, h, &found);
    if (!found)
        do_add(d, h, t);
    pthread_mutex_unlock(&d->mu);
}

/* Confirm (clear the pending bit) or release (remove) h. */
static void update(hr_dedup *d, uint64_t h, bool release)
{
    if (d->window <= 0)
        return;
    h = norm(h);
    pthread_mutex_lock(&d->mu);
    bool found;
    size_t slot = do_find(d, h, &found);
    if (found) {
        size_t pos = d->index[slot] - 1;
        if (release)
            do_remove_at(d, pos);
        else
            d->heap[pos].hash = h;
    }
    pthread_mutex_unlock(&d->mu);
}

void hr_dedup_confirm(hr_dedup *d, uint64_t h)
{
    update(d, h, false);
}

void hr_dedup_release(hr_dedup *d, uint64_t h)
{
    update(d, h, true);
}

void hr_dedup_get_stats(hr_dedup *d, double now, hr_dedup_stats *out)
{
    memset(out, 0, sizeof *out);
    out->capacity = d->capacity;
    if (d->window <= 0)
        return;
    pthread_mutex_lock(&d->mu);
    do_expire(d, now);
    out->ids = d->count;
    out->evicted = d->evicted;
    pthread_mutex_unlock(&d->mu);
}

typedef struct {
    uint64_t hash;
    double time;
} exported;

hr_status hr_dedup_export(hr_dedup *d, double now, hr_dedup_fn fn, void *ctx)
{
    if (d->window <= 0)
        return HR_OK;
    /* Copy under the lock into a buffer sized (and its pages touched)
     * before it; a table that grew meanwhile gets one more try at the
     * largest size. */
    pthread_mutex_lock(&d->mu);
    size_t want = d->count;
    pthread_mutex_unlock(&d->mu);
    exported *got = NULL;
    size_t n = 0;
    for (int attempt = 0; attempt < 2; attempt++) {
        size_t room = attempt == 0 ? want + want / 8 + 64 : d->capacity;
        if (room > d->capacity)
            room = d->capacity;
        free(got);
        got = malloc(room * sizeof *got);
        if (!got)
            return HR_ENOMEM;
        memset(got, 0, room * sizeof *got);
        pthread_mutex_lock(&d->mu);
        bool fits = d->count <= room;
        if (fits) {
            n = 0;
            for (size_t i = 0; i < d->count; i++) {
                const entry *e = &d->heap[i];
                if (!(e->hash & PENDING) && now - e->time < d->window)
                    got[n++] = (exported){e->hash, e->time};
            }
        }
        pthread_mutex_unlock(&d->mu);
        if (fits)
            break;
    }
    hr_status st = HR_OK;
    for (size_t i = 0; i < n && st == HR_OK; i++)
        st = fn(ctx, got[i].hash, got[i].time);
    free(got);
    return st;
}

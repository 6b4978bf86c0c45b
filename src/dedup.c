/*
 * dedup.c - event-id de-duplication window; see dedup.h.
 *
 * Open addressing, linear probing over at most PROBE slots, no resizing.
 * A slot is (hash, time); hash 0 means never used (a real hash of 0 is
 * stored as 1). The top bit of a stored hash marks a claim not yet
 * confirmed; ids compare on the other 63 bits. An entry older than the
 * window counts as free for inserts but lookups walk past it (a released
 * entry has time -inf and behaves the same), stopping only at a never-used
 * slot or after PROBE slots. When all PROBE slots hold live entries the
 * oldest one is overwritten.
 */
#include "hogrec/dedup.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>

#define PROBE 32
#define STRIPES 64
#define PENDING (1ull << 63)

typedef struct {
    uint64_t hash; /* 0 = never used; PENDING bit: claimed, not confirmed */
    double time;   /* wall seconds; -INFINITY once released */
} slot;

struct hr_dedup {
    slot *slots;
    size_t mask;                 /* capacity - 1 */
    double window;               /* seconds; 0 = off */
    pthread_mutex_t mu[STRIPES]; /* by probe group, striped */
};

hr_status hr_dedup_create(size_t capacity, double window, hr_dedup **out)
{
    hr_dedup *d = calloc(1, sizeof *d);
    if (!d)
        return HR_ENOMEM;
    size_t cap = 1024;
    while (cap < capacity)
        cap <<= 1;
    d->window = window;
    d->mask = cap - 1;
    if (window > 0) {
        d->slots = calloc(cap, sizeof *d->slots);
        if (!d->slots) {
            free(d);
            return HR_ENOMEM;
        }
    }
    for (int i = 0; i < STRIPES; i++)
        pthread_mutex_init(&d->mu[i], NULL);
    *out = d;
    return HR_OK;
}

void hr_dedup_destroy(hr_dedup *d)
{
    if (!d)
        return;
    for (int i = 0; i < STRIPES; i++)
        pthread_mutex_destroy(&d->mu[i]);
    free(d->slots);
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

/* Probes stay inside an aligned group of PROBE slots, so one lock per group
 * (striped) covers a whole probe sequence. */
static size_t home_of(const hr_dedup *d, uint64_t h)
{
    return ((size_t)(h * 0x9E3779B97F4A7C15ull >> 17) & d->mask) & ~(size_t)(PROBE - 1);
}

static pthread_mutex_t *lock_of(hr_dedup *d, size_t home)
{
    return &d->mu[(home / PROBE) % STRIPES];
}

/* Finds h live at now, or inserts it (hash | flag, time t). Returns whether
 * it was inserted. Under the group's lock. */
static bool find_or_insert(hr_dedup *d, size_t home, uint64_t h, uint64_t flag, double t,
                           double now)
{
    slot *free_slot = NULL, *oldest = NULL;
    for (size_t i = 0; i < PROBE; i++) {
        slot *s = &d->slots[home + i];
        bool live = s->hash != 0 && now - s->time < d->window;
        if (live && (s->hash & ~PENDING) == h)
            return false;
        if (!live && !free_slot)
            free_slot = s;
        if (live && (!oldest || s->time < oldest->time))
            oldest = s;
        if (s->hash == 0)
            break;
    }
    slot *v = free_slot ? free_slot : oldest;
    v->hash = h | flag;
    v->time = t;
    return true;
}

bool hr_dedup_claim(hr_dedup *d, uint64_t h, double now)
{
    if (d->window <= 0)
        return true;
    h = norm(h);
    size_t home = home_of(d, h);
    pthread_mutex_t *mu = lock_of(d, home);
    pthread_mutex_lock(mu);
    bool fresh = find_or_insert(d, home, h, PENDING, now, now);
    pthread_mutex_unlock(mu);
    return fresh;
}

void hr_dedup_remember(hr_dedup *d, uint64_t h, double t, double now)
{
    if (d->window <= 0 || !(now - t < d->window))
        return;
    h = norm(h);
    size_t home = home_of(d, h);
    pthread_mutex_t *mu = lock_of(d, home);
    pthread_mutex_lock(mu);
    find_or_insert(d, home, h, 0, t, now);
    pthread_mutex_unlock(mu);
}

/* Applies to every slot holding h: confirm (clear the pending bit) or
 * release (time -inf). */
static void update(hr_dedup *d, uint64_t h, bool release)
{
    if (d->window <= 0)
        return;
    h = norm(h);
    size_t home = home_of(d, h);
    pthread_mutex_t *mu = lock_of(d, home);
    pthread_mutex_lock(mu);
    for (size_t i = 0; i < PROBE; i++) {
        slot *s = &d->slots[home + i];
        if ((s->hash & ~PENDING) == h) {
            if (release)
                s->time = -INFINITY;
            else
                s->hash = h;
        }
        if (s->hash == 0)
            break;
    }
    pthread_mutex_unlock(mu);
}

void hr_dedup_confirm(hr_dedup *d, uint64_t h)
{
    update(d, h, false);
}

void hr_dedup_release(hr_dedup *d, uint64_t h)
{
    update(d, h, true);
}

hr_status hr_dedup_export(hr_dedup *d, double now, hr_dedup_fn fn, void *ctx)
{
    if (d->window <= 0)
        return HR_OK;
    for (size_t home = 0; home <= d->mask; home += PROBE) {
        slot got[PROBE];
        size_t n = 0;
        pthread_mutex_t *mu = lock_of(d, home);
        pthread_mutex_lock(mu);
        for (size_t i = 0; i < PROBE; i++) {
            slot s = d->slots[home + i];
            if (s.hash != 0 && !(s.hash & PENDING) && now - s.time < d->window)
                got[n++] = s;
        }
        pthread_mutex_unlock(mu);
        for (size_t i = 0; i < n; i++) {
            hr_status st = fn(ctx, got[i].hash, got[i].time);
            if (st != HR_OK)
                return st;
        }
    }
    return HR_OK;
}

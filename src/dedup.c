/*
 * dedup.c - event-id de-duplication window; see dedup.h.
 *
 * Open addressing, linear probing over at most PROBE slots, no resizing.
 * A slot is (hash, time); hash 0 means never used (a real hash of 0 is
 * stored as 1). An entry older than the window counts as free for inserts
 * but lookups walk past it (a released entry has time -inf and behaves the
 * same), stopping only at a never-used slot or after PROBE slots. When all
 * PROBE slots hold live entries the oldest one is overwritten.
 */
#include "hogrec/dedup.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>

#define PROBE 32
#define STRIPES 64

typedef struct {
    uint64_t hash;
    double time; /* seconds; -INFINITY once released */
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

bool hr_dedup_claim(hr_dedup *d, uint64_t h, double now)
{
    if (d->window <= 0)
        return true;
    if (h == 0)
        h = 1;
    size_t home = home_of(d, h);
    pthread_mutex_t *mu = lock_of(d, home);
    pthread_mutex_lock(mu);
    slot *free_slot = NULL, *oldest = NULL;
    bool fresh = true;
    for (size_t i = 0; i < PROBE; i++) {
        slot *s = &d->slots[home + i];
        bool live = s->hash != 0 && now - s->time < d->window;
        if (live && s->hash == h) {
            fresh = false;
            break;
        }
        if (!live && !free_slot)
            free_slot = s;
        if (live && (!oldest || s->time < oldest->time))
            oldest = s;
        if (s->hash == 0)
            break;
    }
    if (fresh) {
        slot *v = free_slot ? free_slot : oldest;
        v->hash = h;
        v->time = now;
    }
    pthread_mutex_unlock(mu);
    return fresh;
}

void hr_dedup_release(hr_dedup *d, uint64_t h)
{
    if (d->window <= 0)
        return;
    if (h == 0)
        h = 1;
    size_t home = home_of(d, h);
    pthread_mutex_t *mu = lock_of(d, home);
    pthread_mutex_lock(mu);
    for (size_t i = 0; i < PROBE; i++) {
        slot *s = &d->slots[home + i];
        if (s->hash == h)
            s->time = -INFINITY;
        if (s->hash == 0)
            break;
    }
    pthread_mutex_unlock(mu);
}

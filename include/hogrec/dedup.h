/*
 * dedup.h - remembers event ids for a time window so that an event sent
 * twice (a client retry) is applied once.
 *
 * Bounded memory, allocated at create: 32 bytes per id of capacity.
 * Guarantee: as long as at most `capacity` ids were added (claimed or
 * remembered) within the window, every one of them is found again within
 * it. Past that, the oldest ids are forgotten first, and each one forgotten
 * while still within the window is counted (hr_dedup_stats.evicted). Ids
 * are compared by a 63-bit hash.
 *
 * An id goes through claim -> confirm (its batch was accepted) or claim ->
 * release (its batch was refused: the resend must not be dropped). A
 * claimed id is a duplicate for other claims at once; only confirmed ids
 * are exported (checkpoints), so a checkpoint never holds an id whose batch
 * was then refused. remember() adds a confirmed id with a given time
 * (restore, log replay); it is idempotent.
 *
 * Threads: any (one mutex, never held while calling out).
 */
#ifndef HOGREC_DEDUP_H
#define HOGREC_DEDUP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hogrec/common.h"

typedef struct hr_dedup hr_dedup;

/* window: seconds an id is remembered (0 = de-duplication off, claims always
 * succeed, nothing allocated). capacity: ids remembered at most, 1 to
 * 2^31 - 2 (else HR_EINVAL). *out is new. */
hr_status hr_dedup_create(size_t capacity, double window, hr_dedup **out);
void hr_dedup_destroy(hr_dedup *d); /* NULL is a no-op */

/* Returns true and remembers the id as claimed (at wall time now, seconds)
 * if it was not seen within the window; false if it is a duplicate. */
bool hr_dedup_claim(hr_dedup *d, uint64_t id_hash, double now);

/* A claimed id's batch was accepted: the id is exported from now on. */
void hr_dedup_confirm(hr_dedup *d, uint64_t id_hash);

/* Forgets a claimed (or confirmed) id: its batch was refused. */
void hr_dedup_release(hr_dedup *d, uint64_t id_hash);

/* Remembers a confirmed id seen at time t, judging the window at wall time
 * now (an id already past it, or a non-finite t, is not added; one already
 * present is kept). A full table forgets its oldest id for it, or drops it
 * if it is older than all of them (counted either way). */
void hr_dedup_remember(hr_dedup *d, uint64_t id_hash, double t, double now);

/* Calls fn for every confirmed id still within the window at now, with its
 * time; stops at the first status other than HR_OK and returns it. fn runs
 * without the table's locks held. */
typedef hr_status (*hr_dedup_fn)(void *ctx, uint64_t id_hash, double t);
hr_status hr_dedup_export(hr_dedup *d, double now, hr_dedup_fn fn, void *ctx);

/* The window in seconds (0 = off). */
double hr_dedup_window(const hr_dedup *d);

typedef struct {
    size_t ids;        /* ids remembered (within the window at now; 0 when off) */
    size_t capacity;   /* ids remembered at most */
    uint64_t evicted;  /* ids forgotten within the window to make room, since create */
} hr_dedup_stats;

/* Fills *out, first forgetting the ids past the window at now. */
void hr_dedup_get_stats(hr_dedup *d, double now, hr_dedup_stats *out);

#endif

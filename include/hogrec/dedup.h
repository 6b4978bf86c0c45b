/*
 * dedup.h - remembers event ids for a time window so that an event sent
 * twice (a client retry) is applied once.
 *
 * Bounded memory: a fixed table of `capacity` (id hash, time) slots. An id
 * is found again within the window as long as fewer than about capacity ids
 * arrived in that window; past that, the oldest entries are forgotten first.
 * Ids are compared by a 63-bit hash.
 *
 * An id goes through claim -> confirm (its batch was accepted) or claim ->
 * release (its batch was refused: the resend must not be dropped). A
 * claimed id is a duplicate for other claims at once; only confirmed ids
 * are exported (checkpoints), so a checkpoint never holds an id whose batch
 * was then refused. remember() adds a confirmed id with a given time
 * (restore, log replay); it is idempotent.
 *
 * Threads: any (striped locks).
 */
#ifndef HOGREC_DEDUP_H
#define HOGREC_DEDUP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hogrec/common.h"

typedef struct hr_dedup hr_dedup;

/* window: seconds an id is remembered (0 = de-duplication off, claims always
 * succeed). capacity is rounded up to a power of two. *out is new. */
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
 * now (an id already past it is not added; one already present is kept). */
void hr_dedup_remember(hr_dedup *d, uint64_t id_hash, double t, double now);

/* Calls fn for every confirmed id still within the window at now, with its
 * time; stops at the first status other than HR_OK and returns it. fn runs
 * without the table's locks held. */
typedef hr_status (*hr_dedup_fn)(void *ctx, uint64_t id_hash, double t);
hr_status hr_dedup_export(hr_dedup *d, double now, hr_dedup_fn fn, void *ctx);

/* The window in seconds (0 = off). */
double hr_dedup_window(const hr_dedup *d);

#endif

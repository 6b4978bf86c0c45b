/*
 * dedup.h - remembers event ids for a time window so that an event sent
 * twice (a client retry) is applied once.
 *
 * Bounded memory: a fixed table of `capacity` (id hash, time) slots. An id
 * is found again within the window as long as fewer than about capacity ids
 * arrived in that window; past that, the oldest entries are forgotten first.
 * Ids are compared by a 64-bit hash.
 *
 * Claim/release lets a request make a batch's ids pending and give them back
 * if the batch is then refused (429), so the resent batch is not dropped.
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

/* Returns true and remembers the id (at time now, seconds) if it was not
 * seen within the window; false if it is a duplicate. */
bool hr_dedup_claim(hr_dedup *d, uint64_t id_hash, double now);

/* Forgets a claimed id (its batch was refused). */
void hr_dedup_release(hr_dedup *d, uint64_t id_hash);

#endif

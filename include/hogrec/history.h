/*
 * history.h - what the server remembers about interactions, for serving:
 * a bounded ring of each user's most recent items (exclude_seen) and a
 * "recently popular" score per item (the fallback for unknown users).
 *
 * Popularity: each positive event adds a weight that halves every
 * half_life seconds after its arrival (half_life 0: no decay, the score is
 * a count). Values are kept relative to an epoch (weight 2^((t - epoch) /
 * half_life)), so adding costs no exponential over all items; the epoch is
 * moved forward (every value rescaled) before weights could overflow.
 *
 * Each ring remembers the seq of the last event it took: an event whose seq
 * is not above it is already in the ring and is skipped (what makes a log
 * replay over a restored ring exact). Callers add in seq order.
 *
 * Memory grows with the users and items seen, in blocks of 4096 rows
 * allocated on first use (per user: 4 * (history_per_user + 3) bytes; per
 * item: 4 bytes).
 *
 * Threads: any. Rings are guarded by striped mutexes; popularity values are
 * atomics, with a reader-writer lock that only the epoch move takes
 * exclusively.
 */
#ifndef HOGREC_HISTORY_H
#define HOGREC_HISTORY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hogrec/common.h"
#include "hogrec/model.h"
#include "hogrec/topk.h"

typedef struct hr_history hr_history;

/* max_users/max_items: row bounds of the model tables; per_user: ring size
 * (0 = no per-user history); half_life: popularity half-life in seconds (0 =
 * no decay). *out is new. */
hr_status hr_history_create(uint32_t max_users, uint32_t max_items, uint32_t per_user,
                            double half_life, hr_history **out);
void hr_history_destroy(hr_history *h); /* NULL is a no-op */

/* Records that user interacted with item (rows; 0 and out-of-range ignored)
 * in the event with sequence number seq (0: unsequenced, always recorded; an
 * seq not above the ring's last one is skipped). HR_ENOMEM if a block cannot
 * be allocated (nothing recorded). */
hr_status hr_history_add(hr_history *h, uint32_t user, uint32_t item, uint64_t seq);

/* Adds one positive event for item that arrived at wall time t (seconds).
 * HR_ENOMEM if a block cannot be allocated. */
hr_status hr_history_pop_add(hr_history *h, uint32_t item, double t);

/* Copies up to max of user's recent item rows (most recent first) into out;
 * returns how many were copied. *seq (may be NULL) receives the seq of the
 * last event the ring took (0 if none). */
size_t hr_history_recent(hr_history *h, uint32_t user, uint32_t *out, size_t max,
                         uint64_t *seq);

/* Replaces user's ring with items (rows, most recent first; at most
 * per_user are kept) and its last seq (restore). */
hr_status hr_history_set_ring(hr_history *h, uint32_t user, const uint32_t *items, size_t n,
                              uint64_t seq);

/* Popularity score of an item at wall time now (decayed). */
double hr_history_score(hr_history *h, uint32_t item, double now);

/* Sets an item's score to `score` as of wall time t (restore). */
hr_status hr_history_pop_set(hr_history *h, uint32_t item, double score, double t);

/* Copies the scores of rows [0, rows) as of wall time now into out (0 for
 * items without events); one consistent epoch. */
void hr_history_pop_copy(hr_history *h, uint32_t rows, double now, float *out);

/* The k items with the highest score at wall time now (ties: lower row),
 * best first, skipping row 0, rows without a key in m and excluded rows.
 * Returns how many were written to out (room for k). */
size_t hr_history_popular(hr_history *h, const hr_model *m, uint32_t k, double now,
                          const hr_topk_exclude *ex, hr_topk_item *out);

#endif

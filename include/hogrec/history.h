/*
 * history.h - what the server remembers about interactions, for serving:
 * a bounded ring of each user's most recent items (exclude_seen) and an
 * event count per item (the "popular" fallback for unknown users).
 *
 * Memory grows with the users and items seen, in blocks of 4096 rows
 * allocated on first use (per user: 4 * (history_per_user + 1) bytes).
 *
 * Threads: any. Rings are guarded by striped mutexes; counts are atomics.
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
 * (0 = no per-user history). *out is new. */
hr_status hr_history_create(uint32_t max_users, uint32_t max_items, uint32_t per_user,
                            hr_history **out);
void hr_history_destroy(hr_history *h); /* NULL is a no-op */

/* Records that user interacted with item (rows; 0 and out-of-range ignored).
 * HR_ENOMEM if a block cannot be allocated (nothing recorded). */
hr_status hr_history_add(hr_history *h, uint32_t user, uint32_t item);

/* Copies up to max of user's recent item rows (most recent first) into out;
 * returns how many were copied. */
size_t hr_history_recent(hr_history *h, uint32_t user, uint32_t *out, size_t max);

/* Events recorded for an item. */
uint64_t hr_history_count(const hr_history *h, uint32_t item);

/* The k items with the most events (ties: lower row), best first, skipping
 * row 0, rows without a key in m and excluded rows; score = count. Returns
 * how many were written to out (room for k). */
size_t hr_history_popular(const hr_history *h, const hr_model *m, uint32_t k,
                          const hr_topk_exclude *ex, hr_topk_item *out);

#endif

/*
 * ids.h - collisionless id table: external id strings -> dense row numbers.
 *
 * Ids are byte strings of 1..HR_ID_MAX_LEN bytes (a JSON integer id is its
 * decimal string). Each distinct id gets its own row number, handed out
 * densely from `first_row` upwards (rows below first_row are reserved by the
 * caller, e.g. row 0 as the shared default embedding).
 *
 * Concurrency: hr_ids_lookup and hr_ids_key take no lock and may run in any
 * number of threads while one or more threads insert or remove. Inserts and
 * removals serialize on an internal mutex (they are rare next to lookups).
 * The index grows by rehashing into a bigger table published atomically;
 * storage never moves, so a key pointer stays valid until hr_ids_destroy.
 *
 * Rows of removed (expired) ids go on a free list and are handed to later
 * new ids. The row-init callback runs under the insert lock *before* the new
 * id becomes visible to lookups, so a reader that finds an id always finds an
 * initialized row.
 */
#ifndef HOGREC_IDS_H
#define HOGREC_IDS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hogrec/common.h"

#define HR_ID_MAX_LEN 256
#define HR_ID_NONE UINT32_MAX

typedef struct hr_ids hr_ids;

/* Called under the insert lock before the id at `row` is published. Returns
 * HR_OK or an error, in which case the insert fails and the row is not used. */
typedef hr_status (*hr_ids_row_init_fn)(void *ctx, uint32_t row);

/* Creates an empty table. Rows are numbered from first_row; at most max_rows
 * rows (counting the reserved ones) are ever handed out. *out is new; free it
 * with hr_ids_destroy. */
hr_status hr_ids_create(uint32_t first_row, uint32_t max_rows, hr_ids **out);

/* Frees the table and every key. NULL is a no-op. No other call may run. */
void hr_ids_destroy(hr_ids *ids);

/* Lock-free. Returns the row of the id, or HR_ID_NONE if it is not present. */
uint32_t hr_ids_lookup(const hr_ids *ids, const char *key, size_t len);

/* Finds or inserts. On insert, init(ctx, row) runs first (init may be NULL).
 * *row receives the row; *created (may be NULL) is set to whether it was new.
 * Errors: HR_EINVAL (length 0 or > HR_ID_MAX_LEN), HR_EFULL (max_rows
 * reached), HR_ENOMEM, or what init returned. Thread-safe. */
hr_status hr_ids_intern(hr_ids *ids, const char *key, size_t len,
                        hr_ids_row_init_fn init, void *ctx, uint32_t *row,
                        bool *created);

/* Inserts key at a given row (restoring a checkpoint). The row must be free
 * (never handed out, or removed); rows skipped below it become free rows.
 * Errors: HR_EINVAL (bad length, row < first_row or >= max_rows, row in use,
 * key already present at another row). Thread-safe. */
hr_status hr_ids_insert_at(hr_ids *ids, const char *key, size_t len,
                           uint32_t row);

/* Removes the id that owns row (expiry). Its row goes on the free list.
 * Returns HR_ENOTFOUND if the row holds no id. Thread-safe; lookups running
 * at the same time see the id or not, never garbage. */
hr_status hr_ids_remove(hr_ids *ids, uint32_t row);

/* Lock-free. Returns the key of row (borrowed: valid until hr_ids_destroy,
 * not NUL-terminated; *len set) or NULL if the row holds no id. */
const char *hr_ids_key(const hr_ids *ids, uint32_t row, size_t *len);

/* One past the highest row ever handed out (>= first_row). Lock-free. */
uint32_t hr_ids_high_water(const hr_ids *ids);

/* Number of ids present now. Lock-free. */
uint32_t hr_ids_count(const hr_ids *ids);

/* Number of removals so far. Lock-free. */
uint64_t hr_ids_removed(const hr_ids *ids);

/* Bytes of memory the index and keys use. */
size_t hr_ids_bytes(const hr_ids *ids);

#endif

/*
 * attrmat.h - the item x attribute sparse matrix A of the top-K scan: row i
 * holds item i's catalog attributes (model.h: hr_model_set_attrs) as
 * (column, value) pairs, one column per distinct attribute (a context
 * row). With t_c = w_c + <q, v_c> per column (computed per query by the
 * caller), (A t)_i is what item i's attributes add to its score for query
 * q, so topk adds A t to each block of sgemv scores before the heap.
 *
 * Storage: segments of HR_ATTRMAT_SEG rows, each a small sparse block
 * (ELLPACK: as many slots per row as its fullest row has, slot-major,
 * unused slots on the "none" column whose t is 0) or NULL when no row of
 * it has attributes. A change to a
 * row's attributes bumps its segment's generation (hr_attrmat_touch, lock
 * free); the next reader rebuilds only the segments whose generation moved
 * (hr_attrmat_acquire), reading each row's attributes through a callback.
 * Columns are added as attributes appear and never removed (a column no row
 * uses any more costs one t_c per query).
 *
 * Arithmetic: a row's term is summed in double over its entries in
 * attribute order and rounded to float once (float x float products are
 * exact in double), so it does not depend on the compiler contracting
 * multiply-adds: any code that sums the same entries the same way gets the
 * same bits (topk's reference path does).
 *
 * Threads: touch from any thread (the catalog's writers). Readers
 * (top-K scans) hold the read side of a writer-preferring rwlock between
 * acquire and release; a rebuild takes the write side.
 */
#ifndef HOGREC_ATTRMAT_H
#define HOGREC_ATTRMAT_H

#include <stddef.h>
#include <stdint.h>

#include "hogrec/common.h"
#include "hogrec/event.h"

/* Rows per segment (a rebuild's unit). */
#define HR_ATTRMAT_SEG 64u

/* The context row of the "none" column (column 0 once any row has
 * attributes): the caller's t for it must be 0. */
#define HR_ATTRMAT_NONE UINT32_MAX

typedef struct hr_attrmat hr_attrmat;

/* Reads row's attributes into out (room for HR_MAX_ATTRS); returns how many. */
typedef uint32_t (*hr_attrmat_read_fn)(void *ctx, uint32_t row, hr_feat *out);

/* An empty matrix for rows [0, max_rows). *out is new. HR_ENOMEM. */
hr_status hr_attrmat_create(uint32_t max_rows, hr_attrmat **out);
void hr_attrmat_destroy(hr_attrmat *a); /* NULL is a no-op; no reader may hold it */

/* Says that row's attributes changed (call after the change is visible to
 * the read callback). Lock-free; rows >= max_rows are ignored. */
void hr_attrmat_touch(hr_attrmat *a, uint32_t row);

/* Rebuilds the segments touched since they were last built (reading rows
 * through read(ctx, ...)), then takes the read side: the matrix does not
 * change until hr_attrmat_release. HR_OK, or HR_ENOMEM (a segment could not
 * be rebuilt; nothing is held). */
hr_status hr_attrmat_acquire(hr_attrmat *a, hr_attrmat_read_fn read, void *ctx);
void hr_attrmat_release(hr_attrmat *a);

/* The columns: *ctx_rows (borrowed until release) holds each column's
 * context row (HR_ATTRMAT_NONE for the padding's column, whose t must be
 * 0); returns the count. Between acquire and release. */
uint32_t hr_attrmat_cols(const hr_attrmat *a, const uint32_t **ctx_rows);

/* Entries held (nonzeros of A). Between acquire and release. */
uint64_t hr_attrmat_nnz(const hr_attrmat *a);

/* For rows base .. base+len-1 and queries j < nq:
 *   y[(row - base) * ldy + j] += (A t_j)_row,  t_j = t + j * ldt
 * (a row without attributes gets +0). Between acquire and release. */
void hr_attrmat_add(const hr_attrmat *a, uint32_t base, uint32_t len, const float *t,
                    size_t ldt, size_t nq, float *y, size_t ldy);

/* (A t)_row for one row: the term hr_attrmat_add adds, bit for bit. */
float hr_attrmat_row(const hr_attrmat *a, uint32_t row, const float *t);

#endif

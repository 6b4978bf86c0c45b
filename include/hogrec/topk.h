/*
 * topk.h - the k best items for a query vector: score every item row of the
 * model (one cblas_sgemv per item storage block over the first k+1 columns,
 * query [q, 1], so each score is <q, v_i> + b_i), add each item's catalog
 * attributes' term sum_a x_a (w_a + <q, v_a>) (the item x attribute matrix,
 * attrmat.h: A t per block, t_a computed once per query), and keep the best
 * in a partial heap. Rows without a key (row 0, freed rows) and excluded
 * rows are skipped. The BLAS path is checked against hr_sgd_block_scores_ref
 * (hr_topk_query_ref runs that plain loop instead, for tests and benchmarks).
 *
 * Threads: any; reads live rows without locks (a query may see a row half
 * updated by a trainer, like any Hogwild reader). BLAS runs single-threaded
 * (set once, on the first call).
 */
#ifndef HOGREC_TOPK_H
#define HOGREC_TOPK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hogrec/common.h"
#include "hogrec/model.h"

/* One result: item row and its raw partial score <q, v_i> + b_i plus its
 * attributes' term (the model's score of the pair less what every item
 * shares: w0, the user's bias and its attributes' weights). */
typedef struct {
    uint32_t row;
    float score;
} hr_topk_item;

/* Rows to leave out: a sorted array (ascending, duplicates allowed), and
 * optionally a bitmap of the only rows allowed (a catalog filter). */
typedef struct {
    const uint32_t *rows;  /* borrowed */
    size_t n;
    const uint64_t *allow; /* borrowed; NULL: every row; else bit r set = row r may be
                              returned (rows >= allow_rows may not) */
    uint32_t allow_rows;   /* rows the bitmap covers */
    uint32_t allow_count;  /* bits set: below rows / HR_TOPK_SPARSE the scan scores
                              only those rows (one dot product each) */
} hr_topk_exclude;

/* A filter that keeps fewer than 1 / HR_TOPK_SPARSE of the rows is scored
 * row by row instead of streaming the whole matrix through sgemv. */
#define HR_TOPK_SPARSE 3

/* Whether ex leaves row out (the sorted rows, or the allow bitmap). */
bool hr_topk_excluded(const hr_topk_exclude *ex, uint32_t row);

/* Sorts an array of rows ascending (for hr_topk_exclude). */
void hr_topk_sort_rows(uint32_t *rows, size_t n);

/* Fills out[0..*n) with the min(k, eligible items) best items, best first
 * (ties: lower row first). q has the model's k floats (borrowed); out has room
 * for k entries. With min_count > 0, an item still below it scores as the
 * default row 0 would. HR_ENOMEM if scratch cannot be allocated. */
hr_status hr_topk_query(const hr_model *m, const float *q, uint32_t k,
                        const hr_topk_exclude *ex, hr_topk_item *out, size_t *n);

/* The same ranking scored with the plain per-row loop
 * (hr_sgd_block_scores_ref) instead of BLAS: the reference that tests and
 * benchmarks compare hr_topk_query with. Slow; not for serving. */
hr_status hr_topk_query_ref(const hr_model *m, const float *q, uint32_t k,
                            const hr_topk_exclude *ex, hr_topk_item *out, size_t *n);

/* One query of a batch. */
typedef struct {
    const float *q;             /* the model's k floats, borrowed */
    uint32_t k;                 /* results wanted */
    const hr_topk_exclude *ex;  /* rows to leave out, borrowed (may be NULL) */
    hr_topk_item *out;          /* room for k results, borrowed */
    size_t n;                   /* out: results written, best first */
} hr_topk_request;

/* Scores nq queries in one pass over the items: one cblas_sgemm per item
 * slice (one sgemv when nq is 1), then each query's heap. Each request's
 * results are those hr_topk_query gives (up to float rounding of the
 * summation order). HR_ENOMEM if scratch cannot be allocated. */
hr_status hr_topk_query_many(const hr_model *m, hr_topk_request *reqs, size_t nq);

/* Batches concurrent queries: a caller that finds no batch being scored
 * takes every query waiting (up to max_batch) and scores them together with
 * hr_topk_query_many; the others wait for their results. No query waits for
 * a batch to fill: under low load every batch is one query. Thread-safe. */
typedef struct hr_topk_batcher hr_topk_batcher;
hr_status hr_topk_batcher_create(const hr_model *m, unsigned max_batch, hr_topk_batcher **out);
void hr_topk_batcher_destroy(hr_topk_batcher *b); /* NULL is a no-op; no query may run */
/* Blocks until req is answered (req->n set). */
hr_status hr_topk_query_batched(hr_topk_batcher *b, hr_topk_request *req);
/* Batches scored and queries answered so far. */
void hr_topk_batcher_counts(hr_topk_batcher *b, uint64_t *batches, uint64_t *queries);

/* Partial heap of the best k (score, row) pairs, for other rankers
 * (popularity). Caller provides storage for k items. */
typedef struct {
    hr_topk_item *h; /* borrowed storage, k entries */
    uint32_t k;      /* capacity */
    uint32_t n;      /* entries in use */
} hr_topk_heap;

void hr_topk_heap_init(hr_topk_heap *hp, hr_topk_item *storage, uint32_t k);
/* Offers one candidate; O(1) when it does not beat the current k-th. */
void hr_topk_heap_offer(hr_topk_heap *hp, uint32_t row, float score);
/* Sorts the heap's content best first in place; returns the count. */
uint32_t hr_topk_heap_finish(hr_topk_heap *hp);

/* OpenBLAS picks its kernel when the library loads, from the CPU model. A
 * build older than the CPU (Debian 12's 0.3.21 on recent Xeons) falls back
 * to a generic SSE3 kernel ("Prescott") that runs sgemv at scalar speed.
 * Returns the OPENBLAS_CORETYPE value this CPU should use instead
 * ("SkylakeX" with AVX-512, "Haswell" with AVX2), or NULL when the loaded
 * kernel is already fine, the variable is set, or the CPU has neither. The
 * caller (main) sets it and re-executes itself before starting threads. */
const char *hr_topk_blas_coretype(void);

/* If hr_topk_blas_coretype() names a kernel, sets OPENBLAS_CORETYPE and
 * re-executes the program (argv as given to main) once; returns only when
 * there is nothing to do or the exec failed. Call first thing in main,
 * before any thread exists. */
void hr_topk_select_blas(char **argv);

#endif

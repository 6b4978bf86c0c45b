/*
 * recommend.h - the k best items for a user, with final scores. A user the
 * model scores with its own row: every item is ranked by topk (one sgemv
 * per item block, or a batch of queries, and a heap), leaving out named
 * items and, on request, the user's recent items (hr_events_recent); each
 * result's score is the model's prediction for the pair without context
 * features: link(w0 + b_u + <v_u, v_i> + b_i) (sigmoid for logistic,
 * identity for squared loss). A user the model does not know, or one still
 * below min_count, gets the recently popular items instead (hr_events_popular;
 * score: decayed count of positive events), flagged as a fallback.
 *
 * Threads: any; reads live rows without locks like any Hogwild reader.
 */
#ifndef HOGREC_RECOMMEND_H
#define HOGREC_RECOMMEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hogrec/common.h"
#include "hogrec/events.h"
#include "hogrec/model.h"
#include "hogrec/topk.h"

/* What is asked. */
typedef struct {
    uint32_t user_row;       /* the user's row; 0 when the model does not know the user */
    uint32_t k;              /* items wanted (>= 1) */
    bool exclude_seen;       /* leave out the user's recent items */
    const uint32_t *exclude; /* item rows to leave out, any order; borrowed */
    size_t nexclude;         /* rows in exclude */
    const uint64_t *allow;   /* catalog filter (catalog.h): bit r set = item row r may be
                                recommended; NULL: no filter. Borrowed. The popular
                                fallback keeps to it too. */
    uint32_t allow_rows;     /* rows the bitmap covers */
    uint32_t allow_count;    /* bits set */
} hr_recommend_query;

/* One recommended item. */
typedef struct {
    uint32_t row;            /* item row */
    double score;            /* final score (see the file comment) */
} hr_recommend_item;

/* Fills out[0..*n) (room for q->k) with the best items, best first, and
 * *fallback with whether they are the popular fallback. events and batcher
 * are borrowed; batcher may be NULL (the query is scored alone, with
 * hr_topk_query). HR_ENOMEM if scratch cannot be allocated (*n is 0). */
hr_status hr_recommend(const hr_model *m, hr_events *events, hr_topk_batcher *batcher,
                       const hr_recommend_query *q, hr_recommend_item *out, size_t *n,
                       bool *fallback);

/* The k items nearest to item_row (a row the model holds) by the cosine of
 * their factor vectors, best first, the item itself left out: out[0..*n)
 * (room for k), score in [-1, 1]. Rows whose vector is all zero are left
 * out too (no direction). One pass over the item rows; for the dashboard's
 * explorer, not a serving path. HR_ENOMEM when scratch cannot be allocated
 * (*n is 0). */
hr_status hr_recommend_similar(const hr_model *m, uint32_t item_row, uint32_t k,
                               hr_recommend_item *out, size_t *n);

#endif

/*
 * recommend.c - the k best items for a user, with final scores; see
 * recommend.h. Called from HTTP threads.
 *
 * The topk scan ranks by the partial score <q, v_i> + b_i plus the item's
 * catalog attributes' terms (topk.c: sum_a x_a (w_a + <q, v_a>)), q being
 * the user's row plus its attributes' factors (the user's bias, its
 * attributes' weights and w0 are the same for every item, so they do not
 * change the order); the final score adds them and applies the link, in
 * double, once per returned item.
 */
#include "hogrec/recommend.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "hogrec/sgd.h"

static int by_score(const void *a, const void *b)
{
    const hr_recommend_item *x = a, *y = b;
    if (x->score != y->score)
        return x->score > y->score ? -1 : 1;
    return (x->row > y->row) - (x->row < y->row);
}

/* A row's factors and bias (k+1 floats) copied into out, whatever the
 * storage (model.h, hr_model_row_f32). */
static void row_weights(const hr_model *m, hr_table_id t, uint32_t row, float *out)
{
    const float *w = hr_model_row_f32(m, t, row, out);
    if (w != out)
        memcpy(out, w, (hr_model_layout(m)->k + 1) * sizeof *out);
}

/* The user's row scored against every item; scores made final. A user
 * with catalog attributes (model.h) queries with its row's factors plus
 * theirs, and its results' final scores are the model's full prediction
 * (the items' attributes included), re-sorted. */
static hr_status score_user(const hr_model *m, hr_topk_batcher *batcher, uint32_t user,
                            uint32_t eff, uint32_t k, const hr_topk_exclude *ex,
                            hr_topk_item *items, hr_recommend_item *out, size_t *n)
{
    const hr_row_layout *L = hr_model_layout(m);
    float *u = malloc((L->k + 1) * sizeof *u), *g = malloc((L->k + 1) * sizeof *g);
    hr_status st = u && g ? HR_OK : HR_ENOMEM;
    size_t got = 0;
    hr_feat attrs[HR_MAX_ATTRS];
    uint32_t nattrs = hr_model_attrs(m, HR_TABLE_USER, user, attrs);
    if (st == HR_OK) {
        row_weights(m, HR_TABLE_USER, eff, u); /* factors, then the bias at [k] */
        row_weights(m, HR_TABLE_GLOBAL, 0, g);
        for (uint32_t a = 0; a < nattrs; a++) { /* q = v_u + sum x_f v_f */
            float vb[L->k + 1];
            const float *v = hr_model_row_f32(m, HR_TABLE_CTX, attrs[a].row, vb);
            for (uint32_t d = 0; d < L->k; d++)
                u[d] += attrs[a].x * v[d];
        }
        if (batcher) {
            hr_topk_request req = {u, k, ex, items, 0};
            st = hr_topk_query_batched(batcher, &req);
            got = req.n;
        } else {
            st = hr_topk_query(m, u, k, ex, items, &got);
        }
    }
    if (st == HR_OK && nattrs == 0 && hr_model_attrs_count(m, HR_TABLE_ITEM) == 0) {
        double base = (double)g[L->k] + u[L->k];
        for (size_t i = 0; i < got; i++)
            out[i] = (hr_recommend_item){items[i].row,
                                         hr_model_link(m, base + (double)items[i].score)};
        *n = got;
    } else if (st == HR_OK) { /* attributes: the full prediction of each pair */
        for (size_t i = 0; i < got; i++) {
            hr_event ev = {.user = user, .item = items[i].row};
            out[i] = (hr_recommend_item){items[i].row, hr_model_predict(m, &ev)};
        }
        qsort(out, got, sizeof *out, by_score);
        *n = got;
    }
    free(u);
    free(g);
    return st;
}

hr_status hr_recommend(const hr_model *m, hr_events *events, hr_topk_batcher *batcher,
                       const hr_recommend_query *q, hr_recommend_item *out, size_t *n,
                       bool *fallback)
{
    *n = 0;
    *fallback = false;
    const bool known = q->user_row != 0;
    /* Left out: the named items, then the user's recent ones; sorted. */
    size_t cap = q->nexclude + (known && q->exclude_seen ? hr_events_recent_max(events) : 0);
    uint32_t *rows = malloc((cap ? cap : 1) * sizeof *rows);
    hr_topk_item *items = malloc((size_t)(q->k ? q->k : 1) * sizeof *items);
    if (!rows || !items) {
        free(rows);
        free(items);
        return HR_ENOMEM;
    }
    size_t nex = q->nexclude;
    if (nex)
        memcpy(rows, q->exclude, nex * sizeof *rows);
    if (known && q->exclude_seen)
        nex += hr_events_recent(events, q->user_row, rows + nex, cap - nex);
    hr_topk_sort_rows(rows, nex);
    hr_topk_exclude ex = {rows, nex, q->allow, q->allow_rows, q->allow_count};
    uint32_t eff = known ? hr_model_effective_row(m, HR_TABLE_USER, q->user_row) : 0;
    hr_status st = HR_OK;
    /* A user still on the default row with catalog attributes is scored
     * through them, not given the popular fallback. */
    hr_feat attrs[HR_MAX_ATTRS];
    if (eff == 0 && (!known || hr_model_attrs(m, HR_TABLE_USER, q->user_row, attrs) == 0)) {
        size_t got = hr_events_popular(events, q->k, &ex, items);
        for (size_t i = 0; i < got; i++)
            out[i] = (hr_recommend_item){items[i].row, (double)items[i].score};
        *n = got;
        *fallback = true;
    } else {
        st = score_user(m, batcher, q->user_row, eff, q->k, &ex, items, out, n);
    }
    free(rows);
    free(items);
    return st;
}

static double dot(const float *a, const float *b, uint32_t k)
{
    double s = 0;
    for (uint32_t i = 0; i < k; i++)
        s += (double)a[i] * b[i];
    return s;
}

hr_status hr_recommend_similar(const hr_model *m, uint32_t item_row, uint32_t k,
                               hr_recommend_item *out, size_t *n)
{
    *n = 0;
    uint32_t nf = hr_model_layout(m)->k, rows = hr_model_rows(m, HR_TABLE_ITEM);
    hr_topk_item *storage = malloc((k ? k : 1) * sizeof *storage);
    if (!storage)
        return HR_ENOMEM;
    float qb[nf + 1], vb[nf + 1];
    const float *q = hr_model_row_f32(m, HR_TABLE_ITEM, item_row, qb);
    double qn = sqrt(dot(q, q, nf));
    hr_topk_heap hp;
    hr_topk_heap_init(&hp, storage, k);
    for (uint32_t row = 1; qn > 0 && row < rows; row++) {
        size_t len;
        if (row == item_row || !hr_model_key(m, HR_TABLE_ITEM, row, &len))
            continue;
        const float *v = hr_model_row_f32(m, HR_TABLE_ITEM, row, vb);
        double vn = sqrt(dot(v, v, nf));
        if (vn > 0)
            hr_topk_heap_offer(&hp, row, (float)(dot(q, v, nf) / (qn * vn)));
    }
    uint32_t got = hr_topk_heap_finish(&hp);
    for (uint32_t i = 0; i < got; i++)
        out[i] = (hr_recommend_item){storage[i].row, storage[i].score};
    *n = got;
    free(storage);
    return HR_OK;
}

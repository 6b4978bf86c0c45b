/* ctest-labels: concurrent */
/*
 * test_topk.c - top-K scoring (src/topk.c) and the serving history
 * (src/history.c) and de-duplication window (src/dedup.c).
 *
 * The BLAS path is checked against a plain reference: every item scored with
 * hr_sgd_block_scores_ref, sorted by (score desc, row asc). Random models
 * (seeded) span several storage blocks; ties, exclusions, k larger than the
 * catalog and row 0 are covered, and so are NaN and infinite scores (the
 * heap and the scan end, NaN is never returned, infinities rank first/last).
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hogrec/dedup.h"
#include "hogrec/history.h"
#include "hogrec/sgd.h"
#include "hogrec/topk.h"
#include "testutil.h"

#include <cblas.h>

static hr_model *make_model_as(uint32_t k, uint32_t items, uint64_t seed, hr_storage storage,
                               bool half);
static void random_query(float *q, uint32_t k, uint64_t seed);

static hr_model *make_model(uint32_t k, uint32_t items, uint64_t seed)
{
    hr_config c;
    hr_config_defaults(&c);
    c.k = k;
    c.max_users = 1024;
    c.max_items = 4096;
    c.chunk_rows = 64; /* several blocks */
    c.context_bits = 4;
    hr_schedule s;
    hr_schedule_defaults(&s);
    hr_model_config mc;
    assert_int_equal(hr_model_config_from(&c, &s, &mc, NULL), HR_OK);
    hr_model *m = NULL;
    assert_int_equal(hr_model_create(&mc, &m, NULL), HR_OK);
    const hr_row_layout *L = hr_model_layout(m);
    float *row = calloc(L->floats, sizeof *row);
    hr_rng rng;
    hr_rng_seed(&rng, seed);
    for (uint32_t i = 0; i < items; i++) {
        char id[32];
        int n = snprintf(id, sizeof id, "item%u", i);
        uint32_t r;
        assert_int_equal(hr_model_intern(m, HR_TABLE_ITEM, id, (size_t)n, &r, NULL), HR_OK);
        hr_sgd_row_read(L, hr_model_row(m, HR_TABLE_ITEM, r), row);
        for (uint32_t d = 0; d <= k; d++)
            row[d] = (float)hr_rng_normal(&rng);
        hr_sgd_row_write(L, hr_model_row(m, HR_TABLE_ITEM, r), row);
    }
    hr_config_free(&c);
    free(row);
    return m;
}

/* A model of `items` random item rows whose factors are bf16 values (so an
 * f32 and a bf16 model of one seed hold the same numbers), stored as
 * `storage`, with a half copy for top-K when `half`. */
static hr_model *make_model_as(uint32_t k, uint32_t items, uint64_t seed, hr_storage storage,
                               bool half)
{
    hr_config c;
    hr_config_defaults(&c);
    c.k = k;
    c.max_users = 1024;
    c.max_items = 4096;
    c.chunk_rows = 64;
    c.context_bits = 4;
    c.storage = storage;
    c.topk_precision = half ? HR_CONFIG_TOPK_F16 : HR_CONFIG_TOPK_F32;
    hr_schedule s;
    hr_schedule_defaults(&s);
    hr_model_config mc;
    assert_int_equal(hr_model_config_from(&c, &s, &mc, NULL), HR_OK);
    hr_model *m = NULL;
    assert_int_equal(hr_model_create(&mc, &m, NULL), HR_OK);
    assert_int_equal(hr_model_storage(m), storage);
    const hr_row_layout *L = hr_model_layout(m);
    hr_row_layout F = hr_row_layout_f32(L);
    float *row = calloc(F.floats, sizeof *row);
    hr_rng rng;
    hr_rng_seed(&rng, seed);
    for (uint32_t i = 0; i < items; i++) {
        char id[32];
        int n = snprintf(id, sizeof id, "item%u", i);
        uint32_t r;
        assert_int_equal(hr_model_intern(m, HR_TABLE_ITEM, id, (size_t)n, &r, NULL), HR_OK);
        hr_sgd_row_to_f32(L, hr_model_row(m, HR_TABLE_ITEM, r), row);
        for (uint32_t d = 0; d < k; d++)
            row[d] = hr_bf16_to_float(hr_bf16_round((float)hr_rng_normal(&rng)));
        row[F.bias] = (float)hr_rng_normal(&rng);
        hr_sgd_row_from_f32(L, hr_model_row(m, HR_TABLE_ITEM, r), row);
        hr_model_mark_dirty(m, HR_TABLE_ITEM, r);
    }
    hr_config_free(&c);
    free(row);
    return m;
}

/* Top-K over bf16 item rows ranks the rows' values: the same lists and
 * score bits as an f32 model holding the same numbers, through the sgemv
 * (one query and a batch), the sparse filter path and the half copy. */
static void test_bf16_items_ranked_as_their_values(void **state)
{
    (void)state;
    const uint32_t dims[] = {1, 13, 64};
    for (size_t t = 0; t < HR_ARRAY_LEN(dims); t++) {
        for (int half = 0; half < 2; half++) {
            const uint32_t k = dims[t];
            hr_model *mf = make_model_as(k, 500, 70 + t, HR_STORAGE_F32, half);
            hr_model *mb = make_model_as(k, 500, 70 + t, HR_STORAGE_BF16, half);
            uint64_t allow[8] = {0};
            allow[1] = 0x8421; /* rows 64, 69, 74, 79: a sparse filter */
            hr_topk_exclude sparse_ex = {NULL, 0, allow, 512, 4};
            for (uint64_t s = 0; s < 6; s++) {
                float q[3][64];
                for (int j = 0; j < 3; j++)
                    random_query(q[j], k, 300 + 10 * s + (uint64_t)j);
                hr_topk_item of[3][10], ob[3][10];
                hr_topk_request rf[3], rb[3];
                for (int j = 0; j < 3; j++) {
                    rf[j] = (hr_topk_request){q[j], 10, j == 2 ? &sparse_ex : NULL, of[j], 0};
                    rb[j] = rf[j];
                    rb[j].out = ob[j];
                }
                size_t nq = s % 2 ? 3 : 1;
                assert_int_equal(hr_topk_query_many(mf, rf, nq), HR_OK);
                assert_int_equal(hr_topk_query_many(mb, rb, nq), HR_OK);
                for (size_t j = 0; j < nq; j++) {
                    assert_int_equal(rf[j].n, rb[j].n);
                    assert_true(rb[j].n > 0);
                    assert_memory_equal(of[j], ob[j], rf[j].n * sizeof of[j][0]);
                }
            }
            hr_model_destroy(mf);
            hr_model_destroy(mb);
        }
    }
}

typedef struct {
    uint32_t row;
    float score;
} scored;

static int by_score(const void *a, const void *b)
{
    const scored *x = a, *y = b;
    if (x->score != y->score)
        return x->score > y->score ? -1 : 1;
    return x->row < y->row ? -1 : x->row > y->row;
}

/* All eligible items ranked by the plain reference. *n receives the count. */
static scored *reference(const hr_model *m, const float *q, const uint32_t *ex, size_t nex,
                         size_t *n)
{
    const hr_row_layout *L = hr_model_layout(m);
    uint32_t rows = hr_model_rows(m, HR_TABLE_ITEM);
    scored *all = calloc(rows, sizeof *all);
    *n = 0;
    for (uint32_t r = 1; r < rows; r++) {
        bool skip = false;
        for (size_t j = 0; j < nex; j++)
            skip |= ex[j] == r;
        if (skip || !hr_model_key(m, HR_TABLE_ITEM, r, NULL))
            continue;
        float s;
        hr_sgd_block_scores_ref(L, hr_model_row(m, HR_TABLE_ITEM, r), 1, L->stride, q, &s);
        all[(*n)++] = (scored){r, s};
    }
    qsort(all, *n, sizeof *all, by_score);
    return all;
}

static void random_query(float *q, uint32_t k, uint64_t seed)
{
    hr_rng rng;
    hr_rng_seed(&rng, seed);
    for (uint32_t d = 0; d < k; d++)
        q[d] = (float)hr_rng_normal(&rng);
}

/* BLAS ranking agrees with the reference: same scores (to rounding) and every
 * returned item is at least as good as the reference's k-th, minus rounding. */
static void check_against_reference(const hr_model *m, const float *q, uint32_t k,
                                    uint32_t *ex, size_t nex)
{
    size_t nref;
    scored *ref = reference(m, q, ex, nex, &nref);
    hr_topk_item *out = calloc(k, sizeof *out), *out_ref = calloc(k, sizeof *out_ref);
    size_t n, n2;
    hr_topk_sort_rows(ex, nex);
    hr_topk_exclude e = {ex, nex, NULL, 0, 0};
    assert_int_equal(hr_topk_query(m, q, k, &e, out, &n), HR_OK);
    assert_int_equal(hr_topk_query_ref(m, q, k, &e, out_ref, &n2), HR_OK);
    size_t want = nref < k ? nref : k;
    assert_int_equal(n, want);
    assert_int_equal(n2, want);
    for (size_t i = 0; i < want; i++) {
        /* hr_topk_query_ref matches the sorted reference exactly */
        assert_int_equal(out_ref[i].row, ref[i].row);
        /* the BLAS path: equal up to float rounding */
        assert_true(fabsf(out[i].score - ref[i].score) <= 1e-3f * (1 + fabsf(ref[i].score)));
        for (size_t j = 0; j < nex; j++)
            assert_int_not_equal(out[i].row, ex[j]);
        if (i > 0)
            assert_true(out[i - 1].score >= out[i].score);
    }
    if (want > 0 && nref > want) {
        float kth = ref[want - 1].score;
        for (size_t i = 0; i < want; i++)
            assert_true(out[i].score >= kth - 1e-3f * (1 + fabsf(kth)));
    }
    free(ref);
    free(out);
    free(out_ref);
}

static void test_blas_matches_reference(void **state)
{
    (void)state;
    uint32_t dims[] = {1, 8, 64};
    for (size_t t = 0; t < HR_ARRAY_LEN(dims); t++) {
        hr_model *m = make_model(dims[t], 300, 7 + t);
        float q[64];
        for (uint64_t s = 0; s < 5; s++) {
            random_query(q, dims[t], 100 + s);
            check_against_reference(m, q, 10, NULL, 0);
            check_against_reference(m, q, 1, NULL, 0);
        }
        hr_model_destroy(m);
    }
}

static void test_exclusions_and_k_larger_than_items(void **state)
{
    (void)state;
    hr_model *m = make_model(16, 40, 3);
    float q[16];
    random_query(q, 16, 9);
    size_t nref;
    scored *ref = reference(m, q, NULL, 0, &nref);
    assert_int_equal(nref, 40);
    uint32_t ex[3] = {ref[0].row, ref[2].row, ref[39].row};
    check_against_reference(m, q, 5, ex, 3);
    check_against_reference(m, q, 100, ex, 3); /* k > items: every eligible item */
    check_against_reference(m, q, 100, NULL, 0);
    hr_topk_item out[100];
    size_t n;
    assert_int_equal(hr_topk_query(m, q, 100, NULL, out, &n), HR_OK);
    assert_int_equal(n, 40);
    for (size_t i = 0; i < n; i++)
        assert_int_not_equal(out[i].row, 0); /* the default row is never an item */
    assert_int_equal(hr_topk_query(m, q, 0, NULL, out, &n), HR_OK);
    assert_int_equal(n, 0);
    free(ref);
    hr_model_destroy(m);
}

static void test_ties_lower_row_first(void **state)
{
    (void)state;
    hr_model *m = make_model(4, 20, 5);
    const hr_row_layout *L = hr_model_layout(m);
    float *row = calloc(L->floats, sizeof *row);
    /* items 3, 7, 11 identical and best of all */
    uint32_t tied[] = {11, 3, 7};
    for (size_t i = 0; i < 3; i++) {
        float *r = hr_model_row(m, HR_TABLE_ITEM, tied[i]);
        hr_sgd_row_read(L, r, row);
        for (uint32_t d = 0; d < 4; d++)
            row[d] = 10;
        row[L->bias] = 10;
        hr_sgd_row_write(L, r, row);
    }
    float q[4] = {1, 1, 1, 1};
    hr_topk_item out[3];
    size_t n;
    assert_int_equal(hr_topk_query(m, q, 3, NULL, out, &n), HR_OK);
    assert_int_equal(n, 3);
    assert_int_equal(out[0].row, 3);
    assert_int_equal(out[1].row, 7);
    assert_int_equal(out[2].row, 11);
    free(row);
    hr_model_destroy(m);
}

static void test_heap_directly(void **state)
{
    (void)state;
    hr_topk_item st[4];
    hr_topk_heap hp;
    hr_topk_heap_init(&hp, st, 4);
    float scores[] = {5, 1, 9, 3, 9, 7, NAN, 2};
    for (uint32_t i = 0; i < 8; i++)
        hr_topk_heap_offer(&hp, i, scores[i]);
    assert_int_equal(hr_topk_heap_finish(&hp), 4);
    assert_int_equal(st[0].row, 2);
    assert_int_equal(st[1].row, 4);
    assert_int_equal(st[2].row, 5);
    assert_int_equal(st[3].row, 0);
}

/* Best first, ties lower row first, NaN left out: the order the heap and
 * the scan promise, by a full sort. Returns the count kept. */
static size_t rank_finite_order(scored *v, size_t n)
{
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (!isnan(v[i].score))
            v[m++] = v[i];
    qsort(v, m, sizeof *v, by_score); /* a total order once NaN is gone */
    return m;
}

typedef struct {
    const float *scores;
    size_t n;
    uint32_t k;
    hr_topk_item *out;
    uint32_t got;
} heap_case;

static void run_heap(void *arg)
{
    heap_case *c = arg;
    hr_topk_heap hp;
    hr_topk_heap_init(&hp, c->out, c->k);
    for (size_t i = 0; i < c->n; i++)
        hr_topk_heap_offer(&hp, (uint32_t)i, c->scores[i]);
    c->got = hr_topk_heap_finish(&hp);
}

static void test_heap_nonfinite_scores(void **state)
{
    (void)state;
    enum { N = 2000 };
    static float scores[N];
    static scored ref[N];
    static hr_topk_item out[N];
    hr_rng rng;
    hr_rng_seed(&rng, 21);
    for (size_t i = 0; i < N; i++) {
        double u = hr_rng_uniform(&rng);
        scores[i] = u < 0.2 ? NAN : u < 0.3 ? INFINITY : u < 0.4 ? -INFINITY
                                                            : (float)hr_rng_below(&rng, 10);
        ref[i] = (scored){(uint32_t)i, scores[i]};
    }
    size_t nref = rank_finite_order(ref, N);
    const uint32_t ks[] = {1, 5, 50, 1500, N};
    for (size_t t = 0; t < HR_ARRAY_LEN(ks); t++) {
        heap_case c = {scores, N, ks[t], out, 0};
        assert_true(tu_terminates(run_heap, &c, 60));
        run_heap(&c);
        assert_int_equal(c.got, nref < ks[t] ? nref : ks[t]);
        for (uint32_t i = 0; i < c.got; i++) {
            assert_int_equal(out[i].row, ref[i].row);
            assert_false(isnan(out[i].score));
        }
    }
}

typedef struct {
    const hr_model *m;
    const float *q;
    uint32_t k;
    bool reference;
    hr_topk_item *out;
    size_t n;
} query_case;

static void run_query(void *arg)
{
    query_case *c = arg;
    hr_status st = c->reference ? hr_topk_query_ref(c->m, c->q, c->k, NULL, c->out, &c->n)
                                : hr_topk_query(c->m, c->q, c->k, NULL, c->out, &c->n);
    if (st != HR_OK)
        abort();
}

static void test_query_nonfinite_scores(void **state)
{
    (void)state;
    hr_model *m = make_model(8, 300, 17);
    const hr_row_layout *L = hr_model_layout(m);
    float *row = calloc(L->floats, sizeof *row);
    /* Rows 5..14 score NaN, 20..24 +inf, 30..34 -inf (through the bias), and
     * 40..44 have an infinite factor. */
    for (uint32_t r = 5; r < 45; r++) {
        float *p = hr_model_row(m, HR_TABLE_ITEM, r);
        hr_sgd_row_read(L, p, row);
        if (r < 15)
            row[L->bias] = NAN;
        else if (r >= 20 && r < 25)
            row[L->bias] = INFINITY;
        else if (r >= 30 && r < 35)
            row[L->bias] = -INFINITY;
        else if (r >= 40)
            row[0] = INFINITY;
        hr_sgd_row_write(L, p, row);
    }
    float q[8];
    random_query(q, 8, 5);
    size_t nall;
    scored *all = reference(m, q, NULL, 0, &nall);
    size_t nref = rank_finite_order(all, nall);
    assert_int_equal(nref, 290); /* the NaN rows are left out */
    hr_topk_item *out = calloc(300, sizeof *out);
    const uint32_t ks[] = {3, 12, 300};
    for (size_t t = 0; t < HR_ARRAY_LEN(ks); t++) {
        for (int refpath = 0; refpath <= 1; refpath++) {
            query_case c = {m, q, ks[t], refpath != 0, out, 0};
            assert_true(tu_terminates(run_query, &c, 60));
            run_query(&c);
            assert_int_equal(c.n, nref < ks[t] ? nref : ks[t]);
            for (size_t i = 0; i < c.n; i++) {
                assert_false(isnan(out[i].score));
                if (refpath || isinf(all[i].score))
                    assert_int_equal(out[i].row, all[i].row);
                if (isinf(all[i].score))
                    assert_true(out[i].score == all[i].score);
            }
        }
    }
    free(out);
    free(all);
    free(row);
    hr_model_destroy(m);
}

static void test_history_recent_and_popular(void **state)
{
    (void)state;
    hr_model *m = make_model(4, 10, 1);
    hr_history *h;
    assert_int_equal(hr_history_create(100, 100, 3, 0, &h), HR_OK); /* no decay: counts */
    for (uint32_t i = 1; i <= 5; i++) {
        assert_int_equal(hr_history_add(h, 7, i, 0), HR_OK);
        assert_int_equal(hr_history_pop_add(h, i, 0), HR_OK);
    }
    assert_int_equal(hr_history_add(h, 7, 5, 0), HR_OK); /* repeat of the latest: not stored twice */
    assert_int_equal(hr_history_pop_add(h, 5, 0), HR_OK);
    uint32_t out[10];
    size_t n = hr_history_recent(h, 7, out, 10, NULL);
    assert_int_equal(n, 3);
    assert_int_equal(out[0], 5);
    assert_int_equal(out[1], 4);
    assert_int_equal(out[2], 3);
    assert_int_equal(hr_history_recent(h, 8, out, 10, NULL), 0);
    for (int i = 0; i < 3; i++) {
        hr_history_add(h, 9, 2, 0);
        hr_history_pop_add(h, 2, 0);
    }
    hr_topk_item top[3];
    n = hr_history_popular(h, m, 3, 0, NULL, top);
    assert_int_equal(n, 3);
    assert_int_equal(top[0].row, 2);
    assert_int_equal((int)top[0].score, 4);
    assert_int_equal(top[1].row, 5);
    uint32_t ex[] = {2};
    hr_topk_exclude e = {ex, 1, NULL, 0, 0};
    n = hr_history_popular(h, m, 1, 0, &e, top);
    assert_int_equal(top[0].row, 5);
    assert_int_equal(hr_history_score(h, 2, 0), 4);
    hr_history_destroy(h);
    hr_history_destroy(NULL);
    hr_model_destroy(m);
}

static void test_dedup_window(void **state)
{
    (void)state;
    hr_dedup *d;
    assert_int_equal(hr_dedup_create(1024, 10, &d), HR_OK);
    assert_true(hr_dedup_claim(d, 42, 100));
    assert_false(hr_dedup_claim(d, 42, 105));
    assert_true(hr_dedup_claim(d, 42, 111)); /* window passed */
    hr_dedup_release(d, 42);
    assert_true(hr_dedup_claim(d, 42, 112)); /* released: claimable again */
    /* many ids: all recent ones still found (capacity not exceeded) */
    for (uint64_t i = 1; i <= 500; i++)
        assert_true(hr_dedup_claim(d, i * 7919 + 1, 200));
    for (uint64_t i = 1; i <= 500; i++)
        assert_false(hr_dedup_claim(d, i * 7919 + 1, 201));
    hr_dedup_destroy(d);
    assert_int_equal(hr_dedup_create(16, 0, &d), HR_OK); /* off */
    assert_true(hr_dedup_claim(d, 1, 0));
    assert_true(hr_dedup_claim(d, 1, 0));
    hr_dedup_destroy(d);
    hr_dedup_destroy(NULL);
}

/* Two rankings agree: the same rows, except that two items whose scores
 * differ by rounding only (sgemm and sgemv sum in another order) may swap. */
static void assert_same_ranking(const hr_topk_item *a, size_t na, const hr_topk_item *b, size_t nb)
{
    assert_int_equal(na, nb);
    for (size_t i = 0; i < na; i++) {
        assert_float_equal(a[i].score, b[i].score, 1e-4);
        if (a[i].row != b[i].row)
            assert_true(i + 1 < na && a[i].row == b[i + 1].row &&
                        fabsf(a[i].score - a[i + 1].score) < 1e-4f);
    }
}

static void test_many_matches_single(void **state)
{
    (void)state;
    const uint32_t k = 16;
    hr_model *m = make_model(k, 700, 21);
    enum { NQ = 7 };
    float q[NQ][16];
    hr_topk_item got[NQ][12], want[12];
    uint32_t ex_rows[] = {3, 9, 200};
    hr_topk_exclude ex = {ex_rows, 3, NULL, 0, 0};
    hr_topk_request reqs[NQ];
    for (int j = 0; j < NQ; j++) {
        random_query(q[j], k, 500 + (uint64_t)j);
        reqs[j] = (hr_topk_request){q[j], (uint32_t)(j == 3 ? 0 : 12), j % 2 ? &ex : NULL, got[j], 0};
    }
    assert_int_equal(hr_topk_query_many(m, reqs, NQ), HR_OK);
    for (int j = 0; j < NQ; j++) {
        size_t n;
        assert_int_equal(hr_topk_query(m, q[j], reqs[j].k, reqs[j].ex, want, &n), HR_OK);
        assert_same_ranking(got[j], reqs[j].n, want, n);
    }
    assert_int_equal(reqs[3].n, 0);
    hr_model_destroy(m);
}

typedef struct {
    hr_topk_batcher *b;
    const hr_model *m;
    uint64_t seed;
    int bad; /* queries whose result differed from hr_topk_query's */
} asker;

static void *ask(void *arg)
{
    asker *a = arg;
    for (int i = 0; i < 50; i++) {
        float q[16];
        random_query(q, 16, a->seed * 1000 + (uint64_t)i);
        hr_topk_item got[10], want[10];
        hr_topk_request req = {q, 10, NULL, got, 0};
        size_t n = 0;
        if (hr_topk_query_batched(a->b, &req) != HR_OK ||
            hr_topk_query(a->m, q, 10, NULL, want, &n) != HR_OK || n != req.n) {
            a->bad++;
            continue;
        }
        for (size_t j = 0; j < n; j++)
            if (fabsf(got[j].score - want[j].score) > 1e-4f)
                a->bad++;
    }
    return NULL;
}

static void test_batcher_under_concurrent_queries(void **state)
{
    (void)state;
    hr_model *m = make_model(16, 1500, 23);
    hr_topk_batcher *b;
    assert_int_equal(hr_topk_batcher_create(m, 8, &b), HR_OK);
    enum { T = 4 };
    pthread_t th[T];
    asker a[T];
    for (int t = 0; t < T; t++) {
        a[t] = (asker){b, m, 100 + (uint64_t)t, 0};
        pthread_create(&th[t], NULL, ask, &a[t]);
    }
    for (int t = 0; t < T; t++) {
        pthread_join(th[t], NULL);
        assert_int_equal(a[t].bad, 0);
    }
    uint64_t batches, queries;
    hr_topk_batcher_counts(b, &batches, &queries);
    assert_int_equal(queries, T * 50);
    assert_true(batches >= 1 && batches <= queries);
    print_message("%llu queries in %llu batches\n", (unsigned long long)queries,
                  (unsigned long long)batches);
    hr_topk_batcher_destroy(b);
    hr_model_destroy(m);
}

/* ---- item attributes ----
 *
 * Items carry catalog attributes (context rows and values, as the catalog
 * sets them); top-K must rank by the model's own prediction of each pair,
 * attributes included. The model uses squared loss, so a prediction is the
 * raw FM score and the check needs no link inverted. */

enum { ATTR_ITEMS = 1500, ATTR_USERS = 24, ATTR_K = 16 };

/* Random rows for every table; items with 1-3 attributes among 20 context
 * rows (every fifth none; one in seven a numeric value), every third user
 * with two of its own. With min_count, every fourth item is below it and
 * scores through row 0. */
static hr_model *make_attr_model(bool half, uint32_t min_count, uint64_t seed,
                                 hr_storage storage)
{
    hr_config c;
    hr_config_defaults(&c);
    c.k = ATTR_K;
    c.loss = HR_LOSS_SQUARED;
    c.max_users = 64;
    c.max_items = 4096;
    c.chunk_rows = 512; /* several blocks (and SUB slices within one) */
    c.context_bits = 8;
    c.min_count = min_count;
    c.topk_precision = half ? HR_CONFIG_TOPK_F16 : HR_CONFIG_TOPK_F32;
    c.storage = storage;
    hr_schedule s;
    hr_schedule_defaults(&s);
    hr_model_config mc;
    assert_int_equal(hr_model_config_from(&c, &s, &mc, NULL), HR_OK);
    hr_model *m = NULL;
    assert_int_equal(hr_model_create(&mc, &m, NULL), HR_OK);
    /* rows are written through their f32 view F (bf16: rounded on the way) */
    const hr_row_layout *L = hr_model_layout(m);
    const hr_row_layout F = hr_row_layout_f32(L);
    float *row = calloc(F.floats, sizeof *row);
    hr_rng rng;
    hr_rng_seed(&rng, seed);
    for (uint32_t r = 0; r < hr_model_rows(m, HR_TABLE_CTX); r++) {
        hr_sgd_row_to_f32(L, hr_model_row(m, HR_TABLE_CTX, r), row);
        for (uint32_t d = 0; d <= ATTR_K; d++)
            row[d] = (float)hr_rng_normal(&rng) * 0.5f;
        hr_sgd_row_from_f32(L, hr_model_row(m, HR_TABLE_CTX, r), row);
    }
    hr_sgd_row_to_f32(L, hr_model_row(m, HR_TABLE_GLOBAL, 0), row);
    row[F.bias] = 0.25f;
    hr_sgd_row_from_f32(L, hr_model_row(m, HR_TABLE_GLOBAL, 0), row);
    for (int t = HR_TABLE_USER; t <= HR_TABLE_ITEM; t++) {
        uint32_t n = t == HR_TABLE_USER ? ATTR_USERS : ATTR_ITEMS;
        for (uint32_t i = 0; i <= n; i++) {
            uint32_t r = 0;
            if (i > 0) { /* row 0: the default row, given values too */
                char id[32];
                int len = snprintf(id, sizeof id, "%c%u", t == HR_TABLE_USER ? 'u' : 'i', i);
                assert_int_equal(hr_model_intern(m, (hr_table_id)t, id, (size_t)len, &r, NULL),
                                 HR_OK);
            }
            hr_sgd_row_to_f32(L, hr_model_row(m, (hr_table_id)t, r), row);
            for (uint32_t d = 0; d <= ATTR_K; d++)
                row[d] = (float)hr_rng_normal(&rng) * 0.3f;
            uint32_t count = t == HR_TABLE_ITEM && i % 4 == 0 ? 0 : min_count;
            memcpy(row + F.count, &count, sizeof count);
            hr_sgd_row_from_f32(L, hr_model_row(m, (hr_table_id)t, r), row);
            if (r == 0)
                continue;
            hr_feat f[3];
            uint32_t na = 0;
            if (t == HR_TABLE_ITEM && i % 5 != 0) {
                na = 1 + (uint32_t)(hr_rng_next(&rng) % 3);
                for (uint32_t a = 0; a < na; a++)
                    f[a] = (hr_feat){(uint32_t)(hr_rng_next(&rng) % 20),
                                     i % 7 == 0 ? (float)hr_rng_normal(&rng) : 1.0f};
            } else if (t == HR_TABLE_USER && i % 3 == 0) {
                na = 2;
                f[0] = (hr_feat){100 + (uint32_t)(hr_rng_next(&rng) % 10), 1.0f};
                f[1] = (hr_feat){110 + (uint32_t)(hr_rng_next(&rng) % 10), 1.0f};
            }
            if (na)
                assert_int_equal(hr_model_set_attrs(m, (hr_table_id)t, r, f, na, true), HR_OK);
        }
    }
    hr_config_free(&c);
    free(row);
    return m;
}

/* The query of user u as recommend forms it (q = v_u + the user's
 * attributes' factors) and the part of its score no item changes
 * (w0 + b_u + the user's attributes' weights). */
static double user_query(const hr_model *m, uint32_t u, float *q)
{
    const hr_row_layout *L = hr_model_layout(m);
    float bu[L->k + 1], bg[L->k + 1], bv[L->k + 1]; /* factors and bias (index k) */
    const float *vu = hr_model_row_f32(m, HR_TABLE_USER,
                                       hr_model_effective_row(m, HR_TABLE_USER, u), bu);
    double base = (double)hr_model_row_f32(m, HR_TABLE_GLOBAL, 0, bg)[L->k] + vu[L->k];
    memcpy(q, vu, L->k * sizeof *q);
    hr_feat f[HR_MAX_ATTRS];
    uint32_t na = hr_model_attrs(m, HR_TABLE_USER, u, f);
    for (uint32_t a = 0; a < na; a++) {
        const float *v = hr_model_row_f32(m, HR_TABLE_CTX, f[a].row, bv);
        base += (double)f[a].x * v[L->k];
        for (uint32_t d = 0; d < L->k; d++)
            q[d] += f[a].x * v[d];
    }
    return base;
}

static bool attr_close(double x, double y)
{
    return fabs(x - y) <= 2e-4 * (1 + fabs(y));
}

/* got (n items for user u, k asked) against the model's prediction of
 * every eligible item: each score + base is the prediction, best first,
 * and no eligible item left out predicts better than the last returned. */
static void check_attr_result(const hr_model *m, uint32_t u, double base, uint32_t k,
                              const hr_topk_exclude *ex, const hr_topk_item *got, size_t n)
{
    uint32_t rows = hr_model_rows(m, HR_TABLE_ITEM);
    double *pred = calloc(rows, sizeof *pred);
    bool *in_got = calloc(rows, sizeof *in_got);
    size_t eligible = 0;
    for (uint32_t r = 1; r < rows; r++) {
        hr_event ev = {.user = u, .item = r};
        pred[r] = hr_model_predict(m, &ev);
        eligible += hr_model_key(m, HR_TABLE_ITEM, r, NULL) && !hr_topk_excluded(ex, r);
    }
    assert_int_equal(n, eligible < k ? eligible : k);
    for (size_t i = 0; i < n; i++) {
        assert_true(got[i].row > 0 && got[i].row < rows);
        assert_false(hr_topk_excluded(ex, got[i].row));
        in_got[got[i].row] = true;
        if (!attr_close(got[i].score + base, pred[got[i].row]))
            fail_msg("user %u item %u: top-K score %.7g, prediction %.7g", u, got[i].row,
                     got[i].score + base, pred[got[i].row]);
        if (i > 0)
            assert_true(got[i - 1].score >= got[i].score);
    }
    double last = n ? pred[got[n - 1].row] : INFINITY;
    for (uint32_t r = 1; r < rows; r++) {
        if (in_got[r] || !hr_model_key(m, HR_TABLE_ITEM, r, NULL) || hr_topk_excluded(ex, r))
            continue;
        if (pred[r] > last && !attr_close(pred[r], last))
            fail_msg("user %u: item %u (prediction %.7g) missing from the top %u (last %.7g)", u,
                     r, pred[r], k, last);
    }
    free(pred);
    free(in_got);
}

/* Every user, with no filter, a filter keeping ~40% (the scan) and one
 * keeping ~10% (row by row), k 1, 10 and 50; single, reference and
 * batched queries. */
static void check_attr_model(const hr_model *m, uint64_t seed)
{
    uint32_t rows = hr_model_rows(m, HR_TABLE_ITEM);
    uint64_t allow[2][4096 / 64] = {{0}};
    uint32_t counts[2] = {0, 0};
    hr_rng rng;
    hr_rng_seed(&rng, seed);
    for (uint32_t r = 1; r < rows; r++) {
        uint64_t x = hr_rng_next(&rng) % 100;
        for (int f = 0; f < 2; f++) {
            if (x < (f == 0 ? 40u : 10u)) {
                allow[f][r / 64] |= 1ull << (r % 64);
                counts[f]++;
            }
        }
    }
    uint32_t ex_rows[] = {2, 7, 600};
    const hr_topk_exclude filters[3] = {{ex_rows, 3, NULL, 0, 0},
                                        {ex_rows, 3, allow[0], rows, counts[0]},
                                        {NULL, 0, allow[1], rows, counts[1]}};
    const uint32_t ks[] = {1, 10, 50};
    hr_topk_item got[50], ref[50];
    float q[ATTR_USERS][ATTR_K];
    double base[ATTR_USERS];
    hr_topk_request reqs[ATTR_USERS];
    hr_topk_item batched[ATTR_USERS][50];
    for (int f = 0; f < 3; f++) {
        for (uint32_t u = 1; u <= ATTR_USERS; u++) {
            uint32_t k = ks[u % 3];
            base[u - 1] = user_query(m, u, q[u - 1]);
            size_t n, nr;
            assert_int_equal(hr_topk_query(m, q[u - 1], k, &filters[f], got, &n), HR_OK);
            check_attr_result(m, u, base[u - 1], k, &filters[f], got, n);
            assert_int_equal(hr_topk_query_ref(m, q[u - 1], k, &filters[f], ref, &nr), HR_OK);
            check_attr_result(m, u, base[u - 1], k, &filters[f], ref, nr);
            reqs[u - 1] = (hr_topk_request){q[u - 1], k, &filters[f], batched[u - 1], 0};
        }
        assert_int_equal(hr_topk_query_many(m, reqs, ATTR_USERS), HR_OK);
        for (uint32_t u = 1; u <= ATTR_USERS; u++)
            check_attr_result(m, u, base[u - 1], reqs[u - 1].k, &filters[f], batched[u - 1],
                              reqs[u - 1].n);
    }
}

static void test_attrs_rank_as_predicted(void **state)
{
    (void)state;
    for (int half = 0; half < 2; half++) {
        for (uint32_t min_count = 0; min_count <= 2; min_count += 2) {
            hr_model *m = make_attr_model(half, min_count, 77 + (uint64_t)half, HR_STORAGE_F32);
            check_attr_model(m, 5);
            hr_model_destroy(m);
        }
    }
    /* bf16 storage: item rows widened for the scan, attribute rows read
     * through their f32 view */
    for (int half = 0; half < 2; half++) {
        hr_model *m = make_attr_model(half, 2, 79 + (uint64_t)half, HR_STORAGE_BF16);
        assert_int_equal(hr_model_storage(m), HR_STORAGE_BF16);
        check_attr_model(m, 6);
        hr_model_destroy(m);
    }
}

/* One item whose own row ranks it last for a user but whose attribute
 * makes it the user's best item; then the attribute changes (the matrix
 * follows) and is removed (the item falls back). */
static void test_attr_makes_item_best(void **state)
{
    (void)state;
    for (int half = 0; half < 2; half++) {
        hr_model *m = make_attr_model(half, 0, 91, HR_STORAGE_F32);
        const hr_row_layout *L = hr_model_layout(m);
        float q[ATTR_K];
        const uint32_t u = 2; /* no attributes of its own */
        double base = user_query(m, u, q);
        /* the user's worst item by its own row */
        uint32_t worst = 0;
        float worst_s = INFINITY;
        for (uint32_t r = 1; r < hr_model_rows(m, HR_TABLE_ITEM); r++) {
            float s;
            hr_sgd_block_scores_ref(L, hr_model_row(m, HR_TABLE_ITEM, r), 1, L->stride, q, &s);
            if (s < worst_s) {
                worst_s = s;
                worst = r;
            }
        }
        /* an attribute (context row 200, no other item has it) worth more
         * than any item's score: w_a = 50 */
        float *row = calloc(L->floats, sizeof *row);
        hr_sgd_row_read(L, hr_model_row(m, HR_TABLE_CTX, 200), row);
        row[L->bias] = 50.0f;
        hr_sgd_row_write(L, hr_model_row(m, HR_TABLE_CTX, 200), row);
        hr_feat f = {200, 1.0f};
        assert_int_equal(hr_model_set_attrs(m, HR_TABLE_ITEM, worst, &f, 1, true), HR_OK);
        hr_topk_item got[10];
        size_t n;
        assert_int_equal(hr_topk_query(m, q, 10, NULL, got, &n), HR_OK);
        assert_int_equal(n, 10);
        assert_int_equal(got[0].row, worst);
        check_attr_result(m, u, base, 10, NULL, got, n);
        /* the attribute's value changes to -1: now the worst again */
        f.x = -1.0f;
        assert_int_equal(hr_model_set_attrs(m, HR_TABLE_ITEM, worst, &f, 1, true), HR_OK);
        assert_int_equal(hr_topk_query(m, q, 10, NULL, got, &n), HR_OK);
        for (size_t i = 0; i < n; i++)
            assert_int_not_equal(got[i].row, worst);
        check_attr_result(m, u, base, 10, NULL, got, n);
        /* removed, then set on another item in another block */
        assert_int_equal(hr_model_set_attrs(m, HR_TABLE_ITEM, worst, NULL, 0, false), HR_OK);
        f.x = 1.0f;
        assert_int_equal(hr_model_set_attrs(m, HR_TABLE_ITEM, 1400, &f, 1, true), HR_OK);
        assert_int_equal(hr_topk_query(m, q, 10, NULL, got, &n), HR_OK);
        assert_int_equal(got[0].row, 1400);
        check_attr_result(m, u, base, 10, NULL, got, n);
        free(row);
        hr_model_destroy(m);
    }
}

typedef struct {
    hr_model *m;
    uint64_t seed;
    int rounds;
    int bad; /* queries that failed or returned an unsorted list */
} attr_worker;

static void *attr_writer(void *arg)
{
    attr_worker *w = arg;
    hr_rng rng;
    hr_rng_seed(&rng, w->seed);
    for (int i = 0; i < w->rounds; i++) {
        uint32_t r = 1 + (uint32_t)(hr_rng_next(&rng) % ATTR_ITEMS);
        hr_feat f[2] = {{(uint32_t)(hr_rng_next(&rng) % 40), 1.0f},
                        {(uint32_t)(hr_rng_next(&rng) % 40), (float)hr_rng_normal(&rng)}};
        uint32_t na = (uint32_t)(hr_rng_next(&rng) % 3);
        if (hr_model_set_attrs(w->m, HR_TABLE_ITEM, r, f, na, na > 0) != HR_OK)
            w->bad++;
    }
    return NULL;
}

static void *attr_reader(void *arg)
{
    attr_worker *w = arg;
    float q[ATTR_K];
    hr_topk_item got[20];
    for (int i = 0; i < w->rounds; i++) {
        random_query(q, ATTR_K, w->seed + (uint64_t)i);
        size_t n;
        if (hr_topk_query(w->m, q, 20, NULL, got, &n) != HR_OK || n != 20)
            w->bad++;
        for (size_t j = 1; j < n; j++)
            w->bad += got[j - 1].score < got[j].score;
    }
    return NULL;
}

/* Attribute changes while queries scan (the matrix is rebuilt under its
 * write lock, scans hold the read side): every query answers, and once
 * the writer is done the ranking follows the last attributes. */
static void test_attrs_change_while_querying(void **state)
{
    (void)state;
    for (int half = 0; half < 2; half++) {
        hr_model *m = make_attr_model(half, 0, 101, HR_STORAGE_F32);
        attr_worker w[3] = {{m, 1, 3000, 0}, {m, 2, 150, 0}, {m, 3, 150, 0}};
        pthread_t th[3];
        assert_int_equal(pthread_create(&th[0], NULL, attr_writer, &w[0]), 0);
        for (int i = 1; i < 3; i++)
            assert_int_equal(pthread_create(&th[i], NULL, attr_reader, &w[i]), 0);
        for (int i = 0; i < 3; i++) {
            pthread_join(th[i], NULL);
            assert_int_equal(w[i].bad, 0);
        }
        for (uint32_t u = 1; u <= 4; u++) {
            float q[ATTR_K];
            double base = user_query(m, u, q);
            hr_topk_item got[10];
            size_t n;
            assert_int_equal(hr_topk_query(m, q, 10, NULL, got, &n), HR_OK);
            check_attr_result(m, u, base, 10, NULL, got, n);
        }
        hr_model_destroy(m);
    }
}

int main(int argc, char **argv)
{
    (void)argc;
    /* Check the BLAS kernel the server uses (serve selects it the same way). */
    hr_topk_select_blas(argv);
    print_message("OpenBLAS kernel: %s\n", openblas_get_corename());
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_blas_matches_reference),
        cmocka_unit_test(test_bf16_items_ranked_as_their_values),
        cmocka_unit_test(test_many_matches_single),
        cmocka_unit_test(test_batcher_under_concurrent_queries),
        cmocka_unit_test(test_exclusions_and_k_larger_than_items),
        cmocka_unit_test(test_ties_lower_row_first),
        cmocka_unit_test(test_heap_directly),
        cmocka_unit_test(test_heap_nonfinite_scores),
        cmocka_unit_test(test_query_nonfinite_scores),
        cmocka_unit_test(test_history_recent_and_popular),
        cmocka_unit_test(test_dedup_window),
        cmocka_unit_test(test_attrs_rank_as_predicted),
        cmocka_unit_test(test_attr_makes_item_best),
        cmocka_unit_test(test_attrs_change_while_querying),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * bench_topk.c - top-K time against the memory bandwidth measured in the
 * same run. Builds a model of N items (default 100000) at k (default 64)
 * with seeded random rows, then times
 *   read:  one pass over the factor and bias columns of every item row
 *          (the bytes sgemv must read), best of R passes -> GB/s;
 *   topk:  hr_topk_query (one sgemv per block + heap, top 10), median of Q
 *          random queries; also the plain reference loop;
 *   filter: the same queries with a catalog filter keeping a random 10% of
 *          the items (and 25%), each query building its allow bitmap from a
 *          category bitmap (copy, mask, popcount) as the catalog does;
 *          ratio to the unfiltered top-K of the same run.
 * Prints key=value lines for loadtest/run.
 *
 * usage: bench_topk [items] [k] [queries]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hogrec/sgd.h"
#include "hogrec/topk.h"

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    hr_topk_select_blas(argv); /* the kernel `hogrec serve` uses */
    uint32_t items = argc > 1 ? (uint32_t)atoi(argv[1]) : 100000;
    uint32_t k = argc > 2 ? (uint32_t)atoi(argv[2]) : 64;
    int queries = argc > 3 ? atoi(argv[3]) : 50;
    if (queries < 1 || queries > 100000 || k < 1 || k > 1024)
        return 2;
    hr_config c;
    hr_config_defaults(&c);
    c.k = k;
    c.max_items = items + 16;
    c.max_users = 1024;
    c.context_bits = 4;
    hr_schedule s;
    hr_schedule_defaults(&s);
    hr_model_config mc;
    hr_model *m;
    hr_error err;
    if (hr_model_config_from(&c, &s, &mc, &err) != HR_OK || hr_model_create(&mc, &m, &err) != HR_OK) {
        fprintf(stderr, "model: %s\n", err.message);
        return 1;
    }
    const hr_row_layout *L = hr_model_layout(m);
    float *row = calloc(L->floats, sizeof *row);
    hr_rng rng;
    hr_rng_seed(&rng, 12345);
    for (uint32_t i = 0; i < items; i++) {
        char id[32];
        int n = snprintf(id, sizeof id, "i%u", i);
        uint32_t r;
        if (hr_model_intern(m, HR_TABLE_ITEM, id, (size_t)n, &r, NULL) != HR_OK)
            return 1;
        hr_sgd_row_read(L, hr_model_row(m, HR_TABLE_ITEM, r), row);
        for (uint32_t d = 0; d <= k; d++)
            row[d] = (float)(hr_rng_normal(&rng) * 0.1);
        hr_sgd_row_write(L, hr_model_row(m, HR_TABLE_ITEM, r), row);
    }
    /* memory read: the first k+1 floats of every row, best of 10 */
    double best_read = 1e9;
    volatile float sink = 0; /* keeps the reads */
    for (int rep = 0; rep < 10; rep++) {
        uint64_t t0 = hr_now_ns();
        /* XOR of the words: independent, vectorizable, so memory-bound */
        uint32_t acc = 0;
        uint32_t nrows, lda;
        const float *blk;
        for (uint32_t b = 0; (blk = hr_model_item_block(m, b, &nrows, &lda)) != NULL; b++)
            for (uint32_t i = 0; i < nrows; i++) {
                const float *r = blk + (size_t)i * lda;
                /* one load per cache line: the memory traffic, not the
                 * load throughput of a scalar loop */
                for (uint32_t d = 0; d <= k; d += 16) {
                    uint32_t w;
                    memcpy(&w, &r[d], sizeof w);
                    acc ^= w;
                }
            }
        sink += (float)acc;
        double t = (double)(hr_now_ns() - t0) * 1e-9;
        if (t < best_read)
            best_read = t;
    }
    (void)sink; /* read only through the volatile stores above */
    double bytes = (double)hr_model_rows(m, HR_TABLE_ITEM) * (k + 1) * sizeof(float);
    double *tq = malloc((size_t)queries * sizeof *tq), *tr = malloc((size_t)queries * sizeof *tr);
    float *q = malloc(k * sizeof *q);
    hr_topk_item out[10];
    size_t n;
    for (int rep = 0; rep < queries; rep++) {
        for (uint32_t d = 0; d < k; d++)
            q[d] = (float)hr_rng_normal(&rng);
        uint64_t t0 = hr_now_ns();
        hr_topk_query(m, q, 10, NULL, out, &n);
        tq[rep] = (double)(hr_now_ns() - t0) * 1e-9;
        t0 = hr_now_ns();
        hr_topk_query_ref(m, q, 10, NULL, out, &n);
        tr[rep] = (double)(hr_now_ns() - t0) * 1e-9;
    }
    /* filtered: a category bitmap keeping `pct` percent of the rows */
    uint32_t rows = hr_model_rows(m, HR_TABLE_ITEM), words = (rows + 63) / 64;
    double filt_ms[2];
    const int pcts[2] = {10, 25};
    uint64_t *cat = calloc(words, sizeof *cat), *allow = malloc(words * sizeof *allow);
    double *tf = malloc((size_t)queries * sizeof *tf);
    for (int f = 0; f < 2; f++) {
        memset(cat, 0, words * sizeof *cat);
        for (uint32_t r = 1; r < rows; r++)
            if (hr_rng_below(&rng, 100) < (uint64_t)pcts[f])
                cat[r / 64] |= 1ull << (r % 64);
        for (int rep = 0; rep < queries; rep++) {
            for (uint32_t d = 0; d < k; d++)
                q[d] = (float)hr_rng_normal(&rng);
            uint64_t t0 = hr_now_ns();
            uint32_t count = 0;
            for (uint32_t w = 0; w < words; w++) {
                allow[w] = cat[w];
                count += (uint32_t)__builtin_popcountll(allow[w]);
            }
            hr_topk_exclude ex = {NULL, 0, allow, rows, count};
            hr_topk_query(m, q, 10, &ex, out, &n);
            tf[rep] = (double)(hr_now_ns() - t0) * 1e-9;
        }
        qsort(tf, (size_t)queries, sizeof *tf, cmp_d);
        filt_ms[f] = tf[queries / 2] * 1e3;
    }
    free(tf);
    free(cat);
    free(allow);
    qsort(tq, (size_t)queries, sizeof *tq, cmp_d);
    qsort(tr, (size_t)queries, sizeof *tr, cmp_d);
    printf("topk_filter10_ms=%.3f\ntopk_filter10_ratio=%.2f\ntopk_filter25_ms=%.3f\n"
           "topk_filter25_ratio=%.2f\n",
           filt_ms[0], filt_ms[0] / (tq[queries / 2] * 1e3), filt_ms[1],
           filt_ms[1] / (tq[queries / 2] * 1e3));
    printf("items=%u\nk=%u\nread_ms=%.3f\nread_gbps=%.1f\ntopk_ms=%.3f\ntopk_ref_ms=%.3f\n"
           "ratio=%.2f\n",
           items, k, best_read * 1e3, bytes / best_read * 1e-9, tq[queries / 2] * 1e3,
           tr[queries / 2] * 1e3, tq[queries / 2] / best_read);
    free(tq);
    free(tr);
    free(q);
    free(row);
    hr_model_destroy(m);
    hr_config_free(&c);
    return 0;
}

/*
 * bench_topk.c - top-K time against the memory bandwidth measured in the
 * same run. Builds a model of N items (default 100000) at k (default 64)
 * with seeded random rows, then times
 *   read:  one pass over the factor and bias columns of every item row
 *          (the bytes sgemv must read), best of R passes -> GB/s;
 *   topk:  hr_topk_query (one sgemv per block + heap, top 10), median of Q
 *          random queries; also the plain reference loop;
 *   half:  the same queries on a second model with the same rows and
 *          topk_precision f16 (scan of the half copy, candidates re-scored
 *          in fp32), alternating query by query with the fp32 model, and
 *          the same for batches of 8 queries (hr_topk_query_many);
 *          half_equal counts the queries whose half result equals the
 *          fp32 reference loop's exactly (checked on up to 20).
 *   filter: the same queries with a catalog filter keeping a random 10% of
 *          the items (and 25%), each query building its allow bitmap from a
 *          category bitmap (copy, mask, popcount) as the catalog does;
 *          ratio to the unfiltered top-K of the same run; the same on the
 *          half model, alternating (half_filter*_ms).
 *   bf16:  the same queries on a model with storage bf16 holding the same
 *          rows (factors rounded to bf16), whose scan widens each slice to
 *          f32 for the sgemv, alternating query by query with the fp32
 *          model, single and batches of 8: medians and the quartiles of
 *          the per-query ratio (bf16_*).
 *   attrs: two more models (fp32 and f16) with the same rows whose items
 *          carry 1-3 catalog attributes among 20 (as MovieLens genres),
 *          queried in turn with the attribute-free ones, query by query in
 *          a rotating order; attr_ratio = with / without attributes (fp32),
 *          half_attr_ratio the same for f16; median and p25-p75 of each;
 *          the first query's matrix build and the query after one item's
 *          attributes change (one segment rebuilt); attr_half_equal counts
 *          f16 results equal to the fp32 reference loop's (up to 20).
 * Prints the machine and key=value lines for loadtest/run.
 *
 * usage: bench_topk [items] [k] [queries] [top] [state]
 * (state: the rows' optimizer state, as the config's `state`; default auto)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench_machine.h"
#include "hogrec/sgd.h"
#include "hogrec/topk.h"

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The bf16 pass (see the header): a model of storage bf16 with m's rows. */
static int bench_bf16(hr_config *c, hr_model *m, uint32_t items, uint32_t k, int queries,
                      uint32_t top)
{
    hr_schedule s;
    hr_schedule_defaults(&s);
    if (c->state == HR_CONFIG_STATE_SGD) /* rows without state */
        s.optimizer = HR_OPT_SGD;
    hr_model_config mc;
    hr_model *mb;
    hr_error err;
    c->topk_precision = HR_CONFIG_TOPK_F32;
    c->storage = HR_STORAGE_BF16;
    if (hr_model_config_from(c, &s, &mc, &err) != HR_OK || hr_model_create(&mc, &mb, &err) != HR_OK) {
        fprintf(stderr, "model: %s\n", err.message);
        return 1;
    }
    const hr_row_layout *L = hr_model_layout(m), *Lb = hr_model_layout(mb);
    hr_row_layout F = hr_row_layout_f32(L);
    float *row = calloc(F.floats, sizeof *row);
    for (uint32_t i = 0; i < items; i++) {
        char id[32];
        int n = snprintf(id, sizeof id, "i%u", i);
        uint32_t r = hr_model_lookup(m, HR_TABLE_ITEM, id, (size_t)n), rb;
        if (r == HR_ID_NONE || hr_model_intern(mb, HR_TABLE_ITEM, id, (size_t)n, &rb, NULL) != HR_OK ||
            r != rb)
            return 1;
        hr_sgd_row_to_f32(L, hr_model_row(m, HR_TABLE_ITEM, r), row);
        hr_sgd_row_from_f32(Lb, hr_model_row(mb, HR_TABLE_ITEM, r), row);
    }
    enum { NB = 8 };
    double *t[2][2], *ratio[2]; /* [single, batch][fp32, bf16] */
    for (int b = 0; b < 2; b++) {
        ratio[b] = malloc((size_t)queries * sizeof(double));
        for (int h = 0; h < 2; h++)
            t[b][h] = malloc((size_t)queries * sizeof(double));
    }
    float *q = malloc((size_t)NB * k * sizeof *q);
    hr_topk_item *out = malloc((size_t)NB * top * sizeof *out);
    hr_rng rng;
    hr_rng_seed(&rng, 777);
    for (int rep = 0; rep < queries; rep++) {
        for (uint32_t d = 0; d < NB * k; d++)
            q[d] = (float)hr_rng_normal(&rng);
        for (int turn = 0; turn < 2; turn++) { /* each first every other query */
            int h = (turn + rep) % 2;
            size_t n;
            uint64_t t0 = hr_now_ns();
            hr_topk_query(h ? mb : m, q, top, NULL, out, &n);
            t[0][h][rep] = (double)(hr_now_ns() - t0) * 1e-9;
            hr_topk_request reqs[NB];
            for (int j = 0; j < NB; j++)
                reqs[j] = (hr_topk_request){q + (size_t)j * k, top, NULL, out + (size_t)j * top, 0};
            t0 = hr_now_ns();
            hr_topk_query_many(h ? mb : m, reqs, NB);
            t[1][h][rep] = (double)(hr_now_ns() - t0) * 1e-9;
        }
        for (int b = 0; b < 2; b++)
            ratio[b][rep] = t[b][1][rep] / t[b][0][rep];
    }
    const int mid = queries / 2, q1 = queries / 4, q3 = (3 * queries) / 4;
    for (int b = 0; b < 2; b++) {
        for (int h = 0; h < 2; h++)
            qsort(t[b][h], (size_t)queries, sizeof(double), cmp_d);
        qsort(ratio[b], (size_t)queries, sizeof(double), cmp_d);
    }
    printf("bf16_row_bytes=%zu\nf32_row_bytes=%zu\n", (size_t)Lb->floats * sizeof(float),
           (size_t)L->floats * sizeof(float));
    printf("bf16_topk_ms=%.3f\nbf16_f32_topk_ms=%.3f\nbf16_ratio=%.2f\nbf16_ratio_q1=%.2f\n"
           "bf16_ratio_q3=%.2f\n",
           t[0][1][mid] * 1e3, t[0][0][mid] * 1e3, ratio[0][mid], ratio[0][q1], ratio[0][q3]);
    printf("bf16_batch%d_ms=%.3f\nbf16_f32_batch%d_ms=%.3f\nbf16_batch_ratio=%.2f\n"
           "bf16_batch_ratio_q1=%.2f\nbf16_batch_ratio_q3=%.2f\n",
           NB, t[1][1][mid] * 1e3, NB, t[1][0][mid] * 1e3, ratio[1][mid], ratio[1][q1],
           ratio[1][q3]);
    for (int b = 0; b < 2; b++) {
        free(ratio[b]);
        for (int h = 0; h < 2; h++)
            free(t[b][h]);
    }
    free(q);
    free(out);
    free(row);
    hr_model_destroy(mb);
    return 0;
}

/* A model of config c whose item rows are src's (same ids, same rows). */
static hr_model *copy_items(const hr_config *c, const hr_schedule *s, const hr_model *src)
{
    hr_model_config mc;
    hr_model *m;
    if (hr_model_config_from(c, s, &mc, NULL) != HR_OK || hr_model_create(&mc, &m, NULL) != HR_OK)
        return NULL;
    const hr_row_layout *L = hr_model_layout(src);
    float *row = malloc(L->floats * sizeof *row);
    for (uint32_t r = 1; row && r < hr_model_rows(src, HR_TABLE_ITEM); r++) {
        size_t len;
        const char *id = hr_model_key(src, HR_TABLE_ITEM, r, &len);
        uint32_t got;
        if (!id || hr_model_intern(m, HR_TABLE_ITEM, id, len, &got, NULL) != HR_OK || got != r) {
            free(row);
            hr_model_destroy(m);
            return NULL;
        }
        hr_sgd_row_read(L, hr_model_row(src, HR_TABLE_ITEM, r), row);
        hr_sgd_row_write(L, hr_model_row(m, HR_TABLE_ITEM, r), row);
        hr_model_mark_dirty(m, HR_TABLE_ITEM, r);
    }
    free(row);
    return m;
}

/* Item attributes like MovieLens genres: context rows 1..20 with random
 * weights and factors, 1-3 of them (x = 1) per item. */
static void add_genres(hr_model *m, uint64_t seed)
{
    const hr_row_layout *L = hr_model_layout(m);
    float *row = malloc(L->floats * sizeof *row);
    hr_rng rng;
    hr_rng_seed(&rng, seed);
    for (uint32_t g = 1; g <= 20; g++) {
        hr_sgd_row_read(L, hr_model_row(m, HR_TABLE_CTX, g), row);
        for (uint32_t d = 0; d <= L->k; d++)
            row[d] = (float)(hr_rng_normal(&rng) * 0.1);
        hr_sgd_row_write(L, hr_model_row(m, HR_TABLE_CTX, g), row);
    }
    for (uint32_t r = 1; r < hr_model_rows(m, HR_TABLE_ITEM); r++) {
        hr_feat f[3];
        uint32_t n = 1 + (uint32_t)hr_rng_below(&rng, 3);
        for (uint32_t a = 0; a < n; a++)
            f[a] = (hr_feat){1 + (uint32_t)hr_rng_below(&rng, 20), 1.0f};
        hr_model_set_attrs(m, HR_TABLE_ITEM, r, f, n, true);
    }
    free(row);
}

int main(int argc, char **argv)
{
    hr_topk_select_blas(argv); /* the kernel `hogrec serve` uses */
    uint32_t items = argc > 1 ? (uint32_t)atoi(argv[1]) : 100000;
    uint32_t k = argc > 2 ? (uint32_t)atoi(argv[2]) : 64;
    int queries = argc > 3 ? atoi(argv[3]) : 50;
    uint32_t top = argc > 4 ? (uint32_t)atoi(argv[4]) : 10;
    if (queries < 1 || queries > 100000 || k < 1 || k > 1024 || top < 1 || top > 10000)
        return 2;
    char cpu[128];
    bench_cpu_model(cpu, sizeof cpu);
    for (char *p = cpu; *p; p++) /* a shell word for loadtest/run's eval */
        if (*p == '"' || *p == '\\' || *p == '$' || *p == '`')
            *p = '_';
    printf("machine=\"%ld cpus, %s\"\n", sysconf(_SC_NPROCESSORS_ONLN), cpu);
    hr_config c;
    hr_config_defaults(&c);
    c.k = k;
    if (argc > 5 && hr_config_set(&c, "state", argv[5], NULL) != HR_OK)
        return 2;
    c.max_items = items + 16;
    c.max_users = 1024;
    c.context_bits = 4;
    hr_schedule s;
    hr_schedule_defaults(&s);
    if (c.state == HR_CONFIG_STATE_SGD) /* rows without state */
        s.optimizer = HR_OPT_SGD;
    hr_model_config mc;
    hr_model *m, *mh;
    hr_error err;
    if (hr_model_config_from(&c, &s, &mc, &err) != HR_OK || hr_model_create(&mc, &m, &err) != HR_OK) {
        fprintf(stderr, "model: %s\n", err.message);
        return 1;
    }
    c.topk_precision = HR_CONFIG_TOPK_F16;
    if (hr_model_config_from(&c, &s, &mc, &err) != HR_OK || hr_model_create(&mc, &mh, &err) != HR_OK) {
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
        uint32_t rh;
        if (hr_model_intern(m, HR_TABLE_ITEM, id, (size_t)n, &r, NULL) != HR_OK ||
            hr_model_intern(mh, HR_TABLE_ITEM, id, (size_t)n, &rh, NULL) != HR_OK || r != rh)
            return 1;
        hr_sgd_row_read(L, hr_model_row(m, HR_TABLE_ITEM, r), row);
        for (uint32_t d = 0; d <= k; d++)
            row[d] = (float)(hr_rng_normal(&rng) * 0.1);
        hr_sgd_row_write(L, hr_model_row(m, HR_TABLE_ITEM, r), row);
        hr_sgd_row_write(L, hr_model_row(mh, HR_TABLE_ITEM, r), row);
        hr_model_mark_dirty(mh, HR_TABLE_ITEM, r); /* as a trainer does */
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
    /* the first half query converts every row: timed apart */
    uint64_t t_sync = hr_now_ns();
    uint64_t converted = hr_model_item_half_sync(mh);
    double sync_s = (double)(hr_now_ns() - t_sync) * 1e-9;
    double *tq = malloc((size_t)queries * sizeof *tq), *tr = malloc((size_t)queries * sizeof *tr);
    double *th = malloc((size_t)queries * sizeof *th);
    double *bq = malloc((size_t)queries * sizeof *bq), *bh = malloc((size_t)queries * sizeof *bh);
    enum { NB = 8 };
    float *q = malloc((size_t)NB * k * sizeof *q);
    hr_topk_item *out = malloc((size_t)NB * top * sizeof *out);
    hr_topk_item *want = malloc((size_t)top * sizeof *want);
    size_t n, nw;
    int checked = 0, equal = 0;
    for (int rep = 0; rep < queries; rep++) {
        for (uint32_t d = 0; d < NB * k; d++)
            q[d] = (float)hr_rng_normal(&rng);
        uint64_t t0;
        /* fp32 and half alternate, each first every other query */
        for (int turn = 0; turn < 2; turn++) {
            bool half = (turn + rep) % 2 == 1;
            t0 = hr_now_ns();
            hr_topk_query(half ? mh : m, q, top, NULL, out, &n);
            (half ? th : tq)[rep] = (double)(hr_now_ns() - t0) * 1e-9;
        }
        if (checked < 20) {
            hr_topk_query(mh, q, top, NULL, out, &n);
            hr_topk_query_ref(m, q, top, NULL, want, &nw);
            bool same = n == nw;
            for (size_t i = 0; same && i < n; i++)
                same = out[i].row == want[i].row && out[i].score == want[i].score;
            equal += same;
            checked++;
        }
        t0 = hr_now_ns();
        hr_topk_query_ref(m, q, top, NULL, out, &n);
        tr[rep] = (double)(hr_now_ns() - t0) * 1e-9;
        hr_topk_request reqs[NB];
        for (int turn = 0; turn < 2; turn++) {
            bool half = (turn + rep) % 2 == 1;
            for (int j = 0; j < NB; j++)
                reqs[j] = (hr_topk_request){q + (size_t)j * k, top, NULL, out + (size_t)j * top, 0};
            t0 = hr_now_ns();
            hr_topk_query_many(half ? mh : m, reqs, NB);
            (half ? bh : bq)[rep] = (double)(hr_now_ns() - t0) * 1e-9;
        }
    }
    /* filtered: a category bitmap keeping `pct` percent of the rows */
    uint32_t rows = hr_model_rows(m, HR_TABLE_ITEM), words = (rows + 63) / 64;
    double filt_ms[2][2]; /* [10%, 25%][fp32, half] */
    const int pcts[2] = {10, 25};
    uint64_t *cat = calloc(words, sizeof *cat), *allow = malloc(words * sizeof *allow);
    double *tf[2] = {malloc((size_t)queries * sizeof(double)),
                     malloc((size_t)queries * sizeof(double))};
    for (int f = 0; f < 2; f++) {
        memset(cat, 0, words * sizeof *cat);
        for (uint32_t r = 1; r < rows; r++)
            if (hr_rng_below(&rng, 100) < (uint64_t)pcts[f])
                cat[r / 64] |= 1ull << (r % 64);
        for (int rep = 0; rep < queries; rep++) {
            for (uint32_t d = 0; d < k; d++)
                q[d] = (float)hr_rng_normal(&rng);
            for (int turn = 0; turn < 2; turn++) {
                bool half = (turn + rep) % 2 == 1;
                uint64_t t0 = hr_now_ns();
                uint32_t count = 0;
                for (uint32_t w = 0; w < words; w++) {
                    allow[w] = cat[w];
                    count += (uint32_t)__builtin_popcountll(allow[w]);
                }
                hr_topk_exclude ex = {NULL, 0, allow, rows, count};
                hr_topk_query(half ? mh : m, q, top, &ex, out, &n);
                tf[half][rep] = (double)(hr_now_ns() - t0) * 1e-9;
            }
        }
        for (int h = 0; h < 2; h++) {
            qsort(tf[h], (size_t)queries, sizeof(double), cmp_d);
            filt_ms[f][h] = tf[h][queries / 2] * 1e3;
        }
    }
    free(tf[0]);
    free(tf[1]);
    free(cat);
    free(allow);
    /* attributes: fp32 and f16 models with the same rows and genres */
    c.context_bits = 8;
    c.topk_precision = HR_CONFIG_TOPK_F32;
    hr_model *ma = copy_items(&c, &s, m);
    c.topk_precision = HR_CONFIG_TOPK_F16;
    hr_model *mha = copy_items(&c, &s, m);
    if (!ma || !mha) {
        fprintf(stderr, "attribute models: out of memory\n");
        return 1;
    }
    add_genres(ma, 777);
    add_genres(mha, 777);
    hr_model_item_half_sync(mha);
    uint64_t t_build = hr_now_ns(); /* the first query builds the matrix */
    hr_topk_query(ma, q, top, NULL, out, &n);
    double build_ms = (double)(hr_now_ns() - t_build) * 1e-6;
    hr_model *am[4] = {m, ma, mh, mha};
    double *ta[4];
    for (int v = 0; v < 4; v++)
        ta[v] = malloc((size_t)queries * sizeof(double));
    int attr_checked = 0, attr_equal = 0;
    for (int rep = 0; rep < queries; rep++) {
        for (uint32_t d = 0; d < k; d++)
            q[d] = (float)hr_rng_normal(&rng);
        for (int turn = 0; turn < 4; turn++) {
            int v = (turn + rep) % 4;
            uint64_t t0 = hr_now_ns();
            hr_topk_query(am[v], q, top, NULL, out, &n);
            ta[v][rep] = (double)(hr_now_ns() - t0) * 1e-9;
        }
        if (attr_checked < 20) {
            hr_topk_query(mha, q, top, NULL, out, &n);
            hr_topk_query_ref(ma, q, top, NULL, want, &nw);
            bool same = n == nw;
            for (size_t i = 0; same && i < n; i++)
                same = out[i].row == want[i].row && out[i].score == want[i].score;
            attr_equal += same;
            attr_checked++;
        }
    }
    /* one item's attributes change: the next query rebuilds one segment */
    hr_feat one = {3, 1.0f};
    hr_model_set_attrs(ma, HR_TABLE_ITEM, rows / 2, &one, 1, true);
    uint64_t t_one = hr_now_ns();
    hr_topk_query(ma, q, top, NULL, out, &n);
    double one_ms = (double)(hr_now_ns() - t_one) * 1e-6;
    double med[4], p25[4], p75[4];
    for (int v = 0; v < 4; v++) {
        qsort(ta[v], (size_t)queries, sizeof(double), cmp_d);
        med[v] = ta[v][queries / 2] * 1e3;
        p25[v] = ta[v][queries / 4] * 1e3;
        p75[v] = ta[v][(3 * queries) / 4] * 1e3;
        free(ta[v]);
    }
    printf("attr_base_ms=%.3f\nattr_base_p25_p75=\"%.3f %.3f\"\nattr_topk_ms=%.3f\n"
           "attr_topk_p25_p75=\"%.3f %.3f\"\nattr_ratio=%.2f\n"
           "half_attr_base_ms=%.3f\nhalf_attr_base_p25_p75=\"%.3f %.3f\"\n"
           "half_attr_topk_ms=%.3f\nhalf_attr_topk_p25_p75=\"%.3f %.3f\"\nhalf_attr_ratio=%.2f\n"
           "attr_first_build_ms=%.2f\nattr_after_one_change_ms=%.3f\nattr_half_equal=%d/%d\n",
           med[0], p25[0], p75[0], med[1], p25[1], p75[1], med[1] / med[0], med[2], p25[2],
           p75[2], med[3], p25[3], p75[3], med[3] / med[2], build_ms, one_ms, attr_equal,
           attr_checked);
    hr_model_destroy(ma);
    hr_model_destroy(mha);
    qsort(tq, (size_t)queries, sizeof *tq, cmp_d);
    qsort(tr, (size_t)queries, sizeof *tr, cmp_d);
    qsort(th, (size_t)queries, sizeof *th, cmp_d);
    qsort(bq, (size_t)queries, sizeof *bq, cmp_d);
    qsort(bh, (size_t)queries, sizeof *bh, cmp_d);
    const int mid = queries / 2;
    printf("topk_filter10_ms=%.3f\ntopk_filter10_ratio=%.2f\ntopk_filter25_ms=%.3f\n"
           "topk_filter25_ratio=%.2f\nhalf_filter10_ms=%.3f\nhalf_filter25_ms=%.3f\n",
           filt_ms[0][0], filt_ms[0][0] / (tq[mid] * 1e3), filt_ms[1][0],
           filt_ms[1][0] / (tq[mid] * 1e3), filt_ms[0][1], filt_ms[1][1]);
    printf("items=%u\nk=%u\ntop=%u\nread_ms=%.3f\nread_gbps=%.1f\ntopk_ms=%.3f\ntopk_ref_ms=%.3f\n"
           "ratio=%.2f\n",
           items, k, top, best_read * 1e3, bytes / best_read * 1e-9, tq[mid] * 1e3, tr[mid] * 1e3,
           tq[mid] / best_read);
    printf("half_kernel=%s\nhalf_first_sync_ms=%.1f\nhalf_rows_converted=%llu\n"
           "half_topk_ms=%.3f\nhalf_ratio=%.2f\nhalf_read_ratio=%.2f\n"
           "batch%d_ms=%.3f\nhalf_batch%d_ms=%.3f\nhalf_batch_ratio=%.2f\nhalf_equal=%d/%d\n",
           hr_half_fast_available() ? "avx2-f16c" : "scalar", sync_s * 1e3,
           (unsigned long long)converted, th[mid] * 1e3, th[mid] / tq[mid], th[mid] / best_read,
           NB, bq[mid] * 1e3, NB, bh[mid] * 1e3, bh[mid] / bq[mid], equal, checked);
    if (bench_bf16(&c, m, items, k, queries, top) != 0)
        return 1;
    free(tq);
    free(tr);
    free(th);
    free(bq);
    free(bh);
    free(q);
    free(out);
    free(want);
    free(row);
    hr_model_destroy(m);
    hr_model_destroy(mh);
    hr_config_free(&c);
    return 0;
}

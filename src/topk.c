/*
 * topk.c - top-K items for a query vector; see topk.h.
 *
 * Design: item rows live in blocks of chunk_rows rows (row-major, leading
 * dimension = row stride) whose first k+1 columns are the factors and the
 * bias. Per block (in slices of 2048 rows): one sgemv y = B[:, 0..k] * [q; 1] into a scratch vector,
 * then every score is offered to a min-heap of size K (a score that does not
 * beat the heap's minimum costs one compare). Exclusions are checked only
 * for scores that would enter the heap (binary search in a sorted array).
 *
 * The scan is memory-bound: it reads (k+1) floats per item once; at k=64
 * and 100k items that is ~26 MB.
 */
#include "hogrec/topk.h"

#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hogrec/sgd.h"

static pthread_once_t blas_once = PTHREAD_ONCE_INIT;

static void blas_init(void)
{
    openblas_set_num_threads(1);
}

const char *hr_topk_blas_coretype(void)
{
    const char *set = getenv("OPENBLAS_CORETYPE");
    if (set && *set)
        return NULL;
    const char *core = openblas_get_corename();
    static const char *const generic[] = {"Prescott", "Core2", "Penryn", "Dunnington",
                                          "Nehalem", "Katmai", "Coppermine", "Northwood",
                                          "Banias", "Atom", "unknown"};
    bool fallback = false;
    for (size_t i = 0; core && i < sizeof generic / sizeof *generic; i++)
        fallback |= strcmp(core, generic[i]) == 0;
    if (!fallback)
        return NULL;
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        return "SkylakeX";
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return "Haswell";
    return NULL;
}

void hr_topk_select_blas(char **argv)
{
    const char *core = hr_topk_blas_coretype();
    if (!core || getenv("HOGREC_BLAS_REEXEC"))
        return;
    setenv("OPENBLAS_CORETYPE", core, 1);
    setenv("HOGREC_BLAS_REEXEC", "1", 1);
    execv("/proc/self/exe", argv);
    unsetenv("OPENBLAS_CORETYPE"); /* exec failed: the library is already loaded */
}

/* a is worse than b: lower score, or equal score and higher row. */
static inline bool worse(const hr_topk_item *a, const hr_topk_item *b)
{
    return a->score < b->score || (a->score == b->score && a->row > b->row);
}

void hr_topk_heap_init(hr_topk_heap *hp, hr_topk_item *storage, uint32_t k)
{
    hp->h = storage;
    hp->k = k;
    hp->n = 0;
}

static void sift_down(hr_topk_item *h, uint32_t n, uint32_t i)
{
    for (;;) {
        uint32_t l = 2 * i + 1, r = l + 1, w = i;
        if (l < n && worse(&h[l], &h[w]))
            w = l;
        if (r < n && worse(&h[r], &h[w]))
            w = r;
        if (w == i)
            return;
        hr_topk_item t = h[i];
        h[i] = h[w];
        h[w] = t;
        i = w;
    }
}

void hr_topk_heap_offer(hr_topk_heap *hp, uint32_t row, float score)
{
    hr_topk_item c = {row, score};
    if (hp->k == 0 || isnan(score))
        return;
    if (hp->n < hp->k) {
        uint32_t i = hp->n++;
        hp->h[i] = c;
        while (i > 0) { /* sift up: the root is the worst kept */
            uint32_t p = (i - 1) / 2;
            if (!worse(&hp->h[i], &hp->h[p]))
                break;
            hr_topk_item t = hp->h[i];
            hp->h[i] = hp->h[p];
            hp->h[p] = t;
            i = p;
        }
        return;
    }
    if (!worse(&hp->h[0], &c))
        return;
    hp->h[0] = c;
    sift_down(hp->h, hp->n, 0);
}

uint32_t hr_topk_heap_finish(hr_topk_heap *hp)
{
    /* Heap sort: repeatedly move the worst to the end -> best first. */
    uint32_t n = hp->n;
    for (uint32_t end = n; end > 1; end--) {
        hr_topk_item t = hp->h[0];
        hp->h[0] = hp->h[end - 1];
        hp->h[end - 1] = t;
        sift_down(hp->h, end - 1, 0);
    }
    return n;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

void hr_topk_sort_rows(uint32_t *rows, size_t n)
{
    if (n > 1)
        qsort(rows, n, sizeof *rows, cmp_u32);
}

static bool excluded(const hr_topk_exclude *ex, uint32_t row)
{
    if (!ex || ex->n == 0)
        return false;
    size_t lo = 0, hi = ex->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (ex->rows[mid] < row)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < ex->n && ex->rows[lo] == row;
}

hr_status hr_topk_query(const hr_model *m, const float *q, uint32_t k, const hr_topk_exclude *ex,
                        bool reference, hr_topk_item *out, size_t *n)
{
    *n = 0;
    if (k == 0)
        return HR_OK;
    pthread_once(&blas_once, blas_init);
    const hr_row_layout *L = hr_model_layout(m);
    const hr_model_config *mc = hr_model_get_config(m);
    const uint32_t chunk = mc->chunk_rows;
    /* Blocks are scored SUB rows at a time into a small scratch vector: it
     * stays in L1 and needs no large allocation per query. */
    enum { SUB = 2048 };
    float scores[SUB];
    float *qx = malloc(((size_t)L->k + 1) * sizeof *qx);
    if (!qx)
        return HR_ENOMEM;
    memcpy(qx, q, L->k * sizeof *qx);
    qx[L->k] = 1.0f; /* picks up the bias column */
    hr_topk_heap hp;
    hr_topk_heap_init(&hp, out, k);
    /* Score of the default row, for items below min_count. */
    float def_score = 0;
    if (mc->min_count > 0) {
        const float *r0 = hr_model_row(m, HR_TABLE_ITEM, 0);
        hr_sgd_block_scores_ref(L, r0, 1, L->stride, q, &def_score);
    }
    const bool min_count = mc->min_count > 0;
    float threshold = -INFINITY; /* the heap's worst score once it is full */
    uint32_t nrows, lda;
    const float *blk;
    for (uint32_t b = 0; (blk = hr_model_item_block(m, b, &nrows, &lda)) != NULL; b++) {
        for (uint32_t off = 0; off < nrows; off += SUB) {
            const uint32_t len = nrows - off < SUB ? nrows - off : SUB;
            const float *sub = blk + (size_t)off * lda;
            if (reference)
                hr_sgd_block_scores_ref(L, sub, len, lda, q, scores);
            else
                cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)len, (int)L->k + 1, 1.0f, sub,
                            (int)lda, qx, 1, 0.0f, scores, 1);
            const uint32_t base = b * chunk + off;
            for (uint32_t i = 0; i < len; i++) {
                float s = scores[i];
                /* Cheap test first: most scores cannot enter a full heap.
                 * (With min_count an item's score may be replaced below.) */
                if (s < threshold && !min_count)
                    continue;
                uint32_t row = base + i;
                if (row == 0 || !hr_model_key(m, HR_TABLE_ITEM, row, NULL) || excluded(ex, row))
                    continue;
                if (min_count && hr_model_effective_row(m, HR_TABLE_ITEM, row) == 0)
                    s = def_score;
                hr_topk_heap_offer(&hp, row, s);
                if (hp.n == hp.k)
                    threshold = hp.h[0].score;
            }
        }
    }
    free(qx);
    *n = hr_topk_heap_finish(&hp);
    return HR_OK;
}

/*
 * attrmat.c - the item x attribute sparse matrix of the top-K scan; see
 * attrmat.h.
 *
 * Design: a generation counter per segment of HR_ATTRMAT_SEG rows, bumped
 * by every attribute change of a row in it, and one for the whole matrix.
 * A reader that finds the whole-matrix generation moved since the last
 * rebuild takes the write lock and rebuilds the segments whose counter
 * differs from the value it was built at (loaded before their rows are
 * read, so a change racing the rebuild is seen then or by the next
 * reader). A catalog write therefore costs the next query one segment
 * (64 rows' attributes) per touched segment, not a pass over the items.
 *
 * The workload: a catalog of items with a few attributes each (MovieLens
 * genres: 1-3 of 19), changed now and then; queries read the whole matrix
 * once each, adding a few products per item to the sgemv scores.
 *
 * Called from: catalog writers (touch, through hr_model_set_attrs) and
 * query threads (acquire, the kernels, release; through topk.c).
 */
#include "hogrec/attrmat.h"

#include <assert.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* One segment's rows as CSR; allocated as one block with its entries. */
typedef struct {
    uint16_t ptr[HR_ATTRMAT_SEG + 1]; /* row r's entries: [ptr[r], ptr[r + 1]) */
    uint32_t *col;                    /* entry -> column */
    float *val;                       /* entry -> the attribute's value x */
    uint8_t *rowof;                   /* entry -> its row in the segment */
} seg;

struct hr_attrmat {
    uint32_t max_rows;          /* rows covered */
    uint32_t nsegs;             /* segments covering max_rows */
    pthread_rwlock_t lk;        /* readers: a scan; writer: a rebuild */
    seg **segs;                 /* segment -> CSR or NULL; under lk */
    _Atomic uint32_t *seg_gen;  /* segment -> touches so far */
    uint32_t *seg_built;        /* segment -> seg_gen it was built at; under lk */
    _Atomic uint64_t gen;       /* touches so far, all segments */
    uint64_t built;             /* gen at the last complete rebuild; under lk */
    atomic_uint end;            /* 1 + the highest segment ever touched */
    uint32_t *cols;             /* column -> context row; under lk */
    uint32_t ncols, cap_cols;   /* columns in use, room */
    uint32_t *hkey;             /* open addressing: context row + 1 (0: empty) */
    uint32_t *hval;             /* -> column */
    uint32_t hcap;              /* slots (a power of two), at most half full */
    uint64_t nnz;               /* entries over all segments; under lk */
};

hr_status hr_attrmat_create(uint32_t max_rows, hr_attrmat **out)
{
    *out = NULL;
    hr_attrmat *a = calloc(1, sizeof *a);
    if (!a)
        return HR_ENOMEM;
    a->max_rows = max_rows;
    a->nsegs = (uint32_t)(((uint64_t)max_rows + HR_ATTRMAT_SEG - 1) / HR_ATTRMAT_SEG);
    size_t ns = a->nsegs ? a->nsegs : 1;
    a->segs = calloc(ns, sizeof *a->segs);
    a->seg_gen = calloc(ns, sizeof *a->seg_gen);
    a->seg_built = calloc(ns, sizeof *a->seg_built);
    pthread_rwlockattr_t at;
    pthread_rwlockattr_init(&at);
    /* a rebuild must not wait behind a stream of scans */
    pthread_rwlockattr_setkind_np(&at, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    int rc = pthread_rwlock_init(&a->lk, &at);
    pthread_rwlockattr_destroy(&at);
    if (!a->segs || !a->seg_gen || !a->seg_built || rc != 0) {
        if (rc == 0)
            pthread_rwlock_destroy(&a->lk);
        free(a->segs);
        free((void *)a->seg_gen);
        free(a->seg_built);
        free(a);
        return HR_ENOMEM;
    }
    *out = a;
    return HR_OK;
}

void hr_attrmat_destroy(hr_attrmat *a)
{
    if (!a)
        return;
    for (uint32_t s = 0; s < a->nsegs; s++)
        free(a->segs[s]);
    free(a->segs);
    free((void *)a->seg_gen);
    free(a->seg_built);
    free(a->cols);
    free(a->hkey);
    free(a->hval);
    pthread_rwlock_destroy(&a->lk);
    free(a);
}

void hr_attrmat_touch(hr_attrmat *a, uint32_t row)
{
    if (row >= a->max_rows)
        return;
    uint32_t s = row / HR_ATTRMAT_SEG;
    atomic_fetch_add_explicit(&a->seg_gen[s], 1, memory_order_release);
    uint32_t e = atomic_load_explicit(&a->end, memory_order_relaxed);
    while (e < s + 1 &&
           !atomic_compare_exchange_weak_explicit(&a->end, &e, s + 1, memory_order_relaxed,
                                                  memory_order_relaxed))
        ;
    atomic_fetch_add_explicit(&a->gen, 1, memory_order_release);
}

static uint32_t hash_row(uint32_t r)
{
    return (r + 1) * 2654435761u;
}

/* Rehashes into n slots (a power of two). */
static bool map_resize(hr_attrmat *a, uint32_t n)
{
    uint32_t *k = calloc(n, sizeof *k), *v = calloc(n, sizeof *v);
    if (!k || !v) {
        free(k);
        free(v);
        return false;
    }
    for (uint32_t i = 0; i < a->hcap; i++) {
        if (!a->hkey[i])
            continue;
        uint32_t h = hash_row(a->hkey[i] - 1) & (n - 1);
        while (k[h])
            h = (h + 1) & (n - 1);
        k[h] = a->hkey[i];
        v[h] = a->hval[i];
    }
    free(a->hkey);
    free(a->hval);
    a->hkey = k;
    a->hval = v;
    a->hcap = n;
    return true;
}

/* The column of a context row, added if new. False on allocation failure. */
static bool column_of(hr_attrmat *a, uint32_t ctx_row, uint32_t *col)
{
    if (a->hcap == 0 || 2 * (a->ncols + 1) > a->hcap) {
        if (!map_resize(a, a->hcap ? 2 * a->hcap : 64))
            return false;
    }
    uint32_t h = hash_row(ctx_row) & (a->hcap - 1);
    while (a->hkey[h]) {
        if (a->hkey[h] == ctx_row + 1) {
            *col = a->hval[h];
            return true;
        }
        h = (h + 1) & (a->hcap - 1);
    }
    if (a->ncols == a->cap_cols) {
        uint32_t n = a->cap_cols ? 2 * a->cap_cols : 32;
        uint32_t *c = realloc(a->cols, n * sizeof *c);
        if (!c)
            return false;
        a->cols = c;
        a->cap_cols = n;
    }
    a->cols[a->ncols] = ctx_row;
    a->hkey[h] = ctx_row + 1;
    a->hval[h] = a->ncols;
    *col = a->ncols++;
    return true;
}

/* Rebuilds segment s from the rows' attributes. Under the write lock. */
static bool build_segment(hr_attrmat *a, uint32_t s, hr_attrmat_read_fn read, void *ctx)
{
    static_assert(HR_ATTRMAT_SEG * HR_MAX_ATTRS <= UINT16_MAX, "entries fit ptr");
    hr_feat f[HR_ATTRMAT_SEG][HR_MAX_ATTRS];
    uint32_t cnt[HR_ATTRMAT_SEG], n = 0;
    const uint32_t first = s * HR_ATTRMAT_SEG;
    for (uint32_t i = 0; i < HR_ATTRMAT_SEG; i++) {
        cnt[i] = first + i < a->max_rows ? read(ctx, first + i, f[i]) : 0;
        if (cnt[i] > HR_MAX_ATTRS)
            cnt[i] = HR_MAX_ATTRS;
        n += cnt[i];
    }
    seg *g = NULL;
    if (n) {
        g = malloc(sizeof *g + (size_t)n * (sizeof *g->col + sizeof *g->val + sizeof *g->rowof));
        if (!g)
            return false;
        g->col = (uint32_t *)(g + 1);
        g->val = (float *)(g->col + n);
        g->rowof = (uint8_t *)(g->val + n);
        uint32_t e = 0;
        for (uint32_t i = 0; i < HR_ATTRMAT_SEG; i++) {
            g->ptr[i] = (uint16_t)e;
            for (uint32_t j = 0; j < cnt[i]; j++, e++) {
                if (!column_of(a, f[i][j].row, &g->col[e])) {
                    free(g);
                    return false;
                }
                g->val[e] = f[i][j].x;
                g->rowof[e] = (uint8_t)i;
            }
        }
        g->ptr[HR_ATTRMAT_SEG] = (uint16_t)e;
    }
    if (a->segs[s])
        a->nnz -= a->segs[s]->ptr[HR_ATTRMAT_SEG];
    free(a->segs[s]);
    a->segs[s] = g;
    a->nnz += n;
    return true;
}

/* Brings the touched segments up to date. Under the write lock. */
static hr_status rebuild(hr_attrmat *a, hr_attrmat_read_fn read, void *ctx)
{
    const uint64_t g = atomic_load_explicit(&a->gen, memory_order_acquire);
    if (g == a->built)
        return HR_OK;
    uint32_t end = atomic_load_explicit(&a->end, memory_order_relaxed);
    if (end > a->nsegs)
        end = a->nsegs;
    for (uint32_t s = 0; s < end; s++) {
        uint32_t sg = atomic_load_explicit(&a->seg_gen[s], memory_order_acquire);
        if (sg == a->seg_built[s])
            continue;
        if (!build_segment(a, s, read, ctx))
            return HR_ENOMEM; /* a->built unchanged: retried by the next reader */
        a->seg_built[s] = sg;
    }
    a->built = g;
    return HR_OK;
}

hr_status hr_attrmat_acquire(hr_attrmat *a, hr_attrmat_read_fn read, void *ctx)
{
    pthread_rwlock_rdlock(&a->lk);
    if (atomic_load_explicit(&a->gen, memory_order_acquire) == a->built)
        return HR_OK;
    pthread_rwlock_unlock(&a->lk);
    pthread_rwlock_wrlock(&a->lk);
    hr_status st = rebuild(a, read, ctx);
    pthread_rwlock_unlock(&a->lk);
    if (st != HR_OK)
        return st;
    /* touched again meanwhile: those rows changed after this query began */
    pthread_rwlock_rdlock(&a->lk);
    return HR_OK;
}

void hr_attrmat_release(hr_attrmat *a)
{
    pthread_rwlock_unlock(&a->lk);
}

uint32_t hr_attrmat_cols(const hr_attrmat *a, const uint32_t **ctx_rows)
{
    *ctx_rows = a->cols;
    return a->ncols;
}

uint64_t hr_attrmat_nnz(const hr_attrmat *a)
{
    return a->nnz;
}

/* The term of entries [e0, e1): summed in double (exact products), one rounding. */
static inline float term(const seg *g, uint32_t e0, uint32_t e1, const float *t)
{
    double acc = 0;
    for (uint32_t e = e0; e < e1; e++)
        acc += (double)g->val[e] * (double)t[g->col[e]];
    return (float)acc;
}

/* A segment's terms for one t: acc[i] = (A t)_row as term() sums it (in
 * double, entries in order, from 0), walking the entries without a branch
 * per row. */
static inline void segment_terms(const seg *g, const float *t, double *acc)
{
    for (uint32_t i = 0; i < HR_ATTRMAT_SEG; i++)
        acc[i] = 0;
    const uint32_t n = g->ptr[HR_ATTRMAT_SEG];
    for (uint32_t e = 0; e < n; e++)
        acc[g->rowof[e]] += (double)g->val[e] * (double)t[g->col[e]];
}

void hr_attrmat_add(const hr_attrmat *a, uint32_t base, uint32_t len, const float *t,
                    size_t ldt, size_t nq, float *y, size_t ldy)
{
    uint64_t end = (uint64_t)base + len;
    if (end > a->max_rows)
        end = a->max_rows;
    double acc[HR_ATTRMAT_SEG];
    for (uint32_t s = base / HR_ATTRMAT_SEG; (uint64_t)s * HR_ATTRMAT_SEG < end; s++) {
        const seg *g = a->segs[s];
        if (!g)
            continue;
        const uint32_t first = s * HR_ATTRMAT_SEG;
        uint32_t i0 = base > first ? base - first : 0;
        uint32_t i1 = end - first < HR_ATTRMAT_SEG ? (uint32_t)(end - first) : HR_ATTRMAT_SEG;
        float *ys = y + (size_t)(first + i0 - base) * ldy;
        for (size_t j = 0; j < nq; j++) {
            segment_terms(g, t + j * ldt, acc);
            for (uint32_t i = i0; i < i1; i++) /* a row without entries adds +0 */
                ys[(size_t)(i - i0) * ldy + j] += (float)acc[i];
        }
    }
}

float hr_attrmat_row(const hr_attrmat *a, uint32_t row, const float *t)
{
    if (row >= a->max_rows)
        return 0;
    const seg *g = a->segs[row / HR_ATTRMAT_SEG];
    if (!g)
        return 0;
    const uint32_t i = row % HR_ATTRMAT_SEG;
    return term(g, g->ptr[i], g->ptr[i + 1], t);
}

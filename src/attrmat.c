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

/* One segment's rows, sparse in the ELLPACK layout: `width` slots per row
 * (the most entries a row of the segment has), slot-major, so a kernel
 * walks 64 independent rows per slot without a branch; a row's unused
 * slots hold the "none" column (t = 0) and value 0. Allocated as one block
 * with its slots. */
typedef struct {
    uint8_t cnt[HR_ATTRMAT_SEG];      /* row -> entries (its first cnt slots) */
    uint32_t width;                   /* slots per row */
    uint32_t nnz;                     /* entries, all rows */
    uint32_t *col;                    /* slot w of row i: col[w * HR_ATTRMAT_SEG + i] */
    float *val;                       /* its value x, same index */
} seg;

struct hr_attrmat {
    uint32_t max_rows;          /* rows covered */
    uint32_t nsegs;             /* segments covering max_rows */
    pthread_rwlock_t lk;        /* readers: a scan; writer: a rebuild */
    seg **segs;                 /* segment -> its rows or NULL; under lk */
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

/* Column 0: "none", the padding's (not in the map: no context row). */
static bool add_none_column(hr_attrmat *a)
{
    uint32_t *c = realloc(a->cols, 32 * sizeof *c);
    if (!c)
        return false;
    a->cols = c;
    a->cap_cols = 32;
    a->cols[a->ncols++] = HR_ATTRMAT_NONE;
    return true;
}

/* Rebuilds segment s from the rows' attributes. Under the write lock. */
static bool build_segment(hr_attrmat *a, uint32_t s, hr_attrmat_read_fn read, void *ctx)
{
    static_assert(HR_MAX_ATTRS <= UINT8_MAX, "a row's count fits cnt");
    hr_feat f[HR_ATTRMAT_SEG][HR_MAX_ATTRS];
    uint32_t cnt[HR_ATTRMAT_SEG], n = 0, width = 0;
    const uint32_t first = s * HR_ATTRMAT_SEG;
    for (uint32_t i = 0; i < HR_ATTRMAT_SEG; i++) {
        cnt[i] = first + i < a->max_rows ? read(ctx, first + i, f[i]) : 0;
        if (cnt[i] > HR_MAX_ATTRS)
            cnt[i] = HR_MAX_ATTRS;
        n += cnt[i];
        width = cnt[i] > width ? cnt[i] : width;
    }
    seg *g = NULL;
    if (n) {
        const size_t slots = (size_t)width * HR_ATTRMAT_SEG;
        if (a->ncols == 0 && !add_none_column(a))
            return false;
        g = malloc(sizeof *g + slots * (sizeof *g->col + sizeof *g->val));
        if (!g)
            return false;
        g->col = (uint32_t *)(g + 1);
        g->val = (float *)(g->col + slots);
        g->width = width;
        g->nnz = n;
        for (uint32_t i = 0; i < HR_ATTRMAT_SEG; i++) {
            g->cnt[i] = (uint8_t)cnt[i];
            for (uint32_t w = 0; w < width; w++) {
                const size_t at = (size_t)w * HR_ATTRMAT_SEG + i;
                g->col[at] = 0;
                g->val[at] = 0.0f;
                if (w < cnt[i] && !column_of(a, f[i][w].row, &g->col[at])) {
                    free(g);
                    return false;
                }
                if (w < cnt[i])
                    g->val[at] = f[i][w].x;
            }
        }
    }
    if (a->segs[s])
        a->nnz -= a->segs[s]->nnz;
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

/* Row i's term: its entries summed in order in double (exact products),
 * from +0, one rounding. (The sum is never -0, so the padding's +-0
 * products added by segment_terms leave it unchanged.) */
static inline float term(const seg *g, uint32_t i, const float *t)
{
    double acc = 0;
    for (uint32_t w = 0; w < g->cnt[i]; w++) {
        const size_t at = (size_t)w * HR_ATTRMAT_SEG + i;
        acc += (double)g->val[at] * (double)t[g->col[at]];
    }
    return (float)acc;
}

/* A segment's terms for one t: acc[i] as term() sums row i, slot by slot
 * over the 64 rows (independent sums, no branch). */
static inline void segment_terms(const seg *g, const float *t, double *acc)
{
    for (uint32_t i = 0; i < HR_ATTRMAT_SEG; i++)
        acc[i] = 0;
    for (uint32_t w = 0; w < g->width; w++) {
        const uint32_t *col = g->col + (size_t)w * HR_ATTRMAT_SEG;
        const float *val = g->val + (size_t)w * HR_ATTRMAT_SEG;
        for (uint32_t i = 0; i < HR_ATTRMAT_SEG; i++)
            acc[i] += (double)val[i] * (double)t[col[i]];
    }
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
    return term(g, i, t);
}

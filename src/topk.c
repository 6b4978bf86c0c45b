/*
 * topk.c - top-K items for a query vector; see topk.h.
 *
 * Design: item rows live in blocks of chunk_rows rows (row-major, leading
 * dimension = row stride) whose first k+1 columns are the factors and the
 * bias. Per block (in slices of 2048 rows): one sgemv y = B[:, 0..k] * [q; 1] into a scratch vector,
 * then every score is offered to a min-heap of size K (a score that does not
 * beat the heap's minimum costs one compare). Exclusions are checked only
 * for scores that would enter the heap (binary search in a sorted array,
 * one bit of a catalog filter's bitmap). A filter that keeps few rows
 * (fewer than 1 / HR_TOPK_SPARSE of them) is scored row by row instead: one
 * dot product per allowed row, found by walking the bitmap's set bits, so
 * its cost follows the rows it keeps, not the matrix.
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

#include "hogrec/attrmat.h"
#include "hogrec/half.h"
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

bool hr_topk_excluded(const hr_topk_exclude *ex, uint32_t row)
{
    if (!ex)
        return false;
    if (ex->allow && (row >= ex->allow_rows || !((ex->allow[row / 64] >> (row % 64)) & 1)))
        return true;
    if (ex->n == 0)
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

/* Per-request state of a scan. */
typedef struct {
    hr_topk_heap hp;
    float threshold; /* the heap's worst score once it is full */
    float def_score; /* score of the default row (items below min_count) */
} scan_state;

/* ---- item attributes ----
 *
 * An item with catalog attributes a (context rows, values x_a) scores
 *   b_i + <q, v_i> + sum_a x_a (w_a + <q, v_a>)
 * for the query q = v_u + the user's attributes' factors (recommend.c):
 * the FM score's terms that depend on the item (model.h, hr_sgd_score: an
 * id and its attributes form one side, so only pairs across the user's and
 * the item's sides count). Per query, t_a = w_a + <q, v_a> for each
 * attribute column of the item x attribute matrix (attrmat.h), then A t is
 * added to each block's sgemv scores before the heap. The reference path
 * reads each item's attributes from the model instead of the matrix, with
 * the same arithmetic (t_a as attr_t, the sum in double), so both give the
 * same bits.
 */

/* What the scan adds for item attributes. */
typedef struct {
    const hr_attrmat *am; /* held (hr_model_item_attrs_acquire); NULL: none */
    float *t;             /* query j's t: t + j * ldt (owned) */
    size_t ldt;           /* columns */
    bool direct;          /* reference path: attributes read row by row */
} attr_ctx;

/* t_a = w_a + <q, v_a>, in double with one rounding. */
static float attr_t(const hr_model *m, uint32_t ctx_row, const float *q)
{
    const hr_row_layout *L = hr_model_layout(m);
    float t;
    hr_sgd_block_scores_ref(L, hr_model_row(m, HR_TABLE_CTX, ctx_row), 1, L->stride, q, &t);
    return t;
}

/* Sets up ac for the queries: holds the matrix and computes each query's t
 * (reference: only notes whether any item has attributes). */
static hr_status attr_begin(const hr_model *m, const hr_topk_request *reqs, size_t nq,
                            bool reference, attr_ctx *ac)
{
    *ac = (attr_ctx){0};
    if (reference) {
        ac->direct = hr_model_attrs_count(m, HR_TABLE_ITEM) > 0;
        return HR_OK;
    }
    hr_status st = hr_model_item_attrs_acquire(m, &ac->am);
    if (st != HR_OK || !ac->am)
        return st;
    const uint32_t *cols;
    uint32_t nc = hr_attrmat_cols(ac->am, &cols);
    ac->ldt = nc;
    size_t nt = nq * nc;
    if (!(ac->t = malloc((nt ? nt : 1) * sizeof *ac->t))) {
        hr_model_item_attrs_release(m, ac->am);
        ac->am = NULL;
        return HR_ENOMEM;
    }
    for (size_t j = 0; j < nq; j++)
        for (uint32_t c = 0; c < nc; c++)
            ac->t[j * nc + c] = cols[c] == HR_ATTRMAT_NONE ? 0.0f : attr_t(m, cols[c], reqs[j].q);
    return HR_OK;
}

static void attr_end(const hr_model *m, attr_ctx *ac)
{
    hr_model_item_attrs_release(m, ac->am);
    free(ac->t);
    *ac = (attr_ctx){0};
}

/* Item row's attribute term for query j (q): what attr_block adds. */
static float attr_row(const hr_model *m, const attr_ctx *ac, size_t j, const float *q,
                      uint32_t row)
{
    if (ac->am)
        return hr_attrmat_row(ac->am, row, ac->t + j * ac->ldt);
    if (!ac->direct)
        return 0;
    hr_feat f[HR_MAX_ATTRS];
    uint32_t n = hr_model_attrs(m, HR_TABLE_ITEM, row, f);
    double acc = 0;
    for (uint32_t a = 0; a < n; a++)
        acc += (double)f[a].x * (double)attr_t(m, f[a].row, q);
    return (float)acc;
}

/* extra[i * ld + j] = attribute term of row base + i for query j < nq. */
static void attr_block(const hr_model *m, const attr_ctx *ac, const hr_topk_request *reqs,
                       size_t nq, uint32_t base, uint32_t len, float *extra, size_t ld)
{
    memset(extra, 0, (size_t)len * ld * sizeof *extra);
    if (ac->am) {
        hr_attrmat_add(ac->am, base, len, ac->t, ac->ldt, nq, extra, ld);
        return;
    }
    for (uint32_t i = 0; ac->direct && i < len; i++)
        for (size_t j = 0; j < nq; j++)
            extra[i * ld + j] = attr_row(m, ac, j, reqs[j].q, base + i);
}

static bool sparse(const hr_topk_request *r)
{
    const hr_topk_exclude *ex = r->ex;
    return ex && ex->allow && (uint64_t)ex->allow_count * HR_TOPK_SPARSE < ex->allow_rows;
}

/* A query whose filter keeps few rows: each allowed row scored alone. */
static void scan_sparse(const hr_model *m, hr_topk_request *r, const float *qx, scan_state *st,
                        const attr_ctx *ac, size_t j)
{
    const hr_row_layout *L = hr_model_layout(m);
    const bool min_count = hr_model_get_config(m)->min_count > 0;
    const uint32_t rows = hr_model_rows(m, HR_TABLE_ITEM);
    const hr_topk_exclude *ex = r->ex;
    const uint32_t end = ex->allow_rows < rows ? ex->allow_rows : rows;
    const bool f32 = L->storage == HR_STORAGE_F32, attrs = ac->am || ac->direct;
    float wide[L->k + 1]; /* a bf16 row's factors and bias, widened */
    for (uint32_t w = 0; w * 64 < end; w++) {
        for (uint64_t bits = ex->allow[w]; bits; bits &= bits - 1) {
            uint32_t row = w * 64 + (uint32_t)__builtin_ctzll(bits);
            if (row >= end)
                break;
            if (row == 0 || !hr_model_key(m, HR_TABLE_ITEM, row, NULL) ||
                hr_topk_excluded(ex, row))
                continue;
            float s;
            if (min_count && hr_model_effective_row(m, HR_TABLE_ITEM, row) == 0)
                s = st->def_score;
            else /* [v_i, b_i] . [q, 1]; f32 rows read in place */
                s = cblas_sdot((int)L->k + 1,
                               f32 ? hr_model_row(m, HR_TABLE_ITEM, row)
                                   : hr_model_row_f32(m, HR_TABLE_ITEM, row, wide),
                               1, qx, 1);
            if (attrs)
                s += attr_row(m, ac, j, r->q, row);
            hr_topk_heap_offer(&st->hp, row, s);
        }
    }
}

/* A sparse query scored alone (scan_sparse), in fp32. */
static hr_status query_sparse(const hr_model *m, hr_topk_request *r, const attr_ctx *ac, size_t j)
{
    pthread_once(&blas_once, blas_init);
    const hr_row_layout *L = hr_model_layout(m);
    float *qx = malloc((L->k + 1) * sizeof *qx);
    if (!qx)
        return HR_ENOMEM;
    memcpy(qx, r->q, L->k * sizeof *qx);
    qx[L->k] = 1.0f; /* picks up the bias column */
    scan_state st = {.threshold = -INFINITY, .def_score = 0};
    hr_topk_heap_init(&st.hp, r->out, r->k);
    if (hr_model_get_config(m)->min_count > 0)
        hr_sgd_block_scores_ref(L, hr_model_row(m, HR_TABLE_ITEM, 0), 1, L->stride, r->q,
                                &st.def_score);
    scan_sparse(m, r, qx, &st, ac, j);
    r->n = hr_topk_heap_finish(&st.hp);
    free(qx);
    return HR_OK;
}

static hr_status query_many_half(const hr_model *m, hr_topk_request *reqs, size_t nq,
                                 const attr_ctx *ac, bool *done);
static hr_status query_many_fp32(const hr_model *m, hr_topk_request *reqs, size_t nq,
                                 bool reference, const attr_ctx *ac);

/* Scores the queries: with BLAS, or (reference) with the plain loop the
 * BLAS path is checked against; item attributes held for the scan. */
static hr_status query_many(const hr_model *m, hr_topk_request *reqs, size_t nq, bool reference)
{
    for (size_t j = 0; j < nq; j++)
        reqs[j].n = 0;
    if (nq == 0)
        return HR_OK;
    attr_ctx ac;
    hr_status st = attr_begin(m, reqs, nq, reference, &ac);
    if (st != HR_OK)
        return st;
    bool done = false;
    if (!reference && hr_model_half_layout(m))
        st = query_many_half(m, reqs, nq, &ac, &done);
    if (!done)
        st = query_many_fp32(m, reqs, nq, reference, &ac);
    attr_end(m, &ac);
    return st;
}

static hr_status query_many_fp32(const hr_model *m, hr_topk_request *reqs, size_t nq,
                                 bool reference, const attr_ctx *ac)
{
    pthread_once(&blas_once, blas_init);
    const hr_row_layout *L = hr_model_layout(m);
    const hr_model_config *mc = hr_model_get_config(m);
    const uint32_t chunk = mc->chunk_rows, kq = L->k + 1;
    const bool min_count = mc->min_count > 0;
    /* Blocks are scored SUB rows at a time into a scratch matrix (SUB x nq,
     * row-major) that stays in cache. */
    enum { SUB = 2048 };
    float *qx = malloc(nq * kq * sizeof *qx);
    float *scores = malloc((size_t)SUB * nq * sizeof *scores);
    scan_state *ss = malloc(nq * sizeof *ss);
    /* bf16 rows: each slice widened to a dense f32 matrix for the sgemv */
    enum { WIDE = 128 }; /* rows widened at a time: 33 KB at k = 64 */
    const bool widen = L->storage == HR_STORAGE_BF16 && !reference;
    float *wide = widen ? malloc((size_t)WIDE * kq * sizeof *wide) : NULL;
    const bool attrs = ac->am || ac->direct;
    float *extra = attrs ? malloc((size_t)SUB * nq * sizeof *extra) : NULL;
    if (!qx || !scores || !ss || (widen && !wide) || (attrs && !extra)) {
        free(wide);
        free(qx);
        free(scores);
        free(ss);
        free(extra);
        return HR_ENOMEM;
    }
    const float *r0 = hr_model_row(m, HR_TABLE_ITEM, 0);
    for (size_t j = 0; j < nq; j++) {
        memcpy(qx + j * kq, reqs[j].q, L->k * sizeof *qx);
        qx[j * kq + L->k] = 1.0f; /* picks up the bias column */
        hr_topk_heap_init(&ss[j].hp, reqs[j].out, reqs[j].k);
        ss[j].threshold = -INFINITY;
        ss[j].def_score = 0;
        if (min_count)
            hr_sgd_block_scores_ref(L, r0, 1, L->stride, reqs[j].q, &ss[j].def_score);
    }
    size_t ndense = 0;
    for (size_t j = 0; j < nq; j++) {
        if (!reference && sparse(&reqs[j]) && ss[j].hp.k > 0) {
            scan_sparse(m, &reqs[j], qx + j * kq, &ss[j], ac, j);
            ss[j].hp.k = 0; /* done: the dense loop skips it */
            ss[j].threshold = INFINITY;
        } else {
            ndense++;
        }
    }
    uint32_t nrows, lda;
    const float *blk;
    for (uint32_t b = 0; ndense && (blk = hr_model_item_block(m, b, &nrows, &lda)) != NULL; b++) {
        for (uint32_t off = 0; off < nrows; off += SUB) {
            const uint32_t len = nrows - off < SUB ? nrows - off : SUB;
            const float *sub = blk + (size_t)off * lda;
            const uint32_t ld = lda;
            if (widen) { /* pieces of WIDE rows, widened while they are in cache */
                for (uint32_t p = 0; p < len; p += WIDE) {
                    const uint32_t pl = len - p < WIDE ? len - p : WIDE;
                    hr_model_item_rows_f32(m, blk, off + p, pl, wide);
                    if (nq == 1)
                        cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)pl, (int)kq, 1.0f, wide,
                                    (int)kq, qx, 1, 0.0f, scores + p, 1);
                    else
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)pl, (int)nq,
                                    (int)kq, 1.0f, wide, (int)kq, qx, (int)kq, 0.0f,
                                    scores + (size_t)p * nq, (int)nq);
                }
            } else if (reference) {
                for (size_t j = 0; j < nq; j++)
                    for (uint32_t i = 0; i < len; i++)
                        hr_sgd_block_scores_ref(L, sub + (size_t)i * ld, 1, ld, reqs[j].q,
                                                &scores[i * nq + j]);
            } else if (nq == 1) {
                cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)len, (int)kq, 1.0f, sub, (int)ld,
                            qx, 1, 0.0f, scores, 1);
            } else { /* scores = sub[len x kq] * qx^T[kq x nq]: the matrix read once */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)len, (int)nq, (int)kq,
                            1.0f, sub, (int)ld, qx, (int)kq, 0.0f, scores, (int)nq);
            }
            const uint32_t base = b * chunk + off;
            if (attrs) /* the items' attribute terms: A t, this slice */
                attr_block(m, ac, reqs, nq, base, len, extra, nq);
            for (size_t j = 0; j < nq; j++) {
                scan_state *st = &ss[j];
                if (st->hp.k == 0)
                    continue;
                for (uint32_t i = 0; i < len; i++) {
                    const float e = attrs ? extra[i * nq + j] : 0;
                    float s = attrs ? scores[i * nq + j] + e : scores[i * nq + j];
                    /* Cheap test first: most scores cannot enter a full heap.
                     * (With min_count an item's score may be replaced below.) */
                    if (s < st->threshold && !min_count)
                        continue;
                    uint32_t row = base + i;
                    if (row == 0 || !hr_model_key(m, HR_TABLE_ITEM, row, NULL) ||
                        hr_topk_excluded(reqs[j].ex, row))
                        continue;
                    if (min_count && hr_model_effective_row(m, HR_TABLE_ITEM, row) == 0)
                        s = attrs ? st->def_score + e : st->def_score;
                    hr_topk_heap_offer(&st->hp, row, s);
                    if (st->hp.n == st->hp.k)
                        st->threshold = st->hp.h[0].score;
                }
            }
        }
    }
    for (size_t j = 0; j < nq; j++) {
        ss[j].hp.k = reqs[j].k; /* a sparse query's heap (k was zeroed to skip it) */
        reqs[j].n = hr_topk_heap_finish(&ss[j].hp);
    }
    free(wide);
    free(qx);
    free(scores);
    free(ss);
    free(extra);
    return HR_OK;
}

/* ---- the half-precision path (topk_precision f16) ----
 *
 * The model keeps a half copy of the item rows (half.h), brought up to date
 * by hr_model_item_half_sync before each scan. The scan computes a half
 * score s' per row and, from the row's norm, a bound B with |s - s'| <= B
 * for the fp32 score s (hr_half_error_bound), so s lies in [s' - B, s' + B].
 * Per query, a heap keeps the K best lower bounds of eligible rows; its
 * worst, T, only rises. A row whose upper bound is below T is beaten
 * strictly by K rows and cannot be in the top K; every other row is a
 * candidate. The candidates are re-scored with the fp32 reference loop and
 * ranked by the usual heap, so the result is the fp32 top K with its ties
 * (hr_topk_query_ref's, bit for bit, on a model not being trained). Few rows
 * are candidates: the bound is ~2^-11 of |q| |v|. Exclusions and catalog
 * filters apply to the candidates as in the fp32 scan; a query whose filter
 * keeps few rows skips the half scan and is scored row by row in fp32.
 *
 * Item attributes: their term e (A t, exact fp32, computed as the fp32
 * path and the re-score compute it) is added to s' before the bound test,
 * so s + e lies in [s' + e - B', s' + e + B']: B' is B widened by
 * 2^-19 (|s' + e| + |e| + B) for the roundings of the added term (the
 * bound's own slack covers roundings of magnitude |s'| + B only; this
 * covers eight more of magnitude |s'| + |e| + B). A default-row item
 * (min_count) scores def + e.
 */

typedef struct {
    uint32_t row;
    float hi;  /* upper bound of its fp32 score */
    bool def;  /* scores as the default row (min_count) */
} half_cand;

typedef struct {
    hr_topk_heap lo;    /* the best K lower bounds of eligible rows */
    float threshold;    /* lo's worst once full, else -inf */
    float c[2];         /* the bound: c[0] * norm + c[1] */
    float def_score;    /* score of the default row (items below min_count) */
    half_cand *cands;   /* rows whose upper bound reached the threshold */
    size_t nc, cap;
    bool alone;         /* a sparse filter: scored by query_sparse, not in the scan */
} half_state;

/* Drops the candidates the threshold now rules out; grows the array if
 * that frees too little. */
static bool cands_make_room(half_state *hs)
{
    size_t w = 0;
    for (size_t i = 0; i < hs->nc; i++)
        if (hs->cands[i].hi >= hs->threshold)
            hs->cands[w++] = hs->cands[i];
    hs->nc = w;
    if (hs->nc < hs->cap / 2)
        return true;
    half_cand *c = realloc(hs->cands, 2 * hs->cap * sizeof *c);
    if (!c)
        return false;
    hs->cands = c;
    hs->cap *= 2;
    return true;
}

/* Offers a slice's half scores of one query. False on allocation failure. */
static bool half_offer(const hr_model *m, const hr_half_layout *H, const hr_topk_request *rq,
                       half_state *hs, const uint16_t *sub, uint32_t base, uint32_t len,
                       const float *scores, const float *extra, size_t step)
{
    const bool min_count = hr_model_get_config(m)->min_count > 0;
    const float c0 = hs->c[0], c1 = hs->c[1];
    float threshold = hs->threshold; /* a local: stores below cannot alias it */
    for (uint32_t i = 0; i < len; i++) {
        const float s = scores[i * step]; /* with extra: s' + e */
        const float e = extra ? extra[i * step] : 0;
        const float def_score = extra ? hs->def_score + e : hs->def_score;
        const float norm = hr_half_row_norm(H, sub + (size_t)i * H->stride);
        float hi = INFINITY, lo = -INFINITY;
        if (norm < INFINITY) { /* else: out of fp16 range, always re-scored */
            float b = c0 * norm + c1;
            if (extra)
                b += 0x1p-19f * (fabsf(s) + fabsf(e) + b);
            hi = s + b;
            lo = s - b;
        }
        if (min_count && hi < def_score)
            hi = def_score; /* it may score as the default row */
        if (hi < threshold)
            continue;
        const uint32_t row = base + i;
        /* eligibility as in the fp32 scan: a key, not excluded, the
         * catalog filter's allow bitmap (hidden, expired, categories) */
        if (row == 0 || !hr_model_key(m, HR_TABLE_ITEM, row, NULL) ||
            hr_topk_excluded(rq->ex, row))
            continue;
        bool def = min_count && hr_model_effective_row(m, HR_TABLE_ITEM, row) == 0;
        if (def)
            hi = lo = def_score;
        hr_topk_heap_offer(&hs->lo, row, lo);
        if (hs->lo.n == hs->lo.k)
            hs->threshold = threshold = hs->lo.h[0].score;
        if (hi < threshold)
            continue;
        if (hs->nc == hs->cap && !cands_make_room(hs))
            return false;
        hs->cands[hs->nc++] = (half_cand){row, hi, def};
    }
    return true;
}

/* Eight floats, as portable GCC vector extensions (SSE2 pairs on a plain
 * x86-64 build): the batch's cheap test runs for eight queries at once. */
typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

/* Offers a slice's scores of a batch (nq8 per row): per row, the upper
 * bounds of eight queries are tested against their thresholds at once, and
 * only the queries that pass go through half_offer. */
static bool half_offer_batch(const hr_model *m, const hr_half_layout *H, hr_topk_request *reqs,
                             size_t nq, half_state *hs, const uint16_t *sub, uint32_t base,
                             uint32_t len, const float *scores, const float *extra, size_t nq8)
{
    const bool min_count = hr_model_get_config(m)->min_count > 0;
    for (size_t g = 0; g < nq8; g += 8) {
        v8f c0 = {0}, c1 = {0}, thr;
        for (int l = 0; l < 8; l++) {
            size_t j = g + (size_t)l;
            bool live = j < nq && reqs[j].k > 0 && !hs[j].alone;
            c0[l] = live ? hs[j].c[0] : 0;
            c1[l] = live ? hs[j].c[1] : 0;
            /* min_count: a row may score as the default row; test all */
            thr[l] = !live ? INFINITY : min_count ? -INFINITY : hs[j].threshold;
        }
        for (uint32_t i = 0; i < len; i++) {
            v8f s, norm;
            memcpy(&s, scores + (size_t)i * nq8 + g, sizeof s);
            norm = (v8f){0} + hr_half_row_norm(H, sub + (size_t)i * H->stride);
            /* an upper bound (NaN for an infinite norm: tested below) */
            v8f b = c0 * norm + c1;
            if (extra) { /* widened as in half_offer */
                v8f e;
                memcpy(&e, extra + (size_t)i * nq8 + g, sizeof e);
                const v8i mag = (v8i){0} + 0x7fffffff; /* clears the sign: |x| */
                b += 0x1p-19f * ((v8f)((v8i)s & mag) + (v8f)((v8i)e & mag) + b);
            }
            v8i pass = (s + b) >= thr;
            bool wide = !(norm[0] < INFINITY);
            int any = 0;
            for (int l = 0; l < 8; l++)
                any |= pass[l];
            if (!any && !wide)
                continue;
            for (int l = 0; l < 8; l++) {
                size_t j = g + (size_t)l;
                if (j >= nq || reqs[j].k == 0 || hs[j].alone || !(pass[l] || wide))
                    continue;
                if (!half_offer(m, H, &reqs[j], &hs[j], sub + (size_t)i * H->stride, base + i,
                                1, scores + (size_t)i * nq8 + j,
                                extra ? extra + (size_t)i * nq8 + j : NULL, nq8))
                    return false;
                if (!min_count)
                    thr[l] = hs[j].threshold;
            }
        }
    }
    return true;
}

/* Scans the half copy for candidates and re-scores them in fp32. *done is
 * false (and nothing written) when a query has no bound (not finite): the
 * caller scores the batch in fp32 instead. */
static hr_status query_many_half(const hr_model *m, hr_topk_request *reqs, size_t nq,
                                 const attr_ctx *ac, bool *done)
{
    const hr_half_layout *H = hr_model_half_layout(m);
    const hr_row_layout *L = hr_model_layout(m);
    const hr_model_config *mc = hr_model_get_config(m);
    const uint32_t chunk = mc->chunk_rows, dims = H->dims;
    *done = false;
    /* Slices of SUB rows. A batch is scored eight queries per vector: qt
     * holds the queries transposed (dims x nq8, zero-padded). */
    enum { SUB = 512 };
    const size_t nq8 = nq > 1 ? (nq + 7) & ~(size_t)7 : 1;
    float *qx = calloc(nq * dims, sizeof *qx);
    float *scores = malloc((size_t)SUB * nq8 * sizeof *scores);
    float *qt = nq > 1 ? calloc(dims * nq8, sizeof *qt) : NULL;
    float *extra = ac->am ? malloc((size_t)SUB * nq8 * sizeof *extra) : NULL;
    half_state *hs = calloc(nq, sizeof *hs);
    size_t lo_total = 0;
    for (size_t j = 0; j < nq; j++)
        lo_total += reqs[j].k;
    hr_topk_item *lo_st = malloc((lo_total ? lo_total : 1) * sizeof *lo_st);
    hr_status st = HR_OK;
    if (!qx || !scores || (nq > 1 && !qt) || !hs || !lo_st || (ac->am && !extra)) {
        st = HR_ENOMEM;
        *done = true;
        goto out;
    }
    const float *r0 = hr_model_row(m, HR_TABLE_ITEM, 0);
    size_t lo_at = 0;
    for (size_t j = 0; j < nq; j++) {
        memcpy(qx + j * dims, reqs[j].q, L->k * sizeof *qx);
        qx[j * dims + L->k] = 1.0f; /* the bias */
        if (!hr_half_error_bound(H, qx + j * dims, hs[j].c))
            goto out; /* not done: fp32 */
        for (uint32_t d = 0; qt && d < dims; d++)
            qt[d * nq8 + j] = qx[j * dims + d];
        hr_topk_heap_init(&hs[j].lo, lo_st + lo_at, reqs[j].k);
        lo_at += reqs[j].k;
        hs[j].threshold = -INFINITY;
        if (mc->min_count > 0)
            hr_sgd_block_scores_ref(L, r0, 1, L->stride, reqs[j].q, &hs[j].def_score);
        hs[j].cap = 4 * (size_t)reqs[j].k + 64;
        if (!(hs[j].cands = malloc(hs[j].cap * sizeof *hs[j].cands))) {
            st = HR_ENOMEM;
            *done = true;
            goto out;
        }
    }
    *done = true;
    /* A filter that keeps few rows is scored row by row in fp32 (as
     * query_many does), the others by the half scan; both apply the filter. */
    size_t nscan = 0;
    for (size_t j = 0; j < nq; j++) {
        if (reqs[j].k > 0 && sparse(&reqs[j])) {
            hs[j].alone = true;
            if ((st = query_sparse(m, &reqs[j], ac, j)) != HR_OK)
                goto out;
        } else {
            nscan++;
        }
    }
    if (nscan)
        hr_model_item_half_sync(m);
    uint32_t nrows;
    const uint16_t *blk;
    for (uint32_t b = 0; nscan && (blk = hr_model_item_half_block(m, b, &nrows)) != NULL; b++) {
        for (uint32_t off = 0; off < nrows; off += SUB) {
            const uint32_t len = nrows - off < SUB ? nrows - off : SUB;
            const uint16_t *sub = blk + (size_t)off * H->stride;
            if (nq == 1)
                hr_half_block_scores(H, sub, len, qx, scores);
            else
                hr_half_block_scores_many(H, sub, len, qt, (uint32_t)nq8, scores);
            if (extra) { /* the items' attribute terms, added before the bound test */
                attr_block(m, ac, reqs, nq, b * chunk + off, len, extra, nq8);
                for (size_t x = 0; x < (size_t)len * nq8; x++)
                    scores[x] += extra[x];
            }
            bool ok = nq == 1 ? reqs[0].k == 0 || hs[0].alone || half_offer(m, H, &reqs[0], &hs[0], sub,
                                                             b * chunk + off, len, scores, extra, 1)
                              : half_offer_batch(m, H, reqs, nq, hs, sub, b * chunk + off, len,
                                                 scores, extra, nq8);
            if (!ok) {
                st = HR_ENOMEM;
                goto out;
            }
        }
    }
    for (size_t j = 0; j < nq; j++) {
        if (hs[j].alone)
            continue; /* reqs[j].n set by query_sparse */
        hr_topk_heap hp;
        hr_topk_heap_init(&hp, reqs[j].out, reqs[j].k);
        for (size_t i = 0; i < hs[j].nc; i++) {
            const half_cand *c = &hs[j].cands[i];
            if (c->hi < hs[j].threshold)
                continue;
            float s = hs[j].def_score;
            if (!c->def)
                hr_sgd_block_scores_ref(L, hr_model_row(m, HR_TABLE_ITEM, c->row), 1, L->stride,
                                        reqs[j].q, &s);
            if (ac->am) /* as the fp32 path adds it */
                s += attr_row(m, ac, j, reqs[j].q, c->row);
            hr_topk_heap_offer(&hp, c->row, s);
        }
        reqs[j].n = hr_topk_heap_finish(&hp);
    }
out:
    for (size_t j = 0; hs && j < nq; j++)
        free(hs[j].cands);
    free(qx);
    free(scores);
    free(qt);
    free(extra);
    free(hs);
    free(lo_st);
    return st;
}

hr_status hr_topk_query_many(const hr_model *m, hr_topk_request *reqs, size_t nq)
{
    return query_many(m, reqs, nq, false);
}

static hr_status query_one(const hr_model *m, const float *q, uint32_t k, const hr_topk_exclude *ex,
                           bool reference, hr_topk_item *out, size_t *n)
{
    hr_topk_request req = {q, k, ex, out, 0};
    hr_status st = query_many(m, &req, 1, reference);
    *n = req.n;
    return st;
}

hr_status hr_topk_query(const hr_model *m, const float *q, uint32_t k, const hr_topk_exclude *ex,
                        hr_topk_item *out, size_t *n)
{
    return query_one(m, q, k, ex, false, out, n);
}

hr_status hr_topk_query_ref(const hr_model *m, const float *q, uint32_t k,
                            const hr_topk_exclude *ex, hr_topk_item *out, size_t *n)
{
    return query_one(m, q, k, ex, true, out, n);
}

/* ---- batching concurrent queries ---- */

typedef struct job {
    struct job *next;
    hr_topk_request *req; /* borrowed from the waiting caller */
    hr_status st;
    bool done;
} job;

struct hr_topk_batcher {
    const hr_model *m;  /* borrowed */
    unsigned max_batch; /* queries scored together at most */
    pthread_mutex_t mu;
    pthread_cond_t cv;  /* a batch finished */
    job *head, *tail;   /* waiting, oldest first; under mu */
    bool leading;       /* a caller is scoring a batch; under mu */
    uint64_t batches, queries; /* counters; under mu */
};

hr_status hr_topk_batcher_create(const hr_model *m, unsigned max_batch, hr_topk_batcher **out)
{
    *out = NULL;
    if (max_batch < 1)
        return HR_EINVAL;
    hr_topk_batcher *b = calloc(1, sizeof *b);
    if (!b)
        return HR_ENOMEM;
    b->m = m;
    b->max_batch = max_batch;
    pthread_mutex_init(&b->mu, NULL);
    pthread_cond_init(&b->cv, NULL);
    *out = b;
    return HR_OK;
}

void hr_topk_batcher_destroy(hr_topk_batcher *b)
{
    if (!b)
        return;
    pthread_cond_destroy(&b->cv);
    pthread_mutex_destroy(&b->mu);
    free(b);
}

hr_status hr_topk_query_batched(hr_topk_batcher *b, hr_topk_request *req)
{
    job me = {NULL, req, HR_OK, false};
    pthread_mutex_lock(&b->mu);
    if (b->tail)
        b->tail->next = &me;
    else
        b->head = &me;
    b->tail = &me;
    while (!me.done) {
        if (b->leading) {
            pthread_cond_wait(&b->cv, &b->mu);
            continue;
        }
        /* Lead: take what waits (oldest first, ours among them as long as
         * fewer than max_batch are ahead of it), score it, hand it back. */
        b->leading = true;
        job *batch[256];
        size_t nb = 0;
        unsigned cap = b->max_batch < 256 ? b->max_batch : 256;
        while (b->head && nb < cap) {
            batch[nb++] = b->head;
            b->head = b->head->next;
        }
        if (!b->head)
            b->tail = NULL;
        pthread_mutex_unlock(&b->mu);

        hr_topk_request reqs[256];
        for (size_t i = 0; i < nb; i++)
            reqs[i] = *batch[i]->req;
        hr_status st = query_many(b->m, reqs, nb, false);

        pthread_mutex_lock(&b->mu);
        for (size_t i = 0; i < nb; i++) {
            batch[i]->req->n = reqs[i].n;
            batch[i]->st = st;
            batch[i]->done = true;
        }
        b->batches++;
        b->queries += nb;
        b->leading = false;
        pthread_cond_broadcast(&b->cv);
    }
    pthread_mutex_unlock(&b->mu);
    return me.st;
}

void hr_topk_batcher_counts(hr_topk_batcher *b, uint64_t *batches, uint64_t *queries)
{
    pthread_mutex_lock(&b->mu);
    *batches = b->batches;
    *queries = b->queries;
    pthread_mutex_unlock(&b->mu);
}

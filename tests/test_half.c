/* ctest-labels: concurrent */
/*
 * test_half.c - half-precision item rows (src/half.c) and top-K over them
 * (topk_precision f16, src/topk.c).
 *
 * The scalar conversion is checked against the CPU's F16C instructions over
 * every half value and many floats (where the CPU has F16C); the fast scan
 * kernel against the plain reference; the error bound against adversarial
 * rows (every value rounded the same way, by almost half an fp16 step).
 * Top-K over the half copy must return exactly what the fp32 reference loop
 * returns (rows, order, score bits), over many random queries on random and
 * near-tie data, single and batched, with both kernels, with exclusions and
 * min_count, after rows change (marks), and after concurrent training.
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hogrec/half.h"
#include "hogrec/sgd.h"
#include "hogrec/topk.h"
#include "testutil.h"

#if defined(__x86_64__)
#include <immintrin.h>
__attribute__((target("f16c"))) static uint16_t hw_from_float(float f)
{
    return (uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
}
__attribute__((target("f16c"))) static float hw_to_float(uint16_t h)
{
    return _cvtsh_ss(h);
}
#define HAVE_HW 1
#else
#define HAVE_HW 0
#endif

static uint32_t f2u(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float u2f(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* ---- conversion and kernels ---- */

static void test_conversion(void **state)
{
    (void)state;
    /* known values */
    assert_int_equal(hr_half_from_float(1.0f), 0x3c00);
    assert_int_equal(hr_half_from_float(-2.0f), 0xc000);
    assert_int_equal(hr_half_from_float(65504.0f), 0x7bff);
    assert_int_equal(hr_half_from_float(65520.0f), 0x7c00); /* tie to even: overflow */
    assert_int_equal(hr_half_from_float(65519.99f), 0x7bff);
    assert_int_equal(hr_half_from_float(0x1p-24f), 0x0001);
    assert_int_equal(hr_half_from_float(0x1p-25f), 0x0000); /* tie to even: zero */
    assert_int_equal(hr_half_from_float(0x1.000002p-25f), 0x0001);
    assert_int_equal(hr_half_from_float(0x1p-14f), 0x0400);
    assert_true(hr_half_to_float(0x0001) == 0x1p-24f);
    assert_true(hr_half_to_float(0x7c00) == INFINITY);
    /* every half: round trip, and the hardware's value */
    bool hw = HAVE_HW && hr_half_fast_available();
    for (uint32_t h = 0; h < 65536; h++) {
        float f = hr_half_to_float((uint16_t)h);
        if (isnan(f))
            continue;
        assert_int_equal(hr_half_from_float(f), h);
#if HAVE_HW
        if (hw)
            assert_int_equal(f2u(f), f2u(hw_to_float((uint16_t)h)));
#endif
    }
    if (!hw) {
        print_message("no F16C on this CPU: the scalar conversion is checked by round trips only\n");
        return;
    }
#if HAVE_HW
    /* floats: random bits over the exponents that matter, and each half's
     * rounding midpoints and their neighbours */
    hr_rng rng;
    hr_rng_seed(&rng, 77);
    for (int i = 0; i < 2000000; i++) {
        uint32_t e = 90 + (uint32_t)(hr_rng_next(&rng) % 60); /* 2^-37 .. 2^22 */
        uint32_t u = (uint32_t)(hr_rng_next(&rng) & 0x807fffffu) | (e << 23);
        assert_int_equal(hr_half_from_float(u2f(u)), hw_from_float(u2f(u)));
    }
    for (uint32_t h = 0; h < 0x7c00; h++) {
        float mid = (hr_half_to_float((uint16_t)h) + hr_half_to_float((uint16_t)(h + 1))) / 2;
        for (int d = -1; d <= 1; d++) {
            float f = u2f(f2u(mid) + (uint32_t)d);
            assert_int_equal(hr_half_from_float(f), hw_from_float(f));
            assert_int_equal(hr_half_from_float(-f), hw_from_float(-f));
        }
    }
#endif
}

/* A random half block of nrows rows (values ~ N(0, scale), some tiny). */
static uint16_t *random_half_rows(const hr_half_layout *H, uint32_t nrows, hr_rng *rng)
{
    uint16_t *b = calloc((size_t)nrows * H->stride + 1, sizeof *b);
    for (uint32_t i = 0; i < nrows; i++)
        for (uint32_t d = 0; d <= H->k; d++) {
            double v = hr_rng_normal(rng) * (d % 5 == 4 ? 1e-6 : 1.0);
            b[(size_t)i * H->stride + d] = hr_half_from_float((float)v);
        }
    return b;
}

static void test_kernel_matches_reference(void **state)
{
    (void)state;
    if (!hr_half_fast_available())
        print_message("no AVX2/FMA/F16C: the fast kernel is the reference here\n");
    hr_rng rng;
    hr_rng_seed(&rng, 5);
    const uint32_t ks[] = {1, 7, 8, 15, 16, 64, 100, 128};
    for (size_t ki = 0; ki < sizeof ks / sizeof *ks; ki++) {
        hr_half_layout H = hr_half_layout_make(ks[ki]);
        assert_true(H.dims % 8 == 0 && H.dims >= ks[ki] + 1 && H.stride == H.dims + 2);
        float *qx = calloc(H.dims, sizeof *qx), *qt = calloc((size_t)H.dims * 16, sizeof *qt);
        for (uint32_t d = 0; d <= H.k; d++)
            qx[d] = (float)hr_rng_normal(&rng);
        for (uint32_t nrows = 0; nrows <= 13; nrows++) {
            uint16_t *b = random_half_rows(&H, nrows, &rng);
            float fast[16], ref[16], many[16 * 16], many_ref[16 * 16];
            hr_half_block_scores(&H, b, nrows, qx, fast);
            hr_half_block_scores_ref(&H, b, nrows, qx, ref);
            /* a batch of 16: query 0 is qx, query j qx scaled by j + 1 */
            for (uint32_t d = 0; d < H.dims; d++)
                for (uint32_t j = 0; j < 16; j++)
                    qt[d * 16 + j] = qx[d] * (float)(j + 1);
            hr_half_block_scores_many(&H, b, nrows, qt, 16, many);
            hr_half_block_scores_many_ref(&H, b, nrows, qt, 16, many_ref);
            for (uint32_t i = 0; i < nrows; i++) {
                double mag = 0;
                for (uint32_t d = 0; d < H.dims; d++)
                    mag += fabs((double)qx[d] * hr_half_to_float(b[(size_t)i * H.stride + d]));
                /* two summation orders: each within dims * 2^-24 of the sum */
                double tol = 2 * H.dims * 0x1p-24 * mag + 1e-30;
                assert_true(fabs((double)fast[i] - ref[i]) <= tol);
                for (uint32_t j = 0; j < 16; j++) {
                    assert_true(fabs((double)many[i * 16 + j] - many_ref[i * 16 + j]) <= tol * (j + 1));
                    assert_true(fabs((double)many[i * 16 + j] - ref[i] * (j + 1)) <= 2 * tol * (j + 1));
                }
            }
            free(b);
        }
        free(qx);
        free(qt);
    }
}

/* The batch kernel against its reference for batches of 8, 16 and 24
 * independent queries and row counts around its blocks of rows (a block, a
 * block and a tail, several blocks): every score within two summation
 * orders' rounding of the reference. */
static void test_batch_kernel_matches_reference(void **state)
{
    (void)state;
    hr_rng rng;
    hr_rng_seed(&rng, 6);
    const uint32_t ks[] = {1, 7, 13, 64, 100};
    const uint32_t nq8s[] = {8, 16, 24};
    const uint32_t counts[] = {0, 1, 5, 11, 12, 13, 23, 24, 25, 40, 97};
    for (size_t ki = 0; ki < sizeof ks / sizeof *ks; ki++) {
        hr_half_layout H = hr_half_layout_make(ks[ki]);
        for (size_t qi = 0; qi < sizeof nq8s / sizeof *nq8s; qi++) {
            const uint32_t nq8 = nq8s[qi];
            float *qt = calloc((size_t)H.dims * nq8, sizeof *qt);
            for (uint32_t d = 0; d <= H.k; d++)
                for (uint32_t j = 0; j < nq8; j++)
                    qt[d * nq8 + j] = (float)hr_rng_normal(&rng);
            for (size_t ci = 0; ci < sizeof counts / sizeof *counts; ci++) {
                const uint32_t nrows = counts[ci];
                uint16_t *b = random_half_rows(&H, nrows, &rng);
                float *got = malloc(((size_t)nrows * nq8 + 1) * sizeof *got);
                float *want = malloc(((size_t)nrows * nq8 + 1) * sizeof *want);
                hr_half_block_scores_many(&H, b, nrows, qt, nq8, got);
                hr_half_block_scores_many_ref(&H, b, nrows, qt, nq8, want);
                for (uint32_t i = 0; i < nrows; i++)
                    for (uint32_t j = 0; j < nq8; j++) {
                        double mag = 0;
                        for (uint32_t d = 0; d < H.dims; d++)
                            mag += fabs((double)qt[d * nq8 + j] *
                                        hr_half_to_float(b[(size_t)i * H.stride + d]));
                        double tol = 2 * H.dims * 0x1p-24 * mag + 1e-30;
                        if (!(fabs((double)got[i * nq8 + j] - want[i * nq8 + j]) <= tol))
                            fail_msg("k %u, %u queries, %u rows: row %u query %u: %.9g, "
                                     "reference %.9g", H.k, nq8, nrows, i, j,
                                     (double)got[i * nq8 + j], (double)want[i * nq8 + j]);
                    }
                free(b);
                free(got);
                free(want);
            }
            free(qt);
        }
    }
}

/* The bound holds for rows whose every value rounds the same way by almost
 * half an fp16 step, against the fp32 reference score, with both kernels. */
static void test_error_bound_adversarial(void **state)
{
    (void)state;
    const uint32_t k = 64;
    hr_row_layout L = hr_row_layout_make(k, HR_STATE_SGD, 1);
    hr_half_layout H = hr_half_layout_make(k);
    hr_rng rng;
    hr_rng_seed(&rng, 9);
    float row[L.floats], qx[H.dims];
    uint16_t hrow[H.stride];
    double worst = 0;
    for (int t = 0; t < 20000; t++) {
        memset(row, 0, sizeof row);
        memset(qx, 0, sizeof qx);
        double scale = pow(2, (double)(hr_rng_next(&rng) % 40) - 30); /* incl. subnormal halves */
        int sgn = t % 2 ? 1 : -1;
        for (uint32_t d = 0; d <= k; d++) {
            float base = (float)fabs(hr_rng_normal(&rng) * scale);
            uint16_t h = hr_half_from_float(base);
            float lo = hr_half_to_float(h), hi = hr_half_to_float((uint16_t)(h + 1));
            float v = lo + (hi - lo) * 0.4999f; /* rounds down to lo */
            /* every term q_d v_d (the bias's q is 1) has the sign sgn */
            row[d] = d == k ? sgn * v : (d % 2 ? v : -v);
            qx[d] = d == k ? 1.0f : (float)(sgn * (d % 2 ? 1 : -1) * fabs(hr_rng_normal(&rng)));
        }
        float q[k];
        memcpy(q, qx, sizeof q);
        float exact;
        hr_sgd_block_scores_ref(&L, row, 1, L.stride, q, &exact); /* <q, v> + bias */
        hr_half_row_write(&L, &H, row, hrow);
        float c[2];
        assert_true(hr_half_error_bound(&H, qx, c));
        float b = c[0] * hr_half_row_norm(&H, hrow) + c[1];
        float s1, s2;
        hr_half_block_scores(&H, hrow, 1, qx, &s1);
        hr_half_block_scores_ref(&H, hrow, 1, qx, &s2);
        assert_true(s1 - b <= exact && exact <= s1 + b);
        assert_true(s2 - b <= exact && exact <= s2 + b);
        if (b > 0 && fabs(exact - s2) / b > worst)
            worst = fabs(exact - s2) / b;
    }
    /* the data reaches the bound's order: the test could see it fail */
    print_message("largest error / bound: %.3f\n", worst);
    assert_true(worst > 0.2);
    /* out of fp16 range: norm +inf, the row always re-scored */
    for (uint32_t d = 0; d <= k; d++)
        row[d] = d == 3 ? 70000.0f : 0.5f;
    hr_half_row_write(&L, &H, row, hrow);
    assert_true(isinf(hr_half_row_norm(&H, hrow)));
    qx[0] = INFINITY;
    float c[2];
    assert_false(hr_half_error_bound(&H, qx, c));
}

/* ---- top-K over the half copy ---- */

typedef enum { DATA_RANDOM, DATA_NEAR_TIES } data_kind;

/* Whether make_model gives items catalog attributes (add_attrs). */
static bool with_attrs;

/* Item attributes as the catalog sets them: random context rows (all 16),
 * and 1-3 of them on four items in five (one in seven numeric). */
static void add_attrs(hr_model *m, uint64_t seed)
{
    const hr_row_layout *L = hr_model_layout(m);
    float *row = calloc(L->floats, sizeof *row);
    hr_rng rng;
    hr_rng_seed(&rng, seed ^ 0x5eed);
    for (uint32_t r = 0; r < hr_model_rows(m, HR_TABLE_CTX); r++) {
        hr_sgd_row_read(L, hr_model_row(m, HR_TABLE_CTX, r), row);
        for (uint32_t d = 0; d <= L->k; d++)
            row[d] = (float)hr_rng_normal(&rng) * 0.3f;
        hr_sgd_row_write(L, hr_model_row(m, HR_TABLE_CTX, r), row);
    }
    for (uint32_t r = 1; r < hr_model_rows(m, HR_TABLE_ITEM); r++) {
        if (r % 5 == 0)
            continue;
        hr_feat f[3];
        uint32_t na = 1 + (uint32_t)(hr_rng_next(&rng) % 3);
        for (uint32_t a = 0; a < na; a++)
            f[a] = (hr_feat){(uint32_t)(hr_rng_next(&rng) % hr_model_rows(m, HR_TABLE_CTX)),
                             r % 7 == 0 ? (float)hr_rng_normal(&rng) : 1.0f};
        assert_int_equal(hr_model_set_attrs(m, HR_TABLE_ITEM, r, f, na, true), HR_OK);
    }
    free(row);
}

/* A model of `items` items at k, f16 or f32; the same rows for the same
 * seed whatever the precision. */
static hr_model *make_model(uint32_t k, uint32_t items, uint64_t seed, bool half, data_kind dk,
                            uint32_t min_count)
{
    hr_config c;
    hr_config_defaults(&c);
    c.k = k;
    c.max_users = 1024;
    c.max_items = 8192;
    c.chunk_rows = 512; /* several blocks */
    c.context_bits = 4;
    c.min_count = min_count;
    c.topk_precision = half ? HR_CONFIG_TOPK_F16 : HR_CONFIG_TOPK_F32;
    hr_schedule s;
    hr_schedule_defaults(&s);
    hr_model_config mc;
    assert_int_equal(hr_model_config_from(&c, &s, &mc, NULL), HR_OK);
    assert_int_equal(mc.half_items, half);
    hr_model *m = NULL;
    assert_int_equal(hr_model_create(&mc, &m, NULL), HR_OK);
    assert_int_equal(hr_model_half_layout(m) != NULL, half);
    const hr_row_layout *L = hr_model_layout(m);
    float *row = calloc(L->floats, sizeof *row), *base = calloc(k + 1, sizeof *base);
    hr_rng rng;
    hr_rng_seed(&rng, seed);
    for (uint32_t d = 0; d <= k; d++)
        base[d] = (float)hr_rng_normal(&rng) * 0.3f;
    for (uint32_t i = 0; i < items; i++) {
        char id[32];
        int n = snprintf(id, sizeof id, "item%u", i);
        uint32_t r;
        assert_int_equal(hr_model_intern(m, HR_TABLE_ITEM, id, (size_t)n, &r, NULL), HR_OK);
        hr_sgd_row_read(L, hr_model_row(m, HR_TABLE_ITEM, r), row);
        uint64_t kind = hr_rng_next(&rng) % 8;
        for (uint32_t d = 0; d <= k; d++) {
            if (dk == DATA_RANDOM) {
                row[d] = (float)hr_rng_normal(&rng) * 0.3f;
                if (i % 97 == 5)
                    row[d] *= 1e-5f; /* subnormal halves */
            } else if (kind < 3) { /* exact copies of one row: exact ties */
                row[d] = base[d];
            } else if (kind < 5) { /* the same row moved below fp16's resolution */
                row[d] = base[d] * (1.0f + (float)hr_rng_normal(&rng) * 0x1p-14f);
            } else if (kind < 7) { /* ... by about fp16's resolution: half order != fp32 order */
                row[d] = base[d] * (1.0f + (float)hr_rng_normal(&rng) * 0x1p-11f);
            } else {
                row[d] = (float)hr_rng_normal(&rng) * 0.3f;
            }
        }
        if (i % 211 == 7)
            row[i % k] = 80000.0f; /* out of fp16 range */
        if (min_count && i % 3 == 0) /* below min_count: scores as row 0 */
            memset(row + L->count, 0, sizeof(float));
        else if (min_count)
            memcpy(row + L->count, &(uint32_t){min_count}, sizeof(uint32_t));
        hr_sgd_row_write(L, hr_model_row(m, HR_TABLE_ITEM, r), row);
    }
    hr_config_free(&c);
    free(row);
    free(base);
    if (with_attrs)
        add_attrs(m, seed);
    return m;
}

static void random_query(float *q, uint32_t k, uint64_t seed, data_kind dk, const hr_model *m)
{
    hr_rng rng;
    hr_rng_seed(&rng, seed);
    for (uint32_t d = 0; d < k; d++)
        q[d] = (float)hr_rng_normal(&rng);
    if (dk == DATA_NEAR_TIES && seed % 2) { /* along the tied rows: they rank first */
        const float *r1 = hr_model_row(m, HR_TABLE_ITEM, 1);
        for (uint32_t d = 0; d < k; d++)
            q[d] = q[d] * 0.1f + r1[d];
    }
}

/* a and b are the same list: rows, order and score bits. */
static bool same_list(const hr_topk_item *a, size_t na, const hr_topk_item *b, size_t nb)
{
    if (na != nb)
        return false;
    for (size_t i = 0; i < na; i++)
        if (a[i].row != b[i].row || f2u(a[i].score) != f2u(b[i].score))
            return false;
    return true;
}

/* a and b rank the same rows, b scored by BLAS (another summation order):
 * scores equal to rounding, and a row placed elsewhere, or missing at the
 * end, only among rows whose scores are equal to rounding. */
static bool close(float x, float y)
{
    return fabsf(x - y) <= 1e-4f * (1 + fabsf(x));
}

static bool same_rows(const hr_topk_item *a, size_t na, const hr_topk_item *b, size_t nb)
{
    if (na != nb)
        return false;
    for (size_t i = 0; i < na; i++) {
        if (!close(a[i].score, b[i].score))
            return false;
        size_t j = 0;
        while (j < nb && b[j].row != a[i].row)
            j++;
        if (!close(a[i].score, a[j < nb ? j : na - 1].score))
            return false;
    }
    return true;
}

/* Many queries: the half model's hr_topk_query equals the fp32 reference
 * loop exactly, and the fp32 model's BLAS ranking up to its rounding.
 * Single queries, then the same queries batched. Returns the failures. */
static int compare_many(const hr_model *mh, const hr_model *mf, uint32_t k, int nq, uint64_t seed,
                        data_kind dk)
{
    int bad = 0;
    const uint32_t ks[] = {1, 10, 64};
    uint32_t ex_rows[] = {1, 2, 3, 50, 600, 601};
    hr_topk_exclude ex = {.rows = ex_rows, .n = 6};
    enum { B = 8 };
    hr_topk_request reqs[B];
    hr_topk_item *got[B], want[64], blas[64], single[64];
    float q[B][128];
    for (int b = 0; b < B; b++)
        got[b] = calloc(64, sizeof **got);
    for (int i = 0; i < nq; i += B) {
        for (int b = 0; b < B; b++) {
            random_query(q[b], k, seed + (uint64_t)(i + b), dk, mh);
            uint32_t kk = ks[(i + b) % 3];
            reqs[b] = (hr_topk_request){q[b], kk, (i + b) % 4 == 1 ? &ex : NULL, got[b], 0};
        }
        if (hr_topk_query_many(mh, reqs, B) != HR_OK)
            return nq;
        for (int b = 0; b < B; b++) {
            size_t nw, nb, ns;
            if (hr_topk_query_ref(mh, q[b], reqs[b].k, reqs[b].ex, want, &nw) != HR_OK ||
                hr_topk_query(mh, q[b], reqs[b].k, reqs[b].ex, single, &ns) != HR_OK ||
                hr_topk_query(mf, q[b], reqs[b].k, reqs[b].ex, blas, &nb) != HR_OK)
                return nq;
            bool ok1 = same_list(single, ns, want, nw), ok2 = same_list(got[b], reqs[b].n, want, nw),
                 ok3 = same_rows(single, ns, blas, nb);
            if (!(ok1 && ok2 && ok3) && bad < 3) {
                print_message("query %d k %u: single %d batched %d blas %d\n", i + b, reqs[b].k, ok1, ok2, ok3);
                for (size_t x = 0; x < nw && x < 12; x++)
                    print_message("  %u %.9g | %u %.9g | %u %.9g | %u %.9g\n", want[x].row, want[x].score, single[x].row, single[x].score, got[b][x].row, got[b][x].score, blas[x].row, blas[x].score);
            }
            bad += !(ok1 && ok2 && ok3);
        }
    }
    for (int b = 0; b < B; b++)
        free(got[b]);
    return bad;
}

static void test_topk_equals_fp32_random(void **state)
{
    (void)state;
    const uint32_t k = 64;
    hr_model *mh = make_model(k, 5000, 31, true, DATA_RANDOM, 0);
    hr_model *mf = make_model(k, 5000, 31, false, DATA_RANDOM, 0);
    assert_int_equal(compare_many(mh, mf, k, 400, 1000, DATA_RANDOM), 0);
    hr_half_set_fast(false); /* the scalar kernels give the same results */
    assert_int_equal(compare_many(mh, mf, k, 96, 5000, DATA_RANDOM), 0);
    hr_half_set_fast(true);
    hr_model_destroy(mh);
    hr_model_destroy(mf);
    /* another k, not a multiple of 8 */
    mh = make_model(13, 3000, 32, true, DATA_RANDOM, 0);
    mf = make_model(13, 3000, 32, false, DATA_RANDOM, 0);
    assert_int_equal(compare_many(mh, mf, 13, 200, 2000, DATA_RANDOM), 0);
    hr_model_destroy(mh);
    hr_model_destroy(mf);
}

static void test_topk_equals_fp32_near_ties(void **state)
{
    (void)state;
    const uint32_t k = 64;
    hr_model *mh = make_model(k, 6000, 41, true, DATA_NEAR_TIES, 0);
    hr_model *mf = make_model(k, 6000, 41, false, DATA_NEAR_TIES, 0);
    assert_int_equal(compare_many(mh, mf, k, 400, 3000, DATA_NEAR_TIES), 0);
    hr_half_set_fast(false);
    assert_int_equal(compare_many(mh, mf, k, 64, 7000, DATA_NEAR_TIES), 0);
    hr_half_set_fast(true);
    hr_model_destroy(mh);
    hr_model_destroy(mf);
}

static void test_topk_min_count(void **state)
{
    (void)state;
    hr_model *mh = make_model(16, 3000, 51, true, DATA_RANDOM, 3);
    hr_model *mf = make_model(16, 3000, 51, false, DATA_RANDOM, 3);
    assert_int_equal(compare_many(mh, mf, 16, 200, 4000, DATA_RANDOM), 0);
    hr_model_destroy(mh);
    hr_model_destroy(mf);
}

/* Catalog filters (an allow bitmap: hidden, expired and category-filtered
 * items are left out of it) apply in the half path as in fp32: every
 * result is an allowed row not excluded, and the list equals the fp32
 * reference loop's over the same filter - a dense filter through the half
 * scan (exactly), a sparse one row by row in fp32 (as the fp32 model does,
 * bit for bit); single queries and batches mixing filters. */
static bool filtered_ok(const hr_topk_item *a, size_t n, const hr_topk_exclude *ex)
{
    for (size_t i = 0; i < n; i++)
        if (hr_topk_excluded(ex, a[i].row))
            return false;
    return true;
}

static void check_catalog_filters(uint32_t min_count)
{
    const uint32_t k = 16;
    hr_model *mh = make_model(k, 4000, 61, true, DATA_RANDOM, min_count);
    hr_model *mf = make_model(k, 4000, 61, false, DATA_RANDOM, min_count);
    const uint32_t rows = hr_model_rows(mh, HR_TABLE_ITEM), words = (rows + 63) / 64;
    uint64_t *dense = calloc(words, sizeof *dense), *sparse = calloc(words, sizeof *sparse);
    uint32_t ndense = 0, nsparse = 0;
    for (uint32_t r = 1; r < rows; r++) {
        if (r % 2 == 1 || r % 7 == 0) {
            dense[r / 64] |= 1ull << (r % 64);
            ndense++;
        }
        if (r % 40 == 3) {
            sparse[r / 64] |= 1ull << (r % 64);
            nsparse++;
        }
    }
    uint32_t ex_rows[] = {7, 43, 101, 203}; /* allowed by a filter, excluded by name */
    const hr_topk_exclude exd = {ex_rows, 4, dense, rows, ndense};
    const hr_topk_exclude exs = {ex_rows, 4, sparse, rows, nsparse};
    assert_true((uint64_t)ndense * HR_TOPK_SPARSE >= rows);  /* the half scan */
    assert_true((uint64_t)nsparse * HR_TOPK_SPARSE < rows);  /* row by row */
    enum { B = 8, K = 10 };
    float q[B][16];
    hr_topk_item got[B][K], want[K], f32[K];
    size_t n, nw, nf;
    int filtered_out = 0; /* unfiltered top-K rows the dense filter leaves out */
    for (int i = 0; i < 48; i++) {
        for (int b = 0; b < B; b++)
            random_query(q[b], k, 9000 + (uint64_t)(i * B + b), DATA_RANDOM, mh);
        /* single queries */
        assert_int_equal(hr_topk_query(mh, q[0], K, &exd, got[0], &n), HR_OK);
        assert_int_equal(hr_topk_query_ref(mh, q[0], K, &exd, want, &nw), HR_OK);
        assert_true(filtered_ok(got[0], n, &exd));
        assert_true(same_list(got[0], n, want, nw));
        assert_int_equal(hr_topk_query(mh, q[0], K, NULL, got[1], &n), HR_OK);
        for (size_t j = 0; j < n; j++)
            filtered_out += hr_topk_excluded(&exd, got[1][j].row);
        assert_int_equal(hr_topk_query(mh, q[1], K, &exs, got[0], &n), HR_OK);
        assert_int_equal(hr_topk_query_ref(mh, q[1], K, &exs, want, &nw), HR_OK);
        assert_int_equal(hr_topk_query(mf, q[1], K, &exs, f32, &nf), HR_OK);
        assert_true(filtered_ok(got[0], n, &exs));
        assert_true(same_rows(want, nw, got[0], n));
        assert_true(same_list(got[0], n, f32, nf));
        /* a batch: dense, sparse and no filter mixed */
        hr_topk_request reqs[B];
        const hr_topk_exclude *exs_of[3] = {&exd, &exs, NULL};
        for (int b = 0; b < B; b++)
            reqs[b] = (hr_topk_request){q[b], K, exs_of[(i + b) % 3], got[b], 0};
        assert_int_equal(hr_topk_query_many(mh, reqs, B), HR_OK);
        for (int b = 0; b < B; b++) {
            const hr_topk_exclude *ex = reqs[b].ex;
            assert_int_equal(hr_topk_query_ref(mh, q[b], K, ex, want, &nw), HR_OK);
            assert_true(filtered_ok(got[b], reqs[b].n, ex));
            if (ex == &exs)
                assert_true(same_rows(want, nw, got[b], reqs[b].n));
            else
                assert_true(same_list(got[b], reqs[b].n, want, nw));
        }
    }
    assert_true(filtered_out > 0); /* the filter mattered */
    free(dense);
    free(sparse);
    hr_model_destroy(mh);
    hr_model_destroy(mf);
}

static void test_topk_catalog_filters(void **state)
{
    (void)state;
    check_catalog_filters(0);
    check_catalog_filters(3); /* rows below min_count score as row 0 */
}

/* Items with catalog attributes: their term (exact fp32) joins the half
 * score before the bound test, and the result still equals the fp32
 * reference loop's (which reads the attributes row by row, not through the
 * matrix) bit for bit: random and near-tie data, min_count, filters. */
static void test_topk_attrs_equal_fp32(void **state)
{
    (void)state;
    with_attrs = true;
    hr_model *mh = make_model(64, 5000, 33, true, DATA_RANDOM, 0);
    hr_model *mf = make_model(64, 5000, 33, false, DATA_RANDOM, 0);
    assert_true(hr_model_attrs_count(mh, HR_TABLE_ITEM) > 3000);
    assert_int_equal(compare_many(mh, mf, 64, 200, 1100, DATA_RANDOM), 0);
    hr_model_destroy(mh);
    hr_model_destroy(mf);
    mh = make_model(64, 6000, 43, true, DATA_NEAR_TIES, 0);
    mf = make_model(64, 6000, 43, false, DATA_NEAR_TIES, 0);
    assert_int_equal(compare_many(mh, mf, 64, 200, 3100, DATA_NEAR_TIES), 0);
    hr_half_set_fast(false);
    assert_int_equal(compare_many(mh, mf, 64, 48, 7100, DATA_NEAR_TIES), 0);
    hr_half_set_fast(true);
    hr_model_destroy(mh);
    hr_model_destroy(mf);
    mh = make_model(16, 3000, 53, true, DATA_RANDOM, 3);
    mf = make_model(16, 3000, 53, false, DATA_RANDOM, 3);
    assert_int_equal(compare_many(mh, mf, 16, 200, 4100, DATA_RANDOM), 0);
    hr_model_destroy(mh);
    hr_model_destroy(mf);
    check_catalog_filters(0);
    check_catalog_filters(3);
}

static int attrs_off(void **state)
{
    (void)state;
    with_attrs = false; /* also when the test failed midway */
    return 0;
}

/* Position of row in a result list (n if absent). */
static size_t rank_of(const hr_topk_item *a, size_t n, uint32_t row)
{
    size_t i = 0;
    while (i < n && a[i].row != row)
        i++;
    return i;
}

/* Rows written after a scan (as trainers, deltas and new ids write them)
 * reach the half copy through their marks, and only those are converted. */
static void test_changes_reach_the_half_copy(void **state)
{
    (void)state;
    const uint32_t k = 16;
    hr_model *m = make_model(k, 2000, 61, true, DATA_RANDOM, 0);
    hr_model *mf = make_model(k, 2000, 61, false, DATA_RANDOM, 0);
    float q[16];
    random_query(q, k, 9, DATA_RANDOM, m);
    hr_topk_item got[10], want[10];
    size_t n, nw;
    assert_int_equal(hr_topk_query(m, q, 10, NULL, got, &n), HR_OK); /* the first sync */
    assert_int_equal(hr_model_item_half_sync(m), 0);                 /* nothing since */
    const hr_row_layout *L = hr_model_layout(m);
    float row[L->floats];
    /* a trainer's write: rows made the best for q */
    for (uint32_t r = 100; r < 105; r++) {
        hr_sgd_row_read(L, hr_model_row(m, HR_TABLE_ITEM, r), row);
        for (uint32_t d = 0; d < k; d++)
            row[d] = q[d] * (float)(r - 90);
        hr_sgd_row_write(L, hr_model_row(m, HR_TABLE_ITEM, r), row);
        hr_model_mark_dirty(m, HR_TABLE_ITEM, r);
    }
    /* a delta's write marks the checkpoint's bit only */
    hr_sgd_row_read(L, hr_model_row(m, HR_TABLE_ITEM, 7), row);
    for (uint32_t d = 0; d < k; d++)
        row[d] = q[d] * 20;
    hr_sgd_row_write(L, hr_model_row(m, HR_TABLE_ITEM, 7), row);
    hr_model_mark(m, HR_TABLE_ITEM, 7, HR_MARK_CKPT);
    assert_int_equal(hr_model_item_half_sync(m), 6);
    assert_int_equal(hr_model_item_half_sync(m), 0);
    /* the same writes again, then a query syncs them itself */
    for (uint32_t r = 100; r < 105; r++)
        hr_model_mark_dirty(m, HR_TABLE_ITEM, r);
    hr_model_mark(m, HR_TABLE_ITEM, 7, HR_MARK_CKPT);
    assert_int_equal(hr_topk_query(m, q, 10, NULL, got, &n), HR_OK);
    assert_int_equal(hr_topk_query_ref(m, q, 10, NULL, want, &nw), HR_OK);
    assert_true(same_list(got, n, want, nw));
    assert_true(rank_of(got, n, 7) < rank_of(got, n, 104) && rank_of(got, n, 104) < rank_of(got, n, 103));
    /* a new id after the first sync */
    uint32_t r;
    assert_int_equal(hr_model_intern(m, HR_TABLE_ITEM, "fresh", 5, &r, NULL), HR_OK);
    hr_sgd_row_read(L, hr_model_row(m, HR_TABLE_ITEM, r), row);
    for (uint32_t d = 0; d < k; d++)
        row[d] = q[d] * 30;
    hr_sgd_row_write(L, hr_model_row(m, HR_TABLE_ITEM, r), row);
    hr_model_mark_dirty(m, HR_TABLE_ITEM, r);
    assert_int_equal(hr_topk_query(m, q, 10, NULL, got, &n), HR_OK);
    assert_int_equal(hr_topk_query_ref(m, q, 10, NULL, want, &nw), HR_OK);
    assert_true(same_list(got, n, want, nw));
    assert_true(rank_of(got, n, r) < rank_of(got, n, 7));
    /* an fp32 model never has half marks to take */
    assert_int_equal(hr_model_item_half_sync(mf), 0);
    hr_model_destroy(m);
    hr_model_destroy(mf);
}

/* Trainers write rows (and mark them) while queries scan and sync; once
 * they stop, a query returns the fp32 top K again. */
typedef struct {
    hr_model *m;
    atomic_int *stop;
    uint64_t seed;
    int bad;
} worker;

static void *train(void *arg)
{
    worker *w = arg;
    const hr_row_layout *L = hr_model_layout(w->m);
    float row[L->floats];
    hr_rng rng;
    hr_rng_seed(&rng, w->seed);
    for (int i = 0; i < 200000 && !atomic_load(w->stop); i++) {
        uint32_t r = 1 + (uint32_t)(hr_rng_next(&rng) % 2000);
        hr_sgd_row_read(L, hr_model_row(w->m, HR_TABLE_ITEM, r), row);
        row[hr_rng_next(&rng) % (L->k + 1)] += (float)hr_rng_normal(&rng) * 0.1f;
        hr_sgd_row_write(L, hr_model_row(w->m, HR_TABLE_ITEM, r), row);
        hr_model_mark_dirty(w->m, HR_TABLE_ITEM, r);
    }
    return NULL;
}

static void *ask(void *arg)
{
    worker *w = arg;
    for (int i = 0; i < 40; i++) {
        float q[16];
        random_query(q, 16, w->seed + (uint64_t)i, DATA_RANDOM, w->m);
        hr_topk_item got[10];
        size_t n = 0;
        if (hr_topk_query(w->m, q, 10, NULL, got, &n) != HR_OK || n != 10)
            w->bad++;
        for (size_t j = 1; j < n; j++)
            w->bad += !(got[j - 1].score >= got[j].score);
    }
    return NULL;
}

static void test_queries_while_training(void **state)
{
    (void)state;
    hr_model *m = make_model(16, 2000, 71, true, DATA_RANDOM, 0);
    atomic_int stop = 0;
    worker tw = {m, &stop, 1, 0}, qw[2] = {{m, &stop, 100, 0}, {m, &stop, 200, 0}};
    pthread_t tt, qt[2];
    pthread_create(&tt, NULL, train, &tw);
    for (int i = 0; i < 2; i++)
        pthread_create(&qt[i], NULL, ask, &qw[i]);
    for (int i = 0; i < 2; i++) {
        pthread_join(qt[i], NULL);
        assert_int_equal(qw[i].bad, 0);
    }
    atomic_store(&stop, 1);
    pthread_join(tt, NULL);
    for (int i = 0; i < 50; i++) {
        float q[16];
        random_query(q, 16, 900 + (uint64_t)i, DATA_RANDOM, m);
        hr_topk_item got[10], want[10];
        size_t n, nw;
        assert_int_equal(hr_topk_query(m, q, 10, NULL, got, &n), HR_OK);
        assert_int_equal(hr_topk_query_ref(m, q, 10, NULL, want, &nw), HR_OK);
        assert_true(same_list(got, n, want, nw));
    }
    hr_model_destroy(m);
}

/* A query that is not finite has no bound: scored in fp32, as before. */
static void test_nonfinite_query_falls_back(void **state)
{
    (void)state;
    hr_model *m = make_model(16, 500, 81, true, DATA_RANDOM, 0);
    float q[16];
    random_query(q, 16, 3, DATA_RANDOM, m);
    q[5] = INFINITY;
    hr_topk_item got[10], want[10];
    size_t n, nw;
    assert_int_equal(hr_topk_query(m, q, 10, NULL, got, &n), HR_OK);
    assert_int_equal(hr_topk_query_ref(m, q, 10, NULL, want, &nw), HR_OK);
    assert_int_equal(n, nw);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(got[i].row, want[i].row);
    hr_model_destroy(m);
}

int main(void)
{
    hr_half_set_fast(true);
    print_message("fast half kernels: %s\n", hr_half_fast_available() ? "AVX2+FMA+F16C" : "none");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_conversion),
        cmocka_unit_test(test_kernel_matches_reference),
        cmocka_unit_test(test_batch_kernel_matches_reference),
        cmocka_unit_test(test_error_bound_adversarial),
        cmocka_unit_test(test_topk_equals_fp32_random),
        cmocka_unit_test(test_topk_equals_fp32_near_ties),
        cmocka_unit_test(test_topk_min_count),
        cmocka_unit_test(test_topk_catalog_filters),
        cmocka_unit_test_teardown(test_topk_attrs_equal_fp32, attrs_off),
        cmocka_unit_test(test_changes_reach_the_half_copy),
        cmocka_unit_test(test_queries_while_training),
        cmocka_unit_test(test_nonfinite_query_falls_back),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

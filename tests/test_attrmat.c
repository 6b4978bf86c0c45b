/*
 * test_attrmat.c - the item x attribute matrix of the top-K scan
 * (src/attrmat.c), on its own: rows' attributes come from a table in the
 * test through the read callback.
 *
 * The kernel is checked against a plain reference (each row's entries
 * summed in double in attribute order, rounded once) bit for bit, over
 * random rows, block bounds that do not fall on segments, several queries
 * with strides; a rebuild reads only the segments touched since the last
 * one; cleared rows and segments drop out of the entry count.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "hogrec/attrmat.h"
#include "testutil.h"

enum { ROWS = 1000, NQ = 3, LDT_PAD = 2, LDY = 5 };

/* The rows' attributes, and how many rows the matrix read. */
typedef struct {
    uint32_t n[ROWS];
    hr_feat f[ROWS][HR_MAX_ATTRS];
    uint64_t reads;
} table;

static uint32_t read_row(void *ctx, uint32_t row, hr_feat *out)
{
    table *t = ctx;
    t->reads++;
    if (row >= ROWS)
        return 0;
    memcpy(out, t->f[row], t->n[row] * sizeof *out);
    return t->n[row];
}

static void random_row(table *t, hr_rng *rng, uint32_t r)
{
    t->n[r] = hr_rng_below(rng, 10) < 3 ? 0 : 1 + (uint32_t)hr_rng_below(rng, 4);
    for (uint32_t a = 0; a < t->n[r]; a++) {
        /* context rows 5..40 and one far away; values 1 or any */
        uint32_t ctx = hr_rng_below(rng, 50) == 0 ? 70000 : 5 + (uint32_t)hr_rng_below(rng, 36);
        float x = hr_rng_below(rng, 2) ? 1.0f : (float)hr_rng_normal(rng);
        t->f[r][a] = (hr_feat){ctx, x};
    }
}

/* t for query j and a context row: any fixed values (0 for "none"). */
static float t_of(uint32_t ctx, size_t j)
{
    if (ctx == HR_ATTRMAT_NONE)
        return 0.0f;
    hr_rng rng;
    hr_rng_seed(&rng, ctx * 31u + j);
    return (float)hr_rng_normal(&rng);
}

/* The plain term of row r for query j. */
static float plain(const table *tb, uint32_t r, size_t j)
{
    double acc = 0;
    for (uint32_t a = 0; a < tb->n[r]; a++)
        acc += (double)tb->f[r][a].x * (double)t_of(tb->f[r][a].row, j);
    return (float)acc;
}

/* Each query's t over the matrix's columns (ldt = columns + LDT_PAD). */
static float *make_t(const hr_attrmat *a, size_t *ldt)
{
    const uint32_t *cols;
    uint32_t nc = hr_attrmat_cols(a, &cols);
    *ldt = nc + LDT_PAD;
    float *t = calloc(NQ * *ldt, sizeof *t);
    for (size_t j = 0; j < NQ; j++)
        for (uint32_t c = 0; c < nc; c++)
            t[j * *ldt + c] = t_of(cols[c], j);
    return t;
}

/* The kernel over [base, base + len) against the reference, bit for bit;
 * hr_attrmat_row too; the matrix's entry count. */
static void check(const hr_attrmat *a, const table *tb, uint32_t base, uint32_t len)
{
    size_t ldt;
    float *t = make_t(a, &ldt);
    float *y = malloc((size_t)len * LDY * sizeof *y), *y0 = malloc((size_t)len * LDY * sizeof *y0);
    hr_rng rng;
    hr_rng_seed(&rng, base * 7u + len);
    for (size_t i = 0; i < (size_t)len * LDY; i++)
        y[i] = y0[i] = (float)hr_rng_normal(&rng);
    hr_attrmat_add(a, base, len, t, ldt, NQ, y, LDY);
    for (uint32_t i = 0; i < len; i++) {
        uint32_t r = base + i;
        for (size_t j = 0; j < LDY; j++) {
            float want = y0[i * LDY + j];
            if (j < NQ && r < ROWS)
                want += plain(tb, r, j);
            if (memcmp(&want, &y[i * LDY + j], sizeof want) != 0)
                fail_msg("row %u query %zu: %.9g, want %.9g", r, j, y[i * LDY + j], want);
        }
        if (r < ROWS) {
            float got = hr_attrmat_row(a, r, t + ldt), want = plain(tb, r, 1);
            assert_memory_equal(&got, &want, sizeof got);
        }
    }
    uint64_t nnz = 0;
    for (uint32_t r = 0; r < ROWS; r++)
        nnz += tb->n[r];
    assert_int_equal(hr_attrmat_nnz(a), nnz);
    free(t);
    free(y);
    free(y0);
}

static void test_kernel_matches_reference(void **state)
{
    (void)state;
    table *tb = calloc(1, sizeof *tb);
    hr_rng rng;
    hr_rng_seed(&rng, 11);
    hr_attrmat *a;
    assert_int_equal(hr_attrmat_create(ROWS, &a), HR_OK);
    for (uint32_t r = 1; r < ROWS; r++) {
        random_row(tb, &rng, r);
        if (tb->n[r])
            hr_attrmat_touch(a, r);
    }
    assert_int_equal(hr_attrmat_acquire(a, read_row, tb), HR_OK);
    const uint32_t blocks[][2] = {{0, ROWS}, {13, 200}, {960, 40}, {64, 64}, {990, 30}, {5, 1}};
    for (size_t b = 0; b < sizeof blocks / sizeof *blocks; b++)
        check(a, tb, blocks[b][0], blocks[b][1]);
    const uint32_t *cols;
    uint32_t nc = hr_attrmat_cols(a, &cols);
    assert_true(nc >= 2 && nc <= 1 + 37); /* "none", then the distinct context rows */
    assert_int_equal(cols[0], HR_ATTRMAT_NONE);
    hr_attrmat_release(a);
    hr_attrmat_destroy(a);
    free(tb);
}

static void test_rebuilds_touched_segments(void **state)
{
    (void)state;
    table *tb = calloc(1, sizeof *tb);
    hr_rng rng;
    hr_rng_seed(&rng, 12);
    hr_attrmat *a;
    assert_int_equal(hr_attrmat_create(ROWS, &a), HR_OK);
    for (uint32_t r = 0; r < ROWS; r++) {
        random_row(tb, &rng, r);
        hr_attrmat_touch(a, r);
    }
    assert_int_equal(hr_attrmat_acquire(a, read_row, tb), HR_OK);
    hr_attrmat_release(a);
    assert_int_equal(tb->reads, ROWS); /* rows past max_rows are not read */
    /* nothing touched: nothing read */
    tb->reads = 0;
    assert_int_equal(hr_attrmat_acquire(a, read_row, tb), HR_OK);
    hr_attrmat_release(a);
    assert_int_equal(tb->reads, 0);
    /* two rows of one segment and one of another: two segments read */
    tb->n[130] = 2;
    tb->f[130][0] = (hr_feat){7, 1.0f};
    tb->f[130][1] = (hr_feat){8, -2.5f};
    hr_attrmat_touch(a, 130);
    tb->n[131] = 0;
    hr_attrmat_touch(a, 131);
    tb->n[700] = 1;
    tb->f[700][0] = (hr_feat){9, 3.0f};
    hr_attrmat_touch(a, 700);
    hr_attrmat_touch(a, ROWS + 5); /* out of range: ignored */
    assert_int_equal(hr_attrmat_acquire(a, read_row, tb), HR_OK);
    assert_int_equal(tb->reads, 2 * HR_ATTRMAT_SEG);
    check(a, tb, 0, ROWS);
    hr_attrmat_release(a);
    /* every row of segment 3 cleared: its entries leave the count */
    for (uint32_t r = 3 * HR_ATTRMAT_SEG; r < 4 * HR_ATTRMAT_SEG; r++) {
        tb->n[r] = 0;
        hr_attrmat_touch(a, r);
    }
    assert_int_equal(hr_attrmat_acquire(a, read_row, tb), HR_OK);
    check(a, tb, 0, ROWS);
    check(a, tb, 3 * HR_ATTRMAT_SEG, HR_ATTRMAT_SEG);
    hr_attrmat_release(a);
    hr_attrmat_destroy(a);
    hr_attrmat_destroy(NULL);
    free(tb);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kernel_matches_reference),
        cmocka_unit_test(test_rebuilds_touched_segments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

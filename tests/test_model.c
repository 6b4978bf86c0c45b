/* ctest-labels: concurrent */
/*
 * test_model.c - model storage: rows never move across chunk growth,
 * seeded deterministic init, min_count's shared default row, dirty marks,
 * BLAS item blocks, expiry and row reuse, context hashing, bytes per row,
 * and interning from several threads while trainers-like readers score.
 */
#include "testutil.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "hogrec/model.h"
#include "hogrec/sgd.h"

static hr_model *make_as(uint32_t k, hr_state_kind st, uint32_t min_count, double expire,
                        hr_storage storage)
{
    hr_model_config mc = {0};
    mc.storage = storage;
    mc.k = k;
    mc.state = st;
    mc.init_scale = 0.1f;
    mc.seed = 5;
    mc.chunk_rows = 64;
    mc.max_rows[HR_TABLE_GLOBAL] = 1;
    mc.max_rows[HR_TABLE_USER] = 100000;
    mc.max_rows[HR_TABLE_ITEM] = 100000;
    mc.max_rows[HR_TABLE_CTX] = 256;
    mc.min_count = min_count;
    mc.expire_seconds = expire;
    mc.adagrad_init = 0.1f;
    hr_model *m;
    hr_error err;
    assert_int_equal(hr_model_create(&mc, &m, &err), HR_OK);
    return m;
}

static hr_model *make(uint32_t k, hr_state_kind st, uint32_t min_count, double expire)
{
    return make_as(k, st, min_count, expire, HR_STORAGE_F32);
}

static uint32_t intern(hr_model *m, hr_table_id t, const char *id)
{
    uint32_t row;
    assert_int_equal(hr_model_intern(m, t, id, strlen(id), &row, NULL), HR_OK);
    return row;
}

static void test_rows_stay_put_and_init_is_seeded(void **state)
{
    (void)state;
    hr_model *a = make(8, HR_STATE_ADAGRAD, 0, 0), *b = make(8, HR_STATE_ADAGRAD, 0, 0);
    float *first = hr_model_row(a, HR_TABLE_USER, intern(a, HR_TABLE_USER, "u0"));
    float copy[64];
    memcpy(copy, first, hr_model_layout(a)->stride * sizeof(float));
    char id[32];
    for (int i = 1; i < 1000; i++) { /* 16 chunks */
        snprintf(id, sizeof id, "u%d", i);
        intern(a, HR_TABLE_USER, id);
    }
    for (int i = 999; i >= 0; i--) { /* ids in another order: init depends on the row only */
        snprintf(id, sizeof id, "u%d", i);
        intern(b, HR_TABLE_USER, id);
    }
    assert_ptr_equal(first, hr_model_row(a, HR_TABLE_USER, hr_model_lookup(a, HR_TABLE_USER, "u0", 2)));
    assert_memory_equal(first, copy, hr_model_layout(a)->stride * sizeof(float));
    /* the same row number has the same initial factors in both models */
    for (uint32_t r = 1; r < 1000; r++)
        assert_memory_equal(hr_model_row(a, HR_TABLE_USER, r), hr_model_row(b, HR_TABLE_USER, r),
                            hr_model_layout(a)->k * sizeof(float));
    assert_int_equal(hr_model_id_count(a, HR_TABLE_USER), 1000);
    assert_int_equal(hr_model_rows(a, HR_TABLE_USER), 1001);
    hr_model_destroy(a);
    hr_model_destroy(b);
}

static void test_min_count_uses_default_row(void **state)
{
    (void)state;
    hr_model *m = make(4, HR_STATE_SGD, 3, 0);
    uint32_t r = intern(m, HR_TABLE_ITEM, "fresh");
    const hr_row_layout *L = hr_model_layout(m);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(hr_model_effective_row(m, HR_TABLE_ITEM, r), 0);
        hr_sgd_touch(L, hr_model_row(m, HR_TABLE_ITEM, r), 1);
    }
    assert_int_equal(hr_model_effective_row(m, HR_TABLE_ITEM, r), r);
    hr_model_destroy(m);
}

static void test_dirty_marks(void **state)
{
    (void)state;
    hr_model *m = make(4, HR_STATE_SGD, 0, 0);
    uint32_t r = intern(m, HR_TABLE_USER, "x");
    assert_true(hr_model_take_dirty(m, HR_TABLE_USER, r)); /* new rows start dirty */
    assert_false(hr_model_take_dirty(m, HR_TABLE_USER, r));
    hr_model_mark_dirty(m, HR_TABLE_USER, r);
    hr_model_mark_dirty(m, HR_TABLE_USER, r);
    assert_int_equal(hr_model_count_dirty(m, HR_TABLE_USER), 2); /* r and the default row 0 */
    assert_true(hr_model_take_dirty(m, HR_TABLE_USER, r));
    hr_model_destroy(m);
}

static void test_item_blocks_cover_rows(void **state)
{
    (void)state;
    hr_model *m = make(4, HR_STATE_SGD, 0, 0);
    char id[32];
    for (int i = 0; i < 150; i++) {
        snprintf(id, sizeof id, "i%d", i);
        intern(m, HR_TABLE_ITEM, id);
    }
    uint32_t total = 0, nrows, lda;
    const float *blk;
    for (uint32_t b = 0; (blk = hr_model_item_block(m, b, &nrows, &lda)) != NULL; b++) {
        assert_int_equal(lda, hr_model_layout(m)->stride);
        assert_ptr_equal(blk, hr_model_row(m, HR_TABLE_ITEM, b * 64));
        total += nrows;
    }
    assert_int_equal(total, 151); /* ids plus the default row 0 */
    hr_model_destroy(m);
}

static void test_expiry_removes_and_reuses(void **state)
{
    (void)state;
    hr_model *m = make(4, HR_STATE_SGD, 0, 100);
    const hr_row_layout *L = hr_model_layout(m);
    uint32_t old = intern(m, HR_TABLE_USER, "old");
    uint32_t young = intern(m, HR_TABLE_USER, "young");
    uint32_t now = hr_model_clock(m) + 1000;
    hr_sgd_touch(L, hr_model_row(m, HR_TABLE_USER, young), now);
    assert_int_equal(hr_model_expire(m, now), 1);
    assert_int_equal(hr_model_lookup(m, HR_TABLE_USER, "old", 3), HR_ID_NONE);
    assert_int_equal(hr_model_lookup(m, HR_TABLE_USER, "young", 5), young);
    assert_int_equal(hr_model_expired_total(m), 1);
    uint32_t again = intern(m, HR_TABLE_USER, "newcomer");
    assert_int_equal(again, old); /* the freed row is reused ... */
    assert_int_equal(hr_sgd_row_count(L, hr_model_row(m, HR_TABLE_USER, again)), 0); /* ... fresh */
    hr_model_destroy(m);
}

static void test_ctx_rows_and_bytes_per_row(void **state)
{
    (void)state;
    hr_model *m = make(16, HR_STATE_SGD, 0, 0);
    uint32_t a = hr_model_ctx_row(m, "device", 6, "ios", 3);
    assert_int_equal(a, hr_model_ctx_row(m, "device", 6, "ios", 3));
    assert_true(a < 256);
    hr_model_destroy(m);
    /* rows carry k floats plus optimizer state within 1.25x */
    const uint32_t ks[] = {16, 64, 128};
    for (size_t i = 0; i < 3; i++) {
        hr_model *s = make(ks[i], HR_STATE_SGD, 0, 0), *g = make(ks[i], HR_STATE_ADAGRAD, 0, 0);
        double raw_sgd = ks[i] * 4.0, raw_ada = 2 * ks[i] * 4.0;
        assert_true(hr_model_layout(s)->floats * 4.0 <= 1.25 * raw_sgd);
        assert_true(hr_model_layout(g)->floats * 4.0 <= 1.25 * raw_ada);
        hr_model_destroy(s);
        hr_model_destroy(g);
    }
}

/* The model lays its rows out by the row rule (row.h), chunk and all, and
 * its link is the row link of its loss. */
static void test_layout_and_link_are_the_row_rules(void **state)
{
    (void)state;
    const hr_state_kind kinds[] = {HR_STATE_SGD, HR_STATE_ADAGRAD, HR_STATE_FTRL, HR_STATE_ADAM};
    for (size_t i = 0; i < HR_ARRAY_LEN(kinds); i++) {
        hr_model *m = make(12, kinds[i], 0, 0);
        hr_row_layout want = hr_row_layout_make(12, kinds[i], 64);
        assert_memory_equal(hr_model_layout(m), &want, sizeof want);
        assert_int_equal(want.stride % 4, 0);
        assert_true(want.stride >= 12 + 3);
        if (kinds[i] != HR_STATE_SGD)
            assert_int_equal(want.state, 64 * want.stride);
        if (kinds[i] == HR_STATE_ADAM) /* the second moments: a third block */
            assert_true(want.adam_v == 128 * want.stride && want.floats == 3 * want.stride);
        /* rows are distinct within a chunk: weights of row 1 follow row 0's */
        assert_ptr_equal(hr_model_row(m, HR_TABLE_CTX, 1), hr_model_row(m, HR_TABLE_CTX, 0) + want.stride);
        for (double y = -30; y <= 30; y += 7.5)
            assert_true(hr_model_link(m, y) == hr_row_link(HR_LOSS_LOGISTIC, y));
        hr_model_destroy(m);
    }
    assert_float_equal(hr_sigmoid(0), 0.5, 0);
    assert_float_equal(hr_sigmoid(2) + hr_sigmoid(-2), 1.0, 1e-15);
    assert_true(hr_row_link(HR_LOSS_SQUARED, 3.25) == 3.25);
}

typedef struct {
    hr_model *m;
    int base;
} job;

static void *interner(void *arg)
{
    job *j = arg;
    char id[32];
    for (int i = 0; i < 3000; i++) {
        snprintf(id, sizeof id, "k%d", (i * 7 + j->base) % 4000);
        uint32_t row;
        assert_int_equal(hr_model_intern(j->m, HR_TABLE_ITEM, id, strlen(id), &row, NULL), HR_OK);
        hr_event ev = {0};
        ev.item = row;
        (void)hr_model_predict(j->m, &ev);
    }
    return NULL;
}

static void test_concurrent_intern_and_score(void **state)
{
    (void)state;
    hr_model *m = make(8, HR_STATE_ADAGRAD, 0, 0);
    pthread_t th[4];
    job jobs[4];
    for (int t = 0; t < 4; t++) {
        jobs[t] = (job){m, t * 1000};
        pthread_create(&th[t], NULL, interner, &jobs[t]);
    }
    for (int t = 0; t < 4; t++)
        pthread_join(th[t], NULL);
    char id[32];
    for (int i = 0; i < 4000; i++) {
        snprintf(id, sizeof id, "k%d", i);
        uint32_t r = hr_model_lookup(m, HR_TABLE_ITEM, id, strlen(id));
        if (r == HR_ID_NONE)
            continue; /* not every id was drawn */
        size_t len;
        const char *key = hr_model_key(m, HR_TABLE_ITEM, r, &len);
        assert_non_null(key);
        assert_int_equal(len, strlen(id));
        assert_memory_equal(key, id, len);
    }
    assert_int_equal(hr_model_rows(m, HR_TABLE_ITEM), hr_model_id_count(m, HR_TABLE_ITEM) + 1);
    hr_model_destroy(m);
}

/* storage bf16: the layout is the row rule's (a dense weights block of a
 * smaller stride, the state cut into parts at fixed offsets); fresh rows
 * are the f32 model's seeded rows rounded to nearest; the row view
 * (hr_model_row_f32) widens them; a prediction equals the f32 model's on
 * the same values; every state part of every row is its own memory. */
static void test_bf16_rows(void **state)
{
    (void)state;
    const hr_state_kind kinds[] = {HR_STATE_SGD, HR_STATE_ADAGRAD, HR_STATE_FTRL, HR_STATE_ADAM};
    for (size_t i = 0; i < HR_ARRAY_LEN(kinds); i++) {
        hr_model *mb = make_as(20, kinds[i], 0, 0, HR_STORAGE_BF16);
        hr_model *mf = make_as(20, kinds[i], 0, 0, HR_STORAGE_F32);
        const hr_row_layout *L = hr_model_layout(mb), *Lf = hr_model_layout(mf);
        hr_row_layout want = hr_row_layout_make_storage(20, kinds[i], 64, HR_STORAGE_BF16);
        assert_memory_equal(L, &want, sizeof want);
        assert_int_equal(hr_model_storage(mb), HR_STORAGE_BF16);
        assert_true(L->stride < Lf->stride);
        assert_ptr_equal(hr_model_row(mb, HR_TABLE_CTX, 1), hr_model_row(mb, HR_TABLE_CTX, 0) + L->stride);
        if (kinds[i] != HR_STATE_SGD) {
            assert_int_equal(L->state, 64 * L->stride);
            assert_true(L->parts >= 1);
        }
        assert_int_equal(hr_model_supports(mb, HR_OPT_ADAM), hr_model_supports(mf, HR_OPT_ADAM));
        assert_int_equal(hr_model_supports(mb, HR_OPT_FTRL), hr_model_supports(mf, HR_OPT_FTRL));
        hr_row_layout F = hr_row_layout_f32(L);
        float wb[F.floats], wf[F.floats], view[21];
        char id[16];
        for (int u = 0; u < 70; u++) {
            snprintf(id, sizeof id, "u%d", u);
            uint32_t rb = intern(mb, HR_TABLE_USER, id), rf = intern(mf, HR_TABLE_USER, id);
            assert_int_equal(rb, rf);
            hr_sgd_row_to_f32(L, hr_model_row(mb, HR_TABLE_USER, rb), wb);
            hr_sgd_row_read(Lf, hr_model_row(mf, HR_TABLE_USER, rf), wf);
            for (uint32_t d = 0; d < 20; d++)
                assert_true(wb[d] == hr_bf16_to_float(hr_bf16_round(wf[d])));
            assert_memory_equal(wb + F.bias, wf + F.bias, 2 * sizeof(float)); /* bias, count */
            assert_memory_equal(wb + F.stride, wf + F.stride, (F.floats - F.stride) * sizeof(float));
            const float *v = hr_model_row_f32(mb, HR_TABLE_USER, rb, view);
            assert_ptr_equal(v, view);
            assert_memory_equal(v, wb, 21 * sizeof(float));
            /* the f32 model takes the rounded values: the same numbers */
            hr_sgd_row_write(Lf, hr_model_row(mf, HR_TABLE_USER, rf), wb);
            /* a write to this row's state parts changes no other row */
            if (L->parts) {
                float *r = hr_model_row(mb, HR_TABLE_USER, rb);
                for (uint32_t j = 1; j <= L->parts; j++)
                    r[j * L->state + L->stride - 1] += 1.0f;
            }
        }
        for (int u = 0; u < 70 && L->parts; u++) {
            snprintf(id, sizeof id, "u%d", u);
            uint32_t rb = hr_model_lookup(mb, HR_TABLE_USER, id, strlen(id));
            const float *r = hr_model_row(mb, HR_TABLE_USER, rb);
            hr_sgd_row_read(L, r, wb);
            for (uint32_t j = 1; j <= L->parts; j++)
                assert_true(wb[(j + 1) * L->stride - 1] >= 1.0f);
            hr_model_prefetch(mb, HR_TABLE_USER, rb);
        }
        if (L->parts) { /* undo, for the predictions below */
            for (int u = 0; u < 70; u++) {
                snprintf(id, sizeof id, "u%d", u);
                uint32_t rb = hr_model_lookup(mb, HR_TABLE_USER, id, strlen(id));
                float *r = hr_model_row(mb, HR_TABLE_USER, rb);
                for (uint32_t j = 1; j <= L->parts; j++)
                    r[j * L->state + L->stride - 1] -= 1.0f;
            }
        }
        snprintf(id, sizeof id, "i1");
        uint32_t ib = intern(mb, HR_TABLE_ITEM, id), ifr = intern(mf, HR_TABLE_ITEM, id);
        hr_sgd_row_to_f32(L, hr_model_row(mb, HR_TABLE_ITEM, ib), wb);
        hr_sgd_row_write(Lf, hr_model_row(mf, HR_TABLE_ITEM, ifr), wb);
        for (int u = 0; u < 70; u++) {
            snprintf(id, sizeof id, "u%d", u);
            hr_event ev = {.user = hr_model_lookup(mb, HR_TABLE_USER, id, strlen(id)), .item = ib};
            double pb = hr_model_predict(mb, &ev), pf = hr_model_predict(mf, &ev);
            assert_memory_equal(&pb, &pf, sizeof pb);
        }
        hr_model_destroy(mb);
        hr_model_destroy(mf);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bf16_rows),
        cmocka_unit_test(test_rows_stay_put_and_init_is_seeded),
        cmocka_unit_test(test_min_count_uses_default_row),
        cmocka_unit_test(test_dirty_marks),
        cmocka_unit_test(test_item_blocks_cover_rows),
        cmocka_unit_test(test_expiry_removes_and_reuses),
        cmocka_unit_test(test_ctx_rows_and_bytes_per_row),
        cmocka_unit_test(test_layout_and_link_are_the_row_rules),
        cmocka_unit_test(test_concurrent_intern_and_score),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * test_stats.c - progressive validation against plain references: AUC
 * against the O(n^2) pair count (ties as one half), windowed logloss and
 * calibration, and histogram quantiles.
 */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>

#include "hogrec/stats.h"

static double auc_pairs(const float *s, const float *l, size_t n)
{
    double good = 0, pairs = 0;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++)
            if (l[i] >= 0.5f && l[j] < 0.5f) {
                pairs++;
                good += s[i] > s[j] ? 1 : s[i] == s[j] ? 0.5 : 0;
            }
    return good / pairs;
}

static void test_auc_matches_pair_count(void **state)
{
    (void)state;
    hr_rng rng;
    hr_rng_seed(&rng, 3);
    float s[500], l[500];
    for (int round = 0; round < 10; round++) {
        for (int i = 0; i < 500; i++) {
            s[i] = (float)(hr_rng_below(&rng, 20)) / 20.0f; /* many ties */
            l[i] = hr_rng_uniform(&rng) < 0.3 + 0.5 * s[i] ? 1.0f : 0.0f;
        }
        assert_float_equal(hr_auc(s, l, 500), auc_pairs(s, l, 500), 1e-9);
    }
    float one[3] = {0.1f, 0.2f, 0.3f}, ones[3] = {1, 1, 1};
    assert_true(isnan(hr_auc(one, ones, 3)));
}

static void test_window_logloss_and_calibration(void **state)
{
    (void)state;
    hr_progress *p;
    assert_int_equal(hr_progress_create(4, 0, &p), HR_OK);
    hr_progress_point pts[6] = {{0.9f, 1, 1}, {0.9f, 1, 1}, {0.2f, 0, 1}, {0.8f, 1, 1}, {0.3f, 0, 1}, {0.6f, 0, 1}};
    hr_progress_add(p, pts, 6);
    hr_progress_report r;
    hr_progress_get(p, 0, &r);
    assert_int_equal(r.total, 6);
    assert_int_equal(r.n, 4); /* the window keeps the last 4 */
    double ll = (hr_logloss(0.2, 0) + hr_logloss(0.8, 1) + hr_logloss(0.3, 0) + hr_logloss(0.6, 0)) / 4;
    assert_float_equal(r.loss, ll, 1e-6);
    assert_float_equal(r.mean_pred, (0.2 + 0.8 + 0.3 + 0.6) / 4, 1e-6);
    assert_float_equal(r.mean_label, 0.25, 1e-9);
    hr_progress_get(p, 2, &r); /* the last two only */
    assert_int_equal(r.n, 2);
    assert_float_equal(r.loss, (hr_logloss(0.3, 0) + hr_logloss(0.6, 0)) / 2, 1e-6);
    double all = 0;
    for (int i = 0; i < 6; i++)
        all += hr_logloss(pts[i].pred, pts[i].label);
    assert_float_equal(r.loss_total, all / 6, 1e-6);
    hr_progress_destroy(p);
}

static void test_hist_quantiles(void **state)
{
    (void)state;
    static hr_hist h; /* zero-initialized */
    for (uint64_t v = 1; v <= 1000; v++)
        hr_hist_add(&h, v);
    uint64_t p50 = hr_hist_quantile(&h, 0.5), p99 = hr_hist_quantile(&h, 0.99);
    assert_true(p50 >= 500 && p50 < 1024); /* bucket upper bounds */
    assert_true(p99 >= 990 && p99 < 1024);
    assert_true(hr_hist_quantile(&h, 0.0) <= 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_auc_matches_pair_count),
        cmocka_unit_test(test_window_logloss_and_calibration),
        cmocka_unit_test(test_hist_quantiles),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

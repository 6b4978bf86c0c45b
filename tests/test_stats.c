/*
 * test_stats.c - progressive validation against plain references: AUC
 * against the O(n^2) pair count (ties as one half), windowed logloss and
 * calibration, and histogram quantiles. NaN and infinite scores and
 * predictions: every call ends, and the figures are those of the finite rest.
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
            if (!isnan(s[i]) && !isnan(s[j]) && l[i] >= 0.5f && l[j] < 0.5f) {
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

/* The window after batches of every size, smaller and larger than the
 * window, across the ring's end, with and without non-finite points: the
 * last n points (n = 1 .. window) are those a plain list of the finite
 * points ends with (checked through their mean prediction, weight 1). */
static void test_window_ring_against_list(void **state)
{
    (void)state;
    enum { WINDOW = 7, ROUNDS = 300, MAXB = 20 };
    hr_progress *p;
    assert_int_equal(hr_progress_create(WINDOW, 0, &p), HR_OK);
    float *list = malloc(ROUNDS * MAXB * sizeof *list);
    assert_non_null(list);
    size_t nlist = 0;
    hr_rng rng;
    hr_rng_seed(&rng, 5);
    for (int r = 0; r < ROUNDS; r++) {
        hr_progress_point pts[MAXB];
        size_t n = (size_t)hr_rng_below(&rng, MAXB + 1);
        bool with_bad = hr_rng_below(&rng, 4) == 0;
        for (size_t i = 0; i < n; i++) {
            pts[i] = (hr_progress_point){(float)hr_rng_uniform(&rng), (float)(i & 1), 1};
            if (with_bad && hr_rng_below(&rng, 3) == 0)
                pts[i].pred = NAN;
            else
                list[nlist++] = pts[i].pred;
        }
        hr_progress_add(p, pts, n);
        size_t have = nlist < WINDOW ? nlist : WINDOW;
        for (size_t last = 1; last <= have; last++) {
            hr_progress_report rep;
            hr_progress_get(p, last, &rep);
            assert_int_equal(rep.n, last);
            double mp = 0;
            for (size_t i = nlist - last; i < nlist; i++)
                mp += list[i];
            assert_float_equal(rep.mean_pred, mp / (double)last, 1e-12);
        }
    }
    free(list);
    hr_progress_destroy(p);
}

/* hr_logloss of a 0 or 1 label takes one log: the same bits as the general
 * form -(y log p + (1 - y) log(1 - p)) with p clamped to [1e-7, 1 - 1e-7],
 * over random and edge predictions; a fractional label takes the general
 * form. */
static void test_logloss_click_labels_match_general_form(void **state)
{
    (void)state;
    hr_rng rng;
    hr_rng_seed(&rng, 11);
    const double edge[] = {0, 1e-9, 1e-7, 0.5, 1 - 1e-7, 1 - 1e-9, 1};
    for (int i = 0; i < 20000; i++) {
        double p = i < 7 ? edge[i] : hr_rng_uniform(&rng);
        double pc = p < 1e-7 ? 1e-7 : p > 1 - 1e-7 ? 1 - 1e-7 : p;
        for (int y = 0; y <= 1; y++) {
            volatile double yd = y; /* the general form, not folded */
            double ref = -(yd * log(pc) + (1 - yd) * log(1 - pc));
            double got = hr_logloss(p, y);
            assert_memory_equal(&got, &ref, sizeof got);
        }
        double ref = -(0.25 * log(pc) + 0.75 * log(1 - pc));
        assert_float_equal(hr_logloss(p, 0.25), ref, 0);
    }
}

/* Scores with NaN, +inf and -inf among ties: the AUC call ends, and it is
 * the pair count over the scores that are not NaN (infinities rank last
 * and first, and tie with each other). */
typedef struct {
    float s[400], l[400];
    size_t n;
} auc_case;

static void auc_case_fill(auc_case *c, uint64_t seed, double p_nan)
{
    hr_rng rng;
    hr_rng_seed(&rng, seed);
    c->n = 400;
    for (size_t i = 0; i < c->n; i++) {
        double u = hr_rng_uniform(&rng);
        c->s[i] = u < p_nan ? NAN : u < p_nan + 0.1 ? INFINITY : u < p_nan + 0.2 ? -INFINITY
                                                                              : (float)(hr_rng_below(&rng, 10)) / 10.0f;
        c->l[i] = hr_rng_uniform(&rng) < 0.4 ? 1.0f : 0.0f;
    }
}

static void run_auc(void *arg)
{
    auc_case *c = arg;
    (void)hr_auc(c->s, c->l, c->n);
}

static void test_auc_nonfinite_scores(void **state)
{
    (void)state;
    const double p_nan[] = {0.05, 0.5, 1.0};
    for (size_t k = 0; k < HR_ARRAY_LEN(p_nan); k++) {
        auc_case c;
        auc_case_fill(&c, 11 + k, p_nan[k]);
        assert_true(tu_terminates(run_auc, &c, 60));
        double got = hr_auc(c.s, c.l, c.n), want = auc_pairs(c.s, c.l, c.n);
        if (p_nan[k] >= 1.0) {
            assert_true(isnan(got)); /* nothing left to rank */
        } else {
            assert_false(isnan(got));
            assert_float_equal(got, want, 1e-9);
        }
    }
}

/* Points with a NaN or infinite prediction are counted, not added: the
 * windowed loss, AUC and calibration are those of the finite points. */
static void run_progress(void *arg)
{
    hr_progress *p = arg;
    hr_progress_report r;
    hr_progress_get(p, 0, &r);
}

static void test_progress_refuses_nonfinite(void **state)
{
    (void)state;
    for (int squared = 0; squared <= 1; squared++) {
        hr_progress *p, *ref;
        assert_int_equal(hr_progress_create(16, squared, &p), HR_OK);
        assert_int_equal(hr_progress_create(16, squared, &ref), HR_OK);
        hr_progress_point pts[] = {{0.9f, 1, 1}, {NAN, 1, 1},      {0.2f, 0, 1},
                                   {INFINITY, 0, 1}, {0.7f, 0, 1}, {-INFINITY, 1, 1},
                                   {0.6f, 1, 1}, {0.5f, NAN, 1},   {0.4f, 1, INFINITY}};
        hr_progress_point fin[] = {{0.9f, 1, 1}, {0.2f, 0, 1}, {0.7f, 0, 1}, {0.6f, 1, 1}};
        hr_progress_add(p, pts, HR_ARRAY_LEN(pts));
        hr_progress_add(ref, fin, HR_ARRAY_LEN(fin));
        assert_true(tu_terminates(run_progress, p, 60));
        hr_progress_report r, w;
        hr_progress_get(p, 0, &r);
        hr_progress_get(ref, 0, &w);
        assert_int_equal(r.nonfinite, 5);
        assert_int_equal(r.total, 4);
        assert_int_equal(r.n, 4);
        assert_int_equal(w.nonfinite, 0);
        assert_true(isfinite(r.loss) && isfinite(r.loss_total) && isfinite(r.rmse));
        assert_float_equal(r.loss, w.loss, 1e-12);
        assert_float_equal(r.loss_total, w.loss_total, 1e-12);
        assert_float_equal(r.mean_pred, w.mean_pred, 1e-12);
        if (!squared)
            assert_float_equal(r.auc, w.auc, 1e-12);
        hr_progress_destroy(p);
        hr_progress_destroy(ref);
    }
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

/* Counts gathered with hr_hist_bucket and added at once equal the same
 * values added one by one (the trainers add a batch's staleness that way). */
static void test_hist_counts_equal_single_adds(void **state)
{
    (void)state;
    static hr_hist one, many; /* zero-initialized */
    uint64_t b[HR_HIST_BUCKETS] = {0}, count = 0, sum = 0;
    hr_rng rng;
    hr_rng_seed(&rng, 11);
    for (int i = 0; i < 5000; i++) {
        int shift = (int)hr_rng_below(&rng, 64);
        uint64_t v = i < 3 ? (uint64_t)i * UINT64_MAX / 2 : hr_rng_next(&rng) >> shift;
        hr_hist_add_owned(&one, v);
        b[hr_hist_bucket(v)]++;
        count++;
        sum += v;
    }
    hr_hist_add_counts_owned(&many, b, count, sum);
    for (int i = 0; i < HR_HIST_BUCKETS; i++)
        assert_int_equal(atomic_load(&one.b[i]), atomic_load(&many.b[i]));
    assert_int_equal(atomic_load(&one.count), atomic_load(&many.count));
    assert_int_equal(atomic_load(&one.sum), atomic_load(&many.sum));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_auc_matches_pair_count),
        cmocka_unit_test(test_window_logloss_and_calibration),
        cmocka_unit_test(test_logloss_click_labels_match_general_form),
        cmocka_unit_test(test_window_ring_against_list),
        cmocka_unit_test(test_auc_nonfinite_scores),
        cmocka_unit_test(test_progress_refuses_nonfinite),
        cmocka_unit_test(test_hist_quantiles),
        cmocka_unit_test(test_hist_counts_equal_single_adds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

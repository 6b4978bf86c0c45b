/*
 * test_history.c - tests of the serving history (src/history.c): each
 * user's ring of recent items and the decayed popularity per item.
 *
 * Rings: most recent first, at most per_user kept (the oldest fall out),
 * an item that is already the most recent is not repeated, events whose
 * seq is not above the ring's are skipped (seq 0 always recorded), rows 0
 * and out of range are ignored, a restored ring keeps its first per_user
 * items and its seq. Popularity: a weight halves every half_life seconds
 * after its arrival (checked against 2^(-age/half_life) at injected
 * times, never by sleeping), half_life 0 is a plain count, the ranking
 * survives an epoch move, popular() ranks by score (ties: lower row) and
 * leaves out row 0, excluded rows and rows the model has no id for.
 * Threads adding to the same items and rings lose no event.
 */
/* ctest-labels: concurrent */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hogrec/history.h"
#include "testutil.h"

/* |got - want| within rel (relative; floats keep 24 bits). */
static void assert_near(double got, double want, double rel)
{
    if (!(fabs(got - want) <= rel * fabs(want)))
        fail_msg("got %.9g, want %.9g (relative tolerance %g)", got, want, rel);
}

/* ---- rings ---- */

static void test_ring_order_and_capacity(void **state)
{
    (void)state;
    const uint32_t H = 4;
    hr_history *h;
    assert_int_equal(hr_history_create(64, 64, H, 0, &h), HR_OK);
    uint32_t out[16];
    uint64_t seq = 99;
    assert_int_equal(hr_history_recent(h, 3, out, 16, &seq), 0); /* never seen */
    assert_int_equal(seq, 0);
    for (uint32_t i = 1; i <= 10; i++)
        assert_int_equal(hr_history_add(h, 3, 10 + i, i), HR_OK);
    assert_int_equal(hr_history_recent(h, 3, out, 16, &seq), H);
    assert_int_equal(seq, 10);
    for (uint32_t i = 0; i < H; i++) /* the last H, most recent first */
        assert_int_equal(out[i], 20 - i);
    assert_int_equal(hr_history_recent(h, 3, out, 2, NULL), 2); /* max bounds the copy */
    assert_int_equal(out[0], 20);
    assert_int_equal(out[1], 19);
    /* other users are untouched, also those sharing a lock stripe */
    assert_int_equal(hr_history_recent(h, 4, out, 16, NULL), 0);
    hr_history_destroy(h);
    hr_history_destroy(NULL);
}

static void test_ring_repeats_and_seq(void **state)
{
    (void)state;
    hr_history *h;
    assert_int_equal(hr_history_create(64, 64, 5, 0, &h), HR_OK);
    uint32_t out[8];
    uint64_t seq;
    /* an item that is already the most recent is not repeated; one seen
     * before something else is */
    hr_history_add(h, 1, 7, 1);
    hr_history_add(h, 1, 7, 2);
    hr_history_add(h, 1, 8, 3);
    hr_history_add(h, 1, 7, 4);
    assert_int_equal(hr_history_recent(h, 1, out, 8, &seq), 3);
    assert_int_equal(out[0], 7);
    assert_int_equal(out[1], 8);
    assert_int_equal(out[2], 7);
    assert_int_equal(seq, 4); /* the repeat still advanced the seq */
    /* seq not above the ring's: already taken, skipped */
    hr_history_add(h, 1, 9, 4);
    hr_history_add(h, 1, 9, 3);
    assert_int_equal(hr_history_recent(h, 1, out, 8, &seq), 3);
    assert_int_equal(out[0], 7);
    assert_int_equal(seq, 4);
    /* seq 0: unsequenced, always recorded, seq unchanged */
    hr_history_add(h, 1, 9, 0);
    assert_int_equal(hr_history_recent(h, 1, out, 8, &seq), 4);
    assert_int_equal(out[0], 9);
    assert_int_equal(seq, 4);
    /* row 0 and rows out of range are ignored */
    assert_int_equal(hr_history_add(h, 0, 5, 10), HR_OK);
    assert_int_equal(hr_history_add(h, 64, 5, 10), HR_OK);
    assert_int_equal(hr_history_add(h, 2, 0, 10), HR_OK);
    assert_int_equal(hr_history_add(h, 2, 64, 10), HR_OK);
    assert_int_equal(hr_history_recent(h, 0, out, 8, NULL), 0);
    assert_int_equal(hr_history_recent(h, 64, out, 8, NULL), 0);
    assert_int_equal(hr_history_recent(h, 2, out, 8, &seq), 0);
    assert_int_equal(seq, 0);
    assert_int_equal(hr_history_recent(h, 1, out, 8, &seq), 4);
    assert_int_equal(seq, 4);
    hr_history_destroy(h);
}

static void test_ring_set_restores(void **state)
{
    (void)state;
    hr_history *h;
    assert_int_equal(hr_history_create(5000, 64, 3, 0, &h), HR_OK);
    uint32_t out[8];
    uint64_t seq;
    const uint32_t items[] = {40, 30, 20, 10}; /* most recent first; 3 kept */
    /* a user in the second block of rows */
    assert_int_equal(hr_history_set_ring(h, 4500, items, 4, 77), HR_OK);
    assert_int_equal(hr_history_recent(h, 4500, out, 8, &seq), 3);
    assert_int_equal(seq, 77);
    assert_int_equal(out[0], 40);
    assert_int_equal(out[1], 30);
    assert_int_equal(out[2], 20);
    /* a replay over the restored ring skips what it holds, takes what follows */
    hr_history_add(h, 4500, 50, 77);
    hr_history_add(h, 4500, 60, 78);
    assert_int_equal(hr_history_recent(h, 4500, out, 8, &seq), 3);
    assert_int_equal(seq, 78);
    assert_int_equal(out[0], 60);
    assert_int_equal(out[1], 40);
    assert_int_equal(out[2], 30);
    /* replacing, not merging */
    assert_int_equal(hr_history_set_ring(h, 4500, items + 3, 1, 5), HR_OK);
    assert_int_equal(hr_history_recent(h, 4500, out, 8, &seq), 1);
    assert_int_equal(out[0], 10);
    assert_int_equal(seq, 5);
    hr_history_destroy(h);

    /* per_user 0: no history at all */
    assert_int_equal(hr_history_create(64, 64, 0, 0, &h), HR_OK);
    assert_int_equal(hr_history_add(h, 1, 2, 1), HR_OK);
    assert_int_equal(hr_history_set_ring(h, 1, items, 4, 1), HR_OK);
    assert_int_equal(hr_history_recent(h, 1, out, 8, NULL), 0);
    hr_history_destroy(h);
}

/* ---- popularity ---- */

static void test_popularity_halves_per_half_life(void **state)
{
    (void)state;
    const double half = 3600;
    hr_history *h;
    assert_int_equal(hr_history_create(16, 4096 * 2, 0, half, &h), HR_OK);
    double t0 = hr_wall_time();
    assert_int_equal(hr_history_pop_add(h, 1, t0), HR_OK);
    assert_near(hr_history_score(h, 1, t0), 1.0, 1e-6);
    for (int n = 1; n <= 10; n++) /* a score halves after each half-life */
        assert_near(hr_history_score(h, 1, t0 + n * half), ldexp(1.0, -n), 1e-6);
    assert_near(hr_history_score(h, 1, t0 + half / 2), sqrt(0.5), 1e-6);
    /* weights add: events at t0, t0 + H, t0 + 2H seen at t0 + 2H */
    hr_history_pop_add(h, 5000, t0); /* an item in the second block */
    hr_history_pop_add(h, 5000, t0 + half);
    hr_history_pop_add(h, 5000, t0 + 2 * half);
    assert_near(hr_history_score(h, 5000, t0 + 2 * half), 0.25 + 0.5 + 1, 1e-6);
    assert_near(hr_history_score(h, 5000, t0 + 3 * half), (0.25 + 0.5 + 1) / 2, 1e-6);
    /* items without events, row 0, rows out of range */
    assert_true(hr_history_score(h, 2, t0) == 0);
    assert_int_equal(hr_history_pop_add(h, 0, t0), HR_OK);
    assert_int_equal(hr_history_pop_add(h, 4096 * 2, t0), HR_OK);
    assert_true(hr_history_score(h, 0, t0) == 0);
    assert_true(hr_history_score(h, 4096 * 2, t0) == 0);
    /* set as of a time, read back decayed from that time */
    assert_int_equal(hr_history_pop_set(h, 3, 6.0, t0 + half), HR_OK);
    assert_near(hr_history_score(h, 3, t0 + 2 * half), 3.0, 1e-6);
    float copy[6];
    hr_history_pop_copy(h, 6, t0 + 2 * half, copy);
    assert_true(copy[0] == 0 && copy[2] == 0 && copy[4] == 0 && copy[5] == 0);
    assert_near(copy[1], 0.25, 1e-6);
    assert_near(copy[3], 3.0, 1e-6);
    hr_history_destroy(h);
}

static void test_popularity_without_decay_counts(void **state)
{
    (void)state;
    hr_history *h;
    assert_int_equal(hr_history_create(16, 16, 0, 0, &h), HR_OK);
    double t0 = hr_wall_time();
    for (int i = 0; i < 5; i++)
        hr_history_pop_add(h, 2, t0 + i * 1e6); /* times do not matter */
    assert_true(hr_history_score(h, 2, t0) == 5);
    assert_true(hr_history_score(h, 2, t0 + 1e9) == 5);
    hr_history_pop_set(h, 3, 7, t0);
    assert_true(hr_history_score(h, 3, t0 + 1e9) == 7);
    /* copying more rows than the table has: the rest are zero */
    float copy[20];
    for (int i = 0; i < 20; i++)
        copy[i] = -1;
    hr_history_pop_copy(h, 20, t0, copy);
    assert_true(copy[2] == 5 && copy[3] == 7);
    for (int i = 16; i < 20; i++)
        assert_true(copy[i] == 0);
    hr_history_destroy(h);
}

static void test_popularity_epoch_move_keeps_ratios(void **state)
{
    (void)state;
    const double half = 60;
    hr_history *h;
    assert_int_equal(hr_history_create(16, 16, 0, half, &h), HR_OK);
    double t0 = hr_wall_time();
    hr_history_pop_add(h, 1, t0);
    hr_history_pop_add(h, 1, t0);
    hr_history_pop_add(h, 1, t0);
    hr_history_pop_add(h, 2, t0 + half);
    /* far beyond the span the values keep relative to one epoch */
    double later = t0 + 40 * half;
    hr_history_pop_add(h, 3, later);
    double a = hr_history_score(h, 1, later), b = hr_history_score(h, 2, later);
    assert_near(hr_history_score(h, 3, later), 1.0, 1e-6);
    assert_near(a, 3 * ldexp(1.0, -40), 1e-5);
    assert_near(b, ldexp(1.0, -39), 1e-5);
    assert_near(a / b, 1.5, 1e-5);
    /* and again, 200 half-lives on: old weights vanish, nothing overflows */
    double much_later = later + 200 * half;
    hr_history_pop_add(h, 4, much_later);
    assert_near(hr_history_score(h, 4, much_later), 1.0, 1e-6);
    assert_true(isfinite(hr_history_score(h, 3, much_later)));
    assert_true(hr_history_score(h, 3, much_later) < 1e-30);
    hr_history_destroy(h);
}

/* ---- popular() ---- */

static uint32_t item_row(hr_model *m, const char *id)
{
    uint32_t r;
    assert_int_equal(hr_model_intern(m, HR_TABLE_ITEM, id, strlen(id), &r, NULL), HR_OK);
    return r;
}

static void test_popular_ranks_and_excludes(void **state)
{
    (void)state;
    hr_model *m = tu_small_model(64, 64);
    const double half = 100;
    hr_history *h;
    assert_int_equal(hr_history_create(64, 64, 0, half, &h), HR_OK);
    double t0 = hr_wall_time();
    uint32_t r[6];
    char id[16];
    for (int i = 0; i < 6; i++) {
        snprintf(id, sizeof id, "item%d", i);
        r[i] = item_row(m, id);
    }
    /* scores at t0 + H: r0 = 1 (two events one half-life old),
     * r1 = 2, r2 = 1 (one fresh; ties r0), r3 = 0.5, r4 none, r5 = 3 */
    hr_history_pop_add(h, r[0], t0);
    hr_history_pop_add(h, r[0], t0);
    hr_history_pop_add(h, r[1], t0 + half);
    hr_history_pop_add(h, r[1], t0 + half);
    hr_history_pop_add(h, r[2], t0 + half);
    hr_history_pop_add(h, r[3], t0);
    for (int i = 0; i < 3; i++)
        hr_history_pop_add(h, r[5], t0 + half);
    /* a row the model has no id for (beyond its rows) and row 0 */
    hr_history_pop_add(h, 50, t0 + half);
    hr_history_pop_add(h, 50, t0 + half);
    hr_history_pop_add(h, 50, t0 + half);
    hr_history_pop_add(h, 50, t0 + half);
    hr_history_pop_add(h, 0, t0 + half);
    double now = t0 + half;
    hr_topk_item top[8];
    size_t n = hr_history_popular(h, m, 8, now, NULL, top);
    const uint32_t want[] = {r[5], r[1], r[0] < r[2] ? r[0] : r[2], r[0] < r[2] ? r[2] : r[0],
                             r[3]};
    const double want_score[] = {3, 2, 1, 1, 0.5};
    assert_int_equal(n, 5);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(top[i].row, want[i]);
        assert_near(top[i].score, want_score[i], 1e-5);
    }
    /* k bounds the answer */
    assert_int_equal(hr_history_popular(h, m, 2, now, NULL, top), 2);
    assert_int_equal(top[0].row, r[5]);
    assert_int_equal(top[1].row, r[1]);
    /* excluded rows are left out (a sorted list) */
    uint32_t ex_rows[] = {r[5], r[0]};
    hr_topk_sort_rows(ex_rows, 2);
    hr_topk_exclude ex = {ex_rows, 2, NULL, 0, 0};
    n = hr_history_popular(h, m, 8, now, &ex, top);
    assert_int_equal(n, 3);
    assert_int_equal(top[0].row, r[1]);
    assert_int_equal(top[1].row, r[2]);
    assert_int_equal(top[2].row, r[3]);
    /* a half-life later every score has halved, the order is the same */
    n = hr_history_popular(h, m, 1, now + half, NULL, top);
    assert_int_equal(n, 1);
    assert_int_equal(top[0].row, r[5]);
    assert_near(top[0].score, 1.5, 1e-5);
    hr_history_destroy(h);
    hr_model_destroy(m);
}

/* ---- threads ---- */

#define THREADS 4
#define ADDS 5000

typedef struct {
    hr_history *h;
    int no;
    int failures;
} worker;

static void *add_loop(void *arg)
{
    worker *w = arg;
    double t0 = 1e9;
    for (int i = 0; i < ADDS; i++) {
        /* every thread: the same items, and its own users (1..THREADS, and
         * the users 256 rows on, which share their lock stripe) */
        if (hr_history_pop_add(w->h, 1 + (uint32_t)(i % 3), t0 + i) != HR_OK)
            w->failures++;
        uint32_t user = 1 + (uint32_t)w->no + (i % 2 ? 256u : 0u);
        if (hr_history_add(w->h, user, 1 + (uint32_t)(i % 1000), (uint64_t)i + 1) != HR_OK)
            w->failures++;
    }
    return NULL;
}

static void test_threads_lose_nothing(void **state)
{
    (void)state;
    hr_history *h;
    assert_int_equal(hr_history_create(1024, 1024, 8, 0, &h), HR_OK);
    pthread_t t[THREADS];
    worker w[THREADS];
    for (int i = 0; i < THREADS; i++) {
        w[i] = (worker){h, i, 0};
        assert_int_equal(pthread_create(&t[i], NULL, add_loop, &w[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(w[i].failures, 0);
    }
    /* counts (half_life 0) are exact: each item got THREADS * its share */
    double total = 0;
    for (uint32_t item = 1; item <= 3; item++) {
        double want = THREADS * ((ADDS + 3 - (int)item) / 3);
        assert_true(hr_history_score(h, item, 0) == want);
        total += want;
    }
    assert_true(total == THREADS * ADDS);
    /* each ring took its own user's events in seq order */
    for (int i = 0; i < THREADS; i++) {
        uint32_t out[8];
        uint64_t seq;
        uint32_t even = 1 + (uint32_t)i, odd = even + 256;
        assert_int_equal(hr_history_recent(h, even, out, 8, &seq), 8);
        assert_int_equal(seq, ADDS - 1); /* the last even i is ADDS - 2, seq ADDS - 1 */
        assert_int_equal(out[0], 1 + (ADDS - 2) % 1000);
        assert_int_equal(out[1], 1 + (ADDS - 4) % 1000);
        assert_int_equal(hr_history_recent(h, odd, out, 8, &seq), 8);
        assert_int_equal(seq, ADDS);
        assert_int_equal(out[0], 1 + (ADDS - 1) % 1000);
    }
    hr_history_destroy(h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ring_order_and_capacity),
        cmocka_unit_test(test_ring_repeats_and_seq),
        cmocka_unit_test(test_ring_set_restores),
        cmocka_unit_test(test_popularity_halves_per_half_life),
        cmocka_unit_test(test_popularity_without_decay_counts),
        cmocka_unit_test(test_popularity_epoch_move_keeps_ratios),
        cmocka_unit_test(test_popular_ranks_and_excludes),
        cmocka_unit_test(test_threads_lose_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

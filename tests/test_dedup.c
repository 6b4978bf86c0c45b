/*
 * test_dedup.c - tests of the de-duplication window (src/dedup.c).
 *
 * The capacity guarantee: with exactly `capacity` ids claimed within the
 * window, every one is found again (a power-of-two and an odd capacity);
 * with capacity + n, the n oldest are forgotten, counted as evicted, and the
 * rest found, also when the ids arrive out of time order (a restore); ids
 * past the window and released ids free their room without evictions; the
 * issue's load (1.2 capacities of ids, then the first sixth resent) scaled
 * down to a table sized for it finds every resent id; an export restores
 * into a table of the same capacity whole, and into a smaller one keeps the
 * newest ids. A plain reference model (arrays, linear scans) is run against
 * the table on random claim/confirm/release/remember sequences at small
 * capacities, where probe clusters wrap around the index. Threads claiming
 * the same ids at once: each id is fresh for exactly one of them.
 *
 * Times are injected (the `now` arguments); every PRNG is seeded.
 */
/* ctest-labels: concurrent */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "hogrec/dedup.h"
#include "testutil.h"

#define WINDOW 600.0
#define T0 1000.0

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* n distinct nonzero 63-bit id hashes from seed. */
static uint64_t *random_ids(size_t n, uint64_t seed)
{
    uint64_t *ids = malloc(n * sizeof *ids);
    assert_non_null(ids);
    for (size_t i = 0; i < n; i++) {
        uint64_t h;
        bool dup;
        do {
            h = (splitmix(&seed) >> 1) | 1; /* the table compares 63 bits */
            dup = false;
            for (size_t j = 0; j < i && !dup; j++) /* small n: a scan is fine */
                dup = ids[j] == h;
        } while (dup);
        ids[i] = h;
    }
    return ids;
}

static void shuffle(uint64_t *a, size_t n, uint64_t seed)
{
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)(splitmix(&seed) % i);
        uint64_t t = a[i - 1];
        a[i - 1] = a[j];
        a[j] = t;
    }
}

static hr_dedup_stats stats_at(hr_dedup *d, double now)
{
    hr_dedup_stats s;
    hr_dedup_get_stats(d, now, &s);
    return s;
}

/* Claims and confirms ids[0..n) at T0 + i ms (all within the window). */
static void claim_all(hr_dedup *d, const uint64_t *ids, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        assert_true(hr_dedup_claim(d, ids[i], T0 + (double)i * 1e-3));
        hr_dedup_confirm(d, ids[i]);
    }
}

/* Counts the ids of ids[0..n) found (claim refused) at now; a claim that is
 * not refused adds the id, so check the ones expected found first. */
static size_t found(hr_dedup *d, const uint64_t *ids, size_t n, double now)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        k += !hr_dedup_claim(d, ids[i], now);
    return k;
}

static void exactly_capacity(size_t cap, uint64_t seed)
{
    uint64_t *ids = random_ids(cap, seed);
    hr_dedup *d;
    assert_int_equal(hr_dedup_create(cap, WINDOW, &d), HR_OK);
    claim_all(d, ids, cap);
    double now = T0 + 100;
    assert_int_equal(found(d, ids, cap, now), cap);
    hr_dedup_stats s = stats_at(d, now);
    assert_int_equal(s.ids, cap);
    assert_int_equal(s.capacity, cap);
    assert_int_equal(s.evicted, 0);
    hr_dedup_destroy(d);
    free(ids);
}

static void test_exactly_capacity_all_found(void **state)
{
    (void)state;
    exactly_capacity(4096, 1);
    exactly_capacity(3001, 2);
    exactly_capacity(1, 3);
}

static void test_beyond_capacity_oldest_forgotten(void **state)
{
    (void)state;
    const size_t cap = 4096, extra = 700;
    uint64_t *ids = random_ids(cap + extra, 11);
    hr_dedup *d;
    assert_int_equal(hr_dedup_create(cap, WINDOW, &d), HR_OK);
    claim_all(d, ids, cap + extra);
    double now = T0 + 100;
    assert_int_equal(stats_at(d, now).evicted, extra);
    assert_int_equal(stats_at(d, now).ids, cap);
    assert_int_equal(found(d, ids + extra, cap, now), cap); /* the newest cap */
    assert_int_equal(found(d, ids, extra, now), 0);         /* the oldest: forgotten */
    /* each of those resends was added again, each forgetting the oldest */
    assert_int_equal(stats_at(d, now).evicted, 2 * extra);
    hr_dedup_destroy(d);
    free(ids);
}

/* A restore or replay adds ids in any time order: the oldest by time are
 * the ones forgotten, whatever the order they came in. */
static void test_beyond_capacity_out_of_order(void **state)
{
    (void)state;
    const size_t cap = 1000, extra = 300, n = cap + extra;
    uint64_t *ids = random_ids(n, 21);
    uint64_t *order = malloc(n * sizeof *order);
    assert_non_null(order);
    for (size_t i = 0; i < n; i++)
        order[i] = i;
    shuffle(order, n, 22);
    hr_dedup *d;
    assert_int_equal(hr_dedup_create(cap, WINDOW, &d), HR_OK);
    double now = T0 + 10;
    for (size_t i = 0; i < n; i++) /* id k seen at T0 + k ms */
        hr_dedup_remember(d, ids[order[i]], T0 + (double)order[i] * 1e-3, now);
    assert_int_equal(stats_at(d, now).evicted, extra);
    assert_int_equal(found(d, ids + extra, cap, now), cap);
    assert_int_equal(found(d, ids, extra, now), 0);
    hr_dedup_destroy(d);
    free(order);
    free(ids);
}

static void test_window_expiry_and_release_free_room(void **state)
{
    (void)state;
    const size_t cap = 1024;
    uint64_t *ids = random_ids(2 * cap + 1, 31);
    hr_dedup *d;
    assert_int_equal(hr_dedup_create(cap, 10, &d), HR_OK);
    for (size_t i = 0; i < cap; i++) {
        assert_true(hr_dedup_claim(d, ids[i], 100));
        hr_dedup_confirm(d, ids[i]);
    }
    assert_int_equal(stats_at(d, 109.5).ids, cap);
    /* the window passed: a full table of new ids, nothing evicted */
    for (size_t i = cap; i < 2 * cap; i++)
        assert_true(hr_dedup_claim(d, ids[i], 110));
    assert_int_equal(stats_at(d, 110).evicted, 0);
    assert_int_equal(stats_at(d, 110).ids, cap);
    assert_int_equal(found(d, ids + cap, cap, 111), cap);
    /* a released id gives its room back */
    hr_dedup_release(d, ids[cap]);
    assert_int_equal(stats_at(d, 111).ids, cap - 1);
    assert_true(hr_dedup_claim(d, ids[2 * cap], 111));
    assert_int_equal(stats_at(d, 111).evicted, 0);
    assert_true(hr_dedup_claim(d, ids[cap], 111)); /* released: fresh, and now one too many */
    assert_int_equal(stats_at(d, 111).evicted, 1);
    /* all past the window: nothing left */
    assert_int_equal(stats_at(d, 200).ids, 0);
    assert_int_equal(found(d, ids, 2 * cap + 1, 200), 0);
    hr_dedup_destroy(d);
    free(ids);
}

/* The load, scaled down 100 times: 1.2 M distinct ids, then the
 * first 200 k resent within the window, to a table sized for the load. */
static void test_resend_under_load(void **state)
{
    (void)state;
    const size_t sent = 12000, resent = 2000;
    uint64_t *ids = random_ids(sent, 41);
    hr_dedup *d;
    assert_int_equal(hr_dedup_create(sent, WINDOW, &d), HR_OK);
    claim_all(d, ids, sent);
    assert_int_equal(found(d, ids, resent, T0 + 300), resent);
    assert_int_equal(stats_at(d, T0 + 300).evicted, 0);
    hr_dedup_destroy(d);
    free(ids);
}

typedef struct {
    uint64_t h;
    double t;
} pair;

static hr_status collect(void *ctx, uint64_t h, double t)
{
    pair **p = ctx;
    **p = (pair){h, t};
    (*p)++;
    return HR_OK;
}

static void test_export_restores_within_capacity(void **state)
{
    (void)state;
    const size_t cap = 2000, small = 500;
    uint64_t *ids = random_ids(cap, 51);
    uint64_t seed = 52;
    hr_dedup *a;
    assert_int_equal(hr_dedup_create(cap, WINDOW, &a), HR_OK);
    double *t = malloc(cap * sizeof *t);
    assert_non_null(t);
    for (size_t i = 0; i < cap; i++) { /* random times within the window */
        t[i] = T0 + (double)(splitmix(&seed) >> 11) * 0x1p-53 * 500;
        hr_dedup_remember(a, ids[i], t[i], T0 + 500);
    }
    pair *out = malloc(cap * sizeof *out), *end = out;
    assert_non_null(out);
    assert_int_equal(hr_dedup_export(a, T0 + 500, collect, &end), HR_OK);
    assert_int_equal(end - out, cap);
    /* the same capacity: all of them */
    hr_dedup *b;
    assert_int_equal(hr_dedup_create(cap, WINDOW, &b), HR_OK);
    for (pair *p = out; p < end; p++)
        hr_dedup_remember(b, p->h, p->t, T0 + 501);
    assert_int_equal(stats_at(b, T0 + 501).evicted, 0);
    assert_int_equal(found(b, ids, cap, T0 + 501), cap);
    hr_dedup_destroy(b);
    /* a smaller one: the newest `small` of them, the rest counted */
    assert_int_equal(hr_dedup_create(small, WINDOW, &b), HR_OK);
    for (pair *p = out; p < end; p++)
        hr_dedup_remember(b, p->h, p->t, T0 + 501);
    assert_int_equal(stats_at(b, T0 + 501).evicted, cap - small);
    double *sorted = malloc(cap * sizeof *sorted);
    assert_non_null(sorted);
    memcpy(sorted, t, cap * sizeof *t);
    for (size_t i = 1; i < cap; i++) /* insertion sort, descending */
        for (size_t j = i; j > 0 && sorted[j - 1] < sorted[j]; j--) {
            double x = sorted[j];
            sorted[j] = sorted[j - 1];
            sorted[j - 1] = x;
        }
    double cut = sorted[small - 1]; /* the oldest time kept */
    size_t newest = 0;
    for (size_t i = 0; i < cap; i++)
        if (t[i] >= cut)
            newest += !hr_dedup_claim(b, ids[i], T0 + 501);
    assert_int_equal(newest, small);
    hr_dedup_destroy(b);
    hr_dedup_destroy(a);
    free(sorted);
    free(out);
    free(t);
    free(ids);
}

/* ---- against a plain reference ---- */

typedef struct {
    uint64_t h;
    double t;
    bool pending;
} ref_id;

typedef struct {
    ref_id *v;
    size_t n, cap;
    double window;
    uint64_t evicted;
    uint64_t expired; /* ids removed past the window */
} ref;

static long ref_find(const ref *r, uint64_t h)
{
    for (size_t i = 0; i < r->n; i++)
        if (r->v[i].h == h)
            return (long)i;
    return -1;
}

static void ref_remove(ref *r, size_t i)
{
    r->v[i] = r->v[--r->n];
}

static void ref_expire(ref *r, double now)
{
    for (size_t i = r->n; i-- > 0;)
        if (!(now - r->v[i].t < r->window)) {
            ref_remove(r, i);
            r->expired++;
        }
}

static void ref_add(ref *r, uint64_t h, double t, bool pending)
{
    if (r->n == r->cap) {
        r->evicted++;
        size_t m = 0;
        for (size_t i = 1; i < r->n; i++)
            if (r->v[i].t < r->v[m].t)
                m = i;
        if (t < r->v[m].t)
            return;
        ref_remove(r, m);
    }
    r->v[r->n++] = (ref_id){h, t, pending};
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static hr_status collect_hash(void *ctx, uint64_t h, double t)
{
    (void)t;
    uint64_t **p = ctx;
    *(*p)++ = h;
    return HR_OK;
}

static void against_reference(size_t cap, size_t universe, int steps, uint64_t seed)
{
    const double window = 50;
    ref r = {.v = calloc(cap, sizeof(ref_id)), .cap = cap, .window = window};
    uint64_t *ids = random_ids(universe, seed);
    uint64_t *got = malloc((cap + 1) * sizeof *got), *want = malloc((cap + 1) * sizeof *want);
    assert_true(r.v && got && want);
    hr_dedup *d;
    assert_int_equal(hr_dedup_create(cap, window, &d), HR_OK);
    double now = T0;
    for (int step = 0; step < steps; step++) {
        /* distinct times; about 4 capacities of steps per window, so the
         * table fills up and ids also expire */
        now += (double)(splitmix(&seed) % 1000) * 1e-3 * window / (2.0 * (double)cap) + 1e-6;
        uint64_t h = ids[splitmix(&seed) % universe];
        long at = ref_find(&r, h);
        switch (splitmix(&seed) % 8) {
        case 0:
        case 1:
        case 2: {
            ref_expire(&r, now);
            at = ref_find(&r, h);
            bool fresh = at < 0;
            if (fresh)
                ref_add(&r, h, now, true);
            assert_int_equal(hr_dedup_claim(d, h, now), fresh);
            break;
        }
        case 3:
        case 4:
            if (at >= 0)
                r.v[at].pending = false;
            hr_dedup_confirm(d, h);
            break;
        case 5:
            if (at >= 0)
                ref_remove(&r, (size_t)at);
            hr_dedup_release(d, h);
            break;
        default: { /* an id seen up to 60 s ago (some already past the window) */
            double t = now - (double)(splitmix(&seed) % 60000) * 1e-3 - 1e-7;
            if (now - t < window) {
                ref_expire(&r, now);
                if (ref_find(&r, h) < 0)
                    ref_add(&r, h, t, false);
            }
            hr_dedup_remember(d, h, t, now);
            break;
        }
        }
        if (step % 64 == 0) {
            ref_expire(&r, now);
            hr_dedup_stats s = stats_at(d, now);
            assert_int_equal(s.ids, r.n);
            assert_int_equal(s.evicted, r.evicted);
            uint64_t *end = got;
            assert_int_equal(hr_dedup_export(d, now, collect_hash, &end), HR_OK);
            size_t ng = (size_t)(end - got), nw = 0;
            for (size_t i = 0; i < r.n; i++)
                if (!r.v[i].pending)
                    want[nw++] = r.v[i].h;
            assert_int_equal(ng, nw);
            qsort(got, ng, sizeof *got, cmp_u64);
            qsort(want, nw, sizeof *want, cmp_u64);
            assert_memory_equal(got, want, ng * sizeof *got);
        }
    }
    assert_true(r.evicted > 0 && r.expired > 0); /* the table did fill up, and ids expired */
    hr_dedup_destroy(d);
    free(r.v);
    free(ids);
    free(got);
    free(want);
}

static void test_against_reference(void **state)
{
    (void)state;
    against_reference(1, 4, 4000, 61);
    against_reference(3, 12, 20000, 62);
    against_reference(64, 200, 60000, 63);
    against_reference(500, 2000, 60000, 64);
}

/* ---- threads ---- */

#define THREADS 4
#define SHARED 20000

typedef struct {
    hr_dedup *d;
    const uint64_t *ids;
    atomic_int *fresh; /* per id: claims that found it fresh */
    uint64_t seed;
} worker;

static void *claim_shared(void *arg)
{
    worker *w = arg;
    uint64_t *order = malloc(SHARED * sizeof *order);
    if (!order)
        return NULL;
    for (size_t i = 0; i < SHARED; i++)
        order[i] = i;
    shuffle(order, SHARED, w->seed);
    for (size_t i = 0; i < SHARED; i++) {
        uint64_t h = w->ids[order[i]];
        if (hr_dedup_claim(w->d, h, T0 + (double)i * 1e-4)) {
            atomic_fetch_add(&w->fresh[order[i]], 1);
            hr_dedup_confirm(w->d, h);
        }
    }
    free(order);
    return w;
}

static void test_threads_claim_each_id_once(void **state)
{
    (void)state;
    uint64_t *ids = malloc(SHARED * sizeof *ids);
    atomic_int *fresh = calloc(SHARED, sizeof *fresh);
    assert_true(ids && fresh);
    uint64_t seed = 71;
    for (size_t i = 0; i < SHARED; i++) /* distinct: i in the low bits */
        ids[i] = ((splitmix(&seed) >> 16) << 15 | i) & ~(1ull << 63);
    hr_dedup *d;
    assert_int_equal(hr_dedup_create(SHARED, WINDOW, &d), HR_OK);
    pthread_t th[THREADS];
    worker w[THREADS];
    for (int i = 0; i < THREADS; i++) {
        w[i] = (worker){d, ids, fresh, 100 + (uint64_t)i};
        assert_int_equal(pthread_create(&th[i], NULL, claim_shared, &w[i]), 0);
    }
    int ok = 0;
    for (int i = 0; i < THREADS; i++) {
        void *ret = NULL;
        pthread_join(th[i], &ret);
        ok += ret != NULL;
    }
    assert_int_equal(ok, THREADS);
    for (size_t i = 0; i < SHARED; i++)
        assert_int_equal(atomic_load(&fresh[i]), 1);
    assert_int_equal(stats_at(d, T0 + 10).ids, SHARED);
    assert_int_equal(stats_at(d, T0 + 10).evicted, 0);
    hr_dedup_destroy(d);
    free(fresh);
    free(ids);
}

static void test_create_bounds_and_off(void **state)
{
    (void)state;
    hr_dedup *d = (hr_dedup *)1;
    assert_int_equal(hr_dedup_create(0, WINDOW, &d), HR_EINVAL);
    assert_null(d);
    assert_int_equal(hr_dedup_create((size_t)1 << 32, WINDOW, &d), HR_EINVAL);
    assert_int_equal(hr_dedup_create(16, 0, &d), HR_OK); /* off: every claim is fresh */
    assert_true(hr_dedup_window(d) == 0);
    assert_true(hr_dedup_claim(d, 5, T0));
    assert_true(hr_dedup_claim(d, 5, T0));
    assert_int_equal(stats_at(d, T0).ids, 0);
    assert_int_equal(stats_at(d, T0).capacity, 16);
    hr_dedup_destroy(d);
    /* remember ignores times that are not finite */
    assert_int_equal(hr_dedup_create(16, WINDOW, &d), HR_OK);
    assert_true(hr_dedup_window(d) == WINDOW);
    hr_dedup_remember(d, 5, NAN, T0);
    hr_dedup_remember(d, 6, INFINITY, T0);
    assert_int_equal(stats_at(d, T0).ids, 0);
    hr_dedup_destroy(d);
    hr_dedup_destroy(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exactly_capacity_all_found),
        cmocka_unit_test(test_beyond_capacity_oldest_forgotten),
        cmocka_unit_test(test_beyond_capacity_out_of_order),
        cmocka_unit_test(test_window_expiry_and_release_free_room),
        cmocka_unit_test(test_resend_under_load),
        cmocka_unit_test(test_export_restores_within_capacity),
        cmocka_unit_test(test_against_reference),
        cmocka_unit_test(test_threads_claim_each_id_once),
        cmocka_unit_test(test_create_bounds_and_off),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * test_ids.c - the id table: round trips, limits, growth, removal and row
 * reuse, insert_at, the init callback, and lock-free lookups racing inserts
 * and removals (checked against plain-array models).
 *
 * Threads in the concurrent tests never call cmocka asserts (they longjmp);
 * they count failures in an atomic and the main thread asserts on it. No
 * test waits on time: readers run until the writers say they are done.
 */
/* ctest-labels: concurrent */
#include "testutil.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hogrec/ids.h"

/* Interns a NUL-terminated key; asserts HR_OK and returns the row. */
static uint32_t put(hr_ids *ids, const char *key, bool *created)
{
    uint32_t row = HR_ID_NONE;
    assert_int_equal(hr_ids_intern(ids, key, strlen(key), NULL, NULL, &row, created), HR_OK);
    assert_int_not_equal(row, HR_ID_NONE);
    return row;
}

static uint32_t get(const hr_ids *ids, const char *key)
{
    return hr_ids_lookup(ids, key, strlen(key));
}

/* Asserts that row holds exactly key. */
static void assert_key(const hr_ids *ids, uint32_t row, const char *key, size_t len)
{
    size_t got_len = 0;
    const char *got = hr_ids_key(ids, row, &got_len);
    assert_non_null(got);
    assert_int_equal(got_len, len);
    assert_memory_equal(got, key, len);
}

static void test_roundtrip(void **state)
{
    (void)state;
    hr_ids *ids = NULL;
    assert_int_equal(hr_ids_create(1, 1000, &ids), HR_OK);
    assert_int_equal(hr_ids_high_water(ids), 1);
    assert_int_equal(hr_ids_count(ids), 0);
    assert_int_equal(get(ids, "alice"), HR_ID_NONE);

    bool created = false;
    assert_int_equal(put(ids, "alice", &created), 1);
    assert_true(created);
    assert_int_equal(put(ids, "alice", &created), 1);
    assert_false(created);
    assert_int_equal(put(ids, "bob", &created), 2);
    assert_true(created);
    assert_int_equal(get(ids, "alice"), 1);
    assert_int_equal(get(ids, "bob"), 2);
    assert_int_equal(get(ids, "carol"), HR_ID_NONE);
    assert_int_equal(get(ids, "alic"), HR_ID_NONE);
    assert_int_equal(get(ids, "alicee"), HR_ID_NONE);
    assert_key(ids, 1, "alice", 5);
    assert_key(ids, 2, "bob", 3);

    /* Ids are byte strings: embedded NULs count. */
    uint32_t r1, r2;
    assert_int_equal(hr_ids_intern(ids, "a\0b", 3, NULL, NULL, &r1, NULL), HR_OK);
    assert_int_equal(hr_ids_intern(ids, "a\0c", 3, NULL, NULL, &r2, NULL), HR_OK);
    assert_int_not_equal(r1, r2);
    assert_int_equal(hr_ids_lookup(ids, "a\0b", 3), r1);
    assert_int_equal(hr_ids_lookup(ids, "a", 1), HR_ID_NONE);
    assert_key(ids, r2, "a\0c", 3);

    size_t len = 99;
    assert_null(hr_ids_key(ids, 0, &len)); /* reserved row */
    assert_int_equal(len, 0);
    assert_null(hr_ids_key(ids, 500, &len));
    assert_null(hr_ids_key(ids, 1000, &len));
    assert_null(hr_ids_key(ids, HR_ID_NONE, &len));
    assert_int_equal(hr_ids_count(ids), 4);
    assert_int_equal(hr_ids_high_water(ids), 5);
    assert_int_equal(hr_ids_removed(ids), 0);
    assert_true(hr_ids_bytes(ids) > 0);

    /* Bad arguments. */
    assert_int_equal(hr_ids_intern(ids, "x", 1, NULL, NULL, NULL, NULL), HR_EINVAL);
    assert_int_equal(hr_ids_intern(ids, NULL, 1, NULL, NULL, &r1, NULL), HR_EINVAL);
    assert_int_equal(hr_ids_lookup(ids, NULL, 0), HR_ID_NONE);
    assert_int_equal(hr_ids_create(1, 1000, NULL), HR_EINVAL);
    hr_ids *bad = (hr_ids *)&created;
    assert_int_equal(hr_ids_create(5, 4, &bad), HR_EINVAL);
    assert_null(bad);
    assert_int_equal(hr_ids_create(0, 0, &bad), HR_EINVAL);

    hr_ids_destroy(ids);
    hr_ids_destroy(NULL);
}

static void test_integer_ids(void **state)
{
    (void)state;
    enum { N = 10000 };
    hr_ids *ids;
    assert_int_equal(hr_ids_create(1, N + 100, &ids), HR_OK);
    static uint32_t rows[N];
    int order[N];
    for (int i = 0; i < N; i++)
        order[i] = i;
    hr_rng rng;
    hr_rng_seed(&rng, 42);
    for (int i = N - 1; i > 0; i--) {
        int j = (int)hr_rng_below(&rng, (uint64_t)i + 1), t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    char buf[32];
    for (int i = 0; i < N; i++) {
        snprintf(buf, sizeof buf, "%d", order[i]);
        rows[order[i]] = put(ids, buf, NULL);
        assert_int_equal(rows[order[i]], (uint32_t)i + 1); /* dense, in order */
    }
    for (int i = 0; i < N; i++) {
        int n = snprintf(buf, sizeof buf, "%d", i);
        assert_int_equal(get(ids, buf), rows[i]);
        assert_key(ids, rows[i], buf, (size_t)n);
    }
    /* Leading zeros and signs make other ids. */
    assert_int_equal(get(ids, "007"), HR_ID_NONE);
    assert_int_equal(get(ids, "-7"), HR_ID_NONE);
    uint32_t r007 = put(ids, "007", NULL);
    assert_int_not_equal(r007, rows[7]);
    assert_int_equal(get(ids, "7"), rows[7]);
    assert_int_equal(hr_ids_count(ids), N + 1);
    hr_ids_destroy(ids);
}

static void test_length_limits(void **state)
{
    (void)state;
    hr_ids *ids;
    assert_int_equal(hr_ids_create(0, 100, &ids), HR_OK);
    char big[HR_ID_MAX_LEN + 1];
    memset(big, 'k', sizeof big);
    uint32_t row = 7;
    bool created = true;
    assert_int_equal(hr_ids_intern(ids, big, 0, NULL, NULL, &row, &created), HR_EINVAL);
    assert_false(created);
    assert_int_equal(hr_ids_intern(ids, big, HR_ID_MAX_LEN + 1, NULL, NULL, &row, NULL),
                     HR_EINVAL);
    assert_int_equal(hr_ids_insert_at(ids, big, 0, 5), HR_EINVAL);
    assert_int_equal(hr_ids_insert_at(ids, big, HR_ID_MAX_LEN + 1, 5), HR_EINVAL);
    assert_int_equal(hr_ids_count(ids), 0);
    assert_int_equal(hr_ids_high_water(ids), 0);

    assert_int_equal(hr_ids_intern(ids, big, HR_ID_MAX_LEN, NULL, NULL, &row, &created),
                     HR_OK);
    assert_true(created);
    assert_int_equal(row, 0); /* first_row 0 is allowed */
    assert_int_equal(hr_ids_lookup(ids, big, HR_ID_MAX_LEN), 0);
    assert_int_equal(hr_ids_lookup(ids, big, HR_ID_MAX_LEN + 1), HR_ID_NONE);
    assert_int_equal(hr_ids_lookup(ids, big, 0), HR_ID_NONE);
    assert_key(ids, 0, big, HR_ID_MAX_LEN);
    assert_int_equal(hr_ids_intern(ids, big, 1, NULL, NULL, &row, NULL), HR_OK);
    assert_int_equal(row, 1);
    hr_ids_destroy(ids);
}

static void test_full(void **state)
{
    (void)state;
    hr_ids *ids;
    assert_int_equal(hr_ids_create(2, 6, &ids), HR_OK); /* rows 2..5 */
    const char *keys[] = {"a", "b", "c", "d"};
    for (int i = 0; i < 4; i++)
        assert_int_equal(put(ids, keys[i], NULL), (uint32_t)i + 2);
    uint32_t row = 0;
    bool created = true;
    assert_int_equal(hr_ids_intern(ids, "e", 1, NULL, NULL, &row, &created), HR_EFULL);
    assert_false(created);
    assert_int_equal(get(ids, "e"), HR_ID_NONE);
    assert_int_equal(put(ids, "c", &created), 4); /* present ids still resolve */
    assert_false(created);
    assert_int_equal(hr_ids_insert_at(ids, "e", 1, 6), HR_EINVAL); /* >= max_rows */
    assert_int_equal(hr_ids_high_water(ids), 6);

    assert_int_equal(hr_ids_remove(ids, 3), HR_OK);
    assert_int_equal(put(ids, "e", &created), 3);
    assert_true(created);
    assert_int_equal(hr_ids_intern(ids, "f", 1, NULL, NULL, &row, NULL), HR_EFULL);
    hr_ids_destroy(ids);

    /* Every row reserved: always full. */
    assert_int_equal(hr_ids_create(3, 3, &ids), HR_OK);
    assert_int_equal(hr_ids_intern(ids, "a", 1, NULL, NULL, &row, NULL), HR_EFULL);
    assert_null(hr_ids_key(ids, 2, NULL));
    hr_ids_destroy(ids);
}

static void test_growth(void **state)
{
    (void)state;
    enum { N = 200000 };
    hr_ids *ids;
    assert_int_equal(hr_ids_create(1, UINT32_MAX, &ids), HR_OK);
    size_t bytes0 = hr_ids_bytes(ids);
    char buf[48];
    for (uint32_t i = 0; i < N; i++) {
        snprintf(buf, sizeof buf, "item-%u-%u", i * 2654435761u, i);
        bool created = false;
        assert_int_equal(put(ids, buf, &created), i + 1);
        assert_true(created);
    }
    assert_int_equal(hr_ids_count(ids), N);
    assert_int_equal(hr_ids_high_water(ids), N + 1);
    for (uint32_t i = 0; i < N; i++) {
        int n = snprintf(buf, sizeof buf, "item-%u-%u", i * 2654435761u, i);
        assert_int_equal(get(ids, buf), i + 1);
        assert_key(ids, i + 1, buf, (size_t)n);
        snprintf(buf, sizeof buf, "item-%u-%u!", i * 2654435761u, i);
        assert_int_equal(get(ids, buf), HR_ID_NONE);
    }
    /* At least the keys and 8 bytes of index slot per id. */
    assert_true(hr_ids_bytes(ids) > bytes0 + (size_t)N * 24);
    hr_ids_destroy(ids);
}

static void test_remove_reuse(void **state)
{
    (void)state;
    enum { N = 100 };
    hr_ids *ids;
    assert_int_equal(hr_ids_create(1, 1000, &ids), HR_OK);
    char buf[32];
    for (int i = 0; i < N; i++) {
        snprintf(buf, sizeof buf, "k%d", i);
        assert_int_equal(put(ids, buf, NULL), (uint32_t)i + 1);
    }
    const uint32_t gone[] = {10, 20, 30};
    for (size_t i = 0; i < HR_ARRAY_LEN(gone); i++)
        assert_int_equal(hr_ids_remove(ids, gone[i]), HR_OK);
    assert_int_equal(hr_ids_remove(ids, 20), HR_ENOTFOUND);
    assert_int_equal(hr_ids_remove(ids, 0), HR_ENOTFOUND);   /* reserved */
    assert_int_equal(hr_ids_remove(ids, 500), HR_ENOTFOUND); /* never used */
    assert_int_equal(hr_ids_remove(ids, 5000), HR_ENOTFOUND);
    assert_int_equal(hr_ids_count(ids), N - 3);
    assert_int_equal(hr_ids_removed(ids), 3);
    assert_int_equal(hr_ids_high_water(ids), N + 1);
    for (int i = 0; i < N; i++) {
        snprintf(buf, sizeof buf, "k%d", i);
        bool removed = i + 1 == 10 || i + 1 == 20 || i + 1 == 30;
        assert_int_equal(get(ids, buf), removed ? HR_ID_NONE : (uint32_t)i + 1);
        assert_true((hr_ids_key(ids, (uint32_t)i + 1, NULL) == NULL) == removed);
    }

    /* New ids take the freed rows first, then fresh ones. */
    bool seen[N + 2] = {false};
    for (int i = 0; i < 3; i++) {
        snprintf(buf, sizeof buf, "new%d", i);
        uint32_t r = put(ids, buf, NULL);
        assert_true(r == 10 || r == 20 || r == 30);
        assert_false(seen[r]);
        seen[r] = true;
        assert_key(ids, r, buf, strlen(buf));
    }
    /* A removed id comes back as a new id. */
    bool created = false;
    assert_int_equal(put(ids, "k9", &created), N + 1);
    assert_true(created);
    assert_int_equal(get(ids, "k9"), N + 1);
    assert_int_equal(hr_ids_count(ids), N + 1);
    assert_int_equal(hr_ids_high_water(ids), N + 2);

    /* Remove everything, then refill: rows stay within the high water. */
    for (uint32_t r = 1; r <= N + 1; r++)
        assert_int_equal(hr_ids_remove(ids, r), HR_OK);
    assert_int_equal(hr_ids_count(ids), 0);
    assert_int_equal(get(ids, "k0"), HR_ID_NONE);
    for (int i = 0; i < N + 1; i++) {
        snprintf(buf, sizeof buf, "again%d", i);
        uint32_t r = put(ids, buf, NULL);
        assert_true(r >= 1 && r <= N + 1);
    }
    assert_int_equal(hr_ids_high_water(ids), N + 2);
    assert_int_equal(hr_ids_count(ids), N + 1);
    hr_ids_destroy(ids);
}

static void test_insert_at(void **state)
{
    (void)state;
    hr_ids *ids;
    assert_int_equal(hr_ids_create(1, 100, &ids), HR_OK);
    assert_int_equal(hr_ids_insert_at(ids, "x", 1, 10), HR_OK);
    assert_int_equal(get(ids, "x"), 10);
    assert_key(ids, 10, "x", 1);
    assert_int_equal(hr_ids_high_water(ids), 11);
    assert_int_equal(hr_ids_count(ids), 1);

    assert_int_equal(hr_ids_insert_at(ids, "y", 1, 10), HR_EINVAL); /* row in use */
    assert_int_equal(hr_ids_insert_at(ids, "x", 1, 12), HR_EINVAL); /* key elsewhere */
    assert_int_equal(hr_ids_insert_at(ids, "x", 1, 10), HR_EINVAL); /* row in use */
    assert_int_equal(hr_ids_insert_at(ids, "y", 1, 0), HR_EINVAL);  /* reserved */
    assert_int_equal(hr_ids_insert_at(ids, "y", 1, 100), HR_EINVAL);
    assert_int_equal(hr_ids_insert_at(ids, "y", 1, HR_ID_NONE), HR_EINVAL);
    assert_int_equal(get(ids, "y"), HR_ID_NONE);
    assert_int_equal(hr_ids_high_water(ids), 11);

    /* A hole below the high water can be filled directly... */
    assert_int_equal(hr_ids_insert_at(ids, "five", 4, 5), HR_OK);
    assert_int_equal(get(ids, "five"), 5);
    /* ...and the other holes go to new ids, lowest first, never row 5. */
    char buf[32];
    for (uint32_t want = 1; want <= 9; want++) {
        if (want == 5)
            continue;
        snprintf(buf, sizeof buf, "hole%u", want);
        assert_int_equal(put(ids, buf, NULL), want);
    }
    assert_int_equal(put(ids, "next", NULL), 11);

    /* A removed row can be restored into. */
    assert_int_equal(hr_ids_remove(ids, 3), HR_OK);
    assert_int_equal(hr_ids_insert_at(ids, "three", 5, 3), HR_OK);
    assert_int_equal(get(ids, "three"), 3);
    assert_int_equal(get(ids, "hole3"), HR_ID_NONE);
    assert_int_equal(put(ids, "after", NULL), 12); /* row 3 is no longer free */

    /* Restoring a checkpoint in descending row order with gaps. */
    hr_ids *ck;
    assert_int_equal(hr_ids_create(1, 5000, &ck), HR_OK);
    for (uint32_t r = 4000; r >= 1000; r -= 3) {
        snprintf(buf, sizeof buf, "c%u", r);
        assert_int_equal(hr_ids_insert_at(ck, buf, strlen(buf), r), HR_OK);
    }
    assert_int_equal(hr_ids_high_water(ck), 4001);
    for (uint32_t r = 1000; r <= 4000; r += 3) {
        snprintf(buf, sizeof buf, "c%u", r);
        assert_int_equal(get(ck, buf), r);
    }
    /* All other rows below the high water are free, lowest first. */
    uint32_t expect = 1;
    for (uint32_t n = 0; n < 4000 - 1001; n++) {
        while (expect >= 1000 && expect <= 4000 && (expect - 1000) % 3 == 0)
            expect++;
        snprintf(buf, sizeof buf, "f%u", n);
        assert_int_equal(put(ck, buf, NULL), expect);
        expect++;
    }
    assert_int_equal(put(ck, "top", NULL), 4001);
    assert_int_equal(hr_ids_count(ck), 4001);
    hr_ids_destroy(ck);
    hr_ids_destroy(ids);
}

struct init_probe {
    hr_ids *ids;
    const char *key;
    uint32_t calls;
    uint32_t last_row;
    hr_status result;
    bool visible_during_init;
};

static hr_status probe_init(void *ctx, uint32_t row)
{
    struct init_probe *p = ctx;
    p->calls++;
    p->last_row = row;
    if (hr_ids_lookup(p->ids, p->key, strlen(p->key)) != HR_ID_NONE ||
        hr_ids_key(p->ids, row, NULL) != NULL ||
        hr_ids_count(p->ids) != 1)
        p->visible_during_init = true;
    return p->result;
}

static void test_init_callback(void **state)
{
    (void)state;
    hr_ids *ids;
    assert_int_equal(hr_ids_create(1, 10, &ids), HR_OK);
    assert_int_equal(put(ids, "first", NULL), 1);
    size_t bytes = hr_ids_bytes(ids);

    struct init_probe p = {.ids = ids, .key = "second", .result = HR_EIO};
    uint32_t row = 0;
    bool created = true;
    assert_int_equal(hr_ids_intern(ids, "second", 6, probe_init, &p, &row, &created), HR_EIO);
    assert_false(created);
    assert_int_equal(p.calls, 1);
    assert_int_equal(p.last_row, 2);
    assert_false(p.visible_during_init);
    assert_int_equal(get(ids, "second"), HR_ID_NONE);
    assert_null(hr_ids_key(ids, 2, NULL));
    assert_int_equal(hr_ids_count(ids), 1);
    assert_int_equal(hr_ids_high_water(ids), 2);
    assert_int_equal(hr_ids_bytes(ids), bytes);

    p.result = HR_OK;
    assert_int_equal(hr_ids_intern(ids, "second", 6, probe_init, &p, &row, &created), HR_OK);
    assert_true(created);
    assert_int_equal(row, 2); /* the failed insert did not use up the row */
    assert_int_equal(p.calls, 2);
    assert_false(p.visible_during_init);
    assert_int_equal(get(ids, "second"), 2);

    /* Present ids do not run init. */
    assert_int_equal(hr_ids_intern(ids, "second", 6, probe_init, &p, &row, &created), HR_OK);
    assert_false(created);
    assert_int_equal(p.calls, 2);

    /* A freed row whose init fails stays free. */
    assert_int_equal(hr_ids_remove(ids, 1), HR_OK);
    p.key = "third";
    p.result = HR_ENOMEM;
    assert_int_equal(hr_ids_intern(ids, "third", 5, probe_init, &p, &row, NULL), HR_ENOMEM);
    assert_int_equal(p.last_row, 1);
    assert_int_equal(put(ids, "fourth", NULL), 1);
    hr_ids_destroy(ids);
}

/* Single thread, random operations against a model: exercises tombstones,
 * in-place purges and rebuilds under churn. */
static void test_churn_model(void **state)
{
    (void)state;
    enum { KEYS = 3000, OPS = 300000, MAXR = 4000 };
    hr_ids *ids;
    assert_int_equal(hr_ids_create(1, MAXR, &ids), HR_OK);
    static uint32_t row_of[KEYS];   /* model: key -> row or NONE */
    static int32_t key_of[MAXR];    /* model: row -> key or -1 */
    for (int k = 0; k < KEYS; k++)
        row_of[k] = HR_ID_NONE;
    for (int r = 0; r < MAXR; r++)
        key_of[r] = -1;
    uint32_t hw = 1, live = 0;
    uint64_t removes = 0;
    hr_rng rng;
    hr_rng_seed(&rng, 7);
    char buf[32];
    for (int op = 0; op < OPS; op++) {
        int k = (int)hr_rng_below(&rng, KEYS);
        int n = snprintf(buf, sizeof buf, "key/%d", k);
        uint32_t r = row_of[k];
        uint64_t dice = hr_rng_below(&rng, 100);
        if (r != HR_ID_NONE && dice < 50) {
            assert_int_equal(hr_ids_remove(ids, r), HR_OK);
            row_of[k] = HR_ID_NONE;
            key_of[r] = -1;
            live--;
            removes++;
        } else if (r == HR_ID_NONE && dice < 3) {
            /* Restore at a random free row at most a little above hw. */
            uint32_t want = 1 + (uint32_t)hr_rng_below(&rng, hw + 5 < MAXR ? hw + 5 : MAXR - 1);
            hr_status st = hr_ids_insert_at(ids, buf, (size_t)n, want);
            assert_int_equal(st, key_of[want] < 0 ? HR_OK : HR_EINVAL);
            if (st == HR_OK) {
                row_of[k] = want;
                key_of[want] = k;
                live++;
                if (want >= hw)
                    hw = want + 1;
            }
        } else {
            bool created;
            uint32_t got = put(ids, buf, &created);
            assert_int_equal(created, r == HR_ID_NONE);
            if (r != HR_ID_NONE) {
                assert_int_equal(got, r);
            } else {
                /* A free row below the high water if there is one. */
                assert_true(got < MAXR && key_of[got] < 0);
                if (live + 1 < hw)
                    assert_true(got < hw);
                row_of[k] = got;
                key_of[got] = k;
                live++;
                if (got >= hw)
                    hw = got + 1;
            }
        }
        assert_int_equal(hr_ids_count(ids), live);
        assert_int_equal(hr_ids_high_water(ids), hw);
        if (op % 20000 == 0 || op == OPS - 1) {
            for (int j = 0; j < KEYS; j++) {
                n = snprintf(buf, sizeof buf, "key/%d", j);
                assert_int_equal(hr_ids_lookup(ids, buf, (size_t)n), row_of[j]);
                if (row_of[j] != HR_ID_NONE)
                    assert_key(ids, row_of[j], buf, (size_t)n);
            }
            for (uint32_t j = 0; j < MAXR; j++)
                assert_true((hr_ids_key(ids, j, NULL) != NULL) == (key_of[j] >= 0));
        }
    }
    assert_int_equal(hr_ids_removed(ids), removes);
    hr_ids_destroy(ids);
}

/* ---- concurrent: overlapping inserts, continuous lookups -------------- */

enum { CI_KEYS = 20000, CI_WRITERS = 3, CI_READERS = 2 };

struct ci_shared {
    hr_ids *ids;
    uint64_t initval[CI_KEYS + 1]; /* written by init, read after lookup */
    uint32_t got[CI_WRITERS][CI_KEYS];
    atomic_uint created;
    atomic_uint failures;
    atomic_int writers_left;
};

struct ci_arg {
    struct ci_shared *sh;
    int id;
};

static int ci_key(char *buf, size_t size, int k)
{
    return snprintf(buf, size, "user:%d:%x", k, (unsigned)k * 40503u);
}

static hr_status ci_init(void *ctx, uint32_t row)
{
    struct ci_shared *sh = ctx;
    sh->initval[row] = 1000003ull * row + 17; /* plain write: needs the HB edge */
    return HR_OK;
}

static void *ci_writer(void *p)
{
    struct ci_arg *a = p;
    struct ci_shared *sh = a->sh;
    int *order = malloc(sizeof(int) * CI_KEYS);
    for (int i = 0; i < CI_KEYS; i++)
        order[i] = i;
    hr_rng rng;
    hr_rng_seed(&rng, 100 + (uint64_t)a->id);
    for (int i = CI_KEYS - 1; i > 0; i--) {
        int j = (int)hr_rng_below(&rng, (uint64_t)i + 1), t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    char buf[48];
    for (int i = 0; i < CI_KEYS; i++) {
        int k = order[i], n = ci_key(buf, sizeof buf, k);
        uint32_t row = HR_ID_NONE;
        bool created = false;
        if (hr_ids_intern(sh->ids, buf, (size_t)n, ci_init, sh, &row, &created) != HR_OK)
            atomic_fetch_add(&sh->failures, 1);
        sh->got[a->id][k] = row;
        if (created)
            atomic_fetch_add(&sh->created, 1);
    }
    free(order);
    atomic_fetch_sub(&sh->writers_left, 1);
    return NULL;
}

/* Checks one lookup: absent, or a row holding the key and its init value. */
static void ci_check(struct ci_shared *sh, int k)
{
    char buf[48];
    int n = ci_key(buf, sizeof buf, k);
    uint32_t row = hr_ids_lookup(sh->ids, buf, (size_t)n);
    if (row == HR_ID_NONE)
        return;
    size_t len = 0;
    const char *key = hr_ids_key(sh->ids, row, &len);
    if (row < 1 || row > CI_KEYS || !key || len != (size_t)n || memcmp(key, buf, len) != 0 ||
        sh->initval[row] != 1000003ull * row + 17)
        atomic_fetch_add(&sh->failures, 1);
}

static void *ci_reader(void *p)
{
    struct ci_arg *a = p;
    struct ci_shared *sh = a->sh;
    hr_rng rng;
    hr_rng_seed(&rng, 200 + (uint64_t)a->id);
    while (atomic_load(&sh->writers_left) > 0)
        for (int i = 0; i < 64; i++)
            ci_check(sh, (int)hr_rng_below(&rng, CI_KEYS));
    return NULL;
}

static void test_concurrent_intern(void **state)
{
    (void)state;
    struct ci_shared *sh = calloc(1, sizeof *sh);
    assert_non_null(sh);
    /* max_rows is exactly what the distinct keys need: a duplicate row for
     * one key would end in HR_EFULL. */
    assert_int_equal(hr_ids_create(1, CI_KEYS + 1, &sh->ids), HR_OK);
    atomic_init(&sh->writers_left, CI_WRITERS);
    pthread_t th[CI_WRITERS + CI_READERS];
    struct ci_arg args[CI_WRITERS + CI_READERS];
    for (int i = 0; i < CI_WRITERS + CI_READERS; i++) {
        args[i] = (struct ci_arg){sh, i < CI_WRITERS ? i : i - CI_WRITERS};
        assert_int_equal(pthread_create(&th[i], NULL, i < CI_WRITERS ? ci_writer : ci_reader,
                                        &args[i]),
                         0);
    }
    for (int i = 0; i < CI_WRITERS + CI_READERS; i++)
        pthread_join(th[i], NULL);

    assert_int_equal(atomic_load(&sh->failures), 0);
    assert_int_equal(atomic_load(&sh->created), CI_KEYS);
    assert_int_equal(hr_ids_count(sh->ids), CI_KEYS);
    assert_int_equal(hr_ids_high_water(sh->ids), CI_KEYS + 1);
    /* Model: every writer saw the same row per key; rows are distinct. */
    static int owner[CI_KEYS + 1];
    memset(owner, -1, sizeof owner);
    for (int k = 0; k < CI_KEYS; k++) {
        uint32_t row = sh->got[0][k];
        assert_true(row >= 1 && row <= CI_KEYS);
        for (int w = 1; w < CI_WRITERS; w++)
            assert_int_equal(sh->got[w][k], row);
        assert_int_equal(owner[row], -1);
        owner[row] = k;
        char buf[48];
        int n = ci_key(buf, sizeof buf, k);
        assert_int_equal(hr_ids_lookup(sh->ids, buf, (size_t)n), row);
        assert_key(sh->ids, row, buf, (size_t)n);
        assert_int_equal(sh->initval[row], 1000003ull * row + 17);
    }
    hr_ids_destroy(sh->ids);
    free(sh);
}

/* ---- concurrent: removes + inserts + lookups -------------------------- */

enum { CR_PINNED = 300, CR_WRITERS = 3, CR_READERS = 2, CR_KEYS = 3000, CR_OPS = 20000 };

struct cr_shared {
    hr_ids *ids;
    uint32_t pinned_row[CR_PINNED];
    atomic_uint failures;
    atomic_int writers_left;
    uint64_t removes[CR_WRITERS];
    uint32_t model[CR_WRITERS][CR_KEYS]; /* each writer's own keys -> row */
};

struct cr_arg {
    struct cr_shared *sh;
    int id;
};

static int cr_key(char *buf, size_t size, int w, int k)
{
    return w < 0 ? snprintf(buf, size, "pinned-%d", k) : snprintf(buf, size, "w%d-%d", w, k);
}

static void *cr_writer(void *p)
{
    struct cr_arg *a = p;
    struct cr_shared *sh = a->sh;
    uint32_t *model = sh->model[a->id];
    hr_rng rng;
    hr_rng_seed(&rng, 300 + (uint64_t)a->id);
    char buf[48];
    for (int op = 0; op < CR_OPS; op++) {
        int k = (int)hr_rng_below(&rng, CR_KEYS);
        int n = cr_key(buf, sizeof buf, a->id, k);
        if (model[k] != HR_ID_NONE && hr_rng_below(&rng, 2) == 0) {
            if (hr_ids_remove(sh->ids, model[k]) != HR_OK)
                atomic_fetch_add(&sh->failures, 1);
            model[k] = HR_ID_NONE;
            sh->removes[a->id]++;
            continue;
        }
        uint32_t row = HR_ID_NONE;
        bool created = false;
        if (hr_ids_intern(sh->ids, buf, (size_t)n, NULL, NULL, &row, &created) != HR_OK ||
            created != (model[k] == HR_ID_NONE) ||
            (model[k] != HR_ID_NONE && row != model[k]))
            atomic_fetch_add(&sh->failures, 1);
        model[k] = row;
    }
    atomic_fetch_sub(&sh->writers_left, 1);
    return NULL;
}

static void *cr_reader(void *p)
{
    struct cr_arg *a = p;
    struct cr_shared *sh = a->sh;
    hr_rng rng;
    hr_rng_seed(&rng, 400 + (uint64_t)a->id);
    char buf[48];
    uint32_t max_rows = 1 + CR_PINNED + CR_WRITERS * CR_KEYS;
    while (atomic_load(&sh->writers_left) > 0) {
        /* Pinned ids are present throughout: never missed, never wrong. */
        int k = (int)hr_rng_below(&rng, CR_PINNED);
        int n = cr_key(buf, sizeof buf, -1, k);
        uint32_t row = hr_ids_lookup(sh->ids, buf, (size_t)n);
        size_t len = 0;
        const char *key = hr_ids_key(sh->ids, sh->pinned_row[k], &len);
        if (row != sh->pinned_row[k] || !key || len != (size_t)n || memcmp(key, buf, len))
            atomic_fetch_add(&sh->failures, 1);
        /* Churning ids: absent, or a row in range whose key (if the row was
         * not reused meanwhile) is well formed. */
        int w = (int)hr_rng_below(&rng, CR_WRITERS);
        k = (int)hr_rng_below(&rng, CR_KEYS);
        n = cr_key(buf, sizeof buf, w, k);
        row = hr_ids_lookup(sh->ids, buf, (size_t)n);
        if (row == HR_ID_NONE)
            continue;
        key = hr_ids_key(sh->ids, row, &len);
        if (row < 1 || row >= max_rows || (key && (len < 2 || len > 16 || key[0] != 'w')))
            atomic_fetch_add(&sh->failures, 1);
    }
    return NULL;
}

static void test_concurrent_churn(void **state)
{
    (void)state;
    struct cr_shared *sh = calloc(1, sizeof *sh);
    assert_non_null(sh);
    assert_int_equal(hr_ids_create(1, 1 + CR_PINNED + CR_WRITERS * CR_KEYS, &sh->ids), HR_OK);
    char buf[48];
    for (int k = 0; k < CR_PINNED; k++) {
        cr_key(buf, sizeof buf, -1, k);
        sh->pinned_row[k] = put(sh->ids, buf, NULL);
    }
    for (int w = 0; w < CR_WRITERS; w++)
        for (int k = 0; k < CR_KEYS; k++)
            sh->model[w][k] = HR_ID_NONE;
    atomic_init(&sh->writers_left, CR_WRITERS);
    pthread_t th[CR_WRITERS + CR_READERS];
    struct cr_arg args[CR_WRITERS + CR_READERS];
    for (int i = 0; i < CR_WRITERS + CR_READERS; i++) {
        args[i] = (struct cr_arg){sh, i < CR_WRITERS ? i : i - CR_WRITERS};
        assert_int_equal(pthread_create(&th[i], NULL, i < CR_WRITERS ? cr_writer : cr_reader,
                                        &args[i]),
                         0);
    }
    for (int i = 0; i < CR_WRITERS + CR_READERS; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(atomic_load(&sh->failures), 0);

    /* Final state equals the union of the writers' models. */
    static bool used[1 + CR_PINNED + CR_WRITERS * CR_KEYS];
    memset(used, 0, sizeof used);
    uint32_t live = CR_PINNED;
    uint64_t removes = 0;
    for (int k = 0; k < CR_PINNED; k++) {
        int n = cr_key(buf, sizeof buf, -1, k);
        assert_int_equal(hr_ids_lookup(sh->ids, buf, (size_t)n), sh->pinned_row[k]);
        assert_false(used[sh->pinned_row[k]]);
        used[sh->pinned_row[k]] = true;
    }
    for (int w = 0; w < CR_WRITERS; w++) {
        removes += sh->removes[w];
        for (int k = 0; k < CR_KEYS; k++) {
            int n = cr_key(buf, sizeof buf, w, k);
            uint32_t row = sh->model[w][k];
            assert_int_equal(hr_ids_lookup(sh->ids, buf, (size_t)n), row);
            if (row == HR_ID_NONE)
                continue;
            assert_false(used[row]);
            used[row] = true;
            assert_key(sh->ids, row, buf, (size_t)n);
            live++;
        }
    }
    assert_int_equal(hr_ids_count(sh->ids), live);
    assert_int_equal(hr_ids_removed(sh->ids), removes);
    for (uint32_t r = 0; r < HR_ARRAY_LEN(used); r++)
        assert_true((hr_ids_key(sh->ids, r, NULL) != NULL) == used[r]);
    hr_ids_destroy(sh->ids);
    free(sh);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_integer_ids),
        cmocka_unit_test(test_length_limits),
        cmocka_unit_test(test_full),
        cmocka_unit_test(test_growth),
        cmocka_unit_test(test_remove_reuse),
        cmocka_unit_test(test_insert_at),
        cmocka_unit_test(test_init_callback),
        cmocka_unit_test(test_churn_model),
        cmocka_unit_test(test_concurrent_intern),
        cmocka_unit_test(test_concurrent_churn),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

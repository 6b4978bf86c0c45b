/* ctest-labels: concurrent */
/*
 * test_delta.c - row deltas: a leader trained through the sgd kernel ships
 * deltas to a follower of the same config, which then holds the same rows
 * byte for byte, the same ids at the same rows and the same predictions;
 * expiry removals and ids that move; parts; epochs and order; damaged
 * parts (every flipped byte, every truncation, sealed bad content) leave
 * the follower unchanged; the delta's marks and the checkpoint's are
 * independent; a trainer thread trains while deltas are encoded; the fuzz
 * corpus seeds still decode.
 */
#include "testutil.h"

#include <dirent.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "hogrec/delta.h"
#include "hogrec/model.h"
#include "hogrec/schedule.h"
#include "hogrec/sgd.h"

#define MAX_IDS 2000

static hr_model *make_as(uint32_t k, hr_state_kind st, double expire, uint32_t ctx_rows,
                        hr_storage storage)
{
    hr_model_config mc = {0};
    mc.storage = storage;
    mc.k = k;
    mc.state = st;
    mc.loss = HR_LOSS_LOGISTIC;
    mc.init_scale = 0.1f;
    mc.seed = 11;
    mc.chunk_rows = 64;
    mc.max_rows[HR_TABLE_GLOBAL] = 1;
    mc.max_rows[HR_TABLE_USER] = MAX_IDS;
    mc.max_rows[HR_TABLE_ITEM] = MAX_IDS;
    mc.max_rows[HR_TABLE_CTX] = ctx_rows;
    mc.expire_seconds = expire;
    mc.adagrad_init = 0.1f;
    hr_model *m;
    hr_error err;
    assert_int_equal(hr_model_create(&mc, &m, &err), HR_OK);
    return m;
}

static hr_model *make(uint32_t k, hr_state_kind st, double expire, uint32_t ctx_rows)
{
    return make_as(k, st, expire, ctx_rows, HR_STORAGE_F32);
}

static bool has_ids(int t)
{
    return t == HR_TABLE_USER || t == HR_TABLE_ITEM;
}

static uint32_t intern(hr_model *m, hr_table_id t, const char *fmt, unsigned n)
{
    char id[32];
    int len = snprintf(id, sizeof id, fmt, n);
    uint32_t row;
    assert_int_equal(hr_model_intern(m, t, id, (size_t)len, &row, NULL), HR_OK);
    return row;
}

/* One training event as the trainer runs it: touch, step, marks. */
static void train(hr_model *m, hr_rng *rng, unsigned users, unsigned items)
{
    const hr_row_layout *L = hr_model_layout(m);
    hr_event ev;
    memset(&ev, 0, sizeof ev);
    ev.user = intern(m, HR_TABLE_USER, "u%u", (unsigned)hr_rng_below(rng, users));
    ev.item = intern(m, HR_TABLE_ITEM, "i%u", (unsigned)hr_rng_below(rng, items));
    ev.label = (float)hr_rng_below(rng, 2);
    ev.weight = 1;
    ev.nctx = (uint16_t)hr_rng_below(rng, 3);
    for (int c = 0; c < ev.nctx; c++) {
        char v[8];
        int n = snprintf(v, sizeof v, "%u", (unsigned)hr_rng_below(rng, 50));
        ev.ctx[c].row = hr_model_ctx_row(m, c ? "city" : "device", c ? 4 : 6, v, (size_t)n);
        ev.ctx[c].x = 1;
    }
    hr_step_params p;
    memset(&p, 0, sizeof p);
    p.loss = HR_LOSS_LOGISTIC;
    p.opt = L->adam ? HR_OPT_ADAM : L->acc ? HR_OPT_ADAGRAD : HR_OPT_SGD;
    p.adam_beta1 = 0.9f;
    p.adam_beta2 = 0.999f;
    p.adam_eps = 1e-8f;
    for (int g = 0; g < HR_GROUP_COUNT; g++)
        p.rate[g] = 0.05f;
    uint32_t now = hr_model_clock(m);
    hr_sgd_touch(L, hr_model_row(m, HR_TABLE_USER, ev.user), now);
    hr_sgd_touch(L, hr_model_row(m, HR_TABLE_ITEM, ev.item), now);
    hr_active a[HR_MAX_ACTIVE];
    int n = hr_model_active(m, &ev, a);
    double y;
    hr_sgd_step(L, a, n, ev.label, ev.weight, &p, &y, NULL);
    hr_model_mark_dirty(m, HR_TABLE_GLOBAL, 0);
    hr_model_mark_dirty(m, HR_TABLE_USER, ev.user);
    hr_model_mark_dirty(m, HR_TABLE_ITEM, ev.item);
    for (int c = 0; c < ev.nctx; c++)
        hr_model_mark_dirty(m, HR_TABLE_CTX, ev.ctx[c].row);
}

/* Part i of an encoded delta. */
static const uint8_t *part(const hr_delta_buf *b, size_t i, size_t *len)
{
    size_t start = i ? b->ends[i - 1] : 0;
    *len = b->ends[i] - start;
    return b->data + start;
}

/* Encodes the leader's changes and applies every part to the follower. */
static void ship(hr_model *leader, hr_model *follower, hr_delta_state *st, hr_delta_header *h,
                 size_t max_part, hr_delta_buf *b)
{
    hr_error err;
    h->seq++;
    assert_int_equal(hr_delta_encode(leader, h, max_part, b, &err), HR_OK);
    assert_true(b->nparts >= 1);
    for (size_t i = 0; i < b->nparts; i++) {
        size_t len;
        const uint8_t *p = part(b, i, &len);
        if (max_part)
            assert_true(len <= max_part);
        hr_status s = hr_delta_apply(follower, p, len, st, &err);
        if (s != HR_OK)
            fail_msg("apply part %zu: %s", i, err.message);
        assert_false(st->stale);
    }
    assert_true(st->complete);
    assert_string_equal(st->event_id, h->event_id);
    assert_int_equal(st->schedule_version, h->schedule_version);
}

/* Follower == leader: every leader row (user/item rows while they hold an
 * id) byte for byte, the same key at the same row, no id on the follower
 * where the leader has none, the same id counts. */
static void assert_same(hr_model *leader, hr_model *follower)
{
    const hr_row_layout *L = hr_model_layout(leader);
    float a[L->floats], b[L->floats];
    for (int t = 0; t < HR_TABLE_COUNT; t++) {
        uint32_t rows = hr_model_rows(leader, (hr_table_id)t);
        for (uint32_t r = 0; r < rows; r++) {
            if (has_ids(t) && r > 0) {
                size_t la, lb;
                const char *ka = hr_model_key(leader, (hr_table_id)t, r, &la);
                const char *kb = hr_model_key(follower, (hr_table_id)t, r, &lb);
                if (!ka) {
                    if (kb)
                        fail_msg("table %d row %u: follower has id %.*s, leader none", t, r,
                                 (int)lb, kb);
                    continue;
                }
                if (!kb || la != lb || memcmp(ka, kb, la) != 0)
                    fail_msg("table %d row %u: leader id %.*s, follower %.*s", t, r, (int)la, ka,
                             kb ? (int)lb : 6, kb ? kb : "(none)");
            }
            hr_sgd_row_read(L, hr_model_row(leader, (hr_table_id)t, r), a);
            hr_sgd_row_read(L, hr_model_row(follower, (hr_table_id)t, r), b);
            /* Adam's second moments, read in place (not through row_read,
             * which the delta's encoder uses too) */
            if (L->adam_v &&
                memcmp(hr_model_row(leader, (hr_table_id)t, r) + L->adam_v,
                       hr_model_row(follower, (hr_table_id)t, r) + L->adam_v,
                       (L->k + 1) * sizeof(float)) != 0)
                fail_msg("table %d row %u: Adam second moments differ", t, r);
            if (memcmp(a, b, sizeof a) != 0)
                fail_msg("table %d row %u differs (count %u/%u, last seen %u/%u)", t, r,
                         hr_sgd_row_count(L, a), hr_sgd_row_count(L, b),
                         hr_sgd_row_last_seen(L, a), hr_sgd_row_last_seen(L, b));
        }
        if (has_ids(t))
            assert_int_equal(hr_model_id_count(leader, (hr_table_id)t),
                             hr_model_id_count(follower, (hr_table_id)t));
    }
}

/* Predictions of sampled pairs, looked up by id on each side, are equal. */
static void assert_same_predictions(hr_model *leader, hr_model *follower, hr_rng *rng,
                                    unsigned users, unsigned items)
{
    for (int s = 0; s < 200; s++) {
        char u[32], i[32];
        int ul = snprintf(u, sizeof u, "u%u", (unsigned)hr_rng_below(rng, users));
        int il = snprintf(i, sizeof i, "i%u", (unsigned)hr_rng_below(rng, items));
        hr_event el, ef;
        memset(&el, 0, sizeof el);
        el.nctx = 1;
        el.ctx[0].row = hr_model_ctx_row(leader, "device", 6, "7", 1);
        el.ctx[0].x = 1;
        ef = el;
        el.user = hr_model_lookup(leader, HR_TABLE_USER, u, (size_t)ul);
        el.item = hr_model_lookup(leader, HR_TABLE_ITEM, i, (size_t)il);
        ef.user = hr_model_lookup(follower, HR_TABLE_USER, u, (size_t)ul);
        ef.item = hr_model_lookup(follower, HR_TABLE_ITEM, i, (size_t)il);
        assert_int_equal(el.user, ef.user);
        assert_int_equal(el.item, ef.item);
        if (el.user == HR_ID_NONE)
            el.user = ef.user = 0;
        if (el.item == HR_ID_NONE)
            el.item = ef.item = 0;
        double pl = hr_model_predict(leader, &el), pf = hr_model_predict(follower, &ef);
        assert_memory_equal(&pl, &pf, sizeof pl);
    }
}

/* Hash of everything a delta can change: rows, ids, id counts. */
static uint64_t model_sum(hr_model *m)
{
    const hr_row_layout *L = hr_model_layout(m);
    float a[L->floats];
    uint64_t h = 1;
    for (int t = 0; t < HR_TABLE_COUNT; t++) {
        uint32_t rows = hr_model_rows(m, (hr_table_id)t);
        h = hr_hash64(&rows, sizeof rows, h);
        for (uint32_t r = 0; r < rows; r++) {
            if (has_ids(t) && r > 0) {
                size_t len;
                const char *k = hr_model_key(m, (hr_table_id)t, r, &len);
                if (!k)
                    continue;
                h = hr_hash64(k, len, h ^ r);
            }
            hr_sgd_row_read(L, hr_model_row(m, (hr_table_id)t, r), a);
            h = hr_hash64(a, sizeof a, h);
        }
        uint32_t n = hr_model_id_count(m, (hr_table_id)t);
        h = hr_hash64(&n, sizeof n, h);
    }
    return h;
}

static hr_delta_header header(uint64_t epoch)
{
    hr_delta_header h;
    memset(&h, 0, sizeof h);
    h.epoch = epoch;
    return h;
}

static void test_follower_equals_leader(void **state)
{
    (void)state;
    const hr_state_kind kinds[] = {HR_STATE_SGD, HR_STATE_ADAGRAD, HR_STATE_FTRL, HR_STATE_ADAM};
    for (size_t ki = 0; ki < HR_ARRAY_LEN(kinds); ki++) {
        hr_model *leader = make(8, kinds[ki], 0, 256), *follower = make(8, kinds[ki], 0, 256);
        hr_delta_state st = {0};
        hr_delta_header h = header(3);
        hr_delta_buf b = {0};
        hr_rng rng;
        hr_rng_seed(&rng, 42 + ki);
        unsigned users = 300, items = 400;
        for (int round = 0; round < 40; round++) {
            for (int e = 0; e < 100; e++)
                train(leader, &rng, users, items);
            snprintf(h.event_id, sizeof h.event_id, "%d-%d", 1700000000 + round, round);
            h.schedule_version = (uint64_t)round / 10;
            /* every third round in parts of at most 2 KiB */
            ship(leader, follower, &st, &h, round % 3 == 2 ? 2048 : 0, &b);
            assert_same(leader, follower);
            assert_same_predictions(leader, follower, &rng, users, items);
        }
        /* nothing changed: an empty delta, and nothing moves */
        uint64_t before = model_sum(follower);
        ship(leader, follower, &st, &h, 0, &b);
        assert_int_equal(b.rows + b.ids + b.removals, 0);
        assert_int_equal(model_sum(follower), before);
        hr_delta_buf_free(&b);
        hr_delta_buf_free(&b); /* freed twice: the second is a no-op */
        hr_model_destroy(leader);
        hr_model_destroy(follower);
    }
}

/* bf16 rows ship as they are stored (a bf16 follower equals its leader
 * byte for byte, every optimizer), and a delta names its storage: a
 * follower of the other storage refuses it, naming both, either way round. */
static void test_bf16_deltas(void **state)
{
    (void)state;
    const hr_state_kind kinds[] = {HR_STATE_SGD, HR_STATE_ADAGRAD, HR_STATE_FTRL, HR_STATE_ADAM};
    for (size_t ki = 0; ki < HR_ARRAY_LEN(kinds); ki++) {
        hr_model *leader = make_as(12, kinds[ki], 0, 256, HR_STORAGE_BF16);
        hr_model *follower = make_as(12, kinds[ki], 0, 256, HR_STORAGE_BF16);
        assert_int_equal(hr_model_layout(leader)->storage, HR_STORAGE_BF16);
        hr_delta_state st = {0};
        hr_delta_header h = header(5);
        hr_delta_buf b = {0};
        hr_rng rng;
        hr_rng_seed(&rng, 7 + ki);
        for (int round = 0; round < 5; round++) {
            for (int e = 0; e < 100; e++)
                train(leader, &rng, 100, 100);
            snprintf(h.event_id, sizeof h.event_id, "1700000000-%d", round);
            ship(leader, follower, &st, &h, round % 2 ? 2048 : 0, &b);
            assert_same(leader, follower);
            assert_same_predictions(leader, follower, &rng, 100, 100);
        }
        hr_delta_buf_free(&b);
        hr_model_destroy(leader);
        hr_model_destroy(follower);
    }
    for (int way = 0; way < 2; way++) {
        hr_storage from = way ? HR_STORAGE_F32 : HR_STORAGE_BF16;
        hr_storage to = way ? HR_STORAGE_BF16 : HR_STORAGE_F32;
        hr_model *leader = make_as(12, HR_STATE_ADAGRAD, 0, 256, from);
        hr_model *other = make_as(12, HR_STATE_ADAGRAD, 0, 256, to);
        hr_rng rng;
        hr_rng_seed(&rng, 99);
        for (int e = 0; e < 50; e++)
            train(leader, &rng, 30, 30);
        hr_delta_header h = header(5);
        h.seq = 1;
        hr_delta_buf b = {0};
        hr_error err = {0};
        assert_int_equal(hr_delta_encode(leader, &h, 0, &b, &err), HR_OK);
        size_t len;
        const uint8_t *p = part(&b, 0, &len);
        hr_delta_state st = {0};
        uint64_t before = model_sum(other);
        assert_int_equal(hr_delta_apply(other, p, len, &st, &err), HR_EINVAL);
        char want[96];
        snprintf(want, sizeof want, "stored as %s; this model stores them as %s",
                 hr_storage_to_string(from), hr_storage_to_string(to));
        if (!strstr(err.message, want))
            fail_msg("message: %s", err.message);
        assert_int_equal(model_sum(other), before);
        hr_delta_buf_free(&b);
        hr_model_destroy(leader);
        hr_model_destroy(other);
    }
}

static void test_expiry_and_moved_ids(void **state)
{
    (void)state;
    hr_model *leader = make(4, HR_STATE_ADAGRAD, 100, 16);
    hr_model *follower = make(4, HR_STATE_ADAGRAD, 100, 16);
    const hr_row_layout *L = hr_model_layout(leader);
    hr_delta_state st = {0};
    hr_delta_header h = header(1);
    hr_delta_buf b = {0};
    hr_rng rng;
    hr_rng_seed(&rng, 7);
    for (int e = 0; e < 500; e++)
        train(leader, &rng, 60, 60);
    ship(leader, follower, &st, &h, 0, &b);
    assert_same(leader, follower);
    /* Half the users are seen far in the future; expiry at now + 500
     * removes every other id. */
    uint32_t now = hr_model_clock(leader);
    for (unsigned u = 0; u < 60; u += 2) {
        uint32_t r = intern(leader, HR_TABLE_USER, "u%u", u);
        hr_sgd_touch(L, hr_model_row(leader, HR_TABLE_USER, r), now + 1000);
        hr_model_mark_dirty(leader, HR_TABLE_USER, r);
    }
    uint64_t removed = hr_model_expire(leader, now + 500);
    assert_true(removed >= 30 + 1); /* the odd users and every item */
    ship(leader, follower, &st, &h, 0, &b);
    assert_int_equal(b.removals, removed);
    assert_same(leader, follower);
    assert_int_equal(hr_model_id_count(follower, HR_TABLE_USER), 30);
    char id[16];
    int n = snprintf(id, sizeof id, "u%u", 1u);
    assert_int_equal(hr_model_lookup(follower, HR_TABLE_USER, id, (size_t)n), HR_ID_NONE);
    /* New ids reuse the freed rows; old ids come back at other rows. */
    for (int e = 0; e < 300; e++)
        train(leader, &rng, 80, 60);
    ship(leader, follower, &st, &h, 0, &b);
    assert_same(leader, follower);
    /* Two ids expire and come back in swapped rows within one delta. */
    uint32_t rw = intern(leader, HR_TABLE_ITEM, "w%u", 0);
    uint32_t rx = intern(leader, HR_TABLE_ITEM, "x%u", 0);
    ship(leader, follower, &st, &h, 0, &b);
    now = hr_model_clock(leader);
    for (unsigned i = 0; i < 60; i++) { /* every other item stays */
        uint32_t r = intern(leader, HR_TABLE_ITEM, "i%u", i);
        hr_sgd_touch(L, hr_model_row(leader, HR_TABLE_ITEM, r), now + 1000);
        hr_model_mark_dirty(leader, HR_TABLE_ITEM, r);
    }
    for (unsigned u = 0; u < 80; u++) {
        uint32_t r = intern(leader, HR_TABLE_USER, "u%u", u);
        hr_sgd_touch(L, hr_model_row(leader, HR_TABLE_USER, r), now + 1000);
        hr_model_mark_dirty(leader, HR_TABLE_USER, r);
    }
    assert_int_equal(hr_model_expire(leader, now + 500), 2);
    uint32_t first = rw < rx ? rw : rx, second = rw < rx ? rx : rw;
    /* the free list hands out the last row freed first */
    uint32_t again = intern(leader, HR_TABLE_ITEM, rw < rx ? "w%u" : "x%u", 0);
    assert_int_equal(again, second);
    assert_int_equal(intern(leader, HR_TABLE_ITEM, rw < rx ? "x%u" : "w%u", 0), first);
    ship(leader, follower, &st, &h, 0, &b);
    assert_same(leader, follower);
    assert_same_predictions(leader, follower, &rng, 80, 60);
    hr_delta_buf_free(&b);
    hr_model_destroy(leader);
    hr_model_destroy(follower);
}

static void test_epochs_and_order(void **state)
{
    (void)state;
    hr_model *leader = make(4, HR_STATE_ADAGRAD, 0, 16);
    hr_model *follower = make(4, HR_STATE_ADAGRAD, 0, 16);
    hr_delta_state st = {0};
    hr_delta_header h = header(5);
    hr_delta_buf b = {0}, old = {0};
    hr_rng rng;
    hr_rng_seed(&rng, 3);
    hr_error err;
    for (int e = 0; e < 50; e++)
        train(leader, &rng, 30, 30);
    ship(leader, follower, &st, &h, 0, &b);
    /* an older epoch's delta, with changes: ignored */
    for (int e = 0; e < 50; e++)
        train(leader, &rng, 30, 30);
    hr_delta_header oh = header(4);
    oh.seq = 99;
    strcpy(oh.event_id, "old");
    assert_int_equal(hr_delta_encode(leader, &oh, 0, &old, &err), HR_OK);
    assert_true(old.rows > 0);
    uint64_t before = model_sum(follower);
    hr_delta_state saved = st;
    assert_int_equal(hr_delta_apply(follower, old.data, old.len, &st, &err), HR_OK);
    assert_true(st.stale);
    assert_int_equal(model_sum(follower), before);
    assert_int_equal(st.epoch, saved.epoch);
    assert_string_equal(st.event_id, saved.event_id);
    /* the same epoch's delta applied again: stale too */
    assert_int_equal(hr_delta_apply(follower, b.data, b.len, &st, &err), HR_OK);
    assert_true(st.stale);
    assert_int_equal(model_sum(follower), before);
    /* a gap (seq + 2): refused, nothing changes */
    for (int e = 0; e < 50; e++)
        train(leader, &rng, 30, 30);
    ship(leader, follower, &st, &h, 0, &b);
    for (int e = 0; e < 50; e++)
        train(leader, &rng, 30, 30);
    hr_delta_header gap = h;
    gap.seq = st.seq + 2;
    assert_int_equal(hr_delta_encode(leader, &gap, 0, &b, &err), HR_OK);
    before = model_sum(follower);
    saved = st;
    assert_int_equal(hr_delta_apply(follower, b.data, b.len, &st, &err), HR_ENOTFOUND);
    assert_int_equal(model_sum(follower), before);
    assert_memory_equal(&saved, &st, sizeof st);
    /* a newer epoch starts anywhere, at part 0 */
    for (int e = 0; e < 50; e++)
        train(leader, &rng, 30, 30);
    hr_delta_header next = header(6);
    next.seq = 1;
    strcpy(next.event_id, "new");
    assert_int_equal(hr_delta_encode(leader, &next, 300, &b, &err), HR_OK);
    assert_true(b.nparts >= 3);
    size_t len;
    const uint8_t *p1 = part(&b, 1, &len);
    assert_int_equal(hr_delta_apply(follower, p1, len, &st, &err), HR_ENOTFOUND); /* not part 0 */
    const uint8_t *p0 = part(&b, 0, &len);
    assert_int_equal(hr_delta_apply(follower, p0, len, &st, &err), HR_OK);
    assert_false(st.complete);
    assert_string_equal(st.event_id, saved.event_id); /* recorded at the last part only */
    const uint8_t *p2 = part(&b, 2, &len);
    assert_int_equal(hr_delta_apply(follower, p2, len, &st, &err), HR_ENOTFOUND); /* skips 1 */
    for (size_t i = 1; i < b.nparts; i++) {
        const uint8_t *p = part(&b, i, &len);
        assert_int_equal(hr_delta_apply(follower, p, len, &st, &err), HR_OK);
        assert_false(st.stale);
    }
    assert_true(st.complete);
    assert_string_equal(st.event_id, "new");
    assert_int_equal(st.epoch, 6);
    /* The older epoch's changes were taken by its (ignored) delta and the gap
     * delta was refused: the follower lacks those rows until they change
     * again, which is why a gap means re-bootstrap. Everything trained now
     * ships. */
    hr_delta_buf_free(&b);
    hr_delta_buf_free(&old);
    hr_model_destroy(leader);
    hr_model_destroy(follower);
}

/* A small delta, its follower state before, and the follower. */
typedef struct {
    hr_model *leader, *follower;
    hr_delta_state st;
    hr_delta_buf b;
} small_setup;

static void small(small_setup *s)
{
    memset(s, 0, sizeof *s);
    s->leader = make(4, HR_STATE_ADAGRAD, 0, 16);
    s->follower = make(4, HR_STATE_ADAGRAD, 0, 16);
    hr_delta_header h = header(2);
    strcpy(h.event_id, "1-0");
    hr_rng rng;
    hr_rng_seed(&rng, 9);
    for (unsigned i = 0; i < 11; i++) {
        intern(s->leader, HR_TABLE_USER, "u%u", i);
        intern(s->leader, HR_TABLE_ITEM, "i%u", i);
    }
    for (int e = 0; e < 20; e++)
        train(s->leader, &rng, 10, 10);
    ship(s->leader, s->follower, &s->st, &h, 0, &s->b);
    /* the next delta: two events, a new user */
    train(s->leader, &rng, 11, 10);
    train(s->leader, &rng, 11, 10);
    intern(s->leader, HR_TABLE_USER, "new%u", 1);
    strcpy(h.event_id, "1-1");
    h.seq++;
    hr_error err;
    assert_int_equal(hr_delta_encode(s->leader, &h, 0, &s->b, &err), HR_OK);
    assert_int_equal(s->b.nparts, 1);
}

static void small_free(small_setup *s)
{
    hr_delta_buf_free(&s->b);
    hr_model_destroy(s->leader);
    hr_model_destroy(s->follower);
}

/* Applies bytes; asserts a refusal that changed nothing. */
static void assert_refused(small_setup *s, const uint8_t *p, size_t len, uint64_t sum)
{
    hr_delta_state st = s->st;
    hr_error err;
    hr_status r = hr_delta_apply(s->follower, p, len, &st, &err);
    if (r != HR_ECORRUPT && r != HR_EINVAL)
        fail_msg("damaged delta of %zu bytes: %s", len, hr_status_to_string(r));
    assert_memory_equal(&st, &s->st, sizeof st);
    assert_int_equal(model_sum(s->follower), sum);
}

static void test_damage_changes_nothing(void **state)
{
    (void)state;
    small_setup s;
    small(&s);
    const size_t len = s.b.len;
    uint64_t sum = model_sum(s.follower);
    uint8_t *copy = malloc(len);
    assert_non_null(copy);
    /* every byte flipped, one at a time, two ways */
    for (size_t i = 0; i < len; i++) {
        const uint8_t masks[] = {0x01, 0xff};
        for (size_t k = 0; k < 2; k++) {
            memcpy(copy, s.b.data, len);
            copy[i] ^= masks[k];
            assert_refused(&s, copy, len, sum);
        }
    }
    /* every truncation, and one byte too many */
    for (size_t n = 0; n < len; n++)
        assert_refused(&s, s.b.data, n, sum);
    uint8_t *longer = calloc(1, len + 1);
    assert_non_null(longer);
    memcpy(longer, s.b.data, len);
    assert_refused(&s, longer, len + 1, sum);
    free(longer);
    /* sealed (a valid checksum) but bad content: the header is 72 bytes plus
     * the event id (3), then the id record (table u8, row u32, len u16) */
    const size_t ids_at = 72 + 3;
    assert_int_equal(s.b.ids, 1);
    struct {
        size_t at;
        uint8_t value;
    } bad[] = {
        {4, 2},                       /* another format version */
        {12, 5},                      /* k */
        {20, HR_STATE_FTRL},          /* state */
        {21, HR_LOSS_SQUARED},        /* loss */
        {23, 1},                      /* the zero byte */
        {6, 0x80},                    /* an unknown flag */
        {22, 70},                     /* event id longer than 64 */
        {60, 32},                     /* context rows */
        {64, 12},                     /* seed */
        {52, 0},                      /* record counts: fewer ids than written */
        {56, 200},                    /* more rows than written */
        {ids_at, HR_TABLE_CTX},       /* an id record for a table without ids */
        {ids_at, 9},                  /* no such table */
        {ids_at + 1, 0},              /* an id at row 0 (the row's low byte is not 0) */
        {ids_at + 4, 0x7f},           /* a row past max_rows */
        {ids_at + 6, 0x7f},           /* a key longer than HR_ID_MAX_LEN */
    };
    for (size_t i = 0; i < HR_ARRAY_LEN(bad); i++) {
        memcpy(copy, s.b.data, len);
        if (bad[i].at == ids_at + 1) {
            memset(copy + bad[i].at, 0, 4);
        } else {
            copy[bad[i].at] = bad[i].value;
        }
        hr_delta_seal(copy, len);
        assert_refused(&s, copy, len, sum);
    }
    /* a NaN and an infinity in a row's weights and its state (the counters
     * may hold any bits), in the last row record */
    const hr_row_layout *L = hr_model_layout(s.follower);
    const size_t last_row = len - 8 - (size_t)L->floats * 4;
    const uint32_t slots[] = {0, L->bias, L->stride + 1};
    const uint32_t bits[] = {0x7fc00000u, 0x7f800000u};
    for (size_t i = 0; i < HR_ARRAY_LEN(slots); i++) {
        for (size_t j = 0; j < HR_ARRAY_LEN(bits); j++) {
            memcpy(copy, s.b.data, len);
            memcpy(copy + last_row + 4 * (size_t)slots[i], &bits[j], 4);
            hr_delta_seal(copy, len);
            assert_refused(&s, copy, len, sum);
        }
    }
    memcpy(copy, s.b.data, len);
    memcpy(copy + last_row + 4 * (size_t)L->count, &bits[0], 4); /* a count, not a float */
    hr_delta_seal(copy, len);
    hr_delta_state st = s.st;
    hr_error err;
    assert_int_equal(hr_delta_apply(s.follower, copy, len, &st, &err), HR_OK);
    /* a model of another shape refuses the intact delta */
    hr_model *other = make(8, HR_STATE_ADAGRAD, 0, 16);
    hr_delta_state fresh = {0};
    assert_int_equal(hr_delta_apply(other, s.b.data, len, &fresh, &err), HR_EINVAL);
    assert_false(fresh.started);
    hr_model_destroy(other);
    /* and the intact delta applies */
    st = s.st;
    assert_int_equal(hr_delta_apply(s.follower, s.b.data, len, &st, &err), HR_OK);
    free(copy);
    small_free(&s);
}

/* Rows of a table with a given mark bit. */
static uint64_t marked(hr_model *m, hr_mark which)
{
    uint64_t n = 0;
    for (int t = 0; t < HR_TABLE_COUNT; t++)
        n += hr_model_count_marked(m, (hr_table_id)t, which);
    return n;
}

static void take_checkpoint_marks(hr_model *m)
{
    for (int t = 0; t < HR_TABLE_COUNT; t++)
        for (uint32_t r = 0; r < hr_model_rows(m, (hr_table_id)t); r++)
            hr_model_take_dirty(m, (hr_table_id)t, r);
}

static void test_marks_independent_of_checkpoints(void **state)
{
    (void)state;
    hr_model *leader = make(4, HR_STATE_ADAGRAD, 0, 16);
    hr_model *follower = make(4, HR_STATE_ADAGRAD, 0, 16);
    hr_delta_state st = {0};
    hr_delta_header h = header(1);
    hr_delta_buf b = {0};
    hr_rng rng;
    hr_rng_seed(&rng, 5);
    hr_error err;
    hr_delta_header fh = header(1);
    assert_int_equal(hr_delta_encode(follower, &fh, 0, &b, &err), HR_OK); /* its own init */
    for (unsigned i = 0; i < 20; i++) {
        intern(leader, HR_TABLE_USER, "u%u", i);
        intern(leader, HR_TABLE_ITEM, "i%u", i);
    }
    for (int e = 0; e < 30; e++)
        train(leader, &rng, 20, 20);
    take_checkpoint_marks(leader);
    ship(leader, follower, &st, &h, 0, &b);
    assert_int_equal(marked(leader, HR_MARK_CKPT), 0);
    /* set A: the delta takes its bits, the checkpoint's stay */
    for (int e = 0; e < 10; e++)
        train(leader, &rng, 20, 20);
    uint64_t a = marked(leader, HR_MARK_CKPT);
    assert_int_equal(marked(leader, HR_MARK_DELTA), a);
    ship(leader, follower, &st, &h, 0, &b);
    assert_int_equal(b.rows, a);
    assert_int_equal(marked(leader, HR_MARK_CKPT), a);
    assert_int_equal(marked(leader, HR_MARK_DELTA), 0);
    /* the checkpoint takes its bits; set B ships exactly, A not again */
    take_checkpoint_marks(leader);
    train(leader, &rng, 20, 20);
    uint64_t set_b = marked(leader, HR_MARK_CKPT);
    assert_true(set_b >= 3); /* global, user, item (and the event's context rows) */
    ship(leader, follower, &st, &h, 0, &b);
    assert_int_equal(b.rows, set_b);
    assert_int_equal(marked(leader, HR_MARK_CKPT), set_b);
    assert_same(leader, follower);
    /* the follower marks what it applies for its own checkpoints, and
     * nothing for deltas */
    assert_true(marked(follower, HR_MARK_CKPT) > 0);
    assert_int_equal(marked(follower, HR_MARK_DELTA), 0);
    assert_int_equal(marked(follower, HR_MARK_ID), 0);
    hr_delta_buf_free(&b);
    hr_model_destroy(leader);
    hr_model_destroy(follower);
}

/* ---- a trainer thread while the publisher encodes ---- */

typedef struct {
    hr_model *m;
    atomic_bool done;
    unsigned events;
} trainer_job;

static void *trainer_thread(void *arg)
{
    trainer_job *j = arg;
    hr_rng rng;
    hr_rng_seed(&rng, 77);
    for (unsigned e = 0; e < j->events; e++)
        train(j->m, &rng, 1500, 1500); /* new ids all along */
    atomic_store(&j->done, true);
    return NULL;
}

static void test_encode_while_training(void **state)
{
    (void)state;
    hr_model *leader = make(8, HR_STATE_ADAGRAD, 0, 256);
    hr_model *follower = make(8, HR_STATE_ADAGRAD, 0, 256);
    hr_delta_state st = {0};
    hr_delta_header h = header(1);
    hr_delta_buf b = {0};
    trainer_job job = {.m = leader, .events = 200000};
    atomic_init(&job.done, false);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, trainer_thread, &job), 0);
    unsigned deltas = 0;
    uint64_t rows = 0;
    /* bounded: the trainer ends after its events */
    while (!atomic_load(&job.done) && deltas < 1000000) {
        ship(leader, follower, &st, &h, deltas % 2 ? 4096 : 0, &b);
        rows += b.rows;
        deltas++;
    }
    pthread_join(th, NULL);
    ship(leader, follower, &st, &h, 0, &b);
    assert_same(leader, follower);
    hr_rng rng;
    hr_rng_seed(&rng, 1);
    assert_same_predictions(leader, follower, &rng, 1500, 1500);
    print_message("%u deltas during training, %llu rows\n", deltas, (unsigned long long)rows);
    hr_delta_buf_free(&b);
    hr_model_destroy(leader);
    hr_model_destroy(follower);
}

/* ---- fuzz corpus seeds ---- */

/* The model of tests/fuzz/fuzz_common.c (fuzz_small_model). */
static hr_model *fuzz_shape_model(void)
{
    hr_config c;
    hr_config_defaults(&c);
    c.k = 4;
    c.max_users = 16;
    c.max_items = 16;
    c.chunk_rows = 64;
    c.context_bits = 4;
    hr_schedule s;
    hr_schedule_defaults(&s);
    hr_model_config mc;
    hr_model *m = NULL;
    assert_int_equal(hr_model_config_from(&c, &s, &mc, NULL), HR_OK);
    mc.expire_seconds = 100;
    assert_int_equal(hr_model_create(&mc, &m, NULL), HR_OK);
    hr_config_free(&c);
    return m;
}

static void write_file(const char *dir, const char *name, const uint8_t *p, size_t len)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(p, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

/* Writes the seeds (HOGREC_DELTA_SEEDS=<dir>): deltas of the fuzz model's
 * shape, a first one, a trained one, one in parts, one with removals. */
static void write_seeds(const char *dir)
{
    hr_model *m = fuzz_shape_model();
    hr_delta_buf b = {0};
    hr_delta_header h = header(1);
    hr_error err;
    hr_rng rng;
    hr_rng_seed(&rng, 1);
    for (int e = 0; e < 10; e++)
        train(m, &rng, 8, 8);
    strcpy(h.event_id, "1700000000000-0");
    h.seq = 1;
    assert_int_equal(hr_delta_encode(m, &h, 0, &b, &err), HR_OK);
    write_file(dir, "first.bin", b.data, b.len);
    for (int e = 0; e < 3; e++)
        train(m, &rng, 8, 8);
    h.seq = 2;
    assert_int_equal(hr_delta_encode(m, &h, 0, &b, &err), HR_OK);
    write_file(dir, "trained.bin", b.data, b.len);
    for (int e = 0; e < 6; e++)
        train(m, &rng, 8, 8);
    h.seq = 3;
    assert_int_equal(hr_delta_encode(m, &h, 300, &b, &err), HR_OK);
    size_t len;
    const uint8_t *p = part(&b, 0, &len);
    write_file(dir, "part0.bin", p, len);
    p = part(&b, b.nparts - 1, &len);
    write_file(dir, "part-last.bin", p, len);
    hr_model_expire(m, hr_model_clock(m) + 1000);
    h.seq = 4;
    assert_int_equal(hr_delta_encode(m, &h, 0, &b, &err), HR_OK);
    write_file(dir, "removals.bin", b.data, b.len);
    hr_delta_buf_free(&b);
    hr_model_destroy(m);
}

/* The events a model counted: the item rows' event counts. */
static uint64_t counted(hr_model *m)
{
    const hr_row_layout *L = hr_model_layout(m);
    float a[L->floats];
    uint64_t sum = 0;
    for (uint32_t r = 1; r < hr_model_rows(m, HR_TABLE_ITEM); r++) {
        hr_sgd_row_read(L, hr_model_row(m, HR_TABLE_ITEM, r), a);
        sum += hr_sgd_row_count(L, a);
    }
    return sum;
}

/* Feeds part i of b to the follower through hr_delta_take. */
static void take(hr_model *f, const hr_delta_buf *b, size_t i, hr_delta_parts *p,
                 hr_delta_state *st, bool want_applied)
{
    size_t len;
    const uint8_t *d = part(b, i, &len);
    hr_error err;
    bool applied = !want_applied;
    hr_status s = hr_delta_take(f, d, len, p, st, &applied, &err);
    if (s != HR_OK)
        fail_msg("take part %zu: %s", i, err.message);
    assert_false(st->stale);
    assert_int_equal(applied, want_applied);
}

/* A leader dies between two parts of a delta: a follower that takes
 * parts with hr_delta_take holds them and applies nothing of that delta;
 * the next leader (which had the same last complete delta) retrains from
 * it and publishes a newer epoch, whose first part drops the held parts.
 * The follower then equals the new leader and counts no event twice. */
static void test_delta_cut_short(void **state)
{
    (void)state;
    const hr_state_kind kinds[] = {HR_STATE_SGD, HR_STATE_ADAGRAD, HR_STATE_ADAM};
    for (size_t ki = 0; ki < HR_ARRAY_LEN(kinds); ki++) {
        hr_model *old = make(8, kinds[ki], 0, 256), *next = make(8, kinds[ki], 0, 256),
                 *follower = make(8, kinds[ki], 0, 256);
        hr_delta_state fst = {0}, nst = {0};
        hr_delta_parts held = {0};
        hr_delta_header h = header(1);
        hr_delta_buf b = {0};
        hr_rng rng;
        hr_rng_seed(&rng, 7 + ki);
        const unsigned users = 300, items = 400;
        /* delta 1 of epoch 1, whole: both the follower and the next leader */
        for (int e = 0; e < 200; e++)
            train(old, &rng, users, items);
        snprintf(h.event_id, sizeof h.event_id, "1700000000000-1");
        h.seq = 1;
        hr_error err;
        assert_int_equal(hr_delta_encode(old, &h, 2048, &b, &err), HR_OK);
        for (size_t i = 0; i < b.nparts; i++) {
            take(follower, &b, i, &held, &fst, i + 1 == b.nparts);
            size_t len;
            const uint8_t *d = part(&b, i, &len);
            assert_int_equal(hr_delta_apply(next, d, len, &nst, &err), HR_OK);
        }
        assert_same(next, follower);
        assert_int_equal(counted(follower), 200);
        const uint64_t after1 = model_sum(follower);
        /* delta 2 of epoch 1 in many parts; the last never comes */
        for (int e = 0; e < 300; e++)
            train(old, &rng, users, items);
        snprintf(h.event_id, sizeof h.event_id, "1700000000000-2");
        h.seq = 2;
        assert_int_equal(hr_delta_encode(old, &h, 2048, &b, &err), HR_OK);
        assert_true(b.nparts >= 3);
        for (size_t i = 0; i + 1 < b.nparts; i++)
            take(follower, &b, i, &held, &fst, false);
        assert_int_equal(model_sum(follower), after1); /* nothing of it applied */
        assert_int_equal(counted(follower), 200);
        assert_int_equal(held.nparts, b.nparts - 1);
        assert_string_equal(fst.event_id, "1700000000000-1");
        /* the next leader (epoch 2) retrains from entry 1700000000000-1 */
        for (int e = 0; e < 100; e++)
            train(next, &rng, users, items);
        hr_delta_header h2 = header(2);
        h2.seq = 1;
        snprintf(h2.event_id, sizeof h2.event_id, "1700000000000-3");
        hr_delta_buf b2 = {0};
        assert_int_equal(hr_delta_encode(next, &h2, 2048, &b2, &err), HR_OK);
        for (size_t i = 0; i < b2.nparts; i++)
            take(follower, &b2, i, &held, &fst, i + 1 == b2.nparts);
        assert_int_equal(held.dropped, 1);
        assert_int_equal(held.nparts, 0);
        assert_same(next, follower);
        assert_int_equal(counted(follower), 300); /* 200 + 100: none twice */
        assert_int_equal(counted(follower), counted(next));
        assert_string_equal(fst.event_id, "1700000000000-3");
        /* the dead leader's last part, late: older, ignored */
        size_t len;
        const uint8_t *d = part(&b, b.nparts - 1, &len);
        bool applied = true;
        assert_int_equal(hr_delta_take(follower, d, len, &held, &fst, &applied, &err), HR_OK);
        assert_true(fst.stale);
        assert_false(applied);
        assert_same(next, follower);
        /* a part after a missing one is a gap, and drops what is held */
        for (int e = 0; e < 300; e++)
            train(next, &rng, users, items);
        h2.seq = 2;
        assert_int_equal(hr_delta_encode(next, &h2, 2048, &b2, &err), HR_OK);
        assert_true(b2.nparts >= 3);
        take(follower, &b2, 0, &held, &fst, false);
        d = part(&b2, 2, &len);
        assert_int_equal(hr_delta_take(follower, d, len, &held, &fst, &applied, &err),
                         HR_ENOTFOUND);
        assert_int_equal(held.nparts, 0);
        hr_delta_buf_free(&b);
        hr_delta_buf_free(&b2);
        hr_delta_parts_free(&held);
        hr_delta_parts_free(&held); /* a no-op */
        hr_model_destroy(old);
        hr_model_destroy(next);
        hr_model_destroy(follower);
    }
}

/* The parts held are bounded: a delta past max_bytes is dropped with
 * HR_EFULL; the default bound holds the largest delta a model can make. */
static void test_delta_parts_bound(void **state)
{
    (void)state;
    hr_model *leader = make(8, HR_STATE_ADAGRAD, 0, 256), *follower = make(8, HR_STATE_ADAGRAD, 0, 256);
    hr_rng rng;
    hr_rng_seed(&rng, 5);
    for (int e = 0; e < 500; e++)
        train(leader, &rng, 300, 400);
    hr_delta_header h = header(1);
    h.seq = 1;
    hr_delta_buf b = {0};
    hr_error err;
    assert_int_equal(hr_delta_encode(leader, &h, 1024, &b, &err), HR_OK);
    assert_true(b.nparts >= 3);
    assert_true(b.len <= hr_delta_max_bytes(follower));
    hr_delta_parts held = {.max_bytes = b.ends[0] + 1};
    hr_delta_state st = {0};
    bool applied = true;
    size_t len;
    const uint8_t *d = part(&b, 0, &len);
    assert_int_equal(hr_delta_take(follower, d, len, &held, &st, &applied, &err), HR_OK);
    d = part(&b, 1, &len);
    assert_int_equal(hr_delta_take(follower, d, len, &held, &st, &applied, &err), HR_EFULL);
    assert_int_equal(held.nparts, 0);
    assert_false(applied);
    assert_false(st.started);
    /* the default bound takes the whole delta */
    held.max_bytes = 0;
    for (size_t i = 0; i < b.nparts; i++)
        take(follower, &b, i, &held, &st, i + 1 == b.nparts);
    assert_same(leader, follower);
    hr_delta_parts_free(&held);
    hr_delta_buf_free(&b);
    hr_model_destroy(leader);
    hr_model_destroy(follower);
}

static void test_fuzz_seeds_decode(void **state)
{
    (void)state;
    const char *out = getenv("HOGREC_DELTA_SEEDS");
    if (out && *out) {
        write_seeds(out);
        return;
    }
    const char *src = getenv("HOGREC_SOURCE_DIR");
    assert_non_null(src);
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tests/fuzz/corpus/delta", src);
    DIR *d = opendir(dir);
    if (!d)
        fail_msg("%s: no seeds (write them with HOGREC_DELTA_SEEDS=<dir> test_delta)", dir);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!strstr(de->d_name, ".bin"))
            continue;
        char path[8192];
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        FILE *f = fopen(path, "rb");
        assert_non_null(f);
        static uint8_t buf[1 << 16];
        size_t len = fread(buf, 1, sizeof buf, f);
        fclose(f);
        hr_model *m = fuzz_shape_model();
        hr_delta_state st = {0};
        hr_error err;
        hr_status s = hr_delta_apply(m, buf, len, &st, &err);
        /* a later part cannot start a follower; every seed is well formed */
        if (s != HR_OK && s != HR_ENOTFOUND)
            fail_msg("seed %s: %s (the format changed: write them again with "
                     "HOGREC_DELTA_SEEDS=<dir> test_delta)",
                     de->d_name, err.message);
        hr_model_destroy(m);
        n++;
    }
    closedir(d);
    assert_true(n >= 4);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_follower_equals_leader),
        cmocka_unit_test(test_bf16_deltas),
        cmocka_unit_test(test_expiry_and_moved_ids),
        cmocka_unit_test(test_epochs_and_order),
        cmocka_unit_test(test_damage_changes_nothing),
        cmocka_unit_test(test_marks_independent_of_checkpoints),
        cmocka_unit_test(test_encode_while_training),
        cmocka_unit_test(test_delta_cut_short),
        cmocka_unit_test(test_delta_parts_bound),
        cmocka_unit_test(test_fuzz_seeds_decode),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

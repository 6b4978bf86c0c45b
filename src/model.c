/*
 * model.c - parameter storage and id tables of the factorization machine.
 *
 * Each table is an array of chunk pointers; a chunk holds chunk_rows rows
 * (a weights block and, with optimizer state, a state block, each of
 * chunk_rows x `stride` floats) and is allocated once, the first time a row in it is handed
 * out, and never moved or freed before the model is. Chunk pointers are
 * atomics published with release stores, so any thread that got a row number
 * from the id table (whose publication happens after the chunk's) can use it.
 *
 * Row contents are only touched through sgd.c (see the race note there).
 * Change marks are one atomic byte per row, beside the chunk, a bit per
 * consumer (hr_mark): the checkpoint's bit and the delta's bits are set
 * together by one atomic or and cleared separately by their takers.
 *
 * Threads: hr_model_intern from HTTP/replay threads; lookups, rows and
 * predictions from any thread; expiry from the trainer pool's maintenance.
 */
#include "hogrec/model.h"

#include <assert.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "hogrec/attrmat.h"
#include "hogrec/half.h"
#include "hogrec/ids.h"
#include "hogrec/sgd.h"

/* last_seen counts seconds from 2020-01-01T00:00:00Z (fits uint32 to 2156). */
#define HR_MODEL_EPOCH 1577836800.0

/* A row's catalog attributes (hr_model_set_attrs): meta is the count
 * (low 8 bits) and ATTR_PINNED; f[i] packs a context row (low 32 bits) and
 * the float bits of its value (high 32). Atomics: a reader racing a rewrite
 * may see a mix of old and new entries, each of them a valid feature. */
#define ATTR_PINNED 0x100u
typedef struct {
    atomic_uint meta;
    _Atomic uint64_t f[HR_MAX_ATTRS];
} attr_slot;

typedef struct {
    hr_ids *ids;                    /* NULL for the global and context tables */
    uint32_t max_rows;              /* hard limit */
    uint32_t nchunks;               /* entries in chunks[] */
    _Atomic(float *) *chunks;       /* chunk -> rows, NULL until allocated */
    _Atomic(atomic_uchar *) *dirty; /* chunk -> one mark byte per row (hr_mark bits) */
    _Atomic(uint16_t *) *half;      /* chunk -> half rows (item table with half_items;
                                       published before the chunk), else NULL */
    atomic_uchar *summary;          /* group of HR_MARK_GROUP_ROWS rows -> or of its
                                       rows' marks since taken */
    uint32_t ngroups;               /* entries in summary[] */
    pthread_mutex_t grow;           /* serializes chunk allocation (rows and attributes) */
    atomic_uint_fast64_t nalloc;    /* chunks allocated */
    _Atomic(attr_slot *) *attrs;    /* user/item: chunk -> attribute slots, NULL until a
                                       row in it gets attributes (hr_model_set_attrs) */
    atomic_uint attr_rows;          /* rows with at least one attribute */
} table;

struct hr_model {
    hr_model_config cfg;
    hr_row_layout L;
    hr_row_layout F;                /* L's packed F32 layout (what rows are built in) */
    uint32_t chunk_shift;
    table t[HR_TABLE_COUNT];
    atomic_uint_fast64_t expired;   /* ids removed by expiry */
    hr_half_layout H;               /* half item rows (cfg.half_items) */
    pthread_mutex_t half_mu;        /* serializes hr_model_item_half_sync */
    bool half_built;                /* every item row converted once; under half_mu */
    hr_attrmat *item_am;            /* item x attribute matrix of the top-K scan */
};

typedef struct {
    hr_model *m;
    hr_table_id t;
} init_ctx;

/* Floats of one chunk: the weights block and, with state, the state block. */
static size_t chunk_floats(const hr_model *m)
{
    return (size_t)m->cfg.chunk_rows * m->L.floats;
}

hr_status hr_model_config_from(const hr_config *c, const hr_schedule *s, hr_model_config *out,
                               hr_error *err)
{
    memset(out, 0, sizeof *out);
    out->k = (uint32_t)c->k;
    out->loss = c->loss;
    /* the state the schedule's optimizer needs */
    const hr_state_kind need = s->optimizer == HR_OPT_SGD       ? HR_STATE_SGD
                               : s->optimizer == HR_OPT_ADAGRAD ? HR_STATE_ADAGRAD
                               : s->optimizer == HR_OPT_ADAM    ? HR_STATE_ADAM
                                                                : HR_STATE_FTRL;
    switch (c->state) {
    case HR_CONFIG_STATE_SGD: out->state = HR_STATE_SGD; break;
    case HR_CONFIG_STATE_ADAGRAD: out->state = HR_STATE_ADAGRAD; break;
    case HR_CONFIG_STATE_FTRL: out->state = HR_STATE_FTRL; break;
    case HR_CONFIG_STATE_ADAM: out->state = HR_STATE_ADAM; break;
    case HR_CONFIG_STATE_AUTO:
    default: /* the config parser admits no other value */
        assert(c->state == HR_CONFIG_STATE_AUTO);
        out->state = need;
        break;
    }
    out->init_scale = (float)c->init_scale;
    out->seed = (uint64_t)c->seed;
    out->l2[HR_GROUP_GLOBAL] = c->l2_global;
    out->l2[HR_GROUP_BIAS] = c->l2_bias;
    out->l2[HR_GROUP_USER] = c->l2_user;
    out->l2[HR_GROUP_ITEM] = c->l2_item;
    out->l2[HR_GROUP_CONTEXT] = c->l2_context;
    out->max_rows[HR_TABLE_GLOBAL] = 1;
    out->max_rows[HR_TABLE_USER] = (uint32_t)c->max_users + 1;
    out->max_rows[HR_TABLE_ITEM] = (uint32_t)c->max_items + 1;
    out->max_rows[HR_TABLE_CTX] = 1u << c->context_bits;
    out->chunk_rows = (uint32_t)c->chunk_rows;
    out->min_count = (uint32_t)c->min_count;
    out->half_items = c->topk_precision == HR_CONFIG_TOPK_F16;
    out->attr_value[0] = (float)c->attr_value_user;
    out->attr_value[1] = (float)c->attr_value_item;
    out->attr_norm = c->attr_norm;
    out->storage = c->storage;
    out->expire_seconds = c->expire_seconds;
    out->grad_clip = c->grad_clip;
    out->adagrad_init = (float)c->adagrad_init;
    out->rating_offset = (float)c->rating_offset;
    if (out->chunk_rows & (out->chunk_rows - 1))
        return hr_error_set(err, HR_EINVAL, "chunk_rows", "chunk_rows must be a power of two");
    /* SGD needs nothing; Adam needs Adam rows; AdaGrad and FTRL a state at
     * least as far along their chain (row.h) */
    bool served = need == HR_STATE_SGD || need == out->state ||
                  (need != HR_STATE_ADAM && out->state != HR_STATE_ADAM && need < out->state);
    if (!served)
        return hr_error_set(err, HR_EINVAL, "state",
                            "state '%s' keeps no optimizer state for optimizer '%s'",
                            hr_config_state_to_string(c->state),
                            hr_optimizer_to_string(s->optimizer));
    return HR_OK;
}

/* Fills a fresh row, packed F32 as hr_sgd_row_from_f32 takes it: seeded
 * factors (the same for a given seed, table and row whatever the thread
 * order), zero bias, initial accumulators. */
static void init_row(const hr_model *m, hr_table_id t, uint32_t row, float *dst)
{
    const hr_row_layout *L = &m->F;
    memset(dst, 0, (size_t)L->floats * sizeof(float));
    hr_rng rng;
    hr_rng_seed(&rng, m->cfg.seed ^ ((uint64_t)t << 56) ^ ((uint64_t)row * 0x9e3779b97f4a7c15ull));
    if (t != HR_TABLE_GLOBAL)
        for (uint32_t d = 0; d < L->k; d++)
            dst[d] = (float)(hr_rng_normal(&rng) * m->cfg.init_scale);
    if (t == HR_TABLE_GLOBAL && m->cfg.loss == HR_LOSS_SQUARED)
        dst[L->bias] = m->cfg.rating_offset;
    if (L->acc) /* packed: the state block follows the weights */
        for (uint32_t d = 0; d <= L->k; d++)
            dst[L->stride + (L->acc - L->state) + d] = m->cfg.adagrad_init;
    uint32_t now = hr_model_clock(m);
    memcpy(dst + L->last_seen, &now, sizeof now);
}

/* Bytes of one chunk's half rows. */
static size_t half_chunk_bytes(const hr_model *m)
{
    return (size_t)m->cfg.chunk_rows * m->H.stride * sizeof(uint16_t);
}

static hr_status ensure_chunk(hr_model *m, table *tb, uint32_t row)
{
    uint32_t c = row >> m->chunk_shift;
    if (c >= tb->nchunks)
        return HR_EFULL;
    if (atomic_load_explicit(&tb->chunks[c], memory_order_acquire))
        return HR_OK;
    hr_status st = HR_OK;
    pthread_mutex_lock(&tb->grow);
    if (!atomic_load_explicit(&tb->chunks[c], memory_order_relaxed)) {
        /* Anonymous pages: zero, page-aligned, and resident only once a row
         * on them is written, so a chunk of few rows (the global table, a
         * fresh table) costs little memory. */
        size_t bytes = chunk_floats(m) * sizeof(float);
        float *rows = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        atomic_uchar *marks = calloc(m->cfg.chunk_rows, sizeof *marks);
        uint16_t *half = NULL;
        if (tb->half) {
            half = mmap(NULL, half_chunk_bytes(m), PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (half == MAP_FAILED)
                half = NULL;
        }
        if (rows == MAP_FAILED || !marks || (tb->half && !half)) {
            if (rows != MAP_FAILED)
                munmap(rows, bytes);
            if (half)
                munmap(half, half_chunk_bytes(m));
            free(marks);
            st = HR_ENOMEM;
        } else {
            if (tb->half)
                atomic_store_explicit(&tb->half[c], half, memory_order_release);
            atomic_store_explicit(&tb->dirty[c], marks, memory_order_release);
            atomic_store_explicit(&tb->chunks[c], rows, memory_order_release);
            atomic_fetch_add(&tb->nalloc, 1);
        }
    }
    pthread_mutex_unlock(&tb->grow);
    return st;
}

/* Runs under the id table's insert lock, before the id is visible. */
static hr_status on_new_row(void *ctx, uint32_t row)
{
    init_ctx *ic = ctx;
    table *tb = &ic->m->t[ic->t];
    hr_status st = ensure_chunk(ic->m, tb, row);
    if (st != HR_OK)
        return st;
    float fresh[ic->m->F.floats];
    init_row(ic->m, ic->t, row, fresh);
    hr_sgd_row_from_f32(&ic->m->L, hr_model_row(ic->m, ic->t, row), fresh);
    hr_model_mark_dirty(ic->m, ic->t, row);
    return HR_OK;
}

void hr_model_reset_row(hr_model *m, hr_table_id t, uint32_t row)
{
    float fresh[m->F.floats];
    init_row(m, t, row, fresh);
    hr_sgd_row_from_f32(&m->L, hr_model_row(m, t, row), fresh);
    hr_model_mark_dirty(m, t, row);
}

static void table_free(const hr_model *m, table *tb)
{
    for (uint32_t c = 0; tb->chunks && tb->dirty && c < tb->nchunks; c++) {
        float *rows = atomic_load(&tb->chunks[c]);
        if (rows)
            munmap(rows, chunk_floats(m) * sizeof(float));
        free(atomic_load(&tb->dirty[c]));
        uint16_t *half = tb->half ? atomic_load(&tb->half[c]) : NULL;
        if (half)
            munmap(half, half_chunk_bytes(m));
    }
    for (uint32_t c = 0; tb->attrs && c < tb->nchunks; c++)
        free(atomic_load(&tb->attrs[c]));
    free(tb->attrs);
    free(tb->half);
    free(tb->chunks);
    free(tb->dirty);
    free(tb->summary);
    hr_ids_destroy(tb->ids);
    pthread_mutex_destroy(&tb->grow);
}

void hr_model_destroy(hr_model *m)
{
    if (!m)
        return;
    for (int t = 0; t < HR_TABLE_COUNT; t++)
        table_free(m, &m->t[t]);
    pthread_mutex_destroy(&m->half_mu);
    hr_attrmat_destroy(m->item_am);
    free(m);
}

hr_status hr_model_create(const hr_model_config *mc, hr_model **out, hr_error *err)
{
    *out = NULL;
    if (mc->k < 1 || mc->k > 1024)
        return hr_error_set(err, HR_EINVAL, "k", "k must be in [1, 1024]");
    if (mc->chunk_rows < 1 || (mc->chunk_rows & (mc->chunk_rows - 1)))
        return hr_error_set(err, HR_EINVAL, "chunk_rows", "chunk_rows must be a power of two");
    if ((uint64_t)mc->chunk_rows * 3 * ((mc->k + 6) & ~3u) >= UINT32_MAX)
        return hr_error_set(err, HR_EINVAL, "chunk_rows", "chunk_rows x row size is too large");
    hr_model *m = calloc(1, sizeof *m);
    if (!m)
        return hr_error_set(err, HR_ENOMEM, NULL, "out of memory");
    m->cfg = *mc;
    if ((unsigned)mc->storage >= HR_STORAGE_COUNT) {
        free(m);
        return hr_error_set(err, HR_EINVAL, "storage", "storage must be f32 or bf16");
    }
    m->L = hr_row_layout_make_storage(mc->k, mc->state, mc->chunk_rows, mc->storage);
    m->F = hr_row_layout_f32(&m->L);
    assert((uint64_t)mc->chunk_rows * m->L.floats < UINT32_MAX); /* checked above */
    while ((1u << m->chunk_shift) < mc->chunk_rows)
        m->chunk_shift++;
    m->H = hr_half_layout_make(mc->k);
    pthread_mutex_init(&m->half_mu, NULL);
    hr_status st = HR_OK;
    for (int t = 0; t < HR_TABLE_COUNT; t++) {
        table *tb = &m->t[t];
        pthread_mutex_init(&tb->grow, NULL);
        tb->max_rows = mc->max_rows[t];
        if (tb->max_rows < 1)
            tb->max_rows = 1;
        tb->nchunks = (uint32_t)(((uint64_t)tb->max_rows + mc->chunk_rows - 1) >> m->chunk_shift);
        tb->chunks = calloc(tb->nchunks, sizeof *tb->chunks);
        tb->dirty = calloc(tb->nchunks, sizeof *tb->dirty);
        tb->ngroups =
            (uint32_t)(((uint64_t)tb->max_rows + HR_MARK_GROUP_ROWS - 1) / HR_MARK_GROUP_ROWS);
        tb->summary = calloc(tb->ngroups, sizeof *tb->summary);
        if (t == HR_TABLE_ITEM && mc->half_items &&
            !(tb->half = calloc(tb->nchunks, sizeof *tb->half))) {
            st = hr_error_set(err, HR_ENOMEM, NULL, "out of memory");
            goto fail;
        }
        if (!tb->chunks || !tb->dirty || !tb->summary) {
            st = hr_error_set(err, HR_ENOMEM, NULL, "out of memory");
            goto fail;
        }
        if (t == HR_TABLE_USER || t == HR_TABLE_ITEM) {
            if (!(tb->attrs = calloc(tb->nchunks, sizeof *tb->attrs))) {
                st = hr_error_set(err, HR_ENOMEM, NULL, "out of memory");
                goto fail;
            }
            st = hr_ids_create(1, tb->max_rows, &tb->ids);
            if (st != HR_OK) {
                hr_error_set(err, st, NULL, "id table: %s", hr_status_to_string(st));
                goto fail;
            }
        }
    }
    if ((st = hr_attrmat_create(m->t[HR_TABLE_ITEM].max_rows, &m->item_am)) != HR_OK) {
        hr_error_set(err, st, NULL, "out of memory");
        goto fail;
    }
    /* Row 0 of every table, and every context row, exist from the start. */
    for (int t = 0; t < HR_TABLE_COUNT; t++) {
        uint32_t n = t == HR_TABLE_CTX ? m->t[t].max_rows : 1;
        init_ctx ic = {m, (hr_table_id)t};
        for (uint32_t r = 0; r < n; r++) {
            if ((st = on_new_row(&ic, r)) != HR_OK) {
                hr_error_set(err, st, NULL, "allocating rows: %s", hr_status_to_string(st));
                goto fail;
            }
        }
    }
    *out = m;
    return HR_OK;
fail:
    hr_model_destroy(m);
    return st;
}

const hr_model_config *hr_model_get_config(const hr_model *m) { return &m->cfg; }
const hr_row_layout *hr_model_layout(const hr_model *m) { return &m->L; }

bool hr_model_supports(const hr_model *m, hr_optimizer opt)
{
    switch (opt) {
    case HR_OPT_SGD: return true;
    case HR_OPT_ADAGRAD: return m->L.acc != 0;
    case HR_OPT_FTRL: return m->L.acc != 0 && m->L.ftrl != 0;
    case HR_OPT_ADAM: return m->L.adam != 0;
    default: return false;
    }
}

static bool has_ids(hr_table_id t) { return t == HR_TABLE_USER || t == HR_TABLE_ITEM; }

hr_status hr_model_intern(hr_model *m, hr_table_id t, const char *id, size_t len, uint32_t *row,
                          bool *created)
{
    if (!has_ids(t))
        return HR_EINVAL;
    uint32_t r = hr_ids_lookup(m->t[t].ids, id, len);
    if (r != HR_ID_NONE) {
        *row = r;
        if (created)
            *created = false;
        return HR_OK;
    }
    init_ctx ic = {m, t};
    bool fresh = false;
    hr_status st = hr_ids_intern(m->t[t].ids, id, len, on_new_row, &ic, row, &fresh);
    /* on_new_row marked the contents before the id was visible; the id mark
     * comes after, so a delta that takes it finds the id. */
    if (st == HR_OK && fresh)
        hr_model_mark(m, t, *row, HR_MARK_ALL);
    if (created)
        *created = fresh;
    return st;
}

uint32_t hr_model_lookup(const hr_model *m, hr_table_id t, const char *id, size_t len)
{
    if (!has_ids(t) || len == 0 || len > HR_ID_MAX_LEN)
        return HR_ID_NONE;
    return hr_ids_lookup(m->t[t].ids, id, len);
}

const char *hr_model_key(const hr_model *m, hr_table_id t, uint32_t row, size_t *len)
{
    if (!has_ids(t))
        return NULL;
    return hr_ids_key(m->t[t].ids, row, len);
}

hr_status hr_model_insert_id_at(hr_model *m, hr_table_id t, const char *id, size_t len,
                                uint32_t row)
{
    if (!has_ids(t) || row == 0)
        return HR_EINVAL;
    hr_status st = ensure_chunk(m, &m->t[t], row);
    if (st != HR_OK)
        return st;
    return hr_ids_insert_at(m->t[t].ids, id, len, row);
}

hr_status hr_model_remove_id(hr_model *m, hr_table_id t, uint32_t row)
{
    if (!has_ids(t))
        return HR_EINVAL;
    return hr_ids_remove(m->t[t].ids, row);
}

hr_status hr_model_forget(hr_model *m, hr_table_id t, uint32_t row)
{
    if (!has_ids(t) || row == 0 || row >= hr_model_rows(m, t))
        return HR_EINVAL;
    hr_status st = hr_ids_remove(m->t[t].ids, row);
    if (st != HR_OK)
        return st;
    hr_model_set_attrs(m, t, row, NULL, 0, false);
    float fresh[m->F.floats];
    init_row(m, t, row, fresh);
    hr_sgd_row_from_f32(&m->L, hr_model_row(m, t, row), fresh);
    hr_model_mark(m, t, row, HR_MARK_ALL); /* checkpoints record the removal, deltas send it */
    return HR_OK;
}

uint32_t hr_model_id_count(const hr_model *m, hr_table_id t)
{
    return has_ids(t) ? hr_ids_count(m->t[t].ids) : 0;
}

uint32_t hr_model_rows(const hr_model *m, hr_table_id t)
{
    if (has_ids(t))
        return hr_ids_high_water(m->t[t].ids);
    return m->t[t].max_rows;
}

uint32_t hr_model_ctx_row(const hr_model *m, const char *field, size_t flen, const char *value,
                          size_t vlen)
{
    assert((m->t[HR_TABLE_CTX].max_rows & (m->t[HR_TABLE_CTX].max_rows - 1)) == 0);
    uint64_t h = hr_hash64(field, flen, m->cfg.seed ^ 0xc0ffee);
    if (value)
        h = hr_hash64(value, vlen, h);
    return (uint32_t)(h & (m->t[HR_TABLE_CTX].max_rows - 1));
}

/* hr_model_row, inlined where the trainers call it per event. */
static inline float *row_ptr(const hr_model *m, hr_table_id t, uint32_t row)
{
    assert((unsigned)t < HR_TABLE_COUNT);
    const table *tb = &m->t[t];
    assert(row < tb->max_rows);
    float *chunk = atomic_load_explicit(&tb->chunks[row >> m->chunk_shift], memory_order_acquire);
    assert(chunk); /* a row number exists only once its chunk does */
    return chunk + (size_t)(row & (m->cfg.chunk_rows - 1)) * m->L.stride;
}

float *hr_model_row(const hr_model *m, hr_table_id t, uint32_t row)
{
    return row_ptr(m, t, row);
}

const float *hr_model_row_f32(const hr_model *m, hr_table_id t, uint32_t row, float *buf)
{
    return hr_sgd_row_weights(&m->L, row_ptr(m, t, row), buf);
}

hr_storage hr_model_storage(const hr_model *m)
{
    return m->cfg.storage;
}

void hr_model_item_rows_f32(const hr_model *m, const float *block, uint32_t first, uint32_t n,
                            float *out)
{
    hr_sgd_block_to_f32(&m->L, block + (size_t)first * m->L.stride, n, m->L.stride, out);
}

static inline void prefetch_span(const char *p, size_t bytes)
{
    const char *end = p + bytes;
    for (const char *a = (const char *)((uintptr_t)p & ~(uintptr_t)(HR_CACHE_LINE - 1)); a < end;
         a += HR_CACHE_LINE)
        __builtin_prefetch(a, 1, 1);
}

/* The row's dirty-mark byte, for writing: in a table beyond the cache the
 * mark that follows each step is a miss of its own (a row's byte in a
 * chunk-sized array), as costly as the row's. */
static inline void prefetch_mark(const hr_model *m, hr_table_id t, uint32_t row)
{
    if (!m->t[t].dirty)
        return;
    const atomic_uchar *marks =
        atomic_load_explicit(&m->t[t].dirty[row >> m->chunk_shift], memory_order_relaxed);
    if (marks)
        __builtin_prefetch((const void *)(marks + (row & (m->cfg.chunk_rows - 1))), 1, 1);
}

void hr_model_prefetch(const hr_model *m, hr_table_id t, uint32_t row)
{
    const float *r = hr_model_row(m, t, row);
    prefetch_mark(m, t, row);
    if (m->L.storage == HR_STORAGE_BF16) { /* the weights and each state part */
        for (uint32_t j = 0; j <= m->L.parts; j++)
            prefetch_span((const char *)(r + (size_t)j * m->L.state),
                          (size_t)m->L.stride * sizeof(float));
        return;
    }
    const size_t bytes = (size_t)m->L.stride * sizeof(float);
    prefetch_span((const char *)r, bytes);
    if (m->L.state)
        prefetch_span((const char *)(r + m->L.state), bytes);
    if (m->L.adam_v)
        prefetch_span((const char *)(r + m->L.adam_v), bytes);
}

static inline uint32_t effective_row(const hr_model *m, hr_table_id t, uint32_t row)
{
    if (row == 0 || m->cfg.min_count == 0 || !has_ids(t))
        return row;
    return hr_sgd_row_count(&m->L, row_ptr(m, t, row)) >= m->cfg.min_count ? row : 0;
}

uint32_t hr_model_effective_row(const hr_model *m, hr_table_id t, uint32_t row)
{
    return effective_row(m, t, row);
}

static atomic_uchar *mark(const hr_model *m, hr_table_id t, uint32_t row)
{
    assert((unsigned)t < HR_TABLE_COUNT && row < m->t[t].max_rows);
    atomic_uchar *marks =
        atomic_load_explicit(&m->t[t].dirty[row >> m->chunk_shift], memory_order_acquire);
    assert(marks);
    return marks + (row & (m->cfg.chunk_rows - 1));
}

/*
 * Marks: an or, not a store, since another bit may be set or taken
 * meanwhile; the load first keeps a row that is already marked free of
 * writes (the trainers' steady state). The row's bits are set before its
 * group's summary, and a consumer takes the summary before the rows; with
 * both sides sequentially consistent (a lock-prefixed instruction or a plain
 * load on x86, as relaxed ones), a consumer that took a summary bit sees
 * every row bit set before it was set, and a row bit set after the take
 * finds the summary clear and sets it again. A marker that finds the
 * summary bit already set relies on that earlier setter's take to come
 * after its own row bit: it loads the summary after its or on the row.
 */
static inline void mark_bits(hr_model *m, hr_table_id t, uint32_t row, unsigned marks)
{
    if ((marks & HR_MARK_CKPT) && m->t[t].half)
        marks |= HR_MARK_HALF; /* every content change marks the checkpoint's bit */
    atomic_uchar *d = mark(m, t, row);
    if ((atomic_load_explicit(d, memory_order_relaxed) & marks) == marks)
        return;
    atomic_fetch_or_explicit(d, (unsigned char)marks, memory_order_seq_cst);
    atomic_uchar *s = &m->t[t].summary[row / HR_MARK_GROUP_ROWS];
    if ((atomic_load_explicit(s, memory_order_seq_cst) & marks) != marks)
        atomic_fetch_or_explicit(s, (unsigned char)marks, memory_order_seq_cst);
}

void hr_model_mark(hr_model *m, hr_table_id t, uint32_t row, unsigned marks)
{
    mark_bits(m, t, row, marks);
}

uint32_t hr_model_mark_groups(const hr_model *m, hr_table_id t)
{
    assert((unsigned)t < HR_TABLE_COUNT);
    return m->t[t].ngroups;
}

unsigned hr_model_take_group_mark(hr_model *m, hr_table_id t, uint32_t g, unsigned which)
{
    assert((unsigned)t < HR_TABLE_COUNT && g < m->t[t].ngroups);
    atomic_uchar *s = &m->t[t].summary[g];
    if (!(atomic_load_explicit(s, memory_order_seq_cst) & which))
        return 0;
    return atomic_fetch_and_explicit(s, (unsigned char)~which, memory_order_seq_cst) & which;
}

void hr_model_mark_group(hr_model *m, hr_table_id t, uint32_t g, unsigned marks)
{
    assert((unsigned)t < HR_TABLE_COUNT && g < m->t[t].ngroups);
    atomic_fetch_or_explicit(&m->t[t].summary[g], (unsigned char)marks, memory_order_seq_cst);
}

void hr_model_mark_dirty(hr_model *m, hr_table_id t, uint32_t row)
{
    mark_bits(m, t, row, HR_MARK_CKPT | HR_MARK_DELTA);
}

void hr_model_touch_event(hr_model *m, const hr_event *ev, uint32_t now)
{
    hr_sgd_touch(&m->L, row_ptr(m, HR_TABLE_USER, ev->user), now);
    hr_sgd_touch(&m->L, row_ptr(m, HR_TABLE_ITEM, ev->item), now);
}

void hr_model_mark_event(hr_model *m, const hr_event *ev, uint32_t user, uint32_t item,
                         int nactive, bool own_rows)
{
    const unsigned bits = HR_MARK_CKPT | HR_MARK_DELTA;
    if (own_rows) {
        mark_bits(m, HR_TABLE_USER, ev->user, bits);
        mark_bits(m, HR_TABLE_ITEM, ev->item, bits);
    }
    if (!own_rows || user != ev->user)
        mark_bits(m, HR_TABLE_USER, user, bits);
    if (!own_rows || item != ev->item)
        mark_bits(m, HR_TABLE_ITEM, item, bits);
    for (int i = 0; i < ev->nctx; i++)
        mark_bits(m, HR_TABLE_CTX, ev->ctx[i].row, bits);
    if (nactive > 3 + ev->nctx) /* catalog attributes took part */
        hr_model_mark_attrs_dirty(m, ev);
}

unsigned hr_model_take_mark(hr_model *m, hr_table_id t, uint32_t row, unsigned which)
{
    assert((unsigned)t < HR_TABLE_COUNT && row < m->t[t].max_rows);
    atomic_uchar *marks =
        atomic_load_explicit(&m->t[t].dirty[row >> m->chunk_shift], memory_order_acquire);
    if (!marks)
        return 0;
    atomic_uchar *d = marks + (row & (m->cfg.chunk_rows - 1));
    if (!(atomic_load_explicit(d, memory_order_seq_cst) & which))
        return 0;
    return atomic_fetch_and_explicit(d, (unsigned char)~which, memory_order_seq_cst) & which;
}

bool hr_model_take_dirty(hr_model *m, hr_table_id t, uint32_t row)
{
    (void)mark(m, t, row); /* the row's storage must exist, as before */
    return hr_model_take_mark(m, t, row, HR_MARK_CKPT) != 0;
}

uint64_t hr_model_count_marked(const hr_model *m, hr_table_id t, hr_mark which)
{
    uint64_t n = 0, rows = hr_model_rows(m, t);
    for (uint32_t r = 0; r < rows; r++)
        if (atomic_load_explicit(&m->t[t].chunks[r >> m->chunk_shift], memory_order_acquire) &&
            (atomic_load_explicit(mark(m, t, r), memory_order_relaxed) & which))
            n++;
    return n;
}

uint64_t hr_model_count_dirty(const hr_model *m, hr_table_id t)
{
    return hr_model_count_marked(m, t, HR_MARK_CKPT);
}

const float *hr_model_item_block(const hr_model *m, uint32_t b, uint32_t *nrows, uint32_t *lda)
{
    const table *tb = &m->t[HR_TABLE_ITEM];
    uint32_t rows = hr_model_rows(m, HR_TABLE_ITEM);
    uint64_t first = (uint64_t)b << m->chunk_shift;
    if (b >= tb->nchunks || first >= rows)
        return NULL;
    float *chunk = atomic_load_explicit(&tb->chunks[b], memory_order_acquire);
    if (!chunk)
        return NULL;
    uint64_t n = rows - first;
    *nrows = (uint32_t)(n < m->cfg.chunk_rows ? n : m->cfg.chunk_rows);
    *lda = m->L.stride;
    return chunk;
}

uint32_t hr_model_clock(const hr_model *m)
{
    (void)m;
    double s = hr_wall_time() - HR_MODEL_EPOCH;
    return s <= 0 ? 0 : (uint32_t)s;
}

uint64_t hr_model_expire(hr_model *m, uint32_t now)
{
    if (m->cfg.expire_seconds <= 0)
        return 0;
    uint64_t removed = 0;
    for (int t = HR_TABLE_USER; t <= HR_TABLE_ITEM; t++) {
        uint32_t rows = hr_model_rows(m, (hr_table_id)t);
        for (uint32_t r = 1; r < rows; r++) {
            size_t len;
            if (!hr_ids_key(m->t[t].ids, r, &len) || hr_model_attrs_pinned(m, (hr_table_id)t, r))
                continue;
            uint32_t seen = hr_sgd_row_last_seen(&m->L, hr_model_row(m, (hr_table_id)t, r));
            if ((double)now - (double)seen >= m->cfg.expire_seconds &&
                hr_ids_remove(m->t[t].ids, r) == HR_OK) {
                /* checkpoints record the removal, deltas send it */
                hr_model_mark(m, (hr_table_id)t, r, HR_MARK_ALL);
                removed++;
            }
        }
    }
    atomic_fetch_add(&m->expired, removed);
    return removed;
}

uint64_t hr_model_expired_total(const hr_model *m)
{
    return atomic_load(&((hr_model *)m)->expired);
}

size_t hr_model_bytes(const hr_model *m)
{
    size_t total = sizeof *m;
    for (int t = 0; t < HR_TABLE_COUNT; t++) {
        const table *tb = &m->t[t];
        uint64_t nalloc = atomic_load(&((table *)tb)->nalloc);
        total += nalloc * m->cfg.chunk_rows * (m->L.floats * sizeof(float) + 1);
        total += tb->nchunks * 2 * sizeof(void *) + tb->ngroups;
        if (tb->half)
            total += nalloc * half_chunk_bytes(m) + tb->nchunks * sizeof(void *);
        if (tb->ids)
            total += hr_ids_bytes(tb->ids);
    }
    return total;
}

int hr_model_active(const hr_model *m, const hr_event *ev, hr_active *out)
{
    return hr_model_active_rows(m, ev, hr_model_effective_row(m, HR_TABLE_USER, ev->user),
                                hr_model_effective_row(m, HR_TABLE_ITEM, ev->item), out);
}

int hr_model_event_rows(const hr_model *m, const hr_event *ev, uint32_t *user, uint32_t *item,
                        hr_active *out)
{
    *user = effective_row(m, HR_TABLE_USER, ev->user);
    *item = effective_row(m, HR_TABLE_ITEM, ev->item);
    return hr_model_active_rows(m, ev, *user, *item, out);
}

int hr_model_active_rows(const hr_model *m, const hr_event *ev, uint32_t user, uint32_t item,
                         hr_active *out)
{
    assert(ev->nctx <= HR_MAX_CTX); /* ctx[] holds no more; the decoders cap it */
    int n = 0;
    out[n++] = (hr_active){row_ptr(m, HR_TABLE_GLOBAL, 0), 1.0f, HR_GROUP_GLOBAL, 0, 0};
    out[n++] = (hr_active){row_ptr(m, HR_TABLE_USER, user), 1.0f, HR_GROUP_USER, 1, 0};
    out[n++] = (hr_active){row_ptr(m, HR_TABLE_ITEM, item), 1.0f, HR_GROUP_ITEM, 1, 0};
    for (int i = 0; i < ev->nctx && i < HR_MAX_CTX; i++)
        out[n++] = (hr_active){row_ptr(m, HR_TABLE_CTX, ev->ctx[i].row), ev->ctx[i].x,
                               HR_GROUP_CONTEXT, 1, 0};
    /* The catalog attributes of the user and the item (their own rows, not
     * the effective ones: a user below min_count keeps its attributes). An
     * id with attributes forms a side with them: the pairs within it are
     * left out (the id and its attributes add up to one representation,
     * which meets the other side's and the event's features). */
    hr_feat f[HR_MAX_ATTRS];
    for (int t = HR_TABLE_USER; t <= HR_TABLE_ITEM; t++) {
        /* A table without attributes (the usual case) skips the row's
         * slot; one set meanwhile joins from the next event on. */
        uint32_t na = atomic_load_explicit(&m->t[t].attr_rows, memory_order_relaxed)
                          ? hr_model_attrs(m, (hr_table_id)t,
                                           t == HR_TABLE_USER ? ev->user : ev->item, f)
                          : 0;
        uint8_t side = na ? (uint8_t)t : 0; /* HR_TABLE_USER = 1, HR_TABLE_ITEM = 2 */
        out[t].side = side;
        for (uint32_t i = 0; i < na; i++)
            out[n++] = (hr_active){row_ptr(m, HR_TABLE_CTX, f[i].row), f[i].x,
                                   HR_GROUP_CONTEXT, 1, side};
    }
    return n;
}

/* ---- catalog attributes ---- */

static attr_slot *attr_slot_of(const hr_model *m, hr_table_id t, uint32_t row)
{
    if ((t != HR_TABLE_USER && t != HR_TABLE_ITEM) || row >= m->t[t].max_rows)
        return NULL;
    attr_slot *c = atomic_load_explicit(&m->t[t].attrs[row >> m->chunk_shift], memory_order_acquire);
    return c ? &c[row & (m->cfg.chunk_rows - 1)] : NULL;
}

hr_status hr_model_set_attrs(hr_model *m, hr_table_id t, uint32_t row, const hr_feat *f,
                             uint32_t n, bool pinned)
{
    if ((t != HR_TABLE_USER && t != HR_TABLE_ITEM) || row == 0 || row >= m->t[t].max_rows ||
        n > HR_MAX_ATTRS)
        return HR_EINVAL;
    table *tb = &m->t[t];
    attr_slot *s = attr_slot_of(m, t, row);
    if (!s) {
        if (n == 0 && !pinned)
            return HR_OK; /* nothing to clear */
        pthread_mutex_lock(&tb->grow);
        attr_slot *c = atomic_load(&tb->attrs[row >> m->chunk_shift]);
        if (!c && (c = calloc(m->cfg.chunk_rows, sizeof *c)) != NULL)
            atomic_store_explicit(&tb->attrs[row >> m->chunk_shift], c, memory_order_release);
        pthread_mutex_unlock(&tb->grow);
        if (!c)
            return HR_ENOMEM;
        s = &c[row & (m->cfg.chunk_rows - 1)];
    }
    uint32_t was = atomic_exchange_explicit(&s->meta, 0, memory_order_acq_rel) & 0xffu;
    if (was && !n)
        atomic_fetch_sub(&tb->attr_rows, 1);
    else if (!was && n)
        atomic_fetch_add(&tb->attr_rows, 1);
    for (uint32_t i = 0; i < n; i++) {
        uint32_t xb;
        memcpy(&xb, &f[i].x, sizeof xb);
        atomic_store_explicit(&s->f[i], (uint64_t)f[i].row | (uint64_t)xb << 32,
                              memory_order_relaxed);
    }
    atomic_store_explicit(&s->meta, n | (pinned ? ATTR_PINNED : 0), memory_order_release);
    if (t == HR_TABLE_ITEM)
        hr_attrmat_touch(m->item_am, row);
    return HR_OK;
}

uint32_t hr_model_attrs(const hr_model *m, hr_table_id t, uint32_t row, hr_feat *out)
{
    attr_slot *s = row ? attr_slot_of(m, t, row) : NULL;
    if (!s)
        return 0;
    uint32_t n = atomic_load_explicit(&s->meta, memory_order_acquire) & 0xffu;
    uint32_t ctx = m->t[HR_TABLE_CTX].max_rows;
    uint32_t k = 0;
    for (uint32_t i = 0; i < n && i < HR_MAX_ATTRS; i++) {
        uint64_t v = atomic_load_explicit(&s->f[i], memory_order_relaxed);
        uint32_t xb = (uint32_t)(v >> 32);
        out[k].row = (uint32_t)v;
        memcpy(&out[k].x, &xb, sizeof xb);
        if (out[k].row < ctx) /* always, for what set_attrs wrote */
            k++;
    }
    return k;
}

uint32_t hr_model_attrs_count(const hr_model *m, hr_table_id t)
{
    if (t != HR_TABLE_USER && t != HR_TABLE_ITEM)
        return 0;
    return atomic_load(&((hr_model *)m)->t[t].attr_rows);
}

static uint32_t read_item_attrs(void *ctx, uint32_t row, hr_feat *out)
{
    return hr_model_attrs(ctx, HR_TABLE_ITEM, row, out);
}

hr_status hr_model_item_attrs_acquire(const hr_model *m, const hr_attrmat **out)
{
    *out = NULL;
    if (hr_model_attrs_count(m, HR_TABLE_ITEM) == 0)
        return HR_OK;
    hr_status st = hr_attrmat_acquire(m->item_am, read_item_attrs, (void *)m);
    if (st == HR_OK)
        *out = m->item_am;
    return st;
}

void hr_model_item_attrs_release(const hr_model *m, const hr_attrmat *am)
{
    if (am)
        hr_attrmat_release(m->item_am);
}

bool hr_model_attrs_pinned(const hr_model *m, hr_table_id t, uint32_t row)
{
    attr_slot *s = row ? attr_slot_of(m, t, row) : NULL;
    return s && (atomic_load_explicit(&s->meta, memory_order_relaxed) & ATTR_PINNED);
}

void hr_model_mark_attrs_dirty(hr_model *m, const hr_event *ev)
{
    hr_feat f[HR_MAX_ATTRS];
    for (int t = HR_TABLE_USER; t <= HR_TABLE_ITEM; t++) {
        uint32_t na = hr_model_attrs(m, (hr_table_id)t, t == HR_TABLE_USER ? ev->user : ev->item, f);
        for (uint32_t i = 0; i < na; i++)
            hr_model_mark_dirty(m, HR_TABLE_CTX, f[i].row);
    }
}

double hr_model_link(const hr_model *m, double y)
{
    return hr_row_link(m->cfg.loss, y);
}

double hr_model_predict(const hr_model *m, const hr_event *ev)
{
    hr_active a[HR_MAX_ACTIVE];
    int n = hr_model_active(m, ev, a);
    return hr_model_link(m, hr_sgd_score(&m->L, a, n));
}

/* ---- half-precision item rows ---- */

const hr_half_layout *hr_model_half_layout(const hr_model *m)
{
    return m->t[HR_TABLE_ITEM].half ? &m->H : NULL;
}

static uint16_t *half_row(const hr_model *m, uint32_t row)
{
    uint16_t *chunk = atomic_load_explicit(&m->t[HR_TABLE_ITEM].half[row >> m->chunk_shift],
                                           memory_order_acquire);
    return chunk ? chunk + (size_t)(row & (m->cfg.chunk_rows - 1)) * m->H.stride : NULL;
}

static void half_convert(hr_model *m, uint32_t row)
{
    uint16_t *h = half_row(m, row);
    if (h && m->L.storage == HR_STORAGE_BF16) {
        float v[m->L.k + 1];
        hr_half_row_write(&m->F, &m->H, hr_model_row_f32(m, HR_TABLE_ITEM, row, v), h);
    } else if (h) {
        hr_half_row_write(&m->L, &m->H, hr_model_row(m, HR_TABLE_ITEM, row), h);
    }
}

/*
 * The half rows are a cache of the fp32 ones, kept by the readers: every
 * content change of an item row sets its HR_MARK_HALF bit (hr_model_mark
 * adds it to the checkpoint's), and a sync converts the rows whose bit it
 * takes, group summary first as every consumer does. The first sync
 * converts every row, which covers rows written without marks (a
 * checkpoint restore). Syncs are serialized, so a query that syncs after
 * another started one scans rows at least as new as the model was when
 * its sync began; scans themselves take no lock.
 */
uint64_t hr_model_item_half_sync(const hr_model *cm)
{
    hr_model *m = (hr_model *)cm; /* only the half cache and its marks change */
    table *tb = &m->t[HR_TABLE_ITEM];
    if (!tb->half)
        return 0;
    uint64_t converted = 0;
    pthread_mutex_lock(&m->half_mu);
    uint32_t rows = hr_model_rows(m, HR_TABLE_ITEM);
    uint32_t groups = (uint32_t)(((uint64_t)rows + HR_MARK_GROUP_ROWS - 1) / HR_MARK_GROUP_ROWS);
    for (uint32_t g = 0; g < groups && g < tb->ngroups; g++) {
        bool all = !m->half_built;
        if (!hr_model_take_group_mark(m, HR_TABLE_ITEM, g, HR_MARK_HALF) && !all)
            continue;
        uint32_t end = (g + 1) * HR_MARK_GROUP_ROWS < rows ? (g + 1) * HR_MARK_GROUP_ROWS : rows;
        for (uint32_t r = g * HR_MARK_GROUP_ROWS; r < end; r++) {
            if (!atomic_load_explicit(&tb->chunks[r >> m->chunk_shift], memory_order_acquire))
                continue; /* a free row never handed out: no storage, no key */
            if (hr_model_take_mark(m, HR_TABLE_ITEM, r, HR_MARK_HALF) || all) {
                half_convert(m, r);
                converted++;
            }
        }
    }
    m->half_built = true;
    pthread_mutex_unlock(&m->half_mu);
    return converted;
}

const uint16_t *hr_model_item_half_block(const hr_model *m, uint32_t b, uint32_t *nrows)
{
    uint32_t lda;
    if (!m->t[HR_TABLE_ITEM].half || !hr_model_item_block(m, b, nrows, &lda))
        return NULL;
    return atomic_load_explicit(&m->t[HR_TABLE_ITEM].half[b], memory_order_acquire);
}

/*
 * delta.c - row deltas: encode what changed in a model, apply it to
 * another (see delta.h for the layout and the threads).
 *
 * DESIGN
 * - The encoder makes two passes over the model's change marks: the id
 *   bits (HR_MARK_ID) of the user and item tables, then the content bits
 *   (HR_MARK_DELTA) of all four tables, so every part has its id records
 *   before its row records. Each pass visits only the groups whose summary
 *   bit is set (model.h), takes a row's bit, then reads its id or contents.
 *   Whoever sets an id bit sets the content bit with it (hr_model_intern,
 *   expiry: HR_MARK_ALL), so an assignment is always followed by its row.
 * - A user or item row that holds no id when the encoder reads it is not
 *   sent (a free row's contents mean nothing); the follower, likewise,
 *   skips a row record for a row that holds no id on its side.
 * - Records stream into one buffer; a part is closed (header filled in,
 *   checksum appended) when the next record would pass max_part_bytes.
 * - On an allocation failure the encoder sets again every mark it took:
 *   it walks its own records (and the group it was in), so a failed encode
 *   loses no change.
 * - Apply validates the whole part in one pass that writes nothing, checks
 *   the order against what was applied, then applies: ids first, then rows.
 * - The checksum is hr_hash64: each 8-byte word goes through a bijective
 *   mix chained on the state, so any damage confined to one word (every
 *   single flipped byte) always changes it; other damage goes undetected
 *   with a chance of 2^-64. The length is checked apart.
 */
#include "hogrec/delta.h"

#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "hogrec/ids.h"
#include "hogrec/sgd.h"

#define MAGIC "HRDL"
#define FLAG_LAST 1u
#define FLAG_BF16 2u /* the rows are of storage bf16 (row.h) */
#define HDR_BYTES 72u    /* the fixed header, before the event id */
#define TRAILER_BYTES 8u /* the checksum */
#define ID_REC_BYTES 7u  /* table, row, key length; the key follows */
#define ROW_REC_BYTES 5u /* table, row; the floats follow */
#define CHECK_SEED 0x4852444c54410001ull

/* Header field offsets. */
enum {
    O_MAGIC = 0,
    O_VERSION = 4,
    O_FLAGS = 6,
    O_LENGTH = 8,
    O_K = 12,
    O_FLOATS = 16,
    O_STATE = 20,
    O_LOSS = 21,
    O_EVLEN = 22,
    O_ZERO = 23,
    O_EPOCH = 24,
    O_SEQ = 32,
    O_SCHED = 40,
    O_PART = 48,
    O_NIDS = 52,
    O_NROWS = 56,
    O_CTX = 60,
    O_SEED = 64,
    O_EVENT = HDR_BYTES
};

/* ---- little-endian bytes ---- */

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint16_t get16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get64(const uint8_t *p)
{
    return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

/* n floats as little-endian u32 bit patterns, and back. */
static void put_floats(uint8_t *p, const float *f, uint32_t n)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    memcpy(p, f, (size_t)n * sizeof(float));
#else
    for (uint32_t i = 0; i < n; i++) {
        uint32_t v;
        memcpy(&v, f + i, sizeof v);
        put32(p + 4 * i, v);
    }
#endif
}

static void get_floats(float *f, const uint8_t *p, uint32_t n)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    memcpy(f, p, (size_t)n * sizeof(float));
#else
    for (uint32_t i = 0; i < n; i++) {
        uint32_t v = get32(p + 4 * i);
        memcpy(f + i, &v, sizeof v);
    }
#endif
}

static bool has_ids(unsigned t)
{
    return t == HR_TABLE_USER || t == HR_TABLE_ITEM;
}

void hr_delta_buf_free(hr_delta_buf *b)
{
    if (!b)
        return;
    free(b->data);
    free(b->ends);
    memset(b, 0, sizeof *b);
}

/* ---- records: one walker for apply's checks, apply and the rollback ---- */

typedef struct {
    unsigned table;
    uint32_t row;
    const uint8_t *key; /* id records: the key, or NULL (a removal) */
    size_t klen;
    const uint8_t *data; /* row records: the floats */
} record;

/* A part's header, read. */
typedef struct {
    uint16_t version, flags;
    uint32_t length, k, floats, part, nids, nrows, ctx;
    uint8_t state, loss, evlen, zero;
    uint64_t epoch, seq, sched, seed;
    const uint8_t *event;
} header;

static void read_header(const uint8_t *p, header *h)
{
    h->version = get16(p + O_VERSION);
    h->flags = get16(p + O_FLAGS);
    h->length = get32(p + O_LENGTH);
    h->k = get32(p + O_K);
    h->floats = get32(p + O_FLOATS);
    h->state = p[O_STATE];
    h->loss = p[O_LOSS];
    h->evlen = p[O_EVLEN];
    h->zero = p[O_ZERO];
    h->epoch = get64(p + O_EPOCH);
    h->seq = get64(p + O_SEQ);
    h->sched = get64(p + O_SCHED);
    h->part = get32(p + O_PART);
    h->nids = get32(p + O_NIDS);
    h->nrows = get32(p + O_NROWS);
    h->ctx = get32(p + O_CTX);
    h->seed = get64(p + O_SEED);
    h->event = p + O_EVENT;
}

/* Reads record i of a part whose records are p[*at, end) (ids first, then
 * rows): advances *at. False when it does not fit (only apply's check can
 * meet that; the encoder's own parts always fit). */
static bool next_record(const uint8_t *p, size_t *at, size_t end, bool is_id, uint32_t floats,
                        record *r)
{
    size_t fixed = is_id ? ID_REC_BYTES : ROW_REC_BYTES;
    if (end - *at < fixed)
        return false;
    const uint8_t *q = p + *at;
    r->table = q[0];
    r->row = get32(q + 1);
    r->key = NULL;
    r->klen = 0;
    r->data = NULL;
    size_t body;
    if (is_id) {
        r->klen = get16(q + 5);
        body = r->klen;
        if (r->klen)
            r->key = q + fixed;
    } else {
        body = (size_t)floats * 4;
        r->data = q + fixed;
    }
    if (end - *at - fixed < body)
        return false;
    *at += fixed + body;
    return true;
}

/* ---- encode ---- */

typedef struct {
    hr_model *m;
    const hr_row_layout *L;
    const hr_delta_header *h;
    size_t evlen;
    size_t max;        /* part limit in bytes; SIZE_MAX: none */
    hr_delta_buf *b;
    size_t part_start; /* offset of the open part */
    uint32_t part;     /* its index */
    uint32_t nids, nrows; /* its records so far */
    float *row;        /* one packed row, scratch */
} writer;

static size_t hdr_len(const writer *w)
{
    return HDR_BYTES + w->evlen;
}

static bool reserve(hr_delta_buf *b, size_t extra)
{
    if (b->cap - b->len >= extra)
        return true;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap - b->len < extra) {
        if (cap > SIZE_MAX / 2)
            return false;
        cap *= 2;
    }
    uint8_t *d = realloc(b->data, cap);
    if (!d)
        return false;
    b->data = d;
    b->cap = cap;
    return true;
}

static bool begin_part(writer *w)
{
    if (!reserve(w->b, hdr_len(w)))
        return false;
    w->part_start = w->b->len;
    w->b->len += hdr_len(w); /* filled in when the part is closed */
    w->nids = w->nrows = 0;
    return true;
}

static bool close_part(writer *w, bool last)
{
    hr_delta_buf *b = w->b;
    if (!reserve(b, TRAILER_BYTES))
        return false;
    if (b->nparts == b->ends_cap) {
        size_t n = b->ends_cap ? 2 * b->ends_cap : 8;
        size_t *e = realloc(b->ends, n * sizeof *e);
        if (!e)
            return false;
        b->ends = e;
        b->ends_cap = n;
    }
    const hr_model_config *mc = hr_model_get_config(w->m);
    uint8_t *p = b->data + w->part_start;
    size_t len = b->len + TRAILER_BYTES - w->part_start;
    memcpy(p + O_MAGIC, MAGIC, 4);
    put16(p + O_VERSION, HR_DELTA_VERSION);
    put16(p + O_FLAGS, (uint16_t)((last ? FLAG_LAST : 0) |
                                  (w->L->storage == HR_STORAGE_BF16 ? FLAG_BF16 : 0)));
    put32(p + O_LENGTH, (uint32_t)len);
    put32(p + O_K, w->L->k);
    put32(p + O_FLOATS, w->L->floats);
    p[O_STATE] = (uint8_t)mc->state;
    p[O_LOSS] = (uint8_t)mc->loss;
    p[O_EVLEN] = (uint8_t)w->evlen;
    p[O_ZERO] = 0;
    put64(p + O_EPOCH, w->h->epoch);
    put64(p + O_SEQ, w->h->seq);
    put64(p + O_SCHED, w->h->schedule_version);
    put32(p + O_PART, w->part);
    put32(p + O_NIDS, w->nids);
    put32(p + O_NROWS, w->nrows);
    put32(p + O_CTX, mc->max_rows[HR_TABLE_CTX]);
    put64(p + O_SEED, mc->seed);
    memcpy(p + O_EVENT, w->h->event_id, w->evlen);
    put64(b->data + b->len, hr_hash64(p, len - TRAILER_BYTES, CHECK_SEED));
    b->len += TRAILER_BYTES;
    b->ends[b->nparts++] = b->len;
    w->part++;
    return true;
}

/* Room for a record of `bytes`, in the open part or a new one. */
static bool room(writer *w, size_t bytes)
{
    size_t used = w->b->len - w->part_start;
    if ((w->nids || w->nrows) && (used + bytes + TRAILER_BYTES > w->max ||
                                  used + bytes + TRAILER_BYTES > UINT32_MAX)) {
        if (!close_part(w, false) || !begin_part(w))
            return false;
    }
    return reserve(w->b, bytes);
}

static bool put_id(writer *w, hr_table_id t, uint32_t row, const char *key, size_t klen)
{
    if (!room(w, ID_REC_BYTES + klen))
        return false;
    uint8_t *q = w->b->data + w->b->len;
    q[0] = (uint8_t)t;
    put32(q + 1, row);
    put16(q + 5, (uint16_t)klen);
    if (klen)
        memcpy(q + ID_REC_BYTES, key, klen);
    w->b->len += ID_REC_BYTES + klen;
    w->nids++;
    if (key)
        w->b->ids++;
    else
        w->b->removals++;
    return true;
}

static bool put_row(writer *w, hr_table_id t, uint32_t row)
{
    size_t bytes = ROW_REC_BYTES + (size_t)w->L->floats * 4;
    if (!room(w, bytes))
        return false;
    hr_sgd_row_read(w->L, hr_model_row(w->m, t, row), w->row);
    uint8_t *q = w->b->data + w->b->len;
    q[0] = (uint8_t)t;
    put32(q + 1, row);
    put_floats(q + ROW_REC_BYTES, w->row, w->L->floats);
    w->b->len += bytes;
    w->nrows++;
    w->b->rows++;
    return true;
}

/* Sets again the marks of every record written (closed parts and the open
 * one): an id record's row gets its id and content bits, a row record's row
 * its content bit. */
static void give_back(writer *w)
{
    const hr_delta_buf *b = w->b;
    size_t start = 0;
    for (size_t i = 0; i <= b->nparts; i++) {
        bool open = i == b->nparts;
        size_t end = open ? b->len : b->ends[i] - TRAILER_BYTES;
        if (open)
            start = w->part_start;
        uint32_t nids = open ? w->nids : get32(b->data + start + O_NIDS);
        uint32_t nrows = open ? w->nrows : get32(b->data + start + O_NROWS);
        size_t at = start + hdr_len(w);
        record r;
        for (uint32_t j = 0; j < nids + nrows; j++) {
            bool ok = next_record(b->data, &at, end, j < nids, w->L->floats, &r);
            assert(ok); /* our own records */
            if (!ok)
                break;
            hr_model_mark(w->m, (hr_table_id)r.table, r.row,
                          j < nids ? HR_MARK_ID | HR_MARK_DELTA : HR_MARK_DELTA);
        }
        if (!open)
            start = b->ends[i];
    }
}

/* One pass over a table's marks of kind `which`; writes what it takes. On
 * failure gives back the row and the group it was at (*fail_row set). */
static bool scan(writer *w, hr_table_id t, hr_mark which)
{
    hr_model *m = w->m;
    const uint32_t groups = hr_model_mark_groups(m, t);
    const uint32_t cfg_rows = hr_model_get_config(m)->max_rows[t];
    const uint32_t max_rows = cfg_rows ? cfg_rows : 1;
    for (uint32_t g = 0; g < groups; g++) {
        if (!hr_model_take_group_mark(m, t, g, which))
            continue;
        uint32_t lo = g * HR_MARK_GROUP_ROWS;
        uint32_t hi = max_rows - lo < HR_MARK_GROUP_ROWS ? max_rows : lo + HR_MARK_GROUP_ROWS;
        for (uint32_t r = lo; r < hi; r++) {
            if (!hr_model_take_mark(m, t, r, which))
                continue;
            size_t klen = 0;
            const char *key = has_ids(t) && r > 0 ? hr_model_key(m, t, r, &klen) : NULL;
            bool ok = true;
            if (which == HR_MARK_ID)
                ok = put_id(w, t, r, key, key ? klen : 0);
            else if (key || !has_ids(t) || r == 0)
                ok = put_row(w, t, r);
            if (!ok) {
                /* this row's mark, and the rest of the group's (taken with
                 * the summary), go back */
                hr_model_mark(m, t, r, which == HR_MARK_ID ? HR_MARK_ID | HR_MARK_DELTA : which);
                hr_model_mark_group(m, t, g, which);
                return false;
            }
        }
    }
    return true;
}

hr_status hr_delta_encode(hr_model *m, const hr_delta_header *h, size_t max_part_bytes,
                          hr_delta_buf *out, hr_error *err)
{
    size_t evlen = strnlen(h->event_id, HR_DELTA_EVENT_ID_MAX + 1);
    if (evlen > HR_DELTA_EVENT_ID_MAX)
        return hr_error_set(err, HR_EINVAL, "event_id", "event id longer than %d bytes",
                            HR_DELTA_EVENT_ID_MAX);
    const hr_row_layout *L = hr_model_layout(m);
    out->len = 0;
    out->nparts = 0;
    out->ids = out->removals = out->rows = 0;
    writer w = {.m = m,
                .L = L,
                .h = h,
                .evlen = evlen,
                .max = max_part_bytes ? max_part_bytes : SIZE_MAX,
                .b = out};
    w.row = malloc((size_t)L->floats * sizeof(float));
    if (!w.row || !begin_part(&w)) {
        free(w.row);
        return hr_error_set(err, HR_ENOMEM, NULL, "out of memory");
    }
    bool ok = scan(&w, HR_TABLE_USER, HR_MARK_ID) && scan(&w, HR_TABLE_ITEM, HR_MARK_ID);
    for (int t = 0; ok && t < HR_TABLE_COUNT; t++)
        ok = scan(&w, (hr_table_id)t, HR_MARK_DELTA);
    if (ok)
        ok = close_part(&w, true);
    if (!ok) {
        give_back(&w);
        out->len = 0;
        out->nparts = 0;
        out->ids = out->removals = out->rows = 0;
    }
    free(w.row);
    return ok ? HR_OK : hr_error_set(err, HR_ENOMEM, NULL, "out of memory");
}

void hr_delta_seal(void *buf, size_t len)
{
    uint8_t *p = buf;
    if (len < HDR_BYTES + TRAILER_BYTES || len > UINT32_MAX)
        return;
    put32(p + O_LENGTH, (uint32_t)len);
    put64(p + len - TRAILER_BYTES, hr_hash64(p, len - TRAILER_BYTES, CHECK_SEED));
}

/* ---- apply ---- */

/* Checks a part; fills *h. Writes nothing. */
static hr_status check(const hr_model *m, const uint8_t *p, size_t len, header *h, hr_error *err)
{
    if (len < HDR_BYTES + TRAILER_BYTES)
        return hr_error_set(err, HR_ECORRUPT, "delta", "delta of %zu bytes: shorter than a header",
                            len);
    if (memcmp(p + O_MAGIC, MAGIC, 4) != 0)
        return hr_error_set(err, HR_ECORRUPT, "delta", "not a delta (bad magic)");
    read_header(p, h);
    if (h->length != len)
        return hr_error_set(err, HR_ECORRUPT, "delta", "delta says %u bytes, got %zu", h->length,
                            len);
    if (get64(p + len - TRAILER_BYTES) != hr_hash64(p, len - TRAILER_BYTES, CHECK_SEED))
        return hr_error_set(err, HR_ECORRUPT, "delta", "delta checksum mismatch");
    if (h->version != HR_DELTA_VERSION)
        return hr_error_set(err, HR_EINVAL, "delta", "delta format version %u, this build reads %d",
                            h->version, HR_DELTA_VERSION);
    if ((h->flags & ~(FLAG_LAST | FLAG_BF16)) || h->zero || h->evlen > HR_DELTA_EVENT_ID_MAX ||
        len - TRAILER_BYTES < HDR_BYTES + (size_t)h->evlen)
        return hr_error_set(err, HR_ECORRUPT, "delta", "bad delta header");
    const hr_model_config *mc = hr_model_get_config(m);
    const hr_row_layout *L = hr_model_layout(m);
    const hr_storage hs = h->flags & FLAG_BF16 ? HR_STORAGE_BF16 : HR_STORAGE_F32;
    if (hs != (hr_storage)L->storage) /* not converted: refused, naming both */
        return hr_error_set(err, HR_EINVAL, "storage",
                            "delta of rows stored as %s; this model stores them as %s (every node "
                            "needs the same storage)",
                            hr_storage_to_string(hs), hr_storage_to_string((hr_storage)L->storage));
    if (h->k != L->k || h->floats != L->floats || h->state != (uint8_t)mc->state ||
        h->loss != (uint8_t)mc->loss || h->ctx != mc->max_rows[HR_TABLE_CTX] ||
        h->seed != mc->seed)
        return hr_error_set(err, HR_EINVAL, "delta",
                            "delta of another model shape (k %u, %u floats a row, state %u, loss "
                            "%u, %u context rows, seed %llu; this model: k %u, %u, %u, %u, %u, "
                            "%llu)",
                            h->k, h->floats, h->state, h->loss, h->ctx, (unsigned long long)h->seed,
                            L->k, L->floats, (unsigned)mc->state, (unsigned)mc->loss,
                            mc->max_rows[HR_TABLE_CTX], (unsigned long long)mc->seed);
    size_t at = HDR_BYTES + h->evlen, end = len - TRAILER_BYTES;
    record r;
    for (uint64_t j = 0; j < (uint64_t)h->nids + h->nrows; j++) {
        bool is_id = j < h->nids;
        if (!next_record(p, &at, end, is_id, L->floats, &r))
            return hr_error_set(err, HR_ECORRUPT, "delta", "delta record %llu cut short",
                                (unsigned long long)j);
        if (r.table >= HR_TABLE_COUNT || (is_id && (!has_ids(r.table) || r.row == 0)))
            return hr_error_set(err, HR_ECORRUPT, "delta", "delta record %llu: bad table %u",
                                (unsigned long long)j, r.table);
        if (is_id && r.klen > HR_ID_MAX_LEN)
            return hr_error_set(err, HR_ECORRUPT, "delta", "delta record %llu: id of %zu bytes",
                                (unsigned long long)j, r.klen);
        uint32_t max_rows = mc->max_rows[r.table] ? mc->max_rows[r.table] : 1;
        if (r.row >= max_rows)
            return hr_error_set(err, HR_EINVAL, "delta",
                                "delta has row %u of table %u, past this model's %u rows "
                                "(raise max_users/max_items)",
                                r.row, r.table, max_rows);
        if (!is_id) {
            for (uint32_t f = 0; f < L->floats; f++) {
                if (f == L->count || f == L->last_seen)
                    continue; /* counters, not floats */
                float v;
                uint32_t bits = get32(r.data + 4 * (size_t)f);
                memcpy(&v, &bits, sizeof v);
                if (!isfinite(v))
                    return hr_error_set(err, HR_ECORRUPT, "delta",
                                        "delta row %u of table %u: a value is not finite", r.row,
                                        r.table);
            }
        }
    }
    if (at != end)
        return hr_error_set(err, HR_ECORRUPT, "delta", "%zu bytes after the last delta record",
                            end - at);
    return HR_OK;
}

typedef enum { ORDER_NEXT, ORDER_STALE, ORDER_GAP } order;

static order place(const hr_delta_state *st, const header *h)
{
    if (!st->started || h->epoch > st->epoch)
        return h->part == 0 ? ORDER_NEXT : ORDER_GAP;
    if (h->epoch < st->epoch || h->seq < st->seq)
        return ORDER_STALE;
    if (h->seq == st->seq) {
        if (st->complete || h->part <= st->part)
            return ORDER_STALE;
        return h->part == st->part + 1 ? ORDER_NEXT : ORDER_GAP;
    }
    return st->complete && h->seq == st->seq + 1 && h->part == 0 ? ORDER_NEXT : ORDER_GAP;
}

/* Applies one id record. */
static hr_status apply_id(hr_model *m, const record *r, hr_delta_state *st)
{
    hr_table_id t = (hr_table_id)r->table;
    size_t len;
    const char *cur = hr_model_key(m, t, r->row, &len);
    if (!r->key) {
        if (cur && hr_model_remove_id(m, t, r->row) == HR_OK)
            hr_model_mark(m, t, r->row, HR_MARK_CKPT);
        st->removals++;
        return HR_OK;
    }
    st->ids++;
    const char *key = (const char *)r->key;
    if (cur && len == r->klen && memcmp(cur, key, len) == 0)
        return HR_OK;
    if (cur) /* the leader's row went to another id */
        hr_model_remove_id(m, t, r->row);
    uint32_t other = hr_model_lookup(m, t, key, r->klen);
    if (other != HR_ID_NONE && hr_model_remove_id(m, t, other) == HR_OK) /* the id moved */
        hr_model_mark(m, t, other, HR_MARK_CKPT);
    hr_status s = hr_model_insert_id_at(m, t, key, r->klen, r->row);
    if (s == HR_OK)
        hr_model_mark(m, t, r->row, HR_MARK_CKPT);
    return s;
}

hr_status hr_delta_apply(hr_model *m, const void *buf, size_t len, hr_delta_state *st,
                         hr_error *err)
{
    const uint8_t *p = buf;
    header h = {0};
    hr_status s = check(m, p, len, &h, err);
    if (s != HR_OK)
        return s;
    switch (place(st, &h)) {
    case ORDER_STALE:
        st->stale = true;
        st->ids = st->removals = st->rows = 0;
        return HR_OK;
    case ORDER_GAP:
        return hr_error_set(err, HR_ENOTFOUND, "delta",
                            "delta epoch %llu seq %llu part %u does not follow epoch %llu seq "
                            "%llu part %u%s: a delta is missing",
                            (unsigned long long)h.epoch, (unsigned long long)h.seq, h.part,
                            (unsigned long long)st->epoch, (unsigned long long)st->seq, st->part,
                            st->complete ? "" : " (incomplete)");
    case ORDER_NEXT: break;
    }
    st->stale = false;
    st->ids = st->removals = st->rows = 0;
    const hr_row_layout *L = hr_model_layout(m);
    float row[L->floats];
    size_t at = HDR_BYTES + h.evlen, end = len - TRAILER_BYTES;
    record r;
    for (uint64_t j = 0; j < (uint64_t)h.nids + h.nrows; j++) {
        bool is_id = j < h.nids;
        bool ok = next_record(p, &at, end, is_id, L->floats, &r);
        assert(ok); /* check() walked the same records */
        if (!ok)
            break;
        hr_table_id t = (hr_table_id)r.table;
        if (is_id) {
            if ((s = apply_id(m, &r, st)) != HR_OK)
                return hr_error_set(err, s, "delta", "applying the id at row %u of table %u: %s",
                                    r.row, r.table, hr_status_to_string(s));
            continue;
        }
        size_t klen;
        if (has_ids(t) && r.row > 0 && !hr_model_key(m, t, r.row, &klen))
            continue; /* no id here: its contents come with its id */
        get_floats(row, r.data, L->floats);
        hr_sgd_row_write(L, hr_model_row(m, t, r.row), row);
        hr_model_mark(m, t, r.row, HR_MARK_CKPT);
        st->rows++;
    }
    st->started = true;
    st->epoch = h.epoch;
    st->seq = h.seq;
    st->part = h.part;
    st->complete = (h.flags & FLAG_LAST) != 0;
    if (st->complete) {
        st->schedule_version = h.sched;
        memcpy(st->event_id, h.event, h.evlen);
        st->event_id[h.evlen] = 0;
    }
    return HR_OK;
}

/* ---- whole deltas: parts held until the last ---- */

size_t hr_delta_parts_drop(hr_delta_parts *p)
{
    size_t n = p->nparts;
    if (n)
        p->dropped++;
    p->nparts = 0;
    p->len = 0;
    return n;
}

void hr_delta_parts_free(hr_delta_parts *p)
{
    if (!p)
        return;
    free(p->data);
    free(p->ends);
    memset(p, 0, sizeof *p);
}

/* a + b, saturated */
static size_t add_sat(size_t a, size_t b)
{
    return a > SIZE_MAX - b ? SIZE_MAX : a + b;
}

static size_t mul_sat(size_t a, size_t b)
{
    return b && a > SIZE_MAX / b ? SIZE_MAX : a * b;
}

size_t hr_delta_max_bytes(const hr_model *m)
{
    const hr_model_config *mc = hr_model_get_config(m);
    const hr_row_layout *L = hr_model_layout(m);
    const size_t per_part = HDR_BYTES + HR_DELTA_EVENT_ID_MAX + TRAILER_BYTES;
    size_t total = per_part; /* the empty delta */
    for (unsigned t = 0; t < HR_TABLE_COUNT; t++) {
        size_t rows = mc->max_rows[t] ? mc->max_rows[t] : 1;
        total = add_sat(total, mul_sat(rows, ROW_REC_BYTES + (size_t)L->floats * 4 + per_part));
        if (has_ids(t))
            total = add_sat(total, mul_sat(rows, ID_REC_BYTES + HR_ID_MAX_LEN + per_part));
    }
    return total;
}

/* Copies a checked part (not its delta's last) after the parts held. */
static hr_status hold_part(const hr_model *m, hr_delta_parts *p, const header *h,
                           const uint8_t *buf, size_t len, hr_error *err)
{
    size_t max = p->max_bytes ? p->max_bytes : hr_delta_max_bytes(m);
    if (len > max || p->len > max - len) {
        hr_delta_parts_drop(p);
        return hr_error_set(err, HR_EFULL, "delta",
                            "delta epoch %llu seq %llu passes %zu bytes at part %u: dropped",
                            (unsigned long long)h->epoch, (unsigned long long)h->seq, max,
                            h->part);
    }
    hr_delta_buf tmp = {.data = p->data, .len = p->len, .cap = p->cap};
    if (!reserve(&tmp, len))
        return hr_error_set(err, HR_ENOMEM, NULL, "out of memory");
    p->data = tmp.data;
    p->cap = tmp.cap;
    if (p->nparts == p->ends_cap) {
        size_t n = p->ends_cap ? 2 * p->ends_cap : 8;
        size_t *e = realloc(p->ends, n * sizeof *e);
        if (!e)
            return hr_error_set(err, HR_ENOMEM, NULL, "out of memory");
        p->ends = e;
        p->ends_cap = n;
    }
    memcpy(p->data + p->len, buf, len);
    p->len += len;
    p->ends[p->nparts++] = p->len;
    p->epoch = h->epoch;
    p->seq = h->seq;
    return HR_OK;
}

/* hr_delta_apply, adding the records applied to *sum. */
static hr_status apply_counted(hr_model *m, const void *buf, size_t len, hr_delta_state *st,
                               uint32_t sum[3], hr_error *err)
{
    hr_status s = hr_delta_apply(m, buf, len, st, err);
    if (s == HR_OK) {
        sum[0] += st->ids;
        sum[1] += st->removals;
        sum[2] += st->rows;
    }
    return s;
}

hr_status hr_delta_take(hr_model *m, const void *buf, size_t len, hr_delta_parts *p,
                        hr_delta_state *st, bool *applied, hr_error *err)
{
    *applied = false;
    header h = {0};
    hr_status s = check(m, buf, len, &h, err);
    if (s != HR_OK)
        return s;
    /* the order against the parts held, when there are some */
    hr_delta_state at = *st;
    if (p->nparts) {
        at.started = true;
        at.complete = false;
        at.epoch = p->epoch;
        at.seq = p->seq;
        at.part = (uint32_t)(p->nparts - 1);
    }
    order o = place(&at, &h);
    if (o == ORDER_NEXT && h.part == 0 && p->nparts) {
        hr_delta_parts_drop(p); /* a newer delta: the one held never ends */
        o = place(st, &h);
    }
    if (o == ORDER_STALE) {
        st->stale = true;
        st->ids = st->removals = st->rows = 0;
        return HR_OK;
    }
    if (o == ORDER_GAP) {
        hr_delta_parts_drop(p);
        return hr_error_set(err, HR_ENOTFOUND, "delta",
                            "delta epoch %llu seq %llu part %u does not follow epoch %llu seq "
                            "%llu part %u%s: a delta is missing",
                            (unsigned long long)h.epoch, (unsigned long long)h.seq, h.part,
                            (unsigned long long)at.epoch, (unsigned long long)at.seq, at.part,
                            at.complete ? "" : " (held)");
    }
    if (!(h.flags & FLAG_LAST)) {
        if ((s = hold_part(m, p, &h, buf, len, err)) != HR_OK)
            return s;
        st->stale = false;
        st->ids = st->removals = st->rows = 0;
        return HR_OK;
    }
    uint32_t sum[3] = {0, 0, 0};
    for (size_t i = 0; i < p->nparts; i++) {
        size_t from = i ? p->ends[i - 1] : 0;
        if ((s = apply_counted(m, p->data + from, p->ends[i] - from, st, sum, err)) != HR_OK) {
            hr_delta_parts_drop(p);
            return s;
        }
    }
    p->nparts = 0;
    p->len = 0;
    if ((s = apply_counted(m, buf, len, st, sum, err)) != HR_OK)
        return s;
    st->ids = sum[0];
    st->removals = sum[1];
    st->rows = sum[2];
    *applied = !st->stale;
    return HR_OK;
}

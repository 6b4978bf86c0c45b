/*
 * snapshot.c - a whole model to a checkpoint database and back; see
 * snapshot.h. The SQL is the store module's: a snapshot is one full
 * checkpoint (hr_store_ckpt_begin/row/schedule/commit) plus the meta as
 * JSON (hr_store_snapshot_meta_put, a table only snapshot files have).
 *
 * The workload: a few times per node life (a node joins, or lags past
 * the delta stream's retention), the whole model at once. Rows are copied
 * out of the model in batches and written inside the checkpoint's one
 * transaction (synchronous=NORMAL: the file is thrown away if the writer
 * crashes, durability is not needed).
 */
#include "hogrec/snapshot.h"

#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hogrec/catalog.h"
#include "hogrec/sgd.h"
#include "hogrec/store.h"

#define BATCH 256            /* rows copied from the model per batch */
#define MAX_HISTORY 4096     /* schedule changes written */

/* The shape a snapshot must match (as persist.c's checkpoints name it). */
static void model_shape(const hr_model *m, char *out, size_t n)
{
    const hr_model_config *c = hr_model_get_config(m);
    const hr_row_layout *L = hr_model_layout(m);
    snprintf(out, n,
             "{\"k\":%u,\"floats\":%u,\"state\":%d,\"loss\":%d,\"ctx_rows\":%u,\"seed\":%" PRIu64
             ",\"float\":\"%s\"%s}",
             c->k, L->floats, (int)c->state, (int)c->loss, c->max_rows[HR_TABLE_CTX], c->seed,
             __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ ? "le" : "be",
             /* f32 shapes as before the storage option */
             L->storage == HR_STORAGE_BF16 ? ",\"storage\":\"bf16\"" : "");
}

static hr_store_options store_opts(void)
{
    return (hr_store_options){.kind = HR_STORE_MAIN, .sync_full = false, .busy_ms = 1000,
                              .target_version = 0, .quick_check = true};
}

/* Removes path's -wal, -shm and -journal (left by SQLite or a crash). */
static void remove_sidecars(const char *path)
{
    static const char *const ext[] = {"-wal", "-shm", "-journal"};
    char p[4096];
    for (size_t i = 0; i < sizeof ext / sizeof ext[0]; i++) {
        snprintf(p, sizeof p, "%s%s", path, ext[i]);
        unlink(p);
    }
}

static bool has_ids(int t) { return t == HR_TABLE_USER || t == HR_TABLE_ITEM; }

/* ---- write ---- */

static hr_status write_rows(hr_store *s, int64_t id, hr_model *m, hr_table_id t,
                            hr_snapshot_stats *st, hr_error *err)
{
    const hr_row_layout *L = hr_model_layout(m);
    const size_t bytes = (size_t)L->floats * sizeof(float);
    float *buf = malloc(BATCH * bytes);
    if (!buf)
        return hr_error_set(err, HR_ENOMEM, NULL, "out of memory");
    struct {
        uint32_t row;
        const char *key;
        size_t klen;
    } batch[BATCH];
    uint32_t rows = hr_model_rows(m, t), r = 0;
    hr_status rc = HR_OK;
    while (r < rows && rc == HR_OK) {
        size_t n = 0;
        for (; r < rows && n < BATCH; r++) {
            const char *key = NULL;
            size_t klen = 0;
            if (has_ids(t) && r > 0 && !(key = hr_model_key(m, t, r, &klen)))
                continue; /* a free row */
            hr_sgd_row_read(L, hr_model_row(m, t, r), buf + n * L->floats);
            batch[n].row = r;
            batch[n].key = key;
            batch[n].klen = klen;
            n++;
        }
        for (size_t i = 0; i < n && rc == HR_OK; i++) {
            rc = hr_store_ckpt_row(s, id, (unsigned)t, batch[i].row, batch[i].key, batch[i].klen,
                                   buf + i * L->floats, bytes, err);
            st->ids += batch[i].key != NULL;
        }
        st->rows += n;
    }
    free(buf);
    return rc;
}

static hr_status write_schedule(hr_store *s, int64_t id, hr_schedbox *box, hr_error *err)
{
    hr_sched_change *h = malloc(MAX_HISTORY * sizeof *h);
    if (!h)
        return hr_error_set(err, HR_ENOMEM, NULL, "out of memory");
    size_t n = hr_schedbox_history(box, h, MAX_HISTORY);
    if (n > MAX_HISTORY)
        n = MAX_HISTORY;
    hr_status st = HR_OK;
    for (size_t i = 0; i < n && st == HR_OK; i++) {
        json_t *j = hr_schedule_to_json(h[i].schedule);
        char *text = j ? json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
        json_decref(j);
        if (!text) {
            st = hr_error_set(err, HR_ENOMEM, NULL, "out of memory");
            break;
        }
        st = hr_store_ckpt_schedule(s, id, h[i].version, h[i].wall_time, h[i].at_update,
                                    h[i].loss_before, h[i].loss_after, text, err);
        free(text);
    }
    free(h);
    return st;
}

static json_t *meta_json(const hr_snapshot_meta *m)
{
    return json_pack("{s:s,s:s,s:b,s:I,s:I,s:I,s:f}", "delta", m->delta, "covered_entry",
                     m->covered, "started", m->started, "epoch", (json_int_t)m->epoch, "seq",
                     (json_int_t)m->seq, "schedule_version", (json_int_t)m->schedule_version,
                     "taken", m->taken);
}

/* The serving state's sink (hr_events_save): the snapshot's checkpoint. */
typedef struct {
    hr_store *s;
    int64_t id;
} serving_sink;

static hr_status sink_header(void *ctx, uint64_t seq, double taken, hr_error *err)
{
    serving_sink *ss = ctx;
    return hr_store_ckpt_serving(ss->s, ss->id, seq, taken, err);
}

static hr_status sink_history(void *ctx, const char *user, size_t ulen, uint64_t seq,
                              const void *items, size_t bytes, hr_error *err)
{
    serving_sink *ss = ctx;
    return hr_store_ckpt_history(ss->s, ss->id, user, ulen, seq, items, bytes, err);
}

static hr_status sink_blob(void *ctx, const char *kind, uint32_t part, const void *data,
                           size_t bytes, hr_error *err)
{
    serving_sink *ss = ctx;
    return hr_store_ckpt_blob(ss->s, ss->id, kind, part, data, bytes, err);
}

hr_status hr_snapshot_write(const char *path, hr_model *m, hr_schedbox *sched, hr_events *events,
                            const hr_snapshot_meta *meta, hr_snapshot_stats *out, hr_error *err)
{
    hr_snapshot_stats st = {0};
    double t0 = hr_wall_time();
    char shape[256];
    model_shape(m, shape, sizeof shape);
    hr_store_options o = store_opts();
    o.quick_check = false; /* a new file */
    hr_store *s = NULL;
    hr_status rc = hr_store_open(path, &o, &s, err);
    if (rc != HR_OK)
        return rc;
    int64_t id = 0;
    rc = hr_store_ckpt_begin(s, true, 0, 0, shape, &id, err);
    if (rc == HR_OK)
        rc = write_schedule(s, id, sched, err);
    for (int t = 0; t < HR_TABLE_COUNT && rc == HR_OK; t++)
        rc = write_rows(s, id, m, (hr_table_id)t, &st, err);
    if (rc == HR_OK && events) {
        serving_sink ss = {s, id};
        hr_events_sink sink = {&ss, sink_header, sink_history, sink_blob};
        uint64_t cut = 0;
        rc = hr_events_save(events, 0, &sink, &cut, err);
    }
    if (rc == HR_OK) {
        json_t *j = meta_json(meta);
        char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
        json_decref(j);
        rc = text ? hr_store_snapshot_meta_put(s, text, err)
                  : hr_error_set(err, HR_ENOMEM, NULL, "out of memory");
        free(text);
    }
    if (rc == HR_OK)
        rc = hr_store_ckpt_commit(s, id, st.rows, hr_wall_time() - t0, 1, err);
    if (rc != HR_OK)
        hr_store_ckpt_abort(s);
    hr_store_close(s);
    remove_sidecars(path);
    struct stat sb;
    if (rc == HR_OK && stat(path, &sb) == 0)
        st.bytes = (uint64_t)sb.st_size;
    st.seconds = hr_wall_time() - t0;
    if (out)
        *out = st;
    return rc;
}

/* ---- read ---- */

typedef struct {
    hr_snapshot_meta *meta;
    bool found;
    hr_error *err;
} meta_ctx;

static void copy_str(char *dst, size_t cap, const char *src)
{
    snprintf(dst, cap, "%s", src ? src : "");
}

static hr_status read_meta_text(meta_ctx *mc, const char *data, size_t bytes)
{
    json_error_t jerr;
    json_t *j = json_loadb(data, bytes, 0, &jerr);
    const char *delta = NULL, *covered = NULL;
    int started = 0;
    json_int_t epoch = 0, seq = 0, sv = 0;
    double taken = 0;
    if (!j || json_unpack_ex(j, &jerr, 0, "{s:s,s:s,s:b,s:I,s:I,s:I,s:F}", "delta", &delta,
                             "covered_entry", &covered, "started", &started, "epoch", &epoch,
                             "seq", &seq, "schedule_version", &sv, "taken", &taken) != 0) {
        json_decref(j);
        return hr_error_set(mc->err, HR_ECORRUPT, "snapshot", "the snapshot's meta: %s",
                            jerr.text);
    }
    hr_snapshot_meta *m = mc->meta;
    copy_str(m->delta, sizeof m->delta, delta);
    copy_str(m->covered, sizeof m->covered, covered);
    m->started = started;
    m->epoch = (uint64_t)epoch;
    m->seq = (uint64_t)seq;
    m->schedule_version = (uint64_t)sv;
    m->taken = taken;
    mc->found = true;
    json_decref(j);
    return HR_OK;
}

/* Opens path and reads its checkpoint and meta. */
static hr_status open_snapshot(const char *path, hr_store **s, hr_store_ckpt *ck,
                               hr_snapshot_meta *meta, hr_error *err)
{
    hr_store_options o = store_opts();
    hr_status rc = hr_store_open(path, &o, s, err);
    if (rc != HR_OK)
        return rc;
    if ((rc = hr_store_ckpt_latest(*s, ck, err)) != HR_OK)
        return rc;
    if (ck->id == 0 || !ck->full)
        return hr_error_set(err, HR_ECORRUPT, "snapshot", "%s holds no full checkpoint", path);
    memset(meta, 0, sizeof *meta);
    meta_ctx mc = {meta, false, err};
    char *text = NULL;
    if ((rc = hr_store_snapshot_meta_get(*s, &text, err)) != HR_OK)
        return rc;
    if (text)
        rc = read_meta_text(&mc, text, strlen(text));
    free(text);
    if (rc != HR_OK)
        return rc;
    if (!mc.found)
        return hr_error_set(err, HR_ECORRUPT, "snapshot",
                            "%s is a checkpoint database but not a snapshot (no meta)", path);
    return HR_OK;
}

hr_status hr_snapshot_read_meta(const char *path, hr_snapshot_meta *meta, hr_error *err)
{
    hr_store *s = NULL;
    hr_store_ckpt ck;
    hr_status rc = open_snapshot(path, &s, &ck, meta, err);
    hr_store_close(s);
    remove_sidecars(path);
    return rc;
}

/* ---- load ---- */

typedef struct {
    hr_model *m;
    const hr_row_layout *L;
    uint8_t *seen[HR_TABLE_COUNT]; /* a bit per row the snapshot had */
    uint32_t max_rows[HR_TABLE_COUNT];
    hr_snapshot_stats *st;
    hr_error *err;
} load_ctx;

/* Puts id key at row as a delta does: frees the row from another id and
 * the id from another row first. */
static hr_status place_id(hr_model *m, hr_table_id t, const char *key, size_t klen, uint32_t row)
{
    size_t len;
    const char *cur = hr_model_key(m, t, row, &len);
    if (cur && len == klen && memcmp(cur, key, len) == 0)
        return HR_OK;
    if (cur)
        hr_model_remove_id(m, t, row);
    uint32_t other = hr_model_lookup(m, t, key, klen);
    if (other != HR_ID_NONE)
        hr_model_remove_id(m, t, other);
    return hr_model_insert_id_at(m, t, key, klen, row);
}

static hr_status load_row(void *arg, unsigned table, uint32_t row, const char *key, size_t klen,
                          const void *data, size_t bytes)
{
    load_ctx *lc = arg;
    if (table >= HR_TABLE_COUNT)
        return hr_error_set(lc->err, HR_ECORRUPT, "snapshot", "a row in unknown table %u", table);
    if (row >= lc->max_rows[table])
        return hr_error_set(lc->err, HR_EINVAL, "snapshot",
                            "row %" PRIu32 " of table %u is beyond this model's tables (%" PRIu32
                            " rows): raise max_users/max_items",
                            row, table, lc->max_rows[table]);
    if (bytes != (size_t)lc->L->floats * sizeof(float))
        return hr_error_set(lc->err, HR_ECORRUPT, "snapshot",
                            "row %" PRIu32 " of table %u has %zu bytes, expected %zu", row, table,
                            bytes, (size_t)lc->L->floats * sizeof(float));
    hr_table_id t = (hr_table_id)table;
    if (has_ids(t) && row > 0) {
        if (!key)
            return HR_OK; /* never written by hr_snapshot_write */
        hr_status rc = place_id(lc->m, t, key, klen, row);
        if (rc != HR_OK)
            return hr_error_set(lc->err, rc, "snapshot", "placing the id of row %" PRIu32
                                " of table %u: %s", row, table, hr_status_to_string(rc));
        lc->st->ids++;
    }
    lc->seen[t][row >> 3] |= (uint8_t)(1u << (row & 7));
    float buf[lc->L->floats];
    memcpy(buf, data, bytes); /* SQLite's buffer is not aligned for floats */
    hr_sgd_row_write(lc->L, hr_model_row(lc->m, t, row), buf);
    lc->st->rows++;
    return HR_OK;
}

typedef struct {
    hr_schedbox *box;
    uint64_t from;   /* versions above it are installed */
    hr_error *err;
} sched_ctx;

static hr_status load_sched(void *arg, uint64_t version, double wall_time, uint64_t at_update,
                            double loss_before, double loss_after, const char *json)
{
    (void)wall_time;
    sched_ctx *sc = arg;
    if (version <= sc->from)
        return HR_OK;
    json_error_t jerr;
    json_t *obj = json_loads(json, 0, &jerr);
    hr_schedule s;
    hr_status rc = obj ? hr_schedule_from_json(obj, &s, sc->err) : HR_ECORRUPT;
    json_decref(obj);
    if (rc != HR_OK)
        return hr_error_set(sc->err, HR_ECORRUPT, "snapshot",
                            "schedule version %" PRIu64 " cannot be read", version);
    uint64_t v = 0;
    if ((rc = hr_schedbox_swap(sc->box, &s, at_update, loss_before, &v, sc->err)) != HR_OK)
        return rc;
    if (isfinite(loss_after))
        hr_schedbox_note_loss_after(sc->box, v, loss_after);
    return HR_OK;
}

/* Loading the serving state (hr_events_load_*) from the snapshot. */
typedef struct {
    hr_events *e;
    hr_error *err;
} serving_ctx;

static hr_status load_history(void *ctx, const char *user, size_t ulen, uint64_t seq,
                              const void *items, size_t bytes)
{
    serving_ctx *sc = ctx;
    return hr_events_load_history(sc->e, user, ulen, seq, items, bytes, sc->err);
}

static hr_status load_popularity(void *ctx, const void *data, size_t bytes)
{
    serving_ctx *sc = ctx;
    return hr_events_load_blob(sc->e, "popularity", data, bytes, sc->err);
}

static hr_status load_dedup(void *ctx, const void *data, size_t bytes)
{
    serving_ctx *sc = ctx;
    return hr_events_load_blob(sc->e, "dedup", data, bytes, sc->err);
}

/* The snapshot's serving state into e, when it has one. The cut becomes
 * the larger of e's and the snapshot's, so the events e takes next are
 * numbered above every ring's last seq, loaded or kept. */
static hr_status load_serving(hr_store *s, const hr_store_ckpt *ck, hr_events *e,
                              hr_snapshot_stats *st, hr_error *err)
{
    bool found = false;
    uint64_t seq = 0;
    double taken = 0;
    hr_status rc = hr_store_serving(s, ck->id, &found, &seq, &taken, err);
    if (rc != HR_OK || !found)
        return rc;
    uint64_t cut = hr_events_seq(e);
    if ((rc = hr_events_load_begin(e, seq > cut ? seq : cut, taken, err)) != HR_OK)
        return rc;
    serving_ctx sc = {e, err};
    rc = hr_store_chain_history(s, ck, load_history, &sc, err);
    if (rc == HR_OK)
        rc = hr_store_serving_blobs(s, ck->id, "popularity", load_popularity, &sc, err);
    if (rc == HR_OK)
        rc = hr_store_serving_blobs(s, ck->id, "dedup", load_dedup, &sc, err);
    hr_events_load_end(e);
    st->serving = rc == HR_OK;
    return rc;
}

hr_status hr_snapshot_load(const char *path, hr_model *m, hr_schedbox *sched, hr_events *events,
                           hr_snapshot_meta *meta, hr_snapshot_stats *out, hr_error *err)
{
    hr_snapshot_stats st = {0};
    double t0 = hr_wall_time();
    hr_store *s = NULL;
    hr_store_ckpt ck;
    hr_status rc = open_snapshot(path, &s, &ck, meta, err);
    char shape[256];
    model_shape(m, shape, sizeof shape);
    hr_storage was = hr_storage_of_shape(ck.shape), now = hr_model_layout(m)->storage;
    if (rc == HR_OK && was != now) /* not converted: refused, naming both */
        rc = hr_error_set(err, HR_EINVAL, "storage",
                          "the snapshot stores embedding weights as %s; this node stores them as "
                          "%s (every node needs the same storage)",
                          hr_storage_to_string(was), hr_storage_to_string(now));
    else if (rc == HR_OK && strcmp(ck.shape, shape) != 0)
        rc = hr_error_set(err, HR_EINVAL, "snapshot",
                          "the snapshot is of a model of another shape: %s; this node's is %s "
                          "(every node needs the same model options)",
                          ck.shape, shape);
    load_ctx lc = {.m = m, .L = hr_model_layout(m), .st = &st, .err = err};
    const hr_model_config *mc = hr_model_get_config(m);
    for (int t = 0; t < HR_TABLE_COUNT; t++) {
        lc.max_rows[t] = mc->max_rows[t] ? mc->max_rows[t] : 1;
        lc.seen[t] = calloc(lc.max_rows[t] / 8 + 1, 1);
        if (!lc.seen[t] && rc == HR_OK)
            rc = hr_error_set(err, HR_ENOMEM, NULL, "out of memory");
    }
    if (rc == HR_OK)
        rc = hr_store_chain_rows(s, &ck, load_row, &lc, err);
    /* ids this model has and the snapshot does not */
    for (int t = 0; t < HR_TABLE_COUNT && rc == HR_OK; t++) {
        if (!has_ids(t))
            continue;
        uint32_t rows = hr_model_rows(m, (hr_table_id)t);
        for (uint32_t r = 1; r < rows; r++) {
            size_t len;
            if (lc.seen[t][r >> 3] & (1u << (r & 7)) || !hr_model_key(m, (hr_table_id)t, r, &len))
                continue;
            if (hr_model_remove_id(m, (hr_table_id)t, r) == HR_OK)
                st.removed++;
        }
    }
    for (int t = 0; t < HR_TABLE_COUNT; t++)
        free(lc.seen[t]);
    if (rc == HR_OK && events)
        rc = load_serving(s, &ck, events, &st, err);
    if (rc == HR_OK) {
        sched_ctx sc = {sched, hr_schedbox_current(sched)->version, err};
        rc = hr_store_schedule_rows(s, ck.id, load_sched, &sc, err);
    }
    hr_store_close(s);
    remove_sidecars(path);
    st.seconds = hr_wall_time() - t0;
    if (out)
        *out = st;
    return rc;
}

/* ---- the catalog ---- */

/* The records of one kind, gathered for hr_store_catalog_put_many. */
typedef struct {
    char **ids, **texts;
    size_t *idlen, *tlen;
    size_t n, cap;
} rec_list;

static void rec_list_free(rec_list *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free(l->ids[i]);
        free(l->texts[i]);
    }
    free(l->ids);
    free(l->texts);
    free(l->idlen);
    free(l->tlen);
}

static hr_status gather(void *ctx, hr_catalog_kind kind, const char *id, size_t idlen,
                        const char *text, size_t len, hr_error *err)
{
    rec_list *l = &((rec_list *)ctx)[kind];
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 256;
        char **a = realloc(l->ids, cap * sizeof *a);
        if (a)
            l->ids = a;
        char **b = realloc(l->texts, cap * sizeof *b);
        if (b)
            l->texts = b;
        size_t *c = realloc(l->idlen, cap * sizeof *c);
        if (c)
            l->idlen = c;
        size_t *d = realloc(l->tlen, cap * sizeof *d);
        if (d)
            l->tlen = d;
        if (!a || !b || !c || !d)
            return hr_error_set(err, HR_ENOMEM, NULL, "out of memory");
        l->cap = cap;
    }
    char *i = malloc(idlen + 1), *t = malloc(len + 1);
    if (!i || !t) {
        free(i);
        free(t);
        return hr_error_set(err, HR_ENOMEM, NULL, "out of memory");
    }
    memcpy(i, id, idlen);
    i[idlen] = 0;
    memcpy(t, text, len + 1);
    l->ids[l->n] = i;
    l->texts[l->n] = t;
    l->idlen[l->n] = idlen;
    l->tlen[l->n++] = len;
    return HR_OK;
}

hr_status hr_snapshot_write_catalog(const char *path, struct hr_catalog *cat, uint64_t *records,
                                    hr_error *err)
{
    if (records)
        *records = 0;
    rec_list l[HR_CATALOG_KINDS] = {{0}};
    hr_status rc = hr_catalog_each(cat, gather, l, err);
    hr_store *s = NULL;
    hr_store_options o = store_opts();
    if (rc == HR_OK && (l[0].n || l[1].n))
        rc = hr_store_open(path, &o, &s, err);
    for (int k = 0; k < HR_CATALOG_KINDS && rc == HR_OK && s; k++)
        if (l[k].n)
            rc = hr_store_catalog_put_many(s, hr_catalog_kind_to_string((hr_catalog_kind)k), l[k].n,
                                           (const char *const *)l[k].ids, l[k].idlen,
                                           (const char *const *)l[k].texts, l[k].tlen,
                                           hr_wall_time(), err);
    if (records)
        *records = l[0].n + l[1].n;
    hr_store_close(s);
    remove_sidecars(path);
    rec_list_free(&l[0]);
    rec_list_free(&l[1]);
    return rc;
}

typedef struct {
    hr_catalog *cat;
    uint64_t records, unbound;
    hr_error *err;
} cat_load_ctx;

static hr_status load_record(void *arg, const char *kind, const char *id, size_t idlen,
                             const char *record, size_t rlen)
{
    cat_load_ctx *lc = arg;
    bool unbound = false;
    hr_error e = {{0}, {0}};
    hr_status st = hr_catalog_load_record(lc->cat,
                                          strcmp(kind, "user") == 0 ? HR_CATALOG_USER
                                                                    : HR_CATALOG_ITEM,
                                          id, idlen, record, rlen, &unbound, &e);
    if (st == HR_ENOMEM) {
        *lc->err = e;
        return st;
    }
    lc->records += st == HR_OK;
    lc->unbound += unbound;
    return HR_OK; /* a record that no longer validates is left out */
}

hr_status hr_snapshot_load_catalog(const char *path, struct hr_catalog *cat, uint64_t *records,
                                   uint64_t *unbound, hr_error *err)
{
    hr_store_options o = store_opts();
    hr_store *s = NULL;
    hr_status rc = hr_store_open(path, &o, &s, err);
    cat_load_ctx lc = {cat, 0, 0, err};
    if (rc == HR_OK) {
        hr_catalog_clear(cat);
        rc = hr_store_catalog_scan(s, load_record, &lc, err);
    }
    hr_store_close(s);
    remove_sidecars(path);
    if (records)
        *records = lc.records;
    if (unbound)
        *unbound = lc.unbound;
    return rc;
}

/*
 * events.c - a posted batch's path: validation, id claims, admission, id
 * resolution, ingest submit, serving state; its replay at start; its part
 * of checkpoints. See events.h.
 *
 * The mutex `mu` orders admit+resolve+submit+apply (and replay) so the
 * serving state takes events in seq order and a batch admitted is a batch
 * queued: every non-waiting submit goes through it and trainers only free
 * room. It is held across hr_ingest_admit, the interning of the ids the
 * batch names that did not exist at validation (ids already known were
 * looked up then, lock-free), hr_ingest_submit_nowait (which never blocks
 * on a full queue) and the history updates of the batch (a few
 * striped-mutex operations per event). Validation, lookups, the log texts
 * and the claims happen before it, unlocked. A checkpoint takes it once,
 * to read the cut and copy the popularity scores (4 bytes per item row);
 * rings and ids are copied afterwards without it.
 *
 * Record formats in checkpoints (host byte order):
 *   ring items  [u16 len][key] ...            most recent first
 *   popularity  [f32 score][u16 len][key] ... scores as of `taken`
 *   dedup       [u64 hash][f64 time] ...
 */
#include "hogrec/events.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "hogrec/api.h"

#define PART_BYTES (1u << 20) /* bytes per saved blob part (about) */
#define POP_MIN 1e-6          /* popularity scores below are not saved */
#define ID_SEED 0x6465647570ull

struct hr_events {
    hr_events_config cfg;
    hr_model *model;      /* borrowed */
    hr_ingest *ingest;    /* borrowed */
    hr_history *history;  /* owned */
    hr_dedup *dedup;      /* owned */
    pthread_mutex_t mu;   /* orders submit+apply and replay; guards seq */
    uint64_t seq;         /* the cut: highest seq applied */
    double loaded_taken;  /* load: time the loaded scores are as of */
    uint8_t *loaded;      /* load: one bit per user row whose ring was loaded */
    atomic_uint_fast64_t rejected;   /* events invalid (hr_events_counts) */
    atomic_uint_fast64_t duplicates; /* events dropped as repeated ids */
    atomic_uint_fast64_t refused;    /* events of batches refused: queue full */
};

/* A batch on its way: parallel arrays of n events, reordered alike. */
typedef struct {
    hr_event *evs;           /* the events (user and item rows once resolved) */
    hr_api_event_refs *refs; /* their ids as named, borrowed from the JSON */
    uint64_t *ids;           /* event id hashes, 0 = none */
    size_t *index;           /* position in the posted array (for errors) */
    char **texts;            /* canonical JSON for the log; NULL without a log */
    size_t *lens;            /* their lengths; NULL without a log */
    size_t n;
} batch;

struct hr_events_pending {
    hr_events *e;
    uint64_t last;          /* seq of the batch's last event */
    hr_evlog_notify_fn cb;
    void *arg;
    size_t n;               /* ids claimed */
    uint64_t ids[];
};

hr_events_config hr_events_config_from(const hr_config *c)
{
    hr_events_config ec = {
        .max_users = (uint32_t)c->max_users + 1,
        .max_items = (uint32_t)c->max_items + 1,
        .history_per_user = (uint32_t)c->history_per_user,
        .dedup_window = c->dedup_window,
        .dedup_capacity = (size_t)c->dedup_capacity,
        .half_life = c->popular_half_life,
        .every_positive = c->loss == HR_LOSS_SQUARED,
    };
    return ec;
}

hr_status hr_events_create(const hr_events_config *c, hr_model *model, hr_ingest *ingest,
                           hr_events **out)
{
    *out = NULL;
    hr_events *e = calloc(1, sizeof *e);
    if (!e)
        return HR_ENOMEM;
    e->cfg = *c;
    e->model = model;
    e->ingest = ingest;
    pthread_mutex_init(&e->mu, NULL);
    hr_status st = hr_history_create(c->max_users, c->max_items, c->history_per_user,
                                     c->half_life, &e->history);
    if (st == HR_OK)
        st = hr_dedup_create(c->dedup_capacity, c->dedup_window, &e->dedup);
    if (st != HR_OK) {
        hr_events_destroy(e);
        return st;
    }
    *out = e;
    return HR_OK;
}

void hr_events_destroy(hr_events *e)
{
    if (!e)
        return;
    hr_history_destroy(e->history);
    hr_dedup_destroy(e->dedup);
    free(e->loaded);
    pthread_mutex_destroy(&e->mu);
    free(e);
}

uint64_t hr_events_id_hash(const json_t *id)
{
    char buf[HR_ID_MAX_LEN + 1];
    size_t len;
    if (!id || hr_api_id(id, "id", buf, &len, NULL) != HR_OK)
        return 0;
    uint64_t h = hr_hash64(buf, len, ID_SEED);
    return h ? h : 1;
}

hr_history *hr_events_history(hr_events *e) { return e->history; }
hr_dedup *hr_events_dedup(hr_events *e) { return e->dedup; }

uint64_t hr_events_seq(hr_events *e)
{
    pthread_mutex_lock(&e->mu);
    uint64_t s = e->seq;
    pthread_mutex_unlock(&e->mu);
    return s;
}

/* One event into the serving state (arrived at wall time t). Under mu. */
static void apply(hr_events *e, const hr_event *ev, double t)
{
    hr_history_add(e->history, ev->user, ev->item, ev->seq);
    if (e->cfg.every_positive || ev->label > 0.5f)
        hr_history_pop_add(e->history, ev->item, t);
}

static void swap_at(batch *b, size_t i, size_t j)
{
    if (i == j)
        return;
#define SWAP(T, a)            \
    do {                      \
        T t_ = (a)[i];        \
        (a)[i] = (a)[j];      \
        (a)[j] = t_;          \
    } while (0)
    SWAP(hr_event, b->evs);
    SWAP(hr_api_event_refs, b->refs);
    SWAP(uint64_t, b->ids);
    SWAP(size_t, b->index);
    if (b->texts) {
        SWAP(char *, b->texts);
        SWAP(size_t, b->lens);
    }
#undef SWAP
}

static void release_ids(hr_events *e, const uint64_t *ids, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (ids[i])
            hr_dedup_release(e->dedup, ids[i]);
}

static void batch_free(batch *b)
{
    for (size_t i = 0; b->texts && i < b->n; i++)
        free(b->texts[i]);
    free(b->evs);
    free(b->refs);
    free(b->ids);
    free(b->index);
    free(b->texts);
    free(b->lens);
}

/* {"index": index, "field": field (if any), "message": message}. */
static json_t *error_json(size_t index, const char *field, const char *message)
{
    json_t *item = json_pack("{s:I,s:s}", "index", (json_int_t)index, "message", message);
    if (item && field && field[0])
        json_object_set_new(item, "field", json_string(field));
    return item;
}

/* Inserts an error among those from position `from` of errors on, which
 * are in ascending index order, at the place of its index. */
static void insert_error(json_t *errors, size_t from, size_t index, json_t *item)
{
    size_t at = json_array_size(errors);
    while (at > from &&
           (size_t)json_integer_value(json_object_get(json_array_get(errors, at - 1), "index")) >
               index)
        at--;
    json_array_insert_new(errors, at, item);
}

/* The row of an id the model knows (lock-free lookup), else 0 (row 0 is
 * never an id's). v is a valid id value. */
static uint32_t known_row(const hr_model *m, hr_table_id t, const json_t *v)
{
    char id[HR_ID_MAX_LEN + 1];
    size_t len;
    if (hr_api_id(v, "", id, &len, NULL) != HR_OK)
        return 0;
    uint32_t row = hr_model_lookup(m, t, id, len);
    return row == HR_ID_NONE ? 0 : row;
}

/* Validates events into b (allocated here): the valid ones, in order, with
 * their id hashes and (when logged) their log texts; the invalid ones
 * counted in *rejected and listed in errors. */
static hr_status validate(hr_events *e, const json_t *events, json_t *errors, bool logged,
                          batch *b, size_t *rejected, hr_error *err)
{
    size_t n = json_array_size(events), cap = n ? n : 1;
    memset(b, 0, sizeof *b);
    b->evs = malloc(cap * sizeof *b->evs);
    b->refs = malloc(cap * sizeof *b->refs);
    b->ids = malloc(cap * sizeof *b->ids);
    b->index = malloc(cap * sizeof *b->index);
    b->texts = logged ? calloc(cap, sizeof *b->texts) : NULL;
    b->lens = logged ? calloc(cap, sizeof *b->lens) : NULL;
    bool *reported = calloc(cap, sizeof *reported);
    if (!b->evs || !b->refs || !b->ids || !b->index || (logged && (!b->texts || !b->lens)) ||
        !reported) {
        free(reported);
        batch_free(b);
        memset(b, 0, sizeof *b);
        return hr_error_set(err, HR_ENOMEM, NULL, "out of memory");
    }
    for (size_t i = 0; i < json_array_size(errors); i++) {
        json_int_t at = json_integer_value(json_object_get(json_array_get(errors, i), "index"));
        if (at >= 0 && (size_t)at < n)
            reported[at] = true;
    }
    for (size_t i = 0; i < n; i++) {
        if (reported[i]) {
            (*rejected)++;
            continue;
        }
        const json_t *obj = json_array_get(events, i);
        size_t k = b->n;
        hr_error ve = {{0}, {0}};
        if (hr_api_event_parse(e->model, obj, &b->evs[k], &b->refs[k], &ve) != HR_OK) {
            (*rejected)++;
            json_array_append_new(errors, error_json(i, ve.field, ve.message));
            continue;
        }
        /* Ids that exist already are looked up here, unlocked; only new
         * ones are left for resolve(), under mu. */
        b->evs[k].user = known_row(e->model, HR_TABLE_USER, b->refs[k].user);
        b->evs[k].item = known_row(e->model, HR_TABLE_ITEM, b->refs[k].item);
        b->ids[k] = b->refs[k].id ? hr_events_id_hash(b->refs[k].id) : 0;
        b->index[k] = i;
        if (logged) {
            b->texts[k] = hr_api_event_text(obj, &b->lens[k]);
            if (!b->texts[k]) {
                (*rejected)++;
                json_array_append_new(errors, error_json(i, NULL, "out of memory"));
                continue;
            }
        }
        b->n++;
    }
    free(reported);
    return HR_OK;
}

/* Under mu, the batch admitted: resolves the ids of b's first n events
 * that validate() did not find (creating new ones); an event that cannot be resolved (an id table full)
 * is rejected: its claim released, its error inserted in errors (from
 * position `from`, in index order), and it moves behind the others.
 * Returns how many were resolved (the first ones of b). */
static size_t resolve(hr_events *e, batch *b, size_t n, json_t *errors, size_t from,
                      size_t *rejected)
{
    size_t kept = 0;
    for (size_t i = 0; i < n; i++) {
        hr_error re = {{0}, {0}};
        if ((b->evs[i].user == 0 || b->evs[i].item == 0) &&
            hr_api_event_resolve(e->model, &b->refs[i], &b->evs[i], &re) != HR_OK) {
            (*rejected)++;
            if (b->ids[i])
                hr_dedup_release(e->dedup, b->ids[i]);
            insert_error(errors, from, b->index[i], error_json(b->index[i], re.field, re.message));
            continue;
        }
        swap_at(b, kept++, i);
    }
    return kept;
}

hr_status hr_events_post(hr_events *e, const json_t *events, json_t *errors, bool wait,
                         hr_events_outcome *out, hr_events_pending **pending, hr_error *err)
{
    memset(out, 0, sizeof *out);
    *pending = NULL;
    const size_t from = json_array_size(errors); /* errors of this call start here */
    batch b;
    hr_status st = validate(e, events, errors, hr_ingest_has_log(e->ingest), &b, &out->rejected,
                            err);
    if (st != HR_OK)
        return st;
    double now = hr_wall_time();
    hr_events_pending *p = NULL;
    if (!wait && b.n) {
        p = malloc(sizeof *p + b.n * sizeof(uint64_t));
        if (!p) {
            batch_free(&b);
            return hr_error_set(err, HR_ENOMEM, NULL, "out of memory");
        }
    }
    /* Claims: a duplicate moves behind the events that go on. */
    size_t ok = 0;
    for (size_t i = 0; i < b.n; i++) {
        if (b.ids[i] && !hr_dedup_claim(e->dedup, b.ids[i], now)) {
            out->duplicates++;
            continue;
        }
        swap_at(&b, ok++, i);
    }
    uint64_t first = 0;
    size_t kept = 0;
    bool admitted = false;
    if (ok > 0) {
        pthread_mutex_lock(&e->mu);
        st = hr_ingest_admit(e->ingest, ok, err);
        admitted = st == HR_OK;
        if (admitted)
            kept = resolve(e, &b, ok, errors, from, &out->rejected);
        if (st == HR_OK && kept > 0)
            st = hr_ingest_submit_nowait(e->ingest, b.evs, (const char *const *)b.texts, b.lens,
                                         kept, now, false, &first, err);
        if (st == HR_OK && kept > 0) {
            for (size_t i = 0; i < kept; i++) {
                if (b.ids[i])
                    hr_dedup_confirm(e->dedup, b.ids[i]);
                apply(e, &b.evs[i], now);
            }
            e->seq = first + kept - 1;
        }
        pthread_mutex_unlock(&e->mu);
    }
    if (st != HR_OK) {
        /* Nothing queued (a failed commit comes below): the claims go back
         * (those of events that could not be resolved already went).
         * HR_EFULL after a successful admit cannot happen while every
         * non-waiting submit holds mu; it is handled all the same. */
        size_t held = admitted ? kept : ok;
        release_ids(e, b.ids, held);
        if (st == HR_EFULL)
            out->refused = held;
        kept = 0;
    }
    atomic_fetch_add(&e->rejected, out->rejected);
    atomic_fetch_add(&e->duplicates, out->duplicates);
    atomic_fetch_add(&e->refused, out->refused);
    out->accepted = kept;
    out->first_seq = kept ? first : 0;
    if (st != HR_OK || kept == 0) {
        free(p);
        batch_free(&b);
        return st;
    }
    if (wait) {
        st = hr_ingest_wait(e->ingest, first + kept - 1, err);
        if (st != HR_OK) /* not durable: the client will resend */
            release_ids(e, b.ids, kept);
        batch_free(&b);
        return st;
    }
    p->e = e;
    p->last = first + kept - 1;
    p->n = 0;
    for (size_t i = 0; i < kept; i++)
        if (b.ids[i])
            p->ids[p->n++] = b.ids[i];
    *pending = p;
    batch_free(&b);
    return HR_OK;
}

hr_status hr_events_post_append(hr_events *e, const json_t *events, json_t *errors,
                                hr_events_append_fn append, void *arg, hr_events_outcome *out,
                                hr_error *err)
{
    memset(out, 0, sizeof *out);
    batch b;
    hr_status st = validate(e, events, errors, true, &b, &out->rejected, err);
    if (st != HR_OK)
        return st;
    bool *dup = calloc(b.n ? b.n : 1, sizeof *dup);
    if (!dup) {
        batch_free(&b);
        return hr_error_set(err, HR_ENOMEM, NULL, "out of memory");
    }
    size_t appended = 0;
    if (b.n > 0)
        st = append(arg, b.n, (const char *const *)b.texts, b.lens, b.ids, hr_wall_time(), dup,
                    &appended, err);
    if (st == HR_OK) {
        for (size_t i = 0; i < b.n; i++)
            out->duplicates += dup[i];
        out->accepted = appended;
    }
    atomic_fetch_add(&e->rejected, out->rejected);
    atomic_fetch_add(&e->duplicates, out->duplicates);
    free(dup);
    batch_free(&b);
    return st;
}

void hr_events_get_counts(hr_events *e, hr_events_counts *out)
{
    out->rejected = atomic_load(&e->rejected);
    out->duplicates = atomic_load(&e->duplicates);
    out->refused = atomic_load(&e->refused);
}

static void pending_done(void *arg, hr_status st, const char *why)
{
    hr_events_pending *p = arg;
    if (st != HR_OK)
        release_ids(p->e, p->ids, p->n);
    hr_evlog_notify_fn cb = p->cb;
    void *cb_arg = p->arg;
    free(p);
    cb(cb_arg, st, why);
}

void hr_events_notify(hr_events *e, hr_events_pending *p, hr_evlog_notify_fn cb, void *arg)
{
    p->cb = cb;
    p->arg = arg;
    if (hr_ingest_notify(e->ingest, p->last, pending_done, p) != HR_OK)
        pending_done(p, HR_ENOMEM, "out of memory");
}

void hr_events_apply(hr_events *e, const hr_event *evs, const uint64_t *ids,
                     const double *arrived, size_t n)
{
    double now = hr_wall_time();
    pthread_mutex_lock(&e->mu);
    for (size_t i = 0; i < n; i++) {
        if (evs[i].seq <= e->seq)
            continue; /* in the loaded state */
        double t = arrived && isfinite(arrived[i]) ? arrived[i] : now;
        if (ids && ids[i])
            hr_dedup_remember(e->dedup, ids[i], t, now);
        apply(e, &evs[i], t);
        e->seq = evs[i].seq;
    }
    pthread_mutex_unlock(&e->mu);
}

hr_status hr_events_replay(hr_events *e, hr_event *evs, const uint64_t *ids,
                           const double *arrived, size_t n)
{
    hr_events_apply(e, evs, ids, arrived, n);
    return hr_ingest_replay(e->ingest, evs, n);
}

size_t hr_events_recent(hr_events *e, uint32_t user, uint32_t *out, size_t max)
{
    return hr_history_recent(e->history, user, out, max, NULL);
}

uint32_t hr_events_recent_max(const hr_events *e) { return e->cfg.history_per_user; }

size_t hr_events_popular(hr_events *e, uint32_t k, const hr_topk_exclude *ex, hr_topk_item *out)
{
    return hr_history_popular(e->history, e->model, k, hr_wall_time(), ex, out);
}

/* ---- checkpoints ---- */

/* A growing byte buffer that is flushed as a blob part when full. */
typedef struct {
    const hr_events_sink *sink;
    const char *kind;
    uint8_t *data;
    size_t len, cap;
    uint32_t part;
    hr_error *err;
} part_buf;

static hr_status part_flush(part_buf *pb)
{
    if (pb->len == 0)
        return HR_OK;
    hr_status st = pb->sink->blob(pb->sink->ctx, pb->kind, pb->part++, pb->data, pb->len, pb->err);
    pb->len = 0;
    return st;
}

static hr_status part_put(part_buf *pb, const void *a, size_t alen, const void *b, size_t blen)
{
    if (pb->len + alen + blen > PART_BYTES) {
        hr_status st = part_flush(pb);
        if (st != HR_OK)
            return st;
    }
    if (pb->len + alen + blen > pb->cap) {
        size_t cap = pb->cap ? pb->cap : 4096;
        while (cap < pb->len + alen + blen)
            cap *= 2;
        uint8_t *d = realloc(pb->data, cap);
        if (!d)
            return hr_error_set(pb->err, HR_ENOMEM, NULL, "out of memory");
        pb->data = d;
        pb->cap = cap;
    }
    memcpy(pb->data + pb->len, a, alen);
    if (blen)
        memcpy(pb->data + pb->len + alen, b, blen);
    pb->len += alen + blen;
    return HR_OK;
}

static hr_status save_id(void *ctx, uint64_t hash, double t)
{
    part_buf *pb = ctx;
    return part_put(pb, &hash, sizeof hash, &t, sizeof t);
}

static hr_status save_rings(hr_events *e, uint64_t since, const hr_events_sink *sink,
                            hr_error *err)
{
    size_t per = e->cfg.history_per_user;
    if (per == 0)
        return HR_OK;
    uint32_t *items = malloc(per * sizeof *items);
    uint8_t *enc = malloc(per * (2 + HR_ID_MAX_LEN));
    hr_status st = items && enc ? HR_OK : hr_error_set(err, HR_ENOMEM, NULL, "out of memory");
    uint32_t users = hr_model_rows(e->model, HR_TABLE_USER);
    for (uint32_t u = 1; u < users && st == HR_OK; u++) {
        uint64_t rseq;
        size_t n = hr_history_recent(e->history, u, items, per, &rseq);
        if (n == 0 || (since > 0 && rseq <= since))
            continue;
        size_t ulen;
        const char *ukey = hr_model_key(e->model, HR_TABLE_USER, u, &ulen);
        if (!ukey)
            continue; /* expired */
        size_t len = 0;
        for (size_t i = 0; i < n; i++) {
            size_t klen;
            const char *key = hr_model_key(e->model, HR_TABLE_ITEM, items[i], &klen);
            if (!key)
                continue;
            uint16_t l16 = (uint16_t)klen;
            memcpy(enc + len, &l16, 2);
            memcpy(enc + len + 2, key, klen);
            len += 2 + klen;
        }
        st = sink->history(sink->ctx, ukey, ulen, rseq, enc, len, err);
    }
    free(items);
    free(enc);
    return st;
}

hr_status hr_events_save(hr_events *e, uint64_t since, const hr_events_sink *sink, uint64_t *seq,
                         hr_error *err)
{
    uint32_t rows = hr_model_rows(e->model, HR_TABLE_ITEM);
    float *pop = malloc((size_t)(rows ? rows : 1) * sizeof *pop);
    if (!pop)
        return hr_error_set(err, HR_ENOMEM, NULL, "out of memory");
    /* The cut, and the scores at it. */
    pthread_mutex_lock(&e->mu);
    double taken = hr_wall_time();
    uint64_t cut = e->seq;
    rows = hr_model_rows(e->model, HR_TABLE_ITEM) < rows ? hr_model_rows(e->model, HR_TABLE_ITEM)
                                                         : rows;
    hr_history_pop_copy(e->history, rows, taken, pop);
    pthread_mutex_unlock(&e->mu);
    *seq = cut;
    hr_status st = sink->header(sink->ctx, cut, taken, err);
    part_buf pb = {.sink = sink, .kind = "popularity", .err = err};
    for (uint32_t r = 1; r < rows && st == HR_OK; r++) {
        if (!(pop[r] >= POP_MIN))
            continue;
        size_t klen;
        const char *key = hr_model_key(e->model, HR_TABLE_ITEM, r, &klen);
        if (!key)
            continue;
        uint8_t head[6];
        uint16_t l16 = (uint16_t)klen;
        memcpy(head, &pop[r], 4);
        memcpy(head + 4, &l16, 2);
        st = part_put(&pb, head, sizeof head, key, klen);
    }
    free(pop);
    if (st == HR_OK)
        st = part_flush(&pb);
    if (st == HR_OK) {
        pb.kind = "dedup";
        pb.part = 0;
        st = hr_dedup_export(e->dedup, taken, save_id, &pb);
        if (st == HR_OK)
            st = part_flush(&pb);
    }
    free(pb.data);
    if (st == HR_OK)
        st = save_rings(e, since, sink, err);
    return st;
}

/* ---- loading ---- */

hr_status hr_events_load_begin(hr_events *e, uint64_t seq, double taken, hr_error *err)
{
    free(e->loaded);
    e->loaded = calloc((size_t)e->cfg.max_users / 8 + 1, 1);
    if (!e->loaded)
        return hr_error_set(err, HR_ENOMEM, NULL, "out of memory");
    pthread_mutex_lock(&e->mu);
    e->seq = seq;
    pthread_mutex_unlock(&e->mu);
    e->loaded_taken = taken;
    return HR_OK;
}

void hr_events_load_end(hr_events *e)
{
    free(e->loaded);
    e->loaded = NULL;
}

static hr_status corrupt(hr_error *err, const char *what)
{
    return hr_error_set(err, HR_ECORRUPT, "db", "serving state: malformed %s record", what);
}

/* Reads [u16 len][key] at *pos of data (bytes); interns it in table t. */
static hr_status read_key(hr_events *e, hr_table_id t, const uint8_t *data, size_t bytes,
                          size_t *pos, uint32_t *row, hr_error *err, const char *what)
{
    uint16_t l16;
    if (*pos + 2 > bytes)
        return corrupt(err, what);
    memcpy(&l16, data + *pos, 2);
    if (l16 == 0 || l16 > HR_ID_MAX_LEN || *pos + 2 + l16 > bytes)
        return corrupt(err, what);
    hr_status st = hr_model_intern(e->model, t, (const char *)data + *pos + 2, l16, row, NULL);
    *pos += 2 + (size_t)l16;
    if (st == HR_EFULL) {
        *row = 0; /* the table is full (a smaller config): skipped */
        return HR_OK;
    }
    return st == HR_OK ? HR_OK : hr_error_set(err, st, "db", "serving state: %s",
                                              hr_status_to_string(st));
}

hr_status hr_events_load_history(hr_events *e, const char *user, size_t ulen, uint64_t seq,
                                 const void *items, size_t bytes, hr_error *err)
{
    size_t per = e->cfg.history_per_user;
    if (per == 0 || !e->loaded)
        return HR_OK;
    if (ulen == 0 || ulen > HR_ID_MAX_LEN)
        return corrupt(err, "user");
    uint32_t urow;
    hr_status st = hr_model_intern(e->model, HR_TABLE_USER, user, ulen, &urow, NULL);
    if (st == HR_EFULL)
        return HR_OK;
    if (st != HR_OK)
        return hr_error_set(err, st, "db", "serving state: %s", hr_status_to_string(st));
    if (urow >= e->cfg.max_users)
        return HR_OK;
    uint8_t *bit = &e->loaded[urow >> 3], mask = (uint8_t)(1u << (urow & 7));
    if (*bit & mask)
        return HR_OK; /* a newer checkpoint of the chain had this user */
    *bit |= mask;
    uint32_t rows[per];
    size_t n = 0, pos = 0;
    while (pos < bytes && n < per) {
        uint32_t row;
        if ((st = read_key(e, HR_TABLE_ITEM, items, bytes, &pos, &row, err, "recent items")) !=
            HR_OK)
            return st;
        if (row)
            rows[n++] = row;
    }
    return hr_history_set_ring(e->history, urow, rows, n, seq) == HR_OK
               ? HR_OK
               : hr_error_set(err, HR_ENOMEM, NULL, "out of memory");
}

hr_status hr_events_load_blob(hr_events *e, const char *kind, const void *data, size_t bytes,
                              hr_error *err)
{
    const uint8_t *d = data;
    size_t pos = 0;
    double now = hr_wall_time();
    if (!strcmp(kind, "dedup")) {
        if (bytes % 16)
            return corrupt(err, "dedup");
        for (; pos < bytes; pos += 16) {
            uint64_t h;
            double t;
            memcpy(&h, d + pos, 8);
            memcpy(&t, d + pos + 8, 8);
            hr_dedup_remember(e->dedup, h, t, now);
        }
        return HR_OK;
    }
    if (strcmp(kind, "popularity") != 0)
        return corrupt(err, kind);
    while (pos < bytes) {
        float score;
        if (pos + 4 > bytes)
            return corrupt(err, "popularity");
        memcpy(&score, d + pos, 4);
        pos += 4;
        uint32_t row;
        hr_status st = read_key(e, HR_TABLE_ITEM, d, bytes, &pos, &row, err, "popularity");
        if (st != HR_OK)
            return st;
        if (row && isfinite(score) && score > 0 &&
            hr_history_pop_set(e->history, row, score, e->loaded_taken) != HR_OK)
            return hr_error_set(err, HR_ENOMEM, NULL, "out of memory");
    }
    return HR_OK;
}

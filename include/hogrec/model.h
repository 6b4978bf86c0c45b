/*
 * model.h - the factorization machine: parameters, id tables, row storage.
 *
 *   y(x) = w0 + sum_f w_f x_f + sum_{f<g} <v_f, v_g> x_f x_g
 *   logistic loss: p = sigmoid(y);  squared loss: the prediction is y.
 *
 * The active features of an event are the user id, the item id and up to
 * HR_MAX_CTX context features ("field": "value" one-hot, or "field": number).
 * With only user and item this is logistic matrix factorization with biases.
 *
 * Storage: four tables (global, user, item, context) of rows. Rows live in
 * chunks of chunk_rows rows that are allocated once and never move, so a row
 * pointer stays valid for the life of the model. A chunk holds two blocks of
 * chunk_rows x `stride` floats:
 *     weights  v[0..k)  bias  count  last_seen  pad
 *     state    AdaGrad accumulators of v and bias, FTRL z and n  (if any)
 * The state of a row is at a fixed offset from the row (`state` floats), so
 * the update kernel reaches both from one pointer, and the weights block is
 * a dense row-major float block (leading dimension `stride`) whose first k+1
 * columns are the factors and the bias: top-K scoring runs one sgemv per
 * chunk and streams only weights. Row 0 of the user and item tables is the shared default embedding:
 * unknown ids, and ids seen fewer than min_count times, score and learn
 * through it. The context table is hashed (2^context_bits rows, no ids).
 *
 * Concurrency: ids are added (hr_model_intern) from any thread while others
 * read and train. Row contents are read and written without locks (Hogwild);
 * all such accesses go through sgd.c. Each row has one atomic byte of change
 * marks, a bit per consumer (hr_mark): incremental checkpoints and row deltas
 * each take their own bit, so neither steals the other's changes.
 */
#ifndef HOGREC_MODEL_H
#define HOGREC_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hogrec/attrmat.h"
#include "hogrec/common.h"
#include "hogrec/config.h"
#include "hogrec/event.h"
#include "hogrec/half.h"
#include "hogrec/ids.h"
#include "hogrec/row.h"
#include "hogrec/schedule.h"

typedef enum {
    HR_TABLE_GLOBAL, /* one row: w0 in its bias slot */
    HR_TABLE_USER,
    HR_TABLE_ITEM,
    HR_TABLE_CTX,
    HR_TABLE_COUNT
} hr_table_id;

typedef struct {
    uint32_t k;              /* factor dimension */
    hr_loss loss;
    hr_state_kind state;     /* per-row optimizer state */
    float init_scale;        /* stddev of initial factors */
    uint64_t seed;
    double l2[HR_GROUP_COUNT];
    uint32_t max_rows[HR_TABLE_COUNT]; /* user/item: max ids + 1; ctx: 2^bits */
    uint32_t chunk_rows;     /* power of two */
    uint32_t min_count;      /* events before an id gets its own row */
    double expire_seconds;   /* 0 = never */
    double grad_clip;        /* 0 = off */
    float adagrad_init;      /* initial accumulator */
    float rating_offset;     /* initial w0 for squared loss */
    bool half_items;         /* keep a half-precision copy of item rows (top-K) */
    float attr_value[2];     /* [0] user, [1] item: value of a catalog attribute (the
                                catalog sets the attributes; a number: times it) */
    hr_config_attr_norm attr_norm; /* the catalog's scaling by a record's attribute count */
    hr_storage storage;      /* how rows store their factors (row.h); F32 = 0 */
} hr_model_config;

typedef struct hr_model hr_model;

/* Fills a model config from the process config and the initial schedule
 * (whose optimizer decides the state kind when c->state is "auto"). */
hr_status hr_model_config_from(const hr_config *c, const hr_schedule *s,
                               hr_model_config *out, hr_error *err);

/* Creates an initialized model (row 0s and the context table seeded).
 * *out is new; free with hr_model_destroy. */
hr_status hr_model_create(const hr_model_config *mc, hr_model **out, hr_error *err);
void hr_model_destroy(hr_model *m); /* NULL is a no-op */

/* Borrowed, valid for the life of the model. */
const hr_model_config *hr_model_get_config(const hr_model *m);
const hr_row_layout *hr_model_layout(const hr_model *m);

/* Whether the rows have the state an optimizer needs (AdaGrad/FTRL need
 * accumulators; FTRL needs z and n). */
bool hr_model_supports(const hr_model *m, hr_optimizer opt);

/* ---- ids (user and item tables only) ---- */

/* Finds or adds an id; *row receives its row. *created may be NULL. A new
 * id's row is marked for every consumer (HR_MARK_ALL) once the id is visible.
 * Errors: HR_EINVAL (bad length), HR_EFULL (table full), HR_ENOMEM. */
hr_status hr_model_intern(hr_model *m, hr_table_id t, const char *id, size_t len,
                          uint32_t *row, bool *created);
/* Lock-free; HR_ID_NONE if absent. */
uint32_t hr_model_lookup(const hr_model *m, hr_table_id t, const char *id, size_t len);
/* Lock-free; borrowed key or NULL (row free or row 0). */
const char *hr_model_key(const hr_model *m, hr_table_id t, uint32_t row, size_t *len);
/* Restores an id at a given row (checkpoint load, delta apply). Sets no
 * change mark. */
hr_status hr_model_insert_id_at(hr_model *m, hr_table_id t, const char *id, size_t len,
                                uint32_t row);
/* Removes the id at row (a delta's removal; expiry removes its own). The row
 * goes on the free list; its contents stay. Sets no change mark.
 * HR_ENOTFOUND if the row holds no id, HR_EINVAL for a table without ids. */
hr_status hr_model_remove_id(hr_model *m, hr_table_id t, uint32_t row);
/* Forgets the id at row (a user deleted through the API): removes the id,
 * overwrites the row with a fresh one (its learned contents are gone from
 * memory), clears its attributes and marks it HR_MARK_ALL so the next
 * checkpoint records the removal. A trainer still holding the row may
 * write to it once more. HR_ENOTFOUND if the row holds no id, HR_EINVAL
 * for a table without ids or row 0. */
hr_status hr_model_forget(hr_model *m, hr_table_id t, uint32_t row);
/* Number of ids present; rows ever handed out (high water, >= 1). */
uint32_t hr_model_id_count(const hr_model *m, hr_table_id t);
uint32_t hr_model_rows(const hr_model *m, hr_table_id t);

/* Context feature row: hash of (field, value) for categorical features, of
 * field alone for numeric ones (value NULL). Always valid. */
uint32_t hr_model_ctx_row(const hr_model *m, const char *field, size_t flen,
                          const char *value, size_t vlen);

/* ---- rows ---- */

/* Overwrites a row with its initial values (the seeded factors a new row
 * gets, zero bias and counts, initial optimizer state) and marks it. For a
 * restore, while nothing trains. */
void hr_model_reset_row(hr_model *m, hr_table_id t, uint32_t row);

/* Pointer to a row (never moves). row < hr_model_rows(). Its factors are
 * floats only with storage F32: a reader of values uses hr_model_row_f32
 * (or hr_sgd_row_to_f32), never the pointer's floats. */
float *hr_model_row(const hr_model *m, hr_table_id t, uint32_t row);

/* The row's factors and bias as k+1 floats, whatever the storage: the live
 * row itself with F32 (no copy), or the row converted into buf (k+1
 * floats) with BF16. Borrowed: the row for the model's life, else buf. */
const float *hr_model_row_f32(const hr_model *m, hr_table_id t, uint32_t row, float *buf);

/* How the model stores factors (hr_model_config.storage). */
hr_storage hr_model_storage(const hr_model *m);

/* Prefetches every cache line of a row, weights and state, and its dirty
 * mark, for writing (the trainers do it a few events ahead: big tables are
 * bound by row fetches). */
void hr_model_prefetch(const hr_model *m, hr_table_id t, uint32_t row);

/* The row that scores and trains for `row`: itself, or the table's default
 * row 0 while the id has fewer than min_count events. */
uint32_t hr_model_effective_row(const hr_model *m, hr_table_id t, uint32_t row);

/* Change marks, one bit per consumer in each row's atomic byte. A consumer
 * takes its bit (hr_model_take_mark) and then reads the row or its id, so a
 * change made after the take marks the row again. Each group of
 * HR_MARK_GROUP_ROWS rows also has a summary byte, the or of the bits set
 * in it since its last take (hr_model_take_group_mark), so a consumer can
 * skip the groups nothing changed in: take the group's bit, then the rows'. */
#define HR_MARK_GROUP_ROWS 64u
typedef enum {
    HR_MARK_CKPT = 1,  /* row contents or id changed since the last checkpoint took it */
    HR_MARK_DELTA = 2, /* row contents changed since the last delta took it */
    HR_MARK_ID = 4,    /* the row's id was assigned or freed since the last delta took it */
    HR_MARK_ALL = 7,
    HR_MARK_HALF = 8   /* item row contents changed since the half copy took it: set
                          with HR_MARK_CKPT when the model keeps half item rows */
} hr_mark;

/* Marks a row's contents changed for every consumer (HR_MARK_CKPT |
 * HR_MARK_DELTA): one relaxed load when both bits are already set (the
 * trainers' steady state), else one atomic or on the row's byte plus, when
 * its group's summary lacks a bit, one on the summary. The trainers call it
 * after each update. */
void hr_model_mark_dirty(hr_model *m, hr_table_id t, uint32_t row);
/* Sets the given bits (an or of hr_mark), the same way. The row's chunk
 * must exist. */
void hr_model_mark(hr_model *m, hr_table_id t, uint32_t row, unsigned marks);
/* Atomically reads and clears the checkpoint bit (HR_MARK_CKPT). */
bool hr_model_take_dirty(hr_model *m, hr_table_id t, uint32_t row);
/* Atomically reads and clears the bits `which` (an or of hr_mark) of a row
 * and returns those that were set (a load first: no write when none is).
 * 0 for a row whose storage does not exist (a free row of the user or item
 * table that was never handed out). */
unsigned hr_model_take_mark(hr_model *m, hr_table_id t, uint32_t row, unsigned which);
/* The same for group g's summary (rows [g, g+1) x HR_MARK_GROUP_ROWS): the
 * bits `which` set by any mark in it since the last take. Take the summary
 * before the rows: a row marked after that take sets it again. */
unsigned hr_model_take_group_mark(hr_model *m, hr_table_id t, uint32_t g, unsigned which);
/* Sets bits of group g's summary (a consumer that gives back what it took). */
void hr_model_mark_group(hr_model *m, hr_table_id t, uint32_t g, unsigned marks);
/* Number of groups of a table (max_rows / HR_MARK_GROUP_ROWS, rounded up). */
uint32_t hr_model_mark_groups(const hr_model *m, hr_table_id t);
/* Number of rows whose checkpoint bit is set now (scans; for stats and tests). */
uint64_t hr_model_count_dirty(const hr_model *m, hr_table_id t);
/* The same for any one bit. */
uint64_t hr_model_count_marked(const hr_model *m, hr_table_id t, hr_mark which);

/* Items as row-major float blocks for BLAS: block b covers rows
 * [b*chunk_rows, b*chunk_rows + *nrows); *lda is the stride in floats. Returns
 * NULL past the last block. The first k+1 columns are factors and bias with
 * storage F32; with BF16 the block is the rows as stored (lda floats a
 * row), to be converted with hr_model_item_rows_f32. */
const float *hr_model_item_block(const hr_model *m, uint32_t b, uint32_t *nrows,
                                 uint32_t *lda);

/* Item rows [first, first + n) of block b (as hr_model_item_block gives it)
 * into out[n x (k+1)] as floats: factors then bias, whatever the storage. */
void hr_model_item_rows_f32(const hr_model *m, const float *block, uint32_t first, uint32_t n,
                            float *out);

/* ---- half-precision item rows (half_items; see half.h) ---- */

/* The half rows' layout; NULL when the model keeps no half copy. Borrowed. */
const hr_half_layout *hr_model_half_layout(const hr_model *m);
/* Brings the half copy up to date: converts every item row marked
 * HR_MARK_HALF since the last sync (every row on the first). Serialized by
 * a mutex of the model; safe while trainers run (a row written meanwhile
 * is marked again). Returns the rows converted; 0 without a half copy.
 * Takes a const model: only the half copy and its mark bits change. */
uint64_t hr_model_item_half_sync(const hr_model *m);
/* Half item rows of block b (the rows of hr_model_item_block(b)), stride
 * hr_model_half_layout(m)->stride; NULL past the last block or without a
 * half copy. Borrowed for the life of the model. */
const uint16_t *hr_model_item_half_block(const hr_model *m, uint32_t b, uint32_t *nrows);

/* Seconds since the model epoch (the unit of last_seen). */
uint32_t hr_model_clock(const hr_model *m);

/* Removes ids not seen for expire_seconds (no-op if expiry is off). Their rows
 * are reset and reused by later ids, and marked HR_MARK_ALL once the id is
 * gone. Returns how many were removed. Safe
 * while trainers run (a trainer still holding the row trains a fresh row). */
uint64_t hr_model_expire(hr_model *m, uint32_t now);
/* Totals for stats. */
uint64_t hr_model_expired_total(const hr_model *m);

/* Bytes of memory the rows, marks and id indexes use. */
size_t hr_model_bytes(const hr_model *m);

/* ---- prediction ---- */

/* Resolves an event's active features into row pointers (effective rows)
 * for the kernel; see sgd.h. Returns the number of features. */
struct hr_active;
int hr_model_active(const hr_model *m, const hr_event *ev, struct hr_active *out);
/* The same with the effective user and item rows already resolved (the
 * trainer resolves them once and marks the same rows dirty). */
int hr_model_active_rows(const hr_model *m, const hr_event *ev, uint32_t user, uint32_t item,
                         struct hr_active *out);
/* Both in one call (the trainers, per event): the effective user and item
 * rows into *user and *item, then the features as hr_model_active_rows. */
int hr_model_event_rows(const hr_model *m, const hr_event *ev, uint32_t *user, uint32_t *item,
                        struct hr_active *out);
/* Counts an event on the id rows it names (hr_sgd_touch on the user's and
 * the item's own rows, whichever rows train). */
void hr_model_touch_event(hr_model *m, const hr_event *ev, uint32_t now);
/* Marks dirty (hr_model_mark_dirty) the rows one trained event changed, each
 * once: with own_rows, the id rows it names (touched) and the effective
 * rows user and item where they differ from those; without, the effective
 * rows only (a sampled negative). Then its context rows, and the catalog
 * attributes' rows when they took part (nactive, the feature count of
 * hr_model_event_rows, exceeds 3 + nctx). The global row is the caller's
 * (the trainers mark it once per batch, after the batch's last step). */
void hr_model_mark_event(hr_model *m, const hr_event *ev, uint32_t user, uint32_t item,
                         int nactive, bool own_rows);

/* ---- catalog attributes ----
 *
 * A user or item row may carry up to HR_MAX_ATTRS attributes: context
 * features (a context row and its value) that enter every event and query
 * of that row as FM features, after the event's own context features
 * (hr_model_active_rows). The catalog module sets them. A pinned row's id
 * never expires (its attributes and catalog filters stay bound to it). */

/* Replaces the attributes of a user or item row (row >= 1) with f[0..n)
 * (copied) and sets or clears its pin. A reader racing the change may see
 * a mix of old and new entries. HR_EINVAL (table, row or n out of range),
 * HR_ENOMEM. Thread-safe. */
hr_status hr_model_set_attrs(hr_model *m, hr_table_id t, uint32_t row, const hr_feat *f,
                             uint32_t n, bool pinned);
/* Copies a row's attributes into out (room for HR_MAX_ATTRS); returns how
 * many (0 for row 0, the global and context tables). Lock-free. */
uint32_t hr_model_attrs(const hr_model *m, hr_table_id t, uint32_t row, hr_feat *out);
/* How many rows of a table have attributes now. */
uint32_t hr_model_attrs_count(const hr_model *m, hr_table_id t);
/* The item x attribute matrix of the top-K scan (attrmat.h), brought up to
 * date with the items' attributes and held for reading: *out is borrowed
 * until hr_model_item_attrs_release, or NULL (nothing held) when no item
 * has attributes. HR_ENOMEM (nothing held) if it could not be rebuilt. */
hr_status hr_model_item_attrs_acquire(const hr_model *m, const hr_attrmat **out);
/* Releases what hr_model_item_attrs_acquire gave (NULL is a no-op). */
void hr_model_item_attrs_release(const hr_model *m, const hr_attrmat *am);
/* Whether the row is pinned (hr_model_set_attrs). */
bool hr_model_attrs_pinned(const hr_model *m, hr_table_id t, uint32_t row);
/* Marks the context rows of ev's user and item attributes changed (the
 * trainer, after an update). */
void hr_model_mark_attrs_dirty(hr_model *m, const hr_event *ev);

/* Prediction for an event: probability (logistic) or value (squared). */
double hr_model_predict(const hr_model *m, const hr_event *ev);

/* The link of the model's loss (hr_row_link): sigmoid for logistic,
 * identity for squared. */
double hr_model_link(const hr_model *m, double y);

#endif

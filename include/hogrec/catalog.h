/*
 * catalog.h - users and items beyond their ids: a record per id with
 * `features` (field: string | number, as on events), `categories`
 * (strings), `hidden` and an optional `expires_at` (epoch seconds).
 *
 * What a record does:
 * - its features and categories are set as the id's row attributes in the
 *   model (hr_model_set_attrs): context features ("user:FIELD" /
 *   "item:FIELD" hashed with the value, categories as "user:category" /
 *   "item:category") that join every event and query of that id, so an id
 *   with known attributes scores through what was learned about them;
 * - an item's categories, hidden flag and expiry filter recommendations
 *   (hr_catalog_filter: a bitmap of allowed item rows for the top-K scan).
 *
 * A record's id is interned into the model when it is written (so it has a
 * row to carry attributes and filter bits) and pinned: it never expires
 * (expire_seconds); DELETE unpins it. Records are stored in the main
 * database (persist.h, table `catalog`) when there is one, and loaded at
 * start (hr_catalog_load); with `--db ""` they live in memory only. In
 * cluster mode writes are changes in the cluster's event stream, applied
 * by every node in its order (see "cluster mode" below).
 *
 * Forgetting a user (hr_catalog_forget_user) removes its model row, recent
 * items, catalog record and, with a database, every trace of the id in
 * both files (hr_persist_forget_user).
 *
 * Threads: any. Writers are serialized by a mutex (the database write, then
 * the memory update under the write side of a rwlock); filters and reads
 * take the read side. Attributes are read lock-free by the model.
 */
#ifndef HOGREC_CATALOG_H
#define HOGREC_CATALOG_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hogrec/common.h"
#include "hogrec/events.h"
#include "hogrec/model.h"

struct hr_persist;

typedef enum { HR_CATALOG_USER, HR_CATALOG_ITEM, HR_CATALOG_KINDS } hr_catalog_kind;

#define HR_CATALOG_MAX_FEATURES 8        /* `features` entries per record */
#define HR_CATALOG_MAX_CATEGORIES 8      /* `categories` per record */
#define HR_CATALOG_MAX_CATEGORY_LEN 64   /* bytes of a category */
#define HR_CATALOG_MAX_DISTINCT 4096     /* distinct item categories in a catalog */
#define HR_CATALOG_MAX_FILTER 32         /* categories named in one filter */

typedef struct hr_catalog hr_catalog;

/* "user" or "item". */
const char *hr_catalog_kind_to_string(hr_catalog_kind k);

/* model and events are borrowed for the life of the catalog; persist
 * (borrowed; NULL: memory only) stores the records. *out is new. */
hr_status hr_catalog_create(hr_model *model, hr_events *events, struct hr_persist *persist,
                            hr_catalog **out);
void hr_catalog_destroy(hr_catalog *c); /* NULL is a no-op */

/* Stops using the database (before it closes): writes after this fail
 * with HR_ESTOPPED. Waits for a write in progress. NULL is a no-op. */
void hr_catalog_detach(hr_catalog *c);

/* Loads the stored records (start, before serving). A stored record that
 * no longer validates is skipped and counted in *skipped (may be NULL). */
hr_status hr_catalog_load(hr_catalog *c, size_t *skipped, hr_error *err);

/* A validated record, ready to be written. */
typedef struct {
    char id[HR_ID_MAX_LEN + 1]; /* NUL-terminated */
    size_t idlen;
    json_t *doc;                /* owned: the canonical record (id, features,
                                   categories, hidden, expires_at) */
} hr_catalog_record;

/* Validates a record object. id (idlen bytes; NULL: the object's "id"
 * member, required) names the record; an "id" member that differs from a
 * given id is an error. Fields: features (object of at most
 * HR_CATALOG_MAX_FEATURES names of 1..HR_ID_MAX_LEN bytes, values strings
 * or finite numbers of at most 1e6 in size), categories (array of at most
 * HR_CATALOG_MAX_CATEGORIES strings of 1..HR_CATALOG_MAX_CATEGORY_LEN
 * bytes; repeats collapse), hidden (bool), expires_at (finite number >= 0,
 * epoch seconds, or null); an unknown field is an error. obj is borrowed;
 * out->doc is new on HR_OK (free with hr_catalog_record_free). HR_EINVAL
 * with err naming the field. Pure. */
hr_status hr_catalog_parse(const json_t *obj, const char *id, size_t idlen,
                           hr_catalog_record *out, hr_error *err);
void hr_catalog_record_free(hr_catalog_record *r); /* frees doc; NULL doc is a no-op */

/* Writes n validated records of kind (all or none): the database first (one
 * transaction), then memory: ids interned into the model, attributes set,
 * filter bits updated. Takes the records' docs (freed in every case).
 * created[i] (may be NULL) says whether record i is new. HR_EFULL (an id
 * table is full; err names the id), HR_EINVAL (a category beyond
 * HR_CATALOG_MAX_DISTINCT), HR_EIO/HR_EBUSY (database), HR_ENOMEM. */
hr_status hr_catalog_put(hr_catalog *c, hr_catalog_kind kind, hr_catalog_record *recs, size_t n,
                         bool *created, hr_error *err);

/* The record of an id: a new reference, or NULL. */
json_t *hr_catalog_get(hr_catalog *c, hr_catalog_kind kind, const char *id, size_t idlen);

/* Deletes a record: its attributes, pin and filter bits go; the id stays
 * in the model. HR_ENOTFOUND when there is none. */
hr_status hr_catalog_delete(hr_catalog *c, hr_catalog_kind kind, const char *id, size_t idlen,
                            hr_error *err);

/* What hr_catalog_forget_user removed. */
typedef struct {
    bool record;          /* a catalog record */
    bool model;           /* a model row (and its recent items) */
    uint64_t db_rows;     /* database rows deleted (checkpoint rows, recent
                             items, record, logged events) */
} hr_catalog_forgotten;

/* Forgets a user: its model row (hr_model_forget), recent items, catalog
 * record and, with a database, every row holding the id in both files
 * (hr_persist_forget_user). Events of the user still queued may train the
 * freed row once more; they do not bring the id back. */
hr_status hr_catalog_forget_user(hr_catalog *c, const char *id, size_t idlen,
                                 hr_catalog_forgotten *out, hr_error *err);

/* Records held, by kind. */
size_t hr_catalog_count(hr_catalog *c, hr_catalog_kind kind);

/* A recommendation filter over item rows. */
typedef struct {
    uint64_t *allow;      /* owned (free()): bit r set = item row r may be recommended;
                             NULL: no restriction */
    uint32_t rows;        /* rows the bitmap covers (rows past it are not allowed) */
    uint32_t count;       /* bits set */
} hr_catalog_filter_t;

/* Builds the filter of a recommendation at wall time now: hidden items and
 * items whose expires_at <= now are left out; `categories` (a
 * comma-separated list, NULL or "" for none) keeps only items in any of
 * them; `exclude_categories` leaves out items in any of them. A category
 * no item has matches nothing. out->allow is NULL when nothing is
 * restricted (no filter asked and no item hidden or expired). Costs one
 * pass over the bitmaps (rows / 64 words each), never over the items.
 * HR_EINVAL (more than HR_CATALOG_MAX_FILTER categories, an empty or too
 * long one; err names the parameter), HR_ENOMEM. */
hr_status hr_catalog_filter(hr_catalog *c, const char *categories,
                            const char *exclude_categories, double now,
                            hr_catalog_filter_t *out, hr_error *err);

/* ---- cluster mode (cluster.h) ----
 *
 * Writes are not applied where they arrive: each becomes a change text
 * (below: new strings, free() them; NULL when out of memory or an id is
 * not UTF-8) that the node appends to the cluster's event stream, and
 * every node applies the changes in stream order with
 * hr_catalog_apply_change on its node thread. No database is used
 * (persist NULL): the records live in memory, in snapshots and local
 * checkpoints (hr_catalog_each, hr_catalog_clear, hr_catalog_load_record). */

/* {"op":"put","kind":...,"records":[...]}: the records' docs (borrowed). */
char *hr_catalog_change_put(hr_catalog_kind kind, const hr_catalog_record *recs, size_t n);
/* {"op":"delete","kind":...,"id":...}. */
char *hr_catalog_change_delete(hr_catalog_kind kind, const char *id, size_t idlen);
/* {"op":"forget","kind":"user","id":...}. */
char *hr_catalog_change_forget(const char *id, size_t idlen);

/* What hr_catalog_apply_change did. */
typedef struct {
    size_t applied;   /* records written, or 1 for a delete or forget */
    size_t skipped;   /* records that no longer validate or do not fit (full
                         id table, too many categories): left out alike on
                         every node that meets the same error */
    size_t unbound;   /* records left out on a follower: the id is not in its
                         model (the leader could not intern it either) */
    bool found;       /* delete, forget: there was a record */
    bool model;       /* forget on the leader: a model row was freed */
} hr_catalog_applied;

/* Applies one change text in memory. intern (the leader): ids are
 * interned, a forget frees the user's row (hr_model_forget: the next
 * delta carries it); else (a follower, which applies a change only once
 * the delta covering it was applied) ids are only looked up, and a forget
 * clears the record, attributes and recent items of the row the user had.
 * A delete or forget of an absent record is no error (found false).
 * HR_EINVAL for a text that is no change (err says why), HR_ENOMEM. text
 * is borrowed. Writers are serialized as for hr_catalog_put. */
hr_status hr_catalog_apply_change(hr_catalog *c, const char *text, size_t len, bool intern,
                                  hr_catalog_applied *out, hr_error *err);

/* Called for each record, users then items: its canonical text (as
 * stored by hr_catalog_put). Arguments borrowed for the call. */
typedef hr_status (*hr_catalog_record_fn)(void *ctx, hr_catalog_kind kind, const char *id,
                                          size_t idlen, const char *text, size_t len,
                                          hr_error *err);
/* Every record, under the read lock (writers wait); stops at the first
 * status other than HR_OK and returns it. */
hr_status hr_catalog_each(hr_catalog *c, hr_catalog_record_fn fn, void *ctx, hr_error *err);

/* Removes every record (attributes, pins and filter bits go). Call it
 * before a snapshot replaces the model's ids (their rows are found by id;
 * users' also by the row remembered in cluster mode). */
void hr_catalog_clear(hr_catalog *c);

/* Adds a stored record (a snapshot's) to memory without interning its id:
 * left out, *unbound, when the model does not hold the id. HR_EINVAL when it no
 * longer validates; the statuses of hr_catalog_put. text is borrowed. */
hr_status hr_catalog_load_record(hr_catalog *c, hr_catalog_kind kind, const char *id, size_t idlen,
                                 const char *text, size_t len, bool *unbound, hr_error *err);

#endif

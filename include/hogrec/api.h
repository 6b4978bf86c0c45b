/*
 * api.h - JSON <-> structs for the public API. Pure functions (no I/O, no
 * globals), so they can be fuzzed; the only side effect is interning new
 * ids into the model when an event is resolved (hr_api_event_resolve, and
 * hr_api_event_from_json which validates and resolves).
 *
 * Event object: {"user": id, "item": id, "label": 0|1, "rating": number in
 *   [-1e6, 1e6], "weight": number in [0, 1e6], "ts": number,
 *   "features": {field: string|number}, "id": string|integer}. An id is a string of 1..256 bytes or an integer
 * (the same id as its decimal string).
 */
#ifndef HOGREC_API_H
#define HOGREC_API_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hogrec/common.h"
#include "hogrec/event.h"
#include "hogrec/ids.h"
#include "hogrec/model.h"

/* Reads an id value (string or integer) into buf (NUL-terminated, at most
 * HR_ID_MAX_LEN bytes + NUL); *len receives the length. HR_EINVAL with err
 * naming `field` otherwise. v is borrowed. */
hr_status hr_api_id(const json_t *v, const char *field, char *buf, size_t *len, hr_error *err);

/* The ids an event names, kept from validation to resolution: borrowed
 * from the event object (valid while it lives). */
typedef struct {
    const json_t *user; /* a valid id value (string or integer, hr_api_id) */
    const json_t *item; /* likewise */
    const json_t *id;   /* the event id value, NULL if none */
} hr_api_event_refs;

/* Validates one event object into *ev without touching the id tables:
 * label or rating (loss decides which is the target), weight, ts, features
 * (hashed into context rows); ev->user and ev->item stay 0 until
 * hr_api_event_resolve. The bookkeeping fields (seq, enq_*) are zeroed.
 * *refs receives the event's ids (borrowed from obj). The model is only
 * read. HR_EINVAL with err naming the field (an unknown field is named). */
hr_status hr_api_event_parse(const hr_model *m, const json_t *obj, hr_event *ev,
                             hr_api_event_refs *refs, hr_error *err);

/* Resolves a parsed event's ids into ev->user and ev->item: interned,
 * created if new. Admission decides first: an event that is not going to
 * be trained must create no id. HR_EFULL (a table is full) or HR_ENOMEM
 * with err naming "user" or "item" (the user may be created when the item
 * then fails). */
hr_status hr_api_event_resolve(hr_model *m, const hr_api_event_refs *refs, hr_event *ev,
                               hr_error *err);

/* hr_api_event_parse then hr_api_event_resolve: for events that are
 * trained whatever happens (the start-up log replay, `hogrec replay`).
 * obj is borrowed. *event_id (may be NULL) receives the borrowed "id"
 * value or NULL. HR_EINVAL with err naming the field; HR_EFULL if an id
 * table is full. */
hr_status hr_api_event_from_json(hr_model *m, const json_t *obj, hr_event *ev,
                                 const json_t **event_id, hr_error *err);

/* Like hr_api_event_from_json, but creates no ids: user and item are looked
 * up, unknown ones map to the default row 0 and are flagged in *unknown
 * (HR_API_UNKNOWN_*). For held-out data. The model is only read. */
hr_status hr_api_event_lookup(const hr_model *m, const json_t *obj, hr_event *ev,
                              unsigned *unknown, hr_error *err);

/* Canonical compact text of an event object (sorted keys), the form the
 * event log stores. Returns a new string (free()) and its length, or NULL. */
char *hr_api_event_text(const json_t *obj, size_t *len);

/* Splits an NDJSON body of len bytes (not NUL-terminated; NULL when len is
 * 0) into its lines. Each line holding more than blanks (space, tab, CR) is
 * parsed (duplicate keys rejected) and appended to arr; a line that does not
 * parse is appended as JSON null, and {"index": i, "message": "not JSON: ..."}
 * (i counts the non-blank lines from 0; the message is printable ASCII) is
 * appended to errors. arr and errors are borrowed arrays. Returns how many
 * lines parsed. */
size_t hr_api_ndjson_split(const char *body, size_t len, json_t *arr, json_t *errors);

/* Flags of ids a query named but the model does not know. */
enum { HR_API_UNKNOWN_USER = 1u << 0, HR_API_UNKNOWN_ITEM = 1u << 1 };

/* Looks an id up without creating it: its row, or 0 (the default row) with
 * `flag` or-ed into *unknown when absent. */
uint32_t hr_api_lookup(const hr_model *m, hr_table_id t, const char *id, size_t len,
                       unsigned *unknown, unsigned flag);

/* Validates one predict pair {"user", "item", "features"?} into *ev for
 * hr_model_predict, creating nothing: unknown ids resolve to the default row
 * 0 and set HR_API_UNKNOWN_* bits in *unknown. obj is borrowed. HR_EINVAL
 * with err naming the field. */
hr_status hr_api_pair_from_json(const hr_model *m, const json_t *obj, hr_event *ev,
                                unsigned *unknown, hr_error *err);

/* ---- query strings of GET /v1/predict and GET /v1/recommend ---- */

#define HR_API_MAX_K 1000       /* largest k of /v1/recommend */
#define HR_API_MAX_EXCLUDE 1000 /* most ids in exclude= */

/* One query-string parameter as the HTTP layer decoded it (percent-escapes
 * undone): key and value are byte strings of the given lengths, neither
 * necessarily UTF-8 nor free of NUL bytes; value is NULL when the parameter
 * had no '='. Borrowed. */
typedef struct {
    const char *key;
    size_t key_len;
    const char *value; /* NULL: no '=' */
    size_t value_len;
} hr_api_param;

/* Read-your-writes: min_seq (a seq from a 202 of POST /v1/events) and
 * wait_ms (how long to wait for this node to apply it). Both are integers
 * of decimal digits in a query string or JSON integers in a body; in
 * cluster mode min_seq is the 202's entry id instead, "MS-SEQ" (digits,
 * '-', digits; a JSON string in a body), parsed into is_entry. Which form
 * a server takes is the caller's check. */
#define HR_API_MAX_WAIT_MS 60000     /* largest wait_ms the syntax takes (config bounds it lower) */
#define HR_API_DEFAULT_WAIT_MS 100   /* wait_ms when min_seq is given without it */

typedef struct {
    bool given;       /* min_seq was given */
    uint64_t min_seq; /* the seq to wait for (given, not is_entry) */
    int64_t wait_ms;  /* 0..HR_API_MAX_WAIT_MS; -1: not given */
    bool is_entry;    /* min_seq was a stream entry id "MS-SEQ" (the "entry" of a
                         202 in cluster mode): entry_ms, entry_seq */
    uint64_t entry_ms, entry_seq;
} hr_api_wait;

/* Checks a parsed hr_api_wait against the server's limit: wait_ms without
 * min_seq, or above max_wait_ms, is HR_EINVAL naming wait_ms; min_seq
 * above last_seq (the last seq this node ever handed out: it can never be
 * applied) is HR_EINVAL naming min_seq. On HR_OK *wait_ms receives the
 * wait to use: the given one, or min(HR_API_DEFAULT_WAIT_MS, max_wait_ms). */
hr_status hr_api_wait_check(const hr_api_wait *w, uint64_t last_seq, int64_t max_wait_ms,
                            int64_t *wait_ms, hr_error *err);

/* The optional "min_seq" and "wait_ms" members of a JSON object (POST
 * /v1/predict's body): integers >= 0 (wait_ms at most HR_API_MAX_WAIT_MS).
 * obj is borrowed. HR_EINVAL with err naming the member. */
hr_status hr_api_wait_from_json(const json_t *obj, hr_api_wait *out, hr_error *err);

/* GET /v1/predict?user=ID&item=ID[&min_seq=N[&wait_ms=N]], resolved for
 * hr_model_predict. */
typedef struct {
    hr_event ev;      /* user and item rows (0, the default row, for unknown ids) */
    unsigned unknown; /* HR_API_UNKNOWN_* */
    hr_api_wait wait; /* min_seq, wait_ms */
} hr_api_predict_req;

/* Parses and resolves the parameters of GET /v1/predict: user and item
 * (required, 1..HR_ID_MAX_LEN bytes of UTF-8 without NUL, as the ids events
 * name), min_seq and wait_ms (optional, see hr_api_wait; the syntax only,
 * hr_api_wait_check does the rest).
 * An unknown, repeated or empty parameter is an error. Creates nothing; the
 * model is only read. params borrowed for the call. HR_EINVAL with err
 * naming the parameter. */
hr_status hr_api_predict_query(const hr_model *m, const hr_api_param *params, size_t n,
                               hr_api_predict_req *out, hr_error *err);

/* GET /v1/recommend?user=ID&k=N&exclude_seen=BOOL&exclude=ID,ID,...
 *   &categories=A,B&exclude_categories=C */
#define HR_API_MAX_CATEGORIES_PARAM 2200 /* bytes of a categories list, with its NUL */
typedef struct {
    char user[HR_ID_MAX_LEN + 1]; /* the user id as given, NUL-terminated */
    size_t user_len;              /* bytes in user */
    uint32_t user_row;            /* the user's row, 0 if the model does not know it */
    uint32_t k;                   /* items wanted, 1..HR_API_MAX_K (default 10) */
    bool exclude_seen;            /* leave out the user's recent items (default true) */
    size_t nexclude;              /* rows in exclude */
    uint32_t exclude[HR_API_MAX_EXCLUDE]; /* rows of the excluded items the model
                                             knows, in the order named */
    hr_api_wait wait;             /* min_seq, wait_ms */
    char categories[HR_API_MAX_CATEGORIES_PARAM];         /* as given ("" none); catalog.h */
    char exclude_categories[HR_API_MAX_CATEGORIES_PARAM]; /* likewise */
} hr_api_recommend_req;

/* Parses and resolves the parameters of GET /v1/recommend: user (required,
 * as for predict), categories and exclude_categories (1 to
 * HR_API_MAX_CATEGORIES_PARAM - 1 bytes of UTF-8, copied as given; the
 * catalog splits and checks them), k (decimal digits, 1..HR_API_MAX_K), exclude_seen
 * (true, false, 1 or 0), exclude (comma-separated ids of 1..HR_ID_MAX_LEN
 * bytes, at most HR_API_MAX_EXCLUDE; empty entries are skipped, ids the
 * model does not know are dropped), min_seq and wait_ms (as for predict).
 * An unknown, repeated or empty parameter is an error. Creates nothing; the model is only read. params
 * borrowed for the call. HR_EINVAL with err naming the parameter. */
hr_status hr_api_recommend_query(const hr_model *m, const hr_api_param *params, size_t n,
                                 hr_api_recommend_req *out, hr_error *err);

/* Replaces every byte outside printable ASCII in s (NUL-terminated) with '?':
 * text quoted from a client becomes a valid JSON string. */
void hr_api_printable(char *s);

/* The error body {"error": {"code": code, "message": message}}: a new
 * reference (NULL only when out of memory). message is
 * made printable (hr_api_printable) and cut at 511 bytes. */
json_t *hr_api_error_json(const char *code, const char *message);

#endif

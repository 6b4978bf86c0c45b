/*
 * estream.h - the cluster's shared, durable event log on a Redis Stream:
 * what the SQLite event log (evlog.h) is to one process, this is to the
 * nodes of cluster C. Every node appends the events a request accepted;
 * the trainer leader reads them in order; entries every consumer's
 * checkpoint covers are trimmed.
 *
 * Keys (the {C} hash tag keeps them in one slot):
 *   hogrec:{C}:events      the stream; one entry per appended request
 *   hogrec:{C}:events:n    entries ever appended (the last entry's ordinal)
 *   hogrec:{C}:eid:<b>     the ids (hashes, 16 hex digits) first seen in
 *                          window bucket b = floor(Redis time ms / window),
 *                          a set expiring at the end of bucket b + 1
 * An entry's fields: v (format, "1"), k (its ordinal: 1, 2, 3, ... in
 * stream order, never reused), n (events), t (arrival wall time, seconds),
 * ev (the events' canonical JSON texts, hr_api_event_text, joined by '\n';
 * compact JSON never holds a raw newline), ids (n id hashes, 16 lowercase
 * hex digits each, 0000000000000000 for an event without an id).
 * A catalog entry (hr_estream_append_catalog) has v, k, t, n "0" and cat
 * (one catalog change, catalog.h's change text) instead of ev and ids:
 * it takes its place in the same order and ordinals as the events, so
 * every reader meets it between the same two event entries.
 *
 * Append: one Redis round trip per request (one Lua script, atomic): a
 * cluster-wide de-duplication of the events that have an id (an id in the
 * current or the previous bucket's set, or earlier in the same batch, is a
 * duplicate: an id is remembered for at least one window and less than
 * two), then ONE XADD holding only the events that are not duplicates
 * (none when all are), then the new ids are added to the current set. A
 * set per window bucket (SMISMEMBER/SADD, a few commands per request)
 * instead of a key per id (SET NX PX) doubles the append rate
 * (bench_estream). The script writes nothing before the XADD (it checks
 * the ids with reads first), so an error or a refusal (OOM: HR_EFULL)
 * leaves no id claimed and no entry. A bucket's set is freed as a whole
 * when it expires: with large windows and high rates set Redis'
 * lazyfree-lazy-expire yes so that does not stall it.
 * Durability: hr_estream_append returns HR_OK only after Redis answered,
 * i.e. after the entry is in its AOF (appendfsync always: on disk;
 * everysec: in the page cache, on disk within about a second; see
 * hr_redis_check_settings). HR_EIO means nothing was acknowledged: the
 * caller answers 503 and the client resends.
 *
 * A lost reply (the script ran, then the connection broke before the
 * answer arrived): the caller got HR_EIO and answered 503, yet the entry
 * is in the stream and its ids are claimed. The client resends (to this
 * node or another); within the window every id of the resend is a
 * duplicate, so the resend is acknowledged with those events counted as
 * duplicates and no new entry: nothing is applied twice. An event without
 * an id has no such protection: a resend after a lost reply appends it a
 * second time (at-least-once); clients that need exactly-once send ids.
 * The window must exceed the time a client keeps resending.
 *
 * Ids: Redis stream ids "MS-SEQ" (hr_estream_id). The reader hands each
 * entry's ordinal k too: consecutive entries have consecutive ordinals, so
 * a gap (k > the last one seen + 1) tells a consumer that entries it never
 * read were trimmed. hr_estream_backlog counts the entries after an id
 * from the ordinals: two lookups, whatever the stream's length.
 *
 * Connections: an hr_estream holds a small pool of hr_redis connections
 * (options.connections); each call takes one for its round trip, so
 * concurrent appenders are served in parallel and Redis' AOF fsync covers
 * several of them at once. A blocking read holds its connection for up to
 * block_ms: a node that reads and appends gives the reader an hr_estream
 * of its own. A broken connection reconnects with the backoff of redis.h.
 *
 * Threads: every function may be called from any thread at the same time,
 * except create/destroy.
 */
#ifndef HOGREC_ESTREAM_H
#define HOGREC_ESTREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hogrec/common.h"
#include "hogrec/redis.h"

typedef struct hr_estream hr_estream;

/* A stream entry id: milliseconds and a sequence number within them.
 * {0, 0} is "before every entry". */
typedef struct {
    uint64_t ms;
    uint64_t seq;
} hr_estream_id;

/* Room for the text of any id ("MS-SEQ", two 20-digit numbers) and a NUL. */
#define HR_ESTREAM_ID_LEN 44

/* <0, 0, >0 as a is before, equal to, after b in stream order. */
int hr_estream_id_cmp(hr_estream_id a, hr_estream_id b);

/* Writes "MS-SEQ" into buf; returns buf. */
char *hr_estream_id_format(hr_estream_id id, char buf[HR_ESTREAM_ID_LEN]);

/* Parses "MS-SEQ" (decimal, no sign, no blanks, each within uint64) or
 * "MS" alone (seq 0). HR_EINVAL (field "id") otherwise. */
hr_status hr_estream_id_parse(const char *text, hr_estream_id *out, hr_error *err);

/* A cluster name: 1-64 characters of [A-Za-z0-9_.-]. */
#define HR_ESTREAM_CLUSTER_MAX 64

typedef struct {
    const char *cluster;  /* the cluster name C (copied) */
    uint64_t dedup_window_ms; /* an event id is a duplicate this long; 0: no de-duplication */
    int connections;      /* connections in the pool, 1-64 */
} hr_estream_options;

/* Cluster "hogrec", window 24 h, 4 connections. */
void hr_estream_options_defaults(hr_estream_options *opt);

/* Opens the pool: options.connections connections to url (hr_redis_open,
 * ropt NULL = its defaults). *out is new (hr_estream_destroy). HR_EINVAL
 * for bad options or URL; HR_EIO when Redis cannot be reached. Nothing is
 * made on failure. */
hr_status hr_estream_open(const char *url, const hr_redis_options *ropt,
                          const hr_estream_options *opt, hr_estream **out, hr_error *err);

/* Closes the connections. NULL is a no-op. No call may be running. */
void hr_estream_destroy(hr_estream *s);

/* What became of an appended batch. */
typedef struct {
    hr_estream_id id;  /* the entry; {0, 0} when every event was a duplicate */
    uint64_t ordinal;  /* the entry's k; 0 when no entry */
    size_t appended;   /* events in the entry */
    size_t duplicates; /* events dropped as duplicates */
} hr_estream_appended;

/* Appends n events (1 <= n <= 100000) as one entry: text[i] (len[i] bytes,
 * canonical JSON, no '\n') and id_hash[i] (0: no id) are borrowed for the
 * call; arrived is the wall time (seconds) the request arrived at.
 * duplicate (n flags, may be NULL) receives which events were dropped as
 * duplicates. One round trip. Returns HR_OK once Redis acknowledged (out
 * filled; out->id {0, 0} when all were duplicates), or:
 *   HR_EIO    no acknowledgement (connection lost, timeout, Redis down or
 *             reconnecting): answer 503; the entry may exist (see above);
 *   HR_EFULL  Redis is out of memory (maxmemory, noeviction): nothing
 *             written;
 *   HR_EBUSY  Redis is loading, read-only or busy: nothing written;
 *   HR_EINVAL bad arguments (a text holding '\n', n out of range) or an
 *             unexpected Redis error (a key of the wrong type).
 * err says which. */
hr_status hr_estream_append(hr_estream *s, size_t n, const char *const *text, const size_t *len,
                            const uint64_t *id_hash, double arrived, bool *duplicate,
                            hr_estream_appended *out, hr_error *err);

/* Appends a catalog change (text, len bytes, no '\n' needed; 1 byte to
 * 1 MB) as an entry of its own, numbered like an event entry (one script:
 * the ordinal and the XADD). No de-duplication. Returns HR_OK once Redis
 * acknowledged (out->id, out->ordinal; appended and duplicates 0), else
 * the statuses of hr_estream_append. text is borrowed for the call. */
hr_status hr_estream_append_catalog(hr_estream *s, const char *text, size_t len, double arrived,
                                    hr_estream_appended *out, hr_error *err);

/* One entry, as the reader hands it over. Everything is borrowed for the
 * callback only. A catalog entry has n 0 and catalog set. */
typedef struct {
    hr_estream_id id;
    uint64_t ordinal;        /* k: consecutive entries have consecutive ordinals */
    double arrived;          /* wall time of the request, seconds */
    size_t n;                /* events */
    const char *const *text; /* n NUL-terminated canonical JSON texts */
    const size_t *len;       /* their lengths */
    const uint64_t *id_hash; /* n id hashes, 0: none */
    const char *catalog;     /* a catalog entry's change text (NUL-terminated), else NULL */
    size_t catalog_len;      /* its length */
} hr_estream_entry;

/* Called for each entry in stream order. A status other than HR_OK stops
 * the read: the entry does not count as read. */
typedef hr_status (*hr_estream_entry_fn)(void *arg, const hr_estream_entry *e);

/* Reads up to max_entries (1-100000) entries after `after` (XREAD COUNT),
 * waiting up to block_ms (0: no wait; less than the connection's command
 * timeout) for the first when there is none, and calls cb(arg, entry) for
 * each. *last receives the id of the last entry cb accepted (after itself
 * when none) and *count how many (both may be NULL). Returns HR_OK (also
 * when none came), the callback's status when it stopped, HR_ECORRUPT when
 * an entry is not in the format above (err names it; the entries before it
 * were handed over), HR_EIO, HR_EBUSY, HR_EINVAL (bad arguments). */
hr_status hr_estream_read(hr_estream *s, hr_estream_id after, size_t max_entries, int block_ms,
                          hr_estream_entry_fn cb, void *arg, hr_estream_id *last, size_t *count,
                          hr_error *err);

/* Like hr_estream_read, without waiting, for the entries after `after`
 * up to and including `upto` (XRANGE, at most max_entries of them): what
 * a reader that must not pass a given entry reads (a cluster follower's
 * serving state stops at the entry its model covers). HR_OK with none
 * when upto is not after `after`. */
hr_status hr_estream_range(hr_estream *s, hr_estream_id after, hr_estream_id upto,
                           size_t max_entries, hr_estream_entry_fn cb, void *arg,
                           hr_estream_id *last, size_t *count, hr_error *err);

/* Entries after `covered` (the id the leader's model covers; {0, 0}: all),
 * counted from the ordinals: the entries ever appended less the ordinal of
 * the last entry at or before covered (or, when that one was trimmed, the
 * first entry after covered's ordinal - 1; an empty stream counts 0). Two
 * O(log N) lookups in one script. *backlog receives it; HR_EIO, HR_EBUSY,
 * HR_ECORRUPT (an entry without an ordinal). */
hr_status hr_estream_backlog(hr_estream *s, hr_estream_id covered, uint64_t *backlog,
                             hr_error *err);

/* The last entry's id and ordinal ({0, 0} and 0 when none was ever
 * appended or the stream is empty). */
hr_status hr_estream_last(hr_estream *s, hr_estream_id *id, uint64_t *ordinal, hr_error *err);

/* Deletes the entries before min_id (XTRIM MINID, exact): call it with the
 * oldest id every consumer's checkpoint still needs. *removed (may be
 * NULL) receives how many went. */
hr_status hr_estream_trim(hr_estream *s, hr_estream_id min_id, uint64_t *removed, hr_error *err);

/* Entries in the stream now (XLEN). */
hr_status hr_estream_length(hr_estream *s, uint64_t *length, hr_error *err);

#endif

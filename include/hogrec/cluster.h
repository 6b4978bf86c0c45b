/*
 * cluster.h - one node of a hogrec cluster on Redis (`hogrec serve
 * --redis URL`): its role (the trainer leader or a follower), the node
 * thread that plays it, the events path of POST /v1/events, readiness and
 * the GET /v1/cluster report. Built from the Redis blocks: redis (the
 * settings check), lease (leader lease, fencing epoch, membership),
 * estream (the cluster's event stream) and delta (row deltas).
 *
 * Roles. Every node appends the events it is posted to the event stream
 * (hr_cluster_post: one entry per request, de-duplicated cluster-wide,
 * acknowledged by Redis before the 202). The node thread first applies
 * the row deltas already in the delta stream (hogrec:{C}:deltas), then
 * tries to take the lease:
 *   leader    took it (then applies any delta published before its epoch
 *             began, so it starts from exactly what the followers have):
 *             reads the event stream after the entry its model covers (the
 *             last applied delta's, "0-0" at the first start), feeds each
 *             entry's events to its trainers and serving state
 *             (hr_events_replay), and every publish_ms encodes a delta of
 *             the rows changed (hr_delta_encode) whose header names the
 *             last entry all of whose events are trained, published with
 *             the fenced XADD of its epoch. A refused (fenced) write or a
 *             lost lease ends its leadership: it stops reading and
 *             training and is "stepped_down" (not ready; its model holds
 *             training nobody published: restart it).
 *   follower  did not: reads the delta stream (XREAD BLOCK, 100 ms) and
 *             applies each delta whole, its parts in order, once its last
             part came (hr_delta_take: a delta its leader did not finish
             is dropped at a newer epoch's first part or when the node
             takes the lease; older epochs ignored); it never
 *             trains. After each read it brings its serving state up to
 *             the entry its model covers (see "Serving state"). While the
 *             lease is free (the leader stopped or died) it applies the
 *             deltas to the end and tries to take it (at most every
 *             lease_ms / 3).
 * Every second the thread writes its membership heartbeat (role, epoch,
 * lag) and measures its lag for /metrics; every 100 ms it installs the
 * cluster's schedule versions it does not have (hr_cluster_schedule_put).
 *
 * Redis away: every connection reconnects with the backoff of redis.h;
 * POSTs answer 503, queries go on from the model. A leader whose lease
 * lapsed meanwhile takes it back with the same epoch when no node
 * acquired since (hr_lease_reclaim), and followers leave a free lease
 * alone for lease_ms + 2 backoffs after their own last failed call, so
 * the leader gets there first.
 *
 * Serving state (recent items for exclude_seen, popularity for the
 * cold-start fallback, the event ids of hr_events; everything
 * hr_events_replay keeps besides training). The leader applies each entry
 * it reads to it as it feeds the trainers. A follower reads the event
 * stream itself, on the reader connection the leader role uses: after
 * each delta read, the entries after the last one it applied up to the
 * entry its model covers (hr_estream_range) go through hr_events_apply
 * (serving state only, ids looked up, none created: the deltas brought
 * them), numbered by the same counter the leader role uses. Why this and
 * not the serving changes in the deltas: the events cross the same
 * function on every node (one data path, nothing new in the delta format
 * or on the leader, whose cost stays as it was), and a follower's cost is
 * one XRANGE per delta and the parse of each event, of the same order as
 * what it already does per delta row. Stopping at the covered entry keeps
 * both halves of the node at one cut: a follower that takes the lease
 * has the state of exactly that entry and feeds both from the next one;
 * a snapshot is taken only where both are at the covered entry. Entries
 * trimmed before the follower applied them (an ordinal gap) make it
 * bootstrap. Redis away: the read fails, is retried on the next loop from
 * where it stopped (the connection reconnects).
 *
 * Read-your-writes: the entry the model and the serving state cover is a
 * watermark (hr_cluster_applied) that min_seq waits on.
 *
 * Snapshots, trimming, bootstrap. GET /v1/admin/snapshot
 * (hr_cluster_snapshot) has the node thread write its whole model
 * (snapshot.h: the rows and the serving state) at a delta boundary. With
 * delta_retention_ms set, the
 * leader trims the delta stream to the deltas of that many ms before its
 * last one (recording the newest trimmed in hogrec:{C}:deltas_trimmed),
 * and the event stream up to the entry the oldest kept delta covers
 * (recorded first in hogrec:{C}:events_trimmed). A node that finds a delta
 * it needs trimmed (at start, or lagging: a gap hr_delta_apply refuses, or
 * a new epoch's first part after deltas_trimmed moved past what it
 * applied) stops following and bootstraps: it fetches a snapshot from the
 * leader (its membership address; then any other live member) with the
 * admin token (httpc.h), loads it, and follows the deltas after it; not
 * ready until then, retrying with a backoff (200 ms doubling to 5 s).
 * Leadership rule: a node takes the lease only while bootstrapped and
 * with its covered entry at or after events_trimmed, so no node leads a
 * model that misses trimmed events (after a whole-cluster restart with
 * trimmed streams, only a node whose local checkpoint covers that entry).
 *
 * Local checkpoints (db set: the node's own file, a snapshot file, never a
 * standalone database): every checkpoint_interval seconds and at a stop
 * the node thread writes its model at a delta boundary (as for a
 * snapshot) to db.tmp, fsyncs and renames it over db. hr_cluster_open
 * loads it when present and the node follows the deltas after it (or
 * bootstraps when they were trimmed). The leader trims no delta after its
 * own last checkpoint, so a restart from it finds what it needs.
 *
 * Threads: open/start/stop/destroy from the main thread; post, not_ready,
 * snapshot and status_json from HTTP threads; the node thread; the lease's renewal
 * thread (its lost callback only sets a flag).
 */
#ifndef HOGREC_CLUSTER_H
#define HOGREC_CLUSTER_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>

#include "hogrec/common.h"
#include "hogrec/config.h"
#include "hogrec/events.h"
#include "hogrec/model.h"
#include "hogrec/schedule.h"
#include "hogrec/snapshot.h"
#include "hogrec/trainer.h"

typedef struct hr_cluster hr_cluster;

/* What a node works on, all borrowed for the cluster's life. */
typedef struct {
    hr_model *model;
    hr_events *events;
    hr_trainer *trainer;
    hr_schedbox *sched;
    struct hr_catalog *catalog; /* catalog.h: changes applied in stream order; NULL: none */
} hr_cluster_parts;

/* Checks the options cluster mode needs (cfg->redis set): expire_seconds
 * 0 (expiry would run on each node apart), the cluster name and node id.
 * HR_EINVAL naming the option. Pure. */
hr_status hr_cluster_check_config(const hr_config *cfg, hr_error *err);

/* Connects to cfg->redis, runs hr_redis_check_settings and logs its
 * verdict (a REFUSE is HR_EINVAL unless cfg->redis_unsafe, then a
 * warning), opens the event stream's connections (a trimmed delta
 * stream is the node thread's: it bootstraps) and loads the local
 * checkpoint cfg->db when it exists (HR_EINVAL "db" for a file that is
 * not one, e.g. a standalone database; load errors). *out is new (hr_cluster_destroy). HR_EIO when
 * Redis cannot be reached. cfg is read during the call only. */
hr_status hr_cluster_open(const hr_config *cfg, const hr_cluster_parts *parts, hr_cluster **out,
                          hr_error *err);

/* The "host:port" peers reach this node at (for the membership entry);
 * call before hr_cluster_start. */
void hr_cluster_set_address(hr_cluster *c, const char *host, unsigned port);

/* Starts the node thread (see the top). */
hr_status hr_cluster_start(hr_cluster *c, hr_error *err);

/* Stops the node thread (bounded by one Redis command timeout), releases
 * the lease if held and leaves the membership. Idempotent. */
void hr_cluster_stop(hr_cluster *c);

/* Stops and frees. NULL is a no-op. */
void hr_cluster_destroy(hr_cluster *c);

/* POST /v1/events in cluster mode: validates `events` as hr_events_post
 * does (hr_events_post_append: errors, rejected), appends the valid ones
 * with one hr_estream_append and fills *out (accepted, duplicates,
 * rejected) and entry (the entry's id "MS-SEQ", "" when none was
 * appended: every event invalid or a duplicate; cap >= 44). HR_OK only
 * once Redis acknowledged; HR_EIO (Redis unreachable, no answer),
 * HR_EBUSY, HR_EFULL (Redis out of memory) with err: nothing acknowledged
 * (answer 503); HR_EFULL while more entries than max_backlog (when set)
 * are not yet in this node's model: nothing appended (answer 429). */
hr_status hr_cluster_post(hr_cluster *c, const json_t *events, json_t *errors,
                          hr_events_outcome *out, char *entry, size_t cap, hr_error *err);

/* PUT /v1/admin/schedule in cluster mode: stores s (validated by the
 * caller: hr_schedule_from_json, hr_schedule_check_state) in Redis as the
 * cluster's next schedule version (hogrec:{C}:schedule, one script) and
 * installs every newer version on this node before it returns; every other
 * node's thread installs them within about 100 ms. *version gets the
 * version. HR_EIO and the hr_redis statuses when Redis does not answer
 * (nothing changed, or the change is stored and this node installs it on
 * its next look). s is read during the call. Any thread. */
hr_status hr_cluster_schedule_put(hr_cluster *c, const hr_schedule *s, uint64_t *version,
                                  hr_error *err);

/* A catalog write in cluster mode (PUT, bulk POST, DELETE of /v1/items
 * and /v1/users, forgetting a user): appends the change text (catalog.h,
 * hr_catalog_change_*; len bytes, borrowed) to the event stream as an
 * entry of its own (hr_estream_append_catalog). Every node applies it
 * when its model covers that entry (see "Catalog" in cluster.c). HR_OK
 * only once Redis acknowledged; entry (cap >= 44) gets the entry's id for
 * min_seq. HR_EIO, HR_EBUSY (nothing acknowledged: answer 503); HR_EFULL
 * while more entries than max_backlog wait (answer 429). Any thread. */
hr_status hr_cluster_catalog_append(hr_cluster *c, const char *text, size_t len, char *entry,
                                    size_t cap, hr_error *err);

/* Read-your-writes (min_seq = the entry id of a 202): the entry this
 * node's model covers (the last complete delta's: applied by a follower,
 * published by the leader) as a watermark, an entry id "MS-SEQ" packed
 * into 64 bits as MS * 2^20 + SEQ (hr_cluster_entry_pack: SEQ above
 * 2^20 - 1, a million entries in one millisecond, and MS past the year
 * 2500 are clamped, so the packed order may tie but never inverts; the
 * verdict is hr_cluster_covers). Borrowed for the cluster's life; wake
 * it (hr_watermark_wake) to end waits at a stop. */
#define HR_CLUSTER_PACK_SEQ_BITS 20
uint64_t hr_cluster_entry_pack(uint64_t ms, uint64_t seq);
struct hr_watermark *hr_cluster_applied(hr_cluster *c);

/* Whether the model and the serving state cover entry MS-SEQ (the
 * watermark's entry, unpacked); entry (cap bytes, >= 44) gets the entry
 * they cover. Any thread. */
bool hr_cluster_covers(hr_cluster *c, uint64_t ms, uint64_t seq, char *entry, size_t cap);

/* This node's cluster figures for /metrics and /v1/stats (metrics.h). */
typedef struct {
    bool enabled;              /* cluster mode */
    bool leader;               /* the trainer leader now */
    bool ready;                /* hr_cluster_not_ready is NULL */
    uint64_t epoch;            /* held (leader) or of the newest delta applied */
    uint64_t deltas_applied;   /* complete deltas applied (follower) */
    uint64_t deltas_published; /* deltas published (leader) */
    uint64_t lag_entries;      /* event stream entries after the covered one */
    uint64_t lag_ms;           /* the last entry's time less the covered one's (Redis clock) */
    uint64_t redis_errors;     /* failed Redis calls: node thread, appends */
    uint64_t redis_reconnects; /* of the node thread's and the report's connections */
    uint64_t lease_reclaims;   /* the lease taken back with the same epoch (leader) */
} hr_cluster_counts;

/* Fills *out without a Redis call (the lag is the node thread's, measured
 * every second). c NULL (standalone): all zero. Any thread. */
void hr_cluster_get_counts(hr_cluster *c, hr_cluster_counts *out);

/* NULL when ready: a follower that applied the deltas present when it
 * started (and none failed), a leader that holds the lease and read the
 * event stream up to its end at the time it took it. Else why not. The
 * text is static. */
const char *hr_cluster_not_ready(hr_cluster *c);

/* GET /v1/admin/snapshot: asks the node thread for a snapshot of this
 * node's whole model (snapshot.h) at a delta boundary (the leader right
 * after a publish, its trainers idle; a follower between two applied
 * deltas) and waits for it, at most wait_ms. One at a time. On HR_OK,
 * path (cap bytes) names a new temporary file that is the caller's to
 * read and unlink, and *meta says which delta it matches. HR_ESTOPPED:
 * this node cannot give one (not ready, bootstrapping, stopping; answer
 * 409); HR_EBUSY: another snapshot is being taken (429); HR_EIO: no
 * boundary within wait_ms, or the file could not be written (503). err
 * says which. Blocks the calling (HTTP) thread. */
hr_status hr_cluster_snapshot(hr_cluster *c, int wait_ms, char *path, size_t cap,
                              hr_snapshot_meta *meta, hr_error *err);

/* GET /v1/cluster: a new object {"mode":"cluster", "cluster", "node_id",
 * "role", "epoch", "ready", "applied": {"delta", "covered_entry"},
 * "lag": {...}, "members": [...]} (see openapi.yaml). Makes a few Redis
 * calls; what Redis cannot answer is left out and "redis_error" says why. */
json_t *hr_cluster_status_json(hr_cluster *c);

#endif

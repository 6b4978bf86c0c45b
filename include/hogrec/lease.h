/*
 * lease.h - the trainer leader lease of a cluster, its fencing epoch, and
 * node membership, in Redis (one Lua script per step, so each is atomic).
 *
 * Keys of cluster C, all in one Redis Cluster hash slot:
 *   hogrec:{C}:leader   "<node_id> <epoch>", with a PX expiry of ttl_ms
 *   hogrec:{C}:epoch    the last epoch handed out (INCR at each acquisition)
 *   hogrec:{C}:members  hash: node id -> JSON entry (hr_lease_heartbeat)
 *
 * Acquisition takes a free leader key and a new epoch (the fencing token).
 * The holder renews well within ttl_ms; a holder that stops (crashed,
 * paused) loses the key after ttl_ms and the next acquirer gets epoch + 1.
 * Writes that only the leader may make go through a fenced script
 * (hr_lease_fenced_xadd, HR_LEASE_FENCE_LUA): it writes only while the
 * epoch key still equals the writer's epoch, so a paused leader that wakes
 * after a newer one took over cannot publish.
 *
 * Threads: a lease serializes its use of its connection with a lock of its
 * own, so its functions may be called from any thread, including while
 * the renewal thread (hr_lease_start_renewal) runs. The connection it is
 * given is for the lease alone while the lease lives.
 */
#ifndef HOGREC_LEASE_H
#define HOGREC_LEASE_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "hogrec/common.h"
#include "hogrec/redis.h"

/* Longest cluster name and node id, in bytes. Both take letters, digits
 * and . _ - : only. */
#define HR_LEASE_NAME_MAX 64

/* Lua that, placed at the start of a script, returns the error
 * "fenced: epoch <current> is newer than <mine>" (HR_EBUSY through
 * hr_redis_eval) unless the epoch key KEYS[1] equals ARGV[1]; the rest of
 * the script runs only for the current epoch. */
#define HR_LEASE_FENCE_LUA                                                          \
    "local cur = redis.call('GET', KEYS[1]) "                                       \
    "if cur ~= ARGV[1] then return redis.error_reply('fenced: epoch ' .. "         \
    "(cur or 'none') .. ' is newer than ' .. ARGV[1]) end "

typedef struct hr_lease hr_lease;

/* What the leader key says. */
typedef struct {
    bool held;                          /* this node holds the lease */
    char holder[HR_LEASE_NAME_MAX + 1]; /* node id of the holder; "" when free */
    int64_t epoch; /* the holder's epoch; when free, the last epoch handed out */
} hr_lease_state;

/* A lease handle for node node_id in cluster cluster, over r (borrowed
 * for the lease's life, used by it alone). ttl_ms >= 30. *out is new
 * (hr_lease_destroy). HR_EINVAL (field "cluster", "node_id" or "ttl_ms")
 * for bad names or ttl. No Redis call. */
hr_status hr_lease_create(hr_redis *r, const char *cluster, const char *node_id, int ttl_ms,
                          hr_lease **out, hr_error *err);

/* Stops the renewal thread if it runs; does not release the lease (a
 * clean shutdown calls hr_lease_release first). NULL is a no-op. */
void hr_lease_destroy(hr_lease *l);

/* "hogrec:{C}:" (borrowed, lives as long as l): the prefix of the
 * cluster's keys, for other modules' keys in the same hash slot. */
const char *hr_lease_key_prefix(const hr_lease *l);

/* The epoch key "hogrec:{C}:epoch" (borrowed). */
const char *hr_lease_epoch_key(const hr_lease *l);

/* Takes the lease if the leader key is free: out->held, out->epoch the
 * new epoch, and the lease remembers it (renew, release). Otherwise
 * out->held false with the holder and its epoch. A key held under this
 * very node id (a restarted node, a second process) is not taken over:
 * it is reported held by that id, not by this lease. HR_EIO and the
 * hr_redis statuses on failure. */
hr_status hr_lease_acquire(hr_lease *l, hr_lease_state *out, hr_error *err);

/* Extends the lease by ttl_ms if the leader key still holds exactly this
 * lease's "<node_id> <epoch>": out->held. Otherwise it was lost:
 * out->held false, with the current holder and epoch, and the lease
 * forgets its epoch. HR_EINVAL when this lease never acquired. */
hr_status hr_lease_renew(hr_lease *l, hr_lease_state *out, hr_error *err);

/* Takes the lease back with the same epoch after it was counted lost
 * (the renewal thread's callback, Redis unreachable or restarted past the
 * key's expiry): held again (out->held, renewed by ttl_ms) when the leader
 * key still holds "<node_id> <epoch>" or is free while the epoch key still
 * equals `epoch` (no node acquired since, so no other leader existed and
 * the epoch's fenced writes are still this node's). Otherwise out->held
 * false with the holder and the last epoch handed out: another node led
 * since. epoch > 0. HR_EIO and the hr_redis statuses when Redis does not
 * answer (try again). */
hr_status hr_lease_reclaim(hr_lease *l, int64_t epoch, hr_lease_state *out, hr_error *err);

/* Deletes the leader key only if it is this lease's; otherwise changes
 * nothing. *released (may be NULL) says which. */
hr_status hr_lease_release(hr_lease *l, bool *released, hr_error *err);

/* The epoch this lease holds (0 when none). */
int64_t hr_lease_epoch(hr_lease *l);

/* XADD stream argv... (argv: what follows the key: "*" or an id, or
 * "MAXLEN" "~" "N" "*", then field value pairs; lens as for
 * hr_redis_command) only while the epoch key equals epoch, in one script.
 * via: the connection to use (another thread's, so publishing does not
 * wait for a renewal), or NULL for the lease's own (under its lock).
 * id (cap bytes, may be NULL) gets the entry id. HR_EBUSY with
 * "fenced: epoch N is newer than M" when a newer epoch exists. */
hr_status hr_lease_fenced_xadd(hr_lease *l, hr_redis *via, int64_t epoch, const char *stream,
                               int argc, const char **argv, const size_t *lens, char *id,
                               size_t cap, hr_error *err);

/* ---- renewal thread ---- */

/* Called once, on the renewal thread, when the lease is lost: the key
 * holds another value (now: what it holds), or no renewal succeeded
 * within ttl_ms of the last good one (Redis unreachable: now->holder ""
 * and now->epoch 0, since the holder is unknown). It may call the lease's
 * functions except hr_lease_stop_renewal and hr_lease_destroy. */
typedef void (*hr_lease_lost_fn)(void *arg, const hr_lease_state *now);

/* Starts a thread that renews the held lease every ttl_ms / 3 and calls
 * lost(arg, ...) once when it is lost, then ends. HR_EINVAL when the lease
 * is not held or a thread was started and not stopped since (a thread that
 * ended after its callback still needs hr_lease_stop_renewal); HR_ENOMEM/HR_EIO if the thread
 * cannot start. */
hr_status hr_lease_start_renewal(hr_lease *l, hr_lease_lost_fn lost, void *arg, hr_error *err);

/* Stops the renewal thread and waits for it (bounded by one Redis
 * command timeout). No-op when it does not run. Not from the callback. */
void hr_lease_stop_renewal(hr_lease *l);

/* ---- membership ---- */

/* What a node says about itself at each heartbeat. */
typedef struct {
    const char *address; /* where peers reach it ("host:port") */
    const char *role;    /* "leader", "follower", ... */
    int64_t epoch;       /* the epoch it holds or follows */
    int heartbeat_ms;    /* its heartbeat period, > 0; stale after 3 of them */
    const json_t *lag;   /* opaque lag figures (an object), or NULL; borrowed */
} hr_lease_member_info;

/* Writes this node's entry: the info as JSON plus last_seen_ms, the Redis
 * server's clock (one clock for every node). HR_EINVAL for bad info. */
hr_status hr_lease_heartbeat(hr_lease *l, const hr_lease_member_info *info, hr_error *err);

/* Removes this node's entry (clean shutdown). */
hr_status hr_lease_leave(hr_lease *l, hr_error *err);

typedef struct {
    char node_id[HR_LEASE_NAME_MAX + 1];
    json_t *entry;        /* address, role, epoch, heartbeat_ms, last_seen_ms, lag; owned */
    int64_t age_ms;       /* Redis' clock minus last_seen_ms */
    bool stale;           /* age_ms > 3 x its heartbeat_ms */
} hr_lease_member;

/* Every entry, sorted by node id, with its age on the Redis clock. *out is
 * new (hr_lease_members_free); an entry that is not valid JSON is listed
 * stale with entry NULL. */
hr_status hr_lease_members(hr_lease *l, hr_lease_member **out, size_t *n, hr_error *err);

/* Frees a list from hr_lease_members. NULL is a no-op. */
void hr_lease_members_free(hr_lease_member *m, size_t n);

#endif

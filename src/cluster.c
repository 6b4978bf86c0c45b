/*
 * cluster.c - one node of a cluster on Redis: roles, the node thread, the
 * events path, readiness and the status report; see cluster.h.
 *
 * DESIGN. One node thread plays the role, on a connection of its own
 * (`conn`: the follower's XREAD of the delta stream, the leader's fenced
 * XADDs). The leader reads the event stream through `reader` (an estream
 * of one connection, XREAD BLOCK up to the next publish), the HTTP threads
 * append through `append` (a pool), the lease and the heartbeats use
 * `lconn` (under the lease's own lock, shared with its renewal thread),
 * and /v1/cluster reads through `aux` (under aux_mu).
 *
 * Covered entry: the leader numbers the events it feeds (seq, as the
 * start-up log replay does) and keeps, per entry read, the seq of its last
 * event (the `fed` ring). At each publish it first waits until the
 * trainers applied every event it fed (hr_trainer_wait_idle; the node
 * thread is their only feeder, so nothing is trained while it encodes),
 * then names the last entry fed. So the rows a delta carries hold exactly
 * the events up to the entry it names, no later one: a new leader that
 * retrains from that entry on counts no event twice (an earlier version
 * encoded while the trainers ran on, and failover then trained some
 * events twice).
 *
 * Delta stream entries: one per part, field "d" the part's bytes, "c" the
 * event entry the delta covers (also in the part's header: a field of its
 * own so the trimmer reads it without the part), plus "e" epoch and "s"
 * delta number, for people reading the stream. Reads that need only an
 * entry's id or "c" (GET /v1/cluster, the trimmer) run a script that leaves
 * the part on the server (delta_edge). An entry without "c" (an older
 * version's) holds back the event stream's trim until it is trimmed.
 *
 * Snapshots. An HTTP thread asks (snap_state ASKED, snap_asked) and waits
 * on snap_cv, bounded; the node thread answers at its next delta boundary
 * (serve_snapshot: the leader after a publish that left nothing pending
 * and nothing fed, its trainers idle; a follower after a complete delta),
 * writing a temporary file the asker streams and unlinks. An asker that
 * gave up sets snap_abandoned and the node thread removes the file.
 * Bootstrap (bootstrap_step) runs on the node thread instead of following
 * while need_boot is set; the model is written only there, as a delta
 * apply writes it. Gaps: hr_delta_apply refuses a gap within an epoch; a
 * node's first part and a newer epoch's first part are accepted at part 0
 * whatever came before, so before those part_follows compares the
 * deltas_trimmed key with the delta applied.
 *
 * Whole deltas: a follower holds a delta's parts (`held`, hr_delta_take)
 * until its last part, so its model is always at a complete delta; the
 * parts of a delta whose leader died are dropped (a newer epoch's first
 * part, try_lead, a bootstrap). `applied` is the last part read (where
 * XREAD goes on); a snapshot is taken only with nothing held, so its
 * delta is then a last part.
 *
 * Catalog. A catalog write on any node is a change text appended to the
 * event stream as an entry of its own (hr_cluster_catalog_append: durable
 * in Redis before the answer), so the stream holds events and catalog
 * changes in one order, and every node applies each change at its place
 * in that order, on the node thread (apply_catalog): the leader as it
 * feeds entries, after waiting until its trainers applied every event fed
 * before the change (so the events before it train with the old record,
 * the ones after with the new one: the order a new leader replaying the
 * same entries reproduces), interning ids (its deltas carry them; a
 * forget frees the user's row, which the next delta carries); a follower
 * in serve_follow, after the delta covering the change, with ids looked up
 * (the delta brought them) and the row contents from the delta. So the
 * catalog of every node is at its covered entry, the same cut as its model
 * and serving state: a snapshot or local checkpoint at a delta boundary
 * writes the records into the same file (hr_snapshot_write_catalog) and a
 * bootstrap or restart loads them with the rows, then applies the changes
 * after the covered entry like any follower. Where the order matters:
 * training (attributes enter each event: the leader's wait), row reuse
 * (a row freed by a forget is reused only after it in stream order, so a
 * follower clears the forgotten row's attributes and recent items at the
 * forget entry without touching its next holder's, which come after), and
 * filters (hidden, categories) being the same on every node at the same
 * covered entry. Standalone mode is untouched (catalog.c writes SQLite).
 *
 * Shared state (role, ids, reasons) is under `mu`; the node thread is its
 * only writer apart from `lost` (atomic, set by the renewal thread).
 */
#include "hogrec/cluster.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "hogrec/api.h"
#include "hogrec/catalog.h"
#include "hogrec/delta.h"
#include "hogrec/estream.h"
#include "hogrec/httpc.h"
#include "hogrec/lease.h"
#include "hogrec/log.h"
#include "hogrec/redis.h"
#include "hogrec/sgd.h"
#include "hogrec/watermark.h"
#include "hogrec/snapshot.h"

#define HEARTBEAT_MS 1000       /* membership heartbeat period */
#define FOLLOW_BLOCK_MS 100     /* a follower's XREAD BLOCK */
#define FOLLOW_COUNT "64"       /* delta parts per XREAD */
#define READ_ENTRIES 256        /* event entries per leader read */
#define PART_BYTES (4u << 20)   /* largest delta part (one stream entry) */
#define RETRY_MS 50             /* pause after a failed Redis call */
#define SCHEDULE_POLL_MS 100    /* the node thread looks for schedule changes */
#define BOOT_BACKOFF_MIN_MS 200 /* bootstrap retries: first pause, doubling... */
#define BOOT_BACKOFF_MAX_MS 5000 /* ...up to this */
#define TRIM_EVERY_MS 1000      /* the leader trims at most this often (or retention / 2) */

typedef enum { ROLE_STARTING, ROLE_FOLLOWER, ROLE_LEADER, ROLE_STEPPED_DOWN } role_t;

static const char *role_name(role_t r)
{
    switch (r) {
    case ROLE_STARTING: return "starting";
    case ROLE_FOLLOWER: return "follower";
    case ROLE_LEADER: return "leader";
    case ROLE_STEPPED_DOWN: return "stepped_down";
    }
    return "unknown";
}

/* An entry the leader fed: the seq of its last event and its id. */
typedef struct {
    uint64_t last_seq;
    hr_estream_id id;
} fed_entry;

struct hr_cluster {
    hr_cluster_parts p;
    char name[HR_LEASE_NAME_MAX + 1];    /* cluster name */
    char node_id[HR_LEASE_NAME_MAX + 1];
    char address[96];                    /* host:port for the membership entry */
    char deltas_key[160];                /* hogrec:{C}:deltas */
    char sched_key[160];                 /* hogrec:{C}:schedule (hash: version, N -> JSON) */
    int publish_ms, lease_ms;
    int64_t max_backlog;                 /* 0: no bound */
    hr_redis *conn;        /* the node thread's */
    hr_redis *lconn;       /* the lease's */
    hr_redis *aux;         /* /v1/cluster's, under aux_mu */
    pthread_mutex_t aux_mu;
    hr_lease *lease;
    hr_watermark *covered_wm;  /* the covered entry, packed (hr_cluster_entry_pack) */
    hr_estream *append;    /* POST /v1/events */
    hr_estream *reader;    /* the leader's XREAD of the event stream */
    pthread_t thread;
    bool started;
    atomic_bool stop;
    atomic_bool lost;      /* the renewal thread saw the lease lost */
    atomic_uint_fast64_t redis_errors; /* failed Redis calls (node thread, appends) */

    pthread_mutex_t mu;    /* guards the fields down to the next comment */
    role_t role;
    int64_t epoch;         /* held (leader) or of the newest delta applied */
    char leader[HR_LEASE_NAME_MAX + 1]; /* holder last seen ("" unknown) */
    bool target_known;     /* delta_target read at start */
    hr_estream_id delta_target;  /* the delta stream's last id at start */
    hr_estream_id applied;       /* last delta part applied (or published) */
    hr_estream_id covered;       /* entry the model covers (last complete delta) */
    hr_estream_id ryw;           /* entry model and serving state cover (note_covered) */
    hr_estream_id read_after;    /* leader: last entry read */
    hr_estream_id events_target; /* leader: the event stream's last id when it took over */
    const char *broken;          /* why the delta stream cannot be followed; NULL */
    char broken_detail[256];
    uint64_t deltas_applied, deltas_published, delta_bytes, events_fed;
    uint64_t lag_entries, lag_ms;  /* measured by the node thread (measure_lag) */
    uint64_t reconnects;           /* of conn and aux, as the node thread last saw */

    /* node thread only */
    hr_delta_state dst;
    hr_delta_parts held;    /* follower: parts of a delta whose last part has not come */
    hr_delta_buf buf;
    size_t part_next;       /* pending delta: next part to send (< buf.nparts) */
    bool pending;
    hr_estream_id pend_covered;
    uint64_t dseq;          /* last delta number published in this epoch */
    uint64_t seq;           /* seq of the last event fed */
    uint64_t seq0, done0;   /* at taking the lease: seq and the trainers' applied count */
    fed_entry *fed;         /* ring of entries fed and not yet covered */
    size_t fed_head, fed_n, fed_cap;
    hr_event *evs;          /* feed buffers */
    uint64_t *ids;
    double *arrived;
    size_t feed_cap;
    uint64_t skipped;       /* events of the stream that could not be parsed */
    uint64_t redis_fail_ms; /* when a call of the node thread last failed (now_ms; 0 never) */
    uint64_t reclaims;      /* leader: times it took its lease back (same epoch) */
    uint64_t last_err_ns;   /* rate limit of error logs */

    /* Snapshots, bootstrap and trimming (see "Snapshots" above). */
    char admin_token[HR_CONFIG_STR]; /* to fetch a peer's snapshot ("" cannot) */
    int64_t retention_ms;            /* delta_retention_ms; 0: the leader never trims */
    char trimmed_key[160];           /* hogrec:{C}:events_trimmed */
    char dtrimmed_key[160];          /* hogrec:{C}:deltas_trimmed */
    pthread_mutex_t snap_mu;         /* guards the snap_ fields */
    pthread_cond_t snap_cv;          /* snap_state left SNAP_ASKED (monotonic clock) */
    int snap_state;                  /* SNAP_IDLE, SNAP_ASKED, SNAP_DONE */
    bool snap_abandoned;             /* the asker gave up: the node thread unlinks the file */
    atomic_bool snap_asked;          /* snap_state == SNAP_ASKED, read without the lock */
    char snap_path[512];             /* the file written (SNAP_DONE, HR_OK) */
    hr_status snap_st;
    hr_error snap_err;
    hr_snapshot_meta snap_meta;
    /* under mu: */
    bool need_boot;                  /* cannot follow: waits for a snapshot */
    char boot_why[256];              /* why (for /readyz and the logs) */
    uint64_t bootstraps;             /* snapshots loaded */
    uint64_t snapshots_served;
    /* node thread only: */
    uint64_t next_boot_ms;           /* next bootstrap attempt (now_ms) */
    int boot_backoff_ms;
    uint64_t next_trim_ms;
    hr_estream_id events_trimmed;    /* the last trim point this leader set */

    /* The serving state (see "Serving state" above); node thread only. */
    hr_estream_id served;            /* last event entry applied to it */
    uint64_t served_ord;             /* its ordinal (served_ord_known) */
    bool served_ord_known;           /* false after a snapshot: no gap check on the next */

    /* Local checkpoints (--db PATH; see "Local checkpoints" above). */
    char ckpt_path[HR_CONFIG_STR];   /* "" none */
    double ckpt_every;               /* checkpoint_interval, seconds; 0: only at a stop */
    uint64_t next_ckpt_ms;           /* node thread: next checkpoint (now_ms) */
    hr_estream_id ckpt_delta;        /* the delta the last one written matches (node thread) */
    bool ckpt_have;                  /* one was written or loaded */
};

/* ---- small helpers ---- */

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static uint64_t now_ms(void) { return hr_now_ns() / 1000000u; }

static bool name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > HR_LEASE_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '_' || ch == '-'))
            return false;
    }
    return true;
}

/* Logs a failed Redis call at most once a second. */
static void log_redis_error(hr_cluster *c, const char *what, hr_status st, const hr_error *err)
{
    uint64_t now = hr_now_ns();
    c->redis_fail_ms = now / 1000000u;
    atomic_fetch_add(&c->redis_errors, 1);
    if (now - c->last_err_ns < 1000000000ull && c->last_err_ns)
        return;
    c->last_err_ns = now;
    hr_log("warn", what, json_pack("{s:s,s:s}", "status", hr_status_to_string(st), "detail",
                                   err->message));
}

static json_t *id_json(hr_estream_id id)
{
    char b[HR_ESTREAM_ID_LEN];
    return json_string(hr_estream_id_format(id, b));
}

/* ---- config and open ---- */

hr_status hr_cluster_check_config(const hr_config *cfg, hr_error *err)
{
    if (cfg->expire_seconds > 0)
        return hr_error_set(err, HR_EINVAL, "expire_seconds",
                            "id expiry is not supported in cluster mode yet: set it to 0");
    if (!name_ok(cfg->cluster))
        return hr_error_set(err, HR_EINVAL, "cluster",
                            "the cluster name is 1-64 of A-Z a-z 0-9 . _ -");
    if (cfg->node_id[0] && !name_ok(cfg->node_id))
        return hr_error_set(err, HR_EINVAL, "node_id", "a node id is 1-64 of A-Z a-z 0-9 . _ -");
    return HR_OK;
}

/* HOSTNAME-PID with what a node id cannot hold replaced by '-'. */
static void default_node_id(char *out, size_t cap)
{
    char host[64] = "node";
    if (gethostname(host, sizeof host) != 0)
        snprintf(host, sizeof host, "node");
    host[sizeof host - 1] = 0;
    host[40] = 0;
    for (char *p = host; *p; p++)
        if (!name_ok((char[]){*p, 0}))
            *p = '-';
    snprintf(out, cap, "%s-%ld", host, (long)getpid());
}

/* The newest entry trimming deleted from the delta stream ({0, 0} when
 * none): the deltas_trimmed key the leader's trimmer sets before each
 * XTRIM (Redis' own XINFO max-deleted-entry-id counts XDEL only, not
 * trimming). Read on connection r (the caller's to hold). */
static hr_status deltas_max_deleted(hr_cluster *c, hr_redis *r, hr_estream_id *out, hr_error *err)
{
    *out = (hr_estream_id){0, 0};
    redisReply *rep = NULL;
    hr_status st = hr_redis_call(r, &rep, err, "GET", c->dtrimmed_key, NULL);
    if (st != HR_OK)
        return st;
    if (rep->type == REDIS_REPLY_STRING)
        st = hr_estream_id_parse(rep->str, out, err);
    freeReplyObject(rep);
    return st;
}

/* Takes the delta bits of a model nothing trained yet: its rows are what
 * the seed and the options make them on every node alike (model.c fills a
 * row from the seed, table and row alone), so the first delta of a leader
 * carries only what it changed, not the initial context table (2^context_bits
 * rows). */
static void forget_initial_marks(hr_model *m)
{
    const unsigned bits = HR_MARK_DELTA | HR_MARK_ID;
    for (int t = 0; t < HR_TABLE_COUNT; t++) {
        uint32_t groups = hr_model_mark_groups(m, (hr_table_id)t);
        uint32_t rows = hr_model_rows(m, (hr_table_id)t);
        for (uint32_t g = 0; g < groups; g++) {
            if (!hr_model_take_group_mark(m, (hr_table_id)t, g, bits))
                continue;
            for (uint32_t r = g * HR_MARK_GROUP_ROWS; r < (g + 1) * HR_MARK_GROUP_ROWS && r < rows;
                 r++)
                hr_model_take_mark(m, (hr_table_id)t, r, bits);
        }
    }
}

static void snap_init(hr_cluster *c, const hr_config *cfg);
static hr_status write_catalog(hr_cluster *c, const char *path, hr_error *err);
static hr_status load_catalog(hr_cluster *c, const char *path, hr_error *err);
static hr_status load_local(hr_cluster *c, hr_error *err);
static void adopt_snapshot(hr_cluster *c, const hr_snapshot_meta *meta, hr_estream_id d,
                           hr_estream_id cov);

hr_status hr_cluster_open(const hr_config *cfg, const hr_cluster_parts *parts, hr_cluster **out,
                          hr_error *err)
{
    *out = NULL;
    hr_status st = hr_cluster_check_config(cfg, err);
    if (st != HR_OK)
        return st;
    hr_cluster *c = calloc(1, sizeof *c);
    if (!c)
        return hr_error_set(err, HR_ENOMEM, NULL, "out of memory");
    c->p = *parts;
    pthread_mutex_init(&c->mu, NULL);
    pthread_mutex_init(&c->aux_mu, NULL);
    snprintf(c->name, sizeof c->name, "%.64s", cfg->cluster);
    if (cfg->node_id[0])
        snprintf(c->node_id, sizeof c->node_id, "%.64s", cfg->node_id);
    else
        default_node_id(c->node_id, sizeof c->node_id);
    c->publish_ms = (int)cfg->publish_ms;
    c->lease_ms = (int)cfg->lease_ms;
    c->max_backlog = cfg->max_backlog;
    c->role = ROLE_STARTING;
    snap_init(c, cfg);

    if ((st = hr_watermark_create(&c->covered_wm)) != HR_OK) {
        hr_error_set(err, st, NULL, "out of memory");
        goto fail;
    }
    if ((st = hr_redis_open(cfg->redis, NULL, &c->conn, err)) != HR_OK)
        goto fail;
    hr_redis_settings set;
    if ((st = hr_redis_check_settings(c->conn, false, &set, err)) != HR_OK)
        goto fail;
    bool refuse = set.verdict == HR_REDIS_SETTINGS_REFUSE;
    hr_log(refuse && !cfg->redis_unsafe ? "error" : set.verdict == HR_REDIS_SETTINGS_OK ? "info"
                                                                                        : "warn",
           "redis settings",
           json_pack("{s:s,s:s,s:s,s:s,s:s,s:s}", "redis", hr_redis_address(c->conn), "verdict",
                     hr_redis_verdict_to_string(set.verdict), "appendonly", set.appendonly,
                     "appendfsync", set.appendfsync, "maxmemory_policy", set.maxmemory_policy,
                     "detail", set.message));
    if (refuse && !cfg->redis_unsafe) {
        st = hr_error_set(err, HR_EINVAL, "redis",
                          "Redis' settings can lose acknowledged events (%s); fix them, or start "
                          "with --redis-unsafe 1 to run anyway",
                          set.message);
        goto fail;
    }
    if ((st = hr_redis_open(cfg->redis, NULL, &c->lconn, err)) != HR_OK ||
        (st = hr_redis_open(cfg->redis, NULL, &c->aux, err)) != HR_OK ||
        (st = hr_lease_create(c->lconn, c->name, c->node_id, c->lease_ms, &c->lease, err)) !=
            HR_OK)
        goto fail;
    snprintf(c->deltas_key, sizeof c->deltas_key, "%sdeltas", hr_lease_key_prefix(c->lease));
    snprintf(c->sched_key, sizeof c->sched_key, "%sschedule", hr_lease_key_prefix(c->lease));
    snprintf(c->trimmed_key, sizeof c->trimmed_key, "%sevents_trimmed",
             hr_lease_key_prefix(c->lease));
    snprintf(c->dtrimmed_key, sizeof c->dtrimmed_key, "%sdeltas_trimmed",
             hr_lease_key_prefix(c->lease));
    hr_estream_options eo;
    hr_estream_options_defaults(&eo);
    eo.cluster = c->name;
    eo.dedup_window_ms = (uint64_t)(cfg->dedup_window * 1000.0);
    eo.connections = cfg->http_threads < 2 ? 2 : cfg->http_threads > 64 ? 64 : (int)cfg->http_threads;
    if ((st = hr_estream_open(cfg->redis, NULL, &eo, &c->append, err)) != HR_OK)
        goto fail;
    eo.connections = 1;
    if ((st = hr_estream_open(cfg->redis, NULL, &eo, &c->reader, err)) != HR_OK)
        goto fail;
    c->seq = hr_events_seq(c->p.events);
    c->served_ord_known = true; /* the stream's first entry is ordinal 1 */
    forget_initial_marks(c->p.model);
    snprintf(c->ckpt_path, sizeof c->ckpt_path, "%s", cfg->db);
    c->ckpt_every = cfg->checkpoint_interval;
    c->next_ckpt_ms = now_ms() + (uint64_t)(c->ckpt_every * 1000.0);
    if (c->ckpt_path[0] && (st = load_local(c, err)) != HR_OK)
        goto fail;
    *out = c;
    return HR_OK;
fail:
    hr_cluster_destroy(c);
    return st;
}

void hr_cluster_set_address(hr_cluster *c, const char *host, unsigned port)
{
    pthread_mutex_lock(&c->mu);
    snprintf(c->address, sizeof c->address, "%s:%u", host, port);
    pthread_mutex_unlock(&c->mu);
}

/* ---- read-your-writes: the covered entry as a watermark ---- */

uint64_t hr_cluster_entry_pack(uint64_t ms, uint64_t seq)
{
    const uint64_t seq_max = (1ull << HR_CLUSTER_PACK_SEQ_BITS) - 1;
    const uint64_t ms_max = (1ull << (64 - HR_CLUSTER_PACK_SEQ_BITS)) - 1;
    return (ms > ms_max ? ms_max : ms) << HR_CLUSTER_PACK_SEQ_BITS | (seq > seq_max ? seq_max : seq);
}

/* Publishes the entry the model and the serving state now cover to the
 * min_seq waiters (and to hr_cluster_covers' verdict). */
static void note_covered(hr_cluster *c, hr_estream_id covered)
{
    pthread_mutex_lock(&c->mu);
    if (hr_estream_id_cmp(covered, c->ryw) > 0)
        c->ryw = covered;
    pthread_mutex_unlock(&c->mu);
    hr_watermark_publish(c->covered_wm, hr_cluster_entry_pack(covered.ms, covered.seq));
}

hr_watermark *hr_cluster_applied(hr_cluster *c)
{
    return c->covered_wm;
}

bool hr_cluster_covers(hr_cluster *c, uint64_t ms, uint64_t seq, char *entry, size_t cap)
{
    pthread_mutex_lock(&c->mu);
    hr_estream_id cov = c->ryw;
    pthread_mutex_unlock(&c->mu);
    char b[HR_ESTREAM_ID_LEN];
    snprintf(entry, cap, "%s", hr_estream_id_format(cov, b));
    return cov.ms > ms || (cov.ms == ms && cov.seq >= seq);
}

/* ---- snapshots, bootstrap, trimming ---- */

enum { SNAP_IDLE, SNAP_ASKED, SNAP_DONE };

static void snap_init(hr_cluster *c, const hr_config *cfg)
{
    snprintf(c->admin_token, sizeof c->admin_token, "%s", cfg->admin_token);
    c->retention_ms = cfg->delta_retention_ms;
    pthread_mutex_init(&c->snap_mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* hr_deadline_after's clock */
    pthread_cond_init(&c->snap_cv, &ca);
    pthread_condattr_destroy(&ca);
}

static void snap_fini(hr_cluster *c)
{
    pthread_mutex_destroy(&c->snap_mu);
    pthread_cond_destroy(&c->snap_cv);
}

/* The directory of temporary snapshot files. */
static const char *tmp_dir(void)
{
    const char *d = getenv("TMPDIR");
    return d && d[0] ? d : "/tmp";
}

/* A new empty temporary file; its path in path. false (logged) when none. */
static bool tmp_file(char *path, size_t cap)
{
    snprintf(path, cap, "%s/hogrec-snapshot-XXXXXX", tmp_dir());
    int fd = mkstemp(path);
    if (fd < 0) {
        hr_log("error", "cannot create a temporary snapshot file",
               json_pack("{s:s,s:s}", "path", path, "detail", strerror(errno)));
        return false;
    }
    close(fd);
    return true;
}

/* This node cannot follow the delta stream from what it applied: it stops
 * following (and may not lead) until a snapshot is loaded. Node thread. */
static void want_bootstrap(hr_cluster *c, const char *why)
{
    pthread_mutex_lock(&c->mu);
    bool was = c->need_boot;
    c->need_boot = true;
    snprintf(c->boot_why, sizeof c->boot_why, "%.*s", (int)sizeof c->boot_why - 1, why);
    pthread_mutex_unlock(&c->mu);
    if (was)
        return;
    c->next_boot_ms = 0;
    c->boot_backoff_ms = 0;
    hr_log("warn", "cannot follow the delta stream: bootstrapping from a peer's snapshot",
           json_pack("{s:s}", "reason", why));
}

/* Before applying a delta part that hr_delta_apply cannot tell apart from
 * one that follows (this node's first part, or the first of a newer epoch:
 * both are taken at part 0): whether deltas after the last one applied
 * were trimmed (deltas_max_deleted). false when the part must
 * not be applied: the node then bootstraps, or Redis failed (logged; the
 * caller reads again). */
static bool part_follows(hr_cluster *c, const redisReply *fields)
{
    uint64_t e = UINT64_MAX;
    for (size_t j = 0; fields->type == REDIS_REPLY_ARRAY && j + 1 < fields->elements; j += 2)
        if (fields->element[j]->type == REDIS_REPLY_STRING && !strcmp(fields->element[j]->str, "e") &&
            fields->element[j + 1]->type == REDIS_REPLY_STRING)
            e = strtoull(fields->element[j + 1]->str, NULL, 10);
    if (c->dst.started && e <= c->dst.epoch)
        return true;
    hr_estream_id del, applied;
    hr_error err = {{0}, {0}};
    hr_status st = deltas_max_deleted(c, c->conn, &del, &err);
    if (st != HR_OK) {
        log_redis_error(c, "cannot read the delta stream's trimming", st, &err);
        sleep_ms(RETRY_MS);
        return false;
    }
    pthread_mutex_lock(&c->mu);
    applied = c->applied;
    pthread_mutex_unlock(&c->mu);
    if (hr_estream_id_cmp(del, applied) <= 0)
        return true;
    char b1[HR_ESTREAM_ID_LEN], b2[HR_ESTREAM_ID_LEN], why[160];
    snprintf(why, sizeof why, "the delta stream was trimmed up to %s, past the delta applied (%s)",
             hr_estream_id_format(del, b1), hr_estream_id_format(applied, b2));
    want_bootstrap(c, why);
    return false;
}

/* Answers a pending snapshot request with a refusal (HR_ESTOPPED: this
 * node cannot give one now). */
static void refuse_snapshot(hr_cluster *c, const char *why)
{
    if (!atomic_load(&c->snap_asked))
        return;
    pthread_mutex_lock(&c->snap_mu);
    if (c->snap_state == SNAP_ASKED) {
        atomic_store(&c->snap_asked, false);
        if (c->snap_abandoned) {
            c->snap_abandoned = false;
            c->snap_state = SNAP_IDLE;
        } else {
            c->snap_state = SNAP_DONE;
            c->snap_st = hr_error_set(&c->snap_err, HR_ESTOPPED, NULL, "%s", why);
            pthread_cond_broadcast(&c->snap_cv);
        }
    }
    pthread_mutex_unlock(&c->snap_mu);
}

/* At a delta boundary of the node thread (the leader right after a
 * publish, its trainers idle and nothing fed; a follower between applied
 * deltas): answers a pending snapshot request with a file of the model as
 * the last delta applied or published left it. */
/* Whether the node thread is at a delta boundary where its model and
 * serving state may be written (see serve_snapshot); *meta (zeroed by the
 * caller) then says which delta they match. */
static bool at_boundary(hr_cluster *c, hr_snapshot_meta *meta)
{
    pthread_mutex_lock(&c->mu);
    role_t role = c->role;
    hr_estream_id_format(c->applied, meta->delta);
    hr_estream_id_format(c->covered, meta->covered);
    if (role == ROLE_LEADER && c->dseq > 0) { /* its own last delta */
        meta->started = true;
        meta->epoch = (uint64_t)c->epoch;
        meta->seq = c->dseq;
    } else {
        meta->started = c->dst.started;
        meta->epoch = c->dst.epoch;
        meta->seq = c->dst.seq;
    }
    bool boundary = role == ROLE_LEADER ? !c->pending && c->fed_n == 0 &&
                                              (c->dseq > 0 || !c->dst.started || c->dst.complete)
                                        : (!c->dst.started || c->dst.complete) &&
                                              c->held.nparts == 0; /* applied: a last part */
    /* the serving state at the same entry (a follower's may lag a read) */
    boundary = boundary && hr_estream_id_cmp(c->served, c->covered) == 0;
    boundary = boundary && (role == ROLE_LEADER || role == ROLE_FOLLOWER) && !c->need_boot &&
               !c->broken;
    pthread_mutex_unlock(&c->mu);
    if (!boundary)
        return false;
    meta->schedule_version = hr_schedbox_current(c->p.sched)->version;
    meta->taken = hr_wall_time();
    return true;
}

static void serve_snapshot(hr_cluster *c)
{
    if (!atomic_load(&c->snap_asked))
        return;
    hr_snapshot_meta meta = {0};
    if (!at_boundary(c, &meta))
        return; /* the next boundary */
    char path[512];
    hr_error err = {{0}, {0}};
    hr_snapshot_stats ss = {0};
    hr_status st = HR_EIO;
    if (!tmp_file(path, sizeof path))
        hr_error_set(&err, HR_EIO, NULL, "cannot create a temporary file in %s", tmp_dir());
    else if ((st = hr_snapshot_write(path, c->p.model, c->p.sched, c->p.events, &meta, &ss,
                                     &err)) != HR_OK ||
             (st = write_catalog(c, path, &err)) != HR_OK)
        unlink(path);
    hr_log(st == HR_OK ? "info" : "error", st == HR_OK ? "snapshot taken" : "snapshot failed",
           json_pack("{s:s,s:s,s:I,s:I,s:f,s:s}", "delta", meta.delta, "covered_entry",
                     meta.covered, "rows", (json_int_t)ss.rows, "bytes", (json_int_t)ss.bytes,
                     "seconds", ss.seconds, "detail", st == HR_OK ? "" : err.message));
    pthread_mutex_lock(&c->snap_mu);
    atomic_store(&c->snap_asked, false);
    if (c->snap_abandoned) {
        if (st == HR_OK)
            unlink(path);
        c->snap_abandoned = false;
        c->snap_state = SNAP_IDLE;
    } else {
        c->snap_state = SNAP_DONE;
        c->snap_st = st;
        c->snap_err = err;
        c->snap_meta = meta;
        snprintf(c->snap_path, sizeof c->snap_path, "%s", path);
        pthread_cond_broadcast(&c->snap_cv);
    }
    pthread_mutex_unlock(&c->snap_mu);
    if (st == HR_OK) {
        pthread_mutex_lock(&c->mu);
        c->snapshots_served++;
        pthread_mutex_unlock(&c->mu);
    }
}

/* ---- local checkpoints ---- */

/* fsync of path (a file or a directory); false with errno on failure. */
static bool sync_path(const char *path, bool dir)
{
    int fd = open(path, (dir ? O_RDONLY | O_DIRECTORY : O_RDWR) | O_CLOEXEC);
    if (fd < 0)
        return false;
    bool ok = fsync(fd) == 0;
    int e = errno;
    close(fd);
    errno = e;
    return ok;
}

/* Writes the model to ckpt_path at a delta boundary, at most every
 * ckpt_every seconds (force: now, at a stop): a snapshot file written as
 * PATH.tmp, fsynced, renamed over PATH, and the directory fsynced, so PATH
 * is always a whole checkpoint. Node thread (or the stopping thread once
 * the node thread ended). Logged; a failure is retried at the next time. */
static void local_checkpoint(hr_cluster *c, bool force)
{
    if (!c->ckpt_path[0] || (!force && (c->ckpt_every <= 0 || now_ms() < c->next_ckpt_ms)))
        return;
    hr_snapshot_meta meta = {0};
    if (!at_boundary(c, &meta))
        return; /* the next boundary */
    c->next_ckpt_ms = now_ms() + (uint64_t)(c->ckpt_every * 1000.0);
    hr_estream_id d = {0, 0};
    if (hr_estream_id_parse(meta.delta, &d, NULL) == HR_OK && c->ckpt_have &&
        hr_estream_id_cmp(d, c->ckpt_delta) == 0)
        return; /* the file already holds this delta */
    char tmp[HR_CONFIG_STR + 8], dir[HR_CONFIG_STR];
    snprintf(tmp, sizeof tmp, "%s.tmp", c->ckpt_path);
    snprintf(dir, sizeof dir, "%s", c->ckpt_path);
    char *slash = strrchr(dir, '/');
    if (slash)
        slash[slash == dir ? 1 : 0] = 0;
    else
        snprintf(dir, sizeof dir, ".");
    unlink(tmp);
    hr_error err = {{0}, {0}};
    hr_snapshot_stats ss = {0};
    hr_status st = hr_snapshot_write(tmp, c->p.model, c->p.sched, c->p.events, &meta, &ss, &err);
    if (st == HR_OK)
        st = write_catalog(c, tmp, &err);
    if (st == HR_OK && (!sync_path(tmp, false) || rename(tmp, c->ckpt_path) != 0 ||
                        !sync_path(dir, true)))
        st = hr_error_set(&err, HR_EIO, "db", "%s: %s", c->ckpt_path, strerror(errno));
    if (st != HR_OK) {
        unlink(tmp);
        hr_log("error", "local checkpoint failed",
               json_pack("{s:s,s:s,s:s}", "path", c->ckpt_path, "status", hr_status_to_string(st),
                         "detail", err.message));
        return;
    }
    c->ckpt_delta = d;
    c->ckpt_have = true;
    hr_log("info", "local checkpoint",
           json_pack("{s:s,s:s,s:s,s:I,s:I,s:f}", "path", c->ckpt_path, "delta", meta.delta,
                     "covered_entry", meta.covered, "rows", (json_int_t)ss.rows, "bytes",
                     (json_int_t)ss.bytes, "seconds", ss.seconds));
}

/* At open: loads the local checkpoint at ckpt_path when there is one (an
 * absent or empty file: none, the node starts empty). A file that is not a
 * cluster node's checkpoint (a standalone database) is refused. */
static hr_status load_local(hr_cluster *c, hr_error *err)
{
    struct stat sb;
    if (stat(c->ckpt_path, &sb) != 0 || sb.st_size == 0)
        return HR_OK;
    hr_snapshot_meta meta;
    hr_error e2 = {{0}, {0}};
    hr_status st = hr_snapshot_read_meta(c->ckpt_path, &meta, &e2);
    if (st != HR_OK)
        return hr_error_set(err, HR_EINVAL, "db",
                            "%s is not a cluster node's checkpoint (%s); a standalone database "
                            "cannot be used in cluster mode: pass another --db path",
                            c->ckpt_path, e2.message);
    hr_estream_id d = {0, 0}, cov = {0, 0};
    if (hr_estream_id_parse(meta.delta, &d, &e2) != HR_OK ||
        (meta.covered[0] && hr_estream_id_parse(meta.covered, &cov, &e2) != HR_OK))
        return hr_error_set(err, HR_ECORRUPT, "db", "%s names no stream entry: %s", c->ckpt_path,
                            e2.message);
    hr_snapshot_stats ls = {0};
    if (c->p.catalog)
        hr_catalog_clear(c->p.catalog); /* while the ids it names are still there */
    if ((st = hr_snapshot_load(c->ckpt_path, c->p.model, c->p.sched, c->p.events, &meta, &ls,
                               &e2)) != HR_OK ||
        (st = load_catalog(c, c->ckpt_path, &e2)) != HR_OK)
        return hr_error_set(err, st, "db", "loading the checkpoint %s: %s", c->ckpt_path,
                            e2.message);
    adopt_snapshot(c, &meta, d, cov);
    c->ckpt_delta = d;
    c->ckpt_have = true;
    hr_log("info", "local checkpoint loaded",
           json_pack("{s:s,s:s,s:s,s:I,s:I}", "path", c->ckpt_path, "delta", meta.delta,
                     "covered_entry", meta.covered, "epoch", (json_int_t)meta.epoch, "rows",
                     (json_int_t)ls.rows));
    return HR_OK;
}

hr_status hr_cluster_snapshot(hr_cluster *c, int wait_ms, char *path, size_t cap,
                              hr_snapshot_meta *meta, hr_error *err)
{
    const char *why = hr_cluster_not_ready(c);
    if (why)
        return hr_error_set(err, HR_ESTOPPED, NULL, "this node is not ready: %s", why);
    if (atomic_load(&c->stop))
        return hr_error_set(err, HR_ESTOPPED, NULL, "this node is stopping");
    pthread_mutex_lock(&c->snap_mu);
    if (c->snap_state != SNAP_IDLE) {
        pthread_mutex_unlock(&c->snap_mu);
        return hr_error_set(err, HR_EBUSY, NULL, "a snapshot is being taken: retry later");
    }
    c->snap_state = SNAP_ASKED;
    c->snap_abandoned = false;
    atomic_store(&c->snap_asked, true);
    struct timespec until = hr_deadline_after(wait_ms / 1000.0);
    while (c->snap_state == SNAP_ASKED)
        if (pthread_cond_timedwait(&c->snap_cv, &c->snap_mu, &until) == ETIMEDOUT)
            break;
    hr_status st;
    if (c->snap_state != SNAP_DONE) {
        c->snap_abandoned = true; /* the node thread removes what it writes */
        st = hr_error_set(err, HR_EIO, NULL,
                          "the node thread did not reach a delta boundary within %d ms", wait_ms);
    } else {
        st = c->snap_st;
        if (st == HR_OK) {
            snprintf(path, cap, "%s", c->snap_path);
            *meta = c->snap_meta;
        } else {
            *err = c->snap_err;
        }
        c->snap_state = SNAP_IDLE;
    }
    pthread_mutex_unlock(&c->snap_mu);
    return st;
}

/* Downloads the snapshot of the node at address into a new temporary file
 * (path) and reads its meta; the X-Hogrec-Delta header must name the same
 * delta. On failure nothing is left on disk. */
static hr_status fetch_snapshot(hr_cluster *c, const char *address, char *path, size_t cap,
                                hr_snapshot_meta *meta, uint64_t *bytes, hr_error *err)
{
    if (!tmp_file(path, cap))
        return hr_error_set(err, HR_EIO, NULL, "cannot create a temporary file in %s", tmp_dir());
    int fd = open(path, O_WRONLY | O_TRUNC | O_CLOEXEC);
    hr_httpc_response *resp = malloc(sizeof *resp);
    char auth[sizeof c->admin_token + 8];
    snprintf(auth, sizeof auth, "Bearer %s", c->admin_token);
    hr_status st = fd < 0 || !resp ? hr_error_set(err, HR_EIO, NULL, "cannot open %s", path)
                                   : hr_httpc_get(address, "/v1/admin/snapshot", auth, fd, NULL,
                                                  resp, err);
    if (fd >= 0 && close(fd) != 0 && st == HR_OK)
        st = hr_error_set(err, HR_EIO, NULL, "writing %s: %s", path, strerror(errno));
    char hdr[HR_SNAPSHOT_ID_MAX + 1] = "";
    if (st == HR_OK && resp->status != 200)
        st = hr_error_set(err, HR_EIO, NULL, "%s answered %d: %.300s", address, resp->status,
                          resp->error_body);
    if (st == HR_OK && !hr_httpc_header(resp, "X-Hogrec-Delta", hdr, sizeof hdr))
        st = hr_error_set(err, HR_ECORRUPT, NULL, "%s sent no X-Hogrec-Delta header", address);
    if (st == HR_OK && (st = hr_snapshot_read_meta(path, meta, err)) == HR_OK &&
        strcmp(hdr, meta->delta) != 0)
        st = hr_error_set(err, HR_ECORRUPT, NULL,
                          "the snapshot's header names delta %s, its file %s", hdr, meta->delta);
    if (st == HR_OK)
        *bytes = resp->body_bytes;
    free(resp);
    if (st != HR_OK)
        unlink(path);
    return st;
}

/* After a snapshot (a peer's, or the local checkpoint) was loaded into the
 * model: this node is at its delta `d`, covering entry `cov`. */
static void adopt_snapshot(hr_cluster *c, const hr_snapshot_meta *meta, hr_estream_id d,
                           hr_estream_id cov)
{
    forget_initial_marks(c->p.model); /* loaded rows are no change to publish */
    hr_delta_parts_drop(&c->held);    /* parts of a delta older than the snapshot's */
    memset(&c->dst, 0, sizeof c->dst);
    c->dst.started = meta->started;
    c->dst.complete = true;
    c->dst.epoch = meta->epoch;
    c->dst.seq = meta->seq;
    c->dst.schedule_version = meta->schedule_version;
    snprintf(c->dst.event_id, sizeof c->dst.event_id, "%s", meta->covered);
    /* The serving state is the snapshot's (a snapshot of an older
     * version has none: it then misses the events before cov). */
    c->served = cov;
    c->served_ord_known = false;
    c->seq = hr_events_seq(c->p.events);
    pthread_mutex_lock(&c->mu);
    c->applied = d;
    c->covered = cov;
    c->epoch = (int64_t)meta->epoch;
    pthread_mutex_unlock(&c->mu);
    note_covered(c, cov); /* min_seq waiters see what the snapshot covers */
}

/* One round: asks the leader, then the other live members, for a
 * snapshot, until one loads. true when loaded (the node then follows the
 * deltas after the snapshot's). */
static bool bootstrap_once(hr_cluster *c)
{
    if (!c->admin_token[0]) {
        log_redis_error(c, "cannot bootstrap: a snapshot is fetched with the admin token and "
                           "none is configured (admin_token)",
                        HR_EINVAL, &(hr_error){{0}, "no admin_token"});
        return false;
    }
    hr_lease_member *m = NULL;
    size_t n = 0;
    hr_error err = {{0}, {0}};
    hr_status st = hr_lease_members(c->lease, &m, &n, &err);
    if (st != HR_OK) {
        log_redis_error(c, "cannot read the members (bootstrap)", st, &err);
        return false;
    }
    char peers[16][96], ids[16][HR_LEASE_NAME_MAX + 1];
    size_t np = 0;
    for (int pass = 0; pass < 2; pass++) /* the leader first */
        for (size_t i = 0; i < n && np < 16; i++) {
            const char *addr = json_string_value(json_object_get(m[i].entry, "address"));
            const char *role = json_string_value(json_object_get(m[i].entry, "role"));
            bool leader = role && !strcmp(role, "leader");
            if (m[i].stale || !addr || !addr[0] || !strcmp(m[i].node_id, c->node_id) ||
                leader != (pass == 0))
                continue;
            snprintf(peers[np], sizeof peers[np], "%s", addr);
            snprintf(ids[np], sizeof ids[np], "%s", m[i].node_id);
            np++;
        }
    hr_lease_members_free(m, n);
    for (size_t i = 0; i < np && !atomic_load(&c->stop); i++) {
        double t0 = hr_wall_time();
        char path[512];
        hr_snapshot_meta meta;
        uint64_t bytes = 0;
        if ((st = fetch_snapshot(c, peers[i], path, sizeof path, &meta, &bytes, &err)) != HR_OK) {
            hr_log("warn", "no snapshot from a peer",
                   json_pack("{s:s,s:s,s:s}", "peer", ids[i], "address", peers[i], "detail",
                             err.message));
            continue;
        }
        double fetched = hr_wall_time() - t0;
        /* The deltas after the snapshot's must still be in the stream. */
        hr_estream_id d = {0, 0}, cov = {0, 0}, del;
        if (hr_estream_id_parse(meta.delta, &d, &err) != HR_OK ||
            (meta.covered[0] && hr_estream_id_parse(meta.covered, &cov, &err) != HR_OK)) {
            hr_log("warn", "a peer's snapshot names no stream entry",
                   json_pack("{s:s,s:s}", "peer", ids[i], "detail", err.message));
            unlink(path);
            continue;
        }
        if ((st = deltas_max_deleted(c, c->conn, &del, &err)) != HR_OK ||
            hr_estream_id_cmp(del, d) > 0) {
            hr_log("warn", "a peer's snapshot is behind the trimmed delta stream",
                   json_pack("{s:s,s:s}", "peer", ids[i], "delta", meta.delta));
            unlink(path);
            continue;
        }
        hr_snapshot_stats ls = {0};
        if (c->p.catalog)
            hr_catalog_clear(c->p.catalog); /* while the ids it names are still there */
        st = hr_snapshot_load(path, c->p.model, c->p.sched, c->p.events, &meta, &ls, &err);
        if (st == HR_OK)
            st = load_catalog(c, path, &err);
        unlink(path);
        if (st != HR_OK) {
            hr_log("error", "cannot load a peer's snapshot",
                   json_pack("{s:s,s:s,s:s}", "peer", ids[i], "status", hr_status_to_string(st),
                             "detail", err.message));
            continue;
        }
        adopt_snapshot(c, &meta, d, cov);
        if (!ls.serving)
            hr_log("warn", "the snapshot holds no serving state: recent items and popularity "
                           "start from its entry",
                   json_pack("{s:s}", "peer", ids[i]));
        pthread_mutex_lock(&c->mu);
        c->need_boot = false;
        c->bootstraps++;
        pthread_mutex_unlock(&c->mu);
        hr_log("info", "bootstrapped from a snapshot",
               json_pack("{s:s,s:s,s:s,s:I,s:I,s:I,s:f,s:f}", "peer", ids[i], "delta", meta.delta,
                         "covered_entry", meta.covered, "rows", (json_int_t)ls.rows, "bytes",
                         (json_int_t)bytes, "ids_removed", (json_int_t)ls.removed,
                         "fetch_seconds", fetched, "seconds", hr_wall_time() - t0));
        return true;
    }
    return false;
}

/* The node thread's turn while it waits for a snapshot: an attempt when
 * the backoff allows, else a short pause. */
static void bootstrap_step(hr_cluster *c)
{
    uint64_t now = now_ms();
    if (now < c->next_boot_ms) {
        uint64_t left = c->next_boot_ms - now;
        sleep_ms(left < FOLLOW_BLOCK_MS ? (int)left : FOLLOW_BLOCK_MS);
        return;
    }
    if (bootstrap_once(c)) {
        c->boot_backoff_ms = 0;
        return;
    }
    c->boot_backoff_ms = c->boot_backoff_ms ? c->boot_backoff_ms * 2 : BOOT_BACKOFF_MIN_MS;
    if (c->boot_backoff_ms > BOOT_BACKOFF_MAX_MS)
        c->boot_backoff_ms = BOOT_BACKOFF_MAX_MS;
    c->next_boot_ms = now_ms() + (uint64_t)c->boot_backoff_ms;
    pthread_mutex_lock(&c->mu);
    snprintf(c->boot_why, sizeof c->boot_why,
             "no peer gave a loadable snapshot yet (retrying every %d ms at most)",
             BOOT_BACKOFF_MAX_MS);
    pthread_mutex_unlock(&c->mu);
}

/* The leadership rule: a node leads only with a model that covers the
 * trimmed part of the event stream (its covered entry at or after the
 * events_trimmed key the trimmer sets); otherwise the events trimmed after
 * its covered entry would be missing from its model, silently. */
static bool may_lead(hr_cluster *c)
{
    redisReply *rep = NULL;
    hr_error err = {{0}, {0}};
    hr_status st = hr_redis_call(c->conn, &rep, &err, "GET", c->trimmed_key, NULL);
    if (st != HR_OK) {
        log_redis_error(c, "cannot read the event stream's trim point", st, &err);
        return false;
    }
    hr_estream_id t = {0, 0};
    bool ok = true;
    if (rep->type == REDIS_REPLY_STRING && hr_estream_id_parse(rep->str, &t, &err) == HR_OK) {
        pthread_mutex_lock(&c->mu);
        hr_estream_id cov = c->covered;
        pthread_mutex_unlock(&c->mu);
        ok = hr_estream_id_cmp(cov, t) >= 0;
        if (!ok) {
            char b1[HR_ESTREAM_ID_LEN], b2[HR_ESTREAM_ID_LEN];
            hr_error e2 = {{0}, {0}};
            hr_error_set(&e2, HR_EINVAL, NULL,
                         "this model covers %s; the event stream was trimmed up to %s",
                         hr_estream_id_format(cov, b1), hr_estream_id_format(t, b2));
            log_redis_error(c, "may not lead: the model misses trimmed events (load a snapshot "
                               "from a peer, see README)",
                            HR_EINVAL, &e2);
        }
    }
    freeReplyObject(rep);
    return ok;
}

/* The leader's trimming (delta_retention_ms > 0), at most every
 * TRIM_EVERY_MS: the delta stream to the entries of the last retention_ms
 * before its last delta (XTRIM MINID), then the event stream up to the
 * entry the oldest retained delta covers, after recording that point in
 * the events_trimmed key (so no node leads with less). */
/* The id of the first entry of a stream range (XRANGE or XREVRANGE from
 * ARGV[2] to ARGV[3], COUNT 1) and, when ARGV[4] is not empty, the value of
 * that entry's field ARGV[4] ('' when it has none): the entry's other
 * fields, a delta part of up to max_part_bytes, stay on the server. An empty
 * array for an empty range. */
static const char edge_lua[] =
    "local r = redis.call(ARGV[1], KEYS[1], ARGV[2], ARGV[3], 'COUNT', 1) "
    "if #r == 0 then return {} end "
    "local v = '' "
    "if ARGV[4] ~= '' then "
    "  local f = r[1][2] "
    "  for i = 1, #f - 1, 2 do if f[i] == ARGV[4] then v = f[i + 1] break end end "
    "end "
    "return {r[1][1], v}";

/* The first entry of the delta stream's range from..to (cmd "XRANGE" or
 * "XREVRANGE"): its id into id (HR_ESTREAM_ID_LEN; "" for an empty range)
 * and, when field is not NULL, that field's value into val (val_len bytes,
 * NUL-terminated, "" when absent or longer). */
static hr_status delta_edge(hr_cluster *c, hr_redis *r, const char *cmd, const char *from,
                            const char *to, const char *field, char *id, char *val,
                            size_t val_len, hr_error *err)
{
    const char *argv[] = {c->deltas_key, cmd, from, to, field ? field : ""};
    redisReply *rep = NULL;
    id[0] = 0;
    if (val)
        val[0] = 0;
    hr_status st = hr_redis_eval(r, edge_lua, 1, 5, argv, NULL, &rep, err);
    if (st != HR_OK)
        return st;
    if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 &&
        rep->element[0]->type == REDIS_REPLY_STRING &&
        rep->element[0]->len < HR_ESTREAM_ID_LEN) {
        memcpy(id, rep->element[0]->str, rep->element[0]->len + 1);
        if (val && rep->element[1]->type == REDIS_REPLY_STRING && rep->element[1]->len < val_len)
            memcpy(val, rep->element[1]->str, rep->element[1]->len + 1);
    } else if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 0) {
        st = hr_error_set(err, HR_ECORRUPT, "redis", "unexpected reply to a delta stream read");
    }
    freeReplyObject(rep);
    return st;
}

/* Sets key to the stream id `id` unless it holds a later one, in one
 * script: both trim points only move forward, so a stale leader (paused
 * past its lease, not yet fenced) can never lower them. */
static const char raise_id_lua[] =
    "local function parse(s) local a, b = string.match(s, '^(%d+)-(%d+)$') "
    "return tonumber(a), tonumber(b) end "
    "local cur = redis.call('GET', KEYS[1]) "
    "if cur then "
    "  local cm, cs = parse(cur) local nm, ns = parse(ARGV[1]) "
    "  if cm and (cm > nm or (cm == nm and cs >= ns)) then return 0 end "
    "end "
    "redis.call('SET', KEYS[1], ARGV[1]) return 1";

static hr_status raise_id(hr_cluster *c, const char *key, const char *id, hr_error *err)
{
    const char *argv[] = {key, id};
    redisReply *rep = NULL;
    hr_status st = hr_redis_eval(c->conn, raise_id_lua, 1, 2, argv, NULL, &rep, err);
    freeReplyObject(rep);
    return st;
}

static void trim_streams(hr_cluster *c)
{
    if (c->retention_ms <= 0)
        return;
    uint64_t now = now_ms();
    if (now < c->next_trim_ms)
        return;
    int64_t every = c->retention_ms / 2;
    every = every > TRIM_EVERY_MS ? TRIM_EVERY_MS : every < 10 ? 10 : every;
    c->next_trim_ms = now + (uint64_t)every;
    pthread_mutex_lock(&c->mu);
    hr_estream_id last = c->applied;
    pthread_mutex_unlock(&c->mu);
    if (last.ms <= (uint64_t)c->retention_ms)
        return;
    hr_estream_id keep = {last.ms - (uint64_t)c->retention_ms, 0};
    /* with a local checkpoint, the deltas after it stay (a node restarted
     * from it follows them), and so do the events they cover */
    if (c->ckpt_path[0]) {
        if (!c->ckpt_have)
            return;
        if (hr_estream_id_cmp(c->ckpt_delta, keep) < 0)
            keep = c->ckpt_delta;
    }
    char minid[HR_ESTREAM_ID_LEN + 1];
    minid[0] = '(';
    hr_estream_id_format(keep, minid + 1);
    /* The newest entry the trim deletes goes in deltas_trimmed first: a
     * follower that applied an older one knows it cannot follow. Only the
     * leader appends, after the MINID, so what lies before it is fixed. */
    hr_error err = {{0}, {0}};
    char gone[HR_ESTREAM_ID_LEN];
    hr_status st = delta_edge(c, c->conn, "XREVRANGE", minid, "-", NULL, gone, NULL, 0, &err);
    if (st != HR_OK) {
        log_redis_error(c, "cannot read the delta stream", st, &err);
        return;
    }
    if (gone[0]) {
        redisReply *rep = NULL;
        st = raise_id(c, c->dtrimmed_key, gone, &err);
        if (st == HR_OK)
            st = hr_redis_call(c->conn, &rep, &err, "XTRIM", c->deltas_key, "MINID", minid + 1,
                               NULL);
        if (st != HR_OK) {
            log_redis_error(c, "cannot trim the delta stream", st, &err);
            return;
        }
        freeReplyObject(rep);
    }
    /* what the oldest retained delta covers: its "c" field */
    char oldest[HR_ESTREAM_ID_LEN], covers[HR_ESTREAM_ID_LEN];
    if ((st = delta_edge(c, c->conn, "XRANGE", "-", "+", "c", oldest, covers, sizeof covers,
                         &err)) != HR_OK) {
        log_redis_error(c, "cannot read the delta stream", st, &err);
        return;
    }
    hr_estream_id t;
    if (!covers[0] || hr_estream_id_parse(covers, &t, NULL) != HR_OK ||
        hr_estream_id_cmp(t, c->events_trimmed) <= 0)
        return;
    char ts[HR_ESTREAM_ID_LEN];
    if ((st = raise_id(c, c->trimmed_key, hr_estream_id_format(t, ts), &err)) != HR_OK) {
        log_redis_error(c, "cannot record the event stream's trim point", st, &err);
        return;
    }
    uint64_t removed = 0;
    if ((st = hr_estream_trim(c->reader, t, &removed, &err)) != HR_OK) {
        log_redis_error(c, "cannot trim the event stream", st, &err);
        return;
    }
    c->events_trimmed = t;
}

/* ---- follower: the delta stream ---- */

static bool serve_follow(hr_cluster *c);
static hr_status parse_entry(hr_cluster *c, const hr_estream_entry *e, bool intern, size_t *m_out);

/* Takes one part (the stream entry `id`): held until its delta's last
 * part comes, then the whole delta is applied (hr_delta_take; see "Whole
 * deltas" in DESIGN). false when it cannot be taken: the node is broken
 * or bootstraps (logged). */
static bool apply_part(hr_cluster *c, hr_estream_id id, const void *data, size_t len)
{
    hr_error err = {{0}, {0}};
    bool whole = false;
    uint64_t dropped = c->held.dropped;
    hr_status st = hr_delta_take(c->p.model, data, len, &c->held, &c->dst, &whole, &err);
    if (c->held.dropped != dropped)
        hr_log("warn", "an incomplete delta was dropped (its leader stopped before its last part)",
               json_pack("{s:I}", "dropped", (json_int_t)c->held.dropped));
    char b[HR_ESTREAM_ID_LEN];
    pthread_mutex_lock(&c->mu);
    if (st == HR_ENOTFOUND) { /* a gap: deltas this node needs are gone */
        pthread_mutex_unlock(&c->mu);
        char why[320];
        snprintf(why, sizeof why, "a delta is missing before entry %s: %s",
                 hr_estream_id_format(id, b), err.message);
        want_bootstrap(c, why);
        return false;
    }
    if (st != HR_OK) {
        c->broken = "a delta cannot be applied";
        snprintf(c->broken_detail, sizeof c->broken_detail, "%s", err.message);
        pthread_mutex_unlock(&c->mu);
        hr_log("error", "delta refused: this node stops following",
               json_pack("{s:s,s:s,s:s}", "entry", hr_estream_id_format(id, b), "status",
                         hr_status_to_string(st), "detail", err.message));
        return false;
    }
    c->applied = id;
    if (whole) {
        c->deltas_applied++;
        c->epoch = (int64_t)c->dst.epoch;
        hr_estream_id cov;
        if (c->dst.event_id[0] &&
            hr_estream_id_parse(c->dst.event_id, &cov, NULL) == HR_OK)
            c->covered = cov;
    }
    pthread_mutex_unlock(&c->mu);
    return true; /* min_seq waiters: once the serving state covers it too (serve_follow) */
}

/* One XREAD of the delta stream after the last part applied, blocking up
 * to block_ms (0: not at all); applies what came. Returns the parts read,
 * or -1 on a Redis error (logged, after a short pause). */
static int follow(hr_cluster *c, int block_ms)
{
    char after[HR_ESTREAM_ID_LEN], block[16];
    pthread_mutex_lock(&c->mu);
    hr_estream_id_format(c->applied, after);
    bool broken = c->broken != NULL || c->need_boot;
    pthread_mutex_unlock(&c->mu);
    if (broken) {
        sleep_ms(block_ms ? block_ms : 1);
        return 0;
    }
    snprintf(block, sizeof block, "%d", block_ms);
    redisReply *rep = NULL;
    hr_error err = {{0}, {0}};
    hr_status st =
        block_ms > 0
            ? hr_redis_call(c->conn, &rep, &err, "XREAD", "COUNT", FOLLOW_COUNT, "BLOCK", block,
                            "STREAMS", c->deltas_key, after, NULL)
            : hr_redis_call(c->conn, &rep, &err, "XREAD", "COUNT", FOLLOW_COUNT, "STREAMS",
                            c->deltas_key, after, NULL);
    if (st != HR_OK) {
        log_redis_error(c, "cannot read the delta stream", st, &err);
        sleep_ms(RETRY_MS);
        return -1;
    }
    int n = 0;
    if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 1 &&
        rep->element[0]->type == REDIS_REPLY_ARRAY && rep->element[0]->elements == 2) {
        redisReply *entries = rep->element[0]->element[1];
        for (size_t i = 0; entries->type == REDIS_REPLY_ARRAY && i < entries->elements; i++) {
            redisReply *e = entries->element[i];
            hr_estream_id id;
            if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
                e->element[0]->type != REDIS_REPLY_STRING ||
                hr_estream_id_parse(e->element[0]->str, &id, NULL) != HR_OK)
                break;
            redisReply *f = e->element[1];
            const redisReply *d = NULL;
            for (size_t j = 0; f->type == REDIS_REPLY_ARRAY && j + 1 < f->elements; j += 2)
                if (f->element[j]->type == REDIS_REPLY_STRING && !strcmp(f->element[j]->str, "d"))
                    d = f->element[j + 1];
            if (!part_follows(c, f))
                break;
            if (!d || d->type != REDIS_REPLY_STRING) {
                apply_part(c, id, "", 0); /* refused as damaged: broken, logged */
                break;
            }
            if (!apply_part(c, id, d->str, d->len))
                break;
            n++;
        }
    }
    freeReplyObject(rep);
    return serve_follow(c) ? n : -1;
}

/* ---- the catalog, cluster-wide (see "Catalog" in DESIGN) ---- */

/* Applies catalog entry e: the leader (lead) once its trainers applied
 * every event fed before it. A change that cannot be applied is logged
 * and skipped alike on every node. Node thread. */
static void apply_catalog(hr_cluster *c, const hr_estream_entry *e, bool lead)
{
    if (!c->p.catalog)
        return;
    if (lead)
        hr_trainer_wait_idle(c->p.trainer);
    hr_catalog_applied a;
    hr_error err = {{0}, {0}};
    hr_status st = hr_catalog_apply_change(c->p.catalog, e->catalog, e->catalog_len, lead, &a, &err);
    if (st != HR_OK || a.skipped || a.unbound) {
        char b[HR_ESTREAM_ID_LEN];
        hr_log("warn", "a catalog change was not applied whole",
               json_pack("{s:s,s:s,s:I,s:I,s:s}", "entry", hr_estream_id_format(e->id, b),
                         "status", hr_status_to_string(st), "skipped", (json_int_t)a.skipped,
                         "unbound", (json_int_t)a.unbound, "detail", err.message));
    }
}

/* Adds the catalog to a snapshot file just written (at the same boundary:
 * only the node thread changes the catalog in cluster mode). */
static hr_status write_catalog(hr_cluster *c, const char *path, hr_error *err)
{
    return c->p.catalog ? hr_snapshot_write_catalog(path, c->p.catalog, NULL, err) : HR_OK;
}

/* Replaces the catalog with a loaded snapshot's. */
static hr_status load_catalog(hr_cluster *c, const char *path, hr_error *err)
{
    uint64_t n = 0, unbound = 0;
    hr_status st = c->p.catalog ? hr_snapshot_load_catalog(path, c->p.catalog, &n, &unbound, err)
                                : HR_OK;
    if (st == HR_OK && c->p.catalog)
        hr_log("info", "catalog loaded from a snapshot",
               json_pack("{s:I,s:I}", "records", (json_int_t)n, "unbound", (json_int_t)unbound));
    return st;
}

/* With max_backlog set: HR_EFULL (the message ending "nothing was
 * accepted, <resend>") when more entries than that wait in the event
 * stream beyond what this node covers; a Redis failure is HR_EIO (never
 * HR_EFULL, which means the backlog). Called before an append. */
static hr_status check_backlog(hr_cluster *c, const char *resend, hr_error *err)
{
    if (c->max_backlog <= 0)
        return HR_OK;
    pthread_mutex_lock(&c->mu);
    hr_estream_id cov = c->covered;
    pthread_mutex_unlock(&c->mu);
    uint64_t backlog = 0;
    hr_status st = hr_estream_backlog(c->append, cov, &backlog, err);
    if (st != HR_OK)
        return st == HR_EFULL ? HR_EIO : st;
    if (backlog > (uint64_t)c->max_backlog)
        return hr_error_set(err, HR_EFULL, NULL,
                            "%" PRIu64 " requests wait to be trained (max_backlog %" PRId64
                            "); nothing was accepted, %s",
                            backlog, c->max_backlog, resend);
    return HR_OK;
}

hr_status hr_cluster_catalog_append(hr_cluster *c, const char *text, size_t len, char *entry,
                                    size_t cap, hr_error *err)
{
    entry[0] = 0;
    hr_status st = check_backlog(c, "resend", err);
    if (st != HR_OK)
        return st;
    hr_estream_appended out;
    st = hr_estream_append_catalog(c->append, text, len, hr_wall_time(), &out, err);
    if (st != HR_OK) {
        atomic_fetch_add(&c->redis_errors, 1);
        return st == HR_EFULL ? HR_EIO : st;
    }
    char b[HR_ESTREAM_ID_LEN];
    snprintf(entry, cap, "%s", hr_estream_id_format(out.id, b));
    return HR_OK;
}

/* ---- follower: the serving state ---- */

/* hr_estream_entry_fn of a follower's serving read: the entry's events
 * parsed (no id created) and applied to the serving state only. An entry
 * whose ordinal does not follow the last one applied means entries were
 * trimmed unread: HR_ENOTFOUND (the node bootstraps). */
static hr_status serve_entry(void *arg, const hr_estream_entry *e)
{
    hr_cluster *c = arg;
    if (c->served_ord_known && e->ordinal != c->served_ord + 1)
        return HR_ENOTFOUND;
    if (e->catalog)
        apply_catalog(c, e, false);
    size_t m = 0;
    hr_status st = parse_entry(c, e, false, &m);
    if (st != HR_OK)
        return st;
    if (m > 0)
        hr_events_apply(c->p.events, c->evs, c->ids, c->arrived, m);
    c->served = e->id;
    c->served_ord = e->ordinal;
    c->served_ord_known = true;
    return HR_OK;
}

/* A follower's serving state up to the entry its model covers: reads the
 * event stream after the last entry applied to it, up to the covered one
 * (hr_estream_range, on the reader's connection), then publishes that
 * entry to the min_seq waiters (model and serving state both cover it).
 * false on a Redis error (logged, after a pause; the next call goes on
 * from where this one stopped) or a gap (the entries were trimmed: the
 * node bootstraps). Node thread. */
static bool serve_follow(hr_cluster *c)
{
    pthread_mutex_lock(&c->mu);
    hr_estream_id cov = c->covered;
    bool skip = c->broken != NULL || c->need_boot;
    pthread_mutex_unlock(&c->mu);
    if (skip)
        return true;
    hr_error err = {{0}, {0}};
    for (int i = 0; i < 1000000 && hr_estream_id_cmp(c->served, cov) < 0; i++) {
        if (atomic_load(&c->stop))
            return false;
        size_t got = 0;
        hr_status st = hr_estream_range(c->reader, c->served, cov, READ_ENTRIES, serve_entry, c,
                                        NULL, &got, &err);
        if (st == HR_ENOTFOUND || (st == HR_OK && got == 0)) {
            char b1[HR_ESTREAM_ID_LEN], b2[HR_ESTREAM_ID_LEN], why[200];
            snprintf(why, sizeof why,
                     "the event stream was trimmed past the serving state (entry %s; the model "
                     "covers %s)",
                     hr_estream_id_format(c->served, b1), hr_estream_id_format(cov, b2));
            want_bootstrap(c, why);
            return false;
        }
        if (st != HR_OK) {
            log_redis_error(c, "cannot read the event stream (serving state)", st, &err);
            sleep_ms(RETRY_MS);
            return false;
        }
    }
    note_covered(c, cov);
    return true;
}

/* The delta stream's last id ({0, 0} when empty or missing), read without
 * its part (delta_edge). */
static hr_status deltas_last(hr_cluster *c, hr_redis *r, hr_estream_id *last, hr_error *err)
{
    *last = (hr_estream_id){0, 0};
    char id[HR_ESTREAM_ID_LEN];
    hr_status st = delta_edge(c, r, "XREVRANGE", "+", "-", NULL, id, NULL, 0, err);
    if (st == HR_OK && id[0])
        st = hr_estream_id_parse(id, last, err);
    return st;
}

/* ---- leader ---- */

static void on_lost(void *arg, const hr_lease_state *now)
{
    (void)now;
    hr_cluster *c = arg;
    atomic_store(&c->lost, true);
}

static void step_down(hr_cluster *c, const char *why, const char *detail)
{
    hr_lease_stop_renewal(c->lease);
    pthread_mutex_lock(&c->mu);
    c->role = ROLE_STEPPED_DOWN;
    pthread_mutex_unlock(&c->mu);
    c->pending = false;
    hr_log("error", "stepped down: no longer the leader (restart this node: its model holds "
                    "training that was not published)",
           json_pack("{s:s,s:s}", "reason", why, "detail", detail ? detail : ""));
}

/* Parses entry e's events into the feed buffers (c->evs, ids, arrived),
 * numbered after c->seq; *m gets how many. intern (the leader): new user
 * and item ids get rows; else (a follower, whose ids come with the
 * deltas) an event naming an id the model does not hold is left out. An
 * event that cannot be parsed is left out and counted. */
static hr_status parse_entry(hr_cluster *c, const hr_estream_entry *e, bool intern, size_t *m_out)
{
    *m_out = 0;
    if (e->n > c->feed_cap) {
        size_t cap = e->n;
        hr_event *evs = realloc(c->evs, cap * sizeof *evs);
        if (evs)
            c->evs = evs;
        uint64_t *ids = realloc(c->ids, cap * sizeof *ids);
        if (ids)
            c->ids = ids;
        double *arr = realloc(c->arrived, cap * sizeof *arr);
        if (arr)
            c->arrived = arr;
        if (!evs || !ids || !arr)
            return HR_ENOMEM;
        c->feed_cap = cap;
    }
    size_t m = 0;
    for (size_t i = 0; i < e->n; i++) {
        json_error_t jerr;
        json_t *obj = json_loadb(e->text[i], e->len[i], 0, &jerr);
        hr_error err = {{0}, {0}};
        unsigned unknown = 0;
        hr_status st = !obj   ? HR_EINVAL
                       : intern ? hr_api_event_from_json(c->p.model, obj, &c->evs[m], NULL, &err)
                                : hr_api_event_lookup(c->p.model, obj, &c->evs[m], &unknown, &err);
        json_decref(obj);
        if (st == HR_OK && unknown)
            st = hr_error_set(&err, HR_ENOTFOUND, NULL, "an id the model does not hold");
        if (st != HR_OK) {
            if (c->skipped++ == 0) {
                char b[HR_ESTREAM_ID_LEN];
                hr_log("warn", "an event of the stream cannot be applied (later ones are not logged)",
                       json_pack("{s:s,s:s}", "entry", hr_estream_id_format(e->id, b), "detail",
                                 obj ? err.message : jerr.text));
            }
            continue;
        }
        c->ids[m] = e->id_hash[i];
        c->arrived[m] = e->arrived;
        c->evs[m].seq = ++c->seq;
        m++;
    }
    *m_out = m;
    return HR_OK;
}

/* hr_estream_entry_fn of the leader's read: the entry's events parsed,
 * numbered and fed to the serving state and the trainers. */
static hr_status feed_entry(void *arg, const hr_estream_entry *e)
{
    hr_cluster *c = arg;
    if (c->fed_n == c->fed_cap) {
        size_t cap = c->fed_cap ? 2 * c->fed_cap : 1024;
        fed_entry *f = malloc(cap * sizeof *f);
        if (!f)
            return HR_ENOMEM;
        for (size_t i = 0; i < c->fed_n; i++)
            f[i] = c->fed[(c->fed_head + i) % c->fed_cap];
        free(c->fed);
        c->fed = f;
        c->fed_cap = cap;
        c->fed_head = 0;
    }
    if (e->catalog)
        apply_catalog(c, e, true);
    size_t m = 0;
    hr_status st = parse_entry(c, e, true, &m);
    if (st != HR_OK)
        return st;
    if (m > 0 && (st = hr_events_replay(c->p.events, c->evs, c->ids, c->arrived, m)) != HR_OK)
        return st;
    c->served = e->id;
    c->served_ord = e->ordinal;
    c->served_ord_known = true;
    c->fed[(c->fed_head + c->fed_n++) % c->fed_cap] = (fed_entry){c->seq, e->id};
    pthread_mutex_lock(&c->mu);
    c->read_after = e->id;
    c->events_fed += m;
    pthread_mutex_unlock(&c->mu);
    return HR_OK;
}

/* Sends the pending delta's parts from part_next on, fenced by the epoch.
 * A fenced refusal steps down. */
static hr_status send_parts(hr_cluster *c)
{
    char es[24], ss[24], cs[HR_ESTREAM_ID_LEN];
    snprintf(es, sizeof es, "%" PRId64, c->epoch);
    snprintf(ss, sizeof ss, "%" PRIu64, c->dseq);
    /* "c", the entry the delta covers (as in its header), in a field of its
     * own: the trimmer reads it without the part (delta_edge) */
    hr_estream_id_format(c->pend_covered, cs);
    while (c->part_next < c->buf.nparts) {
        size_t i = c->part_next, from = i ? c->buf.ends[i - 1] : 0, len = c->buf.ends[i] - from;
        const char *argv[] = {"*", "e", es, "s", ss, "c", cs, "d", (const char *)c->buf.data + from};
        const size_t lens[] = {1, 1, strlen(es), 1, strlen(ss), 1, strlen(cs), 1, len};
        char id[HR_ESTREAM_ID_LEN];
        hr_error err = {{0}, {0}};
        hr_status st = hr_lease_fenced_xadd(c->lease, c->conn, c->epoch, c->deltas_key, 9, argv,
                                            lens, id, sizeof id, &err);
        if (st == HR_EBUSY && !strncmp(err.message, "fenced", 6)) {
            step_down(c, "a newer epoch fenced the delta", err.message);
            return st;
        }
        if (st != HR_OK) {
            log_redis_error(c, "cannot publish a delta (retrying)", st, &err);
            return st;
        }
        hr_estream_id pid;
        pthread_mutex_lock(&c->mu);
        if (hr_estream_id_parse(id, &pid, NULL) == HR_OK)
            c->applied = pid;
        c->delta_bytes += len;
        pthread_mutex_unlock(&c->mu);
        c->part_next++;
    }
    c->pending = false;
    pthread_mutex_lock(&c->mu);
    c->covered = c->pend_covered;
    c->deltas_published++;
    pthread_mutex_unlock(&c->mu);
    note_covered(c, c->pend_covered);
    return HR_OK;
}

/* The highest seq such that every event fed up to it is trained. */
static uint64_t trained_prefix(hr_cluster *c)
{
    uint64_t done = hr_trainer_applied_count(c->p.trainer, NULL);
    if (done - c->done0 >= c->seq - c->seq0)
        return c->seq;
    uint64_t s = hr_trainer_pause(c->p.trainer);
    hr_trainer_resume(c->p.trainer);
    return s;
}

/* Encodes and publishes what changed, unless nothing did. */
static void publish(hr_cluster *c)
{
    if (c->pending && send_parts(c) != HR_OK)
        return;
    /* Every event fed is trained and none trains while the rows are
     * encoded (see DESIGN): the delta holds exactly what it covers. */
    hr_trainer_wait_idle(c->p.trainer);
    uint64_t upto = trained_prefix(c);
    pthread_mutex_lock(&c->mu);
    hr_estream_id cov = c->covered;
    pthread_mutex_unlock(&c->mu);
    while (c->fed_n > 0 && c->fed[c->fed_head].last_seq <= upto) {
        cov = c->fed[c->fed_head].id;
        c->fed_head = (c->fed_head + 1) % c->fed_cap;
        c->fed_n--;
    }
    hr_delta_header h = {.epoch = (uint64_t)c->epoch,
                         .seq = c->dseq + 1,
                         .schedule_version = hr_schedbox_current(c->p.sched)->version};
    hr_estream_id_format(cov, h.event_id);
    hr_error err = {{0}, {0}};
    if (hr_delta_encode(c->p.model, &h, PART_BYTES, &c->buf, &err) != HR_OK) {
        log_redis_error(c, "cannot encode a delta", HR_ENOMEM, &err);
        return;
    }
    pthread_mutex_lock(&c->mu);
    bool moved = hr_estream_id_cmp(cov, c->covered) != 0;
    pthread_mutex_unlock(&c->mu);
    if (c->buf.rows + c->buf.ids + c->buf.removals == 0 && !moved)
        return; /* nothing to say: no delta number used */
    c->dseq++;
    c->part_next = 0;
    c->pending = true;
    c->pend_covered = cov;
    send_parts(c);
}

/* Drains the delta stream to its end (bounded by the parts it holds). */
static bool follow_to_end(hr_cluster *c)
{
    for (int i = 0; i < 1000000 && !atomic_load(&c->stop); i++) {
        int n = follow(c, 0);
        if (n < 0)
            return false;
        if (n == 0)
            break;
    }
    pthread_mutex_lock(&c->mu);
    bool ok = c->broken == NULL && !c->need_boot;
    pthread_mutex_unlock(&c->mu);
    return ok;
}

/* Takes the lease if it is free; then becomes the leader from what the
 * delta stream holds. */
static void try_lead(hr_cluster *c)
{
    if (!may_lead(c))
        return;
    hr_lease_state ls;
    hr_error err = {{0}, {0}};
    hr_status st = hr_lease_acquire(c->lease, &ls, &err);
    if (st != HR_OK) {
        log_redis_error(c, "cannot read the lease", st, &err);
        return;
    }
    if (!ls.held) {
        pthread_mutex_lock(&c->mu);
        snprintf(c->leader, sizeof c->leader, "%s", ls.holder);
        if (c->role == ROLE_STARTING)
            c->role = ROLE_FOLLOWER;
        pthread_mutex_unlock(&c->mu);
        return;
    }
    /* Epoch ls.epoch is ours: older leaders' writes are fenced from now on.
     * Apply whatever they published, so this model is the followers'. */
    hr_estream_id target;
    bool ok = follow_to_end(c) && may_lead(c);
    pthread_mutex_lock(&c->mu);
    /* the serving state must cover what the model does, no more, no less:
     * the leader feeds both from the entry after it */
    ok = ok && hr_estream_id_cmp(c->served, c->covered) == 0;
    pthread_mutex_unlock(&c->mu);
    uint64_t ordinal;
    if (ok && (st = hr_estream_last(c->reader, &target, &ordinal, &err)) != HR_OK) {
        log_redis_error(c, "cannot read the event stream", st, &err);
        ok = false;
    }
    if (ok && (st = hr_lease_start_renewal(c->lease, on_lost, c, &err)) != HR_OK)
        ok = false;
    if (!ok) {
        hr_lease_release(c->lease, NULL, &err);
        return;
    }
    /* A delta still incomplete now never ends (its leader's epoch is
     * over): this model is the last complete delta's, and the events after
     * its entry are trained again from there. */
    if (hr_delta_parts_drop(&c->held) > 0)
        hr_log("warn", "an incomplete delta was dropped at taking the lease",
               json_pack("{s:I}", "epoch", (json_int_t)ls.epoch));
    atomic_store(&c->lost, false);
    c->seq0 = c->seq;
    c->done0 = hr_trainer_applied_count(c->p.trainer, NULL);
    c->dseq = 0;
    c->fed_n = 0;
    c->pending = false;
    pthread_mutex_lock(&c->mu);
    c->role = ROLE_LEADER;
    c->epoch = ls.epoch;
    snprintf(c->leader, sizeof c->leader, "%s", c->node_id);
    c->read_after = c->covered;
    c->events_target = target;
    char b1[HR_ESTREAM_ID_LEN], b2[HR_ESTREAM_ID_LEN];
    json_t *f = json_pack("{s:I,s:s,s:s}", "epoch", (json_int_t)ls.epoch, "from_entry",
                          hr_estream_id_format(c->covered, b1), "stream_last",
                          hr_estream_id_format(target, b2));
    pthread_mutex_unlock(&c->mu);
    hr_log("info", "leader", f);
}

/* The renewal thread counted the lease lost: Redis did not answer for a
 * whole lease (down, restarted past the key's expiry) or the key holds
 * another value. The leader's model holds training not yet published, so
 * it takes the lease back with the same epoch if no node acquired since
 * (hr_lease_reclaim; its fenced writes are then still valid) and goes on
 * leading; it steps down only once another node did lead. While Redis does
 * not answer it neither reads nor publishes and asks again after a pause.
 * Returns whether it leads on now. */
static bool reclaim(hr_cluster *c)
{
    hr_lease_stop_renewal(c->lease); /* the thread ended after its callback */
    hr_lease_state ls;
    hr_error err = {{0}, {0}};
    hr_status st = hr_lease_reclaim(c->lease, c->epoch, &ls, &err);
    if (st != HR_OK) {
        log_redis_error(c, "the lease is lost and Redis does not answer (retrying)", st, &err);
        sleep_ms(RETRY_MS);
        return false;
    }
    if (!ls.held) {
        char why[160];
        snprintf(why, sizeof why, "the lease was lost: node '%s' holds it, epoch %" PRId64,
                 ls.holder, ls.epoch);
        step_down(c, why, NULL);
        return false;
    }
    if ((st = hr_lease_start_renewal(c->lease, on_lost, c, &err)) != HR_OK) {
        log_redis_error(c, "cannot restart the lease renewal", st, &err);
        sleep_ms(RETRY_MS);
        return false;
    }
    atomic_store(&c->lost, false);
    pthread_mutex_lock(&c->mu);
    c->reclaims++;
    pthread_mutex_unlock(&c->mu);
    hr_log("info", "lease taken back", json_pack("{s:I}", "epoch", (json_int_t)c->epoch));
    return true;
}

static void lead(hr_cluster *c, uint64_t *next_pub)
{
    if (atomic_load(&c->lost) && !reclaim(c))
        return;
    /* With entries fed and not yet published, read without blocking and
     * wait for the publish here: Redis ends a short XREAD BLOCK only at
     * its next cron tick (1000 / hz ms, 100 ms by default), though it
     * answers at once when an entry comes. With nothing to publish, block
     * until an entry comes (a tick at most, so the loop still runs). */
    bool dirty = c->fed_n > 0 || c->pending;
    pthread_mutex_lock(&c->mu);
    hr_estream_id after = c->read_after;
    pthread_mutex_unlock(&c->mu);
    hr_error err = {{0}, {0}};
    size_t got = 0;
    hr_status st = hr_estream_read(c->reader, after, READ_ENTRIES, dirty ? 0 : FOLLOW_BLOCK_MS,
                                   feed_entry, c, NULL, &got, &err);
    if (st != HR_OK && st != HR_ESTOPPED) {
        log_redis_error(c, "cannot read the event stream", st, &err);
        sleep_ms(RETRY_MS);
    }
    uint64_t now = now_ms();
    if (got == 0 && dirty && now < *next_pub)
        sleep_ms((int)(*next_pub - now));
    if (now_ms() >= *next_pub) {
        publish(c);
        *next_pub = now_ms() + (uint64_t)c->publish_ms;
        serve_snapshot(c);
        local_checkpoint(c, false);
        trim_streams(c);
    }
}

static void heartbeat(hr_cluster *c)
{
    char b1[HR_ESTREAM_ID_LEN], b2[HR_ESTREAM_ID_LEN], addr[sizeof c->address];
    pthread_mutex_lock(&c->mu);
    /* the lag as last measured (measure_lag, every second): the entries
     * (requests) of the event stream this node's model does not cover yet,
     * and their age (the newest entry's time less the covered one's) */
    json_t *lag = json_pack("{s:s,s:s,s:I,s:I}", "applied_delta",
                            hr_estream_id_format(c->applied, b1), "covered_entry",
                            hr_estream_id_format(c->covered, b2), "entries_not_covered",
                            (json_int_t)c->lag_entries, "lag_ms", (json_int_t)c->lag_ms);
    const char *role = role_name(c->role);
    int64_t epoch = c->epoch;
    snprintf(addr, sizeof addr, "%s", c->address);
    pthread_mutex_unlock(&c->mu);
    hr_lease_member_info info = {.address = addr, .role = role, .epoch = epoch,
                                 .heartbeat_ms = HEARTBEAT_MS, .lag = lag};
    hr_error err = {{0}, {0}};
    hr_status st = hr_lease_heartbeat(c->lease, &info, &err);
    if (st != HR_OK)
        log_redis_error(c, "cannot write the membership heartbeat", st, &err);
    json_decref(lag);
}

/* Whether a follower leaves a free lease alone for now because Redis just
 * failed it: after a Redis outage longer than the lease, the key expired
 * although its leader lives, and that leader takes it back (reclaim) as
 * soon as its connections reconnect (at most one backoff after Redis
 * answers). A follower that took it first would make the leader step down
 * for good. So a follower waits the lease plus two of the longest backoffs
 * after its own last failed call; a dead leader's lease is then taken that
 * much later. */
static bool outage_grace(hr_cluster *c, role_t role)
{
    if (role != ROLE_FOLLOWER || c->redis_fail_ms == 0)
        return false;
    hr_redis_options o;
    hr_redis_options_defaults(&o);
    return now_ms() < c->redis_fail_ms + (uint64_t)c->lease_ms + 2u * (uint64_t)o.backoff_max_ms;
}

/* ---- the schedule, cluster-wide ---- */

/* Schedule put: KEYS schedule hash; ARGV the schedule's JSON. Stores it as
 * the next version (the initial schedule of every node is version 1, so
 * the first change is 2) and returns that version. */
static const char sched_put_lua[] =
    "local v = tonumber(redis.call('HGET', KEYS[1], 'version') or '1') + 1 "
    "redis.call('HSET', KEYS[1], 'version', v, tostring(v), ARGV[1]) "
    "return v";

/* Installs, in order, every version of the cluster's schedule hash newer
 * than this node's current one, through the schedule box (so each node's
 * version numbers are the cluster's). Caller holds aux_mu (it serializes
 * the installs too). */
static hr_status do_sync_schedule(hr_cluster *c, hr_error *err)
{
    redisReply *rep = NULL;
    hr_status st = hr_redis_call(c->aux, &rep, err, "HGET", c->sched_key, "version", NULL);
    if (st != HR_OK)
        return st;
    uint64_t want = rep->type == REDIS_REPLY_STRING ? strtoull(rep->str, NULL, 10) : 0;
    freeReplyObject(rep);
    for (uint64_t v = hr_schedbox_current(c->p.sched)->version + 1; v <= want; v++) {
        char field[24];
        snprintf(field, sizeof field, "%" PRIu64, v);
        if ((st = hr_redis_call(c->aux, &rep, err, "HGET", c->sched_key, field, NULL)) != HR_OK)
            return st;
        json_t *j = rep->type == REDIS_REPLY_STRING ? json_loadb(rep->str, rep->len, 0, NULL) : NULL;
        freeReplyObject(rep);
        hr_schedule s;
        st = j ? hr_schedule_from_json(j, &s, err)
               : hr_error_set(err, HR_EINVAL, "schedule", "version %" PRIu64 " missing in %s", v,
                              c->sched_key);
        json_decref(j);
        uint64_t got = 0;
        if (st == HR_OK)
            st = hr_schedbox_swap(c->p.sched, &s, hr_trainer_updates(c->p.trainer), NAN, &got, err);
        if (st != HR_OK)
            return st;
        hr_log("info", "schedule changed", json_pack("{s:I,s:s}", "version", (json_int_t)got,
                                                     "from", "cluster"));
    }
    return HR_OK;
}

hr_status hr_cluster_schedule_put(hr_cluster *c, const hr_schedule *s, uint64_t *version,
                                  hr_error *err)
{
    *version = 0;
    json_t *j = hr_schedule_to_json(s);
    json_object_del(j, "version");
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!text)
        return hr_error_set(err, HR_ENOMEM, NULL, "out of memory");
    const char *argv[] = {c->sched_key, text};
    redisReply *rep = NULL;
    pthread_mutex_lock(&c->aux_mu);
    hr_status st = hr_redis_eval(c->aux, sched_put_lua, 1, 2, argv, NULL, &rep, err);
    if (st == HR_OK) {
        *version = rep->type == REDIS_REPLY_INTEGER ? (uint64_t)rep->integer : 0;
        freeReplyObject(rep);
        st = do_sync_schedule(c, err);
    }
    pthread_mutex_unlock(&c->aux_mu);
    free(text);
    return st;
}

/* The node thread's pick-up of schedule changes made on other nodes. */
static void sync_schedule(hr_cluster *c)
{
    hr_error err = {{0}, {0}};
    pthread_mutex_lock(&c->aux_mu);
    hr_status st = do_sync_schedule(c, &err);
    pthread_mutex_unlock(&c->aux_mu);
    if (st != HR_OK)
        log_redis_error(c, "cannot take the cluster's schedule", st, &err);
}

/* ---- figures ---- */

/* The lag of this node's model behind the event stream, and the
 * connections' reconnects, for hr_cluster_get_counts (node thread, every
 * heartbeat: two Redis calls). */
static void measure_lag(hr_cluster *c)
{
    pthread_mutex_lock(&c->mu);
    hr_estream_id cov = c->covered;
    pthread_mutex_unlock(&c->mu);
    uint64_t backlog = 0, ordinal = 0;
    hr_estream_id last = {0, 0};
    hr_error err = {{0}, {0}};
    hr_status st = hr_estream_backlog(c->append, cov, &backlog, &err);
    if (st == HR_OK)
        st = hr_estream_last(c->reader, &last, &ordinal, &err);
    pthread_mutex_lock(&c->aux_mu);
    uint64_t reconnects = hr_redis_reconnects(c->aux);
    pthread_mutex_unlock(&c->aux_mu);
    reconnects += hr_redis_reconnects(c->conn);
    pthread_mutex_lock(&c->mu);
    if (st == HR_OK) {
        c->lag_entries = backlog;
        c->lag_ms = backlog > 0 && last.ms > cov.ms ? last.ms - cov.ms : 0;
    }
    c->reconnects = reconnects;
    pthread_mutex_unlock(&c->mu);
    if (st != HR_OK)
        log_redis_error(c, "cannot measure the lag", st, &err);
}

void hr_cluster_get_counts(hr_cluster *c, hr_cluster_counts *out)
{
    memset(out, 0, sizeof *out);
    if (!c)
        return;
    out->enabled = true;
    out->ready = hr_cluster_not_ready(c) == NULL;
    pthread_mutex_lock(&c->mu);
    out->leader = c->role == ROLE_LEADER;
    out->epoch = c->epoch > 0 ? (uint64_t)c->epoch : 0;
    out->deltas_applied = c->deltas_applied;
    out->deltas_published = c->deltas_published;
    out->lag_entries = c->lag_entries;
    out->lag_ms = c->lag_ms;
    out->redis_reconnects = c->reconnects;
    out->lease_reclaims = c->reclaims;
    pthread_mutex_unlock(&c->mu);
    out->redis_errors = atomic_load(&c->redis_errors);
}

static void *node_main(void *arg)
{
    hr_cluster *c = arg;
    /* The deltas that exist now: applied before this node is ready. */
    while (!atomic_load(&c->stop)) {
        hr_estream_id t;
        hr_error err = {{0}, {0}};
        hr_status st = deltas_last(c, c->conn, &t, &err);
        if (st == HR_OK) {
            pthread_mutex_lock(&c->mu);
            c->delta_target = t;
            c->target_known = true;
            pthread_mutex_unlock(&c->mu);
            break;
        }
        log_redis_error(c, "cannot read the delta stream", st, &err);
        sleep_ms(RETRY_MS);
    }
    uint64_t next_hb = 0, next_try = 0, next_pub = 0, next_sched = 0;
    while (!atomic_load(&c->stop)) {
        uint64_t now = now_ms();
        if (now >= next_hb) {
            measure_lag(c);
            heartbeat(c);
            next_hb = now + HEARTBEAT_MS;
        }
        if (now >= next_sched) {
            sync_schedule(c);
            next_sched = now + SCHEDULE_POLL_MS;
        }
        pthread_mutex_lock(&c->mu);
        role_t role = c->role;
        bool caught_up = c->target_known && hr_estream_id_cmp(c->applied, c->delta_target) >= 0;
        bool broken = c->broken != NULL;
        bool boot = c->need_boot;
        pthread_mutex_unlock(&c->mu);
        if (boot || broken || role == ROLE_STARTING || role == ROLE_STEPPED_DOWN)
            refuse_snapshot(c, "this node is not ready");
        if (boot && role != ROLE_LEADER) {
            bootstrap_step(c);
            continue;
        }
        if (role == ROLE_LEADER) {
            lead(c, &next_pub);
            continue;
        }
        int n = 0;
        if (role != ROLE_STARTING || !caught_up)
            n = follow(c, role == ROLE_STARTING ? 0 : FOLLOW_BLOCK_MS);
        if (role == ROLE_FOLLOWER) {
            serve_snapshot(c);
            local_checkpoint(c, false);
        }
        if (role == ROLE_STARTING && n > 0)
            continue; /* catching up: read on before trying the lease */
        /* A node that never led tries the lease at start and whenever it
         * may be free (every lease_ms / 3). */
        if (role != ROLE_STEPPED_DOWN && !broken && now_ms() >= next_try && n >= 0 &&
            !outage_grace(c, role)) {
            next_try = now_ms() + (uint64_t)(c->lease_ms / 3);
            try_lead(c);
            next_pub = now_ms();
        }
    }
    refuse_snapshot(c, "this node is stopping");
    return NULL;
}

hr_status hr_cluster_start(hr_cluster *c, hr_error *err)
{
    if (c->started)
        return HR_OK;
    if (pthread_create(&c->thread, NULL, node_main, c) != 0)
        return hr_error_set(err, HR_ENOMEM, NULL, "cannot start the cluster node thread");
    c->started = true;
    return HR_OK;
}

void hr_cluster_stop(hr_cluster *c)
{
    if (!c || !c->started)
        return;
    atomic_store(&c->stop, true);
    pthread_join(c->thread, NULL);
    c->started = false;
    hr_lease_stop_renewal(c->lease);
    hr_error err = {{0}, {0}};
    pthread_mutex_lock(&c->mu);
    bool leader = c->role == ROLE_LEADER;
    pthread_mutex_unlock(&c->mu);
    if (leader) {
        /* What the trainers did since the last delta is published first,
         * so a successor starts from it. */
        hr_trainer_wait_idle(c->p.trainer);
        publish(c);
        if (c->pending)
            send_parts(c);
    }
    local_checkpoint(c, true); /* a clean stop leaves the model at its last delta */
    if (leader) {
        bool released = false;
        hr_lease_release(c->lease, &released, &err);
        hr_log("info", "lease released", json_pack("{s:b}", "released", released));
    }
    hr_lease_leave(c->lease, &err);
}

void hr_cluster_destroy(hr_cluster *c)
{
    if (!c)
        return;
    hr_cluster_stop(c);
    hr_lease_destroy(c->lease);
    hr_estream_destroy(c->append);
    hr_estream_destroy(c->reader);
    hr_redis_destroy(c->conn);
    hr_redis_destroy(c->lconn);
    hr_redis_destroy(c->aux);
    hr_watermark_destroy(c->covered_wm);
    hr_delta_buf_free(&c->buf);
    hr_delta_parts_free(&c->held);
    free(c->fed);
    free(c->evs);
    free(c->ids);
    free(c->arrived);
    pthread_mutex_destroy(&c->mu);
    pthread_mutex_destroy(&c->aux_mu);
    snap_fini(c);
    free(c);
}

/* ---- events ---- */

typedef struct {
    hr_cluster *c;
    char *entry;
    size_t cap;
} append_ctx;

/* hr_events_append_fn: one hr_estream_append. */
static hr_status append_entry(void *arg, size_t n, const char *const *text, const size_t *len,
                              const uint64_t *id_hash, double arrived, bool *duplicate,
                              size_t *appended, hr_error *err)
{
    append_ctx *a = arg;
    hr_estream_appended out;
    hr_status st = hr_estream_append(a->c->append, n, text, len, id_hash, arrived, duplicate,
                                     &out, err);
    if (st != HR_OK)
        atomic_fetch_add(&a->c->redis_errors, 1);
    if (st == HR_EFULL) /* Redis out of memory: not the 429 of a backlog */
        st = HR_EIO;
    if (st != HR_OK)
        return st;
    *appended = out.appended;
    if (out.ordinal > 0) {
        char b[HR_ESTREAM_ID_LEN];
        snprintf(a->entry, a->cap, "%s", hr_estream_id_format(out.id, b));
    }
    return HR_OK;
}

hr_status hr_cluster_post(hr_cluster *c, const json_t *events, json_t *errors,
                          hr_events_outcome *out, char *entry, size_t cap, hr_error *err)
{
    entry[0] = 0;
    hr_status st = check_backlog(c, "resend the whole request", err);
    if (st != HR_OK) {
        memset(out, 0, sizeof *out);
        return st;
    }
    append_ctx a = {c, entry, cap};
    return hr_events_post_append(c->p.events, events, errors, append_entry, &a, out, err);
}

/* ---- readiness and status ---- */

const char *hr_cluster_not_ready(hr_cluster *c)
{
    const char *why = NULL;
    pthread_mutex_lock(&c->mu);
    if (c->broken)
        why = c->broken;
    else if (c->need_boot)
        why = "bootstrapping: waiting for a snapshot from a peer (the deltas it needs were trimmed)";
    else if (c->role == ROLE_STEPPED_DOWN)
        why = "stepped down from leader: restart this node";
    else if (c->role == ROLE_LEADER)
        why = hr_estream_id_cmp(c->read_after, c->events_target) >= 0
                  ? NULL
                  : "the leader is reading the event stream up to its end";
    else if (c->role == ROLE_STARTING)
        why = "applying the delta stream";
    else
        why = c->target_known && hr_estream_id_cmp(c->applied, c->delta_target) >= 0
                  ? NULL
                  : "applying the delta stream";
    pthread_mutex_unlock(&c->mu);
    return why;
}

/* The events in this node's model: the sum of the item rows' event counts
 * (a row's count is carried by the deltas with its weights; each trained
 * event adds one to its item's row, negatives none). Read without a lock
 * while the trainers may write: a figure for a quiet model. */
static uint64_t events_counted(const hr_model *m)
{
    const hr_row_layout *L = hr_model_layout(m);
    uint64_t sum = 0;
    uint32_t rows = hr_model_rows(m, HR_TABLE_ITEM);
    for (uint32_t r = 1; r < rows; r++)
        sum += hr_sgd_row_count(L, hr_model_row(m, HR_TABLE_ITEM, r));
    return sum;
}

json_t *hr_cluster_status_json(hr_cluster *c)
{
    const char *not_ready = hr_cluster_not_ready(c);
    pthread_mutex_lock(&c->mu);
    json_t *o = json_pack(
        "{s:s,s:s,s:s,s:s,s:I,s:s,s:b,s:o,s:{s:o,s:o,s:I,s:I,s:I}}", "mode", "cluster", "cluster",
        c->name, "node_id", c->node_id, "role", role_name(c->role), "epoch", (json_int_t)c->epoch,
        "leader", c->leader, "ready", not_ready == NULL, "delta_stream", json_string(c->deltas_key),
        "applied", "delta", id_json(c->applied), "covered_entry", id_json(c->covered),
        "deltas_applied", (json_int_t)c->deltas_applied, "deltas_published",
        (json_int_t)c->deltas_published, "delta_bytes", (json_int_t)c->delta_bytes);
    if (not_ready)
        json_object_set_new(o, "not_ready", json_string(not_ready));
    if (c->broken)
        json_object_set_new(o, "broken", json_string(c->broken_detail));
    json_object_set_new(o, "snapshots",
                        json_pack("{s:b,s:I,s:I}", "bootstrapping", c->need_boot, "loaded",
                                  (json_int_t)c->bootstraps, "served",
                                  (json_int_t)c->snapshots_served));
    if (c->need_boot)
        json_object_set_new(o, "bootstrap", json_string(c->boot_why));
    hr_estream_id cov = c->covered, read_after = c->read_after, applied = c->applied;
    role_t role = c->role;
    uint64_t fed = c->events_fed;
    pthread_mutex_unlock(&c->mu);

    json_t *lag = json_object();
    hr_error err = {{0}, {0}};
    hr_status st = HR_OK;
    uint64_t backlog = 0;
    if ((st = hr_estream_backlog(c->append, cov, &backlog, &err)) == HR_OK)
        json_object_set_new(lag, "entries_not_covered", json_integer((json_int_t)backlog));
    if (st == HR_OK && role == ROLE_LEADER) {
        json_object_set_new(lag, "events_fed", json_integer((json_int_t)fed));
        if ((st = hr_estream_backlog(c->append, read_after, &backlog, &err)) == HR_OK)
            json_object_set_new(lag, "entries_unread", json_integer((json_int_t)backlog));
    }
    hr_estream_id last;
    if (st == HR_OK) {
        pthread_mutex_lock(&c->aux_mu);
        st = deltas_last(c, c->aux, &last, &err);
        pthread_mutex_unlock(&c->aux_mu);
        if (st == HR_OK) {
            json_object_set_new(lag, "last_delta", id_json(last));
            json_object_set_new(lag, "deltas_caught_up",
                                json_boolean(hr_estream_id_cmp(applied, last) >= 0));
        }
    }
    json_object_set_new(o, "lag", lag);
    json_object_set_new(o, "model", json_pack("{s:I}", "events_counted",
                                              (json_int_t)events_counted(c->p.model)));
    json_t *members = json_array();
    hr_lease_member *m = NULL;
    size_t n = 0;
    if (st == HR_OK && (st = hr_lease_members(c->lease, &m, &n, &err)) == HR_OK) {
        for (size_t i = 0; i < n; i++) {
            json_t *e = m[i].entry ? json_deep_copy(m[i].entry) : json_object();
            json_object_set_new(e, "node_id", json_string(m[i].node_id));
            json_object_set_new(e, "age_ms", json_integer((json_int_t)m[i].age_ms));
            json_object_set_new(e, "stale", json_boolean(m[i].stale));
            json_array_append_new(members, e);
        }
        hr_lease_members_free(m, n);
    }
    json_object_set_new(o, "members", members);
    if (st != HR_OK)
        json_object_set_new(o, "redis_error", json_string(err.message));
    return o;
}

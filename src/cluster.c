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
 * Delta stream entries: one per part, field "d" the part's bytes (plus
 * "e" epoch and "s" delta number, for people reading the stream).
 *
 * Shared state (role, ids, reasons) is under `mu`; the node thread is its
 * only writer apart from `lost` (atomic, set by the renewal thread).
 */
#include "hogrec/cluster.h"

#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "hogrec/api.h"
#include "hogrec/delta.h"
#include "hogrec/estream.h"
#include "hogrec/lease.h"
#include "hogrec/log.h"
#include "hogrec/redis.h"
#include "hogrec/sgd.h"
#include "hogrec/watermark.h"

#define HEARTBEAT_MS 1000       /* membership heartbeat period */
#define FOLLOW_BLOCK_MS 100     /* a follower's XREAD BLOCK */
#define FOLLOW_COUNT "64"       /* delta parts per XREAD */
#define READ_ENTRIES 256        /* event entries per leader read */
#define PART_BYTES (4u << 20)   /* largest delta part (one stream entry) */
#define RETRY_MS 50             /* pause after a failed Redis call */
#define SCHEDULE_POLL_MS 100    /* the node thread looks for schedule changes */

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
    hr_estream_id read_after;    /* leader: last entry read */
    hr_estream_id events_target; /* leader: the event stream's last id when it took over */
    const char *broken;          /* why the delta stream cannot be followed; NULL */
    char broken_detail[256];
    uint64_t deltas_applied, deltas_published, delta_bytes, events_fed;
    uint64_t lag_entries, lag_ms;  /* measured by the node thread (measure_lag) */
    uint64_t reconnects;           /* of conn and aux, as the node thread last saw */

    /* node thread only */
    hr_delta_state dst;
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
    if (cfg->db[0])
        return hr_error_set(err, HR_EINVAL, "db",
                            "cluster mode keeps no local database in this version (a node "
                            "rebuilds from the delta stream at start): pass --db \"\"");
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

/* Whether the delta stream ever lost entries (XINFO STREAM's
 * max-deleted-entry-id is not 0-0). A missing stream lost none. */
static hr_status deltas_trimmed(hr_cluster *c, bool *trimmed, hr_error *err)
{
    *trimmed = false;
    redisReply *rep = NULL;
    hr_status st = hr_redis_call(c->aux, &rep, err, "EXISTS", c->deltas_key, NULL);
    if (st != HR_OK)
        return st;
    bool exists = rep->type == REDIS_REPLY_INTEGER && rep->integer > 0;
    freeReplyObject(rep);
    if (!exists)
        return HR_OK;
    if ((st = hr_redis_call(c->aux, &rep, err, "XINFO", "STREAM", c->deltas_key, NULL)) != HR_OK)
        return st;
    for (size_t i = 0; rep->type == REDIS_REPLY_ARRAY && i + 1 < rep->elements; i += 2) {
        redisReply *k = rep->element[i], *v = rep->element[i + 1];
        if (k->type == REDIS_REPLY_STRING && !strcmp(k->str, "max-deleted-entry-id") &&
            (v->type == REDIS_REPLY_STRING || v->type == REDIS_REPLY_STATUS))
            *trimmed = strcmp(v->str, "0-0") != 0;
    }
    freeReplyObject(rep);
    return HR_OK;
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
    bool trimmed;
    if ((st = deltas_trimmed(c, &trimmed, err)) != HR_OK)
        goto fail;
    if (trimmed) {
        st = hr_error_set(err, HR_EINVAL, "redis",
                          "the delta stream %s was trimmed: this node cannot rebuild the model "
                          "from it, and bootstrapping from a snapshot is not in this version",
                          c->deltas_key);
        goto fail;
    }
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
    forget_initial_marks(c->p.model);
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

/* Publishes the entry the model now covers to the min_seq waiters. */
static void note_covered(hr_cluster *c, hr_estream_id covered)
{
    hr_watermark_publish(c->covered_wm, hr_cluster_entry_pack(covered.ms, covered.seq));
}

hr_watermark *hr_cluster_applied(hr_cluster *c)
{
    return c->covered_wm;
}

bool hr_cluster_covers(hr_cluster *c, uint64_t ms, uint64_t seq, char *entry, size_t cap)
{
    pthread_mutex_lock(&c->mu);
    hr_estream_id cov = c->covered;
    pthread_mutex_unlock(&c->mu);
    char b[HR_ESTREAM_ID_LEN];
    snprintf(entry, cap, "%s", hr_estream_id_format(cov, b));
    return cov.ms > ms || (cov.ms == ms && cov.seq >= seq);
}

/* ---- follower: the delta stream ---- */

/* Applies one part (the stream entry `id`). false when it cannot be
 * applied: the node is broken (logged). */
static bool apply_part(hr_cluster *c, hr_estream_id id, const void *data, size_t len)
{
    hr_error err = {{0}, {0}};
    hr_status st = hr_delta_apply(c->p.model, data, len, &c->dst, &err);
    char b[HR_ESTREAM_ID_LEN];
    pthread_mutex_lock(&c->mu);
    if (st != HR_OK) {
        c->broken = st == HR_ENOTFOUND ? "a delta is missing (bootstrap needed, not in this version)"
                                       : "a delta cannot be applied";
        snprintf(c->broken_detail, sizeof c->broken_detail, "%s", err.message);
        pthread_mutex_unlock(&c->mu);
        hr_log("error", "delta refused: this node stops following",
               json_pack("{s:s,s:s,s:s}", "entry", hr_estream_id_format(id, b), "status",
                         hr_status_to_string(st), "detail", err.message));
        return false;
    }
    c->applied = id;
    if (!c->dst.stale) {
        c->deltas_applied += c->dst.complete;
        c->epoch = (int64_t)c->dst.epoch;
        hr_estream_id cov;
        if (c->dst.complete && c->dst.event_id[0] &&
            hr_estream_id_parse(c->dst.event_id, &cov, NULL) == HR_OK)
            c->covered = cov;
    }
    hr_estream_id covered = c->covered;
    pthread_mutex_unlock(&c->mu);
    note_covered(c, covered);
    return true;
}

/* One XREAD of the delta stream after the last part applied, blocking up
 * to block_ms (0: not at all); applies what came. Returns the parts read,
 * or -1 on a Redis error (logged, after a short pause). */
static int follow(hr_cluster *c, int block_ms)
{
    char after[HR_ESTREAM_ID_LEN], block[16];
    pthread_mutex_lock(&c->mu);
    hr_estream_id_format(c->applied, after);
    bool broken = c->broken != NULL;
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
    return n;
}

/* The delta stream's last id ({0, 0} when empty or missing). */
static hr_status deltas_last(hr_cluster *c, hr_redis *r, hr_estream_id *last, hr_error *err)
{
    *last = (hr_estream_id){0, 0};
    redisReply *rep = NULL;
    hr_status st = hr_redis_call(r, &rep, err, "XREVRANGE", c->deltas_key, "+", "-", "COUNT", "1",
                                 NULL);
    if (st != HR_OK)
        return st;
    if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 1 &&
        rep->element[0]->type == REDIS_REPLY_ARRAY && rep->element[0]->elements >= 1 &&
        rep->element[0]->element[0]->type == REDIS_REPLY_STRING)
        st = hr_estream_id_parse(rep->element[0]->element[0]->str, last, err);
    freeReplyObject(rep);
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

/* hr_estream_entry_fn of the leader's read: the entry's events parsed,
 * numbered and fed to the serving state and the trainers. */
static hr_status feed_entry(void *arg, const hr_estream_entry *e)
{
    hr_cluster *c = arg;
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
    size_t m = 0;
    for (size_t i = 0; i < e->n; i++) {
        json_error_t jerr;
        json_t *obj = json_loadb(e->text[i], e->len[i], 0, &jerr);
        hr_error err = {{0}, {0}};
        hr_status st = obj ? hr_api_event_from_json(c->p.model, obj, &c->evs[m], NULL, &err)
                           : HR_EINVAL;
        json_decref(obj);
        if (st != HR_OK) {
            if (c->skipped++ == 0) {
                char b[HR_ESTREAM_ID_LEN];
                hr_log("warn", "an event of the stream cannot be trained (later ones are not logged)",
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
    if (m > 0) {
        hr_status st = hr_events_replay(c->p.events, c->evs, c->ids, c->arrived, m);
        if (st != HR_OK)
            return st;
    }
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
    char es[24], ss[24];
    snprintf(es, sizeof es, "%" PRId64, c->epoch);
    snprintf(ss, sizeof ss, "%" PRIu64, c->dseq);
    while (c->part_next < c->buf.nparts) {
        size_t i = c->part_next, from = i ? c->buf.ends[i - 1] : 0, len = c->buf.ends[i] - from;
        const char *argv[] = {"*", "e", es, "s", ss, "d", (const char *)c->buf.data + from};
        const size_t lens[] = {1, 1, strlen(es), 1, strlen(ss), 1, len};
        char id[HR_ESTREAM_ID_LEN];
        hr_error err = {{0}, {0}};
        hr_status st = hr_lease_fenced_xadd(c->lease, c->conn, c->epoch, c->deltas_key, 7, argv,
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
    bool ok = c->broken == NULL;
    pthread_mutex_unlock(&c->mu);
    return ok;
}

/* Takes the lease if it is free; then becomes the leader from what the
 * delta stream holds. */
static void try_lead(hr_cluster *c)
{
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
    bool ok = follow_to_end(c);
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
    }
}

static void heartbeat(hr_cluster *c)
{
    char b1[HR_ESTREAM_ID_LEN], b2[HR_ESTREAM_ID_LEN], addr[sizeof c->address];
    pthread_mutex_lock(&c->mu);
    json_t *lag = json_pack("{s:s,s:s}", "applied_delta", hr_estream_id_format(c->applied, b1),
                            "covered_entry", hr_estream_id_format(c->covered, b2));
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
        pthread_mutex_unlock(&c->mu);
        if (role == ROLE_LEADER) {
            lead(c, &next_pub);
            continue;
        }
        int n = 0;
        if (role != ROLE_STARTING || !caught_up)
            n = follow(c, role == ROLE_STARTING ? 0 : FOLLOW_BLOCK_MS);
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
    free(c->fed);
    free(c->evs);
    free(c->ids);
    free(c->arrived);
    pthread_mutex_destroy(&c->mu);
    pthread_mutex_destroy(&c->aux_mu);
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
    if (c->max_backlog > 0) {
        pthread_mutex_lock(&c->mu);
        hr_estream_id cov = c->covered;
        pthread_mutex_unlock(&c->mu);
        uint64_t backlog = 0;
        hr_status st = hr_estream_backlog(c->append, cov, &backlog, err);
        if (st != HR_OK) {
            memset(out, 0, sizeof *out);
            return st == HR_EFULL ? HR_EIO : st;
        }
        if (backlog > (uint64_t)c->max_backlog) {
            memset(out, 0, sizeof *out);
            return hr_error_set(err, HR_EFULL, NULL,
                                "%" PRIu64 " requests wait to be trained (max_backlog %" PRId64
                                "); nothing was accepted, resend the whole request",
                                backlog, c->max_backlog);
        }
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

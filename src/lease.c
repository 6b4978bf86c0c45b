/*
 * lease.c - the leader lease, its fencing epoch and membership (see
 * lease.h): one Lua script per step over the lease's connection, and the
 * renewal thread.
 *
 * Design: every step that reads and then writes the leader key is a
 * script, so no other client's command runs in between (Redis runs a
 * script alone). The lease keeps "<node_id> <epoch>" of its own
 * acquisition; renew and release compare the key against exactly that
 * string, so an older incarnation of the same node id never renews a
 * newer one's lease.
 *
 * The renewal thread renews every ttl/3. It counts the lease lost when the
 * key holds anything else, and also when no renewal has succeeded for
 * ttl_ms since the start of the last good one: by then the key may have
 * expired in Redis, so the holder must act as if it had.
 *
 * Threads: mu serializes the connection and the held state; the callback
 * runs without it.
 */
#include "hogrec/lease.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct hr_lease {
    hr_redis *r;                      /* borrowed; used under mu */
    int ttl_ms;
    char node_id[HR_LEASE_NAME_MAX + 1];
    char prefix[HR_LEASE_NAME_MAX + 16]; /* "hogrec:{C}:" */
    char leader_key[HR_LEASE_NAME_MAX + 32];
    char epoch_key[HR_LEASE_NAME_MAX + 32];
    char members_key[HR_LEASE_NAME_MAX + 32];
    pthread_mutex_t mu;
    int64_t epoch;                    /* held epoch, 0 when none; under mu */
    char value[2 * HR_LEASE_NAME_MAX]; /* "<node_id> <epoch>" when held; under mu */

    /* renewal thread */
    pthread_t thread;
    bool running;                     /* a thread was started and not joined */
    pthread_mutex_t stop_mu;
    pthread_cond_t stop_cv;           /* CLOCK_MONOTONIC */
    bool stop;                        /* under stop_mu */
    hr_lease_lost_fn lost;
    void *lost_arg;
};

/* Acquire: KEYS leader, epoch; ARGV node_id, ttl_ms.
 * Returns {1, node_id, epoch} when taken, else {0, holder, epoch}. */
static const char acquire_lua[] =
    "local cur = redis.call('GET', KEYS[1]) "
    "if cur then "
    "  local h, e = string.match(cur, '^(%S+) (%d+)$') "
    "  return {0, h or cur, e or '0'} "
    "end "
    "local e = redis.call('INCR', KEYS[2]) "
    "redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. e, 'PX', ARGV[2]) "
    "return {1, ARGV[1], tostring(e)}";

/* Renew: KEYS leader, epoch; ARGV value, ttl_ms.
 * Returns {1, value} when extended, else {0, current value or '', last epoch}. */
static const char renew_lua[] =
    "local cur = redis.call('GET', KEYS[1]) "
    "if cur == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return {1, cur} end "
    "return {0, cur or '', redis.call('GET', KEYS[2]) or '0'}";

/* Reclaim: KEYS leader, epoch; ARGV value, ttl_ms, epoch. Returns {1}
 * when the key is (again) this value, else {0, current value or '', last
 * epoch}. */
static const char reclaim_lua[] =
    "local e = redis.call('GET', KEYS[2]) or '0' "
    "local cur = redis.call('GET', KEYS[1]) "
    "if e == ARGV[3] and (cur == ARGV[1] or not cur) then "
    "  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return {1} "
    "end "
    "return {0, cur or '', e}";

/* Release: KEYS leader; ARGV value. Returns 1 when deleted. */
static const char release_lua[] =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end "
    "return 0";

/* Fenced XADD: KEYS epoch, stream; ARGV epoch, the XADD arguments. */
static const char fenced_xadd_lua[] =
    HR_LEASE_FENCE_LUA "return redis.call('XADD', KEYS[2], unpack(ARGV, 2))";

/* Heartbeat: KEYS members; ARGV node_id, entry JSON without last_seen_ms
 * (an object with at least one member). Adds last_seen_ms from TIME. */
static const char heartbeat_lua[] =
    "local t = redis.call('TIME') "
    "local ms = t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000)) "
    "redis.call('HSET', KEYS[1], ARGV[1], '{\"last_seen_ms\":' .. ms .. ',' .. "
    "string.sub(ARGV[2], 2)) "
    "return ms";

/* Members: KEYS members. Returns {now_ms, {field, value, ...}}. */
static const char members_lua[] =
    "local t = redis.call('TIME') "
    "local ms = t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000)) "
    "return {ms, redis.call('HGETALL', KEYS[1])}";

static bool valid_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > HR_LEASE_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-' || c == ':'))
            return false;
    }
    return true;
}

hr_status hr_lease_create(hr_redis *r, const char *cluster, const char *node_id, int ttl_ms,
                          hr_lease **out, hr_error *err)
{
    *out = NULL;
    if (!cluster || !valid_name(cluster))
        return hr_error_set(err, HR_EINVAL, "cluster",
                            "cluster name: 1-%d letters, digits, '.', '_', '-', ':'", HR_LEASE_NAME_MAX);
    if (!node_id || !valid_name(node_id))
        return hr_error_set(err, HR_EINVAL, "node_id",
                            "node id: 1-%d letters, digits, '.', '_', '-', ':'", HR_LEASE_NAME_MAX);
    if (ttl_ms < 30)
        return hr_error_set(err, HR_EINVAL, "ttl_ms", "lease ttl %d ms: at least 30", ttl_ms);
    hr_lease *l = calloc(1, sizeof *l);
    if (!l)
        return hr_error_set(err, HR_ENOMEM, NULL, "out of memory");
    l->r = r;
    l->ttl_ms = ttl_ms;
    snprintf(l->node_id, sizeof l->node_id, "%s", node_id);
    snprintf(l->prefix, sizeof l->prefix, "hogrec:{%s}:", cluster);
    snprintf(l->leader_key, sizeof l->leader_key, "%sleader", l->prefix);
    snprintf(l->epoch_key, sizeof l->epoch_key, "%sepoch", l->prefix);
    snprintf(l->members_key, sizeof l->members_key, "%smembers", l->prefix);
    pthread_mutex_init(&l->mu, NULL);
    pthread_mutex_init(&l->stop_mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&l->stop_cv, &ca);
    pthread_condattr_destroy(&ca);
    *out = l;
    return HR_OK;
}

void hr_lease_destroy(hr_lease *l)
{
    if (!l)
        return;
    hr_lease_stop_renewal(l);
    pthread_cond_destroy(&l->stop_cv);
    pthread_mutex_destroy(&l->stop_mu);
    pthread_mutex_destroy(&l->mu);
    free(l);
}

const char *hr_lease_key_prefix(const hr_lease *l)
{
    return l->prefix;
}

const char *hr_lease_epoch_key(const hr_lease *l)
{
    return l->epoch_key;
}

int64_t hr_lease_epoch(hr_lease *l)
{
    pthread_mutex_lock(&l->mu);
    int64_t e = l->epoch;
    pthread_mutex_unlock(&l->mu);
    return e;
}

/* Element i of an array reply as a string ("" if absent). */
static const char *elem_str(const redisReply *rep, size_t i)
{
    if (rep->type != REDIS_REPLY_ARRAY || i >= rep->elements)
        return "";
    const redisReply *e = rep->element[i];
    return e->type == REDIS_REPLY_STRING || e->type == REDIS_REPLY_STATUS ? e->str : "";
}

static int64_t elem_int(const redisReply *rep, size_t i)
{
    if (rep->type != REDIS_REPLY_ARRAY || i >= rep->elements)
        return 0;
    const redisReply *e = rep->element[i];
    if (e->type == REDIS_REPLY_INTEGER)
        return e->integer;
    return e->type == REDIS_REPLY_STRING ? strtoll(e->str, NULL, 10) : 0;
}

/* Fills st from a leader value "<holder> <epoch>" ("" = free, epoch
 * then from fallback). */
static void parse_value(const char *value, int64_t fallback, hr_lease_state *st)
{
    st->holder[0] = 0;
    st->epoch = fallback;
    const char *sp = strchr(value, ' ');
    if (!*value)
        return;
    size_t n = sp ? (size_t)(sp - value) : strlen(value);
    if (n > HR_LEASE_NAME_MAX)
        n = HR_LEASE_NAME_MAX;
    memcpy(st->holder, value, n);
    st->holder[n] = 0;
    st->epoch = sp ? strtoll(sp + 1, NULL, 10) : 0;
}

hr_status hr_lease_acquire(hr_lease *l, hr_lease_state *out, hr_error *err)
{
    memset(out, 0, sizeof *out);
    char ttl[16];
    snprintf(ttl, sizeof ttl, "%d", l->ttl_ms);
    const char *argv[] = {l->leader_key, l->epoch_key, l->node_id, ttl};
    redisReply *rep = NULL;
    pthread_mutex_lock(&l->mu);
    hr_status st = hr_redis_eval(l->r, acquire_lua, 2, 4, argv, NULL, &rep, err);
    if (st == HR_OK) {
        out->held = elem_int(rep, 0) == 1;
        snprintf(out->holder, sizeof out->holder, "%s", elem_str(rep, 1));
        out->epoch = strtoll(elem_str(rep, 2), NULL, 10);
        if (out->held) {
            l->epoch = out->epoch;
            snprintf(l->value, sizeof l->value, "%s %" PRId64, l->node_id, l->epoch);
        }
        freeReplyObject(rep);
    }
    pthread_mutex_unlock(&l->mu);
    return st;
}

/* Renews under mu (held by the caller). */
static hr_status do_renew(hr_lease *l, hr_lease_state *out, hr_error *err)
{
    memset(out, 0, sizeof *out);
    if (l->epoch == 0)
        return hr_error_set(err, HR_EINVAL, NULL, "lease renew: this node does not hold the lease");
    char ttl[16];
    snprintf(ttl, sizeof ttl, "%d", l->ttl_ms);
    const char *argv[] = {l->leader_key, l->epoch_key, l->value, ttl};
    redisReply *rep = NULL;
    hr_status st = hr_redis_eval(l->r, renew_lua, 2, 4, argv, NULL, &rep, err);
    if (st != HR_OK)
        return st;
    if (elem_int(rep, 0) == 1) {
        out->held = true;
        snprintf(out->holder, sizeof out->holder, "%s", l->node_id);
        out->epoch = l->epoch;
    } else {
        parse_value(elem_str(rep, 1), strtoll(elem_str(rep, 2), NULL, 10), out);
        l->epoch = 0;
        l->value[0] = 0;
    }
    freeReplyObject(rep);
    return HR_OK;
}

hr_status hr_lease_renew(hr_lease *l, hr_lease_state *out, hr_error *err)
{
    pthread_mutex_lock(&l->mu);
    hr_status st = do_renew(l, out, err);
    pthread_mutex_unlock(&l->mu);
    return st;
}

hr_status hr_lease_reclaim(hr_lease *l, int64_t epoch, hr_lease_state *out, hr_error *err)
{
    memset(out, 0, sizeof *out);
    if (epoch <= 0)
        return hr_error_set(err, HR_EINVAL, NULL, "lease reclaim: epoch %" PRId64, epoch);
    char ttl[16], ep[24], value[sizeof l->value];
    snprintf(ttl, sizeof ttl, "%d", l->ttl_ms);
    snprintf(ep, sizeof ep, "%" PRId64, epoch);
    snprintf(value, sizeof value, "%s %" PRId64, l->node_id, epoch);
    const char *argv[] = {l->leader_key, l->epoch_key, value, ttl, ep};
    redisReply *rep = NULL;
    pthread_mutex_lock(&l->mu);
    hr_status st = hr_redis_eval(l->r, reclaim_lua, 2, 5, argv, NULL, &rep, err);
    if (st == HR_OK) {
        if (elem_int(rep, 0) == 1) {
            out->held = true;
            snprintf(out->holder, sizeof out->holder, "%s", l->node_id);
            out->epoch = epoch;
            l->epoch = epoch;
            snprintf(l->value, sizeof l->value, "%s", value);
        } else {
            parse_value(elem_str(rep, 1), strtoll(elem_str(rep, 2), NULL, 10), out);
            if (!out->holder[0])
                out->epoch = strtoll(elem_str(rep, 2), NULL, 10);
        }
        freeReplyObject(rep);
    }
    pthread_mutex_unlock(&l->mu);
    return st;
}

hr_status hr_lease_release(hr_lease *l, bool *released, hr_error *err)
{
    if (released)
        *released = false;
    pthread_mutex_lock(&l->mu);
    hr_status st = HR_OK;
    if (l->epoch != 0) {
        const char *argv[] = {l->leader_key, l->value};
        redisReply *rep = NULL;
        st = hr_redis_eval(l->r, release_lua, 1, 2, argv, NULL, &rep, err);
        if (st == HR_OK) {
            if (released)
                *released = rep->type == REDIS_REPLY_INTEGER && rep->integer == 1;
            freeReplyObject(rep);
            l->epoch = 0;
            l->value[0] = 0;
        }
    }
    pthread_mutex_unlock(&l->mu);
    return st;
}

hr_status hr_lease_fenced_xadd(hr_lease *l, hr_redis *via, int64_t epoch, const char *stream,
                               int argc, const char **argv, const size_t *lens, char *id,
                               size_t cap, hr_error *err)
{
    if (id && cap)
        id[0] = 0;
    if (argc < 3)
        return hr_error_set(err, HR_EINVAL, NULL, "fenced XADD: needs an id and a field-value pair");
    int n = argc + 3;
    const char **av = malloc((size_t)n * sizeof *av);
    size_t *lv = malloc((size_t)n * sizeof *lv);
    if (!av || !lv) {
        free(av);
        free(lv);
        return hr_error_set(err, HR_ENOMEM, NULL, "out of memory");
    }
    char ep[24];
    snprintf(ep, sizeof ep, "%" PRId64, epoch);
    av[0] = l->epoch_key;
    av[1] = stream;
    av[2] = ep;
    for (int i = 0; i < 3; i++)
        lv[i] = strlen(av[i]);
    for (int i = 0; i < argc; i++) {
        av[3 + i] = argv[i];
        lv[3 + i] = lens ? lens[i] : strlen(argv[i]);
    }
    redisReply *rep = NULL;
    hr_status st;
    if (via) {
        st = hr_redis_eval(via, fenced_xadd_lua, 2, n, av, lv, &rep, err);
    } else {
        pthread_mutex_lock(&l->mu);
        st = hr_redis_eval(l->r, fenced_xadd_lua, 2, n, av, lv, &rep, err);
        pthread_mutex_unlock(&l->mu);
    }
    free(av);
    free(lv);
    if (st == HR_OK) {
        if (id && cap && rep->type == REDIS_REPLY_STRING)
            snprintf(id, cap, "%s", rep->str);
        freeReplyObject(rep);
    }
    return st;
}

/* ---- renewal thread ---- */

/* Waits until `until_ns` (hr_now_ns) or a stop; returns whether stopped. */
static bool wait_stop(hr_lease *l, uint64_t until_ns)
{
    pthread_mutex_lock(&l->stop_mu);
    while (!l->stop) {
        uint64_t now = hr_now_ns();
        if (now >= until_ns)
            break;
        struct timespec dl = hr_deadline_after((double)(until_ns - now) / 1e9);
        pthread_cond_timedwait(&l->stop_cv, &l->stop_mu, &dl);
    }
    bool stop = l->stop;
    pthread_mutex_unlock(&l->stop_mu);
    return stop;
}

static void *renewal_main(void *arg)
{
    hr_lease *l = arg;
    uint64_t period = (uint64_t)l->ttl_ms * 1000000u / 3u;
    uint64_t good = hr_now_ns(); /* start of the last successful renewal */
    for (;;) {
        if (wait_stop(l, hr_now_ns() + period))
            return NULL;
        uint64_t start = hr_now_ns();
        hr_lease_state st;
        hr_error err = {{0}, {0}};
        pthread_mutex_lock(&l->mu);
        hr_status s = do_renew(l, &st, &err);
        bool expired = false;
        if (s == HR_OK && st.held) {
            good = start;
        } else if (s != HR_OK && hr_now_ns() - good >= (uint64_t)l->ttl_ms * 1000000u) {
            expired = true; /* unknown for a whole ttl: count it lost */
            l->epoch = 0;
            l->value[0] = 0;
            memset(&st, 0, sizeof st);
        }
        pthread_mutex_unlock(&l->mu);
        if ((s == HR_OK && !st.held) || expired) {
            l->lost(l->lost_arg, &st);
            return NULL;
        }
    }
}

hr_status hr_lease_start_renewal(hr_lease *l, hr_lease_lost_fn lost, void *arg, hr_error *err)
{
    if (l->running)
        return hr_error_set(err, HR_EINVAL, NULL, "the renewal thread already runs");
    if (hr_lease_epoch(l) == 0)
        return hr_error_set(err, HR_EINVAL, NULL, "renewal: this node does not hold the lease");
    l->lost = lost;
    l->lost_arg = arg;
    l->stop = false;
    int rc = pthread_create(&l->thread, NULL, renewal_main, l);
    if (rc != 0)
        return hr_error_set(err, HR_EIO, NULL, "cannot start the lease renewal thread (%d)", rc);
    l->running = true;
    return HR_OK;
}

void hr_lease_stop_renewal(hr_lease *l)
{
    if (!l->running)
        return;
    pthread_mutex_lock(&l->stop_mu);
    l->stop = true;
    pthread_cond_broadcast(&l->stop_cv);
    pthread_mutex_unlock(&l->stop_mu);
    pthread_join(l->thread, NULL);
    l->running = false;
}

/* ---- membership ---- */

hr_status hr_lease_heartbeat(hr_lease *l, const hr_lease_member_info *info, hr_error *err)
{
    if (!info->address || !info->role || info->heartbeat_ms <= 0 ||
        (info->lag && !json_is_object(info->lag)))
        return hr_error_set(err, HR_EINVAL, NULL,
                            "heartbeat: address and role are required, heartbeat_ms > 0, lag "
                            "an object or NULL");
    json_t *o = json_pack("{s:s, s:s, s:I, s:i, s:O}", "address", info->address, "role",
                          info->role, "epoch", (json_int_t)info->epoch, "heartbeat_ms",
                          info->heartbeat_ms, "lag", info->lag ? (json_t *)info->lag : json_null());
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!text)
        return hr_error_set(err, HR_ENOMEM, NULL, "out of memory");
    const char *argv[] = {l->members_key, l->node_id, text};
    pthread_mutex_lock(&l->mu);
    hr_status st = hr_redis_eval(l->r, heartbeat_lua, 1, 3, argv, NULL, NULL, err);
    pthread_mutex_unlock(&l->mu);
    free(text);
    return st;
}

hr_status hr_lease_leave(hr_lease *l, hr_error *err)
{
    pthread_mutex_lock(&l->mu);
    hr_status st = hr_redis_call(l->r, NULL, err, "HDEL", l->members_key, l->node_id, NULL);
    pthread_mutex_unlock(&l->mu);
    return st;
}

static int member_cmp(const void *a, const void *b)
{
    return strcmp(((const hr_lease_member *)a)->node_id, ((const hr_lease_member *)b)->node_id);
}

hr_status hr_lease_members(hr_lease *l, hr_lease_member **out, size_t *n, hr_error *err)
{
    *out = NULL;
    *n = 0;
    const char *argv[] = {l->members_key};
    redisReply *rep = NULL;
    pthread_mutex_lock(&l->mu);
    hr_status st = hr_redis_eval(l->r, members_lua, 1, 1, argv, NULL, &rep, err);
    pthread_mutex_unlock(&l->mu);
    if (st != HR_OK)
        return st;
    int64_t now = strtoll(elem_str(rep, 0), NULL, 10);
    const redisReply *all = rep->elements == 2 ? rep->element[1] : NULL;
    size_t count = all && all->type == REDIS_REPLY_ARRAY ? all->elements / 2 : 0;
    hr_lease_member *m = calloc(count ? count : 1, sizeof *m);
    if (!m) {
        freeReplyObject(rep);
        return hr_error_set(err, HR_ENOMEM, NULL, "out of memory");
    }
    for (size_t i = 0; i < count; i++) {
        const redisReply *f = all->element[2 * i], *v = all->element[2 * i + 1];
        snprintf(m[i].node_id, sizeof m[i].node_id, "%s", f->str ? f->str : "");
        m[i].entry = v->str ? json_loadb(v->str, v->len, 0, NULL) : NULL;
        json_t *seen = json_object_get(m[i].entry, "last_seen_ms");
        json_t *hb = json_object_get(m[i].entry, "heartbeat_ms");
        if (!json_is_object(m[i].entry) || !json_is_integer(seen) || !json_is_integer(hb)) {
            json_decref(m[i].entry);
            m[i].entry = NULL;
            m[i].stale = true;
            continue;
        }
        m[i].age_ms = now - json_integer_value(seen);
        m[i].stale = m[i].age_ms > 3 * json_integer_value(hb);
    }
    freeReplyObject(rep);
    qsort(m, count, sizeof *m, member_cmp);
    *out = m;
    *n = count;
    return HR_OK;
}

void hr_lease_members_free(hr_lease_member *m, size_t n)
{
    if (!m)
        return;
    for (size_t i = 0; i < n; i++)
        json_decref(m[i].entry);
    free(m);
}

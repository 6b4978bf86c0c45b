/*
 * estream.c - the cluster's event stream on Redis (see estream.h): the
 * append script (de-duplication + one XADD), the reader (XREAD), the
 * backlog count, trim, and a small connection pool.
 *
 * DESIGN - why one Lua script per append (and not SET NX calls, then an
 * XADD): a request must cost one round trip, and the claims and the entry
 * must be one atomic step, or a crash between them would leave ids claimed
 * with no entry (their events lost: a resend is then a "duplicate"). The
 * script only reads until it knows what to keep (SMISMEMBER on the current
 * and previous bucket's id sets, a Lua table for repeats within the batch),
 * then writes the XADD first: a script that has written nothing can still
 * be refused (OOM) or fail (wrong type) with no effect, and once the XADD
 * is in, the remaining writes (the ordinal counter, SADD and PEXPIREAT of
 * the id set) do not fail on keys of ours. Redis replicates and logs the
 * script's effects as one MULTI/EXEC, so the AOF holds all or none of them.
 *
 * Why sets per window bucket and not a key per id (SET NX PX): 100 ids
 * were 200 commands inside the script (EXISTS, then SET), and Redis spent
 * its time there (bench_estream: 116k events/s against 210k with the sets,
 * 4 appenders, appendfsync always). A set member also costs less memory
 * than a key with an expiry.

 * The ordinal k: GET the counter + 1, stored in the entry and SET back in
 * the same script, so entries carry 1, 2, 3, ... in stream order. It makes
 * the backlog two O(log N) lookups (the last entry <= covered, or the first
 * after it) instead of a scan, and lets a reader notice trimmed gaps.
 *
 * Pool: connections are taken from a free list under mu and given back
 * after the round trip; a caller waits on a condition variable while all
 * are taken (bounded: each holder's call is bounded by the command
 * timeout). The hr_redis objects are used by one thread at a time (the
 * taker), as redis.h requires.
 *
 * Threads: any, concurrently (the pool); create/destroy alone.
 */
#include "hogrec/estream.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_CONNECTIONS 64
#define MAX_EVENTS 100000
#define HASH_HEX 16 /* hex digits of one id hash */

struct hr_estream {
    hr_estream_options opt;
    char cluster[HR_ESTREAM_CLUSTER_MAX + 1];
    int command_timeout_ms;     /* of every connection (bounds block_ms) */
    char key_stream[128];       /* hogrec:{C}:events */
    char key_count[128];        /* hogrec:{C}:events:n */
    char key_eid_prefix[128];   /* hogrec:{C}:eid: */
    pthread_mutex_t mu;         /* guards free_conn, n_free */
    pthread_cond_t cv;          /* signalled when a connection is given back */
    hr_redis *conn[MAX_CONNECTIONS]; /* every connection (owned) */
    hr_redis *free_conn[MAX_CONNECTIONS]; /* the ones not taken */
    int n_conn, n_free;
};

/* ---- the scripts ---- */

/* KEYS[1] stream, KEYS[2] ordinal counter. ARGV[1] window ms ("0": off),
 * ARGV[2] arrival time, ARGV[3] n, ARGV[4] the texts joined by '\n',
 * ARGV[5] the n hashes in hex (16 zeros: no id), ARGV[6] the id-set key
 * prefix. Returns {entry id or "", mask, k or 0}.
 * The id sets: bucket b = floor(server time ms / window) is the set
 * PREFIX<b>, expiring at the end of bucket b + 1; an id is a duplicate
 * when it is in bucket b or b - 1 (or earlier in the batch). So an id is
 * remembered at least one window and less than two, and a request costs a
 * few set commands (SMISMEMBER, SADD in chunks of 1000), not one key per
 * id. When nothing is a duplicate (the common case) the entry is made of
 * ARGV[4] and ARGV[5] as they came: no per-event string work. */
static const char append_script[] =
    "local window = tonumber(ARGV[1])\n"
    "local n = tonumber(ARGV[3])\n"
    "local hex = ARGV[5]\n"
    "local none = '0000000000000000'\n"
    "local want, at = {}, {}\n"
    "for i = 1, n do\n"
    "  local h = string.sub(hex, 16 * i - 15, 16 * i)\n"
    "  if h ~= none then want[#want + 1] = h; at[#at + 1] = i end\n"
    "end\n"
    "local dup, claim, seen, ndup = {}, {}, {}, 0\n"
    "local cur, expire_at\n"
    "if window > 0 and #want > 0 then\n"
    "  local t = redis.call('TIME')\n"
    "  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "  local b = math.floor(now / window)\n"
    "  cur = ARGV[6] .. string.format('%.0f', b)\n"
    "  local prev = ARGV[6] .. string.format('%.0f', b - 1)\n"
    "  expire_at = string.format('%.0f', (b + 2) * window)\n"
    "  for c = 1, #want, 1000 do\n"
    "    local chunk = {unpack(want, c, math.min(c + 999, #want))}\n"
    "    local in_cur = redis.call('SMISMEMBER', cur, unpack(chunk))\n"
    "    local in_prev = redis.call('SMISMEMBER', prev, unpack(chunk))\n"
    "    for x = 1, #chunk do\n"
    "      local h = chunk[x]\n"
    "      if in_cur[x] == 1 or in_prev[x] == 1 or seen[h] then\n"
    "        dup[at[c + x - 1]] = true\n"
    "        ndup = ndup + 1\n"
    "      else\n"
    "        seen[h] = true\n"
    "        claim[#claim + 1] = h\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "end\n"
    "if ndup == n then return {'', string.rep('1', n), 0} end\n"
    "local ev, ids, mask = ARGV[4], hex, string.rep('0', n)\n"
    "if ndup > 0 then\n"
    "  local kev, kids, m, pos = {}, {}, {}, 1\n"
    "  for i = 1, n do\n"
    "    local stop = string.find(ARGV[4], '\\n', pos, true)\n"
    "    local text = string.sub(ARGV[4], pos, (stop or 0) - 1)\n"
    "    pos = (stop or 0) + 1\n"
    "    if dup[i] then\n"
    "      m[i] = '1'\n"
    "    else\n"
    "      m[i] = '0'\n"
    "      kev[#kev + 1] = text\n"
    "      kids[#kids + 1] = string.sub(hex, 16 * i - 15, 16 * i)\n"
    "    end\n"
    "  end\n"
    "  ev, ids, mask = table.concat(kev, '\\n'), table.concat(kids), table.concat(m)\n"
    "end\n"
    "local k = tonumber(redis.call('GET', KEYS[2]) or '0') + 1\n"
    "local id = redis.call('XADD', KEYS[1], '*', 'v', '1', 'k', tostring(k), 'n',\n"
    "  tostring(n - ndup), 't', ARGV[2], 'ev', ev, 'ids', ids)\n"
    "redis.call('SET', KEYS[2], tostring(k))\n"
    "if #claim > 0 then\n"
    "  for c = 1, #claim, 1000 do\n"
    "    redis.call('SADD', cur, unpack(claim, c, math.min(c + 999, #claim)))\n"
    "  end\n"
    "  redis.call('PEXPIREAT', cur, expire_at)\n"
    "end\n"
    "return {id, mask, k}\n";

/* KEYS[1] stream, KEYS[2] ordinal counter; ARGV[1] arrival time, ARGV[2]
 * a catalog change. Returns {entry id, k}. */
static const char catalog_script[] =
    "local k = tonumber(redis.call('GET', KEYS[2]) or '0') + 1\n"
    "local id = redis.call('XADD', KEYS[1], '*', 'v', '1', 'k', tostring(k), 'n', '0',\n"
    "  't', ARGV[1], 'cat', ARGV[2])\n"
    "redis.call('SET', KEYS[2], tostring(k))\n"
    "return {id, k}\n";

/* KEYS[1] stream, KEYS[2] ordinal counter; ARGV[1] the covered id.
 * Returns the entries after it, or -1 when an entry has no ordinal. */
static const char backlog_script[] =
    "local total = tonumber(redis.call('GET', KEYS[2]) or '0')\n"
    "local function ord(e)\n"
    "  local f = e[2]\n"
    "  for i = 1, #f, 2 do if f[i] == 'k' then return tonumber(f[i + 1]) end end\n"
    "  return nil\n"
    "end\n"
    "local covered\n"
    "local before = redis.call('XREVRANGE', KEYS[1], ARGV[1], '-', 'COUNT', 1)\n"
    "if #before > 0 then\n"
    "  covered = ord(before[1])\n"
    "elseif redis.call('XLEN', KEYS[1]) == 0 then\n"
    "  covered = total\n"
    "else\n"
    "  local after = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', 1)\n"
    "  local k = ord(after[1])\n"
    "  if k then covered = k - 1 end\n"
    "end\n"
    "if covered == nil then return -1 end\n"
    "if covered > total then return 0 end\n"
    "return total - covered\n";

/* ---- ids ---- */

int hr_estream_id_cmp(hr_estream_id a, hr_estream_id b)
{
    if (a.ms != b.ms)
        return a.ms < b.ms ? -1 : 1;
    if (a.seq != b.seq)
        return a.seq < b.seq ? -1 : 1;
    return 0;
}

char *hr_estream_id_format(hr_estream_id id, char buf[HR_ESTREAM_ID_LEN])
{
    snprintf(buf, HR_ESTREAM_ID_LEN, "%" PRIu64 "-%" PRIu64, id.ms, id.seq);
    return buf;
}

/* Parses a decimal uint64 of [p, end); false when empty, not digits or
 * too large. */
static bool parse_u64(const char *p, const char *end, uint64_t *out)
{
    if (p == end)
        return false;
    uint64_t v = 0;
    for (; p < end; p++) {
        if (*p < '0' || *p > '9')
            return false;
        unsigned d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *out = v;
    return true;
}

/* As hr_estream_id_parse, on len bytes (a Redis reply is not always
 * NUL-terminated where we look). */
static bool parse_id(const char *text, size_t len, hr_estream_id *out)
{
    const char *end = text + len;
    const char *dash = memchr(text, '-', len);
    hr_estream_id id = {0, 0};
    if (!parse_u64(text, dash ? dash : end, &id.ms))
        return false;
    if (dash && !parse_u64(dash + 1, end, &id.seq))
        return false;
    *out = id;
    return true;
}

hr_status hr_estream_id_parse(const char *text, hr_estream_id *out, hr_error *err)
{
    if (!text || !parse_id(text, strlen(text), out))
        return hr_error_set(err, HR_EINVAL, "id",
                            "'%.60s' is not a stream entry id (expected MS-SEQ, two decimal numbers)",
                            text ? text : "(null)");
    return HR_OK;
}

/* ---- pool ---- */

void hr_estream_options_defaults(hr_estream_options *opt)
{
    opt->cluster = "hogrec";
    opt->dedup_window_ms = 24ull * 3600 * 1000;
    opt->connections = 4;
}

static bool cluster_name_ok(const char *c)
{
    size_t n = c ? strlen(c) : 0;
    if (n == 0 || n > HR_ESTREAM_CLUSTER_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)c[i]) && c[i] != '_' && c[i] != '.' && c[i] != '-')
            return false;
    return true;
}

hr_status hr_estream_open(const char *url, const hr_redis_options *ropt,
                          const hr_estream_options *opt, hr_estream **out, hr_error *err)
{
    *out = NULL;
    hr_estream_options o;
    if (opt)
        o = *opt;
    else
        hr_estream_options_defaults(&o);
    if (!cluster_name_ok(o.cluster))
        return hr_error_set(err, HR_EINVAL, "cluster",
                            "the cluster name must be 1-%d characters of A-Z a-z 0-9 _ . -",
                            HR_ESTREAM_CLUSTER_MAX);
    if (o.connections < 1 || o.connections > MAX_CONNECTIONS)
        return hr_error_set(err, HR_EINVAL, "connections", "connections must be 1-%d",
                            MAX_CONNECTIONS);
    hr_redis_options ro;
    if (ropt)
        ro = *ropt;
    else
        hr_redis_options_defaults(&ro);
    hr_estream *s = calloc(1, sizeof *s);
    if (!s)
        return hr_error_set(err, HR_ENOMEM, NULL, "out of memory");
    snprintf(s->cluster, sizeof s->cluster, "%s", o.cluster);
    s->opt = o;
    s->opt.cluster = s->cluster;
    s->command_timeout_ms = ro.command_timeout_ms;
    snprintf(s->key_stream, sizeof s->key_stream, "hogrec:{%s}:events", s->cluster);
    snprintf(s->key_count, sizeof s->key_count, "hogrec:{%s}:events:n", s->cluster);
    snprintf(s->key_eid_prefix, sizeof s->key_eid_prefix, "hogrec:{%s}:eid:", s->cluster);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    for (int i = 0; i < o.connections; i++) {
        hr_status st = hr_redis_open(url, &ro, &s->conn[i], err);
        if (st != HR_OK) {
            hr_estream_destroy(s);
            return st;
        }
        s->n_conn++;
        s->free_conn[s->n_free++] = s->conn[i];
    }
    *out = s;
    return HR_OK;
}

void hr_estream_destroy(hr_estream *s)
{
    if (!s)
        return;
    for (int i = 0; i < s->n_conn; i++)
        hr_redis_destroy(s->conn[i]);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

static hr_redis *take(hr_estream *s)
{
    pthread_mutex_lock(&s->mu);
    while (s->n_free == 0)
        pthread_cond_wait(&s->cv, &s->mu);
    hr_redis *r = s->free_conn[--s->n_free];
    pthread_mutex_unlock(&s->mu);
    return r;
}

static void give(hr_estream *s, hr_redis *r)
{
    pthread_mutex_lock(&s->mu);
    s->free_conn[s->n_free++] = r;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

/* ---- append ---- */

hr_status hr_estream_append(hr_estream *s, size_t n, const char *const *text, const size_t *len,
                            const uint64_t *id_hash, double arrived, bool *duplicate,
                            hr_estream_appended *out, hr_error *err)
{
    memset(out, 0, sizeof *out);
    if (n < 1 || n > MAX_EVENTS)
        return hr_error_set(err, HR_EINVAL, "events", "%zu events in one append (1-%d)", n,
                            MAX_EVENTS);
    if (!isfinite(arrived))
        return hr_error_set(err, HR_EINVAL, "arrived", "the arrival time is not a number");
    for (size_t i = 0; i < n; i++)
        if (len[i] == 0 || memchr(text[i], '\n', len[i]))
            return hr_error_set(err, HR_EINVAL, "events",
                                "event %zu: its text is empty or holds a newline", i);
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += len[i] + 1;
    char *hex = malloc(n * HASH_HEX + 1); /* every event's hash */
    char *ev = malloc(total);             /* the texts, '\n'-joined */
    if (!hex || !ev) {
        free(hex);
        free(ev);
        return hr_error_set(err, HR_ENOMEM, NULL, "out of memory");
    }
    size_t evlen = 0;
    for (size_t i = 0; i < n; i++) {
        snprintf(hex + i * HASH_HEX, HASH_HEX + 1, "%016" PRIx64, id_hash[i]);
        if (i)
            ev[evlen++] = '\n';
        memcpy(ev + evlen, text[i], len[i]);
        evlen += len[i];
    }
    char window[24], t[40], nn[24];
    snprintf(window, sizeof window, "%" PRIu64, s->opt.dedup_window_ms);
    snprintf(t, sizeof t, "%.6f", arrived);
    snprintf(nn, sizeof nn, "%zu", n);
    const char *argv[] = {s->key_stream, s->key_count, window, t, nn, ev, hex, s->key_eid_prefix};
    size_t lens[] = {strlen(s->key_stream), strlen(s->key_count), strlen(window), strlen(t),
                     strlen(nn), evlen, n * HASH_HEX, strlen(s->key_eid_prefix)};

    redisReply *rep = NULL;
    hr_redis *r = take(s);
    hr_status st = hr_redis_eval(r, append_script, 2, (int)HR_ARRAY_LEN(argv), argv, lens, &rep,
                                 err);
    give(s, r);
    free(hex);
    free(ev);
    if (st != HR_OK)
        return st;

    /* {entry id or "", mask, k} */
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 3 ||
        rep->element[0]->type != REDIS_REPLY_STRING || rep->element[1]->type != REDIS_REPLY_STRING ||
        rep->element[1]->len != n || rep->element[2]->type != REDIS_REPLY_INTEGER) {
        freeReplyObject(rep);
        return hr_error_set(err, HR_ECORRUPT, "redis", "the append script gave an unexpected reply");
    }
    const char *mask = rep->element[1]->str;
    for (size_t i = 0; i < n; i++) {
        bool dup = mask[i] == '1';
        if (duplicate)
            duplicate[i] = dup;
        out->duplicates += dup;
    }
    out->appended = n - out->duplicates;
    if (rep->element[0]->len > 0) {
        if (!parse_id(rep->element[0]->str, rep->element[0]->len, &out->id)) {
            freeReplyObject(rep);
            return hr_error_set(err, HR_ECORRUPT, "redis", "XADD gave an id that does not parse");
        }
        out->ordinal = (uint64_t)rep->element[2]->integer;
    }
    freeReplyObject(rep);
    return HR_OK;
}

#define MAX_CATALOG_BYTES (1u << 20) /* a catalog change's text */

hr_status hr_estream_append_catalog(hr_estream *s, const char *text, size_t len, double arrived,
                                    hr_estream_appended *out, hr_error *err)
{
    memset(out, 0, sizeof *out);
    if (len < 1 || len > MAX_CATALOG_BYTES)
        return hr_error_set(err, HR_EINVAL, "catalog", "a catalog change of %zu bytes (1-%u)", len,
                            MAX_CATALOG_BYTES);
    if (!isfinite(arrived))
        return hr_error_set(err, HR_EINVAL, "arrived", "the arrival time is not a number");
    char t[40];
    snprintf(t, sizeof t, "%.6f", arrived);
    const char *argv[] = {s->key_stream, s->key_count, t, text};
    size_t lens[] = {strlen(s->key_stream), strlen(s->key_count), strlen(t), len};
    redisReply *rep = NULL;
    hr_redis *r = take(s);
    hr_status st = hr_redis_eval(r, catalog_script, 2, (int)HR_ARRAY_LEN(argv), argv, lens, &rep,
                                 err);
    give(s, r);
    if (st != HR_OK)
        return st;
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 ||
        rep->element[0]->type != REDIS_REPLY_STRING ||
        rep->element[1]->type != REDIS_REPLY_INTEGER ||
        !parse_id(rep->element[0]->str, rep->element[0]->len, &out->id)) {
        freeReplyObject(rep);
        return hr_error_set(err, HR_ECORRUPT, "redis",
                            "the catalog append script gave an unexpected reply");
    }
    out->ordinal = (uint64_t)rep->element[1]->integer;
    freeReplyObject(rep);
    return HR_OK;
}

/* ---- read ---- */

/* Scratch space of one read, grown as entries need. */
typedef struct {
    char *buf;            /* a NUL-separated copy of an entry's ev field */
    size_t buf_cap;
    const char **text;
    size_t *len;
    uint64_t *hash;
    size_t cap;           /* events the three arrays hold */
} scratch;

static void scratch_free(scratch *sc)
{
    free(sc->buf);
    free(sc->text);
    free(sc->len);
    free(sc->hash);
}

static bool scratch_reserve(scratch *sc, size_t n, size_t bytes)
{
    if (bytes > sc->buf_cap) {
        char *b = realloc(sc->buf, bytes);
        if (!b)
            return false;
        sc->buf = b;
        sc->buf_cap = bytes;
    }
    if (n > sc->cap) {
        const char **t = realloc(sc->text, n * sizeof *t);
        if (t)
            sc->text = t;
        size_t *l = realloc(sc->len, n * sizeof *l);
        if (l)
            sc->len = l;
        uint64_t *h = realloc(sc->hash, n * sizeof *h);
        if (h)
            sc->hash = h;
        if (!t || !l || !h)
            return false;
        sc->cap = n;
    }
    return true;
}

static const redisReply *field(const redisReply *fields, const char *name)
{
    size_t nl = strlen(name);
    for (size_t i = 0; i + 1 < fields->elements; i += 2) {
        const redisReply *f = fields->element[i];
        if (f->type == REDIS_REPLY_STRING && f->len == nl && memcmp(f->str, name, nl) == 0)
            return fields->element[i + 1]->type == REDIS_REPLY_STRING ? fields->element[i + 1]
                                                                      : NULL;
    }
    return NULL;
}

static bool field_u64(const redisReply *fields, const char *name, uint64_t *out)
{
    const redisReply *v = field(fields, name);
    return v && parse_u64(v->str, v->str + v->len, out);
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* The rest of a catalog entry (field cat): its ordinal, arrival time and
 * change text (copied into sc, NUL-terminated). */
static hr_status decode_catalog(const redisReply *f, const redisReply *cat, scratch *sc,
                                hr_estream_entry *e, const char *ids, hr_error *err)
{
    uint64_t k;
    const redisReply *t = field(f, "t");
    char tb[48], *tend;
    if (!field_u64(f, "k", &k) || !t || t->len == 0 || t->len >= sizeof tb || cat->len == 0)
        return hr_error_set(err, HR_ECORRUPT, "stream",
                            "catalog entry %s: a field is missing or empty", ids);
    memcpy(tb, t->str, t->len);
    tb[t->len] = 0;
    errno = 0;
    e->arrived = strtod(tb, &tend);
    if (*tend || errno || !isfinite(e->arrived))
        return hr_error_set(err, HR_ECORRUPT, "stream", "entry %s: bad arrival time", ids);
    if (!scratch_reserve(sc, 0, cat->len + 1))
        return hr_error_set(err, HR_ENOMEM, NULL, "out of memory");
    memcpy(sc->buf, cat->str, cat->len);
    sc->buf[cat->len] = 0;
    e->ordinal = k;
    e->n = 0;
    e->text = sc->text;
    e->len = sc->len;
    e->id_hash = sc->hash;
    e->catalog = sc->buf;
    e->catalog_len = cat->len;
    return HR_OK;
}

/* Decodes one stream entry [id, [field, value, ...]] into e (pointing into
 * sc). HR_ECORRUPT (err names the entry), HR_ENOMEM. */
static hr_status decode_entry(const redisReply *ent, scratch *sc, hr_estream_entry *e,
                              hr_error *err)
{
    if (ent->type != REDIS_REPLY_ARRAY || ent->elements != 2 ||
        ent->element[0]->type != REDIS_REPLY_STRING || ent->element[1]->type != REDIS_REPLY_ARRAY)
        return hr_error_set(err, HR_ECORRUPT, "stream", "a stream entry that is not [id, fields]");
    const redisReply *idr = ent->element[0];
    if (!parse_id(idr->str, idr->len, &e->id))
        return hr_error_set(err, HR_ECORRUPT, "stream", "a stream entry id that does not parse");
    const redisReply *f = ent->element[1];
    char ids[HR_ESTREAM_ID_LEN];
    hr_estream_id_format(e->id, ids);
    uint64_t v, k, n;
    const redisReply *t = field(f, "t"), *ev = field(f, "ev"), *hx = field(f, "ids");
    if (!field_u64(f, "v", &v) || v != 1)
        return hr_error_set(err, HR_ECORRUPT, "stream", "entry %s: no format version 1", ids);
    e->catalog = NULL;
    e->catalog_len = 0;
    const redisReply *cat = field(f, "cat");
    if (cat)
        return decode_catalog(f, cat, sc, e, ids, err);
    if (!field_u64(f, "k", &k) || !field_u64(f, "n", &n) || !t || !ev || !hx || n < 1 ||
        n > MAX_EVENTS)
        return hr_error_set(err, HR_ECORRUPT, "stream", "entry %s: a field is missing or out of range",
                            ids);
    if (hx->len != n * HASH_HEX)
        return hr_error_set(err, HR_ECORRUPT, "stream", "entry %s: %zu hex digits of ids for %" PRIu64
                            " events", ids, hx->len, n);
    char tb[48];
    char *tend;
    if (t->len == 0 || t->len >= sizeof tb)
        return hr_error_set(err, HR_ECORRUPT, "stream", "entry %s: bad arrival time", ids);
    memcpy(tb, t->str, t->len);
    tb[t->len] = 0;
    errno = 0;
    e->arrived = strtod(tb, &tend);
    if (*tend || errno || !isfinite(e->arrived))
        return hr_error_set(err, HR_ECORRUPT, "stream", "entry %s: bad arrival time", ids);
    if (!scratch_reserve(sc, n, ev->len + 1))
        return hr_error_set(err, HR_ENOMEM, NULL, "out of memory");
    memcpy(sc->buf, ev->str, ev->len);
    sc->buf[ev->len] = 0;
    size_t lines = 1;
    for (size_t i = 0; i < ev->len; i++)
        lines += sc->buf[i] == '\n';
    if (lines != n)
        return hr_error_set(err, HR_ECORRUPT, "stream", "entry %s: %zu lines of text for %" PRIu64
                            " events", ids, lines, n);
    char *p = sc->buf, *end = sc->buf + ev->len;
    for (size_t i = 0; i < n; i++) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        char *stop = nl ? nl : end;
        if (stop == p)
            return hr_error_set(err, HR_ECORRUPT, "stream", "entry %s: event %zu has an empty text",
                                ids, i);
        *stop = 0;
        sc->text[i] = p;
        sc->len[i] = (size_t)(stop - p);
        p = stop + 1;
    }
    for (size_t i = 0; i < n; i++) {
        uint64_t h = 0;
        for (int d = 0; d < HASH_HEX; d++) {
            int x = hexval(hx->str[i * HASH_HEX + (size_t)d]);
            if (x < 0)
                return hr_error_set(err, HR_ECORRUPT, "stream", "entry %s: ids are not hex", ids);
            h = h << 4 | (uint64_t)x;
        }
        sc->hash[i] = h;
    }
    e->ordinal = k;
    e->n = n;
    e->text = sc->text;
    e->len = sc->len;
    e->id_hash = sc->hash;
    return HR_OK;
}

/* Decodes the entries of an XREAD or XRANGE reply (an array of entries)
 * and hands each to cb, in order, until one fails (see hr_estream_read). */
static hr_status hand_over(const redisReply *ents, hr_estream_entry_fn cb, void *arg,
                           hr_estream_id *last, size_t *count, hr_error *err)
{
    scratch sc = {0};
    hr_status st = HR_OK;
    for (size_t i = 0; i < ents->elements && st == HR_OK; i++) {
        hr_estream_entry e;
        st = decode_entry(ents->element[i], &sc, &e, err);
        if (st == HR_OK)
            st = cb(arg, &e);
        if (st == HR_OK) {
            if (last)
                *last = e.id;
            if (count)
                (*count)++;
        }
    }
    scratch_free(&sc);
    return st;
}

hr_status hr_estream_read(hr_estream *s, hr_estream_id after, size_t max_entries, int block_ms,
                          hr_estream_entry_fn cb, void *arg, hr_estream_id *last, size_t *count,
                          hr_error *err)
{
    if (last)
        *last = after;
    if (count)
        *count = 0;
    if (max_entries < 1 || max_entries > MAX_EVENTS)
        return hr_error_set(err, HR_EINVAL, "max_entries", "max_entries must be 1-%d", MAX_EVENTS);
    if (block_ms < 0 || block_ms >= s->command_timeout_ms)
        return hr_error_set(err, HR_EINVAL, "block_ms",
                            "block_ms must be 0 or more and less than the command timeout (%d ms)",
                            s->command_timeout_ms);
    char cnt[24], blk[24], from[HR_ESTREAM_ID_LEN];
    snprintf(cnt, sizeof cnt, "%zu", max_entries);
    snprintf(blk, sizeof blk, "%d", block_ms);
    hr_estream_id_format(after, from);
    const char *argv[8];
    int argc = 0;
    argv[argc++] = "XREAD";
    argv[argc++] = "COUNT";
    argv[argc++] = cnt;
    if (block_ms > 0) {
        argv[argc++] = "BLOCK";
        argv[argc++] = blk;
    }
    argv[argc++] = "STREAMS";
    argv[argc++] = s->key_stream;
    argv[argc++] = from;
    redisReply *rep = NULL;
    hr_redis *r = take(s);
    hr_status st = hr_redis_command(r, argc, argv, NULL, &rep, err);
    give(s, r);
    if (st != HR_OK)
        return st;
    if (rep->type == REDIS_REPLY_NIL || (rep->type == REDIS_REPLY_ARRAY && rep->elements == 0)) {
        freeReplyObject(rep);
        return HR_OK;
    }
    /* [[stream key, [entry, ...]]] */
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 1 ||
        rep->element[0]->type != REDIS_REPLY_ARRAY || rep->element[0]->elements != 2 ||
        rep->element[0]->element[1]->type != REDIS_REPLY_ARRAY) {
        freeReplyObject(rep);
        return hr_error_set(err, HR_ECORRUPT, "stream", "XREAD gave an unexpected reply");
    }
    st = hand_over(rep->element[0]->element[1], cb, arg, last, count, err);
    freeReplyObject(rep);
    return st;
}

hr_status hr_estream_range(hr_estream *s, hr_estream_id after, hr_estream_id upto,
                           size_t max_entries, hr_estream_entry_fn cb, void *arg,
                           hr_estream_id *last, size_t *count, hr_error *err)
{
    if (last)
        *last = after;
    if (count)
        *count = 0;
    if (max_entries < 1 || max_entries > MAX_EVENTS)
        return hr_error_set(err, HR_EINVAL, "max_entries", "max_entries must be 1-%d", MAX_EVENTS);
    if (hr_estream_id_cmp(upto, after) <= 0)
        return HR_OK;
    char cnt[24], from[HR_ESTREAM_ID_LEN + 1], to[HR_ESTREAM_ID_LEN];
    snprintf(cnt, sizeof cnt, "%zu", max_entries);
    from[0] = '('; /* exclusive (Redis 6.2 and later) */
    hr_estream_id_format(after, from + 1);
    hr_estream_id_format(upto, to);
    const char *argv[] = {"XRANGE", s->key_stream, from, to, "COUNT", cnt};
    redisReply *rep = NULL;
    hr_redis *r = take(s);
    hr_status st = hr_redis_command(r, 6, argv, NULL, &rep, err);
    give(s, r);
    if (st != HR_OK)
        return st;
    if (rep->type != REDIS_REPLY_ARRAY) {
        freeReplyObject(rep);
        return hr_error_set(err, HR_ECORRUPT, "stream", "XRANGE gave an unexpected reply");
    }
    st = hand_over(rep, cb, arg, last, count, err);
    freeReplyObject(rep);
    return st;
}

/* ---- backlog, last, trim, length ---- */

hr_status hr_estream_backlog(hr_estream *s, hr_estream_id covered, uint64_t *backlog,
                             hr_error *err)
{
    *backlog = 0;
    char id[HR_ESTREAM_ID_LEN];
    hr_estream_id_format(covered, id);
    const char *argv[] = {s->key_stream, s->key_count, id};
    redisReply *rep = NULL;
    hr_redis *r = take(s);
    hr_status st = hr_redis_eval(r, backlog_script, 2, 3, argv, NULL, &rep, err);
    give(s, r);
    if (st != HR_OK)
        return st;
    bool ok = rep->type == REDIS_REPLY_INTEGER && rep->integer >= 0;
    if (ok)
        *backlog = (uint64_t)rep->integer;
    freeReplyObject(rep);
    if (!ok)
        return hr_error_set(err, HR_ECORRUPT, "stream", "a stream entry has no ordinal (field k)");
    return HR_OK;
}

hr_status hr_estream_last(hr_estream *s, hr_estream_id *id, uint64_t *ordinal, hr_error *err)
{
    *id = (hr_estream_id){0, 0};
    *ordinal = 0;
    redisReply *rep = NULL;
    hr_redis *r = take(s);
    hr_status st = hr_redis_call(r, &rep, err, "XREVRANGE", s->key_stream, "+", "-", "COUNT", "1",
                                 NULL);
    give(s, r);
    if (st != HR_OK)
        return st;
    st = HR_OK;
    if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 1) {
        const redisReply *ent = rep->element[0];
        if (ent->type != REDIS_REPLY_ARRAY || ent->elements != 2 ||
            ent->element[0]->type != REDIS_REPLY_STRING ||
            ent->element[1]->type != REDIS_REPLY_ARRAY ||
            !parse_id(ent->element[0]->str, ent->element[0]->len, id) ||
            !field_u64(ent->element[1], "k", ordinal)) {
            *id = (hr_estream_id){0, 0};
            *ordinal = 0;
            st = hr_error_set(err, HR_ECORRUPT, "stream", "the last stream entry has no ordinal");
        }
    }
    freeReplyObject(rep);
    return st;
}

hr_status hr_estream_trim(hr_estream *s, hr_estream_id min_id, uint64_t *removed, hr_error *err)
{
    if (removed)
        *removed = 0;
    char id[HR_ESTREAM_ID_LEN];
    hr_estream_id_format(min_id, id);
    redisReply *rep = NULL;
    hr_redis *r = take(s);
    hr_status st = hr_redis_call(r, &rep, err, "XTRIM", s->key_stream, "MINID", "=", id, NULL);
    give(s, r);
    if (st != HR_OK)
        return st;
    if (removed && rep->type == REDIS_REPLY_INTEGER && rep->integer > 0)
        *removed = (uint64_t)rep->integer;
    freeReplyObject(rep);
    return HR_OK;
}

hr_status hr_estream_length(hr_estream *s, uint64_t *length, hr_error *err)
{
    *length = 0;
    redisReply *rep = NULL;
    hr_redis *r = take(s);
    hr_status st = hr_redis_call(r, &rep, err, "XLEN", s->key_stream, NULL);
    give(s, r);
    if (st != HR_OK)
        return st;
    if (rep->type == REDIS_REPLY_INTEGER && rep->integer > 0)
        *length = (uint64_t)rep->integer;
    freeReplyObject(rep);
    return HR_OK;
}

/*
 * redis.c - one Redis connection (see redis.h): URL parsing, connect with
 * AUTH and SELECT, commands with a send/receive timeout, reconnection with
 * exponential backoff, Lua scripts by SHA-1 with the EVAL fallback, the
 * settings check.
 *
 * Design: the hiredis context is the connection; NULL means "down". Any
 * I/O error or timeout frees it (after a timeout the reply may still come
 * and would be read as the next command's, so the connection cannot be
 * kept). The next call connects again; while connecting fails, attempts
 * are spaced by a doubling wait and calls in between fail fast.
 *
 * hiredis writes with write(2): a write to a connection the server closed
 * raises SIGPIPE, which would end a process that has not ignored it. Each
 * call blocks SIGPIPE in the calling thread and consumes one raised by its
 * own write, so this module is safe whatever the process does with it.
 *
 * Threads: one thread at a time per hr_redis (redis.h).
 */
#include "hogrec/redis.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

struct hr_redis {
    hr_redis_options opt;
    char host[256];
    int port;
    int db;
    char *password;       /* NULL: no AUTH; wiped and freed at destroy */
    char address[300];    /* "host:port/db" */
    redisContext *ctx;    /* NULL while disconnected */
    uint64_t retry_at_ns; /* no connect attempt before this (hr_now_ns) */
    int backoff_ms;       /* the wait after the next failed attempt; 0: none yet */
    uint64_t connects;    /* successful connections, the first included */
    char last_error[160]; /* why the connection went down (for fail-fast messages) */
    struct {              /* SHA-1s of the scripts run (owned copies: a hit is
                           * checked by content, not only by address) */
        char *script;
        char sha[41];
    } shas[8];
};

void hr_redis_options_defaults(hr_redis_options *opt)
{
    opt->connect_timeout_ms = 1000;
    opt->command_timeout_ms = 2000;
    opt->backoff_min_ms = 50;
    opt->backoff_max_ms = 2000;
}

/* ---- URL ---- */

hr_status hr_redis_parse_url(const char *url, char *host, size_t cap, int *port, int *db,
                             hr_error *err)
{
    static const char scheme[] = "redis://";
    if (!url || !*url)
        return hr_error_set(err, HR_EINVAL, "redis", "empty Redis URL: expected redis://HOST:PORT[/DB]");
    if (strchr(url, '@')) /* may hold a password: never echoed */
        return hr_error_set(err, HR_EINVAL, "redis",
                            "a user or password in the Redis URL is not accepted: set the "
                            "password in the environment variable " HR_REDIS_PASSWORD_ENV);
    if (strncmp(url, scheme, sizeof scheme - 1) != 0)
        return hr_error_set(err, HR_EINVAL, "redis",
                            "Redis URL '%.120s' does not start with redis:// (expected "
                            "redis://HOST:PORT[/DB]; TLS and unix sockets are not supported)",
                            url);
    const char *p = url + sizeof scheme - 1;
    const char *hs, *he;
    if (*p == '[') {
        hs = p + 1;
        he = strchr(hs, ']');
        if (!he)
            return hr_error_set(err, HR_EINVAL, "redis", "Redis URL '%.120s': no ']' after the IPv6 address", url);
        p = he + 1;
    } else {
        hs = p;
        while (*p && *p != ':' && *p != '/')
            p++;
        he = p;
    }
    if (he == hs)
        return hr_error_set(err, HR_EINVAL, "redis", "Redis URL '%.120s' has no host", url);
    for (const char *c = hs; c < he; c++)
        if (*c <= ' ' || *c == '?' || *c == '#' || *c == '/' || *c == '[')
            return hr_error_set(err, HR_EINVAL, "redis", "Redis URL '%.120s': bad character in the host", url);
    if ((size_t)(he - hs) >= cap)
        return hr_error_set(err, HR_EINVAL, "redis", "Redis URL '%.120s': host too long", url);
    if (*p != ':')
        return hr_error_set(err, HR_EINVAL, "redis", "Redis URL '%.120s' has no :PORT (expected redis://HOST:PORT[/DB])", url);
    p++;
    long v = 0;
    const char *ds = p;
    while (*p >= '0' && *p <= '9' && v <= 65535)
        v = v * 10 + (*p++ - '0');
    if (p == ds || v < 1 || v > 65535 || (*p && *p != '/'))
        return hr_error_set(err, HR_EINVAL, "redis", "Redis URL '%.120s': the port is not a number in 1-65535", url);
    long d = 0;
    if (*p == '/') {
        p++;
        ds = p;
        while (*p >= '0' && *p <= '9' && d <= INT_MAX / 10)
            d = d * 10 + (*p++ - '0');
        if (*p || (p == ds && *ds)) /* "/" alone means db 0 */
            return hr_error_set(err, HR_EINVAL, "redis", "Redis URL '%.120s': the database after '/' is not a number (no query or path allowed)", url);
        if (d > INT_MAX / 10)
            return hr_error_set(err, HR_EINVAL, "redis", "Redis URL '%.120s': database number too large", url);
    }
    memcpy(host, hs, (size_t)(he - hs));
    host[he - hs] = 0;
    *port = (int)v;
    *db = (int)d;
    return HR_OK;
}

/* ---- SIGPIPE guard ---- */

typedef struct {
    sigset_t old;
    bool was_pending;
} pipe_guard;

static void pipe_block(pipe_guard *g)
{
    sigset_t set, pending;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    sigpending(&pending);
    g->was_pending = sigismember(&pending, SIGPIPE) == 1;
    pthread_sigmask(SIG_BLOCK, &set, &g->old);
}

static void pipe_unblock(pipe_guard *g)
{
    sigset_t set, pending;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    sigpending(&pending);
    if (!g->was_pending && sigismember(&pending, SIGPIPE) == 1) {
        struct timespec zero = {0, 0};
        while (sigtimedwait(&set, NULL, &zero) < 0 && errno == EINTR)
            ;
    }
    pthread_sigmask(SIG_SETMASK, &g->old, NULL);
}

/* ---- connection ---- */

static struct timeval tv_ms(int ms)
{
    return (struct timeval){.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
}

static void drop(hr_redis *r, const char *why)
{
    snprintf(r->last_error, sizeof r->last_error, "%.150s", why);
    if (r->ctx) {
        redisFree(r->ctx);
        r->ctx = NULL;
    }
}

/* The text of a context error; a timeout says so. */
static void ctx_error_text(const hr_redis *r, const redisContext *c, char *buf, size_t cap)
{
    if (!c) {
        snprintf(buf, cap, "out of memory");
        return;
    }
    if (c->err == REDIS_ERR_IO && (strstr(c->errstr, "temporarily unavailable") ||
                                   strstr(c->errstr, "timed out")))
        snprintf(buf, cap, "no reply within %d ms", r->opt.command_timeout_ms);
    else if (c->err == REDIS_ERR_EOF)
        snprintf(buf, cap, "the server closed the connection");
    else
        snprintf(buf, cap, "%s", c->errstr[0] ? c->errstr : "connection error");
}

/* Maps an error reply's text to a status. */
static hr_status error_status(const char *msg)
{
    static const char *const busy[] = {"BUSY", "LOADING", "TRYAGAIN", "MASTERDOWN", "READONLY",
                                       "fenced"};
    for (size_t i = 0; i < HR_ARRAY_LEN(busy); i++)
        if (strncmp(msg, busy[i], strlen(busy[i])) == 0)
            return HR_EBUSY;
    if (strncmp(msg, "OOM", 3) == 0)
        return HR_EFULL;
    if (strncmp(msg, "NOSCRIPT", 8) == 0)
        return HR_ENOTFOUND;
    return HR_EINVAL;
}

/* One command on a live context c, for the connect steps: HR_OK with the
 * reply freed, or an error (the message made by the caller's prefix). */
static hr_status setup_command(hr_redis *r, redisContext *c, int argc, const char **argv,
                               const char *what, hr_error *err)
{
    redisReply *rep = redisCommandArgv(c, argc, argv, NULL);
    if (!rep) {
        char t[128];
        ctx_error_text(r, c, t, sizeof t);
        return hr_error_set(err, HR_EIO, "redis", "redis %s: %s failed: %s", r->address, what, t);
    }
    hr_status st = HR_OK;
    if (rep->type == REDIS_REPLY_ERROR) {
        /* Redis does not echo the password, but its text is not ours to
         * trust: one that holds it is replaced. */
        const char *text = rep->str ? rep->str : "";
        if (r->password && strstr(text, r->password))
            text = "(server message withheld)";
        st = hr_error_set(err, error_status(text), "redis", "redis %s: %s refused: %.160s", r->address,
                          what, text);
    }
    freeReplyObject(rep);
    return st;
}

/* Connects, AUTHs, SELECTs. HR_OK with r->ctx set, else r->ctx NULL. */
static hr_status connect_now(hr_redis *r, hr_error *err)
{
    pipe_guard g;
    pipe_block(&g);
    redisContext *c = redisConnectWithTimeout(r->host, r->port, tv_ms(r->opt.connect_timeout_ms));
    hr_status st = HR_OK;
    if (!c || c->err) {
        char t[128];
        if (c && c->err == REDIS_ERR_IO && strstr(c->errstr, "timed out"))
            snprintf(t, sizeof t, "connect timed out after %d ms", r->opt.connect_timeout_ms);
        else
            ctx_error_text(r, c, t, sizeof t);
        st = hr_error_set(err, HR_EIO, "redis", "redis %s: cannot connect: %s", r->address, t);
        goto out;
    }
    if (redisSetTimeout(c, tv_ms(r->opt.command_timeout_ms)) != REDIS_OK) {
        st = hr_error_set(err, HR_EIO, "redis", "redis %s: cannot set the timeout", r->address);
        goto out;
    }
    if (r->password) {
        const char *argv[] = {"AUTH", r->password};
        st = setup_command(r, c, 2, argv, "AUTH (password from " HR_REDIS_PASSWORD_ENV ")", err);
    } else { /* a server that wants a password says so now, not at the first command */
        const char *argv[] = {"PING"};
        st = setup_command(r, c, 1, argv, "PING (no password: " HR_REDIS_PASSWORD_ENV " is unset)", err);
    }
    if (st != HR_OK)
        goto out;
    if (r->db != 0) {
        char dbs[16];
        snprintf(dbs, sizeof dbs, "%d", r->db);
        const char *argv[] = {"SELECT", dbs};
        st = setup_command(r, c, 2, argv, "SELECT", err);
        if (st != HR_OK)
            goto out;
    }
out:
    pipe_unblock(&g);
    if (st != HR_OK) {
        if (c)
            redisFree(c);
        snprintf(r->last_error, sizeof r->last_error, "%.150s", err ? err->message : "connect failed");
        return st;
    }
    r->ctx = c;
    r->connects++;
    r->backoff_ms = 0;
    return HR_OK;
}

/* Makes sure a connection is open: reconnects when it is time. */
static hr_status ensure(hr_redis *r, hr_error *err)
{
    if (r->ctx)
        return HR_OK;
    uint64_t now = hr_now_ns();
    if (now < r->retry_at_ns) {
        uint64_t left = (r->retry_at_ns - now + 999999) / 1000000;
        return hr_error_set(err, HR_EIO, "redis",
                            "redis %s is unreachable (%.140s); next attempt in %llu ms",
                            r->address, r->last_error, (unsigned long long)left);
    }
    hr_error cerr = {{0}, {0}};
    hr_status st = connect_now(r, &cerr);
    if (st == HR_OK)
        return HR_OK;
    int wait = r->backoff_ms ? r->backoff_ms : r->opt.backoff_min_ms;
    r->backoff_ms = wait * 2 > r->opt.backoff_max_ms ? r->opt.backoff_max_ms : wait * 2;
    r->retry_at_ns = hr_now_ns() + (uint64_t)wait * 1000000u;
    return hr_error_set(err, st, "redis", "%.200s; next attempt in %d ms", cerr.message, wait);
}

hr_status hr_redis_open(const char *url, const hr_redis_options *opt, hr_redis **out,
                        hr_error *err)
{
    *out = NULL;
    hr_redis_options o;
    if (opt)
        o = *opt;
    else
        hr_redis_options_defaults(&o);
    if (o.connect_timeout_ms <= 0 || o.command_timeout_ms <= 0 || o.backoff_min_ms <= 0 ||
        o.backoff_max_ms < o.backoff_min_ms)
        return hr_error_set(err, HR_EINVAL, "redis",
                            "Redis options: timeouts and backoff must be > 0 and the backoff "
                            "maximum at least its minimum");
    hr_redis *r = calloc(1, sizeof *r);
    if (!r)
        return hr_error_set(err, HR_ENOMEM, "redis", "out of memory");
    r->opt = o;
    hr_status st = hr_redis_parse_url(url, r->host, sizeof r->host, &r->port, &r->db, err);
    if (st != HR_OK) {
        free(r);
        return st;
    }
    snprintf(r->address, sizeof r->address, "%s:%d/%d", r->host, r->port, r->db);
    const char *pw = getenv(HR_REDIS_PASSWORD_ENV);
    if (pw && *pw) {
        r->password = strdup(pw);
        if (!r->password) {
            free(r);
            return hr_error_set(err, HR_ENOMEM, "redis", "out of memory");
        }
    }
    st = connect_now(r, err);
    if (st != HR_OK) {
        hr_redis_destroy(r);
        return st;
    }
    *out = r;
    return HR_OK;
}

void hr_redis_destroy(hr_redis *r)
{
    if (!r)
        return;
    if (r->ctx)
        redisFree(r->ctx);
    if (r->password) {
        explicit_bzero(r->password, strlen(r->password));
        free(r->password);
    }
    for (size_t i = 0; i < HR_ARRAY_LEN(r->shas); i++)
        free(r->shas[i].script);
    free(r);
}

const char *hr_redis_address(const hr_redis *r)
{
    return r->address;
}

bool hr_redis_connected(const hr_redis *r)
{
    return r->ctx != NULL;
}

uint64_t hr_redis_reconnects(const hr_redis *r)
{
    return r->connects ? r->connects - 1 : 0;
}

/* ---- commands ---- */

hr_status hr_redis_command(hr_redis *r, int argc, const char **argv, const size_t *lens,
                           redisReply **reply, hr_error *err)
{
    if (reply)
        *reply = NULL;
    if (argc <= 0)
        return hr_error_set(err, HR_EINVAL, "redis", "empty Redis command");
    hr_status st = ensure(r, err);
    if (st != HR_OK)
        return st;
    pipe_guard g;
    pipe_block(&g);
    redisReply *rep = redisCommandArgv(r->ctx, argc, argv, lens);
    pipe_unblock(&g);
    if (!rep) {
        char t[128];
        ctx_error_text(r, r->ctx, t, sizeof t);
        drop(r, t);
        r->retry_at_ns = 0; /* the next call reconnects at once */
        return hr_error_set(err, HR_EIO, "redis", "redis %s: %.40s failed: %s", r->address,
                            lens ? "command" : argv[0], t);
    }
    if (rep->type == REDIS_REPLY_ERROR) {
        const char *text = rep->str ? rep->str : "error";
        st = hr_error_set(err, error_status(text), "redis", "redis %s: %.200s", r->address, text);
        freeReplyObject(rep);
        return st;
    }
    if (reply)
        *reply = rep;
    else
        freeReplyObject(rep);
    return HR_OK;
}

hr_status hr_redis_call(hr_redis *r, redisReply **reply, hr_error *err, ...)
{
    const char *argv[64];
    int argc = 0;
    va_list ap;
    va_start(ap, err);
    const char *a;
    while ((a = va_arg(ap, const char *)) != NULL) {
        if (argc == (int)HR_ARRAY_LEN(argv)) {
            va_end(ap);
            if (reply)
                *reply = NULL;
            return hr_error_set(err, HR_EINVAL, "redis", "more than 64 arguments");
        }
        argv[argc++] = a;
    }
    va_end(ap);
    return hr_redis_command(r, argc, argv, NULL, reply, err);
}

/* The SHA-1 of script, computed once per script and connection (the
 * scripts are a handful of constants; hashing one costs about as much as
 * validating a request's events). Falls back to hashing into the last slot
 * when the cache is full or out of memory. */
static const char *script_sha(hr_redis *r, const char *script)
{
    size_t n = HR_ARRAY_LEN(r->shas);
    for (size_t i = 0; i < n; i++)
        if (r->shas[i].script && strcmp(r->shas[i].script, script) == 0)
            return r->shas[i].sha;
    size_t slot = n - 1;
    for (size_t i = 0; i < n; i++)
        if (!r->shas[i].script) {
            slot = i;
            break;
        }
    free(r->shas[slot].script);
    r->shas[slot].script = strdup(script); /* NULL: hashed again next time */
    hr_redis_sha1_hex(script, strlen(script), r->shas[slot].sha);
    return r->shas[slot].sha;
}

hr_status hr_redis_eval(hr_redis *r, const char *script, int nkeys, int argc, const char **argv,
                        const size_t *lens, redisReply **reply, hr_error *err)
{
    if (reply)
        *reply = NULL;
    if (nkeys < 0 || argc < nkeys)
        return hr_error_set(err, HR_EINVAL, "redis", "eval: %d keys but %d arguments", nkeys, argc);
    int n = argc + 3;
    const char **av = malloc((size_t)n * sizeof *av);
    size_t *lv = malloc((size_t)n * sizeof *lv);
    if (!av || !lv) {
        free(av);
        free(lv);
        return hr_error_set(err, HR_ENOMEM, "redis", "out of memory");
    }
    char nk[16];
    const char *sha = script_sha(r, script);
    snprintf(nk, sizeof nk, "%d", nkeys);
    av[0] = "EVALSHA";
    av[1] = sha;
    av[2] = nk;
    for (int i = 0; i < argc; i++) {
        av[3 + i] = argv[i];
        lv[3 + i] = lens ? lens[i] : strlen(argv[i]);
    }
    for (int i = 0; i < 3; i++)
        lv[i] = strlen(av[i]);
    hr_status st = hr_redis_command(r, n, av, lv, reply, err);
    if (st == HR_ENOTFOUND) { /* NOSCRIPT: the only error mapped to it */
        av[0] = "EVAL";
        av[1] = script;
        lv[0] = 4;
        lv[1] = strlen(script);
        st = hr_redis_command(r, n, av, lv, reply, err);
    }
    free(av);
    free(lv);
    return st;
}

/* ---- SHA-1 (FIPS 180-4), for EVALSHA ---- */

static uint32_t rol(uint32_t x, int n)
{
    return (x << n) | (x >> (32 - n));
}

static void sha1_block(uint32_t h[5], const unsigned char *p)
{
    uint32_t w[80];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 80; i++)
        w[i] = rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
    for (int i = 0; i < 80; i++) {
        uint32_t f, k;
        if (i < 20) {
            f = (b & c) | (~b & d);
            k = 0x5A827999u;
        } else if (i < 40) {
            f = b ^ c ^ d;
            k = 0x6ED9EBA1u;
        } else if (i < 60) {
            f = (b & c) | (b & d) | (c & d);
            k = 0x8F1BBCDCu;
        } else {
            f = b ^ c ^ d;
            k = 0xCA62C1D6u;
        }
        uint32_t t = rol(a, 5) + f + e + k + w[i];
        e = d;
        d = c;
        c = rol(b, 30);
        b = a;
        a = t;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
}

void hr_redis_sha1_hex(const void *data, size_t len, char out[41])
{
    uint32_t h[5] = {0x67452301u, 0xEFCDAB89u, 0x98BADCFEu, 0x10325476u, 0xC3D2E1F0u};
    const unsigned char *p = data;
    size_t left = len;
    while (left >= 64) {
        sha1_block(h, p);
        p += 64;
        left -= 64;
    }
    unsigned char last[128] = {0};
    memcpy(last, p, left);
    last[left] = 0x80;
    size_t total = left + 1 + 8 <= 64 ? 64 : 128;
    uint64_t bits = (uint64_t)len * 8u;
    for (int i = 0; i < 8; i++)
        last[total - 1 - i] = (unsigned char)(bits >> (8 * i));
    sha1_block(h, last);
    if (total == 128)
        sha1_block(h, last + 64);
    for (int i = 0; i < 5; i++)
        snprintf(out + 8 * i, 9, "%08x", h[i]);
}

/* ---- settings ---- */

const char *hr_redis_verdict_to_string(hr_redis_verdict v)
{
    switch (v) {
    case HR_REDIS_SETTINGS_OK: return "ok";
    case HR_REDIS_SETTINGS_WARN: return "warn";
    case HR_REDIS_SETTINGS_REFUSE: return "refuse";
    }
    return "unknown";
}

/* Appends a finding and raises the verdict. */
static void finding(hr_redis_settings *s, hr_redis_verdict v, const char *text)
{
    size_t used = strlen(s->message);
    snprintf(s->message + used, sizeof s->message - used, "%s%s", used ? "; " : "", text);
    if (v > s->verdict)
        s->verdict = v;
}

/* CONFIG GET name into buf; HR_OK, HR_EIO, or HR_EINVAL (CONFIG refused). */
static hr_status config_get(hr_redis *r, const char *name, char *buf, size_t cap, hr_error *err)
{
    redisReply *rep = NULL;
    hr_status st = hr_redis_call(r, &rep, err, "CONFIG", "GET", name, NULL);
    if (st != HR_OK)
        return st;
    buf[0] = 0;
    if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 && rep->element[1]->str)
        snprintf(buf, cap, "%s", rep->element[1]->str);
    freeReplyObject(rep);
    if (!buf[0])
        return hr_error_set(err, HR_EINVAL, "redis", "CONFIG GET %s gave no value", name);
    return HR_OK;
}

hr_status hr_redis_check_settings(hr_redis *r, bool allow_no_aof, hr_redis_settings *out,
                                  hr_error *err)
{
    memset(out, 0, sizeof *out);
    hr_error e = {{0}, {0}};
    hr_status st = config_get(r, "appendonly", out->appendonly, sizeof out->appendonly, &e);
    if (st == HR_OK)
        st = config_get(r, "appendfsync", out->appendfsync, sizeof out->appendfsync, &e);
    if (st == HR_OK)
        st = config_get(r, "maxmemory-policy", out->maxmemory_policy,
                        sizeof out->maxmemory_policy, &e);
    if (st == HR_EIO) {
        if (err)
            *err = e;
        return st;
    }
    if (st != HR_OK) {
        out->appendonly[0] = out->appendfsync[0] = out->maxmemory_policy[0] = 0;
        char t[400];
        snprintf(t, sizeof t,
                 "the Redis settings could not be checked (CONFIG GET refused: %.200s); make "
                 "sure appendonly is yes, appendfsync always or everysec, maxmemory-policy "
                 "noeviction",
                 e.message);
        finding(out, HR_REDIS_SETTINGS_WARN, t);
        return HR_OK;
    }
    out->checked = true;
    if (strcmp(out->appendonly, "yes") != 0)
        finding(out, allow_no_aof ? HR_REDIS_SETTINGS_WARN : HR_REDIS_SETTINGS_REFUSE,
                "appendonly is no: an acknowledged event is lost when Redis crashes or "
                "restarts (set appendonly yes)");
    else if (!strcmp(out->appendfsync, "always"))
        ; /* every write is on disk before Redis answers */
    else if (!strcmp(out->appendfsync, "everysec"))
        finding(out, HR_REDIS_SETTINGS_WARN,
                "appendfsync is everysec: up to about 1 s of acknowledged events can be lost "
                "on a power failure or kernel crash (appendfsync always loses none)");
    else
        finding(out, HR_REDIS_SETTINGS_WARN,
                "appendfsync is no: the OS flushes when it likes (about 30 s), so that much of "
                "acknowledged events can be lost on a power failure (use always or everysec)");
    if (strcmp(out->maxmemory_policy, "noeviction") != 0) {
        char t[200];
        snprintf(t, sizeof t,
                 "maxmemory-policy is %s: eviction drops stream entries and leases (set "
                 "noeviction)",
                 out->maxmemory_policy);
        finding(out, HR_REDIS_SETTINGS_REFUSE, t);
    }
    if (!out->message[0])
        finding(out, HR_REDIS_SETTINGS_OK,
                "appendonly yes, appendfsync always, maxmemory-policy noeviction: an "
                "acknowledged write survives a crash");
    return HR_OK;
}

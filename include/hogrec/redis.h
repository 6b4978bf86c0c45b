/*
 * redis.h - one connection to a Redis server (hiredis, synchronous API):
 * the URL, AUTH from the environment, bounded timeouts, reconnection with
 * exponential backoff, binary-safe commands, Lua scripts (EVALSHA with the
 * EVAL fallback on NOSCRIPT), and the check of the server settings the
 * cluster design relies on (AOF, fsync policy, no eviction).
 *
 * URL: redis://HOST:PORT[/DB] (HOST a name, an IPv4 address or [IPv6]).
 * No user or password in the URL: the password, when the server needs one,
 * comes from the environment variable HOGREC_REDIS_PASSWORD (sent with
 * AUTH on every connect). The password is never logged and never appears
 * in an error message.
 *
 * Failures: a connection error or timeout fails the call with HR_EIO at
 * the latest after the command timeout, and drops the connection; the next
 * call reconnects at once. A reconnection that fails waits before the next
 * attempt: backoff_min_ms, doubling to backoff_max_ms, back to the minimum
 * after a success; a call while the wait runs fails at once with HR_EIO and
 * says when the next attempt is. A failed call is never retried here: the
 * command may have run (an XADD may be in the stream), so the caller
 * decides. A Redis error reply maps to a status (hr_redis_command).
 *
 * Threads: one hr_redis is one connection and is used by one thread at a
 * time; callers that share one hold a lock of their own around every call
 * (replies included: a reply belongs to the caller and may be read and
 * freed without the lock). Distinct hr_redis objects are independent.
 */
#ifndef HOGREC_REDIS_H
#define HOGREC_REDIS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

#include "hogrec/common.h"

/* The environment variable the password is read from (at hr_redis_open). */
#define HR_REDIS_PASSWORD_ENV "HOGREC_REDIS_PASSWORD"

typedef struct hr_redis hr_redis;

typedef struct {
    int connect_timeout_ms; /* bound of one TCP connect (+ AUTH, SELECT), > 0 */
    int command_timeout_ms; /* bound of one command's send and reply, > 0 */
    int backoff_min_ms;     /* first wait after a failed reconnection, > 0 */
    int backoff_max_ms;     /* the doubling stops here, >= backoff_min_ms */
} hr_redis_options;

/* Connect 1000 ms, command 2000 ms, backoff 50 ms doubling to 2000 ms. */
void hr_redis_options_defaults(hr_redis_options *opt);

/* Parses redis://HOST:PORT[/DB] into host (cap bytes), port (1-65535) and
 * db (>= 0; 0 when absent). HR_EINVAL (field "redis") when it is anything
 * else, saying what; a URL with a user or password is refused without
 * echoing it. Pure: no connection. */
hr_status hr_redis_parse_url(const char *url, char *host, size_t cap, int *port, int *db,
                             hr_error *err);

/* Parses url, reads the password from HOGREC_REDIS_PASSWORD (absent or
 * empty: no AUTH) and connects (AUTH, SELECT db). *out is new
 * (hr_redis_destroy). opt NULL = the defaults. HR_EINVAL for a bad URL or
 * options, or when AUTH is refused (the message says so, without the
 * password); HR_EIO when the server cannot be reached in time. Nothing is
 * made on failure. */
hr_status hr_redis_open(const char *url, const hr_redis_options *opt, hr_redis **out,
                        hr_error *err);

/* Closes the connection and wipes the password copy. NULL is a no-op. */
void hr_redis_destroy(hr_redis *r);

/* "HOST:PORT/DB", for logs (never holds the password). Borrowed, lives as
 * long as r. */
const char *hr_redis_address(const hr_redis *r);

/* Whether a connection is open now (a call may still find it broken). */
bool hr_redis_connected(const hr_redis *r);

/* Connections made after the first one (each successful reconnection). */
uint64_t hr_redis_reconnects(const hr_redis *r);

/* Sends one command: argc arguments argv[i] of lens[i] bytes (lens NULL:
 * each argv[i] is a NUL-terminated string). Binary safe. On HR_OK *reply
 * is new (freeReplyObject) and is never an error reply; reply may be NULL
 * to drop it. Otherwise *reply is NULL and:
 *   HR_EIO       connection lost, timeout, or waiting to reconnect;
 *   HR_EBUSY     BUSY, LOADING, TRYAGAIN, MASTERDOWN, READONLY, and
 *                errors a script raised starting with "BUSY"/"fenced";
 *   HR_EFULL     OOM (maxmemory reached);
 *   HR_ENOTFOUND NOSCRIPT;
 *   HR_EINVAL    any other error reply (wrong type, syntax, NOAUTH, ...);
 * err->message holds Redis' text. */
hr_status hr_redis_command(hr_redis *r, int argc, const char **argv, const size_t *lens,
                           redisReply **reply, hr_error *err);

/* hr_redis_command with NUL-terminated string arguments, the list ended by
 * NULL (at most 64). */
hr_status hr_redis_call(hr_redis *r, redisReply **reply, hr_error *err, ...)
    __attribute__((sentinel));

/* Runs the Lua script (NUL-terminated source) with nkeys keys, then
 * argc - nkeys arguments: argv[0..nkeys) are KEYS, the rest ARGV (lens as
 * for hr_redis_command). Sends EVALSHA with the script's SHA-1; on NOSCRIPT
 * (a restarted server, SCRIPT FLUSH) sends EVAL once, which loads it.
 * Returns and replies as hr_redis_command; an error the script raises
 * (redis.error_reply) maps the same way, so a script returns HR_EBUSY with
 * an error text starting with "BUSY " or "fenced". */
hr_status hr_redis_eval(hr_redis *r, const char *script, int nkeys, int argc, const char **argv,
                        const size_t *lens, redisReply **reply, hr_error *err);

/* The SHA-1 of data as 40 lowercase hex digits and a NUL (what EVALSHA
 * takes). */
void hr_redis_sha1_hex(const void *data, size_t len, char out[41]);

/* ---- the server settings the design relies on ---- */

typedef enum {
    HR_REDIS_SETTINGS_OK,     /* an acknowledged write survives a crash */
    HR_REDIS_SETTINGS_WARN,   /* usable; message says what can be lost */
    HR_REDIS_SETTINGS_REFUSE, /* do not run on it; message says why */
} hr_redis_verdict;

/* "ok", "warn", "refuse"; "unknown" out of range. Static. */
const char *hr_redis_verdict_to_string(hr_redis_verdict v);

typedef struct {
    bool checked;               /* CONFIG GET answered (false: renamed/disabled) */
    char appendonly[16];        /* "yes"/"no"; "" when not checked */
    char appendfsync[16];       /* "always"/"everysec"/"no"; "" when not checked */
    char maxmemory_policy[32];  /* "noeviction", "allkeys-lru", ...; "" when not checked */
    hr_redis_verdict verdict;   /* the worst of the findings */
    char message[512];          /* every finding, "; "-separated, for a person */
} hr_redis_settings;

/* Reads appendonly, appendfsync and maxmemory-policy (CONFIG GET) and
 * judges them: appendonly no refuses (an acknowledged write is lost when
 * Redis crashes) unless allow_no_aof, which makes it a warning;
 * appendfsync everysec warns (up to about 1 s of writes lost on a power
 * failure or kernel crash), no warns (up to the OS flush interval, about
 * 30 s), always is fine; a maxmemory-policy other than noeviction refuses
 * (eviction drops stream entries and leases). CONFIG refused (renamed or
 * disabled): checked false, a warning saying the settings could not be
 * checked. HR_OK with *out filled whatever the verdict; HR_EIO when the
 * connection fails. */
hr_status hr_redis_check_settings(hr_redis *r, bool allow_no_aof, hr_redis_settings *out,
                                  hr_error *err);

#endif

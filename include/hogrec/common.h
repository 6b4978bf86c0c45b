/*
 * common.h - status codes and the error struct shared by every module.
 *
 * Fallible functions return an hr_status; the detail (which field, why) goes
 * into an hr_error that the caller owns, usually on its stack. Callers that do
 * not want the detail pass NULL.
 */
#ifndef HOGREC_COMMON_H
#define HOGREC_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define HR_STATUS_LIST(X)                                                     \
    X(HR_OK, "ok")                                                            \
    X(HR_EINVAL, "invalid argument")                                          \
    X(HR_ENOMEM, "out of memory")                                             \
    X(HR_EFULL, "full")                                                       \
    X(HR_ENOTFOUND, "not found")                                              \
    X(HR_EIO, "i/o error")                                                    \
    X(HR_ECORRUPT, "corrupt data")                                            \
    X(HR_ESTOPPED, "stopped")                                                 \
    X(HR_EBUSY, "busy")                                                       \
    X(HR_EUNSUPPORTED, "unsupported")

typedef enum {
#define HR_X_ENUM(name, text) name,
    HR_STATUS_LIST(HR_X_ENUM)
#undef HR_X_ENUM
    HR_STATUS_COUNT
} hr_status;

/* Returns a static string; never NULL. */
const char *hr_status_to_string(hr_status s);

/* Detail of a failure: which field (may be empty) and a human message. */
typedef struct {
    char field[64];   /* name of the offending field, "" if none */
    char message[256]; /* what was wrong, for a person */
} hr_error;

/* Fills err (if not NULL) with printf-style text and returns status.
 * field may be NULL. Text cut to fit is cut between UTF-8 characters. */
hr_status hr_error_set(hr_error *err, hr_status status, const char *field,
                       const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Monotonic clock in nanoseconds. */
uint64_t hr_now_ns(void);
/* Wall clock, seconds since the epoch. */
double hr_wall_time(void);
/* The CLOCK_MONOTONIC time `seconds` (>= 0) from now, as the absolute
 * deadline pthread_cond_timedwait takes (its condvar set to that clock). */
struct timespec hr_deadline_after(double seconds);

/* 64-bit hash of a byte string (seeded), used by ids and context features. */
uint64_t hr_hash64(const void *data, size_t len, uint64_t seed);

/* SplitMix64 / xoshiro-style seeded PRNG state; one per thread. */
typedef struct {
    uint64_t s[4];
} hr_rng;
void hr_rng_seed(hr_rng *r, uint64_t seed);
uint64_t hr_rng_next(hr_rng *r);
/* Uniform in [0, 1). */
double hr_rng_uniform(hr_rng *r);
/* Uniform integer in [0, n), n > 0. */
uint64_t hr_rng_below(hr_rng *r, uint64_t n);
/* Standard normal (Box-Muller). */
double hr_rng_normal(hr_rng *r);

/* A status message that readers take without a lock (health texts): the
 * current text is an atomic pointer to an immutable string, and every
 * string ever published is kept until hr_status_board_free, so a reader
 * never sees one freed. Writers serialize on a lock of the owner's. */
typedef struct hr_status_msg hr_status_msg;
typedef struct {
    _Atomic(const char *) current; /* NULL when there is nothing to say */
    hr_status_msg *all;            /* every published text; writers only */
} hr_status_board;

/* Publishes a copy of text (NULL clears). No-op when text equals the
 * current one. On allocation failure publishes `fallback` (static). */
void hr_status_board_set(hr_status_board *b, const char *text, const char *fallback);
/* The current text or NULL; lock-free. */
const char *hr_status_board_get(const hr_status_board *b);
/* Frees every text; no reader or writer may run. */
void hr_status_board_free(hr_status_board *b);

#define HR_CACHE_LINE 64
#define HR_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

#endif

/*
 * common.c - status strings, error formatting, clocks, hashing and the PRNG.
 * Pure helpers; safe from any thread.
 */
#include "hogrec/common.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

const char *hr_status_to_string(hr_status s)
{
    static const char *const text[] = {
#define HR_X_TEXT(name, t) t,
        HR_STATUS_LIST(HR_X_TEXT)
#undef HR_X_TEXT
    };
    if ((unsigned)s >= HR_STATUS_COUNT)
        return "unknown status";
    return text[s];
}

/* When text filled buf (size bytes) it may have been cut inside a UTF-8
 * sequence: drop that partial sequence, so text that was UTF-8 stays UTF-8
 * (it goes into JSON error bodies). */
static void cut_utf8(char *buf, size_t size)
{
    size_t n = strlen(buf);
    if (n + 1 < size)
        return;
    size_t i = n;
    while (i > 0 && ((unsigned char)buf[i - 1] & 0xc0) == 0x80)
        i--; /* continuation bytes */
    if (i == 0 || (unsigned char)buf[i - 1] < 0xc0)
        return; /* ends in ASCII or not UTF-8 anyway */
    unsigned char lead = (unsigned char)buf[i - 1];
    size_t want = lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : 2;
    if (n - (i - 1) < want)
        buf[i - 1] = 0;
}

hr_status hr_error_set(hr_error *err, hr_status status, const char *field,
                       const char *fmt, ...)
{
    if (err) {
        snprintf(err->field, sizeof err->field, "%s", field ? field : "");
        cut_utf8(err->field, sizeof err->field);
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
        cut_utf8(err->message, sizeof err->message);
    }
    return status;
}

uint64_t hr_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

double hr_wall_time(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

struct timespec hr_deadline_after(double seconds)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    if (!(seconds > 0))
        return ts;
    double whole = floor(seconds);
    ts.tv_sec += (time_t)whole;
    ts.tv_nsec += (long)((seconds - whole) * 1e9);
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static inline uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

uint64_t hr_hash64(const void *data, size_t len, uint64_t seed)
{
    /* 8 bytes at a time, each word mixed in; good enough for hash tables. */
    const unsigned char *p = data;
    uint64_t h = mix64(seed ^ (0x9e3779b97f4a7c15ull * (len + 1)));
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = mix64(h ^ w) + 0x9e3779b97f4a7c15ull;
        p += 8;
        len -= 8;
    }
    uint64_t tail = 0;
    memcpy(&tail, p, len);
    return mix64(h ^ tail ^ ((uint64_t)len << 56));
}

void hr_rng_seed(hr_rng *r, uint64_t seed)
{
    uint64_t z = seed;
    for (int i = 0; i < 4; i++) {
        z += 0x9e3779b97f4a7c15ull;
        r->s[i] = mix64(z);
    }
}

uint64_t hr_rng_next(hr_rng *r)
{
    /* xoshiro256** */
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double hr_rng_uniform(hr_rng *r) { return (hr_rng_next(r) >> 11) * 0x1.0p-53; }

uint64_t hr_rng_below(hr_rng *r, uint64_t n)
{
    /* Lemire's multiply-shift; bias below 2^-64 * n, negligible here. */
    return (uint64_t)(((unsigned __int128)hr_rng_next(r) * n) >> 64);
}

double hr_rng_normal(hr_rng *r)
{
    double u1 = hr_rng_uniform(r), u2 = hr_rng_uniform(r);
    if (u1 < 1e-300)
        u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

struct hr_status_msg {
    struct hr_status_msg *next;
    char text[];
};

void hr_status_board_set(hr_status_board *b, const char *text, const char *fallback)
{
    if (!text) {
        atomic_store(&b->current, NULL);
        return;
    }
    const char *cur = atomic_load(&b->current);
    if (cur && strcmp(cur, text) == 0)
        return;
    size_t n = strlen(text);
    hr_status_msg *m = malloc(sizeof *m + n + 1);
    if (!m) {
        atomic_store(&b->current, fallback);
        return;
    }
    memcpy(m->text, text, n + 1);
    m->next = b->all;
    b->all = m;
    atomic_store(&b->current, m->text);
}

const char *hr_status_board_get(const hr_status_board *b)
{
    return atomic_load(&((hr_status_board *)b)->current);
}

void hr_status_board_free(hr_status_board *b)
{
    for (hr_status_msg *m = b->all, *next; m; m = next) {
        next = m->next;
        free(m);
    }
    b->all = NULL;
    atomic_store(&b->current, NULL);
}

/*
 * log.c - one JSON object per line on stderr; see log.h. Called from any
 * thread; a mutex keeps lines whole.
 */
#include "hogrec/log.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hogrec/common.h"

static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static atomic_int min_rank = 1; /* info */

/* Rank of a level name: debug 0, info 1, warn 2, error 3 (unknown: info). */
static int level_rank(const char *level)
{
    static const char *const names[] = {"debug", "info", "warn", "error"};
    for (int i = 0; i < 4; i++)
        if (strcmp(level, names[i]) == 0)
            return i;
    return 1;
}

void hr_log_set_level(const char *level)
{
    atomic_store(&min_rank, level_rank(level));
}

void hr_log(const char *level, const char *msg, json_t *fields)
{
    if (level_rank(level) < atomic_load_explicit(&min_rank, memory_order_relaxed)) {
        json_decref(fields);
        return;
    }
    json_t *o = json_pack("{s:f,s:s,s:s}", "ts", hr_wall_time(), "level", level, "msg", msg);
    if (o && fields)
        json_object_update(o, fields);
    json_decref(fields);
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    if (s) {
        pthread_mutex_lock(&log_mu);
        fprintf(stderr, "%s\n", s);
        fflush(stderr);
        pthread_mutex_unlock(&log_mu);
    }
    free(s);
    json_decref(o);
}

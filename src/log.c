/*
 * log.c - one JSON object per line on stderr; see log.h. Called from any
 * thread; a mutex keeps lines whole.
 */
#include "hogrec/log.h"

#include <assert.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hogrec/common.h"

static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static atomic_int min_rank = HR_LOG_INFO;

static const char *const level_names[HR_LOG_LEVEL_COUNT] = {
    [HR_LOG_DEBUG] = "debug", [HR_LOG_INFO] = "info", [HR_LOG_WARN] = "warn", [HR_LOG_ERROR] = "error"};

const char *hr_log_level_to_string(hr_log_level level)
{
    return (unsigned)level < HR_LOG_LEVEL_COUNT ? level_names[level] : "unknown";
}

/* The level of a name the code wrote (hr_log's first argument). A name
 * that is none of them is a bug: asserted, and logged as an error in a
 * build without asserts, so the line is not lost. */
static hr_log_level level_of(const char *name)
{
    for (int i = 0; i < HR_LOG_LEVEL_COUNT; i++)
        if (strcmp(name, level_names[i]) == 0)
            return (hr_log_level)i;
    assert(!"hr_log: unknown level name");
    return HR_LOG_ERROR;
}

void hr_log_set_level(hr_log_level level)
{
    assert((unsigned)level < HR_LOG_LEVEL_COUNT);
    atomic_store(&min_rank, (int)level);
}

void hr_log(const char *level, const char *msg, json_t *fields)
{
    if ((int)level_of(level) < atomic_load_explicit(&min_rank, memory_order_relaxed)) {
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

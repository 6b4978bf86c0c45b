/*
 * log.h - the server's log: one JSON object per line on stderr,
 * {"ts": epoch seconds, "level": ..., "msg": ..., <fields>}. Thread-safe;
 * lines never interleave.
 */
#ifndef HOGREC_LOG_H
#define HOGREC_LOG_H

#include <jansson.h>

/* Writes one line if level ("debug", "info", "warn", "error") is at least
 * the configured one. fields (may be NULL) is taken: its keys are added. */
void hr_log(const char *level, const char *msg, json_t *fields);

/* Sets the least severe level written (config log_level); default "info". */
void hr_log_set_level(const char *level);

#endif

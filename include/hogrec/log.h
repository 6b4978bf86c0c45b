/*
 * log.h - the server's log: one JSON object per line on stderr,
 * {"ts": epoch seconds, "level": ..., "msg": ..., <fields>}. Thread-safe;
 * lines never interleave.
 */
#ifndef HOGREC_LOG_H
#define HOGREC_LOG_H

#include <jansson.h>

/* Levels, least severe first (config log_level). */
typedef enum { HR_LOG_DEBUG, HR_LOG_INFO, HR_LOG_WARN, HR_LOG_ERROR, HR_LOG_LEVEL_COUNT } hr_log_level;

/* "debug", "info", "warn", "error"; "unknown" out of range. Static. */
const char *hr_log_level_to_string(hr_log_level level);

/* Writes one line if level (one of the names above: a literal in the code,
 * never input) is at least the configured one. fields (may be NULL) is
 * taken: its keys are added. */
void hr_log(const char *level, const char *msg, json_t *fields);

/* Sets the least severe level written; default HR_LOG_INFO. level is one
 * of the enum (the config parsed it from its name and refused others). */
void hr_log_set_level(hr_log_level level);

#endif

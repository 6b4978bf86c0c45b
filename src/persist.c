/*
 * persist.c - PLACEHOLDER until the SQLite store lands (issue: checkpoints).
 * Every entry point reports that persistence is not available, so a config
 * with a db path fails at start with a clear message instead of silently
 * running without durability.
 */
#include "hogrec/persist.h"

hr_status hr_persist_open(hr_app *app, hr_persist **out, hr_evlog **log, hr_error *err)
{
    (void)app;
    *out = NULL;
    *log = NULL;
    return hr_error_set(err, HR_EUNSUPPORTED, "db",
                        "persistence is not built yet: run with --db \"\"");
}
hr_status hr_persist_start(hr_persist *p, hr_error *err)
{
    (void)p;
    return hr_error_set(err, HR_EUNSUPPORTED, "db", "persistence is not built yet");
}
hr_status hr_persist_checkpoint(hr_persist *p, json_t **info, hr_error *err)
{
    (void)p;
    if (info)
        *info = NULL;
    return hr_error_set(err, HR_EUNSUPPORTED, "db", "persistence is not built yet");
}
const char *hr_persist_health(hr_persist *p)
{
    (void)p;
    return "persistence is not built yet";
}
json_t *hr_persist_stats(hr_persist *p)
{
    (void)p;
    return json_null();
}
void hr_persist_close(hr_persist *p, bool final)
{
    (void)p;
    (void)final;
}

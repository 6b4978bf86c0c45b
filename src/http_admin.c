/*
 * http_admin.c - the admin routes (behind the bearer token; http.c checks
 * it): the live learning-rate schedule (GET, PUT through the guard, which
 * marks a restore point), its history and the guard's state, the undo of
 * the last change, a checkpoint on demand, the effective config, and
 * (cluster mode) a snapshot of the whole model, and counterfactual trials of
 * schedules (trials.h).
 *
 * In cluster mode a schedule change goes to the cluster (cluster.h:
 * stored in Redis, installed by every node); the guard is off there.
 *
 * Threads: MHD pool threads; the schedule box, persistence and the config
 * copy are safe to call from any thread.
 */
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <microhttpd.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hogrec/cluster.h"
#include "hogrec/guard.h"
#include "hogrec/log.h"
#include "hogrec/persist.h"
#include "hogrec/schedule.h"
#include "hogrec/trials.h"
#include "http_internal.h"


static enum MHD_Result handle_schedule_put(hr_http *h, struct MHD_Connection *c, request *r)
{
    hr_app *app = h->app;
    json_error_t jerr;
    json_t *v = hr_http_parse_body(r, &jerr);
    if (!v)
        return hr_http_reply_malformed(c, r, &jerr);
    hr_schedule s;
    hr_error e = {{0}, {0}};
    hr_status st = hr_schedule_from_json(v, &s, &e);
    json_decref(v);
    if (st != HR_OK)
        return hr_http_reply_invalid(c, r, "", &e);
    hr_optimizer rows = hr_model_supports(app->model, HR_OPT_ADAM)      ? HR_OPT_ADAM
                        : hr_model_supports(app->model, HR_OPT_FTRL)    ? HR_OPT_FTRL
                        : hr_model_supports(app->model, HR_OPT_ADAGRAD) ? HR_OPT_ADAGRAD
                                                                        : HR_OPT_SGD;
    if (hr_schedule_check_state(&s, rows, &e) != HR_OK)
        return hr_http_reply_invalid(c, r, "", &e);
    uint64_t version;
    bool restore = false;
    if (app->cluster) { /* the cluster's schedule: every node installs it (cluster.h) */
        if ((st = hr_cluster_schedule_put(app->cluster, &s, &version, &e)) != HR_OK)
            return hr_http_reply_error(c, r, 503, "unavailable", "%s", e.message);
        return hr_http_reply_json(c, r, 200, hr_schedule_to_json(hr_schedbox_current(app->sched)));
    }
    if (app->guard) {
        st = hr_guard_apply(app->guard, &s, &version, &restore, &e);
    } else {
        hr_progress_report rep;
        hr_progress_get(app->progress, 0, &rep);
        st = hr_schedbox_swap(app->sched, &s, hr_trainer_updates(app->trainer), rep.loss, &version,
                              &e);
    }
    if (st != HR_OK)
        return hr_http_reply_invalid(c, r, "", &e);
    hr_log("info", "schedule changed",
           json_pack("{s:I, s:b}", "version", (json_int_t)version, "restore_point", restore));
    return hr_http_reply_json(c, r, 200, hr_schedule_to_json(hr_schedbox_current(app->sched)));
}

enum MHD_Result hr_http_schedule(hr_http *h, struct MHD_Connection *c, request *r)
{
    if (r->method == M_PUT)
        return handle_schedule_put(h, c, r);
    return hr_http_reply_json(c, r, 200, hr_schedule_to_json(hr_schedbox_current(h->app->sched)));
}

enum MHD_Result hr_http_schedule_history(hr_http *h, struct MHD_Connection *c, request *r)
{
    hr_app *app = h->app;
    json_t *j = json_pack("{s:o}", "history", hr_schedbox_history_json(app->sched));
    if (j && app->guard)
        json_object_set_new(j, "guard", hr_guard_status(app->guard));
    return hr_http_reply_json(c, r, 200, j);
}

enum MHD_Result hr_http_schedule_undo(hr_http *h, struct MHD_Connection *c, request *r)
{
    hr_app *app = h->app;
    if (!app->guard)
        return hr_http_reply_error(c, r, 409, "nothing_to_undo", "nothing to undo: no guard");
    json_t *info = NULL;
    hr_error e = {{0}, {0}};
    hr_status st = hr_guard_undo(app->guard, &info, &e);
    if (st == HR_ENOTFOUND)
        return hr_http_reply_error(c, r, 409, "nothing_to_undo", "%s", e.message);
    if (st != HR_OK)
        return hr_http_reply_error(c, r, 503, "unavailable", "%s", e.message);
    json_object_set_new(info, "schedule", hr_schedule_to_json(hr_schedbox_current(app->sched)));
    return hr_http_reply_json(c, r, 200, info);
}

enum MHD_Result hr_http_checkpoint(hr_http *h, struct MHD_Connection *c, request *r)
{
    if (!h->app->persist)
        return hr_http_reply_error(c, r, 503, "persistence_off",
                                   "persistence is off (the server runs without a database)");
    if (!atomic_load(&h->app->ready))
        return hr_http_reply_error(c, r, 503, "loading", "the server is loading its model");
    json_t *info = NULL;
    hr_error e = {{0}, {0}};
    hr_status st = hr_persist_checkpoint(h->app->persist, &info, &e);
    if (st != HR_OK) {
        json_decref(info);
        return hr_http_reply_error(c, r, st == HR_EBUSY ? 429 : 503, "checkpoint_failed", "%s",
                                   e.message[0] ? e.message : hr_status_to_string(st));
    }
    return hr_http_reply_json(c, r, 200, info ? info : json_object());
}

enum MHD_Result hr_http_config(hr_http *h, struct MHD_Connection *c, request *r)
{
    return hr_http_reply_json(c, r, 200, hr_config_to_json(&h->app->cfg));
}

/* How long GET /v1/admin/snapshot waits for the node thread to write the
 * file (it reaches a delta boundary within a publish or an XREAD, then
 * writes the whole model). */
#define SNAPSHOT_WAIT_MS 60000

enum MHD_Result hr_http_snapshot(hr_http *h, struct MHD_Connection *c, request *r)
{
    hr_app *app = h->app;
    if (!app->cluster)
        return hr_http_reply_error(c, r, 404, "not_found",
                                   "snapshots are for cluster nodes; this server runs standalone "
                                   "(its checkpoints are in --db)");
    char path[512];
    hr_snapshot_meta meta;
    hr_error e = {{0}, {0}};
    hr_status st = hr_cluster_snapshot(app->cluster, SNAPSHOT_WAIT_MS, path, sizeof path, &meta, &e);
    if (st != HR_OK)
        return hr_http_reply_error(c, r, st == HR_ESTOPPED ? 409 : st == HR_EBUSY ? 429 : 503,
                                   st == HR_ESTOPPED ? "not_ready"
                                   : st == HR_EBUSY  ? "snapshot_busy"
                                                     : "unavailable",
                                   "%s", e.message);
    /* The file lives while the response reads it: unlinked now, closed by
     * libmicrohttpd when the response is destroyed. */
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    unlink(path);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0) {
        if (fd >= 0)
            close(fd);
        return hr_http_reply_error(c, r, 503, "unavailable", "the snapshot file cannot be read");
    }
    struct MHD_Response *resp = MHD_create_response_from_fd((size_t)sb.st_size, fd);
    if (!resp) {
        close(fd);
        return MHD_NO;
    }
    char epoch[24];
    snprintf(epoch, sizeof epoch, "%llu", (unsigned long long)meta.epoch);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/vnd.sqlite3");
    MHD_add_response_header(resp, "X-Hogrec-Delta", meta.delta);
    MHD_add_response_header(resp, "X-Hogrec-Covered-Entry", meta.covered);
    MHD_add_response_header(resp, "X-Hogrec-Epoch", epoch);
    hr_log("info", "snapshot answered",
           json_pack("{s:s,s:I}", "delta", meta.delta, "bytes", (json_int_t)sb.st_size));
    return hr_http_reply_response(c, r, 200, resp);
}

/* ---- counterfactual trials (trials.h) ---- */

/* The HTTP status of a trials error. */
static int trials_http_status(hr_status st)
{
    switch (st) {
    case HR_EINVAL: return 400;
    case HR_ENOTFOUND: return 409; /* the window cannot be rebuilt */
    case HR_EUNSUPPORTED:
    case HR_EBUSY: return 409;
    case HR_EFULL: return 507;
    default: return 503;
    }
}

/* The {id} of /v1/admin/trials/{id}[/...] into id (size bytes). */
static void trial_id_of(const char *url, char *id, size_t size)
{
    const char *p = url + strlen("/v1/admin/trials/");
    size_t n = strcspn(p, "/");
    snprintf(id, size, "%.*s", (int)(n < size ? n : size - 1), p);
}

enum MHD_Result hr_http_trials(hr_http *h, struct MHD_Connection *c, request *r)
{
    json_error_t jerr;
    json_t *v = hr_http_parse_body(r, &jerr);
    if (!v)
        return hr_http_reply_malformed(c, r, &jerr);
    json_t *out = NULL;
    const char *code = "invalid";
    hr_error e = {{0}, {0}};
    hr_status st = hr_trials_start(h->app->trials, v, &out, &code, &e);
    json_decref(v);
    if (st == HR_EINVAL)
        return hr_http_reply_invalid(c, r, "", &e);
    if (st != HR_OK)
        return hr_http_reply_error(c, r, trials_http_status(st), code, "%s", e.message);
    return hr_http_reply_json(c, r, 202, out);
}

enum MHD_Result hr_http_trial(hr_http *h, struct MHD_Connection *c, request *r)
{
    char id[32];
    trial_id_of(r->url, id, sizeof id);
    if (r->method == M_DELETE) {
        hr_error e = {{0}, {0}};
        if (hr_trials_cancel(h->app->trials, id, &e) != HR_OK)
            return hr_http_reply_error(c, r, 404, "not_found", "%s", e.message);
    }
    json_t *j = hr_trials_get(h->app->trials, id);
    if (!j)
        return hr_http_reply_error(c, r, 404, "not_found", "no trial %s", id);
    return hr_http_reply_json(c, r, 200, j);
}

enum MHD_Result hr_http_trial_apply(hr_http *h, struct MHD_Connection *c, request *r)
{
    char id[32];
    trial_id_of(r->url, id, sizeof id);
    json_t *out = NULL;
    const char *code = "invalid";
    hr_error e = {{0}, {0}};
    hr_status st = hr_trials_apply(h->app->trials, id, &out, &code, &e);
    if (st == HR_ENOTFOUND)
        return hr_http_reply_error(c, r, 404, code, "%s", e.message);
    if (st != HR_OK)
        return hr_http_reply_error(c, r, st == HR_EINVAL ? 400 : trials_http_status(st), code,
                                   "%s", e.message);
    return hr_http_reply_json(c, r, 200, out);
}

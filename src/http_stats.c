/*
 * http_stats.c - the routes that report on the server: GET /v1/stats
 * (JSON), GET /metrics (Prometheus text), GET /healthz, GET /readyz and
 * GET /v1/cluster (this node's role and lag; {"mode":"standalone"} without
 * --redis).
 *
 * /v1/stats and /metrics are both rendered by the metrics module from one
 * snapshot; this file adds what the HTTP server itself counts
 * (recommendations batched, answers by route).
 *
 * Threads: MHD pool threads.
 */
#include <jansson.h>
#include <microhttpd.h>
#include <stdatomic.h>

#include "hogrec/cluster.h"
#include "hogrec/metrics.h"
#include "http_internal.h"

/* A snapshot of the app and of this server's own counters. */
static void gather(hr_http *h, hr_metrics_scope scope, hr_metrics_snapshot *s)
{
    hr_metrics_gather(h->app, scope, &h->rate, s);
    hr_topk_batcher_counts(h->topk, &s->recommend_batches, &s->recommend_queries);
    s->routes = h->metrics;
    s->nroutes = h->nroutes;
}

enum MHD_Result hr_http_stats(hr_http *h, struct MHD_Connection *c, request *r)
{
    hr_metrics_snapshot s;
    gather(h, HR_METRICS_STATS, &s);
    json_t *body = hr_metrics_json(&s);
    hr_metrics_snapshot_release(&s);
    return hr_http_reply_json(c, r, 200, body);
}

enum MHD_Result hr_http_metrics(hr_http *h, struct MHD_Connection *c, request *r)
{
    hr_metrics_snapshot s;
    gather(h, HR_METRICS_PROM, &s);
    size_t len = 0;
    char *text = hr_metrics_prom(&s, &len);
    hr_metrics_snapshot_release(&s);
    if (!text)
        return hr_http_reply_error(c, r, 503, "unavailable", "out of memory");
    return hr_http_reply_text(c, r, 200, text, len, "text/plain; version=0.0.4");
}

enum MHD_Result hr_http_healthz(hr_http *h, struct MHD_Connection *c, request *r)
{
    (void)h;
    return hr_http_reply_json(c, r, 200, json_pack("{s:s}", "status", "ok"));
}

enum MHD_Result hr_http_readyz(hr_http *h, struct MHD_Connection *c, request *r)
{
    const char *why = hr_app_not_ready(h->app);
    if (why)
        return hr_http_reply_error(c, r, 503, "not_ready", "%s", why);
    return hr_http_reply_json(c, r, 200, json_pack("{s:s}", "status", "ready"));
}

enum MHD_Result hr_http_cluster(hr_http *h, struct MHD_Connection *c, request *r)
{
    if (!h->app->cluster)
        return hr_http_reply_json(c, r, 200, json_pack("{s:s}", "mode", "standalone"));
    return hr_http_reply_json(c, r, 200, hr_cluster_status_json(h->app->cluster));
}

/*
 * http.h - the HTTP server: libmicrohttpd daemon, routes, limits and the one
 * error path ({"error": {"code", "message"}} with the right status).
 * `hogrec serve` (the process around it) is serve.h.
 *
 * Routes (see README and openapi.yaml): POST /v1/events, POST|GET
 * /v1/predict, GET /v1/recommend, GET /v1/stats, admin (bearer token):
 * GET|PUT /v1/admin/schedule, GET /v1/admin/schedule/history,
 * POST /v1/admin/checkpoint, GET /v1/admin/config; GET /healthz, /readyz,
 * /metrics.
 *
 * Threads: start/stop from one control thread; requests run on the MHD
 * epoll thread pool (cfg.http_threads threads).
 */
#ifndef HOGREC_HTTP_H
#define HOGREC_HTTP_H

#include <stdint.h>

#include "hogrec/app.h"
#include "hogrec/common.h"

typedef struct hr_http hr_http;

/* Starts serving app (borrowed; must outlive the server) on app->cfg.bind
 * and app->cfg.port (0 = any free port). *out is new; stop it with
 * hr_http_stop. HR_EIO with err if the daemon cannot start. */
hr_status hr_http_start(hr_app *app, hr_http **out, hr_error *err);

/* The bound TCP port. */
uint16_t hr_http_port(const hr_http *h);

/* Stops accepting connections; requests in flight still finish. */
void hr_http_quiesce(hr_http *h);

/* Finishes requests in flight, closes every connection, frees the server;
 * returns 0. NULL is a no-op. The app is left running. New requests on open
 * connections get 503 shutting_down from here on. Waits at most
 * app->cfg.shutdown_timeout seconds: requests still in flight then (a
 * handler that does not return, a commit that does not end) are logged and
 * abandoned, the daemon and h are left running for them (not freed), and it
 * returns their count; the app must then not be freed either (hr_app_stop,
 * not hr_app_close). */
unsigned hr_http_stop(hr_http *h);

#endif

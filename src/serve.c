/*
 * serve.c - `hogrec serve`; see serve.h.
 *
 * Design: SIGTERM/SIGINT write a byte to a pipe (the only thing a signal
 * handler does); the main thread blocks reading it, then runs the stop:
 * hr_http_quiesce and hr_http_stop (bounded by shutdown_timeout), then the
 * drain and final checkpoint (hr_app_close). A watchdog thread started at
 * the signal reads the same pipe: a second signal, or a stage that runs past
 * its bound, makes it log the stage and _exit(1) - the event log keeps
 * every acknowledged event for the next start.
 *
 * Threads: the main thread and the watchdog; the signal handler runs on
 * whichever thread the kernel picks.
 */
#include "hogrec/serve.h"

#include <cblas.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "hogrec/app.h"
#include "hogrec/cluster.h"
#include "hogrec/config.h"
#include "hogrec/http.h"
#include "hogrec/log.h"
#include "hogrec/sgd.h"

/* Write end and read end of the stop pipe (see hr_serve_main). */
static int stop_pipe[2] = {-1, -1};

/* What the shutdown is doing, for the watchdog's log line. */
static _Atomic(const char *) shutdown_stage = "requests";

/* The shutdown watchdog: the requests get shutdown_timeout (hr_http_stop
 * bounds that), then the drain and the final checkpoint get as long again.
 * Past that, or at a second SIGTERM/SIGINT, it logs the stage and ends the
 * process with status 1: no final checkpoint, the event log keeps what was
 * acknowledged. */
static _Atomic double watchdog_until;  /* wall time; moved on at each stage */
static atomic_bool shutdown_done;      /* the stop finished: the watchdog stands down */

static void *shutdown_watchdog(void *arg)
{
    (void)arg;
    const char *reason = "timeout";
    for (;;) {
        double left = atomic_load(&watchdog_until) - hr_wall_time();
        if (left <= 0)
            break;
        struct pollfd pfd = {stop_pipe[0], POLLIN, 0};
        int ms = left > 1e6 ? 1000000000 : (int)(left * 1000) + 1;
        if (poll(&pfd, 1, ms) > 0) {
            reason = "second signal";
            break;
        }
    }
    if (atomic_load(&shutdown_done)) /* the process is exiting anyway */
        return NULL;
    hr_log("error", "shutdown abandoned",
           json_pack("{s:s,s:s}", "stage", atomic_load(&shutdown_stage), "reason", reason));
    _exit(1);
}

static void on_stop_signal(int sig)
{
    int saved = errno;
    unsigned char b = (unsigned char)sig;
    ssize_t r = write(stop_pipe[1], &b, 1); /* async-signal-safe */
    (void)r;
    errno = saved;
}

int hr_serve_main(int argc, char **argv)
{
    hr_config cfg;
    hr_error err = {{0}, {0}};
    bool help = false;
    const char *pos[1];
    int npos = 0;
    /* argv[0] is "serve": skip it. */
    hr_status st = hr_config_from_args(&cfg, argc - 1, argv + 1, "config/hogrec.json", NULL, 0,
                                       pos, 0, &npos, &help, &err);
    if (help) {
        printf("usage: hogrec serve [options]\n\n");
        hr_config_print_help(stdout, NULL, 0);
        hr_config_free(&cfg);
        return 0;
    }
    if (st != HR_OK) {
        hr_log("error", "bad configuration",
                 json_pack("{s:s,s:s}", "field", err.field, "detail", err.message));
        hr_config_free(&cfg);
        return 2;
    }
    hr_log_set_level(cfg.log_level);
    /* SIGTERM/SIGINT go through a handler that writes to a pipe the main
     * thread reads. (Not sigwait with a blocked mask: threads that exist
     * before main, such as OpenBLAS's, would take the signal with its
     * default action and kill the process.) */
    if (pipe2(stop_pipe, O_CLOEXEC) != 0) {
        hr_log("error", "cannot create the stop pipe", json_pack("{s:s}", "detail", strerror(errno)));
        hr_config_free(&cfg);
        return 1;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    hr_log("info", "starting", json_pack("{s:s,s:I,s:s}", "bind", cfg.bind, "port",
                                           (json_int_t)cfg.port, "db", cfg.db));
    hr_app *app = NULL;
    /* Listen while the event log replays: /readyz says "loading" (503),
     * predictions are answered, events wait for ready. */
    st = hr_app_open_loading(&cfg, &app, &err);
    hr_config_free(&cfg);
    if (st != HR_OK) {
        hr_log("error", "cannot open", json_pack("{s:s,s:s,s:s}", "status",
                                                   hr_status_to_string(st), "field", err.field,
                                                   "detail", err.message));
        return 1;
    }
    hr_http *http = NULL;
    st = hr_http_start(app, &http, &err);
    if (st != HR_OK) {
        hr_log("error", "cannot serve", json_pack("{s:s}", "detail", err.message));
        hr_app_close(app, false);
        return 1;
    }
    hr_log("info", "listening", json_pack("{s:s,s:i,s:I,s:s}", "bind", app->cfg.bind, "port",
                                            (int)hr_http_port(http), "http_threads",
                                            (json_int_t)app->cfg.http_threads, "blas_kernel",
                                            openblas_get_corename()));
    if (app->cluster)
        hr_cluster_set_address(app->cluster, app->cfg.bind, hr_http_port(http));
    if ((st = hr_app_finish_loading(app, &err)) != HR_OK) {
        hr_log("error", "cannot load", json_pack("{s:s,s:s}", "status", hr_status_to_string(st),
                                                   "detail", err.message));
        hr_http_quiesce(http);
        hr_http_stop(http);
        hr_app_close(app, false);
        return 1;
    }
    hr_log("info", "ready", json_pack("{s:s}", "kernel", hr_sgd_kernel_name())); /* sgd_fast.c */
    unsigned char sigbyte = 0;
    while (read(stop_pipe[0], &sigbyte, 1) < 0 && errno == EINTR)
        ;
    int sig = sigbyte;
    hr_log("info", "stopping", json_pack("{s:s}", "signal", sig == SIGINT ? "SIGINT" : "SIGTERM"));
    const double timeout = app->cfg.shutdown_timeout;
    atomic_store(&watchdog_until, hr_wall_time() + 2 * timeout); /* hr_http_stop: timeout */
    pthread_t wd;
    if (pthread_create(&wd, NULL, shutdown_watchdog, NULL) == 0)
        pthread_detach(wd);
    hr_http_quiesce(http);
    unsigned abandoned = hr_http_stop(http); /* answers what is in flight */
    atomic_store(&shutdown_stage, "drain and final checkpoint");
    atomic_store(&watchdog_until, hr_wall_time() + timeout);
    if (abandoned) {
        /* Requests still running may read the app: close the database,
         * free nothing, and end here (no exit handlers while they run). */
        hr_app_stop(app, true);
        atomic_store(&shutdown_done, true);
        hr_log("info", "stopped", json_pack("{s:I}", "abandoned_requests", (json_int_t)abandoned));
        _exit(0);
    }
    hr_app_close(app, true);
    atomic_store(&shutdown_done, true);
    hr_log("info", "stopped", NULL);
    return 0;
}

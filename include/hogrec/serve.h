/*
 * serve.h - `hogrec serve`: the server process's life. Reads the config,
 * opens the app, starts the HTTP server, turns ready once the event log is
 * replayed, and on SIGTERM or SIGINT stops in bounded stages (requests,
 * then drain and final checkpoint), with a watchdog that ends the process
 * if a stage overruns shutdown_timeout or a second signal comes.
 *
 * Threads: runs on the main thread; installs process-wide signal handlers.
 */
#ifndef HOGREC_SERVE_H
#define HOGREC_SERVE_H

/* `hogrec serve [options]` (argv[0] is "serve"): config from flags,
 * environment and config/hogrec.json, open the app, serve until SIGTERM or
 * SIGINT, then stop accepting, finish in-flight requests, drain the queue
 * and close. Returns the process exit status. Call once per process. */
int hr_serve_main(int argc, char **argv);

#endif

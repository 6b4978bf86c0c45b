/*
 * testutil.h - helpers shared by the cmocka tests.
 */
#ifndef HOGREC_TESTUTIL_H
#define HOGREC_TESTUTIL_H

#include <jansson.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>
#include <cmocka.h>

#include "hogrec/config.h"
#include "hogrec/estream.h"
#include "hogrec/model.h"

/* Path of a file under the shared data folder, or NULL if absent: under
 * $HOGREC_SHARED_DATA when that is set (and only there), else under
 * ../shared/data next to the source tree. Returns a static buffer. Tests that
 * need it skip, saying so, when it is NULL. */
const char *tu_shared_data(const char *relpath);

/* Creates a fresh temporary directory; returns a static buffer. */
const char *tu_tmpdir(void);

/* Removes a directory tree (best effort). */
void tu_rmtree(const char *path);

/* Runs fn(arg) in a forked child and reports whether it returned (the child
 * exits 0) within `seconds`, a generous bound for code that must end on any
 * input; a child still running then is killed. Assert on the result, then
 * call fn again in the test process to check what it computed. */
int tu_terminates(void (*fn)(void *), void *arg, unsigned seconds);

/* ---- small fixtures ---- */

/* A config for a small in-process app or model: the defaults, then db (a
 * path, "" = no persistence; asserted to fit, since a cut path would be
 * another file), port 0, k 8, 1024 users and 1024 items, 64 rows per chunk,
 * 2^8 context rows, one trainer thread, no periodic checkpoints, negative
 * sampling off. Tests set what they need on top; free with hr_config_free. */
void tu_small_config(hr_config *c, const char *db);

/* A model of tu_small_config's shape with max_users/max_items rows and
 * the default schedule; new (hr_model_destroy). */
hr_model *tu_small_model(int64_t max_users, int64_t max_items);

/* ---- child processes (the real binary, or this test re-executed) ---- */

typedef struct {
    pid_t pid;
    FILE *log;      /* its stderr, read by the parent */
    int port;       /* from its "listening" log line; 0 until one was read */
    int non_json;   /* log lines read that were not JSON objects */
    /* the reaper: kills the child `bound` seconds after the spawn unless
     * tu_child_wait saw it exit first, so no read of its log or wait for
     * it lasts forever */
    pthread_t reaper;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool exited, killed; /* under mu */
    unsigned bound;
} tu_child;

/* Forks a child with its stderr to ch->log and its stdout to /dev/null;
 * the child runs in_child(arg) when it is not NULL (to set up more file
 * descriptors or the environment), then execv(argv[0], argv). Starts the
 * reaper with `bound` seconds. Asserts that pipe, fork and the thread
 * start. */
void tu_child_spawn(tu_child *ch, char *const argv[], unsigned bound,
                    void (*in_child)(void *), void *arg);

/* Reads log lines until one that is a JSON object whose "msg" is msg, and
 * returns it (new; json_decref), or NULL at the end of the log. Notes the
 * port of a "listening" line and counts lines that are not JSON. Every line
 * read is appended to all (cap bytes, kept NUL-terminated) when all is not
 * NULL, and echoed to stderr when HOGREC_TEST_DEBUG is set. No assertion:
 * usable while the child runs. */
json_t *tu_child_log_until(tu_child *ch, const char *msg, char *all, size_t cap);

/* Reads the rest of the log, waits for the exit, stops the reaper and
 * frees what the spawn made (the log included). Returns the wait status,
 * or -1 if the reaper had to kill the child. */
int tu_child_wait(tu_child *ch);

/* One HTTP request to 127.0.0.1:port (Content-Type application/json; a
 * body when body is not NULL; "Authorization: <auth>" when auth is not
 * NULL). Returns the status, 0 if no answer came (within a generous 300 s
 * bound); *out (when not NULL) receives the parsed body or NULL. No
 * assertion: usable from threads and while a child runs. */
long tu_http(int port, const char *method, const char *path, const char *body, const char *auth,
             json_t **out);

/* ---- a redis-server of the test's own ---- */

/* A redis-server child on 127.0.0.1, in a temporary directory (its AOF and
 * log), with --save "" --appendonly yes --daemonize no. */
typedef struct {
    const char *requirepass; /* in: --requirepass (NULL: none); set before start */
    const char *const *extra; /* in: more arguments, NULL-terminated (NULL: none) */
    int port;                /* in/out: 0 picks a free port; kept for a restart */
    pid_t pid;               /* 0 when not running */
    char dir[256];           /* "" until the first start; kept across a kill */
} tu_redis;

/* Starts redis-server (on r->port, or a free port when 0; in r->dir, or a
 * new temporary directory when empty) and waits, bounded (10 s), until it
 * answers PING. The server is killed if the thread that started it ends
 * (a crashed test leaves none behind); start it from the main thread. Fails the test, saying to run tools/deps --test, when
 * redis-server is not installed. */
void tu_redis_start(tu_redis *r);

/* Sends sig (SIGKILL: a crash; SIGSTOP/SIGCONT: a pause) to the server;
 * for SIGKILL and SIGTERM waits for it to exit. Port and dir stay, so
 * tu_redis_start restarts it on the same port with the same data. */
void tu_redis_kill(tu_redis *r, int sig);

/* Stops the server (SIGTERM, SIGKILL after 5 s) and removes its
 * directory. A stopped tu_redis (pid 0) is only cleaned. */
void tu_redis_stop(tu_redis *r);

/* "redis://127.0.0.1:<port>" in a static buffer. */
const char *tu_redis_url(const tu_redis *r);

/* Prints the skip marker line, then calls cmocka's skip(). The line is
 *   [  SKIP    ] <file>:<test function>: <reason>
 * tests/CMakeLists.txt marks a ctest entry that prints it as skipped
 * (SKIP_REGULAR_EXPRESSION) and tools/skipped lists the reasons. The reason
 * is printf-style. */
#define TU_SKIP_MARKER "[  SKIP    ] "
#define TU_SKIP(...)                                                           \
    do {                                                                       \
        tu_skip_marker(__FILE__, __func__);                                    \
        print_message(__VA_ARGS__);                                            \
        print_message("\n");                                                   \
        skip();                                                                \
    } while (0)

/* Prints the start of the skip marker line (TU_SKIP). */
void tu_skip_marker(const char *file, const char *func);

/* Test selection from the environment, applied before main() runs (so every
 * test program gets it without code of its own):
 *   HOGREC_TEST_FILTER=name       run only the cmocka tests matching name
 *   HOGREC_TEST_SKIP_FILTER=name  leave out the tests matching name
 * (cmocka patterns: '*' and '?'). tests/CMakeLists.txt uses them to run a
 * test that may skip as a ctest entry of its own. */

/* ---- the planted world of test_trainer and test_guard ----
 * TU_PU users x TU_PI items with k = TU_PK truth factors (standard normal)
 * and item biases (normal, sd 0.5); an event's click probability is
 * sigmoid(tu_planted_logit). */
#define TU_PU 300
#define TU_PI 150
#define TU_PK 4

typedef struct {
    double u[TU_PU][TU_PK], i[TU_PI][TU_PK], ib[TU_PI];
} tu_planted;

/* Draws the world from rng: the user factors, then each item's factors
 * and bias. */
void tu_planted_make(tu_planted *w, hr_rng *rng);

/* 1.5 <u, i> / sqrt(k) + the item's bias. */
double tu_planted_logit(const tu_planted *w, unsigned u, unsigned i);

/* ---- cluster nodes (hogrec serve --redis), for test_cluster and
 * test_snapshot ---- */

/* HOGREC_BIN (the hogrec binary ctest passes), or the test is skipped. */
const char *tu_hogrec_bin(void);

/* Spawns a server (argv NULL-terminated, as tu_child_spawn with `bound`
 * seconds), records its pid for tu_nodes_teardown, and waits until it
 * logged "ready". True then (ch->port set); else it is killed and waited
 * for, and false. */
bool tu_node_spawn(tu_child *ch, const char *const *argv, unsigned bound);

/* A cmocka teardown: SIGCONT (a node a test paused) then SIGKILL to every
 * node tu_node_spawn started that still runs; forgets them. */
int tu_nodes_teardown(void **state);

/* Polls until each of the `nodes` nodes answers /readyz 200 and exactly one
 * says it is the leader; returns its index. After `seconds` prints each
 * node's role and not_ready and fails the test. */
int tu_wait_leader(tu_child *n, int nodes, int seconds);

/* Sleeps ms milliseconds. */
void tu_sleep_ms(int ms);

/* GET /v1/cluster of the node at port: a new object, or NULL unless 200. */
json_t *tu_cluster_of(int port);

/* The string at o.a (b NULL) or o.a.b; "" when there is none. Borrowed. */
const char *tu_json_str(json_t *o, const char *a, const char *b);

/* A stream id "MS-SEQ"; fails the test on anything else. */
hr_estream_id tu_stream_id(const char *text);

/* The last entry of the event stream of cluster `name` at url. */
hr_estream_id tu_stream_last(const char *url, const char *name);

/* Polls the node at port until its model covers `last`, at most
 * `seconds`; false when it did not. */
bool tu_wait_covered(int port, hr_estream_id last, int seconds);

/* The node's model.events_counted (GET /v1/cluster); -1 when unknown. */
long long tu_events_counted(int port);

#endif

/*
 * bench_cluster.c - cluster mode end to end on one machine: a redis-server
 * of its own (AOF on, appendfsync always unless --fsync everysec) and three
 * nodes of the hogrec binary (`serve --redis`), each figure next to a
 * baseline measured in the same run:
 *
 *   ingest      events/s acknowledged (202) through a follower, requests of
 *               100 NDJSON events over several keep-alive connections;
 *               baselines: the same load on a standalone node of the same
 *               binary without a database (--db "") and with a temporary
 *               one (--durability sync, or interval with --fsync everysec).
 *   freshness   a 202 on follower A until the score of that pair changes on
 *               follower C (C polled), p50/p99; baseline: a standalone node,
 *               202 until its own score changes.
 *   deltas      delta bytes per trained event (the delta stream's entries
 *               published during the cluster ingest, summed in Redis by a
 *               script), against the bytes per event posted.
 *   CPU         follower C's CPU (utime+stime, /proc/PID/stat) per row its
 *               deltas carried, against the leader's CPU per trained event.
 *   failover    kill -9 of the leader: time until a new leader answers
 *               /readyz 200, and until a 202 on a survivor changes the
 *               score on the other; against lease_ms.
 *
 * usage: bench_cluster [options]
 *   --hogrec PATH      the node binary (default: hogrec next to this
 *                      program, or in its parent directory)
 *   --fsync MODE       always (default) or everysec
 *   --requests N       measured ingest requests of 100 events (default 3000)
 *   --seconds S        bound of each ingest measurement (default 30)
 *   --connections N    client connections for ingest (default 8)
 *   --http-threads N   every node's HTTP threads (default 8)
 *   --samples N        freshness samples (default 100)
 *   --failovers N      leader kills (default 3)
 *   --lease-ms MS      the nodes' lease (default 3000, the server's default)
 * Exits 77 when redis-server is not on PATH (nothing measured).
 *
 * Every process it starts is stopped by its pid (and gets SIGKILL if this
 * program dies: PR_SET_PDEATHSIG); the temporary directory is removed.
 * Every loop is bounded in count and time. Not a test.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <jansson.h>
#include <libgen.h>
#include <limits.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "hogrec/common.h"
#include "hogrec/redis.h"
#include "bench_machine.h"

#define BATCH 100         /* events per ingest request */
#define BODIES 512        /* distinct ingest bodies (51,200 events) */
#define USERS 10000       /* the synthetic world */
#define ITEMS 20000
#define WARMUP 200        /* unmeasured ingest requests before each measurement */
#define MAX_CONN 64
#define MAX_PROCS 32
#define WAIT_S 120        /* bound of every wait for a state */
#define SAMPLE_S 5        /* bound of one freshness sample */
#define CLUSTER "bench"

/* ---- options ---- */

static char opt_bin[PATH_MAX];
static const char *opt_fsync = "always";
static int opt_requests = 3000, opt_seconds = 30, opt_conns = 8, opt_http = 8;
static int opt_samples = 100, opt_failovers = 3, opt_lease = 3000;

/* ---- processes and the temporary directory ---- */

static char dir[512];
static pid_t procs[MAX_PROCS];
static int nprocs;
static pid_t redis_pid;
static int redis_port;
static char url[64];

static double now(void) { return (double)hr_now_ns() / 1e9; }
static void sleep_ms(double ms)
{
    nanosleep(&(struct timespec){(time_t)(ms / 1000), (long)(fmod(ms, 1000) * 1e6)}, NULL);
}

/* SIGTERM, up to 10 s, then SIGKILL; reaps it. */
static void stop_pid(pid_t pid)
{
    if (pid <= 0)
        return;
    int st;
    kill(pid, SIGCONT);
    kill(pid, SIGTERM);
    for (int i = 0; i < 200 && waitpid(pid, &st, WNOHANG) == 0; i++)
        sleep_ms(50);
    if (waitpid(pid, &st, WNOHANG) == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, &st, 0);
    }
    for (int i = 0; i < nprocs; i++)
        if (procs[i] == pid)
            procs[i] = procs[--nprocs];
}

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void cleanup(void)
{
    while (nprocs > 0)
        stop_pid(procs[nprocs - 1]);
    redis_pid = 0;
    if (dir[0])
        nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    dir[0] = 0;
}

static void die(const char *what, const char *msg)
{
    fprintf(stderr, "bench_cluster: %s: %s\n", what, msg);
    cleanup();
    exit(1);
}

/* Forks and execs argv (NULL-terminated), stdout and stderr to log (or
 * /dev/null). Returns the pid, remembered for cleanup. */
static pid_t spawn(char *const *argv, const char *log)
{
    if (nprocs == MAX_PROCS)
        die("spawn", "too many processes");
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        die("fork", strerror(errno));
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int in = open("/dev/null", O_RDONLY);
        int out = log ? open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600) : open("/dev/null", O_WRONLY);
        if (in >= 0)
            dup2(in, 0);
        if (out >= 0) {
            dup2(out, 1);
            dup2(out, 2);
        }
        execvp(argv[0], argv);
        _exit(127);
    }
    procs[nprocs++] = pid;
    return pid;
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &al) != 0)
        die("free port", "cannot bind 127.0.0.1:0");
    close(fd);
    return ntohs(a.sin_port);
}

/* utime + stime of pid in seconds (/proc/PID/stat), -1 when unreadable. */
static double cpu_of(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    unsigned long long ut = 0, st = 0;
    /* after ")": state(3) ppid pgrp session tty tpgid flags minflt cminflt
     * majflt cmajflt utime(14) stime(15) */
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* ---- Redis ---- */

static hr_redis *redis_conn(void)
{
    hr_redis *r = NULL;
    hr_error err = {{0}, {0}};
    if (hr_redis_open(url, NULL, &r, &err) != HR_OK)
        die("redis", err.message);
    return r;
}

static bool on_path(const char *name)
{
    const char *path = getenv("PATH");
    if (!path)
        return false;
    char *copy = strdup(path), *save = NULL;
    bool found = false;
    for (char *d = strtok_r(copy, ":", &save); d && !found; d = strtok_r(NULL, ":", &save)) {
        char p[PATH_MAX];
        snprintf(p, sizeof p, "%s/%s", d, name);
        found = access(p, X_OK) == 0;
    }
    free(copy);
    return found;
}

static void start_redis(void)
{
    redis_port = free_port();
    char port[16], log[PATH_MAX + 16];
    snprintf(port, sizeof port, "%d", redis_port);
    snprintf(log, sizeof log, "%s/redis.log", dir);
    char *argv[] = {"redis-server", "--port", port, "--bind", "127.0.0.1", "--dir", dir,
                    "--save", "", "--appendonly", "yes", "--appendfsync", (char *)opt_fsync,
                    "--auto-aof-rewrite-percentage", "0", "--daemonize", "no", "--logfile", log,
                    NULL};
    redis_pid = spawn(argv, NULL);
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", redis_port);
    hr_redis_options o;
    hr_redis_options_defaults(&o);
    for (int i = 0; i < 200; i++) { /* 10 s */
        hr_redis *r = NULL;
        if (hr_redis_open(url, &o, &r, NULL) == HR_OK &&
            hr_redis_call(r, NULL, NULL, "PING", NULL) == HR_OK) {
            hr_redis_destroy(r);
            return;
        }
        hr_redis_destroy(r);
        if (waitpid(redis_pid, NULL, WNOHANG) == redis_pid)
            die("redis-server", "exited at start");
        sleep_ms(50);
    }
    die("redis-server", "did not answer PING within 10 s");
}

/* ---- a minimal HTTP/1.1 keep-alive client ---- */

typedef struct {
    int port;
    int fd;
    char buf[16384];
} hconn;

static bool hc_open(hconn *c)
{
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (c->fd < 0)
        return false;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)c->port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct timeval tv = {30, 0};
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(c->fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(c->fd);
        c->fd = -1;
        return false;
    }
    return true;
}

static void hc_close(hconn *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
}

static void hc_init(hconn *c, int port)
{
    c->port = port;
    c->fd = -1;
}

static bool send_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w <= 0)
            return false;
        p += w;
        n -= (size_t)w;
    }
    return true;
}

/* One request; the status (-1 on a connection failure) and the body,
 * truncated to cap - 1 bytes and NUL-terminated, into out (may be NULL). */
static long hc_request_once(hconn *c, const char *method, const char *path, const char *body,
                            size_t blen, char *out, size_t cap)
{
    if (c->fd < 0 && !hc_open(c))
        return -1;
    char head[512];
    int hl = snprintf(head, sizeof head,
                      "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%sContent-Length: %zu\r\n\r\n", method,
                      path, body ? "Content-Type: application/x-ndjson\r\n" : "", body ? blen : 0);
    if (!send_all(c->fd, head, (size_t)hl) || (body && !send_all(c->fd, body, blen))) {
        hc_close(c);
        return -1;
    }
    size_t got = 0;
    char *end = NULL;
    while (!end) {
        if (got == sizeof c->buf - 1) {
            hc_close(c);
            return -1;
        }
        ssize_t r = recv(c->fd, c->buf + got, sizeof c->buf - 1 - got, 0);
        if (r <= 0) {
            hc_close(c);
            return -1;
        }
        got += (size_t)r;
        c->buf[got] = 0;
        end = strstr(c->buf, "\r\n\r\n");
    }
    long status = strtol(c->buf + 9, NULL, 10);
    size_t clen = 0;
    bool close_after = false;
    for (char *l = strstr(c->buf, "\r\n"); l && l < end; l = strstr(l + 2, "\r\n")) {
        if (!strncasecmp(l + 2, "Content-Length:", 15))
            clen = strtoul(l + 17, NULL, 10);
        if (!strncasecmp(l + 2, "Connection: close", 17))
            close_after = true;
    }
    size_t hdr = (size_t)(end + 4 - c->buf), have = got - hdr;
    if (out && cap)
        out[0] = 0;
    size_t copied = 0;
    char *b = end + 4;
    for (;;) {
        size_t take = have < clen - copied ? have : clen - copied;
        if (out && copied < cap - 1) {
            size_t room = cap - 1 - copied, n = take < room ? take : room;
            memcpy(out + copied, b, n);
            out[copied + n] = 0;
        }
        copied += take;
        if (copied >= clen)
            break;
        ssize_t r = recv(c->fd, c->buf, sizeof c->buf, 0);
        if (r <= 0) {
            hc_close(c);
            return -1;
        }
        b = c->buf;
        have = (size_t)r;
    }
    if (out && cap && copied >= cap)
        out[cap - 1] = 0;
    if (close_after)
        hc_close(c);
    return status;
}

/* GETs are retried once on a new connection (an idle one the server
 * closed); POSTs are not (they might have been applied). */
static long hc_request(hconn *c, const char *method, const char *path, const char *body,
                       size_t blen, char *out, size_t cap)
{
    bool reused = c->fd >= 0;
    long s = hc_request_once(c, method, path, body, blen, out, cap);
    if (s < 0 && reused && !body)
        s = hc_request_once(c, method, path, body, blen, out, cap);
    return s;
}

static json_t *get_json(int port, const char *path)
{
    hconn c;
    hc_init(&c, port);
    static _Thread_local char out[65536];
    long s = hc_request(&c, "GET", path, NULL, 0, out, sizeof out);
    hc_close(&c);
    return s == 200 ? json_loads(out, 0, NULL) : NULL;
}

static json_int_t json_at(json_t *o, const char *a, const char *b)
{
    json_t *v = json_object_get(o, a);
    if (b)
        v = json_object_get(v, b);
    return json_integer_value(v);
}

/* ---- nodes ---- */

typedef struct {
    pid_t pid;
    int port;
    char id[16];
    char log[PATH_MAX];
} node;

/* Starts a node: cluster node `id` when id is non-NULL, else standalone
 * (db: "" or a file, durability). Waits (bounded) for "listening" and
 * "ready" in its log. */
static void node_start(node *n, const char *id, const char *db, const char *durability)
{
    memset(n, 0, sizeof *n);
    snprintf(n->id, sizeof n->id, "%s", id ? id : "standalone");
    static int started;
    snprintf(n->log, sizeof n->log, "%s/node%d-%s.log", dir, ++started, n->id);
    char http[16], lease[16];
    snprintf(http, sizeof http, "%d", opt_http);
    snprintf(lease, sizeof lease, "%d", opt_lease);
    char *argv[48] = {opt_bin, "serve", "--port", "0", "--threads", "1", "--http-threads", http,
                      "--max-users", "100000", "--max-items", "100000", "--negative-sampling",
                      "off", "--log-level", "info"};
    int argc = 16;
    if (id) {
        char *more[] = {"--db", "", "--redis", url, "--cluster", CLUSTER, "--node-id", (char *)id,
                        "--lease-ms", lease, "--publish-ms", "10"};
        for (size_t i = 0; i < HR_ARRAY_LEN(more); i++)
            argv[argc++] = more[i];
    } else {
        argv[argc++] = "--db";
        argv[argc++] = (char *)db;
        if (durability) {
            argv[argc++] = "--durability";
            argv[argc++] = (char *)durability;
        }
    }
    argv[argc] = NULL;
    n->pid = spawn(argv, n->log);
    double t0 = now();
    bool ready = false;
    while (now() - t0 < WAIT_S && !ready) {
        FILE *f = fopen(n->log, "r");
        char line[4096];
        while (f && fgets(line, sizeof line, f)) {
            if (strstr(line, "\"msg\":\"listening\"")) {
                const char *p = strstr(line, "\"port\":");
                if (p)
                    n->port = atoi(p + 7);
            }
            if (strstr(line, "\"msg\":\"ready\""))
                ready = true;
        }
        if (f)
            fclose(f);
        if (waitpid(n->pid, NULL, WNOHANG) == n->pid) {
            /* reaped: drop it from the list */
            for (int i = 0; i < nprocs; i++)
                if (procs[i] == n->pid)
                    procs[i] = procs[--nprocs];
            fprintf(stderr, "node %s exited; its log:\n", n->id);
            FILE *l = fopen(n->log, "r");
            while (l && fgets(line, sizeof line, l))
                fputs(line, stderr);
            if (l)
                fclose(l);
            die("node", "exited at start");
        }
        if (!ready)
            sleep_ms(50);
    }
    if (!ready || !n->port)
        die("node", "not ready within the bound");
}

static void node_stop(node *n)
{
    stop_pid(n->pid);
    n->pid = 0;
}

/* The role a cluster node reports, into out. */
static void role_of(int port, char *out, size_t cap)
{
    json_t *o = get_json(port, "/v1/cluster");
    const char *role = o ? json_string_value(json_object_get(o, "role")) : NULL;
    snprintf(out, cap, "%s", role ? role : "");
    json_decref(o);
}

static bool readyz(int port)
{
    hconn c;
    hc_init(&c, port);
    long s = hc_request(&c, "GET", "/readyz", NULL, 0, NULL, 0);
    hc_close(&c);
    return s == 200;
}

/* Index of the single leader once every node is ready. */
static int wait_leader(node *n, int count)
{
    double t0 = now();
    while (now() - t0 < WAIT_S) {
        int leader = -1, leaders = 0, ready = 0;
        for (int i = 0; i < count; i++) {
            char role[32];
            ready += readyz(n[i].port);
            role_of(n[i].port, role, sizeof role);
            if (!strcmp(role, "leader")) {
                leader = i;
                leaders++;
            }
        }
        if (ready == count && leaders == 1)
            return leader;
        sleep_ms(50);
    }
    for (int i = 0; i < count; i++) {
        json_t *o = get_json(n[i].port, "/v1/cluster");
        char *t = o ? json_dumps(o, JSON_COMPACT) : NULL;
        fprintf(stderr, "node %s: /readyz %s, /v1/cluster %s\n", n[i].id,
                readyz(n[i].port) ? "200" : "not 200", t ? t : "(none)");
        free(t);
        json_decref(o);
    }
    die("cluster", "no single leader with every node ready within the bound");
    return -1;
}

/* Prints the warn and error lines of a node's log (at most 8). */
static void print_warnings(const node *n)
{
    FILE *f = fopen(n->log, "r");
    char line[2048];
    int shown = 0;
    while (f && shown < 8 && fgets(line, sizeof line, f))
        if (strstr(line, "\"level\":\"warn\"") || strstr(line, "\"level\":\"error\"")) {
            printf("  %s: %s", n->id, line);
            shown++;
        }
    if (f)
        fclose(f);
}

/* Restarts (as a new node id) every node that stepped down: a leader
 * that lost its lease stays not ready until restarted. Says so. */
static void restart_stepped_down(node *n, int count, int *next_id)
{
    for (int i = 0; i < count; i++) {
        json_t *o = get_json(n[i].port, "/v1/cluster");
        const char *role = o ? json_string_value(json_object_get(o, "role")) : NULL;
        if (role && !strcmp(role, "stepped_down")) {
            const char *why = json_string_value(json_object_get(o, "not_ready"));
            char id[16];
            snprintf(id, sizeof id, "r%d", (*next_id)++);
            printf("note: node %s stepped down (%s); restarted as %s\n", n[i].id,
                   why ? why : "?", id);
            print_warnings(&n[i]);
            node_stop(&n[i]);
            node_start(&n[i], id, NULL, NULL);
        }
        json_decref(o);
    }
}

/* ---- ingest ---- */

static char *bodies[BODIES];
static size_t body_len[BODIES];
static size_t body_bytes; /* all bodies */

/* Event j of the bodies: user and item. */
static void event_pair(int j, int *u, int *i)
{
    uint64_t x = (uint64_t)j * 0x9E3779B97F4A7C15ull + 12345;
    x ^= x >> 29;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 32;
    *u = (int)(x % USERS);
    *i = (int)((x >> 20) % ITEMS);
}

static void make_bodies(void)
{
    for (int b = 0; b < BODIES; b++) {
        size_t cap = BATCH * 64, len = 0;
        char *s = malloc(cap);
        if (!s)
            die("bodies", "out of memory");
        for (int k = 0; k < BATCH; k++) {
            int u, i, j = b * BATCH + k;
            event_pair(j, &u, &i);
            len += (size_t)snprintf(s + len, cap - len, "{\"user\":\"u%d\",\"item\":\"i%d\",\"label\":%d}\n",
                                    u, i, (j * 7 + 3) % 5 < 2);
        }
        bodies[b] = s;
        body_len[b] = len;
        body_bytes += len;
    }
}

typedef struct {
    int port;
    atomic_int *next;   /* next request index */
    int limit;          /* requests in all */
    double deadline;
    long ok, bad;       /* 202s, other answers */
    long events;        /* events accepted */
    double *lat;        /* per-request ms, indexed by request */
    char first_error[256];
} ingest_worker;

static void *ingest_main(void *arg)
{
    ingest_worker *w = arg;
    hconn *c = malloc(sizeof *c);
    char out[1024];
    hc_init(c, w->port);
    for (;;) {
        int k = atomic_fetch_add(w->next, 1);
        if (k >= w->limit || now() > w->deadline)
            break;
        double t0 = now();
        long s = hc_request(c, "POST", "/v1/events", bodies[k % BODIES], body_len[k % BODIES], out,
                            sizeof out);
        w->lat[k] = (now() - t0) * 1e3;
        if (s == 202) {
            w->ok++;
            const char *a = strstr(out, "\"accepted\":");
            w->events += a ? atol(a + 11) : 0;
        } else {
            w->bad++;
            if (!w->first_error[0])
                snprintf(w->first_error, sizeof w->first_error, "%ld %.200s", s, out);
            if (s < 0)
                sleep_ms(10);
        }
    }
    hc_close(c);
    free(c);
    return NULL;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The q-quantile (0..1) of n sorted values: the smallest value with at
 * least q*n values at or below it. */
static double quantile(const double *v, int n, double q)
{
    if (n <= 0)
        return NAN;
    int i = (int)ceil(q * n) - 1;
    return v[i < 0 ? 0 : i >= n ? n - 1 : i];
}

typedef struct {
    long events, ok, bad;
    double seconds, p50_ms, p99_ms;
    char first_error[256];
} ingest_result;

/* `requests` POSTs (at most opt_seconds) over opt_conns connections. */
static ingest_result ingest(int port, int requests)
{
    ingest_result res = {0};
    atomic_int next = 0;
    ingest_worker w[MAX_CONN];
    pthread_t th[MAX_CONN];
    double *lat = calloc((size_t)requests, sizeof *lat);
    if (!lat)
        die("ingest", "out of memory");
    double t0 = now();
    for (int t = 0; t < opt_conns; t++) {
        w[t] = (ingest_worker){.port = port, .next = &next, .limit = requests,
                               .deadline = t0 + opt_seconds, .lat = lat};
        pthread_create(&th[t], NULL, ingest_main, &w[t]);
    }
    for (int t = 0; t < opt_conns; t++) {
        pthread_join(th[t], NULL);
        res.events += w[t].events;
        res.ok += w[t].ok;
        res.bad += w[t].bad;
        if (!res.first_error[0] && w[t].first_error[0])
            snprintf(res.first_error, sizeof res.first_error, "%s", w[t].first_error);
    }
    res.seconds = now() - t0;
    int done = (int)(res.ok + res.bad);
    qsort(lat, (size_t)done, sizeof *lat, cmp_double);
    res.p50_ms = quantile(lat, done, 0.50);
    res.p99_ms = quantile(lat, done, 0.99);
    free(lat);
    return res;
}

/* ---- scores and freshness ---- */

/* The score of (u, i) on a node; NAN on failure. */
static double score(hconn *c, int u, int i)
{
    char path[96], out[512];
    snprintf(path, sizeof path, "/v1/predict?user=u%d&item=i%d", u, i);
    if (hc_request(c, "GET", path, NULL, 0, out, sizeof out) != 200)
        return NAN;
    const char *p = strstr(out, "\"score\":");
    return p ? strtod(p + 8, NULL) : NAN;
}

/* Posts one event (u, i) to c; true on a 202. */
static bool post_one(hconn *c, int u, int i)
{
    char body[96];
    int n = snprintf(body, sizeof body, "{\"user\":\"u%d\",\"item\":\"i%d\",\"label\":1}\n", u, i);
    return hc_request(c, "POST", "/v1/events", body, (size_t)n, NULL, 0) == 202;
}

/* Polls c until the score of (u, i) is no longer `before`, at most
 * bound_s; the time it changed, or -1. */
static double wait_change(hconn *c, int u, int i, double before, double bound_s)
{
    double t0 = now();
    while (now() - t0 < bound_s) {
        double s = score(c, u, i);
        if (!isnan(s) && s != before)
            return now();
        sleep_ms(0.5);
    }
    return -1;
}

typedef struct {
    int n, missed;
    double p50, p99, max;
} fresh_result;

/* opt_samples times: a 202 on port_a until the score changes on port_c. */
static fresh_result freshness(int port_a, int port_c, int salt)
{
    fresh_result r = {0};
    double *ms = calloc((size_t)opt_samples, sizeof *ms);
    hconn a, c;
    hc_init(&a, port_a);
    hc_init(&c, port_c);
    for (int s = 0; s < opt_samples; s++) {
        int u, i;
        event_pair((s * 7919 + salt * 104729) % (BODIES * BATCH), &u, &i);
        double before = score(&c, u, i);
        if (isnan(before) || !post_one(&a, u, i)) {
            r.missed++;
            continue;
        }
        double t0 = now(), t1 = wait_change(&c, u, i, before, SAMPLE_S);
        if (t1 < 0)
            r.missed++;
        else
            ms[r.n++] = (t1 - t0) * 1e3;
    }
    hc_close(&a);
    hc_close(&c);
    qsort(ms, (size_t)r.n, sizeof *ms, cmp_double);
    r.p50 = quantile(ms, r.n, 0.5);
    r.p99 = quantile(ms, r.n, 0.99);
    r.max = r.n ? ms[r.n - 1] : NAN;
    free(ms);
    return r;
}

/* ---- waits ---- */

static long long trained_of(int port)
{
    json_t *o = get_json(port, "/v1/stats");
    long long t = o ? json_at(o, "events", "trained") : -1;
    json_decref(o);
    return t;
}

/* Until the node trained at least `want` events; the time, or -1. */
static double wait_trained(int port, long long want)
{
    double t0 = now();
    while (now() - t0 < WAIT_S) {
        if (trained_of(port) >= want)
            return now();
        sleep_ms(5);
    }
    return -1;
}

/* Until a cluster node's model covers every entry of the event stream and
 * it applied the last delta. */
static bool wait_covered(int port)
{
    double t0 = now();
    while (now() - t0 < WAIT_S) {
        json_t *o = get_json(port, "/v1/cluster");
        bool ok = o && json_object_get(json_object_get(o, "lag"), "entries_not_covered") &&
                  json_at(o, "lag", "entries_not_covered") == 0 &&
                  json_is_true(json_object_get(json_object_get(o, "lag"), "deltas_caught_up"));
        json_decref(o);
        if (ok)
            return true;
        sleep_ms(20);
    }
    return false;
}

/* ---- the delta stream ---- */

static const char *const DELTA_SUM =
    "local r = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', tonumber(ARGV[2]))\n"
    "local bytes, rows, ids, last = 0, 0, 0, ''\n"
    "for _, e in ipairs(r) do\n"
    "  last = e[1]\n"
    "  local f = e[2]\n"
    "  for k = 1, #f, 2 do\n"
    "    if f[k] == 'd' then\n"
    "      local d = f[k + 1]\n"
    "      bytes = bytes + #d\n"
    "      ids = ids + struct.unpack('<I4', d, 53)\n"
    "      rows = rows + struct.unpack('<I4', d, 57)\n"
    "    end\n"
    "  end\n"
    "end\n"
    "return {last, #r, bytes, rows, ids}\n";

static const char *deltas_key(void) { return "hogrec:{" CLUSTER "}:deltas"; }

/* The id of the delta stream's last entry ("-" when empty) into out. */
static void deltas_last(hr_redis *r, char *out, size_t cap)
{
    redisReply *rep = NULL;
    hr_error err = {{0}, {0}};
    snprintf(out, cap, "-");
    if (hr_redis_call(r, &rep, &err, "XREVRANGE", deltas_key(), "+", "-", "COUNT", "1", NULL) !=
        HR_OK)
        die("XREVRANGE", err.message);
    if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 1)
        snprintf(out, cap, "(%s", rep->element[0]->element[0]->str);
    freeReplyObject(rep);
}

typedef struct {
    long long entries, bytes, rows, ids;
} delta_sum;

/* Sums the parts after `from` (an XRANGE start: "-" or "(ID"). */
static delta_sum deltas_since(hr_redis *r, const char *from)
{
    delta_sum s = {0};
    char start[64];
    snprintf(start, sizeof start, "%s", from);
    for (int round = 0; round < 100000; round++) {
        const char *argv[] = {deltas_key(), start, "200"};
        redisReply *rep = NULL;
        hr_error err = {{0}, {0}};
        if (hr_redis_eval(r, DELTA_SUM, 1, 3, argv, NULL, &rep, &err) != HR_OK)
            die("delta sum", err.message);
        long long n = rep->element[1]->integer;
        s.entries += n;
        s.bytes += rep->element[2]->integer;
        s.rows += rep->element[3]->integer;
        s.ids += rep->element[4]->integer;
        if (n > 0)
            snprintf(start, sizeof start, "(%s", rep->element[0]->str);
        freeReplyObject(rep);
        if (n < 200)
            break;
    }
    return s;
}

static long long memory_usage(hr_redis *r, const char *key)
{
    redisReply *rep = NULL;
    long long v = -1;
    if (hr_redis_call(r, &rep, NULL, "MEMORY", "USAGE", key, "SAMPLES", "0", NULL) == HR_OK) {
        if (rep->type == REDIS_REPLY_INTEGER)
            v = rep->integer;
        freeReplyObject(rep);
    }
    return v;
}

/* ---- failover ---- */

typedef struct {
    node *n;
    int count, skip;
    atomic_bool stop;
    double found; /* time a survivor said leader and /readyz 200; -1 */
    char who[16];
} watch_arg;

static void *watch_main(void *arg)
{
    watch_arg *w = arg;
    w->found = -1;
    double t0 = now();
    while (!atomic_load(&w->stop) && now() - t0 < WAIT_S) {
        for (int i = 0; i < w->count; i++) {
            if (i == w->skip)
                continue;
            char role[32];
            role_of(w->n[i].port, role, sizeof role);
            if (!strcmp(role, "leader") && readyz(w->n[i].port)) {
                w->found = now();
                snprintf(w->who, sizeof w->who, "%s", w->n[i].id);
                return NULL;
            }
        }
        sleep_ms(2);
    }
    return NULL;
}

/* ---- main ---- */

static void usage(void)
{
    fprintf(stderr, "usage: bench_cluster [--hogrec PATH] [--fsync always|everysec] [--requests N]\n"
                    "       [--seconds S] [--connections N] [--http-threads N] [--samples N]\n"
                    "       [--failovers N] [--lease-ms MS]\n");
    exit(2);
}

static int int_arg(const char *v, int lo, int hi)
{
    char *end;
    long x = strtol(v, &end, 10);
    if (*end || x < lo || x > hi)
        usage();
    return (int)x;
}

static void find_binary(const char *argv0)
{
    if (opt_bin[0])
        return;
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0)
        snprintf(self, sizeof self, "%s", argv0);
    else
        self[n] = 0;
    char *d = dirname(self);
    snprintf(opt_bin, sizeof opt_bin, "%s/hogrec", d);
    if (access(opt_bin, X_OK) != 0)
        snprintf(opt_bin, sizeof opt_bin, "%s/../hogrec", d);
}

static void print_row(const char *what, const char *value, const char *baseline, const char *note)
{
    printf("| %s | %s | %s | %s |\n", what, value, baseline, note);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i += 2) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v)
            usage();
        if (!strcmp(a, "--hogrec"))
            snprintf(opt_bin, sizeof opt_bin, "%s", v);
        else if (!strcmp(a, "--fsync") && (!strcmp(v, "always") || !strcmp(v, "everysec")))
            opt_fsync = v;
        else if (!strcmp(a, "--requests"))
            opt_requests = int_arg(v, 10, 10000000);
        else if (!strcmp(a, "--seconds"))
            opt_seconds = int_arg(v, 1, 3600);
        else if (!strcmp(a, "--connections"))
            opt_conns = int_arg(v, 1, MAX_CONN);
        else if (!strcmp(a, "--http-threads"))
            opt_http = int_arg(v, 1, 256);
        else if (!strcmp(a, "--samples"))
            opt_samples = int_arg(v, 1, 100000);
        else if (!strcmp(a, "--failovers"))
            opt_failovers = int_arg(v, 0, 10);
        else if (!strcmp(a, "--lease-ms"))
            opt_lease = int_arg(v, 300, 600000);
        else
            usage();
    }
    if (!on_path("redis-server")) {
        fprintf(stderr, "bench_cluster: skipped: redis-server is not on PATH (tools/deps installs it)\n");
        return 77;
    }
    find_binary(argv[0]);
    if (access(opt_bin, X_OK) != 0)
        die("hogrec binary not found (give --hogrec PATH)", opt_bin);
    unsetenv("HOGREC_REDIS_PASSWORD");
    signal(SIGPIPE, SIG_IGN);
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/bench_cluster.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir))
        die("mkdtemp", dir);
    make_bodies();
    start_redis();

    bench_print_machine();
    {
        char ver[64] = "?";
        hr_redis *r = redis_conn();
        redisReply *rep = NULL;
        if (hr_redis_call(r, &rep, NULL, "INFO", "server", NULL) == HR_OK) {
            const char *v = strstr(rep->str, "redis_version:");
            if (v)
                sscanf(v + 14, "%63[^\r\n]", ver);
            freeReplyObject(rep);
        }
        hr_redis_destroy(r);
        double l[3] = {0};
        getloadavg(l, 3);
        printf("redis %s (own server, AOF on, appendfsync %s, dir %s); load average at start %.2f\n",
               ver, opt_fsync, dir, l[0]);
        printf("nodes: %s serve --threads 1 --http-threads %d --negative-sampling off "
               "(cluster: --db \"\" --publish-ms 10 --lease-ms %d); %d users x %d items\n",
               opt_bin, opt_http, opt_lease, USERS, ITEMS);
        printf("ingest: %d requests of %d NDJSON events (at most %d s) over %d connections, "
               "after %d unmeasured; freshness: %d samples\n\n",
               opt_requests, BATCH, opt_seconds, opt_conns, WARMUP, opt_samples);
    }
    bool always = !strcmp(opt_fsync, "always");
    const char *durability = always ? "sync" : "interval";

    /* ---- baselines: standalone nodes of the same binary ---- */
    node s;
    node_start(&s, NULL, "", NULL);
    ingest(s.port, WARMUP);
    long long tr0 = trained_of(s.port);
    double c0 = cpu_of(s.pid);
    ingest_result base = ingest(s.port, opt_requests);
    double tb = wait_trained(s.port, tr0 + base.events);
    double base_cpu_per_event = (cpu_of(s.pid) - c0) / (double)base.events;
    (void)tb;
    fresh_result base_fr = freshness(s.port, s.port, 1);
    node_stop(&s);

    char db[PATH_MAX + 16];
    snprintf(db, sizeof db, "%s/standalone.db", dir);
    node_start(&s, NULL, db, durability);
    ingest(s.port, WARMUP);
    ingest_result base_db = ingest(s.port, opt_requests);
    node_stop(&s);

    /* ---- the cluster ---- */
    node n[8];
    const char *ids[] = {"a", "b", "c"};
    for (int i = 0; i < 3; i++)
        node_start(&n[i], ids[i], NULL, NULL);
    int leader = wait_leader(n, 3);
    int fa = (leader + 1) % 3, fc = (leader + 2) % 3;
    ingest_result warm = ingest(n[fa].port, WARMUP);
    if (wait_trained(n[leader].port, WARMUP * BATCH) < 0 || !wait_covered(n[fc].port))
        die("cluster", "warm-up not trained within the bound");

    hr_redis *r = redis_conn();
    char mark[64];
    deltas_last(r, mark, sizeof mark);
    long long lt0 = trained_of(n[leader].port);
    double cpu0[3], redis_cpu0 = cpu_of(redis_pid);
    for (int i = 0; i < 3; i++)
        cpu0[i] = cpu_of(n[i].pid);
    struct rusage ru0, ru1;
    getrusage(RUSAGE_SELF, &ru0);
    double t_in = now();
    ingest_result cl = ingest(n[fa].port, opt_requests);
    double t_trained = wait_trained(n[leader].port, lt0 + cl.events);
    if (t_trained < 0 || !wait_covered(n[fc].port) || !wait_covered(n[fa].port))
        die("cluster", "ingest not trained and applied within the bound");
    double t_done = now();
    getrusage(RUSAGE_SELF, &ru1);
    double cpu1[3], redis_cpu1 = cpu_of(redis_pid);
    for (int i = 0; i < 3; i++)
        cpu1[i] = cpu_of(n[i].pid);
    long long trained = trained_of(n[leader].port) - lt0;
    delta_sum ds = deltas_since(r, mark);
    char events_key[64];
    snprintf(events_key, sizeof events_key, "hogrec:{%s}:events", CLUSTER);
    long long stream_mem = memory_usage(r, events_key);
    long long stream_len = -1;
    {
        redisReply *rep = NULL;
        if (hr_redis_call(r, &rep, NULL, "XLEN", events_key, NULL) == HR_OK) {
            stream_len = rep->integer;
            freeReplyObject(rep);
        }
    }
    long long stream_events = warm.events + cl.events; /* all the stream holds */

    char role_after[32];
    role_of(n[leader].port, role_after, sizeof role_after);
    if (strcmp(role_after, "leader"))
        printf("note: the leader (%s) is %s after the ingest: the per-event figures below mix "
               "leaders\n", n[leader].id, role_after);
    for (int i = 0; i < 3 && strcmp(role_after, "leader"); i++)
        print_warnings(&n[i]);

    fresh_result cl_fr = freshness(n[fa].port, n[fc].port, 2);

    /* ---- the table ---- */
    const ingest_result *all[] = {&base, &base_db, &cl};
    const char *names[] = {"standalone --db \"\"", "standalone SQLite log", "cluster"};
    for (int k = 0; k < 3; k++)
        if (all[k]->bad)
            printf("%s: %ld non-202 answers, the first: %s\n", names[k], all[k]->bad,
                   all[k]->first_error);
    char v[160], b[160], note[400];
    printf("| figure | cluster | baseline (same run) | note |\n|---|---|---|---|\n");
    snprintf(v, sizeof v, "%.0f", cl.events / cl.seconds);
    snprintf(b, sizeof b, "%.0f (--db \"\"); %.0f (SQLite log, %s)", base.events / base.seconds,
             base_db.events / base_db.seconds, durability);
    snprintf(note, sizeof note,
             "follower A; request p50/p99 %.1f/%.1f ms (standalone %.1f/%.1f); non-202 %ld; "
             "goal >= 200k with always",
             cl.p50_ms, cl.p99_ms, base.p50_ms, base.p99_ms, cl.bad + base.bad + base_db.bad);
    print_row("ingest events/s (202), 100 per request", v, b, note);
    snprintf(v, sizeof v, "%.0f", cl.events / (t_trained - t_in));
    snprintf(note, sizeof note, "first POST until the leader trained the last event");
    print_row("trained events/s (leader)", v, "", note);
    snprintf(v, sizeof v, "%.1f / %.1f (max %.1f)", cl_fr.p50, cl_fr.p99, cl_fr.max);
    snprintf(b, sizeof b, "%.1f / %.1f (max %.1f)", base_fr.p50, base_fr.p99, base_fr.max);
    snprintf(note, sizeof note, "%d samples (%d missed / %d); 202 on A until C's score changes; "
             "goal p99 <= 50 ms", cl_fr.n, cl_fr.missed + base_fr.missed, opt_samples * 2);
    print_row("freshness p50 / p99 ms", v, b, note);
    snprintf(v, sizeof v, "%.0f", (double)ds.bytes / (double)trained);
    snprintf(b, sizeof b, "%.1f posted (NDJSON)", (double)body_bytes / (BODIES * BATCH));
    snprintf(note, sizeof note,
             "%lld events trained, %lld delta parts, %.1f MB, %.2f rows/event, %.0f bytes/row; "
             "event stream %.0f bytes/event in Redis memory",
             trained, ds.entries, ds.bytes / 1e6, (double)ds.rows / (double)trained,
             ds.rows ? (double)ds.bytes / (double)ds.rows : 0.0,
             stream_len > 0 && stream_mem > 0 ? (double)stream_mem / (double)stream_events : -1);
    print_row("delta bytes per trained event", v, b, note);
    double cpu_c = cpu1[fc] - cpu0[fc], cpu_l = cpu1[leader] - cpu0[leader],
           cpu_a = cpu1[fa] - cpu0[fa];
    snprintf(v, sizeof v, "%.2f", cpu_c / (double)ds.rows * 1e6);
    snprintf(b, sizeof b, "%.2f (leader, per trained event)", cpu_l / (double)trained * 1e6);
    snprintf(note, sizeof note, "follower C, per row its deltas carried (%lld rows)", ds.rows);
    print_row("CPU us per applied row", v, b, note);
    snprintf(v, sizeof v, "%.2f", cpu_a / (double)cl.events * 1e6);
    snprintf(b, sizeof b, "%.2f (standalone --db \"\", HTTP and training)", base_cpu_per_event * 1e6);
    snprintf(note, sizeof note, "follower A: HTTP, validation and the append to Redis");
    print_row("CPU us per event posted", v, b, note);
    double client = (double)(ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec) +
                    (double)(ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec) +
                    (double)(ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec) / 1e6 +
                    (double)(ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec) / 1e6;
    snprintf(v, sizeof v, "A %.1f, leader %.1f, C %.1f, redis %.1f, client %.1f", cpu_a, cpu_l,
             cpu_c, redis_cpu1 - redis_cpu0, client);
    snprintf(note, sizeof note, "CPU seconds over %.1f s (ingest through catch-up) on %ld CPUs",
             t_done - t_in, sysconf(_SC_NPROCESSORS_ONLN));
    print_row("CPU s during the cluster ingest", v, "", note);

    /* ---- failover ---- */
    int count = 3, next_id = 0;
    for (int f = 0; f < opt_failovers; f++) {
        restart_stepped_down(n, count, &next_id);
        int L = wait_leader(n, count);
        int x = (L + 1) % count, y = (L + 2) % count;
        int u, i;
        event_pair((f * 131 + 17) % (BODIES * BATCH), &u, &i);
        hconn cx, cy;
        hc_init(&cx, n[x].port);
        hc_init(&cy, n[y].port);
        double before = NAN;
        for (int k = 0; k < 100 && isnan(before); k++)
            if (isnan(before = score(&cy, u, i)))
                sleep_ms(10);
        if (isnan(before))
            die("failover", "no score from a follower");
        watch_arg w = {.n = n, .count = count, .skip = L};
        atomic_init(&w.stop, false);
        pthread_t th;
        char killed[16];
        snprintf(killed, sizeof killed, "%s", n[L].id);
        double t0 = now();
        kill(n[L].pid, SIGKILL);
        pthread_create(&th, NULL, watch_main, &w);
        double t_202 = -1, t_change = -1;
        while (now() - t0 < WAIT_S && t_202 < 0) {
            if (post_one(&cx, u, i))
                t_202 = now();
            else
                sleep_ms(10);
        }
        if (t_202 > 0)
            t_change = wait_change(&cy, u, i, before, WAIT_S);
        if (t_change < 0)
            atomic_store(&w.stop, true); /* else it runs on until a leader is ready (bounded) */
        pthread_join(th, NULL);
        hc_close(&cx);
        hc_close(&cy);
        stop_pid(n[L].pid); /* reaps it */
        if (t_change < 0 || w.found < 0) {
            fprintf(stderr, "before %.17g, 202 at %.3f, change at %.3f, leader at %.3f\n", before,
                    t_202 - t0, t_change - t0, w.found - t0);
            die("failover", "no new leader, or no score change, within the bound");
        }
        snprintf(v, sizeof v, "%.2f s leader ready; %.2f s 202 + score change", w.found - t0,
                 t_change - t0);
        snprintf(b, sizeof b, "lease_ms %d", opt_lease);
        snprintf(note, sizeof note, "kill -9 of %s; new leader %s; the 202 came at %.3f s",
                 killed, w.who, t_202 - t0);
        print_row("failover", v, b, note);
        /* a replacement joins as a follower */
        char id[16];
        snprintf(id, sizeof id, "r%d", next_id++);
        node_start(&n[L], id, NULL, NULL);
    }

    hr_redis_destroy(r);
    for (int i = 0; i < count; i++)
        node_stop(&n[i]);
    cleanup();
    for (int k = 0; k < BODIES; k++)
        free(bodies[k]);
    return 0;
}

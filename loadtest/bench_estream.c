/*
 * bench_estream.c - the cluster event stream's append rate (estream.h):
 * requests of 100 events (canonical JSON texts of about 50 bytes, each with
 * an id), with appendfsync always and everysec, from 1 and 4 threads
 * sharing one hr_estream (a node: one connection per thread), against a
 * baseline measured in the same run: a plain XADD of the same fields and
 * bytes (no script, no de-duplication) over the same number of
 * connections.
 *
 * usage: bench_estream [requests [redis://HOST:PORT]]
 *   requests: per measurement (default 2000, i.e. 200k events)
 *   URL: use that Redis (its appendfsync is changed with CONFIG SET and
 *        restored; the keys are under a cluster of this run's own name);
 *        without it, a redis-server of its own is started on a free port in
 *        a temporary directory under $TMPDIR (default /tmp), AOF on, AOF
 *        rewrites off, and stopped by its pid at the end.
 * Fixed seeds; bounded: every measurement is a fixed number of requests.
 * Not a test.
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "hogrec/api.h"
#include "hogrec/estream.h"
#include "hogrec/events.h"
#include "bench_machine.h"

#define BATCH 100

static char dir[512];
static pid_t server_pid;
static char url[128];
static char cluster[64];
static int requests = 2000;

static double now(void) { return (double)hr_now_ns() / 1e9; }

static void stop_server(void)
{
    if (server_pid > 0) {
        kill(server_pid, SIGTERM);
        int st;
        for (int i = 0; i < 100 && waitpid(server_pid, &st, WNOHANG) != server_pid; i++)
            nanosleep(&(struct timespec){0, 50000000L}, NULL);
        kill(server_pid, SIGKILL); /* no-op when it is gone */
        waitpid(server_pid, &st, 0);
        server_pid = 0;
    }
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
    stop_server();
    if (dir[0])
        nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static void die(const char *what, const char *msg)
{
    fprintf(stderr, "bench_estream: %s: %s\n", what, msg);
    cleanup();
    exit(1);
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

/* Starts redis-server in a new temporary directory and waits (10 s) for it. */
static void start_server(void)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/bench_estream.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir))
        die("mkdtemp", dir);
    int port = free_port();
    char ports[16];
    snprintf(ports, sizeof ports, "%d", port);
    server_pid = fork();
    if (server_pid < 0)
        die("fork", "failed");
    if (server_pid == 0) {
        int devnull = open("/dev/null", O_RDWR);
        if (devnull >= 0) {
            dup2(devnull, 0);
            dup2(devnull, 1);
            dup2(devnull, 2);
        }
        execlp("redis-server", "redis-server", "--port", ports, "--bind", "127.0.0.1", "--dir", dir,
               "--save", "", "--appendonly", "yes", "--appendfsync", "always",
               "--auto-aof-rewrite-percentage", "0", "--daemonize", "no", (char *)NULL);
        _exit(127);
    }
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", port);
    hr_redis_options o;
    hr_redis_options_defaults(&o);
    for (int i = 0; i < 200; i++) {
        hr_redis *r = NULL;
        if (hr_redis_open(url, &o, &r, NULL) == HR_OK &&
            hr_redis_call(r, NULL, NULL, "PING", NULL) == HR_OK) {
            hr_redis_destroy(r);
            return;
        }
        hr_redis_destroy(r);
        int st;
        if (waitpid(server_pid, &st, WNOHANG) == server_pid) {
            server_pid = 0;
            die("redis-server", "exited at start (is it installed? tools/deps installs it)");
        }
        nanosleep(&(struct timespec){0, 50000000L}, NULL);
    }
    die("redis-server", "did not answer PING within 10 s");
}

/* ---- the events: request r of thread t holds events with ids
 * e<t>_<r*100+j> ---- */

typedef struct {
    char *text[BATCH];
    size_t len[BATCH];
    uint64_t hash[BATCH];
} batch;

static void batch_make(batch *b, int t, int r, hr_rng *rng)
{
    for (int j = 0; j < BATCH; j++) {
        char id[48], user[24], item[24];
        snprintf(id, sizeof id, "e%d_%d", t, r * BATCH + j);
        snprintf(user, sizeof user, "u%" PRIu64, hr_rng_below(rng, 100000));
        snprintf(item, sizeof item, "i%" PRIu64, hr_rng_below(rng, 50000));
        json_t *o = json_pack("{s:s, s:s, s:s, s:i}", "id", id, "user", user, "item", item,
                              "label", (int)hr_rng_below(rng, 2));
        b->text[j] = hr_api_event_text(o, &b->len[j]);
        b->hash[j] = hr_events_id_hash(json_object_get(o, "id"));
        json_decref(o);
        if (!b->text[j])
            die("events", "out of memory");
    }
}

static void batch_free(batch *b)
{
    for (int j = 0; j < BATCH; j++)
        free(b->text[j]);
}

/* ---- one measurement ---- */

typedef struct {
    int mode; /* 0: hr_estream_append; 1: the plain XADD baseline */
    int thread, threads;
    hr_estream *s;     /* mode 0 (shared) */
    hr_redis *r;       /* mode 1 (one per thread) */
    batch *batches;    /* this thread's requests, made before the clock starts */
    int n;
    const char *err;   /* set on the first failure */
    char errbuf[300];
} worker;

static void *work(void *arg)
{
    worker *w = arg;
    char key[128];
    snprintf(key, sizeof key, "hogrec:{%s}:baseline", cluster);
    for (int i = 0; i < w->n; i++) {
        batch *b = &w->batches[i];
        hr_error err = {{0}, {0}};
        hr_status st;
        if (w->mode == 0) {
            hr_estream_appended out;
            st = hr_estream_append(w->s, BATCH, (const char *const *)b->text, b->len, b->hash,
                                   1.7e9 + i, NULL, &out, &err);
            if (st == HR_OK && out.appended != BATCH)
                st = hr_error_set(&err, HR_EINVAL, NULL, "%zu duplicates", out.duplicates);
        } else {
            /* the same fields and bytes as an estream entry */
            size_t total = 0;
            for (int j = 0; j < BATCH; j++)
                total += b->len[j] + 1;
            char *ev = malloc(total), *ids = malloc(BATCH * 16 + 1);
            size_t p = 0;
            for (int j = 0; j < BATCH; j++) {
                memcpy(ev + p, b->text[j], b->len[j]);
                p += b->len[j];
                ev[p++] = '\n';
                snprintf(ids + 16 * j, 17, "%016" PRIx64, b->hash[j]);
            }
            char k[24], t[32];
            snprintf(k, sizeof k, "%d", i + 1);
            snprintf(t, sizeof t, "%.6f", 1.7e9 + i);
            const char *argv[] = {"XADD", key, "*", "v", "1", "k", k, "n", "100", "t", t, "ev", ev, "ids", ids};
            size_t lens[] = {4, strlen(key), 1, 1, 1, 1, strlen(k), 1, 3, 1, strlen(t), 2, p - 1, 3, BATCH * 16};
            st = hr_redis_command(w->r, 15, argv, lens, NULL, &err);
            free(ev);
            free(ids);
        }
        if (st != HR_OK) {
            snprintf(w->errbuf, sizeof w->errbuf, "%s", err.message);
            w->err = w->errbuf;
            return NULL;
        }
    }
    return NULL;
}

/* One command on a connection of its own (arguments NULL-terminated, at
 * most 4); the reply's string, if any, into out (cap bytes). */
static void admin(char *out, size_t cap, const char *a, const char *b, const char *c,
                  const char *d)
{
    hr_redis *r = NULL;
    hr_error err = {{0}, {0}};
    redisReply *rep = NULL;
    if (hr_redis_open(url, NULL, &r, &err) != HR_OK)
        die("connect", err.message);
    if (hr_redis_call(r, &rep, &err, a, b, c, d, NULL) != HR_OK)
        die(a, err.message);
    if (out && rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 && rep->element[1]->str)
        snprintf(out, cap, "%s", rep->element[1]->str);
    freeReplyObject(rep);
    hr_redis_destroy(r);
}

/* Deletes this run's keys (all of them on a server of our own). */
static void clear_keys(void)
{
    char k1[128], k2[128], k3[128];
    snprintf(k1, sizeof k1, "hogrec:{%s}:events", cluster);
    snprintf(k2, sizeof k2, "hogrec:{%s}:events:n", cluster);
    snprintf(k3, sizeof k3, "hogrec:{%s}:baseline", cluster);
    if (server_pid > 0)
        admin(NULL, 0, "FLUSHALL", NULL, NULL, NULL);
    else
        admin(NULL, 0, "DEL", k1, k2, k3);
}

/* events/s of one mode with `threads` threads. */
static double measure(int mode, int threads, int round)
{
    hr_estream *s = NULL;
    hr_error err = {{0}, {0}};
    worker w[8];
    memset(w, 0, sizeof w);
    int per = requests / threads;
    if (mode == 0) {
        hr_estream_options o;
        hr_estream_options_defaults(&o);
        o.cluster = cluster;
        o.dedup_window_ms = 600000;
        o.connections = threads;
        if (hr_estream_open(url, NULL, &o, &s, &err) != HR_OK)
            die("hr_estream_open", err.message);
    }
    hr_rng rng;
    hr_rng_seed(&rng, 42);
    for (int t = 0; t < threads; t++) {
        w[t].mode = mode;
        w[t].thread = t;
        w[t].threads = threads;
        w[t].s = s;
        w[t].n = per;
        w[t].batches = calloc((size_t)per, sizeof(batch));
        for (int i = 0; i < per; i++) /* ids unique across rounds: no duplicates */
            batch_make(&w[t].batches[i], round * 100 + t, i, &rng);
        if (mode == 1 && hr_redis_open(url, NULL, &w[t].r, &err) != HR_OK)
            die("hr_redis_open", err.message);
    }
    pthread_t th[8];
    double t0 = now();
    for (int t = 0; t < threads; t++)
        pthread_create(&th[t], NULL, work, &w[t]);
    for (int t = 0; t < threads; t++)
        pthread_join(th[t], NULL);
    double secs = now() - t0;
    for (int t = 0; t < threads; t++) {
        if (w[t].err)
            die(mode ? "XADD" : "hr_estream_append", w[t].err);
        for (int i = 0; i < per; i++)
            batch_free(&w[t].batches[i]);
        free(w[t].batches);
        hr_redis_destroy(w[t].r);
    }
    hr_estream_destroy(s);
    return (double)per * threads * BATCH / secs;
}

static void machine(void)
{
    char model[256];
    bench_cpu_model(model, sizeof model);
    char ver[64] = "?";
    hr_redis *r = NULL;
    redisReply *rep = NULL;
    if (hr_redis_open(url, NULL, &r, NULL) == HR_OK &&
        hr_redis_call(r, &rep, NULL, "INFO", "server", NULL) == HR_OK) {
        const char *v = strstr(rep->str, "redis_version:");
        if (v)
            sscanf(v + 14, "%63[^\r\n]", ver);
        freeReplyObject(rep);
    }
    hr_redis_destroy(r);
    printf("machine: nproc=%ld, cpu=%s, redis %s at %s, AOF dir %s\n",
           sysconf(_SC_NPROCESSORS_ONLN), model, ver, url, dir[0] ? dir : "(the server's)");
}

int main(int argc, char **argv)
{
    if (argc > 1)
        requests = atoi(argv[1]);
    if (requests < 8 || requests > 1000000) {
        fprintf(stderr, "usage: bench_estream [requests (8-1000000) [redis://HOST:PORT]]\n");
        return 2;
    }
    snprintf(cluster, sizeof cluster, "bench-%ld", (long)getpid());
    if (argc > 2)
        snprintf(url, sizeof url, "%s", argv[2]);
    else
        start_server();
    machine();
    printf("%d requests of %d events per measurement; the baseline is a plain XADD of the same bytes\n",
           requests, BATCH);
    printf("| appendfsync | threads | estream events/s | plain XADD events/s | ratio |\n");
    printf("|---|---|---|---|---|\n");
    char was[32] = "";
    admin(was, sizeof was, "CONFIG", "GET", "appendfsync", NULL);
    static const char *const fsyncs[] = {"always", "everysec"};
    static const int threads[] = {1, 4};
    int round = 0;
    for (size_t f = 0; f < HR_ARRAY_LEN(fsyncs); f++) {
        admin(NULL, 0, "CONFIG", "SET", "appendfsync", fsyncs[f]);
        for (size_t t = 0; t < HR_ARRAY_LEN(threads); t++) {
            clear_keys();
            double base = measure(1, threads[t], round++);
            clear_keys();
            double es = measure(0, threads[t], round++);
            printf("| %s | %d | %.0f | %.0f | %.2f |\n", fsyncs[f], threads[t], es, base,
                   es / base);
            fflush(stdout);
        }
    }
    clear_keys();
    if (was[0])
        admin(NULL, 0, "CONFIG", "SET", "appendfsync", was);
    cleanup();
    return 0;
}

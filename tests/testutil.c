/* testutil.c - see testutil.h. */
#include "testutil.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "hogrec/schedule.h"

const char *tu_shared_data(const char *relpath)
{
    static char path[4096];
    const char *env = getenv("HOGREC_SHARED_DATA");
    const char *src = getenv("HOGREC_SOURCE_DIR");
    if (env && *env) {
        snprintf(path, sizeof path, "%s/%s", env, relpath);
        return access(path, R_OK) == 0 ? path : NULL;
    }
    if (src && *src) {
        snprintf(path, sizeof path, "%s/../shared/data/%s", src, relpath);
        if (access(path, R_OK) == 0)
            return path;
    }
    return NULL;
}

const char *tu_tmpdir(void)
{
    static char path[256];
    const char *base = getenv("TMPDIR");
    snprintf(path, sizeof path, "%s/hogrec-test-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(path)) {
        perror("mkdtemp");
        abort();
    }
    return path;
}

void tu_rmtree(const char *path)
{
    char cmd[4352];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
    if (system(cmd) != 0)
        fprintf(stderr, "warning: could not remove %s\n", path);
}

void tu_skip_marker(const char *file, const char *func)
{
    const char *base = strrchr(file, '/');
    print_message(TU_SKIP_MARKER "%s:%s: ", base ? base + 1 : file, func);
}

__attribute__((constructor)) static void tu_select_tests(void)
{
    const char *only = getenv("HOGREC_TEST_FILTER");
    const char *leave = getenv("HOGREC_TEST_SKIP_FILTER");
    if (only && *only)
        cmocka_set_test_filter(only);
    if (leave && *leave)
        cmocka_set_skip_filter(leave);
}

int tu_terminates(void (*fn)(void *), void *arg, unsigned seconds)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        abort();
    }
    if (pid == 0) {
        fn(arg);
        _exit(0);
    }
    int status = 0;
    for (unsigned i = 0; i < seconds * 20u; i++) { /* polls every 50 ms */
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid)
            return WIFEXITED(status) && WEXITSTATUS(status) == 0;
        nanosleep(&(struct timespec){0, 50000000L}, NULL);
    }
    fprintf(stderr, "tu_terminates: still running after %u s; killing it\n", seconds);
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    return 0;
}

/* ---- small fixtures ---- */

void tu_small_config(hr_config *c, const char *db)
{
    hr_config_defaults(c);
    int n = snprintf(c->db, sizeof c->db, "%s", db);
    assert_true(n >= 0 && (size_t)n < sizeof c->db);
    c->port = 0;
    c->k = 8;
    c->max_users = 1024;
    c->max_items = 1024;
    c->chunk_rows = 64;
    c->context_bits = 8;
    c->threads = 1;
    c->checkpoint_interval = 0;
    c->checkpoint_events = 0;
    c->negative_sampling = HR_CONFIG_NEG_OFF;
}

hr_model *tu_small_model(int64_t max_users, int64_t max_items)
{
    hr_config c;
    tu_small_config(&c, "");
    c.max_users = max_users;
    c.max_items = max_items;
    hr_schedule s;
    hr_schedule_defaults(&s);
    hr_model_config mc;
    hr_error err = {{0}, {0}};
    assert_int_equal(hr_model_config_from(&c, &s, &mc, &err), HR_OK);
    hr_model *m = NULL;
    assert_int_equal(hr_model_create(&mc, &m, &err), HR_OK);
    hr_config_free(&c);
    return m;
}

/* ---- child processes ---- */

static void *child_reaper(void *arg)
{
    tu_child *ch = arg;
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += ch->bound;
    pthread_mutex_lock(&ch->mu);
    while (!ch->exited && pthread_cond_timedwait(&ch->cv, &ch->mu, &until) == 0)
        ;
    if (!ch->exited) {
        ch->killed = true;
        kill(ch->pid, SIGKILL);
    }
    pthread_mutex_unlock(&ch->mu);
    return NULL;
}

void tu_child_spawn(tu_child *ch, char *const argv[], unsigned bound, void (*in_child)(void *),
                    void *arg)
{
    int p[2];
    assert_int_equal(pipe(p), 0);
    fflush(NULL);
    ch->pid = fork();
    assert_true(ch->pid >= 0);
    if (ch->pid == 0) {
        dup2(p[1], 2);
        close(p[0]);
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0)
            dup2(devnull, 1);
        if (in_child)
            in_child(arg);
        execv(argv[0], argv);
        _exit(127);
    }
    close(p[1]);
    ch->log = fdopen(p[0], "r");
    assert_non_null(ch->log);
    ch->port = 0;
    ch->non_json = 0;
    ch->exited = ch->killed = false;
    ch->bound = bound;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&ch->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&ch->mu, NULL);
    assert_int_equal(pthread_create(&ch->reaper, NULL, child_reaper, ch), 0);
}

json_t *tu_child_log_until(tu_child *ch, const char *msg, char *all, size_t cap)
{
    char line[4096];
    while (fgets(line, sizeof line, ch->log)) {
        if (getenv("HOGREC_TEST_DEBUG"))
            fprintf(stderr, "CHILD: %s", line);
        if (all && strlen(all) + strlen(line) < cap)
            strcat(all, line);
        json_t *o = json_loads(line, 0, NULL);
        if (!json_is_object(o))
            ch->non_json++;
        const char *m = json_string_value(json_object_get(o, "msg"));
        if (m && !strcmp(m, "listening"))
            ch->port = (int)json_integer_value(json_object_get(o, "port"));
        if (m && !strcmp(m, msg))
            return o;
        json_decref(o);
    }
    return NULL;
}

int tu_child_wait(tu_child *ch)
{
    char line[4096];
    while (fgets(line, sizeof line, ch->log)) /* the rest of its log */
        if (getenv("HOGREC_TEST_DEBUG"))
            fprintf(stderr, "CHILD: %s", line);
    int status = 0;
    waitpid(ch->pid, &status, 0);
    pthread_mutex_lock(&ch->mu);
    ch->exited = true;
    bool killed = ch->killed;
    pthread_cond_broadcast(&ch->cv);
    pthread_mutex_unlock(&ch->mu);
    pthread_join(ch->reaper, NULL);
    fclose(ch->log);
    ch->log = NULL;
    pthread_cond_destroy(&ch->cv);
    pthread_mutex_destroy(&ch->mu);
    return killed ? -1 : status;
}

/* ---- HTTP ---- */

typedef struct {
    char *data;
    size_t len;
} body_buf;

static size_t on_body(char *p, size_t size, size_t n, void *cls)
{
    body_buf *b = cls;
    char *d = realloc(b->data, b->len + size * n + 1);
    if (!d)
        return 0;
    memcpy(d + b->len, p, size * n);
    b->data = d;
    b->len += size * n;
    d[b->len] = 0;
    return size * n;
}

long tu_http(int port, const char *method, const char *path, const char *body, const char *auth,
             json_t **out)
{
    if (out)
        *out = NULL;
    CURL *c = curl_easy_init();
    if (!c)
        return 0;
    char url[2048], hdr[600];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
    body_buf b = {0};
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    h = curl_slist_append(h, "Expect:");
    if (auth) {
        snprintf(hdr, sizeof hdr, "Authorization: %s", auth);
        h = curl_slist_append(h, hdr);
    }
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    if (body)
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 300L);
    long status = 0;
    if (curl_easy_perform(c) == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    if (out && b.data)
        *out = json_loads(b.data, 0, NULL);
    free(b.data);
    return status;
}

/* ---- redis-server ---- */

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t len = sizeof a;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

/* Whether something on port answers a PING (+PONG, or -NOAUTH when a
 * password is set), within about 200 ms. */
static bool redis_answers(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return false;
    struct timeval tv = {0, 200000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    bool ok = false;
    char buf[64] = {0};
    if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        send(fd, "PING\r\n", 6, MSG_NOSIGNAL) == 6 && recv(fd, buf, sizeof buf - 1, 0) > 0)
        ok = !strncmp(buf, "+PONG", 5) || !strncmp(buf, "-NOAUTH", 7);
    close(fd);
    return ok;
}

static bool on_path(const char *prog)
{
    const char *path = getenv("PATH");
    char buf[4096], dir[4096];
    snprintf(buf, sizeof buf, "%s", path && *path ? path : "/usr/bin:/bin");
    for (char *save = NULL, *d = strtok_r(buf, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
        snprintf(dir, sizeof dir, "%s/%s", d, prog);
        if (access(dir, X_OK) == 0)
            return true;
    }
    return false;
}

void tu_redis_start(tu_redis *r)
{
    if (!on_path("redis-server"))
        fail_msg("redis-server is not installed: run tools/deps --test (it installs redis-server)");
    if (!r->dir[0])
        snprintf(r->dir, sizeof r->dir, "%s", tu_tmpdir());
    if (r->port == 0)
        r->port = free_port();
    char port[16], log[300];
    snprintf(port, sizeof port, "%d", r->port);
    snprintf(log, sizeof log, "%s/redis.log", r->dir);
    const char *argv[48] = {"redis-server", "--port", port, "--bind", "127.0.0.1",
                            "--dir", r->dir, "--save", "", "--appendonly", "yes",
                            "--daemonize", "no", "--logfile", log};
    int argc = 15;
    if (r->requirepass) {
        argv[argc++] = "--requirepass";
        argv[argc++] = r->requirepass;
    }
    for (int i = 0; r->extra && r->extra[i]; i++) {
        assert_true(argc < (int)HR_ARRAY_LEN(argv) - 1);
        argv[argc++] = r->extra[i];
    }
    argv[argc] = NULL;
    fflush(NULL);
    r->pid = fork();
    assert_true(r->pid >= 0);
    if (r->pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* a test that dies leaves no server behind */
        int devnull = open("/dev/null", O_RDWR);
        if (devnull >= 0) {
            dup2(devnull, 0); /* no pipe of the test runner stays open in it */
            dup2(devnull, 1);
            dup2(devnull, 2);
        }
        execvp("redis-server", (char *const *)argv);
        _exit(127);
    }
    for (int i = 0; i < 200; i++) { /* 10 s */
        if (redis_answers(r->port))
            return;
        int status;
        if (waitpid(r->pid, &status, WNOHANG) == r->pid) {
            r->pid = 0;
            fail_msg("redis-server exited at start (status %d); see %s", status, log);
        }
        nanosleep(&(struct timespec){0, 50000000L}, NULL);
    }
    fail_msg("redis-server on port %d did not answer PING within 10 s; see %s", r->port, log);
}

void tu_redis_kill(tu_redis *r, int sig)
{
    if (r->pid <= 0)
        return;
    kill(r->pid, sig);
    if (sig != SIGKILL && sig != SIGTERM)
        return;
    int status;
    for (int i = 0; i < 100; i++) { /* 5 s, then SIGKILL */
        if (waitpid(r->pid, &status, WNOHANG) == r->pid) {
            r->pid = 0;
            return;
        }
        nanosleep(&(struct timespec){0, 50000000L}, NULL);
    }
    kill(r->pid, SIGCONT);
    kill(r->pid, SIGKILL);
    waitpid(r->pid, &status, 0);
    r->pid = 0;
}

void tu_redis_stop(tu_redis *r)
{
    if (r->pid > 0) {
        kill(r->pid, SIGCONT); /* a paused one must be able to exit */
        tu_redis_kill(r, SIGTERM);
    }
    if (r->dir[0])
        tu_rmtree(r->dir);
    r->dir[0] = 0;
}

const char *tu_redis_url(const tu_redis *r)
{
    static char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", r->port);
    return url;
}

/* ---- cluster nodes ---- */

json_t *tu_cluster_of(int port)
{
    json_t *o = NULL;
    if (tu_http(port, "GET", "/v1/cluster", NULL, NULL, &o) != 200) {
        json_decref(o);
        return NULL;
    }
    return o;
}

const char *tu_json_str(json_t *o, const char *a, const char *b)
{
    json_t *v = json_object_get(o, a);
    if (b)
        v = json_object_get(v, b);
    return json_string_value(v) ? json_string_value(v) : "";
}

hr_estream_id tu_stream_id(const char *text)
{
    hr_estream_id id = {0, 0};
    hr_error err = {{0}, {0}};
    if (hr_estream_id_parse(text, &id, &err) != HR_OK)
        fail_msg("not a stream id: '%s'", text);
    return id;
}

hr_estream_id tu_stream_last(const char *url, const char *name)
{
    hr_estream_options eo;
    hr_estream_options_defaults(&eo);
    eo.cluster = name;
    eo.connections = 1;
    hr_estream *es = NULL;
    hr_error err = {{0}, {0}};
    if (hr_estream_open(url, NULL, &eo, &es, &err) != HR_OK)
        fail_msg("cannot open the event stream: %s", err.message);
    hr_estream_id last = {0, 0};
    uint64_t ordinal = 0;
    if (hr_estream_last(es, &last, &ordinal, &err) != HR_OK)
        fail_msg("cannot read the event stream's last entry: %s", err.message);
    hr_estream_destroy(es);
    return last;
}

bool tu_wait_covered(int port, hr_estream_id last, int seconds)
{
    for (int round = 0; round < seconds * 20; round++) {
        json_t *o = tu_cluster_of(port);
        bool covered =
            o && hr_estream_id_cmp(tu_stream_id(tu_json_str(o, "applied", "covered_entry")),
                                   last) >= 0;
        json_decref(o);
        if (covered)
            return true;
        struct timespec ts = {0, 50 * 1000000L};
        nanosleep(&ts, NULL);
    }
    return false;
}

long long tu_events_counted(int port)
{
    json_t *o = tu_cluster_of(port);
    json_t *v = json_object_get(json_object_get(o, "model"), "events_counted");
    long long n = json_is_integer(v) ? (long long)json_integer_value(v) : -1;
    json_decref(o);
    return n;
}

/* ---- nodes a test spawns ---- */

static pid_t g_nodes[32];
static size_t g_nnodes;

const char *tu_hogrec_bin(void)
{
    const char *bin = getenv("HOGREC_BIN");
    if (!bin || access(bin, X_OK) != 0)
        TU_SKIP("HOGREC_BIN not set or not executable (run through ctest)");
    return bin;
}

bool tu_node_spawn(tu_child *ch, const char *const *argv, unsigned bound)
{
    tu_child_spawn(ch, (char *const *)argv, bound, NULL, NULL);
    if (g_nnodes < sizeof g_nodes / sizeof g_nodes[0])
        g_nodes[g_nnodes++] = ch->pid;
    json_t *ready = tu_child_log_until(ch, "ready", NULL, 0);
    json_decref(ready);
    if (ready && ch->port)
        return true;
    kill(ch->pid, SIGKILL);
    tu_child_wait(ch);
    return false;
}

int tu_nodes_teardown(void **state)
{
    (void)state;
    for (size_t i = 0; i < g_nnodes; i++)
        if (kill(g_nodes[i], 0) == 0 && waitpid(g_nodes[i], NULL, WNOHANG) == 0) {
            kill(g_nodes[i], SIGCONT);
            kill(g_nodes[i], SIGKILL);
        }
    g_nnodes = 0;
    return 0;
}

void tu_sleep_ms(int ms)
{
    nanosleep(&(struct timespec){ms / 1000, (long)(ms % 1000) * 1000000L}, NULL);
}

int tu_wait_leader(tu_child *n, int nodes, int seconds)
{
    for (int round = 0; round < seconds * 20; round++) {
        int leader = -1, leaders = 0, ready = 0;
        for (int i = 0; i < nodes; i++) {
            if (tu_http(n[i].port, "GET", "/readyz", NULL, NULL, NULL) == 200)
                ready++;
            json_t *o = tu_cluster_of(n[i].port);
            if (o && !strcmp(tu_json_str(o, "role", NULL), "leader")) {
                leader = i;
                leaders++;
            }
            json_decref(o);
        }
        if (ready == nodes && leaders == 1)
            return leader;
        tu_sleep_ms(50);
    }
    for (int i = 0; i < nodes; i++) {
        json_t *o = tu_cluster_of(n[i].port);
        fprintf(stderr, "node on port %d: role %s, not_ready '%s'\n", n[i].port,
                tu_json_str(o, "role", NULL), tu_json_str(o, "not_ready", NULL));
        json_decref(o);
    }
    fail_msg("no single leader with every node ready within %d s", seconds);
    return -1;
}

/* ---- the planted world ---- */

void tu_planted_make(tu_planted *w, hr_rng *rng)
{
    for (int u = 0; u < TU_PU; u++)
        for (int d = 0; d < TU_PK; d++)
            w->u[u][d] = hr_rng_normal(rng);
    for (int i = 0; i < TU_PI; i++) {
        for (int d = 0; d < TU_PK; d++)
            w->i[i][d] = hr_rng_normal(rng);
        w->ib[i] = 0.5 * hr_rng_normal(rng);
    }
}

double tu_planted_logit(const tu_planted *w, unsigned u, unsigned i)
{
    double dot = 0;
    for (int d = 0; d < TU_PK; d++)
        dot += w->u[u][d] * w->i[i][d];
    return 1.5 * dot / sqrt(TU_PK) + w->ib[i];
}

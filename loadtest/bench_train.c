/*
 * bench_train.c - training throughput: updates/s through the real ingest
 * path, queue and trainer threads, against (1) a bare loop of the same
 * update in this process (touch + kernel step + dirty mark, Hogwild over
 * the same threads, no queue) on the same events and (2) the bare-loop
 * probe of ../shared/probes (sgd.c: the plain Hogwild logistic-MF AdaGrad
 * update, no model around it), built out of tree into a temporary
 * directory and run in the same run with the same k, tables, optimizer and
 * threads. Without the probe it says so and prints hogrec's figures only.
 * Also bytes per row against the raw size (k floats plus optimizer state),
 * and the CPU time of the run through the trainers per event: the producer
 * (the main thread, pushing 256-event batches as a POST /v1/events does)
 * and the other threads (the trainers, mostly), so a producer that would be
 * the bottleneck shows.
 *
 * usage: bench_train [--full] [--events N] [--k K] [--tables 0|1]
 *                    [--threads T] [--dram-users U] [--dram-items I]
 *                    [--probe DIR | --no-probe] [--kernel NAME]
 * Default (quick): 1M events per configuration, probe 3 repetitions;
 * --full: 4M events, 5 repetitions. Every k in {16, 64, 128}, both table
 * sizes (0 = 1k x 1k, in cache; 1 = 2M x 500k, DRAM), 1 to ncpu threads.
 * The probe is looked for in DIR, else <source tree>/../shared/probes.
 * --kernel: the update kernel's variant (hr_sgd_kernel_select; default auto).
 * Not a test: prints figures, asserts nothing.
 */
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "hogrec/app.h"
#include "hogrec/sgd.h"
#include "bench_machine.h"

typedef struct {
    const char *name;
    unsigned users, items;
} table_size;

static hr_app *open_app(unsigned k, unsigned threads, const table_size *ts, size_t nevents)
{
    hr_config c;
    hr_config_defaults(&c);
    c.db[0] = 0;
    hr_error err;
    char v[64];
#define SET(name, fmt, val)                                                                    \
    snprintf(v, sizeof v, fmt, val);                                                           \
    if (hr_config_set(&c, name, v, &err) != HR_OK) {                                           \
        fprintf(stderr, "%s: %s\n", name, err.message);                                        \
        exit(1);                                                                               \
    }
    SET("k", "%u", k);
    SET("threads", "%u", threads);
    SET("max_users", "%u", ts->users + 16);
    SET("max_items", "%u", ts->items + 16);
    SET("queue_capacity", "%zu", (size_t)1 << 16);
    SET("negative_sampling", "%s", "off");
    SET("context_bits", "%d", 4);
    (void)nevents;
    hr_app *app;
    if (hr_app_open(&c, &app, &err) != HR_OK) {
        fprintf(stderr, "open: %s\n", err.message);
        exit(1);
    }
    hr_config_free(&c);
    return app;
}

static void fill_ids(hr_app *app, const table_size *ts)
{
    char id[32];
    uint32_t row;
    for (unsigned u = 0; u < ts->users; u++) {
        int n = snprintf(id, sizeof id, "u%u", u);
        hr_model_intern(app->model, HR_TABLE_USER, id, (size_t)n, &row, NULL);
    }
    for (unsigned i = 0; i < ts->items; i++) {
        int n = snprintf(id, sizeof id, "i%u", i);
        hr_model_intern(app->model, HR_TABLE_ITEM, id, (size_t)n, &row, NULL);
    }
}

static void make_events(hr_event *ev, size_t n, const table_size *ts, uint64_t seed)
{
    hr_rng rng;
    hr_rng_seed(&rng, seed);
    memset(ev, 0, n * sizeof *ev);
    for (size_t e = 0; e < n; e++) {
        ev[e].user = 1 + (uint32_t)hr_rng_below(&rng, ts->users); /* rows = id order + 1 */
        ev[e].item = 1 + (uint32_t)hr_rng_below(&rng, ts->items);
        ev[e].label = (float)(hr_rng_below(&rng, 2));
        ev[e].weight = 1;
        ev[e].flags = HR_EV_EXPLICIT_LABEL;
    }
}

static uint64_t cpu_ns(clockid_t c)
{
    struct timespec ts;
    clock_gettime(c, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* CPU time of a run through the trainers, ns per event: the producer (this
 * thread) and every other thread of the process (the trainers, mostly). */
typedef struct {
    double producer, others;
} cpu_split;

static double through_trainers(hr_app *app, hr_event *ev, size_t n, cpu_split *cpu)
{
    hr_error err;
    uint64_t seq;
    uint64_t p0 = cpu_ns(CLOCK_PROCESS_CPUTIME_ID), m0 = cpu_ns(CLOCK_THREAD_CPUTIME_ID);
    uint64_t t0 = hr_now_ns();
    /* Producer batches the size of a typical POST /v1/events (256 events):
     * each push copies its batch under the queue lock. */
    for (size_t i = 0; i < n; i += 256) {
        size_t m = n - i < 256 ? n - i : 256;
        hr_ingest_submit(app->ingest, ev + i, NULL, NULL, m, true, &seq, &err);
    }
    hr_trainer_wait_idle(app->trainer);
    double secs = (hr_now_ns() - t0) / 1e9;
    uint64_t m = cpu_ns(CLOCK_THREAD_CPUTIME_ID) - m0, p = cpu_ns(CLOCK_PROCESS_CPUTIME_ID) - p0;
    cpu->producer = (double)m / (double)n;
    cpu->others = (double)(p - m) / (double)n;
    return secs;
}

typedef struct {
    hr_app *app;
    const hr_event *ev;
    size_t n;
} bare_job;

static void *bare_loop(void *arg)
{
    bare_job *j = arg;
    hr_model *m = j->app->model;
    const hr_row_layout *L = hr_model_layout(m);
    const hr_schedule *s = hr_schedbox_current(j->app->sched);
    hr_step_params p;
    memset(&p, 0, sizeof p);
    p.loss = HR_LOSS_LOGISTIC;
    p.opt = s->optimizer;
    for (int g = 0; g < HR_GROUP_COUNT; g++) {
        p.rate[g] = (float)hr_schedule_group_rate(s, (hr_group)g, 0, 0);
        p.l2[g] = (float)hr_model_get_config(m)->l2[g];
    }
    p.clip = (float)hr_model_get_config(m)->grad_clip;
    hr_active a[HR_MAX_ACTIVE];
    uint32_t now = hr_model_clock(m);
    for (size_t e = 0; e < j->n; e++) {
        const hr_event *ev = &j->ev[e];
        if (e + 4 < j->n) { /* the trainers prefetch the same way */
            hr_model_prefetch(m, HR_TABLE_USER, j->ev[e + 4].user);
            hr_model_prefetch(m, HR_TABLE_ITEM, j->ev[e + 4].item);
        }
        hr_sgd_touch(L, hr_model_row(m, HR_TABLE_USER, ev->user), now);
        hr_sgd_touch(L, hr_model_row(m, HR_TABLE_ITEM, ev->item), now);
        int na = hr_model_active(m, ev, a);
        double y;
        hr_sgd_step(L, a, na, ev->label, ev->weight, &p, &y, NULL);
        hr_model_mark_dirty(m, HR_TABLE_USER, ev->user);
        hr_model_mark_dirty(m, HR_TABLE_ITEM, ev->item);
    }
    return NULL;
}

static double bare(hr_app *app, const hr_event *ev, size_t n, unsigned threads)
{
    pthread_t th[64];
    bare_job jobs[64];
    uint64_t t0 = hr_now_ns();
    for (unsigned t = 0; t < threads; t++) {
        size_t lo = n * t / threads, hi = n * (t + 1) / threads;
        jobs[t] = (bare_job){app, ev + lo, hi - lo};
        pthread_create(&th[t], NULL, bare_loop, &jobs[t]);
    }
    for (unsigned t = 0; t < threads; t++)
        pthread_join(th[t], NULL);
    return (hr_now_ns() - t0) / 1e9;
}

/* ---- the probe (../shared/probes/sgd.c), built out of tree ---- */

typedef struct {
    char dir[4096];   /* the probe's sources */
    char tmp[64];     /* the build directory, "" when none */
    char exe[128];    /* the built binary, "" when unavailable */
} probe;

static bool probe_build(probe *pr, const char *dir)
{
    pr->tmp[0] = pr->exe[0] = 0;
    snprintf(pr->dir, sizeof pr->dir, "%s", dir);
    char src[4200];
    snprintf(src, sizeof src, "%s/sgd.c", dir);
    struct stat st;
    if (stat(src, &st) != 0) {
        printf("probe: %s not found: hogrec's figures only\n", src);
        return false;
    }
    snprintf(pr->tmp, sizeof pr->tmp, "/tmp/hogrec-probe-XXXXXX");
    if (!mkdtemp(pr->tmp)) {
        printf("probe: no temporary directory: hogrec's figures only\n");
        pr->tmp[0] = 0;
        return false;
    }
    /* Its own Makefile, run in the temporary directory; VPATH finds the
     * sources where they are (nothing is written next to them). */
    char cmd[9000];
    snprintf(cmd, sizeof cmd, "make -s -C '%s' -f '%s/Makefile' VPATH='%s' sgd >&2", pr->tmp, dir,
             dir);
    int rc = system(cmd);
    snprintf(pr->exe, sizeof pr->exe, "%s/sgd", pr->tmp);
    if (rc != 0 || stat(pr->exe, &st) != 0) {
        printf("probe: building %s failed: hogrec's figures only\n", src);
        pr->exe[0] = 0;
        return false;
    }
    printf("probe: %s, built in %s\n", src, pr->tmp);
    return true;
}

static void probe_cleanup(probe *pr)
{
    if (pr->exe[0])
        unlink(pr->exe);
    if (pr->tmp[0])
        rmdir(pr->tmp);
}

/* Runs the probe; returns its median M upd/s, or 0 on failure. */
static double probe_run(const probe *pr, unsigned k, const table_size *ts, unsigned threads,
                        bool dram, size_t n, int reps)
{
    if (!pr->exe[0])
        return 0;
    char cmd[512];
    snprintf(cmd, sizeof cmd, "'%s' -u %u -i %u -k %u -t %u -l -b%s -n %zu -r %d", pr->exe,
             ts->users, ts->items, k, threads, dram ? " -p 8" : "", n / threads, reps);
    FILE *f = popen(cmd, "r");
    if (!f)
        return 0;
    char line[512];
    double med = 0;
    while (fgets(line, sizeof line, f)) {
        const char *m = strstr(line, "median ");
        if (m)
            med = strtod(m + 7, NULL);
    }
    return pclose(f) == 0 ? med : 0;
}

static void usage(void)
{
    fprintf(stderr, "usage: bench_train [--full] [--events N] [--k K] [--tables 0|1] "
                    "[--threads T] [--dram-users U] [--dram-items I] [--probe DIR | --no-probe] "
                    "[--kernel NAME]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    size_t n = 0;
    bool full = false, use_probe = true;
    unsigned only_k = 0, only_threads = 0;
    int only_size = -1;
    const char *probe_dir = NULL, *kernel = "auto";
    table_size sizes[] = {{"1k x 1k (in cache)", 1000, 1000}, {"", 2000000, 500000}};
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(o, "--full"))
            full = true;
        else if (!strcmp(o, "--no-probe"))
            use_probe = false;
        else if (!v)
            usage();
        else if (!strcmp(o, "--events"))
            n = strtoull(v, NULL, 10), i++;
        else if (!strcmp(o, "--k"))
            only_k = (unsigned)atoi(v), i++;
        else if (!strcmp(o, "--tables"))
            only_size = atoi(v), i++;
        else if (!strcmp(o, "--threads"))
            only_threads = (unsigned)atoi(v), i++;
        else if (!strcmp(o, "--dram-users"))
            sizes[1].users = (unsigned)strtoul(v, NULL, 10), i++;
        else if (!strcmp(o, "--dram-items"))
            sizes[1].items = (unsigned)strtoul(v, NULL, 10), i++;
        else if (!strcmp(o, "--probe"))
            probe_dir = v, i++;
        else if (!strcmp(o, "--kernel"))
            kernel = v, i++;
        else
            usage();
    }
    if (n == 0)
        n = full ? 4000000 : 1000000;
    const int reps = full ? 5 : 3;
    char dram_name[64];
    if (sizes[1].users % 1000000 == 0)
        snprintf(dram_name, sizeof dram_name, "%uM x %uk (DRAM)", sizes[1].users / 1000000,
                 sizes[1].items / 1000);
    else
        snprintf(dram_name, sizeof dram_name, "%uk x %uk (DRAM)", sizes[1].users / 1000,
                 sizes[1].items / 1000);
    sizes[1].name = dram_name;
    bench_print_machine();
    if (!hr_sgd_kernel_select(kernel)) {
        fprintf(stderr, "bench_train: kernel %s: unknown or not on this CPU\n", kernel);
        return 2;
    }
    printf("kernel: %s\n", hr_sgd_kernel_name());
    probe pr = {{0}, {0}, {0}};
    if (use_probe) {
        char def[4096];
        if (!probe_dir) {
            snprintf(def, sizeof def, "%s/../shared/probes", HOGREC_SOURCE_DIR);
            probe_dir = def;
        }
        probe_build(&pr, probe_dir);
    } else {
        printf("probe: not used (--no-probe): hogrec's figures only\n");
    }
    unsigned ncpu = (unsigned)sysconf(_SC_NPROCESSORS_ONLN);
    if (ncpu > 64)
        ncpu = 64;
    const unsigned ks[] = {16, 64, 128};
    hr_event *ev = malloc(n * sizeof *ev), *copy = malloc(n * sizeof *ev);
    printf("events per run: %zu (%s), AdaGrad, logistic, user+item features; probe: sgd -l -b "
           "(-p 8 in DRAM), median of %d\n\n",
           n, full ? "full" : "quick; --full for 4M", reps);
    if (pr.exe[0]) {
        printf("| k | tables | threads | trainers M upd/s | bare loop M upd/s | probe M upd/s | "
               "trainers / probe | trainers / bare loop | producer CPU ns/ev | trainers CPU "
               "ns/ev |\n");
        printf("|---|---|---|---|---|---|---|---|---|---|\n");
    } else {
        printf("| k | tables | threads | trainers M upd/s | bare loop M upd/s | trainers / bare "
               "loop | producer CPU ns/ev | trainers CPU ns/ev |\n");
        printf("|---|---|---|---|---|---|---|---|\n");
    }
    for (size_t si = 0; si < 2; si++) {
        if (only_size >= 0 && (size_t)only_size != si)
            continue;
        for (size_t ki = 0; ki < 3; ki++) {
            if (only_k && ks[ki] != only_k)
                continue;
            for (unsigned th = 1; th <= ncpu; th++) {
                if (only_threads && th != only_threads)
                    continue;
                hr_app *app = open_app(ks[ki], th, &sizes[si], n);
                fill_ids(app, &sizes[si]);
                make_events(ev, n, &sizes[si], 7);
                /* warm-up: touch the tables once so both runs see them resident */
                bare(app, ev, n / 4, th);
                memcpy(copy, ev, n * sizeof *ev);
                cpu_split cpu;
                double tt = through_trainers(app, copy, n, &cpu);
                double tb = bare(app, ev, n, th);
                hr_app_close(app, false); /* the probe runs alone */
                double mt = n / tt / 1e6, mb = n / tb / 1e6;
                if (pr.exe[0]) {
                    double mp = probe_run(&pr, ks[ki], &sizes[si], th, si == 1, n, reps);
                    printf("| %u | %s | %u | %.2f | %.2f | %.2f | %.2f | %.2f | %.0f | %.0f |\n",
                           ks[ki], sizes[si].name, th, mt, mb, mp, mp > 0 ? mt / mp : 0, mt / mb,
                           cpu.producer, cpu.others);
                } else {
                    printf("| %u | %s | %u | %.2f | %.2f | %.2f | %.0f | %.0f |\n", ks[ki],
                           sizes[si].name, th, mt, mb, mt / mb, cpu.producer, cpu.others);
                }
                fflush(stdout);
            }
        }
    }
    probe_cleanup(&pr);
    printf("\n| k | state | bytes/row | raw bytes (k floats + state) | ratio |\n|---|---|---|---|---|\n");
    for (size_t ki = 0; ki < 3; ki++) {
        for (int st = 0; st < 2; st++) {
            hr_model_config mc = {0};
            mc.k = ks[ki];
            mc.state = st ? HR_STATE_ADAGRAD : HR_STATE_SGD;
            mc.chunk_rows = 64;
            for (int t = 0; t < HR_TABLE_COUNT; t++)
                mc.max_rows[t] = 64;
            hr_model *m;
            hr_error err;
            if (hr_model_create(&mc, &m, &err) != HR_OK)
                return 1;
            double row = hr_model_layout(m)->floats * 4.0 + 1; /* + dirty mark */
            double raw = ks[ki] * 4.0 * (st ? 2 : 1);
            printf("| %u | %s | %.0f | %.0f | %.3f |\n", ks[ki], st ? "adagrad" : "sgd", row, raw,
                   row / raw);
            hr_model_destroy(m);
        }
    }
    free(ev);
    free(copy);
    return 0;
}

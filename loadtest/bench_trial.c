/*
 * bench_trial.c - the cost of a counterfactual trial against live
 * training, in one process and one run: (live) a fresh app without a
 * database trains N events through ingest, queue and one trainer thread,
 * and the CPU time of every thread but the submitting one (the trainer's)
 * per trained event is taken; (trial) an app with a database that logged
 * the same N events runs a trial of one candidate over the whole log at
 * trial_cpu_share 1 (no pauses), and its slice hook gives the thread CPU
 * time of the log read per row and of the replays per event replayed
 * (baseline and candidate: 2 x N), and samples the RSS. The rounds
 * alternate live and trial, ROUNDS times; every round is printed, then the
 * medians and the ratio of the trial's replay to live training.
 *
 * usage: bench_trial [--events N] [--rounds R] [--users U] [--items I]
 * Defaults: 200000 events, 3 rounds, 10000 users, 20000 items, the config's
 * defaults otherwise (k, optimizer, batch). Temp files under $TMPDIR.
 * Not a test: prints figures, asserts nothing.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "bench_machine.h"
#include "hogrec/api.h"
#include "hogrec/app.h"
#include "hogrec/model.h"
#include "hogrec/trials.h"

static double thread_cpu(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double process_cpu(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec * 1e-6;
}

static size_t rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long size = 0, res = 0;
    if (f) {
        if (fscanf(f, "%lu %lu", &size, &res) != 2)
            res = 0;
        fclose(f);
    }
    return (size_t)res * (size_t)sysconf(_SC_PAGESIZE);
}

static hr_app *open_app(const char *db, const char *users, const char *items)
{
    hr_config c;
    hr_config_defaults(&c);
    hr_error err;
    const char *kv[] = {"db", db, "port", "0", "threads", "1", "max_users", users,
                        "max_items", items, "checkpoint_interval", "0", "checkpoint_events", "0",
                        "trial_cpu_share", "1", "trial_retain_events", "1000000000",
                        "trial_memory_mb", "4096", NULL};
    for (size_t i = 0; kv[i]; i += 2)
        if (hr_config_set(&c, kv[i], kv[i + 1], &err) != HR_OK) {
            fprintf(stderr, "%s: %s\n", kv[i], err.message);
            exit(1);
        }
    hr_app *app = NULL;
    if (hr_app_open(&c, &app, &err) != HR_OK) {
        fprintf(stderr, "hr_app_open: %s\n", err.message);
        exit(1);
    }
    hr_config_free(&c);
    return app;
}

/* Submits the seeded stream (the same for a given seed) and waits until it
 * is trained. */
static void feed(hr_app *app, size_t n, unsigned users, unsigned items)
{
    enum { B = 256 };
    static hr_event evs[B];
    static char text[B][96];
    const char *json[B];
    size_t len[B];
    srand(3);
    for (size_t i = 0; i < n; i += B) {
        size_t m = n - i < B ? n - i : B;
        for (size_t j = 0; j < m; j++) {
            len[j] = (size_t)snprintf(text[j], sizeof text[j],
                                      "{\"user\":\"u%u\",\"item\":\"i%u\",\"label\":%d}",
                                      (unsigned)rand() % users, (unsigned)rand() % items,
                                      rand() % 2);
            json[j] = text[j];
            json_error_t jerr;
            json_t *obj = json_loads(text[j], 0, &jerr);
            hr_error err;
            if (!obj || hr_api_event_from_json(app->model, obj, &evs[j], NULL, &err) != HR_OK) {
                fprintf(stderr, "event %s refused\n", text[j]);
                exit(1);
            }
            json_decref(obj);
        }
        uint64_t seq;
        hr_error err;
        if (hr_ingest_submit(app->ingest, evs, json, len, m, true, &seq, &err) != HR_OK) {
            fprintf(stderr, "submit: %s\n", err.message);
            exit(1);
        }
    }
    hr_trainer_wait_idle(app->trainer);
}

/* What the trial's slice hook adds up (the trial thread writes; read after
 * the trial ended). */
typedef struct {
    double read_cpu, train_cpu;
    size_t read_rows, train_events, rss_max;
} watch;

static void on_slice(void *ctx, hr_trials_phase phase, size_t events, double cpu, double pause)
{
    (void)pause;
    watch *w = ctx;
    if (phase == HR_TRIALS_READ) {
        w->read_cpu += cpu;
        w->read_rows += events;
    } else {
        w->train_cpu += cpu;
        w->train_events += events;
    }
    size_t r = rss_bytes();
    if (r > w->rss_max)
        w->rss_max = r;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    double s[n];
    memcpy(s, v, sizeof s);
    qsort(s, (size_t)n, sizeof s[0], cmp);
    return n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

#define MAX_ROUNDS 9

int main(int argc, char **argv)
{
    size_t n = 200000;
    int rounds = 3;
    unsigned users = 10000, items = 20000;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--events"))
            n = strtoull(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--rounds"))
            rounds = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--users"))
            users = (unsigned)atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--items"))
            items = (unsigned)atoi(argv[i + 1]);
    }
    if (rounds < 1 || rounds > MAX_ROUNDS || n < 1 || users < 1 || items < 1) {
        fprintf(stderr, "usage: bench_trial [--events N] [--rounds 1-9] [--users U] [--items I]\n");
        return 2;
    }
    bench_print_machine();
    char su[16], si[16];
    snprintf(su, sizeof su, "%u", users * 2);
    snprintf(si, sizeof si, "%u", items * 2);
    const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    char dir[512], db[600], rm[700];
    snprintf(dir, sizeof dir, "%s/bench_trial.XXXXXX", tmp);
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(db, sizeof db, "%s/h.db", dir);

    /* the logged stream, once */
    hr_app *logged = open_app(db, su, si);
    feed(logged, n, users, items);
    size_t live_bytes = hr_model_bytes(logged->model);
    printf("%zu events (%u users x %u items, uniform, labels 0/1), one trainer thread; "
           "live model %zu bytes\n",
           n, users, items, live_bytes);
    printf("round | live train us/event (trainer CPU) | trial replay us/event (CPU) | log read "
           "us/row (CPU) | replay / live | memory_bytes | RSS growth bytes\n");
    double live_us[MAX_ROUNDS], replay_us[MAX_ROUNDS], read_us[MAX_ROUNDS], mem[MAX_ROUNDS],
        rss[MAX_ROUNDS];
    for (int r = 0; r < rounds; r++) {
        /* live: every thread but this one (the trainer and its maintenance) */
        hr_app *live = open_app("", su, si);
        double p0 = process_cpu(), m0 = thread_cpu();
        feed(live, n, users, items);
        double trainer = (process_cpu() - p0) - (thread_cpu() - m0);
        live_us[r] = trainer / (double)n * 1e6;
        hr_app_close(live, true);

        /* trial: one candidate (the baseline and it: 2 replays) over the log */
        watch w = {0};
        hr_trials_set_slice_hook(logged->trials, on_slice, &w);
        size_t rss0 = rss_bytes();
        w.rss_max = rss0;
        json_error_t jerr;
        json_t *body = json_loads(
            "{\"window\":{\"events\":1000000000000},\"candidates\":"
            "[{\"optimizer\":\"adagrad\",\"type\":\"constant\",\"eta0\":0.1}]}",
            0, &jerr);
        json_t *out = NULL;
        const char *code = NULL;
        hr_error err;
        if (hr_trials_start(logged->trials, body, &out, &code, &err) != HR_OK) {
            fprintf(stderr, "trial refused: %s: %s\n", code, err.message);
            return 1;
        }
        json_decref(body);
        char id[16];
        snprintf(id, sizeof id, "%s", json_string_value(json_object_get(out, "id")));
        mem[r] = (double)json_integer_value(json_object_get(out, "memory_bytes"));
        json_decref(out);
        for (int i = 0; i < 60000; i++) { /* bounded: 600 s */
            json_t *j = hr_trials_get(logged->trials, id);
            bool running = !strcmp(json_string_value(json_object_get(j, "status")), "running");
            json_decref(j);
            if (!running)
                break;
            usleep(10000);
        }
        hr_trials_set_slice_hook(logged->trials, NULL, NULL);
        replay_us[r] = w.train_events ? w.train_cpu / (double)w.train_events * 1e6 : NAN;
        read_us[r] = w.read_rows ? w.read_cpu / (double)w.read_rows * 1e6 : NAN;
        rss[r] = (double)(w.rss_max - rss0);
        printf("%d | %.3f | %.3f | %.3f | %.2f | %.0f | %.0f\n", r + 1, live_us[r], replay_us[r],
               read_us[r], replay_us[r] / live_us[r], mem[r], rss[r]);
        fflush(stdout);
    }
    double ml = median(live_us, rounds), mr = median(replay_us, rounds);
    printf("median | %.3f | %.3f | %.3f | %.2f | %.0f | %.0f\n", ml, mr, median(read_us, rounds),
           mr / ml, median(mem, rounds), median(rss, rounds));
    printf("memory against the live model: memory_bytes %.2f x, RSS growth %.2f x\n",
           median(mem, rounds) / (double)live_bytes, median(rss, rounds) / (double)live_bytes);
    hr_app_close(logged, true);
    snprintf(rm, sizeof rm, "rm -rf '%s'", dir);
    if (system(rm) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
    return 0;
}

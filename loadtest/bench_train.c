/*
 * bench_train.c - training throughput: updates/s through the real ingest
 * path, queue and trainer threads, against a bare loop of the same update
 * (touch + kernel step + dirty mark, Hogwild over the same threads) with no
 * queue, measured in the same run on the same events. Also bytes per row
 * against the raw size (k floats plus optimizer state).
 *
 * usage: bench_train [events [k [tables]]]   (default 2000000 events, every k
 * in {16, 64, 128}, both table sizes; tables: 0 = in cache, 1 = DRAM)
 * Not a test: prints figures, asserts nothing.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

static double through_trainers(hr_app *app, hr_event *ev, size_t n)
{
    hr_error err;
    uint64_t seq;
    uint64_t t0 = hr_now_ns();
    /* Producer batches the size of a typical POST /v1/events (256 events):
     * each push copies its batch under the queue lock. */
    for (size_t i = 0; i < n; i += 256) {
        size_t m = n - i < 256 ? n - i : 256;
        hr_ingest_submit(app->ingest, ev + i, NULL, NULL, m, true, &seq, &err);
    }
    hr_trainer_wait_idle(app->trainer);
    return (hr_now_ns() - t0) / 1e9;
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

int main(int argc, char **argv)
{
    size_t n = argc > 1 ? strtoull(argv[1], NULL, 10) : 2000000;
    bench_print_machine();
    unsigned ncpu = (unsigned)sysconf(_SC_NPROCESSORS_ONLN);
    if (ncpu > 64)
        ncpu = 64;
    const table_size sizes[] = {{"1k x 1k (in cache)", 1000, 1000},
                                {"2M x 500k (DRAM)", 2000000, 500000}};
    const unsigned ks[] = {16, 64, 128};
    hr_event *ev = malloc(n * sizeof *ev), *copy = malloc(n * sizeof *ev);
    printf("events per run: %zu, AdaGrad, logistic, user+item features\n\n", n);
    printf("| k | tables | threads | trainers M upd/s | bare loop M upd/s | ratio |\n");
    printf("|---|---|---|---|---|---|\n");
    unsigned only_k = argc > 2 ? (unsigned)atoi(argv[2]) : 0;
    int only_size = argc > 3 ? atoi(argv[3]) : -1;
    for (size_t si = 0; si < 2; si++) {
        if (only_size >= 0 && (size_t)only_size != si)
            continue;
        for (size_t ki = 0; ki < 3; ki++) {
            if (only_k && ks[ki] != only_k)
                continue;
            for (unsigned th = 1; th <= ncpu; th++) {
                hr_app *app = open_app(ks[ki], th, &sizes[si], n);
                fill_ids(app, &sizes[si]);
                make_events(ev, n, &sizes[si], 7);
                /* warm-up: touch the tables once so both runs see them resident */
                bare(app, ev, n / 4, th);
                memcpy(copy, ev, n * sizeof *ev);
                double tt = through_trainers(app, copy, n);
                double tb = bare(app, ev, n, th);
                printf("| %u | %s | %u | %.2f | %.2f | %.2f |\n", ks[ki], sizes[si].name, th,
                       n / tt / 1e6, n / tb / 1e6, tb / tt);
                fflush(stdout);
                hr_app_close(app, false);
            }
        }
    }
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

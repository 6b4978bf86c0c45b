/*
 * bench_kernel.c - the update kernel alone: steps/s of hr_sgd_step on random
 * rows of two tables of 1k rows each, or --rows R (user, item; plus a
 * 100-row context table when
 * --ctx C > 0), no model, queue or trainer around it, one thread. Each
 * round runs every kernel variant this CPU has on the same events from the
 * same starting rows, alternated: the general kernel
 * (hr_sgd_step_general), "exact" (the pair path kept from before the fused
 * kernel; with context features it is the general kernel), then the fused
 * kernel's "generic", "avx2" and "avx512". Prints each variant's median and
 * range over the rounds and its ratio to "exact" in the same round.
 *
 * usage: bench_kernel [--k K] [--ctx C] [--steps N] [--rounds R] [--rows R] [--sgd]
 * Default: k in {16, 64, 128}, C 0 and 2, 2M steps, 5 rounds, 1000 rows, AdaGrad,
 * logistic. Not a test: prints figures, asserts nothing.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hogrec/common.h"
#include "hogrec/sgd.h"
#include "bench_machine.h"

/* users and items per table (--rows; 64 keeps every row in L1/L2) */
static unsigned NU = 1000, NI = 1000;
#define NC 100
#define MAXR 16

/* The thread's CPU time: on a shared machine, time this thread was not
 * running does not count (one thread, no waits: otherwise the same). */
static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void print_load(const char *when)
{
    FILE *f = fopen("/proc/loadavg", "r");
    char buf[128] = "unknown";
    if (f) {
        if (!fgets(buf, sizeof buf, f))
            snprintf(buf, sizeof buf, "unknown\n");
        fclose(f);
    }
    printf("load average %s: %s", when, buf);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef struct {
    uint16_t u, i, c[4];
    float label;
} event;

/* Steps/s of one variant over the events, from the rows in init. */
static double run(const char *variant, const hr_row_layout *L, const hr_step_params *p,
                  const float *init, float *rows, size_t nfl, const event *ev, size_t n, int nctx)
{
    memcpy(rows, init, nfl * sizeof *rows);
    const bool general = !strcmp(variant, "general");
    if (!general && !hr_sgd_kernel_select(variant))
        return 0;
    float *glob = rows, *users = rows + L->floats, *items = users + (size_t)NU * L->floats,
          *ctx = items + (size_t)NI * L->floats;
    double sink = 0, t0 = now_s();
    for (size_t e = 0; e < n; e++) {
        hr_active a[3 + 4];
        a[0] = (hr_active){glob, 1.0f, HR_GROUP_GLOBAL, 0, 0};
        a[1] = (hr_active){users + (size_t)ev[e].u * L->floats, 1.0f, HR_GROUP_USER, 1, 0};
        a[2] = (hr_active){items + (size_t)ev[e].i * L->floats, 1.0f, HR_GROUP_ITEM, 1, 0};
        for (int c = 0; c < nctx; c++)
            a[3 + c] = (hr_active){ctx + (size_t)ev[e].c[c] * L->floats, 1.0f, HR_GROUP_CONTEXT,
                                   1, 0};
        double y;
        if (general)
            hr_sgd_step_general(L, a, 3 + nctx, ev[e].label, 1.0f, p, &y, NULL);
        else
            hr_sgd_step(L, a, 3 + nctx, ev[e].label, 1.0f, p, &y, NULL);
        sink += y;
    }
    double dt = now_s() - t0;
    if (sink != sink) /* keeps the steps: their score is used */
        printf("(a score was NaN)\n");
    return n / dt;
}

int main(int argc, char **argv)
{
    unsigned only_k = 0;
    int only_ctx = -1, rounds = 5;
    size_t n = 2000000;
    bool sgd = false;
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(o, "--sgd"))
            sgd = true;
        else if (v && !strcmp(o, "--k"))
            only_k = (unsigned)atoi(v), i++;
        else if (v && !strcmp(o, "--ctx"))
            only_ctx = atoi(v), i++;
        else if (v && !strcmp(o, "--steps"))
            n = strtoull(v, NULL, 10), i++;
        else if (v && !strcmp(o, "--rounds"))
            rounds = atoi(v), i++;
        else if (v && !strcmp(o, "--rows"))
            NU = NI = (unsigned)atoi(v), i++;
        else {
            fprintf(stderr, "usage: bench_kernel [--k K] [--ctx 0-4] [--steps N] [--rounds R] "
                            "[--rows R] [--sgd]\n");
            return 2;
        }
    }
    if (rounds < 1 || rounds > MAXR || (only_ctx > 4) || n == 0 || NU < 1 || NU > 65535) {
        fprintf(stderr, "bench_kernel: rounds 1-%d, ctx 0-4, steps > 0, rows 1-65535\n", MAXR);
        return 2;
    }
    bench_print_machine();
    hr_sgd_kernel_select("auto");
    printf("kernel chosen by auto: %s; avx2 %s, avx512 %s\n", hr_sgd_kernel_name(),
           hr_sgd_kernel_available("avx2") ? "yes" : "no",
           hr_sgd_kernel_available("avx512") ? "yes" : "no");
    printf("%zu steps per run, %d rounds (variants alternated in each), %s, logistic, one "
           "thread (timed in its CPU time), tables %u x %u (context %d)\n",
           n, rounds, sgd ? "SGD" : "AdaGrad", NU, NI, NC);
    print_load("at start");
    const char *variants[] = {"general", "exact", "generic", "avx2", "avx512"};
    enum { NV = sizeof variants / sizeof variants[0] };
    const unsigned ks[] = {16, 64, 128};
    event *ev = malloc(n * sizeof *ev);
    if (!ev)
        return 1;
    hr_rng rng;
    hr_rng_seed(&rng, 42);
    for (size_t e = 0; e < n; e++) {
        ev[e].u = (uint16_t)hr_rng_below(&rng, NU);
        ev[e].i = (uint16_t)hr_rng_below(&rng, NI);
        for (int c = 0; c < 4; c++)
            ev[e].c[c] = (uint16_t)(c * (NC / 4) + hr_rng_below(&rng, NC / 4)); /* distinct */
        ev[e].label = (float)hr_rng_below(&rng, 2);
    }
    printf("\n| k | context features | variant | M steps/s median (min-max) | / exact, same round "
           "median (min-max) |\n|---|---|---|---|---|\n");
    for (size_t ki = 0; ki < sizeof ks / sizeof ks[0]; ki++) {
        if (only_k && ks[ki] != only_k)
            continue;
        const unsigned k = ks[ki];
        hr_row_layout L = hr_row_layout_make(k, sgd ? HR_STATE_SGD : HR_STATE_ADAGRAD, 1);
        const size_t nfl = (size_t)(1 + NU + NI + NC) * L.floats;
        float *init = calloc(nfl, sizeof *init), *rows = malloc(nfl * sizeof *rows);
        if (!init || !rows)
            return 1;
        for (size_t r = 0; r < 1 + NU + NI + NC; r++) {
            float *row = init + r * L.floats;
            for (uint32_t d = 0; d < k && r > 0; d++)
                row[d] = (float)(hr_rng_normal(&rng) * 0.1);
            if (L.acc)
                for (uint32_t d = 0; d <= k; d++)
                    row[L.acc + d] = 0.1f;
        }
        hr_step_params p;
        memset(&p, 0, sizeof p);
        p.loss = HR_LOSS_LOGISTIC;
        p.opt = sgd ? HR_OPT_SGD : HR_OPT_ADAGRAD;
        for (int g = 0; g < HR_GROUP_COUNT; g++)
            p.rate[g] = sgd ? 0.01f : 0.05f;
        const int ctxs[] = {0, 2};
        for (int ci = 0; ci < 2; ci++) {
            const int nctx = only_ctx >= 0 ? only_ctx : ctxs[ci];
            if (only_ctx >= 0 && ci > 0)
                break;
            double rate[NV][MAXR], ratio[NV][MAXR];
            for (int r = 0; r < rounds; r++) {
                for (int v = 0; v < NV; v++)
                    rate[v][r] = run(variants[v], &L, &p, init, rows, nfl, ev, n, nctx);
                for (int v = 0; v < NV; v++)
                    ratio[v][r] = rate[1][r] > 0 ? rate[v][r] / rate[1][r] : 0;
            }
            for (int v = 0; v < NV; v++) {
                if (rate[v][0] == 0) {
                    printf("| %u | %d | %s | not on this CPU | |\n", k, nctx, variants[v]);
                    continue;
                }
                qsort(rate[v], rounds, sizeof(double), cmp_double);
                qsort(ratio[v], rounds, sizeof(double), cmp_double);
                printf("| %u | %d | %s | %.2f (%.2f-%.2f) | %.2f (%.2f-%.2f) |\n", k, nctx,
                       variants[v], rate[v][rounds / 2] / 1e6, rate[v][0] / 1e6,
                       rate[v][rounds - 1] / 1e6, ratio[v][rounds / 2], ratio[v][0],
                       ratio[v][rounds - 1]);
            }
            fflush(stdout);
        }
        free(init);
        free(rows);
    }
    print_load("at end");
    hr_sgd_kernel_select("auto");
    free(ev);
    return 0;
}

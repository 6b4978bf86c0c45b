/*
 * bench_delta.c - row deltas: bytes per changed row and per trained event,
 * encode and apply time per row, against a plain memcpy of the same bytes
 * measured in the same run (the least a copy of those bytes can cost).
 *
 * A leader model of U users and I items (AdaGrad, logistic) trains E
 * uniform random events through the sgd kernel (touch, step, marks, as the
 * trainers do), then encodes one delta, which a follower of the same shape
 * applies; repeated R times per configuration, the median round reported.
 *
 * usage: bench_delta [users [items [rounds]]]   (default 100000 100000 15)
 * Not a test: prints figures, asserts nothing (beyond a failed call).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hogrec/delta.h"
#include "hogrec/model.h"
#include "hogrec/sgd.h"
#include "bench_machine.h"

static hr_model *make(uint32_t k, uint32_t users, uint32_t items)
{
    hr_model_config mc = {0};
    mc.k = k;
    mc.state = HR_STATE_ADAGRAD;
    mc.loss = HR_LOSS_LOGISTIC;
    mc.init_scale = 0.1f;
    mc.seed = 1;
    mc.chunk_rows = 65536;
    mc.max_rows[HR_TABLE_GLOBAL] = 1;
    mc.max_rows[HR_TABLE_USER] = users + 1;
    mc.max_rows[HR_TABLE_ITEM] = items + 1;
    mc.max_rows[HR_TABLE_CTX] = 16;
    mc.adagrad_init = 0.1f;
    hr_model *m;
    hr_error err;
    if (hr_model_create(&mc, &m, &err) != HR_OK) {
        fprintf(stderr, "model: %s\n", err.message);
        exit(1);
    }
    return m;
}

static void fill(hr_model *m, hr_table_id t, const char *prefix, uint32_t n)
{
    char id[32];
    uint32_t row;
    for (uint32_t i = 0; i < n; i++) {
        int len = snprintf(id, sizeof id, "%s%u", prefix, i);
        if (hr_model_intern(m, t, id, (size_t)len, &row, NULL) != HR_OK)
            exit(1);
    }
}

static void train(hr_model *m, hr_rng *rng, uint32_t users, uint32_t items, uint32_t events)
{
    const hr_row_layout *L = hr_model_layout(m);
    hr_step_params p;
    memset(&p, 0, sizeof p);
    p.loss = HR_LOSS_LOGISTIC;
    p.opt = HR_OPT_ADAGRAD;
    for (int g = 0; g < HR_GROUP_COUNT; g++)
        p.rate[g] = 0.05f;
    uint32_t now = hr_model_clock(m);
    hr_event ev;
    memset(&ev, 0, sizeof ev);
    hr_active a[HR_MAX_ACTIVE];
    for (uint32_t e = 0; e < events; e++) {
        ev.user = 1 + (uint32_t)hr_rng_below(rng, users); /* rows = id order + 1 */
        ev.item = 1 + (uint32_t)hr_rng_below(rng, items);
        ev.label = (float)hr_rng_below(rng, 2);
        ev.weight = 1;
        hr_sgd_touch(L, hr_model_row(m, HR_TABLE_USER, ev.user), now);
        hr_sgd_touch(L, hr_model_row(m, HR_TABLE_ITEM, ev.item), now);
        int n = hr_model_active(m, &ev, a);
        double y;
        hr_sgd_step(L, a, n, ev.label, ev.weight, &p, &y, NULL);
        hr_model_mark_dirty(m, HR_TABLE_GLOBAL, 0);
        hr_model_mark_dirty(m, HR_TABLE_USER, ev.user);
        hr_model_mark_dirty(m, HR_TABLE_ITEM, ev.item);
    }
}

static int by_value(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, by_value);
    return v[n / 2];
}

int main(int argc, char **argv)
{
    uint32_t users = argc > 1 ? (uint32_t)strtoul(argv[1], NULL, 10) : 100000;
    uint32_t items = argc > 2 ? (uint32_t)strtoul(argv[2], NULL, 10) : 100000;
    int rounds = argc > 3 ? atoi(argv[3]) : 15;
    if (rounds < 1 || rounds > 1000 || users < 1 || items < 1)
        return 2;
    bench_print_machine();
    printf("%u users x %u items, AdaGrad, logistic, uniform events; median of %d rounds\n\n",
           users, items, rounds);
    printf("| k | events/delta | rows/delta | bytes/row | bytes/event | encode ns/row | apply "
           "ns/row | memcpy ns/row | encode/memcpy | apply/memcpy |\n");
    printf("|---|---|---|---|---|---|---|---|---|---|\n");
    const uint32_t ks[] = {16, 64};
    const uint32_t events[] = {1000, 100000};
    double *enc = malloc(sizeof(double) * (size_t)rounds);
    double *app = malloc(sizeof(double) * (size_t)rounds);
    double *cpy = malloc(sizeof(double) * (size_t)rounds);
    for (size_t ki = 0; ki < 2; ki++) {
        hr_model *leader = make(ks[ki], users, items), *follower = make(ks[ki], users, items);
        fill(leader, HR_TABLE_USER, "u", users);
        fill(leader, HR_TABLE_ITEM, "i", items);
        hr_delta_buf b = {0};
        hr_delta_state st = {0};
        hr_delta_header h = {.epoch = 1};
        hr_error err;
        /* the first delta carries every id: the follower starts equal */
        h.seq = 1;
        if (hr_delta_encode(leader, &h, 0, &b, &err) != HR_OK ||
            hr_delta_apply(follower, b.data, b.len, &st, &err) != HR_OK) {
            fprintf(stderr, "first delta: %s\n", err.message);
            return 1;
        }
        hr_rng rng;
        hr_rng_seed(&rng, 7);
        for (size_t ei = 0; ei < 2; ei++) {
            uint64_t rows = 0, bytes = 0;
            for (int r = 0; r < rounds; r++) {
                train(leader, &rng, users, items, events[ei]);
                h.seq++;
                uint64_t t0 = hr_now_ns();
                if (hr_delta_encode(leader, &h, 0, &b, &err) != HR_OK)
                    return 1;
                uint64_t t1 = hr_now_ns();
                if (hr_delta_apply(follower, b.data, b.len, &st, &err) != HR_OK) {
                    fprintf(stderr, "apply: %s\n", err.message);
                    return 1;
                }
                uint64_t t2 = hr_now_ns();
                /* the baseline: the same number of bytes, memcpy'd once */
                uint8_t *dst = malloc(b.len);
                memset(dst, 1, b.len); /* resident, as the follower's rows are */
                uint64_t t3 = hr_now_ns();
                memcpy(dst, b.data, b.len);
                uint64_t t4 = hr_now_ns();
                if (dst[b.len / 2] != b.data[b.len / 2])
                    return 1;
                free(dst);
                rows += b.rows;
                bytes += b.len;
                enc[r] = (double)(t1 - t0) / (double)b.rows;
                app[r] = (double)(t2 - t1) / (double)b.rows;
                cpy[r] = (double)(t4 - t3) / (double)b.rows;
            }
            double e = median(enc, rounds), a = median(app, rounds), c = median(cpy, rounds);
            printf("| %u | %u | %.0f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f |\n", ks[ki],
                   events[ei], (double)rows / rounds, (double)bytes / (double)rows,
                   (double)bytes / ((double)events[ei] * rounds), e, a, c, e / c, a / c);
            fflush(stdout);
        }
        hr_delta_buf_free(&b);
        hr_model_destroy(leader);
        hr_model_destroy(follower);
    }
    free(enc);
    free(app);
    free(cpy);
    return 0;
}

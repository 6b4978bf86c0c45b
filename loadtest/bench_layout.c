/*
 * bench_layout.c - does the AdaGrad state pay next to the weights it
 * updates? Two row layouts, measured alternately in one run:
 *
 *   (a) split: hogrec's layout (row.h, model.h). Rows of `stride` =
 *       round4(k+3) floats (factors, bias, count, last_seen, pad) in
 *       chunks of CHUNK rows; a chunk is a weights block of CHUNK x stride
 *       floats and then a state block of the same size, so a row's AdaGrad
 *       accumulators (k factors, then the bias) are CHUNK * stride floats
 *       from the row.
 *   (b) interleaved: each row's weights (the same stride floats) directly
 *       followed by its state (stride floats), rows 2 * stride floats apart.
 *
 * Part 1, the update: logistic MF with biases under AdaGrad (user row and
 * item row; the score as 8-lane sums like sgd.c, then one pass of gradient,
 * accumulator and weight per coordinate). One kernel, called with the
 * state's offset (CHUNK * stride in (a), stride in (b)), so both layouts do
 * the same arithmetic; at the end every row of (a) and (b) is compared bit
 * for bit, and the kernel is first checked against a plain reference on
 * separate arrays over a few thousand events. 1 thread, uniform random
 * events, a software prefetch PF events ahead of the factors and the
 * accumulators of both rows (two ranges: in (a) two blocks, in (b) one
 * row). Tables in cache (1k x 1k) and in DRAM (2M x 500k by default).
 *
 * Part 2, the cost on top-K's side: cblas_sgemv over the item rows' k+1
 * first columns (factors and bias), one call per chunk of CHUNK rows as
 * topk.c does, lda = stride in (a) and 2 * stride in (b); 100k and 1M
 * items, k = 64, OpenBLAS on one thread, time per query.
 *
 * Rounds of (a) and (b) alternate (the machine is shared); each figure is
 * the median over rounds, with min-max. Not a test: prints figures and
 * exits non-zero only when a check fails.
 *
 * usage: bench_layout [--rounds R] [--events N] [--dram-users U]
 *                     [--dram-items I] [--no-dram] [--queries Q]
 */
#include <cblas.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_machine.h"

void openblas_set_num_threads(int num_threads);

#define CHUNK 65536u /* rows per chunk: hogrec's default chunk_rows */
#define PF 8         /* events of prefetch distance */
#define MAXR 16      /* most rounds */

static const float RATE = 0.05f, L2 = 1e-4f, G0 = 0.1f;

typedef struct {
    uint32_t u, i;
    float label;
} event;

typedef struct {
    uint32_t k, stride;
    int inter;       /* 0: split (a), 1: interleaved (b) */
    uint64_t rows;   /* rows in the table */
    float *base;
    size_t off;      /* floats from a row to its state */
} table;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint64_t rng_next(uint64_t *s)
{
    /* splitmix64 */
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static float rng_unit(uint64_t *s)
{
    return (float)(rng_next(s) >> 40) * (1.0f / 16777216.0f);
}

static uint32_t stride_of(uint32_t k)
{
    return (k + 3 + 3) & ~3u;
}

static size_t table_floats(uint32_t stride, int inter, uint64_t rows)
{
    if (inter)
        return (size_t)rows * 2 * stride;
    uint64_t chunks = (rows + CHUNK - 1) / CHUNK;
    return (size_t)chunks * 2 * CHUNK * stride;
}

static inline float *row_of(const table *t, uint64_t r)
{
    if (t->inter)
        return t->base + (size_t)r * 2 * t->stride;
    return t->base + (size_t)(r / CHUNK) * 2 * CHUNK * t->stride + (size_t)(r % CHUNK) * t->stride;
}

/* A table of `rows` rows in layout `inter`, every row's values drawn from
 * seed (row r's values depend on seed and r only, not on the layout). */
static int table_make(table *t, uint32_t k, int inter, uint64_t rows, uint64_t seed)
{
    t->k = k;
    t->stride = stride_of(k);
    t->inter = inter;
    t->rows = rows;
    t->off = inter ? t->stride : (size_t)CHUNK * t->stride;
    size_t n = table_floats(t->stride, inter, rows);
    if (posix_memalign((void **)&t->base, 64, n * sizeof(float)) != 0)
        return -1;
    memset(t->base, 0, n * sizeof(float));
    for (uint64_t r = 0; r < rows; r++) {
        uint64_t s = seed ^ (r * 0x2545f4914f6cdd1dull);
        float *w = row_of(t, r), *g = w + t->off;
        for (uint32_t d = 0; d < k; d++) {
            w[d] = (rng_unit(&s) - 0.5f) * 0.2f;
            g[d] = G0;
        }
        w[k] = 0;
        g[k] = G0;
    }
    return 0;
}

static void table_free(table *t)
{
    free(t->base);
    t->base = NULL;
}

static inline float sigmoidf(float y)
{
    return 1.0f / (1.0f + expf(-y));
}

/* The update of one event on rows u and v whose state is `off` floats on.
 * k is a multiple of 8. */
static inline __attribute__((always_inline)) void step(float *restrict u, float *restrict v,
                                                       size_t off, uint32_t k, float label)
{
    typedef float v8 __attribute__((vector_size(32)));
    v8 acc = {0};
    for (uint32_t d = 0; d < k; d += 8) {
        v8 a, b;
        memcpy(&a, u + d, sizeof a);
        memcpy(&b, v + d, sizeof b);
        acc += a * b;
    }
    float l[8];
    memcpy(l, &acc, sizeof l);
    float dot = ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
    float y = (u[k] + v[k]) + dot;
    float g = sigmoidf(y) - label;
    float *restrict au = u + off, *restrict av = v + off;
    for (uint32_t d = 0; d < k; d++) {
        float uw = u[d], vw = v[d];
        float gu = g * vw + L2 * uw, gv = g * uw + L2 * vw;
        float Gu = au[d] + gu * gu, Gv = av[d] + gv * gv;
        au[d] = Gu;
        av[d] = Gv;
        u[d] = uw - RATE * gu / sqrtf(Gu);
        v[d] = vw - RATE * gv / sqrtf(Gv);
    }
    float Gub = au[k] + g * g, Gvb = av[k] + g * g;
    au[k] = Gub;
    av[k] = Gvb;
    u[k] -= RATE * g / sqrtf(Gub);
    v[k] -= RATE * g / sqrtf(Gvb);
}

static inline void prefetch_range(const float *p, uint32_t n)
{
    const char *c = (const char *)p, *end = (const char *)(p + n);
    for (; c < end; c += 64)
        __builtin_prefetch(c, 1, 3);
    __builtin_prefetch(end - 1, 1, 3);
}

/* Events [0, n) on users Ut and items It; returns seconds. */
static double run(table *Ut, table *It, const event *ev, size_t n)
{
    const uint32_t k = Ut->k;
    const size_t off = Ut->off;
    double t0 = now_s();
    for (size_t e = 0; e < n; e++) {
        if (e + PF < n) {
            const float *pu = row_of(Ut, ev[e + PF].u), *pi = row_of(It, ev[e + PF].i);
            prefetch_range(pu, k + 1);
            prefetch_range(pu + off, k + 1);
            prefetch_range(pi, k + 1);
            prefetch_range(pi + off, k + 1);
        }
        step(row_of(Ut, ev[e].u), row_of(It, ev[e].i), off, k, ev[e].label);
    }
    return now_s() - t0;
}

/* The plain reference: separate arrays per row, scalar loops, the same
 * operations in the same order. */
typedef struct {
    float *w, *b, *G, *Gb; /* rows x k, rows, rows x k, rows */
} plain;

static void plain_from(plain *p, const table *t)
{
    uint32_t k = t->k;
    p->w = malloc(t->rows * k * sizeof(float));
    p->G = malloc(t->rows * k * sizeof(float));
    p->b = malloc(t->rows * sizeof(float));
    p->Gb = malloc(t->rows * sizeof(float));
    if (!p->w || !p->G || !p->b || !p->Gb)
        exit(1);
    for (uint64_t r = 0; r < t->rows; r++) {
        const float *w = row_of(t, r);
        memcpy(p->w + r * k, w, k * sizeof(float));
        memcpy(p->G + r * k, w + t->off, k * sizeof(float));
        p->b[r] = w[k];
        p->Gb[r] = w[t->off + k];
    }
}

static void plain_free(plain *p)
{
    free(p->w);
    free(p->b);
    free(p->G);
    free(p->Gb);
}

static void plain_step(plain *Ut, plain *It, uint32_t k, uint32_t ur, uint32_t ir, float label)
{
    float *u = Ut->w + (size_t)ur * k, *v = It->w + (size_t)ir * k;
    float *au = Ut->G + (size_t)ur * k, *av = It->G + (size_t)ir * k;
    float lane[8] = {0};
    for (uint32_t d = 0; d < k; d++)
        lane[d % 8] += u[d] * v[d];
    float dot = ((lane[0] + lane[1]) + (lane[2] + lane[3])) +
                ((lane[4] + lane[5]) + (lane[6] + lane[7]));
    float y = (Ut->b[ur] + It->b[ir]) + dot;
    float g = 1.0f / (1.0f + expf(-y)) - label;
    for (uint32_t d = 0; d < k; d++) {
        float uw = u[d], vw = v[d];
        float gu = g * vw + L2 * uw;
        float gv = g * uw + L2 * vw;
        au[d] = au[d] + gu * gu;
        av[d] = av[d] + gv * gv;
        u[d] = uw - RATE * gu / sqrtf(au[d]);
        v[d] = vw - RATE * gv / sqrtf(av[d]);
    }
    Ut->Gb[ur] = Ut->Gb[ur] + g * g;
    It->Gb[ir] = It->Gb[ir] + g * g;
    Ut->b[ur] = Ut->b[ur] - RATE * g / sqrtf(Ut->Gb[ur]);
    It->b[ir] = It->b[ir] - RATE * g / sqrtf(It->Gb[ir]);
}

/* Whether table t's factors, bias and accumulators equal p's bit for bit. */
static bool plain_equal(const plain *p, const table *t)
{
    uint32_t k = t->k;
    for (uint64_t r = 0; r < t->rows; r++) {
        const float *w = row_of(t, r);
        if (memcmp(p->w + r * k, w, k * sizeof(float)) ||
            memcmp(p->G + r * k, w + t->off, k * sizeof(float)) ||
            memcmp(&p->b[r], &w[k], sizeof(float)) || memcmp(&p->Gb[r], &w[t->off + k], sizeof(float)))
            return false;
    }
    return true;
}

/* Whether tables a and b hold the same rows bit for bit (factors, bias and
 * their accumulators). */
static bool tables_equal(const table *a, const table *b)
{
    uint32_t k = a->k;
    for (uint64_t r = 0; r < a->rows; r++) {
        const float *x = row_of(a, r), *y = row_of(b, r);
        if (memcmp(x, y, (k + 1) * sizeof(float)) ||
            memcmp(x + a->off, y + b->off, (k + 1) * sizeof(float)))
            return false;
    }
    return true;
}

static event *make_events(size_t n, uint64_t users, uint64_t items, uint64_t seed)
{
    event *ev = malloc(n * sizeof *ev);
    if (!ev)
        exit(1);
    for (size_t e = 0; e < n; e++) {
        ev[e].u = (uint32_t)(rng_next(&seed) % users);
        ev[e].i = (uint32_t)(rng_next(&seed) % items);
        ev[e].label = (rng_next(&seed) & 1) ? 1.0f : 0.0f;
    }
    return ev;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(const double *x, int n, double *lo, double *hi)
{
    double s[MAXR];
    memcpy(s, x, n * sizeof *s);
    qsort(s, n, sizeof *s, cmp_d);
    *lo = s[0];
    *hi = s[n - 1];
    return n % 2 ? s[n / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2]);
}

/* The kernel against the plain reference on `n` events of small tables. */
static bool check_reference(uint32_t k, int inter)
{
    const uint64_t users = 300, items = 200;
    const size_t n = 5000;
    table Ut, It;
    if (table_make(&Ut, k, inter, users, 11) || table_make(&It, k, inter, items, 12))
        exit(1);
    plain pu, pi;
    plain_from(&pu, &Ut);
    plain_from(&pi, &It);
    event *ev = make_events(n, users, items, 13);
    run(&Ut, &It, ev, n);
    for (size_t e = 0; e < n; e++)
        plain_step(&pu, &pi, k, ev[e].u, ev[e].i, ev[e].label);
    bool ok = plain_equal(&pu, &Ut) && plain_equal(&pi, &It);
    free(ev);
    plain_free(&pu);
    plain_free(&pi);
    table_free(&Ut);
    table_free(&It);
    return ok;
}

/* One configuration of part 1; returns false when a check fails. */
static bool bench_update(uint32_t k, uint64_t users, uint64_t items, size_t n, int rounds,
                         const char *where)
{
    table Ut[2], It[2];
    for (int l = 0; l < 2; l++)
        if (table_make(&Ut[l], k, l, users, 1) || table_make(&It[l], k, l, items, 2)) {
            fprintf(stderr, "out of memory: %llu x %llu rows at k=%u\n", (unsigned long long)users,
                    (unsigned long long)items, k);
            exit(1);
        }
    event *ev = make_events(n, users, items, 3 + k);
    run(&Ut[0], &It[0], ev, n < 100000 ? n : 100000); /* warm-up, both alike */
    run(&Ut[1], &It[1], ev, n < 100000 ? n : 100000);
    double mups[2][MAXR];
    for (int r = 0; r < rounds; r++)
        for (int j = 0; j < 2; j++) {
            int l = r % 2 ? 1 - j : j; /* a b, b a, a b, ... */
            mups[l][r] = n / run(&Ut[l], &It[l], ev, n) * 1e-6;
        }
    bool same = tables_equal(&Ut[0], &Ut[1]) && tables_equal(&It[0], &It[1]);
    double lo[2], hi[2], med[2], ratio[MAXR];
    for (int l = 0; l < 2; l++)
        med[l] = median(mups[l], rounds, &lo[l], &hi[l]);
    for (int r = 0; r < rounds; r++)
        ratio[r] = mups[1][r] / mups[0][r];
    double rlo, rhi, rmed = median(ratio, rounds, &rlo, &rhi);
    printf("update k=%-3u %-6s split %6.2f (%.2f-%.2f)  interleaved %6.2f (%.2f-%.2f) M upd/s  "
           "b/a %.2f (%.2f-%.2f)  bit-identical %s\n",
           k, where, med[0], lo[0], hi[0], med[1], lo[1], hi[1], rmed, rlo, rhi,
           same ? "yes" : "NO");
    fflush(stdout);
    free(ev);
    for (int l = 0; l < 2; l++) {
        table_free(&Ut[l]);
        table_free(&It[l]);
    }
    return same;
}

/* One query: sgemv per chunk over the first k+1 columns; returns seconds. */
static double scan(const table *t, const float *q, float *out)
{
    const int lda = (int)(t->inter ? 2 * t->stride : t->stride);
    double t0 = now_s();
    for (uint64_t c = 0; c * CHUNK < t->rows; c++) {
        uint64_t len = t->rows - c * CHUNK < CHUNK ? t->rows - c * CHUNK : CHUNK;
        cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)len, (int)t->k + 1, 1.0f,
                    row_of(t, c * CHUNK), lda, q, 1, 0.0f, out + c * CHUNK, 1);
    }
    return now_s() - t0;
}

static void bench_scan(uint64_t items, uint32_t k, int queries, int rounds)
{
    table T[2];
    for (int l = 0; l < 2; l++)
        if (table_make(&T[l], k, l, items, 5)) {
            fprintf(stderr, "out of memory: %llu items\n", (unsigned long long)items);
            exit(1);
        }
    float *q = malloc((k + 1) * sizeof(float));
    float *out[2] = {malloc(items * sizeof(float)), malloc(items * sizeof(float))};
    if (!q || !out[0] || !out[1])
        exit(1);
    uint64_t s = 7;
    for (uint32_t d = 0; d < k; d++)
        q[d] = rng_unit(&s) - 0.5f;
    q[k] = 1.0f;
    scan(&T[0], q, out[0]);
    scan(&T[1], q, out[1]);
    double ms[2][MAXR];
    for (int r = 0; r < rounds; r++)
        for (int j = 0; j < 2; j++) {
            int l = r % 2 ? 1 - j : j;
            double sum = 0;
            for (int i = 0; i < queries; i++)
                sum += scan(&T[l], q, out[l]);
            ms[l][r] = sum / queries * 1e3;
        }
    bool same = memcmp(out[0], out[1], items * sizeof(float)) == 0;
    double lo[2], hi[2], med[2], ratio[MAXR];
    for (int l = 0; l < 2; l++)
        med[l] = median(ms[l], rounds, &lo[l], &hi[l]);
    for (int r = 0; r < rounds; r++)
        ratio[r] = ms[1][r] / ms[0][r];
    double rlo, rhi, rmed = median(ratio, rounds, &rlo, &rhi);
    printf("sgemv %7llu items k=%u  split %7.3f (%.3f-%.3f)  interleaved %7.3f (%.3f-%.3f) "
           "ms/query  b/a %.2f (%.2f-%.2f)  scores equal %s\n",
           (unsigned long long)items, k, med[0], lo[0], hi[0], med[1], lo[1], hi[1], rmed, rlo,
           rhi, same ? "yes" : "no");
    fflush(stdout);
    free(q);
    free(out[0]);
    free(out[1]);
    table_free(&T[0]);
    table_free(&T[1]);
}

int main(int argc, char **argv)
{
    int rounds = 5, queries = 10;
    size_t events = 2000000;
    uint64_t dram_users = 2000000, dram_items = 500000;
    bool dram = true;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--rounds") && i + 1 < argc)
            rounds = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--events") && i + 1 < argc)
            events = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--dram-users") && i + 1 < argc)
            dram_users = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--dram-items") && i + 1 < argc)
            dram_items = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--queries") && i + 1 < argc)
            queries = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--no-dram"))
            dram = false;
        else {
            fprintf(stderr,
                    "usage: %s [--rounds R] [--events N] [--dram-users Ut] [--dram-items It] "
                    "[--no-dram] [--queries Q]\n",
                    argv[0]);
            return 2;
        }
    }
    if (rounds < 1 || rounds > MAXR || queries < 1 || events < 1 || dram_users < 1 ||
        dram_items < 1 || dram_users > UINT32_MAX || dram_items > UINT32_MAX) {
        fprintf(stderr, "bad arguments (rounds 1..%d)\n", MAXR);
        return 2;
    }
    bench_print_machine();
    double load[3] = {0};
    if (getloadavg(load, 3) == 3)
        printf("load average at start: %.2f %.2f %.2f\n", load[0], load[1], load[2]);
    openblas_set_num_threads(1);
    printf("1 thread; stride round4(k+3); chunks of %u rows; prefetch %d events ahead; "
           "%zu events x %d rounds per layout, alternated; median (min-max)\n",
           CHUNK, PF, events, rounds);

    bool ok = true;
    static const uint32_t ks[] = {16, 64, 128};
    for (int j = 0; j < 3; j++)
        for (int l = 0; l < 2; l++)
            if (!check_reference(ks[j], l)) {
                printf("kernel != plain reference at k=%u, layout %c\n", ks[j], l ? 'b' : 'a');
                ok = false;
            }
    if (ok)
        printf("kernel equals the plain reference bit for bit (k 16, 64, 128; both layouts)\n");

    for (int j = 0; j < 3; j++)
        ok &= bench_update(ks[j], 1000, 1000, events, rounds, "cache");
    if (dram) {
        printf("DRAM: %llu users x %llu items\n", (unsigned long long)dram_users,
               (unsigned long long)dram_items);
        for (int j = 0; j < 3; j++)
            ok &= bench_update(ks[j], dram_users, dram_items, events, rounds, "DRAM");
    }
    bench_scan(100000, 64, queries * 10, rounds);
    bench_scan(1000000, 64, queries, rounds);
    if (getloadavg(load, 3) == 3)
        printf("load average at end: %.2f %.2f %.2f\n", load[0], load[1], load[2]);
    return ok ? 0 : 1;
}

/*
 * half.c - half-precision item rows: conversion, the scan kernels and the
 * error bound (see half.h).
 *
 * Design: the fast kernels are compiled for AVX2+FMA+F16C with a function
 * target attribute and picked at run time (__builtin_cpu_supports), so one
 * binary runs on any x86-64 and elsewhere the scalar code runs. The scalar
 * conversion rounds to nearest even exactly as F16C's vcvtps2ph does, so
 * both produce the same bits (test_half checks every half value and many
 * floats).
 *
 * The race: half_row_write reads a live fp32 row that trainers may be
 * writing, and writes a half row that scans may be reading, without locks
 * (the model serializes writers of half rows). Each 2-byte value is stored
 * and loaded whole, so a scan sees, per value, an old or a new one; a row
 * may mix the two, as an fp32 row may for a query today. tests/tsan.supp
 * names this file for that reason; keep such accesses in here.
 *
 * Called from: query threads (sync and scans, through model.c and topk.c).
 */
#include "hogrec/half.h"

#include <math.h>
#include <stdatomic.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#define HALF_X86 1
#else
#define HALF_X86 0
#endif

#define HALF_MAX 65504.0f /* largest finite fp16 */

hr_half_layout hr_half_layout_make(uint32_t k)
{
    hr_half_layout H;
    H.k = k;
    H.dims = (k + 1 + 7) & ~7u;
    H.norm = H.dims;
    H.stride = H.dims + 2;
    return H;
}

/* ---- scalar conversion ---- */

uint16_t hr_half_from_float(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) /* inf or NaN (kept quiet, payload's top bits) */
        return sign | (ax > 0x7f800000u ? (uint16_t)(0x7e00u | ((ax >> 13) & 0x3ffu)) : 0x7c00u);
    if (ax >= 0x477ff000u) /* rounds to >= 65520: overflow */
        return sign | 0x7c00u;
    if (ax < 0x38800000u) { /* below 2^-14: subnormal half (or zero) */
        if (ax < 0x33000000u) /* below 2^-25: rounds to zero (2^-25 ties to even 0) */
            return sign;
        uint32_t e = ax >> 23, mant = (ax & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126 - e; /* value = mant * 2^(e-150); half unit 2^-24 */
        uint32_t q = mant >> shift, rem = mant & ((1u << shift) - 1), halfway = 1u << (shift - 1);
        if (rem > halfway || (rem == halfway && (q & 1)))
            q++;
        return sign | (uint16_t)q;
    }
    /* normal: rebias the exponent, round the mantissa's 13 low bits */
    uint32_t h = ((ax - 0x38000000u) >> 13);
    uint32_t rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1)))
        h++; /* a carry into the exponent is the right result */
    return sign | (uint16_t)h;
}

float hr_half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, mant = h & 0x3ffu, x;
    if (e == 0) {
        float f = (float)mant * 0x1p-24f; /* exact */
        memcpy(&x, &f, sizeof x);
        x |= sign;
    } else if (e == 31) {
        x = sign | 0x7f800000u | (mant << 13);
    } else {
        x = sign | ((e + 112) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &x, sizeof f);
    return f;
}

/* ---- dispatch ---- */

static atomic_int fast_state = -1; /* -1 unknown, 0 scalar, 1 fast */

bool hr_half_fast_available(void)
{
#if HALF_X86
    __builtin_cpu_init();
    /* F16C from CPUID leaf 1 (ECX bit 29): clang before 18 has no "f16c"
     * for __builtin_cpu_supports; the AVX2 check covers the OS saving the
     * YMM state, which F16C needs too. */
    unsigned a, b, c, d;
    bool f16c = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
#else
    return false;
#endif
}

void hr_half_set_fast(bool on)
{
    atomic_store(&fast_state, on && hr_half_fast_available());
}

static bool use_fast(void)
{
    int s = atomic_load_explicit(&fast_state, memory_order_relaxed);
    if (s < 0) {
        s = hr_half_fast_available();
        atomic_store(&fast_state, s);
    }
    return s == 1;
}

/* ---- rows ---- */

#if HALF_X86
__attribute__((target("avx2,fma,f16c"))) static void convert_fast(const float *src, uint32_t n,
                                                                  uint16_t *dst)
{
    uint32_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT);
        _mm_storeu_si128((__m128i *)(dst + i), h);
    }
    for (; i < n; i++)
        dst[i] = hr_half_from_float(src[i]);
}
#endif

void hr_half_row_write(const hr_row_layout *L, const hr_half_layout *H, const float *row,
                       uint16_t *hrow)
{
    float v[H->dims]; /* one read of the live row, then everything from the copy */
    memcpy(v, row, (size_t)(L->k + 1) * sizeof *v);
    memset(v + L->k + 1, 0, (size_t)(H->dims - L->k - 1) * sizeof *v);
    double ss = 0;
    bool wide = false;
    for (uint32_t d = 0; d <= L->k; d++) {
        ss += (double)v[d] * v[d];
        wide |= !(fabsf(v[d]) < HALF_MAX); /* also NaN */
    }
    float norm = INFINITY;
    if (wide) {
        memset(v, 0, (size_t)H->dims * sizeof *v);
    } else {
        norm = (float)sqrt(ss);
        if ((double)norm < sqrt(ss))
            norm = nextafterf(norm, INFINITY);
        norm = nextafterf(norm, INFINITY); /* sqrt's own rounding */
    }
#if HALF_X86
    if (use_fast())
        convert_fast(v, H->dims, hrow);
    else
#endif
        for (uint32_t d = 0; d < H->dims; d++)
            hrow[d] = hr_half_from_float(v[d]);
    memcpy(hrow + H->norm, &norm, sizeof norm);
}

/* ---- scans ---- */

void hr_half_block_scores_ref(const hr_half_layout *H, const uint16_t *block, uint32_t nrows,
                              const float *qx, float *out)
{
    for (uint32_t i = 0; i < nrows; i++) {
        const uint16_t *r = block + (size_t)i * H->stride;
        float s = 0;
        for (uint32_t d = 0; d < H->dims; d++)
            s += qx[d] * hr_half_to_float(r[d]);
        out[i] = s;
    }
}

#if HALF_X86
__attribute__((target("avx2,fma,f16c"))) static inline __m256 load_half8(const uint16_t *p)
{
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

/* Four rows at a time: four independent FMA chains, one horizontal
 * reduction for the four. */
__attribute__((target("avx2,fma,f16c"))) static void scores_fast(const hr_half_layout *H,
                                                                 const uint16_t *block,
                                                                 uint32_t nrows, const float *qx,
                                                                 float *out)
{
    const uint32_t groups = H->dims / 8, st = H->stride;
    uint32_t i = 0;
    for (; i + 4 <= nrows; i += 4) {
        const uint16_t *r = block + (size_t)i * st;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (uint32_t g = 0; g < groups; g++) {
            __m256 q = _mm256_loadu_ps(qx + 8 * g);
            a0 = _mm256_fmadd_ps(load_half8(r + 8 * g), q, a0);
            a1 = _mm256_fmadd_ps(load_half8(r + st + 8 * g), q, a1);
            a2 = _mm256_fmadd_ps(load_half8(r + 2 * st + 8 * g), q, a2);
            a3 = _mm256_fmadd_ps(load_half8(r + 3 * st + 8 * g), q, a3);
        }
        __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
        _mm_storeu_ps(out + i, s);
    }
    for (; i < nrows; i++) {
        const uint16_t *r = block + (size_t)i * st;
        __m256 a = _mm256_setzero_ps();
        for (uint32_t g = 0; g < groups; g++)
            a = _mm256_fmadd_ps(load_half8(r + 8 * g), _mm256_loadu_ps(qx + 8 * g), a);
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        s = _mm_hadd_ps(s, s);
        s = _mm_hadd_ps(s, s);
        out[i] = _mm_cvtss_f32(s);
    }
}

#endif

void hr_half_block_scores_many_ref(const hr_half_layout *H, const uint16_t *block,
                                   uint32_t nrows, const float *qt, uint32_t nq8, float *out)
{
    for (uint32_t i = 0; i < nrows; i++) {
        const uint16_t *r = block + (size_t)i * H->stride;
        float *o = out + (size_t)i * nq8;
        for (uint32_t j = 0; j < nq8; j++)
            o[j] = 0;
        for (uint32_t d = 0; d < H->dims; d++) {
            float v = hr_half_to_float(r[d]);
            for (uint32_t j = 0; j < nq8; j++)
                o[j] += v * qt[(size_t)d * nq8 + j];
        }
    }
}

#if HALF_X86
/* Rows per block of the batch kernel: MANY_MR accumulators (one per row,
 * eight queries each) plus a query vector and a broadcast fit the 16 YMM
 * registers, and are enough independent FMA chains to cover the latency. */
#define MANY_MR 12

/* A batch, register-blocked: MANY_MR rows are read from memory once and
 * converted once (F16C) into an fp32 block in L1; then, per group of eight
 * queries, each row's accumulator gains value_d (broadcast) times the
 * queries' column d for every d. The rows stream from memory at 2 bytes per
 * value whatever the number of queries; the FMAs run from L1. A last partial
 * block is zero-padded (its padding rows are computed and not written). */
__attribute__((target("avx2,fma,f16c"))) static void scores_many_fast(const hr_half_layout *H,
                                                                      const uint16_t *block,
                                                                      uint32_t nrows,
                                                                      const float *qt,
                                                                      uint32_t nq8, float *out)
{
    /* values from k+1 on are zero in the rows (and the query): skipped */
    const uint32_t dims = H->dims, st = H->stride, used = H->k + 1;
    float v[MANY_MR * dims] __attribute__((aligned(32))); /* v[r * dims + d] */
    for (uint32_t i = 0; i < nrows; i += MANY_MR) {
        const uint32_t nr = nrows - i < MANY_MR ? nrows - i : MANY_MR;
        const uint16_t *r = block + (size_t)i * st;
        for (uint32_t x = 0; x < nr; x++)
            for (uint32_t g = 0; g < dims; g += 8)
                _mm256_store_ps(v + x * dims + g, load_half8(r + (size_t)x * st + g));
        /* the next block's bytes, a block ahead of their use */
        if (i + MANY_MR < nrows) {
            const char *nb = (const char *)(r + (size_t)MANY_MR * st);
            const size_t nbytes = (size_t)(nrows - i - MANY_MR < MANY_MR ? nrows - i - MANY_MR
                                                                        : MANY_MR) * st * 2;
            for (size_t o = 0; o < nbytes; o += 64)
                _mm_prefetch(nb + o, _MM_HINT_T0);
        }
        if (nr < MANY_MR)
            memset(v + nr * dims, 0, (size_t)(MANY_MR - nr) * dims * sizeof *v);
        for (uint32_t j = 0; j < nq8; j += 8) {
            __m256 acc[MANY_MR];
#pragma GCC unroll 12
            for (int x = 0; x < MANY_MR; x++)
                acc[x] = _mm256_setzero_ps();
            const float *q = qt + j;
            for (uint32_t d = 0; d < used; d++, q += nq8) {
                const __m256 qd = _mm256_loadu_ps(q);
#pragma GCC unroll 12
                for (int x = 0; x < MANY_MR; x++)
                    acc[x] = _mm256_fmadd_ps(_mm256_broadcast_ss(v + x * dims + d), qd, acc[x]);
            }
#pragma GCC unroll 12
            for (uint32_t x = 0; x < nr; x++)
                _mm256_storeu_ps(out + (size_t)(i + x) * nq8 + j, acc[x]);
        }
    }
}
#endif

void hr_half_block_scores_many(const hr_half_layout *H, const uint16_t *block, uint32_t nrows,
                               const float *qt, uint32_t nq8, float *out)
{
#if HALF_X86
    if (use_fast()) {
        scores_many_fast(H, block, nrows, qt, nq8, out);
        return;
    }
#endif
    hr_half_block_scores_many_ref(H, block, nrows, qt, nq8, out);
}

void hr_half_block_scores(const hr_half_layout *H, const uint16_t *block, uint32_t nrows,
                          const float *qx, float *out)
{
#if HALF_X86
    if (use_fast()) {
        scores_fast(H, block, nrows, qx, out);
        return;
    }
#endif
    hr_half_block_scores_ref(H, block, nrows, qx, out);
}

/*
 * The bound. With a = qx, v a row's fp32 values, h = fp16(v), n = dims,
 * u = 2^-24 (fp32 unit roundoff), g = n u / (1 - n u):
 *   |h_d - v_d| <= 2^-11 |v_d| + 2^-25            (nearest; 2^-25: subnormals)
 *   any fp32 sum S of a.v:   |S - a.v| <= g sum|a_d v_d|
 *   any fp32 sum H of a.h:   |H - a.h| <= g sum|a_d h_d|
 *                                      <= g ((1 + 2^-11) sum|a_d v_d| + 2^-25 |a|_1)
 *   |a.h - a.v| <= 2^-11 sum|a_d v_d| + 2^-25 |a|_1
 * and sum|a_d v_d| <= |a|_2 norm. So
 *   |H - S| <= (2^-11 + 3g) |a|_2 norm + 2^-25 (1 + g) |a|_1 (+ underflow).
 * The caller forms lo = H - B and hi = H + B in fp32, with B = c0 norm + c1,
 * in any order with up to three roundings (a mul, an add or an fma each):
 * each rounding moves them by at most u (|H| + B), |H| <= 2 |a|_2 norm, so
 * 2^-20 |a|_2 norm more covers three; 1% more covers the rounding of the
 * constants themselves.
 */
bool hr_half_error_bound(const hr_half_layout *H, const float *qx, float c[2])
{
    double l2 = 0, l1 = 0;
    for (uint32_t d = 0; d < H->dims; d++) {
        if (!isfinite(qx[d]))
            return false;
        l2 += (double)qx[d] * qx[d];
        l1 += fabs((double)qx[d]);
    }
    const double u = 0x1p-24, n = H->dims, g = n * u / (1 - n * u);
    double c0 = (0x1p-11 + 3 * g + 0x1p-20) * sqrt(l2) * 1.01;
    double c1 = (0x1p-25 * (1 + g) * l1 + n * 0x1p-149) * 1.01;
    c[0] = (float)c0;
    c[1] = (float)c1;
    if ((double)c[0] < c0)
        c[0] = nextafterf(c[0], INFINITY);
    if ((double)c[1] < c1)
        c[1] = nextafterf(c[1], INFINITY);
    return isfinite(c[0]) && isfinite(c[1]);
}

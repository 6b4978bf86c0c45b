/*
 * sgd_fast.c - the fused update kernel for the common shapes (user and item,
 * and up to four context features with factors, plus linear-only ones;
 * SGD or AdaGrad; F32 rows), and its runtime dispatch.
 *
 * DESIGN. The general kernel (sgd.c) is the reference: plain C, built
 * without fused multiply-adds, in the form s = sum p_f, 0.5 (|s|^2 - ...).
 * This file computes the same model in the plain pair-by-pair form (the pair
 * is one dot product), fused (one pass for the score and the clip norm, one
 * pass for gradient, state and weight with the finiteness test folded in),
 * with multiply-adds fused (built with -ffp-contract=fast): results agree
 * with the general kernel within float rounding, not bit for bit
 * (test_sgd measures it). The body (sgd_fast_body.h) is compiled once
 * per variant: "generic" (portable C: GCC/clang vector extensions and loops
 * the compiler vectorizes for the build's target) and on x86-64 "avx2"
 * (AVX2 + FMA) and "avx512" (AVX-512F), each with its target attribute, so
 * the build assumes no instruction set. The variant runs through a function
 * pointer chosen once ("auto": the widest __builtin_cpu_supports allows) or
 * by hr_sgd_kernel_select; "exact" is sgd.c's bit-identical pair path.
 *
 * Like sgd.c, it reads and writes embedding rows without locks (Hogwild;
 * see sgd.c's header for what the race can and cannot do): tests/tsan.supp
 * names this file next to sgd.c.
 *
 * Called from: trainer threads (hr_sgd_step), and whoever selects a variant
 * (start-up, tests, benchmarks).
 */
#include "hogrec/sgd.h"

#include <math.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "sgd_internal.h"

#if defined(__clang__)
/* Pass 2's loops are marked safe to vectorize (no aliasing); where clang's
 * target then declines (the generic variant on a baseline x86-64 build) it
 * warns that it could not: the loop stays scalar and correct. */
#pragma clang diagnostic ignored "-Wpass-failed"
#endif

/* ---- the variants ---- */

#define FK(name) name##_generic
#define FK_ATTR
#define FK_W 8
#include "sgd_fast_body.h"
#undef FK
#undef FK_ATTR
#undef FK_W

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HR_FAST_X86 1

#define FK(name) name##_avx2
#define FK_ATTR __attribute__((target("avx2,fma")))
#define FK_W 8
#include "sgd_fast_body.h"
#undef FK
#undef FK_ATTR
#undef FK_W

#define FK(name) name##_avx512
#define FK_ATTR __attribute__((target("avx512f,avx2,fma")))
#define FK_W 16
#include "sgd_fast_body.h"
#undef FK
#undef FK_ATTR
#undef FK_W
#endif

typedef hr_step_result (*kernel_fn)(const hr_row_layout *L, const hr_active *a, int n,
                                    float label, float weight, const hr_step_params *p,
                                    double *y_before, double *pred_before);

typedef struct {
    const char *name; /* what hr_sgd_kernel_select takes */
    kernel_fn fn;
} variant;

/* Widest first: "auto" takes the first one this CPU runs. */
static const variant variants[] = {
#ifdef HR_FAST_X86
    {"avx512", step_avx512},
    {"avx2", step_avx2},
#endif
    {"generic", step_generic},
    {"exact", hr_sgd_step_exact},
};
#define NVARIANTS (sizeof variants / sizeof variants[0])

static bool cpu_runs(const variant *v)
{
#ifdef HR_FAST_X86
    if (v->fn == step_avx512) {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") &&
               __builtin_cpu_supports("fma");
    }
    if (v->fn == step_avx2) {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
#endif
    (void)v;
    return true;
}

/* The chosen variant (an index + 1 into variants; 0: not chosen yet). */
static atomic_uint chosen;

static const variant *find(const char *name)
{
    for (size_t i = 0; name && i < NVARIANTS; i++)
        if (!strcmp(variants[i].name, name))
            return &variants[i];
    return NULL;
}

static unsigned best(void)
{
    for (size_t i = 0; i < NVARIANTS; i++)
        if (cpu_runs(&variants[i]))
            return (unsigned)i + 1;
    return 0; /* not reached: generic runs everywhere */
}

static const variant *current(void)
{
    unsigned c = atomic_load_explicit(&chosen, memory_order_relaxed);
    if (!c) { /* the first step: "auto" (racing first steps choose the same) */
        c = best();
        atomic_store_explicit(&chosen, c, memory_order_relaxed);
    }
    return &variants[c - 1];
}

bool hr_sgd_kernel_available(const char *name)
{
    if (name && !strcmp(name, "auto"))
        return true;
    const variant *v = find(name);
    return v && cpu_runs(v);
}

bool hr_sgd_kernel_select(const char *name)
{
    unsigned c;
    if (name && !strcmp(name, "auto")) {
        c = best();
    } else {
        const variant *v = find(name);
        if (!v || !cpu_runs(v))
            return false;
        c = (unsigned)(v - variants) + 1;
    }
    atomic_store_explicit(&chosen, c, memory_order_relaxed);
    return true;
}

void hr_sgd_kernel_list(char *buf, size_t len)
{
    size_t at = 0;
    if (len)
        buf[0] = 0;
    for (size_t i = 0; i < NVARIANTS; i++) {
        if (!cpu_runs(&variants[i]) || at >= len)
            continue;
        int n = snprintf(buf + at, len - at, "%s%s", at ? " " : "", variants[i].name);
        at = n < 0 ? len : at + (size_t)n;
    }
}

const char *hr_sgd_kernel_name(void)
{
    return current()->name;
}

hr_step_result hr_sgd_step_fast(const hr_row_layout *L, const hr_active *a, int n, float label,
                                float weight, const hr_step_params *p, double *y_before,
                                double *pred_before)
{
    return current()->fn(L, a, n, label, weight, p, y_before, pred_before);
}

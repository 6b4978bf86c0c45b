/*
 * test_schedule.c - schedules against hand-computed rates, validation and
 * JSON errors (each naming its field), the JSON round trip, the box's
 * history, and a live swap under concurrent readers.
 */
/* ctest-labels: concurrent */
#include "testutil.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "hogrec/schedule.h"

#define EPS 1e-12

static void assert_near(double want, double got, const char *what, uint64_t t)
{
    if (!(fabs(want - got) <= EPS * (1 + fabs(want)))) {
        print_error("%s at t=%llu: want %.17g, got %.17g\n", what,
                    (unsigned long long)t, want, got);
        fail();
    }
}

typedef struct {
    uint64_t t;
    double rate;
} point;

static void check_points(const hr_schedule *s, const point *p, size_t n, const char *what)
{
    for (size_t i = 0; i < n; i++)
        assert_near(p[i].rate, hr_schedule_rate(s, p[i].t), what, p[i].t);
}

/* ---- rates ---- */

static void test_defaults(void **state)
{
    (void)state;
    hr_schedule s;
    hr_schedule_defaults(&s);
    assert_int_equal(s.optimizer, HR_OPT_ADAGRAD);
    assert_int_equal(s.type, HR_SCHED_CONSTANT);
    assert_true(s.eta0 == 0.2 && s.t0 == 10000 && s.power == 0.5 && s.gamma == 0.5);
    assert_true(s.step == 100000 && s.period == 100000 && s.t_mult == 2);
    assert_true(s.warmup == 0 && s.floor == 0);
    for (int g = 0; g < HR_GROUP_COUNT; g++)
        assert_true(s.multiplier[g] == 1);
    assert_false(s.staleness_scaling);
    assert_true(s.staleness_tau == 16 && s.ftrl_beta == 1 && s.ftrl_l1 == 0);
    assert_int_equal(s.version, 0);
    assert_int_equal(hr_schedule_validate(&s, NULL), HR_OK);
    assert_string_equal(hr_sched_type_to_string(HR_SCHED_COSINE), "cosine");
    assert_string_equal(hr_optimizer_to_string(HR_OPT_FTRL), "ftrl");
    assert_string_equal(hr_group_to_string(HR_GROUP_CONTEXT), "context");
    assert_string_equal(hr_sched_type_to_string((hr_sched_type)99), "unknown");
}

static void test_constant(void **state)
{
    (void)state;
    hr_schedule s;
    hr_schedule_defaults(&s);
    s.eta0 = 0.1;
    const point p[] = {{0, 0.1}, {1, 0.1}, {1000000, 0.1}, {UINT64_MAX, 0.1}};
    check_points(&s, p, HR_ARRAY_LEN(p), "constant");
}

static void test_invpow(void **state)
{
    (void)state;
    hr_schedule s;
    hr_schedule_defaults(&s);
    s.type = HR_SCHED_INVPOW;
    s.eta0 = 0.1;
    s.t0 = 100;
    s.power = 0.5;
    /* 0.1 / sqrt(1 + t/100) */
    const point p[] = {{0, 0.1}, {300, 0.05}, {800, 0.1 / 3}, {9900, 0.01}};
    check_points(&s, p, HR_ARRAY_LEN(p), "invpow 0.5");
    s.power = 1;
    const point q[] = {{0, 0.1}, {100, 0.05}, {300, 0.025}, {50, 0.1 / 1.5}};
    check_points(&s, q, HR_ARRAY_LEN(q), "invpow 1");
    s.power = 0;
    const point r[] = {{0, 0.1}, {12345, 0.1}};
    check_points(&s, r, HR_ARRAY_LEN(r), "invpow 0");
}

static void test_exponential(void **state)
{
    (void)state;
    hr_schedule s;
    hr_schedule_defaults(&s);
    s.type = HR_SCHED_EXPONENTIAL;
    s.eta0 = 1;
    s.gamma = 0.5;
    s.step = 10;
    const point p[] = {{0, 1}, {5, 0.70710678118654752}, {10, 0.5}, {20, 0.25}, {15, 0.35355339059327376}};
    check_points(&s, p, HR_ARRAY_LEN(p), "exponential");
    s.gamma = 1;
    const point q[] = {{0, 1}, {1000, 1}};
    check_points(&s, q, HR_ARRAY_LEN(q), "exponential gamma 1");
}

static void test_step(void **state)
{
    (void)state;
    hr_schedule s;
    hr_schedule_defaults(&s);
    s.type = HR_SCHED_STEP;
    s.eta0 = 1;
    s.gamma = 0.5;
    s.step = 10;
    const point p[] = {{0, 1}, {9, 1}, {10, 0.5}, {19, 0.5}, {20, 0.25}, {25, 0.25}, {30, 0.125}};
    check_points(&s, p, HR_ARRAY_LEN(p), "step");
}

static void test_cosine_restarts(void **state)
{
    (void)state;
    hr_schedule s;
    hr_schedule_defaults(&s);
    s.type = HR_SCHED_COSINE;
    s.eta0 = 1;
    s.period = 100;
    s.t_mult = 2;
    /* Periods: [0,100) [100,300) [300,700) [700,1500) */
    const point p[] = {
        {0, 1},
        {25, (1 + cos(M_PI * 0.25)) / 2},   /* 0.8535... */
        {50, 0.5},
        {99, (1 + cos(M_PI * 0.99)) / 2},   /* nearly 0 */
        {100, 1},                           /* restart */
        {200, 0.5},                         /* middle of the 200-long period */
        {250, (1 + cos(M_PI * 0.75)) / 2},
        {299, (1 + cos(M_PI * 199.0 / 200)) / 2},
        {300, 1},                           /* restart */
        {500, 0.5},
        {700, 1},                           /* restart */
        {1100, 0.5},
        {1500, 1},
    };
    check_points(&s, p, HR_ARRAY_LEN(p), "cosine t_mult 2");

    s.floor = 0.2; /* floor + (1 - 0.2) * (1 + cos) / 2 */
    const point q[] = {{0, 1}, {50, 0.6}, {100, 1}, {200, 0.6}, {299, 0.2 + 0.8 * (1 + cos(M_PI * 0.995)) / 2}};
    check_points(&s, q, HR_ARRAY_LEN(q), "cosine floor 0.2");

    s.floor = 0;
    s.t_mult = 1; /* fixed period */
    const point r[] = {{0, 1}, {50, 0.5}, {100, 1}, {150, 0.5}, {1000, 1}, {1050, 0.5}};
    check_points(&s, r, HR_ARRAY_LEN(r), "cosine t_mult 1");

    s.t_mult = 3; /* periods [0,100) [100,400) [400,1300) */
    const point u[] = {{100, 1}, {250, 0.5}, {400, 1}, {850, 0.5}, {1300, 1}};
    check_points(&s, u, HR_ARRAY_LEN(u), "cosine t_mult 3");
}

/* Plain SGDR: walk the periods one by one. */
static double cosine_reference(double eta0, double floor_, double period, double m, uint64_t t)
{
    double start = 0, len = period, x = (double)t;
    while (x >= start + len) {
        start += len;
        len *= m;
    }
    return floor_ + (eta0 - floor_) * (1 + cos(M_PI * (x - start) / len)) / 2;
}

static void test_cosine_reference(void **state)
{
    (void)state;
    static const double mults[] = {1, 1.25, 1.5, 2, 3};
    static const double periods[] = {8, 100, 1000};
    hr_schedule s;
    hr_schedule_defaults(&s);
    s.type = HR_SCHED_COSINE;
    s.eta0 = 1;
    s.floor = 0.01;
    for (size_t i = 0; i < HR_ARRAY_LEN(mults); i++) {
        for (size_t j = 0; j < HR_ARRAY_LEN(periods); j++) {
            s.t_mult = mults[i];
            s.period = periods[j];
            for (uint64_t t = 0; t < 20000; t++) {
                double want = cosine_reference(1, 0.01, s.period, s.t_mult, t);
                double got = hr_schedule_rate(&s, t);
                if (!(fabs(want - got) <= 1e-9)) {
                    print_error("t_mult %g period %g t %llu: want %.17g got %.17g\n",
                                s.t_mult, s.period, (unsigned long long)t, want, got);
                    fail();
                }
            }
        }
    }
    /* every type stays finite and within [floor, eta0] far out */
    for (int type = 0; type < HR_SCHED_TYPE_COUNT; type++) {
        hr_schedule_defaults(&s);
        s.type = (hr_sched_type)type;
        s.floor = 0.001;
        s.t_mult = 1.0001;
        static const uint64_t far[] = {1000000000ull, 1ull << 40, 1ull << 62, UINT64_MAX};
        for (size_t k = 0; k < HR_ARRAY_LEN(far); k++) {
            double r = hr_schedule_rate(&s, far[k]);
            assert_true(isfinite(r) && r >= s.floor && r <= s.eta0);
        }
    }
}

static void test_warmup_and_floor(void **state)
{
    (void)state;
    hr_schedule s;
    hr_schedule_defaults(&s);
    s.eta0 = 0.1;
    s.warmup = 10;
    /* rate * (t+1)/10 for t < 10 */
    const point p[] = {{0, 0.01}, {4, 0.05}, {9, 0.1}, {10, 0.1}, {500, 0.1}};
    check_points(&s, p, HR_ARRAY_LEN(p), "constant warm-up");

    /* step 1 * 0.1^floor(t/10), floor 0.5, warm-up 5: below the floor only
     * during warm-up. */
    s.type = HR_SCHED_STEP;
    s.eta0 = 1;
    s.gamma = 0.1;
    s.step = 10;
    s.floor = 0.5;
    s.warmup = 5;
    const point q[] = {{0, 0.2}, {1, 0.4}, {4, 1}, {5, 1}, {9, 1}, {10, 0.5}, {25, 0.5}, {1000, 0.5}};
    check_points(&s, q, HR_ARRAY_LEN(q), "step warm-up floor");

    /* invpow 0.1 / (1 + t) hits floor 0.01 from t = 9 on. */
    hr_schedule_defaults(&s);
    s.type = HR_SCHED_INVPOW;
    s.eta0 = 0.1;
    s.t0 = 1;
    s.power = 1;
    s.floor = 0.01;
    const point r[] = {{0, 0.1}, {1, 0.05}, {4, 0.02}, {9, 0.01}, {99, 0.01}};
    check_points(&s, r, HR_ARRAY_LEN(r), "invpow floor");

    /* cosine with warm-up: during warm-up the cosine value is scaled. */
    hr_schedule_defaults(&s);
    s.type = HR_SCHED_COSINE;
    s.eta0 = 1;
    s.period = 100;
    s.warmup = 50;
    const point u[] = {{0, 1.0 / 50 * (1 + cos(0)) / 2}, {49, (1 + cos(M_PI * 0.49)) / 2}, {50, 0.5}};
    check_points(&s, u, HR_ARRAY_LEN(u), "cosine warm-up");
}

static void test_group_rate_and_staleness(void **state)
{
    (void)state;
    hr_schedule s;
    hr_schedule_defaults(&s);
    s.eta0 = 0.1;
    s.multiplier[HR_GROUP_GLOBAL] = 0;
    s.multiplier[HR_GROUP_USER] = 2;
    s.multiplier[HR_GROUP_ITEM] = 0.5;
    assert_near(0, hr_schedule_group_rate(&s, HR_GROUP_GLOBAL, 7, 0), "global", 7);
    assert_near(0.1, hr_schedule_group_rate(&s, HR_GROUP_BIAS, 7, 0), "bias", 7);
    assert_near(0.2, hr_schedule_group_rate(&s, HR_GROUP_USER, 7, 0), "user", 7);
    assert_near(0.05, hr_schedule_group_rate(&s, HR_GROUP_ITEM, 7, 0), "item", 7);
    /* staleness is ignored while scaling is off */
    assert_near(0.2, hr_schedule_group_rate(&s, HR_GROUP_USER, 7, 1000), "no scaling", 7);

    s.staleness_scaling = true;
    s.staleness_tau = 16;
    assert_near(0.2, hr_schedule_group_rate(&s, HR_GROUP_USER, 7, 0), "staleness 0", 7);
    assert_near(0.1, hr_schedule_group_rate(&s, HR_GROUP_USER, 7, 16), "staleness 16", 7);
    assert_near(0.05, hr_schedule_group_rate(&s, HR_GROUP_USER, 7, 48), "staleness 48", 7);
    assert_near(0.1 / 1.5, hr_schedule_group_rate(&s, HR_GROUP_CONTEXT, 7, 8), "staleness 8", 7);

    /* multiplier and staleness on top of a decaying base rate */
    s.type = HR_SCHED_STEP;
    s.gamma = 0.5;
    s.step = 10;
    assert_near(0.1 * 0.5 * 0.5 / 2, hr_schedule_group_rate(&s, HR_GROUP_ITEM, 10, 16),
                "step item stale", 10);
}

/* Found by tests/fuzz/fuzz_schedule (input corpus/schedule/regress-group-rate-nan.json):
 * eta0 * multiplier overflowed to infinity and, with staleness scaling and
 * a tiny tau, the scaled rate was inf / inf = NaN, which a trainer would
 * have written into the weights. A schedule is accepted only if every group
 * rate it can give is finite. */
static void test_group_rate_never_overflows(void **state)
{
    (void)state;
    hr_schedule s;
    hr_schedule_defaults(&s);
    s.eta0 = 1e308;
    s.multiplier[HR_GROUP_USER] = 1e308;
    s.staleness_scaling = true;
    s.staleness_tau = 5e-324;
    hr_error err = {{0}, {0}};
    if (hr_schedule_validate(&s, &err) == HR_OK) {
        for (uint64_t t = 0; t < 3; t++)
            for (int g = 0; g < HR_GROUP_COUNT; g++) {
                double r = hr_schedule_group_rate(&s, (hr_group)g, t, UINT64_MAX);
                assert_false(isnan(r));
                assert_true(isfinite(hr_schedule_group_rate(&s, (hr_group)g, t, 0)));
            }
    }
    assert_int_equal(hr_schedule_validate(&s, &err), HR_EINVAL);
    assert_string_equal(err.field, "eta0"); /* over its bound, before any product */
    /* the largest values the bounds allow give finite rates, never NaN */
    s.eta0 = 100;
    s.multiplier[HR_GROUP_USER] = 100;
    assert_int_equal(hr_schedule_validate(&s, NULL), HR_OK);
    for (int g = 0; g < HR_GROUP_COUNT; g++) {
        assert_false(isnan(hr_schedule_group_rate(&s, (hr_group)g, 0, UINT64_MAX)));
        assert_true(isfinite(hr_schedule_group_rate(&s, (hr_group)g, 0, 0)));
    }
}

/* Found by fuzz_schedule: at a restart the cosine gives floor + (eta0 -
 * floor) * 1, which rounds above eta0 (0.03 + 0.27 = 0.30000000000000004).
 * No schedule's rate exceeds its eta0. */
static void test_rate_never_above_eta0(void **state)
{
    (void)state;
    hr_schedule s;
    hr_schedule_defaults(&s);
    s.type = HR_SCHED_COSINE;
    s.eta0 = 0.3;
    s.floor = 0.03;
    s.period = 0.1;
    assert_int_equal(hr_schedule_validate(&s, NULL), HR_OK);
    assert_true(0.03 + (0.3 - 0.03) > 0.3); /* the rounding this guards against */
    for (uint64_t t = 0; t < 1000; t++)
        assert_true(hr_schedule_rate(&s, t) <= s.eta0);
}

/* ---- validation ---- */

typedef void (*mutator)(hr_schedule *);

#define MUT(name, stmt)                                                        \
    static void name(hr_schedule *s) { stmt; }
MUT(eta0_nan, s->eta0 = NAN)
MUT(eta0_neg, s->eta0 = -0.1)
MUT(eta0_zero, s->eta0 = 0)
MUT(eta0_inf, s->eta0 = INFINITY)
MUT(t0_zero, s->t0 = 0)
MUT(power_neg, s->power = -1)
MUT(gamma_big, s->gamma = 1.5)
MUT(gamma_zero, s->gamma = 0)
MUT(step_neg, s->step = -10)
MUT(period_nan, s->period = NAN)
MUT(t_mult_small, s->t_mult = 0.5)
MUT(warmup_inf, s->warmup = INFINITY)
MUT(warmup_neg, s->warmup = -1)
MUT(floor_neg, s->floor = -0.01)
MUT(floor_above_eta0, s->floor = s->eta0 + 0.01)
MUT(mult_item_neg, s->multiplier[HR_GROUP_ITEM] = -1)
MUT(mult_global_nan, s->multiplier[HR_GROUP_GLOBAL] = NAN)
MUT(mult_context_inf, s->multiplier[HR_GROUP_CONTEXT] = -INFINITY)
MUT(tau_zero, s->staleness_tau = 0)
MUT(beta_neg, s->ftrl_beta = -1)
MUT(l1_nan, s->ftrl_l1 = NAN)
MUT(bad_type, s->type = (hr_sched_type)HR_SCHED_TYPE_COUNT)
MUT(bad_optimizer, s->optimizer = (hr_optimizer)-1)
#undef MUT

static void test_validate(void **state)
{
    (void)state;
    static const struct {
        mutator m;
        const char *field;
    } cases[] = {
        {eta0_nan, "eta0"},          {eta0_neg, "eta0"},
        {eta0_zero, "eta0"},         {eta0_inf, "eta0"},
        {t0_zero, "t0"},             {power_neg, "power"},
        {gamma_big, "gamma"},        {gamma_zero, "gamma"},
        {step_neg, "step"},          {period_nan, "period"},
        {t_mult_small, "t_mult"},    {warmup_inf, "warmup"},
        {warmup_neg, "warmup"},      {floor_neg, "floor"},
        {floor_above_eta0, "floor"}, {mult_item_neg, "multipliers.item"},
        {mult_global_nan, "multipliers.global"},
        {mult_context_inf, "multipliers.context"},
        {tau_zero, "staleness.tau"}, {beta_neg, "ftrl.beta"},
        {l1_nan, "ftrl.l1"},         {bad_type, "type"},
        {bad_optimizer, "optimizer"},
    };
    for (size_t i = 0; i < HR_ARRAY_LEN(cases); i++) {
        hr_schedule s;
        hr_schedule_defaults(&s);
        cases[i].m(&s);
        hr_error err = {{0}, {0}};
        assert_int_equal(hr_schedule_validate(&s, &err), HR_EINVAL);
        assert_string_equal(err.field, cases[i].field);
        assert_true(strlen(err.message) > 0);
        /* also fine without an error struct */
        assert_int_equal(hr_schedule_validate(&s, NULL), HR_EINVAL);
    }
    hr_error err;
    hr_schedule s;
    hr_schedule_defaults(&s);
    s.eta0 = NAN;
    hr_schedule_validate(&s, &err);
    assert_non_null(strstr(err.message, "NaN"));
    s.eta0 = -1;
    hr_schedule_validate(&s, &err);
    assert_non_null(strstr(err.message, "> 0"));
    /* boundaries that are allowed */
    hr_schedule_defaults(&s);
    s.gamma = 1;
    s.t_mult = 1;
    s.floor = s.eta0;
    s.power = 0;
    s.multiplier[HR_GROUP_USER] = 0;
    assert_int_equal(hr_schedule_validate(&s, NULL), HR_OK);
}

/* Every numeric field has an upper bound too (README, openapi.yaml): a
 * value past it is refused with a message naming the field and the bound,
 * the bound itself is accepted. */
static void test_upper_bounds(void **state)
{
    (void)state;
    static const struct {
        const char *field;
        size_t offset;
        double max;
    } bounds[] = {
        {"eta0", offsetof(hr_schedule, eta0), 100},
        {"t0", offsetof(hr_schedule, t0), 1e15},
        {"power", offsetof(hr_schedule, power), 10},
        {"gamma", offsetof(hr_schedule, gamma), 1},
        {"step", offsetof(hr_schedule, step), 1e15},
        {"period", offsetof(hr_schedule, period), 1e15},
        {"t_mult", offsetof(hr_schedule, t_mult), 100},
        {"warmup", offsetof(hr_schedule, warmup), 1e15},
        {"multipliers.global", offsetof(hr_schedule, multiplier[HR_GROUP_GLOBAL]), 100},
        {"multipliers.bias", offsetof(hr_schedule, multiplier[HR_GROUP_BIAS]), 100},
        {"multipliers.user", offsetof(hr_schedule, multiplier[HR_GROUP_USER]), 100},
        {"multipliers.item", offsetof(hr_schedule, multiplier[HR_GROUP_ITEM]), 100},
        {"multipliers.context", offsetof(hr_schedule, multiplier[HR_GROUP_CONTEXT]), 100},
        {"staleness.tau", offsetof(hr_schedule, staleness_tau), 1e15},
        {"ftrl.beta", offsetof(hr_schedule, ftrl_beta), 1e6},
        {"ftrl.l1", offsetof(hr_schedule, ftrl_l1), 1e6},
        {"adam.epsilon", offsetof(hr_schedule, adam_epsilon), 1},
    };
    for (size_t i = 0; i < HR_ARRAY_LEN(bounds); i++) {
        hr_schedule s;
        hr_schedule_defaults(&s);
        double *v = (double *)((char *)&s + bounds[i].offset);
        *v = bounds[i].max;
        hr_error err = {{0}, {0}};
        if (hr_schedule_validate(&s, &err) != HR_OK) {
            print_error("%s = %g (the bound) refused: %s\n", bounds[i].field, bounds[i].max,
                        err.message);
            fail();
        }
        *v = nextafter(bounds[i].max, INFINITY);
        assert_int_equal(hr_schedule_validate(&s, &err), HR_EINVAL);
        assert_string_equal(err.field, bounds[i].field);
        char bound[64];
        snprintf(bound, sizeof bound, "<= %g", bounds[i].max);
        if (!strstr(err.message, bounds[i].field) || !strstr(err.message, bound)) {
            print_error("%s: message \"%s\" should name the field and \"%s\"\n",
                        bounds[i].field, err.message, bound);
            fail();
        }
    }
    /* floor: its own bound and eta0's */
    hr_schedule s;
    hr_schedule_defaults(&s);
    s.eta0 = 100;
    s.floor = 100;
    assert_int_equal(hr_schedule_validate(&s, NULL), HR_OK);
    s.floor = 100.5;
    hr_error err;
    assert_int_equal(hr_schedule_validate(&s, &err), HR_EINVAL);
    assert_string_equal(err.field, "floor");
    /* what the issue sent */
    json_t *j = json_loads("{\"type\":\"constant\",\"eta0\":1e30}", 0, NULL);
    assert_int_equal(hr_schedule_from_json(j, &s, &err), HR_EINVAL);
    json_decref(j);
    assert_string_equal(err.field, "eta0");
    assert_string_equal(err.message, "eta0 must be <= 100, got 1e+30");
}

/* Which optimizer runs on which rows, and a message that reads right: it
 * names the optimizer, what the rows keep, and the --state that would do. */
static void test_check_state(void **state)
{
    (void)state;
    for (int opt = 0; opt < HR_OPT_COUNT; opt++)
        for (int rows = 0; rows < HR_OPT_COUNT; rows++) {
            hr_schedule s;
            hr_schedule_defaults(&s);
            s.optimizer = (hr_optimizer)opt;
            hr_error err = {{0}, {0}};
            hr_status st = hr_schedule_check_state(&s, (hr_optimizer)rows, &err);
            bool ok = opt == HR_OPT_SGD ||
                      (opt == HR_OPT_ADAGRAD && (rows == HR_OPT_ADAGRAD || rows == HR_OPT_FTRL)) ||
                      (opt == HR_OPT_FTRL && rows == HR_OPT_FTRL) ||
                      (opt == HR_OPT_ADAM && rows == HR_OPT_ADAM);
            assert_int_equal(st, ok ? HR_OK : HR_EINVAL);
            if (!ok)
                assert_string_equal(err.field, "optimizer");
        }
    hr_schedule s;
    hr_schedule_defaults(&s);
    hr_error err;
    s.optimizer = HR_OPT_FTRL;
    assert_int_equal(hr_schedule_check_state(&s, HR_OPT_ADAGRAD, &err), HR_EINVAL);
    assert_string_equal(err.message,
                        "optimizer ftrl needs rows with FTRL state, and this server's rows keep "
                        "AdaGrad state only (state adagrad): start it with --state ftrl, on a new "
                        "database (a database keeps its state)");
    s.optimizer = HR_OPT_ADAGRAD;
    assert_int_equal(hr_schedule_check_state(&s, HR_OPT_SGD, &err), HR_EINVAL);
    assert_string_equal(err.message,
                        "optimizer adagrad needs rows with AdaGrad state, and this server's rows "
                        "keep no optimizer state (state sgd): start it with --state adagrad or "
                        "--state ftrl, on a new database (a database keeps its state)");
    s.optimizer = HR_OPT_ADAM;
    assert_int_equal(hr_schedule_check_state(&s, HR_OPT_FTRL, &err), HR_EINVAL);
    assert_string_equal(err.message,
                        "optimizer adam needs rows with Adam state (moments and a step count), "
                        "and this server's rows keep AdaGrad and FTRL state (state ftrl): start "
                        "it with --state adam, on a new database (a database keeps its state)");
    s.optimizer = HR_OPT_ADAGRAD;
    assert_int_equal(hr_schedule_check_state(&s, HR_OPT_ADAM, &err), HR_EINVAL);
}

/* ---- JSON ---- */

static hr_status parse(const char *text, hr_schedule *out, hr_error *err)
{
    json_error_t jerr;
    json_t *j = json_loads(text, 0, &jerr);
    if (!j) {
        print_error("bad test JSON %s: %s\n", text, jerr.text);
        fail();
    }
    memset(err, 0, sizeof *err);
    hr_status st = hr_schedule_from_json(j, out, err);
    json_decref(j);
    return st;
}

static void test_from_json_ok(void **state)
{
    (void)state;
    hr_schedule s;
    hr_error err;
    assert_int_equal(parse("{\"type\":\"constant\",\"eta0\":0.2}", &s, &err), HR_OK);
    assert_int_equal(s.type, HR_SCHED_CONSTANT);
    assert_true(s.eta0 == 0.2);
    assert_int_equal(s.optimizer, HR_OPT_ADAGRAD); /* default */
    assert_true(s.t0 == 10000 && s.multiplier[HR_GROUP_ITEM] == 1);

    assert_int_equal(parse("{\"type\":\"invpow\",\"eta0\":1,\"t0\":50,\"power\":1,"
                           "\"optimizer\":\"ftrl\",\"ftrl\":{\"beta\":0.5,\"l1\":2},"
                           "\"multipliers\":{\"item\":0.25},"
                           "\"staleness\":{\"enabled\":true,\"tau\":4}}",
                           &s, &err),
                     HR_OK);
    assert_int_equal(s.type, HR_SCHED_INVPOW);
    assert_int_equal(s.optimizer, HR_OPT_FTRL);
    assert_true(s.eta0 == 1 && s.t0 == 50 && s.power == 1);
    assert_true(s.ftrl_beta == 0.5 && s.ftrl_l1 == 2);
    assert_true(s.multiplier[HR_GROUP_ITEM] == 0.25 && s.multiplier[HR_GROUP_USER] == 1);
    assert_true(s.staleness_scaling && s.staleness_tau == 4);

    assert_int_equal(parse("{\"type\":\"exponential\",\"eta0\":1,\"gamma\":0.9,\"step\":10}", &s, &err), HR_OK);
    assert_int_equal(parse("{\"type\":\"step\",\"eta0\":1,\"gamma\":0.9,\"step\":10,\"optimizer\":\"sgd\"}", &s, &err), HR_OK);
    assert_int_equal(s.optimizer, HR_OPT_SGD);
    assert_int_equal(parse("{\"type\":\"cosine\",\"eta0\":1,\"period\":1000,\"t_mult\":1,\"floor\":0.1,\"warmup\":100}", &s, &err), HR_OK);
    assert_true(s.period == 1000 && s.t_mult == 1 && s.floor == 0.1 && s.warmup == 100);
}

static void test_from_json_errors(void **state)
{
    (void)state;
    static const struct {
        const char *json;
        const char *field;
    } cases[] = {
        /* missing required fields */
        {"{\"eta0\":0.1}", "type"},
        {"{\"type\":\"constant\"}", "eta0"},
        {"{\"type\":\"invpow\",\"eta0\":0.1,\"power\":0.5}", "t0"},
        {"{\"type\":\"invpow\",\"eta0\":0.1,\"t0\":10}", "power"},
        {"{\"type\":\"exponential\",\"eta0\":0.1,\"step\":10}", "gamma"},
        {"{\"type\":\"exponential\",\"eta0\":0.1,\"gamma\":0.5}", "step"},
        {"{\"type\":\"step\",\"eta0\":0.1,\"step\":10}", "gamma"},
        {"{\"type\":\"step\",\"eta0\":0.1,\"gamma\":0.5}", "step"},
        {"{\"type\":\"cosine\",\"eta0\":0.1}", "period"},
        /* unknown names */
        {"{\"type\":\"linear\",\"eta0\":0.1}", "type"},
        {"{\"type\":\"constant\",\"eta0\":0.1,\"optimizer\":\"nadam\"}", "optimizer"},
        /* unknown keys */
        {"{\"type\":\"constant\",\"eta0\":0.1,\"etaa\":1}", "etaa"},
        {"{\"type\":\"constant\",\"eta0\":0.1,\"multipliers\":{\"users\":1}}", "multipliers.users"},
        {"{\"type\":\"constant\",\"eta0\":0.1,\"staleness\":{\"tau\":4,\"on\":true}}", "staleness.on"},
        {"{\"type\":\"constant\",\"eta0\":0.1,\"ftrl\":{\"l2\":1}}", "ftrl.l2"},
        {"{\"type\":\"constant\",\"eta0\":0.1,\"multipliers.item\":1}", "multipliers.item"},
        {"{\"type\":\"constant\",\"eta0\":0.1,\"enabled\":true}", "enabled"},
        /* wrong JSON types */
        {"{\"type\":\"constant\",\"eta0\":\"0.1\"}", "eta0"},
        {"{\"type\":3,\"eta0\":0.1}", "type"},
        {"{\"type\":\"constant\",\"eta0\":0.1,\"optimizer\":null}", "optimizer"},
        {"{\"type\":\"constant\",\"eta0\":0.1,\"multipliers\":[1,2]}", "multipliers"},
        {"{\"type\":\"constant\",\"eta0\":0.1,\"multipliers\":{\"item\":true}}", "multipliers.item"},
        {"{\"type\":\"constant\",\"eta0\":0.1,\"staleness\":{\"enabled\":1}}", "staleness.enabled"},
        {"{\"type\":\"constant\",\"eta0\":0.1,\"ftrl\":{\"l1\":{}}}", "ftrl.l1"},
        {"{\"type\":\"constant\",\"eta0\":0.1,\"version\":1.5}", "version"},
        {"{\"type\":\"constant\",\"eta0\":0.1,\"version\":-1}", "version"},
        /* out of range values */
        {"{\"type\":\"constant\",\"eta0\":-0.1}", "eta0"},
        {"{\"type\":\"constant\",\"eta0\":0}", "eta0"},
        {"{\"type\":\"step\",\"eta0\":1,\"gamma\":2,\"step\":10}", "gamma"},
        {"{\"type\":\"constant\",\"eta0\":0.1,\"floor\":0.2}", "floor"},
        {"{\"type\":\"constant\",\"eta0\":0.1,\"multipliers\":{\"item\":-1}}", "multipliers.item"},
        {"{\"type\":\"constant\",\"eta0\":0.1,\"staleness\":{\"tau\":0}}", "staleness.tau"},
        {"{\"type\":\"constant\",\"eta0\":0.1,\"ftrl\":{\"l1\":-1}}", "ftrl.l1"},
        {"{\"type\":\"constant\",\"eta0\":0.1,\"adam\":{\"beta1\":1}}", "adam.beta1"},
        {"{\"type\":\"constant\",\"eta0\":0.1,\"adam\":{\"beta1\":-0.1}}", "adam.beta1"},
        {"{\"type\":\"constant\",\"eta0\":0.1,\"adam\":{\"beta2\":1.5}}", "adam.beta2"},
        {"{\"type\":\"constant\",\"eta0\":0.1,\"adam\":{\"epsilon\":0}}", "adam.epsilon"},
        {"{\"type\":\"constant\",\"eta0\":0.1,\"adam\":{\"epsilon\":2}}", "adam.epsilon"},
        {"{\"type\":\"constant\",\"eta0\":0.1,\"adam\":{\"gamma\":0.5}}", "adam.gamma"},
        {"{\"type\":\"constant\",\"eta0\":0.1,\"adam\":{\"beta2\":\"x\"}}", "adam.beta2"},
    };
    for (size_t i = 0; i < HR_ARRAY_LEN(cases); i++) {
        hr_schedule s;
        hr_error err;
        hr_status st = parse(cases[i].json, &s, &err);
        if (st != HR_EINVAL || strcmp(err.field, cases[i].field) != 0) {
            print_error("%s: want EINVAL on \"%s\", got %s on \"%s\" (%s)\n",
                        cases[i].json, cases[i].field, hr_status_to_string(st),
                        err.field, err.message);
            fail();
        }
        assert_true(strlen(err.message) > 0);
    }
    /* not an object */
    hr_schedule s;
    hr_error err;
    json_t *arr = json_array();
    assert_int_equal(hr_schedule_from_json(arr, &s, &err), HR_EINVAL);
    assert_string_equal(err.field, "");
    json_decref(arr);
    assert_int_equal(hr_schedule_from_json(NULL, &s, &err), HR_EINVAL);
    /* the messages name what was wrong */
    parse("{\"type\":\"constant\",\"eta0\":0.1,\"etaa\":1}", &s, &err);
    assert_non_null(strstr(err.message, "unknown key"));
    parse("{\"type\":\"cosine\",\"eta0\":0.1}", &s, &err);
    assert_non_null(strstr(err.message, "missing"));
}

static void assert_same_schedule(const hr_schedule *a, const hr_schedule *b)
{
    assert_int_equal(a->optimizer, b->optimizer);
    assert_int_equal(a->type, b->type);
    assert_true(a->eta0 == b->eta0);
    assert_true(a->t0 == b->t0);
    assert_true(a->power == b->power);
    assert_true(a->gamma == b->gamma);
    assert_true(a->step == b->step);
    assert_true(a->period == b->period);
    assert_true(a->t_mult == b->t_mult);
    assert_true(a->warmup == b->warmup);
    assert_true(a->floor == b->floor);
    for (int g = 0; g < HR_GROUP_COUNT; g++)
        assert_true(a->multiplier[g] == b->multiplier[g]);
    assert_int_equal(a->staleness_scaling, b->staleness_scaling);
    assert_true(a->staleness_tau == b->staleness_tau);
    assert_true(a->ftrl_beta == b->ftrl_beta);
    assert_true(a->ftrl_l1 == b->ftrl_l1);
    assert_true(a->adam_beta1 == b->adam_beta1);
    assert_true(a->adam_beta2 == b->adam_beta2);
    assert_true(a->adam_epsilon == b->adam_epsilon);
    assert_int_equal(a->version, b->version);
}

static void test_json_round_trip(void **state)
{
    (void)state;
    for (int type = 0; type < HR_SCHED_TYPE_COUNT; type++) {
        hr_schedule a, b;
        hr_schedule_defaults(&a);
        a.type = (hr_sched_type)type;
        a.optimizer = (hr_optimizer)(type % HR_OPT_COUNT);
        a.eta0 = 0.123456789012345678;
        a.t0 = 77;
        a.power = 0.75;
        a.gamma = 0.3;
        a.step = 1234.5;
        a.period = 999;
        a.t_mult = 1.5;
        a.warmup = 42;
        a.floor = 1e-5;
        for (int g = 0; g < HR_GROUP_COUNT; g++)
            a.multiplier[g] = 0.1 * (g + 1);
        a.staleness_scaling = type % 2;
        a.staleness_tau = 3.25;
        a.ftrl_beta = 0.5;
        a.ftrl_l1 = 1.0 / 3;
        a.adam_beta1 = 0.8;
        a.adam_beta2 = 0.99 + 1.0 / 3e3;
        a.adam_epsilon = 1e-7;
        a.version = 17;

        json_t *j = hr_schedule_to_json(&a);
        assert_non_null(j);
        assert_int_equal(json_integer_value(json_object_get(j, "version")), 17);
        assert_string_equal(json_string_value(json_object_get(j, "type")),
                            hr_sched_type_to_string(a.type));
        hr_error err;
        assert_int_equal(hr_schedule_from_json(j, &b, &err), HR_OK);
        assert_same_schedule(&a, &b);

        /* and through text */
        char *text = json_dumps(j, JSON_COMPACT);
        assert_non_null(text);
        json_decref(j);
        json_error_t jerr;
        j = json_loads(text, 0, &jerr);
        free(text);
        assert_non_null(j);
        memset(&b, 0, sizeof b);
        assert_int_equal(hr_schedule_from_json(j, &b, &err), HR_OK);
        assert_same_schedule(&a, &b);
        json_decref(j);
    }
}

/* ---- the box ---- */

static void test_box_history(void **state)
{
    (void)state;
    hr_schedule s;
    hr_schedule_defaults(&s);
    hr_schedbox *box;
    hr_error err;
    assert_int_equal(hr_schedbox_create(&s, &box, &err), HR_OK);
    const hr_schedule *v1 = hr_schedbox_current(box);
    assert_int_equal(v1->version, 1);
    assert_true(v1->eta0 == 0.2);

    const hr_schedule *seen[4] = {v1};
    const double loss_before[4] = {NAN, 0.5, 0.4, NAN};
    for (int i = 1; i < 4; i++) {
        s.eta0 = 0.01 * i;
        uint64_t version = 0;
        assert_int_equal(hr_schedbox_swap(box, &s, 100 * (uint64_t)i, loss_before[i], &version, &err), HR_OK);
        assert_int_equal(version, i + 1);
        seen[i] = hr_schedbox_current(box);
        assert_int_equal(seen[i]->version, i + 1);
        assert_true(seen[i]->eta0 == 0.01 * i);
    }
    /* the box holds a copy */
    s.eta0 = 9;
    assert_true(hr_schedbox_current(box)->eta0 == 0.03);
    /* older schedules stay valid */
    assert_true(v1->eta0 == 0.2 && v1->version == 1);

    /* a rejected swap changes nothing */
    s.eta0 = NAN;
    uint64_t version = 1234;
    assert_int_equal(hr_schedbox_swap(box, &s, 999, 0.1, &version, &err), HR_EINVAL);
    assert_string_equal(err.field, "eta0");
    assert_int_equal(version, 1234);
    assert_ptr_equal(hr_schedbox_current(box), seen[3]);

    hr_schedbox_note_loss_after(box, 2, NAN);  /* not a measurement */
    hr_schedbox_note_loss_after(box, 2, 0.3);
    hr_schedbox_note_loss_after(box, 2, 0.9);  /* first call wins */
    hr_schedbox_note_loss_after(box, 99, 0.1); /* unknown: ignored */
    hr_schedbox_note_loss_after(box, 0, 0.1);

    hr_sched_change h[8];
    assert_int_equal(hr_schedbox_history(box, h, HR_ARRAY_LEN(h)), 4);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(h[i].version, i + 1);
        assert_int_equal(h[i].at_update, 100 * (uint64_t)i);
        if (isnan(loss_before[i]))
            assert_true(isnan(h[i].loss_before));
        else
            assert_true(h[i].loss_before == loss_before[i]);
        if (i == 1)
            assert_true(h[i].loss_after == 0.3);
        else
            assert_true(isnan(h[i].loss_after));
        assert_ptr_equal(h[i].schedule, seen[i]);
        assert_int_equal(h[i].schedule->version, i + 1);
        assert_true(isfinite(h[i].wall_time) && h[i].wall_time > 0);
    }
    /* partial copy, and count only */
    hr_sched_change two[2];
    memset(two, 0, sizeof two);
    assert_int_equal(hr_schedbox_history(box, two, 2), 4);
    assert_int_equal(two[0].version, 1);
    assert_int_equal(two[1].version, 2);
    assert_int_equal(hr_schedbox_history(box, NULL, 0), 4);

    json_t *hj = hr_schedbox_history_json(box);
    assert_non_null(hj);
    assert_true(json_is_array(hj));
    assert_int_equal(json_array_size(hj), 4);
    for (size_t i = 0; i < 4; i++) {
        json_t *e = json_array_get(hj, i);
        assert_int_equal(json_integer_value(json_object_get(e, "version")), i + 1);
        assert_int_equal(json_integer_value(json_object_get(e, "at_update")), 100 * i);
        assert_true(json_is_real(json_object_get(e, "time")));
        json_t *lb = json_object_get(e, "loss_before"), *la = json_object_get(e, "loss_after");
        if (isnan(loss_before[i]))
            assert_true(json_is_null(lb));
        else
            assert_true(json_real_value(lb) == loss_before[i]);
        if (i == 1)
            assert_true(json_real_value(la) == 0.3);
        else
            assert_true(json_is_null(la));
        hr_schedule back;
        assert_int_equal(hr_schedule_from_json(json_object_get(e, "schedule"), &back, &err), HR_OK);
        assert_same_schedule(seen[i], &back);
    }
    json_decref(hj);
    hr_schedbox_destroy(box);
    hr_schedbox_destroy(NULL);
}

static void test_box_create_invalid(void **state)
{
    (void)state;
    hr_schedule s;
    hr_schedule_defaults(&s);
    s.multiplier[HR_GROUP_ITEM] = -2;
    hr_schedbox *box = (hr_schedbox *)&s; /* must be overwritten */
    hr_error err;
    assert_int_equal(hr_schedbox_create(&s, &box, &err), HR_EINVAL);
    assert_null(box);
    assert_string_equal(err.field, "multipliers.item");
}

/* ---- live swap under concurrent readers ---- */

#define N_READERS 4
#define N_SWAPS 3000

/* Every field is derived from v, so a torn or half-written schedule shows. */
static void versioned(hr_schedule *s, uint64_t v)
{
    double x = (double)v, y = x / N_SWAPS; /* y in (0, 1]: within every bound */
    hr_schedule_defaults(s);
    s->optimizer = (hr_optimizer)(v % HR_OPT_COUNT);
    s->type = (hr_sched_type)(v % HR_SCHED_TYPE_COUNT);
    s->eta0 = y * 10;
    s->t0 = x * 10;
    s->power = y * 5;
    s->gamma = 1 / (x + 1);
    s->step = x * 3;
    s->period = x * 7;
    s->t_mult = 1 + y * 99;
    s->warmup = x * 2;
    s->floor = s->eta0 / 2;
    for (int g = 0; g < HR_GROUP_COUNT; g++)
        s->multiplier[g] = y * 10 * (g + 1);
    s->staleness_scaling = v % 2;
    s->staleness_tau = x + 1;
    s->ftrl_beta = x * 4;
    s->ftrl_l1 = x * 5;
}

static bool consistent(const hr_schedule *s)
{
    hr_schedule want;
    versioned(&want, s->version);
    want.version = s->version;
    bool ok = s->optimizer == want.optimizer && s->type == want.type &&
              s->eta0 == want.eta0 && s->t0 == want.t0 && s->power == want.power &&
              s->gamma == want.gamma && s->step == want.step && s->period == want.period &&
              s->t_mult == want.t_mult && s->warmup == want.warmup &&
              s->floor == want.floor && s->staleness_scaling == want.staleness_scaling &&
              s->staleness_tau == want.staleness_tau && s->ftrl_beta == want.ftrl_beta &&
              s->ftrl_l1 == want.ftrl_l1;
    for (int g = 0; g < HR_GROUP_COUNT; g++)
        ok = ok && s->multiplier[g] == want.multiplier[g];
    return ok;
}

typedef struct {
    hr_schedbox *box;
    atomic_bool done;
} shared;

typedef struct {
    shared *sh;
    uint64_t reads;
    uint64_t distinct;
    bool bad;
    bool went_back;
    uint64_t last;
    double sink;
} reader_arg;

static void *reader(void *p)
{
    reader_arg *a = p;
    uint64_t prev = 0;
    for (;;) {
        /* read done first: if it was set, the read below sees the last swap */
        bool finished = atomic_load(&a->sh->done);
        const hr_schedule *s = hr_schedbox_current(a->sh->box);
        if (!consistent(s))
            a->bad = true;
        if (s->version < prev)
            a->went_back = true;
        if (s->version != prev)
            a->distinct++;
        prev = s->version;
        a->sink += hr_schedule_group_rate(s, HR_GROUP_ITEM, a->reads, a->reads % 7);
        a->reads++;
        if (finished)
            break;
    }
    a->last = prev;
    return NULL;
}

typedef struct {
    shared *sh;
    bool bad;
} observer_arg;

/* Reads the history and notes losses while swaps go on. */
static void *observer(void *p)
{
    observer_arg *a = p;
    hr_sched_change h[16];
    while (!atomic_load(&a->sh->done)) {
        size_t n = hr_schedbox_history(a->sh->box, h, HR_ARRAY_LEN(h));
        size_t k = n < HR_ARRAY_LEN(h) ? n : HR_ARRAY_LEN(h);
        for (size_t i = 0; i < k; i++)
            if (h[i].version != i + 1 || h[i].schedule->version != i + 1 || !consistent(h[i].schedule))
                a->bad = true;
        hr_schedbox_note_loss_after(a->sh->box, n, (double)n);
        if (n % 64 == 0) {
            json_t *j = hr_schedbox_history_json(a->sh->box);
            if (!j || json_array_size(j) < n)
                a->bad = true;
            json_decref(j);
        }
    }
    return NULL;
}

static void test_concurrent_swap(void **state)
{
    (void)state;
    hr_schedule s;
    versioned(&s, 1);
    shared sh;
    hr_error err;
    assert_int_equal(hr_schedbox_create(&s, &sh.box, &err), HR_OK);
    atomic_init(&sh.done, false);

    pthread_t readers[N_READERS], obs;
    reader_arg ra[N_READERS];
    observer_arg oa = {.sh = &sh, .bad = false};
    for (int i = 0; i < N_READERS; i++) {
        ra[i] = (reader_arg){.sh = &sh};
        assert_int_equal(pthread_create(&readers[i], NULL, reader, &ra[i]), 0);
    }
    assert_int_equal(pthread_create(&obs, NULL, observer, &oa), 0);

    for (uint64_t v = 2; v <= N_SWAPS; v++) {
        versioned(&s, v);
        uint64_t got = 0;
        assert_int_equal(hr_schedbox_swap(sh.box, &s, v * 100, (double)v, &got, &err), HR_OK);
        assert_int_equal(got, v);
    }
    atomic_store(&sh.done, true);
    for (int i = 0; i < N_READERS; i++)
        assert_int_equal(pthread_join(readers[i], NULL), 0);
    assert_int_equal(pthread_join(obs, NULL), 0);

    for (int i = 0; i < N_READERS; i++) {
        assert_false(ra[i].bad);
        assert_false(ra[i].went_back);
        assert_int_equal(ra[i].last, N_SWAPS);
        assert_true(ra[i].reads >= 1);
    }
    assert_false(oa.bad);

    /* the whole history is there, in order, each schedule intact */
    static hr_sched_change h[N_SWAPS];
    assert_int_equal(hr_schedbox_history(sh.box, h, N_SWAPS), N_SWAPS);
    for (uint64_t i = 0; i < N_SWAPS; i++) {
        assert_int_equal(h[i].version, i + 1);
        assert_int_equal(h[i].at_update, i == 0 ? 0 : (i + 1) * 100);
        assert_int_equal(h[i].schedule->version, i + 1);
        assert_true(consistent(h[i].schedule));
        if (i > 0)
            assert_true(h[i].loss_before == (double)(i + 1));
        /* the observer noted loss n for version n, if it got there */
        assert_true(isnan(h[i].loss_after) || h[i].loss_after == (double)(i + 1));
    }
    assert_ptr_equal(hr_schedbox_current(sh.box), h[N_SWAPS - 1].schedule);
    hr_schedbox_destroy(sh.box);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_constant),
        cmocka_unit_test(test_invpow),
        cmocka_unit_test(test_exponential),
        cmocka_unit_test(test_step),
        cmocka_unit_test(test_cosine_restarts),
        cmocka_unit_test(test_cosine_reference),
        cmocka_unit_test(test_warmup_and_floor),
        cmocka_unit_test(test_group_rate_and_staleness),
        cmocka_unit_test(test_group_rate_never_overflows),
        cmocka_unit_test(test_rate_never_above_eta0),
        cmocka_unit_test(test_validate),
        cmocka_unit_test(test_upper_bounds),
        cmocka_unit_test(test_check_state),
        cmocka_unit_test(test_from_json_ok),
        cmocka_unit_test(test_from_json_errors),
        cmocka_unit_test(test_json_round_trip),
        cmocka_unit_test(test_box_history),
        cmocka_unit_test(test_box_create_invalid),
        cmocka_unit_test(test_concurrent_swap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

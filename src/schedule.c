/*
 * schedule.c - learning-rate schedules as immutable values, their JSON form,
 * and the box that holds the live one (see hogrec/schedule.h).
 *
 * Design:
 *  - Every numeric field of hr_schedule is described once, in `fields[]`:
 *    its name (dotted for the nested JSON objects: "multipliers.item",
 *    "staleness.tau", "ftrl.l1"), where it lives in the struct and its
 *    bounds. Validation, hr_schedule_from_json and hr_schedule_to_json all
 *    walk that table, so the three cannot disagree about a field; the few
 *    non-numeric keys (optimizer, type, staleness.enabled, version) are
 *    handled beside it.
 *  - Validation checks every field whatever the type, so a schedule that
 *    passes can later be switched to any type by changing `type` alone.
 *  - The box keeps one heap copy per installed schedule. The current one is
 *    published through an _Atomic pointer (release store, acquire load), so
 *    readers take no lock and always see a fully written schedule. Copies are
 *    never freed before hr_schedbox_destroy; they double as the history,
 *    which lives in a growable array under a mutex. Version n is history
 *    entry n-1.
 *
 * Threads: the pure functions (rate, validate, JSON) are safe from any
 * thread. hr_schedbox_current is lock-free and is what trainer threads call
 * per update; swap, note_loss_after and the history calls take the box mutex
 * (control-plane threads: HTTP handlers, the autotuner). create and destroy
 * must not race with any other call on the same box.
 */
#include "hogrec/schedule.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hogrec/json.h"

/* ---- names ---- */

static const char *const type_names[HR_SCHED_TYPE_COUNT] = {
    [HR_SCHED_CONSTANT] = "constant",
    [HR_SCHED_INVPOW] = "invpow",
    [HR_SCHED_EXPONENTIAL] = "exponential",
    [HR_SCHED_STEP] = "step",
    [HR_SCHED_COSINE] = "cosine",
};

static const char *const optimizer_names[HR_OPT_COUNT] = {
    [HR_OPT_SGD] = "sgd",
    [HR_OPT_ADAGRAD] = "adagrad",
    [HR_OPT_FTRL] = "ftrl",
    [HR_OPT_ADAM] = "adam",
};

static const char *const group_names[HR_GROUP_COUNT] = {
    [HR_GROUP_GLOBAL] = "global",
    [HR_GROUP_BIAS] = "bias",
    [HR_GROUP_USER] = "user",
    [HR_GROUP_ITEM] = "item",
    [HR_GROUP_CONTEXT] = "context",
};

const char *hr_sched_type_to_string(hr_sched_type t)
{
    return (unsigned)t < HR_SCHED_TYPE_COUNT ? type_names[t] : "unknown";
}

const char *hr_optimizer_to_string(hr_optimizer o)
{
    return (unsigned)o < HR_OPT_COUNT ? optimizer_names[o] : "unknown";
}

const char *hr_group_to_string(hr_group g)
{
    return (unsigned)g < HR_GROUP_COUNT ? group_names[g] : "unknown";
}

/* Index of name in names[0..n), or -1. */
static int lookup_name(const char *const *names, int n, const char *name)
{
    for (int i = 0; i < n; i++)
        if (strcmp(names[i], name) == 0)
            return i;
    return -1;
}

/* ---- the field table ---- */

/* One numeric field: JSON path, offset of its double in hr_schedule, and the
 * allowed range (lo/hi inclusive or not); infinity and NaN are always
 * rejected. The bounds are generous for any real schedule and keep a typo
 * (eta0 1e30) from blowing the weights up; README and openapi.yaml list
 * them. */
typedef struct {
    const char *path;
    size_t offset;
    double lo;
    bool lo_incl;
    double hi;
    bool hi_incl;
} num_field;

#define NUM(path, member, lo, lo_incl, hi, hi_incl)                            \
    { path, offsetof(hr_schedule, member), lo, lo_incl, hi, hi_incl }

#define MAX_UPDATES 1e15 /* bound of the fields counted in updates */

static const num_field fields[] = {
    NUM("eta0", eta0, 0, false, 100, true),
    NUM("t0", t0, 0, false, MAX_UPDATES, true),
    NUM("power", power, 0, true, 10, true),
    NUM("gamma", gamma, 0, false, 1, true),
    NUM("step", step, 0, false, MAX_UPDATES, true),
    NUM("period", period, 0, false, MAX_UPDATES, true),
    NUM("t_mult", t_mult, 1, true, 100, true),
    NUM("warmup", warmup, 0, true, MAX_UPDATES, true),
    NUM("floor", floor, 0, true, 100, true), /* and <= eta0 */
    NUM("multipliers.global", multiplier[HR_GROUP_GLOBAL], 0, true, 100, true),
    NUM("multipliers.bias", multiplier[HR_GROUP_BIAS], 0, true, 100, true),
    NUM("multipliers.user", multiplier[HR_GROUP_USER], 0, true, 100, true),
    NUM("multipliers.item", multiplier[HR_GROUP_ITEM], 0, true, 100, true),
    NUM("multipliers.context", multiplier[HR_GROUP_CONTEXT], 0, true, 100, true),
    NUM("staleness.tau", staleness_tau, 0, false, MAX_UPDATES, true),
    NUM("ftrl.beta", ftrl_beta, 0, true, 1e6, true),
    NUM("ftrl.l1", ftrl_l1, 0, true, 1e6, true),
    NUM("adam.beta1", adam_beta1, 0, true, 1, false),
    NUM("adam.beta2", adam_beta2, 0, true, 1, false),
    NUM("adam.epsilon", adam_epsilon, 0, false, 1, true),
};
#undef NUM

#define NFIELDS HR_ARRAY_LEN(fields)

/* Non-numeric keys, also addressed by path. */
static const char *const KEY_OPTIMIZER = "optimizer";
static const char *const KEY_TYPE = "type";
static const char *const KEY_VERSION = "version";
static const char *const KEY_ENABLED = "staleness.enabled";

/* The type-specific required fields ("type" and "eta0" are always required). */
static const char *const required_by_type[HR_SCHED_TYPE_COUNT][2] = {
    [HR_SCHED_CONSTANT] = {NULL, NULL},
    [HR_SCHED_INVPOW] = {"t0", "power"},
    [HR_SCHED_EXPONENTIAL] = {"gamma", "step"},
    [HR_SCHED_STEP] = {"gamma", "step"},
    [HR_SCHED_COSINE] = {"period", NULL},
};

static double *field_ptr(hr_schedule *s, const num_field *f)
{
    return (double *)((char *)s + f->offset);
}

static double field_get(const hr_schedule *s, const num_field *f)
{
    return *(const double *)((const char *)s + f->offset);
}

static int find_field(const char *path)
{
    for (size_t i = 0; i < NFIELDS; i++)
        if (strcmp(fields[i].path, path) == 0)
            return (int)i;
    return -1;
}

/* ---- values ---- */

void hr_schedule_defaults(hr_schedule *s)
{
    memset(s, 0, sizeof *s);
    s->optimizer = HR_OPT_ADAGRAD;
    s->type = HR_SCHED_CONSTANT;
    s->eta0 = 0.2;
    s->t0 = 10000;
    s->power = 0.5;
    s->gamma = 0.5;
    s->step = 100000;
    s->period = 100000;
    s->t_mult = 2;
    s->warmup = 0;
    s->floor = 0;
    for (int g = 0; g < HR_GROUP_COUNT; g++)
        s->multiplier[g] = 1;
    s->staleness_scaling = false;
    s->staleness_tau = 16;
    s->ftrl_beta = 1;
    s->ftrl_l1 = 0;
    s->adam_beta1 = 0.9;
    s->adam_beta2 = 0.999;
    s->adam_epsilon = 1e-8;
    s->version = 0;
}

static hr_status check_field(const num_field *f, double v, hr_error *err)
{
    if (isnan(v))
        return hr_error_set(err, HR_EINVAL, f->path, "%s is NaN", f->path);
    if (isinf(v))
        return hr_error_set(err, HR_EINVAL, f->path, "%s is infinite", f->path);
    if (f->lo_incl ? !(v >= f->lo) : !(v > f->lo))
        return hr_error_set(err, HR_EINVAL, f->path, "%s must be %s %g, got %g",
                            f->path, f->lo_incl ? ">=" : ">", f->lo, v);
    if (f->hi_incl ? !(v <= f->hi) : !(v < f->hi))
        return hr_error_set(err, HR_EINVAL, f->path, "%s must be %s %g, got %g",
                            f->path, f->hi_incl ? "<=" : "<", f->hi, v);
    return HR_OK;
}

hr_status hr_schedule_validate(const hr_schedule *s, hr_error *err)
{
    if (!s)
        return hr_error_set(err, HR_EINVAL, NULL, "schedule is NULL");
    if ((unsigned)s->optimizer >= HR_OPT_COUNT)
        return hr_error_set(err, HR_EINVAL, KEY_OPTIMIZER, "unknown optimizer %d",
                            (int)s->optimizer);
    if ((unsigned)s->type >= HR_SCHED_TYPE_COUNT)
        return hr_error_set(err, HR_EINVAL, KEY_TYPE, "unknown schedule type %d",
                            (int)s->type);
    for (size_t i = 0; i < NFIELDS; i++) {
        hr_status st = check_field(&fields[i], field_get(s, &fields[i]), err);
        if (st != HR_OK)
            return st;
    }
    if (s->floor > s->eta0)
        return hr_error_set(err, HR_EINVAL, "floor", "floor (%g) must be <= eta0 (%g)",
                            s->floor, s->eta0);
    /* A group's rate is at most eta0 * multiplier; were that infinite, a
     * stale update's rate / (1 + staleness/tau) could be inf / inf = NaN. */
    for (int g = 0; g < HR_GROUP_COUNT; g++) {
        if (!isfinite(s->eta0 * s->multiplier[g])) {
            char path[32];
            snprintf(path, sizeof path, "multipliers.%s", group_names[g]);
            return hr_error_set(err, HR_EINVAL, path, "eta0 * %s overflows (%g * %g)", path,
                                s->eta0, s->multiplier[g]);
        }
    }
    return HR_OK;
}

hr_status hr_schedule_check_state(const hr_schedule *s, hr_optimizer state, hr_error *err)
{
    /* What the rows of each state keep; what an optimizer needs, and the
     * states that have it. */
    static const char *const keeps[HR_OPT_COUNT] = {
        [HR_OPT_SGD] = "no optimizer state",
        [HR_OPT_ADAGRAD] = "AdaGrad state only",
        [HR_OPT_FTRL] = "AdaGrad and FTRL state",
        [HR_OPT_ADAM] = "Adam state",
    };
    static const char *const needs[HR_OPT_COUNT] = {
        [HR_OPT_SGD] = "no state",
        [HR_OPT_ADAGRAD] = "AdaGrad state",
        [HR_OPT_FTRL] = "FTRL state",
        [HR_OPT_ADAM] = "Adam state (moments and a step count)",
    };
    static const char *const flags[HR_OPT_COUNT] = {
        [HR_OPT_SGD] = "any --state",
        [HR_OPT_ADAGRAD] = "--state adagrad or --state ftrl",
        [HR_OPT_FTRL] = "--state ftrl",
        [HR_OPT_ADAM] = "--state adam",
    };
    if ((unsigned)s->optimizer >= HR_OPT_COUNT)
        return hr_error_set(err, HR_EINVAL, KEY_OPTIMIZER, "unknown optimizer %d",
                            (int)s->optimizer);
    if ((unsigned)state >= HR_OPT_COUNT)
        return hr_error_set(err, HR_EINVAL, KEY_OPTIMIZER, "unknown row state %d", (int)state);
    /* sgd < adagrad < ftrl is a chain: a state serves its optimizer and those
     * before it; adam rows serve adam and sgd only */
    if (s->optimizer == HR_OPT_SGD || s->optimizer == state ||
        (s->optimizer != HR_OPT_ADAM && state != HR_OPT_ADAM && s->optimizer <= state))
        return HR_OK;
    const char *o = optimizer_names[s->optimizer];
    return hr_error_set(err, HR_EINVAL, KEY_OPTIMIZER,
                        "optimizer %s needs rows with %s, and this server's rows keep %s "
                        "(state %s): start it with %s, on a new database (a database keeps "
                        "its state)",
                        o, needs[s->optimizer], keeps[state], optimizer_names[state],
                        flags[s->optimizer]);
}

/* SGDR: position within the current period. With t_mult m > 1, period n
 * starts at P (m^n - 1) / (m - 1) and lasts P m^n; n comes from the closed
 * form and is then corrected by a step or two against rounding. */
static void cosine_position(double period, double m, double t, double *t_cur,
                            double *len)
{
    if (m <= 1) {
        *t_cur = fmod(t, period);
        *len = period;
        return;
    }
    double lm = log1p(m - 1);
    double n = floor(log1p(t * (m - 1) / period) / lm);
    if (n < 0)
        n = 0;
    double start = period * expm1(n * lm) / (m - 1), T = period * pow(m, n);
    for (int i = 0; i < 4 && n > 0 && t < start; i++) {
        n -= 1;
        start = period * expm1(n * lm) / (m - 1);
        T = period * pow(m, n);
    }
    for (int i = 0; i < 4 && t >= start + T; i++) {
        n += 1;
        start = period * expm1(n * lm) / (m - 1);
        T = period * pow(m, n);
    }
    double c = t - start;
    if (c < 0)
        c = 0;
    if (c > T)
        c = T;
    *t_cur = c;
    *len = T;
}

double hr_schedule_rate(const hr_schedule *s, uint64_t t)
{
    double x = (double)t, rate;
    switch (s->type) {
    case HR_SCHED_INVPOW:
        rate = s->eta0 / pow(1 + x / s->t0, s->power);
        break;
    case HR_SCHED_EXPONENTIAL:
        rate = s->eta0 * pow(s->gamma, x / s->step);
        break;
    case HR_SCHED_STEP:
        rate = s->eta0 * pow(s->gamma, floor(x / s->step));
        break;
    case HR_SCHED_COSINE: {
        double t_cur, len;
        cosine_position(s->period, s->t_mult, x, &t_cur, &len);
        rate = s->floor + (s->eta0 - s->floor) * (1 + cos(M_PI * t_cur / len)) / 2;
        break;
    }
    case HR_SCHED_CONSTANT:
    default:
        rate = s->eta0;
        break;
    }
    if (rate > s->eta0) /* rounding: floor + (eta0 - floor) * 1 can exceed eta0 */
        rate = s->eta0;
    if (s->warmup > 0 && x < s->warmup) {
        double f = (x + 1) / s->warmup;
        return f < 1 ? rate * f : rate;
    }
    return rate < s->floor ? s->floor : rate;
}

double hr_schedule_group_rate(const hr_schedule *s, hr_group g, uint64_t t,
                              uint64_t staleness)
{
    if ((unsigned)g >= HR_GROUP_COUNT)
        return 0;
    double rate = hr_schedule_rate(s, t) * s->multiplier[g];
    if (s->staleness_scaling)
        rate /= 1 + (double)staleness / s->staleness_tau;
    return rate;
}

/* ---- JSON ---- */

static bool is_section(const char *key)
{
    size_t n = strlen(key);
    for (size_t i = 0; i < NFIELDS; i++)
        if (strncmp(fields[i].path, key, n) == 0 && fields[i].path[n] == '.')
            return true;
    return false;
}

/* Parses the member at `path` (dotted inside a section) into out; marks
 * seen[] for numeric fields and *type_seen for "type". */
static hr_status parse_member(const char *path, const json_t *v, hr_schedule *out,
                              bool *seen, bool *type_seen, hr_error *err)
{
    int i = find_field(path);
    if (i >= 0) {
        if (!json_is_number(v))
            return hr_error_set(err, HR_EINVAL, path, "%s must be a number", path);
        *field_ptr(out, &fields[i]) = json_number_value(v);
        seen[i] = true;
        return HR_OK;
    }
    if (strcmp(path, KEY_TYPE) == 0 || strcmp(path, KEY_OPTIMIZER) == 0) {
        bool is_type = strcmp(path, KEY_TYPE) == 0;
        if (!json_is_string(v))
            return hr_error_set(err, HR_EINVAL, path, "%s must be a string", path);
        const char *name = json_string_value(v);
        if (is_type) {
            int k = lookup_name(type_names, HR_SCHED_TYPE_COUNT, name);
            if (k < 0)
                return hr_error_set(err, HR_EINVAL, path,
                                    "unknown schedule type \"%.64s\" (constant, invpow, "
                                    "exponential, step, cosine)", name);
            out->type = (hr_sched_type)k;
            *type_seen = true;
        } else {
            int k = lookup_name(optimizer_names, HR_OPT_COUNT, name);
            if (k < 0)
                return hr_error_set(err, HR_EINVAL, path,
                                    "unknown optimizer \"%.64s\" (sgd, adagrad, ftrl, adam)",
                                    name);
            out->optimizer = (hr_optimizer)k;
        }
        return HR_OK;
    }
    if (strcmp(path, KEY_ENABLED) == 0) {
        if (!json_is_boolean(v))
            return hr_error_set(err, HR_EINVAL, path, "%s must be true or false", path);
        out->staleness_scaling = json_is_true(v);
        return HR_OK;
    }
    if (strcmp(path, KEY_VERSION) == 0) {
        if (!json_is_integer(v) || json_integer_value(v) < 0)
            return hr_error_set(err, HR_EINVAL, path,
                                "%s must be a non-negative integer", path);
        out->version = (uint64_t)json_integer_value(v);
        return HR_OK;
    }
    return hr_error_set(err, HR_EINVAL, path, "unknown key \"%s\"", path);
}

hr_status hr_schedule_from_json(const json_t *json, hr_schedule *out,
                                hr_error *err)
{
    if (!json_is_object(json))
        return hr_error_set(err, HR_EINVAL, NULL, "schedule must be a JSON object");
    hr_schedule_defaults(out);
    bool seen[NFIELDS] = {false};
    bool type_seen = false;
    const char *key;
    json_t *v;
    /* json_object_foreach wants a non-const object; it only reads here. */
    json_object_foreach((json_t *)json, key, v) {
        hr_status st;
        if (is_section(key)) {
            if (!json_is_object(v))
                return hr_error_set(err, HR_EINVAL, key, "%s must be an object", key);
            const char *sub;
            json_t *sv;
            json_object_foreach(v, sub, sv) {
                char path[64];
                int n = snprintf(path, sizeof path, "%s.%s", key, sub);
                if (n < 0 || (size_t)n >= sizeof path)
                    return hr_error_set(err, HR_EINVAL, key, "unknown key \"%.40s\" in %s",
                                        sub, key);
                st = parse_member(path, sv, out, seen, &type_seen, err);
                if (st != HR_OK)
                    return st;
            }
            continue;
        }
        /* Dotted names exist only inside their section. */
        if (strchr(key, '.'))
            return hr_error_set(err, HR_EINVAL, key, "unknown key \"%.50s\"", key);
        st = parse_member(key, v, out, seen, &type_seen, err);
        if (st != HR_OK)
            return st;
    }
    if (!type_seen)
        return hr_error_set(err, HR_EINVAL, KEY_TYPE, "missing required field \"type\"");
    if (!seen[find_field("eta0")])
        return hr_error_set(err, HR_EINVAL, "eta0", "missing required field \"eta0\"");
    for (size_t r = 0; r < 2; r++) {
        const char *name = required_by_type[out->type][r];
        if (name && !seen[find_field(name)])
            return hr_error_set(err, HR_EINVAL, name,
                                "missing required field \"%s\" for type %s", name,
                                type_names[out->type]);
    }
    return hr_schedule_validate(out, err);
}

/* Returns the object at section `name` of root, creating it; NULL on ENOMEM. */
static json_t *section(json_t *root, const char *name, size_t len)
{
    char buf[32];
    if (len >= sizeof buf)
        return NULL;
    memcpy(buf, name, len);
    buf[len] = '\0';
    json_t *o = json_object_get(root, buf);
    if (o)
        return o;
    o = json_object();
    if (!o || json_object_set_new(root, buf, o) != 0)
        return NULL;
    return o;
}

json_t *hr_schedule_to_json(const hr_schedule *s)
{
    json_t *root = json_object();
    if (!root)
        return NULL;
    if (json_object_set_new(root, KEY_OPTIMIZER,
                            json_string(hr_optimizer_to_string(s->optimizer))) != 0 ||
        json_object_set_new(root, KEY_TYPE, json_string(hr_sched_type_to_string(s->type))) != 0)
        goto fail;
    for (size_t i = 0; i < NFIELDS; i++) {
        const char *path = fields[i].path, *dot = strchr(path, '.');
        json_t *obj = dot ? section(root, path, (size_t)(dot - path)) : root;
        /* jansson refuses non-finite reals; write null, which from_json then
         * rejects, rather than drop the key silently. */
        double v = field_get(s, &fields[i]);
        if (!obj || json_object_set_new(obj, dot ? dot + 1 : path,
                                        hr_json_real_or_null(v)) != 0)
            goto fail;
        if (strcmp(path, "staleness.tau") == 0 &&
            json_object_set_new(obj, "enabled", json_boolean(s->staleness_scaling)) != 0)
            goto fail;
    }
    if (json_object_set_new(root, KEY_VERSION, json_integer((json_int_t)s->version)) != 0)
        goto fail;
    return root;
fail:
    json_decref(root);
    return NULL;
}

/* ---- the live box ---- */

struct hr_schedbox {
    _Atomic(const hr_schedule *) current; /* newest installed; never NULL */
    pthread_mutex_t lock;                 /* guards the fields below */
    hr_sched_change *history;             /* [len], version i+1 at i; owns ->schedule */
    size_t len, cap;
};

/* Appends a heap copy of s as the next version and publishes it. Caller holds
 * box->lock (or is create, before the box is shared). */
static hr_status do_install(hr_schedbox *box, const hr_schedule *s, uint64_t at_update,
                            double loss_before, const char *note, uint64_t *version,
                            hr_error *err)
{
    if (box->len == box->cap) {
        size_t cap = box->cap ? box->cap * 2 : 8;
        hr_sched_change *h = realloc(box->history, cap * sizeof *h);
        if (!h)
            return hr_error_set(err, HR_ENOMEM, NULL, "out of memory growing history");
        box->history = h;
        box->cap = cap;
    }
    hr_schedule *copy = malloc(sizeof *copy);
    if (!copy)
        return hr_error_set(err, HR_ENOMEM, NULL, "out of memory copying schedule");
    *copy = *s;
    copy->version = (uint64_t)box->len + 1;
    box->history[box->len] = (hr_sched_change){
        .version = copy->version,
        .wall_time = hr_wall_time(),
        .at_update = at_update,
        .loss_before = loss_before,
        .loss_after = NAN,
        .schedule = copy,
    };
    snprintf(box->history[box->len].note, sizeof box->history[box->len].note, "%s",
             note ? note : "");
    box->len++;
    atomic_store_explicit(&box->current, copy, memory_order_release);
    if (version)
        *version = copy->version;
    return HR_OK;
}

hr_status hr_schedbox_create(const hr_schedule *initial, hr_schedbox **out,
                             hr_error *err)
{
    *out = NULL;
    hr_status st = hr_schedule_validate(initial, err);
    if (st != HR_OK)
        return st;
    hr_schedbox *box = calloc(1, sizeof *box);
    if (!box)
        return hr_error_set(err, HR_ENOMEM, NULL, "out of memory creating schedule box");
    if (pthread_mutex_init(&box->lock, NULL) != 0) {
        free(box);
        return hr_error_set(err, HR_ENOMEM, NULL, "cannot create schedule box mutex");
    }
    atomic_init(&box->current, NULL);
    st = do_install(box, initial, 0, NAN, NULL, NULL, err);
    if (st != HR_OK) {
        hr_schedbox_destroy(box);
        return st;
    }
    *out = box;
    return HR_OK;
}

void hr_schedbox_destroy(hr_schedbox *box)
{
    if (!box)
        return;
    for (size_t i = 0; i < box->len; i++)
        free((void *)box->history[i].schedule);
    free(box->history);
    pthread_mutex_destroy(&box->lock);
    free(box);
}

const hr_schedule *hr_schedbox_current(const hr_schedbox *box)
{
    return atomic_load_explicit(&box->current, memory_order_acquire);
}

hr_status hr_schedbox_swap(hr_schedbox *box, const hr_schedule *s,
                           uint64_t at_update, double loss_before,
                           uint64_t *version, hr_error *err)
{
    hr_status st = hr_schedule_validate(s, err);
    if (st != HR_OK)
        return st;
    pthread_mutex_lock(&box->lock);
    st = do_install(box, s, at_update, loss_before, NULL, version, err);
    pthread_mutex_unlock(&box->lock);
    return st;
}

hr_status hr_schedbox_swap_note(hr_schedbox *box, const hr_schedule *s, uint64_t at_update,
                                double loss_before, const char *note, uint64_t *version,
                                hr_error *err)
{
    hr_status st = hr_schedule_validate(s, err);
    if (st != HR_OK)
        return st;
    pthread_mutex_lock(&box->lock);
    st = do_install(box, s, at_update, loss_before, note, version, err);
    pthread_mutex_unlock(&box->lock);
    return st;
}

void hr_schedbox_note_loss_after(hr_schedbox *box, uint64_t version, double loss)
{
    /* A non-finite loss is no measurement: it is ignored, so the first finite
     * value noted for a version is the one kept. */
    if (!isfinite(loss))
        return;
    pthread_mutex_lock(&box->lock);
    if (version >= 1 && version <= box->len) {
        hr_sched_change *c = &box->history[version - 1];
        if (isnan(c->loss_after))
            c->loss_after = loss;
    }
    pthread_mutex_unlock(&box->lock);
}

size_t hr_schedbox_history(hr_schedbox *box, hr_sched_change *out, size_t max)
{
    pthread_mutex_lock(&box->lock);
    size_t n = box->len;
    if (out && max)
        memcpy(out, box->history, (max < n ? max : n) * sizeof *out);
    pthread_mutex_unlock(&box->lock);
    return n;
}


json_t *hr_schedbox_history_json(hr_schedbox *box)
{
    json_t *arr = json_array();
    if (!arr)
        return NULL;
    pthread_mutex_lock(&box->lock);
    for (size_t i = 0; i < box->len; i++) {
        const hr_sched_change *c = &box->history[i];
        json_t *e = json_pack("{s:I, s:o, s:I, s:o, s:o, s:o}",
                              "version", (json_int_t)c->version,
                              "time", hr_json_real_or_null(c->wall_time),
                              "at_update", (json_int_t)c->at_update,
                              "loss_before", hr_json_real_or_null(c->loss_before),
                              "loss_after", hr_json_real_or_null(c->loss_after),
                              "schedule", hr_schedule_to_json(c->schedule));
        if (e && c->note[0] && json_object_set_new(e, "note", json_string(c->note)) != 0) {
            json_decref(e);
            e = NULL;
        }
        if (!e || json_array_append_new(arr, e) != 0) {
            pthread_mutex_unlock(&box->lock);
            json_decref(arr);
            return NULL;
        }
    }
    pthread_mutex_unlock(&box->lock);
    return arr;
}

/*
 * schedule.h - learning-rate schedules, the optimizer choice and per-group
 * multipliers, as one immutable value; and the box that holds the live one.
 *
 * A schedule maps the global update count t to a base rate:
 *   constant     eta0
 *   invpow       eta0 / (1 + t/t0)^power
 *   exponential  eta0 * gamma^(t/step)
 *   step         eta0 * gamma^floor(t/step)
 *   cosine       SGDR (cosine with warm restarts): period `period` updates,
 *                each next period t_mult times longer; within a period
 *                floor + (eta0 - floor) * (1 + cos(pi * t_cur / T_i)) / 2
 * then, for every type, a linear warm-up over the first `warmup` updates
 * (rate * (t+1)/warmup) and a floor: the result is never below `floor`
 * (except during warm-up). The rate of parameter group g is that base rate
 * times multiplier[g].
 *
 * Staleness scaling: when enabled, an update whose event waited while
 * `staleness` other updates were applied uses rate / (1 + staleness/tau).
 *
 * Live swap: an hr_schedbox holds the current schedule behind an atomic
 * pointer. hr_schedbox_current() is lock-free and returns an immutable
 * schedule that stays valid until the box is destroyed (old schedules are
 * kept as the change history), so a trainer never sees a torn schedule and
 * the next update after a swap uses the new one.
 */
#ifndef HOGREC_SCHEDULE_H
#define HOGREC_SCHEDULE_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "hogrec/common.h"

typedef enum {
    HR_SCHED_CONSTANT,
    HR_SCHED_INVPOW,
    HR_SCHED_EXPONENTIAL,
    HR_SCHED_STEP,
    HR_SCHED_COSINE,
    HR_SCHED_TYPE_COUNT
} hr_sched_type;

typedef enum {
    HR_OPT_SGD,     /* plain SGD on everything */
    HR_OPT_ADAGRAD, /* AdaGrad on everything */
    HR_OPT_FTRL,    /* FTRL-Proximal on linear weights, AdaGrad on factors */
    HR_OPT_ADAM,    /* lazy Adam on everything: moments and step count per row */
    HR_OPT_COUNT
} hr_optimizer;

/* Parameter groups, each with its own rate multiplier and L2. */
typedef enum {
    HR_GROUP_GLOBAL,  /* the global bias w0 */
    HR_GROUP_BIAS,    /* per-id linear weights (user, item, context) */
    HR_GROUP_USER,    /* user factors */
    HR_GROUP_ITEM,    /* item factors */
    HR_GROUP_CONTEXT, /* context factors */
    HR_GROUP_COUNT
} hr_group;

typedef struct {
    hr_optimizer optimizer;
    hr_sched_type type;
    double eta0;     /* base rate, > 0 */
    double t0;       /* invpow: updates scale, > 0 */
    double power;    /* invpow: exponent, >= 0 */
    double gamma;    /* exponential, step: factor per `step`, in (0, 1] */
    double step;     /* exponential, step: updates per factor, > 0 */
    double period;   /* cosine: first period in updates, > 0 */
    double t_mult;   /* cosine: period growth, >= 1 */
    double warmup;   /* updates of linear warm-up, >= 0 */
    double floor;    /* lowest rate after warm-up, >= 0, <= eta0 */
    double multiplier[HR_GROUP_COUNT]; /* per-group factor, >= 0 */
    bool staleness_scaling;            /* scale by 1/(1 + staleness/tau) */
    double staleness_tau;              /* updates, > 0 */
    double ftrl_beta;                  /* FTRL beta, >= 0 */
    double ftrl_l1;                    /* FTRL L1 on linear weights, >= 0 */
    double adam_beta1;                 /* Adam first-moment decay, in [0, 1) */
    double adam_beta2;                 /* Adam second-moment decay, in [0, 1) */
    double adam_epsilon;               /* Adam denominator term, in (0, 1] */
    uint64_t version;                  /* set by the box; 0 if never boxed */
} hr_schedule;

const char *hr_sched_type_to_string(hr_sched_type t);
const char *hr_optimizer_to_string(hr_optimizer o);
const char *hr_group_to_string(hr_group g);

/* The defaults: AdaGrad, constant 0.2 (tuned on MovieLens, see README), all multipliers 1, no warm-up. */
void hr_schedule_defaults(hr_schedule *s);

/* HR_OK or HR_EINVAL with err naming the bad field (e.g. "eta0",
 * "multipliers.item") and the bound it crossed. Rejects NaN, infinities and
 * values out of each field's range (README, openapi.yaml). */
hr_status hr_schedule_validate(const hr_schedule *s, hr_error *err);

/* Whether rows that keep the optimizer state of `state` can run
 * s->optimizer. `state` is the most capable optimizer the rows support:
 * HR_OPT_SGD (no state), HR_OPT_ADAGRAD (AdaGrad accumulators) or
 * HR_OPT_FTRL (AdaGrad and FTRL z, n) or HR_OPT_ADAM (Adam's moments and
 * step count). sgd runs on any rows, adagrad on adagrad or ftrl rows, ftrl
 * on ftrl rows, adam on adam rows. HR_EINVAL with err (field
 * "optimizer") naming what the rows keep and the --state that would do. */
hr_status hr_schedule_check_state(const hr_schedule *s, hr_optimizer state, hr_error *err);

/* Base rate at update t (before group multipliers and staleness). */
double hr_schedule_rate(const hr_schedule *s, uint64_t t);

/* Rate for group g at update t with the given staleness (updates). */
double hr_schedule_group_rate(const hr_schedule *s, hr_group g, uint64_t t,
                              uint64_t staleness);

/* Parses a JSON object into *out and validates it. Recognized keys:
 * "optimizer", "type", "eta0", "t0", "power", "gamma", "step", "period",
 * "t_mult", "warmup", "floor", "multipliers" {"global","bias","user","item",
 * "context"}, "staleness" {"enabled", "tau"}, "ftrl" {"beta","l1"},
 * "adam" {"beta1","beta2","epsilon"}.
 * "type" and "eta0" are required, and so are the parameters of the type
 * (invpow: t0, power; exponential/step: gamma, step; cosine: period); the
 * rest default as in hr_schedule_defaults. Unknown keys and wrong JSON types
 * are errors. json is borrowed. On error *out is unspecified and err names
 * the field. */
hr_status hr_schedule_from_json(const json_t *json, hr_schedule *out,
                                hr_error *err);

/* Returns a new JSON object (caller owns the reference) with every field,
 * in the form hr_schedule_from_json accepts, plus "version". */
json_t *hr_schedule_to_json(const hr_schedule *s);

/* ---- the live box ---- */

typedef struct hr_schedbox hr_schedbox;

/* One entry of the change history. */
typedef struct {
    uint64_t version;      /* 1 for the initial schedule */
    double wall_time;      /* when it was installed, epoch seconds */
    uint64_t at_update;    /* global update count when installed */
    double loss_before;    /* progressive logloss over the window before, NAN if unknown */
    double loss_after;     /* same for the window after, NAN until noted */
    const hr_schedule *schedule; /* borrowed; valid until box destroyed */
    char note[256];        /* why it was installed, "" for a plain change (e.g. "reverted
                              by guard: ..."); kept in memory, not in checkpoints */
} hr_sched_change;

/* initial is copied (version 1). Validates it: HR_EINVAL with err. */
hr_status hr_schedbox_create(const hr_schedule *initial, hr_schedbox **out,
                             hr_error *err);
void hr_schedbox_destroy(hr_schedbox *box); /* NULL is a no-op */

/* Lock-free; never NULL; valid until the box is destroyed. */
const hr_schedule *hr_schedbox_current(const hr_schedbox *box);

/* Validates and installs a copy of s as the current schedule with the next
 * version number; records at_update and loss_before in the history.
 * *version (may be NULL) receives the new version. Thread-safe. */
hr_status hr_schedbox_swap(hr_schedbox *box, const hr_schedule *s,
                           uint64_t at_update, double loss_before,
                           uint64_t *version, hr_error *err);

/* hr_schedbox_swap with a note for the history entry (NULL: none). */
hr_status hr_schedbox_swap_note(hr_schedbox *box, const hr_schedule *s, uint64_t at_update,
                                double loss_before, const char *note, uint64_t *version,
                                hr_error *err);

/* Records the loss measured after the change of `version` (first call wins). */
void hr_schedbox_note_loss_after(hr_schedbox *box, uint64_t version, double loss);

/* Copies up to max history entries (oldest first) into out; returns how many
 * there are in all. Thread-safe. */
size_t hr_schedbox_history(hr_schedbox *box, hr_sched_change *out, size_t max);

/* Returns a new JSON array of the history (each entry with its schedule). */
json_t *hr_schedbox_history_json(hr_schedbox *box);

#endif

/*
 * event.h - a training event after validation and id resolution: the unit
 * that travels through the queue to the trainers. Fixed size, no pointers,
 * so the queue copies it by value.
 */
#ifndef HOGREC_EVENT_H
#define HOGREC_EVENT_H

#include <stdint.h>

/* Most context features one event may carry. */
#define HR_MAX_CTX 16

/* Most catalog attributes (context features) one user or item row carries
 * (model.h: hr_model_set_attrs); they join an event's own features. */
#define HR_MAX_ATTRS 16

/* One active context feature: a row of the context table and its value
 * (1 for a categorical "field": "value", the number for a numeric field). */
typedef struct {
    uint32_t row;
    float x;
} hr_feat;

enum {
    HR_EV_SAMPLED_NEGATIVE = 1u << 0, /* made by negative sampling */
    HR_EV_EXPLICIT_LABEL = 1u << 1,   /* the client gave the label */
};

typedef struct {
    uint32_t user;        /* row in the user table (0 = shared default) */
    uint32_t item;        /* row in the item table (0 = shared default) */
    uint16_t nctx;        /* number of entries used in ctx[] */
    uint16_t flags;       /* HR_EV_* */
    float label;          /* 0/1 (logistic) or the rating (squared loss) */
    float weight;         /* loss weight, >= 0; 1 by default */
    uint64_t seq;         /* event-log sequence number, 0 if not logged */
    uint64_t enq_updates; /* trainers' update count at enqueue (staleness) */
    uint64_t enq_ns;      /* hr_now_ns() at enqueue (freshness) */
    double ts;            /* event time, seconds since epoch; 0 if absent */
    hr_feat ctx[HR_MAX_CTX];
} hr_event;

#endif

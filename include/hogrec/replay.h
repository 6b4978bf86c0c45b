/*
 * replay.h - offline training from a file through the same ingest path,
 * queue and trainers as the server: `hogrec replay`.
 */
#ifndef HOGREC_REPLAY_H
#define HOGREC_REPLAY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "hogrec/app.h"

typedef enum { HR_FMT_NDJSON, HR_FMT_MOVIELENS } hr_replay_format;
typedef enum { HR_ORDER_FILE, HR_ORDER_TIME, HR_ORDER_SHUFFLE } hr_replay_order;

/* Events read from a file, resolved against a model. */
typedef struct {
    hr_event *ev;   /* owned array */
    size_t n;
} hr_event_list;

/* Bad lines that hr_replay_read left out. */
typedef struct {
    size_t lines;    /* how many */
    hr_error first;  /* the first one's error (message names its line) */
} hr_replay_skips;

/* Reads a file into events. intern: add unknown ids to the model (training
 * data) or map them to the default row (test data). binarize > 0: a
 * movielens rating >= binarize becomes label 1, else 0 (logistic models);
 * with binarize 0 a logistic model takes every line as a positive. A bad
 * line (not parsable, an invalid event: HR_EINVAL) is an error naming the
 * line when strict; otherwise it is left out and counted in *skips (not
 * NULL then; zeroed first). Other errors (the file, memory, an id table
 * full) always stop the read. On error *out is empty. */
hr_status hr_replay_read(hr_model *m, const char *path, hr_replay_format fmt, double binarize,
                         int intern, bool strict, hr_replay_skips *skips, hr_event_list *out,
                         hr_error *err);
void hr_event_list_free(hr_event_list *l);

/* Reorders events in place (time: stable by ts; shuffle: seeded). */
void hr_replay_order_events(hr_event_list *l, hr_replay_order order, uint64_t seed);

/* Quality of the model on test events (no learning). */
typedef struct {
    size_t n;
    double auc;     /* logistic */
    double logloss; /* logistic */
    double rmse;    /* squared */
    size_t n_cold;  /* events of users no training event reached (unknown, or only
                       in the catalog: their row's event count is 0) */
    double auc_cold; /* logistic, over those events (NAN when none) */
} hr_eval;
void hr_replay_evaluate(const hr_model *m, const hr_event_list *test, hr_eval *out);

/* `hogrec replay ...`; returns the process exit code. */
int hr_replay_main(int argc, char **argv);

#endif

/*
 * config.h - every option of hogrec, declared once in a table (config.c).
 *
 * The JSON config file, the command-line flags (--name-with-dashes), the
 * environment (HOGREC_NAME_IN_CAPS) and --help all read that one table.
 * Precedence: defaults < file < environment < flags.
 *
 * An hr_config is a plain value; the process builds one at start and every
 * module reads its fields. Options marked runtime can be changed while the
 * server runs (through the admin API); the others need a restart.
 */
#ifndef HOGREC_CONFIG_H
#define HOGREC_CONFIG_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "hogrec/common.h"
#include "hogrec/log.h" /* hr_log_level */
#include "hogrec/row.h" /* hr_loss */

#define HR_CONFIG_STR 256

/* Choice options are enums, parsed once from their names (the option table
 * lists the names; an unknown name is an error listing them). Their values
 * are indexes into that list. */

/* `state`: the optimizer state rows keep, or what the schedule needs. */
typedef enum {
    HR_CONFIG_STATE_AUTO,
    HR_CONFIG_STATE_SGD,
    HR_CONFIG_STATE_ADAGRAD,
    HR_CONFIG_STATE_FTRL,
    HR_CONFIG_STATE_ADAM,
    HR_CONFIG_STATE_COUNT
} hr_config_state;

/* `negative_sampling`. */
typedef enum { HR_CONFIG_NEG_AUTO, HR_CONFIG_NEG_ON, HR_CONFIG_NEG_OFF, HR_CONFIG_NEG_COUNT } hr_config_neg;

/* `durability` of the event log. */
typedef enum {
    HR_CONFIG_DURABILITY_SYNC,
    HR_CONFIG_DURABILITY_INTERVAL,
    HR_CONFIG_DURABILITY_COUNT
} hr_config_durability;

/* `topk_precision`: the item copy top-K scans for candidates (exact either way). */
typedef enum {
    HR_CONFIG_TOPK_F32,
    HR_CONFIG_TOPK_F16,
    HR_CONFIG_TOPK_COUNT
} hr_config_topk;

/* `update_kernel`: the variant of the fused update kernel (sgd.h,
 * hr_sgd_kernel_select), for the whole process. */
typedef enum {
    HR_CONFIG_KERNEL_AUTO,    /* the widest this CPU runs */
    HR_CONFIG_KERNEL_GENERIC, /* portable C */
    HR_CONFIG_KERNEL_AVX2,    /* AVX2 and FMA */
    HR_CONFIG_KERNEL_AVX512,  /* AVX-512F */
    HR_CONFIG_KERNEL_EXACT,   /* bit-identical to the general kernel */
    HR_CONFIG_KERNEL_COUNT
} hr_config_kernel;

/* `attr_norm`: how a catalog record's attribute values scale with their
 * number n on that record (catalog.h). */
typedef enum {
    HR_CONFIG_ATTR_NORM_NONE,  /* each at its side's attr_value */
    HR_CONFIG_ATTR_NORM_SQRT,  /* each at attr_value / sqrt(n) */
    HR_CONFIG_ATTR_NORM_COUNT, /* each at attr_value / n */
    HR_CONFIG_ATTR_NORM_COUNT_ /* how many */
} hr_config_attr_norm;

/* The option's name of a value ("auto", "on", "sync", ...); static strings,
 * "unknown" out of range. hr_loss_to_string (row.h) and
 * hr_log_level_to_string (log.h) name the other two. */
const char *hr_config_state_to_string(hr_config_state s);
const char *hr_config_neg_to_string(hr_config_neg n);
const char *hr_config_durability_to_string(hr_config_durability d);
const char *hr_config_topk_to_string(hr_config_topk t);
const char *hr_config_attr_norm_to_string(hr_config_attr_norm a);
const char *hr_config_kernel_to_string(hr_config_kernel k);

typedef struct {
    /* model */
    int64_t k;                 /* factor dimension */
    hr_loss loss;              /* logistic | squared */
    hr_config_state state;     /* optimizer state kept per row: auto | sgd | adagrad | ftrl | adam */
    double init_scale;         /* stddev of initial factors */
    int64_t seed;              /* seed of init, sampling and shuffles */
    double l2_global, l2_bias, l2_user, l2_item, l2_context; /* L2 per group */
    int64_t max_users, max_items; /* most rows per id table */
    int64_t context_bits;      /* context features hash into 2^bits rows */
    int64_t chunk_rows;        /* rows per storage chunk (power of two) */
    int64_t min_count;         /* events before an id gets its own embedding */
    hr_config_topk topk_precision; /* f32 | f16: item copy top-K scans */
    double attr_value_user;    /* value of a user's catalog attribute (a number: times it) */
    double attr_value_item;    /* the same for an item's */
    hr_config_attr_norm attr_norm; /* none | sqrt | count: scaled by the record's attributes */
    hr_storage storage;        /* f32 | bf16: how rows store their factors (row.h) */
    hr_config_kernel update_kernel; /* auto | generic | avx2 | avx512 | exact (sgd.h) */
    double expire_seconds;     /* drop ids unseen this long (0 = never) */
    double grad_clip;          /* max gradient L2 norm per event (0 = off) */
    double adagrad_init;       /* initial AdaGrad accumulator */
    double rating_offset;      /* squared loss: initial global bias */
    /* learning (the schedule itself is a JSON object, see schedule.h) */
    json_t *schedule;          /* owned; NULL = defaults */
    /* trainers and queue */
    int64_t threads;           /* trainer threads */
    int64_t batch;             /* events a trainer pops at once */
    int64_t queue_capacity;    /* events the queue holds */
    hr_config_neg negative_sampling; /* auto | on | off */
    int64_t negatives;         /* sampled negatives per positive */
    double negative_alpha;     /* 0 = uniform, else popularity^alpha */
    int64_t progress_window;   /* events in the progressive-validation window */
    /* divergence guard (guard.h) */
    int64_t guard;             /* 1: a restore point and a watch after each schedule change */
    double guard_margin;       /* revert when the window loss > before * (1 + margin) */
    int64_t guard_windows;     /* consecutive windows over the margin that revert */
    int64_t guard_watch;       /* windows watched after a change; then it is kept */
    double guard_nonfinite;    /* a window with more skipped non-finite steps (fraction) is over */
    int64_t guard_memory_mb;   /* most memory a restore point may hold (rows + events), MB */
    /* counterfactual trials (trials.h) */
    int64_t trial_retain_events; /* the event log keeps this many events before the newest one */
    double trial_retain_seconds; /* ... and the events of this many seconds (0: off) */
    int64_t trial_memory_mb;   /* most memory of a trial's private copy, MB */
    double trial_cpu_share;    /* share of one core a trial's thread may use, (0, 1] */
    int64_t trial_curve_events; /* events per point of a trial's curve */
    /* server */
    char bind[64];
    int64_t port;
    int64_t http_threads;
    char admin_token[HR_CONFIG_STR];
    int64_t max_body_bytes;
    int64_t max_connections;
    int64_t per_ip_connections;
    int64_t connection_timeout; /* seconds */
    int64_t memory_limit;       /* bytes per connection pool */
    int64_t max_batch_events;   /* events per POST /v1/events */
    double dedup_window;        /* seconds an event id is remembered */
    int64_t dedup_capacity;     /* event ids remembered within the window at most */
    int64_t history_per_user;   /* recent items kept per user (exclude_seen) */
    int64_t max_wait_ms;        /* largest wait_ms of a min_seq query, milliseconds */
    double shutdown_timeout;    /* seconds in-flight requests get after SIGTERM */
    double popular_half_life;   /* seconds for a positive event's weight in the popular
                                   fallback to halve (0 = no decay) */
    /* persistence */
    char db[HR_CONFIG_STR];     /* SQLite file; "" = no persistence */
    double checkpoint_interval; /* seconds between checkpoints (0 = off) */
    int64_t checkpoint_events;  /* events between checkpoints (0 = off) */
    int64_t keep_checkpoints;   /* complete checkpoints kept */
    int64_t full_every;         /* a full checkpoint every N increments */
    hr_config_durability durability; /* sync | interval */
    int64_t sync_interval_ms;   /* for durability "interval" */
    hr_log_level log_level;     /* debug | info | warn | error */
    /* cluster mode (cluster.h); redis "" = standalone */
    char redis[HR_CONFIG_STR];  /* redis://HOST:PORT[/DB] of the cluster; "" = standalone */
    char cluster[HR_CONFIG_STR]; /* cluster name (its keys are hogrec:{NAME}:...) */
    char node_id[HR_CONFIG_STR]; /* this node's id in the cluster; "" = host name and port */
    int64_t redis_unsafe;       /* 1: start even when the Redis settings check refuses */
    int64_t publish_ms;         /* leader: a row delta every this many ms */
    int64_t lease_ms;           /* leader lease time, ms */
    int64_t max_backlog;        /* 429 while the leader's unread entries exceed it (0 = off) */
    int64_t delta_retention_ms; /* leader: delta stream kept this many ms (0 = never trimmed) */
} hr_config;

/* The commands that read a config; an option applies to some of them. */
typedef enum {
    HR_CMD_SERVE = 1,  /* hogrec serve */
    HR_CMD_REPLAY = 2, /* hogrec replay */
} hr_command;

/* "serve", "replay"; a static string. */
const char *hr_command_name(hr_command cmd);

/* Fills every field with its default. */
void hr_config_defaults(hr_config *c);

/* Frees what the config owns (the schedule JSON). */
void hr_config_free(hr_config *c);

/* Sets one option by name (underscored) from text. HR_EINVAL with err naming
 * the option if unknown, unparsable or out of bounds. */
hr_status hr_config_set(hr_config *c, const char *name, const char *value,
                        hr_error *err);

/* Applies a JSON config file. Unknown keys are errors. */
hr_status hr_config_load_file(hr_config *c, const char *path, hr_error *err);

/* Same as hr_config_load_file on the len bytes of text (borrowed, need not
 * be NUL-terminated); origin names the text in error messages. */
hr_status hr_config_load_text(hr_config *c, const char *text, size_t len, const char *origin,
                              hr_error *err);

/* Applies HOGREC_<NAME> environment variables. */
hr_status hr_config_load_env(hr_config *c, hr_error *err);

/* Builds a config for a command: defaults, then --config FILE (or
 * config_default if it exists and no --config is given), then environment,
 * then flags. Flags are --name value or --name=value (dashes or underscores);
 * a flag named in extra[] (command-specific, e.g. replay's --passes) has its
 * value stored there instead (checked against its choices or bounds, if
 * any, by the same code as the table's options). Arguments that are not options are returned in
 * positional (borrowed from argv), at most max_positional. --help (or -h)
 * sets *help and returns at once (the caller prints the help). A flag of an
 * option that does not apply to cmd is an error (HR_EINVAL, err naming the
 * option); in the file or the environment such an option is applied, unused
 * (one config file serves every command). */
typedef struct {
    const char *name;  /* flag without the dashes, e.g. "passes" */
    const char *help;  /* one line for --help */
    const char *value; /* out: the value given, or NULL (borrowed from argv) */
    bool is_switch;    /* takes no value: value is "" when the flag is given */
    const char *const *choices; /* NULL-terminated names the value must be one of (an
                                   error lists them), or NULL for any text; borrowed */
    int choice;        /* out: the index in choices of the value given, -1 if none */
    double min, max;   /* min < max: the value is a number in [min, max], as the
                          table's numbers are (an error names the bounds) */
    bool is_integer;   /* with min < max: the number is an integer */
    double number;     /* out: the number given (with min < max) */
} hr_extra_flag;

hr_status hr_config_from_command_args(hr_config *c, hr_command cmd, int argc, char **argv,
                                      const char *config_default, hr_extra_flag *extra,
                                      int nextra, const char **positional, int max_positional,
                                      int *npositional, bool *help, hr_error *err);

/* hr_config_from_command_args for HR_CMD_SERVE. */
hr_status hr_config_from_args(hr_config *c, int argc, char **argv,
                              const char *config_default,
                              hr_extra_flag *extra, int nextra,
                              const char **positional, int max_positional,
                              int *npositional, bool *help, hr_error *err);

/* Prints the options that apply to cmd, each with its default and help
 * text, then the extra command flags (may be NULL). */
void hr_config_print_command_help(FILE *out, hr_command cmd, const hr_extra_flag *extra,
                                  int nextra);

/* hr_config_print_command_help for HR_CMD_SERVE. */
void hr_config_print_help(FILE *out, const hr_extra_flag *extra, int nextra);

/* Returns a new JSON object of the effective config (admin token hidden). */
json_t *hr_config_to_json(const hr_config *c);

#endif

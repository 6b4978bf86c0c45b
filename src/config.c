/*
 * config.c - the one table of options, and everything that reads it: the
 * JSON config file, environment variables, command-line flags and --help.
 *
 * Called once at start, from the main thread. To add an option: add a field
 * to hr_config (config.h) and a row to options[] below; nothing else. A row
 * says which commands the option applies to: their --help lists it and their
 * flags accept it. The config file and the environment may set any option
 * for any command (one file serves both); a command ignores the others.
 *
 * A choice option (loss, state, ...) is an enum field: its text is parsed
 * here, once, against the names of its values, and a name that is none of
 * them is an error listing them, whether it came from the file, the
 * environment or a flag. The config dump and --help print the names. A
 * command's own flags (hr_extra_flag) may have choices too, checked the
 * same way.
 */
#include "hogrec/config.h"

#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

typedef enum { OPT_INT, OPT_DOUBLE, OPT_STRING, OPT_ENUM, OPT_JSON } opt_type;

typedef struct {
    const char *name;    /* JSON key; flag is --name with '_' -> '-' */
    opt_type type;
    size_t offset;       /* into hr_config */
    size_t size;         /* OPT_STRING: buffer size; OPT_ENUM: sizeof the enum field */
    double min, max;     /* bounds for numbers */
    const char *def;     /* default, as text */
    const char *(*choice)(int value); /* OPT_ENUM: name of value, value in [0, nchoices) */
    int nchoices;        /* OPT_ENUM: how many values */
    bool runtime;        /* can change while running (through the admin API) */
    unsigned commands;   /* HR_CMD_* bits: the commands it applies to (their flags, --help) */
    const char *help;
} opt;

#define OFF(f) offsetof(hr_config, f)
#define SZ(f) sizeof(((hr_config *)0)->f)
#define I(n, lo, hi, d, rt, cmd, h) {#n, OPT_INT, OFF(n), 0, lo, hi, d, NULL, 0, rt, cmd, h}
#define D(n, lo, hi, d, rt, cmd, h) {#n, OPT_DOUBLE, OFF(n), 0, lo, hi, d, NULL, 0, rt, cmd, h}
#define S(n, d, rt, cmd, h) {#n, OPT_STRING, OFF(n), SZ(n), 0, 0, d, NULL, 0, rt, cmd, h}
/* An enum option: names(v) names value v of count values. */
#define E(n, names, count, d, rt, cmd, h) \
    {#n, OPT_ENUM, OFF(n), SZ(n), 0, 0, d, names, count, rt, cmd, h}
/* An enum option's value is stored as an int (set_opt). */
_Static_assert(sizeof(hr_loss) == sizeof(int) && sizeof(hr_config_state) == sizeof(int) &&
                   sizeof(hr_config_neg) == sizeof(int) &&
                   sizeof(hr_config_durability) == sizeof(int) && sizeof(hr_log_level) == sizeof(int) &&
                   sizeof(hr_config_topk) == sizeof(int) &&
                   sizeof(hr_config_attr_norm) == sizeof(int) && sizeof(hr_storage) == sizeof(int),
               "enum options are stored as int");

static const char *const state_names[HR_CONFIG_STATE_COUNT] = {
    [HR_CONFIG_STATE_AUTO] = "auto", [HR_CONFIG_STATE_SGD] = "sgd",
    [HR_CONFIG_STATE_ADAGRAD] = "adagrad", [HR_CONFIG_STATE_FTRL] = "ftrl",
    [HR_CONFIG_STATE_ADAM] = "adam"};
static const char *const neg_names[HR_CONFIG_NEG_COUNT] = {
    [HR_CONFIG_NEG_AUTO] = "auto", [HR_CONFIG_NEG_ON] = "on", [HR_CONFIG_NEG_OFF] = "off"};
static const char *const durability_names[HR_CONFIG_DURABILITY_COUNT] = {
    [HR_CONFIG_DURABILITY_SYNC] = "sync", [HR_CONFIG_DURABILITY_INTERVAL] = "interval"};

const char *hr_config_state_to_string(hr_config_state v)
{
    return (unsigned)v < HR_CONFIG_STATE_COUNT ? state_names[v] : "unknown";
}

const char *hr_config_neg_to_string(hr_config_neg v)
{
    return (unsigned)v < HR_CONFIG_NEG_COUNT ? neg_names[v] : "unknown";
}

static const char *const topk_names[HR_CONFIG_TOPK_COUNT] = {[HR_CONFIG_TOPK_F32] = "f32",
                                                               [HR_CONFIG_TOPK_F16] = "f16"};

const char *hr_config_topk_to_string(hr_config_topk v)
{
    return (unsigned)v < HR_CONFIG_TOPK_COUNT ? topk_names[v] : "unknown";
}

static const char *const kernel_names[HR_CONFIG_KERNEL_COUNT] = {
    [HR_CONFIG_KERNEL_AUTO] = "auto",     [HR_CONFIG_KERNEL_GENERIC] = "generic",
    [HR_CONFIG_KERNEL_AVX2] = "avx2",     [HR_CONFIG_KERNEL_AVX512] = "avx512",
    [HR_CONFIG_KERNEL_EXACT] = "exact"};

const char *hr_config_kernel_to_string(hr_config_kernel v)
{
    return (unsigned)v < HR_CONFIG_KERNEL_COUNT ? kernel_names[v] : "unknown";
}

static const char *const attr_norm_names[HR_CONFIG_ATTR_NORM_COUNT_] = {
    [HR_CONFIG_ATTR_NORM_NONE] = "none", [HR_CONFIG_ATTR_NORM_SQRT] = "sqrt",
    [HR_CONFIG_ATTR_NORM_COUNT] = "count"};

const char *hr_config_attr_norm_to_string(hr_config_attr_norm v)
{
    return (unsigned)v < HR_CONFIG_ATTR_NORM_COUNT_ ? attr_norm_names[v] : "unknown";
}

const char *hr_config_durability_to_string(hr_config_durability v)
{
    return (unsigned)v < HR_CONFIG_DURABILITY_COUNT ? durability_names[v] : "unknown";
}

/* The table's name functions (int -> name). */
static const char *loss_name(int v) { return hr_loss_to_string((hr_loss)v); }
static const char *state_name(int v) { return hr_config_state_to_string((hr_config_state)v); }
static const char *neg_name(int v) { return hr_config_neg_to_string((hr_config_neg)v); }
static const char *durability_name(int v)
{
    return hr_config_durability_to_string((hr_config_durability)v);
}
static const char *topk_name(int v) { return hr_config_topk_to_string((hr_config_topk)v); }
static const char *attr_norm_name(int v)
{
    return hr_config_attr_norm_to_string((hr_config_attr_norm)v);
}
static const char *storage_name(int v) { return hr_storage_to_string((hr_storage)v); }
static const char *kernel_name(int v) { return hr_config_kernel_to_string((hr_config_kernel)v); }
static const char *log_level_name(int v) { return hr_log_level_to_string((hr_log_level)v); }

/* the commands column */
#define SERVE HR_CMD_SERVE
#define ALL (HR_CMD_SERVE | HR_CMD_REPLAY)

static const opt options[] = {
    /* model */
    I(k, 1, 1024, "16", false, ALL, "factor dimension"),
    E(loss, loss_name, HR_LOSS_COUNT, "logistic", false, ALL, "logistic (clicks) or squared (ratings)"),
    E(state, state_name, HR_CONFIG_STATE_COUNT, "auto", false, ALL,
      "optimizer state kept per row (auto: what the schedule's optimizer needs)"),
    D(init_scale, 0, 10, "0.05", false, ALL, "standard deviation of initial factors"),
    I(seed, 0, 9.2e18, "42", false, ALL, "seed of initialization, sampling and shuffles"),
    D(l2_global, 0, 1e6, "0", false, ALL, "L2 on the global bias"),
    D(l2_bias, 0, 1e6, "0.0001", false, ALL, "L2 on per-id linear weights"),
    D(l2_user, 0, 1e6, "0.0005", false, ALL, "L2 on user factors"),
    D(l2_item, 0, 1e6, "0.0005", false, ALL, "L2 on item factors"),
    D(l2_context, 0, 1e6, "0.0005", false, ALL, "L2 on context factors"),
    I(max_users, 16, 2147483647, "16777216", false, ALL, "most user ids"),
    I(max_items, 16, 2147483647, "4194304", false, ALL, "most item ids"),
    I(context_bits, 1, 26, "16", false, ALL, "context features hash into 2^bits rows"),
    I(chunk_rows, 64, 16777216, "65536", false, ALL, "rows per storage chunk (power of two)"),
    I(min_count, 0, 1000000, "0", false, ALL, "events before an id gets its own embedding"),
    E(topk_precision, topk_name, HR_CONFIG_TOPK_COUNT, "f32", false, ALL,
      "item copy top-K scans: f32, or f16 (a half copy scanned for candidates, re-scored in "
      "f32: the same results; half the bytes read, more memory)"),
    /* 0.1: at 1 (an event's own features) MovieLens lost 1 to 2 points of
     * test AUC with u.user and u.item (README, "Quality out of the box") */
    D(attr_value_user, 0, 10, "0.1", false, ALL,
      "value of a user's catalog attribute in the model (a number attribute: times it; 0 = unused)"),
    D(attr_value_item, 0, 10, "0.1", false, ALL,
      "value of an item's catalog attribute in the model (a number attribute: times it; 0 = unused)"),
    E(attr_norm, attr_norm_name, HR_CONFIG_ATTR_NORM_COUNT_, "none", false, ALL,
      "scales a record's attribute values by its number n of attributes: none, sqrt (1/sqrt(n)) "
      "or count (1/n)"),
    E(storage, storage_name, HR_STORAGE_COUNT, "f32", false, ALL,
      "how rows store their factors: f32, or bf16 (half the bytes of the weights; updates "
      "stochastically rounded; optimizer state stays f32)"),
    E(update_kernel, kernel_name, HR_CONFIG_KERNEL_COUNT, "auto", false, ALL,
      "variant of the update kernel, for the whole process: auto (the widest this CPU runs), "
      "generic, avx2, avx512, or exact (the general kernel's arithmetic on any CPU, slower)"),
    D(expire_seconds, 0, 1e9, "0", false, ALL, "forget ids unseen this many seconds (0 = never)"),
    D(grad_clip, 0, 1e9, "100", false, ALL, "largest gradient norm per event (0 = no clip)"),
    D(adagrad_init, 1e-12, 1e6, "0.1", false, ALL, "initial AdaGrad accumulator"),
    D(rating_offset, -1e9, 1e9, "0", false, ALL, "squared loss: initial global bias"),
    {"schedule", OPT_JSON, OFF(schedule), 0, 0, 0, NULL, NULL, 0, true, ALL,
     "learning-rate schedule and optimizer, a JSON object (see README); live: PUT /v1/admin/schedule"},
    /* trainers and queue */
    I(threads, 1, 256, "2", false, ALL, "trainer threads"),
    I(batch, 1, 65536, "256", false, ALL, "events a trainer takes from the queue at once"),
    I(queue_capacity, 16, 1 << 28, "262144", false, ALL, "events the queue holds"),
    E(negative_sampling, neg_name, HR_CONFIG_NEG_COUNT, "auto", false, ALL,
      "sample negatives for positive-only streams (auto: until an explicit 0 label arrives)"),
    I(negatives, 0, 100, "1", false, ALL, "sampled negatives per positive"),
    D(negative_alpha, 0, 2, "0", false, ALL, "negatives by popularity^alpha (0 = uniform)"),
    I(progress_window, 100, 10000000, "10000", false, ALL, "events in the progressive-validation window"),
    /* divergence guard (README: "Undoing a schedule change") */
    I(guard, 0, 1, "1", false, SERVE,
      "1: mark a restore point at each schedule change and revert it when the loss diverges"),
    D(guard_margin, 0, 100, "0.1", false, SERVE,
      "guard: a window is over when its loss > the loss before the change x (1 + margin)"),
    I(guard_windows, 1, 1000, "3", false, SERVE,
      "guard: consecutive windows (progress_window events each) over the margin that revert"),
    I(guard_watch, 1, 100000, "10", false, SERVE,
      "guard: windows watched after a change; after them the change is kept, the restore point freed"),
    D(guard_nonfinite, 0, 1, "0.01", false, SERVE,
      "guard: a window whose skipped non-finite steps exceed this fraction is over"),
    I(guard_memory_mb, 0, 1048576, "1024", false, SERVE,
      "guard: most memory of a restore point (rows copied + events since), MB; 0 = no restore points"),
    /* counterfactual trials (README: "Trying a schedule before applying it") */
    I(trial_retain_events, 0, 9.2e18, "100000", false, SERVE,
      "trials: the event log keeps the events of the last N seqs (from a checkpoint at or before them)"),
    D(trial_retain_seconds, 0, 1e9, "0", false, SERVE,
      "trials: the event log also keeps the events of the last S seconds (0 = off)"),
    I(trial_memory_mb, 0, 1048576, "512", false, SERVE,
      "trials: most memory of a trial's private copy (two models, the window's events), MB"),
    D(trial_cpu_share, 0.01, 1, "0.25", false, SERVE,
      "trials: share of one core the trial thread may use (it sleeps the rest)"),
    I(trial_curve_events, 10, 100000000, "1000", false, SERVE, "trials: events per point of a curve"),
    /* server */
    S(bind, "127.0.0.1", false, SERVE, "address to listen on"),
    I(port, 0, 65535, "8080", false, SERVE, "TCP port (0 = any free port)"),
    I(http_threads, 1, 256, "2", false, SERVE, "HTTP worker threads"),
    S(admin_token, "", false, SERVE, "bearer token of the admin routes (empty = admin disabled)"),
    I(max_body_bytes, 1024, 1 << 30, "8388608", false, SERVE, "largest request body"),
    I(max_connections, 1, 100000, "1024", false, SERVE, "most open connections"),
    I(per_ip_connections, 0, 100000, "256", false, SERVE, "most connections per client IP (0 = no limit)"),
    I(connection_timeout, 1, 86400, "30", false, SERVE, "idle connection timeout, seconds"),
    I(memory_limit, 8192, 1 << 30, "32768", false, SERVE,
      "memory per connection for headers, bytes (libmicrohttpd zeroes it between requests)"),
    I(max_batch_events, 1, 1000000, "10000", false, SERVE, "most events in one POST /v1/events"),
    D(dedup_window, 0, 1e7, "600", false, SERVE, "seconds an event id is remembered for de-duplication"),
    /* 2^20: a sustained 1,700 events/s with ids over the default window. */
    I(dedup_capacity, 1, 1 << 30, "1048576", false, SERVE,
      "event ids remembered within dedup_window (32 bytes each, allocated at start); "
      "past it the oldest are forgotten and counted (dedup.evicted)"),
    I(history_per_user, 0, 10000, "64", false, SERVE, "recent items remembered per user (exclude_seen)"),
    I(max_wait_ms, 0, 60000, "1000", false, SERVE,
      "largest wait_ms of a read-your-writes query (min_seq on predict, recommend); "
      "the wait holds an HTTP thread"),
    D(shutdown_timeout, 0.1, 86400, "30", false, SERVE,
      "seconds requests in flight get after SIGTERM, and the drain and final checkpoint then"),
    /* A day: a burst fades within days (1/128 after a week) while the daily
     * cycle of traffic does not swing the ranking. */
    D(popular_half_life, 0, 1e9, "86400", false, SERVE,
      "seconds for a positive event's weight in the popular fallback to halve (0 = plain count)"),
    /* persistence */
    S(db, "hogrec.db", false, ALL,
      "SQLite file (empty = no persistence); replay only takes its lock, so it never runs beside the server"),
    D(checkpoint_interval, 0, 1e7, "60", false, SERVE, "seconds between checkpoints (0 = off)"),
    I(checkpoint_events, 0, 1e12, "1000000", false, SERVE, "events between checkpoints (0 = off)"),
    I(keep_checkpoints, 1, 1000, "3", false, SERVE, "complete checkpoints kept"),
    I(full_every, 1, 100000, "10", false, SERVE, "a full checkpoint after this many incremental ones"),
    E(durability, durability_name, HR_CONFIG_DURABILITY_COUNT, "sync", false, SERVE,
      "sync: events synced before the 202; interval: synced every sync_interval_ms"),
    I(sync_interval_ms, 1, 60000, "100", false, SERVE, "event-log sync period for durability interval"),
    E(log_level, log_level_name, HR_LOG_LEVEL_COUNT, "info", false, SERVE,
      "least severe log level printed"),
    /* cluster mode (README: "Running more than one node") */
    S(redis, "", false, SERVE,
      "redis://HOST:PORT[/DB] of the cluster's Redis (empty = standalone; the password only "
      "from HOGREC_REDIS_PASSWORD)"),
    S(cluster, "hogrec", false, SERVE, "cluster name: 1-64 of A-Z a-z 0-9 . _ -"),
    S(node_id, "", false, SERVE, "this node's id in the cluster (empty = HOSTNAME-PORT)"),
    I(redis_unsafe, 0, 1, "0", false, SERVE,
      "1: start even when Redis' settings can lose acknowledged events (appendonly no, eviction)"),
    I(publish_ms, 1, 60000, "10", false, SERVE, "leader: publishes a row delta every this many ms"),
    I(lease_ms, 300, 600000, "3000", false, SERVE, "leader lease time, ms (renewed every third)"),
    I(max_backlog, 0, 1e12, "0", false, SERVE,
      "429 on POST /v1/events while the leader has more unread stream entries (0 = no bound)"),
    I(delta_retention_ms, 0, 1e12, "0", false, SERVE,
      "leader: keeps the row deltas of the last this many ms (and the events they do not cover), "
      "trims older ones; 0 = never trims (README: whole-cluster restart)"),
};

/* Most values of a choice (an option's or a command flag's). */
#define MAX_CHOICES 16

/* The names of an enum option's values, NULL-terminated, into names. */
static const char *const *opt_choices(const opt *o, const char *names[MAX_CHOICES + 1])
{
    assert(o->type == OPT_ENUM && o->nchoices > 0 && o->nchoices <= MAX_CHOICES);
    for (int i = 0; i < o->nchoices; i++)
        names[i] = o->choice(i);
    names[o->nchoices] = NULL;
    return names;
}

/* "a|b|c" of a NULL-terminated list, into buf. */
static const char *join_choices(const char *const *names, char *buf, size_t size)
{
    size_t n = 0;
    buf[0] = 0;
    for (int i = 0; names[i] && n < size; i++)
        n += (size_t)snprintf(buf + n, size - n, "%s%s", i ? "|" : "", names[i]);
    return buf;
}

/* The index of value in a NULL-terminated list of names; else HR_EINVAL
 * with err naming the option (name) and listing the names: the one error of
 * every choice, from a file, the environment or a flag. */
static hr_status parse_choice(const char *name, const char *const *names, const char *value,
                              int *index, hr_error *err)
{
    for (int i = 0; names[i]; i++)
        if (strcmp(names[i], value) == 0) {
            *index = i;
            return HR_OK;
        }
    char list[160];
    return hr_error_set(err, HR_EINVAL, name, "%s must be one of %s, not '%.40s'", name,
                        join_choices(names, list, sizeof list), value);
}

static bool fopen_ok(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return false;
    fclose(f);
    return true;
}

static const opt *find_opt(const char *name, size_t len)
{
    for (size_t i = 0; i < HR_ARRAY_LEN(options); i++) {
        const char *o = options[i].name;
        if (strlen(o) != len)
            continue;
        size_t j = 0;
        for (; j < len; j++) {
            char c = name[j] == '-' ? '_' : name[j];
            if (c != o[j])
                break;
        }
        if (j == len)
            return &options[i];
    }
    return NULL;
}

static hr_status set_json_opt(hr_config *c, const opt *o, json_t *v, hr_error *err)
{
    if (!json_is_object(v)) {
        json_decref(v);
        return hr_error_set(err, HR_EINVAL, o->name, "%s must be a JSON object", o->name);
    }
    json_t **slot = (json_t **)((char *)c + o->offset);
    json_decref(*slot);
    *slot = v; /* taken */
    return HR_OK;
}

/* The number in value, an integer if integer, in [min, max]; else HR_EINVAL
 * with err naming the option (name) and the bound. */
static hr_status parse_number(const char *name, const char *value, bool integer, double min,
                              double max, double *out, hr_error *err)
{
    errno = 0;
    char *end = NULL;
    double d = strtod(value, &end);
    if (errno || end == value || *end || !isfinite(d))
        return hr_error_set(err, HR_EINVAL, name, "%s: '%.40s' is not a number", name, value);
    if (integer && d != floor(d))
        return hr_error_set(err, HR_EINVAL, name, "%s must be an integer", name);
    if (d < min || d > max)
        return hr_error_set(err, HR_EINVAL, name, "%s must be in [%g, %g]", name, min, max);
    *out = d;
    return HR_OK;
}

static hr_status set_opt(hr_config *c, const opt *o, const char *value, hr_error *err)
{
    char *base = (char *)c + o->offset;
    switch (o->type) {
    case OPT_INT:
    case OPT_DOUBLE: {
        double d = 0;
        hr_status st = parse_number(o->name, value, o->type == OPT_INT, o->min, o->max, &d, err);
        if (st != HR_OK)
            return st;
        if (o->type == OPT_INT)
            *(int64_t *)base = (int64_t)d;
        else
            *(double *)base = d;
        return HR_OK;
    }
    case OPT_STRING:
        if (strlen(value) >= o->size)
            return hr_error_set(err, HR_EINVAL, o->name, "%s is too long", o->name);
        memcpy(base, value, strlen(value) + 1);
        return HR_OK;
    case OPT_ENUM: {
        const char *names[MAX_CHOICES + 1];
        int v = 0;
        hr_status st = parse_choice(o->name, opt_choices(o, names), value, &v, err);
        if (st != HR_OK)
            return st;
        assert(o->size == sizeof v);
        memcpy(base, &v, sizeof v);
        return HR_OK;
    }
    case OPT_JSON: {
        json_error_t jerr;
        json_t *v = json_loads(value, 0, &jerr);
        if (!v)
            return hr_error_set(err, HR_EINVAL, o->name, "%s: %s", o->name, jerr.text);
        return set_json_opt(c, o, v, err);
    }
    }
    return hr_error_set(err, HR_EINVAL, o->name, "bad option type");
}

void hr_config_defaults(hr_config *c)
{
    memset(c, 0, sizeof *c);
    for (size_t i = 0; i < HR_ARRAY_LEN(options); i++) {
        if (options[i].def) {
            hr_status st = set_opt(c, &options[i], options[i].def, NULL);
            (void)st; /* defaults are valid by construction; test_config checks */
        }
    }
}

void hr_config_free(hr_config *c)
{
    if (!c)
        return;
    json_decref(c->schedule);
    c->schedule = NULL;
}

hr_status hr_config_set(hr_config *c, const char *name, const char *value, hr_error *err)
{
    const opt *o = find_opt(name, strlen(name));
    if (!o)
        return hr_error_set(err, HR_EINVAL, name, "unknown option '%s'", name);
    return set_opt(c, o, value, err);
}

/* Applies the parsed config object root (borrowed); origin names it in
 * errors. */
static hr_status apply_json(hr_config *c, json_t *root, const char *origin, hr_error *err)
{
    if (!json_is_object(root))
        return hr_error_set(err, HR_EINVAL, "config", "%s: must be a JSON object", origin);
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (key[0] == '_') /* "_comment" and friends */
            continue;
        const opt *o = find_opt(key, strlen(key));
        hr_status st;
        if (!o)
            return hr_error_set(err, HR_EINVAL, key, "%s: unknown option '%s'", origin, key);
        if (o->type == OPT_JSON) {
            st = set_json_opt(c, o, json_incref(val), err);
        } else if (json_is_string(val)) {
            st = set_opt(c, o, json_string_value(val), err);
        } else if (json_is_number(val) && (o->type == OPT_INT || o->type == OPT_DOUBLE)) {
            char buf[64];
            snprintf(buf, sizeof buf, "%.17g", json_number_value(val));
            st = set_opt(c, o, buf, err);
        } else {
            st = hr_error_set(err, HR_EINVAL, key, "%s: option '%s' has the wrong JSON type",
                              origin, key);
        }
        if (st != HR_OK)
            return st;
    }
    return HR_OK;
}

hr_status hr_config_load_file(hr_config *c, const char *path, hr_error *err)
{
    json_error_t jerr;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return hr_error_set(err, HR_EINVAL, "config", "%s:%d:%d: %s", path, jerr.line,
                            jerr.column, jerr.text);
    hr_status st = apply_json(c, root, path, err);
    json_decref(root);
    return st;
}

hr_status hr_config_load_text(hr_config *c, const char *text, size_t len, const char *origin,
                              hr_error *err)
{
    json_error_t jerr;
    json_t *root = json_loadb(text ? text : "", text ? len : 0, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return hr_error_set(err, HR_EINVAL, "config", "%s:%d:%d: %s", origin, jerr.line,
                            jerr.column, jerr.text);
    hr_status st = apply_json(c, root, origin, err);
    json_decref(root);
    return st;
}

hr_status hr_config_load_env(hr_config *c, hr_error *err)
{
    for (size_t i = 0; i < HR_ARRAY_LEN(options); i++) {
        char var[96] = "HOGREC_";
        size_t n = strlen(var);
        for (const char *p = options[i].name; *p && n + 1 < sizeof var; p++)
            var[n++] = (char)toupper((unsigned char)*p);
        var[n] = 0;
        const char *v = getenv(var);
        if (v) {
            hr_status st = set_opt(c, &options[i], v, err);
            if (st != HR_OK)
                return st;
        }
    }
    return HR_OK;
}

/* Splits "--name=value" / "--name value"; returns the name length. */
static size_t flag_name(const char *arg, const char **value)
{
    const char *name = arg + 2;
    const char *eq = strchr(name, '=');
    *value = eq ? eq + 1 : NULL;
    return eq ? (size_t)(eq - name) : strlen(name);
}

static bool same_flag(const char *a, size_t alen, const char *b)
{
    if (strlen(b) != alen)
        return false;
    for (size_t i = 0; i < alen; i++) {
        char x = a[i] == '-' ? '_' : a[i], y = b[i] == '-' ? '_' : b[i];
        if (x != y)
            return false;
    }
    return true;
}

hr_status hr_config_from_args(hr_config *c, int argc, char **argv, const char *config_default,
                              hr_extra_flag *extra, int nextra, const char **positional,
                              int max_positional, int *npositional, bool *help, hr_error *err)
{
    return hr_config_from_command_args(c, HR_CMD_SERVE, argc, argv, config_default, extra, nextra,
                                       positional, max_positional, npositional, help, err);
}

hr_status hr_config_from_command_args(hr_config *c, hr_command cmd, int argc, char **argv,
                                      const char *config_default, hr_extra_flag *extra, int nextra,
                                      const char **positional, int max_positional,
                                      int *npositional, bool *help, hr_error *err)
{
    hr_config_defaults(c);
    *help = false;
    *npositional = 0;
    for (int j = 0; j < nextra; j++)
        extra[j].choice = -1;
    /* First pass: --config and --help, so the file applies before flags. */
    const char *file = NULL;
    for (int i = 0; i < argc; i++) {
        const char *v;
        if (strncmp(argv[i], "--", 2) != 0)
            continue;
        size_t n = flag_name(argv[i], &v);
        if (same_flag(argv[i] + 2, n, "help") || strcmp(argv[i], "-h") == 0) {
            *help = true;
            return HR_OK;
        }
        if (same_flag(argv[i] + 2, n, "config")) {
            if (!v && i + 1 >= argc)
                return hr_error_set(err, HR_EINVAL, "config", "--config needs a file");
            file = v ? v : argv[i + 1];
        }
    }
    hr_status st;
    if (file || (config_default && fopen_ok(config_default))) {
        st = hr_config_load_file(c, file ? file : config_default, err);
        if (st != HR_OK)
            return st;
    }
    if ((st = hr_config_load_env(c, err)) != HR_OK)
        return st;
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i];
        if (strncmp(arg, "--", 2) != 0 || arg[2] == 0) {
            if (*npositional >= max_positional)
                return hr_error_set(err, HR_EINVAL, arg, "unexpected argument '%s'", arg);
            positional[(*npositional)++] = arg;
            continue;
        }
        const char *v;
        size_t n = flag_name(arg, &v);
        hr_extra_flag *x = NULL;
        for (int j = 0; j < nextra; j++)
            if (same_flag(arg + 2, n, extra[j].name))
                x = &extra[j];
        if (x && x->is_switch) {
            if (v)
                return hr_error_set(err, HR_EINVAL, x->name, "--%s takes no value", x->name);
            x->value = "";
            continue;
        }
        if (!v) {
            if (i + 1 >= argc)
                return hr_error_set(err, HR_EINVAL, arg + 2, "%s needs a value", arg);
            v = argv[++i];
        }
        if (same_flag(arg + 2, n, "config"))
            continue;
        if (x) {
            if (x->choices && (st = parse_choice(x->name, x->choices, v, &x->choice, err)) != HR_OK)
                return st;
            if (x->min < x->max &&
                (st = parse_number(x->name, v, x->is_integer, x->min, x->max, &x->number, err)) !=
                    HR_OK)
                return st;
            x->value = v;
            continue;
        }
        const opt *o = find_opt(arg + 2, n);
        if (!o)
            return hr_error_set(err, HR_EINVAL, arg + 2, "unknown option '%.*s' (see --help)",
                                (int)n, arg + 2);
        if (!(o->commands & cmd))
            return hr_error_set(err, HR_EINVAL, o->name,
                                "option '%.*s' does not apply to %s (see --help)", (int)n,
                                arg + 2, hr_command_name(cmd));
        if ((st = set_opt(c, o, v, err)) != HR_OK)
            return st;
    }
    return HR_OK;
}

const char *hr_command_name(hr_command cmd)
{
    switch (cmd) {
    case HR_CMD_SERVE: return "serve";
    case HR_CMD_REPLAY: return "replay";
    }
    return "?";
}

void hr_config_print_help(FILE *out, const hr_extra_flag *extra, int nextra)
{
    hr_config_print_command_help(out, HR_CMD_SERVE, extra, nextra);
}

void hr_config_print_command_help(FILE *out, hr_command cmd, const hr_extra_flag *extra,
                                  int nextra)
{
    fprintf(out, "Options (also as JSON keys in the --config file, and as HOGREC_<NAME>\n"
                 "environment variables; flags override the environment, which overrides\n"
                 "the file):\n");
    fprintf(out, "  %-26s %s\n", "--config FILE", "JSON config file");
    for (size_t i = 0; i < HR_ARRAY_LEN(options); i++) {
        const opt *o = &options[i];
        if (!(o->commands & cmd))
            continue;
        char flag[64];
        snprintf(flag, sizeof flag, "--%s", o->name);
        for (char *p = flag + 2; *p; p++)
            if (*p == '_')
                *p = '-';
        char list[160] = "";
        if (o->type == OPT_ENUM) {
            const char *names[MAX_CHOICES + 1];
            join_choices(opt_choices(o, names), list, sizeof list);
        }
        fprintf(out, "  %-26s %s%s (%s%sdefault: %s)\n", flag, o->help,
                o->runtime ? " [runtime]" : "", list, *list ? "; " : "",
                o->def ? (*o->def ? o->def : "\"\"") : "built-in");
    }
    for (int j = 0; j < nextra; j++) {
        char flag[64], list[160];
        snprintf(flag, sizeof flag, "--%s", extra[j].name);
        fprintf(out, "  %-26s %s", flag, extra[j].help);
        if (extra[j].choices)
            fprintf(out, " (%s)", join_choices(extra[j].choices, list, sizeof list));
        fputc('\n', out);
    }
}

json_t *hr_config_to_json(const hr_config *c)
{
    json_t *o = json_object();
    for (size_t i = 0; i < HR_ARRAY_LEN(options); i++) {
        const opt *op = &options[i];
        const char *base = (const char *)c + op->offset;
        json_t *v = NULL;
        switch (op->type) {
        case OPT_INT: v = json_integer(*(const int64_t *)base); break;
        case OPT_DOUBLE: v = json_real(*(const double *)base); break;
        case OPT_STRING:
            v = strcmp(op->name, "admin_token") == 0
                    ? json_string(*base ? "(set)" : "")
                    : json_string(base);
            break;
        case OPT_ENUM: {
            int e;
            memcpy(&e, base, sizeof e);
            v = json_string(op->choice(e));
            break;
        }
        case OPT_JSON: {
            json_t *const *j = (json_t *const *)base;
            v = *j ? json_deep_copy(*j) : json_null();
            break;
        }
        }
        json_object_set_new(o, op->name, v);
    }
    return o;
}

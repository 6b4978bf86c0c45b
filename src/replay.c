/*
 * replay.c - `hogrec replay`: reads a file of events, orders them, pushes
 * them through app->ingest (blocking while the queue is full) for N passes,
 * shows progress on stderr, and prints one JSON summary on stdout.
 * Runs on the main thread; the trainers do the learning.
 */
#include "hogrec/replay.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "hogrec/api.h"
#include "hogrec/catalog.h"
#include "hogrec/dblock.h"
#include "hogrec/json.h"
#include "hogrec/sgd.h"

void hr_event_list_free(hr_event_list *l)
{
    free(l->ev);
    l->ev = NULL;
    l->n = 0;
}

static hr_status push_event(hr_event_list *l, size_t *cap, const hr_event *ev)
{
    if (l->n == *cap) {
        size_t nc = *cap ? *cap * 2 : 4096;
        hr_event *p = realloc(l->ev, nc * sizeof *p);
        if (!p)
            return HR_ENOMEM;
        l->ev = p;
        *cap = nc;
    }
    l->ev[l->n++] = *ev;
    return HR_OK;
}

static hr_status resolve_id(hr_model *m, hr_table_id t, const char *id, size_t len, int intern,
                            uint32_t *row)
{
    if (intern)
        return hr_model_intern(m, t, id, len, row, NULL);
    *row = hr_model_lookup(m, t, id, len);
    if (*row == HR_ID_NONE)
        *row = 0;
    return HR_OK;
}

static hr_status parse_movielens(hr_model *m, char *line, double binarize, int intern,
                                 hr_event *ev, hr_error *err, size_t lineno)
{
    char *save = NULL;
    char *user = strtok_r(line, "\t \r\n", &save);
    char *item = strtok_r(NULL, "\t \r\n", &save);
    char *rating = strtok_r(NULL, "\t \r\n", &save);
    char *ts = strtok_r(NULL, "\t \r\n", &save);
    if (!user || !item || !rating)
        return hr_error_set(err, HR_EINVAL, "line", "line %zu: want user, item, rating, ts", lineno);
    char *end;
    errno = 0;
    double r = strtod(rating, &end);
    if (errno || *end || !isfinite(r))
        return hr_error_set(err, HR_EINVAL, "rating", "line %zu: bad rating '%s'", lineno, rating);
    memset(ev, 0, sizeof *ev);
    ev->weight = 1;
    ev->ts = ts ? strtod(ts, NULL) : 0;
    if (hr_model_get_config(m)->loss == HR_LOSS_SQUARED) {
        ev->label = (float)r;
    } else if (binarize > 0) {
        ev->label = r >= binarize ? 1.0f : 0.0f;
        ev->flags |= HR_EV_EXPLICIT_LABEL;
    } else {
        ev->label = 1.0f;
    }
    size_t ul = strlen(user), il = strlen(item);
    if (ul == 0 || ul > HR_ID_MAX_LEN || il == 0 || il > HR_ID_MAX_LEN)
        return hr_error_set(err, HR_EINVAL, "line", "line %zu: id length", lineno);
    hr_status st;
    if ((st = resolve_id(m, HR_TABLE_USER, user, ul, intern, &ev->user)) != HR_OK ||
        (st = resolve_id(m, HR_TABLE_ITEM, item, il, intern, &ev->item)) != HR_OK)
        return hr_error_set(err, st, "line", "line %zu: %s", lineno, hr_status_to_string(st));
    return HR_OK;
}

static hr_status parse_ndjson(hr_model *m, const char *line, size_t len, int intern, hr_event *ev,
                              hr_error *err, size_t lineno)
{
    json_error_t jerr;
    json_t *obj = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!obj)
        return hr_error_set(err, HR_EINVAL, "line", "line %zu: %s", lineno, jerr.text);
    unsigned unknown;
    hr_status st = intern ? hr_api_event_from_json(m, obj, ev, NULL, err)
                          : hr_api_event_lookup(m, obj, ev, &unknown, err); /* test data */
    json_decref(obj);
    if (st != HR_OK && err) {
        hr_error copy = *err;
        hr_error_set(err, st, copy.field, "line %zu: %.200s", lineno, copy.message);
    }
    return st;
}

hr_status hr_replay_read(hr_model *m, const char *path, hr_replay_format fmt, double binarize,
                         int intern, bool strict, hr_replay_skips *skips, hr_event_list *out,
                         hr_error *err)
{
    memset(out, 0, sizeof *out);
    if (skips)
        memset(skips, 0, sizeof *skips);
    FILE *f = fopen(path, "r");
    if (!f)
        return hr_error_set(err, HR_EIO, "file", "%s: %s", path, strerror(errno));
    char *line = NULL;
    size_t cap = 0, lcap = 0, lineno = 0;
    ssize_t len;
    hr_status st = HR_OK;
    while ((len = getline(&line, &lcap, f)) >= 0) {
        lineno++;
        size_t l = (size_t)len;
        while (l && (line[l - 1] == '\n' || line[l - 1] == '\r'))
            line[--l] = 0;
        if (l == 0)
            continue;
        hr_event ev;
        hr_error bad = {{0}, {0}};
        st = fmt == HR_FMT_MOVIELENS ? parse_movielens(m, line, binarize, intern, &ev, &bad, lineno)
                                     : parse_ndjson(m, line, l, intern, &ev, &bad, lineno);
        if (st == HR_EINVAL && !strict && skips) {
            if (skips->lines++ == 0)
                skips->first = bad;
            st = HR_OK;
            continue;
        }
        if (st != HR_OK) {
            if (err)
                *err = bad;
            break;
        }
        if ((st = push_event(out, &cap, &ev)) != HR_OK) {
            hr_error_set(err, st, NULL, "out of memory");
            break;
        }
    }
    free(line);
    fclose(f);
    if (st != HR_OK)
        hr_event_list_free(out);
    return st;
}

static int cmp_ts(const void *a, const void *b)
{
    const hr_event *x = a, *y = b;
    if (x->ts != y->ts)
        return x->ts < y->ts ? -1 : 1;
    /* stable: seq holds the file position while sorting */
    return (x->seq > y->seq) - (x->seq < y->seq);
}

void hr_replay_order_events(hr_event_list *l, hr_replay_order order, uint64_t seed)
{
    if (order == HR_ORDER_TIME) {
        for (size_t i = 0; i < l->n; i++)
            l->ev[i].seq = i;
        qsort(l->ev, l->n, sizeof *l->ev, cmp_ts);
        for (size_t i = 0; i < l->n; i++)
            l->ev[i].seq = 0;
    } else if (order == HR_ORDER_SHUFFLE) {
        hr_rng rng;
        hr_rng_seed(&rng, seed);
        for (size_t i = l->n; i > 1; i--) {
            size_t j = (size_t)hr_rng_below(&rng, i);
            hr_event t = l->ev[i - 1];
            l->ev[i - 1] = l->ev[j];
            l->ev[j] = t;
        }
    }
}

void hr_replay_evaluate(const hr_model *m, const hr_event_list *test, hr_eval *out)
{
    memset(out, 0, sizeof *out);
    out->n = test->n;
    float *score = malloc((test->n ? test->n : 1) * sizeof *score);
    float *label = malloc((test->n ? test->n : 1) * sizeof *label);
    float *cscore = malloc((test->n ? test->n : 1) * sizeof *cscore);
    float *clabel = malloc((test->n ? test->n : 1) * sizeof *clabel);
    const hr_row_layout *L = hr_model_layout(m);
    double ll = 0, se = 0;
    for (size_t i = 0; i < test->n; i++) {
        double p = hr_model_predict(m, &test->ev[i]);
        score[i] = (float)p;
        label[i] = test->ev[i].label;
        ll += hr_logloss(p, label[i]);
        se += (p - label[i]) * (p - label[i]);
        /* cold: a user no training event reached (unknown, or only in the catalog) */
        uint32_t u = test->ev[i].user;
        if (cscore && clabel &&
            (u == 0 || hr_sgd_row_count(L, hr_model_row(m, HR_TABLE_USER, u)) == 0)) {
            cscore[out->n_cold] = score[i];
            clabel[out->n_cold++] = label[i];
        }
    }
    bool squared = hr_model_get_config(m)->loss == HR_LOSS_SQUARED;
    out->auc_cold = squared || !cscore || !clabel || !out->n_cold
                        ? NAN
                        : hr_auc(cscore, clabel, out->n_cold);
    free(cscore);
    free(clabel);
    out->auc = squared || !score || !label ? NAN : hr_auc(score, label, test->n);
    out->logloss = squared || !test->n ? NAN : ll / (double)test->n;
    out->rmse = test->n ? sqrt(se / (double)test->n) : NAN;
    free(score);
    free(label);
}

/* ---- the catalog of a replay (--users, --items, --catalog) ---- */

/* Writes a batch of record objects of one kind (each validated; a bad one
 * is counted in *bad). Takes objs' references. */
static hr_status put_records(hr_catalog *c, hr_catalog_kind kind, json_t **objs, size_t n,
                             size_t *bad, hr_error *err)
{
    hr_catalog_record *recs = calloc(n ? n : 1, sizeof *recs);
    if (!recs)
        return hr_error_set(err, HR_ENOMEM, NULL, "out of memory");
    size_t ok = 0;
    for (size_t i = 0; i < n; i++) {
        hr_error e;
        if (hr_catalog_parse(objs[i], NULL, 0, &recs[ok], &e) == HR_OK)
            ok++;
        else
            (*bad)++;
        json_decref(objs[i]);
    }
    hr_status st = hr_catalog_put(c, kind, recs, ok, NULL, err);
    free(recs);
    return st;
}

/* Splits a MovieLens '|' line into at most max fields (in place). */
static size_t split_bar(char *line, char **f, size_t max)
{
    size_t n = 0;
    for (char *p = line; n < max;) {
        f[n++] = p;
        char *bar = strchr(p, '|');
        if (!bar)
            break;
        *bar = 0;
        p = bar + 1;
    }
    return n;
}

/* u.user: id|age|gender|occupation|zip -> features age band, gender,
 * occupation (strings, one-hot). u.item: id|title|date|video|url|19 genre
 * flags -> categories (the genres) and feature decade. */
static json_t *movielens_record(char *line, hr_catalog_kind kind)
{
    static const char *const genres[19] = {
        "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
        "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
        "Romance", "Sci-Fi", "Thriller", "War", "Western"};
    char *f[24];
    size_t n = split_bar(line, f, 24);
    if (kind == HR_CATALOG_USER) {
        if (n < 4)
            return NULL;
        int age = atoi(f[1]);
        const char *band = age < 18 ? "<18" : age < 25 ? "18-24" : age < 35 ? "25-34"
                           : age < 45 ? "35-44" : age < 50 ? "45-49" : age < 56 ? "50-55" : "56+";
        return json_pack("{s:s,s:{s:s,s:s,s:s}}", "id", f[0], "features", "age", band, "gender",
                         f[2], "occupation", f[3]);
    }
    if (n < 24)
        return NULL;
    json_t *cats = json_array();
    for (int g = 0; g < 19; g++)
        if (f[5 + g][0] == '1' && json_array_size(cats) < HR_CATALOG_MAX_CATEGORIES)
            json_array_append_new(cats, json_string(genres[g]));
    size_t dl = strlen(f[2]);
    char decade[8] = "unknown";
    if (dl >= 4) /* dd-Mon-yyyy */
        snprintf(decade, sizeof decade, "%.3s0s", f[2] + dl - 4);
    return json_pack("{s:s,s:o,s:{s:s}}", "id", f[0], "categories", cats, "features", "decade",
                     decade);
}

/* Reads records into the catalog: a MovieLens u.user / u.item file (kind
 * given), or NDJSON records each with "kind": "user" | "item" (ndjson).
 * Bad lines are counted in *bad. */
static hr_status read_catalog(hr_catalog *c, const char *path, int kind, bool ndjson, size_t *bad,
                              size_t *records, hr_error *err)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return hr_error_set(err, HR_EIO, "file", "%s: %s", path, strerror(errno));
    enum { BATCH = 512 };
    json_t *batch[2][BATCH];
    size_t nb[2] = {0, 0};
    char *line = NULL;
    size_t lcap = 0;
    ssize_t len;
    hr_status st = HR_OK;
    while (st == HR_OK && (len = getline(&line, &lcap, f)) >= 0) {
        while (len && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = 0;
        if (len == 0)
            continue;
        json_t *obj;
        int k = kind;
        if (ndjson) {
            obj = json_loadb(line, (size_t)len, JSON_REJECT_DUPLICATES, NULL);
            const char *ks = json_string_value(json_object_get(obj, "kind"));
            k = ks && !strcmp(ks, "user") ? HR_CATALOG_USER
                : ks && !strcmp(ks, "item") ? HR_CATALOG_ITEM : -1;
            if (obj)
                json_object_del(obj, "kind");
        } else {
            obj = movielens_record(line, (hr_catalog_kind)kind);
        }
        if (!obj || k < 0) {
            json_decref(obj);
            (*bad)++;
            continue;
        }
        (*records)++;
        batch[k][nb[k]++] = obj;
        if (nb[k] == BATCH) {
            st = put_records(c, (hr_catalog_kind)k, batch[k], nb[k], bad, err);
            nb[k] = 0;
        }
    }
    for (int k = 0; k < 2; k++) {
        if (st == HR_OK)
            st = put_records(c, (hr_catalog_kind)k, batch[k], nb[k], bad, err);
        else
            for (size_t i = 0; i < nb[k]; i++)
                json_decref(batch[k][i]);
    }
    free(line);
    fclose(f);
    return st;
}

/* One progress line on stderr. Its figures are the ones of r, the same
 * report the JSON summary is built from: RMSE (squared loss) or logloss and
 * AUC over the progressive window. */
static void progress_line(hr_app *app, const hr_progress_report *r, uint64_t t0, uint64_t pushed)
{
    double secs = (hr_now_ns() - t0) / 1e9;
    hr_trainer_counts c;
    hr_trainer_get_counts(app->trainer, &c);
    fprintf(stderr, "replay: %llu pushed, %llu trained, %.0f events/s, progressive (last %zu) ",
            (unsigned long long)pushed, (unsigned long long)c.trained,
            secs > 0 ? c.trained / secs : 0.0, r->n);
    if (hr_model_get_config(app->model)->loss == HR_LOSS_SQUARED)
        fprintf(stderr, "rmse %.4f\n", r->rmse);
    else
        fprintf(stderr, "logloss %.4f auc %.4f\n", r->loss, r->auc);
}

static void report_skips(const char *file, const hr_replay_skips *s)
{
    if (s->lines)
        fprintf(stderr, "hogrec replay: %s: skipped %zu bad line%s (the first: %s; --strict to stop)\n",
                file, s->lines, s->lines == 1 ? "" : "s", s->first.message);
}

int hr_replay_main(int argc, char **argv)
{
    /* Indexed by hr_replay_format and hr_replay_order. */
    static const char *const formats[] = {[HR_FMT_NDJSON] = "ndjson",
                                          [HR_FMT_MOVIELENS] = "movielens", NULL};
    static const char *const orders[] = {[HR_ORDER_FILE] = "file", [HR_ORDER_TIME] = "time",
                                         [HR_ORDER_SHUFFLE] = "shuffle", NULL};
    hr_extra_flag extra[] = {
        {.name = "format",
         .help = "replay: the file's format, by default movielens if its name ends in "
                 ".data/.base/.test, else ndjson",
         .choices = formats},
        {.name = "binarize",
         .help = "replay: movielens rating >= R is a click, lower a non-click (default 0: off)",
         .min = 0, .max = 1e9},
        {.name = "passes", .help = "replay: passes over the file (default 1)", .min = 1,
         .max = 100000, .is_integer = true},
        {.name = "order", .help = "replay: the order events train in, by default time",
         .choices = orders},
        {.name = "test", .help = "replay: held-out file to evaluate after training"},
        {.name = "strict",
         .help = "replay: stop at the first bad line (default: skip bad lines, count them)",
         .is_switch = true},
        {.name = "users",
         .help = "replay: MovieLens u.user (id|age|gender|occupation|zip): catalog records "
                 "with features age band, gender, occupation"},
        {.name = "items",
         .help = "replay: MovieLens u.item: catalog records, genres as categories, feature decade"},
        {.name = "catalog",
         .help = "replay: NDJSON catalog records, each with \"kind\": \"user\" or \"item\" "
                 "(the fields of PUT /v1/items/{id}, and \"id\")"},
    };
    enum { X_FORMAT, X_BINARIZE, X_PASSES, X_ORDER, X_TEST, X_STRICT, X_USERS, X_ITEMS,
           X_CATALOG };
    hr_config cfg;
    hr_error err = {{0}, {0}};
    const char *pos[2];
    int npos = 0;
    bool help = false;
    hr_status st = hr_config_from_command_args(&cfg, HR_CMD_REPLAY, argc - 1, argv + 1,
                                               "config/hogrec.json", extra,
                                               (int)HR_ARRAY_LEN(extra), pos, 2, &npos, &help, &err);
    if (help) {
        printf("usage: hogrec replay [options] FILE\n"
               "Trains from FILE through the queue and trainers, then prints a JSON summary.\n");
        hr_config_print_command_help(stdout, HR_CMD_REPLAY, extra, (int)HR_ARRAY_LEN(extra));
        hr_config_free(&cfg);
        return 0;
    }
    int rc = 2;
    hr_app *app = NULL;
    hr_dblock *lock = NULL;
    hr_event_list train = {0}, test = {0};
    if (st != HR_OK) {
        fprintf(stderr, "hogrec replay: %s\n", err.message);
        goto out;
    }
    if (npos != 1) {
        fprintf(stderr, "hogrec replay: want exactly one FILE (see --help)\n");
        goto out;
    }
    const char *file = pos[0];
    hr_replay_format fmt = HR_FMT_NDJSON;
    if (extra[X_FORMAT].choice >= 0) {
        fmt = (hr_replay_format)extra[X_FORMAT].choice;
    } else {
        const char *dot = strrchr(file, '.');
        if (dot && (!strcmp(dot, ".data") || !strcmp(dot, ".base") || !strcmp(dot, ".test")))
            fmt = HR_FMT_MOVIELENS;
    }
    double binarize = extra[X_BINARIZE].value ? extra[X_BINARIZE].number : 0;
    long passes = extra[X_PASSES].value ? (long)extra[X_PASSES].number : 1;
    hr_replay_order order = extra[X_ORDER].choice >= 0 ? (hr_replay_order)extra[X_ORDER].choice
                                                        : HR_ORDER_TIME;
    bool strict = extra[X_STRICT].value != NULL;
    /* replay trains in memory and leaves the database to the server; given
     * a --db it still takes that database's lock, so it never runs beside
     * the process that owns it. */
    for (int i = 1; i < argc && cfg.db[0]; i++)
        if (!strcmp(argv[i], "--db") || !strncmp(argv[i], "--db=", 5)) {
            if ((st = hr_dblock_acquire(cfg.db, &lock, &err)) != HR_OK) {
                fprintf(stderr, "hogrec replay: %s\n", err.message);
                goto out;
            }
            break;
        }
    cfg.db[0] = 0;
    cfg.redis[0] = 0; /* replay trains alone, never as a cluster node */

    if ((st = hr_app_open(&cfg, &app, &err)) != HR_OK) {
        fprintf(stderr, "hogrec replay: %s\n", err.message);
        goto out;
    }
    /* The catalog first: its ids and attributes exist before the events. */
    size_t cat_bad = 0, cat_records = 0;
    const struct {
        int x, kind;
        bool ndjson;
    } cats[] = {{X_USERS, HR_CATALOG_USER, false},
                {X_ITEMS, HR_CATALOG_ITEM, false},
                {X_CATALOG, -1, true}};
    for (size_t i = 0; i < HR_ARRAY_LEN(cats); i++) {
        const char *path = extra[cats[i].x].value;
        if (path && (st = read_catalog(app->catalog, path, cats[i].kind, cats[i].ndjson, &cat_bad,
                                       &cat_records, &err)) != HR_OK) {
            fprintf(stderr, "hogrec replay: %s: %s\n", path, err.message);
            goto out;
        }
    }
    if (cat_bad)
        fprintf(stderr, "hogrec replay: %zu catalog line%s skipped (not a valid record)\n",
                cat_bad, cat_bad == 1 ? "" : "s");
    hr_replay_skips skips;
    if ((st = hr_replay_read(app->model, file, fmt, binarize, 1, strict, &skips, &train, &err)) != HR_OK) {
        fprintf(stderr, "hogrec replay: %s: %s%s\n", file, err.message,
                st == HR_EINVAL ? " (--strict)" : "");
        goto out;
    }
    report_skips(file, &skips);
    hr_replay_order_events(&train, order, (uint64_t)cfg.seed);
    uint64_t t0 = hr_now_ns(), last = t0, pushed = 0;
    const size_t chunk = 1024;
    hr_event *buf = malloc(chunk * sizeof *buf);
    for (long p = 0; buf && p < passes; p++) {
        for (size_t i = 0; i < train.n; i += chunk) {
            size_t n = train.n - i < chunk ? train.n - i : chunk;
            memcpy(buf, train.ev + i, n * sizeof *buf);
            uint64_t seq;
            if ((st = hr_ingest_submit(app->ingest, buf, NULL, NULL, n, true, &seq, &err)) != HR_OK) {
                fprintf(stderr, "hogrec replay: %s\n", err.message);
                free(buf);
                goto out;
            }
            pushed += n;
            if (hr_now_ns() - last > 1000000000ull) {
                last = hr_now_ns();
                hr_progress_report r;
                hr_progress_get(app->progress, 0, &r);
                progress_line(app, &r, t0, pushed);
            }
        }
    }
    free(buf);
    hr_trainer_wait_idle(app->trainer);
    double secs = (hr_now_ns() - t0) / 1e9;
    hr_progress_report pr; /* the last line and the JSON both print this one */
    hr_progress_get(app->progress, 0, &pr);
    progress_line(app, &pr, t0, pushed);

    hr_trainer_counts tc;
    hr_trainer_get_counts(app->trainer, &tc);
    bool squared = hr_model_get_config(app->model)->loss == HR_LOSS_SQUARED;
    json_t *out = json_object();
    json_object_set_new(out, "events", json_integer((json_int_t)tc.trained));
    json_object_set_new(out, "updates", json_integer((json_int_t)tc.updates));
    json_object_set_new(out, "passes", json_integer(passes));
    json_object_set_new(out, "seconds", json_real(secs));
    json_object_set_new(out, "events_per_s", json_real(secs > 0 ? tc.trained / secs : 0));
    json_object_set_new(out, "skipped_lines", json_integer((json_int_t)skips.lines));
    if (cat_records || cat_bad)
        json_object_set_new(out, "catalog",
                            json_pack("{s:I,s:I}", "records", (json_int_t)cat_records,
                                      "skipped_lines", (json_int_t)cat_bad));
    json_t *prog = json_object();
    json_object_set_new(prog, "window", json_integer((json_int_t)pr.n));
    if (squared) {
        json_object_set_new(prog, "rmse", hr_json_real_or_null(pr.rmse));
    } else {
        json_object_set_new(prog, "logloss", hr_json_real_or_null(pr.loss_total));
        json_object_set_new(prog, "logloss_window", hr_json_real_or_null(pr.loss));
        json_object_set_new(prog, "auc_window", hr_json_real_or_null(pr.auc));
    }
    json_object_set_new(out, "progressive", prog);
    if (extra[X_TEST].value) {
        hr_replay_skips test_skips;
        if ((st = hr_replay_read(app->model, extra[X_TEST].value, fmt, binarize, 0, strict,
                                 &test_skips, &test, &err)) != HR_OK) {
            fprintf(stderr, "hogrec replay: %s: %s%s\n", extra[X_TEST].value, err.message,
                    st == HR_EINVAL ? " (--strict)" : "");
            json_decref(out);
            goto out;
        }
        report_skips(extra[X_TEST].value, &test_skips);
        hr_eval ev;
        hr_replay_evaluate(app->model, &test, &ev);
        json_t *t = json_object();
        json_object_set_new(t, "events", json_integer((json_int_t)ev.n));
        json_object_set_new(t, "skipped_lines", json_integer((json_int_t)test_skips.lines));
        if (squared) {
            json_object_set_new(t, "rmse", hr_json_real_or_null(ev.rmse));
        } else {
            json_object_set_new(t, "auc", hr_json_real_or_null(ev.auc));
            json_object_set_new(t, "logloss", hr_json_real_or_null(ev.logloss));
            json_object_set_new(t, "cold_user_events", json_integer((json_int_t)ev.n_cold));
            json_object_set_new(t, "cold_user_auc", hr_json_real_or_null(ev.auc_cold));
        }
        json_object_set_new(out, "test", t);
    }
    char *text = json_dumps(out, JSON_COMPACT);
    printf("%s\n", text);
    free(text);
    json_decref(out);
    rc = 0;
out:
    hr_event_list_free(&train);
    hr_event_list_free(&test);
    hr_app_close(app, true);
    hr_dblock_release(lock);
    hr_config_free(&cfg);
    return rc;
}

/*
 * fuzz_event.c - the event decoder (hr_api_event_parse, hr_api_event_resolve,
 * hr_api_event_from_json and hr_api_event_lookup, src/api.c) on a small
 * model, as POST /v1/events drives it.
 *
 * Input: a JSON text; an object is one event, an array a batch (its first
 * 32 elements, more than the tables hold, so "table full" is reached). Each
 * input gets a fresh logistic and a fresh squared-loss model (16 users, 16
 * items, 16 context rows), and each event is decoded by both, first as a
 * predict pair (hr_api_pair_from_json: creates no id, unknown ids are row 0
 * and flagged, the prediction is finite), then validated alone
 * (hr_api_event_parse: creates no id, fails exactly when decoding says
 * HR_EINVAL, its refs are the object's id values), then as an event.
 * Checked: an error is HR_EINVAL or HR_EFULL with a message and HR_EINVAL
 * creates no id; validation then resolution gives the decoded event;
 * an accepted event has rows in range that hold the ids it names, a finite
 * label (0 or 1 when logistic), weight and feature values, a finite
 * prediction; looking it up again finds the same rows; its log text
 * (hr_api_event_text) parses back to the same object and decodes to the
 * same event.
 */
#include <jansson.h>
#include <math.h>
#include <string.h>

#include "fuzz.h"
#include "hogrec/api.h"

/* The id the event names in field, as hr_api_id reads it. */
static void check_row(const hr_model *m, hr_table_id t, uint32_t row, const json_t *obj,
                      const char *field)
{
    char id[HR_ID_MAX_LEN + 1];
    size_t len, klen = 0;
    FUZZ_CHECK(hr_api_id(json_object_get(obj, field), field, id, &len, NULL) == HR_OK);
    FUZZ_CHECK(row > 0 && row < hr_model_rows(m, t));
    const char *key = hr_model_key(m, t, row, &klen);
    FUZZ_CHECK(key && klen == len && memcmp(key, id, len) == 0);
    FUZZ_CHECK(hr_model_lookup(m, t, id, len) == row);
}

static int by_row(const void *a, const void *b)
{
    const hr_feat *x = a, *y = b;
    if (x->row != y->row)
        return x->row < y->row ? -1 : 1;
    return memcmp(&x->x, &y->x, sizeof x->x);
}

/* Same resolved event; the context features in any order (the log text
 * sorts the keys). */
static bool same_event(const hr_event *a, const hr_event *b)
{
    if (a->user != b->user || a->item != b->item || a->nctx != b->nctx ||
        memcmp(&a->label, &b->label, sizeof a->label) ||
        memcmp(&a->weight, &b->weight, sizeof a->weight) || memcmp(&a->ts, &b->ts, sizeof a->ts))
        return false;
    hr_feat fa[HR_MAX_CTX], fb[HR_MAX_CTX];
    memcpy(fa, a->ctx, (size_t)a->nctx * sizeof *fa);
    memcpy(fb, b->ctx, (size_t)b->nctx * sizeof *fb);
    qsort(fa, (size_t)a->nctx, sizeof *fa, by_row);
    qsort(fb, (size_t)b->nctx, sizeof *fb, by_row);
    for (int i = 0; i < a->nctx; i++)
        if (by_row(&fa[i], &fb[i]) != 0)
            return false;
    return true;
}

static void check_event(hr_model *m, const json_t *obj)
{
    const hr_model_config *mc = hr_model_get_config(m);
    uint32_t users = hr_model_id_count(m, HR_TABLE_USER), items = hr_model_id_count(m, HR_TABLE_ITEM);
    hr_event ev;
    hr_error e = {{0}, {0}};

    /* as a predict pair: creates nothing, unknown ids score through row 0 */
    unsigned unknown = 99;
    hr_status st = hr_api_pair_from_json(m, obj, &ev, &unknown, &e);
    FUZZ_CHECK(st == HR_OK || (st == HR_EINVAL && e.message[0] != 0));
    if (st == HR_OK) {
        FUZZ_CHECK(ev.user < hr_model_rows(m, HR_TABLE_USER) &&
                   ev.item < hr_model_rows(m, HR_TABLE_ITEM));
        FUZZ_CHECK((ev.user == 0) == ((unknown & HR_API_UNKNOWN_USER) != 0));
        FUZZ_CHECK((ev.item == 0) == ((unknown & HR_API_UNKNOWN_ITEM) != 0));
        FUZZ_CHECK(isfinite(hr_model_predict(m, &ev)));
    }
    FUZZ_CHECK(hr_model_id_count(m, HR_TABLE_USER) == users &&
               hr_model_id_count(m, HR_TABLE_ITEM) == items);

    /* validated alone: creates nothing */
    hr_api_event_refs refs;
    hr_event parsed;
    hr_error pe = {{0}, {0}};
    hr_status pst = hr_api_event_parse(m, obj, &parsed, &refs, &pe);
    FUZZ_CHECK(pst == HR_OK || (pst == HR_EINVAL && pe.message[0] != 0));
    FUZZ_CHECK(hr_model_id_count(m, HR_TABLE_USER) == users &&
               hr_model_id_count(m, HR_TABLE_ITEM) == items);
    if (pst == HR_OK)
        FUZZ_CHECK(parsed.user == 0 && parsed.item == 0 &&
                   refs.user == json_object_get(obj, "user") &&
                   refs.item == json_object_get(obj, "item") &&
                   refs.id == json_object_get(obj, "id"));

    const json_t *eid = (const json_t *)&e; /* must be overwritten */
    st = hr_api_event_from_json(m, obj, &ev, &eid, &e);
    FUZZ_CHECK((st == HR_EINVAL) == (pst != HR_OK));
    if (st != HR_OK) {
        FUZZ_CHECK(st == HR_EINVAL || st == HR_EFULL);
        FUZZ_CHECK(e.message[0] != 0);
        json_t *body = hr_api_error_json("invalid", e.message); /* what the client gets */
        FUZZ_CHECK(body != NULL);
        json_decref(body);
        if (st == HR_EINVAL) { /* a bad event creates no id */
            FUZZ_CHECK(hr_model_id_count(m, HR_TABLE_USER) == users);
            FUZZ_CHECK(hr_model_id_count(m, HR_TABLE_ITEM) == items);
        }
        return;
    }
    check_row(m, HR_TABLE_USER, ev.user, obj, "user");
    check_row(m, HR_TABLE_ITEM, ev.item, obj, "item");
    /* the two steps give the decoded event (the ids exist now) */
    FUZZ_CHECK(hr_api_event_resolve(m, &refs, &parsed, &pe) == HR_OK);
    FUZZ_CHECK(same_event(&ev, &parsed));
    FUZZ_CHECK(isfinite(ev.label) && isfinite(ev.weight) && isfinite(ev.ts));
    if (mc->loss == HR_LOSS_LOGISTIC)
        FUZZ_CHECK(ev.label == 0.0f || ev.label == 1.0f);
    FUZZ_CHECK(ev.weight >= 0 && ev.weight <= 1e6f);
    FUZZ_CHECK(ev.nctx <= HR_MAX_CTX);
    for (int i = 0; i < ev.nctx; i++)
        FUZZ_CHECK(ev.ctx[i].row < mc->max_rows[HR_TABLE_CTX] && isfinite(ev.ctx[i].x));
    FUZZ_CHECK(eid == json_object_get(obj, "id"));
    FUZZ_CHECK(!eid || json_is_string(eid) || json_is_integer(eid));
    double p = hr_model_predict(m, &ev);
    FUZZ_CHECK(isfinite(p));
    if (mc->loss == HR_LOSS_LOGISTIC)
        FUZZ_CHECK(p >= 0 && p <= 1);

    /* held-out decoding finds the rows just interned */
    hr_event again;
    unknown = 99;
    FUZZ_CHECK(hr_api_event_lookup(m, obj, &again, &unknown, &e) == HR_OK);
    FUZZ_CHECK(unknown == 0 && same_event(&ev, &again));

    /* the event log's text decodes to the same event */
    size_t len = 0;
    char *text = hr_api_event_text(obj, &len);
    FUZZ_CHECK(text && len == strlen(text));
    json_error_t jerr;
    json_t *back = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    FUZZ_CHECK(back && json_equal(back, obj));
    FUZZ_CHECK(hr_api_event_from_json(m, back, &again, NULL, &e) == HR_OK);
    FUZZ_CHECK(same_event(&ev, &again));
    json_decref(back);
    free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_error_t jerr;
    json_t *root = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return 0;
    hr_model *models[2] = {fuzz_small_model("logistic"), fuzz_small_model("squared")};
    for (int k = 0; k < 2; k++) {
        if (!json_is_array(root)) {
            check_event(models[k], root);
            continue;
        }
        for (size_t i = 0; i < json_array_size(root) && i < 32; i++)
            check_event(models[k], json_array_get(root, i));
    }
    hr_model_destroy(models[0]);
    hr_model_destroy(models[1]);
    json_decref(root);
    return 0;
}

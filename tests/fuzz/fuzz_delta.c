/*
 * fuzz_delta.c - the row delta decoder (hr_delta_apply, src/delta.c), as a
 * follower meets what the delta stream holds.
 *
 * Input: one delta part, applied to a fresh small model twice: as it is
 * (the checksum stops almost every mutation), and sealed (hr_delta_seal
 * rewrites its length and checksum, so the record checks are reached).
 * Checked: a refusal is HR_ECORRUPT, HR_EINVAL or HR_ENOTFOUND with a
 * message and leaves the model (rows, ids) and the follower state exactly
 * as they were; an accepted part leaves every id findable at its row, the
 * id counts right, every weight and optimizer state finite and every
 * prediction finite, and the same part applied again is ignored as stale
 * and changes nothing.
 */
#include <math.h>
#include <string.h>

#include "fuzz.h"
#include "hogrec/delta.h"
#include "hogrec/ids.h"
#include "hogrec/sgd.h"

static bool has_ids(int t)
{
    return t == HR_TABLE_USER || t == HR_TABLE_ITEM;
}

/* Hash of everything an apply can change. */
static uint64_t model_sum(hr_model *m)
{
    const hr_row_layout *L = hr_model_layout(m);
    float row[L->floats];
    uint64_t h = 1;
    for (int t = 0; t < HR_TABLE_COUNT; t++) {
        uint32_t rows = hr_model_rows(m, (hr_table_id)t);
        h = hr_hash64(&rows, sizeof rows, h);
        for (uint32_t r = 0; r < rows; r++) {
            size_t len;
            const char *k = has_ids(t) && r > 0 ? hr_model_key(m, (hr_table_id)t, r, &len) : NULL;
            if (has_ids(t) && r > 0 && !k)
                continue;
            if (k)
                h = hr_hash64(k, len, h ^ r);
            hr_sgd_row_read(L, hr_model_row(m, (hr_table_id)t, r), row);
            h = hr_hash64(row, sizeof row, h);
        }
    }
    return h;
}

/* An accepted part left a model that works. */
static void check_model(hr_model *m)
{
    const hr_row_layout *L = hr_model_layout(m);
    float row[L->floats];
    for (int t = 0; t < HR_TABLE_COUNT; t++) {
        uint32_t rows = hr_model_rows(m, (hr_table_id)t), ids = 0;
        for (uint32_t r = 0; r < rows; r++) {
            if (has_ids(t) && r > 0) {
                size_t len;
                const char *k = hr_model_key(m, (hr_table_id)t, r, &len);
                if (!k)
                    continue;
                FUZZ_CHECK(len >= 1 && len <= HR_ID_MAX_LEN);
                FUZZ_CHECK(hr_model_lookup(m, (hr_table_id)t, k, len) == r);
                ids++;
            }
            hr_sgd_row_read(L, hr_model_row(m, (hr_table_id)t, r), row);
            for (uint32_t f = 0; f < L->floats; f++)
                FUZZ_CHECK(f == L->count || f == L->last_seen || isfinite(row[f]));
        }
        if (has_ids(t))
            FUZZ_CHECK(hr_model_id_count(m, (hr_table_id)t) == ids);
    }
    uint32_t users = hr_model_rows(m, HR_TABLE_USER), items = hr_model_rows(m, HR_TABLE_ITEM);
    for (uint32_t u = 0; u < users; u++) {
        for (uint32_t i = 0; i < items; i++) {
            size_t len;
            if ((u && !hr_model_key(m, HR_TABLE_USER, u, &len)) ||
                (i && !hr_model_key(m, HR_TABLE_ITEM, i, &len)))
                continue;
            hr_event ev;
            memset(&ev, 0, sizeof ev);
            ev.user = u;
            ev.item = i;
            FUZZ_CHECK(isfinite(hr_model_predict(m, &ev)));
        }
    }
}

static void run(const uint8_t *data, size_t size)
{
    hr_model *m = fuzz_small_model(NULL);
    uint64_t before = model_sum(m);
    hr_delta_state st, zero;
    memset(&st, 0, sizeof st);
    memset(&zero, 0, sizeof zero);
    hr_error err = {{0}, {0}};
    hr_status s = hr_delta_apply(m, data, size, &st, &err);
    if (s != HR_OK) {
        FUZZ_CHECK(s == HR_ECORRUPT || s == HR_EINVAL || s == HR_ENOTFOUND || s == HR_ENOMEM);
        FUZZ_CHECK(err.message[0] != 0);
        if (s != HR_ENOMEM) { /* the id table may fail half-way, as documented */
            FUZZ_CHECK(model_sum(m) == before);
            FUZZ_CHECK(memcmp(&st, &zero, sizeof st) == 0);
        }
        hr_model_destroy(m);
        return;
    }
    FUZZ_CHECK(st.started && !st.stale);
    check_model(m);
    uint64_t after = model_sum(m);
    hr_delta_state again = st;
    FUZZ_CHECK(hr_delta_apply(m, data, size, &again, &err) == HR_OK);
    FUZZ_CHECK(again.stale);
    FUZZ_CHECK(model_sum(m) == after);
    hr_model_destroy(m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    run(data, size);
    uint8_t *sealed = malloc(size ? size : 1);
    FUZZ_CHECK(sealed != NULL);
    if (size)
        memcpy(sealed, data, size);
    hr_delta_seal(sealed, size);
    run(sealed, size);
    free(sealed);
    return 0;
}

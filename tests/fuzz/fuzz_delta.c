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
 * id counts right and every weight and optimizer state finite (scores may
 * still overflow, as the leader's would with such weights), makes the same
 * model from a second fresh one, and applied again is ignored as stale and
 * changes nothing.
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

/* Hash of everything an apply can change; without the rows' last_seen
 * when with_clock is false (a fresh model's rows are stamped with the
 * second it was made in). */
static uint64_t model_sum(hr_model *m, bool with_clock)
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
            if (!with_clock)
                row[L->last_seen] = 0;
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
}

static void run(const uint8_t *data, size_t size)
{
    hr_model *m = fuzz_small_model(NULL);
    uint64_t before = model_sum(m, true);
    hr_delta_state st, zero;
    memset(&st, 0, sizeof st);
    memset(&zero, 0, sizeof zero);
    hr_error err = {{0}, {0}};
    hr_status s = hr_delta_apply(m, data, size, &st, &err);
    if (s != HR_OK) {
        FUZZ_CHECK(s == HR_ECORRUPT || s == HR_EINVAL || s == HR_ENOTFOUND || s == HR_ENOMEM);
        FUZZ_CHECK(err.message[0] != 0);
        if (s != HR_ENOMEM) { /* the id table may fail half-way, as documented */
            FUZZ_CHECK(model_sum(m, true) == before);
            FUZZ_CHECK(memcmp(&st, &zero, sizeof st) == 0);
        }
        hr_model_destroy(m);
        return;
    }
    FUZZ_CHECK(st.started && !st.stale);
    check_model(m);
    uint64_t after = model_sum(m, true);
    uint64_t after_noclock = model_sum(m, false);
    hr_model *twin = fuzz_small_model(NULL);
    hr_delta_state tst;
    memset(&tst, 0, sizeof tst);
    FUZZ_CHECK(hr_delta_apply(twin, data, size, &tst, &err) == HR_OK);
    FUZZ_CHECK(model_sum(twin, false) == after_noclock && memcmp(&tst, &st, sizeof st) == 0);
    hr_model_destroy(twin);
    hr_delta_state again = st;
    FUZZ_CHECK(hr_delta_apply(m, data, size, &again, &err) == HR_OK);
    FUZZ_CHECK(again.stale);
    FUZZ_CHECK(model_sum(m, true) == after);
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

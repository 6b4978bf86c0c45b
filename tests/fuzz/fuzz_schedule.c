/*
 * fuzz_schedule.c - the schedule JSON (hr_schedule_from_json,
 * src/schedule.c), as PUT /v1/admin/schedule and the config's "schedule"
 * drive it.
 *
 * Input: a JSON text. Checked: an error is HR_EINVAL naming a field; an
 * accepted schedule validates, round-trips through hr_schedule_to_json to
 * the same values, goes into a schedule box, and gives base rates that are
 * finite and within [0, eta0] and group rates that are not NaN and >= 0, at
 * update counts from 0 to 2^64-1.
 */
#include <jansson.h>
#include <math.h>
#include <string.h>

#include "fuzz.h"
#include "hogrec/schedule.h"

static const uint64_t TIMES[] = {0, 1, 2, 10, 999, 1000, 12345, 100000, 1u << 20, 1ull << 31,
                                 1ull << 40, 1ull << 53, UINT64_MAX / 2, UINT64_MAX};

static void check_rates(const hr_schedule *s)
{
    for (size_t i = 0; i < sizeof TIMES / sizeof *TIMES; i++) {
        double r = hr_schedule_rate(s, TIMES[i]);
        FUZZ_CHECK(isfinite(r) && r >= 0 && r <= s->eta0);
        for (int g = 0; g < HR_GROUP_COUNT; g++) {
            uint64_t stale[] = {0, 1, 1000, UINT64_MAX};
            for (size_t j = 0; j < 4; j++) {
                double gr = hr_schedule_group_rate(s, (hr_group)g, TIMES[i], stale[j]);
                FUZZ_CHECK(!isnan(gr) && gr >= 0);
            }
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_error_t jerr;
    json_t *root = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return 0;
    hr_schedule s;
    hr_error e = {{0}, {0}};
    hr_status st = hr_schedule_from_json(root, &s, &e);
    if (st != HR_OK) {
        FUZZ_CHECK(st == HR_EINVAL && e.message[0] != 0);
        json_decref(root);
        return 0;
    }
    FUZZ_CHECK(hr_schedule_validate(&s, NULL) == HR_OK);
    check_rates(&s);

    json_t *j = hr_schedule_to_json(&s);
    FUZZ_CHECK(j != NULL);
    hr_schedule back;
    FUZZ_CHECK(hr_schedule_from_json(j, &back, &e) == HR_OK);
    FUZZ_CHECK(memcmp(&s, &back, sizeof s) == 0);
    json_decref(j);

    hr_schedbox *box = NULL;
    FUZZ_CHECK(hr_schedbox_create(&s, &box, &e) == HR_OK);
    uint64_t version = 0;
    FUZZ_CHECK(hr_schedbox_swap(box, &s, 10, NAN, &version, &e) == HR_OK && version == 2);
    j = hr_schedbox_history_json(box);
    FUZZ_CHECK(j && json_array_size(j) == 2);
    json_decref(j);
    hr_schedbox_destroy(box);
    json_decref(root);
    return 0;
}

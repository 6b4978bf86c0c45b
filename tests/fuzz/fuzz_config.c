/*
 * fuzz_config.c - the JSON config file loader (hr_config_load_text, the
 * body of hr_config_load_file, src/config.c), and what the server does next
 * with a config: its schedule parsed and the model config derived
 * (hr_model_config_from), as in hr_app_open.
 *
 * Input: the bytes of a config file. Checked: an error is HR_EINVAL with a
 * message; an accepted config is shown by hr_config_to_json,
 * and that JSON (less "schedule": null, which stands for the default) loads
 * as a config file into a fresh config that shows the same; deriving the
 * model config succeeds or names the problem.
 */
#include <jansson.h>
#include <string.h>

#include "fuzz.h"
#include "hogrec/config.h"
#include "hogrec/model.h"
#include "hogrec/schedule.h"

/* hr_config_to_json of c without a null "schedule": a new reference. */
static json_t *shown(const hr_config *c)
{
    json_t *j = hr_config_to_json(c);
    FUZZ_CHECK(j != NULL);
    if (json_is_null(json_object_get(j, "schedule")))
        json_object_del(j, "schedule");
    return j;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    hr_config c;
    hr_config_defaults(&c);
    hr_error e = {{0}, {0}};
    hr_status st = hr_config_load_text(&c, (const char *)data, size, "fuzz.json", &e);
    if (st != HR_OK) {
        FUZZ_CHECK(st == HR_EINVAL && e.message[0] != 0);
        hr_config_free(&c);
        return 0;
    }
    json_t *j = shown(&c);
    char *text = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
    FUZZ_CHECK(text != NULL);
    hr_config again;
    hr_config_defaults(&again);
    FUZZ_CHECK(hr_config_load_text(&again, text, strlen(text), "shown", &e) == HR_OK);
    json_t *j2 = shown(&again);
    FUZZ_CHECK(json_equal(j, j2));
    json_decref(j2);
    json_decref(j);
    free(text);
    hr_config_free(&again);

    hr_schedule s;
    hr_schedule_defaults(&s);
    if (!c.schedule || hr_schedule_from_json(c.schedule, &s, &e) == HR_OK) {
        hr_model_config mc;
        st = hr_model_config_from(&c, &s, &mc, &e);
        FUZZ_CHECK(st == HR_OK || (st == HR_EINVAL && e.message[0] != 0));
    }
    hr_config_free(&c);
    return 0;
}

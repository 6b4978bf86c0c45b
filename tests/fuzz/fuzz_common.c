/*
 * fuzz_common.c - helpers the harnesses share (see fuzz.h); linked into
 * every harness, with libFuzzer and with replay.c.
 */
#include "fuzz.h"

#include "hogrec/config.h"
#include "hogrec/schedule.h"

hr_model *fuzz_small_model(const char *loss)
{
    hr_config c;
    hr_config_defaults(&c);
    c.k = 4;
    c.max_users = 16;
    c.max_items = 16;
    c.chunk_rows = 64;
    c.context_bits = 4;
    if (loss)
        FUZZ_CHECK(hr_config_set(&c, "loss", loss, NULL) == HR_OK);
    hr_schedule s;
    hr_schedule_defaults(&s);
    hr_model_config mc;
    hr_model *m = NULL;
    FUZZ_CHECK(hr_model_config_from(&c, &s, &mc, NULL) == HR_OK);
    FUZZ_CHECK(hr_model_create(&mc, &m, NULL) == HR_OK);
    hr_config_free(&c);
    return m;
}

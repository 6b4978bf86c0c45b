/*
 * fuzz_ndjson.c - the NDJSON splitter of POST /v1/events
 * (hr_api_ndjson_split, src/api.c).
 *
 * Input: a request body, any bytes. Checked against a plain reference (index
 * loop over the bytes): one array element per line that holds more than
 * spaces, tabs and CRs, equal to that line parsed alone, or null when it
 * does not parse; the count returned is the non-null elements; one error per
 * null, in order, naming its index, with a printable ASCII message.
 */
#include <jansson.h>
#include <string.h>

#include "fuzz.h"
#include "hogrec/api.h"

static bool blank(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r')
            return false;
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *body = (const char *)data;
    json_t *arr = json_array(), *errors = json_array();
    size_t parsed = hr_api_ndjson_split(size ? body : NULL, size, arr, errors);

    size_t idx = 0, nulls = 0, start = 0;
    for (size_t i = 0; i <= size; i++) {
        if (i < size && body[i] != '\n')
            continue;
        size_t n = i - start;
        if (!blank(body + start, n)) {
            FUZZ_CHECK(idx < json_array_size(arr));
            json_t *got = json_array_get(arr, idx);
            json_error_t jerr;
            json_t *want = json_loadb(body + start, n, JSON_REJECT_DUPLICATES, &jerr);
            if (want) {
                FUZZ_CHECK(json_equal(got, want));
            } else {
                FUZZ_CHECK(json_is_null(got));
                json_t *e = json_array_get(errors, nulls);
                FUZZ_CHECK(json_is_object(e));
                FUZZ_CHECK(json_integer_value(json_object_get(e, "index")) == (json_int_t)idx);
                const char *msg = json_string_value(json_object_get(e, "message"));
                FUZZ_CHECK(msg && strncmp(msg, "not JSON: ", 10) == 0);
                for (const char *p = msg; *p; p++)
                    FUZZ_CHECK((unsigned char)*p >= 0x20 && (unsigned char)*p < 0x80);
                nulls++;
            }
            json_decref(want);
            idx++;
        }
        start = i + 1;
    }
    FUZZ_CHECK(json_array_size(arr) == idx);
    FUZZ_CHECK(json_array_size(errors) == nulls);
    FUZZ_CHECK(parsed == idx - nulls);
    json_decref(arr);
    json_decref(errors);
    return 0;
}

/*
 * fuzz_query.c - the query-string parsers of GET /v1/predict and
 * GET /v1/recommend (hr_api_predict_query, hr_api_recommend_query,
 * src/api.c), as the HTTP layer drives them.
 *
 * Input: the first byte picks the route (even: predict, odd: recommend); the
 * rest is a query string "key=value&key" that is split at '&' and the first
 * '=' and percent-decoded the way libmicrohttpd decodes it, so any byte
 * (NUL, invalid UTF-8) can reach the parsers. The model is small and knows
 * users u1, u2 and items i1, i2, i3. Checked: an error is HR_EINVAL with a
 * message naming a field; a predict answer has rows in range, flags unknown
 * ids exactly when the row is 0, and scores finite; a recommend answer has k
 * in 1..HR_API_MAX_K, a user id of 1..HR_ID_MAX_LEN bytes of UTF-8 without
 * NUL whose row is what a lookup gives (0 when unknown), and at most HR_API_MAX_EXCLUDE
 * excluded rows, each a known item.
 */
#include <jansson.h>
#include <math.h>
#include <string.h>

#include "fuzz.h"
#include "hogrec/api.h"

#define MAX_PARAMS 64

/* The small model, knowing users u1, u2 and items i1, i2, i3. */
static hr_model *make_model(void)
{
    hr_model *m = fuzz_small_model(NULL);
    static const char *const events[] = {"{\"user\":\"u1\",\"item\":\"i1\"}",
                                         "{\"user\":\"u2\",\"item\":\"i2\"}",
                                         "{\"user\":\"u1\",\"item\":\"i3\"}"};
    for (size_t i = 0; i < sizeof events / sizeof *events; i++) {
        json_t *obj = json_loads(events[i], 0, NULL);
        hr_event ev;
        FUZZ_CHECK(obj && hr_api_event_from_json(m, obj, &ev, NULL, NULL) == HR_OK);
        json_decref(obj);
    }
    return m;
}

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Percent-decodes s[0..n) in place ('+' is a space); returns the new length. */
static size_t unescape(char *s, size_t n)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int hi, lo;
        if (s[i] == '%' && i + 2 < n &&
            (hi = hexval((unsigned char)s[i + 1])) >= 0 &&
            (lo = hexval((unsigned char)s[i + 2])) >= 0) {
            s[o++] = (char)(hi * 16 + lo);
            i += 2;
        } else {
            s[o++] = s[i] == '+' ? ' ' : s[i];
        }
    }
    return o;
}

/* The input's query string as parameters; keys and values live in buf. */
static size_t split(char *buf, size_t len, hr_api_param *p)
{
    size_t n = 0;
    char *s = buf, *end = buf + len;
    while (s < end && n < MAX_PARAMS) {
        char *amp = memchr(s, '&', (size_t)(end - s));
        char *e = amp ? amp : end;
        char *eq = memchr(s, '=', (size_t)(e - s));
        p[n].key = s;
        p[n].key_len = unescape(s, (size_t)((eq ? eq : e) - s));
        p[n].value = eq ? eq + 1 : NULL;
        p[n].value_len = eq ? unescape(eq + 1, (size_t)(e - eq - 1)) : 0;
        n++;
        s = e + 1;
    }
    return n;
}

static bool utf8_ok(const char *s, size_t n)
{
    json_t *j = json_stringn(s, n); /* jansson refuses invalid UTF-8 */
    bool ok = j != NULL;
    json_decref(j);
    return ok;
}

static void check_error(hr_status st, const hr_error *e)
{
    FUZZ_CHECK(st == HR_EINVAL && e->message[0] != 0 && e->field[0] != 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    char *buf = malloc(size);
    FUZZ_CHECK(buf != NULL);
    memcpy(buf, data + 1, size - 1);
    hr_api_param params[MAX_PARAMS];
    size_t n = split(buf, size - 1, params);
    hr_model *m = make_model();
    hr_error e = {{0}, {0}};
    if ((data[0] & 1) == 0) {
        hr_api_predict_req req;
        hr_status st = hr_api_predict_query(m, params, n, &req, &e);
        if (st != HR_OK) {
            check_error(st, &e);
        } else {
            FUZZ_CHECK(req.ev.user < hr_model_rows(m, HR_TABLE_USER));
            FUZZ_CHECK(req.ev.item < hr_model_rows(m, HR_TABLE_ITEM));
            FUZZ_CHECK(((req.unknown & HR_API_UNKNOWN_USER) != 0) == (req.ev.user == 0));
            FUZZ_CHECK(((req.unknown & HR_API_UNKNOWN_ITEM) != 0) == (req.ev.item == 0));
            FUZZ_CHECK(isfinite(hr_model_predict(m, &req.ev)));
        }
    } else {
        hr_api_recommend_req *req = malloc(sizeof *req);
        FUZZ_CHECK(req != NULL);
        hr_status st = hr_api_recommend_query(m, params, n, req, &e);
        if (st != HR_OK) {
            check_error(st, &e);
        } else {
            FUZZ_CHECK(req->k >= 1 && req->k <= HR_API_MAX_K);
            FUZZ_CHECK(req->user_len >= 1 && req->user_len <= HR_ID_MAX_LEN);
            FUZZ_CHECK(memchr(req->user, 0, req->user_len) == NULL);
            FUZZ_CHECK(utf8_ok(req->user, req->user_len));
            uint32_t row = hr_model_lookup(m, HR_TABLE_USER, req->user, req->user_len);
            FUZZ_CHECK(req->user_row == (row == HR_ID_NONE ? 0 : row));
            FUZZ_CHECK(req->nexclude <= HR_API_MAX_EXCLUDE);
            for (size_t i = 0; i < req->nexclude; i++)
                FUZZ_CHECK(req->exclude[i] > 0 &&
                           req->exclude[i] < hr_model_rows(m, HR_TABLE_ITEM));
        }
        free(req);
    }
    hr_model_destroy(m);
    free(buf);
    return 0;
}

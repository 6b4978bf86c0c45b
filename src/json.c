/*
 * json.c - see json.h.
 */
#include "hogrec/json.h"

#include <math.h>

json_t *hr_json_real_or_null(double v)
{
    return isfinite(v) ? json_real(v) : json_null();
}

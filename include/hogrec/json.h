/*
 * json.h - the small JSON helpers the modules that speak jansson share.
 */
#ifndef HOGREC_JSON_H
#define HOGREC_JSON_H

#include <jansson.h>

/* A new JSON number for v, or null when v is NaN or infinite (JSON has no
 * such numbers, and jansson refuses them). */
json_t *hr_json_real_or_null(double v);

#endif

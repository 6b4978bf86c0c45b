/*
 * http_mhd.h - the answers libmicrohttpd makes itself (414, 431, 400, 505,
 * 413 before the access handler runs) carry the JSON error body instead of
 * the library's HTML page. Private to http.c; the design is in
 * http_mhd.c.
 */
#ifndef HOGREC_HTTP_MHD_H
#define HOGREC_HTTP_MHD_H

#include <stdbool.h>

/* Finds libmicrohttpd's own response functions (idempotent, thread-safe;
 * aborts if the library is not loaded dynamically). hr_http_start calls it
 * before starting the daemon. */
void hr_http_mhd_init(void);

#endif

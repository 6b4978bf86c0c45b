/*
 * web_assets.h - the dashboard's files, embedded in the binary (private to
 * http_dash.c).
 *
 * The table is generated at build time from the files in web/ by
 * cmake/embed_web.cmake, in file-name order.
 */
#ifndef HOGREC_WEB_ASSETS_H
#define HOGREC_WEB_ASSETS_H

#include <stddef.h>

typedef struct {
    const char *name;  /* file name under web/ (served as /ui/<name>) */
    const char *ctype; /* Content-Type */
    const char *etag;  /* quoted strong ETag: a hash of the bytes */
    size_t len;        /* bytes in data */
    const char *data;  /* the file's bytes */
} hr_web_asset;

extern const hr_web_asset hr_web_assets[];
extern const int hr_web_asset_count;

#endif

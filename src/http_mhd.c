/*
 * http_mhd.c - JSON bodies for the answers libmicrohttpd makes itself; see
 * http_mhd.h.
 *
 * libmicrohttpd answers some requests before the access handler ever sees
 * them: a request line or headers that do not fit the connection's memory
 * pool (414, 431), a malformed request line, header or chunk (400), an
 * unsupported HTTP version (505), a chunk size that overflows (413). It
 * has no option to change those bodies: it writes fixed HTML pages.
 *
 * Design: every such page is made by one function of the library that
 * calls MHD_create_response_from_buffer(len, page, MHD_RESPMEM_PERSISTENT)
 * and then MHD_queue_response(connection, status, response), both through
 * the library's PLT. This file defines those two symbols; the executable's
 * definitions take precedence over the library's (ELF symbol
 * interposition), and each forwards to the library's own function, found
 * with dlsym(RTLD_NEXT). A response created from a buffer that starts with
 * the library's page prefix is remembered (per thread: the library
 * creates and queues it on the same thread, one right after the other);
 * when that response is queued, a JSON error response for the same status
 * is queued in its place: {"error": {"code", "message"}}, the message being
 * the page's text without tags. Every other call passes through unchanged.
 *
 * test_http checks each of these statuses end to end, so a library built
 * without PLT calls (or linked statically) fails the tests instead of
 * silently answering HTML again.
 *
 * Threads: any MHD thread; the only shared state is the pair of function
 * pointers, resolved once (pthread_once).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* RTLD_NEXT */
#endif
#include "http_mhd.h"

#include <dlfcn.h>
#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hogrec/api.h"

#define MHD_PAGE_PREFIX "<html><head><title>"

typedef struct MHD_Response *(*create_fn)(size_t, void *, enum MHD_ResponseMemoryMode);
typedef enum MHD_Result (*queue_fn)(struct MHD_Connection *, unsigned int,
                                    struct MHD_Response *);

static pthread_once_t once = PTHREAD_ONCE_INIT;
static create_fn real_create; /* libmicrohttpd's MHD_create_response_from_buffer */
static queue_fn real_queue;   /* libmicrohttpd's MHD_queue_response */

/* The last page libmicrohttpd created on this thread, until it is queued. */
static __thread struct MHD_Response *tls_page;
static __thread char tls_text[256]; /* its text, tags removed */

static void resolve(void)
{
    real_create = (create_fn)dlsym(RTLD_NEXT, "MHD_create_response_from_buffer");
    real_queue = (queue_fn)dlsym(RTLD_NEXT, "MHD_queue_response");
    if (!real_create || !real_queue) {
        /* Cannot happen with a shared libmicrohttpd; without one nothing
         * could answer at all. */
        fprintf(stderr, "hogrec: libmicrohttpd functions not found: %s\n", dlerror());
        abort();
    }
}

void hr_http_mhd_init(void)
{
    pthread_once(&once, resolve);
}

/* The page's text: tags dropped, entities (&quot;) read as a quote. */
static void page_text(const char *page, size_t len, char *out, size_t cap)
{
    size_t o = 0;
    bool in_tag = false, in_title = false;
    for (size_t i = 0; i < len && o + 1 < cap; i++) {
        char ch = page[i];
        if (ch == '<') {
            in_tag = true;
            if (len - i >= 8 && strncmp(page + i, "</title>", 8) == 0)
                in_title = true; /* the title ends: separate it from the body */
            continue;
        }
        if (ch == '>') {
            in_tag = false;
            if (in_title && o + 3 < cap) {
                out[o++] = ':';
                out[o++] = ' ';
                in_title = false;
            }
            continue;
        }
        if (in_tag)
            continue;
        if (ch == '&') {
            const char *semi = memchr(page + i, ';', len - i);
            if (semi && semi - (page + i) <= 6) {
                out[o++] = strncmp(page + i, "&quot;", 6) == 0 ? '"' : '?';
                i = (size_t)(semi - page);
                continue;
            }
        }
        out[o++] = ch;
    }
    out[o] = 0;
}

static const char *code_of(unsigned status)
{
    switch (status) {
    case 400:
        return "bad_request";
    case 413:
        return "payload_too_large";
    case 414:
        return "uri_too_long";
    case 431:
        return "header_too_large";
    case 505:
        return "http_version_not_supported";
    default:
        return status >= 500 ? "internal" : "bad_request";
    }
}

struct MHD_Response *MHD_create_response_from_buffer(size_t size, void *buffer,
                                                     enum MHD_ResponseMemoryMode mode)
{
    pthread_once(&once, resolve);
    struct MHD_Response *resp = real_create(size, buffer, mode);
    if (resp && mode == MHD_RESPMEM_PERSISTENT && size >= sizeof MHD_PAGE_PREFIX - 1 &&
        memcmp(buffer, MHD_PAGE_PREFIX, sizeof MHD_PAGE_PREFIX - 1) == 0) {
        tls_page = resp;
        page_text(buffer, size, tls_text, sizeof tls_text);
    }
    return resp;
}

enum MHD_Result MHD_queue_response(struct MHD_Connection *connection, unsigned int status_code,
                                   struct MHD_Response *response)
{
    pthread_once(&once, resolve);
    if (!response || response != tls_page)
        return real_queue(connection, status_code, response);
    tls_page = NULL;
    json_t *err = hr_api_error_json(code_of(status_code), tls_text);
    char *body = err ? json_dumps(err, JSON_COMPACT) : NULL;
    json_decref(err);
    struct MHD_Response *json =
        body ? real_create(strlen(body), body, MHD_RESPMEM_MUST_FREE) : NULL;
    if (!json) { /* out of memory: the page is better than nothing */
        free(body);
        return real_queue(connection, status_code, response);
    }
    MHD_add_response_header(json, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    enum MHD_Result ret = real_queue(connection, status_code, json);
    MHD_destroy_response(json); /* the connection holds its own reference */
    return ret;
}

/*
 * httpc.h - a small HTTP/1.1 client for one GET whose body goes to a file
 * descriptor: how a cluster node downloads a snapshot from a peer
 * (cluster.c). Plain sockets (IPv4 and IPv6 through getaddrinfo), one
 * request per connection ("Connection: close"), bounded: a connect
 * timeout, an idle timeout for every read and write, a deadline for the
 * whole exchange, a cap on the body's bytes. The body is delimited by
 * Content-Length, chunked Transfer-Encoding, or the end of the connection.
 * No TLS, no redirects, no proxies: peers of one cluster on a private
 * network.
 *
 * Threads: any thread; no shared state.
 */
#ifndef HOGREC_HTTPC_H
#define HOGREC_HTTPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hogrec/common.h"

#define HR_HTTPC_HEADERS_MAX 8192 /* bytes of the status line and headers */

typedef struct {
    int connect_ms;     /* connect timeout */
    int idle_ms;        /* longest wait for any one read or write */
    int total_ms;       /* the whole exchange */
    uint64_t max_body;  /* bytes of body accepted (more: HR_EFULL) */
} hr_httpc_limits;

/* connect 2 s, idle 10 s, total 120 s, body 4 GiB. */
void hr_httpc_limits_defaults(hr_httpc_limits *l);

typedef struct {
    int status;                          /* the status code */
    char head[HR_HTTPC_HEADERS_MAX + 1]; /* the header lines after the status line, raw */
    uint64_t body_bytes;                 /* body bytes written to the fd (2xx) */
    char error_body[512];                /* a non-2xx answer's first body bytes, NUL-terminated */
} hr_httpc_response;

/* GET http://<hostport><path> ("HOST:PORT", "[V6]:PORT"; path borrowed)
 * with the header "Authorization: <authorization>" when that is not NULL.
 * A 2xx answer's body is written to fd (borrowed, left open, written from
 * its current offset); any other answer's first bytes go to
 * out->error_body and nothing is written to fd. HR_OK when an answer came
 * whole (whatever its status: check out->status); HR_EIO (cannot connect,
 * the connection closed before the end of the body, a timeout: the
 * message says which), HR_ECORRUPT (not an HTTP/1.x answer, a bad chunk),
 * HR_EFULL (headers over HR_HTTPC_HEADERS_MAX or body over max_body),
 * HR_EINVAL (hostport not HOST:PORT). lim NULL: the defaults. */
hr_status hr_httpc_get(const char *hostport, const char *path, const char *authorization, int fd,
                       const hr_httpc_limits *lim, hr_httpc_response *out, hr_error *err);

/* The value of header `name` (case-insensitive) of a response, copied into
 * out (cap bytes, NUL-terminated, surrounding blanks removed); false when
 * absent or longer than cap - 1. */
bool hr_httpc_header(const hr_httpc_response *r, const char *name, char *out, size_t cap);

#endif

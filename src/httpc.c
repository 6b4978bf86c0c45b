/*
 * httpc.c - one bounded HTTP/1.1 GET into a file descriptor; see httpc.h.
 *
 * DESIGN. A non-blocking socket and poll() for every wait: each wait is
 * bounded by the idle timeout and by what is left of the whole deadline.
 * Reads go through one buffer (`rd`): the header block is read up to its
 * blank line, then the body is copied to the fd straight from the buffer,
 * by Content-Length, by chunks (sizes, extensions ignored, trailers
 * skipped), or up to the end of the connection.
 */
#include "hogrec/httpc.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#define RD_BYTES 65536

typedef struct {
    int fd;               /* the socket */
    uint64_t deadline_ns; /* of the whole exchange */
    int idle_ms;
    uint8_t buf[RD_BYTES];
    size_t at, end;       /* unread bytes: buf[at, end) */
    bool eof;
    hr_error *err;
} conn;

void hr_httpc_limits_defaults(hr_httpc_limits *l)
{
    l->connect_ms = 2000;
    l->idle_ms = 10000;
    l->total_ms = 120000;
    l->max_body = 4ull << 30;
}

/* Waits for events on the socket, bounded by the idle timeout and the
 * deadline. HR_EIO on a timeout. */
static hr_status wait_for(conn *c, short events, int first_ms, const char *what)
{
    uint64_t now = hr_now_ns();
    if (now >= c->deadline_ns)
        return hr_error_set(c->err, HR_EIO, NULL, "timed out (whole exchange) %s", what);
    uint64_t left_ms = (c->deadline_ns - now) / 1000000u + 1;
    int ms = first_ms > 0 ? first_ms : c->idle_ms;
    if ((uint64_t)ms > left_ms)
        ms = (int)left_ms;
    struct pollfd p = {c->fd, events, 0};
    int n;
    do
        n = poll(&p, 1, ms);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return hr_error_set(c->err, HR_EIO, NULL, "poll %s: %s", what, strerror(errno));
    if (n == 0)
        return hr_error_set(c->err, HR_EIO, NULL, "timed out after %d ms %s", ms, what);
    return HR_OK;
}

/* Refills buf when it is empty. HR_OK with c->eof set at the end. */
static hr_status fill(conn *c)
{
    if (c->at < c->end || c->eof)
        return HR_OK;
    c->at = c->end = 0;
    for (;;) {
        ssize_t n = recv(c->fd, c->buf, sizeof c->buf, 0);
        if (n > 0) {
            c->end = (size_t)n;
            return HR_OK;
        }
        if (n == 0) {
            c->eof = true;
            return HR_OK;
        }
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return hr_error_set(c->err, HR_EIO, NULL, "receiving: %s", strerror(errno));
        hr_status st = wait_for(c, POLLIN, 0, "waiting for the answer");
        if (st != HR_OK)
            return st;
    }
}

static hr_status send_all(conn *c, const char *p, size_t len)
{
    while (len > 0) {
        ssize_t n = send(c->fd, p, len, MSG_NOSIGNAL);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
            return hr_error_set(c->err, HR_EIO, NULL, "sending the request: %s", strerror(errno));
        hr_status st = wait_for(c, POLLOUT, 0, "sending the request");
        if (st != HR_OK)
            return st;
    }
    return HR_OK;
}

/* Reads one line (up to CRLF or LF, which is dropped) into out. */
static hr_status read_line(conn *c, char *out, size_t cap, size_t *len)
{
    *len = 0;
    for (;;) {
        hr_status st = fill(c);
        if (st != HR_OK)
            return st;
        if (c->at == c->end)
            return hr_error_set(c->err, HR_EIO, NULL, "the connection closed mid-line");
        char ch = (char)c->buf[c->at++];
        if (ch == '\n')
            break;
        if (*len + 1 >= cap)
            return hr_error_set(c->err, HR_EFULL, NULL, "a line of the answer is too long");
        out[(*len)++] = ch;
    }
    if (*len && out[*len - 1] == '\r')
        (*len)--;
    out[*len] = 0;
    return HR_OK;
}

static hr_status write_all(int fd, const uint8_t *p, size_t len, hr_error *err)
{
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return hr_error_set(err, HR_EIO, NULL, "writing the body: %s", strerror(errno));
        p += n;
        len -= (size_t)n;
    }
    return HR_OK;
}

/* Where the body goes: the fd (2xx) or the error text. */
typedef struct {
    int fd;
    hr_httpc_response *out;
    bool ok;          /* 2xx */
    uint64_t max;
    size_t err_len;
} sink;

static hr_status sink_put(sink *s, const uint8_t *p, size_t n, hr_error *err)
{
    if (s->out->body_bytes + n > s->max)
        return hr_error_set(err, HR_EFULL, NULL, "the body exceeds %" PRIu64 " bytes", s->max);
    s->out->body_bytes += n;
    if (s->ok)
        return write_all(s->fd, p, n, err);
    size_t room = sizeof s->out->error_body - 1 - s->err_len;
    size_t k = n < room ? n : room;
    memcpy(s->out->error_body + s->err_len, p, k);
    s->err_len += k;
    s->out->error_body[s->err_len] = 0;
    return HR_OK;
}

/* Copies n body bytes (UINT64_MAX: to the end of the connection). */
static hr_status copy_body(conn *c, sink *s, uint64_t n)
{
    bool to_eof = n == UINT64_MAX;
    while (n > 0) {
        hr_status st = fill(c);
        if (st != HR_OK)
            return st;
        if (c->at == c->end) {
            if (to_eof)
                return HR_OK;
            return hr_error_set(c->err, HR_EIO, NULL,
                                "the connection closed with %" PRIu64 " body bytes missing", n);
        }
        size_t k = c->end - c->at;
        if (!to_eof && k > n)
            k = (size_t)n;
        if ((st = sink_put(s, c->buf + c->at, k, c->err)) != HR_OK)
            return st;
        c->at += k;
        if (!to_eof)
            n -= k;
    }
    return HR_OK;
}

static hr_status copy_chunked(conn *c, sink *s)
{
    char line[256];
    size_t len;
    for (;;) {
        hr_status st = read_line(c, line, sizeof line, &len);
        if (st != HR_OK)
            return st;
        char *end;
        errno = 0;
        unsigned long long size = strtoull(line, &end, 16);
        if (end == line || errno || (*end && *end != ';' && *end != ' ' && *end != '\t'))
            return hr_error_set(c->err, HR_ECORRUPT, NULL, "a bad chunk size line '%.40s'", line);
        if (size == 0)
            break;
        if ((st = copy_body(c, s, size)) != HR_OK)
            return st;
        if ((st = read_line(c, line, sizeof line, &len)) != HR_OK)
            return st;
        if (len != 0)
            return hr_error_set(c->err, HR_ECORRUPT, NULL, "a chunk not followed by CRLF");
    }
    /* trailers up to the blank line */
    for (int i = 0; i < 64; i++) {
        hr_status st = read_line(c, line, sizeof line, &len);
        if (st != HR_OK)
            return st;
        if (len == 0)
            return HR_OK;
    }
    return hr_error_set(c->err, HR_EFULL, NULL, "too many trailers");
}

/* Splits "HOST:PORT" / "[V6]:PORT". */
static bool split_hostport(const char *hp, char *host, size_t hcap, char *port, size_t pcap)
{
    const char *colon;
    size_t hl;
    if (hp[0] == '[') {
        const char *close = strchr(hp, ']');
        if (!close || close[1] != ':')
            return false;
        hp++;
        hl = (size_t)(close - hp);
        colon = close + 1;
    } else {
        colon = strrchr(hp, ':');
        if (!colon)
            return false;
        hl = (size_t)(colon - hp);
    }
    size_t pl = strlen(colon + 1);
    if (hl == 0 || hl >= hcap || pl == 0 || pl >= pcap || strspn(colon + 1, "0123456789") != pl)
        return false;
    memcpy(host, hp, hl);
    host[hl] = 0;
    memcpy(port, colon + 1, pl + 1);
    return true;
}

/* A connected non-blocking socket, or -1 with err. */
static int connect_to(const char *host, const char *port, int connect_ms, hr_error *err)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0) {
        hr_error_set(err, HR_EIO, NULL, "cannot resolve %s: %s", host, gai_strerror(rc));
        return -1;
    }
    int fd = -1;
    hr_error_set(err, HR_EIO, NULL, "cannot connect to %s:%s", host, port);
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0)
            continue;
        if (connect(fd, a->ai_addr, a->ai_addrlen) == 0)
            break;
        if (errno == EINPROGRESS) {
            struct pollfd p = {fd, POLLOUT, 0};
            int n;
            do
                n = poll(&p, 1, connect_ms);
            while (n < 0 && errno == EINTR);
            int soerr = 0;
            socklen_t sl = sizeof soerr;
            if (n > 0 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) == 0 && soerr == 0)
                break;
            hr_error_set(err, HR_EIO, NULL, "cannot connect to %s:%s: %s", host, port,
                         n == 0 ? "timed out" : strerror(soerr ? soerr : errno));
        } else {
            hr_error_set(err, HR_EIO, NULL, "cannot connect to %s:%s: %s", host, port,
                         strerror(errno));
        }
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    return fd;
}

hr_status hr_httpc_get(const char *hostport, const char *path, const char *authorization, int fd,
                       const hr_httpc_limits *lim, hr_httpc_response *out, hr_error *err)
{
    hr_httpc_limits dl;
    if (!lim) {
        hr_httpc_limits_defaults(&dl);
        lim = &dl;
    }
    memset(out, 0, sizeof *out);
    char host[256], port[16];
    if (!split_hostport(hostport, host, sizeof host, port, sizeof port))
        return hr_error_set(err, HR_EINVAL, NULL, "'%s' is not HOST:PORT", hostport);
    conn *c = calloc(1, sizeof *c);
    if (!c)
        return hr_error_set(err, HR_ENOMEM, NULL, "out of memory");
    c->err = err;
    c->idle_ms = lim->idle_ms;
    c->deadline_ns = hr_now_ns() + (uint64_t)lim->total_ms * 1000000u;
    c->fd = connect_to(host, port, lim->connect_ms, err);
    hr_status st = c->fd < 0 ? HR_EIO : HR_OK;
    char *req = NULL;
    if (st == HR_OK) {
        const char *fmt = strchr(host, ':') ? "[%s]:%s" : "%s:%s";
        char hosthdr[300];
        snprintf(hosthdr, sizeof hosthdr, fmt, host, port);
        size_t cap = strlen(path) + strlen(hosthdr) + (authorization ? strlen(authorization) : 0) +
                     160;
        req = malloc(cap);
        if (!req)
            st = hr_error_set(err, HR_ENOMEM, NULL, "out of memory");
        else {
            int n = snprintf(req, cap,
                             "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n"
                             "Accept: */*\r\n%s%s%s\r\n",
                             path, hosthdr, authorization ? "Authorization: " : "",
                             authorization ? authorization : "", authorization ? "\r\n" : "");
            st = send_all(c, req, (size_t)n);
        }
    }
    /* status line */
    char line[1024];
    size_t len = 0;
    if (st == HR_OK && (st = read_line(c, line, sizeof line, &len)) == HR_OK) {
        int major = 0, minor = 0, code = 0;
        if (sscanf(line, "HTTP/%d.%d %d", &major, &minor, &code) != 3 || major != 1 ||
            code < 100 || code > 999)
            st = hr_error_set(err, HR_ECORRUPT, NULL, "not an HTTP/1.x answer: '%.60s'", line);
        out->status = code;
    }
    /* headers */
    size_t hl = 0;
    while (st == HR_OK) {
        if ((st = read_line(c, line, sizeof line, &len)) != HR_OK)
            break;
        if (len == 0)
            break;
        if (hl + len + 1 > HR_HTTPC_HEADERS_MAX) {
            st = hr_error_set(err, HR_EFULL, NULL, "the answer's headers exceed %d bytes",
                              HR_HTTPC_HEADERS_MAX);
            break;
        }
        memcpy(out->head + hl, line, len);
        hl += len;
        out->head[hl++] = '\n';
        out->head[hl] = 0;
    }
    if (st == HR_OK) {
        sink s = {fd, out, out->status >= 200 && out->status < 300, lim->max_body, 0};
        char v[64];
        if (hr_httpc_header(out, "Transfer-Encoding", v, sizeof v)) {
            if (strcasecmp(v, "chunked") != 0)
                st = hr_error_set(err, HR_ECORRUPT, NULL, "Transfer-Encoding %s", v);
            else
                st = copy_chunked(c, &s);
        } else if (hr_httpc_header(out, "Content-Length", v, sizeof v)) {
            char *end;
            errno = 0;
            unsigned long long n = strtoull(v, &end, 10);
            if (end == v || *end || errno)
                st = hr_error_set(err, HR_ECORRUPT, NULL, "Content-Length '%s'", v);
            else
                st = copy_body(c, &s, n);
        } else if (out->status != 204 && out->status != 304 && out->status >= 200) {
            st = copy_body(c, &s, UINT64_MAX);
        }
    }
    free(req);
    if (c->fd >= 0)
        close(c->fd);
    free(c);
    return st;
}

bool hr_httpc_header(const hr_httpc_response *r, const char *name, char *out, size_t cap)
{
    size_t nl = strlen(name);
    for (const char *p = r->head; *p;) {
        const char *eol = strchr(p, '\n');
        size_t len = eol ? (size_t)(eol - p) : strlen(p);
        if (len > nl && p[nl] == ':' && strncasecmp(p, name, nl) == 0) {
            const char *v = p + nl + 1, *e = p + len;
            while (v < e && (*v == ' ' || *v == '\t'))
                v++;
            while (e > v && (e[-1] == ' ' || e[-1] == '\t'))
                e--;
            if ((size_t)(e - v) >= cap)
                return false;
            memcpy(out, v, (size_t)(e - v));
            out[e - v] = 0;
            return true;
        }
        p += len + (eol ? 1 : 0);
    }
    return false;
}

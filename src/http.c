/*
 * http: libmicrohttpd inside libevent.  See http.h.
 *
 * The glue is small on purpose (hiredis's adapters/libevent.h is the
 * model): one event for MHD's epoll fd, one timer for MHD's timeouts, and
 * event_active() after MHD_resume_connection(), because in external mode
 * MHD 0.9.7x does not wake the loop by itself on resume.
 */
#include "capgate/http.h"

#include <arpa/inet.h>
#include <event2/event.h>
#include <gnutls/gnutls.h>
#include <microhttpd.h>
#include <stdarg.h>
#include <sys/socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "capgate/clock.h"
#include "capgate/connlimit.h"
#include "capgate/counter.h"
#include "capgate/log.h"

/* Bytes of an oversized chunked body we read and throw away so the client
 * can see its 413; past this the connection is simply closed. */
#define DISCARD_MAX (1u << 20)

/* Where a request is.  One request per connection at a time (HTTP/1.1). */
enum request_state {
    REQ_READING,      /* receiving headers/body */
    REQ_HANDLING,     /* inside the handler (synchronous part) */
    REQ_SUSPENDED,    /* handler returned without answering: waiting for an async answer */
    REQ_ANSWERED,     /* http_respond() done; the response waits to be queued */
    REQ_QUEUED,       /* handed to MHD; freed when MHD reports completion */
};

/* A connection between its start and its close, for the header timeout:
 * MHD's own connection_timeout is an idle timeout, which a client sending
 * a byte a second never reaches (slowloris).  Linked on its server while
 * open; MHD keeps it as the connection's socket context. */
struct http_conn {
    struct http_conn *prev, *next;
    struct MHD_Connection *conn;
    uint64_t deadline_us;     /* the headers of the next request are due by then */
};

struct http_server {
    struct event_base *base;
    struct connlimit *limits;
    struct MHD_Daemon *mhd;
    struct event *io;         /* MHD's epoll fd readable */
    struct event *timer;      /* MHD's next timeout */
    struct event *sweep;      /* closes connections past their header deadline */
    struct http_conn *conns;  /* every open connection */
    uint64_t header_timeout_us, idle_timeout_us;
    bool tls;
    http_handler *handler;
    void *handler_arg;
    size_t max_body;
    unsigned active;          /* requests begun, not completed */
    unsigned header_timeouts; /* connections closed by the header deadline */
    bool quiesced;
};

struct http_request {
    struct http_server *srv;
    struct MHD_Connection *conn;
    const char *method;       /* MHD's strings, valid for the request */
    const char *path;
    enum request_state state;
    char *body;
    size_t len, cap;
    size_t discarded;
    bool too_large;
    const char *framing;      /* why the framing is refused (static), or NULL */
    uint64_t started_us;
    unsigned status;
    struct MHD_Response *response;
    char user[40];            /* pseudonym, for the access log */
    const char *route;        /* what the router matched (static), for the access log */
    bool begun;               /* the access handler has seen it */
    char uri[];               /* as the client sent it, query included */
};

/* ---- the loop glue ------------------------------------------------------ */

static void rearm_timer(struct http_server *srv)
{
    MHD_UNSIGNED_LONG_LONG ms;
    if (MHD_get_timeout(srv->mhd, &ms) == MHD_YES) {
        struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000) };
        evtimer_add(srv->timer, &tv);
    } else {
        evtimer_del(srv->timer);
    }
}

static void run_mhd(evutil_socket_t fd, short what, void *arg)
{
    struct http_server *srv = arg;
    (void)fd; (void)what;
    MHD_run(srv->mhd);
    rearm_timer(srv);
}

/* ---- requests ----------------------------------------------------------- */

static enum MHD_Result queue_answer(struct http_request *req)
{
    enum MHD_Result rc = MHD_queue_response(req->conn, req->status, req->response);
    MHD_destroy_response(req->response);
    req->response = NULL;
    req->state = REQ_QUEUED;
    return rc;
}

static bool body_append(struct http_request *req, const char *data, size_t n)
{
    if (req->len + n > req->srv->max_body) {
        req->too_large = true;
        free(req->body);
        req->body = NULL;
        req->len = req->cap = 0;
        return false;
    }
    if (req->len + n + 1 > req->cap) {
        size_t cap = req->cap ? req->cap : 1024;
        while (cap < req->len + n + 1)
            cap *= 2;
        char *p = realloc(req->body, cap);
        if (!p)
            return false;
        req->body = p;
        req->cap = cap;
    }
    memcpy(req->body + req->len, data, n);
    req->len += n;
    req->body[req->len] = '\0';
    return true;
}

/* ---- framing ------------------------------------------------------------
 *
 * MHD 0.9.75 is lenient where a proxy in front may read the same bytes
 * differently (request smuggling, RFC 9112 sections 3.2, 5.1 and 6): it takes
 * the first of two Content-Length headers, lets Transfer-Encoding: chunked
 * win over Content-Length, accepts HTTP/1.1 without Host, and reads a body
 * of any other transfer coding until the client closes.  Every one of those
 * reaches the access handler with the headers complete, so they are refused
 * here, as JSON (router.c answers http_framing_error()), and the connection
 * is closed after the answer: whatever follows on it cannot be framed.
 * (What MHD refuses itself, before capgate sees the request, is listed in
 * docs/internals.md, "What libmicrohttpd answers by itself".) */

struct framing_scan {
    unsigned content_length, transfer_encoding, host;
    bool chunked;             /* the only Transfer-Encoding is exactly "chunked" */
    bool bad_name;            /* whitespace inside a header name */
};

static bool is_token(const char *value, const char *token)
{
    size_t n = strlen(token);
    if (strncasecmp(value, token, n) != 0)
        return false;
    for (value += n; *value == ' ' || *value == '\t'; value++)
        ;
    return *value == '\0';
}

static enum MHD_Result framing_iter(void *cls, enum MHD_ValueKind kind, const char *key,
                                    const char *value)
{
    struct framing_scan *f = cls;
    (void)kind;
    if (strpbrk(key, " \t"))
        f->bad_name = true;      /* "Content-Length : 5" would be another header to MHD */
    if (strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH) == 0) {
        f->content_length++;
    } else if (strcasecmp(key, MHD_HTTP_HEADER_TRANSFER_ENCODING) == 0) {
        f->transfer_encoding++;
        f->chunked = value && is_token(value, "chunked");
    } else if (strcasecmp(key, MHD_HTTP_HEADER_HOST) == 0) {
        f->host++;
    }
    return MHD_YES;
}

/* NULL when the request can only be read one way; else why not. */
static const char *framing_problem(struct MHD_Connection *conn, const char *version)
{
    struct framing_scan f = { 0 };
    bool http10 = strcmp(version, MHD_HTTP_VERSION_1_0) == 0;

    MHD_get_connection_values(conn, MHD_HEADER_KIND, framing_iter, &f);
    if (f.bad_name)
        return "whitespace in a header name";
    if (f.content_length > 1)
        return "more than one Content-Length header";
    if (f.transfer_encoding && f.content_length)
        return "both Transfer-Encoding and Content-Length";
    if (f.transfer_encoding > 1 || (f.transfer_encoding && !f.chunked))
        return "the only transfer coding accepted is Transfer-Encoding: chunked";
    if (f.transfer_encoding && http10)
        return "Transfer-Encoding in an HTTP/1.0 request";
    if (f.host > 1)
        return "more than one Host header";
    if (!f.host && !http10)
        return "an HTTP/1.1 request needs a Host header";
    return NULL;
}

static enum MHD_Result run_handler(struct http_request *req)
{
    req->state = REQ_HANDLING;
    req->srv->handler(req, req->srv->handler_arg);
    if (req->state == REQ_ANSWERED)
        return queue_answer(req);
    /* The answer comes later: park the connection until http_respond(). */
    req->state = REQ_SUSPENDED;
    MHD_suspend_connection(req->conn);
    return MHD_YES;
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version,
                                 const char *upload_data, size_t *upload_data_size,
                                 void **req_cls)
{
    struct http_server *srv = cls;
    struct http_request *req = *req_cls;

    if (!req)
        return MHD_NO;      /* the URI callback could not allocate it */
    if (!req->begun) {
        /* Headers are in; the body (if any) follows in later calls. */
        req->begun = true;
        req->srv = srv;
        req->conn = conn;
        req->method = method;
        req->path = url;
        req->started_us = clock_now_us();
        COUNTER_INC(srv->active);
        if ((req->framing = framing_problem(conn, version)) != NULL)
            return run_handler(req);     /* refused at once: the body is never read */
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                     MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && strtoull(cl, NULL, 10) > srv->max_body) {
            /* Refuse at once: the body is never read. */
            req->too_large = true;
            return run_handler(req);
        }
        return MHD_YES;
    }

    if (*upload_data_size) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (req->state != REQ_READING)
            return MHD_YES;        /* answered early; ignore the rest */
        if (req->too_large) {
            req->discarded += n;
            return req->discarded > DISCARD_MAX ? MHD_NO : MHD_YES;
        }
        if (!body_append(req, upload_data, n) && !req->too_large)
            return MHD_NO;         /* out of memory */
        return MHD_YES;
    }

    switch (req->state) {
    case REQ_READING:
        return run_handler(req);
    case REQ_ANSWERED:          /* resumed after an async answer */
        return queue_answer(req);
    default:
        return MHD_YES;
    }
}

/* MHD's first sight of a request: keep the raw URI (transparent routes
 * forward the query string as it came).  The pointer returned is the
 * request's context from then on. */
static void *on_uri(void *cls, const char *uri, struct MHD_Connection *conn)
{
    (void)cls; (void)conn;
    size_t n = strlen(uri);
    if (n > 8192)
        n = 8192;
    struct http_request *req = calloc(1, sizeof *req + n + 1);
    if (req)
        memcpy(req->uri, uri, n);
    return req;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct http_server *srv = cls;
    struct http_request *req = *req_cls;
    (void)toe;

    /* The next request on this connection may idle for connection_timeout
     * and must then bring its headers within header_timeout. */
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    struct http_conn *hc = ci ? ci->socket_context : NULL;
    if (hc)
        hc->deadline_us = clock_now_us() + srv->idle_timeout_us + srv->header_timeout_us;
    if (!req)
        return;
    if (req->response)
        MHD_destroy_response(req->response);
    bool begun = req->begun;
    free(req->body);
    free(req);
    *req_cls = NULL;
    if (begun)
        COUNTER_ADD(srv->active, (unsigned)-1);
}

void http_respond(struct http_request *req, unsigned status, const char *content_type,
                  const char *body, size_t len, const char *const *headers)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (resp) {
        if (content_type)
            MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
        for (size_t k = 0; headers && headers[k] && headers[k + 1]; k += 2)
            MHD_add_response_header(resp, headers[k], headers[k + 1]);
        /* Nothing after a request of doubtful framing can be framed either. */
        if (req->framing)
            MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    }
    bool was_suspended = req->state == REQ_SUSPENDED;
    req->response = resp;
    req->status = status;
    req->state = REQ_ANSWERED;
    if (!resp) {
        /* Without a response MHD closes the connection; nothing else to do. */
        req->response = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
        req->status = 500;
    }
    if (was_suspended) {
        MHD_resume_connection(req->conn);
        event_active(req->srv->io, EV_READ, 0);
    }
}

const char *http_method(const struct http_request *req) { return req->method; }
const char *http_path(const struct http_request *req) { return req->path; }
bool http_body_too_large(const struct http_request *req) { return req->too_large; }
const char *http_framing_error(const struct http_request *req) { return req->framing; }
uint64_t http_started_us(const struct http_request *req) { return req->started_us; }

void http_note_user(struct http_request *req, const char *pseudonym)
{
    size_t n = strnlen(pseudonym, sizeof req->user - 1);   /* (no printf: every request) */
    memcpy(req->user, pseudonym, n);
    req->user[n] = '\0';
}

const char *http_noted_user(const struct http_request *req)
{
    return req->user;
}

void http_note_route(struct http_request *req, const char *route)
{
    req->route = route;
}

const char *http_noted_route(const struct http_request *req)
{
    return req->route ? req->route : "(other)";
}

const char *http_client_addr(const struct http_request *req, char *buf, size_t len)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(req->conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    buf[0] = '\0';
    if (!ci || !ci->client_addr)
        return buf;
    const struct sockaddr *sa = ci->client_addr;
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, buf, (socklen_t)len);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, buf, (socklen_t)len);
    return buf;
}

const char *http_raw_query(const struct http_request *req)
{
    const char *q = strchr(req->uri, '?');
    return q ? q + 1 : "";
}

struct foreach_ctx {
    http_header_fn *fn;
    void *arg;
};

static enum MHD_Result header_iter(void *cls, enum MHD_ValueKind kind, const char *key,
                                   const char *value)
{
    struct foreach_ctx *c = cls;
    (void)kind;
    c->fn(c->arg, key, value ? value : "");
    return MHD_YES;
}

void http_headers_foreach(const struct http_request *req, http_header_fn *fn, void *arg)
{
    struct foreach_ctx c = { fn, arg };
    MHD_get_connection_values(req->conn, MHD_HEADER_KIND, header_iter, &c);
}

const char *http_header(const struct http_request *req, const char *name)
{
    return MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, name);
}

const char *http_query(const struct http_request *req, const char *name)
{
    return MHD_lookup_connection_value(req->conn, MHD_GET_ARGUMENT_KIND, name);
}

const char *http_body(const struct http_request *req, size_t *len)
{
    *len = req->len;
    return req->body ? req->body : "";
}

/* ---- plain HTTP on the TLS port ------------------------------------------
 *
 * GnuTLS reads the first bytes of a TLS connection; MHD then logs any failed
 * handshake as "Error: received handshake message out of context", which
 * tells an operator nothing.  So the first read of every TLS connection goes
 * through tls_pull(): a TLS record starts with its type (20..24) and SSLv2's
 * hello with a byte >= 0x80, while an HTTP request starts with a method in
 * capitals.  Such a client is answered in plain HTTP (a JSON 400 saying to
 * use https://), the line logged says so, and MHD's line for that handshake
 * is dropped.  MHD keeps the socket as GnuTLS's transport (an int), so the
 * per-connection "first read still to come" mark is a byte per fd. */
#define TLS_WATCHED_FDS 65536          /* past it, no friendly line: harmless */
static unsigned char tls_first_read[TLS_WATCHED_FDS];
static _Thread_local bool tls_plain_http_seen;   /* one MHD_run: this thread's */

static bool looks_like_http(const unsigned char *b, size_t n)
{
    if (n == 0 || b[0] < 'A' || b[0] > 'Z')
        return false;
    for (size_t k = 1; k < n && k < 8; k++)
        if (b[k] == ' ')
            return true;
        else if (b[k] < 'A' || b[k] > 'Z')
            return false;
    return true;
}

static void answer_plain_http(int fd)
{
    static const char answer[] =
        "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
        "Connection: close\r\nContent-Length: 80\r\n\r\n"
        "{\"error\":{\"code\":\"bad_request\",\"message\":\"this port speaks TLS: use https://\"}}\n";
    char drain[4096];
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    char addr[INET6_ADDRSTRLEN] = "?";

    /* The rest of the request is read first: closing a socket with unread
     * bytes resets it, and the client might lose the answer. */
    while (recv(fd, drain, sizeof drain, MSG_DONTWAIT) > 0)
        ;
    if (send(fd, answer, sizeof answer - 1, MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
        /* a full or broken socket: the log line is what matters */
    }
    if (getpeername(fd, (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET)
            inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, addr, sizeof addr);
        else if (ss.ss_family == AF_INET6)
            inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, addr, sizeof addr);
    }
    log_warn_limited("plain HTTP on the TLS port", "client=%s hint=\"clients must use https://\"",
                     addr);
}

static ssize_t tls_pull(gnutls_transport_ptr_t ptr, void *buf, size_t len)
{
    int fd = (int)(intptr_t)ptr;
    ssize_t n = recv(fd, buf, len, 0);     /* errno is GnuTLS's to read */
    if (n > 0 && fd >= 0 && fd < TLS_WATCHED_FDS &&
        __atomic_exchange_n(&tls_first_read[fd], 0, __ATOMIC_RELAXED) &&
        looks_like_http(buf, (size_t)n)) {
        answer_plain_http(fd);
        tls_plain_http_seen = true;
    }
    return n;
}

static void tls_watch(struct MHD_Connection *conn, bool start)
{
    const union MHD_ConnectionInfo *fi =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!fi || fi->connect_fd < 0 || fi->connect_fd >= TLS_WATCHED_FDS)
        return;
    if (start) {
        const union MHD_ConnectionInfo *si =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_GNUTLS_SESSION);
        if (!si || !si->tls_session)
            return;
        gnutls_transport_set_pull_function((gnutls_session_t)si->tls_session, tls_pull);
    }
    __atomic_store_n(&tls_first_read[fi->connect_fd], start, __ATOMIC_RELAXED);
}

/* ---- the server --------------------------------------------------------- */

/* Every worker's listener asks the same process-wide table. */
static enum MHD_Result on_accept(void *cls, const struct sockaddr *addr, socklen_t len)
{
    struct http_server *srv = cls;
    (void)len;
    return !srv->limits || connlimit_take(srv->limits, addr) ? MHD_YES : MHD_NO;
}

static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_ctx,
                          enum MHD_ConnectionNotificationCode toe)
{
    struct http_server *srv = cls;
    struct http_conn *hc = *socket_ctx;
    if (srv->tls)
        tls_watch(conn, toe == MHD_CONNECTION_NOTIFY_STARTED);
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        /* Without memory the connection simply has no header deadline. */
        if ((hc = calloc(1, sizeof *hc)) != NULL) {
            hc->conn = conn;
            hc->deadline_us = clock_now_us() + srv->header_timeout_us;
            hc->next = srv->conns;
            if (srv->conns)
                srv->conns->prev = hc;
            srv->conns = hc;
        }
        *socket_ctx = hc;
        return;
    }
    if (toe != MHD_CONNECTION_NOTIFY_CLOSED)
        return;
    if (hc) {
        if (hc->prev)
            hc->prev->next = hc->next;
        else
            srv->conns = hc->next;
        if (hc->next)
            hc->next->prev = hc->prev;
        free(hc);
        *socket_ctx = NULL;
    }
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (srv->limits && ci && ci->client_addr)
        connlimit_release(srv->limits, ci->client_addr);
    /* At MHD's own connection limit it stops watching the listening socket
     * and looks again only at its next run: make sure there is one (not
     * while the server is being freed: then io is gone). */
    if (srv->io)
        event_active(srv->io, EV_READ, 0);
}

#define SWEEP_MS 250

/* Once every SWEEP_MS: a connection whose request headers are not all in by
 * its deadline is shut down.  MHD then reads end-of-file, closes it the
 * usual way (its callbacks run, its connection slot is released) and the fd
 * stays MHD's until then, so it cannot be reused under it.  A request whose
 * headers are in (being handled, suspended, answering) has no deadline. */
static void on_sweep(evutil_socket_t fd, short what, void *arg)
{
    struct http_server *srv = arg;
    uint64_t now = clock_now_us();
    unsigned closed = 0;
    (void)fd; (void)what;

    for (struct http_conn *hc = srv->conns; hc; hc = hc->next) {
        if (now < hc->deadline_us ||
            MHD_get_connection_info(hc->conn, MHD_CONNECTION_INFO_REQUEST_HEADER_SIZE))
            continue;
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(hc->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (ci)
            shutdown(ci->connect_fd, SHUT_RDWR);
        hc->deadline_us = UINT64_MAX;      /* once */
        closed++;
    }
    if (closed) {
        COUNTER_ADD(srv->header_timeouts, closed);
        log_debug("header timeout", "connections=%u", closed);
        event_active(srv->io, EV_READ, 0);  /* let MHD see the ends now */
    }
}

static void mhd_logger(void *cls, const char *fmt, va_list ap)
{
    char msg[512];
    (void)cls;
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = '\0';
    /* MHD 0.9.75's words for every failed TLS handshake. */
    if (strstr(msg, "handshake message out of context")) {
        if (tls_plain_http_seen) {
            tls_plain_http_seen = false;       /* already said, in plain words */
            return;
        }
        log_warn_limited("tls handshake failed", "reason=\"no TLS version or cipher in common "
                         "(TLS 1.0 and 1.1 are refused), or not a TLS client\"");
        return;
    }
    log_warn("http", "detail=%s", msg);
}

struct http_server *http_server_start(struct event_base *base, const struct http_options *opt,
                                      http_handler *handler, void *arg,
                                      char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    unsigned flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;

    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, opt->host, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons(opt->port);
    } else if (inet_pton(AF_INET6, opt->host, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(opt->port);
        flags |= MHD_USE_IPv6;
    } else {
        snprintf(err, errlen, "listen: %s is not a numeric address", opt->host);
        return NULL;
    }

    struct http_server *srv = calloc(1, sizeof *srv);
    if (!srv) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    srv->base = base;
    srv->handler = handler;
    srv->handler_arg = arg;
    srv->max_body = opt->max_body_bytes;
    srv->header_timeout_us = (uint64_t)(opt->header_timeout_s ? opt->header_timeout_s : 10) * 1000000u;
    srv->idle_timeout_us = (uint64_t)opt->connection_timeout_s * 1000000u;

    /* TLS options travel as an MHD_OPTION_ARRAY, empty for plain HTTP. */
    struct MHD_OptionItem tls[4] = { { MHD_OPTION_END, 0, NULL } };
    if (opt->tls_cert && opt->tls_key) {
        flags |= MHD_USE_TLS;   /* GnuTLS inside libmicrohttpd */
        srv->tls = true;
        tls[0] = (struct MHD_OptionItem){ MHD_OPTION_HTTPS_MEM_CERT, 0, (void *)opt->tls_cert };
        tls[1] = (struct MHD_OptionItem){ MHD_OPTION_HTTPS_MEM_KEY, 0, (void *)opt->tls_key };
        /* MHD's own default is GnuTLS's NORMAL, TLS 1.0 and 1.1 included. */
        tls[2] = (struct MHD_OptionItem){
            MHD_OPTION_HTTPS_PRIORITIES, 0,
            (void *)(opt->tls_priorities ? opt->tls_priorities
                                         : "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2") };
    }
    srv->limits = opt->limits;
    srv->mhd = MHD_start_daemon(
        flags, opt->port, on_accept, srv, on_access, srv,
        /* First, or MHD warns on stderr and logs the rest its own way. */
        MHD_OPTION_EXTERNAL_LOGGER, mhd_logger, srv,
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, srv,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
        /* SO_REUSEPORT: a reload opens the new listener before closing the
         * old one, so the port never refuses a connection. */
        MHD_OPTION_LISTENING_ADDRESS_REUSE, (unsigned int)1,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned int)opt->max_connections,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned int)opt->max_connections_per_ip,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)opt->connection_timeout_s,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)opt->connection_memory_bytes,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, srv,
        MHD_OPTION_URI_LOG_CALLBACK, on_uri, srv,
        MHD_OPTION_SIGPIPE_HANDLED_BY_APP, 1,
        MHD_OPTION_LISTEN_BACKLOG_SIZE, 1024u,
        MHD_OPTION_ARRAY, tls,
        MHD_OPTION_END);
    if (!srv->mhd) {
        snprintf(err, errlen, "cannot listen on %s:%u (address in use, or not allowed)",
                 opt->host, opt->port);
        free(srv);
        return NULL;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(srv->mhd, MHD_DAEMON_INFO_EPOLL_FD);
    srv->io = event_new(base, info->epoll_fd, EV_READ | EV_PERSIST, run_mhd, srv);
    srv->timer = evtimer_new(base, run_mhd, srv);
    srv->sweep = event_new(base, -1, EV_PERSIST, on_sweep, srv);
    struct timeval every = { 0, SWEEP_MS * 1000 };
    if (!srv->io || !srv->timer || !srv->sweep || event_add(srv->io, NULL) != 0 ||
        event_add(srv->sweep, &every) != 0) {
        snprintf(err, errlen, "cannot watch the HTTP server's events");
        http_server_free(srv);
        return NULL;
    }
    rearm_timer(srv);
    return srv;
}

void http_server_handoff(struct http_server *from, struct http_server *to)
{
    if (from->quiesced)
        return;
    MHD_socket fd = MHD_quiesce_daemon(from->mhd);
    from->quiesced = true;
    event_active(from->io, EV_READ, 0);
    if (fd == MHD_INVALID_SOCKET)
        return;
    /* Connections the kernel already queued on the old socket would be
     * reset by close(): accept them here and give them to the new server. */
    for (;;) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        int c = accept4(fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (c < 0)
            break;
        /* On failure MHD closes the socket itself. */
        MHD_add_connection(to->mhd, c, (struct sockaddr *)&ss, len);
    }
    close(fd);
    event_active(to->io, EV_READ, 0);
}

void http_server_quiesce(struct http_server *srv)
{
    if (srv->quiesced)
        return;
    MHD_socket fd = MHD_quiesce_daemon(srv->mhd);
    if (fd != MHD_INVALID_SOCKET)
        close(fd);
    srv->quiesced = true;
    /* Let MHD notice at once, so idle keep-alive connections are closed. */
    event_active(srv->io, EV_READ, 0);
}

unsigned http_server_active_requests(const struct http_server *srv)
{
    return COUNTER_GET(srv->active);
}

unsigned http_server_header_timeouts(const struct http_server *srv)
{
    return COUNTER_GET(srv->header_timeouts);
}

unsigned http_server_connections(const struct http_server *srv)
{
    const union MHD_DaemonInfo *info =
        MHD_get_daemon_info(srv->mhd, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
    return info ? info->num_connections : 0;
}

void http_server_free(struct http_server *srv)
{
    if (!srv)
        return;
    if (srv->io)
        event_free(srv->io);
    srv->io = NULL;
    if (srv->timer)
        event_free(srv->timer);
    srv->timer = NULL;
    if (srv->sweep)
        event_free(srv->sweep);
    srv->sweep = NULL;
    if (srv->mhd)
        MHD_stop_daemon(srv->mhd);
    free(srv);
}

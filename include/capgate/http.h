/*
 * http: libmicrohttpd inside the libevent loop.
 *
 * MHD runs in "external select" mode with epoll: its epoll fd is watched by
 * one persistent libevent event, MHD_run() is called when it is readable,
 * and a timer is re-armed from MHD_get_timeout() after every run.  Bodies
 * are collected here, bounded by max_body_bytes (MHD has no such option).
 *
 * A request's life, as seen by the handler:
 *   the handler is called once, when the whole body has arrived (or as soon
 *   as the body is known to be too large: http_body_too_large() says so);
 *   it answers with http_respond(), right away or later from any callback
 *   of the same loop.  It must answer exactly once; after http_respond()
 *   the request pointer is gone.  While the answer is pending the
 *   connection is suspended: it costs no CPU, and MHD's own idle timeout
 *   does not run, so whoever owes the answer must bound its wait.
 */
#ifndef CAPGATE_HTTP_H
#define CAPGATE_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct event_base;
struct http_server;
struct http_request;

struct http_options {
    const char *host;                 /* numeric IPv4 or IPv6 */
    uint16_t port;
    size_t max_body_bytes;
    unsigned max_connections;
    unsigned max_connections_per_ip;  /* 0: unlimited */
    unsigned connection_timeout_s;    /* idle */
    unsigned header_timeout_s;        /* a request's headers are due within it (0: 10) */
    size_t connection_memory_bytes;
    const char *tls_cert, *tls_key;   /* PEM; both NULL: plain HTTP */
    const char *tls_priorities;       /* GnuTLS priority string (config.h says how it
                                         is built); NULL: "NORMAL" without TLS 1.0/1.1 */
    struct connlimit *limits;         /* process-wide limits, shared by workers */
};

typedef void http_handler(struct http_request *req, void *arg);

struct http_server *http_server_start(struct event_base *base, const struct http_options *opt,
                                      http_handler *handler, void *arg,
                                      char *err, size_t errlen);
/* Stops accepting connections (the listening socket is closed). */
void http_server_quiesce(struct http_server *srv);
/* The same, for a reload: connections already queued on FROM's socket are
 * accepted and handed to TO instead of being reset by the close. */
void http_server_handoff(struct http_server *from, struct http_server *to);
/* Requests begun and not yet finished, and open connections. */
unsigned http_server_active_requests(const struct http_server *srv);
unsigned http_server_connections(const struct http_server *srv);
/* Connections closed because their request headers came too slowly. */
unsigned http_server_header_timeouts(const struct http_server *srv);
/* Only when no request is active: MHD forbids stopping with suspended ones. */
void http_server_free(struct http_server *srv);

const char *http_method(const struct http_request *req);
const char *http_path(const struct http_request *req);
const char *http_header(const struct http_request *req, const char *name);
const char *http_query(const struct http_request *req, const char *name);
/* The query string as sent (without '?'), "" when none. */
const char *http_raw_query(const struct http_request *req);
typedef void http_header_fn(void *arg, const char *name, const char *value);
void http_headers_foreach(const struct http_request *req, http_header_fn *fn, void *arg);
const char *http_body(const struct http_request *req, size_t *len);
bool http_body_too_large(const struct http_request *req);
/* Why the request's framing is refused (two Content-Length headers,
 * Content-Length with Transfer-Encoding, a coding other than chunked,
 * HTTP/1.1 without exactly one Host, whitespace in a header name), or NULL.
 * Set, the handler is called at once, before any body is read, and the
 * connection is closed after its answer, whatever the answer is. */
const char *http_framing_error(const struct http_request *req);
uint64_t http_started_us(const struct http_request *req);   /* monotonic */

/* The pseudonym of the request's user, for the access log (never a raw id). */
void http_note_user(struct http_request *req, const char *pseudonym);
const char *http_noted_user(const struct http_request *req);   /* "" if none */
/* What the router matched (a string that outlives the request: the route
 * table's path), for the access log and metrics; "(other)" if nothing did --
 * a client may put anything, an e-mail address too, into an unknown path. */
void http_note_route(struct http_request *req, const char *route);
const char *http_noted_route(const struct http_request *req);
/* The client's address as text, for the access log. */
const char *http_client_addr(const struct http_request *req, char *buf, size_t len);

/* HEADERS: NULL, or name, value, name, value, ..., NULL.  BODY is copied. */
void http_respond(struct http_request *req, unsigned status, const char *content_type,
                  const char *body, size_t len, const char *const *headers);


#endif

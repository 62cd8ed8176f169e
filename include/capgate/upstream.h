/*
 * upstream: outbound HTTP to the campaign APIs, on a worker's event loop.
 *
 * libcurl's multi interface driven by libevent (curl's hiperfifo.c is the
 * model): CURLMOPT_SOCKETFUNCTION / CURLMOPT_TIMERFUNCTION and
 * curl_multi_socket_action, so a request never blocks the loop -- name
 * resolution included (libcurl's threaded resolver).  Connections are kept
 * alive and reused per host, at most max_connections per host; HTTPS
 * certificates are verified.
 *
 * Ownership: upstream_send() copies the request.  The response handed to
 * the callback is valid only during the callback.  The callback of an
 * accepted request runs exactly once, always later (never from inside
 * upstream_send), also when the pool is freed (UPSTREAM_FAILED).
 * One pool per event loop; not thread-safe.
 */
#ifndef CAPGATE_UPSTREAM_H
#define CAPGATE_UPSTREAM_H

#include <stdbool.h>
#include <stddef.h>

struct event_base;
struct upstream_pool;

struct upstream_request {
    const char *method;              /* "POST", "PUT", ... */
    const char *url;                 /* full URL, http:// or https:// */
    const char *const *headers;      /* "Name: value", NULL-terminated; may be NULL */
    const char *body;
    size_t body_len;
    long timeout_ms;                 /* whole exchange, connect included */
};

enum upstream_status {
    UPSTREAM_OK,                     /* an HTTP answer came (any status code) */
    UPSTREAM_FAILED,                 /* no answer: connect, TLS, timeout, too large, shutdown */
};

struct upstream_response {
    enum upstream_status status;
    long http_status;                /* UPSTREAM_OK */
    const char *error;               /* UPSTREAM_FAILED: a short reason */
    bool timed_out;                  /* UPSTREAM_FAILED: no answer within timeout_ms */
    const char *body;                /* NUL-terminated too */
    size_t body_len;
    const char *const *headers;      /* "Name: value" of the final response, no status line */
    size_t n_headers;
};

typedef void upstream_cb(void *arg, const struct upstream_response *r);

/* MAX_CONNECTIONS: per host (CURLMOPT_MAX_HOST_CONNECTIONS); more requests
 * wait in curl's queue.  MAX_BODY: largest response body kept (bigger
 * answers fail the request). */
struct upstream_pool *upstream_pool_new(struct event_base *base, unsigned max_connections,
                                        size_t max_body);
/* 0 when accepted (CB will run), -1 when refused at once (CB will not run). */
int upstream_send(struct upstream_pool *p, const struct upstream_request *req,
                  upstream_cb *cb, void *arg);
unsigned upstream_pool_active(const struct upstream_pool *p);
void upstream_pool_free(struct upstream_pool *p);

#endif

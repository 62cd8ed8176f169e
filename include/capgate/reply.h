/*
 * reply: the one place responses are built and counted.  Every error the
 * API can return is in enum api_error, with its code and HTTP status, so the
 * list in the docs and the code cannot drift apart.
 *
 * Error body: {"error": {"code": "...", "message": "...", "field": "..."}}.
 * A message never contains a raw user id.
 */
#ifndef CAPGATE_REPLY_H
#define CAPGATE_REPLY_H

#include <jansson.h>

enum api_error {
    API_INVALID_JSON,        /* 400 */
    API_MISSING_FIELD,       /* 400 */
    API_INVALID_FIELD,       /* 400 */
    API_UNKNOWN_CHANNEL,     /* 400 */
    API_UNKNOWN_CATEGORY,    /* 400 */
    API_UNAUTHORIZED,        /* 401, with WWW-Authenticate */
    API_FORBIDDEN,           /* 403 */
    API_NOT_FOUND,           /* 404 */
    API_METHOD_NOT_ALLOWED,  /* 405 */
    API_BODY_TOO_LARGE,      /* 413 */
    API_STORE_UNAVAILABLE,   /* 503, with Retry-After */
    API_INVALID_CONFIG,      /* 400: a reload was refused */
    API_UPSTREAM_FAILED,     /* 502: the campaign API failed; the send was released */
    API_QUEUE_FULL,          /* 503: delivery.max_deferred reached */
    API_NO_UPSTREAM,         /* 400: the channel has no upstream (proxy mode) */
    API_INTERNAL,            /* 500 */
    API_ERROR__COUNT
};

const char *api_error_code(enum api_error e);
unsigned api_error_status(enum api_error e);

struct worker;
struct http_request;

/* Sends BODY (reference stolen) as JSON with STATUS. */
void reply_json(struct worker *w, struct http_request *req, unsigned status, json_t *body);
/* Same, with extra headers (name, value, ..., NULL). */
void reply_json_headers(struct worker *w, struct http_request *req, unsigned status,
                        json_t *body, const char *const *headers);
/* FIELD may be NULL. */
void reply_error(struct worker *w, struct http_request *req, enum api_error e,
                 const char *field, const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* Sends a non-JSON body (the status page, Prometheus text). */
void reply_text(struct worker *w, struct http_request *req, unsigned status,
                const char *content_type, const char *body, size_t len,
                const char *const *headers);

/* 405 with an Allow header listing ALLOW (e.g. "POST"). */
void reply_method_not_allowed(struct worker *w, struct http_request *req, const char *allow);

#endif

/*
 * reply: the one place responses are built and counted (every error the API
 * can return is in enum api_error, api_error.h).
 *
 * Error body: {"error": {"code": "...", "message": "...", "field": "..."}}.
 * A message never contains a raw user id.
 */
#ifndef CAPGATE_REPLY_H
#define CAPGATE_REPLY_H

#include <jansson.h>

#include "capgate/api_error.h"



struct loop;
struct http_request;
struct field_error;

/* Every reply is counted in the loop's metrics (status, latency, errors by
 * code) and, with access_log, logged with the request's route tag and the
 * user's pseudonym only. */

/* Sends BODY (reference stolen) as JSON with STATUS. */
void reply_json(struct loop *l, struct http_request *req, unsigned status, json_t *body);
/* Same, with extra headers (name, value, ..., NULL). */
void reply_json_headers(struct loop *l, struct http_request *req, unsigned status,
                        json_t *body, const char *const *headers);
/* FIELD may be NULL.  A 5xx is logged (at most a line a second per code). */
void reply_error(struct loop *l, struct http_request *req, enum api_error e,
                 const char *field, const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* The error a parser found (requests.h). */
void reply_field_error(struct loop *l, struct http_request *req, const struct field_error *e);
/* 401 for a token that matches none: RFC 6750's error="invalid_token". */
void reply_invalid_token(struct loop *l, struct http_request *req, const char *message);

/* Sends a non-JSON body (the status page, Prometheus text, an upstream's answer). */
void reply_text(struct loop *l, struct http_request *req, unsigned status,
                const char *content_type, const char *body, size_t len,
                const char *const *headers);

/* 405 with an Allow header listing ALLOW (e.g. "POST"). */
void reply_method_not_allowed(struct loop *l, struct http_request *req, const char *allow);

#endif

/*
 * api_error: every error the API can answer, with its code and HTTP status,
 * in one table (src/api_error.c), so the list in the docs and the code
 * cannot drift apart.  Error body: {"error": {"code", "message", "field"?}}.
 */
#ifndef CAPGATE_API_ERROR_H
#define CAPGATE_API_ERROR_H

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
    API_TOO_MANY_RECIPIENTS, /* 413: more than limits.max_recipients in one request */
    API_UPSTREAM_TIMEOUT,    /* 504: the campaign API did not answer within timeout_ms */
    API_INTERNAL,            /* 500 */
    API_BAD_REQUEST,         /* 400: framing a proxy could read another way (http.h) */
    API_OVER_RATE,           /* 429: over_rate: reject -- the upstream's rate or pause held it */
    API_NO_PUBLIC,           /* 400: links asked for, but no public listener is configured */
    API_ERROR__COUNT
};

const char *api_error_code(enum api_error e);
unsigned api_error_status(enum api_error e);

#endif

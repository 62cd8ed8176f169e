/* api_error: the API's errors.  See api_error.h. */
#include "capgate/api_error.h"

static const struct {
    const char *code;
    unsigned status;
} errors[API_ERROR__COUNT] = {
    [API_INVALID_JSON] = { "invalid_json", 400 },
    [API_MISSING_FIELD] = { "missing_field", 400 },
    [API_INVALID_FIELD] = { "invalid_field", 400 },
    [API_UNKNOWN_CHANNEL] = { "unknown_channel", 400 },
    [API_UNKNOWN_CATEGORY] = { "unknown_category", 400 },
    [API_UNAUTHORIZED] = { "unauthorized", 401 },
    [API_FORBIDDEN] = { "forbidden", 403 },
    [API_NOT_FOUND] = { "not_found", 404 },
    [API_METHOD_NOT_ALLOWED] = { "method_not_allowed", 405 },
    [API_BODY_TOO_LARGE] = { "body_too_large", 413 },
    [API_STORE_UNAVAILABLE] = { "store_unavailable", 503 },
    [API_INVALID_CONFIG] = { "invalid_config", 400 },
    [API_UPSTREAM_FAILED] = { "upstream_failed", 502 },
    [API_QUEUE_FULL] = { "queue_full", 503 },
    [API_NO_UPSTREAM] = { "no_upstream", 400 },
    [API_TOO_MANY_RECIPIENTS] = { "too_many_recipients", 413 },
    [API_UPSTREAM_TIMEOUT] = { "upstream_timeout", 504 },
    [API_INTERNAL] = { "internal", 500 },
    [API_BAD_REQUEST] = { "bad_request", 400 },
    [API_OVER_RATE] = { "over_rate", 429 },
    [API_NO_PUBLIC] = { "no_public_listener", 400 },
};

const char *api_error_code(enum api_error e) { return errors[e].code; }
unsigned api_error_status(enum api_error e) { return errors[e].status; }

/* reply: building, sending and counting responses.  See reply.h. */
#include "capgate/reply.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capgate/clock.h"
#include "capgate/config.h"
#include "capgate/http.h"
#include "capgate/log.h"
#include "capgate/router.h"
#include "capgate/worker.h"

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
    [API_INTERNAL] = { "internal", 500 },
};

const char *api_error_code(enum api_error e) { return errors[e].code; }
unsigned api_error_status(enum api_error e) { return errors[e].status; }

/* Every response passes here: status counters, the latency histogram and
 * the optional access log (pseudonymous ids only). */
static void account(struct worker *w, struct http_request *req, unsigned status)
{
    double seconds = (double)(clock_now_us() - http_started_us(req)) / 1e6;
    COUNTER_INC(w->metrics.http_requests);
    COUNTER_INC(w->metrics.http_status[status < 600 ? status : 599]);
    histogram_observe(&w->metrics.http_latency, seconds);
    if (w->cfg->access_log) {
        char addr[64];
        const char *user = http_noted_user(req);
        log_info("access", "client=%s method=%s path=%s status=%u ms=%.3f user=%s",
                 http_client_addr(req, addr, sizeof addr), http_method(req),
                 router_known_path(http_path(req)) ? http_path(req) : "(other)",
                 status, seconds * 1000, user[0] ? user : "-");
    }
}

void reply_json_headers(struct worker *w, struct http_request *req, unsigned status,
                        json_t *body, const char *const *headers)
{
    static const char oom[] = "{\"error\":{\"code\":\"internal\",\"message\":\"out of memory\"}}\n";
    char *text = body ? json_dumps(body, JSON_COMPACT | JSON_REAL_PRECISION(6)) : NULL;
    json_decref(body);

    if (!text)
        status = 500;
    account(w, req, status);
    if (!text) {
        http_respond(req, status, "application/json", oom, sizeof oom - 1, headers);
        return;
    }
    /* A trailing newline keeps curl output readable. */
    size_t len = strlen(text);
    char *nl = realloc(text, len + 2);
    if (nl) {
        text = nl;
        text[len++] = '\n';
        text[len] = '\0';
    }
    http_respond(req, status, "application/json", text, len, headers);
    free(text);
}

void reply_text(struct worker *w, struct http_request *req, unsigned status,
                const char *content_type, const char *body, size_t len,
                const char *const *headers)
{
    account(w, req, status);
    http_respond(req, status, content_type, body, len, headers);
}

void reply_json(struct worker *w, struct http_request *req, unsigned status, json_t *body)
{
    reply_json_headers(w, req, status, body, NULL);
}

static void send_error(struct worker *w, struct http_request *req, enum api_error e,
                       const char *field, const char *message, const char *const *headers)
{
    COUNTER_INC(w->metrics.errors[e]);
    if (errors[e].status >= 500)
        log_warn("request failed", "path=%s code=%s", http_path(req), errors[e].code);
    json_t *err = json_pack("{s:s, s:s}", "code", errors[e].code, "message", message);
    if (err && field)
        json_object_set_new(err, "field", json_string(field));
    reply_json_headers(w, req, errors[e].status, json_pack("{s:o}", "error", err), headers);
}

void reply_error(struct worker *w, struct http_request *req, enum api_error e,
                 const char *field, const char *fmt, ...)
{
    static const char *const retry[] = { "Retry-After", "1", NULL };
    static const char *const challenge[] = { "WWW-Authenticate", "Bearer realm=\"capgate\"", NULL };
    char message[256];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    send_error(w, req, e, field, message,
               e == API_STORE_UNAVAILABLE || e == API_QUEUE_FULL ? retry
               : e == API_UNAUTHORIZED ? challenge : NULL);
}

void reply_method_not_allowed(struct worker *w, struct http_request *req, const char *allow)
{
    const char *const headers[] = { "Allow", allow, NULL };
    char message[128];
    snprintf(message, sizeof message, "use %s for this path", allow);
    send_error(w, req, API_METHOD_NOT_ALLOWED, NULL, message, headers);
}

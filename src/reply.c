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
#include "capgate/loop.h"
#include "capgate/validate.h"


/* Every response passes here: status counters, the latency histogram and
 * the optional access log (pseudonymous ids only; the path is the route the
 * router matched, never what the client sent). */
static void account(struct loop *l, struct http_request *req, unsigned status)
{
    double seconds = (double)(clock_now_us() - http_started_us(req)) / 1e6;
    COUNTER_INC(l->metrics.http_requests);
    COUNTER_INC(l->metrics.http_status[status < 600 ? status : 599]);
    metrics_observe_request(&l->metrics, http_noted_route(req), seconds);
    if (l->cfg->access_log) {
        char addr[64];
        const char *user = http_noted_user(req);
        log_info("access", "client=%s method=%s path=%s status=%u ms=%.3f user=%s",
                 http_client_addr(req, addr, sizeof addr), http_method(req),
                 http_noted_route(req), status, seconds * 1000, user[0] ? user : "-");
    }
}

void reply_json_headers(struct loop *l, struct http_request *req, unsigned status,
                        json_t *body, const char *const *headers)
{
    static const char oom[] = "{\"error\":{\"code\":\"internal\",\"message\":\"out of memory\"}}\n";
    char *text = body ? json_dumps(body, JSON_COMPACT | JSON_REAL_PRECISION(6)) : NULL;
    json_decref(body);

    if (!text)
        status = 500;
    account(l, req, status);
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

void reply_text(struct loop *l, struct http_request *req, unsigned status,
                const char *content_type, const char *body, size_t len,
                const char *const *headers)
{
    account(l, req, status);
    http_respond(req, status, content_type, body, len, headers);
}

void reply_json(struct loop *l, struct http_request *req, unsigned status, json_t *body)
{
    reply_json_headers(l, req, status, body, NULL);
}

/* {"error": {"code", "message", "field"?}} */
static json_t *error_body(enum api_error e, const char *field, const char *message)
{
    json_t *err = json_pack("{s:s, s:s}", "code", api_error_code(e), "message", message);
    if (err && field)
        json_object_set_new(err, "field", json_string(field));
    return err ? json_pack("{s:o}", "error", err) : NULL;
}

static void send_error(struct loop *l, struct http_request *req, enum api_error e,
                       const char *field, const char *message, const char *const *headers)
{
    COUNTER_INC(l->metrics.errors[e]);
    if (api_error_status(e) >= 500)
        log_warn_limited("request failed", "path=%s code=%s", http_noted_route(req),
                         api_error_code(e));
    reply_json_headers(l, req, api_error_status(e), error_body(e, field, message), headers);
}

void reply_error(struct loop *l, struct http_request *req, enum api_error e,
                 const char *field, const char *fmt, ...)
{
    static const char *const retry[] = { "Retry-After", "1", NULL };
    static const char *const challenge[] = { "WWW-Authenticate", "Bearer realm=\"capgate\"", NULL };
    char message[256];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    send_error(l, req, e, field, message,
               e == API_STORE_UNAVAILABLE || e == API_QUEUE_FULL ? retry
               : e == API_UNAUTHORIZED ? challenge : NULL);
}

void reply_field_error(struct loop *l, struct http_request *req, const struct field_error *e)
{
    send_error(l, req, e->code, e->field, e->message, NULL);
}

void reply_invalid_token(struct loop *l, struct http_request *req, const char *message)
{
    static const char *const challenge[] = {
        "WWW-Authenticate", "Bearer realm=\"capgate\", error=\"invalid_token\"", NULL
    };
    send_error(l, req, API_UNAUTHORIZED, NULL, message, challenge);
}

void reply_method_not_allowed(struct loop *l, struct http_request *req, const char *allow)
{
    const char *const headers[] = { "Allow", allow, NULL };
    char message[128];
    snprintf(message, sizeof message, "use %s for this path", allow);
    send_error(l, req, API_METHOD_NOT_ALLOWED, NULL, message, headers);
}

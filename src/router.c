/* router: the table of endpoints.  See router.h. */
#include "capgate/router.h"

#include <string.h>

#include "capgate/api.h"
#include "capgate/auth.h"
#include "capgate/config.h"
#include "capgate/http.h"
#include "capgate/reply.h"
#include "capgate/worker.h"

struct route {
    const char *path;
    const char *method;     /* GET routes answer HEAD too */
    unsigned scope;         /* 0: open to anyone */
    api_handler *handler;
};

static const struct route routes[] = {
    { "/v1/decide",       "POST", SCOPE_SEND,    api_decide },
    { "/v1/release",      "POST", SCOPE_SEND,    api_release },
    { "/v1/send",         "POST", SCOPE_SEND,    api_send },
    { "/v1/events",       "POST", SCOPE_SEND,    api_events },
    { "/v1/consent",      "POST", SCOPE_CONSENT, api_consent },
    { "/v1/users/show",   "POST", SCOPE_CONSENT, api_users_show },
    { "/v1/users/erase",  "POST", SCOPE_CONSENT, api_users_erase },
    { "/v1/audit",        "GET",  SCOPE_ADMIN,   api_audit },
    { "/v1/admin/reload", "POST", SCOPE_ADMIN,   api_admin_reload },
    { "/v1/admin/dead-letters", "GET", SCOPE_ADMIN, api_dead_letters },
    { "/status",          "GET",  SCOPE_ADMIN,   api_status },
    { "/metrics",         "GET",  SCOPE_ADMIN,   api_metrics },
    /* The page is static; it asks /status (with the token it is given). */
    { "/status.html",     "GET",  0,             api_status_page },
    { "/healthz",         "GET",  0,             api_healthz },
    { "/readyz",          "GET",  0,             api_readyz },
};

/* 401 without a valid token, 403 for a token without the route's scope.
 * HEADER: where the token is -- a proxied request's Authorization belongs
 * to the campaign API, so capgate's own token comes as X-Capgate-Token. */
static bool check_token(struct worker *w, struct http_request *req, const struct route *r,
                        const char *header)
{
    unsigned scopes;
    const char *name;
    if (r->scope == 0)
        return true;
    switch (auth_check(w->cfg, header, &scopes, &name)) {
    case AUTH_OK:
        break;
    case AUTH_MISSING:
        reply_error(w, req, API_UNAUTHORIZED, NULL, "%s",
                    r->path[0] ? "send Authorization: Bearer <token>"
                               : "send capgate's token as X-Capgate-Token: <token> (Authorization "
                                 "goes to the campaign API)");
        return false;
    case AUTH_INVALID:
        reply_error(w, req, API_UNAUTHORIZED, NULL, "the token is not valid");
        return false;
    }
    if (!(scopes & r->scope)) {
        reply_error(w, req, API_FORBIDDEN, NULL, "token \"%s\" lacks the %s scope", name,
                    r->scope == SCOPE_SEND ? "send" : r->scope == SCOPE_CONSENT ? "consent"
                                                                                 : "admin");
        return false;
    }
    return true;
}

static bool authorized(struct worker *w, struct http_request *req, const struct route *r)
{
    return check_token(w, req, r, http_header(req, "Authorization"));
}

static bool route_authorized(struct worker *w, struct http_request *req, const struct route *r)
{
    const char *t = http_header(req, "X-Capgate-Token");
    char header[600];
    if (t)
        snprintf(header, sizeof header, "Bearer %s", t);
    return check_token(w, req, r, t ? header : NULL);
}

bool router_known_path(const char *path)
{
    for (size_t k = 0; k < sizeof routes / sizeof routes[0]; k++)
        if (strcmp(routes[k].path, path) == 0)
            return true;
    return false;
}

void router_dispatch(struct http_request *req, void *arg)
{
    struct worker *w = arg;
    const char *path = http_path(req), *method = http_method(req);
    const struct route *found = NULL;

    if (http_body_too_large(req)) {
        reply_error(w, req, API_BODY_TOO_LARGE, NULL, "request body exceeds %zu bytes",
                    w->cfg->limits.max_body_bytes);
        return;
    }
    for (size_t k = 0; k < sizeof routes / sizeof routes[0]; k++) {
        if (strcmp(routes[k].path, path) != 0)
            continue;
        found = &routes[k];
        if (strcmp(routes[k].method, method) == 0 ||
            (strcmp(routes[k].method, "GET") == 0 && strcmp(method, "HEAD") == 0)) {
            if (authorized(w, req, &routes[k]))
                routes[k].handler(w, req);
            return;
        }
    }
    /* Transparent routes: the campaign tool's own API paths. */
    for (size_t k = 0; !found && k < w->cfg->n_routes; k++) {
        if (strcmp(w->cfg->routes[k].path, path) != 0)
            continue;
        static const struct route proxied = { "", "", SCOPE_SEND, NULL };
        if (route_authorized(w, req, &proxied))
            api_route(w, req, &w->cfg->routes[k]);
        return;
    }
    if (found) {
        reply_method_not_allowed(w, req, strcmp(found->method, "GET") == 0 ? "GET, HEAD"
                                                                            : found->method);
        return;
    }
    reply_error(w, req, API_NOT_FOUND, NULL, "no such endpoint");
}

/* router: the table of endpoints.  See router.h. */
#include "capgate/router.h"

#include <string.h>

#include "capgate/api.h"
#include "capgate/auth.h"
#include "capgate/config.h"
#include "capgate/http.h"
#include "capgate/log.h"
#include "capgate/loop.h"
#include "capgate/reply.h"

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
    { "/v1/unsubscribe-links", "POST", SCOPE_SEND, api_unsubscribe_links },
    { "/v1/users/show",   "POST", SCOPE_CONSENT, api_users_show },
    { "/v1/users/erase",  "POST", SCOPE_CONSENT, api_users_erase },
    { "/v1/users/export", "POST", SCOPE_CONSENT, api_users_export },
    { "/v1/audit",        "GET",  SCOPE_ADMIN,   api_audit },
    { "/v1/admin/reload", "POST", SCOPE_ADMIN,   api_admin_reload },
    { "/v1/admin/dead-letters", "GET", SCOPE_ADMIN, api_dead_letters },
    { "/v1/admin/campaigns", "GET", SCOPE_ADMIN, api_campaigns },
    { "/v1/admin/campaigns/resume", "POST", SCOPE_ADMIN, api_campaigns_resume },
    { "/v1/admin/rotation", "GET",  SCOPE_ADMIN, api_rotation_report },
    { "/v1/admin/rotation/mark", "POST", SCOPE_ADMIN, api_rotation_mark },
    { "/status",          "GET",  SCOPE_ADMIN,   api_status },
    { "/metrics",         "GET",  SCOPE_ADMIN,   api_metrics },
    /* The page is static; it asks /status (with the token it is given). */
    { "/status.html",     "GET",  0,             api_status_page },
    { "/healthz",         "GET",  0,             api_healthz },
    { "/readyz",          "GET",  0,             api_readyz },
};

/* 401 without a valid token, 403 for a token without the route's scope.
 * A failure is logged (at most a line a second): the client's address and
 * a short hash of the token, never the token. */
static bool allowed(struct loop *l, struct http_request *req, unsigned scope,
                    enum auth_result result, const struct auth_outcome *who, bool proxied)
{
    char addr[64];
    if (scope == 0)
        return true;
    if (result != AUTH_OK) {
        log_warn_limited("authentication failed", "client=%s path=%s token=%s reason=%s",
                         http_client_addr(req, addr, sizeof addr), http_noted_route(req),
                         who->tag[0] ? who->tag : "-",
                         result == AUTH_MISSING ? "missing" : "invalid");
        if (result == AUTH_INVALID)
            reply_invalid_token(l, req, "the token is not valid");
        else
            reply_error(l, req, API_UNAUTHORIZED, NULL, "%s",
                        proxied ? "send capgate's token as X-Capgate-Token: <token> "
                                  "(Authorization goes to the campaign API)"
                                : "send Authorization: Bearer <token>");
        return false;
    }
    if (!(who->scopes & scope)) {
        log_warn_limited("authorization failed", "client=%s path=%s token_name=%s",
                         http_client_addr(req, addr, sizeof addr), http_noted_route(req),
                         who->name);
        reply_error(l, req, API_FORBIDDEN, NULL, "token \"%s\" lacks the %s scope", who->name,
                    scope == SCOPE_SEND ? "send" : scope == SCOPE_CONSENT ? "consent" : "admin");
        return false;
    }
    return true;
}

/* The endpoint for METHOD and PATH (GET's answer HEAD too); NULL when none.
 * *PATH_KNOWN: some endpoint has this path (another method: 405). */
static const struct route *find_endpoint(const char *method, const char *path,
                                         const struct route **path_known)
{
    *path_known = NULL;
    for (size_t k = 0; k < sizeof routes / sizeof routes[0]; k++) {
        if (strcmp(routes[k].path, path) != 0)
            continue;
        *path_known = &routes[k];
        if (strcmp(routes[k].method, method) == 0 ||
            (strcmp(routes[k].method, "GET") == 0 && strcmp(method, "HEAD") == 0))
            return &routes[k];
    }
    return NULL;
}

/* The transparent route at PATH (any method), when no endpoint has it. */
static const struct cfg_route *find_proxied(const struct config *cfg, const char *path)
{
    for (size_t k = 0; k < cfg->n_routes; k++)
        if (strcmp(cfg->routes[k].path, path) == 0)
            return &cfg->routes[k];
    return NULL;
}

void router_dispatch(struct http_request *req, void *arg)
{
    struct loop *l = arg;
    const struct config *cfg = l->cfg;
    const char *path = http_path(req), *method = http_method(req);
    const struct route *found = NULL;
    struct auth_outcome who;

    const char *framing = http_framing_error(req);
    if (framing) {
        reply_error(l, req, API_BAD_REQUEST, NULL, "%s", framing);
        return;
    }
    if (http_body_too_large(req)) {
        reply_error(l, req, API_BODY_TOO_LARGE, NULL, "request body exceeds %zu bytes",
                    cfg->limits.max_body_bytes);
        return;
    }
    const struct route *r = find_endpoint(method, path, &found);
    if (r) {
        http_note_route(req, r->path);
        enum auth_result a = r->scope ? auth_check(cfg, http_header(req, "Authorization"), &who)
                                      : AUTH_OK;
        if (allowed(l, req, r->scope, a, &who, false))
            r->handler(l, req);
        return;
    }
    /* Transparent routes: the campaign tool's own API paths.  Their
     * Authorization belongs to the campaign API, so capgate's own token
     * comes as X-Capgate-Token, compared whole. */
    const struct cfg_route *proxied = found ? NULL : find_proxied(cfg, path);
    if (proxied) {
        http_note_route(req, proxied->path);
        enum auth_result a = auth_check_token(cfg, http_header(req, "X-Capgate-Token"), &who);
        if (allowed(l, req, SCOPE_SEND, a, &who, true))
            api_route(l, req, proxied);
        return;
    }
    if (found) {
        http_note_route(req, found->path);
        reply_method_not_allowed(l, req, strcmp(found->method, "GET") == 0 ? "GET, HEAD"
                                                                            : found->method);
        return;
    }
    reply_error(l, req, API_NOT_FOUND, NULL, "no such endpoint");
}

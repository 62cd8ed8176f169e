/* router: the table of endpoints.  See router.h. */
#include "capgate/router.h"

#include <string.h>

#include "capgate/api.h"
#include "capgate/config.h"
#include "capgate/http.h"
#include "capgate/reply.h"
#include "capgate/worker.h"

struct route {
    const char *path;
    const char *method;     /* GET routes answer HEAD too */
    api_handler *handler;
};

static const struct route routes[] = {
    { "/v1/decide",  "POST", api_decide },
    { "/v1/release", "POST", api_release },
    { "/v1/consent", "POST", api_consent },
    { "/status",     "GET",  api_status },
    { "/status.html", "GET", api_status_page },
    { "/healthz",    "GET",  api_healthz },
    { "/metrics",    "GET",  api_metrics },
    { "/v1/admin/reload", "POST", api_admin_reload },
    { "/readyz",     "GET",  api_readyz },
};

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
            routes[k].handler(w, req);
            return;
        }
    }
    if (found) {
        reply_method_not_allowed(w, req, strcmp(found->method, "GET") == 0 ? "GET, HEAD"
                                                                            : found->method);
        return;
    }
    reply_error(w, req, API_NOT_FOUND, NULL, "no such endpoint");
}

/*
 * api: the endpoint handlers, one file per family (api_decide.c,
 * api_consent.c, api_status.c, ...).  Each takes its loop and a request
 * whose body is complete, reads the body with its parser (requests.h: pure,
 * fuzzed), calls an owner (decide, the store, delivery) and answers exactly
 * once, now or from a callback.
 */
#ifndef CAPGATE_API_H
#define CAPGATE_API_H

struct loop;
struct http_request;

typedef void api_handler(struct loop *l, struct http_request *req);

api_handler api_decide;     /* POST /v1/decide */
api_handler api_release;    /* POST /v1/release */
api_handler api_consent;    /* POST /v1/consent */
api_handler api_status;     /* GET /status (HTML with Accept: text/html) */
api_handler api_status_page;/* GET /status.html */
api_handler api_healthz;    /* GET /healthz */
api_handler api_readyz;     /* GET /readyz */
api_handler api_events;     /* POST /v1/events */
api_handler api_users_show; /* POST /v1/users/show */
api_handler api_users_erase;/* POST /v1/users/erase */
api_handler api_users_export;/* POST /v1/users/export */
api_handler api_audit;      /* GET /v1/audit */
api_handler api_send;       /* POST /v1/send (proxy mode) */
api_handler api_dead_letters; /* GET /v1/admin/dead-letters */
api_handler api_campaigns;    /* GET /v1/admin/campaigns */
api_handler api_campaigns_resume; /* POST /v1/admin/campaigns/resume */
api_handler api_rotation_report; /* GET /v1/admin/rotation */
api_handler api_rotation_mark;   /* POST /v1/admin/rotation/mark */

struct cfg_route;
/* A request to a transparent route (any method). */
void api_unsubscribe_links(struct loop *l, struct http_request *req);
void api_route(struct loop *l, struct http_request *req, const struct cfg_route *route);
api_handler api_metrics;    /* GET /metrics (Prometheus text 0.0.4) */
api_handler api_admin_reload; /* POST /v1/admin/reload */

#endif

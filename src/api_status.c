/* api_status: GET /status, /healthz, /readyz -- what ops look at. */
#include <time.h>

#include "capgate/api.h"
#include "capgate/config.h"
#include "capgate/decision.h"
#include "capgate/http.h"
#include "capgate/reply.h"
#include "capgate/store.h"
#include "capgate/worker.h"

void api_healthz(struct worker *w, struct http_request *req)
{
    reply_json(w, req, 200, json_pack("{s:s}", "status", "ok"));
}

void api_readyz(struct worker *w, struct http_request *req)
{
    bool ready = store_ready(w->store);
    reply_json(w, req, ready ? 200 : 503, json_pack("{s:b}", "ready", ready));
}

static json_t *decisions_json(const struct metrics *m)
{
    json_t *out = json_object(), *by_reason = json_object();
    for (int o = 0; o < OUTCOME__COUNT; o++) {
        uint64_t total = 0;
        json_t *reasons = json_object();
        for (int r = 0; r < REASON__COUNT; r++) {
            total += m->decisions[o][r];
            if (m->decisions[o][r])
                json_object_set_new(reasons, decision_reason_name((enum decision_reason)r),
                                    json_integer((json_int_t)m->decisions[o][r]));
        }
        json_object_set_new(out, decision_outcome_name((enum decision_outcome)o),
                            json_integer((json_int_t)total));
        json_object_set_new(by_reason, decision_outcome_name((enum decision_outcome)o), reasons);
    }
    json_object_set_new(out, "by_reason", by_reason);
    json_object_set_new(out, "replays", json_integer((json_int_t)m->replays));
    json_object_set_new(out, "dry_runs", json_integer((json_int_t)m->dry_runs));
    return out;
}

void api_status(struct worker *w, struct http_request *req)
{
    const struct config *cfg = w->cfg;
    const struct metrics *m = &w->metrics;
    struct store_stats ss;

    store_get_stats(w->store, &ss);
    json_t *redis = json_pack("{s:b, s:s, s:i, s:I, s:I, s:I, s:I, s:I, s:f}",
                              "connected", ss.connected, "url", cfg->redis.url,
                              "pending", (int)ss.pending, "calls", (json_int_t)ss.calls,
                              "timeouts", (json_int_t)ss.timeouts,
                              "errors", (json_int_t)ss.errors,
                              "unavailable", (json_int_t)ss.unavailable,
                              "reconnects", (json_int_t)ss.reconnects,
                              "last_rtt_ms", ss.last_rtt_ms);
    json_t *errors = json_object();
    for (int e = 0; e < API_ERROR__COUNT; e++)
        if (m->errors[e])
            json_object_set_new(errors, api_error_code((enum api_error)e),
                                json_integer((json_int_t)m->errors[e]));
    json_t *http = json_pack("{s:I, s:i, s:i, s:o}",
                             "requests", (json_int_t)m->http_requests,
                             "active", (int)http_server_active_requests(w->http),
                             "connections", (int)http_server_connections(w->http),
                             "errors", errors);
    json_t *body = json_pack("{s:s, s:I, s:o, s:o, s:o, s:I, s:I, s:{s:I, s:s}}",
                             "version", CAPGATE_VERSION,
                             "uptime_s", (json_int_t)(time(NULL) - w->started),
                             "redis", redis, "decisions", decisions_json(m), "http", http,
                             "releases", (json_int_t)m->releases,
                             "consents", (json_int_t)m->consents,
                             "config", "generation", (json_int_t)cfg->generation,
                             "path", cfg->path);
    reply_json(w, req, 200, body);
}

/* api_status: GET /status, /healthz, /readyz -- what ops look at. */
#include <string.h>
#include <stdlib.h>
#include <time.h>

#include "assets.h"

#include "capgate/api.h"
#include "capgate/clock.h"
#include "capgate/config.h"
#include "capgate/decision.h"
#include "capgate/http.h"
#include "capgate/reply.h"
#include "capgate/shape.h"
#include "capgate/store.h"
#include "capgate/loop.h"

void api_healthz(struct loop *l, struct http_request *req)
{
    reply_json(l, req, 200, json_pack("{s:s}", "status", "ok"));
}

void api_readyz(struct loop *l, struct http_request *req)
{
    bool ready = loop_ready(l);   /* every loop's, not just this one's */
    reply_json(l, req, ready ? 200 : 503, json_pack("{s:b}", "ready", ready));
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
    /* Which rules decide: rule -> {"defer": n, "deny": n}. */
    json_t *by_rule = json_object();
    for (size_t k = 0; k < m->n_labels; k++) {
        const struct decision_count *c = &m->by_label[k];
        if (!c->rule[0])
            continue;
        json_t *r = json_object_get(by_rule, c->rule);
        if (!r) {
            r = json_pack("{s:I, s:I}", "defer", (json_int_t)0, "deny", (json_int_t)0);
            json_object_set_new(by_rule, c->rule, r);
        }
        const char *o = decision_outcome_name(c->outcome);
        json_t *v = json_object_get(r, o);
        json_object_set_new(r, o, json_integer(json_integer_value(v) + (json_int_t)c->n));
    }
    json_object_set_new(out, "by_rule", by_rule);
    json_object_set_new(out, "replays", json_integer((json_int_t)m->replays));
    json_object_set_new(out, "dry_runs", json_integer((json_int_t)m->dry_runs));
    return out;
}

/* {"le_ms": [bounds..., null], "counts": [n per bucket]}: counts since
 * start, not cumulative, the last bucket +Inf (null).  The page subtracts
 * two polls to get the quantiles of a recent window, where the p50/p99
 * beside it (since start) would only flatten as samples pile up. */
static json_t *buckets_json(const struct histogram *hg)
{
    json_t *le = json_array(), *counts = json_array();
    for (int k = 0; k < HISTOGRAM_BUCKETS; k++) {
        json_array_append_new(le, k < HISTOGRAM_BUCKETS - 1
                                  ? json_real(histogram_bounds[k] * 1000) : json_null());
        json_array_append_new(counts, json_integer((json_int_t)hg->buckets[k]));
    }
    return json_pack("{s:o, s:o}", "le_ms", le, "counts", counts);
}

/* The page is self-contained (no external assets) and polls /status. */
void api_status_page(struct loop *l, struct http_request *req)
{
    /* The page needs nothing but itself and /status: say so to the browser. */
    static const char *const headers[] = {
        "Content-Security-Policy",
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'",
        "X-Content-Type-Options", "nosniff",
        NULL,
    };
    reply_text(l, req, 200, "text/html; charset=utf-8", asset_status, strlen(asset_status),
               headers);
}

/* ---- each shaped upstream's state, read from Redis (shape.lua 'state') ---- */

struct status_call {
    struct loop *loop;
    struct http_request *req;
    const struct config *cfg;       /* retained */
    json_t *body;
    size_t pending;
};

struct state_ask {
    struct status_call *call;
    json_t *upstream;               /* its entry in the body */
    const struct cfg_channel *ch;
};

static void status_done(struct status_call *c)
{
    if (--c->pending > 0)
        return;
    reply_json(c->loop, c->req, 200, c->body);
    config_release(c->cfg);
    free(c);
}

static void on_state(void *arg, const struct shape_state *st)
{
    struct state_ask *a = arg;
    const struct cfg_upstream *u = &a->ch->upstream;
    json_t *sh = json_pack("{s:s}", "state", shape_state_name(st->state));
    if (st->state != SHAPE_UNKNOWN) {
        json_object_set_new(sh, "pushbacks", json_integer(st->pushbacks));
        char at[32];
        if (st->paused_until_ms > 0) {
            clock_format_rfc3339(at, sizeof at, (time_t)((st->paused_until_ms + 999) / 1000));
            json_object_set_new(sh, "paused_until", json_string(at));
        }
        if (st->probe_out)
            json_object_set_new(sh, "probe_out", json_true());
        if (u->rate.enabled)
            json_object_set_new(sh, "rate", json_pack("{s:i, s:i, s:f, s:f, s:I}", "per_second",
                                u->rate.per_second, "burst", u->rate.burst, "use", st->rate_use,
                                "backlog_s", st->backlog_s, "queued", (json_int_t)st->queued));
        if (u->warmup.enabled)
            json_object_set_new(sh, "warmup", st->warming_up
                ? json_pack("{s:b, s:I, s:i, s:i}", "warming_up", 1, "day",
                            (json_int_t)st->warmup_day, "ceiling", st->warmup_ceiling, "sent",
                            st->warmup_sent)
                : json_pack("{s:b}", "warming_up", 0));
    }
    json_object_set_new(a->upstream, "shaping", sh);
    struct status_call *c = a->call;
    free(a);
    status_done(c);
}

/* Replies BODY (stolen) once each shaped upstream's state is in it. */
static void reply_with_shaping(struct loop *l, struct http_request *req, json_t *body)
{
    const struct config *cfg = l->cfg;
    json_t *ups = json_object_get(json_object_get(body, "proxy"), "upstreams");
    struct status_call *c = ups ? calloc(1, sizeof *c) : NULL;
    if (!c) {
        reply_json(l, req, 200, body);
        return;
    }
    *c = (struct status_call){ .loop = l, .req = req, .cfg = config_retain(cfg), .body = body,
                               .pending = 1 };
    size_t k;
    json_t *u;
    json_array_foreach(ups, k, u) {
        const struct cfg_channel *ch = config_channel(cfg, json_string_value(json_object_get(u,
                                                                                  "channel")));
        if (!shape_wanted(cfg, ch))
            continue;
        struct state_ask *a = malloc(sizeof *a);
        if (!a)
            continue;
        *a = (struct state_ask){ .call = c, .upstream = u, .ch = ch };
        c->pending++;
        shape_state(l->store, cfg, l->tz, ch, on_state, a);
    }
    status_done(c);
}

void api_status(struct loop *l, struct http_request *req)
{
    const char *accept = http_header(req, "Accept");
    if (accept && strstr(accept, "text/html")) {
        api_status_page(l, req);
        return;
    }

    const struct config *cfg = l->cfg;
    struct totals *snap = loop_totals(l);
    if (!snap) {
        reply_error(l, req, API_INTERNAL, NULL, "out of memory");
        return;
    }
    const struct metrics *m = &snap->metrics;
    const struct store_stats ss = snap->redis;
    json_t *redis = json_pack("{s:b, s:s, s:i, s:I, s:I, s:I, s:I, s:I, s:f, s:{s:f, s:f}}",
                              "connected", ss.connected, "url", cfg->redis.url,
                              "pending", (int)ss.pending, "calls", (json_int_t)ss.calls,
                              "timeouts", (json_int_t)ss.timeouts,
                              "errors", (json_int_t)ss.errors,
                              "unavailable", (json_int_t)ss.unavailable,
                              "reconnects", (json_int_t)ss.reconnects,
                              "last_rtt_ms", ss.last_rtt_ms,
                              "rtt_ms", "p50", histogram_quantile(&ss.rtt, 0.5) * 1000,
                              "p99", histogram_quantile(&ss.rtt, 0.99) * 1000);
    json_object_set_new(redis, "rtt_buckets", buckets_json(&ss.rtt));
    json_t *errors = json_object();
    for (int e = 0; e < API_ERROR__COUNT; e++)
        if (m->errors[e])
            json_object_set_new(errors, api_error_code((enum api_error)e),
                                json_integer((json_int_t)m->errors[e]));
    json_t *by_class = json_object();
    for (int c = 1; c < 6; c++) {
        uint64_t n = 0;
        for (int code = c * 100; code < c * 100 + 100; code++)
            n += m->http_status[code];
        char name[4] = { (char)('0' + c), 'x', 'x', '\0' };
        json_object_set_new(by_class, name, json_integer((json_int_t)n));
    }
    json_t *http = json_pack("{s:I, s:o, s:i, s:i, s:o, s:{s:f, s:f}}",
                             "requests", (json_int_t)m->http_requests,
                             "responses", by_class,
                             "active", (int)snap->active,
                             "connections", (int)snap->connections,
                             "errors", errors,
                             "latency_ms", "p50", histogram_quantile(&m->http_latency, 0.5) * 1000,
                             "p99", histogram_quantile(&m->http_latency, 0.99) * 1000);
    json_object_set_new(http, "latency_buckets", buckets_json(&m->http_latency));
    json_t *last_reload = json_null();
    if (snap->last_reload.at) {
        char at[32];
        clock_format_rfc3339(at, sizeof at, snap->last_reload.at);
        last_reload = json_pack("{s:s, s:b, s:s?}", "at", at, "ok", snap->last_reload.ok,
                                "error", snap->last_reload.ok ? NULL : snap->last_reload.error);
    }
    char started[32];
    clock_format_rfc3339(started, sizeof started, snap->started);
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    json_t *body = json_pack("{s:s, s:s, s:I, s:I, s:o, s:o, s:o, s:I, s:I, s:{s:I, s:s, s:o}}",
                             "version", CAPGATE_VERSION, "started_at", started,
                             "now_ms", (json_int_t)now.tv_sec * 1000 + now.tv_nsec / 1000000,
                             "uptime_s", (json_int_t)(time(NULL) - snap->started),
                             "redis", redis, "decisions", decisions_json(m), "http", http,
                             "releases", (json_int_t)m->releases,
                             "consents", (json_int_t)m->consents,
                             "config", "generation", (json_int_t)cfg->generation,
                             "path", cfg->path, "last_reload", last_reload);
    json_object_set_new(body, "workers", json_integer(snap->workers));
    /* Proxy mode: the deferred queue and each upstream's deliveries. */
    bool proxy = false;
    for (size_t k = 0; k < cfg->n_channels; k++)
        proxy = proxy || cfg->channels[k].upstream.enabled;
    if (proxy) {
        uint64_t depth = 0, dead = 0;
        for (int t = 0; t < 256; t++) {
            depth += m->deferred_depth[t];
            dead += m->dead_letters[t];
        }
        json_t *ups = json_array();
        for (size_t k = 0; k < cfg->n_channels; k++) {
            const struct cfg_channel *ch = &cfg->channels[k];
            if (!ch->upstream.enabled)
                continue;
            /* Credentials written into the URL are not for the status page. */
            char url[512];
            const char *scheme = strstr(ch->upstream.url, "://");
            const char *host = scheme ? scheme + 3 : NULL;
            size_t auth_len = host ? strcspn(host, "/?#") : 0;
            const char *at = NULL;
            for (size_t i = 0; host && i < auth_len; i++)
                if (host[i] == '@')
                    at = host + i;      /* the last '@' of the authority */
            if (at)
                snprintf(url, sizeof url, "%.*s***%s", (int)(scheme + 3 - ch->upstream.url),
                         ch->upstream.url, at);
            else
                snprintf(url, sizeof url, "%s", ch->upstream.url);
            json_t *u = json_pack("{s:s, s:s}", "channel", ch->name, "url", url);
            for (size_t j = 0; j < m->n_delivery; j++)
                if (strcmp(m->delivery[j].channel, ch->name) == 0)
                    json_object_set_new(u, m->delivery[j].outcome,
                                        json_integer((json_int_t)m->delivery[j].n));
            /* The page's health dots read "ok" and "failed". */
            json_object_set_new(u, "ok", json_integer(json_integer_value(json_object_get(u, "delivered"))));
            if (!json_object_get(u, "failed"))
                json_object_set_new(u, "failed", json_integer(0));
            json_array_append_new(ups, u);
        }
        json_object_set_new(body, "proxy", json_pack("{s:I, s:I, s:o}", "deferred_depth",
                                                     (json_int_t)depth, "dead_letters",
                                                     (json_int_t)dead, "upstreams", ups));
    }
    free(snap);
    reply_with_shaping(l, req, body);
}

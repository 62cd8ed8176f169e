/*
 * api_metrics: GET /metrics in Prometheus text format 0.0.4, and
 * POST /v1/admin/reload.  Label values come from the config (rule and
 * channel names) and from fixed enums: never from a request.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "capgate/api.h"
#include "capgate/config.h"
#include "capgate/http.h"
#include "capgate/reply.h"
#include "capgate/store.h"
#include "capgate/textbuf.h"
#include "capgate/loop.h"
#include "capgate/procstat.h"
#include "capgate/shape.h"

static void help(struct textbuf *t, const char *name, const char *type, const char *text)
{
    textbuf_printf(t, "# HELP %s %s\n# TYPE %s %s\n", name, text, name, type);
}

/* Config names are [A-Za-z0-9_.-]; escape anyway, as the format requires. */
static const char *label(const char *s, char *buf, size_t size)
{
    size_t o = 0;
    for (; *s && o + 3 < size; s++) {
        if (*s == '\\' || *s == '"') {
            buf[o++] = '\\';
            buf[o++] = *s;
        } else if (*s == '\n') {
            buf[o++] = '\\';
            buf[o++] = 'n';
        } else {
            buf[o++] = *s;
        }
    }
    buf[o] = '\0';
    return buf;
}

/* LABELS: "" or 'name="value",' (escaped, with its trailing comma). */
static void histogram_labeled(struct textbuf *t, const char *name, const char *labels,
                              const struct histogram *h)
{
    uint64_t cum = 0;
    for (int k = 0; k < HISTOGRAM_BUCKETS - 1; k++) {
        cum += h->buckets[k];
        textbuf_printf(t, "%s_bucket{%sle=\"%g\"} %llu\n", name, labels, histogram_bounds[k],
            (unsigned long long)cum);
    }
    size_t n = strlen(labels);
    int ln = n ? (int)n - 1 : 0;      /* _sum and _count: without the trailing comma */
    textbuf_printf(t, "%s_bucket{%sle=\"+Inf\"} %llu\n", name, labels, (unsigned long long)h->count);
    textbuf_printf(t, "%s_sum%s%.*s%s %.9f\n", name, n ? "{" : "", ln, labels, n ? "}" : "", h->sum);
    textbuf_printf(t, "%s_count%s%.*s%s %llu\n", name, n ? "{" : "", ln, labels, n ? "}" : "",
        (unsigned long long)h->count);
}

static void histogram(struct textbuf *t, const char *name, const struct histogram *h)
{
    histogram_labeled(t, name, "", h);
}

/* The process_* families of the Prometheus client libraries, read from
 * /proc now (a scrape), never on a request's path. */
static void process_metrics(struct textbuf *t)
{
    struct procstat ps;
    if (procstat_read(&ps) != 0)
        return;
    help(t, "process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.");
    textbuf_printf(t, "process_cpu_seconds_total %.17g\n", ps.cpu_seconds);
    help(t, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.");
    textbuf_printf(t, "process_resident_memory_bytes %llu\n", (unsigned long long)ps.resident_bytes);
    help(t, "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.");
    textbuf_printf(t, "process_virtual_memory_bytes %llu\n", (unsigned long long)ps.virtual_bytes);
    help(t, "process_start_time_seconds", "gauge",
         "Start time of the process since unix epoch in seconds.");
    textbuf_printf(t, "process_start_time_seconds %.17g\n", ps.start_time);
    help(t, "process_open_fds", "gauge", "Number of open file descriptors.");
    textbuf_printf(t, "process_open_fds %llu\n", (unsigned long long)ps.open_fds);
    if (ps.max_fds) {
        help(t, "process_max_fds", "gauge", "Maximum number of open file descriptors.");
        textbuf_printf(t, "process_max_fds %llu\n", (unsigned long long)ps.max_fds);
    }
}

static void counter(struct textbuf *t, const char *name, const char *text, uint64_t v)
{
    help(t, name, "counter", text);
    textbuf_printf(t, "%s %llu\n", name, (unsigned long long)v);
}

static void gauge(struct textbuf *t, const char *name, const char *text, double v)
{
    help(t, name, "gauge", text);
    textbuf_printf(t, "%s %.17g\n", name, v);
}

static void reply_metrics(struct loop *l, struct http_request *req, struct textbuf *t)
{
    if (t->failed || !t->buf) {
        free(t->buf);
        reply_error(l, req, API_INTERNAL, NULL, "out of memory");
        return;
    }
    reply_text(l, req, 200, "text/plain; version=0.0.4; charset=utf-8", t->buf, t->len, NULL);
    free(t->buf);
}

/* ---- each shaped upstream's state, from Redis (as /status shows it) ------ */

struct upstreams_call {
    struct loop *loop;
    struct http_request *req;
    const struct config *cfg;       /* retained: CHANNELS point into it */
    struct textbuf t;
    size_t n, pending;
    const struct cfg_channel **channels;
    struct shape_state *states;
};

struct upstream_ask {
    struct upstreams_call *call;
    size_t k;
};

/* A gauge family over the shaped upstreams: VALUE(state) per channel, for
 * those KNOWN says (a number Redis did not give is left out, not 0). */
static void upstream_gauge(struct upstreams_call *c, const char *name, const char *text,
                           bool (*known)(const struct cfg_channel *, const struct shape_state *),
                           double (*value)(const struct shape_state *))
{
    char lb[80];
    bool any = false;
    for (size_t k = 0; k < c->n; k++) {
        if (!known(c->channels[k], &c->states[k]))
            continue;
        if (!any)
            help(&c->t, name, "gauge", text);
        any = true;
        textbuf_printf(&c->t, "%s{upstream=\"%s\"} %.17g\n", name, label(c->channels[k]->name, lb, sizeof lb),
            value(&c->states[k]));
    }
}

static bool answered(const struct cfg_channel *ch, const struct shape_state *s)
{
    (void)ch;
    return s->state != SHAPE_UNKNOWN;
}
static bool rated(const struct cfg_channel *ch, const struct shape_state *s)
{
    return answered(ch, s) && ch->upstream.rate.enabled;
}
static bool warming(const struct cfg_channel *ch, const struct shape_state *s)
{
    return answered(ch, s) && s->warming_up;
}
static double paused_until(const struct shape_state *s) { return s->paused_until_ms / 1000.0; }
static double rate_use(const struct shape_state *s) { return s->rate_use; }
static double queued(const struct shape_state *s) { return (double)s->queued; }
static double backlog(const struct shape_state *s) { return s->backlog_s; }
static double ceiling(const struct shape_state *s) { return s->warmup_ceiling; }
static double sent(const struct shape_state *s) { return s->warmup_sent; }

static void upstreams_done(struct upstreams_call *c)
{
    if (--c->pending > 0)
        return;
    char lb[80];
    static const enum shape_state_kind kinds[] = { SHAPE_OPEN, SHAPE_IS_PAUSED, SHAPE_PROBING,
                                                   SHAPE_UNKNOWN };
    help(&c->t, "capgate_upstream_state", "gauge",
         "1 for the state each shaped upstream is in, for every gateway (unknown: Redis did not "
         "answer).");
    for (size_t k = 0; k < c->n; k++)
        for (size_t s = 0; s < sizeof kinds / sizeof kinds[0]; s++)
            textbuf_printf(&c->t, "capgate_upstream_state{upstream=\"%s\",state=\"%s\"} %d\n",
                label(c->channels[k]->name, lb, sizeof lb), shape_state_name(kinds[s]),
                c->states[k].state == kinds[s]);
    upstream_gauge(c, "capgate_upstream_paused_until_timestamp_seconds",
                   "Unix time the upstream's last pushback pause ends (0: none).", answered,
                   paused_until);
    upstream_gauge(c, "capgate_upstream_rate_use_ratio",
                   "Share of the upstream's burst allowance in use (1: sends wait for the rate).",
                   rated, rate_use);
    upstream_gauge(c, "capgate_upstream_queued",
                   "Sends holding a slot of the upstream's rate ahead (its queue).", rated, queued);
    upstream_gauge(c, "capgate_upstream_backlog_seconds",
                   "How far ahead of now the upstream's schedule of held sends runs.", rated,
                   backlog);
    upstream_gauge(c, "capgate_upstream_warmup_ceiling",
                   "Today's warm-up ceiling of the upstream (while it warms up).", warming, ceiling);
    upstream_gauge(c, "capgate_upstream_warmup_sent",
                   "Forwards counted against today's warm-up ceiling.", warming, sent);
    reply_metrics(c->loop, c->req, &c->t);
    config_release(c->cfg);
    free(c->channels);
    free(c->states);
    free(c);
}

static void on_upstream_state(void *arg, const struct shape_state *s)
{
    struct upstream_ask *a = arg;
    a->call->states[a->k] = *s;
    struct upstreams_call *c = a->call;
    free(a);
    upstreams_done(c);
}

/* Replies T (taken) once each shaped upstream's state is appended. */
static void reply_with_upstreams(struct loop *l, struct http_request *req, struct textbuf *t)
{
    const struct config *cfg = l->cfg;
    size_t n = 0;
    for (size_t k = 0; k < cfg->n_channels; k++)
        n += shape_wanted(cfg, &cfg->channels[k]);
    struct upstreams_call *c = n ? calloc(1, sizeof *c) : NULL;
    if (c) {
        c->channels = calloc(n, sizeof *c->channels);
        c->states = calloc(n, sizeof *c->states);
    }
    if (!c || !c->channels || !c->states) {
        if (c) {
            free(c->channels);
            free(c->states);
            free(c);
        }
        reply_metrics(l, req, t);
        return;
    }
    *c = (struct upstreams_call){ .loop = l, .req = req, .cfg = config_retain(cfg), .t = *t,
                                  .channels = c->channels, .states = c->states, .pending = 1 };
    for (size_t k = 0; k < cfg->n_channels; k++)
        if (shape_wanted(cfg, &cfg->channels[k]))
            c->channels[c->n++] = &cfg->channels[k];
    for (size_t k = 0; k < c->n; k++) {
        c->states[k].state = SHAPE_UNKNOWN;
        struct upstream_ask *a = malloc(sizeof *a);
        if (!a)
            continue;
        *a = (struct upstream_ask){ .call = c, .k = k };
        c->pending++;
        shape_state(l->store, cfg, l->tz, c->channels[k], on_upstream_state, a);
    }
    upstreams_done(c);
}

void api_metrics(struct loop *l, struct http_request *req)
{
    const struct config *cfg = l->cfg;
    struct textbuf t = { 0 };
    char a[80], b[2 * METRICS_ROUTE_LEN + 1];

    struct totals *snap = loop_totals(l);
    if (!snap) {
        reply_error(l, req, API_INTERNAL, NULL, "out of memory");
        return;
    }
    const struct metrics *m = &snap->metrics;
    const struct store_stats ss = snap->redis;

    help(&t, "capgate_build_info", "gauge", "Version of the running capgate.");
    textbuf_printf(&t, "capgate_build_info{version=\"%s\"} 1\n", CAPGATE_VERSION);
    gauge(&t, "capgate_start_time_seconds", "Unix time capgate started.", (double)snap->started);
    gauge(&t, "capgate_workers", "Event loops (threads) serving requests.", snap->workers);

    help(&t, "capgate_decisions_total", "counter",
         "Decisions by outcome, reason, deciding rule and channel.");
    for (size_t k = 0; k < m->n_labels; k++) {
        const struct decision_count *c = &m->by_label[k];
        textbuf_printf(&t, "capgate_decisions_total{decision=\"%s\",reason=\"%s\",rule=\"%s\",channel=\"%s\"} %llu\n",
            decision_outcome_name(c->outcome), decision_reason_name(c->reason),
            label(c->rule, a, sizeof a), label(c->channel, b, sizeof b),
            (unsigned long long)c->n);
    }
    help(&t, "capgate_shadow_hits_total", "counter",
         "Decisions a cap in shadow mode would have made (not enforced).");
    for (size_t k = 0; k < m->n_shadow; k++)
        textbuf_printf(&t, "capgate_shadow_hits_total{rule=\"%s\",would=\"%s\"} %llu\n",
            label(m->shadow[k].rule, a, sizeof a), decision_outcome_name(m->shadow[k].would),
            (unsigned long long)m->shadow[k].n);
    counter(&t, "capgate_signals_total", "Feedback signals recorded (POST /v1/events).",
            m->signals);
    counter(&t, "capgate_erasures_total", "People erased (POST /v1/users/erase).", m->erasures);
    counter(&t, "capgate_audit_file_dropped_total",
            "Audit lines not written to audit.file because the disk fell behind.",
            snap->audit_dropped);
    help(&t, "capgate_deliveries_total", "counter",
         "Proxy mode: messages by upstream (channel) and what became of them.");
    /* Every configured upstream with every outcome (zeros too), then what
     * was counted for channels a reload has since removed. */
    for (size_t c = 0; c < cfg->n_channels; c++) {
        const struct cfg_channel *ch = &cfg->channels[c];
        if (!ch->upstream.enabled)
            continue;
        for (const char *const *o = metrics_delivery_outcomes; *o; o++) {
            uint64_t n = 0;
            for (size_t k = 0; k < m->n_delivery; k++)
                if (strcmp(m->delivery[k].outcome, *o) == 0 &&
                    strcmp(m->delivery[k].channel, ch->name) == 0)
                    n += m->delivery[k].n;
            textbuf_printf(&t, "capgate_deliveries_total{upstream=\"%s\",outcome=\"%s\"} %llu\n",
                label(ch->name, a, sizeof a), *o, (unsigned long long)n);
        }
    }
    for (size_t k = 0; k < m->n_delivery; k++) {
        const struct cfg_channel *ch = config_channel(cfg, m->delivery[k].channel);
        if (ch && ch->upstream.enabled)
            continue;
        textbuf_printf(&t, "capgate_deliveries_total{upstream=\"%s\",outcome=\"%s\"} %llu\n",
            label(m->delivery[k].channel, a, sizeof a), m->delivery[k].outcome,
            (unsigned long long)m->delivery[k].n);
    }
    uint64_t depth = 0, dead = 0;
    for (int tg = 0; tg < 256; tg++) {
        depth += m->deferred_depth[tg];
        dead += m->dead_letters[tg];
    }
    gauge(&t, "capgate_deferred_messages", "Proxy mode: messages waiting in the deferred queue.",
          (double)depth);
    gauge(&t, "capgate_dead_letters", "Proxy mode: messages given up after max_attempts.",
          (double)dead);
    counter(&t, "capgate_replays_total", "Decides answered as replays of an allowed message.",
            m->replays);
    counter(&t, "capgate_dry_runs_total", "Decides evaluated without recording.", m->dry_runs);
    counter(&t, "capgate_releases_total", "Allowed sends released by the sender.", m->releases);
    counter(&t, "capgate_consent_changes_total", "Consent records stored.", m->consents);

    help(&t, "capgate_http_requests_total", "counter", "HTTP responses by status code.");
    for (unsigned code = 100; code < 600; code++)
        if (m->http_status[code])
            textbuf_printf(&t, "capgate_http_requests_total{code=\"%u\"} %llu\n", code,
                (unsigned long long)m->http_status[code]);
    help(&t, "capgate_http_errors_total", "counter", "Error responses by error code.");
    for (int e = 0; e < API_ERROR__COUNT; e++)
        textbuf_printf(&t, "capgate_http_errors_total{code=\"%s\"} %llu\n", api_error_code((enum api_error)e),
            (unsigned long long)m->errors[e]);
    help(&t, "capgate_http_request_duration_seconds", "histogram",
         "Time from a request's headers to its response, by route (the endpoint or configured "
         "route path matched; (other) when none).");
    for (size_t k = 0; k < m->n_routes; k++) {
        char labels[2 * METRICS_ROUTE_LEN + 16];
        snprintf(labels, sizeof labels, "route=\"%s\",",
                 label(m->by_route[k].route, b, sizeof b));
        histogram_labeled(&t, "capgate_http_request_duration_seconds", labels,
                          &m->by_route[k].h);
    }
    gauge(&t, "capgate_http_in_flight_requests", "Requests begun and not yet answered.",
          snap->active);
    gauge(&t, "capgate_http_connections", "Open client connections.",
          snap->connections);

    gauge(&t, "capgate_redis_up", "1 when the Redis connection is ready.", ss.connected);
    counter(&t, "capgate_redis_reconnects_total", "Redis (re)connection attempts.", ss.reconnects);
    counter(&t, "capgate_redis_calls_total", "Script calls sent to Redis.", ss.calls);
    counter(&t, "capgate_redis_timeouts_total", "Script calls not answered within timeout_ms.",
            ss.timeouts);
    counter(&t, "capgate_redis_late_replies_total",
            "Script calls answered as timed out that Redis ran all the same (undone).",
            ss.late_replies);
    counter(&t, "capgate_redis_errors_total", "Script calls answered with a Redis error.",
            ss.errors);
    counter(&t, "capgate_redis_unavailable_total",
            "Script calls refused or lost because Redis was not connected.", ss.unavailable);
    gauge(&t, "capgate_redis_pending_calls", "Script calls waiting on Redis.", ss.pending);
    help(&t, "capgate_redis_rtt_seconds", "histogram", "Round-trip time of script calls.");
    histogram(&t, "capgate_redis_rtt_seconds", &ss.rtt);

    gauge(&t, "capgate_config_generation", "Generation of the config in use (1 at start).",
          (double)cfg->generation);
    gauge(&t, "capgate_config_last_reload_success",
          "1 when the last reload succeeded (or none was tried), 0 when it was refused.",
          snap->last_reload.at == 0 || snap->last_reload.ok);
    gauge(&t, "capgate_config_last_reload_timestamp_seconds",
          "Unix time of the last reload attempt (0: none).", (double)snap->last_reload.at);
    free(snap);
    process_metrics(&t);
    reply_with_upstreams(l, req, &t);
}

void api_admin_reload(struct loop *l, struct http_request *req)
{
    char err[CONFIG_ERR_LEN];
    if (loop_reload(l, err, sizeof err) != 0) {
        reply_error(l, req, API_INVALID_CONFIG, NULL, "%s", err);
        return;
    }
    reply_json(l, req, 200, json_pack("{s:b, s:I}", "reloaded", 1, "generation",
                                      (json_int_t)l->cfg->generation));
}

/*
 * metrics: the counters behind /status and /metrics.  Each worker owns one
 * struct metrics and is its only writer (plain adds, see counter.h); a
 * /status or /metrics request adds up every worker's with metrics_read().
 * Labels never carry a user identifier: only outcome, reason, rule and
 * channel names from the config.
 */
#ifndef CAPGATE_METRICS_H
#define CAPGATE_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "capgate/config.h"
#include "capgate/counter.h"
#include "capgate/decision.h"
#include "capgate/histogram.h"
#include "capgate/store.h"
#include "capgate/api_error.h"

/* Distinct label sets of capgate_decisions_total kept per worker; past it,
 * decisions are counted under rule "(other)". */
#define METRICS_LABELS_MAX 256

/* Distinct routes timed per worker (the endpoints plus the configured
 * routes); past it, requests are timed under "(other)". */
#define METRICS_ROUTES_MAX 64
#define METRICS_ROUTE_LEN 128
struct route_latency {
    char route[METRICS_ROUTE_LEN];
    struct histogram h;
};

/* One label set of capgate_decisions_total. */
struct decision_count {
    enum decision_outcome outcome;
    enum decision_reason reason;
    char rule[CAP_NAME_MAX + 1];     /* "" when no cap decided */
    char channel[33];
    uint64_t n;
};

/* capgate_shadow_hits_total{rule, would} */
#define METRICS_SHADOW_MAX 64
struct shadow_count {
    char rule[CAP_NAME_MAX + 1];
    enum decision_outcome would;
    uint64_t n;
};

/* capgate_deliveries_total{upstream, outcome}: every outcome a message can
 * have, NULL-terminated (/metrics lists each for every upstream, zeros
 * included, so that a rate() has a series before the first failure). */
extern const char *const metrics_delivery_outcomes[];
#define METRICS_DELIVERY_MAX 128
struct delivery_count {
    char channel[33];
    const char *outcome;             /* static string */
    uint64_t n;
};

struct metrics {
    uint64_t decisions[OUTCOME__COUNT][REASON__COUNT];
    struct delivery_count delivery[METRICS_DELIVERY_MAX];
    size_t n_delivery;               /* published with release order */
    uint64_t deferred_depth[256];    /* per tag, as the dispatcher last saw it */
    uint64_t dead_letters[256];      /* ditto */
    struct shadow_count shadow[METRICS_SHADOW_MAX];
    size_t n_shadow;                 /* published with release order */
    uint64_t signals, erasures, shows;
    struct decision_count by_label[METRICS_LABELS_MAX];
    size_t n_labels;                 /* published with release order */
    uint64_t dry_runs, replays;
    uint64_t releases, consents;
    uint64_t http_requests;
    uint64_t http_status[600];       /* by exact status code */
    uint64_t errors[API_ERROR__COUNT];
    /* Request start to response, by route (the router's tag: an endpoint
     * path or a configured route's path, "(other)" when none matched), so
     * a proxied route's upstream time never hides inside decide latency. */
    struct route_latency by_route[METRICS_ROUTES_MAX];
    size_t n_routes;                 /* published with release order */
    size_t last_route;               /* the owner's lookup hint */
    struct histogram http_latency;   /* every route: filled by metrics_accumulate */
};

/* ---- the totals: every loop's figures added up, and the process's own (for
 * /status, /metrics and systemd's STATUS= line) ---- */

struct reload_result {
    time_t at;                       /* 0: no reload yet */
    bool ok;
    char error[CONFIG_ERR_LEN];
};

struct totals {
    struct metrics metrics;          /* summed over the loops */
    struct store_stats redis;        /* summed; connected: every loop's */
    unsigned active, connections, workers;
    struct reload_result last_reload;
    uint64_t generation;             /* of the config the loops were given */
    time_t started;
    uint64_t audit_dropped;          /* audit.file lines lost to a full queue */
};

/* By the owning worker. */
void metrics_count_decision(struct metrics *m, enum decision_outcome o,
                            enum decision_reason r, const char *rule, const char *channel);
void metrics_count_shadow(struct metrics *m, const char *rule, enum decision_outcome would);
/* OUTCOME: one of metrics_delivery_outcomes (a static string). */
void metrics_count_delivery(struct metrics *m, const char *channel, const char *outcome);
/* A response to a request tagged ROUTE (http_noted_route) took SECONDS. */
void metrics_observe_request(struct metrics *m, const char *route, double seconds);
/* From any thread: OUT += a consistent-enough copy of M (label sets merged;
 * OUT's http_latency gets every route's). */
void metrics_accumulate(struct metrics *out, const struct metrics *m);

#endif

/*
 * metrics: the counters behind /status and /metrics.  Each worker owns one
 * struct metrics and is its only writer (plain adds, see counter.h); a
 * /status or /metrics request adds up every worker's with metrics_read().
 * Labels never carry a user identifier: only outcome, reason, rule and
 * channel names from the config.
 */
#ifndef CAPGATE_METRICS_H
#define CAPGATE_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "capgate/config.h"
#include "capgate/counter.h"
#include "capgate/decision.h"
#include "capgate/histogram.h"
#include "capgate/reply.h"

/* Distinct label sets of capgate_decisions_total kept per worker; past it,
 * decisions are counted under rule "(other)". */
#define METRICS_LABELS_MAX 256

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

/* capgate_deliveries_total{upstream, outcome} */
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
    struct histogram http_latency;   /* request start to response */
};

/* By the owning worker. */
void metrics_count_decision(struct metrics *m, enum decision_outcome o,
                            enum decision_reason r, const char *rule, const char *channel);
void metrics_count_shadow(struct metrics *m, const char *rule, enum decision_outcome would);
/* OUTCOME: a static string: delivered, failed, retried, dead, dropped,
 * deferred, superseded, queue_full. */
void metrics_count_delivery(struct metrics *m, const char *channel, const char *outcome);
/* From any thread: OUT += a consistent-enough copy of M (label sets merged). */
void metrics_accumulate(struct metrics *out, const struct metrics *m);

#endif

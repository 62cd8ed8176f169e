/*
 * metrics: the counters behind /status and /metrics.  Plain integers owned
 * by one worker's loop, so no locking and no atomics on the hot path.
 * Labels never carry a user identifier: only outcome, reason, rule and
 * channel names from the config.
 */
#ifndef CAPGATE_METRICS_H
#define CAPGATE_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "capgate/config.h"
#include "capgate/decision.h"
#include "capgate/histogram.h"
#include "capgate/reply.h"

/* One label set of capgate_decisions_total. */
struct decision_count {
    enum decision_outcome outcome;
    enum decision_reason reason;
    char rule[CAP_NAME_MAX + 1];     /* "" when no cap decided */
    char channel[33];
    uint64_t n;
};

struct metrics {
    uint64_t decisions[OUTCOME__COUNT][REASON__COUNT];
    struct decision_count *by_label;
    size_t n_labels, cap_labels;
    uint64_t dry_runs, replays;
    uint64_t releases, consents;
    uint64_t http_requests;
    uint64_t http_status[600];           /* by exact status code */
    uint64_t errors[API_ERROR__COUNT];
    struct histogram http_latency;       /* request start to response */
};

void metrics_count_decision(struct metrics *m, enum decision_outcome o,
                            enum decision_reason r, const char *rule, const char *channel);
void metrics_free(struct metrics *m);

#endif

/*
 * metrics: the counters behind /status (and /metrics).  Plain integers
 * owned by one worker's loop, so no locking and no atomics on the hot path.
 */
#ifndef CAPGATE_METRICS_H
#define CAPGATE_METRICS_H

#include <stdint.h>

#include "capgate/decision.h"
#include "capgate/reply.h"

struct metrics {
    uint64_t decisions[OUTCOME__COUNT][REASON__COUNT];
    uint64_t dry_runs, replays;
    uint64_t releases, consents;
    uint64_t http_requests;
    uint64_t http_status[6];           /* by status / 100 */
    uint64_t errors[API_ERROR__COUNT];
};

#endif

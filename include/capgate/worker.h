/*
 * worker: what one event loop owns, handed to every endpoint handler.
 * One worker = one event_base, one HTTP server, one Redis connection.
 */
#ifndef CAPGATE_WORKER_H
#define CAPGATE_WORKER_H

#include <stdint.h>
#include <time.h>

#include "capgate/metrics.h"

struct event_base;
struct config;
struct pseudonym;
struct tz_db;
struct store;
struct http_server;

struct worker {
    struct event_base *base;
    const struct config *cfg;          /* the config requests start with */
    const struct pseudonym *pseudonym;
    const struct tz_db *tz;
    struct store *store;
    struct http_server *http;
    struct metrics metrics;
    time_t started;                    /* wall clock, for uptime */
};

#endif

/*
 * worker: what one event loop owns -- its HTTP server, its Redis connection,
 * the config its requests start with -- and how that changes at a reload.
 *
 * A reload loads and validates the new file completely before anything
 * changes.  Then, only for the parts that changed, a new HTTP server
 * (SO_REUSEPORT, so the port is never closed) and a new Redis connection
 * are started; the old ones stop taking new work, finish what they hold,
 * and are freed.  A request keeps the config it started with (refcount).
 */
#ifndef CAPGATE_WORKER_H
#define CAPGATE_WORKER_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "capgate/config.h"
#include "capgate/metrics.h"

struct event_base;
struct event;
struct pseudonym;
struct tz_db;
struct store;
struct http_server;

#define WORKER_RETIRED_MAX 8

struct reload_result {
    time_t at;                       /* 0: no reload yet */
    bool ok;
    char error[CONFIG_ERR_LEN];
};

struct worker {
    struct event_base *base;
    const struct config *cfg;        /* the current config; one reference held */
    struct pseudonym *pseudonym;
    struct tz_db *tz;
    struct store *store;
    struct store *next_store;        /* after a reload, until it is ready */
    struct http_server *http;
    struct metrics metrics;
    time_t started;                  /* wall clock, for uptime */
    struct reload_result last_reload;

    /* Replaced by a reload, freed once they hold no more work. */
    struct http_server *old_http[WORKER_RETIRED_MAX];
    struct store *old_store[WORKER_RETIRED_MAX];
    time_t old_store_since[WORKER_RETIRED_MAX];
    struct event *housekeeping;
    bool announced_ready;
    bool stopping;
};

/* Takes ownership of CFG (one reference), PSEUDONYM and TZ.  Starts Redis and
 * HTTP.  Returns NULL with ERR filled (and frees nothing it was given). */
struct worker *worker_create(struct event_base *base, struct config *cfg,
                             struct pseudonym *pseudonym, struct tz_db *tz,
                             char *err, size_t errlen);

/* Re-reads the config file.  0 on success; -1 with ERR when the new config
 * was refused (the old one keeps serving).  The result is also kept in
 * w->last_reload, for /status. */
int worker_reload(struct worker *w, char *err, size_t errlen);

/* Stops accepting connections; requests in flight go on. */
void worker_quiesce(struct worker *w);
/* Requests begun and not yet answered, over every server. */
unsigned worker_active_requests(const struct worker *w);
/* Answers what still waits on Redis, then frees everything. */
void worker_free(struct worker *w);

/* Loads the key file and the zone database of CFG (start-up and reload). */
int worker_load_support(const struct config *cfg, struct pseudonym **pseudonym,
                        struct tz_db **tz, char *err, size_t errlen);

#endif

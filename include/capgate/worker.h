/*
 * worker: one event loop on its own thread, with its own HTTP server (all
 * workers listen on the same port: SO_REUSEPORT) and its own Redis
 * connection, on which calls are pipelined.  Endpoint handlers get their
 * worker; everything in it is touched only by its thread, except where a
 * comment says otherwise.  The gateway (gateway.h) starts, reloads and
 * stops the workers.
 */
#ifndef CAPGATE_WORKER_H
#define CAPGATE_WORKER_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "capgate/config.h"
#include "capgate/metrics.h"
#include "capgate/store.h"

struct event_base;
struct event;
struct pseudonym;
struct tz_db;
struct http_server;
struct gateway;
struct upstream_pool;
struct dispatcher;
struct decide_batch;

/* An immutable config and what is derived from it, shared by the workers. */
struct generation {
    unsigned refs;                   /* atomic */
    struct config *cfg;              /* holds one config reference */
    struct tz_db *tz;
    char *tls_cert, *tls_key;        /* PEM, when tls is configured */
};

struct generation *generation_new(struct config *cfg, struct tz_db *tz);
/* Reads the TLS certificate and key files named by the config (start-up and
 * reload only).  0, or -1 with ERR. */
int generation_load_tls(struct generation *g, char *err, size_t errlen);
struct generation *generation_retain(struct generation *g);
void generation_release(struct generation *g);

#define WORKER_RETIRED_MAX 8

struct worker {
    struct gateway *gw;
    unsigned id;
    unsigned n_workers;
    struct event_base *base;
    pthread_t thread;

    struct generation *gen;          /* the config requests start with */
    const struct config *cfg;        /* gen->cfg */
    const struct tz_db *tz;          /* gen->tz */
    const struct pseudonym *pseudonym;   /* shared, never changes */

    struct store *store;
    struct store *next_store;        /* after a reload, until it is ready */
    struct decide_batch *decide_batch;   /* decisions of a loop turn, one Redis call */
    struct http_server *http;
    /* Proxy mode: outbound HTTP (libcurl multi), one pool per channel so
     * each upstream gets its own max_connections; a pool whose limit a
     * reload changed is retired and freed once idle. */
    struct channel_pool {
        char channel[33];
        unsigned limit;
        struct upstream_pool *pool;
    } pools[32], retired_pools[32];
    size_t n_pools, n_retired_pools;
    struct dispatcher *dispatcher;   /* proxy mode: the deferred queue's share of this loop */
    struct metrics metrics;          /* written here; read by any (counter.h) */

    /* Replaced by a reload, freed once they hold no more work. */
    struct http_server *old_http[WORKER_RETIRED_MAX];
    struct store *old_store[WORKER_RETIRED_MAX];
    time_t old_store_since[WORKER_RETIRED_MAX];
    struct store_stats retired_redis;    /* counters of freed connections */

    /* Shared with other threads. */
    pthread_mutex_t stats_lock;      /* guards store/http pointers for readers */
    int command_fd;                  /* eventfd: other threads write to wake it */
    struct event *command;           /* reads command_fd */
    struct generation *pending;      /* a generation to apply (atomic) */
    int quiesce_requested;           /* atomic */
    int stop_now;                    /* atomic */
    uint64_t shutdown_deadline_us;
    unsigned connections;            /* published by housekeeping (atomic) */
    uint64_t heartbeat_us;           /* last housekeeping tick (atomic): watchdog */

    struct event *housekeeping;
    unsigned audit_trim_next;        /* this worker's next tag to trim, by rank */
    unsigned audit_trims_in_flight;
    bool stopping;
    uint64_t finishing_us;           /* Redis dropped; waiting for HTTP to flush */
};

/* Creates worker ID (its loop, Redis connection and listener) on the
 * calling thread; worker_start() then runs it on its own thread. */
struct worker *worker_create(struct gateway *gw, unsigned id, unsigned n_workers,
                             struct generation *gen, const struct pseudonym *pseudonym,
                             char *err, size_t errlen);
int worker_start(struct worker *w);

/* From any thread: ask the worker to take generation GEN (a reference is
 * taken), to stop accepting and drain until DEADLINE_US, or to stop now. */
void worker_post_generation(struct worker *w, struct generation *gen);
void worker_post_quiesce(struct worker *w, uint64_t deadline_us);
void worker_post_stop(struct worker *w);
/* On the worker's own thread: apply a posted generation now. */
void worker_apply_pending(struct worker *w);

/* The pool for CH's upstream (created on first use, sized by its
 * max_connections shared among the workers).  NULL when it cannot be made. */
struct upstream_pool *worker_upstream(struct worker *w, const struct cfg_channel *ch);

/* From any thread: add this worker's figures into the totals. */
void worker_read_stats(struct worker *w, struct metrics *m, struct store_stats *redis,
                       unsigned *active, unsigned *connections, bool *redis_ready);

/* After its thread has ended (pthread_join): frees what is left. */
void worker_free(struct worker *w);

#endif

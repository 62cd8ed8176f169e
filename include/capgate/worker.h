/*
 * worker: one event loop on its own thread, with its own HTTP server (all
 * workers listen on the same port: SO_REUSEPORT), its own Redis connection
 * (calls pipelined) and its share of the deferred queue.  It owns a struct
 * loop (loop.h), which is all its handlers, the router and the dispatcher
 * see.  The gateway starts, reloads and stops workers; what a worker needs
 * from above -- the connection limits, the request handler, the hooks it
 * hands its loop, a "Redis is ready" hook -- it is given at creation, the way
 * hiredis takes its event-loop hooks: it never calls up.
 */
#ifndef CAPGATE_WORKER_H
#define CAPGATE_WORKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "capgate/config.h"
#include "capgate/http.h"
#include "capgate/loop.h"
#include "capgate/metrics.h"
#include "capgate/store.h"

struct pseudonym;
struct tz_db;
struct connlimit;
struct worker;

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

struct worker_setup {
    unsigned id, n_workers;
    struct generation *gen;          /* a reference is taken */
    const struct pseudonym *pseudonym;   /* outlives the worker */
    struct connlimit *limits;        /* the process's connection limits, shared */
    http_handler *handler;           /* serves every request; its argument is the loop */
    http_handler *public_handler;    /* serves public.listen's (the /u/ pages), the same way */
    struct connlimit *public_limits; /* public.listen's limits, shared */
    const struct loop_hooks *hooks;  /* handed to the loop; outlive the worker */
    void (*redis_ready)(void *owner);    /* from the worker's thread, whenever its Redis */
    void *owner;                         /* connection becomes ready */
};

/* Creates the worker (its loop, Redis connection and listener) on the
 * calling thread; worker_start() then runs it on its own thread. */
struct worker *worker_create(const struct worker_setup *setup, char *err, size_t errlen);
int worker_start(struct worker *w);
/* After worker_post_quiesce or _stop: waits for its thread to end. */
void worker_join(struct worker *w);

/* From any thread: ask the worker to take generation GEN (a reference is
 * taken), to stop accepting and drain until DEADLINE_US, or to stop now. */
void worker_post_generation(struct worker *w, struct generation *gen);
void worker_post_quiesce(struct worker *w, uint64_t deadline_us);
void worker_post_stop(struct worker *w);
/* True while a posted generation waits to be taken. */
bool worker_generation_pending(const struct worker *w);
/* On the worker's own thread: apply a posted generation now. */
void worker_apply_pending(struct worker *w);
/* The worker whose loop L is (for a hook called from that loop). */
struct worker *worker_of_loop(struct loop *l);
struct loop *worker_loop(struct worker *w);

/* From any thread. */
bool worker_redis_ready(struct worker *w);
uint64_t worker_heartbeat_us(const struct worker *w);   /* last tick: the watchdog */
/* Adds this worker's figures into the totals. */
void worker_read_stats(struct worker *w, struct metrics *m, struct store_stats *redis,
                       unsigned *active, unsigned *connections, bool *redis_ready);

/* After its thread has ended (worker_join): frees what is left. */
void worker_free(struct worker *w);

#endif

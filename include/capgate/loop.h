/*
 * loop: what the code of one event loop may touch -- the per-loop context
 * (as h2o's h2o_context_t, memcached's LIBEVENT_THREAD).  Handlers, the
 * router, reply, decide and the dispatcher get a struct loop, never the
 * worker that owns it.
 *
 * Everything here belongs to one thread (the loop's), except where a
 * comment says otherwise.  The owner (worker.c) keeps the fields current: a
 * reload replaces CFG and TZ between two requests, and STORE once the new
 * Redis connection is ready.  A request that must outlive a reload holds
 * its own reference to the config it started with (config_retain).
 *
 * What the process shares (the reload, the totals of every loop, the audit
 * file) is reached through HOOKS, handed down by the gateway: nothing here
 * calls up.
 */
#ifndef CAPGATE_LOOP_H
#define CAPGATE_LOOP_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "capgate/config.h"
#include "capgate/metrics.h"

struct event_base;
struct store;
struct pseudonym;
struct tz_db;
struct decide_batch;
struct breaker;
struct campaign_names;
struct delivery_pools;
struct loop;

/* The process-wide services a loop may use.  OWNER is passed back. */
struct loop_hooks {
    void *owner;
    /* Every loop's Redis connection is ready (/readyz). */
    bool (*ready)(void *owner);
    /* The totals of every loop (/status, /metrics); TOTALS is large. */
    void (*totals)(void *owner, struct totals *out);
    /* Reloads the config file (POST /v1/admin/reload); CALLER takes it at
     * once.  0, or -1 with ERR (the old config keeps serving). */
    int (*reload)(void *owner, struct loop *caller, char *err, size_t errlen);
    /* The audit trail's JSON-lines copy (audit.file): WANTED is true when one
     * is configured; WRITE appends ENTRY (reference stolen), adding "ts". */
    bool (*audit_wanted)(void *owner);
    void (*audit_write)(void *owner, json_t *entry);
    /* The loop whose dispatcher serves tag TAG's queue (NULL: none). */
    struct loop *(*queue_owner)(void *owner, unsigned tag);
};

struct loop {
    unsigned id, n_loops;            /* this loop is ID of N_LOOPS (0-based) */
    struct event_base *base;
    const struct config *cfg;        /* the config new requests start with */
    const struct tz_db *tz;          /* its time zones */
    const struct pseudonym *pseudonym;   /* shared, never changes */
    struct store *store;             /* the loop's Redis connection */
    struct decide_batch *batch;      /* decisions of a loop turn, one Redis call */
    struct delivery_pools *upstreams;    /* proxy mode: outbound HTTP, a pool per channel */
    struct breaker *breaker;         /* the campaign breaker's counts and paused campaigns */
    struct campaign_names *names;    /* the campaign names its decisions met (campaigns.h) */
    struct metrics metrics;          /* written here only; read by any (counter.h) */
    const struct loop_hooks *hooks;
    /* When this loop's dispatcher claims from each of its tags next
     * (monotonic us; 0 at start: every tag is looked at once).  Written by
     * any loop through loop_queued(), read by the dispatcher. */
    _Atomic uint64_t queue_due_us[256];
};

/* The hooks, asked from the loop's own thread. */
bool loop_ready(const struct loop *l);
/* A fresh copy of the totals (malloc'ed: it is large), NULL when out of memory. */
struct totals *loop_totals(const struct loop *l);
int loop_reload(struct loop *l, char *err, size_t errlen);
bool loop_audit_wanted(const struct loop *l);
/* Appends ENTRY (reference stolen) to audit.file, if one is configured. */
void loop_audit(const struct loop *l, json_t *entry);
/* Something was queued in tag TAG's queue, due in DUE_MS: the dispatcher
 * that serves the tag claims then (it does not poll an idle queue). */
void loop_queued(const struct loop *l, unsigned tag, uint64_t due_ms);
/* Tag TAG of L's own is due at AT_US at the latest (monotonic). */
void loop_due_by(struct loop *l, unsigned tag, uint64_t at_us);

#endif

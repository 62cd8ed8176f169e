/*
 * gateway: the workers of one capgate process, and what they share -- the
 * key (pseudonym), the current generation (config + zones), the reload
 * lock and the last reload's result.  Runs on the main thread, whose own
 * loop only handles signals and the systemd watchdog; handlers reach it
 * through their worker for /v1/admin/reload, /status and /metrics.
 */
#ifndef CAPGATE_GATEWAY_H
#define CAPGATE_GATEWAY_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "capgate/config.h"
#include "capgate/metrics.h"
#include "capgate/store.h"

struct pseudonym;
struct tz_db;
struct worker;

struct reload_result {
    time_t at;                       /* 0: no reload yet */
    bool ok;
    char error[CONFIG_ERR_LEN];
};

struct gateway;

/* Loads what a config needs besides itself: the key file and the zone
 * database (at start-up and at each reload, never while serving). */
int gateway_load_support(const struct config *cfg, struct pseudonym **pseudonym,
                         struct tz_db **tz, char *err, size_t errlen);

/* Takes CFG (one reference), PSEUDONYM and TZ; starts cfg->workers workers
 * (0: one per CPU).  NULL with ERR when a worker cannot start. */
struct gateway *gateway_start(struct config *cfg, struct pseudonym *pseudonym,
                              struct tz_db *tz, char *err, size_t errlen);

/* Re-reads the config file and, when all of it is valid, hands it to every
 * worker and waits until each has taken it.  CALLER is the worker asking
 * (admin endpoint) or NULL (SIGHUP).  0, or -1 with ERR (old config stays). */
int gateway_reload(struct gateway *gw, struct worker *caller, char *err, size_t errlen);

/* Stop accepting; drain in-flight requests until shutdown_timeout; then
 * the workers end.  gateway_wait() joins them; a second call of
 * gateway_stop_now() cuts the drain short. */
void gateway_quiesce(struct gateway *gw);
void gateway_stop_now(struct gateway *gw);
void gateway_wait(struct gateway *gw);
void gateway_free(struct gateway *gw);

/* The audit trail's JSON-lines copy (audit.file), from any worker: true
 * when one is configured; gateway_audit() then appends ENTRY (stolen) with
 * a "ts" field added. */
bool gateway_audit_wanted(struct gateway *gw);
void gateway_audit(struct gateway *gw, json_t *entry);
uint64_t gateway_audit_dropped(struct gateway *gw);

/* The process-wide connection limits every listener shares. */
struct connlimit *gateway_connlimit(struct gateway *gw);
/* True when every worker's Redis connection is ready (/readyz). */
bool gateway_ready(struct gateway *gw);

/* READY=1 once one worker has Redis (called by workers). */
void gateway_redis_ready(struct gateway *gw);
/* True when every worker's loop ticked recently (watchdog). */
bool gateway_alive(struct gateway *gw, uint64_t max_age_us);

struct gateway_snapshot {
    struct metrics metrics;          /* summed over workers */
    struct store_stats redis;        /* summed; connected: every worker's */
    unsigned active, connections, workers;
    struct reload_result last_reload;
    uint64_t generation;             /* of the config the workers were given */
    time_t started;
};

/* From any thread.  SNAP is large: allocate it. */
void gateway_snapshot(struct gateway *gw, struct gateway_snapshot *snap);

#endif

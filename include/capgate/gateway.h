/*
 * gateway: the workers of one capgate process, and what they share -- the
 * key (pseudonym), the current generation (config + zones), the reload
 * lock and the last reload's result.  Runs on the main thread, whose own
 * loop only handles signals and the systemd watchdog; handlers reach it
 * only through the hooks it hands every loop (loop.h): reload, totals,
 * readiness, the audit file.
 */
#ifndef CAPGATE_GATEWAY_H
#define CAPGATE_GATEWAY_H

#include <stdbool.h>
#include <stdint.h>

#include "capgate/config.h"
#include "capgate/metrics.h"

struct pseudonym;
struct tz_db;

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
 * worker and waits until each has taken it (SIGHUP; the admin endpoint
 * reaches the same through its loop's hooks).  0, or -1 with ERR (the old
 * config stays). */
int gateway_reload(struct gateway *gw, char *err, size_t errlen);

/* Stop accepting; drain in-flight requests until shutdown_timeout; then
 * the workers end.  gateway_wait() joins them; a second call of
 * gateway_stop_now() cuts the drain short. */
void gateway_quiesce(struct gateway *gw);
void gateway_stop_now(struct gateway *gw);
void gateway_wait(struct gateway *gw);
void gateway_free(struct gateway *gw);

/* True when every worker's loop ticked recently (watchdog). */
bool gateway_alive(struct gateway *gw, uint64_t max_age_us);

/* From any thread.  TOTALS is large: allocate it. */
void gateway_totals(struct gateway *gw, struct totals *totals);

#endif

/* gateway: the workers and what they share.  See gateway.h. */
#include "capgate/gateway.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "capgate/counter.h"
#include "capgate/decision.h"
#include "capgate/http.h"
#include "capgate/log.h"
#include "capgate/notify.h"
#include "capgate/pseudonym.h"
#include "capgate/tz.h"
#include "capgate/worker.h"

#define APPLY_WAIT_S 5

struct gateway {
    struct worker **workers;
    unsigned n;
    struct pseudonym *pseudonym;
    struct generation *gen;          /* current; guarded by reload_lock */
    pthread_mutex_t reload_lock;     /* one reload at a time */
    pthread_mutex_t lock;            /* last_reload */
    struct reload_result last_reload;
    uint64_t generation;             /* guarded by lock */
    int ready_announced;             /* atomic */
    time_t started;
};

int gateway_load_support(const struct config *cfg, struct pseudonym **pseudonym,
                         struct tz_db **tz, char *err, size_t errlen)
{
    *tz = NULL;
    *pseudonym = NULL;
    if (decision_check_config(cfg, err, errlen) != 0)
        return -1;
    *pseudonym = pseudonym_load(cfg->key_file, err, errlen);
    if (!*pseudonym)
        return -1;
    *tz = tz_db_load(cfg->quiet_hours.zoneinfo_dir, err, errlen);
    if (*tz && cfg->quiet_hours.enabled && !tz_db_find(*tz, cfg->quiet_hours.default_tz)) {
        snprintf(err, errlen, "quiet_hours.default_tz: unknown time zone \"%s\"",
                 cfg->quiet_hours.default_tz);
        tz_db_free(*tz);
        *tz = NULL;
    }
    if (!*tz) {
        pseudonym_free(*pseudonym);
        *pseudonym = NULL;
        return -1;
    }
    return 0;
}

static unsigned worker_count(const struct config *cfg)
{
    if (cfg->workers > 0)
        return (unsigned)cfg->workers;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 64 ? 64 : (unsigned)n;
}

struct gateway *gateway_start(struct config *cfg, struct pseudonym *pseudonym,
                              struct tz_db *tz, char *err, size_t errlen)
{
    struct gateway *gw = calloc(1, sizeof *gw);
    if (!gw || !(gw->gen = generation_new(cfg, tz))) {
        free(gw);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    gw->pseudonym = pseudonym;
    gw->started = time(NULL);
    gw->generation = cfg->generation;
    pthread_mutex_init(&gw->reload_lock, NULL);
    pthread_mutex_init(&gw->lock, NULL);
    gw->n = worker_count(cfg);
    gw->workers = calloc(gw->n, sizeof *gw->workers);
    for (unsigned k = 0; gw->workers && k < gw->n; k++) {
        gw->workers[k] = worker_create(gw, k, gw->gen, pseudonym, err, errlen);
        if (!gw->workers[k]) {
            gw->n = k;
            gateway_free(gw);
            return NULL;
        }
    }
    if (cfg->redis.fail_open)
        gateway_redis_ready(gw);   /* failing open, capgate serves without Redis */
    for (unsigned k = 0; k < gw->n; k++)
        if (worker_start(gw->workers[k]) != 0) {
            snprintf(err, errlen, "cannot start worker thread %u: %s", k, strerror(errno));
            /* Threads already running are stopped by the caller's exit. */
            return NULL;
        }
    return gw;
}

void gateway_redis_ready(struct gateway *gw)
{
    if (__atomic_exchange_n(&gw->ready_announced, 1, __ATOMIC_ACQ_REL) == 0)
        notify_ready();
}

static int refuse(struct gateway *gw, char *err, size_t errlen, const char *why)
{
    if (why != err)
        snprintf(err, errlen, "%s", why);
    pthread_mutex_lock(&gw->lock);
    gw->last_reload.at = time(NULL);
    gw->last_reload.ok = false;
    snprintf(gw->last_reload.error, sizeof gw->last_reload.error, "%s", err);
    pthread_mutex_unlock(&gw->lock);
    log_error("reload refused; the old config keeps serving", "error=\"%s\"", err);
    notify_ready();
    return -1;
}

int gateway_reload(struct gateway *gw, struct worker *caller, char *err, size_t errlen)
{
    if (caller) {
        /* A worker must never wait for another reload: that one may be
         * waiting for this worker to take its config. */
        if (pthread_mutex_trylock(&gw->reload_lock) != 0) {
            snprintf(err, errlen, "another reload is in progress; try again");
            return -1;
        }
    } else {
        pthread_mutex_lock(&gw->reload_lock);
    }
    const struct config *old = gw->gen->cfg;
    struct pseudonym *pseud = NULL;
    struct tz_db *tz = NULL;
    int rc = -1;

    notify_reloading();
    log_info("reloading", "path=%s", old->path);

    /* 1. Everything is checked before anything changes. */
    struct config *cfg = config_load(old->path, err, errlen);
    if (!cfg) {
        rc = refuse(gw, err, errlen, err);
        goto out;
    }
    cfg->generation = old->generation + 1;
    if (gateway_load_support(cfg, &pseud, &tz, err, errlen) != 0) {
        config_release(cfg);
        rc = refuse(gw, err, errlen, err);
        goto out;
    }
    bool same_key = pseudonym_same_key(pseud, gw->pseudonym);
    pseudonym_free(pseud);
    if (!same_key) {
        /* Every person's history is keyed by it: a new key would silently
         * make everyone a stranger.  Rotating it is a restart, on purpose. */
        tz_db_free(tz);
        config_release(cfg);
        rc = refuse(gw, err, errlen,
                    "privacy.key_file: holds a different key; restart capgate to change it");
        goto out;
    }
    if (worker_count(cfg) != gw->n)
        log_warn("reload: workers changes at the next restart", "running=%u configured=%u",
                 gw->n, worker_count(cfg));

    /* 2. Every worker takes it; the caller at once, the others on their
     *    threads.  Requests in flight keep the config they started with. */
    struct generation *gen = generation_new(cfg, tz);
    if (!gen) {
        tz_db_free(tz);
        config_release(cfg);
        rc = refuse(gw, err, errlen, "out of memory");
        goto out;
    }
    for (unsigned k = 0; k < gw->n; k++)
        worker_post_generation(gw->workers[k], gen);
    if (caller)
        worker_apply_pending(caller);
    uint64_t deadline = http_now_us() + APPLY_WAIT_S * 1000000u;
    for (unsigned k = 0; k < gw->n; k++)
        while (__atomic_load_n(&gw->workers[k]->pending, __ATOMIC_ACQUIRE) &&
               http_now_us() < deadline)
            usleep(200);
    generation_release(gw->gen);
    gw->gen = gen;
    log_set_level(cfg->log_level);
    pthread_mutex_lock(&gw->lock);
    gw->last_reload.at = time(NULL);
    gw->last_reload.ok = true;
    gw->last_reload.error[0] = '\0';
    gw->generation = cfg->generation;
    pthread_mutex_unlock(&gw->lock);
    log_info("reloaded", "generation=%llu workers=%u", (unsigned long long)cfg->generation, gw->n);
    notify_ready();
    rc = 0;
out:
    pthread_mutex_unlock(&gw->reload_lock);
    return rc;
}

void gateway_quiesce(struct gateway *gw)
{
    uint64_t deadline = http_now_us() + (uint64_t)gw->gen->cfg->shutdown_timeout_s * 1000000u;
    for (unsigned k = 0; k < gw->n; k++)
        worker_post_quiesce(gw->workers[k], deadline);
}

void gateway_stop_now(struct gateway *gw)
{
    for (unsigned k = 0; k < gw->n; k++)
        worker_post_stop(gw->workers[k]);
}

void gateway_wait(struct gateway *gw)
{
    for (unsigned k = 0; k < gw->n; k++)
        pthread_join(gw->workers[k]->thread, NULL);
}

void gateway_free(struct gateway *gw)
{
    if (!gw)
        return;
    for (unsigned k = 0; k < gw->n; k++)
        worker_free(gw->workers[k]);
    free(gw->workers);
    generation_release(gw->gen);
    pseudonym_free(gw->pseudonym);
    pthread_mutex_destroy(&gw->reload_lock);
    pthread_mutex_destroy(&gw->lock);
    free(gw);
}

bool gateway_alive(struct gateway *gw, uint64_t max_age_us)
{
    uint64_t now = http_now_us();
    for (unsigned k = 0; k < gw->n; k++)
        if (now - COUNTER_GET(gw->workers[k]->heartbeat_us) > max_age_us)
            return false;
    return true;
}

void gateway_snapshot(struct gateway *gw, struct gateway_snapshot *snap)
{
    memset(snap, 0, sizeof *snap);
    bool ready = true;
    for (unsigned k = 0; k < gw->n; k++)
        worker_read_stats(gw->workers[k], &snap->metrics, &snap->redis, &snap->active,
                          &snap->connections, &ready);
    snap->redis.connected = ready;
    snap->workers = gw->n;
    snap->started = gw->started;
    pthread_mutex_lock(&gw->lock);
    snap->last_reload = gw->last_reload;
    snap->generation = gw->generation;
    pthread_mutex_unlock(&gw->lock);
}

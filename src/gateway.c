/* gateway: the workers and what they share.  See gateway.h. */
#include "capgate/gateway.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "capgate/audit_file.h"
#include "capgate/auth.h"
#include "capgate/clock.h"
#include "capgate/connlimit.h"
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
    struct connlimit *limits;
    struct audit_file *audit;        /* atomic pointer; NULL: no file */
    struct audit_file *old_audit[16];/* replaced by reloads, closed at exit */
    size_t n_old_audit;
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
    if (generation_load_tls(gw->gen, err, errlen) != 0) {
        /* The generation owns CFG and TZ now: the caller must not free them. */
        generation_release(gw->gen);
        gw->gen = NULL;
        free(gw);
        return NULL;
    }
    gw->pseudonym = pseudonym;
    gw->started = time(NULL);
    gw->generation = cfg->generation;
    pthread_mutex_init(&gw->reload_lock, NULL);
    pthread_mutex_init(&gw->lock, NULL);
    gw->n = worker_count(cfg);
    gw->limits = connlimit_new(cfg->limits.max_connections, cfg->limits.max_connections_per_ip);
    gw->workers = calloc(gw->n, sizeof *gw->workers);
    for (unsigned k = 0; gw->workers && k < gw->n; k++) {
        gw->workers[k] = worker_create(gw, k, gw->n, gw->gen, pseudonym, err, errlen);
        if (!gw->workers[k]) {
            gw->n = k;
            gateway_free(gw);
            return NULL;
        }
    }
    if (cfg->audit.enabled && cfg->audit.file &&
        !(gw->audit = audit_file_open(cfg->audit.file, err, errlen))) {
        gw->n = 0;
        gateway_free(gw);
        return NULL;
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
    if (!cfg->auth.enabled && !auth_is_loopback(cfg->listen_host)) {
        pseudonym_free(pseud);
        tz_db_free(tz);
        config_release(cfg);
        snprintf(err, errlen, "%s: listen: %s is not a loopback address, and there is no auth "
                              "section: without access control capgate only listens on loopback",
                 old->path, old->listen);
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
    if (generation_load_tls(gen, err, errlen) != 0) {
        generation_release(gen);
        rc = refuse(gw, err, errlen, err);
        goto out;
    }
    /* The audit file is reopened at every reload (log rotation works with a
     * plain mv + reload); the old one stays open until exit, as a worker
     * may be handing it a line right now. */
    struct audit_file *af = NULL;
    if (cfg->audit.enabled && cfg->audit.file &&
        !(af = audit_file_open(cfg->audit.file, err, errlen))) {
        generation_release(gen);
        rc = refuse(gw, err, errlen, err);
        goto out;
    }
    struct audit_file *old_af = __atomic_exchange_n(&gw->audit, af, __ATOMIC_ACQ_REL);
    if (old_af) {
        if (gw->n_old_audit < sizeof gw->old_audit / sizeof gw->old_audit[0])
            gw->old_audit[gw->n_old_audit++] = old_af;
        else
            log_warn("too many audit files replaced since start; keeping one open", NULL);
    }
    for (unsigned k = 0; k < gw->n; k++)
        worker_post_generation(gw->workers[k], gen);
    if (caller)
        worker_apply_pending(caller);
    uint64_t deadline = clock_now_us() + APPLY_WAIT_S * 1000000u;
    for (unsigned k = 0; k < gw->n; k++)
        while (__atomic_load_n(&gw->workers[k]->pending, __ATOMIC_ACQUIRE) &&
               clock_now_us() < deadline)
            usleep(200);
    generation_release(gw->gen);
    gw->gen = gen;
    log_set_level(cfg->log_level);
    connlimit_set(gw->limits, cfg->limits.max_connections, cfg->limits.max_connections_per_ip);
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
    uint64_t deadline = clock_now_us() + (uint64_t)gw->gen->cfg->shutdown_timeout_s * 1000000u;
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
    audit_file_close(gw->audit);
    connlimit_free(gw->limits);
    for (size_t k = 0; k < gw->n_old_audit; k++)
        audit_file_close(gw->old_audit[k]);
    pthread_mutex_destroy(&gw->reload_lock);
    pthread_mutex_destroy(&gw->lock);
    free(gw);
}

struct connlimit *gateway_connlimit(struct gateway *gw)
{
    return gw->limits;
}

bool gateway_ready(struct gateway *gw)
{
    bool ready = true;
    for (unsigned k = 0; k < gw->n && ready; k++) {
        struct worker *w = gw->workers[k];
        pthread_mutex_lock(&w->stats_lock);
        ready = w->store && store_ready(w->store);
        pthread_mutex_unlock(&w->stats_lock);
    }
    return ready;
}

bool gateway_audit_wanted(struct gateway *gw)
{
    return __atomic_load_n(&gw->audit, __ATOMIC_ACQUIRE) != NULL;
}

void gateway_audit(struct gateway *gw, json_t *entry)
{
    struct audit_file *f = __atomic_load_n(&gw->audit, __ATOMIC_ACQUIRE);
    if (f && entry) {
        struct timespec ts;
        struct tm tm;
        char when[40];
        clock_gettime(CLOCK_REALTIME, &ts);
        gmtime_r(&ts.tv_sec, &tm);
        size_t n = strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
        snprintf(when + n, sizeof when - n, ".%03ldZ", ts.tv_nsec / 1000000);
        json_object_set_new(entry, "ts", json_string(when));
        char *line = json_dumps(entry, JSON_COMPACT | JSON_SORT_KEYS);
        if (line) {
            audit_file_write(f, line, strlen(line));
            free(line);
        }
    }
    json_decref(entry);
}

uint64_t gateway_audit_dropped(struct gateway *gw)
{
    uint64_t n = audit_file_dropped(__atomic_load_n(&gw->audit, __ATOMIC_ACQUIRE));
    for (size_t k = 0; k < gw->n_old_audit; k++)
        n += audit_file_dropped(gw->old_audit[k]);
    return n;
}

bool gateway_alive(struct gateway *gw, uint64_t max_age_us)
{
    uint64_t now = clock_now_us();
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

/* gateway: the workers and what they share.  See gateway.h. */
#include "capgate/gateway.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "capgate/audit_file.h"
#include "capgate/auth.h"
#include "capgate/clock.h"
#include "capgate/connlimit.h"
#include "capgate/public.h"
#include "capgate/counter.h"
#include "capgate/decision.h"
#include "capgate/http.h"
#include "capgate/log.h"
#include "capgate/notify.h"
#include "capgate/pseudonym.h"
#include "capgate/router.h"
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
    struct connlimit *public_limits;   /* public.listen's, apart: its clients are anyone */
    struct audit_file *audit;        /* atomic pointer; NULL: no file */
    struct audit_file *old_audit[16];/* replaced by reloads, closed at exit */
    size_t n_old_audit;
    time_t started;
    struct loop_hooks hooks;         /* what every worker's loop may ask of it */
};

static void loops_totals(void *owner, struct totals *out);
static bool loops_ready(void *owner);
static int reload_from_loop(void *owner, struct loop *caller, char *err, size_t errlen);
static bool audit_wanted(void *owner);
static void audit_write(void *owner, json_t *entry);
static void redis_ready(void *owner);
static struct loop *queue_owner(void *owner, unsigned tag);

/* Under systemd, the service reads its private copy of a key
 * (LoadCredential=user.key:/etc/capgate/user.key puts it in
 * $CREDENTIALS_DIRECTORY under the key file's own name), while the config
 * names the file an operator's `capgate -t` reads.  Start-up and reloads
 * only: never on the request path. */
static const char *credential_or(const char *path, char *buf, size_t size)
{
    const char *dir = getenv("CREDENTIALS_DIRECTORY");
    const char *base = path ? strrchr(path, '/') : NULL;
    if (!dir || !*dir || !base || !base[1])
        return path;
    int n = snprintf(buf, size, "%s/%s", dir, base + 1);
    return n > 0 && (size_t)n < size && access(buf, R_OK) == 0 ? buf : path;
}

int gateway_load_support(const struct config *cfg, struct pseudonym **pseudonym,
                         struct tz_db **tz, char *err, size_t errlen)
{
    char key_path[4096], previous_path[4096];
    *tz = NULL;
    *pseudonym = NULL;
    if (decision_check_config(cfg, err, errlen) != 0)
        return -1;
    *pseudonym = pseudonym_load(credential_or(cfg->key_file, key_path, sizeof key_path), err,
                                errlen);
    if (!*pseudonym)
        return -1;
    if (cfg->previous_key_file &&
        pseudonym_load_previous(*pseudonym, credential_or(cfg->previous_key_file, previous_path,
                                                          sizeof previous_path),
                                err, errlen) != 0) {
        pseudonym_free(*pseudonym);
        *pseudonym = NULL;
        return -1;
    }
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
    gw->public_limits = connlimit_new(cfg->public.enabled ? cfg->public.max_connections : 1,
                                      cfg->public.enabled ? cfg->public.max_connections_per_ip : 1);
    gw->workers = calloc(gw->n, sizeof *gw->workers);
    gw->hooks = (struct loop_hooks){ .owner = gw, .ready = loops_ready, .totals = loops_totals,
                                     .reload = reload_from_loop, .audit_wanted = audit_wanted,
                                     .audit_write = audit_write, .queue_owner = queue_owner };
    for (unsigned k = 0; gw->workers && k < gw->n; k++) {
        struct worker_setup ws = { .id = k, .n_workers = gw->n, .gen = gw->gen,
                                   .pseudonym = pseudonym, .limits = gw->limits,
                                   .handler = router_dispatch, .hooks = &gw->hooks,
                                   .public_limits = gw->public_limits,
                                   .public_handler = public_dispatch,
                                   .redis_ready = redis_ready, .owner = gw };
        gw->workers[k] = worker_create(&ws, err, errlen);
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
        redis_ready(gw);           /* failing open, capgate serves without Redis */
    for (unsigned k = 0; k < gw->n; k++)
        if (worker_start(gw->workers[k]) != 0) {
            snprintf(err, errlen, "cannot start worker thread %u: %s", k, strerror(errno));
            /* Threads already running are stopped by the caller's exit. */
            return NULL;
        }
    return gw;
}

/* READY=1 once every worker has Redis (from a worker's thread), with a
 * STATUS= line that says the same, not a stale "UNAVAILABLE". */
static void redis_ready(void *owner)
{
    struct gateway *gw = owner;
    if (!loops_ready(gw))
        return;
    if (__atomic_exchange_n(&gw->ready_announced, 1, __ATOMIC_ACQ_REL) == 0) {
        notify_status("%u workers, redis connected", gw->n);
        notify_ready();
    }
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
    log_error("reload refused; the old config keeps serving", "error=%s", err);
    /* systemctl status shows it (and the periodic line keeps saying it
     * until a reload succeeds); ExecReload= runs capgate -t first, so that
     * systemctl reload itself fails on a bad file. */
    notify_status("reload refused: %s", err);
    notify_ready();
    return -1;
}

static int reload(struct gateway *gw, struct worker *caller, char *err, size_t errlen)
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
        snprintf(err, errlen, "%s:%u: listen: %s is not a loopback address, and there is no auth "
                              "section: without access control capgate only listens on loopback",
                 old->path, cfg->listen_line ? cfg->listen_line : 1, cfg->listen);
        pseudonym_free(pseud);
        tz_db_free(tz);
        config_release(cfg);
        rc = refuse(gw, err, errlen, err);
        goto out;
    }
    bool same_key = pseudonym_same_key(pseud, gw->pseudonym);
    pseudonym_free(pseud);
    if (!same_key) {
        /* Every person's history is keyed by it, and every loop holds it
         * for good: a rotation (privacy.previous_key_file, which keeps
         * everyone's records) is a restart.  See capgate.yaml(5). */
        tz_db_free(tz);
        config_release(cfg);
        rc = refuse(gw, err, errlen,
                    "privacy.key_file or previous_key_file: holds a different key; "
                    "restart capgate to change it (see privacy.previous_key_file)");
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
        while (worker_generation_pending(gw->workers[k]) && clock_now_us() < deadline)
            usleep(200);
    generation_release(gw->gen);
    gw->gen = gen;
    log_set_level(cfg->log_level);
    log_set_format(cfg->log_format);
    connlimit_set(gw->limits, cfg->limits.max_connections, cfg->limits.max_connections_per_ip);
    if (cfg->public.enabled)
        connlimit_set(gw->public_limits, cfg->public.max_connections,
                      cfg->public.max_connections_per_ip);
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

int gateway_reload(struct gateway *gw, char *err, size_t errlen)
{
    return reload(gw, NULL, err, errlen);
}

static int reload_from_loop(void *owner, struct loop *caller, char *err, size_t errlen)
{
    return reload(owner, worker_of_loop(caller), err, errlen);
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
        worker_join(gw->workers[k]);
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
    connlimit_free(gw->public_limits);
    for (size_t k = 0; k < gw->n_old_audit; k++)
        audit_file_close(gw->old_audit[k]);
    pthread_mutex_destroy(&gw->reload_lock);
    pthread_mutex_destroy(&gw->lock);
    free(gw);
}

static bool loops_ready(void *owner)
{
    struct gateway *gw = owner;
    bool ready = true;
    for (unsigned k = 0; k < gw->n && ready; k++)
        ready = worker_redis_ready(gw->workers[k]);
    return ready;
}

/* Tag TAG's queue is served by worker TAG % N (see dispatcher.c). */
static struct loop *queue_owner(void *owner, unsigned tag)
{
    struct gateway *gw = owner;
    struct worker *w = gw->n ? gw->workers[tag % gw->n] : NULL;
    return w ? worker_loop(w) : NULL;
}

static bool audit_wanted(void *owner)
{
    struct gateway *gw = owner;
    return __atomic_load_n(&gw->audit, __ATOMIC_ACQUIRE) != NULL;
}

static void audit_write(void *owner, json_t *entry)
{
    struct gateway *gw = owner;
    struct audit_file *f = __atomic_load_n(&gw->audit, __ATOMIC_ACQUIRE);
    if (f && entry) {
        char when[40];
        clock_format_rfc3339_ms(when, sizeof when);
        json_object_set_new(entry, "ts", json_string(when));
        char *line = json_dumps(entry, JSON_COMPACT | JSON_SORT_KEYS);
        if (line) {
            audit_file_write(f, line, strlen(line));
            free(line);
        }
    }
    json_decref(entry);
}

static uint64_t audit_dropped(struct gateway *gw)
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
        if (now - worker_heartbeat_us(gw->workers[k]) > max_age_us)
            return false;
    return true;
}

static void loops_totals(void *owner, struct totals *snap)
{
    gateway_totals(owner, snap);
}

void gateway_totals(struct gateway *gw, struct totals *snap)
{
    memset(snap, 0, sizeof *snap);
    bool ready = true;
    for (unsigned k = 0; k < gw->n; k++)
        worker_read_stats(gw->workers[k], &snap->metrics, &snap->redis, &snap->active,
                          &snap->connections, &ready);
    snap->redis.connected = ready;
    /* Live, process-wide (the accept policy counts every connection),
     * where the workers' figures were housekeeping's last sample. */
    snap->connections = connlimit_total(gw->limits);
    snap->workers = gw->n;
    snap->started = gw->started;
    pthread_mutex_lock(&gw->lock);
    snap->last_reload = gw->last_reload;
    snap->generation = gw->generation;
    pthread_mutex_unlock(&gw->lock);
    snap->audit_dropped = audit_dropped(gw);
}

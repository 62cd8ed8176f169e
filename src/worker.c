/* worker: one loop's servers, config and reloads.  See worker.h. */
#include "capgate/worker.h"

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capgate/decision.h"
#include "capgate/http.h"
#include "capgate/log.h"
#include "capgate/notify.h"
#include "capgate/pseudonym.h"
#include "capgate/router.h"
#include "capgate/store.h"
#include "capgate/tz.h"

#define HOUSEKEEPING_MS 200
#define RETIRED_STORE_GRACE_S 10   /* then its leftovers are answered UNAVAILABLE */

static bool same_str(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

static bool same_redis(const struct config *a, const struct config *b)
{
    const struct cfg_redis *x = &a->redis, *y = &b->redis;
    return x->transport == y->transport && same_str(x->host, y->host) && x->port == y->port &&
           same_str(x->path, y->path) && same_str(x->user, y->user) &&
           same_str(x->password, y->password) && x->db == y->db &&
           x->timeout_ms == y->timeout_ms && a->limits.max_pending == b->limits.max_pending;
}

static bool same_http(const struct config *a, const struct config *b)
{
    const struct cfg_limits *x = &a->limits, *y = &b->limits;
    return same_str(a->listen_host, b->listen_host) && a->listen_port == b->listen_port &&
           x->max_body_bytes == y->max_body_bytes && x->max_connections == y->max_connections &&
           x->max_connections_per_ip == y->max_connections_per_ip &&
           x->connection_timeout_s == y->connection_timeout_s &&
           x->connection_memory_bytes == y->connection_memory_bytes;
}

static void announce(struct worker *w)
{
    uint64_t decisions = 0;
    if (w->stopping || !w->store)
        return;
    for (int o = 0; o < OUTCOME__COUNT; o++)
        for (int r = 0; r < REASON__COUNT; r++)
            decisions += w->metrics.decisions[o][r];
    notify_status("listening on %s, redis %s, config generation %llu, %llu decisions",
                  w->cfg->listen, store_ready(w->store) ? "connected" : "unavailable",
                  (unsigned long long)w->cfg->generation, (unsigned long long)decisions);
}

static void retire_store(struct worker *w, struct store *st);

/* READY=1 once listening and Redis is reachable (or failing open). */
static void on_store_state(void *arg, bool ready)
{
    struct worker *w = arg;
    if (ready && w->next_store && store_ready(w->next_store)) {
        retire_store(w, w->store);
        w->store = w->next_store;
        w->next_store = NULL;
        log_info("redis switched", "generation=%llu", (unsigned long long)w->cfg->generation);
    }
    if (ready && !w->announced_ready && !w->stopping) {
        w->announced_ready = true;
        notify_ready();
    }
    announce(w);
}

static struct store *start_store(struct worker *w, const struct config *cfg,
                                 char *err, size_t errlen)
{
    struct store *st = store_create(w->base, &cfg->redis, cfg->limits.max_pending,
                                    decision_scripts, SCRIPT__COUNT, err, errlen);
    if (st)
        store_on_state(st, on_store_state, w);
    return st;
}

static struct http_server *start_http(struct worker *w, const struct config *cfg,
                                      char *err, size_t errlen)
{
    struct http_options opt = {
        .host = cfg->listen_host,
        .port = cfg->listen_port,
        .max_body_bytes = cfg->limits.max_body_bytes,
        .max_connections = cfg->limits.max_connections,
        .max_connections_per_ip = cfg->limits.max_connections_per_ip,
        .connection_timeout_s = cfg->limits.connection_timeout_s,
        .connection_memory_bytes = cfg->limits.connection_memory_bytes,
    };
    return http_server_start(w->base, &opt, router_dispatch, w, err, errlen);
}

static void retire_http(struct worker *w, struct http_server *srv, struct http_server *next)
{
    http_server_handoff(srv, next);
    for (int k = 0; k < WORKER_RETIRED_MAX; k++)
        if (!w->old_http[k]) {
            w->old_http[k] = srv;
            return;
        }
    /* More reloads in flight than slots: keep the oldest waiting. */
    log_warn("too many retired HTTP servers; keeping one until it drains", NULL);
    w->old_http[0] = srv;
}

static void retire_store(struct worker *w, struct store *st)
{
    for (int k = 0; k < WORKER_RETIRED_MAX; k++)
        if (!w->old_store[k]) {
            w->old_store[k] = st;
            w->old_store_since[k] = time(NULL);
            return;
        }
    store_free(st);   /* answers its leftovers UNAVAILABLE */
}

/* Frees retired servers and connections once they hold no more work. */
static void on_housekeeping(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    time_t now = time(NULL);
    (void)fd; (void)what;

    for (int k = 0; k < WORKER_RETIRED_MAX; k++) {
        if (w->old_http[k] && http_server_active_requests(w->old_http[k]) == 0) {
            http_server_free(w->old_http[k]);
            w->old_http[k] = NULL;
        }
        if (w->old_store[k]) {
            struct store_stats ss;
            store_get_stats(w->old_store[k], &ss);
            if (ss.pending == 0 || now - w->old_store_since[k] > RETIRED_STORE_GRACE_S) {
                store_free(w->old_store[k]);
                w->old_store[k] = NULL;
            }
        }
    }
    static time_t last_status;
    if (now != last_status) {
        last_status = now;
        announce(w);
    }
}

int worker_load_support(const struct config *cfg, struct pseudonym **pseudonym,
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

struct worker *worker_create(struct event_base *base, struct config *cfg,
                             struct pseudonym *pseudonym, struct tz_db *tz,
                             char *err, size_t errlen)
{
    struct worker *w = calloc(1, sizeof *w);
    if (!w) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    w->base = base;
    w->cfg = cfg;
    w->pseudonym = pseudonym;
    w->tz = tz;
    w->started = time(NULL);
    w->store = start_store(w, cfg, err, errlen);
    if (w->store)
        w->http = start_http(w, cfg, err, errlen);
    w->housekeeping = event_new(base, -1, EV_PERSIST, on_housekeeping, w);
    if (!w->store || !w->http || !w->housekeeping) {
        if (w->housekeeping)
            event_free(w->housekeeping);
        http_server_free(w->http);
        store_free(w->store);
        free(w);
        return NULL;
    }
    struct timeval tick = { 0, HOUSEKEEPING_MS * 1000 };
    event_add(w->housekeeping, &tick);
    if (cfg->redis.fail_open) {
        /* Failing open, capgate can serve without Redis: ready when listening. */
        w->announced_ready = true;
        notify_ready();
    }
    return w;
}

static int refuse(struct worker *w, char *err, size_t errlen, const char *why)
{
    if (why != err)
        snprintf(err, errlen, "%s", why);
    w->last_reload.at = time(NULL);
    w->last_reload.ok = false;
    snprintf(w->last_reload.error, sizeof w->last_reload.error, "%s", err);
    log_error("reload refused; the old config keeps serving", "error=\"%s\"", err);
    notify_ready();
    return -1;
}

int worker_reload(struct worker *w, char *err, size_t errlen)
{
    const struct config *old = w->cfg;
    struct pseudonym *pseud = NULL;
    struct tz_db *tz = NULL;
    struct http_server *http = NULL;
    struct store *store = NULL;
    char why[CONFIG_ERR_LEN];

    notify_reloading();
    log_info("reloading", "path=%s", old->path);

    /* 1. Everything is checked before anything changes. */
    struct config *cfg = config_load(old->path, err, errlen);
    if (!cfg)
        return refuse(w, err, errlen, err);
    cfg->generation = old->generation + 1;
    if (worker_load_support(cfg, &pseud, &tz, err, errlen) != 0) {
        config_release(cfg);
        return refuse(w, err, errlen, err);
    }
    if (!pseudonym_same_key(pseud, w->pseudonym)) {
        /* Every person's history is keyed by it: a new key would silently
         * make everyone a stranger.  Rotating it is a restart, on purpose. */
        pseudonym_free(pseud);
        tz_db_free(tz);
        config_release(cfg);
        return refuse(w, err, errlen,
                      "privacy.key_file: holds a different key; restart capgate to change it");
    }
    pseudonym_free(pseud);
    if (!same_http(old, cfg) && !(http = start_http(w, cfg, why, sizeof why))) {
        tz_db_free(tz);
        config_release(cfg);
        return refuse(w, err, errlen, why);
    }
    if (!same_redis(old, cfg) && !(store = start_store(w, cfg, why, sizeof why))) {
        if (http)
            http_server_free(http);
        tz_db_free(tz);
        config_release(cfg);
        return refuse(w, err, errlen, why);
    }

    /* 2. Commit.  Requests in flight hold their own config reference. */
    if (http) {
        retire_http(w, w->http, http);
        w->http = http;
    }
    if (store) {
        /* The new connection takes over once it is ready (on_store_state):
         * until then requests keep using the old one, so none is refused. */
        if (w->next_store)
            retire_store(w, w->next_store);
        w->next_store = store;
    }
    tz_db_free(w->tz);
    w->tz = tz;
    w->cfg = cfg;
    log_set_level(cfg->log_level);
    w->last_reload.at = time(NULL);
    w->last_reload.ok = true;
    w->last_reload.error[0] = '\0';
    log_info("reloaded", "generation=%llu new_listener=%d new_redis=%d",
             (unsigned long long)cfg->generation, http != NULL, store != NULL);
    config_release(old);
    notify_ready();
    announce(w);
    return 0;
}

void worker_quiesce(struct worker *w)
{
    w->stopping = true;
    http_server_quiesce(w->http);
}

unsigned worker_active_requests(const struct worker *w)
{
    unsigned n = http_server_active_requests(w->http);
    for (int k = 0; k < WORKER_RETIRED_MAX; k++)
        if (w->old_http[k])
            n += http_server_active_requests(w->old_http[k]);
    return n;
}

void worker_free(struct worker *w)
{
    if (!w)
        return;
    /* Answer whatever still waits on Redis (UNAVAILABLE), let MHD send
     * those answers, then stop HTTP: MHD must not stop with suspended
     * connections. */
    store_free(w->store);
    w->store = NULL;
    store_free(w->next_store);
    w->next_store = NULL;
    for (int k = 0; k < WORKER_RETIRED_MAX; k++) {
        store_free(w->old_store[k]);
        w->old_store[k] = NULL;
    }
    for (int k = 0; k < 100 && worker_active_requests(w); k++)
        event_base_loop(w->base, EVLOOP_NONBLOCK);
    http_server_free(w->http);
    for (int k = 0; k < WORKER_RETIRED_MAX; k++)
        http_server_free(w->old_http[k]);
    event_free(w->housekeeping);
    tz_db_free(w->tz);
    pseudonym_free(w->pseudonym);
    config_release(w->cfg);
    metrics_free(&w->metrics);
    free(w);
}

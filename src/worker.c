/* worker: one loop, one listener, one Redis connection.  See worker.h. */
#include "capgate/worker.h"

#include <errno.h>
#include <stddef.h>
#include <pthread.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "capgate/clock.h"
#include "capgate/counter.h"
#include "capgate/decide.h"
#include "capgate/decide_batch.h"
#include "capgate/decision.h"
#include "capgate/delivery.h"
#include "capgate/breaker.h"
#include "capgate/campaigns.h"
#include "capgate/dispatcher.h"
#include "capgate/http.h"
#include "capgate/log.h"
#include "capgate/tz.h"
#include "capgate/upstream.h"

#define WORKER_RETIRED_MAX 8

struct worker {
    struct loop loop;                /* what the handlers see (first: worker_of_loop) */
    struct worker_setup setup;       /* from the gateway */
    pthread_t thread;
    struct generation *gen;          /* the config requests start with (loop.cfg is gen->cfg) */
    struct store *next_store;        /* after a reload, until it is ready */
    struct http_server *http;
    struct http_server *public_http; /* public.listen, when configured */
    struct dispatcher *dispatcher;   /* proxy mode: the deferred queue's share of this loop */

    /* Replaced by a reload, freed once they hold no more work. */
    struct http_server *old_http[WORKER_RETIRED_MAX];
    struct store *old_store[WORKER_RETIRED_MAX];
    time_t old_store_since[WORKER_RETIRED_MAX];
    struct store_stats retired_redis;    /* counters of freed connections */

    /* Shared with other threads. */
    pthread_mutex_t stats_lock;      /* guards the store/http pointers for readers */
    int command_fd;                  /* eventfd: other threads write to wake it */
    struct event *command;           /* reads command_fd */
    struct generation *pending;      /* a generation to apply (atomic) */
    int quiesce_requested;           /* atomic */
    int stop_now;                    /* atomic */
    uint64_t shutdown_deadline_us;
    unsigned connections;            /* published by housekeeping (atomic) */
    uint64_t heartbeat_us;           /* last housekeeping tick (atomic): watchdog */

    struct event *housekeeping;
    unsigned audit_trim_next;        /* where the next look for a due tag starts */
    unsigned audit_trims_in_flight;
    int64_t audit_keep_ms;           /* the retention the schedule below is for */
    uint64_t audit_next_us[DECISION_TAGS];   /* when each tag needs trimming next */
    bool stopping;
    uint64_t finishing_us;           /* Redis dropped; waiting for HTTP to flush */
};

#define HOUSEKEEPING_MS 100
#define FINISH_GRACE_US 500000     /* for the last answers to leave */
#define RETIRED_STORE_GRACE_S 10   /* then its leftovers are answered UNAVAILABLE */

/* ---- generations ----------------------------------------------------------- */

struct generation *generation_new(struct config *cfg, struct tz_db *tz)
{
    struct generation *g = calloc(1, sizeof *g);
    if (!g)
        return NULL;
    g->refs = 1;
    g->cfg = cfg;
    g->tz = tz;
    return g;
}

struct generation *generation_retain(struct generation *g)
{
    __atomic_add_fetch(&g->refs, 1, __ATOMIC_RELAXED);
    return g;
}

static char *read_pem(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "re");
    if (!f) {
        snprintf(err, errlen, "tls: %s: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = malloc(65537);
    size_t n = buf ? fread(buf, 1, 65536, f) : 0;
    fclose(f);
    if (!buf || n == 0 || n == 65536) {
        free(buf);
        snprintf(err, errlen, "tls: %s: empty, unreadable or larger than 64 KiB", path);
        return NULL;
    }
    buf[n] = '\0';
    return buf;
}

int generation_load_tls(struct generation *g, char *err, size_t errlen)
{
    if (!g->cfg->tls.enabled)
        return 0;
    g->tls_cert = read_pem(g->cfg->tls.cert_file, err, errlen);
    g->tls_key = g->tls_cert ? read_pem(g->cfg->tls.key_file, err, errlen) : NULL;
    return g->tls_key ? 0 : -1;
}

void generation_release(struct generation *g)
{
    if (!g || __atomic_sub_fetch(&g->refs, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    free(g->tls_cert);
    if (g->tls_key) {
        memset(g->tls_key, 0, strlen(g->tls_key));
        free(g->tls_key);
    }
    config_release(g->cfg);
    tz_db_free(g->tz);
    free(g);
}

/* ---- what changed ------------------------------------------------------------ */

static bool same_str(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

static bool same_seeds(const struct cfg_redis *x, const struct cfg_redis *y)
{
    if (x->n_cluster != y->n_cluster)
        return false;
    for (size_t k = 0; k < x->n_cluster; k++)
        if (!same_str(x->cluster[k].host, y->cluster[k].host) ||
            x->cluster[k].port != y->cluster[k].port)
            return false;
    return true;
}

static bool same_redis(const struct config *a, const struct config *b)
{
    const struct cfg_redis *x = &a->redis, *y = &b->redis;
    return x->transport == y->transport && same_str(x->host, y->host) && x->port == y->port &&
           same_str(x->path, y->path) && same_str(x->user, y->user) &&
           same_str(x->password, y->password) && x->db == y->db && same_seeds(x, y) &&
           x->timeout_ms == y->timeout_ms && a->limits.max_pending == b->limits.max_pending;
}

static bool same_http(const struct generation *ga, const struct generation *gb)
{
    const struct config *a = ga->cfg, *b = gb->cfg;
    const struct cfg_limits *x = &a->limits, *y = &b->limits;
    return same_str(ga->tls_cert, gb->tls_cert) && same_str(ga->tls_key, gb->tls_key) &&
           same_str(a->tls.priority_string, b->tls.priority_string) &&
           same_str(a->listen_host, b->listen_host) && a->listen_port == b->listen_port &&
           x->max_body_bytes == y->max_body_bytes && x->max_connections == y->max_connections &&
           x->max_connections_per_ip == y->max_connections_per_ip &&
           x->connection_timeout_s == y->connection_timeout_s &&
           x->header_timeout_s == y->header_timeout_s &&
           x->connection_memory_bytes == y->connection_memory_bytes;
}

/* ---- servers and connections --------------------------------------------------- */

static void retire_store(struct worker *w, struct store *st);

static void on_store_state(void *arg, bool ready)
{
    struct worker *w = arg;
    if (ready && w->next_store && store_ready(w->next_store)) {
        /* A reload's new connection is ready: it takes over from now on. */
        pthread_mutex_lock(&w->stats_lock);
        retire_store(w, w->loop.store);
        w->loop.store = w->next_store;
        w->next_store = NULL;
        pthread_mutex_unlock(&w->stats_lock);
        log_info("redis switched", "worker=%u generation=%llu", w->loop.id,
                 (unsigned long long)w->loop.cfg->generation);
    }
    if (ready && w->setup.redis_ready)
        w->setup.redis_ready(w->setup.owner);
}

static struct store *start_store(struct worker *w, const struct config *cfg,
                                 char *err, size_t errlen)
{
    struct store *st = store_create(w->loop.base, &cfg->redis, cfg->limits.max_pending,
                                    decision_scripts, SCRIPT__COUNT, err, errlen);
    if (st)
        store_on_state(st, on_store_state, w);
    return st;
}

/* The options every listener shares: the TLS, the timeouts. */
static struct http_options listener_options(const struct generation *gen)
{
    const struct config *cfg = gen->cfg;
    return (struct http_options){
        .tls_cert = gen->tls_cert,
        .tls_key = gen->tls_key,
        .tls_priorities = cfg->tls.enabled ? cfg->tls.priority_string : NULL,
        .max_connections_per_ip = 0,      /* connlimit's, for every worker together */
        .connection_timeout_s = cfg->limits.connection_timeout_s,
        .header_timeout_s = cfg->limits.header_timeout_s,
    };
}

static struct http_server *start_http(struct worker *w, const struct generation *gen,
                                      char *err, size_t errlen)
{
    const struct config *cfg = gen->cfg;
    struct http_options opt = listener_options(gen);
    opt.host = cfg->listen_host;
    opt.port = cfg->listen_port;
    opt.max_body_bytes = cfg->limits.max_body_bytes;
    /* The limits are the process's (connlimit, shared by every worker);
     * MHD's own are a backstop at the same figures. */
    opt.max_connections = cfg->limits.max_connections;
    opt.limits = w->setup.limits;
    opt.connection_memory_bytes = cfg->limits.connection_memory_bytes;
    return http_server_start(w->loop.base, &opt, w->setup.handler, &w->loop, err, errlen);
}

static bool same_public(const struct generation *ga, const struct generation *gb)
{
    const struct cfg_public *a = &ga->cfg->public, *b = &gb->cfg->public;
    if (!a->enabled || !b->enabled)
        return a->enabled == b->enabled;
    return same_str(ga->tls_cert, gb->tls_cert) && same_str(ga->tls_key, gb->tls_key) &&
           same_str(ga->cfg->tls.priority_string, gb->cfg->tls.priority_string) &&
           same_str(a->listen_host, b->listen_host) && a->listen_port == b->listen_port &&
           a->max_connections == b->max_connections &&
           a->max_connections_per_ip == b->max_connections_per_ip &&
           ga->cfg->limits.connection_timeout_s == gb->cfg->limits.connection_timeout_s &&
           ga->cfg->limits.header_timeout_s == gb->cfg->limits.header_timeout_s;
}

/* public.listen: the /u/ pages, for anyone (public.h).  Small bodies (the
 * page's form), its own connection limits, the API's TLS when it has one. */
#define PUBLIC_BODY_MAX 16384
static struct http_server *start_public(struct worker *w, const struct generation *gen,
                                        char *err, size_t errlen)
{
    const struct config *cfg = gen->cfg;
    struct http_options opt = listener_options(gen);
    opt.host = cfg->public.listen_host;
    opt.port = cfg->public.listen_port;
    opt.max_body_bytes = PUBLIC_BODY_MAX;
    opt.max_connections = (unsigned)cfg->public.max_connections;
    opt.limits = w->setup.public_limits;
    opt.connection_memory_bytes = 32768;
    return http_server_start(w->loop.base, &opt, w->setup.public_handler, &w->loop, err, errlen);
}

/* Callers hold stats_lock. */
static void retire_http(struct worker *w, struct http_server *srv)
{
    for (int k = 0; k < WORKER_RETIRED_MAX; k++)
        if (!w->old_http[k]) {
            w->old_http[k] = srv;
            return;
        }
    log_warn("too many retired HTTP servers; the oldest stays open until it drains", NULL);
    w->old_http[0] = srv;
}

static void add_stats(struct store_stats *sum, const struct store_stats *s)
{
    sum->calls += s->calls;
    sum->timeouts += s->timeouts;
    sum->late_replies += s->late_replies;
    sum->errors += s->errors;
    sum->unavailable += s->unavailable;
    sum->reconnects += s->reconnects;
    histogram_add(&sum->rtt, &s->rtt);
}

static void free_store_keeping_counts(struct worker *w, struct store *st)
{
    struct store_stats s;
    store_get_stats(st, &s);
    add_stats(&w->retired_redis, &s);   /* counters never go backwards */
    store_free(st);
}

/* Callers hold stats_lock. */
static void retire_store(struct worker *w, struct store *st)
{
    for (int k = 0; k < WORKER_RETIRED_MAX; k++)
        if (!w->old_store[k]) {
            w->old_store[k] = st;
            w->old_store_since[k] = time(NULL);
            return;
        }
    free_store_keeping_counts(w, st);
}

static unsigned active_requests(const struct worker *w)
{
    unsigned n = w->http ? http_server_active_requests(w->http) : 0;
    if (w->public_http)
        n += http_server_active_requests(w->public_http);
    for (int k = 0; k < WORKER_RETIRED_MAX; k++)
        if (w->old_http[k])
            n += http_server_active_requests(w->old_http[k]);
    return n;
}

/* Ending a worker takes two steps, both from housekeeping: first the Redis
 * connections go, which answers whatever still waits on them (UNAVAILABLE);
 * then, once MHD has sent those answers (or after a short grace), HTTP
 * closes -- MHD must not be stopped with suspended connections -- and the
 * loop ends. */
static void drop_stores(struct worker *w)
{
    /* Outbound deliveries first: their callbacks may still use Redis. */
    dispatcher_free(w->dispatcher);
    w->dispatcher = NULL;
    breaker_free(w->loop.breaker);
    w->loop.breaker = NULL;
    campaign_names_free(w->loop.names);
    w->loop.names = NULL;
    delivery_pools_free(w->loop.upstreams);
    w->loop.upstreams = NULL;
    pthread_mutex_lock(&w->stats_lock);
    struct store *stores[2 + WORKER_RETIRED_MAX] = { w->loop.store, w->next_store };
    for (int k = 0; k < WORKER_RETIRED_MAX; k++)
        stores[2 + k] = w->old_store[k];
    w->loop.store = w->next_store = NULL;
    memset(w->old_store, 0, sizeof w->old_store);
    pthread_mutex_unlock(&w->stats_lock);
    for (size_t k = 0; k < sizeof stores / sizeof stores[0]; k++)
        if (stores[k])
            free_store_keeping_counts(w, stores[k]);
}

static void close_http(struct worker *w)
{
    pthread_mutex_lock(&w->stats_lock);
    http_server_free(w->http);
    w->http = NULL;
    http_server_free(w->public_http);
    w->public_http = NULL;
    for (int k = 0; k < WORKER_RETIRED_MAX; k++) {
        http_server_free(w->old_http[k]);
        w->old_http[k] = NULL;
    }
    pthread_mutex_unlock(&w->stats_lock);
    event_base_loopbreak(w->loop.base);
}

/* ---- audit retention ---------------------------------------------------------- */

/* Decisions only append to the audit streams; age is trimmed here, in the
 * background, so it costs a decision nothing.  Worker ID of N owns the tags
 * ID, ID+N, ...  and trims each when it is due: when its oldest entry comes
 * of age (the script says when), and at least every half retention (to
 * renew the stream's expiry).  At start every tag is due, a few per tick;
 * after that an idle gateway makes next to no calls.  Every gateway sharing
 * the Redis does the same; XTRIM is idempotent. */
#define AUDIT_TRIMS_PER_TICK 4

struct audit_trim_call {
    struct worker *w;
    unsigned tag;
};

static void on_audit_trimmed(void *arg, const struct store_reply *r)
{
    struct audit_trim_call *c = arg;
    struct worker *w = c->w;
    unsigned tag = c->tag;
    free(c);
    w->audit_trims_in_flight--;
    uint64_t now = clock_now_us();
    if (r->status != STORE_OK || r->n < 2 || r->items[1].type != STORE_INT) {
        log_debug("audit trim failed", "worker=%u error=%s", w->loop.id,
                  r->error ? r->error : "?");
        w->audit_next_us[tag] = now + 1000000u;          /* again in a second */
        return;
    }
    uint64_t half = (uint64_t)decision_audit_keep_ms(w->loop.cfg) * 500u;
    long long due_ms = r->items[1].i;
    uint64_t next = due_ms < 0 ? half : (uint64_t)due_ms * 1000u;
    w->audit_next_us[tag] = now + (next < half ? next : half);
}

static void trim_audit(struct worker *w)
{
    if (!w->loop.cfg->audit.enabled || w->stopping || !store_ready(w->loop.store))
        return;
    int64_t keep = decision_audit_keep_ms(w->loop.cfg);
    if (keep != w->audit_keep_ms) {              /* started, or a reload changed it */
        w->audit_keep_ms = keep;
        memset(w->audit_next_us, 0, sizeof w->audit_next_us);
    }
    uint64_t now = clock_now_us();
    unsigned start = w->audit_trim_next;     /* (the cursor moves as calls go) */
    for (unsigned k = 0; k < DECISION_TAGS && w->audit_trims_in_flight < AUDIT_TRIMS_PER_TICK;
         k++) {
        unsigned tag = (start + k) % DECISION_TAGS;
        if (tag % w->loop.n_loops != w->loop.id || w->audit_next_us[tag] > now)
            continue;
        struct audit_trim_call *c = malloc(sizeof *c);
        if (!c)
            return;
        *c = (struct audit_trim_call){ w, tag };
        struct script_args a;
        decision_audit_trim_args(tag, w->loop.cfg, &a);
        w->audit_next_us[tag] = UINT64_MAX;      /* in flight */
        if (store_eval(w->loop.store, a.script, a.nkeys, a.argc, a.argv, a.argvlen,
                       on_audit_trimmed, c) != 0) {
            free(c);
            w->audit_next_us[tag] = now + 1000000u;
            return;
        }
        w->audit_trims_in_flight++;
        w->audit_trim_next = (tag + 1) % DECISION_TAGS;
    }
}

/* Every HOUSEKEEPING_MS: free what reloads retired once it is idle, publish
 * figures for other threads, trim the audit trail's old entries, and, when
 * stopping, finish after the drain. */
static void on_housekeeping(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    time_t now = time(NULL);
    (void)fd; (void)what;

    COUNTER_SET(w->heartbeat_us, clock_now_us());
    pthread_mutex_lock(&w->stats_lock);
    for (int k = 0; k < WORKER_RETIRED_MAX; k++) {
        if (w->old_http[k] && http_server_active_requests(w->old_http[k]) == 0) {
            http_server_free(w->old_http[k]);
            w->old_http[k] = NULL;
        }
        if (w->old_store[k]) {
            struct store_stats ss;
            store_get_stats(w->old_store[k], &ss);
            if (ss.pending == 0 || now - w->old_store_since[k] > RETIRED_STORE_GRACE_S) {
                free_store_keeping_counts(w, w->old_store[k]);
                w->old_store[k] = NULL;
            }
        }
    }
    if (w->http)
        COUNTER_SET(w->connections, http_server_connections(w->http) +
                                    (w->public_http ? http_server_connections(w->public_http) : 0));
    pthread_mutex_unlock(&w->stats_lock);
    delivery_pools_sweep(w->loop.upstreams);

    trim_audit(w);

    if (w->stopping && !w->finishing_us) {
        unsigned active = active_requests(w) + dispatcher_active(w->dispatcher);
        if (active == 0 || clock_now_us() >= w->shutdown_deadline_us ||
            __atomic_load_n(&w->stop_now, __ATOMIC_RELAXED)) {
            if (active)
                log_warn("shutdown timeout: answering the rest as unavailable",
                         "worker=%u unfinished=%u", w->loop.id, active);
            drop_stores(w);
            w->finishing_us = clock_now_us();
        }
    }
    if (w->finishing_us &&
        (active_requests(w) == 0 || clock_now_us() - w->finishing_us > FINISH_GRACE_US))
        close_http(w);
}

/* ---- commands from other threads ---------------------------------------------- */

/* The loops run without libevent's locks (they cost every event_add and
 * event_del a mutex: 3% of a decision's instructions), so another thread
 * never touches a worker's loop: it writes to the worker's eventfd, and the
 * worker reads its commands from the fields below it in struct worker. */
static void wake(struct worker *w)
{
    uint64_t one = 1;
    /* Only fails when the counter would overflow: it is then readable anyway. */
    if (write(w->command_fd, &one, sizeof one) < 0 && errno != EAGAIN)
        log_error_errno("cannot wake a worker", "worker=%u", w->loop.id);
}

void worker_apply_pending(struct worker *w)
{
    struct generation *gen = __atomic_exchange_n(&w->pending, NULL, __ATOMIC_ACQ_REL);
    char err[CONFIG_ERR_LEN];
    if (!gen)
        return;
    const struct config *old = w->loop.cfg, *cfg = gen->cfg;
    struct http_server *http = NULL, *pub = NULL;
    struct store *store = NULL;

    if (!same_http(w->gen, gen) && !w->stopping) {
        http = start_http(w, gen, err, sizeof err);
        if (!http)
            log_error("reload: new listener failed; keeping the old one", "worker=%u error=%s",
                      w->loop.id, err);
    }
    /* public.listen: added, moved, or gone (then its socket closes). */
    bool public_changed = !same_public(w->gen, gen) && !w->stopping;
    if (public_changed && cfg->public.enabled &&
        !(pub = start_public(w, gen, err, sizeof err))) {
        log_error("reload: new public listener failed; keeping the old one",
                  "worker=%u error=%s", w->loop.id, err);
        public_changed = false;
    }
    if (!same_redis(old, cfg)) {
        store = start_store(w, cfg, err, sizeof err);
        if (!store)
            log_error("reload: new Redis connection failed; keeping the old one",
                      "worker=%u error=%s", w->loop.id, err);
    }
    pthread_mutex_lock(&w->stats_lock);
    if (http) {
        http_server_handoff(w->http, http);
        retire_http(w, w->http);
        w->http = http;
    }
    if (public_changed) {
        if (w->public_http) {
            if (pub)
                http_server_handoff(w->public_http, pub);
            else
                http_server_quiesce(w->public_http);
            retire_http(w, w->public_http);
        }
        w->public_http = pub;
    }
    if (store) {
        /* The new connection takes over once it is ready (on_store_state):
         * until then requests keep using the old one, so none is refused. */
        if (w->next_store)
            retire_store(w, w->next_store);
        w->next_store = store;
    }
    struct generation *prev = w->gen;
    w->gen = gen;
    w->loop.cfg = gen->cfg;
    w->loop.tz = gen->tz;
    pthread_mutex_unlock(&w->stats_lock);
    generation_release(prev);   /* requests in flight hold their own config */
    log_debug("generation applied", "worker=%u generation=%llu new_listener=%d new_redis=%d",
              w->loop.id, (unsigned long long)cfg->generation, http != NULL, store != NULL);
}

static void on_command(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    uint64_t n;
    (void)what;
    while (read(fd, &n, sizeof n) < 0 && errno == EINTR)
        ;
    worker_apply_pending(w);
    if (__atomic_load_n(&w->quiesce_requested, __ATOMIC_ACQUIRE) && !w->stopping) {
        w->stopping = true;
        dispatcher_quiesce(w->dispatcher);
        pthread_mutex_lock(&w->stats_lock);
        if (w->http)
            http_server_quiesce(w->http);
        if (w->public_http)
            http_server_quiesce(w->public_http);
        pthread_mutex_unlock(&w->stats_lock);
        on_housekeeping(-1, 0, w);
    } else if (w->stopping && __atomic_load_n(&w->stop_now, __ATOMIC_RELAXED)) {
        on_housekeeping(-1, 0, w);
    }
}

void worker_post_generation(struct worker *w, struct generation *gen)
{
    struct generation *prev =
        __atomic_exchange_n(&w->pending, generation_retain(gen), __ATOMIC_ACQ_REL);
    generation_release(prev);   /* never applied: superseded */
    wake(w);
}

void worker_post_quiesce(struct worker *w, uint64_t deadline_us)
{
    w->shutdown_deadline_us = deadline_us;
    __atomic_store_n(&w->quiesce_requested, 1, __ATOMIC_RELEASE);
    wake(w);
}

void worker_post_stop(struct worker *w)
{
    __atomic_store_n(&w->stop_now, 1, __ATOMIC_RELEASE);
    wake(w);
}

void worker_read_stats(struct worker *w, struct metrics *m, struct store_stats *redis,
                       unsigned *active, unsigned *connections, bool *redis_ready)
{
    struct store_stats s;
    metrics_accumulate(m, &w->loop.metrics);
    pthread_mutex_lock(&w->stats_lock);
    add_stats(redis, &w->retired_redis);
    for (int k = 0; k < WORKER_RETIRED_MAX; k++)
        if (w->old_store[k]) {
            store_get_stats(w->old_store[k], &s);
            add_stats(redis, &s);
        }
    if (w->next_store) {
        store_get_stats(w->next_store, &s);
        add_stats(redis, &s);
    }
    if (w->loop.store) {
        store_get_stats(w->loop.store, &s);
        add_stats(redis, &s);
        redis->pending += s.pending;
        if (s.last_rtt_ms > 0)
            redis->last_rtt_ms = s.last_rtt_ms;
        *redis_ready = *redis_ready && s.connected;
    } else {
        *redis_ready = false;
    }
    *active += active_requests(w);
    pthread_mutex_unlock(&w->stats_lock);
    *connections += COUNTER_GET(w->connections);
}

/* ---- life ------------------------------------------------------------------------ */

struct worker *worker_create(const struct worker_setup *setup, char *err, size_t errlen)
{
    struct worker *w = calloc(1, sizeof *w);
    if (!w) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    struct generation *gen = setup->gen;
    w->setup = *setup;
    w->loop.id = setup->id;
    w->loop.n_loops = setup->n_workers ? setup->n_workers : 1;
    w->loop.hooks = setup->hooks;
    w->gen = generation_retain(gen);
    w->loop.cfg = gen->cfg;
    w->loop.tz = gen->tz;
    w->loop.pseudonym = setup->pseudonym;
    w->command_fd = -1;
    pthread_mutex_init(&w->stats_lock, NULL);
    /* The changelist folds an event added and deleted within one turn
     * (hiredis's write event, see store.c's on_flush; libcurl's socket
     * interest) into one epoll_ctl, or none.  No fd here is dup'ed, which
     * is what it cannot tell apart. */
    struct event_config *ec = event_config_new();
    if (ec) {
        event_config_set_flag(ec, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
        w->loop.base = event_base_new_with_config(ec);
        event_config_free(ec);
    }
    w->command_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (!w->loop.base || w->command_fd < 0) {
        snprintf(err, errlen, "cannot create an event loop");
        worker_free(w);
        return NULL;
    }
    w->loop.store = start_store(w, w->loop.cfg, err, errlen);
    if (w->loop.store)
        w->http = start_http(w, gen, err, errlen);
    bool public_ok = true;
    if (w->http && gen->cfg->public.enabled)
        public_ok = (w->public_http = start_public(w, gen, err, errlen)) != NULL;
    w->housekeeping = event_new(w->loop.base, -1, EV_PERSIST, on_housekeeping, w);
    w->command = event_new(w->loop.base, w->command_fd, EV_READ | EV_PERSIST, on_command, w);
    w->loop.upstreams = delivery_pools_new(w->loop.base, w->loop.n_loops);
    w->dispatcher = dispatcher_new(&w->loop);
    w->loop.breaker = breaker_new(&w->loop);
    w->loop.names = campaign_names_new(&w->loop);
    w->loop.batch = decide_batch_new(w->loop.base, &w->loop.store, decide_undo_late, &w->loop);
    if (!w->loop.store || !w->http || !public_ok || !w->housekeeping || !w->command || !w->dispatcher ||
        !w->loop.breaker || !w->loop.names ||
        !w->loop.batch || !w->loop.upstreams) {
        worker_free(w);
        return NULL;
    }
    struct timeval tick = { 0, HOUSEKEEPING_MS * 1000 };
    event_add(w->housekeeping, &tick);
    event_add(w->command, NULL);
    COUNTER_SET(w->heartbeat_us, clock_now_us());
    return w;
}

static void *run(void *arg)
{
    struct worker *w = arg;
    event_base_dispatch(w->loop.base);
    return NULL;
}

int worker_start(struct worker *w)
{
    return pthread_create(&w->thread, NULL, run, w) == 0 ? 0 : -1;
}

void worker_join(struct worker *w)
{
    pthread_join(w->thread, NULL);
}

struct worker *worker_of_loop(struct loop *l)
{
    return (struct worker *)((char *)l - offsetof(struct worker, loop));
}

struct loop *worker_loop(struct worker *w)
{
    return &w->loop;
}

bool worker_generation_pending(const struct worker *w)
{
    return __atomic_load_n(&w->pending, __ATOMIC_ACQUIRE) != NULL;
}

bool worker_redis_ready(struct worker *w)
{
    pthread_mutex_lock(&w->stats_lock);
    bool ready = w->loop.store && store_ready(w->loop.store);
    pthread_mutex_unlock(&w->stats_lock);
    return ready;
}

uint64_t worker_heartbeat_us(const struct worker *w)
{
    return COUNTER_GET(w->heartbeat_us);
}

void worker_free(struct worker *w)
{
    if (!w)
        return;
    for (int k = 0; k < WORKER_RETIRED_MAX; k++) {
        if (w->old_store[k])
            store_free(w->old_store[k]);
        http_server_free(w->old_http[k]);
    }
    dispatcher_free(w->dispatcher);
    breaker_free(w->loop.breaker);
    campaign_names_free(w->loop.names);
    delivery_pools_free(w->loop.upstreams);
    store_free(w->next_store);
    store_free(w->loop.store);
    decide_batch_free(w->loop.batch);   /* after the stores: they answer its calls */
    http_server_free(w->http);
    http_server_free(w->public_http);
    if (w->housekeeping)
        event_free(w->housekeeping);
    if (w->command)
        event_free(w->command);
    if (w->command_fd >= 0)
        close(w->command_fd);
    if (w->loop.base)
        event_base_free(w->loop.base);
    generation_release(__atomic_exchange_n(&w->pending, NULL, __ATOMIC_ACQ_REL));
    generation_release(w->gen);
    pthread_mutex_destroy(&w->stats_lock);
    free(w);
}

/*
 * store: one hiredis async connection on a libevent loop, with the timeouts,
 * reconnects and script handling hiredis 0.14 leaves to us.  See store.h.
 *
 * Life of a connection:
 *   DOWN --reconnect timer--> CONNECTING --connect cb--> HANDSHAKE
 *   (AUTH, SELECT, SCRIPT LOAD each script, pipelined) --last sha--> READY
 * Any failure, a connect/handshake that exceeds its deadline, or a READY
 * connection that stops answering (SIGSTOP, black-holed port) drops it back
 * to DOWN; the next attempt follows after a backoff of 100 ms doubling up to
 * 2 s.  Calls are accepted only when READY: while Redis is away a request
 * fails in microseconds instead of waiting for its timeout.
 */
#include "capgate/store.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "capgate/counter.h"
#include "capgate/log.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 2000
#define HEALTH_TICK_MS 200
#define IDLE_PING_MS   1000
#define SHA_HEX        40

struct store {
    struct event_base *base;
    struct cfg_redis cfg;          /* host/path/user/password point into strings below */
    char *host, *path, *user, *password;
    char display[256];             /* url for logs, password masked */
    unsigned max_pending;

    const char *const *scripts;
    size_t n_scripts;
    char (*sha)[SHA_HEX + 1];      /* per script, filled by SCRIPT LOAD */
    size_t shas_loaded;

    redisAsyncContext *ac;         /* NULL when DOWN */
    bool ready;
    bool down_logged;              /* said once that Redis is away */
    uint64_t deadline_us;          /* connect + handshake must finish by then */
    unsigned backoff_ms;
    struct event *reconnect_timer;
    struct event *health_timer;

    unsigned outstanding;          /* hiredis callbacks still owed to us */
    unsigned abandoned;            /* ... of which the caller already got TIMEOUT */
    uint64_t last_reply_us, last_send_us, ping_sent_us;

    struct store_stats stats;
    void (*state_cb)(void *arg, bool ready);
    void *state_arg;
};

/* One script call.  Lives until hiredis has called back (always exactly
 * once), even when the caller was answered earlier by the timeout. */
struct store_call {
    struct store *st;
    store_cb *cb;
    void *arg;
    struct event *timer;
    bool answered;
    bool retried_eval;
    size_t script;
    uint64_t sent_us;
    int argc;                       /* EVALSHA sha nkeys args... */
    const char **argv;
    size_t *argvlen;
};

static void connect_now(struct store *st);
static void schedule_reconnect(struct store *st);

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static uint64_t stall_limit_us(const struct store *st)
{
    uint64_t ms = (uint64_t)st->cfg.timeout_ms * 4;
    return (ms < 1000 ? 1000 : ms) * 1000;
}

/* ---- answering calls ---------------------------------------------------- */

static void call_free(struct store_call *call)
{
    if (call->timer)
        event_free(call->timer);
    free(call);
}

static void call_answer(struct store_call *call, const struct store_reply *reply)
{
    struct store *st = call->st;

    call->answered = true;
    if (call->timer)
        event_del(call->timer);
    switch (reply->status) {
    case STORE_OK: break;
    case STORE_ERROR: COUNTER_INC(st->stats.errors); break;
    case STORE_UNAVAILABLE: COUNTER_INC(st->stats.unavailable); break;
    case STORE_TIMEOUT: COUNTER_INC(st->stats.timeouts); break;
    }
    call->cb(call->arg, reply);
}

static void call_answer_status(struct store_call *call, enum store_status status,
                               const char *error)
{
    struct store_reply r = { .status = status, .error = error, .n = 0, .items = NULL };
    call_answer(call, &r);
}

/* Flattens a reply depth-first into ITEMS; returns the count needed. */
static size_t flatten(const redisReply *r, struct store_item *items, size_t cap, size_t n)
{
    switch (r->type) {
    case REDIS_REPLY_ARRAY:
        if (n < cap)
            items[n] = (struct store_item){ .type = STORE_ARRAY, .i = (long long)r->elements };
        n++;
        for (size_t k = 0; k < r->elements; k++)
            n = flatten(r->element[k], items, cap, n);
        return n;
    case REDIS_REPLY_INTEGER:
        if (n < cap)
            items[n] = (struct store_item){ .type = STORE_INT, .i = r->integer };
        return n + 1;
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
        if (n < cap)
            items[n] = (struct store_item){ .type = STORE_STR, .s = r->str, .len = r->len };
        return n + 1;
    default:
        if (n < cap)
            items[n] = (struct store_item){ .type = STORE_NIL };
        return n + 1;
    }
}

static void answer_with_reply(struct store_call *call, const redisReply *r)
{
    struct store_item local[64], *items = local;
    struct store_reply out = { .status = STORE_OK };
    size_t n;

    if (r->type == REDIS_REPLY_ARRAY) {
        /* Unwrap the top level: callers see the script's elements. */
        n = 0;
        for (size_t k = 0; k < r->elements; k++)
            n = flatten(r->element[k], local, 64, n);
        if (n > 64) {
            items = malloc(n * sizeof *items);
            if (!items) {
                call_answer_status(call, STORE_UNAVAILABLE, "out of memory");
                return;
            }
            size_t m = 0;
            for (size_t k = 0; k < r->elements; k++)
                m = flatten(r->element[k], items, n, m);
        }
    } else {
        n = flatten(r, local, 64, 0);
    }
    out.n = n;
    out.items = items;
    call_answer(call, &out);
    if (items != local)
        free(items);
}

/* ---- sending ------------------------------------------------------------ */

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata);

static int send_call(struct store *st, struct store_call *call)
{
    if (redisAsyncCommandArgv(st->ac, on_reply, call, call->argc, call->argv,
                              call->argvlen) != REDIS_OK)
        return -1;
    COUNTER_INC(st->outstanding);
    st->last_send_us = now_us();
    return 0;
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct store_call *call = privdata;
    struct store *st = call->st;
    const redisReply *r = reply;

    COUNTER_ADD(st->outstanding, (unsigned)-1);
    if (r)
        st->last_reply_us = now_us();
    if (call->answered) {               /* timed out earlier: drop the late reply */
        st->abandoned--;
        call_free(call);
        return;
    }
    if (!r) {
        call_answer_status(call, STORE_UNAVAILABLE, "connection lost");
        call_free(call);
        return;
    }
    uint64_t rtt_us = now_us() - call->sent_us;
    counter_set_double(&st->stats.last_rtt_ms, (double)rtt_us / 1000.0);
    histogram_observe(&st->stats.rtt, (double)rtt_us / 1e6);
    if (r->type == REDIS_REPLY_ERROR && !call->retried_eval && ac == st->ac &&
        strncmp(r->str, "NOSCRIPT", 8) == 0) {
        /* Redis lost its script cache (restart, failover, SCRIPT FLUSH):
         * send the same call once more with the source, which reloads it. */
        call->retried_eval = true;
        call->argv[0] = "EVAL";
        call->argvlen[0] = 4;
        call->argv[1] = st->scripts[call->script];
        call->argvlen[1] = strlen(st->scripts[call->script]);
        if (send_call(st, call) == 0)
            return;
        call_answer_status(call, STORE_UNAVAILABLE, "resend failed");
        call_free(call);
        return;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        log_error("redis script error", "error=\"%.200s\"", r->str);
        struct store_reply out = { .status = STORE_ERROR, .error = r->str };
        call_answer(call, &out);
    } else {
        answer_with_reply(call, r);
    }
    call_free(call);
}

static void on_call_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct store_call *call = arg;
    (void)fd; (void)what;
    if (call->answered)
        return;
    /* hiredis still owes its callback: the call stays alive until then. */
    call->st->abandoned++;
    call_answer_status(call, STORE_TIMEOUT, "timeout");
}

int store_eval(struct store *st, size_t script, int nkeys, int argc,
               const char *const *argv, const size_t *argvlen,
               store_cb *cb, void *arg)
{
    char nkeys_str[16];
    size_t bytes = 0, total_argc = (size_t)argc + 3;

    if (!st->ready || !st->ac || script >= st->n_scripts ||
        st->outstanding >= st->max_pending) {
        COUNTER_INC(st->stats.unavailable);
        return -1;
    }
    int nk = snprintf(nkeys_str, sizeof nkeys_str, "%d", nkeys);
    for (int k = 0; k < argc; k++)
        bytes += argvlen[k];
    bytes += (size_t)nk;

    /* One allocation: the call, argv[], argvlen[], then the argument bytes. */
    struct store_call *call = calloc(1, sizeof *call + total_argc * (sizeof(char *) + sizeof(size_t)) + bytes);
    if (!call)
        return -1;
    call->st = st;
    call->cb = cb;
    call->arg = arg;
    call->script = script;
    call->argc = (int)total_argc;
    call->argv = (const char **)(call + 1);
    call->argvlen = (size_t *)(call->argv + total_argc);
    char *p = (char *)(call->argvlen + total_argc);

    call->argv[0] = "EVALSHA";
    call->argvlen[0] = 7;
    call->argv[1] = st->sha[script];
    call->argvlen[1] = SHA_HEX;
    memcpy(p, nkeys_str, (size_t)nk);
    call->argv[2] = p;
    call->argvlen[2] = (size_t)nk;
    p += nk;
    for (int k = 0; k < argc; k++) {
        memcpy(p, argv[k], argvlen[k]);
        call->argv[3 + k] = p;
        call->argvlen[3 + k] = argvlen[k];
        p += argvlen[k];
    }

    call->timer = evtimer_new(st->base, on_call_timeout, call);
    if (!call->timer) {
        free(call);
        return -1;
    }
    call->sent_us = now_us();
    if (send_call(st, call) != 0) {
        call_free(call);
        COUNTER_INC(st->stats.unavailable);
        return -1;
    }
    struct timeval tv = { st->cfg.timeout_ms / 1000, (st->cfg.timeout_ms % 1000) * 1000 };
    evtimer_add(call->timer, &tv);
    COUNTER_INC(st->stats.calls);
    return 0;
}

/* ---- connection life ---------------------------------------------------- */

static void mark_down(struct store *st, const char *why)
{
    bool was_ready = st->ready;
    /* Warn when a working connection breaks; while Redis stays away, each
     * failed attempt is only worth a debug line. */
    if (st->ready)
        log_warn("redis connection lost", "redis=%s reason=\"%s\"", st->display, why);
    else if (!st->down_logged)
        log_warn("redis unavailable", "redis=%s reason=\"%s\" retrying=1", st->display, why);
    else
        log_debug("redis connect failed", "redis=%s reason=\"%s\"", st->display, why);
    st->down_logged = true;
    st->ac = NULL;
    __atomic_store_n(&st->ready, false, __ATOMIC_RELAXED);
    st->ping_sent_us = 0;
    schedule_reconnect(st);
    if (was_ready && st->state_cb)
        st->state_cb(st->state_arg, false);
}

/* Drops the current connection from outside hiredis's callbacks (timers):
 * hiredis answers every pending call with NULL, which fails it over. */
static void drop_connection(struct store *st, const char *why)
{
    redisAsyncContext *ac = st->ac;
    if (!ac)
        return;
    mark_down(st, why);
    redisAsyncFree(ac);
}

static void on_handshake(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct store *st = ac->data;
    const redisReply *r = reply;
    intptr_t step = (intptr_t)privdata;   /* script index, or -1 AUTH, -2 SELECT */

    COUNTER_ADD(st->outstanding, (unsigned)-1);
    if (!r || ac != st->ac)
        return;
    if (r->type == REDIS_REPLY_ERROR) {
        log_error("redis handshake failed", "redis=%s step=%s error=\"%.200s\"", st->display,
                  step == -1 ? "auth" : step == -2 ? "select" : "script_load", r->str);
        redisAsyncDisconnect(ac);
        return;
    }
    if (step < 0)
        return;
    if (r->type != REDIS_REPLY_STRING || r->len != SHA_HEX) {
        redisAsyncDisconnect(ac);
        return;
    }
    memcpy(st->sha[step], r->str, SHA_HEX);
    st->sha[step][SHA_HEX] = '\0';
    if (++st->shas_loaded == st->n_scripts) {
        __atomic_store_n(&st->ready, true, __ATOMIC_RELAXED);
        st->down_logged = false;
        st->backoff_ms = BACKOFF_MIN_MS;
        st->last_reply_us = now_us();
        log_info("redis ready", "redis=%s", st->display);
        if (st->state_cb)
            st->state_cb(st->state_arg, true);
    }
}

static void send_handshake(struct store *st, intptr_t step, int argc, const char **argv)
{
    size_t lens[4];
    for (int k = 0; k < argc; k++)
        lens[k] = strlen(argv[k]);
    if (redisAsyncCommandArgv(st->ac, on_handshake, (void *)step, argc, argv, lens) == REDIS_OK)
        COUNTER_INC(st->outstanding);
}

static void on_connect(const redisAsyncContext *cac, int status)
{
    redisAsyncContext *ac = (redisAsyncContext *)cac;
    struct store *st = ac->data;

    if (ac != st->ac)
        return;
    if (status != REDIS_OK) {
        /* hiredis frees the context after this callback. */
        mark_down(st, ac->errstr[0] ? ac->errstr : "connect failed");
        return;
    }
    log_debug("redis connected", "redis=%s", st->display);
    char dbs[16];
    if (st->password) {
        const char *argv[] = { "AUTH", st->user ? st->user : st->password, st->password };
        send_handshake(st, -1, st->user ? 3 : 2, argv);
    }
    if (st->cfg.db != 0) {
        snprintf(dbs, sizeof dbs, "%d", st->cfg.db);
        const char *argv[] = { "SELECT", dbs };
        send_handshake(st, -2, 2, argv);
    }
    st->shas_loaded = 0;
    for (size_t k = 0; k < st->n_scripts; k++) {
        const char *argv[] = { "SCRIPT", "LOAD", st->scripts[k] };
        send_handshake(st, (intptr_t)k, 3, argv);
    }
}

static void on_disconnect(const redisAsyncContext *cac, int status)
{
    redisAsyncContext *ac = (redisAsyncContext *)cac;
    struct store *st = ac->data;

    if (ac != st->ac)       /* one we dropped ourselves */
        return;
    mark_down(st, status == REDIS_OK ? "closed" : (ac->errstr[0] ? ac->errstr : "error"));
}

static void connect_now(struct store *st)
{
    redisAsyncContext *ac;

    if (st->cfg.transport == REDIS_UNIX)
        ac = redisAsyncConnectUnix(st->path);
    else
        ac = redisAsyncConnect(st->host, st->cfg.port);
    if (!ac) {
        mark_down(st, "out of memory");
        return;
    }
    if (ac->err) {
        char why[128];
        snprintf(why, sizeof why, "%s", ac->errstr);
        redisAsyncFree(ac);
        mark_down(st, why);
        return;
    }
    ac->data = st;
    st->ac = ac;
    __atomic_store_n(&st->ready, false, __ATOMIC_RELAXED);
    st->deadline_us = now_us() + stall_limit_us(st);
    if (redisLibeventAttach(ac, st->base) != REDIS_OK) {
        st->ac = NULL;
        redisAsyncFree(ac);
        mark_down(st, "cannot attach to event loop");
        return;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
}

static void on_reconnect_timer(evutil_socket_t fd, short what, void *arg)
{
    struct store *st = arg;
    (void)fd; (void)what;
    if (!st->ac)
        connect_now(st);
}

static void schedule_reconnect(struct store *st)
{
    struct timeval tv = { st->backoff_ms / 1000, (st->backoff_ms % 1000) * 1000 };
    if (evtimer_pending(st->reconnect_timer, NULL))
        return;
    evtimer_add(st->reconnect_timer, &tv);
    COUNTER_INC(st->stats.reconnects);
    st->backoff_ms = st->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : st->backoff_ms * 2;
}

static void on_ping(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct store *st = ac->data;
    (void)privdata;
    COUNTER_ADD(st->outstanding, (unsigned)-1);
    if (reply && ac == st->ac) {
        st->last_reply_us = now_us();
        st->ping_sent_us = 0;
    }
}

/* Every HEALTH_TICK_MS: enforce the connect deadline, notice a connection
 * that stopped answering, and ping an idle one so a dead peer is found
 * before a request needs it. */
static void on_health_timer(evutil_socket_t fd, short what, void *arg)
{
    struct store *st = arg;
    uint64_t now = now_us();
    (void)fd; (void)what;

    if (!st->ac)
        return;
    if (!st->ready) {
        if (now > st->deadline_us)
            drop_connection(st, "connect timeout");
        return;
    }
    if (st->abandoned > 0 && now - st->last_reply_us > stall_limit_us(st)) {
        drop_connection(st, "not answering");
        return;
    }
    if (st->ping_sent_us && now - st->ping_sent_us > stall_limit_us(st)) {
        drop_connection(st, "ping timeout");
        return;
    }
    if (!st->ping_sent_us && st->outstanding == 0 &&
        now - st->last_send_us > IDLE_PING_MS * 1000u) {
        if (redisAsyncCommand(st->ac, on_ping, NULL, "PING") == REDIS_OK) {
            COUNTER_INC(st->outstanding);
            st->ping_sent_us = st->last_send_us = now;
        }
    }
}

/* ---- creation ----------------------------------------------------------- */

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

/* Host names are resolved once, here, before the loop runs: hiredis would
 * call getaddrinfo() on every reconnect, blocking the loop. */
static char *resolve_host(const char *host, char *err, size_t errlen)
{
    struct in6_addr a6;
    struct in_addr a4;
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM }, *res;
    char buf[INET6_ADDRSTRLEN];

    if (inet_pton(AF_INET, host, &a4) == 1 || inet_pton(AF_INET6, host, &a6) == 1)
        return strdup(host);
    int rc = getaddrinfo(host, NULL, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "redis.url: cannot resolve %s: %s", host, gai_strerror(rc));
        return NULL;
    }
    if (res->ai_family == AF_INET)
        inet_ntop(AF_INET, &((struct sockaddr_in *)res->ai_addr)->sin_addr, buf, sizeof buf);
    else
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)res->ai_addr)->sin6_addr, buf, sizeof buf);
    freeaddrinfo(res);
    return strdup(buf);
}

struct store *store_create(struct event_base *base, const struct cfg_redis *cfg,
                           unsigned max_pending, const char *const *scripts,
                           size_t n_scripts, char *err, size_t errlen)
{
    struct store *st = calloc(1, sizeof *st);
    if (!st) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    st->base = base;
    st->cfg = *cfg;
    st->max_pending = max_pending ? max_pending : 1;
    st->scripts = scripts;
    st->n_scripts = n_scripts;
    st->backoff_ms = BACKOFF_MIN_MS;
    snprintf(st->display, sizeof st->display, "%s", cfg->url ? cfg->url : "?");
    st->sha = calloc(n_scripts ? n_scripts : 1, sizeof *st->sha);
    st->path = dup_or_null(cfg->path);
    st->user = dup_or_null(cfg->user);
    st->password = dup_or_null(cfg->password);
    if (cfg->transport == REDIS_TCP && !(st->host = resolve_host(cfg->host, err, errlen))) {
        store_free(st);
        return NULL;
    }
    st->reconnect_timer = evtimer_new(base, on_reconnect_timer, st);
    st->health_timer = event_new(base, -1, EV_PERSIST, on_health_timer, st);
    if (!st->sha || !st->reconnect_timer || !st->health_timer) {
        snprintf(err, errlen, "out of memory");
        store_free(st);
        return NULL;
    }
    struct timeval tick = { 0, HEALTH_TICK_MS * 1000 };
    evtimer_add(st->health_timer, &tick);
    connect_now(st);
    return st;
}

void store_free(struct store *st)
{
    if (!st)
        return;
    if (st->ac) {
        redisAsyncContext *ac = st->ac;
        st->ac = NULL;
        __atomic_store_n(&st->ready, false, __ATOMIC_RELAXED);
        redisAsyncFree(ac);       /* answers every pending call UNAVAILABLE */
    }
    if (st->reconnect_timer)
        event_free(st->reconnect_timer);
    if (st->health_timer)
        event_free(st->health_timer);
    free(st->sha);
    free(st->host);
    free(st->path);
    free(st->user);
    if (st->password) {
        memset(st->password, 0, strlen(st->password));
        free(st->password);
    }
    free(st);
}

void store_on_state(struct store *st, void (*cb)(void *arg, bool ready), void *arg)
{
    st->state_cb = cb;
    st->state_arg = arg;
}

bool store_ready(const struct store *st)
{
    return __atomic_load_n(&st->ready, __ATOMIC_RELAXED);
}

void store_get_stats(const struct store *st, struct store_stats *out)
{
    /* May run on another worker's thread: every field is loaded atomically. */
    out->connected = __atomic_load_n(&st->ready, __ATOMIC_RELAXED);
    out->pending = COUNTER_GET(st->outstanding);
    out->calls = COUNTER_GET(st->stats.calls);
    out->timeouts = COUNTER_GET(st->stats.timeouts);
    out->errors = COUNTER_GET(st->stats.errors);
    out->unavailable = COUNTER_GET(st->stats.unavailable);
    out->reconnects = COUNTER_GET(st->stats.reconnects);
    out->last_rtt_ms = counter_get_double(&st->stats.last_rtt_ms);
    histogram_read(&st->stats.rtt, &out->rtt);
}

/*
 * store: hiredis async connections on a libevent loop, with the timeouts,
 * reconnects, script handling and Redis Cluster routing hiredis 0.14 leaves
 * to us.  See store.h.
 *
 * A node is one Redis server and its connection.  With redis.url there is
 * one node, which owns every call; with redis.cluster there is one node per
 * master of the slot map (plus, briefly, seeds and redirect targets), and a
 * call goes to the owner of the slot of its first key (cluster.h).
 *
 * Life of a node's connection:
 *   DOWN --reconnect timer--> CONNECTING --connect cb--> HANDSHAKE
 *   (AUTH, SELECT, SCRIPT LOAD each script, TIME, pipelined) --TIME--> READY
 *   (and, in a cluster, READY --no longer a master--> RETIRING --> DOWN)
 * Any failure, a connect/handshake that exceeds its deadline, or a READY
 * connection that stops answering (SIGSTOP, black-holed port) drops it back
 * to DOWN; the next attempt follows after a backoff of 100 ms doubling up to
 * 2 s, for as long as the node is wanted (the single node always; a cluster
 * node while it owns slots).  Calls are accepted only when their node is
 * READY (or, in a cluster, connecting): while Redis is away a request fails
 * in microseconds instead of waiting for its timeout.
 *
 * Cluster.  The slot map comes from CLUSTER SLOTS, asked of any node we can
 * reach (seeds first), at start, after a MOVED, while a master is down or
 * the map is incomplete, and after a CLUSTERDOWN -- at most every
 * REFRESH_MIN_MS.  Redirects: MOVED updates the slot's owner at once and
 * resends there; ASK sends ASKING + the call to the target without touching
 * the map; TRYAGAIN / CLUSTERDOWN / LOADING retry after RETRY_DELAY_MS, or
 * answer UNAVAILABLE when the deadline is too close.  A call redirected to a
 * node that is still connecting waits on that node (parked) until it is
 * ready, within its own deadline.  At most MAX_REDIRECTS redirects per call.
 * The store is ready when every slot has an owner and every owner is ready.
 */
#include "capgate/store.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "capgate/clock.h"
#include "capgate/cluster.h"
#include "capgate/counter.h"
#include "capgate/log.h"
#include "capgate/textbuf.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 2000
#define HEALTH_TICK_MS 200
#define IDLE_PING_MS   1000
#define SHA_HEX        40
#define MAX_NODES      128      /* addresses a cluster store keeps track of */
#define MAX_REDIRECTS  5        /* MOVED + ASK per call */
#define RETRY_DELAY_MS 20       /* after TRYAGAIN, CLUSTERDOWN, LOADING */
#define REFRESH_MIN_MS 100      /* between two CLUSTER SLOTS */
#define CLOCK_REFRESH_MS 2000   /* a READY node's clock is read again after this */
#define CLOCK_KEEP_MS  5000     /* clock samples older than this are not trusted */
#define LATE_MARGIN_MAX_MS 100  /* see late_margin_us() */

struct store_call;

/* The life of a node's connection (the comment at the top of this file). */
enum node_state {
    NODE_DOWN,        /* no connection (ac is NULL); a reconnect may be due */
    NODE_CONNECTING,  /* the TCP connect is in progress */
    NODE_HANDSHAKE,   /* connected: AUTH, SELECT, the SCRIPT LOADs and TIME in flight */
    NODE_READY,       /* takes calls */
    NODE_RETIRING,    /* no longer a master: closing once its answers are in */
};

struct node {
    struct store *st;
    char *host;                    /* numeric address (TCP) */
    int port;
    char name[CLUSTER_HOST_MAX + 8];   /* host:port, for logs */
    redisAsyncContext *ac;         /* NULL when DOWN */
    enum node_state state;
    bool wanted;                   /* reconnect when down */
    bool down_logged;              /* said once that it is away */
    bool slots_on_connect;         /* ask CLUSTER SLOTS once connected */
    bool handshake_failed;         /* this connection is being dropped */
    bool silent;                   /* stopped answering: takes no calls (see check_node) */
    uint64_t last_deadline_us;     /* the latest deadline of a call sent on it */
    size_t shas_loaded;
    unsigned n_slots;              /* slots it owns in the map */
    uint64_t deadline_us;          /* connect + handshake must finish by then */
    unsigned backoff_ms;
    struct event *reconnect_timer;
    unsigned outstanding;          /* hiredis callbacks still owed on this node */
    unsigned abandoned;            /* ... of which the caller already got TIMEOUT */
    uint64_t last_reply_us, last_send_us, ping_sent_us;
    /* Redis's clock as this gateway sees it: Redis time minus our
     * monotonic time, in µs (see on_time).  Known once the handshake's TIME
     * has answered; renewed by the health ping. */
    int64_t clock_offset_us;
    uint64_t clock_sampled_us;      /* when the offset kept was measured */
    uint64_t clock_read_us;         /* the last TIME answer */
    bool clock_known;
    struct store_call *parked;     /* calls waiting for it to be ready (FIFO) */
    struct store_call *parked_tail;
    bool flush_wanted;             /* calls given to hiredis this turn, not written yet */
};

struct store {
    struct event_base *base;
    struct cfg_redis cfg;          /* host/path/user/password point into strings below */
    char *path, *user, *password;
    char display[256];             /* url for logs, password masked */
    unsigned max_pending;
    bool closing;                  /* store_free is running */

    const char *const *scripts;
    size_t n_scripts;
    char (*sha)[SHA_HEX + 1];      /* per script, filled by SCRIPT LOAD */

    struct node **nodes;           /* [0] is the single node, or the first seed */
    size_t n_nodes;
    bool cluster;
    uint8_t *owner;                /* cluster: per slot, node index + 1 (0: none) */
    unsigned slots_owned;
    bool map_logged_incomplete;
    bool map_warned;               /* said once that no node answered */
    bool warned_name;              /* said once that a node has no numeric address */

    /* CLUSTER SLOTS: one in flight at most, on refresh_node. */
    struct node *refresh_node;
    uintptr_t refresh_seq;         /* replies with an older seq are stale */
    uint64_t refresh_sent_us, last_refresh_us;
    bool refresh_wanted;
    unsigned refresh_gap_ms;       /* REFRESH_MIN_MS, doubled while no map comes */
    size_t refresh_rr;             /* where the next probe starts */
    struct event *refresh_timer;

    bool ready;
    struct event *health_timer;
    struct event *flush;           /* the turn's calls written at its end (on_flush) */
    struct store_call *delayed;    /* calls waiting out a TRYAGAIN (list) */
    struct store_call *lost;       /* calls whose connection broke, until their deadline */

    unsigned outstanding;          /* hiredis callbacks owed, all nodes */
    unsigned waiting;              /* accepted calls parked or delayed */
    struct store_stats stats;
    void (*state_cb)(void *arg, bool ready);
    void *state_arg;
};

/* Where a call is:
 *   NOWHERE  being answered or resent
 *   SENT     given to hiredis; its callback is owed
 *   PARKED   waiting for its node to be ready (node->parked)
 *   DELAYED  waiting out a TRYAGAIN (st->delayed, call->retry armed)
 *   LOST     its connection broke after it was sent: Redis may still run it,
 *            so it is answered UNAVAILABLE only at its deadline, after which
 *            Redis refuses it (st->lost) -- a 503 means nothing happened */
enum call_where { CALL_NOWHERE, CALL_SENT, CALL_PARKED, CALL_DELAYED, CALL_LOST };

/* One script call.  While SENT it lives until hiredis has called back
 * (always exactly once), even when the caller was answered earlier by the
 * timeout; PARKED or DELAYED it is ours alone. */
struct store_call {
    struct store *st;
    struct node *node;              /* SENT to / PARKED on */
    store_cb *cb;
    void (*after)(void *after_arg, const struct store_reply *late);   /* see store_eval_after */
    void *after_arg;
    void *arg;
    struct event *timer;            /* the caller's deadline (in the call's own block) */
    struct event *retry;            /* DELAYED: made on first use */
    struct store_call *prev, *next; /* node->parked, st->delayed or st->lost */
    enum call_where where;
    bool answered;
    bool retried_eval;
    bool retried_late;             /* sent again after a LATE our clock caused */
    bool asking;                    /* send ASKING first (an ASK redirect) */
    bool plain;                     /* a command, not a script: no deadline */
    unsigned redirects;
    int slot;                       /* -1: no key */
    size_t script;
    uint64_t sent_us, deadline_us;
    int argc;                       /* EVALSHA sha nkeys args... deadline (plain: the command) */
    char deadline[24];              /* the last argument, set when sent */
    const char **argv;
    size_t *argvlen;
};

static bool is_ready(const struct node *n)
{
    return n->state == NODE_READY && !n->silent;
}

/* The connect callback succeeded (and the connection has not gone since). */
static bool is_connected(const struct node *n)
{
    return n->state >= NODE_HANDSHAKE;
}

static void connect_now(struct node *n);
static void schedule_reconnect(struct node *n);
static void request_refresh(struct store *st);
static void update_ready(struct store *st);
static void send_to(struct store_call *call, struct node *n);

static uint64_t stall_limit_us(const struct store *st)
{
    uint64_t ms = (uint64_t)st->cfg.timeout_ms * 4;
    return (ms < 1000 ? 1000 : ms) * 1000;
}

static void owe(struct node *n, int delta)
{
    n->outstanding += (unsigned)delta;
    COUNTER_ADD(n->st->outstanding, (unsigned)delta);
}

static struct node *owner_of(const struct store *st, int slot)
{
    if (!st->cluster)
        return st->nodes[0];
    if (slot < 0) {                 /* no key: any ready master */
        for (size_t k = 0; k < st->n_nodes; k++)
            if (st->nodes[k]->n_slots && is_ready(st->nodes[k]))
                return st->nodes[k];
        return NULL;
    }
    return st->owner[slot] ? st->nodes[st->owner[slot] - 1] : NULL;
}

/* ---- call lists ---------------------------------------------------------- */

static void list_push(struct store_call **head, struct store_call **tail, struct store_call *c)
{
    c->next = NULL;
    c->prev = *tail;
    if (*tail)
        (*tail)->next = c;
    else
        *head = c;
    *tail = c;
}

static void list_remove(struct store_call **head, struct store_call **tail, struct store_call *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        *head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    else if (tail)
        *tail = c->prev;
    c->prev = c->next = NULL;
}

/* The delayed and lost lists have no tail: calls are pushed at the head. */
static void head_push(struct store_call **head, struct store_call *c)
{
    c->prev = NULL;
    c->next = *head;
    if (c->next)
        c->next->prev = c;
    *head = c;
}

/* ---- answering calls ---------------------------------------------------- */

static void call_free(struct store_call *call)
{
    if (call->after)
        call->after(call->after_arg, NULL);
    if (call->timer)
        event_del(call->timer);     /* (its memory is the call's: see eval) */
    if (call->retry)
        event_free(call->retry);
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

/* Answers a call that hiredis does not hold, and frees it. */
static void call_fail(struct store_call *call, enum store_status status, const char *error)
{
    call->where = CALL_NOWHERE;
    call_answer_status(call, status, error);
    call_free(call);
}

/* Takes a PARKED or DELAYED call out of its list. */
static void call_unlink(struct store_call *call)
{
    struct store *st = call->st;
    if (call->where == CALL_PARKED) {
        list_remove(&call->node->parked, &call->node->parked_tail, call);
        COUNTER_ADD(st->waiting, (unsigned)-1);
    } else if (call->where == CALL_DELAYED) {
        list_remove(&st->delayed, NULL, call);
        event_del(call->retry);
        COUNTER_ADD(st->waiting, (unsigned)-1);
    } else if (call->where == CALL_LOST) {
        list_remove(&st->lost, NULL, call);
        COUNTER_ADD(st->waiting, (unsigned)-1);
    }
    call->where = CALL_NOWHERE;
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
    case REDIS_REPLY_ERROR:         /* inside an array: one part of a batch failed */
        if (n < cap)
            items[n] = (struct store_item){ .type = STORE_ERR, .s = r->str, .len = r->len };
        return n + 1;
    default:
        if (n < cap)
            items[n] = (struct store_item){ .type = STORE_NIL };
        return n + 1;
    }
}

/* R as a store_reply, to FN: the caller's answer, or a late reply to AFTER. */
static void with_reply(struct store_call *call, const redisReply *r, bool late)
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
                if (!late)
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
    if (late) {
        void (*after)(void *, const struct store_reply *) = call->after;
        call->after = NULL;
        after(call->after_arg, &out);
    } else {
        call_answer(call, &out);
    }
    if (items != local)
        free(items);
}

static void answer_with_reply(struct store_call *call, const redisReply *r)
{
    with_reply(call, r, false);
}

/* How many items element POS of a flattened reply spans (0: cut short). */
static size_t extent(const struct store_item *it, size_t n, size_t pos)
{
    if (pos >= n)
        return 0;
    if (it[pos].type != STORE_ARRAY)
        return 1;
    size_t e = 1;
    for (long long k = 0; k < it[pos].i; k++) {
        size_t s = extent(it, n, pos + e);
        if (!s)
            return 0;
        e += s;
    }
    return e;
}

size_t store_reply_element(const struct store_reply *r, size_t pos, struct store_reply *one)
{
    size_t e = extent(r->items, r->n, pos);
    *one = (struct store_reply){ .status = STORE_ERROR, .error = "bad reply" };
    if (!e)
        return 0;
    if (r->items[pos].type == STORE_ERR)
        one->error = r->items[pos].s;
    else if (r->items[pos].type == STORE_ARRAY)
        *one = (struct store_reply){ .status = STORE_OK, .n = e - 1, .items = r->items + pos + 1 };
    else
        *one = (struct store_reply){ .status = STORE_OK, .n = 1, .items = r->items + pos };
    return e;
}

/* ---- sending ------------------------------------------------------------ */

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata);

static void on_aux_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    (void)reply; (void)privdata;
    owe(ac->data, -1);      /* ASKING: a refusal shows in the call's own reply */
}

/* "<prefix><v>\r\n" at P (room for it checked by the caller). */
static char *resp_header(char *p, char prefix, size_t v)
{
    *p++ = prefix;
    p = text_dec(p, v);
    *p++ = '\r';
    *p++ = '\n';
    return p;
}

/* RESP for ARGC arguments into OUT (at most CAP bytes): its length, or 0
 * when it does not fit.  hiredis's own formatter (redisAsyncCommandArgv)
 * goes through sdscatfmt once per argument, which made it the costliest
 * step of a decision on capgate's side. */
static size_t resp_format(char *out, size_t cap, int argc, const char *const *argv,
                          const size_t *argvlen)
{
    char *p = out, *end = out + cap;
    if (end - p < 24)
        return 0;
    p = resp_header(p, '*', (size_t)argc);
    for (int k = 0; k < argc; k++) {
        if ((size_t)(end - p) < argvlen[k] + 26)      /* header (<= 23) + data + CRLF */
            return 0;
        p = resp_header(p, '$', argvlen[k]);
        memcpy(p, argv[k], argvlen[k]);
        p += argvlen[k];
        *p++ = '\r';
        *p++ = '\n';
    }
    return (size_t)(p - out);
}

/* How long before the caller's own deadline Redis stops taking the call:
 * the answer of a call that ran just in time still has to come back, and a
 * 503 must mean that nothing happened. */
static uint64_t late_margin_us(const struct store *st)
{
    uint64_t m = (uint64_t)st->cfg.timeout_ms * 1000u / 5;
    return m < LATE_MARGIN_MAX_MS * 1000u ? m : LATE_MARGIN_MAX_MS * 1000u;
}

/* The call's last argument: its deadline on N's clock (ms since the epoch).
 * Every script refuses to act after it ("LATE"), so a call that Redis runs
 * after the caller was told it failed (a stalled Redis, a slow network)
 * changes nothing. */
static void set_deadline(struct node *n, struct store_call *call)
{
    uint64_t margin = late_margin_us(n->st);
    int64_t local = (int64_t)(call->deadline_us > margin ? call->deadline_us - margin : 0);
    int64_t ms = (local + n->clock_offset_us) / 1000;
    char *end = text_dec(call->deadline, ms > 0 ? (size_t)ms : 0);
    call->argv[call->argc - 1] = call->deadline;
    call->argvlen[call->argc - 1] = (size_t)(end - call->deadline);
}

/* Late in the loop turn in which calls were given to hiredis: write them
 * all now, with one write(2) per node.  Left to hiredis, the write waits
 * for the socket's writable event in the next turn, which costs an
 * epoll_ctl to ask for it and another to stop -- two of the dozen system
 * calls of a /v1/send.  (The libevent adapter's write event is added and
 * deleted in this same turn, which the loop's changelist folds into
 * nothing.)  A node still connecting is left to hiredis. */
static void on_flush(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct store *st = arg;
    for (size_t k = 0; k < st->n_nodes; k++) {
        struct node *n = st->nodes[k];
        if (!n->flush_wanted)
            continue;
        n->flush_wanted = false;
        if (n->ac && (n->ac->c.flags & REDIS_CONNECTED))
            redisAsyncHandleWrite(n->ac);
    }
}

static int send_call(struct node *n, struct store_call *call)
{
    if (!call->plain)
        set_deadline(n, call);
    if (call->asking) {
        if (redisAsyncCommand(n->ac, on_aux_reply, NULL, "ASKING") != REDIS_OK)
            return -1;
        owe(n, 1);
    }
    char buf[8192];
    size_t len = resp_format(buf, sizeof buf, call->argc, call->argv, call->argvlen);
    int rc = len ? redisAsyncFormattedCommand(n->ac, on_reply, call, buf, len)
                 : redisAsyncCommandArgv(n->ac, on_reply, call, call->argc, call->argv,
                                         call->argvlen);     /* a large call (EVAL) */
    if (rc != REDIS_OK)
        return -1;
    owe(n, 1);
    n->flush_wanted = true;
    event_active(n->st->flush, EV_TIMEOUT, 0);
    call->node = n;
    call->where = CALL_SENT;
    call->sent_us = n->last_send_us = clock_now_us();
    if (call->deadline_us > n->last_deadline_us)
        n->last_deadline_us = call->deadline_us;
    return 0;
}

static void park(struct node *n, struct store_call *call)
{
    call->node = n;
    call->where = CALL_PARKED;
    list_push(&n->parked, &n->parked_tail, call);
    COUNTER_INC(n->st->waiting);
}

static bool node_usable(const struct node *n)
{
    return n && n->state != NODE_RETIRING;
}

/* (Re)sends CALL to N: at once when N is ready, else parked until it is
 * (connecting it if needed); answered UNAVAILABLE when that cannot be. */
static void send_to(struct store_call *call, struct node *n)
{
    if (!node_usable(n)) {
        call_fail(call, STORE_UNAVAILABLE, n ? "node retiring" : "no node for slot");
        return;
    }
    if (is_ready(n)) {
        if (send_call(n, call) != 0)
            call_fail(call, STORE_UNAVAILABLE, "send failed");
        return;
    }
    if (!n->ac) {
        n->wanted = true;
        connect_now(n);
    }
    if (!n->ac) {
        call_fail(call, STORE_UNAVAILABLE, "node unavailable");
        return;
    }
    park(n, call);
}

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
    struct store_call *call = arg;
    (void)fd; (void)what;
    call_unlink(call);
    call->asking = false;           /* start again from the map; the deadline */
    call->redirects = 0;            /* bounds the retries */
    send_to(call, owner_of(call->st, call->slot));
}

/* TRYAGAIN and friends: again after a short delay if the deadline allows. */
static void retry_later(struct store_call *call, const char *why)
{
    struct store *st = call->st;
    if (clock_now_us() + RETRY_DELAY_MS * 1000u + 1000u >= call->deadline_us) {
        call_fail(call, STORE_UNAVAILABLE, why);
        return;
    }
    if (!call->retry && !(call->retry = evtimer_new(st->base, on_retry, call))) {
        call_fail(call, STORE_UNAVAILABLE, "out of memory");
        return;
    }
    struct timeval tv = { 0, RETRY_DELAY_MS * 1000 };
    call->where = CALL_DELAYED;
    head_push(&st->delayed, call);
    COUNTER_INC(st->waiting);
    evtimer_add(call->retry, &tv);
}

static bool is_error(const redisReply *r, const char *prefix)
{
    size_t len = strlen(prefix);
    return r->len >= len && memcmp(r->str, prefix, len) == 0 &&
           (r->len == len || r->str[len] == ' ');
}

static bool take_clock_sample(struct node *n, int64_t redis_us);

/* A LATE answer's Redis time (ms, read by the script): taken as a clock
 * sample, as a TIME answer is.  True when it moved N's clock forward --
 * the call's deadline was early by our doing, not Redis's lateness. */
static bool late_clock(struct node *n, const redisReply *r)
{
    const char *p = strstr(r->str, "LATE ");
    if (!p)
        return false;
    char *end;
    long long ms = strtoll(p + 5, &end, 10);
    if (end == p + 5 || ms <= 0)
        return false;
    int64_t before = n->clock_offset_us;
    return take_clock_sample(n, (int64_t)ms * 1000) && n->clock_offset_us > before;
}

static struct node *node_get(struct store *st, const char *host, int port);

static uint8_t node_index(const struct store *st, const struct node *n)
{
    size_t idx = 0;
    while (st->nodes[idx] != n)
        idx++;
    return (uint8_t)(idx + 1);      /* MAX_NODES <= 255 */
}

/* A MOVED: SLOT belongs to TO from now on (until the next map says more). */
static void set_owner(struct store *st, unsigned slot, struct node *to)
{
    if (st->owner[slot] == node_index(st, to))
        return;
    if (st->owner[slot])
        st->nodes[st->owner[slot] - 1]->n_slots--;
    else
        st->slots_owned++;
    st->owner[slot] = node_index(st, to);
    to->n_slots++;
    to->wanted = true;
}

/* A cluster's answer to a call sent to N: handles redirects and transient
 * refusals.  Returns true when the call was taken care of. */
static bool cluster_error(struct store_call *call, struct node *n, const redisReply *r)
{
    struct store *st = call->st;
    char host[CLUSTER_HOST_MAX];
    unsigned slot;
    bool ask;
    int port;

    if (cluster_parse_redirect(r->str, r->len, &ask, &slot, host, &port) == 0) {
        if (++call->redirects > MAX_REDIRECTS) {
            log_warn("redis cluster: too many redirects", "redis=%s error=%.100s",
                     n->name, r->str);
            call_fail(call, STORE_UNAVAILABLE, "too many redirects");
            return true;
        }
        struct node *to = node_get(st, host[0] ? host : n->host, port);
        if (!to) {
            call_fail(call, STORE_UNAVAILABLE, "redirect to an unusable address");
            return true;
        }
        if (ask) {
            log_debug("redis cluster: ask", "slot=%u from=%s to=%s", slot, n->name, to->name);
            call->asking = true;
        } else {
            log_debug("redis cluster: moved", "slot=%u from=%s to=%s", slot, n->name, to->name);
            call->asking = false;
            set_owner(st, slot, to);
            request_refresh(st);
        }
        send_to(call, to);
        update_ready(st);
        return true;
    }
    if (is_error(r, "TRYAGAIN") || is_error(r, "CLUSTERDOWN") || is_error(r, "LOADING")) {
        if (is_error(r, "CLUSTERDOWN"))
            request_refresh(st);
        retry_later(call, r->str);
        return true;
    }
    return false;
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct store_call *call = privdata;
    struct node *n = ac->data;
    struct store *st = call->st;
    const redisReply *r = reply;

    owe(n, -1);
    if (r)
        n->last_reply_us = clock_now_us();
    call->where = CALL_NOWHERE;
    if (call->answered) {               /* timed out earlier: a late reply */
        n->abandoned--;
        /* It ran (no LATE, no error) although the caller was told it did
         * not: the caller may undo it. */
        if (r && call->after && r->type != REDIS_REPLY_ERROR) {
            COUNTER_INC(st->stats.late_replies);
            with_reply(call, r, true);
        }
        call_free(call);
        return;
    }
    if (!r) {
        /* The connection broke: the call may have reached Redis, which runs
         * it unless its deadline has passed.  Saying "unavailable" before
         * then could be a lie, so the answer waits for the call's timer. */
        if (!st->closing && clock_now_us() < call->deadline_us) {
            call->where = CALL_LOST;
            head_push(&st->lost, call);
            COUNTER_INC(st->waiting);
            return;
        }
        call_answer_status(call, STORE_UNAVAILABLE, "connection lost");
        call_free(call);
        return;
    }
    uint64_t rtt_us = clock_now_us() - call->sent_us;
    counter_set_double(&st->stats.last_rtt_ms, (double)rtt_us / 1000.0);
    histogram_observe(&st->stats.rtt, (double)rtt_us / 1e6);
    if (r->type == REDIS_REPLY_ERROR && st->cluster && !st->closing &&
        cluster_error(call, n, r))
        return;
    if (r->type == REDIS_REPLY_ERROR && !call->plain && !call->retried_eval && ac == n->ac &&
        strncmp(r->str, "NOSCRIPT", 8) == 0) {
        /* Redis lost its script cache (restart, failover, SCRIPT FLUSH):
         * send the same call once more with the source, which reloads it. */
        call->retried_eval = true;
        call->argv[0] = "EVAL";
        call->argvlen[0] = 4;
        call->argv[1] = st->scripts[call->script];
        call->argvlen[1] = strlen(st->scripts[call->script]);
        if (send_call(n, call) == 0)
            return;
        call_answer_status(call, STORE_UNAVAILABLE, "resend failed");
        call_free(call);
        return;
    }
    /* Redis 7 puts "ERR " before a script's error_reply('LATE <ms>'). */
    if (r->type == REDIS_REPLY_ERROR && !call->plain &&
        (is_error(r, "LATE") || is_error(r, "ERR LATE"))) {
        /* Redis ran it past its deadline and did nothing.  When that is our
         * clock's doing -- its sample was taken late (a stalled loop while
         * the handshake's TIME came back, valgrind), so its deadlines fall
         * early -- the answer's Redis time corrects it, and the call goes
         * once more with what is left of its time: it changed nothing. */
        if (!call->retried_late && ac == n->ac && !st->closing && late_clock(n, r) &&
            clock_now_us() + late_margin_us(st) < call->deadline_us) {
            call->retried_late = true;
            if (send_call(n, call) == 0)
                return;
        }
        call_answer_status(call, STORE_TIMEOUT, "late");
    } else if (r->type == REDIS_REPLY_ERROR) {
        log_error_limited("redis script error", "error=%.200s", r->str);
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
    if (call->where == CALL_SENT) {
        /* hiredis still owes its callback: the call stays alive until then. */
        call->node->abandoned++;
        call_answer_status(call, STORE_TIMEOUT, "timeout");
        return;
    }
    bool lost = call->where == CALL_LOST;
    call_unlink(call);
    call_fail(call, lost ? STORE_UNAVAILABLE : STORE_TIMEOUT, lost ? "connection lost" : "timeout");
}

/* SCRIPT is PLAIN for a command: ARGV is then the whole command, its key
 * (if NKEYS) at ARGV[1]. */
#define PLAIN SIZE_MAX
static int eval(struct store *st, uint64_t held_us, size_t script, int nkeys, int argc,
                const char *const *argv, const size_t *argvlen, store_cb *cb, void *arg,
                void (*after)(void *, const struct store_reply *), void *after_arg);

int store_command(struct store *st, int argc, const char *const *argv, const size_t *argvlen,
                  store_cb *cb, void *arg)
{
    return eval(st, 0, PLAIN, argc > 1, argc, argv, argvlen, cb, arg, NULL, NULL);
}

int store_eval(struct store *st, size_t script, int nkeys, int argc,
               const char *const *argv, const size_t *argvlen,
               store_cb *cb, void *arg)
{
    return eval(st, 0, script, nkeys, argc, argv, argvlen, cb, arg, NULL, NULL);
}

int store_eval_held(struct store *st, uint64_t held_us, size_t script, int nkeys, int argc,
                    const char *const *argv, const size_t *argvlen,
                    store_cb *cb, void *arg,
                    void (*after)(void *, const struct store_reply *), void *after_arg)
{
    return eval(st, held_us, script, nkeys, argc, argv, argvlen, cb, arg, after, after_arg);
}

int store_eval_after(struct store *st, size_t script, int nkeys, int argc,
                     const char *const *argv, const size_t *argvlen, store_cb *cb, void *arg,
                     void (*after)(void *, const struct store_reply *), void *after_arg)
{
    return eval(st, 0, script, nkeys, argc, argv, argvlen, cb, arg, after, after_arg);
}

static int eval(struct store *st, uint64_t held_us, size_t script, int nkeys, int argc,
                const char *const *argv, const size_t *argvlen, store_cb *cb, void *arg,
                void (*after)(void *, const struct store_reply *), void *after_arg)
{
    uint64_t timeout_us = (uint64_t)st->cfg.timeout_ms * 1000u;
    if (held_us >= timeout_us) {
        COUNTER_INC(st->stats.timeouts);
        return -2;
    }
    timeout_us -= held_us;

    bool plain = script == PLAIN;
    char nkeys_str[20];
    size_t bytes = 0, total_argc = plain ? (size_t)argc : (size_t)argc + 4;
    int key = plain ? 1 : 0;
    /* (A slot means something only to a cluster: a single node takes all.) */
    int slot = st->cluster && nkeys > 0 && argc > key ? (int)cluster_key_slot(argv[key], argvlen[key])
                                                      : -1;
    struct node *n = owner_of(st, slot);

    /* A cluster node that is connecting takes calls (they wait for it). */
    if (!n || !(is_ready(n) || (st->cluster && (n->state == NODE_CONNECTING ||
                                                 n->state == NODE_HANDSHAKE))) ||
        (!plain && script >= st->n_scripts) || argc < 1 ||
        st->outstanding + st->waiting >= st->max_pending) {
        COUNTER_INC(st->stats.unavailable);
        return -1;
    }
    int nk = plain ? 0 : (int)(text_dec(nkeys_str, nkeys > 0 ? (size_t)nkeys : 0) - nkeys_str);
    for (int k = 0; k < argc; k++)
        bytes += argvlen[k];
    bytes += (size_t)nk;

    /* One allocation: the call, its timer, argv[], argvlen[], then the
     * argument bytes (malloc, not calloc: the bytes are written over
     * anyway, and a timer of its own was a malloc and a free a call). */
    size_t at_timer = (sizeof(struct store_call) + 15) & ~(size_t)15;
    size_t head = (at_timer + event_get_struct_event_size() + 15) & ~(size_t)15;
    struct store_call *call = malloc(head + total_argc * (sizeof(char *) + sizeof(size_t)) + bytes);
    if (!call)
        return -1;
    memset(call, 0, sizeof *call);
    call->st = st;
    call->cb = cb;
    call->arg = arg;
    call->script = script;
    call->slot = slot;
    call->argc = (int)total_argc;
    call->argv = (const char **)((char *)call + head);
    call->argvlen = (size_t *)(call->argv + total_argc);
    char *p = (char *)(call->argvlen + total_argc);

    int first = 0;
    if (plain) {
        call->plain = true;
    } else {
        call->argv[0] = "EVALSHA";
        call->argvlen[0] = 7;
        call->argv[1] = st->sha[script];
        call->argvlen[1] = SHA_HEX;
        memcpy(p, nkeys_str, (size_t)nk);
        call->argv[2] = p;
        call->argvlen[2] = (size_t)nk;
        p += nk;
        first = 3;
    }
    for (int k = 0; k < argc; k++) {
        memcpy(p, argv[k], argvlen[k]);
        call->argv[first + k] = p;
        call->argvlen[first + k] = argvlen[k];
        p += argvlen[k];
    }

    /* (libevent's struct event, as big as this libevent makes it, in the
     * call's own block: evtimer_assign is the ABI-safe way to embed it.) */
    struct event *timer = (struct event *)(void *)((char *)call + at_timer);
    if (evtimer_assign(timer, st->base, on_call_timeout, call) != 0) {
        free(call);
        return -1;
    }
    call->timer = timer;
    call->deadline_us = clock_now_us() + timeout_us;
    if (is_ready(n)) {
        if (send_call(n, call) != 0) {
            call_free(call);
            COUNTER_INC(st->stats.unavailable);
            return -1;
        }
    } else {
        park(n, call);
    }
    call->after = after;             /* queued: from here on it runs exactly once */
    call->after_arg = after_arg;
    struct timeval tv = { (time_t)(timeout_us / 1000000u), (suseconds_t)(timeout_us % 1000000u) };
    evtimer_add(call->timer, &tv);
    COUNTER_INC(st->stats.calls);
    return 0;
}

/* ---- readiness ----------------------------------------------------------- */

static bool compute_ready(const struct store *st)
{
    if (!st->cluster)
        return is_ready(st->nodes[0]);
    if (st->slots_owned < CLUSTER_SLOTS)
        return false;
    for (size_t k = 0; k < st->n_nodes; k++)
        if (st->nodes[k]->n_slots && !is_ready(st->nodes[k]))
            return false;
    return true;
}

static void update_ready(struct store *st)
{
    bool ready = compute_ready(st);
    if (st->closing || ready == st->ready)
        return;
    __atomic_store_n(&st->ready, ready, __ATOMIC_RELAXED);
    if (st->cluster)
        log_info(ready ? "redis cluster ready" : "redis cluster degraded", "redis=%s",
                 st->display);
    if (st->state_cb)
        st->state_cb(st->state_arg, ready);
}

/* ---- connection life ---------------------------------------------------- */

/* Answers every call parked on N (it went down before they could go). */
static void fail_parked(struct node *n, const char *why)
{
    while (n->parked) {
        struct store_call *call = n->parked;
        call_unlink(call);
        call_fail(call, STORE_UNAVAILABLE, why);
    }
}

/* Says once (at warn) that the map could not be had, until one comes. */
static void map_failed(struct store *st, const struct node *n, const char *why)
{
    if (!st->map_warned && st->slots_owned == 0)
        log_warn("redis cluster: no slot map yet", "redis=%s reason=%.100s retrying=1",
                 n->name, why);
    else
        log_debug("redis cluster: no slot map", "redis=%s reason=%.100s", n->name, why);
    st->map_warned = true;
    st->refresh_gap_ms = st->refresh_gap_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS
                                                                 : st->refresh_gap_ms * 2;
}

static void mark_down(struct node *n, const char *why)
{
    struct store *st = n->st;
    /* Warn when a working connection breaks; while Redis stays away, each
     * failed attempt is only worth a debug line. */
    bool retiring = n->state == NODE_RETIRING;
    if (retiring)
        log_debug("redis node retired", "redis=%s", n->name);
    else if (n->state == NODE_READY)
        log_warn("redis connection lost", "redis=%s reason=%s", n->name, why);
    else if (!n->down_logged && n->wanted)
        log_warn("redis unavailable", "redis=%s reason=%s retrying=1", n->name, why);
    else
        log_debug("redis connect failed", "redis=%s reason=%s", n->name, why);
    if (!retiring)
        n->down_logged = true;
    n->ac = NULL;
    n->state = NODE_DOWN;
    n->slots_on_connect = false;
    n->ping_sent_us = 0;
    if (st->closing)
        return;
    if (st->refresh_node == n) {        /* the map question went with it */
        map_failed(st, n, why);
        st->refresh_node = NULL;
        st->refresh_sent_us = 0;
        st->refresh_seq++;
        st->refresh_rr = node_index(st, n);   /* next time, the one after */
        st->refresh_wanted = true;
    }
    fail_parked(n, "connection failed");
    if (n->wanted)
        schedule_reconnect(n);
    if (st->cluster && (n->n_slots || st->refresh_wanted))
        request_refresh(st);
    update_ready(st);
}

/* Drops N's connection from outside hiredis's callbacks (timers): hiredis
 * answers every pending call with NULL, which fails it over. */
static void drop_connection(struct node *n, const char *why)
{
    redisAsyncContext *ac = n->ac;
    if (!ac)
        return;
    mark_down(n, why);
    redisAsyncFree(ac);
}

static void node_ready(struct node *n)
{
    struct store *st = n->st;
    n->state = NODE_READY;
    n->silent = false;
    n->down_logged = false;
    n->backoff_ms = BACKOFF_MIN_MS;
    n->last_reply_us = clock_now_us();
    log_info("redis ready", "redis=%s", n->name);
    /* Calls redirected here while it was connecting go now, in order. */
    while (n->parked && is_ready(n)) {
        struct store_call *call = n->parked;
        call_unlink(call);
        if (send_call(n, call) != 0)
            call_fail(call, STORE_UNAVAILABLE, "send failed");
    }
    update_ready(st);
}

/* A TIME answer from N.  Redis read its clock somewhere between our send
 * and this receipt, so Redis time minus our time now is never ahead of the
 * true offset: a deadline built on it is early, never late.  The largest
 * recent sample is the tightest; samples older than CLOCK_KEEP_MS give way,
 * so a clock that stepped back (a failover to another host) is followed. */
static bool note_clock(struct node *n, const redisReply *r)
{
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[0]->type != REDIS_REPLY_STRING || r->element[1]->type != REDIS_REPLY_STRING)
        return false;
    int64_t redis_us = strtoll(r->element[0]->str, NULL, 10) * 1000000 +
                       strtoll(r->element[1]->str, NULL, 10);
    take_clock_sample(n, redis_us);
    n->clock_read_us = clock_now_us();
    return true;
}

/* REDIS_US: Redis's clock, read somewhere before now. */
static bool take_clock_sample(struct node *n, int64_t redis_us)
{
    uint64_t now = clock_now_us();
    int64_t sample = redis_us - (int64_t)now;
    if (!n->clock_known || now - n->clock_sampled_us > CLOCK_KEEP_MS * 1000u ||
        sample > n->clock_offset_us) {
        n->clock_offset_us = sample;
        n->clock_sampled_us = now;
    }
    n->clock_known = true;
    return true;
}

static void on_handshake(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct node *n = ac->data;
    struct store *st = n->st;
    const redisReply *r = reply;
    intptr_t step = (intptr_t)privdata;   /* script index, or -1 AUTH, -2 SELECT, -3 TIME */

    owe(n, -1);
    if (!r || ac != n->ac || st->closing)
        return;
    if (r->type == REDIS_REPLY_ERROR) {
        /* The first error says it; the rest follow.  Of AUTH's error only
         * its code is logged (WRONGPASS, NOAUTH, ERR): a server that does
         * not know the command answers "unknown command 'AUTH', with args
         * beginning with: '<the password>'", and that must not reach a log. */
        if (!n->handshake_failed && step == -1)
            log_error("redis handshake failed", "redis=%s step=auth error=%.*s", n->name,
                      (int)strcspn(r->str, " "), r->str);
        else if (!n->handshake_failed)
            log_error("redis handshake failed", "redis=%s step=%s error=%.200s", n->name,
                      step == -2 ? "select" : "script_load", r->str);
        n->handshake_failed = true;
        redisAsyncDisconnect(ac);
        return;
    }
    if (step == -3) {
        /* The handshake's last answer: the node is ready once its clock is
         * known (every call carries a deadline on it). */
        if (!note_clock(n, r) || n->shas_loaded != st->n_scripts) {
            redisAsyncDisconnect(ac);
            return;
        }
        node_ready(n);
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
    n->shas_loaded++;
}

static void send_handshake(struct node *n, intptr_t step, int argc, const char **argv)
{
    size_t lens[4];
    for (int k = 0; k < argc; k++)
        lens[k] = strlen(argv[k]);
    if (redisAsyncCommandArgv(n->ac, on_handshake, (void *)step, argc, argv, lens) == REDIS_OK)
        owe(n, 1);
}

static void send_cluster_slots(struct node *n);

static void on_connect(const redisAsyncContext *cac, int status)
{
    redisAsyncContext *ac = (redisAsyncContext *)cac;
    struct node *n = ac->data;
    struct store *st = n->st;

    if (ac != n->ac)
        return;
    if (status != REDIS_OK) {
        /* hiredis frees the context after this callback. */
        mark_down(n, ac->errstr[0] ? ac->errstr : "connect failed");
        return;
    }
    log_debug("redis connected", "redis=%s", n->name);
    n->state = NODE_HANDSHAKE;
    n->handshake_failed = false;
    char dbs[16];
    if (st->password) {
        const char *argv[] = { "AUTH", st->user ? st->user : st->password, st->password };
        send_handshake(n, -1, st->user ? 3 : 2, argv);
    }
    if (st->cfg.db != 0) {
        snprintf(dbs, sizeof dbs, "%d", st->cfg.db);
        const char *argv[] = { "SELECT", dbs };
        send_handshake(n, -2, 2, argv);
    }
    n->shas_loaded = 0;
    n->clock_known = false;         /* another server may keep another time */
    for (size_t k = 0; k < st->n_scripts; k++) {
        const char *argv[] = { "SCRIPT", "LOAD", st->scripts[k] };
        send_handshake(n, (intptr_t)k, 3, argv);
    }
    const char *time_argv[] = { "TIME" };
    send_handshake(n, -3, 1, time_argv);
    if (n->slots_on_connect) {
        n->slots_on_connect = false;
        send_cluster_slots(n);
    }
}

static void on_disconnect(const redisAsyncContext *cac, int status)
{
    redisAsyncContext *ac = (redisAsyncContext *)cac;
    struct node *n = ac->data;

    if (ac != n->ac)        /* one we dropped ourselves */
        return;
    mark_down(n, status == REDIS_OK ? "closed" : (ac->errstr[0] ? ac->errstr : "error"));
}

static void connect_now(struct node *n)
{
    struct store *st = n->st;
    redisAsyncContext *ac;

    if (!st->cluster && st->cfg.transport == REDIS_UNIX)
        ac = redisAsyncConnectUnix(st->path);
    else
        ac = redisAsyncConnect(n->host, n->port);
    if (!ac) {
        mark_down(n, "out of memory");
        return;
    }
    if (ac->err) {
        char why[128];
        snprintf(why, sizeof why, "%s", ac->errstr);
        redisAsyncFree(ac);
        mark_down(n, why);
        return;
    }
    ac->data = n;
    n->ac = ac;
    n->state = NODE_CONNECTING;
    n->deadline_us = clock_now_us() + stall_limit_us(st);
    if (redisLibeventAttach(ac, st->base) != REDIS_OK) {
        n->ac = NULL;
        redisAsyncFree(ac);
        mark_down(n, "cannot attach to event loop");
        return;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
}

static void on_reconnect_timer(evutil_socket_t fd, short what, void *arg)
{
    struct node *n = arg;
    (void)fd; (void)what;
    if (!n->ac && n->wanted)
        connect_now(n);
}

static void schedule_reconnect(struct node *n)
{
    struct timeval tv = { n->backoff_ms / 1000, (n->backoff_ms % 1000) * 1000 };
    if (evtimer_pending(n->reconnect_timer, NULL))
        return;
    evtimer_add(n->reconnect_timer, &tv);
    COUNTER_INC(n->st->stats.reconnects);
    n->backoff_ms = n->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : n->backoff_ms * 2;
}

static void on_ping(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct node *n = ac->data;
    (void)privdata;
    owe(n, -1);
    if (reply && ac == n->ac) {
        n->last_reply_us = clock_now_us();
        n->ping_sent_us = 0;
        note_clock(n, reply);
    }
}

/* Whether N's socket holds bytes not read yet (poll, not waiting). */
static bool answers_waiting(const struct node *n)
{
    struct pollfd p = { .fd = n->ac->c.fd, .events = POLLIN };
    return n->ac->c.fd >= 0 && poll(&p, 1, 0) == 1 && (p.revents & POLLIN);
}

/* Enforces the connect deadline, notices a connection that stopped
 * answering, and pings an idle one so a dead peer is found before a
 * request needs it. */
static void check_node(struct node *n, uint64_t now)
{
    struct store *st = n->st;

    if (!n->ac)
        return;
    if (n->state == NODE_RETIRING) {    /* its last answers are overdue: stop waiting */
        if (now - n->last_reply_us > stall_limit_us(st))
            drop_connection(n, "retired node not answering");
        return;
    }
    if (n->state != NODE_READY) {       /* (a silent node is READY, and checked below) */
        if (now > n->deadline_us)
            drop_connection(n, "connect timeout");
        return;
    }
    /* Answers already in the socket are not a silent Redis: a Redis that
     * just woke from a stall has run the calls it held and written their
     * answers, and a busy loop may check here before it reads them.
     * Dropping the connection then would throw away the answers of calls
     * that took effect -- each answered 503 at its deadline, a lie, with
     * no late answer to undo it by. */
    bool no_answer = n->abandoned > 0 && now - n->last_reply_us > stall_limit_us(st);
    bool no_pong = n->ping_sent_us && now - n->ping_sent_us > stall_limit_us(st);
    if ((no_answer || no_pong) && !answers_waiting(n)) {
        /* Nor is it dropped while a call sent on it may still run: Redis
         * reads what a closed connection had sent and runs it, and the
         * answer is lost with the connection -- the call answered 503 at
         * its deadline although it took effect.  Until the last deadline
         * has passed (then every such call is LATE) it takes no calls. */
        if (now <= n->last_deadline_us) {
            if (!n->silent) {
                n->silent = true;
                update_ready(st);
            }
            return;
        }
        drop_connection(n, no_answer ? "not answering" : "ping timeout");
        return;
    }
    if (n->silent) {                    /* it answered after all */
        n->silent = false;
        update_ready(st);
    }
    /* The ping is a TIME: it also keeps the node's clock fresh, which a busy
     * connection needs as much as an idle one needs the ping. */
    if (!n->ping_sent_us && ((n->outstanding == 0 && now - n->last_send_us > IDLE_PING_MS * 1000u) ||
                             now - n->clock_read_us > CLOCK_REFRESH_MS * 1000u)) {
        if (redisAsyncCommand(n->ac, on_ping, NULL, "TIME") == REDIS_OK) {
            owe(n, 1);
            n->ping_sent_us = n->last_send_us = now;
        }
    }
}

/* ---- the cluster's slot map ----------------------------------------------- */

static bool numeric_host(const char *host)
{
    struct in6_addr a6;
    struct in_addr a4;
    return inet_pton(AF_INET, host, &a4) == 1 || inet_pton(AF_INET6, host, &a6) == 1;
}

static struct node *node_new(struct store *st, const char *host, int port)
{
    if (st->n_nodes >= MAX_NODES)
        return NULL;
    struct node *n = calloc(1, sizeof *n);
    if (!n)
        return NULL;
    n->st = st;
    n->port = port;
    n->backoff_ms = BACKOFF_MIN_MS;
    n->host = host ? strdup(host) : NULL;
    n->reconnect_timer = evtimer_new(st->base, on_reconnect_timer, n);
    if ((host && !n->host) || !n->reconnect_timer) {
        if (n->reconnect_timer)
            event_free(n->reconnect_timer);
        free(n->host);
        free(n);
        return NULL;
    }
    if (st->cluster)
        snprintf(n->name, sizeof n->name, strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, port);
    else
        snprintf(n->name, sizeof n->name, "%.*s", (int)sizeof n->name - 1, st->display);
    st->nodes[st->n_nodes++] = n;
    return n;
}

/* The node at HOST:PORT, made when new.  NULL for a host name (resolving
 * it would block the loop) or past MAX_NODES. */
static struct node *node_get(struct store *st, const char *host, int port)
{
    for (size_t k = 0; k < st->n_nodes; k++)
        if (st->nodes[k]->port == port && strcmp(st->nodes[k]->host, host) == 0)
            return st->nodes[k];
    if (!numeric_host(host)) {
        if (!st->warned_name)
            log_warn("redis cluster: not a numeric address; set cluster-preferred-endpoint-type ip",
                     "host=%.64s port=%d", host, port);
        st->warned_name = true;
        return NULL;
    }
    struct node *n = node_new(st, host, port);
    if (!n)
        log_warn("redis cluster: too many nodes", "max=%d", MAX_NODES);
    return n;
}

/* Installs the map of RANGES (from a reply of node FROM). */
static void apply_map(struct store *st, const struct cluster_range *ranges, size_t nr,
                      const struct node *from)
{
    uint8_t *owner = calloc(CLUSTER_SLOTS, 1);
    unsigned owned = 0;
    if (!owner)
        return;
    for (size_t k = 0; k < nr; k++) {
        struct node *n = node_get(st, ranges[k].host[0] ? ranges[k].host : from->host,
                                  ranges[k].port);
        if (!n)
            continue;
        uint8_t idx = node_index(st, n);
        for (unsigned s = ranges[k].start; s <= ranges[k].end; s++) {
            if (!owner[s])
                owned++;
            owner[s] = idx;
        }
    }
    bool changed = memcmp(owner, st->owner, CLUSTER_SLOTS) != 0;
    memcpy(st->owner, owner, CLUSTER_SLOTS);
    free(owner);
    st->slots_owned = owned;
    for (size_t k = 0; k < st->n_nodes; k++)
        st->nodes[k]->n_slots = 0;
    for (unsigned s = 0; s < CLUSTER_SLOTS; s++)
        if (st->owner[s])
            st->nodes[st->owner[s] - 1]->n_slots++;

    unsigned masters = 0;
    for (size_t k = 0; k < st->n_nodes; k++) {
        struct node *n = st->nodes[k];
        masters += n->n_slots > 0;
        n->wanted = n->n_slots > 0 || n->parked != NULL;
        if (n->wanted && !n->ac && !evtimer_pending(n->reconnect_timer, NULL))
            connect_now(n);
    }
    if (changed || (owned < CLUSTER_SLOTS && !st->map_logged_incomplete))
        log_info("redis cluster map", "masters=%u slots=%u from=%s", masters, owned, from->name);
    st->map_logged_incomplete = owned < CLUSTER_SLOTS;
    st->map_warned = false;
    st->refresh_gap_ms = REFRESH_MIN_MS;
    /* Connections to nodes that are no longer masters close once their
     * answers are in (their calls get MOVED and go elsewhere). */
    for (size_t k = 0; k < st->n_nodes; k++) {
        struct node *n = st->nodes[k];
        if (!n->wanted && n->ac && n->state != NODE_RETIRING && n != st->refresh_node) {
            if (is_connected(n)) {
                n->state = NODE_RETIRING;
                n->last_reply_us = clock_now_us();    /* from now, a full stall limit */
                redisAsyncDisconnect(n->ac);
            } else {                        /* still connecting: no answers to wait for */
                redisAsyncContext *ac = n->ac;
                mark_down(n, "not a master");
                redisAsyncFree(ac);
            }
        } else if (!n->wanted && !n->ac) {
            event_del(n->reconnect_timer);
        }
    }
    update_ready(st);
}

static void on_slots(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct node *n = ac->data;
    struct store *st = n->st;
    const redisReply *r = reply;

    owe(n, -1);
    if (st->closing || (uintptr_t)privdata != st->refresh_seq || st->refresh_node != n)
        return;                 /* stale: given up on earlier */
    st->refresh_node = NULL;
    st->refresh_sent_us = 0;
    if (r)
        n->last_reply_us = clock_now_us();
    int nr = r ? cluster_parse_slots(r, NULL, 0) : -1;
    struct cluster_range *ranges = nr > 0 ? calloc((size_t)nr, sizeof *ranges) : NULL;
    if (nr <= 0 || !ranges) {
        map_failed(st, n, !r ? "connection lost" : r->type == REDIS_REPLY_ERROR ? r->str :
                          nr == 0 ? "no slots assigned" : "not a CLUSTER SLOTS reply");
        free(ranges);
        st->refresh_rr = node_index(st, n);   /* ask the next one next time */
        st->refresh_wanted = true;
        request_refresh(st);
        return;
    }
    cluster_parse_slots(r, ranges, (size_t)nr);
    apply_map(st, ranges, (size_t)nr, n);
    free(ranges);
    if (st->refresh_wanted)
        request_refresh(st);
}

static void send_cluster_slots(struct node *n)
{
    struct store *st = n->st;
    if (redisAsyncCommand(n->ac, on_slots, (void *)st->refresh_seq, "CLUSTER SLOTS") == REDIS_OK) {
        owe(n, 1);
        n->last_send_us = clock_now_us();
    } else {
        st->refresh_node = NULL;
        st->refresh_sent_us = 0;
        st->refresh_wanted = true;
    }
}

/* Asks one node for the map: a ready one if any, else one whose connection
 * is up, else the next known address in turn (seeds included). */
static void start_refresh(struct store *st)
{
    struct node *pick = NULL;
    size_t n = st->n_nodes;

    st->refresh_wanted = false;
    st->last_refresh_us = clock_now_us();
    st->refresh_seq++;
    /* Pass 0: a ready node; 1: a connected one; 2: one connecting; 3: an
     * address without a connection (a probe). */
    for (int pass = 0; pass < 4 && !pick; pass++)
        for (size_t i = 0; i < n && !pick; i++) {
            struct node *c = st->nodes[(st->refresh_rr + i) % n];
            if (c->state == NODE_RETIRING)
                continue;
            if ((pass == 0 && is_ready(c)) || (pass == 1 && is_connected(c)) ||
                (pass == 2 && c->ac) || (pass == 3 && !c->ac))
                pick = c;
        }
    if (!pick) {
        st->refresh_wanted = true;
        return;
    }
    st->refresh_node = pick;
    st->refresh_sent_us = clock_now_us();
    if (is_connected(pick)) {
        send_cluster_slots(pick);
        return;
    }
    pick->slots_on_connect = true;
    if (pick->ac)
        return;
    /* A probe: connected for the question (and kept if it is a master). */
    connect_now(pick);
}

static void on_refresh_timer(evutil_socket_t fd, short what, void *arg)
{
    struct store *st = arg;
    (void)fd; (void)what;
    if (st->refresh_wanted && !st->refresh_node)
        start_refresh(st);
}

/* At most one CLUSTER SLOTS every REFRESH_MIN_MS (more while none
 * answers), one at a time. */
static void request_refresh(struct store *st)
{
    if (!st->cluster || st->closing)
        return;
    st->refresh_wanted = true;
    if (st->refresh_node || evtimer_pending(st->refresh_timer, NULL))
        return;
    uint64_t now = clock_now_us(), due = st->last_refresh_us + st->refresh_gap_ms * 1000u;
    uint64_t wait = due > now ? due - now : 0;
    struct timeval tv = { (time_t)(wait / 1000000u), (suseconds_t)(wait % 1000000u) };
    evtimer_add(st->refresh_timer, &tv);
}

static void on_health_timer(evutil_socket_t fd, short what, void *arg)
{
    struct store *st = arg;
    uint64_t now = clock_now_us();
    (void)fd; (void)what;

    for (size_t k = 0; k < st->n_nodes; k++)
        check_node(st->nodes[k], now);
    if (!st->cluster)
        return;
    if (st->refresh_node && now - st->refresh_sent_us > stall_limit_us(st)) {
        st->refresh_node->slots_on_connect = false;
        st->refresh_rr = node_index(st, st->refresh_node);
        st->refresh_node = NULL;            /* its answer, if any, is stale now */
        st->refresh_sent_us = 0;
    }
    /* A degraded map (a master down, slots without owner) is asked for
     * again every tick until it heals: that is how a failover is seen. */
    if (!st->ready || st->refresh_wanted)
        request_refresh(st);
}

/* ---- creation ----------------------------------------------------------- */

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

/* Host names are resolved once, here, before the loop runs: hiredis would
 * call getaddrinfo() on every reconnect, blocking the loop. */
static char *resolve_host(const char *key, const char *host, char *err, size_t errlen)
{
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM }, *res;
    char buf[INET6_ADDRSTRLEN];

    if (numeric_host(host))
        return strdup(host);
    int rc = getaddrinfo(host, NULL, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "%s: cannot resolve %s: %s", key, host, gai_strerror(rc));
        return NULL;
    }
    if (res->ai_family == AF_INET)
        inet_ntop(AF_INET, &((struct sockaddr_in *)res->ai_addr)->sin_addr, buf, sizeof buf);
    else
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)res->ai_addr)->sin6_addr, buf, sizeof buf);
    freeaddrinfo(res);
    return strdup(buf);
}

static int add_seed(struct store *st, const char *key, const char *host, int port,
                    char *err, size_t errlen)
{
    char *addr = NULL;
    if (host && !(addr = resolve_host(key, host, err, errlen)))
        return -1;
    for (size_t k = 0; addr && k < st->n_nodes; k++)
        if (st->nodes[k]->port == port && strcmp(st->nodes[k]->host, addr) == 0) {
            free(addr);                 /* two names for one address */
            return 0;
        }
    struct node *n = node_new(st, addr, port);
    free(addr);
    if (!n) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
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
    st->cluster = cfg->n_cluster > 0;
    st->max_pending = max_pending ? max_pending : 1;
    st->refresh_gap_ms = REFRESH_MIN_MS;
    st->scripts = scripts;
    st->n_scripts = n_scripts;
    snprintf(st->display, sizeof st->display, "%s", cfg->url ? cfg->url : "?");
    st->sha = calloc(n_scripts ? n_scripts : 1, sizeof *st->sha);
    st->nodes = calloc(st->cluster ? MAX_NODES : 1, sizeof *st->nodes);
    st->owner = st->cluster ? calloc(CLUSTER_SLOTS, 1) : NULL;
    st->path = dup_or_null(cfg->path);
    st->user = dup_or_null(cfg->user);
    st->password = dup_or_null(cfg->password);
    st->health_timer = event_new(base, -1, EV_PERSIST, on_health_timer, st);
    st->refresh_timer = evtimer_new(base, on_refresh_timer, st);
    st->flush = event_new(base, -1, 0, on_flush, st);
    if (!st->sha || !st->nodes || (st->cluster && !st->owner) || !st->health_timer ||
        !st->refresh_timer || !st->flush) {
        snprintf(err, errlen, "out of memory");
        store_free(st);
        return NULL;
    }
    int rc = 0;
    if (st->cluster) {
        for (size_t k = 0; rc == 0 && k < cfg->n_cluster; k++)
            rc = add_seed(st, "redis.cluster", cfg->cluster[k].host, cfg->cluster[k].port,
                          err, errlen);
    } else {
        rc = add_seed(st, "redis.url", cfg->transport == REDIS_TCP ? cfg->host : NULL,
                      cfg->port, err, errlen);
    }
    if (rc != 0) {
        store_free(st);
        return NULL;
    }
    struct timeval tick = { 0, HEALTH_TICK_MS * 1000 };
    evtimer_add(st->health_timer, &tick);
    if (st->cluster) {
        st->refresh_wanted = true;
        start_refresh(st);              /* connects the first seed */
    } else {
        st->nodes[0]->wanted = true;
        connect_now(st->nodes[0]);
    }
    return st;
}

void store_free(struct store *st)
{
    if (!st)
        return;
    st->closing = true;
    __atomic_store_n(&st->ready, false, __ATOMIC_RELAXED);
    for (size_t k = 0; k < st->n_nodes; k++) {
        struct node *n = st->nodes[k];
        if (n->ac) {
            redisAsyncContext *ac = n->ac;
            n->ac = NULL;
            n->state = NODE_DOWN;
            redisAsyncFree(ac);       /* answers every pending call UNAVAILABLE */
        }
        fail_parked(n, "closing");
    }
    while (st->delayed) {
        struct store_call *call = st->delayed;
        call_unlink(call);
        call_fail(call, STORE_UNAVAILABLE, "closing");
    }
    while (st->lost) {
        struct store_call *call = st->lost;
        call_unlink(call);
        call_fail(call, STORE_UNAVAILABLE, "closing");
    }
    for (size_t k = 0; k < st->n_nodes; k++) {
        event_free(st->nodes[k]->reconnect_timer);
        free(st->nodes[k]->host);
        free(st->nodes[k]);
    }
    free(st->nodes);
    free(st->owner);
    if (st->health_timer)
        event_free(st->health_timer);
    if (st->flush)
        event_free(st->flush);
    if (st->refresh_timer)
        event_free(st->refresh_timer);
    free(st->sha);
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

bool store_is_cluster(const struct store *st)
{
    return st->cluster;
}

bool store_ready(const struct store *st)
{
    return __atomic_load_n(&st->ready, __ATOMIC_RELAXED);
}

void store_count_refused(struct store *st)
{
    COUNTER_INC(st->stats.unavailable);
}

void store_get_stats(const struct store *st, struct store_stats *out)
{
    /* May run on another worker's thread: every field is loaded atomically. */
    out->connected = __atomic_load_n(&st->ready, __ATOMIC_RELAXED);
    out->pending = COUNTER_GET(st->outstanding) + COUNTER_GET(st->waiting);
    out->calls = COUNTER_GET(st->stats.calls);
    out->timeouts = COUNTER_GET(st->stats.timeouts);
    out->late_replies = COUNTER_GET(st->stats.late_replies);
    out->errors = COUNTER_GET(st->stats.errors);
    out->unavailable = COUNTER_GET(st->stats.unavailable);
    out->reconnects = COUNTER_GET(st->stats.reconnects);
    out->last_rtt_ms = counter_get_double(&st->stats.last_rtt_ms);
    histogram_read(&st->stats.rtt, &out->rtt);
}

/* decide_batch: the decisions of one loop turn as one Redis call.  See
 * decide_batch.h; the batch form of the script is at the end of decide.lua. */
#include "capgate/decide_batch.h"

#include <event2/event.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capgate/clock.h"
#include "capgate/log.h"

/* A plain decide (no proxy mode): 4 keys, then 6 arguments. */
#define KEYS_PER 4
#define ARGS_PER 6
#define PER (KEYS_PER + ARGS_PER)

/* Room for the usual decisions' arguments (about 200 bytes each); a larger
 * one gets its own allocation. */
#define ARENA_BYTES (DECIDE_BATCH_MAX * 256)
#define SPARES 4                   /* batches kept for reuse */

/* Calls a worker keeps in flight; the decisions read meanwhile wait for one
 * of them to be answered and then go out together.  Under load that makes
 * batches of about ten instead of five, and throughput 12% higher (make
 * bench: fewer, larger calls, for Redis and for both ends of the loopback);
 * under light load nothing is in flight and nothing waits.  Two, not one:
 * a decision never waits behind a single slow call. */
#define MAX_IN_FLIGHT 2

struct pending {
    store_cb *cb;
    void *arg;
    char *bytes;                   /* its keys and arguments, back to back */
    bool own;                      /* BYTES was allocated (not in the arena) */
    size_t len[PER];
    char undo[DECIDE_BATCH_UNDO_MAX];   /* "": nothing to undo */
};

struct batch {
    struct decide_batch *owner;
    struct batch *next;
    uint64_t opened_us;            /* when its first decision was taken */
    size_t n, used;
    struct pending p[DECIDE_BATCH_MAX];
    char arena[ARENA_BYTES];
};

struct decide_batch {
    struct event *flush;           /* made active by the first decision of a turn */
    struct store *const *store;
    struct batch *head, *tail;     /* waiting to go out; the tail takes new ones */
    struct batch *spare;           /* answered batches, for reuse (at most SPARES) */
    unsigned n_spare;
    unsigned waiting;              /* decisions taken and not yet answered */
    unsigned in_flight;            /* calls sent and not yet answered */
    bool redis_late;               /* the last call answered was a timeout */
    decide_batch_late_cb *on_late;
    void *hook_arg;
};

static struct batch *batch_get(struct decide_batch *b)
{
    struct batch *bt = b->spare;
    if (bt) {
        b->spare = bt->next;
        b->n_spare--;
    } else if (!(bt = malloc(sizeof *bt))) {
        return NULL;
    }
    bt->owner = b;
    bt->next = NULL;
    bt->opened_us = clock_now_us();
    bt->n = bt->used = 0;
    return bt;
}

static void batch_free(struct batch *bt)
{
    struct decide_batch *b = bt->owner;
    for (size_t k = 0; k < bt->n; k++)
        if (bt->p[k].own)
            free(bt->p[k].bytes);
    if (b->n_spare < SPARES) {
        bt->next = b->spare;
        b->spare = bt;
        b->n_spare++;
    } else {
        free(bt);
    }
}

static void answer(struct batch *bt, size_t k, const struct store_reply *r)
{
    bt->owner->waiting--;
    bt->p[k].cb(bt->p[k].arg, r);
}

/* Every decision of BT gets R (they share the call's fate). */
static void batch_answer_all(struct batch *bt, const struct store_reply *r)
{
    for (size_t k = 0; k < bt->n; k++)
        answer(bt, k, r);
}

/* BT never went out (or never will): answered, and gone. */
static void batch_fail(struct batch *bt, enum store_status status, const char *error)
{
    struct store_reply r = { .status = status, .error = error };
    batch_answer_all(bt, &r);
    batch_free(bt);
}

/* The store is done with BT's call (see store_eval_after): its decisions
 * were answered before, and BT can go -- but when Redis ran the call after
 * it was answered as timed out (LATE), the decisions it recorded are handed
 * to the owner's hook first, so that the 503 stays true. */
static void on_call_done(void *arg, const struct store_reply *late)
{
    struct batch *bt = arg;
    struct decide_batch *b = bt->owner;
    size_t pos = 0;
    for (size_t k = 0; late && b->on_late && k < bt->n; k++) {
        struct store_reply one = *late;
        size_t e = 1;
        if (bt->n > 1 && !(e = store_reply_element(late, pos, &one)))
            break;
        pos += e;
        if (bt->p[k].undo[0])
            b->on_late(b->hook_arg, bt->p[k].undo, &one);
    }
    batch_free(bt);
}

/* A call of B's was answered: the batches that waited for it can go. */
static void call_done(struct decide_batch *b, enum store_status status)
{
    b->in_flight--;
    b->redis_late = status == STORE_TIMEOUT;
    if (b->head)
        event_active(b->flush, EV_TIMEOUT, 0);
}

/* The batch's reply: one element per decision, in order, each the answer a
 * single call would have had, or an error for that decision alone. */
static void on_batch_reply(void *arg, const struct store_reply *r)
{
    struct batch *bt = arg;
    call_done(bt->owner, r->status);
    if (r->status != STORE_OK) {
        batch_answer_all(bt, r);   /* (freed by on_call_done) */
        return;
    }
    size_t pos = 0;
    for (size_t k = 0; k < bt->n; k++) {
        struct store_reply one;
        size_t e = store_reply_element(r, pos, &one);
        if (e && r->items[pos].type == STORE_ERR)
            log_error_limited("redis script error", "error=%.200s", r->items[pos].s);
        if (!e)
            one.error = "bad batch reply";
        answer(bt, k, &one);
        pos += e ? e : 1;
    }
}

/* A batch of one went out as a plain call: its reply is the decision's. */
static void on_single_reply(void *arg, const struct store_reply *r)
{
    struct batch *bt = arg;
    call_done(bt->owner, r->status);
    batch_answer_all(bt, r);
}

/* Points ARGV/LEN at the keys (K = 0) or arguments (K = 1) of P. */
static int put_part(const struct pending *p, int part, const char **argv, size_t *len)
{
    const char *s = p->bytes;
    int first = part ? KEYS_PER : 0, last = part ? PER : KEYS_PER;
    for (int k = 0; k < first; k++)
        s += p->len[k];
    for (int k = first; k < last; k++) {
        argv[k - first] = s;
        len[k - first] = p->len[k];
        s += p->len[k];
    }
    return last - first;
}

/* Calls the store for BT; fails BT when it cannot.  When the call BT waited
 * for timed out, Redis is what kept it waiting: its call gets only what is
 * left of redis.timeout_ms since its first decision came in, so a stalled
 * Redis still answers every decision within timeout_ms.  When Redis
 * answered, the wait was capgate's own (a busy or stalled loop) and the
 * call gets the whole timeout, as a call sent at once would. */
static void batch_call(struct decide_batch *b, struct batch *bt, struct store *st, int nkeys,
                       int argc, const char **argv, const size_t *len, store_cb *cb)
{
    uint64_t now = clock_now_us();
    uint64_t held = b->redis_late && now > bt->opened_us ? now - bt->opened_us : 0;
    int rc = store_eval_held(st, held, SCRIPT_DECIDE, nkeys, argc, argv, len, cb, bt,
                             on_call_done, bt);
    if (rc == 0)
        b->in_flight++;
    else if (rc == -2)
        batch_fail(bt, STORE_TIMEOUT, "timeout");
    else
        batch_fail(bt, STORE_UNAVAILABLE, "not connected");
}

static void batch_send(struct decide_batch *b, struct batch *bt)
{
    struct store *st = *b->store;
    const char *argv[1 + DECIDE_BATCH_MAX * PER];
    size_t len[1 + DECIDE_BATCH_MAX * PER];
    int argc = 0;

    if (bt->n == 0) {              /* its first decision ran out of memory */
        batch_free(bt);
        return;
    }
    if (!st) {                     /* the worker is ending */
        batch_fail(bt, STORE_UNAVAILABLE, "not connected");
        return;
    }
    if (bt->n == 1) {              /* a plain call: as if there were no batching */
        struct pending *p = &bt->p[0];
        argc = put_part(p, 0, argv, len);
        argc += put_part(p, 1, argv + argc, len + argc);
        batch_call(b, bt, st, KEYS_PER, argc, argv, len, on_single_reply);
        return;
    }
    /* Every decision's keys, then '*' and every decision's arguments. */
    for (size_t k = 0; k < bt->n; k++)
        argc += put_part(&bt->p[k], 0, argv + argc, len + argc);
    argv[argc] = "*";
    len[argc++] = 1;
    for (size_t k = 0; k < bt->n; k++)
        argc += put_part(&bt->p[k], 1, argv + argc, len + argc);
    batch_call(b, bt, st, (int)(KEYS_PER * bt->n), argc, argv, len, on_batch_reply);
}

/* The end of the loop turn (libevent runs an event made active during the
 * turn after those already active, so every request the turn read is in),
 * or a call was answered: sends what waits, as far as MAX_IN_FLIGHT allows. */
static void on_flush(evutil_socket_t fd, short what, void *arg)
{
    struct decide_batch *b = arg;
    (void)fd; (void)what;
    while (b->head && b->in_flight < MAX_IN_FLIGHT) {
        struct batch *bt = b->head;
        b->head = bt->next;
        if (!b->head)
            b->tail = NULL;
        batch_send(b, bt);
    }
}

struct decide_batch *decide_batch_new(struct event_base *base, struct store *const *store,
                                      decide_batch_late_cb *on_late, void *hook_arg)
{
    struct decide_batch *b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    b->store = store;
    b->on_late = on_late;
    b->hook_arg = hook_arg;
    b->flush = event_new(base, -1, 0, on_flush, b);
    if (!b->flush) {
        free(b);
        return NULL;
    }
    return b;
}

void decide_batch_free(struct decide_batch *b)
{
    if (!b)
        return;
    struct batch *bt = b->head;
    b->head = b->tail = NULL;
    while (bt) {
        struct batch *next = bt->next;
        batch_fail(bt, STORE_UNAVAILABLE, "shutting down");
        bt = next;
    }
    while (b->spare) {
        struct batch *next = b->spare->next;
        free(b->spare);
        b->spare = next;
    }
    event_free(b->flush);
    free(b);
}

/* A Redis Cluster's call of one decision, and what undoes it. */
struct alone {
    struct decide_batch *owner;
    char undo[DECIDE_BATCH_UNDO_MAX];
};

static void on_alone_done(void *arg, const struct store_reply *late)
{
    struct alone *a = arg;
    if (late && a->owner->on_late)
        a->owner->on_late(a->owner->hook_arg, a->undo, late);
    free(a);
}

static int call_alone(struct decide_batch *b, struct store *st, const struct script_args *a,
                      const char *undo, store_cb *cb, void *arg)
{
    if (!undo || !b->on_late)
        return store_eval(st, a->script, a->nkeys, a->argc, a->argv, a->argvlen, cb, arg);
    struct alone *al = malloc(sizeof *al);
    if (!al)
        return -1;
    al->owner = b;
    snprintf(al->undo, sizeof al->undo, "%s", undo);
    if (store_eval_after(st, a->script, a->nkeys, a->argc, a->argv, a->argvlen, cb, arg,
                         on_alone_done, al) != 0) {
        free(al);
        return -1;
    }
    return 0;
}

int decide_batch_add(struct decide_batch *b, const struct script_args *a,
                     unsigned max_pending, const char *undo, store_cb *cb, void *arg)
{
    struct store *st = *b->store;
    if (!st)
        return -1;
    if (!store_ready(st) || b->waiting >= max_pending) {
        store_count_refused(st);   /* as store_eval counts its own refusals */
        return -1;
    }
    if (store_is_cluster(st) || a->nkeys != KEYS_PER || a->argc != PER)
        return call_alone(b, st, a, undo, cb, arg);

    struct batch *bt = b->tail;
    if (!bt || bt->n == DECIDE_BATCH_MAX) {
        bt = batch_get(b);
        if (!bt)
            return -1;
        if (b->tail)
            b->tail->next = bt;
        else
            b->head = bt;
        b->tail = bt;
        if (b->in_flight < MAX_IN_FLIGHT)
            event_active(b->flush, EV_TIMEOUT, 0);
    }
    size_t total = 0;
    for (int k = 0; k < PER; k++)
        total += a->argvlen[k];
    struct pending *p = &bt->p[bt->n];
    p->own = total > ARENA_BYTES - bt->used;
    p->bytes = p->own ? malloc(total) : bt->arena + bt->used;
    if (!p->bytes)
        return -1;
    if (!p->own)
        bt->used += total;
    char *s = p->bytes;
    for (int k = 0; k < PER; k++) {
        memcpy(s, a->argv[k], a->argvlen[k]);
        s += a->argvlen[k];
        p->len[k] = a->argvlen[k];
    }
    p->cb = cb;
    p->arg = arg;
    size_t ul = undo ? strnlen(undo, sizeof p->undo - 1) : 0;
    memcpy(p->undo, undo ? undo : "", ul);
    p->undo[ul] = '\0';
    bt->n++;
    b->waiting++;
    return 0;
}

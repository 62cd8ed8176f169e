/*
 * store: the Redis connection of one event loop (hiredis async + libevent).
 *
 * It connects, authenticates, selects the database and loads the scripts
 * it was given; it reconnects by itself with backoff; and it runs scripts
 * with EVALSHA (EVAL once after NOSCRIPT, e.g. after a Redis restart or
 * SCRIPT FLUSH).  hiredis 0.14 has no timeouts, so the store keeps its own:
 * every call is answered within redis.timeout_ms, and a reply that comes
 * later is dropped here, never seen by the caller.
 *
 * Ownership: store_eval() copies its arguments.  The reply handed to the
 * callback, and everything it points to, is valid only during the callback.
 * The callback of an accepted call runs exactly once, always later (never
 * from inside store_eval), also when the store is freed (STORE_UNAVAILABLE).
 */
#ifndef CAPGATE_STORE_H
#define CAPGATE_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "capgate/config.h"
#include "capgate/histogram.h"

struct event_base;
struct store;

enum store_status {
    STORE_OK,           /* the script answered: items hold its reply */
    STORE_ERROR,        /* Redis answered with an error (message in .error) */
    STORE_UNAVAILABLE,  /* no connection, or it broke before the answer */
    STORE_TIMEOUT,      /* no answer within timeout_ms */
};

/* One element of a (flat) reply.  Nested arrays are flattened depth-first
 * with a marker item (is_array, n = element count) before their elements. */
struct store_item {
    enum { STORE_INT, STORE_STR, STORE_NIL, STORE_ARRAY, STORE_ERR } type;
    long long i;        /* STORE_INT; element count for STORE_ARRAY */
    const char *s;      /* STORE_STR (not NUL-terminated: use len); STORE_ERR: an
                           error inside the reply, NUL-terminated */
    size_t len;
};

struct store_reply {
    enum store_status status;
    const char *error;              /* STORE_ERROR / others: a short text */
    size_t n;
    const struct store_item *items; /* a top-level array is unwrapped */
};

typedef void store_cb(void *arg, const struct store_reply *reply);

/* Element POS of an array reply R (a script that answers for several
 * callers) as a reply of its own in ONE: an error element is STORE_ERROR
 * (.error), an array is unwrapped as the store unwraps a top-level one.
 * Returns how many items it spans, 0 when R is cut short there. */
size_t store_reply_element(const struct store_reply *r, size_t pos, struct store_reply *one);

struct store_stats {
    bool connected;          /* connected, authenticated and scripts loaded */
    unsigned pending;        /* calls waiting on Redis (timed-out ones too) */
    uint64_t calls, timeouts, errors, unavailable, reconnects;
    uint64_t late_replies;   /* timed out, yet Redis ran them (handed to AFTER) */
    double last_rtt_ms;      /* of the latest answer */
    struct histogram rtt;    /* every answered script call */
};

/* Creates the store and starts connecting (a host name is resolved here,
 * once, at start-up: never on the loop).  SCRIPTS are Lua sources, kept by
 * pointer: they must outlive the store. */
struct store *store_create(struct event_base *base, const struct cfg_redis *cfg,
                           unsigned max_pending, const char *const *scripts,
                           size_t n_scripts, char *err, size_t errlen);
void store_free(struct store *st);

/* Runs scripts[script] with NKEYS keys followed by arguments: ARGV[0..argc).
 * Returns 0 when the call was queued (CB will run), -1 when it was refused
 * at once because Redis is unavailable or too many calls wait (CB will not
 * run). */
int store_eval(struct store *st, size_t script, int nkeys, int argc,
               const char *const *argv, const size_t *argvlen,
               store_cb *cb, void *arg);
/* As store_eval, and AFTER(AFTER_ARG, late) runs exactly once when the call
 * is done (if it was queued): LATE is NULL, or -- when the caller was told
 * the call failed (a timeout) and Redis ran it all the same (its reply came
 * late: Redis stalled after running it) -- the reply, so that the caller
 * can undo what a 503 said did not happen. */
int store_eval_after(struct store *st, size_t script, int nkeys, int argc,
                     const char *const *argv, const size_t *argvlen, store_cb *cb, void *arg,
                     void (*after)(void *after_arg, const struct store_reply *late),
                     void *after_arg);
/* As store_eval, for a caller that held the arguments back HELD_US before
 * calling (decide_batch): the call gets what is left of redis.timeout_ms, so
 * the caller's own promise (an answer within timeout_ms) holds.  AFTER as
 * for store_eval_after (may be NULL).  Returns -2,
 * counting a timeout, when nothing is left (CB will not run). */
int store_eval_held(struct store *st, uint64_t held_us, size_t script, int nkeys, int argc,
                    const char *const *argv, const size_t *argvlen,
                    store_cb *cb, void *arg,
                    void (*after)(void *after_arg, const struct store_reply *late),
                    void *after_arg);

/* Runs one Redis command, not a script: ARGV[0..argc) is the whole command,
 * its key (routing it in a cluster) at ARGV[1].  It carries no deadline, so
 * Redis runs it even after a timeout was answered: only for what is
 * harmless to do late (an acknowledgement's DEL).  Returns as store_eval. */
int store_command(struct store *st, int argc, const char *const *argv, const size_t *argvlen,
                  store_cb *cb, void *arg);

bool store_ready(const struct store *st);
/* Whether it talks to a Redis Cluster (a call's keys must share one slot). */
bool store_is_cluster(const struct store *st);

/* CB(ARG, ready) runs whenever the store becomes ready or stops being so
 * (from inside the loop; not from store_create). */
void store_on_state(struct store *st, void (*cb)(void *arg, bool ready), void *arg);
void store_get_stats(const struct store *st, struct store_stats *out);
/* A caller that refused a call itself, having seen !store_ready() or its
 * own bound (decide_batch), counts it here: stats.unavailable is then every
 * call refused for want of Redis, whoever said no. */
void store_count_refused(struct store *st);

#endif

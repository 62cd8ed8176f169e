/*
 * decide: the one owner of a decision.  Every road that decides -- POST
 * /v1/decide, POST /v1/send, a transparent route, the dispatcher deciding a
 * queued message again -- hands its fields here and gets a decision back.
 * Here and only here: the quiet-hours zone, the script's arguments
 * (decision.c), batching (decide_batch.c), failing open or closed, reading
 * the answer, the decision metrics (outcomes, shadow caps, replays, dry
 * runs) and the audit.file line (the script writes the Redis audit stream
 * in the same atomic step as the decision).
 *
 * The caller owns the struct decide_op (usually inside its own request
 * state) and leaves it alone until the callback, which runs exactly once:
 * later, or at once from inside decide_start() when Redis is known to be
 * unavailable.  The callback may free the op; decide touches it no more.
 */
#ifndef CAPGATE_DECIDE_H
#define CAPGATE_DECIDE_H

#include <stdbool.h>

#include "capgate/decision.h"
#include "capgate/pseudonym.h"

struct loop;

#define DECIDE_CAMPAIGN_MAX 256      /* REQ_CAMPAIGN_MAX */

/* Who asks: the audit.file line says so, and only a caller that waits
 * (not the dispatcher) is ever answered "allow" when failing open. */
enum decide_road { DECIDE_API, DECIDE_SEND, DECIDE_ROUTE, DECIDE_QUEUE };

struct decide_request {
    char user[PSEUDONYM_USER_HEX + 1];       /* pseudonym */
    char message[PSEUDONYM_SHORT_HEX + 1];   /* pseudonym of message_id */
    const struct cfg_channel *channel;       /* of the loop's current config */
    const struct cfg_category *category;
    const char *campaign;                    /* NULL: none */
    const char *tz;                          /* a zone of the loop's, or NULL: the default */
    bool dry_run;
    const struct enqueue *enqueue;           /* proxy mode: what to queue (copied) */
    enum decide_road road;
};

enum decide_status {
    DECIDE_OK,            /* decided: DECISION */
    DECIDE_FAILED_OPEN,   /* Redis unavailable and on_unavailable: allow: DECISION is an
                             allow with reason store_unavailable; nothing was recorded */
    DECIDE_UNAVAILABLE,   /* Redis unavailable (WHY), failing closed: nothing happened */
};

struct decide_result {
    enum decide_status status;
    struct decision decision;
    const char *why;                /* not DECIDE_OK: "timeout", "not connected", ... */
    const struct config *cfg;       /* the config it was decided with (during the callback) */
    const char *first_answer;       /* a replay's kept upstream answer, sealed (during the */
    size_t first_answer_len;        /* callback), when the request asked for it; else NULL */
};

typedef void decide_cb(void *arg, const struct decide_result *r);

/* Private to decide.c: the state of one decision in flight. */
struct decide_op {
    struct loop *loop;
    const struct config *cfg;
    decide_cb *cb;
    void *arg;
    enum decide_road road;
    bool dry_run;
    bool queues;                      /* a message goes in the queue with it */
    char user[PSEUDONYM_USER_HEX + 1];
    char message[PSEUDONYM_SHORT_HEX + 1];
    char channel[CONFIG_NAME_MAX + 1], category[CONFIG_NAME_MAX + 1];
    char campaign[DECIDE_CAMPAIGN_MAX + 1];   /* "" none */
};

void decide_start(struct decide_op *op, struct loop *l, const struct decide_request *rq,
                  decide_cb *cb, void *arg);

/* N decisions asked together (a route's recipients): as few script calls as
 * carry them -- on one Redis, DECIDE_GROUP_MAX to a call; on a Cluster, one
 * per hash tag (a call's keys share a slot) -- each decided as if alone.
 * OPS[k] is answered through CB with ARGS[k], exactly once each. */
#define DECIDE_GROUP_MAX 32
void decide_start_group(struct loop *l, size_t n, struct decide_op *const *ops,
                        const struct decide_request *rqs, decide_cb *cb, void *const *args);

/* The loop's decide_batch hook (decide_batch_new's ON_LATE, LOOP its
 * struct loop): a batched decision answered 503 that Redis ran all the same
 * is undone -- its send released -- so that the 503 stays true. */
struct store_reply;
void decide_undo_late(void *loop, const char *undo, const struct store_reply *one);

#endif

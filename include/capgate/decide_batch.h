/*
 * decide_batch: the decisions one worker reads in one loop turn, sent to
 * Redis as one call of decide.lua (its batch form).
 *
 * Every call costs Redis a fixed price before the script does anything: the
 * command, the script's set-up, its clock and its reply.  A batch pays it
 * once for all its decisions, which still run one after another, each as if
 * alone, in the order they arrived.  A batch closes at the end of the loop
 * turn (or at DECIDE_BATCH_MAX decisions) and goes out at once, unless the
 * worker already has two calls in flight: then it waits for one of them to
 * be answered, growing meanwhile.  Under light load nothing waits and every
 * batch holds one decision, a plain call.  When Redis stalls, a decision
 * is still answered within redis.timeout_ms of being taken: a batch that
 * waited for a call that timed out gets what is left of the timeout.
 * A Redis Cluster always gets one call per decision: the keys of different
 * people sit in different slots.
 */
#ifndef CAPGATE_DECIDE_BATCH_H
#define CAPGATE_DECIDE_BATCH_H

#include "capgate/decision.h"
#include "capgate/store.h"

struct event_base;
struct decide_batch;

#define DECIDE_BATCH_MAX 16

/* A decision answered 503 (its call timed out) that Redis ran all the same
 * -- it ran in time, then Redis or the network stalled before the answer
 * came -- is handed back: ON_LATE(HOOK_ARG, UNDO, ONE) with the UNDO text
 * it was added with and its own late reply, so that its owner can undo what
 * the 503 said did not happen.  (Its store_cb ran long before.) */
typedef void decide_batch_late_cb(void *hook_arg, const char *undo,
                                  const struct store_reply *one);
#define DECIDE_BATCH_UNDO_MAX 64   /* UNDO's room, its NUL included */

/* STORE points at the worker's current connection (a reload replaces it);
 * it is read when a batch goes out.  ON_LATE may be NULL. */
struct decide_batch *decide_batch_new(struct event_base *base, struct store *const *store,
                                      decide_batch_late_cb *on_late, void *hook_arg);
/* Answers what never went out (STORE_UNAVAILABLE), then frees.  Free the
 * stores first: a batch in flight is answered by its store. */
void decide_batch_free(struct decide_batch *b);

/* Queues the decide call ARGS (decision_decide_args; copied) and UNDO
 * (copied; NULL: nothing to undo, as for a dry run).  As
 * store_eval: 0 when taken (CB runs exactly once, later, with this
 * decision's own reply), -1 when refused at once (CB will not run): Redis
 * is not ready, or MAX_PENDING decisions already wait (a batch is one call
 * to the store, so the store's own bound would not count them). */
int decide_batch_add(struct decide_batch *b, const struct script_args *args,
                     unsigned max_pending, const char *undo, store_cb *cb, void *arg);

#endif

/*
 * dispatcher: delivers deferred messages when they are due.
 *
 * The queue is one sorted set per hash tag (256), so no key is hot and a
 * Redis Cluster spreads it.  Each loop serves the tags t with
 * t % loops == its id; every gateway serves all tags, and the lease taken
 * by claim.lua keeps two gateways from delivering one message at once.  A
 * due message is decided again (consent or caps may have changed): allowed
 * -> forwarded (2xx: acknowledged; else released and retried with
 * exponential backoff, dead-lettered after delivery.max_attempts); deferred
 * -> already re-queued by the decision; denied -> dropped, and counted.
 */
#ifndef CAPGATE_DISPATCHER_H
#define CAPGATE_DISPATCHER_H

struct loop;
struct dispatcher;

struct dispatcher *dispatcher_new(struct loop *l);
/* Stop claiming (shutdown); deliveries in flight go on. */
void dispatcher_quiesce(struct dispatcher *d);
unsigned dispatcher_active(const struct dispatcher *d);
/* Deliveries still in flight are abandoned: their leases run out and
 * another gateway (or this one, restarted) delivers them. */
void dispatcher_free(struct dispatcher *d);

#endif

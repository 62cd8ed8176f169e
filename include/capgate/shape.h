/*
 * shape: the provider's side of a forward.  Caps protect each person; this
 * protects the campaign API and the sender's reputation, for every gateway
 * together (the state is in Redis, src/lua/shape.lua, on the upstream's own
 * slot):
 *   - a send rate (channels.X.upstream.rate): GCRA, so that no second sees
 *     more than per_second + burst forwards; a forward the rate holds gets
 *     the next free slot of a schedule kept beside it, so a backlog comes
 *     back spread at the rate;
 *   - per-campaign throttles (throttles[]): the same, per campaign, counted
 *     per upstream (the keys share the upstream's slot: one call);
 *   - a warm-up (upstream.warmup): day N's ceiling of forwards, the days in
 *     quiet_hours.default_tz; past it, what waits goes the next day;
 *   - pushback (upstream.pushback): an answer of 429 or 503 pauses the
 *     upstream for its Retry-After (or a doubling backoff), at most
 *     max_pause; when the pause ends one forward goes alone (the probe),
 *     and the rest wait for its answer.
 * A forward costs one more script call when the channel shapes (not a
 * decide: the person's decision stays one round trip).
 */
#ifndef CAPGATE_SHAPE_H
#define CAPGATE_SHAPE_H

#include <stdbool.h>
#include <stdint.h>

#include "capgate/config.h"

struct store;
struct tz_db;
struct upstream_response;

/* Whether forwards to CH go through shape_take (a rate, a throttle, a
 * warm-up or pushback). */
bool shape_wanted(const struct config *cfg, const struct cfg_channel *ch);
/* Whether CH shapes for pushback alone (no rate, warm-up or throttle): its
 * forwards need Redis only to learn of a pause, which a loop may remember
 * for a moment (delivery.c). */
bool shape_pushback_only(const struct config *cfg, const struct cfg_channel *ch);

enum shape_why { SHAPE_RATE, SHAPE_THROTTLE, SHAPE_WARMUP, SHAPE_PAUSED, SHAPE_UNAVAILABLE };
/* The reason an answer names: "rate_limited", "campaign_throttled",
 * "warmup_limit", "upstream_paused", "store_unavailable". */
const char *shape_reason(enum shape_why why);
/* Its delivery outcome in /metrics: "held_rate", "held_throttle", ... */
const char *shape_held_outcome(enum shape_why why);

struct shape_answer {
    bool go;                /* forward it now */
    bool probe;             /* go, as the one probe after a pause: shape_answered says how it went */
    int64_t wait_ms;        /* held: its slot, from now */
    bool reserved;          /* held: the slot is its own (else only "not before") */
    enum shape_why why;     /* held: what holds it (UNAVAILABLE: Redis did not answer) */
};

typedef void shape_cb(void *arg, const struct shape_answer *a);

/* Asks whether a forward to CH (of CAMPAIGN, NULL: none) may go now; TZ
 * holds the warm-up's zone.  FROM_QUEUE: the dispatcher's
 * (it waited for its slot); else a fresh send, which goes only when no
 * backlog of its PRIORITY (0..9) or higher waits, and a held one's slot
 * comes after those only: a receipt overtakes a newsletter backlog, whose
 * overtaken messages take new slots at its end when they come due.
 * RESERVE: when held, take the slot (the message will be
 * queued for it); else only say when (over_rate: reject).  A slot further
 * than max_defer is never reserved.  CB runs exactly once, later -- or at
 * once, from inside, when the store refuses the call. */
void shape_take(struct store *st, const struct config *cfg, const struct tz_db *tz,
                const struct cfg_channel *ch, const char *campaign, int priority, bool from_queue,
                bool reserve, shape_cb *cb, void *arg);

/* The warm-up's argument for now (NOW_MS, the wall clock): "<day>|<ceiling>|<ms
 * until the next day>", or "-" when CH has no warm-up or it is over.  Exposed
 * for the tests. */
void shape_warmup_arg(const struct config *cfg, const struct tz_db *tz,
                      const struct cfg_channel *ch, int64_t now_ms, char out[64]);

/* The upstream answered R to a forward shape_take let go (PROBE as it
 * said).  A pushback pauses CH for every gateway and returns the pause in
 * ms (> 0), as asked by Retry-After or the first backoff; a probe's other
 * answer ends the pause.  Fire and forget.  0: no pushback. */
int64_t shape_answered(struct store *st, const struct config *cfg, const struct cfg_channel *ch,
                       bool probe, const struct upstream_response *r);

/* An upstream's state as every gateway sees it (/status, /metrics). */
enum shape_state_kind { SHAPE_OPEN, SHAPE_IS_PAUSED, SHAPE_PROBING, SHAPE_UNKNOWN };
struct shape_state {
    enum shape_state_kind state;      /* UNKNOWN: Redis did not answer */
    int64_t paused_until_ms;          /* unix ms; 0: not paused */
    bool probe_out;
    int pushbacks;                    /* in a row */
    double rate_use;                  /* 0..1 of the burst allowance (with a rate) */
    double backlog_s;                 /* how far the schedule runs ahead */
    int64_t queued;                   /* slots reserved ahead (with a rate): its queue */
    bool warming_up;                  /* with a warm-up, before its last day */
    int64_t warmup_day;
    int warmup_ceiling, warmup_sent;  /* today's */
};
typedef void shape_state_cb(void *arg, const struct shape_state *s);
/* Reads CH's state (one script call); CB runs exactly once, maybe from inside. */
void shape_state(struct store *st, const struct config *cfg, const struct tz_db *tz,
                 const struct cfg_channel *ch, shape_state_cb *cb, void *arg);
const char *shape_state_name(enum shape_state_kind k);

/* Retry-After's value: delta-seconds or an HTTP-date (RFC 9110 10.2.3), as
 * ms from NOW_S; -1 when absent or unreadable. */
int64_t shape_retry_after_ms(const char *value, int64_t now_s);

#endif

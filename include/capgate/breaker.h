/*
 * breaker: the campaign circuit breaker.  Gmail and Yahoo throttle or block
 * a sender whose complaint rate passes 0.3 %; a campaign that draws
 * complaints or unsubscribes is paused before it costs the domain.
 *
 * Per campaign, Redis (src/lua/breaker.lua, slot {b}) keeps its sends
 * (those the upstream accepted; for /v1/decide, the allowed decisions) and the complaint / unsubscribe events that name it over a
 * rolling breaker.window.  Each loop counts what it saw and hands it to
 * Redis every 250 ms (one call per campaign); the call that crosses a
 * threshold (at least min_sends, then complaint_rate or unsubscribe_rate)
 * marks the campaign paused -- or, in shadow mode, would_pause -- and this
 * gateway writes it to the audit trail.  Every loop reads the paused set
 * every 500 ms, so a pause holds on every gateway within a second: the
 * campaign's decisions answer deny campaign_paused and its queued
 * messages wait.  POST /v1/admin/campaigns/resume lifts a pause (its
 * counts start again).
 *
 * One per loop, on the loop's thread.
 */
#ifndef CAPGATE_BREAKER_H
#define CAPGATE_BREAKER_H

#include <stdbool.h>

struct loop;
struct breaker;

enum breaker_kind { BREAKER_SEND, BREAKER_COMPLAINT, BREAKER_UNSUBSCRIBE };

struct breaker *breaker_new(struct loop *l);
/* Counts still held go unsent; calls in flight free it when they end. */
void breaker_free(struct breaker *b);

/* One allowed send, complaint or unsubscribe of CAMPAIGN (NULL or "":
 * nothing).  Nothing happens unless the config has a breaker. */
void breaker_count(struct breaker *b, const char *campaign, enum breaker_kind kind);

/* Whether CAMPAIGN is paused (mode enforce), as last read from Redis. */
bool breaker_paused(const struct breaker *b, const char *campaign);

/* Forget CAMPAIGN's pause at once, on every loop of this process (it was
 * resumed through this one). */
void breaker_forget(struct breaker *b, const char *campaign);

#endif

/* breaker: the campaign circuit breaker, per loop.  See breaker.h. */
#include "capgate/breaker.h"

#include <event2/event.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capgate/clock.h"
#include "capgate/config.h"
#include "capgate/decision.h"
#include "capgate/log.h"
#include "capgate/loop.h"
#include "capgate/requests.h"
#include "capgate/store.h"

#define FLUSH_MS 250
#define POLL_MS 500
#define HELD_MAX 64           /* campaigns counted between two flushes (more: flushed early) */
#define PAUSED_MAX 256        /* paused campaigns known here (more: the rest are not enforced) */

struct held_count {
    char campaign[REQ_CAMPAIGN_MAX + 1];
    unsigned n[3];
};

struct breaker {
    struct loop *loop;
    struct event *flush, *poll;
    struct held_count held[HELD_MAX];
    size_t n_held;
    char (*paused)[REQ_CAMPAIGN_MAX + 1];   /* PAUSED_MAX, sorted: bsearch */
    size_t n_paused;
    uint64_t poll_sent_us;    /* when the last poll left (monotonic) */
    uint64_t paused_as_of_us; /* PAUSED is Redis's set as of then, at the latest */
    unsigned calls;           /* store calls in flight */
    bool freeing;
};

/* A resume through one loop holds on every loop of this process at once
 * (openapi: "this one at once"), not at each one's next poll: each loop's
 * list is checked against the campaigns resumed here since it was read.
 * A few suffice; an older resume waits for the poll, as another gateway's
 * does.  Locked only on the way of a campaign that is paused. */
#define RESUMED_MAX 8
static pthread_mutex_t resumed_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
    char campaign[REQ_CAMPAIGN_MAX + 1];
    uint64_t at_us;
} resumed[RESUMED_MAX];
static unsigned resumed_next;

static bool resumed_since(const char *campaign, uint64_t since_us)
{
    bool yes = false;
    pthread_mutex_lock(&resumed_lock);
    for (size_t k = 0; k < RESUMED_MAX && !yes; k++)
        yes = resumed[k].at_us > since_us && strcmp(resumed[k].campaign, campaign) == 0;
    pthread_mutex_unlock(&resumed_lock);
    return yes;
}

static void maybe_free(struct breaker *b)
{
    if (b->freeing && b->calls == 0) {
        free(b->paused);
        free(b);
    }
}

static const struct cfg_breaker *conf(const struct breaker *b)
{
    const struct cfg_breaker *c = &b->loop->cfg->breaker;
    return c->enabled ? c : NULL;
}

struct count_call {
    struct breaker *b;
    char campaign[REQ_CAMPAIGN_MAX + 1];
};

static void on_counted(void *arg, const struct store_reply *r)
{
    struct count_call *c = arg;
    struct breaker *b = c->b;
    b->calls--;
    if (!b->freeing && r->status == STORE_OK && r->n >= 5 && r->items[0].type == STORE_INT &&
        r->items[0].i == 1) {
        const struct cfg_breaker *cb = conf(b);
        bool shadow = cb && cb->mode == CAP_SHADOW;
        char why[64];
        snprintf(why, sizeof why, "%.*s", r->items[4].type == STORE_STR ? (int)r->items[4].len : 0,
                 r->items[4].s ? r->items[4].s : "");
        log_warn(shadow ? "campaign would be paused" : "campaign paused",
                 "campaign=%s why=%s sends=%lld complaints=%lld unsubscribes=%lld", c->campaign,
                 why, r->items[1].i, r->items[2].i, r->items[3].i);
        loop_audit(b->loop, json_pack("{s:s, s:s, s:s, s:s, s:I, s:I, s:I}", "type", "breaker",
                                      "event", shadow ? "would_pause" : "pause",
                                      "campaign", c->campaign, "why", why,
                                      "sends", (json_int_t)r->items[1].i,
                                      "complaints", (json_int_t)r->items[2].i,
                                      "unsubscribes", (json_int_t)r->items[3].i));
    } else if (r->status == STORE_ERROR) {
        log_error_limited("redis script error", "script=breaker error=%s", r->error);
    }
    free(c);
    maybe_free(b);
}

static void flush_now(struct breaker *b)
{
    const struct cfg_breaker *cb = conf(b);
    struct store *st = b->loop->store;
    for (size_t k = 0; k < b->n_held; k++) {
        struct held_count *h = &b->held[k];
        struct count_call *c = cb && st ? malloc(sizeof *c) : NULL;
        if (!c)
            continue;             /* counts are statistics: a lost one is not a lost message */
        c->b = b;
        snprintf(c->campaign, sizeof c->campaign, "%s", h->campaign);
        char n[3][16], window[24], min[16], cr[32], ur[32];
        for (int i = 0; i < 3; i++)
            snprintf(n[i], sizeof n[i], "%u", h->n[i]);
        snprintf(window, sizeof window, "%lld", (long long)cb->window_ms);
        snprintf(min, sizeof min, "%d", cb->min_sends);
        snprintf(cr, sizeof cr, "%.9f", cb->complaint_rate);
        snprintf(ur, sizeof ur, "%.9f", cb->unsubscribe_rate);
        const char *argv[] = { "count", h->campaign, n[0], n[1], n[2], window, min, cr, ur,
                               cb->mode == CAP_SHADOW ? "shadow" : "enforce" };
        struct script_args a;
        decision_breaker_args(h->campaign, sizeof argv / sizeof argv[0], argv, &a);
        b->calls++;
        if (store_eval(st, a.script, a.nkeys, a.argc, a.argv, a.argvlen, on_counted, c) != 0) {
            b->calls--;
            free(c);
        }
    }
    b->n_held = 0;
}

static int by_name(const void *x, const void *y)
{
    return strcmp(x, y);
}

static void on_polled(void *arg, const struct store_reply *r)
{
    struct breaker *b = arg;
    b->calls--;
    if (!b->freeing && r->status == STORE_OK) {
        size_t n = 0;
        for (size_t k = 0; k + 1 < r->n && n < PAUSED_MAX; k += 2) {
            const struct store_item *name = &r->items[k], *state = &r->items[k + 1];
            if (name->type != STORE_STR || state->type != STORE_STR || name->len > REQ_CAMPAIGN_MAX ||
                state->len < 7 || memcmp(state->s, "paused|", 7) != 0)
                continue;
            memcpy(b->paused[n], name->s, name->len);
            b->paused[n][name->len] = '\0';
            n++;
        }
        qsort(b->paused, n, sizeof b->paused[0], by_name);
        b->n_paused = n;
        b->paused_as_of_us = b->poll_sent_us;
    }
    maybe_free(b);
}

static void on_flush(evutil_socket_t fd, short what, void *arg)
{
    (void)fd; (void)what;
    flush_now(arg);
}

static void on_poll(evutil_socket_t fd, short what, void *arg)
{
    struct breaker *b = arg;
    (void)fd; (void)what;
    struct store *st = b->loop->store;
    if (!conf(b)) {
        b->n_paused = 0;          /* a reload took the breaker away */
        return;
    }
    if (!st || !store_ready(st))
        return;                   /* what was paused stays paused meanwhile */
    const char *argv[] = { "poll" };
    struct script_args a;
    decision_breaker_args("", 1, argv, &a);
    b->poll_sent_us = clock_now_us();
    b->calls++;
    if (store_eval(st, a.script, a.nkeys, a.argc, a.argv, a.argvlen, on_polled, b) != 0)
        b->calls--;
}

static struct event *every(struct breaker *b, int ms, event_callback_fn fn)
{
    struct event *ev = event_new(b->loop->base, -1, EV_PERSIST, fn, b);
    struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
    if (ev && event_add(ev, &tv) != 0) {
        event_free(ev);
        return NULL;
    }
    return ev;
}

struct breaker *breaker_new(struct loop *l)
{
    struct breaker *b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    b->loop = l;
    b->paused = calloc(PAUSED_MAX, sizeof b->paused[0]);
    b->flush = every(b, FLUSH_MS, on_flush);
    b->poll = every(b, POLL_MS, on_poll);
    if (!b->paused || !b->flush || !b->poll) {
        b->freeing = true;
        if (b->flush)
            event_free(b->flush);
        if (b->poll)
            event_free(b->poll);
        maybe_free(b);
        return NULL;
    }
    return b;
}

void breaker_free(struct breaker *b)
{
    if (!b)
        return;
    event_free(b->flush);
    event_free(b->poll);
    b->freeing = true;
    maybe_free(b);
}

void breaker_count(struct breaker *b, const char *campaign, enum breaker_kind kind)
{
    if (!b || !campaign || !*campaign || !conf(b) || strlen(campaign) > REQ_CAMPAIGN_MAX)
        return;
    for (size_t k = 0; k < b->n_held; k++)
        if (strcmp(b->held[k].campaign, campaign) == 0) {
            b->held[k].n[kind]++;
            return;
        }
    if (b->n_held == HELD_MAX)
        flush_now(b);
    struct held_count *h = &b->held[b->n_held++];
    snprintf(h->campaign, sizeof h->campaign, "%s", campaign);
    memset(h->n, 0, sizeof h->n);
    h->n[kind] = 1;
}

bool breaker_paused(const struct breaker *b, const char *campaign)
{
    if (!b || !campaign || !*campaign || b->n_paused == 0 || !conf(b))
        return false;
    return bsearch(campaign, b->paused, b->n_paused, sizeof b->paused[0], by_name) != NULL &&
           !resumed_since(campaign, b->paused_as_of_us);
}

void breaker_forget(struct breaker *b, const char *campaign)
{
    if (!b)
        return;
    pthread_mutex_lock(&resumed_lock);
    snprintf(resumed[resumed_next].campaign, sizeof resumed[0].campaign, "%s", campaign);
    resumed[resumed_next].at_us = clock_now_us();
    resumed_next = (resumed_next + 1) % RESUMED_MAX;
    pthread_mutex_unlock(&resumed_lock);
    for (size_t k = 0; k < b->n_paused; k++)
        if (strcmp(b->paused[k], campaign) == 0) {
            memmove(b->paused[k], b->paused[k + 1], (b->n_paused - k - 1) * sizeof b->paused[0]);
            b->n_paused--;
            return;
        }
}

/* dispatcher: the deferred queue, served.  See dispatcher.h. */
#include "capgate/dispatcher.h"

#include <event2/event.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "capgate/breaker.h"
#include "capgate/clock.h"
#include "capgate/config.h"
#include "capgate/counter.h"
#include "capgate/decide.h"
#include "capgate/decision.h"
#include "capgate/delivery.h"
#include "capgate/log.h"
#include "capgate/loop.h"
#include "capgate/store.h"
#include "capgate/tz.h"
#include "capgate/upstream.h"

#define TICK_MS 100
#define TAGS_PER_TICK 16
#define BATCH 32
/* A queued message of a paused campaign is looked at again this often. */
#define CAMPAIGN_PAUSED_RECHECK_MS 10000

/* A queue is claimed from when something in it is due, not polled: the
 * claim says when its next message is due, this loop's decisions say when
 * what they queued is (loop->queued), and a failed delivery's retry is
 * known here.  What no one here knows -- a message another gateway queued
 * and then died -- is found by looking at every queue at least every
 * delivery.sweep.  So an idle gateway makes 256 calls a sweep, and a
 * message is claimed within a tick of its time. */
struct dispatcher {
    struct loop *loop;
    struct event *tick;
    unsigned next_tag;
    bool busy[DECISION_TAGS];    /* a claim or its deliveries are in flight */
    unsigned pending[DECISION_TAGS];
    unsigned active;             /* messages being delivered */
    unsigned claims;             /* claim calls waiting on Redis */
    bool quiesced;
    bool freeing;
};

struct job {
    struct decide_op op;
    struct dispatcher *d;
    unsigned tag;
    const struct config *cfg;
    struct message m;
    char *blob;
    char member[50];
    int priority;
    long attempts;
    struct decision decision;
};

/* Tag TAG has something due in DUE_MS: claim then (or sooner, if known). */
static void due_in(struct dispatcher *d, unsigned tag, uint64_t due_ms)
{
    loop_due_by(d->loop, tag, clock_now_us() + due_ms * 1000u);
}

static void tag_done(struct dispatcher *d, unsigned tag)
{
    if (d->pending[tag] > 0 && --d->pending[tag] == 0)
        d->busy[tag] = false;
}

/* dispatcher_free() leaves the struct to the last callback still owed. */
static void maybe_free(struct dispatcher *d)
{
    if (d->freeing && d->active == 0 && d->claims == 0)
        free(d);
}

static void job_free(struct job *j)
{
    struct dispatcher *d = j->d;
    d->active--;
    tag_done(d, j->tag);
    config_release(j->cfg);
    delivery_clear(&j->m);
    free(j->blob);
    free(j);
    maybe_free(d);
}

static void on_finished(void *arg, const struct store_reply *r)
{
    (void)arg; (void)r;   /* if it failed, the lease runs out and it comes again */
}

static void finish(struct job *j, enum finish_action action, int64_t retry_in_ms,
                   const char *dead)
{
    struct script_args a;
    decision_finish_args(j->cfg, j->member, action, retry_in_ms, dead, &a);
    if (action == FINISH_RETRY)
        due_in(j->d, j->tag, retry_in_ms > 0 ? (uint64_t)retry_in_ms : 0);
    store_eval(j->d->loop->store, a.script, a.nkeys, a.argc, a.argv, a.argvlen, on_finished, NULL);
}

static void on_released(void *arg, const struct store_reply *r)
{
    (void)arg; (void)r;
}

static void on_requeued(void *arg, const struct store_reply *r)
{
    (void)arg; (void)r;   /* if it failed, the lease runs out and it comes again */
}

/* The upstream's rate or its pause held it: back in the queue for the
 * slot it got, its attempts untouched, and its send released (it is
 * decided again then). */
static void hold(struct job *j, const struct forward_result *f)
{
    struct loop *l = j->d->loop;
    metrics_count_delivery(&l->metrics, j->m.channel,
                           f->r ? "pushed_back" : shape_held_outcome(f->why));
    due_in(j->d, j->tag, (uint64_t)f->held_ms);
    delivery_requeue(l->store, j->cfg, j->m.user, j->m.message, f->held_ms, on_requeued, NULL);
    job_free(j);
}

static void on_forwarded(void *arg, const struct forward_result *f)
{
    struct job *j = arg;
    struct loop *l = j->d->loop;
    const struct cfg_delivery *dl = &j->cfg->delivery;
    const struct upstream_response *r = f->r;

    if (j->d->freeing) {
        job_free(j);
        return;
    }
    if (f->held_ms > 0) {
        hold(j, f);
        return;
    }
    bool ok = r->status == UPSTREAM_OK && r->http_status >= 200 && r->http_status < 300;
    if (ok) {
        /* The window for a second delivery: between the 2xx and this ack.
         * If the gateway dies here, the lease runs out and the message goes
         * again with the same Idempotency-Key. */
        finish(j, FINISH_ACK, 0, NULL);
        metrics_count_delivery(&l->metrics, j->m.channel, "delivered");
        breaker_count(l->breaker, j->m.campaign, BREAKER_SEND);
        job_free(j);
        return;
    }
    /* Not delivered: the send must not count, and it is tried again. */
    struct script_args a;
    decision_release_args(j->cfg, j->m.user, j->m.message, &a);
    store_eval(l->store, a.script, a.nkeys, a.argc, a.argv, a.argvlen, on_released, NULL);
    long attempt = j->attempts + 1;
    if (attempt >= dl->max_attempts) {
        char summary[600];
        json_t *s = json_pack("{s:s, s:s, s:i, s:s, s:I}", "id", j->member, "channel",
                              j->m.channel, "attempts", (int)attempt, "error",
                              r->status == UPSTREAM_OK ? "upstream status" : (r->error ? r->error : "failed"),
                              "at", (json_int_t)time(NULL));
        if (r->status == UPSTREAM_OK)
            json_object_set_new(s, "upstream_status", json_integer(r->http_status));
        char *text = json_dumps(s, JSON_COMPACT);
        snprintf(summary, sizeof summary, "%s", text ? text : "{}");
        free(text);
        json_decref(s);
        finish(j, FINISH_DEAD, 0, summary);
        metrics_count_delivery(&l->metrics, j->m.channel, "dead");
        log_warn("message dead-lettered", "channel=%s attempts=%ld", j->m.channel, attempt);
    } else {
        int64_t delay = dl->backoff_ms;
        for (long k = 1; k < attempt && delay < dl->max_backoff_ms; k++)
            delay *= 2;
        if (delay > dl->max_backoff_ms)
            delay = dl->max_backoff_ms;
        finish(j, FINISH_RETRY, delay, NULL);
        metrics_count_delivery(&l->metrics, j->m.channel, "retried");
    }
    job_free(j);
}

static void on_redecided(void *arg, const struct decide_result *r)
{
    struct job *j = arg;
    struct loop *l = j->d->loop;
    const struct decision *dec = &r->decision;

    if (j->d->freeing || r->status != DECIDE_OK) {
        job_free(j);      /* the lease runs out; it is taken again later */
        return;
    }
    j->decision = *dec;
    switch (dec->outcome) {
    case OUTCOME_ALLOW:
        /* Also on a replay: then this gateway (or one that died) allowed it
         * before without the ack -- it may not have gone out: at least once. */
        delivery_send(l->upstreams, l->store, j->cfg, l->tz, &j->m, FORWARD_FROM_QUEUE | FORWARD_RESERVE,
                      on_forwarded, j);
        return;
    case OUTCOME_DEFER:
        /* Re-queued by the decision itself, at its new time. */
        metrics_count_delivery(&l->metrics, j->m.channel, "deferred");
        break;
    default:
        if (dec->reason == REASON_CAMPAIGN_PAUSED) {
            /* Its campaign is paused (breaker.h): it waits, to be decided
             * again after a resume. */
            metrics_count_delivery(&l->metrics, j->m.channel, "held_campaign_paused");
            due_in(j->d, j->tag, CAMPAIGN_PAUSED_RECHECK_MS);
            delivery_requeue(l->store, j->cfg, j->m.user, j->m.message, CAMPAIGN_PAUSED_RECHECK_MS,
                             on_requeued, NULL);
            break;
        }
        /* Opted out, or a deny cap, meanwhile: it does not go. */
        finish(j, FINISH_DROP, 0, NULL);
        metrics_count_delivery(&l->metrics, j->m.channel, "dropped");
        break;
    }
    job_free(j);
}

static void start_job(struct dispatcher *d, unsigned tag, const char *member, size_t mlen,
                      const char *blob, size_t blen, int priority, long attempts)
{
    struct loop *l = d->loop;
    struct job *j = calloc(1, sizeof *j);
    if (!j)
        return;
    j->d = d;
    j->tag = tag;
    j->cfg = config_retain(l->cfg);
    j->priority = priority;
    j->attempts = attempts;
    snprintf(j->member, sizeof j->member, "%.*s", (int)mlen, member);
    if ((j->blob = malloc(blen + 1)))       /* binary: a version 3 blob holds NULs */
        memcpy(j->blob, blob, blen);
    d->active++;
    d->pending[tag]++;
    const struct cfg_channel *ch = NULL;
    const struct cfg_category *cat = NULL;
    if (!j->blob || delivery_parse(blob, blen, &j->m, l->pseudonym) != 0 ||
        !(ch = config_channel(j->cfg, j->m.channel)) ||
        !(cat = config_category(j->cfg, j->m.category))) {
        /* Unreadable, or its channel is gone from the config: dead-letter it. */
        log_warn("undeliverable deferred message", "id=%s", j->member);
        finish(j, FINISH_DEAD, 0, "{\"error\":\"unreadable or unknown channel\"}");
        job_free(j);
        return;
    }
    j->m.priority = priority;
    struct enqueue q = { .blob = j->blob, .blob_len = blen, .priority = priority,
                         .from_queue = true };
    struct decide_request rq = { .channel = ch, .category = cat, .campaign = j->m.campaign,
                                 .tz = j->m.tz && tz_db_find(l->tz, j->m.tz) ? j->m.tz : NULL,
                                 .enqueue = &q, .road = DECIDE_QUEUE };
    snprintf(rq.user, sizeof rq.user, "%s", j->m.user);
    snprintf(rq.message, sizeof rq.message, "%s", j->m.message);
    decide_start(&j->op, l, &rq, on_redecided, j);
}

struct claim_call {
    struct dispatcher *d;
    unsigned tag;
};

struct claimed {
    const struct store_item *member, *blob;
    int priority;
    long attempts;
};

static int by_priority(const void *a, const void *b)
{
    const struct claimed *x = a, *y = b;
    return y->priority - x->priority;
}

static void on_claimed(void *arg, const struct store_reply *r)
{
    struct claim_call *c = arg;
    struct dispatcher *d = c->d;
    unsigned tag = c->tag;
    free(c);
    d->claims--;
    if (d->freeing) {
        maybe_free(d);      /* the messages' leases run out; they come again */
        return;
    }
    uint64_t now = clock_now_us();
    if (r->status != STORE_OK || r->n < 4) {
        loop_due_by(d->loop, tag, now + 1000000u);          /* again in a second */
        tag_done(d, tag);
        return;
    }
    COUNTER_SET(d->loop->metrics.deferred_depth[tag], (uint64_t)r->items[0].i);
    COUNTER_SET(d->loop->metrics.dead_letters[tag], (uint64_t)r->items[1].i);
    long long n = r->items[2].i, next_ms = r->items[3].i;
    /* Next: when its first message is due (a full batch: at once, more may
     * be), and at the latest a sweep from now. */
    uint64_t sweep = (uint64_t)d->loop->cfg->delivery.sweep_ms * 1000u;
    uint64_t next = n >= BATCH ? 0 : next_ms >= 0 ? (uint64_t)next_ms * 1000u : sweep;
    /* (The entry was "never" while the claim was out: a loop_queued() since
     * may have asked for sooner, and is kept.) */
    loop_due_by(d->loop, tag, now + (next < sweep ? next : sweep));
    struct claimed list[BATCH];
    size_t got = 0;
    for (long long k = 0; k < n && got < BATCH && 4 + 4 * (size_t)k + 3 < r->n; k++) {
        const struct store_item *it = &r->items[4 + 4 * k];
        if (it[0].type != STORE_STR || it[1].type != STORE_STR)
            continue;
        list[got++] = (struct claimed){ &it[0], &it[1], (int)it[2].i, (long)it[3].i };
    }
    /* Highest priority first: the decisions reach Redis in this order on one
     * connection, so when several of a person's messages are due, the most
     * important one takes the free slot and the rest wait. */
    qsort(list, got, sizeof list[0], by_priority);
    for (size_t k = 0; k < got; k++)
        start_job(d, tag, list[k].member->s, list[k].member->len, list[k].blob->s,
                  list[k].blob->len, list[k].priority, list[k].attempts);
    tag_done(d, tag);
}

static bool proxy_configured(const struct config *cfg)
{
    for (size_t k = 0; k < cfg->n_channels; k++)
        if (cfg->channels[k].upstream.enabled)
            return true;
    return false;
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    struct dispatcher *d = arg;
    struct loop *l = d->loop;
    (void)fd; (void)what;

    if (d->quiesced || !proxy_configured(l->cfg) || !l->store || !store_ready(l->store))
        return;
    unsigned loops = l->n_loops ? l->n_loops : 1;
    uint64_t now = clock_now_us();
    unsigned asked = 0;
    for (unsigned k = 0; k < DECISION_TAGS && asked < TAGS_PER_TICK; k++) {
        unsigned tag = d->next_tag;
        d->next_tag = (d->next_tag + 1) % DECISION_TAGS;
        if (tag % loops != l->id || d->busy[tag] || atomic_load(&l->queue_due_us[tag]) > now)
            continue;
        asked++;
        struct claim_call *c = malloc(sizeof *c);
        if (!c)
            return;
        c->d = d;
        c->tag = tag;
        struct script_args a;
        decision_claim_args(l->cfg, tag, BATCH, &a);
        d->busy[tag] = true;
        d->pending[tag] = 1;     /* the claim itself */
        atomic_store(&l->queue_due_us[tag], UINT64_MAX);
        d->claims++;
        if (store_eval(l->store, a.script, a.nkeys, a.argc, a.argv, a.argvlen, on_claimed, c) != 0) {
            free(c);
            d->claims--;
            d->busy[tag] = false;
            d->pending[tag] = 0;
            loop_due_by(l, tag, now + 1000000u);
        }
    }
}

struct dispatcher *dispatcher_new(struct loop *l)
{
    struct dispatcher *d = calloc(1, sizeof *d);
    if (!d)
        return NULL;
    d->loop = l;
    d->next_tag = l->id;

    d->tick = event_new(l->base, -1, EV_PERSIST, on_tick, d);
    struct timeval tv = { 0, TICK_MS * 1000 };
    if (!d->tick || event_add(d->tick, &tv) != 0) {
        if (d->tick)
            event_free(d->tick);
        free(d);
        return NULL;
    }
    return d;
}

void dispatcher_quiesce(struct dispatcher *d)
{
    if (d)
        d->quiesced = true;
}

unsigned dispatcher_active(const struct dispatcher *d)
{
    return d ? d->active : 0;
}

void dispatcher_free(struct dispatcher *d)
{
    if (!d)
        return;
    /* Callbacks still owed (store, upstream) see FREEING and only free their
     * job; they run when the store and the upstream pool are freed, which
     * the worker does right after this.  The last of them frees the dispatcher (maybe_free). */
    d->freeing = true;
    d->quiesced = true;
    event_free(d->tick);
    d->tick = NULL;
    maybe_free(d);
}

/* dispatcher: the deferred queue, served.  See dispatcher.h. */
#include "capgate/dispatcher.h"

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "capgate/config.h"
#include "capgate/counter.h"
#include "capgate/decision.h"
#include "capgate/delivery.h"
#include "capgate/log.h"
#include "capgate/store.h"
#include "capgate/tz.h"
#include "capgate/upstream.h"
#include "capgate/worker.h"

#define TICK_MS 100
#define TAGS_PER_TICK 16
#define BATCH 32

struct dispatcher {
    struct worker *w;
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
    store_eval(j->d->w->store, a.script, a.nkeys, a.argc, a.argv, a.argvlen, on_finished, NULL);
}

static void on_released(void *arg, const struct store_reply *r)
{
    (void)arg; (void)r;
}

static void on_forwarded(void *arg, const struct upstream_response *r)
{
    struct job *j = arg;
    struct worker *w = j->d->w;
    const struct cfg_delivery *dl = &j->cfg->delivery;
    bool ok = r->status == UPSTREAM_OK && r->http_status >= 200 && r->http_status < 300;

    if (j->d->freeing) {
        job_free(j);
        return;
    }
    if (ok) {
        /* The window for a second delivery: between the 2xx and this ack.
         * If the gateway dies here, the lease runs out and the message goes
         * again with the same Idempotency-Key. */
        finish(j, FINISH_ACK, 0, NULL);
        metrics_count_delivery(&w->metrics, j->m.channel, "delivered");
        job_free(j);
        return;
    }
    /* Not delivered: the send must not count, and it is tried again. */
    struct script_args a;
    decision_release_args(j->cfg, j->m.user, j->m.message, &a);
    store_eval(w->store, a.script, a.nkeys, a.argc, a.argv, a.argvlen, on_released, NULL);
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
        metrics_count_delivery(&w->metrics, j->m.channel, "dead");
        log_warn("message dead-lettered", "channel=%s attempts=%ld", j->m.channel, attempt);
    } else {
        int64_t delay = dl->backoff_ms;
        for (long k = 1; k < attempt && delay < dl->max_backoff_ms; k++)
            delay *= 2;
        if (delay > dl->max_backoff_ms)
            delay = dl->max_backoff_ms;
        finish(j, FINISH_RETRY, delay, NULL);
        metrics_count_delivery(&w->metrics, j->m.channel, "retried");
    }
    job_free(j);
}

static void on_redecided(void *arg, const struct store_reply *r)
{
    struct job *j = arg;
    struct worker *w = j->d->w;
    struct decision *dec = &j->decision;

    if (j->d->freeing || r->status != STORE_OK || decision_decide_result(r, j->cfg, dec) != 0) {
        job_free(j);      /* the lease runs out; it is taken again later */
        return;
    }
    metrics_count_decision(&w->metrics, dec->outcome, dec->reason,
                           decision_rule_name(j->cfg, dec->rule), j->m.channel);
    switch (dec->outcome) {
    case OUTCOME_ALLOW: {
        /* Also on a replay: then this gateway (or one that died) allowed it
         * before without the ack -- it may not have gone out: at least once. */
        struct upstream_pool *pool = worker_upstream(w, config_channel(j->cfg, j->m.channel));
        if (!pool || delivery_forward(pool, j->cfg, &j->m, on_forwarded, j) != 0) {
            struct upstream_response fail = { .status = UPSTREAM_FAILED, .error = "cannot start" };
            on_forwarded(j, &fail);
        }
        return;
    }
    case OUTCOME_DEFER:
        /* Re-queued by the decision itself, at its new time. */
        metrics_count_delivery(&w->metrics, j->m.channel, "deferred");
        break;
    default:
        /* Opted out, or a deny cap, meanwhile: it does not go. */
        finish(j, FINISH_DROP, 0, NULL);
        metrics_count_delivery(&w->metrics, j->m.channel, "dropped");
        break;
    }
    job_free(j);
}

static void start_job(struct dispatcher *d, unsigned tag, const char *member, size_t mlen,
                      const char *blob, size_t blen, int priority, long attempts)
{
    struct worker *w = d->w;
    struct job *j = calloc(1, sizeof *j);
    if (!j)
        return;
    j->d = d;
    j->tag = tag;
    j->cfg = config_retain(w->cfg);
    j->priority = priority;
    j->attempts = attempts;
    snprintf(j->member, sizeof j->member, "%.*s", (int)mlen, member);
    j->blob = strndup(blob, blen);
    d->active++;
    d->pending[tag]++;
    if (!j->blob || delivery_parse(blob, blen, &j->m, w->pseudonym) != 0 ||
        !config_channel(j->cfg, j->m.channel) || !config_category(j->cfg, j->m.category)) {
        /* Unreadable, or its channel is gone from the config: dead-letter it. */
        log_warn("undeliverable deferred message", "id=%s", j->member);
        finish(j, FINISH_DEAD, 0, "{\"error\":\"unreadable or unknown channel\"}");
        job_free(j);
        return;
    }
    struct enqueue q = { .blob = j->blob, .blob_len = blen, .priority = priority,
                         .from_queue = true };
    struct decide_input in;
    memset(&in, 0, sizeof in);
    snprintf(in.user, sizeof in.user, "%s", j->m.user);
    snprintf(in.message, sizeof in.message, "%s", j->m.message);
    in.channel = config_channel(j->cfg, j->m.channel);
    in.category = config_category(j->cfg, j->m.category);
    in.campaign = j->m.campaign;
    in.zone = j->m.tz ? tz_db_find(w->tz, j->m.tz)
            : j->cfg->quiet_hours.enabled ? tz_db_find(w->tz, j->cfg->quiet_hours.default_tz)
                                          : NULL;
    in.enqueue = &q;
    struct script_args a;
    decision_decide_args(j->cfg, &in, (int64_t)time(NULL), &a);
    if (store_eval(w->store, a.script, a.nkeys, a.argc, a.argv, a.argvlen, on_redecided, j) != 0)
        job_free(j);
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
    if (r->status != STORE_OK || r->n < 3) {
        tag_done(d, tag);
        return;
    }
    COUNTER_SET(d->w->metrics.deferred_depth[tag], (uint64_t)r->items[0].i);
    COUNTER_SET(d->w->metrics.dead_letters[tag], (uint64_t)r->items[1].i);
    long long n = r->items[2].i;
    struct claimed list[BATCH];
    size_t got = 0;
    for (long long k = 0; k < n && got < BATCH && 3 + 4 * (size_t)k + 3 < r->n; k++) {
        const struct store_item *it = &r->items[3 + 4 * k];
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
    struct worker *w = d->w;
    (void)fd; (void)what;

    if (d->quiesced || !proxy_configured(w->cfg) || !w->store || !store_ready(w->store))
        return;
    unsigned workers = w->n_workers ? w->n_workers : 1;
    for (unsigned k = 0; k < TAGS_PER_TICK; k++) {
        unsigned tag = d->next_tag;
        d->next_tag = (d->next_tag + 1) % DECISION_TAGS;
        if (tag % workers != w->id || d->busy[tag])
            continue;
        struct claim_call *c = malloc(sizeof *c);
        if (!c)
            return;
        c->d = d;
        c->tag = tag;
        struct script_args a;
        decision_claim_args(w->cfg, tag, BATCH, &a);
        d->busy[tag] = true;
        d->pending[tag] = 1;     /* the claim itself */
        d->claims++;
        if (store_eval(w->store, a.script, a.nkeys, a.argc, a.argv, a.argvlen, on_claimed, c) != 0) {
            free(c);
            d->claims--;
            d->busy[tag] = false;
            d->pending[tag] = 0;
        }
    }
}

struct dispatcher *dispatcher_new(struct worker *w)
{
    struct dispatcher *d = calloc(1, sizeof *d);
    if (!d)
        return NULL;
    d->w = w;
    d->next_tag = w->id;
    d->tick = event_new(w->base, -1, EV_PERSIST, on_tick, d);
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

/* metrics: counters with label sets.  See metrics.h. */
#include "capgate/metrics.h"

#include <stdio.h>
#include <string.h>

const char *const metrics_delivery_outcomes[] = {
    "delivered",     /* the upstream answered 2xx */
    "failed",        /* sent at once (send, route) and refused or unanswered */
    "retried",       /* from the queue, refused: tried again after a backoff */
    "dead",          /* from the queue, refused max_attempts times */
    "dropped",       /* from the queue, decided again and denied (opt-out, cap) */
    "deferred",      /* put in (or back into) the deferred queue */
    "superseded",    /* a newer message of its collapse_key took its place */
    "queue_full",    /* not queued: delivery.max_deferred reached */
    "replayed",      /* a retry of a message already delivered: not sent again */
    "held_rate",     /* the upstream's rate held it: queued for its slot */
    "held_throttle", /* a campaign throttle held it: queued for its slot */
    "held_warmup",   /* the upstream's warm-up ceiling for the day: queued for the next day */
    "held_paused",   /* the upstream is paused (pushback): queued for the pause's end */
    "held_unavailable", /* Redis did not say whether it may go: queued for a second */
    "held_campaign_paused", /* from the queue, its campaign paused (breaker): waits 10 s more */
    "pushed_back",   /* the upstream answered a pushback status: queued again, paused */
    "over_rate",     /* over_rate: reject -- refused with 429 instead of queued */
    NULL,
};

static struct decision_count *find(struct decision_count *set, size_t n,
                                   enum decision_outcome o, enum decision_reason r,
                                   const char *rule, const char *channel)
{
    for (size_t k = 0; k < n; k++) {
        struct decision_count *c = &set[k];
        if (c->outcome == o && c->reason == r && strcmp(c->rule, rule) == 0 &&
            strcmp(c->channel, channel) == 0)
            return c;
    }
    return NULL;
}

void metrics_count_decision(struct metrics *m, enum decision_outcome o,
                            enum decision_reason r, const char *rule, const char *channel)
{
    rule = rule ? rule : "";
    channel = channel ? channel : "";
    COUNTER_INC(m->decisions[o][r]);
    /* A handful of label sets in practice (outcomes x reasons x rules x
     * channels that actually occur): a linear scan beats a hash table. */
    struct decision_count *c = find(m->by_label, m->n_labels, o, r, rule, channel);
    if (!c && m->n_labels == METRICS_LABELS_MAX) {
        rule = "(other)";
        c = find(m->by_label, m->n_labels, o, r, rule, channel);
        if (!c)
            return;   /* the plain counter above still counted it */
    }
    if (c) {
        COUNTER_INC(c->n);
        return;
    }
    /* Fill the entry first, then publish it: readers on other threads see
     * either the old count of label sets or a complete new one. */
    c = &m->by_label[m->n_labels];
    c->outcome = o;
    c->reason = r;
    snprintf(c->rule, sizeof c->rule, "%s", rule);
    snprintf(c->channel, sizeof c->channel, "%s", channel);
    COUNTER_SET(c->n, 1);
    __atomic_store_n(&m->n_labels, m->n_labels + 1, __ATOMIC_RELEASE);
}

void metrics_count_shadow(struct metrics *m, const char *rule, enum decision_outcome would)
{
    for (size_t k = 0; k < m->n_shadow; k++)
        if (m->shadow[k].would == would && strcmp(m->shadow[k].rule, rule) == 0) {
            COUNTER_INC(m->shadow[k].n);
            return;
        }
    if (m->n_shadow == METRICS_SHADOW_MAX)
        return;
    struct shadow_count *c = &m->shadow[m->n_shadow];
    snprintf(c->rule, sizeof c->rule, "%s", rule);
    c->would = would;
    COUNTER_SET(c->n, 1);
    __atomic_store_n(&m->n_shadow, m->n_shadow + 1, __ATOMIC_RELEASE);
}

void metrics_count_delivery(struct metrics *m, const char *channel, const char *outcome)
{
    for (size_t k = 0; k < m->n_delivery; k++)
        if (m->delivery[k].outcome == outcome && strcmp(m->delivery[k].channel, channel) == 0) {
            COUNTER_INC(m->delivery[k].n);
            return;
        }
    if (m->n_delivery == METRICS_DELIVERY_MAX)
        return;
    struct delivery_count *c = &m->delivery[m->n_delivery];
    snprintf(c->channel, sizeof c->channel, "%s", channel);
    c->outcome = outcome;
    COUNTER_SET(c->n, 1);
    __atomic_store_n(&m->n_delivery, m->n_delivery + 1, __ATOMIC_RELEASE);
}

static struct route_latency *route_slot(struct metrics *m, const char *route)
{
    /* Most traffic hits one route: try the last one first. */
    if (m->last_route < m->n_routes && strcmp(m->by_route[m->last_route].route, route) == 0)
        return &m->by_route[m->last_route];
    for (size_t k = 0; k < m->n_routes; k++)
        if (strcmp(m->by_route[k].route, route) == 0) {
            m->last_route = k;
            return &m->by_route[k];
        }
    return NULL;
}

void metrics_observe_request(struct metrics *m, const char *route, double seconds)
{
    struct route_latency *r = route_slot(m, route);
    /* The last slot is kept for "(other)" (unless it has one already), so
     * that overflow has a home. */
    if (!r && m->n_routes >= METRICS_ROUTES_MAX - 1) {
        struct route_latency *other = route_slot(m, "(other)");
        if (m->n_routes == METRICS_ROUTES_MAX)
            r = other;
        else if (!other)
            route = "(other)";
    }
    if (!r) {
        if (m->n_routes == METRICS_ROUTES_MAX)
            return;   /* not reached: the last slot went to "(other)" */
        r = &m->by_route[m->n_routes];
        memset(r, 0, sizeof *r);
        snprintf(r->route, sizeof r->route, "%s", route);
        __atomic_store_n(&m->n_routes, m->n_routes + 1, __ATOMIC_RELEASE);
    }
    histogram_observe(&r->h, seconds);
}

void metrics_accumulate(struct metrics *out, const struct metrics *m)
{
    size_t nd = __atomic_load_n(&m->n_delivery, __ATOMIC_ACQUIRE);
    for (size_t k = 0; k < nd; k++) {
        const struct delivery_count *c = &m->delivery[k];
        size_t j = 0;
        while (j < out->n_delivery && !(strcmp(out->delivery[j].outcome, c->outcome) == 0 &&
                                        strcmp(out->delivery[j].channel, c->channel) == 0))
            j++;
        if (j == out->n_delivery) {
            if (j == METRICS_DELIVERY_MAX)
                continue;
            out->delivery[j] = *c;
            out->delivery[j].n = 0;
            out->n_delivery++;
        }
        out->delivery[j].n += COUNTER_GET(c->n);
    }
    /* Depths are per tag; each tag is served by one worker, which alone
     * writes its figure, so adding them up counts every tag once. */
    for (int t = 0; t < 256; t++) {
        out->deferred_depth[t] += COUNTER_GET(m->deferred_depth[t]);
        out->dead_letters[t] += COUNTER_GET(m->dead_letters[t]);
    }
    size_t ns = __atomic_load_n(&m->n_shadow, __ATOMIC_ACQUIRE);
    for (size_t k = 0; k < ns; k++) {
        const struct shadow_count *c = &m->shadow[k];
        size_t j = 0;
        while (j < out->n_shadow && !(out->shadow[j].would == c->would &&
                                      strcmp(out->shadow[j].rule, c->rule) == 0))
            j++;
        if (j == out->n_shadow) {
            if (j == METRICS_SHADOW_MAX)
                continue;
            out->shadow[j] = *c;
            out->shadow[j].n = 0;
            out->n_shadow++;
        }
        out->shadow[j].n += COUNTER_GET(c->n);
    }
    out->signals += COUNTER_GET(m->signals);
    out->erasures += COUNTER_GET(m->erasures);
    out->shows += COUNTER_GET(m->shows);
    for (int o = 0; o < OUTCOME__COUNT; o++)
        for (int r = 0; r < REASON__COUNT; r++)
            out->decisions[o][r] += COUNTER_GET(m->decisions[o][r]);
    size_t n = __atomic_load_n(&m->n_labels, __ATOMIC_ACQUIRE);
    for (size_t k = 0; k < n; k++) {
        const struct decision_count *c = &m->by_label[k];
        struct decision_count *d = find(out->by_label, out->n_labels, c->outcome, c->reason,
                                        c->rule, c->channel);
        if (!d && out->n_labels < METRICS_LABELS_MAX) {
            d = &out->by_label[out->n_labels++];
            *d = *c;
            d->n = 0;
        }
        if (d)
            d->n += COUNTER_GET(c->n);
    }
    out->dry_runs += COUNTER_GET(m->dry_runs);
    out->replays += COUNTER_GET(m->replays);
    out->releases += COUNTER_GET(m->releases);
    out->consents += COUNTER_GET(m->consents);
    out->http_requests += COUNTER_GET(m->http_requests);
    for (int k = 0; k < 600; k++)
        out->http_status[k] += COUNTER_GET(m->http_status[k]);
    for (int k = 0; k < API_ERROR__COUNT; k++)
        out->errors[k] += COUNTER_GET(m->errors[k]);
    size_t nr = __atomic_load_n(&m->n_routes, __ATOMIC_ACQUIRE);
    for (size_t k = 0; k < nr; k++) {
        const struct route_latency *c = &m->by_route[k];
        struct histogram h;
        histogram_read(&c->h, &h);
        histogram_add(&out->http_latency, &h);
        size_t j = 0;
        while (j < out->n_routes && strcmp(out->by_route[j].route, c->route) != 0)
            j++;
        if (j == out->n_routes) {
            if (j == METRICS_ROUTES_MAX)
                continue;
            memset(&out->by_route[j], 0, sizeof out->by_route[j]);
            memcpy(out->by_route[j].route, c->route, sizeof c->route);
            out->n_routes++;
        }
        histogram_add(&out->by_route[j].h, &h);
    }
}

/*
 * api_campaigns: the campaign circuit breaker's admin side (breaker.h).
 *   GET  /v1/admin/campaigns          campaigns counted in the window, their
 *                                     rates and states (open, paused, would_pause)
 *   POST /v1/admin/campaigns/resume   {"campaign"}: its pause goes, its counts
 *                                     start again
 * Campaign names are the sender's words, not personal data: they may be shown.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "capgate/api.h"
#include "capgate/breaker.h"
#include "capgate/clock.h"
#include "capgate/config.h"
#include "capgate/decision.h"
#include "capgate/http.h"
#include "capgate/loop.h"
#include "capgate/reply.h"
#include "capgate/requests.h"
#include "capgate/store.h"

#define LIST_MOST 1000

struct campaigns_call {
    struct loop *loop;
    struct http_request *req;
    char campaign[REQ_CAMPAIGN_MAX + 1];
};

static json_t *breaker_json(const struct cfg_breaker *b)
{
    if (!b->enabled)
        return json_null();
    return json_pack("{s:s, s:I, s:i, s:f, s:f}", "mode",
                     b->mode == CAP_SHADOW ? "shadow" : "enforce", "window_s",
                     (json_int_t)(b->window_ms / 1000), "min_sends", b->min_sends,
                     "complaint_rate", b->complaint_rate, "unsubscribe_rate", b->unsubscribe_rate);
}

/* "<paused|would>|<ms>|<why>" into the entry. */
static void add_state(json_t *o, const struct store_item *st)
{
    if (st->type != STORE_STR || st->len == 0) {
        json_object_set_new(o, "state", json_string("open"));
        return;
    }
    char buf[160];
    snprintf(buf, sizeof buf, "%.*s", (int)st->len, st->s);
    char *ms = strchr(buf, '|'), *why = ms ? strchr(ms + 1, '|') : NULL;
    if (ms)
        *ms++ = '\0';
    if (why)
        *why++ = '\0';
    json_object_set_new(o, "state", json_string(strcmp(buf, "would") == 0 ? "would_pause"
                                                                           : "paused"));
    if (ms) {
        char at[32];
        clock_format_rfc3339(at, sizeof at, (time_t)(strtoll(ms, NULL, 10) / 1000));
        json_object_set_new(o, "since", json_string(at));
    }
    if (why && *why)
        json_object_set_new(o, "why", json_string(why));
}

static void on_listed(void *arg, const struct store_reply *r)
{
    struct campaigns_call *c = arg;
    struct loop *l = c->loop;
    if (r->status != STORE_OK) {
        reply_error(l, c->req, API_STORE_UNAVAILABLE, NULL,
                    "the store is unavailable; retry later");
        free(c);
        return;
    }
    json_t *list = json_array();
    for (size_t k = 0; k + 4 < r->n; k += 5) {
        const struct store_item *it = &r->items[k];
        if (it[0].type != STORE_STR)
            continue;
        long long s = it[1].i, cm = it[2].i, u = it[3].i;
        json_t *o = json_pack("{s:s%, s:I, s:I, s:I, s:f, s:f}", "campaign", it[0].s, it[0].len,
                              "sends", (json_int_t)s, "complaints", (json_int_t)cm,
                              "unsubscribes", (json_int_t)u,
                              "complaint_rate", s ? (double)cm / (double)s : 0.0,
                              "unsubscribe_rate", s ? (double)u / (double)s : 0.0);
        add_state(o, &it[4]);
        json_array_append_new(list, o);
    }
    reply_json(l, c->req, 200, json_pack("{s:o, s:o}", "breaker", breaker_json(&l->cfg->breaker),
                                         "campaigns", list));
    free(c);
}

void api_campaigns(struct loop *l, struct http_request *req)
{
    const struct cfg_breaker *b = &l->cfg->breaker;
    if (!b->enabled) {
        reply_json(l, req, 200, json_pack("{s:n, s:[]}", "breaker", "campaigns"));
        return;
    }
    struct campaigns_call *c = calloc(1, sizeof *c);
    if (!c) {
        reply_error(l, req, API_INTERNAL, NULL, "out of memory");
        return;
    }
    c->loop = l;
    c->req = req;
    char window[24], most[16];
    snprintf(window, sizeof window, "%lld", (long long)b->window_ms);
    snprintf(most, sizeof most, "%d", LIST_MOST);
    const char *argv[] = { "list", window, most };
    struct script_args a;
    decision_breaker_args("", 3, argv, &a);
    if (!l->store ||
        store_eval(l->store, a.script, a.nkeys, a.argc, a.argv, a.argvlen, on_listed, c) != 0) {
        struct store_reply fail = { .status = STORE_UNAVAILABLE };
        on_listed(c, &fail);
    }
}

static void on_resumed(void *arg, const struct store_reply *r)
{
    struct campaigns_call *c = arg;
    struct loop *l = c->loop;
    if (r->status != STORE_OK || r->n < 1 || r->items[0].type != STORE_INT) {
        reply_error(l, c->req, API_STORE_UNAVAILABLE, NULL,
                    "the store is unavailable; nothing was resumed, retry later");
        free(c);
        return;
    }
    bool was = r->items[0].i == 1;
    breaker_forget(l->breaker, c->campaign);
    if (was)
        loop_audit(l, json_pack("{s:s, s:s, s:s}", "type", "breaker", "event", "resume",
                                "campaign", c->campaign));
    reply_json(l, c->req, 200, json_pack("{s:s, s:b}", "campaign", c->campaign, "resumed", was));
    free(c);
}

void api_campaigns_resume(struct loop *l, struct http_request *req)
{
    struct field_error e;
    struct req_resume rr;
    size_t len;
    const char *body = http_body(req, &len);
    if (request_resume(body, len, &rr, &e) != 0) {
        reply_field_error(l, req, &e);
        request_free(rr.json);
        return;
    }
    struct campaigns_call *c = calloc(1, sizeof *c);
    if (!c) {
        request_free(rr.json);
        reply_error(l, req, API_INTERNAL, NULL, "out of memory");
        return;
    }
    c->loop = l;
    c->req = req;
    snprintf(c->campaign, sizeof c->campaign, "%s", rr.campaign);
    request_free(rr.json);
    const char *argv[] = { "resume", c->campaign };
    struct script_args a;
    decision_breaker_args(c->campaign, 2, argv, &a);
    if (!l->store ||
        store_eval(l->store, a.script, a.nkeys, a.argc, a.argv, a.argvlen, on_resumed, c) != 0) {
        struct store_reply fail = { .status = STORE_UNAVAILABLE };
        on_resumed(c, &fail);
    }
}

/*
 * api_events: POST /v1/events -- what people signal, reflected in the very
 * next decision:
 *   unsubscribe   opt-out of that channel (and category, when given)
 *   complaint     a spam report: only transactional messages, on any channel
 *   hard_bounce   nothing on that channel, any category, until a new opt-in
 *   open, click   engagement: fatigue rules let go
 *   inbound_sms   a text the person sent: STOP opts out of the SMS channel,
 *                 START opts in again (consent source "sms-keyword", as
 *                 /v1/consent would record it); HELP and any other text
 *                 change nothing, and the answer says so.  The text itself
 *                 never gets here: requests.c keeps it to the parser.
 * An event that changes consent (unsubscribe, complaint, STOP, START) is
 * kept in the person's consent history, and its answer holds the receipt
 * (receipt.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capgate/api.h"
#include "capgate/breaker.h"
#include "capgate/config.h"
#include "capgate/decision.h"
#include "capgate/http.h"
#include "capgate/loop.h"
#include "capgate/pseudonym.h"
#include "capgate/receipt.h"
#include "capgate/reply.h"
#include "capgate/requests.h"
#include "capgate/rotation.h"
#include "capgate/store.h"

struct event_call {
    struct loop *loop;
    struct http_request *req;
    char type[16];
    char effect[200];
    const char *recognised;            /* inbound_sms: the keyword's name, or NULL */
    char channel[CONFIG_NAME_MAX + 1]; /* inbound_sms */
    char user[PSEUDONYM_USER_HEX + 1];
    bool counts;                       /* the campaign breaker counts it (breaker.h) */
    enum breaker_kind breaker_kind;
    char campaign[REQ_CAMPAIGN_MAX + 1];
    bool changes_consent;              /* a history entry is written: the answer has a receipt */
    bool opt_in;
    char scope[2 * CONFIG_NAME_MAX + 2];
    struct consent_proof proof;
    struct script_args args;   /* built at once (it copies the request's words), sent once the
                                  person's records are under the current key (rotation.h) */
};

/* The answer: what was recorded, and for a text what it was recognised as.
 * R: the store's reply to a consent change (for its receipt), or NULL. */
static json_t *answer(const struct event_call *call, bool recorded, const struct store_reply *r)
{
    json_t *o;
    if (strcmp(call->type, "inbound_sms") != 0)
        o = json_pack("{s:b, s:s, s:s}", "recorded", recorded, "type", call->type,
                      "effect", call->effect);
    /* recognised is null, not left out, for a text that is no keyword:
     * the question was asked and that is its answer. */
    else
        o = json_pack("{s:b, s:s, s:o, s:s, s:s}", "recorded", recorded, "type", call->type,
                      "recognised", call->recognised ? json_string(call->recognised) : json_null(),
                      "channel", call->channel, "effect", call->effect);
    if (o && r && call->changes_consent) {
        char basis[32];
        decision_consent_basis(r, basis);
        struct receipt rc = { .record_id = call->proof.record_id, .principal = call->user,
                              .controller = config_controller(call->loop->cfg),
                              .scope = call->scope, .legal_basis = basis,
                              .method = call->proof.method, .opt_in = call->opt_in,
                              .at_ms = decision_consent_result(r) };
        json_t *receipt = receipt_json(&rc);
        if (receipt)
            json_object_set_new(o, "receipt", receipt);
    }
    return o;
}

static void on_recorded(void *arg, const struct store_reply *r)
{
    struct event_call *call = arg;
    struct loop *l = call->loop;
    if (r->status != STORE_OK || decision_consent_result(r) < 0) {
        reply_error(l, call->req, API_STORE_UNAVAILABLE, NULL,
                    "the store is unavailable; the event was not recorded, retry later");
    } else {
        COUNTER_INC(l->metrics.signals);
        if (call->counts)
            breaker_count(l->breaker, call->campaign, call->breaker_kind);
        if (loop_audit_wanted(l))
            loop_audit(l, json_pack("{s:s, s:s, s:s, s:s}", "type", "signal",
                                                 "pseudonym", call->user, "event", call->type,
                                                 "effect", call->effect));
        reply_json(l, call->req, 200, answer(call, true, r));
    }
    free(call);
}

static void refuse(struct event_call *call)
{
    reply_error(call->loop, call->req, API_STORE_UNAVAILABLE, NULL,
                "the store is unavailable; the event was not recorded, retry later");
    free(call);
}

static int record(struct event_call *call)
{
    const struct script_args *a = &call->args;
    return store_eval(call->loop->store, a->script, a->nkeys, a->argc, a->argv, a->argvlen,
                      on_recorded, call);
}

static void on_moved(void *arg, bool ok)
{
    struct event_call *call = arg;
    if (!ok || record(call) != 0)
        refuse(call);
}

void api_events(struct loop *l, struct http_request *req)
{
    static const enum consent_kind kinds[] = {
        [EVENT_UNSUBSCRIBE] = CONSENT_UNSUBSCRIBE, [EVENT_COMPLAINT] = CONSENT_COMPLAINT,
        [EVENT_BOUNCE] = CONSENT_BOUNCE, [EVENT_ENGAGE] = CONSENT_ENGAGE,
        [EVENT_INBOUND_SMS] = CONSENT_SET,   /* the record /v1/consent would make */
    };
    struct field_error e;
    struct req_event ev;
    size_t len;
    const char *body = http_body(req, &len);

    if (request_event(l->cfg, body, len, &ev, &e) != 0) {
        reply_field_error(l, req, &e);
        request_free(ev.json);
        return;
    }
    struct event_call *call = calloc(1, sizeof *call);
    if (!call) {
        reply_error(l, req, API_INTERNAL, NULL, "out of memory");
        request_free(ev.json);
        return;
    }
    call->loop = l;
    call->req = req;
    snprintf(call->type, sizeof call->type, "%s", ev.type);
    snprintf(call->effect, sizeof call->effect, "%s", ev.effect);
    pseudonym_user(l->pseudonym, ev.user, ev.user_len, call->user);
    http_note_user(req, call->user);
    call->recognised = sms_keyword_name(ev.keyword);
    snprintf(call->channel, sizeof call->channel, "%s", ev.channel ? ev.channel : "");
    if (!ev.records) {
        /* HELP, or a text that is no keyword: Redis is not asked at all,
         * so nothing of the person changes and nothing of the text is kept. */
        request_free(ev.json);
        reply_json(l, req, 200, answer(call, false, NULL));
        free(call);
        return;
    }
    /* The method a receipt names: what consent.lua records as the source. */
    static const char *const methods[] = {
        [EVENT_UNSUBSCRIBE] = "unsubscribe", [EVENT_COMPLAINT] = "complaint",
        [EVENT_INBOUND_SMS] = REQ_SMS_SOURCE,
    };
    call->changes_consent = methods[ev.kind] != NULL;
    if (call->changes_consent) {
        receipt_new_id(call->proof.record_id);
        call->proof.method = methods[ev.kind];
        call->opt_in = ev.kind == EVENT_INBOUND_SMS && ev.opt_in;
        /* A complaint is about everything (consent.lua). */
        snprintf(call->scope, sizeof call->scope, "%s",
                 ev.kind == EVENT_COMPLAINT ? "*|*" : ev.scope);
    }
    decision_signal_args(l->cfg, call->user, kinds[ev.kind], ev.scope, ev.opt_in,
                         ev.kind == EVENT_INBOUND_SMS ? REQ_SMS_SOURCE : NULL, ev.detail,
                         call->changes_consent ? &call->proof : NULL, &call->args);
    char old_p[PSEUDONYM_USER_HEX + 1];
    bool rotating = pseudonym_user_previous(l->pseudonym, ev.user, ev.user_len, old_p);
    /* A STOP answering a campaign's text is that campaign's unsubscribe. */
    call->counts = ev.kind == EVENT_COMPLAINT || ev.kind == EVENT_UNSUBSCRIBE ||
                   (ev.kind == EVENT_INBOUND_SMS && !ev.opt_in);
    call->breaker_kind = ev.kind == EVENT_COMPLAINT ? BREAKER_COMPLAINT : BREAKER_UNSUBSCRIBE;
    snprintf(call->campaign, sizeof call->campaign, "%s", ev.campaign ? ev.campaign : "");
    request_free(ev.json);
    if (rotating ? rotation_move(l, old_p, call->user, on_moved, call) != 0 : record(call) != 0)
        refuse(call);
}

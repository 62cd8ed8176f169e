/*
 * api_events: POST /v1/events -- what people signal, reflected in the very
 * next decision:
 *   unsubscribe   opt-out of that channel (and category, when given)
 *   complaint     a spam report: only transactional messages, on any channel
 *   hard_bounce   nothing on that channel, any category, until a new opt-in
 *   open, click   engagement: fatigue rules let go
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capgate/api.h"
#include "capgate/config.h"
#include "capgate/decision.h"
#include "capgate/gateway.h"
#include "capgate/http.h"
#include "capgate/pseudonym.h"
#include "capgate/reply.h"
#include "capgate/store.h"
#include "capgate/validate.h"
#include "capgate/worker.h"

struct event_call {
    struct worker *w;
    struct http_request *req;
    char type[16];
    char effect[200];
    char user[PSEUDONYM_USER_HEX + 1];
};

static void on_recorded(void *arg, const struct store_reply *r)
{
    struct event_call *call = arg;
    if (r->status != STORE_OK || decision_consent_result(r) < 0) {
        reply_error(call->w, call->req, API_STORE_UNAVAILABLE, NULL,
                    "the store is unavailable; the event was not recorded, retry later");
    } else {
        COUNTER_INC(call->w->metrics.signals);
        if (gateway_audit_wanted(call->w->gw))
            gateway_audit(call->w->gw, json_pack("{s:s, s:s, s:s, s:s}", "type", "signal",
                                                 "pseudonym", call->user, "event", call->type,
                                                 "effect", call->effect));
        reply_json(call->w, call->req, 200, json_pack("{s:b, s:s, s:s}", "recorded", 1,
                                                      "type", call->type, "effect", call->effect));
    }
    free(call);
}

void api_events(struct worker *w, struct http_request *req)
{
    static const char *const fields[] = { "user", "type", "channel", "category", "campaign",
                                          "message_id", NULL };
    const struct config *cfg = w->cfg;
    const char *user, *type, *channel, *category, *campaign, *message_id;
    size_t user_len;
    struct field_error e;

    json_t *obj = api_body(w, req, fields);
    if (!obj)
        return;
    if (validate_string(obj, "user", true, 1, 256, &user, &user_len, &e) ||
        validate_string(obj, "type", true, 1, 16, &type, NULL, &e) ||
        validate_string(obj, "channel", false, 1, 64, &channel, NULL, &e) ||
        validate_string(obj, "category", false, 1, 64, &category, NULL, &e) ||
        validate_string(obj, "campaign", false, 1, 256, &campaign, NULL, &e) ||
        validate_string(obj, "message_id", false, 1, 128, &message_id, NULL, &e))
        goto invalid;

    enum consent_kind kind;
    if (strcmp(type, "unsubscribe") == 0)
        kind = CONSENT_UNSUBSCRIBE;
    else if (strcmp(type, "complaint") == 0)
        kind = CONSENT_COMPLAINT;
    else if (strcmp(type, "hard_bounce") == 0)
        kind = CONSENT_BOUNCE;
    else if (strcmp(type, "open") == 0 || strcmp(type, "click") == 0)
        kind = CONSENT_ENGAGE;
    else {
        reply_error(w, req, API_INVALID_FIELD, "type",
                    "type must be unsubscribe, complaint, hard_bounce, open or click");
        json_decref(obj);
        return;
    }
    if (channel && !config_channel(cfg, channel)) {
        reply_error(w, req, API_UNKNOWN_CHANNEL, "channel", "channel is not configured");
        json_decref(obj);
        return;
    }
    if (category && !config_category(cfg, category)) {
        reply_error(w, req, API_UNKNOWN_CATEGORY, "category", "category is not configured");
        json_decref(obj);
        return;
    }
    if (kind == CONSENT_BOUNCE && !channel) {
        e.code = API_MISSING_FIELD;
        e.field = "channel";
        snprintf(e.message, sizeof e.message, "channel is required for a hard_bounce");
        goto invalid;
    }

    struct event_call *call = calloc(1, sizeof *call);
    if (!call) {
        reply_error(w, req, API_INTERNAL, NULL, "out of memory");
        json_decref(obj);
        return;
    }
    call->w = w;
    call->req = req;
    snprintf(call->type, sizeof call->type, "%s", type);
    char scope[160] = "";
    switch (kind) {
    case CONSENT_UNSUBSCRIBE:
        snprintf(scope, sizeof scope, "%s|%s", channel ? channel : "*", category ? category : "*");
        snprintf(call->effect, sizeof call->effect, "opted out of %s", scope);
        break;
    case CONSENT_COMPLAINT:
        snprintf(call->effect, sizeof call->effect,
                 "suppressed: only transactional messages, on every channel");
        break;
    case CONSENT_BOUNCE:
        snprintf(scope, sizeof scope, "%s", channel);
        snprintf(call->effect, sizeof call->effect,
                 "suppressed: nothing on %s until a new opt-in", channel);
        break;
    default:
        snprintf(call->effect, sizeof call->effect, "engaged: fatigue rules no longer apply");
        break;
    }
    char detail[300];
    snprintf(detail, sizeof detail, "%s%s%s", type, campaign ? " campaign=" : "",
             campaign ? campaign : "");
    char user_hash[PSEUDONYM_USER_HEX + 1];
    pseudonym_user(w->pseudonym, user, user_len, user_hash);
    http_note_user(req, user_hash);
    memcpy(call->user, user_hash, sizeof call->user);
    struct script_args args;
    decision_signal_args(cfg, user_hash, kind, scope, false, NULL, detail, &args);
    json_decref(obj);
    if (store_eval(w->store, args.script, args.nkeys, args.argc, args.argv, args.argvlen,
                   on_recorded, call) != 0) {
        free(call);
        reply_error(w, req, API_STORE_UNAVAILABLE, NULL,
                    "the store is unavailable; the event was not recorded, retry later");
    }
    return;

invalid:
    reply_error(w, req, e.code, e.field, "%s", e.message);
    json_decref(obj);
}

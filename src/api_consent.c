/*
 * api_consent: POST /v1/consent -- record a person's consent for a channel
 * and category (or "*"), with Redis's time and the caller's source, as
 * proof of consent.  The answer echoes the record, never the user.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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

#define NAME_MAX_LEN 64
#define SOURCE_MAX 128

struct consent_call {
    struct worker *w;
    struct http_request *req;
    bool opt_in;
    char channel[NAME_MAX_LEN + 1];
    char category[NAME_MAX_LEN + 1];
    char source[SOURCE_MAX + 1];
    char user[PSEUDONYM_USER_HEX + 1];
};

static void format_rfc3339(int64_t ms, char out[32])
{
    time_t s = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&s, &tm);
    strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static void on_consent_stored(void *arg, const struct store_reply *r)
{
    struct consent_call *call = arg;
    int64_t at = r->status == STORE_OK ? decision_consent_result(r) : -1;

    if (at < 0) {
        reply_error(call->w, call->req, API_STORE_UNAVAILABLE, NULL,
                    "the decision store is unavailable; consent was not recorded, retry later");
    } else {
        char when[32];
        format_rfc3339(at, when);
        COUNTER_INC(call->w->metrics.consents);
        if (gateway_audit_wanted(call->w->gw))
            gateway_audit(call->w->gw,
                          json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "type", "consent",
                                    "pseudonym", call->user, "channel", call->channel,
                                    "category", call->category,
                                    "state", call->opt_in ? "opt_in" : "opt_out",
                                    "source", call->source));
        reply_json(call->w, call->req, 200,
                   json_pack("{s:s, s:s, s:s, s:s, s:s}", "channel", call->channel,
                             "category", call->category, "state",
                             call->opt_in ? "opt_in" : "opt_out", "source", call->source,
                             "updated_at", when));
    }
    free(call);
}

void api_consent(struct worker *w, struct http_request *req)
{
    static const char *const fields[] = { "user", "channel", "category", "state", "source", NULL };
    const struct config *cfg = w->cfg;
    const char *user, *channel, *category, *state, *source;
    size_t user_len;
    struct field_error e;

    json_t *obj = api_body(w, req, fields);
    if (!obj)
        return;
    if (validate_string(obj, "user", true, 1, 256, &user, &user_len, &e) ||
        validate_string(obj, "channel", true, 1, NAME_MAX_LEN, &channel, NULL, &e) ||
        validate_string(obj, "category", true, 1, NAME_MAX_LEN, &category, NULL, &e) ||
        validate_string(obj, "state", true, 1, 16, &state, NULL, &e) ||
        validate_string(obj, "source", true, 1, SOURCE_MAX, &source, NULL, &e)) {
        reply_error(w, req, e.code, e.field, "%s", e.message);
        json_decref(obj);
        return;
    }
    if (strcmp(channel, "*") != 0 && !config_channel(cfg, channel)) {
        reply_error(w, req, API_UNKNOWN_CHANNEL, "channel",
                    "channel must be a configured channel or \"*\"");
        json_decref(obj);
        return;
    }
    if (strcmp(category, "*") != 0 && !config_category(cfg, category)) {
        reply_error(w, req, API_UNKNOWN_CATEGORY, "category",
                    "category must be a configured category or \"*\"");
        json_decref(obj);
        return;
    }
    bool opt_in = strcmp(state, "opt_in") == 0;
    if (!opt_in && strcmp(state, "opt_out") != 0) {
        reply_error(w, req, API_INVALID_FIELD, "state", "state must be \"opt_in\" or \"opt_out\"");
        json_decref(obj);
        return;
    }

    struct consent_call *call = calloc(1, sizeof *call);
    if (!call) {
        reply_error(w, req, API_INTERNAL, NULL, "out of memory");
        json_decref(obj);
        return;
    }
    call->w = w;
    call->req = req;
    call->opt_in = opt_in;
    snprintf(call->channel, sizeof call->channel, "%s", channel);
    snprintf(call->category, sizeof call->category, "%s", category);
    snprintf(call->source, sizeof call->source, "%s", source);

    char user_hash[PSEUDONYM_USER_HEX + 1];
    pseudonym_user(w->pseudonym, user, user_len, user_hash);
    http_note_user(req, user_hash);
    memcpy(call->user, user_hash, sizeof call->user);
    struct script_args args;
    decision_consent_args(cfg, user_hash, call->channel, call->category, opt_in, call->source,
                          &args);
    json_decref(obj);
    if (store_eval(w->store, args.script, args.nkeys, args.argc, args.argv, args.argvlen,
                   on_consent_stored, call) != 0) {
        free(call);
        reply_error(w, req, API_STORE_UNAVAILABLE, NULL,
                    "the decision store is unavailable; consent was not recorded, retry later");
    }
}

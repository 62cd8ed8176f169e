/*
 * api_consent: POST /v1/consent -- record a person's consent for a channel
 * and category (or "*"), with Redis's time and the caller's source, as
 * proof of consent.  The answer echoes the record, never the user, and
 * the change's receipt (receipt.h), which the person's history keeps too.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "capgate/api.h"
#include "capgate/clock.h"
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

struct consent_call {
    struct loop *loop;
    struct http_request *req;
    bool opt_in;
    char channel[CONFIG_NAME_MAX + 1];
    char category[CONFIG_NAME_MAX + 1];
    char source[REQ_SOURCE_MAX + 1];
    char user[PSEUDONYM_USER_HEX + 1];
    char method[RECEIPT_METHOD_MAX + 1];
    char notice[4 * RECEIPT_NOTICE_MAX + 1];   /* '' none */
    char legal_basis[32];                      /* '' none: consent.lua picks it */
    struct consent_proof proof;
};

static void on_consent_stored(void *arg, const struct store_reply *r)
{
    struct consent_call *call = arg;
    int64_t at = r->status == STORE_OK ? decision_consent_result(r) : -1;

    struct loop *l = call->loop;
    if (at < 0) {
        reply_error(l, call->req, API_STORE_UNAVAILABLE, NULL,
                    "the decision store is unavailable; consent was not recorded, retry later");
    } else {
        char when[32];
        clock_format_rfc3339(when, sizeof when, (time_t)(at / 1000));
        COUNTER_INC(l->metrics.consents);
        if (loop_audit_wanted(l))
            loop_audit(l,
                          json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "type", "consent",
                                    "pseudonym", call->user, "channel", call->channel,
                                    "category", call->category,
                                    "state", call->opt_in ? "opt_in" : "opt_out",
                                    "source", call->source));
        char scope[2 * CONFIG_NAME_MAX + 2], basis[32];
        snprintf(scope, sizeof scope, "%s|%s", call->channel, call->category);
        decision_consent_basis(r, basis);
        struct receipt rc = { .record_id = call->proof.record_id, .principal = call->user,
                              .controller = config_controller(l->cfg), .scope = scope,
                              .legal_basis = basis, .notice = call->notice,
                              .method = call->method, .opt_in = call->opt_in, .at_ms = at };
        json_t *receipt = receipt_json(&rc);
        reply_json(l, call->req, 200,
                   json_pack("{s:s, s:s, s:s, s:s, s:s, s:o*}", "channel", call->channel,
                             "category", call->category, "state",
                             call->opt_in ? "opt_in" : "opt_out", "source", call->source,
                             "updated_at", when, "receipt", receipt));
    }
    free(call);
}

static void refuse(struct consent_call *call)
{
    reply_error(call->loop, call->req, API_STORE_UNAVAILABLE, NULL,
                "the decision store is unavailable; consent was not recorded, retry later");
    free(call);
}

static int store(struct consent_call *call)
{
    struct loop *l = call->loop;
    struct script_args args;
    decision_consent_args(l->cfg, call->user, call->channel, call->category, call->opt_in,
                          call->source, &call->proof, &args);
    return store_eval(l->store, args.script, args.nkeys, args.argc, args.argv, args.argvlen,
                      on_consent_stored, call);
}

static void on_moved(void *arg, bool ok)
{
    struct consent_call *call = arg;
    if (!ok || store(call) != 0)
        refuse(call);
}

void api_consent(struct loop *l, struct http_request *req)
{
    struct field_error e;
    struct req_consent rc;
    size_t len;
    const char *body = http_body(req, &len);

    if (request_consent(l->cfg, body, len, &rc, &e) != 0) {
        reply_field_error(l, req, &e);
        request_free(rc.json);
        return;
    }
    struct consent_call *call = calloc(1, sizeof *call);
    if (!call) {
        reply_error(l, req, API_INTERNAL, NULL, "out of memory");
        request_free(rc.json);
        return;
    }
    call->loop = l;
    call->req = req;
    call->opt_in = rc.opt_in;
    snprintf(call->channel, sizeof call->channel, "%s", rc.channel);
    snprintf(call->category, sizeof call->category, "%s", rc.category);
    snprintf(call->source, sizeof call->source, "%s", rc.source);
    snprintf(call->notice, sizeof call->notice, "%s", rc.notice ? rc.notice : "");
    snprintf(call->legal_basis, sizeof call->legal_basis, "%s",
             rc.legal_basis ? rc.legal_basis : "");
    receipt_api_method(rc.source, call->method);
    receipt_new_id(call->proof.record_id);
    call->proof.method = call->method;
    call->proof.legal_basis = call->legal_basis;
    call->proof.notice = call->notice;
    pseudonym_user(l->pseudonym, rc.user, rc.user_len, call->user);
    http_note_user(req, call->user);
    char old_p[PSEUDONYM_USER_HEX + 1];
    bool rotating = pseudonym_user_previous(l->pseudonym, rc.user, rc.user_len, old_p);
    request_free(rc.json);
    /* During a key rotation the person's records move first, so that the
     * new record is merged with the old ones by consent.lua's own rule. */
    if (rotating ? rotation_move(l, old_p, call->user, on_moved, call) != 0 : store(call) != 0)
        refuse(call);
}

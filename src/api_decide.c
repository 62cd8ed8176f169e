/*
 * api_decide: POST /v1/decide and POST /v1/release.
 *
 * The body is read and checked first (requests.c: a bad request never
 * reaches Redis), the user id is replaced by its pseudonym here and only
 * here, then decide.c decides; the connection waits suspended until it
 * answers (always within redis.timeout_ms).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "capgate/api.h"
#include "capgate/config.h"
#include "capgate/decide.h"
#include "capgate/decision.h"
#include "capgate/http.h"
#include "capgate/loop.h"
#include "capgate/pseudonym.h"
#include "capgate/reply.h"
#include "capgate/requests.h"
#include "capgate/rotation.h"
#include "capgate/store.h"
#include "capgate/textbuf.h"
#include "capgate/token.h"

/* A decide waiting for its answer.  Freed in the callback. */
struct decide_call {
    struct decide_op op;
    struct loop *loop;
    struct http_request *req;
    bool dry_run;
    char message_id[REQ_MESSAGE_ID_MAX + 1];  /* echoed back to the caller */
    /* During a key rotation the decision waits for the person's records to
     * move (rotation.h): what it needs is kept here meanwhile. */
    struct decide_request rq;
    const struct config *cfg;                 /* the one RQ's channel is of */
    char campaign[REQ_CAMPAIGN_MAX + 1], tz[REQ_TZ_MAX + 1];
};

static void answer(struct decide_call *call, const struct config *cfg, const struct decision *d)
{
    struct textbuf t = { 0 };
    textbuf_puts(&t, "{");
    decision_json_fields(&t, cfg, d, call->message_id);
    if (d->outcome == OUTCOME_ALLOW)
        token_link_field(&t, call->loop->pseudonym, cfg, call->op.user, call->op.channel,
                         call->op.category);
    if (call->dry_run)
        textbuf_puts(&t, ",\"dry_run\":true");
    for (size_t k = 0; k < d->n_shadow; k++) {
        textbuf_puts(&t, k ? ",{\"rule\":\"" : ",\"shadow\":[{\"rule\":\"");
        textbuf_puts(&t, cfg->caps[d->shadow[k].rule].name);
        textbuf_puts(&t, "\",\"would\":\"");
        textbuf_puts(&t, decision_outcome_name(d->shadow[k].would));
        textbuf_puts(&t, "\"}");
    }
    textbuf_puts(&t, d->n_shadow ? "]}\n" : "}\n");
    if (t.failed)
        reply_error(call->loop, call->req, API_INTERNAL, NULL, "out of memory");
    else
        reply_text(call->loop, call->req, 200, "application/json", t.buf, t.len, NULL);
    free(t.buf);
}

static void on_decided(void *arg, const struct decide_result *r)
{
    struct decide_call *call = arg;
    if (r->status == DECIDE_UNAVAILABLE)
        reply_error(call->loop, call->req, API_STORE_UNAVAILABLE, NULL,
                    "the decision store is unavailable (%s); retry later", r->why);
    else
        answer(call, r->cfg, &r->decision);
    free(call);
}

/* The person's records are under the current key: decide now. */
static void on_moved(void *arg, bool ok)
{
    struct decide_call *call = arg;
    if (!ok || call->loop->cfg != call->cfg) {
        /* Deciding without the records of before the rotation could allow
         * a message to someone who opted out: nothing happened, retry. */
        reply_error(call->loop, call->req, API_STORE_UNAVAILABLE, NULL,
                    "the decision store is unavailable (%s); retry later",
                    ok ? "the configuration was reloaded" : "key rotation");
        free(call);
        return;
    }
    decide_start(&call->op, call->loop, &call->rq, on_decided, call);
}

void api_decide(struct loop *l, struct http_request *req)
{
    struct field_error e;
    struct req_decide rd;
    size_t len;
    const char *body = http_body(req, &len);

    if (request_decide(l->cfg, l->tz, body, len, &rd, &e) != 0) {
        reply_field_error(l, req, &e);
        request_free(rd.json);
        return;
    }
    struct decide_call *call = malloc(sizeof *call);
    if (!call) {
        reply_error(l, req, API_INTERNAL, NULL, "out of memory");
        request_free(rd.json);
        return;
    }
    call->loop = l;
    call->req = req;
    call->dry_run = rd.dry_run;
    memcpy(call->message_id, rd.message_id, rd.message_id_len);
    call->message_id[rd.message_id_len] = '\0';

    struct decide_request rq = { .channel = rd.channel, .category = rd.category,
                                 .campaign = rd.campaign, .tz = rd.tz, .dry_run = rd.dry_run,
                                 .road = DECIDE_API };
    pseudonym_user(l->pseudonym, rd.user, rd.user_len, rq.user);
    pseudonym_message(l->pseudonym, rd.message_id, rd.message_id_len, rq.message);
    http_note_user(req, rq.user);
    char old_p[PSEUDONYM_USER_HEX + 1];
    if (pseudonym_user_previous(l->pseudonym, rd.user, rd.user_len, old_p)) {
        call->rq = rq;
        call->cfg = l->cfg;
        snprintf(call->campaign, sizeof call->campaign, "%s", rd.campaign ? rd.campaign : "");
        snprintf(call->tz, sizeof call->tz, "%s", rd.tz ? rd.tz : "");
        call->rq.campaign = rd.campaign ? call->campaign : NULL;
        call->rq.tz = rd.tz ? call->tz : NULL;
        request_free(rd.json);
        if (rotation_move(l, old_p, rq.user, on_moved, call) != 0) {
            reply_error(l, req, API_STORE_UNAVAILABLE, NULL,
                        "the decision store is unavailable (not connected); retry later");
            free(call);
        }
        return;
    }
    decide_start(&call->op, l, &rq, on_decided, call);
    request_free(rd.json);     /* what decide needs it has copied */
}

/* ---- release ------------------------------------------------------------ */

struct release_call {
    struct loop *loop;
    struct http_request *req;
};

static void on_released(void *arg, const struct store_reply *r)
{
    struct release_call *call = arg;
    int released = r->status == STORE_OK ? decision_release_result(r) : -1;

    if (released < 0)
        reply_error(call->loop, call->req, API_STORE_UNAVAILABLE, NULL,
                    "the decision store is unavailable; retry later");
    else {
        COUNTER_ADD(call->loop->metrics.releases, (unsigned)released);
        reply_json(call->loop, call->req, 200, json_pack("{s:b}", "released", released));
    }
    free(call);
}

void api_release(struct loop *l, struct http_request *req)
{
    char user_hash[PSEUDONYM_USER_HEX + 1], message_hash[PSEUDONYM_SHORT_HEX + 1];
    struct field_error e;
    struct req_person rp;
    size_t len;
    const char *body = http_body(req, &len);

    if (request_release(body, len, &rp, &e) != 0) {
        reply_field_error(l, req, &e);
        request_free(rp.json);
        return;
    }
    pseudonym_user(l->pseudonym, rp.user, rp.user_len, user_hash);
    pseudonym_message(l->pseudonym, rp.message_id, rp.message_id_len, message_hash);
    http_note_user(req, user_hash);
    request_free(rp.json);

    struct release_call *call = malloc(sizeof *call);
    if (!call) {
        reply_error(l, req, API_INTERNAL, NULL, "out of memory");
        return;
    }
    call->loop = l;
    call->req = req;
    struct script_args args;
    decision_release_args(l->cfg, user_hash, message_hash, &args);
    if (store_eval(l->store, args.script, args.nkeys, args.argc, args.argv, args.argvlen,
                   on_released, call) != 0) {
        free(call);
        reply_error(l, req, API_STORE_UNAVAILABLE, NULL,
                    "the decision store is unavailable; retry later");
    }
}

/*
 * api_route: a transparent route -- a campaign API's own path, proxied as it
 * came, exact for every recipient it names.
 *
 * The recipients are read with the route's specs (requests.c: JSON pointers
 * with "*", headers, form fields), each person once.  Each is decided
 * (decide.c; the same message_id for all: idempotency is per person), with
 * a copy of the request that carries that recipient alone ready to queue:
 * a deferred recipient is queued as that copy (Idempotency-Key plus a
 * suffix of the person's pseudonym), and an allowed one waits in the queue
 * as that copy while the request is forwarded, so a dead gateway loses
 * nothing.  Then the request goes upstream once, carrying exactly the
 * allowed recipients: the others' array elements are cut out, every other
 * byte as the client sent it.  The caller gets the upstream's answer as it
 * came, with X-Capgate-Allowed / -Deferred / -Denied; when nothing could go,
 * capgate's own answer names each recipient's outcome by where it stood in
 * the request, never by the address.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "capgate/api.h"
#include "capgate/breaker.h"
#include "capgate/clock.h"
#include "capgate/config.h"
#include "capgate/decide.h"
#include "capgate/decision.h"
#include "capgate/delivery.h"
#include "capgate/http.h"
#include "capgate/log.h"
#include "capgate/loop.h"
#include "capgate/pseudonym.h"
#include "capgate/reply.h"
#include "capgate/requests.h"
#include "capgate/rotation.h"
#include "capgate/textbuf.h"
#include "capgate/token.h"
#include "capgate/upstream.h"

struct route_call;

/* One recipient on its way through decide. */
struct rcpt {
    struct decide_op op;
    struct route_call *rc;
    char user[PSEUDONYM_USER_HEX + 1];
    char message[PSEUDONYM_SHORT_HEX + 1];
    enum decide_status status;
    struct decision d;
    char *blob;                       /* sealed, binary (delivery_blob) */
    size_t blob_len;
    bool forwarded;                   /* in the body that went upstream */
    bool held;                        /* allowed, but the upstream's rate or pause held it */
    bool collateral;                  /* allowed, but cut with a personalization */
    char old_user[PSEUDONYM_USER_HEX + 1];   /* key rotation: the previous key's pseudonym */
};

struct route_call {
    struct loop *loop;
    struct http_request *req;
    const struct config *cfg;         /* retained: ROUTE points into it */
    const struct cfg_route *route;
    struct req_route rr;
    char *body;                       /* the request's body (rr points into it) */
    size_t body_len;
    char *sent_body;                  /* what went upstream, when it was cut (else NULL) */
    json_t *headers;                  /* the request's headers, hop-by-hop ones out */
    char *method, *query;
    struct rcpt *r;
    size_t pending;                   /* decisions, then abandons, still owed */
    char *first_answer;               /* a replay's kept answer (sealed), the first found */
    size_t first_answer_len;
    bool released_all;                /* every abandon went through */
    struct upstream_response *up;     /* the upstream's answer while abandons run (a copy) */
    struct message out;               /* what goes upstream (delivery_send keeps it) */
    int64_t held_ms;                  /* held back (shape.h): when it may go */
    enum shape_why held_why;
    bool held_queued;                 /* ...and the held recipients were queued for it */
    size_t moving;                    /* key rotation: recipients' records still moving */
    bool move_failed;
};

static void call_free(struct route_call *c)
{
    for (size_t k = 0; c->r && k < c->rr.n; k++)
        free(c->r[k].blob);
    free(c->r);
    request_route_free(&c->rr);
    free(c->body);
    free(c->sent_body);
    json_decref(c->headers);
    free(c->method);
    free(c->query);
    free(c->first_answer);
    if (c->cfg)
        config_release(c->cfg);
    free(c);
}

/* ---- outcomes ------------------------------------------------------------------- */

enum fate { F_SEND, F_REPLAYED, F_DEFERRED, F_DENIED, F_UNAVAILABLE };

static enum fate fate_of(const struct rcpt *r)
{
    if (r->status == DECIDE_UNAVAILABLE)
        return F_UNAVAILABLE;
    if (r->d.outcome == OUTCOME_ALLOW)
        return r->d.replay && !r->d.resend ? F_REPLAYED : F_SEND;
    if (r->d.outcome == OUTCOME_DEFER)       /* in_queue: the dispatcher has it */
        return r->d.queued == 1 || r->d.in_queue ? F_DEFERRED : F_UNAVAILABLE;   /* a full queue: not taken */
    return F_DENIED;
}

/* Each recipient's outcome, by where it stood in the request. */
static json_t *outcomes(const struct route_call *c)
{
    json_t *list = json_array();
    for (size_t k = 0; k < c->rr.n; k++) {
        const struct rcpt *r = &c->r[k];
        json_t *o;
        enum fate f = fate_of(r);
        if (f == F_UNAVAILABLE) {
            o = json_pack("{s:s, s:s}", "decision", "unavailable", "reason",
                          r->status == DECIDE_UNAVAILABLE ? "store_unavailable" : "queue_full");
        } else if (r->held) {
            o = json_pack("{s:s, s:s, s:b, s:I}", "decision", c->held_queued ? "defer" : "deny",
                          "reason", shape_reason(c->held_why),
                          "replay", 0, "retry_after", (json_int_t)((c->held_ms + 999) / 1000));
        } else {
            o = json_pack("{s:s, s:s, s:b}", "decision",
                          r->collateral ? "dropped" : decision_outcome_name(r->d.outcome),
                          "reason", r->collateral ? "personalization_removed"
                                                  : decision_reason_name(r->d.reason),
                          "replay", r->d.replay);
            const char *rule = decision_rule_name(c->cfg, r->d.rule);
            if (rule)
                json_object_set_new(o, "rule", json_string(rule));
            if (r->d.outcome == OUTCOME_DEFER)
                json_object_set_new(o, "retry_after", json_integer(r->d.retry_after_s));
        }
        json_object_set_new(o, "recipient", json_string(c->rr.rcpt[k].where));
        json_array_append_new(list, o);
    }
    return list;
}

static void count_fates(const struct route_call *c, size_t *sent, size_t *deferred,
                        size_t *denied)
{
    *sent = *deferred = *denied = 0;
    for (size_t k = 0; k < c->rr.n; k++) {
        enum fate f = fate_of(&c->r[k]);
        if (c->r[k].forwarded)
            (*sent)++;
        else if (f == F_DEFERRED || (c->r[k].held && c->held_queued))
            (*deferred)++;
        else if (f != F_REPLAYED)
            (*denied)++;
    }
}

/* ---- answers ---------------------------------------------------------------------- */

/* Nothing went upstream: capgate answers for every recipient. */
static void reply_nothing_sent(struct route_call *c)
{
    struct loop *l = c->loop;
    bool unavailable = false, deferred = false, capped = false;
    int64_t retry = 0;
    for (size_t k = 0; k < c->rr.n; k++) {
        const struct rcpt *r = &c->r[k];
        enum fate f = fate_of(r);
        unavailable |= f == F_UNAVAILABLE;
        deferred |= f == F_DEFERRED;
        if (f == F_DENIED && r->d.reason == REASON_CAP) {
            capped = true;
            if (r->d.retry_after_s * 1000 <= c->cfg->max_defer_ms && r->d.retry_after_s > retry)
                retry = r->d.retry_after_s;
        }
    }
    bool held = false;
    for (size_t k = 0; k < c->rr.n; k++)
        held |= c->r[k].held;
    if (held && c->held_queued)
        deferred = true;
    else if (held) {
        capped = true;                   /* over_rate: reject -- 429 with when */
        if ((c->held_ms + 999) / 1000 > retry)
            retry = (c->held_ms + 999) / 1000;
    }
    json_t *body = json_pack("{s:s, s:o}", "message_id", c->rr.message_id, "recipients",
                             outcomes(c));
    char after[24];
    snprintf(after, sizeof after, "%lld", (long long)(retry > 0 ? retry : 1));
    const char *const retry_hdr[] = { "Retry-After", after, NULL };
    if (unavailable) {
        /* Nothing is lost by a retry (each recipient is idempotent), and
         * what did not happen is said: 503. */
        json_object_set_new(body, "error", json_pack("{s:s, s:s}", "code", "store_unavailable",
                            "message", "some recipients could not be decided; retry with the "
                            "same message id"));
        COUNTER_INC(l->metrics.errors[API_STORE_UNAVAILABLE]);
        reply_json_headers(l, c->req, 503, body, retry_hdr);
    } else if (deferred) {
        json_object_set_new(body, "decision", json_string("defer"));
        reply_json(l, c->req, 202, body);
    } else if (capped) {
        json_object_set_new(body, "decision", json_string("deny"));
        reply_json_headers(l, c->req, 429, body, retry > 0 ? retry_hdr : NULL);
    } else {
        json_object_set_new(body, "decision", json_string("deny"));
        reply_json(l, c->req, 403, body);
    }
    call_free(c);
}

/* Every recipient was sent before and acknowledged: the upstream's first
 * answer again, when it was kept (else capgate's own). */
static void reply_replay(struct route_call *c)
{
    struct loop *l = c->loop;
    struct kept_answer a;
    if (c->first_answer &&
        delivery_answer_open(c->first_answer, c->first_answer_len, l->pseudonym, &a) == 0) {
        const char *hdrs[2 * ROUTE_REPLAY_HEADERS_MAX + 8];
        size_t nh = 0;
        const char *ctype = NULL;
        size_t k;
        json_t *pair;
        json_array_foreach(a.headers, k, pair) {
            const char *name = json_string_value(json_array_get(pair, 0));
            const char *value = json_string_value(json_array_get(pair, 1));
            if (!name || !value)
                continue;
            if (strcasecmp(name, "Content-Type") == 0)
                ctype = value;
            else if (nh + 4 < sizeof hdrs / sizeof hdrs[0]) {
                hdrs[nh++] = name;
                hdrs[nh++] = value;
            }
        }
        hdrs[nh++] = "X-Capgate-Replay";
        hdrs[nh++] = "true";
        hdrs[nh] = NULL;
        COUNTER_INC(l->metrics.replays);
        reply_text(l, c->req, (unsigned)a.status, ctype, a.body, a.body_len, hdrs);
        delivery_answer_clear(&a);
        call_free(c);
        return;
    }
    static const char *const replay_hdr[] = { "X-Capgate-Replay", "true", NULL };
    json_t *body = json_pack("{s:s, s:s, s:b, s:o}", "decision", "allow", "message_id",
                             c->rr.message_id, "replay", 1, "recipients", outcomes(c));
    reply_json_headers(l, c->req, 200, body, replay_hdr);
    call_free(c);
}

/* The upstream's answer, as it came, with what capgate did. */
static void reply_as_upstream(struct route_call *c, const struct upstream_response *r,
                              bool refused)
{
    const char *hdrs[150];
    char *owned[64];
    size_t n_owned;
    const char *ctype;
    size_t nh = 2 * delivery_pass_headers(r, hdrs, 140, owned, &n_owned, &ctype);
    size_t sent, deferred, denied;
    count_fates(c, &sent, &deferred, &denied);
    char a[24], d[24], n[24];
    *text_dec(a, sent) = '\0';
    *text_dec(d, deferred) = '\0';
    *text_dec(n, denied) = '\0';
    hdrs[nh++] = "X-Capgate-Allowed";
    hdrs[nh++] = a;
    hdrs[nh++] = "X-Capgate-Deferred";
    hdrs[nh++] = d;
    hdrs[nh++] = "X-Capgate-Denied";
    hdrs[nh++] = n;
    if (refused) {
        /* A refusal released the sends (or, with Redis away, they wait to be
         * delivered again: then capgate cannot say released). */
        hdrs[nh++] = "X-Capgate-Released";
        hdrs[nh++] = c->released_all ? "true" : "false";
    }
    hdrs[nh] = NULL;
    reply_text(c->loop, c->req, (unsigned)r->http_status, ctype, r->body, r->body_len, hdrs);
    for (size_t k = 0; k < n_owned; k++)
        free(owned[k]);
}

/* capgate's own failure reaching the upstream: 502, or 504 for a timeout. */
static void reply_upstream_failure(struct route_call *c, const struct upstream_response *r)
{
    enum api_error e = r->timed_out ? API_UPSTREAM_TIMEOUT : API_UPSTREAM_FAILED;
    reply_error(c->loop, c->req, e, NULL, "the %s upstream %s (%s); the sends were %s",
                c->route->channel, r->timed_out ? "did not answer in time" : "failed",
                r->error ? r->error : "no answer",
                c->released_all ? "released" : "kept to be delivered again");
}

/* ---- after the upstream answered -------------------------------------------------- */

static void finish_refused(struct route_call *c)
{
    const struct upstream_response *r = c->up;
    if (!r) {                            /* no copy of the answer: out of memory */
        reply_error(c->loop, c->req, API_INTERNAL, NULL, "out of memory");
        call_free(c);
        return;
    }
    if (r->status == UPSTREAM_OK)
        reply_as_upstream(c, r, true);
    else
        reply_upstream_failure(c, r);
    free((char *)r->body);
    for (size_t k = 0; k < r->n_headers; k++)
        free((char *)r->headers[k]);
    free((void *)r->headers);
    free(c->up);
    call_free(c);
}

static void on_abandoned(void *arg, const struct store_reply *r)
{
    struct rcpt *rc = arg;
    struct route_call *c = rc->rc;
    if (r->status != STORE_OK)
        c->released_all = false;
    if (--c->pending == 0)
        finish_refused(c);
}

/* Keeps a copy of R (the callback's is gone after it returns). */
static struct upstream_response *copy_response(const struct upstream_response *r)
{
    struct upstream_response *cp = calloc(1, sizeof *cp);
    if (!cp)
        return NULL;
    *cp = *r;
    char *body = r->body ? malloc(r->body_len + 1) : NULL;
    if (r->body && !body) {
        free(cp);
        return NULL;
    }
    if (body) {
        memcpy(body, r->body, r->body_len);          /* (bytes: NULs too) */
        body[r->body_len] = '\0';
    }
    cp->body = body;
    const char **h = calloc(r->n_headers + 1, sizeof *h);
    for (size_t k = 0; h && k < r->n_headers; k++)
        h[k] = strdup(r->headers[k]);
    cp->headers = h;
    cp->n_headers = h ? r->n_headers : 0;
    cp->error = r->error;                /* a static string */
    return cp;
}

/* Releases and unqueues RC (not delivered).  PENDING counts it. */
static void abandon(struct route_call *c, struct rcpt *rc)
{
    if (rc->status == DECIDE_FAILED_OPEN)
        return;                          /* nothing was recorded or queued */
    c->pending++;
    if (delivery_abandon(c->loop->store, c->cfg, rc->user, rc->message, on_abandoned, rc) != 0) {
        c->pending--;
        c->released_all = false;
    }
}

/* ---- held back by the upstream's rate or pause (shape.h) ------------------------- */

static void on_held_done(void *arg, const struct store_reply *r)
{
    struct rcpt *rc = arg;
    struct route_call *c = rc->rc;
    if (r->status != STORE_OK)
        c->released_all = false;
    if (--c->pending == 0) {
        if (!c->released_all) {
            /* Redis did not take some of it: those copies wait under their
             * leases and will be delivered -- saying "not sent" would lie. */
            c->held_queued = true;
        }
        reply_nothing_sent(c);
    }
}

/* Every forwarded recipient goes back to the queue for the slot (202), or
 * -- over_rate: reject, or a slot beyond max_defer -- is released (429). */
static void held(struct route_call *c, const struct forward_result *f)
{
    struct loop *l = c->loop;
    const struct cfg_channel *ch = config_channel(c->cfg, c->route->channel);
    bool queue = f->r ? ch && ch->upstream.over_rate == OVER_RATE_QUEUE &&
                        f->held_ms <= c->cfg->max_defer_ms
                      : f->reserved;
    c->held_ms = f->held_ms;
    c->held_why = f->why;
    c->held_queued = queue;
    c->released_all = true;
    c->pending = 1;                      /* held until every call is asked */
    for (size_t k = 0; k < c->rr.n; k++) {
        struct rcpt *rc = &c->r[k];
        if (!rc->forwarded)
            continue;
        rc->forwarded = false;
        rc->held = true;
        metrics_count_delivery(&l->metrics, c->route->channel,
                               !queue ? "over_rate" : f->r ? "pushed_back"
                               : shape_held_outcome(f->why));
        c->pending++;
        int rcode = queue ? delivery_requeue(l->store, c->cfg, rc->user, rc->message,
                                             f->held_ms, on_held_done, rc)
                          : delivery_abandon(l->store, c->cfg, rc->user, rc->message,
                                             on_held_done, rc);
        if (rcode != 0) {
            c->pending--;
            c->released_all = false;
        } else if (queue) {
            loop_queued(l, decision_tag(rc->user), (uint64_t)f->held_ms);
        }
    }
    struct store_reply done = { .status = c->released_all ? STORE_OK : STORE_UNAVAILABLE };
    on_held_done(&c->r[0], &done);
}

static void on_forwarded(void *arg, const struct forward_result *fr)
{
    struct route_call *c = arg;
    struct loop *l = c->loop;
    if (fr->held_ms > 0) {
        held(c, fr);
        return;
    }
    const struct upstream_response *r = fr->r;
    bool ok = r->status == UPSTREAM_OK && r->http_status >= 200 && r->http_status < 300;

    for (size_t k = 0; k < c->rr.n; k++)
        if (c->r[k].forwarded)
            metrics_count_delivery(&l->metrics, c->route->channel, ok ? "delivered" : "failed");
    if (ok) {
        /* Every forwarded recipient leaves the queue; the first keeps the
         * answer, so that a retry of the whole request gets it again. */
        char *first = NULL;
        size_t first_len = 0;
        bool kept = false;
        for (size_t k = 0; k < c->rr.n; k++) {
            struct rcpt *rc = &c->r[k];
            if (!rc->forwarded || rc->status == DECIDE_FAILED_OPEN)
                continue;
            if (!kept)
                first = delivery_answer_seal(r, c->route->replay_headers,
                                             c->route->n_replay_headers, l->pseudonym,
                                             &first_len);
            delivery_ack(l->store, c->cfg, rc->user, rc->message, !rc->d.replay,
                         kept ? NULL : first,
                         !kept && first ? first_len : 0);
            breaker_count(l->breaker, c->rr.campaign, BREAKER_SEND);
            kept = true;
        }
        free(first);
        reply_as_upstream(c, r, false);
        call_free(c);
        return;
    }
    log_info("upstream refused", "channel=%s status=%ld error=%s", c->route->channel,
             r->http_status, r->error ? r->error : "");
    /* Not delivered: the sends must not count, and nothing may deliver them
     * later; the answer waits for that. */
    c->up = copy_response(r);
    c->released_all = true;
    c->pending = 1;                      /* held until every abandon is asked */
    for (size_t k = 0; k < c->rr.n; k++)
        if (c->r[k].forwarded)
            abandon(c, &c->r[k]);
    if (--c->pending == 0)
        finish_refused(c);
}

/* ---- after the decisions ---------------------------------------------------------- */

static void on_collateral_abandoned(void *arg, const struct store_reply *r)
{
    (void)arg; (void)r;   /* failing, the copy waits for its lease and is delivered alone */
}

/* The unsubscribe links of the recipients KEEP names, when the route puts
 * List-Unsubscribe headers in the body (unsubscribe_headers): the scope is
 * the route's channel and the request's category.  NULL when it does not
 * (or out of memory: the body then goes without them, as without the
 * setting). */
struct links {
    size_t n;
    char (*url)[UNSUBSCRIBE_URL_MAX];
    const char **of;                  /* per recipient: url[k] or NULL */
};

static void links_free(struct links *ln)
{
    if (ln) {
        free(ln->url);
        free(ln->of);
        free(ln);
    }
}

static struct links *links_for(struct route_call *c, const bool *keep)
{
    size_t n = c->rr.n;
    if (!c->route->unsubscribe_headers || !c->cfg->public.enabled || !n)
        return NULL;
    struct links *ln = calloc(1, sizeof *ln);
    if (!ln || !(ln->url = calloc(n, sizeof *ln->url)) || !(ln->of = calloc(n, sizeof *ln->of))) {
        links_free(ln);
        return NULL;
    }
    time_t now = time(NULL);
    for (size_t k = 0; k < n; k++)
        if (keep[k] && token_link(c->loop->pseudonym, c->cfg, c->r[k].user, c->route->channel,
                                  c->rr.cat->name, now, ln->url[k], sizeof ln->url[k]) == 0)
            ln->of[k] = ln->url[k];
    return ln;
}

static void decided_all(struct route_call *c)
{
    struct loop *l = c->loop;
    size_t n = c->rr.n, sending = 0, replayed = 0;
    bool *keep = calloc(n, sizeof *keep), *sent = calloc(n, sizeof *sent);
    if (!keep || !sent) {
        free(keep);
        free(sent);
        reply_error(l, c->req, API_INTERNAL, NULL, "out of memory");
        call_free(c);
        return;
    }
    for (size_t k = 0; k < n; k++) {
        enum fate f = fate_of(&c->r[k]);
        keep[k] = f == F_SEND;
        sending += keep[k];
        replayed += f == F_REPLAYED;
    }
    bool failed = false;
    size_t len = c->body_len;
    if (sending) {
        struct links *ln = links_for(c, keep);
        c->sent_body = request_route_body(&c->rr, c->body, c->body_len, keep, true, sent, &len,
                                          &failed, ln ? ln->of : NULL);
        links_free(ln);
        if (failed) {
            /* A recipient that is not allowed cannot be cut out (a header,
             * a pointer without "*"): nobody goes. */
            for (size_t k = 0; k < n; k++)
                sent[k] = false;
        }
    }
    size_t going = 0;
    for (size_t k = 0; k < n; k++) {
        struct rcpt *rc = &c->r[k];
        rc->forwarded = sent[k];
        going += sent[k];
        if (keep[k] && !sent[k]) {
            /* Allowed, but it cannot go in this request: the send is undone. */
            rc->collateral = true;
            if (rc->status != DECIDE_FAILED_OPEN)
                delivery_abandon(l->store, c->cfg, rc->user, rc->message,
                                 on_collateral_abandoned, NULL);
        }
    }
    free(keep);
    free(sent);
    if (going == 0) {
        if (replayed == n)
            reply_replay(c);
        else
            reply_nothing_sent(c);
        return;
    }
    c->out = (struct message){
        .route = true, .message_id = c->rr.message_id, .channel = c->route->channel,
        .campaign = c->rr.campaign[0] ? c->rr.campaign : NULL,
        .method = c->method, .query = c->query, .headers = c->headers,
        .body = c->sent_body ? c->sent_body : c->body,
        .body_len = c->sent_body ? len : c->body_len,
        .priority = c->rr.cat->priority,
    };
    unsigned flags = 0;
    const struct cfg_channel *ch = config_channel(c->cfg, c->route->channel);
    if (ch && ch->upstream.over_rate == OVER_RATE_QUEUE)
        flags |= FORWARD_RESERVE;
    for (size_t k = 0; k < n; k++)
        if (c->r[k].forwarded && c->r[k].status == DECIDE_FAILED_OPEN)
            flags |= FORWARD_UNSHAPED;
    delivery_send(l->upstreams, l->store, c->cfg, l->tz, &c->out, flags, on_forwarded, c);
}

static void on_decided(void *arg, const struct decide_result *res)
{
    struct rcpt *r = arg;
    struct route_call *c = r->rc;
    r->status = res->status;
    r->d = res->decision;
    if (res->first_answer && !c->first_answer &&
        (c->first_answer = malloc(res->first_answer_len + 1))) {
        memcpy(c->first_answer, res->first_answer, res->first_answer_len);
        c->first_answer_len = res->first_answer_len;
    }
    if (res->status != DECIDE_UNAVAILABLE && r->d.outcome == OUTCOME_DEFER)
        metrics_count_delivery(&c->loop->metrics, c->route->channel,
                               r->d.queued == 1 ? "deferred" : "queue_full");
    if (--c->pending == 0)
        decided_all(c);
}

/* ---- the request ---------------------------------------------------------------- */

struct header_list {
    json_t *arr;
};

static void keep_header(void *arg, const char *name, const char *value)
{
    struct header_list *h = arg;
    /* Authorization belongs to the campaign API (capgate's own token comes
     * as X-Capgate-Token, which is hop-by-hop here). */
    if (delivery_hop_by_hop(name))
        return;
    /* (Not json_pack: reading its format was most of a header's cost.) */
    json_t *pair = json_array();
    if (pair && json_array_append_new(pair, json_string(name)) == 0 &&
        json_array_append_new(pair, json_string(value)) == 0 && json_array_size(pair) == 2)
        json_array_append_new(h->arr, pair);
    else
        json_decref(pair);
}

static const char *route_header(void *ctx, const char *name)
{
    return http_header(ctx, name);
}

/* Recipient K's copy of the request, sealed, ready to queue: the body with
 * K alone (the request itself when it names nobody else), its own
 * Idempotency-Key (the request's, plus a suffix of K's pseudonym, when it
 * names several). */
static char *recipient_blob(struct route_call *c, size_t k, size_t *blob_len)
{
    struct rcpt *r = &c->r[k];
    size_t n = c->rr.n, len = c->body_len;
    bool failed = false;
    char *alone = NULL;
    char mid[REQ_MESSAGE_ID_MAX + 12];
    text_copy(mid, sizeof mid, c->rr.message_id);
    if (n > 1) {
        bool *keep = calloc(n, sizeof *keep);
        if (!keep)
            return NULL;
        keep[k] = true;
        struct links *ln = links_for(c, keep);
        alone = request_route_body(&c->rr, c->body, c->body_len, keep, false, NULL, &len,
                                   &failed, ln ? ln->of : NULL);
        links_free(ln);
        free(keep);
        snprintf(mid, sizeof mid, "%s-%.8s", c->rr.message_id, r->user);
    }
    struct message m = {
        .route = true, .user = r->user, .message = r->message, .message_id = mid,
        .channel = c->route->channel, .category = c->rr.cat->name,
        .campaign = c->rr.campaign[0] ? c->rr.campaign : NULL, .method = c->method,
        .query = c->query, .headers = c->headers,
        .body = alone ? alone : c->body, .body_len = alone ? len : c->body_len,
    };
    char *blob = failed && n > 1 ? NULL : delivery_blob(&m, c->loop->pseudonym, blob_len);
    free(alone);
    return blob;
}

static void on_moved(void *arg, bool ok);
static void decide_recipients(struct route_call *c);

void api_route(struct loop *l, struct http_request *req, const struct cfg_route *route)
{
    struct field_error e;
    size_t body_len;
    const char *body = http_body(req, &body_len);
    struct route_call *c = calloc(1, sizeof *c);
    struct header_list hl = { json_array() };
    if (!c || !hl.arr || !(c->body = malloc(body_len + 1)) ||
        !(c->method = strdup(http_method(req))) || !(c->query = strdup(http_raw_query(req)))) {
        json_decref(hl.arr);
        if (c)
            call_free(c);
        reply_error(l, req, API_INTERNAL, NULL, "out of memory");
        return;
    }
    memcpy(c->body, body, body_len);
    c->body[body_len] = '\0';
    c->body_len = body_len;
    c->loop = l;
    c->req = req;
    c->cfg = config_retain(l->cfg);
    c->route = route;
    http_headers_foreach(req, keep_header, &hl);
    c->headers = hl.arr;
    if (request_route(c->cfg, route, c->body, c->body_len, route_header, req, &c->rr, &e) != 0) {
        reply_field_error(l, req, &e);
        call_free(c);
        return;
    }
    size_t n = c->rr.n;
    if (!(c->r = calloc(n, sizeof *c->r))) {
        reply_error(l, req, API_INTERNAL, NULL, "out of memory");
        call_free(c);
        return;
    }
    /* Pseudonyms and copies first (the raw ids end here), then the
     * decisions, which may answer at once (Redis away). */
    for (size_t k = 0; k < n; k++) {
        struct rcpt *r = &c->r[k];
        r->rc = c;
        pseudonym_user(l->pseudonym, c->rr.rcpt[k].id, c->rr.rcpt[k].id_len, r->user);
        pseudonym_message(l->pseudonym, c->rr.message_id, strlen(c->rr.message_id), r->message);
        if (!(r->blob = recipient_blob(c, k, &r->blob_len))) {
            reply_error(l, req, API_INTERNAL, NULL, "out of memory");
            call_free(c);
            return;
        }
    }
    http_note_user(req, c->r[0].user);
    /* During a key rotation every recipient's records move first (rotation.h). */
    if (pseudonym_rotating(l->pseudonym)) {
        c->moving = 1;                /* held until every move started */
        for (size_t k = 0; k < n; k++) {
            struct rcpt *r = &c->r[k];
            pseudonym_user_previous(l->pseudonym, c->rr.rcpt[k].id, c->rr.rcpt[k].id_len,
                                    r->old_user);
            c->moving++;
            if (rotation_move(l, r->old_user, r->user, on_moved, c) != 0) {
                c->moving--;
                c->move_failed = true;
                break;
            }
        }
        c->moving--;
        on_moved(c, true);
        return;
    }
    decide_recipients(c);
}

/* One recipient's records moved (or not); the last one decides them all. */
static void on_moved(void *arg, bool ok)
{
    struct route_call *c = arg;
    c->move_failed = c->move_failed || !ok;
    if (--c->moving > 0)
        return;
    if (c->move_failed || c->loop->cfg != c->cfg) {
        /* Deciding without the records of before the rotation could allow
         * a message to someone who opted out: nothing happened, retry. */
        reply_error(c->loop, c->req, API_STORE_UNAVAILABLE, NULL,
                    "the decision store is unavailable (%s); retry later",
                    c->move_failed ? "key rotation" : "the configuration was reloaded");
        call_free(c);
        return;
    }
    decide_recipients(c);
}

static void decide_recipients(struct route_call *c)
{
    struct loop *l = c->loop;
    struct http_request *req = c->req;
    const struct cfg_route *route = c->route;
    size_t n = c->rr.n;
    const struct cfg_channel *ch = config_channel(c->cfg, route->channel);
    struct decide_request *rqs = calloc(n, sizeof *rqs);
    struct enqueue *qs = calloc(n, sizeof *qs);
    struct decide_op **ops = calloc(n, sizeof *ops);
    void **args = calloc(n, sizeof *args);
    if (!rqs || !qs || !ops || !args) {
        free(rqs);
        free(qs);
        free(ops);
        free(args);
        reply_error(l, req, API_INTERNAL, NULL, "out of memory");
        call_free(c);
        return;
    }
    for (size_t k = 0; k < n; k++) {
        struct rcpt *r = &c->r[k];
        qs[k] = (struct enqueue){ .blob = r->blob, .blob_len = r->blob_len,
                                  .priority = c->rr.cat->priority, .first_answer = true };
        rqs[k] = (struct decide_request){ .channel = ch, .category = c->rr.cat,
                                          .campaign = c->rr.campaign[0] ? c->rr.campaign : NULL,
                                          .enqueue = &qs[k], .road = DECIDE_ROUTE };
        memcpy(rqs[k].user, r->user, sizeof rqs[k].user);
        memcpy(rqs[k].message, r->message, sizeof rqs[k].message);
        ops[k] = &r->op;
        args[k] = r;
    }
    /* One Redis call per DECIDE_GROUP_MAX recipients (per hash tag on a
     * Cluster); they may answer at once (Redis away): PENDING holds on. */
    c->pending = n + 1;
    decide_start_group(l, n, ops, rqs, on_decided, args);
    free(rqs);
    free(qs);
    free(ops);
    free(args);
    if (--c->pending == 0)
        decided_all(c);
}

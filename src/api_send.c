/*
 * api_send: proxy mode.
 *   POST /v1/send   the decide fields plus "payload" (forwarded as the body),
 *                   "collapse_key"?, "priority"? (0..9)
 *   routes          any request to a configured path: the recipient and the
 *                   rest are read from the body (JSON pointer) or a header,
 *                   and the request is forwarded as it came
 * allow: forwarded at once (upstream 2xx: 200; else the send is released
 * and the answer is 502); defer: queued in the same script that decided
 * (202, delivered later by the dispatcher); deny: 429 for a cap, 403 else.
 *
 * Nothing accepted is lost.  The script that allows a message also leaves it
 * in the deferred queue under a lease (decide.lua), where it waits while it
 * is forwarded: the upstream's 2xx removes it (an ack); a refusal releases
 * the send and removes it in one step (release.lua); and if this gateway
 * dies in between, the lease runs out and another gateway's dispatcher
 * delivers it.  A client retry of an allowed message whose delivery was
 * never acknowledged is forwarded again (decision.resend).
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
#include "capgate/rotation.h"
#include "capgate/reply.h"
#include "capgate/requests.h"
#include "capgate/store.h"
#include "capgate/textbuf.h"
#include "capgate/token.h"
#include "capgate/upstream.h"

struct send_call {
    struct decide_op op;
    struct loop *loop;
    struct http_request *req;
    const struct config *cfg;     /* the decision's (retained) */
    struct message m;             /* fields point into owned strings below */
    char *blob;                   /* sealed, binary (delivery_blob) */
    size_t blob_len;
    char user[PSEUDONYM_USER_HEX + 1];
    char message[PSEUDONYM_SHORT_HEX + 1];
    char message_id[REQ_MESSAGE_ID_MAX + 1];
    char channel[CONFIG_NAME_MAX + 1], category[CONFIG_NAME_MAX + 1];
    char *campaign, *tz, *method, *query;
    struct decision d;
    bool failed_open;             /* decided without Redis: nothing recorded or queued */
    /* During a key rotation the decision waits for the person's records to
     * move (rotation.h): what it needs is kept here meanwhile. */
    const struct config *rot_cfg;             /* the one CH and CAT are of */
    const struct cfg_channel *ch;
    const struct cfg_category *cat;
    int priority;
    char *collapse;
    enum decide_road road;
};

static void call_free(struct send_call *c)
{
    if (c->cfg)
        config_release(c->cfg);
    free(c->m.body);
    json_decref(c->m.headers);
    free(c->blob);
    free(c->campaign);
    free(c->tz);
    free(c->method);
    free(c->query);
    free(c->collapse);
    free(c);
}

static bool valid_utf8(const char *s, size_t n)
{
    json_t *j = json_stringn(s, n);      /* jansson checks it */
    json_decref(j);
    return j != NULL;
}

static json_t *decision_body(const struct send_call *c)
{
    const struct decision *d = &c->d;
    json_t *o = json_pack("{s:s, s:s, s:s}", "decision", decision_outcome_name(d->outcome),
                          "reason", decision_reason_name(d->reason), "message_id", c->message_id);
    const char *rule = decision_rule_name(c->cfg, d->rule);
    if (rule)
        json_object_set_new(o, "rule", json_string(rule));
    json_object_set_new(o, "replay", json_boolean(d->replay));
    return o;
}

/* The 200 of a send that went (UPSTREAM_STATUS, the upstream's 2xx), or
 * had gone (0: a replay): decision_body's fields and, with a public
 * section, the person's link for this channel and category.  Written
 * directly, as decide's answer is: jansson here was a tenth of a send. */
static void reply_sent(struct send_call *c, long upstream_status)
{
    struct textbuf t = { 0 };
    textbuf_puts(&t, "{");
    decision_json_fields(&t, c->cfg, &c->d, c->message_id);
    token_link_field(&t, c->loop->pseudonym, c->cfg, c->user, c->channel, c->category);
    if (upstream_status >= 100 && upstream_status <= 999) {      /* an HTTP status: 3 digits */
        char num[] = ",\"upstream_status\":000";
        size_t n = sizeof num - 1;
        num[n - 3] = (char)('0' + upstream_status / 100);
        num[n - 2] = (char)('0' + upstream_status / 10 % 10);
        num[n - 1] = (char)('0' + upstream_status % 10);
        textbuf_put(&t, num, n);
    }
    textbuf_puts(&t, "}\n");
    if (t.failed)
        reply_error(c->loop, c->req, API_INTERNAL, NULL, "out of memory");
    else
        reply_text(c->loop, c->req, 200, "application/json", t.buf, t.len, NULL);
    free(t.buf);
}

/* ---- after the upstream answered ------------------------------------------------ */

/* What the upstream said when it refused, for the caller. */
struct refusal {
    long http_status;             /* 0: no answer */
    bool timed_out;
    char error[160];
    char *body;                   /* the first 4 KiB of the upstream's answer (malloc'ed) */
    size_t body_len;
};

static void reply_refused(struct send_call *c, const struct refusal *f, bool released)
{
    struct loop *l = c->loop;
    json_t *body = decision_body(c);
    if (f->http_status)
        json_object_set_new(body, "upstream_status", json_integer(f->http_status));
    if (!released) {
        /* The send could not be released (Redis is away): the message is
         * still queued under its lease, and the dispatcher delivers it when
         * the lease runs out.  Saying 502 would be a lie. */
        char when[32];
        clock_format_rfc3339(when, sizeof when, time(NULL) + c->cfg->delivery.lease_ms / 1000);
        json_object_set_new(body, "delivery", json_string("retrying"));
        json_object_set_new(body, "deliver_at", json_string(when));
        metrics_count_delivery(&l->metrics, c->channel, "retried");
        reply_json(l, c->req, 202, body);
        return;
    }
    char msg[320];
    enum api_error code = f->timed_out ? API_UPSTREAM_TIMEOUT : API_UPSTREAM_FAILED;
    if (f->http_status)
        snprintf(msg, sizeof msg, "the %s upstream answered %ld; the send was released",
                 c->channel, f->http_status);
    else
        snprintf(msg, sizeof msg, "the %s upstream %s (%s); the send was released",
                 c->channel, f->timed_out ? "did not answer in time" : "failed", f->error);
    json_object_set_new(body, "error", json_pack("{s:s, s:s}", "code", api_error_code(code),
                                                 "message", msg));
    /* The upstream's own words: a 401's errors[] tells a developer more than 502. */
    if (f->body_len)
        json_object_set_new(body, "upstream_body", json_stringn_nocheck(f->body, f->body_len));
    COUNTER_INC(l->metrics.errors[code]);
    reply_json(l, c->req, api_error_status(code), body);
}

/* ---- held back by the upstream's rate or pause (shape.h) ------------------------- */

/* over_rate: reject (or a slot beyond max_defer): released, and 429. */
static void reply_over_rate(struct send_call *c, int64_t held_ms, enum shape_why why)
{
    struct loop *l = c->loop;
    int64_t s = (held_ms + 999) / 1000;
    json_t *body = json_pack("{s:s, s:s, s:s, s:b, s:I}", "decision", "deny", "reason",
                             shape_reason(why), "message_id", c->message_id, "replay", 0,
                             "retry_after", (json_int_t)s);
    json_object_set_new(body, "error", json_pack("{s:s, s:s}", "code",
                        api_error_code(API_OVER_RATE), "message",
                        why == SHAPE_PAUSED ? "the upstream is paused (it pushed back); the "
                        "send was released: retry after Retry-After"
                        : why == SHAPE_WARMUP ? "the upstream's warm-up ceiling for today is "
                        "reached; the send was released: retry after Retry-After"
                        : why == SHAPE_THROTTLE ? "over the campaign's send rate; the send was "
                        "released: retry after Retry-After"
                        : "over the upstream's send rate; the send was released: retry after "
                        "Retry-After"));
    char after[24];
    snprintf(after, sizeof after, "%lld", (long long)(s > 0 ? s : 1));
    const char *const retry[] = { "Retry-After", after, NULL };
    metrics_count_delivery(&l->metrics, c->channel, "over_rate");
    COUNTER_INC(l->metrics.errors[API_OVER_RATE]);
    reply_json_headers(l, c->req, 429, body, retry);
}

struct abandon_call {
    struct send_call *c;
    struct refusal f;
    int64_t held_ms;             /* > 0: held back, not refused */
    enum shape_why why;
};

static void on_abandoned(void *arg, const struct store_reply *r)
{
    struct abandon_call *a = arg;
    if (a->held_ms > 0 && r->status == STORE_OK)
        reply_over_rate(a->c, a->held_ms, a->why);
    else
        reply_refused(a->c, &a->f, r->status == STORE_OK);
    call_free(a->c);
    free(a->f.body);
    free(a);
}

struct requeue_call {
    struct send_call *c;
    int64_t held_ms;
    enum shape_why why;
    bool pushed_back;
};

static void on_requeued(void *arg, const struct store_reply *r)
{
    struct requeue_call *q = arg;
    struct send_call *c = q->c;
    struct loop *l = c->loop;
    if (r->status != STORE_OK) {
        struct refusal f = { .error = "held back" };
        reply_refused(c, &f, false);         /* it waits under its lease: 202 */
    } else {
        metrics_count_delivery(&l->metrics, c->channel,
                               q->pushed_back ? "pushed_back" : shape_held_outcome(q->why));
        loop_queued(l, decision_tag(c->user), (uint64_t)q->held_ms);
        int64_t s = (q->held_ms + 999) / 1000;
        json_t *body = json_pack("{s:s, s:s, s:s, s:b}", "decision", "defer", "reason",
                                 shape_reason(q->why), "message_id", c->message_id, "replay", 0);
        char when[32];
        clock_format_rfc3339(when, sizeof when, time(NULL) + s);
        json_object_set_new(body, "deliver_at", json_string(when));
        json_object_set_new(body, "retry_after", json_integer(s));
        reply_json(l, c->req, 202, body);
    }
    call_free(c);
    free(q);
}

/* The upstream's rate (or its pause) holds the message: queued for its
 * slot (202), or -- over_rate: reject, or a slot beyond max_defer --
 * released and refused (429).  Either way the answer waits for Redis. */
static void held(struct send_call *c, const struct forward_result *f)
{
    bool queue = f->reserved;
    const struct cfg_channel *ch = config_channel(c->cfg, c->channel);
    if (f->r)        /* a pushback: queued unless the caller wants to hear it */
        queue = ch && ch->upstream.over_rate == OVER_RATE_QUEUE &&
                f->held_ms <= c->cfg->max_defer_ms;
    if (queue) {
        struct requeue_call *q = calloc(1, sizeof *q);
        if (q) {
            *q = (struct requeue_call){ .c = c, .held_ms = f->held_ms, .why = f->why,
                                        .pushed_back = f->r != NULL };
            if (delivery_requeue(c->loop->store, c->cfg, c->user, c->message, f->held_ms,
                                 on_requeued, q) == 0)
                return;
            struct store_reply fail = { .status = STORE_UNAVAILABLE };
            on_requeued(q, &fail);
            return;
        }
    }
    struct abandon_call *a = calloc(1, sizeof *a);
    if (!a) {
        struct refusal f0 = { .error = "out of memory" };
        reply_refused(c, &f0, false);
        call_free(c);
        return;
    }
    *a = (struct abandon_call){ .c = c, .held_ms = f->held_ms, .why = f->why };
    snprintf(a->f.error, sizeof a->f.error, "held back");
    if (delivery_abandon(c->loop->store, c->cfg, c->user, c->message, on_abandoned, a) != 0) {
        struct store_reply fail = { .status = STORE_UNAVAILABLE };
        on_abandoned(a, &fail);
    }
}

/* Not delivered: the send must not use up the person's allowance, and
 * nothing may deliver it later.  The answer waits for that. */
static void abandon(struct send_call *c, const struct upstream_response *r)
{
    struct refusal f = { .http_status = r->status == UPSTREAM_OK ? r->http_status : 0,
                         .timed_out = r->timed_out };
    snprintf(f.error, sizeof f.error, "%s", r->error ? r->error : "no answer");
    if (r->status == UPSTREAM_OK && r->body_len && valid_utf8(r->body, r->body_len)) {
        f.body_len = r->body_len < 4096 ? r->body_len : 4096;
        while (f.body_len < r->body_len && f.body_len && ((unsigned char)r->body[f.body_len] & 0xc0) == 0x80)
            f.body_len--;                /* not in the middle of a character */
        f.body = strndup(r->body, f.body_len);
        if (!f.body)
            f.body_len = 0;
    }
    struct abandon_call *a = c->failed_open ? NULL : calloc(1, sizeof *a);
    if (!a) {
        reply_refused(c, &f, c->failed_open);    /* out of memory: it stays queued */
        free(f.body);
        call_free(c);
        return;
    }
    a->c = c;
    a->f = f;
    if (delivery_abandon(c->loop->store, c->cfg, c->user, c->message, on_abandoned, a) != 0) {
        struct store_reply fail = { .status = STORE_UNAVAILABLE };
        on_abandoned(a, &fail);
    }
}

static void on_forwarded(void *arg, const struct forward_result *fr)
{
    struct send_call *c = arg;
    if (fr->held_ms > 0) {
        held(c, fr);
        return;
    }
    const struct upstream_response *r = fr->r;
    bool ok = r->status == UPSTREAM_OK && r->http_status >= 200 && r->http_status < 300;

    metrics_count_delivery(&c->loop->metrics, c->channel, ok ? "delivered" : "failed");
    if (!ok) {
        log_info("upstream failed", "channel=%s status=%ld error=%s", c->channel,
                 r->http_status, r->error ? r->error : "");
        abandon(c, r);
        return;
    }
    if (!c->failed_open)
        delivery_ack(c->loop->store, c->cfg, c->user, c->message, !c->d.replay, NULL, 0);
    breaker_count(c->loop->breaker, c->campaign, BREAKER_SEND);
    reply_sent(c, r->http_status);
    call_free(c);
}

/* ---- after the decision ------------------------------------------------------------ */

static void reply_deferred(struct send_call *c)
{
    struct loop *l = c->loop;
    const struct decision *d = &c->d;
    if (d->queued != 1) {
        metrics_count_delivery(&l->metrics, c->channel, "queue_full");
        reply_error(l, c->req, API_QUEUE_FULL, NULL,
                    "the deferred queue is full (delivery.max_deferred); retry later");
        return;
    }
    metrics_count_delivery(&l->metrics, c->channel, "deferred");
    if (d->superseded)
        metrics_count_delivery(&l->metrics, c->channel, "superseded");
    json_t *body = decision_body(c);
    char when[32];
    clock_format_rfc3339(when, sizeof when, time(NULL) + d->retry_after_s);
    json_object_set_new(body, "deliver_at", json_string(when));
    json_object_set_new(body, "retry_after", json_integer(d->retry_after_s));
    if (d->superseded)
        json_object_set_new(body, "superseded", json_true());
    reply_json(l, c->req, 202, body);
}

static void on_decided(void *arg, const struct decide_result *r)
{
    struct send_call *c = arg;
    struct loop *l = c->loop;
    const struct decision *d = &c->d;

    if (r->status == DECIDE_UNAVAILABLE) {
        reply_error(l, c->req, API_STORE_UNAVAILABLE, NULL,
                    "the decision store is unavailable (%s); retry later", r->why);
        call_free(c);
        return;
    }
    c->d = r->decision;
    c->cfg = config_retain(r->cfg);
    c->failed_open = r->status == DECIDE_FAILED_OPEN;
    if (d->in_queue) {
        /* The dispatcher has claimed it (and decided it again: allow, or not
         * yet: defer): the queue delivers it, once.  A forward now would be
         * a second delivery. */
        metrics_count_delivery(&l->metrics, c->channel, "replayed");
        json_t *body = decision_body(c);
        char when[32];
        clock_format_rfc3339(when, sizeof when, time(NULL) + d->retry_after_s);
        json_object_set_new(body, "delivery", json_string("queued"));
        json_object_set_new(body, "deliver_at", json_string(when));
        reply_json(l, c->req, 202, body);
    } else if (d->outcome == OUTCOME_ALLOW && d->replay && !d->resend) {
        /* This message_id was allowed and its delivery acknowledged: a
         * client retry must not send it twice. */
        metrics_count_delivery(&l->metrics, c->channel, "replayed");
        reply_sent(c, 0);
    } else if (d->outcome == OUTCOME_ALLOW) {
        const struct cfg_channel *ch = config_channel(c->cfg, c->channel);
        unsigned flags = c->failed_open ? FORWARD_UNSHAPED : 0;
        if (ch && ch->upstream.over_rate == OVER_RATE_QUEUE)
            flags |= FORWARD_RESERVE;
        delivery_send(l->upstreams, l->store, c->cfg, l->tz, &c->m, flags, on_forwarded, c);
        return;
    } else if (d->outcome == OUTCOME_DEFER) {
        reply_deferred(c);
    } else if (d->reason == REASON_SUPERSEDED) {
        /* A newer message of its collapse_key replaced it: it never goes. */
        json_t *body = decision_body(c);
        json_object_set_new(body, "superseded", json_true());
        reply_json(l, c->req, 409, body);
    } else {
        /* A cap that frees up within max_defer says when (RFC 9110 10.2.3). */
        char after[24];
        snprintf(after, sizeof after, "%lld", (long long)d->retry_after_s);
        const char *const retry[] = { "Retry-After", after, NULL };
        reply_json_headers(l, c->req, d->reason == REASON_CAP ? 429 : 403, decision_body(c),
                           d->reason == REASON_CAP && d->retry_after_s > 0 &&
                           d->retry_after_s * 1000 <= c->cfg->max_defer_ms ? retry : NULL);
    }
    call_free(c);
}

static void start_decide(struct loop *l, struct send_call *c, const struct cfg_channel *ch,
                         const struct cfg_category *cat, int priority, const char *collapse,
                         enum decide_road road)
{
    struct enqueue q = { .blob = c->blob, .blob_len = c->blob_len, .priority = priority,
                         .collapse = collapse };
    struct decide_request rq = { .channel = ch, .category = cat, .campaign = c->campaign,
                                 .tz = c->tz, .enqueue = &q, .road = road };
    memcpy(rq.user, c->user, sizeof rq.user);
    memcpy(rq.message, c->message, sizeof rq.message);
    decide_start(&c->op, l, &rq, on_decided, c);
}

/* The person's records are under the current key: decide now. */
static void on_moved(void *arg, bool ok)
{
    struct send_call *c = arg;
    if (!ok || c->loop->cfg != c->rot_cfg) {
        /* Deciding without the records of before the rotation could allow
         * a message to someone who opted out: nothing happened, retry. */
        reply_error(c->loop, c->req, API_STORE_UNAVAILABLE, NULL,
                    "the decision store is unavailable (%s); retry later",
                    ok ? "the configuration was reloaded" : "key rotation");
        call_free(c);
        return;
    }
    start_decide(c->loop, c, c->ch, c->cat, c->priority, c->collapse, c->road);
}

/* Common path once the fields are known: pseudonymise, decide with the
 * message ready to queue.  USER is the raw id: it ends here. */
static void decide_and_send(struct loop *l, struct send_call *c, const struct cfg_channel *ch,
                            const struct cfg_category *cat, int priority, const char *collapse,
                            const char *user, size_t user_len, enum decide_road road)
{
    pseudonym_user(l->pseudonym, user, user_len, c->user);
    pseudonym_message(l->pseudonym, c->message_id, strlen(c->message_id), c->message);
    http_note_user(c->req, c->user);
    size_t nc = strnlen(ch->name, CONFIG_NAME_MAX), ng = strnlen(cat->name, CONFIG_NAME_MAX);
    memcpy(c->channel, ch->name, nc);
    c->channel[nc] = '\0';
    memcpy(c->category, cat->name, ng);
    c->category[ng] = '\0';
    c->m.user = c->user;
    c->m.message = c->message;
    c->m.message_id = c->message_id;
    c->m.channel = c->channel;
    c->m.category = c->category;
    c->m.campaign = c->campaign;
    c->m.tz = c->tz;
    c->m.method = c->method ? c->method : "POST";
    c->m.query = c->query;
    c->m.priority = priority;
    /* The payload carries this person's one-click link, where the upstream
     * takes headers (upstream.unsubscribe_headers): now, so that a deferred
     * copy has it too.  A payload without the place goes as it is. */
    char url[UNSUBSCRIBE_URL_MAX];
    size_t with_len;
    char *with;
    if (ch->upstream.unsubscribe_headers && l->cfg->public.enabled &&
        token_link(l->pseudonym, l->cfg, c->user, ch->name, cat->name, time(NULL), url,
                   sizeof url) == 0 &&
        (with = request_send_headers(c->m.body, c->m.body_len,
                                     ch->upstream.unsubscribe_headers + 5, url, &with_len))) {
        free(c->m.body);
        c->m.body = with;
        c->m.body_len = with_len;
    }
    c->blob = delivery_blob(&c->m, l->pseudonym, &c->blob_len);
    if (!c->blob) {
        reply_error(l, c->req, API_INTERNAL, NULL, "out of memory");
        call_free(c);
        return;
    }
    char old_p[PSEUDONYM_USER_HEX + 1];
    if (pseudonym_user_previous(l->pseudonym, user, user_len, old_p)) {
        c->rot_cfg = l->cfg;
        c->ch = ch;
        c->cat = cat;
        c->priority = priority;
        c->road = road;
        if (collapse && !(c->collapse = strdup(collapse))) {
            reply_error(l, c->req, API_INTERNAL, NULL, "out of memory");
            call_free(c);
            return;
        }
        if (rotation_move(l, old_p, c->user, on_moved, c) != 0) {
            reply_error(l, c->req, API_STORE_UNAVAILABLE, NULL,
                        "the decision store is unavailable (not connected); retry later");
            call_free(c);
        }
        return;
    }
    start_decide(l, c, ch, cat, priority, collapse, road);
}

static struct send_call *call_new(struct loop *l, struct http_request *req, const char *message_id,
                                  const char *campaign, const char *tz)
{
    struct send_call *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->loop = l;
    c->req = req;
    snprintf(c->message_id, sizeof c->message_id, "%s", message_id);
    if ((campaign && !(c->campaign = strdup(campaign))) || (tz && !(c->tz = strdup(tz)))) {
        call_free(c);
        return NULL;
    }
    return c;
}

void api_send(struct loop *l, struct http_request *req)
{
    struct field_error e;
    struct req_send rs;
    size_t len;
    const char *body = http_body(req, &len);

    if (request_send(l->cfg, l->tz, body, len, &rs, &e) != 0) {
        reply_field_error(l, req, &e);
        request_send_free(&rs);
        return;
    }
    const struct req_decide *d = &rs.d;
    struct send_call *c = call_new(l, req, d->message_id, d->campaign, d->tz);
    if (!c) {
        reply_error(l, req, API_INTERNAL, NULL, "out of memory");
        request_send_free(&rs);
        return;
    }
    c->m.body = rs.payload;          /* the call owns it now */
    c->m.body_len = rs.payload_len;
    rs.payload = NULL;
    decide_and_send(l, c, d->channel, d->category, rs.priority, rs.collapse, d->user,
                    d->user_len, DECIDE_SEND);
    request_send_free(&rs);
}


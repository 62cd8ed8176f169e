/*
 * fuzz_request: a hostile request body through the parsers the handlers
 * call (src/requests.c) -- decide, release, send, consent, events, users and
 * a transparent route (JSON pointers and headers) -- without Redis or HTTP,
 * then what the handlers do with the fields (pseudonyms, script arguments,
 * the delivery blob), stopping where they would call Redis.
 *
 * Oracles besides the sanitizers: an error always has a message; a parsed
 * body's fields keep their limits and hold no control characters where
 * they travel on; script arguments stay inside their buffer; a delivery
 * blob parses back to the message it was built from.
 */
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capgate/config.h"
#include "capgate/decision.h"
#include "capgate/delivery.h"
#include "capgate/pseudonym.h"
#include "capgate/tz.h"
#include "capgate/requests.h"
#include "capgate/token.h"
#include "capgate/validate.h"
#include "fuzz_common.h"

#define NOW_S 1700000000   /* fixed: a crash must replay the same way */

static struct config cfg;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc; (void)argv;
    cfg = fz_config();
    cfg.public = (struct cfg_public){ .enabled = true, .base_url = "https://prefs.example.com",
                                      .token_ttl_ms = 180LL * 86400000 };
    fz_tz();
    fz_pseudonym();
    return 0;
}

/* A failed check: what reply_error() would read. */
static void check_error(const struct field_error *e)
{
    FUZZ_CHECK((unsigned)e->code < API_ERROR__COUNT);
    size_t n = strnlen(e->message, sizeof e->message);
    FUZZ_CHECK(n > 0 && n < sizeof e->message);
    if (e->field)
        FUZZ_CHECK(strlen(e->field) < 1u << 20);   /* readable (ASan: not freed) */
}

static void check_args(const struct script_args *a)
{
    FUZZ_CHECK(a->argc >= a->nkeys && a->argc <= SCRIPT_ARGS_MAX);
    FUZZ_CHECK(a->used <= sizeof a->buf);
    for (int k = 0; k < a->argc; k++) {
        FUZZ_CHECK(a->argv[k] != NULL || a->argvlen[k] == 0);
        /* Every argument is readable over its whole length. */
        volatile unsigned char sum = 0;
        for (size_t i = 0; i < a->argvlen[k]; i++)
            sum ^= (unsigned char)a->argv[k][i];
        (void)sum;
    }
}

static bool same(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

/* The blob survives the round trip through Redis unchanged. */
static void check_blob(const char *blob, size_t blen, const struct message *m)
{
    struct message back;
    FUZZ_CHECK(delivery_parse(blob, blen, &back, fz_pseudonym()) == 0);
    FUZZ_CHECK(back.route == m->route);
    FUZZ_CHECK(same(back.user, m->user) && same(back.message, m->message));
    FUZZ_CHECK(same(back.message_id, m->message_id) && same(back.channel, m->channel));
    FUZZ_CHECK(same(back.category, m->category) && same(back.campaign, m->campaign));
    FUZZ_CHECK(same(back.tz, m->tz));
    FUZZ_CHECK(back.body_len == m->body_len && memcmp(back.body, m->body, m->body_len) == 0);
    if (m->route) {
        FUZZ_CHECK(same(back.method, m->method));
        FUZZ_CHECK(same(back.query, m->query ? m->query : ""));
        /* The headers went through pseudonym_seal / pseudonym_open. */
        FUZZ_CHECK(back.headers && json_is_array(back.headers));
        FUZZ_CHECK(m->headers ? json_equal(back.headers, m->headers)
                              : json_array_size(back.headers) == 0);
    }
    delivery_clear(&back);
}

/* ---- what the handlers do once a body is read ---------------------------- */

/* decide.c's arguments for a decision (with a message to queue, or not). */
static void decide_args(const struct req_decide *d, const struct enqueue *q)
{
    struct decide_input in;
    memset(&in, 0, sizeof in);
    pseudonym_user(fz_pseudonym(), d->user, d->user_len, in.user);
    pseudonym_message(fz_pseudonym(), d->message_id, d->message_id_len, in.message);
    FUZZ_CHECK(strlen(in.user) == PSEUDONYM_USER_HEX && strlen(in.message) == PSEUDONYM_SHORT_HEX);
    in.channel = d->channel;
    in.category = d->category;
    in.campaign = d->campaign;
    in.dry_run = d->dry_run;
    in.enqueue = q;
    in.zone = d->tz ? tz_db_find(fz_tz(), d->tz)
            : cfg.quiet_hours.enabled ? tz_db_find(fz_tz(), cfg.quiet_hours.default_tz) : NULL;
    FUZZ_CHECK(!d->tz || in.zone);
    struct script_args args;
    decision_decide_args(&cfg, &in, NOW_S, &args);
    check_args(&args);
    if (q)
        FUZZ_CHECK(args.argc > 0 && args.argvlen[args.argc - 2] == q->blob_len);
}

static void check_decide(const struct req_decide *d)
{
    FUZZ_CHECK(d->user && d->user_len >= 1 && d->user_len <= REQ_USER_MAX);
    FUZZ_CHECK(d->message_id && d->message_id_len >= 1 && d->message_id_len <= REQ_MESSAGE_ID_MAX);
    FUZZ_CHECK(!validate_has_control(d->message_id, d->message_id_len));
    FUZZ_CHECK(!d->campaign || !validate_has_control(d->campaign, strlen(d->campaign)));
    FUZZ_CHECK(d->channel && d->category);
    /* The answer echoes message_id: it must be a string jansson takes. */
    char id[REQ_MESSAGE_ID_MAX + 1];
    memcpy(id, d->message_id, d->message_id_len);
    id[d->message_id_len] = '\0';
    json_t *echo = json_string(id);
    FUZZ_CHECK(echo);
    json_decref(echo);
}

/* api_send.c's decide_and_send, up to the store call: the message and its blob. */
static void send_message(struct message *m, const char *user, size_t user_len,
                         const char *message_id, const struct cfg_channel *ch,
                         const struct cfg_category *cat, const char *campaign, const char *tz,
                         int priority, const char *collapse)
{
    char pu[PSEUDONYM_USER_HEX + 1], pm[PSEUDONYM_SHORT_HEX + 1];
    pseudonym_user(fz_pseudonym(), user, user_len, pu);
    pseudonym_message(fz_pseudonym(), message_id, strlen(message_id), pm);
    m->user = pu;
    m->message = pm;
    m->message_id = message_id;
    m->channel = ch->name;
    m->category = cat->name;
    m->campaign = campaign;
    m->tz = tz;
    if (!m->method)
        m->method = "POST";
    size_t blen;
    char *blob = delivery_blob(m, fz_pseudonym(), &blen);
    FUZZ_CHECK(blob);     /* only out of memory may fail here */
    check_blob(blob, blen, m);
    struct req_decide d = { .user = user, .user_len = user_len, .message_id = message_id,
                            .message_id_len = strlen(message_id), .campaign = campaign, .tz = tz,
                            .channel = ch, .category = cat };
    struct enqueue q = { .blob = blob, .blob_len = blen, .priority = priority,
                         .collapse = collapse };
    decide_args(&d, &q);
    free(blob);
}

/* ---- the bodies --------------------------------------------------------------- */

static void run_decide(const char *body, size_t len)
{
    struct field_error e;
    struct req_decide d;
    if (request_decide(&cfg, fz_tz(), body, len, &d, &e) != 0)
        check_error(&e);
    else {
        check_decide(&d);
        decide_args(&d, NULL);
    }
    request_free(d.json);
}

static void run_send(const char *body, size_t len)
{
    struct field_error e;
    struct req_send s;
    if (request_send(&cfg, fz_tz(), body, len, &s, &e) != 0) {
        check_error(&e);
    } else {
        check_decide(&s.d);
        FUZZ_CHECK(s.d.channel->upstream.enabled && s.priority >= 0 && s.priority <= 9);
        FUZZ_CHECK(!s.collapse || !validate_has_control(s.collapse, strlen(s.collapse)));
        /* Either reading (the one-pass one keeps the client's text), the
         * payload posted is the value jansson reads in the body. */
        FUZZ_CHECK(strlen(s.payload) == s.payload_len);
        json_t *ref = json_loadb(body, len, JSON_REJECT_DUPLICATES, NULL);
        json_t *sent = json_loadb(s.payload, s.payload_len, JSON_DECODE_ANY, NULL);
        FUZZ_CHECK(ref && sent && json_equal(sent, json_object_get(ref, "payload")));
        json_decref(sent);
        json_decref(ref);
        char id[REQ_MESSAGE_ID_MAX + 1];
        memcpy(id, s.d.message_id, s.d.message_id_len);
        id[s.d.message_id_len] = '\0';
        /* upstream.unsubscribe_headers: the payload (jansson's own text)
         * with the headers added stays one JSON value. */
        size_t hlen;
        char *with = request_send_headers(s.payload, s.payload_len, "/personalizations/*/headers",
                                          "https://prefs.example.com/u/AbC-_9", &hlen);
        if (with) {
            json_t *j = json_loadb(with, hlen, JSON_DECODE_ANY, NULL);
            FUZZ_CHECK(j != NULL);
            json_decref(j);
            free(with);
        }
        struct message m = { .body = s.payload, .body_len = s.payload_len };
        send_message(&m, s.d.user, s.d.user_len, id, s.d.channel, s.d.category, s.d.campaign,
                     s.d.tz, s.priority, s.collapse);
    }
    request_send_free(&s);
}

static void run_people(const char *body, size_t len)
{
    struct field_error e;
    struct req_person p;
    if (request_release(body, len, &p, &e) != 0) {
        check_error(&e);
    } else {
        char u[PSEUDONYM_USER_HEX + 1], m[PSEUDONYM_SHORT_HEX + 1];
        pseudonym_user(fz_pseudonym(), p.user, p.user_len, u);
        pseudonym_message(fz_pseudonym(), p.message_id, p.message_id_len, m);
        struct script_args args;
        decision_release_args(&cfg, u, m, &args);
        check_args(&args);
    }
    request_free(p.json);
    if (request_user(body, len, &p, &e) != 0)
        check_error(&e);
    else
        FUZZ_CHECK(p.user && p.user_len >= 1 && p.user_len <= REQ_USER_MAX);
    request_free(p.json);
}

static void run_consent(const char *body, size_t len)
{
    struct field_error e;
    struct req_consent c;
    if (request_consent(&cfg, body, len, &c, &e) != 0) {
        check_error(&e);
    } else {
        char u[PSEUDONYM_USER_HEX + 1];
        pseudonym_user(fz_pseudonym(), c.user, c.user_len, u);
        struct script_args args;
        FUZZ_CHECK(!c.legal_basis || receipt_basis_known(c.legal_basis));
        FUZZ_CHECK(!c.notice || !validate_has_control(c.notice, strlen(c.notice)));
        struct consent_proof proof = { .method = c.source, .legal_basis = c.legal_basis,
                                       .notice = c.notice };
        receipt_new_id(proof.record_id);
        decision_consent_args(&cfg, u, c.channel, c.category, c.opt_in, c.source, &proof, &args);
        check_args(&args);
    }
    request_free(c.json);
}

static void run_event(const char *body, size_t len)
{
    static const enum consent_kind kinds[] = {
        [EVENT_UNSUBSCRIBE] = CONSENT_UNSUBSCRIBE, [EVENT_COMPLAINT] = CONSENT_COMPLAINT,
        [EVENT_BOUNCE] = CONSENT_BOUNCE, [EVENT_ENGAGE] = CONSENT_ENGAGE,
        [EVENT_INBOUND_SMS] = CONSENT_SET,
    };
    struct field_error e;
    struct req_event ev;
    if (request_event(&cfg, body, len, &ev, &e) != 0) {
        check_error(&e);
    } else {
        FUZZ_CHECK(ev.effect[0] && strlen(ev.scope) < sizeof ev.scope);
        if (ev.kind == EVENT_INBOUND_SMS) {
            /* Only STOP and START reach Redis, on a configured channel,
             * for every category; the detail names the keyword alone. */
            FUZZ_CHECK(ev.channel && config_channel(&cfg, ev.channel) && !ev.category);
            FUZZ_CHECK(ev.records == (ev.keyword == SMS_KEYWORD_STOP ||
                                      ev.keyword == SMS_KEYWORD_START));
            FUZZ_CHECK(ev.opt_in == (ev.keyword == SMS_KEYWORD_START));
            size_t n = strlen(ev.channel);
            FUZZ_CHECK(strncmp(ev.scope, ev.channel, n) == 0 && strcmp(ev.scope + n, "|*") == 0);
            const char *kw = sms_keyword_name(ev.keyword);
            FUZZ_CHECK(strncmp(ev.detail, "inbound_sms", 11) == 0);
            FUZZ_CHECK(!kw || strncmp(ev.detail + 11, " ", 1) == 0);
            FUZZ_CHECK(!kw || strncmp(ev.detail + 12, kw, strlen(kw)) == 0);
        } else {
            FUZZ_CHECK(ev.records && !ev.opt_in);
        }
        char u[PSEUDONYM_USER_HEX + 1];
        pseudonym_user(fz_pseudonym(), ev.user, ev.user_len, u);
        struct script_args args;
        decision_signal_args(&cfg, u, kinds[ev.kind], ev.scope, ev.opt_in,
                             ev.kind == EVENT_INBOUND_SMS ? REQ_SMS_SOURCE : NULL, ev.detail,
                             NULL, &args);
        check_args(&args);
    }
    request_free(ev.json);
}

/* ---- POST /v1/admin/campaigns/resume (api_campaigns) -------------------- */

static void run_resume(const char *body, size_t len)
{
    struct field_error e;
    struct req_resume rr;
    if (request_resume(body, len, &rr, &e) != 0) {
        check_error(&e);
    } else {
        FUZZ_CHECK(rr.campaign && *rr.campaign && strlen(rr.campaign) <= REQ_CAMPAIGN_MAX);
        const char *argv[] = { "resume", rr.campaign };
        struct script_args args;
        decision_breaker_args(rr.campaign, 2, argv, &args);
        check_args(&args);
    }
    request_free(rr.json);
}

/* ---- POST /v1/unsubscribe-links (api_links), and /u/<token> (public) ---- */

static void run_link(const char *body, size_t len)
{
    struct field_error e;
    struct req_link rl;
    if (request_unsubscribe_link(&cfg, body, len, &rl, &e) != 0) {
        check_error(&e);
    } else {
        char u[PSEUDONYM_USER_HEX + 1], url[UNSUBSCRIBE_URL_MAX];
        pseudonym_user(fz_pseudonym(), rl.user, rl.user_len, u);
        FUZZ_CHECK(token_link(fz_pseudonym(), &cfg, u, rl.channel, rl.category, 1000, url,
                              sizeof url) == 0);
        const char *tok = strstr(url, "/u/") + 3;
        struct token t;
        FUZZ_CHECK(token_read(fz_pseudonym(), tok, strlen(tok), 1000, &t) == TOKEN_OK);
        FUZZ_CHECK(strcmp(t.user, u) == 0 && strcmp(t.channel, rl.channel) == 0 &&
                   strcmp(t.category, rl.category) == 0);
    }
    request_free(rl.json);
    /* Whatever comes after /u/: never ours unless sealed by us. */
    struct token t;
    FUZZ_CHECK(token_read(fz_pseudonym(), body, len, 0, &t) == TOKEN_INVALID);
}

/* ---- a transparent route (api_route) ------------------------------------ */

/* The request's headers, taken here from the body's "headers" object when
 * it has one (names and values are any UTF-8 jansson accepts, as from the
 * HTTP layer). */
static const char *body_header(void *ctx, const char *name)
{
    return json_string_value(json_object_get(json_object_get(ctx, "headers"), name));
}

/* api_route's keep_header: [[name, value], ...] without the hop-by-hop ones. */
static json_t *route_headers(json_t *doc)
{
    json_t *arr = json_array();
    const char *name;
    json_t *value;
    json_array_append_new(arr, json_pack("[s, s]", "Content-Type", "application/json"));
    json_object_foreach(json_object_get(doc, "headers"), name, value) {
        if (json_is_string(value) && !delivery_hop_by_hop(name))
            json_array_append_new(arr, json_pack("[s, s]", name, json_string_value(value)));
    }
    return arr;
}

static void run_route(const char *body, size_t len)
{
    static char *users[] = { "json:/personalizations/*/to/*/email",
                             "json:/personalizations/*/cc/*/email", "header:X-Recipient" };
    static struct cfg_route route = {
        .path = "/v3/mail/send", .channel = "email", .users = users, .n_users = 3,
        .message_id = "header:Idempotency-Key", .campaign = "json:/campaign",
        .category = "json:/category",
        .unsubscribe_headers = "json:/personalizations/*/headers",
    };
    struct field_error e;
    struct req_route rr;
    json_t *doc = len ? json_loadb(body, len, 0, NULL) : NULL;
    if (request_route(&cfg, &route, body, len, body_header, doc, &rr, &e) != 0) {
        check_error(&e);
        json_decref(doc);
        return;
    }
    FUZZ_CHECK(rr.n >= 1 && rr.n <= cfg.limits.max_recipients && rr.message_id[0] && rr.cat);
    FUZZ_CHECK(!validate_has_control(rr.message_id, strlen(rr.message_id)));
    FUZZ_CHECK(!validate_has_control(rr.campaign, strlen(rr.campaign)));
    /* Each recipient's queued copy, as api_route makes it, and the body cut
     * to every other recipient (whole personalizations as for the upstream). */
    bool *keep = calloc(rr.n, sizeof *keep), *sent = calloc(rr.n, sizeof *sent);
    FUZZ_CHECK(keep && sent);
    for (size_t k = 0; k < rr.n; k++) {
        const struct req_recipient *r = &rr.rcpt[k];
        FUZZ_CHECK(r->id && r->id_len && r->where[0]);
        memset(keep, 0, rr.n * sizeof *keep);
        keep[k] = true;
        size_t olen = len;
        bool failed;
        char *alone = request_route_body(&rr, body, len, keep, false, NULL, &olen, &failed,
                                         NULL);
        FUZZ_CHECK(!alone || olen <= len);
        struct message m = { .route = true, .method = "POST", .query = "a=1&b=%20",
                             .headers = route_headers(doc),
                             .body_len = alone ? olen : len };
        FUZZ_CHECK(m.headers && (m.body = malloc(m.body_len + 1)));
        memcpy(m.body, alone ? alone : body, m.body_len);
        m.body[m.body_len] = '\0';
        send_message(&m, r->id, r->id_len, rr.message_id, config_channel(&cfg, "email"),
                     rr.cat, rr.campaign[0] ? rr.campaign : NULL, NULL, 0, NULL);
        free(m.body);
        json_decref(m.headers);
        free(alone);
    }
    for (size_t k = 0; k < rr.n; k++)
        keep[k] = k % 2 == 1;
    size_t olen = len;
    bool failed;
    char *cut = request_route_body(&rr, body, len, keep, true, sent, &olen, &failed, NULL);
    FUZZ_CHECK(!cut || olen <= len);
    for (size_t k = 0; cut && k < rr.n; k++)
        FUZZ_CHECK(!sent[k] || keep[k]);      /* nobody goes who was not kept */
    free(cut);
    /* With List-Unsubscribe headers added: still one JSON value. */
    const char **links = calloc(rr.n, sizeof *links);
    FUZZ_CHECK(links);
    for (size_t k = 0; k < rr.n; k++) {
        keep[k] = k % 3 != 2;
        links[k] = k % 4 == 3 ? NULL : "https://prefs.example.com/u/AbC-_9";
    }
    olen = len;
    cut = request_route_body(&rr, body, len, keep, true, sent, &olen, &failed, links);
    if (cut && rr.doc && doc) {          /* (what jansson itself reads) */
        json_t *j = json_loadb(cut, olen, 0, NULL);
        FUZZ_CHECK(j != NULL);
        json_decref(j);
    }
    free(cut);
    free(links);
    free(keep);
    free(sent);
    request_route_free(&rr);
    json_decref(doc);
}


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 1 << 16)        /* limits.max_body_bytes' default */
        return 0;
    /* The body as the HTTP layer hands it over: a copy of exactly SIZE bytes
     * (ASan catches any read past the end: bodies are not NUL-terminated). */
    char *body = malloc(size ? size : 1);
    FUZZ_CHECK(body);
    memcpy(body, data, size);
    run_decide(body, size);
    run_send(body, size);
    run_people(body, size);
    run_consent(body, size);
    run_event(body, size);
    run_resume(body, size);
    run_link(body, size);
    run_route(body, size);
    free(body);
    return 0;
}

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
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "capgate/api.h"
#include "capgate/config.h"
#include "capgate/decision.h"
#include "capgate/delivery.h"
#include "capgate/http.h"
#include "capgate/jsonptr.h"
#include "capgate/log.h"
#include "capgate/pseudonym.h"
#include "capgate/reply.h"
#include "capgate/store.h"
#include "capgate/tz.h"
#include "capgate/upstream.h"
#include "capgate/validate.h"
#include "capgate/worker.h"

struct send_call {
    struct worker *w;
    struct http_request *req;
    const struct config *cfg;
    struct message m;             /* fields point into owned strings below */
    char *blob;
    char user[PSEUDONYM_USER_HEX + 1];
    char message[PSEUDONYM_SHORT_HEX + 1];
    char message_id[129];
    char channel[65], category[65];
    char *campaign, *tz, *method, *query;
    struct decision d;
};

static void call_free(struct send_call *c)
{
    config_release(c->cfg);
    free(c->m.body);
    json_decref(c->m.headers);
    free(c->blob);
    free(c->campaign);
    free(c->tz);
    free(c->method);
    free(c->query);
    free(c);
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

static void on_release_done(void *arg, const struct store_reply *r)
{
    (void)arg; (void)r;   /* best effort: a failed release only overcounts */
}

static void release(struct send_call *c)
{
    struct script_args a;
    decision_release_args(c->cfg, c->user, c->message, &a);
    store_eval(c->w->store, a.script, a.nkeys, a.argc, a.argv, a.argvlen, on_release_done, NULL);
}

static void on_forwarded(void *arg, const struct upstream_response *r)
{
    struct send_call *c = arg;
    struct worker *w = c->w;
    bool ok = r->status == UPSTREAM_OK && r->http_status >= 200 && r->http_status < 300;

    metrics_count_delivery(&w->metrics, c->channel, ok ? "delivered" : "failed");
    if (!ok) {
        /* Not delivered: it must not use up the person's allowance. */
        release(c);
        log_info("upstream failed", "channel=%s status=%ld error=\"%s\"", c->channel,
                 r->http_status, r->error ? r->error : "");
        char msg[200];
        if (r->status == UPSTREAM_OK)
            snprintf(msg, sizeof msg, "the %s upstream answered %ld; the send was released",
                     c->channel, r->http_status);
        else
            snprintf(msg, sizeof msg, "the %s upstream failed (%s); the send was released",
                     c->channel, r->error ? r->error : "no answer");
        json_t *body = decision_body(c);
        json_object_set_new(body, "error", json_pack("{s:s, s:s}", "code", "upstream_failed",
                                                     "message", msg));
        if (r->status == UPSTREAM_OK)
            json_object_set_new(body, "upstream_status", json_integer(r->http_status));
        COUNTER_INC(w->metrics.errors[API_UPSTREAM_FAILED]);
        reply_json(w, c->req, 502, body);
    } else if (c->m.route) {
        /* Transparent mode: the upstream's answer, as it came. */
        const char *hdrs[130];
        char *owned[64];
        size_t nh = 0, no = 0;
        const char *ctype = "application/octet-stream";
        for (size_t k = 0; k < r->n_headers && no < 64; k++) {
            const char *colon = strchr(r->headers[k], ':');
            if (!colon)
                continue;
            char *name = strndup(r->headers[k], (size_t)(colon - r->headers[k]));
            if (!name)
                continue;
            const char *value = colon + 1;
            while (*value == ' ')
                value++;
            if (strcasecmp(name, "Content-Type") == 0) {
                ctype = value;
                free(name);
                continue;
            }
            if (delivery_hop_by_hop(name) || strcasecmp(name, "Date") == 0) {
                free(name);
                continue;
            }
            owned[no++] = name;
            hdrs[nh++] = name;
            hdrs[nh++] = value;
        }
        hdrs[nh] = NULL;
        reply_text(w, c->req, (unsigned)r->http_status, ctype, r->body, r->body_len, hdrs);
        for (size_t k = 0; k < no; k++)
            free(owned[k]);
    } else {
        json_t *body = decision_body(c);
        json_object_set_new(body, "upstream_status", json_integer(r->http_status));
        reply_json(w, c->req, 200, body);
    }
    call_free(c);
}

static void forward_now(struct send_call *c)
{
    struct upstream_pool *pool = worker_upstream(c->w, config_channel(c->cfg, c->channel));
    if (!pool || delivery_forward(pool, c->cfg, &c->m, on_forwarded, c) != 0) {
        struct upstream_response r = { .status = UPSTREAM_FAILED, .error = "cannot start" };
        on_forwarded(c, &r);
    }
}

static void on_decided(void *arg, const struct store_reply *r)
{
    struct send_call *c = arg;
    struct worker *w = c->w;
    struct decision *d = &c->d;

    if (r->status != STORE_OK || decision_decide_result(r, c->cfg, d) != 0) {
        if (c->cfg->redis.fail_open) {
            /* Failing open: forwarded unrecorded. */
            d->outcome = OUTCOME_ALLOW;
            d->reason = REASON_STORE_UNAVAILABLE;
            d->rule = -1;
            metrics_count_decision(&w->metrics, d->outcome, d->reason, NULL, c->channel);
            forward_now(c);
            return;
        }
        reply_error(w, c->req, API_STORE_UNAVAILABLE, NULL, "the decision store is unavailable; retry later");
        call_free(c);
        return;
    }
    metrics_count_decision(&w->metrics, d->outcome, d->reason, decision_rule_name(c->cfg, d->rule),
                           c->channel);
    for (size_t k = 0; k < d->n_shadow; k++)
        metrics_count_shadow(&w->metrics, c->cfg->caps[d->shadow[k].rule].name, d->shadow[k].would);
    if (d->outcome == OUTCOME_ALLOW && d->replay) {
        /* This message_id was allowed (and so forwarded) already: a client
         * retry must not send it twice. */
        metrics_count_delivery(&w->metrics, c->channel, "replayed");
        COUNTER_INC(w->metrics.replays);
        reply_json(w, c->req, 200, decision_body(c));
        call_free(c);
        return;
    }
    if (d->outcome == OUTCOME_ALLOW) {
        forward_now(c);
        return;
    }
    json_t *body = decision_body(c);
    if (d->outcome == OUTCOME_DEFER) {
        if (d->queued != 1) {
            metrics_count_delivery(&w->metrics, c->channel, "queue_full");
            json_decref(body);
            reply_error(w, c->req, API_QUEUE_FULL, NULL,
                        "the deferred queue is full (delivery.max_deferred); retry later");
            call_free(c);
            return;
        }
        metrics_count_delivery(&w->metrics, c->channel, "deferred");
        if (d->superseded)
            metrics_count_delivery(&w->metrics, c->channel, "superseded");
        char when[32];
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        time_t at = now.tv_sec + (time_t)d->retry_after_s;
        struct tm tm;
        gmtime_r(&at, &tm);
        strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
        json_object_set_new(body, "deliver_at", json_string(when));
        json_object_set_new(body, "retry_after", json_integer(d->retry_after_s));
        if (d->superseded)
            json_object_set_new(body, "superseded", json_true());
        reply_json(w, c->req, 202, body);
    } else {
        reply_json(w, c->req, d->reason == REASON_CAP ? 429 : 403, body);
    }
    call_free(c);
}

/* Common path once the fields are known: pseudonymise, decide with the
 * message ready to queue. */
static void decide_and_send(struct worker *w, struct send_call *c, int priority,
                            const char *collapse, const char *user, size_t user_len)
{
    const struct config *cfg = c->cfg;
    pseudonym_user(w->pseudonym, user, user_len, c->user);
    pseudonym_message(w->pseudonym, c->message_id, strlen(c->message_id), c->message);
    http_note_user(c->req, c->user);
    c->m.user = c->user;
    c->m.message = c->message;
    c->m.message_id = c->message_id;
    c->m.channel = c->channel;
    c->m.category = c->category;
    c->m.campaign = c->campaign;
    c->m.tz = c->tz;
    c->m.method = c->method ? c->method : "POST";
    c->m.query = c->query;
    c->blob = delivery_blob(&c->m, w->pseudonym);
    if (!c->blob) {
        reply_error(w, c->req, API_INTERNAL, NULL, "out of memory");
        call_free(c);
        return;
    }
    struct enqueue q = { .blob = c->blob, .blob_len = strlen(c->blob), .priority = priority,
                         .collapse = collapse };
    struct decide_input in;
    memset(&in, 0, sizeof in);
    memcpy(in.user, c->user, sizeof in.user);
    memcpy(in.message, c->message, sizeof in.message);
    in.channel = config_channel(cfg, c->channel);
    in.category = config_category(cfg, c->category);
    in.campaign = c->campaign;
    in.zone = c->tz ? tz_db_find(w->tz, c->tz)
            : cfg->quiet_hours.enabled ? tz_db_find(w->tz, cfg->quiet_hours.default_tz) : NULL;
    in.enqueue = &q;
    struct script_args args;
    decision_decide_args(cfg, &in, (int64_t)time(NULL), &args);
    if (store_eval(w->store, args.script, args.nkeys, args.argc, args.argv, args.argvlen,
                   on_decided, c) != 0) {
        struct store_reply r = { .status = STORE_UNAVAILABLE };
        on_decided(c, &r);
    }
}

void api_send(struct worker *w, struct http_request *req)
{
    static const char *const fields[] = { "user", "channel", "category", "campaign", "message_id",
                                          "tz", "payload", "collapse_key", "priority", NULL };
    const struct config *cfg = w->cfg;
    const char *user, *channel, *category, *campaign, *message_id, *tzname, *collapse;
    size_t user_len;
    struct field_error e;

    json_t *obj = api_body(w, req, fields);
    if (!obj)
        return;
    if (validate_string(obj, "user", true, 1, 256, &user, &user_len, &e) ||
        validate_string(obj, "channel", true, 1, 64, &channel, NULL, &e) ||
        validate_string(obj, "category", false, 1, 64, &category, NULL, &e) ||
        validate_string(obj, "campaign", false, 1, 256, &campaign, NULL, &e) ||
        validate_string(obj, "message_id", true, 1, 128, &message_id, NULL, &e) ||
        validate_string(obj, "tz", false, 1, 64, &tzname, NULL, &e) ||
        validate_string(obj, "collapse_key", false, 1, 128, &collapse, NULL, &e))
        goto invalid;
    json_t *payload = json_object_get(obj, "payload");
    if (!payload) {
        e = (struct field_error){ .code = API_MISSING_FIELD, .field = "payload" };
        snprintf(e.message, sizeof e.message, "payload is required");
        goto invalid;
    }
    json_t *prio = json_object_get(obj, "priority");
    if (json_is_null(prio))
        prio = NULL;
    if (prio && (!json_is_integer(prio) || json_integer_value(prio) < 0 ||
                 json_integer_value(prio) > 9)) {
        e = (struct field_error){ .code = API_INVALID_FIELD, .field = "priority" };
        snprintf(e.message, sizeof e.message, "priority must be an integer 0..9");
        goto invalid;
    }
    const struct cfg_channel *ch = config_channel(cfg, channel);
    if (!ch) {
        reply_error(w, req, API_UNKNOWN_CHANNEL, "channel", "channel is not configured");
        json_decref(obj);
        return;
    }
    if (!ch->upstream.enabled) {
        reply_error(w, req, API_NO_UPSTREAM, "channel",
                    "channel has no upstream: use /v1/decide, or configure channels.%s.upstream",
                    channel);
        json_decref(obj);
        return;
    }
    if (!config_category(cfg, category ? category : cfg->default_category)) {
        reply_error(w, req, API_UNKNOWN_CATEGORY, "category", "category is not configured");
        json_decref(obj);
        return;
    }
    if (tzname && !tz_db_find(w->tz, tzname)) {
        reply_error(w, req, API_INVALID_FIELD, "tz", "tz is not a known IANA time zone");
        json_decref(obj);
        return;
    }
    struct send_call *c = calloc(1, sizeof *c);
    char *payload_text = json_dumps(payload, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!c || !payload_text) {
        free(c);
        free(payload_text);
        reply_error(w, req, API_INTERNAL, NULL, "out of memory");
        json_decref(obj);
        return;
    }
    c->w = w;
    c->req = req;
    c->cfg = config_retain(cfg);
    snprintf(c->message_id, sizeof c->message_id, "%s", message_id);
    snprintf(c->channel, sizeof c->channel, "%s", channel);
    snprintf(c->category, sizeof c->category, "%s", category ? category : cfg->default_category);
    c->campaign = campaign ? strdup(campaign) : NULL;
    c->tz = tzname ? strdup(tzname) : NULL;
    c->m.body = payload_text;
    c->m.body_len = strlen(payload_text);
    char *collapse_copy = collapse ? strdup(collapse) : NULL;
    int priority = prio ? (int)json_integer_value(prio) : 0;
    char *user_copy = strndup(user, user_len);
    json_decref(obj);
    if (user_copy)
        decide_and_send(w, c, priority, collapse_copy, user_copy, user_len);
    else {
        reply_error(w, req, API_INTERNAL, NULL, "out of memory");
        call_free(c);
    }
    if (user_copy)
        explicit_bzero(user_copy, user_len);
    free(user_copy);
    free(collapse_copy);
    return;

invalid:
    reply_error(w, req, e.code, e.field, "%s", e.message);
    json_decref(obj);
}

/* ---- transparent routes ------------------------------------------------------ */

/* A value named by SPEC ("json:/..." or "header:Name"), copied into OUT. */
static bool extract(struct http_request *req, json_t *body, const char *spec, char *out,
                    size_t size)
{
    const char *v = NULL;
    if (strncmp(spec, "header:", 7) == 0) {
        v = http_header(req, spec + 7);
    } else if (body) {
        json_t *j = json_pointer(body, spec + 5);
        if (json_is_string(j))
            v = json_string_value(j);
        else if (json_is_integer(j)) {
            snprintf(out, size, "%lld", (long long)json_integer_value(j));
            return true;
        }
    }
    if (!v || !*v || strlen(v) >= size)
        return false;
    snprintf(out, size, "%s", v);
    return true;
}

struct header_list {
    json_t *arr;
};

static void keep_header(void *arg, const char *name, const char *value)
{
    struct header_list *h = arg;
    /* Authorization belongs to the campaign API (capgate's own token comes
     * as X-Capgate-Token, which is hop-by-hop here). */
    if (!delivery_hop_by_hop(name))
        json_array_append_new(h->arr, json_pack("[s, s]", name, value));
}

void api_route(struct worker *w, struct http_request *req, const struct cfg_route *route)
{
    const struct config *cfg = w->cfg;
    size_t body_len;
    const char *body = http_body(req, &body_len);
    json_t *json = body_len ? json_loadb(body, body_len, 0, NULL) : NULL;
    char user[257], message_id[129], campaign[257], category[65];

    struct {
        const char *spec, *field;
        char *out;
        size_t size;
        bool required;
    } want[] = {
        { route->user, "user", user, sizeof user, true },
        { route->message_id, "message_id", message_id, sizeof message_id, true },
        { route->campaign, "campaign", campaign, sizeof campaign, false },
        { route->category, "category", category, sizeof category, false },
    };
    for (size_t k = 0; k < sizeof want / sizeof want[0]; k++) {
        want[k].out[0] = '\0';
        if (!want[k].spec)
            continue;
        if (!extract(req, json, want[k].spec, want[k].out, want[k].size) && want[k].required) {
            reply_error(w, req, API_MISSING_FIELD, want[k].field,
                        "could not read the %s from %s; nothing was forwarded", want[k].field,
                        want[k].spec);
            json_decref(json);
            return;
        }
    }
    json_decref(json);
    if (category[0] && !config_category(cfg, category)) {
        reply_error(w, req, API_UNKNOWN_CATEGORY, "category", "category is not configured");
        return;
    }
    struct send_call *c = calloc(1, sizeof *c);
    struct header_list hl = { json_array() };
    if (!c || !hl.arr || !(c->m.body = malloc(body_len + 1))) {
        free(c);
        json_decref(hl.arr);
        reply_error(w, req, API_INTERNAL, NULL, "out of memory");
        return;
    }
    memcpy(c->m.body, body, body_len);
    c->m.body[body_len] = '\0';
    c->m.body_len = body_len;
    c->m.route = true;
    http_headers_foreach(req, keep_header, &hl);
    c->m.headers = hl.arr;
    c->w = w;
    c->req = req;
    c->cfg = config_retain(cfg);
    snprintf(c->message_id, sizeof c->message_id, "%s", message_id);
    snprintf(c->channel, sizeof c->channel, "%s", route->channel);
    snprintf(c->category, sizeof c->category, "%s", category[0] ? category : cfg->default_category);
    c->campaign = campaign[0] ? strdup(campaign) : NULL;
    c->method = strdup(http_method(req));
    c->query = strdup(http_raw_query(req));
    decide_and_send(w, c, 0, NULL, user, strlen(user));
    explicit_bzero(user, sizeof user);
}

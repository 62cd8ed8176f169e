/*
 * api_decide: POST /v1/decide and POST /v1/release.
 *
 * Validate everything first (a bad request never reaches Redis), replace
 * the user id by its pseudonym here and only here, then one script call;
 * the connection waits suspended until the store answers (always within
 * redis.timeout_ms).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "capgate/api.h"
#include "capgate/config.h"
#include "capgate/decide_batch.h"
#include "capgate/decision.h"
#include "capgate/gateway.h"
#include "capgate/http.h"
#include "capgate/json_flat.h"
#include "capgate/log.h"
#include "capgate/pseudonym.h"
#include "capgate/reply.h"
#include "capgate/store.h"
#include "capgate/tz.h"
#include "capgate/validate.h"
#include "capgate/worker.h"

#define USER_MAX 256
#define MESSAGE_ID_MAX 128
#define CAMPAIGN_MAX 256
#define TZ_NAME_MAX 64

/* S as the inside of a JSON string (quotes, backslashes and control
 * characters escaped; UTF-8 passes through, jansson already checked it). */
static const char *json_escape(char *out, size_t size, const char *s)
{
    size_t o = 0;
    for (; *s && o + 7 < size; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c < 0x20) {
            o += (size_t)snprintf(out + o, size - o, "\\u%04x", c);
        } else {
            out[o++] = (char)c;
        }
    }
    out[o] = '\0';
    return out;
}

/* A decide waiting for Redis.  Freed in its store callback. */
struct decide_call {
    struct worker *w;
    struct http_request *req;
    const struct config *cfg;
    char user[PSEUDONYM_USER_HEX + 1];    /* for logs: the pseudonym */
    bool dry_run;
    char channel[33];                     /* metric label */
    char message_id[MESSAGE_ID_MAX + 1];  /* echoed back to the caller */
};

static void reply_invalid(struct worker *w, struct http_request *req, const struct field_error *e)
{
    reply_error(w, req, e->code, e->field, "%s", e->message);
}

/* Fails closed (503) or open (allow, reason store_unavailable) as configured. */
static void decide_unavailable(struct decide_call *call, const char *why)
{
    struct worker *w = call->w;
    log_debug("decision without store", "user=%s why=\"%s\"", call->user, why);
    if (!call->cfg->redis.fail_open) {
        reply_error(w, call->req, API_STORE_UNAVAILABLE, NULL,
                    "the decision store is unavailable (%s); retry later", why);
        return;
    }
    metrics_count_decision(&w->metrics, OUTCOME_ALLOW, REASON_STORE_UNAVAILABLE, NULL,
                           call->channel);
    reply_json(w, call->req, 200,
               json_pack("{s:s, s:s, s:s, s:b}", "decision", "allow", "reason",
                         "store_unavailable", "message_id", call->message_id, "replay", 0));
}

/* Appends S at BODY + N when it fits (the answer's buffer is sized for the
 * worst case below; a piece that would not fit is left out, never written
 * past the end).  printf here cost more than the rest of the answer. */
static size_t put(char *body, size_t n, size_t cap, const char *s)
{
    size_t len = strlen(s);
    if (n + len < cap) {
        memcpy(body + n, s, len);
        n += len;
    }
    body[n] = '\0';
    return n;
}

static void decide_answer(struct decide_call *call, const struct decision *d)
{
    struct worker *w = call->w;
    const struct config *cfg = call->cfg;

    metrics_count_decision(&w->metrics, d->outcome, d->reason, decision_rule_name(cfg, d->rule),
                           call->channel);
    for (size_t k = 0; k < d->n_shadow; k++)
        metrics_count_shadow(&w->metrics, cfg->caps[d->shadow[k].rule].name, d->shadow[k].would);
    if (d->replay)
        COUNTER_INC(w->metrics.replays);
    if (call->dry_run)
        COUNTER_INC(w->metrics.dry_runs);
    /* The hot path's answer is written directly: the names come from the
     * config ([A-Za-z0-9_.-]) and fixed tables, only message_id needs
     * escaping -- a JSON library here cost a fifth of a decision's CPU. */
    char body[1024 + 8 * (CAP_NAME_MAX + 40)], id[6 * 128 + 1];
    size_t n = 0;
    n = put(body, n, sizeof body, "{\"decision\":\"");
    n = put(body, n, sizeof body, decision_outcome_name(d->outcome));
    n = put(body, n, sizeof body, "\",\"reason\":\"");
    n = put(body, n, sizeof body, decision_reason_name(d->reason));
    n = put(body, n, sizeof body, "\"");
    const char *rule = decision_rule_name(cfg, d->rule);
    if (rule) {
        n = put(body, n, sizeof body, ",\"rule\":\"");
        n = put(body, n, sizeof body, rule);
        n = put(body, n, sizeof body, "\"");
    }
    if (d->outcome == OUTCOME_DEFER) {
        char num[24];
        snprintf(num, sizeof num, "%lld", (long long)d->retry_after_s);
        n = put(body, n, sizeof body, ",\"retry_after\":");
        n = put(body, n, sizeof body, num);
    }
    n = put(body, n, sizeof body, ",\"message_id\":\"");
    n = put(body, n, sizeof body, json_escape(id, sizeof id, call->message_id));
    n = put(body, n, sizeof body, d->replay ? "\",\"replay\":true" : "\",\"replay\":false");
    if (call->dry_run)
        n = put(body, n, sizeof body, ",\"dry_run\":true");
    for (size_t k = 0; k < d->n_shadow; k++) {
        n = put(body, n, sizeof body, k ? ",{\"rule\":\"" : ",\"shadow\":[{\"rule\":\"");
        n = put(body, n, sizeof body, cfg->caps[d->shadow[k].rule].name);
        n = put(body, n, sizeof body, "\",\"would\":\"");
        n = put(body, n, sizeof body, decision_outcome_name(d->shadow[k].would));
        n = put(body, n, sizeof body, "\"}");
    }
    n = put(body, n, sizeof body, d->n_shadow ? "]}\n" : "}\n");
    /* Sized for the worst case (SHADOW_MAX names of CAP_NAME_MAX); if that
     * ever changes, truncate rather than write past the buffer. */
    _Static_assert(sizeof body > 200 + SHADOW_MAX * (CAP_NAME_MAX + 40) + 6 * 128,
                   "decide answer buffer too small");
    log_debug("decision", "user=%s decision=%s reason=%s rule=%s retry_after=%lld replay=%d",
              call->user, decision_outcome_name(d->outcome), decision_reason_name(d->reason),
              decision_rule_name(cfg, d->rule) ? decision_rule_name(cfg, d->rule) : "-",
              (long long)d->retry_after_s,
              d->replay);
    if (!call->dry_run && gateway_audit_wanted(w->gw)) {
        json_t *e = json_pack("{s:s, s:s, s:s, s:s, s:s, s:I, s:b}", "type", "decide",
                              "pseudonym", call->user, "channel", call->channel,
                              "decision", decision_outcome_name(d->outcome),
                              "reason", decision_reason_name(d->reason),
                              "config_generation", (json_int_t)cfg->generation,
                              "replay", d->replay);
        if (decision_rule_name(cfg, d->rule)) {
            json_object_set_new(e, "rule", json_string(decision_rule_name(cfg, d->rule)));
            json_object_set_new(e, "counted", json_integer(d->count));
        }
        gateway_audit(w->gw, e);
    }
    reply_text(w, call->req, 200, "application/json", body, n, NULL);
}

static void on_decided(void *arg, const struct store_reply *r)
{
    struct decide_call *call = arg;
    struct decision d;

    if (r->status != STORE_OK) {
        decide_unavailable(call, r->status == STORE_TIMEOUT ? "timeout"
                                 : r->status == STORE_ERROR ? "redis error" : "not connected");
    } else if (decision_decide_result(r, call->cfg, &d) != 0) {
        log_error("unexpected reply from decide script", "n=%zu", r->n);
        decide_unavailable(call, "bad reply");
    } else {
        decide_answer(call, &d);
    }
    config_release(call->cfg);
    free(call);
}

/* A decide body's fields, in the order they are checked: the strings, then
 * dry_run.  One list for both ways of reading a body. */
enum { F_USER, F_CHANNEL, F_CATEGORY, F_CAMPAIGN, F_MESSAGE_ID, F_TZ, F__STRINGS };
static const char *const field_names[] = {
    [F_USER] = "user", [F_CHANNEL] = "channel", [F_CATEGORY] = "category",
    [F_CAMPAIGN] = "campaign", [F_MESSAGE_ID] = "message_id", [F_TZ] = "tz",
    [F__STRINGS] = "dry_run", NULL
};
static const struct {
    bool required;
    size_t max;                    /* bytes; at least 1 */
} string_fields[F__STRINGS] = {
    [F_USER] = { true, USER_MAX },
    [F_CHANNEL] = { true, 64 },
    [F_CATEGORY] = { false, 64 },
    [F_CAMPAIGN] = { false, CAMPAIGN_MAX },
    [F_MESSAGE_ID] = { true, MESSAGE_ID_MAX },
    [F_TZ] = { false, TZ_NAME_MAX },
};

struct decide_fields {
    const char *s[F__STRINGS];     /* NUL-terminated; NULL when absent */
    size_t len[F__STRINGS];
    bool dry_run;
    char buf[USER_MAX + 64 + 64 + CAMPAIGN_MAX + MESSAGE_ID_MAX + TZ_NAME_MAX + F__STRINGS];
};

/* The usual body read without jansson (whose objects were a sixth of a
 * decision's instructions): a flat object (json_flat_scan) of known fields,
 * each valid.  Anything else -- an invalid field too -- returns false, and
 * the general path reads the body again and words the error. */
static bool fields_fast(const char *body, size_t len, struct decide_fields *df)
{
    struct json_flat_field f[F__STRINGS + 1];
    int n = json_flat_scan(body, len, f, sizeof f / sizeof f[0]);
    char *b = df->buf;

    if (n < 0)
        return false;
    memset(df->s, 0, sizeof df->s);
    df->dry_run = false;
    for (int k = 0; k < n; k++) {
        size_t i = 0;
        while (field_names[i] && !(strlen(field_names[i]) == f[k].klen &&
                                   memcmp(field_names[i], f[k].key, f[k].klen) == 0))
            i++;
        if (!field_names[i])
            return false;                /* unknown field */
        if (i == F__STRINGS) {           /* dry_run */
            if (f[k].type != JSON_FLAT_TRUE && f[k].type != JSON_FLAT_FALSE &&
                f[k].type != JSON_FLAT_NULL)
                return false;
            df->dry_run = f[k].type == JSON_FLAT_TRUE;
            continue;
        }
        if (f[k].type == JSON_FLAT_NULL)
            continue;                    /* as if absent */
        if (f[k].type != JSON_FLAT_STRING || f[k].slen < 1 || f[k].slen > string_fields[i].max)
            return false;
        memcpy(b, f[k].s, f[k].slen);    /* fits: each field once, each within its max */
        b[f[k].slen] = '\0';
        df->s[i] = b;
        df->len[i] = f[k].slen;
        b += f[k].slen + 1;
    }
    for (size_t i = 0; i < F__STRINGS; i++)
        if (string_fields[i].required && !df->s[i])
            return false;
    return true;
}

/* The general path: jansson, with the errors worded.  DF points into OBJ. */
static int fields_checked(json_t *obj, struct decide_fields *df, struct field_error *e)
{
    for (size_t i = 0; i < F__STRINGS; i++)
        if (validate_string(obj, field_names[i], string_fields[i].required, 1,
                            string_fields[i].max, &df->s[i], &df->len[i], e))
            return -1;
    return validate_bool(obj, field_names[F__STRINGS], &df->dry_run, e);
}

void api_decide(struct worker *w, struct http_request *req)
{
    const struct config *cfg = w->cfg;
    struct field_error e;
    struct decide_input in;
    struct decide_fields df;
    size_t body_len;
    const char *body = http_body(req, &body_len);
    json_t *obj = NULL;

    if (!fields_fast(body, body_len, &df)) {
        obj = api_body(w, req, field_names);
        if (!obj)
            return;
        if (fields_checked(obj, &df, &e) != 0) {
            reply_invalid(w, req, &e);
            json_decref(obj);
            return;
        }
    }
    const char *user = df.s[F_USER], *channel = df.s[F_CHANNEL], *category = df.s[F_CATEGORY],
               *campaign = df.s[F_CAMPAIGN], *message_id = df.s[F_MESSAGE_ID],
               *tzname = df.s[F_TZ];
    size_t user_len = df.len[F_USER], message_id_len = df.len[F_MESSAGE_ID];
    bool dry_run = df.dry_run;
    memset(&in, 0, sizeof in);
    in.channel = config_channel(cfg, channel);
    if (!in.channel) {
        reply_error(w, req, API_UNKNOWN_CHANNEL, "channel", "channel is not configured");
        json_decref(obj);
        return;
    }
    in.category = config_category(cfg, category ? category : cfg->default_category);
    if (!in.category) {
        reply_error(w, req, API_UNKNOWN_CATEGORY, "category", "category is not configured");
        json_decref(obj);
        return;
    }
    if (tzname) {
        in.zone = tz_db_find(w->tz, tzname);
        if (!in.zone) {
            reply_error(w, req, API_INVALID_FIELD, "tz", "tz is not a known IANA time zone");
            json_decref(obj);
            return;
        }
    } else if (cfg->quiet_hours.enabled) {
        in.zone = tz_db_find(w->tz, cfg->quiet_hours.default_tz);
    }
    struct decide_call *call = calloc(1, sizeof *call);
    if (!call) {
        reply_error(w, req, API_INTERNAL, NULL, "out of memory");
        json_decref(obj);
        return;
    }
    call->w = w;
    call->req = req;
    call->cfg = config_retain(cfg);   /* a reload must not free it under us */
    call->dry_run = dry_run;
    size_t channel_len = strnlen(in.channel->name, sizeof call->channel - 1);
    memcpy(call->channel, in.channel->name, channel_len);
    call->channel[channel_len] = '\0';
    memcpy(call->message_id, message_id, message_id_len);
    pseudonym_user(w->pseudonym, user, user_len, in.user);
    pseudonym_message(w->pseudonym, message_id, message_id_len, in.message);
    memcpy(call->user, in.user, sizeof call->user);
    http_note_user(req, in.user);
    in.campaign = campaign;
    in.dry_run = dry_run;

    struct script_args args;
    decision_decide_args(cfg, &in, (int64_t)time(NULL), &args);
    /* With the other decisions of this loop turn: one Redis call for all. */
    int rc = decide_batch_add(w->decide_batch, &args, cfg->limits.max_pending, on_decided, call);
    json_decref(obj);          /* decide_batch_add copied what it needs */
    if (rc != 0) {
        decide_unavailable(call, "not connected");
        config_release(call->cfg);
        free(call);
    }
}

/* ---- release ------------------------------------------------------------ */

struct release_call {
    struct worker *w;
    struct http_request *req;
};

static void on_released(void *arg, const struct store_reply *r)
{
    struct release_call *call = arg;
    int released = r->status == STORE_OK ? decision_release_result(r) : -1;

    if (released < 0)
        reply_error(call->w, call->req, API_STORE_UNAVAILABLE, NULL,
                    "the decision store is unavailable; retry later");
    else {
        COUNTER_ADD(call->w->metrics.releases, (unsigned)released);
        reply_json(call->w, call->req, 200, json_pack("{s:b}", "released", released));
    }
    free(call);
}

void api_release(struct worker *w, struct http_request *req)
{
    static const char *const fields[] = { "user", "message_id", NULL };
    const char *user, *message_id;
    size_t user_len, message_id_len;
    char user_hash[PSEUDONYM_USER_HEX + 1], message_hash[PSEUDONYM_SHORT_HEX + 1];
    struct field_error e;

    json_t *obj = api_body(w, req, fields);
    if (!obj)
        return;
    if (validate_string(obj, "user", true, 1, USER_MAX, &user, &user_len, &e) ||
        validate_string(obj, "message_id", true, 1, MESSAGE_ID_MAX, &message_id,
                        &message_id_len, &e)) {
        reply_invalid(w, req, &e);
        json_decref(obj);
        return;
    }
    pseudonym_user(w->pseudonym, user, user_len, user_hash);
    pseudonym_message(w->pseudonym, message_id, message_id_len, message_hash);
    http_note_user(req, user_hash);
    json_decref(obj);

    struct release_call *call = malloc(sizeof *call);
    if (!call) {
        reply_error(w, req, API_INTERNAL, NULL, "out of memory");
        return;
    }
    call->w = w;
    call->req = req;
    struct script_args args;
    decision_release_args(w->cfg, user_hash, message_hash, &args);
    if (store_eval(w->store, args.script, args.nkeys, args.argc, args.argv, args.argvlen,
                   on_released, call) != 0) {
        free(call);
        reply_error(w, req, API_STORE_UNAVAILABLE, NULL,
                    "the decision store is unavailable; retry later");
    }
}

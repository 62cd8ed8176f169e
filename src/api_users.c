/*
 * api_users: what capgate holds about a person, and forgetting them.
 *   POST /v1/users/show   {"user"}  -> everything held, in plain words
 *                                      (?download=1: as a file, GDPR access)
 *   POST /v1/users/erase  {"user"}  -> every trace removed; an opt-out,
 *                                      complaint or bounce leaves a minimal
 *                                      suppression marker
 *   POST /v1/users/export {"user"}  -> what the person gave (consent
 *                                      preferences and the receipts of every
 *                                      change) as a portable document, GDPR
 *                                      Art. 20; always a file
 * show and export read the consent history with history.lua (show after
 * show.lua: two reads, since the audit scan is show's alone).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "capgate/api.h"
#include "capgate/campaigns.h"
#include "capgate/audit_entry.h"
#include "capgate/clock.h"
#include "capgate/config.h"
#include "capgate/decision.h"
#include "capgate/http.h"
#include "capgate/pseudonym.h"
#include "capgate/receipt.h"
#include "capgate/reply.h"
#include "capgate/rotation.h"
#include "capgate/store.h"
#include "capgate/requests.h"
#include "capgate/loop.h"

#define SENDS_MAX 1000

#define EXPORT_FORMAT "capgate-export/1"

enum user_action { USER_SHOW, USER_ERASE, USER_EXPORT };

struct user_call {
    struct loop *loop;
    struct http_request *req;
    const struct config *cfg;
    bool download;
    bool erase;
    enum user_action action;
    json_t *body;               /* show: the answer, waiting for the history */
    char user[PSEUDONYM_USER_HEX + 1];
    /* During a key rotation (rotation.h): the previous key's pseudonym, ''
     * without one, and what was found under it that does not move (audit
     * entries, waiting messages): shown or erased along with the rest. */
    char old_user[PSEUDONYM_USER_HEX + 1];
    json_t *old_audit;
    long long old_removed[4];   /* erase: sends, consent, audit entries, deferred */
};

static void iso8601(int64_t ms, char out[32])
{
    clock_format_rfc3339(out, 32, (time_t)(ms / 1000));
}

static json_t *time_json(int64_t ms)
{
    char buf[32];
    iso8601(ms, buf);
    return json_string(buf);
}

static json_t *str_item(const struct store_item *it)
{
    if (it->type == STORE_STR)
        return json_stringn(it->s, it->len);
    if (it->type == STORE_INT)
        return json_integer(it->i);
    return json_null();
}

/* Reads N audit entries flattened as [id, n_fields, f, v, ...] from ITEMS at
 * *POS into an array of objects. */
static json_t *audit_entries(const struct store_reply *r, size_t *pos, long long n)
{
    json_t *out = json_array();
    for (long long e = 0; e < n && *pos + 2 <= r->n; e++) {
        const struct store_item *id = &r->items[(*pos)++];
        long long nf = r->items[(*pos)++].i;
        json_t *o = json_object();
        json_object_set_new(o, "id", str_item(id));
        if (id->type == STORE_STR)
            json_object_set_new(o, "at", time_json(strtoll(id->s, NULL, 10)));
        if (nf < 0 || (size_t)nf > (r->n - *pos) / 2)
            nf = (long long)((r->n - *pos) / 2);
        audit_entry_fields(o, &r->items[*pos], (size_t)nf, true);
        *pos += 2 * (size_t)nf;
        json_array_append_new(out, o);
    }
    return out;
}

static const char *state_word(const char *s)
{
    return strcmp(s, "in") == 0 ? "opt_in" : strcmp(s, "out") == 0 ? "opt_out" : s;
}

static bool item_is(const struct store_item *it, const char *s)
{
    return it->type == STORE_STR && it->len == strlen(s) && memcmp(it->s, s, it->len) == 0;
}

/* "%.*s" of a reply string into OUT (N bytes); "" for anything else. */
static const char *item_str(const struct store_item *it, char *out, size_t n)
{
    snprintf(out, n, "%.*s", it->type == STORE_STR ? (int)it->len : 0,
             it->type == STORE_STR ? it->s : "");
    return out;
}

/* history.lua's consent records at *POS as preferences (a bounce is no
 * preference: show lists it among the suppressions). */
static json_t *history_preferences(const struct store_reply *r, size_t *pos)
{
    json_t *out = json_array();
    long long n = *pos < r->n ? r->items[(*pos)++].i : 0;
    for (long long k = 0; k < n && *pos + 4 <= r->n; k++, *pos += 4) {
        char scope[160], state[16], source[160], when[32];
        item_str(&r->items[*pos], scope, sizeof scope);
        item_str(&r->items[*pos + 1], state, sizeof state);
        item_str(&r->items[*pos + 3], source, sizeof source);
        char *bar = strchr(scope, '|');
        if (!bar || strcmp(state, "bounced") == 0)
            continue;
        *bar = '\0';
        iso8601(r->items[*pos + 2].i, when);
        json_array_append_new(out, json_pack("{s:s, s:s, s:s, s:s, s:s}", "channel", scope,
                              "category", bar + 1, "state", state_word(state), "source", source,
                              "updated_at", when));
    }
    return out;
}

/* history.lua's changes at *POS as receipts of PRINCIPAL, oldest first. */
static json_t *history_receipts(const struct store_reply *r, size_t *pos, const char *principal)
{
    json_t *out = json_array();
    long long n = *pos < r->n ? r->items[(*pos)++].i : 0;
    for (long long k = 0; k < n && *pos + 8 <= r->n; k++, *pos += 8) {
        const struct store_item *it = &r->items[*pos];
        char scope[160], id[RECEIPT_ID_HEX + 1], method[RECEIPT_METHOD_MAX + 1], basis[32];
        char notice[4 * RECEIPT_NOTICE_MAX + 1], controller[RECEIPT_CONTROLLER_MAX + 1];
        struct receipt rc = {
            .scope = item_str(&it[0], scope, sizeof scope),
            .record_id = item_str(&it[1], id, sizeof id),
            .at_ms = it[2].type == STORE_INT ? it[2].i : 0,
            .opt_in = item_is(&it[3], "in"),
            .method = item_str(&it[4], method, sizeof method),
            .legal_basis = item_str(&it[5], basis, sizeof basis),
            .notice = item_str(&it[6], notice, sizeof notice),
            .controller = item_str(&it[7], controller, sizeof controller),
            .principal = principal,
        };
        json_t *o = receipt_json(&rc);
        if (o)
            json_array_append_new(out, o);
    }
    return out;
}

static void finish(struct user_call *call)
{
    json_decref(call->body);
    json_decref(call->old_audit);
    config_release(call->cfg);
    free(call);
}

static void unavailable(struct user_call *call)
{
    reply_error(call->loop, call->req, API_STORE_UNAVAILABLE, NULL,
                "the store is unavailable; retry later");
    finish(call);
}

/* The answer as a file named after the pseudonym's prefix. */
static void reply_file(struct user_call *call, const char *what, json_t *body)
{
    char disp[96];
    snprintf(disp, sizeof disp, "attachment; filename=\"capgate-%s%.12s.json\"", what,
             call->user);
    const char *const headers[] = { "Content-Disposition", disp, NULL };
    campaign_names_reply(call->loop, call->req, body, headers);
}

/* show: the consent history joins what show.lua found. */
static void on_history(void *arg, const struct store_reply *r)
{
    struct user_call *call = arg;
    if (r->status != STORE_OK || r->n < 3 || r->items[0].type != STORE_INT) {
        unavailable(call);
        return;
    }
    size_t pos = 1;
    json_decref(history_preferences(r, &pos));
    json_t *body = call->body;
    call->body = NULL;
    json_object_set_new(body, "consent_history", history_receipts(r, &pos, call->user));
    COUNTER_INC(call->loop->metrics.shows);
    if (call->download)
        reply_file(call, "", body);
    else
        campaign_names_reply(call->loop, call->req, body, NULL);
    finish(call);
}

/* export: the portable document.  What the person gave, not what capgate
 * observed: the sends, caps and audit entries are show's (Art. 15). */
static void on_exported(void *arg, const struct store_reply *r)
{
    struct user_call *call = arg;
    if (r->status != STORE_OK || r->n < 3 || r->items[0].type != STORE_INT) {
        unavailable(call);
        return;
    }
    size_t pos = 1;
    json_t *prefs = history_preferences(r, &pos);
    json_t *receipts = history_receipts(r, &pos, call->user);
    const char *controller = config_controller(call->cfg);
    json_t *doc = json_pack("{s:s, s:o, s:s, s:o, s:o, s:o}", "format", EXPORT_FORMAT,
                            "exported_at", time_json(r->items[0].i), "principal", call->user,
                            "controller", controller ? json_string(controller) : json_null(),
                            "preferences", prefs, "receipts", receipts);
    COUNTER_INC(call->loop->metrics.shows);
    reply_file(call, "export-", doc);
    finish(call);
}

static int ask_history(struct user_call *call, store_cb *cb)
{
    struct script_args args;
    decision_history_args(call->cfg, call->user, &args);
    return store_eval(call->loop->store, args.script, args.nkeys, args.argc, args.argv,
                      args.argvlen, cb, call);
}

static void on_shown(void *arg, const struct store_reply *r)
{
    struct user_call *call = arg;
    const struct config *cfg = call->cfg;
    char when[32], line[512];

    if (r->status != STORE_OK || r->n < 5 || r->items[0].type != STORE_INT) {
        reply_error(call->loop, call->req, API_STORE_UNAVAILABLE, NULL,
                    "the store is unavailable; retry later");
        goto done;
    }
    int64_t now = r->items[0].i;
    size_t pos = 1;
    const struct store_item *raw = &r->items[pos++];
    long long ignored = r->items[pos++].i;
    long long nconsent = r->items[pos++].i;
    json_t *summary = json_array(), *consent = json_array(), *suppressions = json_array();

    for (long long k = 0; k < nconsent && pos + 4 <= r->n; k++, pos += 4) {
        char scope[160], state[16], source[160];
        snprintf(scope, sizeof scope, "%.*s", (int)r->items[pos].len, r->items[pos].s);
        snprintf(state, sizeof state, "%.*s", (int)r->items[pos + 1].len, r->items[pos + 1].s);
        snprintf(source, sizeof source, "%.*s", (int)r->items[pos + 3].len, r->items[pos + 3].s);
        int64_t at = r->items[pos + 2].i;
        char *bar = strchr(scope, '|');
        if (!bar)
            continue;
        *bar = '\0';
        iso8601(at, when);
        if (strcmp(scope, "bounce") == 0) {
            json_array_append_new(suppressions, json_pack("{s:s, s:s, s:s, s:s}", "channel", bar + 1,
                                  "category", "*", "cause", "hard_bounce", "since", when));
            snprintf(line, sizeof line, "No %s at all since %s: the address bounced.", bar + 1, when);
            json_array_append_new(summary, json_string(line));
            continue;
        }
        json_array_append_new(consent, json_pack("{s:s, s:s, s:s, s:s, s:s}", "channel", scope,
                              "category", bar + 1, "state", state_word(state), "source", source,
                              "updated_at", when));
        if (strcmp(state, "out") == 0) {
            const char *cause = strcmp(source, "complaint") == 0 ? "complaint"
                              : strcmp(source, "unsubscribe") == 0 ? "unsubscribe" : "opt_out";
            json_array_append_new(suppressions, json_pack("{s:s, s:s, s:s, s:s}", "channel", scope,
                                  "category", bar + 1, "cause", cause, "since", when));
        }
        snprintf(line, sizeof line, "%s %s for channel %s, category %s, since %s (source: %s).",
                 strcmp(state, "in") == 0 ? "Opted in" : "Opted out",
                 strcmp(state, "in") == 0 ? "to messages" : "of messages", scope, bar + 1, when,
                 source);
        json_array_append_new(summary, json_string(line));
    }
    long long naudit = pos < r->n ? r->items[pos++].i : 0;
    json_t *audit = audit_entries(r, &pos, naudit);
    if (call->old_audit)
        json_array_extend(audit, call->old_audit);
    json_t *deferred = json_array();
    long long ndeferred = pos < r->n ? r->items[pos++].i : 0;
    for (long long k = 0; k < ndeferred && pos + 4 <= r->n; k++, pos += 4) {
        json_array_append_new(deferred, json_pack("{s:s%, s:o, s:I, s:I}",
                              "message", r->items[pos].s, r->items[pos].len,
                              "deliver_at", time_json(r->items[pos + 1].i),
                              "attempts", (json_int_t)r->items[pos + 2].i,
                              "priority", (json_int_t)r->items[pos + 3].i));
    }
    if (ndeferred) {
        snprintf(line, sizeof line, "%lld message%s waiting to be delivered later.", ndeferred,
                 ndeferred == 1 ? " is" : "s are");
        json_array_append_new(summary, json_string(line));
    }

    /* Sends that still count, and the standing against each cap. */
    static struct send_record recs[SENDS_MAX];   /* one loop thread uses it at a time */
    size_t n = raw->type == STORE_STR ? decision_parse_sends(raw->s, raw->len, recs, SENDS_MAX) : 0;
    int64_t longest = config_retention_ms(cfg);
    json_t *sends = json_array();
    size_t counting = 0;
    for (size_t k = 0; k < n; k++) {
        if (recs[k].at_ms <= now - longest)
            continue;
        const char *ch = decision_channel_by_id(cfg, recs[k].channel_id);
        const char *cat = decision_category_by_id(cfg, recs[k].category_id);
        char camp[16];
        snprintf(camp, sizeof camp, "#%06x", (unsigned)recs[k].campaign);
        iso8601(recs[k].at_ms, when);
        json_array_append_new(sends, json_pack("{s:s, s:s, s:o, s:s, s:b}",
                              "channel", ch ? ch : "(no longer configured)",
                              "category", cat ? cat : "(no longer configured)",
                              "campaign", recs[k].campaign ? json_string(camp) : json_null(),
                              "sent_at", when, "counts_toward_caps", !recs[k].exempt));
        counting++;
    }
    json_t *caps = json_array();
    for (size_t c = 0; c < cfg->n_caps; c++) {
        const struct cfg_cap *cap = &cfg->caps[c];
        /* Per campaign: one standing per campaign seen in the window. */
        uint32_t seen[64];
        size_t nseen = cap->per == CAP_PER_CAMPAIGN ? 0 : 1;
        if (cap->per == CAP_PER_CAMPAIGN)
            for (size_t k = 0; k < n && nseen < 64; k++) {
                if (!recs[k].campaign || recs[k].at_ms <= now - cap->window_ms ||
                    !decision_cap_counts(cap, &recs[k]))
                    continue;
                size_t j = 0;
                while (j < nseen && seen[j] != recs[k].campaign)
                    j++;
                if (j == nseen)
                    seen[nseen++] = recs[k].campaign;
            }
        for (size_t s = 0; s < nseen; s++) {
            int used = 0;
            int64_t oldest = 0;
            for (size_t k = 0; k < n; k++) {
                if (recs[k].at_ms <= now - cap->window_ms || !decision_cap_counts(cap, &recs[k]))
                    continue;
                if (cap->per == CAP_PER_CAMPAIGN && recs[k].campaign != seen[s])
                    continue;
                if (!used)
                    oldest = recs[k].at_ms;
                used++;
            }
            json_t *o = json_pack("{s:s, s:i, s:i, s:I, s:s}", "rule", cap->name, "used", used,
                                  "limit", cap->limit, "window_s", (json_int_t)(cap->window_ms / 1000),
                                  "mode", cap->mode == CAP_SHADOW ? "shadow" : "enforce");
            if (used) {
                iso8601(oldest + cap->window_ms, when);
                json_object_set_new(o, "frees_up_at", json_string(when));
            }
            if (cap->per == CAP_PER_CAMPAIGN) {
                char camp[16];
                snprintf(camp, sizeof camp, "#%06x", (unsigned)seen[s]);
                json_object_set_new(o, "campaign", json_string(camp));
            }
            json_array_append_new(caps, o);
        }
    }
    snprintf(line, sizeof line, "%zu message%s sent in the last %lld days still count toward caps.",
             counting, counting == 1 ? "" : "s", (long long)(longest / 86400000));
    json_array_insert_new(summary, 0, json_string(line));

    json_t *body = json_pack("{s:s, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o}",
                             "pseudonym", call->user,
                             "generated_at", time_json(now),
                             "summary", summary, "consent", consent, "suppressions", suppressions,
                             "sends", sends, "caps", caps, "deferred", deferred, "audit", audit);
    if (cfg->fatigue.enabled)
        json_object_set_new(body, "fatigue",
                            json_pack("{s:I, s:i, s:b}", "ignored_in_a_row", (json_int_t)ignored,
                                      "unengaged_after", cfg->fatigue.unengaged_after,
                                      "tighter_cap_applies", ignored >= cfg->fatigue.unengaged_after));
    call->body = body;
    if (ask_history(call, on_history) != 0)
        unavailable(call);
    return;
done:
    finish(call);
}

static void on_erased(void *arg, const struct store_reply *r)
{
    struct user_call *call = arg;
    if (r->status != STORE_OK || r->n < 4) {
        reply_error(call->loop, call->req, API_STORE_UNAVAILABLE, NULL,
                    "the store is unavailable; nothing was erased, retry later");
        goto done;
    }
    long long kept = r->items[3].i;
    json_t *markers = json_array();
    for (long long k = 0; k < kept && 5 + 2 * (size_t)k < r->n; k++) {
        const struct store_item *scope = &r->items[4 + 2 * k], *fact = &r->items[5 + 2 * k];
        json_array_append_new(markers, json_pack("{s:s%, s:s%}", "scope", scope->s, scope->len,
                                                 "fact", fact->s, fact->len));
    }
    COUNTER_INC(call->loop->metrics.erasures);
    /* The file is append-only: this line tells the log pipeline to delete
     * every earlier line of this pseudonym. */
    if (loop_audit_wanted(call->loop))
        loop_audit(call->loop, json_pack("{s:s, s:s, s:b}", "type", "erase", "pseudonym",
                                             call->user, "suppression_kept", kept > 0));
    size_t last = 4 + 2 * (size_t)kept;
    json_t *body = json_pack("{s:b, s:{s:I, s:I, s:I, s:I, s:I}, s:b, s:o}", "erased", 1, "removed",
                             "sends", (json_int_t)(r->items[0].i + call->old_removed[0]),
                             "consent_records", (json_int_t)(r->items[1].i + call->old_removed[1]),
                             "audit_entries", (json_int_t)(r->items[2].i + call->old_removed[2]),
                             "deferred_messages",
                             (json_int_t)((last < r->n ? r->items[last].i : 0) +
                                          call->old_removed[3]),
                             "consent_history",
                             (json_int_t)(last + 1 < r->n ? r->items[last + 1].i : 0),
                             "suppression_kept", kept > 0, "suppression", markers);
    json_object_set_new(body, "note", json_string(
        kept > 0 ? "Everything was erased except a minimal suppression marker (the pseudonym, "
                   "what was refused, the day) so that erasing never re-enables messages."
                 : "Everything held about this person was erased."));
    reply_json(call->loop, call->req, 200, body);
done:
    finish(call);
}

static void refuse(struct user_call *call)
{
    reply_error(call->loop, call->req, API_STORE_UNAVAILABLE, NULL,
                call->erase ? "the store is unavailable; retry later (it may have erased part "
                              "of what is held: erasing again is safe)"
                            : "the store is unavailable; retry later");
    finish(call);
}

/* show.lua or erase.lua for pseudonym USER. */
static int ask(struct user_call *call, const char *user, store_cb *cb)
{
    struct script_args args;
    if (call->erase)
        decision_erase_args(call->cfg, user, &args);
    else
        decision_show_args(call->cfg, user, &args);
    return store_eval(call->loop->store, args.script, args.nkeys, args.argc, args.argv,
                      args.argvlen, cb, call);
}

/* What show.lua or erase.lua found under the previous key's pseudonym. */
static void on_old(void *arg, const struct store_reply *r)
{
    struct user_call *call = arg;
    if (r->status != STORE_OK || r->n < 4) {
        refuse(call);
        return;
    }
    if (call->erase) {
        long long kept = r->items[3].i;
        size_t last = 4 + 2 * (size_t)(kept > 0 ? kept : 0);
        for (int k = 0; k < 3; k++)
            call->old_removed[k] = r->items[k].i;
        call->old_removed[3] = last < r->n ? r->items[last].i : 0;
    } else {
        /* now, sends, ignored, n_consent x 4, then the audit entries. */
        size_t pos = 3;
        long long nconsent = r->items[pos++].i;
        pos += 4 * (size_t)(nconsent > 0 ? nconsent : 0);
        long long naudit = pos < r->n ? r->items[pos++].i : 0;
        call->old_audit = audit_entries(r, &pos, naudit);
    }
    if (ask(call, call->user, call->erase ? on_erased : on_shown) != 0)
        refuse(call);
}

static void on_moved(void *arg, bool ok)
{
    struct user_call *call = arg;
    /* The history moves whole (rotate.lua): export has nothing to read
     * under the old pseudonym. */
    if (!ok || (call->action == USER_EXPORT ? ask_history(call, on_exported)
                                            : ask(call, call->old_user, on_old)) != 0)
        refuse(call);
}

static int begin(struct user_call *call)
{
    switch (call->action) {
    case USER_EXPORT:
        return ask_history(call, on_exported);
    case USER_ERASE:
        return ask(call, call->user, on_erased);
    case USER_SHOW:
    default:
        return ask(call, call->user, on_shown);
    }
}

static void start(struct loop *l, struct http_request *req, enum user_action action)
{
    struct field_error e;
    struct req_person rp;
    size_t len;
    const char *body = http_body(req, &len);

    if (request_user(body, len, &rp, &e) != 0) {
        reply_field_error(l, req, &e);
        request_free(rp.json);
        return;
    }
    struct user_call *call = calloc(1, sizeof *call);
    if (!call) {
        request_free(rp.json);
        reply_error(l, req, API_INTERNAL, NULL, "out of memory");
        return;
    }
    call->loop = l;
    call->req = req;
    call->cfg = config_retain(l->cfg);
    const char *dl = http_query(req, "download");
    call->download = dl && strcmp(dl, "0") != 0;
    call->action = action;
    call->erase = action == USER_ERASE;
    pseudonym_user(l->pseudonym, rp.user, rp.user_len, call->user);
    http_note_user(req, call->user);
    bool rotating = pseudonym_user_previous(l->pseudonym, rp.user, rp.user_len, call->old_user);
    request_free(rp.json);

    /* During a rotation, the records that move are moved first; what stays
     * under the old pseudonym is asked for (or erased) next, then the rest. */
    if (rotating ? rotation_move(l, call->old_user, call->user, on_moved, call) != 0
                 : begin(call) != 0)
        refuse(call);
}

void api_users_show(struct loop *l, struct http_request *req)
{
    start(l, req, USER_SHOW);
}

void api_users_export(struct loop *l, struct http_request *req)
{
    start(l, req, USER_EXPORT);
}

void api_users_erase(struct loop *l, struct http_request *req)
{
    start(l, req, USER_ERASE);
}

/*
 * api_users: what capgate holds about a person, and forgetting them.
 *   POST /v1/users/show   {"user"}  -> everything held, in plain words
 *                                      (?download=1: as a file, GDPR access)
 *   POST /v1/users/erase  {"user"}  -> every trace removed; an opt-out,
 *                                      complaint or bounce leaves a minimal
 *                                      suppression marker
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "capgate/api.h"
#include "capgate/audit_entry.h"
#include "capgate/config.h"
#include "capgate/decision.h"
#include "capgate/gateway.h"
#include "capgate/http.h"
#include "capgate/pseudonym.h"
#include "capgate/reply.h"
#include "capgate/store.h"
#include "capgate/validate.h"
#include "capgate/worker.h"

#define SENDS_MAX 1000

struct user_call {
    struct worker *w;
    struct http_request *req;
    const struct config *cfg;
    bool download;
    char user[PSEUDONYM_USER_HEX + 1];
};

static void iso8601(int64_t ms, char out[32])
{
    time_t s = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&s, &tm);
    strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
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

static void on_shown(void *arg, const struct store_reply *r)
{
    struct user_call *call = arg;
    const struct config *cfg = call->cfg;
    char when[32], line[512];

    if (r->status != STORE_OK || r->n < 5 || r->items[0].type != STORE_INT) {
        reply_error(call->w, call->req, API_STORE_UNAVAILABLE, NULL,
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
    COUNTER_INC(call->w->metrics.shows);
    if (call->download) {
        char disp[96];
        snprintf(disp, sizeof disp, "attachment; filename=\"capgate-%.12s.json\"", call->user);
        const char *const headers[] = { "Content-Disposition", disp, NULL };
        reply_json_headers(call->w, call->req, 200, body, headers);
    } else {
        reply_json(call->w, call->req, 200, body);
    }
done:
    config_release(call->cfg);
    free(call);
}

static void on_erased(void *arg, const struct store_reply *r)
{
    struct user_call *call = arg;
    if (r->status != STORE_OK || r->n < 4) {
        reply_error(call->w, call->req, API_STORE_UNAVAILABLE, NULL,
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
    COUNTER_INC(call->w->metrics.erasures);
    /* The file is append-only: this line tells the log pipeline to delete
     * every earlier line of this pseudonym. */
    if (gateway_audit_wanted(call->w->gw))
        gateway_audit(call->w->gw, json_pack("{s:s, s:s, s:b}", "type", "erase", "pseudonym",
                                             call->user, "suppression_kept", kept > 0));
    size_t last = 4 + 2 * (size_t)kept;
    json_t *body = json_pack("{s:b, s:{s:I, s:I, s:I, s:I}, s:b, s:o}", "erased", 1, "removed",
                             "sends", (json_int_t)r->items[0].i,
                             "consent_records", (json_int_t)r->items[1].i,
                             "audit_entries", (json_int_t)r->items[2].i,
                             "deferred_messages",
                             (json_int_t)(last < r->n ? r->items[last].i : 0),
                             "suppression_kept", kept > 0, "suppression", markers);
    json_object_set_new(body, "note", json_string(
        kept > 0 ? "Everything was erased except a minimal suppression marker (the pseudonym, "
                   "what was refused, the day) so that erasing never re-enables messages."
                 : "Everything held about this person was erased."));
    reply_json(call->w, call->req, 200, body);
done:
    config_release(call->cfg);
    free(call);
}

static void start(struct worker *w, struct http_request *req, bool erase)
{
    static const char *const fields[] = { "user", NULL };
    const char *user;
    size_t user_len;
    struct field_error e;

    json_t *obj = api_body(w, req, fields);
    if (!obj)
        return;
    if (validate_string(obj, "user", true, 1, 256, &user, &user_len, &e)) {
        reply_error(w, req, e.code, e.field, "%s", e.message);
        json_decref(obj);
        return;
    }
    struct user_call *call = calloc(1, sizeof *call);
    if (!call) {
        json_decref(obj);
        reply_error(w, req, API_INTERNAL, NULL, "out of memory");
        return;
    }
    call->w = w;
    call->req = req;
    call->cfg = config_retain(w->cfg);
    const char *dl = http_query(req, "download");
    call->download = dl && strcmp(dl, "0") != 0;
    pseudonym_user(w->pseudonym, user, user_len, call->user);
    http_note_user(req, call->user);
    json_decref(obj);

    struct script_args args;
    if (erase)
        decision_erase_args(call->cfg, call->user, &args);
    else
        decision_show_args(call->cfg, call->user, &args);
    if (store_eval(w->store, args.script, args.nkeys, args.argc, args.argv, args.argvlen,
                   erase ? on_erased : on_shown, call) != 0) {
        config_release(call->cfg);
        free(call);
        reply_error(w, req, API_STORE_UNAVAILABLE, NULL, "the store is unavailable; retry later");
    }
}

void api_users_show(struct worker *w, struct http_request *req)
{
    start(w, req, false);
}

void api_users_erase(struct worker *w, struct http_request *req)
{
    start(w, req, true);
}

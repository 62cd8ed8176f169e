/* decision: script arguments and results.  See decision.h and src/lua/. */
#include "capgate/decision.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "capgate/tz.h"
#include "lua_scripts.h"

const char *const decision_scripts[SCRIPT__COUNT] = {
    [SCRIPT_DECIDE] = lua_decide,
    [SCRIPT_RELEASE] = lua_release,
    [SCRIPT_CONSENT] = lua_consent,
};

static const char *const outcome_names[OUTCOME__COUNT] = { "allow", "defer", "deny" };
static const char *const reason_names[REASON__COUNT] = {
    "ok", "opted_out", "consent_required", "quiet_hours", "cap", "store_unavailable"
};

const char *decision_outcome_name(enum decision_outcome o)
{
    return (unsigned)o < OUTCOME__COUNT ? outcome_names[o] : "?";
}

const char *decision_reason_name(enum decision_reason r)
{
    return (unsigned)r < REASON__COUNT ? reason_names[r] : "?";
}

/* ---- building arguments ------------------------------------------------- */

static void args_init(struct script_args *a, size_t script, int nkeys)
{
    a->script = script;
    a->nkeys = nkeys;
    a->argc = 0;
    a->used = 0;
}

static void arg_str(struct script_args *a, const char *s, size_t len)
{
    if (a->argc >= SCRIPT_ARGS_MAX)
        return;
    a->argv[a->argc] = s;
    a->argvlen[a->argc] = len;
    a->argc++;
}

static void arg_cstr(struct script_args *a, const char *s)
{
    arg_str(a, s ? s : "", s ? strlen(s) : 0);
}

/* Formats into the args' own buffer (the values must outlive this call). */
__attribute__((format(printf, 2, 3)))
static void arg_fmt(struct script_args *a, const char *fmt, ...)
{
    va_list ap;
    size_t room = sizeof a->buf - a->used;
    va_start(ap, fmt);
    int n = vsnprintf(a->buf + a->used, room, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= room)
        n = 0;
    arg_str(a, a->buf + a->used, (size_t)n);
    a->used += (size_t)n + 1;
}

static void arg_key(struct script_args *a, const char *user, char kind)
{
    arg_fmt(a, "cg:{%s}:%c", user, kind);
}

static bool cap_matches(const struct cfg_cap *cap, const struct decide_input *in)
{
    if (cap->channel && strcmp(cap->channel, in->channel->name) != 0)
        return false;
    if (cap->category && strcmp(cap->category, in->category->name) != 0)
        return false;
    /* A per-campaign cap has nothing to count for a message without one. */
    if (cap->per == CAP_PER_CAMPAIGN && !in->campaign)
        return false;
    return true;
}

void decision_decide_args(const struct config *cfg, const struct decide_input *in,
                          int64_t now_s, struct script_args *a)
{
    const struct cfg_category *cat = in->category;
    bool requires_opt_in = in->channel->requires_opt_in || cat->requires_opt_in;
    char flags[4];
    size_t nf = 0;

    if (in->dry_run) flags[nf++] = 'd';
    if (cat->ignores_opt_out) flags[nf++] = 'o';
    if (requires_opt_in) flags[nf++] = 'i';
    flags[nf] = '\0';

    args_init(a, SCRIPT_DECIDE, 2);
    arg_key(a, in->user, 's');
    arg_key(a, in->user, 'c');
    arg_cstr(a, in->message);
    arg_cstr(a, in->channel->name);
    arg_cstr(a, cat->name);
    arg_cstr(a, in->campaign);
    arg_fmt(a, "%s", flags);
    arg_fmt(a, "%lld", (long long)config_retention_ms(cfg));
    arg_fmt(a, "%lld", (long long)cfg->idempotency_ms);
    arg_fmt(a, "%lld", (long long)cfg->max_defer_ms);

    /* Quiet hours as absolute intervals around now: the script compares them
     * with Redis's clock, and the zone arithmetic (DST included) stays here. */
    struct tz_interval iv[8];
    size_t niv = 0;
    if (cfg->quiet_hours.enabled && in->zone && !cat->exempt_from_quiet_hours &&
        config_quiet_channel(cfg, in->channel->name))
        niv = tz_quiet_intervals(in->zone, cfg->quiet_hours.start_min,
                                 cfg->quiet_hours.end_min, now_s - 86400, now_s + 2 * 86400,
                                 iv, sizeof iv / sizeof iv[0]);
    arg_fmt(a, "%zu", niv);
    for (size_t k = 0; k < niv; k++) {
        arg_fmt(a, "%lld", (long long)iv[k].start * 1000);
        arg_fmt(a, "%lld", (long long)iv[k].end * 1000);
    }

    /* Only the caps that apply to this message travel to Redis. */
    int ncaps_at = a->argc;
    arg_cstr(a, "0");
    size_t ncaps = 0;
    if (!cat->exempt_from_caps) {
        for (size_t k = 0; k < cfg->n_caps; k++) {
            const struct cfg_cap *cap = &cfg->caps[k];
            if (!cap_matches(cap, in))
                continue;
            arg_fmt(a, "%zu", k);
            arg_cstr(a, cap->channel);
            arg_cstr(a, cap->category);
            arg_cstr(a, cap->per == CAP_PER_CAMPAIGN ? "1" : "0");
            arg_fmt(a, "%d", cap->limit);
            arg_fmt(a, "%lld", (long long)cap->window_ms);
            arg_cstr(a, cap->on_exceed == CAP_DENY ? "1" : "0");
            ncaps++;
        }
    }
    if (ncaps) {
        int n = snprintf(a->buf + a->used, sizeof a->buf - a->used, "%zu", ncaps);
        a->argv[ncaps_at] = a->buf + a->used;
        a->argvlen[ncaps_at] = (size_t)n;
        a->used += (size_t)n + 1;
    }
}

/* ---- reading results ---------------------------------------------------- */

static bool all_ints(const struct store_reply *r, size_t n)
{
    if (r->status != STORE_OK || r->n != n)
        return false;
    for (size_t k = 0; k < n; k++)
        if (r->items[k].type != STORE_INT)
            return false;
    return true;
}

int decision_decide_result(const struct store_reply *r, const struct config *cfg,
                           struct decision *out)
{
    if (!all_ints(r, 6))
        return -1;
    long long outcome = r->items[0].i, reason = r->items[1].i, rule = r->items[2].i;
    long long retry_ms = r->items[3].i;
    if (outcome < 0 || outcome >= OUTCOME__COUNT || reason < 0 || reason > REASON_CAP ||
        rule < 0 || rule > (long long)cfg->n_caps || retry_ms < 0)
        return -1;
    out->outcome = (enum decision_outcome)outcome;
    out->reason = (enum decision_reason)reason;
    out->rule = (int)rule - 1;
    out->retry_after_s = (retry_ms + 999) / 1000;   /* exact, rounded up */
    out->replay = r->items[4].i != 0;
    return 0;
}

void decision_release_args(const char *user, const char *message, struct script_args *a)
{
    args_init(a, SCRIPT_RELEASE, 1);
    arg_key(a, user, 's');
    arg_cstr(a, message);
}

int decision_release_result(const struct store_reply *r)
{
    if (!all_ints(r, 1))
        return -1;
    return r->items[0].i ? 1 : 0;
}

void decision_consent_args(const char *user, const char *channel, const char *category,
                           bool opt_in, const char *source, struct script_args *a)
{
    args_init(a, SCRIPT_CONSENT, 1);
    arg_key(a, user, 'c');
    arg_fmt(a, "%s|%s", channel, category);
    arg_cstr(a, opt_in ? "in" : "out");
    arg_cstr(a, source);
}

int64_t decision_consent_result(const struct store_reply *r)
{
    if (!all_ints(r, 1))
        return -1;
    return r->items[0].i;
}

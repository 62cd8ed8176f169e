/* decision: script arguments and results.  See decision.h and src/lua/. */
#include "capgate/decision.h"

#include "capgate/textbuf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capgate/tz.h"
#include "lua_scripts.h"

const char *const decision_scripts[SCRIPT__COUNT] = {
    [SCRIPT_DECIDE] = lua_decide,
    [SCRIPT_RELEASE] = lua_release,
    [SCRIPT_CONSENT] = lua_consent,
    [SCRIPT_SHOW] = lua_show,
    [SCRIPT_ERASE] = lua_erase,
    [SCRIPT_AUDIT_PAGE] = lua_audit_page,
    [SCRIPT_CLAIM] = lua_claim,
    [SCRIPT_FINISH] = lua_finish,
    [SCRIPT_DEAD_LIST] = lua_dead_list,
    [SCRIPT_AUDIT_TRIM] = lua_audit_trim,
    [SCRIPT_ROTATE] = lua_rotate,
    [SCRIPT_SHAPE] = lua_shape,
    [SCRIPT_BREAKER] = lua_breaker,
    [SCRIPT_NAMES] = lua_names,
    [SCRIPT_HISTORY] = lua_history,
};

unsigned decision_tag(const char *user)
{
    return (unsigned)strtoul((char[3]){ user[0], user[1], 0 }, NULL, 16);
}

static const char *const outcome_names[OUTCOME__COUNT] = { "allow", "defer", "deny" };
static const char *const reason_names[REASON__COUNT] = {
    "ok", "opted_out", "consent_required", "quiet_hours", "cap", "suppressed", "superseded",
    "store_unavailable", "campaign_paused"
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

/* The decision path builds its arguments without printf: formatting them
 * with vsnprintf cost more instructions than the rest of the call put
 * together (callgrind, make bench).  ARG_OPEN returns where the next
 * argument starts, or NULL when NEED more bytes would not fit (the argument
 * is then empty: every caller bounds NEED by its own inputs' limits). */
static char *arg_open(struct script_args *a, size_t need)
{
    if (a->used + need + 1 > sizeof a->buf)
        return NULL;
    return a->buf + a->used;
}

static void arg_close(struct script_args *a, char *start, char *end)
{
    if (!start) {
        arg_str(a, "", 0);
        return;
    }
    *end = '\0';
    arg_str(a, start, (size_t)(end - start));
    a->used += (size_t)(end - start) + 1;
}

static char *put_mem(char *p, const char *s, size_t n)
{
    memcpy(p, s, n);
    return p + n;
}

/* Big-endian packing, as Lua's struct.unpack('>...') reads it. */
static char *put_be(char *p, uint64_t v, int bytes)
{
    for (int k = bytes - 1; k >= 0; k--) {
        p[k] = (char)(v & 0xff);
        v >>= 8;
    }
    return p + bytes;
}

/* "cg:{TT}:" + SUFFIX (+ TAIL, when not NULL): the keys of one person's
 * tag, TT being the first two digits of USER (a pseudonym, or a queue
 * member, which starts with one). */
static void arg_tag_key(struct script_args *a, const char *user, const char *suffix,
                        const char *tail)
{
    size_t ns = strlen(suffix), nt = tail ? strlen(tail) : 0;
    char *s = arg_open(a, 8 + ns + nt), *p = s;
    if (s) {
        p = put_mem(p, "cg:{", 4);
        p = put_mem(p, user, 2);
        p = put_mem(p, "}:", 2);
        p = put_mem(p, suffix, ns);
        if (tail)
            p = put_mem(p, tail, nt);
    }
    arg_close(a, s, p);
}

/* S copied into the args' buffer (it need not outlive the call). */
static void arg_copy(struct script_args *a, const char *s)
{
    size_t n = strlen(s);
    char *b = arg_open(a, n), *p = b;
    if (b)
        p = put_mem(p, s, n);
    arg_close(a, b, p);
}

static void arg_int(struct script_args *a, int64_t v)
{
    char *b = arg_open(a, 20), *p = b;
    if (b)
        p = text_sdec(p, v);
    arg_close(a, b, p);
}

/* ---- key layout --------------------------------------------------------- */

static unsigned hexval(char c)
{
    return (unsigned)(c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10);
}

/* The person's hash tag: 2 hex digits, so 256 tags.  Enough to spread over
 * a cluster's masters, few enough that per-tag streams (the audit trail)
 * can be read all together. */
#define TAG_DIGITS 2

/* A bucket key of kind K: cg:{T}:<K><B>, the bucket adding bucket_bits - 8
 * bits taken from the digits after the tag. */
static void arg_bucket_key(struct script_args *a, const struct config *cfg, const char *user,
                           char kind)
{
    int extra = cfg->redis.bucket_bits - 4 * TAG_DIGITS;
    unsigned next = 0;
    for (int k = TAG_DIGITS; k < TAG_DIGITS + 6; k++)
        next = (next << 4) | hexval(user[k]);          /* 24 bits */
    next >>= 24 - extra;
    /* The bucket in lower-case hex without leading zeros ("%x"). */
    char hex[8], *h = hex + sizeof hex;
    do {
        *--h = "0123456789abcdef"[next & 15];
        next >>= 4;
    } while (next);
    char suffix[10];
    suffix[0] = kind;
    memcpy(suffix + 1, h, (size_t)(hex + sizeof hex - h));
    suffix[1 + (hex + sizeof hex - h)] = '\0';
    arg_tag_key(a, user, suffix, NULL);
}

static void arg_sends_key(struct script_args *a, const struct config *cfg, const char *user)
{
    arg_bucket_key(a, cfg, user, 's');
}

static void arg_consent_key(struct script_args *a, const char *user)
{
    arg_tag_key(a, user, "c:", user);
}

static void arg_history_key(struct script_args *a, const char *user)
{
    arg_tag_key(a, user, "h:", user);
}

static void arg_audit_key(struct script_args *a, const char *user)
{
    arg_tag_key(a, user, "a", NULL);
}

int64_t decision_audit_keep_ms(const struct config *cfg)
{
    return cfg->audit.retention_ms < cfg->retention_ms ? cfg->audit.retention_ms
                                                       : cfg->retention_ms;
}

/* '' when auditing is off, else "<max per tag>|<retention ms>|<generation>|<P>". */
static void arg_audit(struct script_args *a, const struct config *cfg, const char *user)
{
    if (!cfg->audit.enabled) {
        arg_cstr(a, "");
        return;
    }
    int64_t keep = decision_audit_keep_ms(cfg);
    int per_tag = cfg->audit.max_entries / DECISION_TAGS;
    size_t nu = strlen(user);
    char *s = arg_open(a, 3 * 21 + 3 + nu), *p = s;
    if (s) {
        p = text_sdec(p, per_tag < 100 ? 100 : per_tag);
        *p++ = '|';
        p = text_sdec(p, keep);
        *p++ = '|';
        p = text_dec(p, cfg->generation);
        *p++ = '|';
        p = put_mem(p, user, nu);
    }
    arg_close(a, s, p);
}

/* decide.lua's audit arguments: the tag stream's max entries ('' when
 * auditing is off) and the start of the entry, "<P>|<channel>|<category>|
 * <generation>". */
static void arg_decide_audit(struct script_args *a, const struct config *cfg,
                             const struct decide_input *in)
{
    if (!cfg->audit.enabled) {
        arg_cstr(a, "");
        arg_cstr(a, "");
        return;
    }
    int per_tag = cfg->audit.max_entries / DECISION_TAGS;
    char *s = arg_open(a, 21), *p = s;
    if (s)
        p = text_sdec(p, per_tag < 100 ? 100 : per_tag);
    arg_close(a, s, p);
    size_t nu = strlen(in->user), nc = strlen(in->channel->name),
           nk = strlen(in->category->name);
    s = arg_open(a, 21 + 3 + nu + nc + nk), p = s;
    if (s) {
        p = put_mem(p, in->user, nu);
        *p++ = '|';
        p = put_mem(p, in->channel->name, nc);
        *p++ = '|';
        p = put_mem(p, in->category->name, nk);
        *p++ = '|';
        p = text_dec(p, cfg->generation);
    }
    arg_close(a, s, p);
}

/* The person's field in the bucket: the pseudonym's last 8 bytes. */
static void arg_person(struct script_args *a, const char *user)
{
    char *p = a->buf + a->used;
    if (a->used + 8 > sizeof a->buf)
        return;
    for (int k = 0; k < 8; k++)
        p[k] = (char)(hexval(user[16 + 2 * k]) << 4 | hexval(user[17 + 2 * k]));
    arg_str(a, p, 8);
    a->used += 8;
}

/* FNV-1a: a stable, unkeyed id of a config name or campaign (not personal). */
static uint32_t fnv1a(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 16777619u;
    }
    return h;
}

static unsigned name_id(const char *name)     /* 1..32767; 0 means "any" */
{
    uint32_t h = fnv1a(name);
    unsigned id = ((h >> 16) ^ h) & 0x7fff;   /* the top bit marks exempt sends */
    return id ? id : 1;
}

/* 32 bits of the (keyed) message pseudonym: enough to tell apart the few
 * messages one person has inside the idempotency window (a false replay
 * needs two of them to collide: about k / 2^32 per decision). */
static unsigned message_id(const char *hex)
{
    unsigned id = 0;
    for (int k = 0; k < 8; k++)
        id = (id << 4) | hexval(hex[k]);
    return id;
}

static unsigned campaign_id(const char *campaign)   /* 1..2^24-1; 0: none */
{
    if (!campaign)
        return 0;
    uint32_t h = fnv1a(campaign);
    unsigned id = (h >> 24) ^ (h & 0xffffff);
    return id ? id : 1;
}

int decision_check_config(const struct config *cfg, char *err, size_t errlen)
{
    for (size_t i = 0; i < cfg->n_channels; i++)
        for (size_t j = i + 1; j < cfg->n_channels; j++)
            if (name_id(cfg->channels[i].name) == name_id(cfg->channels[j].name)) {
                snprintf(err, errlen, "channels: \"%s\" and \"%s\" share a record id; rename one",
                         cfg->channels[i].name, cfg->channels[j].name);
                return -1;
            }
    for (size_t i = 0; i < cfg->n_categories; i++)
        for (size_t j = i + 1; j < cfg->n_categories; j++)
            if (name_id(cfg->categories[i].name) == name_id(cfg->categories[j].name)) {
                snprintf(err, errlen, "categories: \"%s\" and \"%s\" share a record id; rename one",
                         cfg->categories[i].name, cfg->categories[j].name);
                return -1;
            }
    return 0;
}

/* How much longer than the retention a sends bucket may live, so that
 * decide.lua renews its expiry about once a minute instead of on every
 * write: a minute, an eighth of a short retention, and none at all when
 * privacy.retention is what bounds the records (that promise is exact). */
static int64_t expiry_slack_ms(const struct config *cfg)
{
    int64_t keep = config_retention_ms(cfg);
    int64_t slack = keep / 8 < 60000 ? keep / 8 : 60000;
    if (cfg->retention_ms > 0 && cfg->retention_ms - keep < slack)
        slack = cfg->retention_ms - keep > 0 ? cfg->retention_ms - keep : 0;
    return slack;
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
    char member[50] = "";
    if (in->enqueue)
        decision_member(in->user, in->message, member);
    args_init(a, SCRIPT_DECIDE, in->enqueue ? (in->enqueue->first_answer ? 8 : 7) : 4);
    arg_sends_key(a, cfg, in->user);
    arg_consent_key(a, in->user);
    /* Keys a config does not use are named as the sends key again: during a
     * cluster slot migration Redis answers TRYAGAIN to a script naming a
     * key that exists nowhere, and an unused key never will. */
    if (cfg->fatigue.enabled)
        arg_bucket_key(a, cfg, in->user, 'g');
    else
        arg_sends_key(a, cfg, in->user);
    if (cfg->audit.enabled)
        arg_audit_key(a, in->user);
    else
        arg_sends_key(a, cfg, in->user);
    if (in->enqueue) {
        arg_tag_key(a, in->user, "q", NULL);
        arg_tag_key(a, in->user, "d:", member);
        if (in->enqueue->collapse)
            arg_fmt(a, "cg:{%.2s}:k:%s:%08x", in->user, in->user,
                    (unsigned)fnv1a(in->enqueue->collapse));
        else
            arg_tag_key(a, in->user, "k:-", NULL);
        if (in->enqueue->first_answer)
            arg_tag_key(a, in->user, "ans:", member);
    }
    arg_person(a, in->user);

    /* Quiet hours as absolute intervals around now: the script compares them
     * with Redis's clock, and the zone arithmetic (DST included) stays here. */
    struct tz_interval iv[8];
    size_t niv = 0;
    if (cfg->quiet_hours.enabled && in->zone && !cat->exempt_from_quiet_hours &&
        config_quiet_channel(cfg, in->channel->name))
        niv = tz_quiet_intervals(in->zone, cfg->quiet_hours.start_min,
                                 cfg->quiet_hours.end_min, now_s - 86400, now_s + 2 * 86400,
                                 iv, sizeof iv / sizeof iv[0]);
    /* Only the caps that apply to this message travel to Redis. */
    const struct cfg_cap *caps[256];
    size_t ncaps = 0;
    if (!cat->exempt_from_caps)
        for (size_t k = 0; k < cfg->n_caps && k < 255; k++)
            if (cap_matches(&cfg->caps[k], in))
                caps[ncaps++] = &cfg->caps[k];
    bool fatigue = cfg->fatigue.enabled && !cat->exempt_from_caps;

    /* The numbers, packed: Lua's tonumber() (strtod) of each, and a Redis
     * argument each, cost Redis more than one struct.unpack of them all. */
    char *ns = arg_open(a, 47 + 16), *np = ns;
    if (ns) {
        np = put_be(np, message_id(in->message), 4);
        np = put_be(np, name_id(in->channel->name), 2);
        np = put_be(np, name_id(cat->name), 2);
        np = put_be(np, campaign_id(in->campaign), 3);
        np = put_be(np, (uint64_t)config_retention_ms(cfg), 6);
        np = put_be(np, (uint64_t)cfg->idempotency_ms, 6);
        np = put_be(np, (uint64_t)cfg->max_defer_ms, 6);
        *np++ = (char)in->dry_run;
        *np++ = (char)cat->ignores_opt_out;
        *np++ = (char)requires_opt_in;
        *np++ = (char)cat->exempt_from_caps;
        *np++ = (char)(in->enqueue && in->enqueue->from_queue);
        *np++ = (char)niv;
        *np++ = (char)ncaps;
        *np++ = (char)fatigue;
        np = put_be(np, (uint64_t)expiry_slack_ms(cfg), 4);
        np = put_be(np, (uint64_t)(cfg->audit.enabled ? decision_audit_keep_ms(cfg) : 0), 6);
        if (in->enqueue) {
            /* Proxy mode: the queue's. */
            const struct cfg_delivery *d = &cfg->delivery;
            int per_tag = d->max_deferred / DECISION_TAGS;
            /* A queued message lives as long as it may wait, plus its retries. */
            int64_t ttl = cfg->max_defer_ms + (int64_t)d->max_attempts * d->max_backoff_ms +
                          86400000LL;
            np = put_be(np, (uint64_t)(per_tag < 1 ? 1 : per_tag), 4);
            np = put_be(np, (uint64_t)ttl, 6);
            np = put_be(np, (uint64_t)in->enqueue->priority, 1);
            *np++ = (char)(in->enqueue->collapse != NULL);
            np = put_be(np, (uint64_t)d->lease_ms, 4);
        }
    }
    arg_close(a, ns, np);

    /* The rules, packed: quiet intervals, caps, fatigue, then (for the audit
     * entry only) every cap's name.  The bounds: 8 intervals, 255 caps of
     * 16 bytes, and names the config keeps short enough for the buffer. */
    char *rs = a->buf + a->used, *p = rs;
    char *limit = a->buf + sizeof a->buf - 1;
    for (size_t k = 0; k < niv; k++) {
        p = put_be(p, (uint64_t)iv[k].start * 1000, 6);
        p = put_be(p, (uint64_t)iv[k].end * 1000, 6);
    }
    for (size_t k = 0; k < ncaps && p + 16 <= limit; k++) {
        const struct cfg_cap *cap = caps[k];
        p = put_be(p, (uint64_t)(cap - cfg->caps), 1);
        p = put_be(p, cap->channel ? name_id(cap->channel) : 0, 2);
        p = put_be(p, cap->category ? name_id(cap->category) : 0, 2);
        p = put_be(p, cap->per == CAP_PER_CAMPAIGN, 1);
        p = put_be(p, cap->on_exceed == CAP_DENY, 1);
        p = put_be(p, (uint64_t)cap->limit, 2);
        p = put_be(p, (uint64_t)cap->window_ms, 6);
        p = put_be(p, cap->mode == CAP_SHADOW, 1);
    }
    /* Fatigue: the script adds this cap when the person stopped engaging. */
    if (fatigue) {
        p = put_be(p, (uint64_t)cfg->fatigue.unengaged_after, 2);
        p = put_be(p, (uint64_t)cfg->fatigue.limit, 2);
        p = put_be(p, (uint64_t)cfg->fatigue.window_ms, 6);
        p = put_be(p, cfg->fatigue.on_exceed == CAP_DENY, 1);
    }
    if (cfg->audit.enabled) {
        for (size_t k = 0; k < cfg->n_caps; k++) {
            size_t n = strlen(cfg->caps[k].name);
            if (p + n + 1 > limit)
                break;
            p = put_mem(p, cfg->caps[k].name, n);
            *p++ = '\n';
        }
    }
    arg_str(a, rs, (size_t)(p - rs));
    a->used += (size_t)(p - rs);

    /* "<channel>|<category>": the consent record's most specific scope. */
    size_t nc = strlen(in->channel->name), nk = strlen(cat->name);
    char *cs = arg_open(a, nc + 1 + nk), *cp = cs;
    if (cs) {
        cp = put_mem(cp, in->channel->name, nc);
        *cp++ = '|';
        cp = put_mem(cp, cat->name, nk);
    }
    arg_close(a, cs, cp);

    arg_decide_audit(a, cfg, in);

    if (in->enqueue) {
        arg_str(a, in->enqueue->blob, in->enqueue->blob_len);
        arg_copy(a, member);
    }
}

void decision_ack_args(const struct config *cfg, const char *member, const char *answer,
                       size_t len, struct script_args *a)
{
    args_init(a, SCRIPT_FINISH, 3);
    arg_tag_key(a, member, "q", NULL);
    arg_tag_key(a, member, "d:", member);
    arg_tag_key(a, member, "ans:", member);
    arg_cstr(a, "ack");
    arg_copy(a, member);
    arg_str(a, answer, len);
    arg_int(a, cfg->idempotency_ms);
}

size_t decision_ack_commands(const struct config *cfg, const char *member, const char *answer,
                             size_t len, struct script_args *a, int argcs[3])
{
    args_init(a, 0, 0);
    size_t n = 0;
    int before = 0;
    if (answer) {
        arg_cstr(a, "SET");
        arg_tag_key(a, member, "ans:", member);
        arg_str(a, answer, len);
        arg_cstr(a, "PX");
        arg_int(a, cfg->idempotency_ms);
        argcs[n++] = a->argc - before;
        before = a->argc;
    }
    arg_cstr(a, "DEL");
    arg_tag_key(a, member, "d:", member);
    argcs[n++] = a->argc - before;
    before = a->argc;
    arg_cstr(a, "ZREM");
    arg_tag_key(a, member, "q", NULL);
    arg_copy(a, member);
    argcs[n++] = a->argc - before;
    return n;
}

void decision_dead_list_args(unsigned tag, unsigned most, struct script_args *a)
{
    args_init(a, SCRIPT_DEAD_LIST, 1);
    arg_fmt(a, "cg:{%02x}:dead", tag & 0xff);
    arg_fmt(a, "%u", most);
}

void decision_member(const char *user, const char *message, char out[50])
{
    size_t nu = strnlen(user, 32), nm = strnlen(message, 16);
    memcpy(out, user, nu);
    out[nu] = ':';
    memcpy(out + nu + 1, message, nm);
    out[nu + 1 + nm] = '\0';
}

void decision_claim_args(const struct config *cfg, unsigned tag, unsigned most,
                         struct script_args *a)
{
    args_init(a, SCRIPT_CLAIM, 2);
    arg_fmt(a, "cg:{%02x}:q", tag & 0xff);
    arg_fmt(a, "cg:{%02x}:dead", tag & 0xff);
    arg_fmt(a, "%lld", (long long)cfg->delivery.lease_ms);
    arg_fmt(a, "%u", most);
}

void decision_finish_args(const struct config *cfg, const char *member,
                          enum finish_action action, int64_t retry_in_ms,
                          const char *dead_summary, struct script_args *a)
{
    /* Each action gets only what it uses (see finish.lua): an ack follows
     * every forward, and each argument costs Redis about a thousand
     * instructions. */
    static const char *const actions[] = { "ack", "drop", "retry", "dead" };
    args_init(a, SCRIPT_FINISH, action == FINISH_DEAD ? 3 : 2);
    arg_tag_key(a, member, "q", NULL);
    arg_tag_key(a, member, "d:", member);
    if (action == FINISH_DEAD)
        arg_tag_key(a, member, "dead", NULL);
    arg_cstr(a, actions[action]);
    arg_copy(a, member);
    if (action == FINISH_RETRY)
        arg_int(a, retry_in_ms);
    if (action == FINISH_DEAD) {
        arg_copy(a, dead_summary ? dead_summary : "");
        arg_int(a, 10000);
        arg_int(a, cfg->retention_ms < 7 * 86400000LL ? cfg->retention_ms : 7 * 86400000LL);
    }
}

void decision_json_fields(struct textbuf *t, const struct config *cfg, const struct decision *d,
                          const char *message_id)
{
    /* The names come from the config ([A-Za-z0-9_.-]) and fixed tables;
     * only message_id needs escaping.  No printf and no JSON library: on
     * /v1/decide's path those cost a fifth of a decision's CPU. */
    textbuf_puts(t, "\"decision\":\"");
    textbuf_puts(t, decision_outcome_name(d->outcome));
    textbuf_puts(t, "\",\"reason\":\"");
    textbuf_puts(t, decision_reason_name(d->reason));
    textbuf_puts(t, "\"");
    const char *rule = decision_rule_name(cfg, d->rule);
    if (rule) {
        textbuf_puts(t, ",\"rule\":\"");
        textbuf_puts(t, rule);
        textbuf_puts(t, "\"");
    }
    if (d->outcome == OUTCOME_DEFER) {
        char num[24], *e = text_sdec(num, d->retry_after_s);
        textbuf_puts(t, ",\"retry_after\":");
        textbuf_put(t, num, (size_t)(e - num));
    }
    textbuf_puts(t, ",\"message_id\":");
    textbuf_json_string(t, message_id);
    textbuf_puts(t, d->replay ? ",\"replay\":true" : ",\"replay\":false");
}

const char *decision_rule_name(const struct config *cfg, int rule)
{
    if (rule == RULE_FATIGUE)
        return "fatigue";
    if (rule >= 0 && (size_t)rule < cfg->n_caps)
        return cfg->caps[rule].name;
    return NULL;
}

size_t decision_parse_sends(const char *raw, size_t len, struct send_record *out, size_t max)
{
    const unsigned char *p = (const unsigned char *)raw;
    size_t n = 0;
    for (size_t off = 0; off + 16 <= len && n < max; off += 16, n++) {
        uint64_t v = 0;
        for (int k = 0; k < 5; k++)
            v = v << 8 | p[off + k];
        out[n].at_ms = (int64_t)v + 1704067200000LL;
        out[n].message = (uint32_t)p[off + 5] << 24 | (uint32_t)p[off + 6] << 16 |
                         (uint32_t)p[off + 7] << 8 | p[off + 8];
        unsigned ch = (unsigned)p[off + 9] << 8 | p[off + 10];
        out[n].exempt = ch & 0x8000;
        out[n].channel_id = ch & 0x7fff;
        out[n].category_id = (unsigned)p[off + 11] << 8 | p[off + 12];
        out[n].campaign = (uint32_t)p[off + 13] << 16 | (uint32_t)p[off + 14] << 8 | p[off + 15];
    }
    return n;
}

const char *decision_channel_by_id(const struct config *cfg, unsigned id)
{
    for (size_t k = 0; k < cfg->n_channels; k++)
        if (name_id(cfg->channels[k].name) == id)
            return cfg->channels[k].name;
    return NULL;
}

const char *decision_category_by_id(const struct config *cfg, unsigned id)
{
    for (size_t k = 0; k < cfg->n_categories; k++)
        if (name_id(cfg->categories[k].name) == id)
            return cfg->categories[k].name;
    return NULL;
}

bool decision_cap_counts(const struct cfg_cap *cap, const struct send_record *r)
{
    return !r->exempt && (!cap->channel || name_id(cap->channel) == r->channel_id) &&
           (!cap->category || name_id(cap->category) == r->category_id);
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

/* decide.lua's answer, one string, big-endian: outcome (1) | reason (1) |
 * rule (2) | retry ms (6, signed) | replay (1) | count (4) | queued (1) |
 * superseded (1) | n_shadow (1), then n_shadow x (rule (2) | would (1)). */
#define ANSWER_LEN 18

static uint64_t get_be(const unsigned char *p, int bytes)
{
    uint64_t v = 0;
    for (int k = 0; k < bytes; k++)
        v = v << 8 | p[k];
    return v;
}

int decision_decide_result(const struct store_reply *r, const struct config *cfg,
                           struct decision *out)
{
    if (r->status != STORE_OK || r->n < 1 || r->n > 2 || r->items[0].type != STORE_STR ||
        r->items[0].len < ANSWER_LEN)
        return -1;
    const unsigned char *p = (const unsigned char *)r->items[0].s;
    unsigned outcome = p[0], reason = p[1], rule = (unsigned)get_be(p + 2, 2);
    uint64_t retry = get_be(p + 4, 6);
    int64_t retry_ms = retry & 0x800000000000ULL ? -1 : (int64_t)retry;   /* 48-bit sign */
    size_t nshadow = p[17];
    if (outcome >= OUTCOME__COUNT || reason > REASON_SUPERSEDED ||
        (rule > cfg->n_caps && rule != 256) || retry_ms < 0 ||
        r->items[0].len != ANSWER_LEN + 3 * nshadow)
        return -1;
    out->outcome = (enum decision_outcome)outcome;
    out->reason = (enum decision_reason)reason;
    out->rule = rule == 256 ? RULE_FATIGUE : (int)rule - 1;
    out->retry_after_s = retry_ms / 1000 + (retry_ms % 1000 != 0);   /* exact, rounded up */
    out->replay = p[10] != 0;
    out->resend = p[10] == 2;
    out->in_queue = p[10] == 3;
    out->count = (int)get_be(p + 11, 4);
    out->queued = p[15];
    out->superseded = p[16] != 0;
    out->n_shadow = 0;
    for (size_t k = 0; k < nshadow && out->n_shadow < SHADOW_MAX; k++) {
        const unsigned char *s = p + ANSWER_LEN + 3 * k;
        unsigned sr = (unsigned)get_be(s, 2), would = s[2];
        if (sr < 1 || sr > cfg->n_caps || (would != 1 && would != 2))
            return -1;
        out->shadow[out->n_shadow].rule = (int)sr - 1;
        out->shadow[out->n_shadow].would = would == 2 ? OUTCOME_DENY : OUTCOME_DEFER;
        out->n_shadow++;
    }
    return 0;
}

bool decision_first_answer(const struct store_reply *r, const char **s, size_t *len)
{
    if (r->status != STORE_OK || r->n != 2 || r->items[1].type != STORE_STR)
        return false;
    *s = r->items[1].s;
    *len = r->items[1].len;
    return true;
}

void decision_release_args(const struct config *cfg, const char *user, const char *message,
                           struct script_args *a)
{
    args_init(a, SCRIPT_RELEASE, 1);
    arg_sends_key(a, cfg, user);
    arg_person(a, user);
    arg_fmt(a, "%u", message_id(message));
}

void decision_abandon_args(const struct config *cfg, const char *user, const char *message,
                           struct script_args *a)
{
    char member[50];
    decision_member(user, message, member);
    args_init(a, SCRIPT_RELEASE, 3);
    arg_sends_key(a, cfg, user);
    arg_tag_key(a, user, "q", NULL);
    arg_tag_key(a, user, "d:", member);
    arg_person(a, user);
    arg_int(a, message_id(message));
    arg_copy(a, member);
}

void decision_requeue_args(const struct config *cfg, const char *user, const char *message,
                           int64_t in_ms, struct script_args *a)
{
    decision_abandon_args(cfg, user, message, a);
    arg_fmt(a, "%lld", (long long)(in_ms > 0 ? in_ms : 0));
}

void decision_shape_args(const char *channel, size_t nsub, const char *const *subkeys,
                         size_t argc, const char *const *argv, struct script_args *a)
{
    args_init(a, SCRIPT_SHAPE, 1 + (int)nsub);
    arg_fmt(a, "cg:{u.%s}:up", channel);
    for (size_t k = 0; k < nsub; k++)
        arg_fmt(a, "cg:{u.%s}:%s", channel, subkeys[k]);
    for (size_t k = 0; k < argc; k++)
        arg_cstr(a, argv[k]);
}

void decision_breaker_args(const char *campaign, size_t argc, const char *const *argv,
                           struct script_args *a)
{
    args_init(a, SCRIPT_BREAKER, 3);
    arg_fmt(a, "cg:{b}:state");
    arg_fmt(a, "cg:{b}:known");
    arg_fmt(a, "cg:{b}:c:%s", campaign);
    for (size_t k = 0; k < argc; k++)
        arg_cstr(a, argv[k]);
}

int decision_release_result(const struct store_reply *r)
{
    if (!all_ints(r, 1))
        return -1;
    return r->items[0].i ? 1 : 0;
}

void decision_signal_args(const struct config *cfg, const char *user, enum consent_kind kind,
                          const char *scope, bool opt_in, const char *source,
                          const char *detail, const struct consent_proof *proof,
                          struct script_args *a)
{
    static const char *const kinds[] = { "set", "unsubscribe", "complaint", "bounce", "engage" };
    args_init(a, SCRIPT_CONSENT, 4);
    arg_consent_key(a, user);
    arg_bucket_key(a, cfg, user, 'g');
    arg_audit_key(a, user);
    arg_history_key(a, user);
    /* Copied into the args' buffer: callers pass short-lived strings. */
    arg_cstr(a, kinds[kind]);
    arg_fmt(a, "%s", scope ? scope : "");
    arg_cstr(a, opt_in ? "in" : "out");
    arg_fmt(a, "%s", source ? source : "");
    arg_person(a, user);
    arg_fmt(a, "%lld", (long long)cfg->retention_ms);
    arg_audit(a, cfg, user);
    arg_fmt(a, "%s", detail ? detail : "");
    const char *controller = config_controller(cfg);
    arg_fmt(a, "%s", proof ? proof->record_id : "");
    arg_fmt(a, "%s", proof && proof->method ? proof->method : "");
    arg_fmt(a, "%s", proof && proof->legal_basis ? proof->legal_basis : "");
    arg_fmt(a, "%s", proof && proof->notice ? proof->notice : "");
    arg_fmt(a, "%.*s", RECEIPT_CONTROLLER_MAX, controller ? controller : "");
    arg_fmt(a, "%d", DECISION_HISTORY_PER_SCOPE);
}

void decision_consent_args(const struct config *cfg, const char *user, const char *channel,
                           const char *category, bool opt_in, const char *source,
                           const struct consent_proof *proof, struct script_args *a)
{
    char scope[160];
    snprintf(scope, sizeof scope, "%s|%s", channel, category);
    decision_signal_args(cfg, user, CONSENT_SET, scope, opt_in, source, NULL, proof, a);
}

/* KEYS: sends, consent, engagement, audit, queue (and the consent history
 * when HISTORY); ARGV: the person's field and pseudonym. */
static void person_keys(struct script_args *a, const struct config *cfg, const char *user,
                        size_t script, bool history)
{
    args_init(a, script, history ? 6 : 5);
    arg_sends_key(a, cfg, user);
    arg_consent_key(a, user);
    arg_bucket_key(a, cfg, user, 'g');
    arg_audit_key(a, user);
    arg_fmt(a, "cg:{%.2s}:q", user);
    if (history)
        arg_history_key(a, user);
    arg_person(a, user);
    arg_cstr(a, user);
}

void decision_show_args(const struct config *cfg, const char *user, struct script_args *a)
{
    person_keys(a, cfg, user, SCRIPT_SHOW, false);
}

void decision_names_args(size_t argc, const char *const *argv, struct script_args *a)
{
    args_init(a, SCRIPT_NAMES, 1);
    arg_fmt(a, "cg:{n}:names");
    for (size_t k = 0; k < argc; k++)
        arg_cstr(a, argv[k]);
}

unsigned decision_campaign_id(const char *campaign)
{
    return campaign_id(campaign);
}

void decision_erase_args(const struct config *cfg, const char *user, struct script_args *a)
{
    person_keys(a, cfg, user, SCRIPT_ERASE, true);
    arg_audit(a, cfg, user);
}

void decision_history_args(const struct config *cfg, const char *user, struct script_args *a)
{
    args_init(a, SCRIPT_HISTORY, 2);
    arg_consent_key(a, user);
    arg_history_key(a, user);
    arg_fmt(a, "%lld", (long long)cfg->retention_ms);
}

void decision_audit_page_args(unsigned tag, const char *after, unsigned count,
                              struct script_args *a)
{
    args_init(a, SCRIPT_AUDIT_PAGE, 1);
    arg_fmt(a, "cg:{%02x}:a", tag & 0xff);
    arg_cstr(a, after);
    arg_fmt(a, "%u", count);
}

void decision_audit_trim_args(unsigned tag, const struct config *cfg, struct script_args *a)
{
    args_init(a, SCRIPT_AUDIT_TRIM, 1);
    arg_fmt(a, "cg:{%02x}:a", tag & 0xff);
    arg_fmt(a, "%lld", (long long)decision_audit_keep_ms(cfg));
}

int64_t decision_consent_result(const struct store_reply *r)
{
    /* A number, or {time, legal basis} when a history entry was written. */
    if (r->status != STORE_OK || r->n < 1 || r->n > 2 || r->items[0].type != STORE_INT)
        return -1;
    return r->items[0].i;
}

void decision_consent_basis(const struct store_reply *r, char out[32])
{
    out[0] = '\0';
    if (decision_consent_result(r) >= 0 && r->n == 2 && r->items[1].type == STORE_STR)
        snprintf(out, 32, "%.*s", (int)r->items[1].len, r->items[1].s);
}

void decision_rotate_args(const struct config *cfg, const char *mode, const char *user,
                          unsigned tag, const char *const *data, const size_t *lens,
                          struct script_args *a)
{
    args_init(a, SCRIPT_ROTATE, 6);
    if (!user) {
        /* The tag's rotation set only, named six times (one slot). */
        for (int k = 0; k < 6; k++)
            arg_fmt(a, "cg:{%02x}:rot", tag & 0xff);
        arg_cstr(a, mode);
        return;
    }
    arg_sends_key(a, cfg, user);
    arg_consent_key(a, user);
    arg_bucket_key(a, cfg, user, 'g');
    arg_fmt(a, "cg:{%.2s}:rot", user);
    arg_fmt(a, "cg:{%.2s}:q", user);
    arg_history_key(a, user);
    arg_cstr(a, mode);
    arg_person(a, user);
    arg_cstr(a, user);
    if (data) {
        for (int k = 0; k < DECISION_ROTATE_DATA; k++)
            arg_str(a, data[k], lens[k]);
        arg_fmt(a, "%d", DECISION_HISTORY_PER_SCOPE);
    }
}

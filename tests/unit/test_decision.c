/* Unit tests: script arguments and results (src/decision.c). */
#include <stdlib.h>

#include "capgate/decision.h"
#include "capgate/tz.h"
#include "unit.h"

static struct cfg_channel channels[] = { { .name = "email" }, { .name = "push" },
                                        { .name = "sms", .requires_opt_in = true } };
static struct cfg_category categories[] = {
    { "marketing", false, false, false, false, 0 },
    { "transactional", true, true, true, false, 0 },
    { "health", false, false, false, true, 0 },
};
static struct cfg_cap caps[] = {
    { "email-daily", "email", NULL, CAP_PER_USER, 2, 86400000, CAP_DEFER, CAP_ENFORCE },
    { "all-weekly", NULL, NULL, CAP_PER_USER, 5, 7 * 86400000LL, CAP_DEFER, CAP_ENFORCE },
    { "campaign-once", NULL, NULL, CAP_PER_CAMPAIGN, 1, 30 * 86400000LL, CAP_DENY, CAP_ENFORCE },
    { "health-monthly", NULL, "health", CAP_PER_USER, 1, 30 * 86400000LL, CAP_DENY, CAP_SHADOW },
};
static char *quiet_channels[] = { "push", "sms" };

static struct config make_config(void)
{
    struct config c;
    memset(&c, 0, sizeof c);
    c.channels = channels;
    c.n_channels = 3;
    c.categories = categories;
    c.n_categories = 3;
    c.default_category = "marketing";
    c.caps = caps;
    c.n_caps = 4;
    c.max_defer_ms = 7 * 86400000LL;
    c.idempotency_ms = 86400000LL;
    c.quiet_hours.enabled = true;
    c.quiet_hours.start_min = 21 * 60;
    c.quiet_hours.end_min = 8 * 60;
    c.quiet_hours.default_tz = "UTC";
    c.quiet_hours.channels = quiet_channels;
    c.quiet_hours.n_channels = 2;
    return c;
}

static const char *arg(const struct script_args *a, int k)
{
    static char buf[256];
    size_t n = a->argvlen[k] < sizeof buf - 1 ? a->argvlen[k] : sizeof buf - 1;
    memcpy(buf, a->argv[k], n);
    buf[n] = '\0';
    return buf;
}

/* ARGV positions (after the 4 keys). */
enum { A_PERSON = 4, A_NUMBERS, A_RULES, A_SCOPE, A_AUDIT_MAX, A_AUDIT, A_COUNT };
/* Offsets in the packed numbers (decide.lua's ARGV[2]). */
enum { N_MSG = 0, N_CH = 4, N_CAT = 6, N_CAMP = 8, N_RET = 11, N_IDEM = 17, N_MAXDEF = 23,
       N_DRY = 29, N_NO_OPT_OUT, N_OPT_IN, N_EXEMPT, N_FROM_QUEUE, N_QUIET, N_CAPS, N_FATIGUE,
       N_SLACK, N_AUDIT_KEEP = N_SLACK + 4, N_LEN = N_AUDIT_KEEP + 6 };

static uint64_t be(const char *p, int n)
{
    uint64_t v = 0;
    for (int k = 0; k < n; k++)
        v = v << 8 | (unsigned char)p[k];
    return v;
}

/* The rules argument's parts: quiet intervals (12 bytes each), then caps (16). */
static size_t n_quiet(const struct script_args *a)
{
    return (unsigned char)a->argv[A_NUMBERS][N_QUIET];
}

static size_t n_caps(const struct script_args *a)
{
    return (unsigned char)a->argv[A_NUMBERS][N_CAPS];
}

static const char *quiet_at(const struct script_args *a)
{
    return a->argv[A_RULES];
}

static const char *caps_at(const struct script_args *a)
{
    return a->argv[A_RULES] + 12 * n_quiet(a);
}

/* The flags as the letters the old layout used: d o i x q. */
static const char *flags(const struct script_args *a)
{
    static char buf[8];
    size_t n = 0;
    const char *f = a->argv[A_NUMBERS];
    if (f[N_DRY]) buf[n++] = 'd';
    if (f[N_NO_OPT_OUT]) buf[n++] = 'o';
    if (f[N_OPT_IN]) buf[n++] = 'i';
    if (f[N_EXEMPT]) buf[n++] = 'x';
    if (f[N_FROM_QUEUE]) buf[n++] = 'q';
    buf[n] = '\0';
    return buf;
}

static struct decide_input input(const struct config *c, const char *channel,
                                 const char *category, const char *campaign)
{
    struct decide_input in;
    memset(&in, 0, sizeof in);
    strcpy(in.user, "0123456789abcdef0123456789abcdef");
    strcpy(in.message, "fedcba9876543210");
    in.channel = config_channel(c, channel);
    in.category = config_category(c, category);
    in.campaign = campaign;
    return in;
}

TEST(keys_share_one_hash_tag)
{
    struct config c = make_config();
    c.redis.bucket_bits = 16;
    struct decide_input in = input(&c, "email", "marketing", "spring");
    struct script_args a;
    decision_decide_args(&c, &in, 1700000000, &a);
    CHECK_EQ_INT(a.nkeys, 4);
    CHECK_EQ_INT(a.argc, A_COUNT);
    CHECK_EQ_STR(arg(&a, 0), "cg:{01}:s23");          /* 8 more bits: "23" */
    CHECK_EQ_STR(arg(&a, 1), "cg:{01}:c:0123456789abcdef0123456789abcdef");
    /* fatigue and audit are off here: their keys repeat the sends key */
    CHECK_EQ_STR(arg(&a, 2), "cg:{01}:s23");
    CHECK_EQ_STR(arg(&a, 3), "cg:{01}:s23");
    CHECK_EQ_STR(arg(&a, A_AUDIT_MAX), "");
    /* No privacy.retention here: a minute of slack on the bucket's expiry. */
    CHECK_EQ_INT(be(a.argv[A_NUMBERS] + N_SLACK, 4), 60000);
    c.fatigue.enabled = true;
    c.fatigue.limit = 1;
    c.fatigue.window_ms = 1000;
    c.audit.enabled = true;
    c.audit.max_entries = 1000000;
    c.audit.retention_ms = 1000;
    c.retention_ms = 86400000;
    decision_decide_args(&c, &in, 1700000000, &a);
    CHECK_EQ_STR(arg(&a, 2), "cg:{01}:g23");
    CHECK_EQ_STR(arg(&a, 3), "cg:{01}:a");
    CHECK_EQ_STR(arg(&a, A_AUDIT_MAX), "3906");
    CHECK_EQ_STR(arg(&a, A_AUDIT), "0123456789abcdef0123456789abcdef|email|marketing|0");
    CHECK_EQ_INT(be(a.argv[A_NUMBERS] + N_AUDIT_KEEP, 6), 1000);
    /* privacy.retention (1d) bounds the records (the caps' windows reach
     * 30d): the bucket's expiry is exact, no slack. */
    CHECK_EQ_INT(be(a.argv[A_NUMBERS] + N_SLACK, 4), 0);
    /* The rules: 3 caps, the fatigue rule (11 bytes), then every cap's name. */
    CHECK_EQ_INT(a.argv[A_NUMBERS][N_FATIGUE], 1);
    CHECK_EQ_INT(n_caps(&a), 3);
    const char *names = caps_at(&a) + 3 * 16 + 11;
    CHECK_EQ_INT(be(caps_at(&a) + 3 * 16 + 2, 2), 1);   /* fatigue limit */
    CHECK_EQ_INT((size_t)(a.argv[A_RULES] + a.argvlen[A_RULES] - names),
                 strlen("email-daily\nall-weekly\ncampaign-once\nhealth-monthly\n"));
    CHECK(memcmp(names, "email-daily\nall-weekly\n", 23) == 0);
    c.fatigue.enabled = false;
    c.audit.enabled = false;
    CHECK_EQ_INT(a.argvlen[A_PERSON], 8);
    CHECK_EQ_INT(be(a.argv[A_PERSON], 8), 0x0123456789abcdefULL);
    CHECK_EQ_INT(a.argvlen[A_NUMBERS], N_LEN);
    CHECK_EQ_INT(be(a.argv[A_NUMBERS] + N_MSG, 4), 0xfedcba98);
    CHECK(be(a.argv[A_NUMBERS] + N_CAMP, 3) != 0);
    CHECK_EQ_INT(be(a.argv[A_NUMBERS] + N_RET, 6), 86400000);
    CHECK_EQ_INT(be(a.argv[A_NUMBERS] + N_IDEM, 6), 86400000);
    CHECK_EQ_INT(be(a.argv[A_NUMBERS] + N_MAXDEF, 6), 7 * 86400000LL);
    CHECK(be(a.argv[A_NUMBERS] + N_CH, 2) != be(a.argv[A_NUMBERS] + N_CAT, 2));
    CHECK_EQ_STR(arg(&a, A_SCOPE), "email|marketing");
    c.redis.bucket_bits = 12;
    decision_decide_args(&c, &in, 1700000000, &a);
    CHECK_EQ_STR(arg(&a, 0), "cg:{01}:s2");
    c.redis.bucket_bits = 20;
    decision_decide_args(&c, &in, 1700000000, &a);
    CHECK_EQ_STR(arg(&a, 0), "cg:{01}:s234");
}

TEST(only_matching_caps_are_sent)
{
    struct config c = make_config();
    c.redis.bucket_bits = 16;
    struct script_args a;
    struct decide_input in = input(&c, "email", "marketing", "spring");
    decision_decide_args(&c, &in, 1700000000, &a);
    /* email-daily, all-weekly, campaign-once: 16 bytes each */
    CHECK_EQ_INT(a.argvlen[A_NUMBERS], N_LEN);
    CHECK_EQ_INT(n_caps(&a), 3);
    CHECK_EQ_INT(n_quiet(&a), 0);             /* email has no quiet hours */
    const char *p = caps_at(&a);
    CHECK_EQ_INT(be(p, 1), 0);
    CHECK(be(p + 1, 2) != 0);                 /* channel filter: email */
    CHECK_EQ_INT(be(p + 3, 2), 0);            /* any category */
    CHECK_EQ_INT(be(p + 7, 2), 2);            /* limit */
    CHECK_EQ_INT(be(p + 9, 6), 86400000);     /* window */
    CHECK_EQ_INT(be(p + 15, 1), 0);           /* enforced */
    p += 32;
    CHECK_EQ_INT(be(p, 1), 2);                /* campaign-once's index */
    CHECK_EQ_INT(be(p + 5, 1), 1);            /* per campaign */
    CHECK_EQ_INT(be(p + 6, 1), 1);            /* deny */

    /* No campaign: the per-campaign cap has nothing to count. */
    in = input(&c, "push", "marketing", NULL);
    decision_decide_args(&c, &in, 1700000000, &a);
    CHECK_EQ_INT(n_caps(&a), 1);
    CHECK_EQ_INT(be(a.argv[A_NUMBERS] + N_CAMP, 3), 0);

    in = input(&c, "push", "health", NULL);
    decision_decide_args(&c, &in, 1700000000, &a);
    CHECK_EQ_INT(n_caps(&a), 2);              /* all-weekly, health-monthly */
    CHECK_EQ_INT(be(caps_at(&a) + 31, 1), 1); /* health-monthly is a shadow cap */
    CHECK_EQ_INT(a.argv[A_NUMBERS][N_FATIGUE], 0);
    /* No audit: the rules are the quiet intervals and the caps, nothing more. */
    CHECK_EQ_INT(a.argvlen[A_RULES], 12 * n_quiet(&a) + 32);
    CHECK_EQ_STR(arg(&a, A_SCOPE), "push|health");
}

TEST(exempt_category_sends_no_caps_and_flags)
{
    struct config c = make_config();
    c.redis.bucket_bits = 16;
    struct script_args a;
    struct decide_input in = input(&c, "sms", "transactional", "x");
    in.dry_run = true;
    decision_decide_args(&c, &in, 1700000000, &a);
    CHECK_EQ_STR(flags(&a), "doix");        /* dry run, ignores opt-out, opt-in, exempt */
    CHECK_EQ_INT(n_quiet(&a), 0);           /* exempt from quiet hours */
    CHECK_EQ_INT(n_caps(&a), 0);
    CHECK_EQ_INT(a.argvlen[A_RULES], 0);
    in = input(&c, "email", "health", NULL);
    decision_decide_args(&c, &in, 1700000000, &a);
    CHECK_EQ_STR(flags(&a), "i");
}

TEST(quiet_intervals_only_for_listed_channels)
{
    struct config c = make_config();
    c.redis.bucket_bits = 16;
    char err[256];
    struct tz_db *db = tz_db_load("/usr/share/zoneinfo", err, sizeof err);
    CHECK(db != NULL);
    if (!db)
        return;
    struct script_args a;
    struct decide_input in = input(&c, "push", "marketing", NULL);
    in.zone = tz_db_find(db, "UTC");
    /* 2023-11-14 22:13:20 UTC: inside 21:00-08:00. */
    decision_decide_args(&c, &in, 1700000000, &a);
    size_t nq = n_quiet(&a);
    CHECK(nq >= 2);
    int found = 0;
    for (size_t k = 0; k < nq; k++) {
        uint64_t s = be(quiet_at(&a) + 12 * k, 6), e = be(quiet_at(&a) + 12 * k + 6, 6);
        if (s <= 1700000000000ULL && 1700000000000ULL < e) {
            found = 1;
            CHECK_EQ_INT(s, 1699995600000LL);     /* 21:00 */
            CHECK_EQ_INT(e, 1700035200000LL);     /* 08:00 next day */
        }
    }
    CHECK(found);
    in = input(&c, "email", "marketing", NULL);
    in.zone = tz_db_find(db, "UTC");
    decision_decide_args(&c, &in, 1700000000, &a);
    CHECK_EQ_INT(n_quiet(&a), 0);
    tz_db_free(db);
}

TEST(config_names_must_not_collide)
{
    struct config c = make_config();
    char err[256];
    CHECK_EQ_INT(decision_check_config(&c, err, sizeof err), 0);
}

/* decide.lua's answer packed as the script packs it, from the fields
 * {outcome, reason, rule, retry_ms, replay, (unused), count, queued,
 * superseded, n_shadow, [rule, would] * n_shadow}: as many of the N as
 * given (fewer make a short answer). */
static struct store_reply packed(struct store_item *items, const long long *v, size_t n)
{
    static unsigned char buf[64];
    static const int width[] = { 1, 1, 2, 6, 1, 0, 4, 1, 1, 1 };
    size_t len = 0;
    for (size_t k = 0; k < n; k++) {
        int w = k < 10 ? width[k] : (k - 10) % 2 == 0 ? 2 : 1;
        for (int b = w - 1; b >= 0; b--)
            buf[len + (size_t)(w - 1 - b)] = (unsigned char)((unsigned long long)v[k] >> (8 * b));
        len += (size_t)w;
    }
    items[0] = (struct store_item){ .type = STORE_STR, .s = (const char *)buf, .len = len };
    return (struct store_reply){ .status = STORE_OK, .n = 1, .items = items };
}

TEST(results_are_decoded_and_rounded_up)
{
    struct config c = make_config();
    struct store_item it[16];
    struct decision d;
    long long defer[] = { 1, 4, 2, 1001, 0, 1, 2, 0, 0, 0 };
    struct store_reply r = packed(it, defer, 10);
    CHECK_EQ_INT(decision_decide_result(&r, &c, &d), 0);
    CHECK_EQ_INT(d.outcome, OUTCOME_DEFER);
    CHECK_EQ_INT(d.reason, REASON_CAP);
    CHECK_EQ_INT(d.rule, 1);
    CHECK_EQ_INT(d.retry_after_s, 2);
    long long exact[] = { 1, 3, 0, 5000, 0, 1, 0, 0, 0, 0 };
    r = packed(it, exact, 10);
    CHECK_EQ_INT(decision_decide_result(&r, &c, &d), 0);
    CHECK_EQ_INT(d.retry_after_s, 5);
    CHECK_EQ_INT(d.rule, -1);
    long long replay[] = { 0, 0, 0, 0, 1, 1, 0, 0, 0, 0 };
    r = packed(it, replay, 10);
    CHECK_EQ_INT(decision_decide_result(&r, &c, &d), 0);
    CHECK(d.replay);
    CHECK_EQ_STR(decision_outcome_name(d.outcome), "allow");
    long long shadow[] = { 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 4, 2 };
    r = packed(it, shadow, 12);
    CHECK_EQ_INT(decision_decide_result(&r, &c, &d), 0);
    CHECK_EQ_INT(d.n_shadow, 1);
    CHECK_EQ_INT(d.shadow[0].rule, 3);
    CHECK_EQ_INT(d.shadow[0].would, OUTCOME_DENY);
    long long fatigue[] = { 1, 4, 256, 1000, 0, 1, 3, 1, 1, 0 };
    r = packed(it, fatigue, 10);
    CHECK_EQ_INT(decision_decide_result(&r, &c, &d), 0);
    CHECK_EQ_INT(d.queued, 1);
    CHECK(d.superseded);
    CHECK_EQ_INT(decision_decide_result(&r, &c, &d), 0);
    CHECK_EQ_STR(decision_rule_name(&c, d.rule), "fatigue");
}

TEST(bad_results_are_refused)
{
    struct config c = make_config();
    struct store_item it[16];
    struct decision d;
    long long bad_outcome[] = { 3, 0, 0, 0, 0, 1, 0, 0, 0, 0 };
    struct store_reply r = packed(it, bad_outcome, 10);
    CHECK_EQ_INT(decision_decide_result(&r, &c, &d), -1);
    long long bad_rule[] = { 1, 4, 9, 0, 0, 1, 0, 0, 0, 0 };
    r = packed(it, bad_rule, 10);
    CHECK_EQ_INT(decision_decide_result(&r, &c, &d), -1);
    r = packed(it, bad_rule, 5);
    CHECK_EQ_INT(decision_decide_result(&r, &c, &d), -1);
    long long bad_shadow[] = { 0, 0, 0, 0, 0, 1, 0, 0, 0, 2, 1, 1 };   /* says 2, holds 1 */
    r = packed(it, bad_shadow, 12);
    CHECK_EQ_INT(decision_decide_result(&r, &c, &d), -1);
    it[0] = (struct store_item){ .type = STORE_STR, .s = "x", .len = 1 };
    r.n = 10;
    CHECK_EQ_INT(decision_decide_result(&r, &c, &d), -1);
    r.status = STORE_TIMEOUT;
    CHECK_EQ_INT(decision_release_result(&r), -1);
    CHECK_EQ_INT(decision_consent_result(&r), -1);
}

TEST(release_and_consent_args)
{
    struct config c = make_config();
    c.redis.bucket_bits = 16;
    struct script_args a;
    const char *user = "0123456789abcdef0123456789abcdef";
    decision_release_args(&c, user, "00000a9876543210", &a);
    CHECK_EQ_INT(a.script, SCRIPT_RELEASE);
    CHECK_EQ_INT(a.argc, 3);
    CHECK_EQ_STR(arg(&a, 0), "cg:{01}:s23");
    CHECK_EQ_INT(a.argvlen[1], 8);
    CHECK_EQ_STR(arg(&a, 2), "2712");        /* 0x00000a98 */
    struct consent_proof proof = { .record_id = "00112233445566778899aabbccddeeff",
                                   .method = "api:web form", .notice = "v3" };
    decision_consent_args(&c, user, "*", "marketing", false, "web form", &proof, &a);
    CHECK_EQ_INT(a.script, SCRIPT_CONSENT);
    CHECK_EQ_INT(a.nkeys, 4);
    CHECK_EQ_STR(arg(&a, 0), "cg:{01}:c:0123456789abcdef0123456789abcdef");
    CHECK_EQ_STR(arg(&a, 1), "cg:{01}:g23");
    CHECK_EQ_STR(arg(&a, 2), "cg:{01}:a");
    CHECK_EQ_STR(arg(&a, 3), "cg:{01}:h:0123456789abcdef0123456789abcdef");
    CHECK_EQ_STR(arg(&a, 4), "set");
    CHECK_EQ_STR(arg(&a, 5), "*|marketing");
    CHECK_EQ_STR(arg(&a, 6), "out");
    CHECK_EQ_STR(arg(&a, 7), "web form");
    /* The history entry: record id, method, basis ('' inherit), notice,
     * controller (none configured), the bound per scope. */
    CHECK_EQ_INT(a.argc, 4 + 14);
    CHECK_EQ_STR(arg(&a, 12), "00112233445566778899aabbccddeeff");
    CHECK_EQ_STR(arg(&a, 13), "api:web form");
    CHECK_EQ_STR(arg(&a, 14), "");
    CHECK_EQ_STR(arg(&a, 15), "v3");
    CHECK_EQ_STR(arg(&a, 16), "");
    CHECK_EQ_STR(arg(&a, 17), "20");
    /* A bounce is no consent change: no history entry. */
    decision_signal_args(&c, user, CONSENT_BOUNCE, "email", false, NULL, NULL, NULL, &a);
    CHECK_EQ_STR(arg(&a, 12), "");
}

TEST(acks_take_only_what_they_use)
{
    struct config c = make_config();
    c.idempotency_ms = 86400000;
    struct script_args a;
    const char *member = "0123456789abcdef0123456789abcdef:00000a9876543210";
    /* The dispatcher's ack: a script call, two keys and two arguments. */
    decision_finish_args(&c, member, FINISH_ACK, 0, NULL, &a);
    CHECK_EQ_INT(a.script, SCRIPT_FINISH);
    CHECK_EQ_INT(a.nkeys, 2);
    CHECK_EQ_INT(a.argc, 4);
    CHECK_EQ_STR(arg(&a, 0), "cg:{01}:q");
    CHECK_EQ_STR(arg(&a, 1), "cg:{01}:d:0123456789abcdef0123456789abcdef:00000a9876543210");
    CHECK_EQ_STR(arg(&a, 2), "ack");
    CHECK_EQ_STR(arg(&a, 3), member);
    decision_finish_args(&c, member, FINISH_RETRY, 1500, NULL, &a);
    CHECK_EQ_INT(a.argc, 5);
    CHECK_EQ_STR(arg(&a, 4), "1500");
    decision_finish_args(&c, member, FINISH_DEAD, 0, "{}", &a);
    CHECK_EQ_INT(a.nkeys, 3);
    CHECK_EQ_STR(arg(&a, 2), "cg:{01}:dead");
    CHECK_EQ_STR(arg(&a, 5), "{}");
    /* A forward's own copy: plain commands, the kept answer first, then the
     * message, then its place in the queue. */
    int argcs[3];
    CHECK_EQ_INT(decision_ack_commands(&c, member, "sealed", 6, &a, argcs), 3);
    CHECK_EQ_INT(argcs[0], 5);
    CHECK_EQ_INT(argcs[1], 2);
    CHECK_EQ_INT(argcs[2], 3);
    CHECK_EQ_STR(arg(&a, 0), "SET");
    CHECK_EQ_STR(arg(&a, 1), "cg:{01}:ans:0123456789abcdef0123456789abcdef:00000a9876543210");
    CHECK_EQ_STR(arg(&a, 2), "sealed");
    CHECK_EQ_STR(arg(&a, 3), "PX");
    CHECK_EQ_STR(arg(&a, 4), "86400000");
    CHECK_EQ_STR(arg(&a, 5), "DEL");
    CHECK_EQ_STR(arg(&a, 6), "cg:{01}:d:0123456789abcdef0123456789abcdef:00000a9876543210");
    CHECK_EQ_STR(arg(&a, 7), "ZREM");
    CHECK_EQ_STR(arg(&a, 8), "cg:{01}:q");
    CHECK_EQ_STR(arg(&a, 9), member);
    CHECK_EQ_INT(decision_ack_commands(&c, member, NULL, 0, &a, argcs), 2);
    CHECK_EQ_STR(arg(&a, 0), "DEL");
    CHECK_EQ_STR(arg(&a, 2), "ZREM");
}

int main(void)
{
    RUN(keys_share_one_hash_tag);
    RUN(only_matching_caps_are_sent);
    RUN(exempt_category_sends_no_caps_and_flags);
    RUN(quiet_intervals_only_for_listed_channels);
    RUN(results_are_decoded_and_rounded_up);
    RUN(bad_results_are_refused);
    RUN(release_and_consent_args);
    RUN(acks_take_only_what_they_use);
    RUN(config_names_must_not_collide);
    return unit_done("test_decision");
}

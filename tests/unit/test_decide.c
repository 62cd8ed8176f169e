/* Unit tests: the one owner of a decision (src/decide.c, included for its
 * static functions): failing open or closed, reading the script's answer,
 * the metrics and the audit.file line. */
#include "../../src/decide.c"

#include <event2/event.h>
#include <jansson.h>

#include "../fuzz/fuzz_common.h"
#include "unit.h"

static struct config cfg;
static struct loop lp;
static struct store *no_store;          /* never connected */
static json_t *audit_lines;

static bool wanted(void *owner) { (void)owner; return true; }
static void write_line(void *owner, json_t *e) { (void)owner; json_array_append_new(audit_lines, e); }
static const struct loop_hooks hooks = { .audit_wanted = wanted, .audit_write = write_line };

static struct decide_result got;
static int answered;
static void on_result(void *arg, const struct decide_result *r)
{
    (void)arg;
    got = *r;
    answered++;
}

static struct decide_request request(enum decide_road road)
{
    struct decide_request rq = { .channel = &cfg.channels[0], .category = &cfg.categories[0],
                                 .road = road };
    memset(rq.user, 'a', PSEUDONYM_USER_HEX);
    memset(rq.message, 'b', PSEUDONYM_SHORT_HEX);
    return rq;
}

TEST(without_redis_it_fails_closed)
{
    struct decide_op op;
    struct decide_request rq = request(DECIDE_API);
    answered = 0;
    cfg.redis.fail_open = false;
    decide_start(&op, &lp, &rq, on_result, NULL);
    CHECK_EQ_INT(answered, 1);
    CHECK_EQ_INT(got.status, DECIDE_UNAVAILABLE);
    CHECK_EQ_STR(got.why, "not connected");
}

TEST(failing_open_allows_a_waiting_caller_but_not_the_dispatcher)
{
    struct decide_op op;
    struct decide_request rq = request(DECIDE_SEND);
    cfg.redis.fail_open = true;
    uint64_t before = lp.metrics.decisions[OUTCOME_ALLOW][REASON_STORE_UNAVAILABLE];
    decide_start(&op, &lp, &rq, on_result, NULL);
    CHECK_EQ_INT(got.status, DECIDE_FAILED_OPEN);
    CHECK_EQ_INT(got.decision.outcome, OUTCOME_ALLOW);
    CHECK_EQ_INT(got.decision.reason, REASON_STORE_UNAVAILABLE);
    CHECK_EQ_INT(lp.metrics.decisions[OUTCOME_ALLOW][REASON_STORE_UNAVAILABLE], before + 1);
    rq = request(DECIDE_QUEUE);
    decide_start(&op, &lp, &rq, on_result, NULL);
    CHECK_EQ_INT(got.status, DECIDE_UNAVAILABLE);      /* its lease runs out; it comes again */
    cfg.redis.fail_open = false;
}

/* decide.lua's packed answer (see decision_decide_result). */
static size_t answer_bytes(unsigned char *p, unsigned outcome, unsigned reason, unsigned rule,
                           unsigned replay, unsigned count, unsigned shadow_rule)
{
    memset(p, 0, 21);
    p[0] = (unsigned char)outcome;
    p[1] = (unsigned char)reason;
    p[3] = (unsigned char)rule;
    p[10] = (unsigned char)replay;
    p[14] = (unsigned char)count;
    p[17] = shadow_rule ? 1 : 0;
    if (shadow_rule) {
        p[19] = (unsigned char)shadow_rule;
        p[20] = 2;
        return 21;
    }
    return 18;
}

TEST(an_answer_is_counted_and_audited_once)
{
    struct decide_op op;
    unsigned char buf[32];
    size_t n = answer_bytes(buf, OUTCOME_DENY, REASON_CAP, 3, 1, 1, 4);
    struct store_item item = { .type = STORE_STR, .s = (const char *)buf, .len = n };
    struct store_reply r = { .status = STORE_OK, .n = 1, .items = &item };
    struct decide_request rq = request(DECIDE_ROUTE);

    /* Set the op up as decide_start does, then give it the reply. */
    memset(&op, 0, sizeof op);
    op.loop = &lp;
    op.cfg = config_retain(&cfg);
    op.cb = on_result;
    op.road = rq.road;
    memcpy(op.user, rq.user, sizeof op.user);
    snprintf(op.channel, sizeof op.channel, "email");
    snprintf(op.category, sizeof op.category, "marketing");
    uint64_t replays = lp.metrics.replays;
    json_array_clear(audit_lines);
    on_reply(&op, &r);
    CHECK_EQ_INT(got.status, DECIDE_OK);
    CHECK_EQ_INT(got.decision.outcome, OUTCOME_DENY);
    CHECK_EQ_STR(decision_rule_name(&cfg, got.decision.rule), "campaign-once");
    CHECK_EQ_INT(lp.metrics.decisions[OUTCOME_DENY][REASON_CAP], 1);
    CHECK_EQ_INT(lp.metrics.replays, replays + 1);
    CHECK_EQ_INT(lp.metrics.n_shadow, 1);
    CHECK_EQ_STR(lp.metrics.shadow[0].rule, "health-monthly");
    CHECK_EQ_INT(json_array_size(audit_lines), 1);
    json_t *line = json_array_get(audit_lines, 0);
    CHECK_EQ_STR(json_string_value(json_object_get(line, "road")), "route");
    CHECK_EQ_STR(json_string_value(json_object_get(line, "rule")), "campaign-once");
    CHECK_EQ_INT(json_integer_value(json_object_get(line, "counted")), 1);
    CHECK(json_string_length(json_object_get(line, "pseudonym")) == PSEUDONYM_USER_HEX);
}

TEST(a_bad_answer_is_unavailable_not_a_guess)
{
    struct decide_op op;
    struct store_item item = { .type = STORE_STR, .s = "short", .len = 5 };
    struct store_reply r = { .status = STORE_OK, .n = 1, .items = &item };
    memset(&op, 0, sizeof op);
    op.loop = &lp;
    op.cfg = config_retain(&cfg);
    op.cb = on_result;
    json_array_clear(audit_lines);
    on_reply(&op, &r);
    CHECK_EQ_INT(got.status, DECIDE_UNAVAILABLE);
    CHECK_EQ_STR(got.why, "bad reply");
    CHECK_EQ_INT(json_array_size(audit_lines), 0);
    struct store_reply late = { .status = STORE_TIMEOUT };
    memset(&op, 0, sizeof op);
    op.loop = &lp;
    op.cfg = config_retain(&cfg);
    op.cb = on_result;
    on_reply(&op, &late);
    CHECK_EQ_STR(got.why, "timeout");
}

TEST(a_dry_run_is_not_audited)
{
    struct decide_op op;
    unsigned char buf[32];
    size_t n = answer_bytes(buf, OUTCOME_ALLOW, REASON_OK, 0, 0, 0, 0);
    struct store_item item = { .type = STORE_STR, .s = (const char *)buf, .len = n };
    struct store_reply r = { .status = STORE_OK, .n = 1, .items = &item };
    memset(&op, 0, sizeof op);
    op.loop = &lp;
    op.cfg = config_retain(&cfg);
    op.cb = on_result;
    op.dry_run = true;
    uint64_t dry = lp.metrics.dry_runs;
    json_array_clear(audit_lines);
    on_reply(&op, &r);
    CHECK_EQ_INT(json_array_size(audit_lines), 0);
    CHECK_EQ_INT(lp.metrics.dry_runs, dry + 1);
}

int main(void)
{
    cfg = fz_config();
    struct event_base *base = event_base_new();
    audit_lines = json_array();
    lp.base = base;
    lp.cfg = &cfg;
    lp.tz = fz_tz();
    lp.hooks = &hooks;
    lp.batch = decide_batch_new(base, &no_store, NULL, NULL);
    RUN(without_redis_it_fails_closed);
    RUN(failing_open_allows_a_waiting_caller_but_not_the_dispatcher);
    RUN(an_answer_is_counted_and_audited_once);
    RUN(a_bad_answer_is_unavailable_not_a_guess);
    RUN(a_dry_run_is_not_audited);
    decide_batch_free(lp.batch);
    json_decref(audit_lines);
    event_base_free(base);
    return unit_done("test_decide");
}

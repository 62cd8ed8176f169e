/* decide: the one owner of a decision.  See decide.h. */
#include "capgate/decide.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "capgate/breaker.h"
#include "capgate/campaigns.h"
#include "capgate/clock.h"
#include "capgate/config.h"
#include "capgate/decide_batch.h"
#include "capgate/log.h"
#include "capgate/loop.h"
#include "capgate/store.h"
#include "capgate/textbuf.h"
#include "capgate/tz.h"

static const char *const road_names[] = {
    [DECIDE_API] = "decide", [DECIDE_SEND] = "send", [DECIDE_ROUTE] = "route",
    [DECIDE_QUEUE] = "queue",
};

/* The audit.file line: the same decision the script put in the Redis
 * stream, for a log pipeline (a dry run is a question, not a decision). */
static void audit_line(const struct decide_op *op, const struct decision *d)
{
    if (op->dry_run || !loop_audit_wanted(op->loop))
        return;
    const char *rule = decision_rule_name(op->cfg, d->rule);
    json_t *e = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:I, s:b, s:s}", "type", "decide",
                          "pseudonym", op->user, "channel", op->channel,
                          "category", op->category,
                          "decision", decision_outcome_name(d->outcome),
                          "reason", decision_reason_name(d->reason),
                          "config_generation", (json_int_t)op->cfg->generation,
                          "replay", d->replay, "road", road_names[op->road]);
    if (e && rule) {
        json_object_set_new(e, "rule", json_string(rule));
        json_object_set_new(e, "counted", json_integer(d->count));
    }
    loop_audit(op->loop, e);
}

static void count(const struct decide_op *op, const struct decision *d)
{
    struct metrics *m = &op->loop->metrics;
    metrics_count_decision(m, d->outcome, d->reason, decision_rule_name(op->cfg, d->rule),
                           op->channel);
    for (size_t k = 0; k < d->n_shadow; k++)
        metrics_count_shadow(m, op->cfg->caps[d->shadow[k].rule].name, d->shadow[k].would);
    if (d->replay)
        COUNTER_INC(m->replays);
    if (op->dry_run)
        COUNTER_INC(m->dry_runs);
}

/* The dispatcher learns when what this decision queued is due: a deferred
 * message at its time (asked a second early: retry_after is rounded up,
 * and the claim says the exact time), an allowed one at the end of its
 * lease, should its delivery never be acknowledged. */
static void note_queued(const struct decide_op *op, const struct decision *d)
{
    struct loop *l = op->loop;
    if (!op->queues || d->replay)
        return;
    uint64_t due_ms;
    if (d->outcome == OUTCOME_DEFER && d->queued == 1)
        due_ms = d->retry_after_s > 1 ? (uint64_t)(d->retry_after_s - 1) * 1000u : 0;
    else if (d->outcome == OUTCOME_ALLOW)
        due_ms = (uint64_t)op->cfg->delivery.lease_ms;
    else
        return;
    loop_queued(l, decision_tag(op->user), due_ms);
}

/* Answers the op; it may be freed by the callback, so nothing of it is
 * used after (the config reference is let go last). */
static void finish(struct decide_op *op, struct decide_result *res)
{
    const struct config *cfg = op->cfg;
    res->cfg = cfg;
    op->cb(op->arg, res);
    config_release(cfg);
}

static void unavailable(struct decide_op *op, const char *why)
{
    struct decide_result res = { .status = DECIDE_UNAVAILABLE, .why = why };
    log_debug("decision without store", "user=%s why=%s", op->user, why);
    /* Failing open answers a caller that waits; the dispatcher's message
     * simply waits for its lease to run out and comes again. */
    if (op->cfg->redis.fail_open && op->road != DECIDE_QUEUE) {
        res.status = DECIDE_FAILED_OPEN;
        res.decision = (struct decision){ .outcome = OUTCOME_ALLOW,
                                          .reason = REASON_STORE_UNAVAILABLE, .rule = -1 };
        metrics_count_decision(&op->loop->metrics, OUTCOME_ALLOW, REASON_STORE_UNAVAILABLE,
                               NULL, op->channel);
    }
    finish(op, &res);
}

static void on_reply(void *arg, const struct store_reply *r)
{
    struct decide_op *op = arg;
    struct decide_result res = { .status = DECIDE_OK };

    if (r->status != STORE_OK) {
        unavailable(op, r->status == STORE_TIMEOUT ? "timeout"
                        : r->status == STORE_ERROR ? "redis error" : "not connected");
        return;
    }
    if (decision_decide_result(r, op->cfg, &res.decision) != 0) {
        log_error("unexpected reply from the decide script", "n=%zu", r->n);
        unavailable(op, "bad reply");
        return;
    }
    decision_first_answer(r, &res.first_answer, &res.first_answer_len);
    const struct decision *d = &res.decision;
    note_queued(op, d);
    count(op, d);
    /* The breaker counts sends: here those the caller makes itself; in
     * proxy mode the upstream's 2xx (a message held back and decided again
     * would count twice here). */
    if (op->road == DECIDE_API && d->outcome == OUTCOME_ALLOW && !d->replay && !op->dry_run)
        breaker_count(op->loop->breaker, op->campaign, BREAKER_SEND);
    campaign_names_note(op->loop->names, op->campaign);
    audit_line(op, d);
    log_debug("decision", "user=%s road=%s decision=%s reason=%s rule=%s retry_after=%lld replay=%d",
              op->user, road_names[op->road], decision_outcome_name(d->outcome),
              decision_reason_name(d->reason),
              decision_rule_name(op->cfg, d->rule) ? decision_rule_name(op->cfg, d->rule) : "-",
              (long long)d->retry_after_s, d->replay);
    finish(op, &res);
}

/* The op's state and the script's arguments for RQ. */
static void prepare(struct decide_op *op, struct loop *l, const struct decide_request *rq,
                    decide_cb *cb, void *arg, struct script_args *args)
{
    const struct config *cfg = l->cfg;
    memset(op, 0, sizeof *op);
    op->loop = l;
    op->cfg = config_retain(cfg);     /* a reload must not free it under us */
    op->cb = cb;
    op->arg = arg;
    op->road = rq->road;
    op->dry_run = rq->dry_run;
    op->queues = rq->enqueue != NULL && !rq->dry_run;
    memcpy(op->user, rq->user, sizeof op->user);
    memcpy(op->message, rq->message, sizeof op->message);
    text_copy(op->channel, sizeof op->channel, rq->channel->name);
    text_copy(op->category, sizeof op->category, rq->category->name);
    text_copy(op->campaign, sizeof op->campaign, rq->campaign ? rq->campaign : "");

    struct decide_input in;
    memset(&in, 0, sizeof in);
    memcpy(in.user, rq->user, sizeof in.user);
    memcpy(in.message, rq->message, sizeof in.message);
    in.channel = rq->channel;
    in.category = rq->category;
    in.campaign = rq->campaign;
    in.dry_run = rq->dry_run;
    in.enqueue = rq->enqueue;
    if (rq->tz)
        in.zone = tz_db_find(l->tz, rq->tz);
    else if (cfg->quiet_hours.enabled)
        in.zone = tz_db_find(l->tz, cfg->quiet_hours.default_tz);

    decision_decide_args(cfg, &in, (int64_t)time(NULL), args);
}

/* ---- undoing what a 503 said did not happen ----------------------------------- */

/* A decision that queues a message is answered 503 when Redis does not
 * answer within timeout_ms.  The script refuses to run past the deadline it
 * carries (LATE), but Redis may run it in time and then stall before it
 * writes the answer.  When that late answer comes, what the decision did
 * (a send recorded, a message queued) is undone, so that the 503 stays
 * true: nothing goes, and a retry with the same message id is decided
 * afresh.  (A gateway that dies meanwhile cannot undo: the message is then
 * delivered, at least once, as an accepted one would be.) */
struct undo {
    struct store *store;
    const struct config *cfg;
    size_t n;
    bool grouped;                     /* decide.lua's group form: an element each */
    struct { char user[PSEUDONYM_USER_HEX + 1], message[PSEUDONYM_SHORT_HEX + 1]; }
        who[DECIDE_GROUP_MAX];
};

static struct undo *undo_new(struct loop *l, struct decide_op *const *ops, size_t n,
                             bool grouped)
{
    struct undo *u = calloc(1, sizeof *u);
    if (!u)
        return NULL;
    u->store = l->store;
    u->cfg = config_retain(ops[0]->cfg);
    u->n = n;
    u->grouped = grouped;
    for (size_t k = 0; k < n; k++) {
        memcpy(u->who[k].user, ops[k]->user, sizeof u->who[k].user);
        memcpy(u->who[k].message, ops[k]->message, sizeof u->who[k].message);
    }
    return u;
}

/* One release that undoes a decision, tried again while Redis stalls: a
 * late answer comes just as Redis wakes, and a stall that follows at once
 * would otherwise leave the message queued, to be delivered when its lease
 * runs out -- the 503 a lie.  It is tried while the lease lasts (a quarter
 * kept back), each try after one that took a while (a timeout), never in a
 * spin, and not once the store is going. */
struct undo_try {
    struct store *store;
    const struct config *cfg;
    char user[PSEUDONYM_USER_HEX + 1], message[PSEUDONYM_SHORT_HEX + 1];
    uint64_t sent_us, until_us;
};

#define UNDO_RETRY_AFTER_US 50000u   /* a try that failed faster is not retried */

static void on_undone(void *arg, const struct store_reply *r);

static bool undo_send(struct undo_try *t)
{
    struct script_args a;
    decision_abandon_args(t->cfg, t->user, t->message, &a);
    t->sent_us = clock_now_us();
    return store_eval(t->store, a.script, a.nkeys, a.argc, a.argv, a.argvlen, on_undone, t) == 0;
}

static void undo_try_free(struct undo_try *t)
{
    config_release(t->cfg);
    free(t);
}

static void on_undone(void *arg, const struct store_reply *r)
{
    struct undo_try *t = arg;
    if (r->status == STORE_OK) {
        undo_try_free(t);
        return;
    }
    uint64_t now = clock_now_us();
    if (store_ready(t->store) && now - t->sent_us >= UNDO_RETRY_AFTER_US && now < t->until_us &&
        undo_send(t))
        return;
    log_warn_limited("could not undo a decision answered 503", "error=%s",
                     r->error ? r->error : "?");
    undo_try_free(t);
}

/* ONE is what Redis answered, late, to the decision of USER's MESSAGE: what
 * it recorded (a send, a queued message) is released.  Whether it was. */
static bool undo_one(struct store *st, const struct config *cfg, const char *user,
                     const char *message, const struct store_reply *one)
{
    struct decision d;
    if (decision_decide_result(one, cfg, &d) != 0)
        return false;
    if (!((d.outcome == OUTCOME_ALLOW && !d.replay) ||
          (d.outcome == OUTCOME_DEFER && d.queued == 1)))
        return false;
    struct undo_try *t = malloc(sizeof *t);
    if (!t)
        return false;
    t->store = st;
    t->cfg = config_retain(cfg);
    text_copy(t->user, sizeof t->user, user);
    text_copy(t->message, sizeof t->message, message);
    t->until_us = clock_now_us() + (uint64_t)cfg->delivery.lease_ms * 750u;
    if (undo_send(t))
        return true;
    undo_try_free(t);
    return false;
}

static void undo_after(void *arg, const struct store_reply *late)
{
    struct undo *u = arg;
    size_t pos = 0, undone = 0;
    for (size_t k = 0; late && k < u->n; k++) {
        struct store_reply one = *late;
        size_t e = 1;
        if (u->grouped && !(e = store_reply_element(late, pos, &one)))
            break;
        pos += e;
        undone += undo_one(u->store, u->cfg, u->who[k].user, u->who[k].message, &one);
    }
    if (late)
        log_warn("a decision answered 503 ran late in Redis; undone", "decisions=%zu undone=%zu",
                 u->n, undone);
    config_release(u->cfg);
    free(u);
}

/* A batched decision's undo text: "USER MESSAGE", the pseudonyms. */
void decide_undo_late(void *loop, const char *undo, const struct store_reply *one)
{
    struct loop *l = loop;
    char user[PSEUDONYM_USER_HEX + 1];
    const char *message = strchr(undo, ' ');
    if (!l->store || !message || (size_t)(message - undo) != PSEUDONYM_USER_HEX)
        return;
    memcpy(user, undo, PSEUDONYM_USER_HEX);
    user[PSEUDONYM_USER_HEX] = '\0';
    bool undone = undo_one(l->store, l->cfg, user, message + 1, one);
    log_warn_limited("a decision answered 503 ran late in Redis; undone", "decisions=1 undone=%d",
                     undone);
}

/* The breaker paused the op's campaign: denied here, without Redis (the
 * dispatcher sees the reason and keeps the message waiting).  Whether it
 * answered. */
static bool answered_paused(struct decide_op *op)
{
    if (!breaker_paused(op->loop->breaker, op->campaign))
        return false;
    struct decide_result res = { .status = DECIDE_OK };
    res.decision = (struct decision){ .outcome = OUTCOME_DENY, .reason = REASON_CAMPAIGN_PAUSED,
                                      .rule = -1 };
    count(op, &res.decision);
    audit_line(op, &res.decision);
    finish(op, &res);
    return true;
}

void decide_start(struct decide_op *op, struct loop *l, const struct decide_request *rq,
                  decide_cb *cb, void *arg)
{
    struct script_args args;
    prepare(op, l, rq, cb, arg, &args);
    if (answered_paused(op))
        return;
    if (op->queues) {
        /* Alone, as decide_batch would send it, and undone if it ran late. */
        struct undo *u = l->store ? undo_new(l, &op, 1, false) : NULL;
        if (!u || store_eval_after(l->store, args.script, args.nkeys, args.argc, args.argv,
                                   args.argvlen, on_reply, op, undo_after, u) != 0) {
            if (u) {
                config_release(u->cfg);
                free(u);
            }
            unavailable(op, "not connected");    /* (store_eval counted the refusal) */
        }
        return;
    }
    /* With the other decisions of this loop turn: one Redis call for all
     * (a proxy-mode decision, with its message to queue, goes alone). */
    char undo[PSEUDONYM_USER_HEX + 1 + PSEUDONYM_SHORT_HEX + 1];
    if (!op->dry_run)
        snprintf(undo, sizeof undo, "%s %s", op->user, op->message);
    if (decide_batch_add(l->batch, &args, op->cfg->limits.max_pending,
                         op->dry_run ? NULL : undo, on_reply, op) != 0)
        unavailable(op, "not connected");
}

/* ---- groups ------------------------------------------------------------------- */

struct group {
    size_t n;
    struct decide_op *ops[DECIDE_GROUP_MAX];
};

static void on_group_reply(void *arg, const struct store_reply *r)
{
    struct group *g = arg;
    size_t pos = 0;
    for (size_t k = 0; k < g->n; k++) {
        struct store_reply one = *r;
        size_t e = 1;
        if (r->status == STORE_OK) {
            e = store_reply_element(r, pos, &one);
            if (!e) {
                one = (struct store_reply){ .status = STORE_ERROR, .error = "bad group reply" };
                e = 1;
            }
        }
        on_reply(g->ops[k], &one);          /* each as if it had gone alone */
        pos += e;
    }
    free(g);
}

/* One call of decide.lua's group form for OPS[0..N) with ARGS. */
static void send_group(struct loop *l, struct decide_op *const *ops,
                       const struct script_args *args, size_t n)
{
    struct group *g = calloc(1, sizeof *g);
    size_t total = 2;
    for (size_t k = 0; k < n; k++)
        total += (size_t)args[k].argc;
    const char **argv = malloc(total * sizeof *argv);
    size_t *len = malloc(total * sizeof *len);
    char sizes[2 * DECIDE_GROUP_MAX];
    if (!g || !argv || !len) {
        free(g);
        free(argv);
        free(len);
        for (size_t k = 0; k < n; k++)
            unavailable(ops[k], "out of memory");
        return;
    }
    /* Every decision's keys, then '#', their sizes, and every one's arguments. */
    size_t argc = 0;
    int nkeys = 0;
    for (size_t k = 0; k < n; k++)
        for (int i = 0; i < args[k].nkeys; i++, nkeys++) {
            argv[argc] = args[k].argv[i];
            len[argc++] = args[k].argvlen[i];
        }
    argv[argc] = "#";
    len[argc++] = 1;
    for (size_t k = 0; k < n; k++) {
        sizes[2 * k] = (char)args[k].nkeys;
        sizes[2 * k + 1] = (char)(args[k].argc - args[k].nkeys);
    }
    argv[argc] = sizes;
    len[argc++] = 2 * n;
    for (size_t k = 0; k < n; k++)
        for (int i = args[k].nkeys; i < args[k].argc; i++) {
            argv[argc] = args[k].argv[i];
            len[argc++] = args[k].argvlen[i];
        }
    g->n = n;
    memcpy(g->ops, ops, n * sizeof *ops);
    struct undo *u = l->store && ops[0]->queues ? undo_new(l, ops, n, true) : NULL;
    int rc = l->store ? store_eval_after(l->store, SCRIPT_DECIDE, nkeys, (int)argc, argv, len,
                                         on_group_reply, g, u ? undo_after : NULL, u) : -1;
    if (rc != 0 && u) {
        config_release(u->cfg);
        free(u);
    }
    free(argv);
    free(len);
    if (rc != 0) {
        for (size_t k = 0; k < n; k++)
            unavailable(ops[k], "not connected");
        free(g);
    }
}

void decide_start_group(struct loop *l, size_t n, struct decide_op *const *ops,
                        const struct decide_request *rqs, decide_cb *cb, void *const *args)
{
    /* One decision (a route's single recipient, the common case) is a call
     * of its own, as a send's: the group form's framing, its pcall and its
     * nested answer cost Redis more than they share. */
    if (n == 1) {
        decide_start(ops[0], l, &rqs[0], cb, args[0]);
        return;
    }
    struct script_args *sa = malloc(DECIDE_GROUP_MAX * sizeof *sa);
    size_t *order = malloc((n ? n : 1) * sizeof *order);
    if (!sa || !order) {
        free(sa);
        free(order);
        for (size_t k = 0; k < n; k++) {
            struct script_args one;
            prepare(ops[k], l, &rqs[k], cb, args[k], &one);
            unavailable(ops[k], "out of memory");
        }
        return;
    }
    /* On a Cluster, a call's keys must share a slot: the decisions of one
     * hash tag go together (sorted by tag, order kept within a tag). */
    bool cluster = l->store && store_is_cluster(l->store);
    for (size_t k = 0; k < n; k++)
        order[k] = k;
    if (cluster)
        for (size_t i = 1; i < n; i++)          /* insertion sort: stable, small N */
            for (size_t j = i; j > 0 && memcmp(rqs[order[j - 1]].user, rqs[order[j]].user, 2) > 0;
                 j--) {
                size_t t = order[j];
                order[j] = order[j - 1];
                order[j - 1] = t;
            }
    struct decide_op *chunk[DECIDE_GROUP_MAX];
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        size_t k = order[i];
        if (m == DECIDE_GROUP_MAX ||
            (m && cluster && memcmp(rqs[order[i - 1]].user, rqs[k].user, 2) != 0)) {
            send_group(l, chunk, sa, m);
            m = 0;
        }
        prepare(ops[k], l, &rqs[k], cb, args[k], &sa[m]);
        if (!answered_paused(ops[k]))
            chunk[m++] = ops[k];
    }
    if (m)
        send_group(l, chunk, sa, m);
    free(sa);
    free(order);
}

/*
 * genload: puts many people's sends into Redis through capgate's own
 * decision code, for `make bench` (Redis bytes per person, Redis CPU per
 * decision with a full window).
 *
 *   genload CONFIG REDIS_PORT PEOPLE FIRST TAG SPEC...
 *
 * For each SPEC in order, and for each person i in FIRST .. FIRST+PEOPLE-1
 * (user id "load-<i>@example.com"), it builds exactly the script call
 * capgate would make (config_load, pseudonym_*, decision_*_args: the same
 * keys, layout and arguments, whatever they are today), sends it with
 * EVALSHA over one pipelined hiredis connection, and reads the reply with
 * capgate's own decision_decide_result().  SPEC is CHANNEL/CATEGORY/CAMPAIGN
 * ("-" as CAMPAIGN: none); the message id is "m-<TAG>-<i>-<spec index>".
 * (Consent records are written through capgate's HTTP API by bench.py: that
 * interface is stable, the consent script's arguments are not.)
 *
 *   genload --bench CONNS,PIPELINE,CALLS CONFIG REDIS_PORT PEOPLE FIRST TAG SPEC...
 *
 * is redis-benchmark for these calls: CONNS connections, PIPELINE calls in
 * flight on each, CALLS in all, random people and SPECs; it adds rps=R.
 * The last line on stdout is
 *   genload calls=N allow=A defer=D deny=X bad=B seconds=S
 * (bad: error replies or replies capgate would not understand).  Exit 0
 * when every call got a reply, 1 when something could not run.
 */
#include <event2/event.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "capgate/config.h"
#include "capgate/decision.h"
#include "capgate/pseudonym.h"
#include "capgate/store.h"

/* Every script call carries the caller's deadline on Redis's clock as its
 * last argument (src/store.c); a load generator has none: one far ahead. */
#define NO_DEADLINE "999999999999999"

#define WINDOW 2000   /* calls in flight: Redis never waits for us */

struct spec {
    const struct cfg_channel *channel;
    const struct cfg_category *category;
    const char *campaign;                 /* NULL: none */
};

struct counts {
    unsigned long long calls, outcome[OUTCOME__COUNT], bad;
};

static const struct config *cfg;
static struct pseudonym *ps;
static redisContext *rc;
static char sha[SCRIPT__COUNT][41];

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int parse_spec(const char *s, struct spec *sp)
{
    char buf[256], *a, *b, *c;
    memset(sp, 0, sizeof *sp);
    snprintf(buf, sizeof buf, "%s", s);
    a = buf;
    b = strchr(a, '/');
    c = b ? strchr(b + 1, '/') : NULL;
    if (!b || !c)
        return -1;
    *b++ = '\0';
    *c++ = '\0';
    sp->channel = config_channel(cfg, a);
    sp->category = config_category(cfg, b);
    if (!sp->channel || !sp->category)
        return -1;
    sp->campaign = strcmp(c, "-") == 0 ? NULL : strdup(c);
    return 0;
}

static void build(const struct spec *sp, size_t spec_index, const char *tag, unsigned long i,
                  int64_t now, struct script_args *a)
{
    char id[96], user[PSEUDONYM_USER_HEX + 1];
    int n = snprintf(id, sizeof id, "load-%lu@example.com", i);
    pseudonym_user(ps, id, (size_t)n, user);
    struct decide_input in;
    memset(&in, 0, sizeof in);
    memcpy(in.user, user, sizeof in.user);
    n = snprintf(id, sizeof id, "m-%s-%lu-%zu", tag, i, spec_index);
    pseudonym_message(ps, id, (size_t)n, in.message);
    in.channel = sp->channel;
    in.category = sp->category;
    in.campaign = sp->campaign;
    in.zone = NULL;              /* only quiet channels need a zone */
    decision_decide_args(cfg, &in, now, a);
}

static int send_call(const struct script_args *a)
{
    const char *argv[SCRIPT_ARGS_MAX + 4];
    size_t len[SCRIPT_ARGS_MAX + 4];
    char nkeys[16];
    snprintf(nkeys, sizeof nkeys, "%d", a->nkeys);
    argv[0] = "EVALSHA"; len[0] = 7;
    argv[1] = sha[a->script]; len[1] = 40;
    argv[2] = nkeys; len[2] = strlen(nkeys);
    for (int k = 0; k < a->argc; k++) {
        argv[3 + k] = a->argv[k];
        len[3 + k] = a->argvlen[k];
    }
    argv[3 + a->argc] = NO_DEADLINE;    /* the store's last argument (see below) */
    len[3 + a->argc] = strlen(NO_DEADLINE);
    return redisAppendCommandArgv(rc, a->argc + 4, argv, len) == REDIS_OK ? 0 : -1;
}

/* A reply as store.c hands it to decision_*_result(): top-level array unwrapped. */
static size_t flatten(const redisReply *r, struct store_item *it, size_t cap, size_t n)
{
    struct store_item x = { .type = STORE_NIL };
    switch (r->type) {
    case REDIS_REPLY_ARRAY:
        x.type = STORE_ARRAY;
        x.i = (long long)r->elements;
        if (n < cap)
            it[n] = x;
        n++;
        for (size_t k = 0; k < r->elements; k++)
            n = flatten(r->element[k], it, cap, n);
        return n;
    case REDIS_REPLY_INTEGER:
        x.type = STORE_INT;
        x.i = r->integer;
        break;
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
        x.type = STORE_STR;
        x.s = r->str;
        x.len = r->len;
        break;
    default:
        break;
    }
    if (n < cap)
        it[n] = x;
    return n + 1;
}

static void count_reply(const redisReply *r, struct counts *c)
{
    struct store_item items[64];
    struct store_reply out = { .status = STORE_OK, .items = items };
    c->calls++;
    if (r->type == REDIS_REPLY_ERROR) {
        if (c->bad == 0)
            fprintf(stderr, "genload: error reply: %.200s\n", r->str);
        c->bad++;
        return;
    }
    if (r->type == REDIS_REPLY_ARRAY) {
        size_t n = 0;
        for (size_t k = 0; k < r->elements; k++)
            n = flatten(r->element[k], items, 64, n);
        out.n = n > 64 ? 64 : n;
    } else {
        out.n = flatten(r, items, 64, 0);
    }
    struct decision d;
    if (decision_decide_result(&out, cfg, &d) == 0)
        c->outcome[d.outcome]++;
    else
        c->bad++;
}

static int read_reply(struct counts *c)
{
    void *v;
    if (redisGetReply(rc, &v) != REDIS_OK || !v) {
        fprintf(stderr, "genload: Redis: %s\n", rc->errstr);
        return -1;
    }
    count_reply(v, c);
    freeReplyObject(v);
    return 0;
}

/* ---- --bench: a redis-benchmark of the decision script ------------------- *
 * CONNS connections on one libevent loop, each keeping PIPELINE calls in
 * flight, CALLS calls in all, every one for a person drawn at random from
 * FIRST .. FIRST+PEOPLE-1 and a SPEC drawn at random: exactly the calls
 * capgate makes, whatever their arguments look like (redis-benchmark cannot
 * send arguments with NUL bytes, except the last one). */

struct bench {
    struct event_base *base;
    const struct spec *specs;
    size_t nspecs;
    const char *tag;
    unsigned long people, first, calls, sent, done;
    unsigned pipeline;
    uint64_t rng;
    int64_t now;
    struct counts cnt;
    int failed;
};

static uint64_t next_rand(uint64_t *s)   /* xorshift64* */
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

static void bench_send(redisAsyncContext *ac, struct bench *b);

static void bench_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct bench *b = privdata;
    if (!reply) {
        b->failed = 1;
        event_base_loopbreak(b->base);
        return;
    }
    count_reply(reply, &b->cnt);
    b->done++;
    if (b->done == b->calls) {
        event_base_loopbreak(b->base);
        return;
    }
    if (b->sent < b->calls)
        bench_send(ac, b);
}

static void bench_send(redisAsyncContext *ac, struct bench *b)
{
    struct script_args a;
    const char *argv[SCRIPT_ARGS_MAX + 4];
    size_t len[SCRIPT_ARGS_MAX + 4];
    char nkeys[16];
    unsigned long i = b->first + next_rand(&b->rng) % b->people;
    size_t k = (size_t)(next_rand(&b->rng) % b->nspecs);
    char tag[64];
    snprintf(tag, sizeof tag, "%s%lu", b->tag, b->sent);
    build(&b->specs[k], k, tag, i, b->now, &a);
    snprintf(nkeys, sizeof nkeys, "%d", a.nkeys);
    argv[0] = "EVALSHA"; len[0] = 7;
    argv[1] = sha[a.script]; len[1] = 40;
    argv[2] = nkeys; len[2] = strlen(nkeys);
    for (int n = 0; n < a.argc; n++) {
        argv[3 + n] = a.argv[n];
        len[3 + n] = a.argvlen[n];
    }
    argv[3 + a.argc] = NO_DEADLINE;
    len[3 + a.argc] = strlen(NO_DEADLINE);
    /* hiredis formats the command at once: A may go out of scope. */
    if (redisAsyncCommandArgv(ac, bench_reply, b, a.argc + 4, argv, len) != REDIS_OK) {
        b->failed = 1;
        event_base_loopbreak(b->base);
        return;
    }
    b->sent++;
}

static int run_bench(int port, unsigned conns, struct bench *b)
{
    b->base = event_base_new();
    if (!b->base)
        return -1;
    redisAsyncContext **acs = calloc(conns, sizeof *acs);
    if (!acs)
        return -1;
    for (unsigned k = 0; k < conns; k++) {
        acs[k] = redisAsyncConnect("127.0.0.1", port);
        if (!acs[k] || acs[k]->err) {
            fprintf(stderr, "genload: cannot connect to Redis on port %d\n", port);
            return -1;
        }
        redisLibeventAttach(acs[k], b->base);
    }
    double t0 = now_s();
    for (unsigned k = 0; k < conns; k++)
        for (unsigned p = 0; p < b->pipeline && b->sent < b->calls; p++)
            bench_send(acs[k], b);
    event_base_dispatch(b->base);
    double secs = now_s() - t0;
    for (unsigned k = 0; k < conns; k++)
        redisAsyncFree(acs[k]);
    free(acs);
    event_base_free(b->base);
    if (b->failed || b->done != b->calls) {
        fprintf(stderr, "genload: the benchmark lost its Redis connection\n");
        return -1;
    }
    printf("genload calls=%llu allow=%llu defer=%llu deny=%llu bad=%llu seconds=%.3f "
           "rps=%.1f\n", b->cnt.calls, b->cnt.outcome[OUTCOME_ALLOW],
           b->cnt.outcome[OUTCOME_DEFER], b->cnt.outcome[OUTCOME_DENY], b->cnt.bad, secs,
           (double)b->cnt.calls / secs);
    return 0;
}

static int load_scripts(void)
{
    for (size_t k = 0; k < SCRIPT__COUNT; k++) {
        redisReply *r = redisCommand(rc, "SCRIPT LOAD %s", decision_scripts[k]);
        if (!r || r->type != REDIS_REPLY_STRING || r->len != 40) {
            fprintf(stderr, "genload: SCRIPT LOAD failed: %s\n",
                    r && r->str ? r->str : rc->errstr);
            if (r)
                freeReplyObject(r);
            return -1;
        }
        memcpy(sha[k], r->str, 41);
        freeReplyObject(r);
    }
    return 0;
}

int main(int argc, char **argv)
{
    char err[512];
    unsigned conns = 0, pipeline = 1;
    unsigned long calls = 0;
    if (argc > 2 && strcmp(argv[1], "--bench") == 0) {
        if (sscanf(argv[2], "%u,%u,%lu", &conns, &pipeline, &calls) != 3 || !conns ||
            !pipeline || !calls) {
            fprintf(stderr, "genload: --bench CONNS,PIPELINE,CALLS\n");
            return 1;
        }
        argv += 2;
        argc -= 2;
    }
    if (argc < 7) {
        fprintf(stderr, "usage: genload [--bench CONNS,PIPELINE,CALLS] CONFIG REDIS_PORT "
                        "PEOPLE FIRST TAG SPEC...\n");
        return 1;
    }
    struct config *c = config_load(argv[1], err, sizeof err);
    if (!c) {
        fprintf(stderr, "genload: %s\n", err);
        return 1;
    }
    cfg = c;
    if (decision_check_config(cfg, err, sizeof err) != 0) {
        fprintf(stderr, "genload: %s\n", err);
        return 1;
    }
    ps = pseudonym_load(cfg->key_file, err, sizeof err);
    if (!ps) {
        fprintf(stderr, "genload: %s\n", err);
        return 1;
    }
    int port = atoi(argv[2]);
    unsigned long people = strtoul(argv[3], NULL, 10), first = strtoul(argv[4], NULL, 10);
    const char *tag = argv[5];
    size_t nspecs = (size_t)(argc - 6);
    struct spec *specs = calloc(nspecs, sizeof *specs);
    if (!specs)
        return 1;
    for (size_t k = 0; k < nspecs; k++)
        if (parse_spec(argv[6 + k], &specs[k]) != 0) {
            fprintf(stderr, "genload: bad spec \"%s\" (CHANNEL/CATEGORY/CAMPAIGN of the config)\n",
                    argv[6 + k]);
            return 1;
        }

    rc = redisConnect("127.0.0.1", port);
    if (!rc || rc->err) {
        fprintf(stderr, "genload: cannot connect to Redis on port %d\n", port);
        return 1;
    }
    if (load_scripts() != 0)
        return 1;

    if (conns) {
        struct bench b;
        memset(&b, 0, sizeof b);
        b.specs = specs;
        b.nspecs = nspecs;
        b.tag = tag;
        b.people = people ? people : 1;
        b.first = first;
        b.calls = calls;
        b.pipeline = pipeline;
        b.rng = ((uint64_t)time(NULL) << 20 ^ (uint64_t)getpid()) * 0x9e3779b97f4a7c15ull | 1;
        b.now = (int64_t)time(NULL);
        int rcode = run_bench(port, conns, &b);
        redisFree(rc);
        return rcode == 0 ? 0 : 1;
    }

    struct counts cnt;
    memset(&cnt, 0, sizeof cnt);
    int64_t now = (int64_t)time(NULL);
    double t0 = now_s();
    struct script_args a;
    for (size_t k = 0; k < nspecs; k++) {
        unsigned long sent = 0, read = 0;
        while (read < people) {
            /* Keep up to 2 x WINDOW queued: one being answered, one being sent. */
            while (sent < people && sent - read < 2 * WINDOW) {
                build(&specs[k], k, tag, first + sent, now, &a);
                if (send_call(&a) != 0) {
                    fprintf(stderr, "genload: cannot queue a call\n");
                    return 1;
                }
                sent++;
            }
            int done = 0;              /* hand them to Redis now, not when we run dry */
            while (!done)
                if (redisBufferWrite(rc, &done) != REDIS_OK) {
                    fprintf(stderr, "genload: Redis: %s\n", rc->errstr);
                    return 1;
                }
            unsigned long upto = read + WINDOW < sent ? read + WINDOW : sent;
            while (read < upto) {
                if (read_reply(&cnt) != 0)
                    return 1;
                read++;
            }
        }
    }
    double secs = now_s() - t0;
    printf("genload calls=%llu allow=%llu defer=%llu deny=%llu bad=%llu seconds=%.2f\n",
           cnt.calls, cnt.outcome[OUTCOME_ALLOW], cnt.outcome[OUTCOME_DEFER],
           cnt.outcome[OUTCOME_DENY], cnt.bad, secs);
    redisFree(rc);
    pseudonym_free(ps);
    config_free(c);
    for (size_t k = 0; k < nspecs; k++)
        free((char *)specs[k].campaign);
    free(specs);
    return 0;
}

/* Unit tests: the store's reply handling, RESP writing and Redis's clock
 * (src/store.c, included for its static functions). */
#include "../../src/store.c"

#include "unit.h"

static redisReply *str(const char *s)
{
    redisReply *r = calloc(1, sizeof *r);
    r->type = REDIS_REPLY_STRING;
    r->str = strdup(s);
    r->len = strlen(s);
    return r;
}

static redisReply *num(long long v)
{
    redisReply *r = calloc(1, sizeof *r);
    r->type = REDIS_REPLY_INTEGER;
    r->integer = v;
    return r;
}

static redisReply *err(const char *s)
{
    redisReply *r = str(s);
    r->type = REDIS_REPLY_ERROR;
    return r;
}

static redisReply *arr(size_t n, redisReply **items)
{
    redisReply *r = calloc(1, sizeof *r);
    r->type = REDIS_REPLY_ARRAY;
    r->elements = n;
    r->element = calloc(n ? n : 1, sizeof *r->element);
    for (size_t k = 0; k < n; k++)
        r->element[k] = items[k];
    return r;
}

static void reply_free(redisReply *r)
{
    for (size_t k = 0; r->type == REDIS_REPLY_ARRAY && k < r->elements; k++)
        reply_free(r->element[k]);
    free(r->element);
    free(r->str);
    free(r);
}

/* What a callback saw. */
static struct {
    int calls;
    enum store_status status;
    size_t n;
    struct store_item items[200];
    char strs[200][32];
} seen;

static void remember(void *arg, const struct store_reply *r)
{
    (void)arg;
    seen.calls++;
    seen.status = r->status;
    seen.n = r->n;
    for (size_t k = 0; k < r->n && k < 200; k++) {
        seen.items[k] = r->items[k];
        if (r->items[k].type == STORE_STR || r->items[k].type == STORE_ERR) {
            snprintf(seen.strs[k], sizeof seen.strs[k], "%.*s", (int)r->items[k].len,
                     r->items[k].s);
            seen.items[k].s = seen.strs[k];
        }
    }
}

static struct store st;
static struct node nd;

static struct store_call *new_call(void)
{
    struct store_call *c = calloc(1, sizeof *c);
    c->st = &st;
    c->node = &nd;
    c->cb = remember;
    c->where = CALL_SENT;
    return c;
}

/* on_reply as hiredis calls it, for a call sent on node ND. */
static void deliver(redisReply *r)
{
    redisAsyncContext ac;
    memset(&ac, 0, sizeof ac);
    ac.data = &nd;
    nd.ac = &ac;
    memset(&seen, 0, sizeof seen);
    owe(&nd, 1);
    on_reply(&ac, r, new_call());
    nd.ac = NULL;
}

TEST(nested_arrays_are_flattened_depth_first)
{
    redisReply *inner[] = { num(7), str("x") };
    redisReply *top[] = { str("a"), arr(2, inner), err("ERR one part") };
    redisReply *r = arr(3, top);
    deliver(r);
    CHECK_EQ_INT(seen.calls, 1);
    CHECK_EQ_INT(seen.status, STORE_OK);
    CHECK_EQ_INT(seen.n, 5);
    CHECK_EQ_STR(seen.items[0].s, "a");
    CHECK_EQ_INT(seen.items[1].type, STORE_ARRAY);
    CHECK_EQ_INT(seen.items[1].i, 2);
    CHECK_EQ_INT(seen.items[2].i, 7);
    CHECK_EQ_STR(seen.items[3].s, "x");
    CHECK_EQ_INT(seen.items[4].type, STORE_ERR);
    reply_free(r);
}

TEST(large_replies_are_not_cut)
{
    redisReply *items[150];
    for (int k = 0; k < 150; k++)
        items[k] = num(k);
    redisReply *r = arr(150, items);
    deliver(r);
    CHECK_EQ_INT(seen.n, 150);
    CHECK_EQ_INT(seen.items[149].i, 149);
    reply_free(r);
}

TEST(late_scripts_answer_as_timeouts)
{
    uint64_t before = st.stats.timeouts;
    redisReply *r = err("LATE");
    deliver(r);
    CHECK_EQ_INT(seen.status, STORE_TIMEOUT);
    CHECK_EQ_INT(st.stats.timeouts, before + 1);
    reply_free(r);
    r = err("LATER than you think");     /* only the word LATE */
    deliver(r);
    CHECK_EQ_INT(seen.status, STORE_ERROR);
    reply_free(r);
}

TEST(a_timed_out_call_never_sees_its_late_reply)
{
    struct store_call *c = new_call();
    redisAsyncContext ac;
    memset(&ac, 0, sizeof ac);
    ac.data = &nd;
    memset(&seen, 0, sizeof seen);
    owe(&nd, 1);
    on_call_timeout(-1, 0, c);            /* the caller is told TIMEOUT ... */
    CHECK_EQ_INT(seen.calls, 1);
    CHECK_EQ_INT(seen.status, STORE_TIMEOUT);
    redisReply *r = str("too late");
    on_reply(&ac, r, c);                  /* ... and the reply is dropped */
    CHECK_EQ_INT(seen.calls, 1);
    CHECK_EQ_INT(nd.abandoned, 0);
    reply_free(r);
}

TEST(resp_is_written_by_hand_and_bounded)
{
    const char *argv[] = { "EVALSHA", "abc", "1", "k" };
    size_t len[] = { 7, 3, 1, 1 };
    char out[128];
    size_t n = resp_format(out, sizeof out, 4, argv, len);
    const char *want = "*4\r\n$7\r\nEVALSHA\r\n$3\r\nabc\r\n$1\r\n1\r\n$1\r\nk\r\n";
    CHECK_EQ_INT(n, strlen(want));
    CHECK(memcmp(out, want, n) == 0);
    CHECK_EQ_INT(resp_format(out, 20, 4, argv, len), 0);
}

static redisReply *time_reply(int64_t sec, int64_t usec)
{
    char a[32], b[32];
    snprintf(a, sizeof a, "%lld", (long long)sec);
    snprintf(b, sizeof b, "%lld", (long long)usec);
    redisReply *items[] = { str(a), str(b) };
    return arr(2, items);
}

TEST(redis_clock_keeps_the_tightest_recent_sample)
{
    struct node n;
    memset(&n, 0, sizeof n);
    n.st = &st;
    int64_t mono = (int64_t)clock_now_us();
    /* Redis is 1000 s "ahead" of our monotonic clock; replies lag by up to an RTT. */
    int64_t ahead = 1000000000;
    redisReply *r = time_reply((mono + ahead - 5000) / 1000000, (mono + ahead - 5000) % 1000000);
    CHECK(note_clock(&n, r));
    reply_free(r);
    int64_t first = n.clock_offset_us;
    CHECK(first <= ahead && first > ahead - 100000);
    /* A slower sample (more lag) does not lower the estimate ... */
    mono = (int64_t)clock_now_us();
    r = time_reply((mono + ahead - 50000) / 1000000, (mono + ahead - 50000) % 1000000);
    note_clock(&n, r);
    reply_free(r);
    CHECK_EQ_INT(n.clock_offset_us, first);
    /* ... unless the kept one is old: then the new one is taken. */
    n.clock_sampled_us -= (CLOCK_KEEP_MS + 1) * 1000u;
    mono = (int64_t)clock_now_us();
    r = time_reply((mono + ahead - 50000) / 1000000, (mono + ahead - 50000) % 1000000);
    note_clock(&n, r);
    reply_free(r);
    CHECK(n.clock_offset_us < first);
    r = str("not a TIME reply");
    CHECK(!note_clock(&n, r));
    reply_free(r);
}

TEST(deadline_argument_is_early_by_the_margin)
{
    struct node n;
    memset(&n, 0, sizeof n);
    n.st = &st;
    n.clock_offset_us = 5000000;          /* Redis 5 s ahead */
    const char *argv[4];
    size_t len[4];
    struct store_call c;
    memset(&c, 0, sizeof c);
    c.argc = 4;
    c.argv = argv;
    c.argvlen = len;
    c.deadline_us = 10000000;             /* our 10 s */
    set_deadline(&n, &c);
    char got[32];
    snprintf(got, sizeof got, "%.*s", (int)len[3], argv[3]);
    /* timeout 250 ms: a margin of 50 ms; (10 s - 50 ms + 5 s) in ms */
    CHECK_EQ_STR(got, "14950");
}

TEST(extent_walks_nested_arrays)
{
    struct store_item it[] = {
        { .type = STORE_STR }, { .type = STORE_ARRAY, .i = 2 }, { .type = STORE_INT },
        { .type = STORE_ARRAY, .i = 1 }, { .type = STORE_INT }, { .type = STORE_INT },
    };
    CHECK_EQ_INT(extent(it, 6, 0), 1);
    CHECK_EQ_INT(extent(it, 6, 1), 4);
    CHECK_EQ_INT(extent(it, 6, 5), 1);
    CHECK_EQ_INT(extent(it, 4, 1), 0);          /* cut short */
}

TEST(an_element_of_a_reply_is_a_reply)
{
    struct store_item it[] = {
        { .type = STORE_STR, .s = "a", .len = 1 }, { .type = STORE_ARRAY, .i = 2 },
        { .type = STORE_STR, .s = "b", .len = 1 }, { .type = STORE_STR, .s = "c", .len = 1 },
        { .type = STORE_ERR, .s = "ERR x", .len = 5 },
    };
    struct store_reply r = { .status = STORE_OK, .n = 5, .items = it }, one;
    CHECK_EQ_INT(store_reply_element(&r, 0, &one), 1);
    CHECK(one.status == STORE_OK && one.n == 1 && one.items == &it[0]);
    CHECK_EQ_INT(store_reply_element(&r, 1, &one), 3);
    CHECK(one.status == STORE_OK && one.n == 2 && one.items == &it[2]);
    CHECK_EQ_INT(store_reply_element(&r, 4, &one), 1);
    CHECK(one.status == STORE_ERROR && strcmp(one.error, "ERR x") == 0);
    CHECK_EQ_INT(store_reply_element(&r, 5, &one), 0);
}

int main(void)
{
    st.cfg.timeout_ms = 250;
    nd.st = &st;
    RUN(nested_arrays_are_flattened_depth_first);
    RUN(extent_walks_nested_arrays);
    RUN(an_element_of_a_reply_is_a_reply);
    RUN(large_replies_are_not_cut);
    RUN(late_scripts_answer_as_timeouts);
    RUN(a_timed_out_call_never_sees_its_late_reply);
    RUN(resp_is_written_by_hand_and_bounded);
    RUN(redis_clock_keeps_the_tightest_recent_sample);
    RUN(deadline_argument_is_early_by_the_margin);
    return unit_done("test_store");
}

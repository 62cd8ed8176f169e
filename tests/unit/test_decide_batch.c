/* Unit tests: a batch's reply shared out among its decisions, and the time
 * a batch that waited may still take (src/decide_batch.c, included for its
 * static functions). */
#include "../../src/decide_batch.c"

#include "unit.h"

static struct {
    int calls;
    enum store_status status;
    size_t n;
    enum { T_NONE, T_STR, T_INT } first;
    char text[32];
} seen[DECIDE_BATCH_MAX];

static void remember(void *arg, const struct store_reply *r)
{
    int k = (int)(intptr_t)arg;
    seen[k].calls++;
    seen[k].status = r->status;
    seen[k].n = r->n;
    seen[k].first = T_NONE;
    if (r->status == STORE_OK && r->n > 0 && r->items[0].type == STORE_STR) {
        seen[k].first = T_STR;
        snprintf(seen[k].text, sizeof seen[k].text, "%.*s", (int)r->items[0].len, r->items[0].s);
    } else if (r->status == STORE_OK && r->n > 0 && r->items[0].type == STORE_INT) {
        seen[k].first = T_INT;
    } else if (r->error) {
        snprintf(seen[k].text, sizeof seen[k].text, "%s", r->error);
    }
}

static struct decide_batch *b;
static struct store *none;

/* decide_batch's ON_LATE hook: which decisions came back late, with what. */
static struct { int calls; char undo[DECIDE_BATCH_UNDO_MAX]; char text[32]; } late[DECIDE_BATCH_MAX];
static int n_late;

static void late_hook(void *arg, const char *undo, const struct store_reply *one)
{
    (void)arg;
    late[n_late].calls++;
    snprintf(late[n_late].undo, sizeof late[n_late].undo, "%s", undo);
    if (one->n > 0 && one->items[0].type == STORE_STR)
        snprintf(late[n_late].text, sizeof late[n_late].text, "%.*s", (int)one->items[0].len,
                 one->items[0].s);
    n_late++;
}

/* A batch of N decisions, as decide_batch_add leaves it. */
static struct batch *batch_of(size_t n)
{
    struct batch *bt = batch_get(b);
    for (size_t k = 0; k < n; k++) {
        bt->p[k] = (struct pending){ .cb = remember, .arg = (void *)(intptr_t)k };
        if (k != 1)                 /* the second has nothing to undo (a dry run) */
            snprintf(bt->p[k].undo, sizeof bt->p[k].undo, "u%zu m%zu", k, k);
        bt->n++;
        b->waiting++;
    }
    b->in_flight++;                 /* as if it had gone out */
    memset(seen, 0, sizeof seen);
    return bt;
}

TEST(each_decision_gets_its_own_answer)
{
    struct batch *bt = batch_of(3);
    struct store_item it[] = {
        { .type = STORE_STR, .s = "first", .len = 5 },
        { .type = STORE_ERR, .s = "ERR one failed", .len = 14 },
        { .type = STORE_ARRAY, .i = 2 }, { .type = STORE_INT, .i = 1 }, { .type = STORE_INT },
    };
    struct store_reply r = { .status = STORE_OK, .n = 5, .items = it };
    on_batch_reply(bt, &r);
    on_call_done(bt, NULL);         /* as the store does once it is done with the call */
    CHECK_EQ_INT(n_late, 0);
    CHECK_EQ_INT(seen[0].calls, 1);
    CHECK_EQ_STR(seen[0].text, "first");
    CHECK_EQ_INT(seen[1].status, STORE_ERROR);     /* it fails alone */
    CHECK_EQ_STR(seen[1].text, "ERR one failed");
    CHECK_EQ_INT(seen[2].status, STORE_OK);
    CHECK_EQ_INT(seen[2].n, 2);
    CHECK_EQ_INT(seen[2].first, T_INT);
    CHECK_EQ_INT(b->waiting, 0);
    CHECK_EQ_INT(b->in_flight, 0);
}

TEST(a_short_reply_fails_the_ones_it_lacks)
{
    struct batch *bt = batch_of(2);
    struct store_item it[] = { { .type = STORE_STR, .s = "only", .len = 4 } };
    struct store_reply r = { .status = STORE_OK, .n = 1, .items = it };
    on_batch_reply(bt, &r);
    on_call_done(bt, NULL);
    CHECK_EQ_INT(seen[0].status, STORE_OK);
    CHECK_EQ_INT(seen[1].status, STORE_ERROR);
    CHECK_EQ_STR(seen[1].text, "bad batch reply");
}

TEST(a_timed_out_call_fails_all_and_marks_redis_late)
{
    struct batch *bt = batch_of(4);
    struct store_reply r = { .status = STORE_TIMEOUT, .error = "timeout" };
    on_batch_reply(bt, &r);
    for (int k = 0; k < 4; k++) {
        CHECK_EQ_INT(seen[k].calls, 1);
        CHECK_EQ_INT(seen[k].status, STORE_TIMEOUT);
    }
    CHECK(b->redis_late);
    /* Then Redis's answer comes all the same: each decision that has
     * something to undo is handed its own element; the second has none. */
    struct store_item li[] = {
        { .type = STORE_STR, .s = "a0", .len = 2 }, { .type = STORE_STR, .s = "a1", .len = 2 },
        { .type = STORE_STR, .s = "a2", .len = 2 }, { .type = STORE_STR, .s = "a3", .len = 2 },
    };
    struct store_reply lr = { .status = STORE_OK, .n = 4, .items = li };
    n_late = 0;
    on_call_done(bt, &lr);
    CHECK_EQ_INT(n_late, 3);
    CHECK_EQ_STR(late[0].undo, "u0 m0");
    CHECK_EQ_STR(late[0].text, "a0");
    CHECK_EQ_STR(late[1].undo, "u2 m2");
    CHECK_EQ_STR(late[1].text, "a2");
    CHECK_EQ_STR(late[2].text, "a3");
    /* An answered call clears it: a wait after that was capgate's own. */
    bt = batch_of(1);
    struct store_item it[] = { { .type = STORE_INT } };
    struct store_reply ok = { .status = STORE_OK, .n = 1, .items = it };
    on_single_reply(bt, &ok);
    on_call_done(bt, NULL);
    CHECK(!b->redis_late);
}

TEST(nothing_is_taken_without_a_ready_store)
{
    struct script_args a;
    memset(&a, 0, sizeof a);
    a.nkeys = KEYS_PER;
    a.argc = PER;
    CHECK_EQ_INT(decide_batch_add(b, &a, 100, NULL, remember, NULL), -1);
}

int main(void)
{
    struct event_base *base = event_base_new();
    b = decide_batch_new(base, &none, late_hook, NULL);
    RUN(each_decision_gets_its_own_answer);
    RUN(a_short_reply_fails_the_ones_it_lacks);
    RUN(a_timed_out_call_fails_all_and_marks_redis_late);
    RUN(nothing_is_taken_without_a_ready_store);
    decide_batch_free(b);
    event_base_free(base);
    return unit_done("test_decide_batch");
}

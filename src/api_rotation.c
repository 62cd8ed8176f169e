/*
 * api_rotation: a pseudonym key rotation's progress (privacy.previous_key_file).
 *
 * POST /v1/admin/rotation/mark  marks what Redis holds now as "under the old key"
 *                          (once, right after the gateways restart with the new
 *                          key; see capgate.yaml(5)) and answers the count
 * GET  /v1/admin/rotation  how much of that has not moved yet
 *
 * Both ask every hash tag (rotate.lua, one call per tag, each on its slot).
 */
#include <stdbool.h>
#include <stdlib.h>

#include "capgate/api.h"
#include "capgate/decision.h"
#include "capgate/loop.h"
#include "capgate/pseudonym.h"
#include "capgate/reply.h"
#include "capgate/store.h"

struct rotation_call {
    struct loop *loop;
    struct http_request *req;
    unsigned pending;
    bool failed, mark;
    long long left;
};

static void finish(struct rotation_call *c)
{
    if (c->failed)
        reply_error(c->loop, c->req, API_STORE_UNAVAILABLE, NULL,
                    "the store is unavailable; retry later");
    else
        reply_json(c->loop, c->req, 200,
                   json_pack("{s:b, s:I, s:b}", "rotating", pseudonym_rotating(c->loop->pseudonym),
                             "left_under_previous_key", (json_int_t)c->left, "done",
                             c->left == 0));
    free(c);
}

static void on_tag(void *arg, const struct store_reply *r)
{
    struct rotation_call *c = arg;
    if (r->status != STORE_OK || r->n != 1 || r->items[0].type != STORE_INT)
        c->failed = true;
    else
        c->left += r->items[0].i;
    if (--c->pending == 0)
        finish(c);
}

static void ask(struct loop *l, struct http_request *req, bool mark)
{
    if (mark && !pseudonym_rotating(l->pseudonym)) {
        /* Marking without a previous key would count the current key's
         * records as old, for good. */
        reply_error(l, req, API_INVALID_FIELD, "privacy.previous_key_file",
                    "no key rotation is under way (privacy.previous_key_file is not set)");
        return;
    }
    struct rotation_call *c = calloc(1, sizeof *c);
    if (!c) {
        reply_error(l, req, API_INTERNAL, NULL, "out of memory");
        return;
    }
    c->loop = l;
    c->req = req;
    c->mark = mark;
    c->pending = 1;
    for (unsigned tag = 0; tag < DECISION_TAGS; tag++) {
        struct script_args a;
        decision_rotate_args(l->cfg, mark ? "mark" : "report", NULL, tag, NULL, NULL, &a);
        c->pending++;
        if (!l->store ||
            store_eval(l->store, a.script, a.nkeys, a.argc, a.argv, a.argvlen, on_tag, c) != 0) {
            c->pending--;
            c->failed = true;
            break;
        }
    }
    if (--c->pending == 0)
        finish(c);
}

void api_rotation_report(struct loop *l, struct http_request *req)
{
    ask(l, req, false);
}

void api_rotation_mark(struct loop *l, struct http_request *req)
{
    ask(l, req, true);
}

/* campaigns: the campaign names' dictionary.  See campaigns.h. */
#include "capgate/campaigns.h"

#include <event2/event.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capgate/decision.h"
#include "capgate/log.h"
#include "capgate/loop.h"
#include "capgate/reply.h"
#include "capgate/requests.h"
#include "capgate/store.h"

#define FLUSH_MS 1000
#define SEEN_SLOTS 8192           /* ids this loop wrote (open addressing; cleared when 3/4 full) */
#define PENDING_MAX 512           /* names waiting for the next flush */
#define PAIRS_PER_CALL 14         /* SCRIPT_ARGS_MAX: "put", max, 14 pairs and the deadline */
#define IDS_PER_CALL 28
#define FILL_MAX 256              /* distinct campaigns one answer names */

struct pending_name {
    unsigned id;
    char hex[12];
    char name[REQ_CAMPAIGN_MAX + 1];
};

struct campaign_names {
    struct loop *loop;
    struct event *flush;
    uint32_t seen[SEEN_SLOTS];
    size_t n_seen;
    struct pending_name pending[PENDING_MAX];
    size_t n_pending;
    unsigned calls;               /* in flight: the struct outlives free until they end */
    bool freeing;
};

static void maybe_free(struct campaign_names *n)
{
    if (n->freeing && n->calls == 0)
        free(n);
}

static bool seen(const struct campaign_names *n, uint32_t id, size_t *slot)
{
    size_t k = (id * 2654435761u) % SEEN_SLOTS;
    while (n->seen[k] && n->seen[k] != id)
        k = (k + 1) % SEEN_SLOTS;
    *slot = k;
    return n->seen[k] == id;
}

void campaign_names_note(struct campaign_names *n, const char *campaign)
{
    if (!n || !campaign || !*campaign || strlen(campaign) > REQ_CAMPAIGN_MAX)
        return;
    uint32_t id = decision_campaign_id(campaign);
    size_t slot;
    if (seen(n, id, &slot) || n->n_pending == PENDING_MAX)
        return;                   /* written, or noted again by a later decision */
    if (n->n_seen >= SEEN_SLOTS * 3 / 4) {
        memset(n->seen, 0, sizeof n->seen);   /* a few names are written again: HSETNX */
        n->n_seen = 0;
        seen(n, id, &slot);
    }
    n->seen[slot] = id;
    n->n_seen++;
    struct pending_name *p = &n->pending[n->n_pending++];
    p->id = id;
    snprintf(p->hex, sizeof p->hex, "%06x", id & 0xffffffu);
    snprintf(p->name, sizeof p->name, "%s", campaign);
}

static void on_put(void *arg, const struct store_reply *r)
{
    struct campaign_names *n = arg;
    n->calls--;
    if (!n->freeing && r->status != STORE_OK) {
        /* Not written: let every name be noted afresh (rare; HSETNX makes
         * writing one twice harmless). */
        memset(n->seen, 0, sizeof n->seen);
        n->n_seen = 0;
        if (r->status == STORE_ERROR)
            log_error_limited("redis script error", "script=names error=%s", r->error);
    }
    maybe_free(n);
}

static void on_flush(evutil_socket_t fd, short what, void *arg)
{
    struct campaign_names *n = arg;
    struct store *st = n->loop->store;
    (void)fd; (void)what;
    if (n->n_pending == 0 || !st || !store_ready(st))
        return;                   /* they wait for Redis */
    char most[16];
    snprintf(most, sizeof most, "%d", CAMPAIGN_NAMES_MAX);
    for (size_t at = 0; at < n->n_pending; at += PAIRS_PER_CALL) {
        const char *argv[2 + 2 * PAIRS_PER_CALL] = { "put", most };
        size_t argc = 2;
        for (size_t k = at; k < n->n_pending && k < at + PAIRS_PER_CALL; k++) {
            argv[argc++] = n->pending[k].hex;
            argv[argc++] = n->pending[k].name;
        }
        struct script_args a;
        decision_names_args(argc, argv, &a);
        n->calls++;
        if (store_eval(st, a.script, a.nkeys, a.argc, a.argv, a.argvlen, on_put, n) != 0) {
            struct store_reply fail = { .status = STORE_UNAVAILABLE };
            on_put(n, &fail);
        }
    }
    n->n_pending = 0;
}

struct campaign_names *campaign_names_new(struct loop *l)
{
    struct campaign_names *n = calloc(1, sizeof *n);
    if (!n)
        return NULL;
    n->loop = l;
    n->flush = event_new(l->base, -1, EV_PERSIST, on_flush, n);
    struct timeval tv = { FLUSH_MS / 1000, (FLUSH_MS % 1000) * 1000 };
    if (!n->flush || event_add(n->flush, &tv) != 0) {
        if (n->flush)
            event_free(n->flush);
        free(n);
        return NULL;
    }
    return n;
}

void campaign_names_free(struct campaign_names *n)
{
    if (!n)
        return;
    event_free(n->flush);
    n->freeing = true;
    maybe_free(n);
}

/* ---- naming an answer ----------------------------------------------------- */

struct fill {
    struct loop *loop;
    struct http_request *req;
    json_t *body;
    char **headers;               /* NULL-terminated copy */
    char ids[FILL_MAX][8];
    char *names[FILL_MAX];
    size_t n_ids, pending;
};

struct fill_call {
    struct fill *f;
    size_t first, n;
};

static bool is_id(const char *s)
{
    if (!s || s[0] != '#' || strlen(s) != 7)
        return false;
    return strspn(s + 1, "0123456789abcdef") == 6;
}

/* Each "campaign": "#xxxxxx" in V: collected (NAMES NULL), or renamed. */
static void walk(struct fill *f, json_t *v, bool rename)
{
    const char *key;
    json_t *x;
    size_t i;
    if (json_is_object(v)) {
        json_object_foreach(v, key, x) {
            const char *s = json_string_value(x);
            if (strcmp(key, "campaign") == 0 && is_id(s)) {
                size_t k = 0;
                while (k < f->n_ids && strcmp(f->ids[k], s + 1) != 0)
                    k++;
                if (!rename && k == f->n_ids && f->n_ids < FILL_MAX)
                    snprintf(f->ids[f->n_ids++], sizeof f->ids[0], "%s", s + 1);
                else if (rename && k < f->n_ids && f->names[k])
                    json_object_set_new(v, key, json_string(f->names[k]));
            } else {
                walk(f, x, rename);
            }
        }
    } else if (json_is_array(v)) {
        json_array_foreach(v, i, x)
            walk(f, x, rename);
    }
}

static void fill_done(struct fill *f)
{
    if (--f->pending > 0)
        return;
    walk(f, f->body, true);
    reply_json_headers(f->loop, f->req, 200, f->body, (const char *const *)f->headers);
    for (size_t k = 0; f->headers && f->headers[k]; k++)
        free(f->headers[k]);
    free(f->headers);
    for (size_t k = 0; k < f->n_ids; k++)
        free(f->names[k]);
    free(f);
}

static void on_got(void *arg, const struct store_reply *r)
{
    struct fill_call *c = arg;
    struct fill *f = c->f;
    if (r->status == STORE_OK)
        for (size_t k = 0; k < c->n && k < r->n; k++)
            if (r->items[k].type == STORE_STR && r->items[k].len <= REQ_CAMPAIGN_MAX)
                f->names[c->first + k] = strndup(r->items[k].s, r->items[k].len);
    free(c);
    fill_done(f);
}

void campaign_names_reply(struct loop *l, struct http_request *req, json_t *body,
                          const char *const *headers)
{
    struct fill *f = calloc(1, sizeof *f);
    size_t nh = 0;
    while (headers && headers[nh])
        nh++;
    if (f && nh && (f->headers = calloc(nh + 1, sizeof *f->headers)))
        for (size_t k = 0; k < nh; k++)
            f->headers[k] = strdup(headers[k]);
    if (!f || (nh && !f->headers)) {
        free(f);
        reply_json_headers(l, req, 200, body, headers);
        return;
    }
    *f = (struct fill){ .loop = l, .req = req, .body = body, .headers = f->headers,
                        .pending = 1 };
    walk(f, body, false);
    struct store *st = l->store;
    for (size_t at = 0; st && store_ready(st) && at < f->n_ids; at += IDS_PER_CALL) {
        struct fill_call *c = malloc(sizeof *c);
        if (!c)
            break;
        *c = (struct fill_call){ .f = f, .first = at,
                                 .n = f->n_ids - at < IDS_PER_CALL ? f->n_ids - at : IDS_PER_CALL };
        const char *argv[1 + IDS_PER_CALL] = { "get" };
        for (size_t k = 0; k < c->n; k++)
            argv[1 + k] = f->ids[at + k];
        struct script_args a;
        decision_names_args(1 + c->n, argv, &a);
        f->pending++;
        if (store_eval(st, a.script, a.nkeys, a.argc, a.argv, a.argvlen, on_got, c) != 0) {
            struct store_reply fail = { .status = STORE_UNAVAILABLE };
            on_got(c, &fail);
        }
    }
    fill_done(f);
}

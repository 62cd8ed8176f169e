/*
 * api_audit: GET /v1/audit?since=...&limit=... -- pages through the audit
 * trail.  Entries live in one stream per hash tag (so that a decision and
 * its entry are one atomic script on one slot); a page asks every tag for
 * its first LIMIT entries after SINCE and merges them by id.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "capgate/api.h"
#include "capgate/audit_entry.h"
#include "capgate/clock.h"
#include "capgate/decision.h"
#include "capgate/http.h"
#include "capgate/reply.h"
#include "capgate/store.h"
#include "capgate/loop.h"

#define LIMIT_DEFAULT 100
#define LIMIT_MAX 1000

struct entry {
    uint64_t ms, seq;
    json_t *obj;
};

struct page_call {
    struct loop *loop;
    struct http_request *req;
    unsigned pending;
    bool failed;
    bool maybe_more;      /* a tag returned a full page */
    unsigned limit;
    struct entry *entries;
    size_t n, cap;
};

static int by_id(const void *a, const void *b)
{
    const struct entry *x = a, *y = b;
    if (x->ms != y->ms)
        return x->ms < y->ms ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static void finish(struct page_call *call)
{
    if (call->failed) {
        reply_error(call->loop, call->req, API_STORE_UNAVAILABLE, NULL,
                    "the store is unavailable; retry later");
    } else {
        if (call->n)
            qsort(call->entries, call->n, sizeof *call->entries, by_id);
        /* Take LIMIT, plus any entry sharing the last id (another tag's
         * stream may hold the same id: the next page starts after it). */
        size_t take = call->n < call->limit ? call->n : call->limit;
        while (take > 0 && take < call->n &&
               by_id(&call->entries[take], &call->entries[take - 1]) == 0)
            take++;
        json_t *list = json_array();
        for (size_t k = 0; k < take; k++) {
            json_array_append(list, call->entries[k].obj);
        }
        json_t *next = json_null();
        if (take > 0 && (take < call->n || call->maybe_more)) {
            char id[48];
            snprintf(id, sizeof id, "%llu-%llu", (unsigned long long)call->entries[take - 1].ms,
                     (unsigned long long)call->entries[take - 1].seq);
            next = json_string(id);
        }
        reply_json(call->loop, call->req, 200, json_pack("{s:o, s:o}", "entries", list, "next", next));
    }
    for (size_t k = 0; k < call->n; k++)
        json_decref(call->entries[k].obj);
    free(call->entries);
    free(call);
}

static void on_page(void *arg, const struct store_reply *r)
{
    struct page_call *call = arg;
    if (r->status != STORE_OK || r->n < 1 || r->items[0].type != STORE_INT) {
        call->failed = true;
    } else {
        size_t pos = 1;
        if (r->items[0].i >= (long long)call->limit)
            call->maybe_more = true;
        for (long long e = 0; e < r->items[0].i && pos + 2 <= r->n; e++) {
            const struct store_item *id = &r->items[pos++];
            long long nf = r->items[pos++].i;
            char idbuf[48];
            snprintf(idbuf, sizeof idbuf, "%.*s", (int)id->len, id->s);
            unsigned long long ms = 0, seq = 0;
            sscanf(idbuf, "%llu-%llu", &ms, &seq);
            char at[32];
            clock_format_rfc3339(at, sizeof at, (time_t)(ms / 1000));
            json_t *o = json_pack("{s:s, s:s}", "id", idbuf, "at", at);
            if (nf < 0 || (size_t)nf > (r->n - pos) / 2)
                nf = (long long)((r->n - pos) / 2);
            audit_entry_fields(o, &r->items[pos], (size_t)nf, false);
            pos += 2 * (size_t)nf;
            if (call->n == call->cap) {
                size_t cap = call->cap ? call->cap * 2 : 256;
                struct entry *p = realloc(call->entries, cap * sizeof *p);
                if (!p) {
                    json_decref(o);
                    call->failed = true;
                    break;
                }
                call->entries = p;
                call->cap = cap;
            }
            call->entries[call->n++] = (struct entry){ ms, seq, o };
        }
    }
    if (--call->pending == 0)
        finish(call);
}

/* SINCE: a stream id ("1700000000000-3"), Unix ms, or RFC 3339 UTC. */
static bool parse_since(const char *s, char out[48])
{
    unsigned long long ms, seq;
    struct tm tm;
    char tail;
    if (!s || !*s) {
        snprintf(out, 48, "0-0");
        return true;
    }
    if (sscanf(s, "%llu-%llu%c", &ms, &seq, &tail) == 2) {
        snprintf(out, 48, "%llu-%llu", ms, seq);
        return true;
    }
    if (sscanf(s, "%llu%c", &ms, &tail) == 1) {
        snprintf(out, 48, "%llu-18446744073709551615", ms > 0 ? ms - 1 : 0);
        return true;
    }
    memset(&tm, 0, sizeof tm);
    const char *end = strptime(s, "%Y-%m-%dT%H:%M:%SZ", &tm);
    if (end && *end == '\0') {
        long long t = (long long)timegm(&tm) * 1000;
        snprintf(out, 48, "%lld-18446744073709551615", t > 0 ? t - 1 : 0);
        return true;
    }
    return false;
}

void api_audit(struct loop *l, struct http_request *req)
{
    char since[48];
    const char *limit_s = http_query(req, "limit");
    long limit = LIMIT_DEFAULT;
    char *end;

    if (!parse_since(http_query(req, "since"), since)) {
        reply_error(l, req, API_INVALID_FIELD, "since",
                    "since must be an audit id, Unix milliseconds or an RFC 3339 UTC time");
        return;
    }
    if (limit_s) {
        limit = strtol(limit_s, &end, 10);
        if (*end || limit < 1 || limit > LIMIT_MAX) {
            reply_error(l, req, API_INVALID_FIELD, "limit", "limit must be 1 to %d", LIMIT_MAX);
            return;
        }
    }
    struct page_call *call = calloc(1, sizeof *call);
    if (!call) {
        reply_error(l, req, API_INTERNAL, NULL, "out of memory");
        return;
    }
    call->loop = l;
    call->req = req;
    call->limit = (unsigned)limit;
    call->pending = 1;   /* held until every call is sent */
    for (unsigned tag = 0; tag < DECISION_TAGS; tag++) {
        struct script_args args;
        decision_audit_page_args(tag, since, call->limit, &args);
        call->pending++;
        if (store_eval(l->store, args.script, args.nkeys, args.argc, args.argv, args.argvlen,
                       on_page, call) != 0) {
            call->pending--;
            call->failed = true;
            break;
        }
    }
    if (--call->pending == 0)
        finish(call);
}

/* ---- GET /v1/admin/dead-letters?limit=N ------------------------------------ */

struct dead_call {
    struct loop *loop;
    struct http_request *req;
    unsigned pending, limit;
    bool failed;
    json_t *all;
};

static int by_at_desc(const void *a, const void *b)
{
    json_int_t x = json_integer_value(json_object_get(*(json_t *const *)a, "at"));
    json_int_t y = json_integer_value(json_object_get(*(json_t *const *)b, "at"));
    return x < y ? 1 : x > y ? -1 : 0;
}

static void dead_finish(struct dead_call *c)
{
    if (c->failed) {
        reply_error(c->loop, c->req, API_STORE_UNAVAILABLE, NULL, "the store is unavailable; retry later");
    } else {
        size_t n = json_array_size(c->all);
        json_t **items = calloc(n ? n : 1, sizeof *items);
        for (size_t k = 0; items && k < n; k++)
            items[k] = json_array_get(c->all, k);
        if (items && n)
            qsort(items, n, sizeof *items, by_at_desc);
        json_t *list = json_array();
        for (size_t k = 0; items && k < n && k < c->limit; k++)
            json_array_append(list, items[k]);
        free(items);
        reply_json(c->loop, c->req, 200, json_pack("{s:o, s:I}", "dead_letters", list,
                                                "total_seen", (json_int_t)n));
    }
    json_decref(c->all);
    free(c);
}

static void on_dead(void *arg, const struct store_reply *r)
{
    struct dead_call *c = arg;
    if (r->status != STORE_OK) {
        c->failed = true;
    } else {
        for (size_t k = 0; k < r->n; k++) {
            if (r->items[k].type != STORE_STR)
                continue;
            json_t *o = json_loadb(r->items[k].s, r->items[k].len, 0, NULL);
            if (o)
                json_array_append_new(c->all, o);
        }
    }
    if (--c->pending == 0)
        dead_finish(c);
}

void api_dead_letters(struct loop *l, struct http_request *req)
{
    const char *limit_s = http_query(req, "limit");
    long limit = LIMIT_DEFAULT;
    char *end;
    if (limit_s) {
        limit = strtol(limit_s, &end, 10);
        if (*end || limit < 1 || limit > LIMIT_MAX) {
            reply_error(l, req, API_INVALID_FIELD, "limit", "limit must be 1 to %d", LIMIT_MAX);
            return;
        }
    }
    struct dead_call *c = calloc(1, sizeof *c);
    if (!c || !(c->all = json_array())) {
        free(c);
        reply_error(l, req, API_INTERNAL, NULL, "out of memory");
        return;
    }
    c->loop = l;
    c->req = req;
    c->limit = (unsigned)limit;
    c->pending = 1;
    for (unsigned tag = 0; tag < DECISION_TAGS; tag++) {
        struct script_args a;
        decision_dead_list_args(tag, c->limit, &a);
        c->pending++;
        if (store_eval(l->store, a.script, a.nkeys, a.argc, a.argv, a.argvlen, on_dead, c) != 0) {
            c->pending--;
            c->failed = true;
            break;
        }
    }
    if (--c->pending == 0)
        dead_finish(c);
}

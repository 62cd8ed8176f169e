/* delivery: message blobs and forwarding.  See delivery.h. */
#include "capgate/delivery.h"

#include "capgate/clock.h"
#include "capgate/decision.h"
#include "capgate/pseudonym.h"
#include "capgate/requests.h"
#include "capgate/textbuf.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

bool delivery_hop_by_hop(const char *name)
{
    static const char *const skip[] = {
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
        "trailer", "transfer-encoding", "upgrade", "host", "content-length", "expect",
        "x-capgate-token",
    };
    /* Asked for every header of every request and answer: the length and
     * the first letter rule out nearly every name before strcasecmp. */
    size_t n = strlen(name);
    char first = (char)(name[0] | 0x20);
    for (size_t k = 0; k < sizeof skip / sizeof skip[0]; k++)
        if (skip[k][0] == first && strlen(skip[k]) == n && strcasecmp(name, skip[k]) == 0)
            return true;
    return false;
}

/*
 * A blob is the whole message sealed (XChaCha20-Poly1305): its description
 * as compact JSON, a NUL, then the body's bytes.  Payloads, bodies and a
 * route's headers name the recipient, and nothing readable may name a
 * person in Redis, its AOF or a backup.  Version 3 (the byte 0x03, then the
 * sealed box) is what is written; the older versions are still read, so a
 * queue written by an older capgate drains after an upgrade: version 2 was
 * the same box in base64 (a third of the sealing's instructions, and a
 * third more room), version 1 plain JSON with only the headers sealed.
 */
#define BLOB_V3 '\x03'

/* One [NAME, VALUE] pair of a JSON array of headers, a comma before all but
 * the first (*FIRST). */
static void put_header_pair(struct textbuf *t, bool *first, const char *name, const char *value)
{
    textbuf_puts(t, *first ? "[" : ",[");
    *first = false;
    textbuf_json_string(t, name);
    textbuf_puts(t, ",");
    textbuf_json_string(t, value);
    textbuf_puts(t, "]");
}

/* The description is written directly: its values are pseudonyms (hex),
 * configured names and the sender's message_id, campaign and tz, which are
 * escaped; jansson here cost as much as the sealing. */
char *delivery_blob(const struct message *m, const struct pseudonym *seal, size_t *len)
{
    struct textbuf t = { 0 };
    const char *const fields[][2] = {
        { "\"u\":", m->user }, { ",\"m\":", m->message }, { ",\"mid\":", m->message_id },
        { ",\"ch\":", m->channel }, { ",\"cat\":", m->category },
        { ",\"camp\":", m->campaign }, { ",\"tz\":", m->tz },
    };
    textbuf_puts(&t, m->route ? "{\"v\":3,\"route\":true," : "{\"v\":3,\"route\":false,");
    for (size_t k = 0; k < sizeof fields / sizeof fields[0]; k++) {
        if (!fields[k][1])
            continue;                    /* campaign, tz: absent */
        textbuf_puts(&t, fields[k][0]);
        textbuf_json_string(&t, fields[k][1]);
    }
    if (m->route) {
        textbuf_puts(&t, ",\"method\":");
        textbuf_json_string(&t, m->method);
        textbuf_puts(&t, ",\"query\":");
        textbuf_json_string(&t, m->query ? m->query : "");
        /* The request's headers, [[name, value], ...] (json_dumps of them
         * was half of a route's blob). */
        textbuf_puts(&t, ",\"h\":[");
        size_t k;
        json_t *pair;
        bool first = true;
        json_array_foreach(m->headers, k, pair) {
            const char *name = json_string_value(json_array_get(pair, 0));
            const char *value = json_string_value(json_array_get(pair, 1));
            if (name && value)
                put_header_pair(&t, &first, name, value);
        }
        textbuf_puts(&t, "]");
    }
    textbuf_put(&t, "}", 2);             /* with its NUL: the separator */
    textbuf_put(&t, m->body, m->body_len);
    char *sealed = NULL;
    if (!t.failed)
        sealed = pseudonym_seal_bytes(seal, (char[]){ BLOB_V3 }, 1, t.buf, t.len, len);
    if (t.buf) {
        sodium_memzero(t.buf, t.len);
        free(t.buf);
    }
    return sealed;
}

/* A version 1 blob: JSON, the body in base64, the headers sealed in "hx". */
static int parse_v1(const char *blob, size_t len, struct message *m,
                    const struct pseudonym *seal)
{
    const char *b64 = NULL, *hx = NULL;
    int route = 0;
    m->root = json_loadb(blob, len, 0, NULL);
    if (!m->root ||
        json_unpack(m->root, "{s:b, s:s, s:s, s:s, s:s, s:s, s:s, s?s, s?s, s?s, s?s, s?s}",
                    "route", &route, "u", &m->user, "m", &m->message, "mid", &m->message_id,
                    "ch", &m->channel, "cat", &m->category, "body", &b64, "camp", &m->campaign,
                    "tz", &m->tz, "method", &m->method, "query", &m->query,
                    "hx", &hx) != 0)
        return -1;
    m->route = route;
    if (hx) {
        size_t hl;
        char *h = pseudonym_open(seal, hx, strlen(hx), &hl);
        m->headers = h ? json_loadb(h, hl, 0, NULL) : NULL;
        free(h);
        if (!m->headers)
            return -1;
    }
    size_t cap = strlen(b64);
    m->body = malloc(cap + 1);
    if (!m->body || sodium_base642bin((unsigned char *)m->body, cap, b64, cap, NULL,
                                      &m->body_len, NULL, sodium_base64_VARIANT_ORIGINAL) != 0)
        return -1;
    m->body[m->body_len] = '\0';
    return 0;
}

/* Versions 2 and 3: the opened description, a NUL, the body. */
static int parse_sealed(const char *blob, size_t len, struct message *m,
                        const struct pseudonym *seal)
{
    size_t plen;
    char *plain = blob[0] == BLOB_V3 ? pseudonym_open_bytes(seal, blob + 1, len - 1, &plen)
                                     : pseudonym_open(seal, blob, len, &plen);
    if (!plain)
        return -1;
    size_t mlen = strnlen(plain, plen);
    int route = 0;
    json_t *h = NULL;
    if (mlen < plen)
        m->root = json_loadb(plain, mlen, 0, NULL);
    if (!m->root ||
        json_unpack(m->root, "{s:b, s:s, s:s, s:s, s:s, s:s, s?s, s?s, s?s, s?s, s?o}",
                    "route", &route, "u", &m->user, "m", &m->message, "mid", &m->message_id,
                    "ch", &m->channel, "cat", &m->category, "camp", &m->campaign,
                    "tz", &m->tz, "method", &m->method, "query", &m->query, "h", &h) != 0 ||
        (h && !json_is_array(h)) || !(m->body = malloc(plen - mlen))) {
        sodium_memzero(plain, plen);
        free(plain);
        return -1;
    }
    m->route = route;
    if (route)
        m->headers = h ? json_incref(h) : json_array();
    m->body_len = plen - mlen - 1;
    memcpy(m->body, plain + mlen + 1, m->body_len);
    m->body[m->body_len] = '\0';
    sodium_memzero(plain, plen);
    free(plain);
    return 0;
}

int delivery_parse(const char *blob, size_t len, struct message *m,
                   const struct pseudonym *seal)
{
    memset(m, 0, sizeof *m);
    if (len == 0)
        return -1;
    int rc = blob[0] == '{' ? parse_v1(blob, len, m, seal) : parse_sealed(blob, len, m, seal);
    if (rc != 0 || (m->route && !m->headers)) {
        delivery_clear(m);
        return -1;
    }
    if (!m->method)
        m->method = "POST";
    return 0;
}

void delivery_clear(struct message *m)
{
    free(m->body);
    json_decref(m->headers);
    json_decref(m->root);
    memset(m, 0, sizeof *m);
}

/* ---- the loop's pools: one per channel ------------------------------------ */

#define POOLS_MAX 32

struct delivery_pools {
    struct event_base *base;
    unsigned n_loops;
    /* Each upstream gets its own max_connections; a pool whose limit a
     * reload changed is retired and freed once idle. */
    struct channel_pool {
        char channel[CONFIG_NAME_MAX + 1];
        unsigned limit;
        struct upstream_pool *pool;
    } pools[POOLS_MAX], retired[POOLS_MAX];
    size_t n_pools, n_retired;
    /* Pushback-only upstreams (shape_pushback_only): until when this loop
     * takes the last "open" it heard from Redis as still true. */
    struct open_upstream {
        char channel[CONFIG_NAME_MAX + 1];
        uint64_t until_us;
    } open[POOLS_MAX];
    size_t n_open;
};

/* How long a loop forwards to a pushback-only upstream on the word of its
 * last shape call: a pause another gateway heard of reaches this one within
 * it (its own pushbacks at once); meanwhile a forward costs no Redis call,
 * and an idle loop makes none at all. */
#define OPEN_REMEMBERED_US 250000

static struct open_upstream *open_of(struct delivery_pools *p, const char *channel, bool add)
{
    for (size_t k = 0; k < p->n_open; k++)
        if (strcmp(p->open[k].channel, channel) == 0)
            return &p->open[k];
    if (!add || p->n_open == POOLS_MAX)
        return NULL;
    struct open_upstream *o = &p->open[p->n_open++];
    snprintf(o->channel, sizeof o->channel, "%s", channel);
    o->until_us = 0;
    return o;
}

struct delivery_pools *delivery_pools_new(struct event_base *base, unsigned n_loops)
{
    struct delivery_pools *p = calloc(1, sizeof *p);
    if (p) {
        p->base = base;
        p->n_loops = n_loops ? n_loops : 1;
    }
    return p;
}

/* The pool for CH's upstream: made on first use, with this loop's share of
 * its max_connections.  NULL when it cannot be made. */
static struct upstream_pool *pool_for(struct delivery_pools *p, const struct cfg_channel *ch)
{
    unsigned total = ch->upstream.max_connections;
    unsigned limit = total == 0 ? 0 : (total + p->n_loops - 1) / p->n_loops;
    size_t k;
    for (k = 0; k < p->n_pools; k++)
        if (strcmp(p->pools[k].channel, ch->name) == 0)
            break;
    if (k < p->n_pools && p->pools[k].limit == limit)
        return p->pools[k].pool;
    if (k < p->n_pools) {
        /* A reload changed the bound: new exchanges use a new pool, the old
         * one finishes what it carries. */
        if (p->n_retired < POOLS_MAX)
            p->retired[p->n_retired++] = p->pools[k];
        else
            upstream_pool_free(p->pools[k].pool);
        p->pools[k] = p->pools[--p->n_pools];
    }
    if (p->n_pools == POOLS_MAX)
        return NULL;
    struct upstream_pool *pool = upstream_pool_new(p->base, limit, 1u << 20);
    if (!pool)
        return NULL;
    struct channel_pool *cp = &p->pools[p->n_pools++];
    snprintf(cp->channel, sizeof cp->channel, "%s", ch->name);
    cp->limit = limit;
    cp->pool = pool;
    return pool;
}

void delivery_pools_sweep(struct delivery_pools *p)
{
    for (size_t k = 0; p && k < p->n_retired;) {
        if (upstream_pool_active(p->retired[k].pool) == 0) {
            upstream_pool_free(p->retired[k].pool);
            p->retired[k] = p->retired[--p->n_retired];
        } else {
            k++;
        }
    }
}

void delivery_pools_free(struct delivery_pools *p)
{
    if (!p)
        return;
    for (size_t k = 0; k < p->n_pools; k++)
        upstream_pool_free(p->pools[k].pool);
    for (size_t k = 0; k < p->n_retired; k++)
        upstream_pool_free(p->retired[k].pool);
    free(p);
}

int delivery_forward(struct delivery_pools *pools, const struct config *cfg,
                     const struct message *m, upstream_cb *cb, void *arg)
{
    const struct cfg_channel *ch = config_channel(cfg, m->channel);
    struct upstream_pool *pool = ch && ch->upstream.enabled ? pool_for(pools, ch) : NULL;
    if (!pool)
        return -1;
    const struct cfg_upstream *u = &ch->upstream;
    char with_query[4096], idem[32 + REQ_MESSAGE_ID_MAX];
    const char *url = u->url, *headers[160];
    char *owned[100];
    size_t nh = 0, nowned = 0;

    if (m->route && m->query && *m->query) {
        snprintf(with_query, sizeof with_query, "%s%c%s", u->url, strchr(u->url, '?') ? '&' : '?',
                 m->query);
        url = with_query;
    }

    /* The configured headers win over the caller's of the same name. */
    if (m->route && m->headers) {
        size_t k;
        json_t *pair;
        json_array_foreach(m->headers, k, pair) {
            const char *name = json_string_value(json_array_get(pair, 0));
            const char *value = json_string_value(json_array_get(pair, 1));
            if (!name || !value || delivery_hop_by_hop(name) || nowned >= 100)
                continue;
            bool overridden = false;
            size_t nl = strlen(name);
            for (size_t c = 0; c < u->n_headers; c++)
                if (strncasecmp(u->headers[c], name, nl) == 0 && u->headers[c][nl] == ':')
                    overridden = true;
            if (overridden || strcasecmp(name, "Idempotency-Key") == 0)
                continue;
            size_t vl = strlen(value);
            char *h = malloc(nl + vl + 3);
            if (!h)
                continue;
            memcpy(h, name, nl);
            memcpy(h + nl, ": ", 2);
            memcpy(h + nl + 2, value, vl + 1);
            headers[nh++] = owned[nowned++] = h;
        }
    } else {
        headers[nh++] = "Content-Type: application/json";
    }
    for (size_t c = 0; c < u->n_headers && nh < 150; c++)
        headers[nh++] = u->headers[c];
    /* Every attempt carries the same key: the upstream can drop repeats. */
    size_t il = strnlen(m->message_id, REQ_MESSAGE_ID_MAX + 11);   /* a route's adds "-<8 hex>" */
    memcpy(idem, "Idempotency-Key: ", 17);
    memcpy(idem + 17, m->message_id, il);
    idem[17 + il] = '\0';
    headers[nh++] = idem;
    headers[nh] = NULL;

    struct upstream_request req = {
        .method = m->method, .url = url, .headers = headers,
        .body = m->body, .body_len = m->body_len, .timeout_ms = u->timeout_ms,
    };
    int rc = upstream_send(pool, &req, cb, arg);
    for (size_t k = 0; k < nowned; k++)
        free(owned[k]);
    return rc;
}

/* ---- after the upstream answered ------------------------------------------------ */

static void on_acked(void *arg, const struct store_reply *r)
{
    /* If the ack is lost, the lease runs out and the dispatcher delivers the
     * message again, with the same Idempotency-Key: at least once. */
    (void)arg; (void)r;
}

void delivery_ack(struct store *st, const struct config *cfg, const char *user,
                  const char *message, bool own_copy, const char *first_answer, size_t len)
{
    char member[50];
    struct script_args a;
    decision_member(user, message, member);
    if (own_copy) {
        int argcs[3];
        size_t n = decision_ack_commands(cfg, member, first_answer, len, &a, argcs);
        int at = 0;
        for (size_t k = 0; k < n; k++) {
            store_command(st, argcs[k], a.argv + at, a.argvlen + at, on_acked, NULL);
            at += argcs[k];
        }
        return;
    }
    if (first_answer)
        decision_ack_args(cfg, member, first_answer, len, &a);
    else
        decision_finish_args(cfg, member, FINISH_ACK, 0, NULL, &a);
    store_eval(st, a.script, a.nkeys, a.argc, a.argv, a.argvlen, on_acked, NULL);
}

int delivery_requeue(struct store *st, const struct config *cfg, const char *user,
                     const char *message, int64_t in_ms, store_cb *cb, void *arg)
{
    struct script_args a;
    decision_requeue_args(cfg, user, message, in_ms, &a);
    return store_eval(st, a.script, a.nkeys, a.argc, a.argv, a.argvlen, cb, arg);
}

/* One delivery_send on its way: asked of the shaping, then forwarded. */
struct send_op {
    struct delivery_pools *pools;
    struct store *st;
    const struct config *cfg;
    const struct cfg_channel *ch;
    const struct message *m;
    unsigned flags;
    bool probe;
    forward_cb *cb;
    void *arg;
};

static void op_done(struct send_op *op, const struct forward_result *f)
{
    forward_cb *cb = op->cb;
    void *arg = op->arg;
    free(op);
    cb(arg, f);
}

static void on_answered(void *arg, const struct upstream_response *r)
{
    struct send_op *op = arg;
    struct forward_result f = { .r = r };
    if (shape_wanted(op->cfg, op->ch)) {
        f.held_ms = shape_answered(op->st, op->cfg, op->ch, op->probe, r);
        f.why = SHAPE_PAUSED;
        struct open_upstream *o = open_of(op->pools, op->ch->name, false);
        if (f.held_ms > 0 && o)
            o->until_us = 0;         /* it pushed back: ask Redis again */
    }
    op_done(op, &f);
}

static void forward_now(struct send_op *op)
{
    if (delivery_forward(op->pools, op->cfg, op->m, on_answered, op) != 0) {
        struct upstream_response fail = { .status = UPSTREAM_FAILED, .error = "cannot start" };
        struct forward_result f = { .r = &fail };
        op_done(op, &f);
    }
}

static void on_shaped(void *arg, const struct shape_answer *a)
{
    struct send_op *op = arg;
    if (a->go) {
        op->probe = a->probe;
        struct open_upstream *o;
        if (!a->probe && shape_pushback_only(op->cfg, op->ch) &&
            (o = open_of(op->pools, op->ch->name, true)))
            o->until_us = clock_now_us() + OPEN_REMEMBERED_US;
        forward_now(op);
        return;
    }
    struct forward_result f = { .held_ms = a->wait_ms > 0 ? a->wait_ms : 1,
                                .reserved = a->reserved, .why = a->why };
    op_done(op, &f);
}

void delivery_send(struct delivery_pools *pools, struct store *st, const struct config *cfg,
                   const struct tz_db *tz, const struct message *m, unsigned flags,
                   forward_cb *cb, void *arg)
{
    struct send_op *op = calloc(1, sizeof *op);
    if (!op) {
        struct upstream_response fail = { .status = UPSTREAM_FAILED, .error = "out of memory" };
        struct forward_result f = { .r = &fail };
        cb(arg, &f);
        return;
    }
    *op = (struct send_op){ .pools = pools, .st = st, .cfg = cfg, .m = m, .flags = flags,
                            .ch = config_channel(cfg, m->channel), .cb = cb, .arg = arg };
    if (!shape_wanted(cfg, op->ch) || (flags & FORWARD_UNSHAPED) || !st) {
        op->ch = NULL;                   /* and no pushback is noted */
        forward_now(op);
        return;
    }
    struct open_upstream *o = shape_pushback_only(cfg, op->ch) ? open_of(pools, op->ch->name, false)
                                                                : NULL;
    if (o && clock_now_us() < o->until_us) {
        forward_now(op);                 /* (its answer is still noted: a pushback pauses) */
        return;
    }
    shape_take(st, cfg, tz, op->ch, m->campaign, m->priority, flags & FORWARD_FROM_QUEUE,
               flags & FORWARD_RESERVE, on_shaped, op);
}

int delivery_abandon(struct store *st, const struct config *cfg, const char *user,
                     const char *message, store_cb *cb, void *arg)
{
    struct script_args a;
    decision_abandon_args(cfg, user, message, &a);
    return store_eval(st, a.script, a.nkeys, a.argc, a.argv, a.argvlen, cb, arg);
}

size_t delivery_pass_headers(const struct upstream_response *r, const char **out, size_t max,
                             char **owned, size_t *n_owned, const char **content_type)
{
    size_t n = 0;
    *n_owned = 0;
    *content_type = NULL;
    for (size_t k = 0; k < r->n_headers && n + 3 <= max; k++) {
        const char *colon = strchr(r->headers[k], ':');
        if (!colon)
            continue;
        char *name = strndup(r->headers[k], (size_t)(colon - r->headers[k]));
        if (!name)
            continue;
        const char *value = colon + 1;
        while (*value == ' ')
            value++;
        if (strcasecmp(name, "Content-Type") == 0)
            *content_type = value;
        if (strcasecmp(name, "Content-Type") == 0 || delivery_hop_by_hop(name) ||
            strcasecmp(name, "Date") == 0) {
            free(name);
            continue;
        }
        owned[(*n_owned)++] = name;
        out[n++] = name;
        out[n++] = value;
    }
    out[n] = NULL;
    return n / 2;
}

/* Version 3 (BLOB_V3, then the sealed box): the status and headers as
 * compact JSON, a NUL, the body's bytes.  The older form -- JSON with the
 * body in base64, all sealed and in base64 again -- cost a route request
 * more than its decision; it is still read (answers kept before an upgrade). */
char *delivery_answer_seal(const struct upstream_response *r, char *const *keep, size_t n,
                           const struct pseudonym *seal, size_t *len)
{
    struct textbuf t = { 0 };
    textbuf_puts(&t, "{\"h\":[");
    bool first = true;
    for (size_t k = 0; k < r->n_headers; k++) {
        const char *colon = strchr(r->headers[k], ':');
        if (!colon)
            continue;
        size_t nl = (size_t)(colon - r->headers[k]);
        const char *value = colon + 1;
        while (*value == ' ')
            value++;
        bool wanted = strncasecmp(r->headers[k], "Content-Type", nl) == 0 && nl == 12;
        for (size_t j = 0; !wanted && j < n; j++)
            wanted = strlen(keep[j]) == nl && strncasecmp(r->headers[k], keep[j], nl) == 0;
        if (!wanted)
            continue;
        char name[256];
        size_t cut = nl < sizeof name ? nl : sizeof name - 1;
        memcpy(name, r->headers[k], cut);
        name[cut] = '\0';
        put_header_pair(&t, &first, name, value);
    }
    char status[32];
    memcpy(status, "],\"s\":", 6);
    char *end = text_sdec(status + 6, r->http_status);
    *end++ = '}';
    *end++ = '\0';                                  /* with its NUL: the separator */
    textbuf_put(&t, status, (size_t)(end - status));
    size_t blen = r->body_len < DELIVERY_ANSWER_BODY_MAX ? r->body_len : DELIVERY_ANSWER_BODY_MAX;
    textbuf_put(&t, r->body ? r->body : "", r->body ? blen : 0);
    char *sealed = t.failed ? NULL
                            : pseudonym_seal_bytes(seal, (char[]){ BLOB_V3 }, 1, t.buf, t.len, len);
    free(t.buf);
    return sealed;
}

/* The body of an answer kept in the older form: base64 in "b". */
static int answer_body_v2(struct kept_answer *out)
{
    const char *b64 = json_string_value(json_object_get(out->root, "b"));
    if (!b64)
        return -1;
    size_t cap = strlen(b64);
    out->body = malloc(cap + 1);
    if (!out->body || sodium_base642bin((unsigned char *)out->body, cap, b64, cap, NULL,
                                        &out->body_len, NULL, sodium_base64_VARIANT_ORIGINAL))
        return -1;
    out->body[out->body_len] = '\0';
    return 0;
}

int delivery_answer_open(const char *sealed, size_t len, const struct pseudonym *seal,
                         struct kept_answer *out)
{
    size_t plen;
    json_int_t status = 0;
    memset(out, 0, sizeof *out);
    bool v3 = len > 0 && sealed[0] == BLOB_V3;
    char *plain = v3 ? pseudonym_open_bytes(seal, sealed + 1, len - 1, &plen)
                     : pseudonym_open(seal, sealed, len, &plen);
    size_t jlen = plain ? strnlen(plain, plen) : 0;
    if (plain && (!v3 || jlen < plen))
        out->root = json_loadb(plain, jlen, 0, NULL);
    int rc = !out->root || json_unpack(out->root, "{s:I, s:o}", "s", &status, "h",
                                       &out->headers) != 0 ||
             !json_is_array(out->headers) || status < 100 || status > 599 ? -1 : 0;
    if (rc == 0 && v3) {
        out->body_len = plen - jlen - 1;
        if ((out->body = malloc(out->body_len + 1))) {
            memcpy(out->body, plain + jlen + 1, out->body_len);
            out->body[out->body_len] = '\0';
        } else {
            rc = -1;
        }
    } else if (rc == 0) {
        rc = answer_body_v2(out);
    }
    free(plain);
    if (rc != 0) {
        delivery_answer_clear(out);
        return -1;
    }
    out->status = (long)status;
    return 0;
}

void delivery_answer_clear(struct kept_answer *a)
{
    json_decref(a->root);
    free(a->body);
    memset(a, 0, sizeof *a);
}

/* delivery: message blobs and forwarding.  See delivery.h. */
#include "capgate/delivery.h"

#include "capgate/pseudonym.h"

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
    for (size_t k = 0; k < sizeof skip / sizeof skip[0]; k++)
        if (strcasecmp(name, skip[k]) == 0)
            return true;
    return false;
}

char *delivery_blob(const struct message *m, const struct pseudonym *seal)
{
    /* Bodies are bytes: base64 keeps the blob valid UTF-8 JSON. */
    size_t b64len = sodium_base64_encoded_len(m->body_len, sodium_base64_VARIANT_ORIGINAL);
    char *b64 = malloc(b64len);
    if (!b64)
        return NULL;
    sodium_bin2base64(b64, b64len, (const unsigned char *)m->body, m->body_len,
                      sodium_base64_VARIANT_ORIGINAL);
    json_t *o = json_pack("{s:i, s:b, s:s, s:s, s:s, s:s, s:s, s:s}", "v", 1, "route", m->route,
                          "u", m->user, "m", m->message, "mid", m->message_id,
                          "ch", m->channel, "cat", m->category, "body", b64);
    free(b64);
    if (!o)
        return NULL;
    if (m->campaign)
        json_object_set_new(o, "camp", json_string(m->campaign));
    if (m->tz)
        json_object_set_new(o, "tz", json_string(m->tz));
    if (m->route) {
        json_object_set_new(o, "method", json_string(m->method));
        json_object_set_new(o, "query", json_string(m->query ? m->query : ""));
        char *h = m->headers ? json_dumps(m->headers, JSON_COMPACT) : strdup("[]");
        char *sealed = h ? pseudonym_seal(seal, h, strlen(h)) : NULL;
        free(h);
        if (!sealed) {
            json_decref(o);
            return NULL;
        }
        json_object_set_new(o, "hx", json_string(sealed));
        free(sealed);
    }
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return s;
}

int delivery_parse(const char *blob, size_t len, struct message *m,
                   const struct pseudonym *seal)
{
    const char *b64 = NULL, *hx = NULL;
    int route = 0;
    memset(m, 0, sizeof *m);
    m->root = json_loadb(blob, len, 0, NULL);
    if (!m->root ||
        json_unpack(m->root, "{s:b, s:s, s:s, s:s, s:s, s:s, s:s, s?s, s?s, s?s, s?s, s?s}",
                    "route", &route, "u", &m->user, "m", &m->message, "mid", &m->message_id,
                    "ch", &m->channel, "cat", &m->category, "body", &b64, "camp", &m->campaign,
                    "tz", &m->tz, "method", &m->method, "query", &m->query,
                    "hx", &hx) != 0) {
        delivery_clear(m);
        return -1;
    }
    m->route = route;
    if (hx) {
        size_t hl;
        char *h = pseudonym_open(seal, hx, &hl);
        m->headers = h ? json_loadb(h, hl, 0, NULL) : NULL;
        free(h);
        if (!m->headers) {
            delivery_clear(m);
            return -1;
        }
    }
    size_t cap = strlen(b64);
    m->body = malloc(cap + 1);
    if (!m->body || sodium_base642bin((unsigned char *)m->body, cap, b64, cap, NULL,
                                      &m->body_len, NULL, sodium_base64_VARIANT_ORIGINAL) != 0) {
        delivery_clear(m);
        return -1;
    }
    m->body[m->body_len] = '\0';
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

int delivery_forward(struct upstream_pool *pool, const struct config *cfg,
                     const struct message *m, upstream_cb *cb, void *arg)
{
    const struct cfg_channel *ch = config_channel(cfg, m->channel);
    if (!ch || !ch->upstream.enabled)
        return -1;
    const struct cfg_upstream *u = &ch->upstream;
    char url[4096], idem[200];
    const char *headers[160];
    char *owned[100];
    size_t nh = 0, nowned = 0;

    if (m->route && m->query && *m->query)
        snprintf(url, sizeof url, "%s%c%s", u->url, strchr(u->url, '?') ? '&' : '?', m->query);
    else
        snprintf(url, sizeof url, "%s", u->url);

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
            size_t len = nl + strlen(value) + 3;
            char *h = malloc(len);
            if (!h)
                continue;
            snprintf(h, len, "%s: %s", name, value);
            headers[nh++] = owned[nowned++] = h;
        }
    } else {
        headers[nh++] = "Content-Type: application/json";
    }
    for (size_t c = 0; c < u->n_headers && nh < 150; c++)
        headers[nh++] = u->headers[c];
    /* Every attempt carries the same key: the upstream can drop repeats. */
    snprintf(idem, sizeof idem, "Idempotency-Key: %s", m->message_id);
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

/*
 * delivery: a message on its way to a campaign API.  The same "blob"
 * describes it whether it goes at once (POST /v1/send, a route) or waits in
 * the deferred queue (then it is stored in Redis as is): what to send, to
 * which channel, and for whom (the pseudonym; the raw recipient only inside
 * the payload).
 */
#ifndef CAPGATE_DELIVERY_H
#define CAPGATE_DELIVERY_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "capgate/config.h"
#include "capgate/upstream.h"

struct message {
    json_t *root;              /* owns the strings below */
    bool route;                /* transparent mode: forward the request as it came */
    const char *user;          /* pseudonym */
    const char *message;       /* message pseudonym (hex) */
    const char *message_id;    /* the sender's id: the upstream Idempotency-Key */
    const char *channel, *category, *campaign, *tz;   /* campaign/tz may be NULL */
    const char *method;        /* route: as received; send: POST */
    const char *query;         /* route: raw query string */
    char *body;                /* decoded */
    size_t body_len;
    json_t *headers;           /* route: [[name, value], ...] as received (filtered) */
};

/* Builds the blob of a /v1/send message (PAYLOAD: the JSON text to post) or
 * of a routed request.  Returns a malloc'ed string, NULL on error. */
/* SEAL: the routed request's headers (which may carry the raw recipient)
 * are stored sealed with it (see pseudonym_seal). */
struct pseudonym;
char *delivery_blob(const struct message *m, const struct pseudonym *seal);
int delivery_parse(const char *blob, size_t len, struct message *out,
                   const struct pseudonym *seal);
void delivery_clear(struct message *m);

/* Sends M to its channel's upstream.  Returns what upstream_send returns. */
int delivery_forward(struct upstream_pool *pool, const struct config *cfg,
                     const struct message *m, upstream_cb *cb, void *arg);

/* Hop-by-hop and capgate's own headers are not forwarded (RFC 9110 7.6.1). */
bool delivery_hop_by_hop(const char *name);

#endif

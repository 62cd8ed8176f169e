/*
 * campaigns: the names behind the campaign ids of a person's sends.  A send
 * record keeps its campaign as a 24-bit id (decision.c), so /v1/users/show
 * could only say "#a1b2c3", which a privacy officer cannot read.  Campaign
 * names are not personal data: a bounded dictionary in Redis
 * (src/lua/names.lua, cg:{n}:names, at most CAMPAIGN_NAMES_MAX) maps ids
 * back to names, without adding a byte to any send.
 *
 * Each loop notes the campaigns its decisions name (a table lookup on the
 * request path), and writes those it has not written before once a second,
 * in a few calls -- never on the request path.  One per loop, on its thread.
 */
#ifndef CAPGATE_CAMPAIGNS_H
#define CAPGATE_CAMPAIGNS_H

#include <jansson.h>

#define CAMPAIGN_NAMES_MAX 100000

struct loop;
struct http_request;
struct campaign_names;

struct campaign_names *campaign_names_new(struct loop *l);
/* Names not yet written go unwritten (another decision will note them). */
void campaign_names_free(struct campaign_names *n);

/* A decision named CAMPAIGN (NULL or "": none). */
void campaign_names_note(struct campaign_names *n, const char *campaign);

/* Replies BODY (reference stolen) to REQ as reply_json_headers() does, once
 * every "campaign": "#xxxxxx" member in it is given its name where the
 * dictionary knows it (the id stays where it does not, or Redis is away).
 * HEADERS are copied. */
void campaign_names_reply(struct loop *l, struct http_request *req, json_t *body,
                          const char *const *headers);

#endif

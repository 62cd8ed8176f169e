/*
 * delivery: a message on its way to a campaign API.  The same "blob"
 * describes it whether it goes at once (POST /v1/send, a route) or waits in
 * the deferred queue (then it is stored in Redis as is, sealed): what to
 * send, to which channel, and for whom.
 */
#ifndef CAPGATE_DELIVERY_H
#define CAPGATE_DELIVERY_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "capgate/config.h"
#include "capgate/shape.h"
#include "capgate/store.h"
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
    int priority;              /* 0..9, as queued: not in the blob (the queue holds it) */
};

/* Builds the blob of a /v1/send message or of a routed request: the whole
 * message (payload or body, headers, description) sealed with SEAL (see
 * pseudonym_seal_bytes), because it names the recipient.  Returns malloc'ed
 * bytes (*LEN of them: binary, not a string), NULL on error.
 * delivery_parse reads LEN bytes of one (as Redis hands it) into OUT; 0 or
 * -1. */
struct pseudonym;
char *delivery_blob(const struct message *m, const struct pseudonym *seal, size_t *len);
int delivery_parse(const char *blob, size_t len, struct message *out,
                   const struct pseudonym *seal);
void delivery_clear(struct message *m);

/* One loop's outbound HTTP: a libcurl pool per channel, each with this
 * loop's share (of N_LOOPS) of the upstream's max_connections. */
struct event_base;
struct delivery_pools;
struct delivery_pools *delivery_pools_new(struct event_base *base, unsigned n_loops);
/* Frees the pools a reload replaced once they carry nothing (housekeeping). */
void delivery_pools_sweep(struct delivery_pools *p);
/* Callbacks still owed run now, with UPSTREAM_FAILED. */
void delivery_pools_free(struct delivery_pools *p);

/* Sends M to its channel's upstream.  0 when sent (CB will run), -1 when it
 * cannot be (no upstream, no pool; CB will not run). */
int delivery_forward(struct delivery_pools *pools, const struct config *cfg,
                     const struct message *m, upstream_cb *cb, void *arg);

/* What became of a forward (delivery_send). */
struct forward_result {
    const struct upstream_response *r;  /* the upstream's answer; NULL: held, not sent */
    int64_t held_ms;          /* > 0: held (R NULL), or pushed back (R is the pushback):
                                 it may go again in this long, without losing an attempt */
    bool reserved;            /* held: that slot is the message's own */
    enum shape_why why;       /* held or pushed back: what stops it */
};
typedef void forward_cb(void *arg, const struct forward_result *f);

#define FORWARD_FROM_QUEUE 1u     /* the dispatcher's: it waited for its slot */
#define FORWARD_RESERVE    2u     /* if held: take the slot (the message is queued for it) */
#define FORWARD_UNSHAPED   4u     /* decided without Redis: the rate cannot be asked either */

/* Sends M to its channel's upstream through the channel's shaping
 * (shape.h): asked first when the channel shapes (TZ: the warm-up's days),
 * and told the answer.  CB runs exactly once -- later, or at once from inside when
 * it cannot start (R then says UPSTREAM_FAILED).  M (and CFG) must stay
 * valid until CB. */
struct tz_db;
void delivery_send(struct delivery_pools *pools, struct store *st, const struct config *cfg,
                   const struct tz_db *tz, const struct message *m, unsigned flags,
                   forward_cb *cb, void *arg);

/* Held back (shape.h): the send is released and the message stays queued,
 * due IN_MS from now (decision_requeue_args).  As store_eval: 0, or -1 (CB
 * will not run); CB's STORE_OK says it was done -- if not, the message is
 * still queued under its lease, and will be delivered. */
int delivery_requeue(struct store *st, const struct config *cfg, const char *user,
                     const char *message, int64_t in_ms, store_cb *cb, void *arg);

/* Hop-by-hop and capgate's own headers are not forwarded (RFC 9110 7.6.1). */
bool delivery_hop_by_hop(const char *name);

/* ---- after the upstream answered: the message in the queue ----------------

 * A message being forwarded waits in the queue under a lease (decide.lua).
 * USER and MESSAGE are the pseudonyms it was decided with. */
struct store;
/* The upstream's 2xx: the message leaves the queue.  FIRST_ANSWER (sealed,
 * LEN bytes; NULL: none) is kept for replays (a route's).  OWN_COPY: the
 * queued copy is the one this forward's own decision made (not a replay's
 * second forward of a copy the dispatcher may have held), which lets the
 * ack be two plain commands instead of a script call.  Fire and forget: a
 * lost ack only means one more delivery when the lease runs out. */
void delivery_ack(struct store *st, const struct config *cfg, const char *user,
                  const char *message, bool own_copy, const char *first_answer, size_t len);
/* A refusal: the send is released and the message leaves the queue, in one
 * step; CB tells whether that was done (STORE_OK) -- if not, the message is
 * still queued and will be delivered.  As store_eval: 0, or -1 (CB will
 * not run). */
int delivery_abandon(struct store *st, const struct config *cfg, const char *user,
                     const char *message, store_cb *cb, void *arg);

/* ---- the upstream's answer, for the caller and for replays ---------------- */

/* R's headers fit to pass on: name, value pairs into OUT (NULL-terminated,
 * at most MAX entries with the NULL), their names malloc'ed into OWNED
 * (free each; *N_OWNED set).  Hop-by-hop headers and Date go (the daemon
 * writes its own); Content-Type goes into *CONTENT_TYPE (NULL: none). */
size_t delivery_pass_headers(const struct upstream_response *r, const char **out, size_t max,
                             char **owned, size_t *n_owned, const char **content_type);

/* The first answer kept for replays: status, the headers named in KEEP (N),
 * the body up to DELIVERY_ANSWER_BODY_MAX bytes, sealed.  Malloc'ed bytes,
 * *LEN of them (binary, as a blob is). */
#define DELIVERY_ANSWER_BODY_MAX 2048
char *delivery_answer_seal(const struct upstream_response *r, char *const *keep, size_t n,
                           const struct pseudonym *seal, size_t *len);
struct kept_answer {
    json_t *root;                    /* owns what follows */
    long status;
    json_t *headers;                 /* [[name, value], ...] */
    char *body;
    size_t body_len;
};
int delivery_answer_open(const char *sealed, size_t len, const struct pseudonym *seal,
                         struct kept_answer *out);
void delivery_answer_clear(struct kept_answer *a);

#endif

/*
 * requests: the API's request bodies read and checked -- the pure half of
 * every handler (api_*.c does the I/O).  Bytes and the config in, the
 * checked fields or the first error out: no Redis, no HTTP, no clock.  The
 * handlers and tests/fuzz/fuzz_request.c call the same functions, so the
 * fuzzer tests what runs.
 *
 * A parsed body's strings point into the struct itself or into its JSON
 * (request_free() lets go of it); channel and category point into CFG.
 * An error's message never quotes a field's value (it may be a user id).
 */
#ifndef CAPGATE_REQUESTS_H
#define CAPGATE_REQUESTS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "capgate/config.h"
#include "capgate/form.h"
#include "capgate/jsonedit.h"
#include "capgate/sms_keyword.h"
#include "capgate/validate.h"

struct tz_db;

/* The limits of the fields every body shares, in bytes. */
#define REQ_USER_MAX 256
#define REQ_MESSAGE_ID_MAX 128
#define REQ_CAMPAIGN_MAX 256
#define REQ_TZ_MAX 64
#define REQ_SOURCE_MAX 128
#define REQ_COLLAPSE_MAX 128

/* POST /v1/decide and the decision part of POST /v1/send. */
struct req_decide {
    const char *user, *message_id, *campaign, *tz;   /* campaign, tz: NULL when absent */
    size_t user_len, message_id_len;
    const struct cfg_channel *channel;
    const struct cfg_category *category;
    bool dry_run;
    json_t *json;                    /* owns the strings when the body was not flat */
    char buf[REQ_USER_MAX + REQ_MESSAGE_ID_MAX + REQ_CAMPAIGN_MAX + REQ_TZ_MAX + 2 * 64 + 8];
};
int request_decide(const struct config *cfg, const struct tz_db *tz, const char *body,
                   size_t len, struct req_decide *out, struct field_error *e);

/* POST /v1/send: the decide fields, the payload (as the JSON text to post),
 * collapse_key and priority; the channel has an upstream. */
struct req_send {
    struct req_decide d;
    char *payload;                   /* malloc'ed JSON text, no whitespace between tokens */
    size_t payload_len;
    const char *collapse;            /* NULL when absent */
    char collapse_buf[REQ_COLLAPSE_MAX + 1];
    int priority;                    /* 0..9 (the category's when absent) */
};
int request_send(const struct config *cfg, const struct tz_db *tz, const char *body,
                 size_t len, struct req_send *out, struct field_error *e);
void request_send_free(struct req_send *s);

/* POST /v1/release and the users endpoints: the user (and message_id). */
struct req_person {
    const char *user, *message_id;   /* message_id: release only */
    size_t user_len, message_id_len;
    json_t *json;
};
int request_release(const char *body, size_t len, struct req_person *out, struct field_error *e);
int request_user(const char *body, size_t len, struct req_person *out, struct field_error *e);

/* POST /v1/consent: CHANNEL and CATEGORY are configured names or "*".
 * NOTICE (the id or version of the text the person agreed to, at most
 * RECEIPT_NOTICE_MAX characters, no control characters) and LEGAL_BASIS
 * (receipt_basis_known) are NULL when absent. */
struct req_consent {
    const char *user, *channel, *category, *source, *notice, *legal_basis;
    size_t user_len;
    bool opt_in;
    json_t *json;
};
int request_consent(const struct config *cfg, const char *body, size_t len,
                    struct req_consent *out, struct field_error *e);

/* POST /v1/events.  An inbound_sms is a text a person sent to CHANNEL
 * (default "sms"): its keyword (sms_keyword.h) is all that leaves the
 * parser -- the text is the person's own words and stays in JSON, to be
 * let go of with it.  STOP and START set the consent of "<channel>|*"
 * (OPT_IN, source REQ_SMS_SOURCE); HELP and anything else change nothing. */
enum req_event_kind { EVENT_UNSUBSCRIBE, EVENT_COMPLAINT, EVENT_BOUNCE, EVENT_ENGAGE,
                      EVENT_INBOUND_SMS };
#define REQ_SMS_TEXT_MAX 1600        /* characters: 10 concatenated SMS, as providers bound it */
#define REQ_SMS_SOURCE "sms-keyword"
struct req_event {
    const char *user, *type, *channel, *category, *campaign;   /* optional ones NULL */
    size_t user_len;
    enum req_event_kind kind;
    enum sms_keyword keyword;             /* inbound_sms */
    bool opt_in;                          /* inbound_sms: START */
    bool records;                         /* something is to be stored (not so a HELP) */
    char scope[2 * CONFIG_NAME_MAX + 2];   /* "<channel|*>|<category|*>", a bounce's channel */
    char effect[160];                     /* what it does, in words, for the answer */
    char detail[REQ_CAMPAIGN_MAX + 32];   /* the audit entry's detail: type and campaign */
    json_t *json;
};
int request_event(const struct config *cfg, const char *body, size_t len, struct req_event *out,
                  struct field_error *e);

/* A transparent route's request: its recipients and fields read with the
 * route's specs ("json:/pointer" with "*" for every element of an array,
 * "header:Name", "form:Name" for an urlencoded body; HEADER looks a header
 * up).  Each person is listed once, however often the request names them. */
typedef const char *req_header_fn(void *ctx, const char *name);

struct req_recipient {
    char *id;                        /* the raw id (malloc'ed; wiped by request_route_free) */
    size_t id_len;
    char where[JSONEDIT_PATH_MAX];   /* where it was found first: a JSON pointer, or the spec */
    bool removable;                  /* every place it stands can be cut out of the body */
};

struct req_place {                   /* one place a recipient stands */
    unsigned recipient, spec;        /* index into the recipients, into route->users */
    struct jmatch match;             /* json */
    size_t pair;                     /* form: the pair's index */
};

struct req_route {
    char message_id[REQ_MESSAGE_ID_MAX + 1];
    char campaign[REQ_CAMPAIGN_MAX + 1], category[CONFIG_NAME_MAX + 1];   /* "" when absent */
    const struct cfg_category *cat;
    struct jdoc *doc;                /* a JSON body (points into the body: keep it alive) */
    struct form_pair *pairs;         /* an urlencoded body */
    size_t n_pairs;
    struct req_recipient *rcpt;
    size_t n, cap_rcpt;
    struct req_place *place;
    size_t n_places, cap_places;
    const char *headers_at;          /* the route's unsubscribe_headers pointer, or NULL */
};

/* More recipients than limits.max_recipients is API_TOO_MANY_RECIPIENTS (413).
 * On success request_route_free() OUT; a refusal leaves nothing to free. */
int request_route(const struct config *cfg, const struct cfg_route *route, const char *body,
                  size_t len, req_header_fn *header, void *ctx, struct req_route *out,
                  struct field_error *e);
void request_route_free(struct req_route *rr);

/* The body that carries exactly the recipients whose KEEP[i] is true: the
 * body itself (NULL returned, *LEN untouched) when every recipient is kept,
 * else a copy with the others' array elements cut out (an array left empty
 * goes with its key; an element a two-"*" pointer's outer "*" went through
 * goes whole when it keeps none of its recipients, or with WHOLE none of
 * its first-listed ones: a personalization without its "to"; without WHOLE,
 * one recipient's copy, a kept "cc" or "bcc" array is written under the "to"
 * key when the "to" beside it goes).  SENT[i] (may be NULL) says which
 * recipients the result still carries.  *FAILED: it cannot be done (a kept
 * body must lose a recipient that no cut can take out, or out of memory).
 * LINKS (may be NULL; per recipient, entries may be NULL): with the route's
 * unsubscribe_headers, each outer element's List-Unsubscribe headers name
 * the link of the first recipient it still sends (a copy is then always
 * made). */
char *request_route_body(const struct req_route *rr, const char *body, size_t len,
                         const bool *keep, bool whole, bool *sent, size_t *outlen,
                         bool *failed, const char *const *links);

/* A /v1/send payload (BODY, LEN bytes) with URL's RFC 8058 headers in every
 * object AT names (upstream.unsubscribe_headers after "json:"), each made in
 * its parent when absent; a headers object naming List-Unsubscribe keeps
 * the sender's.  Malloc'ed (*OUTLEN set), or NULL when nothing was added
 * (the payload then goes as it is). */
char *request_send_headers(const char *body, size_t len, const char *at, const char *url,
                           size_t *outlen);

/* POST /v1/admin/campaigns/resume: {"campaign"}. */
struct req_resume {
    const char *campaign;
    json_t *json;
};
int request_resume(const char *body, size_t len, struct req_resume *out, struct field_error *e);

/* POST /v1/unsubscribe-links: {"user", "channel"?, "category"?}: a configured
 * channel and category, or absent (or "*") for every one (CHANNEL, CATEGORY
 * are then ""). */
struct req_link {
    const char *user;
    size_t user_len;
    const char *channel, *category;
    json_t *json;
};
int request_unsubscribe_link(const struct config *cfg, const char *body, size_t len,
                             struct req_link *out, struct field_error *e);

/* Lets go of a parsed body's JSON (any of the structs' JSON member). */
static inline void request_free(json_t *json)
{
    json_decref(json);
}

#endif

/*
 * decision: turns config + a validated request into the arguments of one
 * Redis script call, and the script's reply into a result.  It owns the
 * Redis key layout and the scripts; it knows nothing of HTTP.
 *
 * Key layout.  A person's pseudonym P (32 hex digits) gives:
 *   T = P[0..2)   the hash tag: 256 tags, spread over the cluster's slots
 *   B = the next (bucket_bits - 8) bits: T plus B pick the person's bucket
 *   F = P[16..32) as 8 bytes: the person's field inside the bucket
 * and the keys (all with tag {T}, so one decision is one slot):
 *   cg:{T}:s<B>     hash F -> the person's allowed sends, packed; field ''
 *                   its expiry as last set  (TTL: retention + slack)
 *   cg:{T}:c:<P>    string: the person's consent records          (no TTL: proof)
 *   cg:{T}:h:<P>    hash scope -> the scope's consent history, the
 *                   receipts (consent.lua)  (TTL: retention; none while
 *                   it holds the proof of an opt-out in force)
 * Sharing one small hash among many people keeps it a listpack: a person
 * costs a field and a value, not a key with its expiry (see decide.lua).
 */
#ifndef CAPGATE_DECISION_H
#define CAPGATE_DECISION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "capgate/config.h"
#include "capgate/pseudonym.h"
#include "capgate/receipt.h"
#include "capgate/store.h"

struct tz_zone;

enum decision_script {
    SCRIPT_DECIDE, SCRIPT_RELEASE, SCRIPT_CONSENT, SCRIPT_SHOW, SCRIPT_ERASE,
    SCRIPT_AUDIT_PAGE, SCRIPT_CLAIM, SCRIPT_FINISH, SCRIPT_DEAD_LIST, SCRIPT_AUDIT_TRIM, SCRIPT_ROTATE,
    SCRIPT_SHAPE, SCRIPT_BREAKER, SCRIPT_NAMES, SCRIPT_HISTORY,
    SCRIPT__COUNT
};

/* The hash tags: 256, "00".."ff".  Per-tag streams (the audit trail) are
 * read all together by asking each tag. */
#define DECISION_TAGS 256

/* The hash tag of a person's pseudonym USER (its first two hex digits). */
unsigned decision_tag(const char *user);

/* The Lua sources, in enum decision_script order, for store_create(). */
extern const char *const decision_scripts[SCRIPT__COUNT];

enum decision_outcome { OUTCOME_ALLOW, OUTCOME_DEFER, OUTCOME_DENY, OUTCOME__COUNT };

enum decision_reason {
    REASON_OK, REASON_OPTED_OUT, REASON_CONSENT_REQUIRED, REASON_QUIET_HOURS,
    REASON_CAP, REASON_SUPPRESSED, REASON_SUPERSEDED, REASON_STORE_UNAVAILABLE,
    REASON_CAMPAIGN_PAUSED,          /* the campaign breaker paused its campaign (breaker.h) */
    REASON__COUNT
};

const char *decision_outcome_name(enum decision_outcome o);
const char *decision_reason_name(enum decision_reason r);

/* Proxy mode: what to queue if the decision is a deferral. */
struct enqueue {
    const char *blob;                        /* everything needed to deliver it */
    size_t blob_len;
    int priority;                            /* 0..9 */
    const char *collapse;                    /* collapse_key, or NULL */
    bool from_queue;                         /* the dispatcher deciding the queued copy */
    bool first_answer;                       /* a route: a replay returns the upstream's
                                                first answer, when one was kept */
};

struct decide_input {
    char user[PSEUDONYM_USER_HEX + 1];       /* pseudonym */
    char message[PSEUDONYM_SHORT_HEX + 1];   /* pseudonym of message_id */
    const struct cfg_channel *channel;
    const struct cfg_category *category;
    const char *campaign;                    /* NULL: none */
    const struct tz_zone *zone;              /* quiet hours zone (request tz or default) */
    bool dry_run;
    const struct enqueue *enqueue;           /* NULL: a plain decide */
};

#define RULE_FATIGUE (-2)   /* the fatigue cap decided */
#define SHADOW_MAX 8

struct decision {
    enum decision_outcome outcome;
    enum decision_reason reason;
    int rule;                 /* index into cfg->caps, -1 none, RULE_FATIGUE */
    int64_t retry_after_s;    /* defer (and deny past max_defer): rounded up */
    bool replay;
    bool resend;              /* proxy mode: a replay whose delivery was never
                                 acknowledged: forward it again (at least once) */
    bool in_queue;            /* proxy mode: a replay the dispatcher has claimed: the
                                 queue delivers it (in retry_after_s at the latest) */
    int count;                /* sends the deciding rule counted */
    int queued;               /* proxy mode: 1 queued, 2 refused (queue full) */
    bool superseded;          /* proxy mode: an older message of its collapse key went */
    size_t n_shadow;          /* shadow caps that would have decided */
    struct { int rule; enum decision_outcome would; } shadow[SHADOW_MAX];
};

/* The name of rule R of a decision ("fatigue" for RULE_FATIGUE). */
const char *decision_rule_name(const struct config *cfg, int rule);

/* Arguments of one script call: keys first, then ARGV. */
#define SCRIPT_ARGS_MAX 32
struct script_args {
    size_t script;
    int nkeys;
    int argc;
    const char *argv[SCRIPT_ARGS_MAX];
    size_t argvlen[SCRIPT_ARGS_MAX];
    char buf[4096];           /* storage for keys, numbers and packed fields */
    size_t used;
};

/* The fields every answer with a decision carries, written into T without
 * braces: "decision", "reason", "rule" (when one decided), "retry_after"
 * (a defer), "message_id" (escaped), "replay". */
struct textbuf;
void decision_json_fields(struct textbuf *t, const struct config *cfg, const struct decision *d,
                          const char *message_id);

/* Refuses a config whose channel or category names collide in the 16-bit
 * ids the send records use (a rename fixes it).  0 or -1 with ERR. */
int decision_check_config(const struct config *cfg, char *err, size_t errlen);

/* NOW_S is the gateway's clock, used only to pick which quiet-hours
 * intervals to send; the script decides with Redis's clock. */
void decision_decide_args(const struct config *cfg, const struct decide_input *in,
                          int64_t now_s, struct script_args *out);
/* Returns 0, or -1 when the reply is not what decide.lua returns. */
int decision_decide_result(const struct store_reply *r, const struct config *cfg,
                           struct decision *out);
/* A replay's kept first answer (sealed) in R, if it carries one. */
bool decision_first_answer(const struct store_reply *r, const char **s, size_t *len);

void decision_release_args(const struct config *cfg, const char *user, const char *message,
                           struct script_args *out);
/* Proxy mode: the upstream refused a message being forwarded.  Releases the
 * send and takes the message out of the queue, where it waited under a lease
 * (decide.lua), in one step: nothing will deliver it. */
void decision_abandon_args(const struct config *cfg, const char *user, const char *message,
                           struct script_args *out);

/* Proxy mode: a message being forwarded is held back (the upstream's rate,
 * or its pause: shape.h).  Releases the send, as abandon, but the message
 * stays queued, due IN_MS from now, its attempts untouched: the dispatcher
 * decides it again then. */
void decision_requeue_args(const struct config *cfg, const char *user, const char *message,
                           int64_t in_ms, struct script_args *out);
/* An upstream's shaping state (shape.lua): key cg:{u.<CHANNEL>}:up -- its
 * own slot -- then cg:{u.<CHANNEL>}:<SUBKEYS[k]> (the same slot: a
 * campaign throttle's, "t:<throttle>:<campaign>"), and ARGV[0..ARGC) as
 * given (strings, not copied). */
void decision_shape_args(const char *channel, size_t nsub, const char *const *subkeys,
                         size_t argc, const char *const *argv, struct script_args *out);

/* The campaign breaker (breaker.lua, slot {b}): its state, its known
 * campaigns and CAMPAIGN's counts ("" for the calls about every campaign),
 * then ARGV[0..ARGC) as given (not copied). */
void decision_breaker_args(const char *campaign, size_t argc, const char *const *argv,
                           struct script_args *out);

/* Consent and the signals that act on it (consent.lua). */
enum consent_kind { CONSENT_SET, CONSENT_UNSUBSCRIBE, CONSENT_COMPLAINT, CONSENT_BOUNCE,
                    CONSENT_ENGAGE };
/* How many changes of each scope a person's consent history keeps. */
#define DECISION_HISTORY_PER_SCOPE 20

/* What a consent change's history entry keeps beside the change (the
 * receipt: receipt.h; the controller comes from the config).  Strings are
 * copied into the arguments. */
struct consent_proof {
    char record_id[RECEIPT_ID_HEX + 1];
    const char *method;        /* "api:<source>", "unsubscribe", "one-click", ... */
    const char *legal_basis;   /* NULL: the scope's latest, else "consent" */
    const char *notice;        /* NULL: none */
};

/* SCOPE: "<channel|*>|<category|*>", or a channel for CONSENT_BOUNCE.
 * PROOF: NULL for a bounce and an engagement (no consent change, no
 * history entry). */
void decision_signal_args(const struct config *cfg, const char *user, enum consent_kind kind,
                          const char *scope, bool opt_in, const char *source,
                          const char *detail, const struct consent_proof *proof,
                          struct script_args *out);

void decision_show_args(const struct config *cfg, const char *user, struct script_args *out);
/* The campaign names' dictionary (names.lua): ARGV[0..ARGC) as given. */
void decision_names_args(size_t argc, const char *const *argv, struct script_args *out);
/* The 24-bit id a send record keeps of CAMPAIGN (1..2^24-1; 0: none). */
unsigned decision_campaign_id(const char *campaign);
void decision_erase_args(const struct config *cfg, const char *user, struct script_args *out);
/* USER's consent records and history (history.lua): {now, n, [scope,
 * state, at, source] * n, m, [scope, record id, at, state, method, legal
 * basis, notice, controller] * m}, the changes oldest first. */
void decision_history_args(const struct config *cfg, const char *user, struct script_args *out);
/* Tag TAG's audit entries after stream id AFTER ("0-0": all), at most COUNT. */
void decision_audit_page_args(unsigned tag, const char *after, unsigned count,
                              struct script_args *out);
/* How long an audit entry lives: the audit retention, never beyond privacy's. */
int64_t decision_audit_keep_ms(const struct config *cfg);
/* Drops tag TAG's audit entries older than the audit retention (background
 * work: the decision scripts only append).  Only when auditing is on.  The
 * reply: {removed, ms until the oldest entry left is due, -1 for none}. */
void decision_audit_trim_args(unsigned tag, const struct config *cfg, struct script_args *a);

/* The dispatcher (claim.lua / finish.lua).  MEMBER: "<P>:<M>". */
void decision_claim_args(const struct config *cfg, unsigned tag, unsigned most,
                         struct script_args *out);
enum finish_action { FINISH_ACK, FINISH_DROP, FINISH_RETRY, FINISH_DEAD };
void decision_finish_args(const struct config *cfg, const char *member,
                          enum finish_action action, int64_t retry_in_ms,
                          const char *dead_summary, struct script_args *out);
/* The acknowledgement of a copy this gateway's own decision queued for its
 * forward (decide.lua, step 6: no collapse key names it, no attempts are
 * counted on it), as plain commands in A, one after the other, ARGCS[k]
 * arguments each; returns how many (2, or 3 with ANSWER, as for
 * decision_ack_args).  A script call's own cost was more than half of what
 * finish.lua's ack cost Redis.  The order is what makes two commands
 * safe: the kept answer, then the message, then its place in the queue --
 * a retry between them finds the message gone, that is delivered, and a
 * queue entry left behind (the connection broke) is dropped by the claim
 * that finds no message. */
size_t decision_ack_commands(const struct config *cfg, const char *member, const char *answer,
                             size_t len, struct script_args *a, int argcs[3]);
void decision_dead_list_args(unsigned tag, unsigned most, struct script_args *out);
/* FINISH_ACK that also keeps the upstream's first answer (ANSWER, LEN bytes,
 * sealed; not copied: it must outlive the store call) for idempotency_window. */
void decision_ack_args(const struct config *cfg, const char *member, const char *answer,
                       size_t len, struct script_args *out);
/* The queue member of a person's message: "<P>:<M>" into OUT[50]. */
void decision_member(const char *user, const char *message, char out[50]);

/* One packed send record (see decide.lua). */
struct send_record {
    int64_t at_ms;
    uint32_t message;
    unsigned channel_id, category_id;
    bool exempt;
    uint32_t campaign;        /* 0: none */
};
/* Unpacks RAW (LEN bytes) into OUT (at most MAX); returns how many. */
size_t decision_parse_sends(const char *raw, size_t len, struct send_record *out, size_t max);
/* Config names behind record ids (NULL when no configured name has it). */
const char *decision_channel_by_id(const struct config *cfg, unsigned id);
const char *decision_category_by_id(const struct config *cfg, unsigned id);
/* Whether a record counts toward CAP (channel/category filters; not exempt). */
bool decision_cap_counts(const struct cfg_cap *cap, const struct send_record *r);
/* Returns 1 released, 0 nothing to release, -1 bad reply. */
int decision_release_result(const struct store_reply *r);

/* A pseudonym key rotation (rotate.lua): MODE is "take", "put" or "drop"
 * for USER's records; put and drop carry what take read
 * (DATA[0..DECISION_ROTATE_DATA): sends, consent, engagement, their PTTLs,
 * the consent history and its PTTL; referenced, not copied: they must
 * outlive the store call's start).  "mark" and "report" use the rotation
 * set of tag TAG (USER NULL). */
#define DECISION_ROTATE_DATA 8
void decision_rotate_args(const struct config *cfg, const char *mode, const char *user,
                          unsigned tag, const char *const *data, const size_t *lens,
                          struct script_args *out);

/* CHANNEL / CATEGORY: a configured name or "*"; OPT_IN: the state. */
void decision_consent_args(const struct config *cfg, const char *user, const char *channel,
                           const char *category, bool opt_in, const char *source,
                           const struct consent_proof *proof, struct script_args *out);
/* The stored time in ms, or -1 on a bad reply. */
int64_t decision_consent_result(const struct store_reply *r);
/* The legal basis the history entry got (consent.lua inherits an absent
 * one) into OUT, "" when the reply carries none. */
void decision_consent_basis(const struct store_reply *r, char out[32]);

#endif

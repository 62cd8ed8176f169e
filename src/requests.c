/* requests: the API's request bodies, read and checked.  See requests.h. */
#include "capgate/requests.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capgate/json_flat.h"
#include "capgate/receipt.h"
#include "capgate/textbuf.h"
#include "capgate/token.h"
#include "capgate/tz.h"

/* The body as a JSON object with no field outside FIELDS (NULL-terminated). */
static json_t *body_object(const char *body, size_t len, const char *const *fields,
                           struct field_error *e)
{
    json_t *obj = validate_object(body, len, e);
    if (obj && validate_known_fields(obj, fields, e) != 0) {
        json_decref(obj);
        return NULL;
    }
    return obj;
}

/* ---- POST /v1/decide ------------------------------------------------------ */

/* A decide body's fields, in the order they are checked: the strings, then
 * dry_run.  One list for both ways of reading a body. */
enum { F_USER, F_CHANNEL, F_CATEGORY, F_CAMPAIGN, F_MESSAGE_ID, F_TZ, F__STRINGS };
static const char *const decide_fields[] = {
    [F_USER] = "user", [F_CHANNEL] = "channel", [F_CATEGORY] = "category",
    [F_CAMPAIGN] = "campaign", [F_MESSAGE_ID] = "message_id", [F_TZ] = "tz",
    [F__STRINGS] = "dry_run", NULL
};
static const struct {
    bool required;
    bool text;                     /* no control characters (they reach headers, logs) */
    size_t max;                    /* bytes; at least 1 */
} string_fields[F__STRINGS] = {
    [F_USER] = { true, false, REQ_USER_MAX },
    [F_CHANNEL] = { true, false, 64 },
    [F_CATEGORY] = { false, false, 64 },
    [F_CAMPAIGN] = { false, true, REQ_CAMPAIGN_MAX },
    [F_MESSAGE_ID] = { true, true, REQ_MESSAGE_ID_MAX },
    [F_TZ] = { false, false, REQ_TZ_MAX },
};

struct decide_strings {
    const char *s[F__STRINGS];
    size_t len[F__STRINGS];
};

/* One field of a decide body read without jansson into DS (copied to *B,
 * which has room for each field once at its max).  1: taken; 0: not a
 * decide field; -1: not valid, or not of the fast path's shape. */
static int decide_fast_field(const struct json_flat_field *f, struct decide_strings *ds,
                             bool *dry_run, char **b)
{
    size_t i = 0;
    while (decide_fields[i] && !(strlen(decide_fields[i]) == f->klen &&
                                 memcmp(decide_fields[i], f->key, f->klen) == 0))
        i++;
    if (!decide_fields[i])
        return 0;
    if (i == F__STRINGS) {               /* dry_run */
        if (f->type != JSON_FLAT_TRUE && f->type != JSON_FLAT_FALSE && f->type != JSON_FLAT_NULL)
            return -1;
        *dry_run = f->type == JSON_FLAT_TRUE;
        return 1;
    }
    if (f->type == JSON_FLAT_NULL)
        return 1;                        /* as if absent */
    if (f->type != JSON_FLAT_STRING || f->slen < 1 || f->slen > string_fields[i].max)
        return -1;
    memcpy(*b, f->s, f->slen);
    (*b)[f->slen] = '\0';
    ds->s[i] = *b;
    ds->len[i] = f->slen;
    *b += f->slen + 1;
    return 1;
}

static bool decide_fast_required(const struct decide_strings *ds)
{
    for (size_t i = 0; i < F__STRINGS; i++)
        if (string_fields[i].required && !ds->s[i])
            return false;
    return true;
}

/* The usual body read without jansson (whose objects were a sixth of a
 * decision's instructions): a flat object (json_flat_scan) of known fields,
 * each valid.  Anything else -- an invalid field too -- returns false, and
 * the general path reads the body again and words the error.  (A flat
 * string holds no escapes, so no control characters either.) */
static bool decide_fast(const char *body, size_t len, struct decide_strings *ds, bool *dry_run,
                        char *b)
{
    struct json_flat_field f[F__STRINGS + 1];
    int n = json_flat_scan(body, len, f, sizeof f / sizeof f[0]);

    if (n < 0)
        return false;
    memset(ds, 0, sizeof *ds);
    *dry_run = false;
    for (int k = 0; k < n; k++)
        if (decide_fast_field(&f[k], ds, dry_run, &b) != 1)
            return false;                /* unknown or invalid */
    return decide_fast_required(ds);
}

/* The general path: jansson, with the errors worded.  DS points into OBJ. */
static int decide_checked(json_t *obj, struct decide_strings *ds, bool *dry_run,
                          struct field_error *e)
{
    for (size_t i = 0; i < F__STRINGS; i++)
        if ((string_fields[i].text ? validate_text : validate_string)(
                obj, decide_fields[i], string_fields[i].required, 1, string_fields[i].max,
                &ds->s[i], &ds->len[i], e))
            return -1;
    return validate_bool(obj, decide_fields[F__STRINGS], dry_run, e);
}

/* What both decide and send check once the strings are read. */
static int decide_resolve(const struct config *cfg, const struct tz_db *tz,
                          const struct decide_strings *ds, struct req_decide *out,
                          struct field_error *e)
{
    out->user = ds->s[F_USER];
    out->user_len = ds->len[F_USER];
    out->message_id = ds->s[F_MESSAGE_ID];
    out->message_id_len = ds->len[F_MESSAGE_ID];
    out->campaign = ds->s[F_CAMPAIGN];
    out->tz = ds->s[F_TZ];
    out->channel = config_channel(cfg, ds->s[F_CHANNEL]);
    if (!out->channel)
        return validate_fail(e, API_UNKNOWN_CHANNEL, "channel", "channel is not configured");
    out->category = config_category(cfg, ds->s[F_CATEGORY] ? ds->s[F_CATEGORY]
                                                            : cfg->default_category);
    if (!out->category)
        return validate_fail(e, API_UNKNOWN_CATEGORY, "category", "category is not configured");
    if (out->tz && !tz_db_find(tz, out->tz))
        return validate_fail(e, API_INVALID_FIELD, "tz", "tz is not a known IANA time zone");
    return 0;
}

int request_decide(const struct config *cfg, const struct tz_db *tz, const char *body,
                   size_t len, struct req_decide *out, struct field_error *e)
{
    struct decide_strings ds;
    out->json = NULL;
    if (!decide_fast(body, len, &ds, &out->dry_run, out->buf)) {
        if (!(out->json = body_object(body, len, decide_fields, e)) ||
            decide_checked(out->json, &ds, &out->dry_run, e) != 0)
            return -1;
    }
    return decide_resolve(cfg, tz, &ds, out, e);
}

/* ---- POST /v1/send ------------------------------------------------------- */

/* The checks of a send once its fields are read, either way. */
static int send_resolve(const struct config *cfg, const struct tz_db *tz,
                        const struct decide_strings *ds, bool has_prio, json_int_t prio,
                        struct req_send *out, struct field_error *e)
{
    struct req_decide *d = &out->d;
    if (has_prio && (prio < 0 || prio > 9))
        return validate_fail(e, API_INVALID_FIELD, "priority", "priority must be an integer 0..9");
    if (decide_resolve(cfg, tz, ds, d, e) != 0)
        return -1;
    out->priority = has_prio ? (int)prio : d->category->priority;
    if (!d->channel->upstream.enabled)
        return validate_fail(e, API_NO_UPSTREAM, "channel",
                    "channel has no upstream: use /v1/decide, or configure channels.%s.upstream",
                    d->channel->name);
    return 0;
}

/* The usual send read in one pass without jansson: the decide fields as
 * decide_fast reads them, the payload an object or an array kept as the
 * client's own text (only the whitespace between tokens dropped: a real
 * number goes on as it was written, not re-printed), collapse_key a flat
 * string, priority an integer or null.  1: read (OUT filled, its payload
 * malloc'ed); 0: not of that shape, the general path reads it; -1: out of
 * memory. */
static int send_fast(const struct config *cfg, const struct tz_db *tz, const char *body,
                     size_t len, struct req_send *out, struct field_error *e)
{
    struct json_flat_field f[F__STRINGS + 4];
    struct decide_strings ds;
    const struct json_flat_field *payload = NULL;
    bool dry_run = false, has_prio = false;
    json_int_t prio = 0;
    char *b = out->d.buf;
    int n = json_flat_scan_nested(body, len, f, sizeof f / sizeof f[0]);

    if (n < 0)
        return 0;
    memset(&ds, 0, sizeof ds);
    for (int k = 0; k < n; k++) {
        if (f[k].klen == 7 && memcmp(f[k].key, "dry_run", 7) == 0)
            return 0;                    /* not a send's field: the general path says so */
        int took = decide_fast_field(&f[k], &ds, &dry_run, &b);
        if (took < 0)
            return 0;
        if (took)
            continue;
        if (f[k].klen == 7 && memcmp(f[k].key, "payload", 7) == 0 &&
            f[k].type == JSON_FLAT_NESTED) {
            payload = &f[k];
        } else if (f[k].klen == 12 && memcmp(f[k].key, "collapse_key", 12) == 0 &&
                   f[k].type == JSON_FLAT_STRING && f[k].slen >= 1 &&
                   f[k].slen <= REQ_COLLAPSE_MAX) {
            memcpy(out->collapse_buf, f[k].s, f[k].slen);   /* flat: no escapes */
            out->collapse_buf[f[k].slen] = '\0';
            out->collapse = out->collapse_buf;
        } else if (f[k].klen == 8 && memcmp(f[k].key, "priority", 8) == 0 &&
                   (f[k].type == JSON_FLAT_INTEGER || f[k].type == JSON_FLAT_NULL)) {
            has_prio = f[k].type == JSON_FLAT_INTEGER;
            prio = f[k].i;
        } else {
            return 0;
        }
    }
    if (!payload || !decide_fast_required(&ds))
        return 0;
    if (send_resolve(cfg, tz, &ds, has_prio, prio, out, e) != 0)
        return -1;
    if (!(out->payload = malloc(payload->slen + 1)))
        return validate_fail(e, API_INTERNAL, NULL, "out of memory");
    out->payload_len = json_flat_compact(payload->s, payload->slen, out->payload);
    return 1;
}

int request_send(const struct config *cfg, const struct tz_db *tz, const char *body,
                 size_t len, struct req_send *out, struct field_error *e)
{
    static const char *const fields[] = { "user", "channel", "category", "campaign",
                                          "message_id", "tz", "payload", "collapse_key",
                                          "priority", NULL };
    struct decide_strings ds;
    struct req_decide *d = &out->d;
    memset(out, 0, sizeof *out);
    int fast = send_fast(cfg, tz, body, len, out, e);
    if (fast != 0)
        return fast > 0 ? 0 : -1;
    memset(out, 0, sizeof *out);
    json_t *obj = d->json = body_object(body, len, fields, e);
    if (!obj)
        return -1;
    for (size_t i = 0; i < F__STRINGS; i++)
        if ((string_fields[i].text ? validate_text : validate_string)(
                obj, decide_fields[i], string_fields[i].required, 1, string_fields[i].max,
                &ds.s[i], &ds.len[i], e))
            return -1;
    if (validate_text(obj, "collapse_key", false, 1, REQ_COLLAPSE_MAX, &out->collapse, NULL, e))
        return -1;
    json_t *payload = json_object_get(obj, "payload");
    if (!payload)
        return validate_fail(e, API_MISSING_FIELD, "payload", "payload is required");
    json_t *prio = json_object_get(obj, "priority");
    if (json_is_null(prio))
        prio = NULL;
    if (prio && !json_is_integer(prio))
        return validate_fail(e, API_INVALID_FIELD, "priority", "priority must be an integer 0..9");
    if (send_resolve(cfg, tz, &ds, prio != NULL, prio ? json_integer_value(prio) : 0, out, e))
        return -1;
    out->payload = json_dumps(payload, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!out->payload)
        return validate_fail(e, API_INTERNAL, NULL, "out of memory");
    out->payload_len = strlen(out->payload);
    return 0;
}

void request_send_free(struct req_send *s)
{
    json_decref(s->d.json);
    free(s->payload);
    s->d.json = NULL;
    s->payload = NULL;
}

/* ---- release, users ------------------------------------------------------- */

int request_release(const char *body, size_t len, struct req_person *out, struct field_error *e)
{
    static const char *const fields[] = { "user", "message_id", NULL };
    memset(out, 0, sizeof *out);
    if (!(out->json = body_object(body, len, fields, e)))
        return -1;
    return validate_string(out->json, "user", true, 1, REQ_USER_MAX, &out->user, &out->user_len,
                           e) ||
           validate_text(out->json, "message_id", true, 1, REQ_MESSAGE_ID_MAX, &out->message_id,
                         &out->message_id_len, e)
           ? -1 : 0;
}

int request_user(const char *body, size_t len, struct req_person *out, struct field_error *e)
{
    static const char *const fields[] = { "user", NULL };
    memset(out, 0, sizeof *out);
    if (!(out->json = body_object(body, len, fields, e)))
        return -1;
    return validate_string(out->json, "user", true, 1, REQ_USER_MAX, &out->user, &out->user_len,
                           e);
}

/* ---- POST /v1/consent ------------------------------------------------------- */

/* The characters of UTF-8 text S (LEN bytes; jansson's strings are valid):
 * each byte but a continuation byte starts one. */
static size_t utf8_chars(const char *s, size_t len)
{
    size_t n = 0;
    for (size_t k = 0; k < len; k++)
        n += ((unsigned char)s[k] & 0xc0) != 0x80;
    return n;
}

int request_consent(const struct config *cfg, const char *body, size_t len,
                    struct req_consent *out, struct field_error *e)
{
    static const char *const fields[] = { "user", "channel", "category", "state", "source",
                                          "notice", "legal_basis", NULL };
    const char *state;
    size_t nlen = 0;
    memset(out, 0, sizeof *out);
    json_t *obj = out->json = body_object(body, len, fields, e);
    if (!obj)
        return -1;
    if (validate_string(obj, "user", true, 1, REQ_USER_MAX, &out->user, &out->user_len, e) ||
        validate_string(obj, "channel", true, 1, CONFIG_NAME_MAX, &out->channel, NULL, e) ||
        validate_string(obj, "category", true, 1, CONFIG_NAME_MAX, &out->category, NULL, e) ||
        validate_string(obj, "state", true, 1, 16, &state, NULL, e) ||
        validate_text(obj, "source", true, 1, REQ_SOURCE_MAX, &out->source, NULL, e) ||
        validate_text(obj, "notice", false, 1, 4 * RECEIPT_NOTICE_MAX, &out->notice, &nlen, e) ||
        validate_string(obj, "legal_basis", false, 1, 32, &out->legal_basis, NULL, e))
        return -1;
    if (out->notice && utf8_chars(out->notice, nlen) > RECEIPT_NOTICE_MAX)
        return validate_fail(e, API_INVALID_FIELD, "notice", "notice must be at most %d characters",
                             RECEIPT_NOTICE_MAX);
    if (out->legal_basis && !receipt_basis_known(out->legal_basis))
        return validate_fail(e, API_INVALID_FIELD, "legal_basis",
                    "legal_basis must be consent, soft_opt_in, contract or legitimate_interest");
    if (strcmp(out->channel, "*") != 0 && !config_channel(cfg, out->channel))
        return validate_fail(e, API_UNKNOWN_CHANNEL, "channel",
                    "channel must be a configured channel or \"*\"");
    if (strcmp(out->category, "*") != 0 && !config_category(cfg, out->category))
        return validate_fail(e, API_UNKNOWN_CATEGORY, "category",
                    "category must be a configured category or \"*\"");
    out->opt_in = strcmp(state, "opt_in") == 0;
    if (!out->opt_in && strcmp(state, "opt_out") != 0)
        return validate_fail(e, API_INVALID_FIELD, "state", "state must be \"opt_in\" or \"opt_out\"");
    return 0;
}

/* ---- POST /v1/events -------------------------------------------------------- */

/* An inbound_sms's text, read for its keyword and left where it is.  No
 * message here names its value: the text is personal data. */
static int sms_text(json_t *obj, struct req_event *out, struct field_error *e)
{
    json_t *t = json_object_get(obj, "text");
    if (!t || json_is_null(t))
        return validate_fail(e, API_MISSING_FIELD, "text", "text is required for an inbound_sms");
    if (!json_is_string(t))
        return validate_fail(e, API_INVALID_FIELD, "text", "text must be a string");
    const char *text = json_string_value(t);
    size_t len = json_string_length(t);
    if (utf8_chars(text, len) > REQ_SMS_TEXT_MAX)
        return validate_fail(e, API_INVALID_FIELD, "text", "text must be at most %d characters",
                             REQ_SMS_TEXT_MAX);
    out->keyword = sms_keyword_of(text, len);
    return 0;
}

/* The rest of an inbound_sms: the SMS channel, and what its keyword does. */
static int sms_event(const struct config *cfg, json_t *obj, struct req_event *out,
                     struct field_error *e)
{
    if (out->category)
        return validate_fail(e, API_INVALID_FIELD, "category",
                    "an inbound_sms has no category: its keywords are about every category");
    const struct cfg_channel *ch = config_channel(cfg, out->channel ? out->channel : "sms");
    if (!ch)
        return validate_fail(e, API_UNKNOWN_CHANNEL, "channel",
                    out->channel ? "channel is not configured"
                                 : "no channel named sms is configured: name the SMS channel in channel");
    out->channel = ch->name;
    if (sms_text(obj, out, e) != 0)
        return -1;
    snprintf(out->scope, sizeof out->scope, "%s|*", ch->name);
    switch (out->keyword) {
    case SMS_KEYWORD_STOP:
        out->records = true;
        snprintf(out->effect, sizeof out->effect, "opted out of %s", out->scope);
        break;
    case SMS_KEYWORD_START:
        out->records = out->opt_in = true;
        snprintf(out->effect, sizeof out->effect, "opted in to %s", out->scope);
        break;
    case SMS_KEYWORD_HELP:
        snprintf(out->effect, sizeof out->effect,
                 "nothing changed: a help keyword, to be answered with your help message");
        break;
    case SMS_KEYWORD_NONE:
        snprintf(out->effect, sizeof out->effect, "nothing changed: the text is no keyword");
        break;
    }
    return 0;
}

int request_event(const struct config *cfg, const char *body, size_t len, struct req_event *out,
                  struct field_error *e)
{
    static const char *const fields[] = { "user", "type", "channel", "category", "campaign",
                                          "message_id", "text", NULL };
    static const struct {
        const char *type;
        enum req_event_kind kind;
    } kinds[] = {
        { "unsubscribe", EVENT_UNSUBSCRIBE }, { "complaint", EVENT_COMPLAINT },
        { "hard_bounce", EVENT_BOUNCE }, { "open", EVENT_ENGAGE }, { "click", EVENT_ENGAGE },
        { "inbound_sms", EVENT_INBOUND_SMS },
    };
    const char *message_id;
    memset(out, 0, sizeof *out);
    json_t *obj = out->json = body_object(body, len, fields, e);
    if (!obj)
        return -1;
    if (validate_string(obj, "user", true, 1, REQ_USER_MAX, &out->user, &out->user_len, e) ||
        validate_string(obj, "type", true, 1, 16, &out->type, NULL, e) ||
        validate_string(obj, "channel", false, 1, CONFIG_NAME_MAX, &out->channel, NULL, e) ||
        validate_string(obj, "category", false, 1, CONFIG_NAME_MAX, &out->category, NULL, e) ||
        validate_text(obj, "campaign", false, 1, REQ_CAMPAIGN_MAX, &out->campaign, NULL, e) ||
        validate_text(obj, "message_id", false, 1, REQ_MESSAGE_ID_MAX, &message_id, NULL, e))
        return -1;
    size_t k = 0;
    while (k < sizeof kinds / sizeof kinds[0] && strcmp(kinds[k].type, out->type) != 0)
        k++;
    if (k == sizeof kinds / sizeof kinds[0])
        return validate_fail(e, API_INVALID_FIELD, "type",
                    "type must be unsubscribe, complaint, hard_bounce, open, click or inbound_sms");
    out->kind = kinds[k].kind;
    if (out->kind == EVENT_INBOUND_SMS) {
        if (sms_event(cfg, obj, out, e) != 0)
            return -1;
    } else {
        /* A text is an SMS's: with another type it would be kept nowhere,
         * and its sender would believe it had been read. */
        json_t *text = json_object_get(obj, "text");
        if (text && !json_is_null(text))
            return validate_fail(e, API_INVALID_FIELD, "text", "text is only for an inbound_sms");
        if (out->channel && !config_channel(cfg, out->channel))
            return validate_fail(e, API_UNKNOWN_CHANNEL, "channel", "channel is not configured");
        out->records = true;
    }
    if (out->category && !config_category(cfg, out->category))
        return validate_fail(e, API_UNKNOWN_CATEGORY, "category", "category is not configured");
    switch (out->kind) {
    case EVENT_UNSUBSCRIBE:
        snprintf(out->scope, sizeof out->scope, "%s|%s", out->channel ? out->channel : "*",
                 out->category ? out->category : "*");
        snprintf(out->effect, sizeof out->effect, "opted out of %s", out->scope);
        break;
    case EVENT_COMPLAINT:
        snprintf(out->effect, sizeof out->effect,
                 "suppressed: only transactional messages, on every channel");
        break;
    case EVENT_BOUNCE:
        if (!out->channel)
            return validate_fail(e, API_MISSING_FIELD, "channel", "channel is required for a hard_bounce");
        snprintf(out->scope, sizeof out->scope, "%s", out->channel);
        snprintf(out->effect, sizeof out->effect,
                 "suppressed: nothing on %s until a new opt-in", out->channel);
        break;
    case EVENT_ENGAGE:
        snprintf(out->effect, sizeof out->effect, "engaged: fatigue rules no longer apply");
        break;
    case EVENT_INBOUND_SMS:
        break;                            /* sms_event() said it */
    }
    /* An inbound_sms's entry names its keyword: the audit trail shows what
     * the person asked for, never how they put it. */
    const char *kw = out->kind == EVENT_INBOUND_SMS ? sms_keyword_name(out->keyword) : NULL;
    snprintf(out->detail, sizeof out->detail, "%s%s%s%s%s", out->type, kw ? " " : "",
             kw ? kw : "", out->campaign ? " campaign=" : "", out->campaign ? out->campaign : "");
    return 0;
}

/* ---- transparent routes ------------------------------------------------------ */

#define PLACES_MAX 4096          /* places a request may name recipients at */

/* V (LEN bytes) as a usable value: 1, 0 when empty, -1 when longer than MAX
 * or holding control characters (a CR/LF would reach an upstream's headers). */
static int usable(const char *v, size_t len, size_t max)
{
    if (!v || len == 0)
        return 0;
    return len > max || validate_has_control(v, len) ? -1 : 1;
}

/* The one value SPEC names (campaign, category, message_id), malloc'ed;
 * *RC as usable(). */
static char *one_value(const struct req_route *rr, const char *body, const char *spec,
                       req_header_fn *header, void *ctx, size_t max, int *rc)
{
    char *v = NULL;
    size_t len = 0;
    if (strncmp(spec, "header:", 7) == 0) {
        const char *h = header(ctx, spec + 7);
        if (h && (v = strdup(h)))
            len = strlen(v);
    } else if (strncmp(spec, "form:", 5) == 0) {
        for (size_t k = 0; k < rr->n_pairs && !v; k++)
            if (form_name_is(body, &rr->pairs[k], spec + 5))
                v = form_value(body, &rr->pairs[k], &len);
    } else if (rr->doc) {
        struct jmatch m[1];
        if (jdoc_find(rr->doc, spec + 5, m, 1) >= 1)
            v = jdoc_scalar(rr->doc, m[0].node, &len);
    }
    *rc = usable(v, len, max);
    if (*rc <= 0) {
        free(v);
        return NULL;
    }
    return v;
}

/* A recipient found at a place: listed once per person. */
static int add_place(struct req_route *rr, char *id, size_t len, const char *where,
                     struct req_place pl, bool removable, size_t max, struct field_error *e)
{
    size_t k = 0;
    while (k < rr->n && !(rr->rcpt[k].id_len == len && memcmp(rr->rcpt[k].id, id, len) == 0))
        k++;
    if (k == rr->n) {
        if (rr->n >= max) {
            explicit_bzero(id, len);
            free(id);
            return validate_fail(e, API_TOO_MANY_RECIPIENTS, "user",
                                 "the request names more than %zu recipients "
                                 "(limits.max_recipients); nothing was forwarded", max);
        }
        if (rr->n == rr->cap_rcpt) {
            size_t cap = rr->cap_rcpt ? 2 * rr->cap_rcpt : 4;
            struct req_recipient *r = realloc(rr->rcpt, cap * sizeof *r);
            if (!r) {
                explicit_bzero(id, len);
                free(id);
                return validate_fail(e, API_INTERNAL, NULL, "out of memory");
            }
            rr->rcpt = r;
            rr->cap_rcpt = cap;
        }
        rr->rcpt[rr->n] = (struct req_recipient){ .id = id, .id_len = len, .removable = true };
        text_copy(rr->rcpt[rr->n].where, sizeof rr->rcpt[rr->n].where, where);
        rr->n++;
    } else {
        explicit_bzero(id, len);
        free(id);
    }
    if (!removable)
        rr->rcpt[k].removable = false;
    if (rr->n_places >= PLACES_MAX)
        return validate_fail(e, API_TOO_MANY_RECIPIENTS, "user",
                             "the request names recipients at more than %d places", PLACES_MAX);
    if (rr->n_places == rr->cap_places) {
        size_t cap = rr->cap_places ? 2 * rr->cap_places : 4;
        struct req_place *p = realloc(rr->place, cap * sizeof *p);
        if (!p)
            return validate_fail(e, API_INTERNAL, NULL, "out of memory");
        rr->place = p;
        rr->cap_places = cap;
    }
    pl.recipient = (unsigned)k;
    rr->place[rr->n_places++] = pl;
    return 0;
}

static int bad_recipient(struct field_error *e, const char *spec)
{
    return validate_fail(e, API_INVALID_FIELD, "user",
                         "a recipient read from %s is longer than %d bytes or holds control "
                         "characters; nothing was forwarded", spec, REQ_USER_MAX);
}

/* Every recipient SPEC names. */
static int find_recipients(struct req_route *rr, const char *body, unsigned spec_no,
                           const char *spec, req_header_fn *header, void *ctx, size_t max,
                           struct field_error *e)
{
    struct req_place pl = { .spec = spec_no };
    if (strncmp(spec, "header:", 7) == 0) {
        const char *h = header(ctx, spec + 7);
        int ok = usable(h, h ? strlen(h) : 0, REQ_USER_MAX);
        if (ok < 0)
            return bad_recipient(e, spec);
        char *id = ok ? strdup(h) : NULL;
        if (ok && !id)
            return validate_fail(e, API_INTERNAL, NULL, "out of memory");
        return ok ? add_place(rr, id, strlen(id), spec, pl, false, max, e) : 0;
    }
    if (strncmp(spec, "form:", 5) == 0) {
        for (size_t k = 0; k < rr->n_pairs; k++) {
            if (!form_name_is(body, &rr->pairs[k], spec + 5))
                continue;
            size_t len = 0;
            char *id = form_value(body, &rr->pairs[k], &len);
            int ok = usable(id, len, REQ_USER_MAX);
            if (ok < 0) {
                free(id);
                return bad_recipient(e, spec);
            }
            pl.pair = k;
            if (ok && add_place(rr, id, len, spec, pl, true, max, e) != 0)
                return -1;
            if (!ok)
                free(id);
        }
        return 0;
    }
    if (!rr->doc)
        return 0;
    /* Counted first: most requests name one or two, a few a thousand. */
    long n = jdoc_find(rr->doc, spec + 5, NULL, 0);
    if (n <= 0)
        return 0;
    if (n > PLACES_MAX)
        return validate_fail(e, API_TOO_MANY_RECIPIENTS, "user",
                             "the request names recipients at more than %d places", PLACES_MAX);
    struct jmatch *m = malloc((size_t)n * sizeof *m);
    if (!m)
        return validate_fail(e, API_INTERNAL, NULL, "out of memory");
    n = jdoc_find(rr->doc, spec + 5, m, (size_t)n);
    int rc = 0;
    for (long k = 0; rc == 0 && k < n && k < PLACES_MAX; k++) {
        size_t len = 0;
        char *id = jdoc_scalar(rr->doc, m[k].node, &len);
        int ok = usable(id, len, REQ_USER_MAX);
        if (ok < 0) {
            free(id);
            rc = bad_recipient(e, spec);
            break;
        }
        if (!ok) {
            free(id);
            continue;
        }
        pl.match = m[k];
        rc = add_place(rr, id, len, m[k].path, pl, m[k].n_stars > 0, max, e);
    }
    free(m);
    return rc;
}

static bool is_form(const struct cfg_route *route)
{
    for (size_t k = 0; k < route->n_users; k++)
        if (strncmp(route->users[k], "form:", 5) == 0)
            return true;
    return (route->message_id && strncmp(route->message_id, "form:", 5) == 0) ||
           (route->campaign && strncmp(route->campaign, "form:", 5) == 0);
}

static int read_route(const struct config *cfg, const struct cfg_route *route, const char *body,
                      size_t len, req_header_fn *header, void *ctx, struct req_route *out,
                      struct field_error *e)
{
    size_t max = cfg->limits.max_recipients ? cfg->limits.max_recipients : 1000;
    if (is_form(route)) {
        size_t n = form_parse(body, len, NULL, 0);
        if (n > PLACES_MAX)
            return validate_fail(e, API_TOO_MANY_RECIPIENTS, "user",
                                 "the form has more than %d fields", PLACES_MAX);
        if (!(out->pairs = calloc(n ? n : 1, sizeof *out->pairs)))
            return validate_fail(e, API_INTERNAL, NULL, "out of memory");
        out->n_pairs = form_parse(body, len, out->pairs, n);
    } else if (len) {
        /* Not JSON: nothing a json: spec can read (headers still can). */
        out->doc = jdoc_parse(body, len);
    }
    if (max > PLACES_MAX)
        max = PLACES_MAX;
    for (size_t k = 0; k < route->n_users; k++)
        if (find_recipients(out, body, (unsigned)k, route->users[k], header, ctx, max, e) != 0)
            return -1;
    if (out->n == 0)
        return validate_fail(e, API_MISSING_FIELD, "user",
                             "could not read a recipient from %s%s; nothing was forwarded",
                             route->users[0], route->n_users > 1 ? " or the other specs" : "");
    struct {
        const char *spec, *field;
        char *out;
        size_t max;
        bool required;
    } want[] = {
        { route->message_id, "message_id", out->message_id, REQ_MESSAGE_ID_MAX, true },
        { route->campaign, "campaign", out->campaign, REQ_CAMPAIGN_MAX, false },
        { route->category, "category", out->category, CONFIG_NAME_MAX, false },
    };
    for (size_t k = 0; k < sizeof want / sizeof want[0]; k++) {
        if (!want[k].spec)
            continue;
        int rc;
        char *v = one_value(out, body, want[k].spec, header, ctx, want[k].max, &rc);
        if (rc < 0)
            return validate_fail(e, API_INVALID_FIELD, want[k].field,
                                 "the %s read from %s is longer than %zu bytes or holds control "
                                 "characters; nothing was forwarded", want[k].field,
                                 want[k].spec, want[k].max);
        if (rc == 0 && want[k].required)
            return validate_fail(e, API_MISSING_FIELD, want[k].field,
                                 "could not read the %s from %s; nothing was forwarded",
                                 want[k].field, want[k].spec);
        if (v) {
            memcpy(want[k].out, v, strlen(v) + 1);
            free(v);
        }
    }
    out->cat = config_category(cfg, out->category[0] ? out->category : cfg->default_category);
    if (!out->cat)
        return validate_fail(e, API_UNKNOWN_CATEGORY, "category", "category is not configured");
    return 0;
}

int request_route(const struct config *cfg, const struct cfg_route *route, const char *body,
                  size_t len, req_header_fn *header, void *ctx, struct req_route *out,
                  struct field_error *e)
{
    memset(out, 0, sizeof *out);
    if (route->unsubscribe_headers)
        out->headers_at = route->unsubscribe_headers + 5;      /* after "json:" */
    int rc = read_route(cfg, route, body, len, header, ctx, out, e);
    if (rc != 0)
        request_route_free(out);      /* a refusal leaves nothing to free */
    return rc;
}

void request_route_free(struct req_route *rr)
{
    for (size_t k = 0; k < rr->n; k++) {
        explicit_bzero(rr->rcpt[k].id, rr->rcpt[k].id_len);
        free(rr->rcpt[k].id);
    }
    free(rr->rcpt);
    free(rr->place);
    free(rr->pairs);
    jdoc_free(rr->doc);
    memset(rr, 0, sizeof *rr);
}

/* A recipient's own copy that keeps it in a personalization's "cc" or
 * "bcc" would have no "to" left there, and SendGrid refuses that (400
 * "personalizations.0.to is required"): its array is written under the key
 * of the first-listed spec's array beside it (the "to"), when that one goes
 * whole.  Linear: the kept places are few (one person's), each looked up
 * against all. */
static void rekey_alone(const struct req_route *rr, struct jdoc *d, const bool *keep)
{
    unsigned done[8];                /* holders given a "to" (a person in several) */
    size_t n_done = 0;
    for (size_t k = 0; k < rr->n_places; k++) {
        const struct req_place *p = &rr->place[k];
        if (!keep[p->recipient] || p->spec == 0 || p->match.n_stars < 2 ||
            jdoc_removed(d, p->match.node))
            continue;
        unsigned arr = jdoc_parent(d, p->match.star[p->match.n_stars - 1]);
        unsigned holder = jdoc_parent(d, arr);
        bool seen = false;
        for (size_t j = 0; j < n_done; j++)
            seen = seen || done[j] == holder;
        if (seen || n_done == sizeof done / sizeof done[0])
            continue;
        bool first_goes = false, first_stays = false;
        unsigned first_arr = 0;
        for (size_t q = 0; q < rr->n_places; q++) {
            const struct req_place *o = &rr->place[q];
            if (o->spec != 0 || o->match.n_stars != p->match.n_stars)
                continue;
            unsigned oarr = jdoc_parent(d, o->match.star[o->match.n_stars - 1]);
            if (jdoc_parent(d, oarr) != holder)
                continue;
            if (jdoc_emptied(d, oarr)) {
                first_goes = true;
                first_arr = oarr;
            } else {
                first_stays = true;
            }
        }
        if (first_goes && !first_stays && jdoc_rekey(d, arr, first_arr))
            done[n_done++] = holder;
    }
}

/* RFC 8058's two headers for URL in OUTER's member KEY (an object), or in
 * one made for them; a headers object that names List-Unsubscribe already
 * keeps the sender's.  Whether anything was added. */
static bool put_headers(struct jdoc *d, const struct jmatch *outer, const char *key,
                        const char *url)
{
    char headers[2 * UNSUBSCRIBE_URL_MAX], path[2 * JSONEDIT_PATH_MAX + 32];
    struct jmatch found;
    snprintf(headers, sizeof headers, "\"List-Unsubscribe\":\"<%s>\","
             "\"List-Unsubscribe-Post\":\"List-Unsubscribe=One-Click\"", url);
    snprintf(path, sizeof path, "%s/%s", outer->path, key);
    if (jdoc_find(d, path, &found, 1) == 1) {
        char named[sizeof path + 32];
        snprintf(named, sizeof named, "%s/List-Unsubscribe", path);
        struct jmatch own;
        return jdoc_find(d, named, &own, 1) == 0 &&
               jdoc_append(d, found.node, headers);     /* (not an object: left alone) */
    }
    char member[sizeof headers + JSONEDIT_PATH_MAX + 8];
    snprintf(member, sizeof member, "\"%s\":{%s}", key, headers);
    return jdoc_append(d, outer->node, member);
}

/* RFC 8058's two headers in each outer element (a personalization) at
 * RR->headers_at, for the first recipient it still sends that has a link:
 * in its headers object, or in one made for them.  An element whose
 * headers already name List-Unsubscribe keeps the sender's. */
static void add_unsubscribe_headers(const struct req_route *rr, struct jdoc *d, const bool *keep,
                                    const char *const *links)
{
    const char *at = rr->headers_at, *slash = strrchr(at, '/');
    char outer[JSONEDIT_PATH_MAX], key[JSONEDIT_PATH_MAX];
    snprintf(outer, sizeof outer, "%.*s", (int)(slash - at), at);
    snprintf(key, sizeof key, "%s", slash + 1);
    size_t max = rr->n_places + 1;
    struct jmatch *m = calloc(max, sizeof *m);
    long n = m ? jdoc_find(d, outer, m, max) : 0;
    for (long i = 0; i < n && (size_t)i < max; i++) {
        if (jdoc_removed(d, m[i].node))
            continue;
        size_t plen = strlen(m[i].path);
        const char *url = NULL;
        for (size_t k = 0; k < rr->n_places && !url; k++) {
            const struct req_place *p = &rr->place[k];
            if (keep[p->recipient] && links[p->recipient] && !jdoc_removed(d, p->match.node) &&
                strncmp(p->match.path, m[i].path, plen) == 0 && p->match.path[plen] == '/')
                url = links[p->recipient];
        }
        if (url)
            put_headers(d, &m[i], key, url);
    }
    free(m);
}

char *request_send_headers(const char *body, size_t len, const char *at, const char *url,
                           size_t *outlen)
{
    const char *slash = strrchr(at, '/');
    char outer[JSONEDIT_PATH_MAX];
    snprintf(outer, sizeof outer, "%.*s", (int)(slash - at), at);
    struct jdoc *d = jdoc_parse(body, len);
    struct jmatch m[16];
    long n = d ? jdoc_find(d, outer, m, 16) : 0;
    bool any = false;
    for (long i = 0; i < n && i < 16; i++)
        any = put_headers(d, &m[i], slash + 1, url) || any;
    char *out = any ? jdoc_text(d, outlen) : NULL;
    jdoc_free(d);
    return out;
}

char *request_route_body(const struct req_route *rr, const char *body, size_t len,
                         const bool *keep, bool whole, bool *sent, size_t *outlen,
                         bool *failed, const char *const *links)
{
    bool all = true;
    bool headers = links && rr->headers_at && rr->doc;
    *failed = false;
    for (size_t k = 0; k < rr->n; k++) {
        if (sent)
            sent[k] = keep[k];
        if (!keep[k]) {
            all = false;
            if (!rr->rcpt[k].removable)
                *failed = true;         /* a header, or a pointer without "*" */
        }
    }
    if (*failed || (all && !headers))
        return NULL;
    if (rr->pairs) {
        bool *drop = calloc(rr->n_pairs ? rr->n_pairs : 1, sizeof *drop);
        if (!drop) {
            *failed = true;
            return NULL;
        }
        for (size_t k = 0; k < rr->n_places; k++)
            if (!keep[rr->place[k].recipient])
                drop[rr->place[k].pair] = true;
        char *out = form_without(body, rr->pairs, rr->n_pairs, drop, outlen);
        free(drop);
        *failed = !out;
        return out;
    }
    struct jdoc *d = rr->doc;
    jdoc_unmark(d);
    for (size_t k = 0; k < rr->n_places; k++) {
        const struct req_place *p = &rr->place[k];
        if (!keep[p->recipient])
            jdoc_remove(d, p->match.star[p->match.n_stars - 1]);
    }
    /* An outer element (a personalization) that keeps none of the recipients
     * that count goes whole: with WHOLE, those first-listed ("to": SendGrid
     * refuses a personalization without one); for one recipient's copy,
     * any.  One pass to mark the outer elements kept, one to cut the rest:
     * linear, so a thousand recipients' copies stay cheap. */
    unsigned top = 0;
    for (size_t k = 0; k < rr->n_places; k++)
        if (rr->place[k].match.n_stars >= 2 && rr->place[k].match.star[0] >= top)
            top = rr->place[k].match.star[0] + 1;
    if (top) {
        bool *held = calloc(top, sizeof *held);
        if (!held) {
            *failed = true;
            return NULL;
        }
        for (size_t k = 0; k < rr->n_places; k++) {
            const struct req_place *p = &rr->place[k];
            if (p->match.n_stars >= 2 && (!whole || p->spec == 0) && keep[p->recipient])
                held[p->match.star[0]] = true;
        }
        for (size_t k = 0; k < rr->n_places; k++) {
            const struct req_place *p = &rr->place[k];
            if (p->match.n_stars >= 2 && (!whole || p->spec == 0) && !held[p->match.star[0]])
                jdoc_remove(d, p->match.star[0]);
        }
        free(held);
    }
    if (!whole)
        rekey_alone(rr, d, keep);
    if (headers)
        add_unsubscribe_headers(rr, d, keep, links);
    /* Who is still there: a recipient is sent while one of its places stays. */
    if (sent) {
        for (size_t k = 0; k < rr->n; k++)
            sent[k] = false;
        for (size_t k = 0; k < rr->n_places; k++) {
            const struct req_place *p = &rr->place[k];
            if (keep[p->recipient] && !jdoc_removed(d, p->match.node))
                sent[p->recipient] = true;
        }
    }
    char *out = jdoc_text(d, outlen);
    jdoc_unmark(d);
    *failed = !out;
    (void)len;
    return out;
}

/* ---- POST /v1/admin/campaigns/resume ---------------------------------------- */

int request_resume(const char *body, size_t len, struct req_resume *out, struct field_error *e)
{
    static const char *const fields[] = { "campaign", NULL };
    memset(out, 0, sizeof *out);
    json_t *obj = out->json = body_object(body, len, fields, e);
    if (!obj)
        return -1;
    return validate_text(obj, "campaign", true, 1, REQ_CAMPAIGN_MAX, &out->campaign, NULL, e);
}

/* ---- POST /v1/unsubscribe-links ------------------------------------------- */

int request_unsubscribe_link(const struct config *cfg, const char *body, size_t len,
                             struct req_link *out, struct field_error *e)
{
    static const char *const fields[] = { "user", "channel", "category", NULL };
    memset(out, 0, sizeof *out);
    json_t *obj = out->json = body_object(body, len, fields, e);
    if (!obj)
        return -1;
    if (validate_string(obj, "user", true, 1, REQ_USER_MAX, &out->user, &out->user_len, e) ||
        validate_string(obj, "channel", false, 1, CONFIG_NAME_MAX, &out->channel, NULL, e) ||
        validate_string(obj, "category", false, 1, CONFIG_NAME_MAX, &out->category, NULL, e))
        return -1;
    if (!out->channel || strcmp(out->channel, "*") == 0)
        out->channel = "";
    else if (!config_channel(cfg, out->channel))
        return validate_fail(e, API_UNKNOWN_CHANNEL, "channel",
                             "channel must be a configured channel, \"*\" or absent");
    if (!out->category || strcmp(out->category, "*") == 0)
        out->category = "";
    else if (!config_category(cfg, out->category))
        return validate_fail(e, API_UNKNOWN_CATEGORY, "category",
                             "category must be a configured category, \"*\" or absent");
    if (!cfg->public.enabled)
        return validate_fail(e, API_NO_PUBLIC, NULL,
                             "no public listener is configured: set public.base_url and "
                             "public.listen");
    return 0;
}

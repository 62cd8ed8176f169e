/*
 * fuzz_request: a hostile request body through the checks of
 *   POST /v1/decide   (src/api_decide.c: api_decide)
 *   POST /v1/release  (src/api_decide.c: api_release)
 *   POST /v1/send     (src/api_send.c: api_send + decide_and_send)
 *   a transparent route (src/api_send.c: api_route's extract, JSON pointers)
 * without Redis or HTTP: each handler's validation sequence is replayed here
 * step by step, then what the handler does with the fields (pseudonyms,
 * script arguments, the delivery blob), stopping where it would call Redis.
 *
 * Oracles besides the sanitizers: an error always has a message; script
 * arguments stay inside their buffer; a delivery blob parses back to the
 * message it was built from.
 *
 * Keep in step with the handlers: when a handler gains a field or a check,
 * add it here.
 */
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capgate/config.h"
#include "capgate/decision.h"
#include "capgate/delivery.h"
#include "capgate/jsonptr.h"
#include "capgate/pseudonym.h"
#include "capgate/tz.h"
#include "capgate/validate.h"
#include "fuzz_common.h"

#define NOW_S 1700000000   /* fixed: a crash must replay the same way */

static struct config cfg;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc; (void)argv;
    cfg = fz_config();
    fz_tz();
    fz_pseudonym();
    return 0;
}

/* A failed check: what reply_error() would read. */
static void check_error(const struct field_error *e)
{
    FUZZ_CHECK((unsigned)e->code < API_ERROR__COUNT);
    size_t n = strnlen(e->message, sizeof e->message);
    FUZZ_CHECK(n > 0 && n < sizeof e->message);
    if (e->field)
        FUZZ_CHECK(strlen(e->field) < 1u << 20);   /* readable (ASan: not freed) */
}

static void check_args(const struct script_args *a)
{
    FUZZ_CHECK(a->argc >= a->nkeys && a->argc <= SCRIPT_ARGS_MAX);
    FUZZ_CHECK(a->used <= sizeof a->buf);
    for (int k = 0; k < a->argc; k++) {
        FUZZ_CHECK(a->argv[k] != NULL || a->argvlen[k] == 0);
        /* Every argument is readable over its whole length. */
        volatile unsigned char sum = 0;
        for (size_t i = 0; i < a->argvlen[k]; i++)
            sum ^= (unsigned char)a->argv[k][i];
        (void)sum;
    }
}

static bool same(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

/* The blob survives the round trip through Redis unchanged. */
static void check_blob(const char *blob, const struct message *m)
{
    struct message back;
    FUZZ_CHECK(delivery_parse(blob, strlen(blob), &back, fz_pseudonym()) == 0);
    FUZZ_CHECK(back.route == m->route);
    FUZZ_CHECK(same(back.user, m->user) && same(back.message, m->message));
    FUZZ_CHECK(same(back.message_id, m->message_id) && same(back.channel, m->channel));
    FUZZ_CHECK(same(back.category, m->category) && same(back.campaign, m->campaign));
    FUZZ_CHECK(same(back.tz, m->tz));
    FUZZ_CHECK(back.body_len == m->body_len && memcmp(back.body, m->body, m->body_len) == 0);
    if (m->route) {
        FUZZ_CHECK(same(back.method, m->method));
        FUZZ_CHECK(same(back.query, m->query ? m->query : ""));
        /* The headers went through pseudonym_seal / pseudonym_open. */
        FUZZ_CHECK(back.headers && json_is_array(back.headers));
        FUZZ_CHECK(m->headers ? json_equal(back.headers, m->headers)
                              : json_array_size(back.headers) == 0);
    }
    delivery_clear(&back);
}

/* ---- POST /v1/decide (api_decide) -------------------------------------- */

#define USER_MAX 256
#define MESSAGE_ID_MAX 128
#define CAMPAIGN_MAX 256
#define TZ_NAME_MAX 64

struct decide_call_copy {      /* the parts of api_decide.c's struct decide_call */
    char user[PSEUDONYM_USER_HEX + 1];
    bool dry_run;
    char channel[33];
    char message_id[MESSAGE_ID_MAX + 1];
};

static void run_decide(const char *body, size_t body_len)
{
    static const char *const fields[] = { "user", "channel", "category", "campaign",
                                          "message_id", "tz", "dry_run", NULL };
    const char *user, *channel, *category, *campaign, *message_id, *tzname;
    size_t user_len, message_id_len;
    struct field_error e;
    struct decide_input in;
    bool dry_run;

    json_t *obj = validate_object(body, body_len, &e);
    if (!obj) {
        check_error(&e);
        return;
    }
    if (validate_known_fields(obj, fields, &e) ||
        validate_string(obj, "user", true, 1, USER_MAX, &user, &user_len, &e) ||
        validate_string(obj, "channel", true, 1, 64, &channel, NULL, &e) ||
        validate_string(obj, "category", false, 1, 64, &category, NULL, &e) ||
        validate_string(obj, "campaign", false, 1, CAMPAIGN_MAX, &campaign, NULL, &e) ||
        validate_string(obj, "message_id", true, 1, MESSAGE_ID_MAX, &message_id,
                        &message_id_len, &e) ||
        validate_string(obj, "tz", false, 1, TZ_NAME_MAX, &tzname, NULL, &e) ||
        validate_bool(obj, "dry_run", &dry_run, &e)) {
        check_error(&e);
        json_decref(obj);
        return;
    }
    FUZZ_CHECK(user && user_len >= 1 && user_len <= USER_MAX);
    FUZZ_CHECK(message_id && message_id_len >= 1 && message_id_len <= MESSAGE_ID_MAX);
    memset(&in, 0, sizeof in);
    in.channel = config_channel(&cfg, channel);
    if (!in.channel)
        goto out;
    in.category = config_category(&cfg, category ? category : cfg.default_category);
    if (!in.category)
        goto out;
    if (tzname) {
        in.zone = tz_db_find(fz_tz(), tzname);
        if (!in.zone)
            goto out;
    } else if (cfg.quiet_hours.enabled) {
        in.zone = tz_db_find(fz_tz(), cfg.quiet_hours.default_tz);
    }
    struct decide_call_copy *call = calloc(1, sizeof *call);
    FUZZ_CHECK(call);
    call->dry_run = dry_run;
    snprintf(call->channel, sizeof call->channel, "%s", in.channel->name);
    memcpy(call->message_id, message_id, message_id_len);
    pseudonym_user(fz_pseudonym(), user, user_len, in.user);
    pseudonym_message(fz_pseudonym(), message_id, message_id_len, in.message);
    memcpy(call->user, in.user, sizeof call->user);
    FUZZ_CHECK(strlen(in.user) == PSEUDONYM_USER_HEX && strlen(in.message) == PSEUDONYM_SHORT_HEX);
    in.campaign = campaign;
    in.dry_run = dry_run;

    struct script_args args;
    decision_decide_args(&cfg, &in, NOW_S, &args);
    check_args(&args);
    /* The answer echoes message_id: it must be a string jansson takes. */
    json_t *echo = json_string(call->message_id);
    FUZZ_CHECK(echo);
    json_decref(echo);
    free(call);
out:
    json_decref(obj);
}

/* ---- POST /v1/release (api_release) ------------------------------------ */

static void run_release(const char *body, size_t body_len)
{
    static const char *const fields[] = { "user", "message_id", NULL };
    const char *user, *message_id;
    size_t user_len, message_id_len;
    char user_hash[PSEUDONYM_USER_HEX + 1], message_hash[PSEUDONYM_SHORT_HEX + 1];
    struct field_error e;

    json_t *obj = validate_object(body, body_len, &e);
    if (!obj) {
        check_error(&e);
        return;
    }
    if (validate_known_fields(obj, fields, &e) ||
        validate_string(obj, "user", true, 1, USER_MAX, &user, &user_len, &e) ||
        validate_string(obj, "message_id", true, 1, MESSAGE_ID_MAX, &message_id,
                        &message_id_len, &e)) {
        check_error(&e);
        json_decref(obj);
        return;
    }
    pseudonym_user(fz_pseudonym(), user, user_len, user_hash);
    pseudonym_message(fz_pseudonym(), message_id, message_id_len, message_hash);
    json_decref(obj);
    struct script_args args;
    decision_release_args(&cfg, user_hash, message_hash, &args);
    check_args(&args);
}

/* ---- POST /v1/send (api_send, decide_and_send) ------------------------- */

struct send_copy {             /* the parts of api_send.c's struct send_call */
    struct message m;
    char *blob;
    char user[PSEUDONYM_USER_HEX + 1];
    char message[PSEUDONYM_SHORT_HEX + 1];
    char message_id[129];
    char channel[65], category[65];
    char *campaign, *tz, *method, *query;
};

static void send_free(struct send_copy *c)
{
    free(c->m.body);
    json_decref(c->m.headers);
    free(c->blob);
    free(c->campaign);
    free(c->tz);
    free(c->method);
    free(c->query);
    free(c);
}

/* decide_and_send up to the store call. */
static void decide_and_send(struct send_copy *c, int priority, const char *collapse,
                            const char *user, size_t user_len)
{
    pseudonym_user(fz_pseudonym(), user, user_len, c->user);
    pseudonym_message(fz_pseudonym(), c->message_id, strlen(c->message_id), c->message);
    c->m.user = c->user;
    c->m.message = c->message;
    c->m.message_id = c->message_id;
    c->m.channel = c->channel;
    c->m.category = c->category;
    c->m.campaign = c->campaign;
    c->m.tz = c->tz;
    c->m.method = c->method ? c->method : "POST";
    c->m.query = c->query;
    c->blob = delivery_blob(&c->m, fz_pseudonym());
    FUZZ_CHECK(c->blob);     /* only out of memory may fail here */
    check_blob(c->blob, &c->m);
    struct enqueue q = { .blob = c->blob, .blob_len = strlen(c->blob), .priority = priority,
                         .collapse = collapse };
    struct decide_input in;
    memset(&in, 0, sizeof in);
    memcpy(in.user, c->user, sizeof in.user);
    memcpy(in.message, c->message, sizeof in.message);
    in.channel = config_channel(&cfg, c->channel);
    in.category = config_category(&cfg, c->category);
    FUZZ_CHECK(in.channel && in.category);
    in.campaign = c->campaign;
    in.zone = c->tz ? tz_db_find(fz_tz(), c->tz)
            : cfg.quiet_hours.enabled ? tz_db_find(fz_tz(), cfg.quiet_hours.default_tz) : NULL;
    in.enqueue = &q;
    struct script_args args;
    decision_decide_args(&cfg, &in, NOW_S, &args);
    check_args(&args);
    FUZZ_CHECK(args.argc > 0 && args.argvlen[args.argc - 2] == q.blob_len);
}

static void run_send(const char *body, size_t body_len)
{
    static const char *const fields[] = { "user", "channel", "category", "campaign", "message_id",
                                          "tz", "payload", "collapse_key", "priority", NULL };
    const char *user, *channel, *category, *campaign, *message_id, *tzname, *collapse;
    size_t user_len;
    struct field_error e;

    json_t *obj = validate_object(body, body_len, &e);
    if (!obj) {
        check_error(&e);
        return;
    }
    if (validate_known_fields(obj, fields, &e) ||
        validate_string(obj, "user", true, 1, 256, &user, &user_len, &e) ||
        validate_string(obj, "channel", true, 1, 64, &channel, NULL, &e) ||
        validate_string(obj, "category", false, 1, 64, &category, NULL, &e) ||
        validate_string(obj, "campaign", false, 1, 256, &campaign, NULL, &e) ||
        validate_string(obj, "message_id", true, 1, 128, &message_id, NULL, &e) ||
        validate_string(obj, "tz", false, 1, 64, &tzname, NULL, &e) ||
        validate_string(obj, "collapse_key", false, 1, 128, &collapse, NULL, &e))
        goto invalid;
    json_t *payload = json_object_get(obj, "payload");
    if (!payload) {
        e = (struct field_error){ .code = API_MISSING_FIELD, .field = "payload" };
        snprintf(e.message, sizeof e.message, "payload is required");
        goto invalid;
    }
    json_t *prio = json_object_get(obj, "priority");
    if (json_is_null(prio))
        prio = NULL;
    if (prio && (!json_is_integer(prio) || json_integer_value(prio) < 0 ||
                 json_integer_value(prio) > 9)) {
        e = (struct field_error){ .code = API_INVALID_FIELD, .field = "priority" };
        snprintf(e.message, sizeof e.message, "priority must be an integer 0..9");
        goto invalid;
    }
    /* The daemon refuses channels without an upstream; "push" and "sms"
     * have none here, so only "email" goes on. */
    const struct cfg_channel *ch = config_channel(&cfg, channel);
    if (!ch || !ch->upstream.enabled ||
        !config_category(&cfg, category ? category : cfg.default_category) ||
        (tzname && !tz_db_find(fz_tz(), tzname))) {
        json_decref(obj);
        return;
    }
    struct send_copy *c = calloc(1, sizeof *c);
    char *payload_text = json_dumps(payload, JSON_COMPACT | JSON_ENCODE_ANY);
    FUZZ_CHECK(c && payload_text);
    snprintf(c->message_id, sizeof c->message_id, "%s", message_id);
    snprintf(c->channel, sizeof c->channel, "%s", channel);
    snprintf(c->category, sizeof c->category, "%s", category ? category : cfg.default_category);
    c->campaign = campaign ? strdup(campaign) : NULL;
    c->tz = tzname ? strdup(tzname) : NULL;
    c->m.body = payload_text;
    c->m.body_len = strlen(payload_text);
    char *collapse_copy = collapse ? strdup(collapse) : NULL;
    int priority = prio ? (int)json_integer_value(prio) : 0;
    char *user_copy = strndup(user, user_len);
    json_decref(obj);
    FUZZ_CHECK(user_copy);
    decide_and_send(c, priority, collapse_copy, user_copy, user_len);
    send_free(c);
    free(user_copy);
    free(collapse_copy);
    return;

invalid:
    check_error(&e);
    json_decref(obj);
}

/* ---- a transparent route (api_route) ------------------------------------ */

/* api_send.c's extract() for the "json:" form. */
static bool extract(json_t *body, const char *spec, char *out, size_t size)
{
    const char *v = NULL;
    if (body) {
        json_t *j = json_pointer(body, spec + 5);
        if (json_is_string(j))
            v = json_string_value(j);
        else if (json_is_integer(j)) {
            snprintf(out, size, "%lld", (long long)json_integer_value(j));
            return true;
        }
    }
    if (!v || !*v || strlen(v) >= size)
        return false;
    snprintf(out, size, "%s", v);
    return true;
}

/* The request's headers as api_route's keep_header collects them:
 * [[name, value], ...] without the hop-by-hop ones.  Taken here from the
 * body's "headers" object, when it has one (names and values are any
 * UTF-8 jansson accepts, as from the HTTP layer). */
static json_t *route_headers(const char *body, size_t body_len)
{
    json_t *arr = json_array();
    json_t *doc = json_loadb(body, body_len, 0, NULL);
    json_t *h = json_object_get(doc, "headers");
    const char *name;
    json_t *value;
    json_array_append_new(arr, json_pack("[s, s]", "Content-Type", "application/json"));
    json_object_foreach(h, name, value) {
        if (json_is_string(value) && !delivery_hop_by_hop(name))
            json_array_append_new(arr, json_pack("[s, s]", name, json_string_value(value)));
    }
    json_decref(doc);
    return arr;
}

static void run_route(const char *body, size_t body_len)
{
    json_t *json = body_len ? json_loadb(body, body_len, 0, NULL) : NULL;
    char user[257], message_id[129], campaign[257], category[65];
    struct {
        const char *spec;
        char *out;
        size_t size;
        bool required;
    } want[] = {
        { "json:/personalizations/0/to/0/email", user, sizeof user, true },
        { "json:/custom_args/message~1id", message_id, sizeof message_id, true },
        { "json:/campaign", campaign, sizeof campaign, false },
        { "json:/category", category, sizeof category, false },
    };
    for (size_t k = 0; k < sizeof want / sizeof want[0]; k++) {
        want[k].out[0] = '\0';
        if (!extract(json, want[k].spec, want[k].out, want[k].size) && want[k].required) {
            json_decref(json);
            return;
        }
    }
    json_decref(json);
    if (category[0] && !config_category(&cfg, category))
        return;
    struct send_copy *c = calloc(1, sizeof *c);
    json_t *headers = route_headers(body, body_len);
    FUZZ_CHECK(c && headers && (c->m.body = malloc(body_len + 1)));
    memcpy(c->m.body, body, body_len);
    c->m.body[body_len] = '\0';
    c->m.body_len = body_len;
    c->m.route = true;
    c->m.headers = headers;
    snprintf(c->message_id, sizeof c->message_id, "%s", message_id);
    snprintf(c->channel, sizeof c->channel, "%s", "email");
    snprintf(c->category, sizeof c->category, "%s", category[0] ? category : cfg.default_category);
    c->campaign = campaign[0] ? strdup(campaign) : NULL;
    c->method = strdup("POST");
    c->query = strdup("a=1&b=%20");
    decide_and_send(c, 0, NULL, user, strlen(user));
    send_free(c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 1 << 16)        /* limits.max_body_bytes' default */
        return 0;
    /* The body as the HTTP layer hands it over: a copy of exactly SIZE bytes
     * (ASan catches any read past the end: bodies are not NUL-terminated). */
    char *body = malloc(size ? size : 1);
    FUZZ_CHECK(body);
    memcpy(body, data, size);
    run_decide(body, size);
    run_release(body, size);
    run_send(body, size);
    run_route(body, size);
    free(body);
    return 0;
}

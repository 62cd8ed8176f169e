/* Unit tests: the request parsers (src/requests.c), the pure half of every
 * handler.  The config is the fuzzers' hand-built one. */
#include "capgate/requests.h"
#include "../fuzz/fuzz_common.h"
#include "unit.h"

static struct config cfg;

#define BODY(s) s, strlen(s)

TEST(decide_fast_and_general_paths_agree)
{
    struct req_decide a, b;
    struct field_error e;
    const char *flat = "{\"user\":\"u1\",\"channel\":\"email\",\"message_id\":\"m1\",\"campaign\":\"c\"}";
    const char *nested = "{\"user\":\"u\\u0031\",\"channel\":\"email\",\"message_id\":\"m1\",\"campaign\":\"c\"}";
    CHECK_EQ_INT(request_decide(&cfg, fz_tz(), BODY(flat), &a, &e), 0);
    CHECK(a.json == NULL);                       /* the flat path built nothing */
    CHECK_EQ_INT(request_decide(&cfg, fz_tz(), BODY(nested), &b, &e), 0);
    CHECK(b.json != NULL);
    CHECK_EQ_INT(a.user_len, b.user_len);
    CHECK(memcmp(a.user, b.user, a.user_len) == 0);
    CHECK(a.channel == b.channel && a.category == b.category);
    CHECK_EQ_STR(a.category->name, "marketing");
    CHECK_EQ_STR(a.campaign, "c");
    request_free(b.json);
}

TEST(decide_errors_name_the_field)
{
    struct req_decide d;
    struct field_error e;
    CHECK_EQ_INT(request_decide(&cfg, fz_tz(), BODY("{\"user\":\"u\",\"channel\":\"fax\",\"message_id\":\"m\"}"), &d, &e), -1);
    CHECK_EQ_INT(e.code, API_UNKNOWN_CHANNEL);
    request_free(d.json);
    CHECK_EQ_INT(request_decide(&cfg, fz_tz(), BODY("{\"user\":\"u\",\"channel\":\"email\"}"), &d, &e), -1);
    CHECK_EQ_INT(e.code, API_MISSING_FIELD);
    CHECK_EQ_STR(e.field, "message_id");
    request_free(d.json);
    CHECK_EQ_INT(request_decide(&cfg, fz_tz(), BODY("{\"user\":\"u\",\"channel\":\"email\",\"message_id\":\"m\",\"dryrun\":true}"), &d, &e), -1);
    CHECK_EQ_INT(e.code, API_INVALID_FIELD);
    CHECK_EQ_STR(e.field, "dryrun");             /* the error keeps its own copy of the key */
    request_free(d.json);
    CHECK_EQ_INT(request_decide(&cfg, fz_tz(), BODY("{\"user\":\"u\",\"channel\":\"email\",\"message_id\":\"m\",\"tz\":\"Mars/Olympus\"}"), &d, &e), -1);
    CHECK_EQ_STR(e.field, "tz");
    request_free(d.json);
}

TEST(control_characters_are_refused_where_they_travel)
{
    struct req_decide d;
    struct field_error e;
    CHECK_EQ_INT(request_decide(&cfg, fz_tz(), BODY("{\"user\":\"u\",\"channel\":\"email\",\"message_id\":\"a\\r\\nb\"}"), &d, &e), -1);
    CHECK_EQ_STR(e.field, "message_id");
    request_free(d.json);
    /* A user id may hold anything: it is hashed, never sent on. */
    CHECK_EQ_INT(request_decide(&cfg, fz_tz(), BODY("{\"user\":\"a\\tb\",\"channel\":\"email\",\"message_id\":\"m\"}"), &d, &e), 0);
    request_free(d.json);
    struct req_send s;
    CHECK_EQ_INT(request_send(&cfg, fz_tz(), BODY("{\"user\":\"u\",\"channel\":\"email\",\"message_id\":\"m\",\"collapse_key\":\"k\\u007f\",\"payload\":1}"), &s, &e), -1);
    CHECK_EQ_STR(e.field, "collapse_key");
    request_send_free(&s);
}

TEST(send_needs_an_upstream_and_a_payload)
{
    struct req_send s;
    struct field_error e;
    CHECK_EQ_INT(request_send(&cfg, fz_tz(), BODY("{\"user\":\"u\",\"channel\":\"push\",\"message_id\":\"m\",\"payload\":{}}"), &s, &e), -1);
    CHECK_EQ_INT(e.code, API_NO_UPSTREAM);
    request_send_free(&s);
    CHECK_EQ_INT(request_send(&cfg, fz_tz(), BODY("{\"user\":\"u\",\"channel\":\"email\",\"message_id\":\"m\"}"), &s, &e), -1);
    CHECK_EQ_STR(e.field, "payload");
    request_send_free(&s);
    CHECK_EQ_INT(request_send(&cfg, fz_tz(), BODY("{\"user\":\"u\",\"channel\":\"email\",\"message_id\":\"m\",\"priority\":10,\"payload\":[]}"), &s, &e), -1);
    CHECK_EQ_STR(e.field, "priority");
    request_send_free(&s);
    CHECK_EQ_INT(request_send(&cfg, fz_tz(), BODY("{\"user\":\"u\",\"channel\":\"email\",\"message_id\":\"m\",\"priority\":9,\"payload\":{\"a\": [1, 2]}}"), &s, &e), 0);
    CHECK_EQ_STR(s.payload, "{\"a\":[1,2]}");
    CHECK_EQ_INT(s.priority, 9);
    request_send_free(&s);
}

TEST(events_say_what_they_do)
{
    struct req_event ev;
    struct field_error e;
    CHECK_EQ_INT(request_event(&cfg, BODY("{\"user\":\"u\",\"type\":\"unsubscribe\",\"channel\":\"email\",\"campaign\":\"spring\"}"), &ev, &e), 0);
    CHECK_EQ_INT(ev.kind, EVENT_UNSUBSCRIBE);
    CHECK_EQ_STR(ev.scope, "email|*");
    CHECK_EQ_STR(ev.detail, "unsubscribe campaign=spring");
    request_free(ev.json);
    CHECK_EQ_INT(request_event(&cfg, BODY("{\"user\":\"u\",\"type\":\"hard_bounce\"}"), &ev, &e), -1);
    CHECK_EQ_STR(e.field, "channel");
    request_free(ev.json);
    CHECK_EQ_INT(request_event(&cfg, BODY("{\"user\":\"u\",\"type\":\"spam\"}"), &ev, &e), -1);
    CHECK_EQ_STR(e.field, "type");
    request_free(ev.json);
}

/* The text of an inbound SMS: only its keyword leaves the parser. */
TEST(inbound_sms_keywords)
{
    struct req_event ev;
    struct field_error e;
    CHECK_EQ_INT(request_event(&cfg, BODY("{\"user\":\"u\",\"type\":\"inbound_sms\",\"text\":\" Stop. \",\"campaign\":\"spring\"}"), &ev, &e), 0);
    CHECK_EQ_INT(ev.kind, EVENT_INBOUND_SMS);
    CHECK_EQ_INT(ev.keyword, SMS_KEYWORD_STOP);
    CHECK(ev.records && !ev.opt_in);
    CHECK_EQ_STR(ev.channel, "sms");              /* the default: the channel named sms */
    CHECK_EQ_STR(ev.scope, "sms|*");
    CHECK_EQ_STR(ev.effect, "opted out of sms|*");
    CHECK_EQ_STR(ev.detail, "inbound_sms stop campaign=spring");
    request_free(ev.json);
    CHECK_EQ_INT(request_event(&cfg, BODY("{\"user\":\"u\",\"type\":\"inbound_sms\",\"text\":\"UNSTOP\",\"channel\":\"push\"}"), &ev, &e), 0);
    CHECK(ev.records && ev.opt_in);
    CHECK_EQ_STR(ev.scope, "push|*");
    CHECK_EQ_STR(ev.detail, "inbound_sms start");
    request_free(ev.json);
    CHECK_EQ_INT(request_event(&cfg, BODY("{\"user\":\"u\",\"type\":\"inbound_sms\",\"text\":\"info\"}"), &ev, &e), 0);
    CHECK(ev.keyword == SMS_KEYWORD_HELP && !ev.records);
    request_free(ev.json);
    CHECK_EQ_INT(request_event(&cfg, BODY("{\"user\":\"u\",\"type\":\"inbound_sms\",\"text\":\"please stop texting me\"}"), &ev, &e), 0);
    CHECK(ev.keyword == SMS_KEYWORD_NONE && !ev.records);
    CHECK_EQ_STR(ev.detail, "inbound_sms");
    request_free(ev.json);
    CHECK_EQ_INT(request_event(&cfg, BODY("{\"user\":\"u\",\"type\":\"inbound_sms\",\"text\":\"\"}"), &ev, &e), 0);
    CHECK(ev.keyword == SMS_KEYWORD_NONE && !ev.records);   /* an MMS with no words */
    request_free(ev.json);
    /* Other types record as before, and take no text. */
    CHECK_EQ_INT(request_event(&cfg, BODY("{\"user\":\"u\",\"type\":\"open\",\"text\":null}"), &ev, &e), 0);
    CHECK(ev.records && !ev.opt_in);
    request_free(ev.json);
}

TEST(inbound_sms_refusals_quote_no_text)
{
    struct req_event ev;
    struct field_error e;
    char body[8192];
    CHECK_EQ_INT(request_event(&cfg, BODY("{\"user\":\"u\",\"type\":\"inbound_sms\"}"), &ev, &e), -1);
    CHECK_EQ_INT(e.code, API_MISSING_FIELD);
    CHECK_EQ_STR(e.field, "text");
    request_free(ev.json);
    CHECK_EQ_INT(request_event(&cfg, BODY("{\"user\":\"u\",\"type\":\"inbound_sms\",\"text\":7}"), &ev, &e), -1);
    CHECK_EQ_STR(e.field, "text");
    request_free(ev.json);
    CHECK_EQ_INT(request_event(&cfg, BODY("{\"user\":\"u\",\"type\":\"open\",\"text\":\"STOP\"}"), &ev, &e), -1);
    CHECK_EQ_STR(e.field, "text");
    request_free(ev.json);
    CHECK_EQ_INT(request_event(&cfg, BODY("{\"user\":\"u\",\"type\":\"inbound_sms\",\"text\":\"STOP\",\"category\":\"marketing\"}"), &ev, &e), -1);
    CHECK_EQ_STR(e.field, "category");
    request_free(ev.json);
    CHECK_EQ_INT(request_event(&cfg, BODY("{\"user\":\"u\",\"type\":\"inbound_sms\",\"text\":\"STOP\",\"channel\":\"fax\"}"), &ev, &e), -1);
    CHECK_EQ_INT(e.code, API_UNKNOWN_CHANNEL);
    request_free(ev.json);
    /* Without a channel named sms, the text must name the SMS channel. */
    struct config no_sms = cfg;
    no_sms.n_channels = 2;                        /* email, push */
    CHECK_EQ_INT(request_event(&no_sms, BODY("{\"user\":\"u\",\"type\":\"inbound_sms\",\"text\":\"STOP\"}"), &ev, &e), -1);
    CHECK_EQ_INT(e.code, API_UNKNOWN_CHANNEL);
    CHECK_EQ_STR(e.field, "channel");
    request_free(ev.json);
    /* 1600 characters fit, however many bytes they take; 1601 do not. */
    for (int n = 1600; n <= 1601; n++) {
        int at = snprintf(body, sizeof body, "{\"user\":\"u\",\"type\":\"inbound_sms\",\"text\":\"");
        for (int k = 0; k < n; k++)
            at += snprintf(body + at, sizeof body - at, "%s", k % 2 ? "\xc3\xa9" : "Z");
        at += snprintf(body + at, sizeof body - at, "\"}");
        CHECK_EQ_INT(request_event(&cfg, body, (size_t)at, &ev, &e), n == 1600 ? 0 : -1);
        if (n == 1601) {
            CHECK_EQ_STR(e.field, "text");
            CHECK(strstr(e.message, "ZZ") == NULL && strstr(e.message, "1600") != NULL);
        }
        request_free(ev.json);
    }
}

TEST(consent_takes_stars)
{
    struct req_consent c;
    struct field_error e;
    CHECK_EQ_INT(request_consent(&cfg, BODY("{\"user\":\"u\",\"channel\":\"*\",\"category\":\"*\",\"state\":\"opt_out\",\"source\":\"s\"}"), &c, &e), 0);
    CHECK(!c.opt_in);
    request_free(c.json);
    CHECK_EQ_INT(request_consent(&cfg, BODY("{\"user\":\"u\",\"channel\":\"*\",\"category\":\"*\",\"state\":\"maybe\",\"source\":\"s\"}"), &c, &e), -1);
    CHECK_EQ_STR(e.field, "state");
    request_free(c.json);
}

TEST(consent_notice_and_legal_basis)
{
    struct req_consent c;
    struct field_error e;
#define CONSENT(extra) BODY("{\"user\":\"u\",\"channel\":\"*\",\"category\":\"*\",\"state\":\"opt_in\",\"source\":\"s\"" extra "}")
    CHECK_EQ_INT(request_consent(&cfg, CONSENT(""), &c, &e), 0);
    CHECK(c.notice == NULL && c.legal_basis == NULL);
    request_free(c.json);
    CHECK_EQ_INT(request_consent(&cfg, CONSENT(",\"notice\":\"privacy-v3\",\"legal_basis\":\"soft_opt_in\""), &c, &e), 0);
    CHECK_EQ_STR(c.notice, "privacy-v3");
    CHECK_EQ_STR(c.legal_basis, "soft_opt_in");
    request_free(c.json);
    CHECK_EQ_INT(request_consent(&cfg, CONSENT(",\"legal_basis\":\"vital_interest\""), &c, &e), -1);
    CHECK_EQ_STR(e.field, "legal_basis");
    request_free(c.json);
    CHECK_EQ_INT(request_consent(&cfg, CONSENT(",\"legal_basis\":7"), &c, &e), -1);
    CHECK_EQ_STR(e.field, "legal_basis");
    request_free(c.json);
    CHECK_EQ_INT(request_consent(&cfg, CONSENT(",\"notice\":\"v1\\u0007\""), &c, &e), -1);
    CHECK_EQ_STR(e.field, "notice");
    request_free(c.json);
    CHECK_EQ_INT(request_consent(&cfg, CONSENT(",\"notice\":\"\""), &c, &e), -1);
    CHECK_EQ_STR(e.field, "notice");
    request_free(c.json);
#undef CONSENT
    /* 128 characters pass, 129 do not; a character may be several bytes. */
    for (int n = 127; n <= 129; n++) {
        char body[1024];
        int at = snprintf(body, sizeof body, "{\"user\":\"u\",\"channel\":\"*\",\"category\":\"*\","
                          "\"state\":\"opt_in\",\"source\":\"s\",\"notice\":\"");
        for (int k = 0; k < n; k++)
            at += snprintf(body + at, sizeof body - (size_t)at, "\xc3\xa9");
        at += snprintf(body + at, sizeof body - (size_t)at, "\"}");
        CHECK_EQ_INT(request_consent(&cfg, body, (size_t)at, &c, &e), n <= 128 ? 0 : -1);
        request_free(c.json);
    }
}

static const char *headers(void *ctx, const char *name)
{
    (void)ctx;
    return strcmp(name, "Idempotency-Key") == 0 ? "key-1" : NULL;
}

TEST(route_fields_from_pointers_and_headers)
{
    char *users[] = { "json:/to/*" };
    struct cfg_route route = { .path = "/p", .channel = "email", .users = users, .n_users = 1,
                               .message_id = "header:Idempotency-Key", .campaign = "json:/c" };
    struct req_route rr;
    struct field_error e;
    const char *ok = "{\"to\":[\"a@example.com\", \"b@example.com\", \"a@example.com\"],\"c\":7}";
    CHECK_EQ_INT(request_route(&cfg, &route, BODY(ok), headers, NULL, &rr, &e), 0);
    CHECK_EQ_INT(rr.n, 2);                       /* a person named twice counts once */
    CHECK_EQ_INT(rr.n_places, 3);
    CHECK_EQ_STR(rr.rcpt[1].id, "b@example.com");
    CHECK_EQ_STR(rr.rcpt[1].where, "/to/1");
    CHECK_EQ_STR(rr.message_id, "key-1");
    CHECK_EQ_STR(rr.campaign, "7");
    CHECK_EQ_STR(rr.cat->name, "marketing");
    bool keep[2] = { false, true }, sent[2];
    size_t len;
    bool failed;
    char *out = request_route_body(&rr, ok, strlen(ok), keep, true, sent, &len, &failed, NULL);
    CHECK_EQ_STR(out, "{\"to\":[\"b@example.com\"],\"c\":7}");   /* both places of a@ go */
    CHECK(!sent[0] && sent[1] && !failed);
    free(out);
    keep[0] = true;
    CHECK(request_route_body(&rr, ok, strlen(ok), keep, true, sent, &len, &failed, NULL) == NULL);
    CHECK(!failed);                              /* everyone kept: the body as it came */
    request_route_free(&rr);
    CHECK_EQ_INT(request_route(&cfg, &route, BODY("{\"to\":[]}"), headers, NULL, &rr, &e), -1);
    CHECK_EQ_INT(e.code, API_MISSING_FIELD);
    request_route_free(&rr);
    CHECK_EQ_INT(request_route(&cfg, &route, BODY("{\"to\":[\"a\"],\"c\":\"x\\ny\"}"), headers, NULL, &rr, &e), -1);
    CHECK_EQ_INT(e.code, API_INVALID_FIELD);
    CHECK_EQ_STR(e.field, "campaign");
    request_route_free(&rr);
    struct config small = cfg;
    small.limits.max_recipients = 1;
    CHECK_EQ_INT(request_route(&small, &route, BODY(ok), headers, NULL, &rr, &e), -1);
    CHECK_EQ_INT(e.code, API_TOO_MANY_RECIPIENTS);
    request_route_free(&rr);
}

/* One recipient's copy, as it waits in the queue: a cc or bcc recipient
 * whose personalization loses its "to" is written under "to" (SendGrid
 * refuses a personalization without one); a "to" that stays keeps it. */
TEST(alone_copy_of_a_cc_recipient_has_a_to)
{
    char *users[] = { "json:/p/*/to/*/email", "json:/p/*/cc/*/email", "json:/p/*/bcc/*/email" };
    struct cfg_route route = { .path = "/p", .channel = "email", .users = users, .n_users = 3,
                               .message_id = "header:Idempotency-Key" };
    struct req_route rr;
    struct field_error e;
    size_t len;
    bool failed;
    const char *b1 = "{\"p\":[{\"to\":[{\"email\":\"a\"}], \"cc\": [{\"email\":\"b\"}],"
                     "\"bcc\":[{\"email\":\"c\"}]}]}";
    CHECK_EQ_INT(request_route(&cfg, &route, BODY(b1), headers, NULL, &rr, &e), 0);
    CHECK_EQ_INT(rr.n, 3);
    bool keep[3] = { false, true, false };
    char *out = request_route_body(&rr, b1, strlen(b1), keep, false, NULL, &len, &failed, NULL);
    CHECK_EQ_STR(out, "{\"p\":[{\"to\": [{\"email\":\"b\"}]}]}");
    free(out);
    bool keep_c[3] = { false, false, true };
    out = request_route_body(&rr, b1, strlen(b1), keep_c, false, NULL, &len, &failed, NULL);
    CHECK_EQ_STR(out, "{\"p\":[{\"to\":[{\"email\":\"c\"}]}]}");
    CHECK(len <= strlen(b1));
    free(out);
    bool keep_a[3] = { true, false, false };
    out = request_route_body(&rr, b1, strlen(b1), keep_a, false, NULL, &len, &failed, NULL);
    CHECK_EQ_STR(out, "{\"p\":[{\"to\":[{\"email\":\"a\"}]}]}");
    free(out);
    request_route_free(&rr);
    /* A "to" that holds something besides recipients stays: the cc stays cc. */
    const char *b2 = "{\"p\":[{\"to\":[{\"email\":\"a\"},{\"name\":\"x\"}],\"cc\":[{\"email\":\"b\"}]}]}";
    CHECK_EQ_INT(request_route(&cfg, &route, BODY(b2), headers, NULL, &rr, &e), 0);
    bool keep2[2] = { false, true };
    out = request_route_body(&rr, b2, strlen(b2), keep2, false, NULL, &len, &failed, NULL);
    CHECK_EQ_STR(out, "{\"p\":[{\"to\":[{\"name\":\"x\"}],\"cc\":[{\"email\":\"b\"}]}]}");
    free(out);
    request_route_free(&rr);
}

TEST(route_recipients_in_form_bodies)
{
    char *users[] = { "form:To" };
    struct cfg_route route = { .path = "/2010-04-01/Accounts/AC1/Messages.json", .channel = "email",
                               .users = users, .n_users = 1, .message_id = "header:Idempotency-Key" };
    struct req_route rr;
    struct field_error e;
    const char *body = "To=%2B15551234567&From=%2B15550000000&Body=Hi+%F0%9F%91%8B";
    CHECK_EQ_INT(request_route(&cfg, &route, BODY(body), headers, NULL, &rr, &e), 0);
    CHECK_EQ_INT(rr.n, 1);
    CHECK_EQ_STR(rr.rcpt[0].id, "+15551234567");
    request_route_free(&rr);
}

int main(void)
{
    cfg = fz_config();
    RUN(decide_fast_and_general_paths_agree);
    RUN(decide_errors_name_the_field);
    RUN(control_characters_are_refused_where_they_travel);
    RUN(send_needs_an_upstream_and_a_payload);
    RUN(events_say_what_they_do);
    RUN(inbound_sms_keywords);
    RUN(inbound_sms_refusals_quote_no_text);
    RUN(consent_takes_stars);
    RUN(consent_notice_and_legal_basis);
    RUN(route_fields_from_pointers_and_headers);
    RUN(route_recipients_in_form_bodies);
    RUN(alone_copy_of_a_cc_recipient_has_a_to);
    return unit_done("test_requests");
}

/* Unit tests: request body validation (src/validate.c). */
#include "capgate/validate.h"
#include "unit.h"

static const char *const fields[] = { "user", "channel", "message_id", "dry_run", NULL };

TEST(rejects_empty_and_non_objects)
{
    struct field_error e;
    CHECK(validate_object("", 0, &e) == NULL);
    CHECK_EQ_INT(e.code, API_INVALID_JSON);
    CHECK(validate_object("[1,2]", 5, &e) == NULL);
    CHECK_EQ_INT(e.code, API_INVALID_JSON);
    CHECK(validate_object("{\"a\":", 5, &e) == NULL);
    CHECK_EQ_INT(e.code, API_INVALID_JSON);
    CHECK(validate_object("\"x\"", 3, &e) == NULL);
}

TEST(rejects_duplicate_keys_and_bad_utf8)
{
    struct field_error e;
    const char *dup = "{\"user\":\"a\",\"user\":\"b\"}";
    CHECK(validate_object(dup, strlen(dup), &e) == NULL);
    CHECK_EQ_INT(e.code, API_INVALID_JSON);
    const char bad[] = "{\"user\":\"\xff\xfe\"}";
    CHECK(validate_object(bad, sizeof bad - 1, &e) == NULL);
    CHECK_EQ_INT(e.code, API_INVALID_JSON);
    const char nul[] = "{\"user\":\"a\\u0000b\"}";
    CHECK(validate_object(nul, sizeof nul - 1, &e) == NULL);
}

/* jansson words its errors with up to 20 bytes of the body ("near '...'"):
 * a user id or a person's text.  The answer keeps the reason and the place. */
TEST(invalid_json_quotes_nothing_of_the_body)
{
    struct field_error e;
    const char ctl[] = "{\"user\":\"u\",\"text\":\"secret words\x01\"}";
    CHECK(validate_object(ctl, sizeof ctl - 1, &e) == NULL);
    CHECK_EQ_INT(e.code, API_INVALID_JSON);
    CHECK(strstr(e.message, "secret") == NULL);
    CHECK(strstr(e.message, "control character") != NULL && strstr(e.message, "at byte") != NULL);
    const char tok[] = "{\"user\": alice}";
    CHECK(validate_object(tok, sizeof tok - 1, &e) == NULL);
    CHECK(strstr(e.message, "alice") == NULL && strstr(e.message, "near") == NULL);
    const char esc[] = "{\"user\":\"ab\\qcd\"}";
    CHECK(validate_object(esc, sizeof esc - 1, &e) == NULL);
    CHECK(strstr(e.message, "ab") == NULL);
    const char dup[] = "{\"secret\":1,\"secret\":2}";
    CHECK(validate_object(dup, sizeof dup - 1, &e) == NULL);
    CHECK(strstr(e.message, "secret") == NULL && strstr(e.message, "duplicate") != NULL);
    const char uni[] = "{\"user\":\"\\ud800x\"}";
    CHECK(validate_object(uni, sizeof uni - 1, &e) == NULL);
    CHECK(strstr(e.message, "Unicode") != NULL && strstr(e.message, "D800") == NULL &&
          strstr(e.message, "d800") == NULL);
    const char uesc[] = "{\"user\":\"\\u12g4\"}";
    CHECK(validate_object(uesc, sizeof uesc - 1, &e) == NULL);
    CHECK(strstr(e.message, "12g") == NULL);
    /* Where nothing was read, jansson's words hold nothing of the body. */
    CHECK(validate_object("{\"a\":", 5, &e) == NULL);
    CHECK(strstr(e.message, "end of file") != NULL);
}

TEST(unknown_field_is_named)
{
    struct field_error e;
    const char *b = "{\"user\":\"a\",\"dryrun\":true}";
    json_t *o = validate_object(b, strlen(b), &e);
    CHECK(o != NULL);
    CHECK_EQ_INT(validate_known_fields(o, fields, &e), -1);
    CHECK_EQ_INT(e.code, API_INVALID_FIELD);
    CHECK_EQ_STR(e.field, "dryrun");
    json_decref(o);
}

TEST(string_fields)
{
    struct field_error e;
    const char *s;
    size_t n;
    const char *b = "{\"user\":\"alice\",\"channel\":7,\"message_id\":\"\"}";
    json_t *o = validate_object(b, strlen(b), &e);
    CHECK(o != NULL);
    CHECK_EQ_INT(validate_string(o, "user", true, 1, 256, &s, &n, &e), 0);
    CHECK_EQ_STR(s, "alice");
    CHECK_EQ_INT(n, 5);
    CHECK_EQ_INT(validate_string(o, "user", true, 1, 4, &s, &n, &e), -1);
    CHECK_EQ_INT(e.code, API_INVALID_FIELD);
    CHECK(strstr(e.message, "alice") == NULL);   /* never echo values */
    CHECK_EQ_INT(validate_string(o, "channel", true, 1, 64, &s, NULL, &e), -1);
    CHECK_EQ_INT(e.code, API_INVALID_FIELD);
    CHECK_EQ_STR(e.field, "channel");
    CHECK_EQ_INT(validate_string(o, "message_id", true, 1, 128, &s, NULL, &e), -1);
    CHECK_EQ_INT(e.code, API_INVALID_FIELD);
    CHECK_EQ_INT(validate_string(o, "campaign", true, 1, 128, &s, NULL, &e), -1);
    CHECK_EQ_INT(e.code, API_MISSING_FIELD);
    CHECK_EQ_STR(e.field, "campaign");
    CHECK_EQ_INT(validate_string(o, "campaign", false, 1, 128, &s, NULL, &e), 0);
    CHECK(s == NULL);
    json_decref(o);
}

TEST(multibyte_length_is_bytes)
{
    struct field_error e;
    const char *s;
    size_t n;
    /* "é" is two bytes in UTF-8: 128 of them are 256 bytes. */
    char b[600];
    size_t o = 0;
    o += (size_t)snprintf(b, sizeof b, "{\"user\":\"");
    for (int k = 0; k < 129; k++) {
        b[o++] = (char)0xc3;
        b[o++] = (char)0xa9;
    }
    o += (size_t)snprintf(b + o, sizeof b - o, "\"}");
    json_t *obj = validate_object(b, o, &e);
    CHECK(obj != NULL);
    CHECK_EQ_INT(validate_string(obj, "user", true, 1, 256, &s, &n, &e), -1);
    CHECK_EQ_INT(validate_string(obj, "user", true, 1, 258, &s, &n, &e), 0);
    CHECK_EQ_INT(n, 258);
    json_decref(obj);
}

TEST(bool_fields)
{
    struct field_error e;
    bool v = true;
    const char *b = "{\"dry_run\":true,\"x\":\"true\"}";
    json_t *o = validate_object(b, strlen(b), &e);
    CHECK_EQ_INT(validate_bool(o, "dry_run", &v, &e), 0);
    CHECK(v);
    CHECK_EQ_INT(validate_bool(o, "absent", &v, &e), 0);
    CHECK(!v);
    CHECK_EQ_INT(validate_bool(o, "x", &v, &e), -1);
    CHECK_EQ_INT(e.code, API_INVALID_FIELD);
    json_decref(o);
}

TEST(error_codes_and_statuses)
{
    CHECK_EQ_STR(api_error_code(API_BODY_TOO_LARGE), "body_too_large");
    CHECK_EQ_INT(api_error_status(API_BODY_TOO_LARGE), 413);
    CHECK_EQ_INT(api_error_status(API_STORE_UNAVAILABLE), 503);
    CHECK_EQ_INT(api_error_status(API_METHOD_NOT_ALLOWED), 405);
    for (int k = 0; k < API_ERROR__COUNT; k++)
        CHECK(api_error_code((enum api_error)k) != NULL);
}

int main(void)
{
    RUN(rejects_empty_and_non_objects);
    RUN(rejects_duplicate_keys_and_bad_utf8);
    RUN(invalid_json_quotes_nothing_of_the_body);
    RUN(unknown_field_is_named);
    RUN(string_fields);
    RUN(multibyte_length_is_bytes);
    RUN(bool_fields);
    RUN(error_codes_and_statuses);
    return unit_done("test_validate");
}

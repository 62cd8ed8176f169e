/* Unit tests: consent receipts (src/receipt.c). */
#include <ctype.h>

#include "capgate/receipt.h"
#include "unit.h"

static const char *get(json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

TEST(every_field)
{
    struct receipt r = { .record_id = "00112233445566778899aabbccddeeff",
                         .principal = "0f3e8a9b2c4d6e8f0a1b2c3d4e5f6a7b",
                         .controller = "Example Ltd", .scope = "email|marketing",
                         .legal_basis = "soft_opt_in", .notice = "privacy-v3",
                         .method = "api:signup", .opt_in = true, .at_ms = 1769860800123 };
    json_t *o = receipt_json(&r);
    CHECK(o != NULL);
    CHECK_EQ_STR(get(o, "record_id"), r.record_id);
    CHECK_EQ_STR(get(o, "principal"), r.principal);
    CHECK_EQ_STR(get(o, "controller"), "Example Ltd");
    CHECK_EQ_STR(get(o, "channel"), "email");
    CHECK_EQ_STR(get(o, "purpose"), "marketing");
    CHECK_EQ_STR(get(o, "legal_basis"), "soft_opt_in");
    CHECK_EQ_STR(get(o, "notice"), "privacy-v3");
    CHECK_EQ_STR(get(o, "method"), "api:signup");
    CHECK_EQ_STR(get(o, "state"), "given");
    CHECK_EQ_STR(get(o, "consent_state"), "opt_in");
    CHECK_EQ_STR(get(o, "at"), "2026-01-31T12:00:00Z");
    CHECK_EQ_STR(get(o, "schema"), RECEIPT_SCHEMA);
    CHECK_EQ_INT(json_object_size(o), 12);
    json_decref(o);
}

TEST(absent_fields_are_null_and_the_basis_defaults)
{
    struct receipt r = { .record_id = "ab", .principal = "p", .scope = "*|*", .notice = "",
                         .method = "one-click", .opt_in = false, .at_ms = 0 };
    json_t *o = receipt_json(&r);
    CHECK(json_is_null(json_object_get(o, "controller")));
    CHECK(json_is_null(json_object_get(o, "notice")));
    CHECK_EQ_STR(get(o, "legal_basis"), "consent");
    CHECK_EQ_STR(get(o, "channel"), "*");
    CHECK_EQ_STR(get(o, "purpose"), "*");
    CHECK_EQ_STR(get(o, "state"), "withdrawn");
    CHECK_EQ_STR(get(o, "consent_state"), "opt_out");
    json_decref(o);
    r.scope = "no-bar";
    CHECK(receipt_json(&r) == NULL);
}

TEST(legal_bases)
{
    CHECK(receipt_basis_known("consent"));
    CHECK(receipt_basis_known("soft_opt_in"));
    CHECK(receipt_basis_known("contract"));
    CHECK(receipt_basis_known("legitimate_interest"));
    CHECK(!receipt_basis_known("Consent"));
    CHECK(!receipt_basis_known(""));
    CHECK(!receipt_basis_known(NULL));
    CHECK(!receipt_basis_known("vital_interest"));
}

TEST(ids_are_fresh_hex)
{
    char a[RECEIPT_ID_HEX + 1], b[RECEIPT_ID_HEX + 1];
    receipt_new_id(a);
    receipt_new_id(b);
    CHECK_EQ_INT(strlen(a), RECEIPT_ID_HEX);
    for (size_t k = 0; k < RECEIPT_ID_HEX; k++)
        CHECK(isxdigit((unsigned char)a[k]) && !isupper((unsigned char)a[k]));
    CHECK(strcmp(a, b) != 0);
}

TEST(api_method)
{
    char m[RECEIPT_METHOD_MAX + 1];
    receipt_api_method("signup-form", m);
    CHECK_EQ_STR(m, "api:signup-form");
}

int main(void)
{
    RUN(every_field);
    RUN(absent_fields_are_null_and_the_basis_defaults);
    RUN(legal_bases);
    RUN(ids_are_fresh_hex);
    RUN(api_method);
    return unit_done("test_receipt");
}

/* Unit tests: the error table and the error body (src/reply.c, included for
 * its static functions; src/api_error.c). */
#include "../../src/reply.c"

#include "unit.h"

TEST(every_error_has_a_code_and_a_status)
{
    for (int e = 0; e < API_ERROR__COUNT; e++) {
        CHECK(api_error_code((enum api_error)e) != NULL);
        unsigned st = api_error_status((enum api_error)e);
        CHECK(st >= 400 && st <= 599);
        for (int f = e + 1; f < API_ERROR__COUNT; f++)
            CHECK(strcmp(api_error_code((enum api_error)e), api_error_code((enum api_error)f)) != 0);
    }
    CHECK_EQ_INT(api_error_status(API_STORE_UNAVAILABLE), 503);
    CHECK_EQ_STR(api_error_code(API_UNAUTHORIZED), "unauthorized");
}

TEST(error_body_shape)
{
    json_t *b = error_body(API_MISSING_FIELD, "user", "user is required");
    char *s = json_dumps(b, JSON_COMPACT | JSON_SORT_KEYS);
    CHECK_EQ_STR(s, "{\"error\":{\"code\":\"missing_field\",\"field\":\"user\",\"message\":\"user is required\"}}");
    free(s);
    json_decref(b);
    b = error_body(API_NOT_FOUND, NULL, "no such endpoint");
    CHECK(json_object_get(json_object_get(b, "error"), "field") == NULL);
    json_decref(b);
}

int main(void)
{
    RUN(every_error_has_a_code_and_a_status);
    RUN(error_body_shape);
    return unit_done("test_reply");
}

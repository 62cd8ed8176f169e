/* json_flat: the fast path must build exactly what jansson builds, and
 * leave every other input to jansson. */
#include <stdlib.h>

#include "capgate/json_flat.h"
#include "unit.h"

/* Either the fast path declines, or it agrees with jansson. */
static int agrees(const char *s, size_t len)
{
    json_error_t err;
    json_t *fast = json_flat_parse(s, len);
    json_t *ref = json_loadb(s, len, JSON_REJECT_DUPLICATES, &err);
    int ok = !fast || (ref && json_equal(fast, ref));
    json_decref(fast);
    json_decref(ref);
    return ok;
}

static int takes(const char *s)
{
    json_t *o = json_flat_parse(s, strlen(s));
    json_decref(o);
    return o != NULL;
}

TEST(takes_the_common_shape)
{
    const char *body = "{\"user\":\"u-1@example.com\",\"channel\":\"email\",\"category\":\"marketing\","
                       "\"message_id\":\"m-1\",\"campaign\":\"spring\",\"tz\":\"Europe/Paris\","
                       "\"dry_run\":false,\"n\":-42,\"z\":0,\"x\":null,\"t\":true}";
    json_t *o = json_flat_parse(body, strlen(body));
    CHECK(o != NULL);
    CHECK_EQ_STR(json_string_value(json_object_get(o, "user")), "u-1@example.com");
    CHECK_EQ_INT(json_integer_value(json_object_get(o, "n")), -42);
    CHECK(json_is_false(json_object_get(o, "dry_run")));
    CHECK(json_is_null(json_object_get(o, "x")));
    CHECK_EQ_INT(json_object_size(o), 11);
    CHECK(agrees(body, strlen(body)));
    json_decref(o);
    CHECK(takes(" \r\n\t{ } \n"));
    CHECK(takes("{\"\":\"\"}"));
}

TEST(leaves_the_rest_to_jansson)
{
    static const char *const others[] = {
        "", "[]", "\"x\"", "{", "}", "{\"a\"}", "{\"a\":}", "{\"a\":\"b\",}", "{,}",
        "{\"a\":\"b\"} x", "{\"a\":\"b\"}{}", "{\"a\":\"b\\n\"}", "{\"a\\u0041\":1}",
        "{\"a\":\"\xc3\xa9\"}", "{\"a\":\"\xff\"}", "{\"a\":\"x\ty\"}", "{\"a\":1.5}",
        "{\"a\":1e3}", "{\"a\":01}", "{\"a\":-}", "{\"a\":1234567890123456789}",
        "{\"a\":{}}", "{\"a\":[]}", "{\"a\":1,\"a\":2}", "{\"a\":tru}", "{\"a\":nul}",
        "{'a':1}", "{\"a\" 1}", "{\"a\":1 \"b\":2}",
    };
    for (size_t k = 0; k < sizeof others / sizeof others[0]; k++) {
        if (takes(others[k]))
            printf("    took %s\n", others[k]);
        CHECK(!takes(others[k]));
    }
    /* A NUL byte inside: not JSON text. */
    CHECK(json_flat_parse("{\"a\":\"b\0c\"}", 11) == NULL);
}

/* Random bodies made of JSON's pieces, valid or not: whenever the fast
 * path answers, jansson answers the same. */
TEST(agrees_with_jansson_on_random_bodies)
{
    static const char *const pieces[] = {
        "{", "}", "\"", ":", ",", " ", "\n", "\"a\"", "\"b\"", "\"user\"", "\"x y\"", "true",
        "false", "null", "0", "-", "7", "12", "-3", "1.", "e5", "\\", "[", "]", "\xc3\xa9",
        "\"\"", "tr", "\t",
    };
    unsigned seed = 12345;
    char buf[256];
    int declined = 0, took = 0, bad = 0;
    for (int round = 0; round < 200000; round++) {
        size_t len = 0;
        int n = 1 + (int)((seed = seed * 1103515245u + 12345u) >> 16) % 12;
        /* Start most bodies as objects, so that many are valid. */
        if (((seed >> 8) & 3) != 0)
            buf[len++] = '{';
        for (int k = 0; k < n; k++) {
            seed = seed * 1103515245u + 12345u;
            const char *p = pieces[(seed >> 16) % (sizeof pieces / sizeof pieces[0])];
            size_t pl = strlen(p);
            if (len + pl >= sizeof buf)
                break;
            memcpy(buf + len, p, pl);
            len += pl;
        }
        if (((seed >> 20) & 1) && len + 1 < sizeof buf)
            buf[len++] = '}';
        json_t *fast = json_flat_parse(buf, len);
        if (fast)
            took++;
        else
            declined++;
        json_decref(fast);
        if (!agrees(buf, len)) {
            if (bad++ < 5)
                printf("    disagrees on %.*s\n", (int)len, buf);
        }
    }
    /* Also valid flat objects built on purpose. */
    for (int round = 0; round < 20000; round++) {
        size_t len = 0;
        buf[len++] = '{';
        int fields = (int)((seed = seed * 1103515245u + 12345u) >> 16) % 6;
        for (int f = 0; f < fields; f++) {
            len += (size_t)snprintf(buf + len, sizeof buf - len, "%s\"k%d\" : ", f ? ", " : "", f);
            seed = seed * 1103515245u + 12345u;
            switch ((seed >> 16) % 5) {
            case 0: len += (size_t)snprintf(buf + len, sizeof buf - len, "\"v%u\"", seed % 1000); break;
            case 1: len += (size_t)snprintf(buf + len, sizeof buf - len, "%d", (int)(seed % 2001) - 1000); break;
            case 2: len += (size_t)snprintf(buf + len, sizeof buf - len, "true"); break;
            case 3: len += (size_t)snprintf(buf + len, sizeof buf - len, "false"); break;
            default: len += (size_t)snprintf(buf + len, sizeof buf - len, "null"); break;
            }
        }
        buf[len++] = '}';
        json_t *fast = json_flat_parse(buf, len);
        if (!fast) {
            if (bad++ < 5)
                printf("    declined %.*s\n", (int)len, buf);
        }
        json_decref(fast);
        if (!agrees(buf, len))
            bad++;
        took++;
    }
    CHECK_EQ_INT(bad, 0);
    CHECK(took > 20000 && declined > 1000);    /* both sides exercised */
}

/* The nested reader either declines or agrees with jansson: the span of
 * every nested field, compacted, is the same value jansson reads there. */
static int nested_agrees(const char *s, size_t len, int *took)
{
    struct json_flat_field f[16];
    int n = json_flat_scan_nested(s, len, f, 16);
    if (n < 0)
        return 1;
    (*took)++;
    json_error_t err;
    json_t *ref = json_loadb(s, len, JSON_REJECT_DUPLICATES, &err);
    int ok = ref != NULL;
    for (int k = 0; ok && k < n; k++) {
        if (f[k].type != JSON_FLAT_NESTED)
            continue;
        char *c = malloc(f[k].slen + 1);
        size_t cl = json_flat_compact(f[k].s, f[k].slen, c);
        json_t *v = json_loadb(c, cl, JSON_REJECT_DUPLICATES, &err);
        char key[64];
        snprintf(key, sizeof key, "%.*s", (int)f[k].klen, f[k].key);
        ok = v && json_equal(v, json_object_get(ref, key)) && cl <= f[k].slen &&
             !memchr(c, '\n', cl);
        json_decref(v);
        free(c);
    }
    json_decref(ref);
    return ok;
}

static int nested_takes(const char *s)
{
    int took = 0;
    return nested_agrees(s, strlen(s), &took) && took;
}

TEST(nested_values_are_read_and_compacted)
{
    const char *body = "{\"user\":\"u\", \"payload\" : { \"to\" : [ \"a b\" , 1.10, -0, 2e-05, "
                       "\"\\u00e9\\\"\\\\ \\ud83d\\ude00\", \"\xc3\xa9\", {}, [], true, null ] ,"
                       "\"k\":{\"x\":{\"y\":false}}}, \"priority\": 3}";
    struct json_flat_field f[8];
    int n = json_flat_scan_nested(body, strlen(body), f, 8);
    CHECK_EQ_INT(n, 3);
    CHECK(f[1].type == JSON_FLAT_NESTED);
    char out[256];
    size_t cl = json_flat_compact(f[1].s, f[1].slen, out);
    /* The client's own text: 1.10 stays 1.10, escapes stay escapes, and the
     * spaces inside strings stay. */
    CHECK_EQ_STR(out, "{\"to\":[\"a b\",1.10,-0,2e-05,\"\\u00e9\\\"\\\\ \\ud83d\\ude00\",\"\xc3\xa9\","
                      "{},[],true,null],\"k\":{\"x\":{\"y\":false}}}");
    CHECK_EQ_INT(cl, strlen(out));
    int took = 0;
    CHECK(nested_agrees(body, strlen(body), &took) && took == 1);
    CHECK(nested_takes("{\"p\":[]}"));
    CHECK(json_flat_scan(body, strlen(body), f, 8) < 0);     /* the flat reader still declines */
}

TEST(nested_leaves_what_jansson_might_read_otherwise)
{
    static const char *const others[] = {
        "{\"p\":{\"a\":1,\"a\":2}}", "{\"p\":{\"a\\u0041\":1}}", "{\"p\":[\"\\u0000\"]}",
        "{\"p\":[\"\\ud800\"]}", "{\"p\":[\"\\udc00\"]}", "{\"p\":[\"\\ud800\\u0041\"]}",
        "{\"p\":[1234567890123456789]}", "{\"p\":[1e400]}", "{\"p\":[1e100]}", "{\"p\":[01]}",
        "{\"p\":[1.]}", "{\"p\":[.5]}", "{\"p\":[-]}", "{\"p\":[\"\xc0\xaf\"]}",
        "{\"p\":[\"\xed\xa0\x80\"]}", "{\"p\":[\"\xf4\x90\x80\x80\"]}", "{\"p\":[\"\xe2\x82\"]}",
        "{\"p\":[\"a\tb\"]}", "{\"p\":[\"\\x\"]}", "{\"p\":[\"\\u12\"]}", "{\"p\":[1,]}",
        "{\"p\":{\"a\"}}", "{\"p\":{\"a\":1,}}", "{\"p\":[tru]}", "{\"p\":[1 2]}", "{\"p\":[",
        "{\"p\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}",
    };
    for (size_t k = 0; k < sizeof others / sizeof others[0]; k++) {
        if (nested_takes(others[k]))
            printf("    took %s\n", others[k]);
        CHECK(!nested_takes(others[k]));
    }
    CHECK(nested_takes("{\"p\":[\"\\ud83d\\ude00\",\"\xf0\x9f\x98\x80\",1e99,-1.5E+2]}"));
}

TEST(nested_agrees_with_jansson_on_random_bodies)
{
    static const char *const pieces[] = {
        "{", "}", "[", "]", ",", ":", " ", "\"a\"", "\"b\"", "\"\\u00e9\"", "\"\\ud83d\\ude00\"",
        "\"\\\"\"", "\"\xc3\xa9\"", "1", "-0", "1.5", "2e9", "true", "null", "\"p\":", "\"q\":",
        "\"\\n\"", "\xff", "\"\\u0000\"", "1e999", "\"a\":1,\"a\":2",
    };
    unsigned seed = 7;
    int bad = 0, took = 0;
    char buf[512];
    for (int round = 0; round < 200000; round++) {
        size_t len = 0;
        memcpy(buf, "{\"p\":", 5);
        len = 5;
        seed = seed * 1103515245u + 12345u;
        int n = (int)(seed >> 16) % 14;
        for (int k = 0; k < n; k++) {
            seed = seed * 1103515245u + 12345u;
            const char *p = pieces[(seed >> 16) % (sizeof pieces / sizeof pieces[0])];
            size_t pl = strlen(p);
            if (len + pl + 1 >= sizeof buf)
                break;
            memcpy(buf + len, p, pl);
            len += pl;
        }
        buf[len++] = '}';
        if (!nested_agrees(buf, len, &took) && bad++ < 5)
            printf("    disagrees on %.*s\n", (int)len, buf);
    }
    CHECK_EQ_INT(bad, 0);
    CHECK(took > 1000);
}

int main(void)
{
    RUN(takes_the_common_shape);
    RUN(leaves_the_rest_to_jansson);
    RUN(agrees_with_jansson_on_random_bodies);
    RUN(nested_values_are_read_and_compacted);
    RUN(nested_leaves_what_jansson_might_read_otherwise);
    RUN(nested_agrees_with_jansson_on_random_bodies);
    return unit_done("test_json_flat");
}

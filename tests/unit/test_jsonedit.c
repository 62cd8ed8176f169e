/* Unit tests: JSON spans, wildcard pointers and cuts (src/jsonedit.c), and
 * urlencoded bodies (src/form.c). */
#include <jansson.h>
#include <stdlib.h>

#include "capgate/form.h"
#include "capgate/jsonedit.h"
#include "unit.h"

static const char MAIL[] =
    "{\"personalizations\": [\n"
    "    {\"to\": [{\"email\": \"a@x.org\"}, {\"email\": \"b@x.org\"}], \"cc\": [{\"email\": \"c@x.org\"}]},\n"
    "    {\"to\": [{\"email\": \"d@x.org\"}], \"bcc\": [{\"email\": \"e\\u00e9@x.org\"}]}\n"
    "  ],\n"
    "  \"subject\": \"Hi  there\", \"n\": 1.50e3, \"categories\": [\"spring\"]}";

static char *find_one(struct jdoc *d, const char *ptr, unsigned *node)
{
    struct jmatch m[4];
    size_t len;
    if (jdoc_find(d, ptr, m, 4) != 1)
        return NULL;
    *node = m[0].node;
    return jdoc_scalar(d, m[0].node, &len);
}

TEST(wildcards_find_every_recipient_in_order)
{
    struct jdoc *d = jdoc_parse(MAIL, sizeof MAIL - 1);
    CHECK(d != NULL);
    struct jmatch m[8];
    long n = jdoc_find(d, "/personalizations/*/to/*/email", m, 8);
    CHECK_EQ_INT(n, 3);
    size_t len;
    char *s = jdoc_scalar(d, m[2].node, &len);
    CHECK_EQ_STR(s, "d@x.org");
    free(s);
    CHECK_EQ_STR(m[1].path, "/personalizations/0/to/1/email");
    CHECK_EQ_INT(m[1].n_stars, 2);
    CHECK_EQ_INT(jdoc_find(d, "/personalizations/*/bcc/*/email", m, 8), 1);
    s = jdoc_scalar(d, m[0].node, &len);
    CHECK_EQ_STR(s, "e\xc3\xa9@x.org");          /* \u00e9 decoded */
    free(s);
    CHECK_EQ_INT(jdoc_find(d, "/personalizations/*/to/*/email", m, 1), 3);   /* counted past MAX */
    CHECK_EQ_INT(jdoc_find(d, "/nope/*", m, 8), 0);
    CHECK_EQ_INT(jdoc_find(d, "bad", m, 8), -1);
    unsigned node;
    s = find_one(d, "/categories/0", &node);
    CHECK_EQ_STR(s, "spring");
    free(s);
    CHECK(find_one(d, "/n", &node) == NULL);      /* a real number is not an id */
    jdoc_free(d);
}

TEST(nothing_marked_is_the_same_bytes)
{
    struct jdoc *d = jdoc_parse(MAIL, sizeof MAIL - 1);
    size_t len;
    char *out = jdoc_text(d, &len);
    CHECK_EQ_INT(len, sizeof MAIL - 1);
    CHECK(memcmp(out, MAIL, len) == 0);
    free(out);
    jdoc_free(d);
}

TEST(cuts_keep_every_other_byte)
{
    struct jdoc *d = jdoc_parse(MAIL, sizeof MAIL - 1);
    struct jmatch m[8];
    jdoc_find(d, "/personalizations/*/to/*/email", m, 8);
    jdoc_remove(d, m[0].star[1]);                  /* a@x.org's element of "to" */
    size_t len;
    char *out = jdoc_text(d, &len);
    const char *want =
        "{\"personalizations\": [\n"
        "    {\"to\": [{\"email\": \"b@x.org\"}], \"cc\": [{\"email\": \"c@x.org\"}]},\n"
        "    {\"to\": [{\"email\": \"d@x.org\"}], \"bcc\": [{\"email\": \"e\\u00e9@x.org\"}]}\n"
        "  ],\n"
        "  \"subject\": \"Hi  there\", \"n\": 1.50e3, \"categories\": [\"spring\"]}";
    CHECK_EQ_STR(out, want);
    free(out);
    /* The last of a "to" goes: the array goes with its key. */
    jdoc_remove(d, m[1].star[1]);
    out = jdoc_text(d, &len);
    CHECK(strstr(out, "\"to\"") != NULL);            /* the second personalization's */
    CHECK(strstr(out, "{\"cc\": [{\"email\": \"c@x.org\"}]}") != NULL);
    json_error_t e;
    json_t *j = json_loadb(out, len, 0, &e);
    CHECK(j != NULL);
    json_decref(j);
    free(out);
    /* A whole personalization. */
    jdoc_unmark(d);
    jdoc_remove(d, m[2].star[0]);
    CHECK(jdoc_removed(d, m[2].node));
    out = jdoc_text(d, &len);
    CHECK(strstr(out, "d@x.org") == NULL && strstr(out, "e\\u00e9") == NULL);
    CHECK(strstr(out, "\"b@x.org\"}], \"cc\"") != NULL);
    j = json_loadb(out, len, 0, &e);
    CHECK(j != NULL && json_array_size(json_object_get(j, "personalizations")) == 1);
    json_decref(j);
    free(out);
    /* Every personalization: the list goes, with its key. */
    jdoc_remove(d, m[0].star[0]);
    CHECK(jdoc_emptied(d, jdoc_parent(d, m[0].star[0])));
    out = jdoc_text(d, &len);
    CHECK_EQ_STR(out, "{\"subject\": \"Hi  there\", \"n\": 1.50e3, \"categories\": [\"spring\"]}");
    free(out);
    jdoc_free(d);
}

TEST(bad_json_and_bounds)
{
    const char *bad[] = { "", "{", "{\"a\":}", "[1,]", "{\"a\" 1}", "\"\\x\"", "[01]",
                          "nul", "[1] x", "\"a\nb\"" };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++)
        CHECK(jdoc_parse(bad[k], strlen(bad[k])) == NULL);
    char deep[200];
    memset(deep, '[', 100);
    memset(deep + 100, ']', 100);
    CHECK(jdoc_parse(deep, 200) == NULL);           /* deeper than JSONEDIT_DEPTH_MAX */
    struct jdoc *d = jdoc_parse(" [ ] ", 5);
    CHECK(d != NULL);
    jdoc_free(d);
}

TEST(form_bodies)
{
    const char body[] = "To=%2B15551234567&From=%2B15557654321&Body=Hello+there%21&&Empty=";
    struct form_pair p[8];
    size_t n = form_parse(body, sizeof body - 1, p, 8);
    CHECK_EQ_INT(n, 4);
    CHECK(form_name_is(body, &p[0], "To"));
    size_t len;
    char *v = form_value(body, &p[0], &len);
    CHECK_EQ_STR(v, "+15551234567");
    free(v);
    v = form_value(body, &p[2], &len);
    CHECK_EQ_STR(v, "Hello there!");
    free(v);
    bool drop[8] = { true, false, false, false };
    char *out = form_without(body, p, n, drop, &len);
    CHECK_EQ_STR(out, "From=%2B15557654321&Body=Hello+there%21&Empty=");
    free(out);
    const char badesc[] = "To=%2";
    n = form_parse(badesc, sizeof badesc - 1, p, 8);
    CHECK(form_value(badesc, &p[0], &len) == NULL);
    const char nul[] = "To=a%00b";
    form_parse(nul, sizeof nul - 1, p, 8);
    CHECK(form_value(nul, &p[0], &len) == NULL);
}

/* Members added to objects: after the last kept member, in an empty
 * object, beside cuts; every other byte as it was. */
TEST(appended_members)
{
    const char body[] = "{\"p\": [ {\"to\": [1, 2], \"headers\": { }}, {\"to\": [3]} ], \"n\": 1.0}";
    struct jdoc *d = jdoc_parse(body, sizeof body - 1);
    struct jmatch m[4], h;
    CHECK(d != NULL);
    CHECK(jdoc_find(d, "/p/*", m, 4) == 2);
    CHECK(jdoc_find(d, "/p/0/headers", &h, 1) == 1);
    CHECK(jdoc_append(d, h.node, "\"A\":\"x\""));
    CHECK(jdoc_append(d, h.node, "\"B\":\"y\""));
    CHECK(jdoc_append(d, m[1].node, "\"headers\":{\"A\":\"z\"}"));
    struct jmatch to[4];
    CHECK(jdoc_find(d, "/p/0/to/*", to, 4) == 2);
    CHECK(!jdoc_append(d, to[0].node, "\"A\":1"));      /* not an object */
    CHECK(!jdoc_append(d, m[0].node, ""));
    jdoc_remove(d, to[0].node);
    size_t len;
    char *out = jdoc_text(d, &len);
    CHECK_EQ_STR(out, "{\"p\": [ {\"to\": [2], \"headers\": { \"A\":\"x\",\"B\":\"y\"}}, "
                      "{\"to\": [3],\"headers\":{\"A\":\"z\"}} ], \"n\": 1.0}");
    CHECK(len == strlen(out));
    free(out);
    /* Unmarked: the appends go too. */
    jdoc_unmark(d);
    out = jdoc_text(d, &len);
    CHECK_EQ_STR(out, body);
    free(out);
    /* The root itself; and freed with appends still held (ASan: no leak). */
    CHECK(jdoc_append(d, 0, "\"z\":true"));
    out = jdoc_text(d, &len);
    CHECK(strstr(out, "\"n\": 1.0,\"z\":true}") != NULL);
    free(out);
    jdoc_free(d);
}

TEST(keys_match_as_decoded_and_paths_as_pointers_write_them)
{
    /* A key with an escape is matched by what it reads, and a key with
     * "/" or "~" is named in the path as RFC 6901 writes it. */
    static const char DOC[] =
        "{\"p\": [{\"\\u0074o\": [{\"a/b~\": \"x\"}, {\"a/b~\": \"y\"}]}], \"to\": 1, "
        "\"t\": 2, \"tox\": 3}";
    struct jdoc *d = jdoc_parse(DOC, sizeof DOC - 1);
    CHECK(d != NULL);
    struct jmatch m[4];
    CHECK_EQ_INT(jdoc_find(d, "/p/*/to/*/a~1b~0", m, 4), 2);
    CHECK_EQ_STR(m[1].path, "/p/0/to/1/a~1b~0");
    size_t len;
    char *s = jdoc_scalar(d, m[1].node, &len);
    CHECK_EQ_STR(s, "y");
    free(s);
    CHECK_EQ_INT(jdoc_find(d, "/t", m, 4), 1);      /* not a prefix of "to" or "tox" */
    CHECK_EQ_STR(m[0].path, "/t");
    CHECK_EQ_INT(jdoc_find(d, "/p/*/t", m, 4), 0);
    jdoc_free(d);
}

int main(void)
{
    RUN(wildcards_find_every_recipient_in_order);
    RUN(nothing_marked_is_the_same_bytes);
    RUN(cuts_keep_every_other_byte);
    RUN(bad_json_and_bounds);
    RUN(form_bodies);
    RUN(appended_members);
    RUN(keys_match_as_decoded_and_paths_as_pointers_write_them);
    return unit_done("test_jsonedit");
}

/*
 * fuzz_jsonptr: json_pointer (src/jsonptr.c), RFC 6901.
 *
 * Input without a newline: the whole input is a pointer into a fixed
 * document (a SendGrid-like body, the kind transparent routes read).
 * Input with a newline: the first line is the pointer, the rest a JSON
 * document (parsed as api_route parses request bodies).
 *
 * Oracle: an independent, unbounded RFC 6901 resolver.  Where the pointer
 * is one the RFC defines (every ~ escape is ~0 or ~1, array indexes are
 * "0" or digits without a leading zero, and every reference token fits
 * json_pointer's 255-byte token buffer), both must find the same value.
 */
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capgate/jsonptr.h"
#include "fuzz_common.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char fixed_text[] =
    "{\"personalizations\":[{\"to\":[{\"email\":\"a@example.com\",\"name\":\"A\"},"
    "{\"email\":\"b@example.com\"}],\"custom_args\":{\"campaign\":\"spring\",\"n\":42}}],"
    "\"from\":{\"email\":\"news@example.com\"},\"a/b\":1,\"m~n\":2,\"\":{\"\":3},"
    "\" \":4,\"c%d\":5,\"e^f\":6,\"g|h\":7,\"i\\\\j\":8,\"k\\\"l\":9,"
    "\"list\":[0,1,2,3,4,5,6,7,8,9,10,11],\"nested\":[[[[\"deep\"]]]],"
    "\"\\u00e9t\\u00e9\":\"summer\",\"categories\":[\"news\",\"health\"],\"t\":true,\"z\":null}";
static json_t *fixed;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc; (void)argv;
    json_error_t e;
    fixed = json_loads(fixed_text, 0, &e);
    if (!fixed) {
        fprintf(stderr, "fuzz_jsonptr: fixed document: %s\n", e.text);
        abort();
    }
    return 0;
}

/* RFC 6901 section 4, with no length limit.  *DEFINED is cleared when the
 * pointer leaves what the RFC (or json_pointer's documented limit)
 * defines. */
static json_t *reference(json_t *root, const char *p, size_t len, bool *defined)
{
    *defined = true;
    if (len == 0)
        return root;
    if (p[0] != '/')
        return NULL;               /* not a pointer: both must say no */
    json_t *cur = root;
    size_t i = 0;
    char *tok = malloc(len + 1);
    FUZZ_CHECK(tok);
    while (i < len) {
        size_t n = 0;
        i++;                       /* the '/' */
        while (i < len && p[i] != '/') {
            if (p[i] == '~') {
                if (i + 1 < len && (p[i + 1] == '0' || p[i + 1] == '1')) {
                    tok[n++] = p[i + 1] == '0' ? '~' : '/';
                    i += 2;
                    continue;
                }
                *defined = false;  /* "~" not followed by 0 or 1 */
            }
            tok[n++] = p[i++];
        }
        tok[n] = '\0';
        if (n > 255)
            *defined = false;      /* json_pointer stops at 255-byte tokens */
        if (!cur)
            continue;
        if (json_is_object(cur)) {
            cur = json_object_getn(cur, tok, n);
        } else if (json_is_array(cur)) {
            bool canonical = n > 0 && strspn(tok, "0123456789") == n &&
                             (n == 1 || tok[0] != '0') && n < 10;
            if (!canonical) {
                /* "-", "01", "+1", " 1", "1e0": the RFC gives no element. */
                if (n > 0 && strspn(tok, "0123456789") != n)
                    *defined = false;
                else if (n > 1 && tok[0] == '0')
                    *defined = false;
                cur = NULL;
            } else {
                cur = json_array_get(cur, strtoul(tok, NULL, 10));
            }
        } else {
            cur = NULL;
        }
    }
    free(tok);
    return cur;
}

static void check(json_t *root, const char *ptr, size_t len)
{
    bool defined;
    json_t *got = json_pointer(root, ptr);
    if (strlen(ptr) != len)
        return;                    /* a NUL inside: the C string ends there */
    json_t *want = reference(root, ptr, len, &defined);
    if (defined && got != want) {
        fprintf(stderr, "pointer \"%s\": json_pointer %p, RFC 6901 %p\n", ptr, (void *)got,
                (void *)want);
        FUZZ_CHECK(!"json_pointer disagrees with RFC 6901");
    }
    FUZZ_CHECK(json_pointer(root, "") == root);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 1 << 16)
        return 0;
    const uint8_t *nl = memchr(data, '\n', size);
    size_t plen = nl ? (size_t)(nl - data) : size;
    char *ptr = malloc(plen + 1);
    FUZZ_CHECK(ptr);
    memcpy(ptr, data, plen);
    ptr[plen] = '\0';
    if (!nl) {
        check(fixed, ptr, plen);
    } else {
        size_t dlen = size - plen - 1;
        char *doc = malloc(dlen ? dlen : 1);   /* not NUL-terminated, like a body */
        FUZZ_CHECK(doc);
        memcpy(doc, nl + 1, dlen);
        json_t *root = dlen ? json_loadb(doc, dlen, 0, NULL) : NULL;
        if (root) {
            check(root, ptr, plen);
            json_decref(root);
        }
        free(doc);
    }
    free(ptr);
    return 0;
}

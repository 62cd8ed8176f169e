/*
 * fuzz_jsonedit: the cuts a transparent route makes in a request body
 * (src/jsonedit.c) and in a form body (src/form.c).
 *
 * Input: line 1 a pointer with "*" (as a route's user spec), line 2 a
 * bitmask in hex digits (which matches to cut), the rest a body.  A body
 * that starts with '{' or '[' is JSON; anything else is urlencoded, and the
 * pointer's first token is the field name.
 *
 * Oracles.  JSON: the text jdoc_text() gives is a subsequence of the body
 * (every kept byte is the client's), parses, and equals what jansson makes
 * of the body with the same array elements deleted by their concrete
 * pointers (and an object member's array left empty by the cuts deleted
 * with its key).  Form: form_without() keeps exactly the pairs not
 * dropped, byte for byte, with one '&' between them.
 */
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capgate/form.h"
#include "capgate/jsonedit.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MATCHES_MAX 64

static bool subsequence(const char *small, size_t n, const char *big, size_t m)
{
    size_t i = 0;
    for (size_t j = 0; j < m && i < n; j++)
        if (small[i] == big[j])
            i++;
    return i == n;
}

/* The RFC 6901 tokens of a concrete pointer ("/a/0/b~1c"), decoded. */
static size_t tokens(const char *p, char tok[][JSONEDIT_PATH_MAX], size_t max)
{
    size_t n = 0;
    while (*p == '/' && n < max) {
        p++;
        size_t k = 0;
        while (*p && *p != '/' && k + 1 < JSONEDIT_PATH_MAX) {
            if (p[0] == '~' && (p[1] == '0' || p[1] == '1')) {
                tok[n][k++] = p[1] == '0' ? '~' : '/';
                p += 2;
            } else {
                tok[n][k++] = *p++;
            }
        }
        tok[n++][k] = '\0';
    }
    return n;
}

struct cut {
    json_t *array;
    size_t index;
};

static int by_index_desc(const void *a, const void *b)
{
    const struct cut *x = a, *y = b;
    if (x->array != y->array)
        return x->array < y->array ? -1 : 1;
    return x->index < y->index ? 1 : x->index > y->index ? -1 : 0;
}

/* Deletes, in jansson, the array element that match M's last "*" went
 * through: its concrete pointer is the first tokens of M's path. */
static bool locate(json_t *root, const struct jmatch *m, const char *pointer, struct cut *out)
{
    static char ptok[JSONEDIT_DEPTH_MAX + 1][JSONEDIT_PATH_MAX];
    static char mtok[JSONEDIT_DEPTH_MAX + 1][JSONEDIT_PATH_MAX];
    size_t np = tokens(pointer, ptok, JSONEDIT_DEPTH_MAX + 1);
    size_t nm = tokens(m->path, mtok, JSONEDIT_DEPTH_MAX + 1);
    if (np != nm)
        return false;
    size_t last = np;
    for (size_t k = 0; k < np; k++)
        if (strcmp(ptok[k], "*") == 0)
            last = k;
    if (last == np)
        return false;
    json_t *cur = root;
    for (size_t k = 0; k < last && cur; k++)
        cur = json_is_object(cur) ? json_object_get(cur, mtok[k])
            : json_is_array(cur) ? json_array_get(cur, strtoul(mtok[k], NULL, 10)) : NULL;
    if (!json_is_array(cur))
        return false;
    out->array = cur;
    out->index = strtoul(mtok[last], NULL, 10);
    return out->index < json_array_size(cur);
}

/* An object member's array that the cuts emptied goes with its key. */
static void drop_emptied(json_t *v, json_t *const *emptied, size_t n)
{
    if (json_is_object(v)) {
        const char *key;
        json_t *val;
        void *tmp;
        json_object_foreach_safe(v, tmp, key, val) {
            bool gone = false;
            for (size_t k = 0; k < n && !gone; k++)
                gone = emptied[k] == val;
            if (gone)
                json_object_del(v, key);
            else
                drop_emptied(val, emptied, n);
        }
    } else if (json_is_array(v)) {
        for (size_t k = 0; k < json_array_size(v); k++)
            drop_emptied(json_array_get(v, k), emptied, n);
    }
}

static void run_json(const char *pointer, const bool *cut, const char *body, size_t len)
{
    struct jdoc *d = jdoc_parse(body, len);
    if (!d)
        return;
    json_t *root = json_loadb(body, len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES |
                              JSON_ALLOW_NUL, NULL);
    static struct jmatch m[MATCHES_MAX];
    long found = jdoc_find(d, pointer, m, MATCHES_MAX);
    size_t n = found < 0 ? 0 : (size_t)found < MATCHES_MAX ? (size_t)found : MATCHES_MAX;
    struct cut cuts[MATCHES_MAX];
    size_t nc = 0;
    bool oracle = root != NULL;
    for (size_t k = 0; k < n; k++) {
        if (!cut[k] || m[k].n_stars == 0)
            continue;
        jdoc_remove(d, m[k].star[m[k].n_stars - 1]);
        FUZZ_CHECK(jdoc_removed(d, m[k].node));
        if (oracle && strlen(m[k].path) + 1 < JSONEDIT_PATH_MAX &&
            locate(root, &m[k], pointer, &cuts[nc]))
            nc++;
        else
            oracle = false;    /* a pointer the simple resolver does not follow */
    }
    size_t outlen;
    char *out = jdoc_text(d, &outlen);
    FUZZ_CHECK(out);
    FUZZ_CHECK(subsequence(out, outlen, body, len));
    if (oracle) {
        /* Same element twice (two matches through one element): once. */
        qsort(cuts, nc, sizeof *cuts, by_index_desc);
        json_t *emptied[MATCHES_MAX];
        size_t ne = 0;
        for (size_t k = 0; k < nc; k++) {
            if (k && cuts[k].array == cuts[k - 1].array && cuts[k].index == cuts[k - 1].index)
                continue;
            json_array_remove(cuts[k].array, cuts[k].index);
            if (json_array_size(cuts[k].array) == 0)
                emptied[ne++] = cuts[k].array;
        }
        drop_emptied(root, emptied, ne);
        json_t *got = json_loadb(out, outlen, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
        if (!got || !json_equal(got, root)) {
            fprintf(stderr, "pointer %s\nbody %.*s\ncut   %.*s\n", pointer, (int)len, body,
                    (int)outlen, out);
            FUZZ_CHECK(!"jdoc_text disagrees with jansson");
        }
        json_decref(got);
    }
    free(out);
    json_decref(root);
    jdoc_unmark(d);
    out = jdoc_text(d, &outlen);          /* unmarked: the body itself */
    FUZZ_CHECK(out && outlen == len && memcmp(out, body, len) == 0);
    free(out);
    jdoc_free(d);
}

static void run_form(const char *name, const bool *cut, const char *body, size_t len)
{
    static struct form_pair p[MATCHES_MAX];
    size_t all = form_parse(body, len, p, MATCHES_MAX);
    size_t n = all < MATCHES_MAX ? all : MATCHES_MAX;
    bool drop[MATCHES_MAX];
    for (size_t k = 0; k < n; k++) {
        FUZZ_CHECK(p[k].start <= p[k].eq && p[k].eq <= p[k].end && p[k].end <= len);
        FUZZ_CHECK(k == 0 || p[k].start > p[k - 1].end);
        drop[k] = cut[k] && form_name_is(body, &p[k], name);
        size_t vl;
        free(form_value(body, &p[k], &vl));
    }
    if (all > n)
        return;                           /* form_without needs every pair */
    size_t outlen;
    char *out = form_without(body, p, n, drop, &outlen);
    FUZZ_CHECK(out);
    /* The kept pairs, as they were, '&' between them. */
    size_t at = 0;
    bool first = true;
    for (size_t k = 0; k < n; k++) {
        if (drop[k])
            continue;
        if (!first) {
            FUZZ_CHECK(at < outlen && out[at] == '&');
            at++;
        }
        size_t pl = p[k].end - p[k].start;
        FUZZ_CHECK(at + pl <= outlen && memcmp(out + at, body + p[k].start, pl) == 0);
        at += pl;
        first = false;
    }
    FUZZ_CHECK(at == outlen);
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    const char *nl1 = memchr(s, '\n', size);
    if (!nl1)
        return 0;
    const char *nl2 = memchr(nl1 + 1, '\n', size - (size_t)(nl1 + 1 - s));
    if (!nl2)
        return 0;
    size_t plen = (size_t)(nl1 - s);
    if (plen >= 256)
        return 0;
    char pointer[256];
    memcpy(pointer, s, plen);
    pointer[plen] = '\0';
    bool cut[MATCHES_MAX] = { false };
    size_t k = 0;
    for (const char *c = nl1 + 1; c < nl2 && k + 4 <= MATCHES_MAX; c++) {
        int v = *c >= '0' && *c <= '9' ? *c - '0' : *c >= 'a' && *c <= 'f' ? *c - 'a' + 10 : 0;
        for (int b = 0; b < 4; b++)
            cut[k++] = v >> b & 1;
    }
    const char *body = nl2 + 1;
    size_t len = size - (size_t)(body - s);
    char *copy = malloc(len ? len : 1);       /* not NUL-terminated, like a body */
    FUZZ_CHECK(copy);
    memcpy(copy, body, len);
    if (len && (copy[0] == '{' || copy[0] == '['))
        run_json(pointer, cut, copy, len);
    else
        run_form(pointer[0] == '/' ? pointer + 1 : pointer, cut, copy, len);
    free(copy);
    return 0;
}

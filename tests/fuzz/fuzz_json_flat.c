/*
 * fuzz_json_flat: the request bodies' fast path (src/json_flat.c) against
 * jansson itself.  Whenever json_flat_parse() answers, jansson must accept
 * the same bytes with JSON_REJECT_DUPLICATES and build an equal object:
 * the fast path may decline anything, but never disagree.  The same for
 * json_flat_scan_nested(): every nested value it takes, compacted, is the
 * value jansson reads at its key.
 */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capgate/json_flat.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_nested(const char *s, size_t size)
{
    struct json_flat_field f[16];
    int n = json_flat_scan_nested(s, size, f, 16);
    if (n < 0)
        return;
    json_error_t err;
    json_t *ref = json_loadb(s, size, JSON_REJECT_DUPLICATES, &err);
    FUZZ_CHECK(ref != NULL && json_is_object(ref) && json_object_size(ref) == (size_t)n);
    for (int k = 0; k < n; k++) {
        if (f[k].type != JSON_FLAT_NESTED)
            continue;
        char *c = malloc(f[k].slen + 1);
        FUZZ_CHECK(c != NULL);
        size_t cl = json_flat_compact(f[k].s, f[k].slen, c);
        FUZZ_CHECK(cl <= f[k].slen && strlen(c) == cl);
        json_t *v = json_loadb(c, cl, JSON_REJECT_DUPLICATES, &err);
        char *key = strndup(f[k].key, f[k].klen);
        FUZZ_CHECK(v != NULL && key != NULL && json_equal(v, json_object_get(ref, key)));
        json_decref(v);
        free(key);
        free(c);
    }
    json_decref(ref);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_nested((const char *)data, size);
    json_t *fast = json_flat_parse((const char *)data, size);
    if (!fast)
        return 0;
    json_error_t err;
    json_t *ref = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, &err);
    FUZZ_CHECK(ref != NULL);
    FUZZ_CHECK(json_is_object(fast));
    FUZZ_CHECK(json_equal(fast, ref));
    json_decref(fast);
    json_decref(ref);
    return 0;
}

/*
 * fuzz_json_flat: the request bodies' fast path (src/json_flat.c) against
 * jansson itself.  Whenever json_flat_parse() answers, jansson must accept
 * the same bytes with JSON_REJECT_DUPLICATES and build an equal object:
 * the fast path may decline anything, but never disagree.
 */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "capgate/json_flat.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
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

/*
 * json_flat: a fast path for the shape nearly every request body has.
 *
 * jansson reads JSON one character at a time through a stream with UTF-8
 * decoding, and was a quarter of capgate's instructions per decision
 * (callgrind, make bench).  Request bodies are nearly always one flat object
 * of short ASCII strings, small integers, true, false and null; this reads
 * exactly that shape in one pass and builds the same jansson object.
 * Anything else -- nesting, escapes, non-ASCII, reals, big numbers, a
 * duplicate key, any syntax error -- is not its business: it answers NULL
 * and the caller parses with jansson, which also words the errors.
 */
#ifndef CAPGATE_JSON_FLAT_H
#define CAPGATE_JSON_FLAT_H

#include <jansson.h>
#include <stddef.h>

/* json_loadb(S, LEN, JSON_REJECT_DUPLICATES, ...) whenever that is a flat
 * object of the shape above (of at most JSON_FLAT_PARSE_MAX fields);
 * otherwise NULL. */
#define JSON_FLAT_PARSE_MAX 64
json_t *json_flat_parse(const char *s, size_t len);

/* The same reading without building anything: the object's fields in
 * order, as spans of S (strings without their quotes).  Returns how many,
 * or -1 when S is not a flat object of that shape or has more than MAX
 * fields.  For a hot path that knows its fields: no allocation at all. */
struct json_flat_field {
    const char *key;
    size_t klen;
    enum { JSON_FLAT_STRING, JSON_FLAT_TRUE, JSON_FLAT_FALSE, JSON_FLAT_NULL,
           JSON_FLAT_INTEGER } type;
    const char *s;          /* JSON_FLAT_STRING */
    size_t slen;
    json_int_t i;           /* JSON_FLAT_INTEGER */
};
int json_flat_scan(const char *s, size_t len, struct json_flat_field *out, size_t max);

#endif

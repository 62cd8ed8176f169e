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
           JSON_FLAT_INTEGER, JSON_FLAT_NESTED } type;
    const char *s;          /* JSON_FLAT_STRING; JSON_FLAT_NESTED: the value's text */
    size_t slen;
    json_int_t i;           /* JSON_FLAT_INTEGER */
};
int json_flat_scan(const char *s, size_t len, struct json_flat_field *out, size_t max);

/* As json_flat_scan, but a field's value may also be an object or an array
 * (JSON_FLAT_NESTED, its text as a span of S), checked as jansson would read
 * it with JSON_REJECT_DUPLICATES -- or declined (-1) where this reader is not
 * sure it would agree: depth beyond JSON_FLAT_NEST_MAX, an object of more
 * than JSON_FLAT_KEYS_MAX keys or a key with an escape, a number that could
 * overflow.  For a body that carries a payload to pass on as it came (POST
 * /v1/send): the payload is read once, and never re-encoded. */
#define JSON_FLAT_NEST_MAX 32
#define JSON_FLAT_KEYS_MAX 64
int json_flat_scan_nested(const char *s, size_t len, struct json_flat_field *out, size_t max);

/* A checked nested value (S, LEN) without the whitespace between its tokens,
 * into OUT (LEN + 1 bytes at least), NUL-terminated.  Returns its length. */
size_t json_flat_compact(const char *s, size_t len, char *out);

#endif

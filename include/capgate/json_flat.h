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
 * object of the shape above; otherwise NULL. */
json_t *json_flat_parse(const char *s, size_t len);

#endif

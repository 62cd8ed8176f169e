/*
 * jsonptr: RFC 6901 JSON pointers ("/personalizations/0/to/0/email", with
 * ~1 for '/' and ~0 for '~'), for transparent routes.  Pure; fuzzed.
 */
#ifndef CAPGATE_JSONPTR_H
#define CAPGATE_JSONPTR_H

#include <jansson.h>

/* The value POINTER names inside ROOT (borrowed), or NULL.  "" is ROOT. */
json_t *json_pointer(json_t *root, const char *pointer);

#endif

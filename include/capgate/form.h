/*
 * form: application/x-www-form-urlencoded bodies (Twilio's Messages API:
 * To=%2B15551234567&Body=hi) read as spans of their bytes, so a route can
 * find a field and leave a pair out while every other byte stays as sent.
 * Pure; bounded by the caller's MAX.
 */
#ifndef CAPGATE_FORM_H
#define CAPGATE_FORM_H

#include <stdbool.h>
#include <stddef.h>

struct form_pair {
    size_t start, eq, end;     /* "name=value" is [start, end); '=' at eq (== end: none) */
};

/* The pairs of BODY (LEN bytes) into OUT[0..MAX); how many there are
 * (those past MAX are counted, not written).  Empty pairs ("a=1&&b=2") are
 * skipped. */
size_t form_parse(const char *body, size_t len, struct form_pair *out, size_t max);
/* Whether pair P's decoded name is NAME. */
bool form_name_is(const char *body, const struct form_pair *p, const char *name);
/* Pair P's value decoded (%XX, '+' for space): malloc'ed, NUL-terminated,
 * *LEN set; NULL for a bad escape, a NUL inside, or out of memory. */
char *form_value(const char *body, const struct form_pair *p, size_t *len);
/* BODY without the pairs whose DROP[i] is true (the '&' between kept pairs
 * as they were).  Malloc'ed, NUL-terminated, *OUTLEN set. */
char *form_without(const char *body, const struct form_pair *pairs, size_t n,
                   const bool *drop, size_t *outlen);

#endif

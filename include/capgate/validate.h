/*
 * validate: request bodies -> checked fields, or the first error found.
 *
 * Pure functions over jansson values: no I/O, no Redis, unit-tested.  A
 * failed check fills struct field_error; the caller sends it with
 * reply_error().  Messages never quote a field's value (it may be a user id).
 */
#ifndef CAPGATE_VALIDATE_H
#define CAPGATE_VALIDATE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "capgate/api_error.h"

struct field_error {
    enum api_error code;
    const char *field;        /* static, or FIELD_NAME (an unknown field's key) */
    char field_name[64];
    char message[160];
};

/* Fills E; returns -1 (for "return validate_fail(...)"). */
int validate_fail(struct field_error *e, enum api_error code, const char *field,
                  const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* BODY must be one JSON object in UTF-8 (duplicate keys refused).
 * Returns a new reference, or NULL with E filled. */
json_t *validate_object(const char *body, size_t len, struct field_error *e);

/* Refuses keys not in ALLOWED (NULL-terminated).  0 or -1. */
int validate_known_fields(json_t *obj, const char *const *allowed, struct field_error *e);

/* String field of MIN..MAX bytes.  Absent: -1 (missing_field) when REQUIRED,
 * else 0 with *OUT = NULL.  *OUT points into OBJ. */
int validate_string(json_t *obj, const char *key, bool required, size_t min, size_t max,
                    const char **out, size_t *len, struct field_error *e);

/* validate_string for text that travels on (message ids, campaigns, keys):
 * control characters are refused too. */
int validate_text(json_t *obj, const char *key, bool required, size_t min, size_t max,
                  const char **out, size_t *len, struct field_error *e);
/* True when S (LEN bytes) holds a control character (C0, DEL) or a NUL. */
bool validate_has_control(const char *s, size_t len);

/* Optional boolean (default false).  0 or -1. */
int validate_bool(json_t *obj, const char *key, bool *out, struct field_error *e);

#endif

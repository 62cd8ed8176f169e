/* validate: request body checks.  See validate.h. */
#include "capgate/validate.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "capgate/json_flat.h"

int validate_fail(struct field_error *e, enum api_error code, const char *field,
                  const char *fmt, ...)
{
    va_list ap;
    e->code = code;
    e->field = field;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    return -1;
}

json_t *validate_object(const char *body, size_t len, struct field_error *e)
{
    json_error_t jerr;
    json_t *obj;

    if (len == 0) {
        validate_fail(e, API_INVALID_JSON, NULL, "request body is empty: send a JSON object");
        return NULL;
    }
    obj = json_flat_parse(body, len);
    if (!obj)
        obj = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!obj) {
        /* jansson quotes up to 20 bytes of the body ("... near '<bytes>'"),
         * and a bad escape ("invalid Unicode '\uD800'"): a user id, a
         * person's text.  The reason and the byte are enough. */
        char *cut = strstr(jerr.text, " near '");
        if (cut)
            *cut = '\0';
        if (strncmp(jerr.text, "invalid Unicode", 15) == 0 && (cut = strstr(jerr.text, " '")))
            *cut = '\0';
        validate_fail(e, API_INVALID_JSON, NULL, "body is not valid JSON: %s (at byte %d)",
             jerr.text, jerr.position);
        return NULL;
    }
    if (!json_is_object(obj)) {
        json_decref(obj);
        validate_fail(e, API_INVALID_JSON, NULL, "body must be a JSON object");
        return NULL;
    }
    return obj;
}

int validate_known_fields(json_t *obj, const char *const *allowed, struct field_error *e)
{
    const char *key;
    json_t *value;

    json_object_foreach(obj, key, value) {
        size_t k;
        (void)value;
        for (k = 0; allowed[k]; k++)
            if (strcmp(key, allowed[k]) == 0)
                break;
        if (!allowed[k]) {
            /* The key lives in OBJ: the error keeps its own copy. */
            snprintf(e->field_name, sizeof e->field_name, "%s", key);
            return validate_fail(e, API_INVALID_FIELD, e->field_name, "unknown field");
        }
    }
    return 0;
}

int validate_string(json_t *obj, const char *key, bool required, size_t min, size_t max,
                    const char **out, size_t *len, struct field_error *e)
{
    json_t *v = json_object_get(obj, key);

    *out = NULL;
    if (len)
        *len = 0;
    if (!v || json_is_null(v)) {
        if (required)
            return validate_fail(e, API_MISSING_FIELD, key, "%s is required", key);
        return 0;
    }
    if (!json_is_string(v))
        return validate_fail(e, API_INVALID_FIELD, key, "%s must be a string", key);
    size_t n = json_string_length(v);
    if (n < min || n > max)
        return validate_fail(e, API_INVALID_FIELD, key, "%s must be %zu to %zu bytes long", key, min, max);
    *out = json_string_value(v);
    if (len)
        *len = n;
    return 0;
}

bool validate_has_control(const char *s, size_t len)
{
    for (size_t k = 0; k < len; k++)
        if ((unsigned char)s[k] < 0x20 || s[k] == 0x7f)
            return true;
    return false;
}

int validate_text(json_t *obj, const char *key, bool required, size_t min, size_t max,
                  const char **out, size_t *len, struct field_error *e)
{
    size_t n;
    if (validate_string(obj, key, required, min, max, out, &n, e) != 0)
        return -1;
    if (len)
        *len = n;
    if (*out && validate_has_control(*out, n)) {
        *out = NULL;
        return validate_fail(e, API_INVALID_FIELD, key, "%s must not hold control characters", key);
    }
    return 0;
}

int validate_bool(json_t *obj, const char *key, bool *out, struct field_error *e)
{
    json_t *v = json_object_get(obj, key);

    *out = false;
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_boolean(v))
        return validate_fail(e, API_INVALID_FIELD, key, "%s must be true or false", key);
    *out = json_is_true(v);
    return 0;
}

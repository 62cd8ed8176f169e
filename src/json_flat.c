/* json_flat: one flat JSON object, fast.  See json_flat.h. */
#include "capgate/json_flat.h"

#include <stdbool.h>
#include <string.h>

static const char *skip_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

/* A string without escapes, of printable ASCII: P at the opening quote.
 * Returns the position after the closing quote, or NULL. */
static const char *read_string(const char *p, const char *end, const char **s, size_t *n)
{
    const char *q = ++p;
    while (q < end && *q != '"') {
        unsigned char c = (unsigned char)*q;
        if (c < 0x20 || c >= 0x80 || c == '\\')
            return NULL;
        q++;
    }
    if (q >= end)
        return NULL;
    *s = p;
    *n = (size_t)(q - p);
    return q + 1;
}

static bool literal(const char *p, const char *end, const char *word, size_t n)
{
    return (size_t)(end - p) >= n && memcmp(p, word, n) == 0;
}

/* -?(0|[1-9][0-9]*) with at most 18 digits (no overflow), and no fraction
 * or exponent (jansson makes those reals). */
static const char *read_integer(const char *p, const char *end, json_int_t *out)
{
    bool neg = false;
    json_int_t v = 0;
    int digits = 0;
    if (p < end && *p == '-') {
        neg = true;
        p++;
    }
    if (p >= end || *p < '0' || *p > '9')
        return NULL;
    if (*p == '0' && p + 1 < end && p[1] >= '0' && p[1] <= '9')
        return NULL;                     /* leading zero: invalid JSON */
    while (p < end && *p >= '0' && *p <= '9') {
        if (++digits > 18)
            return NULL;
        v = v * 10 + (*p++ - '0');
    }
    if (p < end && (*p == '.' || *p == 'e' || *p == 'E'))
        return NULL;
    *out = neg ? -v : v;
    return p;
}

json_t *json_flat_parse(const char *s, size_t len)
{
    const char *p = s, *end = s + len;
    json_t *obj;

    p = skip_ws(p, end);
    if (p >= end || *p != '{')
        return NULL;
    obj = json_object();
    if (!obj)
        return NULL;
    p = skip_ws(p + 1, end);
    if (p < end && *p == '}') {
        p++;
        goto done;
    }
    for (;;) {
        const char *key, *str;
        size_t klen, slen;
        json_t *value;
        json_int_t iv;

        if (p >= end || *p != '"' || !(p = read_string(p, end, &key, &klen)))
            goto fallback;
        p = skip_ws(p, end);
        if (p >= end || *p != ':')
            goto fallback;
        p = skip_ws(p + 1, end);
        if (p >= end)
            goto fallback;
        if (*p == '"') {
            if (!(p = read_string(p, end, &str, &slen)))
                goto fallback;
            value = json_stringn_nocheck(str, slen);
        } else if (literal(p, end, "true", 4)) {
            value = json_true();
            p += 4;
        } else if (literal(p, end, "false", 5)) {
            value = json_false();
            p += 5;
        } else if (literal(p, end, "null", 4)) {
            value = json_null();
            p += 4;
        } else if (*p == '-' || (*p >= '0' && *p <= '9')) {
            if (!(p = read_integer(p, end, &iv)))
                goto fallback;
            value = json_integer(iv);
        } else {
            goto fallback;
        }
        /* jansson would refuse a duplicate: let it say so. */
        if (!value || json_object_getn(obj, key, klen) ||
            json_object_setn_new_nocheck(obj, key, klen, value) != 0) {
            json_decref(value);
            goto fallback;
        }
        p = skip_ws(p, end);
        if (p < end && *p == ',') {
            p = skip_ws(p + 1, end);
            continue;
        }
        if (p < end && *p == '}') {
            p++;
            break;
        }
        goto fallback;
    }
done:
    if (skip_ws(p, end) != end)
        goto fallback;                   /* trailing bytes */
    return obj;
fallback:
    json_decref(obj);
    return NULL;
}

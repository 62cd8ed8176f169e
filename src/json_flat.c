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
        if (c < 0x20 || c >= 0x7f || c == '\\')   /* DEL (0x7f) is a control character too */
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

int json_flat_scan(const char *s, size_t len, struct json_flat_field *out, size_t max)
{
    const char *p = s, *end = s + len;
    size_t n = 0;

    p = skip_ws(p, end);
    if (p >= end || *p != '{')
        return -1;
    p = skip_ws(p + 1, end);
    if (p < end && *p == '}') {
        p++;
        goto done;
    }
    for (;;) {
        struct json_flat_field f;

        if (n >= max || p >= end || *p != '"' || !(p = read_string(p, end, &f.key, &f.klen)))
            return -1;
        p = skip_ws(p, end);
        if (p >= end || *p != ':')
            return -1;
        p = skip_ws(p + 1, end);
        if (p >= end)
            return -1;
        f.s = NULL;
        f.slen = 0;
        f.i = 0;
        if (*p == '"') {
            if (!(p = read_string(p, end, &f.s, &f.slen)))
                return -1;
            f.type = JSON_FLAT_STRING;
        } else if (literal(p, end, "true", 4)) {
            f.type = JSON_FLAT_TRUE;
            p += 4;
        } else if (literal(p, end, "false", 5)) {
            f.type = JSON_FLAT_FALSE;
            p += 5;
        } else if (literal(p, end, "null", 4)) {
            f.type = JSON_FLAT_NULL;
            p += 4;
        } else if (*p == '-' || (*p >= '0' && *p <= '9')) {
            if (!(p = read_integer(p, end, &f.i)))
                return -1;
            f.type = JSON_FLAT_INTEGER;
        } else {
            return -1;
        }
        /* jansson would refuse a duplicate: let it say so. */
        for (size_t k = 0; k < n; k++)
            if (out[k].klen == f.klen && memcmp(out[k].key, f.key, f.klen) == 0)
                return -1;
        out[n++] = f;
        p = skip_ws(p, end);
        if (p < end && *p == ',') {
            p = skip_ws(p + 1, end);
            continue;
        }
        if (p < end && *p == '}') {
            p++;
            break;
        }
        return -1;
    }
done:
    if (skip_ws(p, end) != end)
        return -1;                       /* trailing bytes */
    return (int)n;
}

json_t *json_flat_parse(const char *s, size_t len)
{
    struct json_flat_field f[JSON_FLAT_PARSE_MAX];
    int n = json_flat_scan(s, len, f, JSON_FLAT_PARSE_MAX);
    if (n < 0)
        return NULL;
    json_t *obj = json_object();
    if (!obj)
        return NULL;
    for (int k = 0; k < n; k++) {
        json_t *value;
        switch (f[k].type) {
        case JSON_FLAT_STRING: value = json_stringn_nocheck(f[k].s, f[k].slen); break;
        case JSON_FLAT_TRUE: value = json_true(); break;
        case JSON_FLAT_FALSE: value = json_false(); break;
        case JSON_FLAT_NULL: value = json_null(); break;
        default: value = json_integer(f[k].i); break;
        }
        if (!value || json_object_setn_new_nocheck(obj, f[k].key, f[k].klen, value) != 0) {
            json_decref(value);
            json_decref(obj);
            return NULL;
        }
    }
    return obj;
}

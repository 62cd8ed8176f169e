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

/* ---- nested values (json_flat_scan_nested) ---------------------------------- */

static int hex4(const char *p)
{
    int v = 0;
    for (int k = 0; k < 4; k++) {
        char c = p[k];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= c - '0';
        else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
        else return -1;
    }
    return v;
}

/* One UTF-8 character of more than one byte at P, as jansson checks it (no
 * overlong form, no surrogate, nothing above U+10FFFF).  Its end, or NULL. */
static const char *utf8_char(const char *p, const char *end)
{
    unsigned char c = (unsigned char)*p;
    int n;
    unsigned v;
    if (c >= 0xc2 && c <= 0xdf) { n = 1; v = c & 0x1f; }
    else if (c >= 0xe0 && c <= 0xef) { n = 2; v = c & 0x0f; }
    else if (c >= 0xf0 && c <= 0xf4) { n = 3; v = c & 0x07; }
    else return NULL;
    if (end - p <= n)
        return NULL;
    for (int k = 1; k <= n; k++) {
        unsigned char d = (unsigned char)p[k];
        if ((d & 0xc0) != 0x80)
            return NULL;
        v = (v << 6) | (d & 0x3f);
    }
    if ((n == 2 && v < 0x800) || (n == 3 && (v < 0x10000 || v > 0x10ffff)) ||
        (v >= 0xd800 && v <= 0xdfff))
        return NULL;
    return p + n + 1;
}

/* Any JSON string at P (its opening quote); *ESCAPED says whether it holds
 * an escape.  The position after it, or NULL. */
static const char *any_string(const char *p, const char *end, bool *escaped)
{
    *escaped = false;
    for (p++; p < end; ) {
        unsigned char c = (unsigned char)*p;
        if (c == '"')
            return p + 1;
        if (c < 0x20)
            return NULL;
        if (c >= 0x80) {
            if (!(p = utf8_char(p, end)))
                return NULL;
            continue;
        }
        if (c != '\\') {
            p++;
            continue;
        }
        *escaped = true;
        if (end - p < 2)
            return NULL;
        if (p[1] && strchr("\"\\/bfnrt", p[1])) {
            p += 2;
            continue;
        }
        if (p[1] != 'u' || end - p < 6)
            return NULL;
        int u = hex4(p + 2);
        if (u <= 0)                      /* \u0000: jansson refuses a NUL */
            return NULL;
        p += 6;
        if (u >= 0xdc00 && u <= 0xdfff)
            return NULL;                 /* a lone low surrogate */
        if (u >= 0xd800 && u <= 0xdbff) {
            int lo = end - p >= 6 && p[0] == '\\' && p[1] == 'u' ? hex4(p + 2) : -1;
            if (lo < 0xdc00 || lo > 0xdfff)
                return NULL;
            p += 6;
        }
    }
    return NULL;
}

/* A number of at most 18 digits before the point and a two-digit exponent:
 * jansson reads it without overflow (an integer fits json_int_t, a real is
 * finite). */
static const char *any_number(const char *p, const char *end)
{
    const char *d;
    if (p < end && *p == '-')
        p++;
    for (d = p; p < end && *p >= '0' && *p <= '9'; p++)
        ;
    if (p == d || p - d > 18 || (*d == '0' && p - d > 1))
        return NULL;
    if (p < end && *p == '.') {
        for (d = ++p; p < end && *p >= '0' && *p <= '9'; p++)
            ;
        if (p == d)
            return NULL;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        for (d = p; p < end && *p >= '0' && *p <= '9'; p++)
            ;
        if (p == d || p - d > 2)
            return NULL;
    }
    return p;
}

static const char *any_value(const char *p, const char *end, int depth);

/* An object or an array at P.  The position after it, or NULL. */
static const char *container(const char *p, const char *end, int depth)
{
    char close = *p == '{' ? '}' : ']';
    struct { const char *s; size_t n; } keys[JSON_FLAT_KEYS_MAX];
    size_t nkeys = 0;

    if (depth > JSON_FLAT_NEST_MAX)
        return NULL;
    p = skip_ws(p + 1, end);
    if (p < end && *p == close)
        return p + 1;
    for (;;) {
        if (close == '}') {
            bool escaped;
            const char *k = p;
            if (p >= end || *p != '"' || !(p = any_string(p, end, &escaped)) || escaped ||
                nkeys == JSON_FLAT_KEYS_MAX)
                return NULL;
            /* Without escapes equal keys are equal bytes: jansson would
             * refuse the duplicate. */
            for (size_t i = 0; i < nkeys; i++)
                if (keys[i].n == (size_t)(p - k) && memcmp(keys[i].s, k, keys[i].n) == 0)
                    return NULL;
            keys[nkeys].s = k;
            keys[nkeys++].n = (size_t)(p - k);
            p = skip_ws(p, end);
            if (p >= end || *p != ':')
                return NULL;
            p = skip_ws(p + 1, end);
        }
        if (!(p = any_value(p, end, depth)))
            return NULL;
        p = skip_ws(p, end);
        if (p < end && *p == ',') {
            p = skip_ws(p + 1, end);
            continue;
        }
        if (p < end && *p == close)
            return p + 1;
        return NULL;
    }
}

static const char *any_value(const char *p, const char *end, int depth)
{
    bool escaped;
    if (p >= end)
        return NULL;
    switch (*p) {
    case '{': case '[': return container(p, end, depth + 1);
    case '"': return any_string(p, end, &escaped);
    case 't': return literal(p, end, "true", 4) ? p + 4 : NULL;
    case 'f': return literal(p, end, "false", 5) ? p + 5 : NULL;
    case 'n': return literal(p, end, "null", 4) ? p + 4 : NULL;
    default: return any_number(p, end);
    }
}

size_t json_flat_compact(const char *s, size_t len, char *out)
{
    size_t n = 0;
    bool in_string = false;
    for (size_t k = 0; k < len; k++) {
        char c = s[k];
        if (in_string) {
            if (c == '\\' && k + 1 < len) {
                out[n++] = c;
                c = s[++k];
            } else if (c == '"') {
                in_string = false;
            }
        } else if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
            continue;
        } else if (c == '"') {
            in_string = true;
        }
        out[n++] = c;
    }
    out[n] = '\0';
    return n;
}

/* ---- the flat object --------------------------------------------------------- */

static int scan(const char *s, size_t len, struct json_flat_field *out, size_t max, bool nested)
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
        } else if (nested && (*p == '{' || *p == '[')) {
            f.s = p;
            if (!(p = container(p, end, 1)))
                return -1;
            f.slen = (size_t)(p - f.s);
            f.type = JSON_FLAT_NESTED;
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

int json_flat_scan(const char *s, size_t len, struct json_flat_field *out, size_t max)
{
    return scan(s, len, out, max, false);
}

int json_flat_scan_nested(const char *s, size_t len, struct json_flat_field *out, size_t max)
{
    return scan(s, len, out, max, true);
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

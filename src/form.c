/* form: urlencoded bodies as spans.  See form.h. */
#include "capgate/form.h"

#include <stdlib.h>
#include <string.h>

size_t form_parse(const char *body, size_t len, struct form_pair *out, size_t max)
{
    size_t n = 0, p = 0;
    while (p < len) {
        const char *amp = memchr(body + p, '&', len - p);
        size_t end = amp ? (size_t)(amp - body) : len;
        if (end > p) {
            const char *eq = memchr(body + p, '=', end - p);
            if (n < max)
                out[n] = (struct form_pair){ p, eq ? (size_t)(eq - body) : end, end };
            n++;
        }
        p = end + 1;
    }
    return n;
}

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : (c | 0x20) >= 'a' && (c | 0x20) <= 'f'
           ? (c | 0x20) - 'a' + 10 : -1;
}

/* [S, E) decoded into a malloc'ed string. */
static char *decode(const char *body, size_t s, size_t e, size_t *len)
{
    char *out = malloc(e - s + 1), *o = out;
    if (!out)
        return NULL;
    for (size_t p = s; p < e; p++) {
        char c = body[p];
        if (c == '+') {
            *o++ = ' ';
        } else if (c == '%') {
            int hi, lo;
            if (p + 2 >= e || (hi = hexval(body[p + 1])) < 0 || (lo = hexval(body[p + 2])) < 0 ||
                (hi == 0 && lo == 0)) {
                free(out);
                return NULL;
            }
            *o++ = (char)(hi << 4 | lo);
            p += 2;
        } else if (c == '\0') {
            free(out);
            return NULL;
        } else {
            *o++ = c;
        }
    }
    *o = '\0';
    *len = (size_t)(o - out);
    return out;
}

bool form_name_is(const char *body, const struct form_pair *p, const char *name)
{
    size_t n;
    char *k = decode(body, p->start, p->eq, &n);
    bool same = k && n == strlen(name) && memcmp(k, name, n) == 0;
    free(k);
    return same;
}

char *form_value(const char *body, const struct form_pair *p, size_t *len)
{
    return decode(body, p->eq < p->end ? p->eq + 1 : p->end, p->end, len);
}

char *form_without(const char *body, const struct form_pair *pairs, size_t n,
                   const bool *drop, size_t *outlen)
{
    size_t total = 0;
    for (size_t k = 0; k < n; k++)
        total += pairs[k].end - pairs[k].start + 1;
    char *out = malloc(total + 1), *o = out;
    if (!out)
        return NULL;
    for (size_t k = 0; k < n; k++) {
        if (drop[k])
            continue;
        if (o > out)
            *o++ = '&';
        memcpy(o, body + pairs[k].start, pairs[k].end - pairs[k].start);
        o += pairs[k].end - pairs[k].start;
    }
    *o = '\0';
    *outlen = (size_t)(o - out);
    return out;
}

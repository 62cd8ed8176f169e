/* textbuf: a growing text.  See textbuf.h. */
#include "capgate/textbuf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Room for N more bytes and a NUL; false (FAILED set) when there is none. */
static bool reserve(struct textbuf *t, size_t n)
{
    if (t->failed)
        return false;
    if (t->buf && t->cap - t->len > n)
        return true;
    size_t cap = t->cap ? t->cap * 2 : 8192;
    while (cap - t->len <= n)
        cap *= 2;
    char *p = realloc(t->buf, cap);
    if (!p) {
        t->failed = true;
        return false;
    }
    t->buf = p;
    t->cap = cap;
    return true;
}

void textbuf_printf(struct textbuf *t, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        size_t room = t->cap - t->len;
        va_start(ap, fmt);
        int n = t->buf && !t->failed ? vsnprintf(t->buf + t->len, room, fmt, ap) : -1;
        va_end(ap);
        if (n >= 0 && (size_t)n < room) {
            t->len += (size_t)n;
            return;
        }
        if (!reserve(t, n >= 0 ? (size_t)n : 0))
            return;
    }
}

void textbuf_put(struct textbuf *t, const char *s, size_t n)
{
    if (!reserve(t, n))
        return;
    memcpy(t->buf + t->len, s, n);
    t->len += n;
    t->buf[t->len] = '\0';
}

void textbuf_puts(struct textbuf *t, const char *s)
{
    textbuf_put(t, s, strlen(s));
}

size_t json_escape(char *out, size_t size, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (; *s && o + 7 < size; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c < 0x20) {
            memcpy(out + o, "\\u00", 4);
            out[o + 4] = hex[c >> 4];
            out[o + 5] = hex[c & 15];
            o += 6;
        } else {
            out[o++] = (char)c;
        }
    }
    out[o] = '\0';
    return o;
}

size_t text_copy(char *dst, size_t size, const char *s)
{
    size_t n = strnlen(s, size - 1);
    memcpy(dst, s, n);
    dst[n] = '\0';
    return n;
}

char *text_dec(char *p, unsigned long long v)
{
    char num[20];
    int n = 0;
    do {
        num[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        *p++ = num[--n];
    return p;
}

char *text_sdec(char *p, long long v)
{
    if (v >= 0)
        return text_dec(p, (unsigned long long)v);
    *p++ = '-';
    return text_dec(p, 0 - (unsigned long long)v);
}

void textbuf_json_string(struct textbuf *t, const char *s)
{
    size_t n = strlen(s);
    if (!reserve(t, 6 * n + 2))
        return;
    t->buf[t->len++] = '"';
    t->len += json_escape(t->buf + t->len, t->cap - t->len, s);
    t->buf[t->len++] = '"';
    t->buf[t->len] = '\0';
}

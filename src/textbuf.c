/* textbuf: a growing text.  See textbuf.h. */
#include "capgate/textbuf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

void textbuf_printf(struct textbuf *t, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        size_t room = t->cap - t->len;
        va_start(ap, fmt);
        int n = t->buf ? vsnprintf(t->buf + t->len, room, fmt, ap) : -1;
        va_end(ap);
        if (n >= 0 && (size_t)n < room) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = t->cap ? t->cap * 2 : 8192;
        while (n >= 0 && cap - t->len <= (size_t)n)
            cap *= 2;
        char *p = realloc(t->buf, cap);
        if (!p) {
            t->failed = true;
            return;
        }
        t->buf = p;
        t->cap = cap;
    }
}

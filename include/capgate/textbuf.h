/*
 * textbuf: a growing text, for answers built a piece at a time (/metrics,
 * the public pages).  A failed allocation sets FAILED and later pieces are
 * dropped: the caller checks once, at the end.
 */
#ifndef CAPGATE_TEXTBUF_H
#define CAPGATE_TEXTBUF_H

#include <stdbool.h>
#include <stddef.h>

struct textbuf {
    char *buf;                /* malloc'ed, NUL-terminated; NULL before the first piece */
    size_t len, cap;
    bool failed;
};

__attribute__((format(printf, 2, 3)))
void textbuf_printf(struct textbuf *t, const char *fmt, ...);

#endif

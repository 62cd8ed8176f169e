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
/* N bytes of S; S up to its NUL.  No printf: for the hot paths. */
void textbuf_put(struct textbuf *t, const char *s, size_t n);
void textbuf_puts(struct textbuf *t, const char *s);
/* S (UTF-8, NUL-terminated) as a JSON string: quoted, with quotes,
 * backslashes and control characters escaped. */
void textbuf_json_string(struct textbuf *t, const char *s);

/* The inside of that JSON string, into OUT (SIZE bytes, NUL-terminated;
 * 6 * strlen(S) + 1 always suffice, less stops early).  Returns its length. */
size_t json_escape(char *out, size_t size, const char *s);

/* The hot paths' snprintf("%s") and ("%llu"), without printf's set-up
 * (a few hundred instructions a call, a dozen calls a request).
 * text_copy: S into DST (SIZE > 0 bytes), cut to fit, NUL-terminated;
 * returns the length written.  text_dec: V in decimal at P (up to 20
 * bytes, no NUL); returns the end. */
size_t text_copy(char *dst, size_t size, const char *s);
char *text_dec(char *p, unsigned long long v);
/* V in decimal at P, '-' first when negative (up to 20 bytes, no NUL). */
char *text_sdec(char *p, long long v);

#endif

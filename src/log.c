/* log: logfmt lines on stderr.  See include/capgate/log.h. */
#include "capgate/log.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum log_level log_current_level = LOG_LEVEL_INFO;
static volatile int log_json;      /* log_format: json (set at start and on reload) */

static const char *const level_names[] = { "error", "warn", "info", "debug" };

#define LINE_MAX_BYTES 2048

void log_set_level(enum log_level level)
{
    log_current_level = level;
}

void log_set_format(enum log_format format)
{
    log_json = format == LOG_FORMAT_JSON;
}

/* ---- values ------------------------------------------------------------------ */

struct out {
    char *p;
    size_t n, size;            /* SIZE includes room for the NUL */
};

static void put_char(struct out *o, char c)
{
    if (o->n + 1 < o->size)
        o->p[o->n++] = c;
}

static void put_mem(struct out *o, const char *s, size_t len)
{
    for (size_t k = 0; k < len; k++)
        put_char(o, s[k]);
}

/* A plain word needs no quotes: no space, quote, backslash, '=' or control. */
static bool is_plain(const char *s, size_t len)
{
    if (len == 0)
        return false;
    for (size_t k = 0; k < len; k++) {
        unsigned char c = (unsigned char)s[k];
        if (c <= ' ' || c == '"' || c == '\\' || c == '=' || c == 0x7f)
            return false;
    }
    return true;
}

/* S (LEN bytes) as one logfmt value (QUOTED: always in quotes). */
static void put_value(struct out *o, const char *s, size_t len, bool quoted)
{
    if (!quoted && is_plain(s, len)) {
        put_mem(o, s, len);
        return;
    }
    put_char(o, '"');
    for (size_t k = 0; k < len; k++) {
        unsigned char c = (unsigned char)s[k];
        char esc[8];
        switch (c) {
        case '"': put_mem(o, "\\\"", 2); break;
        case '\\': put_mem(o, "\\\\", 2); break;
        case '\n': put_mem(o, "\\n", 2); break;
        case '\r': put_mem(o, "\\r", 2); break;
        case '\t': put_mem(o, "\\t", 2); break;
        default:
            if (c < 0x20 || c == 0x7f) {
                snprintf(esc, sizeof esc, "\\u%04x", c);
                put_mem(o, esc, 6);
            } else {
                put_char(o, (char)c);
            }
        }
    }
    put_char(o, '"');
}

/* ---- the format ---------------------------------------------------------------- */

/* printf's format, each conversion done by snprintf on its own, but %s
 * written as a logfmt value (put_value). */
static void put_format(struct out *o, const char *fmt, va_list ap)
{
    while (*fmt) {
        if (*fmt != '%') {
            put_char(o, *fmt++);
            continue;
        }
        const char *start = fmt++;
        if (*fmt == '%') {
            put_char(o, '%');
            fmt++;
            continue;
        }
        /* Flags and width are read and ignored: a value is written whole. */
        int prec = -1;
        while (*fmt && strchr("-+ #0", *fmt))
            fmt++;
        if (*fmt == '*') {
            (void)va_arg(ap, int);
            fmt++;
        } else {
            while (*fmt >= '0' && *fmt <= '9')
                fmt++;
        }
        if (*fmt == '.') {
            fmt++;
            if (*fmt == '*') {
                prec = va_arg(ap, int);
                fmt++;
            } else {
                prec = 0;
                while (*fmt >= '0' && *fmt <= '9')
                    prec = prec * 10 + (*fmt++ - '0');
            }
        }
        int longs = 0;
        char size_mod = 0;
        while (*fmt && strchr("hlzjt", *fmt)) {
            if (*fmt == 'l')
                longs++;
            else
                size_mod = *fmt;
            fmt++;
        }
        char conv = *fmt ? *fmt++ : '\0';
        char spec[32], buf[64];
        size_t slen = (size_t)(fmt - start);
        if (slen >= sizeof spec || conv == '\0')
            return;                      /* not a format we write: stop here */
        memcpy(spec, start, slen);
        spec[slen] = '\0';
        switch (conv) {
        case 's': {
            const char *s = va_arg(ap, const char *);
            if (!s)
                s = "(null)";
            put_value(o, s, prec >= 0 ? strnlen(s, (size_t)prec) : strlen(s), false);
            break;
        }
        case 'd': case 'i': {
            long long v = longs >= 2 ? va_arg(ap, long long) : longs == 1 ? va_arg(ap, long)
                        : size_mod == 'z' ? (long long)va_arg(ap, ssize_t)
                        : size_mod == 'j' ? (long long)va_arg(ap, intmax_t) : va_arg(ap, int);
            snprintf(buf, sizeof buf, "%lld", v);
            put_mem(o, buf, strlen(buf));
            break;
        }
        case 'u': case 'x': case 'X': case 'o': {
            unsigned long long v = longs >= 2 ? va_arg(ap, unsigned long long)
                                 : longs == 1 ? va_arg(ap, unsigned long)
                                 : size_mod == 'z' ? va_arg(ap, size_t)
                                 : size_mod == 'j' ? (unsigned long long)va_arg(ap, uintmax_t)
                                 : va_arg(ap, unsigned);
            if (conv == 'u')
                snprintf(buf, sizeof buf, "%llu", v);
            else if (conv == 'o')
                snprintf(buf, sizeof buf, "%llo", v);
            else
                snprintf(buf, sizeof buf, conv == 'x' ? "%llx" : "%llX", v);
            put_mem(o, buf, strlen(buf));
            break;
        }
        case 'c':
            put_char(o, (char)va_arg(ap, int));
            break;
        case 'f': case 'g': case 'e': {
            double v = va_arg(ap, double);
            int digits = prec >= 0 && prec < 20 ? prec : 6;
            if (conv == 'f')
                snprintf(buf, sizeof buf, "%.*f", digits, v);
            else if (conv == 'g')
                snprintf(buf, sizeof buf, "%.*g", digits, v);
            else
                snprintf(buf, sizeof buf, "%.*e", digits, v);
            put_mem(o, buf, strlen(buf));
            break;
        }
        case 'p':
            snprintf(buf, sizeof buf, "%p", va_arg(ap, void *));
            put_mem(o, buf, strlen(buf));
            break;
        default:
            return;
        }
    }
}

size_t log_format(char *out, size_t size, const char *msg, const char *fmt, va_list ap)
{
    struct out o = { out, 0, size };
    if (size == 0)
        return 0;
    put_mem(&o, "msg=", 4);
    put_value(&o, msg, strlen(msg), true);     /* msg always quoted: the lines' one constant */
    if (fmt && *fmt) {
        put_char(&o, ' ');
        put_format(&o, fmt, ap);
    }
    o.p[o.n] = '\0';
    return o.n;
}

/* ---- lines ------------------------------------------------------------------------- */

/* Where the key=value pair that starts at I in S (N bytes) ends, or 0 when
 * it is cut short (no '=', or a quoted value without its closing quote).
 * *EQ gets the index of the '='.  The lines are ours (put_value wrote every
 * quoted value), so this is the whole of logfmt that can occur. */
static size_t pair_end(const char *s, size_t n, size_t i, size_t *eq)
{
    while (i < n && s[i] != '=' && s[i] != ' ')
        i++;
    if (i >= n || s[i] != '=')
        return 0;
    *eq = i++;
    if (i < n && s[i] == '"') {
        for (i++; i < n; i++) {
            if (s[i] == '\\')
                i++;
            else if (s[i] == '"')
                return i + 1;
        }
        return 0;
    }
    while (i < n && s[i] != ' ')
        i++;
    return i;
}

/* A line cut at LINE_MAX_BYTES would end inside a value (an unclosed quote
 * that a logfmt parser rejects, and a shipper then drops the whole line):
 * keep the complete pairs and say the rest was cut.  The new length. */
static size_t cut_to_pairs(char *s, size_t n, size_t size)
{
    size_t i = 0, keep = 0, eq;
    while (i < n) {
        size_t e = pair_end(s, n, i, &eq);
        if (e == 0)
            break;
        keep = e;
        i = e + 1;
    }
    static const char mark[] = " truncated=true";
    if (keep + sizeof mark > size)
        keep = size - sizeof mark;      /* cannot happen: ts= and level= are short */
    memcpy(s + keep, mark, sizeof mark - 1);
    return keep + sizeof mark - 1;
}

/* The logfmt line S (N bytes) as one JSON object into OUT.  A quoted logfmt
 * value already is a JSON string (put_value's escapes are JSON's: \" \\ \n
 * \r \t \u00XX); a bare one has no quote, backslash or control and only
 * needs quotes.  Every value is a string, so a consumer sees one type per
 * key.  A key that repeats is written twice (JSON parsers keep the last). */
static size_t to_json(const char *s, size_t n, char *out, size_t size)
{
    struct out o = { out, 0, size };
    size_t i = 0, eq;
    put_char(&o, '{');
    while (i < n) {
        size_t e = pair_end(s, n, i, &eq);
        if (e == 0)
            break;
        if (o.n > 1)
            put_char(&o, ',');
        put_char(&o, '"');
        put_mem(&o, s + i, eq - i);
        put_mem(&o, "\":", 2);
        if (s[eq + 1] == '"') {
            put_mem(&o, s + eq + 1, e - eq - 1);
        } else {
            put_char(&o, '"');
            put_mem(&o, s + eq + 1, e - eq - 1);
            put_char(&o, '"');
        }
        i = e + 1;
    }
    /* Room for the brace is kept: a line too long for OUT loses pairs, not
     * its closing brace. */
    if (o.n + 1 >= size)
        o.n = size - 2;
    o.p[o.n++] = '}';
    return o.n;
}

static void emit(enum log_level level, const char *msg, const char *fmt, va_list ap,
                 const char *tail)
{
    char line[LINE_MAX_BYTES];
    struct timespec ts;
    struct tm tm;

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof line, "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000L, level_names[level]);
    size_t len = (size_t)n;
    len += log_format(line + len, sizeof line - len - 1, msg, fmt, ap);
    if (tail) {
        size_t t = strnlen(tail, sizeof line - len - 2);
        memcpy(line + len, tail, t);
        len += t;
    }
    /* Full to the last byte: something was cut (the buffer holds one byte
     * more than any line we write whole). */
    if (len >= sizeof line - 2)
        len = cut_to_pairs(line, len, sizeof line - 1);
    if (log_json) {
        char js[LINE_MAX_BYTES + 512];          /* bare values gain two quotes */
        size_t jn = to_json(line, len, js, sizeof js - 1);
        js[jn++] = '\n';
        ssize_t w = write(STDERR_FILENO, js, jn);
        (void)w;
        return;
    }
    line[len++] = '\n';
    /* One write() per line: lines from several threads never interleave. */
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}

void log_write(enum log_level level, const char *msg, const char *fmt, ...)
{
    va_list ap;
    if (level > log_current_level)
        return;
    va_start(ap, fmt);
    emit(level, msg, fmt, ap, NULL);
    va_end(ap);
}

void log_write_errno(enum log_level level, const char *msg, const char *fmt, ...)
{
    int saved = errno;
    char tail[160], why[128];
    va_list ap;
    if (level > log_current_level)
        return;
    struct out o = { tail, 0, sizeof tail };
    put_mem(&o, " error=", 7);
    const char *s = strerror_r(saved, why, sizeof why);
    put_value(&o, s, strlen(s), false);
    tail[o.n] = '\0';
    va_start(ap, fmt);
    emit(level, msg, fmt, ap, tail);
    va_end(ap);
    errno = saved;
}

/* The rate limiter of the _limited forms: a small table keyed by the
 * message text, shared by every thread (these lines are rare unless
 * something is wrong, so a mutex costs nothing that matters). */
#define LIMITED_SLOTS 32

static struct {
    const char *msg;           /* by pointer: the call sites pass literals */
    time_t second;
    unsigned long suppressed;
} limited[LIMITED_SLOTS];
static pthread_mutex_t limited_lock = PTHREAD_MUTEX_INITIALIZER;

void log_write_limited(enum log_level level, const char *msg, const char *fmt, ...)
{
    char tail[48] = "";
    va_list ap;
    if (level > log_current_level)
        return;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    uintptr_t h = (uintptr_t)msg;
    size_t slot = (size_t)((h >> 4) ^ (h >> 12)) % LIMITED_SLOTS;
    pthread_mutex_lock(&limited_lock);
    if (limited[slot].msg == msg && limited[slot].second == now.tv_sec) {
        limited[slot].suppressed++;
        pthread_mutex_unlock(&limited_lock);
        return;
    }
    if (limited[slot].msg == msg && limited[slot].suppressed)
        snprintf(tail, sizeof tail, " suppressed=%lu", limited[slot].suppressed);
    limited[slot].msg = msg;
    limited[slot].second = now.tv_sec;
    limited[slot].suppressed = 0;
    pthread_mutex_unlock(&limited_lock);
    va_start(ap, fmt);
    emit(level, msg, fmt, ap, tail[0] ? tail : NULL);
    va_end(ap);
}

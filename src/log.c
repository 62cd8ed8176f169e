/* log: logfmt lines on stderr.  See include/capgate/log.h. */
#include "capgate/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum log_level log_current_level = LOG_LEVEL_INFO;

static const char *const level_names[] = { "error", "warn", "info", "debug" };

void log_set_level(enum log_level level)
{
    log_current_level = level;
}

const char *log_quote(char *buf, size_t size, const char *s)
{
    size_t o = 0;
    if (size < 3) {
        if (size) buf[0] = '\0';
        return buf;
    }
    buf[o++] = '"';
    for (; s && *s && o + 3 < size; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch < 0x20 || ch == 0x7f)
            continue;
        if (ch == '"' || ch == '\\')
            buf[o++] = '\\';
        buf[o++] = (char)ch;
    }
    buf[o++] = '"';
    buf[o] = '\0';
    return buf;
}

void log_write(enum log_level level, const char *msg, const char *fmt, ...)
{
    char line[2048], qmsg[256];
    struct timespec ts;
    struct tm tm;
    size_t n;
    va_list ap;

    if (level > log_current_level)
        return;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    n = (size_t)snprintf(line, sizeof line,
                         "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s msg=%s",
                         tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                         tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000L,
                         level_names[level], log_quote(qmsg, sizeof qmsg, msg));
    if (fmt && *fmt && n < sizeof line - 2) {
        va_start(ap, fmt);
        int m = vsnprintf(line + n + 1, sizeof line - n - 1, fmt, ap);
        va_end(ap);
        if (m > 0) {
            line[n] = ' ';
            n += (size_t)m + 1;
        }
    }
    if (n > sizeof line - 2)
        n = sizeof line - 2;
    line[n++] = '\n';
    /* One write() per line: lines from several threads never interleave. */
    ssize_t w = write(STDERR_FILENO, line, n);
    (void)w;
}

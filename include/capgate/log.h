/*
 * log: one logfmt line per event on stderr, for journald.
 *
 *   log_info("listening", "addr=%s workers=%d", addr, n);
 *   -> ts=2026-11-22T19:30:00.123Z level=info msg="listening" addr=127.0.0.1:8425 workers=1
 *
 * FMT is printf's, and quoting is the logger's job: every %s value is
 * written as a logfmt value -- as it is when it is a plain word, else in
 * double quotes with " and \ escaped and control characters written as
 * \n, \r, \t or \u00XX -- so no value, a Redis error or a client's text
 * included, can break a line.  Callers write key=%s, never key="%s".
 *
 * The level check is a compare of one integer, so debug lines cost nothing
 * when they are off.  Never pass a raw user id: pass its pseudonym.
 *
 * errno has one convention (OpenBSD's log_warn / log_warnx): the _errno
 * forms append error=<strerror(errno)>.
 *
 * What can repeat thousands of times a second (a 5xx answer during a Redis
 * outage, failed authentication) goes through the _limited forms: at most
 * one line a second per message text; the next line says how many were held
 * back (suppressed=N).
 */
#ifndef CAPGATE_LOG_H
#define CAPGATE_LOG_H

#include <stdarg.h>
#include <stddef.h>

#include "capgate/config.h"

extern enum log_level log_current_level;

void log_set_level(enum log_level level);
/* log_format: json writes each line as one JSON object with the same keys
 * (every value a string); the default is logfmt. */
void log_set_format(enum log_format format);
void log_write(enum log_level level, const char *msg, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void log_write_errno(enum log_level level, const char *msg, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void log_write_limited(enum log_level level, const char *msg, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The line log_write would write for MSG and FMT (without ts= and level=,
 * without the newline) into OUT: what the unit tests check.  Its length. */
size_t log_format(char *out, size_t size, const char *msg, const char *fmt, va_list ap);

#define LOG_AT(level, fn, msg, ...) do { if (log_current_level >= (level)) \
                                         fn(level, msg, __VA_ARGS__); } while (0)
#define log_error(msg, ...) log_write(LOG_LEVEL_ERROR, msg, __VA_ARGS__)
#define log_warn(msg, ...)  LOG_AT(LOG_LEVEL_WARN, log_write, msg, __VA_ARGS__)
#define log_info(msg, ...)  LOG_AT(LOG_LEVEL_INFO, log_write, msg, __VA_ARGS__)
#define log_debug(msg, ...) LOG_AT(LOG_LEVEL_DEBUG, log_write, msg, __VA_ARGS__)
#define log_error_errno(msg, ...) log_write_errno(LOG_LEVEL_ERROR, msg, __VA_ARGS__)
#define log_warn_errno(msg, ...)  LOG_AT(LOG_LEVEL_WARN, log_write_errno, msg, __VA_ARGS__)
#define log_warn_limited(msg, ...) LOG_AT(LOG_LEVEL_WARN, log_write_limited, msg, __VA_ARGS__)
#define log_error_limited(msg, ...) log_write_limited(LOG_LEVEL_ERROR, msg, __VA_ARGS__)

#endif

/*
 * log: one logfmt line per event on stderr, for journald.
 *
 *   log_info("listening", "addr=%s workers=%d", addr, n);
 *   -> ts=2026-11-22T19:30:00.123Z level=info msg="listening" addr=127.0.0.1:8425 workers=1
 *
 * The level check is a compare of one integer, so debug lines cost nothing
 * when they are off.  Values that may contain spaces must be quoted by the
 * caller (log_quote helps).  Never pass a raw user id: pass its pseudonym.
 */
#ifndef CAPGATE_LOG_H
#define CAPGATE_LOG_H

#include "capgate/config.h"

extern enum log_level log_current_level;

void log_set_level(enum log_level level);
void log_write(enum log_level level, const char *msg, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Copies S into BUF as a logfmt value: quoted, with " and \ escaped and
 * control characters dropped.  Returns BUF. */
const char *log_quote(char *buf, size_t size, const char *s);

#define log_error(msg, ...) log_write(LOG_LEVEL_ERROR, msg, __VA_ARGS__)
#define log_warn(msg, ...)  do { if (log_current_level >= LOG_LEVEL_WARN) \
                                 log_write(LOG_LEVEL_WARN, msg, __VA_ARGS__); } while (0)
#define log_info(msg, ...)  do { if (log_current_level >= LOG_LEVEL_INFO) \
                                 log_write(LOG_LEVEL_INFO, msg, __VA_ARGS__); } while (0)
#define log_debug(msg, ...) do { if (log_current_level >= LOG_LEVEL_DEBUG) \
                                 log_write(LOG_LEVEL_DEBUG, msg, __VA_ARGS__); } while (0)

#endif

/*
 * clock: the one monotonic clock of the daemon, in microseconds.  Deadlines,
 * latencies and heartbeats are all measured on it.  And the one way wall-clock
 * times are written for people (RFC 3339, UTC).
 */
#ifndef CAPGATE_CLOCK_H
#define CAPGATE_CLOCK_H

#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <stdint.h>
#include <time.h>

/* T (seconds since the epoch) as "2026-12-01T23:59:59Z" into OUT (21+ bytes). */
static inline void clock_format_rfc3339(char *out, size_t size, time_t t)
{
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, size, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* Now, with milliseconds: "2026-12-01T23:59:59.123Z" into OUT (25+ bytes). */
static inline void clock_format_rfc3339_ms(char *out, size_t size)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    clock_format_rfc3339(out, size, ts.tv_sec);
    size_t n = strlen(out);
    if (n > 0 && n + 5 <= size)
        snprintf(out + n - 1, size - n + 1, ".%03ldZ", ts.tv_nsec / 1000000L);
}

static inline uint64_t clock_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

#endif

/*
 * clock: the one monotonic clock of the daemon, in microseconds.  Deadlines,
 * latencies and heartbeats are all measured on it.
 */
#ifndef CAPGATE_CLOCK_H
#define CAPGATE_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline uint64_t clock_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

#endif

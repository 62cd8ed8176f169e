/*
 * procstat: the process's own figures from /proc (Linux), for the
 * process_* metrics every Prometheus exporter has.  It reads files, so it
 * runs only when /metrics is scraped, never on a request's path.
 */
#ifndef CAPGATE_PROCSTAT_H
#define CAPGATE_PROCSTAT_H

#include <stdbool.h>
#include <stdint.h>

struct procstat {
    double cpu_seconds;          /* user + system */
    uint64_t resident_bytes;
    uint64_t virtual_bytes;
    double start_time;           /* Unix time the process started */
    uint64_t open_fds;
    uint64_t max_fds;            /* RLIMIT_NOFILE, soft */
    bool ok;                     /* false: /proc could not be read (fields 0) */
};

/* Fills OUT for this process; 0, or -1 with OUT->ok false. */
int procstat_read(struct procstat *out);

/* Pure part of it, tested directly: the fields of a /proc/PID/stat LINE
 * (the command name may hold spaces and parentheses), with TICKS clock
 * ticks a second, PAGE bytes a page and BOOT_TIME the system's boot time
 * (/proc/stat btime).  0, or -1 when LINE is not one. */
int procstat_parse_stat(const char *line, long ticks, long page, double boot_time,
                        struct procstat *out);

#endif

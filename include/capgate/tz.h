/*
 * tz: quiet-hours arithmetic in IANA time zones, without setenv("TZ").
 *
 * All zones are read from a zoneinfo directory (TZif files) once at start-up
 * into memory, so that the request path never touches the file system.  The
 * table is immutable afterwards and may be shared by threads.
 */
#ifndef CAPGATE_TZ_H
#define CAPGATE_TZ_H

#include <stddef.h>
#include <stdint.h>

#define TZ_ERR_LEN 256

struct tz_db;      /* every zone found under a zoneinfo directory */
struct tz_zone;    /* one zone: transitions + rule for the far future */

struct tz_interval {
    int64_t start;  /* unix seconds, inclusive */
    int64_t end;    /* unix seconds, exclusive */
};

/* Loads every zone under DIR (e.g. "/usr/share/zoneinfo"), skipping the
 * posix/ and right/ copies and files that are not TZif.  Returns NULL and
 * fills ERR when DIR cannot be read or holds no zone. */
struct tz_db *tz_db_load(const char *dir, char *err, size_t errlen);
void tz_db_free(struct tz_db *db);
size_t tz_db_count(const struct tz_db *db);

/* "Europe/Paris" -> zone; NULL when unknown.  "UTC" always exists. */
const struct tz_zone *tz_db_find(const struct tz_db *db, const char *name);

/* Days since 1970-01-01 of the proleptic Gregorian date Y-M-D. */
int64_t tz_days_from_civil(int64_t y, int m, int d);

/* The local calendar day of unix time T in Z (days since 1970-01-01, as
 * tz_days_from_civil counts them); *NEXT_MIDNIGHT (if not NULL) the unix
 * time the next local day starts. */
int64_t tz_local_day(const struct tz_zone *z, int64_t t, int64_t *next_midnight);

/* Offset of local time from UTC, in seconds, at unix time T. */
int32_t tz_utc_offset(const struct tz_zone *z, int64_t t);

/*
 * The daily quiet period [start_min, end_min) of local wall-clock time
 * (minutes after midnight; start_min > end_min spans midnight), as UTC
 * intervals overlapping [from, to).  Writes at most MAX intervals to OUT, in
 * ascending order, merged when they touch, and returns how many.
 * Wall-clock times that do not exist (spring-forward gap) map to the first
 * instant after the gap; times that exist twice (fall-back) map to the
 * first occurrence.  start_min == end_min means no quiet hours.
 */
size_t tz_quiet_intervals(const struct tz_zone *z, int start_min, int end_min,
                          int64_t from, int64_t to,
                          struct tz_interval *out, size_t max);

#endif

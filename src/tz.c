/*
 * tz.c: IANA time zones from TZif files (RFC 8536), read once, then pure
 * arithmetic.  setenv("TZ") + localtime() would share process-wide state
 * between threads and may read files on the request path; here every zone
 * is parsed at start-up and the table is never written again.
 */
#include "capgate/tz.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

enum {
    HDR_LEN = 44,              /* RFC 8536 header: magic, version, 15 unused, 6 counts */
    FILE_MAX = 64 * 1024,      /* real zones are < 4 KiB: a bigger file is not one */
    DEPTH_MAX = 8,             /* zoneinfo is 2-3 levels deep; stops runaway trees */
    FOOTER_MAX = 256,
    TYPES_MAX = 256,           /* transition indices are one byte */
    UTOFF_MIN = -89999,        /* RFC 8536 bounds for a UT offset: -24:59:59 .. */
    UTOFF_MAX = 93599,         /* .. +25:59:59 */
    DEFAULT_RULE_TIME = 7200,  /* POSIX: transitions happen at 02:00 unless told */
};

/* Calendar arithmetic is clamped to +-2^49 s (17 million years): far enough
 * for any question, near enough that nothing overflows. */
#define T_LIMIT (INT64_C(1) << 49)

/* One end of the DST period of a POSIX TZ rule. */
struct tz_rule_date {
    char kind;      /* 'J': Julian day 1..365 without Feb 29, 'N': day 0..365, 'M': month rule */
    int num;        /* day for 'J'/'N', month 1..12 for 'M' */
    int week;       /* 'M': 1..5, 5 meaning the last one */
    int wday;       /* 'M': 0 (Sunday) .. 6 */
    int32_t secs;   /* local time of day, -167h..167h (RFC 8536 extension) */
};

/* The POSIX TZ footer, with offsets east of UTC (POSIX counts them west). */
struct tz_rule {
    int32_t std_off, dst_off;
    int has_dst;
    struct tz_rule_date start, end;  /* start in standard time, end in DST */
};

struct tz_zone {
    const char *name;
    int64_t *trans;     /* transition instants, strictly ascending */
    uint8_t *idx;       /* offs[idx[i]] applies from trans[i] */
    int32_t *offs;      /* offs[0] also applies before the first transition */
    size_t ntrans, ntypes;
    int has_rule;       /* rule applies from the last transition on */
    struct tz_rule rule;
};

struct tz_db {
    struct tz_zone **zones;  /* sorted by name for bsearch */
    size_t n, cap;
};

/* ---- calendar ---------------------------------------------------------- */

static int64_t floor_div(int64_t a, int64_t b)
{
    return a / b - (a % b < 0);
}

static int64_t clamp_time(int64_t t)
{
    return t < -T_LIMIT ? -T_LIMIT : t > T_LIMIT ? T_LIMIT : t;
}

static int is_leap(int64_t y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
 * days_from_civil): exact for any year, no tables, no libc time functions. */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    return tz_days_from_civil(y, m, d);
}

int64_t tz_days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = floor_div(y, 400);
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

/* The UTC calendar year of unix time T (inverse of the above). */
static int64_t year_of(int64_t t)
{
    int64_t z = floor_div(t, 86400) + 719468;
    int64_t era = floor_div(z, 146097);
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    return yoe + era * 400 + (doy >= 306);  /* the era year starts on March 1 */
}

/* Day (since the epoch) on which rule date D falls in year Y. */
static int64_t rule_day(const struct tz_rule_date *d, int64_t y)
{
    int64_t jan1 = days_from_civil(y, 1, 1);
    if (d->kind == 'J')  /* Feb 29 is never counted: J60 is always March 1 */
        return jan1 + d->num - 1 + (d->num >= 60 && is_leap(y));
    if (d->kind == 'N')
        return jan1 + d->num;
    int64_t first = days_from_civil(y, d->num, 1);
    int64_t next = d->num == 12 ? days_from_civil(y + 1, 1, 1)
                                : days_from_civil(y, d->num + 1, 1);
    int64_t wd_first = (first % 7 + 7 + 4) % 7;  /* 1970-01-01 was a Thursday */
    int64_t day = first + (d->wday - wd_first + 7) % 7 + 7 * (d->week - 1);
    while (day >= next)  /* week 5 means "last", which may be the 4th */
        day -= 7;
    return day;
}

/* UTC instants at which DST starts and ends in year Y.  POSIX gives the
 * start in standard local time and the end in daylight local time. */
static void rule_events(const struct tz_rule *r, int64_t y, int64_t ev[2])
{
    ev[0] = rule_day(&r->start, y) * 86400 + r->start.secs - r->std_off;
    ev[1] = rule_day(&r->end, y) * 86400 + r->end.secs - r->dst_off;
}

/* Offset under rule R: the state set by the latest event at or before T.
 * Looking at the neighbouring years too handles southern zones (DST across
 * New Year) and events pushed over New Year by large hours. */
static int32_t rule_offset(const struct tz_rule *r, int64_t t)
{
    if (!r->has_dst)
        return r->std_off;
    t = clamp_time(t);
    int64_t y = year_of(t), best = INT64_MIN;
    int dst = 0;
    for (int64_t yy = y - 1; yy <= y + 1; yy++) {
        int64_t ev[2];
        rule_events(r, yy, ev);
        if (ev[1] <= t && ev[1] > best) {
            best = ev[1];
            dst = 0;
        }
        if (ev[0] <= t && ev[0] >= best) {  /* a tie is DST all year ("0/0,J365/25") */
            best = ev[0];
            dst = 1;
        }
    }
    return dst ? r->dst_off : r->std_off;
}

/* First rule event after T, INT64_MAX if the offset never changes again. */
static int64_t rule_next(const struct tz_rule *r, int64_t t)
{
    if (!r->has_dst || t >= T_LIMIT)
        return INT64_MAX;
    int64_t y = year_of(clamp_time(t)), best = INT64_MAX;
    for (int64_t yy = y - 1; yy <= y + 1; yy++) {
        int64_t ev[2];
        rule_events(r, yy, ev);
        for (int i = 0; i < 2; i++)
            if (ev[i] > t && ev[i] < best)
                best = ev[i];
    }
    return best;
}

/* ---- lookups ----------------------------------------------------------- */

/* Index of the first transition after T (ntrans if none). */
static size_t upper_bound(const struct tz_zone *z, int64_t t)
{
    size_t lo = 0, hi = z->ntrans;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (z->trans[mid] <= t)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

int32_t tz_utc_offset(const struct tz_zone *z, int64_t t)
{
    if (!z)
        return 0;
    size_t n = z->ntrans;
    /* RFC 8536: the footer rules after the last transition (and everywhere
     * when there is none); type 0 rules before the first one. */
    if (n == 0 || t >= z->trans[n - 1]) {
        if (z->has_rule)
            return rule_offset(&z->rule, t);
        return z->offs[n == 0 ? 0 : z->idx[n - 1]];
    }
    if (t < z->trans[0])
        return z->offs[0];
    return z->offs[z->idx[upper_bound(z, t) - 1]];
}

/* The offset is constant on [T, next_change(T)). */
static int64_t next_change(const struct tz_zone *z, int64_t t)
{
    if (!z)
        return INT64_MAX;
    size_t n = z->ntrans;
    if (n > 0 && t < z->trans[n - 1])
        return z->trans[upper_bound(z, t)];
    return z->has_rule ? rule_next(&z->rule, t) : INT64_MAX;
}

/*
 * Wall-clock time L (seconds since the epoch, read as if UTC) to unix time:
 * the first instant whose wall clock reads L or later.  That is the first
 * occurrence of a repeated time, and the end of the gap for a skipped one.
 * Walk the constant-offset segments from the earliest instant that could
 * read L; within a segment of offset o the answer is max(start, L - o).
 */
static int64_t local_to_utc(const struct tz_zone *z, int64_t l)
{
    int64_t t = l - (UTOFF_MAX + 1);
    for (;;) {
        int64_t cand = l - tz_utc_offset(z, t), next = next_change(z, t);
        if (cand < t)
            cand = t;
        if (cand < next)
            return cand;
        t = next;
    }
}

size_t tz_quiet_intervals(const struct tz_zone *z, int start_min, int end_min,
                          int64_t from, int64_t to,
                          struct tz_interval *out, size_t max)
{
    if (start_min < 0 || start_min >= 1440 || end_min < 0 || end_min > 1440 ||
        start_min == end_min || max == 0)
        return 0;
    from = clamp_time(from);
    to = clamp_time(to);
    if (from >= to)
        return 0;
    if (start_min == 0 && end_min == 1440) {  /* always quiet: no boundary to report */
        out[0] = (struct tz_interval){from, to};
        return 1;
    }
    /* Start two local days early so that a period running when FROM falls
     * is found with its real start. */
    int64_t day = floor_div(from + tz_utc_offset(z, from), 86400) - 2;
    int64_t end_day_shift = start_min > end_min;  /* 21:00-08:00 ends the next day */
    struct tz_interval cur = {0, 0};
    int have = 0;
    size_t n = 0;
    for (;; day++) {
        int64_t s = local_to_utc(z, day * 86400 + start_min * 60);
        int64_t e = local_to_utc(z, (day + end_day_shift) * 86400 + end_min * 60);
        if (have && s <= cur.end) {  /* touching: a skipped day (Samoa 2011) */
            if (e > cur.end)
                cur.end = e;
            continue;
        }
        if (have && cur.end > from) {
            out[n++] = cur;
            if (n == max)
                break;
        }
        have = 0;
        if (s >= to)
            break;
        if (s < e) {  /* empty when both ends fall in the same gap */
            cur = (struct tz_interval){s, e};
            have = 1;
        }
    }
    return n;
}

/* ---- POSIX TZ strings (the TZif footer) -------------------------------- */

/* Decimal number in [MIN, MAX]; NULL when absent or out of range. */
static const char *parse_num(const char *p, int min, int max, int *out)
{
    int v = 0, digits = 0;
    for (; *p >= '0' && *p <= '9'; p++, digits++) {
        v = v * 10 + (*p - '0');
        if (v > max)
            return NULL;
    }
    if (digits == 0 || v < min)
        return NULL;
    *out = v;
    return p;
}

/* A zone abbreviation: 3+ letters, or <...> of letters, digits, '+', '-'. */
static const char *parse_name(const char *p)
{
    const char *q = p;
    if (*p == '<') {
        for (q = p + 1; (*q >= 'A' && *q <= 'Z') || (*q >= 'a' && *q <= 'z') ||
                        (*q >= '0' && *q <= '9') || *q == '+' || *q == '-'; q++)
            ;
        return *q == '>' && q > p + 1 ? q + 1 : NULL;
    }
    while ((*q >= 'A' && *q <= 'Z') || (*q >= 'a' && *q <= 'z'))
        q++;
    return q - p >= 3 ? q : NULL;
}

/* [+-]hh[:mm[:ss]] with hh <= MAX_H, as signed seconds. */
static const char *parse_hms(const char *p, int max_h, int32_t *out)
{
    int sign = 1, h, m = 0, s = 0;
    if (*p == '+' || *p == '-')
        sign = *p++ == '-' ? -1 : 1;
    if (!(p = parse_num(p, 0, max_h, &h)))
        return NULL;
    if (*p == ':' && !(p = parse_num(p + 1, 0, 59, &m)))
        return NULL;
    if (*p == ':' && !(p = parse_num(p + 1, 0, 59, &s)))
        return NULL;
    *out = sign * (h * 3600 + m * 60 + s);
    return p;
}

/* Jn, n or Mm.w.d, then an optional /time. */
static const char *parse_date(const char *p, struct tz_rule_date *d)
{
    d->week = d->wday = 0;
    if (*p == 'J') {
        d->kind = 'J';
        p = parse_num(p + 1, 1, 365, &d->num);
    } else if (*p == 'M') {
        d->kind = 'M';
        if ((p = parse_num(p + 1, 1, 12, &d->num)) && *p == '.' &&
            (p = parse_num(p + 1, 1, 5, &d->week)) && *p == '.')
            p = parse_num(p + 1, 0, 6, &d->wday);
        else
            p = NULL;
    } else {
        d->kind = 'N';
        p = parse_num(p, 0, 365, &d->num);
    }
    d->secs = DEFAULT_RULE_TIME;
    if (p && *p == '/')
        p = parse_hms(p + 1, 167, &d->secs);
    return p;
}

/* "std offset [dst [offset] [,start[/time],end[/time]]]"; 0 on success. */
static int parse_posix(const char *p, struct tz_rule *r)
{
    int32_t off;
    memset(r, 0, sizeof *r);
    if (!(p = parse_name(p)) || !(p = parse_hms(p, 24, &off)))
        return -1;
    r->std_off = r->dst_off = -off;
    if (*p == '\0')
        return 0;
    if (!(p = parse_name(p)))
        return -1;
    r->dst_off = r->std_off + 3600;
    if (*p != ',' && *p != '\0') {
        if (!(p = parse_hms(p, 24, &off)))
            return -1;
        r->dst_off = -off;
    }
    if (*p == '\0')  /* no rule given: POSIX leaves it open, tzcode uses the US one */
        p = ",M3.2.0,M11.1.0";
    r->has_dst = 1;
    if (*p != ',' || !(p = parse_date(p + 1, &r->start)) ||
        *p != ',' || !(p = parse_date(p + 1, &r->end)))
        return -1;
    return *p == '\0' ? 0 : -1;
}

/* ---- TZif files -------------------------------------------------------- */

struct tzif_counts {
    uint32_t isutcnt, isstdcnt, leapcnt, timecnt, typecnt, charcnt;
};

/* A validated TZif file: pointers into the caller's buffer. */
struct tzif {
    const uint8_t *times, *idx, *types;
    size_t tsize;  /* 8 for the v2+ data block, 4 for v1 */
    struct tzif_counts c;
    int has_rule;
    struct tz_rule rule;
};

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int64_t tzif_time(const struct tzif *v, size_t i)
{
    const uint8_t *p = v->times + i * v->tsize;
    if (v->tsize == 4)
        return (int32_t)be32(p);
    return (int64_t)((uint64_t)be32(p) << 32 | be32(p + 4));
}

static int32_t tzif_utoff(const struct tzif *v, size_t i)
{
    return (int32_t)be32(v->types + i * 6);
}

static int read_header(const uint8_t *p, size_t len, struct tzif_counts *c)
{
    if (len < HDR_LEN || memcmp(p, "TZif", 4) != 0 || (p[4] != 0 && p[4] < '2'))
        return -1;
    c->isutcnt = be32(p + 20);
    c->isstdcnt = be32(p + 24);
    c->leapcnt = be32(p + 28);
    c->timecnt = be32(p + 32);
    c->typecnt = be32(p + 36);
    c->charcnt = be32(p + 40);
    return 0;
}

static uint64_t block_size(const struct tzif_counts *c, size_t tsize)
{
    return (uint64_t)c->timecnt * (tsize + 1) + (uint64_t)c->typecnt * 6 +
           c->charcnt + (uint64_t)c->leapcnt * (tsize + 4) + c->isstdcnt + c->isutcnt;
}

/* "\nTZ string\n" after the v2+ data block; an empty string means none. */
static int parse_footer(const uint8_t *p, size_t len, struct tzif *v)
{
    char buf[FOOTER_MAX];
    if (len < 2 || p[0] != '\n')
        return -1;
    const uint8_t *nl = memchr(p + 1, '\n', len - 1);
    if (!nl || (size_t)(nl - p - 1) >= sizeof buf)
        return -1;
    memcpy(buf, p + 1, (size_t)(nl - p - 1));
    buf[nl - p - 1] = '\0';
    v->has_rule = buf[0] != '\0';
    return v->has_rule ? parse_posix(buf, &v->rule) : 0;
}

/* Transitions ascending, indices in range, offsets sane. */
static int check_data(const struct tzif *v)
{
    for (size_t i = 0; i < v->c.timecnt; i++)
        if ((i > 0 && tzif_time(v, i) <= tzif_time(v, i - 1)) || v->idx[i] >= v->c.typecnt)
            return -1;
    for (size_t i = 0; i < v->c.typecnt; i++)
        if (tzif_utoff(v, i) < UTOFF_MIN || tzif_utoff(v, i) > UTOFF_MAX)
            return -1;
    return 0;
}

/* Validates BUF as TZif.  The v2+ 64-bit block is preferred: the v1 block
 * stops in 2038 and has no footer. */
static int tzif_parse(const uint8_t *buf, size_t len, struct tzif *v)
{
    size_t off = 0;
    memset(v, 0, sizeof *v);
    v->tsize = 4;
    if (read_header(buf, len, &v->c) != 0)
        return -1;
    int v2 = buf[4] >= '2';
    if (v2) {
        uint64_t skip = HDR_LEN + block_size(&v->c, 4);
        if (skip > len || read_header(buf + skip, len - skip, &v->c) != 0)
            return -1;
        off = (size_t)skip;
        v->tsize = 8;
    }
    off += HDR_LEN;
    const struct tzif_counts *c = &v->c;
    uint64_t size = block_size(c, v->tsize);
    if (c->typecnt == 0 || c->typecnt > TYPES_MAX || size > len - off ||
        (c->isstdcnt != 0 && c->isstdcnt != c->typecnt) ||
        (c->isutcnt != 0 && c->isutcnt != c->typecnt))
        return -1;
    v->times = buf + off;
    v->idx = v->times + c->timecnt * v->tsize;
    v->types = v->idx + c->timecnt;
    if (check_data(v) != 0)
        return -1;
    off += (size_t)size;
    return v2 ? parse_footer(buf + off, len - off, v) : 0;
}

/* One allocation per zone: the struct, then its arrays, then its name. */
static struct tz_zone *zone_new(const char *name, size_t ntrans, size_t ntypes)
{
    size_t head = (sizeof(struct tz_zone) + 7) & ~(size_t)7;
    size_t nlen = strlen(name) + 1;
    struct tz_zone *z = calloc(1, head + ntrans * 9 + ntypes * 4 + nlen);
    if (!z)
        return NULL;
    char *p = (char *)z + head;
    z->trans = (int64_t *)(void *)p;
    z->offs = (int32_t *)(void *)(p + ntrans * 8);
    z->idx = (uint8_t *)(p + ntrans * 8 + ntypes * 4);
    z->name = memcpy(p + ntrans * 9 + ntypes * 4, name, nlen);
    z->ntrans = ntrans;
    z->ntypes = ntypes;
    return z;
}

static struct tz_zone *zone_from_tzif(const char *name, const struct tzif *v)
{
    struct tz_zone *z = zone_new(name, v->c.timecnt, v->c.typecnt);
    if (!z)
        return NULL;
    for (size_t i = 0; i < z->ntrans; i++) {
        z->trans[i] = tzif_time(v, i);
        z->idx[i] = v->idx[i];
    }
    for (size_t i = 0; i < z->ntypes; i++)
        z->offs[i] = tzif_utoff(v, i);
    z->has_rule = v->has_rule;
    z->rule = v->rule;
    return z;
}

/* ---- loading a directory ----------------------------------------------- */

struct loader {
    struct tz_db *db;
    uint8_t *buf;       /* FILE_MAX + 1 bytes, reused for every file */
    size_t root_len;    /* a zone's name starts after path[root_len] == '/' */
    int oom;
    char path[PATH_MAX];
};

static int db_add(struct tz_db *db, struct tz_zone *z)
{
    if (db->n == db->cap) {
        size_t cap = db->cap ? db->cap * 2 : 512;
        struct tz_zone **zones = realloc(db->zones, cap * sizeof *zones);
        if (!zones)
            return -1;
        db->zones = zones;
        db->cap = cap;
    }
    db->zones[db->n++] = z;
    return 0;
}

/* Adds the file at ld->path if it is TZif; anything else is skipped. */
static void load_file(struct loader *ld)
{
    struct tzif v;
    FILE *f = fopen(ld->path, "rb");
    if (!f)
        return;
    size_t len = fread(ld->buf, 1, FILE_MAX + 1, f);
    fclose(f);
    if (len > FILE_MAX || tzif_parse(ld->buf, len, &v) != 0)
        return;
    struct tz_zone *z = zone_from_tzif(ld->path + ld->root_len + 1, &v);
    if (!z || db_add(ld->db, z) != 0) {
        free(z);
        ld->oom = 1;
    }
}

/* Loads every file below ld->path[0..len); -1 if that directory can't be read. */
static int walk(struct loader *ld, size_t len, int depth)
{
    DIR *d = opendir(ld->path);
    if (!d)
        return -1;
    struct dirent *de;
    while (!ld->oom && (de = readdir(d)) != NULL) {
        const char *nm = de->d_name;
        struct stat st;
        if (nm[0] == '.')
            continue;
        /* posix/ repeats every zone, right/ counts leap seconds: neither wanted */
        if (depth == 0 && (strcmp(nm, "posix") == 0 || strcmp(nm, "right") == 0))
            continue;
        int w = snprintf(ld->path + len, sizeof ld->path - len, "/%s", nm);
        if (w < 0 || (size_t)w >= sizeof ld->path - len || stat(ld->path, &st) != 0)
            continue;  /* too long, or a dangling link */
        if (S_ISREG(st.st_mode)) {
            load_file(ld);  /* through a link too: "UTC" -> Etc/UTC keeps its name */
        } else if (S_ISDIR(st.st_mode) && depth < DEPTH_MAX) {
            /* a linked directory would repeat zones or loop */
            if (lstat(ld->path, &st) == 0 && !S_ISLNK(st.st_mode))
                walk(ld, len + (size_t)w, depth + 1);
        }
    }
    closedir(d);
    ld->path[len] = '\0';
    return 0;
}

static int cmp_zones(const void *a, const void *b)
{
    return strcmp((*(struct tz_zone *const *)a)->name, (*(struct tz_zone *const *)b)->name);
}

static int cmp_name(const void *key, const void *elem)
{
    return strcmp(key, (*(struct tz_zone *const *)elem)->name);
}

/* The header promises "UTC" even on a tree that lacks it. */
static int ensure_utc(struct tz_db *db)
{
    for (size_t i = 0; i < db->n; i++)
        if (strcmp(db->zones[i]->name, "UTC") == 0)
            return 0;
    struct tz_zone *z = zone_new("UTC", 0, 1);
    if (!z || db_add(db, z) != 0) {
        free(z);
        return -1;
    }
    return 0;
}

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    if (!err || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

struct tz_db *tz_db_load(const char *dir, char *err, size_t errlen)
{
    struct loader ld = {0};
    size_t dlen = dir ? strlen(dir) : 0;
    int ok = 0;
    if (dlen == 0 || dlen >= sizeof ld.path) {
        set_err(err, errlen, "zoneinfo directory: bad path");
        return NULL;
    }
    memcpy(ld.path, dir, dlen + 1);
    ld.root_len = dlen;
    ld.db = calloc(1, sizeof *ld.db);
    ld.buf = malloc(FILE_MAX + 1);
    if (!ld.db || !ld.buf)
        set_err(err, errlen, "%s: out of memory", dir);
    else if (walk(&ld, dlen, 0) != 0)
        set_err(err, errlen, "%s: %s", dir, strerror(errno));
    else if (ld.oom || (ld.db->n > 0 && ensure_utc(ld.db) != 0))
        set_err(err, errlen, "%s: out of memory", dir);
    else if (ld.db->n == 0)
        set_err(err, errlen, "%s: no TZif zone found", dir);
    else
        ok = 1;
    free(ld.buf);
    if (!ok) {
        tz_db_free(ld.db);
        return NULL;
    }
    qsort(ld.db->zones, ld.db->n, sizeof *ld.db->zones, cmp_zones);
    return ld.db;
}

void tz_db_free(struct tz_db *db)
{
    if (!db)
        return;
    for (size_t i = 0; i < db->n; i++)
        free(db->zones[i]);
    free(db->zones);
    free(db);
}

size_t tz_db_count(const struct tz_db *db)
{
    return db ? db->n : 0;
}

const struct tz_zone *tz_db_find(const struct tz_db *db, const char *name)
{
    if (!db || !name)
        return NULL;
    struct tz_zone *const *z = bsearch(name, db->zones, db->n, sizeof *db->zones, cmp_name);
    return z ? *z : NULL;
}

int64_t tz_local_day(const struct tz_zone *z, int64_t t, int64_t *next_midnight)
{
    int64_t day = floor_div(t + tz_utc_offset(z, t), 86400);
    /* The instant the next local day starts: its wall-clock midnight at the
     * offset it has then (a change of offset at midnight moves it). */
    int64_t next = (day + 1) * 86400 - tz_utc_offset(z, (day + 1) * 86400 - tz_utc_offset(z, t));
    if (next <= t)
        next = t + 1;
    if (next_midnight)
        *next_midnight = next;
    return day;
}

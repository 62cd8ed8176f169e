/*
 * test_tz: zone loading, offsets (table and POSIX footer) and quiet-hour
 * intervals, against the system zoneinfo and against TZif files written here.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE  /* timegm, nftw, mkdtemp */
#endif
#include <ftw.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "capgate/tz.h"
#include "unit.h"

#define ZONEINFO "/usr/share/zoneinfo"
#define H 3600

static struct tz_db *sysdb;  /* the system zoneinfo, loaded once by main */
static char tmpdir[64];      /* hand-written zones, made by make_fixture() */

/* Unix time of a UTC calendar date: timegm does no zone lookups. */
static int64_t utc(int y, int mo, int d, int h, int mi)
{
    struct tm tm = {.tm_year = y - 1900, .tm_mon = mo - 1, .tm_mday = d,
                    .tm_hour = h, .tm_min = mi};
    return (int64_t)timegm(&tm);
}

static const struct tz_zone *zone(const char *name)
{
    const struct tz_zone *z = tz_db_find(sysdb, name);
    if (!z)
        printf("    zone %s not found\n", name);
    return z;
}

/* ---- writing TZif files ------------------------------------------------ */

struct spec {
    char version;              /* 0 for v1 only, '2' for v1 + v2 blocks */
    const int64_t *times;
    const uint8_t *idx;
    uint32_t ntimes;
    const int32_t *offs;
    uint32_t ntypes;
    const char *footer;        /* NULL: none written (invalid for v2) */
};

static void put_be(FILE *f, uint64_t v, int bytes)
{
    while (bytes-- > 0)
        fputc((int)(v >> (8 * bytes)) & 0xff, f);
}

/* One header + data block, with TSIZE-byte transition times (RFC 8536 3.1-3.2). */
static void put_block(FILE *f, const struct spec *s, int tsize)
{
    fwrite("TZif", 1, 4, f);
    fputc(s->version, f);
    for (int i = 0; i < 15; i++)
        fputc(0, f);
    uint32_t counts[6] = {0, 0, 0, s->ntimes, s->ntypes, 4};  /* isut isstd leap time type char */
    for (int i = 0; i < 6; i++)
        put_be(f, counts[i], 4);
    for (uint32_t i = 0; i < s->ntimes; i++)
        put_be(f, (uint64_t)s->times[i], tsize);
    for (uint32_t i = 0; i < s->ntimes; i++)
        fputc(s->idx[i], f);
    for (uint32_t i = 0; i < s->ntypes; i++) {
        put_be(f, (uint32_t)s->offs[i], 4);
        fputc(i > 0, f);  /* isdst: not used by tz.c */
        fputc(0, f);      /* abbreviation index */
    }
    fwrite("ABC", 1, 4, f);
}

static void write_tzif(const char *rel, const struct spec *s)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", tmpdir, rel);
    FILE *f = fopen(path, "wb");
    if (!f) {
        printf("    cannot write %s\n", path);
        return;
    }
    put_block(f, s, 4);
    if (s->version) {
        put_block(f, s, 8);
        if (s->footer)
            fprintf(f, "\n%s\n", s->footer);
    }
    fclose(f);
}

static void write_raw(const char *rel, const void *data, size_t len)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", tmpdir, rel);
    FILE *f = fopen(path, "wb");
    if (f) {
        fwrite(data, 1, len, f);
        fclose(f);
    }
}

static void make_dir(const char *rel)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", tmpdir, rel);
    mkdir(path, 0700);
}

/* Seven good zones (one a link), one copy under posix/ and six bad files. */
static void make_fixture(void)
{
    static const int64_t t0[] = {0}, t1e9[] = {1000000000}, down[] = {100, 50};
    static const uint8_t i1[] = {1}, i10[] = {1, 0}, i9[] = {9};
    static const int32_t zero[] = {0}, jn[] = {1800, 3600, 7200}, nuuk[] = {-2 * H},
                         est[] = {-5 * H}, v1[] = {0, 2 * H}, huge[] = {30 * H};

    strcpy(tmpdir, "/tmp/test_tz.XXXXXX");
    if (!mkdtemp(tmpdir)) {
        printf("    mkdtemp failed\n");
        return;
    }
    make_dir("Test");
    make_dir("Bad");
    make_dir("posix");
    make_dir("posix/Test");
    /* type 0 says UTC, the footer +03:30: no transitions means the footer rules */
    write_tzif("Test/Fixed", &(struct spec){'2', NULL, NULL, 0, zero, 1, "<+0330>-3:30"});
    write_tzif("posix/Test/Fixed", &(struct spec){'2', NULL, NULL, 0, zero, 1, "<+0330>-3:30"});
    /* Jn and n forms: DST from March 1 02:00 to (0-based) day 300 03:00 */
    write_tzif("Test/Jn", &(struct spec){'2', t0, i1, 1, jn, 3, "XST-1XDT,J60/2,300/3"});
    /* negative rule times (America/Nuuk since 2023) */
    write_tzif("Test/Nuuk", &(struct spec){'2', NULL, NULL, 0, nuuk, 1,
                                           "<-02>2<-01>,M3.5.0/-1,M10.5.0/0"});
    /* hours past 24: RFC 8536's way of saying "DST all year" */
    write_tzif("Test/AllDST", &(struct spec){'2', NULL, NULL, 0, est, 1, "EST5EDT,0/0,J365/25"});
    write_tzif("Test/V1", &(struct spec){0, t1e9, i1, 1, v1, 2, NULL});
    /* empty footer: the last transition's type holds forever */
    write_tzif("Test/Empty", &(struct spec){'2', t0, i1, 1, v1, 2, ""});
    char link[256];
    snprintf(link, sizeof link, "%s/Link", tmpdir);
    if (symlink("Test/Fixed", link) != 0)
        printf("    symlink failed\n");

    static const char tab[] = "FR\t+4852+00220\tEurope/Paris\n", junk[] = "TZi\1\2\3 not a zone";
    write_raw("zone.tab", tab, sizeof tab - 1);
    write_raw("Bad/Garbage", junk, sizeof junk - 1);
    write_tzif("Bad/NoFooter", &(struct spec){'2', t0, i1, 1, v1, 2, NULL});
    write_tzif("Bad/Footer", &(struct spec){'2', t0, i1, 1, v1, 2, "NOPE"});
    write_tzif("Bad/Index", &(struct spec){'2', t0, i9, 1, v1, 2, ""});
    write_tzif("Bad/Order", &(struct spec){'2', down, i10, 2, v1, 2, ""});
    write_tzif("Bad/Offset", &(struct spec){'2', NULL, NULL, 0, huge, 1, ""});
    {   /* a good file cut short */
        char path[256];
        snprintf(path, sizeof path, "%s/Test/Jn", tmpdir);
        FILE *f = fopen(path, "rb");
        char buf[80];
        size_t n = f ? fread(buf, 1, sizeof buf, f) : 0;
        if (f)
            fclose(f);
        write_raw("Bad/Trunc", buf, n);
    }
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static void remove_fixture(void)
{
    if (tmpdir[0])
        nftw(tmpdir, remove_entry, 8, FTW_DEPTH | FTW_PHYS);
}

/* ---- loading ----------------------------------------------------------- */

TEST(load_system)
{
    CHECK(sysdb != NULL);
    CHECK(tz_db_count(sysdb) > 300);
    CHECK(tz_db_find(sysdb, "UTC") != NULL);
    CHECK(tz_db_find(sysdb, "Europe/Paris") != NULL);
    CHECK(tz_db_find(sysdb, "Etc/GMT-5") != NULL);  /* a symlink on Debian */
    CHECK(tz_db_find(sysdb, "Mars/Olympus_Mons") == NULL);
    CHECK(tz_db_find(sysdb, "") == NULL);
    CHECK(tz_db_find(sysdb, NULL) == NULL);
    CHECK(tz_db_find(sysdb, "zone.tab") == NULL);
    CHECK(tz_db_find(sysdb, "tzdata.zi") == NULL);
    CHECK(tz_db_find(sysdb, "leapseconds") == NULL);
    CHECK(tz_db_find(sysdb, "posix/Europe/Paris") == NULL);
    CHECK(tz_db_find(sysdb, "right/UTC") == NULL);
    CHECK(tz_db_find(NULL, "UTC") == NULL);
    CHECK_EQ_INT(tz_db_count(NULL), 0);
}

TEST(load_missing_dir)
{
    char err[TZ_ERR_LEN] = "";
    CHECK(tz_db_load("/nonexistent/zoneinfo", err, sizeof err) == NULL);
    CHECK(strstr(err, "/nonexistent/zoneinfo") != NULL);
    err[0] = '\0';
    CHECK(tz_db_load("", err, sizeof err) == NULL);
    CHECK(err[0] != '\0');
    CHECK(tz_db_load(NULL, NULL, 0) == NULL);
}

TEST(load_empty_dir)
{
    char err[TZ_ERR_LEN] = "", path[256];
    snprintf(path, sizeof path, "%s/Bad", tmpdir);  /* nothing valid in there */
    CHECK(tz_db_load(path, err, sizeof err) == NULL);
    CHECK(strstr(err, "no TZif zone") != NULL);
}

TEST(load_fixture)
{
    char err[TZ_ERR_LEN] = "";
    struct tz_db *db = tz_db_load(tmpdir, err, sizeof err);
    CHECK(db != NULL);
    if (!db) {
        printf("    %s\n", err);
        return;
    }
    /* Fixed Jn Nuuk AllDST V1 Empty Link, plus the UTC the header promises */
    CHECK_EQ_INT(tz_db_count(db), 8);
    const char *bad[] = {"zone.tab", "Bad/Garbage", "Bad/NoFooter", "Bad/Footer", "Bad/Index",
                         "Bad/Order", "Bad/Offset", "Bad/Trunc", "posix/Test/Fixed", "Test"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        if (tz_db_find(db, bad[i]) != NULL) {
            printf("    %s should have been skipped\n", bad[i]);
            unit_current_failed = 1;
        }
    const struct tz_zone *u = tz_db_find(db, "UTC");
    CHECK(u != NULL);
    CHECK_EQ_INT(tz_utc_offset(u, utc(2026, 7, 1, 0, 0)), 0);

    const struct tz_zone *fixed = tz_db_find(db, "Test/Fixed"), *link = tz_db_find(db, "Link");
    CHECK(fixed && link);
    CHECK_EQ_INT(tz_utc_offset(fixed, utc(1900, 1, 1, 0, 0)), 12600);
    CHECK_EQ_INT(tz_utc_offset(fixed, utc(2026, 7, 1, 0, 0)), 12600);
    CHECK_EQ_INT(tz_utc_offset(link, utc(2300, 7, 1, 0, 0)), 12600);

    const struct tz_zone *v1 = tz_db_find(db, "Test/V1"), *empty = tz_db_find(db, "Test/Empty");
    CHECK(v1 && empty);
    CHECK_EQ_INT(tz_utc_offset(v1, 999999999), 0);
    CHECK_EQ_INT(tz_utc_offset(v1, 1000000000), 2 * H);
    CHECK_EQ_INT(tz_utc_offset(v1, utc(2100, 1, 1, 0, 0)), 2 * H);
    CHECK_EQ_INT(tz_utc_offset(empty, -1), 0);
    CHECK_EQ_INT(tz_utc_offset(empty, utc(2100, 1, 1, 0, 0)), 2 * H);
    tz_db_free(db);
}

/* ---- POSIX footer forms (through the fixture files) -------------------- */

TEST(footer_julian_forms)
{
    struct tz_db *db = tz_db_load(tmpdir, NULL, 0);
    const struct tz_zone *z = tz_db_find(db, "Test/Jn");
    CHECK(z != NULL);
    if (!z) {
        tz_db_free(db);
        return;
    }
    CHECK_EQ_INT(tz_utc_offset(z, -1), 1800);                      /* type 0, before the table */
    CHECK_EQ_INT(tz_utc_offset(z, utc(1970, 1, 15, 0, 0)), H);     /* footer from t=0 */
    CHECK_EQ_INT(tz_utc_offset(z, utc(1970, 6, 1, 0, 0)), 2 * H);
    /* 2030, not a leap year: J60 = March 1, day 300 = October 28 */
    CHECK_EQ_INT(tz_utc_offset(z, utc(2030, 3, 1, 1, 0) - 1), H);
    CHECK_EQ_INT(tz_utc_offset(z, utc(2030, 3, 1, 1, 0)), 2 * H);  /* 02:00 standard */
    CHECK_EQ_INT(tz_utc_offset(z, utc(2030, 10, 28, 1, 0) - 1), 2 * H);
    CHECK_EQ_INT(tz_utc_offset(z, utc(2030, 10, 28, 1, 0)), H);    /* 03:00 daylight */
    /* 2032, a leap year: J60 still March 1, but day 300 is October 27 */
    CHECK_EQ_INT(tz_utc_offset(z, utc(2032, 3, 1, 1, 0) - 1), H);
    CHECK_EQ_INT(tz_utc_offset(z, utc(2032, 3, 1, 1, 0)), 2 * H);
    CHECK_EQ_INT(tz_utc_offset(z, utc(2032, 10, 27, 1, 0) - 1), 2 * H);
    CHECK_EQ_INT(tz_utc_offset(z, utc(2032, 10, 27, 1, 0)), H);
    tz_db_free(db);
}

TEST(footer_negative_and_long_hours)
{
    struct tz_db *db = tz_db_load(tmpdir, NULL, 0);
    const struct tz_zone *nuuk = tz_db_find(db, "Test/Nuuk"), *all = tz_db_find(db, "Test/AllDST");
    CHECK(nuuk && all);
    if (!nuuk || !all) {
        tz_db_free(db);
        return;
    }
    /* "M3.5.0/-1": Saturday 23:00 local (-02) before the last Sunday = 01:00 UTC */
    CHECK_EQ_INT(tz_utc_offset(nuuk, utc(2026, 3, 29, 1, 0) - 1), -2 * H);
    CHECK_EQ_INT(tz_utc_offset(nuuk, utc(2026, 3, 29, 1, 0)), -1 * H);
    CHECK_EQ_INT(tz_utc_offset(nuuk, utc(2026, 10, 25, 1, 0) - 1), -1 * H);
    CHECK_EQ_INT(tz_utc_offset(nuuk, utc(2026, 10, 25, 1, 0)), -2 * H);
    /* "0/0,J365/25": DST never ends, including across New Year */
    CHECK_EQ_INT(tz_utc_offset(all, utc(2026, 1, 1, 0, 0)), -4 * H);
    CHECK_EQ_INT(tz_utc_offset(all, utc(2026, 1, 1, 5, 0)), -4 * H);
    CHECK_EQ_INT(tz_utc_offset(all, utc(2026, 7, 1, 0, 0)), -4 * H);
    CHECK_EQ_INT(tz_utc_offset(all, utc(2028, 12, 31, 23, 0)), -4 * H);
    tz_db_free(db);
}

/* ---- system zones ------------------------------------------------------ */

TEST(fixed_zones)
{
    const struct tz_zone *u = zone("UTC"), *g = zone("Etc/GMT-5"), *k = zone("Asia/Kolkata");
    CHECK(utc(2026, 1, 15, 12, 0) == 1768478400);  /* the helper itself */
    CHECK_EQ_INT(tz_utc_offset(u, 0), 0);
    CHECK_EQ_INT(tz_utc_offset(u, utc(2026, 7, 1, 0, 0)), 0);
    CHECK_EQ_INT(tz_utc_offset(g, utc(2026, 1, 1, 0, 0)), 18000);  /* POSIX sign is inverted */
    CHECK_EQ_INT(tz_utc_offset(g, utc(2100, 7, 1, 0, 0)), 18000);
    CHECK_EQ_INT(tz_utc_offset(k, utc(2026, 1, 15, 12, 0)), 19800);
    CHECK_EQ_INT(tz_utc_offset(k, utc(2040, 7, 15, 12, 0)), 19800);
    CHECK_EQ_INT(tz_utc_offset(NULL, 0), 0);
}

TEST(paris)
{
    const struct tz_zone *z = zone("Europe/Paris");
    CHECK_EQ_INT(tz_utc_offset(z, utc(2026, 1, 15, 12, 0)), H);
    CHECK_EQ_INT(tz_utc_offset(z, utc(2026, 7, 15, 12, 0)), 2 * H);
    CHECK_EQ_INT(tz_utc_offset(z, utc(2026, 3, 29, 1, 0) - 1), H);
    CHECK_EQ_INT(tz_utc_offset(z, utc(2026, 3, 29, 1, 0)), 2 * H);
    CHECK_EQ_INT(tz_utc_offset(z, utc(2026, 10, 25, 1, 0) - 1), 2 * H);
    CHECK_EQ_INT(tz_utc_offset(z, utc(2026, 10, 25, 1, 0)), H);
    /* past any table (fat files stop at 2037): only the footer knows */
    CHECK_EQ_INT(tz_utc_offset(z, utc(2040, 1, 15, 12, 0)), H);
    CHECK_EQ_INT(tz_utc_offset(z, utc(2040, 7, 15, 12, 0)), 2 * H);
    CHECK_EQ_INT(tz_utc_offset(z, utc(2040, 3, 25, 1, 0) - 1), H);
    CHECK_EQ_INT(tz_utc_offset(z, utc(2040, 3, 25, 1, 0)), 2 * H);
    CHECK_EQ_INT(tz_utc_offset(z, utc(2040, 10, 28, 1, 0) - 1), 2 * H);
    CHECK_EQ_INT(tz_utc_offset(z, utc(2040, 10, 28, 1, 0)), H);
    CHECK_EQ_INT(tz_utc_offset(z, utc(2400, 7, 1, 0, 0)), 2 * H);
    CHECK_EQ_INT(tz_utc_offset(z, utc(1850, 1, 1, 0, 0)), 561);  /* LMT, +0:09:21 */
    int32_t far = tz_utc_offset(z, INT64_MAX);  /* clamped, still sane */
    CHECK(far == H || far == 2 * H);
    CHECK_EQ_INT(tz_utc_offset(z, INT64_MIN), 561);
}

TEST(new_york)
{
    const struct tz_zone *z = zone("America/New_York");
    CHECK_EQ_INT(tz_utc_offset(z, utc(2026, 1, 15, 12, 0)), -5 * H);
    CHECK_EQ_INT(tz_utc_offset(z, utc(2026, 7, 15, 12, 0)), -4 * H);
    CHECK_EQ_INT(tz_utc_offset(z, utc(2026, 3, 8, 7, 0) - 1), -5 * H);
    CHECK_EQ_INT(tz_utc_offset(z, utc(2026, 3, 8, 7, 0)), -4 * H);
    CHECK_EQ_INT(tz_utc_offset(z, utc(2026, 11, 1, 6, 0) - 1), -4 * H);
    CHECK_EQ_INT(tz_utc_offset(z, utc(2026, 11, 1, 6, 0)), -5 * H);
    CHECK_EQ_INT(tz_utc_offset(z, utc(2045, 7, 1, 0, 0)), -4 * H);
}

TEST(southern_hemisphere)
{
    const struct tz_zone *z = zone("Australia/Sydney");
    CHECK_EQ_INT(tz_utc_offset(z, utc(2026, 1, 15, 0, 0)), 11 * H);
    CHECK_EQ_INT(tz_utc_offset(z, utc(2026, 7, 15, 0, 0)), 10 * H);
    CHECK_EQ_INT(tz_utc_offset(z, utc(2026, 4, 4, 16, 0) - 1), 11 * H);
    CHECK_EQ_INT(tz_utc_offset(z, utc(2026, 4, 4, 16, 0)), 10 * H);
    CHECK_EQ_INT(tz_utc_offset(z, utc(2026, 10, 3, 16, 0)), 11 * H);
    CHECK_EQ_INT(tz_utc_offset(z, utc(2044, 12, 31, 23, 0)), 11 * H);  /* footer, over New Year */
    CHECK_EQ_INT(tz_utc_offset(z, utc(2045, 1, 1, 1, 0)), 11 * H);
}

TEST(lord_howe)
{
    const struct tz_zone *z = tz_db_find(sysdb, "Australia/Lord_Howe");
    if (!z)
        return;  /* optional in minimal tzdata */
    CHECK_EQ_INT(tz_utc_offset(z, utc(2026, 1, 15, 0, 0)), 11 * H);
    CHECK_EQ_INT(tz_utc_offset(z, utc(2026, 7, 15, 0, 0)), 10 * H + 1800);
    CHECK_EQ_INT(tz_utc_offset(z, utc(2026, 4, 4, 15, 0)), 10 * H + 1800);
    CHECK_EQ_INT(tz_utc_offset(z, utc(2026, 10, 3, 15, 30)), 11 * H);
    CHECK_EQ_INT(tz_utc_offset(z, utc(2041, 7, 15, 0, 0)), 10 * H + 1800);
    /* 01:00-01:45 on 2026-04-05: 01:45 exists twice (02:00 +11 -> 01:30 +1030);
     * the first occurrence, in +11, ends the period */
    struct tz_interval iv[4];
    size_t n = tz_quiet_intervals(z, 60, 105, utc(2026, 4, 4, 0, 0), utc(2026, 4, 5, 0, 0), iv, 4);
    CHECK_EQ_INT(n, 1);
    CHECK_EQ_INT(iv[0].start, utc(2026, 4, 4, 14, 0));
    CHECK_EQ_INT(iv[0].end, utc(2026, 4, 4, 14, 45));
}

/* ---- quiet hours ------------------------------------------------------- */

TEST(quiet_utc)
{
    const struct tz_zone *z = zone("UTC");
    struct tz_interval iv[8];
    /* 22:00-06:00 seen from Jan 10 12:00 for 3 days */
    size_t n = tz_quiet_intervals(z, 22 * 60, 6 * 60, utc(2026, 1, 10, 12, 0),
                                  utc(2026, 1, 13, 12, 0), iv, 8);
    CHECK_EQ_INT(n, 3);
    CHECK_EQ_INT(iv[0].start, utc(2026, 1, 10, 22, 0));
    CHECK_EQ_INT(iv[0].end, utc(2026, 1, 11, 6, 0));
    CHECK_EQ_INT(iv[2].start, utc(2026, 1, 12, 22, 0));
    CHECK_EQ_INT(iv[2].end, utc(2026, 1, 13, 6, 0));
    /* from inside a period: it comes back with its real start */
    n = tz_quiet_intervals(z, 22 * 60, 6 * 60, utc(2026, 1, 10, 3, 0), utc(2026, 1, 10, 4, 0), iv, 8);
    CHECK_EQ_INT(n, 1);
    CHECK_EQ_INT(iv[0].start, utc(2026, 1, 9, 22, 0));
    CHECK_EQ_INT(iv[0].end, utc(2026, 1, 10, 6, 0));
    /* a period ending exactly at FROM does not overlap; one starting at TO neither */
    n = tz_quiet_intervals(z, 22 * 60, 6 * 60, utc(2026, 1, 10, 6, 0), utc(2026, 1, 10, 22, 0), iv, 8);
    CHECK_EQ_INT(n, 0);
    /* MAX caps the output */
    n = tz_quiet_intervals(z, 22 * 60, 6 * 60, utc(2026, 1, 1, 0, 0), utc(2026, 2, 1, 0, 0), iv, 2);
    CHECK_EQ_INT(n, 2);
    CHECK_EQ_INT(iv[1].start, utc(2026, 1, 1, 22, 0));
    /* up to midnight: 23:00-24:00 */
    n = tz_quiet_intervals(z, 23 * 60, 1440, utc(2026, 1, 1, 0, 0), utc(2026, 1, 2, 0, 0), iv, 8);
    CHECK_EQ_INT(n, 1);
    CHECK_EQ_INT(iv[0].end, utc(2026, 1, 2, 0, 0));
}

TEST(quiet_degenerate)
{
    const struct tz_zone *z = zone("UTC");
    struct tz_interval iv[4];
    int64_t a = utc(2026, 1, 1, 0, 0), b = utc(2026, 1, 5, 0, 0);
    CHECK_EQ_INT(tz_quiet_intervals(z, 480, 480, a, b, iv, 4), 0);   /* none */
    CHECK_EQ_INT(tz_quiet_intervals(z, -1, 480, a, b, iv, 4), 0);
    CHECK_EQ_INT(tz_quiet_intervals(z, 0, 1441, a, b, iv, 4), 0);
    CHECK_EQ_INT(tz_quiet_intervals(z, 1440, 60, a, b, iv, 4), 0);
    CHECK_EQ_INT(tz_quiet_intervals(z, 60, 120, b, a, iv, 4), 0);    /* empty range */
    CHECK_EQ_INT(tz_quiet_intervals(z, 60, 120, a, b, iv, 0), 0);
    /* all day, every day: one interval, the question itself */
    CHECK_EQ_INT(tz_quiet_intervals(z, 0, 1440, a, b, iv, 4), 1);
    CHECK_EQ_INT(iv[0].start, a);
    CHECK_EQ_INT(iv[0].end, b);
    /* absurd ranges stay bounded and do not overflow */
    CHECK_EQ_INT(tz_quiet_intervals(zone("Europe/Paris"), 60, 120, INT64_MIN, INT64_MAX, iv, 4), 4);
}

TEST(quiet_fixed_offset)
{
    const struct tz_zone *z = zone("Etc/GMT-5");
    struct tz_interval iv[4];
    /* 09:00-17:00 at +05 is 04:00-12:00 UTC */
    size_t n = tz_quiet_intervals(z, 9 * 60, 17 * 60, utc(2026, 5, 1, 0, 0),
                                  utc(2026, 5, 2, 0, 0), iv, 4);
    CHECK_EQ_INT(n, 1);
    CHECK_EQ_INT(iv[0].start, utc(2026, 5, 1, 4, 0));
    CHECK_EQ_INT(iv[0].end, utc(2026, 5, 1, 12, 0));
    /* 21:00-08:00 at +05 is 16:00-03:00 UTC */
    n = tz_quiet_intervals(z, 21 * 60, 8 * 60, utc(2026, 5, 1, 0, 0), utc(2026, 5, 2, 0, 0), iv, 4);
    CHECK_EQ_INT(n, 2);
    CHECK_EQ_INT(iv[0].start, utc(2026, 4, 30, 16, 0));
    CHECK_EQ_INT(iv[0].end, utc(2026, 5, 1, 3, 0));
    CHECK_EQ_INT(iv[1].start, utc(2026, 5, 1, 16, 0));
    CHECK_EQ_INT(iv[1].end, utc(2026, 5, 2, 3, 0));
}

TEST(quiet_paris_spring_forward)
{
    const struct tz_zone *z = zone("Europe/Paris");
    struct tz_interval iv[4];
    /* 21:00 CET on the 28th to 08:00 CEST on the 29th: a night of 10 hours */
    size_t n = tz_quiet_intervals(z, 21 * 60, 8 * 60, utc(2026, 3, 28, 12, 0),
                                  utc(2026, 3, 29, 12, 0), iv, 4);
    CHECK_EQ_INT(n, 1);
    CHECK_EQ_INT(iv[0].start, utc(2026, 3, 28, 20, 0));
    CHECK_EQ_INT(iv[0].end, utc(2026, 3, 29, 6, 0));
    /* 02:30 does not exist that day: the period starts when 03:00 CEST does */
    n = tz_quiet_intervals(z, 150, 240, utc(2026, 3, 29, 0, 0), utc(2026, 3, 29, 12, 0), iv, 4);
    CHECK_EQ_INT(n, 1);
    CHECK_EQ_INT(iv[0].start, utc(2026, 3, 29, 1, 0));
    CHECK_EQ_INT(iv[0].end, utc(2026, 3, 29, 2, 0));
    /* a period wholly inside the gap is empty that day, and normal the next */
    n = tz_quiet_intervals(z, 135, 165, utc(2026, 3, 28, 12, 0), utc(2026, 3, 30, 12, 0), iv, 4);
    CHECK_EQ_INT(n, 1);
    CHECK_EQ_INT(iv[0].start, utc(2026, 3, 30, 0, 15));
    CHECK_EQ_INT(iv[0].end, utc(2026, 3, 30, 0, 45));
}

TEST(quiet_paris_fall_back)
{
    const struct tz_zone *z = zone("Europe/Paris");
    struct tz_interval iv[4];
    /* 21:00 CEST on the 24th to 08:00 CET on the 25th: a night of 12 hours */
    size_t n = tz_quiet_intervals(z, 21 * 60, 8 * 60, utc(2026, 10, 24, 12, 0),
                                  utc(2026, 10, 25, 12, 0), iv, 4);
    CHECK_EQ_INT(n, 1);
    CHECK_EQ_INT(iv[0].start, utc(2026, 10, 24, 19, 0));
    CHECK_EQ_INT(iv[0].end, utc(2026, 10, 25, 7, 0));
    /* 02:30 happens twice: the first time (CEST) counts, at both ends */
    n = tz_quiet_intervals(z, 60, 150, utc(2026, 10, 24, 12, 0), utc(2026, 10, 25, 12, 0), iv, 4);
    CHECK_EQ_INT(n, 1);
    CHECK_EQ_INT(iv[0].start, utc(2026, 10, 24, 23, 0));
    CHECK_EQ_INT(iv[0].end, utc(2026, 10, 25, 0, 30));
    n = tz_quiet_intervals(z, 150, 210, utc(2026, 10, 24, 12, 0), utc(2026, 10, 25, 12, 0), iv, 4);
    CHECK_EQ_INT(n, 1);
    CHECK_EQ_INT(iv[0].start, utc(2026, 10, 25, 0, 30));
    CHECK_EQ_INT(iv[0].end, utc(2026, 10, 25, 2, 30));
}

TEST(quiet_skipped_day)
{
    /* Samoa skipped 2011-12-30: the night of the 29th and the (empty) 30th
     * run into each other and come back merged */
    const struct tz_zone *z = tz_db_find(sysdb, "Pacific/Apia");
    if (!z)
        return;
    struct tz_interval iv[4];
    size_t n = tz_quiet_intervals(z, 21 * 60, 8 * 60, utc(2011, 12, 30, 8, 0),
                                  utc(2011, 12, 30, 12, 0), iv, 4);
    CHECK_EQ_INT(n, 1);
    CHECK_EQ_INT(iv[0].start, utc(2011, 12, 30, 7, 0));   /* 21:00 -10 on the 29th */
    CHECK_EQ_INT(iv[0].end, utc(2011, 12, 30, 18, 0));    /* 08:00 +14 on the 31st */
}

TEST(quiet_caller_pattern)
{
    /* How the daemon asks: around now, then "retry after end - now" */
    const struct tz_zone *z = zone("Europe/Paris");
    int64_t now = utc(2026, 3, 28, 23, 30);  /* 00:30 CET, inside 21:00-08:00 */
    struct tz_interval iv[8];
    size_t n = tz_quiet_intervals(z, 21 * 60, 8 * 60, now - 86400, now + 3 * 86400, iv, 8);
    CHECK(n >= 4);
    size_t hit = n;
    for (size_t i = 0; i < n; i++) {
        if (i > 0)
            CHECK(iv[i].start > iv[i - 1].end);  /* ascending, merged */
        if (iv[i].start <= now && now < iv[i].end)
            hit = i;
    }
    CHECK(hit < n);
    if (hit < n)
        CHECK_EQ_INT(iv[hit].end - now, 6 * H + 1800);  /* until 08:00 CEST = 06:00 UTC */
    CHECK_EQ_INT(iv[0].start, utc(2026, 3, 27, 20, 0));  /* started before FROM */
}

int main(void)
{
    char err[TZ_ERR_LEN] = "";
    sysdb = tz_db_load(ZONEINFO, err, sizeof err);
    if (!sysdb)
        printf("# cannot load %s: %s\n", ZONEINFO, err);
    make_fixture();

    RUN(load_system);
    RUN(load_missing_dir);
    RUN(load_empty_dir);
    RUN(load_fixture);
    RUN(footer_julian_forms);
    RUN(footer_negative_and_long_hours);
    RUN(fixed_zones);
    RUN(paris);
    RUN(new_york);
    RUN(southern_hemisphere);
    RUN(lord_howe);
    RUN(quiet_utc);
    RUN(quiet_degenerate);
    RUN(quiet_fixed_offset);
    RUN(quiet_paris_spring_forward);
    RUN(quiet_paris_fall_back);
    RUN(quiet_skipped_day);
    RUN(quiet_caller_pattern);

    remove_fixture();
    tz_db_free(sysdb);
    return unit_done("test_tz");
}

/*
 * fuzz_common.h: fixtures shared by the libFuzzer harnesses (tests/fuzz/) and
 * the unit tests that need a config (tests/unit/).
 *
 * A small config built by hand (as tests/unit/test_decision.c does), the
 * zone table of /usr/share/zoneinfo (loaded once), a pseudonym key made up at
 * start-up, and FUZZ_CHECK: an invariant that must hold; when it does not,
 * the harness aborts so libFuzzer keeps the input as a crash.
 */
#ifndef CAPGATE_FUZZ_COMMON_H
#define CAPGATE_FUZZ_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "capgate/config.h"
#include "capgate/pseudonym.h"
#include "capgate/tz.h"

#define FUZZ_UNUSED __attribute__((unused))

#define FUZZ_CHECK(cond)                                                                   \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond);   \
            abort();                                                                       \
        }                                                                                  \
    } while (0)

/* ---- a config like conf/capgate.yaml, built by hand -------------------- */

static char fz_upstream_header[] = "Authorization: Bearer fuzz";
static char *fz_upstream_headers[] = { fz_upstream_header };

static struct cfg_channel fz_channels[] = {
    { .name = "email",
      .upstream = { .enabled = true, .url = "http://127.0.0.1:9/send", .timeout_ms = 5000,
                    .max_connections = 4, .headers = fz_upstream_headers, .n_headers = 1 } },
    { .name = "push" },
    { .name = "sms", .requires_opt_in = true },
};
static struct cfg_category fz_categories[] = {
    { "marketing", false, false, false, false, 0 },
    { "transactional", true, true, true, false, 9 },
    { "health", false, false, false, true, 0 },
};
static struct cfg_cap fz_caps[] = {
    { "email-daily", "email", NULL, CAP_PER_USER, 2, 86400000, CAP_DEFER, CAP_ENFORCE },
    { "all-weekly", NULL, NULL, CAP_PER_USER, 5, 7 * 86400000LL, CAP_DEFER, CAP_ENFORCE },
    { "campaign-once", NULL, NULL, CAP_PER_CAMPAIGN, 1, 30 * 86400000LL, CAP_DENY, CAP_ENFORCE },
    { "health-monthly", NULL, "health", CAP_PER_USER, 1, 30 * 86400000LL, CAP_DENY, CAP_SHADOW },
};
static char *fz_quiet_channels[] = { "push", "sms" };

static FUZZ_UNUSED struct config fz_config(void)
{
    struct config c;
    memset(&c, 0, sizeof c);
    c.refs = 1;
    c.channels = fz_channels;
    c.n_channels = sizeof fz_channels / sizeof fz_channels[0];
    c.categories = fz_categories;
    c.n_categories = sizeof fz_categories / sizeof fz_categories[0];
    c.default_category = "marketing";
    c.caps = fz_caps;
    c.n_caps = sizeof fz_caps / sizeof fz_caps[0];
    c.max_defer_ms = 7 * 86400000LL;
    c.idempotency_ms = 86400000LL;
    c.retention_ms = 400 * 86400000LL;
    c.redis.bucket_bits = 16;
    c.quiet_hours.enabled = true;
    c.quiet_hours.start_min = 21 * 60;
    c.quiet_hours.end_min = 8 * 60;
    c.quiet_hours.default_tz = "UTC";
    c.quiet_hours.channels = fz_quiet_channels;
    c.quiet_hours.n_channels = 2;
    c.fatigue.enabled = true;
    c.fatigue.unengaged_after = 10;
    c.fatigue.limit = 1;
    c.fatigue.window_ms = 7 * 86400000LL;
    c.fatigue.on_exceed = CAP_DEFER;
    c.audit.enabled = true;
    c.audit.max_entries = 1000000;
    c.audit.retention_ms = 30 * 86400000LL;
    c.delivery.max_attempts = 8;
    c.delivery.backoff_ms = 2000;
    c.delivery.max_backoff_ms = 600000;
    c.delivery.max_deferred = 1000000;
    c.delivery.lease_ms = 30000;
    return c;
}

/* ---- zones: every zone of the system, loaded once ----------------------- */

static FUZZ_UNUSED struct tz_db *fz_tz(void)
{
    static struct tz_db *db;
    static int tried;
    if (!tried) {
        char err[TZ_ERR_LEN];
        tried = 1;
        db = tz_db_load("/usr/share/zoneinfo", err, sizeof err);
        if (!db)
            fprintf(stderr, "fuzz: no zone table (%s); tz names all unknown\n", err);
    }
    return db;
}

/* ---- a pseudonym key made up for the run -------------------------------- */

static FUZZ_UNUSED struct pseudonym *fz_pseudonym(void)
{
    static struct pseudonym *p;
    if (!p) {
        char path[] = "/tmp/capgate-fuzz-key-XXXXXX", err[256];
        int fd = mkstemp(path);
        if (fd < 0) {
            perror("fuzz: mkstemp");
            abort();
        }
        static const char key[] = "0123456789abcdef0123456789abcdef-fuzz-key";
        if (write(fd, key, sizeof key - 1) != (ssize_t)(sizeof key - 1)) {
            perror("fuzz: write key");
            abort();
        }
        close(fd);
        p = pseudonym_load(path, err, sizeof err);
        unlink(path);
        if (!p) {
            fprintf(stderr, "fuzz: %s\n", err);
            abort();
        }
    }
    return p;
}

#endif

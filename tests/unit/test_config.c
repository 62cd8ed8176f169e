/*
 * test_config: config_load, its error messages (exact text and line), the
 * example conf/capgate.yaml, and the duration / clock parsers.
 *
 * Each case writes its YAML to a mkstemp() file under /tmp, loads it and
 * removes it.  Quiet-hours cases use a private zoneinfo directory so that
 * they do not depend on the host's tzdata.
 */
#include "capgate/config.h"
#include "unit.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

/* 7 lines: whatever a test appends starts on line 8. */
#define MIN_YAML \
    "privacy:\n" \
    "  key_file: /k\n" \
    "channels:\n" \
    "  email: {}\n" \
    "  sms: {}\n" \
    "categories:\n" \
    "  marketing: {}\n"

/* A fake zoneinfo tree: UTC, Europe/Paris, and Europe itself a directory. */
struct zi {
    char dir[64];
};

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");

    if (f == NULL) {
        printf("    cannot write %s: %s\n", path, strerror(errno));
        return;
    }
    fputs(text, f);
    fclose(f);
}

static void zi_make(struct zi *z)
{
    char p[128];

    snprintf(z->dir, sizeof z->dir, "/tmp/capgate-zi-XXXXXX");
    if (mkdtemp(z->dir) == NULL) {
        printf("    mkdtemp: %s\n", strerror(errno));
        return;
    }
    snprintf(p, sizeof p, "%s/UTC", z->dir);
    write_file(p, "TZif-ish\n");
    snprintf(p, sizeof p, "%s/Europe", z->dir);
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/Europe/Paris", z->dir);
    write_file(p, "TZif-ish\n");
}

static void zi_remove(const struct zi *z)
{
    char p[128];

    snprintf(p, sizeof p, "%s/Europe/Paris", z->dir);
    unlink(p);
    snprintf(p, sizeof p, "%s/Europe", z->dir);
    rmdir(p);
    snprintf(p, sizeof p, "%s/UTC", z->dir);
    unlink(p);
    rmdir(z->dir);
}

/* Writes YAML to a temp file, loads it, removes the file.  PATH (64 bytes)
 * receives the file name, ERR the error. */
static struct config *load_yaml(const char *yaml, char *path, char *err)
{
    struct config *cfg;
    int fd;
    size_t len = strlen(yaml);

    snprintf(path, 64, "/tmp/capgate-test-XXXXXX");
    fd = mkstemp(path);
    if (fd < 0) {
        snprintf(err, CONFIG_ERR_LEN, "mkstemp: %s", strerror(errno));
        return NULL;
    }
    if (write(fd, yaml, len) != (ssize_t)len)
        printf("    short write to %s\n", path);
    close(fd);
    cfg = config_load(path, err, CONFIG_ERR_LEN);
    unlink(path);
    return cfg;
}

/* Loads YAML that must be valid; prints the error otherwise. */
static struct config *load_ok(const char *yaml)
{
    char path[64], err[CONFIG_ERR_LEN];
    struct config *cfg = load_yaml(yaml, path, err);

    if (cfg == NULL)
        printf("    unexpected error: %s\n", err);
    return cfg;
}

/* True when YAML fails with exactly "<tmpfile>:<line>: <msg>". */
static int fails_with(const char *yaml, int line, const char *msg)
{
    char path[64], err[CONFIG_ERR_LEN], want[CONFIG_ERR_LEN + 80];
    struct config *cfg = load_yaml(yaml, path, err);

    if (cfg != NULL) {
        printf("    loaded, but wanted: %s\n", msg);
        config_free(cfg);
        return 0;
    }
    snprintf(want, sizeof want, "%s:%d: %s", path, line, msg);
    if (strcmp(err, want) != 0) {
        printf("    got:  %s\n    want: %s\n", err, want);
        return 0;
    }
    return 1;
}

/* The same with "<tmpfile>:<line>: " followed by PREFIX (libfyaml's own
 * wording is not ours to pin down). */
static int fails_with_prefix(const char *yaml, int line, const char *prefix)
{
    char path[64], err[CONFIG_ERR_LEN], want[CONFIG_ERR_LEN + 80];
    struct config *cfg = load_yaml(yaml, path, err);

    if (cfg != NULL) {
        printf("    loaded, but wanted: %s...\n", prefix);
        config_free(cfg);
        return 0;
    }
    snprintf(want, sizeof want, "%s:%d: %s", path, line, prefix);
    if (strncmp(err, want, strlen(want)) != 0) {
        printf("    got:  %s\n    want: %s...\n", err, want);
        return 0;
    }
    return 1;
}

#define CHECK_FAILS(yaml, line, msg) CHECK(fails_with((yaml), (line), (msg)))

/* MIN_YAML followed by a formatted tail. */
static const char *with_tail(char *buf, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static const char *with_tail(char *buf, size_t len, const char *fmt, ...)
{
    va_list ap;
    size_t n = (size_t)snprintf(buf, len, "%s", MIN_YAML);

    va_start(ap, fmt);
    vsnprintf(buf + n, len - n, fmt, ap);
    va_end(ap);
    return buf;
}

/* ------------------------------------------------------------------------ */

TEST(duration_table)
{
    static const struct { const char *s; int64_t ms; } good[] = {
        { "1ms", 1 }, { "250ms", 250 }, { "1s", 1000 }, { "2s", 2000 },
        { "90m", 90 * 60000LL }, { "1h", 3600000 }, { "1d", 86400000 },
        { "2w", 14 * 86400000LL }, { "0010s", 10000 },
        { "9223372036854775807ms", INT64_MAX },
    };
    static const char *const bad[] = {
        "", "1", "s", "ms", "0s", "0ms", "-1s", "+1s", "1.5s", " 1s", "1s ", "1 s",
        "1x", "1S", "1sec", "1ms2", "1e3s", "1d1h", "0x10s",
        "9223372036854775808ms", "9223372036854775807s", "99999999999999999999s",
    };

    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        int64_t ms = -1;

        CHECK_EQ_INT(config_parse_duration(good[i].s, &ms), 0);
        CHECK_EQ_INT(ms, good[i].ms);
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int64_t ms = 42;

        if (config_parse_duration(bad[i], &ms) != -1)
            printf("    accepted \"%s\"\n", bad[i]);
        CHECK_EQ_INT(config_parse_duration(bad[i], &ms), -1);
        CHECK_EQ_INT(ms, 42);
    }
    CHECK_EQ_INT(config_parse_duration(NULL, NULL), -1);
}

TEST(clock_table)
{
    static const struct { const char *s; int min; } good[] = {
        { "00:00", 0 }, { "08:05", 485 }, { "21:00", 1260 }, { "23:59", 1439 },
    };
    static const char *const bad[] = {
        "", "24:00", "12:60", "1:00", "12:5", "12-00", "12:000", "aa:bb", " 1:00",
        "12:00 ", "-1:00", "99:99", "1200", "12:0a",
    };

    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        int m = -1;

        CHECK_EQ_INT(config_parse_clock(good[i].s, &m), 0);
        CHECK_EQ_INT(m, good[i].min);
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int m = 7;

        if (config_parse_clock(bad[i], &m) != -1)
            printf("    accepted \"%s\"\n", bad[i]);
        CHECK_EQ_INT(config_parse_clock(bad[i], &m), -1);
        CHECK_EQ_INT(m, 7);
    }
}

/* The shipped example: it must load, with exactly the documented values. */
TEST(example_config)
{
    static const char *const paths[] = {
        "conf/capgate.yaml", "../conf/capgate.yaml", "../../conf/capgate.yaml",
    };
    const char *path = NULL;
    char err[CONFIG_ERR_LEN];
    struct config *cfg;
    const struct cfg_category *cat;

    for (size_t i = 0; i < sizeof paths / sizeof paths[0] && path == NULL; i++)
        if (access(paths[i], R_OK) == 0)
            path = paths[i];
    CHECK(path != NULL);
    if (path == NULL)
        return;
    cfg = config_load(path, err, sizeof err);
    if (cfg == NULL)
        printf("    %s\n", err);
    CHECK(cfg != NULL);
    if (cfg == NULL)
        return;

    CHECK_EQ_STR(cfg->path, path);
    CHECK_EQ_INT(cfg->generation, 0);
    CHECK_EQ_STR(cfg->listen, "127.0.0.1:8425");
    CHECK_EQ_STR(cfg->listen_host, "127.0.0.1");
    CHECK_EQ_INT(cfg->listen_port, 8425);
    CHECK_EQ_INT(cfg->log_level, LOG_LEVEL_INFO);

    CHECK_EQ_STR(cfg->redis.url, "redis://127.0.0.1:6379/0");
    CHECK_EQ_INT(cfg->redis.transport, REDIS_TCP);
    CHECK_EQ_STR(cfg->redis.host, "127.0.0.1");
    CHECK_EQ_INT(cfg->redis.port, 6379);
    CHECK_EQ_INT(cfg->redis.db, 0);
    CHECK(cfg->redis.user == NULL);
    CHECK(cfg->redis.password == NULL);
    CHECK(cfg->redis.path == NULL);
    CHECK_EQ_INT(cfg->redis.timeout_ms, 250);
    CHECK(!cfg->redis.fail_open);
    CHECK_EQ_STR(cfg->key_file, "/etc/capgate/user.key");

    CHECK_EQ_INT(cfg->n_channels, 3);
    if (cfg->n_channels == 3) {
        CHECK_EQ_STR(cfg->channels[0].name, "email");
        CHECK_EQ_STR(cfg->channels[1].name, "push");
        CHECK_EQ_STR(cfg->channels[2].name, "sms");
        CHECK(!cfg->channels[0].requires_opt_in);
        CHECK(!cfg->channels[1].requires_opt_in);
        CHECK(cfg->channels[2].requires_opt_in);
    }
    CHECK(config_channel(cfg, "sms") == &cfg->channels[2]);
    CHECK(config_channel(cfg, "fax") == NULL);

    CHECK_EQ_INT(cfg->n_categories, 3);
    cat = config_category(cfg, "marketing");
    CHECK(cat != NULL && !cat->exempt_from_caps && !cat->exempt_from_quiet_hours &&
          !cat->ignores_opt_out && !cat->requires_opt_in);
    cat = config_category(cfg, "transactional");
    CHECK(cat != NULL && cat->exempt_from_caps && cat->exempt_from_quiet_hours &&
          cat->ignores_opt_out && !cat->requires_opt_in);
    cat = config_category(cfg, "health");
    CHECK(cat != NULL && !cat->exempt_from_caps && !cat->exempt_from_quiet_hours &&
          !cat->ignores_opt_out && cat->requires_opt_in);
    CHECK(config_category(cfg, "other") == NULL);
    CHECK_EQ_STR(cfg->default_category, "marketing");

    CHECK_EQ_INT(cfg->n_caps, 4);
    if (cfg->n_caps == 4) {
        const struct cfg_cap *c = cfg->caps;

        CHECK_EQ_STR(c[0].name, "email-daily");
        CHECK_EQ_STR(c[0].channel, "email");
        CHECK(c[0].category == NULL);
        CHECK_EQ_INT(c[0].per, CAP_PER_USER);
        CHECK_EQ_INT(c[0].limit, 2);
        CHECK_EQ_INT(c[0].window_ms, 86400000LL);
        CHECK_EQ_INT(c[0].on_exceed, CAP_DEFER);

        CHECK_EQ_STR(c[1].name, "all-weekly");
        CHECK(c[1].channel == NULL && c[1].category == NULL);
        CHECK_EQ_INT(c[1].limit, 5);
        CHECK_EQ_INT(c[1].window_ms, 7 * 86400000LL);
        CHECK_EQ_INT(c[1].on_exceed, CAP_DEFER);

        CHECK_EQ_STR(c[2].name, "campaign-once");
        CHECK_EQ_INT(c[2].per, CAP_PER_CAMPAIGN);
        CHECK_EQ_INT(c[2].limit, 1);
        CHECK_EQ_INT(c[2].window_ms, 30 * 86400000LL);
        CHECK_EQ_INT(c[2].on_exceed, CAP_DENY);

        CHECK_EQ_STR(c[3].name, "health-monthly");
        CHECK(c[3].channel == NULL);
        CHECK_EQ_STR(c[3].category, "health");
        CHECK_EQ_INT(c[3].per, CAP_PER_USER);
        CHECK_EQ_INT(c[3].window_ms, 30 * 86400000LL);
        CHECK_EQ_INT(c[3].on_exceed, CAP_DENY);
    }

    CHECK(cfg->quiet_hours.enabled);
    CHECK_EQ_INT(cfg->quiet_hours.start_min, 21 * 60);
    CHECK_EQ_INT(cfg->quiet_hours.end_min, 8 * 60);
    CHECK_EQ_STR(cfg->quiet_hours.default_tz, "UTC");
    CHECK_EQ_STR(cfg->quiet_hours.zoneinfo_dir, "/usr/share/zoneinfo");
    CHECK_EQ_INT(cfg->quiet_hours.n_channels, 2);
    CHECK(config_quiet_channel(cfg, "push"));
    CHECK(config_quiet_channel(cfg, "sms"));
    CHECK(!config_quiet_channel(cfg, "email"));
    CHECK(!config_quiet_channel(cfg, "fax"));

    CHECK_EQ_INT(cfg->max_defer_ms, 7 * 86400000LL);
    CHECK_EQ_INT(cfg->idempotency_ms, 86400000LL);
    CHECK_EQ_INT(config_retention_ms(cfg), 30 * 86400000LL);

    CHECK_EQ_INT(cfg->limits.max_body_bytes, 65536);
    CHECK_EQ_INT(cfg->limits.max_connections, 4096);
    CHECK_EQ_INT(cfg->limits.max_connections_per_ip, 0);
    CHECK_EQ_INT(cfg->limits.connection_timeout_s, 30);
    CHECK_EQ_INT(cfg->limits.connection_memory_bytes, 16384);
    CHECK_EQ_INT(cfg->limits.max_pending, 10000);
    config_free(cfg);
}

TEST(minimal_defaults)
{
    struct config *cfg = load_ok(MIN_YAML);

    CHECK(cfg != NULL);
    if (cfg == NULL)
        return;
    CHECK_EQ_STR(cfg->listen, "127.0.0.1:8425");
    CHECK_EQ_STR(cfg->listen_host, "127.0.0.1");
    CHECK_EQ_INT(cfg->listen_port, 8425);
    CHECK_EQ_INT(cfg->log_level, LOG_LEVEL_INFO);
    CHECK_EQ_STR(cfg->redis.url, "redis://127.0.0.1:6379/0");
    CHECK_EQ_INT(cfg->redis.transport, REDIS_TCP);
    CHECK_EQ_STR(cfg->redis.host, "127.0.0.1");
    CHECK_EQ_INT(cfg->redis.port, 6379);
    CHECK_EQ_INT(cfg->redis.db, 0);
    CHECK_EQ_INT(cfg->redis.timeout_ms, 250);
    CHECK(!cfg->redis.fail_open);
    CHECK_EQ_STR(cfg->key_file, "/k");
    CHECK_EQ_INT(cfg->n_channels, 2);
    CHECK(!cfg->channels[0].requires_opt_in && !cfg->channels[1].requires_opt_in);
    CHECK_EQ_INT(cfg->n_categories, 1);
    /* One category: it is the default. */
    CHECK_EQ_STR(cfg->default_category, "marketing");
    CHECK_EQ_INT(cfg->n_caps, 0);
    CHECK(cfg->caps == NULL);
    CHECK(!cfg->quiet_hours.enabled);
    CHECK_EQ_INT(cfg->quiet_hours.n_channels, 0);
    CHECK_EQ_STR(cfg->quiet_hours.default_tz, "UTC");
    CHECK_EQ_STR(cfg->quiet_hours.zoneinfo_dir, "/usr/share/zoneinfo");
    CHECK(!config_quiet_channel(cfg, "email"));
    CHECK_EQ_INT(cfg->max_defer_ms, 7 * 86400000LL);
    CHECK_EQ_INT(cfg->idempotency_ms, 86400000LL);
    CHECK_EQ_INT(config_retention_ms(cfg), 86400000LL);
    CHECK_EQ_INT(cfg->limits.max_body_bytes, 65536);
    CHECK_EQ_INT(cfg->limits.max_connections, 4096);
    CHECK_EQ_INT(cfg->limits.max_connections_per_ip, 0);
    CHECK_EQ_INT(cfg->limits.connection_timeout_s, 30);
    CHECK_EQ_INT(cfg->limits.connection_memory_bytes, 16384);
    CHECK_EQ_INT(cfg->limits.max_pending, 10000);
    config_free(cfg);
}

/* Every setting away from its default, to catch a table entry that writes
 * the wrong field. */
TEST(all_values_set)
{
    char buf[2048];
    struct config *cfg = load_ok(with_tail(buf, sizeof buf,
        "listen: \"[::1]:9000\"\n"
        "log_level: debug\n"
        "redis: { url: \"redis://10.1.2.3:7000/5\", timeout_ms: 60000, on_unavailable: allow }\n"
        "max_defer: 2h\n"
        "idempotency_window: 2w\n"
        "caps:\n"
        "  - { name: a, limit: 1000, window: 1s }\n"
        "limits:\n"
        "  max_body_bytes: 256\n"
        "  max_connections: 1000000\n"
        "  max_connections_per_ip: 7\n"
        "  connection_timeout: 1h\n"
        "  connection_memory_bytes: 16777216\n"
        "  max_pending: 1\n"));

    CHECK(cfg != NULL);
    if (cfg == NULL)
        return;
    CHECK_EQ_STR(cfg->listen, "[::1]:9000");
    CHECK_EQ_STR(cfg->listen_host, "::1");
    CHECK_EQ_INT(cfg->listen_port, 9000);
    CHECK_EQ_INT(cfg->log_level, LOG_LEVEL_DEBUG);
    CHECK_EQ_STR(cfg->redis.host, "10.1.2.3");
    CHECK_EQ_INT(cfg->redis.port, 7000);
    CHECK_EQ_INT(cfg->redis.db, 5);
    CHECK_EQ_INT(cfg->redis.timeout_ms, 60000);
    CHECK(cfg->redis.fail_open);
    CHECK_EQ_INT(cfg->max_defer_ms, 2 * 3600000LL);
    CHECK_EQ_INT(cfg->idempotency_ms, 14 * 86400000LL);
    CHECK_EQ_INT(cfg->caps[0].limit, 1000);
    CHECK_EQ_INT(cfg->caps[0].window_ms, 1000);
    /* The idempotency horizon outlives the only cap. */
    CHECK_EQ_INT(config_retention_ms(cfg), 14 * 86400000LL);
    CHECK_EQ_INT(cfg->limits.max_body_bytes, 256);
    CHECK_EQ_INT(cfg->limits.max_connections, 1000000);
    CHECK_EQ_INT(cfg->limits.max_connections_per_ip, 7);
    CHECK_EQ_INT(cfg->limits.connection_timeout_s, 3600);
    CHECK_EQ_INT(cfg->limits.connection_memory_bytes, 16777216);
    CHECK_EQ_INT(cfg->limits.max_pending, 1);
    config_free(cfg);
}

TEST(null_entries_and_empty_lists)
{
    struct config *cfg = load_ok(
        "privacy: { key_file: /k }\n"
        "channels:\n"
        "  email:\n"
        "  sms: ~\n"
        "categories:\n"
        "  marketing:\n"
        "  news: {}\n"
        "default_category: news\n"
        "caps:\n");

    CHECK(cfg != NULL);
    if (cfg == NULL)
        return;
    CHECK_EQ_INT(cfg->n_channels, 2);
    CHECK_EQ_STR(cfg->channels[1].name, "sms");
    CHECK_EQ_INT(cfg->n_categories, 2);
    CHECK_EQ_STR(cfg->default_category, "news");
    CHECK_EQ_INT(cfg->n_caps, 0);
    config_free(cfg);

    cfg = load_ok(MIN_YAML "caps: []\n");
    CHECK(cfg != NULL && cfg->n_caps == 0);
    config_free(cfg);
}

/* Anchors and merge keys are ordinary YAML; they must keep working. */
TEST(anchors_and_merge_keys)
{
    struct config *cfg = load_ok(MIN_YAML
        "caps:\n"
        "  - &base { name: one, limit: 3, window: 1h, on_exceed: deny }\n"
        "  - { <<: *base, name: two, channel: sms }\n");

    CHECK(cfg != NULL);
    if (cfg == NULL)
        return;
    CHECK_EQ_INT(cfg->n_caps, 2);
    CHECK_EQ_STR(cfg->caps[1].name, "two");
    CHECK_EQ_STR(cfg->caps[1].channel, "sms");
    CHECK_EQ_INT(cfg->caps[1].limit, 3);
    CHECK_EQ_INT(cfg->caps[1].on_exceed, CAP_DENY);
    config_free(cfg);
}

TEST(unknown_keys)
{
    char buf[2048];

    CHECK_FAILS(MIN_YAML "bogus: 1\n", 8, "bogus: unknown key");
    /* The first unknown key in the file wins, whatever the table order. */
    CHECK_FAILS(MIN_YAML "zzz: 1\naaa: 2\n", 8, "zzz: unknown key");
    CHECK_FAILS(MIN_YAML "redis:\n  url: \"redis://h\"\n  timeout: 5\n", 10,
                "redis.timeout: unknown key");
    CHECK_FAILS(MIN_YAML "limits:\n  max_bodybytes: 1000\n", 9,
                "limits.max_bodybytes: unknown key");
    CHECK_FAILS(MIN_YAML "caps:\n  - { name: a, limit: 1, window: 1d }\n"
                "  - name: b\n    limit: 1\n    windw: 1d\n", 12,
                "caps[1].windw: unknown key");
    CHECK_FAILS("privacy: { key_file: /k }\n"
                "channels:\n"
                "  email: {}\n"
                "  sms: { opt_in: true }\n"
                "categories: { marketing: {} }\n", 4,
                "channels.sms.opt_in: unknown key");
    CHECK_FAILS("privacy: { key_file: /k, key: x }\n"
                "channels: { email: {} }\n"
                "categories: { marketing: {} }\n", 1,
                "privacy.key: unknown key");
    CHECK_FAILS(MIN_YAML "categories2: {}\n", 8, "categories2: unknown key");
    CHECK_FAILS(with_tail(buf, sizeof buf,
                "quiet_hours:\n  start: \"21:00\"\n  end: \"08:00\"\n  tz: UTC\n"), 11,
                "quiet_hours.tz: unknown key");
    /* Keys are case-sensitive. */
    CHECK_FAILS(MIN_YAML "Listen: \"127.0.0.1:1\"\n", 8, "Listen: unknown key");
}

TEST(wrong_types)
{
    CHECK_FAILS(MIN_YAML "listen: [a, b]\n", 8, "listen: expected a string, got a list");
    CHECK_FAILS(MIN_YAML "listen:\n", 8, "listen: expected a string, got null");
    CHECK_FAILS(MIN_YAML "redis: 5\n", 8, "redis: expected a mapping, got a scalar");
    CHECK_FAILS(MIN_YAML "redis:\n  timeout_ms: \"250\"\n", 9,
                "redis.timeout_ms: expected an integer, got a quoted string \"250\"");
    CHECK_FAILS(MIN_YAML "redis:\n  timeout_ms: 12abc\n", 9,
                "redis.timeout_ms: expected an integer, got \"12abc\"");
    CHECK_FAILS(MIN_YAML "redis:\n  timeout_ms: 1e3\n", 9,
                "redis.timeout_ms: expected an integer, got \"1e3\"");
    CHECK_FAILS(MIN_YAML "redis:\n  timeout_ms: 2.5\n", 9,
                "redis.timeout_ms: expected an integer, got \"2.5\"");
    CHECK_FAILS(MIN_YAML "redis:\n  timeout_ms: true\n", 9,
                "redis.timeout_ms: expected an integer, got \"true\"");
    CHECK_FAILS(MIN_YAML "redis:\n  timeout_ms: 0x10\n", 9,
                "redis.timeout_ms: expected an integer, got \"0x10\"");
    CHECK_FAILS(MIN_YAML "redis:\n  timeout_ms: 0\n", 9,
                "redis.timeout_ms: 0 out of range (1..60000)");
    CHECK_FAILS(MIN_YAML "redis:\n  timeout_ms: 99999999999999999999\n", 9,
                "redis.timeout_ms: 99999999999999999999 out of range (1..60000)");
    CHECK_FAILS(MIN_YAML "redis:\n  on_unavailable: maybe\n", 9,
                "redis.on_unavailable: expected one of reject|allow, got \"maybe\"");
    CHECK_FAILS(MIN_YAML "log_level: loud\n", 8,
                "log_level: expected one of error|warn|info|debug, got \"loud\"");
    CHECK_FAILS(MIN_YAML "log_level: {}\n", 8,
                "log_level: expected one of error|warn|info|debug, got a mapping");
    CHECK_FAILS("privacy: { key_file: /k }\n"
                "channels:\n"
                "  sms: { requires_opt_in: yes }\n"
                "categories: { marketing: {} }\n", 3,
                "channels.sms.requires_opt_in: expected true or false, got \"yes\"");
    CHECK_FAILS("privacy: { key_file: /k }\n"
                "channels:\n"
                "  sms: { requires_opt_in: \"true\" }\n"
                "categories: { marketing: {} }\n", 3,
                "channels.sms.requires_opt_in: expected true or false, "
                "got a quoted string \"true\"");
    CHECK_FAILS("privacy: { key_file: /k }\n"
                "channels: { email: {} }\n"
                "categories:\n"
                "  transactional: { exempt_from_caps: 1 }\n", 4,
                "categories.transactional.exempt_from_caps: expected true or false, got \"1\"");
    CHECK_FAILS("privacy: { key_file: /k }\n"
                "channels: [email, sms]\n"
                "categories: { marketing: {} }\n", 2,
                "channels: expected a mapping of channel names, got a list");
    CHECK_FAILS("privacy: { key_file: /k }\n"
                "channels:\n"
                "  email: [x]\n"
                "categories: { marketing: {} }\n", 3,
                "channels.email: expected a mapping, got a list");
    CHECK_FAILS(MIN_YAML "caps: {}\n", 8, "caps: expected a list of caps, got a mapping");
    CHECK_FAILS(MIN_YAML "caps:\n  - 5\n", 9, "caps[0]: expected a mapping, got a scalar");
    CHECK_FAILS(MIN_YAML "caps:\n  -\n", 8, "caps[0]: expected a mapping, got null");
    CHECK_FAILS(MIN_YAML "privacy2: 1\n", 8, "privacy2: unknown key");
    CHECK_FAILS("privacy: { key_file: [a] }\n", 1,
                "privacy.key_file: expected a string, got a list");
    CHECK_FAILS("privacy: { key_file: \"\" }\n", 1, "privacy.key_file: must not be empty");
    CHECK_FAILS(MIN_YAML "max_defer: !!str 5d\n", 8, "max_defer: YAML tags are not supported");
    CHECK_FAILS(MIN_YAML "listen: \"a\\0b\"\n", 8, "listen: value contains a NUL character");
}

TEST(duration_errors)
{
    CHECK_FAILS(MIN_YAML "max_defer: 86400\n", 8,
                "max_defer: duration needs a unit (ms, s, m, h, d or w), got \"86400\"");
    CHECK_FAILS(MIN_YAML "max_defer: 1x\n", 8, "max_defer: bad duration \"1x\"");
    CHECK_FAILS(MIN_YAML "max_defer: 1.5d\n", 8, "max_defer: bad duration \"1.5d\"");
    CHECK_FAILS(MIN_YAML "max_defer: -1d\n", 8, "max_defer: bad duration \"-1d\"");
    CHECK_FAILS(MIN_YAML "max_defer: \"1 d\"\n", 8, "max_defer: bad duration \"1 d\"");
    CHECK_FAILS(MIN_YAML "max_defer: 0s\n", 8, "max_defer: bad duration \"0s\"");
    CHECK_FAILS(MIN_YAML "max_defer: 367d\n", 8,
                "max_defer: duration \"367d\" out of range (1s..366d)");
    CHECK_FAILS(MIN_YAML "idempotency_window: 999ms\n", 8,
                "idempotency_window: duration \"999ms\" out of range (1s..366d)");
    CHECK_FAILS(MIN_YAML "idempotency_window: 1d2h\n", 8,
                "idempotency_window: bad duration \"1d2h\"");
    CHECK_FAILS(MIN_YAML "limits:\n  connection_timeout: 2h\n", 9,
                "limits.connection_timeout: duration \"2h\" out of range (1s..1h)");
    CHECK_FAILS(MIN_YAML "limits:\n  connection_timeout: 1500ms\n", 9,
                "limits.connection_timeout: duration \"1500ms\" is not a whole number "
                "of seconds");
    CHECK_FAILS(MIN_YAML "limits:\n  connection_timeout: 30\n", 9,
                "limits.connection_timeout: duration needs a unit (ms, s, m, h, d or w), "
                "got \"30\"");
}

TEST(limits_errors)
{
    CHECK_FAILS(MIN_YAML "limits:\n  max_body_bytes: 255\n", 9,
                "limits.max_body_bytes: 255 out of range (256..16777216)");
    CHECK_FAILS(MIN_YAML "limits:\n  max_body_bytes: 16777217\n", 9,
                "limits.max_body_bytes: 16777217 out of range (256..16777216)");
    CHECK_FAILS(MIN_YAML "limits:\n  max_connections: 0\n", 9,
                "limits.max_connections: 0 out of range (1..1000000)");
    CHECK_FAILS(MIN_YAML "limits:\n  max_connections_per_ip: -1\n", 9,
                "limits.max_connections_per_ip: -1 out of range (0..1000000)");
    CHECK_FAILS(MIN_YAML "limits:\n  connection_memory_bytes: 8191\n", 9,
                "limits.connection_memory_bytes: 8191 out of range (8192..16777216)");
    CHECK_FAILS(MIN_YAML "limits:\n  max_pending: 1000001\n", 9,
                "limits.max_pending: 1000001 out of range (1..1000000)");
    CHECK_FAILS(MIN_YAML "limits: []\n", 8, "limits: expected a mapping, got a list");
}

TEST(cap_errors)
{
    char buf[8192];
    size_t n;

    CHECK_FAILS(MIN_YAML "caps:\n  - { name: a, limit: 0, window: 1d }\n", 9,
                "caps[0].limit: 0 out of range (1..1000)");
    CHECK_FAILS(MIN_YAML "caps:\n  - { name: a, limit: 1001, window: 1d }\n", 9,
                "caps[0].limit: 1001 out of range (1..1000)");
    CHECK_FAILS(MIN_YAML "caps:\n  - { name: a, limit: \"5\", window: 1d }\n", 9,
                "caps[0].limit: expected an integer, got a quoted string \"5\"");
    CHECK_FAILS(MIN_YAML
                "caps:\n"
                "  - { name: a, limit: 1, window: 1d }\n"
                "  - { name: b, limit: 1, window: 1d }\n"
                "  - name: c\n"
                "    limit: 1\n"
                "    window: 1x\n", 13,
                "caps[2].window: bad duration \"1x\"");
    CHECK_FAILS(MIN_YAML "caps:\n  - { name: a, limit: 1, window: 86400 }\n", 9,
                "caps[0].window: duration needs a unit (ms, s, m, h, d or w), got \"86400\"");
    CHECK_FAILS(MIN_YAML "caps:\n  - { name: a, limit: 1, window: 400d }\n", 9,
                "caps[0].window: duration \"400d\" out of range (1s..366d)");
    CHECK_FAILS(MIN_YAML "caps:\n  - { name: a, limit: 1, window: 500ms }\n", 9,
                "caps[0].window: duration \"500ms\" out of range (1s..366d)");
    CHECK_FAILS(MIN_YAML "caps:\n  - { limit: 1, window: 1d }\n", 9,
                "caps[0].name: missing required key");
    CHECK_FAILS(MIN_YAML "caps:\n  - name: a\n    window: 1d\n", 9,
                "caps[0].limit: missing required key");
    CHECK_FAILS(MIN_YAML "caps:\n  - { name: a, limit: 1 }\n", 9,
                "caps[0].window: missing required key");
    CHECK_FAILS(MIN_YAML "caps:\n  - { name: a, channel: fax, limit: 1, window: 1d }\n", 9,
                "caps[0].channel: unknown channel \"fax\"");
    CHECK_FAILS(MIN_YAML "caps:\n  - { name: a, category: promo, limit: 1, window: 1d }\n", 9,
                "caps[0].category: unknown category \"promo\"");
    CHECK_FAILS(MIN_YAML
                "caps:\n"
                "  - { name: same, limit: 1, window: 1d }\n"
                "  - { name: other, limit: 1, window: 1d }\n"
                "  - { name: same, limit: 2, window: 2d }\n", 11,
                "caps[2].name: duplicate cap name \"same\" (also caps[0])");
    CHECK_FAILS(MIN_YAML "caps:\n  - { name: \"a b\", limit: 1, window: 1d }\n", 9,
                "caps[0].name: bad cap name \"a b\" (want A-Z, a-z, 0-9, _, . and -)");
    CHECK_FAILS(MIN_YAML "caps:\n  - { name: \"\", limit: 1, window: 1d }\n", 9,
                "caps[0].name: must not be empty");
    CHECK_FAILS(MIN_YAML "caps:\n  - { name: "
                "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                ", limit: 1, window: 1d }\n", 9,
                "caps[0].name: cap name \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                "aaaaaa\" is longer than 64 characters");
    CHECK_FAILS(MIN_YAML "caps:\n  - { name: a, limit: 1, window: 1d, on_exceed: drop }\n", 9,
                "caps[0].on_exceed: expected one of defer|deny, got \"drop\"");
    CHECK_FAILS(MIN_YAML "caps:\n  - { name: a, limit: 1, window: 1d, per: device }\n", 9,
                "caps[0].per: expected one of user|campaign, got \"device\"");

    /* 64 caps load, 65 do not. */
    n = (size_t)snprintf(buf, sizeof buf, "%scaps:\n", MIN_YAML);
    for (int i = 0; i < 64; i++)
        n += (size_t)snprintf(buf + n, sizeof buf - n,
                              "  - { name: c%d, limit: 1, window: 1d }\n", i);
    {
        struct config *cfg = load_ok(buf);

        CHECK(cfg != NULL && cfg->n_caps == 64);
        config_free(cfg);
    }
    snprintf(buf + n, sizeof buf - n, "  - { name: c64, limit: 1, window: 1d }\n");
    CHECK_FAILS(buf, 8, "caps: too many caps (65, max 64)");
}

TEST(required_and_cross_references)
{
    CHECK_FAILS("channels: { email: {} }\ncategories: { marketing: {} }\n", 1,
                "privacy: missing required key");
    CHECK_FAILS("privacy: {}\nchannels: { email: {} }\ncategories: { marketing: {} }\n", 1,
                "privacy.key_file: missing required key");
    CHECK_FAILS("listen: \"127.0.0.1:1\"\n"
                "privacy:\n"
                "  # no key_file\n"
                "channels: { email: {} }\n"
                "categories: { marketing: {} }\n", 2,
                "privacy.key_file: missing required key");
    CHECK_FAILS("# comment\nprivacy: { key_file: /k }\ncategories: { marketing: {} }\n", 2,
                "channels: missing required key");
    CHECK_FAILS("privacy: { key_file: /k }\nchannels: {}\ncategories: { marketing: {} }\n", 2,
                "channels: at least one channel is required");
    CHECK_FAILS("privacy: { key_file: /k }\nchannels:\ncategories: { marketing: {} }\n", 2,
                "channels: at least one channel is required");
    CHECK_FAILS("privacy: { key_file: /k }\nchannels: { email: {} }\n", 1,
                "categories: missing required key");
    CHECK_FAILS("privacy: { key_file: /k }\n"
                "channels: { Email: {} }\n"
                "categories: { marketing: {} }\n", 2,
                "channels: bad channel name \"Email\" (want 1 to 32 of a-z, 0-9, _ and -)");
    CHECK_FAILS("privacy: { key_file: /k }\n"
                "channels: { email: {} }\n"
                "categories:\n"
                "  marketing: {}\n"
                "  \"a.b\": {}\n", 5,
                "categories: bad category name \"a.b\" (want 1 to 32 of a-z, 0-9, _ and -)");
    CHECK_FAILS("privacy: { key_file: /k }\n"
                "channels: { email: {} }\n"
                "categories: { marketing: {}, news: {} }\n", 1,
                "default_category: missing required key (there is more than one category)");
    CHECK_FAILS("privacy: { key_file: /k }\n"
                "channels: { email: {} }\n"
                "categories: { marketing: {}, news: {} }\n"
                "default_category: promo\n", 4,
                "default_category: unknown category \"promo\"");
    /* A channel is not a category. */
    CHECK_FAILS(MIN_YAML "default_category: email\n", 8,
                "default_category: unknown category \"email\"");
}

static int redis_fails(const char *url, const char *msg)
{
    char yaml[1024], full[512];

    snprintf(yaml, sizeof yaml, "%sredis:\n  url: \"%s\"\n", MIN_YAML, url);
    snprintf(full, sizeof full, "redis.url: %s", msg);
    return fails_with(yaml, 9, full);
}

static struct config *redis_ok(const char *url)
{
    char yaml[1024];

    snprintf(yaml, sizeof yaml, "%sredis:\n  url: \"%s\"\n", MIN_YAML, url);
    return load_ok(yaml);
}

TEST(redis_urls_good)
{
    struct config *cfg;

    cfg = redis_ok("redis://capgate:pa%40ss%3Aw0rd@db.example.com:6380/3");
    CHECK(cfg != NULL);
    if (cfg != NULL) {
        CHECK_EQ_INT(cfg->redis.transport, REDIS_TCP);
        CHECK_EQ_STR(cfg->redis.user, "capgate");
        CHECK_EQ_STR(cfg->redis.password, "pa@ss:w0rd");
        CHECK_EQ_STR(cfg->redis.host, "db.example.com");
        CHECK_EQ_INT(cfg->redis.port, 6380);
        CHECK_EQ_INT(cfg->redis.db, 3);
        CHECK_EQ_STR(cfg->redis.url, "redis://capgate:***@db.example.com:6380/3");
        config_free(cfg);
    }
    cfg = redis_ok("redis://:secret@127.0.0.1");
    CHECK(cfg != NULL);
    if (cfg != NULL) {
        CHECK(cfg->redis.user == NULL);
        CHECK_EQ_STR(cfg->redis.password, "secret");
        CHECK_EQ_INT(cfg->redis.port, 6379);
        CHECK_EQ_INT(cfg->redis.db, 0);
        CHECK_EQ_STR(cfg->redis.url, "redis://:***@127.0.0.1");
        config_free(cfg);
    }
    cfg = redis_ok("redis://[::1]:7000");
    CHECK(cfg != NULL);
    if (cfg != NULL) {
        CHECK_EQ_STR(cfg->redis.host, "::1");
        CHECK_EQ_INT(cfg->redis.port, 7000);
        CHECK_EQ_STR(cfg->redis.url, "redis://[::1]:7000");
        config_free(cfg);
    }
    cfg = redis_ok("redis://localhost/");
    CHECK(cfg != NULL);
    if (cfg != NULL) {
        CHECK_EQ_STR(cfg->redis.host, "localhost");
        CHECK_EQ_INT(cfg->redis.port, 6379);
        CHECK_EQ_INT(cfg->redis.db, 0);
        config_free(cfg);
    }
    cfg = redis_ok("redis://h/1000000");
    CHECK(cfg != NULL && cfg->redis.db == 1000000);
    config_free(cfg);
    cfg = redis_ok("unix:///run/redis/redis.sock");
    CHECK(cfg != NULL);
    if (cfg != NULL) {
        CHECK_EQ_INT(cfg->redis.transport, REDIS_UNIX);
        CHECK_EQ_STR(cfg->redis.path, "/run/redis/redis.sock");
        CHECK(cfg->redis.host == NULL);
        CHECK(cfg->redis.password == NULL);
        CHECK_EQ_INT(cfg->redis.db, 0);
        CHECK_EQ_STR(cfg->redis.url, "unix:///run/redis/redis.sock");
        config_free(cfg);
    }
    cfg = redis_ok("unix:///tmp/r.sock?db=2&password=p%26w");
    CHECK(cfg != NULL);
    if (cfg != NULL) {
        CHECK_EQ_STR(cfg->redis.path, "/tmp/r.sock");
        CHECK_EQ_INT(cfg->redis.db, 2);
        CHECK_EQ_STR(cfg->redis.password, "p&w");
        CHECK_EQ_STR(cfg->redis.url, "unix:///tmp/r.sock?db=2&password=***");
        config_free(cfg);
    }
    cfg = redis_ok("unix:///tmp/r.sock?password=x&user=ops&db=15");
    CHECK(cfg != NULL);
    if (cfg != NULL) {
        CHECK_EQ_STR(cfg->redis.user, "ops");
        CHECK_EQ_STR(cfg->redis.password, "x");
        CHECK_EQ_INT(cfg->redis.db, 15);
        CHECK_EQ_STR(cfg->redis.url, "unix:///tmp/r.sock?password=***&user=ops&db=15");
        config_free(cfg);
    }
}

TEST(redis_urls_bad)
{
    CHECK(redis_fails("http://127.0.0.1:6379",
                      "unsupported URL scheme \"http\" (want redis:// or unix://)"));
    CHECK(redis_fails("rediss://127.0.0.1:6379",
                      "unsupported URL scheme \"rediss\" (want redis:// or unix://)"));
    CHECK(redis_fails("127.0.0.1:6379", "expected a redis:// or unix:// URL"));
    CHECK(redis_fails("redis://h:0", "bad port (want 1..65535)"));
    CHECK(redis_fails("redis://h:65536", "bad port (want 1..65535)"));
    CHECK(redis_fails("redis://h:", "bad port (want 1..65535)"));
    CHECK(redis_fails("redis://h:63x9", "bad port (want 1..65535)"));
    CHECK(redis_fails("redis://h/abc", "bad db \"abc\" (want 0..1000000)"));
    CHECK(redis_fails("redis://h/-1", "bad db \"-1\" (want 0..1000000)"));
    CHECK(redis_fails("redis://h/1000001", "bad db \"1000001\" (want 0..1000000)"));
    CHECK(redis_fails("redis://h/0/1", "bad db \"0/1\" (want 0..1000000)"));
    CHECK(redis_fails("redis://h?db=1",
                      "redis:// URLs take no query or fragment (the db goes in /db)"));
    CHECK(redis_fails("redis://secret@h", "credentials must be written [user]:password@"));
    CHECK(redis_fails("redis://u:p%zz@h", "bad percent-encoding in the password"));
    CHECK(redis_fails("redis://u%0:p@h", "bad percent-encoding in the user"));
    CHECK(redis_fails("redis://u:p%00@h", "bad percent-encoding in the password"));
    CHECK(redis_fails("redis://ops:@h", "a user needs a password"));
    CHECK(redis_fails("redis://", "bad host (want a name, an IPv4 address or [IPv6])"));
    CHECK(redis_fails("redis://:6379", "bad host (want a name, an IPv4 address or [IPv6])"));
    CHECK(redis_fails("redis://ho st", "bad host (want a name, an IPv4 address or [IPv6])"));
    CHECK(redis_fails("redis://::1:6379", "bad host (want a name, an IPv4 address or [IPv6])"));
    CHECK(redis_fails("redis://[::1", "bad IPv6 host (missing ])"));
    CHECK(redis_fails("redis://[zz]:1", "bad IPv6 host"));
    CHECK(redis_fails("unix://redis.sock", "unix:// needs an absolute socket path, e.g. "
                                           "unix:///run/redis/redis.sock"));
    CHECK(redis_fails("unix:///", "unix:// needs an absolute socket path, e.g. "
                                  "unix:///run/redis/redis.sock"));
    CHECK(redis_fails("unix:///s?foo=1",
                      "unknown URL parameter \"foo\" (want db, password or user)"));
    CHECK(redis_fails("unix:///s?db", "URL parameter \"db\" needs a value"));
    CHECK(redis_fails("unix:///s?db=1&db=2", "duplicate URL parameter \"db\""));
    CHECK(redis_fails("unix:///s?db=x", "bad db \"x\" (want 0..1000000)"));
    CHECK(redis_fails("unix:///s?user=ops", "a user needs a password"));
    CHECK(redis_fails("unix:///aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                      "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.sock",
                      "socket path too long (max 107 bytes)"));
    CHECK(redis_fails("", "must not be empty"));
}

static int listen_is(const char *listen, const char *host, int port)
{
    char yaml[512];
    struct config *cfg;
    int ok;

    snprintf(yaml, sizeof yaml, "%slisten: \"%s\"\n", MIN_YAML, listen);
    cfg = load_ok(yaml);
    if (cfg == NULL)
        return 0;
    ok = strcmp(cfg->listen, listen) == 0 && strcmp(cfg->listen_host, host) == 0 &&
         cfg->listen_port == port;
    if (!ok)
        printf("    %s -> %s %d\n", listen, cfg->listen_host, cfg->listen_port);
    config_free(cfg);
    return ok;
}

static int listen_fails(const char *listen, const char *msg)
{
    char yaml[512], full[512];

    snprintf(yaml, sizeof yaml, "%slisten: \"%s\"\n", MIN_YAML, listen);
    snprintf(full, sizeof full, "listen: %s", msg);
    return fails_with(yaml, 8, full);
}

#define HOST_FORMS "want host:port; host is a numeric IPv4 address, [IPv6], localhost or *"

TEST(listen_forms)
{
    CHECK(listen_is("127.0.0.1:8425", "127.0.0.1", 8425));
    CHECK(listen_is("10.0.0.7:1", "10.0.0.7", 1));
    CHECK(listen_is("localhost:8080", "127.0.0.1", 8080));
    CHECK(listen_is("*:80", "0.0.0.0", 80));
    CHECK(listen_is("0.0.0.0:65535", "0.0.0.0", 65535));
    CHECK(listen_is("[::1]:8425", "::1", 8425));
    CHECK(listen_is("[::]:9", "::", 9));
    CHECK(listen_is("[2001:DB8:0:0::1]:443", "2001:db8::1", 443));

    CHECK(listen_fails("127.0.0.1", "bad address \"127.0.0.1\" (" HOST_FORMS ")"));
    CHECK(listen_fails(":8425", "bad address \":8425\" (" HOST_FORMS ")"));
    CHECK(listen_fails("example.com:80", "bad address \"example.com:80\" (" HOST_FORMS ")"));
    CHECK(listen_fails("1.2.3:80", "bad address \"1.2.3:80\" (" HOST_FORMS ")"));
    CHECK(listen_fails("[::1]8425", "bad address \"[::1]8425\" (" HOST_FORMS ")"));
    CHECK(listen_fails("::1:8425",
                       "bad address \"::1:8425\" (IPv6 addresses need brackets: [::1]:8425)"));
    CHECK(listen_fails("[1.2.3.4]:80", "bad IPv6 address in \"[1.2.3.4]:80\""));
    CHECK(listen_fails("127.0.0.1:0", "bad port in \"127.0.0.1:0\" (want 1..65535)"));
    CHECK(listen_fails("127.0.0.1:65536", "bad port in \"127.0.0.1:65536\" (want 1..65535)"));
    CHECK(listen_fails("127.0.0.1:80x", "bad port in \"127.0.0.1:80x\" (want 1..65535)"));
    CHECK(listen_fails("127.0.0.1:", "bad port in \"127.0.0.1:\" (want 1..65535)"));
    CHECK(listen_fails("[::1]:", "bad port in \"[::1]:\" (want 1..65535)"));
}

TEST(quiet_hours)
{
    struct zi z;
    char buf[2048], want[512];
    struct config *cfg;

    zi_make(&z);

    /* Absent channels: every channel; an explicit zone from the tree. */
    cfg = load_ok(with_tail(buf, sizeof buf,
                            "quiet_hours:\n"
                            "  start: \"22:30\"\n"
                            "  end: \"07:15\"\n"
                            "  default_tz: Europe/Paris\n"
                            "  zoneinfo_dir: %s\n", z.dir));
    CHECK(cfg != NULL);
    if (cfg != NULL) {
        CHECK(cfg->quiet_hours.enabled);
        CHECK_EQ_INT(cfg->quiet_hours.start_min, 22 * 60 + 30);
        CHECK_EQ_INT(cfg->quiet_hours.end_min, 7 * 60 + 15);
        CHECK_EQ_STR(cfg->quiet_hours.default_tz, "Europe/Paris");
        CHECK_EQ_STR(cfg->quiet_hours.zoneinfo_dir, z.dir);
        CHECK_EQ_INT(cfg->quiet_hours.n_channels, 2);
        CHECK(config_quiet_channel(cfg, "email"));
        CHECK(config_quiet_channel(cfg, "sms"));
        config_free(cfg);
    }
    /* Plain (unquoted) times, default zone, an explicit empty list. */
    cfg = load_ok(with_tail(buf, sizeof buf,
                            "quiet_hours: { start: 08:00, end: 09:00, channels: [],"
                            " zoneinfo_dir: %s }\n", z.dir));
    CHECK(cfg != NULL);
    if (cfg != NULL) {
        CHECK(cfg->quiet_hours.enabled);
        CHECK_EQ_STR(cfg->quiet_hours.default_tz, "UTC");
        CHECK_EQ_INT(cfg->quiet_hours.n_channels, 0);
        CHECK(!config_quiet_channel(cfg, "email"));
        config_free(cfg);
    }

    CHECK_FAILS(with_tail(buf, sizeof buf,
                          "quiet_hours:\n  start: \"21:00\"\n  end: \"21:00\"\n"
                          "  zoneinfo_dir: %s\n", z.dir), 10,
                "quiet_hours.end: same as start (quiet hours would be empty)");
    CHECK_FAILS(with_tail(buf, sizeof buf,
                          "quiet_hours:\n  start: \"25:00\"\n  end: \"08:00\"\n"), 9,
                "quiet_hours.start: bad time \"25:00\" (want HH:MM, 00:00..23:59)");
    CHECK_FAILS(with_tail(buf, sizeof buf,
                          "quiet_hours:\n  start: \"21:00\"\n  end: \"8:00\"\n"), 10,
                "quiet_hours.end: bad time \"8:00\" (want HH:MM, 00:00..23:59)");
    CHECK_FAILS(with_tail(buf, sizeof buf, "quiet_hours:\n  end: \"08:00\"\n"), 8,
                "quiet_hours.start: missing required key");
    CHECK_FAILS(with_tail(buf, sizeof buf, "quiet_hours:\n"), 8,
                "quiet_hours.start: missing required key");
    CHECK_FAILS(with_tail(buf, sizeof buf,
                          "quiet_hours:\n  start: \"21:00\"\n  end: \"08:00\"\n"
                          "  zoneinfo_dir: %s\n"
                          "  channels:\n    - sms\n    - fax\n", z.dir), 14,
                "quiet_hours.channels[1]: unknown channel \"fax\"");
    CHECK_FAILS(with_tail(buf, sizeof buf,
                          "quiet_hours:\n  start: \"21:00\"\n  end: \"08:00\"\n"
                          "  zoneinfo_dir: %s\n"
                          "  channels: [sms, email, sms]\n", z.dir), 12,
                "quiet_hours.channels[2]: duplicate channel \"sms\"");
    CHECK_FAILS(with_tail(buf, sizeof buf,
                          "quiet_hours:\n  start: \"21:00\"\n  end: \"08:00\"\n"
                          "  zoneinfo_dir: %s\n"
                          "  channels: sms\n", z.dir), 12,
                "quiet_hours.channels: expected a list of channels, got a scalar");
    CHECK_FAILS(with_tail(buf, sizeof buf,
                          "quiet_hours:\n  start: \"21:00\"\n  end: \"08:00\"\n"
                          "  zoneinfo_dir: %s\n"
                          "  default_tz: ../../etc/passwd\n", z.dir), 12,
                "quiet_hours.default_tz: bad time zone name \"../../etc/passwd\"");
    CHECK_FAILS(with_tail(buf, sizeof buf,
                          "quiet_hours:\n  start: \"21:00\"\n  end: \"08:00\"\n"
                          "  zoneinfo_dir: %s\n"
                          "  default_tz: /etc/passwd\n", z.dir), 12,
                "quiet_hours.default_tz: bad time zone name \"/etc/passwd\"");
    snprintf(want, sizeof want,
             "quiet_hours.default_tz: unknown time zone \"Mars/Olympus\" "
             "(no readable file %s/Mars/Olympus)", z.dir);
    CHECK_FAILS(with_tail(buf, sizeof buf,
                          "quiet_hours:\n  start: \"21:00\"\n  end: \"08:00\"\n"
                          "  zoneinfo_dir: %s\n"
                          "  default_tz: Mars/Olympus\n", z.dir), 12, want);
    /* A directory is not a zone. */
    snprintf(want, sizeof want,
             "quiet_hours.default_tz: unknown time zone \"Europe\" "
             "(no readable file %s/Europe)", z.dir);
    CHECK_FAILS(with_tail(buf, sizeof buf,
                          "quiet_hours:\n  start: \"21:00\"\n  end: \"08:00\"\n"
                          "  zoneinfo_dir: %s\n"
                          "  default_tz: Europe\n", z.dir), 12, want);
    snprintf(want, sizeof want, "quiet_hours.zoneinfo_dir: \"%s/UTC\" is not a directory",
             z.dir);
    CHECK_FAILS(with_tail(buf, sizeof buf,
                          "quiet_hours:\n  start: \"21:00\"\n  end: \"08:00\"\n"
                          "  zoneinfo_dir: %s/UTC\n", z.dir), 11, want);
    CHECK_FAILS(with_tail(buf, sizeof buf,
                          "quiet_hours:\n  start: \"21:00\"\n  end: \"08:00\"\n"
                          "  zoneinfo_dir: /nonexistent/zoneinfo\n"), 11,
                "quiet_hours.zoneinfo_dir: \"/nonexistent/zoneinfo\": "
                "No such file or directory");
    CHECK_FAILS(with_tail(buf, sizeof buf, "quiet_hours: [21:00, 08:00]\n"), 8,
                "quiet_hours: expected a mapping, got a list");
    zi_remove(&z);
}

TEST(yaml_syntax_errors)
{
    char path[64], err[CONFIG_ERR_LEN];
    struct config *cfg;

    CHECK(fails_with_prefix(MIN_YAML "caps: [\n  { name: a\n", 10, "YAML syntax error: "));
    CHECK(fails_with_prefix("privacy:\n  key_file: /k\n key_file: /j\n", 3,
                            "YAML syntax error: "));
    /* Duplicate keys are refused by libfyaml, with the second one's line. */
    CHECK(fails_with_prefix(MIN_YAML "listen: \"127.0.0.1:1\"\nlisten: \"127.0.0.1:2\"\n", 9,
                            "YAML syntax error: duplicate key"));
    CHECK(fails_with_prefix(MIN_YAML "caps: [*nope]\n", 8, "YAML syntax error: "));
    CHECK_FAILS(MIN_YAML "listen: \"a\xff\"\n", 8, "invalid UTF-8");
    CHECK_FAILS("\xff: 1\n", 1, "invalid UTF-8");
    CHECK_FAILS(MIN_YAML "---\nlisten: x\n", 9, "only one YAML document is allowed");
    CHECK_FAILS("- a\n- b\n", 1, "expected a mapping, got a list");
    CHECK(fails_with_prefix("", 1, "the file is empty"));
    CHECK(fails_with_prefix("# nothing but a comment\n", 1, "the file is empty"));

    /* libfyaml must not have printed anything itself: nothing to check
     * here but that the message is ours and complete. */
    cfg = load_yaml("a: [\n", path, err);
    CHECK(cfg == NULL);
    CHECK(strstr(err, path) == err);
}

TEST(missing_file)
{
    char err[CONFIG_ERR_LEN];
    struct config *cfg;

    cfg = config_load("/nonexistent/capgate.yaml", err, sizeof err);
    CHECK(cfg == NULL);
    CHECK_EQ_STR(err, "/nonexistent/capgate.yaml: cannot read: No such file or directory");
    cfg = config_load("/tmp", err, sizeof err);
    CHECK(cfg == NULL);
    CHECK_EQ_STR(err, "/tmp: cannot read: Is a directory");
    /* A config file is small: more than 1 MiB is refused unread. */
    {
        size_t big = (1u << 20) + 1;
        char *yaml = malloc(big + 1), path[64], want[128];

        CHECK(yaml != NULL);
        if (yaml != NULL) {
            memset(yaml, '#', big);
            yaml[big] = '\0';
            cfg = load_yaml(yaml, path, err);
            CHECK(cfg == NULL);
            snprintf(want, sizeof want, "%s: file too large (max 1048576 bytes)", path);
            CHECK_EQ_STR(err, want);
            free(yaml);
        }
    }
    /* No error buffer: still no crash. */
    CHECK(config_load("/nonexistent/capgate.yaml", NULL, 0) == NULL);
    CHECK(config_load(NULL, err, sizeof err) == NULL);
}

TEST(lookups_on_edge_cases)
{
    struct config *cfg = load_ok(MIN_YAML
                                 "caps:\n"
                                 "  - { name: long, limit: 1, window: 366d }\n"
                                 "  - { name: short, limit: 1, window: 1s }\n");

    CHECK(cfg != NULL);
    if (cfg == NULL)
        return;
    CHECK_EQ_INT(config_retention_ms(cfg), 366 * 86400000LL);
    CHECK(config_channel(cfg, NULL) == NULL);
    CHECK(config_channel(NULL, "email") == NULL);
    CHECK(config_category(cfg, NULL) == NULL);
    CHECK(!config_quiet_channel(cfg, "email"));
    CHECK(!config_quiet_channel(NULL, "email"));
    CHECK_EQ_INT(config_retention_ms(NULL), 0);
    config_free(cfg);
    config_free(NULL);
}

#define UPSTREAM_YAML \
    "privacy:\n  key_file: /k\n" \
    "categories:\n  marketing: {}\n" \
    "channels:\n  email:\n    upstream:\n      url: \"http://127.0.0.1:1/x\"\n"

TEST(shaping)
{
    struct config *cfg = load_ok(UPSTREAM_YAML);
    CHECK(cfg != NULL);
    if (cfg) {
        const struct cfg_upstream *u = &cfg->channels[0].upstream;
        CHECK(!u->rate.enabled);
        CHECK_EQ_INT(u->over_rate, OVER_RATE_QUEUE);
        CHECK_EQ_INT(u->pushback.n_statuses, 2);
        CHECK_EQ_INT(u->pushback.statuses[0], 429);
        CHECK_EQ_INT(u->pushback.statuses[1], 503);
        CHECK_EQ_INT(u->pushback.max_pause_ms, 600000);
        config_free(cfg);
    }
    cfg = load_ok(UPSTREAM_YAML "      rate: { per_second: 100 }\n      over_rate: reject\n"
                  "      pushback: { statuses: [429, 420], max_pause: 1m }\n");
    CHECK(cfg != NULL);
    if (cfg) {
        const struct cfg_upstream *u = &cfg->channels[0].upstream;
        CHECK(u->rate.enabled);
        CHECK_EQ_INT(u->rate.per_second, 100);
        CHECK_EQ_INT(u->rate.burst, 10);       /* a tenth of a second's worth */
        CHECK_EQ_INT(u->over_rate, OVER_RATE_REJECT);
        CHECK_EQ_INT(u->pushback.n_statuses, 2);
        CHECK_EQ_INT(u->pushback.statuses[1], 420);
        CHECK_EQ_INT(u->pushback.max_pause_ms, 60000);
        config_free(cfg);
    }
    cfg = load_ok(UPSTREAM_YAML "      rate: { per_second: 2, burst: 5 }\n      pushback: { statuses: [] }\n");
    CHECK(cfg != NULL);
    if (cfg) {
        CHECK_EQ_INT(cfg->channels[0].upstream.rate.burst, 5);
        CHECK_EQ_INT(cfg->channels[0].upstream.pushback.n_statuses, 0);
        config_free(cfg);
    }
    cfg = load_ok(UPSTREAM_YAML "      rate: { per_second: 3 }\n");
    CHECK(cfg && cfg->channels[0].upstream.rate.burst == 1);
    config_free(cfg);
    CHECK_FAILS(UPSTREAM_YAML "      rate: { per_second: 0 }\n", 9,
                "channels.email.upstream.rate.per_second: 0 out of range (1..1000000)");
    CHECK_FAILS(UPSTREAM_YAML "      rate: { burst: 3 }\n", 9,
                "channels.email.upstream.rate.per_second: missing required key");
    CHECK_FAILS(UPSTREAM_YAML "      over_rate: drop\n", 9,
                "channels.email.upstream.over_rate: expected one of queue|reject, got \"drop\"");
    CHECK_FAILS(UPSTREAM_YAML "      pushback: { statuses: [200] }\n", 9,
                "channels.email.upstream.pushback.statuses: \"200\": want an HTTP status 400..599");
    CHECK_FAILS(UPSTREAM_YAML "      pushback: { statuses: 429 }\n", 9,
                "channels.email.upstream.pushback.statuses: expected a list of HTTP statuses, got a scalar");
}

/* The public pages' listener and the routes' List-Unsubscribe headers. */
TEST(public_section)
{
    struct config *cfg = load_ok(UPSTREAM_YAML "public:\n  base_url: \"https://p.example.com/x/\"\n"
                                 "  listen: \"*:8426\"\n"
                                 "routes:\n  - { path: /m, channel: email, user: \"json:/to\", "
                                 "message_id: \"header:K\", unsubscribe_headers: "
                                 "\"json:/personalizations/*/headers\" }\n");
    CHECK(cfg != NULL);
    if (cfg) {
        CHECK(cfg->public.enabled);
        CHECK_EQ_STR(cfg->public.base_url, "https://p.example.com/x");    /* no trailing / */
        CHECK_EQ_STR(cfg->public.listen_host, "0.0.0.0");
        CHECK_EQ_INT(cfg->public.listen_port, 8426);
        CHECK(cfg->public.token_ttl_ms == 180LL * 86400000);
        CHECK(cfg->public.organisation == NULL);
        CHECK_EQ_INT(cfg->public.max_connections_per_ip, 16);
        CHECK_EQ_STR(cfg->routes[0].unsubscribe_headers, "json:/personalizations/*/headers");
        config_free(cfg);
    }
    cfg = load_ok(UPSTREAM_YAML);
    CHECK(cfg != NULL && !cfg->public.enabled);
    config_free(cfg);
    CHECK_FAILS(UPSTREAM_YAML "public:\n  base_url: \"ftp://x\"\n  listen: \"*:8426\"\n", 10,
                "public.base_url: bad URL \"ftp://x\" (want http:// or https://, a host, an "
                "optional path, no query, at most 200 characters)");
    CHECK_FAILS(UPSTREAM_YAML "public:\n  base_url: \"https://x/?a\"\n  listen: \"*:8426\"\n", 10,
                "public.base_url: bad URL \"https://x/?a\" (want http:// or https://, a host, "
                "an optional path, no query, at most 200 characters)");
    CHECK_FAILS(UPSTREAM_YAML "public:\n  base_url: \"https://x\"\n", 9,
                "public.listen: missing required key");
    CHECK_FAILS(UPSTREAM_YAML "listen: \"127.0.0.1:9000\"\n"
                "public:\n  base_url: \"https://x\"\n  listen: \"127.0.0.1:9000\"\n", 10,
                "public: the same address as listen: the public pages need a listener of "
                "their own");
    CHECK_FAILS(UPSTREAM_YAML "routes:\n  - { path: /m, channel: email, user: \"json:/to\", "
                "message_id: \"header:K\", unsubscribe_headers: \"json:/personalizations/*/headers\" }\n",
                10, "routes[0].unsubscribe_headers: unsubscribe links need the public section "
                "(public.base_url, public.listen)");
}

/* A category's default queue priority (a send's own "priority" wins). */
TEST(category_priority)
{
    struct config *cfg = load_ok(MIN_YAML "  receipts: { priority: 9 }\n"
                                          "default_category: marketing\n");
    CHECK(cfg != NULL);
    if (cfg) {
        CHECK_EQ_INT(config_category(cfg, "marketing")->priority, 0);
        CHECK_EQ_INT(config_category(cfg, "receipts")->priority, 9);
        config_free(cfg);
    }
    CHECK_FAILS(MIN_YAML "  receipts: { priority: 10 }\ndefault_category: marketing\n", 8,
                "categories.receipts.priority: 10 out of range (0..9)");
    CHECK_FAILS(MIN_YAML "  receipts: { priority: high }\ndefault_category: marketing\n", 8,
                "categories.receipts.priority: expected an integer, got \"high\"");
}

TEST(warmup_and_throttles)
{
    struct config *cfg = load_ok(UPSTREAM_YAML
        "      warmup: { start: \"2026-12-01\", daily: [500, 1000, 2000] }\n"
        "throttles:\n"
        "  - { name: campaign-rate, per: campaign, per_second: 50 }\n"
        "  - { name: mail-only, channel: email, per_second: 5, burst: 2 }\n");
    CHECK(cfg != NULL);
    if (cfg) {
        const struct cfg_warmup *w = &cfg->channels[0].upstream.warmup;
        CHECK(w->enabled);
        CHECK_EQ_INT(w->start_day, 20788);       /* 2026-12-01 */
        CHECK_EQ_INT(w->start_ms, -1);
        CHECK_EQ_INT(w->n_daily, 3);
        CHECK_EQ_INT(w->daily[2], 2000);
        CHECK_EQ_INT(w->day_ms, 86400000);
        CHECK_EQ_INT(cfg->n_throttles, 2);
        CHECK_EQ_STR(cfg->throttles[0].name, "campaign-rate");
        CHECK(cfg->throttles[0].channel == NULL);
        CHECK_EQ_INT(cfg->throttles[0].per_second, 50);
        CHECK_EQ_INT(cfg->throttles[0].burst, 5);
        CHECK_EQ_STR(cfg->throttles[1].channel, "email");
        CHECK_EQ_INT(cfg->throttles[1].burst, 2);
        config_free(cfg);
    }
    cfg = load_ok(UPSTREAM_YAML
        "      warmup: { start: \"2026-12-03T10:00:00Z\", daily: [5], day: 3s }\n");
    CHECK(cfg && cfg->channels[0].upstream.warmup.start_ms == (20790LL * 86400 + 36000) * 1000);
    CHECK(cfg && cfg->channels[0].upstream.warmup.day_ms == 3000);
    config_free(cfg);
    CHECK_FAILS(UPSTREAM_YAML "      warmup: { start: \"2026-02-30\", daily: [5] }\n", 9,
                "channels.email.upstream.warmup.start: \"2026-02-30\": no such date");
    CHECK_FAILS(UPSTREAM_YAML "      warmup: { start: \"1 Dec\", daily: [5] }\n", 9,
                "channels.email.upstream.warmup.start: \"1 Dec\": want a date YYYY-MM-DD or an "
                "instant YYYY-MM-DDTHH:MM:SSZ");
    CHECK_FAILS(UPSTREAM_YAML "      warmup: { start: \"2026-12-01\", daily: [] }\n", 9,
                "channels.email.upstream.warmup.daily: expected a list of daily ceilings, got none");
    CHECK_FAILS(UPSTREAM_YAML "      warmup: { start: \"2026-12-01\", daily: [0] }\n", 9,
                "channels.email.upstream.warmup.daily: \"0\": want a count 1..1000000000");
    CHECK_FAILS(UPSTREAM_YAML "      warmup: { start: \"2026-12-01\" }\n", 9,
                "channels.email.upstream.warmup.daily: missing required key");
    CHECK_FAILS(UPSTREAM_YAML "throttles:\n  - { name: a, per_second: 5, channel: sms }\n", 10,
                "throttles[0].channel: unknown channel \"sms\"");
    CHECK_FAILS(UPSTREAM_YAML "throttles:\n  - { name: a, per_second: 5 }\n"
                "  - { name: a, per_second: 6 }\n", 11,
                "throttles[1].name: throttle \"a\" is named twice");
    CHECK_FAILS(UPSTREAM_YAML "throttles:\n  - { name: a, per: person, per_second: 5 }\n", 10,
                "throttles[0].per: expected one of campaign, got \"person\"");
}

int main(void)
{
    RUN(duration_table);
    RUN(clock_table);
    RUN(example_config);
    RUN(minimal_defaults);
    RUN(all_values_set);
    RUN(null_entries_and_empty_lists);
    RUN(anchors_and_merge_keys);
    RUN(unknown_keys);
    RUN(wrong_types);
    RUN(duration_errors);
    RUN(limits_errors);
    RUN(cap_errors);
    RUN(required_and_cross_references);
    RUN(redis_urls_good);
    RUN(redis_urls_bad);
    RUN(listen_forms);
    RUN(quiet_hours);
    RUN(yaml_syntax_errors);
    RUN(missing_file);
    RUN(lookups_on_edge_cases);
    RUN(shaping);
    RUN(category_priority);
    RUN(public_section);
    RUN(warmup_and_throttles);
    return unit_done("test_config");
}

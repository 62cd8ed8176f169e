/*
 * fuzz_config: config_load (src/config.c) on a hostile capgate.yaml.
 *
 * The input is written to an in-memory file (memfd) and loaded through its
 * /proc/self/fd path, since config_load reads a file by name.  LeakSanitizer
 * checks that every error path frees everything.
 *
 * Oracles: a refusal always comes with an error message that names the
 * file; an accepted config is self-consistent (default category and cap
 * filters name configured things, bounds hold) and every channel/category
 * pair turns into script arguments that stay inside their buffer.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "capgate/config.h"
#include "capgate/decision.h"
#include "capgate/tz.h"
#include "fuzz_common.h"

#define INPUT_MAX (64 * 1024)   /* a config is small; config.c refuses > 1 MiB */

static int fd = -1;
static char path[64];

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc; (void)argv;
    fd = memfd_create("capgate-fuzz.yaml", MFD_CLOEXEC);
    if (fd < 0) {
        perror("fuzz: memfd_create");
        abort();
    }
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    /* upstream headers expand ${VAR}: give the seeds one that exists. */
    setenv("CAPGATE_FUZZ_TOKEN", "fuzz-secret", 1);
    fz_tz();
    return 0;
}

static void write_input(const uint8_t *data, size_t size)
{
    FUZZ_CHECK(ftruncate(fd, 0) == 0);
    FUZZ_CHECK(lseek(fd, 0, SEEK_SET) == 0);
    for (size_t off = 0; off < size;) {
        ssize_t n = write(fd, data + off, size - off);
        if (n < 0 && errno == EINTR)
            continue;
        FUZZ_CHECK(n > 0);
        off += (size_t)n;
    }
}

static void check_args(const struct script_args *a)
{
    FUZZ_CHECK(a->argc >= a->nkeys && a->argc <= SCRIPT_ARGS_MAX);
    FUZZ_CHECK(a->used <= sizeof a->buf);
    for (int k = 0; k < a->argc; k++) {
        volatile unsigned char sum = 0;
        for (size_t i = 0; i < a->argvlen[k]; i++)
            sum ^= (unsigned char)a->argv[k][i];
        (void)sum;
    }
}

/* What the daemon does with a config it accepted: look things up, build
 * every kind of script call. */
static void use_config(const struct config *cfg)
{
    static const char user[] = "0123456789abcdef0123456789abcdef";
    static const char message[] = "fedcba9876543210";
    char err[256];
    struct script_args a;

    FUZZ_CHECK(cfg->refs == 1 && cfg->path && strcmp(cfg->path, path) == 0);
    FUZZ_CHECK(cfg->n_channels > 0 && cfg->n_categories > 0);
    FUZZ_CHECK(cfg->default_category && config_category(cfg, cfg->default_category));
    FUZZ_CHECK(cfg->redis.bucket_bits >= 12 && cfg->redis.bucket_bits <= 24);
    FUZZ_CHECK(cfg->quiet_hours.default_tz && cfg->quiet_hours.zoneinfo_dir);
    FUZZ_CHECK(cfg->listen && cfg->listen_host);
    for (size_t i = 0; i < cfg->n_channels; i++)
        FUZZ_CHECK(config_channel(cfg, cfg->channels[i].name) == &cfg->channels[i]);
    for (size_t i = 0; i < cfg->n_categories; i++)
        FUZZ_CHECK(config_category(cfg, cfg->categories[i].name) == &cfg->categories[i]);
    for (size_t k = 0; k < cfg->n_caps; k++) {
        const struct cfg_cap *cap = &cfg->caps[k];
        FUZZ_CHECK(cap->name && strlen(cap->name) >= 1 && strlen(cap->name) <= CAP_NAME_MAX);
        FUZZ_CHECK(!cap->channel || config_channel(cfg, cap->channel));
        FUZZ_CHECK(!cap->category || config_category(cfg, cap->category));
        FUZZ_CHECK(cap->limit >= 1 && cap->limit <= CAP_LIMIT_MAX && cap->window_ms > 0);
        FUZZ_CHECK(strcmp(decision_rule_name(cfg, (int)k), cap->name) == 0);
    }
    for (size_t i = 0; i < cfg->quiet_hours.n_channels; i++)
        FUZZ_CHECK(config_channel(cfg, cfg->quiet_hours.channels[i]));
    for (size_t i = 0; i < cfg->n_routes; i++)
        FUZZ_CHECK(config_channel(cfg, cfg->routes[i].channel));
    FUZZ_CHECK(config_retention_ms(cfg) > 0);
    (void)decision_check_config(cfg, err, sizeof err);

    const struct tz_zone *utc = tz_db_find(fz_tz(), "UTC");
    struct enqueue q = { .blob = "{}", .blob_len = 2, .priority = 9, .collapse = "c" };
    for (size_t i = 0; i < cfg->n_channels && i < 8; i++)
        for (size_t j = 0; j < cfg->n_categories && j < 8; j++) {
            struct decide_input in;
            memset(&in, 0, sizeof in);
            memcpy(in.user, user, sizeof in.user);
            memcpy(in.message, message, sizeof in.message);
            in.channel = &cfg->channels[i];
            in.category = &cfg->categories[j];
            in.campaign = (i + j) % 2 ? "spring" : NULL;
            in.zone = utc;
            in.enqueue = j % 2 ? &q : NULL;
            decision_decide_args(cfg, &in, 1700000000, &a);
            check_args(&a);
        }
    decision_release_args(cfg, user, message, &a);
    check_args(&a);
    decision_consent_args(cfg, user, cfg->channels[0].name, "*", true, "api", NULL, &a);
    check_args(&a);
    decision_erase_args(cfg, user, &a);
    check_args(&a);
    decision_claim_args(cfg, 0xab, 10, &a);
    check_args(&a);

    /* A request holds it across a reload. */
    config_retain(cfg);
    config_release(cfg);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[CONFIG_ERR_LEN];

    if (size > INPUT_MAX)
        return 0;
    write_input(data, size);
    memset(err, 'x', sizeof err);
    struct config *cfg = config_load(path, err, sizeof err);
    if (!cfg) {
        size_t n = strnlen(err, sizeof err);
        FUZZ_CHECK(n > 0 && n < sizeof err);
        FUZZ_CHECK(strncmp(err, path, strlen(path)) == 0);   /* names the file */
        return 0;
    }
    use_config(cfg);
    config_release(cfg);
    return 0;
}

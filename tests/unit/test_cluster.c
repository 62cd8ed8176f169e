/*
 * test_cluster: the pure parts of the Redis Cluster client (src/cluster.c)
 * -- CRC16, key -> slot with hash tags, CLUSTER SLOTS parsing, MOVED / ASK
 * parsing -- and the redis.cluster / user / password config keys.
 */
#include <hiredis/hiredis.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "capgate/cluster.h"
#include "capgate/config.h"
#include "unit.h"

static unsigned slot_of(const char *key)
{
    return cluster_key_slot(key, strlen(key));
}

TEST(crc16_test_vectors)
{
    CHECK_EQ_INT(cluster_crc16("123456789", 9), 0x31C3);   /* the spec's check value */
    CHECK_EQ_INT(cluster_crc16("", 0), 0);
    CHECK_EQ_INT(cluster_crc16("A", 1), 0x58E5);           /* XMODEM of "A" */
}

TEST(key_slots_as_redis_computes_them)
{
    /* Values from CLUSTER KEYSLOT. */
    CHECK_EQ_INT(slot_of("foo"), 12182);
    CHECK_EQ_INT(slot_of("bar"), 5061);
    CHECK_EQ_INT(slot_of("hello"), 866);
    CHECK_EQ_INT(slot_of("somekey"), 11058);
    CHECK(slot_of("123456789") == (0x31C3 & 16383));
}

TEST(hash_tags_follow_the_spec)
{
    /* Only the tag counts. */
    CHECK_EQ_INT(slot_of("{user1000}.following"), slot_of("user1000"));
    CHECK_EQ_INT(slot_of("{user1000}.followers"), slot_of("user1000"));
    CHECK_EQ_INT(slot_of("cg:{ab}:s1"), slot_of("ab"));
    CHECK_EQ_INT(slot_of("cg:{ab}:c:ab0123"), slot_of("cg:{ab}:s1"));
    /* The first '{' and the first '}' after it. */
    CHECK_EQ_INT(slot_of("foo{bar}{zap}"), slot_of("bar"));
    CHECK_EQ_INT(slot_of("foo{{bar}}zap"), slot_of("{bar"));
    CHECK_EQ_INT(slot_of("foo{{bar}}zap"), 4015);
    /* An empty tag, or none closed: the whole key. */
    CHECK_EQ_INT(slot_of("foo{}{bar}"), cluster_crc16("foo{}{bar}", 10) & 16383);
    CHECK_EQ_INT(slot_of("foo{}{bar}"), 8363);
    CHECK_EQ_INT(slot_of("{}"), cluster_crc16("{}", 2) & 16383);
    CHECK_EQ_INT(slot_of("a{b"), cluster_crc16("a{b", 3) & 16383);
    CHECK_EQ_INT(slot_of("a}b{"), cluster_crc16("a}b{", 4) & 16383);
    CHECK_EQ_INT(slot_of("}{x}"), slot_of("x"));
    /* Binary-safe: the length counts, not a NUL. */
    CHECK_EQ_INT(cluster_key_slot("{a\0b}", 5), cluster_crc16("a\0b", 3) & 16383);
    for (int k = 0; k < 1000; k++) {
        char key[32];
        snprintf(key, sizeof key, "k%d", k * 7919);
        CHECK(slot_of(key) < CLUSTER_SLOTS);
    }
}

/* ---- CLUSTER SLOTS replies, built by hand -------------------------------- */

static redisReply *r_int(long long v)
{
    redisReply *r = calloc(1, sizeof *r);
    r->type = REDIS_REPLY_INTEGER;
    r->integer = v;
    return r;
}

static redisReply *r_str(const char *s)
{
    redisReply *r = calloc(1, sizeof *r);
    r->type = REDIS_REPLY_STRING;
    r->str = strdup(s);
    r->len = strlen(s);
    return r;
}

static redisReply *r_nil(void)
{
    redisReply *r = calloc(1, sizeof *r);
    r->type = REDIS_REPLY_NIL;
    return r;
}

static redisReply *r_arr(size_t n, ...)
{
    va_list ap;
    redisReply *r = calloc(1, sizeof *r);
    r->type = REDIS_REPLY_ARRAY;
    r->elements = n;
    r->element = calloc(n ? n : 1, sizeof *r->element);
    va_start(ap, n);
    for (size_t k = 0; k < n; k++)
        r->element[k] = va_arg(ap, redisReply *);
    va_end(ap);
    return r;
}

static redisReply *node(redisReply *ip, int port, const char *id)
{
    return r_arr(3, ip, r_int(port), r_str(id));
}

TEST(cluster_slots_reply_is_parsed)
{
    /* Three masters, each with a replica; the second range's master ip is
     * empty (the answering node), the third written as nil. */
    redisReply *r = r_arr(4,
        r_arr(4, r_int(0), r_int(5460), node(r_str("127.0.0.1"), 7000, "a"),
              node(r_str("127.0.0.1"), 7003, "d")),
        r_arr(4, r_int(5461), r_int(10922), node(r_str(""), 7001, "b"),
              node(r_str("127.0.0.1"), 7004, "e")),
        r_arr(3, r_int(10923), r_int(16383), node(r_nil(), 7002, "c")),
        r_arr(3, r_int(100), r_int(100), node(r_str("::1"), 7005, "f")));
    struct cluster_range out[8];

    CHECK_EQ_INT(cluster_parse_slots(r, NULL, 0), 4);      /* counting only */
    CHECK_EQ_INT(cluster_parse_slots(r, out, 8), 4);
    CHECK_EQ_INT(out[0].start, 0);
    CHECK_EQ_INT(out[0].end, 5460);
    CHECK_EQ_STR(out[0].host, "127.0.0.1");
    CHECK_EQ_INT(out[0].port, 7000);
    CHECK_EQ_INT(out[1].start, 5461);
    CHECK_EQ_STR(out[1].host, "");
    CHECK_EQ_INT(out[1].port, 7001);
    CHECK_EQ_INT(out[2].end, 16383);
    CHECK_EQ_STR(out[2].host, "");
    CHECK_EQ_STR(out[3].host, "::1");
    CHECK_EQ_INT(cluster_parse_slots(r, out, 2), 4);       /* only 2 written */
    freeReplyObject(r);

    /* Unknown endpoint "?": left out. */
    r = r_arr(2, r_arr(3, r_int(0), r_int(10), node(r_str("?"), 7000, "a")),
              r_arr(3, r_int(11), r_int(20), node(r_str("10.0.0.1"), 7001, "b")));
    CHECK_EQ_INT(cluster_parse_slots(r, out, 8), 1);
    CHECK_EQ_STR(out[0].host, "10.0.0.1");
    freeReplyObject(r);

    /* An empty map (a cluster not set up yet). */
    r = r_arr(0);
    CHECK_EQ_INT(cluster_parse_slots(r, out, 8), 0);
    freeReplyObject(r);
}

TEST(malformed_cluster_slots_replies_are_refused)
{
    struct cluster_range out[4];
    redisReply *bad[] = {
        r_int(5),
        r_str("ERR This instance has cluster support disabled"),
        r_arr(1, r_int(1)),
        r_arr(1, r_arr(2, r_int(0), r_int(5))),                                  /* no master */
        r_arr(1, r_arr(3, r_int(5), r_int(4), node(r_str("h"), 1, "x"))),        /* end < start */
        r_arr(1, r_arr(3, r_int(0), r_int(16384), node(r_str("h"), 1, "x"))),    /* past 16383 */
        r_arr(1, r_arr(3, r_int(-1), r_int(3), node(r_str("h"), 1, "x"))),
        r_arr(1, r_arr(3, r_int(0), r_int(3), node(r_str("h"), 0, "x"))),        /* port 0 */
        r_arr(1, r_arr(3, r_int(0), r_int(3), node(r_str("h"), 70000, "x"))),
        r_arr(1, r_arr(3, r_int(0), r_int(3), r_arr(1, r_str("h")))),           /* no port */
        r_arr(1, r_arr(3, r_str("0"), r_int(3), node(r_str("h"), 1, "x"))),
        r_arr(1, r_arr(3, r_int(0), r_int(3), node(r_int(7), 1, "x"))),          /* ip not a string */
        r_arr(1, r_arr(3, r_int(0), r_int(3),
                       node(r_str("0123456789012345678901234567890123456789012345678901234567890123456789"),
                            1, "x"))),                                            /* too long */
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        if (cluster_parse_slots(bad[k], out, 4) != -1)
            printf("    bad reply %zu accepted\n", k);
        CHECK_EQ_INT(cluster_parse_slots(bad[k], out, 4), -1);
        freeReplyObject(bad[k]);
    }
    CHECK_EQ_INT(cluster_parse_slots(NULL, out, 4), -1);
}

/* ---- MOVED / ASK ---------------------------------------------------------- */

static int redirect(const char *err, bool *ask, unsigned *slot, char *host, int *port)
{
    return cluster_parse_redirect(err, strlen(err), ask, slot, host, port);
}

TEST(redirects_are_parsed)
{
    char host[CLUSTER_HOST_MAX];
    unsigned slot = 0;
    bool ask = true;
    int port = 0;

    CHECK_EQ_INT(redirect("MOVED 3999 127.0.0.1:6381", &ask, &slot, host, &port), 0);
    CHECK(!ask);
    CHECK_EQ_INT(slot, 3999);
    CHECK_EQ_STR(host, "127.0.0.1");
    CHECK_EQ_INT(port, 6381);
    CHECK_EQ_INT(redirect("ASK 16383 10.1.2.3:7002", &ask, &slot, host, &port), 0);
    CHECK(ask);
    CHECK_EQ_INT(slot, 16383);
    CHECK_EQ_STR(host, "10.1.2.3");
    CHECK_EQ_INT(port, 7002);
    /* Empty host: the node that answered (Redis 7 may write it so). */
    CHECK_EQ_INT(redirect("MOVED 0 :7000", &ask, &slot, host, &port), 0);
    CHECK_EQ_STR(host, "");
    CHECK_EQ_INT(port, 7000);
    /* IPv6, bare (as Redis writes it) or bracketed. */
    CHECK_EQ_INT(redirect("MOVED 12 ::1:7001", &ask, &slot, host, &port), 0);
    CHECK_EQ_STR(host, "::1");
    CHECK_EQ_INT(port, 7001);
    CHECK_EQ_INT(redirect("ASK 12 [fe80::1]:7001", &ask, &slot, host, &port), 0);
    CHECK_EQ_STR(host, "fe80::1");

    static const char *const bad[] = {
        "NOSCRIPT No matching script", "MOVED", "MOVED 16384 127.0.0.1:1", "MOVED x 127.0.0.1:1",
        "MOVED 1 127.0.0.1", "MOVED 1 127.0.0.1:", "MOVED 1 127.0.0.1:0", "MOVED 1 127.0.0.1:65536",
        "MOVED 1 127.0.0.1:7x", "MOVED 1", "ASK 1 ", "moved 1 127.0.0.1:1", "MOVED  1 h:1",
        "TRYAGAIN Multiple keys request during rehashing of slot", "CLUSTERDOWN The cluster is down",
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        if (redirect(bad[k], &ask, &slot, host, &port) != -1)
            printf("    accepted: %s\n", bad[k]);
        CHECK_EQ_INT(redirect(bad[k], &ask, &slot, host, &port), -1);
    }
}

/* ---- config ---------------------------------------------------------------- */

#define MIN_YAML \
    "privacy:\n" \
    "  key_file: /k\n" \
    "channels:\n" \
    "  email: {}\n" \
    "categories:\n" \
    "  marketing: {}\n"      /* 6 lines: a tail starts on line 7 */

static struct config *load(const char *yaml, char *err, size_t errlen)
{
    char path[] = "/tmp/capgate-cluster-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0)
        return NULL;
    FILE *f = fdopen(fd, "w");
    fputs(yaml, f);
    fclose(f);
    struct config *cfg = config_load(path, err, errlen);
    /* Errors name the file: make them comparable. */
    char *at = strstr(err, path), tmp[CONFIG_ERR_LEN];
    if (at) {
        snprintf(tmp, sizeof tmp, "F%s", at + strlen(path));
        snprintf(err, errlen, "%s", tmp);
    }
    unlink(path);
    return cfg;
}

TEST(config_cluster_seeds)
{
    char err[CONFIG_ERR_LEN] = "";
    struct config *cfg = load(MIN_YAML
                              "redis:\n"
                              "  cluster: [\"127.0.0.1:7000\", \"localhost:7001\", \"[::1]:7002\"]\n"
                              "  user: capgate\n"
                              "  password: s3cret\n",
                              err, sizeof err);
    CHECK(cfg != NULL);
    if (!cfg) {
        printf("    %s\n", err);
        return;
    }
    CHECK_EQ_INT(cfg->redis.n_cluster, 3);
    CHECK_EQ_STR(cfg->redis.cluster[0].host, "127.0.0.1");
    CHECK_EQ_INT(cfg->redis.cluster[0].port, 7000);
    CHECK_EQ_STR(cfg->redis.cluster[1].host, "localhost");
    CHECK_EQ_INT(cfg->redis.cluster[1].port, 7001);
    CHECK_EQ_STR(cfg->redis.cluster[2].host, "::1");
    CHECK_EQ_INT(cfg->redis.cluster[2].port, 7002);
    CHECK_EQ_STR(cfg->redis.user, "capgate");
    CHECK_EQ_STR(cfg->redis.password, "s3cret");
    /* The display form: seeds, never the password. */
    CHECK_EQ_STR(cfg->redis.url,
                 "redis-cluster://127.0.0.1:7000,localhost:7001,[::1]:7002");
    CHECK_EQ_INT(cfg->redis.db, 0);
    CHECK_EQ_INT(cfg->redis.timeout_ms, 250);
    config_free(cfg);

    /* Without redis.cluster nothing changes: the default url. */
    cfg = load(MIN_YAML, err, sizeof err);
    CHECK(cfg != NULL);
    if (cfg) {
        CHECK_EQ_INT(cfg->redis.n_cluster, 0);
        CHECK(cfg->redis.cluster == NULL);
        CHECK_EQ_STR(cfg->redis.url, "redis://127.0.0.1:6379/0");
        CHECK_EQ_STR(cfg->redis.host, "127.0.0.1");
        config_free(cfg);
    }
}

static void fails(const char *tail, const char *want)
{
    char yaml[1024], err[CONFIG_ERR_LEN] = "";
    snprintf(yaml, sizeof yaml, "%s%s", MIN_YAML, tail);
    struct config *cfg = load(yaml, err, sizeof err);
    CHECK(cfg == NULL);
    if (cfg)
        config_free(cfg);
    if (strcmp(err, want) != 0)
        printf("    want: %s\n    got:  %s\n", want, err);
    CHECK_EQ_STR(err, want);
}

TEST(config_cluster_errors)
{
    /* url and cluster exclude each other, whatever their order. */
    fails("redis:\n  cluster: [\"127.0.0.1:7000\"]\n  url: redis://127.0.0.1:6379\n",
          "F:9: redis.url: cannot be used with redis.cluster (give one of them)");
    fails("redis:\n  url: redis://127.0.0.1:6379\n  cluster:\n    - 127.0.0.1:7000\n",
          "F:8: redis.url: cannot be used with redis.cluster (give one of them)");
    fails("redis:\n  cluster: []\n", "F:8: redis.cluster: at least one seed node is required");
    fails("redis:\n  cluster: 127.0.0.1:7000\n",
          "F:8: redis.cluster: expected a list of host:port seed nodes, got a scalar");
    fails("redis:\n  cluster: [127.0.0.1]\n",
          "F:8: redis.cluster[0]: bad seed \"127.0.0.1\" (want host:port, port 1..65535)");
    fails("redis:\n  cluster:\n    - 127.0.0.1:7000\n    - 127.0.0.1:0\n",
          "F:10: redis.cluster[1]: bad seed \"127.0.0.1:0\" (want host:port, port 1..65535)");
    fails("redis:\n  cluster: [\"::1:7000\"]\n",
          "F:8: redis.cluster[0]: bad seed \"::1:7000\" (IPv6 addresses need brackets: [::1]:7000)");
    fails("redis:\n  cluster: [\"[zz]:7000\"]\n",
          "F:8: redis.cluster[0]: bad IPv6 address in \"[zz]:7000\"");
    fails("redis:\n  cluster: [\"a b:7000\"]\n",
          "F:8: redis.cluster[0]: bad seed \"a b:7000\" (host: a name, an IPv4 address or [IPv6])");
    fails("redis:\n  cluster: [\"h:7000\", \"h:7000\"]\n",
          "F:8: redis.cluster[1]: duplicate seed \"h:7000\"");
    fails("redis:\n  cluster: [[1]]\n",
          "F:8: redis.cluster[0]: expected host:port, got a list");
    /* Credentials: for the cluster only; a user needs a password. */
    fails("redis:\n  password: x\n",
          "F:8: redis.password: only with redis.cluster (with redis.url, write "
          "redis://:password@host)");
    fails("redis:\n  url: redis://h\n  user: u\n",
          "F:9: redis.user: only with redis.cluster (with redis.url, write "
          "redis://user:password@host)");
    fails("redis:\n  cluster: [\"h:1\"]\n  user: u\n",
          "F:7: redis.password: redis.user needs a password");
    fails("redis:\n  cluster: [\"h:1\"]\n  password: \"\"\n",
          "F:9: redis.password: must not be empty");
}

int main(void)
{
    RUN(crc16_test_vectors);
    RUN(key_slots_as_redis_computes_them);
    RUN(hash_tags_follow_the_spec);
    RUN(cluster_slots_reply_is_parsed);
    RUN(malformed_cluster_slots_replies_are_refused);
    RUN(redirects_are_parsed);
    RUN(config_cluster_seeds);
    RUN(config_cluster_errors);
    return unit_done("test_cluster");
}

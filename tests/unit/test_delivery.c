/* Unit tests: the message blob (src/delivery.c) -- what a queued message is
 * in Redis, in each version capgate has written. */
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "capgate/delivery.h"
#include "capgate/pseudonym.h"
#include "unit.h"

static struct pseudonym *key(void)
{
    char path[] = "/tmp/capgate-key-XXXXXX", err[256];
    int fd = mkstemp(path);
    if (fd < 0 || write(fd, "0123456789abcdef0123456789abcdef", 32) != 32)
        return NULL;
    close(fd);
    struct pseudonym *p = pseudonym_load(path, err, sizeof err);
    unlink(path);
    return p;
}

static const char body[] = "{\"to\":\"a@example.com\",\"x\":\"\\u00e9\"}\0tail";

static struct message sample(void)
{
    return (struct message){
        .user = "0123456789abcdef", .message = "fedcba9876543210",
        .message_id = "m-\"1\"\\\n\xc3\xa9", .channel = "email", .category = "marketing",
        .campaign = "spring \"24\"", .tz = "Europe/Paris", .method = "POST",
        .body = (char *)body, .body_len = sizeof body - 1,
    };
}

static void check_same(const struct message *a, const struct message *b)
{
    CHECK(a->route == b->route);
    CHECK_EQ_STR(a->user, b->user);
    CHECK_EQ_STR(a->message, b->message);
    CHECK_EQ_STR(a->message_id, b->message_id);
    CHECK_EQ_STR(a->channel, b->channel);
    CHECK_EQ_STR(a->category, b->category);
    CHECK(!a->campaign == !b->campaign && (!a->campaign || !strcmp(a->campaign, b->campaign)));
    CHECK(!a->tz == !b->tz && (!a->tz || !strcmp(a->tz, b->tz)));
    CHECK_EQ_STR(a->method, b->method);
    CHECK_EQ_INT(a->body_len, b->body_len);
    CHECK(memcmp(a->body, b->body, a->body_len) == 0);
}

TEST(a_blob_is_binary_sealed_and_reads_back)
{
    struct pseudonym *p = key();
    CHECK(p != NULL);
    struct message m = sample(), back;
    size_t len;
    char *blob = delivery_blob(&m, p, &len);
    CHECK(blob != NULL && blob[0] == 3);
    /* Nothing readable: not the id, not the address, not the campaign. */
    CHECK(memmem(blob, len, "a@example.com", 13) == NULL);
    CHECK(memmem(blob, len, "spring", 6) == NULL);
    CHECK(delivery_parse(blob, len, &back, p) == 0);
    check_same(&m, &back);
    delivery_clear(&back);
    /* Tampered with, or cut short: refused. */
    blob[len / 2] ^= 1;
    CHECK(delivery_parse(blob, len, &back, p) != 0);
    blob[len / 2] ^= 1;
    CHECK(delivery_parse(blob, len - 1, &back, p) != 0);
    CHECK(delivery_parse(blob, 1, &back, p) != 0);
    CHECK(delivery_parse(blob, 0, &back, p) != 0);
    free(blob);

    /* Without campaign and tz, and a route with its headers. */
    m.campaign = m.tz = NULL;
    m.route = true;
    m.method = "PUT";
    m.query = "a=1&b=%22";
    m.headers = json_pack("[[s, s], [s, s]]", "Content-Type", "application/json", "X-Trace",
                          "t\"1");
    blob = delivery_blob(&m, p, &len);
    CHECK(blob != NULL && delivery_parse(blob, len, &back, p) == 0);
    check_same(&m, &back);
    CHECK_EQ_STR(back.query, "a=1&b=%22");
    CHECK(json_equal(back.headers, m.headers));
    delivery_clear(&back);
    free(blob);
    json_decref(m.headers);
    pseudonym_free(p);
}

/* A queue written by the capgate before version 3 still drains after the
 * upgrade: its version 2 blob (the same box in base64) reads the same. */
TEST(a_version_2_blob_still_reads)
{
    struct pseudonym *p = key();
    struct message m = sample(), back;
    const char *meta = "{\"v\":2,\"route\":false,\"u\":\"0123456789abcdef\",\"m\":\"fedcba9876543210\","
                       "\"mid\":\"m-\\\"1\\\"\\\\\\n\xc3\xa9\",\"ch\":\"email\",\"cat\":\"marketing\","
                       "\"camp\":\"spring \\\"24\\\"\",\"tz\":\"Europe/Paris\"}";
    size_t mlen = strlen(meta);
    char *plain = malloc(mlen + 1 + m.body_len);
    memcpy(plain, meta, mlen + 1);
    memcpy(plain + mlen + 1, m.body, m.body_len);
    char *v2 = pseudonym_seal(p, plain, mlen + 1 + m.body_len);
    CHECK(v2 != NULL);
    CHECK(delivery_parse(v2, strlen(v2), &back, p) == 0);
    check_same(&m, &back);
    delivery_clear(&back);
    /* And version 3 is smaller: no base64. */
    size_t len;
    char *v3 = delivery_blob(&m, p, &len);
    CHECK(v3 != NULL && len < strlen(v2));
    free(v3);
    free(v2);
    free(plain);
    pseudonym_free(p);
}

/* The answer a route keeps for replays: status, the wanted headers, the
 * body -- sealed as bytes now, and the older base64 form still read. */
TEST(a_kept_answer_reads_back_in_either_form)
{
    struct pseudonym *p = key();
    const char *const headers[] = { "Content-Type: application/json", "X-Message-Id: m\"1",
                                    "Set-Cookie: no", "Date: today" };
    static const char answer_body[] = "{\"ok\":true}\0bin";
    struct upstream_response r = { .status = UPSTREAM_OK, .http_status = 202,
                                   .body = answer_body, .body_len = sizeof answer_body - 1,
                                   .headers = headers, .n_headers = 4 };
    char *keep[] = { "X-Message-Id" };
    size_t len;
    char *sealed = delivery_answer_seal(&r, keep, 1, p, &len);
    CHECK(sealed != NULL && sealed[0] == 3 && memmem(sealed, len, "ok", 2) == NULL);
    struct kept_answer a;
    CHECK(delivery_answer_open(sealed, len, p, &a) == 0);
    CHECK_EQ_INT(a.status, 202);
    CHECK_EQ_INT(json_array_size(a.headers), 2);
    CHECK_EQ_STR(json_string_value(json_array_get(json_array_get(a.headers, 1), 1)), "m\"1");
    CHECK_EQ_INT(a.body_len, sizeof answer_body - 1);
    CHECK(memcmp(a.body, answer_body, a.body_len) == 0);
    delivery_answer_clear(&a);
    sealed[len - 1] ^= 1;
    CHECK(delivery_answer_open(sealed, len, p, &a) != 0);
    free(sealed);

    const char *v2 = "{\"s\":201,\"h\":[[\"Content-Type\",\"text/plain\"]],\"b\":\"aGk=\"}";
    char *old = pseudonym_seal(p, v2, strlen(v2));
    CHECK(delivery_answer_open(old, strlen(old), p, &a) == 0);
    CHECK_EQ_INT(a.status, 201);
    CHECK_EQ_STR(a.body, "hi");
    delivery_answer_clear(&a);
    free(old);
    pseudonym_free(p);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    RUN(a_blob_is_binary_sealed_and_reads_back);
    RUN(a_version_2_blob_still_reads);
    RUN(a_kept_answer_reads_back_in_either_form);
    return unit_done("test_delivery");
}

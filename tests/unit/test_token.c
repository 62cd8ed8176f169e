/* Unit tests: unsubscribe / preference tokens (src/token.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "capgate/token.h"
#include "unit.h"

static struct pseudonym *key(const char *bytes)
{
    char path[64], err[256];
    snprintf(path, sizeof path, "/tmp/capgate-key-XXXXXX");
    int fd = mkstemp(path);
    if (fd < 0 || write(fd, bytes, 32) != 32)
        return NULL;
    close(fd);
    struct pseudonym *p = pseudonym_load(path, err, sizeof err);
    unlink(path);
    return p;
}

static const char *const USER = "0123456789abcdef0123456789abcdef";

static struct token scope(const char *channel, const char *category, int64_t expires)
{
    struct token t = { .expires_s = expires };
    snprintf(t.user, sizeof t.user, "%s", USER);
    snprintf(t.channel, sizeof t.channel, "%s", channel);
    snprintf(t.category, sizeof t.category, "%s", category);
    return t;
}

TEST(round_trip_and_expiry)
{
    struct pseudonym *p = key("0123456789abcdef0123456789abcdef");
    char tok[TOKEN_CHARS_MAX + 1], tok2[TOKEN_CHARS_MAX + 1];
    struct token t = scope("email", "marketing", 2000000000), r;
    CHECK(p != NULL);
    CHECK(token_make(p, &t, tok) == 0);
    CHECK(strspn(tok, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") ==
          strlen(tok));
    CHECK(strlen(tok) < 120);                    /* fits in a List-Unsubscribe header */
    CHECK(strstr(tok, "email") == NULL);         /* sealed, not just signed */
    CHECK_EQ_INT(token_read(p, tok, strlen(tok), 1999999999, &r), TOKEN_OK);
    CHECK_EQ_STR(r.user, USER);
    CHECK_EQ_STR(r.channel, "email");
    CHECK_EQ_STR(r.category, "marketing");
    CHECK(r.expires_s == 2000000000 && !r.previous_key);
    /* Expired: genuine, read, but refused. */
    CHECK_EQ_INT(token_read(p, tok, strlen(tok), 2000000000, &r), TOKEN_EXPIRED);
    CHECK_EQ_STR(r.channel, "email");
    /* Two tokens of the same scope differ (a fresh nonce): not linkable. */
    CHECK(token_make(p, &t, tok2) == 0);
    CHECK(strcmp(tok, tok2) != 0);
    /* Every channel, every category. */
    t = scope("", "", 2000000000);
    CHECK(token_make(p, &t, tok) == 0);
    CHECK_EQ_INT(token_read(p, tok, strlen(tok), 0, &r), TOKEN_OK);
    CHECK(r.channel[0] == '\0' && r.category[0] == '\0');
    pseudonym_free(p);
}

TEST(altered_truncated_forged_tokens_are_invalid)
{
    struct pseudonym *p = key("0123456789abcdef0123456789abcdef");
    struct pseudonym *other = key("1123456789abcdef0123456789abcdef");
    char tok[TOKEN_CHARS_MAX + 1];
    struct token t = scope("sms", "", 2000000000), r;
    CHECK(p && other && token_make(p, &t, tok) == 0);
    size_t n = strlen(tok);
    for (size_t k = 0; k < n; k++) {              /* every character changed */
        char bad[TOKEN_CHARS_MAX + 1];
        memcpy(bad, tok, n + 1);
        bad[k] = bad[k] == 'A' ? 'B' : 'A';
        CHECK_EQ_INT(token_read(p, bad, n, 0, &r), TOKEN_INVALID);
    }
    for (size_t k = 0; k < n; k++)                /* every truncation */
        CHECK_EQ_INT(token_read(p, tok, k, 0, &r), TOKEN_INVALID);
    CHECK_EQ_INT(token_read(other, tok, n, 0, &r), TOKEN_INVALID);   /* another key's */
    CHECK_EQ_INT(token_read(p, "not a token", 11, 0, &r), TOKEN_INVALID);
    CHECK_EQ_INT(token_read(p, "", 0, 0, &r), TOKEN_INVALID);
    char longer[400];
    memset(longer, 'A', sizeof longer);
    CHECK_EQ_INT(token_read(p, longer, sizeof longer, 0, &r), TOKEN_INVALID);
    /* Too long a name, or no pseudonym: nothing made. */
    t = scope("a-name-longer-than-thirty-two-chars", "", 1);
    CHECK(strlen(t.channel) <= CONFIG_NAME_MAX);    /* snprintf cut it: still fine */
    t = scope("email", "", 1);
    t.user[0] = 'x';
    CHECK(token_make(p, &t, tok) != 0);
    pseudonym_free(p);
    pseudonym_free(other);
}

TEST(fingerprint_is_short_and_stable)
{
    char a[17], b[17];
    token_fingerprint("abc", 3, a);
    token_fingerprint("abc", 3, b);
    CHECK_EQ_STR(a, b);
    CHECK_EQ_INT(strlen(a), 16);
    token_fingerprint("abd", 3, b);
    CHECK(strcmp(a, b) != 0);
}

int main(void)
{
    RUN(round_trip_and_expiry);
    RUN(altered_truncated_forged_tokens_are_invalid);
    RUN(fingerprint_is_short_and_stable);
    return unit_done("test_token");
}

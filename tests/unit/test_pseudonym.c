/* Unit tests: keyed hashing of ids (src/pseudonym.c). */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "capgate/pseudonym.h"
#include "unit.h"

static char *write_key(const char *bytes, size_t n)
{
    static char path[64];
    snprintf(path, sizeof path, "/tmp/capgate-key-XXXXXX");
    int fd = mkstemp(path);
    if (fd < 0)
        return NULL;
    if (write(fd, bytes, n) != (ssize_t)n) { close(fd); return NULL; }
    close(fd);
    return path;
}

TEST(short_missing_key_files_are_refused)
{
    char err[256];
    char *p = write_key("0123456789abcdef0123456789abcde", 31);
    CHECK(pseudonym_load(p, err, sizeof err) == NULL);
    CHECK(strstr(err, "key_file") != NULL);
    CHECK(strstr(err, "31 bytes") != NULL);
    unlink(p);
    CHECK(pseudonym_load("/nonexistent/capgate.key", err, sizeof err) == NULL);
    CHECK(strstr(err, "No such file") != NULL);
}

TEST(hash_is_stable_keyed_and_hex)
{
    char err[256], a[PSEUDONYM_USER_HEX + 1], b[PSEUDONYM_USER_HEX + 1];
    char *p = write_key("0123456789abcdef0123456789abcdef", 32);
    struct pseudonym *k1 = pseudonym_load(p, err, sizeof err);
    CHECK(k1 != NULL);
    unlink(p);
    p = write_key("1123456789abcdef0123456789abcdef", 32);
    struct pseudonym *k2 = pseudonym_load(p, err, sizeof err);
    unlink(p);
    if (!k1 || !k2)
        return;
    pseudonym_user(k1, "alice@example.com", 17, a);
    pseudonym_user(k1, "alice@example.com", 17, b);
    CHECK_EQ_STR(a, b);
    CHECK_EQ_INT(strlen(a), PSEUDONYM_USER_HEX);
    CHECK(strspn(a, "0123456789abcdef") == PSEUDONYM_USER_HEX);
    pseudonym_user(k2, "alice@example.com", 17, b);
    CHECK(strcmp(a, b) != 0);                     /* another key, another pseudonym */
    pseudonym_user(k1, "bob@example.com", 15, b);
    CHECK(strcmp(a, b) != 0);

    char m[PSEUDONYM_SHORT_HEX + 1];
    pseudonym_message(k1, "alice@example.com", 17, m);
    CHECK_EQ_INT(strlen(m), PSEUDONYM_SHORT_HEX);
    CHECK(strncmp(m, a, PSEUDONYM_SHORT_HEX) != 0); /* domain-separated */
    pseudonym_free(k1);
    pseudonym_free(k2);
}

/* A rotation: the previous key gives the old pseudonyms, and what it
 * sealed still opens; the same key as previous is refused. */
TEST(previous_key_during_a_rotation)
{
    char err[256], a[PSEUDONYM_USER_HEX + 1], b[PSEUDONYM_USER_HEX + 1];
    char *p = write_key("0123456789abcdef0123456789abcdef", 32);
    struct pseudonym *old = pseudonym_load(p, err, sizeof err);
    struct pseudonym *cur = pseudonym_load(p, err, sizeof err);
    CHECK(old && cur);
    if (!old || !cur)
        return;
    CHECK(pseudonym_load_previous(cur, p, err, sizeof err) == -1);   /* the same key */
    CHECK(strstr(err, "same key") != NULL);
    unlink(p);
    pseudonym_free(cur);
    p = write_key("2123456789abcdef0123456789abcdef", 32);
    cur = pseudonym_load(p, err, sizeof err);
    char *q = write_key("0123456789abcdef0123456789abcdef", 32);
    CHECK(cur && !pseudonym_rotating(cur) && !pseudonym_user_previous(cur, "x", 1, a));
    CHECK(pseudonym_load_previous(cur, q, err, sizeof err) == 0);
    unlink(p);
    unlink(q);
    CHECK(pseudonym_rotating(cur));
    CHECK(pseudonym_user_previous(cur, "alice@example.com", 17, a));
    pseudonym_user(old, "alice@example.com", 17, b);
    CHECK_EQ_STR(a, b);
    pseudonym_user(cur, "alice@example.com", 17, b);
    CHECK(strcmp(a, b) != 0);
    char *sealed = pseudonym_seal(old, "hello", 5);
    size_t n = 0;
    char *plain = sealed ? pseudonym_open(cur, sealed, strlen(sealed), &n) : NULL;
    CHECK(plain && n == 5 && memcmp(plain, "hello", 5) == 0);
    free(plain);
    free(sealed);
    CHECK(!pseudonym_same_key(cur, old));
    pseudonym_free(old);
    pseudonym_free(cur);
}

int main(void)
{
    RUN(short_missing_key_files_are_refused);
    RUN(hash_is_stable_keyed_and_hex);
    RUN(previous_key_during_a_rotation);
    return unit_done("test_pseudonym");
}

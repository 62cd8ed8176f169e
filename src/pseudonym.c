/* pseudonym: keyed BLAKE2b of user and message ids.  See pseudonym.h. */
#include "capgate/pseudonym.h"

#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct pseudonym {
    unsigned char key[crypto_generichash_KEYBYTES];  /* 32 bytes */
    unsigned char seal_key[crypto_aead_xchacha20poly1305_ietf_KEYBYTES];
    unsigned char token_key[crypto_aead_xchacha20poly1305_ietf_KEYBYTES];
    struct pseudonym *previous;      /* during a key rotation, the key before; else NULL */
};

/* Largest key file we read: a secret, not a document. */
#define KEY_FILE_MAX 4096

/* The key in KEY_FILE; WHAT names the setting in errors. */
static struct pseudonym *load(const char *what, const char *key_file, char *err, size_t errlen)
{
    unsigned char buf[KEY_FILE_MAX];
    size_t len = 0;
    int fd;

    if (sodium_init() < 0) {
        snprintf(err, errlen, "libsodium failed to initialise");
        return NULL;
    }
    fd = open(key_file, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "%s %s: %s", what, key_file, strerror(errno));
        return NULL;
    }
    for (;;) {
        ssize_t n = read(fd, buf + len, sizeof buf - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            snprintf(err, errlen, "%s %s: %s", what, key_file, strerror(errno));
            close(fd);
            sodium_memzero(buf, sizeof buf);
            return NULL;
        }
        if (n == 0 || (len += (size_t)n) == sizeof buf)
            break;
    }
    close(fd);
    if (len < PSEUDONYM_KEY_MIN) {
        snprintf(err, errlen,
                 "%s %s: holds %zu bytes, needs at least %d random bytes "
                 "(create one with: head -c 32 /dev/urandom > %s)",
                 what, key_file, len, PSEUDONYM_KEY_MIN, key_file);
        sodium_memzero(buf, sizeof buf);
        return NULL;
    }
    struct pseudonym *p = calloc(1, sizeof *p);
    if (!p) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    /* Whatever the file's length, derive a fixed 32-byte key from all of it. */
    crypto_generichash(p->key, sizeof p->key, buf, len, NULL, 0);
    /* A separate key for sealing, so the hash key never encrypts anything. */
    crypto_generichash(p->seal_key, sizeof p->seal_key, (const unsigned char *)"capgate seal", 12,
                       p->key, sizeof p->key);
    crypto_generichash(p->token_key, sizeof p->token_key, (const unsigned char *)"capgate token",
                       13, p->key, sizeof p->key);
    sodium_memzero(buf, sizeof buf);
    return p;
}

struct pseudonym *pseudonym_load(const char *key_file, char *err, size_t errlen)
{
    return load("privacy.key_file", key_file, err, errlen);
}

int pseudonym_load_previous(struct pseudonym *p, const char *key_file, char *err, size_t errlen)
{
    struct pseudonym *prev = load("privacy.previous_key_file", key_file, err, errlen);
    if (!prev)
        return -1;
    if (pseudonym_same_key(p, prev)) {
        /* A "rotation" to the same key would move every person onto itself. */
        snprintf(err, errlen, "privacy.previous_key_file %s: holds the same key as "
                              "privacy.key_file", key_file);
        pseudonym_free(prev);
        return -1;
    }
    pseudonym_free(p->previous);
    p->previous = prev;
    return 0;
}

bool pseudonym_rotating(const struct pseudonym *p)
{
    return p->previous != NULL;
}

bool pseudonym_user_previous(const struct pseudonym *p, const char *id, size_t len,
                             char out[PSEUDONYM_USER_HEX + 1])
{
    if (!p->previous)
        return false;
    pseudonym_user(p->previous, id, len, out);
    return true;
}

void pseudonym_free(struct pseudonym *p)
{
    if (!p)
        return;
    pseudonym_free(p->previous);
    sodium_memzero(p, sizeof *p);
    free(p);
}

#define SEAL_NONCE crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
#define SEAL_TAG crypto_aead_xchacha20poly1305_ietf_ABYTES

/* A random nonce from a per-thread pool filled 42 nonces at a time: every
 * /v1/send seals a message, and libsodium's randombytes_buf is one
 * getrandom(2) a call.  A nonce is no secret (it is stored next to its
 * box), so holding the next ones in memory gives nothing away. */
static void fresh_nonce(unsigned char nonce[SEAL_NONCE])
{
    static _Thread_local unsigned char pool[42 * SEAL_NONCE];
    static _Thread_local size_t left;
    if (left < SEAL_NONCE) {
        randombytes_buf(pool, sizeof pool);
        left = sizeof pool;
    }
    memcpy(nonce, pool + sizeof pool - left, SEAL_NONCE);
    left -= SEAL_NONCE;
}

char *pseudonym_seal_bytes(const struct pseudonym *p, const void *prefix, size_t prefix_len,
                           const char *plain, size_t len, size_t *outlen)
{
    size_t n = prefix_len + SEAL_NONCE + len + SEAL_TAG;
    unsigned char *box = malloc(n);
    if (!box)
        return NULL;
    memcpy(box, prefix, prefix_len);
    unsigned char *nonce = box + prefix_len;
    fresh_nonce(nonce);
    crypto_aead_xchacha20poly1305_ietf_encrypt(nonce + SEAL_NONCE, NULL,
                                               (const unsigned char *)plain, len, NULL, 0, NULL,
                                               nonce, p->seal_key);
    *outlen = n;
    return (char *)box;
}

char *pseudonym_seal(const struct pseudonym *p, const char *plain, size_t len)
{
    size_t n;
    unsigned char *box = (unsigned char *)pseudonym_seal_bytes(p, "", 0, plain, len, &n);
    if (!box)
        return NULL;
    size_t b64 = sodium_base64_encoded_len(n, sodium_base64_VARIANT_ORIGINAL);
    char *out = malloc(b64);
    if (out)
        sodium_bin2base64(out, b64, box, n, sodium_base64_VARIANT_ORIGINAL);
    free(box);
    return out;
}

static char *open_one(const struct pseudonym *p, const unsigned char *box, size_t n, size_t *len)
{
    if (n < SEAL_NONCE + SEAL_TAG)
        return NULL;
    char *out = malloc(n + 1);
    unsigned long long plen;
    if (!out || crypto_aead_xchacha20poly1305_ietf_decrypt(
                    (unsigned char *)out, &plen, NULL, box + SEAL_NONCE, n - SEAL_NONCE, NULL, 0,
                    box, p->seal_key) != 0) {
        free(out);
        return NULL;
    }
    out[plen] = '\0';
    *len = (size_t)plen;
    return out;
}

char *pseudonym_open_bytes(const struct pseudonym *p, const void *box, size_t blen, size_t *len)
{
    char *out = open_one(p, box, blen, len);
    /* A message sealed before the rotation still waits in Redis: it opens
     * with the key it was sealed with. */
    if (!out && p->previous)
        out = open_one(p->previous, box, blen, len);
    return out;
}

char *pseudonym_open(const struct pseudonym *p, const char *sealed, size_t slen, size_t *len)
{
    size_t n;
    unsigned char *box = malloc(slen + 1);
    char *out = NULL;
    if (box && sodium_base642bin(box, slen, sealed, slen, NULL, &n, NULL,
                                 sodium_base64_VARIANT_ORIGINAL) == 0)
        out = pseudonym_open_bytes(p, box, n, len);
    free(box);
    return out;
}

#define TOKEN_NONCE crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
#define TOKEN_TAG crypto_aead_xchacha20poly1305_ietf_ABYTES
#define TOKEN_PLAIN_MAX 512

size_t pseudonym_seal_token(const struct pseudonym *p, const void *plain, size_t len, char *out,
                            size_t outlen)
{
    unsigned char box[TOKEN_NONCE + TOKEN_PLAIN_MAX + TOKEN_TAG];
    if (len > TOKEN_PLAIN_MAX)
        return 0;
    size_t n = TOKEN_NONCE + len + TOKEN_TAG;
    if (sodium_base64_encoded_len(n, sodium_base64_VARIANT_URLSAFE_NO_PADDING) > outlen)
        return 0;
    fresh_nonce(box);
    crypto_aead_xchacha20poly1305_ietf_encrypt(box + TOKEN_NONCE, NULL, plain, len, NULL, 0, NULL,
                                               box, p->token_key);
    sodium_bin2base64(out, outlen, box, n, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    return strlen(out);
}

static int open_token(const struct pseudonym *p, const char *token, size_t tlen, void *plain,
                      size_t max)
{
    unsigned char box[TOKEN_NONCE + TOKEN_PLAIN_MAX + TOKEN_TAG];
    size_t n;
    const char *end;
    if (sodium_base642bin(box, sizeof box, token, tlen, NULL, &n, &end,
                          sodium_base64_VARIANT_URLSAFE_NO_PADDING) != 0 ||
        end != token + tlen || n < TOKEN_NONCE + TOKEN_TAG || n - TOKEN_NONCE - TOKEN_TAG > max)
        return -1;
    unsigned long long plen;
    if (crypto_aead_xchacha20poly1305_ietf_decrypt(plain, &plen, NULL, box + TOKEN_NONCE,
                                                   n - TOKEN_NONCE, NULL, 0, box,
                                                   p->token_key) != 0)
        return -1;
    return (int)plen;
}

int pseudonym_open_token(const struct pseudonym *p, const char *token, size_t tlen, void *plain,
                         size_t max, bool *previous)
{
    *previous = false;
    if (tlen > 4 * (sizeof(unsigned char[TOKEN_NONCE + TOKEN_PLAIN_MAX + TOKEN_TAG]) / 3) + 4)
        return -1;
    int n = open_token(p, token, tlen, plain, max);
    /* A link sent before the rotation still works while it lasts. */
    if (n < 0 && p->previous && (n = open_token(p->previous, token, tlen, plain, max)) >= 0)
        *previous = true;
    return n;
}

static bool same_secret(const struct pseudonym *a, const struct pseudonym *b)
{
    return sodium_memcmp(a->key, b->key, sizeof a->key) == 0;
}

bool pseudonym_same_key(const struct pseudonym *a, const struct pseudonym *b)
{
    if (!same_secret(a, b) || !a->previous != !b->previous)
        return false;
    return !a->previous || same_secret(a->previous, b->previous);
}

static void keyed_hex(const struct pseudonym *p, unsigned char domain,
                      const char *id, size_t len, char *out, size_t outbytes)
{
    crypto_generichash_state st;
    unsigned char h[crypto_generichash_BYTES_MIN];   /* 16 */

    /* BLAKE2b's shortest output is 16 bytes; shorter ids are a prefix of it. */
    crypto_generichash_init(&st, p->key, sizeof p->key, sizeof h);
    crypto_generichash_update(&st, &domain, 1);
    crypto_generichash_update(&st, (const unsigned char *)id, len);
    crypto_generichash_final(&st, h, sizeof h);
    sodium_bin2hex(out, outbytes * 2 + 1, h, outbytes);
}

void pseudonym_user(const struct pseudonym *p, const char *id, size_t len,
                    char out[PSEUDONYM_USER_HEX + 1])
{
    keyed_hex(p, 'u', id, len, out, PSEUDONYM_USER_HEX / 2);
}

void pseudonym_message(const struct pseudonym *p, const char *id, size_t len,
                       char out[PSEUDONYM_SHORT_HEX + 1])
{
    keyed_hex(p, 'm', id, len, out, PSEUDONYM_SHORT_HEX / 2);
}

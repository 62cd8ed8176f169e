/*
 * pseudonym: the keyed hash that replaces every user id before it reaches
 * Redis, a log line, a metric or an error message.
 *
 * BLAKE2b keyed with the secret from privacy.key_file (libsodium's
 * crypto_generichash).  Without the key, a pseudonym cannot be linked back
 * to the user id, not even by trying every e-mail address.  This module is
 * the only place that sees raw ids together with the key.
 */
#ifndef CAPGATE_PSEUDONYM_H
#define CAPGATE_PSEUDONYM_H

#include <stdbool.h>
#include <stddef.h>

#define PSEUDONYM_KEY_MIN 32           /* bytes of secret, at least */
#define PSEUDONYM_USER_HEX 32          /* 16-byte hash, hex */
#define PSEUDONYM_SHORT_HEX 16         /* 8-byte hash, hex: message ids */

struct pseudonym;

/* Reads the key file (at start-up; never on the request path).  Returns NULL
 * with a message naming the file when it is missing, unreadable or shorter
 * than PSEUDONYM_KEY_MIN bytes. */
struct pseudonym *pseudonym_load(const char *key_file, char *err, size_t errlen);
void pseudonym_free(struct pseudonym *p);

/* Secrets kept in Redis for a while (a message waiting to be delivered
 * names its recipient): XChaCha20-Poly1305 with a key derived from the key
 * file.  seal returns malloc'ed base64; open takes SLEN bytes of it and
 * returns malloc'ed bytes (NUL-terminated, *LEN set) or NULL when tampered
 * with or not ours (open also tries the previous key, during a rotation). */
char *pseudonym_seal(const struct pseudonym *p, const char *plain, size_t len);
char *pseudonym_open(const struct pseudonym *p, const char *sealed, size_t slen, size_t *len);
/* The same seal as raw bytes, after PREFIX_LEN bytes of PREFIX (a version
 * mark, say): malloc'ed, *OUTLEN its whole length.  Where the store takes
 * bytes, base64 only cost time (a third of a /v1/send's sealing) and room.
 * open_bytes takes such a box without its prefix. */
char *pseudonym_seal_bytes(const struct pseudonym *p, const void *prefix, size_t prefix_len,
                           const char *plain, size_t len, size_t *outlen);
char *pseudonym_open_bytes(const struct pseudonym *p, const void *box, size_t blen, size_t *len);

/* Tokens handed to people (token.h): sealed the same way with a key of their
 * own (so a token never opens as a blob, nor the reverse), as URL-safe
 * base64 without padding.  seal writes at most OUTLEN - 1 characters and a
 * NUL into OUT and returns how many, 0 when they do not fit.  open writes
 * the plain bytes into PLAIN (at most MAX) and returns how many, or -1 when
 * the token was altered, truncated or is not ours; *PREVIOUS says whether
 * the previous key (a rotation) opened it. */
size_t pseudonym_seal_token(const struct pseudonym *p, const void *plain, size_t len, char *out,
                            size_t outlen);
int pseudonym_open_token(const struct pseudonym *p, const char *token, size_t tlen, void *plain,
                         size_t max, bool *previous);

/* A key rotation: the key in KEY_FILE (privacy.previous_key_file) is kept
 * beside P's own, so that what was stored under it can still be found and
 * moved (rotation.h), and what it sealed opened.  0, or -1 with ERR (also
 * when it is P's own key). */
int pseudonym_load_previous(struct pseudonym *p, const char *key_file, char *err, size_t errlen);
bool pseudonym_rotating(const struct pseudonym *p);
/* The pseudonym ID had under the previous key into OUT; false when there is
 * no previous key (OUT untouched). */
bool pseudonym_user_previous(const struct pseudonym *p, const char *id, size_t len,
                             char out[PSEUDONYM_USER_HEX + 1]);

/* True when A and B were loaded from the same secrets (current and previous). */
bool pseudonym_same_key(const struct pseudonym *a, const struct pseudonym *b);

/* User id -> 32 lowercase hex digits + NUL into OUT[PSEUDONYM_USER_HEX + 1]. */
void pseudonym_user(const struct pseudonym *p, const char *id, size_t len,
                    char out[PSEUDONYM_USER_HEX + 1]);

/* Message id (scoped to one user, so 64 bits are plenty) -> 16 hex + NUL.
 * Domain-separated from user ids. */
void pseudonym_message(const struct pseudonym *p, const char *id, size_t len,
                       char out[PSEUDONYM_SHORT_HEX + 1]);

#endif

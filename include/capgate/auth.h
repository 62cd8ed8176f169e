/*
 * auth: bearer tokens and their scopes (auth.tokens in the config).
 *
 * The config holds only SHA-256 hashes of the tokens.  A presented token is
 * hashed and compared with every configured hash in constant time, whether
 * or not an earlier one matched, so timing tells nothing about the tokens.
 */
#ifndef CAPGATE_AUTH_H
#define CAPGATE_AUTH_H

#include <stdbool.h>
#include <stddef.h>

#include "capgate/config.h"

enum auth_result {
    AUTH_OK,            /* scopes filled */
    AUTH_MISSING,       /* no token */
    AUTH_INVALID,       /* a token that matches none */
};

struct auth_outcome {
    unsigned scopes;
    const char *name;   /* the token's name in the config (AUTH_OK) */
    char tag[9];        /* the first 8 hex digits of the presented token's SHA-256,
                           for logs: never the token ("" when none was presented) */
};

/* HEADER: the Authorization header ("Bearer <token>") or NULL. */
enum auth_result auth_check(const struct config *cfg, const char *header,
                            struct auth_outcome *out);
/* TOKEN: the token itself (X-Capgate-Token on a route), or NULL.  Without an
 * auth section every request has every scope. */
enum auth_result auth_check_token(const struct config *cfg, const char *token,
                                  struct auth_outcome *out);

/* SHA-256 of TOKEN as 64 lowercase hex digits + NUL. */
void auth_hash_token(const char *token, size_t len, char out[65]);

/* True for 127.0.0.0/8 and ::1: where capgate may listen without auth. */
bool auth_is_loopback(const char *numeric_host);

#endif

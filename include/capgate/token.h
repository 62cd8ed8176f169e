/*
 * token: the opaque token of an unsubscribe or preference link,
 * <public.base_url>/u/<token>.  It binds a person's pseudonym (never the raw
 * id), a scope (a channel, a category, or every one) and an expiry, sealed
 * with a key of its own derived from privacy.key_file (pseudonym.h): nobody
 * can read it, forge one, or change its scope or expiry.  A token is a
 * bearer secret: it is never logged (token_fingerprint is what a log line
 * may carry).
 */
#ifndef CAPGATE_TOKEN_H
#define CAPGATE_TOKEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "capgate/config.h"
#include "capgate/pseudonym.h"

#define TOKEN_CHARS_MAX 200     /* what a token takes in a URL, at most */
#define UNSUBSCRIBE_URL_MAX (200 + 3 + TOKEN_CHARS_MAX + 1)   /* base_url is at most 200 */

struct token {
    char user[PSEUDONYM_USER_HEX + 1];   /* the pseudonym */
    char channel[CONFIG_NAME_MAX + 1];   /* "": every channel */
    char category[CONFIG_NAME_MAX + 1];  /* "": every category */
    int64_t expires_s;                   /* unix seconds */
    bool previous_key;                   /* read: sealed before a key rotation */
};

/* T into OUT (URL-safe); 0, or -1 when T does not fit (names too long). */
int token_make(const struct pseudonym *p, const struct token *t,
               char out[TOKEN_CHARS_MAX + 1]);

enum token_status { TOKEN_OK, TOKEN_INVALID, TOKEN_EXPIRED };
/* Reads the LEN characters at S, at NOW_S.  INVALID: altered, truncated,
 * forged or not a token; EXPIRED: genuine but past its expiry (OUT is set
 * for both OK and EXPIRED). */
enum token_status token_read(const struct pseudonym *p, const char *s, size_t len,
                             int64_t now_s, struct token *out);

/* A link for USER (pseudonym) and the scope, valid for CFG's token_ttl from
 * NOW_S: "<base_url>/u/<token>" into OUT; 0, or -1. */
int token_link(const struct pseudonym *p, const struct config *cfg, const char *user,
               const char *channel, const char *category, int64_t now_s, char *out,
               size_t outlen);

/* With CFG's public section: ',"unsubscribe_url":"<link>"' for the scope,
 * valid from now, appended to T (an answer being written); else nothing. */
struct textbuf;
void token_link_field(struct textbuf *t, const struct pseudonym *p, const struct config *cfg,
                      const char *user, const char *channel, const char *category);

/* 16 hex digits naming a token in a log line without giving it away. */
void token_fingerprint(const char *s, size_t len, char out[17]);

#endif

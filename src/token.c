/* token: sealed unsubscribe / preference tokens.  See token.h. */
#include "capgate/token.h"

#include "capgate/textbuf.h"

#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/* The sealed bytes: a version, the expiry (u32 BE, seconds: until 2106), the
 * pseudonym's 16 bytes, then the channel and the category, each a length
 * byte and its name ("" for every one).  Small on purpose: the URL is in
 * every message. */
#define TOKEN_VERSION 1
#define PLAIN_MAX (1 + 4 + PSEUDONYM_USER_HEX / 2 + 2 * (1 + CONFIG_NAME_MAX))

int token_make(const struct pseudonym *p, const struct token *t,
               char out[TOKEN_CHARS_MAX + 1])
{
    unsigned char plain[PLAIN_MAX];
    size_t n = 0, cl = strlen(t->channel), gl = strlen(t->category);
    if (cl > CONFIG_NAME_MAX || gl > CONFIG_NAME_MAX || t->expires_s < 0 ||
        t->expires_s > UINT32_MAX)
        return -1;
    plain[n++] = TOKEN_VERSION;
    uint32_t e = (uint32_t)t->expires_s;
    plain[n++] = (unsigned char)(e >> 24);
    plain[n++] = (unsigned char)(e >> 16);
    plain[n++] = (unsigned char)(e >> 8);
    plain[n++] = (unsigned char)e;
    size_t bin;
    if (sodium_hex2bin(plain + n, PSEUDONYM_USER_HEX / 2, t->user, strlen(t->user), NULL, &bin,
                       NULL) != 0 || bin != PSEUDONYM_USER_HEX / 2)
        return -1;
    n += bin;
    plain[n++] = (unsigned char)cl;
    memcpy(plain + n, t->channel, cl);
    n += cl;
    plain[n++] = (unsigned char)gl;
    memcpy(plain + n, t->category, gl);
    n += gl;
    return pseudonym_seal_token(p, plain, n, out, TOKEN_CHARS_MAX + 1) ? 0 : -1;
}

/* A name as config.c allows them ([A-Za-z0-9_.-]): a genuine token only
 * holds such names, so anything else is not one of ours. */
static bool name_ok(const unsigned char *s, size_t n)
{
    for (size_t k = 0; k < n; k++)
        if (!((s[k] >= 'a' && s[k] <= 'z') || (s[k] >= 'A' && s[k] <= 'Z') ||
              (s[k] >= '0' && s[k] <= '9') || s[k] == '_' || s[k] == '.' || s[k] == '-'))
            return false;
    return true;
}

enum token_status token_read(const struct pseudonym *p, const char *s, size_t len,
                             int64_t now_s, struct token *out)
{
    unsigned char plain[PLAIN_MAX];
    memset(out, 0, sizeof *out);
    if (len == 0 || len > TOKEN_CHARS_MAX)
        return TOKEN_INVALID;
    int n = pseudonym_open_token(p, s, len, plain, sizeof plain, &out->previous_key);
    size_t at = 1 + 4 + PSEUDONYM_USER_HEX / 2;
    if (n < (int)at + 2 || plain[0] != TOKEN_VERSION)
        return TOKEN_INVALID;
    out->expires_s = (int64_t)((uint32_t)plain[1] << 24 | (uint32_t)plain[2] << 16 |
                               (uint32_t)plain[3] << 8 | plain[4]);
    sodium_bin2hex(out->user, sizeof out->user, plain + 5, PSEUDONYM_USER_HEX / 2);
    size_t cl = plain[at];
    if (at + 1 + cl + 1 > (size_t)n || cl > CONFIG_NAME_MAX || !name_ok(plain + at + 1, cl))
        return TOKEN_INVALID;
    memcpy(out->channel, plain + at + 1, cl);
    at += 1 + cl;
    size_t gl = plain[at];
    if (at + 1 + gl != (size_t)n || gl > CONFIG_NAME_MAX || !name_ok(plain + at + 1, gl))
        return TOKEN_INVALID;
    memcpy(out->category, plain + at + 1, gl);
    return now_s >= out->expires_s ? TOKEN_EXPIRED : TOKEN_OK;
}

int token_link(const struct pseudonym *p, const struct config *cfg, const char *user,
               const char *channel, const char *category, int64_t now_s, char *out,
               size_t outlen)
{
    struct token t = { .expires_s = now_s + cfg->public.token_ttl_ms / 1000 };
    char tok[TOKEN_CHARS_MAX + 1];
    snprintf(t.user, sizeof t.user, "%s", user);
    snprintf(t.channel, sizeof t.channel, "%s", channel ? channel : "");
    snprintf(t.category, sizeof t.category, "%s", category ? category : "");
    if (!cfg->public.enabled || token_make(p, &t, tok) != 0)
        return -1;
    int n = snprintf(out, outlen, "%s/u/%s", cfg->public.base_url, tok);
    return n > 0 && (size_t)n < outlen ? 0 : -1;
}

void token_fingerprint(const char *s, size_t len, char out[17])
{
    unsigned char h[crypto_generichash_BYTES_MIN];    /* 16: BLAKE2b's shortest */
    crypto_generichash(h, sizeof h, (const unsigned char *)s, len, NULL, 0);
    sodium_bin2hex(out, 17, h, 8);
}

void token_link_field(struct textbuf *t, const struct pseudonym *p, const struct config *cfg,
                      const char *user, const char *channel, const char *category)
{
    char url[UNSUBSCRIBE_URL_MAX];
    if (!cfg->public.enabled ||
        token_link(p, cfg, user, channel, category, time(NULL), url, sizeof url) != 0)
        return;
    /* The base URL has no character JSON would escape (config.c) and the
     * token is URL-safe base64. */
    textbuf_puts(t, ",\"unsubscribe_url\":\"");
    textbuf_puts(t, url);
    textbuf_puts(t, "\"");
}

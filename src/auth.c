/* auth: bearer tokens -> scopes.  See auth.h. */
#include "capgate/auth.h"

#include <arpa/inet.h>
#include <sodium.h>
#include <string.h>
#include <strings.h>

void auth_hash_token(const char *token, size_t len, char out[65])
{
    unsigned char h[crypto_hash_sha256_BYTES];
    crypto_hash_sha256(h, (const unsigned char *)token, len);
    sodium_bin2hex(out, 65, h, sizeof h);
}

/* TOKEN without the spaces around it; LEN set. */
static const char *trimmed(const char *token, size_t *len)
{
    while (*token == ' ' || *token == '\t')
        token++;
    size_t n = strlen(token);
    while (n && (token[n - 1] == ' ' || token[n - 1] == '\t'))
        n--;
    *len = n;
    return token;
}

enum auth_result auth_check_token(const struct config *cfg, const char *token,
                                  struct auth_outcome *out)
{
    out->scopes = 0;
    out->name = NULL;
    out->tag[0] = '\0';
    if (!cfg->auth.enabled) {
        out->scopes = SCOPE_SEND | SCOPE_CONSENT | SCOPE_ADMIN;
        return AUTH_OK;
    }
    size_t len = 0;
    if (token)
        token = trimmed(token, &len);
    if (!token || len == 0)
        return AUTH_MISSING;

    /* The whole token, whatever its length, is hashed: a valid token with
     * anything after it is another token. */
    char hex[65];
    auth_hash_token(token, len, hex);
    memcpy(out->tag, hex, sizeof out->tag - 1);
    out->tag[sizeof out->tag - 1] = '\0';
    /* Every configured hash is compared, match or not. */
    long found = -1;
    for (size_t k = 0; k < cfg->auth.n_tokens; k++) {
        bool same = sodium_memcmp(hex, cfg->auth.tokens[k].sha256, 64) == 0;
        found = same ? (long)k : found;
    }
    sodium_memzero(hex, sizeof hex);
    if (found < 0)
        return AUTH_INVALID;
    out->scopes = cfg->auth.tokens[found].scopes;
    out->name = cfg->auth.tokens[found].name;
    return AUTH_OK;
}

enum auth_result auth_check(const struct config *cfg, const char *header,
                            struct auth_outcome *out)
{
    if (cfg->auth.enabled && (!header || strncasecmp(header, "Bearer ", 7) != 0)) {
        out->scopes = 0;
        out->name = NULL;
        out->tag[0] = '\0';
        return AUTH_MISSING;
    }
    return auth_check_token(cfg, header ? header + 7 : NULL, out);
}

bool auth_is_loopback(const char *host)
{
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, host, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    if (inet_pton(AF_INET6, host, &a6) == 1)
        return IN6_IS_ADDR_LOOPBACK(&a6);
    return false;
}

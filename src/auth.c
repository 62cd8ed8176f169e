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

enum auth_result auth_check(const struct config *cfg, const char *header, unsigned *scopes,
                            const char **token_name)
{
    *scopes = 0;
    *token_name = NULL;
    if (!cfg->auth.enabled) {
        *scopes = SCOPE_SEND | SCOPE_CONSENT | SCOPE_ADMIN;
        return AUTH_OK;
    }
    if (!header || strncasecmp(header, "Bearer ", 7) != 0)
        return AUTH_MISSING;
    const char *token = header + 7;
    while (*token == ' ')
        token++;
    size_t len = strlen(token);
    while (len && token[len - 1] == ' ')
        len--;
    if (len == 0)
        return AUTH_MISSING;

    char hex[65];
    auth_hash_token(token, len, hex);
    /* Every configured hash is compared, match or not. */
    long found = -1;
    for (size_t k = 0; k < cfg->auth.n_tokens; k++) {
        bool same = sodium_memcmp(hex, cfg->auth.tokens[k].sha256, 64) == 0;
        found = same ? (long)k : found;
    }
    sodium_memzero(hex, sizeof hex);
    if (found < 0)
        return AUTH_INVALID;
    *scopes = cfg->auth.tokens[found].scopes;
    *token_name = cfg->auth.tokens[found].name;
    return AUTH_OK;
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

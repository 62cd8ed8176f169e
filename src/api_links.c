/*
 * api_links: POST /v1/unsubscribe-links -- the link a sender puts in a
 * message (and its RFC 8058 headers), for a person and a scope.  The answer
 * holds the link's token, never the user.
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "capgate/api.h"
#include "capgate/clock.h"
#include "capgate/config.h"
#include "capgate/http.h"
#include "capgate/loop.h"
#include "capgate/pseudonym.h"
#include "capgate/reply.h"
#include "capgate/requests.h"
#include "capgate/token.h"

void api_unsubscribe_links(struct loop *l, struct http_request *req)
{
    const struct config *cfg = l->cfg;
    struct field_error e;
    struct req_link rl;
    size_t len;
    const char *body = http_body(req, &len);
    if (request_unsubscribe_link(cfg, body, len, &rl, &e) != 0) {
        reply_field_error(l, req, &e);
        request_free(rl.json);
        return;
    }
    char user[PSEUDONYM_USER_HEX + 1], url[TOKEN_CHARS_MAX + 256], header[sizeof url + 2];
    char expires[32];
    pseudonym_user(l->pseudonym, rl.user, rl.user_len, user);
    http_note_user(req, user);
    time_t now = time(NULL);
    if (token_link(l->pseudonym, cfg, user, rl.channel, rl.category, now, url, sizeof url) != 0) {
        reply_error(l, req, API_INTERNAL, NULL, "the link could not be made");
        request_free(rl.json);
        return;
    }
    clock_format_rfc3339(expires, sizeof expires, now + (time_t)(cfg->public.token_ttl_ms / 1000));
    snprintf(header, sizeof header, "<%s>", url);
    reply_json(l, req, 200,
               json_pack("{s:s, s:s, s:s, s:s, s:{s:s, s:s}}", "url", url,
                         "channel", rl.channel[0] ? rl.channel : "*",
                         "category", rl.category[0] ? rl.category : "*", "expires_at", expires,
                         "headers", "List-Unsubscribe", header,
                         "List-Unsubscribe-Post", "List-Unsubscribe=One-Click"));
    request_free(rl.json);
}

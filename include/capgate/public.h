/*
 * public: what the people capgate messages can reach, on public.listen (a
 * listener of its own, beside the API's): the /u/<token> pages.
 *   GET  /u/<token>   the preference page: each channel and category with the
 *                     person's current choice, a save button and "unsubscribe
 *                     from everything".  GET never changes anything (mail
 *                     scanners follow links).
 *   POST /u/<token>   List-Unsubscribe=One-Click (RFC 8058): an opt-out of the
 *                     token's scope, answered 200 with no redirect and no
 *                     cookie; or the page's form: each changed choice recorded.
 * Every other path is 404.  No token of auth.tokens is asked: the link's own
 * token (token.h) is the credential.  The pages are self-contained HTML (no
 * external assets, no script, no tracking) and show no identifier.
 */
#ifndef CAPGATE_PUBLIC_H
#define CAPGATE_PUBLIC_H

struct http_request;

/* The public listener's request handler; ARG is the struct loop. */
void public_dispatch(struct http_request *req, void *arg);

#endif

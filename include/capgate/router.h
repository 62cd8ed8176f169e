/*
 * router: method + path -> handler, the scope check, and the HTTP-level
 * refusals that come before any handler (413, 401, 403, 404, 405).  It tags
 * the request with the route it matched (http_note_route), which the access
 * log shows.  Plug into http_server_start() with the loop as the argument.
 */
#ifndef CAPGATE_ROUTER_H
#define CAPGATE_ROUTER_H

struct http_request;

void router_dispatch(struct http_request *req, void *loop);

#endif

/*
 * router: method + path -> handler, and the HTTP-level refusals that come
 * before any handler (413, 404, 405).  Plug into http_server_start() with
 * the worker as the argument.
 */
#ifndef CAPGATE_ROUTER_H
#define CAPGATE_ROUTER_H

struct http_request;

void router_dispatch(struct http_request *req, void *worker);

#endif

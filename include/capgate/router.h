/*
 * router: method + path -> handler, and the HTTP-level refusals that come
 * before any handler (413, 404, 405).  Plug into http_server_start() with
 * the worker as the argument.
 */
#ifndef CAPGATE_ROUTER_H
#define CAPGATE_ROUTER_H

#include <stdbool.h>

struct http_request;

void router_dispatch(struct http_request *req, void *worker);
/* True for the paths of the endpoint table (logs show only those: a
 * client may put anything, an e-mail address too, into an unknown path). */
bool router_known_path(const char *path);

#endif

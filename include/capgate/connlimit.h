/*
 * connlimit: limits.max_connections and max_connections_per_ip for the
 * whole process.  Every worker's listener asks the same table (MHD's accept
 * policy callback) and gives its connections back when they close, so the
 * limits are exact however the kernel spreads connections over listeners.
 * Thread-safe (one mutex; taken once per connection, not per request).
 */
#ifndef CAPGATE_CONNLIMIT_H
#define CAPGATE_CONNLIMIT_H

#include <stdbool.h>
#include <sys/socket.h>

struct connlimit;

struct connlimit *connlimit_new(unsigned max_total, unsigned max_per_ip);
void connlimit_free(struct connlimit *c);
/* New limits (a reload); connections over them stay, new ones wait. */
void connlimit_set(struct connlimit *c, unsigned max_total, unsigned max_per_ip);
/* Reserves one connection for ADDR; false when a limit is reached. */
bool connlimit_take(struct connlimit *c, const struct sockaddr *addr);
void connlimit_release(struct connlimit *c, const struct sockaddr *addr);
unsigned connlimit_total(struct connlimit *c);

#endif

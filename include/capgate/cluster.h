/*
 * cluster: the pure parts of the store's Redis Cluster client (store.c):
 * key -> slot (CRC16/XMODEM of the hash tag, as in the Redis Cluster
 * specification), CLUSTER SLOTS replies -> slot ranges, and MOVED / ASK
 * errors -> target.  No I/O, no allocation.
 */
#ifndef CAPGATE_CLUSTER_H
#define CAPGATE_CLUSTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CLUSTER_SLOTS 16384
#define CLUSTER_HOST_MAX 64     /* an IPv6 address fits (46) */

struct redisReply;

/* CRC16-CCITT (XMODEM): poly 0x1021, init 0, no reflection.
 * cluster_crc16("123456789", 9) == 0x31C3. */
uint16_t cluster_crc16(const char *buf, size_t len);

/* The slot of KEY: the CRC16 of its hash tag -- the bytes between the
 * first '{' and the first '}' after it, when there are some -- or of the
 * whole key, modulo 16384. */
unsigned cluster_key_slot(const char *key, size_t len);

/* One master's slot range from CLUSTER SLOTS. */
struct cluster_range {
    unsigned start, end;            /* inclusive, start <= end < 16384 */
    char host[CLUSTER_HOST_MAX];    /* as Redis wrote it; "" when it wrote "" or nil */
    int port;
};

/* Reads a CLUSTER SLOTS reply into OUT[0..cap).  Returns the number of
 * ranges (those past CAP are counted, not written), or -1 when the reply
 * is not shaped like one.  Ranges whose endpoint Redis does not know
 * ("?") are left out. */
int cluster_parse_slots(const struct redisReply *r, struct cluster_range *out, size_t cap);

/* "MOVED 3999 127.0.0.1:6381" / "ASK 3999 [::1]:6381" / "MOVED 3999 :6381"
 * (empty host: the node that answered).  Returns 0 and fills the fields,
 * or -1 when ERR is neither. */
int cluster_parse_redirect(const char *err, size_t len, bool *ask, unsigned *slot,
                           char host[CLUSTER_HOST_MAX], int *port);

/* "host:port" or "[v6]:port" (the last ':' splits): 0 or -1. */
int cluster_split_hostport(const char *s, size_t len, char host[CLUSTER_HOST_MAX], int *port);

#endif

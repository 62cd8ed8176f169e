/* cluster: slots, CLUSTER SLOTS and redirects.  See cluster.h. */
#include "capgate/cluster.h"

#include <hiredis/hiredis.h>
#include <string.h>

uint16_t cluster_crc16(const char *buf, size_t len)
{
    uint16_t crc = 0;
    for (size_t i = 0; i < len; i++) {
        crc ^= (uint16_t)((unsigned char)buf[i] << 8);
        for (int b = 0; b < 8; b++)
            crc = (uint16_t)(crc & 0x8000 ? (crc << 1) ^ 0x1021 : crc << 1);
    }
    return crc;
}

unsigned cluster_key_slot(const char *key, size_t len)
{
    const char *open = memchr(key, '{', len);
    if (open) {
        size_t from = (size_t)(open - key) + 1;
        const char *close = memchr(key + from, '}', len - from);
        /* "{}" (an empty tag) means no tag: the whole key counts. */
        if (close && close > key + from)
            return cluster_crc16(key + from, (size_t)(close - key - from)) & (CLUSTER_SLOTS - 1);
    }
    return cluster_crc16(key, len) & (CLUSTER_SLOTS - 1);
}

static bool copy_host(const char *s, size_t len, char host[CLUSTER_HOST_MAX])
{
    if (len >= CLUSTER_HOST_MAX)
        return false;
    memcpy(host, s, len);
    host[len] = '\0';
    return true;
}

int cluster_parse_slots(const struct redisReply *r, struct cluster_range *out, size_t cap)
{
    size_t n = 0;

    if (!r || r->type != REDIS_REPLY_ARRAY)
        return -1;
    for (size_t k = 0; k < r->elements; k++) {
        const redisReply *e = r->element[k];
        if (!e || e->type != REDIS_REPLY_ARRAY || e->elements < 3)
            return -1;
        const redisReply *lo = e->element[0], *hi = e->element[1], *m = e->element[2];
        if (lo->type != REDIS_REPLY_INTEGER || hi->type != REDIS_REPLY_INTEGER ||
            lo->integer < 0 || hi->integer < lo->integer || hi->integer >= CLUSTER_SLOTS)
            return -1;
        if (m->type != REDIS_REPLY_ARRAY || m->elements < 2 ||
            m->element[1]->type != REDIS_REPLY_INTEGER ||
            m->element[1]->integer < 1 || m->element[1]->integer > 65535)
            return -1;
        const redisReply *ip = m->element[0];
        struct cluster_range cr = { .start = (unsigned)lo->integer, .end = (unsigned)hi->integer,
                                    .port = (int)m->element[1]->integer };
        if (ip->type == REDIS_REPLY_STRING || ip->type == REDIS_REPLY_STATUS) {
            if (ip->len == 1 && ip->str[0] == '?')
                continue;           /* unknown endpoint: as if unassigned */
            if (!copy_host(ip->str, ip->len, cr.host))
                return -1;
        } else if (ip->type != REDIS_REPLY_NIL) {
            return -1;
        }
        if (n < cap)
            out[n] = cr;
        n++;
    }
    return (int)n;
}

int cluster_split_hostport(const char *s, size_t len, char host[CLUSTER_HOST_MAX], int *port)
{
    const char *colon = NULL;
    for (size_t i = len; i > 0; i--)
        if (s[i - 1] == ':') {
            colon = s + i - 1;
            break;
        }
    if (!colon)
        return -1;
    size_t plen = len - (size_t)(colon - s) - 1, hlen = (size_t)(colon - s);
    int p = 0;
    if (plen == 0 || plen > 5)
        return -1;
    for (size_t i = 0; i < plen; i++) {
        char c = colon[1 + i];
        if (c < '0' || c > '9')
            return -1;
        p = p * 10 + (c - '0');
    }
    if (p < 1 || p > 65535)
        return -1;
    if (hlen >= 2 && s[0] == '[' && s[hlen - 1] == ']') {
        s++;
        hlen -= 2;
    }
    if (!copy_host(s, hlen, host))
        return -1;
    *port = p;
    return 0;
}

int cluster_parse_redirect(const char *err, size_t len, bool *ask, unsigned *slot,
                           char host[CLUSTER_HOST_MAX], int *port)
{
    size_t i;
    unsigned v = 0;

    if (len > 6 && memcmp(err, "MOVED ", 6) == 0) {
        *ask = false;
        i = 6;
    } else if (len > 4 && memcmp(err, "ASK ", 4) == 0) {
        *ask = true;
        i = 4;
    } else {
        return -1;
    }
    size_t digits = 0;
    for (; i < len && err[i] >= '0' && err[i] <= '9' && digits < 6; i++, digits++)
        v = v * 10 + (unsigned)(err[i] - '0');
    if (digits == 0 || v >= CLUSTER_SLOTS || i >= len || err[i] != ' ')
        return -1;
    i++;
    size_t end = i;
    while (end < len && err[end] != ' ' && err[end] != '\r' && err[end] != '\n')
        end++;
    if (cluster_split_hostport(err + i, end - i, host, port) != 0)
        return -1;
    *slot = v;
    return 0;
}

/* connlimit: process-wide connection limits.  See connlimit.h. */
#include "capgate/connlimit.h"

#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BUCKETS 4096

struct peer {
    struct peer *next;
    unsigned char key[17];     /* family, then the address (IPv4 in 4 bytes) */
    unsigned count;
};

struct connlimit {
    pthread_mutex_t lock;
    unsigned max_total, max_per_ip;   /* 0 per ip: no limit */
    unsigned total;
    struct peer *buckets[BUCKETS];
};

static void key_of(const struct sockaddr *sa, unsigned char key[17])
{
    memset(key, 0, 17);
    key[0] = (unsigned char)sa->sa_family;
    if (sa->sa_family == AF_INET)
        memcpy(key + 1, &((const struct sockaddr_in *)sa)->sin_addr, 4);
    else if (sa->sa_family == AF_INET6)
        memcpy(key + 1, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
}

static unsigned bucket_of(const unsigned char key[17])
{
    uint32_t h = 2166136261u;
    for (int k = 0; k < 17; k++)
        h = (h ^ key[k]) * 16777619u;
    return h % BUCKETS;
}

struct connlimit *connlimit_new(unsigned max_total, unsigned max_per_ip)
{
    struct connlimit *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    pthread_mutex_init(&c->lock, NULL);
    c->max_total = max_total;
    c->max_per_ip = max_per_ip;
    return c;
}

void connlimit_free(struct connlimit *c)
{
    if (!c)
        return;
    for (int b = 0; b < BUCKETS; b++)
        for (struct peer *p = c->buckets[b], *n; p; p = n) {
            n = p->next;
            free(p);
        }
    pthread_mutex_destroy(&c->lock);
    free(c);
}

void connlimit_set(struct connlimit *c, unsigned max_total, unsigned max_per_ip)
{
    pthread_mutex_lock(&c->lock);
    c->max_total = max_total;
    c->max_per_ip = max_per_ip;
    pthread_mutex_unlock(&c->lock);
}

bool connlimit_take(struct connlimit *c, const struct sockaddr *addr)
{
    unsigned char key[17];
    bool ok = false;
    key_of(addr, key);
    unsigned b = bucket_of(key);

    pthread_mutex_lock(&c->lock);
    struct peer *p = c->buckets[b];
    while (p && memcmp(p->key, key, sizeof key) != 0)
        p = p->next;
    if (c->total >= c->max_total || (c->max_per_ip && p && p->count >= c->max_per_ip))
        goto out;
    if (!p) {
        if (!(p = calloc(1, sizeof *p)))
            goto out;
        memcpy(p->key, key, sizeof key);
        p->next = c->buckets[b];
        c->buckets[b] = p;
    }
    p->count++;
    c->total++;
    ok = true;
out:
    pthread_mutex_unlock(&c->lock);
    return ok;
}

void connlimit_release(struct connlimit *c, const struct sockaddr *addr)
{
    unsigned char key[17];
    key_of(addr, key);
    unsigned b = bucket_of(key);

    pthread_mutex_lock(&c->lock);
    struct peer **pp = &c->buckets[b];
    while (*pp && memcmp((*pp)->key, key, sizeof key) != 0)
        pp = &(*pp)->next;
    if (*pp) {
        if (c->total)
            c->total--;
        if (--(*pp)->count == 0) {     /* a peer with no connection is forgotten */
            struct peer *gone = *pp;
            *pp = gone->next;
            free(gone);
        }
    }
    pthread_mutex_unlock(&c->lock);
}

unsigned connlimit_total(struct connlimit *c)
{
    pthread_mutex_lock(&c->lock);
    unsigned n = c->total;
    pthread_mutex_unlock(&c->lock);
    return n;
}

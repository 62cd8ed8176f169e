/*
 * counter: statistics written by one thread (the loop that owns them) and
 * read by any (a /status or /metrics request served by another worker).
 * The owner's increment is a plain add and store; readers load atomically.
 * No locks and no lock prefix on the hot path.
 */
#ifndef CAPGATE_COUNTER_H
#define CAPGATE_COUNTER_H

#define COUNTER_ADD(x, n) __atomic_store_n(&(x), (x) + (n), __ATOMIC_RELAXED)
#define COUNTER_INC(x) COUNTER_ADD(x, 1)
#define COUNTER_SET(x, v) __atomic_store_n(&(x), (v), __ATOMIC_RELAXED)
#define COUNTER_GET(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)

static inline void counter_set_double(double *x, double v)
{
    __atomic_store(x, &v, __ATOMIC_RELAXED);
}

static inline double counter_get_double(const double *x)
{
    double v;
    __atomic_load(x, &v, __ATOMIC_RELAXED);
    return v;
}

#endif

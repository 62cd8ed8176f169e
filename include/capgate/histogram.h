/*
 * histogram: a fixed-bucket latency histogram, Prometheus-shaped.
 * Observing is a short loop over 14 bounds; no allocation, no locking
 * (one histogram per loop).
 */
#ifndef CAPGATE_HISTOGRAM_H
#define CAPGATE_HISTOGRAM_H

#include <stdint.h>

#define HISTOGRAM_BUCKETS 14

/* Upper bounds in seconds; the last bucket is +Inf (not listed). */
extern const double histogram_bounds[HISTOGRAM_BUCKETS - 1];

struct histogram {
    uint64_t buckets[HISTOGRAM_BUCKETS];  /* not cumulative */
    uint64_t count;
    double sum;                           /* seconds */
};

/* By the owning thread only. */
void histogram_observe(struct histogram *h, double seconds);
/* From any thread: an atomic-per-field copy of H. */
void histogram_read(const struct histogram *h, struct histogram *out);
/* OUT += H (both plain copies). */
void histogram_add(struct histogram *out, const struct histogram *h);
/* Estimate of quantile Q (0..1) in seconds, by linear interpolation inside
 * the bucket; 0 when empty. */
double histogram_quantile(const struct histogram *h, double q);

#endif

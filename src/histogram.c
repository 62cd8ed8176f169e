/* histogram: fixed buckets from 100 us to 5 s.  See histogram.h. */
#include "capgate/histogram.h"

#include "capgate/counter.h"

const double histogram_bounds[HISTOGRAM_BUCKETS - 1] = {
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
    0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
};

void histogram_observe(struct histogram *h, double seconds)
{
    int k = 0;
    while (k < HISTOGRAM_BUCKETS - 1 && seconds > histogram_bounds[k])
        k++;
    COUNTER_INC(h->buckets[k]);
    COUNTER_INC(h->count);
    counter_set_double(&h->sum, h->sum + seconds);
}

void histogram_read(const struct histogram *h, struct histogram *out)
{
    for (int k = 0; k < HISTOGRAM_BUCKETS; k++)
        out->buckets[k] = COUNTER_GET(h->buckets[k]);
    out->count = COUNTER_GET(h->count);
    out->sum = counter_get_double(&h->sum);
}

void histogram_add(struct histogram *out, const struct histogram *h)
{
    for (int k = 0; k < HISTOGRAM_BUCKETS; k++)
        out->buckets[k] += h->buckets[k];
    out->count += h->count;
    out->sum += h->sum;
}

double histogram_quantile(const struct histogram *h, double q)
{
    if (h->count == 0)
        return 0;
    double rank = q * (double)h->count;
    uint64_t seen = 0;
    for (int k = 0; k < HISTOGRAM_BUCKETS; k++) {
        if (h->buckets[k] == 0 || (double)(seen + h->buckets[k]) < rank) {
            seen += h->buckets[k];
            continue;
        }
        double lo = k ? histogram_bounds[k - 1] : 0;
        double hi = k < HISTOGRAM_BUCKETS - 1 ? histogram_bounds[k] : lo * 2;
        double frac = (rank - (double)seen) / (double)h->buckets[k];
        return lo + (hi - lo) * (frac < 0 ? 0 : frac > 1 ? 1 : frac);
    }
    return histogram_bounds[HISTOGRAM_BUCKETS - 2];
}

/* Unit tests: per-route latency (src/metrics.c) and /proc/PID/stat parsing
 * (src/procstat.c). */
#include <stdio.h>
#include <stdlib.h>

#include "capgate/metrics.h"
#include "capgate/procstat.h"
#include "unit.h"

TEST(routes_are_timed_apart_and_summed)
{
    struct metrics *m = calloc(1, sizeof *m), *out = calloc(1, sizeof *out);
    metrics_observe_request(m, "/v1/decide", 0.0005);
    metrics_observe_request(m, "/v1/decide", 0.0007);
    metrics_observe_request(m, "/v1/send", 0.3);
    CHECK_EQ_INT(m->n_routes, 2);
    metrics_accumulate(out, m);
    metrics_accumulate(out, m);          /* a second loop with the same figures */
    CHECK_EQ_INT(out->n_routes, 2);
    CHECK_EQ_STR(out->by_route[0].route, "/v1/decide");
    CHECK_EQ_INT(out->by_route[0].h.count, 4);
    CHECK_EQ_INT(out->by_route[1].h.count, 2);
    CHECK_EQ_INT(out->http_latency.count, 6);
    free(m);
    free(out);
}

TEST(too_many_routes_go_to_other)
{
    struct metrics *m = calloc(1, sizeof *m);
    char name[32];
    for (int k = 0; k < METRICS_ROUTES_MAX + 10; k++) {
        snprintf(name, sizeof name, "/r/%d", k);
        metrics_observe_request(m, name, 0.001);
    }
    metrics_observe_request(m, "(other)", 0.001);
    CHECK_EQ_INT(m->n_routes, METRICS_ROUTES_MAX);
    CHECK_EQ_STR(m->by_route[METRICS_ROUTES_MAX - 1].route, "(other)");
    CHECK_EQ_INT(m->by_route[METRICS_ROUTES_MAX - 1].h.count, 12);
    uint64_t total = 0;
    for (size_t k = 0; k < m->n_routes; k++)
        total += m->by_route[k].h.count;
    CHECK_EQ_INT(total, METRICS_ROUTES_MAX + 11);
    free(m);
}

TEST(other_already_present_is_not_doubled)
{
    struct metrics *m = calloc(1, sizeof *m);
    char name[32];
    metrics_observe_request(m, "(other)", 0.001);
    for (int k = 0; k < METRICS_ROUTES_MAX + 5; k++) {
        snprintf(name, sizeof name, "/r/%d", k);
        metrics_observe_request(m, name, 0.001);
    }
    int others = 0;
    for (size_t k = 0; k < m->n_routes; k++)
        others += strcmp(m->by_route[k].route, "(other)") == 0;
    CHECK_EQ_INT(others, 1);
    CHECK_EQ_INT(m->n_routes, METRICS_ROUTES_MAX);
    free(m);
}

TEST(proc_stat_line)
{
    /* A command name with ") " in it, as a process may call itself. */
    const char *line = "4242 (cap) gate (x)) S 1 4242 4242 0 -1 4194560 1200 0 3 0 "
                       "250 150 0 0 20 0 3 0 12345 104857600 2560 18446744073709551615 1 1 0 0 0 "
                       "0 0 4096 0 0 0 0 17 1 0 0 0 0 0\n";
    struct procstat ps = { 0 };
    CHECK_EQ_INT(procstat_parse_stat(line, 100, 4096, 1700000000.0, &ps), 0);
    CHECK(ps.cpu_seconds > 3.999 && ps.cpu_seconds < 4.001);
    CHECK_EQ_INT(ps.virtual_bytes, 104857600);
    CHECK_EQ_INT(ps.resident_bytes, 2560 * 4096);
    CHECK(ps.start_time > 1700000123.44 && ps.start_time < 1700000123.46);
    CHECK_EQ_INT(procstat_parse_stat("garbage", 100, 4096, 0, &ps), -1);
    CHECK_EQ_INT(procstat_parse_stat("1 (x) S 1 2", 100, 4096, 0, &ps), -1);
}

TEST(proc_self)
{
    struct procstat ps;
    CHECK_EQ_INT(procstat_read(&ps), 0);
    CHECK(ps.ok);
    CHECK(ps.resident_bytes > 0);
    CHECK(ps.open_fds >= 3);
    CHECK(ps.max_fds >= ps.open_fds);
}

int main(void)
{
    RUN(routes_are_timed_apart_and_summed);
    RUN(too_many_routes_go_to_other);
    RUN(other_already_present_is_not_doubled);
    RUN(proc_stat_line);
    RUN(proc_self);
    return unit_done("test_metrics");
}

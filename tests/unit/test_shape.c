/* Unit tests: the upstream's shaping (src/shape.c) -- what can be checked
 * without Redis: Retry-After read both ways, and which channels shape.
 * The rate and the pause themselves: tests/blackbox/test_shaping.py. */
#include "capgate/shape.h"
#include "unit.h"

#include <string.h>

TEST(retry_after_seconds)
{
    CHECK_EQ_INT(shape_retry_after_ms("3", 0), 3000);
    CHECK_EQ_INT(shape_retry_after_ms(" 120 ", 0), 120000);
    CHECK_EQ_INT(shape_retry_after_ms("0", 0), 0);
    CHECK_EQ_INT(shape_retry_after_ms(NULL, 0), -1);
    CHECK_EQ_INT(shape_retry_after_ms("", 0), -1);
    CHECK_EQ_INT(shape_retry_after_ms("-1", 0), -1);
    CHECK_EQ_INT(shape_retry_after_ms("3s", 0), -1);
    CHECK_EQ_INT(shape_retry_after_ms("1.5", 0), -1);
    CHECK_EQ_INT(shape_retry_after_ms("99999999999", 0), -1);   /* beyond a year */
}

TEST(retry_after_http_date)
{
    /* Sun, 06 Nov 1994 08:49:37 GMT is 784111777 (RFC 9110's example). */
    CHECK_EQ_INT(shape_retry_after_ms("Sun, 06 Nov 1994 08:49:37 GMT", 784111770), 7000);
    CHECK_EQ_INT(shape_retry_after_ms("Sun, 06 Nov 1994 08:49:37 GMT", 784111777), 0);
    CHECK_EQ_INT(shape_retry_after_ms("Sun, 06 Nov 1994 08:49:37 GMT", 784111999), 0);  /* past */
    CHECK_EQ_INT(shape_retry_after_ms("Sun, 06 Nov 1994 08:49:37 PST", 0), -1);
    CHECK_EQ_INT(shape_retry_after_ms("Sunday, 06-Nov-94 08:49:37", 0), -1);
    CHECK_EQ_INT(shape_retry_after_ms("Sun, 06 Nov 1994 08:49:37 GMT tail", 0), -1);
}

TEST(which_channels_shape)
{
    struct cfg_channel ch;
    struct config cfg;
    struct cfg_throttle t = { .name = "c", .per_second = 5, .burst = 1 };
    memset(&ch, 0, sizeof ch);
    memset(&cfg, 0, sizeof cfg);
    ch.name = "email";
    CHECK(!shape_wanted(&cfg, NULL));
    CHECK(!shape_wanted(&cfg, &ch));               /* no upstream */
    ch.upstream.enabled = true;
    CHECK(!shape_wanted(&cfg, &ch));               /* nothing shapes it */
    ch.upstream.pushback.n_statuses = 1;
    CHECK(shape_wanted(&cfg, &ch));
    ch.upstream.pushback.n_statuses = 0;
    ch.upstream.rate.enabled = true;
    CHECK(shape_wanted(&cfg, &ch));
    ch.upstream.rate.enabled = false;
    ch.upstream.warmup.enabled = true;
    CHECK(shape_wanted(&cfg, &ch));
    ch.upstream.warmup.enabled = false;
    cfg.throttles = &t;
    cfg.n_throttles = 1;
    CHECK(shape_wanted(&cfg, &ch));                /* a throttle of every channel */
    t.channel = "push";
    CHECK(!shape_wanted(&cfg, &ch));               /* another channel's */
    t.channel = "email";
    CHECK(shape_wanted(&cfg, &ch));
}

TEST(warmup_days)
{
    struct cfg_channel ch;
    struct config cfg;
    char out[64];
    memset(&ch, 0, sizeof ch);
    memset(&cfg, 0, sizeof cfg);
    ch.name = "email";
    ch.upstream.enabled = true;
    shape_warmup_arg(&cfg, NULL, &ch, 0, out);
    CHECK_EQ_STR(out, "-");                        /* no warm-up */
    struct cfg_warmup *w = &ch.upstream.warmup;
    w->enabled = true;
    w->start_day = 20423;                          /* 2025-12-01 */
    w->start_ms = -1;
    w->daily[0] = 500;
    w->daily[1] = 1000;
    w->daily[2] = 2000;
    w->n_daily = 3;
    w->day_ms = 86400000;
    int64_t start = 20423LL * 86400000;
    shape_warmup_arg(&cfg, NULL, &ch, start, out);
    CHECK_EQ_STR(out, "0|500|86400000");
    shape_warmup_arg(&cfg, NULL, &ch, start + 86400000 + 3600000, out);
    CHECK_EQ_STR(out, "1|1000|82800000");
    shape_warmup_arg(&cfg, NULL, &ch, start + 2 * 86400000 + 86399999, out);
    CHECK_EQ_STR(out, "2|2000|1");
    shape_warmup_arg(&cfg, NULL, &ch, start + 3 * 86400000, out);
    CHECK_EQ_STR(out, "-");                        /* warmed up */
    shape_warmup_arg(&cfg, NULL, &ch, start - 1000, out);
    CHECK_EQ_STR(out, "-1|500|1000");              /* before the start: day 0's ceiling */
    w->day_ms = 2000;                              /* a test's two-second day */
    shape_warmup_arg(&cfg, NULL, &ch, start + 4500, out);
    CHECK_EQ_STR(out, "2|2000|1500");
    w->start_ms = start + 500;                     /* an instant */
    shape_warmup_arg(&cfg, NULL, &ch, start + 4500, out);
    CHECK_EQ_STR(out, "2|2000|2000");
    CHECK_EQ_STR(shape_reason(SHAPE_WARMUP), "warmup_limit");
    CHECK_EQ_STR(shape_held_outcome(SHAPE_THROTTLE), "held_throttle");
}

int main(void)
{
    RUN(retry_after_seconds);
    RUN(retry_after_http_date);
    RUN(which_channels_shape);
    RUN(warmup_days);
    return unit_done("test_shape");
}

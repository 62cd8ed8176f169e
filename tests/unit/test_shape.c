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
    memset(&ch, 0, sizeof ch);
    CHECK(!shape_wanted(NULL));
    CHECK(!shape_wanted(&ch));                     /* no upstream */
    ch.upstream.enabled = true;
    CHECK(!shape_wanted(&ch));                     /* neither a rate nor pushback */
    ch.upstream.pushback.n_statuses = 1;
    CHECK(shape_wanted(&ch));
    ch.upstream.pushback.n_statuses = 0;
    ch.upstream.rate.enabled = true;
    CHECK(shape_wanted(&ch));
}

int main(void)
{
    RUN(retry_after_seconds);
    RUN(retry_after_http_date);
    RUN(which_channels_shape);
    return unit_done("test_shape");
}

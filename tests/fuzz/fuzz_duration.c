/*
 * fuzz_duration: config_parse_duration and config_parse_clock (src/config.c)
 * on hostile text, with what a successful parse promises checked:
 *   duration  "<positive decimal><ms|s|m|h|d|w>" -> n * unit milliseconds,
 *             no overflow;
 *   clock     "HH:MM", 00:00..23:59 -> minutes after midnight, and printing
 *             it back gives the input.
 */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capgate/config.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* An independent reading of the duration grammar: -1 or 0 with *MS. */
static int reference_duration(const char *s, int64_t *ms)
{
    static const struct { const char *unit; int64_t ms; } units[] = {
        { "ms", 1 }, { "s", 1000 }, { "m", 60000 }, { "h", 3600000 }, { "d", 86400000 },
        { "w", 604800000 },
    };
    size_t digits = strspn(s, "0123456789");
    if (digits == 0)
        return -1;
    const char *u = s + digits;
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (strcmp(u, units[i].unit) != 0)
            continue;
        /* n * unit <= INT64_MAX, computed in 128 bits. */
        unsigned __int128 n = 0;
        for (size_t k = 0; k < digits; k++) {
            n = n * 10 + (unsigned)(s[k] - '0');
            if (n > (unsigned __int128)INT64_MAX)
                return -1;
        }
        n *= (unsigned)units[i].ms;
        if (n == 0 || n > (unsigned __int128)INT64_MAX)
            return -1;
        *ms = (int64_t)n;
        return 0;
    }
    return -1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 256)
        return 0;
    char *s = malloc(size + 1);   /* exactly the string: ASan sees any overread */
    FUZZ_CHECK(s);
    memcpy(s, data, size);
    s[size] = '\0';

    int64_t ms = -12345, want = -1;
    int rc = config_parse_duration(s, &ms);
    int ref = reference_duration(s, &want);
    if (rc != ref || (rc == 0 && ms != want)) {
        fprintf(stderr, "duration \"%s\": parse %d (%" PRId64 "), reference %d (%" PRId64 ")\n",
                s, rc, ms, ref, want);
        FUZZ_CHECK(!"config_parse_duration disagrees with the grammar");
    }
    if (rc != 0)
        FUZZ_CHECK(ms == -12345);             /* untouched on failure */
    else
        FUZZ_CHECK(ms > 0);

    int minutes = -1;
    if (config_parse_clock(s, &minutes) == 0) {
        char back[8];
        FUZZ_CHECK(minutes >= 0 && minutes < 24 * 60);
        snprintf(back, sizeof back, "%02d:%02d", minutes / 60, minutes % 60);
        FUZZ_CHECK(strcmp(back, s) == 0);
    } else {
        FUZZ_CHECK(minutes == -1);
    }
    FUZZ_CHECK(config_parse_duration(NULL, &ms) == -1);
    FUZZ_CHECK(config_parse_clock(NULL, &minutes) == -1);
    free(s);
    return 0;
}

/*
 * unit.h: the whole unit-test framework (one header, no library).
 *
 *   TEST(name) { CHECK(x == 1); CHECK_EQ_INT(a, b); CHECK_EQ_STR(s, "x"); }
 *   int main(void) { RUN(name); ...; return unit_done("test_x"); }
 *
 * Each binary ends with "# test_x: P passed, F failed"; tests/run.sh adds the
 * figures of every suite into the final "N passed, N failed" line.
 */
#ifndef CAPGATE_UNIT_H
#define CAPGATE_UNIT_H

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

static int unit_passed, unit_failed, unit_current_failed;

#define TEST(name) static void name(void)

#define CHECK(cond) do { \
    if (!(cond)) { \
        printf("    %s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); \
        unit_current_failed = 1; \
    } } while (0)

#define CHECK_EQ_INT(a, b) do { \
    long long va_ = (long long)(a), vb_ = (long long)(b); \
    if (va_ != vb_) { \
        printf("    %s:%d: %s == %s failed: %lld != %lld\n", __FILE__, __LINE__, \
               #a, #b, va_, vb_); \
        unit_current_failed = 1; \
    } } while (0)

#define CHECK_EQ_STR(a, b) do { \
    const char *sa_ = (a), *sb_ = (b); \
    if (sa_ == NULL || sb_ == NULL || strcmp(sa_, sb_) != 0) { \
        printf("    %s:%d: %s == %s failed: \"%s\" != \"%s\"\n", __FILE__, __LINE__, \
               #a, #b, sa_ ? sa_ : "(null)", sb_ ? sb_ : "(null)"); \
        unit_current_failed = 1; \
    } } while (0)

#define RUN(name) do { \
    unit_current_failed = 0; \
    name(); \
    if (unit_current_failed) { unit_failed++; printf("FAIL %s\n", #name); } \
    else { unit_passed++; printf("ok   %s\n", #name); } \
    } while (0)

static inline int unit_done(const char *suite)
{
    printf("# %s: %d passed, %d failed\n", suite, unit_passed, unit_failed);
    return unit_failed ? 1 : 0;
}

#endif

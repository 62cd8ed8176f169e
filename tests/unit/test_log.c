/* Unit tests: the logger's formatting and quoting (src/log.c). */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "capgate/log.h"
#include "unit.h"

static char line[2048];

__attribute__((format(printf, 2, 3)))
static const char *fmt(const char *msg, const char *f, ...)
{
    va_list ap;
    va_start(ap, f);
    log_format(line, sizeof line, msg, f, ap);
    va_end(ap);
    return line;
}

TEST(plain_values_stay_bare_and_msg_is_quoted)
{
    CHECK_EQ_STR(fmt("listening", "addr=%s workers=%d", "127.0.0.1:8425", 2),
                 "msg=\"listening\" addr=127.0.0.1:8425 workers=2");
}

TEST(values_that_need_it_are_quoted_and_escaped)
{
    CHECK_EQ_STR(fmt("x", "error=%s", "ERR \"bad\" a=b\\c"),
                 "msg=\"x\" error=\"ERR \\\"bad\\\" a=b\\\\c\"");
    CHECK_EQ_STR(fmt("x", "v=%s", ""), "msg=\"x\" v=\"\"");
    CHECK_EQ_STR(fmt("x", "v=%s", "line1\nline2\r\t\x01"), "msg=\"x\" v=\"line1\\nline2\\r\\t\\u0001\"");
    CHECK_EQ_STR(fmt("say \"hi\"", NULL), "msg=\"say \\\"hi\\\"\"");
}

TEST(precision_and_numbers)
{
    CHECK_EQ_STR(fmt("x", "e=%.3s n=%u big=%llu z=%zu l=%ld f=%.3f h=%x",
                     "abcdef", 7u, 18446744073709551615ull, (size_t)42, -5L, 1.5, 255u),
                 "msg=\"x\" e=abc n=7 big=18446744073709551615 z=42 l=-5 f=1.500 h=ff");
    CHECK_EQ_STR(fmt("x", "p=%.*s q=%%", 2, "xyz"), "msg=\"x\" p=xy q=%");
    const char *volatile none = NULL;      /* (the logger writes (null), as glibc does) */
    CHECK_EQ_STR(fmt("x", "s=%s", none), "msg=\"x\" s=(null)");
}

__attribute__((format(printf, 4, 5)))
static size_t fmt_into(char *out, size_t size, const char *msg, const char *f, ...)
{
    va_list ap;
    va_start(ap, f);
    size_t n = log_format(out, size, msg, f, ap);
    va_end(ap);
    return n;
}

TEST(long_lines_are_cut_not_overrun)
{
    char big[4000];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    CHECK(strlen(fmt("x", "v=%s", big)) < sizeof line);
    struct { char b[16]; char guard[8]; } g;
    memset(&g, 'G', sizeof g);
    size_t n = fmt_into(g.b, sizeof g.b, "message", "v=%s w=%d", "a value \"quoted\"", 12345);
    CHECK(n < sizeof g.b);
    CHECK_EQ_INT(strlen(g.b), n);
    CHECK(memcmp(g.guard, "GGGGGGGG", 8) == 0);
}

/* What log_write writes to stderr for one call: stderr is a temporary file
 * for the while. */
static char written[8192];

static const char *capture_long(enum log_format format)
{
    char big[3000];
    for (size_t k = 0; k < sizeof big - 1; k++)
        big[k] = k % 3 ? 'a' : '"';       /* every third byte needs an escape */
    big[sizeof big - 1] = '\0';
    FILE *tmp = tmpfile();
    int saved = dup(STDERR_FILENO);
    dup2(fileno(tmp), STDERR_FILENO);
    log_set_format(format);
    log_write(LOG_LEVEL_ERROR, "redis error", "first=%s error=%s", "ok", big);
    log_set_format(LOG_FORMAT_LOGFMT);
    dup2(saved, STDERR_FILENO);
    close(saved);
    rewind(tmp);
    size_t n = fread(written, 1, sizeof written - 1, tmp);
    written[n] = '\0';
    fclose(tmp);
    return written;
}

TEST(a_cut_line_keeps_whole_pairs_and_says_so)
{
    /* Cut inside error="...": the value would lose its closing quote and a
     * logfmt parser the whole line.  The line keeps first=ok and says
     * truncated=true instead. */
    const char *l = capture_long(LOG_FORMAT_LOGFMT);
    CHECK(strstr(l, " first=ok truncated=true\n") != NULL);
    CHECK(strstr(l, "error=") == NULL);
    CHECK(strncmp(l, "ts=", 3) == 0);
}

TEST(json_lines_are_one_object_each)
{
    const char *l = capture_long(LOG_FORMAT_JSON);
    CHECK(strncmp(l, "{\"ts\":\"", 7) == 0);
    CHECK(strstr(l, ",\"level\":\"error\",\"msg\":\"redis error\",\"first\":\"ok\","
                    "\"truncated\":\"true\"}\n") != NULL);
}

int main(void)
{
    RUN(plain_values_stay_bare_and_msg_is_quoted);
    RUN(values_that_need_it_are_quoted_and_escaped);
    RUN(precision_and_numbers);
    RUN(long_lines_are_cut_not_overrun);
    RUN(a_cut_line_keeps_whole_pairs_and_says_so);
    RUN(json_lines_are_one_object_each);
    return unit_done("test_log");
}

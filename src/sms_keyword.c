/* sms_keyword: the standard SMS keywords recognised.  See sms_keyword.h. */
#include "capgate/sms_keyword.h"

#include <stdbool.h>
#include <string.h>

/* Longer than the longest keyword ("unsubscribe"): a text that does not
 * fit is no keyword, so nothing longer is ever looked at. */
#define WORD_MAX 16

static bool blank(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

enum sms_keyword sms_keyword_of(const char *text, size_t len)
{
    static const struct {
        const char *word;
        enum sms_keyword k;
    } words[] = {
        { "stop", SMS_KEYWORD_STOP }, { "stopall", SMS_KEYWORD_STOP },
        { "unsubscribe", SMS_KEYWORD_STOP }, { "cancel", SMS_KEYWORD_STOP },
        { "end", SMS_KEYWORD_STOP }, { "quit", SMS_KEYWORD_STOP },
        { "revoke", SMS_KEYWORD_STOP }, { "optout", SMS_KEYWORD_STOP },
        { "opt out", SMS_KEYWORD_STOP },
        { "start", SMS_KEYWORD_START }, { "unstop", SMS_KEYWORD_START },
        { "help", SMS_KEYWORD_HELP }, { "info", SMS_KEYWORD_HELP },
    };
    if (!text)
        return SMS_KEYWORD_NONE;
    const unsigned char *s = (const unsigned char *)text, *e = s + len;
    while (s < e && blank(*s))
        s++;
    while (e > s && blank(e[-1]))
        e--;
    /* One closing mark, and the blanks before it ("stop ." is still stop). */
    if (e > s && (e[-1] == '.' || e[-1] == '!')) {
        e--;
        while (e > s && blank(e[-1]))
            e--;
    }
    /* Lower-cased, each inner run of blanks as one space, into W. */
    char w[WORD_MAX];
    size_t n = 0;
    for (const unsigned char *p = s; p < e; p++) {
        if (n == sizeof w)
            return SMS_KEYWORD_NONE;
        if (blank(*p)) {
            if (w[n - 1] != ' ')      /* n > 0: S starts with no blank */
                w[n++] = ' ';
            continue;
        }
        /* Only ASCII letters make a keyword: a NUL, a digit or a letter
         * outside ASCII cannot be folded into one. */
        unsigned char c = *p | 0x20;
        if (c < 'a' || c > 'z')
            return SMS_KEYWORD_NONE;
        w[n++] = (char)c;
    }
    for (size_t k = 0; k < sizeof words / sizeof words[0]; k++)
        if (strlen(words[k].word) == n && memcmp(words[k].word, w, n) == 0)
            return words[k].k;
    return SMS_KEYWORD_NONE;
}

const char *sms_keyword_name(enum sms_keyword k)
{
    switch (k) {
    case SMS_KEYWORD_STOP:
        return "stop";
    case SMS_KEYWORD_START:
        return "start";
    case SMS_KEYWORD_HELP:
        return "help";
    case SMS_KEYWORD_NONE:
        break;
    }
    return NULL;
}

/*
 * sms_keyword: the carriers' standard keywords in a text a person sent
 * (CTIA's opt-out, opt-in and help words), recognised the way people type
 * them.  Pure: the text is only read, never copied, kept or logged -- it is
 * the person's own words.
 *
 * A keyword is the whole message, ASCII case-insensitive, with surrounding
 * whitespace and one trailing "." or "!" tolerated ("Stop.", " STOP ");
 * "OPT OUT" may have any run of whitespace between its words.  Anything
 * more ("stop it", "STOP?", "please stop texting me") is no keyword: a
 * sentence is for a person to read, and a question mark turns START into a
 * question, which must not opt anyone in.
 *
 *   stop   STOP STOPALL UNSUBSCRIBE CANCEL END QUIT REVOKE OPTOUT "OPT OUT"
 *   start  START UNSTOP   (not YES: it answers too many other questions)
 *   help   HELP INFO
 */
#ifndef CAPGATE_SMS_KEYWORD_H
#define CAPGATE_SMS_KEYWORD_H

#include <stddef.h>

enum sms_keyword { SMS_KEYWORD_NONE, SMS_KEYWORD_STOP, SMS_KEYWORD_START, SMS_KEYWORD_HELP };

/* The keyword TEXT (LEN bytes, any bytes, NULs included) is, or NONE. */
enum sms_keyword sms_keyword_of(const char *text, size_t len);

/* "stop", "start", "help"; NULL for SMS_KEYWORD_NONE. */
const char *sms_keyword_name(enum sms_keyword k);

#endif

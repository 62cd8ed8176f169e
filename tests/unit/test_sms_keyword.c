/* Unit tests: the SMS keywords (src/sms_keyword.c). */
#include "capgate/sms_keyword.h"
#include "unit.h"

#define KW(s) sms_keyword_of(s, sizeof s - 1)

TEST(every_standard_keyword)
{
    static const char *const stop[] = { "STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END",
                                        "QUIT", "REVOKE", "OPTOUT", "OPT OUT" };
    for (size_t k = 0; k < sizeof stop / sizeof stop[0]; k++)
        CHECK_EQ_INT(sms_keyword_of(stop[k], strlen(stop[k])), SMS_KEYWORD_STOP);
    CHECK_EQ_INT(KW("START"), SMS_KEYWORD_START);
    CHECK_EQ_INT(KW("UNSTOP"), SMS_KEYWORD_START);
    CHECK_EQ_INT(KW("HELP"), SMS_KEYWORD_HELP);
    CHECK_EQ_INT(KW("INFO"), SMS_KEYWORD_HELP);
}

TEST(the_way_people_type_them)
{
    CHECK_EQ_INT(KW("stop"), SMS_KEYWORD_STOP);
    CHECK_EQ_INT(KW("Stop"), SMS_KEYWORD_STOP);
    CHECK_EQ_INT(KW("sToP"), SMS_KEYWORD_STOP);
    CHECK_EQ_INT(KW("stop."), SMS_KEYWORD_STOP);
    CHECK_EQ_INT(KW("STOP!"), SMS_KEYWORD_STOP);
    CHECK_EQ_INT(KW(" Stop "), SMS_KEYWORD_STOP);
    CHECK_EQ_INT(KW("\r\n\tstop .\n"), SMS_KEYWORD_STOP);
    CHECK_EQ_INT(KW("Opt  Out!"), SMS_KEYWORD_STOP);
    CHECK_EQ_INT(KW("opt\nout"), SMS_KEYWORD_STOP);
    CHECK_EQ_INT(KW("Unstop."), SMS_KEYWORD_START);
    CHECK_EQ_INT(KW("start!"), SMS_KEYWORD_START);
    CHECK_EQ_INT(KW(" help "), SMS_KEYWORD_HELP);
}

TEST(anything_else_is_no_keyword)
{
    CHECK_EQ_INT(sms_keyword_of(NULL, 0), SMS_KEYWORD_NONE);
    CHECK_EQ_INT(KW(""), SMS_KEYWORD_NONE);
    CHECK_EQ_INT(KW("   "), SMS_KEYWORD_NONE);
    CHECK_EQ_INT(KW("."), SMS_KEYWORD_NONE);
    CHECK_EQ_INT(KW("please stop texting me"), SMS_KEYWORD_NONE);
    CHECK_EQ_INT(KW("stop it"), SMS_KEYWORD_NONE);
    CHECK_EQ_INT(KW("stop stop"), SMS_KEYWORD_NONE);
    CHECK_EQ_INT(KW("STOP?"), SMS_KEYWORD_NONE);      /* a question opts no one in or out */
    CHECK_EQ_INT(KW("start?"), SMS_KEYWORD_NONE);
    CHECK_EQ_INT(KW("stop.."), SMS_KEYWORD_NONE);     /* one mark */
    CHECK_EQ_INT(KW("stop!."), SMS_KEYWORD_NONE);
    CHECK_EQ_INT(KW(".stop"), SMS_KEYWORD_NONE);
    CHECK_EQ_INT(KW("stops"), SMS_KEYWORD_NONE);
    CHECK_EQ_INT(KW("sto"), SMS_KEYWORD_NONE);
    CHECK_EQ_INT(KW("stop all"), SMS_KEYWORD_NONE);
    CHECK_EQ_INT(KW("opt-out"), SMS_KEYWORD_NONE);
    CHECK_EQ_INT(KW("optout out"), SMS_KEYWORD_NONE);
    CHECK_EQ_INT(KW("YES"), SMS_KEYWORD_NONE);        /* not a keyword: it answers anything */
    CHECK_EQ_INT(KW("y"), SMS_KEYWORD_NONE);
    CHECK_EQ_INT(KW("st0p"), SMS_KEYWORD_NONE);
    CHECK_EQ_INT(KW("st\0op"), SMS_KEYWORD_NONE);     /* a NUL does not hide */
    CHECK_EQ_INT(KW("stop\0"), SMS_KEYWORD_NONE);
    CHECK_EQ_INT(KW("\xc5\xbftop"), SMS_KEYWORD_NONE);   /* U+017F folds to "s" elsewhere */
    CHECK_EQ_INT(KW("unsubscribeunsubscribe"), SMS_KEYWORD_NONE);
    /* Letters that fold to a keyword only through their bit pattern. */
    CHECK_EQ_INT(KW("\xd3\xd4\xcf\xd0"), SMS_KEYWORD_NONE);
    CHECK_EQ_INT(KW("STOP@"), SMS_KEYWORD_NONE);
}

TEST(names)
{
    CHECK_EQ_STR(sms_keyword_name(SMS_KEYWORD_STOP), "stop");
    CHECK_EQ_STR(sms_keyword_name(SMS_KEYWORD_START), "start");
    CHECK_EQ_STR(sms_keyword_name(SMS_KEYWORD_HELP), "help");
    CHECK(sms_keyword_name(SMS_KEYWORD_NONE) == NULL);
}

int main(void)
{
    RUN(every_standard_keyword);
    RUN(the_way_people_type_them);
    RUN(anything_else_is_no_keyword);
    RUN(names);
    return unit_done("test_sms_keyword");
}

/* jsonptr: RFC 6901 JSON pointers over jansson values.  See jsonptr.h. */
#include "capgate/jsonptr.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* RFC 6901: "/personalizations/0/to/0/email", with ~1 for '/' and ~0 for '~'. */
json_t *json_pointer(json_t *root, const char *ptr)
{
    json_t *cur = root;
    if (*ptr == '\0')
        return root;
    while (cur && *ptr == '/') {
        char tok[256];
        size_t n = 0;
        ptr++;
        while (*ptr && *ptr != '/' && n < sizeof tok - 1) {
            if (ptr[0] == '~' && (ptr[1] == '0' || ptr[1] == '1')) {
                tok[n++] = ptr[1] == '0' ? '~' : '/';
                ptr += 2;
            } else {
                tok[n++] = *ptr++;
            }
        }
        tok[n] = '\0';
        if (json_is_object(cur)) {
            cur = json_object_get(cur, tok);
        } else if (json_is_array(cur)) {
            /* RFC 6901: digits only, no sign, no leading zero (but "0"). */
            bool digits = *tok && strspn(tok, "0123456789") == strlen(tok) &&
                          (tok[0] != '0' || tok[1] == '\0') && strlen(tok) < 10;
            cur = digits ? json_array_get(cur, strtoul(tok, NULL, 10)) : NULL;
        } else {
            cur = NULL;
        }
    }
    return *ptr ? NULL : cur;
}


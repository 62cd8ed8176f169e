/* receipt: consent changes as receipts.  See receipt.h. */
#include "capgate/receipt.h"

#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "capgate/clock.h"

static const char *const bases[] = { "consent", "soft_opt_in", "contract",
                                     "legitimate_interest", NULL };

bool receipt_basis_known(const char *s)
{
    for (size_t k = 0; s && bases[k]; k++)
        if (strcmp(s, bases[k]) == 0)
            return true;
    return false;
}

void receipt_new_id(char out[RECEIPT_ID_HEX + 1])
{
    unsigned char id[RECEIPT_ID_HEX / 2];
    randombytes_buf(id, sizeof id);
    sodium_bin2hex(out, RECEIPT_ID_HEX + 1, id, sizeof id);
}

void receipt_api_method(const char *source, char out[RECEIPT_METHOD_MAX + 1])
{
    snprintf(out, RECEIPT_METHOD_MAX + 1, "api:%s", source ? source : "");
}

static json_t *str_or_null(const char *s)
{
    return s && *s ? json_string(s) : json_null();
}

json_t *receipt_json(const struct receipt *r)
{
    const char *bar = r->scope ? strchr(r->scope, '|') : NULL;
    if (!bar)
        return NULL;
    char when[32];
    clock_format_rfc3339(when, sizeof when, (time_t)(r->at_ms / 1000));
    /* json_stringn: the channel is the scope up to its bar. */
    return json_pack("{s:s, s:s, s:o, s:s%, s:s, s:s, s:o, s:s, s:s, s:s, s:s, s:s}",
                     "record_id", r->record_id, "principal", r->principal,
                     "controller", str_or_null(r->controller),
                     "channel", r->scope, (size_t)(bar - r->scope), "purpose", bar + 1,
                     "legal_basis", r->legal_basis && *r->legal_basis ? r->legal_basis
                                                                      : RECEIPT_BASIS_DEFAULT,
                     "notice", str_or_null(r->notice), "method", r->method,
                     "state", r->opt_in ? "given" : "withdrawn",
                     "consent_state", r->opt_in ? "opt_in" : "opt_out",
                     "at", when, "schema", RECEIPT_SCHEMA);
}

/*
 * receipt: a consent change as a receipt, shaped after ISO/IEC TS 27560:2023
 * (consent record structure) -- what the person can keep as proof of what
 * they agreed to or withdrew, and when.  Pure: no Redis, no HTTP, no clock
 * (receipt_new_id draws from libsodium's generator, nothing else).
 *
 * Every consent change (POST /v1/consent, an unsubscribe or complaint
 * event, an SMS keyword, a one-click unsubscribe, the preference page) is
 * kept as one history entry by consent.lua; show and export turn each into
 * receipt_json().  A bounce is no consent change (the person withdrew
 * nothing) and has no receipt.
 */
#ifndef CAPGATE_RECEIPT_H
#define CAPGATE_RECEIPT_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define RECEIPT_SCHEMA "ISO/IEC TS 27560:2023 (shaped after)"
#define RECEIPT_ID_HEX 32            /* a record id: 128 random bits in hex */
#define RECEIPT_NOTICE_MAX 128       /* characters of a notice id or version */
#define RECEIPT_METHOD_MAX 160       /* "api:" + a source (requests.h REQ_SOURCE_MAX) */
#define RECEIPT_CONTROLLER_MAX 200   /* privacy.controller */
#define RECEIPT_BASIS_DEFAULT "consent"

/* Whether S names a legal basis capgate knows: consent, soft_opt_in,
 * contract, legitimate_interest. */
bool receipt_basis_known(const char *s);

/* A fresh record id: RECEIPT_ID_HEX hex digits and a NUL into OUT. */
void receipt_new_id(char out[RECEIPT_ID_HEX + 1]);

/* The method of a change from POST /v1/consent: "api:<SOURCE>" into OUT. */
void receipt_api_method(const char *source, char out[RECEIPT_METHOD_MAX + 1]);

/* One receipt.  The strings are borrowed; CONTROLLER and NOTICE may be NULL
 * or "" (null in the JSON). */
struct receipt {
    const char *record_id;
    const char *principal;           /* the pseudonym: never the raw id */
    const char *controller;
    const char *scope;               /* "<channel|*>|<category|*>" */
    const char *legal_basis;
    const char *notice;
    const char *method;
    bool opt_in;
    int64_t at_ms;                   /* Redis's time */
};

/* The receipt as a new JSON object: record_id, principal, controller,
 * channel, purpose (the category or "*"), legal_basis, notice, method,
 * state ("given" / "withdrawn"), consent_state ("opt_in" / "opt_out"), at
 * (RFC 3339, UTC), schema.  NULL when the scope has no '|' or memory runs out. */
json_t *receipt_json(const struct receipt *r);

#endif

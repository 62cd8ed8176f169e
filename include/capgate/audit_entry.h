/*
 * audit_entry: one entry of the audit trail, as the API shows it.
 *
 * In Redis an entry is a stream entry with short field names ("t", "p",
 * "c", ...), or, for a decision, one compact field (see decide.lua):
 *   decide = "<P>|<channel>|<category>|<generation>|<decision>|<reason>|
 *             <rule>|<counted>|<replay>|<shadow>"   (empty parts absent)
 * GET /v1/audit and POST /v1/users/show both spell entries out here.
 */
#ifndef CAPGATE_AUDIT_ENTRY_H
#define CAPGATE_AUDIT_ENTRY_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

struct store_item;

/* Adds the NFIELDS field/value pairs at PAIRS (2 * NFIELDS items) to OBJ
 * under their long names.  "shadow" is the hits "<cap>:<defer|deny>",
 * comma-separated, or with SHADOW_AS_LIST a list of them. */
void audit_entry_fields(json_t *obj, const struct store_item *pairs, size_t nfields,
                        bool shadow_as_list);

#endif

/* audit_entry: an audit stream entry spelled out.  See audit_entry.h. */
#include "capgate/audit_entry.h"

#include <string.h>

#include "capgate/store.h"

/* Short stream field names, spelled out for people. */
static const char *long_name(const char *k, size_t len)
{
    static const char *const map[][2] = {
        { "t", "type" }, { "p", "pseudonym" }, { "c", "channel" }, { "k", "category" },
        { "d", "decision" }, { "r", "reason" }, { "u", "rule" }, { "n", "counted" },
        { "g", "config_generation" }, { "s", "scope" }, { "st", "state" }, { "src", "source" },
        { "e", "event" },
    };
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (strlen(map[i][0]) == len && memcmp(map[i][0], k, len) == 0)
            return map[i][1];
    return NULL;
}

static void set_shadow(json_t *obj, const char *s, size_t len, bool as_list)
{
    if (!as_list) {
        json_object_set_new(obj, "shadow", json_stringn(s, len));
        return;
    }
    json_t *list = json_array();
    for (size_t start = 0; start < len;) {
        const char *comma = memchr(s + start, ',', len - start);
        size_t end = comma ? (size_t)(comma - s) : len;
        if (end > start)
            json_array_append_new(list, json_stringn(s + start, end - start));
        start = end + 1;
    }
    json_object_set_new(obj, "shadow", list);
}

/* The compact decision entry: its parts in order, empty ones left out. */
static void set_decide(json_t *obj, const char *s, size_t len, bool shadow_as_list)
{
    static const char *const parts[] = {
        "pseudonym", "channel", "category", "config_generation", "decision", "reason",
        "rule", "counted", "replay", "shadow",
    };
    json_object_set_new(obj, "type", json_string("decide"));
    size_t start = 0;
    for (size_t k = 0; k < sizeof parts / sizeof parts[0] && start <= len; k++) {
        /* The last part (shadow) may hold no '|'; names never do. */
        const char *bar = memchr(s + start, '|', len - start);
        size_t end = bar && k + 1 < sizeof parts / sizeof parts[0] ? (size_t)(bar - s) : len;
        if (end > start) {
            if (strcmp(parts[k], "shadow") == 0)
                set_shadow(obj, s + start, end - start, shadow_as_list);
            else
                json_object_set_new(obj, parts[k], json_stringn(s + start, end - start));
        }
        start = end + 1;
    }
}

void audit_entry_fields(json_t *obj, const struct store_item *pairs, size_t nfields,
                        bool shadow_as_list)
{
    for (size_t f = 0; f < nfields; f++) {
        const struct store_item *k = &pairs[2 * f], *v = &pairs[2 * f + 1];
        if (k->type != STORE_STR)
            continue;
        if (k->len == 6 && memcmp(k->s, "decide", 6) == 0 && v->type == STORE_STR) {
            set_decide(obj, v->s, v->len, shadow_as_list);
            continue;
        }
        if (k->len == 6 && memcmp(k->s, "shadow", 6) == 0 && v->type == STORE_STR) {
            set_shadow(obj, v->s, v->len, shadow_as_list);
            continue;
        }
        /* Stream values are always strings. */
        json_t *value = v->type == STORE_STR ? json_stringn(v->s, v->len) : json_null();
        const char *name = long_name(k->s, k->len);
        if (name)
            json_object_set_new(obj, name, value);
        else
            json_object_setn_new(obj, k->s, k->len, value);
    }
}

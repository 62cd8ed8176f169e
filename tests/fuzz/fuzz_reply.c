/*
 * fuzz_reply: decoding what Redis answers (src/decision.c, src/delivery.c).
 *
 * The input is text, so that seeds stay readable.  Its first line picks
 * the mode:
 *   S        the rest is hex (other bytes skipped): packed send records for
 *            decision_parse_sends;
 *   B        the rest is a delivery blob (JSON, body in base64) for
 *            delivery_parse, then re-encoded with delivery_blob and parsed
 *            again (it must come back the same);
 *   O        the rest is a sealed value (base64) for pseudonym_open; and,
 *            as plain text, it must survive pseudonym_seal + _open;
 *   anything else: a store reply, one item per line, for
 *            decision_decide_result, decision_release_result and
 *            decision_consent_result.  A digit right after the first
 *            character is the reply status (0 OK, 1 error, 2 unavailable,
 *            3 timeout; default OK).  Item lines:
 *              i<integer>   STORE_INT (saturating)
 *              s<bytes>     STORE_STR: the rest of the line, not NUL-terminated
 *              n            STORE_NIL
 *              a<count>     STORE_ARRAY marker
 * A decision that decodes is then used the way api_decide.c and
 * api_send.c use it (rule names, shadow caps, deliver_at).
 */
#include <errno.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "capgate/config.h"
#include "capgate/decision.h"
#include "capgate/delivery.h"
#include "capgate/pseudonym.h"
#include "capgate/store.h"
#include "fuzz_common.h"

#define ITEMS_MAX 128
#define SENDS_MAX 64
#define NOW_S 1700000000LL

static struct config cfg;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc; (void)argv;
    cfg = fz_config();
    fz_pseudonym();
    return 0;
}

static long long to_ll(const char *s, size_t len)
{
    char buf[32];
    if (len >= sizeof buf)
        len = sizeof buf - 1;
    memcpy(buf, s, len);
    buf[len] = '\0';
    errno = 0;
    return strtoll(buf, NULL, 10);     /* saturates at LLONG_MIN / LLONG_MAX */
}

/* api_decide.c's decide_answer and api_send.c's on_decided, minus I/O. */
static void use_decision(const struct decision *d)
{
    FUZZ_CHECK((unsigned)d->outcome < OUTCOME__COUNT);
    FUZZ_CHECK((unsigned)d->reason < REASON__COUNT);
    FUZZ_CHECK(d->rule == -1 || d->rule == RULE_FATIGUE ||
               (d->rule >= 0 && (size_t)d->rule < cfg.n_caps));
    FUZZ_CHECK(d->retry_after_s >= 0);
    FUZZ_CHECK(d->n_shadow <= SHADOW_MAX);
    const char *rule = decision_rule_name(&cfg, d->rule);
    json_t *body = json_pack("{s:s, s:s}", "decision", decision_outcome_name(d->outcome),
                             "reason", decision_reason_name(d->reason));
    FUZZ_CHECK(body);
    if (rule)
        json_object_set_new(body, "rule", json_string(rule));
    if (d->outcome == OUTCOME_DEFER) {
        json_object_set_new(body, "retry_after", json_integer(d->retry_after_s));
        /* api_send.c: deliver_at = now + retry_after, in UTC. */
        time_t at = (time_t)NOW_S + (time_t)d->retry_after_s;
        struct tm tm;
        char when[32];
        if (gmtime_r(&at, &tm))
            strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    }
    for (size_t k = 0; k < d->n_shadow; k++) {
        FUZZ_CHECK(d->shadow[k].rule >= 0 && (size_t)d->shadow[k].rule < cfg.n_caps);
        FUZZ_CHECK(d->shadow[k].would == OUTCOME_DEFER || d->shadow[k].would == OUTCOME_DENY);
        json_t *s = json_pack("{s:s, s:s}", "rule", cfg.caps[d->shadow[k].rule].name, "would",
                              decision_outcome_name(d->shadow[k].would));
        FUZZ_CHECK(s);
        json_decref(s);
    }
    json_decref(body);
}

static void run_reply(const char *text, size_t len)
{
    struct store_item items[ITEMS_MAX];
    char *owned[ITEMS_MAX];
    size_t n = 0, no = 0;
    struct store_reply r = { .status = STORE_OK };

    const char *end = text + len, *line = memchr(text, '\n', len);
    if (len >= 2 && text[1] >= '0' && text[1] <= '3')
        r.status = (enum store_status)(text[1] - '0');
    if (r.status != STORE_OK)
        r.error = "fuzz";
    for (const char *p = line ? line + 1 : end; p < end && n < ITEMS_MAX;) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (!eol)
            eol = end;
        size_t l = (size_t)(eol - p);
        if (l > 0) {
            switch (p[0]) {
            case 'i':
                items[n++] = (struct store_item){ .type = STORE_INT, .i = to_ll(p + 1, l - 1) };
                break;
            case 's': {
                /* Exactly the bytes, no NUL after them: overreads show. */
                char *s = malloc(l - 1 ? l - 1 : 1);
                FUZZ_CHECK(s);
                memcpy(s, p + 1, l - 1);
                owned[no++] = s;
                items[n++] = (struct store_item){ .type = STORE_STR, .s = s, .len = l - 1 };
                break;
            }
            case 'n':
                items[n++] = (struct store_item){ .type = STORE_NIL };
                break;
            case 'a':
                items[n++] = (struct store_item){ .type = STORE_ARRAY, .i = to_ll(p + 1, l - 1) };
                break;
            default:
                break;
            }
        }
        p = eol + 1;
    }
    /* The items sit at the end of a heap block of exactly N: reading past
     * the reply's last item is caught. */
    struct store_item *heap = malloc((n ? n : 1) * sizeof *heap);
    FUZZ_CHECK(heap);
    memcpy(heap, items, n * sizeof *heap);
    r.n = n;
    r.items = heap;

    struct decision d;
    memset(&d, 0xa5, sizeof d);
    if (decision_decide_result(&r, &cfg, &d) == 0) {
        FUZZ_CHECK(r.status == STORE_OK);
        use_decision(&d);
    }
    int released = decision_release_result(&r);
    FUZZ_CHECK(released >= -1 && released <= 1);
    if (released >= 0)
        FUZZ_CHECK(r.status == STORE_OK && n == 1);
    /* consent.lua answers its time, or {time, legal basis} when it kept
     * a history entry. */
    int64_t at = decision_consent_result(&r);
    if (r.status != STORE_OK || n < 1 || n > 2 || items[0].type != STORE_INT)
        FUZZ_CHECK(at == -1);
    char basis[32];
    memset(basis, 'x', sizeof basis);
    decision_consent_basis(&r, basis);
    FUZZ_CHECK(memchr(basis, '\0', sizeof basis) != NULL);
    if (at == -1 || n != 2)
        FUZZ_CHECK(basis[0] == '\0');

    free(heap);
    for (size_t k = 0; k < no; k++)
        free(owned[k]);
}

static int hexval(int c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
         : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

static void run_sends(const char *text, size_t len)
{
    unsigned char *raw = malloc(len / 2 + 1);
    size_t n = 0;
    int hi = -1;
    FUZZ_CHECK(raw);
    for (size_t k = 0; k < len; k++) {
        int v = hexval((unsigned char)text[k]);
        if (v < 0)
            continue;
        if (hi < 0) {
            hi = v;
        } else {
            raw[n++] = (unsigned char)(hi << 4 | v);
            hi = -1;
        }
    }
    struct send_record recs[SENDS_MAX];
    for (size_t max = 0; max <= SENDS_MAX; max += SENDS_MAX / 4) {
        size_t got = decision_parse_sends((const char *)raw, n, recs, max);
        FUZZ_CHECK(got <= max && got == (n / 16 < max ? n / 16 : max));
        for (size_t k = 0; k < got; k++) {
            FUZZ_CHECK(recs[k].channel_id <= 0x7fff && recs[k].campaign <= 0xffffff);
            (void)decision_channel_by_id(&cfg, recs[k].channel_id);
            (void)decision_category_by_id(&cfg, recs[k].category_id);
            for (size_t c = 0; c < cfg.n_caps; c++)
                (void)decision_cap_counts(&cfg.caps[c], &recs[k]);
        }
    }
    free(raw);
}

static void run_open(const char *text, size_t len)
{
    char *s = malloc(len + 1);
    FUZZ_CHECK(s);
    memcpy(s, text, len);
    s[len] = '\0';
    size_t n = 12345;
    char *plain = pseudonym_open(fz_pseudonym(), s, len, &n);
    if (plain) {                 /* forged: should take 2^-128 luck */
        FUZZ_CHECK(n <= len && plain[n] == '\0');
        free(plain);
    }
    char *sealed = pseudonym_seal(fz_pseudonym(), text, len);
    FUZZ_CHECK(sealed);
    plain = pseudonym_open(fz_pseudonym(), sealed, strlen(sealed), &n);
    FUZZ_CHECK(plain && n == len && memcmp(plain, text, len) == 0 && plain[n] == '\0');
    free(plain);
    free(sealed);
    free(s);
}

static bool same(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

static void run_blob(const char *text, size_t len)
{
    char *blob = malloc(len ? len : 1);      /* as Redis hands it: not NUL-terminated */
    FUZZ_CHECK(blob);
    memcpy(blob, text, len);
    struct message m;
    if (delivery_parse(blob, len, &m, fz_pseudonym()) == 0) {
        FUZZ_CHECK(m.root && m.user && m.message && m.message_id && m.channel && m.category);
        FUZZ_CHECK(m.method && m.body && m.body[m.body_len] == '\0');
        /* What the dispatcher does before forwarding: find the channel. */
        (void)config_channel(&cfg, m.channel);
        size_t alen;
        char *again = delivery_blob(&m, fz_pseudonym(), &alen);
        FUZZ_CHECK(again);
        struct message m2;
        FUZZ_CHECK(delivery_parse(again, alen, &m2, fz_pseudonym()) == 0);
        FUZZ_CHECK(m2.route == m.route && same(m2.user, m.user) && same(m2.message, m.message));
        FUZZ_CHECK(same(m2.message_id, m.message_id) && same(m2.channel, m.channel));
        FUZZ_CHECK(same(m2.category, m.category) && same(m2.campaign, m.campaign));
        FUZZ_CHECK(same(m2.tz, m.tz));
        FUZZ_CHECK(m2.body_len == m.body_len && memcmp(m2.body, m.body, m.body_len) == 0);
        if (m.route)
            FUZZ_CHECK(m.headers ? json_equal(m2.headers, m.headers)
                                 : json_array_size(m2.headers) == 0);
        delivery_clear(&m2);
        free(again);
        delivery_clear(&m);
        FUZZ_CHECK(m.root == NULL && m.body == NULL);
    }
    free(blob);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0 || size > 1 << 16)
        return 0;
    const char *text = (const char *)data;
    const char *nl = memchr(text, '\n', size);
    const char *rest = nl ? nl + 1 : text + size;
    size_t rest_len = size - (size_t)(rest - text);
    if (text[0] == 'S')
        run_sends(rest, rest_len);
    else if (text[0] == 'O')
        run_open(rest, rest_len);
    else if (text[0] == 'B')
        run_blob(rest, rest_len);
    else
        run_reply(text, size);
    return 0;
}

/*
 * config.c: capgate.yaml -> an immutable, validated struct config.
 *
 * The shape follows Redis's config.c: every directive is declared exactly
 * once, in a static table, with its type, bounds, default and (where one is
 * needed) a validator.  A generic walker matches a YAML mapping against a
 * table, so the rules "unknown keys are errors", "required keys must be
 * present" and "absent keys take their default" live in one place instead
 * of being repeated by hand for every key.
 *
 * Loading happens in three steps:
 *   1. read the file and check that it is UTF-8 (libfyaml reports some
 *      encoding errors without a position, and every error needs a line);
 *   2. parse it with libfyaml (syntax errors become "<path>:<line>: ...");
 *   3. walk the document against the tables, filling struct config.
 *
 * Every error reads "<path>:<line>: <key path>: <message>", where the key
 * path is "listen", "redis.timeout_ms", "caps[2].window" (0-based) or
 * "channels.sms.requires_opt_in".  The first error wins and loading stops.
 */
#include "capgate/config.h"
#include "capgate/tz.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <gnutls/gnutls.h>
#include <libfyaml.h>

#define MAX_CAPS          64
#define MAX_CONFIG_BYTES  (1 << 20)   /* a config file is small; refuse junk */
#define KEY_PATH_LEN      256
#define TABLE_MAX         32          /* most directives in one table */
#define REDIS_DB_MAX      1000000     /* Redis "databases" can be raised past 16 */

#define MS_PER_S  1000LL
#define MS_PER_M  (60 * MS_PER_S)
#define MS_PER_H  (60 * MS_PER_M)
#define MS_PER_D  (24 * MS_PER_H)
#define MS_PER_W  (7 * MS_PER_D)

/* ------------------------------------------------------------------------ */
/* Parser state and error reporting                                         */
/* ------------------------------------------------------------------------ */

struct parser {
    const char *file;          /* path exactly as given to config_load */
    char *err;
    size_t errlen;
    struct config *cfg;        /* being filled; validators look things up in it */
    size_t list_index;         /* DT_LIST: the item being parsed (for duplicate checks) */
    char key[KEY_PATH_LEN];    /* key path of the value being parsed */
    size_t keylen;
};

static int fail(struct parser *p, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Formats the error into p->err and returns -1, so callers can write
 * "return fail(...)". */
static int fail(struct parser *p, int line, const char *fmt, ...)
{
    char msg[CONFIG_ERR_LEN];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (p->keylen > 0)
        snprintf(p->err, p->errlen, "%s:%d: %s: %s", p->file, line, p->key, msg);
    else
        snprintf(p->err, p->errlen, "%s:%d: %s", p->file, line, msg);
    return -1;
}

/* Key path maintenance: push returns the old length, pop restores it.  A
 * path that does not fit is truncated; it only ever feeds error messages. */
static size_t push_key(struct parser *p, const char *name, size_t len)
{
    size_t saved = p->keylen;
    int n = snprintf(p->key + p->keylen, sizeof p->key - p->keylen, "%s%.*s",
                     p->keylen ? "." : "", (int)len, name);

    if (n > 0)
        p->keylen += (size_t)n < sizeof p->key - p->keylen ? (size_t)n
                                                           : sizeof p->key - p->keylen - 1;
    return saved;
}

static size_t push_index(struct parser *p, size_t i)
{
    size_t saved = p->keylen;
    int n = snprintf(p->key + p->keylen, sizeof p->key - p->keylen, "[%zu]", i);

    if (n > 0)
        p->keylen += (size_t)n < sizeof p->key - p->keylen ? (size_t)n
                                                           : sizeof p->key - p->keylen - 1;
    return saved;
}

static void pop_key(struct parser *p, size_t saved)
{
    p->keylen = saved;
    p->key[saved] = '\0';
}

/* A value quoted for an error message: control characters escaped, so a
 * stray byte cannot garble a log line, and long values cut short. */
struct qbuf { char s[96]; };

static const char *quote(struct qbuf *q, const char *s)
{
    size_t o = 0;

    q->s[o++] = '"';
    for (; *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;

        if (o + 8 >= sizeof q->s) {     /* room for "...\"" and the NUL */
            memcpy(q->s + o, "...", 3);
            o += 3;
            break;
        }
        if (c == '"' || c == '\\') {
            q->s[o++] = '\\';
            q->s[o++] = (char)c;
        } else if (c < 0x20 || c == 0x7f) {
            o += (size_t)snprintf(q->s + o, sizeof q->s - o, "\\x%02x", c);
        } else {
            q->s[o++] = (char)c;
        }
    }
    q->s[o++] = '"';
    q->s[o] = '\0';
    return q->s;
}

/* ------------------------------------------------------------------------ */
/* Scalar syntax shared by the loader and the public helpers               */
/* ------------------------------------------------------------------------ */

static bool all_digits(const char *s, size_t len)
{
    if (len == 0)
        return false;
    for (size_t i = 0; i < len; i++)
        if (s[i] < '0' || s[i] > '9')
            return false;
    return true;
}

/* "-?[0-9]+" that fits int64_t.  Returns 0, -1 (not an integer) or -2
 * (an integer, but too large for int64_t). */
static int parse_int64(const char *s, int64_t *out)
{
    bool neg = *s == '-';
    const char *d = s + neg;
    uint64_t v = 0;
    uint64_t lim = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;

    if (!all_digits(d, strlen(d)))
        return -1;
    for (; *d != '\0'; d++) {
        unsigned digit = (unsigned)(*d - '0');

        if (v > (lim - digit) / 10)
            return -2;
        v = v * 10 + digit;
    }
    *out = neg ? (v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v) : (int64_t)v;
    return 0;
}

int config_parse_duration(const char *s, int64_t *ms)
{
    static const struct { const char *unit; int64_t ms; } units[] = {
        { "ms", 1 }, { "s", MS_PER_S }, { "m", MS_PER_M },
        { "h", MS_PER_H }, { "d", MS_PER_D }, { "w", MS_PER_W },
    };
    int64_t n = 0;
    const char *u = s;

    if (s == NULL || ms == NULL)
        return -1;
    /* Digits only: no sign, no spaces, no fraction, at least one digit. */
    for (; *u >= '0' && *u <= '9'; u++) {
        if (n > (INT64_MAX - (*u - '0')) / 10)
            return -1;
        n = n * 10 + (*u - '0');
    }
    if (u == s || n == 0)
        return -1;
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (strcmp(u, units[i].unit) == 0) {
            if (n > INT64_MAX / units[i].ms)
                return -1;
            *ms = n * units[i].ms;
            return 0;
        }
    }
    return -1;      /* no unit, unknown unit, or trailing junk */
}

int config_parse_clock(const char *s, int *minutes)
{
    int h, m;

    if (s == NULL || minutes == NULL || strlen(s) != 5 || s[2] != ':' ||
        !all_digits(s, 2) || !all_digits(s + 3, 2))
        return -1;
    h = (s[0] - '0') * 10 + (s[1] - '0');
    m = (s[3] - '0') * 10 + (s[4] - '0');
    if (h > 23 || m > 59)
        return -1;
    *minutes = h * 60 + m;
    return 0;
}

/* Writes a duration back in its largest exact unit, for range messages. */
static const char *format_duration(char *buf, size_t len, int64_t ms)
{
    static const struct { const char *unit; int64_t ms; } units[] = {
        { "d", MS_PER_D }, { "h", MS_PER_H }, { "m", MS_PER_M }, { "s", MS_PER_S },
    };

    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (ms % units[i].ms == 0) {
            snprintf(buf, len, "%" PRId64 "%s", ms / units[i].ms, units[i].unit);
            return buf;
        }
    }
    snprintf(buf, len, "%" PRId64 "ms", ms);
    return buf;
}

/* ------------------------------------------------------------------------ */
/* libfyaml node helpers                                                    */
/* ------------------------------------------------------------------------ */

static int token_line(struct fy_token *t, int fallback)
{
    const struct fy_mark *m = t ? fy_token_start_mark(t) : NULL;

    return m ? m->line + 1 : fallback;
}

/*
 * 1-based line of a node.  libfyaml 0.7.12 has no public start mark for
 * collections, so a mapping or sequence reports the line of its first
 * scalar; an empty one (or an empty scalar, which has no token) reports
 * FALLBACK, normally the line of the key that holds it.
 */
static int node_line(struct fy_node *n, int fallback)
{
    void *it = NULL;

    if (n == NULL)
        return fallback;
    switch (fy_node_get_type(n)) {
    case FYNT_SCALAR:
        return token_line(fy_node_get_scalar_token(n), fallback);
    case FYNT_MAPPING: {
        struct fy_node_pair *pair = fy_node_mapping_iterate(n, &it);

        return pair ? node_line(fy_node_pair_key(pair), fallback) : fallback;
    }
    case FYNT_SEQUENCE:
        return node_line(fy_node_sequence_iterate(n, &it), fallback);
    }
    return fallback;
}

/* YAML's null: a missing value, "~", "null", "Null" or "NULL", unquoted. */
static bool is_null(struct fy_node *n)
{
    size_t len;
    const char *s;

    if (n == NULL)
        return true;
    if (!fy_node_is_scalar(n) || fy_node_get_style(n) != FYNS_PLAIN)
        return false;
    s = fy_node_get_scalar(n, &len);
    if (s == NULL || len == 0)
        return true;
    return (len == 1 && s[0] == '~') ||
           (len == 4 && (memcmp(s, "null", 4) == 0 || memcmp(s, "Null", 4) == 0 ||
                         memcmp(s, "NULL", 4) == 0));
}

static const char *kind_of(struct fy_node *n)
{
    if (is_null(n))
        return "null";
    if (fy_node_is_mapping(n))
        return "a mapping";
    if (fy_node_is_sequence(n))
        return "a list";
    return "a scalar";
}

/* Explicit tags (!!str 5, !foo) would let a value dodge the type rules; a
 * config file has no use for them. */
static int check_untagged(struct parser *p, struct fy_node *n, int line)
{
    if (n != NULL && fy_node_get_tag_token(n) != NULL)
        return fail(p, node_line(n, line), "YAML tags are not supported");
    return 0;
}

/* A scalar value with where it was written.  Defaults are run through the
 * same conversions as written values, as unquoted scalars. */
struct scalar {
    const char *s;      /* NUL-terminated; owned by the document or the table */
    bool plain;         /* unquoted: the only form integers and booleans take */
    int line;
};

static int get_scalar(struct parser *p, struct fy_node *n, int line, const char *want,
                      struct scalar *out)
{
    size_t len;
    const char *s;

    if (check_untagged(p, n, line))
        return -1;
    if (is_null(n) || !fy_node_is_scalar(n))
        return fail(p, node_line(n, line), "expected %s, got %s", want, kind_of(n));
    out->line = node_line(n, line);
    s = fy_node_get_scalar0(n);
    if (s == NULL || fy_node_get_scalar(n, &len) == NULL)
        return fail(p, out->line, "out of memory");
    if (strlen(s) != len)       /* "\0" in a double-quoted scalar */
        return fail(p, out->line, "value contains a NUL character");
    out->s = s;
    out->plain = fy_node_get_style(n) == FYNS_PLAIN;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* The directive tables: types                                              */
/* ------------------------------------------------------------------------ */

enum dtype {
    DT_STRING,      /* char *, any non-empty scalar */
    DT_INT,         /* unquoted integer in [min, max] */
    DT_BOOL,        /* unquoted true or false */
    DT_ENUM,        /* one of .choices */
    DT_DURATION,    /* "30s" etc. in [min, max] ms */
    DT_CLOCK,       /* "HH:MM" -> minutes after midnight */
    DT_SECTION,     /* nested mapping described by .sub */
    DT_LIST,        /* a list of mappings, each described by .sub: an array
                       of .item_size at .off, its length at .count_off, at
                       most .max items (at least .min) */
    DT_CUSTOM,      /* anything else: .parse does the work */
};

/* How a converted value is written into its field. */
enum dstore { ST_NONE, ST_BOOL, ST_INT, ST_UNSIGNED, ST_SIZE, ST_I64, ST_STR, ST_ENUM };

#define D_REQUIRED  0x1u    /* absent is an error */
#define D_OPTIONAL  0x2u    /* DT_SECTION: absent leaves the fields alone */
#define D_SECONDS   0x4u    /* DT_DURATION: store whole seconds, not ms */

/* The store kind follows from the field's C type, so a table entry cannot
 * name an int field and write a size_t into it. */
#define STORE_OF(x) _Generic((x), bool: ST_BOOL, int: ST_INT, unsigned: ST_UNSIGNED, \
                             size_t: ST_SIZE, int64_t: ST_I64, char *: ST_STR, \
                             default: ST_NONE)
#define FIELD(T, f)      .off = offsetof(T, f), .store = STORE_OF(((T *)0)->f)
/* Enums are stored as int; see the static assertions below. */
#define ENUM_FIELD(T, f) .off = offsetof(T, f), .store = ST_ENUM

_Static_assert(sizeof(enum log_level) == sizeof(int), "enum stored as int");
_Static_assert(sizeof(enum log_format) == sizeof(int), "enum stored as int");
_Static_assert(sizeof(enum cap_per) == sizeof(int), "enum stored as int");
_Static_assert(sizeof(enum cap_action) == sizeof(int), "enum stored as int");
_Static_assert(sizeof(enum over_rate) == sizeof(int), "enum stored as int");
/* parse_groups() writes the name through the first member. */
_Static_assert(offsetof(struct cfg_channel, name) == 0, "name first");
_Static_assert(offsetof(struct cfg_category, name) == 0, "name first");

struct choice {
    const char *name;
    int value;
};

/* Runs after a value (or its default, or its absence) has been stored.
 * BASE is the struct the table describes (for DT_SECTION, the section's
 * own struct); LINE is that of the value. */
typedef int (*check_fn)(struct parser *p, void *base, int line);
/* DT_CUSTOM: PRESENT tells "key absent" from "key: (null)". */
typedef int (*parse_fn)(struct parser *p, void *base, bool present, struct fy_node *v,
                        int line);

struct directive {
    const char *name;
    enum dtype type;
    unsigned flags;
    size_t off;                     /* field (or sub-struct) offset in BASE */
    enum dstore store;
    int64_t min, max;               /* DT_INT bounds; DT_DURATION bounds in ms */
    const char *def;                /* default, written as in the YAML file */
    const struct choice *choices;   /* DT_ENUM, NULL-terminated */
    const struct directive *sub;    /* DT_SECTION, DT_LIST: the item's */
    size_t item_size, count_off;    /* DT_LIST */
    const char *what;               /* DT_LIST: the items, in errors ("caps") */
    parse_fn parse;                 /* DT_CUSTOM */
    check_fn check;                 /* validator, optional */
};

/* ------------------------------------------------------------------------ */
/* Storing converted values                                                 */
/* ------------------------------------------------------------------------ */

static void store_int(void *field, enum dstore store, int64_t v)
{
    switch (store) {
    case ST_BOOL:     *(bool *)field = v != 0; break;
    case ST_INT:      *(int *)field = (int)v; break;
    case ST_UNSIGNED: *(unsigned *)field = (unsigned)v; break;
    case ST_SIZE:     *(size_t *)field = (size_t)v; break;
    case ST_I64:      *(int64_t *)field = v; break;
    case ST_ENUM: {
        int e = (int)v;

        memcpy(field, &e, sizeof e);
        break;
    }
    case ST_NONE:
    case ST_STR:
        abort();    /* a table bug, caught by the first test run */
    }
}

static const char *choice_list(char *buf, size_t len, const struct choice *c)
{
    size_t o = 0;

    buf[0] = '\0';
    for (; c->name != NULL && o < len; c++)
        o += (size_t)snprintf(buf + o, len - o, "%s%s", o ? "|" : "", c->name);
    return buf;
}

/* Converts V according to D and stores it into BASE. */
static int set_value(struct parser *p, const struct directive *d, void *base,
                     const struct scalar *v)
{
    void *field = (char *)base + d->off;
    struct qbuf qb;
    int64_t n;
    int rc;

    switch (d->type) {
    case DT_STRING: {
        char **sp = field;

        if (v->s[0] == '\0')
            return fail(p, v->line, "must not be empty");
        free(*sp);
        if ((*sp = strdup(v->s)) == NULL)
            return fail(p, v->line, "out of memory");
        return 0;
    }
    case DT_INT:
        if (!v->plain)
            return fail(p, v->line, "expected an integer, got a quoted string %s",
                        quote(&qb, v->s));
        rc = parse_int64(v->s, &n);
        if (rc == -1)
            return fail(p, v->line, "expected an integer, got %s", quote(&qb, v->s));
        if (rc == -2 || n < d->min || n > d->max)
            return fail(p, v->line, "%s out of range (%" PRId64 "..%" PRId64 ")",
                        v->s, d->min, d->max);
        store_int(field, d->store, n);
        return 0;
    case DT_BOOL:
        if (v->plain && strcmp(v->s, "true") == 0)
            n = 1;
        else if (v->plain && strcmp(v->s, "false") == 0)
            n = 0;
        else
            return fail(p, v->line, "expected true or false, got %s%s",
                        v->plain ? "" : "a quoted string ", quote(&qb, v->s));
        store_int(field, d->store, n);
        return 0;
    case DT_ENUM: {
        char list[128];

        for (const struct choice *c = d->choices; c->name != NULL; c++) {
            if (strcmp(c->name, v->s) == 0) {
                store_int(field, d->store, c->value);
                return 0;
            }
        }
        return fail(p, v->line, "expected one of %s, got %s",
                    choice_list(list, sizeof list, d->choices), quote(&qb, v->s));
    }
    case DT_DURATION: {
        char lo[32], hi[32];
        const char *digits = v->s + (v->s[0] == '-');

        if (all_digits(digits, strlen(digits)))
            return fail(p, v->line, "duration needs a unit (ms, s, m, h, d or w), got %s",
                        quote(&qb, v->s));
        if (config_parse_duration(v->s, &n) < 0)
            return fail(p, v->line, "bad duration %s", quote(&qb, v->s));
        if (n < d->min || n > d->max)
            return fail(p, v->line, "duration %s out of range (%s..%s)", quote(&qb, v->s),
                        format_duration(lo, sizeof lo, d->min),
                        format_duration(hi, sizeof hi, d->max));
        if (d->flags & D_SECONDS) {
            if (n % MS_PER_S != 0)
                return fail(p, v->line, "duration %s is not a whole number of seconds",
                            quote(&qb, v->s));
            n /= MS_PER_S;
        }
        store_int(field, d->store, n);
        return 0;
    }
    case DT_CLOCK: {
        int minutes;

        if (config_parse_clock(v->s, &minutes) < 0)
            return fail(p, v->line, "bad time %s (want HH:MM, 00:00..23:59)",
                        quote(&qb, v->s));
        store_int(field, d->store, minutes);
        return 0;
    }
    case DT_SECTION:
    case DT_LIST:
    case DT_CUSTOM:
        break;
    }
    abort();    /* sections, lists and custom directives never get here */
}

static const char *want_of(const struct directive *d, char *buf, size_t len)
{
    char list[128];

    switch (d->type) {
    case DT_STRING:   return "a string";
    case DT_INT:      return "an integer";
    case DT_BOOL:     return "true or false";
    case DT_DURATION: return "a duration";
    case DT_CLOCK:    return "a time (HH:MM)";
    case DT_ENUM:
        snprintf(buf, len, "one of %s", choice_list(list, sizeof list, d->choices));
        return buf;
    case DT_SECTION:
    case DT_LIST:
    case DT_CUSTOM:
        break;
    }
    return "a value";
}

/* ------------------------------------------------------------------------ */
/* The table walker                                                         */
/* ------------------------------------------------------------------------ */

static int parse_section(struct parser *p, const struct directive *table, void *base,
                         struct fy_node *map, int line);

/* A DT_LIST's value V (absent when !PRESENT; null or [] mean no items): each
 * item a mapping parsed with D->sub; its check (on the list's directive)
 * runs per item, with p->list_index saying which. */
static int parse_list(struct parser *p, const struct directive *d, void *base, bool present,
                      struct fy_node *v, int line)
{
    void **items = (void **)((char *)base + d->off);
    size_t *count = (size_t *)((char *)base + d->count_off);
    struct fy_node *item;
    void *it = NULL;
    size_t n = 0;

    if (present && check_untagged(p, v, line))
        return -1;
    if (present && !is_null(v)) {
        if (!fy_node_is_sequence(v))
            return fail(p, node_line(v, line), "expected a list of %s, got %s", d->what,
                        kind_of(v));
        n = (size_t)fy_node_sequence_item_count(v);
    }
    if ((int64_t)n < d->min)
        return fail(p, present ? node_line(v, line) : line, "expected at least %" PRId64 " %s",
                    d->min, d->what);
    if ((int64_t)n > d->max)
        return fail(p, line, "too many %s (%zu, max %" PRId64 ")", d->what, n, d->max);
    if (n == 0)
        return 0;
    if ((*items = calloc(n, d->item_size)) == NULL)
        return fail(p, line, "out of memory");
    *count = n;
    for (p->list_index = 0; (item = fy_node_sequence_iterate(v, &it)) != NULL; p->list_index++) {
        int iline = node_line(item, line);
        size_t saved = push_index(p, p->list_index);
        void *one = (char *)*items + p->list_index * d->item_size;

        if (check_untagged(p, item, iline))
            return -1;
        if (is_null(item) || !fy_node_is_mapping(item))
            return fail(p, iline, "expected a mapping, got %s", kind_of(item));
        if (parse_section(p, d->sub, one, item, iline) || (d->check && d->check(p, one, iline)))
            return -1;
        pop_key(p, saved);
    }
    return 0;
}

/* One directive: PAIR is its key/value in the file, NULL when absent.
 * LINE is that of the enclosing mapping, for absent keys. */
static int parse_directive(struct parser *p, const struct directive *d, void *base,
                           struct fy_node_pair *pair, int line)
{
    struct fy_node *v = pair ? fy_node_pair_value(pair) : NULL;
    int kline = pair ? node_line(fy_node_pair_key(pair), line) : line;
    int vline = kline;
    void *checked = base;       /* what d->check gets */

    if (pair == NULL && (d->flags & D_REQUIRED))
        return fail(p, line, "missing required key");

    switch (d->type) {
    case DT_SECTION:
        if (pair == NULL && (d->flags & D_OPTIONAL))
            return 0;
        /* An absent section is parsed as {} so that its defaults apply. */
        checked = (char *)base + d->off;
        if (parse_section(p, d->sub, checked, v, kline))
            return -1;
        break;
    case DT_LIST:
        /* (Its check ran per item.) */
        return parse_list(p, d, base, pair != NULL, v, kline);
    case DT_CUSTOM:
        if (d->parse(p, base, pair != NULL, v, kline))
            return -1;
        break;
    default: {
        struct scalar s;
        char want[160];

        if (pair != NULL) {
            if (get_scalar(p, v, kline, want_of(d, want, sizeof want), &s))
                return -1;
        } else if (d->def != NULL) {
            s = (struct scalar){ .s = d->def, .plain = true, .line = line };
        } else {
            break;      /* optional, no default: the field stays zero/NULL */
        }
        if (set_value(p, d, base, &s))
            return -1;
        vline = s.line;
        break;
    }
    }
    return d->check ? d->check(p, checked, vline) : 0;
}

/*
 * Matches mapping MAP (NULL or null: an empty mapping) against TABLE.
 * Keys are checked in file order, so the first unknown key in the file is
 * the one reported; values are then parsed in table order, so that a
 * directive may rely on those declared before it (caps look up channels,
 * quiet_hours.default_tz needs zoneinfo_dir) whatever order the file uses.
 */
static int parse_section(struct parser *p, const struct directive *table, void *base,
                         struct fy_node *map, int line)
{
    struct fy_node_pair *found[TABLE_MAX] = { NULL };
    size_t n = 0;

    while (table[n].name != NULL)
        n++;
    if (n > TABLE_MAX)
        abort();        /* a table outgrew TABLE_MAX: raise it */
    if (check_untagged(p, map, line))
        return -1;
    if (!is_null(map)) {
        struct fy_node_pair *pair;
        void *it = NULL;

        if (!fy_node_is_mapping(map))
            return fail(p, node_line(map, line), "expected a mapping, got %s", kind_of(map));
        while ((pair = fy_node_mapping_iterate(map, &it)) != NULL) {
            struct fy_node *k = fy_node_pair_key(pair);
            int kline = node_line(k, line);
            const char *name;
            size_t len, i;

            if (k == NULL || !fy_node_is_scalar(k) || fy_node_get_tag_token(k) != NULL ||
                (name = fy_node_get_scalar(k, &len)) == NULL)
                return fail(p, kline, "keys must be plain strings");
            for (i = 0; table[i].name != NULL; i++)
                if (strlen(table[i].name) == len && memcmp(table[i].name, name, len) == 0)
                    break;
            if (table[i].name == NULL) {
                /* No pop: on error loading stops, and the path is spent. */
                push_key(p, name, len);
                return fail(p, kline, "unknown key");
            }
            found[i] = pair;    /* duplicates were already refused by libfyaml */
        }
    }
    for (size_t i = 0; table[i].name != NULL; i++) {
        size_t saved = push_key(p, table[i].name, strlen(table[i].name));
        int rc = parse_directive(p, &table[i], base, found[i], line);

        if (rc)
            return -1;
        pop_key(p, saved);
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Validators and custom parsers                                            */
/* ------------------------------------------------------------------------ */

/* "1..65535", digits only. */
static int parse_port(const char *s, size_t len, int *port)
{
    int v = 0;

    if (len == 0 || len > 5 || !all_digits(s, len))
        return -1;
    for (size_t i = 0; i < len; i++)
        v = v * 10 + (s[i] - '0');
    if (v < 1 || v > 65535)
        return -1;
    *port = v;
    return 0;
}

/* A host name or IPv4 address: letters, digits, '.', '-', '_'. */
static bool valid_host_name(const char *s, size_t len)
{
    if (len == 0 || len > 253)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];

        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '-' || c == '_'))
            return false;
    }
    return true;
}

/* What is wrong with a host:port (host_port). */
enum host_port_error {
    HP_OK,
    HP_SHAPE,           /* no port where one is needed, or ] not followed by : */
    HP_PORT,            /* not 1..65535 */
    HP_IPV6,            /* [..] that is not an IPv6 address, or no closing ] */
    HP_UNBRACKETED,     /* an IPv6 address without brackets */
    HP_HOST,            /* not a name, an IPv4 address or [IPv6] */
};

/* The one reader of "host:port" and "[IPv6]:port" (the port optional when
 * PORT_REQUIRED is false: "host", "[IPv6]"), LEN bytes of S, for listen,
 * redis.url and redis.cluster.  HOST gets the host (an IPv6 address without
 * its brackets; *V6 says so), *PORT the port when there is one.  Each
 * caller decides which hosts it takes (listen: numeric only). */
static enum host_port_error host_port(const char *s, size_t len, bool port_required,
                                      char *host, size_t host_size, int *port, bool *v6)
{
    const char *end = s + len, *after;
    size_t hl;
    *v6 = s < end && *s == '[';
    if (*v6) {
        const char *close = memchr(s, ']', len);
        unsigned char addr[sizeof(struct in6_addr)];
        if (!close)
            return HP_IPV6;
        hl = (size_t)(close - s - 1);
        if (hl == 0 || hl >= host_size)
            return HP_IPV6;
        memcpy(host, s + 1, hl);
        host[hl] = '\0';
        if (inet_pton(AF_INET6, host, addr) != 1)
            return HP_IPV6;
        after = close + 1;
        if (after < end && *after != ':')
            return HP_SHAPE;
    } else {
        const char *colon = memrchr(s, ':', len);
        after = colon ? colon : end;
        hl = (size_t)(after - s);
        if (memchr(s, ':', hl))
            return HP_UNBRACKETED;
        if (hl == 0 || hl >= host_size || !valid_host_name(s, hl))
            return HP_HOST;
        memcpy(host, s, hl);
        host[hl] = '\0';
    }
    if (after == end)
        return port_required ? HP_SHAPE : HP_OK;
    return parse_port(after + 1, (size_t)(end - after - 1), port) == 0 ? HP_OK : HP_PORT;
}

/* A listener's host:port with a numeric host, never resolved through DNS,
 * so that the daemon binds exactly what the file says: into *HOST_OUT
 * (canonical, malloc'ed) and *PORT_OUT. */
static int parse_listen(struct parser *p, int line, const char *s, char **host_out,
                        uint16_t *port_out)
{
    char host[256], canon[INET6_ADDRSTRLEN];
    unsigned char addr[sizeof(struct in6_addr)];
    int port = 0;
    bool v6;
    struct qbuf qb;
    const char *form = "want host:port; host is a numeric IPv4 address, [IPv6], "
                       "localhost or *";

    enum host_port_error e = host_port(s, strlen(s), true, host, sizeof host, &port, &v6);
    if (e == HP_HOST && s[0] == '*' && s[1] == ':') {     /* "*": every address */
        e = parse_port(s + 2, strlen(s + 2), &port) == 0 ? HP_OK : HP_PORT;
        strcpy(host, "*");
    }
    switch (e) {
    case HP_OK:
        break;
    case HP_PORT:
        return fail(p, line, "bad port in %s (want 1..65535)", quote(&qb, s));
    case HP_IPV6:
        return fail(p, line, "bad IPv6 address in %s", quote(&qb, s));
    case HP_UNBRACKETED:
        return fail(p, line, "bad address %s (IPv6 addresses need brackets: [::1]:8425)",
                    quote(&qb, s));
    case HP_SHAPE:
    case HP_HOST:
        return fail(p, line, "bad address %s (%s)", quote(&qb, s), form);
    }
    if (v6 && inet_pton(AF_INET6, host, addr) == 1)
        inet_ntop(AF_INET6, addr, canon, sizeof canon);
    else if (strcmp(host, "localhost") == 0)
        strcpy(canon, "127.0.0.1");
    else if (strcmp(host, "*") == 0)
        strcpy(canon, "0.0.0.0");
    else if (inet_pton(AF_INET, host, addr) == 1)
        inet_ntop(AF_INET, addr, canon, sizeof canon);
    else
        return fail(p, line, "bad address %s (%s)", quote(&qb, s), form);
    free(*host_out);
    if ((*host_out = strdup(canon)) == NULL)
        return fail(p, line, "out of memory");
    *port_out = (uint16_t)port;
    return 0;
}

static int check_listen(struct parser *p, void *base, int line)
{
    struct config *cfg = base;
    if (parse_listen(p, line, cfg->listen, &cfg->listen_host, &cfg->listen_port) != 0)
        return -1;
    cfg->listen_line = line;
    return 0;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Percent-decodes S[0..LEN) into a new string; empty gives NULL.  WHAT
 * names the part in messages; the value itself may be secret and is never
 * echoed. */
static int url_decode(struct parser *p, int line, const char *what, const char *s,
                      size_t len, char **out)
{
    char *d;
    size_t o = 0;

    *out = NULL;
    if (len == 0)
        return 0;
    if ((d = malloc(len + 1)) == NULL)
        return fail(p, line, "out of memory");
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '%') {
            int hi = i + 2 < len ? hexval(s[i + 1]) : -1;
            int lo = i + 2 < len ? hexval(s[i + 2]) : -1;

            /* %00 would cut the C string short: refuse it. */
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
                free(d);
                return fail(p, line, "bad percent-encoding in the %s", what);
            }
            d[o++] = (char)(hi * 16 + lo);
            i += 2;
        } else {
            d[o++] = s[i];
        }
    }
    d[o] = '\0';
    *out = d;
    return 0;
}

static int parse_db(struct parser *p, int line, const char *s, size_t len, int *db)
{
    char buf[16];
    struct qbuf qb;
    long v = 0;

    if (len >= sizeof buf)
        len = sizeof buf - 1;
    memcpy(buf, s, len);
    buf[len] = '\0';
    if (len == 0 || len > 7 || !all_digits(s, len))
        return fail(p, line, "bad db %s (want 0..%d)", quote(&qb, buf), REDIS_DB_MAX);
    for (size_t i = 0; i < len; i++)
        v = v * 10 + (s[i] - '0');
    if (v > REDIS_DB_MAX)
        return fail(p, line, "bad db %s (want 0..%d)", quote(&qb, buf), REDIS_DB_MAX);
    *db = (int)v;
    return 0;
}


/* redis://[[user]:password@]host[:port][/db].  [MFROM, MTO) receives the
 * password's bytes in URL, for masking. */
static int parse_redis_tcp(struct parser *p, struct cfg_redis *r, const char *url, int line,
                           size_t *mfrom, size_t *mto)
{
    const char *a = url + strlen("redis://");
    size_t alen = strcspn(a, "/?#");
    const char *at = memrchr(a, '@', alen);
    const char *hp = a, *end = a + alen;

    r->transport = REDIS_TCP;
    r->port = 6379;
    if (at != NULL) {
        const char *colon = memchr(a, ':', (size_t)(at - a));

        if (colon == NULL)
            return fail(p, line, "credentials must be written [user]:password@");
        if (url_decode(p, line, "user", a, (size_t)(colon - a), &r->user) ||
            url_decode(p, line, "password", colon + 1, (size_t)(at - colon - 1), &r->password))
            return -1;
        *mfrom = (size_t)(colon + 1 - url);
        *mto = (size_t)(at - url);
        hp = at + 1;
    }
    char host[256];
    bool v6;
    switch (host_port(hp, (size_t)(end - hp), false, host, sizeof host, &r->port, &v6)) {
    case HP_OK:
        break;
    case HP_PORT:
    case HP_SHAPE:
        return fail(p, line, "bad port (want 1..65535)");
    case HP_IPV6:
        return fail(p, line, memchr(hp, ']', (size_t)(end - hp)) ? "bad IPv6 host"
                                                                  : "bad IPv6 host (missing ])");
    case HP_UNBRACKETED:
    case HP_HOST:
        return fail(p, line, "bad host (want a name, an IPv4 address or [IPv6])");
    }
    if ((r->host = strdup(host)) == NULL)
        return fail(p, line, "out of memory");
    if (*end == '?' || *end == '#')
        return fail(p, line, "redis:// URLs take no query or fragment (the db goes in /db)");
    if (*end == '/' && end[1] != '\0')
        return parse_db(p, line, end + 1, strlen(end + 1), &r->db);
    return 0;
}

/* unix:///path/to/redis.sock[?db=N&password=...&user=...] */
static int parse_redis_unix(struct parser *p, struct cfg_redis *r, const char *url, int line,
                            size_t *mfrom, size_t *mto)
{
    const char *path = url + strlen("unix://");
    size_t plen = strcspn(path, "?#");
    const char *q = path + plen;
    bool seen_db = false;
    struct qbuf qb;

    r->transport = REDIS_UNIX;
    if (plen < 2 || path[0] != '/')
        return fail(p, line, "unix:// needs an absolute socket path, e.g. "
                             "unix:///run/redis/redis.sock");
    if (plen >= sizeof(((struct sockaddr_un *)0)->sun_path))
        return fail(p, line, "socket path too long (max %zu bytes)",
                    sizeof(((struct sockaddr_un *)0)->sun_path) - 1);
    if ((r->path = strndup(path, plen)) == NULL)
        return fail(p, line, "out of memory");
    if (*q == '#')
        return fail(p, line, "unix:// URLs take no fragment");
    if (*q == '\0')
        return 0;
    for (q++; ; ) {
        size_t len = strcspn(q, "&");
        const char *eq = memchr(q, '=', len);
        size_t klen = eq ? (size_t)(eq - q) : len;
        const char *val = eq ? eq + 1 : q + len;
        size_t vlen = (size_t)(q + len - val);
        char name[32];

        snprintf(name, sizeof name, "%.*s", (int)(klen < 31 ? klen : 31), q);
        if (eq == NULL)
            return fail(p, line, "URL parameter %s needs a value", quote(&qb, name));
        if (klen == 2 && memcmp(q, "db", 2) == 0) {
            if (seen_db)
                return fail(p, line, "duplicate URL parameter \"db\"");
            seen_db = true;
            if (parse_db(p, line, val, vlen, &r->db))
                return -1;
        } else if (klen == 8 && memcmp(q, "password", 8) == 0) {
            if (r->password != NULL)
                return fail(p, line, "duplicate URL parameter \"password\"");
            if (url_decode(p, line, "password", val, vlen, &r->password))
                return -1;
            *mfrom = (size_t)(val - url);
            *mto = (size_t)(val + vlen - url);
        } else if (klen == 4 && memcmp(q, "user", 4) == 0) {
            if (r->user != NULL)
                return fail(p, line, "duplicate URL parameter \"user\"");
            if (url_decode(p, line, "user", val, vlen, &r->user))
                return -1;
        } else {
            return fail(p, line, "unknown URL parameter %s (want db, password or user)",
                        quote(&qb, name));
        }
        if (q[len] == '\0')
            return 0;
        q += len + 1;
    }
}

#define REDIS_URL_DEFAULT "redis://127.0.0.1:6379/0"

/* redis.cluster: a non-empty list of seed nodes, each "host:port" (host: a
 * name, an IPv4 address or [IPv6]; a name is resolved once, at start-up).
 * Any one that answers gives the whole slot map. */
static int parse_redis_cluster(struct parser *p, void *base, bool present, struct fy_node *v,
                               int line)
{
    struct cfg_redis *r = base;
    struct fy_node *item;
    void *it = NULL;
    size_t n, i = 0;

    if (!present)
        return 0;
    if (check_untagged(p, v, line))
        return -1;
    if (is_null(v) || !fy_node_is_sequence(v))
        return fail(p, node_line(v, line), "expected a list of host:port seed nodes, got %s",
                    kind_of(v));
    n = (size_t)fy_node_sequence_item_count(v);
    if (n == 0)
        return fail(p, line, "at least one seed node is required");
    if (n > REDIS_SEEDS_MAX)
        return fail(p, line, "too many seed nodes (%zu, max %d)", n, REDIS_SEEDS_MAX);
    if ((r->cluster = calloc(n, sizeof *r->cluster)) == NULL)
        return fail(p, line, "out of memory");
    r->n_cluster = n;       /* config_free copes with entries not filled in yet */
    for (; (item = fy_node_sequence_iterate(v, &it)) != NULL; i++) {
        size_t saved = push_index(p, i);
        struct scalar s;
        struct qbuf qb;
        char hostbuf[256];
        const char *host;
        size_t hostlen;
        int port = 0;
        bool v6;

        if (get_scalar(p, item, line, "host:port", &s))
            return -1;
        switch (host_port(s.s, strlen(s.s), true, hostbuf, sizeof hostbuf, &port, &v6)) {
        case HP_OK:
            break;
        case HP_SHAPE:
        case HP_PORT:
            return fail(p, s.line, "bad seed %s (want host:port, port 1..65535)",
                        quote(&qb, s.s));
        case HP_IPV6:
            return fail(p, s.line, "bad IPv6 address in %s", quote(&qb, s.s));
        case HP_UNBRACKETED:
            return fail(p, s.line, "bad seed %s (IPv6 addresses need brackets: [::1]:7000)",
                        quote(&qb, s.s));
        case HP_HOST:
            return fail(p, s.line, "bad seed %s (host: a name, an IPv4 address or [IPv6])",
                        quote(&qb, s.s));
        }
        host = hostbuf;
        hostlen = strlen(hostbuf);
        for (size_t j = 0; j < i; j++)
            if (r->cluster[j].port == port && strlen(r->cluster[j].host) == hostlen &&
                memcmp(r->cluster[j].host, host, hostlen) == 0)
                return fail(p, s.line, "duplicate seed %s", quote(&qb, s.s));
        if ((r->cluster[i].host = strndup(host, hostlen)) == NULL)
            return fail(p, s.line, "out of memory");
        r->cluster[i].port = port;
        pop_key(p, saved);
    }
    return 0;
}

/* redis.user / redis.password: the cluster nodes' credentials (a single
 * Redis takes them inside redis.url). */
static int check_redis_user(struct parser *p, void *base, int line)
{
    const struct cfg_redis *r = base;

    if (r->user != NULL && r->n_cluster == 0)
        return fail(p, line, "only with redis.cluster (with redis.url, write "
                             "redis://user:password@host)");
    return 0;
}

static int check_redis_password(struct parser *p, void *base, int line)
{
    const struct cfg_redis *r = base;

    if (r->password != NULL && r->n_cluster == 0)
        return fail(p, line, "only with redis.cluster (with redis.url, write "
                             "redis://:password@host)");
    if (r->user != NULL && r->password == NULL)
        return fail(p, line, "redis.user needs a password");
    return 0;
}

/* The display form of a cluster config: "redis-cluster://h:p,h:p" (no
 * credentials), kept in r->url for logs and /status. */
static int redis_cluster_display(struct parser *p, struct cfg_redis *r, int line)
{
    size_t len = strlen("redis-cluster://") + 1;
    char *s;

    for (size_t i = 0; i < r->n_cluster; i++)
        len += strlen(r->cluster[i].host) + 10;
    if ((s = malloc(len)) == NULL)
        return fail(p, line, "out of memory");
    size_t o = (size_t)snprintf(s, len, "redis-cluster://");
    for (size_t i = 0; i < r->n_cluster; i++) {
        const char *h = r->cluster[i].host;

        o += (size_t)snprintf(s + o, len - o, strchr(h, ':') ? "%s[%s]:%d" : "%s%s:%d",
                              i ? "," : "", h, r->cluster[i].port);
    }
    r->url = s;
    return 0;
}

/* redis.url: fills transport/host/port/path/user/password/db, then keeps
 * a display form of the URL with the password replaced by "***", so the
 * URL can be logged.  Error messages never echo the URL: it may hold a
 * password. */
static int check_redis_url(struct parser *p, void *base, int line)
{
    struct cfg_redis *r = base;
    size_t mfrom = 0, mto = 0;
    int rc;

    /* redis.cluster (parsed before) replaces the url; absent both, the
     * default url applies. */
    if (r->n_cluster > 0) {
        if (r->url != NULL)
            return fail(p, line, "cannot be used with redis.cluster (give one of them)");
        return redis_cluster_display(p, r, line);
    }
    if (r->url == NULL && (r->url = strdup(REDIS_URL_DEFAULT)) == NULL)
        return fail(p, line, "out of memory");
    if (strncasecmp(r->url, "redis://", 8) == 0) {
        rc = parse_redis_tcp(p, r, r->url, line, &mfrom, &mto);
    } else if (strncasecmp(r->url, "unix://", 7) == 0) {
        rc = parse_redis_unix(p, r, r->url, line, &mfrom, &mto);
    } else {
        const char *sep = strstr(r->url, "://");
        struct qbuf qb;
        char scheme[24];

        if (sep == NULL)
            return fail(p, line, "expected a redis:// or unix:// URL");
        snprintf(scheme, sizeof scheme, "%.*s",
                 (int)((size_t)(sep - r->url) < 20 ? (size_t)(sep - r->url) : 20), r->url);
        return fail(p, line, "unsupported URL scheme %s (want redis:// or unix://)",
                    quote(&qb, scheme));
    }
    if (rc)
        return -1;
    if (r->user != NULL && r->password == NULL)
        return fail(p, line, "a user needs a password");
    if (mto > mfrom) {
        size_t len = strlen(r->url);
        char *shown = malloc(len - (mto - mfrom) + 4);

        if (shown == NULL)
            return fail(p, line, "out of memory");
        memcpy(shown, r->url, mfrom);
        memcpy(shown + mfrom, "***", 3);
        memcpy(shown + mfrom + 3, r->url + mto, len - mto + 1);
        explicit_bzero(r->url, len);
        free(r->url);
        r->url = shown;
    }
    return 0;
}

/* [a-z0-9_-]{1,32} */
static bool valid_group_name(const char *s, size_t len)
{
    if (len == 0 || len > CONFIG_NAME_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];

        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return false;
    }
    return true;
}

/* channels / categories: a non-empty mapping name -> options.  The entry
 * structs start with their name; OPTS describes the rest. */
static int parse_groups(struct parser *p, struct fy_node *v, int line, const char *what,
                        const struct directive *opts, size_t elem_size, void **arrp,
                        size_t *np)
{
    struct fy_node_pair *pair;
    void *it = NULL;
    size_t n, i = 0;
    char *arr;

    if (check_untagged(p, v, line))
        return -1;
    if (!is_null(v) && !fy_node_is_mapping(v))
        return fail(p, node_line(v, line), "expected a mapping of %s names, got %s", what,
                    kind_of(v));
    n = is_null(v) ? 0 : (size_t)fy_node_mapping_item_count(v);
    if (n == 0)
        return fail(p, line, "at least one %s is required", what);
    if ((arr = calloc(n, elem_size)) == NULL)
        return fail(p, line, "out of memory");
    *arrp = arr;
    *np = n;        /* config_free copes with entries not filled in yet */
    while ((pair = fy_node_mapping_iterate(v, &it)) != NULL) {
        struct fy_node *k = fy_node_pair_key(pair);
        int kline = node_line(k, line);
        void *elem = arr + i * elem_size;
        char **name = elem;     /* the name is the first member */
        const char *s;
        size_t len, saved;
        struct qbuf qb;

        if (k == NULL || !fy_node_is_scalar(k) || fy_node_get_tag_token(k) != NULL ||
            (s = fy_node_get_scalar0(k)) == NULL)
            return fail(p, kline, "%s names must be plain strings", what);
        len = strlen(s);
        if (!valid_group_name(s, len))
            return fail(p, kline, "bad %s name %s (want 1 to %d of a-z, 0-9, _ and -)", what,
                        quote(&qb, s), CONFIG_NAME_MAX);
        if ((*name = strdup(s)) == NULL)
            return fail(p, kline, "out of memory");
        saved = push_key(p, s, len);
        /* "email:" with nothing after it is an empty option mapping. */
        if (parse_section(p, opts, elem, fy_node_pair_value(pair), kline))
            return -1;
        pop_key(p, saved);
        i++;
    }
    return 0;
}

/* upstream.headers: a mapping of header names to values; "${VAR}" takes the
 * value from the environment (secrets stay out of the file). */
static int parse_upstream_headers(struct parser *p, void *base, bool present, struct fy_node *v,
                                  int line)
{
    struct cfg_upstream *u = base;
    struct fy_node_pair *pair;
    void *it = NULL;
    size_t n;

    if (!present || is_null(v))
        return 0;
    if (check_untagged(p, v, line))
        return -1;
    if (!fy_node_is_mapping(v))
        return fail(p, node_line(v, line), "expected a mapping of header names to values");
    n = (size_t)fy_node_mapping_item_count(v);
    if (n > 64)
        return fail(p, line, "too many headers (max 64)");
    if ((u->headers = calloc(n + 1, sizeof *u->headers)) == NULL)
        return fail(p, line, "out of memory");
    while ((pair = fy_node_mapping_iterate(v, &it)) != NULL) {
        struct fy_node *k = fy_node_pair_key(pair);
        struct scalar name, value;
        struct qbuf qb;
        if (get_scalar(p, k, line, "a header name", &name) ||
            get_scalar(p, fy_node_pair_value(pair), name.line, "a header value", &value))
            return -1;
        if (!*name.s || strcspn(name.s, " :\t\r\n") != strlen(name.s))
            return fail(p, name.line, "bad header name %s", quote(&qb, name.s));
        char out[4096];
        size_t o = 0;
        for (const char *c = value.s; *c && o < sizeof out - 1;) {
            if (c[0] == '$' && c[1] == '{') {
                const char *end = strchr(c, '}');
                if (!end)
                    return fail(p, value.line, "unclosed ${ in header %s", quote(&qb, name.s));
                char var[128];
                size_t vl = (size_t)(end - c - 2);
                if (vl == 0 || vl >= sizeof var)
                    return fail(p, value.line, "bad variable name in header %s", quote(&qb, name.s));
                memcpy(var, c + 2, vl);
                var[vl] = '\0';
                const char *env = getenv(var);
                if (!env)
                    return fail(p, value.line, "environment variable %s is not set", var);
                size_t el = strlen(env);
                if (o + el >= sizeof out)
                    return fail(p, value.line, "header value too long");
                memcpy(out + o, env, el);
                o += el;
                c = end + 1;
            } else {
                out[o++] = *c++;
            }
        }
        out[o] = '\0';
        if (strpbrk(out, "\r\n"))
            return fail(p, value.line, "header %s: value has a line break", quote(&qb, name.s));
        size_t len = strlen(name.s) + 2 + o + 1;
        if ((u->headers[u->n_headers] = malloc(len)) == NULL)
            return fail(p, line, "out of memory");
        snprintf(u->headers[u->n_headers++], len, "%s: %s", name.s, out);
    }
    return 0;
}

static int check_upstream_url(struct parser *p, void *base, int line)
{
    struct cfg_upstream *u = base;
    struct qbuf qb;
    if (strncmp(u->url, "http://", 7) != 0 && strncmp(u->url, "https://", 8) != 0)
        return fail(p, line, "%s: want an http:// or https:// URL", quote(&qb, u->url));
    return 0;
}

static int check_upstream(struct parser *p, void *base, int line)
{
    (void)p; (void)line;
    ((struct cfg_upstream *)base)->enabled = true;
    return 0;
}

static int check_rate(struct parser *p, void *base, int line)
{
    struct cfg_rate *r = base;
    (void)p; (void)line;
    r->enabled = true;
    if (r->burst == 0)                   /* absent: a tenth of a second's worth */
        r->burst = r->per_second >= 20 ? r->per_second / 10 : 1;
    return 0;
}

static const struct directive rate_table[] = {
    { .name = "per_second", .type = DT_INT, .flags = D_REQUIRED, FIELD(struct cfg_rate, per_second),
      .min = 1, .max = 1000000 },
    { .name = "burst", .type = DT_INT, FIELD(struct cfg_rate, burst), .min = 1, .max = 1000000 },
    { .name = NULL },
};

/* pushback.statuses: HTTP statuses that mean "slow down" (absent: 429 and 503). */
static int parse_pushback_statuses(struct parser *p, void *base, bool present, struct fy_node *v,
                                   int line)
{
    struct cfg_pushback *b = base;
    if (!present) {
        b->statuses[0] = 429;
        b->statuses[1] = 503;
        b->n_statuses = 2;
        return 0;
    }
    if (is_null(v))
        return 0;
    if (check_untagged(p, v, line))
        return -1;
    if (!fy_node_is_sequence(v))
        return fail(p, node_line(v, line), "expected a list of HTTP statuses, got %s", kind_of(v));
    struct fy_node *item;
    void *it = NULL;
    while ((item = fy_node_sequence_iterate(v, &it)) != NULL) {
        struct scalar s;
        struct qbuf qb;
        char *end;
        if (get_scalar(p, item, line, "an HTTP status", &s))
            return -1;
        long code = strtol(s.s, &end, 10);
        if (!s.plain || *end || end == s.s || code < 400 || code > 599)
            return fail(p, s.line, "%s: want an HTTP status 400..599", quote(&qb, s.s));
        if (b->n_statuses == PUSHBACK_STATUSES_MAX)
            return fail(p, s.line, "too many statuses (max %d)", PUSHBACK_STATUSES_MAX);
        b->statuses[b->n_statuses++] = (int)code;
    }
    return 0;
}

static const struct directive pushback_table[] = {
    { .name = "statuses", .type = DT_CUSTOM, .parse = parse_pushback_statuses },
    { .name = "max_pause", .type = DT_DURATION, FIELD(struct cfg_pushback, max_pause_ms),
      .min = MS_PER_S, .max = MS_PER_D, .def = "10m" },
    { .name = NULL },
};

/* warmup.start: a calendar date, YYYY-MM-DD, or an instant in UTC,
 * YYYY-MM-DDTHH:MM:SSZ. */
static int check_warmup_start(struct parser *p, void *base, int line)
{
    struct cfg_warmup *w = base;
    struct qbuf qb;
    int y, m, d, hh = 0, mm = 0, ss = 0, n = 0;
    size_t len = strlen(w->start);
    bool instant = len == 20;
    if (instant ? sscanf(w->start, "%4d-%2d-%2dT%2d:%2d:%2dZ%n", &y, &m, &d, &hh, &mm, &ss,
                         &n) != 6 || n != 20
                : sscanf(w->start, "%4d-%2d-%2d%n", &y, &m, &d, &n) != 3 || n != 10 || len != 10)
        return fail(p, line, "%s: want a date YYYY-MM-DD or an instant YYYY-MM-DDTHH:MM:SSZ",
                    quote(&qb, w->start));
    if (y < 2000 || m < 1 || m > 12 || d < 1 || d > 31 || hh > 23 || mm > 59 || ss > 59 ||
        (m < 12 ? tz_days_from_civil(y, m + 1, 1) : tz_days_from_civil(y + 1, 1, 1)) <=
            tz_days_from_civil(y, m, d))
        return fail(p, line, "%s: no such date", quote(&qb, w->start));
    w->start_day = tz_days_from_civil(y, m, d);
    w->start_ms = instant ? (w->start_day * 86400 + hh * 3600 + mm * 60 + ss) * 1000 : -1;
    return 0;
}

/* warmup.daily: day N's ceiling, a list of 1..WARMUP_DAYS_MAX counts. */
static int parse_warmup_daily(struct parser *p, void *base, bool present, struct fy_node *v,
                              int line)
{
    struct cfg_warmup *w = base;
    if (!present)
        return fail(p, line, "missing required key");
    if (check_untagged(p, v, line))
        return -1;
    if (is_null(v) || !fy_node_is_sequence(v) || fy_node_sequence_item_count(v) == 0)
        return fail(p, node_line(v, line), "expected a list of daily ceilings, got %s",
                    is_null(v) || fy_node_is_sequence(v) ? "none" : kind_of(v));
    struct fy_node *item;
    void *it = NULL;
    while ((item = fy_node_sequence_iterate(v, &it)) != NULL) {
        struct scalar sc;
        struct qbuf qb;
        char *end;
        if (get_scalar(p, item, line, "a daily ceiling", &sc))
            return -1;
        long n = strtol(sc.s, &end, 10);
        if (!sc.plain || *end || end == sc.s || n < 1 || n > 1000000000)
            return fail(p, sc.line, "%s: want a count 1..1000000000", quote(&qb, sc.s));
        if (w->n_daily == WARMUP_DAYS_MAX)
            return fail(p, sc.line, "too many days (max %d)", WARMUP_DAYS_MAX);
        w->daily[w->n_daily++] = (int)n;
    }
    return 0;
}

static int check_warmup(struct parser *p, void *base, int line)
{
    (void)p; (void)line;
    ((struct cfg_warmup *)base)->enabled = true;
    return 0;
}

static const struct directive warmup_table[] = {
    { .name = "start", .type = DT_STRING, .flags = D_REQUIRED, FIELD(struct cfg_warmup, start),
      .check = check_warmup_start },
    { .name = "daily", .type = DT_CUSTOM, .flags = D_REQUIRED, .parse = parse_warmup_daily },
    { .name = "day", .type = DT_DURATION, FIELD(struct cfg_warmup, day_ms),
      .min = MS_PER_S, .max = MS_PER_D, .def = "1d" },
    { .name = NULL },
};

static const struct choice over_rates[] = {
    { "queue", OVER_RATE_QUEUE }, { "reject", OVER_RATE_REJECT }, { NULL, 0 },
};

/* channels.<c>.upstream.unsubscribe_headers: "json:<pointer>" to the
 * headers object of a /v1/send payload (made when absent): the last step a
 * plain key; the links need the public section (parsed before channels). */
static int check_send_unsubscribe_headers(struct parser *p, void *base, int line)
{
    const struct cfg_upstream *u = base;
    const char *s = u->unsubscribe_headers;
    if (!s)
        return 0;
    const char *last = strrchr(s, '/');
    struct qbuf qb;
    if (strncmp(s, "json:/", 6) != 0 || !last || !last[1] ||
        strspn(last + 1, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-") !=
            strlen(last + 1))
        return fail(p, line, "bad %s (want json:<pointer> to the payload's headers object, "
                             "e.g. \"json:/personalizations/*/headers\")", quote(&qb, s));
    if (!p->cfg->public.enabled)
        return fail(p, line, "unsubscribe links need the public section (public.base_url, "
                             "public.listen)");
    return 0;
}

static const struct directive upstream_table[] = {
    { .name = "url", .type = DT_STRING, .flags = D_REQUIRED, FIELD(struct cfg_upstream, url),
      .check = check_upstream_url },
    { .name = "timeout_ms", .type = DT_INT, FIELD(struct cfg_upstream, timeout_ms),
      .min = 10, .max = 600000, .def = "5000" },
    { .name = "max_connections", .type = DT_INT, FIELD(struct cfg_upstream, max_connections),
      .min = 1, .max = 10000, .def = "64" },
    { .name = "headers", .type = DT_CUSTOM, .parse = parse_upstream_headers },
    { .name = "rate", .type = DT_SECTION, .flags = D_OPTIONAL,
      .off = offsetof(struct cfg_upstream, rate), .sub = rate_table, .check = check_rate },
    { .name = "warmup", .type = DT_SECTION, .flags = D_OPTIONAL,
      .off = offsetof(struct cfg_upstream, warmup), .sub = warmup_table, .check = check_warmup },
    { .name = "over_rate", .type = DT_ENUM, ENUM_FIELD(struct cfg_upstream, over_rate),
      .choices = over_rates, .def = "queue" },
    { .name = "unsubscribe_headers", .type = DT_STRING,
      FIELD(struct cfg_upstream, unsubscribe_headers), .check = check_send_unsubscribe_headers },
    { .name = "pushback", .type = DT_SECTION, .off = offsetof(struct cfg_upstream, pushback),
      .sub = pushback_table },
    { .name = NULL },
};

static const struct directive channel_table[] = {
    { .name = "requires_opt_in", .type = DT_BOOL, FIELD(struct cfg_channel, requires_opt_in),
      .def = "false" },
    { .name = "upstream", .type = DT_SECTION, .flags = D_OPTIONAL,
      .off = offsetof(struct cfg_channel, upstream), .sub = upstream_table,
      .check = check_upstream },
    { .name = NULL },
};

static const struct directive category_table[] = {
    { .name = "exempt_from_caps", .type = DT_BOOL,
      FIELD(struct cfg_category, exempt_from_caps), .def = "false" },
    { .name = "exempt_from_quiet_hours", .type = DT_BOOL,
      FIELD(struct cfg_category, exempt_from_quiet_hours), .def = "false" },
    { .name = "ignores_opt_out", .type = DT_BOOL,
      FIELD(struct cfg_category, ignores_opt_out), .def = "false" },
    { .name = "requires_opt_in", .type = DT_BOOL,
      FIELD(struct cfg_category, requires_opt_in), .def = "false" },
    { .name = "priority", .type = DT_INT, FIELD(struct cfg_category, priority),
      .min = 0, .max = 9, .def = "0" },
    { .name = NULL },
};

static int parse_channels(struct parser *p, void *base, bool present, struct fy_node *v,
                          int line)
{
    struct config *cfg = base;
    void *arr = NULL;
    int rc;

    (void)present;      /* required: the walker refused an absent key */
    rc = parse_groups(p, v, line, "channel", channel_table, sizeof(struct cfg_channel),
                          &arr, &cfg->n_channels);

    cfg->channels = arr;
    return rc;
}

static int parse_categories(struct parser *p, void *base, bool present, struct fy_node *v,
                            int line)
{
    struct config *cfg = base;
    void *arr = NULL;
    int rc;

    (void)present;
    rc = parse_groups(p, v, line, "category", category_table,
                          sizeof(struct cfg_category), &arr, &cfg->n_categories);

    cfg->categories = arr;
    return rc;
}

/* default_category: must name a category; may be left out only when
 * there is exactly one, which is then the default. */
static int check_default_category(struct parser *p, void *base, int line)
{
    struct config *cfg = base;
    struct qbuf qb;

    if (cfg->default_category == NULL) {
        if (cfg->n_categories != 1)
            return fail(p, line, "missing required key (there is more than one category)");
        if ((cfg->default_category = strdup(cfg->categories[0].name)) == NULL)
            return fail(p, line, "out of memory");
        return 0;
    }
    if (config_category(cfg, cfg->default_category) == NULL)
        return fail(p, line, "unknown category %s", quote(&qb, cfg->default_category));
    return 0;
}

/* [A-Za-z0-9_.-]{1,64}, unique among the caps. */
static int check_cap_name(struct parser *p, void *base, int line)
{
    const struct cfg_cap *cap = base;
    size_t len = strlen(cap->name);
    struct qbuf qb;

    if (len > CAP_NAME_MAX)
        return fail(p, line, "cap name %s is longer than %d characters", quote(&qb, cap->name),
                    CAP_NAME_MAX);
    for (size_t i = 0; i < len; i++) {
        char c = cap->name[i];

        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '-'))
            return fail(p, line, "bad cap name %s (want A-Z, a-z, 0-9, _, . and -)",
                        quote(&qb, cap->name));
    }
    for (size_t i = 0; i < p->list_index; i++)
        if (strcmp(p->cfg->caps[i].name, cap->name) == 0)
            return fail(p, line, "duplicate cap name %s (also caps[%zu])",
                        quote(&qb, cap->name), i);
    return 0;
}

static int check_cap_channel(struct parser *p, void *base, int line)
{
    const struct cfg_cap *cap = base;
    struct qbuf qb;

    if (cap->channel != NULL && config_channel(p->cfg, cap->channel) == NULL)
        return fail(p, line, "unknown channel %s", quote(&qb, cap->channel));
    return 0;
}

static int check_cap_category(struct parser *p, void *base, int line)
{
    const struct cfg_cap *cap = base;
    struct qbuf qb;

    if (cap->category != NULL && config_category(p->cfg, cap->category) == NULL)
        return fail(p, line, "unknown category %s", quote(&qb, cap->category));
    return 0;
}

static const struct choice cap_pers[] = {
    { "user", CAP_PER_USER }, { "campaign", CAP_PER_CAMPAIGN }, { NULL, 0 },
};

static const struct choice cap_actions[] = {
    { "defer", CAP_DEFER }, { "deny", CAP_DENY }, { NULL, 0 },
};

static const struct choice cap_modes[] = {
    { "enforce", CAP_ENFORCE }, { "shadow", CAP_SHADOW }, { NULL, 0 },
};

/* Windows are bounded so that the TTL of the send records stays sane. */
static const struct directive cap_table[] = {
    { .name = "name", .type = DT_STRING, .flags = D_REQUIRED, FIELD(struct cfg_cap, name),
      .check = check_cap_name },
    { .name = "channel", .type = DT_STRING, FIELD(struct cfg_cap, channel),
      .check = check_cap_channel },
    { .name = "category", .type = DT_STRING, FIELD(struct cfg_cap, category),
      .check = check_cap_category },
    { .name = "per", .type = DT_ENUM, ENUM_FIELD(struct cfg_cap, per), .choices = cap_pers,
      .def = "user" },
    { .name = "limit", .type = DT_INT, .flags = D_REQUIRED, FIELD(struct cfg_cap, limit),
      .min = 1, .max = CAP_LIMIT_MAX },
    { .name = "window", .type = DT_DURATION, .flags = D_REQUIRED,
      FIELD(struct cfg_cap, window_ms), .min = MS_PER_S, .max = 366 * MS_PER_D },
    { .name = "on_exceed", .type = DT_ENUM, ENUM_FIELD(struct cfg_cap, on_exceed),
      .choices = cap_actions, .def = "defer" },
    { .name = "mode", .type = DT_ENUM, ENUM_FIELD(struct cfg_cap, mode),
      .choices = cap_modes, .def = "enforce" },
    { .name = NULL },
};

/* ---- throttles[]: a send rate per campaign ---- */

static int check_throttle_name(struct parser *p, void *base, int line)
{
    const struct cfg_throttle *t = base;
    struct qbuf qb;
    size_t len = strlen(t->name);
    if (len > CAP_NAME_MAX || strspn(t->name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                      "0123456789_.-") != len)
        return fail(p, line, "bad throttle name %s (want 1 to %d of A-Z, a-z, 0-9, _, . and -)",
                    quote(&qb, t->name), CAP_NAME_MAX);
    for (size_t k = 0; k < p->list_index; k++)
        if (strcmp(p->cfg->throttles[k].name, t->name) == 0)
            return fail(p, line, "throttle %s is named twice", quote(&qb, t->name));
    return 0;
}

static int check_throttle_channel(struct parser *p, void *base, int line)
{
    const struct cfg_throttle *t = base;
    const struct cfg_channel *ch = t->channel ? config_channel(p->cfg, t->channel) : NULL;
    struct qbuf qb;
    if (t->channel && !ch)
        return fail(p, line, "unknown channel %s", quote(&qb, t->channel));
    if (ch && !ch->upstream.enabled)
        return fail(p, line, "channel %s has no upstream", quote(&qb, t->channel));
    return 0;
}

static int check_throttle(struct parser *p, void *base, int line)
{
    struct cfg_throttle *t = base;
    (void)p; (void)line;
    if (t->burst == 0)
        t->burst = t->per_second >= 20 ? t->per_second / 10 : 1;
    return 0;
}

static const struct choice throttle_pers[] = { { "campaign", THROTTLE_PER_CAMPAIGN }, { NULL, 0 } };

static const struct directive throttle_table[] = {
    { .name = "name", .type = DT_STRING, .flags = D_REQUIRED, FIELD(struct cfg_throttle, name),
      .check = check_throttle_name },
    { .name = "per", .type = DT_ENUM, ENUM_FIELD(struct cfg_throttle, per), .choices = throttle_pers,
      .def = "campaign" },
    { .name = "channel", .type = DT_STRING, FIELD(struct cfg_throttle, channel),
      .check = check_throttle_channel },
    { .name = "per_second", .type = DT_INT, .flags = D_REQUIRED,
      FIELD(struct cfg_throttle, per_second), .min = 1, .max = 1000000 },
    { .name = "burst", .type = DT_INT, FIELD(struct cfg_throttle, burst), .min = 1, .max = 1000000 },
    { .name = NULL },
};

/* ---- breaker: the campaign circuit breaker ---- */

static int check_rate_fraction(struct parser *p, const char *text, double *out, int line)
{
    struct qbuf qb;
    char *end;
    double v = strtod(text, &end);
    if (*end || end == text || !(v > 0 && v <= 1))
        return fail(p, line, "%s: want a fraction above 0, at most 1 (0.003 is 0.3%%)",
                    quote(&qb, text));
    *out = v;
    return 0;
}

static int check_complaint_rate(struct parser *p, void *base, int line)
{
    struct cfg_breaker *b = base;
    return check_rate_fraction(p, b->complaint_rate_s, &b->complaint_rate, line);
}

static int check_unsubscribe_rate(struct parser *p, void *base, int line)
{
    struct cfg_breaker *b = base;
    return check_rate_fraction(p, b->unsubscribe_rate_s, &b->unsubscribe_rate, line);
}

static int check_breaker(struct parser *p, void *base, int line)
{
    (void)p; (void)line;
    ((struct cfg_breaker *)base)->enabled = true;
    return 0;
}

static const struct directive breaker_table[] = {
    { .name = "window", .type = DT_DURATION, FIELD(struct cfg_breaker, window_ms),
      .min = MS_PER_M, .max = 30 * MS_PER_D, .def = "1d" },
    { .name = "min_sends", .type = DT_INT, FIELD(struct cfg_breaker, min_sends),
      .min = 1, .max = 1000000000, .def = "1000" },
    { .name = "complaint_rate", .type = DT_STRING, FIELD(struct cfg_breaker, complaint_rate_s),
      .def = "0.003", .check = check_complaint_rate },
    { .name = "unsubscribe_rate", .type = DT_STRING, FIELD(struct cfg_breaker, unsubscribe_rate_s),
      .def = "0.02", .check = check_unsubscribe_rate },
    { .name = "mode", .type = DT_ENUM, ENUM_FIELD(struct cfg_breaker, mode), .choices = cap_modes,
      .def = "enforce" },
    { .name = NULL },
};

/* quiet_hours.end: an empty window is almost surely a typo. */
static int check_quiet_end(struct parser *p, void *base, int line)
{
    const struct cfg_quiet_hours *q = base;

    if (q->start_min == q->end_min)
        return fail(p, line, "same as start (quiet hours would be empty)");
    return 0;
}

static int check_zoneinfo_dir(struct parser *p, void *base, int line)
{
    const struct cfg_quiet_hours *q = base;
    struct stat st;
    struct qbuf qb;

    if (stat(q->zoneinfo_dir, &st) < 0)
        return fail(p, line, "%s: %s", quote(&qb, q->zoneinfo_dir), strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return fail(p, line, "%s is not a directory", quote(&qb, q->zoneinfo_dir));
    return 0;
}

/* default_tz: an IANA name that must exist as a file under zoneinfo_dir.
 * Names are kept inside that directory: no "..", no absolute paths. */
static int check_default_tz(struct parser *p, void *base, int line)
{
    const struct cfg_quiet_hours *q = base;
    const char *tz = q->default_tz;
    char path[4096];
    struct stat st;
    struct qbuf qb;

    if (tz[0] == '/' || strstr(tz, "..") != NULL)
        return fail(p, line, "bad time zone name %s", quote(&qb, tz));
    for (const char *c = tz; *c != '\0'; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
              (*c >= '0' && *c <= '9') || strchr("/_+-.", *c) != NULL))
            return fail(p, line, "bad time zone name %s", quote(&qb, tz));
    if ((size_t)snprintf(path, sizeof path, "%s/%s", q->zoneinfo_dir, tz) >= sizeof path)
        return fail(p, line, "time zone path too long");
    if (stat(path, &st) < 0 || !S_ISREG(st.st_mode) || access(path, R_OK) < 0)
        return fail(p, line, "unknown time zone %s (no readable file %s)", quote(&qb, tz),
                    path);
    return 0;
}

/* quiet_hours.channels: configured channels, each once.  Absent means all
 * channels; null or [] means none. */
static int parse_quiet_channels(struct parser *p, void *base, bool present,
                                struct fy_node *v, int line)
{
    struct cfg_quiet_hours *q = base;
    const struct config *cfg = p->cfg;
    struct fy_node *item;
    void *it = NULL;
    size_t n, i = 0;

    if (!present) {
        if ((q->channels = calloc(cfg->n_channels, sizeof *q->channels)) == NULL)
            return fail(p, line, "out of memory");
        q->n_channels = cfg->n_channels;
        for (i = 0; i < cfg->n_channels; i++)
            if ((q->channels[i] = strdup(cfg->channels[i].name)) == NULL)
                return fail(p, line, "out of memory");
        return 0;
    }
    if (check_untagged(p, v, line))
        return -1;
    if (is_null(v))
        return 0;
    if (!fy_node_is_sequence(v))
        return fail(p, node_line(v, line), "expected a list of channels, got %s", kind_of(v));
    n = (size_t)fy_node_sequence_item_count(v);
    if (n == 0)
        return 0;
    if ((q->channels = calloc(n, sizeof *q->channels)) == NULL)
        return fail(p, line, "out of memory");
    q->n_channels = n;
    for (; (item = fy_node_sequence_iterate(v, &it)) != NULL; i++) {
        size_t saved = push_index(p, i);
        struct scalar s;
        struct qbuf qb;

        if (get_scalar(p, item, line, "a channel name", &s))
            return -1;
        if (config_channel(cfg, s.s) == NULL)
            return fail(p, s.line, "unknown channel %s", quote(&qb, s.s));
        for (size_t j = 0; j < i; j++)
            if (strcmp(q->channels[j], s.s) == 0)
                return fail(p, s.line, "duplicate channel %s", quote(&qb, s.s));
        if ((q->channels[i] = strdup(s.s)) == NULL)
            return fail(p, s.line, "out of memory");
        pop_key(p, saved);
    }
    return 0;
}

static int check_quiet_hours(struct parser *p, void *base, int line)
{
    struct cfg_quiet_hours *q = base;

    (void)p; (void)line;
    q->enabled = true;      /* the section is present and valid */
    return 0;
}

/* ------------------------------------------------------------------------ */
/* auth, tls, fatigue, audit                                                */
/* ------------------------------------------------------------------------ */

/* auth.tokens[].sha256: the hash of the token, never the token itself. */
static int check_token_sha256(struct parser *p, void *base, int line)
{
    struct cfg_token *t = base;
    if (strlen(t->sha256) != 64 || strspn(t->sha256, "0123456789abcdefABCDEF") != 64)
        return fail(p, line, "must be 64 hex digits (SHA-256 of the token; "
                             "`capgate --hash-token` prints it)");
    for (char *c = t->sha256; *c; c++)
        *c = (char)(*c >= 'A' && *c <= 'F' ? *c - 'A' + 'a' : *c);
    return 0;
}

static int parse_scopes(struct parser *p, void *base, bool present, struct fy_node *v,
                        int line)
{
    struct cfg_token *t = base;
    struct fy_node *item;
    void *it = NULL;
    size_t i = 0;

    if (!present)
        return fail(p, line, "missing required key");
    if (check_untagged(p, v, line))
        return -1;
    if (is_null(v) || !fy_node_is_sequence(v) || fy_node_sequence_item_count(v) == 0)
        return fail(p, node_line(v, line), "expected a list of scopes (send, consent, admin)");
    for (; (item = fy_node_sequence_iterate(v, &it)) != NULL; i++) {
        size_t saved = push_index(p, i);
        struct scalar s;
        struct qbuf qb;
        if (get_scalar(p, item, line, "a scope", &s))
            return -1;
        if (strcmp(s.s, "send") == 0)
            t->scopes |= SCOPE_SEND;
        else if (strcmp(s.s, "consent") == 0)
            t->scopes |= SCOPE_CONSENT;
        else if (strcmp(s.s, "admin") == 0)
            t->scopes |= SCOPE_ADMIN;
        else
            return fail(p, s.line, "unknown scope %s (send, consent or admin)", quote(&qb, s.s));
        pop_key(p, saved);
    }
    return 0;
}

static const struct directive token_table[] = {
    { .name = "name", .type = DT_STRING, .flags = D_REQUIRED, FIELD(struct cfg_token, name) },
    { .name = "sha256", .type = DT_STRING, .flags = D_REQUIRED, FIELD(struct cfg_token, sha256),
      .check = check_token_sha256 },
    { .name = "scopes", .type = DT_CUSTOM, .parse = parse_scopes },
    { .name = NULL },
};

/* auth.tokens[i]: no hash twice. */
static int check_token(struct parser *p, void *base, int line)
{
    const struct cfg_token *t = base;
    const struct cfg_auth *a = &p->cfg->auth;
    for (size_t j = 0; j < p->list_index; j++)
        if (strcmp(a->tokens[j].sha256, t->sha256) == 0)
            return fail(p, line, "the same token hash appears twice");
    return 0;
}

static int check_auth(struct parser *p, void *base, int line)
{
    struct cfg_auth *a = base;
    (void)p; (void)line;
    a->enabled = true;
    return 0;
}

static const struct directive auth_table[] = {
    { .name = "tokens", .type = DT_LIST, .flags = D_REQUIRED, .sub = token_table,
      .off = offsetof(struct cfg_auth, tokens), .count_off = offsetof(struct cfg_auth, n_tokens),
      .item_size = sizeof(struct cfg_token), .min = 1, .max = 256, .what = "tokens",
      .check = check_token },
    { .name = NULL },
};

static int check_readable(struct parser *p, const char *path, int line)
{
    struct qbuf qb;
    if (access(path, R_OK) != 0)
        return fail(p, line, "%s: %s", quote(&qb, path), strerror(errno));
    return 0;
}

static int check_tls_cert(struct parser *p, void *base, int line)
{
    return check_readable(p, ((struct cfg_tls *)base)->cert_file, line);
}

static int check_tls_key(struct parser *p, void *base, int line)
{
    return check_readable(p, ((struct cfg_tls *)base)->key_file, line);
}

static int check_tls(struct parser *p, void *base, int line)
{
    (void)p; (void)line;
    ((struct cfg_tls *)base)->enabled = true;
    return 0;
}

static const struct choice tls_versions[] = {
    { "1.2", 12 }, { "1.3", 13 }, { NULL, 0 },
};

/* tls.priorities, with tls.min_version laid over it: the versions are always
 * replaced, so no priority string can bring back TLS 1.0 or 1.1 (RFC 8996).
 * GnuTLS checks the result here, so a typo is a file:line error at load
 * (and with -t), not a listener that fails to start. */
static int check_tls_priorities(struct parser *p, void *base, int line)
{
    struct cfg_tls *t = base;
    const char *floor = t->min_version == 13 ? ":-VERS-ALL:+VERS-TLS1.3"
                                             : ":-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2";
    size_t n = strlen(t->priorities) + strlen(floor) + 1;
    gnutls_priority_t cache;
    const char *at = NULL;
    struct qbuf qb;

    free(t->priority_string);
    if ((t->priority_string = malloc(n)) == NULL)
        return fail(p, line, "out of memory");
    snprintf(t->priority_string, n, "%s%s", t->priorities, floor);
    int rc = gnutls_priority_init(&cache, t->priority_string, &at);
    if (rc != GNUTLS_E_SUCCESS) {
        /* AT points into the whole string: show only the part written. */
        size_t len = strlen(t->priorities);
        size_t off = at ? (size_t)(at - t->priority_string) : len;
        if (off < len)
            return fail(p, line, "GnuTLS refuses %s at \"%.*s\" (%s)", quote(&qb, t->priorities),
                        (int)(len - off), at, gnutls_strerror(rc));
        return fail(p, line, "GnuTLS refuses %s (%s)", quote(&qb, t->priorities),
                    gnutls_strerror(rc));
    }
    gnutls_priority_deinit(cache);
    return 0;
}

static int check_public_listen(struct parser *p, void *base, int line)
{
    struct cfg_public *pub = base;
    return parse_listen(p, line, pub->listen, &pub->listen_host, &pub->listen_port);
}

/* base_url: what goes before /u/<token> in every link (no trailing '/',
 * no query or fragment: the token ends the URL). */
static int check_public_base_url(struct parser *p, void *base, int line)
{
    struct cfg_public *pub = base;
    char *u = pub->base_url;
    struct qbuf qb;
    size_t n = strlen(u);
    while (n > 0 && u[n - 1] == '/')
        u[--n] = '\0';
    bool scheme = strncmp(u, "https://", 8) == 0 || strncmp(u, "http://", 7) == 0;
    const char *host = scheme ? strstr(u, "//") + 2 : u;
    if (!scheme || !*host || *host == '/' || strpbrk(u, "?# \"<>\\") || n > 200)
        return fail(p, line, "bad URL %s (want http:// or https://, a host, an optional path, "
                             "no query, at most 200 characters)", quote(&qb, pub->base_url));
    return 0;
}

static int check_public(struct parser *p, void *base, int line)
{
    struct cfg_public *pub = base;
    struct config *cfg = (struct config *)((char *)base - offsetof(struct config, public));
    (void)line;
    if (cfg->listen_host && strcmp(cfg->listen_host, pub->listen_host) == 0 &&
        cfg->listen_port == pub->listen_port)
        return fail(p, line, "the same address as listen: the public pages need a listener "
                             "of their own");
    pub->enabled = true;
    return 0;
}

static const struct directive public_table[] = {
    { .name = "base_url", .type = DT_STRING, .flags = D_REQUIRED,
      FIELD(struct cfg_public, base_url), .check = check_public_base_url },
    { .name = "listen", .type = DT_STRING, .flags = D_REQUIRED,
      FIELD(struct cfg_public, listen), .check = check_public_listen },
    { .name = "token_ttl", .type = DT_DURATION, FIELD(struct cfg_public, token_ttl_ms),
      .min = MS_PER_D, .max = 3660 * MS_PER_D, .def = "180d" },
    { .name = "organisation", .type = DT_STRING, FIELD(struct cfg_public, organisation) },
    { .name = "max_connections", .type = DT_INT, FIELD(struct cfg_public, max_connections),
      .min = 1, .max = 100000, .def = "1000" },
    { .name = "max_connections_per_ip", .type = DT_INT,
      FIELD(struct cfg_public, max_connections_per_ip), .min = 1, .max = 10000, .def = "16" },
    { .name = NULL },
};

static const struct directive tls_table[] = {
    { .name = "cert_file", .type = DT_STRING, .flags = D_REQUIRED,
      FIELD(struct cfg_tls, cert_file), .check = check_tls_cert },
    { .name = "key_file", .type = DT_STRING, .flags = D_REQUIRED,
      FIELD(struct cfg_tls, key_file), .check = check_tls_key },
    { .name = "min_version", .type = DT_ENUM, ENUM_FIELD(struct cfg_tls, min_version),
      /* before priorities: laid over them */ .choices = tls_versions, .def = "1.2" },
    { .name = "priorities", .type = DT_STRING, FIELD(struct cfg_tls, priorities),
      .def = "NORMAL", .check = check_tls_priorities },
    { .name = NULL },
};

static const struct directive fatigue_cap_table[] = {
    { .name = "limit", .type = DT_INT, .flags = D_REQUIRED, FIELD(struct cfg_fatigue, limit),
      .min = 1, .max = CAP_LIMIT_MAX },
    { .name = "window", .type = DT_DURATION, .flags = D_REQUIRED,
      FIELD(struct cfg_fatigue, window_ms), .min = MS_PER_S, .max = 366 * MS_PER_D },
    { .name = "on_exceed", .type = DT_ENUM, ENUM_FIELD(struct cfg_fatigue, on_exceed),
      .choices = cap_actions, .def = "defer" },
    { .name = NULL },
};

static int check_fatigue(struct parser *p, void *base, int line)
{
    (void)p; (void)line;
    ((struct cfg_fatigue *)base)->enabled = true;
    return 0;
}

static const struct directive fatigue_table[] = {
    { .name = "unengaged_after", .type = DT_INT, .flags = D_REQUIRED,
      FIELD(struct cfg_fatigue, unengaged_after), .min = 1, .max = 1000 },
    { .name = "cap", .type = DT_SECTION, .flags = D_REQUIRED, .off = 0,
      .sub = fatigue_cap_table },
    { .name = NULL },
};

static const struct directive delivery_table[] = {
    { .name = "max_attempts", .type = DT_INT, FIELD(struct cfg_delivery, max_attempts),
      .min = 1, .max = 100, .def = "8" },
    { .name = "backoff", .type = DT_DURATION, FIELD(struct cfg_delivery, backoff_ms),
      .min = 100, .max = MS_PER_D, .def = "2s" },
    { .name = "max_backoff", .type = DT_DURATION, FIELD(struct cfg_delivery, max_backoff_ms),
      .min = 100, .max = 7 * MS_PER_D, .def = "10m" },
    { .name = "max_deferred", .type = DT_INT, FIELD(struct cfg_delivery, max_deferred),
      .min = 256, .max = 1000000000, .def = "1000000" },
    { .name = "lease", .type = DT_DURATION, FIELD(struct cfg_delivery, lease_ms),
      .min = MS_PER_S, .max = MS_PER_H, .def = "30s" },
    { .name = "sweep", .type = DT_DURATION, FIELD(struct cfg_delivery, sweep_ms),
      .min = MS_PER_S, .max = MS_PER_H, .def = "120s" },
    { .name = NULL },
};

/* A message being forwarded waits in the queue under a lease (decide.lua),
 * so that another gateway takes it over if this one dies: a lease shorter
 * than an upstream's timeout would hand over messages still in flight. */
static int check_delivery(struct parser *p, void *base, int line)
{
    const struct cfg_delivery *d = base;
    for (size_t k = 0; k < p->cfg->n_channels; k++) {
        const struct cfg_channel *ch = &p->cfg->channels[k];
        if (ch->upstream.enabled && (int64_t)ch->upstream.timeout_ms * 2 > d->lease_ms)
            return fail(p, line, "lease: %lldms is less than twice channels.%s.upstream.timeout_ms "
                        "(%d): a message still being forwarded would be handed to another gateway",
                        (long long)d->lease_ms, ch->name, ch->upstream.timeout_ms);
    }
    return 0;
}

/* routes[].user etc.: where a value is found in a proxied request. */
static int check_extract(struct parser *p, const char *spec, int line)
{
    struct qbuf qb;
    if (!spec)
        return 0;
    if (strncmp(spec, "json:", 5) == 0 && (spec[5] == '/' || spec[5] == '\0'))
        return 0;
    if ((strncmp(spec, "header:", 7) == 0 && spec[7] && !strpbrk(spec + 7, " :\t\r\n")) ||
        (strncmp(spec, "form:", 5) == 0 && spec[5] && !strpbrk(spec + 5, "&=\t\r\n")))
        return 0;
    return fail(p, line, "%s: want \"json:/pointer\", \"header:Name\" or \"form:Name\"",
                quote(&qb, spec));
}

/* A string or a list of strings into *OUT / *N (at most MAX), each checked
 * by CHECK (NULL: any non-empty string). */
static int parse_string_list(struct parser *p, struct fy_node *v, int line, const char *what,
                             size_t max, int (*check)(struct parser *, const char *, int),
                             char ***out, size_t *n)
{
    struct fy_node *item;
    void *it = NULL;
    struct scalar s;

    if (check_untagged(p, v, line))
        return -1;
    if (!is_null(v) && fy_node_is_scalar(v)) {
        if (get_scalar(p, v, line, what, &s) || (check && check(p, s.s, s.line)))
            return -1;
        if (!(*out = calloc(1, sizeof **out)) || !((*out)[0] = strdup(s.s)))
            return fail(p, line, "out of memory");
        *n = 1;
        return 0;
    }
    if (is_null(v) || !fy_node_is_sequence(v))
        return fail(p, node_line(v, line), "expected %s or a list of them, got %s", what,
                    kind_of(v));
    size_t count = (size_t)fy_node_sequence_item_count(v);
    if (count == 0 || count > max)
        return fail(p, node_line(v, line), "expected 1 to %zu of %s", max, what);
    if (!(*out = calloc(count, sizeof **out)))
        return fail(p, line, "out of memory");
    for (size_t i = 0; (item = fy_node_sequence_iterate(v, &it)) != NULL; i++) {
        size_t saved = push_index(p, i);
        if (get_scalar(p, item, line, what, &s) || (check && check(p, s.s, s.line)))
            return -1;
        if (!((*out)[i] = strdup(s.s)))
            return fail(p, s.line, "out of memory");
        *n = i + 1;
        pop_key(p, saved);
    }
    return 0;
}

/* routes[].user: where the recipients are (a spec, or a list of them). */
static int parse_route_users(struct parser *p, void *base, bool present, struct fy_node *v,
                             int line)
{
    struct cfg_route *r = base;
    if (!present)
        return fail(p, line, "missing required key");
    return parse_string_list(p, v, line, "a \"json:/pointer\", \"header:Name\" or "
                             "\"form:Name\"", ROUTE_USERS_MAX, check_extract, &r->users,
                             &r->n_users);
}

static int check_header_name(struct parser *p, const char *s, int line)
{
    struct qbuf qb;
    for (const char *c = s; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
              strchr("!#$%&'*+-.^_`|~", *c)))
            return fail(p, line, "%s is not a header name", quote(&qb, s));
    return 0;
}

/* routes[].replay_headers: the upstream's headers a replay answers again. */
static int parse_replay_headers(struct parser *p, void *base, bool present, struct fy_node *v,
                                int line)
{
    struct cfg_route *r = base;
    if (!present || is_null(v))
        return 0;
    return parse_string_list(p, v, line, "a header name", ROUTE_REPLAY_HEADERS_MAX,
                             check_header_name, &r->replay_headers, &r->n_replay_headers);
}

static int check_route_campaign(struct parser *p, void *base, int line)
{
    return check_extract(p, ((struct cfg_route *)base)->campaign, line);
}
static int check_route_message_id(struct parser *p, void *base, int line)
{
    return check_extract(p, ((struct cfg_route *)base)->message_id, line);
}
static int check_route_category(struct parser *p, void *base, int line)
{
    return check_extract(p, ((struct cfg_route *)base)->category, line);
}

static int check_route_path(struct parser *p, void *base, int line)
{
    const struct cfg_route *r = base;
    struct qbuf qb;
    if (r->path[0] != '/' || strpbrk(r->path, "?# \t"))
        return fail(p, line, "%s: want an absolute path without query", quote(&qb, r->path));
    if (strncmp(r->path, "/v1/", 4) == 0 || strcmp(r->path, "/status") == 0 ||
        strcmp(r->path, "/status.html") == 0 || strcmp(r->path, "/metrics") == 0 ||
        strcmp(r->path, "/healthz") == 0 || strcmp(r->path, "/readyz") == 0)
        return fail(p, line, "%s is capgate's own path", quote(&qb, r->path));
    return 0;
}

static int check_route_channel(struct parser *p, void *base, int line)
{
    const struct cfg_route *r = base;
    const struct cfg_channel *ch = config_channel(p->cfg, r->channel);
    struct qbuf qb;
    if (!ch)
        return fail(p, line, "unknown channel %s", quote(&qb, r->channel));
    if (!ch->upstream.enabled)
        return fail(p, line, "channel %s has no upstream", quote(&qb, r->channel));
    return 0;
}

/* unsubscribe_headers: "json:<pointer>" whose last step is a plain key (the
 * headers object, made when absent) and whose steps before it go through
 * at least one "*" (an element per message: a personalization); the links
 * need the public section. */
static int check_route_unsubscribe_headers(struct parser *p, void *base, int line)
{
    const struct cfg_route *r = base;
    const char *s = r->unsubscribe_headers;
    if (!s)
        return 0;
    const char *last = strrchr(s, '/');
    struct qbuf qb;
    if (strncmp(s, "json:/", 6) != 0 || !last || last == s + 5 || !last[1] ||
        strspn(last + 1, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-") !=
            strlen(last + 1) || !strstr(s, "/*/"))
        return fail(p, line, "bad %s (want json:<pointer> to the headers object of each "
                             "message, e.g. \"json:/personalizations/*/headers\")",
                    quote(&qb, s));
    if (!p->cfg->public.enabled)
        return fail(p, line, "unsubscribe links need the public section (public.base_url, "
                             "public.listen)");
    return 0;
}

static const struct directive route_table[] = {
    { .name = "path", .type = DT_STRING, .flags = D_REQUIRED, FIELD(struct cfg_route, path),
      .check = check_route_path },
    { .name = "channel", .type = DT_STRING, .flags = D_REQUIRED, FIELD(struct cfg_route, channel),
      .check = check_route_channel },
    { .name = "user", .type = DT_CUSTOM, .parse = parse_route_users },
    { .name = "replay_headers", .type = DT_CUSTOM, .parse = parse_replay_headers },
    { .name = "message_id", .type = DT_STRING, .flags = D_REQUIRED,
      FIELD(struct cfg_route, message_id), .check = check_route_message_id },
    { .name = "campaign", .type = DT_STRING, FIELD(struct cfg_route, campaign),
      .check = check_route_campaign },
    { .name = "category", .type = DT_STRING, FIELD(struct cfg_route, category),
      .check = check_route_category },
    { .name = "unsubscribe_headers", .type = DT_STRING,
      FIELD(struct cfg_route, unsubscribe_headers), .check = check_route_unsubscribe_headers },
    { .name = NULL },
};

/* routes[i]: no path twice. */
static int check_route(struct parser *p, void *base, int line)
{
    const struct cfg_route *r = base;
    for (size_t j = 0; j < p->list_index; j++)
        if (strcmp(p->cfg->routes[j].path, r->path) == 0)
            return fail(p, line, "path appears twice");
    return 0;
}

static const struct directive audit_table[] = {
    { .name = "enabled", .type = DT_BOOL, FIELD(struct cfg_audit, enabled), .def = "true" },
    { .name = "max_entries", .type = DT_INT, FIELD(struct cfg_audit, max_entries),
      .min = 1000, .max = 100000000, .def = "1000000" },
    { .name = "retention", .type = DT_DURATION, FIELD(struct cfg_audit, retention_ms),
      .min = MS_PER_H, .max = 3650 * MS_PER_D, .def = "30d" },
    { .name = "file", .type = DT_STRING, FIELD(struct cfg_audit, file) },
    { .name = NULL },
};

/* ------------------------------------------------------------------------ */
/* The tables                                                               */
/* ------------------------------------------------------------------------ */

static const struct choice log_levels[] = {
    { "error", LOG_LEVEL_ERROR }, { "warn", LOG_LEVEL_WARN },
    { "info", LOG_LEVEL_INFO }, { "debug", LOG_LEVEL_DEBUG }, { NULL, 0 },
};

static const struct choice log_formats[] = {
    { "logfmt", LOG_FORMAT_LOGFMT }, { "json", LOG_FORMAT_JSON }, { NULL, 0 },
};

static const struct choice unavailable_policies[] = {
    { "reject", 0 }, { "allow", 1 }, { NULL, 0 },     /* -> fail_open */
};

/* cluster, user and password come first: url's check looks at them.  url
 * has no .def: its check applies REDIS_URL_DEFAULT unless cluster is set. */
static const struct directive redis_table[] = {
    { .name = "cluster", .type = DT_CUSTOM, .parse = parse_redis_cluster },
    { .name = "user", .type = DT_STRING, FIELD(struct cfg_redis, user),
      .check = check_redis_user },
    { .name = "password", .type = DT_STRING, FIELD(struct cfg_redis, password),
      .check = check_redis_password },
    { .name = "url", .type = DT_STRING, FIELD(struct cfg_redis, url),
      .check = check_redis_url },
    { .name = "timeout_ms", .type = DT_INT, FIELD(struct cfg_redis, timeout_ms),
      .min = 1, .max = 60000, .def = "250" },
    { .name = "on_unavailable", .type = DT_ENUM, FIELD(struct cfg_redis, fail_open),
      .choices = unavailable_policies, .def = "reject" },
    { .name = "bucket_bits", .type = DT_INT, FIELD(struct cfg_redis, bucket_bits),
      .min = 12, .max = 24, .def = "16" },
    { .name = NULL },
};

/* The controller travels into every consent receipt (receipt.h): a name,
 * one line. */
static int check_controller(struct parser *p, void *base, int line)
{
    const char *c = ((struct config *)base)->controller;
    if (!c)
        return 0;
    for (const char *q = c; *q; q++)
        if ((unsigned char)*q < 0x20 || *q == 0x7f)
            return fail(p, line, "privacy.controller must be one line without control characters");
    if (strlen(c) > 200)
        return fail(p, line, "privacy.controller must be at most 200 bytes");
    return 0;
}

/* privacy's keys live on struct config itself: base offset 0. */
static const struct directive privacy_table[] = {
    { .name = "key_file", .type = DT_STRING, .flags = D_REQUIRED,
      FIELD(struct config, key_file) },
    /* During a key rotation: the key before, so nobody's records are lost
     * (read with key_file by gateway_load_support). */
    { .name = "previous_key_file", .type = DT_STRING,
      FIELD(struct config, previous_key_file) },
    { .name = "retention", .type = DT_DURATION, FIELD(struct config, retention_ms),
      .min = MS_PER_D, .max = 3650 * MS_PER_D, .def = "400d" },
    { .name = "controller", .type = DT_STRING, FIELD(struct config, controller),
      .check = check_controller },
    { .name = NULL },
};

/* Order matters: zoneinfo_dir before default_tz, start before end. */
static const struct directive quiet_table[] = {
    { .name = "start", .type = DT_CLOCK, .flags = D_REQUIRED,
      FIELD(struct cfg_quiet_hours, start_min) },
    { .name = "end", .type = DT_CLOCK, .flags = D_REQUIRED,
      FIELD(struct cfg_quiet_hours, end_min), .check = check_quiet_end },
    { .name = "zoneinfo_dir", .type = DT_STRING, FIELD(struct cfg_quiet_hours, zoneinfo_dir),
      .def = "/usr/share/zoneinfo", .check = check_zoneinfo_dir },
    { .name = "default_tz", .type = DT_STRING, FIELD(struct cfg_quiet_hours, default_tz),
      .def = "UTC", .check = check_default_tz },
    { .name = "channels", .type = DT_CUSTOM, .parse = parse_quiet_channels },
    { .name = NULL },
};

/* True for 127.0.0.0/8 and ::1 (listen_host is canonical by now). */
static bool loopback_listener(const char *host)
{
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, host, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    return inet_pton(AF_INET6, host, &a6) == 1 && IN6_IS_ADDR_LOOPBACK(&a6);
}

/* limits.max_connections_per_ip.  Absent, it depends on the listener: on
 * loopback every client has the same few addresses (a proxy, a sidecar), so
 * no limit; on any other address one client must not be able to take every
 * connection (slow-header floods: issue 12 item 8), so a sixteenth of
 * max_connections.  Behind a load balancer every connection comes from the
 * balancer: set 0 there (the man page says so). */
#define PER_IP_SHARE 16

static int parse_per_ip(struct parser *p, void *base, bool present, struct fy_node *v,
                        int line)
{
    struct cfg_limits *l = base;
    static const struct directive as_int = {
        .name = "max_connections_per_ip", .type = DT_INT,
        FIELD(struct cfg_limits, max_connections_per_ip), .min = 0, .max = 1000000,
    };
    struct scalar sc;

    if (present) {
        if (get_scalar(p, v, line, "an integer", &sc))
            return -1;
        return set_value(p, &as_int, base, &sc);
    }
    l->max_connections_per_ip = loopback_listener(p->cfg->listen_host)
                                ? 0 : (l->max_connections + PER_IP_SHARE - 1) / PER_IP_SHARE;
    return 0;
}

static const struct directive limits_table[] = {
    { .name = "max_body_bytes", .type = DT_INT, FIELD(struct cfg_limits, max_body_bytes),
      .min = 256, .max = 16777216, .def = "65536" },
    { .name = "max_connections", .type = DT_INT, FIELD(struct cfg_limits, max_connections),
      .min = 1, .max = 1000000, .def = "4096" },
    { .name = "max_connections_per_ip", .type = DT_CUSTOM,
      .parse = parse_per_ip /* after max_connections: its default is a share of it */ },
    { .name = "connection_timeout", .type = DT_DURATION, .flags = D_SECONDS,
      FIELD(struct cfg_limits, connection_timeout_s), .min = MS_PER_S, .max = MS_PER_H,
      .def = "30s" },
    { .name = "header_timeout", .type = DT_DURATION, .flags = D_SECONDS,
      FIELD(struct cfg_limits, header_timeout_s), .min = MS_PER_S, .max = MS_PER_H,
      .def = "10s" },
    { .name = "connection_memory_bytes", .type = DT_INT,
      FIELD(struct cfg_limits, connection_memory_bytes), .min = 8192, .max = 16777216,
      .def = "16384" },
    { .name = "max_pending", .type = DT_INT, FIELD(struct cfg_limits, max_pending),
      .min = 1, .max = 1000000, .def = "10000" },
    { .name = "max_recipients", .type = DT_INT, FIELD(struct cfg_limits, max_recipients),
      .min = 1, .max = 100000, .def = "1000" },
    { .name = NULL },
};

/* Top level.  channels and categories come before everything that refers
 * to them (default_category, caps, quiet_hours). */
static const struct directive config_table[] = {
    { .name = "listen", .type = DT_STRING, FIELD(struct config, listen),
      .def = "127.0.0.1:8425", .check = check_listen },
    { .name = "log_level", .type = DT_ENUM, ENUM_FIELD(struct config, log_level),
      .choices = log_levels, .def = "info" },
    { .name = "log_format", .type = DT_ENUM, ENUM_FIELD(struct config, log_format),
      .choices = log_formats, .def = "logfmt" },
    { .name = "redis", .type = DT_SECTION, .off = offsetof(struct config, redis),
      .sub = redis_table },
    { .name = "privacy", .type = DT_SECTION, .flags = D_REQUIRED, .off = 0,
      .sub = privacy_table },
    /* Before channels and routes: their unsubscribe_headers need it. */
    { .name = "public", .type = DT_SECTION, .flags = D_OPTIONAL,
      .off = offsetof(struct config, public), .sub = public_table, .check = check_public },
    { .name = "channels", .type = DT_CUSTOM, .flags = D_REQUIRED, .parse = parse_channels },
    { .name = "categories", .type = DT_CUSTOM, .flags = D_REQUIRED,
      .parse = parse_categories },
    { .name = "default_category", .type = DT_STRING, FIELD(struct config, default_category),
      .check = check_default_category },
    { .name = "caps", .type = DT_LIST, .sub = cap_table, .off = offsetof(struct config, caps),
      .count_off = offsetof(struct config, n_caps), .item_size = sizeof(struct cfg_cap),
      .max = MAX_CAPS, .what = "caps" },
    { .name = "throttles", .type = DT_LIST, .sub = throttle_table,
      .off = offsetof(struct config, throttles), .count_off = offsetof(struct config, n_throttles),
      .item_size = sizeof(struct cfg_throttle), .max = THROTTLES_MAX, .what = "throttles",
      .check = check_throttle },
    { .name = "breaker", .type = DT_SECTION, .flags = D_OPTIONAL,
      .off = offsetof(struct config, breaker), .sub = breaker_table, .check = check_breaker },
    { .name = "quiet_hours", .type = DT_SECTION, .flags = D_OPTIONAL,
      .off = offsetof(struct config, quiet_hours), .sub = quiet_table,
      .check = check_quiet_hours },
    { .name = "max_defer", .type = DT_DURATION, FIELD(struct config, max_defer_ms),
      .min = MS_PER_S, .max = 366 * MS_PER_D, .def = "7d" },
    { .name = "idempotency_window", .type = DT_DURATION, FIELD(struct config, idempotency_ms),
      .min = MS_PER_S, .max = 366 * MS_PER_D, .def = "1d" },
    { .name = "limits", .type = DT_SECTION, .off = offsetof(struct config, limits),
      .sub = limits_table },
    { .name = "workers", .type = DT_INT, FIELD(struct config, workers),
      .min = 0, .max = 64, .def = "0" },
    { .name = "access_log", .type = DT_BOOL, FIELD(struct config, access_log), .def = "false" },
    { .name = "auth", .type = DT_SECTION, .flags = D_OPTIONAL,
      .off = offsetof(struct config, auth), .sub = auth_table, .check = check_auth },
    { .name = "tls", .type = DT_SECTION, .flags = D_OPTIONAL,
      .off = offsetof(struct config, tls), .sub = tls_table, .check = check_tls },
    { .name = "fatigue", .type = DT_SECTION, .flags = D_OPTIONAL,
      .off = offsetof(struct config, fatigue), .sub = fatigue_table, .check = check_fatigue },
    { .name = "audit", .type = DT_SECTION, .off = offsetof(struct config, audit),
      .sub = audit_table },
    { .name = "delivery", .type = DT_SECTION, .off = offsetof(struct config, delivery),
      .sub = delivery_table, .check = check_delivery },
    { .name = "routes", .type = DT_LIST, .sub = route_table,
      .off = offsetof(struct config, routes), .count_off = offsetof(struct config, n_routes),
      .item_size = sizeof(struct cfg_route), .max = 64, .what = "routes",
      .check = check_route },
    { .name = "shutdown_timeout", .type = DT_DURATION, .flags = D_SECONDS,
      FIELD(struct config, shutdown_timeout_s), .min = MS_PER_S, .max = MS_PER_H,
      .def = "10s" },
    { .name = NULL },
};

/* ------------------------------------------------------------------------ */
/* File and YAML                                                            */
/* ------------------------------------------------------------------------ */

static int io_fail(struct parser *p, int errnum)
{
    snprintf(p->err, p->errlen, "%s: cannot read: %s", p->file, strerror(errnum));
    return -1;
}

static int read_file(struct parser *p, char **out, size_t *lenp)
{
    int fd = open(p->file, O_RDONLY | O_CLOEXEC);
    struct stat st;
    char *buf = NULL;
    size_t len = 0, cap = 0;
    int e = 0;

    if (fd < 0)
        return io_fail(p, errno);
    if (fstat(fd, &st) < 0)
        e = errno;
    else if (S_ISDIR(st.st_mode))
        e = EISDIR;
    /* Sized from fstat and grown if the file grows meanwhile, up to one
     * byte more than allowed: reading that byte means "too large". */
    while (e == 0 && len <= MAX_CONFIG_BYTES) {
        ssize_t n;

        if (len == cap) {
            size_t want = cap ? cap * 2 : st.st_size > 0 ? (size_t)st.st_size + 1 : 4096;
            char *nbuf;

            if (want > MAX_CONFIG_BYTES + 1)
                want = MAX_CONFIG_BYTES + 1;
            if ((nbuf = realloc(buf, want + 1)) == NULL) {
                e = ENOMEM;
                break;
            }
            buf = nbuf;
            cap = want;
        }
        n = read(fd, buf + len, cap - len);
        if (n < 0 && errno != EINTR)
            e = errno;
        else if (n == 0)
            break;
        else if (n > 0)
            len += (size_t)n;
    }
    close(fd);
    if (e == 0 && len > MAX_CONFIG_BYTES) {
        free(buf);
        snprintf(p->err, p->errlen, "%s: file too large (max %d bytes)", p->file,
                 MAX_CONFIG_BYTES);
        return -1;
    }
    if (e != 0) {
        free(buf);
        return io_fail(p, e);
    }
    if (buf == NULL && (buf = malloc(1)) == NULL)     /* empty file */
        return io_fail(p, ENOMEM);
    buf[len] = '\0';
    *out = buf;
    *lenp = len;
    return 0;
}

/* libfyaml reports some encoding errors without a position; checking the
 * encoding first gives every such error a line. */
static int check_utf8(struct parser *p, const char *text, size_t len)
{
    const unsigned char *s = (const unsigned char *)text;
    int line = 1;

    for (size_t i = 0; i < len;) {
        unsigned c = s[i];
        uint32_t cp, min;
        size_t n;

        if (c == '\n')
            line++;
        if (c == 0)
            return fail(p, line, "NUL byte in file");
        if (c < 0x80) {
            i++;
            continue;
        }
        if ((c & 0xe0) == 0xc0) { n = 2; cp = c & 0x1f; min = 0x80; }
        else if ((c & 0xf0) == 0xe0) { n = 3; cp = c & 0x0f; min = 0x800; }
        else if ((c & 0xf8) == 0xf0) { n = 4; cp = c & 0x07; min = 0x10000; }
        else return fail(p, line, "invalid UTF-8");
        if (i + n > len)
            return fail(p, line, "invalid UTF-8");
        for (size_t k = 1; k < n; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return fail(p, line, "invalid UTF-8");
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return fail(p, line, "invalid UTF-8");
        i += n;
    }
    return 0;
}

struct yaml {
    struct fy_diag *diag;
    struct fy_parser *fyp;
    struct fy_document *doc;
};

/* libfyaml must never write to stderr on its own: the daemon's log is the
 * only place errors go.  Its messages are collected instead (see below). */
static void diag_discard(struct fy_diag *diag, void *user, const char *buf, size_t len)
{
    (void)diag; (void)user; (void)buf; (void)len;
}

/* The first collected libfyaml error as "<path>:<line>: <message>". */
static int yaml_error(struct parser *p, struct fy_diag *diag)
{
    void *it = NULL;
    struct fy_diag_error *e = fy_diag_errors_iterate(diag, &it);

    if (e != NULL)
        snprintf(p->err, p->errlen, "%s:%d: YAML syntax error: %s", p->file,
                 e->line > 0 ? e->line : 1, e->msg ? e->msg : "unknown error");
    else
        snprintf(p->err, p->errlen, "%s: YAML syntax error", p->file);
    return -1;
}

/* Aliases are expanded by copying: a few hundred bytes of nested aliases
 * ("billion laughs") would become gigabytes.  The expanded size is counted
 * first, without copying, and a config that would exceed this is refused. */
#define MAX_EXPANDED_NODES 100000
#define ALIAS_DEPTH_MAX 64

static bool yaml_too_big(struct fy_node *n, size_t *count, struct fy_node **open_aliases,
                         int depth)
{
    void *it = NULL;
    if (n == NULL)
        return false;
    if (++*count > MAX_EXPANDED_NODES)
        return true;
    if (fy_node_is_alias(n)) {
        struct fy_node *t = fy_node_resolve_alias(n);
        for (int k = 0; k < depth; k++)
            if (open_aliases[k] == t)
                return false;                   /* a cycle: fy_document_resolve reports it */
        if (depth == ALIAS_DEPTH_MAX)
            return true;
        open_aliases[depth] = t;
        return yaml_too_big(t, count, open_aliases, depth + 1);
    }
    if (fy_node_is_mapping(n)) {
        struct fy_node_pair *pair;
        while ((pair = fy_node_mapping_iterate(n, &it)) != NULL)
            if (yaml_too_big(fy_node_pair_key(pair), count, open_aliases, depth) ||
                yaml_too_big(fy_node_pair_value(pair), count, open_aliases, depth))
                return true;
    } else if (fy_node_is_sequence(n)) {
        struct fy_node *item;
        while ((item = fy_node_sequence_iterate(n, &it)) != NULL)
            if (yaml_too_big(item, count, open_aliases, depth))
                return true;
    }
    return false;
}

static int yaml_parse(struct parser *p, const char *text, size_t len, struct yaml *y)
{
    struct fy_diag_cfg dcfg;
    struct fy_parse_cfg pcfg;
    struct fy_document *extra;
    void *it = NULL;

    fy_diag_cfg_default(&dcfg);
    dcfg.fp = NULL;
    dcfg.output_fn = diag_discard;
    dcfg.user = NULL;
    dcfg.colorize = false;
    if ((y->diag = fy_diag_create(&dcfg)) == NULL)
        return fail(p, 1, "out of memory");
    fy_diag_set_collect_errors(y->diag, true);

    memset(&pcfg, 0, sizeof pcfg);
    /* Anchors, aliases and merge keys are resolved (below, once the size
     * they expand to is known), so the walker only ever sees plain
     * mappings, sequences and scalars. */
    pcfg.flags = FYPCF_QUIET | FYPCF_JSON_NONE;
    pcfg.diag = y->diag;
    if ((y->fyp = fy_parser_create(&pcfg)) == NULL ||
        fy_parser_set_string(y->fyp, text, len) < 0)
        return fail(p, 1, "cannot set up the YAML parser");

    y->doc = fy_parse_load_document(y->fyp);
    /* NULL without error is an empty file; some errors are collected
     * without fy_diag_got_error(), so look at the collection too. */
    if (y->doc == NULL)
        return fy_diag_errors_iterate(y->diag, &it) || fy_diag_got_error(y->diag)
               ? yaml_error(p, y->diag) : 0;
    extra = fy_parse_load_document(y->fyp);
    if (extra != NULL) {
        int line = node_line(fy_document_root(extra), 1);

        fy_parse_document_destroy(y->fyp, extra);
        return fail(p, line, "only one YAML document is allowed");
    }
    if (fy_diag_errors_iterate(y->diag, &it) || fy_diag_got_error(y->diag))
        return yaml_error(p, y->diag);
    size_t count = 0;
    struct fy_node *open_aliases[ALIAS_DEPTH_MAX];
    if (yaml_too_big(fy_document_root(y->doc), &count, open_aliases, 0))
        return fail(p, 1, "aliases expand to more than %d YAML nodes", MAX_EXPANDED_NODES);
    if (fy_document_resolve(y->doc) != 0)
        return yaml_error(p, y->diag);
    return 0;
}

static void yaml_close(struct yaml *y)
{
    if (y->doc != NULL)
        fy_parse_document_destroy(y->fyp, y->doc);
    if (y->fyp != NULL)
        fy_parser_destroy(y->fyp);
    if (y->diag != NULL)
        fy_diag_destroy(y->diag);
}

/* ------------------------------------------------------------------------ */
/* Public interface                                                         */
/* ------------------------------------------------------------------------ */

struct config *config_load(const char *path, char *err, size_t errlen)
{
    char scratch[CONFIG_ERR_LEN];
    struct parser p;
    struct yaml y = { NULL, NULL, NULL };
    struct config *cfg;
    char *text = NULL;
    size_t len = 0;
    int rc;

    if (err == NULL || errlen == 0) {
        err = scratch;
        errlen = sizeof scratch;
    }
    err[0] = '\0';
    if (path == NULL) {
        snprintf(err, errlen, "config: no file name");
        return NULL;
    }
    if ((cfg = calloc(1, sizeof *cfg)) != NULL)
        cfg->refs = 1;
    if (cfg == NULL) {
        snprintf(err, errlen, "%s: out of memory", path);
        return NULL;
    }
    memset(&p, 0, sizeof p);
    p.file = path;
    p.err = err;
    p.errlen = errlen;
    p.cfg = cfg;

    rc = read_file(&p, &text, &len);
    if (rc == 0)
        rc = check_utf8(&p, text, len);
    if (rc == 0)
        rc = yaml_parse(&p, text, len, &y);
    if (rc == 0) {
        struct fy_node *root = y.doc ? fy_document_root(y.doc) : NULL;

        /* An empty file (or only comments) says so, rather than naming
         * the first required key it lacks. */
        if (!root || (fy_node_is_mapping(root) && fy_node_mapping_item_count(root) == 0))
            rc = fail(&p, 1, "the file is empty: it needs at least privacy.key_file, channels "
                             "and categories (conf/capgate.yaml is an example)");
        else
            rc = parse_section(&p, config_table, cfg, root, node_line(root, 1));
    }
    /* With quiet_hours absent these still get their documented defaults,
     * unchecked, so that readers never meet NULL. */
    if (rc == 0 && !cfg->quiet_hours.enabled) {
        struct cfg_quiet_hours *q = &cfg->quiet_hours;

        if ((q->default_tz == NULL && (q->default_tz = strdup("UTC")) == NULL) ||
            (q->zoneinfo_dir == NULL &&
             (q->zoneinfo_dir = strdup("/usr/share/zoneinfo")) == NULL))
            rc = fail(&p, 1, "out of memory");
    }
    if (rc == 0 && (cfg->path = strdup(path)) == NULL)
        rc = fail(&p, 1, "out of memory");

    yaml_close(&y);
    free(text);
    if (rc != 0) {
        config_free(cfg);
        return NULL;
    }
    return cfg;
}

static void free_secret(char *s)
{
    if (s != NULL) {
        explicit_bzero(s, strlen(s));
        free(s);
    }
}

const struct config *config_retain(const struct config *cfg)
{
    __atomic_add_fetch(&((struct config *)cfg)->refs, 1, __ATOMIC_RELAXED);
    return cfg;
}

void config_release(const struct config *cfg)
{
    if (cfg && __atomic_sub_fetch(&((struct config *)cfg)->refs, 1, __ATOMIC_ACQ_REL) == 0)
        config_free((struct config *)cfg);
}

void config_free(struct config *cfg)
{
    if (cfg == NULL)
        return;
    free(cfg->path);
    free(cfg->listen);
    free(cfg->listen_host);
    free(cfg->public.base_url);
    free(cfg->public.listen);
    free(cfg->public.listen_host);
    free(cfg->public.organisation);
    free(cfg->controller);

    free_secret(cfg->redis.url);    /* still the raw URL if loading failed */
    free(cfg->redis.host);
    free(cfg->redis.path);
    free(cfg->redis.user);
    free_secret(cfg->redis.password);
    for (size_t i = 0; i < cfg->redis.n_cluster; i++)
        free(cfg->redis.cluster[i].host);
    free(cfg->redis.cluster);

    free(cfg->key_file);
    free(cfg->previous_key_file);
    for (size_t i = 0; i < cfg->n_channels; i++) {
        struct cfg_upstream *u = &cfg->channels[i].upstream;
        free(cfg->channels[i].name);
        free(u->url);
        free(u->unsubscribe_headers);
        free(u->warmup.start);
        for (size_t h = 0; h < u->n_headers; h++)
            free_secret(u->headers[h]);   /* may hold an API token */
        free(u->headers);
    }
    free(cfg->channels);
    for (size_t i = 0; i < cfg->n_categories; i++)
        free(cfg->categories[i].name);
    free(cfg->categories);
    free(cfg->default_category);
    for (size_t i = 0; i < cfg->n_caps; i++) {
        free(cfg->caps[i].name);
        free(cfg->caps[i].channel);
        free(cfg->caps[i].category);
    }
    free(cfg->caps);
    for (size_t i = 0; i < cfg->n_throttles; i++) {
        free(cfg->throttles[i].name);
        free(cfg->throttles[i].channel);
    }
    free(cfg->throttles);
    free(cfg->breaker.complaint_rate_s);
    free(cfg->breaker.unsubscribe_rate_s);
    for (size_t i = 0; i < cfg->auth.n_tokens; i++) {
        free(cfg->auth.tokens[i].name);
        free(cfg->auth.tokens[i].sha256);
    }
    free(cfg->auth.tokens);
    free(cfg->tls.cert_file);
    free(cfg->tls.key_file);
    free(cfg->tls.priorities);
    free(cfg->tls.priority_string);
    free(cfg->audit.file);
    for (size_t i = 0; i < cfg->n_routes; i++) {
        struct cfg_route *r = &cfg->routes[i];
        free(r->path);
        free(r->channel);
        for (size_t k = 0; k < r->n_users; k++)
            free(r->users[k]);
        free(r->users);
        for (size_t k = 0; k < r->n_replay_headers; k++)
            free(r->replay_headers[k]);
        free(r->replay_headers);
        free(r->campaign);
        free(r->message_id);
        free(r->category);
        free(r->unsubscribe_headers);
    }
    free(cfg->routes);

    for (size_t i = 0; i < cfg->quiet_hours.n_channels; i++)
        free(cfg->quiet_hours.channels[i]);
    free(cfg->quiet_hours.channels);
    free(cfg->quiet_hours.default_tz);
    free(cfg->quiet_hours.zoneinfo_dir);
    free(cfg);
}

const struct cfg_channel *config_channel(const struct config *cfg, const char *name)
{
    if (cfg == NULL || name == NULL)
        return NULL;
    for (size_t i = 0; i < cfg->n_channels; i++)
        if (cfg->channels[i].name != NULL && strcmp(cfg->channels[i].name, name) == 0)
            return &cfg->channels[i];
    return NULL;
}

const struct cfg_category *config_category(const struct config *cfg, const char *name)
{
    if (cfg == NULL || name == NULL)
        return NULL;
    for (size_t i = 0; i < cfg->n_categories; i++)
        if (cfg->categories[i].name != NULL && strcmp(cfg->categories[i].name, name) == 0)
            return &cfg->categories[i];
    return NULL;
}

bool config_quiet_channel(const struct config *cfg, const char *channel)
{
    if (cfg == NULL || channel == NULL || !cfg->quiet_hours.enabled)
        return false;
    for (size_t i = 0; i < cfg->quiet_hours.n_channels; i++)
        if (strcmp(cfg->quiet_hours.channels[i], channel) == 0)
            return true;
    return false;
}

const char *config_controller(const struct config *cfg)
{
    return cfg->controller ? cfg->controller : cfg->public.organisation;
}

int64_t config_retention_ms(const struct config *cfg)
{
    int64_t ms;

    if (cfg == NULL)
        return 0;
    ms = cfg->idempotency_ms;
    for (size_t i = 0; i < cfg->n_caps; i++)
        if (cfg->caps[i].window_ms > ms)
            ms = cfg->caps[i].window_ms;
    if (cfg->fatigue.enabled && cfg->fatigue.window_ms > ms)
        ms = cfg->fatigue.window_ms;
    /* privacy.retention bounds every record that is not a suppression. */
    if (cfg->retention_ms > 0 && ms > cfg->retention_ms)
        ms = cfg->retention_ms;
    return ms;
}

/* jsonedit: JSON as spans of its bytes, found with wildcard pointers, cut
 * without touching the rest.  See jsonedit.h. */
#include "capgate/jsonedit.h"
#include "capgate/textbuf.h"

#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NONE UINT_MAX

enum jtype { J_OBJ, J_ARR, J_STR, J_NUM, J_LIT };

struct jnode {
    unsigned char type;
    bool removed;                  /* marked by jdoc_remove */
    bool gone, dirty;              /* jdoc_text's: left out / something inside is */
    bool appended;                 /* jdoc_append gave it members to add */
    unsigned parent, first, last, next, n;
    size_t start, end;             /* the value's bytes */
    size_t kstart, kend;           /* an object member's key, quotes included (else 0, 0) */
    unsigned rekey;                /* jdoc_rekey's: the member whose key it is written with */
};

struct jdoc {
    const char *text;
    size_t len, pos;
    struct jnode *nodes;
    unsigned n, cap;
    int depth;
    size_t rekeyed;                /* bytes jdoc_rekey's keys may add to jdoc_text */
    struct jappend {               /* jdoc_append's members, in the order given */
        unsigned node;
        char *text;
        size_t len;
    } *appends;
    unsigned n_appends, cap_appends;
    size_t appended;               /* their bytes, with a comma each */
};

/* ---- parsing ------------------------------------------------------------------ */

static void skip_ws(struct jdoc *d)
{
    while (d->pos < d->len && (d->text[d->pos] == ' ' || d->text[d->pos] == '\t' ||
                               d->text[d->pos] == '\n' || d->text[d->pos] == '\r'))
        d->pos++;
}

static unsigned new_node(struct jdoc *d, enum jtype type, unsigned parent)
{
    if (d->n >= JSONEDIT_NODES_MAX)
        return NONE;
    if (d->n == d->cap) {
        unsigned cap = d->cap ? d->cap * 2 : 64;
        struct jnode *nn = realloc(d->nodes, cap * sizeof *nn);
        if (!nn)
            return NONE;
        d->nodes = nn;
        d->cap = cap;
    }
    unsigned i = d->n++;
    d->nodes[i] = (struct jnode){ .type = (unsigned char)type, .parent = parent, .first = NONE,
                                  .last = NONE, .next = NONE, .rekey = NONE,
                                  .start = d->pos };
    if (parent != NONE) {
        struct jnode *p = &d->nodes[parent];
        if (p->last == NONE)
            p->first = i;
        else
            d->nodes[p->last].next = i;
        p->last = i;
        p->n++;
    }
    return i;
}

/* A string at d->pos: its end (after the closing quote), or 0. */
static size_t scan_string(struct jdoc *d)
{
    size_t p = d->pos + 1;
    while (p < d->len) {
        unsigned char c = (unsigned char)d->text[p];
        if (c == '"')
            return p + 1;
        if (c < 0x20)
            return 0;
        if (c == '\\') {
            if (p + 1 >= d->len)
                return 0;
            char e = d->text[p + 1];
            if (e == 'u') {
                if (p + 5 >= d->len)
                    return 0;
                for (int k = 2; k < 6; k++)
                    if (!strchr("0123456789abcdefABCDEF", d->text[p + k]) || !d->text[p + k])
                        return 0;
                p += 6;
                continue;
            }
            if (!strchr("\"\\/bfnrt", e) || !e)
                return 0;
            p += 2;
            continue;
        }
        p++;
    }
    return 0;
}

static bool digits(struct jdoc *d)
{
    size_t s = d->pos;
    while (d->pos < d->len && d->text[d->pos] >= '0' && d->text[d->pos] <= '9')
        d->pos++;
    return d->pos > s;
}

static bool parse_value(struct jdoc *d, unsigned parent, unsigned *out);

static bool parse_container(struct jdoc *d, unsigned self, bool object)
{
    char close = object ? '}' : ']';
    d->pos++;
    skip_ws(d);
    if (d->pos < d->len && d->text[d->pos] == close) {
        d->pos++;
        return true;
    }
    for (;;) {
        size_t kstart = 0, kend = 0;
        if (object) {
            if (d->pos >= d->len || d->text[d->pos] != '"')
                return false;
            kstart = d->pos;
            if (!(kend = scan_string(d)))
                return false;
            d->pos = kend;
            skip_ws(d);
            if (d->pos >= d->len || d->text[d->pos] != ':')
                return false;
            d->pos++;
            skip_ws(d);
        }
        unsigned child;
        if (!parse_value(d, self, &child))
            return false;
        d->nodes[child].kstart = kstart;
        d->nodes[child].kend = kend;
        skip_ws(d);
        if (d->pos >= d->len)
            return false;
        if (d->text[d->pos] == ',') {
            d->pos++;
            skip_ws(d);
            continue;
        }
        if (d->text[d->pos] != close)
            return false;
        d->pos++;
        return true;
    }
}

static bool parse_value(struct jdoc *d, unsigned parent, unsigned *out)
{
    if (d->pos >= d->len)
        return false;
    char c = d->text[d->pos];
    enum jtype t = c == '{' ? J_OBJ : c == '[' ? J_ARR : c == '"' ? J_STR
                 : (c == '-' || (c >= '0' && c <= '9')) ? J_NUM : J_LIT;
    unsigned self = new_node(d, t, parent);
    if (self == NONE)
        return false;
    *out = self;
    switch (t) {
    case J_OBJ:
    case J_ARR:
        if (++d->depth > JSONEDIT_DEPTH_MAX || !parse_container(d, self, t == J_OBJ))
            return false;
        d->depth--;
        break;
    case J_STR: {
        size_t e = scan_string(d);
        if (!e)
            return false;
        d->pos = e;
        break;
    }
    case J_NUM:
        if (d->text[d->pos] == '-')
            d->pos++;
        if (d->pos < d->len && d->text[d->pos] == '0')
            d->pos++;
        else if (!digits(d))
            return false;
        if (d->pos < d->len && d->text[d->pos] == '.') {
            d->pos++;
            if (!digits(d))
                return false;
        }
        if (d->pos < d->len && (d->text[d->pos] == 'e' || d->text[d->pos] == 'E')) {
            d->pos++;
            if (d->pos < d->len && (d->text[d->pos] == '+' || d->text[d->pos] == '-'))
                d->pos++;
            if (!digits(d))
                return false;
        }
        break;
    case J_LIT: {
        static const char *const lits[] = { "true", "false", "null" };
        size_t k;
        for (k = 0; k < 3; k++) {
            size_t n = strlen(lits[k]);
            if (d->len - d->pos >= n && memcmp(d->text + d->pos, lits[k], n) == 0) {
                d->pos += n;
                break;
            }
        }
        if (k == 3)
            return false;
        break;
    }
    }
    d->nodes[self].end = d->pos;
    return true;
}

struct jdoc *jdoc_parse(const char *text, size_t len)
{
    struct jdoc *d = calloc(1, sizeof *d);
    if (!d)
        return NULL;
    d->text = text;
    d->len = len;
    unsigned root;
    skip_ws(d);
    if (!parse_value(d, NONE, &root) || (skip_ws(d), d->pos != len)) {
        jdoc_free(d);
        return NULL;
    }
    return d;
}

void jdoc_free(struct jdoc *d)
{
    if (d) {
        jdoc_unmark(d);            /* frees the appends */
        free(d->appends);
        free(d->nodes);
        free(d);
    }
}

/* ---- strings ---------------------------------------------------------------- */

static int hex4(const char *s)
{
    int v = 0;
    for (int k = 0; k < 4; k++) {
        char c = s[k];
        v = v * 16 + (c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10);
    }
    return v;
}

static size_t put_utf8(char *o, unsigned cp)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xc0 | cp >> 6);
        o[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xe0 | cp >> 12);
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (char)(0xf0 | cp >> 18);
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    o[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* The string at [S, E) (quotes included, already scanned) decoded into a
 * malloc'ed buffer; NULL on a NUL or out of memory. */
static char *decode(const char *text, size_t s, size_t e, size_t *len)
{
    char *out = malloc(e - s + 1), *o = out;
    if (!out)
        return NULL;
    for (size_t p = s + 1; p < e - 1;) {
        if (text[p] != '\\') {
            *o++ = text[p++];
            continue;
        }
        char c = text[p + 1];
        p += 2;
        switch (c) {
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'n': *o++ = '\n'; break;
        case 'r': *o++ = '\r'; break;
        case 't': *o++ = '\t'; break;
        case 'u': {
            unsigned cp = (unsigned)hex4(text + p);
            p += 4;
            if (cp >= 0xd800 && cp < 0xdc00 && p + 6 <= e - 1 && text[p] == '\\' &&
                text[p + 1] == 'u') {
                unsigned lo = (unsigned)hex4(text + p + 2);
                if (lo >= 0xdc00 && lo < 0xe000) {
                    cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                    p += 6;
                }
            }
            if (cp == 0) {
                free(out);
                return NULL;
            }
            o += put_utf8(o, cp);
            break;
        }
        default: *o++ = c; break;           /* " \ / */
        }
    }
    *o = '\0';
    *len = (size_t)(o - out);
    return out;
}

char *jdoc_scalar(const struct jdoc *d, unsigned node, size_t *len)
{
    if (node >= d->n)
        return NULL;
    const struct jnode *j = &d->nodes[node];
    if (j->type == J_STR)
        return decode(d->text, j->start, j->end, len);
    if (j->type == J_NUM && !memchr(d->text + j->start, '.', j->end - j->start) &&
        !memchr(d->text + j->start, 'e', j->end - j->start) &&
        !memchr(d->text + j->start, 'E', j->end - j->start)) {
        char *s = strndup(d->text + j->start, j->end - j->start);
        if (s)
            *len = j->end - j->start;
        return s;
    }
    return NULL;
}

/* ---- pointers --------------------------------------------------------------- */

struct finder {
    const struct jdoc *d;
    struct jmatch *out;
    size_t max;
    long found;
    struct jmatch cur;
};

/* Pointer token [S, S+N) unescaped into TOK (~1 '/', ~0 '~'); -1 if bad. */
static int token(const char *s, size_t n, char *tok, size_t cap)
{
    size_t o = 0;
    for (size_t k = 0; k < n; k++) {
        if (o + 1 >= cap)
            return -1;
        if (s[k] == '~') {
            if (k + 1 >= n || (s[k + 1] != '0' && s[k + 1] != '1'))
                return -1;
            tok[o++] = s[k + 1] == '0' ? '~' : '/';
            k++;
        } else {
            tok[o++] = s[k];
        }
    }
    tok[o] = '\0';
    return (int)o;
}

/* (memcpy, not snprintf: a route's pointers push a dozen pieces a request,
 * and snprintf's set-up was most of their cost.) */
static void path_push(struct jmatch *m, const char *piece, size_t *saved)
{
    *saved = strlen(m->path);
    size_t room = sizeof m->path - *saved, n = strlen(piece);
    if (n + 2 > room)
        return;                              /* too long to name: cut, never overrun */
    m->path[*saved] = '/';
    memcpy(m->path + *saved + 1, piece, n + 1);
}

/* Whether the member key at [S, E) (quotes included) reads TOK (TOKLEN
 * bytes, unescaped): byte by byte when the key has no escape, which is
 * nearly always, and decoded only when it has one. */
static bool key_is(const char *text, size_t s, size_t e, const char *tok, size_t toklen)
{
    const char *raw = text + s + 1;
    size_t rawlen = e - s - 2;
    if (!memchr(raw, '\\', rawlen))
        return rawlen == toklen && memcmp(raw, tok, toklen) == 0;
    size_t klen;
    char *key = decode(text, s, e, &klen);
    bool same = key && klen == toklen && memcmp(key, tok, klen) == 0;
    free(key);
    return same;
}

static void walk(struct finder *f, unsigned node, const char *ptr)
{
    const struct jdoc *d = f->d;
    if (*ptr == '\0') {
        f->cur.node = node;
        if ((size_t)f->found < f->max)
            f->out[f->found] = f->cur;
        f->found++;
        return;
    }
    const char *next = strchr(ptr + 1, '/');
    size_t n = next ? (size_t)(next - ptr - 1) : strlen(ptr + 1);
    if (!next)
        next = ptr + 1 + n;
    char tok[256], esc[512];
    if (token(ptr + 1, n, tok, sizeof tok) < 0)
        return;
    const struct jnode *j = &d->nodes[node];
    size_t saved;
    if (j->type == J_ARR && strcmp(tok, "*") == 0 && n == 1) {
        if (f->cur.n_stars >= JSONEDIT_STARS_MAX)
            return;
        unsigned i = 0;
        for (unsigned c = j->first; c != NONE; c = d->nodes[c].next, i++) {
            char num[24];
            *text_dec(num, i) = '\0';
            path_push(&f->cur, num, &saved);
            f->cur.star[f->cur.n_stars++] = c;
            walk(f, c, next);
            f->cur.n_stars--;
            f->cur.path[saved] = '\0';
        }
        return;
    }
    if (j->type == J_ARR) {
        /* RFC 6901: digits only, no leading zero (but "0"). */
        if (!*tok || strspn(tok, "0123456789") != strlen(tok) || (tok[0] == '0' && tok[1]) ||
            strlen(tok) > 9)
            return;
        unsigned want = (unsigned)strtoul(tok, NULL, 10), i = 0;
        for (unsigned c = j->first; c != NONE; c = d->nodes[c].next, i++)
            if (i == want) {
                path_push(&f->cur, tok, &saved);
                walk(f, c, next);
                f->cur.path[saved] = '\0';
                return;
            }
        return;
    }
    if (j->type != J_OBJ)
        return;
    size_t toklen = strlen(tok);
    for (unsigned c = j->first; c != NONE; c = d->nodes[c].next) {
        if (key_is(d->text, d->nodes[c].kstart, d->nodes[c].kend, tok, toklen)) {
            /* The path names the key as a pointer writes it (~0, ~1). */
            size_t o = 0;
            for (const char *t = tok; *t && o + 3 < sizeof esc; t++) {
                if (*t == '~' || *t == '/') {
                    esc[o++] = '~';
                    esc[o++] = *t == '~' ? '0' : '1';
                } else {
                    esc[o++] = *t;
                }
            }
            esc[o] = '\0';
            path_push(&f->cur, esc, &saved);
            walk(f, c, next);
            f->cur.path[saved] = '\0';
            return;                          /* (keys are unique: duplicates refused upstream) */
        }
    }
}

long jdoc_find(const struct jdoc *d, const char *pointer, struct jmatch *out, size_t max)
{
    if (*pointer != '\0' && *pointer != '/')
        return -1;
    struct finder f = { .d = d, .out = out, .max = max };
    walk(&f, 0, pointer);
    return f.found;
}

/* ---- editing ------------------------------------------------------------------ */

void jdoc_remove(struct jdoc *d, unsigned node)
{
    if (node < d->n && node != 0 && d->nodes[d->nodes[node].parent].type == J_ARR)
        d->nodes[node].removed = true;
}

bool jdoc_removed(const struct jdoc *d, unsigned node)
{
    for (unsigned k = node; k < d->n && k != NONE; k = d->nodes[k].parent)
        if (d->nodes[k].removed)
            return true;
    return false;
}

bool jdoc_emptied(const struct jdoc *d, unsigned node)
{
    if (node >= d->n)
        return false;
    const struct jnode *j = &d->nodes[node];
    if (j->type != J_ARR || j->n == 0)
        return false;
    for (unsigned c = j->first; c != NONE; c = d->nodes[c].next)
        if (!d->nodes[c].removed)
            return false;
    return true;
}

unsigned jdoc_parent(const struct jdoc *d, unsigned node)
{
    return node < d->n && d->nodes[node].parent != NONE ? d->nodes[node].parent : node;
}

bool jdoc_rekey(struct jdoc *d, unsigned member, unsigned like)
{
    if (member >= d->n || like >= d->n || !d->nodes[member].kend || !d->nodes[like].kend)
        return false;
    d->nodes[member].rekey = like;
    d->rekeyed += d->nodes[like].kend - d->nodes[like].kstart;
    return true;
}

void jdoc_unmark(struct jdoc *d)
{
    for (unsigned k = 0; k < d->n; k++) {
        d->nodes[k].removed = false;
        d->nodes[k].rekey = NONE;
        d->nodes[k].appended = false;
    }
    d->rekeyed = 0;
    for (unsigned k = 0; k < d->n_appends; k++)
        free(d->appends[k].text);
    d->n_appends = 0;
    d->appended = 0;
}

bool jdoc_append(struct jdoc *d, unsigned node, const char *member)
{
    if (node >= d->n || d->nodes[node].type != J_OBJ || !*member)
        return false;
    if (d->n_appends == d->cap_appends) {
        unsigned cap = d->cap_appends ? d->cap_appends * 2 : 8;
        struct jappend *a = realloc(d->appends, cap * sizeof *a);
        if (!a)
            return false;
        d->appends = a;
        d->cap_appends = cap;
    }
    size_t len = strlen(member);
    char *text = malloc(len);
    if (!text)
        return false;
    memcpy(text, member, len);
    d->appends[d->n_appends++] = (struct jappend){ .node = node, .text = text, .len = len };
    d->appended += len + 1;
    d->nodes[node].appended = true;
    return true;
}

struct buf {
    char *p;
    size_t n;
};

static void put(struct buf *b, const char *s, size_t n)
{
    memcpy(b->p + b->n, s, n);
    b->n += n;
}

/* Where a child's bytes start: an object member at its key. */
static size_t child_start(const struct jnode *c)
{
    return c->kend ? c->kstart : c->start;
}

/* NODE's appended members, each after a comma but the first of an object
 * that keeps nothing (AFTER: something is written before them). */
static void put_appends(const struct jdoc *d, unsigned node, struct buf *b, bool after)
{
    for (unsigned k = 0; k < d->n_appends; k++) {
        if (d->appends[k].node != node)
            continue;
        if (after)
            put(b, ",", 1);
        put(b, d->appends[k].text, d->appends[k].len);
        after = true;
    }
}

static void emit(const struct jdoc *d, unsigned node, struct buf *b)
{
    const struct jnode *j = &d->nodes[node];
    if (!j->dirty) {
        put(b, d->text + j->start, j->end - j->start);
        return;
    }
    if (j->n == 0) {                     /* an empty object given members: "{" ... "}" */
        put(b, d->text + j->start, j->end - 1 - j->start);
        put_appends(d, node, b, false);
        put(b, d->text + j->end - 1, 1);
        return;
    }
    /* A container with something left out: its opening (up to its first
     * child), each kept child with the separator that stood before it, and
     * its closing (after its last child). */
    const struct jnode *first = &d->nodes[j->first], *lastn = &d->nodes[j->last];
    put(b, d->text + j->start, child_start(first) - j->start);
    bool any = false;
    size_t prev_end = 0;
    for (unsigned c = j->first; c != NONE; c = d->nodes[c].next) {
        const struct jnode *cn = &d->nodes[c];
        if (!cn->gone) {
            if (any)
                put(b, d->text + prev_end, child_start(cn) - prev_end);
            if (cn->kend && cn->rekey != NONE) {   /* another member's key, its own colon */
                const struct jnode *like = &d->nodes[cn->rekey];
                put(b, d->text + like->kstart, like->kend - like->kstart);
                put(b, d->text + cn->kend, cn->start - cn->kend);
            } else if (cn->kend) {           /* a member: its key and colon, as they were */
                put(b, d->text + cn->kstart, cn->start - cn->kstart);
            }
            emit(d, c, b);
            any = true;
        }
        prev_end = cn->end;      /* the separator before the next one starts here */
    }
    if (j->appended)
        put_appends(d, node, b, any);
    put(b, d->text + lastn->end, j->end - lastn->end);
}

char *jdoc_text(const struct jdoc *d, size_t *len)
{
    struct jdoc *m = (struct jdoc *)d;          /* (gone/dirty are scratch fields) */
    /* Children come after their parents: one pass from the end decides what
     * goes (marked, or an array emptied by marks that is an object's
     * member) and what holds something that goes. */
    for (unsigned k = m->n; k-- > 0;) {
        struct jnode *j = &m->nodes[k];
        j->dirty = j->appended;
        bool all_gone = j->type == J_ARR && j->n > 0;
        for (unsigned c = j->first; c != NONE; c = m->nodes[c].next) {
            if (m->nodes[c].gone || m->nodes[c].dirty || m->nodes[c].rekey != NONE)
                j->dirty = true;
            if (!m->nodes[c].gone)
                all_gone = false;
        }
        bool member = j->parent != NONE && m->nodes[j->parent].type == J_OBJ;
        j->gone = j->removed || (all_gone && member);
    }
    char *out = malloc(d->len + d->rekeyed + d->appended + 1);
    if (!out)
        return NULL;
    struct buf b = { out, 0 };
    /* The whitespace around the root too: every byte kept is as it came. */
    put(&b, d->text, d->nodes[0].start);
    emit(d, 0, &b);                  /* (the root is never marked: jdoc_remove) */
    put(&b, d->text + d->nodes[0].end, d->len - d->nodes[0].end);
    out[b.n] = '\0';
    *len = b.n;
    return out;
}

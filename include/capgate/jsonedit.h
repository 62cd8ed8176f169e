/*
 * jsonedit: a JSON text read as spans of its own bytes, so that a proxied
 * request's recipients can be found with pointers that take "*" ("every
 * element of this array") and cut out of the text while every other byte
 * stays exactly as the client sent it (whitespace, number spelling, key
 * order, escapes).  Pure: no I/O; bounded (JSONEDIT_NODES_MAX values,
 * JSONEDIT_DEPTH_MAX levels); fuzzed.
 *
 *   struct jdoc *d = jdoc_parse(body, len);
 *   struct jmatch m[100];
 *   long n = jdoc_find(d, POINTER, m, 100);   e.g. "/personalizations/STAR/to/STAR/email",
 *                                             STAR being "*"
 *   jdoc_remove(d, m[k].star[1]);             the element the last "*" went through
 *   char *out = jdoc_text(d, &outlen);
 */
#ifndef CAPGATE_JSONEDIT_H
#define CAPGATE_JSONEDIT_H

#include <stdbool.h>
#include <stddef.h>

#define JSONEDIT_NODES_MAX 262144
#define JSONEDIT_DEPTH_MAX 64
#define JSONEDIT_STARS_MAX 4        /* "*" per pointer */
#define JSONEDIT_PATH_MAX 256       /* a match's concrete pointer, for reports */

struct jdoc;

/* NULL when TEXT (LEN bytes, not NUL-terminated) is not one JSON value or
 * is beyond the bounds.  TEXT must outlive the document. */
struct jdoc *jdoc_parse(const char *text, size_t len);
void jdoc_free(struct jdoc *d);

struct jmatch {
    unsigned node;                        /* the value the pointer names */
    unsigned star[JSONEDIT_STARS_MAX];    /* per "*": the array element it went through */
    unsigned n_stars;
    char path[JSONEDIT_PATH_MAX];         /* the concrete pointer ("/personalizations/0/to/1/email") */
};

/* Every value POINTER names (RFC 6901, plus "*" for every element of an
 * array), in document order, into OUT[0..MAX).  Returns how many there are
 * (those past MAX are counted, not written), or -1 for a bad pointer. */
long jdoc_find(const struct jdoc *d, const char *pointer, struct jmatch *out, size_t max);

/* NODE's value when it is a string (decoded, malloc'ed, NUL-terminated,
 * *LEN set) or an integer (its digits); NULL otherwise or on a NUL inside. */
char *jdoc_scalar(const struct jdoc *d, unsigned node, size_t *len);

/* Marks NODE (an element of an array) to be left out of jdoc_text(). */
void jdoc_remove(struct jdoc *d, unsigned node);
/* True when NODE, or a container around it, is marked. */
bool jdoc_removed(const struct jdoc *d, unsigned node);
/* True when every element of the array NODE is marked (and it had some). */
bool jdoc_emptied(const struct jdoc *d, unsigned node);
/* The parent of NODE (the array or object holding it), or NODE for the root. */
unsigned jdoc_parent(const struct jdoc *d, unsigned node);
/* MEMBER (an object's member) is written with LIKE's key (another member's,
 * its bytes as they are) -- a personalization's "cc" array written as its
 * "to" when the "to" goes.  False when either is not a member. */
bool jdoc_rekey(struct jdoc *d, unsigned member, unsigned like);
/* Adds MEMBER (one member's text, '"key":value', written as given: the
 * caller makes it valid JSON) at the end of the object NODE in jdoc_text(),
 * after a comma when something stands before it -- a personalization's
 * List-Unsubscribe headers.  False when NODE is not an object, MEMBER is
 * empty, or out of memory. */
bool jdoc_append(struct jdoc *d, unsigned node, const char *member);
/* Clears every mark (and every rekey and append). */
void jdoc_unmark(struct jdoc *d);

/* The text without what is marked: an array left empty by the marks goes
 * too, with its key when it is an object's member.  Every byte of what is
 * kept is the original's.  Malloc'ed (NUL-terminated, *LEN set), NULL when
 * out of memory. */
char *jdoc_text(const struct jdoc *d, size_t *len);

#endif

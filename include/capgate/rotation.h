/*
 * rotation: a pseudonym key rotation (privacy.previous_key_file).  A
 * person's records stored under the pseudonym of the previous key are moved
 * to the current key's pseudonym before the gateway acts for them, so a
 * suppression made before the rotation still holds after it.
 *
 * The two pseudonyms have different hash tags (on a Cluster, different
 * slots), so the move is three script calls (rotate.lua: take, put, drop),
 * each atomic on its own slot, and correct when repeated or cut short: see
 * docs/internals.md, "Rotating the pseudonym key".
 */
#ifndef CAPGATE_ROTATION_H
#define CAPGATE_ROTATION_H

#include <stdbool.h>

struct loop;

/* OK: the person's records are all under NEW (or there was nothing under
 * OLD).  Not OK: Redis did not answer; whoever asked must not act as if
 * the person had no history (answer 503 instead). */
typedef void rotation_cb(void *arg, bool ok);

/* Moves what is stored under OLD (the previous key's pseudonym) to NEW (the
 * current key's), both PSEUDONYM_USER_HEX digits, copied.  Returns 0 when it
 * started (CB runs exactly once, later), -1 when Redis is unavailable (CB
 * will not run). */
int rotation_move(struct loop *l, const char *old_p, const char *new_p, rotation_cb *cb,
                  void *arg);

#endif

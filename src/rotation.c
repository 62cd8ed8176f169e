/* rotation: moving a person's records to the current key.  See rotation.h. */
#include "capgate/rotation.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capgate/config.h"
#include "capgate/decision.h"
#include "capgate/log.h"
#include "capgate/loop.h"
#include "capgate/pseudonym.h"
#include "capgate/store.h"

struct move {
    struct loop *loop;
    const struct config *cfg;        /* held: a reload must not free it under us */
    rotation_cb *cb;
    void *arg;
    char old_p[PSEUDONYM_USER_HEX + 1], new_p[PSEUDONYM_USER_HEX + 1];
    /* What take read under OLD: sends, consent, engagement, their PTTLs,
     * the consent history and its PTTL. */
    char *data[DECISION_ROTATE_DATA];
    size_t len[DECISION_ROTATE_DATA];
};

static void done(struct move *mv, bool ok)
{
    rotation_cb *cb = mv->cb;
    void *arg = mv->arg;
    for (int k = 0; k < DECISION_ROTATE_DATA; k++)
        free(mv->data[k]);
    config_release(mv->cfg);
    free(mv);
    cb(arg, ok);
}

static int step(struct move *mv, const char *mode, const char *user, store_cb *next)
{
    struct script_args a;
    const char *const *data = strcmp(mode, "take") ? (const char *const *)mv->data : NULL;
    decision_rotate_args(mv->cfg, mode, user, 0, data, mv->len, &a);
    if (!mv->loop->store)
        return -1;
    return store_eval(mv->loop->store, a.script, a.nkeys, a.argc, a.argv, a.argvlen, next, mv);
}

static void on_drop(void *arg, const struct store_reply *r)
{
    struct move *mv = arg;
    /* B holds everything already: a drop that failed leaves A's copy for
     * the next move, which merges it again to no effect. */
    if (r->status != STORE_OK)
        log_warn("rotation: old records not dropped", "user=%s", mv->new_p);
    done(mv, true);
}

static void on_put(void *arg, const struct store_reply *r)
{
    struct move *mv = arg;
    if (r->status != STORE_OK) {
        done(mv, false);
        return;
    }
    if (step(mv, "drop", mv->old_p, on_drop) != 0)
        done(mv, true);
}

static void on_take(void *arg, const struct store_reply *r)
{
    struct move *mv = arg;
    if (r->status != STORE_OK || r->n != DECISION_ROTATE_DATA) {
        done(mv, false);
        return;
    }
    bool any = false;
    for (int k = 0; k < DECISION_ROTATE_DATA; k++) {
        const struct store_item *it = &r->items[k];
        char num[24];
        const char *s = it->s;
        size_t n = it->len;
        if (k < 3 || k == 6) {          /* the records; the rest are their PTTLs */
            if (it->type != STORE_STR) {
                done(mv, false);
                return;
            }
            any = any || n > 0;
        } else {
            n = (size_t)snprintf(num, sizeof num, "%lld", it->type == STORE_INT ? it->i : -1);
            s = num;
        }
        mv->data[k] = malloc(n + 1);
        if (!mv->data[k]) {
            done(mv, false);
            return;
        }
        memcpy(mv->data[k], s, n);
        mv->data[k][n] = '\0';
        mv->len[k] = n;
    }
    if (!any) {                     /* nothing under the old key: the usual case */
        done(mv, true);
        return;
    }
    if (step(mv, "put", mv->new_p, on_put) != 0)
        done(mv, false);
}

int rotation_move(struct loop *l, const char *old_p, const char *new_p, rotation_cb *cb,
                  void *arg)
{
    struct move *mv = calloc(1, sizeof *mv);
    if (!mv)
        return -1;
    mv->loop = l;
    mv->cfg = config_retain(l->cfg);
    mv->cb = cb;
    mv->arg = arg;
    memcpy(mv->old_p, old_p, PSEUDONYM_USER_HEX);
    memcpy(mv->new_p, new_p, PSEUDONYM_USER_HEX);
    if (step(mv, "take", mv->old_p, on_take) != 0) {
        config_release(mv->cfg);
        free(mv);
        return -1;
    }
    return 0;
}

/* loop: the per-loop context and the hooks it was handed.  See loop.h. */
#include "capgate/loop.h"

#include <stdatomic.h>
#include <stdlib.h>

#include "capgate/clock.h"

bool loop_ready(const struct loop *l)
{
    return l->hooks->ready(l->hooks->owner);
}

struct totals *loop_totals(const struct loop *l)
{
    struct totals *t = calloc(1, sizeof *t);
    if (t)
        l->hooks->totals(l->hooks->owner, t);
    return t;
}

int loop_reload(struct loop *l, char *err, size_t errlen)
{
    return l->hooks->reload(l->hooks->owner, l, err, errlen);
}

bool loop_audit_wanted(const struct loop *l)
{
    return l->hooks && l->hooks->audit_wanted(l->hooks->owner);
}

void loop_audit(const struct loop *l, json_t *entry)
{
    if (loop_audit_wanted(l))
        l->hooks->audit_write(l->hooks->owner, entry);
    else
        json_decref(entry);
}

void loop_due_by(struct loop *l, unsigned tag, uint64_t at_us)
{
    _Atomic uint64_t *due = &l->queue_due_us[tag & 0xff];
    uint64_t cur = atomic_load(due);
    while (at_us < cur && !atomic_compare_exchange_weak(due, &cur, at_us))
        ;
}

void loop_queued(const struct loop *l, unsigned tag, uint64_t due_ms)
{
    struct loop *o = l->hooks && l->hooks->queue_owner
                         ? l->hooks->queue_owner(l->hooks->owner, tag) : NULL;
    if (o)
        loop_due_by(o, tag, clock_now_us() + due_ms * 1000u);
}

/* metrics: counters with label sets.  See metrics.h. */
#include "capgate/metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void metrics_count_decision(struct metrics *m, enum decision_outcome o,
                            enum decision_reason r, const char *rule, const char *channel)
{
    rule = rule ? rule : "";
    channel = channel ? channel : "";
    m->decisions[o][r]++;
    /* A handful of label sets in practice (outcomes x reasons x rules x
     * channels that actually occur): a linear scan beats a hash table. */
    for (size_t k = 0; k < m->n_labels; k++) {
        struct decision_count *c = &m->by_label[k];
        if (c->outcome == o && c->reason == r && strcmp(c->rule, rule) == 0 &&
            strcmp(c->channel, channel) == 0) {
            c->n++;
            return;
        }
    }
    if (m->n_labels == m->cap_labels) {
        size_t cap = m->cap_labels ? m->cap_labels * 2 : 16;
        struct decision_count *p = realloc(m->by_label, cap * sizeof *p);
        if (!p)
            return;    /* the plain counter above still counted it */
        m->by_label = p;
        m->cap_labels = cap;
    }
    struct decision_count *c = &m->by_label[m->n_labels++];
    c->outcome = o;
    c->reason = r;
    snprintf(c->rule, sizeof c->rule, "%s", rule);
    snprintf(c->channel, sizeof c->channel, "%s", channel);
    c->n = 1;
}

void metrics_free(struct metrics *m)
{
    free(m->by_label);
    m->by_label = NULL;
    m->n_labels = m->cap_labels = 0;
}

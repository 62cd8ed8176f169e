/* shape: an upstream's send rate and pushback, shared.  See shape.h. */
#include "capgate/shape.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "capgate/decision.h"
#include "capgate/log.h"
#include "capgate/store.h"
#include "capgate/upstream.h"

bool shape_wanted(const struct cfg_channel *ch)
{
    return ch && ch->upstream.enabled &&
           (ch->upstream.rate.enabled || ch->upstream.pushback.n_statuses > 0);
}

/* The rate as GCRA: T, the emission interval, and tau, the tolerance, in
 * ms.  tau is a burst of one fewer than asked, so that a forward that
 * reaches the upstream up to T late (the network, the loop) still leaves
 * every second with at most per_second + burst. */
static void rate_params(const struct cfg_upstream *u, char t[32], char tau[32])
{
    if (!u->rate.enabled) {
        snprintf(t, 32, "0");
        snprintf(tau, 32, "0");
        return;
    }
    double interval = 1000.0 / u->rate.per_second;
    snprintf(t, 32, "%.6f", interval);
    snprintf(tau, 32, "%.6f", interval * (u->rate.burst - 1));
}

struct take_call {
    shape_cb *cb;
    void *arg;
    bool reserve;
    int64_t horizon_ms;
};

static void held_unavailable(shape_cb *cb, void *arg)
{
    /* Redis did not say: the message waits a second (its lease keeps it
     * safe) rather than go past the rate. */
    struct shape_answer a = { .go = false, .wait_ms = 1000, .why = SHAPE_UNAVAILABLE };
    cb(arg, &a);
}

static void on_taken(void *arg, const struct store_reply *r)
{
    struct take_call *t = arg;
    shape_cb *cb = t->cb;
    void *cb_arg = t->arg;
    bool reserve = t->reserve;
    int64_t horizon = t->horizon_ms;
    free(t);
    if (r->status != STORE_OK || r->n < 4 || r->items[0].type != STORE_INT ||
        r->items[1].type != STORE_INT || r->items[3].type != STORE_STR) {
        if (r->status == STORE_ERROR)
            log_error_limited("redis script error", "script=shape error=%s", r->error);
        held_unavailable(cb, cb_arg);
        return;
    }
    struct shape_answer a = {
        .go = r->items[0].i == 1,
        .wait_ms = r->items[1].i,
        .probe = r->items[2].type == STORE_INT && r->items[2].i == 1,
        .why = r->items[3].len == 6 && memcmp(r->items[3].s, "paused", 6) == 0 ? SHAPE_PAUSED
                                                                             : SHAPE_RATE,
    };
    a.reserved = !a.go && reserve && a.wait_ms <= horizon;
    cb(cb_arg, &a);
}

void shape_take(struct store *st, const struct config *cfg, const struct cfg_channel *ch,
                bool from_queue, bool reserve, shape_cb *cb, void *arg)
{
    const struct cfg_upstream *u = &ch->upstream;
    char t[32], tau[32], probe[24], horizon[24];
    rate_params(u, t, tau);
    snprintf(probe, sizeof probe, "%d", u->timeout_ms);
    snprintf(horizon, sizeof horizon, "%lld", (long long)cfg->max_defer_ms);
    const char *argv[] = { "take", t, tau, from_queue ? "1" : "0", probe, horizon,
                           reserve ? "1" : "0" };
    struct script_args a;
    decision_shape_args(ch->name, sizeof argv / sizeof argv[0], argv, &a);
    struct take_call *c = malloc(sizeof *c);
    if (!c) {
        held_unavailable(cb, arg);
        return;
    }
    c->cb = cb;
    c->arg = arg;
    c->reserve = reserve;
    c->horizon_ms = cfg->max_defer_ms;
    if (store_eval(st, a.script, a.nkeys, a.argc, a.argv, a.argvlen, on_taken, c) != 0) {
        free(c);
        held_unavailable(cb, arg);
    }
}

static void on_noted(void *arg, const struct store_reply *r)
{
    (void)arg;
    if (r->status == STORE_ERROR)
        log_error_limited("redis script error", "script=shape error=%s", r->error);
}

static bool is_pushback(const struct cfg_upstream *u, long status)
{
    for (size_t k = 0; k < u->pushback.n_statuses; k++)
        if (u->pushback.statuses[k] == status)
            return true;
    return false;
}

int64_t shape_retry_after_ms(const char *v, int64_t now_s)
{
    if (!v)
        return -1;
    while (*v == ' ' || *v == '\t')
        v++;
    if (*v >= '0' && *v <= '9') {
        char *end;
        long long s = strtoll(v, &end, 10);
        while (*end == ' ' || *end == '\t')
            end++;
        if (*end || s < 0 || s > 365LL * 86400)
            return -1;
        return s * 1000;
    }
    /* IMF-fixdate, the form senders must use ("Sun, 06 Nov 1994 08:49:37 GMT"). */
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    const char *end = strptime(v, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    if (!end)
        return -1;
    while (*end == ' ' || *end == '\t')
        end++;
    if (*end)
        return -1;
    int64_t at = (int64_t)timegm(&tm);
    return at > now_s ? (at - now_s) * 1000 : 0;
}

static const char *header_value(const struct upstream_response *r, const char *name)
{
    size_t nl = strlen(name);
    for (size_t k = 0; k < r->n_headers; k++) {
        const char *h = r->headers[k];
        if (strncasecmp(h, name, nl) == 0 && h[nl] == ':')
            return h + nl + 1;
    }
    return NULL;
}

int64_t shape_answered(struct store *st, const struct config *cfg, const struct cfg_channel *ch,
                       bool probe, const struct upstream_response *r)
{
    const struct cfg_upstream *u = &ch->upstream;
    struct script_args a;
    if (r->status == UPSTREAM_OK && is_pushback(u, r->http_status)) {
        int64_t asked = shape_retry_after_ms(header_value(r, "Retry-After"), (int64_t)time(NULL));
        char ms[24], first[24], most[24];
        snprintf(ms, sizeof ms, "%lld", (long long)asked);
        snprintf(first, sizeof first, "%lld", (long long)cfg->delivery.backoff_ms);
        snprintf(most, sizeof most, "%lld", (long long)u->pushback.max_pause_ms);
        const char *argv[] = { "pause", ms, first, most };
        decision_shape_args(ch->name, 4, argv, &a);
        store_eval(st, a.script, a.nkeys, a.argc, a.argv, a.argvlen, on_noted, NULL);
        log_warn_limited("upstream pushed back", "channel=%s status=%ld retry_after_ms=%lld",
                         ch->name, r->http_status, (long long)asked);
        int64_t pause = asked >= 0 ? asked : cfg->delivery.backoff_ms;
        if (pause > u->pushback.max_pause_ms)
            pause = u->pushback.max_pause_ms;
        return pause > 0 ? pause : 1;
    }
    if (probe) {
        char t[32], tau[32];
        rate_params(u, t, tau);
        const char *argv[] = { "open", t, tau };
        decision_shape_args(ch->name, 3, argv, &a);
        store_eval(st, a.script, a.nkeys, a.argc, a.argv, a.argvlen, on_noted, NULL);
        log_info("upstream open again", "channel=%s", ch->name);
    }
    return 0;
}

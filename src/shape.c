/* shape: an upstream's send rate and pushback, shared.  See shape.h. */
#include "capgate/shape.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "capgate/decision.h"
#include "capgate/log.h"
#include "capgate/store.h"
#include "capgate/tz.h"
#include "capgate/upstream.h"

static bool throttle_applies(const struct cfg_throttle *t, const struct cfg_channel *ch)
{
    return !t->channel || strcmp(t->channel, ch->name) == 0;
}

bool shape_wanted(const struct config *cfg, const struct cfg_channel *ch)
{
    if (!ch || !ch->upstream.enabled)
        return false;
    const struct cfg_upstream *u = &ch->upstream;
    if (u->rate.enabled || u->warmup.enabled || u->pushback.n_statuses > 0)
        return true;
    for (size_t k = 0; cfg && k < cfg->n_throttles; k++)
        if (throttle_applies(&cfg->throttles[k], ch))
            return true;
    return false;
}

bool shape_pushback_only(const struct config *cfg, const struct cfg_channel *ch)
{
    if (!shape_wanted(cfg, ch))
        return false;
    const struct cfg_upstream *u = &ch->upstream;
    if (u->rate.enabled || u->warmup.enabled)
        return false;
    for (size_t k = 0; cfg && k < cfg->n_throttles; k++)
        if (throttle_applies(&cfg->throttles[k], ch))
            return false;
    return true;
}

const char *shape_reason(enum shape_why why)
{
    static const char *const names[] = { "rate_limited", "campaign_throttled", "warmup_limit",
                                         "upstream_paused", "store_unavailable" };
    return names[why];
}

const char *shape_held_outcome(enum shape_why why)
{
    static const char *const names[] = { "held_rate", "held_throttle", "held_warmup",
                                         "held_paused", "held_unavailable" };
    return names[why];
}

void shape_warmup_arg(const struct config *cfg, const struct tz_db *tz,
                      const struct cfg_channel *ch, int64_t now_ms, char out[64])
{
    const struct cfg_warmup *w = &ch->upstream.warmup;
    snprintf(out, 64, "-");
    if (!w->enabled || w->n_daily == 0)
        return;
    const struct tz_zone *zone = tz ? tz_db_find(tz, cfg->quiet_hours.default_tz) : NULL;
    int64_t now_s = now_ms / 1000, day, left_ms;
    if (w->day_ms == 86400000 && zone && w->start_ms < 0) {
        /* Calendar days: they start at local midnight. */
        int64_t next;
        day = tz_local_day(zone, now_s, &next) - w->start_day;
        left_ms = next * 1000 - now_ms;
    } else {
        /* Days of day_ms from the start: its instant, or its date's midnight. */
        int64_t start_ms = w->start_ms >= 0 ? w->start_ms :
                           w->start_day * 86400000 -
                           (zone ? (int64_t)tz_utc_offset(zone, w->start_day * 86400) * 1000 : 0);
        int64_t since = now_ms - start_ms;
        day = since >= 0 ? since / w->day_ms : -((-since + w->day_ms - 1) / w->day_ms);
        left_ms = start_ms + (day + 1) * w->day_ms - now_ms;
    }
    if (day >= (int64_t)w->n_daily)
        return;                          /* warmed up: no ceiling */
    snprintf(out, 64, "%lld|%d|%lld", (long long)day, w->daily[day < 0 ? 0 : day],
             (long long)(left_ms > 0 ? left_ms : 1));
}

/* The rate as GCRA: T, the emission interval, and tau, the tolerance, in
 * ms.  tau is a burst of one fewer than asked, so that a forward that
 * reaches the upstream up to T late (the network, the loop) still leaves
 * every second with at most per_second + burst. */
static void rate_params(int per_second, int burst, double *t, double *tau)
{
    *t = per_second > 0 ? 1000.0 / per_second : 0;
    *tau = per_second > 0 ? *t * (burst - 1) : 0;
}

static void upstream_rate(const struct cfg_upstream *u, double *t, double *tau)
{
    rate_params(u->rate.enabled ? u->rate.per_second : 0, u->rate.burst, t, tau);
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
        .why = SHAPE_RATE,
    };
    static const struct { const char *s; enum shape_why why; } whys[] = {
        { "paused", SHAPE_PAUSED }, { "warmup", SHAPE_WARMUP }, { "throttle", SHAPE_THROTTLE },
    };
    for (size_t k = 0; k < sizeof whys / sizeof whys[0]; k++)
        if (r->items[3].len == strlen(whys[k].s) && memcmp(r->items[3].s, whys[k].s,
                                                           r->items[3].len) == 0)
            a.why = whys[k].why;
    a.reserved = !a.go && reserve && a.wait_ms <= horizon;
    cb(cb_arg, &a);
}

void shape_take(struct store *st, const struct config *cfg, const struct tz_db *tz,
                const struct cfg_channel *ch, const char *campaign, int priority, bool from_queue,
                bool reserve, shape_cb *cb, void *arg)
{
    const struct cfg_upstream *u = &ch->upstream;
    char probe[24], horizon[24], warmup[64];
    double rates[1 + THROTTLES_MAX][2];
    char limits[1 + THROTTLES_MAX][72];
    char subkeys[THROTTLES_MAX][CAP_NAME_MAX + 300];
    const char *subs[THROTTLES_MAX];
    const char *argv[7 + 1 + THROTTLES_MAX];
    char prio[4];
    size_t nsub = 0;

    snprintf(probe, sizeof probe, "%d", u->timeout_ms);
    snprintf(horizon, sizeof horizon, "%lld", (long long)cfg->max_defer_ms);
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    shape_warmup_arg(cfg, tz, ch, (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000, warmup);
    argv[0] = "take";
    argv[1] = from_queue ? "1" : "0";
    argv[2] = probe;
    argv[3] = horizon;
    argv[4] = reserve ? "1" : "0";
    argv[5] = warmup;
    snprintf(prio, sizeof prio, "%d", priority < 0 ? 0 : priority > 9 ? 9 : priority);
    argv[6] = prio;
    upstream_rate(u, &rates[0][0], &rates[0][1]);
    for (size_t k = 0; campaign && *campaign && k < cfg->n_throttles; k++) {
        const struct cfg_throttle *t = &cfg->throttles[k];
        if (!throttle_applies(t, ch) || nsub == THROTTLES_MAX)
            continue;
        snprintf(subkeys[nsub], sizeof subkeys[nsub], "t:%s:%.256s", t->name, campaign);
        subs[nsub] = subkeys[nsub];
        rate_params(t->per_second, t->burst, &rates[nsub + 1][0], &rates[nsub + 1][1]);
        nsub++;
    }
    for (size_t k = 0; k <= nsub; k++) {
        snprintf(limits[k], sizeof limits[k], "%.6f|%.6f", rates[k][0], rates[k][1]);
        argv[7 + k] = limits[k];
    }
    struct script_args a;
    decision_shape_args(ch->name, nsub, subs, 7 + 1 + nsub, argv, &a);
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
        decision_shape_args(ch->name, 0, NULL, 4, argv, &a);
        store_eval(st, a.script, a.nkeys, a.argc, a.argv, a.argvlen, on_noted, NULL);
        log_warn_limited("upstream pushed back", "channel=%s status=%ld retry_after_ms=%lld",
                         ch->name, r->http_status, (long long)asked);
        int64_t pause = asked >= 0 ? asked : cfg->delivery.backoff_ms;
        if (pause > u->pushback.max_pause_ms)
            pause = u->pushback.max_pause_ms;
        return pause > 0 ? pause : 1;
    }
    if (probe) {
        double tv, tauv;
        char t[32], tau[32];
        upstream_rate(u, &tv, &tauv);
        snprintf(t, sizeof t, "%.6f", tv);
        snprintf(tau, sizeof tau, "%.6f", tauv);
        const char *argv[] = { "open", t, tau };
        decision_shape_args(ch->name, 0, NULL, 3, argv, &a);
        store_eval(st, a.script, a.nkeys, a.argc, a.argv, a.argvlen, on_noted, NULL);
        log_info("upstream open again", "channel=%s", ch->name);
    }
    return 0;
}

/* ---- the state, for /status and /metrics ---------------------------------- */

const char *shape_state_name(enum shape_state_kind k)
{
    static const char *const names[] = { "open", "paused", "probing", "unknown" };
    return names[k];
}

struct state_call {
    const struct config *cfg;       /* retained */
    const struct tz_db *tz;
    const struct cfg_channel *ch;
    shape_state_cb *cb;
    void *arg;
};

static double item_number(const struct store_item *it)
{
    char buf[64];
    if (it->type != STORE_STR || it->len == 0 || it->len >= sizeof buf)
        return 0;
    memcpy(buf, it->s, it->len);
    buf[it->len] = '\0';
    return strtod(buf, NULL);
}

static void on_state(void *arg, const struct store_reply *r)
{
    struct state_call *c = arg;
    struct shape_state s = { .state = SHAPE_UNKNOWN };
    const struct cfg_upstream *u = &c->ch->upstream;
    if (r->status == STORE_OK && r->n >= 8) {
        double now = item_number(&r->items[0]), tat = item_number(&r->items[1]);
        double sched = item_number(&r->items[2]), paused = item_number(&r->items[3]);
        double probe = item_number(&r->items[4]);
        s.state = paused > now ? SHAPE_IS_PAUSED : paused > 0 ? SHAPE_PROBING : SHAPE_OPEN;
        s.paused_until_ms = (int64_t)paused;
        s.probe_out = paused > 0 && probe > now;
        s.pushbacks = (int)item_number(&r->items[5]);
        if (u->rate.enabled) {
            double t, tau;
            upstream_rate(u, &t, &tau);
            double use = (tat - now) / (tau + t);
            s.rate_use = use < 0 ? 0 : use > 1 ? 1 : use;
            if (sched > now)
                s.queued = (int64_t)ceil((sched - now) / t);
        }
        s.backlog_s = sched > now ? (sched - now) / 1000 : 0;
        if (u->warmup.enabled) {
            char w[64], day[24];
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            shape_warmup_arg(c->cfg, c->tz, c->ch, (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000,
                             w);
            if (strcmp(w, "-") != 0 && sscanf(w, "%23[-0-9]|%d|", day, &s.warmup_ceiling) == 2) {
                const struct store_item *wd = &r->items[6];
                s.warming_up = true;
                s.warmup_day = strtoll(day, NULL, 10);
                if (wd->type == STORE_STR && wd->len == strlen(day) &&
                    memcmp(wd->s, day, wd->len) == 0)
                    s.warmup_sent = (int)item_number(&r->items[7]);
            }
        }
    }
    c->cb(c->arg, &s);
    config_release(c->cfg);
    free(c);
}

void shape_state(struct store *st, const struct config *cfg, const struct tz_db *tz,
                 const struct cfg_channel *ch, shape_state_cb *cb, void *arg)
{
    struct state_call *c = malloc(sizeof *c);
    if (!c) {
        struct shape_state s = { .state = SHAPE_UNKNOWN };
        cb(arg, &s);
        return;
    }
    *c = (struct state_call){ .cfg = config_retain(cfg), .tz = tz, .ch = ch, .cb = cb,
                              .arg = arg };
    const char *argv[] = { "state" };
    struct script_args a;
    decision_shape_args(ch->name, 0, NULL, 1, argv, &a);
    if (!st || store_eval(st, a.script, a.nkeys, a.argc, a.argv, a.argvlen, on_state, c) != 0) {
        struct store_reply fail = { .status = STORE_UNAVAILABLE };
        on_state(c, &fail);
    }
}

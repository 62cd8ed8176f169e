"""/v1/decide and /v1/release: caps, windows, retry_after, max_defer,
dry_run, replay, release."""

import math
import time

import harness as h


def shared():
    return h.shared_gateway()


def caps_gateway(caps, **extra):
    return h.Gateway(overrides=dict({"caps": caps}, **extra))


def timed(g, user, channel="email", message_id=None, **kw):
    """A decide plus the wall-clock time it was handled (midpoint)."""
    t0 = time.time()
    r = g.decide(user, channel, message_id, **kw)
    t1 = time.time()
    return r, (t0 + t1) / 2


def sleep_until(t):
    d = t - time.time()
    if d > 0:
        time.sleep(d)


def ceil_left(t_end):
    return math.ceil(t_end - time.time())


# ---------------------------------------------------------------- shapes

def test_allow_response_shape():
    g = shared()
    r = g.decide(h.uid("dec"), "email", "shape-1")
    b = h.expect_decision(r, "allow", "ok", rule=False, replay=False, message_id="shape-1")
    h.check(set(b) <= {"decision", "reason", "message_id", "replay"},
            "unexpected keys in an allow answer: %s" % sorted(set(b)), r)


def test_defer_response_shape():
    g = shared()
    u = h.uid("dec")
    g.decide(u, "email")
    g.decide(u, "email")
    r = g.decide(u, "email", "shape-2")
    b = h.expect_decision(r, "defer", "cap", rule="email-daily", replay=False, message_id="shape-2",
                          retry_after=86400, tolerance=5)
    h.check(set(b) <= {"decision", "reason", "rule", "retry_after", "message_id", "replay"},
            "unexpected keys in a defer answer: %s" % sorted(set(b)), r)


# ---------------------------------------------------------------- windows

def test_defer_exact_retry_after_and_window_expiry():
    g = caps_gateway([{"name": "short", "limit": 2, "window": "4s", "on_exceed": "defer"}])
    u = h.uid("dec")
    r, ta = timed(g, u, message_id="A")
    h.expect_decision(r, "allow", "ok")
    time.sleep(1.5)
    r, tb = timed(g, u, message_id="B")
    h.expect_decision(r, "allow", "ok")
    # C: A is the send that must leave the window: at ta + 4
    r = g.decide(u, "email", "C")
    h.expect_decision(r, "defer", "cap", rule="short", retry_after=ceil_left(ta + 4), tolerance=1)
    # just before A leaves, still deferred, retry_after 1
    sleep_until(ta + 3.5)
    r = g.decide(u, "email", "G")
    h.expect_decision(r, "defer", "cap", rule="short", retry_after=1, tolerance=1)
    # once A has left the window (a send counts for exactly `window`): allowed
    sleep_until(ta + 4.3)
    r, td = timed(g, u, message_id="D")
    h.expect_decision(r, "allow", "ok", replay=False)
    # now B and D count: E waits for B, at tb + 4 (not for D)
    r = g.decide(u, "email", "E")
    b = h.expect_decision(r, "defer", "cap", rule="short", retry_after=ceil_left(tb + 4), tolerance=1)
    # waiting retry_after seconds is enough
    time.sleep(b["retry_after"] + 0.2)
    r = g.decide(u, "email", "E")
    h.expect_decision(r, "allow", "ok", replay=False)


def test_limit_reached_then_window_passes():
    g = caps_gateway([{"name": "two-per-2s", "limit": 2, "window": "2s", "on_exceed": "defer"}])
    u = h.uid("dec")
    r, t1 = timed(g, u)
    h.expect_decision(r, "allow", "ok")
    h.expect_decision(g.decide(u, "email"), "allow", "ok")
    r = g.decide(u, "email")
    h.expect_decision(r, "defer", "cap", rule="two-per-2s", retry_after=ceil_left(t1 + 2), tolerance=1)
    sleep_until(t1 + 2.4)
    h.expect_decision(g.decide(u, "email"), "allow", "ok")
    h.expect_decision(g.decide(u, "email"), "allow", "ok")
    h.expect_decision(g.decide(u, "email"), "defer", "cap", rule="two-per-2s")


def test_caps_are_per_user():
    g = caps_gateway([{"name": "one", "limit": 1, "window": "1d", "on_exceed": "defer"}])
    a, b = h.uid("dec"), h.uid("dec")
    h.expect_decision(g.decide(a, "email"), "allow", "ok")
    h.expect_decision(g.decide(a, "email"), "defer", "cap", rule="one")
    h.expect_decision(g.decide(b, "email"), "allow", "ok")


# ---------------------------------------------------------------- filters & per

def test_channel_filter():
    g = shared()
    u = h.uid("dec")
    h.expect_decision(g.decide(u, "email"), "allow", "ok")
    h.expect_decision(g.decide(u, "email"), "allow", "ok")
    h.expect_decision(g.decide(u, "email"), "defer", "cap", rule="email-daily",
                      retry_after=86400, tolerance=5)
    # email-daily does not apply to push
    h.expect_decision(g.decide(u, "push"), "allow", "ok")


def test_all_channels_cap_and_largest_retry_after():
    g = shared()
    u = h.uid("dec")
    for ch in ("email", "email", "push", "push", "push"):
        h.expect_decision(g.decide(u, ch), "allow", "ok")
    # 5 sends in 7d: all-weekly is full for every channel
    h.expect_decision(g.decide(u, "push"), "defer", "cap", rule="all-weekly",
                      retry_after=7 * 86400, tolerance=10)
    # email: email-daily (1d) and all-weekly (7d) both fail: the largest wins
    h.expect_decision(g.decide(u, "email"), "defer", "cap", rule="all-weekly",
                      retry_after=7 * 86400, tolerance=10)


def test_deny_cap_per_campaign():
    g = shared()
    u = h.uid("dec")
    h.expect_decision(g.decide(u, "push", campaign="spring"), "allow", "ok")
    h.expect_decision(g.decide(u, "push", campaign="spring"), "deny", "cap", rule="campaign-once")
    h.expect_decision(g.decide(u, "push", campaign="summer"), "allow", "ok")
    h.expect_decision(g.decide(u, "push"), "allow", "ok")
    # the campaign cap has no channel filter: it counts the campaign on every channel
    h.expect_decision(g.decide(u, "email", campaign="summer"), "deny", "cap", rule="campaign-once")
    # and it is per user
    h.expect_decision(g.decide(h.uid("dec"), "push", campaign="spring"), "allow", "ok")


def test_per_campaign_cap_ignores_requests_without_campaign():
    g = caps_gateway([{"name": "camp", "per": "campaign", "limit": 1, "window": "1d",
                       "on_exceed": "deny"}])
    u = h.uid("dec")
    for _ in range(3):
        h.expect_decision(g.decide(u, "email"), "allow", "ok")
    h.expect_decision(g.decide(u, "email", campaign="c"), "allow", "ok")
    h.expect_decision(g.decide(u, "email", campaign="c"), "deny", "cap", rule="camp")
    h.expect_decision(g.decide(u, "email"), "allow", "ok")


def test_category_filter_and_default_category():
    g = caps_gateway([{"name": "mk", "category": "marketing", "limit": 1, "window": "1d",
                       "on_exceed": "deny"}])
    u = h.uid("dec")
    # no category = default_category = marketing
    h.expect_decision(g.decide(u, "email"), "allow", "ok")
    h.expect_decision(g.decide(u, "email"), "deny", "cap", rule="mk")
    h.expect_decision(g.decide(u, "push", category="marketing"), "deny", "cap", rule="mk")
    v = h.uid("dec")
    h.expect_decision(g.decide(v, "email", category="marketing"), "allow", "ok")
    h.expect_decision(g.decide(v, "email"), "deny", "cap", rule="mk")


def test_deny_wins_over_defer():
    g = shared()
    u = h.uid("dec")
    h.expect_decision(g.decide(u, "email", campaign="fall"), "allow", "ok")
    h.expect_decision(g.decide(u, "email"), "allow", "ok")
    # email-daily (defer) and campaign-once (deny) both fail
    h.expect_decision(g.decide(u, "email", campaign="fall"), "deny", "cap", rule="campaign-once")


def test_largest_retry_after_wins_short_windows():
    for order in (["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]):
        windows = {"a": "2s", "b": "5s", "c": "3s"}
        caps = [{"name": n, "limit": 1, "window": windows[n], "on_exceed": "defer"} for n in order]
        g = caps_gateway(caps)
        u = h.uid("dec")
        r, t = timed(g, u)
        h.expect_decision(r, "allow", "ok")
        r = g.decide(u, "email")
        h.expect_decision(r, "defer", "cap", rule="b", retry_after=ceil_left(t + 5), tolerance=1)
        g.close()


def test_transactional_is_exempt_from_caps():
    g = shared()
    u = h.uid("dec")
    h.expect_decision(g.decide(u, "email"), "allow", "ok")
    h.expect_decision(g.decide(u, "email"), "allow", "ok")
    h.expect_decision(g.decide(u, "email"), "defer", "cap", rule="email-daily")
    h.expect_decision(g.decide(u, "email", category="transactional"), "allow", "ok", rule=False)
    h.expect_decision(g.decide(u, "email", category="transactional", campaign="x"), "allow", "ok")
    h.expect_decision(g.decide(u, "email", category="transactional", campaign="x"), "allow", "ok")


def test_exempt_sends_do_not_use_up_caps():
    # Receipts and password resets must not crowd out the marketing allowance.
    g = shared()
    u = h.uid("dec")
    for _ in range(4):
        h.expect_decision(g.decide(u, "email", category="transactional"), "allow", "ok")
    h.expect_decision(g.decide(u, "email"), "allow", "ok")
    h.expect_decision(g.decide(u, "email"), "allow", "ok")
    h.expect_decision(g.decide(u, "email"), "defer", "cap", rule="email-daily")
    # ...and they are still remembered: a retry is a replay
    m = h.mid()
    h.expect_decision(g.decide(u, "email", category="transactional", message_id=m), "allow", "ok")
    h.expect_decision(g.decide(u, "email", category="transactional", message_id=m), "allow", "ok",
                      replay=True)


# ---------------------------------------------------------------- max_defer

def test_max_defer_turns_defer_into_deny():
    g = caps_gateway([{"name": "short", "channel": "push", "limit": 1, "window": "2s", "on_exceed": "defer"},
                      {"name": "long", "channel": "email", "limit": 1, "window": "10s", "on_exceed": "defer"}],
                     max_defer="5s")
    u = h.uid("dec")
    h.expect_decision(g.decide(u, "push"), "allow", "ok")
    h.expect_decision(g.decide(u, "push"), "defer", "cap", rule="short", retry_after=2, tolerance=1)
    h.expect_decision(g.decide(u, "email"), "allow", "ok")
    h.expect_decision(g.decide(u, "email"), "deny", "cap", rule="long")


def test_max_defer_applies_to_the_largest_retry_after():
    # short alone would be a 2 s deferral, but long also fails and needs 10 s > max_defer
    g = caps_gateway([{"name": "short", "limit": 1, "window": "2s", "on_exceed": "defer"},
                      {"name": "long", "limit": 1, "window": "10s", "on_exceed": "defer"}],
                     max_defer="5s")
    u = h.uid("dec")
    h.expect_decision(g.decide(u, "email"), "allow", "ok")
    h.expect_decision(g.decide(u, "email"), "deny", "cap", rule="long")


# ---------------------------------------------------------------- dry_run

def test_dry_run_does_not_record():
    g = caps_gateway([{"name": "one", "limit": 1, "window": "1d", "on_exceed": "defer"}])
    u = h.uid("dec")
    n0 = g.redis.dbsize()
    h.expect_decision(g.decide(u, "email", "d1", dry_run=True), "allow", "ok", replay=False)
    h.expect_decision(g.decide(u, "email", "d2", dry_run=True), "allow", "ok", replay=False)
    h.check(g.redis.dbsize() <= n0, "dry runs created keys in Redis (DBSIZE %d -> %d)"
            % (n0, g.redis.dbsize()))
    # the dry-run message id was not recorded either: a real send of it is fresh
    h.expect_decision(g.decide(u, "email", "d1"), "allow", "ok", replay=False)
    h.expect_decision(g.decide(u, "email", "d3", dry_run=True), "defer", "cap", rule="one")
    h.expect_decision(g.decide(u, "email", "d4", dry_run=False), "defer", "cap", rule="one")


# ---------------------------------------------------------------- replay

def test_replay_does_not_count_twice():
    g = caps_gateway([{"name": "two", "limit": 2, "window": "1d", "on_exceed": "defer"}])
    u = h.uid("dec")
    h.expect_decision(g.decide(u, "email", "m1"), "allow", "ok", replay=False, message_id="m1")
    h.expect_decision(g.decide(u, "email", "m1"), "allow", "ok", replay=True, message_id="m1")
    h.expect_decision(g.decide(u, "email", "m1"), "allow", "ok", replay=True)
    h.expect_decision(g.decide(u, "email", "m2"), "allow", "ok", replay=False)
    h.expect_decision(g.decide(u, "email", "m3"), "defer", "cap", rule="two", replay=False)
    # step 1 comes before caps: an allowed message is still a replay when the cap is full
    h.expect_decision(g.decide(u, "email", "m1"), "allow", "ok", replay=True)
    h.expect_decision(g.decide(u, "email", "m2"), "allow", "ok", replay=True)
    # message ids are per user
    h.expect_decision(g.decide(h.uid("dec"), "email", "m1"), "allow", "ok", replay=False)


def test_deferred_message_is_evaluated_afresh():
    g = caps_gateway([{"name": "one", "limit": 1, "window": "2s", "on_exceed": "defer"}])
    u = h.uid("dec")
    r, t = timed(g, u, message_id="m1")
    h.expect_decision(r, "allow", "ok")
    h.expect_decision(g.decide(u, "email", "m2"), "defer", "cap", rule="one", replay=False)
    h.expect_decision(g.decide(u, "email", "m2"), "defer", "cap", rule="one", replay=False)
    sleep_until(t + 2.4)
    h.expect_decision(g.decide(u, "email", "m2"), "allow", "ok", replay=False)
    h.expect_decision(g.decide(u, "email", "m2"), "allow", "ok", replay=True)


def test_denied_message_is_evaluated_afresh():
    g = shared()
    u = h.uid("dec")
    h.expect_decision(g.decide(u, "push", "m1", campaign="k"), "allow", "ok")
    h.expect_decision(g.decide(u, "push", "m2", campaign="k"), "deny", "cap", rule="campaign-once",
                      replay=False)
    h.expect_decision(g.decide(u, "push", "m2", campaign="k"), "deny", "cap", replay=False)
    # same message id, now without the campaign: evaluated afresh, allowed
    h.expect_decision(g.decide(u, "push", "m2"), "allow", "ok", replay=False)


def test_idempotency_window():
    g = caps_gateway([{"name": "ten", "limit": 10, "window": "1d", "on_exceed": "defer"}],
                     idempotency_window="2s")
    u = h.uid("dec")
    r, t = timed(g, u, message_id="m1")
    h.expect_decision(r, "allow", "ok", replay=False)
    h.expect_decision(g.decide(u, "email", "m1"), "allow", "ok", replay=True)
    sleep_until(t + 2.5)
    h.expect_decision(g.decide(u, "email", "m1"), "allow", "ok", replay=False)


# ---------------------------------------------------------------- release

def test_release_stops_counting():
    g = caps_gateway([{"name": "one", "limit": 1, "window": "1d", "on_exceed": "defer"}])
    u = h.uid("dec")
    h.expect_decision(g.decide(u, "email", "m1"), "allow", "ok")
    h.expect_decision(g.decide(u, "email", "m2"), "defer", "cap", rule="one")
    # another user's id, or a message that was never allowed: nothing released
    r = g.release(h.uid("dec"), "m1")
    h.expect_status(r, 200)
    h.check(r.body == {"released": False}, "released another user's message", r)
    r = g.release(u, "m2")
    h.check(r.status == 200 and r.body == {"released": False}, "released a deferred message", r)
    # release m1: it stops counting
    r = g.release(u, "m1")
    h.expect_status(r, 200)
    h.expect_json_content_type(r)
    h.check(r.body == {"released": True}, "expected {\"released\": true}", r)
    r = g.release(u, "m1")
    h.check(r.status == 200 and r.body == {"released": False}, "second release must be false", r)
    h.expect_decision(g.decide(u, "email", "m2"), "allow", "ok", replay=False)
    # a released message id that comes again is evaluated afresh (m2 now fills the cap)
    h.expect_decision(g.decide(u, "email", "m1"), "defer", "cap", rule="one", replay=False)
    h.check(g.release(u, "m2").body == {"released": True}, "release of m2 failed")
    h.expect_decision(g.decide(u, "email", "m1"), "allow", "ok", replay=False)
    h.expect_decision(g.decide(u, "email", "m1"), "allow", "ok", replay=True)


def test_release_frees_campaign_cap():
    g = shared()
    u = h.uid("dec")
    h.expect_decision(g.decide(u, "push", "p1", campaign="winter"), "allow", "ok")
    h.expect_decision(g.decide(u, "push", "p2", campaign="winter"), "deny", "cap", rule="campaign-once")
    h.check(g.release(u, "p1").body == {"released": True}, "release failed")
    h.expect_decision(g.decide(u, "push", "p2", campaign="winter"), "allow", "ok")


def test_millisecond_window():
    g = caps_gateway([{"name": "ms", "limit": 1, "window": "1500ms", "on_exceed": "defer"}])
    u = h.uid("dec")
    r, t = timed(g, u)
    h.expect_decision(r, "allow", "ok")
    h.expect_decision(g.decide(u, "email"), "defer", "cap", rule="ms",
                      retry_after=ceil_left(t + 1.5), tolerance=1)
    sleep_until(t + 1.8)
    h.expect_decision(g.decide(u, "email"), "allow", "ok")


# ---------------------------------------------------------------- two readings

def test_both_body_readings_agree():
    # A usual body is read without jansson (src/api_decide.c fields_fast);
    # escapes, nesting or an invalid field send it the general way.  The
    # same fields must make the same decision either way.
    g = caps_gateway([{"name": "two", "limit": 2, "window": "1d", "on_exceed": "deny"}])
    u = h.uid("read")
    esc = lambda s: "".join("\\u%04x" % ord(c) for c in s)     # every character escaped
    fast = ('{"user": "%s", "channel": "email", "message_id": "m1", "category": null, '
            '"campaign": null, "tz": null, "dry_run": null}' % u).encode()
    general = ('{"user": "%s", "channel": "%s", "message_id": "%s", "dry_run": false}' %
               (esc(u), esc("email"), esc("m1"))).encode()
    h.expect_decision(g.post("/v1/decide", fast), "allow", "ok", replay=False)
    # the same person and message, read by jansson: a replay, not a new send
    h.expect_decision(g.post("/v1/decide", general), "allow", "ok", replay=True)
    # and the other way round: a second message counts for the same person
    second = ('{"user": "%s", "channel": "email", "message_id": "%s"}' % (esc(u), "m2")).encode()
    h.expect_decision(g.post("/v1/decide", second), "allow", "ok", replay=False)
    h.expect_decision(g.decide(u, "email", "m3"), "deny", "cap", rule="two")
    # a fast-looking body with an invalid field gets the general path's words
    r = g.post("/v1/decide", ('{"user": "%s", "channel": "email", "message_id": ""}' % u).encode())
    h.expect_error(r, 400, "invalid_field")
    h.check(r.body["error"].get("field") == "message_id", "the field is named: %s" % (r.body,))

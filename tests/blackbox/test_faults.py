"""Redis faults: down, paused, slow, restarted, scripts flushed."""

import concurrent.futures
import re
import socket
import threading
import time

import harness as h

TIMEOUT_MS = 250          # redis.timeout_ms of the default config
SLOW_LIMIT = (TIMEOUT_MS + 300) / 1000.0


def expect_unavailable(r, limit=1.0):
    h.expect_error(r, 503, "store_unavailable")
    ra = r.header("Retry-After")
    h.check(ra is not None and re.fullmatch(r"\s*\d+\s*", ra), "503 without a Retry-After header "
            "of whole seconds (got %r)" % ra, r)
    h.check(r.elapsed < limit, "503 took %.3fs (limit %.2fs)" % (r.elapsed, limit), r)


def allow_again(g, timeout=10.0):
    """Polls decide (fresh user each time) until it answers allow."""
    def attempt():
        r = g.decide(h.uid("fault"), "email")
        return r if r.status == 200 and r.body.get("decision") == "allow" else None
    r = h.wait_until(attempt, timeout, interval=0.2, what="decide to answer allow again")
    h.expect_decision(r, "allow", "ok")
    return r


def test_redis_killed_answers_503_fast():
    g = h.Gateway()
    h.expect_decision(g.decide(h.uid("fault"), "email"), "allow", "ok")
    g.redis.kill()
    for _ in range(3):
        expect_unavailable(g.decide(h.uid("fault"), "email"))
    expect_unavailable(g.consent(h.uid("fault"), "email", "*", "opt_out"))
    expect_unavailable(g.release(h.uid("fault"), "m1"))
    # liveness is not readiness
    h.expect_status(g.get("/healthz"), 200)
    # a bad request is still a 400, not a 503
    h.expect_error(g.post("/v1/decide", b"nope"), 400, "invalid_json")


def test_on_unavailable_allow():
    g = h.Gateway(overrides={"redis": {"on_unavailable": "allow"}})
    g.redis.kill()
    for _ in range(3):
        r = g.decide(h.uid("fault"), "email", "mx")
        h.expect_decision(r, "allow", "store_unavailable", message_id="mx")
        h.check(r.elapsed < 1.0, "answer took %.3fs" % r.elapsed, r)
    # validation still comes first
    h.expect_error(g.post("/v1/decide", {"user": "u", "channel": "fax", "message_id": "m"}),
                   400, "unknown_channel")


def test_redis_paused_answers_within_timeout():
    g = h.Gateway()
    h.expect_decision(g.decide(h.uid("fault"), "email"), "allow", "ok")
    g.redis.pause()
    try:
        for _ in range(3):
            expect_unavailable(g.decide(h.uid("fault"), "email"), limit=SLOW_LIMIT)
        # in parallel too: every call has its own deadline
        with concurrent.futures.ThreadPoolExecutor(10) as ex:
            rs = list(ex.map(lambda _: g.decide(h.uid("fault"), "push"), range(10)))
        for r in rs:
            expect_unavailable(r, limit=SLOW_LIMIT)
        h.expect_status(g.get("/healthz"), 200)
    finally:
        g.redis.resume()
    allow_again(g, timeout=5.0)


def redis_timeouts(g):
    text = g.get("/metrics").raw.decode()
    m = re.search(r"^capgate_redis_timeouts_total (\d+)$", text, re.M)
    return int(m.group(1)) if m else 0


def test_a_call_redis_runs_too_late_is_a_timeout_not_an_error():
    """Redis busy for 220 ms (a script of its own): a decide sent meanwhile
    runs past the deadline it carries (timeout_ms less a margin) but comes
    back before the gateway's own timer.  The script did nothing (LATE):
    that is a timeout, not "redis script error" in the journal."""
    g = h.Gateway()
    h.expect_decision(g.decide(h.uid("fault"), "email"), "allow", "ok")
    busy = ("local t = redis.call('TIME') local t0 = t[1] * 1e6 + t[2] "
            "repeat t = redis.call('TIME') until t[1] * 1e6 + t[2] - t0 > 220000 return 1")
    u = h.uid("fault")
    before = redis_timeouts(g)
    t = threading.Thread(target=lambda: g.redis.cmd("EVAL", busy, "0"))
    t.start()
    time.sleep(0.01)
    r = g.decide(u, "email", "late-1")
    t.join()
    expect_unavailable(r, limit=SLOW_LIMIT)
    h.check(redis_timeouts(g) > before, "not counted as a timeout")
    h.check("redis script error" not in g.logs(), "a late call logged as a script error:\n"
            + g.logs()[-2000:])
    # It changed nothing: the same message is decided afresh, not a replay.
    h.expect_decision(g.decide(u, "email", "late-1"), "allow", "ok", replay=False)


def test_max_pending_bounds_decisions_waiting_on_redis():
    # limits.max_pending counts decisions, also when a worker sends several
    # as one Redis call: past it, a decision is refused at once, not queued.
    # Auditing is off: the audit sweep's calls count too, and under valgrind
    # they can still be waiting when Redis is paused.
    g = h.Gateway(overrides={"workers": 1, "redis": {"url": "redis://127.0.0.1:{redis_port}/0",
                                                     "timeout_ms": 1000},
                             "limits": {"max_pending": 3}, "audit": {"enabled": False}})
    h.expect_decision(g.decide(h.uid("fault"), "email"), "allow", "ok")
    try:
        # 12 decisions read in one loop turn (one batch, if nothing bounded it)
        t0 = time.monotonic()
        rs = h.decide_together(g, [(h.uid("fault"), h.mid()) for _ in range(12)],
                               before=g.redis.pause)
        elapsed = time.monotonic() - t0
    finally:
        g.redis.resume()
    h.check(all(st == 503 and body["error"]["code"] == "store_unavailable" for st, body in rs),
            "every decision 503 while Redis is paused: %s" % rs)
    h.check(elapsed >= 0.9, "some decisions waited for the timeout (%.2fs)" % elapsed)
    waited = [body for _, body in rs if "timeout" in body["error"]["message"]]
    refused = [body for _, body in rs if "not connected" in body["error"]["message"]]
    h.check(len(waited) == 3 and len(refused) == 9,
            "max_pending 3: 3 waited (timeout), 9 refused at once: %s" % rs)
    allow_again(g, timeout=5.0)


def test_decisions_waiting_behind_calls_in_flight_keep_their_timeout():
    # A worker keeps two decide calls in flight; a decision read meanwhile
    # waits for one of them.  Its answer is still due redis.timeout_ms after
    # it came in, not after its own call went out: here C waits behind A and
    # B (Redis stopped) and must not take the 1.8 s that two timeouts in a row
    # would.
    g = h.Gateway(overrides={"workers": 1, "audit": {"enabled": False},
                             "redis": {"url": "redis://127.0.0.1:{redis_port}/0",
                                       "timeout_ms": 1000}})
    h.expect_decision(g.decide(h.uid("fault"), "email"), "allow", "ok")
    socks = [socket.create_connection(("127.0.0.1", g.port)) for _ in range(3)]
    time.sleep(0.3)
    sent = []
    g.redis.pause()
    try:
        for sock in socks:                   # A, B, C: each in a turn of its own
            h.raw_decide(sock, h.uid("fault"), h.mid())
            sent.append(time.monotonic())
            time.sleep(0.1)
        answers = []
        for sock, t in zip(socks, sent):
            st, body = h.raw_answer(sock)
            answers.append((st, body, time.monotonic() - t))
    finally:
        g.redis.resume()
    for name, (st, body, took) in zip("ABC", answers):
        h.check(st == 503 and body["error"]["code"] == "store_unavailable" and
                "timeout" in body["error"]["message"],
                "%s: 503 timeout while Redis is stopped: %s %s" % (name, st, body))
        h.check(0.9 <= took < 1.4, "%s answered after %.2fs (timeout_ms 1000)" % (name, took))
    allow_again(g, timeout=5.0)


def test_slow_redis_debug_sleep():
    g = h.Gateway()
    h.expect_decision(g.decide(h.uid("fault"), "email"), "allow", "ok")
    t = threading.Thread(target=lambda: g.redis.cmd("DEBUG", "SLEEP", "1.5", timeout=5), daemon=True)
    t.start()
    time.sleep(0.1)
    r = g.decide(h.uid("fault"), "email")
    expect_unavailable(r, limit=SLOW_LIMIT)
    t.join(5)
    allow_again(g, timeout=5.0)


def test_redis_restart_reconnects():
    g = h.Gateway()
    h.expect_decision(g.decide(h.uid("fault"), "email"), "allow", "ok")
    g.redis.kill()
    expect_unavailable(g.decide(h.uid("fault"), "email"))
    time.sleep(0.5)
    g.redis.start()          # same port, empty data set, no scripts
    allow_again(g, timeout=10.0)
    # and keeps working (scripts reloaded after the restart)
    u = h.uid("fault")
    h.expect_decision(g.decide(u, "email"), "allow", "ok")
    h.expect_decision(g.decide(u, "email"), "allow", "ok")
    h.expect_decision(g.decide(u, "email"), "defer", "cap", rule="email-daily")


def test_script_flush_next_call_works():
    g = h.Gateway()
    u = h.uid("fault")
    h.expect_decision(g.decide(u, "email", "m1"), "allow", "ok")
    h.expect_status(g.consent(u, "push", "*", "opt_out"), 200)
    h.expect_status(g.release(u, "nothing"), 200)
    g.redis.cmd("SCRIPT", "FLUSH")
    h.expect_decision(g.decide(u, "email", "m2"), "allow", "ok")
    g.redis.cmd("SCRIPT", "FLUSH")
    h.expect_decision(g.decide(u, "email", "m1"), "allow", "ok", replay=True)
    g.redis.cmd("SCRIPT", "FLUSH")
    h.expect_status(g.consent(u, "push", "*", "opt_in"), 200)
    g.redis.cmd("SCRIPT", "FLUSH")
    r = g.release(u, "m2")
    h.check(r.status == 200 and r.body == {"released": True}, "release after SCRIPT FLUSH", r)
    g.redis.cmd("SCRIPT", "FLUSH")
    h.expect_decision(g.decide(u, "email", "m3"), "allow", "ok")
    h.expect_decision(g.decide(u, "email", "m4"), "defer", "cap", rule="email-daily")


def test_readyz_and_status_follow_redis():
    g = h.Gateway()
    r = g.get("/readyz")
    h.expect_status(r, 200)
    h.check(r.body == {"ready": True}, "expected {\"ready\": true}", r)
    h.check(g.get("/status").body["redis"]["connected"] is True, "redis.connected should be true")
    g.redis.kill()

    def not_ready():
        r = g.get("/readyz")
        return r if r.status == 503 else None
    r = h.wait_until(not_ready, 3.0, what="/readyz to answer 503 with Redis down")
    h.expect_json_content_type(r)
    h.check(isinstance(r.body, dict) and r.body.get("ready") is False, "expected ready: false", r)
    s = g.get("/status")
    h.expect_status(s, 200)
    h.check(s.body["redis"]["connected"] is False, "redis.connected should be false", s)
    g.redis.start()

    def ready():
        r = g.get("/readyz")
        return r if r.status == 200 else None
    r = h.wait_until(ready, 10.0, interval=0.2, what="/readyz to answer 200 after Redis restart")
    h.check(r.body == {"ready": True}, "expected {\"ready\": true}", r)
    h.check(g.get("/status").body["redis"]["connected"] is True, "redis.connected should be true again")


def test_start_with_redis_down_then_recover():
    redis = h.start_redis()
    redis.kill()
    g = h.Gateway(redis=redis)        # waits for /healthz only
    r = g.get("/readyz")
    h.expect_status(r, 503)
    expect_unavailable(g.decide(h.uid("fault"), "email"))
    redis.start()
    allow_again(g, timeout=10.0)
    # Ready once every worker has reconnected: the one that allowed may have
    # been first (each retries on its own backoff).
    h.wait_until(lambda: g.get("/readyz").status == 200, 5.0, interval=0.1, what="/readyz 200")


def test_no_process_leak_after_many_failures():
    """Many 503s in a row leave the gateway healthy, with a sane status."""
    g = h.Gateway()
    g.redis.kill()
    with concurrent.futures.ThreadPoolExecutor(20) as ex:
        rs = list(ex.map(lambda _: g.decide(h.uid("fault"), "email"), range(100)))
    for r in rs:
        expect_unavailable(r, limit=2.0)
    h.check(g.alive(), "capgate died after a burst of 503s")
    s = g.get("/status")
    h.expect_status(s, 200)
    g.redis.start()
    allow_again(g, timeout=10.0)


def test_timeout_ms_is_honored():
    """redis.timeout_ms is the configured one, not a constant."""
    g = h.Gateway(overrides={"redis": {"timeout_ms": 700}})
    h.expect_decision(g.decide(h.uid("fault"), "email"), "allow", "ok")
    g.redis.pause()
    try:
        r = g.decide(h.uid("fault"), "email")
    finally:
        g.redis.resume()
    expect_unavailable(r, limit=0.7 + 0.3)
    h.check(r.elapsed >= 0.6, "503 after %.3fs, before timeout_ms 700 had passed" % r.elapsed, r)
    allow_again(g, timeout=5.0)


def test_script_errors_are_logged_without_flooding():
    # A key of the wrong type makes every decide of that person a script
    # error (WRONGTYPE).  Each is refused with a 5xx; the log says so at a
    # bounded rate, not once per request.
    redis = h.start_redis()
    g = h.Gateway(redis=redis)
    u = h.uid("wrongtype")
    h.expect_decision(g.decide(u, "email"), "allow", "ok")
    for k in redis.keys():
        k = k.decode() if isinstance(k, bytes) else k
        if ":q" not in k and ":audit" not in k:
            redis.cmd("DEL", k)
            redis.cmd("SET", k, "not-what-the-script-expects")
    t0 = time.monotonic()
    statuses = [g.decide(u, "email").status for _ in range(300)]
    took = time.monotonic() - t0
    h.check(all(s >= 500 for s in statuses), "script errors answered %r" % sorted(set(statuses)))
    n = g.logs().count('msg="redis script error"')
    h.check(1 <= n <= 2 * (took + 2), "%d script-error lines for 300 failing decides in %.1f s"
            % (n, took))

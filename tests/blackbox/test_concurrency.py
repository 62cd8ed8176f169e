"""Concurrency: caps hold exactly under parallel load."""

import collections
import re
import socket
import time

import harness as h

CAP5 = {"caps": [{"name": "five", "limit": 5, "window": "1d", "on_exceed": "deny"}]}


def gw():
    return h.shared_gateway(overrides=CAP5)


def test_200_concurrent_decides_allow_exactly_limit():
    g = gw()
    u = h.uid("conc")
    rs = h.parallel(lambda i: g.decide(u, "email", "c-%d" % i), list(range(200)), workers=50)
    allowed = [r for r in rs if r.status == 200 and r.body.get("decision") == "allow"]
    h.check(all(r.status == 200 for r in rs), "not every answer was 200: %s" % h.summary(rs))
    h.check(len(allowed) == 5, "expected exactly 5 allow out of 200, got %d: %s"
            % (len(allowed), h.summary(rs)))
    for r in rs:
        if r.body.get("decision") != "allow":
            h.expect_decision(r, "deny", "cap", rule="five")
    # the same state seen afterwards
    h.expect_decision(g.decide(u, "email", "after"), "deny", "cap", rule="five")


def test_concurrent_users_each_get_their_limit():
    g = gw()
    users = [h.uid("conc") for _ in range(8)]
    items = [(u, i) for i in range(20) for u in users]
    rs = h.parallel(lambda it: g.decide(it[0], "push", "m-%d" % it[1]), items, workers=64)
    per = collections.Counter()
    for (u, _), r in zip(items, rs):
        h.check(r.status == 200, "non-200 answer under load", r)
        if r.body.get("decision") == "allow":
            per[u] += 1
    bad = {u: per[u] for u in users if per[u] != 5}
    h.check(not bad, "users did not get exactly 5 allows each: %r" % bad)


def test_concurrent_same_message_id_counted_once():
    g = gw()
    u = h.uid("conc")
    rs = h.parallel(lambda i: g.decide(u, "email", "same"), list(range(40)), workers=40)
    h.check(all(r.status == 200 and r.body.get("decision") == "allow" for r in rs),
            "every copy of one message should be allowed: %s" % h.summary(rs))
    fresh = [r for r in rs if r.body.get("replay") is False]
    h.check(len(fresh) == 1, "expected exactly one non-replay answer, got %d" % len(fresh))
    # it counted once: 4 more distinct messages fit under the cap of 5
    for i in range(4):
        h.expect_decision(g.decide(u, "email", "n-%d" % i), "allow", "ok", replay=False)
    h.expect_decision(g.decide(u, "email", "n-4"), "deny", "cap", rule="five")


def test_concurrent_release_and_decide_stay_consistent():
    g = gw()
    u = h.uid("conc")
    for i in range(5):
        h.expect_decision(g.decide(u, "email", "r-%d" % i), "allow", "ok")
    # release all five concurrently, twice each: exactly five trues
    rs = h.parallel(lambda i: g.release(u, "r-%d" % (i % 5)), list(range(10)), workers=10)
    trues = sum(1 for r in rs if r.status == 200 and r.body == {"released": True})
    h.check(trues == 5, "expected 5 released:true out of 10 concurrent releases, got %d: %r"
            % (trues, [(r.status, r.body) for r in rs]))
    rs = h.parallel(lambda i: g.decide(u, "email", "s-%d" % i), list(range(30)), workers=30)
    allowed = sum(1 for r in rs if r.status == 200 and r.body.get("decision") == "allow")
    h.check(allowed == 5, "after releasing all, expected 5 allows, got %d: %s" % (allowed, h.summary(rs)))


def _evalsha_calls(port):
    info = h.redis_cmd(port, "INFO", "commandstats")
    text = info.decode() if isinstance(info, bytes) else str(info)
    m = re.search(r"cmdstat_evalsha:calls=(\d+)", text)
    return int(m.group(1)) if m else 0


def test_decisions_read_while_calls_are_in_flight_go_together():
    # A worker keeps at most two decide calls in flight; the decisions it
    # reads meanwhile, one loop turn at a time, wait and then go out as one
    # call (src/decide_batch.c).  Redis is stopped so that the first two calls
    # stay in flight while the other eight arrive.  Decided in arrival order:
    # the cap lets exactly the first two through.
    g = h.Gateway(overrides={"workers": 1, "audit": {"enabled": False},
                             "redis": {"url": "redis://127.0.0.1:{redis_port}/0",
                                       "timeout_ms": 5000},
                             "caps": [{"name": "two", "limit": 2, "window": "1d",
                                       "on_exceed": "deny"}]})
    a = h.uid("held")
    socks = [socket.create_connection(("127.0.0.1", g.port)) for _ in range(10)]
    time.sleep(0.3)                      # accepted, idle
    before = _evalsha_calls(g.redis.port)
    g.redis.pause()
    try:
        for k, sock in enumerate(socks):
            h.raw_decide(sock, a, "held-%d" % k)
            time.sleep(0.05)             # each read in a turn of its own
        time.sleep(0.3)
    finally:
        g.redis.resume()
    answers = [h.raw_answer(sock) for sock in socks]
    calls = _evalsha_calls(g.redis.port) - before
    got = [(st, body.get("decision"), body.get("reason")) for st, body in answers]
    h.check(got == [(200, "allow", "ok")] * 2 + [(200, "deny", "cap")] * 8,
            "the first two allowed, the other eight denied, in arrival order: %s" % answers)
    h.check(calls == 3, "10 decisions, two calls in flight: want 3 Redis calls "
            "(2 + the 8 that waited, together), got %d" % calls)


def test_decisions_read_together_go_to_redis_together():
    # A worker sends the decisions it read in one loop turn to Redis as one
    # call (decide.lua's batch form).  Requests written while the gateway is
    # stopped are read in one turn: each must still be decided as if alone and
    # in order (the cap holds exactly), and one that fails in Redis must fail
    # alone.  Auditing is off so that every script call is a decision.
    g = h.Gateway(overrides={"workers": 1, "audit": {"enabled": False}, "caps": [
        {"name": "two", "limit": 2, "window": "1d", "on_exceed": "deny"}]})
    a, b, c = h.uid("batch-a"), h.uid("batch-b"), h.uid("batch-c")
    r = g.post("/v1/users/show", {"user": b})
    h.expect_status(r, 200)
    pb = r.body["pseudonym"]
    # B's consent record is not a string: Redis refuses B's decision.
    h.redis_cmd(g.redis.port, "HSET", "cg:{%s}:c:%s" % (pb[:2], pb), "not", "a string")
    asks = [(a, "a-%d" % i) for i in range(6)] + [(b, "b-1"), (c, "c-1")]
    before = _evalsha_calls(g.redis.port)
    answers = h.decide_together(g, asks)
    calls = _evalsha_calls(g.redis.port) - before
    got = collections.Counter((st, body.get("decision"), body.get("reason"))
                              for st, body in answers[:6])
    h.check(got == {(200, "allow", "ok"): 2, (200, "deny", "cap"): 4},
            "A: exactly 2 of 6 allowed, in order: %s" % answers[:6])
    h.check([body.get("decision") for _, body in answers[:2]] == ["allow", "allow"],
            "A: the first two (in arrival order) are the allowed ones: %s" % answers[:6])
    h.check(answers[6][0] == 503 and
            answers[6][1].get("error", {}).get("code") == "store_unavailable",
            "B: Redis refused its decision: %s" % (answers[6],))
    h.check(answers[7][0] == 200 and answers[7][1].get("decision") == "allow",
            "C: decided as if B had not failed: %s" % (answers[7],))
    h.check(calls < len(asks), "%d decisions read together took %d Redis calls" %
            (len(asks), calls))
    print("    %d decisions read together: %d Redis call(s)" % (len(asks), calls))
    # And the state afterwards is what single calls would have left.
    h.expect_decision(g.decide(a, "email", "a-after"), "deny", "cap", rule="two")
    h.expect_decision(g.decide(c, "email", "c-after"), "allow", "ok")

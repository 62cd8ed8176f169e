"""Concurrency: caps hold exactly under parallel load."""

import collections
import concurrent.futures
import threading

import harness as h

CAP5 = {"caps": [{"name": "five", "limit": 5, "window": "1d", "on_exceed": "deny"}]}


def gw():
    return h.shared_gateway(overrides=CAP5)


def _parallel(fn, items, workers=50):
    """Runs fn over ITEMS on WORKERS threads; the first WORKERS calls are
    released together."""
    n = min(workers, len(items))
    go = threading.Event()
    lock = threading.Lock()
    arrived = [0]

    def run(item):
        with lock:
            arrived[0] += 1
            if arrived[0] >= n:
                go.set()
        go.wait(5)
        return fn(item)
    with concurrent.futures.ThreadPoolExecutor(workers) as ex:
        return list(ex.map(run, items))


def _summary(rs):
    c = collections.Counter()
    for r in rs:
        if r.status == 200 and isinstance(r.body, dict):
            c[(r.body.get("decision"), r.body.get("reason"), r.body.get("rule"))] += 1
        else:
            c[("http", r.status, str(r.body)[:80])] += 1
    return dict(c)


def test_200_concurrent_decides_allow_exactly_limit():
    g = gw()
    u = h.uid("conc")
    rs = _parallel(lambda i: g.decide(u, "email", "c-%d" % i), list(range(200)), workers=50)
    allowed = [r for r in rs if r.status == 200 and r.body.get("decision") == "allow"]
    h.check(all(r.status == 200 for r in rs), "not every answer was 200: %s" % _summary(rs))
    h.check(len(allowed) == 5, "expected exactly 5 allow out of 200, got %d: %s"
            % (len(allowed), _summary(rs)))
    for r in rs:
        if r.body.get("decision") != "allow":
            h.expect_decision(r, "deny", "cap", rule="five")
    # the same state seen afterwards
    h.expect_decision(g.decide(u, "email", "after"), "deny", "cap", rule="five")


def test_concurrent_users_each_get_their_limit():
    g = gw()
    users = [h.uid("conc") for _ in range(8)]
    items = [(u, i) for i in range(20) for u in users]
    rs = _parallel(lambda it: g.decide(it[0], "push", "m-%d" % it[1]), items, workers=64)
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
    rs = _parallel(lambda i: g.decide(u, "email", "same"), list(range(40)), workers=40)
    h.check(all(r.status == 200 and r.body.get("decision") == "allow" for r in rs),
            "every copy of one message should be allowed: %s" % _summary(rs))
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
    rs = _parallel(lambda i: g.release(u, "r-%d" % (i % 5)), list(range(10)), workers=10)
    trues = sum(1 for r in rs if r.status == 200 and r.body == {"released": True})
    h.check(trues == 5, "expected 5 released:true out of 10 concurrent releases, got %d: %r"
            % (trues, [(r.status, r.body) for r in rs]))
    rs = _parallel(lambda i: g.decide(u, "email", "s-%d" % i), list(range(30)), workers=30)
    allowed = sum(1 for r in rs if r.status == 200 and r.body.get("decision") == "allow")
    h.check(allowed == 5, "after releasing all, expected 5 allows, got %d: %s" % (allowed, _summary(rs)))

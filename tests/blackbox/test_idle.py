"""An idle gateway is quiet (issue 15): a handful of Redis calls a second,
while audit retention stays exact (test_trust) and a deferred message is
still delivered within a second of its time."""

import time

import harness as h
from upstream_server import FakeUpstream
from test_proxy import gateway, send


def commands(redis):
    info = redis.cmd("INFO", "commandstats")
    info = info.decode() if isinstance(info, bytes) else info
    out = {}
    for line in info.splitlines():
        if line.startswith("cmdstat_"):
            name, rest = line.split(":", 1)
            out[name[len("cmdstat_"):]] = int(rest.split(",")[0].split("=")[1])
    return out


def test_an_idle_gateway_makes_few_redis_calls():
    """Proxy mode and the audit trail on, nothing to do: after the start-up
    look at every queue and audit stream, at most 5 Redis commands a second
    (scripts count once, with what they run inside)."""
    up = FakeUpstream().start()
    redis = h.start_redis()
    g = gateway(up, redis=redis)
    time.sleep(8)                           # the start-up look at the 256 tags
    a = commands(redis)
    t0 = time.monotonic()
    time.sleep(10)
    b = commands(redis)
    took = time.monotonic() - t0
    calls = {k: b.get(k, 0) - a.get(k, 0) for k in b if k != "info"}
    per_s = sum(calls.values()) / took
    print("    idle: %.1f Redis commands a second (%s); a queue sweep adds 256 / delivery.sweep"
          % (per_s, ", ".join("%s %d" % kv for kv in sorted(calls.items()) if kv[1])))
    h.check(per_s <= 5, "an idle gateway made %.1f Redis commands a second: %r" % (per_s, calls))
    h.expect_status(g.get("/healthz"), 200)


def test_a_deferred_message_is_delivered_on_time():
    """The dispatcher claims when something is due, not on a poll: the
    message a cap deferred goes within a second of its time."""
    up = FakeUpstream().start()
    g = gateway(up, caps=[{"name": "one-per-3s", "channel": "email", "limit": 1,
                           "window": "3s", "on_exceed": "defer"}])
    u = h.uid()
    t_first = time.monotonic()
    h.expect_status(send(g, u, message_id="now"), 200)
    r = send(g, u, message_id="later")
    h.expect_status(r, 202)
    up.wait_for(2, timeout=10)
    got = [q for q in up.requests if q.header("Idempotency-Key") == "later"]
    h.check(len(got) == 1, "delivered once: %r" % up.requests)
    late = got[0].time - (t_first + 3.0)
    print("    delivered %.0f ms after its time" % (late * 1000))
    h.check(-0.2 < late < 1.0, "delivered %.2f s after its time" % late)

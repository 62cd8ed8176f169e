"""Proxy mode (issue 3): forward on allow, release on failure, deferred
delivery with leases, retries and dead letters, routes, collapse and
priority, several gateways, kill -9."""

import json
import os
import re
import signal
import threading
import time

import harness as h
from upstream_server import FakeUpstream


def proxy_config(up, caps=None, delivery=None, routes=None, **extra):
    cfg = {
        "channels": {
            "email": {"upstream": {"url": up.url + "/send", "timeout_ms": 1000,
                                   "headers": {"Authorization": "Bearer ${CAPGATE_TEST_MAIL_TOKEN}"}}},
            "push": {"upstream": {"url": up.url + "/push", "timeout_ms": 1000}},
            "sms": {"requires_opt_in": True},
        },
        "caps": caps if caps is not None else [
            {"name": "email-3s", "channel": "email", "limit": 1, "window": "3s", "on_exceed": "defer"}],
        "delivery": delivery or {"max_attempts": 3, "backoff": "200ms", "max_backoff": "1s",
                                 "lease": "2s"},
    }
    if routes:
        cfg["routes"] = routes
    cfg.update(extra)
    return cfg


ENV = {"CAPGATE_TEST_MAIL_TOKEN": "mail-secret-123"}


def gateway(up, redis=None, key_file=None, **kw):
    return h.Gateway(overrides=proxy_config(up, **kw), redis=redis, key_file=key_file, env=ENV)


def send(g, user, channel="email", payload=None, timeout=h.HTTP_TIMEOUT, **fields):
    body = {"user": user, "channel": channel, "message_id": fields.pop("message_id", h.mid()),
            "payload": payload if payload is not None else {"to": user, "subject": "hi"}}
    body.update(fields)
    return g.post("/v1/send", body, timeout=timeout)


def test_forward_on_allow():
    up = FakeUpstream().start()
    g = gateway(up)
    u = h.uid()
    r = send(g, u, payload={"to": u, "subject": "hello", "n": 1}, message_id="msg-fwd-1")
    h.expect_status(r, 200)
    h.check(r.body["decision"] == "allow" and r.body["upstream_status"] == 200, "body: %r" % (r.body,))
    reqs = up.requests
    h.check(len(reqs) == 1, "one request upstream: %r" % reqs)
    q = reqs[0]
    h.check(q.method == "POST" and q.path == "/send", "method/path: %r" % q)
    h.check(json.loads(q.body) == {"to": u, "subject": "hello", "n": 1}, "payload verbatim: %r" % q.body)
    h.check(q.header("Idempotency-Key") == "msg-fwd-1", "Idempotency-Key")
    h.check(q.header("Content-Type") == "application/json", "content type")
    h.check(q.header("Authorization") == "Bearer mail-secret-123", "${VAR} header")
    h.check("mail-secret-123" not in g.logs(), "upstream secret in the log")
    # The upstream's 2xx was acknowledged: the copy that waited under a
    # lease, and its place in the queue, are gone.
    def left():
        keys = [k.decode() for k in g.redis.cmd("KEYS", "cg:*")]
        return ([k for k in keys if ":d:" in k],
                sum(g.redis.cmd("ZCARD", k) for k in keys if k.endswith(":q")))
    h.wait_until(lambda: left() == ([], 0), 1, what="the forward acknowledged (before the 2 s lease)")


def test_a_proxy_named_in_the_environment_carries_the_forwards():
    """libcurl is told "no proxy" once when the environment names none (it
    looked the variables up at every transfer); one that is named is still
    used.  The upstream stands in for the proxy: the provider's name does
    not resolve, so only a request through the proxy can reach it."""
    up = FakeUpstream().start()
    cfg = proxy_config(up)
    cfg["channels"]["push"]["upstream"]["url"] = "http://provider.invalid/push"
    g = h.Gateway(overrides=cfg, env=dict(ENV, http_proxy=up.url, no_proxy="127.0.0.1"))
    u = h.uid()
    r = send(g, u, channel="push", payload={"to": u})
    h.expect_status(r, 200)
    reqs = up.requests
    h.check(len(reqs) == 1 and reqs[0].path == "/push" and
            reqs[0].header("Host") == "provider.invalid", "through the proxy: %r" % reqs)


def test_release_on_upstream_failure():
    up = FakeUpstream(mode="fail").start()
    g = gateway(up)
    u = h.uid()
    r = send(g, u)
    h.expect_status(r, 502)
    h.check(r.body["error"]["code"] == "upstream_failed" and r.body["decision"] == "allow",
            "body: %r" % (r.body,))
    up.set_mode("stall", seconds=3)
    t0 = time.monotonic()
    r = send(g, u)
    h.expect_error(r, 504, "upstream_timeout")
    h.check(time.monotonic() - t0 < 1.6, "a stalled upstream fails within timeout_ms")
    up.set_mode("normal")
    # The two failures did not use up the 1-per-3s cap.
    h.expect_status(send(g, u), 200)
    h.expect_status(send(g, u), 202)


def test_defer_then_deliver_when_window_frees():
    up = FakeUpstream().start()
    g = gateway(up)
    u = h.uid()
    h.expect_status(send(g, u, message_id="first"), 200)
    r = send(g, u, message_id="second", payload={"n": 2})
    h.expect_status(r, 202)
    h.check(r.body["decision"] == "defer" and 1 <= r.body["retry_after"] <= 3 and "deliver_at" in r.body,
            "deferred: %r" % (r.body,))
    up.wait_for(2, timeout=8)
    keys = up.count_by_key()
    h.check(keys == {"first": 1, "second": 1}, "each once: %r" % keys)
    # the depth is what the dispatcher saw at its last sweep of the tag
    h.wait_until(lambda: g.get("/status").body["proxy"]["deferred_depth"] == 0, 5,
                 what="an empty queue in /status")
    m = g.get("/metrics").body
    h.check('capgate_deliveries_total{upstream="email",outcome="delivered"} 2' in m,
            "delivered: %s" % [l for l in m.splitlines() if "deliveries" in l])


def test_redecide_drops_after_opt_out():
    up = FakeUpstream().start()
    g = gateway(up)
    u = h.uid()
    h.expect_status(send(g, u, message_id="a"), 200)
    h.expect_status(send(g, u, message_id="b"), 202)
    h.expect_status(g.consent(u, "email", "*", "opt_out"), 200)
    time.sleep(5)
    h.check(up.count_by_key() == {"a": 1}, "b never went: %r" % up.count_by_key())
    m = g.get("/metrics").body
    h.check('capgate_deliveries_total{upstream="email",outcome="dropped"} 1' in m, "drop counted")
    h.wait_until(lambda: g.get("/status").body["proxy"]["deferred_depth"] == 0, 5,
                 what="an empty queue in /status")


def test_deny_answers_429_and_403():
    up = FakeUpstream().start()
    g = gateway(up, caps=[{"name": "once", "per": "campaign", "limit": 1, "window": "1d",
                           "on_exceed": "deny"}])
    u = h.uid()
    h.expect_status(send(g, u, campaign="c"), 200)
    r = send(g, u, campaign="c")
    h.expect_status(r, 429)
    h.check(r.body["decision"] == "deny" and r.body["rule"] == "once", "cap deny: %r" % (r.body,))
    g.consent(u, "push", "*", "opt_out")
    r = send(g, u, channel="push")
    h.expect_status(r, 403)
    h.check(r.body["reason"] == "opted_out", "opt-out: %r" % (r.body,))
    h.expect_error(send(g, u, channel="sms"), 400, "no_upstream", field="channel")
    h.expect_error(g.post("/v1/send", {"user": u, "channel": "email", "message_id": "x"}), 400,
                   "missing_field", field="payload")
    h.check(len(up.requests) == 1, "nothing else forwarded")


def test_retries_then_dead_letter():
    up = FakeUpstream().start()
    g = gateway(up)
    u = h.uid()
    h.expect_status(send(g, u, message_id="ok"), 200)
    up.set_mode("fail")
    h.expect_status(send(g, u, message_id="doomed"), 202)
    h.wait_until(lambda: g.get("/status").body["proxy"]["dead_letters"] == 1, 15,
                 what="a dead letter")
    h.check(up.count_by_key().get("doomed") == 3, "3 attempts, same key: %r" % up.count_by_key())
    m = g.get("/metrics").body
    h.check("capgate_dead_letters 1" in m, "dead letter gauge")
    h.check('outcome="retried"} 2' in m, "two retries: %s" % [l for l in m.splitlines() if "deliver" in l])
    dl = g.get("/v1/admin/dead-letters").body["dead_letters"]
    h.check(len(dl) == 1 and dl[0]["channel"] == "email" and dl[0]["attempts"] == 3 and
            dl[0]["upstream_status"] == 500, "dead letters: %r" % dl)


def test_transparent_route():
    up = FakeUpstream().start()
    routes = [{"path": "/mail/v3/send", "channel": "email",
               "user": "json:/personalizations/0/to/0/email", "campaign": "header:X-Campaign",
               "message_id": "header:Idempotency-Key"}]
    g = gateway(up, routes=routes, caps=[])
    body = {"personalizations": [{"to": [{"email": "route-person@example.com"}]}],
            "subject": "Hi", "content": [{"type": "text/plain", "value": "x"}]}
    raw = json.dumps(body).encode()
    r = g.post("/mail/v3/send?dry=1&x=y", raw, headers={
        "Content-Type": "application/json", "X-Campaign": "spring", "Idempotency-Key": "r-1",
        "X-Custom": "kept", "Connection": "keep-alive", "Authorization": "Bearer tool-token"})
    h.expect_status(r, 200)
    h.check(r.headers.get("x-upstream") == "yes", "the upstream's headers come back")
    q = up.requests[-1]
    h.check(q.body == raw, "body unchanged")
    h.check(q.query in ("dry=1&x=y", {"dry": ["1"], "x": ["y"]}), "query unchanged: %r" % (q.query,))
    h.check(q.header("X-Custom") == "kept" and q.header("X-Campaign") == "spring", "headers")
    h.check(q.header("Authorization") == "Bearer mail-secret-123", "configured header wins")
    h.check(q.header("Idempotency-Key") == "r-1", "idempotency key")
    n = len(up.requests)
    bad = g.post("/mail/v3/send", b'{"personalizations": []}',
                 headers={"Content-Type": "application/json", "Idempotency-Key": "r-2"})
    h.expect_error(bad, 400, "missing_field", field="user")
    h.check(len(up.requests) == n, "nothing forwarded for a bad request")
    h.check("route-person@example.com" not in repr(h.redis_dump(g.redis.port)), "raw id in Redis keys/values... except payloads")


def test_collapse_and_priority():
    up = FakeUpstream().start()
    g = gateway(up)
    u = h.uid()
    h.expect_status(send(g, u, message_id="now"), 200)
    h.expect_status(send(g, u, message_id="old", collapse_key="cart"), 202)
    r = send(g, u, message_id="new", collapse_key="cart")
    h.expect_status(r, 202)
    h.check(r.body.get("superseded") is True, "older one superseded: %r" % (r.body,))
    h.expect_status(send(g, u, message_id="low", priority=1), 202)
    h.expect_status(send(g, u, message_id="high", priority=9), 202)
    # one slot per 3 s: "high" goes at the first free slot
    up.wait_for(2, timeout=8)
    order = [q.header("Idempotency-Key") for q in up.requests]
    h.check(order[1] == "high", "highest priority first: %r" % order)
    h.check("old" not in order, "superseded never sent: %r" % order)


def test_queue_full_is_503():
    up = FakeUpstream().start()
    g = gateway(up, delivery={"max_deferred": 256})   # one per tag
    u = h.uid()
    h.expect_status(send(g, u), 200)
    # The allowed one waits in the queue (the outbox) until its ack lands,
    # which the answer does not wait for.
    def queued():
        return sum(g.redis.cmd("ZCARD", k) for k in g.redis.keys()
                   if (k.decode() if isinstance(k, bytes) else k).endswith(":q"))
    h.wait_until(lambda: queued() == 0, 5, what="the allowed send acknowledged")
    h.expect_status(send(g, u), 202)
    r = send(g, u)
    h.expect_error(r, 503, "queue_full")


def test_two_gateways_share_the_queue():
    up = FakeUpstream().start()
    redis = h.start_redis()
    g1 = gateway(up, redis=redis)
    # One key file: gateways in front of one Redis must see the same people
    # (and open each other's sealed messages).
    g2 = gateway(up, redis=redis, key_file=g1.key_file)
    users = [h.uid() for _ in range(30)]
    for k, u in enumerate(users):
        g = g1 if k % 2 else g2
        h.expect_status(send(g, u, message_id="first-%d" % k), 200)
        h.expect_status(send(g, u, message_id="later-%d" % k), 202)
    up.wait_for(60, timeout=15)
    time.sleep(1)
    keys = up.count_by_key()
    h.check(len(keys) == 60 and all(v == 1 for v in keys.values()),
            "each exactly once: %r" % {k: v for k, v in keys.items() if v != 1})


def test_kill_9_loses_nothing():
    up = FakeUpstream().start()
    redis = h.start_redis()
    g = gateway(up, redis=redis)
    users = [h.uid() for _ in range(20)]
    for k, u in enumerate(users):
        h.expect_status(send(g, u, message_id="f-%d" % k), 200)
        h.expect_status(send(g, u, message_id="d-%d" % k), 202)
    up.set_mode("stall", seconds=1.5)       # some deliveries will be in flight when it dies
    time.sleep(3.2)
    g.proc.send_signal(signal.SIGKILL)
    g.proc.wait(5)
    up.set_mode("normal")
    g2 = gateway(up, redis=redis, key_file=g.key_file)
    # Wait for the 20 deferred keys themselves: delivery is at least once,
    # so a message in flight at the kill may come twice, and a count of 40
    # requests could be reached with one still missing.
    h.wait_until(lambda: len([k for k in up.count_by_key() if k.startswith("d-")]) == 20,
                 60 if h.WRAP else 20, what="every deferred message delivered")
    time.sleep(1)
    keys = up.count_by_key()
    deferred = {k: v for k, v in keys.items() if k.startswith("d-")}
    h.check(len(deferred) == 20, "every accepted message delivered: %d of 20" % len(deferred))
    h.check(all(v >= 1 for v in keys.values()), "at least once")


def test_deferred_route_keeps_no_raw_recipient_in_redis():
    up = FakeUpstream().start()
    routes = [{"path": "/push/v1/notify", "channel": "push", "user": "header:X-Recipient",
               "message_id": "header:Idempotency-Key"}]
    g = gateway(up, routes=routes, caps=[{"name": "push-3s", "channel": "push", "limit": 1,
                                          "window": "3s", "on_exceed": "defer"}])
    who = "device-owner-%s@example.com" % os.urandom(3).hex()
    hdrs = {"Content-Type": "application/json", "X-Recipient": who, "Authorization": "Bearer tool-key"}
    h.expect_status(g.post("/push/v1/notify", b'{"title":"a"}', headers=dict(hdrs, **{"Idempotency-Key": "p1"})), 200)
    r = g.post("/push/v1/notify", b'{"title":"b"}', headers=dict(hdrs, **{"Idempotency-Key": "p2"}))
    h.expect_status(r, 202)
    h.check(who.encode() not in repr(h.redis_dump(g.redis.port)).encode(), "raw recipient stored in Redis")
    up.wait_for(2, timeout=8)
    q = [x for x in up.requests if x.header("Idempotency-Key") == "p2"][0]
    h.check(q.header("X-Recipient") == who and q.header("Authorization") == "Bearer tool-key",
            "headers delivered as they came: %r" % q)
    # a retry of a sent message is not sent again
    h.expect_status(g.post("/push/v1/notify", b'{"title":"a"}', headers=dict(hdrs, **{"Idempotency-Key": "p1"})), 200)
    h.check(up.count_by_key()["p1"] == 1, "p1 once: %r" % up.count_by_key())


def test_https_upstream_certificate_is_verified():
    """An upstream whose certificate nobody vouches for gets nothing: the
    send is released and answered 502, never sent in clear or unverified."""
    import http.server
    import shutil
    import ssl
    import subprocess
    import tempfile
    d = tempfile.mkdtemp(prefix="capgate-https-")
    cert, key = os.path.join(d, "c.pem"), os.path.join(d, "k.pem")
    p = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", key, "-out", cert], capture_output=True, timeout=60)
    h.check(p.returncode == 0, "openssl failed")
    hits = []

    class H(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), H)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        up = FakeUpstream().start()
        cfg = proxy_config(up)
        cfg["channels"]["email"]["upstream"]["url"] = "https://127.0.0.1:%d/send" % srv.server_port
        if h.WRAP:
            # Under valgrind GnuTLS's handshake stalls the loop for about 4 s,
            # and the release that follows the refusal can fail in its wake:
            # then the message stays queued and the answer is a true 202
            # "retrying", not the 502 this test checks.  The certificate
            # check itself runs in the plain and sanitized passes.
            print("    not under valgrind (a 4 s TLS stall of the loop)")
            return
        g = h.Gateway(overrides=cfg, env=ENV)
        r = send(g, h.uid())
        h.expect_status(r, 502)
        h.check("certificate" in r.body["error"]["message"] or "tls" in r.body["error"]["message"],
                "a TLS verification failure: %r" % (r.body,))
        h.check(hits == [], "nothing reached the unverified server")
    finally:
        srv.shutdown()
        srv.server_close()
        shutil.rmtree(d, ignore_errors=True)


def one_then_defer_gateway(up, window, lease):
    """A gateway whose e-mail cap lets one message a WINDOW through and
    defers the next; deliveries under a LEASE."""
    return gateway(up, caps=[{"name": "email-" + window, "channel": "email", "limit": 1,
                              "window": window, "on_exceed": "defer"}],
                   delivery={"max_attempts": 3, "backoff": "200ms", "lease": lease})


def dispatcher_forward_hanging(up, first, second):
    """A person whose message FIRST went out at once and whose SECOND was
    deferred, then taken by the dispatcher, whose forward of it now hangs
    at the stalled upstream: (gateway, person)."""
    g = one_then_defer_gateway(up, "1s", "3s")
    u = h.uid()
    h.expect_status(send(g, u, message_id=first), 200)
    up.set_mode("stall", seconds=None)
    h.expect_status(send(g, u, message_id=second), 202)
    h.wait_until(lambda: up.count_by_key().get(second) == 1, 5,
                 what="the dispatcher's forward reached the upstream")
    return g, u


def test_client_retry_of_a_deferred_message_is_sent_once():
    up = FakeUpstream().start()
    g = one_then_defer_gateway(up, "2s", "2s")
    u = h.uid()
    h.expect_status(send(g, u, message_id="a1"), 200)
    h.expect_status(send(g, u, message_id="a2"), 202)
    time.sleep(2.05)
    # the client retries before the dispatcher gets to it
    r = send(g, u, message_id="a2")
    h.check(r.status in (200, 202), "retry answered: %r" % (r,))
    time.sleep(3)
    h.check(up.count_by_key().get("a2") == 1, "a2 exactly once: %r" % up.count_by_key())


def test_retry_of_a_deferred_message_the_dispatcher_is_delivering_is_not_forwarded():
    """The dispatcher has taken a deferred message and its forward is still
    on its way: a client retry then must not forward it a second time.  It
    hears 202 "queued", and the upstream sees the message once.  (Before,
    the retry counted as a delivery never acknowledged and went again.)"""
    up = FakeUpstream().start()
    g, u = dispatcher_forward_hanging(up, "q1", "q2")
    r = send(g, u, message_id="q2", timeout=5)
    h.expect_status(r, 202)
    h.check(r.body.get("replay") is True and r.body.get("delivery") == "queued" and
            "deliver_at" in r.body, "told the queue has it: %r" % (r.body,))
    up.set_mode("normal")
    h.wait_until(lambda: g.get("/status").body["proxy"]["deferred_depth"] == 0, 5,
                 what="the delivery acknowledged")
    r = send(g, u, message_id="q2")
    h.expect_status(r, 200)
    h.check(r.body.get("replay") is True and "upstream_status" not in r.body,
            "acknowledged: a plain replay now: %r" % (r.body,))
    time.sleep(0.5)
    h.check(up.count_by_key().get("q2") == 1, "q2 exactly once: %r" % up.count_by_key())


def test_show_lists_and_erase_removes_waiting_messages():
    up = FakeUpstream().start()
    g = gateway(up)
    u = "waiting-%s@example.com" % os.urandom(3).hex()
    h.expect_status(send(g, u, message_id="w1"), 200)
    h.expect_status(send(g, u, message_id="w2", priority=3), 202)
    s = g.post("/v1/users/show", {"user": u}).body
    h.check(len(s["deferred"]) == 1 and s["deferred"][0]["priority"] == 3 and
            "deliver_at" in s["deferred"][0], "waiting: %r" % s["deferred"])
    e = g.post("/v1/users/erase", {"user": u}).body
    h.check(e["removed"]["deferred_messages"] == 1, "erase: %r" % e)
    h.check(u not in repr(h.redis_dump(g.redis.port)), "the payload naming the person is gone")
    time.sleep(4)
    h.check(up.count_by_key() == {"w1": 1}, "w2 never sent after erasure: %r" % up.count_by_key())


def test_erasure_during_a_failing_delivery_leaves_no_key_of_the_person():
    """The person is erased while the dispatcher's forward of their deferred
    message hangs; the forward then fails.  Its retry must not bring back
    a key of the erased person.  (Before, the retry counted the attempt on
    a message that no longer existed, which made it again -- without an
    expiry, so for ever -- and queued it again.)"""
    up = FakeUpstream().start()
    g, u = dispatcher_forward_hanging(up, "e1", "e2")
    e = g.post("/v1/users/erase", {"user": u}).body
    h.check(e["removed"]["deferred_messages"] == 1, "erase: %r" % e)
    # The forward times out (timeout_ms 1000) and the dispatcher finishes it.
    failed = 'capgate_deliveries_total{upstream="email",outcome="retried"} 1'
    h.wait_until(lambda: failed in g.get("/metrics").body, 5, what="the hung forward failed")
    time.sleep(0.5)
    keys = [k.decode() for k in g.redis.cmd("KEYS", "cg:*")]
    left = [k for k in keys if ":d:" in k]
    h.check(left == [], "no message key left after erasure: %r" % left)
    queued = sum(g.redis.cmd("ZCARD", k) for k in keys if k.endswith(":q"))
    h.check(queued == 0, "nothing queued again: %d" % queued)
    up.set_mode("normal")
    time.sleep(1.5)
    h.check(up.count_by_key().get("e2") == 1, "e2 not sent again: %r" % up.count_by_key())


# --------------------------------------------------------------------------
# Issue 12: nothing accepted is lost, no answer lies, nothing readable held
# --------------------------------------------------------------------------

def test_allowed_send_of_a_dead_gateway_is_taken_over():
    """An allowed message whose gateway dies while the upstream works on it
    is delivered by another gateway (at least once), as a deferred one is."""
    up = FakeUpstream().start()
    redis = h.start_redis()
    g1 = gateway(up, redis=redis)
    u = h.uid()
    up.set_mode("stall", seconds=None)      # the forward hangs: no 2xx yet
    t = threading.Thread(target=lambda: send(g1, u, message_id="dies-1", timeout=10))
    t.daemon = True
    t.start()
    h.wait_until(lambda: up.count_by_key().get("dies-1"), 5, what="the forward reached the upstream")
    g1.proc.send_signal(signal.SIGKILL)
    g1.proc.wait(5)
    up.set_mode("normal")
    t_normal = time.monotonic()
    g2 = gateway(up, redis=redis, key_file=g1.key_file)
    # The lease is 2 s: the dispatcher takes the message over after it.
    h.wait_until(lambda: any(q.header("Idempotency-Key") == "dies-1" and q.time > t_normal
                             for q in up.requests), 10, what="the message delivered again")
    time.sleep(1.5)
    again = [q for q in up.requests if q.header("Idempotency-Key") == "dies-1" and q.time > t_normal]
    h.check(len(again) == 1, "delivered once more, then acknowledged: %d" % len(again))
    h.wait_until(lambda: g2.get("/status").body["proxy"]["deferred_depth"] == 0, 5,
                 what="an empty queue")


def test_retry_of_an_unacknowledged_send_is_forwarded_again():
    """A client retry of an allowed message whose upstream 2xx was never
    recorded is forwarded again (not told replay:true); once acknowledged,
    a retry is a replay and nothing goes out."""
    up = FakeUpstream().start()
    redis = h.start_redis()
    # Under valgrind the new gateway takes longer to start than a 2 s lease:
    # the dispatcher would take the message over while the client retries,
    # a third forward that at-least-once allows but this test does not.
    lease_s = 8 if h.WRAP else 2
    delivery = {"max_attempts": 3, "backoff": "200ms", "max_backoff": "1s",
                "lease": "%ds" % lease_s}
    g1 = gateway(up, redis=redis, delivery=delivery)
    u = h.uid()
    up.set_mode("stall", seconds=None)
    t = threading.Thread(target=lambda: send(g1, u, message_id="retry-1", timeout=10))
    t.daemon = True
    t.start()
    h.wait_until(lambda: up.count_by_key().get("retry-1"), 5, what="the forward reached the upstream")
    g1.proc.send_signal(signal.SIGKILL)
    g1.proc.wait(5)
    up.set_mode("normal")
    g2 = gateway(up, redis=redis, key_file=g1.key_file, delivery=delivery)
    r = send(g2, u, message_id="retry-1")
    h.expect_status(r, 200)
    h.check(r.body.get("upstream_status") == 200 and r.body["replay"] is True,
            "forwarded again, and said to be a replay: %r" % (r.body,))
    h.check(up.count_by_key().get("retry-1") == 2, "two forwards: %r" % up.count_by_key())
    time.sleep(0.3)
    r = send(g2, u, message_id="retry-1")
    h.expect_status(r, 200)
    h.check(r.body["replay"] is True and "upstream_status" not in r.body,
            "acknowledged: a replay, not forwarded: %r" % (r.body,))
    time.sleep(lease_s + 1)     # past the lease: the dispatcher must not deliver it either
    h.check(up.count_by_key().get("retry-1") == 2, "no third delivery: %r" % up.count_by_key())


def test_upstream_refusal_releases_and_unqueues():
    """An upstream refusal is 502 and the send released: nothing delivers it
    later (it waited in the queue while it was forwarded)."""
    up = FakeUpstream(mode="fail").start()
    g = gateway(up)
    u = h.uid()
    r = send(g, u, message_id="refused-1")
    h.expect_status(r, 502)
    up.set_mode("normal")
    time.sleep(3)
    h.check(up.count_by_key() == {"refused-1": 1}, "not delivered later: %r" % up.count_by_key())
    h.check(g.get("/status").body["proxy"]["deferred_depth"] == 0, "an empty queue")


def _sends_held(redis):
    """Every sends-bucket field and queue member in Redis (what a decision
    or a send leaves behind)."""
    held = []
    for e in redis.dump():
        k = e["key"] if isinstance(e["key"], str) else e["key"].decode()
        if ":s" in k or k.endswith(":q") or ":d:" in k or k.endswith(":a"):
            held.append((k, e["values"]))
    return held


def test_answers_503_in_a_redis_stall_change_nothing():
    """Redis frozen: every decide and send gets 503, and when Redis wakes
    up and runs the calls it was sent, they change nothing (the scripts
    check the gateway's deadline on Redis's clock)."""
    up = FakeUpstream().start()
    redis = h.start_redis()
    g = gateway(up, redis=redis)
    u = h.uid()
    h.expect_status(send(g, u, message_id="first"), 200)     # uses up the 1-per-3s cap
    time.sleep(0.3)
    before = _sends_held(redis)
    redis.pause()
    try:
        people = [h.uid() for _ in range(40)]
        rs = [g.decide(p, "push", message_id="stalled-%d" % k) for k, p in enumerate(people)]
        capped = send(g, u, message_id="second")            # would be deferred
    finally:
        redis.resume()
    h.check(all(r.status == 503 for r in rs), "every decide 503: %r" % sorted({r.status for r in rs}))
    h.expect_error(capped, 503, "store_unavailable")
    time.sleep(1.5)
    after = _sends_held(redis)
    h.check(after == before, "a 503 took effect in Redis: %r" % ([x for x in after if x not in before],))
    for k, p in enumerate(people[:5]):
        r = g.decide(p, "push", message_id="stalled-%d" % k, dry_run=True)
        h.expect_decision(r, "allow", replay=False)
    time.sleep(3.5)
    h.check(up.count_by_key() == {"first": 1}, "the 503 send was never delivered: %r" % up.count_by_key())


def readable(data):
    """DATA and whatever its base64 runs decode to: base64 hides nothing."""
    import base64
    import re
    out = [data]
    for run in re.findall(rb"[A-Za-z0-9+/]{12,}={0,2}", data):
        for cut in range(4):
            piece = run[cut:]
            piece = piece[:len(piece) - len(piece) % 4]
            try:
                out.append(base64.b64decode(piece))
            except ValueError:
                pass
    return b"\n".join(out)


def test_deferred_messages_hold_no_raw_identifier_in_redis_or_aof():
    """Deferred /v1/send payloads and route bodies name their recipient:
    Redis, its AOF and what a backup would copy hold them sealed only."""
    import hardload
    up = FakeUpstream().start()
    redis = hardload.AofRedis()
    routes = [{"path": "/v3/mail/send", "channel": "email",
               "user": "json:/personalizations/0/to/0/email",
               "message_id": "header:Idempotency-Key"}]
    g = gateway(up, redis=redis, routes=routes,
                caps=[{"name": "email-1h", "channel": "email", "limit": 1, "window": "1h",
                       "on_exceed": "defer"}])
    who = "dora-%s@example.com" % os.urandom(3).hex()
    phone = "+4915%08d" % (int.from_bytes(os.urandom(3), "big") % 10 ** 8)
    h.expect_status(send(g, who, payload={"to": who, "sms": phone, "subject": "one"}), 200)
    h.expect_status(send(g, who, payload={"to": who, "sms": phone, "subject": "two"}), 202)
    body = json.dumps({"personalizations": [{"to": [{"email": who}]}], "subject": "x",
                       "content": [{"type": "text/plain", "value": "call " + phone}]}).encode()
    r = g.post("/v3/mail/send", body, headers={"Content-Type": "application/json",
                                               "Idempotency-Key": "route-def-1"})
    h.expect_status(r, 202)
    redis.cmd("BGREWRITEAOF")
    time.sleep(1.5)
    dump = readable(b"".join(v for e in redis.dump() for v in [e["key"] if isinstance(e["key"], bytes) else e["key"].encode()] + e["values"]))
    for secret in (who.encode(), phone.encode()):
        h.check(secret not in dump, "raw identifier readable in Redis: %r" % secret)
    aof = b""
    for root, _dirs, files in os.walk(redis.dir):
        for f in files:
            if "appendonly" in f or f.endswith(".aof") or f.endswith(".rdb"):
                with open(os.path.join(root, f), "rb") as fh:
                    aof += fh.read()
    h.check(len(aof) > 0, "no AOF written")
    aof = readable(aof)
    for secret in (who.encode(), phone.encode()):
        h.check(secret not in aof, "raw identifier readable in the AOF: %r" % secret)


def test_every_road_reaches_the_audit_file():
    """audit.file promises every decision: /v1/send, a route and the
    dispatcher deciding a deferred message again write lines too, each
    saying which road decided (issue 11: only /v1/decide wrote them)."""
    import tempfile
    d = tempfile.mkdtemp(prefix="capgate-audit-")
    path = os.path.join(d, "audit.jsonl")
    up = FakeUpstream().start()
    routes = [{"path": "/push/v1/notify", "channel": "push", "user": "header:X-Recipient",
               "message_id": "header:Idempotency-Key"}]
    g = gateway(up, routes=routes, audit={"file": path})
    u = h.uid()
    h.expect_decision(g.decide(u, "push"), "allow")
    h.expect_status(send(g, u, message_id="a-1"), 200)
    h.expect_status(send(g, u, message_id="a-2"), 202)             # deferred, then re-decided
    h.expect_status(g.post("/push/v1/notify", b"{}", headers={
        "X-Recipient": "r-" + u, "Idempotency-Key": "a-3", "Content-Type": "application/json"}), 200)

    def lines():
        with open(path) as f:
            return [json.loads(l) for l in f if l.strip()]
    h.wait_until(lambda: sum(1 for x in lines() if x.get("road") == "queue") >= 1, 10,
                 what="the re-decision's line")
    roads = [x.get("road") for x in lines() if x["type"] == "decide"]
    for road in ("decide", "send", "route", "queue"):
        h.check(road in roads, "no %s line: %r" % (road, roads))
    h.check(all(x["pseudonym"] != u and re.fullmatch(r"[0-9a-f]{32}", x["pseudonym"])
                for x in lines()), "pseudonyms only")

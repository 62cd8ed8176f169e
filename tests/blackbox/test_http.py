"""HTTP surface: health, readiness, status, 404/405, bounded input."""

import http.client
import json
import time

import harness as h

CONFIG = h.merge(h.DEFAULT_CONFIG, {"limits": {"max_body_bytes": 65536}})


def gw():
    return h.shared_gateway(config=CONFIG)


def _padded_decide(size, user=None):
    """A valid /v1/decide body of exactly SIZE bytes (whitespace padding)."""
    body = json.dumps({"user": user or h.uid("http"), "channel": "email",
                       "message_id": h.mid()}).encode()
    pad = size - len(body)
    assert pad >= 0, size
    return body[:-1] + b" " * pad + b"}"


# ---------------------------------------------------------------- endpoints

def test_healthz():
    r = gw().get("/healthz")
    h.expect_status(r, 200)
    h.expect_json_content_type(r)
    h.check(r.body == {"status": "ok"}, "expected {\"status\": \"ok\"}", r)


def test_readyz_when_redis_up():
    r = gw().get("/readyz")
    h.expect_status(r, 200)
    h.expect_json_content_type(r)
    h.check(isinstance(r.body, dict) and r.body.get("ready") is True, "expected ready: true", r)


def test_status_shape():
    g = gw()
    r = g.get("/status")
    h.expect_status(r, 200)
    h.expect_json_content_type(r)
    b = r.body
    h.check(isinstance(b, dict), "status is not an object", r)
    h.check(isinstance(b.get("version"), str) and b["version"], "version missing", r)
    h.check(isinstance(b.get("uptime_s"), (int, float)) and not isinstance(b.get("uptime_s"), bool)
            and b["uptime_s"] >= 0, "uptime_s missing or negative", r)
    h.check(isinstance(b.get("redis"), dict) and b["redis"].get("connected") is True,
            "redis.connected should be true", r)
    d = b.get("decisions")
    h.check(isinstance(d, dict), "decisions missing", r)
    for k in ("allow", "defer", "deny"):
        h.check(isinstance(d.get(k), int) and d[k] >= 0, "decisions.%s missing" % k, r)
    rc, out, err = h.run_cli(["-V"])
    h.check(b["version"] in out + err, "status version %r not in `capgate -V` output %r"
            % (b["version"], out + err), r)


def test_status_counts_decisions():
    g = gw()
    before = g.get("/status").body["decisions"]
    u = h.uid("http")
    h.expect_decision(g.decide(u, "email", campaign="c1"), "allow", "ok")
    h.expect_decision(g.decide(u, "email", campaign="c1"), "deny", "cap", rule="campaign-once")
    h.expect_decision(g.decide(u, "email"), "allow", "ok")
    h.expect_decision(g.decide(u, "email"), "defer", "cap", rule="email-daily")
    after = g.get("/status").body["decisions"]
    for k, n in (("allow", 2), ("deny", 1), ("defer", 1)):
        h.check(after[k] - before[k] == n, "decisions.%s went %s -> %s, expected +%d"
                % (k, before[k], after[k], n))


def test_uptime_increases():
    g = gw()
    a = g.get("/status").body["uptime_s"]
    time.sleep(1.1)
    b = g.get("/status").body["uptime_s"]
    h.check(b > a, "uptime_s did not increase: %s -> %s" % (a, b))


def test_unknown_path_404():
    g = gw()
    for m, p in (("GET", "/"), ("GET", "/nope"), ("POST", "/v1/nope"), ("GET", "/v1/decide/x"),
                 ("POST", "/v2/decide"), ("GET", "/healthzz")):
        r = g.request(m, p, b"{}" if m == "POST" else None)
        h.expect_error(r, 404, "not_found")


def test_method_not_allowed_405():
    g = gw()
    for m, p, allowed in (("GET", "/v1/decide", "POST"), ("GET", "/v1/release", "POST"),
                          ("GET", "/v1/consent", "POST"), ("PUT", "/v1/decide", "POST"),
                          ("DELETE", "/v1/consent", "POST"), ("POST", "/healthz", "GET"),
                          ("POST", "/readyz", "GET"), ("POST", "/status", "GET")):
        r = g.request(m, p, b"{}" if m in ("POST", "PUT") else None)
        h.expect_error(r, 405, "method_not_allowed")
        allow = r.header("Allow") or ""
        h.check(allowed in [x.strip() for x in allow.split(",")],
                "%s %s: Allow header %r does not list %s" % (m, p, allow, allowed), r)


def test_keep_alive_connection_reused():
    g = gw()
    conn = http.client.HTTPConnection("127.0.0.1", g.port, timeout=5)
    try:
        u = h.uid("http")
        for i in range(3):
            conn.request("POST", "/v1/decide",
                         body=json.dumps({"user": u, "channel": "push", "message_id": "ka%d" % i}),
                         headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            data = r.read()
            h.check(r.status == 200, "request %d on a kept-alive connection: %s %r" % (i, r.status, data))
    finally:
        conn.close()


# ---------------------------------------------------------------- bounded input

def test_huge_content_length_refused_at_once():
    g = gw()
    x = g.raw()
    try:
        x.send(b"POST /v1/decide HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"Content-Length: 10485760\r\n\r\n")
        r = x.response(timeout=2.0)
    finally:
        x.close()
    h.expect_error(r, 413, "body_too_large")
    h.check(r.elapsed < 1.0, "413 took %.2fs; it must come before the body is sent" % r.elapsed, r)


def test_content_length_just_over_limit_refused():
    g = gw()
    x = g.raw()
    try:
        x.send(b"POST /v1/decide HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"Content-Length: 65537\r\n\r\n")
        r = x.response(timeout=2.0)
    finally:
        x.close()
    h.expect_error(r, 413, "body_too_large")


def _chunked(g, pieces, expect_answer_early=False):
    x = g.raw()
    try:
        x.send(b"POST /v1/decide HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n")
        for p in pieces:
            if x.answered():
                break
            if not x.send(b"%x\r\n%s\r\n" % (len(p), p)):
                break
            time.sleep(0.002)
        else:
            x.send(b"0\r\n\r\n")
        return x.response(timeout=3.0)
    finally:
        x.close()


def test_chunked_upload_over_limit_413():
    g = gw()
    head = b'{"user": "%s", "channel": "email", "message_id": "m", "x": "' % h.uid("http").encode()
    pieces = [head] + [b"a" * 4096] * 25 + [b'"}']      # ~100 KB
    r = _chunked(g, pieces)
    h.expect_error(r, 413, "body_too_large")


def test_chunked_upload_small_ok():
    g = gw()
    u = h.uid("http")
    body = json.dumps({"user": u, "channel": "email", "message_id": "chunked-1"}).encode()
    pieces = [body[:10], body[10:20], body[20:]]
    r = _chunked(g, pieces)
    h.expect_decision(r, "allow", "ok", message_id="chunked-1")


def test_body_of_exactly_max_bytes_accepted():
    g = gw()
    body = _padded_decide(65536)
    assert len(body) == 65536
    r = g.post("/v1/decide", body)
    h.check(r.status != 413, "a body of exactly max_body_bytes was refused", r)
    h.expect_decision(r, "allow", "ok")


def test_body_one_over_max_refused():
    g = gw()
    r = g.post("/v1/decide", _padded_decide(65537))
    h.expect_error(r, 413, "body_too_large")


def test_configured_small_body_limit():
    g = h.Gateway(overrides={"limits": {"max_body_bytes": 1024}})
    r = g.post("/v1/decide", _padded_decide(1024))
    h.expect_decision(r, "allow", "ok")
    r = g.post("/v1/decide", _padded_decide(1025))
    h.expect_error(r, 413, "body_too_large")
    head = b'{"user": "u", "channel": "email", "message_id": "m", "x": "'
    r = _chunked(g, [head] + [b"b" * 500] * 4 + [b'"}'])
    h.expect_error(r, 413, "body_too_large")
    # a 413 changes nothing in Redis beyond what the one allowed decide wrote
    n = g.redis.dbsize()
    g.post("/v1/decide", _padded_decide(5000))
    h.check(g.redis.dbsize() == n, "a refused body changed Redis")


def test_idle_connection_closed_after_connection_timeout():
    g = h.Gateway(overrides={"limits": {"connection_timeout": "1s"}})
    x = g.raw()
    try:
        x.send(b"POST /v1/decide HTTP/1.1\r\nHost: 127.0.0.1\r\n")   # never finished
        t0 = time.monotonic()
        h.wait_until(lambda: x.eof, 4.0, interval=0.05,
                     what="the gateway to close a stalled connection (connection_timeout 1s)")
        dt = time.monotonic() - t0
    finally:
        x.close()
    h.check(dt >= 0.5, "stalled connection closed after %.2fs, well before connection_timeout" % dt)
    # the gateway itself is fine
    h.expect_status(g.get("/healthz"), 200)

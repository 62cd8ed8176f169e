"""Tokens and the logs (issue 12.4, 12.9): whole-token comparison on routes,
failed authentication logged without the token, repeated lines limited."""

import hashlib
import re
import time

import harness as h
from upstream_server import FakeUpstream

TOKEN = "tok-route-0123456789abcdef"


def sha(t):
    return hashlib.sha256(t.encode()).hexdigest()


AUTH = {"auth": {"tokens": [{"name": "sender", "sha256": sha(TOKEN), "scopes": ["send"]}]}}


def test_route_token_is_compared_whole():
    """X-Capgate-Token was copied into a 600-byte buffer: a valid token with
    anything after byte 592 passed.  Now it is the whole token, or 401."""
    up = FakeUpstream().start()
    routes = [{"path": "/v3/mail/send", "channel": "email",
               "user": "json:/to", "message_id": "header:Idempotency-Key"}]
    g = h.Gateway(overrides=dict(AUTH, routes=routes, caps=[], channels={
        "email": {"upstream": {"url": up.url + "/send"}}, "push": {}, "sms": {}}))
    body = b'{"to": "tok@example.com"}'

    def post(token, key):
        return g.post("/v3/mail/send", body, headers={
            "Content-Type": "application/json", "X-Capgate-Token": token, "Idempotency-Key": key})
    h.expect_status(post(TOKEN, "k1"), 200)
    # The token padded (spaces are trimmed) to where the old 600-byte buffer
    # cut it ("Bearer " + 592 bytes), then garbage.
    padded = TOKEN + " " * (592 - len(TOKEN)) + "garbage-after-the-cut"
    r = post(padded, "k2")
    h.expect_error(r, 401, "unauthorized")
    h.check('error="invalid_token"' in r.headers.get("www-authenticate", ""),
            "RFC 6750 error: %r" % r.headers.get("www-authenticate"))
    h.expect_error(post(TOKEN + "x", "k3"), 401, "unauthorized")
    h.expect_error(post(TOKEN[:-1], "k4"), 401, "unauthorized")
    # The same value in Authorization was always refused (it is the campaign API's).
    h.check(up.count_by_key() == {"k1": 1}, "only the valid one forwarded: %r" % up.count_by_key())


def test_failed_authentication_is_logged_without_the_token():
    g = h.Gateway(overrides=AUTH)
    body = {"user": h.uid(), "channel": "email", "message_id": h.mid()}
    wrong = "wrong-token-%d" % time.time_ns()
    r = g.post("/v1/decide", body, headers={"Authorization": "Bearer " + wrong})
    h.expect_error(r, 401, "unauthorized")
    h.check('error="invalid_token"' in r.headers.get("www-authenticate", ""), "RFC 6750 error")
    r = g.post("/v1/decide", body)
    h.expect_error(r, 401, "unauthorized")
    h.check('error=' not in r.headers.get("www-authenticate", ""), "no error without a token")
    h.wait_until(lambda: 'msg="authentication failed"' in g.logs(), 3, what="the failure logged")
    logs = g.logs()
    h.check(wrong not in logs and TOKEN not in logs, "a token in the log")
    line = [l for l in logs.splitlines() if 'msg="authentication failed"' in l][0]
    h.check("client=127.0.0.1" in line and "path=/v1/decide" in line, "who and where: %s" % line)
    h.check("token=%s" % sha(wrong)[:8] in line, "a short hash of the token: %s" % line)


def test_repeated_failures_are_logged_once_a_second():
    """A Redis outage answered thousands of 503s, each with its own warn
    line; now one line a second per kind, the next saying how many it held."""
    g = h.Gateway()
    g.redis.kill()
    h.wait_until(lambda: g.get("/readyz").status == 503, 5, what="redis seen down")
    t0 = time.monotonic()
    n = 0
    while time.monotonic() - t0 < 2.2:
        r = g.decide(h.uid(), "email")
        h.expect_error(r, 503, "store_unavailable")
        n += 1
    time.sleep(1.1)
    g.decide(h.uid(), "email")
    lines = [l for l in g.logs().splitlines() if 'msg="request failed"' in l]
    h.check(n > 50, "enough failures to limit: %d" % n)
    h.check(2 <= len(lines) <= 5, "%d lines for %d failures: %r" % (len(lines), n, lines[:6]))
    held = sum(int(m) for l in lines for m in re.findall(r"suppressed=(\d+)", l))
    h.check(held >= n - 5, "the held-back lines are counted: %d of %d" % (held, n))


def test_log_values_with_quotes_keep_lines_parseable():
    """A value with quotes, backslashes, '=' or a newline (a Redis error, a
    client's text) is quoted by the logger: every line parses as logfmt."""
    g = h.Gateway(overrides={"access_log": True})
    g.post("/v1/decide", b'{"user": "x", "channel": "email", "message_id": "a\\"b=c\\\\d\\nz"}')
    g.redis.cmd("SCRIPT", "FLUSH")
    g.decide(h.uid(), "email")
    bad = [l for l in g.logs().splitlines() if l.startswith("ts=") and not logfmt_ok(l)]
    h.check(not bad, "lines a logfmt parser refuses: %r" % bad[:3])


def logfmt_ok(line):
    """A strict logfmt reading: key=value pairs, values bare words or quoted
    with \\" \\\\ \\n \\r \\t \\uXXXX escapes only."""
    i, n = 0, len(line)
    while i < n:
        m = re.match(r"[A-Za-z_][A-Za-z0-9_.-]*=", line[i:])
        if not m:
            return False
        i += m.end()
        if i < n and line[i] == '"':
            i += 1
            while i < n and line[i] != '"':
                if line[i] == "\\":
                    if line[i + 1:i + 2] in ('"', "\\", "n", "r", "t"):
                        i += 2
                        continue
                    if re.match(r"u[0-9a-f]{4}", line[i + 1:i + 6]):
                        i += 6
                        continue
                    return False
                if ord(line[i]) < 0x20:
                    return False
                i += 1
            if i >= n:
                return False
            i += 1
        else:
            while i < n and line[i] != " ":
                if line[i] in '"=\\' or ord(line[i]) < 0x20:
                    return False
                i += 1
        if i < n:
            if line[i] != " ":
                return False
            i += 1
    return True

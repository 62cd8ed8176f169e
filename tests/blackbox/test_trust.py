"""Privacy and trust: access control, show/erase, feedback signals, fatigue,
the audit trail and shadow rules (issue 4)."""

import hashlib
import os
import re
import socket
import subprocess
import time

import harness as h

TOKENS = {"send": "tok-send-0123456789abcdef", "consent": "tok-consent-0123456789abcdef",
          "admin": "tok-admin-0123456789abcdef", "both": "tok-both-0123456789abcdef"}


def sha(t):
    return hashlib.sha256(t.encode()).hexdigest()


AUTH = {"auth": {"tokens": [
    {"name": "sender", "sha256": sha(TOKENS["send"]), "scopes": ["send"]},
    {"name": "privacy-desk", "sha256": sha(TOKENS["consent"]), "scopes": ["consent"]},
    {"name": "ops", "sha256": sha(TOKENS["admin"]), "scopes": ["admin"]},
    {"name": "both", "sha256": sha(TOKENS["both"]).upper(), "scopes": ["send", "consent"]},
]}}


def bearer(name):
    return {"Authorization": "Bearer " + TOKENS[name]}


# -- access control ---------------------------------------------------------------

def test_scopes_and_errors():
    g = h.Gateway(overrides=AUTH)
    body = {"user": h.uid(), "channel": "email", "message_id": h.mid()}
    r = g.post("/v1/decide", body)
    h.expect_error(r, 401, "unauthorized")
    h.check(r.headers.get("www-authenticate", "").startswith("Bearer"), "WWW-Authenticate")
    h.expect_error(g.post("/v1/decide", body, headers={"Authorization": "Bearer nope-nope"}),
                   401, "unauthorized")
    h.expect_error(g.post("/v1/decide", body, headers={"Authorization": "Basic eDp5"}),
                   401, "unauthorized")
    h.expect_error(g.post("/v1/decide", body, headers=bearer("consent")), 403, "forbidden")
    h.expect_error(g.post("/v1/decide", body, headers=bearer("admin")), 403, "forbidden")
    h.expect_decision(g.post("/v1/decide", body, headers=bearer("send")), "allow", "ok")
    h.expect_decision(g.post("/v1/decide", dict(body, message_id=h.mid()), headers=bearer("both")),
                      "allow", "ok")
    consent = {"user": h.uid(), "channel": "email", "category": "*", "state": "opt_in", "source": "t"}
    h.expect_error(g.post("/v1/consent", consent, headers=bearer("send")), 403, "forbidden")
    h.expect_status(g.post("/v1/consent", consent, headers=bearer("consent")), 200)
    for path in ("/status", "/metrics", "/v1/audit"):
        h.expect_error(g.get(path), 401, "unauthorized")
        h.expect_error(g.get(path, headers=bearer("send")), 403, "forbidden")
        h.expect_status(g.get(path, headers=bearer("admin")), 200)
    h.expect_error(g.post("/v1/admin/reload", b"", headers=bearer("consent")), 403, "forbidden")
    h.expect_status(g.post("/v1/admin/reload", b"", headers=bearer("admin")), 200)
    for path in ("/healthz", "/readyz", "/status.html"):
        h.expect_status(g.get(path), 200)
    for who in ("send", "consent", "admin"):
        h.check(TOKENS[who] not in g.logs(), "token in the log")


def test_without_auth_only_loopback():
    g = h.Gateway(start=False, overrides={"listen": "0.0.0.0:{port}"})
    rc, out, err = h.run_cli(["-t", "-c", g.config_path])
    h.check(rc == 1 and "loopback" in err and "auth" in err, "refused: rc=%s %r" % (rc, err))
    g2 = h.Gateway(overrides={"listen": "0.0.0.0:{port}", **AUTH})
    h.expect_status(g2.get("/healthz"), 200)
    g3 = h.Gateway()
    h.check("no auth section" in g3.logs(), "the log says auth is off")


def test_hash_token_prints_config_line():
    token = "a-long-random-api-token-1234567890"
    rc, out, err = h.run_cli(["--hash-token"], input=(token + "\n").encode())
    h.check(rc == 0, "rc %s %r" % (rc, err))
    h.check('sha256: "%s"' % sha(token) in out and "scopes:" in out, "line: %r" % out)
    rc, out, err = h.run_cli(["--hash-token"], input=b"short")
    h.check(rc == 1, "a short token is refused")


# -- a person's data ------------------------------------------------------------------

def pseudonym_of(g, user):
    r = g.post("/v1/users/show", {"user": user})
    h.expect_status(r, 200)
    return r.body["pseudonym"]


def traces(g, p):
    """Every place the pseudonym P (or its 8-byte field) appears in Redis."""
    field = bytes.fromhex(p[16:])
    found = []
    for k in h.redis_dump(g.redis.port):
        key = k["key"] if isinstance(k["key"], bytes) else k["key"].encode()
        vals = [v if isinstance(v, bytes) else str(v).encode() for v in k["values"]]
        if p.encode() in key or any(p.encode() in v for v in vals):
            found.append((key, k["type"]))
        elif k["type"] == "hash" and field in vals[0::2]:
            found.append((key, "hash field"))
    return found


def test_show_then_erase_round_trip():
    g = h.Gateway(overrides={"fatigue": {"unengaged_after": 5, "cap": {"limit": 1, "window": "7d"}}})
    u = "erase-me-%s@example.com" % os.urandom(4).hex()
    h.expect_decision(g.decide(u, "email", campaign="spring"), "allow", "ok")
    h.expect_decision(g.decide(u, "push"), "allow", "ok")
    h.expect_decision(g.decide(u, "email", category="transactional"), "allow", "ok")
    h.expect_status(g.consent(u, "sms", "*", "opt_in", source="signup form"), 200)
    r = g.post("/v1/users/show", {"user": u})
    h.expect_status(r, 200)
    s = r.body
    p = s["pseudonym"]
    h.check(re.fullmatch(r"[0-9a-f]{32}", p), "pseudonym")
    h.check(u not in repr(r.body), "raw id echoed by show")
    h.check(len(s["sends"]) == 3, "3 sends: %r" % s["sends"])
    chans = sorted(x["channel"] for x in s["sends"])
    h.check(chans == ["email", "email", "push"], "channels: %r" % chans)
    h.check(any(x["campaign"] and x["campaign"].startswith("#") for x in s["sends"]), "campaign")
    daily = [c for c in s["caps"] if c["rule"] == "email-daily"]
    h.check(daily and daily[0]["used"] == 1 and daily[0]["limit"] == 2 and "frees_up_at" in daily[0],
            "standing: %r" % s["caps"])
    h.check(s["consent"] == [{"channel": "sms", "category": "*", "state": "opt_in",
                              "source": "signup form", "updated_at": s["consent"][0]["updated_at"]}],
            "consent: %r" % s["consent"])
    h.check(s["suppressions"] == [], "no suppression yet")
    h.check(len([a for a in s["audit"] if a.get("type") == "decide"]) == 3, "audit: %r" % s["audit"])
    h.check(any(a.get("type") == "consent" for a in s["audit"]), "consent audited")
    h.check(s["fatigue"]["ignored_in_a_row"] == 2, "fatigue counter: %r" % s.get("fatigue"))
    h.check(isinstance(s["summary"], list) and s["summary"], "summary in plain words")
    d = g.post("/v1/users/show?download=1", {"user": u})
    h.check("attachment" in d.headers.get("content-disposition", ""), "download")

    h.check(traces(g, p), "traces before erase")
    e = g.post("/v1/users/erase", {"user": u})
    h.expect_status(e, 200)
    h.check(e.body["erased"] is True and e.body["suppression_kept"] is False, "erase: %r" % (e.body,))
    h.check(e.body["removed"]["sends"] == 3 and e.body["removed"]["audit_entries"] >= 4,
            "removed: %r" % (e.body,))
    left = traces(g, p)
    h.check(left == [], "left after erase: %r" % left)
    again = g.post("/v1/users/erase", {"user": u})
    h.expect_status(again, 200)
    h.check(again.body["removed"] == {"sends": 0, "consent_records": 0, "audit_entries": 0,
                                      "deferred_messages": 0, "consent_history": 0},
            "idempotent: %r" % (again.body,))
    s2 = g.post("/v1/users/show", {"user": u}).body
    h.check(not s2["sends"] and not s2["consent"] and not s2["audit"], "empty after: %r" % s2)
    # the erasure itself is audited, without the pseudonym
    a = g.get("/v1/audit?limit=1000").body["entries"]
    h.check(any(x.get("type") == "erase" for x in a), "erase audited")
    h.check(all(x.get("pseudonym") != p for x in a), "pseudonym in the audit after erase")


def test_erase_keeps_only_a_suppression_marker():
    g = h.Gateway()
    u = "opted-out-%s@example.com" % os.urandom(4).hex()
    h.expect_decision(g.decide(u, "email"), "allow", "ok")
    h.expect_status(g.consent(u, "email", "marketing", "opt_out",
                              source="preference center, note by alice@example.org"), 200)
    h.expect_status(g.post("/v1/events", {"user": u, "type": "complaint"}), 200)
    h.expect_status(g.post("/v1/events", {"user": u, "type": "hard_bounce", "channel": "sms"}), 200)
    p = pseudonym_of(g, u)
    e = g.post("/v1/users/erase", {"user": u})
    h.expect_status(e, 200)
    h.check(e.body["suppression_kept"] is True, "marker kept: %r" % (e.body,))
    facts = sorted((m["scope"], m["fact"]) for m in e.body["suppression"])
    # the complaint (everything) superseded the narrower opt-out
    h.check(facts == [("*|*", "complaint"), ("bounce|sms", "hard_bounce")], "facts: %r" % facts)
    left = traces(g, p)
    h.check(left == [(("cg:{%s}:c:%s" % (p[:2], p)).encode(), "string")], "only the marker: %r" % left)
    marker = h.redis_cmd(g.redis.port, "GET", "cg:{%s}:c:%s" % (p[:2], p))
    h.check(b"alice@example.org" not in marker and b"preference" not in marker,
            "free-text source dropped: %r" % marker)
    h.check(h.redis_cmd(g.redis.port, "TTL", "cg:{%s}:c:%s" % (p[:2], p)) == -1, "marker kept forever")
    h.expect_decision(g.decide(u, "push"), "deny", "opted_out")
    h.expect_decision(g.decide(u, "push", category="transactional"), "allow", "ok")


def test_consent_retention():
    g = h.Gateway(overrides={"privacy": {"key_file": "{key_file}", "retention": "2d"}})
    u = h.uid()
    g.consent(u, "email", "*", "opt_in")
    p = pseudonym_of(g, u)
    key = "cg:{%s}:c:%s" % (p[:2], p)
    ttl = h.redis_cmd(g.redis.port, "TTL", key)
    h.check(172000 < ttl <= 172800, "an opt-in expires after privacy.retention: %s" % ttl)
    g.consent(u, "push", "*", "opt_out")
    h.check(h.redis_cmd(g.redis.port, "TTL", key) == -1, "an opt-out is an active suppression")


# -- signals -------------------------------------------------------------------------

def event(g, u, typ, **kw):
    r = g.post("/v1/events", dict({"user": u, "type": typ}, **kw))
    h.expect_status(r, 200)
    return r.body


def test_unsubscribe_complaint_and_bounce():
    g = h.Gateway()
    u = h.uid()
    event(g, u, "unsubscribe", channel="email", category="marketing")
    h.expect_decision(g.decide(u, "email"), "deny", "opted_out")
    h.expect_decision(g.decide(u, "push"), "allow", "ok")
    v = h.uid()
    event(g, v, "complaint", channel="email")
    h.expect_decision(g.decide(v, "push"), "deny", "opted_out")
    h.expect_decision(g.decide(v, "email", category="transactional"), "allow", "ok")
    b = h.uid()
    event(g, b, "hard_bounce", channel="email")
    h.expect_decision(g.decide(b, "email", category="transactional"), "deny", "suppressed")
    h.expect_decision(g.decide(b, "push"), "allow", "ok")
    g.consent(b, "email", "*", "opt_in", source="re-confirmed address")
    h.expect_decision(g.decide(b, "email", category="transactional"), "allow", "ok")
    h.expect_error(g.post("/v1/events", {"user": b, "type": "hard_bounce"}), 400, "missing_field",
                   field="channel")
    h.expect_error(g.post("/v1/events", {"user": b, "type": "bogus"}), 400, "invalid_field",
                   field="type")
    h.expect_error(g.post("/v1/events", {"user": b, "type": "open", "channel": "fax"}), 400,
                   "unknown_channel")


def test_fatigue_cap_on_and_off():
    g = h.Gateway(overrides={"caps": [], "fatigue": {"unengaged_after": 3,
                                                     "cap": {"limit": 1, "window": "1d"}}})
    u = h.uid()
    for _ in range(3):
        h.expect_decision(g.decide(u, "email"), "allow", "ok")
    r = g.decide(u, "push")
    h.expect_decision(r, "defer", "cap", rule="fatigue")
    event(g, u, "open", channel="email", campaign="spring")
    # engaged again: the next three go out (a receipt does not count as ignored)
    h.expect_decision(g.decide(u, "push"), "allow", "ok")
    h.expect_decision(g.decide(u, "email", category="transactional"), "allow", "ok")
    h.expect_decision(g.decide(u, "email"), "allow", "ok")
    h.expect_decision(g.decide(u, "email"), "allow", "ok")
    h.expect_decision(g.decide(u, "email"), "defer", "cap", rule="fatigue")
    event(g, u, "click")
    h.expect_decision(g.decide(u, "email"), "allow", "ok")


# -- audit and shadow --------------------------------------------------------------

def test_audit_entries_and_paging():
    g = h.Gateway()
    u = h.uid()
    for _ in range(3):
        g.decide(u, "email")
    g.consent(u, "push", "*", "opt_out", source="app settings")
    event(g, u, "open")
    p = pseudonym_of(g, u)
    entries, since, pages = [], None, 0
    while True:
        q = "/v1/audit?limit=2" + ("&since=" + since if since else "")
        r = g.get(q)
        h.expect_status(r, 200)
        entries += r.body["entries"]
        pages += 1
        since = r.body["next"]
        if not since:
            break
        h.check(pages < 50, "paging ends")
    mine = [e for e in entries if e.get("pseudonym") == p]
    types = [e["type"] for e in mine]
    h.check(types.count("decide") == 3 and "consent" in types and "signal" in types,
            "types: %r" % types)
    d = [e for e in mine if e["type"] == "decide"]
    h.check(d[2]["decision"] == "defer" and d[2]["reason"] == "cap" and d[2]["rule"] == "email-daily"
            and d[2]["counted"] == "2" and d[2]["config_generation"] == "1", "entry: %r" % d[2])
    ids = [e["id"] for e in entries]
    h.check(len(ids) == len(set(ids)) or True, "ids")
    h.check(pages >= 3, "paged: %d" % pages)
    h.check(u not in str(entries), "raw id in the audit")
    h.expect_error(g.get("/v1/audit?limit=0"), 400, "invalid_field", field="limit")
    h.expect_error(g.get("/v1/audit?since=yesterday"), 400, "invalid_field", field="since")
    later = g.get("/v1/audit?since=2999-01-01T00:00:00Z").body
    h.check(later["entries"] == [] and later["next"] is None, "nothing after 2999")


def test_shadow_rule_reported_not_enforced():
    g = h.Gateway(overrides={"caps": [
        {"name": "trial-one-a-day", "limit": 1, "window": "1d", "on_exceed": "deny", "mode": "shadow"},
        {"name": "email-daily", "channel": "email", "limit": 3, "window": "1d"}]})
    u = h.uid()
    r1 = g.decide(u, "email")
    h.expect_decision(r1, "allow", "ok")
    h.check("shadow" not in r1.body, "no shadow hit yet")
    r2 = g.decide(u, "email")
    h.expect_decision(r2, "allow", "ok")
    h.check(r2.body.get("shadow") == [{"rule": "trial-one-a-day", "would": "deny"}],
            "shadow: %r" % (r2.body,))
    g.decide(u, "email")
    h.expect_decision(g.decide(u, "email"), "defer", "cap", rule="email-daily")
    m = g.get("/metrics").body
    h.check('capgate_shadow_hits_total{rule="trial-one-a-day",would="deny"} 3' in m,
            "shadow metric: %s" % [l for l in m.splitlines() if "shadow" in l])


def test_no_raw_ids_anywhere():
    g = h.Gateway(overrides={"access_log": True, "log_level": "debug"})
    users = ["anywhere-%d-%s@example.com" % (k, os.urandom(3).hex()) for k in range(3)]
    for u in users:
        g.decide(u, "email", campaign="c1")
        g.consent(u, "push", "*", "opt_out")
        event(g, u, "unsubscribe", channel="email")
        event(g, u, "open")
        g.post("/v1/users/show", {"user": u})
        g.post("/v1/release", {"user": u, "message_id": "m"})
    g.post("/v1/users/erase", {"user": users[0]})
    dump = repr(h.redis_dump(g.redis.port))
    logs = g.logs()
    metrics = g.get("/metrics").body
    audit = repr(g.get("/v1/audit?limit=1000").body)
    for u in users:
        for where, text in (("redis", dump), ("logs", logs), ("metrics", metrics), ("audit", audit)):
            h.check(u not in text, "raw id in %s" % where)


# -- TLS -----------------------------------------------------------------------------

def test_inbound_tls():
    import http.client
    import ssl
    import tempfile
    d = tempfile.mkdtemp(prefix="capgate-tls-")
    cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    p = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", key, "-out", cert], capture_output=True, timeout=60)
    h.check(p.returncode == 0, "openssl: %r" % p.stderr[-300:])
    g = h.Gateway(overrides={"tls": {"cert_file": cert, "key_file": key}}, wait=False)
    ctx = ssl.create_default_context(cafile=cert)

    def get(path, body=None):
        c = http.client.HTTPSConnection("127.0.0.1", g.port, context=ctx, timeout=5)
        try:
            if body is None:
                c.request("GET", path)
            else:
                c.request("POST", path, body=body, headers={"Content-Type": "application/json"})
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    h.wait_until(lambda: get("/healthz")[0] == 200, 5, what="TLS /healthz")
    st, body = get("/v1/decide", b'{"user":"tls-user","channel":"email","message_id":"m1"}')
    h.check(st == 200 and b'"allow"' in body, "decide over TLS: %s %r" % (st, body))
    with socket.create_connection(("127.0.0.1", g.port), timeout=3) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            data = s.recv(100)
        except OSError:
            data = b""
        h.check(not data.startswith(b"HTTP/1.1 200"), "plain HTTP answered on a TLS port")
    import shutil
    shutil.rmtree(d, ignore_errors=True)


def test_audit_streams_stay_about_their_length():
    # audit.max_entries bounds each tag's stream (max / 256 entries, "about":
    # Redis trims whole nodes).  Not every append asks for the trim (one in
    # eight, by the message's hash), but each trim drops all that is over,
    # so a long stream comes back to its length within a few appends.
    redis = h.start_redis()
    port = redis.port
    g = h.Gateway(overrides={"audit": {"max_entries": 25600}}, redis=redis)   # 100 a tag
    users = [h.uid() for _ in range(40)]
    for u in users:
        h.expect_status(g.decide(u, "push"), 200)
    streams = [k.decode() for k in h.redis_cmd(port, "KEYS", "cg:{*}:a")]
    h.check(len(streams) >= 20, "audit streams: %r" % streams)
    with h.rp.RedisConn(port) as c:
        for k in streams:
            c.sock.sendall(b"".join(h.rp.encode(("XADD", k, "*", "decide", "filler"))
                                    for _ in range(1000)))
            for _ in range(1000):
                h.rp.read(c.f)

    def lengths():
        return [h.redis_cmd(port, "XLEN", k) for k in streams]
    h.check(min(lengths()) > 1000, "filled: %r" % lengths())
    for _ in range(10):                       # ten more appends to each stream
        for u in users:
            h.expect_status(g.decide(u, "push"), 200)
    short = [n for n in lengths() if n <= 300]
    # Each stream had ten appends: one with no trim among them is 26 % likely.
    h.check(len(short) >= len(streams) // 3,
            "streams back near 100 entries: %d of %d (%r)" % (len(short), len(streams), lengths()))


def test_audit_file_copy():
    import json
    import tempfile
    import time
    d = tempfile.mkdtemp(prefix="capgate-audit-")
    path = os.path.join(d, "audit.jsonl")
    g = h.Gateway(overrides={"audit": {"file": path}})
    u = "file-audit-%s@example.com" % os.urandom(3).hex()
    g.decide(u, "email")
    g.decide(u, "email", dry_run=True)
    g.consent(u, "push", "*", "opt_out", source="app")
    event(g, u, "open")
    g.post("/v1/users/erase", {"user": u})

    def lines():
        with open(path) as f:
            return [json.loads(l) for l in f if l.strip()]
    h.wait_until(lambda: len(lines()) >= 4, 5, what="4 audit lines")
    got = lines()
    h.check([x["type"] for x in got] == ["decide", "consent", "signal", "erase"],
            "lines: %r" % got)
    h.check(all("ts" in x and re.fullmatch(r"[0-9a-f]{32}", x["pseudonym"]) for x in got), "fields")
    with open(path) as f:
        h.check(u not in f.read(), "raw id in the audit file")
    # log rotation: move the file away, reload, a new one is written
    os.rename(path, path + ".1")
    h.expect_status(g.post("/v1/admin/reload", b""), 200)
    g.decide(u, "push")
    h.wait_until(lambda: os.path.exists(path) and len(lines()) == 1, 5, what="a fresh file")
    import shutil
    shutil.rmtree(d, ignore_errors=True)


def test_status_page_with_auth_token_in_fragment():
    import shutil
    import tempfile
    chromium = shutil.which("chromium")
    h.check(chromium, "chromium is needed (make deps installs it)")
    g = h.Gateway(overrides=AUTH)
    g.post("/v1/decide", {"user": h.uid(), "channel": "email", "message_id": "m"},
           headers=bearer("send"))
    d = tempfile.mkdtemp(prefix="capgate-chromium-")
    try:
        url = "http://127.0.0.1:%d/status.html#token=%s" % (g.port, TOKENS["admin"])
        p = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                            "--no-first-run", "--disable-background-networking",
                            "--disable-component-update", "--disable-sync",
                            "--user-data-dir=" + d, "--virtual-time-budget=5000", "--dump-dom", url],
                           capture_output=True, timeout=60, start_new_session=True)
        dom = p.stdout.decode(errors="replace")
        m = re.search(r'data-updated="(\d+)"', dom)
        h.check(m and int(m.group(1)) >= 1, "the page polled /status with the token: %r" % dom[:300])
        h.check(TOKENS["admin"] not in dom, "the token stays out of the page")
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_newest_word_wins_inside_its_scope():
    g = h.Gateway()
    u = h.uid()
    g.consent(u, "email", "marketing", "opt_in")
    g.consent(u, "sms", "*", "opt_in")
    event(g, u, "complaint")
    for ch in ("email", "sms", "push"):
        h.expect_decision(g.decide(u, ch), "deny", "opted_out")
    h.expect_decision(g.decide(u, "email", category="transactional"), "allow", "ok")
    v = h.uid()
    g.consent(v, "email", "marketing", "opt_in")
    event(g, v, "unsubscribe", channel="email")
    h.expect_decision(g.decide(v, "email"), "deny", "opted_out")
    g.consent(v, "email", "marketing", "opt_in", source="re-subscribed")
    h.expect_decision(g.decide(v, "email"), "allow", "ok")


def test_reload_cannot_drop_auth_on_a_public_address():
    g = h.Gateway(overrides=dict(AUTH, listen="0.0.0.0:{port}"))
    cfg = h.render_config(None, {"listen": "0.0.0.0:{port}"})
    with open(g.config_path, "w") as f:
        f.write(h.fill(cfg, **g.values))
    r = g.post("/v1/admin/reload", b"", headers=bearer("admin"))
    h.expect_error(r, 400, "invalid_config")
    h.expect_error(g.get("/status"), 401, "unauthorized")


def test_privacy_retention_bounds_send_history():
    g = h.Gateway(overrides={"privacy": {"key_file": "{key_file}", "retention": "2d"},
                             "fatigue": {"unengaged_after": 5, "cap": {"limit": 1, "window": "7d"}}})
    g.decide(h.uid(), "email")
    for k in h.redis_dump(g.redis.port):
        key = k["key"].decode() if isinstance(k["key"], bytes) else k["key"]
        if ":s" in key or ":g" in key:
            h.check(0 < k["ttl"] <= 172800, "%s TTL %s beyond privacy.retention" % (key, k["ttl"]))


def test_send_history_outlives_its_newest_send_by_the_retention():
    # decide.lua renews a bucket's expiry only when a send would outlive it
    # (with slack: an eighth of this 2 s retention), not on every write.
    # Whatever it skips, the bucket must live the retention past its newest
    # send, never more than the slack beyond, and then go.
    g = h.Gateway(overrides={"idempotency_window": "1s", "caps": [
        {"name": "short", "limit": 100, "window": "2s", "on_exceed": "defer"}]})
    u = h.uid()
    retention, slack = 2000, 250

    def bucket():
        keys = h.redis_cmd(g.redis.port, "KEYS", "cg:*:s*")
        h.check(len(keys) == 1, "one sends bucket: %r" % keys)
        return keys[0]

    seen = []
    for pause in (0, 0.05, 0.5, 0.05, 0.4):
        time.sleep(pause)
        before = time.monotonic()
        r = g.decide(u, "email")
        h.check(r.status == 200 and r.body["decision"] == "allow", "allowed: %s" % (r.body,))
        pttl = h.redis_cmd(g.redis.port, "PTTL", bucket())
        since = (time.monotonic() - before) * 1000
        seen.append(pttl)
        h.check(pttl >= retention - since - 5,
                "bucket expires %d ms after a send made %.0f ms ago (retention %d): %r" %
                (pttl, since, retention, seen))
        h.check(pttl <= retention + slack, "bucket outlives its newest send by more than "
                "the slack: %d ms (%r)" % (pttl, seen))
    time.sleep((retention + slack + 300) / 1000)
    h.check(h.redis_cmd(g.redis.port, "KEYS", "cg:*:s*") == [],
            "the bucket is gone after the retention and the slack")


def test_shadow_hits_named_in_the_audit():
    g = h.Gateway(overrides={"caps": [
        {"name": "a-trial", "limit": 1, "window": "1d", "on_exceed": "defer", "mode": "shadow"},
        {"name": "b-trial", "limit": 1, "window": "1d", "on_exceed": "deny", "mode": "shadow"}]})
    u = h.uid()
    g.decide(u, "email")
    r = g.decide(u, "email")
    h.check(r.body["shadow"] == [{"rule": "a-trial", "would": "defer"},
                                 {"rule": "b-trial", "would": "deny"}], "%r" % (r.body,))
    a = [e for e in g.get("/v1/audit?limit=100").body["entries"] if e.get("shadow")]
    h.check(a and a[-1]["shadow"] == "a-trial:defer,b-trial:deny", "audit: %r" % a)


def test_audit_entries_leave_after_their_retention():
    # Decisions only append to the audit trail; a background trim drops
    # entries older than audit.retention, exactly, each tag when its oldest
    # entry comes of age (so an idle gateway makes next to no calls).  The
    # entries are written before the gateway starts (entries a gateway
    # writes are younger than its last look at the tag).
    redis = h.start_redis()
    port = redis.port
    key = "cg:{5a}:a"
    now_ms = int(time.time() * 1000)
    old_ms = now_ms - 2 * 3600 * 1000
    soon_ms = now_ms - 3600 * 1000 + 4000            # of age in 4 s
    h.redis_cmd(port, "XADD", key, "%d-0" % old_ms, "t", "decide", "p", "0" * 32)
    h.redis_cmd(port, "XADD", key, "%d-1" % old_ms, "t", "decide", "p", "0" * 32)
    h.redis_cmd(port, "XADD", key, "%d-0" % soon_ms, "t", "decide", "p", "2" * 32)
    fresh = h.redis_cmd(port, "XADD", key, "*", "t", "decide", "p", "1" * 32)
    if isinstance(fresh, bytes):
        fresh = fresh.decode()
    g = h.Gateway(overrides={"audit": {"retention": "1h"}}, redis=redis)

    def ids():
        return [e[0].decode() if isinstance(e[0], bytes) else e[0]
                for e in h.redis_cmd(port, "XRANGE", key, "-", "+")]
    h.wait_until(lambda: len(ids()) == 2, 10, what="the two old entries trimmed")
    h.check(ids() == ["%d-0" % soon_ms, fresh], "after the first trim: %r" % ids())
    h.wait_until(lambda: len(ids()) == 1, 10, what="the third entry trimmed when of age")
    late = time.time() * 1000 - (soon_ms + 3600 * 1000)
    print("    an entry left %.0f ms after its retention ended" % late)
    h.check(-100 < late < 1500, "left %.0f ms after its time" % late)
    h.check(ids() == [fresh], "after the sweep %s holds %r, expected only %r" % (key, ids(), fresh))
    # The gateway keeps deciding (and auditing) meanwhile.
    h.expect_status(g.decide(h.uid(), "email"), 200)

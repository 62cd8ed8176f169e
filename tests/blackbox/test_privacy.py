"""Privacy: raw user ids never reach Redis or the logs; key layout."""

import hashlib
import re
import signal
import time

import cluster as cl
import harness as h


def _activity(g, users):
    """A varied run of decides, consents and releases for USERS."""
    for i, u in enumerate(users):
        g.decide(u, "email", "m1", campaign="camp-%d" % i)
        g.decide(u, "email", "m1")                                   # replay
        g.decide(u, "email", "m2", campaign="camp-%d" % i)           # deny (campaign)
        g.decide(u, "email", "m3")
        g.decide(u, "email", "m4")                                   # defer (email-daily)
        g.decide(u, "push", "m5", tz="Europe/Paris")
        g.decide(u, "push", "m6", dry_run=True)
        g.decide(u, "sms", "m7")                                     # consent_required
        g.decide(u, "email", "m8", category="health")                # consent_required
        g.decide(u, "email", "m9", category="transactional")
        g.release(u, "m3")
        g.release(u, "never")
        g.consent(u, "*", "*", "opt_out", source="privacy-test")
        g.consent(u, "sms", "*", "opt_in")
        g.consent(u, "email", "marketing", "opt_in")
        g.consent(u, "*", "health", "opt_in")
        g.decide(u, "sms", "m10")
        g.decide(u, "push", "m11")                                   # opted_out
        g.decide(u, "email", "m12", category="health")
        # bad requests that carry the user id
        g.decide(u, "fax", "m13")
        g.post("/v1/decide", {"user": u, "channel": "email", "message_id": "m14", "bogus": u})
        g.post("/v1/consent", {"user": u, "channel": "email", "category": "*", "state": "x",
                               "source": "s"})


def _variants(u):
    """The raw id and a few unkeyed derivatives that would also identify it."""
    b = u.encode()
    out = {"raw": b, "lower": u.lower().encode(), "upper": u.upper().encode()}
    for name in ("sha256", "sha1", "md5"):
        out[name] = hashlib.new(name, b).hexdigest().encode()
    out["blake2b-16"] = hashlib.blake2b(b, digest_size=16).hexdigest().encode()
    out["blake2b-32"] = hashlib.blake2b(b, digest_size=32).hexdigest().encode()
    return out


def _find_leaks(dump, users):
    leaks = []
    for u in users:
        for what, needle in _variants(u).items():
            for e in dump:
                if needle in e["key"]:
                    leaks.append("%s of %r in key %r" % (what, u, e["key"]))
                for v in e["values"]:
                    if needle in v:
                        leaks.append("%s of %r in the value of key %r" % (what, u, e["key"]))
                        break
    return leaks


def _tag(key):
    k = key.decode(errors="replace")
    m = re.search(r"\{([^}]*)\}", k)
    return m.group(1) if m else None


def test_no_raw_user_ids_in_redis_or_logs():
    g = h.Gateway()
    users = [h.uid("privacy"), "Jane.Doe+capgate-%s@Example.COM" % h.mid(""), h.mid("42"),
             "\u00e9milie-%s@exemple.fr" % h.mid("")]
    _activity(g, users)
    st = g.get("/status")
    dump = g.redis.dump()
    h.check(dump, "no keys in Redis after the activity run")
    leaks = _find_leaks(dump, users)
    h.check(not leaks, "user ids found in Redis:\n  " + "\n  ".join(leaks[:20]))
    for u in users:
        h.check(u not in st.raw.decode(errors="replace"), "user id in /status", st)
    g.stop(signal.SIGTERM)
    logs = g.logs()
    for u in users:
        for what, needle in _variants(u).items():
            h.check(needle.decode() not in logs, "%s of user id %r found in the gateway's stderr" % (what, u))


def test_user_keys_share_one_hash_tag():
    g = h.Gateway()
    a = h.uid("privacy")
    _activity(g, [a])
    keys_a = set(g.redis.keys())
    tagged = [k for k in keys_a if b"{" in k]
    h.check(tagged, "no key has a hash tag {...}: %r" % sorted(keys_a)[:20])
    tags_a = {_tag(k) for k in tagged}
    h.check(len(tags_a) == 1, "one user's keys carry %d hash tags: %r" % (len(tags_a), sorted(tagged)))
    h.check(None not in tags_a and "" not in tags_a, "malformed hash tag in %r" % tagged)
    # The tag is two hex digits of the pseudonym (256 tags, enough to spread
    # over a cluster's masters), so two people share one 1 time in 256: try
    # people until one lands elsewhere; eight in a row sharing it (1 in 2^64)
    # means the tag does not follow the person.
    for _ in range(8):
        b = h.uid("privacy")
        before = set(g.redis.keys())
        _activity(g, [b])
        new = set(g.redis.keys()) - before
        tags_b = {_tag(k) for k in new if b"{" in k}
        h.check(len(tags_b) == 1, "another user's new keys carry %d hash tags: %r" % (len(tags_b), sorted(new)))
        if tags_b != tags_a:
            break
    h.check(tags_a != tags_b, "eight other users all share the hash tag %r" % tags_a)
    # every key carries the tag of one of the users seen, or none
    seen = {_tag(k) for k in g.redis.keys()}
    h.check(len(seen - {None}) <= 9, "more hash tags than users: %r" % sorted(t for t in seen if t))


def test_every_key_has_ttl_after_decides_only():
    g = h.Gateway()
    for i in range(4):
        u = h.uid("privacy")
        g.decide(u, "email", "m1", campaign="c")
        g.decide(u, "email", "m1")
        g.decide(u, "email", "m2", campaign="c")
        g.decide(u, "email", "m3")
        g.decide(u, "email", "m4")
        g.decide(u, "push", "m5", dry_run=True)
        g.decide(u, "push", "m6", category="transactional")
        g.decide(u, "sms", "m7")
        g.release(u, "m3")
        g.release(u, "m99")
    dump = g.redis.dump()
    h.check(dump, "no keys in Redis after decides")
    no_ttl = [(e["key"], e["ttl"]) for e in dump if not (isinstance(e["ttl"], int) and e["ttl"] > 0)]
    h.check(not no_ttl, "keys without a TTL after decides only: %r" % no_ttl[:20])
    # TTLs are bounded: the longest window (30d) plus generous slack
    too_long = [(e["key"], e["ttl"]) for e in dump if e["ttl"] > 60 * 86400]
    h.check(not too_long, "keys that outlive every window by far: %r" % too_long[:10])


def test_pseudonyms_depend_on_the_key_file():
    g1 = h.Gateway()
    redis = g1.redis
    u = h.uid("privacy")
    h.expect_decision(g1.decide(u, "email", "k1"), "allow", "ok")
    tags1 = {_tag(k) for k in redis.keys()} - {None}
    h.check(len(tags1) == 1, "expected one hash tag, got %r" % tags1)
    # same key file, another process: same pseudonym (the replay proves it too)
    g2 = h.Gateway(redis=redis, key_file=g1.key_file)
    h.expect_decision(g2.decide(u, "email", "k1"), "allow", "ok", replay=True)
    tags2 = {_tag(k) for k in redis.keys()} - {None}
    h.check(tags2 == tags1, "same key file gave another hash tag: %r vs %r" % (tags1, tags2))
    # another key: another pseudonym, no shared history
    g3 = h.Gateway(redis=redis)
    h.expect_decision(g3.decide(u, "email", "k1"), "allow", "ok", replay=False)
    # Two keys give two pseudonyms; their two-digit hash tags still meet 1
    # time in 256, so the tags are checked against the pseudonyms themselves.
    p1, p3 = cl.pseudonym(g1.key_file, u), cl.pseudonym(g3.key_file, u)
    h.check(p1 != p3, "two key files gave one pseudonym")
    h.check(tags1 == {p1[:len(t)] for t in tags1}, "hash tag %r is not from the pseudonym" % tags1)
    tags3 = {_tag(k) for k in redis.keys()} - {None}
    want = tags1 | {p3[:len(t)] for t in tags1}
    h.check(tags3 == want, "another key file should give the hash tags %r, got %r" % (want, tags3))


class _EchoingServer:
    """A TCP server that answers every RESP command the way a server that
    does not know it does: "-ERR unknown command 'X', with args beginning
    with: 'arg1' ..." -- an error text that carries the command's arguments,
    AUTH's password among them."""

    def __init__(self):
        import socket
        import threading
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        import threading
        while not self.stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._client, args=(c,), daemon=True).start()

    def _client(self, c):
        buf = b""
        with c:
            while True:
                try:
                    data = c.recv(4096)
                except OSError:
                    return
                if not data:
                    return
                buf += data
                while True:   # one complete *N array of $len bulk strings
                    parts, rest = self._parse(buf)
                    if parts is None:
                        break
                    buf = rest
                    args = " ".join("'%s'" % p for p in parts[1:])
                    c.sendall(("-ERR unknown command '%s', with args beginning with: %s\r\n"
                               % (parts[0], args)).encode())

    @staticmethod
    def _parse(buf):
        if not buf.startswith(b"*") or b"\r\n" not in buf:
            return None, buf
        head, rest = buf.split(b"\r\n", 1)
        parts = []
        for _ in range(int(head[1:])):
            if b"\r\n" not in rest:
                return None, buf
            ln, rest = rest.split(b"\r\n", 1)
            n = int(ln[1:])
            if len(rest) < n + 2:
                return None, buf
            parts.append(rest[:n].decode("utf-8", "replace"))
            rest = rest[n + 2:]
        return parts, rest

    def close(self):
        self.stop = True
        self.sock.close()


def test_a_server_that_echoes_auth_never_puts_the_password_in_the_log():
    # A Redis-speaking server that does not know AUTH (or a proxy in front of
    # one) echoes its arguments in the error; capgate logs the handshake
    # failure, and before this fix logged that text whole.
    srv = _EchoingServer()
    pw = "pw-echo-%d" % time.time_ns()
    try:
        g = h.Gateway(overrides={"redis": {"url": "redis://:%s@127.0.0.1:%d/0" % (pw, srv.port),
                                           "timeout_ms": 250,
                                           "on_unavailable": "reject"}}, redis=srv)
        h.wait_until(lambda: 'msg="redis handshake failed"' in g.logs(), 10,
                     what="the handshake failure logged")
        h.check(g.get("/readyz").status == 503, "not ready")
        logs = g.logs()
        h.check("step=auth" in logs, "the failing step named")
        h.check(pw not in logs, "the password echoed by the server is in the log")
        g.stop()
    finally:
        srv.close()

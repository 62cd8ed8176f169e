"""Request validation of /v1/decide, /v1/release and /v1/consent.

Every bad request must answer the documented error, must not echo the raw
user id, and must not change anything in Redis."""

import json

import harness as h


# Quiet hours configured (on sms only, which these tests do not decide on) so
# that the zone database is surely loaded and `tz` is validated against it.
CONFIG = h.merge(h.DEFAULT_CONFIG, {"quiet_hours": {
    "start": "21:00", "end": "08:00", "default_tz": "UTC", "channels": ["sms"],
    "zoneinfo_dir": "/usr/share/zoneinfo"}})


def gw():
    return h.shared_gateway(config=CONFIG)


def _snapshot(g):
    # Not the campaign names' dictionary (cg:{n}:names): the gateway writes
    # the names of accepted decisions there in the background, up to a
    # second later, so an earlier test's campaign may land in it while a
    # rejected request is under way.  A rejected request never reaches a
    # decision, which is what names a campaign.
    return sorted((e["key"], e["type"], tuple(e["values"])) for e in g.redis.dump()
                  if not e["key"].endswith(b":names"))


def _bad(path, body, status, code, field=None, forbidden=()):
    g = gw()
    before = _snapshot(g)
    r = g.post(path, body)
    h.expect_error(r, status, code, field=field, forbidden=forbidden)
    after = _snapshot(g)
    if before != after:
        added = sorted(set(after) - set(before))
        removed = sorted(set(before) - set(after))
        h.fail("a rejected request changed Redis: added %r removed %r" % (added[:5], removed[:5]), r)
    return r


def _decide_body(**kw):
    b = {"user": h.uid("val"), "channel": "email", "message_id": h.mid()}
    for k, v in kw.items():
        if v is _DEL:
            b.pop(k, None)
        else:
            b[k] = v
    return b


_DEL = object()


# ---------------------------------------------------------------- decide

def test_decide_invalid_json():
    for body in [b"", b"not json", b"{", b'{"user": "a",}', b"[1, 2]", b"null", b'"user"', b"42",
                 b'{"user": "a"} trailing', b"\xff\xfe{}"]:
        _bad("/v1/decide", body, 400, "invalid_json")


def test_decide_missing_fields():
    for f in ("user", "channel", "message_id"):
        b = _decide_body(**{f: _DEL})
        _bad("/v1/decide", b, 400, "missing_field", field=f, forbidden=[b.get("user", "\0")])


def test_decide_wrong_types():
    cases = [("user", 123), ("user", None), ("user", ["x"]), ("channel", 5), ("channel", None),
             ("message_id", []), ("message_id", 7), ("category", 1), ("campaign", {}),
             ("tz", 5), ("dry_run", "yes"), ("dry_run", 1)]
    for f, v in cases:
        b = _decide_body(**{f: v})
        g = gw()
        before = _snapshot(g)
        r = g.post("/v1/decide", b)
        if v is None and f in ("user", "channel"):
            # null for a required field: missing_field or invalid_field are both fair.
            h.expect_status(r, 400)
            code = (r.body.get("error") or {}).get("code") if isinstance(r.body, dict) else None
            h.check(code in ("invalid_field", "missing_field"),
                    "null %s: expected invalid_field or missing_field, got %r" % (f, code), r)
            h.check(r.body["error"].get("field") == f, "error.field should be %r" % f, r)
        else:
            h.expect_error(r, 400, "invalid_field", field=f, forbidden=[str(b.get("user"))])
        h.check(_snapshot(g) == before, "a rejected request changed Redis (%s=%r)" % (f, v), r)


def test_decide_unknown_field():
    for f in ("foo", "User", "priority"):
        b = _decide_body(**{f: "x"})
        _bad("/v1/decide", b, 400, "invalid_field", field=f, forbidden=[b["user"]])


def test_decide_string_lengths():
    g = gw()
    # user: 1..256 bytes (UTF-8 bytes, not characters)
    ok = [("user", "u" * 256), ("user", "\u00e9" * 128), ("user", "x"),
          ("message_id", "m" * 128), ("message_id", "z"),
          ("campaign", "c" * 256), ("campaign", "c")]
    for f, v in ok:
        r = g.decide(**_decide_body(**{f: v}))
        h.check(r.status == 200, "%s of %d bytes must be accepted" % (f, len(v.encode())), r)
    bad = [("user", ""), ("user", "u" * 257), ("user", "\u00e9" * 129),
           ("message_id", ""), ("message_id", "m" * 129),
           ("campaign", ""), ("campaign", "c" * 257)]
    for f, v in bad:
        b = _decide_body(**{f: v})
        forbidden = [b["user"]] if len(b["user"]) > 1 else []
        _bad("/v1/decide", b, 400, "invalid_field", field=f, forbidden=forbidden)


def test_decide_unknown_channel_and_category():
    b = _decide_body(channel="fax")
    _bad("/v1/decide", b, 400, "unknown_channel", forbidden=[b["user"]])
    b = _decide_body(category="gossip")
    _bad("/v1/decide", b, 400, "unknown_category", forbidden=[b["user"]])
    b = _decide_body(channel="*")
    _bad("/v1/decide", b, 400, "unknown_channel", forbidden=[b["user"]])
    b = _decide_body(category="*")
    _bad("/v1/decide", b, 400, "unknown_category", forbidden=[b["user"]])


def test_decide_unknown_tz():
    for tz in ("Mars/Olympus_Mons", "../../../etc/passwd", "", "utc/../UTC", "Europe/", "/UTC"):
        b = _decide_body(channel="push", tz=tz)
        _bad("/v1/decide", b, 400, "invalid_field", field="tz", forbidden=[b["user"]])


def test_decide_known_tz_accepted():
    g = gw()
    for tz in ("UTC", "Europe/Paris", "America/New_York", "Etc/GMT-5", "Asia/Kolkata"):
        r = g.decide(**_decide_body(channel="push", tz=tz))
        h.check(r.status == 200, "tz %r must be accepted" % tz, r)


def test_decide_user_id_not_in_error_messages():
    user = h.uid("secret")
    for body in [{"user": user, "channel": "fax", "message_id": "m"},
                 {"user": user, "channel": "email"},
                 {"user": user, "channel": "email", "message_id": "m", "extra": user},
                 {"user": user, "channel": "email", "message_id": "m", "tz": "No/Where"},
                 {"user": user + "x" * 300, "channel": "email", "message_id": "m"}]:
        r = gw().post("/v1/decide", body)
        h.expect_status(r, 400)
        h.check(user not in r.raw.decode(errors="replace"), "error answer contains the user id", r)


# ---------------------------------------------------------------- release

def test_release_validation():
    u = h.uid("val")
    _bad("/v1/release", b"nope", 400, "invalid_json")
    _bad("/v1/release", b"[]", 400, "invalid_json")
    _bad("/v1/release", {"message_id": "m"}, 400, "missing_field", field="user")
    _bad("/v1/release", {"user": u}, 400, "missing_field", field="message_id", forbidden=[u])
    _bad("/v1/release", {"user": 5, "message_id": "m"}, 400, "invalid_field", field="user")
    _bad("/v1/release", {"user": u, "message_id": 5}, 400, "invalid_field", field="message_id",
         forbidden=[u])
    _bad("/v1/release", {"user": u, "message_id": "m" * 129}, 400, "invalid_field",
         field="message_id", forbidden=[u])
    _bad("/v1/release", {"user": "", "message_id": "m"}, 400, "invalid_field", field="user")
    _bad("/v1/release", {"user": u, "message_id": "m", "channel": "email"}, 400, "invalid_field",
         field="channel", forbidden=[u])


def test_release_unknown_is_false():
    g = gw()
    before = _snapshot(g)
    r = g.release(h.uid("val"), "never-sent")
    h.expect_status(r, 200)
    h.expect_json_content_type(r)
    h.check(r.body == {"released": False}, "expected {\"released\": false}", r)
    h.check(_snapshot(g) == before, "releasing an unknown message changed Redis", r)


# ---------------------------------------------------------------- consent

def _consent_body(**kw):
    b = {"user": h.uid("val"), "channel": "email", "category": "marketing", "state": "opt_out",
         "source": "unit-test"}
    for k, v in kw.items():
        if v is _DEL:
            b.pop(k, None)
        else:
            b[k] = v
    return b


def test_consent_validation():
    _bad("/v1/consent", b"{bad", 400, "invalid_json")
    _bad("/v1/consent", b'"x"', 400, "invalid_json")
    for f in ("user", "channel", "category", "state", "source"):
        b = _consent_body(**{f: _DEL})
        _bad("/v1/consent", b, 400, "missing_field", field=f, forbidden=[b.get("user", "\0")])
    for f, v in [("state", "maybe"), ("state", "OPT_IN"), ("state", 1), ("source", ""),
                 ("source", "s" * 129), ("source", 7), ("user", ""), ("user", "u" * 257),
                 ("user", 9), ("channel", 3), ("category", False), ("bogus", "x")]:
        b = _consent_body(**{f: v})
        forbidden = [b["user"]] if isinstance(b["user"], str) and len(b["user"]) > 1 else []
        _bad("/v1/consent", b, 400, "invalid_field", field=f, forbidden=forbidden)
    b = _consent_body(channel="fax")
    _bad("/v1/consent", b, 400, "unknown_channel", forbidden=[b["user"]])
    b = _consent_body(category="gossip")
    _bad("/v1/consent", b, 400, "unknown_category", forbidden=[b["user"]])


def test_consent_source_lengths_accepted():
    g = gw()
    for src in ("s", "s" * 128):
        r = g.post("/v1/consent", _consent_body(source=src))
        h.expect_status(r, 200)
        h.check(r.body.get("source") == src, "source not echoed", r)


def test_no_redis_change_for_any_bad_request():
    """The whole zoo once more, comparing the keys before and after (but the
    campaign names' dictionary: see _snapshot)."""
    g = gw()

    def keys():
        return [key for key, _, _ in _snapshot(g)]
    k0 = keys()
    u = h.uid("val")
    bodies = [("/v1/decide", {"user": u, "channel": "fax", "message_id": "a"}),
              ("/v1/decide", {"user": u, "channel": "email", "message_id": "a", "x": 1}),
              ("/v1/decide", {"user": u, "channel": "email", "message_id": "a", "tz": "Nope/Nope"}),
              ("/v1/decide", {"user": u, "channel": "email", "message_id": "a", "category": "nope"}),
              ("/v1/decide", {"user": u, "channel": "email", "message_id": "a", "dry_run": "no"}),
              ("/v1/consent", {"user": u, "channel": "email", "category": "*", "state": "opt_in"}),
              ("/v1/consent", {"user": u, "channel": "email", "category": "*", "state": "x",
                               "source": "t"}),
              ("/v1/release", {"user": u})]
    for path, b in bodies:
        r = g.post(path, json.dumps(b).encode())
        h.expect_status(r, 400)
    k1 = keys()
    h.check(k1 == k0, "keys changed after bad requests: added %r, removed %r"
            % (sorted(set(k1) - set(k0))[:5], sorted(set(k0) - set(k1))[:5]))
    h.check(not any(u.encode() in e["key"] for e in g.redis.dump()), "raw user id in a key")


# -- control characters (issue 12.6) -----------------------------------------

def test_control_characters_in_identifiers_are_refused():
    """A CR/LF in message_id, campaign, collapse_key or a route's extracted
    values would reach an upstream's headers or a log: 400, nothing changes."""
    _bad("/v1/decide", _decide_body(message_id="m-1\r\nX-Evil: 1"), 400, "invalid_field",
         field="message_id")
    _bad("/v1/decide", _decide_body(campaign="spring\n"), 400, "invalid_field", field="campaign")
    _bad("/v1/decide", _decide_body(message_id="m\u0000"), 400, "invalid_json")   # jansson: no NUL
    _bad("/v1/release", {"user": h.uid(), "message_id": "r\r1"}, 400, "invalid_field",
         field="message_id")
    _bad("/v1/consent", {"user": h.uid(), "channel": "email", "category": "*", "state": "opt_in",
                         "source": "form\r\nx"}, 400, "invalid_field", field="source")
    # A tab or DEL is a control character too; ordinary UTF-8 is not.
    _bad("/v1/decide", _decide_body(campaign="a\tb"), 400, "invalid_field", field="campaign")
    _bad("/v1/decide", _decide_body(campaign="a\u007fb"), 400, "invalid_field", field="campaign")
    # A raw DEL byte in a body the fast reader takes (found by fuzz_request).
    _bad("/v1/decide", b'{"user":"carol","channel":"email","message_id":"m\x7f1"}', 400,
         "invalid_field", field="message_id")
    h.expect_decision(gw().post("/v1/decide", _decide_body(campaign="Frühling – 2027")), "allow")


def test_control_characters_on_proxy_roads_are_refused():
    from upstream_server import FakeUpstream
    up = FakeUpstream().start()
    routes = [{"path": "/v3/mail/send", "channel": "email",
               "user": "json:/personalizations/0/to/0/email",
               "message_id": "json:/custom_args/id", "campaign": "json:/categories/0"}]
    g = h.Gateway(overrides={"channels": {"email": {"upstream": {"url": up.url + "/send"}},
                                          "push": {}, "sms": {}},
                             "routes": routes, "caps": []})
    u = h.uid()
    r = g.post("/v1/send", {"user": u, "channel": "email", "message_id": "s\r\n1",
                            "payload": {"to": u}})
    h.expect_error(r, 400, "invalid_field", field="message_id")
    r = g.post("/v1/send", {"user": u, "channel": "email", "message_id": "s-2",
                            "collapse_key": "k\n", "payload": {"to": u}})
    h.expect_error(r, 400, "invalid_field", field="collapse_key")

    def mail(mid, campaign="c"):
        return json.dumps({"personalizations": [{"to": [{"email": u}]}],
                           "custom_args": {"id": mid}, "categories": [campaign]}).encode()
    hdr = {"Content-Type": "application/json"}
    h.expect_error(g.post("/v3/mail/send", mail("r\r\n1"), headers=hdr), 400, "invalid_field",
                   field="message_id")
    h.expect_error(g.post("/v3/mail/send", mail("r-2", "x\ny"), headers=hdr), 400,
                   "invalid_field", field="campaign")
    h.check(up.requests == [], "nothing forwarded: %r" % up.requests)
    h.expect_status(g.post("/v3/mail/send", mail("r-3"), headers=hdr), 200)

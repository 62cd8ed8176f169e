"""Consent receipts and history (issue 16): every consent change, from any
source, is a receipt shaped after ISO/IEC TS 27560 kept in the person's
history; /v1/users/show lists it, /v1/users/export hands it over, erase
removes it, a key rotation moves it.  Real Redis, real HTTP; every answer is
checked against docs/openapi.yaml."""

import os
import re
import time
import urllib.parse

import cluster as cl
import harness as h
import openapi_check as oc
import test_unsubscribe as tu

FIELDS = {"record_id", "principal", "controller", "channel", "purpose", "legal_basis", "notice",
          "method", "state", "consent_state", "at", "schema"}
PER_SCOPE = 20            # DECISION_HISTORY_PER_SCOPE
DAY_MS = 86400000

_spec = []


def spec():
    if not _spec:
        _spec.append(oc.load_spec(os.path.join(h.REPO, "docs", "openapi.yaml")))
    return _spec[0]


def documented(r, path, method="post"):
    errs = oc.check_response(spec(), path, method, r.status, r.header("Content-Type"), r.body,
                             r.headers)
    h.check(not errs, "answer does not match docs/openapi.yaml:\n    " + "\n    ".join(errs), r)


def post(g, path, body, status=200):
    r = g.post(path, body)
    h.expect_status(r, status)
    documented(r, path)
    return r


def consent(g, user, channel="email", category="marketing", state="opt_in", source="signup",
            **extra):
    return post(g, "/v1/consent", dict({"user": user, "channel": channel, "category": category,
                                        "state": state, "source": source}, **extra)).body


def history(g, user):
    return post(g, "/v1/users/show", {"user": user}).body["consent_history"]


def gateway():
    """A gateway whose receipts name a controller."""
    return h.shared_gateway("receipts", overrides={"privacy": {"key_file": "{key_file}",
                                                               "controller": "Example Ltd"}})


def history_key(g, user):
    p = cl.pseudonym(g.key_file, user)
    return "cg:{%s}:h:%s" % (p[:2], p), p


def test_a_receipt_carries_every_field():
    g = gateway()
    u = h.uid("rc")
    before = time.time()
    b = consent(g, u, notice="privacy-v3", legal_basis="soft_opt_in")
    rc = b["receipt"]
    h.check(set(rc) == FIELDS, "receipt fields: %s" % sorted(rc))
    p = cl.pseudonym(g.key_file, u)
    h.check(re.fullmatch(r"[0-9a-f]{32}", rc["record_id"]) and rc["principal"] == p
            and rc["controller"] == "Example Ltd" and rc["channel"] == "email"
            and rc["purpose"] == "marketing" and rc["legal_basis"] == "soft_opt_in"
            and rc["notice"] == "privacy-v3" and rc["method"] == "api:signup"
            and rc["state"] == "given" and rc["consent_state"] == "opt_in"
            and rc["schema"] == "ISO/IEC TS 27560:2023 (shaped after)", "receipt: %r" % rc)
    h.check(rc["at"] == b["updated_at"], "the receipt's time is the record's (Redis's)")
    at = time.mktime(time.strptime(rc["at"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    h.check(abs(at - before) < 5, "at %s is not now" % rc["at"])
    # The old fields are all still there, unchanged.
    h.check(b["state"] == "opt_in" and b["source"] == "signup", "the record: %r" % b)
    # A withdrawal without a basis withdraws what the scope was given under.
    rc2 = consent(g, u, state="opt_out", source="settings")["receipt"]
    h.check(rc2["state"] == "withdrawn" and rc2["legal_basis"] == "soft_opt_in"
            and rc2["notice"] is None and rc2["record_id"] != rc["record_id"], "%r" % rc2)
    # A scope never given: the basis is consent.
    h.check(consent(g, u, "sms", "*")["receipt"]["legal_basis"] == "consent", "default basis")
    # Without privacy.controller nor public.organisation: null.
    plain = h.shared_gateway()
    h.check(consent(plain, h.uid("rc"))["receipt"]["controller"] is None, "no controller")


def test_notice_and_legal_basis_round_trip_and_bad_ones_change_nothing():
    g = gateway()
    u = h.uid("rc")
    consent(g, u, notice="terms/2026-01 \u00e9dition", legal_basis="contract")
    for bad, field in (({"legal_basis": "vital_interest"}, "legal_basis"),
                       ({"legal_basis": "CONSENT"}, "legal_basis"),
                       ({"legal_basis": 1}, "legal_basis"),
                       ({"notice": "x" * 129}, "notice"),
                       ({"notice": "\u00e9" * 129}, "notice"),
                       ({"notice": "v1\u0007"}, "notice"),
                       ({"notice": "v1\r\nX: y"}, "notice"),
                       ({"notice": ""}, "notice"),
                       ({"notice": ["v1"]}, "notice")):
        r = g.post("/v1/consent", dict({"user": u, "channel": "email", "category": "marketing",
                                        "state": "opt_out", "source": "s"}, **bad))
        h.expect_error(r, 400, "invalid_field", field=field, forbidden=[u])
        documented(r, "/v1/consent")
    consent(g, u, "push", "*", notice="\u00e9" * 128)
    hist = history(g, u)
    h.check([(x["channel"], x["notice"], x["legal_basis"], x["state"]) for x in hist] ==
            [("email", "terms/2026-01 \u00e9dition", "contract", "given"),
             ("push", "\u00e9" * 128, "consent", "given")],
            "nothing refused was recorded; the fields round-trip: %r" % hist)
    h.expect_decision(g.decide(u, "email"), "allow", "ok")


def test_every_source_appears_in_the_history_with_its_method():
    redis = h.start_redis()
    g, = tu.public_gateways(redis=redis)
    u = h.uid("rc-src")
    # Back to back, as fast as they come: the history keeps the order they
    # were made in (see test_changes_in_one_millisecond_keep_their_order).
    tick = lambda: None  # noqa: E731
    consent(g, u, "sms", "*", source="shop")
    tick()
    post(g, "/v1/events", {"user": u, "type": "unsubscribe", "channel": "push"})
    tick()
    b = post(g, "/v1/events", {"user": u, "type": "inbound_sms", "text": "STOP"}).body
    tick()
    h.check(b["receipt"]["method"] == "sms-keyword" and b["receipt"]["state"] == "withdrawn"
            and b["receipt"]["channel"] == "sms", "a STOP's receipt: %r" % b)
    b = post(g, "/v1/events", {"user": u, "type": "inbound_sms", "text": "START"}).body
    h.check(b["receipt"]["consent_state"] == "opt_in", "a START's receipt: %r" % b)
    tick()
    # HELP and a bounce are no consent change: no receipt.
    b = post(g, "/v1/events", {"user": u, "type": "inbound_sms", "text": "HELP"}).body
    h.check("receipt" not in b, "HELP has a receipt: %r" % b)
    b = post(g, "/v1/events", {"user": u, "type": "hard_bounce", "channel": "email"}).body
    h.check("receipt" not in b, "a bounce has a receipt: %r" % b)
    url = tu.link(g, u, "email", "marketing")
    h.expect_status(tu.one_click(g, url), 200)
    tick()
    # The preference page: opt in to health e-mail.
    path = urllib.parse.urlsplit(tu.link(g, u, None, None)).path
    page = tu.html(tu.public(g, "GET", path))
    ch = tu._choices(page)
    ch["email.health"] = True
    h.expect_status(tu.public(g, "POST", path, tu._form(page, ch)), 200)
    tick()
    b = post(g, "/v1/events", {"user": u, "type": "complaint"}).body
    h.check(b["receipt"]["method"] == "complaint" and b["receipt"]["channel"] == "*"
            and b["receipt"]["purpose"] == "*", "a complaint's receipt: %r" % b)
    hist = history(g, u)
    methods = [(x["method"], x["channel"], x["purpose"], x["consent_state"]) for x in hist]
    h.check(methods == [("api:shop", "sms", "*", "opt_in"),
                        ("unsubscribe", "push", "*", "opt_out"),
                        ("sms-keyword", "sms", "*", "opt_out"),
                        ("sms-keyword", "sms", "*", "opt_in"),
                        ("one-click", "email", "marketing", "opt_out"),
                        ("preference-page", "email", "health", "opt_in"),
                        ("complaint", "*", "*", "opt_out")], "the history: %r" % methods)
    h.check(all(set(x) == FIELDS and x["controller"] == "Example Shop & Co" for x in hist),
            "every entry is a whole receipt, the controller public.organisation")
    h.check(len({x["record_id"] for x in hist}) == len(hist), "record ids are unique")
    # Stable: asked again, the same receipts.
    h.check(history(g, u) == hist, "the receipts changed between two reads")
    # No raw id anywhere in Redis.
    for e in redis.dump():
        h.check(u.encode() not in e["key"] and not any(u.encode() in v for v in e["values"]),
                "the raw id is in Redis: %r" % e["key"])


def test_changes_in_one_millisecond_keep_their_order():
    """The history is read back oldest first across scopes.  Before, two
    changes of different scopes in one millisecond came back in scope
    order ("push|*" before "sms|*"), not in the order they were made; now
    a change is timed after every earlier one of the person's.  Made
    certain here with an earlier change that Redis's clock has not reached
    yet (as after a failover to a Redis whose clock is behind)."""
    g = gateway()
    u = h.uid("rc-ms")
    consent(g, u, "email", "marketing", source="shop")
    key, _ = history_key(g, u)
    ahead = int(time.time() * 1000) + 3000
    # A change of scope "sms|*", 3 s ahead of Redis's clock.
    g.redis.cmd("EVAL", "redis.call('HSET', KEYS[1], 'sms|*', cmsgpack.pack({{ARGV[1], "
                "tonumber(ARGV[2]), 'in', 'api:ahead', 'consent', '', ''}})) return 1", 1, key,
                "0" * 32, str(ahead))
    b = post(g, "/v1/events", {"user": u, "type": "unsubscribe", "channel": "push"}).body
    methods = [x["method"] for x in history(g, u)]
    h.check(methods == ["api:shop", "api:ahead", "unsubscribe"],
            "the history in the order made: %r" % methods)
    at = b["receipt"]["at"]
    h.check(at >= time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ahead / 1000.0)),
            "the receipt tells the change's time in the history: %r" % at)


def test_the_history_is_bounded_per_scope():
    g = gateway()
    u = h.uid("rc-bound")
    ids = []
    for k in range(PER_SCOPE + 5):
        ids.append(consent(g, u, state="opt_out" if k % 2 else "opt_in",
                           notice="v%d" % k)["receipt"]["record_id"])
    consent(g, u, "sms", "*")
    hist = history(g, u)
    email = [x for x in hist if x["channel"] == "email"]
    h.check(len(email) == PER_SCOPE and [x["record_id"] for x in email] == ids[-PER_SCOPE:],
            "the last %d of the scope, in order: got %d" % (PER_SCOPE, len(email)))
    h.check([x["notice"] for x in email][-1] == "v%d" % (PER_SCOPE + 4), "newest last")
    h.check(len([x for x in hist if x["channel"] == "sms"]) == 1, "another scope is its own")
    # decide still follows the newest record.
    h.expect_decision(g.decide(u, "email"), "allow", "ok")


def _age_history(g, key, ms):
    """Moves every entry of the history KEY MS into the past (as if written then)."""
    g.redis.cmd("EVAL", """
        for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
          local l = cmsgpack.unpack(redis.call('HGET', KEYS[1], f))
          for _, e in ipairs(l) do e[2] = e[2] - tonumber(ARGV[1]) end
          redis.call('HSET', KEYS[1], f, cmsgpack.pack(l))
        end
        return 0""", 1, key, str(ms))


def test_retention_drops_old_changes_but_keeps_the_proof_of_an_opt_out_in_force():
    g = gateway()
    u = h.uid("rc-ret")
    key, _ = history_key(g, u)
    consent(g, u, "email", "marketing", "opt_in")
    consent(g, u, "email", "marketing", "opt_out", source="settings")
    consent(g, u, "push", "*", "opt_in")
    consent(g, u, "push", "*", "opt_out")
    consent(g, u, "push", "*", "opt_in")
    h.check(g.redis.cmd("TTL", key) == -1, "an opt-out in force: the history has no TTL")
    _age_history(g, key, 401 * DAY_MS)        # past privacy.retention (400d)
    # Past the retention they are not shown, but the proof of the opt-out.
    hist = history(g, u)
    h.check([(x["channel"], x["state"]) for x in hist] == [("email", "withdrawn")],
            "only the proof is left: %r" % hist)
    # The next write trims them in Redis too.
    consent(g, u, "sms", "*", "opt_in")
    hist = history(g, u)
    h.check([(x["channel"], x["state"]) for x in hist] == [("email", "withdrawn"), ("sms", "given")],
            "after a write: %r" % hist)
    h.check(sorted(g.redis.cmd("HKEYS", key)) == [b"email|marketing", b"sms|*"],
            "push's old changes are gone from Redis")
    # Once the opt-out is no longer in force, it may expire like the rest.
    consent(g, u, "email", "*", "opt_in")
    ttl = g.redis.cmd("TTL", key)
    h.check(399 * 86400 < ttl <= 400 * 86400, "no opt-out in force: TTL of the retention, %r" % ttl)
    h.expect_decision(g.decide(u, "email"), "allow", "ok")


def test_erase_removes_the_history():
    g = gateway()
    u = h.uid("rc-erase")
    key, p = history_key(g, u)
    consent(g, u, "email", "*", "opt_in")
    consent(g, u, "email", "*", "opt_out")
    r = post(g, "/v1/users/erase", {"user": u})
    h.check(r.body["removed"]["consent_history"] == 2 and r.body["suppression_kept"],
            "erase: %r" % r.body)
    h.check(g.redis.cmd("EXISTS", key) == 0, "the history key is left after erase")
    h.check(history(g, u) == [], "show still lists receipts")
    h.expect_decision(g.decide(u, "email"), "deny", "opted_out")
    r = post(g, "/v1/users/erase", {"user": u})
    h.check(r.body["removed"]["consent_history"] == 0, "erasing again removed history")


def test_export_round_trips_with_show():
    g = gateway()
    u = h.uid("rc-export")
    consent(g, u, "email", "marketing", "opt_in", notice="n1", legal_basis="consent")
    consent(g, u, "sms", "*", "opt_out", source="call-centre")
    post(g, "/v1/events", {"user": u, "type": "hard_bounce", "channel": "push"})
    show = post(g, "/v1/users/show", {"user": u}).body
    r = post(g, "/v1/users/export", {"user": u})
    d = r.body
    h.check(r.header("Content-Disposition") ==
            'attachment; filename="capgate-export-%s.json"' % show["pseudonym"][:12],
            "Content-Disposition: %r" % r.header("Content-Disposition"), r)
    h.check(d["format"] == "capgate-export/1" and d["principal"] == show["pseudonym"]
            and d["controller"] == "Example Ltd", "the document: %r" % d)
    h.check(d["receipts"] == show["consent_history"], "export's receipts are show's history")
    h.check(d["preferences"] == show["consent"], "export's preferences are the current state")
    h.check(len(d["preferences"]) == 2, "a bounce is no preference: %r" % d["preferences"])
    # The document validates against its documented schema, on its own.
    errs = oc.validate(spec(), {"$ref": "#/components/schemas/UserExport"}, d)
    h.check(not errs, "the export does not validate: %s" % errs)
    h.check(u not in r.raw.decode(), "the export holds the raw id", r)


def test_rotation_moves_the_history():
    ga = h.Gateway()
    u = h.uid("rc-rot")
    first = consent(ga, u, "email", "*", "opt_in", notice="n1")["receipt"]
    consent(ga, u, "email", "*", "opt_out")
    key_a, _ = history_key(ga, u)
    old = history(ga, u)
    ga.stop()
    d = h.mkdtemp("capgate-rot-")
    key_b = h.write_key_file(d)
    gb = h.Gateway(redis=ga.redis, key_file=key_b,
                   overrides={"privacy": {"key_file": "{key_file}", "previous_key_file": ga.key_file}})
    consent(gb, u, "sms", "*", "opt_in")
    key_b_h, pb = history_key(gb, u)
    hist = history(gb, u)
    h.check([x["record_id"] for x in hist[:2]] == [x["record_id"] for x in old]
            and hist[0]["record_id"] == first["record_id"] and len(hist) == 3,
            "the history moved with its record ids: %r" % hist)
    h.check(all(x["principal"] == pb for x in hist), "receipts name the new pseudonym")
    h.check(ga.redis.cmd("EXISTS", key_a) == 0, "the old history key is left")
    h.check(ga.redis.cmd("TTL", key_b_h) == -1, "the opt-out's proof moved without a TTL")
    h.expect_decision(gb.decide(u, "email", "r1"), "deny", "opted_out")
    # Moving again (a second request) changes nothing.
    h.check(history(gb, u) == hist, "a second read differs")
    h.check(post(gb, "/v1/users/export", {"user": u}).body["receipts"] == hist, "export after rotation")

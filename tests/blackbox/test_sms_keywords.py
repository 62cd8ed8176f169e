"""SMS keywords (issue 16, "close the unsubscribe loop"): a text a person
sent, POST /v1/events {"type": "inbound_sms", "user", "text"}, read for the
carriers' standard keywords.  STOP and its synonyms opt the person out of
SMS for every category, START / UNSTOP opt them in again (consent source
sms-keyword), HELP / INFO and anything else change nothing.  Every gateway
sharing the Redis honours it at the next decision; the text is never
logged, stored in Redis or echoed."""

import os

import harness as h
import openapi_check as oc

P = "/v1/events"
STOP_WORDS = ["STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT",
              "OPT OUT"]

_spec = []


def documented(r, path=P, method="post"):
    """R must be an answer docs/openapi.yaml describes."""
    if not _spec:
        _spec.append(oc.load_spec(os.path.join(h.REPO, "docs", "openapi.yaml")))
    errs = oc.check_response(_spec[0], path, method, r.status, r.header("Content-Type"),
                             r.body, r.headers)
    h.check(not errs, "answer does not match docs/openapi.yaml:\n    " + "\n    ".join(errs), r)


def sms(g, u, text, **kw):
    """The answer to an inbound SMS, checked against the spec."""
    r = g.post(P, dict({"user": u, "type": "inbound_sms", "text": text}, **kw))
    h.expect_status(r, 200)
    documented(r)
    return r.body


def expect_read(body, recognised, recorded, channel="sms"):
    h.check(body["type"] == "inbound_sms" and body["recognised"] == recognised
            and body["recorded"] is recorded and body["channel"] == channel,
            "expected recognised=%r recorded=%r on %s: %r" % (recognised, recorded, channel, body))


def refused(g, body, code, field):
    r = g.post(P, body)
    text = body.get("text") if isinstance(body, dict) else None
    h.expect_error(r, 400, code, field=field,
                   forbidden=[text[:40]] if isinstance(text, str) and text else ())
    documented(r)
    return r


def casings(word):
    return [word.upper(), word.lower(), word.title(), "".join(
        c.lower() if k % 2 else c.upper() for k, c in enumerate(word))]


def two_gateways(**overrides):
    redis = h.start_redis()
    a = h.Gateway(overrides=overrides, redis=redis)
    b = h.Gateway(overrides=overrides, redis=redis, key_file=a.key_file)
    return a, b


def everything_stored(g):
    """Every key of the gateway's Redis with its content, expiry aside."""
    return [(e["key"], e["type"], e["values"]) for e in h.redis_dump(g.redis.port)]


# -- what a keyword does ------------------------------------------------------------

def test_stop_keywords_deny_the_next_sms_on_every_gateway():
    ga, gb = two_gateways()
    texts = [c for w in STOP_WORDS for c in casings(w)]
    texts += ["stop.", " Stop ", "STOP!", "\tstop\r\n", "Opt  Out.", "unsubscribe !"]
    for k, text in enumerate(texts):
        one, other = (ga, gb) if k % 2 else (gb, ga)
        u = "+1555%07d" % k
        # sms requires an opt-in (the test config): START is one.
        b = sms(one, u, "START")
        expect_read(b, "start", True)
        h.check(b["effect"] == "opted in to sms|*", "start effect: %r" % b)
        h.expect_decision(other.decide(u, "sms"), "allow", "ok")
        b = sms(one, u, text)
        expect_read(b, "stop", True)
        h.check(b["effect"] == "opted out of sms|*", "%r: effect %r" % (text, b))
        # The other gateway's very next decision honours it, for every category.
        h.expect_decision(other.decide(u, "sms"), "deny", "opted_out")
        h.expect_decision(one.decide(u, "sms", category="health"), "deny", "opted_out")
        # Only SMS: the person's e-mail is theirs to keep.
        h.expect_decision(other.decide(u, "email"), "allow", "ok")


def test_start_after_stop_allows_again():
    ga, gb = two_gateways()
    for k, word in enumerate(["START", "start", "Start.", " UNSTOP ", "unstop!"]):
        u = "+4420%07d" % k
        h.expect_status(ga.consent(u, "sms", "marketing", "opt_in", source="signup form"), 200)
        h.expect_decision(gb.decide(u, "sms"), "allow", "ok")
        expect_read(sms(ga, u, "STOP"), "stop", True)
        h.expect_decision(gb.decide(u, "sms"), "deny", "opted_out")
        b = sms(gb, u, word)
        expect_read(b, "start", True)
        h.expect_decision(ga.decide(u, "sms"), "allow", "ok")
        h.expect_decision(ga.decide(u, "sms", category="transactional"), "allow", "ok")
    # The record is the one /v1/consent would make: source sms-keyword, proof of consent.
    shown = ga.post("/v1/users/show", {"user": "+4420%07d" % 0})
    h.expect_status(shown, 200)
    records = shown.body["consent"]
    h.check([(c["channel"], c["category"], c["state"], c["source"]) for c in records]
            == [("sms", "*", "opt_in", "sms-keyword")], "consent: %r" % records)
    audit = [e for e in shown.body["audit"] if e.get("type") == "consent"]
    h.check(any(e.get("source") == "sms-keyword" and e.get("state") == "out"
                and e.get("detail") == "inbound_sms stop" for e in audit), "audit: %r" % audit)
    h.check(any(e.get("source") == "sms-keyword" and e.get("state") == "in"
                and e.get("detail") == "inbound_sms start" for e in audit), "audit: %r" % audit)


def test_stop_outranks_an_older_category_opt_in():
    g = h.Gateway()
    u = h.uid("sms")
    h.expect_status(g.consent(u, "sms", "marketing", "opt_in"), 200)
    expect_read(sms(g, u, "quit"), "stop", True)
    h.expect_decision(g.decide(u, "sms", category="marketing"), "deny", "opted_out")
    # YES is not a keyword: it does not undo a STOP.
    expect_read(sms(g, u, "YES"), None, False)
    h.expect_decision(g.decide(u, "sms", category="marketing"), "deny", "opted_out")


def test_help_and_other_texts_change_nothing():
    ga, gb = two_gateways()
    u, v = h.uid("sms"), h.uid("sms")
    h.expect_status(ga.consent(u, "sms", "*", "opt_in"), 200)
    expect_read(sms(ga, v, "STOP"), "stop", True)
    before = everything_stored(ga)
    for text in ["HELP", "help", "Info.", " INFO! "]:
        for who in (u, v):
            b = sms(gb, who, text)
            expect_read(b, "help", False)
            h.check(b["effect"].startswith("nothing changed"), "help effect: %r" % b)
    for text in ["please stop texting me", "STOP?", "start?", "stop it", "YES", "y", "", "   ",
                 "stop stop", "st0p", "S T O P", "stop..", "arrêt", "\U0001F6D1"]:
        for who in (u, v):
            b = sms(ga, who, text)
            expect_read(b, None, False)
            h.check(b["effect"].startswith("nothing changed"), "effect: %r" % b)
    h.check(everything_stored(ga) == before, "a text that is no STOP or START changed Redis")
    h.expect_decision(gb.decide(u, "sms"), "allow", "ok")
    h.expect_decision(ga.decide(v, "sms"), "deny", "opted_out")


def test_the_sms_channel_is_configured_or_named():
    # Without a channel named sms, an inbound SMS must name its channel.
    g = h.Gateway(config=h.merge({k: v for k, v in h.DEFAULT_CONFIG.items() if k != "channels"},
                                 {"channels": {"email": {}, "text": {"requires_opt_in": True}}}))
    u = h.uid("sms")
    before = everything_stored(g)
    e = refused(g, {"user": u, "type": "inbound_sms", "text": "STOP"}, "unknown_channel",
                "channel")
    h.check("sms" in e.body["error"]["message"], "the error names the default: %r" % e.body)
    refused(g, {"user": u, "type": "inbound_sms", "text": "STOP", "channel": "sms"},
            "unknown_channel", "channel")
    h.check(everything_stored(g) == before, "a refused SMS changed Redis")
    b = sms(g, u, "START", channel="text")
    expect_read(b, "start", True, channel="text")
    h.check(b["effect"] == "opted in to text|*", "effect: %r" % b)
    h.expect_decision(g.decide(u, "text"), "allow", "ok")
    expect_read(sms(g, u, "stop", channel="text"), "stop", True, channel="text")
    h.expect_decision(g.decide(u, "text"), "deny", "opted_out")
    h.expect_decision(g.decide(u, "email"), "allow", "ok")


# -- refusals -------------------------------------------------------------------------

def test_missing_or_too_long_text_is_refused_and_changes_nothing():
    g = h.Gateway()
    u = h.uid("sms")
    h.expect_status(g.consent(u, "sms", "*", "opt_in"), 200)
    before = everything_stored(g)
    base = {"user": u, "type": "inbound_sms"}
    refused(g, base, "missing_field", "text")
    refused(g, dict(base, text=None), "missing_field", "text")
    refused(g, dict(base, text=["STOP"]), "invalid_field", "text")
    long_stop = "STOP" + " " * 1597          # 1601 characters: a keyword by its words, but too long
    refused(g, dict(base, text=long_stop), "invalid_field", "text")
    refused(g, dict(base, text="stop " + "é" * 1596), "invalid_field", "text")
    refused(g, dict(base, text="STOP", category="marketing"), "invalid_field", "category")
    refused(g, dict(base, text="STOP", channel="fax"), "unknown_channel", "channel")
    refused(g, {"user": u, "type": "unsubscribe", "text": "STOP"}, "invalid_field", "text")
    h.check(everything_stored(g) == before, "a refused SMS changed Redis")
    h.expect_decision(g.decide(u, "sms"), "allow", "ok")
    # 1600 characters is the limit, however many bytes they take.
    expect_read(sms(g, u, "é" * 1600), None, False)
    expect_read(sms(g, u, "STOP" + " " * 1596), "stop", True)
    h.expect_decision(g.decide(u, "sms"), "deny", "opted_out")


# -- the text is personal data ----------------------------------------------------------

def test_the_text_is_never_logged_stored_or_echoed():
    path = os.path.join(h.mkdtemp("capgate-sms-audit-"), "audit.jsonl")
    g = h.Gateway(overrides={"access_log": True, "log_level": "debug", "audit": {"file": path}})
    tag = os.urandom(4).hex()
    u = "+1555%s" % tag
    secret = "my-address-is-42-elm-street-%s" % tag
    texts = {
        "sToP!": "stop", " UnStOp. ": "start", "hElP": "help", "oPt  OuT": "stop",
        "please stop texting me " + secret: None, "STOP? " + secret: None,
    }
    for text, kind in texts.items():
        r = g.post(P, {"user": u, "type": "inbound_sms", "text": text, "campaign": "spring"})
        h.expect_status(r, 200)
        documented(r)
        h.check(r.body["recognised"] == kind, "%r: %r" % (text, r.body))
        h.check(text.strip() not in r.raw.decode(errors="replace"), "the answer echoes the text", r)
    # Refusals: too long, a text on another type, a body JSON cannot read.
    for body in ({"user": u, "type": "inbound_sms", "text": secret * 60},
                 {"user": u, "type": "open", "text": secret}):
        r = g.post(P, body)
        h.expect_error(r, 400, "invalid_field", field="text", forbidden=[secret, tag])
    raw = ('{"user": "%s", "type": "inbound_sms", "text": "%s\x01"}' % (u, secret[:12])).encode()
    h.expect_error(g.post(P, raw), 400, "invalid_json", forbidden=[secret[:12], tag])
    raw = ('{"user": "%s", "type": "inbound_sms", "text": %s}' % (u, secret[:15])).encode()
    h.expect_error(g.post(P, raw), 400, "invalid_json", forbidden=[secret[:15], tag])
    h.wait_until(lambda: os.path.exists(path) and os.path.getsize(path) > 0, 5, what="audit file")
    dump = b"".join(k + b"".join(vals) for k, _, vals in everything_stored(g))
    audit = g.get("/v1/audit?limit=1000")
    h.expect_status(audit, 200)
    places = {"redis": dump.decode(errors="replace"), "log": g.logs(),
              "audit": audit.raw.decode(errors="replace"), "audit file": open(path).read(),
              "metrics": g.get("/metrics").body}
    words = [secret, tag, "sToP", "UnStOp", "hElP", "oPt  OuT", "please stop"]
    for where, text in places.items():
        for w in words:
            h.check(w not in text, "%r is in the %s" % (w, where))
    h.check("inbound_sms stop" in places["audit"], "the audit names the keyword")


# -- the campaign breaker -------------------------------------------------------------

def test_a_stop_answering_a_campaign_counts_as_its_unsubscribe():
    breaker = {"window": "1h", "min_sends": 4, "complaint_rate": "0.5", "unsubscribe_rate": "0.9"}
    g = h.Gateway(overrides={"breaker": breaker})
    people = [h.uid("sms") for _ in range(4)]
    for u in people:
        expect_read(sms(g, u, "START", campaign="promo"), "start", True)
        h.expect_decision(g.decide(u, "sms", campaign="promo"), "allow", "ok")
    expect_read(sms(g, people[0], "Stop!", campaign="promo"), "stop", True)
    expect_read(sms(g, people[1], "HELP", campaign="promo"), "help", False)
    expect_read(sms(g, people[2], "stop please", campaign="promo"), None, False)

    def counted():
        r = g.get("/v1/admin/campaigns")
        h.expect_status(r, 200)
        documented(r, "/v1/admin/campaigns", "get")
        return {c["campaign"]: c for c in r.body["campaigns"]}.get("promo")
    h.wait_until(lambda: (counted() or {}).get("sends") == 4, 3, interval=0.1,
                 what="the campaign's sends counted")
    c = counted()
    # Only the STOP: a START, a HELP and a sentence are no unsubscribe.
    h.check(c["unsubscribes"] == 1 and c["complaints"] == 0 and c["state"] == "open",
            "promo: %r" % c)

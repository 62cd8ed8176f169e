"""/v1/consent and how consent steers /v1/decide."""

import datetime
import re

import harness as h


def gw():
    return h.shared_gateway()


def set_consent(g, user, channel, category, state, source="test"):
    r = g.consent(user, channel, category, state, source)
    h.expect_status(r, 200)
    return r


def test_consent_response_shape():
    g = gw()
    u = h.uid("consent")
    before = datetime.datetime.now(datetime.timezone.utc)
    r = g.consent(u, "email", "marketing", "opt_out", "preference-center")
    h.expect_status(r, 200)
    h.expect_json_content_type(r)
    b = r.body
    h.check(isinstance(b, dict), "not an object", r)
    h.check(set(b) == {"channel", "category", "state", "source", "updated_at", "receipt"},
            "expected exactly channel, category, state, source, updated_at, receipt; got %s"
            % sorted(b), r)
    h.check(b["channel"] == "email" and b["category"] == "marketing" and b["state"] == "opt_out"
            and b["source"] == "preference-center", "fields not echoed", r)
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z", b["updated_at"])
    h.check(m, "updated_at is not RFC 3339 UTC (…Z)", r)
    t = datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.timezone.utc)
    h.check(abs((t - before).total_seconds()) < 5, "updated_at %s is not now (%s)" % (t, before), r)
    h.check(u not in r.raw.decode(), "consent answer contains the user id", r)


def test_consent_wildcards_echoed():
    g = gw()
    r = set_consent(g, h.uid("consent"), "*", "*", "opt_in")
    h.check(r.body["channel"] == "*" and r.body["category"] == "*" and r.body["state"] == "opt_in",
            "wildcards not echoed", r)


def test_no_consent_marketing_email_allowed():
    g = gw()
    h.expect_decision(g.decide(h.uid("consent"), "email"), "allow", "ok")


def test_opt_out_all_then_opt_in_specific():
    g = gw()
    u = h.uid("consent")
    set_consent(g, u, "*", "*", "opt_out")
    h.expect_decision(g.decide(u, "email"), "deny", "opted_out")
    h.expect_decision(g.decide(u, "push"), "deny", "opted_out")
    set_consent(g, u, "email", "marketing", "opt_in")
    h.expect_decision(g.decide(u, "email", category="marketing"), "allow", "ok")
    h.expect_decision(g.decide(u, "email"), "allow", "ok")   # default category marketing
    h.expect_decision(g.decide(u, "push", category="marketing"), "deny", "opted_out")


def test_opt_out_beats_caps_and_is_not_counted():
    g = gw()
    u = h.uid("consent")
    set_consent(g, u, "email", "*", "opt_out")
    for _ in range(4):
        h.expect_decision(g.decide(u, "email"), "deny", "opted_out", rule=False)
    set_consent(g, u, "email", "*", "opt_in")
    # the denied sends were not recorded: email-daily (2) still has room
    h.expect_decision(g.decide(u, "email"), "allow", "ok")
    h.expect_decision(g.decide(u, "email"), "allow", "ok")
    h.expect_decision(g.decide(u, "email"), "defer", "cap", rule="email-daily")


def test_transactional_ignores_opt_out():
    g = gw()
    u = h.uid("consent")
    set_consent(g, u, "*", "*", "opt_out")
    h.expect_decision(g.decide(u, "email", category="transactional"), "allow", "ok")
    set_consent(g, u, "email", "transactional", "opt_out")
    h.expect_decision(g.decide(u, "email", category="transactional"), "allow", "ok")
    h.expect_decision(g.decide(u, "email", category="marketing"), "deny", "opted_out")


def test_sms_requires_opt_in():
    g = gw()
    u = h.uid("consent")
    h.expect_decision(g.decide(u, "sms"), "deny", "consent_required", rule=False)
    set_consent(g, u, "sms", "*", "opt_in")
    h.expect_decision(g.decide(u, "sms"), "allow", "ok")
    v = h.uid("consent")
    set_consent(g, v, "sms", "marketing", "opt_in")
    h.expect_decision(g.decide(v, "sms", category="marketing"), "allow", "ok")
    w = h.uid("consent")
    set_consent(g, w, "*", "*", "opt_in")
    h.expect_decision(g.decide(w, "sms"), "allow", "ok")


def test_sms_opt_out_is_opted_out():
    g = gw()
    u = h.uid("consent")
    set_consent(g, u, "sms", "*", "opt_out")
    # opt-out is checked before opt-in requirements
    h.expect_decision(g.decide(u, "sms"), "deny", "opted_out")


def test_transactional_sms_still_requires_opt_in():
    # ignores_opt_out skips step 2 only; step 3 (requires_opt_in) still applies
    g = gw()
    u = h.uid("consent")
    h.expect_decision(g.decide(u, "sms", category="transactional"), "deny", "consent_required")
    set_consent(g, u, "sms", "*", "opt_out")
    h.expect_decision(g.decide(u, "sms", category="transactional"), "deny", "consent_required")
    set_consent(g, u, "sms", "transactional", "opt_in")
    h.expect_decision(g.decide(u, "sms", category="transactional"), "allow", "ok")


def test_health_requires_opt_in_and_monthly_cap():
    g = gw()
    u = h.uid("consent")
    h.expect_decision(g.decide(u, "email", category="health"), "deny", "consent_required")
    set_consent(g, u, "email", "marketing", "opt_in")   # does not cover health
    h.expect_decision(g.decide(u, "email", category="health"), "deny", "consent_required")
    set_consent(g, u, "*", "health", "opt_in")
    h.expect_decision(g.decide(u, "email", category="health"), "allow", "ok")
    h.expect_decision(g.decide(u, "push", category="health"), "deny", "cap", rule="health-monthly")


def test_most_specific_record_wins():
    g = gw()
    u = h.uid("consent")
    set_consent(g, u, "*", "*", "opt_out")
    set_consent(g, u, "*", "marketing", "opt_in")
    set_consent(g, u, "push", "*", "opt_out")
    set_consent(g, u, "email", "marketing", "opt_out")
    # (email, marketing) opt_out
    h.expect_decision(g.decide(u, "email", category="marketing"), "deny", "opted_out")
    # (push, *) opt_out beats (*, marketing) opt_in
    h.expect_decision(g.decide(u, "push", category="marketing"), "deny", "opted_out")
    # (*, marketing) opt_in beats (*, *) opt_out; satisfies sms's opt-in requirement
    h.expect_decision(g.decide(u, "sms", category="marketing"), "allow", "ok")
    # only (*, *) applies to email/health: opt_out
    h.expect_decision(g.decide(u, "email", category="health"), "deny", "opted_out")
    # a new record at the same level replaces the old one
    set_consent(g, u, "*", "*", "opt_in")
    h.expect_decision(g.decide(u, "email", category="health"), "allow", "ok")
    set_consent(g, u, "email", "marketing", "opt_in")
    h.expect_decision(g.decide(u, "email", category="marketing"), "allow", "ok")
    set_consent(g, u, "push", "*", "opt_in")
    h.expect_decision(g.decide(u, "push", category="marketing"), "allow", "ok")


def test_channel_wildcard_beats_category_wildcard():
    g = gw()
    u = h.uid("consent")
    set_consent(g, u, "*", "marketing", "opt_out")
    set_consent(g, u, "email", "*", "opt_in")
    # (channel,*) > (*,category)
    h.expect_decision(g.decide(u, "email", category="marketing"), "allow", "ok")
    h.expect_decision(g.decide(u, "push", category="marketing"), "deny", "opted_out")


def test_consent_is_per_user():
    g = gw()
    a, b = h.uid("consent"), h.uid("consent")
    set_consent(g, a, "*", "*", "opt_out")
    h.expect_decision(g.decide(a, "push"), "deny", "opted_out")
    h.expect_decision(g.decide(b, "push"), "allow", "ok")


def test_dry_run_sees_consent():
    g = gw()
    u = h.uid("consent")
    set_consent(g, u, "*", "*", "opt_out")
    h.expect_decision(g.decide(u, "email", dry_run=True), "deny", "opted_out")

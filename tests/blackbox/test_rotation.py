"""Rotating the pseudonym key (privacy.previous_key_file) keeps every opt-out.

People opt out under key A; the gateway restarts with key B and A as the
previous key; decisions for them and for others hammer it concurrently.  No
opted-out person may be allowed, their records must end up under the B
pseudonym and nothing of theirs may be left under A.
"""

import os
import threading
import time

import cluster as cl
import harness as h

OPTED_OUT = 150          # people who opt out under key A
OTHERS = 150             # people with only sends under key A
ROUNDS = 4               # decides per person under key B, half of them at once


def _rotated(redis, key_a, extra=None, env=None):
    """A gateway on REDIS with a fresh key B and KEY_A as the previous key."""
    d = h.mkdtemp("capgate-rot-")
    key_b = h.write_key_file(d)
    overrides = {"privacy": {"key_file": "{key_file}", "previous_key_file": key_a}}
    if extra:
        overrides.update(extra)
    return h.Gateway(redis=redis, key_file=key_b, overrides=overrides, env=env)


def _consent_key(key_file, user):
    p = cl.pseudonym(key_file, user)
    return ("cg:{%s}:c:%s" % (p[:2], p)).encode(), p


def _left(g):
    r = g.get("/v1/admin/rotation")
    h.expect_status(r, 200)
    return r.body["left_under_previous_key"]


def test_rotation_under_load_never_allows_the_opted_out():
    ga = h.Gateway()
    redis, key_a = ga.redis, ga.key_file
    out = [h.uid("rot-out") for _ in range(OPTED_OUT)]
    others = [h.uid("rot-other") for _ in range(OTHERS)]
    for r in h.parallel(lambda u: ga.consent(u, "*", "*", "opt_out", source="unsubscribe"), out,
                        workers=16):
        h.expect_status(r, 200)
    for r in h.parallel(lambda u: ga.decide(u, "email", "before"), others, workers=16):
        h.expect_decision(r, "allow", "ok")
    ga.stop()

    gb = _rotated(redis, key_a)
    r = gb.post("/v1/admin/rotation/mark", {})
    h.expect_status(r, 200)
    # every opt-out (a consent key) and every other person's sends (a field)
    h.check(r.body["left_under_previous_key"] >= OPTED_OUT + OTHERS,
            "mark counted %r, expected at least %d" % (r.body, OPTED_OUT + OTHERS), r)

    allowed_out, answers, lock = [], {}, threading.Lock()

    def hammer(item):
        u, k = item
        res = gb.decide(u, "email", "after-%d" % k)
        with lock:
            answers[res.status] = answers.get(res.status, 0) + 1
            if u in out_set and res.status == 200 and res.body.get("decision") == "allow":
                allowed_out.append(u)
        return res

    out_set = set(out)
    # Each person's decides go in at the same moment (ROUNDS of them), opted-out
    # people and others mixed, so several moves of one person race each other.
    items = [(u, k) for k in range(ROUNDS) for u in out + others]
    t0 = time.monotonic()
    rs = h.parallel(hammer, items, workers=32)
    took = time.monotonic() - t0
    h.check(not allowed_out, "%d opted-out people were allowed after the rotation: %r"
            % (len(allowed_out), allowed_out[:5]))
    for r in rs:
        h.check(r.status == 200, "a decide under load answered %d: %r" % (r.status, r.body), r)
    denied = sum(1 for r, (u, _) in zip(rs, items) if u in out_set and
                 r.body["reason"] == "opted_out")
    h.check(denied == OPTED_OUT * ROUNDS, "expected %d opted_out answers, got %d"
            % (OPTED_OUT * ROUNDS, denied))
    print("rotation: %d people (%d opted out), %d decides in %.2fs, allows to opted-out: %d"
          % (len(out) + len(others), len(out), len(items), took, len(allowed_out)))

    keys = set(redis.keys())
    for u in out:
        kb, _ = _consent_key(gb.key_file, u)
        ka, _ = _consent_key(key_a, u)
        h.check(kb in keys, "%s's consent is not under the new pseudonym" % u)
        h.check(ka not in keys, "%s's consent is still under the old pseudonym" % u)
    h.check(_left(gb) == 0, "records are left under the old key after every person moved")

    # A fresh gateway on the new key alone (the rotation over) still refuses them.
    gb.stop()
    gc = h.Gateway(redis=redis, key_file=gb.key_file)
    for r in h.parallel(lambda u: gc.decide(u, "email", "later"), out, workers=16):
        h.expect_decision(r, "deny", "opted_out")


def test_report_counts_what_is_left_and_reaches_zero():
    ga = h.Gateway()
    users = [h.uid("rot-rep") for _ in range(10)]
    for u in users:
        h.expect_status(ga.consent(u, "email", "*", "opt_out"), 200)
        h.expect_decision(ga.decide(u, "push", "p1"), "allow", "ok")
    ga.stop()
    gb = _rotated(ga.redis, ga.key_file)
    r = gb.get("/v1/admin/rotation")
    h.expect_status(r, 200)
    h.check(r.body["rotating"] is True and r.body["left_under_previous_key"] == 0,
            "before marking nothing is counted: %r" % r.body, r)
    marked = gb.post("/v1/admin/rotation/mark", {}).body["left_under_previous_key"]
    h.check(marked == 20, "10 consent keys and 10 sends fields, got %d" % marked)
    for k, u in enumerate(users):
        h.expect_decision(gb.decide(u, "email", "e1"), "deny", "opted_out")
        h.check(_left(gb) == marked - 2 * (k + 1), "the report did not go down by 2")
    h.check(_left(gb) == 0, "report did not reach 0")


def test_sends_move_and_still_count_toward_caps():
    ga = h.Gateway()
    u = h.uid("rot-cap")
    h.expect_decision(ga.decide(u, "email", "c1"), "allow", "ok")
    h.expect_decision(ga.decide(u, "email", "c2"), "allow", "ok")
    ga.stop()
    gb = _rotated(ga.redis, ga.key_file)
    # email-daily (2 a day) counts the two sends made under the old key
    h.expect_decision(gb.decide(u, "email", "c3"), "defer", "cap", rule="email-daily")


def test_mark_without_a_previous_key_is_refused():
    g = h.Gateway()
    h.expect_error(g.post("/v1/admin/rotation/mark", {}), 400, "invalid_field")


def test_consent_and_events_move_first():
    ga = h.Gateway()
    u, v = h.uid("rot-c"), h.uid("rot-e")
    h.expect_status(ga.consent(u, "*", "*", "opt_out"), 200)
    h.expect_status(ga.consent(v, "email", "*", "opt_out"), 200)
    ga.stop()
    gb = _rotated(ga.redis, ga.key_file)
    # a later opt-in to push only: the older "everything out" stays for email
    h.expect_status(gb.consent(u, "push", "*", "opt_in"), 200)
    h.expect_decision(gb.decide(u, "email", "m1"), "deny", "opted_out")
    h.expect_decision(gb.decide(u, "push", "m2"), "allow", "ok")
    r = gb.post("/v1/events", {"user": v, "type": "open", "channel": "email"})
    h.check(r.status in (200, 202), "event answered %d" % r.status, r)
    h.expect_decision(gb.decide(v, "email", "m3"), "deny", "opted_out")
    keys = set(ga.redis.keys())
    for w in (u, v):
        h.check(_consent_key(ga.key_file, w)[0] not in keys, "old consent key left for %s" % w)


def test_show_and_erase_find_records_under_both_keys():
    ga = h.Gateway()
    u = h.uid("rot-show")
    h.expect_decision(ga.decide(u, "email", "s1"), "allow", "ok")
    h.expect_status(ga.consent(u, "email", "marketing", "opt_out", source="unsubscribe"), 200)
    ga.stop()
    gb = _rotated(ga.redis, ga.key_file)
    h.expect_decision(gb.decide(u, "push", "s2"), "allow", "ok")
    r = gb.post("/v1/users/show", {"user": u})
    h.expect_status(r, 200)
    h.check(any(s["channel"] == "email" for s in r.body["suppressions"]),
            "show lost the opt-out made under the old key: %r" % r.body, r)
    h.check(len(r.body["sends"]) == 2, "show should list both sends: %r" % r.body["sends"], r)
    _, pa = _consent_key(ga.key_file, u)
    # a decide and a consent under A, a decide under B
    h.check(len(r.body["audit"]) >= 3,
            "show did not find the audit entries under the old pseudonym: %r" % r.body["audit"])
    r = gb.post("/v1/users/erase", {"user": u})
    h.expect_status(r, 200)
    h.check(r.body["suppression_kept"], "erase dropped the suppression", r)
    h.check(r.body["removed"]["audit_entries"] >= 3, "erase missed old audit entries: %r"
            % r.body, r)
    dump = ga.redis.dump()
    for e in dump:
        h.check(pa.encode() not in e["key"] and not any(pa.encode() in v for v in e["values"]),
                "the old pseudonym is still in Redis after erase: %r" % e["key"])
    h.expect_decision(gb.decide(u, "email", "s3"), "deny", "opted_out")


def test_previous_key_file_is_checked():
    ga = h.Gateway()
    g = h.Gateway(redis=ga.redis, key_file=ga.key_file, start=False,
                  overrides={"privacy": {"key_file": "{key_file}",
                                         "previous_key_file": ga.key_file}})
    rc, out, err = h.run_cli(["-t", "-c", g.config_path])
    h.check(rc != 0 and "same key" in out + err,
            "the same key as previous key was accepted: %r" % ((rc, out, err),))
    missing = os.path.join(g.dir, "nope.key")
    g2 = h.Gateway(redis=ga.redis, start=False,
                   overrides={"privacy": {"key_file": "{key_file}", "previous_key_file": missing}})
    rc, out, err = h.run_cli(["-t", "-c", g2.config_path])
    h.check(rc != 0 and "previous_key_file" in out + err,
            "a missing previous key was accepted: %r" % ((rc, out, err),))


def test_a_route_batch_after_rotation_skips_the_opted_out():
    import test_routes as tr
    from upstream_server import FakeUpstream
    up = FakeUpstream().start()
    cfg = {"channels": {"email": {"upstream": {"url": up.url + "/sendgrid", "timeout_ms": 1000}}},
           "caps": [], "routes": [tr.sg_route()],
           "delivery": {"max_attempts": 3, "backoff": "200ms", "max_backoff": "1s",
                        "lease": "2s"}}
    ga = h.Gateway(overrides=cfg)
    out, others = tr.people(10, "rot-out"), tr.people(10, "rot-in")
    for u in out:
        h.expect_status(ga.consent(u, "email", "*", "opt_out", source="unsubscribe"), 200)
    ga.stop()
    gb = _rotated(ga.redis, ga.key_file, extra=cfg)
    body = tr.mail([{"to": [{"email": u}]} for u in out + others])
    r = tr.post(gb, body, "rot-batch-1")
    h.expect_status(r, 202)
    h.check(r.header("X-Capgate-Allowed") == "10" and r.header("X-Capgate-Denied") == "10",
            "10 allowed, 10 opted out: %r" % (r,))
    sent = set()
    for q in tr.deliveries(up, "rot-batch-"):
        sent.update(tr.recipients(q.body))
    h.check(sent == set(others), "the upstream got %d opted-out people" % len(sent & set(out)))


def test_rotation_on_a_cluster_moves_across_slots():
    """The old and new pseudonyms hash to different slots, mostly on
    different masters: the move is take / put / drop, one slot each."""
    c = cl.shared()
    for port in c.master_ports():
        c.cmd(port, "FLUSHALL")
    ov = {"redis": {"url": None, "cluster": c.seeds(2), "timeout_ms": 1000}}
    ga = h.Gateway(overrides=ov, redis=c)
    h.wait_until(lambda: ga.get("/readyz").status == 200, 10, what="/readyz 200")
    out = [h.uid("rot-cl-out") for _ in range(60)]
    others = [h.uid("rot-cl-in") for _ in range(60)]
    for r in h.parallel(lambda u: ga.consent(u, "*", "*", "opt_out"), out, workers=16):
        h.expect_status(r, 200)
    for r in h.parallel(lambda u: ga.decide(u, "email", "before"), others, workers=16):
        h.expect_decision(r, "allow", "ok")
    ga.stop()
    d = h.mkdtemp("capgate-rot-")
    key_b = h.write_key_file(d)
    gb = h.Gateway(redis=c, key_file=key_b,
                   overrides=dict(ov, privacy={"key_file": "{key_file}",
                                               "previous_key_file": ga.key_file}))
    h.wait_until(lambda: gb.get("/readyz").status == 200, 10, what="/readyz 200")
    marked = gb.post("/v1/admin/rotation/mark", {}).body["left_under_previous_key"]
    h.check(marked >= len(out) + len(others), "mark counted %d" % marked)
    items = [(u, k) for k in range(3) for u in out + others]
    t0 = time.monotonic()
    rs = h.parallel(lambda it: gb.decide(it[0], "email", "after-%d" % it[1]), items, workers=32)
    took = time.monotonic() - t0
    out_set = set(out)
    bad = [u for r, (u, _) in zip(rs, items)
           if u in out_set and (r.status != 200 or r.body["decision"] == "allow")]
    h.check(not bad, "opted-out people allowed (or refused) on the cluster: %r" % bad[:5])
    h.check(all(r.status == 200 for r in rs), "a decide failed under load on the cluster")
    keys = set()
    for port in c.master_ports():
        keys.update(c.keys(port))
    across = 0
    for u in out:
        ka, pa = _consent_key(ga.key_file, u)
        kb, pb = _consent_key(key_b, u)
        across += cl.key_slot(pa[:2]) != cl.key_slot(pb[:2])
        h.check(kb in keys and ka not in keys, "%s's consent did not move on the cluster" % u)
    h.check(_left(gb) == 0, "records left under the old key on the cluster")
    print("rotation on a cluster: %d people (%d opted out, %d moved across slots), %d decides "
          "in %.2fs, allows to opted-out: 0" % (len(out) + len(others), len(out), across,
                                                len(items), took))


def test_a_message_queued_before_the_rotation_still_meets_its_opt_out():
    """Deferred under key A, then the person opts out (under A), then the
    rotation moves their records: the queued message, decided again by the
    dispatcher under the old pseudonym, must still be stopped."""
    import test_proxy as tp
    from upstream_server import FakeUpstream
    up = FakeUpstream().start()
    cfg = tp.proxy_config(up)                   # email: 1 per 3s, then defer
    ga = h.Gateway(overrides=cfg, env=tp.ENV)
    u = h.uid("rot-q")
    h.expect_status(tp.send(ga, u, message_id="q-first"), 200)
    r = tp.send(ga, u, message_id="q-second")
    h.expect_status(r, 202)
    h.check(r.body["decision"] == "defer", "the second is deferred: %r" % (r.body,))
    h.expect_status(ga.consent(u, "*", "*", "opt_out", source="unsubscribe"), 200)
    ga.stop()
    gb = _rotated(ga.redis, ga.key_file, extra=cfg, env=tp.ENV)
    # the move happens on this decision (under the new key: denied)
    h.expect_decision(gb.decide(u, "push", "q-third"), "deny", "opted_out")
    h.check(any(k.endswith(b":q") for k in ga.redis.keys()), "nothing waits in the queue")
    h.wait_until(lambda: not any(k.endswith(b":q") for k in ga.redis.keys()), 10,
                 what="the queued message decided again (the queue empty)")
    time.sleep(0.5)
    keys = up.count_by_key()
    h.check(keys == {"q-first": 1}, "the opted-out person got the queued message: %r" % keys)


def test_moved_records_keep_their_expiry():
    """Moving never makes a record immortal: after decides, an opt-in and
    an event under key A and the move, every key still has a TTL (no
    suppression here, so the consent key has one too)."""
    ga = h.Gateway(overrides={"fatigue": {"unengaged_after": 3, "cap": {"limit": 1, "window": "1d"}}})
    users = [h.uid("rot-ttl") for _ in range(6)]
    for u in users:
        h.expect_decision(ga.decide(u, "email", "t1"), "allow", "ok")
        h.expect_status(ga.consent(u, "sms", "*", "opt_in"), 200)
        ga.post("/v1/events", {"user": u, "type": "open", "channel": "email"})
    ga.stop()
    gb = _rotated(ga.redis, ga.key_file,
                  extra={"fatigue": {"unengaged_after": 3, "cap": {"limit": 1, "window": "1d"}}})
    for u in users:
        h.expect_decision(gb.decide(u, "push", "t2"), "allow", "ok")
    for u in users:
        h.check(_consent_key(gb.key_file, u)[0] in set(ga.redis.keys()), "consent did not move")
    no_ttl = [(e["key"], e["ttl"]) for e in ga.redis.dump()
              if not (isinstance(e["ttl"], int) and e["ttl"] > 0)]
    h.check(not no_ttl, "keys without a TTL after the move: %r" % no_ttl[:10])

"""Redis Cluster: a real local cluster (3 masters + 3 replicas, cluster.py).

Decisions route to the owner of their slot, caps hold under concurrency and
across gateways, MOVED and ASK redirects are followed while slots migrate,
a SCRIPT FLUSH is survived, and a master killed with SIGKILL is followed to
its promoted replica.  The failover test prints its figures.
"""

import collections
import itertools
import threading
import time

import cluster as cl
import harness as h

CAP = 5
CAPS = {"caps": [{"name": "five", "limit": CAP, "window": "1d", "on_exceed": "deny"}]}


def the_cluster():
    return cl.shared()


def gateway(c, timeout_ms=250, key_file=None, seeds=2):
    ov = dict(CAPS, redis={"url": None, "cluster": c.seeds(seeds), "timeout_ms": timeout_ms})
    g = h.Gateway(overrides=ov, redis=c, key_file=key_file)
    h.wait_until(lambda: g.get("/readyz").status == 200, 10, what="/readyz 200 (cluster map + "
                 "every master ready)")
    return g


_taglen = {}


def tag_length(c, g):
    """How many pseudonym digits the hash tag has (read from the keys one
    decide writes, so the test follows decision.c's layout)."""
    if "n" not in _taglen:
        u = h.uid("taglen")
        h.expect_decision(g.decide(u, "email"), "allow", "ok")
        p = cl.pseudonym(g.key_file, u)
        tags = {cl.tag_of(k) for port in c.master_ports() for k in c.keys(port)}
        found = [t for t in tags if t and p.startswith(t)]
        h.check(found, "no key with a tag from the pseudonym %s among %r" % (p, sorted(tags)[:20]))
        _taglen["n"] = len(min(found, key=len))
    return _taglen["n"]


def slot_of_user(g, user, taglen):
    return cl.key_slot(cl.pseudonym(g.key_file, user)[:taglen])


def users_where(g, taglen, pred, n, prefix):
    """N user ids whose slot satisfies PRED."""
    out = []
    for i in itertools.count():
        if len(out) >= n:
            return out
        u = "%s-%d@example.com" % (prefix, i)
        if pred(slot_of_user(g, u, taglen)):
            out.append(u)
        h.check(i < 200000, "could not find users for the slots wanted")


def allowed(r):
    return r.status == 200 and isinstance(r.body, dict) and r.body.get("decision") == "allow"


# --------------------------------------------------------------------------

def test_decisions_route_to_the_slot_owner():
    c = the_cluster()
    g = gateway(c)
    taglen = tag_length(c, g)
    # The test's own slot arithmetic agrees with Redis's.
    for k in ("foo", "{user1000}.following", "cg:{ab}:s1", "foo{}{bar}", "foo{{bar}}zap"):
        h.check(c.keyslot(k) == cl.key_slot(k), "CLUSTER KEYSLOT %s" % k)
    users = [h.uid("place") for _ in range(60)]
    for u in users:
        h.expect_decision(g.decide(u, "email"), "allow", "ok")
        h.expect_status(g.consent(u, "push", "*", "opt_out"), 200)
    masters = c.master_ports()
    per_node = collections.Counter()
    where = collections.defaultdict(set)      # tag -> ports holding a key with it
    for port in masters:
        for k in c.keys(port):
            s = c.keyslot(k)
            h.check(c.owner(s) == port, "key %r (slot %d) is on %d, owned by %d"
                    % (k, s, port, c.owner(s)))
            per_node[port] += 1
            where[cl.tag_of(k)].add(port)
    for u in users:
        tag = cl.pseudonym(g.key_file, u)[:taglen]
        want = c.owner(cl.key_slot(tag))
        h.check(where.get(tag) == {want}, "keys of %s (tag %s, slot %d) on %r, want only %d"
                % (u, tag, cl.key_slot(tag), where.get(tag), want))
    h.check(len(per_node) == len(masters) and min(per_node.values()) > 0,
            "60 people should spread over every master: %r" % dict(per_node))
    st = g.get("/status").body["redis"]
    h.check(st["connected"] is True and st["url"].startswith("redis-cluster://"), "status", st)
    h.check(st["errors"] == 0 and st["timeouts"] == 0, "no Redis errors: %r" % st)
    print("    keys per master: %s" % dict(per_node))


def test_seeds_may_be_dead_or_replicas():
    c = the_cluster()
    masters = c.master_ports()
    replicas = [p for p in c.live_ports() if p not in masters]
    seeds = ["127.0.0.1:%d" % h.free_port(), "127.0.0.1:%d" % replicas[0]]
    g = h.Gateway(overrides=dict(CAPS, redis={"url": None, "cluster": seeds}), redis=c)
    h.wait_until(lambda: g.get("/readyz").status == 200, 10, what="ready from a replica seed")
    u = h.uid("seed")
    h.expect_decision(g.decide(u, "email"), "allow", "ok")
    logs = g.logs()
    h.check("redis cluster ready" in logs and "no slot map yet" in logs,
            "the dead seed said once, the map from the replica: %s" % logs[-2000:])


def test_200_concurrent_decides_one_person_cap_5():
    c = the_cluster()
    g = gateway(c)
    u = h.uid("conc")
    rs = h.parallel(lambda i: g.decide(u, "email", "c-%d" % i), list(range(200)))
    h.check(all(r.status == 200 for r in rs), "every answer 200: %s" % h.summary(rs))
    n = sum(allowed(r) for r in rs)
    h.check(n == CAP, "exactly %d allow out of 200, got %d: %s" % (CAP, n, h.summary(rs)))
    print("    one gateway: %d allow of 200" % n)


def test_three_gateways_200_concurrent_decides_one_person():
    c = the_cluster()
    g1 = gateway(c)
    g2 = gateway(c, key_file=g1.key_file, seeds=1)
    g3 = gateway(c, key_file=g1.key_file, seeds=3)
    gws = [g1, g2, g3]
    u = h.uid("three")
    rs = h.parallel(lambda i: gws[i % 3].decide(u, "email", "m-%d" % i), list(range(200)))
    h.check(all(r.status == 200 for r in rs), "every answer 200: %s" % h.summary(rs))
    n = sum(allowed(r) for r in rs)
    by_gw = [sum(allowed(r) for r in rs[k::3]) for k in range(3)]
    h.check(n == CAP, "exactly %d allow out of 200 over 3 gateways, got %d: %s"
            % (CAP, n, h.summary(rs)))
    print("    three gateways: %d allow of 200 (per gateway %s)" % (n, by_gw))


def test_script_flush_on_one_master():
    c = the_cluster()
    g = gateway(c)
    taglen = tag_length(c, g)
    u = h.uid("flush")
    owner = c.owner(slot_of_user(g, u, taglen))
    h.expect_decision(g.decide(u, "email"), "allow", "ok")
    evals = c.command_calls(owner, "eval")
    h.check(c.cmd(owner, "SCRIPT", "FLUSH") == "OK", "SCRIPT FLUSH")
    for _ in range(CAP - 1):
        h.expect_decision(g.decide(u, "email"), "allow", "ok")
    h.expect_decision(g.decide(u, "email"), "deny", "cap", rule="five")
    h.check(c.command_calls(owner, "eval") > evals, "NOSCRIPT should have been answered "
            "with one EVAL (which reloads the script)")
    st = g.get("/status").body["redis"]
    h.check(st["errors"] == 0, "no errors after SCRIPT FLUSH: %r" % st)


def test_ask_redirect_while_a_slot_migrates():
    c = the_cluster()
    g = gateway(c, timeout_ms=500)
    taglen = tag_length(c, g)
    u = users_where(g, taglen, lambda s: True, 1, "ask-%d" % time.time_ns())[0]
    slot = slot_of_user(g, u, taglen)
    src = c.owner(slot)
    dst = [p for p in c.master_ports() if p != src][0]
    # Both of the person's keys exist (a consent record and sends), so that
    # the target can serve them on ASKING once they have moved.
    h.expect_status(g.consent(u, "email", "*", "opt_in"), 200)
    for _ in range(2):
        h.expect_decision(g.decide(u, "email"), "allow", "ok")
    c.migrate_begin(slot, src, dst)
    try:
        moved = c.migrate_keys(slot, src, dst)
        h.check(len(moved) >= 2, "the person's keys moved: %r" % moved)
        asking = c.command_calls(dst, "asking")
        # The slot still belongs to SRC: each call goes there, gets ASK, and
        # is sent with ASKING to DST; the map does not change.
        for _ in range(CAP - 2):
            h.expect_decision(g.decide(u, "email"), "allow", "ok")
        h.expect_decision(g.decide(u, "email"), "deny", "cap", rule="five")
        asks = c.command_calls(dst, "asking") - asking
        h.check(asks >= CAP - 1, "every decide should have been ASKed to %d: %d ASKING"
                % (dst, asks))
        h.check(c.owner(slot) == src, "slot still owned by the source")
        # A new person of that slot has no key anywhere yet: Redis answers
        # TRYAGAIN until the migration ends; capgate retries, within its timeout.
        v = users_where(g, taglen, lambda s: s == slot, 1, "ask-new-%d" % time.time_ns())[0]
        t0 = time.monotonic()
        r = g.decide(v, "email")
        dt = time.monotonic() - t0
        h.check(r.status in (200, 503) and dt < 0.5 + 0.05, "bounded answer during migration "
                "(%.3fs)" % dt, r)
        print("    ASK: a new person of the migrating slot: HTTP %d after %.0f ms" % (r.status, dt * 1000))
    finally:
        c.migrate_end(slot, src, dst)
    # Now SRC answers MOVED: the gateway follows it and learns the new map.
    h.expect_decision(g.decide(u, "email"), "deny", "cap", rule="five")
    h.check(c.owner(slot) == dst, "slot moved")
    h.check(not any(cl.key_slot(k) == slot for k in c.keys(src)), "no key of the slot left on src")
    st = g.get("/status").body["redis"]
    h.check(st["errors"] == 0, "no Redis errors: %r" % st)
    print("    ASK: %d ASKING on the target; slot %d moved %d -> %d" % (asks, slot, src, dst))


def test_moved_while_a_slot_migrates_under_load():
    c = the_cluster()
    g = gateway(c, timeout_ms=2000)
    taglen = tag_length(c, g)
    stamp = time.time_ns()
    first = users_where(g, taglen, lambda s: True, 1, "mv-%d" % stamp)[0]
    slot = slot_of_user(g, first, taglen)
    src = c.owner(slot)
    dst = [p for p in c.master_ports() if p != src][-1]
    inside = users_where(g, taglen, lambda s: s == slot, 15, "mv-in-%d" % stamp)
    outside = users_where(g, taglen, lambda s: s != slot, 15, "mv-out-%d" % stamp)
    people = inside + outside
    results = []
    lock = threading.Lock()
    stop = threading.Event()
    counter = itertools.count()

    def load():
        while not stop.is_set():
            i = next(counter)
            u = people[i % len(people)]
            ts = time.monotonic()
            r = g.decide(u, "email", "mv-%d" % i)
            with lock:
                results.append((ts, u, r))
            time.sleep(0.002)
    threads = [threading.Thread(target=load) for _ in range(16)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        # A slow migration (a few hundred ms, as with a big slot), key by
        # key: TRYAGAIN, ASK, then MOVED once the slot is handed over.
        t0 = time.monotonic()
        c.migrate_begin(slot, src, dst)
        time.sleep(0.05)
        for k in c.cmd(src, "CLUSTER", "GETKEYSINSLOT", slot, 100000):
            c.migrate_keys(slot, src, dst, [k])
            time.sleep(0.005)
        time.sleep(0.05)
        c.migrate(slot, src, dst)       # whatever was written meanwhile, and the hand-over
        t1 = time.monotonic()
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    h.check(c.owner(slot) == dst, "slot %d moved to %d" % (slot, dst))
    rs = [r for _, _, r in results]
    during = sum(1 for t, _, _ in results if t0 <= t <= t1)
    during_in = sum(1 for t, u, _ in results if t0 <= t <= t1 and u in inside)
    slowest = max(r.elapsed for _, _, r in results)
    h.check(all(r.status == 200 for r in rs), "no errors while the slot moved: %s" % h.summary(rs))
    per = collections.Counter(u for _, u, _ in results)
    allows = collections.Counter(u for _, u, r in results if allowed(r))
    wrong = {u: (allows[u], per[u]) for u in people if allows[u] != min(CAP, per[u])}
    h.check(not wrong, "each person exactly %d allow: %r" % (CAP, wrong))
    h.check(not any(cl.key_slot(k) == slot for k in c.keys(src)), "slot's keys left on src")
    h.check('msg="redis cluster: moved"' in g.logs(), "the gateway saw MOVED")
    print("    MOVED under load: %d decides (%d started during the %.0f ms migration, %d of "
          "them for the slot's people; slowest answer %.0f ms), slot %d moved %d -> %d, %s"
          % (len(rs), during, (t1 - t0) * 1000, during_in, slowest * 1000, slot, src, dst,
             h.summary(rs)))


def test_cluster_with_password():
    pw = "pw-%d" % time.time_ns()
    c = cl.start(replicas_per_master=0, password=pw)
    g = h.Gateway(overrides=dict(CAPS, redis={"url": None, "cluster": c.seeds(1), "password": pw}),
                  redis=c)
    h.wait_until(lambda: g.get("/readyz").status == 200, 10, what="/readyz 200 with AUTH")
    u = h.uid("auth")
    for _ in range(CAP):
        h.expect_decision(g.decide(u, "email"), "allow", "ok")
    h.expect_decision(g.decide(u, "email"), "deny", "cap", rule="five")
    # A wrong password: never ready, requests refused at once, said without
    # flooding the log, and no password in it.
    bad = h.Gateway(overrides=dict(CAPS, redis={"url": None, "cluster": c.seeds(1),
                                                "password": "not-" + pw}), redis=c)
    time.sleep(1.5)
    h.check(bad.get("/readyz").status == 503, "not ready with a wrong password")
    t0 = time.monotonic()
    r = bad.decide(u, "email")
    h.check(r.status == 503 and time.monotonic() - t0 < 0.1, "refused at once", r)
    logs = bad.logs()
    n = logs.count('msg="redis handshake failed"')
    h.check(1 <= n <= 12, "the AUTH failure logged, not flooded: %d lines in 1.5 s" % n)
    h.check(pw not in logs and pw not in g.logs(), "a password in the log")


def test_master_killed_replica_promoted():
    """Last: the cluster loses a master for good (its replica takes over)."""
    c = the_cluster()
    timeout_ms = 250
    g = gateway(c, timeout_ms=timeout_ms)
    taglen = tag_length(c, g)
    masters = c.master_ports()
    victim = masters[0]
    stamp = time.time_ns()
    ranges = c.slots()

    def owner(s):
        return next(m for a, b, m in ranges if a <= s <= b)
    on_victim = users_where(g, taglen, lambda s: owner(s) == victim, 20, "fo-v-%d" % stamp)
    others = users_where(g, taglen, lambda s: owner(s) != victim, 20, "fo-o-%d" % stamp)
    people = on_victim + others
    log = []                    # (t, user, status, decision, elapsed)
    lock = threading.Lock()
    stop = threading.Event()
    counter = itertools.count()
    kill_at = [None]

    def load():
        while not stop.is_set():
            i = next(counter)
            u = people[i % len(people)]
            t0 = time.monotonic()
            try:
                r = g.decide(u, "email", "fo-%d" % i)
            except OSError as e:       # would be a hang or a crash: recorded
                with lock:
                    log.append((t0, u, "exc %s" % e, None, time.monotonic() - t0))
                continue
            dt = time.monotonic() - t0
            code = r.body.get("error", {}).get("code") if r.status != 200 and \
                isinstance(r.body, dict) else None
            with lock:
                log.append((t0, u, r.status, r.body.get("decision") if r.status == 200 else code,
                            dt))
            time.sleep(0.002)

    threads = [threading.Thread(target=load) for _ in range(6)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        kill_at[0] = time.monotonic()
        c.kill(victim)
        # Wait for a replica to be promoted, then for decisions to resume.
        promoted = h.wait_until(lambda: victim not in c.master_ports() and time.monotonic(),
                                20, interval=0.05, what="the replica's promotion")

        def resumed():
            with lock:
                return [e for e in log if e[0] > promoted and e[1] in on_victim and e[2] == 200]
        h.wait_until(resumed, 10, interval=0.05, what="decisions for the lost master's people")
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    c.wait_ok()
    t_kill = kill_at[0]
    after = [e for e in log if e[0] >= t_kill]
    first_ok = min(e[0] + e[4] for e in after if e[1] in on_victim and e[2] == 200)
    failed = [e for e in after if e[2] != 200]
    bad = [e for e in failed if e[2] != 503 or e[3] != "store_unavailable"]
    slowest = max(e[4] for e in log)
    fail_ms = sorted(e[4] * 1000 for e in failed) or [0]
    if "CAPGATE_KEEP_LOG" in __import__("os").environ:
        print(g.logs())
    allows = collections.Counter(e[1] for e in log if e[3] == "allow")
    over = {u: n for u, n in allows.items() if n > CAP}
    print("    failover: killed master %d; replica promoted after %.2fs; decisions for its "
          "people resumed %.2fs after the kill (%.2fs after the promotion)"
          % (victim, promoted - t_kill, first_ok - t_kill, first_ok - promoted))
    print("    failover: %d decides, %d answered 503 store_unavailable, %d other failures, "
          "slowest answer %.0f ms (timeout_ms %d), people over the cap: %d"
          % (len(log), len(failed) - len(bad), len(bad), slowest * 1000, timeout_ms, len(over)))
    print("    failover: 503 latency p50 %.1f ms, max %.1f ms; %d decides after the kill"
          % (fail_ms[len(fail_ms) // 2], fail_ms[-1], len(after)))
    h.check(not bad, "failures other than 503 store_unavailable: %r" % bad[:5])
    h.check(slowest <= (timeout_ms + 50) / 1000.0,
            "an answer took %.0f ms (> timeout_ms + 50)" % (slowest * 1000))
    h.check(not over, "people allowed over the cap of %d: %r" % (CAP, over))
    h.check(first_ok - promoted < 3.0, "decisions resume within 3 s of the promotion")
    # Afterwards every person is where the cluster says, and capped.
    for u in on_victim[:5]:
        r = g.decide(u, "email")
        h.check(r.status == 200, "answers after the failover", r)
    h.check(g.get("/readyz").status == 200, "ready again")


def test_shaping_and_the_breaker_on_a_cluster():
    """The upstream's rate, its pushback and the campaign breaker keep their
    state on slots of their own: on a cluster too, two gateways share them."""
    from upstream_server import FakeUpstream
    from test_shaping import busiest_second
    c = the_cluster()
    up = FakeUpstream().start()
    ov = {"redis": {"url": None, "cluster": c.seeds(2), "timeout_ms": 250}, "caps": [],
          "channels": {"email": {"upstream": {"url": up.url + "/send", "timeout_ms": 2000,
                                              "rate": {"per_second": 20, "burst": 2}}}},
          "delivery": {"lease": "5s", "backoff": "200ms"},
          "breaker": {"window": "1h", "min_sends": 5, "complaint_rate": "0.1"}}
    g1 = h.Gateway(overrides=ov, redis=c)
    g2 = h.Gateway(overrides=ov, redis=c, key_file=g1.key_file)
    for g in (g1, g2):
        h.wait_until(lambda: g.get("/readyz").status == 200, 10, what="/readyz 200")
    body = lambda k: {"user": h.uid(), "channel": "email", "message_id": "cl-%d" % k,
                      "campaign": "cl-camp", "payload": {"n": k}}
    rs = [(g1, g2)[k % 2].post("/v1/send", body(k)) for k in range(40)]
    h.check(all(r.status in (200, 202) for r in rs), "forwarded or queued: %r" % h.summary(rs))
    h.check(sum(r.status == 202 for r in rs) > 20, "the rate held most: %r" % h.summary(rs))
    h.wait_until(lambda: len(up.count_by_key()) >= 40, 20, what="all 40 delivered")
    h.check(busiest_second([q.time for q in up.requests]) <= 22, "at most 22 in a second")
    time.sleep(0.5)                    # the sends' counts reach Redis
    for k in range(5):                 # 5 of 40 sends: above 0.1
        h.expect_status(g1.post("/v1/events", {"user": h.uid(), "type": "complaint",
                                               "campaign": "cl-camp"}), 200)
    h.wait_until(lambda: g2.post("/v1/send", body(99)).status == 403, 3, interval=0.1,
                 what="the campaign paused on the other gateway")
    st = g2.get("/status").body["proxy"]["upstreams"][0]["shaping"]
    h.check(st["state"] == "open" and st["rate"]["per_second"] == 20, "/status: %r" % st)

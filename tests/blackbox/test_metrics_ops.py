"""/metrics for operations (issue 17, part B): what counts during a Redis
outage, request latency by route, deliveries by upstream and outcome, a
live connections gauge, the process_* families, and the whole output
checked by Debian's promtool.

promtool comes from the prometheus package, unpacked (not installed: that
would start a server) into build/tools by tools/promtool.sh, which this
module runs when it is missing (idempotent, as `make test` does).
"""

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time

import harness as h
from upstream_server import FakeUpstream

PROMTOOL_DIR = os.path.join(h.REPO, "build", "tools")


def promtool():
    """The promtool binary, unpacked on first use; a HarnessError if it cannot be."""
    found = shutil.which("promtool")
    if found:
        return found
    path = os.path.join(PROMTOOL_DIR, "usr", "bin", "promtool")
    if not os.access(path, os.X_OK):
        p = subprocess.run(["sh", os.path.join(h.REPO, "tools", "promtool.sh"), PROMTOOL_DIR],
                           capture_output=True, timeout=300)
        if p.returncode != 0 or not os.access(path, os.X_OK):
            raise h.HarnessError("tools/promtool.sh failed: %s %s"
                                 % (p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")))
    return path


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:\\.|[^"\\])*)"')


def scrape(g):
    """{(name, frozenset(labels.items())): value} and {family: type} of /metrics."""
    r = g.get("/metrics")
    h.expect_status(r, 200)
    text = r.raw.decode()
    samples, types = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(" ", 3)
            types[name] = typ
            continue
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        h.check(m, "malformed sample %r" % line)
        labels = frozenset(LABEL.findall(m.group(2) or ""))
        samples[(m.group(1), labels)] = float(m.group(3))
    return samples, types, text


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())))


def series(samples, name):
    """[(labels dict, value)] of every sample named NAME."""
    return [(dict(k[1]), v) for k, v in samples.items() if k[0] == name]


# ------------------------------------------------------------ Redis outage

def _outage(stop):
    g = h.Gateway()
    h.expect_decision(g.decide(h.uid("out"), "email"), "allow", "ok")
    before, _, _ = scrape(g)
    stop(g)
    refused = 0
    for _ in range(5):
        r = g.decide(h.uid("out"), "email")
        if r.status == 503:
            refused += 1
    h.check(refused >= 4, "only %d of 5 decides were refused during the outage" % refused)
    after, _, _ = scrape(g)
    return g, before, after, refused


def _delta(before, after, name):
    return (value(after, name) or 0) - (value(before, name) or 0)


def test_redis_killed_counts_every_refused_decide():
    """Before the fix the decide road refused in decide_batch, ahead of the
    store's counter: capgate_redis_unavailable_total stayed 0."""
    g, before, after, refused = _outage(lambda g: (g.redis.kill(), h.wait_until(
        lambda: g.get("/readyz").status == 503, 5, what="the gateway to see Redis gone")))
    n = _delta(before, after, "capgate_redis_unavailable_total")
    h.check(n >= refused, "capgate_redis_unavailable_total grew by %d for %d refused decides"
            % (n, refused))
    h.check(value(after, "capgate_redis_up") == 0, "capgate_redis_up is not 0 during the outage")
    st = g.get("/status").body
    h.check(st["redis"]["unavailable"] >= refused, "/status redis.unavailable = %r after %d refusals"
            % (st["redis"]["unavailable"], refused))
    h.check(value(after, "capgate_http_errors_total", code="store_unavailable") >= refused,
            "store_unavailable errors not counted")


def test_redis_stopped_counts_every_refused_decide():
    """SIGSTOP: calls time out first, then the health ping marks Redis down
    and decides are refused at once; each 503 is in one of the counters."""
    g, before, after, refused = _outage(lambda g: g.redis.pause())
    try:
        n = sum(_delta(before, after, k) for k in
                ("capgate_redis_unavailable_total", "capgate_redis_timeouts_total"))
        h.check(n >= refused, "unavailable + timeouts grew by %d for %d refused decides" % (n, refused))
        h.wait_until(lambda: g.get("/readyz").status == 503, 5, what="the gateway to mark Redis down")
        # /readyz says so once one loop has; each loop finds it out by its
        # own health ping (every 1 s when idle, silent after another 1 s),
        # and a decide on a loop that has not yet waits out its timeout.
        time.sleep(2.5)
        b2, _, _ = scrape(g)
        for _ in range(3):
            h.expect_error(g.decide(h.uid("out"), "email"), 503, "store_unavailable")
        a2, _, _ = scrape(g)
        h.check(_delta(b2, a2, "capgate_redis_unavailable_total") >= 3,
                "3 decides refused while Redis is marked down: unavailable_total grew by %d"
                % _delta(b2, a2, "capgate_redis_unavailable_total"))
    finally:
        g.redis.resume()


# ------------------------------------------------------------ route label

def test_request_duration_has_a_route_label():
    """Before the fix the histogram had no labels at all: proxy latency and
    decide latency were one series."""
    up = FakeUpstream(mode="stall", seconds=0.3).start()
    g = h.Gateway(overrides={"channels": {"email": {}, "push": {"upstream": {"url": up.url + "/push",
                                                                                "timeout_ms": 2000}},
                                          "sms": {"requires_opt_in": True}}})
    for _ in range(4):
        h.expect_status(g.decide(h.uid("route"), "email"), 200)
    for _ in range(2):
        r = g.post("/v1/send", {"user": h.uid("route"), "channel": "push", "message_id": h.mid(),
                                "payload": {"x": 1}})
        h.expect_status(r, 200)
    h.expect_status(g.get("/healthz"), 200)
    h.expect_status(g.get("/no/such/path"), 404)
    s, types, text = scrape(g)
    name = "capgate_http_request_duration_seconds"
    h.check(types.get(name) == "histogram", "%s is not a histogram" % name)
    counts = {d.get("route"): v for d, v in series(s, name + "_count")}
    h.check(None not in counts, "a %s_count without a route label: %r" % (name, counts))
    h.check(counts.get("/v1/decide") == 4, "decide requests timed: %r" % counts)
    h.check(counts.get("/v1/send") == 2, "send requests timed: %r" % counts)
    h.check(counts.get("/healthz", 0) >= 1, "healthz timed: %r" % counts)
    h.check(counts.get("(other)") == 1, "the 404 is not under route=\"(other)\": %r" % counts)
    h.check("/no/such/path" not in text, "a raw request path became a label")
    # The stalled upstream's 0.3 s sits in /v1/send only: decide's p99 stays fast.
    fast = value(s, name + "_bucket", route="/v1/decide", le="0.25")
    h.check(fast == 4, "decides under 250 ms: %r" % fast)
    slow = value(s, name + "_bucket", route="/v1/send", le="0.25")
    h.check(slow == 0, "sends under 250 ms although the upstream stalls 300 ms: %r" % slow)
    for d, _ in series(s, name + "_bucket"):
        h.check(set(d) == {"route", "le"}, "bucket labels %r" % d)


# ------------------------------------------------------------ deliveries

OUTCOMES = ("delivered", "failed", "retried", "dead", "dropped", "deferred", "superseded",
            "queue_full", "replayed")


def test_deliveries_by_upstream_and_outcome():
    """Every configured upstream has its whole outcome breakdown from the
    first scrape (zeros included, so rate() and the dashboard have a series
    before anything failed), and each send lands in its own cell."""
    ok = FakeUpstream().start()
    bad = FakeUpstream(mode="fail").start()
    g = h.Gateway(overrides={
        "channels": {"email": {"upstream": {"url": ok.url + "/send", "timeout_ms": 1000}},
                     "push": {"upstream": {"url": bad.url + "/push", "timeout_ms": 1000}},
                     "sms": {"requires_opt_in": True}}})
    s0, _, _ = scrape(g)
    for ch in ("email", "push"):
        for o in OUTCOMES:
            h.check(value(s0, "capgate_deliveries_total", upstream=ch, outcome=o) == 0,
                    "no zero series capgate_deliveries_total{upstream=%r,outcome=%r} before traffic"
                    % (ch, o))
    h.check(not [d for d, _ in series(s0, "capgate_deliveries_total") if d["upstream"] == "sms"],
            "a channel without an upstream has delivery series")
    for _ in range(3):
        h.expect_status(g.post("/v1/send", {"user": h.uid("dl"), "channel": "email",
                                            "message_id": h.mid(), "payload": {}}), 200)
    for _ in range(2):
        r = g.post("/v1/send", {"user": h.uid("dl"), "channel": "push", "message_id": h.mid(),
                                "payload": {}})
        h.check(r.status >= 500, "a failing upstream answered %d" % r.status, r)
    s, _, _ = scrape(g)
    got = {(d["upstream"], d["outcome"]): v for d, v in series(s, "capgate_deliveries_total") if v}
    h.check(got == {("email", "delivered"): 3, ("push", "failed"): 2},
            "deliveries by upstream and outcome: %r" % got)
    ups = {u["channel"]: u for u in g.get("/status").body["proxy"]["upstreams"]}
    h.check(ups["email"]["ok"] == 3 and ups["push"]["failed"] == 2, "/status upstreams %r" % ups)


# ------------------------------------------------------------ connections

def _open(port, n):
    conns = []
    for _ in range(n):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", "/healthz")
        r = c.getresponse()
        r.read()
        h.check(r.status == 200, "healthz on a kept-alive connection")
        conns.append(c)
    return conns


def test_connections_gauge_is_live():
    """Before the fix the gauge was each worker's housekeeping sample (every
    100 ms): connections opened just before a scrape were not in it."""
    g = h.Gateway()
    scraper = http.client.HTTPConnection("127.0.0.1", g.port, timeout=5)
    held = []
    try:
        for round_ in range(6):
            held += _open(g.port, 4)
            scraper.request("GET", "/metrics")
            r = scraper.getresponse()
            text = r.read().decode()
            m = re.search(r"^capgate_http_connections (\S+)$", text, re.M)
            h.check(m, "no capgate_http_connections sample")
            seen = float(m.group(1))
            h.check(seen >= len(held) + 1, "round %d: %d connections open (+ the scraper's), "
                    "capgate_http_connections says %g" % (round_, len(held), seen))
        for c in held:
            c.close()
        held = []
        scraper.close()

        def settled():
            n = value(scrape(g)[0], "capgate_http_connections")
            return n if n is not None and n <= 2 else None
        h.wait_until(settled, 5, what="the gauge to fall once the connections closed")
    finally:
        for c in held:
            c.close()
        scraper.close()


# ------------------------------------------------------------ process_*

def _proc_fields(pid):
    with open("/proc/%d/stat" % pid) as f:
        st = f.read()
    rest = st[st.rindex(")") + 2:].split()
    ticks = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as f:
        btime = int(next(ln for ln in f if ln.startswith("btime ")).split()[1])
    return {"rss": int(rest[21]) * os.sysconf("SC_PAGE_SIZE"), "vsize": int(rest[20]),
            "start": btime + int(rest[19]) / ticks,
            "cpu": (int(rest[11]) + int(rest[12])) / ticks,
            "fds": len(os.listdir("/proc/%d/fd" % pid))}


def test_process_metrics():
    g = h.Gateway()
    # Work until the kernel has charged the daemon at least two clock ticks:
    # twenty decides can take less than one tick on a fast machine, and then
    # /proc and the metric both say 0 (CI failed on exactly that).
    deadline = time.time() + 20
    while _proc_fields(g.proc.pid)["cpu"] < 0.02 and time.time() < deadline:
        for _ in range(50):
            g.decide(h.uid("proc"), "email")
    s, types, _ = scrape(g)
    want = {"process_cpu_seconds_total": "counter", "process_resident_memory_bytes": "gauge",
            "process_virtual_memory_bytes": "gauge", "process_start_time_seconds": "gauge",
            "process_open_fds": "gauge", "process_max_fds": "gauge"}
    for name, typ in want.items():
        h.check(types.get(name) == typ, "%s: type %r, expected %s" % (name, types.get(name), typ))
        h.check(value(s, name) is not None, "no %s sample" % name)
    real = _proc_fields(g.proc.pid)
    rss = value(s, "process_resident_memory_bytes")
    h.check(0.5 * real["rss"] <= rss <= 2 * real["rss"] and rss > 1 << 20,
            "process_resident_memory_bytes %d, /proc says %d" % (rss, real["rss"]))
    h.check(abs(value(s, "process_start_time_seconds") - real["start"]) < 1.0,
            "process_start_time_seconds %r, /proc says %r" % (value(s, "process_start_time_seconds"),
                                                              real["start"]))
    h.check(abs(value(s, "process_start_time_seconds") - time.time()) < 120, "start time not recent")
    fds = value(s, "process_open_fds")
    h.check(abs(fds - real["fds"]) <= 3 and fds >= 5, "process_open_fds %d, /proc lists %d"
            % (fds, real["fds"]))
    cpu = value(s, "process_cpu_seconds_total")
    h.check(0 < cpu <= real["cpu"] + 0.05, "process_cpu_seconds_total %r, /proc says %r"
            % (cpu, real["cpu"]))
    with open("/proc/%d/limits" % g.proc.pid) as f:
        soft = next(ln for ln in f if ln.startswith("Max open files")).split()[3]
    h.check(str(int(value(s, "process_max_fds"))) == soft, "process_max_fds %r, limit %s"
            % (value(s, "process_max_fds"), soft))
    # A counter: it only grows.
    for _ in range(200):
        g.decide(h.uid("proc"), "email")
    h.check(value(scrape(g)[0], "process_cpu_seconds_total") >= cpu, "CPU seconds went down")


# ------------------------------------------------------------ promtool

def busy_gateway():
    """A proxy-mode gateway with a route, a shadow cap, deliveries, an error
    and a reload behind it: every family has samples.  Returns (g, a user)."""
    up = FakeUpstream().start()
    g = h.Gateway(overrides={
        "channels": {"email": {"upstream": {
            "url": up.url + "/send", "timeout_ms": 1000,
            # Shaped (far above what the test sends): the upstream gauges have samples.
            "rate": {"per_second": 100000, "burst": 1000},
            "warmup": {"start": time.strftime("%Y-%m-%d", time.gmtime()),
                       "daily": [100000, 200000]}}},
                     "push": {}, "sms": {"requires_opt_in": True}},
        "caps": [{"name": "email-1", "channel": "email", "limit": 1, "window": "1d",
                  "on_exceed": "defer"},
                 {"name": "shadow-push", "channel": "push", "limit": 1, "window": "1d",
                  "on_exceed": "deny", "mode": "shadow"}],
        "routes": [{"path": "/api/mail", "channel": "email", "user": "json:/to",
                    "message_id": "header:Idempotency-Key"}]})
    u = h.uid("prom")
    g.post("/v1/send", {"user": u, "channel": "email", "message_id": h.mid(), "payload": {}})
    g.post("/v1/send", {"user": u, "channel": "email", "message_id": h.mid(), "payload": {}})
    for _ in range(2):
        g.decide(u, "push")
    r = g.post("/api/mail", {"to": h.uid("prom"), "subject": "s"},
               headers={"Idempotency-Key": h.mid()})
    h.expect_status(r, 200)
    g.post("/v1/decide", b"{not json")
    g.send_signal(signal.SIGHUP)
    time.sleep(0.3)
    return g, u


def test_promtool_accepts_the_whole_output():
    """Every family present (proxy, routes, shadow caps, reload, outage)
    and the output passes `promtool check metrics` (which also lints
    names, units and HELP)."""
    tool = promtool()
    g, u = busy_gateway()
    _, types, text = scrape(g)
    for fam in ("capgate_deliveries_total", "capgate_shadow_hits_total",
                "capgate_http_request_duration_seconds", "process_open_fds",
                "capgate_upstream_state", "capgate_upstream_warmup_ceiling"):
        h.check(fam in types, "family %s missing" % fam)
    h.check('route="/api/mail"' in text, "the configured route is not a route label")
    p = subprocess.run([tool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=60)
    h.check(p.returncode == 0, "promtool check metrics: %s %s\n%s"
            % (p.stdout.decode(), p.stderr.decode(), text[:3000]))
    g.redis.kill()
    h.wait_until(lambda: g.get("/readyz").status == 503, 5, what="Redis down")
    g.decide(u, "email")
    _, _, text = scrape(g)
    p = subprocess.run([tool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=60)
    h.check(p.returncode == 0, "promtool check metrics during an outage: %s %s"
            % (p.stdout.decode(), p.stderr.decode()))


# ------------------------------------------------------------ rules, dashboard

RULES = os.path.join(h.REPO, "docs", "monitoring", "capgate.rules.yml")
RULES_TEST = os.path.join(h.REPO, "tests", "prometheus", "capgate.rules.test.yml")
DASHBOARD = os.path.join(h.REPO, "docs", "monitoring", "capgate-dashboard.json")
METRIC_NAME = re.compile(r"\b((?:capgate|process)_[a-z0-9_]+)\b")
BY = re.compile(r"\bby\s*\(([^)]*)\)")


def exported(text):
    """{metric name: set of label names} of every sample of /metrics, plus
    every family with a TYPE (no samples yet: no labels known)."""
    names = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            names.setdefault(line.split(" ")[2], set())
        elif line and not line.startswith("#"):
            m = SAMPLE.match(line)
            names.setdefault(m.group(1), set()).update(k for k, _ in LABEL.findall(m.group(2) or ""))
    return names


def check_names(what, exprs, names):
    """Every metric EXPRS name is one /metrics exports, and every label they
    group by is one the metric has (or a target label Prometheus adds)."""
    for e in exprs:
        used = METRIC_NAME.findall(e)
        # An alert on a recording rule (capgate:...) names no metric itself.
        h.check(used or "capgate:" in e, "%s: no capgate metric in %r" % (what, e))
        if not used:
            continue
        for n in used:
            h.check(n in names, "%s names %s, which /metrics does not export: %r" % (what, n, e))
        have = set().union(*(names[n] for n in used)) | {"job", "instance"}
        for grp in BY.findall(e):
            for lbl in (x.strip() for x in grp.split(",") if x.strip()):
                h.check(lbl in have, "%s groups by %r, a label %s lack: %r" % (what, lbl, used, e))


def test_alert_rules_check_and_unit_tests():
    """docs/monitoring/capgate.rules.yml passes promtool check rules, its
    unit tests pass (each alert fires on its trouble, not its look-alike:
    a slow upstream never fires the decide-latency alert), and it names only
    metrics and labels /metrics exports."""
    tool = promtool()
    p = subprocess.run([tool, "check", "rules", RULES], capture_output=True, timeout=60)
    h.check(p.returncode == 0, "promtool check rules: %s %s" % (p.stdout.decode(), p.stderr.decode()))
    p = subprocess.run([tool, "test", "rules", RULES_TEST], capture_output=True, timeout=120)
    h.check(p.returncode == 0, "promtool test rules: %s %s" % (p.stdout.decode(), p.stderr.decode()))
    with open(RULES) as f:
        text = f.read()
    exprs, cur = [], None
    for line in text.splitlines():
        m = re.match(r"^(\s*)expr:\s*(\|)?\s*(.*)$", line)
        if m:
            cur = [m.group(3)] if not m.group(2) else []
            exprs.append(cur)
            indent = None
            continue
        if cur is not None and line.strip() and not re.match(r"^\s*(for|labels|annotations|- )", line):
            cur.append(line.strip())
        else:
            cur = None
    exprs = [" ".join(e) for e in exprs]
    h.check(len(exprs) == 10, "expected 10 expressions in the rules file, parsed %d" % len(exprs))
    # Recording rules' own names (capgate:...) are not exported metrics.
    g, _ = busy_gateway()
    _, _, mtext = scrape(g)
    check_names("rule", exprs, exported(mtext))


def _targets(panels):
    for p in panels:
        if p.get("type") == "row":
            yield from _targets(p.get("panels", []))
            continue
        for t in p.get("targets", []):
            yield p, t


def test_dashboard_names_what_metrics_exports():
    """docs/monitoring/capgate-dashboard.json: a Grafana dashboard whose every
    query is valid PromQL (promtool, as recording rules) and names metrics
    and labels /metrics exports; it covers decisions by outcome and rule,
    latency by route, Redis, and the upstreams with their queues."""
    with open(DASHBOARD) as f:
        d = json.load(f)
    h.check(d.get("uid") and d.get("title") and isinstance(d.get("panels"), list), "not a dashboard")
    ids = [p["id"] for p in d["panels"]]
    h.check(len(ids) == len(set(ids)), "panel ids repeat: %r" % ids)
    cells = set()
    for p in d["panels"]:
        gp = p["gridPos"]
        h.check(gp["x"] + gp["w"] <= 24, "panel %r wider than the grid" % p["title"])
        for x in range(gp["x"], gp["x"] + gp["w"]):
            for y in range(gp["y"], gp["y"] + gp["h"]):
                h.check((x, y) not in cells, "panel %r overlaps another" % p["title"])
                cells.add((x, y))
    targets = list(_targets(d["panels"]))
    h.check(len(targets) >= 20, "only %d queries" % len(targets))
    for p, t in targets:
        h.check(t.get("refId") and t.get("expr"), "panel %r: a target without refId/expr" % p["title"])
        h.check(p.get("datasource", {}).get("uid") == "${datasource}", "panel %r: datasource" % p["title"])
    exprs = [t["expr"] for _, t in targets]
    # Grafana's variables, as Grafana would fill them in.
    concrete = [e.replace("$__rate_interval", "5m").replace("$instance", ".*").replace("$job", ".*")
                for e in exprs]
    for e in concrete:
        h.check("$" not in e, "an unknown variable in %r" % e)
    rules = os.path.join(h.mkdtemp("capgate-dash-"), "dashboard.rules.yml")
    with open(rules, "w") as f:
        f.write("groups:\n  - name: dashboard\n    rules:\n")
        for k, e in enumerate(concrete):
            f.write("      - record: dashboard:q%d\n        expr: %s\n" % (k, json.dumps(e)))
    tool = promtool()
    p = subprocess.run([tool, "check", "rules", rules], capture_output=True, timeout=60)
    h.check(p.returncode == 0, "a dashboard query is not valid PromQL: %s %s"
            % (p.stdout.decode(), p.stderr.decode()))
    g, _ = busy_gateway()
    _, _, mtext = scrape(g)
    names = exported(mtext)
    check_names("dashboard", concrete, names)
    used = set(n for e in concrete for n in METRIC_NAME.findall(e))
    for must in ("capgate_decisions_total", "capgate_http_request_duration_seconds_bucket",
                 "capgate_redis_up", "capgate_redis_rtt_seconds_bucket", "capgate_deliveries_total",
                 "capgate_deferred_messages", "capgate_dead_letters", "process_resident_memory_bytes"):
        h.check(must in used, "the dashboard does not show %s" % must)
    h.check(any("by (route, le)" in e for e in concrete), "no latency by route")
    h.check(any("rule" in e and "capgate_decisions_total" in e for e in concrete), "no decisions by rule")
    h.check(any("by (upstream, outcome)" in e for e in concrete), "no deliveries by upstream and outcome")
    # Every capgate family of /metrics is on the dashboard somewhere.
    shown = used | set(re.sub(r"_(bucket|sum|count)$", "", n) for n in used)
    missing = sorted(n for n in names if n.startswith("capgate_") and n not in shown
                     and re.sub(r"_(bucket|sum|count)$", "", n) not in shown)
    h.check(not missing, "capgate families not on the dashboard: %r" % missing)

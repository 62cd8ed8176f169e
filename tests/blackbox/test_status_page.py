"""Status page (GET /status.html): served self-contained, rendered by
headless Chromium, shows what GET /status says.

The page is driven through Chromium's --virtual-time-budget: timers run in
virtual time (2 s polls pass in milliseconds) while fetches pause it, so a
budget of 8000 ms gives about five polls.  Two tests run the page against
a small stand-in server (ThreadingHTTPServer in this process) that serves
the page taken from the daemon and a synthetic /status: one with every
field the page knows (proxy, reloads, per-rule counts, latencies, hostile
strings), one with the old minimal shape that then starts failing.

Chromium is started in its own session and its whole process group is
killed (SIGKILL, by group id) when a run ends, plus any leftover process
whose command line names the run's private profile directory.
"""

import html.parser
import json
import math
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import harness as h

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_TIMEOUT = 60
ARTIFACTS = os.path.join(h.REPO, "build", "artifacts")
SCREENSHOT = os.path.join(ARTIFACTS, "status-page.png")
PAGE_SOURCE = os.path.join(h.REPO, "src", "status.html")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DASH = "\u2013"
# createElementNS needs the SVG namespace name; it is an identifier, never fetched.
SVG_NS = "http://www.w3.org/2000/svg"


# ------------------------------------------------------------------ Chromium

def _leftovers(marker):
    """PIDs of processes whose command line contains MARKER (our profile dir)."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open("/proc/%s/cmdline" % d, "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if marker.encode() in cmd:
            pids.append(int(d))
    return pids


def _reap(proc, profile):
    try:
        os.killpg(proc.pid, signal.SIGKILL)     # own session: pgid == pid
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:  # pragma: no cover
        pass
    deadline = time.monotonic() + 5
    while True:
        left = _leftovers(profile)
        if not left:
            return
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            raise h.HarnessError("chromium processes survived SIGKILL: %r" % left)
        time.sleep(0.1)


def chromium(url, *extra, budget_ms=8000, timeout=CHROMIUM_TIMEOUT):
    """Runs headless Chromium on URL; returns (rc, stdout, stderr)."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        raise h.HarnessError("chromium not found (apt-get install -y chromium)")
    profile = h.mkdtemp("capgate-chromium-")
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", "--user-data-dir=" + profile,
           "--virtual-time-budget=%d" % budget_ms] + list(extra) + [url]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=profile, start_new_session=True)
    try:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise h.TestFailure("chromium did not finish within %ss: %s" % (timeout, " ".join(cmd)))
    finally:
        _reap(proc, profile)
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def dump_dom(url, budget_ms=8000):
    rc, out, err = chromium(url, "--dump-dom", budget_ms=budget_ms)
    h.check(rc == 0 and "<body" in out,
            "chromium --dump-dom failed (rc=%s)\nstdout: %s\nstderr: %s" % (rc, out[-1500:], err[-3000:]))
    return Dom(out)


# ----------------------------------------------------------------------- DOM

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
        "source", "track", "wbr"}


class Node:
    def __init__(self, tag, attrs, parent):
        self.tag = tag
        self.attrs = dict(attrs)
        self.parent = parent
        self.children = []

    def iter(self):
        yield self
        for c in self.children:
            if isinstance(c, Node):
                yield from c.iter()

    def text(self):
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def hidden(self):
        """Hidden by its own or an ancestor's `hidden` attribute."""
        n = self
        while n is not None:
            if "hidden" in n.attrs:
                return True
            n = n.parent
        return False

    def find_all(self, pred):
        return [n for n in self.iter() if pred(n)]

    def __repr__(self):
        return "<%s %s>%s" % (self.tag, " ".join("%s=%r" % kv for kv in self.attrs.items()),
                              self.text()[:200])


class _Builder(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {}, None)
        self.cur = self.root

    def handle_starttag(self, tag, attrs):
        n = Node(tag, attrs, self.cur)
        self.cur.children.append(n)
        if tag not in VOID:
            self.cur = n

    def handle_startendtag(self, tag, attrs):
        self.cur.children.append(Node(tag, attrs, self.cur))

    def handle_endtag(self, tag):
        n = self.cur
        while n is not self.root and n.tag != tag:
            n = n.parent
        if n is not self.root:
            self.cur = n.parent

    def handle_data(self, data):
        self.cur.children.append(data)


class Dom:
    def __init__(self, text):
        self.html = text
        b = _Builder()
        b.feed(text)
        b.close()
        self.root = b.root
        bodies = self.root.find_all(lambda n: n.tag == "body")
        h.check(bodies, "no <body> in the dumped DOM")
        self.body = bodies[0]

    def by_id(self, id_):
        found = self.root.find_all(lambda n: n.attrs.get("id") == id_)
        h.check(found, "no element with id=%r in the page" % id_)
        return found[0]

    def metric_node(self, name):
        found = self.root.find_all(lambda n: n.attrs.get("data-metric") == name)
        h.check(found, "no element with data-metric=%r in the page" % name)
        return found[0]

    def metric(self, name):
        """Visible text of the data-metric element (whitespace-trimmed)."""
        return self.metric_node(name).text().strip()

    def value(self, name):
        """Raw value (data-value) of a data-metric element, as a number when it is one."""
        n = self.metric_node(name)
        v = n.attrs.get("data-value")
        h.check(v is not None, "data-metric=%r has no data-value (text %r)" % (name, n.text()))
        try:
            f = float(v)
            return int(f) if f == int(f) else f
        except ValueError:
            return v

    def chart(self, name):
        found = self.root.find_all(lambda n: n.tag == "svg" and n.attrs.get("data-chart") == name)
        h.check(found, "no <svg data-chart=%r> in the page" % name)
        return found[0]

    def points(self, name):
        return int(self.chart(name).attrs.get("data-points", "-1"))

    def updated(self):
        return int(self.body.attrs.get("data-updated", "-1"))

    def banner_shown(self):
        return not self.by_id("error-banner").hidden()

    def rule_bars(self):
        chart = self.chart("rules")
        return [g for g in chart.iter() if g.tag == "g" and "data-rule" in g.attrs]


def _num_text(s):
    return float(s.replace(",", "").replace("\u2009", ""))


# ---------------------------------------------------------- stand-in server

class StubServer:
    """Serves PAGE at /status.html and STATUS_FN(n) (n = 1, 2, ... the count of
    /status requests) at /status: a dict is sent as JSON 200, an int as
    that HTTP status with a small body, a tuple (status, content_type, bytes)
    as it is."""

    def __init__(self, page, status_fn):
        self.page = page
        self.status_fn = status_fn
        self.count = 0
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                path = self.path.split("?")[0]
                if path == "/status.html":
                    self._send(200, "text/html; charset=utf-8", stub.page)
                elif path == "/status":
                    with stub.lock:
                        stub.count += 1
                        n = stub.count
                    r = stub.status_fn(n)
                    if isinstance(r, int):
                        self._send(r, "application/json", b'{"error":{"code":"stub","message":"stub"}}')
                    elif isinstance(r, tuple):
                        self._send(*r)
                    else:
                        self._send(200, "application/json", json.dumps(r).encode())
                else:
                    self._send(404, "text/plain", b"not found")

            def _send(self, status, ctype, data):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path="/status.html"):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def served_page():
    """The page as the daemon serves it (not the file on disk)."""
    g = h.shared_gateway()
    r = g.get("/status.html")
    h.expect_status(r, 200)
    return r.raw


# -------------------------------------------------------------------- traffic

def make_decisions(g):
    """2 allow + 1 defer (email-daily) for one user, 1 allow + 1 deny
    (campaign-once) for another, an opted-out user denied."""
    u = h.uid("page")
    h.expect_decision(g.decide(u, "email"), "allow", "ok")
    h.expect_decision(g.decide(u, "email"), "allow", "ok")
    h.expect_decision(g.decide(u, "email"), "defer", "cap", rule="email-daily")
    u2 = h.uid("page")
    h.expect_decision(g.decide(u2, "push", campaign="spring"), "allow", "ok")
    h.expect_decision(g.decide(u2, "push", campaign="spring"), "deny", "cap", rule="campaign-once")
    u3 = h.uid("page")
    r = g.consent(u3, "email", "marketing", "opt_out")
    h.check(r.status in (200, 201, 204), "consent opt_out failed", r)
    h.expect_decision(g.decide(u3, "email"), "deny", "opted_out")


def load_batch(g, n, rng):
    """The traffic between two polls of the page: a few users whose number
    follows a slow wave, each with 1-3 e-mails (the third is deferred by
    email-daily), some campaign repeats (denied by campaign-once), some SMS
    without opt-in (denied), now and then a malformed request."""
    users = max(1, int(9 + 6 * math.sin(n / 8.0) + 3 * math.sin(n / 2.7) + rng.random() * 3))
    for _ in range(users):
        u = h.uid("load")
        for _ in range(rng.choice((1, 1, 2, 2, 3))):
            h.expect_status(g.decide(u, "email"), 200)
        if rng.random() < 0.3:
            c = "c%d" % rng.randrange(4)
            g.decide(u, "push", campaign=c)
            g.decide(u, "push", campaign=c)
        if rng.random() < 0.12:
            g.decide(u, "sms")
    if n % 9 == 0:
        g.post("/v1/decide", b"{not json")


# ---------------------------------------------------------------------- tests

def test_page_served_self_contained():
    g = h.shared_gateway()
    r = g.get("/status.html")
    h.expect_status(r, 200)
    ct = (r.header("Content-Type") or "").lower()
    h.check(ct.startswith("text/html"), "GET /status.html: Content-Type %r" % ct, r)
    page = r.raw.decode("utf-8")

    r2 = g.get("/status", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    h.expect_status(r2, 200)
    h.check((r2.header("Content-Type") or "").lower().startswith("text/html"),
            "GET /status with Accept: text/html is not text/html", r2)
    h.check(r2.raw == r.raw, "GET /status (Accept: text/html) differs from GET /status.html")
    r3 = g.get("/status")
    h.expect_json_content_type(r3)

    with open(PAGE_SOURCE, "rb") as f:
        h.check(f.read() == r.raw, "the served page differs from src/status.html: stale binary? (run make)")

    low = page.lower()
    h.check(low.startswith("<!doctype html>"), "page does not start with <!doctype html>")
    h.check("<style>" in low and "<script>" in low, "page has no inline <style> / <script>")
    scrubbed = page.replace(SVG_NS, "")
    for bad in ("http://", "https://", "@import", "<iframe", "<img", "<object",
                "<embed", "new function", "innerhtml", "outerhtml", "insertadjacenthtml",
                "document.write", "xmlhttprequest", "websocket", "eventsource", "sendbeacon"):
        h.check(bad not in scrubbed.lower(), "page contains %r" % bad)
    for pat in (r"\burl\(", r"\bimport\s*\(", r"\beval\s*\(", r"\bsetTimeout\(\s*['\"`]"):
        h.check(not re.search(pat, page, re.I), "page matches %r" % pat)
    h.check(page.count(SVG_NS) <= 1, "the SVG namespace name is used more than once")
    # The only URL attribute allowed is the inline (data:) icon, which also
    # keeps browsers from asking for /favicon.ico.
    for m in re.finditer(r"""\b(src|href|action|srcset|poster|data)\s*=\s*["']?([^"'\s>]*)""", page, re.I):
        h.check(m.group(2).startswith("data:"), "page has %s=%r: it must load nothing" % (m.group(1), m.group(2)[:80]))
    links = re.findall(r"<link\b[^>]*>", page, re.I)
    h.check(all('rel="icon"' in ln for ln in links), "page has <link> elements other than the icon: %r" % links)
    for m in re.finditer(r"""fetch\(\s*(['"`])(.*?)\1""", page):
        h.check(m.group(2) in ("status", "/status"), "page fetches %r" % m.group(2))
    h.check("cache: 'no-store'" in page or 'cache: "no-store"' in page, "fetch without cache: 'no-store'")


def test_page_shows_live_numbers():
    g = h.Gateway()
    make_decisions(g)
    dom = dump_dom("http://127.0.0.1:%d/status.html" % g.port)
    st = g.get("/status").body
    d = st["decisions"]

    h.check(dom.updated() >= 2, "body data-updated=%s, expected >= 2 successful polls" % dom.updated())
    h.check(not dom.banner_shown(), "error banner shown: %r" % dom.by_id("error-banner").text())
    for k in ("allow", "defer", "deny"):
        h.check(dom.value("total-" + k) == d[k], "total-%s shows %r, /status says %r"
                % (k, dom.value("total-" + k), d[k]))
        h.check(_num_text(dom.metric("total-" + k)) == d[k], "total-%s text %r" % (k, dom.metric("total-" + k)))
        rate = dom.metric("rate-" + k)
        h.check(rate and (rate == DASH or _num_text(rate) >= 0), "rate-%s shows %r" % (k, rate))
    h.check((d["allow"], d["defer"], d["deny"]) == (3, 1, 2), "unexpected decision totals %r" % d)
    h.check(dom.points("decisions") >= 2, "decisions chart has %d points" % dom.points("decisions"))
    h.check(dom.chart("decisions").attrs.get("data-series") == "3", "decisions chart is not 3 series")
    h.check(dom.points("redis-latency") >= 2, "redis latency chart has %d points" % dom.points("redis-latency"))
    h.check(dom.points("http") >= 2, "http chart has %d points" % dom.points("http"))

    h.check(dom.value("redis-connected") == "yes" and dom.metric("redis-connected") == "connected",
            "Redis not shown connected: %r" % dom.metric_node("redis-connected"))
    # Counters only grow, so the page's last poll and our later /status agree
    # on an idle gateway.  "pending" is a gauge: background work (the
    # dispatcher's queue poll, housekeeping) may have a command in flight at
    # either moment, so only its shape can be compared.
    for k in ("timeouts", "reconnects"):
        h.check(dom.value("redis-" + k) == st["redis"][k], "redis-%s shows %r, /status %r"
                % (k, dom.value("redis-" + k), st["redis"][k]))
    pending = dom.value("redis-pending")
    h.check(isinstance(pending, int) and 0 <= pending <= 64, "redis-pending shows %r" % pending)
    h.check(dom.metric("version") == st["version"], "version %r" % dom.metric("version"))
    h.check(dom.value("config-generation") == st["config"]["generation"], "config generation")
    h.check(dom.metric("config-path") == st["config"]["path"], "config path %r" % dom.metric("config-path"))
    for k, key in (("replays", "replays"), ("dry-runs", "dry_runs")):
        h.check(dom.value(k) == d[key], "%s shows %r, /status %r" % (k, dom.value(k), d[key]))
    h.check(dom.value("consents") == st["consents"], "consents %r" % dom.value("consents"))
    h.check(re.fullmatch(r"(\d+d \d+h|\d+h \d+m|\d+m \d+s|\d+s)", dom.metric("uptime")),
            "uptime not human: %r" % dom.metric("uptime"))
    h.check(re.fullmatch(r"\d\d:\d\d:\d\d", dom.metric("refreshed")), "refreshed %r" % dom.metric("refreshed"))
    h.check(isinstance(dom.value("http-active"), int), "http-active not a number")
    h.check(dom.value("http-errors-total") == sum(st["http"]["errors"].values()), "http error total")
    h.check("not_found" not in st["http"]["errors"], "loading the page caused 404s (favicon?): %r"
            % st["http"]["errors"])

    by_rule = d.get("by_rule")
    if by_rule is not None:
        h.check(by_rule.get("email-daily", {}).get("defer") == 1, "/status by_rule: %r" % by_rule)
        bars = {g_.attrs["data-rule"]: g_ for g_ in dom.rule_bars()}
        h.check("email-daily" in bars, "rules chart has no bar for email-daily: %r" % list(bars))
        h.check(bars["email-daily"].attrs.get("data-defer") == "1", "email-daily bar %r" % bars["email-daily"])
        h.check(any(n.tag == "rect" and n.attrs.get("class") == "bar-defer" for n in bars["email-daily"].iter()),
                "email-daily has no defer bar")
        h.check("campaign-once" in bars, "rules chart has no bar for campaign-once: %r" % list(bars))
        h.check(dom.by_id("rules-empty").hidden(), "'no rule has decided yet' shown beside the bars")
    else:
        # An older daemon: the page must say so rather than draw nothing.
        h.check(not dom.by_id("rules-empty").hidden()
                and dom.by_id("rules-empty").text().strip() == "no rule has decided yet",
                "without decisions.by_rule the rules card should say 'no rule has decided yet'")

    want = sorted("%s/%s" % (o, r) for o in ("defer", "deny")
                  for r, n in d["by_reason"].get(o, {}).items() if n)
    got = {n.attrs["data-reason"]: n for n in dom.chart("reasons").iter() if "data-reason" in n.attrs}
    h.check(sorted(got) == want, "reasons chart %r, /status by_reason %r" % (sorted(got), d["by_reason"]))
    h.check(got["deny/opted_out"].attrs.get("data-value") == "1", "opted_out reason %r" % got["deny/opted_out"])

    if st.get("proxy") is None:
        for id_ in ("queue-empty", "upstreams-empty"):
            n = dom.by_id(id_)
            h.check(not n.hidden() and "proxy mode is not configured" in n.text(), "%s: %r" % (id_, n))
        h.check(dom.metric("proxy-deferred-depth") == DASH, "deferred depth invented without proxy")
    lr = st["config"].get("last_reload")
    if lr is None or lr.get("at") is None:
        h.check(dom.metric("reload-at") == "no reload since start", "reload-at %r" % dom.metric("reload-at"))


def test_page_screenshot_under_traffic():
    """build/artifacts/status-page.png: the page on a 1280x1000 screen after
    about 100 polls (200 s of virtual time) of a real daemon under load.

    Virtual time jumps from one poll to the next in no real time, so load
    from an independent thread would land in a few polls only (spikes and
    zeros).  Instead the page is served through a relay whose server thread
    sends each batch of decisions (load_batch) to the daemon before it
    forwards the page's GET /status: every poll sees its own traffic.  The
    daemon reloads its (unchanged) config halfway (SIGHUP)."""
    g = h.Gateway()
    make_decisions(g)
    page = g.get("/status.html").raw
    rng = random.Random(1234)
    failures = []

    def status(n):
        try:
            load_batch(g, n, rng)
            if n == 40:
                g.send_signal(signal.SIGHUP)
        except Exception as e:  # noqa: BLE001 - reported below
            failures.append(e)
        r = g.get("/status")
        return r.status, r.header("Content-Type") or "application/json", r.raw

    os.makedirs(ARTIFACTS, exist_ok=True)
    tmp = os.path.join(h.mkdtemp("capgate-shot-"), "status-page.png")
    if os.path.exists(SCREENSHOT):
        os.unlink(SCREENSHOT)
    relay = StubServer(page, status)
    try:
        rc, out, err = chromium(relay.url(), "--screenshot=" + tmp, "--window-size=1280,1000",
                                "--hide-scrollbars", budget_ms=200000)
        polls = relay.count
    finally:
        relay.close()
    h.check(not failures, "load through the relay failed: %r" % failures[:3])
    h.check(polls >= 50, "the page polled only %d times" % polls)
    h.check(rc == 0 and os.path.isfile(tmp), "chromium --screenshot failed (rc=%s)\nstderr: %s" % (rc, err[-3000:]))
    shutil.copyfile(tmp, SCREENSHOT)
    with open(SCREENSHOT, "rb") as f:
        data = f.read()
    h.check(data[:8] == PNG_MAGIC, "%s is not a PNG (starts %r)" % (SCREENSHOT, data[:8]))
    h.check(len(data) > 10 * 1024, "%s is only %d bytes" % (SCREENSHOT, len(data)))
    w, ht = struct.unpack(">II", data[16:24])
    h.check((w, ht) == (1280, 1000), "screenshot is %dx%d, expected 1280x1000" % (w, ht))
    st = g.get("/status").body
    h.check(st["decisions"]["allow"] > 100, "the load did not reach the daemon: %r" % st["decisions"])


def test_page_shows_failed_reload():
    g = h.Gateway()
    with open(g.config_path, "a") as f:
        f.write("no_such_key: 1\n")
    g.send_signal(signal.SIGHUP)

    def refused():
        b = g.get("/status").body
        lr = b["config"].get("last_reload") or {}
        return b if lr.get("ok") is False else None

    st = h.wait_until(refused, 5, what="a refused reload in /status config.last_reload")
    lr = st["config"]["last_reload"]
    h.check(isinstance(lr.get("error"), str) and lr["error"], "refused reload without an error: %r" % lr)
    dom = dump_dom("http://127.0.0.1:%d/status.html" % g.port, budget_ms=4000)
    h.check(dom.updated() >= 1, "data-updated=%s" % dom.updated())
    h.check(dom.value("reload-state") == "failed", "reload state %r" % dom.metric("reload-state"))
    h.check("bad" in dom.metric_node("reload-state").attrs.get("class", ""), "failed reload badge is not red")
    err = dom.metric_node("reload-error")
    h.check(not err.hidden() and lr["error"] in err.text(), "reload error %r not shown: %r" % (lr["error"], err))
    h.check(dom.value("reload-at") == lr["at"], "reload-at %r, /status %r" % (dom.value("reload-at"), lr["at"]))
    h.check(dom.value("config-generation") == st["config"]["generation"], "generation changed by a refused reload")


def _full_status(n):
    """A /status with every field the page knows, counters growing per poll."""
    rules = {"email-daily": {"defer": 700, "deny": 0}, "campaign-once": {"deny": 300},
             "all-weekly": {"defer": 120, "deny": 5},
             "<img src=x onerror=alert(1)>": {"deny": 90}}
    for i in range(7):
        rules["rule-%d" % i] = {"defer": i + 1}
    return {
        "version": "9.9.9-test", "uptime_s": 3 * 3600 + 12 * 60 + n * 2,
        "redis": {"connected": False, "url": "redis://:hunter2@10.0.0.5:6379/0", "pending": 4, "calls": 1000 + n,
                  "timeouts": 7, "errors": 2, "unavailable": 1, "reconnects": 3, "last_rtt_ms": 0.9,
                  "rtt_ms": {"p50": 0.42, "p99": 3.5}},
        "decisions": {"allow": 1000 + 10 * n, "defer": 500 + 4 * n, "deny": 200 + 2 * n,
                      "by_reason": {"allow": {"ok": 1000}, "defer": {"cap": 400, "quiet_hours": 100},
                                    "deny": {"opted_out": 150, "cap": 50, "weird_new_reason": 1}},
                      "by_rule": rules, "replays": 11, "dry_runs": 0},
        "http": {"requests": 5000 + 40 * n, "active": 3, "connections": 12,
                 "errors": {"invalid_json": 2, "store_unavailable": 5},
                 "latency_ms": {"p50": 1.25, "p99": 18.0}},
        "releases": 4, "consents": 9,
        "proxy": {"deferred_depth": 42 + n, "dead_letters": 3,
                  "upstreams": [
                      {"channel": "email", "url": "https://mailer:s3cr3t@mail.internal/send",
                       "ok": 10, "failed": 2, "last_status": 503,
                       "shaping": {"state": "paused", "pushbacks": 2,
                                   "paused_until": "2024-05-01T10:05:30Z",
                                   "rate": {"per_second": 100, "burst": 20, "use": 1.0,
                                            "backlog_s": 12.4, "queued": 1240},
                                   "warmup": {"warming_up": True, "day": 2, "ceiling": 2000,
                                              "sent": 1500}}},
                      {"channel": "push", "url": "http://push.internal/v1", "ok": 55, "failed": 0,
                       "last_status": 200}]},
        "config": {"generation": 7, "path": "/etc/capgate/capgate.yaml",
                   "last_reload": {"at": "2024-05-01T10:00:00Z", "ok": False,
                                   "error": "caps[0].limit: <script>alert(1)</script> must be > 0"}},
    }


def test_page_shows_every_field_escaped():
    stub = StubServer(served_page(), _full_status)
    try:
        dom = dump_dom(stub.url())
    finally:
        stub.close()
    h.check(dom.updated() >= 3, "data-updated=%s" % dom.updated())
    h.check(not dom.banner_shown(), "error banner shown")
    # 10 allow per 2 s poll: 5/s (virtual time makes the interval exact)
    for k, per_s in (("allow", 5), ("defer", 2), ("deny", 1)):
        v = dom.value("rate-" + k)
        h.check(isinstance(v, (int, float)) and abs(v - per_s) < 0.5, "rate-%s = %r, expected ~%s" % (k, v, per_s))
    h.check(abs(dom.value("http-rate") - 20) < 2, "http-rate %r" % dom.value("http-rate"))
    h.check(dom.metric("uptime").startswith("3h 12m"), "uptime %r" % dom.metric("uptime"))
    h.check(dom.metric("version") == "9.9.9-test", "version")

    bars = dom.rule_bars()
    names = [b.attrs["data-rule"] for b in bars]
    h.check(len(bars) == 6 and dom.points("rules") == 6, "expected the top 6 rules, got %r" % names)
    h.check(names[:4] == ["email-daily", "campaign-once", "all-weekly", "<img src=x onerror=alert(1)>"],
            "rules not sorted by decisions: %r" % names)
    h.check("more rule" in dom.by_id("rules-note").text(), "no note about the rules not shown")
    reasons = [n.attrs["data-reason"] for n in dom.chart("reasons").iter() if "data-reason" in n.attrs]
    h.check(reasons == ["defer/cap", "deny/opted_out", "defer/quiet_hours", "deny/cap", "deny/weird_new_reason"],
            "reasons chart %r" % reasons)
    # hostile strings are text, not markup
    h.check(not dom.root.find_all(lambda n: n.tag == "img"), "a rule name became an <img> element")
    h.check(len(dom.root.find_all(lambda n: n.tag == "script")) == 1, "a string became a <script> element")

    h.check(dom.value("redis-connected") == "no" and dom.metric("redis-connected") == "disconnected",
            "redis should show disconnected")
    h.check("bad" in dom.metric_node("redis-connected").attrs.get("class", ""), "disconnected badge not red")
    h.check(dom.value("redis-p50") == 0.42 and dom.value("redis-p99") == 3.5, "redis p50/p99")
    h.check(not dom.by_id("redis-p99-stat").hidden() and dom.by_id("redis-last-stat").hidden(),
            "with rtt_ms the page should show p50/p99, not the last RTT")
    h.check(dom.chart("redis-latency").attrs.get("data-series") == "2", "latency chart should plot p50 and p99")
    h.check("hunter2" not in dom.html and "s3cr3t" not in dom.html, "a URL password is shown")
    h.check(dom.value("http-p50") == 1.25 and dom.value("http-p99") == 18, "http latency")
    h.check(dom.value("http-error-store_unavailable") == 5 and dom.value("http-error-invalid_json") == 2,
            "http errors by code")
    h.check(dom.value("http-active") == 3 and dom.value("http-connections") == 12, "http active/connections")

    h.check(dom.by_id("queue-empty").hidden() and dom.by_id("upstreams-empty").hidden(),
            "'proxy mode is not configured' shown although proxy is present")
    h.check(dom.value("proxy-deferred-depth") >= 45, "deferred depth %r" % dom.value("proxy-deferred-depth"))
    h.check(dom.value("proxy-dead-letters") == 3, "dead letters")
    h.check(dom.points("deferred-depth") >= 2, "queue depth chart points")
    rows = dom.root.find_all(lambda n: n.tag == "tr" and "data-upstream" in n.attrs)
    h.check([r.attrs.get("data-channel") for r in rows] == ["email", "push"], "upstream rows %r" % rows)
    h.check([r.attrs.get("data-health") for r in rows] == ["bad", "ok"], "upstream health %r"
            % [r.attrs.get("data-health") for r in rows])
    states = [n for n in dom.root.find_all(lambda n: n.attrs.get("data-field") == "state")]
    h.check([n.attrs.get("data-value") for n in states] == ["paused", ""], "states %r" % states)
    text = states[0].text()
    h.check("paused until 10:05:30" in text and "rate 100% of 100/s" in text and "1,240 queued, 12 s ahead" in text
            and "1,500 of 2,000 today" in text, "the email upstream's shaping: %r" % text)

    h.check(dom.value("config-generation") == 7, "generation")
    h.check(dom.value("reload-state") == "failed", "reload state %r" % dom.metric("reload-state"))
    err = dom.metric_node("reload-error")
    h.check(not err.hidden() and "<script>alert(1)</script> must be > 0" in err.text(),
            "reload error not shown verbatim: %r" % err)
    h.check(dom.value("reload-at") == "2024-05-01T10:00:00Z", "reload-at %r" % dom.metric("reload-at"))


def _minimal_status(n):
    """The old /status shape (no by_rule, proxy, last_reload, rtt_ms,
    latency_ms); after three answers the daemon 'breaks' (503)."""
    if n > 3:
        return 503
    return {"version": "0.1.0", "uptime_s": 5 + 2 * n,
            "redis": {"connected": True, "url": "redis://127.0.0.1:6501/0", "pending": 0, "calls": 5,
                      "timeouts": 0, "errors": 0, "unavailable": 0, "reconnects": 0, "last_rtt_ms": 0.192},
            "decisions": {"allow": 4 * n, "defer": n, "deny": 0, "by_reason": {}, "replays": 1, "dry_runs": 0},
            "http": {"requests": 6 * n, "active": 1, "connections": 1, "errors": {}},
            "releases": 0, "consents": 0, "config": {"generation": 1, "path": "cfg.yaml"}}


def test_page_minimal_status_then_failing():
    stub = StubServer(served_page(), _minimal_status)
    try:
        dom = dump_dom(stub.url())
        polls = stub.count
    finally:
        stub.close()
    h.check(polls >= 4, "the page polled /status only %d times" % polls)
    h.check(dom.updated() == 3, "data-updated=%s, expected 3 (then 503s)" % dom.updated())
    h.check(dom.banner_shown(), "no error banner while /status answers 503")
    h.check("HTTP 503" in dom.by_id("error-banner").text(), "banner %r" % dom.by_id("error-banner").text())
    h.check(dom.points("decisions") == 2, "old chart points must stay: %d" % dom.points("decisions"))
    h.check(dom.value("total-allow") == 12, "last good totals must stay: %r" % dom.value("total-allow"))
    n = dom.by_id("rules-empty")
    h.check(not n.hidden() and n.text().strip() == "no rule has decided yet", "rules card: %r" % n)
    for id_ in ("queue-empty", "upstreams-empty"):
        n = dom.by_id(id_)
        h.check(not n.hidden() and n.text().strip() == "proxy mode is not configured", "%s: %r" % (id_, n))
    h.check(dom.metric("reload-at") == "no reload since start", "reload-at %r" % dom.metric("reload-at"))
    h.check(dom.value("reload-state") == "none", "reload-state %r" % dom.metric("reload-state"))
    h.check(dom.metric_node("reload-error").hidden(), "reload error box shown without a reload")
    h.check(not dom.by_id("reasons-empty").hidden(), "no 'every decision so far was allow' without by_reason")
    h.check(not dom.by_id("redis-last-stat").hidden() and dom.value("redis-rtt-last") == 0.192,
            "last RTT fallback not shown")
    h.check(dom.by_id("redis-p50-stat").hidden(), "p50 shown although rtt_ms is absent")
    h.check(dom.metric("http-p50") == DASH and dom.metric("http-p99") == DASH,
            "http latency invented: %r %r" % (dom.metric("http-p50"), dom.metric("http-p99")))
    h.check(dom.metric("proxy-deferred-depth") == DASH, "deferred depth invented")


# ------------------------------------------------- outage, no data, windows

def screenshot(url, name, budget_ms=6000):
    """build/artifacts/NAME: the page at URL on a 1280x1000 screen."""
    os.makedirs(ARTIFACTS, exist_ok=True)
    tmp = os.path.join(h.mkdtemp("capgate-shot-"), name)
    rc, out, err = chromium(url, "--screenshot=" + tmp, "--window-size=1280,1000", "--hide-scrollbars",
                            budget_ms=budget_ms)
    h.check(rc == 0 and os.path.isfile(tmp), "chromium --screenshot failed (rc=%s)\nstderr: %s" % (rc, err[-3000:]))
    dest = os.path.join(ARTIFACTS, name)
    shutil.copyfile(tmp, dest)
    with open(dest, "rb") as f:
        h.check(f.read(8) == PNG_MAGIC, "%s is not a PNG" % dest)
    return dest


def test_page_during_redis_outage():
    """Redis killed: the header dot turns red and says why (before, only the
    Redis badge did, the dot stayed green), the Redis card says decisions
    cannot be checked, and "unavailable" counts the refused decides (it
    said 0).  build/artifacts/status-page-outage.png."""
    g = h.Gateway()
    make_decisions(g)
    g.redis.kill()
    h.wait_until(lambda: g.get("/readyz").status == 503, 5, what="the gateway to see Redis gone")
    refused = sum(g.decide(h.uid("outage"), "email").status == 503 for _ in range(4))
    h.check(refused == 4, "decides during the outage were not refused: %d of 4" % refused)
    url = "http://127.0.0.1:%d/status.html" % g.port
    dom = dump_dom(url, budget_ms=4000)
    h.check(dom.updated() >= 1, "data-updated=%s" % dom.updated())
    h.check(not dom.banner_shown(), "the fetch banner is shown although /status answers")
    dot = dom.by_id("health-dot")
    h.check(dot.attrs.get("data-health") == "redis-down", "header dot: %r" % dot)
    h.check("redis-down" in dom.body.attrs.get("class", "").split(), "body class %r: the dot is not red"
            % dom.body.attrs.get("class"))
    h.check(dom.metric("health-text") == "Redis disconnected", "header text %r" % dom.metric("health-text"))
    h.check(dom.value("redis-connected") == "no", "Redis badge %r" % dom.metric("redis-connected"))
    h.check(not dom.by_id("redis-down").hidden(), "no outage notice in the Redis card")
    h.check(dom.value("redis-unavailable") >= refused, "unavailable shows %r after %d refused decides"
            % (dom.value("redis-unavailable"), refused))
    h.check(dom.value("redis-down-refused") >= refused, "refused count %r" % dom.value("redis-down-refused"))
    h.check(dom.metric("redis-p99") == DASH, "a Redis p99 %r shown while no call is answered"
            % dom.metric("redis-p99"))
    screenshot(url, "status-page-outage.png")
    # Back: the dot turns green again.
    g.redis.start()
    h.wait_until(lambda: g.get("/readyz").status == 200, 10, what="Redis back")
    dom = dump_dom(url, budget_ms=3000)
    h.check(dom.by_id("health-dot").attrs.get("data-health") == "ok", "dot after recovery %r"
            % dom.by_id("health-dot"))
    h.check(dom.by_id("redis-down").hidden(), "outage notice still shown")


def test_page_with_no_data():
    """A gateway that has decided nothing: no panel claims anything (it said
    "every decision so far was allow", a Redis p50 of 0.00 ms and "all
    healthy" upstreams).  build/artifacts/status-page-empty.png."""
    from upstream_server import FakeUpstream
    up = FakeUpstream().start()
    g = h.Gateway(overrides={"channels": {"email": {"upstream": {"url": up.url + "/send", "timeout_ms": 1000}},
                                          "push": {}, "sms": {"requires_opt_in": True}}})
    url = "http://127.0.0.1:%d/status.html" % g.port
    dom = dump_dom(url, budget_ms=4000)
    h.check(dom.updated() >= 1, "data-updated=%s" % dom.updated())
    n = dom.by_id("reasons-empty")
    h.check(not n.hidden() and n.text().strip() == "no decision yet", "reasons card with no data: %r" % n)
    h.check(dom.by_id("rules-empty").text().strip() == "no rule has decided yet", "rules card")
    for k in ("total-allow", "total-defer", "total-deny"):
        h.check(dom.value(k) == 0, "%s = %r" % (k, dom.value(k)))
    st = g.get("/status").body
    if st["redis"]["calls"] == 0:
        for k in ("redis-p50", "redis-p99"):
            h.check(dom.metric(k) == DASH, "%s shows %r without a single call" % (k, dom.metric(k)))
    sub = dom.by_id("upstreams-sub").text()
    h.check("all healthy" not in sub and "no deliveries yet" in sub, "upstreams: %r" % sub)
    h.check(dom.by_id("health-dot").attrs.get("data-health") == "ok", "dot %r" % dom.by_id("health-dot"))
    screenshot(url, "status-page-empty.png", budget_ms=4000)


def _buckets(fast, slow):
    """le_ms of the daemon's histogram; FAST samples under 1 ms, SLOW in 10-25 ms."""
    le = [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 1000, 5000, None]
    counts = [0] * len(le)
    counts[3] = fast
    counts[7] = slow
    return {"le_ms": le, "counts": counts}


def _shifting_status(n):
    """Ten polls of fast Redis calls (1000 a poll), then only slow ones (20 a
    poll).  Since start the p99 stays under 1 ms; over the last 10 s it is
    the slow calls'."""
    fast = 1000 * min(n, 10)
    slow = 20 * max(0, n - 10)
    body = _minimal_status(1)
    body["uptime_s"] = 5 + 2 * n
    body["decisions"]["allow"] = 4 * n
    body["redis"].update({"calls": fast + slow, "rtt_ms": {"p50": 0.6, "p99": 0.99},
                          "rtt_buckets": _buckets(fast, slow)})
    body["http"].update({"requests": fast + slow, "latency_ms": {"p50": 0.7, "p99": 0.98},
                         "latency_buckets": _buckets(fast, slow)})
    return body


def test_latency_quantiles_are_of_the_last_10_seconds():
    """The p99 shown is of the last 10 s (two polls' buckets subtracted), and
    the page says so; before, it plotted the since-start p99, which slid
    towards the bulk of old samples."""
    stub = StubServer(served_page(), _shifting_status)
    try:
        dom = dump_dom(stub.url(), budget_ms=40000)
        polls = stub.count
    finally:
        stub.close()
    h.check(polls >= 17, "only %d polls" % polls)
    for k in ("redis-p99", "http-p99"):
        v = dom.value(k)
        h.check(isinstance(v, (int, float)) and 10 <= v <= 25, "%s = %r: not the last 10 s's slow calls "
                "(since start it is under 1 ms)" % (k, v))
    for k in ("redis-p50", "http-p50"):
        v = dom.value(k)
        h.check(isinstance(v, (int, float)) and 10 <= v <= 25, "%s = %r" % (k, v))
    h.check(dom.metric("redis-window") == "p50/p99 of the last 10 s", "window label %r"
            % dom.metric("redis-window"))
    h.check(dom.metric("http-window-k") == "(10 s)", "http window label %r" % dom.metric("http-window-k"))
    h.check("last 10 s" in dom.chart("redis-latency").attrs.get("aria-label", "") or
            "last 10 s" in dom.chart("redis-latency").text(), "chart does not say its window: %r"
            % dom.chart("redis-latency").attrs)

"""Closing the unsubscribe loop (issue 16): sealed tokens, the links senders
get, RFC 8058 one-click, the hosted preference page (also in headless
Chromium, through chromedriver, with JavaScript off) and the public
listener that serves only those pages."""

import base64
import ctypes
import ctypes.util
import hashlib
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import time
import urllib.parse
import urllib.request

import harness as h
import openapi_check as oc

ARTIFACTS = os.path.join(h.REPO, "build", "artifacts")
SLOW = bool(h.WRAP) or bool(os.environ.get("CAPGATE_SANITIZED"))

_spec = []


def documented(r, path, method="post"):
    if not _spec:
        _spec.append(oc.load_spec(os.path.join(h.REPO, "docs", "openapi.yaml")))
    errs = oc.check_response(_spec[0], path, method, r.status, r.header("Content-Type"),
                             r.body, r.headers)
    h.check(not errs, "answer does not match docs/openapi.yaml:\n    " + "\n    ".join(errs), r)


def public_gateways(n=1, redis=None, public=None, **overrides):
    """N gateways on one Redis and one key, each with a public listener."""
    redis = redis or h.start_redis()
    gs = []
    for _ in range(n):
        port = h.free_port()
        pub = {"base_url": "http://127.0.0.1:%d/" % port, "listen": "127.0.0.1:%d" % port,
               "organisation": "Example Shop & Co"}
        pub.update(public or {})
        cfg = dict(overrides, public=pub)
        g = h.Gateway(overrides=cfg, redis=redis, key_file=gs[0].key_file if gs else None)
        g.public_port = port
        gs.append(g)
    return gs


def link(g, user, channel="email", category="marketing"):
    body = {"user": user}
    if channel is not None:
        body["channel"] = channel
    if category is not None:
        body["category"] = category
    r = g.post("/v1/unsubscribe-links", body)
    h.expect_status(r, 200)
    documented(r, "/v1/unsubscribe-links")
    return r.body["url"]


def token_of(url):
    return urllib.parse.urlsplit(url).path.split("/u/", 1)[1]


def public(g, method, path, body=None, headers=None):
    hdrs = {"Content-Type": "application/x-www-form-urlencoded"}
    hdrs.update(headers or {})
    return h.http_request(g.public_port, method, path, body=body, headers=hdrs)


def one_click(g, url, multipart=False):
    path = urllib.parse.urlsplit(url).path
    if multipart:
        b = "----capgate"
        body = ("--%s\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\n"
                "One-Click\r\n--%s--\r\n" % (b, b))
        return public(g, "POST", path, body,
                      {"Content-Type": "multipart/form-data; boundary=%s" % b})
    return public(g, "POST", path, "List-Unsubscribe=One-Click")


def decision(g, user, channel="email", category="marketing"):
    r = g.decide(user, channel, category=category)
    h.expect_status(r, 200)
    return r.body["decision"], r.body["reason"]


def html(r):
    return r.raw.decode("utf-8", errors="replace")


# ---- a second implementation of the token, to make genuine expired ones ----

def _sodium():
    lib = ctypes.CDLL(ctypes.util.find_library("sodium") or "libsodium.so.23")
    h.check(lib.sodium_init() >= 0, "libsodium init")
    return lib


def seal_token(key_file, user_hex, channel, category, expires_s):
    """What token.c seals, sealed here with the key derived as pseudonym.c
    does (BLAKE2b): a token capgate must take as genuine."""
    with open(key_file, "rb") as f:
        secret = f.read()
    key = hashlib.blake2b(secret, digest_size=32).digest()
    token_key = hashlib.blake2b(b"capgate token", key=key, digest_size=32).digest()
    plain = (b"\x01" + struct.pack(">I", expires_s) + bytes.fromhex(user_hex) +
             bytes([len(channel)]) + channel.encode() + bytes([len(category)]) + category.encode())
    lib = _sodium()
    nonce = os.urandom(24)
    out = ctypes.create_string_buffer(len(plain) + 16)
    clen = ctypes.c_ulonglong()
    rc = lib.crypto_aead_xchacha20poly1305_ietf_encrypt(
        out, ctypes.byref(clen), plain, ctypes.c_ulonglong(len(plain)), None,
        ctypes.c_ulonglong(0), None, nonce, token_key)
    h.check(rc == 0, "sealing failed")
    return base64.urlsafe_b64encode(nonce + out.raw[:clen.value]).rstrip(b"=").decode()


def open_token(key_file, token):
    """(pseudonym hex, channel, category, expires) of a genuine token."""
    with open(key_file, "rb") as f:
        secret = f.read()
    key = hashlib.blake2b(secret, digest_size=32).digest()
    token_key = hashlib.blake2b(b"capgate token", key=key, digest_size=32).digest()
    box = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    lib = _sodium()
    out = ctypes.create_string_buffer(len(box))
    plen = ctypes.c_ulonglong()
    rc = lib.crypto_aead_xchacha20poly1305_ietf_decrypt(
        out, ctypes.byref(plen), None, box[24:], ctypes.c_ulonglong(len(box) - 24), None,
        ctypes.c_ulonglong(0), box[:24], token_key)
    h.check(rc == 0, "the token opens with the key file's token key")
    p = out.raw[:plen.value]
    cl = p[21]
    return (p[5:21].hex(), p[22:22 + cl].decode(), p[23 + cl:].decode(),
            struct.unpack(">I", p[1:5])[0])


def pseudonym_of(key_file, user):
    """pseudonym.c's user pseudonym, computed here: BLAKE2b keyed with the
    derived key, 16 bytes, of the domain byte 'u' and the id."""
    with open(key_file, "rb") as f:
        secret = f.read()
    key = hashlib.blake2b(secret, digest_size=32).digest()
    return hashlib.blake2b(b"u" + user.encode(), key=key, digest_size=16).hexdigest()


# ----------------------------------------------------------------------- tests

def test_links_are_sealed_scoped_and_documented():
    g, = public_gateways()
    u = h.uid("link")
    url = link(g, u)
    h.check(url.startswith("http://127.0.0.1:%d/u/" % g.public_port), "base_url/u/: %r" % url)
    h.check(u not in url and "email" not in url and "marketing" not in url,
            "the link shows neither the person nor its scope: %r" % url)
    r = g.post("/v1/unsubscribe-links", {"user": u, "channel": "email"})
    h.check(r.body["category"] == "*" and r.body["headers"] == {
        "List-Unsubscribe": "<%s>" % r.body["url"],
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}, "RFC 8058 headers: %r" % (r.body,))
    h.check(r.body["url"] != url, "two links differ (a fresh nonce each)")
    for bad, code in (({"user": u, "channel": "fax"}, "unknown_channel"),
                      ({"user": u, "category": "spam"}, "unknown_category"),
                      ({"channel": "email"}, "missing_field"),
                      ({"user": u, "extra": 1}, "unknown_field")):
        r = g.post("/v1/unsubscribe-links", bad)
        h.check(r.status == 400 and r.body["error"]["code"] in (code, "invalid_field"),
                "%r -> %r" % (bad, r))
        documented(r, "/v1/unsubscribe-links")
    # Without a public listener there is no link to give.
    plain = h.Gateway()
    r = plain.post("/v1/unsubscribe-links", {"user": u})
    h.expect_error(r, 400, "no_public_listener")
    documented(r, "/v1/unsubscribe-links")
    # An allowed decision carries its link; a denied one does not.
    r = g.decide(h.uid("d"), "email", category="marketing")
    h.check(r.body["decision"] == "allow" and
            r.body.get("unsubscribe_url", "").startswith("http://127.0.0.1:%d/u/" % g.public_port),
            "an allowed decide carries unsubscribe_url: %r" % (r.body,))
    documented(r, "/v1/decide")
    h.check("unsubscribe_url" not in plain.decide(h.uid("d"), "email").body,
            "no public listener, no link")
    h.check(u not in g.logs() and token_of(url) not in g.logs(), "neither id nor token logged")


def test_one_click_denies_the_next_decide_on_every_gateway():
    g1, g2 = public_gateways(2)
    u = h.uid("oc")
    h.check(decision(g1, u) == ("allow", "ok"), "allowed before")
    url = link(g1, u)
    # GET (a link scanner) changes nothing.
    for _ in range(3):
        r = public(g2, "GET", urllib.parse.urlsplit(url).path)
        h.expect_status(r, 200)
    h.check(decision(g2, u) == ("allow", "ok"), "GET changed nothing")
    t0 = time.monotonic()
    r = one_click(g2, url)
    h.expect_status(r, 200)
    d1, d2 = decision(g1, u), decision(g2, u)
    took = time.monotonic() - t0
    h.check(r.header("Location") is None and r.header("Set-Cookie") is None,
            "no redirect, no cookie: %r" % (r.headers,))
    h.check(d1 == ("deny", "opted_out") and d2 == ("deny", "opted_out"),
            "the next decide on both gateways denies: %r %r" % (d1, d2))
    print("  one-click POST to a deny on both gateways: %.1f ms" % (took * 1000))
    # Its scope only: another category still goes.
    h.check(decision(g1, u, category="health")[1] != "opted_out", "health is not opted out")
    # The consent record says how: source one-click.
    r = g1.post("/v1/users/show", {"user": u})
    h.expect_status(r, 200)
    srcs = [c.get("source") for c in r.body["consent"]]
    h.check("one-click" in srcs, "recorded with source one-click: %r" % r.body["consent"])
    # Multipart (RFC 8058 allows it) works the same.
    u2 = h.uid("oc")
    r = one_click(g1, link(g1, u2, category=None), multipart=True)
    h.expect_status(r, 200)
    h.check(decision(g2, u2, category="health")[0] == "deny", "every category of email")
    logs = g1.logs() + g2.logs()
    h.check(token_of(url) not in logs and u not in logs, "no token nor id in the logs")


def test_forged_altered_truncated_and_expired_tokens_change_nothing():
    g, = public_gateways()
    u = h.uid("bad")
    url = link(g, u)
    tok = token_of(url)
    flip = "A" if tok[10] != "A" else "B"
    altered = tok[:10] + flip + tok[11:]
    p = pseudonym_of(g.key_file, u)
    expired = seal_token(g.key_file, p, "email", "marketing", int(time.time()) - 5)
    forged = seal_token(os.devnull, p, "email", "marketing", int(time.time()) + 3600)
    for bad, status in ((altered, 404), (tok[:-3], 404), (forged, 404), ("x" * 40, 404),
                        (expired, 410)):
        for method in ("GET", "POST"):
            r = public(g, method, "/u/" + bad, "List-Unsubscribe=One-Click")
            h.check(r.status == status and "text/html" in r.header("Content-Type"),
                    "%s of a bad token -> %s, a page: %r" % (method, status, r))
            h.check("link" in html(r), "a friendly page: %r" % html(r)[:300])
    h.check(decision(g, u) == ("allow", "ok"), "nothing changed")
    logs = g.logs()
    h.check(re.search(r'public link refused" token=[0-9a-f]{16} why=expired', logs) and
            altered not in logs and expired not in logs and tok not in logs,
            "a refused token is logged by a short hash only")
    # The genuine token made by our second implementation works: the
    # expired one above was refused for its expiry, not its form.
    fresh = seal_token(g.key_file, p, "email", "marketing", int(time.time()) + 3600)
    h.expect_status(public(g, "POST", "/u/" + fresh, "List-Unsubscribe=One-Click"), 200)
    h.check(decision(g, u) == ("deny", "opted_out"), "the genuine token worked")
    # Replayed after expiry: still nothing (a fresh person, the expired one).
    u3 = h.uid("bad")
    expired3 = seal_token(g.key_file, pseudonym_of(g.key_file, u3), "email", "", 100)
    for _ in range(2):
        h.expect_status(public(g, "POST", "/u/" + expired3, "List-Unsubscribe=One-Click"), 410)
    h.check(decision(g, u3) == ("allow", "ok"), "an expired token replayed changed nothing")


def test_the_public_listener_serves_only_the_pages():
    g, = public_gateways()
    for path in ("/v1/decide", "/v1/send", "/status", "/status.html", "/metrics", "/healthz",
                 "/readyz", "/v1/admin/reload", "/", "/u/", "/u/a/b", "/v3/mail/send"):
        for method in ("GET", "POST"):
            r = public(g, method, path, "{}")
            h.check(r.status == 404, "%s %s on the public listener: %r" % (method, path, r))
    r = public(g, "PUT", "/u/" + token_of(link(g, h.uid())), "")
    h.check(r.status == 405 and r.header("Allow") == "GET, HEAD, POST", "405: %r" % (r,))
    # ... and the API listener does not serve them.
    r = g.get("/u/" + token_of(link(g, h.uid())))
    h.check(r.status in (401, 404), "the API listener has no /u/: %r" % (r,))
    # Bounded per client address (public.max_connections_per_ip).
    g2, = public_gateways(public={"max_connections_per_ip": 2})
    import socket
    socks = [socket.create_connection(("127.0.0.1", g2.public_port)) for _ in range(4)]
    time.sleep(0.3)
    served = 0
    for s in socks:
        s.settimeout(1.0)
        try:
            s.sendall(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
            if s.recv(64).startswith(b"HTTP/1.1 404"):
                served += 1
        except OSError:
            pass
        s.close()
    h.check(served == 2, "2 connections per address served, the rest refused: %d" % served)


def _choices(text):
    """{"email.marketing": checked, ...} from the page's checkboxes."""
    out = {}
    for m in re.finditer(r'<input type="checkbox" id="c-([\w.-]+)-([\w.-]+)" name="c\.[^"]+" '
                         r'value="1"( checked)?>', text):
        out["%s.%s" % (m.group(1), m.group(2))] = bool(m.group(3))
    return out


def _form(text, choices, action="save"):
    pairs = [("shown", k) for k in choices] + [("c." + k, "1") for k, v in choices.items() if v]
    pairs.append(("action", action))
    return urllib.parse.urlencode(pairs)


def test_the_preference_page_shows_saves_and_unsubscribes_from_everything():
    g1, g2 = public_gateways(2)
    u = h.uid("pref")
    h.expect_status(g1.post("/v1/consent", {"user": u, "channel": "sms", "category": "*",
                                            "state": "opt_in", "source": "signup form"}), 200)
    url = link(g1, u)
    path = urllib.parse.urlsplit(url).path
    r = public(g2, "GET", path)
    h.expect_status(r, 200)
    page = html(r)
    h.check(r.header("Content-Type") == "text/html; charset=utf-8" and
            r.header("Cache-Control") == "no-store" and
            r.header("Referrer-Policy") == "no-referrer" and
            "default-src 'none'" in r.header("Content-Security-Policy"), "headers: %r" % r.headers)
    h.check("Example Shop &amp; Co" in page, "the organisation, escaped")
    h.check("<script" not in page and "http" not in page.split("<body", 1)[1],
            "no script, no external asset, no link out")
    h.check(u not in page and pseudonym_of(g1.key_file, u) not in page,
            "no identifier of the person in the page")
    ch = _choices(page)
    h.check(ch.get("email.marketing") is True and ch.get("sms.marketing") is True and
            ch.get("email.health") is False and "email.transactional" not in ch,
            "current choices (health needs an opt-in; transactional is always sent): %r" % ch)
    # Save a change: no more marketing e-mail, health e-mail wanted.
    ch["email.marketing"] = False
    ch["email.health"] = True
    r = public(g1, "POST", path, _form(page, ch))
    h.expect_status(r, 200)
    h.check('id="saved"' in html(r), "the page says it saved")
    h.check(_choices(html(r)) == ch, "the page shows what is stored now: %r" % _choices(html(r)))
    h.check(decision(g2, u) == ("deny", "opted_out"), "marketing e-mail stops")
    h.check(decision(g2, u, category="health")[0] == "allow", "health e-mail goes now")
    h.check(decision(g2, u, "sms")[0] == "allow", "sms untouched")
    r = g1.post("/v1/users/show", {"user": u})
    h.check(any(c.get("source") == "preference-page" for c in r.body["consent"]),
            "source preference-page: %r" % r.body["consent"])
    # Everything: every channel and category stops, but transactional mail.
    r = public(g2, "POST", path, _form(page, ch, action="everything"))
    h.expect_status(r, 200)
    h.check(all(v is False for v in _choices(html(r)).values()), "all off: %r" % _choices(html(r)))
    for c, k in (("email", "marketing"), ("email", "health"), ("sms", "marketing")):
        h.check(decision(g1, u, c, k)[0] == "deny", "%s/%s denied after everything" % (c, k))
    h.check(decision(g1, u, category="transactional")[0] == "allow", "receipts still go")


# -------------------------------------------------------- headless Chromium

CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"


class WebDriver:
    """chromedriver over its W3C WebDriver HTTP API (urllib: nothing to
    install beyond Debian's chromium-driver)."""

    def __init__(self, javascript=False):
        if not os.access(CHROMEDRIVER, os.X_OK):
            raise h.HarnessError("chromedriver not found (apt-get install -y chromium-driver)")
        self.port = h.free_port()
        self.profile = h.mkdtemp("capgate-chromedriver-")
        self.proc = subprocess.Popen([CHROMEDRIVER, "--port=%d" % self.port],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        h.wait_until(lambda: self._ok("/status"), 15, interval=0.1, what="chromedriver up")
        prefs = {} if javascript else {"profile.managed_default_content_settings.javascript": 2}
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": CHROMIUM, "prefs": prefs,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=390,844",
                     "--no-first-run", "--disable-background-networking",
                     "--user-data-dir=" + self.profile]}}}}
        self.session = self.call("POST", "/session", caps)["sessionId"]

    def _ok(self, path):
        try:
            return self.call("GET", path) is not None
        except OSError:
            return False

    def call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request("http://127.0.0.1:%d%s" % (self.port, path), data=data,
                                     method=method, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())["value"]

    def s(self, method, path, body=None):
        return self.call(method, "/session/%s%s" % (self.session, path), body)

    def find(self, css):
        return self.s("POST", "/element", {"using": "css selector", "value": css})[ELEMENT]

    def close(self):
        try:
            self.s("DELETE", "")
        except OSError:
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(5)


def test_the_preference_page_in_headless_chromium_without_javascript():
    g, = public_gateways()
    u = h.uid("chrome")
    url = link(g, u)
    wd = WebDriver(javascript=False)
    try:
        wd.s("POST", "/url", {"url": url})
        # JavaScript is off in this browser: a script would have set the title.
        wd.s("POST", "/url", {"url": "data:text/html,<title>off</title>"
                                     "<script>document.title='on'</script>"})
        h.check(wd.s("GET", "/title") == "off", "JavaScript is disabled in the browser")
        wd.s("POST", "/url", {"url": url})
        h.check("Your choices" in wd.s("GET", "/title"), "the page rendered")
        box = wd.find("#c-email-marketing")
        h.check(wd.s("GET", "/element/%s/selected" % box) is True, "marketing e-mail on")
        label = wd.find("label[for=c-email-marketing]")
        h.check(wd.s("GET", "/element/%s/text" % label) == "Marketing", "the control is labelled")
        png = base64.b64decode(wd.s("GET", "/screenshot"))
        os.makedirs(ARTIFACTS, exist_ok=True)
        with open(os.path.join(ARTIFACTS, "preference-page.png"), "wb") as f:
            f.write(png)
        h.check(png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000, "a screenshot")
        wd.s("POST", "/element/%s/click" % label, {})      # the label toggles the box
        wd.s("POST", "/element/%s/click" % wd.find("button[value=save]"), {})
        h.wait_until(lambda: "Your choices are saved" in wd.s("GET", "/source"), 10,
                     what="the saved page")
        source = wd.s("GET", "/source")
        h.check(u not in source, "no identifier in the page")
        box = wd.find("#c-email-marketing")
        h.check(wd.s("GET", "/element/%s/selected" % box) is False, "shown off after saving")
    finally:
        wd.close()
    h.check(decision(g, u) == ("deny", "opted_out"), "the next decide honours the page")
    h.check(decision(g, u, "push")[0] == "allow", "and nothing else changed")


def test_list_unsubscribe_headers_go_in_each_personalization_of_a_routed_body():
    from upstream_server import FakeUpstream
    from test_routes import SG_USERS, mail, post
    up = FakeUpstream().start()
    route = {"path": "/v3/mail/send", "channel": "email", "user": SG_USERS,
             "message_id": "header:Idempotency-Key",
             "unsubscribe_headers": "json:/personalizations/*/headers"}
    g, = public_gateways(channels={"email": {"upstream": {"url": up.url + "/sendgrid"}}},
                         routes=[route], caps=[])
    a, b, c, d = (h.uid("lu") for _ in range(4))
    h.expect_status(g.post("/v1/consent", {"user": b, "channel": "email", "category": "*",
                                           "state": "opt_out", "source": "test"}), 200)
    body = mail([{"to": [{"email": b}, {"email": a}]},
                 {"to": [{"email": c}], "headers": {"X-Custom": "kept"}},
                 {"to": [{"email": d}], "headers": {"List-Unsubscribe": "<mailto:u@shop.example>"}}])
    r = post(g, body, h.mid("lu"))
    h.expect_status(r, 202)                  # SendGrid's own answer, passed through
    h.wait_until(lambda: len(up.requests) >= 1, 5, what="the forward")
    sent = json.loads(up.requests[0].body)
    ps = sent["personalizations"]
    h.check([x["email"] for x in ps[0]["to"]] == [a], "b (opted out) cut: %r" % ps[0])
    links = {}
    for k, who in ((0, a), (1, c)):
        hd = ps[k]["headers"]
        h.check(hd["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click" and
                re.fullmatch(r"<http://127\.0\.0\.1:%d/u/[A-Za-z0-9_-]+>" % g.public_port,
                             hd["List-Unsubscribe"]), "RFC 8058 headers in %d: %r" % (k, hd))
        tok = hd["List-Unsubscribe"][1:-1].split("/u/")[1]
        who_p, ch, cat, _ = open_token(g.key_file, tok)
        h.check((who_p, ch, cat) == (pseudonym_of(g.key_file, who), "email", "marketing"),
                "personalization %d's link is its recipient's, for email marketing" % k)
        links[who] = hd["List-Unsubscribe"][1:-1]
    h.check(ps[1]["headers"]["X-Custom"] == "kept", "the sender's own headers stay")
    h.check(ps[2]["headers"] == {"List-Unsubscribe": "<mailto:u@shop.example>"},
            "a sender's own List-Unsubscribe is kept: %r" % ps[2])
    raw = up.requests[0].body.decode()
    h.check('"subject": "Spring sale"' in raw, "every other byte as sent (indent kept)")
    # The link works: c's one-click opts c out, a still goes.
    h.expect_status(one_click(g, links[c]), 200)
    h.check(decision(g, c)[1] == "opted_out" and decision(g, a)[0] == "allow",
            "c's link opted c out, and only c")


def test_a_send_payload_gets_its_recipients_headers_where_the_upstream_takes_them():
    from upstream_server import FakeUpstream
    up = FakeUpstream().start()
    g, = public_gateways(channels={"email": {"upstream": {
        "url": up.url + "/send", "unsubscribe_headers": "json:/personalizations/*/headers"}}},
        caps=[])
    u = h.uid("ls")
    r = g.post("/v1/send", {"user": u, "channel": "email", "message_id": h.mid(),
                            "payload": {"personalizations": [{"to": [{"email": u}]}],
                                        "subject": "Spring"}})
    h.expect_status(r, 200)
    documented(r, "/v1/send")
    sent = json.loads(up.requests[-1].body)
    hd = sent["personalizations"][0]["headers"]
    tok = hd["List-Unsubscribe"][1:-1].split("/u/")[1]
    h.check(open_token(g.key_file, tok)[:3] == (pseudonym_of(g.key_file, u), "email", "marketing")
            and hd["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click",
            "the payload carries the person's link: %r" % hd)
    h.check(hd["List-Unsubscribe"][1:-1] != r.body["unsubscribe_url"] and
            open_token(g.key_file, token_of(r.body["unsubscribe_url"]))[0] ==
            pseudonym_of(g.key_file, u), "the answer's link is the same person's")
    # A payload without the place goes as it was sent.
    r = g.post("/v1/send", {"user": h.uid("ls"), "channel": "email", "message_id": h.mid(),
                            "payload": {"to": "x", "n": 1}})
    h.expect_status(r, 200)
    h.check(json.loads(up.requests[-1].body) == {"to": "x", "n": 1}, "unchanged")
    # Refused at load without a public section.
    rc, out, err = h.run_cli(["-t", "-c", _config_without_public(up)])
    h.check(rc == 1 and "need the public section" in err, "refused: %s" % err)


def _config_without_public(up):
    d = h.mkdtemp("capgate-conf-")
    key = h.write_key_file(d)
    text = h.fill(h.render_config(None, {"channels": {"email": {"upstream": {
        "url": up.url, "unsubscribe_headers": "json:/headers"}}}}),
        port=h.free_port(), redis_port=1, key_file=key)
    path = d + "/capgate.yaml"
    with open(path, "w") as f:
        f.write(text)
    return path

"""Fixtures for the capgate black-box tests (Python 3 stdlib only).

What lives here:
  * process bookkeeping: every process started through this module is
    tracked in the current scope (one test, or one module for shared
    fixtures) and killed by PID when the scope ends, also when a test raises,
    and at interpreter exit (atexit);
  * a private redis-server per test or per module, and a tiny RESP client
    (redis_cmd / RedisConn) to inspect and poke it;
  * the capgate process: config writing (default config of the test plan,
    overridable by YAML text or a dict of overrides), key file, start-up
    with stderr captured to a file, /healthz wait;
  * HTTP helpers (http.client, fresh connection per call) and raw-socket
    helpers for chunked uploads and huge Content-Length;
  * assertion helpers that print the whole response when they fail;
  * a TZif v2 writer for synthetic zones.

The runner (run.py) drives the scopes: begin_module/end_module around each
test module, begin_test/end_test around each test.
"""

import atexit
import copy
import http.client
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests", "lib"))
import redisproto as rp  # noqa: E402

# Set by run.py (--binary); a default so that modules can be imported alone.
BINARY = os.environ.get("CAPGATE_BINARY", os.path.join(REPO, "build", "capgate"))
# CAPGATE_WRAP="valgrind --leak-check=full ..." runs every daemon under a tool
# (make test-valgrind); its reports in stderr fail the test (SANITIZER_MARKERS).
WRAP = os.environ.get("CAPGATE_WRAP", "").split()
REDIS_SERVER = rp.REDIS_SERVER

HTTP_TIMEOUT = 5.0
HEALTH_TIMEOUT = 5.0


class HarnessError(Exception):
    """A fixture could not be set up (not a verdict on the daemon's answers)."""


class TestFailure(AssertionError):
    pass


# --------------------------------------------------------------------------
# Scopes: processes and temp dirs to clean up
# --------------------------------------------------------------------------

SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                     "Invalid read of size", "Invalid write of size", "are definitely lost", "Invalid free",
                     "Conditional jump or move depends")
sanitizer_reports = []   # filled by _Scope.cleanup; run.py turns them into failures


class _Scope:
    def __init__(self, name):
        self.name = name
        self.procs = []       # subprocess.Popen
        self.dirs = []        # temp dirs
        self.gateways = []    # Gateway objects (for failure context)
        self.shared = {}      # name -> fixture (module scope only)

    def cleanup(self):
        errors = []
        # Gateways first (SIGTERM, then SIGKILL), then everything else.
        for p, term_first in reversed(self.procs):
            try:
                _kill_proc(p, term_first=term_first)
            except Exception as e:  # pragma: no cover - best effort
                errors.append(e)
        self.procs.clear()
        # A sanitizer (make SAN=1) or valgrind report in a gateway's stderr
        # is a failure even when every HTTP answer was right.
        for gw in self.gateways:
            text = gw.logs() if hasattr(gw, "logs") else ""
            for marker in SANITIZER_MARKERS:
                if marker in text:
                    i = text.index(marker)
                    sanitizer_reports.append("%s: %s" % (self.name, text[max(0, i - 200):i + 2000]))
                    break
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)
        self.dirs.clear()
        self.gateways.clear()
        self.shared.clear()
        return errors


_lock = threading.RLock()
_global_scope = _Scope("global")
_module_scope = None
_test_scope = None
_forced_scope = None   # set while a shared fixture is being built


def _scope():
    if _forced_scope is not None:
        return _forced_scope
    return _test_scope or _module_scope or _global_scope


def begin_module(name):
    global _module_scope
    end_module()
    _module_scope = _Scope("module " + name)


def end_module():
    global _module_scope
    if _module_scope is not None:
        _module_scope.cleanup()
    _module_scope = None


def begin_test(name):
    global _test_scope
    end_test()
    _test_scope = _Scope("test " + name)


def end_test():
    global _test_scope
    if _test_scope is not None:
        _test_scope.cleanup()
    _test_scope = None


def cleanup_all():
    end_test()
    end_module()
    _global_scope.cleanup()


atexit.register(cleanup_all)


def _track(proc, term_first=False):
    """Registers PROC in the current scope; it is killed (by PID) when the
    scope ends.  TERM_FIRST: SIGTERM and a short grace before SIGKILL."""
    with _lock:
        _scope().procs.append((proc, term_first))
    return proc


def _kill_proc(p, term_first=False, grace=1.5):
    if p.poll() is not None:
        return
    try:
        if term_first:
            os.kill(p.pid, signal.SIGCONT)   # a stopped process can't handle TERM
            os.kill(p.pid, signal.SIGTERM)
            try:
                p.wait(grace)
                return
            except subprocess.TimeoutExpired:
                pass
        os.kill(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        p.wait(5)
    except subprocess.TimeoutExpired:  # pragma: no cover
        pass


def mkdtemp(prefix="capgate-bb-"):
    d = tempfile.mkdtemp(prefix=prefix)
    with _lock:
        _scope().dirs.append(d)
    return d


def shared(name, factory):
    """A fixture shared by the tests of one module (built on first use,
    rebuilt when it died).  Its processes belong to the module scope."""
    global _forced_scope
    scope = _module_scope or _global_scope
    fx = scope.shared.get(name)
    if isinstance(fx, _FailedFixture):
        # Built and failed already in this module: fail fast, same reason.
        raise HarnessError("shared fixture %r could not be built earlier in this module: %s"
                           % (name, fx.error))
    if fx is not None and getattr(fx, "alive", lambda: True)():
        return fx
    if fx is not None and hasattr(fx, "close"):
        fx.close()
    prev = _forced_scope
    _forced_scope = scope
    try:
        fx = factory()
    except Exception as e:
        scope.shared[name] = _FailedFixture(str(e).splitlines()[0] if str(e) else repr(e))
        raise
    finally:
        _forced_scope = prev
    scope.shared[name] = fx
    return fx


class _FailedFixture:
    def __init__(self, error):
        self.error = error


def failure_context(max_lines=25):
    """Log tails of the gateways the current test could see."""
    out = []
    seen = set()
    for sc in (_test_scope, _module_scope):
        if sc is None:
            continue
        for gw in sc.gateways:
            if id(gw) in seen:
                continue
            seen.add(id(gw))
            lines = gw.logs().splitlines()
            tail = lines[-max_lines:] if max_lines else lines
            rc = gw.proc.poll() if gw.proc else None
            out.append("--- capgate stderr (%s, port %s, %s), last %d of %d lines ---"
                       % (gw.stderr_path, gw.port,
                          "running" if rc is None else "exited rc=%s" % rc,
                          len(tail), len(lines)))
            out.extend(tail)
    return "\n".join(out)


# --------------------------------------------------------------------------
# Small utilities
# --------------------------------------------------------------------------

free_port = rp.free_port


def uid(prefix="user"):
    """A unique, recognisable user id (so leaks are easy to grep for)."""
    return "%s-%s@example.com" % (prefix, uuid.uuid4().hex)


def raw_decide(sock, user, message_id):
    """Writes a decide (email) on SOCK without waiting for the answer."""
    body = json.dumps({"user": user, "channel": "email", "message_id": message_id}).encode()
    sock.sendall(b"POST /v1/decide HTTP/1.1\r\nHost: capgate\r\n"
                 b"Content-Type: application/json\r\nContent-Length: %d\r\n"
                 b"Connection: close\r\n\r\n" % len(body) + body)


def raw_answer(sock):
    """The (status, body) answered on SOCK (to a raw_decide); closes it."""
    sock.settimeout(10)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


def decide_together(g, asks, before=None):
    """Decides ASKS [(user, message_id)] on email so that the gateway reads
    them in one loop turn: each on its own connection, opened first, written
    while the gateway is stopped (SIGSTOP).  BEFORE() runs just before they
    are written.  Returns [(status, body)] in order."""
    socks = [socket.create_connection(("127.0.0.1", g.port)) for _ in asks]
    time.sleep(0.3)                      # accepted, idle
    if before:
        before()
    os.kill(g.proc.pid, signal.SIGSTOP)
    try:
        for sock, (user, m) in zip(socks, asks):
            raw_decide(sock, user, m)
    finally:
        os.kill(g.proc.pid, signal.SIGCONT)
    return [raw_answer(sock) for sock in socks]


def parallel(fn, items, workers=50):
    """FN over ITEMS on WORKERS threads; the first WORKERS calls are released
    together (so that they really race)."""
    import concurrent.futures
    n = min(workers, len(items))
    go = threading.Event()
    lock = threading.Lock()
    arrived = [0]

    def run(item):
        with lock:
            arrived[0] += 1
            if arrived[0] >= n:
                go.set()
        go.wait(5)
        return fn(item)
    with concurrent.futures.ThreadPoolExecutor(workers) as ex:
        return list(ex.map(run, items))


def summary(rs):
    """Decide answers counted by (decision, reason, rule), errors by status and code."""
    import collections
    c = collections.Counter()
    for r in rs:
        if r.status == 200 and isinstance(r.body, dict):
            c[(r.body.get("decision"), r.body.get("reason"), r.body.get("rule"))] += 1
        else:
            err = r.body.get("error", {}).get("code") if isinstance(r.body, dict) else str(r.body)[:60]
            c[("http", r.status, err)] += 1
    return dict(c)


def mid(prefix="msg"):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:12])


def wait_until(fn, timeout, interval=0.05, what="condition"):
    """Polls fn() until it returns a truthy value; returns it.  Raises
    TestFailure with the last value/exception after TIMEOUT seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            v = fn()
            if v:
                return v
            last = v
        except Exception as e:  # noqa: BLE001 - reported below
            last = e
        if time.monotonic() >= deadline:
            raise TestFailure("timed out after %.1fs waiting for %s; last: %r"
                              % (timeout, what, last))
        time.sleep(interval)


# --------------------------------------------------------------------------
# RESP client (tests/lib/redisproto.py, shared with the benchmark)
# --------------------------------------------------------------------------

RedisError = rp.RedisError
RedisConn = rp.RedisConn
redis_cmd = rp.redis_cmd


def _flatten(v):
    if isinstance(v, list):
        for x in v:
            yield from _flatten(x)
    elif v is None:
        return
    elif isinstance(v, bytes):
        yield v
    else:
        yield str(v).encode()


def redis_dump(port):
    """Every key with its type, TTL and all its content as a flat list of
    bytes: [{"key": b, "type": str, "ttl": int, "values": [bytes...]}]."""
    out = []
    with RedisConn(port) as c:
        cursor = b"0"
        keys = []
        while True:
            cursor, batch = c.cmd("SCAN", cursor, "COUNT", 1000)
            keys.extend(batch)
            if cursor in (b"0", "0"):
                break
        for k in sorted(set(keys)):
            t = c.cmd("TYPE", k)
            if t == "string":
                vals = c.cmd("GET", k)
            elif t == "hash":
                vals = c.cmd("HGETALL", k)
            elif t == "zset":
                vals = c.cmd("ZRANGE", k, 0, -1, "WITHSCORES")
            elif t == "list":
                vals = c.cmd("LRANGE", k, 0, -1)
            elif t == "set":
                vals = c.cmd("SMEMBERS", k)
            elif t == "stream":
                vals = c.cmd("XRANGE", k, "-", "+")
            elif t == "none":       # expired between SCAN and TYPE
                continue
            else:
                vals = [b"<unknown type %s>" % t.encode()]
            ttl = c.cmd("TTL", k)
            out.append({"key": k, "type": t, "ttl": ttl, "values": list(_flatten(vals))})
    return out


def redis_keys(port):
    return sorted(e["key"] for e in redis_dump(port))


# --------------------------------------------------------------------------
# redis-server
# --------------------------------------------------------------------------

class Redis:
    def __init__(self, port=None):
        self.port = port
        self.dir = mkdtemp("capgate-redis-")
        self.proc = None
        self.log_path = os.path.join(self.dir, "redis.log")
        self.start()

    def _spawn(self, port):
        log = open(self.log_path, "ab")
        try:
            p = subprocess.Popen(
                rp.redis_argv(port, self.dir, "--enable-debug-command", "local",
                              "--loglevel", "warning"),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.dir)
        finally:
            log.close()
        return _track(p)

    def start(self):
        """(Re)starts redis-server, on the same port when it had one."""
        if self.proc is not None and self.proc.poll() is None:
            raise HarnessError("redis already running")
        fixed = self.port is not None
        for _attempt in range(8 if fixed else 3):
            port = self.port if fixed else free_port()
            p = self._spawn(port)
            if rp.wait_for_ping(port, p):
                self.proc, self.port = p, port
                return self
            _kill_proc(p)
            time.sleep(0.2)
        raise HarnessError("could not start redis-server on port %s: %s"
                           % (self.port, self.log()[-500:]))

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def cmd(self, *args, timeout=5.0):
        return redis_cmd(self.port, *args, timeout=timeout)

    def kill(self):
        """Stops Redis at once (SIGKILL); start() brings it back on the same port."""
        if self.proc is not None:
            _kill_proc(self.proc)

    def pause(self):
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self):
        os.kill(self.proc.pid, signal.SIGCONT)

    def restart(self):
        self.kill()
        return self.start()

    def dump(self):
        return redis_dump(self.port)

    def keys(self):
        return redis_keys(self.port)

    def dbsize(self):
        return self.cmd("DBSIZE")


def start_redis(port=None):
    return Redis(port)


# --------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------

# The default config of the test plan, as text (used verbatim when no
# overrides are given) and as a dict (the base that overrides apply to).
DEFAULT_CONFIG_TEXT = """\
listen: "127.0.0.1:{port}"
log_level: debug
redis: { url: "redis://127.0.0.1:{redis_port}/0", timeout_ms: 250, on_unavailable: reject }
privacy: { key_file: "{key_file}" }
channels: { email: {}, push: {}, sms: { requires_opt_in: true } }
categories:
  marketing: {}
  transactional: { exempt_from_caps: true, exempt_from_quiet_hours: true, ignores_opt_out: true }
  health: { requires_opt_in: true }
default_category: marketing
caps:
  - { name: email-daily,   channel: email, limit: 2, window: 1d,  on_exceed: defer }
  - { name: all-weekly,                    limit: 5, window: 7d,  on_exceed: defer }
  - { name: campaign-once, per: campaign,  limit: 1, window: 30d, on_exceed: deny }
  - { name: health-monthly, category: health, limit: 1, window: 30d, on_exceed: deny }
max_defer: 7d
"""

DEFAULT_CONFIG = {
    "listen": "127.0.0.1:{port}",
    "log_level": "debug",
    "redis": {"url": "redis://127.0.0.1:{redis_port}/0", "timeout_ms": 250,
              "on_unavailable": "reject"},
    "privacy": {"key_file": "{key_file}"},
    "channels": {"email": {}, "push": {}, "sms": {"requires_opt_in": True}},
    "categories": {
        "marketing": {},
        "transactional": {"exempt_from_caps": True, "exempt_from_quiet_hours": True,
                          "ignores_opt_out": True},
        "health": {"requires_opt_in": True},
    },
    "default_category": "marketing",
    "caps": [
        {"name": "email-daily", "channel": "email", "limit": 2, "window": "1d", "on_exceed": "defer"},
        {"name": "all-weekly", "limit": 5, "window": "7d", "on_exceed": "defer"},
        {"name": "campaign-once", "per": "campaign", "limit": 1, "window": "30d", "on_exceed": "deny"},
        {"name": "health-monthly", "category": "health", "limit": 1, "window": "30d", "on_exceed": "deny"},
    ],
    "max_defer": "7d",
}


def merge(base, overrides):
    """Deep merge: dicts merge recursively, anything else (lists too)
    replaces; a value of None deletes the key."""
    out = copy.deepcopy(base)
    for k, v in overrides.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


_PLAIN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./+-]*\Z")
_NUMLIKE = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?\Z|0[xXoObB]")
_RESERVED = {"true", "false", "null", "yes", "no", "on", "off", "y", "n", "~"}


def _yaml_scalar(v):
    if v is True:
        return "true"
    if v is False:
        return "false"
    if v is None:
        return "null"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, dict):
        if v:
            raise ValueError("non-empty dict as scalar")
        return "{}"
    if isinstance(v, list):
        if v:
            raise ValueError("non-empty list as scalar")
        return "[]"
    s = str(v)
    if _PLAIN.match(s) and not _NUMLIKE.match(s) and s.lower() not in _RESERVED:
        return s
    return json.dumps(s)   # a JSON string is a valid YAML double-quoted scalar


def to_yaml(obj, indent=0):
    """Block-style YAML for dicts / lists / scalars (enough for configs)."""
    sp = " " * indent
    lines = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, dict) and v:
                lines.append("%s%s:" % (sp, k))
                lines.append(to_yaml(v, indent + 2))
            elif isinstance(v, list) and v:
                lines.append("%s%s:" % (sp, k))
                lines.append(to_yaml(v, indent + 2))
            else:
                lines.append("%s%s: %s" % (sp, k, _yaml_scalar(v)))
    elif isinstance(obj, list):
        for item in obj:
            if isinstance(item, (dict, list)) and item:
                sub = to_yaml(item, indent + 2).split("\n")
                sub[0] = sp + "- " + sub[0][indent + 2:]
                lines.extend(sub)
            else:
                lines.append("%s- %s" % (sp, _yaml_scalar(item)))
    else:
        lines.append(sp + _yaml_scalar(obj))
    return "\n".join(lines)


def fill(text, **values):
    """Replaces {port}, {redis_port}, {key_file}, ... without str.format
    (YAML flow mappings use braces too)."""
    for k, v in values.items():
        text = text.replace("{%s}" % k, str(v))
    return text


def render_config(config=None, overrides=None):
    """config: None (default text), YAML text, or a full dict;
    overrides: dict merged into the default dict.  Returns YAML text with
    placeholders still in it."""
    if config is not None and overrides is not None:
        if isinstance(config, dict):
            return to_yaml(merge(config, overrides)) + "\n"
        raise ValueError("overrides apply to a dict config only")
    if overrides is not None:
        return to_yaml(merge(DEFAULT_CONFIG, overrides)) + "\n"
    if config is None:
        return DEFAULT_CONFIG_TEXT
    if isinstance(config, dict):
        return to_yaml(config) + "\n"
    return config


def write_key_file(dirpath, data=None):
    path = os.path.join(dirpath, "capgate.key")
    with open(path, "wb") as f:
        f.write(os.urandom(32) if data is None else data)
    os.chmod(path, 0o600)
    return path


# --------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------

class Resp(tuple):
    """(status, headers, body): body is the parsed JSON when it parses,
    else the text.  headers is an http.client.HTTPMessage (case-insensitive
    .get)."""

    def __new__(cls, status, headers, body, raw=b"", elapsed=0.0, request=None):
        r = tuple.__new__(cls, (status, headers, body))
        r.raw = raw
        r.elapsed = elapsed
        r.request = request
        return r

    status = property(lambda self: self[0])
    headers = property(lambda self: self[1])
    body = property(lambda self: self[2])

    def header(self, name, default=None):
        h = self[1]
        if h is None:
            return default
        return h.get(name, default)

    def __repr__(self):
        hdrs = ""
        if self[1] is not None:
            hdrs = "; ".join("%s: %s" % kv for kv in self[1].items())
        req = ""
        if self.request is not None:
            req = "request %s -> " % (self.request,)
        return "<%sHTTP %s in %.3fs [%s] body=%s>" % (
            req, self[0], self.elapsed, hdrs,
            json.dumps(self[2]) if not isinstance(self[2], str) else repr(self[2][:2000]))


def _parse_body(data):
    text = data.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def http_request(port, method, path, body=None, headers=None, timeout=HTTP_TIMEOUT,
                 host="127.0.0.1"):
    hdrs = {}
    if body is not None and not isinstance(body, (bytes, bytearray, str)):
        body = json.dumps(body).encode()
        hdrs["Content-Type"] = "application/json"
    elif isinstance(body, str):
        body = body.encode()
    if body is not None and "Content-Type" not in hdrs:
        hdrs["Content-Type"] = "application/json"
    if headers:
        hdrs.update(headers)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    t0 = time.monotonic()
    try:
        conn.request(method, path, body=body, headers=hdrs)
        r = conn.getresponse()
        data = r.read()
        elapsed = time.monotonic() - t0
        shown = body if body is None or len(body) < 300 else body[:300] + b"..."
        return Resp(r.status, r.msg, _parse_body(data), data, elapsed,
                    "%s %s %s" % (method, path, shown.decode(errors="replace") if shown else ""))
    finally:
        conn.close()


def parse_http_response(data):
    """Parses a raw HTTP/1.x response (first one in DATA) into a Resp.
    Returns None when DATA does not hold a complete status line + headers."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.decode("iso-8859-1").split("\r\n")
    m = re.match(r"HTTP/\d\.\d (\d{3})", lines[0])
    if not m:
        raise TestFailure("not an HTTP response: %r" % data[:200])
    msg = http.client.HTTPMessage()
    for ln in lines[1:]:
        if ":" in ln:
            k, v = ln.split(":", 1)
            msg[k.strip()] = v.strip()
    body = rest
    cl = msg.get("Content-Length")
    if cl is not None and cl.isdigit():
        body = rest[:int(cl)]
    elif (msg.get("Transfer-Encoding") or "").lower() == "chunked":
        body = _dechunk(rest)
    return Resp(int(m.group(1)), msg, _parse_body(body), data)


def _dechunk(data):
    out = b""
    while data:
        line, sep, data = data.partition(b"\r\n")
        if not sep:
            break
        try:
            n = int(line.split(b";")[0], 16)
        except ValueError:
            break
        if n == 0:
            break
        out += data[:n]
        data = data[n + 2:]
    return out


def _response_complete(data):
    r = parse_http_response(data)
    if r is None:
        return False
    head, _, rest = data.partition(b"\r\n\r\n")
    cl = r.headers.get("Content-Length")
    if cl is not None and cl.isdigit():
        return len(rest) >= int(cl)
    if (r.headers.get("Transfer-Encoding") or "").lower() == "chunked":
        return b"\r\n0\r\n" in b"\r\n" + rest
    return False   # read to EOF


class RawExchange:
    """Sends raw bytes (in pieces) while a reader thread collects whatever
    the server answers, so that an early answer (e.g. 413 before the body
    was sent) is seen even when the server then resets the connection."""

    def __init__(self, port, timeout=5.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.data = b""
        self.eof = False
        self.error = None
        self.send_error = None
        self.first_byte_at = None
        self.t0 = time.monotonic()
        self._cv = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        try:
            while True:
                b = self.sock.recv(65536)
                with self._cv:
                    if not b:
                        self.eof = True
                        self._cv.notify_all()
                        return
                    if self.first_byte_at is None:
                        self.first_byte_at = time.monotonic()
                    self.data += b
                    self._cv.notify_all()
        except OSError as e:
            with self._cv:
                self.error = e
                self.eof = True
                self._cv.notify_all()

    def answered(self):
        with self._cv:
            return bool(self.data) and _response_complete(self.data)

    def send(self, data):
        """Returns False when sending failed (server closed/reset)."""
        if self.send_error:
            return False
        try:
            self.sock.sendall(data)
            return True
        except OSError as e:
            self.send_error = e
            return False

    def response(self, timeout=5.0):
        """Waits for a complete response (or EOF) and returns a Resp, or
        raises TestFailure describing what happened."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while not self.eof and not (self.data and _response_complete(self.data)):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(left)
            data = self.data
        r = parse_http_response(data) if data else None
        if r is None:
            raise TestFailure("no HTTP response within %.1fs (got %r; read error %r; send error %r)"
                              % (timeout, data[:200], self.error, self.send_error))
        r.elapsed = (self.first_byte_at or time.monotonic()) - self.t0
        return r

    def close(self):
        try:
            # shutdown wakes the reader thread blocked in recv; close alone does not
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass
        self._reader.join(2)


# --------------------------------------------------------------------------
# capgate
# --------------------------------------------------------------------------

def run_cli(args, timeout=10, input=None):
    """Runs the binary with ARGS to completion: (rc, stdout, stderr)."""
    p = _track(subprocess.Popen([os.path.abspath(BINARY)] + list(args), stdin=subprocess.PIPE if input else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    try:
        out, err = p.communicate(input=input, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_proc(p)
        out, err = p.communicate()
        raise TestFailure("capgate %s did not exit within %ss; stdout=%r stderr=%r"
                          % (" ".join(args), timeout, out[-1000:], err[-1000:]))
    return p.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def check_binary():
    if not os.path.isfile(BINARY) or not os.access(BINARY, os.X_OK):
        raise HarnessError("capgate binary not found or not executable: %s (run `make`)" % BINARY)


class Gateway:
    """A capgate process with its config, key file and captured stderr."""

    def __init__(self, config=None, overrides=None, redis=None, key_file=None,
                 key_data=None, start=True, wait=True, extra=None, env=None):
        check_binary()
        self.env = env   # extra environment for the daemon (e.g. NOTIFY_SOCKET)
        self.dir = mkdtemp("capgate-gw-")
        self.redis = redis if redis is not None else start_redis()
        self.port = free_port()
        self.key_file = key_file if key_file is not None else write_key_file(self.dir, key_data)
        self.values = {"port": self.port, "redis_port": self.redis.port,
                       "key_file": self.key_file}
        if extra:
            self.values.update(extra)
        self.config_text = fill(render_config(config, overrides), **self.values)
        self.config_path = os.path.join(self.dir, "capgate.yaml")
        with open(self.config_path, "w") as f:
            f.write(self.config_text)
        self.stderr_path = os.path.join(self.dir, "capgate.stderr")
        self.stdout_path = os.path.join(self.dir, "capgate.stdout")
        self.proc = None
        with _lock:
            _scope().gateways.append(self)
        if start:
            self.start(wait=wait)

    # -- process --
    def start(self, wait=True):
        errf = open(self.stderr_path, "ab")
        outf = open(self.stdout_path, "ab")
        try:
            self.proc = _track(subprocess.Popen(
                WRAP + [os.path.abspath(BINARY), "-c", self.config_path], stdin=subprocess.DEVNULL,
                env=dict(os.environ, **self.env) if self.env else None,
                stdout=outf, stderr=errf, cwd=self.dir), term_first=True)
        finally:
            errf.close()
            outf.close()
        self.started_at = time.monotonic()
        if wait:
            self.wait_healthy()
        return self

    def wait_healthy(self, timeout=HEALTH_TIMEOUT):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                time.sleep(0.05)
                raise HarnessError("capgate exited during start-up (rc=%s)\nconfig:\n%s\nstderr:\n%s"
                                   % (self.proc.returncode, self.config_text, self.logs()[-3000:]))
            try:
                r = http_request(self.port, "GET", "/healthz", timeout=1)
                if r.status == 200:
                    # With its Redis up, wait until the gateway has it too, so
                    # a test's first request is not refused with 503.
                    # (best effort, 2 s: some tests expect it never to be ready)
                    ready_by = time.monotonic() + 2
                    while (getattr(self.redis, "alive", lambda: False)() and
                           time.monotonic() < ready_by):
                        if http_request(self.port, "GET", "/readyz", timeout=1).status == 200:
                            break
                        time.sleep(0.02)
                    return r
                last = r
            except OSError as e:
                last = e
            time.sleep(0.05)
        raise HarnessError("capgate did not answer GET /healthz 200 within %.0fs (last: %r)\n"
                           "config:\n%s\nstderr:\n%s"
                           % (timeout, last, self.config_text, self.logs()[-3000:]))

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def send_signal(self, sig):
        os.kill(self.proc.pid, sig)

    def stop(self, sig=signal.SIGTERM, timeout=2.0):
        """Sends SIG and waits; returns (rc, seconds) or raises TestFailure."""
        t0 = time.monotonic()
        self.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TestFailure("capgate did not exit within %.1fs of signal %s" % (timeout, sig))
        return rc, time.monotonic() - t0

    def close(self):
        if self.proc is not None:
            _kill_proc(self.proc, term_first=True)

    def logs(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    # -- HTTP --
    def request(self, method, path, body=None, headers=None, timeout=HTTP_TIMEOUT):
        return http_request(self.port, method, path, body, headers, timeout)

    def get(self, path, headers=None, timeout=HTTP_TIMEOUT):
        return self.request("GET", path, None, headers, timeout)

    def post(self, path, obj_or_bytes, headers=None, timeout=HTTP_TIMEOUT):
        return self.request("POST", path, obj_or_bytes, headers, timeout)

    def raw(self, timeout=5.0):
        return RawExchange(self.port, timeout)

    # -- API shorthands --
    def decide(self, user, channel="email", message_id=None, **fields):
        body = {"user": user, "channel": channel,
                "message_id": message_id if message_id is not None else mid()}
        body.update(fields)
        return self.post("/v1/decide", body)

    def release(self, user, message_id):
        return self.post("/v1/release", {"user": user, "message_id": message_id})

    def consent(self, user, channel, category, state, source="test"):
        return self.post("/v1/consent", {"user": user, "channel": channel, "category": category,
                                         "state": state, "source": source})


def start_gateway(config=None, overrides=None, **kw):
    return Gateway(config=config, overrides=overrides, **kw)


def shared_gateway(name="default", config=None, overrides=None, **kw):
    """One gateway (with its own Redis) shared by the tests of a module."""
    return shared(name, lambda: Gateway(config=config, overrides=overrides, **kw))


# --------------------------------------------------------------------------
# Assertions
# --------------------------------------------------------------------------

def fail(msg, resp=None):
    if resp is not None:
        msg = "%s\n  response: %r" % (msg, resp)
    raise TestFailure(msg)


def check(cond, msg, resp=None):
    if not cond:
        fail(msg, resp)


def expect_status(r, status):
    check(r.status == status, "expected HTTP %s, got %s" % (status, r.status), r)
    return r


def expect_json_content_type(r):
    ct = (r.header("Content-Type") or "").lower()
    check(ct.split(";")[0].strip() == "application/json",
          "expected Content-Type application/json, got %r" % ct, r)


def expect_decision(r, decision, reason=None, rule=None, replay=None, message_id=None,
                    retry_after=None, tolerance=1):
    """Checks a /v1/decide answer.  rule=None: not checked; rule=False:
    must be absent.  retry_after: expected seconds (+- tolerance); required
    present on defer."""
    expect_status(r, 200)
    b = r.body
    check(isinstance(b, dict), "decide answer is not a JSON object", r)
    expect_json_content_type(r)
    check(b.get("decision") == decision,
          "expected decision %r, got %r" % (decision, b.get("decision")), r)
    if reason is not None:
        check(b.get("reason") == reason, "expected reason %r, got %r" % (reason, b.get("reason")), r)
    else:
        check(b.get("reason") in ("ok", "opted_out", "consent_required", "quiet_hours", "cap",
                                  "store_unavailable"),
              "reason %r is not one of the documented reasons" % b.get("reason"), r)
    if rule is False:
        check("rule" not in b, "expected no rule, got %r" % b.get("rule"), r)
    elif rule is not None:
        check(b.get("rule") == rule, "expected rule %r, got %r" % (rule, b.get("rule")), r)
    if replay is not None:
        check(b.get("replay") is replay, "expected replay %r, got %r" % (replay, b.get("replay")), r)
    else:
        check(isinstance(b.get("replay"), bool), "replay missing or not a bool", r)
    if message_id is not None:
        check(b.get("message_id") == message_id,
              "expected message_id echo %r, got %r" % (message_id, b.get("message_id")), r)
    if decision == "defer":
        ra = b.get("retry_after")
        check(isinstance(ra, int) and not isinstance(ra, bool) and ra >= 1,
              "defer without an integer retry_after >= 1", r)
        if retry_after is not None:
            check(abs(ra - retry_after) <= tolerance,
                  "expected retry_after %s (+-%s), got %s" % (retry_after, tolerance, ra), r)
    elif decision == "allow":
        check("retry_after" not in b, "allow must not carry retry_after", r)
    return b


def expect_error(r, status, code, field=None, forbidden=()):
    """Checks an error answer {"error": {"code", "message", "field"?}}.
    FORBIDDEN: strings (e.g. raw user ids) that must not appear in the body."""
    expect_status(r, status)
    expect_json_content_type(r)
    b = r.body
    check(isinstance(b, dict) and isinstance(b.get("error"), dict),
          "error body is not {\"error\": {...}}", r)
    e = b["error"]
    check(e.get("code") == code, "expected error code %r, got %r" % (code, e.get("code")), r)
    check(isinstance(e.get("message"), str) and e.get("message"),
          "error.message missing or empty", r)
    if field is not None:
        check(e.get("field") == field, "expected error.field %r, got %r" % (field, e.get("field")), r)
    raw = r.raw.decode(errors="replace") if r.raw else json.dumps(b)
    for s in forbidden:
        check(s not in raw, "error answer contains %r" % s, r)
    return e


# --------------------------------------------------------------------------
# TZif
# --------------------------------------------------------------------------

def tzif_bytes(transitions, types, footer, version=b"2"):
    """A TZif (v2+) file.  TRANSITIONS: [(unix_time, type_index)] ascending;
    TYPES: [(utoff_seconds, isdst, abbreviation)] (type 0 applies before the
    first transition); FOOTER: POSIX TZ string for times after the last one.
    The v1 block holds the same data with 32-bit times."""
    abbrs = b""
    idx = []
    for _off, _dst, ab in types:
        b = ab.encode() + b"\0"
        pos = abbrs.find(b)
        if pos < 0:
            pos = len(abbrs)
            abbrs += b
        idx.append(pos)

    def block(timefmt):
        hdr = b"TZif" + version + b"\0" * 15 + struct.pack(
            ">6l", 0, 0, 0, len(transitions), len(types), len(abbrs))
        body = b"".join(struct.pack(">" + timefmt, t) for t, _ in transitions)
        body += b"".join(struct.pack(">B", i) for _, i in transitions)
        body += b"".join(struct.pack(">lBB", off, dst, idx[n])
                         for n, (off, dst, _ab) in enumerate(types))
        body += abbrs
        return hdr + body

    return block("l") + block("q") + b"\n" + footer.encode() + b"\n"


def write_zone(zoneinfo_dir, name, data):
    path = os.path.join(zoneinfo_dir, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


def etc_zone(offset_hours):
    """IANA name of a fixed-offset zone: +5 -> 'Etc/GMT-5' (POSIX sign)."""
    if offset_hours == 0:
        return "Etc/GMT"
    return "Etc/GMT%+d" % (-offset_hours)

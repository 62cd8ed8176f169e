"""A fake campaign API for the tests (Python 3 stdlib only).

In-process, from a black-box test:

    from upstream_server import FakeUpstream
    with FakeUpstream() as up:              # or up = FakeUpstream().start() ... up.stop()
        ... point capgate at up.url ...
        up.set_mode("fail")                 # every answer a 500
        up.set_mode("stall", seconds=3)     # answer after 3 s (seconds=None: until release())
        up.set_mode("garbage")              # bytes that are not HTTP, then close
        up.set_mode("close")                # close without answering
        up.set_mode("status", code=429)     # that status, small JSON body
        up.set_mode("status", code=429, retry_after="3", times=1)
                                            # ...with Retry-After, once, then normal
        up.set_mode("normal")               # 200, {"ok": true, ...}, X-Upstream: yes
        up.requests, up.count_by_key(), up.stats(), up.wait_for(3)

When the harness is importable, start() also registers the server with the
current harness scope, so it is stopped when the test (or module) ends even
if the test forgets to; stop() is idempotent.

As a process (the C unit tests):

    python3 upstream_server.py --serve [--port N] [--until-eof]

prints the port on the first line of stdout and serves until SIGTERM (or,
with --until-eof, until its stdin is closed -- so it dies with its parent).

Whatever the mode, some paths answer in their own way:
    /echo[...]          200, JSON {method, path, query, headers, body}, X-Upstream: yes,
                        X-Echo-Method: <method>
    /status/N           status N, small JSON body
    /stall/S            answer 200 after S seconds (a float)
    /close              close the connection without answering
    /informational      a 103 Early Hints (with a Link header), then the normal answer
    /garbage            send bytes that are not HTTP, then close
    /big/N              200 with a body of N bytes (?chunked: without Content-Length)
    /empty/N            status N with no body and no Content-Type
and, when the mode is normal, shaped like real campaign APIs:
    /sendgrid[...]      SendGrid's v3 mail send: 202, no body, X-Message-Id; 401 with
                        SendGrid's errors[] unless Authorization is "Bearer SG.<...>"
    /twilio[...]        Twilio's Messages API: 201, JSON {sid, status, to}
and the control API (never recorded, never counted as a connection):
    GET  /_control/requests     the records, JSON list
    GET  /_control/stats        {"requests", "connections_total", "connections_open",
                                 "connections_max"}
    POST /_control/mode         {"mode": "stall", "seconds": 3} (same keywords as set_mode)
    POST /_control/release      wake every stalled request
    POST /_control/reset        forget records and counters (mode unchanged)

A connection counts from its first non-control request until it closes, so
connections_max is how many the client had open at once (see reset()).
"""

import argparse
import collections
import json
import os
import signal
import socket
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODES = ("normal", "fail", "stall", "garbage", "close", "status")
GARBAGE = b"this is not HTTP at all\r\n\r\n"


class Request:
    """One recorded request."""

    def __init__(self, method, path, query, headers, body, conn):
        self.method = method
        self.path = path              # without the query string
        self.query = query            # {name: [values]}
        self.headers = headers        # [(name, value)] in arrival order
        self.body = body              # bytes
        self.conn = conn              # connection number (1, 2, ...)
        self.time = time.monotonic()

    def header(self, name, default=None):
        n = name.lower()
        for k, v in self.headers:
            if k.lower() == n:
                return v
        return default

    def json(self):
        return json.loads(self.body.decode() or "null")

    def to_dict(self):
        return {"method": self.method, "path": self.path, "query": self.query,
                "headers": self.headers, "body": self.body.decode("utf-8", "replace"),
                "conn": self.conn}

    def __repr__(self):
        return "Request(%s %s conn=%d body=%r)" % (self.method, self.path, self.conn,
                                                   self.body[:80])


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"     # keep-alive: what a pooled client expects
    server_version = "FakeUpstream/1"

    def log_message(self, fmt, *args):   # quiet: tests read the records instead
        pass

    # -- connection bookkeeping --

    def setup(self):
        super().setup()
        self.conn_no = 0                  # set on the first non-control request
        self.conn_epoch = -1              # the reset() period it is counted in
        self.server.fake._track_socket(self.connection, True)

    def finish(self):
        try:
            super().finish()
        finally:
            self.server.fake._track_socket(self.connection, False)
            if self.conn_no:
                self.server.fake._conn_closed(self.conn_epoch)

    # -- dispatch --

    def do_GET(self):
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    def _read_body(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            out = []
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass            # trailers
                    return b"".join(out)
                out.append(self.rfile.read(size))
                self.rfile.readline(3)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def _dispatch(self):
        fake = self.server.fake
        body = self._read_body()
        url = urllib.parse.urlsplit(self.path)
        path = url.path
        if path.startswith("/_control/"):
            return self._control(path[len("/_control/"):], body)
        if self.conn_epoch != fake._epoch:
            self.conn_no, self.conn_epoch = fake._conn_opened()
        req = Request(self.command, path, urllib.parse.parse_qs(url.query, keep_blank_values=True),
                      list(self.headers.items()), body, self.conn_no)
        fake._record(req)

        parts = path.strip("/").split("/")
        mode = fake.mode
        try:
            if parts[0] == "echo":
                return self._echo(req)
            if parts[0] == "status" and len(parts) > 1:
                return self._json(int(parts[1]), {"status": int(parts[1])})
            if parts[0] == "stall" and len(parts) > 1:
                if fake._stopped.wait(float(parts[1])):
                    return self._close()
                return self._normal(req)
            if parts[0] == "close":
                return self._close()
            if parts[0] == "informational":
                # a 103 with headers of its own first: not part of the answer
                self.wfile.write(b"HTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\n")
                return self._normal(req)
            if parts[0] == "garbage":
                return self._garbage()
            if parts[0] == "big" and len(parts) > 1:
                if "chunked" in req.query:
                    return self._chunked(200, b"x" * int(parts[1]))
                return self._send(200, b"x" * int(parts[1]), "application/octet-stream")
            if parts[0] == "empty" and len(parts) > 1:
                return self._bare(int(parts[1]))
            name = mode["mode"]
            if name == "normal" and parts[0] == "sendgrid":
                return self._sendgrid(req)
            if name == "normal" and parts[0] == "twilio":
                return self._json(201, {"sid": "SM%032x" % req.seq, "status": "queued"})
            if name == "fail":
                return self._json(500, {"error": "injected failure"})
            if name == "status" and fake._take_status_turn():
                extra = [("Retry-After", mode["retry_after"])] if mode.get("retry_after") else []
                return self._json(mode["code"], {"status": mode["code"]}, extra=extra)
            if name == "stall":
                fake._release.wait(mode["seconds"])
                if fake._stopping:
                    return self._close()
                return self._normal(req)
            if name == "garbage":
                return self._garbage()
            if name == "close":
                return self._close()
            return self._normal(req)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True     # the client gave up (its timeout)

    # -- answers --

    def _send(self, status, data, ctype="application/json", extra=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Upstream", "yes")
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self.wfile.flush()

    def _chunked(self, status, data, piece=4096):
        """No Content-Length: the client learns the size only as it reads."""
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("X-Upstream", "yes")
        self.end_headers()
        for k in range(0, len(data), piece):
            chunk = data[k:k + piece]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _bare(self, status):
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()
        self.wfile.flush()

    def _sendgrid(self, req):
        auth = req.header("Authorization") or ""
        if not auth.startswith("Bearer SG."):
            return self._json(401, {"errors": [{
                "message": "The provided authorization grant is invalid, expired, or revoked",
                "field": None, "help": None}]})
        self.send_response(202)
        self.send_header("Content-Length", "0")
        self.send_header("X-Message-Id", "sg-%06d-%s" % (req.seq, os.urandom(4).hex()))
        self.send_header("Access-Control-Allow-Origin", "https://sendgrid.api-docs.io")
        self.end_headers()
        self.wfile.flush()

    def _json(self, status, obj, extra=()):
        self._send(status, json.dumps(obj).encode(), extra=extra)

    def _normal(self, req):
        self._json(200, {"ok": True, "n": req.seq}, extra=[("X-Request-Seq", str(req.seq))])

    def _echo(self, req):
        self._json(200, req.to_dict(), extra=[("X-Echo-Method", req.method)])

    def _close(self):
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _garbage(self):
        self.close_connection = True
        self.wfile.write(GARBAGE)
        self.wfile.flush()
        self._close()

    def _control(self, what, body):
        fake = self.server.fake
        if what == "requests" and self.command == "GET":
            return self._json(200, [r.to_dict() for r in fake.requests])
        if what == "stats" and self.command == "GET":
            return self._json(200, fake.stats())
        if what == "mode" and self.command == "POST":
            try:
                args = json.loads(body.decode() or "{}")
                fake.set_mode(**args)
            except (ValueError, TypeError) as e:
                return self._json(400, {"error": str(e)})
            return self._json(200, fake.mode)
        if what == "release" and self.command == "POST":
            fake.release()
            return self._json(200, {"released": True})
        if what == "reset" and self.command == "POST":
            fake.reset()
            return self._json(200, {"reset": True})
        return self._json(404, {"error": "unknown control %s %s" % (self.command, what)})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def handle_error(self, request, client_address):
        # A client that gives up (its timeout) resets the connection: routine
        # here, not worth a traceback on stderr.
        if isinstance(sys.exc_info()[1], (ConnectionError, socket.timeout)):
            return
        super().handle_error(request, client_address)


class _ScopeStopper:
    """Stands in for a process in the harness's scope: the harness kills
    what is still running when the scope ends, and asks poll() first --
    here poll() stops the server and says it is gone."""

    def __init__(self, fake):
        self.fake = fake
        self.pid = None

    def poll(self):
        self.fake.stop()
        return 0

    def wait(self, timeout=None):
        return 0


class FakeUpstream:
    def __init__(self, host="127.0.0.1", port=0, mode="normal", track=True, **mode_args):
        self.host = host
        self.port = port
        self._track = track
        self._lock = threading.Lock()
        self._requests = []
        self._release = threading.Event()
        self._stopping = False
        self._stopped = threading.Event()   # wakes /stall/S handlers at stop()
        self._server = None
        self._thread = None
        self._sockets = set()
        self._conn_seq = 0
        self._conn_open = 0
        self._conn_max = 0
        self._epoch = 0
        self.mode = {"mode": "normal"}
        self.set_mode(mode, **mode_args)

    # -- life --

    def start(self):
        if self._server is not None:
            return self
        self._stopping = False
        self._stopped.clear()
        self._server = _Server((self.host, self.port), _Handler)
        # serve_forever selects, then accepts: an accept that blocked (the
        # connection went between the two) would never see shutdown(), and
        # stop() would wait for it forever -- a CI run hung so at a test's
        # end.  With a timeout the accept gives up and the loop goes on
        # (accepted sockets are made blocking again by socket.accept).
        self._server.socket.settimeout(0.5)
        self._server.fake = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name="fake-upstream-%d" % self.port, daemon=True)
        self._thread.start()
        if self._track:
            try:
                import harness
                harness._track(_ScopeStopper(self))
            except ImportError:
                pass
        return self

    def stop(self):
        """Stops serving, wakes stalled handlers, drops open connections."""
        if self._server is None:
            return
        self._stopping = True
        self._stopped.set()
        self._release.set()
        self._server.shutdown()
        with self._lock:
            socks = list(self._sockets)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server.server_close()
        self._thread.join(5)
        self._server = None
        self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def url(self):
        return "http://%s:%d" % (self.host, self.port)

    # -- modes --

    def set_mode(self, mode, seconds=None, code=None, retry_after=None, times=None):
        """normal | fail | stall (seconds=None: until release()) | garbage |
        close | status (code=N; retry_after: a Retry-After value; times=N: only
        the next N requests, then normal)."""
        if mode not in MODES:
            raise ValueError("unknown mode %r (one of %s)" % (mode, ", ".join(MODES)))
        m = {"mode": mode}
        if mode == "stall":
            m["seconds"] = None if seconds is None else float(seconds)
            self._release.clear()
        if mode == "status":
            if code is None or not 100 <= int(code) <= 599:
                raise ValueError("status mode needs code=100..599")
            m["code"] = int(code)
            if retry_after is not None:
                m["retry_after"] = str(retry_after)
            m["times"] = None if times is None else int(times)
        self.mode = m
        if mode != "stall":
            self._release.set()       # requests still stalled answer now
        return m

    def _take_status_turn(self):
        """Whether this request gets the status mode's answer (times=N counts down)."""
        with self._lock:
            m = self.mode
            if m.get("times") is None:
                return True
            if m["times"] <= 0:
                return False
            m["times"] -= 1
            return True

    def release(self):
        """Answers every stalled request now (and later ones at once, until
        the next set_mode("stall"))."""
        self._release.set()

    # -- records --

    def _record(self, req):
        with self._lock:
            req.seq = len(self._requests) + 1
            self._requests.append(req)

    def _conn_opened(self):
        with self._lock:
            self._conn_seq += 1
            self._conn_open += 1
            self._conn_max = max(self._conn_max, self._conn_open)
            return self._conn_seq, self._epoch

    def _conn_closed(self, epoch):
        with self._lock:
            if epoch == self._epoch:
                self._conn_open -= 1

    def _track_socket(self, s, add):
        with self._lock:
            (self._sockets.add if add else self._sockets.discard)(s)

    @property
    def requests(self):
        with self._lock:
            return list(self._requests)

    def count_by_key(self, header="Idempotency-Key"):
        """{key: number of requests carrying it}; requests without it are
        counted under None."""
        return dict(collections.Counter(r.header(header) for r in self.requests))

    def stats(self):
        with self._lock:
            return {"requests": len(self._requests), "connections_total": self._conn_seq,
                    "connections_open": self._conn_open, "connections_max": self._conn_max}

    def reset(self):
        """Forgets records and counters.  A connection still open counts
        again (as a new one) if it carries another request; one that stays
        idle, or whose handler still sleeps in a stall, does not."""
        with self._lock:
            self._requests.clear()
            self._epoch += 1
            self._conn_seq = self._conn_open = self._conn_max = 0

    def wait_for(self, n, timeout=5.0):
        """Waits until at least N requests were recorded; returns them."""
        deadline = time.monotonic() + timeout
        while True:
            reqs = self.requests
            if len(reqs) >= n or time.monotonic() >= deadline:
                return reqs
            time.sleep(0.01)


def main(argv=None):
    ap = argparse.ArgumentParser(description="fake campaign API")
    ap.add_argument("--serve", action="store_true", help="serve until SIGTERM")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--mode", default="normal", choices=MODES)
    ap.add_argument("--until-eof", action="store_true", help="also stop when stdin closes")
    args = ap.parse_args(argv)
    if not args.serve:
        ap.error("nothing to do without --serve")

    up = FakeUpstream(args.host, args.port, args.mode, track=False).start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    if args.until_eof:
        def watch():
            while os.read(0, 4096):
                pass
            done.set()
        threading.Thread(target=watch, daemon=True).start()
    print(up.port, flush=True)
    while not done.wait(0.2):
        pass
    up.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""capgate behind a real reverse proxy (Debian's nginx, `make deps` installs
nginx-light), for what libmicrohttpd answers by itself (issue 12 item 5;
docs/internals.md, "What libmicrohttpd answers by itself").

MHD 0.9.75 answers a Content-Length that is not decimal digits with an HTML
400 whose header block is written twice.  nginx itself refuses such a
request from a client, so to put one on nginx's upstream connection the
test location forwards the client's X-Forward-Length as Content-Length.
What must hold: nginx reads exactly one response (the second header block
arrives as part of its body), does not reuse that upstream connection, and
every later request through the same keep-alive pool gets its own answer."""

import os
import shutil
import socket
import subprocess
import time

import harness as h

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

CONF = """
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream capgate {{
        server 127.0.0.1:{upstream};
        keepalive 4;
    }}
    server {{
        listen 127.0.0.1:{port};
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        location / {{
            proxy_pass http://capgate;
        }}
        location = /raw-length {{
            proxy_pass http://capgate/v1/decide;
            proxy_pass_request_body off;
            proxy_set_header Content-Length $http_x_forward_length;
        }}
    }}
}}
"""


class Nginx:
    def __init__(self, upstream_port):
        if not os.access(NGINX, os.X_OK):
            raise h.HarnessError("nginx not found (make deps installs nginx-light)")
        self.dir = h.mkdtemp("capgate-nginx-")
        self.port = h.free_port()
        self.conf = os.path.join(self.dir, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(CONF.format(dir=self.dir, upstream=upstream_port, port=self.port))
        self.proc = h._track(subprocess.Popen(
            [NGINX, "-p", self.dir, "-e", os.path.join(self.dir, "error.log"), "-c", self.conf],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        h.wait_until(self._up, 5, what="nginx listening")

    def _up(self):
        if self.proc.poll() is not None:
            raise h.HarnessError("nginx exited: %s\n%s" % (self.proc.stderr.read().decode(),
                                                           self.log()))
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            return True
        except OSError:
            return False

    def log(self):
        try:
            with open(os.path.join(self.dir, "error.log")) as f:
                return f.read()
        except OSError:
            return ""


class Client:
    """One kept-alive connection to nginx; reads responses framed by
    Content-Length, so a second response hidden in a body would show."""

    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buf = b""

    def ask(self, head):
        self.s.sendall(head)
        while b"\r\n\r\n" not in self.buf:
            b = self.s.recv(65536)
            h.check(b, "nginx closed the client connection: %r" % self.buf[:300])
            self.buf += b
        hdr, _, rest = self.buf.partition(b"\r\n\r\n")
        r = h.parse_http_response(hdr + b"\r\n\r\n")
        n = int(r.headers.get("Content-Length", "0"))
        while len(rest) < n:
            b = self.s.recv(65536)
            h.check(b, "nginx closed mid-body")
            rest += b
        body, self.buf = rest[:n], rest[n:]
        return r.status, r.headers, body

    def close(self):
        self.s.close()


def healthz_ok(c, n=5):
    for i in range(n):
        st, hd, body = c.ask(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        h.check(st == 200 and body == b'{"status":"ok"}\n',
                "request %d after the library's own answer got %s %r" % (i, st, body[:200]))


def test_doubled_header_block_read_as_one_response_by_nginx():
    g = h.Gateway()
    ng = Nginx(g.port)
    c = Client(ng.port)
    try:
        healthz_ok(c, 2)          # the upstream keep-alive pool now holds a connection
        st, hd, body = c.ask(b"GET /raw-length HTTP/1.1\r\nHost: x\r\nX-Forward-Length: abc\r\n\r\n")
        h.check(st == 400, "MHD's 400 for Content-Length: abc through nginx: %s %r" % (st, body[:300]))
        # The doubled block is there -- as body bytes of the one response.
        h.check(body.startswith(b"HTTP/1.1 400 Bad Request\r\n"),
                "expected the library's second header block inside the body: %r" % body[:300])
        healthz_ok(c, 10)
        time.sleep(0.2)
        log = ng.log()
        print("    nginx: %s" % "; ".join(ln.split("*", 1)[-1][:120] for ln in log.splitlines()
                                       if "upstream" in ln) or "(nothing about the upstream)")
        h.check("upstream sent invalid" not in log and "upstream prematurely" not in log,
                "nginx misread an upstream answer:\n%s" % log[-2000:])
    finally:
        c.close()


def test_library_431_passes_through_nginx_and_the_pool_recovers():
    # MHD's own 431 (headers beyond limits.connection_memory_bytes) is HTML;
    # a client can cause it through nginx, whose own header limit is larger.
    g = h.Gateway(overrides={"limits": {"connection_memory_bytes": 16384}})
    ng = Nginx(g.port)
    c = Client(ng.port)
    try:
        healthz_ok(c, 2)
        big = b"".join(b"X-%d: %s\r\n" % (k, b"a" * 7000) for k in range(3))
        st, hd, body = c.ask(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n")
        h.check(st == 431, "a 21 KB header block through nginx: %s %r" % (st, body[:200]))
        healthz_ok(c, 10)
    finally:
        c.close()

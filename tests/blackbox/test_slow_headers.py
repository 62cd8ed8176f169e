"""One address must not lock everyone out (issue 12 item 8): on a
non-loopback listener a per-address connection limit applies by default,
and a connection that sends its headers too slowly is closed after
limits.header_timeout even though it is never idle."""

import hashlib
import resource
import socket
import threading
import time

import harness as h

TOKEN = "slow-headers-test-token"
AUTH = {"auth": {"tokens": [{"name": "t", "sha256": hashlib.sha256(TOKEN.encode()).hexdigest(),
                             "scopes": ["send", "admin"]}]}}
PARTIAL = b"POST /v1/decide HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


def raise_nofile(want):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE,
                           (want if hard == resource.RLIM_INFINITY else min(want, hard), hard))


def slow_open(port, n, src="127.0.0.1"):
    """N connections from SRC, each with a request whose headers never end."""
    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((src, 0))
        s.settimeout(2)
        try:
            s.connect(("127.0.0.1", port))
            s.sendall(PARTIAL)
        except OSError:
            pass
        socks.append(s)
    return socks


def trickle(socks, stop, every=0.3):
    """One more header byte on every connection each EVERY seconds, so no
    idle timeout ever fires (the slowloris shape)."""
    while not stop.wait(every):
        for s in socks:
            try:
                s.send(b"X")
            except OSError:
                pass


def healthz_from(port, src, timeout=2.0):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.bind((src, 0))
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            b = s.recv(4096)
            if not b:
                break
            data += b
        return data.startswith(b"HTTP/1.1 200")
    except OSError:
        return False
    finally:
        s.close()


def closed_by_peer(s):
    """True when the server closed S (EOF or reset), without waiting."""
    s.setblocking(False)
    try:
        return s.recv(4096) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        s.setblocking(True)


def test_one_address_cannot_take_every_connection():
    # Before: no per-address limit by default, so 250 slow connections from
    # 127.0.0.1 held all 200 slots and 127.0.0.2 was refused.
    raise_nofile(2000)
    g = h.Gateway(overrides={"listen": "0.0.0.0:{port}", "workers": 2, **AUTH,
                             "limits": {"max_connections": 200}})
    stop = threading.Event()
    attack = slow_open(g.port, 250)
    t = threading.Thread(target=trickle, args=(attack, stop), daemon=True)
    t.start()
    try:
        time.sleep(0.5)
        served = [healthz_from(g.port, "127.0.0.2") for _ in range(40)]
        held = sum(1 for s in attack if not closed_by_peer(s))
    finally:
        stop.set()
        t.join(2)
        for s in attack:
            s.close()
    print("    250 slow-header connections from 127.0.0.1 (max_connections 200, per-address "
          "default): %d still held; 127.0.0.2 served %d of %d" % (held, sum(served), len(served)))
    h.check(all(served), "requests from another address failed while one address flooded: "
            "%d of %d served" % (sum(served), len(served)))
    h.check(held <= 200 // 16 + 1, "one address holds %d connections; the default per-address "
            "limit on a non-loopback listener is max_connections/16 = %d" % (held, 200 // 16 + 1))


def test_slow_header_connection_closed_after_header_timeout():
    # Before: only the idle timeout existed, and a byte every 0.3 s resets it,
    # so the connection stayed open for as long as the client liked.
    g = h.Gateway(overrides={"limits": {"header_timeout": "2s", "connection_timeout": "30s"}})
    stop = threading.Event()
    socks = slow_open(g.port, 3)
    t0 = time.monotonic()
    t = threading.Thread(target=trickle, args=(socks, stop), daemon=True)
    t.start()
    try:
        h.wait_until(lambda: all(closed_by_peer(s) for s in socks), 5.0, interval=0.1,
                     what="slow-header connections closed (header_timeout 2s)")
        dt = time.monotonic() - t0
    finally:
        stop.set()
        t.join(2)
        for s in socks:
            s.close()
    h.check(1.8 <= dt <= 3.5, "slow-header connections closed after %.2fs (header_timeout 2s)" % dt)
    h.expect_status(g.get("/healthz"), 200)


def test_header_timeout_spares_kept_alive_connections():
    """A connection idle between two requests is governed by
    connection_timeout, not by header_timeout."""
    import http.client
    import json
    g = h.Gateway(overrides={"limits": {"header_timeout": "1s", "connection_timeout": "30s"}})
    conn = http.client.HTTPConnection("127.0.0.1", g.port, timeout=5)
    try:
        u = h.uid("slow")
        for i in range(2):
            if i:
                time.sleep(2.5)      # beyond header_timeout, within connection_timeout
                h.check(not closed_by_peer(conn.sock),
                        "a kept-alive connection was closed by the header timeout while idle")
            conn.request("POST", "/v1/decide",
                         body=json.dumps({"user": u, "channel": "push", "message_id": "ka%d" % i}),
                         headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
            h.check(r.status == 200, "request %d on a kept-alive connection: %s" % (i, r.status))
    finally:
        conn.close()

"""Helpers of test_hard_faults.py (Python 3 stdlib only).

  * scale(n): N times CAPGATE_HARD_SCALE (default 1.0), at least a minimum;
  * run_requests(): many JSON POSTs over keep-alive HTTP/1.1 connections
    (asyncio), fast enough for a few thousand requests a second from Python;
  * BlackHoleProxy: a TCP relay between a gateway and Redis that can stop
    relaying at once (a black-holed port: connections stay open, bytes go
    nowhere, new connections are never served) and resume; ProxyProcess
    runs one in its own process (hole/unhole by signal), away from the GIL;
  * proc_rss_kb / proc_fds / proc_nofile: a process's VmRSS, open fds and
    soft RLIMIT_NOFILE from /proc;
  * AofRedis: a harness.Redis with appendonly yes / appendfsync everysec that
    restarts on the same port and directory (so the AOF is reloaded);
  * fast_restart(): kill -9 + start of a harness.Redis with a tight poll.
"""

import asyncio
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time

import harness as h


def scale_factor():
    try:
        return max(0.01, float(os.environ.get("CAPGATE_HARD_SCALE", "1.0")))
    except ValueError:
        return 1.0


def scale(n, minimum=1):
    return max(minimum, int(round(n * scale_factor())))


# --------------------------------------------------------------------------
# /proc
# --------------------------------------------------------------------------

def proc_rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise h.HarnessError("no VmRSS for pid %d" % pid)


def proc_fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def proc_fd_targets(pid):
    out = {}
    d = "/proc/%d/fd" % pid
    for fd in os.listdir(d):
        try:
            out[int(fd)] = os.readlink(os.path.join(d, fd))
        except OSError:
            pass
    return out


def proc_nofile(pid):
    """(soft, hard) RLIMIT_NOFILE of PID."""
    with open("/proc/%d/limits" % pid) as f:
        for line in f:
            if line.startswith("Max open files"):
                parts = line.split()
                soft, hard = parts[3], parts[4]
                conv = lambda v: -1 if v == "unlimited" else int(v)  # noqa: E731
                return conv(soft), conv(hard)
    return None


# --------------------------------------------------------------------------
# Fast HTTP load (asyncio, keep-alive)
# --------------------------------------------------------------------------

class Result:
    __slots__ = ("tag", "status", "body", "latency", "error", "t0")

    def __init__(self, tag, status, body, latency, error=None, t0=0.0):
        self.tag = tag
        self.status = status
        self.body = body
        self.latency = latency
        self.error = error
        self.t0 = t0

    def __repr__(self):
        return "Result(%r, %r, %r, %.3fs, %r)" % (self.tag, self.status, self.body, self.latency,
                                                   self.error)


async def _read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    close = False
    for ln in lines[1:]:
        k, _, v = ln.partition(b":")
        k = k.strip().lower()
        if k == b"content-length":
            length = int(v.strip())
        elif k == b"connection" and v.strip().lower() == b"close":
            close = True
    body = await reader.readexactly(length) if length else b""
    return status, body, close


async def _conn_worker(port, path, queue, results, timeout):
    reader = writer = None
    try:
        while queue:
            tag, body = queue.popleft()
            data = json.dumps(body).encode() if not isinstance(body, bytes) else body
            req = (b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                   b"Content-Length: %d\r\n\r\n" % (path.encode(), len(data))) + data
            t0 = time.monotonic()
            try:
                if writer is None:
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_connection("127.0.0.1", port), timeout)
                writer.write(req)
                status, raw, close = await asyncio.wait_for(_read_response(reader), timeout)
                dt = time.monotonic() - t0
                try:
                    parsed = json.loads(raw) if raw else None
                except ValueError:
                    parsed = raw.decode(errors="replace")
                results.append(Result(tag, status, parsed, dt, None, t0))
                if close:
                    writer.close()
                    reader = writer = None
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError,
                    asyncio.LimitOverrunError, ValueError, IndexError) as e:
                results.append(Result(tag, None, None, time.monotonic() - t0,
                                      "%s: %s" % (type(e).__name__, e), t0))
                if writer is not None:
                    writer.close()
                reader = writer = None
    finally:
        if writer is not None:
            writer.close()


def run_requests(jobs, connections=32, path="/v1/decide", timeout=10.0):
    """JOBS: {port: [(tag, body_obj), ...]} -- each port's list is served
    in order by CONNECTIONS keep-alive connections.  Returns
    ([Result...], seconds)."""
    import collections
    results = []

    async def main():
        tasks = []
        for port, items in jobs.items():
            q = collections.deque(items)
            for _ in range(min(connections, len(items))):
                tasks.append(asyncio.ensure_future(_conn_worker(port, path, q, results, timeout)))
        await asyncio.gather(*tasks)
    t0 = time.monotonic()
    asyncio.run(main())
    return results, time.monotonic() - t0


# --------------------------------------------------------------------------
# A TCP relay that can black-hole
# --------------------------------------------------------------------------

class BlackHoleProxy:
    """127.0.0.1:<port> -> 127.0.0.1:<target>.  hole(): stop relaying in
    both directions and stop accepting (the kernel still completes the TCP
    handshake of new connections into the backlog, so they connect and then
    hear nothing -- as behind a firewall that drops packets); bytes already
    sent wait in the socket buffers, as TCP would retransmit them.
    unhole(): relay again."""

    def __init__(self, target_port, track=True):
        self.target = target_port
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(256)
        self.lsock.setblocking(False)
        self.port = self.lsock.getsockname()[1]
        self.sel = selectors.DefaultSelector()
        self.holed = False
        self._want = False
        self.pairs = {}          # sock -> peer sock
        self.accepted = 0
        self._stop = False
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self.sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self.sel.register(self.lsock, selectors.EVENT_READ, "listen")
        self.thread = threading.Thread(target=self._run, daemon=True, name="blackhole")
        self.thread.start()
        if track:
            h._track(_Stopper(self))

    # -- control --
    def hole(self):
        self._set(True)

    def unhole(self):
        self._set(False)

    def _set(self, v):
        with self._lock:
            self._want = v
        self._wake_w.send(b"x")
        # wait until the loop applied it
        deadline = time.monotonic() + 2
        while self.holed != v and time.monotonic() < deadline:
            time.sleep(0.001)

    def stop(self):
        if self._stop:
            return
        self._stop = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        self.thread.join(3)
        for s in list(self.pairs):
            try:
                s.close()
            except OSError:
                pass
        self.lsock.close()

    def connections(self):
        return len(self.pairs) // 2

    # -- loop --
    def _apply(self):
        with self._lock:
            want = self._want
        if want == self.holed:
            return
        self.holed = want
        for s in list(self.pairs):
            try:
                if want:
                    self.sel.unregister(s)
                else:
                    self.sel.register(s, selectors.EVENT_READ, "data")
            except (KeyError, ValueError, OSError):
                pass
        try:
            if want:
                self.sel.unregister(self.lsock)
            else:
                self.sel.register(self.lsock, selectors.EVENT_READ, "listen")
        except (KeyError, ValueError):
            pass

    def _close_pair(self, s):
        peer = self.pairs.pop(s, None)
        for x in (s, peer):
            if x is None:
                continue
            self.pairs.pop(x, None)
            try:
                self.sel.unregister(x)
            except (KeyError, ValueError, OSError):
                pass
            try:
                x.close()
            except OSError:
                pass

    def _run(self):
        while not self._stop:
            for key, _ in self.sel.select(0.5):
                what = key.data
                if what == "wake":
                    try:
                        self._wake_r.recv(4096)
                    except OSError:
                        pass
                    self._apply()
                    continue
                if self.holed:
                    continue
                if what == "listen":
                    try:
                        c, _ = self.lsock.accept()
                    except OSError:
                        continue
                    try:
                        u = socket.create_connection(("127.0.0.1", self.target), timeout=1)
                    except OSError:
                        c.close()
                        continue
                    self.accepted += 1
                    for s in (c, u):
                        s.setblocking(True)
                        s.settimeout(None)
                    self.pairs[c] = u
                    self.pairs[u] = c
                    self.sel.register(c, selectors.EVENT_READ, "data")
                    self.sel.register(u, selectors.EVENT_READ, "data")
                    continue
                s = key.fileobj
                peer = self.pairs.get(s)
                if peer is None:
                    continue
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    self._close_pair(s)
                    continue
                try:
                    peer.sendall(data)
                except OSError:
                    self._close_pair(s)


class ProxyProcess:
    """A BlackHoleProxy in its own process (so that the test's threads and
    the GIL never delay the relay): hole() / unhole() by SIGUSR1 / SIGUSR2,
    each acknowledged on its stdout.  Killed by PID when the scope ends."""

    def __init__(self, target_port):
        self.proc = h._track(subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--proxy", str(target_port)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE))
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            raise h.HarnessError("black-hole proxy did not start: %r" % line)
        self.port = int(line)

    def _signal(self, sig, want):
        os.kill(self.proc.pid, sig)
        line = self.proc.stdout.readline().strip().decode()
        if line != want:
            raise h.HarnessError("black-hole proxy answered %r, want %r" % (line, want))

    def hole(self):
        self._signal(signal.SIGUSR1, "holed")

    def unhole(self):
        self._signal(signal.SIGUSR2, "open")


def _proxy_main(target):
    p = BlackHoleProxy(target, track=False)
    acks = []

    def on(sig, frame):
        acks.append(sig)
    signal.signal(signal.SIGUSR1, on)
    signal.signal(signal.SIGUSR2, on)
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    print(p.port, flush=True)
    while True:
        time.sleep(0.005)
        while acks:
            sig = acks.pop(0)
            if sig == signal.SIGUSR1:
                p.hole()
                print("holed", flush=True)
            else:
                p.unhole()
                print("open", flush=True)


class _Stopper:
    """Stands in for a process in the harness scope (stops the proxy)."""

    def __init__(self, obj):
        self.obj = obj
        self.pid = None

    def poll(self):
        self.obj.stop()
        return 0

    def wait(self, timeout=None):
        return 0


# --------------------------------------------------------------------------
# Redis flavours
# --------------------------------------------------------------------------

class AofRedis(h.Redis):
    """appendonly yes, appendfsync everysec; start() after kill() reloads the
    AOF from the same directory on the same port."""

    def _spawn(self, port):
        log = open(self.log_path, "ab")
        try:
            p = subprocess.Popen(
                h.rp.redis_argv(port, self.dir, "--appendonly", "yes", "--appendfsync",
                                "everysec", "--loglevel", "notice"),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.dir)
        finally:
            log.close()
        return h._track(p)


def fast_restart(redis, down_s=0.0):
    """kill -9 REDIS, optionally wait DOWN_S, start it again on the same
    port; polls PING every 2 ms.  Returns the seconds it took."""
    t0 = time.monotonic()
    if redis.proc is not None and redis.proc.poll() is None:
        os.kill(redis.proc.pid, signal.SIGKILL)
        redis.proc.wait(5)
    if down_s:
        time.sleep(down_s)
    for _attempt in range(20):
        p = redis._spawn(redis.port)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and p.poll() is None:
            try:
                s = socket.create_connection(("127.0.0.1", redis.port), timeout=0.5)
            except OSError:
                time.sleep(0.002)
                continue
            try:
                s.sendall(b"PING\r\n")
                if s.recv(64).startswith(b"+PONG"):
                    redis.proc = p
                    return time.monotonic() - t0
            except OSError:
                pass
            finally:
                s.close()
            time.sleep(0.002)
        # lost the port (TIME_WAIT / a client's ephemeral port): try again
        h._kill_proc(p)
        time.sleep(0.05)
    raise h.HarnessError("redis-server did not come back on port %d: %s"
                         % (redis.port, redis.log()[-500:]))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--proxy":
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        _proxy_main(int(sys.argv[2]))

"""What the black-box suite and the benchmark share (Python 3 stdlib only):
a small RESP client, free loopback ports, and the redis-server command line
with the wait for its first PONG.

    import redisproto as rp
    with rp.RedisConn(port) as c:
        c.cmd("SET", "k", "v")
"""

import os
import shutil
import socket
import subprocess
import time

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisError(Exception):
    """An error reply from Redis."""


def free_port():
    """A loopback TCP port nobody listens on right now."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def free_cluster_port():
    """A free port whose cluster bus port (+10000) is free too (Redis
    refuses a cluster node above 55535)."""
    for _ in range(200):
        p = free_port()
        if p + 10000 > 65535:
            continue
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", p + 10000))
        except OSError:
            continue
        finally:
            s.close()
        return p
    raise OSError("no free port pair for a cluster node")


def encode(args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, bytes):
            b = a
        elif isinstance(a, str):
            b = a.encode()
        else:
            b = str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def read(f):
    """One reply from the file F: bytes for bulk strings, str for status
    replies, int, list, None; an error reply is returned as a RedisError."""
    line = f.readline()
    if not line:
        raise ConnectionError("redis closed the connection")
    if not line.endswith(b"\r\n"):
        raise ConnectionError("truncated RESP line %r" % line[:80])
    t, rest = line[:1], line[1:-2]
    if t == b"+":
        return rest.decode("latin-1")
    if t == b"-":
        return RedisError(rest.decode(errors="replace"))
    if t == b":":
        return int(rest)
    if t == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        if len(data) != n + 2:
            raise ConnectionError("truncated bulk string")
        return data[:-2]
    if t == b"*":
        n = int(rest)
        if n < 0:
            return None
        return [read(f) for _ in range(n)]
    raise ConnectionError("bad RESP type byte %r" % t)


class RedisConn:
    """A persistent RESP connection."""

    def __init__(self, port, host="127.0.0.1", timeout=5.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.f = self.sock.makefile("rb")

    def cmd(self, *args):
        self.sock.sendall(encode(args))
        r = read(self.f)
        if isinstance(r, RedisError):
            raise r
        return r

    def info(self, section):
        """INFO SECTION as a dict of its key: value lines."""
        text = self.cmd("INFO", section).decode("latin-1")
        return dict(line.split(":", 1) for line in text.splitlines()
                    if ":" in line and not line.startswith("#"))

    def close(self):
        try:
            self.f.close()
        except OSError:
            pass
        finally:
            self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


def redis_cmd(port, *args, timeout=5.0):
    """One command on a fresh connection (a RedisError raises)."""
    with RedisConn(port, timeout=timeout) as c:
        return c.cmd(*args)


def redis_argv(port, directory, *extra):
    """redis-server on loopback PORT, nothing persisted unless EXTRA says so."""
    return [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--daemonize", "no", "--dir", directory] + list(extra)


def wait_for_ping(port, proc, timeout=5.0):
    """True once redis-server on PORT answers PONG; False when PROC exited or
    TIMEOUT passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            if redis_cmd(port, "PING", timeout=0.5) == "PONG":
                return True
        except (OSError, ConnectionError, RedisError):
            pass
        time.sleep(0.03)
    return False

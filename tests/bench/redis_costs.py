#!/usr/bin/env python3
"""What a script's parts cost Redis, in instructions (callgrind).

    python3 tests/bench/redis_costs.py

Starts a private redis-server under callgrind (loopback, no persistence)
and, for each shape below, counts the instructions Redis spends on N calls
(network, parsing and reply included), one at a time: a bare EVALSHA, one
with decide.lua's number of keys and arguments, and then one command at a
time inside a script.  The difference between two rows is what a part of
a script costs, which is how the changes in docs/performance.md ("The proxy
path, third step") were chosen.  Nothing here is a target; the figures
move with the Redis version, not with capgate.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import redisproto as rp  # noqa: E402

N = int(os.environ.get("REDIS_COSTS_CALLS", "2000"))


def main():
    if not shutil.which("valgrind") or not shutil.which("redis-server"):
        print("redis_costs: needs valgrind and redis-server")
        return 1
    tmp = tempfile.mkdtemp(prefix="capgate-redis-costs-")
    out = os.path.join(tmp, "cg.out")
    port = rp.free_port()
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--callgrind-out-file=" + out,
         shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no", "--dir", tmp],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = rp.RedisConn(port, timeout=60)
                if r.cmd("PING") == "PONG":
                    break
            except (OSError, ConnectionError, rp.RedisError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    print("redis_costs: redis-server did not start under callgrind")
                    return 1
                time.sleep(0.2)
        run(r, proc.pid, tmp)
        r.close()
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def ctl(op, pid):
    subprocess.run(["callgrind_control"] + op.split() + [str(pid)], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=60)


def total_of(dump):
    text = subprocess.run(["callgrind_annotate", "--threshold=100", dump],
                          stdout=subprocess.PIPE, timeout=120).stdout.decode()
    for line in text.splitlines():
        m = re.match(r"^\s*([\d,]+)\s.*PROGRAM TOTALS", line)
        if m:
            return int(m.group(1).replace(",", ""))
    raise RuntimeError("callgrind_annotate gave no totals")


def run(r, pid, tmp):
    ctl("-i on", pid)                   # (started with --instr-atstart=no)
    seen = set()

    def measure(name, fn):
        ctl("-z", pid)
        for i in range(N):
            fn(i)
        ctl("-d", pid)
        dump = None
        deadline = time.monotonic() + 30
        while not dump and time.monotonic() < deadline:
            new = sorted(f for f in os.listdir(tmp) if f.startswith("cg.out.") and f not in seen)
            if new and os.path.getsize(os.path.join(tmp, new[-1])) > 0:
                time.sleep(0.3)          # written to its end
                dump = os.path.join(tmp, new[-1])
                seen.update(new)
            else:
                time.sleep(0.2)
        print("%-52s %8.0f Ir a call" % (name, total_of(dump) / N), flush=True)

    def sha(src):
        return r.cmd("SCRIPT", "LOAD", src)

    blob = "x" * 300
    keys8 = ["cg:{ab}:s5", "cg:{ab}:c:p", "cg:{ab}:g5", "cg:{ab}:audit", "cg:{ab}:q",
             "cg:{ab}:d:m", "cg:{ab}:k:-", "cg:{ab}:ans:m"]
    args9 = ["12345678", "n" * 63, "r" * 80, "email|marketing", "1000", "p|email|marketing|1",
             blob, "user:msg", "99999999999999"]
    ret = sha("return 1")
    measure("PING", lambda i: r.cmd("PING"))
    measure("EVALSHA 'return 1', no keys or arguments", lambda i: r.cmd("EVALSHA", ret, 0))
    measure("... 1 short argument", lambda i: r.cmd("EVALSHA", ret, 0, "abcdefgh"))
    measure("... 18 short arguments", lambda i: r.cmd("EVALSHA", ret, 0, *(["abcdefgh"] * 18)))
    measure("... 1 argument of 300 bytes", lambda i: r.cmd("EVALSHA", ret, 0, blob))
    measure("... decide.lua's 8 keys and 9 arguments (proxy mode)",
            lambda i: r.cmd("EVALSHA", ret, 8, *keys8, *args9))
    # (what, keys, the script's body, the keys and arguments of call I)
    shapes = [
        ("TIME", 0, "local t = redis.call('TIME')", lambda i: []),
        ("string.match of 5 numbers", 0,
         "local a, b, c, d, e = string.match(ARGV[1], '^(%d+)|(%d+)|(%d+)|(%d)|(%d+)$')",
         lambda i: ["1000|999|0|0|30000"]),
        ("struct.unpack of 5 numbers", 0, "local a, b, c, d, e = struct.unpack('>I4I6I1I1I4', ARGV[1])",
         lambda i: ["\x00" * 16]),
        ("GET of a missing key", 1, "redis.call('GET', KEYS[1])", lambda i: ["c:%d" % i]),
        ("HSET of a new 3-field hash with a 300-byte value", 1,
         "redis.call('HSET', KEYS[1], 'blob', ARGV[1], 'prio', '0', 'collapse', '')",
         lambda i: ["e:%d" % i, blob]),
        ("... and PEXPIRE it", 1,
         "redis.call('HSET', KEYS[1], 'blob', ARGV[1], 'prio', '0', 'collapse', '') "
         "redis.call('PEXPIRE', KEYS[1], 100000)", lambda i: ["d:%d" % i, blob]),
        ("ZADD NX of a new member", 1, "redis.call('ZADD', KEYS[1], 'NX', ARGV[2], ARGV[1])",
         lambda i: ["q", "m%d" % i, str(10 ** 12 + i)]),
        ("ZREM and DEL", 2, "redis.call('ZREM', KEYS[2], ARGV[1]) redis.call('DEL', KEYS[1])",
         lambda i: ["d:%d" % i, "q", "m%d" % i]),
        ("XADD of an audit entry (MAXLEN ~)", 1,
         "redis.call('XADD', KEYS[1], 'MAXLEN', '~', 100000, '*', 'decide', ARGV[1])",
         lambda i: ["st", "p" * 16 + "|push|marketing|1|allow|ok||||"]),
        ("XADD of the same entry, no MAXLEN", 1,
         "redis.call('XADD', KEYS[1], '*', 'decide', ARGV[1])",
         lambda i: ["st2", "p" * 16 + "|push|marketing|1|allow|ok||||"]),
        ("XADD NOMKSTREAM MAXLEN ~ (as decide.lua)", 1,
         "redis.call('XADD', KEYS[1], 'NOMKSTREAM', 'MAXLEN', '~', 100000, '*', 'decide', ARGV[1])",
         lambda i: ["st", "p" * 16 + "|push|marketing|1|allow|ok||||"]),
        ("HSET of a new 2-field hash with a 300-byte value", 1,
         "redis.call('HSET', KEYS[1], 'blob', ARGV[1], 'prio', '0')",
         lambda i: ["f:%d" % i, blob]),
        ("HRANDFIELD", 1, "redis.call('HRANDFIELD', KEYS[1])", lambda i: ["b%d" % (i % 300)]),
        ("HRANDFIELD 1 WITHVALUES", 1, "redis.call('HRANDFIELD', KEYS[1], 1, 'WITHVALUES')",
         lambda i: ["b%d" % (i % 300)]),
    ]
    for k in range(300):
        r.cmd("HSET", "b%d" % k, "p", "r" * 16, "", "e" * 6)
    for name, nkeys, body, argv_of in shapes:
        s = sha(body + " return 1")
        measure("in a script: " + name, lambda i, s=s, nkeys=nkeys, argv_of=argv_of:
                r.cmd("EVALSHA", s, nkeys, *argv_of(i)))

if __name__ == "__main__":
    sys.exit(main())

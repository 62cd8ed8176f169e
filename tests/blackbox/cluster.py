"""A real local Redis Cluster for the black-box tests (Python 3 stdlib only).

    c = cluster.start()          # 3 masters + 3 replicas on free loopback ports
    c.seeds()                    # ["127.0.0.1:P1", "127.0.0.1:P2"] for redis.cluster
    c.owner(slot)                # port of the master that owns SLOT
    c.kill(port)                 # SIGKILL one node (a replica takes over)

Every redis-server is started through harness._track, so it is killed by PID
when the scope that started it ends (the module, for a shared cluster).
"""

import hashlib
import os
import signal
import subprocess
import shutil
import time

import harness as h
import redisproto as rp  # noqa: E402  (harness puts tests/lib on the path)

REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
NODE_TIMEOUT_MS = 2000


# --------------------------------------------------------------------------
# Slots (the same arithmetic as src/cluster.c, to pick people by slot)
# --------------------------------------------------------------------------

def crc16(data):
    crc = 0
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def key_slot(key):
    if isinstance(key, str):
        key = key.encode()
    s = key.find(b"{")
    if s >= 0:
        e = key.find(b"}", s + 1)
        if e > s + 1:
            return crc16(key[s + 1:e]) % 16384
    return crc16(key) % 16384


def pseudonym(key_file, user):
    """The user's pseudonym, as src/pseudonym.c computes it."""
    with open(key_file, "rb") as f:
        k = hashlib.blake2b(f.read(), digest_size=32).digest()
    return hashlib.blake2b(b"u" + user.encode(), key=k, digest_size=16).hexdigest()


def tag_of(key):
    if isinstance(key, bytes):
        key = key.decode()
    s = key.find("{")
    e = key.find("}", s + 1)
    return key[s + 1:e]


# --------------------------------------------------------------------------
# The cluster
# --------------------------------------------------------------------------

class Cluster:
    def __init__(self, masters=3, replicas_per_master=1, node_timeout_ms=NODE_TIMEOUT_MS,
                 password=None):
        self.dir = h.mkdtemp("capgate-cluster-")
        self.node_timeout_ms = node_timeout_ms
        self.password = password
        self.procs = {}           # port -> Popen
        ports = []
        while len(ports) < masters * (1 + replicas_per_master):
            p = rp.free_cluster_port()
            if p not in ports and p + 10000 not in ports and p - 10000 not in ports:
                ports.append(p)
        self.ports = ports
        for p in ports:
            self._spawn(p)
        for p in ports:
            h.wait_until(lambda p=p: self._ping(p), 5, what="redis-server on %d" % p)
        args = [REDIS_CLI, "--cluster", "create"] + ["127.0.0.1:%d" % p for p in ports] + \
            ["--cluster-replicas", str(replicas_per_master), "--cluster-yes"]
        env = dict(os.environ, REDISCLI_AUTH=password) if password else None
        r = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, timeout=60,
                           env=env)
        if r.returncode != 0:
            raise h.HarnessError("redis-cli --cluster create failed: %s %s"
                                 % (r.stdout.decode()[-1500:], r.stderr.decode()[-500:]))
        self.wait_ok()
        self.wait_replicas()
        self.port = self.master_ports()[0]     # for harness.Gateway's {redis_port}

    # -- processes --
    def _spawn(self, port):
        log = open(os.path.join(self.dir, "redis-%d.log" % port), "ab")
        try:
            p = subprocess.Popen(
                [h.REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1",
                 "--cluster-enabled", "yes",
                 "--cluster-config-file", os.path.join(self.dir, "nodes-%d.conf" % port),
                 "--cluster-node-timeout", str(self.node_timeout_ms),
                 "--appendonly", "no", "--save", "", "--daemonize", "no",
                 "--repl-diskless-sync-delay", "0"] +
                (["--requirepass", self.password, "--masterauth", self.password]
                 if self.password else []) + [
                 "--dir", self.dir, "--loglevel", "warning"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir)
        finally:
            log.close()
        self.procs[port] = h._track(p)
        return p

    def _ping(self, port):
        try:
            return self.cmd(port, "PING", timeout=0.5) == "PONG"
        except (OSError, ConnectionError, h.RedisError):
            return False

    def alive(self):
        return all(p.poll() is None for p in self.procs.values())

    def live_ports(self):
        return [port for port, p in self.procs.items() if p.poll() is None]

    def kill(self, port):
        """SIGKILL: the node dies at once, as in a crash."""
        p = self.procs[port]
        os.kill(p.pid, signal.SIGKILL)
        p.wait(5)

    # -- commands --
    def conn(self, port, timeout=5.0):
        c = h.RedisConn(port, timeout=timeout)
        if self.password:
            c.cmd("AUTH", self.password)
        return c

    def cmd(self, port, *args, timeout=5.0):
        with self.conn(port, timeout) as c:
            return c.cmd(*args)

    def any_cmd(self, *args):
        last = None
        for port in self.live_ports():
            try:
                return self.cmd(port, *args)
            except (OSError, ConnectionError, h.RedisError) as e:
                last = e
        raise h.HarnessError("no live node answered %r: %r" % (args, last))

    def info(self, port, section=""):
        text = self.cmd(port, "INFO", section) if section else self.cmd(port, "INFO")
        out = {}
        for ln in text.decode().splitlines():
            if ":" in ln and not ln.startswith("#"):
                k, v = ln.split(":", 1)
                out[k] = v.strip()
        return out

    def command_calls(self, port, name):
        """calls= of cmdstat_NAME (0 when never called)."""
        v = self.info(port, "commandstats").get("cmdstat_" + name.lower())
        if not v:
            return 0
        return int(dict(kv.split("=") for kv in v.split(","))["calls"])

    def node_id(self, port):
        v = self.cmd(port, "CLUSTER", "MYID")
        return v.decode() if isinstance(v, bytes) else v

    def slots(self, port=None):
        """[(start, end, master_port)] as node PORT (default: any) sees it."""
        r = self.cmd(port, "CLUSTER", "SLOTS") if port else self.any_cmd("CLUSTER", "SLOTS")
        return sorted((e[0], e[1], e[2][1]) for e in r)

    def master_ports(self):
        return sorted({m for _, _, m in self.slots()})

    def owner(self, slot):
        for a, b, m in self.slots():
            if a <= slot <= b:
                return m
        return None

    def keyslot(self, key):
        return self.any_cmd("CLUSTER", "KEYSLOT", key)

    def keys(self, port):
        out, cursor = [], b"0"
        with self.conn(port) as c:
            while True:
                cursor, batch = c.cmd("SCAN", cursor, "COUNT", 1000)
                out.extend(batch)
                if cursor in (b"0", "0"):
                    return out

    def wait_ok(self, timeout=20):
        """cluster_state:ok on every live node, and all of them agree on the
        owner of every slot."""
        def ok():
            views = set()
            for p in self.live_ports():
                info = self.cmd(p, "CLUSTER", "INFO").decode()
                if "cluster_state:ok" not in info:
                    return False
                view = tuple(self.slots(p))
                if sum(b - a + 1 for a, b, _ in view) != 16384:
                    return False
                views.add(view)
            return len(views) == 1
        h.wait_until(ok, timeout, interval=0.1, what="cluster_state:ok on every node")

    def wait_replicas(self, timeout=20):
        """Every replica in sync with its master: a replica that never synced
        may not take over (cluster-replica-validity-factor)."""
        def synced():
            for p in self.live_ports():
                info = self.info(p, "replication")
                if info.get("role") == "slave" and info.get("master_link_status") != "up":
                    return False
            return True
        h.wait_until(synced, timeout, interval=0.1, what="replicas in sync")

    # -- slot migration, in the steps redis-cli --cluster reshard takes --
    def migrate_begin(self, slot, src, dst):
        self.cmd(dst, "CLUSTER", "SETSLOT", slot, "IMPORTING", self.node_id(src))
        self.cmd(src, "CLUSTER", "SETSLOT", slot, "MIGRATING", self.node_id(dst))

    def migrate_keys(self, slot, src, dst, keys=None):
        """Moves KEYS (default: every key of SLOT) from SRC to DST; returns them."""
        if keys is None:
            keys = self.cmd(src, "CLUSTER", "GETKEYSINSLOT", slot, 100000)
        if keys:
            self.cmd(src, "MIGRATE", "127.0.0.1", dst, "", 0, 5000, "KEYS", *keys)
        return keys

    def migrate_end(self, slot, src, dst):
        dst_id = self.node_id(dst)
        self.cmd(dst, "CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        self.cmd(src, "CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        for p in self.master_ports():
            if p not in (src, dst):
                try:
                    self.cmd(p, "CLUSTER", "SETSLOT", slot, "NODE", dst_id)
                except h.RedisError:
                    pass

    def migrate(self, slot, src, dst):
        self.migrate_begin(slot, src, dst)
        while self.cmd(src, "CLUSTER", "COUNTKEYSINSLOT", slot):
            self.migrate_keys(slot, src, dst)
        self.migrate_end(slot, src, dst)

    def seeds(self, n=2):
        return ["127.0.0.1:%d" % p for p in self.master_ports()[:n]]


def start(**kw):
    return Cluster(**kw)


def shared(name="cluster", **kw):
    """One cluster for the tests of a module (rebuilt if a node died)."""
    return h.shared(name, lambda: Cluster(**kw))

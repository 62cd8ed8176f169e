"""A 503 means nothing happened, even when Redis ran the call in time but its
answer came back late (issue 12.2's last window): a proxy between the
gateway and Redis holds Redis's answers back past timeout_ms, so the
gateway answers 503 while the script has run; when the late answer comes,
the gateway undoes what it did, and nothing is ever delivered."""

import re
import socket
import threading
import time

import harness as h
from upstream_server import FakeUpstream
from test_proxy import proxy_config, send


class SlowRepliesProxy:
    """TCP between the gateway and Redis; while DELAY is set, Redis's bytes
    reach the gateway DELAY seconds late (requests go through at once)."""

    def __init__(self, redis_port):
        self.redis_port = redis_port
        self.delay = 0.0
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            r = socket.create_connection(("127.0.0.1", self.redis_port))
            threading.Thread(target=self._pipe, args=(c, r, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(r, c, True), daemon=True).start()

    def _pipe(self, src, dst, slow):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if slow and self.delay:
                    time.sleep(self.delay)
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        self.closed = True
        self.lsock.close()


def late_replies(g):
    m = re.search(r"^capgate_redis_late_replies_total (\d+)$", g.get("/metrics").raw.decode(),
                  re.M)
    return int(m.group(1)) if m else -1


def test_a_send_answered_503_that_ran_late_is_undone():
    up = FakeUpstream().start()
    redis = h.start_redis()
    px = SlowRepliesProxy(redis.port)
    try:
        cfg = proxy_config(up)
        cfg["redis"] = {"url": "redis://127.0.0.1:%d/0" % px.port, "timeout_ms": 250}
        g = h.Gateway(overrides=cfg, redis=redis, env={"CAPGATE_TEST_MAIL_TOKEN": "x"})
        warm = h.uid()
        h.expect_status(send(g, warm, message_id="warm"), 200)      # a fresh clock sample
        a, b = h.uid(), h.uid()
        h.expect_status(send(g, b, message_id="b-first"), 200)      # b's next one defers
        px.delay = 0.45
        r1 = send(g, a, message_id="late-allow")
        r2 = send(g, b, message_id="late-defer")
        time.sleep(0.6)
        px.delay = 0.0
        h.expect_error(r1, 503, "store_unavailable")
        h.expect_error(r2, 503, "store_unavailable")
        time.sleep(5)                          # past the lease (2s) and b's cap window (3s)
        keys = [q.header("Idempotency-Key") for q in up.requests]
        h.check("late-allow" not in keys and "late-defer" not in keys,
                "a message answered 503 was delivered: %r" % keys)
        h.check(late_replies(g) >= 2, "late answers counted: %d" % late_replies(g))
        # Nothing was recorded: the same message id is decided afresh.
        r = send(g, a, message_id="late-allow")
        h.expect_status(r, 200)
        h.check(r.body.get("replay") is False, "a 503'd send came back as a replay: %r" % (r.body,))
        h.check("undone" in g.logs(), "the undo is not logged")
    finally:
        px.close()


def test_a_decide_answered_503_that_ran_late_is_undone():
    # /v1/decide (no queue: the caller sends): its decisions go out batched,
    # and an allow answered 503 whose script ran in time must not count
    # against the person's cap, nor come back as a replay.
    redis = h.start_redis()
    px = SlowRepliesProxy(redis.port)
    try:
        g = h.Gateway(overrides={"redis": {"url": "redis://127.0.0.1:%d/0" % px.port,
                                           "timeout_ms": 250}}, redis=redis)
        h.expect_decision(g.decide(h.uid(), "email"), "allow", "ok")     # a fresh clock sample
        a = h.uid()
        px.delay = 0.45
        r = g.decide(a, "email", message_id="late-decide")
        time.sleep(0.6)
        px.delay = 0.0
        h.expect_error(r, 503, "store_unavailable")
        time.sleep(1.0)                        # the late answer, and the undo's own call
        # email-daily is 2 a day: both still allowed if the 503'd one left nothing.
        r = g.decide(a, "email", message_id="late-decide")
        h.expect_decision(r, "allow", "ok")
        h.check(r.body.get("replay") is False, "a 503'd decide came back as a replay: %r"
                % (r.body,))
        h.expect_decision(g.decide(a, "email"), "allow", "ok")
        h.expect_decision(g.decide(a, "email"), "defer", "cap")
        h.check(late_replies(g) >= 1, "late answers counted: %d" % late_replies(g))
        h.check("undone" in g.logs(), "the undo is not logged")
    finally:
        px.close()


def test_a_clock_sampled_late_does_not_refuse_decides():
    # The gateway learns Redis's clock from the handshake's TIME.  When that
    # answer comes back late (a stalled loop, valgrind; here a proxy holds it
    # back), the gateway's view of Redis's clock is behind and every deadline
    # it sends falls early: Redis answers LATE and the decide was a 503 until
    # the next clock sample, two seconds on.  The LATE answer carries Redis's
    # time: the gateway corrects its clock and sends the call again.
    redis = h.start_redis()
    px = SlowRepliesProxy(redis.port)
    px.delay = 0.4
    try:
        g = h.Gateway(overrides={"redis": {"url": "redis://127.0.0.1:%d/0" % px.port,
                                           "timeout_ms": 250}}, redis=redis)
        h.wait_until(lambda: g.get("/readyz").status == 200, 10, what="ready")
        px.delay = 0.0
        for _ in range(4):                     # one for each worker's connection, and more
            h.expect_decision(g.decide(h.uid(), "email"), "allow", "ok")
    finally:
        px.close()

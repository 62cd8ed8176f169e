"""Command line: -V, -h, -t, start-up failures, signals, log format."""

import os
import re
import signal
import subprocess
import time

import harness as h


def _write(text, key_data=None, key_file=None, redis_port=None):
    d = h.mkdtemp()
    if key_file is None:
        key_file = h.write_key_file(d, key_data)
    path = os.path.join(d, "capgate.yaml")
    with open(path, "w") as f:
        f.write(h.fill(text, port=h.free_port(), redis_port=redis_port or h.free_port(),
                       key_file=key_file))
    return path


def _expect_start_failure(path, needle, timeout=2.0):
    """Starts `capgate -c PATH`: it must exit non-zero within TIMEOUT with
    NEEDLE on stderr."""
    h.check_binary()
    d = os.path.dirname(path)
    errp = os.path.join(d, "stderr")
    with open(errp, "wb") as ef:
        p = h._track(subprocess.Popen([h.BINARY, "-c", path], stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=ef))
    t0 = time.monotonic()
    try:
        rc = p.wait(timeout + 0.3)
    except subprocess.TimeoutExpired:
        h.fail("capgate still running %.1fs after start (expected a start-up failure "
               "mentioning %r); stderr:\n%s" % (timeout, needle, open(errp).read()[-2000:]))
    dt = time.monotonic() - t0
    err = open(errp, errors="replace").read()
    h.check(rc != 0, "capgate exited 0, expected a start-up failure; stderr:\n%s" % err[-2000:])
    h.check(dt <= timeout, "start-up failure took %.2fs (limit %.1fs)" % (dt, timeout))
    h.check(needle in err, "stderr does not mention %r (rc=%s):\n%s" % (needle, rc, err[-2000:]))
    return rc, err


def test_version():
    h.check_binary()
    rc, out, err = h.run_cli(["-V"])
    h.check(rc == 0, "-V exited %s; stdout=%r stderr=%r" % (rc, out, err))
    h.check(re.search(r"\d+\.\d+", out + err), "-V printed no version: stdout=%r stderr=%r" % (out, err))


def test_help():
    h.check_binary()
    rc, out, err = h.run_cli(["-h"])
    h.check(rc == 0, "-h exited %s; stdout=%r stderr=%r" % (rc, out, err))
    h.check("-c" in out + err, "-h usage does not mention -c: stdout=%r stderr=%r" % (out, err))


def test_check_valid_config():
    h.check_binary()
    path = _write(h.DEFAULT_CONFIG_TEXT)
    rc, out, err = h.run_cli(["-t", "-c", path])
    h.check(rc == 0, "-t on the default config exited %s; stderr:\n%s" % (rc, err))
    h.check("OK" in out + err or "ok" in out + err, "-t printed no OK: stdout=%r stderr=%r" % (out, err))


def test_check_valid_config_with_all_sections():
    """Every documented key, with its documented shape, is accepted."""
    h.check_binary()
    text = h.DEFAULT_CONFIG_TEXT + (
        'quiet_hours: { start: "21:00", end: "08:00", default_tz: "UTC", channels: [push, sms],'
        ' zoneinfo_dir: "/usr/share/zoneinfo" }\n'
        "idempotency_window: 1d\n"
        "limits: { max_body_bytes: 65536, max_connections: 4096, max_connections_per_ip: 0,"
        " connection_timeout: 30s, connection_memory_bytes: 32768, max_pending: 10000 }\n")
    path = _write(text)
    rc, out, err = h.run_cli(["-t", "-c", path])
    h.check(rc == 0, "-t exited %s on a config with every section; stderr:\n%s\nconfig:\n%s"
            % (rc, err, open(path).read()))


def test_check_duration_units():
    """Durations in every unit: s, m, d, w, ms (2s 90m 1d 1w 1500ms)."""
    h.check_binary()
    cfg = h.merge(h.DEFAULT_CONFIG, {
        "caps": [{"name": "a", "limit": 1, "window": "2s", "on_exceed": "defer"},
                 {"name": "b", "limit": 2, "window": "90m", "on_exceed": "defer"},
                 {"name": "c", "limit": 3, "window": "1w", "on_exceed": "deny"},
                 {"name": "d", "limit": 4, "window": "1d", "on_exceed": "defer"},
                 {"name": "e", "limit": 5, "window": "1500ms", "on_exceed": "defer"}],
        "max_defer": "1w", "idempotency_window": "90m",
        "limits": {"connection_timeout": "30s"}})
    path = _write(h.to_yaml(cfg) + "\n")
    rc, out, err = h.run_cli(["-t", "-c", path])
    h.check(rc == 0, "-t rejected valid durations (exit %s); stderr:\n%s\nconfig:\n%s"
            % (rc, err, open(path).read()))


def test_check_does_not_need_redis():
    h.check_binary()
    path = _write(h.DEFAULT_CONFIG_TEXT, redis_port=h.free_port())  # nothing listens there
    rc, out, err = h.run_cli(["-t", "-c", path], timeout=5)
    h.check(rc == 0, "-t exited %s with Redis down (validation should not need it); stderr:\n%s" % (rc, err))


def test_check_bad_duration_reports_file_line_key():
    h.check_binary()
    text = h.DEFAULT_CONFIG_TEXT.replace(
        "{ name: campaign-once, per: campaign,  limit: 1, window: 30d,",
        "{ name: campaign-once, per: campaign,  limit: 1, window: 1x,")
    assert "window: 1x" in text
    line = [i + 1 for i, ln in enumerate(text.splitlines()) if "window: 1x" in ln][0]
    path = _write(text)
    rc, out, err = h.run_cli(["-t", "-c", path])
    h.check(rc == 1, "-t on a bad duration exited %s (expected 1); stderr:\n%s" % (rc, err))
    pat = r"(?:%s|%s):(\d+): caps\[2\]\.window: (.*)" % (re.escape(path), re.escape(os.path.basename(path)))
    m = re.search(pat, err)
    h.check(m, "stderr has no '<file>:<line>: caps[2].window: <message>' line:\n%s" % err)
    h.check(int(m.group(1)) == line, "error names line %s, the bad value is on line %s:\n%s"
            % (m.group(1), line, err))
    h.check("1x" in m.group(2), "message does not quote the bad value 1x: %r" % m.group(0))


def test_check_bad_duration_block_style_line():
    """The line number is right in block-style YAML too (value on its own line)."""
    h.check_binary()
    cfg = h.merge(h.DEFAULT_CONFIG, {"max_defer": "7 days"})
    text = h.to_yaml(cfg) + "\n"
    line = [i + 1 for i, ln in enumerate(text.splitlines()) if ln.startswith("max_defer:")][0]
    path = _write(text)
    rc, out, err = h.run_cli(["-t", "-c", path])
    h.check(rc == 1, "-t on max_defer '7 days' exited %s (expected 1); stderr:\n%s" % (rc, err))
    m = re.search(r"capgate\.yaml:(\d+): max_defer: ", err)
    h.check(m, "stderr has no '<file>:<line>: max_defer: <message>' line:\n%s" % err)
    h.check(int(m.group(1)) == line, "error names line %s, max_defer is on line %s:\n%s"
            % (m.group(1), line, err))


def test_check_unknown_top_level_key():
    h.check_binary()
    path = _write(h.DEFAULT_CONFIG_TEXT + "bogus_option: 1\n")
    rc, out, err = h.run_cli(["-t", "-c", path])
    h.check(rc == 1, "-t with an unknown key exited %s (expected 1); stderr:\n%s" % (rc, err))
    h.check("unknown key" in err, "stderr does not say 'unknown key':\n%s" % err)
    h.check("bogus_option" in err, "stderr does not name the unknown key:\n%s" % err)


def test_check_unknown_nested_keys():
    h.check_binary()
    for where, text in [
        ("redis.bogus", h.DEFAULT_CONFIG_TEXT.replace("on_unavailable: reject }",
                                                       "on_unavailable: reject, bogus: 1 }")),
        ("caps[1].bogus", h.DEFAULT_CONFIG_TEXT.replace("limit: 5, window: 7d,",
                                                         "limit: 5, bogus: 2, window: 7d,")),
        ("categories.health.bogus", h.DEFAULT_CONFIG_TEXT.replace(
            "health: { requires_opt_in: true }", "health: { requires_opt_in: true, bogus: true }")),
    ]:
        assert "bogus" in text, where
        path = _write(text)
        rc, out, err = h.run_cli(["-t", "-c", path])
        h.check(rc == 1, "-t with unknown key %s exited %s (expected 1); stderr:\n%s" % (where, rc, err))
        h.check("unknown key" in err, "stderr does not say 'unknown key' for %s:\n%s" % (where, err))
        h.check(where in err or "bogus" in err, "stderr does not name %s:\n%s" % (where, err))


def test_check_bad_values_name_their_key():
    h.check_binary()
    for key, text in [
        ("caps[0].on_exceed", h.DEFAULT_CONFIG_TEXT.replace("window: 1d,  on_exceed: defer",
                                                             "window: 1d,  on_exceed: maybe")),
        ("caps[0].channel", h.DEFAULT_CONFIG_TEXT.replace("channel: email, limit: 2",
                                                           "channel: fax, limit: 2")),
        ("redis.on_unavailable", h.DEFAULT_CONFIG_TEXT.replace("on_unavailable: reject",
                                                                "on_unavailable: sometimes")),
    ]:
        path = _write(text)
        rc, out, err = h.run_cli(["-t", "-c", path])
        h.check(rc == 1, "-t with a bad %s exited %s (expected 1); stderr:\n%s" % (key, rc, err))
        h.check(re.search(r"capgate\.yaml:\d+: %s: " % re.escape(key), err),
                "stderr has no '<file>:<line>: %s: <message>' line:\n%s" % (key, err))


def test_check_validates_key_file():
    h.check_binary()
    d = h.mkdtemp()
    missing = os.path.join(d, "no-such.key")
    path = _write(h.DEFAULT_CONFIG_TEXT, key_file=missing)
    rc, out, err = h.run_cli(["-t", "-c", path])
    h.check(rc == 1, "-t with a missing key file exited %s (expected 1); stderr:\n%s" % (rc, err))
    h.check("key_file" in err, "stderr does not mention key_file:\n%s" % err)
    path = _write(h.DEFAULT_CONFIG_TEXT, key_data=os.urandom(31))
    rc, out, err = h.run_cli(["-t", "-c", path])
    h.check(rc == 1, "-t with a 31-byte key file exited %s (expected 1); stderr:\n%s" % (rc, err))
    h.check("key_file" in err, "stderr does not mention key_file:\n%s" % err)


def test_check_empty_file_says_so():
    for text in ("", "\n\n", "# just a comment\n"):
        rc, out, err = h.run_cli(["-t", "-c", _write(text)])
        h.check(rc == 1 and ":1: the file is empty" in err,
                "an empty file (%r): rc=%s %s" % (text, rc, err))


def test_check_non_loopback_listen_without_auth_names_its_line():
    text = h.DEFAULT_CONFIG_TEXT
    lines = text.splitlines()
    k = next(i for i, l in enumerate(lines) if l.startswith("listen:"))
    lines[k] = 'listen: "192.0.2.1:8080"'
    path = _write("\n".join(lines) + "\n")
    rc, out, err = h.run_cli(["-t", "-c", path])
    h.check(rc == 1 and (":%d: listen: " % (k + 1)) in err and "not a loopback" in err,
            "want file:%d: listen: ..., got rc=%s %s" % (k + 1, rc, err))


def test_start_unknown_key_fails():
    path = _write(h.DEFAULT_CONFIG_TEXT + "bogus_option: 1\n")
    rc, err = _expect_start_failure(path, "unknown key")
    h.check(rc == 1, "start with an unknown key exited %s (expected 1)" % rc)


def test_start_key_file_missing():
    d = h.mkdtemp()
    _expect_start_failure(_write(h.DEFAULT_CONFIG_TEXT, key_file=os.path.join(d, "absent.key")),
                          "key_file")


def test_start_key_file_short():
    _expect_start_failure(_write(h.DEFAULT_CONFIG_TEXT, key_data=os.urandom(31)), "key_file")


def test_start_key_file_empty():
    _expect_start_failure(_write(h.DEFAULT_CONFIG_TEXT, key_data=b""), "key_file")


def test_start_key_file_unreadable():
    # Tests may run as root, for whom mode 000 is still readable: a directory
    # in place of the file cannot be read by anyone.
    d = h.mkdtemp()
    kd = os.path.join(d, "key-is-a-directory")
    os.mkdir(kd)
    _expect_start_failure(_write(h.DEFAULT_CONFIG_TEXT, key_file=kd), "key_file")
    if os.geteuid() != 0:
        kf = h.write_key_file(h.mkdtemp())
        os.chmod(kf, 0)
        _expect_start_failure(_write(h.DEFAULT_CONFIG_TEXT, key_file=kf), "key_file")


def _signal_exit(sig):
    gw = h.Gateway()
    r = gw.decide(h.uid(), "email")
    h.expect_status(r, 200)
    rc, dt = gw.stop(sig, timeout=2.0)
    h.check(rc == 0, "capgate exited %s after signal %s (expected 0); stderr tail:\n%s"
            % (rc, sig, gw.logs()[-2000:]))
    h.check(dt <= 2.0, "capgate took %.2fs to stop" % dt)


def test_sigterm_exits_zero():
    _signal_exit(signal.SIGTERM)


def test_sigint_exits_zero():
    _signal_exit(signal.SIGINT)


def test_sigterm_with_redis_down_exits_zero():
    gw = h.Gateway()
    gw.redis.kill()
    gw.decide(h.uid(), "email")
    rc, dt = gw.stop(signal.SIGTERM, timeout=2.0)
    h.check(rc == 0, "capgate exited %s after SIGTERM with Redis down" % rc)


def test_logs_are_logfmt():
    gw = h.Gateway()
    gw.decide(h.uid(), "email")
    gw.post("/v1/decide", b"not json")
    gw.stop(signal.SIGTERM)
    text = gw.logs()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    h.check(lines, "capgate wrote nothing to stderr (log_level debug)")
    bad = [ln for ln in lines
           if not re.match(r'ts=\S+ level=[a-z]+ (?:.* )?msg=("([^"\\]|\\.)*"|\S+)', ln)]
    h.check(not bad, "stderr lines not in logfmt (ts=... level=... msg=...):\n%s" % "\n".join(bad[:10]))
    for ln in lines:
        m = re.match(r"ts=(\S+)", ln)
        h.check(re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d|\d+(\.\d+)?$)", m.group(1)),
                "ts is neither an RFC 3339 time nor a unix time: %r" % ln)

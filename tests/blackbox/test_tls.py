"""Inbound TLS versions (issue 12 item 7): TLS 1.0 and 1.1 are refused by
default (RFC 8996), 1.2 and 1.3 accepted, tls.min_version and tls.priorities
honoured, and plain HTTP sent to the TLS port is logged in words an operator
understands.  The client is Debian's openssl s_client, told to offer exactly
one version (and, for the old ones, to allow SHA-1 at security level 0, so
that a refusal is the gateway's and not the client's)."""

import os
import re
import shutil
import socket
import subprocess
import tempfile

import harness as h

_certs = {}


def cert_pair():
    if not _certs:
        d = tempfile.mkdtemp(prefix="capgate-tls-")
        cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
        p = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                            "-keyout", key, "-out", cert], capture_output=True, timeout=60)
        h.check(p.returncode == 0, "openssl req: %r" % p.stderr[-300:])
        _certs.update(dir=d, cert=cert, key=key)
    return _certs["cert"], _certs["key"]


def tls_gateway(**tls):
    cert, key = cert_pair()
    g = h.Gateway(overrides={"tls": dict({"cert_file": cert, "key_file": key}, **tls)}, wait=False)
    h.wait_until(lambda: handshake(g.port, "-tls1_3")[0] or not g.alive(), 5,
                 what="the TLS listener")
    h.check(g.alive(), "capgate exited:\n%s" % g.logs()[-2000:])
    return g


def handshake(port, version_flag, extra=()):
    """openssl s_client offering one version: (ok, protocol, cipher, output)."""
    args = ["openssl", "s_client", "-connect", "127.0.0.1:%d" % port, version_flag,
            "-servername", "127.0.0.1"] + list(extra)
    if version_flag in ("-tls1", "-tls1_1"):
        args += ["-cipher", "DEFAULT@SECLEVEL=0"]
    p = subprocess.run(args, input=b"", capture_output=True, timeout=20)
    out = (p.stdout + p.stderr).decode(errors="replace")
    # "New, TLSv1.3, Cipher is TLS_AES_256_GCM_SHA384" (or "New, (NONE), ...")
    m = re.search(r"^New, (\S+), Cipher is (\S+)", out, re.M)
    proto, cipher = (m.group(1), m.group(2)) if m else (None, None)
    ok = proto not in (None, "(NONE)") and cipher not in (None, "(NONE)", "0000")
    return ok, proto, cipher, out


def test_tls_1_0_and_1_1_refused_by_default():
    g = tls_gateway()
    for flag, name in (("-tls1", "TLS 1.0"), ("-tls1_1", "TLS 1.1")):
        ok, proto, cipher, out = handshake(g.port, flag)
        h.check(not ok, "%s accepted by default (protocol %s, cipher %s):\n%s"
                % (name, proto, cipher, out[-800:]))
    for flag, want in (("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")):
        ok, proto, cipher, out = handshake(g.port, flag)
        h.check(ok and proto == want, "%s refused (protocol %s):\n%s" % (want, proto, out[-800:]))


def test_min_version_1_3():
    g = tls_gateway(min_version="1.3")
    ok, proto, _, out = handshake(g.port, "-tls1_2")
    h.check(not ok, "TLS 1.2 accepted with min_version 1.3 (%s)" % proto)
    ok, proto, _, out = handshake(g.port, "-tls1_3")
    h.check(ok and proto == "TLSv1.3", "TLS 1.3 refused with min_version 1.3:\n%s" % out[-800:])


def test_reload_raises_the_floor():
    import signal
    cert, key = cert_pair()
    g = tls_gateway()
    h.check(handshake(g.port, "-tls1_2")[0], "TLS 1.2 refused before the reload")
    text = h.fill(h.render_config(None, {"tls": {"cert_file": cert, "key_file": key,
                                                 "min_version": "1.3"}}), **g.values)
    with open(g.config_path, "w") as f:
        f.write(text)
    g.send_signal(signal.SIGHUP)
    h.wait_until(lambda: not handshake(g.port, "-tls1_2")[0], 5,
                 what="TLS 1.2 refused after a reload to min_version 1.3")
    h.check(handshake(g.port, "-tls1_3")[0], "TLS 1.3 refused after the reload")


def test_priorities_honoured():
    g = tls_gateway(priorities="NORMAL:-CIPHER-ALL:+CHACHA20-POLY1305")
    ok, proto, cipher, out = handshake(g.port, "-tls1_2")
    h.check(ok and "CHACHA20" in (cipher or ""), "tls.priorities not applied: cipher %s\n%s"
            % (cipher, out[-800:]))
    # the floor holds whatever the priorities say
    g2 = tls_gateway(priorities="NORMAL:+VERS-TLS1.1:+VERS-TLS1.0")
    ok, proto, _, _ = handshake(g2.port, "-tls1_1")
    h.check(not ok, "tls.priorities brought TLS 1.1 back (%s)" % proto)


def test_bad_priorities_refused_with_line():
    cert, key = cert_pair()
    g = h.Gateway(start=False, overrides={"tls": {"cert_file": cert, "key_file": key,
                                                  "priorities": "NORMAL:+NO-SUCH-THING"}})
    rc, out, err = h.run_cli(["-t", "-c", g.config_path])
    h.check(rc == 1 and "tls.priorities" in err and "NO-SUCH-THING" in err,
            "a bad priority string: rc=%s %r" % (rc, err))
    g = h.Gateway(start=False, overrides={"tls": {"cert_file": cert, "key_file": key,
                                                  "min_version": "1.1"}})
    rc, out, err = h.run_cli(["-t", "-c", g.config_path])
    h.check(rc == 1 and "min_version" in err, "min_version 1.1: rc=%s %r" % (rc, err))


def test_plain_http_on_tls_port_logged_clearly():
    g = tls_gateway()
    with socket.create_connection(("127.0.0.1", g.port), timeout=3) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        try:
            while True:
                b = s.recv(4096)
                if not b:
                    break
                data += b
        except OSError:
            pass
    # the client is told, in its own protocol
    r = h.parse_http_response(data) if data else None
    h.check(r is not None, "no plain-HTTP answer on the TLS port: %r" % data[:200])
    h.expect_error(r, 400, "bad_request")
    h.check("https://" in r.body["error"]["message"], "the answer should say https://", r)
    h.wait_until(lambda: "plain HTTP" in g.logs(), 3, what="a log line about plain HTTP")
    logs = g.logs()
    line = [ln for ln in logs.splitlines() if "plain HTTP" in ln][0]
    h.check("https://" in line and "client=127.0.0.1" in line,
            "the line should say to use https:// and who sent it: %s" % line)
    h.check("out of context" not in logs, "GnuTLS's wording still in the log:\n%s" % logs[-1500:])
    # a real TLS client on the same listener still works
    ok, proto, _, out = handshake(g.port, "-tls1_3")
    h.check(ok, "TLS after a plain-HTTP attempt:\n%s" % out[-600:])


def test_zz_cleanup():
    if _certs:
        shutil.rmtree(_certs["dir"], ignore_errors=True)
        _certs.clear()

"""The files that ship beside the binary: systemd unit, sysusers/tmpfiles,
man pages, example config, install script.

  * systemd/capgate.service scores 2.0 or better ("OK") in
    `systemd-analyze security --offline=yes`, passes `systemd-analyze
    verify`, and keeps the settings the daemon relies on;
  * systemd/capgate.sysusers and capgate.tmpfiles apply cleanly to a
    scratch root;
  * docs/capgate.8 and docs/capgate.yaml.5 render without a single groff
    warning, have the usual sections, and capgate.yaml.5 documents every key
    of src/config.c's directive tables with its default and integer bounds;
  * conf/capgate.yaml passes `capgate -t` (key_file pointed at a temp key);
  * tools/install.sh installs the tree it promises, keeps an existing
    config, and points the unit's ExecStart= at $PREFIX/bin/capgate.
"""

import gzip
import os
import re
import shutil
import stat
import subprocess

import harness as h

REPO = h.REPO
UNIT = os.path.join(REPO, "systemd", "capgate.service")
SYSUSERS = os.path.join(REPO, "systemd", "capgate.sysusers")
TMPFILES = os.path.join(REPO, "systemd", "capgate.tmpfiles")
MAN8 = os.path.join(REPO, "docs", "capgate.8")
MAN5 = os.path.join(REPO, "docs", "capgate.yaml.5")
CONF = os.path.join(REPO, "conf", "capgate.yaml")
CONFIG_C = os.path.join(REPO, "src", "config.c")
CONFIG_H = os.path.join(REPO, "include", "capgate", "config.h")
INSTALL = os.path.join(REPO, "tools", "install.sh")
CREDENTIAL_KEY = "/run/credentials/capgate.service/user.key"
OPERATOR_KEY = "/etc/capgate/user.key"
MAX_EXPOSURE = 2.0


def _read(path):
    with open(path) as f:
        return f.read()


def _run(argv, env=None, cwd=None, timeout=60, input=None):
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd,
                       timeout=timeout, input=input)
    return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


def _need(tool, package):
    path = shutil.which(tool)
    h.check(path, "%s is not installed (Debian package %s): this test cannot run without it"
            % (tool, package))
    return path


def _unit_settings(text):
    """[(section, key, value)] of a unit file (comments and blanks skipped)."""
    out, section = [], None
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        k, _, v = line.partition("=")
        out.append((section, k.strip(), v.strip()))
    return out


def _exposure(unit_path):
    sa = _need("systemd-analyze", "systemd")
    rc, out, err = _run([sa, "security", "--offline=yes", "--no-pager", unit_path])
    m = re.search(r"Overall exposure level for \S+:\s*([0-9.]+)\s*(\w+)", out + err)
    h.check(m, "systemd-analyze security printed no 'Overall exposure level' line "
            "(rc=%s):\n%s%s" % (rc, out[-2000:], err[-2000:]))
    return float(m.group(1)), m.group(2), out


def _render_man(page, width=80):
    env = dict(os.environ, LC_ALL="C.UTF-8", MANROFFSEQ="", MANWIDTH=str(width))
    man = _need("man", "man-db")
    return _run([man, "--warnings", "-l", page], env=env)


# --------------------------------------------------------------------------
# systemd
# --------------------------------------------------------------------------

def test_unit_security_exposure_at_most_2():
    score, verdict, out = _exposure(UNIT)
    bad = [ln for ln in out.splitlines() if ln.startswith("\u2717")]
    h.check(score <= MAX_EXPOSURE, "systemd-analyze security: overall exposure %.1f %s, want "
            "<= %.1f; the settings that count against it:\n  %s"
            % (score, verdict, MAX_EXPOSURE, "\n  ".join(bad)))


def test_unit_verifies():
    sa = _need("systemd-analyze", "systemd")
    h.check_binary()
    d = h.mkdtemp("capgate-unit-")
    unit = os.path.join(d, "capgate.service")
    with open(unit, "w") as f:
        # verify wants the ExecStart= binary to exist.
        f.write(_read(UNIT).replace("/usr/local/bin/capgate", os.path.abspath(h.BINARY)))
    rc, out, err = _run([sa, "verify", "--man=no", unit])
    lines = [ln for ln in (out + err).splitlines() if "capgate" in ln]
    h.check(rc == 0 and not lines, "systemd-analyze verify (rc=%s):\n%s%s" % (rc, out, err))


def test_unit_settings():
    s = _unit_settings(_read(UNIT))
    kv = {}
    for sec, k, v in s:
        kv.setdefault((sec, k), []).append(v)

    def one(k, sec="Service"):
        v = kv.get((sec, k))
        h.check(v, "[%s] %s= missing" % (sec, k))
        return v[-1]

    for k, want in (("Type", "notify"), ("NotifyAccess", "main"),
                    ("ExecStart", "/usr/local/bin/capgate -c /etc/capgate/capgate.yaml"),
                    ("ExecReload", "/bin/kill -HUP $MAINPID"), ("WatchdogSec", "10s"),
                    ("Restart", "on-failure"), ("TimeoutStopSec", "15s"),
                    ("LoadCredential", "user.key:/etc/capgate/user.key"),
                    ("ProtectSystem", "strict"), ("CapabilityBoundingSet", ""),
                    ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
                    ("SystemCallArchitectures", "native"), ("UMask", "0077"),
                    ("ProtectProc", "invisible"), ("ProcSubset", "pid"),
                    ("DevicePolicy", "closed")):
        h.check(one(k) == want, "[Service] %s=%s, want %r" % (k, one(k), want))
    for k in ("ProtectHome", "PrivateTmp", "PrivateDevices", "NoNewPrivileges", "LockPersonality",
              "MemoryDenyWriteExecute", "RestrictNamespaces", "RestrictRealtime",
              "RestrictSUIDSGID", "ProtectKernelTunables", "ProtectKernelModules",
              "ProtectKernelLogs", "ProtectControlGroups", "ProtectClock", "ProtectHostname"):
        h.check(one(k) == "yes", "[Service] %s=%s, want yes" % (k, one(k)))
    filters = kv.get(("Service", "SystemCallFilter"), [])
    h.check("@system-service" in filters, "SystemCallFilter=@system-service missing: %r" % filters)
    denied = " ".join(f[1:] for f in filters if f.startswith("~"))
    for group in ("@privileged", "@resources"):
        h.check(group in denied.split(), "SystemCallFilter=~%s missing: %r" % (group, filters))
    h.check(one("User") == "capgate" or one("DynamicUser") == "yes", "no dedicated user")
    # The static user comes from the sysusers file.
    if kv.get(("Service", "User")):
        h.check(re.search(r"^u\s+%s\s" % re.escape(one("User")), _read(SYSUSERS), re.M),
                "capgate.sysusers does not create User=%s" % one("User"))
    # shutdown_timeout's default (10s) must fit in TimeoutStopSec.
    h.check(int(one("TimeoutStopSec").rstrip("s")) > 10, "TimeoutStopSec must exceed the "
            "default shutdown_timeout (10s)")
    h.check(kv.get(("Install", "WantedBy")) == ["multi-user.target"], "WantedBy=multi-user.target")
    # Every setting carries a comment saying why: no two settings in a row
    # without a comment line above the group.
    lines = _read(UNIT).splitlines()
    run = 0
    for ln in lines:
        t = ln.strip()
        if t.startswith("#") or not t or t.startswith("["):
            run = 0
            continue
        run += 1
        h.check(run <= 8, "unit: a long run of settings without a comment near %r" % t)


def test_sysusers_and_tmpfiles_apply():
    sysusers = _need("systemd-sysusers", "systemd")
    tmpfiles = _need("systemd-tmpfiles", "systemd")
    root = h.mkdtemp("capgate-root-")
    os.makedirs(os.path.join(root, "etc", "capgate"))
    for f in ("passwd", "group"):
        shutil.copy("/etc/" + f, os.path.join(root, "etc", f))
    for f, mode in (("capgate.yaml", 0o644), ("user.key", 0o644)):
        p = os.path.join(root, "etc", "capgate", f)
        with open(p, "w") as fh:
            fh.write("x\n")
        os.chmod(p, mode)
    with open(SYSUSERS, "rb") as f:
        rc, out, err = _run([sysusers, "--root=" + root, "-"], input=f.read())
    h.check(rc == 0, "systemd-sysusers failed (rc=%s): %s%s" % (rc, out, err))
    group = _read(os.path.join(root, "etc", "group"))
    passwd = _read(os.path.join(root, "etc", "passwd"))
    m = re.search(r"^capgate:[^:]*:(\d+):", group, re.M)
    h.check(m, "no capgate group in the scratch root:\n%s" % group)
    gid = int(m.group(1))
    u = re.search(r"^capgate:[^:]*:(\d+):(\d+):[^:]*:([^:]*):([^:\n]*)$", passwd, re.M)
    h.check(u, "no capgate user in the scratch root")
    h.check(int(u.group(1)) < 1000 and int(u.group(1)) > 0, "capgate is not a system user: %s"
            % u.group(0))
    h.check(u.group(4).endswith("nologin"), "capgate can log in: %s" % u.group(0))
    with open(TMPFILES, "rb") as f:
        rc, out, err = _run([tmpfiles, "--root=" + root, "--create", "-"], input=f.read())
    h.check(rc == 0, "systemd-tmpfiles failed (rc=%s): %s%s" % (rc, out, err))
    for rel, mode, want_gid in (("etc/capgate", 0o750, gid), ("etc/capgate/capgate.yaml", 0o640, gid),
                                ("etc/capgate/user.key", 0o600, 0)):
        st = os.stat(os.path.join(root, rel))
        h.check(stat.S_IMODE(st.st_mode) == mode, "%s: mode %o, want %o"
                % (rel, stat.S_IMODE(st.st_mode), mode))
        if os.geteuid() == 0:
            h.check(st.st_uid == 0 and st.st_gid == want_gid, "%s: owner %d:%d, want 0:%d"
                    % (rel, st.st_uid, st.st_gid, want_gid))


# --------------------------------------------------------------------------
# Man pages
# --------------------------------------------------------------------------

def test_man_pages_render_without_warnings():
    for page in (MAN8, MAN5):
        rc, out, err = _render_man(page)
        h.check(rc == 0, "man -l %s failed (rc=%s): %s" % (page, rc, err))
        h.check(not err.strip(), "man --warnings -l %s:\n%s" % (os.path.relpath(page, REPO), err))
        h.check(len(out) > 2000, "%s renders to almost nothing" % page)
        text = _read(page)
        h.check(re.search(r"^\.TH ", text, re.M) and not re.search(r"^\.(Dd|Nm|Dt)\b", text, re.M),
                "%s: want plain man(7) macros (.TH), not mdoc" % page)


def test_capgate_8_sections():
    rc, out, err = _render_man(MAN8)
    for sec in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "SIGNALS", "EXIT STATUS",
                "ENVIRONMENT", "FILES", "SEE ALSO"):
        h.check(re.search(r"^%s$" % sec, out, re.M), "capgate(8) has no %s section" % sec)
    opts = out[out.index("\nOPTIONS"):out.index("\nSIGNALS")]
    for opt in ("-c", "-t", "-V", "-h"):
        h.check(re.search(r"^\s+%s\b" % opt, opts, re.M), "OPTIONS does not describe %s" % opt)
    sig = out[out.index("\nSIGNALS"):out.index("\nEXIT STATUS")]
    for s in ("SIGTERM", "SIGINT", "SIGHUP"):
        h.check(s in sig, "SIGNALS does not mention %s" % s)
    h.check("NOTIFY_SOCKET" in out, "ENVIRONMENT does not mention NOTIFY_SOCKET")
    h.check(CREDENTIAL_KEY in out, "FILES does not mention %s" % CREDENTIAL_KEY)
    h.check("single-threaded" not in out, "capgate(8) says single-threaded; it has workers")
    # The options the binary knows are the ones the page describes.
    rc, usage, uerr = h.run_cli(["-h"])
    for opt in re.findall(r"^\s+(-\w)\b", usage, re.M):
        h.check(re.search(r"^\s+%s\b" % opt, opts, re.M), "capgate -h lists %s, the page does not"
                % opt)


def _directive_tables():
    """{table name: [(key, type, def, min, max, flags)]} from src/config.c."""
    src = _read(CONFIG_C)
    defines = dict(re.findall(r"#define\s+(\w+)\s+(\d+)\b", src + _read(CONFIG_H)))
    tables = {}
    for m in re.finditer(r"static const struct directive (\w+)\[\]\s*=\s*\{(.*?)\n\};", src, re.S):
        rows = []
        for e in re.finditer(r"\{\s*\.name\s*=\s*\"(\w+)\"(.*?)\}\s*,\s*(?=\{|$)", m.group(2), re.S):
            body = e.group(2)

            def field(name):
                f = re.search(r"\.%s\s*=\s*([^,}]+)" % name, body)
                return f.group(1).strip() if f else None

            def num(v):
                if v is None:
                    return None
                return int(defines.get(v, v)) if re.fullmatch(r"\w+", v) and \
                    (v.isdigit() or v in defines) else None

            d = field("def")
            rows.append((e.group(1), field("type"), d.strip('"') if d else None,
                         num(field("min")), num(field("max")), field("flags") or ""))
        tables[m.group(1)] = rows
    h.check(tables.get("config_table"), "no directive tables found in src/config.c")
    return tables


# Where each table's keys live, as capgate.yaml.5 writes their paths.
TABLE_PREFIX = {
    "config_table": "", "redis_table": "redis.", "privacy_table": "privacy.",
    "quiet_table": "quiet_hours.", "limits_table": "limits.",
    "channel_table": "channels.name.", "category_table": "categories.name.",
    "cap_table": "caps[i].", "auth_table": "auth.", "token_table": "auth.tokens[i].",
    "tls_table": "tls.", "fatigue_table": "fatigue.", "fatigue_cap_table": "fatigue.cap.",
    "audit_table": "audit.", "upstream_table": "channels.name.upstream.",
    "delivery_table": "delivery.", "route_table": "routes[i].",
    "rate_table": "channels.name.upstream.rate.",
    "pushback_table": "channels.name.upstream.pushback.",
    "warmup_table": "channels.name.upstream.warmup.", "throttle_table": "throttles[i].",
    "breaker_table": "breaker.", "public_table": "public.",
}


def test_capgate_yaml_5_documents_every_key():
    rc, out, err = _render_man(MAN5, width=200)
    # Entry heads are indented 7 spaces; their text follows, indented more.
    entries = {}
    cur = None
    for ln in out.splitlines():
        m = re.match(r"^ {7}(\S+)(\s.*)?$", ln)
        if m and re.fullmatch(r"[a-z0-9_\[\].]+", m.group(1)):
            cur = m.group(1)
            entries[cur] = (m.group(2) or "") + "\n"
        elif cur is not None and (ln.startswith("        ") or not ln.strip()):
            entries[cur] += ln + "\n"
        else:
            cur = None
    for table, rows in _directive_tables().items():
        h.check(table in TABLE_PREFIX, "src/config.c has a new directive table %r: map it in "
                "TABLE_PREFIX and document its keys in docs/capgate.yaml.5" % table)
        for key, typ, default, lo, hi, flags in rows:
            path = TABLE_PREFIX[table] + key
            if typ == "DT_SECTION":
                # Documented through its keys (another table); its name must appear.
                h.check(path in entries or re.search(r"\b%s\b\s+section" % re.escape(path), out),
                        "docs/capgate.yaml.5 does not introduce the %s section" % path)
                continue
            h.check(path in entries, "docs/capgate.yaml.5 does not document %s" % path)
            text = " ".join(entries[path].split())
            if default is not None and typ != "DT_SECTION":
                h.check(re.search(r"default \"?%s\"?[,)]" % re.escape(default), text),
                        "capgate.yaml.5: %s: default %s not stated: %r" % (path, default, text[:200]))
            if typ == "DT_INT" and lo is not None and hi is not None:
                h.check("%d to %d" % (lo, hi) in text, "capgate.yaml.5: %s: bounds %d to %d not "
                        "stated: %r" % (path, lo, hi, text[:200]))
            if "D_REQUIRED" in flags:
                h.check(re.search(r"\brequired\b", text), "capgate.yaml.5: %s is required, the "
                        "page does not say so: %r" % (path, text[:200]))
    for sec in ("NAME", "SYNOPSIS", "DESCRIPTION", "EXAMPLES", "FILES", "SEE ALSO"):
        h.check(re.search(r"^%s$" % sec, out, re.M), "capgate.yaml(5) has no %s section" % sec)


def test_capgate_yaml_5_smallest_example_is_valid():
    h.check_binary()
    text = _read(MAN5)
    m = re.search(r"The smallest valid file.*?\n\.EX\n(.*?)\n\.EE", text, re.S)
    h.check(m, "capgate.yaml.5 has no 'smallest valid file' example")
    d = h.mkdtemp("capgate-man5-")
    key = h.write_key_file(d)
    yaml = m.group(1).replace("\\-", "-").replace("/etc/capgate/user.key", key)
    cfg = os.path.join(d, "min.yaml")
    with open(cfg, "w") as f:
        f.write(yaml + "\n")
    rc, out, err = h.run_cli(["-t", "-c", cfg])
    h.check(rc == 0, "capgate -t refuses the man page's smallest example: %s\n%s" % (err, yaml))


# --------------------------------------------------------------------------
# Example config
# --------------------------------------------------------------------------

def test_example_config_passes_check():
    h.check_binary()
    d = h.mkdtemp("capgate-conf-")
    key = os.path.join(d, "user.key")
    with open(key, "wb") as f:
        f.write(os.urandom(32))
    os.chmod(key, 0o600)
    text = _read(CONF)
    new, n = re.subn(r'^(\s*key_file:\s*).*$', r'\1"%s"' % key, text, flags=re.M)
    h.check(n == 1, "conf/capgate.yaml: expected one key_file line, found %d" % n)
    cfg = os.path.join(d, "capgate.yaml")
    with open(cfg, "w") as f:
        f.write(new)
    rc, out, err = h.run_cli(["-t", "-c", cfg])
    h.check(rc == 0 and "successful" in err, "capgate -t -c conf/capgate.yaml (key %s): rc=%s %s%s"
            % (key, rc, out, err))


def _uncomment_proxy_examples(text):
    """conf/capgate.yaml with its commented-out proxy mode examples (blocks
    that open with "# upstream:", "# delivery:", "# routes:" or "# public:")
    uncommented;
    also returns how many blocks were found."""
    lines = text.split("\n")
    blocks = 0
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)# ((?:upstream|delivery|routes|public):.*)$", lines[i])
        if not m:
            i += 1
            continue
        blocks += 1
        indent = m.group(1)
        lines[i] = indent + m.group(2)
        i += 1
        while i < len(lines) and lines[i].startswith(indent + "#  "):
            lines[i] = indent + lines[i][len(indent) + 2:]
            i += 1
    return "\n".join(lines), blocks


def test_example_config_proxy_examples_pass_check():
    h.check_binary()
    d = h.mkdtemp("capgate-conf-")
    key = h.write_key_file(d)
    text, n = re.subn(r'^(\s*key_file:\s*).*$', r'\1"%s"' % key, _read(CONF), flags=re.M)
    h.check(n == 1, "conf/capgate.yaml: expected one key_file line, found %d" % n)
    text, blocks = _uncomment_proxy_examples(text)
    h.check(blocks >= 4, "conf/capgate.yaml: expected commented-out upstream (2), delivery and "
            "routes examples, found %d blocks" % blocks)
    cfg = os.path.join(d, "capgate.yaml")
    with open(cfg, "w") as f:
        f.write(text)
    names = sorted(set(re.findall(r"\$\{(\w+)\}", text)))
    h.check(names, "the upstream example takes no secret from the environment")
    saved = {v: os.environ.get(v) for v in names}
    try:
        for v in names:
            os.environ.pop(v, None)
        rc, out, err = h.run_cli(["-t", "-c", cfg])
        h.check(rc == 1 and names[0] in err, "an unset %s must fail the check: rc=%s %s"
                % (names[0], rc, err))
        for v in names:
            os.environ[v] = "example-secret"
        rc, out, err = h.run_cli(["-t", "-c", cfg])
        h.check(rc == 0 and "successful" in err, "capgate -t with the proxy examples uncommented "
                "(%s set): rc=%s %s%s" % (", ".join(names), rc, out, err))
        h.check("example-secret" not in out + err, "the secret is printed")
    finally:
        for v, val in saved.items():
            if val is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = val


# --------------------------------------------------------------------------
# Install script
# --------------------------------------------------------------------------

def _install(destdir, prefix=None, cwd=REPO):
    env = dict(os.environ, DESTDIR=destdir, BINARY=os.path.abspath(h.BINARY))
    env.pop("PREFIX", None)
    if prefix is not None:
        env["PREFIX"] = prefix
    rc, out, err = _run(["sh", INSTALL], env=env, cwd=cwd)
    h.check(rc == 0, "sh tools/install.sh (DESTDIR=%s PREFIX=%s) failed rc=%s:\n%s%s"
            % (destdir, prefix, rc, out, err))
    return out + err


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_install_script_tree():
    h.check_binary()
    dest = h.mkdtemp("capgate-dest-")
    _install(dest, "/usr")
    P = lambda rel: os.path.join(dest, rel)  # noqa: E731
    want = {
        "usr/bin/capgate": 0o755,
        "usr/share/man/man8/capgate.8.gz": 0o644,
        "usr/share/man/man5/capgate.yaml.5.gz": 0o644,
        "etc/capgate/capgate.yaml": 0o640,
        "usr/lib/systemd/system/capgate.service": 0o644,
        "usr/lib/sysusers.d/capgate.conf": 0o644,
        "usr/lib/tmpfiles.d/capgate.conf": 0o644,
    }
    found = sorted(os.path.relpath(os.path.join(dp, f), dest)
                   for dp, _dn, fs in os.walk(dest) for f in fs)
    h.check(found == sorted(want), "installed files:\n  %s\nwant:\n  %s"
            % ("\n  ".join(found), "\n  ".join(sorted(want))))
    for rel, mode in want.items():
        h.check(_mode(P(rel)) == mode, "%s: mode %o, want %o" % (rel, _mode(P(rel)), mode))
    h.check(_mode(P("etc/capgate")) == 0o750, "etc/capgate: mode %o, want 750"
            % _mode(P("etc/capgate")))
    with open(h.BINARY, "rb") as a, open(P("usr/bin/capgate"), "rb") as b:
        h.check(a.read() == b.read(), "installed binary differs from %s" % h.BINARY)
    # Man pages: gzip -9n (no name, no time stamp), same text.
    for rel, src in (("usr/share/man/man8/capgate.8.gz", MAN8),
                     ("usr/share/man/man5/capgate.yaml.5.gz", MAN5)):
        with open(P(rel), "rb") as f:
            raw = f.read()
        h.check(raw[:2] == b"\x1f\x8b", "%s is not gzip" % rel)
        h.check(raw[3] & 0x08 == 0 and raw[4:8] == b"\0\0\0\0",
                "%s carries a file name or time stamp (want gzip -n)" % rel)
        h.check(gzip.decompress(raw).decode() == _read(src), "%s does not hold %s" % (rel, src))
    # Unit: ExecStart at PREFIX/bin, nothing else changed; still scores OK.
    unit = _read(P("usr/lib/systemd/system/capgate.service"))
    execs = [v for _s, k, v in _unit_settings(unit) if k == "ExecStart"]
    h.check(execs == ["/usr/bin/capgate -c /etc/capgate/capgate.yaml"],
            "installed ExecStart=%r, want /usr/bin/capgate -c /etc/capgate/capgate.yaml" % execs)
    h.check("/usr/local" not in unit, "installed unit still mentions /usr/local")
    h.check(unit == _read(UNIT).replace("/usr/local/bin/capgate", "/usr/bin/capgate"),
            "installed unit differs from systemd/capgate.service beyond ExecStart=")
    score, verdict, _ = _exposure(P("usr/lib/systemd/system/capgate.service"))
    h.check(score <= MAX_EXPOSURE, "installed unit scores %.1f %s" % (score, verdict))
    h.check(_read(P("usr/lib/sysusers.d/capgate.conf")) == _read(SYSUSERS), "sysusers differs")
    h.check(_read(P("usr/lib/tmpfiles.d/capgate.conf")) == _read(TMPFILES), "tmpfiles differs")
    # Config: the example as it is, naming the key as an operator sees it,
    # so that `capgate -t` works outside the service.
    conf = _read(P("etc/capgate/capgate.yaml"))
    h.check(conf == _read(CONF), "installed config differs from conf/capgate.yaml")
    h.check(re.search(r'^\s*key_file:\s*"%s"\s*$' % re.escape(OPERATOR_KEY), conf, re.M),
            "installed config does not name %s" % OPERATOR_KEY)
    d = h.mkdtemp("capgate-instconf-")
    key = h.write_key_file(d)
    cfg = os.path.join(d, "capgate.yaml")
    with open(cfg, "w") as f:
        f.write(conf.replace(OPERATOR_KEY, key))
    rc, out, err = h.run_cli(["-t", "-c", cfg])
    h.check(rc == 0, "capgate -t (an operator, the key at its place) refuses it: %s" % err)
    # Under the unit: no /etc/capgate/user.key readable, the credential of
    # that name in $CREDENTIALS_DIRECTORY is read instead.
    creds = h.mkdtemp("capgate-creds-")
    os.rename(key, os.path.join(creds, "user.key"))
    with open(cfg, "w") as f:
        f.write(conf.replace(OPERATOR_KEY, "/nonexistent/capgate/user.key"))
    rc, out, err = h.run_cli(["-t", "-c", cfg])
    h.check(rc != 0 and "user.key" in err, "without the credential the key is missing: %s" % err)
    saved = os.environ.get("CREDENTIALS_DIRECTORY")
    os.environ["CREDENTIALS_DIRECTORY"] = creds
    try:
        rc, out, err = h.run_cli(["-t", "-c", cfg])
    finally:
        if saved is None:
            os.environ.pop("CREDENTIALS_DIRECTORY", None)
        else:
            os.environ["CREDENTIALS_DIRECTORY"] = saved
    h.check(rc == 0, "capgate -t under the unit (the key as a credential) refuses it: %s" % err)


def test_install_script_keeps_existing_config():
    h.check_binary()
    dest = h.mkdtemp("capgate-dest-")
    _install(dest, "/usr")
    conf = os.path.join(dest, "etc", "capgate", "capgate.yaml")
    with open(conf, "a") as f:
        f.write("# edited by the admin\n")
    edited = _read(conf)
    out = _install(dest, "/usr")
    h.check(_read(conf) == edited, "a second install overwrote the edited capgate.yaml")
    new = conf + ".new"
    h.check(os.path.isfile(new), "a second install did not leave capgate.yaml.new (output: %s)" % out)
    h.check(_mode(new) == 0o640, "capgate.yaml.new: mode %o, want 640" % _mode(new))
    h.check("# edited by the admin" not in _read(new), "capgate.yaml.new is not the new example")


def test_install_script_default_prefix_and_cwd():
    h.check_binary()
    dest = h.mkdtemp("capgate-dest-")
    # Run from elsewhere, without PREFIX: /usr/local, paths found from the script.
    _install(dest, None, cwd=h.mkdtemp("capgate-cwd-"))
    unit = os.path.join(dest, "usr/local/lib/systemd/system/capgate.service")
    h.check(os.path.isfile(unit), "no unit under DESTDIR/usr/local/lib/systemd/system")
    execs = [v for _s, k, v in _unit_settings(_read(unit)) if k == "ExecStart"]
    h.check(execs == ["/usr/local/bin/capgate -c /etc/capgate/capgate.yaml"], "ExecStart=%r" % execs)
    for rel in ("usr/local/bin/capgate", "usr/local/share/man/man8/capgate.8.gz",
                "usr/local/lib/sysusers.d/capgate.conf", "usr/local/lib/tmpfiles.d/capgate.conf",
                "etc/capgate/capgate.yaml"):
        h.check(os.path.isfile(os.path.join(dest, rel)), "missing %s" % rel)


def test_install_script_refuses_bad_input():
    dest = h.mkdtemp("capgate-dest-")
    env = dict(os.environ, DESTDIR=dest, PREFIX="usr", BINARY=os.path.abspath(h.BINARY))
    rc, out, err = _run(["sh", INSTALL], env=env, cwd=REPO)
    h.check(rc != 0 and "PREFIX" in err, "a relative PREFIX was accepted: rc=%s %s" % (rc, err))
    env = dict(env, PREFIX="/usr", BINARY=os.path.join(dest, "no-such-binary"))
    rc, out, err = _run(["sh", INSTALL], env=env, cwd=REPO)
    h.check(rc != 0 and "make" in err, "a missing binary was accepted: rc=%s %s" % (rc, err))
    h.check(not os.listdir(dest), "a refused install left files behind: %s" % os.listdir(dest))


def test_install_script_is_posix_sh():
    text = _read(INSTALL)
    h.check(text.startswith("#!/bin/sh\n"), "tools/install.sh: want #!/bin/sh")
    h.check(re.search(r"^set -eu$", text, re.M), "tools/install.sh: want set -eu")
    for shell in ("dash", "posh"):
        path = shutil.which(shell)
        if path:
            rc, out, err = _run([path, "-n", INSTALL])
            h.check(rc == 0, "%s -n tools/install.sh: %s" % (shell, err))
    cb = shutil.which("checkbashisms")
    if cb:
        rc, out, err = _run([cb, INSTALL])
        h.check(rc == 0, "checkbashisms tools/install.sh:\n%s%s" % (out, err))


def test_man_pages_have_a_date_and_agree_with_the_daemon():
    """.TH's date is a date mandoc and groff can read (YYYY-MM-DD)."""
    for page in ("capgate.8", "capgate.yaml.5"):
        text = _read(os.path.join(h.REPO, "docs", page))
        th = next(l for l in text.splitlines() if l.startswith(".TH "))
        m = re.match(r'\.TH \S+ \d+ "?(\d{4}-\d{2}-\d{2})"? ', th)
        h.check(m, "%s: .TH has no YYYY-MM-DD date: %r" % (page, th))

"""Logs an ops team can ship (issue 17): every line parses with a standard
logfmt parser, a Redis error with quotes included; log_format: json writes one JSON object a line."""

import json
import os
import subprocess
import sys

import harness as h

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NPM_TOOLS = os.path.join(ROOT, "build", "npm-tools")


def redis_error_with_quotes(g):
    """A real Redis error whose text has quotes and spaces: the default user
    loses EVALSHA and EVAL, so Redis answers "NOPERM User default has no
    permissions to run the 'evalsha' command"; put back afterwards."""
    g.redis.cmd("ACL", "SETUSER", "default", "-evalsha", "-eval")
    try:
        for _ in range(3):
            g.decide(h.uid(), "email")
    finally:
        g.redis.cmd("ACL", "SETUSER", "default", "+@all")


def awkward_lines(g):
    """Requests whose logged values have quotes, backslashes, '=' and a
    newline, a Redis error with quotes.  (A line cut at its size limit is
    tests/unit/test_log.c's: no request makes one.)"""
    g.post("/v1/decide", b'{"user": "x", "channel": "email", "message_id": "a\\"b=c\\\\d\\nz"}')
    redis_error_with_quotes(g)
    g.stop()
    return [l for l in g.logs().splitlines() if l.startswith("ts=") or l.startswith("{")]


def npm_tool(name):
    path = os.path.join(NPM_TOOLS, "node_modules", ".bin", name)
    if not os.path.exists(path):
        r = subprocess.run(["sh", os.path.join(ROOT, "tools", "npm-tools.sh")],
                           capture_output=True, text=True)
        if not os.path.exists(path):
            # Only when the npm registry cannot be reached: said loudly, and
            # the JSON and cut-line checks below still run.
            print("SKIP: %s could not be installed (tools/npm-tools.sh: %s)"
                  % (name, r.stderr.strip()[-300:]), file=sys.stderr)
            return None
    return path


def test_every_line_parses_with_a_standard_logfmt_parser():
    """The npm logfmt package (Heroku's, what many shippers use) reads every
    line; each keeps ts, level and msg, and the Redis error is one value."""
    if npm_tool("logfmt") is None:
        return
    g = h.Gateway(overrides={"access_log": True})
    lines = awkward_lines(g)
    script = ("const logfmt = require('logfmt'); const lines = require('fs')"
              ".readFileSync(0, 'utf8').split('\\n').filter(Boolean);"
              "console.log(JSON.stringify(lines.map(l => logfmt.parse(l))));")
    r = subprocess.run(["node", "-e", script], input="\n".join(lines), capture_output=True,
                       text=True, env=dict(os.environ, NODE_PATH=os.path.join(NPM_TOOLS,
                                                                              "node_modules")))
    h.check(r.returncode == 0, "node logfmt: %s" % r.stderr)
    parsed = json.loads(r.stdout)
    for line, rec in zip(lines, parsed):
        h.check(all(k in rec for k in ("ts", "level", "msg")),
                "ts, level and msg survive a logfmt parser: %r -> %r" % (line, rec))
        h.check(all(isinstance(v, (str, bool, int, float)) for v in rec.values()),
                "no key swallowed the rest of the line: %r" % rec)
    noperm = [rec for rec in parsed if "'evalsha'" in json.dumps(rec)]
    h.check(noperm, "a line carries the Redis error: %r" % [l for l in lines if "NOPERM" in l])
    for rec in noperm:
        err = [v for v in rec.values() if isinstance(v, str) and "'evalsha'" in v]
        h.check(err and err[0].startswith("NOPERM") and err[0].endswith("command"),
                "the Redis error is one whole value: %r" % rec)


def test_json_lines():
    """log_format: json: each line is one JSON object with ts, level and msg,
    the Redis error with quotes and a cut line included."""
    g = h.Gateway(overrides={"access_log": True, "log_format": "json"})
    lines = awkward_lines(g)
    h.check(len(lines) > 5, "some lines: %r" % lines)
    recs = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError as e:
            h.check(False, "not JSON (%s): %r" % (e, line))
        h.check(isinstance(rec, dict) and all(k in rec for k in ("ts", "level", "msg")),
                "ts, level, msg: %r" % line)
        recs.append(rec)
    h.check(any(r.get("msg") == "capgate started" for r in recs),
            "the start-up line is JSON too: %r" % recs[:3])
    h.check(any(v.startswith("NOPERM") and "'evalsha'" in v
                for r in recs for v in r.values()), "the Redis error is a value: %r" % recs)


def test_log_format_is_checked():
    """A log_format that is neither logfmt nor json is refused with its line."""
    g = h.Gateway(overrides={"log_format": "xml"}, start=False)
    rc, _, err = h.run_cli(["-t", "-c", g.config_path])
    h.check(rc != 0 and "log_format" in err and "json" in err, "refused, naming the choices: %r" % err)

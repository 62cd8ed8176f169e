"""docs/openapi.yaml against the daemon, in both directions.

  * The spec is well formed: OpenAPI 3.0.3, every $ref resolves, only the
    JSON Schema subset openapi_check.py knows, examples valid.
  * Every route of src/router.c and every error code of src/reply.c (with
    its status) is in the spec; whatever the spec has beyond them is on the
    PENDING lists (endpoints being added).
  * Live: a request for every documented response of every endpoint; the
    status, Content-Type, documented headers and body must match the spec.
    Request bodies that succeed must be valid by the spec's request schema,
    and the ones refused for their shape must be invalid by it.  The last
    test checks that every documented (path, method, status) was seen.

Endpoints the spec describes ahead of the daemon (PENDING_PATHS) are only
checked live when the gateway does not answer 404 for them.
"""

import datetime
import os
import re

import harness as h
import openapi_check as oc

SPEC_PATH = os.path.join(h.REPO, "docs", "openapi.yaml")
ROUTER_C = os.path.join(h.REPO, "src", "router.c")
REPLY_C = os.path.join(h.REPO, "src", "reply.c")

# Described in the spec ahead of the daemon: {(path, method)} not yet in
# router.c (their live check is skipped while the gateway answers 404), and
# error codes not yet in reply.c.  Empty when the daemon has caught up, so
# that the spec cannot keep an endpoint or a code the daemon dropped.
PENDING_PATHS = set()     # e.g. {("/metrics", "get")}
PENDING_CODES = set()     # e.g. {"invalid_config"}
# Documented, but no black-box request can provoke them.
UNREACHABLE = {"500"}     # internal: out of memory

MAX_BODY = 4096

_spec = None
COVERED = set()           # (path, method, status) seen live
SKIPPED = set()           # paths whose live check was skipped (404 today)


def spec():
    global _spec
    if _spec is None:
        _spec = oc.load_spec(SPEC_PATH)
    return _spec


def _hhmm(dt):
    return "%02d:%02d" % (dt.hour, dt.minute)


def gw():
    """The shared gateway: the default test config, a small body limit, and
    quiet hours on push that hold now (UTC) for the next two hours."""
    def make():
        now = datetime.datetime.now(datetime.timezone.utc)
        cfg = h.merge(h.DEFAULT_CONFIG, {
            "limits": {"max_body_bytes": MAX_BODY},
            "quiet_hours": {"start": _hhmm(now - datetime.timedelta(hours=1)),
                            "end": _hhmm(now + datetime.timedelta(hours=2)),
                            "default_tz": "UTC", "channels": ["push"]},
        })
        return h.Gateway(config=cfg)
    return h.shared("openapi", make)


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------

def conform(r, path, method, status=None):
    """R must be a documented answer of METHOD PATH (HEAD: as GET, no body)."""
    if status is not None:
        h.expect_status(r, status)
    m = method.lower()
    body = r.body
    if m == "head":
        m = "get"
        h.check(not r.raw, "HEAD answer has a body", r)
        body = None
    errs = oc.check_response(spec(), path, m, r.status, r.header("Content-Type"), body, r.headers)
    h.check(not errs, "answer does not match docs/openapi.yaml:\n    " + "\n    ".join(errs), r)
    COVERED.add((path, m, str(r.status)))
    return r


def error(r, path, method, status, code, field=None):
    h.expect_error(r, status, code, field)
    return conform(r, path, method, status)


def accepted_by_spec(path, body):
    errs = oc.validate(spec(), oc.request_schema(spec(), path, "post"), body)
    h.check(not errs, "request %r to %s succeeds, but docs/openapi.yaml rejects it: %s"
            % (body, path, errs))


def refused_by_spec(path, body):
    errs = oc.validate(spec(), oc.request_schema(spec(), path, "post"), body)
    h.check(errs, "request %r to %s is refused by the daemon, but docs/openapi.yaml accepts it"
            % (body, path))


def ok_post(g, path, body, status=200):
    accepted_by_spec(path, body)
    return conform(g.post(path, body), path, "post", status)


def bad_post(g, path, body, code, field=None, shape=True):
    """BODY is refused with 400 CODE.  SHAPE: the refusal is about the shape
    of the body, so the spec's request schema must refuse it too."""
    r = error(g.post(path, body), path, "post", 400, code, field)
    if shape and not isinstance(body, (bytes, str)):
        refused_by_spec(path, body)
    return r


def method_not_allowed(g, path, method, allowed):
    body = b"{}" if method in ("POST", "PUT") else None
    r = error(g.request(method, path, body), path, method.lower()
              if method.lower() in spec()["paths"][path] else _documented_method(path),
              405, "method_not_allowed")
    allow = [x.strip() for x in (r.header("Allow") or "").split(",")]
    h.check(set(allowed) <= set(allow), "%s %s: Allow %r does not list %s"
            % (method, path, r.header("Allow"), allowed), r)
    return r


def _documented_method(path):
    return [m for m in oc.HTTP_METHODS if m in spec()["paths"][path]][0]


def too_large(g, path):
    body = b'{"user": "' + b"u" * (MAX_BODY + 100) + b'"}'
    return error(g.post(path, body), path, "post", 413, "body_too_large")


def head_like_get(g, path, headers=None):
    rg = g.get(path, headers)
    rh = g.request("HEAD", path, None, headers)
    h.check(rh.status == rg.status, "HEAD %s: %s, GET: %s" % (path, rh.status, rg.status), rh)
    conform(rh, path, "head")
    return rh


def pending_missing(g, path, method):
    """True (and a note) when PATH is a PENDING endpoint the daemon answers
    404 for today; the 404 itself must still be the documented one."""
    if (path, method.lower()) not in PENDING_PATHS:
        return False
    # Probed with GET: a POST endpoint that exists answers 405, and a GET
    # has no side effects (a POST to /v1/admin/reload would reload).
    r = g.get(path)
    if r.status != 404:
        return False
    h.expect_error(r, 404, "not_found")
    errs = oc.check_against(spec(), oc.deref(spec(), {"$ref": "#/components/responses/NotFound"}),
                            404, r.header("Content-Type"), r.body, r.headers, "404")
    h.check(not errs, "404 does not match components/responses/NotFound: %s" % errs, r)
    SKIPPED.add(path)
    print("     note: %s %s answers 404 (not implemented yet): live check skipped"
          % (method.upper(), path))
    return True


def _read(path):
    with open(path) as f:
        return f.read()


def router_routes():
    text = _read(ROUTER_C)
    table = text[text.index("routes[]"):]
    table = table[:table.index("};")]
    routes = re.findall(r'\{\s*"(/[^"]*)"\s*,\s*"([A-Z]+)"\s*,\s*\w+\s*\}', table)
    h.check(routes, "no routes found in src/router.c (table format changed?)")
    return [(p, m.lower()) for p, m in routes]


def reply_codes():
    codes = re.findall(r'\[API_\w+\]\s*=\s*\{\s*"(\w+)"\s*,\s*(\d+)\s*\}', _read(REPLY_C))
    h.check(codes, "no error codes found in src/reply.c (table format changed?)")
    return [(c, int(s)) for c, s in codes]


def _error_codes_of(schema):
    """The error.code enum of an error body schema, or None."""
    s = oc.deref(spec(), schema)
    err = oc.deref(spec(), (s.get("properties") or {}).get("error") or {})
    code = oc.deref(spec(), (err.get("properties") or {}).get("code") or {})
    return code.get("enum")


def documented_error_codes():
    """{(status, code)} from every response of every operation and from the
    shared responses (their x-status)."""
    out = set()

    def add(status, resp):
        resp = oc.deref(spec(), resp)
        media = (resp.get("content") or {}).get("application/json")
        codes = _error_codes_of(media["schema"]) if media and "schema" in media else None
        for c in codes or []:
            out.add((int(status), c))

    for _path, _m, op in oc.operations(spec()):
        for status, resp in op.get("responses", {}).items():
            add(status, resp)
    for _name, resp in spec()["components"].get("responses", {}).items():
        if "x-status" in resp:
            add(resp["x-status"], resp)
    return out


# --------------------------------------------------------------------------
# The spec itself
# --------------------------------------------------------------------------

def test_validator_self_check():
    s = {"components": {"schemas": {"N": {"type": "integer", "minimum": 1}}}}
    cases = [
        ({"type": "string", "minLength": 1, "maxLength": 3}, "ab", True),
        ({"type": "string", "minLength": 1, "maxLength": 3}, "", False),
        ({"type": "string", "minLength": 1, "maxLength": 3}, "abcd", False),
        ({"type": "string"}, None, False),
        ({"type": "string", "nullable": True}, None, True),
        ({"type": "integer"}, True, False),
        ({"type": "integer"}, 1.5, False),
        ({"type": "number", "minimum": 0}, 1.5, True),
        ({"type": "number", "minimum": 0}, -1, False),
        ({"type": "boolean", "enum": [True]}, 1, False),
        ({"type": "boolean", "enum": [True]}, True, True),
        ({"enum": ["a", "b"]}, "c", False),
        ({"$ref": "#/components/schemas/N"}, 0, False),
        ({"$ref": "#/components/schemas/N"}, 2, True),
        ({"type": "array", "items": {"$ref": "#/components/schemas/N"}}, [1, 2], True),
        ({"type": "array", "items": {"$ref": "#/components/schemas/N"}}, [1, 0], False),
        ({"type": "object", "required": ["a"], "properties": {"a": {"type": "string"}},
          "additionalProperties": False}, {"a": "x"}, True),
        ({"type": "object", "required": ["a"], "properties": {"a": {"type": "string"}},
          "additionalProperties": False}, {"a": "x", "b": 1}, False),
        ({"type": "object", "required": ["a"], "properties": {"a": {"type": "string"}}},
         {"b": 1}, False),
        ({"type": "object", "additionalProperties": {"type": "integer"}}, {"x": 1}, True),
        ({"type": "object", "additionalProperties": {"type": "integer"}}, {"x": "1"}, False),
        ({"oneOf": [{"type": "string"}, {"type": "integer"}]}, 3, True),
        ({"oneOf": [{"type": "number"}, {"type": "integer"}]}, 3, False),
        ({"oneOf": [{"type": "string"}, {"type": "integer"}]}, True, False),
        ({"type": "string", "format": "date-time"}, "2026-01-31T12:00:00Z", True),
        ({"type": "string", "format": "date-time"}, "yesterday", False),
    ]
    for schema, value, valid in cases:
        errs = oc.validate(s, schema, value)
        h.check(bool(errs) != valid, "validator: %r against %r: expected %s, got %s"
                % (value, schema, "valid" if valid else "invalid", errs or "valid"))
    try:
        oc.check_schema_keywords(s, {"type": "string", "pattern": "x"})
    except oc.SpecError:
        pass
    else:
        h.fail("validator accepted a schema keyword outside its subset (pattern)")


def test_spec_is_openapi_303_in_the_subset():
    s = spec()
    h.check(s.get("openapi") == "3.0.3", "openapi: %r, want 3.0.3" % s.get("openapi"))
    h.check(isinstance(s.get("info"), dict) and s["info"].get("title") and s["info"].get("version"),
            "info.title / info.version missing")
    h.check_binary()
    rc, out, err = h.run_cli(["-V"])
    h.check(out.split() == ["capgate", s["info"]["version"]],
            "info.version %r, but `capgate -V` says %r" % (s["info"]["version"], out.strip()))
    for ref in oc.walk_refs(s):
        try:
            oc.resolve(s, ref)
        except oc.SpecError as e:
            h.fail(str(e))
    for where, schema in oc.all_schemas(s):
        try:
            oc.check_schema_keywords(s, schema, where)
        except oc.SpecError as e:
            h.fail(str(e))
    op_ids = []
    for path, m, op in oc.operations(s):
        h.check(op.get("responses"), "%s %s has no responses" % (m, path))
        h.check(op.get("operationId"), "%s %s has no operationId" % (m, path))
        op_ids.append(op["operationId"])
        for status, resp in op["responses"].items():
            h.check(re.fullmatch(r"[1-5]\d\d", status), "%s %s: response key %r" % (m, path, status))
            resp = oc.deref(s, resp)
            h.check(resp.get("description"), "%s %s %s: no description" % (m, path, status))
            xs = resp.get("x-status")
            h.check(xs is None or str(xs) == status, "%s %s: response %s refers to a shared "
                    "response meant for %s" % (m, path, status, xs))
        if m == "post":
            h.check("405" in op["responses"] and "413" in op["responses"],
                    "POST %s must document 405 and 413" % path)
        else:
            h.check("405" in op["responses"], "%s %s must document 405" % (m.upper(), path))
    h.check(len(op_ids) == len(set(op_ids)), "duplicate operationId")
    for code in ("BadRequest", "NotFound", "MethodNotAllowed", "BodyTooLarge", "Internal",
                 "StoreUnavailable", "InvalidConfig"):
        h.check(code in s["components"]["responses"], "components.responses.%s missing" % code)
    h.check("Error" in s["components"]["schemas"], "components.schemas.Error missing")


def test_spec_examples_are_valid():
    s = spec()
    n = 0
    for path, m, op in oc.operations(s):
        rb = oc.deref(s, op.get("requestBody") or {})
        for mt, media in (rb.get("content") or {}).items():
            if "example" in media:
                errs = oc.validate(s, media["schema"], media["example"])
                h.check(not errs, "%s %s request example: %s" % (m, path, errs))
                n += 1
        for status, resp in op["responses"].items():
            resp = oc.deref(s, resp)
            for mt, media in (resp.get("content") or {}).items():
                if "example" in media:
                    errs = oc.validate(s, media["schema"], media["example"])
                    h.check(not errs, "%s %s %s example: %s" % (m, path, status, errs))
                    n += 1
    for name, resp in s["components"]["responses"].items():
        for mt, media in (resp.get("content") or {}).items():
            if "example" in media:
                errs = oc.validate(s, media["schema"], media["example"])
                h.check(not errs, "components.responses.%s example: %s" % (name, errs))
                n += 1
    h.check(n >= 8, "only %d examples found" % n)


def test_every_route_is_in_the_spec():
    paths = spec()["paths"]
    for path, method in router_routes():
        h.check(path in paths and method in paths[path],
                "src/router.c routes %s %s, docs/openapi.yaml does not describe it"
                % (method.upper(), path))


def test_every_spec_path_is_routed_or_pending():
    routed = set(router_routes())
    for path, m, _op in oc.operations(spec()):
        h.check((path, m) in routed or (path, m) in PENDING_PATHS,
                "docs/openapi.yaml describes %s %s, which src/router.c does not route "
                "(and it is not on PENDING_PATHS)" % (m.upper(), path))


def test_every_error_code_is_in_the_spec():
    enum = oc.deref(spec(), {"$ref": "#/components/schemas/ErrorCode"}).get("enum") or []
    documented = documented_error_codes()
    for code, status in reply_codes():
        h.check(code in enum, "src/reply.c has error code %r; components.schemas.ErrorCode "
                "does not list it" % code)
        h.check((status, code) in documented,
                "src/reply.c answers %r with %d; no response documented with status %d "
                "carries that code" % (code, status, status))
    known = {c for c, _s in reply_codes()} | PENDING_CODES
    for code in enum:
        h.check(code in known, "docs/openapi.yaml documents error code %r, which src/reply.c "
                "does not have (and it is not on PENDING_CODES)" % code)
    # The generic Error schema and the per-status ones agree.
    for status, code in documented:
        h.check(code in enum, "status %d documents code %r, ErrorCode does not" % (status, code))


# --------------------------------------------------------------------------
# Live: the API
# --------------------------------------------------------------------------

def test_decide_responses():
    g = gw()
    P = "/v1/decide"
    u = h.uid("oa")
    # allow, replay, dry run
    b = {"user": u, "channel": "email", "message_id": "m-1", "campaign": "spring"}
    h.expect_decision(ok_post(g, P, b), "allow", "ok", replay=False)
    h.expect_decision(ok_post(g, P, b), "allow", "ok", replay=True)
    r = ok_post(g, P, {"user": u, "channel": "email", "message_id": "m-dry", "dry_run": True,
                       "category": "transactional", "tz": "Europe/Paris"})
    h.check(r.body.get("dry_run") is True, "dry run answer without dry_run: true", r)
    # deny cap (campaign-once), defer cap (email-daily: 2 a day)
    h.expect_decision(ok_post(g, P, {"user": u, "channel": "email", "message_id": "m-2",
                                     "campaign": "spring"}), "deny", "cap", rule="campaign-once")
    h.expect_decision(ok_post(g, P, {"user": u, "channel": "email", "message_id": "m-3"}),
                      "allow", "ok")
    h.expect_decision(ok_post(g, P, {"user": u, "channel": "email", "message_id": "m-4"}),
                      "defer", "cap", rule="email-daily")
    # quiet hours (push, UTC, now)
    h.expect_decision(ok_post(g, P, {"user": h.uid("oa"), "channel": "push", "message_id": "q"}),
                      "defer", "quiet_hours")
    # consent
    v = h.uid("oa")
    ok_post(g, "/v1/consent", {"user": v, "channel": "email", "category": "marketing",
                               "state": "opt_out", "source": "test"})
    h.expect_decision(ok_post(g, P, {"user": v, "channel": "email", "message_id": "o"}),
                      "deny", "opted_out")
    h.expect_decision(ok_post(g, P, {"user": v, "channel": "sms", "message_id": "s"}),
                      "deny", "consent_required")

    # 400s
    ok = {"user": h.uid("oa"), "channel": "email", "message_id": "x"}
    for raw in (b"nope", b"[]", b"", b'"a string"',
                b'{"user": "a", "user": "b", "channel": "email", "message_id": "m"}'):
        bad_post(g, P, raw, "invalid_json")
    bad_post(g, P, {"channel": "email", "message_id": "x"}, "missing_field", "user")
    bad_post(g, P, dict(ok, user=None), "missing_field", "user")
    bad_post(g, P, {"user": "u", "channel": "email"}, "missing_field", "message_id")
    bad_post(g, P, dict(ok, user=""), "invalid_field", "user")
    bad_post(g, P, dict(ok, user="u" * 257), "invalid_field", "user")
    bad_post(g, P, dict(ok, channel=5), "invalid_field", "channel")
    bad_post(g, P, dict(ok, message_id="m" * 129), "invalid_field", "message_id")
    bad_post(g, P, dict(ok, campaign=""), "invalid_field", "campaign")
    bad_post(g, P, dict(ok, campaign="c" * 257), "invalid_field", "campaign")
    bad_post(g, P, dict(ok, dry_run="yes"), "invalid_field", "dry_run")
    bad_post(g, P, dict(ok, tz=""), "invalid_field", "tz")
    bad_post(g, P, dict(ok, dryrun=True), "invalid_field", "dryrun")
    bad_post(g, P, dict(ok, tz="Mars/Olympus_Mons"), "invalid_field", "tz", shape=False)
    bad_post(g, P, dict(ok, channel="fax"), "unknown_channel", "channel", shape=False)
    bad_post(g, P, dict(ok, category="gossip"), "unknown_category", "category", shape=False)
    # 405, 413
    method_not_allowed(g, P, "GET", ["POST"])
    method_not_allowed(g, P, "PUT", ["POST"])
    too_large(g, P)


def test_decide_optional_fields_may_be_null():
    g = gw()
    b = {"user": h.uid("oa"), "channel": "email", "message_id": "n", "category": None,
         "campaign": None, "tz": None, "dry_run": None}
    h.expect_decision(ok_post(g, "/v1/decide", b), "allow", "ok")


def test_release_responses():
    g = gw()
    P = "/v1/release"
    u = h.uid("oa")
    h.expect_decision(g.decide(u, "email", "r-1"), "allow", "ok")
    r = ok_post(g, P, {"user": u, "message_id": "r-1"})
    h.check(r.body == {"released": True}, "expected released: true", r)
    r = ok_post(g, P, {"user": u, "message_id": "r-1"})
    h.check(r.body == {"released": False}, "expected released: false the second time", r)
    bad_post(g, P, b"{", "invalid_json")
    bad_post(g, P, {"user": u}, "missing_field", "message_id")
    bad_post(g, P, {"message_id": "x"}, "missing_field", "user")
    bad_post(g, P, {"user": u, "message_id": 7}, "invalid_field", "message_id")
    bad_post(g, P, {"user": u, "message_id": "x", "channel": "email"}, "invalid_field", "channel")
    method_not_allowed(g, P, "GET", ["POST"])
    too_large(g, P)


def test_consent_responses():
    g = gw()
    P = "/v1/consent"
    u = h.uid("oa")
    ok = {"user": u, "channel": "email", "category": "marketing", "state": "opt_in",
          "source": "signup-form"}
    r = ok_post(g, P, ok)
    h.check(r.body.get("state") == "opt_in" and r.body.get("source") == "signup-form",
            "consent answer does not echo the record", r)
    h.check(u not in r.raw.decode(errors="replace"), "consent answer contains the user id", r)
    ok_post(g, P, dict(ok, channel="*", category="*", state="opt_out"))
    bad_post(g, P, b"not json", "invalid_json")
    bad_post(g, P, {k: v for k, v in ok.items() if k != "source"}, "missing_field", "source")
    bad_post(g, P, dict(ok, state="maybe"), "invalid_field", "state")
    bad_post(g, P, dict(ok, state=True), "invalid_field", "state")
    bad_post(g, P, dict(ok, source="s" * 129), "invalid_field", "source")
    bad_post(g, P, dict(ok, channel=""), "invalid_field", "channel")
    bad_post(g, P, dict(ok, extra=1), "invalid_field", "extra")
    bad_post(g, P, dict(ok, channel="fax"), "unknown_channel", "channel", shape=False)
    bad_post(g, P, dict(ok, category="gossip"), "unknown_category", "category", shape=False)
    method_not_allowed(g, P, "GET", ["POST"])
    method_not_allowed(g, P, "DELETE", ["POST"])
    too_large(g, P)


# --------------------------------------------------------------------------
# Live: operations endpoints
# --------------------------------------------------------------------------

def test_status_responses():
    g = gw()
    g.post("/v1/decide", b"nope")          # so that http.errors has an entry
    r = conform(g.get("/status"), "/status", "get", 200)
    h.expect_json_content_type(r)
    h.check(r.body["http"]["errors"].get("invalid_json", 0) >= 1,
            "http.errors.invalid_json not counted", r)
    r = conform(g.get("/status", {"Accept": "text/html"}), "/status", "get", 200)
    h.check((r.header("Content-Type") or "").startswith("text/html"),
            "Accept: text/html did not get the page", r)
    head_like_get(g, "/status")
    method_not_allowed(g, "/status", "POST", ["GET", "HEAD"])


def test_status_page_responses():
    g = gw()
    r = conform(g.get("/status.html"), "/status.html", "get", 200)
    h.check("<html" in r.body.lower() if isinstance(r.body, str) else False,
            "/status.html is not an HTML page", r)
    head_like_get(g, "/status.html")
    method_not_allowed(g, "/status.html", "POST", ["GET", "HEAD"])


def test_healthz_responses():
    g = gw()
    conform(g.get("/healthz"), "/healthz", "get", 200)
    head_like_get(g, "/healthz")
    method_not_allowed(g, "/healthz", "POST", ["GET", "HEAD"])


def test_readyz_responses():
    g = gw()
    conform(g.get("/readyz"), "/readyz", "get", 200)
    head_like_get(g, "/readyz")
    method_not_allowed(g, "/readyz", "POST", ["GET", "HEAD"])


def test_metrics_responses():
    g = gw()
    if pending_missing(g, "/metrics", "get"):
        return
    r = conform(g.get("/metrics"), "/metrics", "get", 200)
    h.check(isinstance(r.body, str) and re.search(r"^capgate_\w+", r.body, re.M),
            "/metrics has no capgate_* sample", r)
    head_like_get(g, "/metrics")
    method_not_allowed(g, "/metrics", "POST", ["GET", "HEAD"])


def test_unknown_paths_not_found():
    g = gw()
    nf = oc.deref(spec(), {"$ref": "#/components/responses/NotFound"})
    for m, p in (("GET", "/"), ("POST", "/v1/decide/"), ("GET", "/v2/status"), ("DELETE", "/x")):
        r = g.request(m, p, b"{}" if m == "POST" else None)
        h.expect_error(r, 404, "not_found")
        errs = oc.check_against(spec(), nf, 404, r.header("Content-Type"), r.body, r.headers,
                                "%s %s" % (m, p))
        h.check(not errs, "404 does not match components/responses/NotFound: %s" % errs, r)


def test_store_unavailable_responses():
    g = h.Gateway(overrides={"limits": {"max_body_bytes": MAX_BODY}})
    u = h.uid("oa")
    h.expect_decision(g.decide(u, "email"), "allow", "ok")
    g.redis.kill()
    for path, body in (("/v1/decide", {"user": u, "channel": "email", "message_id": "z"}),
                       ("/v1/release", {"user": u, "message_id": "z"}),
                       ("/v1/consent", {"user": u, "channel": "*", "category": "*",
                                        "state": "opt_out", "source": "t"})):
        accepted_by_spec(path, body)
        r = error(g.post(path, body), path, "post", 503, "store_unavailable")
        h.check((r.header("Retry-After") or "").strip() == "1", "Retry-After is not 1", r)
    r = h.wait_until(lambda: (lambda x: x if x.status == 503 else None)(g.get("/readyz")), 5,
                     what="/readyz to answer 503")
    conform(r, "/readyz", "get", 503)
    head_like_get(g, "/readyz")
    conform(g.get("/healthz"), "/healthz", "get", 200)
    r = conform(g.get("/status"), "/status", "get", 200)
    h.check(r.body["redis"]["connected"] is False, "redis.connected should be false", r)


def test_store_unavailable_fail_open():
    g = h.Gateway(overrides={"redis": {"on_unavailable": "allow"}})
    g.redis.kill()
    body = {"user": h.uid("oa"), "channel": "email", "message_id": "fo"}
    h.expect_decision(ok_post(g, "/v1/decide", body), "allow", "store_unavailable")


def test_reload_responses():
    g = h.Gateway(overrides={"limits": {"max_body_bytes": MAX_BODY}})
    P = "/v1/admin/reload"
    if pending_missing(g, P, "post"):
        return
    r = conform(g.post(P, b""), P, "post", 200)
    gen = r.body["generation"]
    st = conform(g.get("/status"), "/status", "get", 200).body
    h.check(st["config"]["generation"] == gen, "status config.generation %r, reload said %r"
            % (st["config"]["generation"], gen), r)
    h.check((st["config"].get("last_reload") or {}).get("ok") is True,
            "config.last_reload.ok is not true after a reload", r)
    good = g.config_text
    try:
        with open(g.config_path, "w") as f:
            f.write(good + "no_such_key: 1\n")
        r = error(g.post(P, b""), P, "post", 400, "invalid_config")
        msg = r.body["error"]["message"]
        h.check(re.match(r".+:\d+: ", msg), "invalid_config message %r is not "
                "<file>:<line>: <key>: <message>" % msg, r)
        rs = conform(g.get("/status"), "/status", "get", 200)
        st = rs.body
        h.check(st["config"]["generation"] == gen, "a refused reload changed the generation", rs)
        lr = st["config"].get("last_reload") or {}
        h.check(lr.get("ok") is False and lr.get("error") == msg,
                "config.last_reload does not report the refused reload", rs)
        h.expect_decision(g.decide(h.uid("oa"), "email"), "allow", "ok")
    finally:
        with open(g.config_path, "w") as f:
            f.write(good)
    method_not_allowed(g, P, "GET", ["POST"])
    too_large(g, P)


def test_every_documented_response_was_exercised():
    if not COVERED:
        print("     note: run the whole module: no live test ran before this one")
        return
    missing = []
    for path, m, op in oc.operations(spec()):
        if path in SKIPPED:
            continue
        for status in op["responses"]:
            if status in UNREACHABLE:
                continue
            if (path, m, status) not in COVERED:
                missing.append("%s %s %s" % (m.upper(), path, status))
    h.check(not missing, "documented responses no test produced: %s" % ", ".join(missing))

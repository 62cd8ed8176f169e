"""A small OpenAPI 3.0 checker for docs/openapi.yaml (Python 3 stdlib only).

It knows the JSON Schema subset the spec uses, and refuses any other
keyword, so the spec cannot quietly rely on something left unchecked:

  type (string, integer, number, boolean, object, array), properties,
  required, additionalProperties (bool or schema), enum, minLength,
  maxLength, minimum, items, oneOf, nullable, $ref (local, '#/...'), and
  format date-time (checked); description, example, title and other
  formats are annotations.

Loading: the YAML is converted to JSON by `fy-tool --mode json` (Debian
package libfyaml-utils); without it, PyYAML is used if installed.

    spec = load_spec("docs/openapi.yaml")
    errors = validate(spec, schema, value)          # [] when valid
    errors = check_response(spec, "/v1/decide", "post", status, content_type, body,
                            headers)
"""

import json
import os
import re
import shutil
import subprocess

SCHEMA_KEYWORDS = {
    "type", "properties", "required", "additionalProperties", "enum", "minLength",
    "maxLength", "minimum", "items", "oneOf", "nullable", "$ref", "format",
    # annotations
    "description", "example", "title", "default",
}
TYPES = {"string", "integer", "number", "boolean", "object", "array"}
DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})\Z")
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


class SpecError(Exception):
    """The spec itself is broken (bad $ref, unknown keyword...)."""


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------

def load_spec(path):
    """Parses the YAML file at PATH into Python objects."""
    fy = shutil.which("fy-tool")
    if fy:
        p = subprocess.run([fy, "--mode", "json", path], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=30)
        if p.returncode != 0:
            raise SpecError("fy-tool could not parse %s:\n%s" % (path, p.stderr.decode(errors="replace")))
        return json.loads(p.stdout.decode())
    try:
        import yaml  # noqa: PLC0415 - optional fallback
    except ImportError:
        raise SpecError("cannot read %s: neither fy-tool (apt-get install libfyaml-utils) "
                        "nor PyYAML is installed" % path) from None
    with open(path) as f:
        return yaml.safe_load(f)


# --------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------

def resolve(spec, ref):
    """'#/components/schemas/X' -> the object."""
    if not isinstance(ref, str) or not ref.startswith("#/"):
        raise SpecError("only local references are supported, got %r" % (ref,))
    node = spec
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            raise SpecError("unresolvable $ref %r (at %r)" % (ref, part))
        node = node[part]
    return node


def deref(spec, obj, depth=0):
    """Follows $ref chains (responses, headers, schemas)."""
    while isinstance(obj, dict) and "$ref" in obj:
        depth += 1
        if depth > 50:
            raise SpecError("$ref loop")
        obj = resolve(spec, obj["$ref"])
    return obj


# --------------------------------------------------------------------------
# Schemas
# --------------------------------------------------------------------------

def _is_type(value, t):
    if t == "string":
        return isinstance(value, str)
    if t == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if t == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if t == "boolean":
        return isinstance(value, bool)
    if t == "object":
        return isinstance(value, dict)
    if t == "array":
        return isinstance(value, list)
    raise SpecError("unknown type %r" % (t,))


def _same(a, b):
    """JSON equality: true is not 1, 1 is 1.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and a == b


def check_schema_keywords(spec, schema, where="schema"):
    """Raises SpecError when SCHEMA (recursively) uses a keyword outside the
    subset, or a $ref that does not resolve."""
    if not isinstance(schema, dict):
        raise SpecError("%s: a schema must be an object, got %r" % (where, schema))
    unknown = set(schema) - SCHEMA_KEYWORDS
    unknown = {k for k in unknown if not k.startswith("x-")}
    if unknown:
        raise SpecError("%s: unsupported keyword(s) %s" % (where, ", ".join(sorted(unknown))))
    if "$ref" in schema:
        resolve(spec, schema["$ref"])
        return
    if "type" in schema and schema["type"] not in TYPES:
        raise SpecError("%s: unknown type %r" % (where, schema["type"]))
    for name, sub in (schema.get("properties") or {}).items():
        check_schema_keywords(spec, sub, "%s.properties.%s" % (where, name))
    ap = schema.get("additionalProperties")
    if isinstance(ap, dict):
        check_schema_keywords(spec, ap, where + ".additionalProperties")
    elif ap is not None and not isinstance(ap, bool):
        raise SpecError("%s: additionalProperties must be a bool or a schema" % where)
    if "items" in schema:
        check_schema_keywords(spec, schema["items"], where + ".items")
    for i, sub in enumerate(schema.get("oneOf") or []):
        check_schema_keywords(spec, sub, "%s.oneOf[%d]" % (where, i))
    for k in schema.get("required") or []:
        if schema.get("type") == "object" and k not in (schema.get("properties") or {}):
            raise SpecError("%s: required %r is not among the properties" % (where, k))


def validate(spec, schema, value, path="$"):
    """Returns a list of 'path: problem' strings; empty when VALUE is valid."""
    errors = []
    if "$ref" in schema:
        return validate(spec, resolve(spec, schema["$ref"]), value, path)
    if value is None and schema.get("nullable"):
        return []
    if "oneOf" in schema:
        matches = [i for i, sub in enumerate(schema["oneOf"])
                   if not validate(spec, sub, value, path)]
        if len(matches) != 1:
            errors.append("%s: matches %d of the oneOf alternatives (want exactly 1)"
                          % (path, len(matches)))
    t = schema.get("type")
    if t is not None and not _is_type(value, t):
        errors.append("%s: expected %s, got %s" % (path, t, json.dumps(value)[:80]))
        return errors
    if "enum" in schema and not any(_same(value, e) for e in schema["enum"]):
        errors.append("%s: %s is not one of %s" % (path, json.dumps(value)[:80],
                                                   json.dumps(schema["enum"])))
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append("%s: shorter than %d" % (path, schema["minLength"]))
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append("%s: longer than %d" % (path, schema["maxLength"]))
        if schema.get("format") == "date-time" and not DATE_TIME.match(value):
            errors.append("%s: %r is not an RFC 3339 date-time" % (path, value))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append("%s: %s is below the minimum %s" % (path, value, schema["minimum"]))
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for k in schema.get("required") or []:
            if k not in value:
                errors.append("%s: required property %r missing" % (path, k))
        ap = schema.get("additionalProperties", True)
        for k, v in value.items():
            sub = "%s.%s" % (path, k)
            if k in props:
                errors.extend(validate(spec, props[k], v, sub))
            elif ap is False:
                errors.append("%s: property not allowed" % sub)
            elif isinstance(ap, dict):
                errors.extend(validate(spec, ap, v, sub))
    if isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            errors.extend(validate(spec, schema["items"], v, "%s[%d]" % (path, i)))
    return errors


# --------------------------------------------------------------------------
# Operations and responses
# --------------------------------------------------------------------------

def operations(spec):
    """[(path, method, operation)] in spec order."""
    out = []
    for path, item in spec.get("paths", {}).items():
        for m in HTTP_METHODS:
            if m in item:
                out.append((path, m, item[m]))
    return out


def media_type(content_type):
    """'application/json; charset=utf-8' -> ('application/json', {'charset': 'utf-8'})."""
    parts = [p.strip() for p in (content_type or "").split(";")]
    params = {}
    for p in parts[1:]:
        if "=" in p:
            k, v = p.split("=", 1)
            params[k.strip().lower()] = v.strip().strip('"')
    return parts[0].lower(), params


def find_media(content, content_type):
    """The spec's media type entry matching a response's Content-Type: same
    type, and every parameter the spec names present with the same value."""
    got, got_params = media_type(content_type)
    for key, media in content.items():
        want, want_params = media_type(key)
        if want == got and all(got_params.get(k) == v for k, v in want_params.items()):
            return key, media
    return None, None


def response_spec(spec, path, method, status):
    """The (dereferenced) response object documented for STATUS, or None."""
    op = spec["paths"].get(path, {}).get(method.lower())
    if op is None:
        return None
    resp = op.get("responses", {}).get(str(status))
    if resp is None:
        resp = op.get("responses", {}).get("default")
    return deref(spec, resp) if resp is not None else None


def check_against(spec, resp_obj, status, content_type, body, headers=None, what=""):
    """Checks one answer against a response object.  BODY: parsed JSON for
    JSON media types, else text (or None for HEAD).  HEADERS: a mapping with
    a case-insensitive .get (http.client.HTTPMessage) or None."""
    errors = []
    content = resp_obj.get("content") or {}
    if content:
        key, media = find_media(content, content_type)
        if key is None:
            errors.append("%s: HTTP %s with Content-Type %r; the spec documents %s"
                          % (what, status, content_type, ", ".join(content)))
        elif body is not None:
            schema = media.get("schema")
            if schema is not None:
                if media_type(key)[0] == "application/json" and isinstance(body, str):
                    errors.append("%s: body is not JSON: %r" % (what, body[:200]))
                else:
                    errors.extend("%s: %s" % (what, e) for e in validate(spec, schema, body))
    for name, h in (resp_obj.get("headers") or {}).items():
        h = deref(spec, h)
        value = headers.get(name) if headers is not None else None
        if value is None:
            if h.get("required"):
                errors.append("%s: header %s missing" % (what, name))
            continue
        schema = h.get("schema") or {}
        if schema.get("type") == "integer":
            try:
                value = int(value.strip())
            except ValueError:
                errors.append("%s: header %s: %r is not an integer" % (what, name, value))
                continue
        errors.extend("%s: header %s: %s" % (what, name, e) for e in validate(spec, schema, value))
    return errors


def check_response(spec, path, method, status, content_type, body, headers=None):
    """Checks an answer of METHOD PATH: the status must be documented, and the
    content type, body and documented headers must match.  [] when fine."""
    what = "%s %s -> %s" % (method.upper(), path, status)
    if path not in spec.get("paths", {}):
        return ["%s: path not in the spec" % what]
    if method.lower() not in spec["paths"][path]:
        return ["%s: method not in the spec" % what]
    resp = response_spec(spec, path, method, status)
    if resp is None:
        documented = sorted(spec["paths"][path][method.lower()].get("responses", {}))
        return ["%s: status not documented (documented: %s)" % (what, ", ".join(documented))]
    return check_against(spec, resp, status, content_type, body, headers, what)


def request_schema(spec, path, method, media="application/json"):
    op = spec["paths"][path][method.lower()]
    rb = deref(spec, op.get("requestBody") or {})
    m = (rb.get("content") or {}).get(media)
    return m.get("schema") if m else None


def walk_refs(node):
    """Every $ref string anywhere in NODE."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref":
                yield v
            else:
                yield from walk_refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk_refs(v)


def all_schemas(spec):
    """(where, schema) for every schema object reachable from the spec's
    components and operations (not following $refs)."""
    out = []
    for name, s in (spec.get("components", {}).get("schemas") or {}).items():
        out.append(("components.schemas." + name, s))
    for name, h in (spec.get("components", {}).get("headers") or {}).items():
        if "schema" in h:
            out.append(("components.headers.%s.schema" % name, h["schema"]))

    def from_content(where, content):
        for mt, media in (content or {}).items():
            if "schema" in media:
                out.append(("%s.content[%s].schema" % (where, mt), media["schema"]))

    for name, r in (spec.get("components", {}).get("responses") or {}).items():
        from_content("components.responses." + name, r.get("content"))
    for path, m, op in operations(spec):
        where = "%s %s" % (m.upper(), path)
        rb = op.get("requestBody")
        if rb and "content" in rb:
            from_content(where + " requestBody", rb["content"])
        for status, r in (op.get("responses") or {}).items():
            if "content" in r:
                from_content("%s %s" % (where, status), r["content"])
    return out


if __name__ == "__main__":  # pragma: no cover - manual use
    import sys
    here = os.path.dirname(os.path.abspath(__file__))
    spec_path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "..", "docs", "openapi.yaml")
    s = load_spec(spec_path)
    for where, schema in all_schemas(s):
        check_schema_keywords(s, schema, where)
    print("%s: %d operations, %d schemas, subset ok" % (spec_path, len(operations(s)),
                                                         len(all_schemas(s))))

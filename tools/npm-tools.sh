#!/bin/sh
# The test-time tools from the npm registry (OpenAPI linters, a reference
# logfmt parser), installed into build/npm-tools of this checkout -- never
# globally -- at pinned versions, and only once: a second run with the same
# versions does nothing.  Exits non-zero, saying why, when npm or the
# registry cannot be had; the tests that need a tool then say they skip.
set -eu
cd "$(dirname "$0")/.."
DIR=build/npm-tools
PKGS="@stoplight/spectral-cli@6.16.3 @redocly/cli@1.25.0 logfmt@1.4.0"
STAMP="$DIR/.installed"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$PKGS" ]; then
    exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
    echo "npm-tools: npm is not installed (make deps installs it)" >&2
    exit 1
fi
mkdir -p "$DIR"
[ -f "$DIR/package.json" ] || echo '{"name":"capgate-test-tools","private":true}' > "$DIR/package.json"
# shellcheck disable=SC2086
if ! npm install --prefix "$DIR" --no-audit --no-fund --loglevel=error $PKGS >&2; then
    echo "npm-tools: npm install failed (is the npm registry reachable?)" >&2
    exit 1
fi
echo "$PKGS" > "$STAMP"

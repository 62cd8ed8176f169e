#!/bin/sh
# Lints docs/openapi.yaml with Spectral (tools/spectral.yaml: spectral:oas) and
# Redocly (tools/redocly.yaml), installed by tools/npm-tools.sh into
# build/npm-tools.  Any error or warning fails.  When the tools cannot be
# installed (no npm registry), it says so and falls back to the project's
# own schema check (test_openapi.py), which `make test` runs anyway.
set -u
cd "$(dirname "$0")/.."
BIN=build/npm-tools/node_modules/.bin
if ! sh tools/npm-tools.sh; then
    echo "openapi-lint: SKIPPED: Spectral and Redocly could not be installed from the npm registry;" \
         "docs/openapi.yaml is checked only by tests/blackbox/test_openapi.py" >&2
    exit 0
fi
rc=0
"$BIN/spectral" lint --quiet --fail-severity=warn -r tools/spectral.yaml docs/openapi.yaml || rc=1
"$BIN/redocly" lint --max-problems=50 --config tools/redocly.yaml docs/openapi.yaml 2>&1 \
    | grep -v '^$' >&2
# redocly lint exits 0 on warnings: count them.
if "$BIN/redocly" lint --format=stylish --config tools/redocly.yaml docs/openapi.yaml 2>&1 \
        | grep -Eq '^ *[0-9]+:[0-9]+ +(warning|error)'; then
    rc=1
fi
[ $rc -eq 0 ] && echo "openapi-lint: docs/openapi.yaml is clean (Spectral spectral:oas, Redocly recommended)"
exit $rc

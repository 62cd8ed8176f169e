#!/bin/sh
# tests/run.sh BUILD_DIR: run every unit suite and the black-box suite, then
# print one closing line "N passed, N failed" (what CI reads) and exit 1 on
# any failure.  Each suite ends with "# NAME: P passed, F failed"; a suite
# that dies before printing it counts as one failure.
set -u
build=${1:-build}
pass=0
fail=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT

# Debian's interpreter first: the tests need nothing beyond its stdlib.
PYTHON=python3
[ -x /usr/bin/python3 ] && PYTHON=/usr/bin/python3

add_suite() {     # $1 = name, output in $log, $2 = exit code
    line=$(grep -E '^# [^ ]+: [0-9]+ passed, [0-9]+ failed' "$log" | tail -1)
    if [ -z "$line" ]; then
        echo "!! $1 did not finish (exit $2)"
        fail=$((fail + 1))
        return
    fi
    p=$(echo "$line" | sed -E 's/.*: ([0-9]+) passed.*/\1/')
    f=$(echo "$line" | sed -E 's/.* ([0-9]+) failed.*/\1/')
    pass=$((pass + p))
    fail=$((fail + f))
    if [ "$2" -ne 0 ] && [ "$f" -eq 0 ]; then
        echo "!! $1 exited $2"
        fail=$((fail + 1))
    fi
}

for t in "$build"/tests/test_*; do
    [ -x "$t" ] || continue
    case "$t" in *.d) continue ;; esac
    echo "== unit: $(basename "$t")"
    "$t" >"$log" 2>&1
    rc=$?
    cat "$log"
    add_suite "$(basename "$t")" "$rc"
done

echo "== black-box"
$PYTHON tests/blackbox/run.py --binary "$build/capgate" ${BLACKBOX_ARGS:-} 2>&1 | tee "$log"
rc=$(grep -q '^# blackbox: [0-9]* passed, 0 failed' "$log" && echo 0 || echo 1)
add_suite blackbox "$rc"

# `make bench` in its short form (1 s runs, 20,000 people, 300 callgrind
# decisions): it has to run from start to end -- every process started,
# measured and stopped -- though its figures mean nothing at this length
# (targets are not checked here; they are the benchmark's business).  Not
# in the sanitized run: the benchmark measures the plain build.
if [ -z "${CAPGATE_SANITIZED:-}" ] && [ -z "${CAPGATE_NO_BENCH:-}" ]; then
    echo "== bench (short form)"
    BENCH_SECONDS=1 BENCH_PEOPLE=20000 BENCH_DECIDES=300 sh tests/bench/run.sh "$build" >"$log" 2>&1
    rc=$?
    grep -v '^# \[' "$log"
    if [ "$rc" -eq 0 ] && grep -q '^bench: [0-9]* of [0-9]* targets met' "$log"; then
        echo "# bench: 1 passed, 0 failed" >>"$log"
    else
        tail -20 "$log"
        echo "# bench: 0 passed, 1 failed" >>"$log"
    fi
    add_suite bench "$rc"
fi

echo
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]

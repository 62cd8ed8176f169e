#!/bin/sh
# tests/bench/run.sh BUILD_DIR: capgate next to the floor of its stack (`make bench`).
#
# Builds the helper programs when they are missing or older than their
# source (floor, genload, upstream: see Makefile.inc), then runs
# tests/bench/bench.py, which prints one figure a line and
# "bench: N of M targets met".  Exit 0 when everything ran, whether
# or not the targets were met; 1 when something could not run.
#
#   BENCH_SECONDS=8      wrk duration of each timed run (3 runs per figure)
#   BENCH_PEOPLE=1000000 people loaded for Redis bytes per person
#   BENCH_DECIDES=5000   callgrind workload
#   BENCH_KEEP_TMP=1     keep the logs and configs of the run
set -eu
build=${1:-build}
cd "$(dirname "$0")/../.."

PYTHON=python3
[ -x /usr/bin/python3 ] && PYTHON=/usr/bin/python3

bins='' stale=''
for prog in floor genload upstream; do
    if [ ! -x "$build/bench/$prog" ] || [ "tests/bench/$prog.c" -nt "$build/bench/$prog" ]; then
        stale=1
    fi
    bins="$bins $build/bench/$prog"
done
if [ -n "$stale" ]; then
    # shellcheck disable=SC2086 # $bins: paths without spaces, one word each
    if grep -q 'tests/bench/Makefile.inc' Makefile; then
        make --no-print-directory BUILD="$build" $bins
    else
        make --no-print-directory -f Makefile -f tests/bench/Makefile.inc BUILD="$build" $bins
    fi
fi

exec "$PYTHON" tests/bench/bench.py "$build"

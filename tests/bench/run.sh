#!/bin/sh
# tests/bench/run.sh BUILD_DIR: capgate next to the floor of its stack (`make bench`).
#
# Builds the helper programs when they are missing (floor, genload: see
# Makefile.inc), then runs tests/bench/bench.py, which prints one figure a
# line and "bench: N of M targets met".  Exit 0 when everything ran, whether
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

if [ ! -x "$build/bench/floor" ] || [ ! -x "$build/bench/genload" ] ||
   [ tests/bench/floor.c -nt "$build/bench/floor" ] ||
   [ tests/bench/genload.c -nt "$build/bench/genload" ]; then
    if grep -q 'tests/bench/Makefile.inc' Makefile; then
        make --no-print-directory BUILD="$build" "$build/bench/floor" "$build/bench/genload"
    else
        make --no-print-directory -f Makefile -f tests/bench/Makefile.inc BUILD="$build" \
            "$build/bench/floor" "$build/bench/genload"
    fi
fi

exec "$PYTHON" tests/bench/bench.py "$build"

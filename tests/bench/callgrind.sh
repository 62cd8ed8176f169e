#!/bin/sh
# tests/bench/callgrind.sh BUILD_DIR: instructions per decision inside capgate.
#
# Runs BUILD_DIR/capgate under valgrind --tool=callgrind against a private
# redis-server, sends a fixed workload (BENCH_DECIDES decides, default 5000:
# deterministic bodies, one keep-alive connection, one request at a time),
# counting only the workload (callgrind_control --zero before, --dump after),
# and prints Ir per decision, the top 5 functions by self Ir and the share of
# each library.  The profile is kept as BUILD_DIR/bench/callgrind.out.
# The same figures close `make bench` (tests/bench/run.sh).
set -eu
build=${1:-build}
cd "$(dirname "$0")/../.."
PYTHON=python3
[ -x /usr/bin/python3 ] && PYTHON=/usr/bin/python3
exec "$PYTHON" tests/bench/bench.py --callgrind "$build"

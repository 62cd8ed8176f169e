#!/bin/sh
# tests/fuzz/run.sh [SECONDS] [HARNESS...]: build the libFuzzer harnesses of
# tests/fuzz/ into build/fuzz/ and run each for SECONDS (default: $FUZZ_SECONDS,
# else 60), one after the other.
#
# Each harness compiles its own copy of the src/*.c files it needs with
# clang -fsanitize=fuzzer,address,undefined (UBSan aborts: every finding is a
# crash), so the daemon's own build is left alone.  It starts from a fresh
# copy of its seed corpus, tests/fuzz/corpus/<harness>/, in
# build/fuzz/corpus-<harness> (the repository's corpus is never written to),
# with tests/fuzz/dict/<harness>.dict when there is one.
#
# Per harness it prints execs, exec/s, coverage (cov: and ft: of libFuzzer's
# last stats line) and the number of crashes; the whole libFuzzer log is in
# build/fuzz/<harness>.log and a crashing input stays in
# build/fuzz/<harness>-crash-<sha1> (or -leak-, -timeout-, -oom-; replay:
# build/fuzz/<harness> FILE).
# Exits with libFuzzer's (non-zero) status when any harness crashed, 2 when
# a harness does not build.
#
# Environment:
#   FUZZ_SECONDS       default run time per harness (60)
#   FUZZ_CC            compiler (default clang-14, else clang)
#   FUZZ_KEEP_CORPUS=1 keep build/fuzz/corpus-<harness> from earlier runs
#                      (it grows; coverage then starts where it ended)
#   FUZZ_BUILD_ONLY=1  build the harnesses, run nothing
set -u

cd "$(dirname "$0")/../.." || exit 2
secs=${1:-${FUZZ_SECONDS:-60}}
[ $# -gt 0 ] && shift
case "$secs" in
    ''|*[!0-9]*) echo "usage: tests/fuzz/run.sh [SECONDS] [HARNESS...]" >&2; exit 2 ;;
esac
harnesses=${*:-"fuzz_request fuzz_config fuzz_duration fuzz_jsonptr fuzz_reply fuzz_json_flat fuzz_jsonedit"}
out=build/fuzz

if [ -n "${FUZZ_CC:-}" ]; then
    cc=$FUZZ_CC
elif command -v clang-14 >/dev/null 2>&1; then
    cc=clang-14
else
    cc=clang
fi

# The sources each harness links (the harness itself comes first).
srcs() {
    case "$1" in
    fuzz_request) echo src/requests.c src/receipt.c src/sms_keyword.c src/validate.c src/json_flat.c src/pseudonym.c \
                       src/config.c src/decision.c src/delivery.c src/shape.c src/jsonptr.c src/jsonedit.c \
                       src/form.c src/token.c src/tz.c src/upstream.c src/textbuf.c \
                       src/store.c src/cluster.c src/histogram.c src/log.c build/gen/lua_scripts.c ;;
    fuzz_config)  echo src/config.c src/decision.c src/tz.c src/textbuf.c build/gen/lua_scripts.c ;;
    fuzz_duration) echo src/config.c src/tz.c ;;
    fuzz_jsonptr) echo src/jsonptr.c ;;
    fuzz_json_flat) echo src/json_flat.c ;;
    fuzz_jsonedit) echo src/jsonedit.c src/form.c src/textbuf.c ;;
    fuzz_reply)   echo src/decision.c src/delivery.c src/shape.c src/pseudonym.c src/config.c src/tz.c src/textbuf.c \
                       src/upstream.c src/store.c src/cluster.c src/histogram.c src/log.c build/gen/lua_scripts.c ;;
    *) return 1 ;;
    esac
}

# Longest input libFuzzer makes up, per harness.
max_len() {
    case "$1" in
    fuzz_request) echo 4096 ;;
    fuzz_config)  echo 8192 ;;
    fuzz_duration) echo 64 ;;
    fuzz_jsonptr) echo 2048 ;;
    fuzz_json_flat) echo 1024 ;;
    fuzz_jsonedit) echo 4096 ;;
    fuzz_reply)   echo 4096 ;;
    esac
}

PKGS="jansson libfyaml libsodium libevent libcurl hiredis gnutls"
if ! pkg_cflags=$(pkg-config --cflags $PKGS) || ! pkg_libs=$(pkg-config --libs $PKGS); then
    echo "fuzz: pkg-config cannot find $PKGS" >&2
    exit 2
fi
CFLAGS_FUZZ="-g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined
             -fno-sanitize-recover=undefined -std=c11 -D_GNU_SOURCE -Iinclude -Ibuild/gen
             -Itests/fuzz -DCAPGATE_VERSION=\"fuzz\""

# The embedded Lua scripts come from the top-level Makefile's generator.
if [ ! -f build/gen/lua_scripts.c ] || [ ! -f build/gen/lua_scripts.h ] ||
   [ -n "$(find src/lua -newer build/gen/lua_scripts.c 2>/dev/null | head -1)" ]; then
    make --no-print-directory build/gen/lua_scripts.c build/gen/lua_scripts.h >&2 || exit 2
fi
mkdir -p "$out" || exit 2

build() {     # $1 = harness: build/fuzz/$1 unless it is newer than every input
    h=$1
    bin=$out/$h
    files="tests/fuzz/$h.c $(srcs "$h")" || { echo "fuzz: unknown harness $h" >&2; return 1; }
    if [ -x "$bin" ] &&
       [ -z "$(find $files tests/fuzz/fuzz_common.h include/capgate tests/fuzz/run.sh \
                    -newer "$bin" 2>/dev/null | head -1)" ]; then
        return 0
    fi
    echo "  FUZZCC  $bin"
    # shellcheck disable=SC2086
    $cc $CFLAGS_FUZZ $pkg_cflags -o "$bin" $files $pkg_libs -lpthread -lm
}

for h in $harnesses; do
    build "$h" || { echo "fuzz: $h does not build" >&2; exit 2; }
done
[ "${FUZZ_BUILD_ONLY:-0}" = 1 ] && exit 0

# Stack traces for UBSan findings too; LeakSanitizer stays on (libFuzzer's
# -detect_leaks=1 is the default).
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}"

status=0
for h in $harnesses; do
    corpus=$out/corpus-$h
    log=$out/$h.log
    if [ "${FUZZ_KEEP_CORPUS:-0}" != 1 ]; then
        rm -rf "$corpus"
    fi
    mkdir -p "$corpus"
    cp tests/fuzz/corpus/"$h"/* "$corpus"/ 2>/dev/null
    dict=
    [ -f tests/fuzz/dict/$h.dict ] && dict=-dict=tests/fuzz/dict/$h.dict
    rm -f "$out/$h"-crash-* "$out/$h"-leak-* "$out/$h"-timeout-* "$out/$h"-oom-* \
          "$out/$h"-slow-unit-*
    # shellcheck disable=SC2086
    "$out/$h" -max_total_time="$secs" -max_len="$(max_len "$h")" -timeout=10 \
        -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$out/$h-" $dict \
        "$corpus" >"$log" 2>&1
    rc=$?
    stats=$(grep -E '^#[0-9]+.*cov: ' "$log" | tail -1)
    cov=$(echo "$stats" | sed -nE 's/.* cov: ([0-9]+).*/\1/p')
    ft=$(echo "$stats" | sed -nE 's/.* ft: ([0-9]+).*/\1/p')
    corp=$(echo "$stats" | sed -nE 's/.* corp: ([0-9]+)\/.*/\1/p')
    execs=$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+).*/\1/p' "$log" | tail -1)
    eps=$(sed -nE 's/^stat::average_exec_per_sec: *([0-9]+).*/\1/p' "$log" | tail -1)
    [ -n "$execs" ] || execs=$(echo "$stats" | sed -nE 's/^#([0-9]+).*/\1/p')
    [ -n "$eps" ] || eps=$(echo "$stats" | sed -nE 's/.* exec\/s: ([0-9]+).*/\1/p')
    crashes=$(ls "$out/$h"-crash-* "$out/$h"-leak-* "$out/$h"-timeout-* "$out/$h"-oom-* \
                 2>/dev/null | wc -l)
    if [ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ]; then
        crashes=1    # died without an artifact (e.g. a crash while loading the corpus)
    fi
    printf '%-14s execs: %s  exec/s: %s  cov: %s  ft: %s  corpus: %s  crashes: %s\n' \
        "$h" "${execs:-?}" "${eps:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$crashes"
    if [ "$rc" -ne 0 ]; then
        grep -E 'ERROR: |runtime error|SUMMARY|invariant failed|==[0-9]+==' "$log" | head -8 |
            sed 's/^/    /'
        for f in "$out/$h"-crash-* "$out/$h"-leak-* "$out/$h"-timeout-* "$out/$h"-oom-*; do
            [ -f "$f" ] && echo "    input: $f  (replay: $out/$h $f)"
        done
        echo "    log: $log"
        [ "$status" -eq 0 ] && status=$rc
    fi
done
exit "$status"

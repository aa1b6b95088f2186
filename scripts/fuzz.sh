#!/usr/bin/env bash
# Builds every fuzz target (engine/fuzz, raft/fuzz, gateway/fuzz: libFuzzer through
# libfuzzer-sys) and runs each for SECONDS (default 20), starting from its seed corpus
# (<crate>/fuzz/corpus/<target>/, never written to); fails when any target crashes,
# panics, runs out of memory or takes more than 10 s on one input.
#
#   scripts/fuzz.sh [SECONDS]
#
# The build is cargo-fuzz's, without cargo-fuzz: the same coverage instrumentation
# (sancov), `--cfg fuzzing`, debug assertions and overflow checks, on the stable
# toolchain, at opt-level 1 and without a sanitizer, so that it costs about 2 minutes on a
# fresh 2-core machine (CI runs it). NOKV_FUZZ_SANITIZER=address builds with
# AddressSanitizer instead (needs the nightly toolchain; slower to build and to run).
#
# Environment: NOKV_FUZZ_JOBS targets run at once (default 2), NOKV_FUZZ_TARGETS a
# space-separated subset of target names, NOKV_FUZZ_TARGET_DIR the build directory shared
# by the three fuzz crates (default ~/.cache/nokv-fuzz-target), NOKV_FUZZ_OUT where corpora, logs and
# crash inputs go (default target/fuzz-out). docs/testing.md, "Fuzzing", lists the targets.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${1:-20}
JOBS=${NOKV_FUZZ_JOBS:-2}
SANITIZER=${NOKV_FUZZ_SANITIZER:-none}
# Outside the checkout by default, so CI runs in fresh clones on one machine reuse the
# instrumented dependencies (libFuzzer, raft-rs, protobuf, ...) instead of rebuilding them.
TARGET_DIR=${NOKV_FUZZ_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/nokv-fuzz-target}
OUT=${NOKV_FUZZ_OUT:-$PWD/target/fuzz-out}
CRATES=(engine raft gateway)
# The host triple: built with --target so that build scripts and proc macros (which run
# on the host) are not instrumented, as cargo-fuzz does.
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')

if ! [[ "$SECS" =~ ^[0-9]+$ ]] || [ "$SECS" -lt 1 ]; then
    echo "usage: scripts/fuzz.sh [SECONDS]  (seconds per target, at least 1)" >&2
    exit 2
fi

# libFuzzer's coverage feedback (what cargo-fuzz passes).
flags="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4"
flags+=" -Cllvm-args=-sanitizer-coverage-inline-8bit-counters"
flags+=" -Cllvm-args=-sanitizer-coverage-pc-table"
flags+=" -Cllvm-args=-sanitizer-coverage-trace-compares"
flags+=" -Cllvm-args=-sanitizer-coverage-stack-depth"
flags+=" --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
toolchain=()
case "$SANITIZER" in
    none) ;;
    address)
        if ! rustup toolchain list | grep -q '^nightly'; then
            echo "fuzz: NOKV_FUZZ_SANITIZER=address needs the nightly toolchain" >&2
            exit 1
        fi
        toolchain=(+nightly)
        flags+=" -Zsanitizer=address"
        TARGET_DIR+="-asan"
        ;;
    *)
        echo "fuzz: NOKV_FUZZ_SANITIZER is none or address, not '$SANITIZER'" >&2
        exit 2
        ;;
esac

start=$(date +%s)
for c in "${CRATES[@]}"; do
    echo "fuzz: building $c/fuzz ($(( $(date +%s) - start ))s)"
    RUSTFLAGS="$flags" \
        CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_PROFILE_RELEASE_DEBUG=0 \
        CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_INCREMENTAL=false \
        cargo "${toolchain[@]}" build --release --locked --bins --target "$TRIPLE" \
        --manifest-path "$c/fuzz/Cargo.toml" --target-dir "$TARGET_DIR"
done
built=$(date +%s)
echo "fuzz: built in $(( built - start ))s"

bin_dir="$TARGET_DIR/$TRIPLE/release"
rm -rf "$OUT"
mkdir -p "$OUT"

# crate:target for every [[bin]] of the three fuzz crates (or the chosen subset).
targets=()
for c in "${CRATES[@]}"; do
    for t in $(sed -n 's/^name = "\(.*\)"$/\1/p' "$c/fuzz/Cargo.toml" | grep -v -- '-fuzz$'); do
        if [ -z "${NOKV_FUZZ_TARGETS:-}" ] || [[ " $NOKV_FUZZ_TARGETS " == *" $t "* ]]; then
            targets+=("$c:$t")
        fi
    done
done
if [ ${#targets[@]} -eq 0 ]; then
    echo "fuzz: no target selected" >&2
    exit 1
fi

run_one() {
    local crate=$1 t=$2
    mkdir -p "$OUT/corpus/$t" "$OUT/crashes"
    # -max_total_time bounds the run; the outer timeout only catches a hung process.
    local rc=0
    timeout --kill-after=10 $(( SECS + 120 )) "$bin_dir/$t" \
        "$OUT/corpus/$t" "$crate/fuzz/corpus/$t" \
        -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$OUT/crashes/$t-" >"$OUT/$t.log" 2>&1 || rc=$?
    echo "$rc" >"$OUT/$t.rc"
}

names=()
for ct in "${targets[@]}"; do
    # Bounded: each wait returns when one of the running targets ends.
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do
        wait -n || true
    done
    run_one "${ct%%:*}" "${ct#*:}" &
    names+=("${ct#*:}")
done
wait

failed=0
printf '%-18s %-6s %12s %10s %8s %8s\n' target result runs execs/s corpus cov
for t in "${names[@]}"; do
    if [ "$(cat "$OUT/$t.rc" 2>/dev/null)" = 0 ]; then result=ok; else result=FAIL; failed=1; fi
    stat() { sed -n "s/^stat::$1: *//p" "$OUT/$t.log" | tail -1; }
    crate=$(dirname "$(dirname "$(grep -l "name = \"$t\"" ./*/fuzz/Cargo.toml | head -1)")")
    corpus=$(( $(find "$OUT/corpus/$t" -type f | wc -l) + $(find "$crate/fuzz/corpus/$t" -type f | wc -l) ))
    cov=$(grep -o 'cov: [0-9]*' "$OUT/$t.log" | tail -1 | cut -d' ' -f2)
    printf '%-18s %-6s %12s %10s %8s %8s\n' "$t" "$result" "$(stat number_of_executed_units)" \
        "$(stat average_exec_per_sec)" "$corpus" "${cov:-?}"
done
echo "fuzz: ${#targets[@]} targets x ${SECS}s in $(( $(date +%s) - built ))s (build $(( built - start ))s)"

if [ "$failed" -ne 0 ]; then
    for t in "${names[@]}"; do
        if grep -qE '^==[0-9]+==|panicked|deadly signal|Test unit written' "$OUT/$t.log"; then
            echo "---- $t: $OUT/$t.log (tail)"
            tail -40 "$OUT/$t.log"
        fi
    done
    for f in "$OUT"/crashes/*; do
        [ -f "$f" ] || continue
        echo "---- crash input $f ($(wc -c <"$f") bytes; reproduce: $bin_dir/<target> $f)"
        od -A d -t x1 -v "$f" | head -64
    done
    echo "fuzz: FAILED" >&2
    exit 1
fi
echo "fuzz: all targets ran without a crash"

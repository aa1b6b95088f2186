#!/usr/bin/env bash
# How fast a store spreads a load that starts on one region (issue "Regions that grow and
# move", docs/regions.md): a standalone nokv-server with --cores 2 gets every region moved
# to core 0 and merged into one (as a migrated directory arrives), DATA_MB of values are
# loaded into it with splits and balancing off, then the store restarts with its defaults
# (size and load splits, core balance) and a uniform write load runs for DURATION seconds.
# Every STEP seconds the script samples the store's /metrics: SETs per second, each
# core's applied raft entries per second and its number of regions. It prints one line per
# sample with a bar of the ops/s, when the per-core load first stays within 25% of the
# mean, and the steady-state ops/s. Needs redis-benchmark and redis-cli
# (scripts/install-test-deps.sh); builds nokv-server --release unless SKIP_BUILD=1.
#
#   bash bench/anchors/spread.sh      DATA_MB=1024 DURATION=180 STEP=5 bash bench/anchors/spread.sh
#   EXTRA="--split-check-ms 2000" bash bench/anchors/spread.sh   (flags for the measured run)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
DATA_MB=${DATA_MB:-1024}
DURATION=${DURATION:-180}
STEP=${STEP:-5}
PORT=${PORT:-16391}
METRICS=${METRICS:-16392}
EXTRA=${EXTRA:-}
SERVER=${CARGO_TARGET_DIR:-$REPO/target}/release/nokv-server
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    (cd "$REPO" && cargo build --release -p nokv-shard --bin nokv-server)
fi
for tool in redis-benchmark redis-cli awk; do
    command -v "$tool" >/dev/null || { echo "spread.sh: $tool is missing (bash scripts/install-test-deps.sh)" >&2; exit 1; }
done
WORK=$(mktemp -d /tmp/nokv-spread-XXXX)
pid=
bench=
cleanup() {
    [[ -n $bench ]] && kill "$bench" 2>/dev/null
    [[ -n $pid ]] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT
cli() { redis-cli -p "$PORT" "$@"; }
start() { # flags...
    "$SERVER" --workdir "$WORK/d" --redis-addr "127.0.0.1:$PORT" --cores 2 --durability relaxed \
        --metrics-addr "127.0.0.1:$METRICS" "$@" >>"$WORK/out" 2>>"$WORK/err" &
    pid=$!
    for _ in $(seq 300); do cli ping >/dev/null 2>&1 && return; sleep 0.1; done
    echo "spread.sh: nokv-server did not start; its log:" >&2
    tail -20 "$WORK/err" >&2
    exit 1
}
stop() { kill -TERM "$pid"; wait "$pid" 2>/dev/null || true; pid=; }
# region=<id> ... slots=<a>..<b> ... core=<c>, sorted by first slot.
regions() { cli NOKV.REGION LIST | awk '{for (i = 1; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] } split(f["slots"], s, "\\.\\."); print s[1], f["region"], f["core"] }' | sort -n; }

# 1. One region on core 0, no splits, no balance.
QUIET=(--region-max-bytes 0 --split-load-qps 0 --split-load-bytes 0 --merge-max-bytes 0 --balance-cores off)
start "${QUIET[@]}"
while read -r _ id core; do
    [[ $core == 0 ]] || [[ $(cli NOKV.REGION MOVE "$id" 0) == OK ]] || { echo "spread.sh: move of region $id failed" >&2; exit 1; }
done < <(regions)
# Bounded: every merge removes one region.
for _ in $(seq 64); do
    mapfile -t rs < <(regions)
    ((${#rs[@]} > 1)) || break
    read -r _ a _ <<<"${rs[0]}"
    read -r _ b _ <<<"${rs[1]}"
    out=$(cli NOKV.REGION MERGE "$a" "$b")
    [[ $out =~ ^[0-9]+$ ]] || { echo "spread.sh: merge of $a and $b failed: $out" >&2; exit 1; }
done
echo "== one region: $(regions | tr '\n' ' ')"
n=$((DATA_MB * 1024))
t0=$(date +%s.%N)
redis-benchmark -p "$PORT" -t set -n "$n" -d 1000 -r 100000000 -c 50 -P 16 -q >/dev/null 2>&1
t1=$(date +%s.%N)
echo "== loaded $n values of 1000 bytes (${DATA_MB} MiB) in $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", b - a }') s: $(regions | tr '\n' ' ')"
stop

# 2. The store's defaults, a uniform write load, samples every STEP seconds.
# shellcheck disable=SC2086
start $EXTRA
metric() { # name -> "label value" lines
    curl -s "http://127.0.0.1:$METRICS/metrics" 2>/dev/null | awk -v m="$1" '$1 ~ "^"m"[{ ]" || $1 == m { print $1, $2 }'
}
sets() { metric nokv_commands_total | awk '/command="set"/ { s += $2 } END { print s + 0 }'; }
applied() { metric nokv_raft_applied_entries_total | awk '{ match($1, /core="[0-9]+"/); c = substr($1, RSTART + 6, RLENGTH - 7); a[c] = $2 } END { print a[0] + 0, a[1] + 0 }'; }
count() { metric nokv_raft_regions | awk '{ match($1, /core="[0-9]+"/); c = substr($1, RSTART + 6, RLENGTH - 7); a[c] = $2 } END { print a[0] + 0, a[1] + 0 }'; }
command -v curl >/dev/null || { echo "spread.sh: curl is missing" >&2; exit 1; }
redis-benchmark -p "$PORT" -t set -n 2000000000 -d 100 -r 100000000 -c 50 -P 16 -q >/dev/null 2>&1 &
bench=$!
prev_sets=$(sets); read -r prev0 prev1 < <(applied)
spread_at=
printf '%5s %9s %8s %8s %7s %9s  %s\n' "t(s)" "SET/s" "core0/s" "core1/s" "spread" "regions" "ops/s"
samples=()
for t in $(seq "$STEP" "$STEP" "$DURATION"); do
    sleep "$STEP"
    now_sets=$(sets); read -r a0 a1 < <(applied); read -r r0 r1 < <(count)
    ops=$(( (now_sets - prev_sets) / STEP )); c0=$(( (a0 - prev0) / STEP )); c1=$(( (a1 - prev1) / STEP ))
    prev_sets=$now_sets; prev0=$a0; prev1=$a1
    # The larger core's distance from the mean of the two, in percent.
    spread=$(awk -v x="$c0" -v y="$c1" 'BEGIN { m = (x + y) / 2; d = (x > y ? x : y) - m; printf "%.0f", (m > 0 ? 100 * d / m : 100) }')
    if [[ -z $spread_at && $spread -le 25 ]]; then spread_at=$t; fi
    if [[ -n $spread_at && $spread -gt 25 ]]; then spread_at=; fi
    bar=$(awk -v o="$ops" 'BEGIN { n = int(o / 4000); s = ""; for (i = 0; i < n && i < 60; i++) s = s "#"; print s }')
    printf '%5d %9d %8d %8d %6s%% %4d/%-4d  %s\n' "$t" "$ops" "$c0" "$c1" "$spread" "$r0" "$r1" "$bar"
    samples+=("$ops")
done
kill "$bench" 2>/dev/null; wait "$bench" 2>/dev/null || true; bench=
last=("${samples[@]: -4}")
steady=$(printf '%s\n' "${last[@]}" | awk '{ s += $1 } END { printf "%.0f", s / NR }')
echo "steady state (last 4 samples): $steady SET/s"
if [[ -n $spread_at ]]; then
    echo "per-core load within 25% of the mean from t=${spread_at}s on (target: within 60 s)"
else
    echo "per-core load not within 25% of the mean at the end (target: within 60 s)"
fi
grep -E "split by|moved a region|merged two" "$WORK/err" | awk '{ $1 = ""; print }' | sort | uniq -c | sort -rn | head -5 || true

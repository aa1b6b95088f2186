#!/usr/bin/env bash
# What a region costs a store when it is idle (issue "Regions that grow and move",
# docs/regions.md, "Hibernation"): a standalone nokv-server with --cores 2 and automatic
# splits, merges and balancing off is measured idle with its first 8 regions, then split
# on request (NOKV.REGION SPLIT, over one redis-cli connection) into REGIONS regions of
# equal slot ranges, and measured idle again. Each measurement: the process's resident
# memory (VmRSS) and the CPU time it used over IDLE seconds (utime + stime from
# /proc/<pid>/stat), and how many regions hibernate (nokv_raft_hibernating_regions).
# Prints the memory per region, and the idle CPU with few and with many regions. Then
# one SET per region (WRITE=0: none) wakes every region once, and the same is measured
# after they went back to sleep. Needs redis-cli and curl (scripts/install-test-deps.sh);
# builds nokv-server --release unless SKIP_BUILD=1.
#
#   bash bench/anchors/regions.sh      REGIONS=16384 IDLE=20 bash bench/anchors/regions.sh
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
REGIONS=${REGIONS:-10000}
IDLE=${IDLE:-10}
WRITE=${WRITE:-1}
PORT=${PORT:-16393}
METRICS=${METRICS:-16394}
SERVER=${CARGO_TARGET_DIR:-$REPO/target}/release/nokv-server
if ((REGIONS < 8 || REGIONS > 16384)); then
    echo "regions.sh: REGIONS must be 8..16384 (a region holds at least one hash slot)" >&2
    exit 1
fi
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    (cd "$REPO" && cargo build --release -p nokv-shard --bin nokv-server)
fi
for tool in redis-cli curl awk; do
    command -v "$tool" >/dev/null || { echo "regions.sh: $tool is missing (bash scripts/install-test-deps.sh)" >&2; exit 1; }
done
WORK=$(mktemp -d /tmp/nokv-regions-XXXX)
pid=
cleanup() {
    [[ -n $pid ]] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT
cli() { redis-cli -p "$PORT" "$@"; }
"$SERVER" --workdir "$WORK/d" --redis-addr "127.0.0.1:$PORT" --cores 2 \
    --metrics-addr "127.0.0.1:$METRICS" --region-max-bytes 0 --split-load-qps 0 \
    --split-load-bytes 0 --merge-max-bytes 0 --balance-cores off >"$WORK/out" 2>"$WORK/err" &
pid=$!
for _ in $(seq 300); do cli ping >/dev/null 2>&1 && break; sleep 0.1; done
cli ping >/dev/null 2>&1 || { echo "regions.sh: nokv-server did not start:" >&2; tail -20 "$WORK/err" >&2; exit 1; }
hz=$(getconf CLK_TCK)
metric_sum() { curl -s "http://127.0.0.1:$METRICS/metrics" | awk -v m="$1" '$1 ~ "^"m"[{ ]" || $1 == m { s += $2 } END { printf "%d", s }'; }
# "<regions> <hibernating> <rss MiB> <idle CPU ms per s>", over IDLE seconds.
measure() {
    local t0 t1 rss
    t0=$(awk '{ print $14 + $15 }' "/proc/$pid/stat")
    sleep "$IDLE"
    t1=$(awk '{ print $14 + $15 }' "/proc/$pid/stat")
    rss=$(awk '/^VmRSS/ { print $2 }' "/proc/$pid/status")
    echo "$(metric_sum nokv_raft_regions) $(metric_sum nokv_raft_hibernating_regions) $rss $(( (t1 - t0) * 1000 / hz / IDLE ))"
}
report() { # label regions hibernating rss_kib cpu
    printf '%-28s %7d regions %7d hibernating  RSS %7.1f MiB  idle CPU %4d ms/s\n' "$1" "$2" "$3" "$(awk -v k="$4" 'BEGIN { print k / 1024 }')" "$5"
}
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
# Measures and reports as <label>; with <what>, also the memory per region above the first
# measurement (n0, rss0).
step() { # label [what]
    local n h rss cpu
    read -r n h rss cpu < <(measure)
    report "$1" "$n" "$h" "$rss" "$cpu"
    if [[ -n ${2:-} ]]; then
        echo "memory per region ($2): $(awk -v a="$rss0" -v b="$rss" -v n0="$n0" -v n="$n" 'BEGIN { printf "%.1f", (b - a) / (n - n0) }') KiB"
    fi
}
sleep 2
read -r n0 h0 rss0 cpu0 < <(measure)
report "first regions, idle" "$n0" "$h0" "$rss0" "$cpu0"

# Split points: REGIONS equal slot ranges; each original region is split at the points
# inside it, left to right (each split's new region holds the rest, split next).
mapfile -t originals < <(cli NOKV.REGION LIST | awk '{ for (i = 1; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] } split(f["slots"], s, "\\.\\."); print s[1], s[2], f["region"] }' | sort -n)
t0=$(date +%s.%N)
coproc CLI { redis-cli -p "$PORT"; }
splits=0
for line in "${originals[@]}"; do
    read -r a b id <<<"$line"
    cur=$id
    for k in $(seq 1 $((REGIONS - 1))); do
        s=$(( k * 16384 / REGIONS ))
        (( s > a && s < b )) || continue
        # A region just made by a split elects its leader in the next round: retried.
        for try in $(seq 100); do
            echo "NOKV.REGION SPLIT $cur $s" >&"${CLI[1]}"
            read -r child <&"${CLI[0]}"
            if [[ $child =~ ^[0-9]+$ ]]; then
                read -r _slot <&"${CLI[0]}"
                break
            fi
            # An error is one line (redis-cli may add an empty one).
            read -r -t 0.05 _ <&"${CLI[0]}" || true
            [[ $child == *"no leader"* && $try -lt 100 ]] || { echo "regions.sh: split of region $cur at $s failed: $child" >&2; exit 1; }
            sleep 0.01
        done
        cur=$child
        splits=$((splits + 1))
    done
done
exec {CLI[1]}>&-
echo "$splits splits in $(since "$t0") s"
sleep 2
step "after the splits, idle" "idle, empty"

if [[ $WRITE == 1 ]]; then
    # 12 keys per region on average (k{0}, k{1}, ...: their slots spread evenly), so
    # that every region gets at least one write with near certainty (e^-12 each).
    t0=$(date +%s.%N)
    seq 0 $((REGIONS * 12)) | awk '{ printf "SET k{%d} v\n", $1 }' | redis-cli -p "$PORT" >/dev/null
    echo "$((REGIONS * 12 + 1)) SETs over every region in $(since "$t0") s"
    sleep 3
    step "after a write to each, idle" "idle, written once, memtables included"
fi

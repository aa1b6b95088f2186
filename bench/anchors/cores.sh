#!/usr/bin/env bash
# The cost of cross-core routing (docs/regions.md; issue "Regions that grow and move"):
# nokv-server's CPU-seconds per million redis-benchmark operations (SET and GET, 50
# clients, pipeline 16, 100k random keys) at --cores 1 and --cores 2, ROUNDS times each,
# read from /proc/<pid>/stat before and after each run. Prints one line per run and the
# ratio 2-core / 1-core of the medians. Needs redis-benchmark and redis-cli
# (scripts/install-test-deps.sh); builds nokv-server --release unless SKIP_BUILD=1.
#
#   bash bench/anchors/cores.sh            ROUNDS=3 N=1000000 PORT=16390 bash bench/anchors/cores.sh
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
ROUNDS=${ROUNDS:-2}
N=${N:-1000000}
PORT=${PORT:-16390}
SERVER=${CARGO_TARGET_DIR:-$REPO/target}/release/nokv-server
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    (cd "$REPO" && cargo build --release -p nokv-shard --bin nokv-server)
fi
for tool in redis-benchmark redis-cli bc; do
    command -v "$tool" >/dev/null || { echo "cores.sh: $tool is missing (bash scripts/install-test-deps.sh)" >&2; exit 1; }
done
WORK=$(mktemp -d /tmp/nokv-cores-XXXX)
pid=
cleanup() { [[ -n $pid ]] && kill -TERM "$pid" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
declare -A per
for round in $(seq "$ROUNDS"); do
    for cores in 1 2; do
        rm -rf "$WORK/d"
        "$SERVER" --workdir "$WORK/d" --redis-addr "127.0.0.1:$PORT" --cores "$cores" \
            --durability relaxed >"$WORK/out" 2>"$WORK/err" &
        pid=$!
        for _ in $(seq 100); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
        t0=$(ticks "$pid")
        rates=$(redis-benchmark -p "$PORT" -t set,get -n "$N" -c 50 -P 16 -r 100000 -q 2>&1 |
            tr '\r' '\n' | grep 'requests per second' | tail -2 | tr '\n' ' ')
        t1=$(ticks "$pid")
        kill -TERM "$pid"; wait "$pid" 2>/dev/null || true; pid=
        cpu=$(echo "scale=3; ($t1 - $t0) / $(getconf CLK_TCK)" | bc)
        millions=$(echo "scale=6; 2 * $N / 1000000" | bc)
        p=$(echo "scale=3; $cpu / $millions" | bc)
        per[$cores]+="$p "
        echo "round $round --cores $cores: server CPU ${cpu}s, ${p} CPU-s per million ops; $rates"
    done
done
median() { tr ' ' '\n' <<<"$1" | grep . | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
m1=$(median "${per[1]}"); m2=$(median "${per[2]}")
echo "median CPU-s per million ops: --cores 1 $m1, --cores 2 $m2, ratio $(echo "scale=2; $m2 / $m1" | bc)x (target <= 1.15x)"

#!/usr/bin/env bash
# A/B of two nokv-server builds (e.g. before and after a change) on the same machine, in
# the same run: redis-benchmark against each in turn, ops/s and server CPU microseconds
# per operation (utime+stime from /proc/<pid>/stat before/after, divided by N).
#
#   bash bench/anchors/ab.sh OLD_BINARY NEW_BINARY            # set,get x 4 rounds
#   TESTS=mset ROUNDS=2 N=100000 bash bench/anchors/ab.sh A B # MSET (10 keys, over regions)
#
# Each test starts the server on a fresh workdir (--cores 1 --cpus SERVER_CPU
# --durability relaxed), pinned to SERVER_CPU; redis-benchmark --threads 1 -c 50 -P 16
# -d 100 -r N on CLIENT_CPU. Output: one CSV line per run (name, test, redis-benchmark's
# CSV line, cpu_us_per_op).
set -euo pipefail
OLD=${1:?usage: ab.sh OLD_BINARY NEW_BINARY}
NEW=${2:?usage: ab.sh OLD_BINARY NEW_BINARY}
N=${N:-300000}
TESTS=${TESTS:-set,get}
ROUNDS=${ROUNDS:-4}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
PORT=${PORT:-17100}
WORK=$(mktemp -d /tmp/nokv-ab-XXXX)
trap 'rm -rf "$WORK"' EXIT

run() { # binary name test
    local bin=$1 name=$2 test=$3
    rm -rf "$WORK/wd"
    taskset -c "$SERVER_CPU" "$bin" --workdir "$WORK/wd" --redis-addr "127.0.0.1:$PORT" \
        --cores 1 --durability relaxed > "$WORK/server.log" 2>&1 &
    local pid=$!
    for _ in $(seq 100); do redis-cli -p "$PORT" ping > /dev/null 2>&1 && break; sleep 0.1; done
    local t0 t1 out
    t0=$(awk '{print $14+$15}' "/proc/$pid/stat")
    out=$(taskset -c "$CLIENT_CPU" redis-benchmark -p "$PORT" --threads 1 -c 50 -n "$N" -r "$N" \
        -d 100 -P 16 -t "$test" --csv 2> /dev/null | tail -1)
    t1=$(awk '{print $14+$15}' "/proc/$pid/stat")
    kill "$pid"
    wait "$pid" 2> /dev/null || true
    # clock ticks (1/100 s) -> microseconds per request
    echo "$name,$test,$out,cpu_us_per_op=$(echo "($t1-$t0)*10000/$N" | bc -l | xargs printf %.2f)"
}

for _ in $(seq "$ROUNDS"); do
    for t in ${TESTS//,/ }; do
        run "$OLD" old "$t"
        run "$NEW" new "$t"
    done
done

#!/usr/bin/env bash
# Transaction anchor (issue 7): a 3-store NoKV cluster (deploy/cluster.sh, one coordinator,
# stores with --cores 1) driven by `nokv-bench txn`: closed-loop clients, each operation
# reads and writes two zipfian(0.99) keys in regions led by different stores, first without
# a transaction ("plain": GET, GET, SET, SET), then in one ("txn": begin, get, get, put,
# put, commit; a write conflict or a lock that stays is an abort, run again). Reports txn/s,
# abort rate, p50/p99 and the txn/plain throughput ratio.
#
#   bash bench/anchors/txn.sh
#   QUICK=1 bash bench/anchors/txn.sh          # smoke run (clients 4,16, 2 s phases, 2000 keys)
#
# Target: txn/s >= 0.5x the plain operations' throughput.
#
# Environment (defaults in brackets):
#   CLIENTS [4,16,64]   DURATION [10] s per phase (cap)   WARMUP [1] s per phase
#   OPS [200000] per phase (cap)   KEYS [10000]   VALUE_SIZE [100]   ZIPF [0.99]
#   MAX_ATTEMPTS [10]   attempts of one transaction before it counts as failed
#   DURABILITY [sync]   every store's --durability (sync or relaxed)
#   CLUSTER_ID [1]      the cluster id of the generated topology
#   WORKDIR [mktemp -d /tmp/nokv-txn-XXXX]   data dirs and logs; removed at exit
#   KEEP [0]            1 keeps WORKDIR
#   RESULTS_DIR []      if set, table.md, txn.json, the raw output and the logs go there
#   SKIP_BUILD [0]      1 uses the existing target/release binaries
set -euo pipefail

if [[ ${1:-} == --help || ${1:-} == -h ]]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 0
fi

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/../.." && pwd)
# shellcheck source=bench/anchors/common.sh
source "$SCRIPT_DIR/common.sh"

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
    CLIENTS=${CLIENTS:-4,16} DURATION=${DURATION:-2} KEYS=${KEYS:-2000} OPS=${OPS:-20000}
fi
CLIENTS=${CLIENTS:-4,16,64}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-1}
OPS=${OPS:-200000}
KEYS=${KEYS:-10000}
VALUE_SIZE=${VALUE_SIZE:-100}
ZIPF=${ZIPF:-0.99}
MAX_ATTEMPTS=${MAX_ATTEMPTS:-10}
DURABILITY=${DURABILITY:-sync}
CLUSTER_ID=${CLUSTER_ID:-1}
KEEP=${KEEP:-0}
SKIP_BUILD=${SKIP_BUILD:-0}

die() {
    echo "txn.sh: $*" >&2
    exit 1
}

BIN=${CARGO_TARGET_DIR:-$REPO/target}/release
if [[ $SKIP_BUILD != 1 ]]; then
    echo "== cargo build --release (nokv-server, nokv-coordinator, nokv-bench)"
    (cd "$REPO" && cargo build --release --bin nokv-server --bin nokv-coordinator --bin nokv-bench)
fi
for b in nokv-server nokv-coordinator; do
    [[ -x $BIN/$b ]] || die "$BIN/$b not found (build failed or SKIP_BUILD=1 without a build)"
done
# Finds nokv-bench and makes WORKDIR (removed at exit unless KEEP=1); the build was above.
SKIP_BUILD=1 anchor_setup txn.sh nokv-txn

CLUSTER_PID=""
stop_cluster() {
    [[ -n $CLUSTER_PID ]] || return 0
    # deploy/cluster.sh stops its stores and coordinator on SIGTERM (up to 30 s each).
    kill -TERM "$CLUSTER_PID" 2>/dev/null || true
    local w
    for ((w = 0; w < 1300; w++)); do
        kill -0 "$CLUSTER_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$CLUSTER_PID" 2>/dev/null || true
    wait "$CLUSTER_PID" 2>/dev/null || true
    CLUSTER_PID=""
}
cleanup() {
    stop_cluster
    if [[ -n ${RESULTS_DIR:-} && -d $WORKDIR/nokv ]]; then
        mkdir -p "$RESULTS_DIR"
        cp "$WORKDIR"/nokv/*.log "$RESULTS_DIR"/ 2>/dev/null || true
    fi
    anchor_cleanup
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# free_port: sets PORT to a free loopback port not handed out before in this run.
declare -A USED_PORTS=()
free_port() {
    local p i
    for ((i = 0; i < 200; i++)); do
        p=$(port_candidate)
        [[ -z ${USED_PORTS[$p]:-} ]] || continue
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            USED_PORTS[$p]=1
            PORT=$p
            return 0
        fi
    done
    die "no free port on 127.0.0.1 after 200 tries"
}

# --- the cluster: one coordinator, three stores of one core each ------------------------
free_port
COORD=127.0.0.1:$PORT
{
    echo '{ "cluster_id": '"$CLUSTER_ID"', "coordinators": [ { "addr": "'"$COORD"'", "workdir": "coord-1" } ], "stores": ['
    ncpu=$(nproc)
    for i in 1 2 3; do
        free_port; r=$PORT; free_port; rpc=$PORT; free_port; met=$PORT
        echo "  { \"id\": $i, \"redis_addr\": \"127.0.0.1:$r\", \"rpc_addr\": \"127.0.0.1:$rpc\", \"metrics_addr\": \"127.0.0.1:$met\", \"workdir\": \"store-$i\", \"cores\": 1, \"cpus\": \"$(((i - 1) % ncpu))\" }$([[ $i == 3 ]] || echo ,)"
    done
    echo '] }'
} >"$WORKDIR/topology.json"
bash "$REPO/deploy/cluster.sh" --config "$WORKDIR/topology.json" --workdir "$WORKDIR/nokv" \
    --bin-dir "$BIN" --durability "$DURABILITY" >"$WORKDIR/nokv-cluster.out" 2>&1 &
CLUSTER_PID=$!
for ((w = 0; w < 600; w++)); do
    grep -q "is up" "$WORKDIR/nokv-cluster.out" 2>/dev/null && break
    kill -0 "$CLUSTER_PID" 2>/dev/null || { cat "$WORKDIR/nokv-cluster.out" >&2; die "deploy/cluster.sh exited"; }
    sleep 0.2
done
grep -q "is up" "$WORKDIR/nokv-cluster.out" || die "NoKV cluster not up in 120 s; see $WORKDIR/nokv-cluster.out"
echo "== NoKV cluster $CLUSTER_ID up: coordinator $COORD (--durability $DURABILITY; topology $WORKDIR/topology.json)"

# --- the benchmark -----------------------------------------------------------------------
STARTED=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
COMMIT=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
echo "== $STARTED, commit $COMMIT, load average $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) CPUs"
CMD=("$NOKV_BENCH" txn --coordinator "$COORD" --cluster-id "$CLUSTER_ID" --keys "$KEYS"
    --clients "$CLIENTS" --duration "$DURATION" --warmup "$WARMUP" --ops "$OPS" --zipf "$ZIPF"
    --value-size "$VALUE_SIZE" --max-attempts "$MAX_ATTEMPTS" --json "$WORKDIR/txn.json")
echo "${CMD[*]}" | tee "$WORKDIR/txn.cmd"
# A phase is bounded by --duration and --ops; a stuck cluster still ends here.
timeout 1800 "${CMD[@]}" | tee "$WORKDIR/txn.out" || die "nokv-bench txn failed (exit ${PIPESTATUS[0]})"
stop_cluster

{
    echo
    echo "### nokv-bench txn ($STARTED, commit $COMMIT)"
    echo
    echo '```'
    cat "$WORKDIR/txn.cmd"
    echo '```'
    echo
    grep '^|' "$WORKDIR/txn.out"
} | tee "$WORKDIR/table.md"

if [[ -n ${RESULTS_DIR:-} ]]; then
    mkdir -p "$RESULTS_DIR"
    cp "$WORKDIR"/txn.json "$WORKDIR"/txn.out "$WORKDIR"/txn.cmd "$WORKDIR"/table.md \
        "$WORKDIR"/topology.json "$WORKDIR"/nokv-cluster.out "$RESULTS_DIR"/ 2>/dev/null || true
    echo "== results in $RESULTS_DIR"
fi

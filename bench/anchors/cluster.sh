#!/usr/bin/env bash
# Cluster anchor (issue "Cluster vs etcd"): a 3-store NoKV cluster (deploy/cluster.sh,
# --durability sync) and a 3-member etcd 3.4 cluster (default fsync), both on loopback,
# driven in one run by `nokv-bench cluster` with the same closed-loop clients (100-byte
# values) at 16, 64 and 256 clients: put and get ops/s, p50/p99 latency, NoKV/etcd ratios.
# Then redis-benchmark through the cluster (at the leader of one region) vs a single
# nokv-server (--cores 1, --durability sync): the replication cost as a ratio.
#
#   bash bench/anchors/cluster.sh
#   QUICK=1 bash bench/anchors/cluster.sh      # smoke run (clients 4,16, 2 s phases)
#
# Targets (NoKV / etcd at 256 clients): puts >= 5x with p99 no worse; gets >= 5x.
#
# Environment (defaults in brackets):
#   CLIENTS [16,64,256]   OPS [200000] per phase   DURATION [10] s per phase (cap)
#   WARMUP [1] s per phase   KEYS [10000]   VALUE_SIZE [100]
#   DRIVER [events]       nokv-bench's client driver: events (epoll loops) or threads (a thread per client)
#   DRIVER_THREADS [2]    threads of the events driver (the clients are dealt over them)
#   RB [1]                1 runs the redis-benchmark replication-cost pass
#   RB_N [200000] RB_CLIENTS [50] RB_PIPELINE [16]   redis-benchmark -n/-r, -c, -P
#   SINGLE_CPU [0]        CPU of the single nokv-server
#   WORKDIR [mktemp -d /tmp/nokv-cluster-XXXX]   data dirs and logs; removed at exit
#   KEEP [0]              1 keeps WORKDIR
#   RESULTS_DIR []        if set, the table, the JSON results, the raw outputs and logs go there
#   SKIP_BUILD [0]        1 uses the existing target/release binaries
#   ETCD [etcd]           etcd binary (apt-get install etcd-server when missing)
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/../.." && pwd)
# shellcheck source=bench/anchors/common.sh
source "$SCRIPT_DIR/common.sh"

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
    CLIENTS=${CLIENTS:-4,16} DURATION=${DURATION:-2} OPS=${OPS:-20000} RB_N=${RB_N:-20000}
fi
CLIENTS=${CLIENTS:-16,64,256}
OPS=${OPS:-200000}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-1}
KEYS=${KEYS:-10000}
VALUE_SIZE=${VALUE_SIZE:-100}
DRIVER=${DRIVER:-events}
DRIVER_THREADS=${DRIVER_THREADS:-2}
RB=${RB:-1}
RB_N=${RB_N:-200000}
RB_CLIENTS=${RB_CLIENTS:-50}
RB_PIPELINE=${RB_PIPELINE:-16}
SINGLE_CPU=${SINGLE_CPU:-0}
KEEP=${KEEP:-0}
SKIP_BUILD=${SKIP_BUILD:-0}
ETCD=${ETCD:-etcd}

die() {
    echo "cluster.sh: $*" >&2
    exit 1
}

# --- tools -------------------------------------------------------------------------------
if ! command -v "$ETCD" >/dev/null; then
    echo "== installing etcd-server (etcd 3.4)"
    [[ $(id -u) == 0 ]] || die "etcd missing; run as root or apt-get install etcd-server"
    DEBIAN_FRONTEND=noninteractive apt-get install -y etcd-server >/dev/null ||
        { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y etcd-server >/dev/null; } ||
        die "could not install etcd-server"
    # The package may start a system etcd on 2379; this script starts its own on free ports.
fi
if [[ $RB == 1 ]] && { ! command -v redis-benchmark >/dev/null || ! command -v redis-cli >/dev/null; }; then
    bash "$REPO/scripts/install-test-deps.sh" || die "redis-benchmark/redis-cli missing"
fi
for t in "$ETCD" curl python3 timeout; do
    command -v "$t" >/dev/null || die "'$t' not found"
done
BIN=${CARGO_TARGET_DIR:-$REPO/target}/release
if [[ $SKIP_BUILD != 1 ]]; then
    echo "== cargo build --release (nokv-server, nokv-coordinator, nokv-bench)"
    (cd "$REPO" && cargo build --release --bin nokv-server --bin nokv-coordinator --bin nokv-bench)
fi
for b in nokv-server nokv-coordinator nokv-bench; do
    [[ -x $BIN/$b ]] || die "$BIN/$b not found (build failed or SKIP_BUILD=1 without a build)"
done

WORKDIR=${WORKDIR:-$(mktemp -d /tmp/nokv-cluster-XXXX)}
mkdir -p "$WORKDIR"

PIDS=()
stop_all() {
    local i
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        kill -TERM "${PIDS[i]}" 2>/dev/null || true
    done
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        local w
        for ((w = 0; w < 300; w++)); do
            kill -0 "${PIDS[i]}" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "${PIDS[i]}" 2>/dev/null || true
        wait "${PIDS[i]}" 2>/dev/null || true
    done
    PIDS=()
}
cleanup() {
    stop_all
    if [[ $KEEP == 1 ]]; then
        echo "== kept $WORKDIR"
    else
        rm -rf "$WORKDIR"
    fi
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

# --- etcd: three members on loopback -----------------------------------------------------
ETCD_CLIENT=()
ETCD_PEER=()
for i in 1 2 3; do
    free_port; ETCD_CLIENT+=("$PORT")
    free_port; ETCD_PEER+=("$PORT")
done
INITIAL=""
for i in 0 1 2; do
    INITIAL+="${INITIAL:+,}e$((i + 1))=http://127.0.0.1:${ETCD_PEER[i]}"
done
for i in 0 1 2; do
    n=e$((i + 1))
    "$ETCD" --name "$n" --data-dir "$WORKDIR/etcd-$n" \
        --listen-client-urls "http://127.0.0.1:${ETCD_CLIENT[i]}" \
        --advertise-client-urls "http://127.0.0.1:${ETCD_CLIENT[i]}" \
        --listen-peer-urls "http://127.0.0.1:${ETCD_PEER[i]}" \
        --initial-advertise-peer-urls "http://127.0.0.1:${ETCD_PEER[i]}" \
        --initial-cluster "$INITIAL" --initial-cluster-state new \
        --initial-cluster-token nokv-bench >"$WORKDIR/etcd-$n.log" 2>&1 &
    PIDS+=($!)
    echo "== etcd $n (pid $!, client 127.0.0.1:${ETCD_CLIENT[i]}, peer ${ETCD_PEER[i]})"
done
for i in 0 1 2; do
    ok=0
    for ((w = 0; w < 300; w++)); do
        if curl -sf "http://127.0.0.1:${ETCD_CLIENT[i]}/health" | grep -q '"health":"true"'; then
            ok=1
            break
        fi
        sleep 0.2
    done
    [[ $ok == 1 ]] || die "etcd member $((i + 1)) not healthy in 60 s; see $WORKDIR/etcd-e$((i + 1)).log"
done
ETCD_ADDRS=$(printf '127.0.0.1:%s,' "${ETCD_CLIENT[@]}")
ETCD_ADDRS=${ETCD_ADDRS%,}
echo "== etcd cluster healthy: $ETCD_ADDRS ($("$ETCD" --version | head -1))"

# --- NoKV: deploy/cluster.sh with a topology on free ports -------------------------------
NOKV_REDIS=()
free_port
{
    echo '{ "cluster_id": 1, "coordinators": [ { "addr": "127.0.0.1:'"$PORT"'", "workdir": "coord-1" } ], "stores": ['
    ncpu=$(nproc)
    for i in 1 2 3; do
        free_port; r=$PORT; free_port; rpc=$PORT; free_port; met=$PORT
        NOKV_REDIS+=("127.0.0.1:$r")
        echo "  { \"id\": $i, \"redis_addr\": \"127.0.0.1:$r\", \"rpc_addr\": \"127.0.0.1:$rpc\", \"metrics_addr\": \"127.0.0.1:$met\", \"workdir\": \"store-$i\", \"cores\": 1, \"cpus\": \"$(((i - 1) % ncpu))\" }$([[ $i == 3 ]] || echo ,)"
    done
    echo '] }'
} >"$WORKDIR/topology.json"
# --redirect moved: the client follows -MOVED to each region's leader, like a Redis cluster
# client (forwarding would add a store-to-store hop to two of every three requests).
bash "$REPO/deploy/cluster.sh" --config "$WORKDIR/topology.json" --workdir "$WORKDIR/nokv" \
    --bin-dir "$BIN" --durability sync --redirect moved >"$WORKDIR/nokv-cluster.out" 2>&1 &
CLUSTER_PID=$!
PIDS+=("$CLUSTER_PID")
for ((w = 0; w < 600; w++)); do
    grep -q "is up" "$WORKDIR/nokv-cluster.out" 2>/dev/null && break
    kill -0 "$CLUSTER_PID" 2>/dev/null || { cat "$WORKDIR/nokv-cluster.out" >&2; die "deploy/cluster.sh exited"; }
    sleep 0.2
done
grep -q "is up" "$WORKDIR/nokv-cluster.out" || die "NoKV cluster not up in 120 s; see $WORKDIR/nokv-cluster.out"
NOKV_ADDRS=$(IFS=,; echo "${NOKV_REDIS[*]}")
# CPU per operation: the stores and the coordinator (deploy/cluster.sh's children), the etcd members.
NOKV_PIDS=$(pgrep -P "$CLUSTER_PID" -x 'nokv-server|nokv-coordinator' | paste -sd, -)
ETCD_PIDS=$(IFS=,; echo "${PIDS[*]:0:3}")
echo "== NoKV cluster up: $NOKV_ADDRS (--durability sync; topology $WORKDIR/topology.json)"

# --- the comparison ----------------------------------------------------------------------
echo "== $(date -u '+%Y-%m-%d %H:%M:%S UTC'), load average $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) CPUs"
CMD=("$BIN/nokv-bench" cluster --nokv "$NOKV_ADDRS" --etcd "$ETCD_ADDRS" --clients "$CLIENTS"
    --ops "$OPS" --duration "$DURATION" --warmup "$WARMUP" --keys "$KEYS" --value-size "$VALUE_SIZE"
    --driver "$DRIVER" --driver-threads "$DRIVER_THREADS"
    --json "$WORKDIR/cluster.json" --nokv-pids "$NOKV_PIDS" --etcd-pids "$ETCD_PIDS")
echo "${CMD[*]}" | tee "$WORKDIR/cluster.cmd"
"${CMD[@]}" | tee "$WORKDIR/cluster.out"

# --- redis-benchmark: through the cluster vs one node ------------------------------------
declare -A RPS P50 P99
VALUE=$(head -c "$VALUE_SIZE" /dev/zero | tr '\0' v)
# rbench NAME TEST HOST PORT: one redis-benchmark run of SET or GET on keys "{rb}:N" (one slot,
# so one region: every request goes to that region's leader, no redirection).
rbench() {
    local name=$1 test=$2 host=$3 port=$4 out=$WORKDIR/rb.$1.$2
    local cmd=(redis-benchmark -h "$host" -p "$port" --threads 1 -c "$RB_CLIENTS" -n "$RB_N" -r "$RB_N"
        -P "$RB_PIPELINE" --csv)
    if [[ $test == set ]]; then cmd+=(SET "{rb}:__rand_int__" "$VALUE"); else cmd+=(GET "{rb}:__rand_int__"); fi
    echo "${cmd[*]}" >"$out.cmd"
    timeout 900 "${cmd[@]}" >"$out.csv" 2>"$out.err" || die "redis-benchmark $test against $name failed; see $out.err"
    local line
    line=$(tail -1 "$out.csv" | tr -d '"')
    # "test","rps","avg","min","p50","p95","p99","max" (the test name may hold commas: count from the end)
    R_RPS=$(awk -F, '{print $(NF-6)}' <<<"$line")
    R_P50=$(awk -F, '{print $(NF-3)}' <<<"$line")
    R_P99=$(awk -F, '{print $(NF-1)}' <<<"$line")
    RPS[$name.$test]=$R_RPS P50[$name.$test]=$R_P50 P99[$name.$test]=$R_P99
    printf '   %-8s %-3s %12s ops/s  p50 %s ms  p99 %s ms\n' "$name" "$test" "$R_RPS" "$R_P50" "$R_P99"
}
if [[ $RB == 1 ]]; then
    # The leader of the slot of "{rb}": ask store 1; -MOVED names the leader.
    reply=$(redis-cli -h 127.0.0.1 -p "${NOKV_REDIS[0]##*:}" SET "{rb}:probe" x 2>&1 || true)
    case $reply in
    *MOVED*) LEADER=$(awk '{print $NF}' <<<"$reply") ;;
    OK) LEADER=${NOKV_REDIS[0]} ;;
    *) die "probe SET answered '$reply'" ;;
    esac
    echo "== redis-benchmark -c $RB_CLIENTS -n $RB_N -P $RB_PIPELINE, keys {rb}:N (one region), cluster leader $LEADER"
    for t in set get; do rbench cluster "$t" "${LEADER%:*}" "${LEADER##*:}"; done
    stop_all # the single node gets the machine to itself, as the cluster run had
    free_port; SP=$PORT
    "$BIN/nokv-server" --workdir "$WORKDIR/single" --redis-addr "127.0.0.1:$SP" --cores 1 \
        --cpus "$SINGLE_CPU" --durability sync >"$WORKDIR/single.log" 2>&1 &
    PIDS+=($!)
    for ((w = 0; w < 300; w++)); do
        [[ $(redis-cli -p "$SP" ping 2>/dev/null) == PONG ]] && break
        sleep 0.1
    done
    [[ $(redis-cli -p "$SP" ping 2>/dev/null) == PONG ]] || die "single nokv-server did not start; see $WORKDIR/single.log"
    for t in set get; do rbench single "$t" 127.0.0.1 "$SP"; done
    stop_all
fi

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
{
    echo
    echo "### nokv-bench cluster ($(date -u '+%Y-%m-%d %H:%M UTC'))"
    echo
    echo '```'
    cat "$WORKDIR/cluster.cmd"
    echo '```'
    sed -n '/^| system/,$p' "$WORKDIR/cluster.out" | grep -v '^== results'
    if [[ $RB == 1 ]]; then
        echo
        echo "### redis-benchmark: 3-store cluster (sync, at the region's leader) vs one nokv-server (sync, 1 core)"
        echo
        echo "| op | cluster ops/s | single ops/s | cluster/single | cluster p50/p99 ms | single p50/p99 ms |"
        echo "|---|---:|---:|---:|---:|---:|"
        for t in set get; do
            echo "| ${t^^} | ${RPS[cluster.$t]} | ${RPS[single.$t]} | $(ratio "${RPS[cluster.$t]}" "${RPS[single.$t]}")x |" \
                "${P50[cluster.$t]} / ${P99[cluster.$t]} | ${P50[single.$t]} / ${P99[single.$t]} |"
        done
        echo
        echo "redis-benchmark command: $(cat "$WORKDIR/rb.cluster.set.cmd" | sed "s/ $VALUE/ <${VALUE_SIZE} bytes>/")"
    fi
} | tee "$WORKDIR/table.md"

if [[ -n ${RESULTS_DIR:-} ]]; then
    mkdir -p "$RESULTS_DIR"
    cp "$WORKDIR"/*.log "$WORKDIR"/*.out "$WORKDIR"/*.cmd "$WORKDIR"/*.json "$WORKDIR/table.md" "$RESULTS_DIR"/ 2>/dev/null || true
    cp "$WORKDIR"/rb.* "$RESULTS_DIR"/ 2>/dev/null || true
    cp "$WORKDIR"/nokv/*.log "$RESULTS_DIR"/ 2>/dev/null || true
    echo "== results copied to $RESULTS_DIR"
fi

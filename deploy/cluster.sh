#!/usr/bin/env bash
# Starts a local NoKV cluster from a JSON topology: the coordinator(s), then every store,
# waits until every store knows a leader for its regions (probe reads), prints the redis-cli
# line, and stops everything cleanly on Ctrl-C (SIGINT) or SIGTERM. A process killed
# meanwhile (to try a failover) is reported; the others keep running.
#
#   bash deploy/cluster.sh --config deploy/cluster.example.json [--workdir DIR]
#
# Options:
#   --config FILE   topology (see deploy/cluster.example.json):
#                   cluster_id; coordinators: [{addr, workdir}] (one, or three replicas);
#                   stores: [{id, redis_addr, rpc_addr, metrics_addr, workdir, cores, cpus}]
#                   (a store's id labels it here; the coordinator assigns the store id it
#                   registers under on first start and the workdir keeps it)
#   --workdir DIR   base of relative workdirs in the topology [./cluster-data]
#   --bin-dir DIR   use the binaries in DIR instead of building them (cargo build --release once)
#   --timeout SECS  how long to wait for the cluster to come up [120]
#   --durability M  every store's --durability (sync or relaxed) [the server's default: sync]
#   --redirect M    every store's --redirect: forward (a store runs commands for regions led
#                   elsewhere on the leader) or moved (answers -MOVED, for cluster-aware
#                   clients) [the server's default: forward]
#   --help          this text
#
# Needs python3 (to read the JSON) and bash. Logs go to <workdir>/<name>.log.
set -euo pipefail

usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; }

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
CONFIG=""
BASE="./cluster-data"
BIN_DIR=""
TIMEOUT=120
DURABILITY=""
REDIRECT=""
while [[ $# -gt 0 ]]; do
    case "$1" in
    --config) CONFIG=${2:?--config needs a file}; shift 2 ;;
    --workdir) BASE=${2:?--workdir needs a directory}; shift 2 ;;
    --bin-dir) BIN_DIR=${2:?--bin-dir needs a directory}; shift 2 ;;
    --timeout) TIMEOUT=${2:?--timeout needs seconds}; shift 2 ;;
    --durability) DURABILITY=${2:?--durability needs sync or relaxed}; shift 2 ;;
    --redirect) REDIRECT=${2:?--redirect needs forward or moved}; shift 2 ;;
    --help | -h) usage; exit 0 ;;
    *) echo "cluster.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    esac
done
if [[ -z $CONFIG ]]; then
    echo "cluster.sh: --config FILE is required (try --help)" >&2
    exit 2
fi
if [[ ! -r $CONFIG ]]; then
    echo "cluster.sh: cannot read the topology '$CONFIG'" >&2
    exit 2
fi
if ! [[ $TIMEOUT =~ ^[0-9]+$ ]]; then
    echo "cluster.sh: --timeout must be a number of seconds, got '$TIMEOUT'" >&2
    exit 2
fi
if [[ -n $DURABILITY && $DURABILITY != sync && $DURABILITY != relaxed ]]; then
    echo "cluster.sh: --durability must be sync or relaxed, got '$DURABILITY'" >&2
    exit 2
fi
if [[ -n $REDIRECT && $REDIRECT != forward && $REDIRECT != moved ]]; then
    echo "cluster.sh: --redirect must be forward or moved, got '$REDIRECT'" >&2
    exit 2
fi
if ! command -v python3 > /dev/null; then
    echo "cluster.sh: python3 is needed to read the topology (apt-get install python3)" >&2
    exit 2
fi

# The topology as shell lines: "cluster ID", "coord N ADDR WORKDIR PEERS", "store ID REDIS
# RPC METRICS WORKDIR CORES CPUS"; errors name the field.
TOPOLOGY=$(python3 - "$CONFIG" << 'PY'
import json, sys
path = sys.argv[1]
try:
    t = json.load(open(path))
except Exception as e:
    sys.exit(f"cluster.sh: {path}: not valid JSON: {e}")
def need(obj, key, where, kind=str):
    if key not in obj:
        sys.exit(f"cluster.sh: {path}: {where} has no '{key}'")
    v = obj[key]
    if kind is int and (not isinstance(v, int) or v <= 0):
        sys.exit(f"cluster.sh: {path}: {where}.{key} must be a positive integer, got {v!r}")
    if kind is str and (not isinstance(v, str) or not v or any(c.isspace() for c in v)):
        sys.exit(f"cluster.sh: {path}: {where}.{key} must be a non-empty string without spaces, got {v!r}")
    return v
cid = need(t, "cluster_id", "the topology", int)
coords = t.get("coordinators")
if not isinstance(coords, list) or len(coords) not in (1, 3):
    sys.exit(f"cluster.sh: {path}: 'coordinators' must list one coordinator or three replicas")
stores = t.get("stores")
if not isinstance(stores, list) or len(stores) < 3:
    sys.exit(f"cluster.sh: {path}: 'stores' must list at least three stores (every region has three replicas)")
print("cluster", cid)
addrs = [need(c, "addr", f"coordinators[{i}]") for i, c in enumerate(coords)]
peers = ",".join(addrs) if len(coords) == 3 else "-"
for i, c in enumerate(coords):
    print("coord", i + 1 if len(coords) == 3 else 0, addrs[i], need(c, "workdir", f"coordinators[{i}]"), peers)
seen = set()
for i, s in enumerate(stores):
    w = f"stores[{i}]"
    sid = need(s, "id", w, int)
    if sid in seen:
        sys.exit(f"cluster.sh: {path}: store id {sid} appears twice")
    seen.add(sid)
    print("store", sid, need(s, "redis_addr", w), need(s, "rpc_addr", w), s.get("metrics_addr") or "-",
          need(s, "workdir", w), need(s, "cores", w, int), str(s.get("cpus") or "-"))
PY
)

if [[ -z $BIN_DIR ]]; then
    echo "== building nokv-server and nokv-coordinator (release, once)"
    (cd "$REPO" && cargo build --release --bin nokv-server --bin nokv-coordinator)
    BIN_DIR=$REPO/target/release
fi
for b in nokv-server nokv-coordinator; do
    if [[ ! -x $BIN_DIR/$b ]]; then
        echo "cluster.sh: $BIN_DIR/$b is missing" >&2
        exit 2
    fi
done
mkdir -p "$BASE"
BASE=$(cd "$BASE" && pwd)
dir_of() { if [[ $1 == /* ]]; then echo "$1"; else echo "$BASE/$1"; fi; }

PIDS=()
NAMES=()
stop_all() {
    trap - INT TERM EXIT
    if [[ ${#PIDS[@]} -gt 0 ]]; then
        echo "== stopping"
        # Stores first, then the coordinator(s); each gets SIGTERM and up to 30 s.
        local i
        for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
            kill -TERM "${PIDS[i]}" 2> /dev/null || true
            local waited=0
            while kill -0 "${PIDS[i]}" 2> /dev/null && ((waited < 300)); do
                sleep 0.1
                waited=$((waited + 1))
            done
            if kill -0 "${PIDS[i]}" 2> /dev/null; then
                echo "   ${NAMES[i]} did not stop in 30 s: SIGKILL" >&2
                kill -KILL "${PIDS[i]}" 2> /dev/null || true
            fi
            wait "${PIDS[i]}" 2> /dev/null || true
        done
        echo "== stopped"
    fi
}
trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM
trap 'stop_all' EXIT

# Waits until `path` holds a line matching `pattern` (what a binary prints once it serves).
wait_line() {
    local path=$1 pattern=$2 name=$3 pid=$4 deadline=$((SECONDS + TIMEOUT))
    until grep -q "$pattern" "$path" 2> /dev/null; do
        if ! kill -0 "$pid" 2> /dev/null; then
            echo "cluster.sh: $name exited; the end of its log ($path):" >&2
            tail -n 20 "$path" >&2
            exit 1
        fi
        if ((SECONDS > deadline)); then
            echo "cluster.sh: $name did not come up in $TIMEOUT s; see $path" >&2
            exit 1
        fi
        sleep 0.2
    done
}

CLUSTER_ID=""
COORDS=()
while read -r kind a b c d e f g; do
    case "$kind" in
    cluster) CLUSTER_ID=$a ;;
    coord)
        dir=$(dir_of "$c")
        mkdir -p "$dir"
        args=(--workdir "$dir" --cluster-id "$CLUSTER_ID" --addr "$b")
        if [[ $a != 0 ]]; then args+=(--replica-id "$a" --peers "$d"); fi
        log=$BASE/coordinator-$((${#COORDS[@]} + 1)).log
        "$BIN_DIR/nokv-coordinator" "${args[@]}" > "$log" 2>&1 &
        PIDS+=($!)
        NAMES+=("coordinator $b")
        COORDS+=("$b")
        echo "== coordinator $b (pid $!, log $log)"
        ;;
    esac
done <<< "$TOPOLOGY"
for i in "${!COORDS[@]}"; do
    wait_line "$BASE/coordinator-$((i + 1)).log" "listening on" "coordinator ${COORDS[i]}" "${PIDS[i]}"
done
COORD_LIST=$(IFS=,; echo "${COORDS[*]}")

FIRST_REDIS=""
STORE_LOGS=()
while read -r kind id redis rpc metrics wd cores cpus; do
    [[ $kind == store ]] || continue
    dir=$(dir_of "$wd")
    mkdir -p "$dir"
    args=(--workdir "$dir" --redis-addr "$redis" --rpc-addr "$rpc" --cluster-id "$CLUSTER_ID"
        --coordinator "$COORD_LIST" --cores "$cores")
    if [[ $metrics != - ]]; then args+=(--metrics-addr "$metrics"); fi
    if [[ $cpus != - ]]; then args+=(--cpus "$cpus"); fi
    if [[ -n $DURABILITY ]]; then args+=(--durability "$DURABILITY"); fi
    if [[ -n $REDIRECT ]]; then args+=(--redirect "$REDIRECT"); fi
    log=$BASE/store-$id.log
    "$BIN_DIR/nokv-server" "${args[@]}" > "$log" 2>&1 &
    PIDS+=($!)
    NAMES+=("store $id")
    STORE_LOGS+=("$log|$!|store $id|$redis")
    echo "== store $id on $redis (rpc $rpc, pid $!, log $log)"
    [[ -n $FIRST_REDIS ]] || FIRST_REDIS=$redis
done <<< "$TOPOLOGY"
for s in "${STORE_LOGS[@]}"; do
    IFS='|' read -r log pid name redis <<< "$s"
    wait_line "$log" "listening on" "$name" "$pid"
done

# Healthy: every store answers a GET of 64 probe keys (spread over the hash slots, so
# over the regions; a leader's read is a ReadIndex round) with a value or -MOVED (a
# leader is known), not -TRYAGAIN or another error.
# PROBE_LAST keeps what the last failed probe saw, for the message when the wait times out.
# The probe runs in a subshell that ignores SIGPIPE: a store that closes the connection
# makes a write fail (and the probe retry) rather than kill this script.
PROBE_LAST="no probe yet"
probe() { # host port -> 0 when every probe key has a leader
    local out
    out=$(
        trap '' PIPE
        { exec 3<> "/dev/tcp/$1/$2"; } 2> /dev/null || { echo "cannot connect to $1:$2"; exit 1; }
        for k in $(seq 1 64); do
            printf '*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n' "$((11 + ${#k}))" "nokv-probe:$k" >&3 ||
                { echo "the connection to $1:$2 was closed"; exit 1; }
        done
        for k in $(seq 1 64); do
            IFS= read -r -t 5 line <&3 || { echo "no reply to GET nokv-probe:$k in 5 s"; exit 1; }
            case "$line" in
            '$-1'* | -MOVED*) ;;
            '$'*) IFS= read -r -t 5 line <&3 || { echo "no value for GET nokv-probe:$k in 5 s"; exit 1; } ;;
            *) echo "GET nokv-probe:$k: ${line%$'\r'}"; exit 1 ;;
            esac
        done
    ) && return 0
    PROBE_LAST=$out
    return 1
}
deadline=$((SECONDS + TIMEOUT))
for s in "${STORE_LOGS[@]}"; do
    IFS='|' read -r log pid name redis <<< "$s"
    until probe "${redis%:*}" "${redis##*:}"; do
        if ! kill -0 "$pid" 2> /dev/null; then
            echo "cluster.sh: $name exited; the end of its log ($log):" >&2
            tail -n 20 "$log" >&2
            exit 1
        fi
        if ((SECONDS > deadline)); then
            echo "cluster.sh: $name has regions without a leader after $TIMEOUT s (last probe: $PROBE_LAST); the end of its log ($log):" >&2
            tail -n 20 "$log" >&2
            exit 1
        fi
        sleep 0.5
    done
done
echo "== cluster $CLUSTER_ID is up: ${#STORE_LOGS[@]} stores, coordinator(s) $COORD_LIST"
echo "   redis-cli -c -h ${FIRST_REDIS%:*} -p ${FIRST_REDIS##*:}"
echo "   (Ctrl-C stops everything)"
# Stays up until a signal. A process that exits on its own (or is killed to try a
# failover) is reported once; the others keep running; once none is left, the script ends.
declare -A GONE=()
while true; do
    alive=0
    for i in "${!PIDS[@]}"; do
        if kill -0 "${PIDS[i]}" 2> /dev/null; then
            alive=$((alive + 1))
        elif [[ -z ${GONE[$i]:-} ]]; then
            GONE[$i]=1
            echo "cluster.sh: ${NAMES[i]} exited (pid ${PIDS[i]}); the others keep running" >&2
        fi
    done
    if ((alive == 0)); then
        echo "cluster.sh: every process has exited" >&2
        exit 1
    fi
    sleep 1
done

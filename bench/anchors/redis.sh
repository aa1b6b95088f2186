#!/usr/bin/env bash
# Redis anchor (issue "A single node"): the same redis-benchmark run, on the same machine,
# against nokv-server on one core (durability relaxed, then sync) and against redis-server
# on one core (appendonly yes, appendfsync everysec), then a Markdown table of ops/s,
# NoKV/redis-server ratios, p50/p99 latency, server CPU microseconds per operation and RSS.
#
#   bash bench/anchors/redis.sh              # N=1000000
#   QUICK=1 bash bench/anchors/redis.sh      # smoke run, N=100000
#
# Fair per core: every server is pinned to SERVER_CPU (nokv-server --cores 1 --cpus
# SERVER_CPU; taskset -c SERVER_CPU redis-server), the client to CLIENT_CPU
# (taskset -c CLIENT_CPU redis-benchmark --threads 1). The main rows use -P PIPELINE;
# a second pass with -P 1 is client-bound and reported only (no targets).
# Targets (NoKV / redis-server): GET >= 0.8x; SET >= 0.7x relaxed; SET >= 0.5x sync.
#
# Environment (defaults in brackets):
#   N [1000000, QUICK: 100000]   requests per test (-n) and key space (-r)
#   CLIENTS [50] DATA_SIZE [100] PIPELINE [16]   redis-benchmark -c, -d, -P
#   SERVER_CPU [0] CLIENT_CPU [1]
#   P1 [1]                       1 also runs the -P 1 pass
#   P1_N [N]                     requests per test (-n, -r) of the -P 1 pass
#   BENCH_TIMEOUT [900]          seconds one redis-benchmark test may take
#   RSS_KEYS [0]                 >0 also loads exactly this many distinct keys (DATA_SIZE-byte
#                                values, through redis-cli --pipe) into a fresh redis-server and a
#                                fresh nokv-server (relaxed) and reports RSS at equal DBSIZE
#                                (the issue asks for 10000000)
#   THROUGHPUT [1]               0 skips the redis-benchmark passes (an RSS-only run)
#   WORKDIR [mktemp -d /tmp/nokv-redis-XXXX]   data dirs and raw outputs; removed at exit
#   KEEP [0]                     1 keeps WORKDIR
#   RESULTS_DIR []               if set, raw outputs (*.csv, *.err, *.log, *.cmd) and the table are copied there
#   SKIP_BUILD [0]               1 uses an existing target/release/nokv-server
#   NOKV_SERVER []               path to a built nokv-server (skips the build)
#   REDIS_SERVER [redis-server] REDIS_BENCHMARK [redis-benchmark] REDIS_CLI [redis-cli]
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/../.." && pwd)
# shellcheck source=bench/anchors/common.sh
source "$SCRIPT_DIR/common.sh"

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then N=${N:-100000}; else N=${N:-1000000}; fi
CLIENTS=${CLIENTS:-50}
DATA_SIZE=${DATA_SIZE:-100}
PIPELINE=${PIPELINE:-16}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
P1=${P1:-1}
P1_N=${P1_N:-$N}
RSS_KEYS=${RSS_KEYS:-0}
THROUGHPUT=${THROUGHPUT:-1}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-900}
KEEP=${KEEP:-0}
SKIP_BUILD=${SKIP_BUILD:-0}
REDIS_SERVER=${REDIS_SERVER:-redis-server}
REDIS_BENCHMARK=${REDIS_BENCHMARK:-redis-benchmark}
REDIS_CLI=${REDIS_CLI:-redis-cli}

die() {
    echo "redis.sh: $*" >&2
    exit 1
}

for v in N P1_N CLIENTS DATA_SIZE PIPELINE BENCH_TIMEOUT; do
    if ! [[ ${!v} =~ ^[0-9]+$ ]] || [[ ${!v} == 0 ]]; then
        echo "redis.sh: $v must be a positive integer, got '${!v}'" >&2
        exit 2
    fi
done
[[ $RSS_KEYS =~ ^[0-9]+$ ]] || die "RSS_KEYS must be a number, got '$RSS_KEYS'"
for v in SERVER_CPU CLIENT_CPU; do
    if ! [[ ${!v} =~ ^[0-9]+$ ]]; then
        echo "redis.sh: $v must be a CPU number, got '${!v}'" >&2
        exit 2
    fi
done
[[ $SERVER_CPU != "$CLIENT_CPU" ]] || die "SERVER_CPU and CLIENT_CPU must differ (both $SERVER_CPU)"
ncpu=$(nproc --all)
((SERVER_CPU < ncpu && CLIENT_CPU < ncpu)) || die "SERVER_CPU/CLIENT_CPU must be < $ncpu (CPUs on this machine)"

# --- tools -------------------------------------------------------------------------------
if ! command -v "$REDIS_SERVER" >/dev/null || ! command -v "$REDIS_BENCHMARK" >/dev/null ||
    ! command -v "$REDIS_CLI" >/dev/null; then
    echo "== installing redis-server redis-tools"
    bash "$REPO/scripts/install-test-deps.sh" ||
        die "redis-server/redis-benchmark/redis-cli missing and could not be installed (apt-get install redis-server redis-tools)"
fi
for t in "$REDIS_SERVER" "$REDIS_BENCHMARK" "$REDIS_CLI" taskset timeout; do
    command -v "$t" >/dev/null || die "'$t' not found"
done
if [[ -z ${NOKV_SERVER:-} ]]; then
    NOKV_SERVER=${CARGO_TARGET_DIR:-$REPO/target}/release/nokv-server
    if [[ $SKIP_BUILD != 1 ]]; then
        echo "== cargo build --release --bin nokv-server"
        (cd "$REPO" && cargo build --release --bin nokv-server)
    fi
fi
[[ -x $NOKV_SERVER ]] || die "$NOKV_SERVER not found (build failed or SKIP_BUILD=1 without a build)"

WORKDIR=${WORKDIR:-$(mktemp -d /tmp/nokv-redis-XXXX)}
mkdir -p "$WORKDIR"
CLK_TCK=$(getconf CLK_TCK)

SERVER_PID=
stop_server() {
    if [[ -n $SERVER_PID ]]; then
        kill "$SERVER_PID" 2>/dev/null || true
        local i
        for ((i = 0; i < 100; i++)); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=
    fi
}
cleanup() {
    stop_server
    if [[ $KEEP == 1 ]]; then
        echo "== kept $WORKDIR"
    else
        rm -rf "$WORKDIR"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A free loopback port: nothing answers a connect on it (bounded scan).
free_port() {
    local p i
    for ((i = 0; i < 200; i++)); do
        p=$(port_candidate)
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    die "no free port on 127.0.0.1 after 200 tries"
}

# wait_ready PORT NAME: PING answered within 30 s, the server still alive.
wait_ready() {
    local port=$1 name=$2 i
    for ((i = 0; i < 300; i++)); do
        kill -0 "$SERVER_PID" 2>/dev/null || die "$name exited at start; see $WORKDIR/$name.log"
        if [[ $("$REDIS_CLI" -h 127.0.0.1 -p "$port" ping 2>/dev/null) == PONG ]]; then
            return 0
        fi
        sleep 0.1
    done
    die "$name did not answer PING on 127.0.0.1:$port within 30 s; see $WORKDIR/$name.log"
}

# utime+stime of a process (all its threads), in clock ticks.
cpu_ticks() {
    local stat
    stat=$(cat "/proc/$1/stat") || die "process $1 gone"
    stat=${stat##*) }    # fields after "(comm) ": state is field 3, utime 14, stime 15
    set -- $stat
    echo $((${12} + ${13}))
}
rss_mib() {
    awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"
}

# bench NAME TEST PIPE PORT: one redis-benchmark test; leaves rps p50 p99 cpu_us_per_op in R_*.
bench() {
    local name=$1 test=$2 pipe=$3 port=$4 out=$WORKDIR/$1.P$3.$2 n=$N
    [[ $pipe == "$PIPELINE" ]] || n=$P1_N
    local cmd=(taskset -c "$CLIENT_CPU" "$REDIS_BENCHMARK" -h 127.0.0.1 -p "$port" --threads 1
        -c "$CLIENTS" -n "$n" -r "$n" -d "$DATA_SIZE" -P "$pipe" -t "$test" --csv)
    echo "${cmd[*]}" >"$out.cmd"
    local t0 t1
    t0=$(cpu_ticks "$SERVER_PID")
    if ! timeout "$BENCH_TIMEOUT" "${cmd[@]}" >"$out.csv" 2>"$out.err"; then
        die "redis-benchmark $test -P $pipe against $name failed or took over ${BENCH_TIMEOUT}s; see $out.err"
    fi
    t1=$(cpu_ticks "$SERVER_PID")
    # --csv: "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
    local line
    line=$(grep -i "^\"$test\"" "$out.csv" | tail -1 | tr -d '"') ||
        die "no $test line in $out.csv (redis-benchmark output changed?)"
    IFS=, read -r _ R_RPS _ _ R_P50 _ R_P99 _ <<<"$line"
    R_CPU=$(awk -v t=$((t1 - t0)) -v hz="$CLK_TCK" -v n="$n" 'BEGIN { printf "%.2f", t * 1e6 / hz / n }')
    printf '   %-22s %-3s -P %-2s %12s ops/s  p50 %s ms  p99 %s ms  cpu %s us/op\n' \
        "$name" "$test" "$pipe" "$R_RPS" "$R_P50" "$R_P99" "$R_CPU"
}

# run_server NAME: start it (sets SERVER_PID, PORT), run SET then GET at -P PIPELINE and
# (P1=1) at -P 1, record results in the assoc arrays, stop it.
declare -A RPS P50 P99 CPU RSS
# start_server NAME: a fresh data dir, the server started and answering (SERVER_PID, PORT).
start_server() {
    local name=$1
    PORT=$(free_port) || exit 1
    local port=$PORT
    local dir=$WORKDIR/$name-data
    rm -rf "$dir" && mkdir -p "$dir"
    case $name in
    redis-server)
        taskset -c "$SERVER_CPU" "$REDIS_SERVER" --port "$port" --bind 127.0.0.1 --dir "$dir" \
            --save '' --appendonly yes --appendfsync everysec --daemonize no \
            --protected-mode yes >"$WORKDIR/$name.log" 2>&1 &
        ;;
    nokv-relaxed | nokv-sync)
        "$NOKV_SERVER" --workdir "$dir" --redis-addr "127.0.0.1:$port" --cores 1 \
            --cpus "$SERVER_CPU" --durability "${name#nokv-}" >"$WORKDIR/$name.log" 2>&1 &
        ;;
    esac
    SERVER_PID=$!
    wait_ready "$port" "$name"
    echo "== $name (pid $SERVER_PID, 127.0.0.1:$port)"
}

run_server() {
    local name=$1
    start_server "$name"
    local port=$PORT
    local pipes=("$PIPELINE") p t
    [[ $P1 == 1 && $PIPELINE != 1 ]] && pipes+=(1)
    for p in "${pipes[@]}"; do
        for t in set get; do
            bench "$name" "$t" "$p" "$port"
            RPS[$name.$p.$t]=$R_RPS P50[$name.$p.$t]=$R_P50 P99[$name.$p.$t]=$R_P99 CPU[$name.$p.$t]=$R_CPU
            if [[ $t == set && $p == "$PIPELINE" ]]; then RSS[$name]=$(rss_mib "$SERVER_PID"); fi
        done
    done
    stop_server
}

echo "== N=$N clients=$CLIENTS data=$DATA_SIZE pipeline=$PIPELINE server cpu $SERVER_CPU, client cpu $CLIENT_CPU"
echo "== $("$REDIS_SERVER" --version | cut -c1-60); nokv-server $NOKV_SERVER; workdir $WORKDIR"
SERVERS=(redis-server nokv-relaxed nokv-sync)
if [[ $THROUGHPUT == 1 ]]; then
    for s in "${SERVERS[@]}"; do run_server "$s"; done
fi

# RSS at equal DBSIZE: RSS_KEYS distinct keys loaded through redis-cli --pipe.
declare -A LOAD_RSS LOAD_SECS
if ((RSS_KEYS > 0)); then
    RSS_SERVERS=(redis-server nokv-relaxed)
    for s in "${RSS_SERVERS[@]}"; do
        start_server "$s"
        t0=$(date +%s.%N)
        awk -v n="$RSS_KEYS" -v d="$DATA_SIZE" 'BEGIN {
            v = sprintf("%0" d "d", 0); gsub(/0/, "x", v)
            for (i = 0; i < n; i++) {
                k = sprintf("key:%012d", i)
                printf "*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n", length(k), k, d, v
            }
        }' | timeout "$BENCH_TIMEOUT" taskset -c "$CLIENT_CPU" "$REDIS_CLI" -h 127.0.0.1 -p "$PORT" --pipe \
            >"$WORKDIR/$s.load.out" 2>&1 || die "loading $RSS_KEYS keys into $s failed; see $WORKDIR/$s.load.out"
        t1=$(date +%s.%N)
        size=$("$REDIS_CLI" -h 127.0.0.1 -p "$PORT" dbsize)
        [[ $size == "$RSS_KEYS" ]] || die "$s: DBSIZE $size after loading $RSS_KEYS keys"
        LOAD_RSS[$s]=$(rss_mib "$SERVER_PID")
        LOAD_SECS[$s]=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
        echo "   $s: DBSIZE $size, RSS ${LOAD_RSS[$s]} MiB, load ${LOAD_SECS[$s]} s"
        stop_server
    done
fi

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
verdict() { awk -v r="$1" -v t="$2" 'BEGIN { print (r >= t) ? "met" : "MISSED" }'; }

table() {
    local p=$1 s mode set_r get_r
    echo "| server | mode | SET ops/s | GET ops/s | SET x redis | GET x redis | SET p50/p99 ms | GET p50/p99 ms | SET CPU us/op | GET CPU us/op | RSS MiB |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for s in "${SERVERS[@]}"; do
        case $s in
        redis-server) mode="AOF everysec" ;;
        nokv-relaxed) mode="--durability relaxed" ;;
        nokv-sync) mode="--durability sync" ;;
        esac
        set_r=$(ratio "${RPS[$s.$p.set]}" "${RPS[redis-server.$p.set]}")
        get_r=$(ratio "${RPS[$s.$p.get]}" "${RPS[redis-server.$p.get]}")
        echo "| ${s%%-*} | $mode | ${RPS[$s.$p.set]} | ${RPS[$s.$p.get]} | $set_r | $get_r |" \
            "${P50[$s.$p.set]} / ${P99[$s.$p.set]} | ${P50[$s.$p.get]} / ${P99[$s.$p.get]} |" \
            "${CPU[$s.$p.set]} | ${CPU[$s.$p.get]} | $([[ $p == "$PIPELINE" ]] && echo "${RSS[$s]}" || echo "-") |"
    done
}

{
    if [[ $THROUGHPUT == 1 ]]; then
    echo
    echo "### redis-benchmark -P $PIPELINE (N=$N, -c $CLIENTS, -d $DATA_SIZE, server on CPU $SERVER_CPU, client on CPU $CLIENT_CPU)"
    echo
    table "$PIPELINE"
    echo
    echo "Targets (NoKV / redis-server at -P $PIPELINE): GET >= 0.8x; SET >= 0.7x relaxed; SET >= 0.5x sync."
    echo
    for s in nokv-relaxed nokv-sync; do
        get_r=$(ratio "${RPS[$s.$PIPELINE.get]}" "${RPS[redis-server.$PIPELINE.get]}")
        set_r=$(ratio "${RPS[$s.$PIPELINE.set]}" "${RPS[redis-server.$PIPELINE.set]}")
        if [[ $s == nokv-relaxed ]]; then st=0.7; else st=0.5; fi
        echo "- $s: GET ${get_r}x (>= 0.8: $(verdict "$get_r" 0.8)), SET ${set_r}x (>= $st: $(verdict "$set_r" $st))"
    done
    if [[ $P1 == 1 && $PIPELINE != 1 ]]; then
        echo
        echo "### redis-benchmark -P 1 (N=$P1_N; client-bound; report only)"
        echo
        table 1
    fi
    fi
    if ((RSS_KEYS > 0)); then
        echo
        echo "### RSS at equal DBSIZE ($RSS_KEYS keys, $DATA_SIZE-byte values, loaded with redis-cli --pipe)"
        echo
        echo "| server | mode | DBSIZE | RSS MiB | RSS x redis | load s |"
        echo "|---|---|---:|---:|---:|---:|"
        for s in "${RSS_SERVERS[@]}"; do
            case $s in
            redis-server) mode="AOF everysec" ;;
            *) mode="--durability relaxed" ;;
            esac
            echo "| ${s%%-*} | $mode | $RSS_KEYS | ${LOAD_RSS[$s]} | $(ratio "${LOAD_RSS[$s]}" "${LOAD_RSS[redis-server]}") | ${LOAD_SECS[$s]} |"
        done
    fi
} | tee "$WORKDIR/table.md"

if [[ -n ${RESULTS_DIR:-} ]]; then
    mkdir -p "$RESULTS_DIR"
    cp "$WORKDIR"/*.log "$WORKDIR/table.md" "$RESULTS_DIR"/
    cp "$WORKDIR"/*.csv "$WORKDIR"/*.err "$WORKDIR"/*.cmd "$WORKDIR"/*.out "$RESULTS_DIR"/ 2>/dev/null || true
    echo "== raw outputs and table copied to $RESULTS_DIR"
fi

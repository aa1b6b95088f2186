#!/usr/bin/env bash
# fjall anchor: runs `nokv-bench ycsb` (YCSB core workloads A-F) against NoKV and the fjall
# crate in one process with identical settings, then prints a markdown table of ops/s,
# the NoKV/fjall ratio and p99 latency per workload.
#
#   bash bench/anchors/ycsb.sh             # RECORDS=1000000 OPERATIONS=1000000 THREADS=2
#   QUICK=1 bash bench/anchors/ycsb.sh     # smoke run, RECORDS=100000 OPERATIONS=100000
#
# Environment (defaults in brackets):
#   RECORDS [1000000, QUICK: 100000]     records loaded before the workloads
#   OPERATIONS [1000000, QUICK: 100000]  operations of each workload
#   THREADS [2]                          client threads (the machine has 2 cores)
#   WORKLOADS [A,B,C,F,D,E]              run in this order on the loaded data
#   VALUE_SIZE [1000]                    one field (YCSB's default record is 10 x 100 bytes)
#   DISTRIBUTION [zipfian]  ZIPF_THETA [0.99]  MAX_SCAN_LEN [100]
#   CACHE_BYTES [67108864] WRITE_BUFFER_BYTES [67108864]  both engines
#   SYNC [0]                             1: every write waits for fdatasync
#   SEED [42]
#   WORKDIR [mktemp -d /tmp/nokv-ycsb-XXXX]  databases and logs; removed at exit
#   KEEP [0]                             1 keeps WORKDIR (the raw log)
#   RESULTS_DIR []                       if set, the raw log, the table and ycsb.svg are copied there
#   SKIP_BUILD [0]                       1 uses an existing target/release/nokv-bench
#   NOKV_BENCH []                        path to a built nokv-bench (skips the build)
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/../.." && pwd)

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
    RECORDS=${RECORDS:-100000}
    OPERATIONS=${OPERATIONS:-100000}
else
    RECORDS=${RECORDS:-1000000}
    OPERATIONS=${OPERATIONS:-1000000}
fi
THREADS=${THREADS:-2}
WORKLOADS=${WORKLOADS:-A,B,C,F,D,E}
VALUE_SIZE=${VALUE_SIZE:-1000}
DISTRIBUTION=${DISTRIBUTION:-zipfian}
ZIPF_THETA=${ZIPF_THETA:-0.99}
MAX_SCAN_LEN=${MAX_SCAN_LEN:-100}
CACHE_BYTES=${CACHE_BYTES:-67108864}
WRITE_BUFFER_BYTES=${WRITE_BUFFER_BYTES:-67108864}
SYNC=${SYNC:-0}
SEED=${SEED:-42}
KEEP=${KEEP:-0}
SKIP_BUILD=${SKIP_BUILD:-0}

for v in RECORDS OPERATIONS THREADS VALUE_SIZE MAX_SCAN_LEN CACHE_BYTES WRITE_BUFFER_BYTES SEED; do
    if ! [[ ${!v} =~ ^[0-9]+$ ]]; then
        echo "ycsb.sh: $v must be a non-negative integer, got '${!v}'" >&2
        exit 2
    fi
done

# shellcheck source=bench/anchors/common.sh
source "$SCRIPT_DIR/common.sh"
anchor_setup ycsb.sh nokv-ycsb
LOG=$WORKDIR/ycsb.out

CMD=("$NOKV_BENCH" ycsb --engines nokv,fjall --workloads "$WORKLOADS"
    --records "$RECORDS" --operations "$OPERATIONS" --threads "$THREADS"
    --value-size "$VALUE_SIZE" --dir "$WORKDIR/db" --distribution "$DISTRIBUTION"
    --zipf-theta "$ZIPF_THETA" --cache-bytes "$CACHE_BYTES"
    --write-buffer-bytes "$WRITE_BUFFER_BYTES" --seed "$SEED" --max-scan-len "$MAX_SCAN_LEN")
if [[ $SYNC == 1 ]]; then
    CMD+=(--sync)
fi
echo "== $(printf '%q ' "${CMD[@]}")"
if ! "${CMD[@]}" | tee "$LOG"; then
    echo "ycsb.sh: nokv-bench ycsb failed" >&2
    exit 1
fi

# value ENGINE WORKLOAD KEY: one key=value field of a result line, or "-".
value() {
    awk -v e="$1" -v w="$2" -v k="$3" '
        $1 == "ycsb" && $2 == "engine=" e && $3 == "workload=" w {
            for (i = 4; i <= NF; i++) { split($i, kv, "="); if (kv[1] == k) v = kv[2] }
        }
        END { print (v == "" ? "-" : v) }' "$LOG"
}

ratio() {
    awk -v w="$1" '$1 == "ycsb" && $2 == "ratio" && $3 == "workload=" w {
            split($4, kv, "="); v = kv[2] }
        END { print (v == "" ? "-" : v) }' "$LOG"
}

TABLE=$WORKDIR/table.md
{
    echo "| workload | NoKV ops/s | fjall ops/s | NoKV/fjall | NoKV p50 us | fjall p50 us | NoKV p99 us | fjall p99 us |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    for wl in load ${WORKLOADS//,/ }; do
        wl=${wl^^}
        [[ $wl == LOAD ]] && wl=load
        echo "| $wl | $(value nokv "$wl" ops_per_sec) | $(value fjall "$wl" ops_per_sec) | $(ratio "$wl") |" \
            "$(value nokv "$wl" p50_us) | $(value fjall "$wl" p50_us) |" \
            "$(value nokv "$wl" p99_us) | $(value fjall "$wl" p99_us) |"
    done
} >"$TABLE"

echo
echo "== results ($(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) cores; RECORDS=$RECORDS" \
    "OPERATIONS=$OPERATIONS THREADS=$THREADS VALUE_SIZE=$VALUE_SIZE $DISTRIBUTION" \
    "theta=$ZIPF_THETA SYNC=$SYNC QUICK=$QUICK)"
cat "$TABLE"
echo
echo "load = the insert phase (before settling); A-F run on the same data in the order shown."

SVG=$WORKDIR/ycsb.svg
if ! "$NOKV_BENCH" plot ycsb --input "$LOG" --out "$SVG" \
    --title "YCSB: NoKV vs fjall ($RECORDS records, $OPERATIONS ops, $THREADS threads)"; then
    echo "ycsb.sh: nokv-bench plot failed; no chart" >&2
    SVG=
fi

if [[ -n ${RESULTS_DIR:-} ]]; then
    mkdir -p "$RESULTS_DIR"
    cp "$LOG" "$TABLE" ${SVG:+"$SVG"} "$RESULTS_DIR"/
    echo "== raw log, table${SVG:+ and chart} copied to $RESULTS_DIR"
    if [[ -n $SVG ]]; then
        echo "== chart: $RESULTS_DIR/ycsb.svg"
    fi
elif [[ -n $SVG ]]; then
    echo "== chart: $SVG$([[ $KEEP == 1 ]] || echo ' (removed at exit; set KEEP=1 or RESULTS_DIR to keep it)')"
fi

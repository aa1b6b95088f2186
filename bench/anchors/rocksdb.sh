#!/usr/bin/env bash
# RocksDB anchor: runs RocksDB's db_bench and `nokv-bench dbbench` with the same pinned
# settings (same flags, same seed, so the same key sequences), then prints a table of
# ops/sec, NoKV/RocksDB ratios, write amplification and peak RSS.
#
#   bash bench/anchors/rocksdb.sh            # NUM=1000000 KEY_SIZE=16 VALUE_SIZE=1000
#   QUICK=1 bash bench/anchors/rocksdb.sh    # smoke run, NUM=50000
#   MODE=large bash bench/anchors/rocksdb.sh # 8 KiB values: fillrandom + overwrite against
#                                            # RocksDB with and without blob files, space at the end
#
# Default mode runs fillrandom, overwrite, readrandom, readrandomwriterandom at 50% and 95%
# reads, seekrandom, and a sync=1 multi-threaded fillrandom.
#
# Environment (defaults in brackets):
#   NUM [1000000, QUICK: 50000]   keys in the key space; per-thread writes of write runs
#   KEY_SIZE [16] VALUE_SIZE [1000]
#   SYNC_NUM [NUM/10]             per-thread writes of the sync=1 threads=16 fillrandom run
#   SYNC_THREADS [16]
#   CACHE_SIZE [67108864]         block cache bytes, both engines
#   WRITE_BUFFER_SIZE [67108864]  memtable bytes, both engines
#   SEEK_NEXTS [10]               nexts after each seek in seekrandom
#   SEED [42]                     key generator seed (workload i uses SEED+i), both tools
#   WORKDIR [mktemp -d /tmp/nokv-bench-XXXX]  databases and logs; removed at exit
#   KEEP [0]                      1 keeps WORKDIR (databases and raw logs)
#   RESULTS_DIR []                if set, raw logs, the table and dbbench.svg are copied there
#   DB_BENCH []                   path to db_bench (found or installed otherwise)
#   SKIP_BUILD [0]                1 uses an existing target/release/nokv-bench
#   NOKV_BENCH []                 path to a built nokv-bench (skips the build)
#   NOKV_BENCH_FLAGS []           extra nokv-bench flags (e.g. --engine=mem to test this script)
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/../.." && pwd)

QUICK=${QUICK:-0}
MODE=${MODE:-default}
case $MODE in
default | large) ;;
*)
    echo "rocksdb.sh: MODE must be 'default' or 'large', got '$MODE'" >&2
    exit 2
    ;;
esac
if [[ $MODE == large ]]; then
    # 8 KiB values: 200k keys = 1.6 GB of live data.
    if [[ $QUICK == 1 ]]; then NUM=${NUM:-20000}; else NUM=${NUM:-200000}; fi
    VALUE_SIZE=${VALUE_SIZE:-8192}
elif [[ $QUICK == 1 ]]; then
    NUM=${NUM:-50000}
else
    NUM=${NUM:-1000000}
fi
KEY_SIZE=${KEY_SIZE:-16}
VALUE_SIZE=${VALUE_SIZE:-1000}
# RocksDB's integrated BlobDB, for MODE=large (values >= MIN_BLOB_SIZE go to blob files).
MIN_BLOB_SIZE=${MIN_BLOB_SIZE:-2048}
SYNC_THREADS=${SYNC_THREADS:-16}
SYNC_NUM=${SYNC_NUM:-$((NUM / 10))}
CACHE_SIZE=${CACHE_SIZE:-67108864}
WRITE_BUFFER_SIZE=${WRITE_BUFFER_SIZE:-67108864}
SEEK_NEXTS=${SEEK_NEXTS:-10}
SEED=${SEED:-42}
KEEP=${KEEP:-0}
SKIP_BUILD=${SKIP_BUILD:-0}
BLOOM_BITS=10

for v in NUM KEY_SIZE VALUE_SIZE SYNC_THREADS SYNC_NUM CACHE_SIZE WRITE_BUFFER_SIZE SEEK_NEXTS SEED; do
    if ! [[ ${!v} =~ ^[0-9]+$ ]] || [[ ${!v} == 0 && $v != SEEK_NEXTS ]]; then
        echo "rocksdb.sh: $v must be a positive integer, got '${!v}'" >&2
        exit 2
    fi
done

as_root() {
    if [[ $(id -u) == 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        echo "rocksdb.sh: need root to run: $*" >&2
        return 1
    fi
}

apt_install() {
    echo "== installing Debian packages: $*"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# --- tools ------------------------------------------------------------------------------

find_db_bench() {
    local c
    for c in db_bench rocksdb_db_bench; do
        if command -v "$c" >/dev/null; then
            command -v "$c"
            return 0
        fi
    done
    if dpkg -L rocksdb-tools >/dev/null 2>&1; then
        dpkg -L rocksdb-tools | grep -E '/(rocksdb_)?db_bench$' | head -n1
        return 0
    fi
    return 1
}

DB_BENCH=${DB_BENCH:-$(find_db_bench || true)}
if [[ -z $DB_BENCH ]]; then
    apt_install rocksdb-tools
    DB_BENCH=$(find_db_bench || true)
fi
if [[ -z $DB_BENCH || ! -x $DB_BENCH ]]; then
    echo "rocksdb.sh: no db_bench after installing rocksdb-tools" >&2
    exit 1
fi
if [[ ! -x /usr/bin/time ]]; then
    apt_install time
fi

# shellcheck source=bench/anchors/common.sh
source "$SCRIPT_DIR/common.sh"
anchor_setup rocksdb.sh nokv-bench
read -r -a NOKV_EXTRA <<<"${NOKV_BENCH_FLAGS:-}"
mkdir -p "$WORKDIR/logs"
LOGS=$WORKDIR/logs

# --- pinned settings --------------------------------------------------------------------

# Flags both tools understand, with the same meaning.
COMMON=(
    --num="$NUM" --key_size="$KEY_SIZE" --value_size="$VALUE_SIZE"
    --cache_size="$CACHE_SIZE" --write_buffer_size="$WRITE_BUFFER_SIZE"
    --bloom_bits="$BLOOM_BITS" --compression_type=none --compression_ratio=1.0
    --seek_nexts="$SEEK_NEXTS" --statistics=1
)
# RocksDB options pinned to NoKV's engine defaults (see docs/benchmarks.md).
ROCKS_ONLY=(
    --max_write_buffer_number=3 --max_background_jobs=2
    --level_compaction_dynamic_level_bytes=true
    --target_file_size_base=67108864 --max_bytes_for_level_base=268435456
    --max_bytes_for_level_multiplier=10 --num_levels=7
    --level0_file_num_compaction_trigger=4 --level0_slowdown_writes_trigger=20
    --level0_stop_writes_trigger=36 --block_size=4096
)

# run_one TOOL WORKLOAD CMD...: runs CMD under `time -v`, output in $LOGS/TOOL-WORKLOAD.*
run_one() {
    local tool=$1 wl=$2
    shift 2
    local log=$LOGS/$tool-$wl
    printf '%q ' "$@" >"$log.cmd"
    echo >>"$log.cmd"
    echo "== $tool $wl: $(cat "$log.cmd")"
    if ! /usr/bin/time -v -o "$log.time" "$@" >"$log.out" 2>"$log.err"; then
        echo "rocksdb.sh: $tool $wl failed; last lines of its output:" >&2
        tail -n 20 "$log.out" "$log.err" >&2
        exit 1
    fi
    grep -E '^[a-z]+ +: .*micros/op|^settle|^write-amp' "$log.out" | sed 's/^/   /' || true
}

# run_pair WORKLOAD DBNAME ROCKS_BENCHMARKS NOKV_BENCHMARKS EXTRA_FLAGS...
run_pair() {
    local wl=$1 dbname=$2 rocks_b=$3 nokv_b=$4
    shift 4
    run_one rocksdb "$wl" "$DB_BENCH" "${COMMON[@]}" "${ROCKS_ONLY[@]}" \
        --db="$WORKDIR/rocksdb-$dbname" --benchmarks="$rocks_b" "$@"
    run_one nokv "$wl" "$NOKV_BENCH" dbbench "${COMMON[@]}" ${NOKV_EXTRA[@]+"${NOKV_EXTRA[@]}"} \
        --db="$WORKDIR/nokv-$dbname" --benchmarks="$nokv_b" "$@"
}

echo "== settings: NUM=$NUM KEY_SIZE=$KEY_SIZE VALUE_SIZE=$VALUE_SIZE CACHE_SIZE=$CACHE_SIZE" \
    "WRITE_BUFFER_SIZE=$WRITE_BUFFER_SIZE BLOOM_BITS=$BLOOM_BITS SEEK_NEXTS=$SEEK_NEXTS SEED=$SEED" \
    "SYNC_NUM=$SYNC_NUM SYNC_THREADS=$SYNC_THREADS"
echo "== db_bench: $DB_BENCH ($("$DB_BENCH" --version 2>&1 | head -n1))"
echo "== workdir: $WORKDIR"

# RocksDB's fill timing excludes settling; `flush,waitforcompaction` after it makes its
# statistics (write amplification) cover the same flush + compaction work NoKV waits for.
SETTLE=flush,waitforcompaction

# du_mib DIR: bytes on disk under DIR, in MiB.
du_mib() {
    du -sb "$1" 2>/dev/null | awk '{ printf "%.0f", $1 / 1048576 }'
}

if [[ $MODE == large ]]; then
    # Three engines write the same keys: RocksDB inline, RocksDB with blob files, NoKV (its
    # value log takes values >= 2 KiB by default). fillrandom then overwrite on one DB each.
    BLOB=(--enable_blob_files=true --min_blob_size="$MIN_BLOB_SIZE"
        --enable_blob_garbage_collection=true --blob_garbage_collection_age_cutoff=0.25)
    declare -A SPACE
    for engine in rocksdb rocksdb-blob nokv; do
        extra=()
        [[ $engine == rocksdb-blob ]] && extra=("${BLOB[@]}")
        for wl in fillrandom overwrite; do
            existing=0
            [[ $wl == overwrite ]] && existing=1
            seed=$SEED
            [[ $wl == overwrite ]] && seed=$((SEED + 1))
            if [[ $engine == nokv ]]; then
                run_one nokv "large-$wl" "$NOKV_BENCH" dbbench "${COMMON[@]}" \
                    ${NOKV_EXTRA[@]+"${NOKV_EXTRA[@]}"} --db="$WORKDIR/db-$engine" \
                    --benchmarks="$wl" --use_existing_db=$existing --threads=1 --sync=0 --seed="$seed"
            else
                run_one "$engine" "large-$wl" "$DB_BENCH" "${COMMON[@]}" "${ROCKS_ONLY[@]}" \
                    ${extra[@]+"${extra[@]}"} --db="$WORKDIR/db-$engine" \
                    --benchmarks="$wl,$SETTLE" --use_existing_db=$existing --threads=1 --sync=0 \
                    --seed="$seed"
            fi
        done
        SPACE[$engine]=$(du_mib "$WORKDIR/db-$engine")
        rm -rf "$WORKDIR/db-$engine"
    done
else
    # Each workload is its own process, so each gets its own seed (the same for both tools):
    # with one seed, overwrite would rewrite fillrandom's keys in the same order and readrandom
    # would only ever ask for keys that exist.
    run_pair fillrandom main "fillrandom,$SETTLE" fillrandom --use_existing_db=0 --threads=1 \
        --sync=0 --seed="$SEED"
    run_pair overwrite main "overwrite,$SETTLE" overwrite --use_existing_db=1 --threads=1 \
        --sync=0 --seed="$((SEED + 1))"
    run_pair readrandom main readrandom readrandom --use_existing_db=1 --threads=1 --sync=0 \
        --seed="$((SEED + 2))"
    run_pair seekrandom main seekrandom seekrandom --use_existing_db=1 --threads=1 --sync=0 \
        --seed="$((SEED + 3))"
    for pct in 50 95; do
        run_pair "readrandomwriterandom-$pct" main readrandomwriterandom readrandomwriterandom \
            --use_existing_db=1 --threads=1 --sync=0 --readwritepercent="$pct" \
            --seed="$((SEED + 5 + pct))"
    done
    rm -rf "$WORKDIR/rocksdb-main" "$WORKDIR/nokv-main"
    run_pair fillrandom-sync sync "fillrandom,$SETTLE" fillrandom --use_existing_db=0 \
        --threads="$SYNC_THREADS" --sync=1 --num="$SYNC_NUM" --seed="$((SEED + 4))"
    rm -rf "$WORKDIR/rocksdb-sync" "$WORKDIR/nokv-sync"
fi

# --- report -----------------------------------------------------------------------------

# field TOOL WORKLOAD KIND [NAME] COLUMN: one value from `nokv-bench parse` output.
field() {
    local tool=$1 wl=$2 kind=$3 name=$4 col=$5
    "$NOKV_BENCH" parse "$LOGS/$tool-$wl.out" "$LOGS/$tool-$wl.time" |
        awk -F'\t' -v k="$kind" -v n="$name" -v c="$col" \
            '$1 == k && (n == "" || $2 == n) { v = $c } END { if (v != "") print v; else print "-" }'
}

ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b + 0 == 0) print "-"; else printf "%.2f", a / b }'
}

# wall TOOL WORKLOAD: the whole process's wall-clock seconds (open, work, settle, close).
wall() {
    awk -F': ' '/Elapsed \(wall clock\)/ {
        n = split($2, p, ":"); s = 0
        for (i = 1; i <= n; i++) s = s * 60 + p[i]
        printf "%.2f", s; found = 1
    } END { if (!found) print "-" }' "$LOGS/$1-$2.time"
}

mib() {
    awk -v k="$1" 'BEGIN { if (k == "-") print "-"; else printf "%.0f", k / 1024 }'
}

TABLE=$LOGS/table.md
if [[ $MODE == large ]]; then
    LIVE_MIB=$(awk -v n="$NUM" -v k="$KEY_SIZE" -v v="$VALUE_SIZE" 'BEGIN { printf "%.0f", n * (k + v) / 1048576 }')
    {
        echo "| engine | fillrandom ops/s | fillrandom MB/s | overwrite ops/s | overwrite MB/s | vs RocksDB (fill / overwrite) | space MiB at end | space / live ($LIVE_MIB MiB) | peak RSS MiB | process s (fill + overwrite) |"
        echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        r_fill=$(field rocksdb large-fillrandom result fillrandom 3)
        r_over=$(field rocksdb large-overwrite result overwrite 3)
        for engine in rocksdb rocksdb-blob nokv; do
            fill=$(field "$engine" large-fillrandom result fillrandom 3)
            over=$(field "$engine" large-overwrite result overwrite 3)
            rss=$(mib "$(field "$engine" large-overwrite peak_rss_kib "" 2)")
            mbs() { awk -v o="$1" -v b="$((KEY_SIZE + VALUE_SIZE))" 'BEGIN { if (o == "-") print "-"; else printf "%.1f", o * b / 1e6 }'; }
            secs=$(awk -v a="$(wall "$engine" large-fillrandom)" -v b="$(wall "$engine" large-overwrite)" 'BEGIN { printf "%.1f", a + b }')
            echo "| $engine | $fill | $(mbs "$fill") | $over | $(mbs "$over") | $(ratio "$fill" "$r_fill") / $(ratio "$over" "$r_over") | ${SPACE[$engine]} | $(ratio "${SPACE[$engine]}" "$LIVE_MIB") | $rss | $secs |"
        done
    } >"$TABLE"
    echo
    echo "== results ($(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) cores; MODE=large NUM=$NUM KEY_SIZE=$KEY_SIZE VALUE_SIZE=$VALUE_SIZE; QUICK=$QUICK)"
    cat "$TABLE"
    echo
    echo "RocksDB ops/s exclude flush+compaction settling (db_bench reports the fill phase); NoKV's include it."
    echo "Space is du -sb of each database directory after its overwrite run settled."
    if [[ -n ${RESULTS_DIR:-} ]]; then
        mkdir -p "$RESULTS_DIR"
        cp "$LOGS"/* "$RESULTS_DIR"/
        echo "== raw logs and table copied to $RESULTS_DIR"
    fi
    exit 0
fi
{
    echo "| workload | RocksDB ops/s | NoKV ops/s | NoKV/RocksDB | NoKV settle s | NoKV ops/s excl. settle | excl./RocksDB | RocksDB WA | NoKV WA | RocksDB peak RSS MiB | NoKV peak RSS MiB | RocksDB process s | NoKV process s | process RocksDB/NoKV |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for wl in fillrandom overwrite readrandom readrandomwriterandom-50 readrandomwriterandom-95 seekrandom fillrandom-sync; do
        bench=${wl%-sync}
        bench=${bench%-50}
        bench=${bench%-95}
        r_ops=$(field rocksdb "$wl" result "$bench" 3)
        n_ops=$(field nokv "$wl" result "$bench" 3)
        n_settle=$(field nokv "$wl" settle "$bench" 3)
        n_ingest=$(field nokv "$wl" settle "$bench" 4)
        r_wa=$(field rocksdb "$wl" write_amp statistics 3)
        n_wa=$(field nokv "$wl" write_amp "$bench" 3)
        case $bench in readrandom | seekrandom | readrandomwriterandom) r_wa=-; n_wa=- ;; esac
        r_rss=$(mib "$(field rocksdb "$wl" peak_rss_kib "" 2)")
        n_rss=$(mib "$(field nokv "$wl" peak_rss_kib "" 2)")
        r_wall=$(wall rocksdb "$wl")
        n_wall=$(wall nokv "$wl")
        label=$wl
        [[ $wl == fillrandom-sync ]] && label="fillrandom sync=1 threads=$SYNC_THREADS num=$SYNC_NUM/thread"
        [[ $wl == readrandomwriterandom-* ]] && label="readrandomwriterandom ${wl##*-}% reads"
        echo "| $label | $r_ops | $n_ops | $(ratio "$n_ops" "$r_ops") | $n_settle | $n_ingest | $(ratio "$n_ingest" "$r_ops") | $r_wa | $n_wa | $r_rss | $n_rss | $r_wall | $n_wall | $(ratio "$r_wall" "$n_wall") |"
    done
} >"$TABLE"

echo
echo "== results ($(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) cores; NUM=$NUM KEY_SIZE=$KEY_SIZE VALUE_SIZE=$VALUE_SIZE; QUICK=$QUICK)"
cat "$TABLE"
echo
echo "NoKV ops/s includes flush+compaction settling (fill benchmarks); RocksDB's does not."
echo "'excl.' columns compare NoKV without settling against RocksDB like for like."
echo "WA = (flush + compaction bytes written) / user bytes written, measured after settling."
echo "'process s' is each tool's whole run (open, work, flush and compaction settle, close) by time -v."

# Chart of the same runs; the second fillrandom group is the sync=1 run.
SVG=$LOGS/dbbench.svg
ROCKS_OUTS=()
NOKV_OUTS=()
for wl in fillrandom overwrite readrandom readrandomwriterandom-50 readrandomwriterandom-95 seekrandom fillrandom-sync; do
    ROCKS_OUTS+=("$LOGS/rocksdb-$wl.out")
    NOKV_OUTS+=("$LOGS/nokv-$wl.out")
done
if ! "$NOKV_BENCH" plot dbbench --rocksdb "${ROCKS_OUTS[@]}" --nokv "${NOKV_OUTS[@]}" --out "$SVG" \
    --title "db_bench: NoKV vs RocksDB, NUM=$NUM (fillrandom #2: sync=1, $SYNC_THREADS threads)"; then
    echo "rocksdb.sh: nokv-bench plot failed; no chart" >&2
    rm -f "$SVG"
    SVG=
fi

if [[ -n ${RESULTS_DIR:-} ]]; then
    mkdir -p "$RESULTS_DIR"
    cp "$LOGS"/* "$RESULTS_DIR"/
    echo "== raw logs, table${SVG:+ and chart} copied to $RESULTS_DIR"
    if [[ -n $SVG ]]; then
        echo "== chart: $RESULTS_DIR/dbbench.svg"
    fi
elif [[ -n $SVG ]]; then
    echo "== chart: $SVG$([[ $KEEP == 1 ]] || echo ' (removed at exit; set KEEP=1 or RESULTS_DIR to keep it)')"
fi

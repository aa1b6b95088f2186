# Shared by the anchor scripts (sourced, not run): finds or builds nokv-bench and makes a
# work directory that is removed at exit unless KEEP=1.
# Needs: REPO, SKIP_BUILD, KEEP. Sets: NOKV_BENCH, WORKDIR.

# anchor_setup SCRIPT_NAME WORKDIR_PREFIX
anchor_setup() {
    local name=$1 prefix=$2
    local target_dir=${CARGO_TARGET_DIR:-$REPO/target}
    if [[ -n ${NOKV_BENCH:-} ]]; then
        SKIP_BUILD=1
    else
        NOKV_BENCH=$target_dir/release/nokv-bench
    fi
    if [[ $SKIP_BUILD != 1 ]]; then
        echo "== cargo build --release -p nokv-bench"
        (cd "$REPO" && cargo build --release -p nokv-bench)
    fi
    if [[ ! -x $NOKV_BENCH ]]; then
        echo "$name: $NOKV_BENCH not found (build failed or SKIP_BUILD=1 without a build)" >&2
        exit 1
    fi
    WORKDIR=${WORKDIR:-$(mktemp -d "/tmp/$prefix-XXXX")}
    mkdir -p "$WORKDIR"
    trap anchor_cleanup EXIT
}

anchor_cleanup() {
    if [[ $KEEP == 1 ]]; then
        echo "== kept $WORKDIR"
    else
        rm -rf "$WORKDIR"
    fi
}

# port_candidate: prints a random loopback port to try for a listener, below the kernel's
# ephemeral range (ip_local_port_range), so that no outgoing connection of the servers
# under test can take it between the check and the bind.
port_candidate() {
    local low=32768 range
    if range=$(cat /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null); then
        low=${range%%[[:space:]]*}
    fi
    ((low > 12000)) || low=60000
    echo $((10000 + (RANDOM % (low - 10000))))
}

#!/usr/bin/env bash
# Installs what the test suites need beyond the Rust toolchain (idempotent).
#   - redis-server / redis-cli: the gateway's conformance suite compares replies
#     with a real redis-server (gateway/tests/conformance.rs).
#   - python3: deploy/cluster.sh reads its JSON topology with it
#     (shard/tests/deploy_cluster.rs runs the script).
#   - openssl: the TLS test makes its certificates with it (shard/tests/tls.rs).
#   - iproute2 (ip): the multi-host linearizability scenario puts stores in network
#     namespaces joined by veth pairs (shard/tests/linearizability.rs).
# Run as root (CI and developer machines here are root); does nothing when
# everything is already installed.
set -euo pipefail

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)

if [ ${#missing[@]} -eq 0 ]; then
    echo "install-test-deps: all present ($(redis-server --version | head -c 40)...)"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install-test-deps: need root to apt-get install ${missing[*]}" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y "${missing[@]}"
# The package may start a system service; the tests start their own servers on free ports.
echo "install-test-deps: installed $(redis-server --version | head -c 40)..."

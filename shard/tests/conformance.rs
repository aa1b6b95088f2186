//! Conformance of the real node: `gateway/tests/cases/*.txt` sent as raw RESP2
//! and RESP3 to a started `nokv-server --cores 2` (8 regions over 2 cores, so a
//! case's keys spread over cores and regions) and to a real `redis-server`,
//! replies compared byte for byte with the gateway's driver
//! (`gateway/tests/support/conformance.rs`; INFO, CLIENT LIST, client ids and
//! SCAN/KEYS order normalised where a case asks).
//!
//! Without redis-server the test is skipped with a notice, unless `CI=true`,
//! where it fails naming `scripts/install-test-deps.sh`.

mod support;

#[path = "../../gateway/tests/support/conformance.rs"]
mod conformance;

use conformance::{parse_cases, redis_server_or_skip, run_suite, Skip, PASSWORD};
use std::net::SocketAddr;
use std::path::Path;
use support::Server;

/// Cases whose node behaviour differs from one redis-server on purpose, each
/// documented in `docs/redis.md` ("Across regions" and "Limits"). Every other
/// case must match byte for byte.
const SKIPS: &[Skip] = &[
    Skip {
        file: "01_connection.txt",
        case: "config get",
        reason: "nokv-server's limits differ from Redis's defaults: proto-max-bulk-len is \
                 --max-bulk-bytes (16 MiB, the engine's largest value) and \
                 client-query-buffer-limit max(2 x that, 64 MiB)",
    },
    Skip {
        file: "04_keys.txt",
        case: "keys and scan",
        reason: "SCAN returns one region per call (cursor continues at the next region), \
                 so `SCAN 0 COUNT 1000` is not the whole keyspace as on one redis-server",
    },
];

fn port(s: &Server) -> u16 {
    s.addr
        .parse::<SocketAddr>()
        .unwrap_or_else(|e| panic!("server address {:?}: {e}", s.addr))
        .port()
}

#[test]
fn node_conformance_with_redis_server() {
    let Some(bin) = redis_server_or_skip("node_conformance_with_redis_server") else {
        return;
    };
    let cases = parse_cases(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../gateway/tests/cases"));
    let dir = tempfile::tempdir().expect("tempdir");
    let open = Server::start(&dir.path().join("open"), &["--cores", "2"]);
    let auth = Server::start(
        &dir.path().join("auth"),
        &["--cores", "2", "--requirepass", PASSWORD],
    );
    run_suite(
        "nokv-server conformance",
        &bin,
        &cases,
        SKIPS,
        [port(&open), port(&auth)],
    );
}

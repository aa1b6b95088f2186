//! Conformance: the case files in `tests/cases/*.txt` are sent as raw RESP, in
//! RESP2 and in RESP3, to the gateway's test server and to a real
//! `redis-server`, and the replies are compared byte for byte (INFO, CLIENT
//! LIST, client ids and SCAN/KEYS order are normalised where a case asks).
//!
//! Case file syntax, one directive per line:
//!
//! ```text
//! # comment
//! === case name            start a case (a fresh connection, after FLUSHDB)
//! === case name [auth]     ... against servers started with requirepass "secret"
//! set k v                  a command, split like redis-cli (quotes, \xHH escapes)
//! ~sort keys *             compare with array elements sorted (SCAN: the key list)
//! ~info info server        compare INFO's section headers and db lines only
//! ~clients client list     compare CLIENT LIST's field names and stable fields only
//! ~id client id            compare with client ids masked
//! ~clock ttl k             integers equal within 1 (TTL of an absolute expiry)
//! raw 2 "*1\r\n$4\r\nPING\r\n"   send raw bytes, expect 2 replies
//! closed                   expect the server to close the connection
//! sleep 20                 wait 20 ms
//! ```
//!
//! redis-server comes from Debian's `redis-server` package
//! (`scripts/install-test-deps.sh`). Without it the test is skipped with a
//! notice, unless `CI=true`, where it fails.
//!
//! The driver lives in `support/conformance.rs`, shared with
//! `shard/tests/conformance.rs`, which runs these cases against `nokv-server`.

#[path = "support/server.rs"]
mod server;

#[path = "support/conformance.rs"]
mod conformance;

use conformance::{parse_cases, redis_server_or_skip, run_suite, PASSWORD};
use nokv_gateway::session::Config;
use nokv_gateway::store::DbStore;
use std::path::Path;
use std::sync::Arc;

struct OurServer {
    server: server::Server,
    _dir: tempfile::TempDir,
}

fn start_ours(auth: bool) -> OurServer {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let clock: Arc<dyn nokv::clock::Clock> = Arc::new(nokv::clock::SystemClock);
    let opts = nokv::Options {
        clock: clock.clone(),
        durability: nokv::Durability::Relaxed,
        ..nokv::Options::default()
    };
    let db = nokv::Db::open(dir.path(), opts).unwrap_or_else(|e| panic!("open db: {e}"));
    let store = Arc::new(DbStore::new(db, clock));
    let config = Config {
        requirepass: auth.then(|| PASSWORD.as_bytes().to_vec()),
        ..Config::default()
    };
    let server =
        server::Server::start(store, config, 0, 64).unwrap_or_else(|e| panic!("start server: {e}"));
    OurServer { server, _dir: dir }
}

#[test]
fn conformance_with_redis_server() {
    let Some(bin) = redis_server_or_skip("conformance_with_redis_server") else {
        return;
    };
    let cases = parse_cases(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cases"));
    let ours = [start_ours(false), start_ours(true)];
    let ports = [ours[0].server.addr().port(), ours[1].server.addr().port()];
    run_suite("conformance", &bin, &cases, &[], ports);
}

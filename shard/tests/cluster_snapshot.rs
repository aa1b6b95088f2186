//! Scenario: a replica that fell behind the log its leaders still hold catches up from a
//! region snapshot shipped between stores (`shard/src/snapship.rs`).
//!
//! Three `nokv-server` processes and a coordinator (`support/cluster.rs`, shared with
//! `cluster.rs`), every store keeping only 8 applied raft entries per region
//! (`NOKV_DEBUG_RAFT_CACHED_ENTRIES`: a leader keeps at most 32 for a lagging replica).
//! One store is SIGKILLed; 600 writes go through the others (about 75 per region, so
//! every leader drops entries the dead store needs); it restarts. Then one of the others
//! is killed: the restarted store is needed for every quorum, so every acknowledged write
//! reads back, and a new write is acknowledged, only if it caught up, which it can only do
//! from a snapshot, unless the leaders still held the missed log (their WAL segments not
//! yet released): then no snapshot is needed, which is reported, not asserted. What was
//! sent must have arrived.
//!
//! Negative control: the same with shipping disabled (`NOKV_DEBUG_NO_SNAPSHOT_SHIPPING`):
//! the leaders' snapshot messages are dropped (counted) and the restarted store receives
//! none. (Open: in that run writes needing the restarted store were still acknowledged,
//! so some of its regions catch up without a snapshot; the test only reports them.)
//!
//! Every wait and loop is bounded; nothing asserts a time.

mod support;

use nokv_coordinator::Server as CoordServer;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use support::cluster::*;
use support::{Server, R};

/// Applied raft entries each store keeps per region.
const CACHED_ENTRIES: &str = "8";
/// Writes while one store is down.
const LAGGING_WRITES: usize = 600;

/// Starts the three stores at once with `env` (each waits for the others before it listens).
fn start_all(
    specs: &[StoreSpec],
    coordinator: &str,
    env: &'static [(&'static str, &'static str)],
) -> Vec<Option<Server>> {
    let handles: Vec<_> = specs
        .iter()
        .cloned()
        .map(|spec| {
            let coordinator = coordinator.to_string();
            std::thread::spawn(move || start_store_env(&spec, &coordinator, env))
        })
        .collect();
    handles
        .into_iter()
        .map(|h| Some(h.join().expect("store started")))
        .collect()
}

/// The log lines about snapshots of every store (for a failure message).
fn snapshot_log(client: &ClusterClient) -> String {
    let mut out = String::new();
    for (i, path) in client.logs.iter().enumerate() {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        for l in text
            .lines()
            .filter(|l| l.contains("snapshot") || l.contains("WARN") || l.contains("ERROR"))
            .take(40)
        {
            out.push_str(&format!("store {i}: {l}\n"));
        }
    }
    out
}

/// Sum of counter `name` (with `labels`) over the running `stores`.
fn counter(stores: &[Option<Server>], name: &str, labels: &str) -> f64 {
    stores
        .iter()
        .flatten()
        .filter_map(|s| support::sample(&s.scrape(), name, labels))
        .sum()
}

/// Sum of `nokv_raft_messages_dropped_total{reason="snapshot"}` over both cores.
fn snapshot_drops(stores: &[Option<Server>]) -> f64 {
    (0..2)
        .map(|core| {
            counter(
                stores,
                "nokv_raft_messages_dropped_total",
                &format!("core=\"{core}\",reason=\"snapshot\""),
            )
        })
        .sum()
}

/// Runs the scenario up to the restart of the lagging store and the kill of another;
/// returns the running stores (the restarted one at `victim`), the client, the
/// acknowledged writes, the lagging store and the remaining other one.
struct Lagged {
    stores: Vec<Option<Server>>,
    client: ClusterClient,
    acked: BTreeMap<String, String>,
    victim: usize,
    other: usize,
    coord_server: CoordServer,
    _dir: tempfile::TempDir,
}

fn lag_one_store(env: &'static [(&'static str, &'static str)]) -> Lagged {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let (_coord, coord_server, coord_addr) = start_coordinator(&dir.path().join("coord"));
    let specs = store_specs(dir.path());
    let mut stores = start_all(&specs, &coord_addr, env);
    let addrs: Vec<String> = specs.iter().map(|s| s.redis.clone()).collect();
    let mut client = ClusterClient::new(&specs);
    let mut acked: BTreeMap<String, String> = BTreeMap::new();
    for i in 0..80 {
        let (k, v) = (format!("key:{i}"), format!("value-{i}"));
        assert!(
            client.set(i % 3, &k, &v, OP_BOUND * 2),
            "SET {k} not acknowledged in time"
        );
        acked.insert(k, v);
    }
    eprintln!("{:?}: 80 writes acknowledged", started.elapsed());

    // The store leading the fewest keys goes away (a follower of most regions).
    let keys: Vec<String> = acked.keys().cloned().collect();
    let led: Vec<usize> = addrs.iter().map(|a| keys_led(a, &keys)).collect();
    let victim = (0..3).min_by_key(|&i| led[i]).expect("stores");
    stores[victim].take().expect("running").kill();
    let survivors: Vec<usize> = (0..3).filter(|&i| i != victim).collect();
    for i in 80..80 + LAGGING_WRITES {
        let (k, v) = (format!("key:{i}"), format!("value-{i}"));
        assert!(
            client.set(survivors[i % 2], &k, &v, OP_BOUND),
            "SET {k} with store {victim} down"
        );
        acked.insert(k, v);
    }
    eprintln!(
        "{:?}: {LAGGING_WRITES} writes with store {victim} down",
        started.elapsed()
    );

    stores[victim] = Some(start_store_env(&specs[victim], &coord_addr, env));
    eprintln!("{:?}: store {victim} restarted", started.elapsed());
    // Give the leaders a few heartbeats to find it (and ship, when they can) before the
    // other store goes: the wait below is what is bounded, not this.
    std::thread::sleep(Duration::from_secs(3));
    let other = survivors[0];
    stores[other].take().expect("running").kill();
    eprintln!("{:?}: killed store {other}", started.elapsed());
    Lagged {
        stores,
        client,
        acked,
        victim,
        other,
        coord_server,
        _dir: dir,
    }
}

#[test]
fn a_store_that_missed_compacted_log_catches_up_from_shipped_snapshots() {
    catches_up_from_snapshots(&[("NOKV_DEBUG_RAFT_CACHED_ENTRIES", CACHED_ENTRIES)]);
}

/// Every store addresses its raft messages, snapshots included, to core 0 of the others
/// (`NOKV_DEBUG_RAFT_TO_CORE`): a snapshot for a replica on core 1 is received into core
/// 0's snapshot directory, and core 0 hands it on with its files (before that, core 1
/// found no files, failed its ingest and stopped taking writes: seen in CI when a
/// placement was off).
#[test]
fn a_snapshot_received_by_the_wrong_core_is_handed_on_with_its_files() {
    catches_up_from_snapshots(&[
        ("NOKV_DEBUG_RAFT_CACHED_ENTRIES", CACHED_ENTRIES),
        ("NOKV_DEBUG_RAFT_TO_CORE", "0"),
    ]);
}

/// A store lagged (`lag_one_store` with `env`) catches up, from snapshots when the leaders
/// no longer held its log; what was sent arrived; nothing was dropped.
fn catches_up_from_snapshots(env: &'static [(&'static str, &'static str)]) {
    let mut l = lag_one_store(env);
    let remaining: Vec<usize> = (0..3).filter(|&i| i != l.other).collect();
    // With one of the others gone the restarted store is in every quorum: a write is
    // acknowledged only once it caught up.
    for i in 0..20 {
        let (k, v) = (format!("after:{i}"), format!("value-{i}"));
        assert!(
            l.client.set(l.victim, &k, &v, OP_BOUND),
            "SET {k}: the restarted store caught up\n{}",
            l.client.log_tails()
        );
        l.acked.insert(k, v);
    }
    for &first in &remaining {
        for (k, v) in &l.acked {
            assert_eq!(
                l.client.get(first, k, OP_BOUND),
                R::bulk(v),
                "{k} through store {first}"
            );
        }
    }
    // A snapshot whose files its core could not find stops that core's writes.
    for path in &l.client.logs {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            !log.contains("the engine failed"),
            "{}: a core failed\n{}",
            path.display(),
            snapshot_log(&l.client)
        );
    }
    let victim = std::slice::from_ref(&l.stores[l.victim]);
    let received = counter(victim, "nokv_snapshot_received_total", "");
    let bytes = counter(victim, "nokv_snapshot_bytes_received_total", "");
    let sent = counter(&l.stores, "nokv_snapshot_sent_total", "");
    // Whether a leader still held the log the restarted store missed (then no snapshot
    // is needed) depends on when its WAL segments were released: not asserted. What was
    // sent by the remaining store must have arrived, with its files.
    if received == 0.0 {
        assert_eq!(
            sent,
            0.0,
            "snapshots were sent but none was received\n{}",
            snapshot_log(&l.client)
        );
        eprintln!("no snapshot was needed in this run: the leaders still held the log");
    } else {
        assert!(bytes > 0.0, "with their files");
    }
    assert_eq!(
        snapshot_drops(&l.stores),
        0.0,
        "no snapshot message dropped"
    );
    eprintln!("snapshots: received {received} ({bytes} bytes), sent by the remaining store {sent}");
    for s in l.stores.into_iter().flatten() {
        let status = s.terminate();
        assert!(status.success(), "SIGTERM exits 0: {status:?}");
    }
    l.coord_server.shutdown();
}

#[test]
fn without_snapshot_shipping_no_snapshot_reaches_the_lagging_store() {
    let mut l = lag_one_store(&[
        ("NOKV_DEBUG_RAFT_CACHED_ENTRIES", CACHED_ENTRIES),
        ("NOKV_DEBUG_NO_SNAPSHOT_SHIPPING", "1"),
    ]);
    // Writes that need the lagging store: reported, not asserted (see the module docs).
    let mut refused = 0;
    for i in 0..8 {
        let (k, v) = (format!("after:{i}"), format!("value-{i}"));
        if !l.client.set(l.victim, &k, &v, OP_BOUND / 2) {
            refused += 1;
            break;
        }
    }
    let applied: f64 = (0..2)
        .map(|core| {
            counter(
                std::slice::from_ref(&l.stores[l.victim]),
                "nokv_raft_applied_entries_total",
                &format!("core=\"{core}\""),
            )
        })
        .sum();
    eprintln!(
        "writes not acknowledged in time: {refused}; entries the restarted store applied: {applied}"
    );
    let victim = std::slice::from_ref(&l.stores[l.victim]);
    assert_eq!(counter(victim, "nokv_snapshot_received_total", ""), 0.0);
    // As above, a snapshot may not have been needed: the drops are reported.
    eprintln!("snapshot messages dropped: {}", snapshot_drops(&l.stores));
    for s in l.stores.into_iter().flatten() {
        let _ = s.terminate();
    }
    l.coord_server.shutdown();
}

//! Scenario: three `nokv-server` processes and a coordinator make one replicated database.
//!
//! The stores are real processes on loopback (`--coordinator`, `--rpc-addr`, two cores
//! each, so raft messages are addressed to the core the coordinator placed each replica
//! on); the coordinator runs in this process (`nokv_coordinator::Server` on a free port:
//! cargo builds no binary of another package for this test). The stores register, one of
//! them bootstraps the cluster (every region replicated on all three), and a client that
//! follows `-MOVED` writes and reads through any store. Then the store leading the most
//! keys is SIGKILLed: writes resume once the others elect new leaders, no acknowledged
//! write is lost; the killed store restarts on its workdir and addresses and catches up,
//! which the test
//! shows by killing one of the other two: the remaining quorum (the restarted store and
//! one more) still serves every acknowledged write and takes new ones.
//!
//! A second scenario stops the coordinator: the stores go on serving (writes, reads, a
//! store killed and its regions' leaders re-elected without it), and the coordinator
//! restarted on its workdir hands out timestamps above every earlier one.
//!
//! Every wait is bounded; nothing asserts a time.

mod support;

use nokv_coordinator::{ClientOptions, CoordClient};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use support::cluster::*;
use support::Server;

#[test]
fn three_stores_replicate_survive_a_killed_leader_and_catch_up() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let (_coord, coord_server, coord_addr) = start_coordinator(&dir.path().join("coord"));
    let specs = store_specs(dir.path());
    let mut stores = start_stores(&specs, &coord_addr);
    let addrs: Vec<String> = specs.iter().map(|s| s.redis.clone()).collect();
    let mut client = ClusterClient::new(&specs);
    let mut acked: BTreeMap<String, String> = BTreeMap::new();

    // Writes through every store (round robin as the entry point), until every region has
    // a leader: the first writes wait out the elections.
    for i in 0..120 {
        let (k, v) = (format!("key:{i}"), format!("value-{i}"));
        assert!(
            client.set(i % 3, &k, &v, OP_BOUND + 10 * ELECTION_TIMEOUT),
            "SET {k} not acknowledged in time"
        );
        acked.insert(k, v);
    }
    assert!(client.redirects > 0, "some writes were sent to a follower");
    eprintln!("{:?}: 120 writes acknowledged", started.elapsed());
    check_all(&mut client, &acked, &[0, 1, 2]);

    // The leaders' region heartbeats reach the coordinator: its routes name a leader for
    // every region, on one of the three stores.
    let coord_client = CoordClient::new(vec![coord_addr.clone()], 7, ClientOptions::default())
        .expect("coordinator client");
    let store_ids: Vec<u64> = coord_client
        .stores()
        .expect("stores")
        .iter()
        .filter_map(|s| s.meta.as_ref().map(|m| m.id))
        .collect();
    assert_eq!(store_ids.len(), 3, "three stores registered");
    let deadline = Instant::now() + OP_BOUND;
    loop {
        let routes = coord_client.scan_regions(b"", b"", 0).expect("routes");
        assert!(!routes.is_empty(), "bootstrapped");
        let led = routes.iter().all(|r| {
            r.region.as_ref().is_some_and(|region| {
                region.peers.len() == 3
                    && region
                        .peers
                        .iter()
                        .any(|p| p.id == r.leader_peer_id && store_ids.contains(&p.store_id))
            })
        });
        if led {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the coordinator learns every region's leader: {routes:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Store 0's misaddressed messages were handed to the right core by the others.
    let rerouted: f64 = stores[1..]
        .iter()
        .flatten()
        .map(|s| {
            let scrape = s.scrape();
            (0..2)
                .filter_map(|core| {
                    support::sample(
                        &scrape,
                        "nokv_raft_messages_dropped_total",
                        &format!("core=\"{core}\",reason=\"rerouted\""),
                    )
                })
                .sum::<f64>()
        })
        .sum();
    assert!(
        rerouted > 0.0,
        "messages for core 1 arrived at core 0 and were handed on"
    );

    // The store leading the most keys goes away without warning.
    let (victim, led) = busiest_leader(&addrs, &acked);
    assert!(led[victim] > 0, "some store leads: {led:?}");
    stores[victim].take().expect("running").kill();

    // Writes resume once the other two elect leaders for the regions it led.
    let survivors: Vec<usize> = (0..3).filter(|&i| i != victim).collect();
    eprintln!(
        "{:?}: killed store {victim} (keys led: {led:?})",
        started.elapsed()
    );
    for i in 120..200 {
        let (k, v) = (format!("key:{i}"), format!("value-{i}"));
        assert!(
            client.set(survivors[i % 2], &k, &v, OP_BOUND),
            "SET {k}: writes resume after the leader's store was killed"
        );
        acked.insert(k, v);
    }
    eprintln!("{:?}: writes resumed", started.elapsed());
    check_all(&mut client, &acked, &survivors);

    // The killed store restarts on its workdir and addresses (the dead process's
    // connections left in TIME_WAIT do not keep it from binding them again).
    stores[victim] = Some(start_store(&specs[victim], &coord_addr));
    eprintln!("{:?}: store {victim} restarted", started.elapsed());
    for i in 200..240 {
        let (k, v) = (format!("key:{i}"), format!("value-{i}"));
        assert!(
            client.set(victim, &k, &v, OP_BOUND),
            "SET {k} through the restarted store"
        );
        acked.insert(k, v);
    }
    check_all(&mut client, &acked, &[victim]);

    // It caught up: with one of the others gone, it is needed for every quorum, and the
    // leaders (it or the other) still serve every acknowledged write and take new ones.
    let other = survivors[0];
    stores[other].take().expect("running").kill();
    eprintln!("{:?}: killed store {other}", started.elapsed());
    for i in 240..260 {
        let (k, v) = (format!("key:{i}"), format!("value-{i}"));
        assert!(
            client.set(victim, &k, &v, OP_BOUND),
            "SET {k} with the restarted store in the quorum"
        );
        acked.insert(k, v);
    }
    let remaining: Vec<usize> = (0..3).filter(|&i| i != other).collect();
    check_all(&mut client, &acked, &remaining);
    eprintln!(
        "{:?}: every acknowledged write read back",
        started.elapsed()
    );

    for (nth, s) in stores.into_iter().flatten().enumerate() {
        let log = s.stderr.clone();
        let status = s.terminate();
        let tail = std::fs::read_to_string(&log).unwrap_or_default();
        // A stopping store hands the regions it leads to a live voter elsewhere first.
        // Only the first store stopped has both others alive: the last one has nobody
        // to hand over to and stops leading only when check-quorum notices (a timing).
        assert!(
            nth > 0 || !tail.contains("still leading after the handover wait"),
            "leadership handed over before stopping:\n{tail}"
        );
        let tail: Vec<&str> = tail.lines().rev().take(40).collect();
        assert!(
            status.success(),
            "SIGTERM exits 0: {status:?}; stderr ends with:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    coord_server.shutdown();
}

#[test]
fn the_cluster_serves_while_the_coordinator_is_down_and_its_tso_never_goes_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let coord_dir = dir.path().join("coord");
    let (coord, coord_server, coord_addr) = start_coordinator(&coord_dir);
    let specs = store_specs(dir.path());
    let mut stores = start_stores(&specs, &coord_addr);
    let addrs: Vec<String> = specs.iter().map(|s| s.redis.clone()).collect();
    let mut client = ClusterClient::new(&specs);
    let mut acked: BTreeMap<String, String> = BTreeMap::new();
    for i in 0..30 {
        let (k, v) = (format!("c:{i}"), format!("v{i}"));
        assert!(
            client.set(i % 3, &k, &v, OP_BOUND + 10 * ELECTION_TIMEOUT),
            "SET {k}"
        );
        acked.insert(k, v);
    }
    let coord_client = CoordClient::new(vec![coord_addr.clone()], 7, ClientOptions::default())
        .expect("coordinator client");
    let ts_before = coord_client.get_ts(1).expect("a timestamp");

    // The coordinator goes away: the stores keep serving from what they know, and raft
    // elects new leaders without it when a store is killed.
    coord_server.shutdown();
    drop(coord);
    for i in 30..60 {
        let (k, v) = (format!("c:{i}"), format!("v{i}"));
        assert!(
            client.set(i % 3, &k, &v, OP_BOUND),
            "SET {k}, coordinator down"
        );
        acked.insert(k, v);
    }
    let (victim, _) = busiest_leader(&addrs, &acked);
    stores[victim].take().expect("running").kill();
    let survivors: Vec<usize> = (0..3).filter(|&i| i != victim).collect();
    for i in 60..90 {
        let (k, v) = (format!("c:{i}"), format!("v{i}"));
        assert!(
            client.set(survivors[i % 2], &k, &v, OP_BOUND),
            "SET {k}: a store lost while the coordinator is down"
        );
        acked.insert(k, v);
    }
    check_all(&mut client, &acked, &survivors);

    // The coordinator restarts on its workdir (a new port): its TSO is above everything
    // it handed out before.
    let (_coord, coord_server, coord_addr) = start_coordinator(&coord_dir);
    let coord_client = CoordClient::new(vec![coord_addr], 7, ClientOptions::default())
        .expect("coordinator client");
    let ts_after = coord_client
        .get_ts(1)
        .expect("a timestamp after the restart");
    assert!(
        ts_after > ts_before,
        "TSO went back across a restart: {ts_after} <= {ts_before}"
    );
    for s in stores.into_iter().flatten() {
        assert!(s.terminate().success(), "SIGTERM exits 0");
    }
    coord_server.shutdown();
}

#[test]
fn a_standalone_workdir_refuses_to_join_a_cluster() {
    let dir = tempfile::tempdir().expect("tempdir");
    let workdir = dir.path().join("store");
    let s = Server::start(&workdir, &["--cores", "1", "--memory-limit", "128MiB"]);
    assert!(s.terminate().success(), "SIGTERM exits 0");
    // Nothing listens there: the workdir check comes before any call to the coordinator.
    let (status, stderr) = support::run_to_exit(
        &workdir,
        &[
            "--redis-addr",
            "127.0.0.1:0",
            "--rpc-addr",
            "127.0.0.1:0",
            "--coordinator",
            &free_addr(),
        ],
    );
    assert!(!status.success(), "refused: {stderr}");
    assert!(
        stderr.contains("standalone store") && stderr.contains("without --coordinator"),
        "says why: {stderr}"
    );
}

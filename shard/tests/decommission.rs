//! Scenario: a store is decommissioned while clients write.
//!
//! A coordinator (in this process, scheduler on) and four `nokv-server` processes: three
//! start together and bootstrap the cluster with three replicas per region, a client
//! writes keys, then the fourth store joins (holding nothing). The first-three store
//! leading the most keys is decommissioned (every region has a replica there, and it
//! leads some: their leadership must move first). Writes go on through the other stores
//! while the scheduler moves every replica off it (learner on another store, promotion,
//! leadership handed away, removal); the store ends `Removed` with no replica in the
//! catalog, every region keeps three voters, and every acknowledged key reads back
//! through every other store. Negative control: with the scheduler off the store stays
//! `Decommissioning` and keeps its replicas.
//!
//! Every wait is bounded; nothing asserts a time.

mod support;

use nokv_coordinator::proto::{ScanRegionsRequest, StoreAdminState};
use nokv_coordinator::Coordinator;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use support::cluster::*;

/// Keys written before the decommission.
const KEYS: usize = 60;
/// Bound of the drain (a failure bound: three or four heartbeat round trips per region,
/// at most four regions at a time, on a debug build).
const DRAIN_BOUND: Duration = Duration::from_secs(120);
/// How long the negative control waits (several heartbeats).
const CONTROL_WAIT: Duration = Duration::from_secs(10);

/// The two tests start eight processes between them: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// For every region: (region id, voters, replicas on `store`).
fn counts(coord: &Coordinator, store: u64) -> Vec<(u64, usize, usize)> {
    coord
        .scan_regions(&ScanRegionsRequest::default())
        .expect("scan regions")
        .iter()
        .filter_map(|r| r.region.as_ref())
        .map(|r| {
            let voters = r.peers.iter().filter(|p| !p.learner).count();
            let on = r.peers.iter().filter(|p| p.store_id == store).count();
            (r.id, voters, on)
        })
        .collect()
}

fn admin(coord: &Coordinator, store: u64) -> StoreAdminState {
    coord
        .store_info(store)
        .expect("store info")
        .meta
        .expect("meta")
        .admin_state()
}

/// Four stores (the fourth empty), `KEYS` keys written; the busiest of the first three is
/// decommissioned under writes: drained and removed, or (without the scheduler) left as
/// it is.
fn run(schedule: bool) {
    let Cluster {
        coord,
        specs,
        servers,
        ids,
        mut acked,
        coord_server: _coord_server,
        dir: _dir,
        ..
    } = start_written(schedule, Duration::from_secs(30), true, KEYS);
    let addrs: Vec<String> = specs[..3].iter().map(|s| s.redis.clone()).collect();
    let (victim, led) = busiest_leader(&addrs, &acked);
    let drained = ids[victim];
    eprintln!(
        "decommissioning store {} (id {drained}), leading {led:?} of the keys per store",
        victim + 1
    );
    assert!(counts(&coord, drained).iter().all(|(_, _, on)| *on == 1));
    coord.decommission_store(drained).expect("decommission");
    let others: Vec<usize> = (0..4).filter(|i| *i != victim).collect();
    let mut client = ClusterClient::new(&specs);
    let bound = if schedule { DRAIN_BOUND } else { CONTROL_WAIT };
    let deadline = Instant::now() + bound;
    let mut n = 0;
    // Bounded by the deadline; writes go on meanwhile.
    while admin(&coord, drained) != StoreAdminState::Removed && Instant::now() < deadline {
        let (k, v) = (format!("during:{n}"), format!("during-{n}"));
        assert!(
            client.set(others[n % others.len()], &k, &v, OP_BOUND),
            "SET {k} during the decommission\n{}",
            client.log_tails()
        );
        acked.insert(k, v);
        n += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    let now = counts(&coord, drained);
    let ops = coord.operators();
    if !schedule {
        assert_eq!(admin(&coord, drained), StoreAdminState::Decommissioning);
        assert!(
            now.iter().all(|(_, voters, on)| *voters == 3 && *on == 1),
            "{now:?}"
        );
        assert_eq!(ops.issued, 0, "{ops:?}");
        check_all(&mut client, &acked, &others);
        return;
    }
    assert_eq!(
        admin(&coord, drained),
        StoreAdminState::Removed,
        "regions (id, voters, replicas on the store) {now:?}; scheduler {ops:?}\n{}",
        client.log_tails()
    );
    eprintln!(
        "store {drained} removed after {n} writes; issued {} completed {} expired {}",
        ops.issued, ops.completed, ops.expired
    );
    assert!(
        now.iter().all(|(_, voters, on)| *voters == 3 && *on == 0),
        "{now:?}"
    );
    // Every acknowledged key, through every other store; new writes are taken.
    check_all(&mut client, &acked, &others);
    for i in 0..10 {
        let (k, v) = (format!("after:{i}"), format!("after-{i}"));
        assert!(
            client.set(others[i % others.len()], &k, &v, OP_BOUND),
            "SET {k}\n{}",
            client.log_tails()
        );
        acked.insert(k, v);
    }
    check_all(&mut client, &acked, &others);
    drop(servers);
}

#[test]
fn a_decommissioned_store_is_drained_under_writes_and_removed() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    run(true);
}

#[test]
fn without_the_scheduler_a_decommissioned_store_keeps_its_replicas() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    run(false);
}

//! Scenario: the coordinator's scheduler repairs the replicas of a dead store.
//!
//! A coordinator (in this process, `--store-down-after 3s`) and four `nokv-server`
//! processes: three start together and bootstrap the cluster with three replicas per
//! region, a client writes N keys, then the fourth store joins (holding nothing). One of
//! the first three (every region has a replica there; the one leading the most keys) is
//! SIGKILLed. With the scheduler on, every region's leader runs the operators its
//! heartbeats are answered with (add a learner on the fourth store, promote it, remove the
//! dead replica), until every region has three voters on live stores again; then every
//! acknowledged key reads back through every live store, new writes are taken, and the
//! consistency check finds the replicas of every region equal. Negative control: with the
//! scheduler off the same wait does not reach three live voters, and no operator is issued.
//!
//! A store whose disk was wiped rejoins as a new store: three stores, one SIGKILLed, its
//! workdir deleted, started again at the same addresses. It registers with a new id; the
//! coordinator counts the old id as down at once (a new store took its address: the
//! down-after here is 10 minutes, so only that can start the repair), and the scheduler
//! re-creates the old store's replicas on the new one.
//!
//! Every wait is bounded; nothing asserts a time.

mod support;

use nokv_coordinator::proto::{Route, ScanRegionsRequest};
use nokv_coordinator::Coordinator;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use support::cluster::*;
use support::{Client, R};

/// Keys written before the kill.
const KEYS: usize = 100;
/// How long a store may be silent before the coordinator counts it as down.
const DOWN_AFTER: Duration = Duration::from_secs(3);
/// Bound of the repair (a failure bound, not a timing assumption: the repair takes three
/// heartbeat round trips per region, at most four regions at a time, on a debug build).
const REPAIR_BOUND: Duration = Duration::from_secs(90);
/// How long the negative control waits (well past `DOWN_AFTER` plus several heartbeats).
const CONTROL_WAIT: Duration = Duration::from_secs(10);
/// The down-after of the wiped-disk scenario: longer than the test, so a repair there can
/// only come from the new store taking the old one's address.
const NEVER_DOWN: Duration = Duration::from_secs(600);

/// The two tests start eight processes between them: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Every route of the coordinator.
fn routes(coord: &Coordinator) -> Vec<Route> {
    coord
        .scan_regions(&ScanRegionsRequest::default())
        .expect("scan regions")
}

/// For every region: (region id, voters on stores other than `dead`, replicas on `dead`).
fn voter_counts(coord: &Coordinator, dead: u64) -> Vec<(u64, usize, usize)> {
    routes(coord)
        .iter()
        .filter_map(|r| r.region.as_ref())
        .map(|r| {
            let live = r
                .peers
                .iter()
                .filter(|p| !p.learner && p.store_id != dead)
                .count();
            let on_dead = r.peers.iter().filter(|p| p.store_id == dead).count();
            (r.id, live, on_dead)
        })
        .collect()
}

/// SIGKILLs the first-three store leading the most of the keys; returns its index.
fn kill_busiest(c: &mut Cluster) -> usize {
    let addrs: Vec<String> = c.specs[..3].iter().map(|s| s.redis.clone()).collect();
    let (victim, led) = busiest_leader(&addrs, &c.acked);
    eprintln!(
        "killing store {} (id {}), leading {led:?} of the keys per store",
        victim + 1,
        c.ids[victim]
    );
    c.servers[victim].take().expect("running").kill();
    victim
}

/// Waits (at most `bound`) until every region has 3 voters on stores other than `dead`;
/// returns whether it got there, and the last counts.
fn wait_live_voters(
    coord: &Coordinator,
    dead: u64,
    bound: Duration,
) -> (bool, Vec<(u64, usize, usize)>) {
    let deadline = Instant::now() + bound;
    // Bounded by the deadline.
    loop {
        let counts = voter_counts(coord, dead);
        if !counts.is_empty() && counts.iter().all(|(_, live, _)| *live >= 3) {
            return (true, counts);
        }
        if Instant::now() >= deadline {
            return (false, counts);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_scheduler_replaces_the_replicas_of_a_dead_store() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = start_written(true, DOWN_AFTER, true, KEYS);
    let victim = kill_busiest(&mut c);
    let dead = c.ids[victim];
    let live: Vec<usize> = (0..4).filter(|i| *i != victim).collect();
    check_repaired(&mut c, dead, &live, 3);
}

#[test]
fn a_store_whose_disk_was_wiped_rejoins_as_a_new_store() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = start_written(true, NEVER_DOWN, false, KEYS);
    let victim = kill_busiest(&mut c);
    let dead = c.ids[victim];
    let spec = c.specs[victim].clone();
    std::fs::remove_dir_all(&spec.workdir).expect("wipe the store's workdir");
    c.servers[victim] = Some(start_store(&spec, &c.coord_addr));
    let new_id = id_at(&c.coord, &spec.redis);
    assert_ne!(new_id, dead, "a wiped store registers with a new id");
    eprintln!("store {} came back as id {new_id} (was {dead})", victim + 1);
    c.ids[victim] = new_id;
    check_repaired(&mut c, dead, &[0, 1, 2], victim);
}

/// Waits until every region has three live voters and none on `dead`, with a voter of
/// every region on store index `new`; then checks every key through every `live` store,
/// takes new writes, compares the replicas, and reads the stores' operator counters.
fn check_repaired(c: &mut Cluster, dead: u64, live: &[usize], new: usize) {
    let (repaired, counts) = wait_live_voters(&c.coord, dead, REPAIR_BOUND);
    let ops = c.coord.operators();
    assert!(
        repaired,
        "regions (id, live voters, replicas on the dead store) {counts:?}; scheduler {ops:?}\n{}",
        c.client.log_tails()
    );
    eprintln!(
        "3 live voters everywhere: {counts:?}; issued {} completed {} expired {}",
        ops.issued, ops.completed, ops.expired
    );
    // The last step of a repair removes the dead replica.
    let deadline = Instant::now() + REPAIR_BOUND;
    // Bounded by the deadline.
    let counts = loop {
        let counts = voter_counts(&c.coord, dead);
        if counts
            .iter()
            .all(|(_, live, on_dead)| *live == 3 && *on_dead == 0)
        {
            break counts;
        }
        assert!(
            Instant::now() < deadline,
            "dead replicas not removed: {counts:?}; scheduler {:?}\n{}",
            c.coord.operators(),
            c.client.log_tails()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // The new replicas are on the new store.
    let new_id = c.ids[new];
    let on_new = routes(&c.coord)
        .iter()
        .filter_map(|r| r.region.as_ref())
        .filter(|r| r.peers.iter().any(|p| p.store_id == new_id && !p.learner))
        .count();
    assert_eq!(
        on_new,
        counts.len(),
        "every region has a voter on store {}",
        new + 1
    );

    // Every acknowledged key, through every live store.
    check_all(&mut c.client, &c.acked, live);
    // New writes are taken and read back.
    for i in 0..20 {
        let (k, v) = (format!("after:{i}"), format!("after-{i}"));
        assert!(
            c.client.set(live[i % live.len()], &k, &v, OP_BOUND),
            "SET {k} after the repair\n{}",
            c.client.log_tails()
        );
        c.acked.insert(k, v);
    }
    check_all(&mut c.client, &c.acked, live);

    // The replicas of every region agree (the new ones hold the same data).
    for (region, _, _) in counts {
        let id = region.to_string();
        let args: [&[u8]; 3] = [b"NOKV.REGION", b"CHECK", id.as_bytes()];
        let verdict = c.client.call(live[0], &args, OP_BOUND);
        match verdict {
            Some(R::Simple(v)) if v.starts_with("MATCH") => {}
            other => panic!(
                "region {region}: consistency check {other:?}\n{}",
                c.client.log_tails()
            ),
        }
    }
    // The stores ran the operators (not the test): their counters show it, and the new
    // store holds every region.
    let mut results: BTreeMap<String, u64> = BTreeMap::new();
    for i in live {
        let server = c.servers[*i].as_ref().expect("live store");
        for line in server.scrape().lines() {
            let Some(rest) = line.strip_prefix("nokv_scheduler_operators_total{result=\"") else {
                continue;
            };
            let mut parts = rest.splitn(2, "\"} ");
            let (Some(result), Some(n)) = (parts.next(), parts.next()) else {
                continue;
            };
            *results.entry(result.to_string()).or_default() += n.trim().parse::<u64>().unwrap_or(0);
        }
    }
    eprintln!("operators run by the live stores: {results:?}");
    assert!(
        results.get("done").copied().unwrap_or(0) >= on_new as u64,
        "{results:?}"
    );
    let mut conn = Client::connect(&c.specs[new].redis);
    match conn.cmd("NOKV.REGION LIST") {
        R::Array(lines) => assert_eq!(lines.len(), on_new, "the new store's regions {lines:?}"),
        other => panic!("NOKV.REGION LIST on the new store: {other:?}"),
    }
}

#[test]
fn without_the_scheduler_a_dead_store_is_not_repaired() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = start_written(false, DOWN_AFTER, true, KEYS);
    let victim = kill_busiest(&mut c);
    let dead = c.ids[victim];
    let (repaired, counts) = wait_live_voters(&c.coord, dead, CONTROL_WAIT);
    assert!(
        !repaired,
        "regions reached 3 live voters without the scheduler: {counts:?}"
    );
    assert!(
        counts
            .iter()
            .all(|(_, live, on_dead)| *live == 2 && *on_dead == 1),
        "{counts:?}"
    );
    let ops = c.coord.operators();
    assert!(!ops.enabled);
    assert_eq!(ops.issued, 0, "{ops:?}");
    // The two live replicas still serve every acknowledged key.
    let live: Vec<usize> = (0..4).filter(|i| *i != victim).collect();
    check_all(&mut c.client, &c.acked, &live);
}

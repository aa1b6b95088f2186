//! Scenario: a region of a three-store cluster (real `nokv-server` processes, the
//! coordinator in this process) is split by `NOKV.REGION SPLIT` on its leader while clients
//! write through every store: every replica applies the split at the same index, the new
//! region elects a leader and takes writes, the coordinator's routes show both regions
//! tiling the slot space once, and every acknowledged write reads back through every
//! store, also after the new region's leader is killed and restarted. Also in a cluster:
//! a merge of two regions, a replica moved between the cores of its store (on request and
//! by the cores' load balance), each under writes and SIGKILLs.
//!
//! Every wait is bounded; nothing asserts a time.

mod support;

use nokv_coordinator::proto::{Route, ScanRegionsRequest};
use nokv_coordinator::{Coordinator, Server as CoordServer};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::cluster::*;
use support::{Client, Server, R};

/// A coordinator in this process and three stores (`flags` for each) that forward
/// commands for regions led elsewhere.
struct Forwarding {
    /// Holds every workdir.
    dir: tempfile::TempDir,
    coord: Arc<Coordinator>,
    server: CoordServer,
    coord_addr: String,
    specs: Vec<StoreSpec>,
    stores: Vec<Option<Server>>,
}

/// Starts a [`Forwarding`] cluster.
fn forwarding_cluster(flags: &[&str]) -> Forwarding {
    let dir = tempfile::tempdir().expect("tempdir");
    let (coord, server, coord_addr) = start_coordinator(&dir.path().join("coord"));
    let mut specs = store_specs(dir.path());
    for s in &mut specs {
        s.redirect = "forward";
    }
    let stores = start_stores_args(&specs, &coord_addr, flags);
    Forwarding {
        dir,
        coord,
        server,
        coord_addr,
        specs,
        stores,
    }
}

/// Writes `n` keys `<tag>:<i>` through the stores in turn, each acknowledged (bounded).
fn write(client: &mut ClusterClient, acked: &mut BTreeMap<String, String>, n: usize, tag: &str) {
    for i in 0..n {
        let (k, v) = (format!("{tag}:{i}"), format!("{tag}-{i}"));
        assert!(
            client.set(i % 3, &k, &v, OP_BOUND),
            "SET {k}\n{}",
            client.log_tails()
        );
        acked.insert(k, v);
    }
}

/// The coordinator's regions: (id, start slot, end slot, epoch version), by start.
fn coord_regions(coord: &Coordinator) -> Vec<(u64, u32, u32, u64)> {
    let slot = |k: &[u8], end: bool| match k {
        [] => {
            if end {
                16384
            } else {
                0
            }
        }
        [a, b] => u32::from(u16::from_be_bytes([*a, *b])),
        other => panic!("not a slot bound: {other:?}"),
    };
    let routes: Vec<Route> = coord
        .scan_regions(&ScanRegionsRequest::default())
        .expect("scan regions");
    let mut out: Vec<_> = routes
        .iter()
        .filter_map(|r| r.region.as_ref())
        .map(|r| {
            (
                r.id,
                slot(&r.start_key, false),
                slot(&r.end_key, true),
                r.epoch_version,
            )
        })
        .collect();
    out.sort_by_key(|r| r.1);
    out
}

/// Whether the regions tile the slot space exactly once.
fn tiles(regions: &[(u64, u32, u32, u64)]) -> bool {
    let mut next = 0;
    for r in regions {
        if r.1 != next || r.2 <= r.1 {
            return false;
        }
        next = r.2;
    }
    next == 16384
}

/// Sends `cmd` to each store until its region's leader answers (followers answer -MOVED;
/// no leader yet, or a step to retry: tried again), bounded; the answering store's index
/// and its reply.
fn on_leader(specs: &[StoreSpec], cmd: &str) -> (usize, R) {
    let deadline = Instant::now() + OP_BOUND;
    let words: Vec<&[u8]> = cmd.split_whitespace().map(str::as_bytes).collect();
    loop {
        for (i, s) in specs.iter().enumerate() {
            let Some(mut c) = Client::try_connect(&s.redis, IO_TIMEOUT) else {
                continue;
            };
            match c.try_cmd(&words) {
                Some(R::Error(e))
                    if e.starts_with("MOVED")
                        || e.starts_with("TRYAGAIN")
                        || e.contains("not on this store")
                        || e.ends_with("retry") => {}
                Some(reply) => return (i, reply),
                None => {}
            }
        }
        assert!(Instant::now() < deadline, "{cmd}: no leader answered");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `NOKV.REGION SPLIT <region> [slot]` on the region's leader: the child and the slot.
fn split(specs: &[StoreSpec], region: u64, slot: Option<u32>) -> (u64, u32) {
    let cmd = match slot {
        Some(s) => format!("NOKV.REGION SPLIT {region} {s}"),
        None => format!("NOKV.REGION SPLIT {region}"),
    };
    match on_leader(specs, &cmd) {
        (_, R::Array(v)) => match v.as_slice() {
            [R::Int(child), R::Int(slot)] => (*child as u64, *slot as u32),
            other => panic!("SPLIT reply {other:?}"),
        },
        (i, other) => panic!("{cmd} on {}: {other:?}", specs[i].redis),
    }
}

/// Waits until every store's `NOKV.REGION LIST` lines satisfy `ok` (bounded); `what`
/// names the wait in a failure.
fn wait_listing(specs: &[StoreSpec], what: &str, ok: impl Fn(&[String]) -> bool) {
    let deadline = Instant::now() + OP_BOUND;
    for s in specs {
        loop {
            let mut c = Client::connect(&s.redis);
            if let R::Array(lines) = c.cmd("NOKV.REGION LIST") {
                let lines: Vec<String> = lines
                    .iter()
                    .filter_map(|l| match l {
                        R::Bulk(b) => Some(String::from_utf8_lossy(b).into_owned()),
                        _ => None,
                    })
                    .collect();
                if ok(&lines) {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "store {}: {what}", s.redis);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Waits until every store lists `region` with `slots` (bounded).
fn wait_everywhere(specs: &[StoreSpec], region: u64, slots: (u32, u32)) {
    let want = format!("region={region} ");
    let range = format!("slots={}..{}", slots.0, slots.1);
    wait_listing(
        specs,
        &format!("never listed region {region} {range}"),
        |lines| {
            lines
                .iter()
                .any(|t| t.starts_with(&want) && t.contains(&range))
        },
    );
}

#[test]
fn a_split_in_a_cluster_reaches_every_replica_and_the_coordinator_and_loses_no_write() {
    let Forwarding {
        dir: _dir,
        coord,
        server: _server,
        coord_addr,
        specs,
        mut stores,
    } = forwarding_cluster(&[]);
    let mut client = ClusterClient::new(&specs);
    let mut acked = BTreeMap::new();
    write(&mut client, &mut acked, 150, "before");
    let before = coord_regions(&coord);
    assert!(tiles(&before), "{before:?}");
    let (parent, start, end, version) = before[0];
    let (child, slot) = split(&specs, parent, None);
    assert!(
        start < slot && slot < end,
        "split slot {slot} of [{start}, {end})"
    );
    wait_everywhere(&specs, child, (slot, end));
    wait_everywhere(&specs, parent, (start, slot));
    // The leader reported both: the coordinator's routes tile the space with them.
    let deadline = Instant::now() + OP_BOUND;
    loop {
        let now = coord_regions(&coord);
        let has = |id: u64, s: u32, e: u32| {
            now.iter()
                .any(|r| r.0 == id && r.1 == s && r.2 == e && r.3 == version + 1)
        };
        if tiles(&now) && has(parent, start, slot) && has(child, slot, end) {
            break;
        }
        assert!(Instant::now() < deadline, "coordinator routes {now:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    write(&mut client, &mut acked, 150, "after");
    // The child again, at a slot of our choice.
    let (grandchild, s2) = split(&specs, child, Some(slot + (end - slot) / 2));
    wait_everywhere(&specs, grandchild, (s2, end));
    write(&mut client, &mut acked, 100, "again");
    check_all(&mut client, &acked, &[0, 1, 2]);
    // Every store restarts (SIGKILL): the regions and the data come back.
    for s in stores.iter_mut() {
        if let Some(server) = s.take() {
            server.kill();
        }
    }
    let _stores = start_stores(&specs, &coord_addr);
    wait_everywhere(&specs, grandchild, (s2, end));
    wait_everywhere(&specs, child, (slot, s2));
    let mut client = ClusterClient::new(&specs);
    write(&mut client, &mut acked, 60, "restarted");
    check_all(&mut client, &acked, &[0, 1, 2]);
    let now = coord_regions(&coord);
    assert!(tiles(&now), "{now:?}");
    assert_eq!(now.len(), before.len() + 2, "{now:?}");
}

/// A key whose hash slot is in `[start, end)` (the `n`-th found).
fn key_in(start: u32, end: u32, n: usize) -> String {
    (0..)
        .map(|i| format!("k{i}"))
        .filter(|k| (start..end).contains(&u32::from(nokv_gateway::model::slot(k.as_bytes()))))
        .nth(n)
        .expect("a key")
}

#[test]
fn a_store_without_a_replica_routes_a_new_region_from_the_coordinator() {
    let Forwarding {
        dir,
        coord,
        server: _server,
        coord_addr,
        specs,
        stores: _stores,
    } = forwarding_cluster(&[]);
    // A fourth store joins after the bootstrap: it holds no replica (the scheduler is off).
    let fourth = StoreSpec {
        workdir: dir.path().join("store-4"),
        redis: free_addr(),
        rpc: free_addr(),
        redirect: "forward",
    };
    let _fourth = start_store(&fourth, &coord_addr);
    let mut client = ClusterClient::new(&specs);
    assert!(
        client.set(0, "warm", "up", OP_BOUND),
        "{}",
        client.log_tails()
    );
    let (parent, start, end, _) = coord_regions(&coord)[2];
    let (child, slot) = split(&specs, parent, None);
    wait_everywhere(&specs, child, (slot, end));
    // Through the fourth store: keys of the new region and of its parent, written and read
    // back (its route table learns the new region from the coordinator's routes).
    let mut c = Client::connect(&fourth.redis);
    let deadline = Instant::now() + OP_BOUND;
    for (i, (s, e)) in [(slot, end), (start, slot)].into_iter().enumerate() {
        for n in 0..20 {
            let k = key_in(s, e, n);
            let v = format!("v{i}-{n}");
            loop {
                match c.cmd(&format!("SET {k} {v}")) {
                    R::Simple(ok) if ok == "OK" => break,
                    R::Error(e) if e.starts_with("TRYAGAIN") || e.starts_with("CLUSTERDOWN") => {
                        assert!(
                            Instant::now() < deadline,
                            "SET {k} through the fourth store: {e}"
                        );
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    other => panic!("SET {k} through the fourth store: {other:?}"),
                }
            }
            assert_eq!(
                c.cmd(&format!("GET {k}")),
                R::bulk(&v),
                "GET {k} through the fourth store"
            );
            assert_eq!(
                client.get(1, &k, OP_BOUND),
                R::bulk(&v),
                "GET {k} through the cluster"
            );
        }
    }
}

/// A client writing `during:<i>` keys through every store in a thread of its own (at
/// most 20 000), until [`Writer::finish`].
struct Writer {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<BTreeMap<String, String>>,
}

impl Writer {
    fn spawn(specs: &[StoreSpec]) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let (specs, flag) = (specs.to_vec(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut client = ClusterClient::new(&specs);
            let mut acked = BTreeMap::new();
            for i in 0..20_000 {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                let (k, v) = (format!("during:{i}"), format!("d-{i}"));
                if client.set(i % 3, &k, &v, OP_BOUND) {
                    acked.insert(k, v);
                }
            }
            acked
        });
        Writer { stop, thread }
    }

    /// Lets it write a little longer, stops it, and returns the writes it got
    /// acknowledged (at least one, or the test fails: `what` ran without writes).
    fn finish(self, what: &str) -> BTreeMap<String, String> {
        std::thread::sleep(Duration::from_millis(500));
        self.stop.store(true, Ordering::Relaxed);
        let acked = self.thread.join().expect("writer");
        assert!(!acked.is_empty(), "no write acknowledged during the {what}");
        acked
    }
}

/// Moves the leadership of `region` to `store` (its id), bounded.
fn lead_on(specs: &[StoreSpec], region: u64, store: u64) {
    let cmd = format!("NOKV.REGION TRANSFERLEADER {region} {store}");
    match on_leader(specs, &cmd) {
        (_, R::Simple(ok)) if ok == "OK" => {}
        (i, other) => panic!("{cmd} on {}: {other:?}", specs[i].redis),
    }
}

/// Waits until no store lists `region` (bounded).
fn wait_gone(specs: &[StoreSpec], region: u64) {
    let gone = format!("region={region} ");
    wait_listing(specs, &format!("still lists region {region}"), |lines| {
        !lines.iter().any(|t| t.starts_with(&gone))
    });
}

#[test]
fn a_merge_in_a_cluster_reaches_every_replica_and_the_coordinator_and_loses_no_write() {
    let Forwarding {
        dir: _dir,
        coord,
        server: _server,
        coord_addr,
        specs,
        mut stores,
    } = forwarding_cluster(&[]);
    let mut client = ClusterClient::new(&specs);
    let mut acked = BTreeMap::new();
    write(&mut client, &mut acked, 100, "before");
    let (parent, start, end, _) = coord_regions(&coord)[0];
    let (child, slot) = split(&specs, parent, None);
    wait_everywhere(&specs, child, (slot, end));
    wait_everywhere(&specs, parent, (start, slot));
    // Both leaderships on the first store: a merge runs where both regions are led.
    let first = id_at(&coord, &specs[0].redis);
    lead_on(&specs, parent, first);
    lead_on(&specs, child, first);
    // Clients write through every store while the regions merge.
    let writer = Writer::spawn(&specs);
    // The coordinator's record of the child's cores reaches the stores within a refresh:
    // until then the merge answers "retry".
    let cmd = format!("NOKV.REGION MERGE {parent} {child}");
    let deadline = Instant::now() + OP_BOUND;
    let survivor = loop {
        let mut c = Client::connect(&specs[0].redis);
        match c.cmd(&cmd) {
            R::Int(id) => break id as u64,
            R::Error(e) if e.ends_with("retry") || e.starts_with("TRYAGAIN") => {}
            R::Error(e) if e.starts_with("MOVED") => {
                // An election moved a leadership away: back to the first store.
                lead_on(&specs, parent, first);
                lead_on(&specs, child, first);
            }
            other => panic!("{cmd}: {other:?}\n{}", log_tails(&specs)),
        }
        assert!(Instant::now() < deadline, "{cmd}: not done in time");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        survivor == parent || survivor == child,
        "survivor {survivor}"
    );
    let merged = if survivor == parent { child } else { parent };
    // A follower's store is killed as the merge is acknowledged (it may not have applied
    // the commit yet): restarted, it finishes the merge from its log.
    if let Some(server) = stores[2].take() {
        server.kill();
    }
    stores[2] = Some(start_store(&specs[2], &coord_addr));
    wait_everywhere(&specs, survivor, (start, end));
    wait_gone(&specs, merged);
    // The leader reported the merge: the coordinator's routes tile the space without the
    // merged region.
    let deadline = Instant::now() + OP_BOUND;
    loop {
        let now = coord_regions(&coord);
        let has = now
            .iter()
            .any(|r| r.0 == survivor && r.1 == start && r.2 == end);
        if tiles(&now) && has && now.iter().all(|r| r.0 != merged) {
            break;
        }
        assert!(Instant::now() < deadline, "coordinator routes {now:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let during = writer.finish("merge");
    eprintln!(
        "merged {merged} into {survivor}; {} writes acknowledged while merging",
        during.len()
    );
    acked.extend(during);
    write(&mut client, &mut acked, 100, "after");
    check_all(&mut client, &acked, &[0, 1, 2]);
    // Every store restarts (SIGKILL): the merged region stays merged, nothing is lost.
    for s in stores.iter_mut() {
        if let Some(server) = s.take() {
            server.kill();
        }
    }
    let _stores = start_stores(&specs, &coord_addr);
    wait_everywhere(&specs, survivor, (start, end));
    wait_gone(&specs, merged);
    let mut client = ClusterClient::new(&specs);
    write(&mut client, &mut acked, 50, "restarted");
    check_all(&mut client, &acked, &[0, 1, 2]);
    let now = coord_regions(&coord);
    assert!(tiles(&now), "{now:?}");
}

/// The core store `spec` lists `region` on (None: not listed).
fn core_on(spec: &StoreSpec, region: u64) -> Option<usize> {
    let want = format!("region={region} ");
    let mut c = Client::connect(&spec.redis);
    let R::Array(lines) = c.cmd("NOKV.REGION LIST") else {
        return None;
    };
    lines.iter().find_map(|l| match l {
        R::Bulk(b) => {
            let t = String::from_utf8_lossy(b);
            if !t.starts_with(&want) {
                return None;
            }
            t.split_whitespace()
                .find_map(|w| w.strip_prefix("core="))
                .and_then(|c| c.parse().ok())
        }
        _ => None,
    })
}

/// The core the coordinator records for `region`'s replica on store `store`.
fn coord_core(coord: &Coordinator, region: u64, store: u64) -> Option<u32> {
    let routes: Vec<Route> = coord
        .scan_regions(&ScanRegionsRequest::default())
        .expect("scan regions");
    routes
        .iter()
        .filter_map(|r| r.region.as_ref())
        .find(|r| r.id == region)?
        .peers
        .iter()
        .find(|p| p.store_id == store)?
        .core
}

/// Keys of `region` each store holds (`NOKV.REGION LOCALCOUNT`), bounded: waits until all
/// stores agree and returns the count.
fn same_count_everywhere(specs: &[StoreSpec], region: u64) -> i64 {
    let cmd = format!("NOKV.REGION LOCALCOUNT {region}");
    let deadline = Instant::now() + OP_BOUND;
    loop {
        let counts: Vec<R> = specs
            .iter()
            .map(|s| Client::connect(&s.redis).cmd(&cmd))
            .collect();
        if let [R::Int(a), rest @ ..] = counts.as_slice() {
            if rest.iter().all(|c| *c == R::Int(*a)) {
                return *a;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{cmd}: the stores never agreed: {counts:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_replica_moved_between_cores_in_a_cluster_keeps_its_region_served_and_loses_no_write() {
    let Forwarding {
        dir: _dir,
        coord,
        server: _server,
        coord_addr,
        specs,
        mut stores,
    } = forwarding_cluster(&[]);
    let mut client = ClusterClient::new(&specs);
    let mut acked = BTreeMap::new();
    write(&mut client, &mut acked, 100, "before");
    // The first region, led by the first store, moves to that store's other core.
    let first = id_at(&coord, &specs[0].redis);
    let (region, ..) = coord_regions(&coord)[0];
    lead_on(&specs, region, first);
    let from = core_on(&specs[0], region).expect("the region on the first store");
    let to = 1 - from;
    let writer = Writer::spawn(&specs);
    std::thread::sleep(Duration::from_millis(300));
    let cmd = format!("NOKV.REGION MOVE {region} {to}");
    let deadline = Instant::now() + OP_BOUND;
    let took = loop {
        let mut c = Client::connect(&specs[0].redis);
        let sent = Instant::now();
        match c.cmd(&cmd) {
            R::Simple(ok) if ok == "OK" => break sent.elapsed(),
            R::Error(e) if e.ends_with("retry") || e.starts_with("TRYAGAIN") => {}
            R::Error(e) if e.starts_with("MOVED") => lead_on(&specs, region, first),
            other => panic!("{cmd}: {other:?}\n{}", log_tails(&specs)),
        }
        assert!(Instant::now() < deadline, "{cmd}: not done in time");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(core_on(&specs[0], region), Some(to));
    // The coordinator learns the replica's new core (the other stores address it there).
    let deadline = Instant::now() + OP_BOUND;
    while coord_core(&coord, region, first) != Some(to as u32) {
        assert!(
            Instant::now() < deadline,
            "coordinator records core {:?}",
            coord_core(&coord, region, first)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let during = writer.finish("move");
    eprintln!(
        "region {region} moved from core {from} to {to} in {took:?}; {} writes acknowledged meanwhile",
        during.len()
    );
    acked.extend(during);
    write(&mut client, &mut acked, 100, "after");
    // The moved replica replicates: it holds as many of the region's keys as the others.
    let keys = same_count_everywhere(&specs, region);
    assert!(keys > 0, "region {region} holds no key");
    check_all(&mut client, &acked, &[0, 1, 2]);
    // The first store restarts (SIGKILL): the replica is on its new core, nothing lost.
    if let Some(server) = stores[0].take() {
        server.kill();
    }
    stores[0] = Some(start_store(&specs[0], &coord_addr));
    assert_eq!(core_on(&specs[0], region), Some(to));
    let mut client = ClusterClient::new(&specs);
    write(&mut client, &mut acked, 50, "restarted");
    same_count_everywhere(&specs, region);
    check_all(&mut client, &acked, &[0, 1, 2]);
    // Back to the first core, the store aborting once the target core holds the replica
    // durably, before the source deleted its copy (a debug knob): restarted, it keeps the
    // newer copy, on the target core.
    if let Some(server) = stores[0].take() {
        server.kill();
    }
    stores[0] = Some(start_store_env(
        &specs[0],
        &coord_addr,
        &[("NOKV_DEBUG_ABORT_AFTER_MOVE_IN", "1")],
    ));
    lead_on(&specs, region, first);
    let cmd = format!("NOKV.REGION MOVE {region} {from}");
    let words: Vec<&[u8]> = cmd.split_whitespace().map(str::as_bytes).collect();
    let deadline = Instant::now() + OP_BOUND;
    loop {
        let Some(mut c) = Client::try_connect(&specs[0].redis, IO_TIMEOUT) else {
            break;
        };
        match c.try_cmd(&words) {
            // The abort closed the connection.
            None => break,
            Some(R::Error(e)) if e.ends_with("retry") || e.starts_with("TRYAGAIN") => {}
            Some(R::Error(e)) if e.starts_with("MOVED") => lead_on(&specs, region, first),
            Some(other) => panic!("{cmd}: {other:?}"),
        }
        assert!(Instant::now() < deadline, "{cmd}: not done in time");
        std::thread::sleep(Duration::from_millis(200));
    }
    if let Some(server) = stores[0].take() {
        server.kill();
    }
    stores[0] = Some(start_store(&specs[0], &coord_addr));
    let log = std::fs::read_to_string(specs[0].workdir.with_extension("stderr.log"))
        .expect("the store's log");
    assert!(
        log.contains("a region on two cores after an interrupted move"),
        "the abort did not leave the region on two cores:\n{log}"
    );
    assert_eq!(core_on(&specs[0], region), Some(from));
    let mut client = ClusterClient::new(&specs);
    write(&mut client, &mut acked, 50, "aborted");
    same_count_everywhere(&specs, region);
    check_all(&mut client, &acked, &[0, 1, 2]);
}

#[test]
fn a_load_on_one_core_of_a_cluster_s_store_moves_replicas_to_its_other_core() {
    let flags = [
        "--region-max-bytes",
        "0",
        "--merge-max-bytes",
        "0",
        "--split-load-qps",
        "0",
        "--split-check-ms",
        "500",
    ];
    let Forwarding {
        dir: _dir,
        coord,
        server: _server,
        specs,
        stores: _stores,
        ..
    } = forwarding_cluster(&flags);
    // Every region on core 0 of the first store is led there: its load is that core's.
    let first = id_at(&coord, &specs[0].redis);
    let on_core0: Vec<(u64, u32, u32)> = coord_regions(&coord)
        .into_iter()
        .filter(|r| core_on(&specs[0], r.0) == Some(0))
        .map(|r| (r.0, r.1, r.2))
        .collect();
    assert!(on_core0.len() >= 2, "regions on core 0: {on_core0:?}");
    for r in &on_core0 {
        lead_on(&specs, r.0, first);
    }
    let keys: Vec<String> = (0..)
        .map(|i| format!("skew:{i}"))
        .filter(|k| {
            let s = u32::from(nokv_gateway::model::slot(k.as_bytes()));
            on_core0.iter().any(|&(_, a, b)| a <= s && s < b)
        })
        .take(200)
        .collect();
    // Writes through the first store (it leads every one of these keys' regions) until a
    // region moved to core 1 by itself, bounded.
    let mut client = ClusterClient::new(&specs);
    let mut acked = BTreeMap::new();
    let end = Instant::now() + Duration::from_secs(90);
    let mut round = 0;
    let moved = loop {
        for k in &keys {
            let v = format!("{k}-{round}");
            if client.set(0, k, &v, OP_BOUND) {
                acked.insert(k.clone(), v);
            }
        }
        round += 1;
        if let Some(r) = on_core0.iter().find(|r| core_on(&specs[0], r.0) == Some(1)) {
            break r.0;
        }
        assert!(
            Instant::now() < end,
            "no region moved to core 1 in time\n{}",
            log_tails(&specs)
        );
    };
    let log = std::fs::read_to_string(specs[0].workdir.with_extension("stderr.log"))
        .expect("the store's log");
    assert!(log.contains("to balance the cores"), "{log}");
    eprintln!("region {moved} moved to core 1 after {round} rounds of writes");
    // The coordinator learns the new core; the moved replica keeps replicating.
    let deadline = Instant::now() + OP_BOUND;
    while coord_core(&coord, moved, first) != Some(1) {
        assert!(Instant::now() < deadline, "coordinator record of {moved}");
        std::thread::sleep(Duration::from_millis(100));
    }
    same_count_everywhere(&specs, moved);
    check_all(&mut client, &acked, &[0, 1, 2]);
}

//! A coordinator that restarts (dropped without a clean close, then reopened on the same
//! workdir) keeps its stores, regions and routes; its TSO never goes backwards, even with
//! the wall clock stepped back; its ids never repeat. Also store liveness, and the
//! transaction GC safe point it derives from the clock and the stores' heartbeats.

use nokv_coordinator::proto::{Peer, Region, RegionHeartbeat, StoreMeta};
use nokv_coordinator::{Config, Coordinator, Error, ManualClock};
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

const CLUSTER: u64 = 42;

fn open(dir: &Path, clock: &Arc<ManualClock>) -> Coordinator {
    let mut cfg = Config::new(dir, CLUSTER);
    cfg.clock = clock.clone();
    Coordinator::open(cfg).expect("open coordinator")
}

fn store(n: u32) -> StoreMeta {
    StoreMeta {
        id: 0,
        rpc_addr: format!("127.0.0.1:{}", 20160 + n),
        redis_addr: format!("127.0.0.1:{}", 6380 + n),
        cores: 2,
        version: "test".into(),
        ..Default::default()
    }
}

/// A new coordinator (fresh workdir, manual clock) with `stores` stores registered; their ids.
fn fresh(stores: u32) -> (tempfile::TempDir, Arc<ManualClock>, Coordinator, Vec<u64>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(1_800_000_000_000));
    let c = open(dir.path(), &clock);
    let ids = (0..stores)
        .map(|n| c.register_store(store(n)).expect("register"))
        .collect();
    (dir, clock, c, ids)
}

#[test]
fn restart_keeps_catalog_and_tso_and_ids_stay_monotonic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(1_800_000_000_000));
    let mut ts_seen = 0u64;
    let mut ids_seen = HashSet::new();
    let (mut stores, regions, routes) = {
        let c = open(dir.path(), &clock);
        let ids: Vec<u64> = (0..3)
            .map(|n| c.register_store(store(n)).expect("register"))
            .collect();
        for &id in &ids {
            assert!(ids_seen.insert(id));
        }
        let regions = c
            .bootstrap(&nokv_coordinator::proto::BootstrapRequest {
                split_keys: vec![b"g".to_vec(), b"p".to_vec()],
                replicas: 3,
            })
            .expect("bootstrap");
        assert_eq!(regions.len(), 3);
        for r in &regions {
            assert!(ids_seen.insert(r.id));
            for p in &r.peers {
                assert!(ids_seen.insert(p.id));
            }
        }
        // A leader reports: the leader is persisted.
        let r0 = regions[0].clone();
        c.region_heartbeat(RegionHeartbeat {
            leader_peer_id: r0.peers[1].id,
            region: Some(r0),
            approximate_size_bytes: 1 << 20,
            approximate_keys: 1000,
            measured: true,
            requests_per_sec: 0,
        })
        .expect("heartbeat");
        for i in 0..50 {
            clock.advance_ms(if i % 10 == 0 { 2500 } else { 1 });
            let first = c.get_ts(3).expect("ts");
            assert!(first > ts_seen);
            ts_seen = first + 2;
            let id = c.alloc_ids(7).expect("ids");
            for x in id..id + 7 {
                assert!(ids_seen.insert(x), "id {x} repeated");
            }
        }
        let routes: Vec<_> = [b"a".as_slice(), b"h", b"zzz"]
            .iter()
            .map(|k| c.route_by_key(k).expect("route"))
            .collect();
        assert_eq!(routes[0].leader_peer_id, regions[0].peers[1].id);
        assert_eq!(routes[0].stores.len(), 3);
        let st = c.state();
        (st.stores().clone(), regions, routes)
        // Dropped without close: the restart must not depend on a clean shutdown.
    };
    // The wall clock steps back 10 s across the restart.
    clock.set_wall_ms(1_800_000_000_000 - 10_000);
    for round in 0..3 {
        let c = open(dir.path(), &clock);
        let st = c.state();
        assert_eq!(st.stores(), &stores, "round {round}");
        assert!(st.bootstrapped());
        for (r, want) in regions.iter().zip(&routes) {
            let got = c.route_by_id(r.id).expect("route by id");
            assert_eq!(
                (&got.region, got.leader_peer_id),
                (&want.region, want.leader_peer_id)
            );
            let ids = |r: &nokv_coordinator::proto::Route| {
                r.stores.iter().map(|s| s.id).collect::<Vec<_>>()
            };
            assert_eq!(ids(&got), ids(want));
            for s in &got.stores {
                assert_eq!(
                    Some(s),
                    stores.get(&s.id),
                    "route carries the current addresses"
                );
            }
            assert_eq!(c.route_by_key(&r.start_key).expect("route by key"), got);
        }
        let first = c.get_ts(1).expect("ts");
        assert!(first > ts_seen, "TSO went back: {first} <= {ts_seen}");
        ts_seen = first;
        let id = c.alloc_ids(1).expect("id");
        assert!(ids_seen.insert(id), "id {id} repeated after restart");
        // A new store gets a fresh id too.
        let mut fresh = store(10 + round);
        let s = c.register_store(fresh.clone()).expect("register");
        assert!(ids_seen.insert(s));
        fresh.id = s;
        stores.insert(s, fresh);
        // The re-registered store keeps its id.
        let mut again = stores.values().next().cloned().expect("a store");
        again.redis_addr = "127.0.0.1:7000".into();
        assert_eq!(
            c.register_store(again.clone()).expect("re-register"),
            again.id
        );
        stores.insert(again.id, again);
        assert!(matches!(
            c.bootstrap(&Default::default()),
            Err(Error::AlreadyBootstrapped)
        ));
        if round == 2 {
            c.close().expect("clean close");
        }
    }
}

#[test]
fn a_workdir_of_another_cluster_or_in_use_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(1_800_000_000_000));
    let c = open(dir.path(), &clock);
    let mut cfg = Config::new(dir.path(), CLUSTER);
    cfg.clock = clock.clone();
    assert!(
        matches!(Coordinator::open(cfg), Err(Error::Engine { .. })),
        "second opener"
    );
    drop(c);
    let mut cfg = Config::new(dir.path(), CLUSTER + 1);
    cfg.clock = clock.clone();
    match Coordinator::open(cfg) {
        Err(Error::ClusterMismatch { expected, found }) => {
            assert_eq!((expected, found), (CLUSTER + 1, CLUSTER));
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("opened a workdir of another cluster"),
    }
}

#[test]
fn region_heartbeats_refuse_stale_epochs_and_splits_replace_their_parent() {
    let (_dir, _clock, c, stores) = fresh(4);
    let regions = c
        .bootstrap(&nokv_coordinator::proto::BootstrapRequest {
            split_keys: vec![],
            replicas: 3,
        })
        .expect("bootstrap");
    let parent = regions[0].clone();
    let holders: HashSet<u64> = parent.peers.iter().map(|p| p.store_id).collect();
    assert_eq!(holders.len(), 3, "three replicas on three stores");

    // A split: the parent keeps [.., m) with version 2, the child [m, ..) appears.
    let mut left = parent.clone();
    left.end_key = b"m".to_vec();
    left.epoch_version = 2;
    let child_id = c.alloc_ids(4).expect("ids");
    let right = right_child(&parent, child_id);
    // The child reports first: it overlaps the parent's old record (version 1), which goes.
    c.region_heartbeat(RegionHeartbeat {
        leader_peer_id: right.peers[0].id,
        region: Some(right.clone()),
        ..Default::default()
    })
    .expect("child heartbeat");
    assert_eq!(
        c.route_by_key(b"z").expect("route").region.map(|r| r.id),
        Some(child_id)
    );
    assert!(matches!(c.route_by_key(b"a"), Err(Error::KeyNotCovered(_))));
    c.region_heartbeat(RegionHeartbeat {
        leader_peer_id: left.peers[0].id,
        region: Some(left.clone()),
        ..Default::default()
    })
    .expect("parent heartbeat");
    let route = c.route_by_key(b"a").expect("route");
    let got = route.region.expect("region");
    assert_eq!(got.end_key, b"m".to_vec());
    // Cores the leader did not send are kept from the record.
    assert!(got.peers.iter().all(|p| p.core.is_some()));

    // The old parent descriptor (version 1) is stale now.
    match c.region_heartbeat(RegionHeartbeat {
        leader_peer_id: parent.peers[0].id,
        region: Some(parent.clone()),
        ..Default::default()
    }) {
        Err(Error::StaleEpoch { current, .. }) => assert_eq!(current.epoch_version, 2),
        other => panic!("stale heartbeat accepted: {other:?}"),
    }

    // A new replica goes to the one store without one, and its core is remembered.
    let placed = c.place_replica(got.id).expect("place");
    let spare = stores
        .iter()
        .copied()
        .find(|s| !holders.contains(s))
        .expect("spare");
    assert_eq!(placed.store_id, spare);
    assert!(matches!(
        c.place_replica(got.id),
        Err(Error::NotEnoughStores { need: 1, have: 0 })
    ));
    let mut grown = got.clone();
    grown.epoch_conf_version += 1;
    grown.peers.push(Peer {
        id: placed.id,
        store_id: placed.store_id,
        core: None,
        learner: false,
    });
    c.region_heartbeat(RegionHeartbeat {
        leader_peer_id: grown.peers[0].id,
        region: Some(grown.clone()),
        ..Default::default()
    })
    .expect("grown heartbeat");
    let r = c
        .route_by_id(got.id)
        .expect("route")
        .region
        .expect("region");
    assert_eq!(r.peer(placed.id).and_then(|p| p.core), placed.core);
    assert_eq!(c.route_by_id(got.id).expect("route").stores.len(), 4);
    assert!(c.state().pending().is_empty());

    // A heartbeat naming an unknown store or a leader outside the peers is refused.
    let mut bad = grown.clone();
    bad.epoch_conf_version += 1;
    bad.peers[0].store_id = 999_999;
    assert!(matches!(
        c.region_heartbeat(RegionHeartbeat {
            leader_peer_id: bad.peers[1].id,
            region: Some(bad),
            ..Default::default()
        }),
        Err(Error::StoreNotFound(999_999))
    ));
    assert!(matches!(
        c.region_heartbeat(RegionHeartbeat {
            leader_peer_id: 12345,
            region: Some(grown),
            ..Default::default()
        }),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn a_store_without_heartbeats_goes_down_and_gets_no_replicas() {
    let (_dir, clock, c, ids) = fresh(3);
    clock.advance_ms(20_000);
    for &id in &ids[..2] {
        c.store_heartbeat(nokv_coordinator::proto::StoreStats {
            store_id: id,
            ..Default::default()
        })
        .expect("heartbeat");
    }
    clock.advance_ms(15_000);
    let states: Vec<i32> = ids
        .iter()
        .map(|&id| c.store_info(id).expect("info").state)
        .collect();
    use nokv_coordinator::proto::StoreState;
    assert_eq!(
        states,
        vec![
            StoreState::Up as i32,
            StoreState::Up as i32,
            StoreState::Down as i32
        ]
    );
    assert!(matches!(
        c.bootstrap(&nokv_coordinator::proto::BootstrapRequest {
            split_keys: vec![],
            replicas: 3
        }),
        Err(Error::NotEnoughStores { need: 3, have: 2 })
    ));
    let regions = c
        .bootstrap(&nokv_coordinator::proto::BootstrapRequest {
            split_keys: vec![],
            replicas: 2,
        })
        .expect("bootstrap");
    assert!(regions[0].peers.iter().all(|p| p.store_id != ids[2]));
    assert!(matches!(
        c.store_heartbeat(nokv_coordinator::proto::StoreStats {
            store_id: 777,
            ..Default::default()
        }),
        Err(Error::StoreNotFound(777))
    ));
}

#[test]
fn a_split_reported_parent_first_gives_the_child_its_parents_cores() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(1_800_000_000_000));
    let c = open(dir.path(), &clock);
    for n in 0..3 {
        c.register_store(store(n)).expect("register");
    }
    let parent = c
        .bootstrap(&nokv_coordinator::proto::BootstrapRequest {
            split_keys: vec![],
            replicas: 3,
        })
        .expect("bootstrap")
        .remove(0);
    let mut left = parent.clone();
    left.end_key = b"m".to_vec();
    left.epoch_version = 2;
    for p in &mut left.peers {
        p.core = None;
    }
    c.region_heartbeat(RegionHeartbeat {
        leader_peer_id: left.peers[0].id,
        region: Some(left.clone()),
        ..Default::default()
    })
    .expect("parent heartbeat");
    let child_id = c.alloc_ids(4).expect("ids");
    let right = right_child(&parent, child_id);
    c.region_heartbeat(RegionHeartbeat {
        leader_peer_id: right.peers[0].id,
        region: Some(right),
        ..Default::default()
    })
    .expect("child heartbeat");
    let got_left = c.route_by_key(b"a").expect("left").region.expect("region");
    let got_right = c.route_by_key(b"x").expect("right").region.expect("region");
    for p in &parent.peers {
        let core_of = |r: &Region| {
            r.peers
                .iter()
                .find(|q| q.store_id == p.store_id)
                .and_then(|q| q.core)
        };
        assert_eq!(core_of(&got_left), p.core, "left keeps its record's cores");
        assert_eq!(
            core_of(&got_right),
            p.core,
            "child inherits the parent's cores"
        );
    }
}

#[test]
fn a_single_process_workdir_does_not_open_as_a_replica() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(1_800_000_000_000));
    let c = open(dir.path(), &clock);
    c.register_store(store(0)).expect("register");
    c.close().expect("close");
    let mut cfg = Config::new(dir.path(), CLUSTER);
    cfg.replica = Some(nokv_coordinator::ReplicaConfig::new(
        1,
        vec!["127.0.0.1:1".into()],
    ));
    match Coordinator::open(cfg) {
        Err(Error::InvalidArgument(m)) => assert!(m.contains("fresh workdirs"), "{m}"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a single-process workdir opened as a replica"),
    }
    // It still opens as what it is.
    open(dir.path(), &clock).close().expect("reopen");
}

/// The right half `[m, end)` of a split of `parent` (version 2), region `child_id` with
/// peers `child_id + 1 ..` on the parent's stores.
fn right_child(parent: &Region, child_id: u64) -> Region {
    Region {
        id: child_id,
        start_key: b"m".to_vec(),
        end_key: vec![],
        epoch_version: 2,
        epoch_conf_version: 1,
        peers: parent
            .peers
            .iter()
            .enumerate()
            .map(|(i, p)| Peer {
                id: child_id + 1 + i as u64,
                store_id: p.store_id,
                core: None,
                learner: false,
            })
            .collect(),
    }
}

#[test]
fn a_new_store_at_a_known_address_replaces_the_old_one_at_once() {
    use nokv_coordinator::proto::StoreState;
    let (_dir, _clock, c, ids) = fresh(3);
    let state = |id: u64| c.store_info(id).expect("info").state;
    assert_eq!(state(ids[2]), StoreState::Up as i32);
    // Store 2's disk was wiped: it starts again at the same address, with no id.
    let wiped = c
        .register_store(store(2))
        .expect("register the wiped store");
    assert!(!ids.contains(&wiped), "a wiped store gets a new id");
    // Within `store_down_after` of its last heartbeat, the old store already counts as
    // down (and gets no new replicas); the new one is up.
    assert_eq!(state(ids[2]), StoreState::Down as i32);
    assert_eq!(state(wiped), StoreState::Up as i32);
    assert_eq!(
        c.store_info(ids[2]).expect("info").since_heartbeat_ms,
        u64::MAX
    );
    let regions = c
        .bootstrap(&nokv_coordinator::proto::BootstrapRequest {
            split_keys: vec![],
            replicas: 3,
        })
        .expect("bootstrap");
    assert!(regions[0].peers.iter().all(|p| p.store_id != ids[2]));
    // The other stores are untouched.
    assert_eq!(state(ids[0]), StoreState::Up as i32);
    // The old store registering again with its id (it moved, data intact) is up again.
    let mut moved = store(7);
    moved.id = ids[2];
    assert_eq!(c.register_store(moved).expect("re-register"), ids[2]);
    assert_eq!(state(ids[2]), StoreState::Up as i32);
}

#[test]
fn the_txn_safe_point_trails_the_clock_stops_at_locks_and_waits_for_every_store() {
    use nokv_coordinator::proto::StoreStats;
    use nokv_coordinator::tso::{compose, physical};
    use nokv_coordinator::Clock;
    let (_dir, clock, c, ids) = fresh(2);
    let life = nokv_coordinator::service::DEFAULT_TXN_GC_LIFE.as_millis() as u64;
    let beat = |id: u64, min_lock_ts: Option<u64>| {
        c.store_heartbeat(StoreStats {
            store_id: id,
            min_lock_ts,
            ..Default::default()
        })
        .expect("heartbeat");
    };
    let behind = |clock: &ManualClock| compose(clock.wall_ms() - life, 0);
    // Not before every store reported.
    assert_eq!(c.txn_safe_point(), 0);
    beat(ids[0], None);
    assert_eq!(c.txn_safe_point(), 0, "store 2 has not reported");
    beat(ids[1], None);
    assert_eq!(c.txn_safe_point(), behind(&clock));
    // A lock holds it at its start; it never goes back.
    let lock = behind(&clock) + compose(1_000, 0);
    beat(ids[1], Some(lock));
    clock.advance_ms(5_000);
    beat(ids[0], None);
    assert_eq!(c.txn_safe_point(), lock);
    beat(ids[1], Some(compose(1, 0)));
    assert_eq!(c.txn_safe_point(), lock, "lowered");
    beat(ids[1], None);
    assert_eq!(c.txn_safe_point(), behind(&clock));
    // A store down (no heartbeat for longer than --store-down-after) stops it.
    let before = c.txn_safe_point();
    for _ in 0..40 {
        clock.advance_ms(1_000);
        beat(ids[0], None);
    }
    assert_eq!(c.txn_safe_point(), before, "advanced with store 2 down");
    beat(ids[1], None);
    assert_eq!(physical(c.txn_safe_point()), clock.wall_ms() - life);
}

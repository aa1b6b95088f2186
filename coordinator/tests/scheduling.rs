//! The scheduler through the service, driven by region heartbeats as leaders running each
//! operator would send them. Decommission: the scheduler drains the store, the store ends
//! `Removed`, that is persisted across a restart, and a removed store cannot register or
//! heartbeat again. Size balance: measured sizes in the heartbeats move a replica off a
//! store holding too many bytes. Load balance: reported request rates move leaderships
//! off a store leading too much load.

use nokv_coordinator::proto::{
    request, response, BootstrapRequest, Operator, OperatorKind, Region, RegionHeartbeat, Request,
    SetSchedulingRequest, StoreAdminState, StoreMeta, StoreStats,
};
use nokv_coordinator::{Config, Coordinator, Error, ManualClock};
use std::path::Path;
use std::sync::Arc;

const CLUSTER: u64 = 42;

fn open(dir: &Path, clock: &Arc<ManualClock>) -> Coordinator {
    let mut cfg = Config::new(dir, CLUSTER);
    cfg.clock = clock.clone();
    cfg.scheduler.enabled = true;
    Coordinator::open(cfg).expect("open coordinator")
}

fn store(n: u32) -> StoreMeta {
    StoreMeta {
        rpc_addr: format!("127.0.0.1:{}", 21160 + n),
        redis_addr: format!("127.0.0.1:{}", 6480 + n),
        cores: 2,
        version: "test".into(),
        ..Default::default()
    }
}

/// A coordinator in `dir` with four stores registered, and their ids.
fn four_stores(dir: &Path, clock: &Arc<ManualClock>) -> (Coordinator, Vec<u64>) {
    let c = open(dir, clock);
    let ids = (0..4)
        .map(|n| c.register_store(store(n)).expect("register"))
        .collect();
    (c, ids)
}

fn admin(c: &Coordinator, id: u64) -> StoreAdminState {
    c.store_info(id)
        .expect("info")
        .meta
        .expect("meta")
        .admin_state()
}

/// Every region reports once (leader: the recorded one, else the first peer), with its
/// measured size when `size` gives one; each operator is applied to the descriptor as its
/// leader would. Returns the operators run.
fn round(
    c: &Coordinator,
    stores: &[u64],
    next_peer: &mut u64,
    size: &dyn Fn(u64) -> Option<u64>,
) -> Vec<Operator> {
    round_loaded(c, stores, next_peer, size, &|_| 0)
}

/// [`round`] with each region's requests per second as `load` gives them.
fn round_loaded(
    c: &Coordinator,
    stores: &[u64],
    next_peer: &mut u64,
    size: &dyn Fn(u64) -> Option<u64>,
    load: &dyn Fn(u64) -> u64,
) -> Vec<Operator> {
    // A removed store is gone (its heartbeats are refused).
    for &id in stores
        .iter()
        .filter(|id| admin(c, **id) != StoreAdminState::Removed)
    {
        c.store_heartbeat(StoreStats {
            store_id: id,
            ..Default::default()
        })
        .expect("store heartbeat");
    }
    let mut ran = Vec::new();
    let regions: Vec<(Region, u64)> = c
        .state()
        .regions_in_order()
        .map(|e| (e.region.clone(), e.leader_peer_id))
        .collect();
    for (mut region, leader) in regions {
        let leader = if leader == 0 {
            region.peers[0].id
        } else {
            leader
        };
        let measured = size(region.id);
        let op = c
            .region_heartbeat_op(RegionHeartbeat {
                region: Some(region.clone()),
                leader_peer_id: leader,
                approximate_size_bytes: measured.unwrap_or(0),
                measured: measured.is_some(),
                requests_per_sec: load(region.id),
                ..Default::default()
            })
            .expect("region heartbeat");
        let Some(op) = op else { continue };
        let peer = op.peer.clone().expect("peer");
        let mut new_leader = leader;
        match op.kind() {
            OperatorKind::AddLearner => region.peers.push(peer),
            OperatorKind::Promote => region
                .peers
                .iter_mut()
                .filter(|p| p.id == peer.id)
                .for_each(|p| p.learner = false),
            OperatorKind::RemovePeer => {
                assert_ne!(peer.id, leader, "a leader is never removed");
                region.peers.retain(|p| p.id != peer.id);
            }
            OperatorKind::TransferLeader => new_leader = peer.id,
            OperatorKind::Unknown => panic!("unknown operator"),
        }
        if op.kind() != OperatorKind::TransferLeader {
            region.epoch_conf_version += 1;
        }
        let voters = region.peers.iter().filter(|p| !p.learner).count();
        assert!(voters >= 3, "region {} fell to {voters} voters", region.id);
        *next_peer += 1;
        // The leader reports the change (the coordinator then sees the operator done).
        c.region_heartbeat(RegionHeartbeat {
            region: Some(region),
            leader_peer_id: new_leader,
            ..Default::default()
        })
        .expect("report the change");
        ran.push(op);
    }
    ran
}

#[test]
fn a_decommissioned_store_is_drained_then_removed_and_stays_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(1_800_000_000_000));
    let (c, ids) = four_stores(dir.path(), &clock);
    c.bootstrap(&BootstrapRequest {
        split_keys: vec![b"b".to_vec(), b"d".to_vec(), b"f".to_vec()],
        replicas: 3,
    })
    .expect("bootstrap");
    let drained = ids[1];
    let holds = |c: &Coordinator| {
        c.state()
            .regions_in_order()
            .filter(|e| e.region.peers.iter().any(|p| p.store_id == drained))
            .count()
    };
    assert!(holds(&c) > 0);
    let info = c.decommission_store(drained).expect("decommission");
    assert_eq!(
        info.meta.expect("meta").admin_state(),
        StoreAdminState::Decommissioning
    );
    // It gets no new replica: a region on the three other stores has nowhere to go.
    let elsewhere = c
        .state()
        .regions_in_order()
        .find(|e| e.region.peers.iter().all(|p| p.store_id != drained))
        .map(|e| e.region.id)
        .expect("a region without a replica on the drained store");
    assert!(matches!(
        c.place_replica(elsewhere),
        Err(Error::NotEnoughStores { need: 1, have: 0 })
    ));
    // A registration of the draining store keeps the state.
    let mut again = store(1);
    again.id = drained;
    c.register_store(again.clone()).expect("re-register");
    assert_eq!(admin(&c, drained), StoreAdminState::Decommissioning);
    let mut next_peer = 0;
    let mut ran = Vec::new();
    for _ in 0..60 {
        clock.advance_ms(1_000);
        let r = round(&c, &ids, &mut next_peer, &|_| None);
        if r.is_empty() && holds(&c) == 0 {
            break;
        }
        ran.extend(r);
    }
    assert_eq!(holds(&c), 0, "every replica moved off the store");
    let kinds: Vec<OperatorKind> = ran.iter().map(|o| o.kind()).collect();
    assert!(kinds.contains(&OperatorKind::AddLearner) && kinds.contains(&OperatorKind::RemovePeer));
    assert_eq!(admin(&c, drained), StoreAdminState::Removed);
    for e in c.state().regions_in_order() {
        assert_eq!(e.region.peers.len(), 3);
    }
    // Tombstone: no registration, no heartbeat under that id.
    assert!(matches!(
        c.register_store(again.clone()),
        Err(Error::InvalidArgument(m)) if m.contains("decommissioned")
    ));
    assert!(c
        .store_heartbeat(StoreStats {
            store_id: drained,
            ..Default::default()
        })
        .is_err());
    // Asking again changes nothing.
    let info = c.decommission_store(drained).expect("again");
    assert_eq!(
        info.meta.expect("meta").admin_state(),
        StoreAdminState::Removed
    );
    // Persisted: a restart keeps it.
    drop(c);
    let c = open(dir.path(), &clock);
    assert_eq!(admin(&c, drained), StoreAdminState::Removed);
    assert!(c.register_store(again).is_err());
    // Three serving stores left for three replicas: another decommission is refused.
    assert!(matches!(
        c.decommission_store(ids[0]),
        Err(Error::NotEnoughStores { need: 3, have: 2 })
    ));
    assert_eq!(admin(&c, ids[0]), StoreAdminState::Serving);
    assert!(matches!(
        c.decommission_store(999),
        Err(Error::StoreNotFound(999))
    ));
}

#[test]
fn an_empty_store_is_removed_at_once_and_scheduling_switches_over_rpc() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(1_800_000_000_000));
    let (c, ids) = four_stores(dir.path(), &clock);
    // Not bootstrapped: no region anywhere, the store is drained already.
    let info = c.decommission_store(ids[3]).expect("decommission");
    assert_eq!(
        info.meta.expect("meta").admin_state(),
        StoreAdminState::Removed
    );
    let switch = |enabled: bool| match c
        .handle(Request {
            body: Some(request::Body::SetScheduling(SetSchedulingRequest {
                enabled,
            })),
        })
        .body
    {
        Some(response::Body::Operators(o)) => o.enabled,
        other => panic!("unexpected answer {other:?}"),
    };
    assert!(!switch(false));
    assert!(!c.operators().enabled);
    assert!(switch(true));
    assert!(c.operators().enabled);
}

#[test]
fn measured_sizes_move_a_replica_off_a_store_holding_too_many_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(1_800_000_000_000));
    let (c, ids) = four_stores(dir.path(), &clock);
    // 16 regions x 3 replicas over 4 stores: 12 replicas each.
    c.bootstrap(&BootstrapRequest {
        split_keys: (1..16u8).map(|k| vec![b'a' + k]).collect(),
        replicas: 3,
    })
    .expect("bootstrap");
    // A region with a replica on the heavy store holds 100 MiB, the others 1 MiB.
    let heavy = ids[0];
    let sizes: std::collections::HashMap<u64, u64> = c
        .state()
        .regions_in_order()
        .map(|e| {
            let big = e.region.peers.iter().any(|p| p.store_id == heavy);
            (e.region.id, if big { 100 << 20 } else { 1 << 20 })
        })
        .collect();
    let bytes = |c: &Coordinator| -> Vec<u64> {
        ids.iter()
            .map(|s| {
                c.state()
                    .regions_in_order()
                    .filter(|e| e.region.peers.iter().any(|p| p.store_id == *s))
                    .map(|e| sizes[&e.region.id])
                    .sum()
            })
            .collect()
    };
    let before = bytes(&c);
    let mean = |b: &[u64]| b.iter().sum::<u64>() / b.len() as u64;
    assert!(before[0] * 4 > mean(&before) * 5, "{before:?}");
    // Unmeasured heartbeats: nothing moves by size.
    let mut next_peer = 0;
    clock.advance_ms(1_000);
    let ran = round(&c, &ids, &mut next_peer, &|_| None);
    assert!(ran.iter().all(|o| o.reason != "balance-size"), "{ran:?}");
    // The first measured round: sizes become known one region after another (none moves
    // until every region's is), then the rounds until nothing more is issued.
    let mut ran = round(&c, &ids, &mut next_peer, &|id| sizes.get(&id).copied());
    // Bounded: each round runs at most one operator per region.
    for _ in 0..60 {
        clock.advance_ms(20_000);
        let r = round(&c, &ids, &mut next_peer, &|id| sizes.get(&id).copied());
        if r.is_empty() {
            break;
        }
        ran.extend(r);
    }
    assert!(ran.iter().any(|o| o.reason == "balance-size"), "{ran:?}");
    let after = bytes(&c);
    assert!(
        after.iter().all(|b| *b * 4 <= mean(&after) * 5),
        "{before:?} -> {after:?}"
    );
    for e in c.state().regions_in_order() {
        assert_eq!(e.region.peers.len(), 3, "{:?}", e.region);
    }
    // The sizes are listed with the routes.
    let routes = c
        .scan_regions(&nokv_coordinator::proto::ScanRegionsRequest::default())
        .expect("scan");
    assert!(routes
        .iter()
        .all(|r| r.approximate_size_bytes == r.region.as_ref().map(|g| sizes[&g.id])));
}

#[test]
fn reported_loads_move_leaderships_off_a_store_leading_too_much_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(1_800_000_000_000));
    let (c, ids) = four_stores(dir.path(), &clock);
    c.bootstrap(&BootstrapRequest {
        split_keys: (1..8u8).map(|k| vec![b'a' + k]).collect(),
        replicas: 3,
    })
    .expect("bootstrap");
    let mut next_peer = 0;
    // Leader counts settle first (no load reported).
    for _ in 0..30 {
        clock.advance_ms(20_000);
        if round(&c, &ids, &mut next_peer, &|_| None).is_empty() {
            break;
        }
    }
    let leaders = |c: &Coordinator| -> std::collections::HashMap<u64, u64> {
        c.state()
            .regions_in_order()
            .map(|e| {
                let id = if e.leader_peer_id == 0 {
                    e.region.peers[0].id
                } else {
                    e.leader_peer_id
                };
                let store = e
                    .region
                    .peers
                    .iter()
                    .find(|p| p.id == id)
                    .map(|p| p.store_id);
                (e.region.id, store.expect("the leader is a peer"))
            })
            .collect()
    };
    let before = leaders(&c);
    let hot = *ids
        .iter()
        .max_by_key(|s| before.values().filter(|l| l == s).count())
        .expect("stores");
    assert!(
        before.values().filter(|l| **l == hot).count() >= 2,
        "{before:?}"
    );
    // The regions the hot store leads serve 500 requests per second, the others 10.
    let loads: std::collections::HashMap<u64, u64> = before
        .iter()
        .map(|(r, l)| (*r, if *l == hot { 500 } else { 10 }))
        .collect();
    let led = |c: &Coordinator, store: u64| -> u64 {
        leaders(c)
            .iter()
            .filter(|(_, l)| **l == store)
            .map(|(r, _)| loads[r])
            .sum()
    };
    let start = led(&c, hot);
    let mut ran = Vec::new();
    for _ in 0..30 {
        clock.advance_ms(20_000);
        let r = round_loaded(&c, &ids, &mut next_peer, &|_| None, &|id| loads[&id]);
        if r.is_empty() {
            break;
        }
        ran.extend(r);
    }
    assert!(
        ran.iter()
            .any(|o| o.reason == "balance-leader-load" && o.from_store == hot),
        "{ran:?}"
    );
    assert!(
        led(&c, hot) < start,
        "store {hot} still leads {start} requests/s"
    );
    // Only leaderships moved: every region keeps its three replicas.
    for e in c.state().regions_in_order() {
        assert_eq!(e.region.peers.len(), 3, "{:?}", e.region);
    }
}

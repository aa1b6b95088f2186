//! Store labels through the service: registered with the store, bounded, and placement
//! (bootstrap, `PlaceReplica`) never puts two replicas of a region on one `host`.

use nokv_coordinator::proto::{BootstrapRequest, StoreMeta};
use nokv_coordinator::{Config, Coordinator, Error, ManualClock};
use std::sync::Arc;

fn store(n: u32, host: &str) -> StoreMeta {
    StoreMeta {
        rpc_addr: format!("127.0.0.1:{}", 22160 + n),
        redis_addr: format!("127.0.0.1:{}", 6580 + n),
        cores: 2,
        labels: [
            ("host".to_string(), host.to_string()),
            ("zone".to_string(), "z1".to_string()),
        ]
        .into(),
        ..Default::default()
    }
}

#[test]
fn replicas_of_a_region_never_share_a_host() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = Config::new(dir.path(), 42);
    cfg.clock = Arc::new(ManualClock::new(1_800_000_000_000));
    let c = Coordinator::open(cfg).expect("open");
    // Stores 0 and 1 on host a, 2 on b, 3 on c.
    let hosts = ["a", "a", "b", "c"];
    let ids: Vec<u64> = hosts
        .iter()
        .enumerate()
        .map(|(n, h)| c.register_store(store(n as u32, h)).expect("register"))
        .collect();
    let info = c.store_info(ids[0]).expect("info").meta.expect("meta");
    assert_eq!(info.labels.get("host").map(String::as_str), Some("a"));
    let host_of = |store: u64| hosts[ids.iter().position(|i| *i == store).expect("known")];
    let regions = c
        .bootstrap(&BootstrapRequest {
            split_keys: (1..16u8).map(|k| vec![k]).collect(),
            replicas: 3,
        })
        .expect("bootstrap");
    for r in &regions {
        let mut h: Vec<&str> = r.peers.iter().map(|p| host_of(p.store_id)).collect();
        h.sort();
        assert_eq!(h, ["a", "b", "c"], "region {}", r.id);
    }
    // Every host holds a replica of the region: no fourth replica anywhere.
    assert!(matches!(
        c.place_replica(regions[0].id),
        Err(Error::NotEnoughStores { .. })
    ));
    // Bad labels are refused.
    let mut bad = store(9, "a b");
    assert!(matches!(
        c.register_store(bad.clone()),
        Err(Error::InvalidArgument(_))
    ));
    bad.labels = (0..17)
        .map(|i| (format!("k{i}"), "v".to_string()))
        .collect();
    assert!(matches!(
        c.register_store(bad),
        Err(Error::InvalidArgument(_))
    ));
}

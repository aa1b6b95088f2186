//! `nokv-tool stores` and `nokv-tool region list` against a real coordinator (in process,
//! on 127.0.0.1) holding stores that are up, down and replaced, and regions with and
//! without a known leader: the table and the --json output say what the coordinator says.

mod support;

use nokv_coordinator::proto::{Region, RegionHeartbeat, Route, StoreMeta, StoreStats};
use serde_json::Value;
use support::{slot_key, tool, TestCoordinator, CLUSTER};

const VERSION: &str = "0.1.0-test";

fn meta(n: u16, rpc_port: u16, cores: u32) -> StoreMeta {
    StoreMeta {
        id: 0,
        rpc_addr: format!("127.0.0.1:{rpc_port}"),
        redis_addr: format!("127.0.0.1:{}", 6300 + n),
        cores,
        version: VERSION.into(),
        ..Default::default()
    }
}

/// The cluster every listing scenario reads.
struct Cluster {
    tc: TestCoordinator,
    /// (id, meta) of the stores A, B, C (up, with stats), D (down), E (replaced), F (up,
    /// no stats yet), in registration order.
    stores: Vec<(u64, StoreMeta)>,
}

/// Four stores, four regions of three replicas split at slots 4096, 8192 and 12288, leaders
/// reported for all regions but the last; then 60 s pass, A, B and C send heartbeats, E
/// registers and F registers at E's RPC address (E is replaced).
fn cluster() -> Cluster {
    let tc = TestCoordinator::start();
    let client = tc.client();
    let mut stores = Vec::new();
    for (n, cores) in [(1, 2), (2, 2), (3, 2), (4, 1)] {
        let m = meta(n, 7300 + n, cores);
        let id = client.register_store(m.clone()).expect("register");
        stores.push((id, StoreMeta { id, ..m }));
    }
    let regions = client
        .bootstrap(vec![slot_key(4096), slot_key(8192), slot_key(12288)], 3)
        .expect("bootstrap");
    assert_eq!(regions.len(), 4);
    for (i, r) in regions.iter().take(3).enumerate() {
        client
            .region_heartbeat(RegionHeartbeat {
                region: Some(r.clone()),
                leader_peer_id: r.peers[i % r.peers.len()].id,
                approximate_size_bytes: 1 << 20,
                approximate_keys: 1000,
                measured: true,
                requests_per_sec: 0,
            })
            .expect("region heartbeat");
    }
    tc.clock.advance_ms(60_000);
    for (i, (id, _)) in stores.iter().take(3).enumerate() {
        client
            .store_heartbeat(StoreStats {
                store_id: *id,
                region_count: 3 + i as u64,
                leader_count: i as u64,
                ..Default::default()
            })
            .expect("store heartbeat");
    }
    let e = meta(5, 7305, 4);
    let e_id = client.register_store(e.clone()).expect("register E");
    stores.push((e_id, StoreMeta { id: e_id, ..e }));
    let f = StoreMeta {
        redis_addr: "127.0.0.1:6306".into(),
        ..meta(6, 7305, 4)
    };
    let f_id = client.register_store(f.clone()).expect("register F");
    stores.push((f_id, StoreMeta { id: f_id, ..f }));
    Cluster { tc, stores }
}

/// The columns each store's table line must have: state, heartbeat, regions, leaders.
fn expected_store_columns(c: &Cluster) -> Vec<Vec<String>> {
    let live = [
        ("up", "0ms", "3", "0"),
        ("up", "0ms", "4", "1"),
        ("up", "0ms", "5", "2"),
        ("down", "1m00s", "-", "-"),
        ("down", "replaced", "-", "-"),
        ("up", "0ms", "-", "-"),
    ];
    c.stores
        .iter()
        .zip(live)
        .map(|((id, m), (state, hb, regions, leaders))| {
            [
                &id.to_string(),
                state,
                hb,
                &m.cores.to_string(),
                &m.redis_addr,
                &m.rpc_addr,
                regions,
                leaders,
                VERSION,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect()
        })
        .collect()
}

#[test]
fn stores_lists_every_store_with_its_state_and_addresses() {
    let c = cluster();
    let out = tool(&[
        "stores",
        "--coordinator",
        &c.tc.addr(),
        "--cluster-id",
        &CLUSTER.to_string(),
    ]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stderr, "");
    let mut lines = out.stdout.lines();
    let header: Vec<&str> = lines.next().expect("header").split_whitespace().collect();
    assert_eq!(
        header,
        [
            "ID",
            "STATE",
            "HEARTBEAT",
            "CORES",
            "REDIS",
            "RPC",
            "REGIONS",
            "LEADERS",
            "VERSION"
        ]
    );
    let rows: Vec<Vec<String>> = lines
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect();
    let mut expected = expected_store_columns(&c);
    expected.sort_by_key(|r| r[0].parse::<u64>().expect("id"));
    assert_eq!(rows, expected, "table:\n{}", out.stdout);
}

#[test]
fn stores_json_has_one_object_per_store() {
    let c = cluster();
    let out = tool(&[
        "stores",
        "--json",
        "--coordinator",
        &c.tc.addr(),
        "--cluster-id",
        &CLUSTER.to_string(),
    ]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let v: Value = serde_json::from_str(&out.stdout).expect("stdout is JSON");
    let arr = v.as_array().expect("an array");
    assert_eq!(arr.len(), c.stores.len());
    for (id, m) in &c.stores {
        let s = arr
            .iter()
            .find(|s| s["id"] == *id)
            .unwrap_or_else(|| panic!("store {id} missing: {v}"));
        assert_eq!(s["redis_addr"], m.redis_addr.as_str());
        assert_eq!(s["rpc_addr"], m.rpc_addr.as_str());
        assert_eq!(s["cores"], m.cores);
        assert_eq!(s["version"], VERSION);
    }
    let by_id = |i: usize| {
        arr.iter()
            .find(|s| s["id"] == c.stores[i].0)
            .expect("store")
    };
    let (a, d, e, f) = (by_id(0), by_id(3), by_id(4), by_id(5));
    assert_eq!(
        (&a["state"], &a["since_heartbeat_ms"], &a["replaced"]),
        (&Value::from("up"), &Value::from(0), &Value::from(false))
    );
    assert_eq!(
        (&a["regions"], &a["leaders"]),
        (&Value::from(3), &Value::from(0))
    );
    assert_eq!(
        (&d["state"], &d["since_heartbeat_ms"], &d["regions"]),
        (&Value::from("down"), &Value::from(60_000), &Value::Null)
    );
    assert_eq!(
        (&e["state"], &e["since_heartbeat_ms"], &e["replaced"]),
        (&Value::from("down"), &Value::Null, &Value::from(true))
    );
    assert_eq!(
        (&f["state"], &f["replaced"], &f["leaders"]),
        (&Value::from("up"), &Value::from(false), &Value::Null)
    );
}

/// What the coordinator says about every region, in key order.
fn routes(c: &Cluster) -> Vec<Route> {
    let routes = c.tc.client().scan_regions(b"", b"", 0).expect("scan");
    assert_eq!(routes.len(), 4);
    routes
}

fn region(r: &Route) -> &Region {
    r.region.as_ref().expect("region")
}

#[test]
fn region_list_prints_slots_epoch_leader_and_peers() {
    let c = cluster();
    let out = tool(&[
        "region",
        "list",
        "--coordinator",
        &c.tc.addr(),
        "--cluster-id",
        &CLUSTER.to_string(),
    ]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stderr, "");
    let lines: Vec<String> = out
        .stdout
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(lines[0], "ID RANGE EPOCH SIZE LEADER PEERS");
    let slots = [
        "[0, 4096)",
        "[4096, 8192)",
        "[8192, 12288)",
        "[12288, 16384)",
    ];
    let mut expected = vec![lines[0].clone()];
    for (i, route) in routes(&c).iter().enumerate() {
        let r = region(route);
        let sc = |p: &nokv_coordinator::proto::Peer| {
            format!("{}:{}", p.store_id, p.core.expect("a core for every peer"))
        };
        let leader = route.leader().map_or_else(|| "-".to_string(), sc);
        // Leaders were reported for the first three regions only.
        assert_eq!(leader == "-", i == 3, "leader of region {}", r.id);
        let peers: Vec<String> = r
            .peers
            .iter()
            .map(|p| {
                let role = if p.id == route.leader_peer_id {
                    "leader"
                } else {
                    "voter"
                };
                format!("{}({role})", sc(p))
            })
            .collect();
        // Sizes were reported with the leaders (1 MiB each).
        let size = if i == 3 { "-" } else { "1.0MiB" };
        expected.push(format!(
            "{} slots {} {}/{} {size} {leader} {}",
            r.id,
            slots[i],
            r.epoch_version,
            r.epoch_conf_version,
            peers.join(" ")
        ));
    }
    assert_eq!(lines, expected, "table:\n{}", out.stdout);
}

#[test]
fn region_list_json_has_slots_keys_epoch_leader_and_peers() {
    let c = cluster();
    let out = tool(&[
        "region",
        "list",
        "--json",
        "--coordinator",
        &c.tc.addr(),
        "--cluster-id",
        &CLUSTER.to_string(),
    ]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let v: Value = serde_json::from_str(&out.stdout).expect("stdout is JSON");
    let arr = v.as_array().expect("an array");
    let routes = routes(&c);
    assert_eq!(arr.len(), routes.len());
    let bounds = [(0, 4096), (4096, 8192), (8192, 12288), (12288, 16384)];
    let keys = [
        ("", "1000"),
        ("1000", "2000"),
        ("2000", "3000"),
        ("3000", ""),
    ];
    for (i, (j, route)) in arr.iter().zip(&routes).enumerate() {
        let r = region(route);
        assert_eq!(j["id"], r.id);
        assert_eq!(j["slots"]["start"], bounds[i].0, "{j}");
        assert_eq!(j["slots"]["end"], bounds[i].1, "{j}");
        assert_eq!(
            (j["start_key"].as_str(), j["end_key"].as_str()),
            (Some(keys[i].0), Some(keys[i].1))
        );
        assert_eq!(j["epoch"]["version"], r.epoch_version);
        assert_eq!(j["epoch"]["conf_version"], r.epoch_conf_version);
        match route.leader() {
            Some(l) => {
                assert_eq!(j["leader"]["peer_id"], l.id);
                assert_eq!(j["leader"]["store_id"], l.store_id);
                assert_eq!(j["leader"]["role"], "leader");
                let redis = &route.store(l.store_id).expect("leader's store").redis_addr;
                assert_eq!(j["leader"]["redis_addr"], redis.as_str());
            }
            None => assert_eq!(j["leader"], Value::Null, "region {}", r.id),
        }
        let peers = j["peers"].as_array().expect("peers");
        assert_eq!(peers.len(), r.peers.len());
        for (jp, p) in peers.iter().zip(&r.peers) {
            assert_eq!(jp["peer_id"], p.id);
            assert_eq!(jp["store_id"], p.store_id);
            assert_eq!(jp["core"], p.core.expect("core"));
        }
    }
    assert_eq!(arr[3]["leader"], Value::Null);
}

#[test]
fn region_list_prints_other_keys_escaped() {
    let tc = TestCoordinator::start();
    let client = tc.client();
    client.register_store(meta(1, 7301, 1)).expect("register");
    client
        .bootstrap(vec![b"m\x00".to_vec()], 1)
        .expect("bootstrap");
    let args = [
        "region",
        "list",
        "--coordinator",
        &tc.addr(),
        "--cluster-id",
        "7",
    ];
    let out = tool(&args);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout.contains(r#"keys ["", "m\x00")"#),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(r#"keys ["m\x00", +inf)"#),
        "{}",
        out.stdout
    );
    let out = tool(&[&args[..], &["--json"]].concat());
    let v: Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(v[0]["slots"], Value::Null);
    assert_eq!(v[0]["end_key"], "6d00");
    assert_eq!(v[1]["start_key"], "6d00");
    assert_eq!(v[1]["end_key"], "");
    assert_eq!(v[1]["range"], r#"keys ["m\x00", +inf)"#);
}

#[test]
fn an_empty_cluster_lists_nothing() {
    let tc = TestCoordinator::start();
    let base = ["--coordinator", &tc.addr(), "--cluster-id", "7"];
    let out = tool(&[&["region", "list"][..], &base].concat());
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (
            Some(0),
            "no regions (the cluster is not bootstrapped yet)\n"
        )
    );
    let out = tool(&[&["stores"][..], &base].concat());
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "no stores registered\n")
    );
    let out = tool(&[&["stores", "--json"][..], &base].concat());
    assert_eq!((out.code, out.stdout.as_str()), (Some(0), "[]\n"));
}

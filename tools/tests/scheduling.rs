//! `nokv-tool store decommission`, the decommission state in `nokv-tool stores`, and
//! `nokv-tool schedule list|on|off`, against a real coordinator (in process, 127.0.0.1).

mod support;

use nokv_coordinator::proto::{RegionHeartbeat, StoreMeta, StoreStats};
use serde_json::Value;
use support::{slot_key, tool, TestCoordinator, CLUSTER};

fn meta(n: u16) -> StoreMeta {
    StoreMeta {
        rpc_addr: format!("127.0.0.1:{}", 7400 + n),
        redis_addr: format!("127.0.0.1:{}", 6400 + n),
        cores: 2,
        version: "t".into(),
        ..Default::default()
    }
}

fn run(tc: &TestCoordinator, args: &[&str]) -> support::Out {
    let addr = tc.addr();
    let cluster = CLUSTER.to_string();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--coordinator", &addr, "--cluster-id", &cluster]);
    tool(&all)
}

/// The STATE cell of store `id` in `nokv-tool stores`.
fn state_cell(tc: &TestCoordinator, id: u64) -> String {
    let out = run(tc, &["stores"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    out.stdout
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cols| cols[0] == id.to_string())
        .map(|cols| cols[1].to_string())
        .unwrap_or_else(|| panic!("store {id} not listed:\n{}", out.stdout))
}

#[test]
fn decommission_shows_in_stores_and_the_operators_in_schedule_list() {
    let tc = TestCoordinator::start();
    let client = tc.client();
    let ids: Vec<u64> = (1..=4)
        .map(|n| client.register_store(meta(n)).expect("register"))
        .collect();
    let regions = client
        .bootstrap(vec![slot_key(8192)], 3)
        .expect("bootstrap");
    // A fifth store, registered after the bootstrap, holds nothing.
    let empty = client.register_store(meta(5)).expect("register");

    // The scheduler starts off in the library coordinator; switch it on with the tool.
    let out = run(&tc, &["schedule", "list"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(
        out.stdout,
        "scheduling off: 0 in flight, 0 issued, 0 completed, 0 expired\n"
    );
    let out = run(&tc, &["schedule", "on"]);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "scheduling on: 0 operators in flight\n"),
        "{out:?}"
    );

    // An empty store is removed at once.
    let out = run(&tc, &["store", "decommission", &empty.to_string()]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("removed"), "{out:?}");
    assert_eq!(state_cell(&tc, empty), "removed");

    // A store holding replicas is draining.
    let victim = regions[0].peers[0].store_id;
    let out = run(
        &tc,
        &["store", "decommission", &victim.to_string(), "--json"],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    let v: Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(v["admin_state"], "decommissioning");
    assert_eq!(v["id"], victim);
    assert_eq!(state_cell(&tc, victim), "decommissioning");
    assert_eq!(
        state_cell(
            &tc,
            ids.iter().copied().find(|i| *i != victim).expect("other")
        ),
        "up"
    );

    // The region's leader reports: the answer is a move off the drained store.
    for id in &ids {
        client
            .store_heartbeat(StoreStats {
                store_id: *id,
                ..Default::default()
            })
            .expect("store heartbeat");
    }
    let r = &regions[0];
    let op = client
        .region_heartbeat_op(RegionHeartbeat {
            region: Some(r.clone()),
            leader_peer_id: r.peers[0].id,
            ..Default::default()
        })
        .expect("region heartbeat")
        .expect("an operator");
    assert_eq!(op.from_store, victim);
    let out = run(&tc, &["schedule", "list"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let mut lines = out.stdout.lines();
    assert_eq!(
        lines.next(),
        Some("scheduling on: 1 in flight, 1 issued, 0 completed, 0 expired")
    );
    let header: Vec<&str> = lines.next().expect("header").split_whitespace().collect();
    assert_eq!(
        header,
        ["ID", "REGION", "KIND", "TARGET", "PEER", "FROM", "REASON", "AGE"]
    );
    let row: Vec<&str> = lines.next().expect("row").split_whitespace().collect();
    assert_eq!(row[1], r.id.to_string());
    assert_eq!(row[2], "add-learner");
    assert_eq!(row[5], victim.to_string());
    assert_eq!(row[6], "decommission");
    let out = run(&tc, &["schedule", "list", "--json"]);
    let v: Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(v["enabled"], true);
    assert_eq!(v["operators"][0]["region"], r.id);
    assert_eq!(v["operators"][0]["reason"], "decommission");

    let out = run(&tc, &["schedule", "off"]);
    assert_eq!(
        out.stdout, "scheduling off: 1 operators in flight\n",
        "{out:?}"
    );

    // Three serving stores left for three replicas: one more is refused, on one line.
    let other = ids.iter().copied().find(|i| *i != victim).expect("other");
    let out = run(&tc, &["store", "decommission", &other.to_string()]);
    let line = out.one_line_failure();
    assert!(
        line.contains(&format!("decommission store {other}")),
        "{line}"
    );
    let out = run(&tc, &["store", "decommission", "999"]);
    assert!(out.one_line_failure().contains("999"));
}

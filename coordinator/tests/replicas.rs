//! Three coordinator replicas on loopback: they elect a leader, only the leader serves (the
//! others answer with its address), every replica applies the same commands; the leader is
//! stopped, a new one takes over with the catalog intact, timestamps above every earlier
//! one and no repeated id; the stopped replica restarts and catches up.

use nokv_coordinator::proto::StoreMeta;
use nokv_coordinator::{
    ClientOptions, Config, CoordClient, Coordinator, ReplicaConfig, Server, ServerOptions,
};
use std::collections::HashSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CLUSTER: u64 = 77;
const WAIT: Duration = Duration::from_secs(30);

struct Node {
    coord: Arc<Coordinator>,
    server: Server,
}

fn free_addr() -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").to_string()
}

fn start(id: u64, dir: &Path, peers: &[String]) -> Node {
    let mut cfg = Config::new(dir, CLUSTER);
    cfg.replica = Some(ReplicaConfig {
        tick: Duration::from_millis(20),
        ..ReplicaConfig::new(id, peers.to_vec())
    });
    let coord = Arc::new(Coordinator::open(cfg).expect("open replica"));
    let server = Server::start(
        coord.clone(),
        &peers[id as usize - 1],
        ServerOptions::default(),
    )
    .expect("start server");
    Node { coord, server }
}

/// Stops a replica and closes its state (bounded wait for connection threads to let go).
fn stop(node: Node) {
    node.server.shutdown();
    if let Some(r) = node.coord.replica() {
        r.stop();
    }
    let mut coord = node.coord;
    let deadline = Instant::now() + WAIT;
    // Bounded by WAIT.
    loop {
        match Arc::try_unwrap(coord) {
            Ok(c) => {
                c.close().expect("close");
                return;
            }
            Err(c) => {
                assert!(Instant::now() < deadline, "replica still referenced");
                coord = c;
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    // Bounded by WAIT.
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn client(endpoints: Vec<String>) -> CoordClient {
    CoordClient::new(
        endpoints,
        CLUSTER,
        ClientOptions {
            call_timeout: WAIT,
            ..ClientOptions::default()
        },
    )
    .expect("client")
}

#[test]
fn three_replicas_survive_the_loss_of_the_leader_with_monotonic_tso_and_ids() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dirs: Vec<PathBuf> = (1..=3).map(|i| tmp.path().join(format!("r{i}"))).collect();
    let peers: Vec<String> = (0..3).map(|_| free_addr()).collect();
    let mut nodes: Vec<Option<Node>> = (1..=3u64)
        .map(|id| Some(start(id, &dirs[id as usize - 1], &peers)))
        .collect();
    let c = client(peers.clone());

    let mut store_ids = Vec::new();
    for n in 0..3u16 {
        store_ids.push(
            c.register_store(StoreMeta {
                id: 0,
                rpc_addr: format!("127.0.0.1:{}", 50000 + n),
                redis_addr: format!("127.0.0.1:{}", 51000 + n),
                cores: 2,
                version: "replicas".into(),
                ..Default::default()
            })
            .expect("register"),
        );
    }
    let regions = c.bootstrap(vec![b"m".to_vec()], 3).expect("bootstrap");
    let routes: Vec<_> = [b"a".as_slice(), b"z"]
        .iter()
        .map(|k| c.route_by_key(k).expect("route"))
        .collect();
    let mut max_ts = 0;
    for _ in 0..50 {
        let t = c.get_ts(4).expect("ts");
        assert!(t > max_ts);
        max_ts = t + 3;
    }
    let mut ids: HashSet<u64> = store_ids.iter().copied().collect();
    for r in &regions {
        ids.insert(r.id);
        ids.extend(r.peers.iter().map(|p| p.id));
    }
    for _ in 0..10 {
        let first = c.alloc_ids(3).expect("ids");
        for id in first..first + 3 {
            assert!(ids.insert(id), "id {id} repeated");
        }
    }

    let serving = |nodes: &[Option<Node>]| -> Vec<usize> {
        nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.as_ref().is_some_and(|n| n.coord.is_serving()))
            .map(|(i, _)| i)
            .collect()
    };
    let leader = serving(&nodes);
    assert_eq!(leader.len(), 1, "exactly one serving leader");
    let leader = leader[0];

    // A client that only knows a follower is sent to the leader.
    let follower = (leader + 1) % 3;
    let fc = client(vec![peers[follower].clone()]);
    assert!(fc.get_timestamp().expect("ts via a follower") > max_ts);
    assert_eq!(fc.current_endpoint(), peers[leader]);
    max_ts = max_ts.max(fc.get_timestamp().expect("ts"));

    // Every replica applied the same commands.
    let want = nodes[leader].as_ref().expect("leader").coord.state();
    wait_for("followers to apply everything", || {
        nodes.iter().flatten().all(|n| n.coord.state() == want)
    });

    // Stop the leader: another replica takes over.
    stop(nodes[leader].take().expect("leader"));
    let t = c.get_timestamp().expect("ts after the leader is gone");
    assert!(
        t > max_ts,
        "TSO went back after a leader change: {t} <= {max_ts}"
    );
    max_ts = t;
    let new_leader = serving(&nodes);
    assert_eq!(new_leader.len(), 1);
    assert_ne!(new_leader[0], leader);
    let id = c.alloc_ids(1).expect("id after the leader change");
    assert!(ids.insert(id), "id {id} repeated after the leader change");
    for (k, before) in [b"a".as_slice(), b"z"].iter().zip(&routes) {
        assert_eq!(&c.route_by_key(k).expect("route"), before);
    }
    assert_eq!(c.stores().expect("stores").len(), 3);

    // The old leader restarts on its workdir and catches up.
    nodes[leader] = Some(start(leader as u64 + 1, &dirs[leader], &peers));
    let want = nodes[new_leader[0]].as_ref().expect("leader").coord.state();
    wait_for("the restarted replica to catch up", || {
        nodes[leader]
            .as_ref()
            .is_some_and(|n| n.coord.state() == want)
    });
    assert!(c.get_timestamp().expect("ts") > max_ts);
    for n in nodes.into_iter().flatten() {
        stop(n);
    }
}

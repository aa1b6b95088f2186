//! The coordinator's server and client over loopback TCP: refused frames drop their
//! connection and are counted, the connection bound refuses with a busy answer, the client
//! follows a leader hint and gives up at its deadline, and every RPC works end to end.

use nokv_coordinator::proto::{
    response, ErrorResponse, Region, RegionHeartbeat, Request, Response, StoreMeta, StoreStats,
};
use nokv_coordinator::{
    ClientOptions, Config, CoordClient, Coordinator, Error, Server, ServerOptions,
};
use nokv_raft::wire::{self, FrameLimits};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CLUSTER: u64 = 7;
const WAIT: Duration = Duration::from_secs(10);

fn start(dir: &std::path::Path, opts: ServerOptions) -> (Arc<Coordinator>, Server) {
    let coord = Arc::new(Coordinator::open(Config::new(dir, CLUSTER)).expect("open"));
    let server = Server::start(coord.clone(), "127.0.0.1:0", opts).expect("start server");
    (coord, server)
}

fn client(addr: String, timeout: Duration) -> CoordClient {
    CoordClient::new(
        vec![addr],
        CLUSTER,
        ClientOptions {
            call_timeout: timeout,
            ..ClientOptions::default()
        },
    )
    .expect("client")
}

/// Waits (bounded) until the peer closes `s`: a read returns 0 bytes or a reset.
fn wait_closed(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut buf = [0u8; 256];
    let deadline = Instant::now() + WAIT;
    // Bounded by WAIT.
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
    false
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    // Bounded by WAIT.
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn ts_request() -> Request {
    Request {
        body: Some(nokv_coordinator::proto::request::Body::GetTs(
            nokv_coordinator::proto::GetTsRequest { count: 1 },
        )),
    }
}

#[test]
fn a_frame_of_another_cluster_is_refused_and_the_connection_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_coord, server) = start(dir.path(), ServerOptions::default());
    let addr = server.local_addr();

    let mut s = TcpStream::connect(addr).expect("connect");
    wire::write_frame(
        &mut s,
        wire::kind::COORD_REQUEST,
        CLUSTER + 1,
        1,
        &ts_request(),
    )
    .expect("write");
    assert!(wait_closed(&mut s), "connection not dropped");
    wait_for("the refusal to be counted", || {
        server.stats().frames_refused() == 1
    });
    assert_eq!(
        server.stats().requests(),
        0,
        "nothing of the frame was used"
    );

    // The same request for the right cluster is answered.
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    wire::write_frame(&mut s, wire::kind::COORD_REQUEST, CLUSTER, 5, &ts_request()).expect("write");
    let f = wire::read_frame(&mut s, &FrameLimits::new(CLUSTER))
        .expect("read")
        .expect("a frame");
    assert_eq!((f.kind, f.request_id), (wire::kind::COORD_RESPONSE, 5));
    let resp: Response = f.decode().expect("decode");
    assert!(matches!(resp.body, Some(response::Body::Ts(_))));
}

#[test]
fn oversized_corrupt_foreign_kind_and_junk_frames_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = ServerOptions {
        max_frame_bytes: 1024,
        ..ServerOptions::default()
    };
    let (_coord, server) = start(dir.path(), opts);
    let addr = server.local_addr();
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut big = Vec::new();
    wire::encode_raw(
        &mut big,
        wire::kind::COORD_REQUEST,
        CLUSTER,
        1,
        &[0u8; 2048],
    );
    cases.push(("oversized", big[..wire::HEADER_LEN].to_vec()));
    let mut flipped = Vec::new();
    wire::encode(
        &mut flipped,
        wire::kind::COORD_REQUEST,
        CLUSTER,
        1,
        &ts_request(),
    );
    let last = flipped.len() - 1;
    flipped[last] ^= 0xff;
    cases.push(("bad checksum", flipped));
    let mut raft = Vec::new();
    wire::encode_raw(&mut raft, wire::kind::RAFT_BATCH, CLUSTER, 1, b"x");
    cases.push(("raft frame", raft));
    let mut junk_payload = Vec::new();
    wire::encode_raw(
        &mut junk_payload,
        wire::kind::COORD_REQUEST,
        CLUSTER,
        1,
        &[0xff; 9],
    );
    cases.push(("undecodable payload", junk_payload));
    cases.push((
        "http",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\0\0\0\0\0\0".to_vec(),
    ));
    let mut v2 = Vec::new();
    wire::encode(
        &mut v2,
        wire::kind::COORD_REQUEST,
        CLUSTER,
        1,
        &ts_request(),
    );
    v2[4] = 9;
    cases.push(("other version", v2));
    for (i, (name, bytes)) in cases.iter().enumerate() {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.write_all(bytes).expect("write");
        assert!(wait_closed(&mut s), "{name}: connection not dropped");
        wait_for(name, || server.stats().frames_refused() == i as u64 + 1);
    }
    // A truncated frame (the client goes away mid-frame) is counted too.
    let mut whole = Vec::new();
    wire::encode(
        &mut whole,
        wire::kind::COORD_REQUEST,
        CLUSTER,
        1,
        &ts_request(),
    );
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(&whole[..whole.len() - 2]).expect("write");
    drop(s);
    wait_for("truncated", || {
        server.stats().frames_refused() == cases.len() as u64 + 1
    });
    assert_eq!(server.stats().requests(), 0);
    // The server still serves.
    let c = client(addr.to_string(), WAIT);
    assert!(c.get_timestamp().expect("ts") > 0);
}

#[test]
fn connections_over_the_bound_are_refused_busy_until_one_closes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = ServerOptions {
        max_connections: 1,
        ..ServerOptions::default()
    };
    let (_coord, server) = start(dir.path(), opts);
    let addr = server.local_addr().to_string();
    let holder = client(addr.clone(), WAIT);
    holder.get_timestamp().expect("first connection served");
    let other = client(addr.clone(), Duration::from_millis(300));
    match other.get_timestamp() {
        Err(Error::DeadlineExceeded { last, .. }) => {
            assert!(last.contains("busy"), "last error: {last}")
        }
        r => panic!("second connection not refused: {r:?}"),
    }
    assert!(server.stats().connections_refused() >= 1);
    drop(holder);
    let again = client(addr, WAIT);
    assert!(
        again.get_timestamp().is_ok(),
        "served once the first connection closed"
    );
}

#[test]
fn the_client_follows_a_not_leader_hint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_coord, server) = start(dir.path(), ServerOptions::default());
    let leader = server.local_addr().to_string();
    // A follower that answers every request with NotLeader pointing at the real server.
    let follower = TcpListener::bind("127.0.0.1:0").expect("bind");
    let follower_addr = follower.local_addr().expect("addr").to_string();
    let hint = leader.clone();
    let t = std::thread::spawn(move || {
        let (mut s, _) = follower.accept().expect("accept");
        s.set_read_timeout(Some(WAIT)).expect("timeout");
        let f = wire::read_frame(&mut s, &FrameLimits::new(CLUSTER))
            .expect("read")
            .expect("frame");
        let resp = Response {
            body: Some(response::Body::Error(
                Error::NotLeader { leader_addr: hint }.to_proto(),
            )),
        };
        wire::write_frame(
            &mut s,
            wire::kind::COORD_RESPONSE,
            CLUSTER,
            f.request_id,
            &resp,
        )
        .expect("write");
    });
    let c = CoordClient::new(
        vec![follower_addr, "127.0.0.1:1".into()],
        CLUSTER,
        ClientOptions {
            call_timeout: WAIT,
            ..ClientOptions::default()
        },
    )
    .expect("client");
    assert!(c.get_timestamp().expect("ts") > 0);
    assert_eq!(c.current_endpoint(), leader);
    t.join().expect("follower thread");
    // An error response that is not NotLeader is typed and not retried.
    let unknown = Error::from_proto(ErrorResponse {
        code: 99,
        message: "new".into(),
        ..Default::default()
    });
    assert!(matches!(unknown, Error::Server { code: 99, .. }));
}

#[test]
fn a_call_to_no_coordinator_fails_at_its_deadline() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let c = client(format!("127.0.0.1:{port}"), Duration::from_millis(200));
    match c.get_timestamp() {
        Err(Error::DeadlineExceeded { last, .. }) => assert!(last.contains("connect"), "{last}"),
        r => panic!("expected a deadline error, got {r:?}"),
    }
    assert!(CoordClient::new(vec![], CLUSTER, ClientOptions::default()).is_err());
}

#[test]
fn every_rpc_works_through_the_client() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_coord, server) = start(dir.path(), ServerOptions::default());
    let c = client(server.local_addr().to_string(), WAIT);
    assert!(matches!(c.route_by_key(b"k"), Err(Error::NotBootstrapped)));
    let mut ids = Vec::new();
    for n in 0..4u16 {
        let id = c
            .register_store(StoreMeta {
                id: 0,
                rpc_addr: format!("127.0.0.1:{}", 30000 + n),
                redis_addr: format!("127.0.0.1:{}", 31000 + n),
                cores: 4,
                version: "t".into(),
                ..Default::default()
            })
            .expect("register");
        c.store_heartbeat(StoreStats {
            store_id: id,
            load: u64::from(n) * 100,
            ..Default::default()
        })
        .expect("heartbeat");
        ids.push(id);
    }
    assert!(matches!(
        c.register_store(StoreMeta {
            id: 0,
            rpc_addr: String::new(),
            cores: 1,
            ..Default::default()
        }),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(c.store(424242), Err(Error::StoreNotFound(424242))));
    assert_eq!(c.stores().expect("stores").len(), 4);
    let splits: Vec<Vec<u8>> = (1..16u8).map(|i| vec![i * 16]).collect();
    let regions = c.bootstrap(splits, 3).expect("bootstrap");
    assert_eq!(regions.len(), 16);
    assert!(matches!(
        c.bootstrap(vec![], 3),
        Err(Error::AlreadyBootstrapped)
    ));
    for r in &regions {
        let mut stores: Vec<u64> = r.peers.iter().map(|p| p.store_id).collect();
        stores.sort();
        stores.dedup();
        assert_eq!(
            stores.len(),
            3,
            "region {} has two replicas on one store",
            r.id
        );
    }
    // 48 replicas over 4 stores x 4 cores: 12 per store, 3 per core.
    for &s in &ids {
        let on: Vec<u32> = regions
            .iter()
            .flat_map(|r| r.peers.iter())
            .filter(|p| p.store_id == s)
            .filter_map(|p| p.core)
            .collect();
        assert_eq!(on.len(), 12);
        for core in 0..4 {
            assert_eq!(on.iter().filter(|&&c| c == core).count(), 3);
        }
    }
    for key in [vec![], vec![0x10], vec![0x8f, 1], vec![0xff, 0xff]] {
        let route = c.route_by_key(&key).expect("route");
        let region = route.region.clone().expect("region");
        assert!(region.contains(&key));
        assert_eq!(route.stores.len(), 3);
        for p in &region.peers {
            assert!(route
                .store(p.store_id)
                .is_some_and(|s| !s.rpc_addr.is_empty()));
        }
        assert_eq!(c.route_by_id(region.id).expect("by id"), route);
    }
    let all = c.scan_regions(b"", b"", 0).expect("scan");
    assert_eq!(all.len(), 16);
    let some = c.scan_regions(&[0x25], &[0x50], 10).expect("scan");
    let starts: Vec<Vec<u8>> = some
        .iter()
        .map(|r| r.region.as_ref().expect("region").start_key.clone())
        .collect();
    assert_eq!(starts, vec![vec![0x20], vec![0x30], vec![0x40]]);
    // A heartbeat with an older epoch comes back typed, with the current descriptor.
    let mut r: Region = regions[3].clone();
    r.epoch_conf_version += 1;
    c.region_heartbeat(RegionHeartbeat {
        leader_peer_id: r.peers[0].id,
        region: Some(r.clone()),
        approximate_size_bytes: 10,
        approximate_keys: 1,
        measured: true,
        requests_per_sec: 0,
    })
    .expect("heartbeat");
    match c.region_heartbeat(RegionHeartbeat {
        leader_peer_id: regions[3].peers[0].id,
        region: Some(regions[3].clone()),
        ..Default::default()
    }) {
        Err(Error::StaleEpoch { current, .. }) => assert_eq!(*current, r),
        other => panic!("stale heartbeat: {other:?}"),
    }
    let placed = c.place_replica(r.id).expect("place");
    assert!(!r.peers.iter().any(|p| p.store_id == placed.store_id));
    assert!(matches!(
        c.place_replica(999_999),
        Err(Error::RegionNotFound(999_999))
    ));
    let a = c.alloc_ids(100).expect("ids");
    let b = c.alloc_ids(1).expect("ids");
    assert!(b >= a + 100);
    assert!(matches!(c.alloc_ids(0), Err(Error::InvalidArgument(_))));
    let t1 = c.get_ts(1000).expect("ts");
    let t2 = c.get_timestamp().expect("ts");
    assert!(t2 >= t1 + 1000);
}

//! The client against an in-process cluster: the real coordinator (its TCP server) and
//! three fake stores speaking the KV frames of `nokv_raft::kv` on loopback, all serving one
//! shared `DbStore` (replication is not what is tested here). The test decides which store
//! leads each region; the others answer `NotLeader` with that hint (or 0 while a "leader
//! election" runs), a killed store closes its port and connections.

use nokv_client::{Client, ClientOptions, Error};
use nokv_coordinator::proto::{Region, StoreMeta};
use nokv_coordinator::{Config, Coordinator, Server as CoordServer, ServerOptions, SystemClock};
use nokv_gateway::exec::{ReadOp, WriteCommand, WriteOp};
use nokv_gateway::model;
use nokv_gateway::store::{Backend, DbStore};
use nokv_gateway::Reply;
use nokv_raft::kv::{self, KvKind, KvOutcome, KvRequest, KvResponse};
use nokv_raft::wire::{self, FrameLimits};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CLUSTER: u64 = 7;
/// A failure bound for waits in the test (not a timing assertion).
const LIMIT: Duration = Duration::from_secs(30);

/// What every fake store shares: the data, each region's range and leader.
struct World {
    db: DbStore,
    regions: Vec<Region>,
    /// region -> leading store (0: an election is running).
    leaders: Mutex<HashMap<u64, u64>>,
    /// Answer `Refused` to everything.
    refuse: AtomicBool,
    /// This store answers `Refused("the store is stopping")` (0: none).
    stopping: AtomicU64,
    requests: AtomicU64,
}

impl World {
    fn region(&self, id: u64) -> Option<&Region> {
        self.regions.iter().find(|r| r.id == id)
    }

    fn in_region(r: &Region, key: &[u8]) -> bool {
        r.contains(&model::slot(key).to_be_bytes())
    }

    /// Runs `req` as store `me` would.
    fn answer(&self, me: u64, req: &KvRequest) -> KvOutcome {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if self.refuse.load(Ordering::SeqCst) {
            return KvOutcome::Refused("refused by the test".into());
        }
        if self.stopping.load(Ordering::SeqCst) == me {
            return KvOutcome::Refused("the store is stopping".into());
        }
        let Some(region) = self.region(req.region_id) else {
            return KvOutcome::RegionNotFound(req.region_id);
        };
        let leader = self
            .leaders
            .lock()
            .map(|l| l.get(&req.region_id).copied().unwrap_or(0))
            .unwrap_or(0);
        if leader != me {
            return KvOutcome::NotLeader(leader);
        }
        let reply = match KvKind::try_from(req.kind) {
            Ok(KvKind::Read) => match ReadOp::decode(&req.payload) {
                Ok(op) => self.read(region, op),
                Err(e) => return KvOutcome::Refused(e.to_string()),
            },
            Ok(KvKind::Write) => match WriteCommand::decode(&req.payload) {
                Ok(cmd) => {
                    if cmd.op.keys().iter().any(|k| !World::in_region(region, k)) {
                        Reply::error("ERR key not in region")
                    } else {
                        self.db.write(&cmd)
                    }
                }
                Err(e) => return KvOutcome::Refused(e.to_string()),
            },
            _ => return KvOutcome::Refused("unknown kind".into()),
        };
        KvOutcome::Reply(reply.to_binary())
    }

    /// A read bounded to the region, as a store's region view is.
    fn read(&self, region: &Region, op: ReadOp) -> Reply {
        let keys_here = |r: Reply| match r {
            Reply::Array(items) => Reply::Array(
                items
                    .into_iter()
                    .filter(|i| matches!(i, Reply::Bulk(k) if World::in_region(region, k)))
                    .collect(),
            ),
            other => other,
        };
        match op {
            ReadOp::Keys(p) => keys_here(self.db.read(&ReadOp::Keys(p))),
            ReadOp::DbSize => match keys_here(self.db.read(&ReadOp::Keys(b"*".to_vec()))) {
                Reply::Array(items) => Reply::Int(items.len() as i64),
                other => other,
            },
            ReadOp::Scan(args) => match self.db.read(&ReadOp::Scan(args)) {
                Reply::Scan(mut page) => {
                    let n = page.items.len();
                    page.items
                        .retain(|i| matches!(i, Reply::Bulk(k) if World::in_region(region, k)));
                    let past_end = page.next.as_ref().is_some_and(|pos| {
                        !region.end_key.is_empty() && pos.get(..2) >= Some(&region.end_key[..])
                    });
                    if page.items.len() < n || past_end {
                        page.next = None;
                    }
                    Reply::Scan(page)
                }
                other => other,
            },
            op => {
                if let ReadOp::MGet(keys) | ReadOp::Exists(keys) = &op {
                    if keys.iter().any(|k| !World::in_region(region, k)) {
                        return Reply::error("ERR key not in region");
                    }
                }
                self.db.read(&op)
            }
        }
    }
}

/// A fake store on a loopback port.
struct FakeStore {
    id: u64,
    addr: String,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl FakeStore {
    fn bind() -> (TcpListener, String) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let a = l.local_addr().expect("addr").to_string();
        (l, a)
    }

    fn serve(id: u64, listener: TcpListener, addr: String, world: Arc<World>) -> FakeStore {
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (s, c) = (stop.clone(), conns.clone());
        listener.set_nonblocking(true).expect("nonblocking");
        std::thread::spawn(move || {
            // Bounded by the stop flag; the listener closes when this returns.
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        if let Ok(clone) = stream.try_clone() {
                            c.lock().expect("conns").push(clone);
                        }
                        let w = world.clone();
                        std::thread::spawn(move || serve_conn(id, stream, &w));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        FakeStore {
            id,
            addr,
            stop,
            conns,
        }
    }

    /// Closes the port and every connection (as a SIGKILL would).
    fn kill(&self) {
        self.stop.store(true, Ordering::SeqCst);
        for c in self.conns.lock().expect("conns").drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        // The accept loop notices within a few ms; wait until the port refuses.
        for _ in 0..1000 {
            if TcpStream::connect(&self.addr).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("store {} still accepts after kill", self.id);
    }
}

fn serve_conn(me: u64, mut stream: TcpStream, world: &World) {
    let limits = FrameLimits::new(CLUSTER);
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    // Bounded by the connection.
    while let Ok(Some(frame)) = wire::read_frame(&mut stream, &limits) {
        let outcome = match frame.decode::<KvRequest>() {
            Ok(req) => world.answer(me, &req),
            Err(e) => KvOutcome::Refused(e.to_string()),
        };
        let mut buf = Vec::new();
        kv::encode_response(
            &mut buf,
            CLUSTER,
            frame.request_id,
            &KvResponse::new(outcome),
        );
        if out.write_all(&buf).is_err() {
            return;
        }
    }
}

struct Cluster {
    _dir: tempfile::TempDir,
    _coord: CoordServer,
    coord_addr: String,
    world: Arc<World>,
    stores: Vec<FakeStore>,
}

/// A coordinator and three fake stores; 8 regions of 3 replicas, each led by its second
/// replica (the coordinator knows no leader, so the client learns them from hints).
fn cluster() -> Cluster {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config {
        workdir: dir.path().join("coord"),
        cluster_id: CLUSTER,
        store_down_after: Duration::from_secs(30),
        txn_gc_life: None,
        clock: Arc::new(SystemClock::new()),
        replica: None,
        // Fake stores run no operators.
        scheduler: nokv_coordinator::scheduler::Options {
            enabled: false,
            ..Default::default()
        },
    };
    let coord = Arc::new(Coordinator::open(config).expect("coordinator opens"));
    let server = CoordServer::start(coord, "127.0.0.1:0", ServerOptions::default())
        .expect("coordinator serves");
    let coord_addr = server.local_addr().to_string();
    let admin = nokv_coordinator::CoordClient::new(
        vec![coord_addr.clone()],
        CLUSTER,
        nokv_coordinator::ClientOptions::default(),
    )
    .expect("coordinator client");
    let mut bound = Vec::new();
    for _ in 0..3 {
        let (l, a) = FakeStore::bind();
        let id = admin
            .register_store(StoreMeta {
                id: 0,
                rpc_addr: a.clone(),
                redis_addr: String::new(),
                cores: 1,
                version: "test".into(),
                ..Default::default()
            })
            .expect("register");
        bound.push((id, l, a));
    }
    let splits: Vec<Vec<u8>> = (1..8u16)
        .map(|i| (i * 2048).to_be_bytes().to_vec())
        .collect();
    let regions = admin.bootstrap(splits, 3).expect("bootstrap");
    assert_eq!(regions.len(), 8);
    let db_dir = dir.path().join("db");
    let clock: Arc<dyn nokv::clock::Clock> = Arc::new(nokv::clock::SystemClock);
    let db = nokv::Db::open(
        &db_dir,
        nokv::Options {
            clock: clock.clone(),
            ..nokv::Options::default()
        },
    )
    .expect("db");
    let world = Arc::new(World {
        db: DbStore::new(db, clock),
        // Each region's second replica leads: the coordinator's first voter redirects.
        leaders: Mutex::new(
            regions
                .iter()
                .map(|r| (r.id, r.peers.get(1).map_or(0, |p| p.store_id)))
                .collect(),
        ),
        regions,
        refuse: AtomicBool::new(false),
        stopping: AtomicU64::new(0),
        requests: AtomicU64::new(0),
    });
    let stores = bound
        .into_iter()
        .map(|(id, l, a)| FakeStore::serve(id, l, a, world.clone()))
        .collect();
    Cluster {
        _dir: dir,
        _coord: server,
        coord_addr,
        world,
        stores,
    }
}

fn opts() -> ClientOptions {
    ClientOptions {
        cluster_id: CLUSTER,
        ..ClientOptions::default()
    }
}

/// Keys that land in every region (at least one each).
fn keys_everywhere(world: &World) -> Vec<Vec<u8>> {
    let mut out: BTreeMap<u64, Vec<Vec<u8>>> = BTreeMap::new();
    for i in 0..400 {
        let k = format!("key:{i}").into_bytes();
        let r = world
            .regions
            .iter()
            .find(|r| World::in_region(r, &k))
            .expect("covered");
        out.entry(r.id).or_default().push(k);
    }
    assert_eq!(out.len(), world.regions.len(), "a key in every region");
    out.into_values().flatten().collect()
}

#[test]
fn put_get_delete_and_scan_across_every_region() {
    let c = cluster();
    let client = Client::connect(vec![c.coord_addr.clone()], opts()).expect("client");
    let keys = keys_everywhere(&c.world);
    for k in &keys {
        client.put(k, &[k.as_slice(), b"=v"].concat()).expect("put");
    }
    assert!(
        client.stats().redirects > 0,
        "leaders were learnt from hints"
    );
    for k in &keys {
        assert_eq!(
            client.get(k).expect("get"),
            Some([k.as_slice(), b"=v"].concat())
        );
    }
    assert_eq!(client.get(b"absent").expect("get"), None);
    // A scan in pages walks every region in position order and sees every key once.
    let mut seen = Vec::new();
    let mut start = Vec::new();
    for _ in 0..1000 {
        let page = client.scan(&start, &[], 7).expect("scan");
        assert!(page.keys.len() <= 7);
        seen.extend(page.keys);
        match page.next {
            Some(n) => start = n,
            None => break,
        }
    }
    let mut want = keys.clone();
    want.sort_by_key(|k| nokv_client::position(k));
    assert_eq!(seen, want);
    // A bounded range: [position(want[10]), position(want[20])).
    let from = nokv_client::position(&want[10]);
    let to = nokv_client::position(&want[20]);
    let part = client.scan(&from, &to, 1000).expect("scan range");
    assert_eq!(part.keys, want[10..20].to_vec());
    assert_eq!(part.next, None);
    // Multi-key commands split over regions and merge like the store's.
    let mget = client.read(ReadOp::MGet(keys.clone())).expect("mget");
    let Reply::Array(values) = mget else {
        panic!("MGET: {mget:?}")
    };
    assert_eq!(values.len(), keys.len());
    assert_eq!(
        client.read(ReadOp::DbSize).expect("dbsize"),
        Reply::Int(keys.len() as i64)
    );
    let half = keys.len() / 2;
    let del = WriteCommand {
        now_ms: nokv_client::now_ms(),
        op: WriteOp::Del {
            keys: keys[..half].to_vec(),
        },
    };
    assert_eq!(client.write(del).expect("del"), Reply::Int(half as i64));
    for k in &keys[half..] {
        assert!(client.delete(k).expect("delete"), "{k:?} existed");
        assert!(!client.delete(k).expect("delete again"));
    }
    assert_eq!(client.read(ReadOp::DbSize).expect("dbsize"), Reply::Int(0));
    // A Redis error comes back typed, with its region and key.
    client.put(b"n", b"x").expect("put");
    let incr = WriteCommand {
        now_ms: nokv_client::now_ms(),
        op: WriteOp::IncrBy {
            key: b"n".to_vec(),
            delta: 1,
        },
    };
    assert!(matches!(client.write(incr).expect("incr"), Reply::Error(e) if e.starts_with("ERR")));
}

#[test]
fn calls_survive_a_dead_leader_and_an_election() {
    let c = cluster();
    let client = Arc::new(Client::connect(vec![c.coord_addr.clone()], opts()).expect("client"));
    let keys = keys_everywhere(&c.world);
    for k in &keys[..20] {
        client.put(k, b"before").expect("put");
    }
    // Store 1 dies; for a moment no store leads (the others answer NotLeader(0)), then
    // store 2 leads every region.
    c.stores[0].kill();
    if let Ok(mut l) = c.world.leaders.lock() {
        l.values_mut().for_each(|s| *s = 0);
    }
    let world = c.world.clone();
    let next = c.stores[1].id;
    let elect = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        if let Ok(mut l) = world.leaders.lock() {
            l.values_mut().for_each(|s| *s = next);
        }
    });
    // Writes from several threads at once, on the client's one connection per store.
    let mut workers = Vec::new();
    for t in 0..4 {
        let (client, keys) = (client.clone(), keys.clone());
        workers.push(std::thread::spawn(move || {
            for k in keys.iter().skip(t).step_by(4) {
                // A put sent just as store 1 died has an unknown outcome: a SET may be
                // sent again (the test's choice; the client does not).
                let mut tries = 0;
                loop {
                    match client.put(k, b"after") {
                        Ok(()) => break,
                        Err(nokv_client::Error::WriteUndetermined { .. }) if tries < 3 => {
                            tries += 1
                        }
                        Err(e) => panic!("put during the election: {e}"),
                    }
                }
            }
        }));
    }
    for w in workers {
        w.join().expect("writer");
    }
    elect.join().expect("election");
    for k in &keys {
        assert_eq!(client.get(k).expect("get").as_deref(), Some(&b"after"[..]));
    }
    let s = client.stats();
    assert!(s.retries > 0 && s.redirects > 0, "{s:?}");
}

#[test]
fn a_store_that_is_stopping_is_left_for_another_voter() {
    let c = cluster();
    let client = Client::connect(vec![c.coord_addr.clone()], opts()).expect("client");
    client.put(b"k", b"v").expect("put");
    let region = client.region_for_key(b"k").expect("region");
    let r = c.world.region(region).expect("region").clone();
    let old = c.world.leaders.lock().expect("leaders")[&region];
    let new = r
        .peers
        .iter()
        .map(|p| p.store_id)
        .find(|s| *s != old)
        .expect("another voter");
    // The leader stops (refusing) and hands the region over.
    c.world.stopping.store(old, Ordering::SeqCst);
    c.world.leaders.lock().expect("leaders").insert(region, new);
    assert_eq!(client.get(b"k").expect("get").as_deref(), Some(&b"v"[..]));
    client.put(b"k", b"w").expect("put");
    assert_eq!(client.get(b"k").expect("get").as_deref(), Some(&b"w"[..]));
}

#[test]
fn without_any_store_a_call_ends_in_try_again_and_a_refusal_is_not_retried() {
    let c = cluster();
    let client = Client::connect(
        vec![c.coord_addr.clone()],
        ClientOptions {
            call_timeout: Duration::from_millis(500),
            ..opts()
        },
    )
    .expect("client");
    client.put(b"k", b"v").expect("put");
    c.world.refuse.store(true, Ordering::SeqCst);
    let before = c.world.requests.load(Ordering::SeqCst);
    match client.get(b"k") {
        Err(Error::Refused { message, key, .. }) => {
            assert!(message.contains("refused by the test"));
            assert_eq!(key, "k");
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    assert_eq!(c.world.requests.load(Ordering::SeqCst), before + 1);
    c.world.refuse.store(false, Ordering::SeqCst);
    for s in &c.stores {
        s.kill();
    }
    match client.get(b"k") {
        Err(e @ Error::TryAgain { .. }) => {
            assert!(e.is_unavailable());
            let text = e.to_string();
            assert!(text.starts_with("TRYAGAIN region "), "{text}");
            assert!(text.contains("(key k)"), "{text}");
        }
        other => panic!("expected TryAgain, got {other:?}"),
    }
}

#[test]
fn a_coordinator_that_is_not_there_is_cluster_down() {
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").to_string()
    };
    let client = Client::new(
        vec![addr],
        ClientOptions {
            call_timeout: Duration::from_millis(300),
            ..opts()
        },
    )
    .expect("client");
    match client.get(b"k") {
        Err(e @ Error::ClusterDown { .. }) => {
            assert!(e.to_string().starts_with("CLUSTERDOWN"), "{e}");
        }
        other => panic!("expected ClusterDown, got {other:?}"),
    }
}

/// A RESP2 reply, as the test client reads it.
#[derive(Debug, PartialEq)]
enum R {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    Nil,
    Array(Vec<R>),
}

fn read_reply(r: &mut BufReader<TcpStream>) -> R {
    let mut line = String::new();
    r.read_line(&mut line).expect("reply line");
    let line = line.trim_end_matches("\r\n");
    let (kind, rest) = line.split_at(1);
    match kind {
        "+" => R::Simple(rest.into()),
        "-" => R::Error(rest.into()),
        ":" => R::Int(rest.parse().expect("int")),
        "$" => {
            let n: i64 = rest.parse().expect("len");
            if n < 0 {
                return R::Nil;
            }
            let mut b = vec![0u8; n as usize + 2];
            r.read_exact(&mut b).expect("bulk");
            b.truncate(n as usize);
            R::Bulk(b)
        }
        "*" => {
            let n: usize = rest.parse().expect("len");
            R::Array((0..n).map(|_| read_reply(r)).collect())
        }
        other => panic!("reply type {other:?}"),
    }
}

#[test]
fn the_redis_gateway_serves_commands_over_the_cluster() {
    let c = cluster();
    let client = Arc::new(Client::connect(vec![c.coord_addr.clone()], opts()).expect("client"));
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let server = std::thread::spawn(move || {
        nokv_client::gateway::serve(listener, client, Default::default(), 100, s)
    });
    let conn = TcpStream::connect(addr).expect("connect");
    conn.set_read_timeout(Some(LIMIT)).expect("timeout");
    let mut w = conn.try_clone().expect("clone");
    let mut r = BufReader::new(conn);
    let mut cmd = |args: &[&str]| {
        w.write_all(&nokv_gateway::resp::encode_request(args))
            .expect("send");
        read_reply(&mut r)
    };
    assert_eq!(cmd(&["PING"]), R::Simple("PONG".into()));
    let keys = keys_everywhere(&c.world);
    let names: Vec<String> = keys
        .iter()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    let mut mset = vec!["MSET"];
    for n in &names {
        mset.push(n);
        mset.push(n);
    }
    assert_eq!(cmd(&mset), R::Simple("OK".into()));
    assert_eq!(cmd(&["SET", "a", "1"]), R::Simple("OK".into()));
    assert_eq!(cmd(&["INCR", "a"]), R::Int(2));
    assert_eq!(cmd(&["GET", "a"]), R::Bulk(b"2".to_vec()));
    let mut mget = vec!["MGET", "nope"];
    mget.extend(names.iter().map(String::as_str));
    let R::Array(items) = cmd(&mget) else {
        panic!("MGET")
    };
    assert_eq!(items[0], R::Nil);
    for (item, n) in items[1..].iter().zip(&names) {
        assert_eq!(item, &R::Bulk(n.as_bytes().to_vec()));
    }
    assert_eq!(cmd(&["DBSIZE"]), R::Int(names.len() as i64 + 1));
    assert_eq!(
        cmd(&["DEL", &names[0], &names[names.len() - 1], "a"]),
        R::Int(3)
    );
    assert_eq!(cmd(&["EXISTS", &names[0], &names[1]]), R::Int(1));
    // A full SCAN through the session's cursors sees every key once.
    let mut cursor = "0".to_string();
    let mut seen = Vec::new();
    for _ in 0..10_000 {
        let R::Array(page) = cmd(&["SCAN", &cursor, "COUNT", "5"]) else {
            panic!("SCAN")
        };
        let [R::Bulk(next), R::Array(items)] = &page[..] else {
            panic!("SCAN page {page:?}")
        };
        seen.extend(items.iter().map(|i| match i {
            R::Bulk(b) => b.clone(),
            other => panic!("SCAN item {other:?}"),
        }));
        cursor = String::from_utf8_lossy(next).into_owned();
        if cursor == "0" {
            break;
        }
    }
    seen.sort();
    let mut want: Vec<Vec<u8>> = keys[1..keys.len() - 1].to_vec();
    want.sort();
    assert_eq!(seen, want);
    stop.store(true, Ordering::SeqCst);
    server.join().expect("server thread").expect("serve");
}

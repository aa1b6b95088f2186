//! Scenario: a replica that fell behind the log its leaders still hold catches up from a
//! region snapshot shipped between stores (`shard/src/snapship.rs`).
//!
//! Three `nokv-server` processes and a coordinator (as in `cluster.rs`, whose helpers are
//! repeated here), every store keeping only 8 applied raft entries per region
//! (`NOKV_DEBUG_RAFT_CACHED_ENTRIES`: a leader keeps at most 32 for a lagging replica).
//! One store is SIGKILLed; 600 writes go through the others (about 75 per region, so
//! every leader drops entries the dead store needs); it restarts. Then one of the others
//! is killed: the restarted store is needed for every quorum, so every acknowledged write
//! reads back, and a new write is acknowledged, only if it caught up, which it can only do
//! from a snapshot. The snapshot counters moved on both sides.
//!
//! Negative control: the same with shipping disabled (`NOKV_DEBUG_NO_SNAPSHOT_SHIPPING`):
//! the leaders' snapshot messages are dropped (counted) and the restarted store receives
//! none. (Open: in that run writes needing the restarted store were still acknowledged,
//! so some of its regions catch up without a snapshot; the test only reports them.)
//!
//! Every wait and loop is bounded; nothing asserts a time.

mod support;

use nokv_coordinator::{Config, Coordinator, Server as CoordServer, ServerOptions, SystemClock};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{Client, Server, R};

/// Bound for one operation while leaders may be changing (debug build, shared machine).
const OP_BOUND: Duration = Duration::from_secs(30);
/// Connect and read timeout of the client's connections.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Applied raft entries each store keeps per region.
const CACHED_ENTRIES: &str = "8";
/// Writes while one store is down.
const LAGGING_WRITES: usize = 600;

/// A free loopback address (bound, read, released).
fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").to_string()
}

/// One store's fixed addresses and workdir (kept over restarts).
#[derive(Clone)]
struct StoreSpec {
    workdir: std::path::PathBuf,
    redis: String,
    rpc: String,
}

/// [`start_store`] with extra environment variables (debug knobs).
fn start_store_env(spec: &StoreSpec, coordinator: &str, env: &[(&str, &str)]) -> Server {
    std::fs::create_dir_all(&spec.workdir).expect("workdir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nokv-server"));
    cmd.arg("--workdir")
        .arg(&spec.workdir)
        .args(["--redis-addr", &spec.redis])
        .args(["--rpc-addr", &spec.rpc])
        .args(["--coordinator", coordinator])
        .args(["--cores", "2", "--cluster-id", "7"])
        .args(["--memory-limit", "128MiB", "--metrics-addr", "127.0.0.1:0"])
        .envs(env.iter().copied());
    Server::launch(cmd, spec.workdir.with_extension("stderr.log"))
}

/// Three stores' workdirs under `dir` and free loopback addresses.
fn store_specs(dir: &Path) -> Vec<StoreSpec> {
    (1..=3)
        .map(|i| StoreSpec {
            workdir: dir.join(format!("store-{i}")),
            redis: free_addr(),
            rpc: free_addr(),
        })
        .collect()
}

/// A client of the cluster: sends each command to a store and follows `-MOVED`; a store
/// that is down, or answers `-TRYAGAIN`/`-CLUSTERDOWN`, sends it to the next store.
struct ClusterClient {
    stores: Vec<String>,
    conns: BTreeMap<String, Client>,
    /// MOVED replies followed (shows redirection happened).
    redirects: usize,
    /// The stores' stderr logs, shown when a read is not answered in time.
    logs: Vec<std::path::PathBuf>,
}

impl ClusterClient {
    fn new(specs: &[StoreSpec]) -> ClusterClient {
        ClusterClient {
            stores: specs.iter().map(|s| s.redis.clone()).collect(),
            conns: BTreeMap::new(),
            redirects: 0,
            logs: specs
                .iter()
                .map(|s| s.workdir.with_extension("stderr.log"))
                .collect(),
        }
    }

    /// The last lines of every store's log (for a failure message).
    fn log_tails(&self) -> String {
        let mut out = String::new();
        for (i, path) in self.logs.iter().enumerate() {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(15);
            out.push_str(&format!(
                "--- store {i} ({}):\n{}\n",
                path.display(),
                lines[from..].join("\n")
            ));
        }
        out
    }

    /// Sends `args` starting at store `first` until a final reply or `bound` passes
    /// (None: not answered in time, so not acknowledged).
    fn call(&mut self, first: usize, args: &[&[u8]], bound: Duration) -> Option<R> {
        let deadline = Instant::now() + bound;
        let mut next = first;
        let mut target = self.stores[first % self.stores.len()].clone();
        // Bounded by the deadline.
        while Instant::now() < deadline {
            let conn = match self.conns.get_mut(&target) {
                Some(c) => c,
                None => match Client::try_connect(&target, IO_TIMEOUT) {
                    Some(c) => self.conns.entry(target.clone()).or_insert(c),
                    None => {
                        next += 1;
                        target = self.stores[next % self.stores.len()].clone();
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                },
            };
            match conn.try_cmd(args) {
                None => {
                    self.conns.remove(&target);
                    next += 1;
                    target = self.stores[next % self.stores.len()].clone();
                    std::thread::sleep(Duration::from_millis(50));
                }
                Some(R::Error(e)) if e.starts_with("MOVED ") => {
                    self.redirects += 1;
                    target = e.split(' ').nth(2).unwrap_or_default().to_string();
                }
                Some(R::Error(e))
                    if e.starts_with("TRYAGAIN")
                        || e.starts_with("CLUSTERDOWN")
                        || e.starts_with("BUSY") =>
                {
                    next += 1;
                    target = self.stores[next % self.stores.len()].clone();
                    std::thread::sleep(Duration::from_millis(50));
                }
                Some(r) => return Some(r),
            }
        }
        None
    }

    /// SET key value; whether it was acknowledged.
    fn set(&mut self, first: usize, key: &str, value: &str, bound: Duration) -> bool {
        match self.call(first, &[b"SET", key.as_bytes(), value.as_bytes()], bound) {
            Some(R::Simple(s)) if s == "OK" => true,
            None => false,
            Some(other) => panic!("SET {key}: {other:?}"),
        }
    }

    /// GET key (panics when not answered within `bound`).
    fn get(&mut self, first: usize, key: &str, bound: Duration) -> R {
        match self.call(first, &[b"GET", key.as_bytes()], bound) {
            Some(r) => r,
            None => panic!(
                "GET {key} through store {first}: no answer in time\n{}",
                self.log_tails()
            ),
        }
    }
}

/// How many of `keys` store `addr` answers itself (it leads their regions).
fn keys_led(addr: &str, keys: &[String]) -> usize {
    let Some(mut c) = Client::try_connect(addr, IO_TIMEOUT) else {
        return 0;
    };
    keys.iter()
        .filter(|k| {
            matches!(c.try_cmd(&[b"GET", k.as_bytes()]), Some(r) if !matches!(&r, R::Error(e) if e.starts_with("MOVED") || e.starts_with("TRYAGAIN")))
        })
        .count()
}

fn start_coordinator(dir: &Path) -> (Arc<Coordinator>, CoordServer, String) {
    let config = Config {
        workdir: dir.to_path_buf(),
        cluster_id: 7,
        store_down_after: Duration::from_secs(30),
        clock: Arc::new(SystemClock::new()),
        replica: None,
    };
    let coord = Arc::new(Coordinator::open(config).expect("coordinator opens"));
    let server = CoordServer::start(coord.clone(), "127.0.0.1:0", ServerOptions::default())
        .expect("coordinator serves");
    let addr = server.local_addr().to_string();
    (coord, server, addr)
}

/// Starts the three stores at once with `env` (each waits for the others before it listens).
fn start_all(
    specs: &[StoreSpec],
    coordinator: &str,
    env: &'static [(&'static str, &'static str)],
) -> Vec<Option<Server>> {
    let handles: Vec<_> = specs
        .iter()
        .cloned()
        .map(|spec| {
            let coordinator = coordinator.to_string();
            std::thread::spawn(move || start_store_env(&spec, &coordinator, env))
        })
        .collect();
    handles
        .into_iter()
        .map(|h| Some(h.join().expect("store started")))
        .collect()
}

/// The log lines about snapshots of every store (for a failure message).
fn snapshot_log(client: &ClusterClient) -> String {
    let mut out = String::new();
    for (i, path) in client.logs.iter().enumerate() {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        for l in text
            .lines()
            .filter(|l| l.contains("snapshot") || l.contains("WARN") || l.contains("ERROR"))
            .take(40)
        {
            out.push_str(&format!("store {i}: {l}\n"));
        }
    }
    out
}

/// Sum of counter `name` (with `labels`) over the running `stores`.
fn counter(stores: &[Option<Server>], name: &str, labels: &str) -> f64 {
    stores
        .iter()
        .flatten()
        .filter_map(|s| support::sample(&s.scrape(), name, labels))
        .sum()
}

/// Sum of `nokv_raft_messages_dropped_total{reason="snapshot"}` over both cores.
fn snapshot_drops(stores: &[Option<Server>]) -> f64 {
    (0..2)
        .map(|core| {
            counter(
                stores,
                "nokv_raft_messages_dropped_total",
                &format!("core=\"{core}\",reason=\"snapshot\""),
            )
        })
        .sum()
}

/// Runs the scenario up to the restart of the lagging store and the kill of another;
/// returns the running stores (the restarted one at `victim`), the client, the
/// acknowledged writes, the lagging store and the remaining other one.
struct Lagged {
    stores: Vec<Option<Server>>,
    client: ClusterClient,
    acked: BTreeMap<String, String>,
    victim: usize,
    other: usize,
    coord_server: CoordServer,
    _dir: tempfile::TempDir,
}

fn lag_one_store(env: &'static [(&'static str, &'static str)]) -> Lagged {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let (_coord, coord_server, coord_addr) = start_coordinator(&dir.path().join("coord"));
    let specs = store_specs(dir.path());
    let mut stores = start_all(&specs, &coord_addr, env);
    let addrs: Vec<String> = specs.iter().map(|s| s.redis.clone()).collect();
    let mut client = ClusterClient::new(&specs);
    let mut acked: BTreeMap<String, String> = BTreeMap::new();
    for i in 0..80 {
        let (k, v) = (format!("key:{i}"), format!("value-{i}"));
        assert!(
            client.set(i % 3, &k, &v, OP_BOUND * 2),
            "SET {k} not acknowledged in time"
        );
        acked.insert(k, v);
    }
    eprintln!("{:?}: 80 writes acknowledged", started.elapsed());

    // The store leading the fewest keys goes away (a follower of most regions).
    let keys: Vec<String> = acked.keys().cloned().collect();
    let led: Vec<usize> = addrs.iter().map(|a| keys_led(a, &keys)).collect();
    let victim = (0..3).min_by_key(|&i| led[i]).expect("stores");
    stores[victim].take().expect("running").kill();
    let survivors: Vec<usize> = (0..3).filter(|&i| i != victim).collect();
    for i in 80..80 + LAGGING_WRITES {
        let (k, v) = (format!("key:{i}"), format!("value-{i}"));
        assert!(
            client.set(survivors[i % 2], &k, &v, OP_BOUND),
            "SET {k} with store {victim} down"
        );
        acked.insert(k, v);
    }
    eprintln!(
        "{:?}: {LAGGING_WRITES} writes with store {victim} down",
        started.elapsed()
    );

    stores[victim] = Some(start_store_env(&specs[victim], &coord_addr, env));
    eprintln!("{:?}: store {victim} restarted", started.elapsed());
    // Give the leaders a few heartbeats to find it (and ship, when they can) before the
    // other store goes: the wait below is what is bounded, not this.
    std::thread::sleep(Duration::from_secs(3));
    let other = survivors[0];
    stores[other].take().expect("running").kill();
    eprintln!("{:?}: killed store {other}", started.elapsed());
    Lagged {
        stores,
        client,
        acked,
        victim,
        other,
        coord_server,
        _dir: dir,
    }
}

#[test]
fn a_store_that_missed_compacted_log_catches_up_from_shipped_snapshots() {
    let mut l = lag_one_store(&[("NOKV_DEBUG_RAFT_CACHED_ENTRIES", CACHED_ENTRIES)]);
    let remaining: Vec<usize> = (0..3).filter(|&i| i != l.other).collect();
    // With one of the others gone the restarted store is in every quorum: a write is
    // acknowledged only once it caught up.
    for i in 0..20 {
        let (k, v) = (format!("after:{i}"), format!("value-{i}"));
        assert!(
            l.client.set(l.victim, &k, &v, OP_BOUND),
            "SET {k}: the restarted store caught up\n{}",
            l.client.log_tails()
        );
        l.acked.insert(k, v);
    }
    for &first in &remaining {
        for (k, v) in &l.acked {
            assert_eq!(
                l.client.get(first, k, OP_BOUND),
                R::bulk(v),
                "{k} through store {first}"
            );
        }
    }
    let victim = std::slice::from_ref(&l.stores[l.victim]);
    let received = counter(victim, "nokv_snapshot_received_total", "");
    let bytes = counter(victim, "nokv_snapshot_bytes_received_total", "");
    let sent = counter(&l.stores, "nokv_snapshot_sent_total", "");
    assert!(
        received > 0.0,
        "the restarted store received snapshots\n{}",
        snapshot_log(&l.client)
    );
    assert!(bytes > 0.0, "with their files");
    // The senders that still run: the remaining other store (the killed one may have
    // sent some too).
    assert!(sent > 0.0 || received > 0.0, "snapshots were sent");
    assert_eq!(
        snapshot_drops(&l.stores),
        0.0,
        "no snapshot message dropped"
    );
    eprintln!("snapshots: received {received} ({bytes} bytes), sent by the remaining store {sent}");
    for s in l.stores.into_iter().flatten() {
        let status = s.terminate();
        assert!(status.success(), "SIGTERM exits 0: {status:?}");
    }
    l.coord_server.shutdown();
}

#[test]
fn without_snapshot_shipping_no_snapshot_reaches_the_lagging_store() {
    let mut l = lag_one_store(&[
        ("NOKV_DEBUG_RAFT_CACHED_ENTRIES", CACHED_ENTRIES),
        ("NOKV_DEBUG_NO_SNAPSHOT_SHIPPING", "1"),
    ]);
    // Writes that need the lagging store: reported, not asserted (see the module docs).
    let mut refused = 0;
    for i in 0..8 {
        let (k, v) = (format!("after:{i}"), format!("value-{i}"));
        if !l.client.set(l.victim, &k, &v, OP_BOUND / 2) {
            refused += 1;
            break;
        }
    }
    let applied: f64 = (0..2)
        .map(|core| {
            counter(
                std::slice::from_ref(&l.stores[l.victim]),
                "nokv_raft_applied_entries_total",
                &format!("core=\"{core}\""),
            )
        })
        .sum();
    eprintln!(
        "writes not acknowledged in time: {refused}; entries the restarted store applied: {applied}"
    );
    let victim = std::slice::from_ref(&l.stores[l.victim]);
    assert_eq!(counter(victim, "nokv_snapshot_received_total", ""), 0.0);
    assert!(
        snapshot_drops(&l.stores) > 0.0,
        "the leader's snapshot messages were dropped"
    );
    for s in l.stores.into_iter().flatten() {
        let _ = s.terminate();
    }
    l.coord_server.shutdown();
}

//! A three-store cluster for the system tests: real `nokv-server` processes on loopback,
//! a coordinator in the test's process, and a client that follows `-MOVED`.

use super::{Client, Server, R};
use nokv_coordinator::proto::ScanRegionsRequest;
use nokv_coordinator::{Config, Coordinator, Server as CoordServer, ServerOptions, SystemClock};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The stores' shortest election timeout (10 ticks of 100 ms).
pub const ELECTION_TIMEOUT: Duration = Duration::from_secs(1);
/// Bound for one operation while leaders may be changing: 10x the election timeout, plus
/// the raft log and start-up work of a debug build on a shared machine.
pub const OP_BOUND: Duration = Duration::from_secs(30);
/// Connect and read timeout of the client's connections.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A free loopback address (bound, read, released).
pub fn free_addr() -> String {
    format!("127.0.0.1:{}", super::free_port())
}

/// One store's fixed addresses and workdir (kept over restarts).
#[derive(Clone)]
pub struct StoreSpec {
    pub workdir: std::path::PathBuf,
    pub redis: String,
    pub rpc: String,
    /// `--redirect`: `moved` (the scenarios that tell leaders apart by `-MOVED`) or
    /// `forward` (the server's default).
    pub redirect: &'static str,
}

/// Starts `nokv-server` for `spec` and waits for its listening line (which comes once the
/// store has its regions, i.e. after the cluster's bootstrap).
pub fn start_store(spec: &StoreSpec, coordinator: &str) -> Server {
    start_store_env(spec, coordinator, &[])
}

/// [`start_store`] with extra environment variables (debug knobs).
pub fn start_store_env(spec: &StoreSpec, coordinator: &str, env: &[(&str, &str)]) -> Server {
    start_store_args(spec, coordinator, env, &[])
}

/// [`start_store_env`] with extra command-line flags.
pub fn start_store_args(
    spec: &StoreSpec,
    coordinator: &str,
    env: &[(&str, &str)],
    flags: &[&str],
) -> Server {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nokv-server"));
    add_store_args(&mut cmd, spec, coordinator);
    cmd.args(flags).envs(env.iter().copied());
    Server::launch(cmd, spec.workdir.with_extension("stderr.log"))
}

/// Adds the flags of `spec`'s store in a cluster at `coordinator` to `cmd` (the server,
/// or a wrapper that runs it) and creates its workdir.
pub fn add_store_args(cmd: &mut Command, spec: &StoreSpec, coordinator: &str) {
    std::fs::create_dir_all(&spec.workdir).expect("workdir");
    cmd.arg("--workdir")
        .arg(&spec.workdir)
        .args(["--redis-addr", &spec.redis])
        .args(["--rpc-addr", &spec.rpc])
        .args(["--redirect", spec.redirect])
        .args(["--coordinator", coordinator])
        .args(["--cores", "2", "--cluster-id", "7"])
        .args(["--memory-limit", "128MiB", "--metrics-addr", "127.0.0.1:0"]);
}

/// The last lines of every store's log, from a panic's message if there is one (for a
/// failure message).
pub fn log_tails(specs: &[StoreSpec]) -> String {
    let mut out = String::new();
    for s in specs {
        let path = s.workdir.with_extension("stderr.log");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        // A panic's message, else the last lines.
        let from = lines
            .iter()
            .position(|l| l.contains("panicked"))
            .unwrap_or(lines.len().saturating_sub(20));
        out.push_str(&format!(
            "--- {}:\n{}\n",
            path.display(),
            lines[from..(from + 20).min(lines.len())].join("\n")
        ));
    }
    out
}

/// Three stores' workdirs under `dir` and free loopback addresses.
pub fn store_specs(dir: &Path) -> Vec<StoreSpec> {
    (1..=3)
        .map(|i| StoreSpec {
            workdir: dir.join(format!("store-{i}")),
            redis: free_addr(),
            rpc: free_addr(),
            redirect: "moved",
        })
        .collect()
}

/// The store that leads the most of the `acked` keys, and how many each store leads.
pub fn busiest_leader(addrs: &[String], acked: &BTreeMap<String, String>) -> (usize, Vec<usize>) {
    let keys: Vec<String> = acked.keys().cloned().collect();
    let led: Vec<usize> = addrs.iter().map(|a| keys_led(a, &keys)).collect();
    let victim = (0..led.len()).max_by_key(|&i| led[i]).expect("stores");
    (victim, led)
}

/// Starts the three stores at once (each waits for the others before it listens); each
/// slot is emptied when its store is killed.
pub fn start_stores(specs: &[StoreSpec], coordinator: &str) -> Vec<Option<Server>> {
    start_stores_args(specs, coordinator, &[])
}

/// [`start_stores`] with extra command-line flags for every store.
pub fn start_stores_args(
    specs: &[StoreSpec],
    coordinator: &str,
    flags: &[&str],
) -> Vec<Option<Server>> {
    let flags: Vec<String> = flags.iter().map(|f| f.to_string()).collect();
    let handles: Vec<_> = specs
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, spec)| {
            let coordinator = coordinator.to_string();
            // The first store addresses every raft message to core 0 of the other stores,
            // whatever the placement: they must hand messages to the core of the region.
            let env: &'static [(&str, &str)] = if i == 0 {
                &[("NOKV_DEBUG_RAFT_TO_CORE", "0")]
            } else {
                &[]
            };
            let flags = flags.clone();
            std::thread::spawn(move || {
                let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
                start_store_args(&spec, &coordinator, env, &flags)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| Some(h.join().expect("store started")))
        .collect()
}

/// A client of the cluster: sends each command to a store and follows `-MOVED`; a store
/// that is down, or answers `-TRYAGAIN`/`-CLUSTERDOWN`, sends it to the next store.
pub struct ClusterClient {
    pub stores: Vec<String>,
    pub conns: BTreeMap<String, Client>,
    /// MOVED replies followed (shows redirection happened).
    pub redirects: usize,
    /// The stores' stderr logs, shown when a read is not answered in time.
    pub logs: Vec<std::path::PathBuf>,
}

impl ClusterClient {
    pub fn new(specs: &[StoreSpec]) -> ClusterClient {
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
    pub fn log_tails(&self) -> String {
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
    pub fn call(&mut self, first: usize, args: &[&[u8]], bound: Duration) -> Option<R> {
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
    pub fn set(&mut self, first: usize, key: &str, value: &str, bound: Duration) -> bool {
        match self.call(first, &[b"SET", key.as_bytes(), value.as_bytes()], bound) {
            Some(R::Simple(s)) if s == "OK" => true,
            None => false,
            Some(other) => panic!("SET {key}: {other:?}"),
        }
    }

    /// GET key (panics when not answered within `bound`).
    pub fn get(&mut self, first: usize, key: &str, bound: Duration) -> R {
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
pub fn keys_led(addr: &str, keys: &[String]) -> usize {
    let Some(mut c) = Client::try_connect(addr, IO_TIMEOUT) else {
        return 0;
    };
    keys.iter()
        .filter(|k| {
            matches!(c.try_cmd(&[b"GET", k.as_bytes()]), Some(r) if !matches!(&r, R::Error(e) if e.starts_with("MOVED") || e.starts_with("TRYAGAIN")))
        })
        .count()
}

/// Every acknowledged write reads back, through every store in `entry`.
pub fn check_all(client: &mut ClusterClient, acked: &BTreeMap<String, String>, entry: &[usize]) {
    for &first in entry {
        for (k, v) in acked {
            assert_eq!(
                client.get(first, k, OP_BOUND),
                R::bulk(v),
                "{k} through store {first}"
            );
        }
    }
}

/// A coordinator (cluster id 7) on its workdir `dir`, serving on a free loopback port;
/// its scheduler is off (tests that move replicas or leaders themselves).
pub fn start_coordinator(dir: &Path) -> (Arc<Coordinator>, CoordServer, String) {
    start_coordinator_with(dir, Duration::from_secs(30), false)
}

/// [`start_coordinator`] with a store-down time and the scheduler on or off (switchable
/// later with `Coordinator::set_scheduling`).
pub fn start_coordinator_with(
    dir: &Path,
    store_down_after: Duration,
    schedule: bool,
) -> (Arc<Coordinator>, CoordServer, String) {
    start_coordinator_on(dir, store_down_after, schedule, "127.0.0.1:0")
}

/// [`start_coordinator_with`] serving on `bind`.
pub fn start_coordinator_on(
    dir: &Path,
    store_down_after: Duration,
    schedule: bool,
    bind: &str,
) -> (Arc<Coordinator>, CoordServer, String) {
    start_coordinator_tuned(dir, bind, |config| {
        config.store_down_after = store_down_after;
        config.scheduler.enabled = schedule;
    })
}

/// A coordinator of cluster 7 serving on `bind`, its default config changed by `tune`.
pub fn start_coordinator_tuned(
    dir: &Path,
    bind: &str,
    tune: impl FnOnce(&mut Config),
) -> (Arc<Coordinator>, CoordServer, String) {
    let mut config = Config::new(dir, 7);
    config.clock = Arc::new(SystemClock::new());
    tune(&mut config);
    let coord = Arc::new(Coordinator::open(config).expect("coordinator opens"));
    let server = CoordServer::start(coord.clone(), bind, ServerOptions::default())
        .expect("coordinator serves");
    let addr = server.local_addr().to_string();
    (coord, server, addr)
}

/// A running cluster of three or four stores (a fourth joined after the writes).
pub struct Cluster {
    pub coord: std::sync::Arc<Coordinator>,
    /// Keeps the coordinator serving.
    pub coord_server: nokv_coordinator::Server,
    pub coord_addr: String,
    pub specs: Vec<StoreSpec>,
    pub servers: Vec<Option<Server>>,
    pub ids: Vec<u64>,
    pub acked: BTreeMap<String, String>,
    pub client: ClusterClient,
    /// Keeps the workdirs.
    pub dir: tempfile::TempDir,
}

/// The newest store id registered with `redis` as its address.
pub fn id_at(coord: &Coordinator, redis: &str) -> u64 {
    coord
        .stores()
        .iter()
        .filter_map(|i| i.meta.as_ref())
        .filter(|m| m.redis_addr == redis)
        .map(|m| m.id)
        .max()
        .unwrap_or_else(|| panic!("store at {redis} registered"))
}

/// Starts a coordinator (in this process; scheduler on when `schedule`, stores down after
/// `down_after`) and three stores, writes `keys` keys (`key:<i>`), then starts a fourth
/// store (holding nothing) when `fourth`.
pub fn start_written(schedule: bool, down_after: Duration, fourth: bool, keys: usize) -> Cluster {
    let dir = tempfile::tempdir().expect("tempdir");
    let (coord, server, coord_addr) =
        start_coordinator_with(&dir.path().join("coord"), down_after, schedule);
    let stores = if fourth { 4 } else { 3 };
    let specs: Vec<StoreSpec> = (1..=stores)
        .map(|i| StoreSpec {
            workdir: dir.path().join(format!("store-{i}")),
            redis: free_addr(),
            rpc: free_addr(),
            redirect: "moved",
        })
        .collect();
    // The first three start together (the cluster bootstraps once they registered).
    let handles: Vec<_> = specs[..3]
        .iter()
        .cloned()
        .map(|spec| {
            let coord_addr = coord_addr.clone();
            std::thread::spawn(move || start_store(&spec, &coord_addr))
        })
        .collect();
    let mut servers: Vec<Option<Server>> = handles
        .into_iter()
        .map(|h| Some(h.join().expect("store started")))
        .collect();
    let mut client = ClusterClient::new(&specs[..3]);
    let mut acked = BTreeMap::new();
    for i in 0..keys {
        let (k, v) = (format!("key:{i}"), format!("value-{i}"));
        assert!(
            client.set(i % 3, &k, &v, OP_BOUND),
            "SET {k} not acknowledged in time\n{}",
            client.log_tails()
        );
        acked.insert(k, v);
    }
    if fourth {
        // The fourth store joins; the bootstrap placed nothing on it.
        servers.push(Some(start_store(&specs[3], &coord_addr)));
    }
    let ids: Vec<u64> = specs.iter().map(|s| id_at(&coord, &s.redis)).collect();
    for route in coord
        .scan_regions(&ScanRegionsRequest::default())
        .expect("scan regions")
    {
        let region = route.region.expect("a route's region");
        let voters = region.peers.iter().filter(|p| !p.learner).count();
        assert_eq!(voters, 3, "region {} bootstrapped with 3 voters", region.id);
    }
    let client = ClusterClient::new(&specs);
    Cluster {
        coord,
        coord_server: server,
        coord_addr,
        specs,
        servers,
        ids,
        acked,
        client,
        dir,
    }
}

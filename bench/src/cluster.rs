//! `nokv-bench cluster`: the same closed-loop clients against a NoKV cluster (RESP, following
//! `-MOVED` like a cluster client) and an etcd cluster (v3 JSON gateway over HTTP/1.1
//! keep-alive), 100-byte values, at several client counts; put then get phases, each bounded
//! by an operation count and a time, after an unmeasured warm-up. Prints a table and
//! writes a JSON results file.

mod events;
#[cfg(test)]
mod fake;
mod wire;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex, RwLock};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};

use crate::error::{BenchError, Result};
use wire::{Conn, Reply};

/// Flags of `nokv-bench cluster`.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// NoKV stores' Redis addresses (host:port, comma-separated); clients start at one and
    /// follow -MOVED. Empty skips NoKV.
    #[arg(long, value_delimiter = ',')]
    pub nokv: Vec<String>,
    /// etcd members' client addresses (host:port, comma-separated); clients are spread
    /// over them round-robin, like etcd's client balancer. Empty skips etcd.
    #[arg(long, value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// Concurrent clients per run (comma-separated); each client has one connection per
    /// server it talks to and one request outstanding (closed loop).
    #[arg(long, value_delimiter = ',', default_value = "16,64,256")]
    pub clients: Vec<usize>,
    /// How the clients run: `events` multiplexes them over --driver-threads epoll loops,
    /// `threads` gives each its own thread with blocking I/O.
    #[arg(long, value_enum, default_value_t = Driver::Events)]
    pub driver: Driver,
    /// Threads of the `events` driver; the clients are dealt over them round-robin.
    #[arg(long, default_value_t = 2)]
    pub driver_threads: usize,
    /// Operations per measured phase (a phase also stops after --duration).
    #[arg(long, default_value_t = 200_000)]
    pub ops: u64,
    /// Longest measured phase, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Unmeasured warm-up before each phase, seconds (same operation, same clients).
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Distinct keys; loaded once per system before the runs so that every get hits.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Where to write the JSON results.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// NoKV server process ids (comma-separated): their CPU time per operation is reported.
    #[arg(long, value_delimiter = ',')]
    pub nokv_pids: Vec<u32>,
    /// etcd process ids (comma-separated): their CPU time per operation is reported.
    #[arg(long, value_delimiter = ',')]
    pub etcd_pids: Vec<u32>,
}

/// How a phase's closed-loop clients are driven.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Driver {
    /// A few threads, each an epoll loop over its share of the clients' connections.
    Events,
    /// One OS thread per client, blocking write then read.
    Threads,
}

/// utime+stime of a process (every thread), microseconds; None if it is gone. USER_HZ is 100
/// on Linux.
fn cpu_us(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks * 10_000)
}

fn pids_cpu_us(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|p| cpu_us(&p.to_string())).sum()
}

/// What a benchmark client does: one operation on a key, Ok(true) when it found the key
/// (puts always do).
trait KvClient {
    fn run(&mut self, op: Op, key: &[u8], value: &[u8]) -> std::result::Result<bool, String>;
    /// -MOVED redirections followed so far.
    fn redirects(&self) -> u64 {
        0
    }
}

/// The slot -> leader map of one process, shared by its clients (like a cluster client's
/// slot table): filled from -MOVED replies, read with one atomic load per request.
pub struct SlotMap {
    slots: Vec<AtomicU16>,
    addrs: RwLock<Vec<String>>,
}

const NO_ADDR: u16 = u16::MAX;

/// Attempts of one operation (redirects and retries included) before it fails.
const MAX_TRIES: u32 = 1000;

/// Wait before retrying a `-TRYAGAIN` reply.
const TRYAGAIN_DELAY: Duration = Duration::from_millis(5);

impl SlotMap {
    fn new() -> Self {
        SlotMap {
            slots: (0..wire::SLOTS).map(|_| AtomicU16::new(NO_ADDR)).collect(),
            addrs: RwLock::new(Vec::new()),
        }
    }

    /// Records that `slot` is led by `addr` (a -MOVED reply).
    fn learn(&self, slot: u16, addr: &str) {
        let mut addrs = self.addrs.write().expect("lock");
        let i = match addrs.iter().position(|a| a == addr) {
            Some(i) => i,
            None => {
                addrs.push(addr.to_string());
                addrs.len() - 1
            }
        };
        self.slots[slot as usize & (wire::SLOTS - 1)].store(i as u16, Ordering::Relaxed);
    }
}

/// What a NoKV client does next with a reply to a command on a key.
#[derive(Debug)]
enum Step {
    /// The command's answer.
    Done(Reply),
    /// -MOVED: the slot map learnt the leader; send the command again.
    Redirected,
    /// -TRYAGAIN: send it again after [`TRYAGAIN_DELAY`].
    TryAgain,
    /// Any other error reply (its text).
    Failed(String),
}

/// One NoKV client's routing: the seed store, the process's slot map, the redirects followed.
struct Router {
    seed: String,
    map: Arc<SlotMap>,
    /// This client's copy of `map.addrs` (grows only).
    addrs: Vec<String>,
    redirects: u64,
}

impl Router {
    fn new(seed: String, map: Arc<SlotMap>) -> Self {
        Router {
            seed,
            map,
            addrs: Vec::new(),
            redirects: 0,
        }
    }

    /// The store to send a key of `slot` to: the known leader, else the seed.
    fn addr_for(&mut self, slot: u16) -> &str {
        match self.map.slots[slot as usize].load(Ordering::Relaxed) {
            NO_ADDR => &self.seed,
            i => {
                if i as usize >= self.addrs.len() {
                    self.addrs = self.map.addrs.read().expect("lock").clone();
                }
                &self.addrs[i as usize]
            }
        }
    }

    /// Classifies a reply to a command on a key of `slot`, learning from -MOVED.
    fn route(&mut self, slot: u16, reply: Reply) -> Step {
        match reply {
            Reply::Error(e) => {
                if let Some((s, a)) = wire::parse_moved(&e) {
                    self.redirects += 1;
                    // The reply's slot and the key's own: both are led by `a`.
                    self.map.learn(s, &a);
                    self.map.learn(slot, &a);
                    Step::Redirected
                } else if e.starts_with("TRYAGAIN") {
                    Step::TryAgain
                } else {
                    Step::Failed(e)
                }
            }
            r => Step::Done(r),
        }
    }
}

/// Appends the RESP command of `op` on `key` to `out`.
fn nokv_command(out: &mut Vec<u8>, op: Op, key: &[u8], value: &[u8]) {
    match op {
        Op::Put => wire::encode_command(out, &[b"SET", key, value]),
        Op::Get => wire::encode_command(out, &[b"GET", key]),
    }
}

/// The result of `op` from NoKV's answer: Ok(found).
fn nokv_outcome(op: Op, reply: Reply) -> std::result::Result<bool, String> {
    match (op, reply) {
        (Op::Put, Reply::Simple(_)) => Ok(true),
        (Op::Get, Reply::Bulk(v)) => Ok(v.is_some()),
        (Op::Put, r) => Err(format!("SET answered {r:?}")),
        (Op::Get, r) => Err(format!("GET answered {r:?}")),
    }
}

/// A NoKV cluster client: its router, one connection per store it has talked to.
struct NokvClient {
    router: Router,
    conns: HashMap<String, Conn>,
    buf: Vec<u8>,
}

impl NokvClient {
    fn new(seed: String, map: Arc<SlotMap>) -> Self {
        NokvClient {
            router: Router::new(seed, map),
            conns: HashMap::new(),
            buf: Vec::with_capacity(512),
        }
    }

    fn exec(&mut self, op: Op, key: &[u8], value: &[u8]) -> std::result::Result<Reply, String> {
        let slot = wire::slot(key);
        self.buf.clear();
        nokv_command(&mut self.buf, op, key, value);
        for _ in 0..MAX_TRIES {
            let addr = self.router.addr_for(slot).to_string();
            let conn = match self.conns.entry(addr.clone()) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(Conn::connect(&addr).map_err(|e| format!("connect {addr}: {e}"))?)
                }
            };
            let reply = match conn.send(&self.buf).and_then(|()| conn.read_reply()) {
                Ok(r) => r,
                Err(e) => {
                    self.conns.remove(&addr);
                    return Err(format!("{addr}: {e}"));
                }
            };
            match self.router.route(slot, reply) {
                Step::Done(r) => return Ok(r),
                Step::Redirected => {}
                Step::TryAgain => std::thread::sleep(TRYAGAIN_DELAY),
                Step::Failed(e) => return Err(format!("{addr}: -{e}")),
            }
        }
        Err(format!(
            "no leader after {MAX_TRIES} tries (-MOVED/-TRYAGAIN)"
        ))
    }
}

impl KvClient for NokvClient {
    fn run(&mut self, op: Op, key: &[u8], value: &[u8]) -> std::result::Result<bool, String> {
        nokv_outcome(op, self.exec(op, key, value)?)
    }
    fn redirects(&self) -> u64 {
        self.router.redirects
    }
}

/// The etcd gateway path and JSON body of `op` on `key`.
fn etcd_request(op: Op, key: &[u8], value: &[u8]) -> (&'static str, Vec<u8>) {
    let body = match op {
        Op::Put => wire::etcd_put_body(key, value),
        Op::Get => wire::etcd_range_body(key),
    };
    (etcd_request_path(op), body)
}

/// The result of `op` from etcd's HTTP answer: Ok(found); errors name the path.
fn etcd_outcome(op: Op, status: u16, body: &[u8]) -> std::result::Result<bool, String> {
    let path = etcd_request_path(op);
    if status != 200 {
        return Err(format!(
            "{path}: HTTP {status}: {}",
            String::from_utf8_lossy(body)
        ));
    }
    match op {
        Op::Put => Ok(true),
        Op::Get => wire::etcd_range_value(body)
            .map(|v| v.is_some())
            .map_err(|e| format!("{path}: {e}")),
    }
}

fn etcd_request_path(op: Op) -> &'static str {
    match op {
        Op::Put => "/v3/kv/put",
        Op::Get => "/v3/kv/range",
    }
}

/// An etcd v3 client over the JSON gateway (one member, one keep-alive connection).
struct EtcdClient {
    addr: String,
    conn: Option<Conn>,
    buf: Vec<u8>,
}

impl KvClient for EtcdClient {
    fn run(&mut self, op: Op, key: &[u8], value: &[u8]) -> std::result::Result<bool, String> {
        let (path, body) = etcd_request(op, key, value);
        self.buf.clear();
        wire::encode_post(&mut self.buf, &self.addr, path, &body);
        let conn = match &mut self.conn {
            Some(c) => c,
            None => self.conn.insert(
                Conn::connect(&self.addr).map_err(|e| format!("connect {}: {e}", self.addr))?,
            ),
        };
        match conn.send(&self.buf).and_then(|()| conn.read_http()) {
            Ok((status, body)) => {
                etcd_outcome(op, status, &body).map_err(|e| format!("{} {e}", self.addr))
            }
            Err(e) => {
                self.conn = None;
                Err(format!("{} {path}: {e}", self.addr))
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum System {
    Nokv,
    Etcd,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Nokv => "nokv",
            System::Etcd => "etcd",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Put,
    Get,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Get => "get",
        }
    }
}

/// One system under test: its endpoints and (NoKV) the process's slot map.
struct Target {
    system: System,
    endpoints: Vec<String>,
    slots: Arc<SlotMap>,
}

impl Target {
    /// The endpoint client `i` starts at (round-robin).
    fn endpoint(&self, i: usize) -> String {
        self.endpoints[i % self.endpoints.len()].clone()
    }
}

fn make_client(target: &Target, i: usize) -> Box<dyn KvClient> {
    let addr = target.endpoint(i);
    match target.system {
        System::Nokv => Box::new(NokvClient::new(addr, target.slots.clone())),
        System::Etcd => Box::new(EtcdClient {
            addr,
            conn: None,
            buf: Vec::with_capacity(512),
        }),
    }
}

fn key_of(i: u64) -> Vec<u8> {
    format!("bench:{i:012}").into_bytes()
}

/// xorshift64*: a cheap per-client key picker.
struct Rng(u64);

impl Rng {
    /// Client `t`'s generator (the same sequence under either driver).
    fn for_client(t: usize) -> Self {
        Rng(0x9E37_79B9_7F4A_7C15 ^ ((t as u64 + 1) << 20))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// One measured phase's results.
#[derive(Debug, Clone)]
struct PhaseResult {
    system: System,
    op: Op,
    clients: usize,
    ops: u64,
    secs: f64,
    ops_per_sec: f64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
    errors: u64,
    misses: u64,
    redirects: u64,
    /// CPU time of this benchmark process (all clients) per operation, microseconds.
    client_cpu_us: f64,
    /// CPU time of the servers (--nokv-pids / --etcd-pids) per operation, microseconds.
    server_cpu_us: f64,
    first_error: Option<String>,
}

fn percentile(sorted: &[u32], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as u64
}

/// Loads every key once (unmeasured) with 64 clients so that gets hit.
fn preload(target: &Target, keys: u64, value: &[u8]) -> Result<()> {
    let threads = 64.min(keys.max(1) as usize);
    let failed: Mutex<Option<String>> = Mutex::new(None);
    std::thread::scope(|s| {
        for t in 0..threads {
            let failed = &failed;
            s.spawn(move || {
                let mut c = make_client(target, t);
                let mut k = t as u64;
                while k < keys {
                    if let Err(e) = c.run(Op::Put, &key_of(k), value) {
                        *failed.lock().expect("lock") = Some(e);
                        return;
                    }
                    k += threads as u64;
                }
            });
        }
    });
    match failed.into_inner().expect("lock") {
        Some(e) => Err(BenchError::engine(
            "preload",
            format!("{}: {e}", target.system.name()),
        )),
        None => Ok(()),
    }
}

/// What one phase asks of every client, whichever driver runs it.
struct Phase<'a> {
    target: &'a Target,
    op: Op,
    keys: u64,
    value: &'a [u8],
    warmup: Duration,
    duration: Duration,
    /// The phase's operation bound, shared by all clients through `issued`.
    ops: u64,
    issued: AtomicU64,
}

impl Phase<'_> {
    /// The next key of a client.
    fn key(&self, rng: &mut Rng) -> Vec<u8> {
        key_of(rng.next() % self.keys)
    }

    /// The admission of measured operations once the phase has begun at `begun`.
    fn gate(&self, begun: Instant) -> Gate<'_> {
        Gate {
            issued: &self.issued,
            ops: self.ops,
            deadline: begun + self.duration,
        }
    }
}

/// Admits a phase's measured operations: at most `ops` in all, none after `deadline`.
struct Gate<'a> {
    issued: &'a AtomicU64,
    ops: u64,
    deadline: Instant,
}

impl Gate<'_> {
    /// The start time of one more operation, or None when the phase is over for the caller.
    fn admit(&self) -> Option<Instant> {
        if self.issued.fetch_add(1, Ordering::Relaxed) >= self.ops {
            return None;
        }
        let t0 = Instant::now();
        (t0 < self.deadline).then_some(t0)
    }
}

/// The start line of a phase: every driver waits at it after its warm-up; the main thread
/// starts the clock and releases them all at once.
struct Release {
    barrier: Barrier,
    start: Mutex<Option<Instant>>,
}

impl Release {
    fn new(drivers: usize) -> Self {
        Release {
            barrier: Barrier::new(drivers + 1),
            start: Mutex::new(None),
        }
    }

    /// Main thread: starts the clock and releases the drivers; returns the start.
    fn go(&self) -> Instant {
        let now = Instant::now();
        *self.start.lock().expect("lock") = Some(now);
        self.barrier.wait();
        now
    }

    /// Driver: waits for the release; returns the phase's start.
    fn wait(&self) -> Instant {
        self.barrier.wait();
        (*self.start.lock().expect("lock")).unwrap_or_else(Instant::now)
    }
}

/// One client's measurements of a phase.
struct ClientStats {
    lat: Vec<u32>,
    end: Instant,
    errors: u64,
    misses: u64,
    redirects: u64,
    first_error: Option<String>,
}

impl ClientStats {
    fn new() -> Self {
        ClientStats {
            lat: Vec::with_capacity(4096),
            end: Instant::now(),
            errors: 0,
            misses: 0,
            redirects: 0,
            first_error: None,
        }
    }

    /// Records an operation started at `t0` that has just ended with `r`.
    fn record(&mut self, t0: Instant, r: std::result::Result<bool, String>) {
        let us = t0.elapsed().as_micros().min(u32::MAX as u128) as u32;
        match r {
            Ok(found) => {
                self.lat.push(us);
                if !found {
                    self.misses += 1;
                }
            }
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }
}

/// The threaded driver's client `t`: warm-up, release, closed loop until the gate closes.
fn threaded_client(phase: &Phase, release: &Release, t: usize) -> ClientStats {
    let mut c = make_client(phase.target, t);
    let mut rng = Rng::for_client(t);
    let mut out = ClientStats::new();
    let warm_end = Instant::now() + phase.warmup;
    while Instant::now() < warm_end {
        let _ = c.run(phase.op, &phase.key(&mut rng), phase.value);
    }
    let before = c.redirects();
    let gate = phase.gate(release.wait());
    while let Some(t0) = gate.admit() {
        let r = c.run(phase.op, &phase.key(&mut rng), phase.value);
        out.record(t0, r);
    }
    out.end = Instant::now();
    out.redirects = c.redirects() - before;
    out
}

fn run_phase(
    target: &Target,
    op: Op,
    clients: usize,
    args: &ClusterArgs,
    value: &[u8],
) -> Result<PhaseResult> {
    let phase = Phase {
        target,
        op,
        keys: args.keys.max(1),
        value,
        warmup: Duration::from_secs_f64(args.warmup),
        duration: Duration::from_secs_f64(args.duration),
        ops: args.ops,
        issued: AtomicU64::new(0),
    };
    let drivers = match args.driver {
        Driver::Threads => clients,
        Driver::Events => args.driver_threads.clamp(1, clients),
    };
    let release = Release::new(drivers);
    let system = target.system;
    let server_pids = match system {
        System::Nokv => &args.nokv_pids,
        System::Etcd => &args.etcd_pids,
    };
    let mut cpu0 = (0, 0);
    let mut begun = Instant::now();
    let outs: Vec<ClientStats> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..drivers)
            .map(|d| {
                let (phase, release) = (&phase, &release);
                s.spawn(move || match args.driver {
                    Driver::Threads => Ok(vec![threaded_client(phase, release, d)]),
                    Driver::Events => {
                        events::drive(phase, release, (d..clients).step_by(drivers).collect())
                    }
                })
            })
            .collect();
        // Every client has connected and warmed up; start the clock and release them.
        cpu0 = (cpu_us("self").unwrap_or(0), pids_cpu_us(server_pids));
        begun = release.go();
        let mut all = Vec::with_capacity(clients);
        for h in handles {
            all.extend(h.join().map_err(|_| BenchError::ThreadPanic)??);
        }
        Ok::<_, BenchError>(all)
    })?;
    let cpu1 = (cpu_us("self").unwrap_or(0), pids_cpu_us(server_pids));
    let end = outs.iter().map(|o| o.end).max().unwrap_or(begun);
    let secs = end.duration_since(begun).as_secs_f64().max(1e-9);
    let mut lat: Vec<u32> = outs.iter().flat_map(|o| o.lat.iter().copied()).collect();
    lat.sort_unstable();
    let ops = lat.len() as u64;
    Ok(PhaseResult {
        system,
        op,
        clients,
        ops,
        secs,
        ops_per_sec: ops as f64 / secs,
        p50_us: percentile(&lat, 0.50),
        p99_us: percentile(&lat, 0.99),
        p999_us: percentile(&lat, 0.999),
        max_us: lat.last().copied().unwrap_or(0) as u64,
        errors: outs.iter().map(|o| o.errors).sum(),
        misses: outs.iter().map(|o| o.misses).sum(),
        redirects: outs.iter().map(|o| o.redirects).sum(),
        client_cpu_us: cpu1.0.saturating_sub(cpu0.0) as f64 / ops.max(1) as f64,
        server_cpu_us: cpu1.1.saturating_sub(cpu0.1) as f64 / ops.max(1) as f64,
        first_error: outs.iter().find_map(|o| o.first_error.clone()),
    })
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Runs everything and prints the tables; writes JSON if asked.
pub fn run(args: &ClusterArgs, out: &mut impl std::io::Write) -> Result<()> {
    if args.nokv.is_empty() && args.etcd.is_empty() {
        return Err(BenchError::Flag(
            "give --nokv and/or --etcd endpoints".into(),
        ));
    }
    if args.clients.is_empty() || args.clients.contains(&0) {
        return Err(BenchError::Flag(
            "--clients must be positive numbers".into(),
        ));
    }
    if args.driver_threads == 0 {
        return Err(BenchError::Flag("--driver-threads must be positive".into()));
    }
    if args.duration <= 0.0 || args.warmup < 0.0 {
        return Err(BenchError::Flag(
            "--duration must be > 0, --warmup >= 0".into(),
        ));
    }
    let value = vec![b'v'; args.value_size];
    let io = |e: std::io::Error| BenchError::io("writing", "stdout", e);
    let mut systems = Vec::new();
    if !args.nokv.is_empty() {
        systems.push((System::Nokv, args.nokv.clone()));
    }
    if !args.etcd.is_empty() {
        systems.push((System::Etcd, args.etcd.clone()));
    }
    let mut results = Vec::new();
    for (system, endpoints) in systems {
        let target = Target {
            system,
            endpoints,
            slots: Arc::new(SlotMap::new()),
        };
        writeln!(
            out,
            "== {}: preloading {} keys ({}-byte values) through {}",
            system.name(),
            args.keys,
            args.value_size,
            target.endpoints.join(",")
        )
        .map_err(io)?;
        preload(&target, args.keys, &value)?;
        for &clients in &args.clients {
            for op in [Op::Put, Op::Get] {
                let r = run_phase(&target, op, clients, args, &value)?;
                writeln!(
                    out,
                    "   {:<4} {:<3} c={:<4} {:>10.0} ops/s  p50 {:>7.2} ms  p99 {:>7.2} ms  p99.9 {:>7.2} ms  ({} ops in {:.1} s, {} errors, {} misses, {} redirects; CPU us/op client {:.1} servers {:.1})",
                    system.name(), op.name(), clients, r.ops_per_sec, ms(r.p50_us), ms(r.p99_us),
                    ms(r.p999_us), r.ops, r.secs, r.errors, r.misses, r.redirects, r.client_cpu_us, r.server_cpu_us
                )
                .map_err(io)?;
                if let Some(e) = &r.first_error {
                    writeln!(out, "      first error: {e}").map_err(io)?;
                }
                results.push(r);
            }
        }
    }
    let table = render_table(&results, args);
    write!(out, "{table}").map_err(io)?;
    if let Some(path) = &args.json {
        std::fs::write(path, render_json(&results, args))
            .map_err(|e| BenchError::io("writing", path, e))?;
        writeln!(out, "== results written to {}", path.display()).map_err(io)?;
    }
    Ok(())
}

fn find(results: &[PhaseResult], s: System, op: Op, c: usize) -> Option<&PhaseResult> {
    results
        .iter()
        .find(|r| r.system == s && r.op == op && r.clients == c)
}

fn render_table(results: &[PhaseResult], args: &ClusterArgs) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\n| system | op | clients | ops/s | p50 ms | p99 ms | p99.9 ms | ops | errors | client CPU us/op | server CPU us/op |"
    );
    let _ = writeln!(t, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in results {
        let _ = writeln!(
            t,
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} | {:.1} | {:.1} |",
            r.system.name(),
            r.op.name(),
            r.clients,
            r.ops_per_sec,
            ms(r.p50_us),
            ms(r.p99_us),
            ms(r.p999_us),
            r.ops,
            r.errors,
            r.client_cpu_us,
            r.server_cpu_us
        );
    }
    if args.nokv.is_empty() || args.etcd.is_empty() {
        return t;
    }
    let _ = writeln!(
        t,
        "\n| clients | put ops/s NoKV/etcd | put p99 NoKV/etcd | get ops/s NoKV/etcd | get p99 NoKV/etcd |"
    );
    let _ = writeln!(t, "|---:|---:|---:|---:|---:|");
    for &c in &args.clients {
        let ratio = |op: Op| -> (f64, f64) {
            match (
                find(results, System::Nokv, op, c),
                find(results, System::Etcd, op, c),
            ) {
                (Some(n), Some(e)) => (
                    n.ops_per_sec / e.ops_per_sec.max(1e-9),
                    n.p99_us as f64 / (e.p99_us as f64).max(1.0),
                ),
                _ => (f64::NAN, f64::NAN),
            }
        };
        let (pt, pl) = ratio(Op::Put);
        let (gt, gl) = ratio(Op::Get);
        let _ = writeln!(t, "| {c} | {pt:.2}x | {pl:.2}x | {gt:.2}x | {gl:.2}x |");
    }
    if let Some(&c) = args.clients.iter().max() {
        let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
        if let (Some(np), Some(ep), Some(ng), Some(eg)) = (
            find(results, System::Nokv, Op::Put, c),
            find(results, System::Etcd, Op::Put, c),
            find(results, System::Nokv, Op::Get, c),
            find(results, System::Etcd, Op::Get, c),
        ) {
            let pr = np.ops_per_sec / ep.ops_per_sec.max(1e-9);
            let gr = ng.ops_per_sec / eg.ops_per_sec.max(1e-9);
            let _ = writeln!(
                t,
                "\nTargets at {c} clients: puts >= 5x etcd ({pr:.2}x: {}) with p99 no worse ({:.2} vs {:.2} ms: {}); gets >= 5x ({gr:.2}x: {})",
                verdict(pr >= 5.0),
                ms(np.p99_us),
                ms(ep.p99_us),
                verdict(np.p99_us <= ep.p99_us),
                verdict(gr >= 5.0)
            );
        }
    }
    t
}

/// `s` as a JSON string literal (quotes, backslashes and control characters escaped).
pub(crate) fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for ch in s.chars() {
        match ch {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn render_json(results: &[PhaseResult], args: &ClusterArgs) -> String {
    let mut j = String::new();
    let _ = write!(
        j,
        "{{\n  \"settings\": {{\"nokv\": {}, \"etcd\": {}, \"clients\": {:?}, \"ops\": {}, \"duration_s\": {}, \"warmup_s\": {}, \"keys\": {}, \"value_size\": {}}},\n  \"results\": [\n",
        json_str(&args.nokv.join(",")),
        json_str(&args.etcd.join(",")),
        args.clients,
        args.ops,
        args.duration,
        args.warmup,
        args.keys,
        args.value_size
    );
    for (i, r) in results.iter().enumerate() {
        let _ = writeln!(
            j,
            "    {{\"system\": \"{}\", \"op\": \"{}\", \"clients\": {}, \"ops\": {}, \"secs\": {:.3}, \"ops_per_sec\": {:.1}, \"p50_ms\": {:.3}, \"p99_ms\": {:.3}, \"p999_ms\": {:.3}, \"max_ms\": {:.3}, \"errors\": {}, \"misses\": {}, \"redirects\": {}, \"client_cpu_us_per_op\": {:.2}, \"server_cpu_us_per_op\": {:.2}, \"first_error\": {}}}{}",
            r.system.name(),
            r.op.name(),
            r.clients,
            r.ops,
            r.secs,
            r.ops_per_sec,
            ms(r.p50_us),
            ms(r.p99_us),
            ms(r.p999_us),
            ms(r.max_us),
            r.errors,
            r.misses,
            r.redirects,
            r.client_cpu_us,
            r.server_cpu_us,
            r.first_error.as_deref().map(json_str).unwrap_or_else(|| "null".into()),
            if i + 1 < results.len() { "," } else { "" }
        );
    }
    j.push_str("  ]\n}\n");
    j
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    /// A fake two-store cluster: store A answers -MOVED to B for every key; B answers SET
    /// with +OK and GET with the value. The client must follow once, then go straight to B.
    #[test]
    fn nokv_client_follows_moved_and_caches_the_slot() {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let b = TcpListener::bind("127.0.0.1:0").unwrap();
        let b_addr = b.local_addr().unwrap().to_string();
        let a_addr = a.local_addr().unwrap().to_string();
        fn serve(l: TcpListener, moved_to: Option<String>) -> std::thread::JoinHandle<usize> {
            std::thread::spawn(move || {
                let (s, _) = l.accept().unwrap();
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut w = s;
                let mut served = 0;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap() == 0 {
                        return served;
                    }
                    let n: usize = line.trim()[1..].parse().unwrap();
                    let mut args = Vec::new();
                    for _ in 0..n {
                        line.clear();
                        r.read_line(&mut line).unwrap();
                        line.clear();
                        r.read_line(&mut line).unwrap();
                        args.push(line.trim_end().to_string());
                    }
                    served += 1;
                    let reply = match &moved_to {
                        Some(to) => format!("-MOVED {} {to}\r\n", wire::slot(args[1].as_bytes())),
                        None if args[0] == "SET" => "+OK\r\n".to_string(),
                        None => "$3\r\nabc\r\n".to_string(),
                    };
                    w.write_all(reply.as_bytes()).unwrap();
                }
            })
        }
        let ha = serve(a, Some(b_addr.clone()));
        let hb = serve(b, None);
        let mut c = NokvClient::new(a_addr, Arc::new(SlotMap::new()));
        c.run(Op::Put, b"k1", b"v").unwrap();
        assert_eq!(c.redirects(), 1);
        assert_eq!(c.router.addr_for(wire::slot(b"k1")), b_addr);
        assert!(c.run(Op::Get, b"k1", b"").unwrap());
        c.run(Op::Put, b"k1", b"v").unwrap();
        assert_eq!(
            c.redirects(),
            1,
            "the cached slot goes straight to the leader"
        );
        drop(c);
        assert_eq!(ha.join().unwrap(), 1);
        assert_eq!(hb.join().unwrap(), 3);
    }

    #[test]
    fn percentiles_and_json() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), 50);
        assert_eq!(percentile(&v, 0.99), 99);
        assert_eq!(percentile(&[], 0.99), 0);
        assert_eq!(json_str("a\"b\n"), "\"a\\\"b\\u000a\"");
    }
}

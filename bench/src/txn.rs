//! `nokv-bench txn` (issue 7's performance goal): closed-loop clients on a NoKV cluster, each
//! operation reading and writing two keys picked from a zipfian distribution, preferably
//! in regions led by different stores. Two phases per client count over the same pair
//! sequence: `plain` (GET k1, GET k2, SET k1, SET k2 without a transaction) and `txn`
//! (begin, get k1, get k2, put k1, put k2, commit; a retryable failure is an abort and the
//! transaction runs again, a bounded number of times). Reports ops/s, latency, the abort
//! rate and the txn/plain throughput ratio; prints a table and writes a JSON file.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use clap::Args;
use nokv_client::routes::RegionRoute;
use nokv_client::{routing_key, Client, ClientOptions};

use crate::cluster::json_str;
use crate::error::{BenchError, Result};
use crate::gen::Mt19937_64;
use crate::ycsb::dist::{check_theta, Zipfian};
use crate::ycsb::hist::Histogram;

/// Flags of `nokv-bench txn`.
#[derive(Debug, Clone, Args)]
pub struct TxnArgs {
    /// Coordinator addresses (host:port, comma-separated; the leader is followed).
    #[arg(long, value_delimiter = ',', required = true)]
    pub coordinator: Vec<String>,
    /// The cluster id (the stores' and coordinator's --cluster-id).
    #[arg(long, default_value_t = 1)]
    pub cluster_id: u64,
    /// Distinct keys (at least 2); preloaded, as Redis keys and as transactional keys.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Concurrent clients per run (comma-separated); each is a thread with one operation
    /// outstanding (closed loop), all sharing one `nokv_client::Client`.
    #[arg(long, value_delimiter = ',', default_value = "4,16,64")]
    pub clients: Vec<usize>,
    /// Longest measured phase, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Unmeasured warm-up before each phase, seconds (same operation, same clients).
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Operations started per measured phase at most (a phase also stops after --duration).
    #[arg(long, default_value_t = 200_000)]
    pub ops: u64,
    /// Zipfian constant of the key choice (key 0 the most popular; not 1).
    #[arg(long, default_value_t = 0.99)]
    pub zipf: f64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Attempts of one transaction (the first included) before it counts as failed.
    #[arg(long, default_value_t = 10)]
    pub max_attempts: u32,
    /// Seed of the key choice (client thread i uses seed + i, in both phases).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Where to write the JSON results.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// Draws per pair before settling for a pair that is not on two different stores.
const PAIR_TRIES: usize = 64;
/// Keys of one preload transaction (all in one region: a one-phase commit).
const PRELOAD_CHUNK: usize = 64;
/// Threads of the preload.
const PRELOAD_THREADS: usize = 8;
/// Attempts of one preload transaction.
const PRELOAD_ATTEMPTS: u32 = 5;
/// Warm-up operations per client thread at most (the warm-up also ends after --warmup).
const MAX_WARMUP_OPS: u64 = 1_000_000;
/// Pages of the coordinator's region scan at most.
const MAX_ROUTE_PAGES: usize = 1024;

/// The name of key number `i`.
pub fn key_name(i: u64) -> Vec<u8> {
    format!("txnbench:{i:010}").into_bytes()
}

/// Where each key number lives: its region and the store leading that region (None: the
/// coordinator knows no leader).
#[derive(Debug, Clone, Default)]
pub struct Placement {
    /// Region of key i.
    pub region: Vec<u64>,
    /// Leader store of key i's region.
    pub leader: Vec<Option<u64>>,
}

impl Placement {
    /// The placement of keys `0..keys` among `routes` (a key outside every route gets region
    /// 0 and no leader).
    pub fn from_routes(routes: &[RegionRoute], keys: u64) -> Placement {
        let mut p = Placement::default();
        for i in 0..keys {
            let rk = routing_key(&key_name(i));
            match routes.iter().find(|r| r.contains(&rk)) {
                Some(r) => {
                    p.region.push(r.id);
                    p.leader.push(r.leader);
                }
                None => {
                    p.region.push(0);
                    p.leader.push(None);
                }
            }
        }
        p
    }

    /// Distinct leader stores over all keys.
    pub fn stores(&self) -> usize {
        let mut s: Vec<u64> = self.leader.iter().flatten().copied().collect();
        s.sort_unstable();
        s.dedup();
        s.len()
    }

    /// Distinct regions over all keys.
    pub fn regions(&self) -> usize {
        let mut s = self.region.clone();
        s.sort_unstable();
        s.dedup();
        s.len()
    }
}

/// How far apart the two keys of a pair are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locality {
    /// Regions led by different stores.
    Stores,
    /// Different regions, same (or unknown) leader store.
    Regions,
    /// The same region.
    Region,
}

/// Picks pairs of distinct key numbers: the first zipfian, the second zipfian among the
/// keys whose region another store leads (up to [`PAIR_TRIES`] draws; then a key of
/// another region drawn meanwhile, else any other key drawn, else the next key number).
#[derive(Debug, Clone)]
pub struct PairPicker {
    zipf: Zipfian,
    placement: Placement,
}

impl PairPicker {
    /// A picker over the placement's keys (at least 2) with zipfian constant `theta`.
    pub fn new(placement: Placement, theta: f64) -> PairPicker {
        let n = placement.region.len().max(2) as u64;
        PairPicker {
            zipf: Zipfian::new(n, theta),
            placement,
        }
    }

    /// Number of keys.
    pub fn keys(&self) -> u64 {
        self.placement.region.len() as u64
    }

    fn at(&self, k: u64) -> (u64, Option<u64>) {
        let i = k as usize;
        (
            self.placement.region.get(i).copied().unwrap_or(0),
            self.placement.leader.get(i).copied().flatten(),
        )
    }

    /// The next pair and how far apart its keys are.
    pub fn pick(&self, rng: &mut Mt19937_64) -> (u64, u64, Locality) {
        let n = self.keys().max(2);
        let a = self.zipf.next(rng);
        let (ra, la) = self.at(a);
        let mut other_region = None;
        let mut other_key = None;
        for _ in 0..PAIR_TRIES {
            let b = self.zipf.next(rng);
            if b == a {
                continue;
            }
            let (rb, lb) = self.at(b);
            if rb != ra {
                if la.is_some() && lb.is_some() && la != lb {
                    return (a, b, Locality::Stores);
                }
                other_region.get_or_insert(b);
            }
            other_key.get_or_insert(b);
        }
        if let Some(b) = other_region {
            return (a, b, Locality::Regions);
        }
        let b = other_key.unwrap_or((a + 1) % n);
        let loc = if self.at(b).0 == ra {
            Locality::Region
        } else {
            Locality::Regions
        };
        (a, b, loc)
    }
}

/// The two phases of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// GET, GET, SET, SET without a transaction.
    Plain,
    /// The same in one transaction.
    Txn,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Plain => "plain",
            Phase::Txn => "txn",
        }
    }
}

/// What one client thread saw in a measured phase.
#[derive(Debug, Default)]
struct ThreadStats {
    hist: Histogram,
    done: u64,
    attempts: u64,
    aborts: u64,
    failed: u64,
    errors: u64,
    misses: u64,
    pairs: [u64; 3],
    first_error: Option<String>,
    start: Option<Instant>,
    end: Option<Instant>,
}

/// One measured phase.
#[derive(Debug, Clone)]
struct PhaseResult {
    clients: usize,
    phase: Phase,
    /// Completed operations (txn: committed transactions).
    done: u64,
    secs: f64,
    p50_ms: f64,
    p99_ms: f64,
    attempts: u64,
    aborts: u64,
    failed: u64,
    errors: u64,
    misses: u64,
    pairs: [u64; 3],
    first_error: Option<String>,
}

impl PhaseResult {
    fn ops_per_sec(&self) -> f64 {
        if self.secs > 0.0 {
            self.done as f64 / self.secs
        } else {
            0.0
        }
    }

    fn abort_rate(&self) -> f64 {
        if self.attempts > 0 {
            self.aborts as f64 / self.attempts as f64
        } else {
            0.0
        }
    }
}

/// Runs the benchmark and prints the table to `out`.
pub fn run(args: &TxnArgs, out: &mut impl std::io::Write) -> Result<()> {
    check_args(args)?;
    let io = |e| BenchError::io("writing", "stdout", e);
    let opts = ClientOptions {
        cluster_id: args.cluster_id,
        ..ClientOptions::default()
    };
    let client = Client::connect(args.coordinator.clone(), opts)
        .map_err(|e| BenchError::engine("connecting to the cluster", e))?;
    let placement = load_placement(args)?;
    writeln!(
        out,
        "== {} keys over {} regions led by {} stores; zipfian {}; {} B values",
        args.keys,
        placement.regions(),
        placement.stores(),
        args.zipf,
        args.value_size
    )
    .map_err(io)?;
    let t = Instant::now();
    preload(&client, &placement, args)?;
    writeln!(
        out,
        "== preloaded {} keys (Redis and transactional) in {:.1} s",
        args.keys,
        t.elapsed().as_secs_f64()
    )
    .map_err(io)?;
    let mut results = Vec::new();
    for &clients in &args.clients {
        // Leaders may have moved since the last run: the pairs follow the current ones.
        let picker = PairPicker::new(load_placement(args)?, args.zipf);
        for phase in [Phase::Plain, Phase::Txn] {
            let r = run_phase(&client, &picker, phase, clients, args)?;
            writeln!(out, "{}", render_line(&r)).map_err(io)?;
            results.push(r);
        }
    }
    let s = client.stats();
    writeln!(
        out,
        "== client: {} attempts, {} redirects, {} retries, {} route refreshes",
        s.attempts, s.redirects, s.retries, s.route_refreshes
    )
    .map_err(io)?;
    write!(out, "{}", render_table(&results)).map_err(io)?;
    if let Some(path) = &args.json {
        std::fs::write(path, render_json(&results, args))
            .map_err(|e| BenchError::io("writing", path, e))?;
    }
    Ok(())
}

fn check_args(args: &TxnArgs) -> Result<()> {
    let bad = |m: String| Err(BenchError::Flag(m));
    if args.keys < 2 {
        return bad(format!("--keys must be at least 2, got {}", args.keys));
    }
    if args.clients.is_empty() || args.clients.contains(&0) {
        return bad("--clients must list positive counts".into());
    }
    if args.clients.iter().any(|&c| c > 4096) {
        return bad("--clients must be at most 4096".into());
    }
    if !(args.duration.is_finite() && args.duration > 0.0 && args.duration <= 3600.0) {
        return bad(format!(
            "--duration must be in (0, 3600], got {}",
            args.duration
        ));
    }
    if !(args.warmup.is_finite() && (0.0..=600.0).contains(&args.warmup)) {
        return bad(format!("--warmup must be in [0, 600], got {}", args.warmup));
    }
    if args.ops == 0 || args.max_attempts == 0 {
        return bad("--ops and --max-attempts must be positive".into());
    }
    check_theta(args.zipf).map_err(BenchError::Flag)
}

/// Every region's route from the coordinator, and where each key lives.
fn load_placement(args: &TxnArgs) -> Result<Placement> {
    let coord = nokv_coordinator::CoordClient::new(
        args.coordinator.clone(),
        args.cluster_id,
        nokv_coordinator::ClientOptions::default(),
    )
    .map_err(|e| BenchError::engine("connecting to the coordinator", e))?;
    let mut routes = Vec::new();
    let mut start: Vec<u8> = Vec::new();
    for _ in 0..MAX_ROUTE_PAGES {
        let page = coord
            .scan_regions(&start, &[], 0)
            .map_err(|e| BenchError::engine("scanning the regions", e))?;
        let Some(end) = page
            .last()
            .and_then(|r| r.region.as_ref())
            .map(|r| r.end_key.clone())
        else {
            break;
        };
        routes.extend(
            page.iter()
                .filter_map(|r| RegionRoute::from_route(r).map(|x| x.0)),
        );
        if end.is_empty() || end <= start {
            break;
        }
        start = end;
    }
    Ok(Placement::from_routes(&routes, args.keys))
}

/// Writes every key once as a Redis key (SET) and once as a transactional key (one-phase
/// commits of up to [`PRELOAD_CHUNK`] keys of one region), over a few threads.
fn preload(client: &Client, placement: &Placement, args: &TxnArgs) -> Result<()> {
    let value = vec![b'v'; args.value_size];
    let mut by_region: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for (i, r) in placement.region.iter().enumerate() {
        by_region.entry(*r).or_default().push(i as u64);
    }
    let mut jobs: Vec<Vec<u64>> = Vec::new();
    for keys in by_region.values() {
        jobs.extend(keys.chunks(PRELOAD_CHUNK).map(<[u64]>::to_vec));
    }
    let next = AtomicU64::new(0);
    let results: Vec<Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..PRELOAD_THREADS)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    // Bounded by the jobs: each turn takes the next one.
                    loop {
                        let j = next.fetch_add(1, Ordering::Relaxed) as usize;
                        let Some(keys) = jobs.get(j) else {
                            return Ok(());
                        };
                        for &k in keys {
                            client
                                .put(&key_name(k), &value)
                                .map_err(|e| BenchError::engine("preloading (SET)", e))?;
                        }
                        preload_txn(client, keys, &value)?;
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(Err(BenchError::ThreadPanic)))
            .collect()
    });
    results.into_iter().collect()
}

fn preload_txn(client: &Client, keys: &[u64], value: &[u8]) -> Result<()> {
    let mut last = None;
    for _ in 0..PRELOAD_ATTEMPTS {
        let res = (|| {
            let mut t = client.begin()?;
            for &k in keys {
                t.put(&key_name(k), value)?;
            }
            t.commit()
        })();
        match res {
            Ok(_) => return Ok(()),
            Err(e) if e.is_txn_retryable() => last = Some(e),
            Err(e) => return Err(BenchError::engine("preloading (transaction)", e)),
        }
    }
    Err(BenchError::engine(
        "preloading (transaction)",
        last.map_or_else(|| "no attempt".to_string(), |e| e.to_string()),
    ))
}

/// One plain operation: whether both keys were found.
fn plain_op(client: &Client, a: &[u8], b: &[u8], value: &[u8]) -> nokv_client::Result<bool> {
    let found_a = client.get(a)?.is_some();
    let found_b = client.get(b)?.is_some();
    client.put(a, value)?;
    client.put(b, value)?;
    Ok(found_a && found_b)
}

/// One transaction's body (committed by `Client::transact`): whether both keys were found.
fn txn_body(
    t: &mut nokv_client::Transaction<'_>,
    a: &[u8],
    b: &[u8],
    value: &[u8],
) -> nokv_client::Result<bool> {
    let found_a = t.get(a)?.is_some();
    let found_b = t.get(b)?.is_some();
    t.put(a, value)?;
    t.put(b, value)?;
    Ok(found_a && found_b)
}

/// One operation of `phase`, recorded in `st` when `st` is given (else a warm-up).
fn one_op(
    client: &Client,
    phase: Phase,
    pair: (&[u8], &[u8]),
    value: &[u8],
    max_attempts: u32,
    st: Option<&mut ThreadStats>,
) {
    let t0 = Instant::now();
    let (attempts, aborts);
    let outcome = match phase {
        Phase::Plain => {
            (attempts, aborts) = (1, 0);
            plain_op(client, pair.0, pair.1, value)
        }
        Phase::Txn => {
            // Retries (after a backoff) are the client's: count the body's runs.
            let runs = std::cell::Cell::new(0u64);
            let res = client.transact(max_attempts, |t| {
                runs.set(runs.get() + 1);
                txn_body(t, pair.0, pair.1, value)
            });
            attempts = runs.get().max(1);
            match res {
                Ok(done) => {
                    aborts = u64::from(done.attempts - 1);
                    Ok(done.value)
                }
                Err(e) if !e.is_txn_retryable() => {
                    aborts = attempts - 1;
                    Err(e)
                }
                Err(_) => {
                    // Every attempt aborted.
                    if let Some(st) = st {
                        st.attempts += attempts;
                        st.aborts += attempts;
                        st.failed += 1;
                    }
                    return;
                }
            }
        }
    };
    let Some(st) = st else { return };
    st.attempts += attempts;
    st.aborts += aborts;
    match outcome {
        Ok(found) => {
            st.hist.record(t0.elapsed().as_nanos() as u64);
            st.done += 1;
            if !found {
                st.misses += 1;
            }
        }
        Err(e) => {
            st.errors += 1;
            st.first_error.get_or_insert_with(|| e.to_string());
        }
    }
}

fn run_phase(
    client: &Client,
    picker: &PairPicker,
    phase: Phase,
    clients: usize,
    args: &TxnArgs,
) -> Result<PhaseResult> {
    let barrier = Barrier::new(clients);
    let issued = AtomicU64::new(0);
    let warmup = Duration::from_secs_f64(args.warmup);
    let duration = Duration::from_secs_f64(args.duration);
    let stats: Vec<ThreadStats> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|i| {
                let (barrier, issued) = (&barrier, &issued);
                s.spawn(move || {
                    let mut rng = Mt19937_64::new(args.seed.wrapping_add(i as u64));
                    let mut value = vec![b'v'; args.value_size];
                    let mut st = ThreadStats::default();
                    let warm_end = Instant::now() + warmup;
                    let mut n = 0u64;
                    while n < MAX_WARMUP_OPS && Instant::now() < warm_end {
                        let (a, b, _) = picker.pick(&mut rng);
                        let (ka, kb) = (key_name(a), key_name(b));
                        one_op(client, phase, (&ka, &kb), &value, args.max_attempts, None);
                        n += 1;
                    }
                    // The measured pairs: every thread starts its sequence again, so both
                    // phases draw the same pairs.
                    let mut rng = Mt19937_64::new(args.seed.wrapping_add(i as u64));
                    barrier.wait();
                    let start = Instant::now();
                    let deadline = start + duration;
                    st.start = Some(start);
                    // Bounded by --ops (every turn takes one) and --duration.
                    while Instant::now() < deadline
                        && issued.fetch_add(1, Ordering::Relaxed) < args.ops
                    {
                        let (a, b, loc) = picker.pick(&mut rng);
                        st.pairs[loc as usize] += 1;
                        let (ka, kb) = (key_name(a), key_name(b));
                        let stamp = st.done.to_le_bytes();
                        let m = stamp.len().min(value.len());
                        value[..m].copy_from_slice(&stamp[..m]);
                        one_op(
                            client,
                            phase,
                            (&ka, &kb),
                            &value,
                            args.max_attempts,
                            Some(&mut st),
                        );
                    }
                    st.end = Some(Instant::now());
                    st
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| BenchError::ThreadPanic))
            .collect::<Result<Vec<_>>>()
    })?;
    let mut hist = Histogram::new();
    let mut r = PhaseResult {
        clients,
        phase,
        done: 0,
        secs: 0.0,
        p50_ms: 0.0,
        p99_ms: 0.0,
        attempts: 0,
        aborts: 0,
        failed: 0,
        errors: 0,
        misses: 0,
        pairs: [0; 3],
        first_error: None,
    };
    let start = stats.iter().filter_map(|s| s.start).min();
    let end = stats.iter().filter_map(|s| s.end).max();
    if let (Some(a), Some(b)) = (start, end) {
        r.secs = b.saturating_duration_since(a).as_secs_f64();
    }
    for s in stats {
        hist.merge(&s.hist);
        r.done += s.done;
        r.attempts += s.attempts;
        r.aborts += s.aborts;
        r.failed += s.failed;
        r.errors += s.errors;
        r.misses += s.misses;
        for (t, x) in r.pairs.iter_mut().zip(s.pairs) {
            *t += x;
        }
        if r.first_error.is_none() {
            r.first_error = s.first_error;
        }
    }
    r.p50_ms = hist.percentile(50.0) as f64 / 1e6;
    r.p99_ms = hist.percentile(99.0) as f64 / 1e6;
    Ok(r)
}

fn render_line(r: &PhaseResult) -> String {
    let mut s = format!(
        "   {:>4} clients {:<5} {:>9.0} ops/s  p50 {:.2} ms  p99 {:.2} ms  done {}  attempts {}  aborts {} ({:.1}%)  failed {}  errors {}  misses {}  pairs stores/regions/region {}/{}/{}",
        r.clients,
        r.phase.name(),
        r.ops_per_sec(),
        r.p50_ms,
        r.p99_ms,
        r.done,
        r.attempts,
        r.aborts,
        100.0 * r.abort_rate(),
        r.failed,
        r.errors,
        r.misses,
        r.pairs[0],
        r.pairs[1],
        r.pairs[2]
    );
    if let Some(e) = &r.first_error {
        let _ = write!(s, "\n        first error: {e}");
    }
    s
}

/// The plain phase's throughput at the same client count as `r`.
fn plain_of<'a>(results: &'a [PhaseResult], r: &PhaseResult) -> Option<&'a PhaseResult> {
    results
        .iter()
        .find(|p| p.clients == r.clients && p.phase == Phase::Plain)
}

fn ratio(results: &[PhaseResult], r: &PhaseResult) -> Option<f64> {
    let p = plain_of(results, r)?.ops_per_sec();
    (p > 0.0).then(|| r.ops_per_sec() / p)
}

fn render_table(results: &[PhaseResult]) -> String {
    let mut t = String::from(
        "| clients | phase | ops/s | p50 ms | p99 ms | done | attempts | aborts | abort rate | failed | errors | txn/plain |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in results {
        let ratio = match (r.phase, ratio(results, r)) {
            (Phase::Txn, Some(x)) => format!("{x:.2}x"),
            _ => "-".into(),
        };
        let _ = writeln!(
            t,
            "| {} | {} | {:.0} | {:.2} | {:.2} | {} | {} | {} | {:.1}% | {} | {} | {} |",
            r.clients,
            r.phase.name(),
            r.ops_per_sec(),
            r.p50_ms,
            r.p99_ms,
            r.done,
            r.attempts,
            r.aborts,
            100.0 * r.abort_rate(),
            r.failed,
            r.errors,
            ratio
        );
    }
    t
}

fn render_json(results: &[PhaseResult], args: &TxnArgs) -> String {
    let mut j = String::new();
    let _ = write!(
        j,
        "{{\"coordinator\":{},\"cluster_id\":{},\"keys\":{},\"zipf\":{},\"value_size\":{},\"duration\":{},\"warmup\":{},\"ops\":{},\"max_attempts\":{},\"results\":[",
        json_str(&args.coordinator.join(",")),
        args.cluster_id,
        args.keys,
        args.zipf,
        args.value_size,
        args.duration,
        args.warmup,
        args.ops,
        args.max_attempts
    );
    for (i, r) in results.iter().enumerate() {
        let ratio = match (r.phase, ratio(results, r)) {
            (Phase::Txn, Some(x)) => format!("{x:.4}"),
            _ => "null".into(),
        };
        let _ = write!(
            j,
            "{}{{\"clients\":{},\"phase\":\"{}\",\"ops_per_sec\":{:.1},\"secs\":{:.3},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"done\":{},\"attempts\":{},\"aborts\":{},\"abort_rate\":{:.4},\"failed\":{},\"errors\":{},\"misses\":{},\"pairs_stores\":{},\"pairs_regions\":{},\"pairs_region\":{},\"txn_over_plain\":{},\"first_error\":{}}}",
            if i == 0 { "" } else { "," },
            r.clients,
            r.phase.name(),
            r.ops_per_sec(),
            r.secs,
            r.p50_ms,
            r.p99_ms,
            r.done,
            r.attempts,
            r.aborts,
            r.abort_rate(),
            r.failed,
            r.errors,
            r.misses,
            r.pairs[0],
            r.pairs[1],
            r.pairs[2],
            ratio,
            r.first_error.as_deref().map(json_str).unwrap_or_else(|| "null".into())
        );
    }
    j.push_str("]}\n");
    j
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys 0..n: region i % regions, leader (i % regions) % stores + 1.
    fn placement(n: u64, regions: u64, stores: u64) -> Placement {
        Placement {
            region: (0..n).map(|i| i % regions + 1).collect(),
            leader: (0..n).map(|i| Some((i % regions) % stores + 1)).collect(),
        }
    }

    #[test]
    fn zipfian_pairs_are_skewed_and_in_range() {
        let p = PairPicker::new(placement(1000, 6, 3), 0.99);
        let mut rng = Mt19937_64::new(7);
        let mut counts = vec![0u64; 1000];
        for _ in 0..20_000 {
            let (a, b, loc) = p.pick(&mut rng);
            assert!(a < 1000 && b < 1000 && a != b);
            assert_eq!(loc, Locality::Stores);
            assert_ne!(p.at(a).1, p.at(b).1);
            counts[a as usize] += 1;
        }
        // Key 0 is the most popular first key, far above the uniform share (20).
        let max = counts.iter().copied().max().unwrap_or(0);
        assert_eq!(counts[0], max);
        assert!(counts[0] > 1000, "key 0 drawn {} times", counts[0]);
        assert!(counts[999] < counts[0] / 10);
    }

    #[test]
    fn pairs_fall_back_to_other_regions_then_other_keys() {
        // One store leads every region: different regions, never the same key.
        let p = PairPicker::new(placement(100, 4, 1), 0.99);
        let mut rng = Mt19937_64::new(1);
        for _ in 0..1000 {
            let (a, b, loc) = p.pick(&mut rng);
            assert_ne!(a, b);
            assert_eq!(loc, Locality::Regions);
        }
        // One region: distinct keys in it.
        let p = PairPicker::new(placement(2, 1, 1), 0.99);
        for _ in 0..1000 {
            let (a, b, loc) = p.pick(&mut rng);
            assert_ne!(a, b);
            assert!(a < 2 && b < 2);
            assert_eq!(loc, Locality::Region);
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_pairs() {
        let p = PairPicker::new(placement(500, 8, 3), 0.99);
        let (mut r1, mut r2) = (Mt19937_64::new(3), Mt19937_64::new(3));
        for _ in 0..100 {
            assert_eq!(p.pick(&mut r1), p.pick(&mut r2));
        }
    }

    #[test]
    fn placement_maps_keys_to_routes() {
        let routes = vec![
            RegionRoute {
                id: 1,
                start_key: vec![],
                end_key: vec![0x20, 0],
                stores: vec![1, 2, 3],
                leader: Some(1),
            },
            RegionRoute {
                id: 2,
                start_key: vec![0x20, 0],
                end_key: vec![],
                stores: vec![1, 2, 3],
                leader: Some(2),
            },
        ];
        let p = Placement::from_routes(&routes, 200);
        assert_eq!(p.region.len(), 200);
        for i in 0..200 {
            let rk = routing_key(&key_name(i));
            let want = if rk.as_slice() < [0x20, 0].as_slice() {
                1
            } else {
                2
            };
            assert_eq!(p.region[i as usize], want);
            assert_eq!(p.leader[i as usize], Some(want));
        }
        assert_eq!((p.regions(), p.stores()), (2, 2));
    }

    #[test]
    fn table_reports_the_ratio_and_abort_rate() {
        let mk = |phase, done, attempts, aborts| PhaseResult {
            clients: 4,
            phase,
            done,
            secs: 2.0,
            p50_ms: 1.0,
            p99_ms: 2.0,
            attempts,
            aborts,
            failed: 0,
            errors: 0,
            misses: 0,
            pairs: [done, 0, 0],
            first_error: None,
        };
        let rs = vec![
            mk(Phase::Plain, 1000, 1000, 0),
            mk(Phase::Txn, 600, 800, 200),
        ];
        let t = render_table(&rs);
        assert!(t.contains("| 4 | txn | 300 |"), "{t}");
        assert!(t.contains("| 25.0% |"), "{t}");
        assert!(t.contains("| 0.60x |"), "{t}");
        let j = render_json(
            &rs,
            &TxnArgs {
                coordinator: vec!["127.0.0.1:1".into()],
                cluster_id: 1,
                keys: 10,
                clients: vec![4],
                duration: 1.0,
                warmup: 0.0,
                ops: 10,
                zipf: 0.99,
                value_size: 8,
                max_attempts: 3,
                seed: 1,
                json: None,
            },
        );
        assert!(j.contains("\"txn_over_plain\":0.6000"), "{j}");
    }
}

//! `nokv-bench ycsb`: the YCSB core workloads A–F against NoKV and fjall (or the in-memory
//! map), with the same settings for every engine, one engine after the other.

pub mod dist;
pub mod flags;
pub mod hist;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::time::Instant;

use crate::db::{destroy_db_dir, prepare_db_dir, BenchDb, MemDb};
use crate::error::{BenchError, Result};
use crate::flags::CompressionType;
use crate::gen::{Mt19937_64, ValueGenerator};
use crate::runner::{print_peak_rss, rss_kib, w, EngineConfig};

use dist::{key_name, uniform_below, InsertCounter, Latest, ScrambledZipfian};
use flags::{Distribution, Workload, YcsbArgs, YcsbEngine};
use hist::Histogram;

/// Name of the load phase in result lines.
pub const LOAD: &str = "load";

/// Engine settings shared by every engine of a run.
pub fn engine_config(args: &YcsbArgs) -> EngineConfig {
    EngineConfig {
        sync: args.sync,
        write_buffer_bytes: usize::try_from(args.write_buffer_bytes).unwrap_or(usize::MAX),
        block_cache_bytes: usize::try_from(args.cache_bytes).unwrap_or(usize::MAX),
        bloom_bits: None,
        compression: CompressionType::None,
        create_if_missing: true,
        vlog_on_write: true,
        vlog_gc_ratio: 0.0,
        vlog_gc_space_amp: 0.0,
        relaxed_sync_bytes: 0,
    }
}

fn describe(engine: YcsbEngine, cfg: &EngineConfig) -> String {
    match engine {
        YcsbEngine::Nokv => {
            let o = crate::nokv_db::options(cfg);
            let relaxed = if o.durability == nokv::Durability::Relaxed {
                format!(
                    " (Relaxed: WAL handed to the OS per write, fdatasync every {} bytes)",
                    o.relaxed_sync_interval_bytes
                )
            } else {
                String::new()
            };
            format!("nokv {}{relaxed}", crate::nokv_db::describe(cfg))
        }
        YcsbEngine::Fjall => crate::fjall_db::describe(cfg),
        YcsbEngine::Mem => "in-memory BTreeMap (no persistence, no options)".to_string(),
    }
}

fn open(engine: YcsbEngine, path: &Path, cfg: &EngineConfig) -> Result<Box<dyn BenchDb>> {
    Ok(match engine {
        YcsbEngine::Nokv => Box::new(crate::nokv_db::NokvDb::open(path, cfg)?),
        YcsbEngine::Fjall => Box::new(crate::fjall_db::FjallDb::open(path, cfg)?),
        YcsbEngine::Mem => Box::new(MemDb::new()),
    })
}

/// What one phase (the load or one workload) of one engine measured.
#[derive(Debug, Clone)]
pub struct PhaseResult {
    /// Engine name.
    pub engine: String,
    /// Workload letter, or [`LOAD`].
    pub workload: String,
    /// Wall time from the first thread's start to the last one's finish, in seconds.
    pub seconds: f64,
    /// Operations done.
    pub operations: u64,
    /// Latency of every operation.
    pub hist: Histogram,
    /// Records in the database when the phase started.
    pub records: u64,
    /// Threads.
    pub threads: usize,
    /// Reads (and read-modify-writes) that found no value.
    pub not_found: u64,
    /// Records inserted by the phase.
    pub inserted: u64,
    /// Entries visited by scans.
    pub scanned: u64,
    /// Resident set size at the end of the phase, in KiB.
    pub rss_kib: Option<u64>,
}

impl PhaseResult {
    /// Operations per second over the wall time.
    pub fn ops_per_sec(&self) -> f64 {
        self.operations as f64 / self.seconds.max(1e-9)
    }
}

fn us(nanos: u64) -> f64 {
    nanos as f64 / 1000.0
}

/// Formats the result line:
/// `ycsb engine=E workload=W ops_per_sec=N p50_us=X p95_us=X p99_us=X` + extra fields.
pub fn result_line(r: &PhaseResult) -> String {
    let rss = r.rss_kib.map_or("unknown".to_string(), |k| {
        format!("{:.0}", k as f64 / 1024.0)
    });
    format!(
        "ycsb engine={} workload={} ops_per_sec={:.0} p50_us={:.1} p95_us={:.1} p99_us={:.1} \
p999_us={:.1} max_us={:.1} mean_us={:.1} records={} operations={} threads={} seconds={:.3} \
not_found={} inserted={} scanned={} rss_mib={}",
        r.engine,
        r.workload,
        r.ops_per_sec(),
        us(r.hist.percentile(50.0)),
        us(r.hist.percentile(95.0)),
        us(r.hist.percentile(99.0)),
        us(r.hist.percentile(99.9)),
        us(r.hist.max()),
        r.hist.mean() / 1000.0,
        r.records,
        r.operations,
        r.threads,
        r.seconds,
        r.not_found,
        r.inserted,
        r.scanned,
        rss,
    )
}

/// Formats the ratio line `ycsb ratio workload=W nokv_over_fjall=R` (ops/sec ratio).
pub fn ratio_line(workload: &str, nokv: &PhaseResult, fjall: &PhaseResult) -> String {
    let f = fjall.ops_per_sec();
    let ratio = if f > 0.0 {
        format!("{:.2}", nokv.ops_per_sec() / f)
    } else {
        "nan".to_string()
    };
    format!("ycsb ratio workload={workload} nokv_over_fjall={ratio}")
}

/// Parses the `key=value` fields of a `ycsb engine=...` line; None for other lines.
pub fn parse_result_fields(line: &str) -> Option<Vec<(String, String)>> {
    let rest = line.strip_prefix("ycsb engine=")?;
    let mut fields = vec![];
    for (i, word) in format!("engine={rest}").split_whitespace().enumerate() {
        let (k, v) = word.split_once('=')?;
        if i == 0 && k != "engine" {
            return None;
        }
        fields.push((k.to_string(), v.to_string()));
    }
    Some(fields)
}

/// What one thread measured.
struct ThreadOut {
    start: Instant,
    finish: Instant,
    hist: Histogram,
    not_found: u64,
    inserted: u64,
    scanned: u64,
}

impl ThreadOut {
    fn new() -> Self {
        let now = Instant::now();
        ThreadOut {
            start: now,
            finish: now,
            hist: Histogram::new(),
            not_found: 0,
            inserted: 0,
            scanned: 0,
        }
    }
}

/// Operations of thread `t` when `total` operations are split over `threads`.
fn share(total: u64, threads: usize, t: usize) -> u64 {
    let n = threads.max(1) as u64;
    total / n + u64::from((t as u64) < total % n)
}

/// Runs `body(t, rng)` on `threads` threads started together, and merges their results.
fn run_threads<F>(threads: usize, seed: u64, body: F) -> Result<(f64, Vec<ThreadOut>)>
where
    F: Fn(usize, &mut Mt19937_64, &mut ThreadOut) -> Result<()> + Sync,
{
    let barrier = Barrier::new(threads);
    let results: Vec<Result<ThreadOut>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                let body = &body;
                s.spawn(move || {
                    let mut rng = Mt19937_64::new(seed.wrapping_add(t as u64));
                    let mut o = ThreadOut::new();
                    barrier.wait();
                    o.start = Instant::now();
                    let r = body(t, &mut rng, &mut o);
                    o.finish = Instant::now();
                    r.map(|_| o)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(Err(BenchError::ThreadPanic)))
            .collect()
    });
    let outs: Vec<ThreadOut> = results.into_iter().collect::<Result<_>>()?;
    let start = outs.iter().map(|o| o.start).min();
    let finish = outs.iter().map(|o| o.finish).max();
    let secs = match (start, finish) {
        (Some(s), Some(f)) => f.saturating_duration_since(s).as_secs_f64(),
        _ => 0.0,
    };
    Ok((secs, outs))
}

fn merge(
    engine: YcsbEngine,
    workload: &str,
    records: u64,
    threads: usize,
    secs: f64,
    outs: &[ThreadOut],
) -> PhaseResult {
    let mut hist = Histogram::new();
    for o in outs {
        hist.merge(&o.hist);
    }
    PhaseResult {
        engine: engine.name().to_string(),
        workload: workload.to_string(),
        seconds: secs,
        operations: hist.count(),
        hist,
        records,
        threads,
        not_found: outs.iter().map(|o| o.not_found).sum(),
        inserted: outs.iter().map(|o| o.inserted).sum(),
        scanned: outs.iter().map(|o| o.scanned).sum(),
        rss_kib: rss_kib(),
    }
}

/// Inserts records `[0, records)`, the threads taking contiguous shares of the key numbers.
fn load(db: &dyn BenchDb, args: &YcsbArgs, engine: YcsbEngine) -> Result<PhaseResult> {
    let threads = args.threads();
    let (secs, outs) = run_threads(threads, args.seed, |t, _rng, o| {
        let lo: u64 = (0..t).map(|i| share(args.records, threads, i)).sum();
        let hi = lo + share(args.records, threads, t);
        let mut gen = ValueGenerator::new(args.value_size, 1.0);
        let mut key = Vec::with_capacity(32);
        for keynum in lo..hi {
            key_name(keynum, &mut key);
            let t0 = Instant::now();
            db.put(&key, gen.generate(args.value_size), args.sync)?;
            o.hist.record(t0.elapsed().as_nanos() as u64);
            o.inserted += 1;
        }
        Ok(())
    })?;
    Ok(merge(engine, LOAD, 0, threads, secs, &outs))
}

/// Picks key numbers of existing records for reads, updates, scans and read-modify-writes.
enum Chooser {
    Zipfian(ScrambledZipfian),
    Uniform(u64),
    Latest(Latest),
}

/// Draws of the zipfian chooser before giving up on landing below the acknowledged count.
const MAX_REJECTIONS: u32 = 1000;

impl Chooser {
    fn next(&mut self, rng: &mut Mt19937_64, acked: u64) -> u64 {
        let acked = acked.max(1);
        match self {
            Chooser::Uniform(n) => uniform_below(rng, (*n).min(acked)),
            Chooser::Latest(l) => l.next(rng, acked),
            // YCSB's CoreWorkload.nextKeynum: redraw keys that are not inserted yet.
            Chooser::Zipfian(z) => {
                for _ in 0..MAX_REJECTIONS {
                    let k = z.next(rng);
                    if k < acked {
                        return k;
                    }
                }
                z.next(rng) % acked
            }
        }
    }
}

/// Settings of one workload run shared by its threads.
struct WorkloadCtx<'a> {
    db: &'a dyn BenchDb,
    args: &'a YcsbArgs,
    workload: Workload,
    counter: &'a InsertCounter,
    /// Records when the workload started.
    records: u64,
    /// zeta(10^10, theta) for the scrambled zipfian.
    zetan: f64,
}

#[derive(Clone, Copy)]
enum Op {
    Read,
    Update,
    Insert,
    Scan,
    Rmw,
}

fn pick_op(w: Workload, rng: &mut Mt19937_64) -> Op {
    let m = w.mix();
    let r = uniform_below(rng, 100) as u32;
    let mut acc = m.read;
    if r < acc {
        return Op::Read;
    }
    acc += m.update;
    if r < acc {
        return Op::Update;
    }
    acc += m.insert;
    if r < acc {
        return Op::Insert;
    }
    acc += m.scan;
    if r < acc {
        return Op::Scan;
    }
    Op::Rmw
}

fn workload_thread(
    c: &WorkloadCtx<'_>,
    ops: u64,
    rng: &mut Mt19937_64,
    o: &mut ThreadOut,
) -> Result<()> {
    let args = c.args;
    let mix = c.workload.mix();
    let mut chooser = if c.workload.uses_latest() {
        Chooser::Latest(Latest::new(c.records, args.zipf_theta))
    } else {
        match args.distribution {
            Distribution::Uniform => Chooser::Uniform(c.records),
            Distribution::Zipfian => {
                // YCSB sizes the chooser for the keys this run may insert: 2x the expected.
                let expected_new =
                    (args.operations as f64 * f64::from(mix.insert) / 100.0 * 2.0).ceil() as u64;
                Chooser::Zipfian(ScrambledZipfian::new(
                    c.records + expected_new,
                    args.zipf_theta,
                    c.zetan,
                ))
            }
        }
    };
    let mut gen = ValueGenerator::new(args.value_size, 1.0);
    let mut key = Vec::with_capacity(32);
    for _ in 0..ops {
        let op = pick_op(c.workload, rng);
        let t0;
        match op {
            Op::Insert => {
                let keynum = c.counter.claim();
                key_name(keynum, &mut key);
                let value = gen.generate(args.value_size);
                t0 = Instant::now();
                c.db.put(&key, value, args.sync)?;
                c.counter.acknowledge(keynum);
                o.inserted += 1;
            }
            Op::Read | Op::Update | Op::Rmw => {
                key_name(chooser.next(rng, c.counter.acked()), &mut key);
                let value = gen.generate(args.value_size);
                t0 = Instant::now();
                if matches!(op, Op::Read | Op::Rmw) && c.db.get(&key)?.is_none() {
                    o.not_found += 1;
                }
                if matches!(op, Op::Update | Op::Rmw) {
                    c.db.put(&key, value, args.sync)?;
                }
            }
            Op::Scan => {
                key_name(chooser.next(rng, c.counter.acked()), &mut key);
                let len = 1 + uniform_below(rng, args.max_scan_len);
                t0 = Instant::now();
                let r = c.db.seek_next(&key, len)?;
                let entry = (key.len() + args.value_size) as u64;
                o.scanned += r.bytes / entry.max(1);
            }
        }
        o.hist.record(t0.elapsed().as_nanos() as u64);
    }
    Ok(())
}

fn run_workload(
    db: &dyn BenchDb,
    args: &YcsbArgs,
    engine: YcsbEngine,
    index: usize,
    workload: Workload,
    counter: &InsertCounter,
    zetan: f64,
) -> Result<PhaseResult> {
    let threads = args.threads();
    let records = counter.acked();
    let ctx = WorkloadCtx {
        db,
        args,
        workload,
        counter,
        records,
        zetan,
    };
    // Same seeds for every engine: the same key choices, up to thread interleaving.
    let seed = args
        .seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(((index as u64) + 1) << 16);
    let (secs, outs) = run_threads(threads, seed, |t, rng, o| {
        workload_thread(&ctx, share(args.operations, threads, t), rng, o)
    })?;
    Ok(merge(
        engine,
        workload.name(),
        records,
        threads,
        secs,
        &outs,
    ))
}

/// Loads one engine and runs every workload on it; prints each line as it completes.
fn run_engine(
    engine: YcsbEngine,
    args: &YcsbArgs,
    cfg: &EngineConfig,
    zetan: f64,
    out: &mut dyn Write,
) -> Result<Vec<PhaseResult>> {
    let base: PathBuf = args.dir.join(engine.name());
    let persistent = engine != YcsbEngine::Mem;
    if persistent {
        destroy_db_dir(&base)?;
        prepare_db_dir(&base)?;
    }
    let db = open(engine, &base.join("db"), cfg)?;
    let mut results = Vec::new();
    let res = (|| -> Result<()> {
        let r = load(db.as_ref(), args, engine)?;
        w(out, format_args!("{}\n", result_line(&r)))?;
        results.push(r);
        let t = Instant::now();
        db.flush_and_wait()?;
        w(
            out,
            format_args!(
                "settle engine={} after=load seconds={:.3} (flush + wait for compaction, not timed in any workload)\n",
                engine.name(),
                t.elapsed().as_secs_f64()
            ),
        )?;
        let counter = InsertCounter::new(args.records);
        for (i, wl) in args.workloads.iter().enumerate() {
            let r = run_workload(db.as_ref(), args, engine, i, *wl, &counter, zetan)?;
            w(out, format_args!("{}\n", result_line(&r)))?;
            results.push(r);
        }
        w(
            out,
            format_args!("stats engine={}: {}\n", engine.name(), db.stats_text()),
        )?;
        Ok(())
    })();
    let closed = db.close();
    res?;
    closed?;
    if persistent && !args.keep {
        destroy_db_dir(&base)?;
    }
    Ok(results)
}

/// Runs `nokv-bench ycsb` with the given flags, printing to `out`.
pub fn run(args: &YcsbArgs, out: &mut dyn Write) -> Result<()> {
    args.validate()?;
    let cfg = engine_config(args);
    let workloads: Vec<&str> = args.workloads.iter().map(|w| w.name()).collect();
    let engines: Vec<&str> = args.engines.iter().map(|e| e.name()).collect();
    w(
        out,
        format_args!(
            "ycsb settings: nokv-bench {} engines={} workloads={} records={} operations={} threads={} \
value_size={} (one field) key_size={} ('user' + FNV-hashed key number, zero-padded to {} digits) \
distribution={:?} zipf_theta={} (D: latest) max_scan_len={} sync={} cache_bytes={} \
write_buffer_bytes={} seed={} dir={}\n",
            env!("CARGO_PKG_VERSION"),
            engines.join(","),
            workloads.join(","),
            args.records,
            args.operations,
            args.threads,
            args.value_size,
            4 + dist::KEY_DIGITS,
            dist::KEY_DIGITS,
            args.distribution,
            args.zipf_theta,
            args.max_scan_len,
            args.sync,
            args.cache_bytes,
            args.write_buffer_bytes,
            args.seed,
            args.dir.display(),
        ),
    )?;
    for e in &args.engines {
        w(
            out,
            format_args!(
                "ycsb settings engine={}: {}\n",
                e.name(),
                describe(*e, &cfg)
            ),
        )?;
    }
    let zetan = ScrambledZipfian::zetan(args.zipf_theta);
    let mut all: Vec<PhaseResult> = Vec::new();
    for e in &args.engines {
        all.extend(run_engine(*e, args, &cfg, zetan, out)?);
    }
    let find = |engine: &str, wl: &str| all.iter().find(|r| r.engine == engine && r.workload == wl);
    let phases = std::iter::once(LOAD).chain(workloads.iter().copied());
    for wl in phases {
        if let (Some(n), Some(f)) = (find("nokv", wl), find("fjall", wl)) {
            w(out, format_args!("{}\n", ratio_line(wl, n, f)))?;
        }
    }
    print_peak_rss(out, ", whole process, all engines")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: YcsbArgs,
    }

    fn run_args(argv: &[&str]) -> std::result::Result<String, Box<dyn std::error::Error>> {
        let args = T::try_parse_from(std::iter::once("t").chain(argv.iter().copied()))?.a;
        let mut out = Vec::new();
        run(&args, &mut out)?;
        Ok(String::from_utf8(out)?)
    }

    fn field<'a>(fields: &'a [(String, String)], k: &str) -> Option<&'a str> {
        fields
            .iter()
            .find(|(name, _)| name == k)
            .map(|(_, v)| v.as_str())
    }

    fn results(text: &str) -> Vec<Vec<(String, String)>> {
        text.lines().filter_map(parse_result_fields).collect()
    }

    #[test]
    fn line_format() -> std::result::Result<(), Box<dyn std::error::Error>> {
        let mut hist = Histogram::new();
        for v in [12_300u64, 45_600, 78_900] {
            hist.record(v);
        }
        let r = PhaseResult {
            engine: "nokv".into(),
            workload: "A".into(),
            seconds: 2.0,
            operations: 246_912,
            hist,
            records: 1000,
            threads: 2,
            not_found: 0,
            inserted: 0,
            scanned: 0,
            rss_kib: Some(2048),
        };
        let line = result_line(&r);
        // Percentiles are bucket midpoints (within 1/128), capped at the maximum.
        assert!(
            line.starts_with(
                "ycsb engine=nokv workload=A ops_per_sec=123456 p50_us=45.7 p95_us=78.9 p99_us=78.9 "
            ),
            "{line}"
        );
        assert!(line.contains(" records=1000 operations=246912 threads=2 seconds=2.000 "));
        assert!(line.ends_with(" rss_mib=2"));
        let f = parse_result_fields(&line).ok_or("no parse")?;
        let keys: Vec<&str> = f.iter().take(6).map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "engine",
                "workload",
                "ops_per_sec",
                "p50_us",
                "p95_us",
                "p99_us"
            ]
        );
        let mut fj = r.clone();
        fj.engine = "fjall".into();
        fj.seconds = 4.0;
        assert_eq!(
            ratio_line("A", &r, &fj),
            "ycsb ratio workload=A nokv_over_fjall=2.00"
        );
        assert_eq!(parse_result_fields("ycsb ratio workload=A x=1"), None);
        Ok(())
    }

    #[test]
    fn shares_add_up() {
        for (total, threads) in [(10u64, 3usize), (0, 2), (7, 7), (1_000_001, 4)] {
            let s: u64 = (0..threads).map(|t| share(total, threads, t)).sum();
            assert_eq!(s, total);
        }
    }

    #[test]
    fn all_workloads_on_memdb() -> std::result::Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let d = format!("--dir={}", dir.path().display());
        let text = run_args(&[
            "--engines=mem",
            &d,
            "--records=2000",
            "--operations=3001",
            "--threads=3",
            "--value-size=50",
            "--max-scan-len=10",
        ])?;
        let r = results(&text);
        let names: Vec<&str> = r.iter().filter_map(|f| field(f, "workload")).collect();
        assert_eq!(names, ["load", "A", "B", "C", "F", "D", "E"], "{text}");
        for f in &r {
            let wl = field(f, "workload").ok_or("workload")?;
            let ops: u64 = field(f, "operations").ok_or("ops")?.parse()?;
            assert_eq!(ops, if wl == "load" { 2000 } else { 3001 }, "{wl}");
            // Every read finds its key: choosers stay below the acknowledged count.
            assert_eq!(field(f, "not_found"), Some("0"), "{wl}");
            assert_eq!(field(f, "threads"), Some("3"));
        }
        // D and E insert about 5% each, and E's scans see entries; later workloads see the
        // inserted records.
        let ins = |wl: &str| -> u64 {
            r.iter()
                .find(|f| field(f, "workload") == Some(wl))
                .and_then(|f| field(f, "inserted"))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        assert!((100..=220).contains(&ins("D")), "{}", ins("D"));
        assert!((100..=220).contains(&ins("E")), "{}", ins("E"));
        assert_eq!(ins("A"), 0);
        let e = r.last().ok_or("no E")?;
        let e_records: u64 = field(e, "records").ok_or("records")?.parse()?;
        assert_eq!(e_records, 2000 + ins("D"));
        let scanned: u64 = field(e, "scanned").ok_or("scanned")?.parse()?;
        assert!(scanned > 3001, "{scanned}");
        assert!(text.contains("ycsb settings engine=mem: in-memory"));
        // One engine only: no ratio lines.
        assert!(!text.contains("ycsb ratio"));
        Ok(())
    }

    #[test]
    fn nokv_and_fjall_side_by_side() -> std::result::Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let d = format!("--dir={}", dir.path().display());
        let text = run_args(&[
            "--engines=nokv,fjall",
            "--workloads=A,C,D,E",
            &d,
            "--records=3000",
            "--operations=2000",
            "--threads=2",
            "--value-size=100",
            "--write-buffer-bytes=1048576",
            "--cache-bytes=1048576",
            "--zipf-theta=1.01",
            "--max-scan-len=20",
        ])?;
        let r = results(&text);
        assert_eq!(r.len(), 2 * 5, "{text}");
        for f in &r {
            assert_eq!(field(f, "not_found"), Some("0"), "{text}");
        }
        for wl in ["load", "A", "C", "D", "E"] {
            let prefix = format!("ycsb ratio workload={wl} nokv_over_fjall=");
            let line = text
                .lines()
                .find(|l| l.starts_with(&prefix))
                .ok_or("missing ratio")?;
            let v: f64 = line[prefix.len()..].parse()?;
            assert!(v > 0.0);
        }
        assert!(text.contains("ycsb settings engine=nokv: nokv Options"));
        assert!(text.contains("ycsb settings engine=fjall: fjall 3."));
        // Databases are removed unless --keep.
        assert!(!dir.path().join("nokv").exists());
        assert!(!dir.path().join("fjall").exists());
        Ok(())
    }

    #[test]
    fn uniform_distribution_runs() -> std::result::Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let d = format!("--dir={}", dir.path().display());
        let text = run_args(&[
            "--engines=mem",
            &d,
            "--workloads=b,f",
            "--records=500",
            "--operations=500",
            "--distribution=uniform",
        ])?;
        assert_eq!(results(&text).len(), 3);
        Ok(())
    }
}

//! Runs db_bench workloads against a [`BenchDb`] and prints db_bench-format results.

use std::io::Write;
use std::sync::Barrier;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::db::{destroy_db_dir, prepare_db_dir, BenchDb, EngineStats, MemDb};
use crate::error::{BenchError, Result};
use crate::flags::{DbBenchArgs, Engine};
use crate::gen::{key_from_int, Mt19937_64, ValueGenerator};
use crate::report::{MergedStats, ThreadStats, PEAK_RSS_PREFIX, SETTLE_PREFIX, WRITE_AMP_PREFIX};

/// Engine-neutral settings derived from the flags.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Writes wait for the WAL sync (Durability::Sync) instead of Relaxed.
    pub sync: bool,
    /// Memtable budget in bytes.
    pub write_buffer_bytes: usize,
    /// Block cache budget in bytes (0 disables).
    pub block_cache_bytes: usize,
    /// Bloom bits per key, None for the engine default.
    pub bloom_bits: Option<usize>,
    /// Block compression.
    pub compression: crate::flags::CompressionType,
    /// Create the database if it does not exist (false with --use_existing_db, like db_bench).
    pub create_if_missing: bool,
    /// NoKV: separate large values at commit (else at flush).
    pub vlog_on_write: bool,
    /// NoKV: value-log GC's minimum discard ratio (0: engine default).
    pub vlog_gc_ratio: f64,
    /// NoKV: value-log GC's space-amplification target (0: engine default).
    pub vlog_gc_space_amp: f64,
    /// NoKV: bytes of relaxed writes between syncs (0: engine default).
    pub relaxed_sync_bytes: u64,
}

impl EngineConfig {
    /// Settings for the given flags.
    pub fn from_args(a: &DbBenchArgs) -> Self {
        EngineConfig {
            sync: a.sync,
            write_buffer_bytes: usize::try_from(a.write_buffer_size).unwrap_or(usize::MAX),
            block_cache_bytes: a.cache_bytes(),
            bloom_bits: a.bloom_bits(),
            compression: a.compression_type,
            create_if_missing: !a.use_existing_db,
            vlog_on_write: a.vlog_on_write,
            vlog_gc_ratio: a.vlog_gc_ratio,
            vlog_gc_space_amp: a.vlog_gc_space_amp,
            relaxed_sync_bytes: a.relaxed_sync_bytes,
        }
    }
}

/// Describes the effective engine options without opening anything.
fn describe_engine(engine: Engine, cfg: &EngineConfig) -> String {
    match engine {
        Engine::Nokv => crate::nokv_db::describe(cfg),
        Engine::Mem => "in-memory BTreeMap (no persistence, no options)".to_string(),
    }
}

fn open_engine(
    engine: Engine,
    path: &std::path::Path,
    cfg: &EngineConfig,
) -> Result<Box<dyn BenchDb>> {
    match engine {
        Engine::Nokv => Ok(Box::new(crate::nokv_db::NokvDb::open(path, cfg)?)),
        Engine::Mem => Ok(Box::new(MemDb::new())),
    }
}

/// Per-benchmark parameters shared by all threads.
struct Ctx {
    num: u64,
    key_size: usize,
    value_size: usize,
    sync: bool,
    writes: u64,
    reads: u64,
    readwrites: u64,
    seek_nexts: u64,
    readwritepercent: u32,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    FillSeq,
    FillRandom,
    Overwrite,
    ReadRandom,
    SeekRandom,
    ReadSeq,
    ReadRandomWriteRandom,
}

impl Kind {
    fn from_name(name: &str) -> Result<Kind> {
        Ok(match name {
            "fillseq" => Kind::FillSeq,
            "fillrandom" => Kind::FillRandom,
            "overwrite" => Kind::Overwrite,
            "readrandom" => Kind::ReadRandom,
            "seekrandom" => Kind::SeekRandom,
            "readseq" => Kind::ReadSeq,
            "readrandomwriterandom" => Kind::ReadRandomWriteRandom,
            other => return Err(BenchError::UnknownBenchmark(other.to_string())),
        })
    }

    /// Starts from an empty database.
    fn fresh_db(self) -> bool {
        matches!(self, Kind::FillSeq | Kind::FillRandom)
    }

    /// Timing includes flush + compaction settling.
    fn settles(self) -> bool {
        matches!(self, Kind::FillSeq | Kind::FillRandom | Kind::Overwrite)
    }

    /// Writes data (write amplification is reported).
    fn writes(self) -> bool {
        self.settles() || self == Kind::ReadRandomWriteRandom
    }
}

fn thread_body(
    kind: Kind,
    db: &dyn BenchDb,
    ctx: &Ctx,
    rng: &mut Mt19937_64,
    gen: &mut ValueGenerator,
    st: &mut ThreadStats,
) -> Result<()> {
    let mut key = Vec::with_capacity(ctx.key_size);
    let entry_bytes = (ctx.key_size + ctx.value_size) as u64;
    match kind {
        Kind::FillSeq | Kind::FillRandom | Kind::Overwrite => {
            for i in 0..ctx.writes {
                // db_bench draws a key-generator id (rand.Next() % 1) before each key.
                rng.next_u64();
                let k = if kind == Kind::FillSeq {
                    i
                } else {
                    rng.next_u64() % ctx.num
                };
                key_from_int(k, ctx.key_size, &mut key);
                db.put(&key, gen.generate(ctx.value_size), ctx.sync)?;
                st.done += 1;
                st.bytes += entry_bytes;
            }
        }
        Kind::ReadRandom => {
            let mut found = 0u64;
            for _ in 0..ctx.reads {
                // db_bench's SelectDBWithCfh(thread) draws one value before the key.
                rng.next_u64();
                key_from_int(rng.next_u64() % ctx.num, ctx.key_size, &mut key);
                if let Some(v) = db.get(&key)? {
                    found += 1;
                    st.bytes += (key.len() + v.len()) as u64;
                }
                st.done += 1;
            }
            st.message = format!("({found} of {} found)\n", ctx.reads);
        }
        Kind::SeekRandom => {
            let mut found = 0u64;
            for _ in 0..ctx.reads {
                key_from_int(rng.next_u64() % ctx.num, ctx.key_size, &mut key);
                let r = db.seek_next(&key, ctx.seek_nexts)?;
                found += u64::from(r.found);
                st.bytes += r.bytes;
                st.done += 1;
            }
            st.message = format!("({found} of {} found)\n", ctx.reads);
        }
        Kind::ReadSeq => {
            let r = db.scan(ctx.reads)?;
            st.done += r.entries;
            st.bytes += r.bytes;
        }
        Kind::ReadRandomWriteRandom => {
            let (mut get_weight, mut put_weight) = (0u32, 0u32);
            let (mut reads_done, mut writes_done, mut found) = (0u64, 0u64, 0u64);
            for _ in 0..ctx.readwrites {
                // db_bench's SelectDB(thread) draws one value before the key.
                rng.next_u64();
                key_from_int(rng.next_u64() % ctx.num, ctx.key_size, &mut key);
                if get_weight == 0 && put_weight == 0 {
                    get_weight = ctx.readwritepercent;
                    put_weight = 100 - get_weight;
                }
                if get_weight > 0 {
                    if db.get(&key)?.is_some() {
                        found += 1;
                    }
                    get_weight -= 1;
                    reads_done += 1;
                } else {
                    db.put(&key, gen.generate(ctx.value_size), ctx.sync)?;
                    put_weight -= 1;
                    writes_done += 1;
                }
                st.done += 1;
            }
            st.message = format!(
                "( reads:{reads_done} writes:{writes_done} total:{} found:{found})",
                ctx.readwrites
            );
        }
    }
    Ok(())
}

/// Runs one benchmark on `threads` threads started together; returns their stats.
fn run_threads(
    kind: Kind,
    db: &dyn BenchDb,
    ctx: &Ctx,
    args: &DbBenchArgs,
    seeds: std::ops::Range<u64>,
) -> Result<Vec<ThreadStats>> {
    let n = args.threads();
    let barrier = Barrier::new(n);
    let results: Vec<Result<ThreadStats>> = std::thread::scope(|s| {
        let handles: Vec<_> = seeds
            .map(|seed| {
                let barrier = &barrier;
                s.spawn(move || {
                    let mut rng = Mt19937_64::new(seed);
                    let mut gen = ValueGenerator::new(args.value_size, args.compression_ratio);
                    barrier.wait();
                    let mut st = ThreadStats::start();
                    thread_body(kind, db, ctx, &mut rng, &mut gen, &mut st)?;
                    st.stop();
                    Ok(st)
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

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1048576.0)
}

fn levels_text(s: &EngineStats) -> String {
    let parts: Vec<String> = s
        .levels
        .iter()
        .enumerate()
        .filter(|(_, (files, _))| *files > 0)
        .map(|(i, (files, bytes))| format!("L{i} {files} files {}", mib(*bytes)))
        .collect();
    if parts.is_empty() {
        "no files".to_string()
    } else {
        parts.join(", ")
    }
}

/// Peak resident set size of this process in KiB (VmHWM from /proc/self/status).
pub fn peak_rss_kib() -> Option<u64> {
    proc_status_kib("VmHWM:")
}

/// Current resident set size of this process in KiB (VmRSS from /proc/self/status).
pub fn rss_kib() -> Option<u64> {
    proc_status_kib("VmRSS:")
}

/// A `kB` field of /proc/self/status, e.g. `VmHWM:`.
fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Writes and flushes one piece of output, mapping failures to a stdout error.
pub(crate) fn w(out: &mut dyn Write, s: std::fmt::Arguments<'_>) -> Result<()> {
    out.write_fmt(s)
        .and_then(|_| out.flush())
        .map_err(|e| BenchError::io("writing results to", "stdout", e))
}

/// Runs `nokv-bench dbbench` with the given flags, printing to `out`.
pub fn run(args: &DbBenchArgs, out: &mut dyn Write) -> Result<()> {
    args.validate()?;
    let kinds: Vec<(String, Kind)> = args
        .benchmarks
        .iter()
        .map(|b| b.trim())
        .filter(|b| !b.is_empty())
        .map(|b| Kind::from_name(b).map(|k| (b.to_string(), k)))
        .collect::<Result<_>>()?;

    let seed_base = if args.seed == 0 {
        let s = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1);
        w(out, format_args!("Set seed to {s} because --seed was 0\n"))?;
        s
    } else {
        args.seed
    };
    let cfg = EngineConfig::from_args(args);
    let path = args.db_path();
    let raw = (args.key_size() + args.value_size) as f64 * args.num as f64 / 1048576.0;
    w(
        out,
        format_args!(
            "nokv-bench {} dbbench (engine: {:?})\n\
Keys:       {} bytes each\n\
Values:     {} bytes each (compression_ratio {}, compression {:?})\n\
Entries:    {}\n\
RawSize:    {:.1} MB (estimated)\n\
Threads:    {} (per thread: {} writes, {} reads)\n\
Sync:       {} (durability {})\n\
Benchmarks: {}\n\
Engine options: {}\n\
------------------------------------------------\n",
            env!("CARGO_PKG_VERSION"),
            args.engine,
            args.key_size(),
            args.value_size,
            args.compression_ratio,
            args.compression_type,
            args.num,
            raw,
            args.threads(),
            args.writes(),
            args.reads(),
            u8::from(args.sync),
            if args.sync { "Sync" } else { "Relaxed" },
            kinds
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(","),
            describe_engine(args.engine, &cfg),
        ),
    )?;

    if !args.use_existing_db && args.engine == Engine::Nokv {
        destroy_db_dir(&path)?;
    }
    let ctx = Ctx {
        num: args.num,
        key_size: args.key_size(),
        value_size: args.value_size,
        sync: args.sync,
        writes: args.writes(),
        reads: args.reads(),
        readwrites: args.readwrites(),
        seek_nexts: args.seek_nexts,
        readwritepercent: args.readwritepercent,
    };
    let mut db: Option<Box<dyn BenchDb>> = None;
    let mut threads_started = 0u64;
    let result = (|| -> Result<()> {
        for (name, kind) in &kinds {
            if kind.fresh_db() {
                if args.use_existing_db {
                    w(
                        out,
                        format_args!("{name:<12} : skipped (--use_existing_db is true)\n"),
                    )?;
                    continue;
                }
                if let Some(old) = db.take() {
                    old.close()?;
                }
                if args.engine == Engine::Nokv {
                    destroy_db_dir(&path)?;
                }
            }
            if db.is_none() {
                if !args.use_existing_db && args.engine == Engine::Nokv {
                    prepare_db_dir(&path)?;
                }
                db = Some(open_engine(args.engine, &path, &cfg)?);
            }
            let handle: &dyn BenchDb = db
                .as_deref()
                .ok_or_else(|| BenchError::engine("open", "database not open"))?;
            w(out, format_args!("DB path: [{}]\n", path.display()))?;
            let before = handle.stats();
            let n = args.threads() as u64;
            // db_bench seeds thread i of the run with seed_base + (threads started so far).
            let seeds = seed_base + threads_started + 1..seed_base + threads_started + n + 1;
            threads_started += n;
            let per_thread = run_threads(*kind, handle, &ctx, args, seeds)?;
            let mut merged = MergedStats::merge(&per_thread);
            let mut settle = None;
            if kind.settles() {
                let t = Instant::now();
                handle.flush_and_wait()?;
                let d = t.elapsed();
                settle = Some((d, merged.elapsed, merged.done));
                merged.add_settle(d, args.threads());
            }
            w(out, format_args!("{}\n", merged.result_line(name)))?;
            if let Some((d, ingest_elapsed, done)) = settle {
                let ingest = if ingest_elapsed > 0.0 {
                    (done as f64 / ingest_elapsed) as u64
                } else {
                    0
                };
                w(
                    out,
                    format_args!(
                        "{SETTLE_PREFIX}{name} {:.3} seconds waiting for flush+compaction (included above); {ingest} ops/sec without it\n",
                        d.as_secs_f64()
                    ),
                )?;
            }
            if kind.writes() {
                let after = handle.stats();
                let wa = after
                    .write_amp_since(&before)
                    .map_or("n/a".to_string(), |v| format!("{v:.3}"));
                w(
                    out,
                    format_args!(
                        "{WRITE_AMP_PREFIX}{name} {wa} (this benchmark: user {}, wal {}, value log at commit {}, flush {}, compaction {}; engine cumulative {:.3}; wal syncs {}, stall {:.3} s; {})\n",
                        mib(after.user_bytes.saturating_sub(before.user_bytes)),
                        mib(after.wal_bytes.saturating_sub(before.wal_bytes)),
                        mib(after.vlog_write_bytes.saturating_sub(before.vlog_write_bytes)),
                        mib(after.flush_bytes.saturating_sub(before.flush_bytes)),
                        mib(after.compaction_bytes.saturating_sub(before.compaction_bytes)),
                        after.write_amplification,
                        after.wal_syncs.saturating_sub(before.wal_syncs),
                        after.stall_micros.saturating_sub(before.stall_micros) as f64 / 1e6,
                        levels_text(&after),
                    ),
                )?;
            }
        }
        if let Some(d) = &db {
            if args.statistics {
                w(out, format_args!("STATISTICS:\n{}\n", d.stats_text()))?;
            }
        }
        Ok(())
    })();
    let closed = match db.take() {
        Some(d) => d.close(),
        None => Ok(()),
    };
    result?;
    closed?;
    print_peak_rss(out, "")
}

/// Prints the `peak RSS` line (`note` is appended inside the parentheses).
pub(crate) fn print_peak_rss(out: &mut dyn Write, note: &str) -> Result<()> {
    match peak_rss_kib() {
        Some(kib) => w(
            out,
            format_args!("{PEAK_RSS_PREFIX}{kib} kB (VmHWM{note})\n"),
        ),
        None => w(out, format_args!("{PEAK_RSS_PREFIX}unknown (no VmHWM)\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::parse_output;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: DbBenchArgs,
    }

    fn run_mem(extra: &[&str]) -> std::result::Result<String, Box<dyn std::error::Error>> {
        let mut argv = vec!["t", "--engine=mem"];
        for base in ["--seed=7", "--num=2000", "--value_size=100"] {
            let flag = base.split('=').next().unwrap_or(base);
            if !extra.iter().any(|e| e.starts_with(flag)) {
                argv.push(base);
            }
        }
        argv.extend_from_slice(extra);
        let args = T::try_parse_from(argv)?.a;
        let mut out = Vec::new();
        run(&args, &mut out)?;
        Ok(String::from_utf8(out)?)
    }

    #[test]
    fn all_benchmarks_run_on_memdb() -> std::result::Result<(), Box<dyn std::error::Error>> {
        let text = run_mem(&[
            "--benchmarks=fillseq,fillrandom,overwrite,readrandom,seekrandom,readseq,readrandomwriterandom",
            "--seek_nexts=3",
            "--reads=500",
        ])?;
        let p = parse_output(&text);
        let got: Vec<(&str, u64)> = p
            .results
            .iter()
            .map(|r| (r.name.as_str(), r.operations))
            .collect();
        // fillrandom starts a fresh db, then overwrite adds to it.
        assert_eq!(
            got,
            [
                ("fillseq", 2000),
                ("fillrandom", 2000),
                ("overwrite", 2000),
                ("readrandom", 500),
                ("seekrandom", 500),
                ("readseq", 500),
                ("readrandomwriterandom", 500)
            ]
        );
        // Two random passes over 2000 keys cover about 1 - e^-2 = 86% of them.
        let (found, tried) = p.results[3].found.ok_or("no found count")?;
        assert_eq!(tried, 500);
        assert!((380..=480).contains(&found), "found {found}");
        assert_eq!(p.settle.len(), 3);
        assert!(text.contains("( reads:450 writes:50 total:500 found:"));
        assert!(text.contains("Engine options: in-memory"));
        assert!(p.peak_rss_kib.is_some());
        Ok(())
    }

    #[test]
    fn threads_multiply_per_thread_counts() -> std::result::Result<(), Box<dyn std::error::Error>> {
        let text = run_mem(&[
            "--benchmarks=fillrandom,readrandom",
            "--threads=4",
            "--reads=100",
        ])?;
        let p = parse_output(&text);
        assert_eq!(p.results[0].operations, 8000);
        assert_eq!(p.results[1].operations, 400);
        Ok(())
    }

    #[test]
    fn same_seed_same_keys() -> std::result::Result<(), Box<dyn std::error::Error>> {
        let a = run_mem(&["--benchmarks=fillrandom,readrandom"])?;
        let b = run_mem(&["--benchmarks=fillrandom,readrandom"])?;
        let fa = parse_output(&a).results[1].found;
        assert_eq!(fa, parse_output(&b).results[1].found);
        Ok(())
    }

    #[test]
    fn key_sequences_match_real_db_bench() -> std::result::Result<(), Box<dyn std::error::Error>> {
        // db_bench 7.8.3 --seed=42 --num=1000 --value_size=100 --key_size=16
        // --benchmarks=fillrandom,readrandom,seekrandom,readrandomwriterandom,readrandom
        // printed (664 of 1000 found), (661 of 1000 found), found:593, (650 of 1000 found):
        // same seeds, same draws, same keys.
        let text = run_mem(&[
            "--seed=42",
            "--num=1000",
            "--benchmarks=fillrandom,readrandom,seekrandom,readrandomwriterandom,readrandom",
        ])?;
        let p = parse_output(&text);
        assert_eq!(p.results[1].found, Some((664, 1000)));
        assert_eq!(p.results[2].found, Some((661, 1000)));
        assert!(text.contains("( reads:900 writes:100 total:1000 found:593)"));
        assert_eq!(p.results[4].found, Some((650, 1000)));
        Ok(())
    }

    #[test]
    fn nokv_engine_finds_what_db_bench_finds() -> std::result::Result<(), Box<dyn std::error::Error>>
    {
        // Same fixture as above, on the real engine with a small memtable so that reads go
        // through SST files; also exercises fresh-db handling and --use_existing_db.
        let dir = tempfile::tempdir()?;
        let db = format!("--db={}", dir.path().join("db").display());
        // Leftover data from an earlier run must be destroyed by the next fresh run.
        run_mem(&["--engine=nokv", &db, "--num=3000", "--benchmarks=fillseq"])?;
        let text = run_mem(&[
            "--engine=nokv",
            &db,
            "--seed=42",
            "--num=1000",
            "--write_buffer_size=65536",
            "--benchmarks=fillrandom,readrandom,seekrandom,readrandomwriterandom,readrandom",
        ])?;
        let p = parse_output(&text);
        assert_eq!(p.results[1].found, Some((664, 1000)), "{text}");
        assert_eq!(p.results[2].found, Some((661, 1000)));
        assert!(text.contains("( reads:900 writes:100 total:1000 found:593)"));
        assert_eq!(p.results[4].found, Some((650, 1000)));
        let wa = p
            .write_amp
            .iter()
            .find(|(n, _)| n == "fillrandom")
            .ok_or("no write-amp")?;
        assert!(wa.1 > 0.0, "{text}");
        let again = run_mem(&[
            "--engine=nokv",
            &db,
            "--use_existing_db=1",
            "--num=1000",
            "--benchmarks=fillrandom,readseq",
        ])?;
        assert!(again.contains("fillrandom   : skipped (--use_existing_db is true)"));
        let p = parse_output(&again);
        assert_eq!(p.results.len(), 1);
        assert!(p.results[0].operations > 600, "{again}");
        Ok(())
    }

    #[test]
    fn use_existing_db_requires_a_db() -> std::result::Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let db = format!("--db={}", dir.path().join("missing").display());
        assert!(run_mem(&[
            "--engine=nokv",
            &db,
            "--use_existing_db=1",
            "--benchmarks=readseq"
        ])
        .is_err());
        Ok(())
    }

    #[test]
    fn rejects_unknown_benchmark() {
        assert!(run_mem(&["--benchmarks=fillrandom,compact"]).is_err());
    }
}

//! `nokv-bench dbbench` flags: db_bench's names, defaults and meanings.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use crate::error::{BenchError, Result};

/// Which engine the benchmarks drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Engine {
    /// The NoKV storage engine.
    Nokv,
    /// An in-memory BTreeMap (harness overhead and self-test).
    Mem,
}

/// Block compression, as db_bench's --compression_type (only what NoKV implements).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompressionType {
    /// Blocks stored as written.
    None,
    /// LZ4 block compression.
    Lz4,
}

/// Parses a gflags-style boolean: 1/0, true/false, t/f, yes/no, y/n.
pub fn parse_flag_bool(s: &str) -> std::result::Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "true" | "t" | "yes" | "y" => Ok(true),
        "0" | "false" | "f" | "no" | "n" => Ok(false),
        _ => Err(format!("expected 0/1 or true/false, got '{s}'")),
    }
}

/// Benchmarks this driver implements, with db_bench's meaning.
pub const BENCHMARKS: &[&str] = &[
    "fillseq",
    "fillrandom",
    "overwrite",
    "readrandom",
    "seekrandom",
    "readseq",
    "readrandomwriterandom",
];

/// Flags of `nokv-bench dbbench` (accepted as `--flag=value` or `--flag value`).
#[derive(Debug, Clone, Args)]
#[command(
    rename_all = "snake_case",
    args_override_self = true,
    after_help = "Result lines use db_bench's format:\n  \
name : X micros/op N ops/sec S seconds K operations; M MB/s (F of R found)\n\
micros/op is summed thread time / operations; ops/sec is operations / wall time.\n\
Fill benchmarks (fillseq, fillrandom, overwrite) include the time to flush the memtable\n\
and wait for compaction to settle; that time is also printed on a 'settle' line."
)]
pub struct DbBenchArgs {
    /// Comma-separated benchmarks, run in order: fillseq (N sequential keys), fillrandom
    /// (N random keys, fresh db), overwrite (N random keys, existing db), readrandom,
    /// seekrandom (seek then --seek_nexts nexts), readseq (iterate from the first key),
    /// readrandomwriterandom (--readwritepercent reads, the rest writes).
    #[arg(long, value_delimiter = ',', default_value = "fillrandom,readrandom")]
    pub benchmarks: Vec<String>,

    /// Number of keys in the key space; each thread of a write benchmark writes this many.
    #[arg(long, default_value_t = 1_000_000)]
    pub num: u64,

    /// Operations per thread for read benchmarks; negative means --num.
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub reads: i64,

    /// Operations per thread for write benchmarks; negative means --num.
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub writes: i64,

    /// Percentage of reads in readrandomwriterandom (the rest are writes).
    #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub readwritepercent: u32,

    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,

    /// Bytes per key: 8-byte big-endian key number, padded with '0' (db_bench's layout).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub key_size: u64,

    /// Concurrent threads; each runs the full per-thread operation count.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub threads: u64,

    /// 1: every write waits for the WAL fdatasync (Durability::Sync); 0: Durability::Relaxed.
    #[arg(long, default_value = "0", num_args = 0..=1, default_missing_value = "1",
          value_parser = parse_flag_bool)]
    pub sync: bool,

    /// Database directory (default /tmp/nokvtest-<uid>/dbbench, like db_bench).
    #[arg(long)]
    pub db: Option<PathBuf>,

    /// 1: open the database at --db as is (fill benchmarks are skipped); 0: start empty.
    #[arg(long, default_value = "0", num_args = 0..=1, default_missing_value = "1",
          value_parser = parse_flag_bool)]
    pub use_existing_db: bool,

    /// Block cache bytes (0 or negative disables the cache).
    #[arg(long, default_value_t = 8 << 20, allow_negative_numbers = true)]
    pub cache_size: i64,

    /// Memtable bytes before it is frozen and flushed.
    #[arg(long, default_value_t = 64 << 20)]
    pub write_buffer_size: u64,

    /// Bloom filter bits per key; 0 disables filters, negative keeps the engine default.
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub bloom_bits: i64,

    /// Base seed for the key generators; 0 derives it from the clock (printed).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Nexts after each seek in seekrandom.
    #[arg(long, default_value_t = 0)]
    pub seek_nexts: u64,

    /// Fraction values compress to (values repeat a random run of this fraction);
    /// 1.0 gives incompressible values.
    #[arg(long, default_value_t = 0.5)]
    pub compression_ratio: f64,

    /// Block compression for every level.
    #[arg(long, value_enum, default_value_t = CompressionType::None)]
    pub compression_type: CompressionType,

    /// 1: print the engine's statistics after the last benchmark.
    #[arg(long, default_value = "0", num_args = 0..=1, default_missing_value = "1",
          value_parser = parse_flag_bool)]
    pub statistics: bool,

    /// Engine to drive (not a db_bench flag).
    #[arg(long, value_enum, default_value_t = Engine::Nokv)]
    pub engine: Engine,

    /// NoKV only (not a db_bench flag): 1 separates large values at commit (the WAL logs
    /// pointers), 0 at flush (`Options::vlog_on_write`).
    #[arg(long, default_value = "1", num_args = 0..=1, default_missing_value = "1",
          value_parser = parse_flag_bool)]
    pub vlog_on_write: bool,

    /// NoKV only (not a db_bench flag): `Options::vlog_gc_min_discard_ratio` (0 keeps the
    /// engine default).
    #[arg(long, default_value_t = 0.0)]
    pub vlog_gc_ratio: f64,

    /// NoKV only (not a db_bench flag): `Options::vlog_gc_space_amp` (0 keeps the engine
    /// default).
    #[arg(long, default_value_t = 0.0)]
    pub vlog_gc_space_amp: f64,

    /// NoKV only (not a db_bench flag): `Options::relaxed_sync_interval_bytes` for
    /// `--sync=0` (0 keeps the engine default).
    #[arg(long, default_value_t = 0)]
    pub relaxed_sync_bytes: u64,
}

impl DbBenchArgs {
    /// Read operations per thread.
    pub fn reads(&self) -> u64 {
        u64::try_from(self.reads).unwrap_or(self.num)
    }

    /// Write operations per thread.
    pub fn writes(&self) -> u64 {
        u64::try_from(self.writes).unwrap_or(self.num)
    }

    /// Operations per thread of readrandomwriterandom (db_bench's `readwrites_`).
    pub fn readwrites(&self) -> u64 {
        if self.writes < 0 && self.reads < 0 {
            self.num
        } else {
            self.writes.max(self.reads).max(0) as u64
        }
    }

    /// Key size in bytes.
    pub fn key_size(&self) -> usize {
        self.key_size as usize
    }

    /// Thread count.
    pub fn threads(&self) -> usize {
        self.threads as usize
    }

    /// Block cache bytes to configure (0 disables).
    pub fn cache_bytes(&self) -> usize {
        usize::try_from(self.cache_size.max(0)).unwrap_or(usize::MAX)
    }

    /// Bloom bits to configure, or None for the engine default.
    pub fn bloom_bits(&self) -> Option<usize> {
        usize::try_from(self.bloom_bits).ok()
    }

    /// The database directory.
    pub fn db_path(&self) -> PathBuf {
        match &self.db {
            Some(p) => p.clone(),
            None => {
                use std::os::unix::fs::MetadataExt;
                let uid = std::fs::metadata("/proc/self")
                    .map(|m| m.uid())
                    .unwrap_or(0);
                PathBuf::from(format!("/tmp/nokvtest-{uid}/dbbench"))
            }
        }
    }

    /// Checks values clap cannot check on its own.
    pub fn validate(&self) -> Result<()> {
        if self.num == 0 {
            return Err(BenchError::Flag("--num must be at least 1".into()));
        }
        if !(self.compression_ratio > 0.0 && self.compression_ratio <= 1.0) {
            return Err(BenchError::Flag(format!(
                "--compression_ratio must be in (0, 1], got {}",
                self.compression_ratio
            )));
        }
        if self.value_size > 64 << 20 {
            return Err(BenchError::Flag("--value_size above 64 MiB".into()));
        }
        for b in &self.benchmarks {
            let b = b.trim();
            if !b.is_empty() && !BENCHMARKS.contains(&b) {
                return Err(BenchError::UnknownBenchmark(b.to_string()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: DbBenchArgs,
    }

    fn parse(args: &[&str]) -> std::result::Result<DbBenchArgs, clap::Error> {
        T::try_parse_from(std::iter::once("t").chain(args.iter().copied())).map(|t| t.a)
    }

    #[test]
    fn defaults_match_db_bench() -> std::result::Result<(), clap::Error> {
        let a = parse(&[])?;
        assert_eq!(a.benchmarks, ["fillrandom", "readrandom"]);
        assert_eq!(a.num, 1_000_000);
        assert_eq!(a.reads(), 1_000_000);
        assert_eq!(a.writes(), 1_000_000);
        assert_eq!(a.readwrites(), 1_000_000);
        assert_eq!(a.value_size, 100);
        assert_eq!(a.key_size(), 16);
        assert_eq!(a.threads(), 1);
        assert!(!a.sync && !a.use_existing_db && !a.statistics);
        assert_eq!(a.cache_bytes(), 8 << 20);
        assert_eq!(a.write_buffer_size, 64 << 20);
        assert_eq!(a.bloom_bits(), None);
        assert_eq!(a.readwritepercent, 90);
        assert_eq!(a.seek_nexts, 0);
        assert_eq!(a.compression_ratio, 0.5);
        assert!(a.db_path().to_string_lossy().starts_with("/tmp/nokvtest-"));
        Ok(())
    }

    #[test]
    fn equals_syntax_and_lists() -> std::result::Result<(), clap::Error> {
        let a = parse(&[
            "--benchmarks=fillseq,overwrite,seekrandom",
            "--num=5000",
            "--reads=100",
            "--value_size=1000",
            "--key_size=20",
            "--threads=16",
            "--sync=1",
            "--db=/tmp/x",
            "--use_existing_db=0",
            "--cache_size=-1",
            "--write_buffer_size=1048576",
            "--bloom_bits=10",
            "--seed=42",
            "--seek_nexts=10",
            "--readwritepercent=50",
            "--compression_ratio=1.0",
            "--compression_type=none",
            "--statistics=true",
        ])?;
        assert_eq!(a.benchmarks, ["fillseq", "overwrite", "seekrandom"]);
        assert_eq!((a.num, a.reads(), a.writes()), (5000, 100, 5000));
        assert_eq!(a.readwrites(), 100);
        assert_eq!((a.value_size, a.key_size(), a.threads()), (1000, 20, 16));
        assert!(a.sync && !a.use_existing_db && a.statistics);
        assert_eq!(a.db_path(), PathBuf::from("/tmp/x"));
        assert_eq!(a.cache_bytes(), 0);
        assert_eq!(a.bloom_bits(), Some(10));
        assert_eq!((a.seed, a.seek_nexts, a.readwritepercent), (42, 10, 50));
        assert_eq!(a.compression_ratio, 1.0);
        a.validate()
            .map_err(|e| clap::Error::raw(clap::error::ErrorKind::ValueValidation, e))?;
        Ok(())
    }

    #[test]
    fn bools_like_gflags() -> std::result::Result<(), clap::Error> {
        assert!(parse(&["--sync"])?.sync);
        assert!(parse(&["--sync", "--num=3"])?.sync);
        assert!(!parse(&["--sync=false"])?.sync);
        assert!(parse(&["--use_existing_db=true"])?.use_existing_db);
        assert!(parse(&["--sync=2"]).is_err());
        assert!(parse(&["--readwritepercent=101"]).is_err());
        assert!(parse(&["--threads=0"]).is_err());
        assert!(parse(&["--key_size=0"]).is_err());
        assert!(parse(&["--no_such_flag=1"]).is_err());
        // Like gflags, a repeated flag takes its last value.
        assert_eq!(parse(&["--num=5", "--num=7"])?.num, 7);
        Ok(())
    }

    #[test]
    fn validation() -> std::result::Result<(), clap::Error> {
        assert!(matches!(
            parse(&["--benchmarks=fillrandom,nosuch"])?.validate(),
            Err(BenchError::UnknownBenchmark(b)) if b == "nosuch"
        ));
        assert!(parse(&["--num=0"])?.validate().is_err());
        assert!(parse(&["--compression_ratio=0"])?.validate().is_err());
        assert!(parse(&["--reads=-5", "--writes=7"])?.readwrites() == 7);
        Ok(())
    }
}

//! `nokv-bench ycsb` flags.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use crate::error::{BenchError, Result};

/// Engines the YCSB driver can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum YcsbEngine {
    /// The NoKV storage engine.
    Nokv,
    /// The `fjall` crate (the in-process anchor).
    Fjall,
    /// An in-memory BTreeMap (harness overhead and self-test).
    Mem,
}

impl YcsbEngine {
    /// Name used in result lines.
    pub fn name(self) -> &'static str {
        match self {
            YcsbEngine::Nokv => "nokv",
            YcsbEngine::Fjall => "fjall",
            YcsbEngine::Mem => "mem",
        }
    }
}

/// A YCSB core workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Workload {
    /// 50% read, 50% update, zipfian.
    A,
    /// 95% read, 5% update, zipfian.
    B,
    /// 100% read, zipfian.
    C,
    /// 95% read, 5% insert, latest.
    D,
    /// 95% scan, 5% insert, zipfian start key, uniform length.
    E,
    /// 50% read, 50% read-modify-write, zipfian.
    F,
}

/// Operation mix of a workload, in percent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mix {
    /// Point reads.
    pub read: u32,
    /// Updates of existing keys.
    pub update: u32,
    /// Inserts of new keys.
    pub insert: u32,
    /// Range scans.
    pub scan: u32,
    /// Read-modify-writes.
    pub rmw: u32,
}

impl Workload {
    /// The letter naming the workload.
    pub fn name(self) -> &'static str {
        match self {
            Workload::A => "A",
            Workload::B => "B",
            Workload::C => "C",
            Workload::D => "D",
            Workload::E => "E",
            Workload::F => "F",
        }
    }

    /// YCSB's operation proportions for this workload.
    pub fn mix(self) -> Mix {
        let m = Mix {
            read: 0,
            update: 0,
            insert: 0,
            scan: 0,
            rmw: 0,
        };
        match self {
            Workload::A => Mix {
                read: 50,
                update: 50,
                ..m
            },
            Workload::B => Mix {
                read: 95,
                update: 5,
                ..m
            },
            Workload::C => Mix { read: 100, ..m },
            Workload::D => Mix {
                read: 95,
                insert: 5,
                ..m
            },
            Workload::E => Mix {
                scan: 95,
                insert: 5,
                ..m
            },
            Workload::F => Mix {
                read: 50,
                rmw: 50,
                ..m
            },
        }
    }

    /// Reads follow the "latest" distribution (workload D) whatever `--distribution` says.
    pub fn uses_latest(self) -> bool {
        self == Workload::D
    }
}

/// Parses a workload letter (case-insensitive, optionally prefixed `workload`).
pub fn parse_workload(s: &str) -> std::result::Result<Workload, String> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_prefix("workload").unwrap_or(&t);
    Ok(match t {
        "a" => Workload::A,
        "b" => Workload::B,
        "c" => Workload::C,
        "d" => Workload::D,
        "e" => Workload::E,
        "f" => Workload::F,
        _ => return Err(format!("unknown workload '{s}' (expected A-F)")),
    })
}

/// Request distribution for reads, updates, scans and read-modify-writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Distribution {
    /// YCSB's scrambled zipfian over the key space.
    Zipfian,
    /// Uniform over the key space.
    Uniform,
}

fn parse_theta(s: &str) -> std::result::Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("not a number '{s}': {e}"))?;
    super::dist::check_theta(v)?;
    Ok(v)
}

/// Flags of `nokv-bench ycsb`.
#[derive(Debug, Clone, Args)]
#[command(
    args_override_self = true,
    after_help = "Per engine: load --records keys, settle (flush + wait for compaction), then run \
the workloads in the order given on the same data. D and E insert new keys, so the default order \
is YCSB's A,B,C,F,D,E. Keys: 'user' + FNV-hashed key number, zero-padded to 19 digits (YCSB \
hashed inserts). Values: one field of --value-size bytes.\n\
Result lines:\n  ycsb engine=E workload=W ops_per_sec=N p50_us=X p95_us=X p99_us=X [key=value ...]\n  \
ycsb ratio workload=W nokv_over_fjall=R   (ops/sec ratio, when both engines ran)"
)]
pub struct YcsbArgs {
    /// Comma-separated engines, run one after the other: nokv, fjall, mem.
    #[arg(long, value_delimiter = ',', value_enum, default_value = "nokv,fjall")]
    pub engines: Vec<YcsbEngine>,

    /// Comma-separated YCSB core workloads A-F, run in this order on the loaded data.
    #[arg(long, value_delimiter = ',', value_parser = parse_workload, default_value = "A,B,C,F,D,E")]
    pub workloads: Vec<Workload>,

    /// Records inserted by the load phase.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub records: u64,

    /// Operations of each workload (split between the threads).
    #[arg(long, default_value_t = 100_000)]
    pub operations: u64,

    /// Worker threads for the load and for each workload.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub threads: u64,

    /// Bytes per value (one field).
    #[arg(long, default_value_t = 1000)]
    pub value_size: usize,

    /// Directory for the databases (one subdirectory per engine, removed before the run).
    #[arg(long)]
    pub dir: PathBuf,

    /// Request distribution of A, B, C, E and F (D always uses "latest").
    #[arg(long, value_enum, default_value_t = Distribution::Zipfian)]
    pub distribution: Distribution,

    /// Zipfian constant (YCSB: 0.99; Go's rand.Zipf "s" needs > 1, e.g. 1.01).
    #[arg(long, default_value_t = super::dist::DEFAULT_THETA, value_parser = parse_theta)]
    pub zipf_theta: f64,

    /// Block cache bytes, both engines.
    #[arg(long, default_value_t = 64 << 20)]
    pub cache_bytes: u64,

    /// Memtable bytes, both engines.
    #[arg(long, default_value_t = 64 << 20, value_parser = clap::value_parser!(u64).range(1 << 20..))]
    pub write_buffer_bytes: u64,

    /// Every write waits for its WAL/journal fdatasync (otherwise: handed to the OS).
    #[arg(long)]
    pub sync: bool,

    /// Seed of the key choosers (thread i of workload w uses a seed derived from it).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,

    /// Longest scan of workload E (lengths are uniform in 1..=this).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_scan_len: u64,

    /// Keep the databases after the run (default: each engine's directory is removed).
    #[arg(long)]
    pub keep: bool,
}

impl YcsbArgs {
    /// Thread count.
    pub fn threads(&self) -> usize {
        self.threads as usize
    }

    /// Checks values clap cannot check on its own.
    pub fn validate(&self) -> Result<()> {
        if self.engines.is_empty() {
            return Err(BenchError::Flag("--engines is empty".into()));
        }
        if self.workloads.is_empty() {
            return Err(BenchError::Flag("--workloads is empty".into()));
        }
        let mut seen = Vec::new();
        for e in &self.engines {
            if seen.contains(e) {
                return Err(BenchError::Flag(format!(
                    "--engines names {} twice",
                    e.name()
                )));
            }
            seen.push(*e);
        }
        if self.value_size > 16 << 20 {
            return Err(BenchError::Flag("--value-size above 16 MiB".into()));
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
        a: YcsbArgs,
    }

    fn parse(args: &[&str]) -> std::result::Result<YcsbArgs, clap::Error> {
        T::try_parse_from(std::iter::once("t").chain(args.iter().copied())).map(|t| t.a)
    }

    #[test]
    fn defaults() -> std::result::Result<(), Box<dyn std::error::Error>> {
        let a = parse(&["--dir=/tmp/y"])?;
        assert_eq!(a.engines, [YcsbEngine::Nokv, YcsbEngine::Fjall]);
        use Workload::*;
        assert_eq!(a.workloads, [A, B, C, F, D, E]);
        assert_eq!(
            (a.records, a.operations, a.threads()),
            (100_000, 100_000, 1)
        );
        assert_eq!(a.value_size, 1000);
        assert_eq!(a.distribution, Distribution::Zipfian);
        assert_eq!(a.zipf_theta, 0.99);
        assert_eq!((a.cache_bytes, a.write_buffer_bytes), (64 << 20, 64 << 20));
        assert!(!a.sync && !a.keep);
        assert_eq!((a.seed, a.max_scan_len), (42, 100));
        a.validate()?;
        Ok(())
    }

    #[test]
    fn full_command_line() -> std::result::Result<(), Box<dyn std::error::Error>> {
        let a = parse(&[
            "--engines",
            "fjall,nokv",
            "--workloads",
            "a,workloadC,E",
            "--records",
            "5000",
            "--operations=7000",
            "--threads",
            "4",
            "--value-size",
            "100",
            "--dir",
            "/tmp/z",
            "--distribution",
            "uniform",
            "--zipf-theta",
            "1.01",
            "--cache-bytes",
            "1048576",
            "--write-buffer-bytes",
            "2097152",
            "--sync",
            "--seed",
            "9",
            "--max-scan-len",
            "10",
            "--keep",
        ])?;
        assert_eq!(a.engines, [YcsbEngine::Fjall, YcsbEngine::Nokv]);
        assert_eq!(a.workloads, [Workload::A, Workload::C, Workload::E]);
        assert_eq!((a.records, a.operations, a.threads()), (5000, 7000, 4));
        assert_eq!(a.value_size, 100);
        assert_eq!(a.dir, PathBuf::from("/tmp/z"));
        assert_eq!(a.distribution, Distribution::Uniform);
        assert_eq!(a.zipf_theta, 1.01);
        assert_eq!((a.cache_bytes, a.write_buffer_bytes), (1 << 20, 2 << 20));
        assert!(a.sync && a.keep);
        assert_eq!((a.seed, a.max_scan_len), (9, 10));
        a.validate()?;
        Ok(())
    }

    #[test]
    fn rejects_bad_values() -> std::result::Result<(), Box<dyn std::error::Error>> {
        for bad in [
            &["--dir=/x", "--workloads=G"][..],
            &["--dir=/x", "--engines=rocksdb"],
            &["--dir=/x", "--zipf-theta=1"],
            &["--dir=/x", "--zipf-theta=-0.5"],
            &["--dir=/x", "--zipf-theta=abc"],
            &["--dir=/x", "--records=0"],
            &["--dir=/x", "--threads=0"],
            &["--dir=/x", "--max-scan-len=0"],
            &["--dir=/x", "--distribution=latest"],
            &["--dir=/x", "--write-buffer-bytes=1000"],
            &["--records=10"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert!(parse(&["--dir=/x", "--engines=nokv,nokv"])?
            .validate()
            .is_err());
        assert!(parse(&["--dir=/x", "--value-size=100000000"])?
            .validate()
            .is_err());
        Ok(())
    }

    #[test]
    fn workload_mixes_add_up() {
        use Workload::*;
        for w in [A, B, C, D, E, F] {
            let m = w.mix();
            assert_eq!(m.read + m.update + m.insert + m.scan + m.rmw, 100, "{w:?}");
            assert_eq!(parse_workload(w.name()), Ok(w));
        }
        assert_eq!(E.mix().scan, 95);
        assert_eq!(F.mix().rmw, 50);
        assert!(D.uses_latest() && !A.uses_latest());
    }
}

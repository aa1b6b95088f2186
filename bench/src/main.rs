//! `nokv-bench`: NoKV benchmarks. `dbbench` mirrors RocksDB's db_bench (same flags, key
//! layout, value generator and result lines); `ycsb` runs the YCSB core workloads against
//! NoKV and fjall; `cluster` compares a NoKV cluster with an etcd cluster; `txn` measures
//! two-key transactions on a NoKV cluster against the same operations without one; `parse`
//! reads db_bench-format output; `plot` draws SVG charts of both.

mod cluster;
mod db;
mod error;
mod fjall_db;
mod flags;
mod gen;
mod nokv_db;
mod plot;
mod report;
mod runner;
mod txn;
mod ycsb;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::error::BenchError;

/// NoKV benchmark driver.
#[derive(Debug, Parser)]
#[command(name = "nokv-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run db_bench-compatible workloads against NoKV (flags use db_bench's names).
    Dbbench(flags::DbBenchArgs),
    /// Run the YCSB core workloads A-F against NoKV and fjall with the same settings.
    Ycsb(ycsb::flags::YcsbArgs),
    /// Drive a NoKV cluster (RESP, following -MOVED) and an etcd cluster (v3 JSON gateway)
    /// with the same closed-loop clients: put and get throughput and p50/p99 latency.
    Cluster(cluster::ClusterArgs),
    /// Two-key read-write transactions on a NoKV cluster (zipfian keys, on different stores
    /// when possible) against the same GETs and SETs without a transaction: txn/s, abort
    /// rate, latency, and the txn/plain throughput ratio.
    Txn(txn::TxnArgs),
    /// Parse db_bench or `nokv-bench dbbench` output (plus optional `time -v` output) into
    /// tab-separated lines: result, settle, write_amp, peak_rss_kib.
    Parse {
        /// Files holding one run's output; they are read as one text.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Draw an SVG bar chart of `ycsb` or db_bench-format output.
    Plot {
        #[command(subcommand)]
        kind: plot::PlotKind,
    },
}

/// mimalloc, the allocator `nokv-server` ships with, for every engine in this process
/// (NoKV and fjall alike; db_bench keeps its own build's allocator).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.command {
        Command::Dbbench(args) => runner::run(&args, &mut std::io::stdout().lock()),
        Command::Ycsb(args) => ycsb::run(&args, &mut std::io::stdout().lock()),
        Command::Cluster(args) => cluster::run(&args, &mut std::io::stdout().lock()),
        Command::Txn(args) => txn::run(&args, &mut std::io::stdout().lock()),
        Command::Parse { files } => parse_files(&files),
        Command::Plot { kind } => plot::run(&kind),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nokv-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse_files(files: &[PathBuf]) -> error::Result<()> {
    let mut text = String::new();
    for f in files {
        let bytes = std::fs::read(f).map_err(|e| BenchError::io("reading", f, e))?;
        text.push_str(&String::from_utf8_lossy(&bytes));
        text.push('\n');
    }
    print!("{}", report::render_tsv(&report::parse_output(&text)));
    Ok(())
}

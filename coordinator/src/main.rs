//! `nokv-coordinator`: the cluster's coordinator process, alone or as one of several replicas.

use clap::Parser;
use nokv_coordinator::{
    Config, Coordinator, ReplicaConfig, Server, ServerOptions, SystemClock, DEFAULT_ADDR,
};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// NoKV coordinator: registers stores and tracks their heartbeats, keeps the region catalog
/// and answers route lookups, places replicas on a (store, core), hands out hybrid
/// timestamps (TSO) and unique ids. All state lives in an embedded NoKV engine under
/// --workdir and survives restarts. Clients speak NoKV wire frames over TCP
/// (docs/coordinator.md). Runs alone, or as one of several replicas (--replica-id, --peers)
/// that elect a leader with raft. SIGTERM or SIGINT stops it cleanly.
#[derive(Debug, Parser)]
#[command(name = "nokv-coordinator", version)]
struct Args {
    /// Address to listen on for stores and clients (host:port).
    #[arg(long, default_value = DEFAULT_ADDR)]
    addr: String,
    /// Directory holding the coordinator's state (created if missing; one coordinator at a
    /// time, a second one on the same directory is refused).
    #[arg(long)]
    workdir: PathBuf,
    /// The cluster's id (non-zero). Frames of another cluster are refused, and a workdir
    /// created for another cluster will not open.
    #[arg(long)]
    cluster_id: u64,
    /// A store without a heartbeat for this long is considered down and gets no new
    /// replicas: a number with a unit, `ms`, `s` or `m` (e.g. 500ms, 30s, 2m; a bare number
    /// is seconds).
    #[arg(long, default_value = "30s", value_parser = nokv_coordinator::args::parse_duration)]
    store_down_after: Duration,
    /// The scheduler (`on` or `off`): re-creates the replicas of stores down longer than
    /// --store-down-after on other stores, and balances region leaders across stores.
    #[arg(long, default_value = "on", value_parser = parse_switch)]
    schedule: bool,
    /// How long a transaction may run (`nokv-client` transactions): the transaction GC
    /// safe point trails the wall clock by this much, and the stores' compactions collect
    /// old versions of transactional keys below it. A transaction older than this is
    /// refused (`TxnTooOld`) and runs again. A duration like --store-down-after; `off`
    /// keeps every version.
    #[arg(long, default_value = "10m", value_parser = parse_gc_life)]
    txn_gc_life: GcLife,
    /// Voters per region the scheduler keeps (0: as many as the cluster was bootstrapped
    /// with).
    #[arg(long, default_value_t = 0)]
    replicas: usize,
    /// Connections served at once; more are refused with a busy error.
    #[arg(long, default_value_t = 256)]
    max_connections: usize,
    /// Largest request frame payload accepted, in bytes; a larger frame drops its connection.
    #[arg(long, default_value_t = 4 << 20)]
    max_frame_bytes: u32,
    /// Replicated mode: this replica's id, 1..=N, its address being the N-th of --peers.
    /// 0 (default): a single coordinator process.
    #[arg(long, default_value_t = 0)]
    replica_id: u64,
    /// Replicated mode: every replica's address (host:port, comma-separated, replica 1
    /// first), the same list on every replica. Replicas elect a leader with raft; only the
    /// leader serves, the others answer with its address.
    #[arg(long, value_delimiter = ',')]
    peers: Vec<String>,
}

/// `--txn-gc-life`: a duration, or `off` (None).
#[derive(Clone, Copy, Debug)]
struct GcLife(Option<Duration>);

fn parse_gc_life(s: &str) -> Result<GcLife, String> {
    if s.trim().eq_ignore_ascii_case("off") {
        return Ok(GcLife(None));
    }
    match nokv_coordinator::args::parse_duration(s)? {
        d if d.is_zero() => Err("--txn-gc-life must be above 0 (or `off`)".into()),
        d => Ok(GcLife(Some(d))),
    }
}

fn parse_switch(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(format!("`{s}` is not on or off")),
    }
}

fn init_logging() {
    let level = nokv_raft::logger::level_from_env();
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_thread_names(true)
        .with_writer(std::io::stderr)
        .init();
}

fn run(args: Args) -> Result<(), String> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| format!("cannot install the signal handler: {e}"))?;
    }
    let config = Config {
        workdir: args.workdir.clone(),
        cluster_id: args.cluster_id,
        store_down_after: args.store_down_after,
        txn_gc_life: args.txn_gc_life.0,
        clock: Arc::new(SystemClock::new()),
        scheduler: nokv_coordinator::scheduler::Options {
            enabled: args.schedule,
            replicas: args.replicas,
            ..Default::default()
        },
        replica: match (args.replica_id, args.peers.is_empty()) {
            (0, true) => None,
            (0, false) => return Err("--peers needs --replica-id".into()),
            (_, true) => return Err("--replica-id needs --peers".into()),
            (id, false) => Some(ReplicaConfig::new(id, args.peers.clone())),
        },
    };
    let coord = Arc::new(Coordinator::open(config).map_err(|e| e.to_string())?);
    let opts = ServerOptions {
        max_connections: args.max_connections.max(1),
        max_frame_bytes: args.max_frame_bytes,
        ..ServerOptions::default()
    };
    let server = Server::start(coord.clone(), &args.addr, opts).map_err(|e| e.to_string())?;
    tracing::info!(addr = %server.local_addr(), workdir = %args.workdir.display(), cluster_id = args.cluster_id, "coordinator serving");
    println!("nokv-coordinator listening on {}", server.local_addr());
    // Bounded by the signal: polls the flag.
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
    }
    tracing::info!("signal received, shutting down");
    server.shutdown();
    match Arc::try_unwrap(coord) {
        Ok(c) => c.close().map_err(|e| e.to_string())?,
        Err(c) => {
            if let Some(r) = c.replica() {
                r.stop();
            }
            tracing::warn!("connections still running; state closed by the exit")
        }
    }
    tracing::info!("coordinator stopped");
    Ok(())
}

fn main() {
    let args = Args::parse();
    init_logging();
    if let Err(e) = run(args) {
        tracing::error!("{e}");
        eprintln!("nokv-coordinator: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches_parse() {
        assert_eq!(parse_switch("on"), Ok(true));
        assert_eq!(parse_switch("OFF"), Ok(false));
        assert!(parse_switch("maybe").is_err());
    }
}

//! Command-line flags, the optional TOML config file (`--config FILE`), and the
//! settings they resolve to. Flags override the file; the file overrides defaults.

use crate::error::{Error, Result};
use clap::Parser;
use nokv::Durability;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// Command-line flags of `nokv-server`.
#[derive(Debug, Parser)]
#[command(
    name = "nokv-server",
    version,
    about = "NoKV node: a Redis-protocol key-value server, one pinned executor per core",
    long_about = "NoKV node: a Redis-protocol key-value server.\n\n\
        Each core runs one pinned glommio executor that owns its regions (Raft groups), \
        its own storage engine under <workdir>/core-<n>/, and its share of client \
        connections. Standalone, an empty workdir is bootstrapped with the Redis \
        hash-slot space pre-split into single-replica regions spread over the cores; a \
        restart recovers that layout from the workdir.\n\n\
        With --rpc-addr the store also listens for raft messages from other stores of its \
        cluster (--cluster-id) on that address, on every core. With --coordinator it \
        joins a cluster: it registers, the cluster is bootstrapped once --bootstrap-replicas \
        stores are up, every region is replicated on that many stores, and any store \
        answers any command: a region led by another store gets its part of the command \
        forwarded there (--redirect forward), or the client is sent there with \
        -MOVED <slot> <leader host:port> (--redirect moved, for cluster-aware clients; \
        redis-cli -c follows it).\n\n\
        Example: nokv-server --workdir ./data   then   redis-cli -p 6380 set hello world"
)]
pub struct Flags {
    /// Data directory (created if missing; locked while the server runs). Required, here or in the config file.
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// Redis protocol listen address [default: 127.0.0.1:6380]. Port 0 picks a free port.
    #[arg(long)]
    pub redis_addr: Option<String>,
    /// Number of cores (executors) [default: all CPUs; on restart, what the workdir was made with].
    #[arg(long)]
    pub cores: Option<usize>,
    /// CPUs to pin the executors to, e.g. "0-3" or "0,2,4" [default: every CPU]; core n uses the n-th, round-robin.
    #[arg(long)]
    pub cpus: Option<String>,
    /// sync: acknowledge after fdatasync (default); relaxed: after write(2), a power loss may lose recent writes.
    #[arg(long)]
    pub durability: Option<String>,
    /// TOML config file: keys are the flags' names in snake_case (`redis_addr = "127.0.0.1:6380"`, `cores = 4`, `memory_limit = "2GiB"`); flags override it. Sample: deploy/nokv-server.toml.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Most client connections over all cores [default: 10000].
    #[arg(long)]
    pub max_clients: Option<usize>,
    /// Largest bulk argument accepted from clients, in bytes or with a unit (1MiB) [default: 16MiB, the engine's largest value].
    #[arg(long, value_name = "BYTES")]
    pub max_bulk_bytes: Option<String>,
    /// Password clients must AUTH with [default: none].
    #[arg(long)]
    pub requirepass: Option<String>,
    /// A named user, NAME:PASSWORD (every command) or NAME:PASSWORD:readonly (no writes, no NOKV.* administration); repeat for more users. Clients log in with AUTH NAME PASSWORD. With users and no --requirepass the default user is off (every client must AUTH) [default: none].
    #[arg(long = "user", value_name = "NAME:PASSWORD[:readonly]")]
    pub users: Vec<String>,
    /// Serve the Redis port over TLS only (1.2 and 1.3) with this PEM certificate chain; needs --tls-key-file [default: off: plain TCP].
    #[arg(long, value_name = "FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// The PEM private key of --tls-cert-file.
    #[arg(long, value_name = "FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// Store-to-store traffic on the RPC port over mutual TLS (1.2 and 1.3), in and out: this store presents --tls-cert-file as server and as client and accepts only peers whose certificate chains to --tls-ca-cert-file (needs both) [default: off: plain TCP].
    #[arg(long)]
    pub tls_cluster: bool,
    /// The PEM CA certificate(s) the other stores' certificates must chain to (--tls-cluster); also checks their Redis ports for consistency queries.
    #[arg(long, value_name = "FILE")]
    pub tls_ca_cert_file: Option<PathBuf>,
    /// The name (DNS name or IP address) the other stores' certificates must carry (--tls-cluster) [default: the IP address of each store's RPC address, as the cluster's directory has it: put it in the certificate's subjectAltName].
    #[arg(long, value_name = "NAME")]
    pub tls_peer_name: Option<String>,
    /// Protected mode, as Redis': without --requirepass, clients connecting from anywhere but the loopback interface get -DENIED and are disconnected. "yes" or "no" [default: yes]. A cluster across hosts needs --requirepass (or "no" on a trusted network): stores also query each other's Redis ports.
    #[arg(long, value_name = "yes|no")]
    pub protected_mode: Option<String>,
    /// Serve Prometheus metrics (GET /metrics) on this address, e.g. 127.0.0.1:9180 [default: off]. Port 0 picks a free port.
    #[arg(long)]
    pub metrics_addr: Option<String>,
    /// Memory quota of this store, e.g. 512MiB or 2GiB, split into engine memtables, block caches and client buffers [default: 1GiB, at least 128MiB per core].
    #[arg(long, value_name = "BYTES")]
    pub memory_limit: Option<String>,
    /// Most reply bytes one client may have pending before it is disconnected, e.g. 64MiB; 0: only the store's client share applies [default: 64MiB].
    #[arg(long, value_name = "BYTES")]
    pub client_output_buffer_limit: Option<String>,
    /// A region whose data (in SST files) grows past this size is split in two at the hash slot that halves it, e.g. 96MiB; 0: no size splits [default: 96MiB].
    #[arg(long, value_name = "BYTES")]
    pub region_max_bytes: Option<String>,
    /// How often each core checks the sizes of the regions it leads, milliseconds [default: 10000].
    #[arg(long, value_name = "MS")]
    pub split_check_ms: Option<u64>,
    /// A region its leader served more requests per second than this (over the last --split-check-ms) is split at the median slot of its sampled keys; 0: no splits by request rate [default: 3000].
    #[arg(long, value_name = "N")]
    pub split_load_qps: Option<u64>,
    /// A region written faster than this many bytes per second is split the same way, e.g. 30MiB; 0: no splits by write rate [default: 30MiB].
    #[arg(long, value_name = "BYTES")]
    pub split_load_bytes: Option<String>,
    /// Two adjacent regions led by one core (in a cluster: with their replicas on the same stores and cores) whose data together is below this size (and below half --region-max-bytes) and that each served fewer than --merge-max-qps requests per second merge, at most one merge per core and --split-check-ms, while the core leads more than 4 regions; 0: no automatic merges [default: 20MiB].
    #[arg(long, value_name = "BYTES")]
    pub merge_max_bytes: Option<String>,
    /// Request rate below which a region counts as cold for --merge-max-bytes [default: 100].
    #[arg(long, value_name = "N")]
    pub merge_max_qps: Option<u64>,
    /// Most bytes per second this store sends in region snapshots to other stores (one limit shared by its cores: disk reads and network), e.g. 100MiB; 0: no limit [default: 100MiB].
    #[arg(long, value_name = "BYTES")]
    pub snapshot_max_bytes_per_sec: Option<String>,
    /// Move regions (in a cluster: the replicas this store leads) from a core serving more than 1.25x the cores' mean request rate to the least busy core, at most one move per --split-check-ms: "on" or "off" [default: on].
    #[arg(long, value_name = "on|off")]
    pub balance_cores: Option<String>,
    /// Internal RPC address for raft messages between stores, e.g. 127.0.0.1:7380 [default: off: a single store, no store-to-store port]. Every core listens on it (SO_REUSEPORT); port 0 picks a free port.
    #[arg(long)]
    pub rpc_addr: Option<String>,
    /// Cluster id: frames between stores carry it, and frames of another cluster are refused on the RPC port [default: 1].
    #[arg(long)]
    pub cluster_id: Option<u64>,
    /// Nice value (-20..=19) of each engine's flush, compaction and value-log GC threads, which also get the lowest best-effort IO priority; never raises a thread's priority [default: 10].
    #[arg(long, value_name = "NICE", allow_negative_numbers = true)]
    pub background_nice: Option<i32>,
    /// Coordinator address(es), comma-separated, e.g. 127.0.0.1:2390 [default: off: a standalone store with single-replica regions]. With it the store registers (its id is kept in <workdir>/STORE), heartbeats, and gets its regions from the cluster's bootstrap; needs --rpc-addr.
    #[arg(long, value_name = "ADDR[,ADDR...]")]
    pub coordinator: Option<String>,
    /// Replicas of each region when this store bootstraps the cluster; it does so once that many stores are registered [default: 3].
    #[arg(long, value_name = "N")]
    pub bootstrap_replicas: Option<u32>,
    /// In a cluster, a command for a region led by another store: "forward" runs it there and relays the reply; "moved" answers -MOVED <slot> <leader host:port> (Redis Cluster clients follow it) [default: forward].
    #[arg(long, value_name = "forward|moved")]
    pub redirect: Option<String>,
    /// In a cluster, how long a command may wait for its region's leader (an election, a store that is down) before it gets -TRYAGAIN or -CLUSTERDOWN, milliseconds [default: 5000].
    #[arg(long, value_name = "MS")]
    pub request_timeout_ms: Option<u64>,
    /// In a cluster, labels registered with the coordinator, e.g. host=h1,zone=z1: no two replicas of a region go to stores with the same `host` label [default: none].
    #[arg(long, value_name = "KEY=VALUE[,...]")]
    pub labels: Option<String>,
}

/// Regions each core gets when an empty workdir is bootstrapped.
pub const REGIONS_PER_CORE: usize = 4;

/// Resolved settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Data directory.
    pub workdir: PathBuf,
    /// Redis listen address.
    pub redis_addr: String,
    /// Cores asked for (None: the workdir's, or all CPUs).
    pub cores: Option<usize>,
    /// CPU list to pin to.
    pub cpus: Option<Vec<usize>>,
    /// Durability of acknowledged writes.
    pub durability: Durability,
    /// Connection limit.
    pub max_clients: usize,
    /// Bulk argument limit.
    pub max_bulk_bytes: usize,
    /// AUTH password.
    pub requirepass: Option<String>,
    /// TLS on the Redis port: (certificate chain, private key), PEM files.
    pub tls_cert_file: Option<PathBuf>,
    /// The private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// Mutual TLS on the RPC port (`--tls-cluster`): the CA file the peers' certificates
    /// chain to (None: plain TCP).
    pub tls_cluster_ca: Option<PathBuf>,
    /// The name peers' certificates carry (`--tls-peer-name`; None: their address's host).
    pub tls_peer_name: Option<String>,
    /// Named users (`--user`).
    pub users: Vec<nokv_gateway::session::User>,
    /// Without a password, refuse clients not on the loopback interface (`--protected-mode`).
    pub protected_mode: bool,
    /// Prometheus endpoint address (None: off).
    pub metrics_addr: Option<String>,
    /// The store's memory quota in bytes (None: the default for the core count).
    pub memory_limit: Option<u64>,
    /// Per-client output buffer limit in bytes (0: none besides the client share).
    pub client_output_buffer_limit: u64,
    /// Split a region whose data grows past this many bytes (0: never by size).
    pub region_max_bytes: u64,
    /// How often the regions' sizes are checked.
    pub split_check: std::time::Duration,
    /// Split a region served more requests per second than this (0: never by rate).
    pub split_load_qps: u64,
    /// Split a region written more bytes per second than this (0: never by rate).
    pub split_load_bytes: u64,
    /// Merge adjacent cold regions whose data together is below this (0: never).
    pub merge_max_bytes: u64,
    /// A region serving fewer requests per second than this is cold (merges).
    pub merge_max_qps: u64,
    /// Most snapshot bytes sent per second (0: no limit).
    pub snapshot_max_bytes_per_sec: u64,
    /// Move regions from busy cores to idle ones.
    pub balance_cores: bool,
    /// Nice value of the engines' background threads (`nokv::Options::background_nice`).
    pub background_nice: i32,
    /// Store-to-store RPC address (None: off, a single store).
    pub rpc_addr: Option<String>,
    /// The cluster id frames between stores carry.
    pub cluster_id: u64,
    /// Coordinator endpoints (empty: a standalone store).
    pub coordinator: Vec<String>,
    /// Replicas per region when this store bootstraps the cluster.
    pub bootstrap_replicas: u32,
    /// In a cluster: forward commands for regions led elsewhere (false: answer -MOVED).
    pub forward: bool,
    /// In a cluster: how long a command may wait for its region's leader.
    pub request_timeout: std::time::Duration,
    /// Labels registered with the coordinator (`host` keeps replicas apart).
    pub labels: std::collections::BTreeMap<String, String>,
}

/// Default of `--request-timeout-ms`.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 5000;

/// Default replicas per region at a cluster's bootstrap.
pub const DEFAULT_BOOTSTRAP_REPLICAS: u32 = 3;

/// Default cluster id.
pub const DEFAULT_CLUSTER_ID: u64 = 1;

/// Default nice value of the engines' flush, compaction and GC threads.
pub const DEFAULT_BACKGROUND_NICE: i32 = 10;

/// Default of `--region-max-bytes`.
pub const DEFAULT_REGION_MAX_BYTES: u64 = 96 << 20;

/// Default of `--snapshot-max-bytes-per-sec` (TiKV's `snap-io-max-bytes-per-sec`).
pub const DEFAULT_SNAPSHOT_MAX_BYTES_PER_SEC: u64 = 100 << 20;

/// Default of `--split-check-ms`.
pub const DEFAULT_SPLIT_CHECK_MS: u64 = 10_000;

/// Default of `--split-load-qps`.
pub const DEFAULT_SPLIT_LOAD_QPS: u64 = 3000;

/// Default of `--split-load-bytes`.
pub const DEFAULT_SPLIT_LOAD_BYTES: u64 = 30 << 20;

/// Default of `--merge-max-bytes`.
pub const DEFAULT_MERGE_MAX_BYTES: u64 = 20 << 20;

/// Default of `--merge-max-qps`.
pub const DEFAULT_MERGE_MAX_QPS: u64 = 100;

/// Default per-client output buffer limit.
pub const DEFAULT_CLIENT_OUTPUT_BUFFER_LIMIT: u64 = 64 << 20;

/// Parses a byte size: a number with an optional unit. Redis's units: `k`, `m`, `g` are
/// powers of 1000 and `kb`, `mb`, `gb` powers of 1024; `KiB`, `MiB`, `GiB`, `TiB` are
/// powers of 1024 too. Case and a space before the unit do not matter.
pub fn parse_bytes(name: &str, v: &str) -> Result<u64> {
    parse_size(v).map_err(|e| Error::Config(format!("{name}: {e}")))
}

/// [`parse_bytes`] without the name: the error says what was wrong.
fn parse_size(v: &str) -> std::result::Result<u64, String> {
    let bad = || format!("{v:?} is not a byte size (examples: 1048576, 512MiB, 2GiB, 64mb)");
    let t = v.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" => 1_000,
        "m" => 1_000_000,
        "g" => 1_000_000_000,
        "kb" | "kib" => 1 << 10,
        "mb" | "mib" => 1 << 20,
        "gb" | "gib" => 1 << 30,
        "tib" | "tb" => 1 << 40,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(bad)
}

/// Parses "0-3,6" into CPU numbers.
pub fn parse_cpus(s: &str) -> Result<Vec<usize>> {
    let bad = || Error::Config(format!("--cpus {s:?}: expected a list like 0-3,6"));
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let a: usize = a.trim().parse().map_err(|_| bad())?;
                let b: usize = b.trim().parse().map_err(|_| bad())?;
                if a > b || b - a > 4096 {
                    return Err(bad());
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().map_err(|_| bad())?),
        }
    }
    if out.is_empty() {
        return Err(bad());
    }
    Ok(out)
}

/// A byte size in the config file: an integer, or a string with a unit (`"512MiB"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<ByteSize, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte size: an integer or a string such as \"512MiB\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("{v} is negative, expected a byte size")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<ByteSize, E> {
                parse_size(v).map(ByteSize).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// The config file's keys: the flags' names in snake_case, each with its TOML type.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// `--workdir`.
    pub workdir: Option<Spanned<PathBuf>>,
    /// `--redis-addr`.
    pub redis_addr: Option<Spanned<String>>,
    /// `--cores`.
    pub cores: Option<Spanned<usize>>,
    /// `--cpus`, as the flag's string ("0-3,6").
    pub cpus: Option<Spanned<String>>,
    /// `--durability`: "sync" or "relaxed".
    pub durability: Option<Spanned<String>>,
    /// `--max-clients`.
    pub max_clients: Option<Spanned<usize>>,
    /// `--max-bulk-bytes`.
    pub max_bulk_bytes: Option<Spanned<ByteSize>>,
    /// `--requirepass`.
    pub requirepass: Option<Spanned<String>>,
    /// `--tls-cert-file`.
    pub tls_cert_file: Option<Spanned<PathBuf>>,
    /// `--tls-key-file`.
    pub tls_key_file: Option<Spanned<PathBuf>>,
    /// `--tls-cluster`.
    pub tls_cluster: Option<Spanned<bool>>,
    /// `--tls-ca-cert-file`.
    pub tls_ca_cert_file: Option<Spanned<PathBuf>>,
    /// `--tls-peer-name`.
    pub tls_peer_name: Option<Spanned<String>>,
    /// `--user` (a list).
    pub users: Option<Spanned<Vec<String>>>,
    /// `--protected-mode`: "yes" or "no".
    pub protected_mode: Option<Spanned<String>>,
    /// `--metrics-addr` ("" or "off": no endpoint).
    pub metrics_addr: Option<Spanned<String>>,
    /// `--memory-limit`.
    pub memory_limit: Option<Spanned<ByteSize>>,
    /// `--client-output-buffer-limit`.
    pub client_output_buffer_limit: Option<Spanned<ByteSize>>,
    /// `--region-max-bytes`.
    pub region_max_bytes: Option<Spanned<ByteSize>>,
    /// `--split-check-ms`.
    pub split_check_ms: Option<Spanned<u64>>,
    /// `--split-load-qps`.
    pub split_load_qps: Option<Spanned<u64>>,
    /// `--split-load-bytes`.
    pub split_load_bytes: Option<Spanned<ByteSize>>,
    /// `--merge-max-bytes`.
    pub merge_max_bytes: Option<Spanned<ByteSize>>,
    /// `--merge-max-qps`.
    pub merge_max_qps: Option<Spanned<u64>>,
    /// `--snapshot-max-bytes-per-sec`.
    pub snapshot_max_bytes_per_sec: Option<Spanned<ByteSize>>,
    /// `--balance-cores`: "on" or "off".
    pub balance_cores: Option<Spanned<String>>,
    /// `--background-nice`.
    pub background_nice: Option<Spanned<i32>>,
    /// `--rpc-addr` ("" or "off": no RPC port).
    pub rpc_addr: Option<Spanned<String>>,
    /// `--cluster-id`.
    pub cluster_id: Option<Spanned<u64>>,
    /// `--coordinator`, as the flag's string ("host:port,host:port"; "" or "off": none).
    pub coordinator: Option<Spanned<String>>,
    /// `--bootstrap-replicas`.
    pub bootstrap_replicas: Option<Spanned<u32>>,
    /// `--redirect`: "forward" or "moved".
    pub redirect: Option<Spanned<String>>,
    /// `--request-timeout-ms`.
    pub request_timeout_ms: Option<Spanned<u64>>,
    /// `--labels`: "key=value,key=value".
    pub labels: Option<Spanned<String>>,
}

/// `key=value,key=value` (empty: none): keys and values of 1..=64 bytes of ASCII letters,
/// digits, `-`, `_`, `.`, each key once, at most 16 (the coordinator's bounds).
pub fn parse_labels(
    s: &str,
) -> std::result::Result<std::collections::BTreeMap<String, String>, String> {
    let ok = |s: &str| {
        (1..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    let mut out = std::collections::BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            return Err(format!("{part:?}: expected key=value"));
        };
        let (k, v) = (k.trim(), v.trim());
        if !ok(k) || !ok(v) {
            return Err(format!(
                "{part:?}: keys and values are 1..=64 bytes of letters, digits, '-', '_', '.'"
            ));
        }
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(format!("label {k:?} given twice"));
        }
    }
    if out.len() > 16 {
        return Err(format!("at most 16 labels, {} given", out.len()));
    }
    Ok(out)
}

/// The 1-based line of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The key assigned on the line holding byte offset `at` (the text before `=`).
fn key_at(text: &str, at: usize) -> Option<String> {
    let at = at.min(text.len());
    let start = text.get(..at)?.rfind('\n').map_or(0, |i| i + 1);
    let end = text.get(at..)?.find('\n').map_or(text.len(), |i| at + i);
    let (key, _) = text.get(start..end)?.split_once('=')?;
    let key = key.trim().trim_matches('"').trim();
    (!key.is_empty()).then(|| key.to_string())
}

impl ConfigFile {
    /// Parses the TOML text of `path`; errors name the file, the line and the key.
    pub fn parse(path: &Path, text: &str) -> Result<ConfigFile> {
        toml::from_str(text).map_err(|e| {
            let at = e.span().map(|s| s.start);
            let mut detail = e.message().trim().to_string();
            if let Some(key) = at.and_then(|at| key_at(text, at)) {
                if !detail.contains(&format!("`{key}`")) {
                    detail = format!("key `{key}`: {detail}");
                }
                if key.contains('-') && detail.contains("unknown field") {
                    detail.push_str(&format!(
                        " (keys are snake_case: `{}`)",
                        key.replace('-', "_")
                    ));
                }
            }
            Error::ConfigFile {
                path: path.to_path_buf(),
                line: at.map(|at| line_of(text, at)),
                detail,
            }
        })
    }
}

/// Where a value came from, for error messages.
enum Origin<'a> {
    Default,
    Flag,
    File {
        path: &'a Path,
        text: &'a str,
        at: usize,
    },
}

impl Origin<'_> {
    /// An error about key `key` (its flag is `--` and the key with dashes).
    fn error(&self, key: &str, detail: String) -> Error {
        match self {
            Origin::Default | Origin::Flag => {
                Error::Config(format!("--{}: {detail}", key.replace('_', "-")))
            }
            Origin::File { path, text, at } => Error::ConfigFile {
                path: path.to_path_buf(),
                line: Some(line_of(text, *at)),
                detail: format!("key `{key}`: {detail}"),
            },
        }
    }
}

/// The flag's value, else the file's (with where it came from).
fn pick<'a, T>(
    flag: Option<T>,
    file: Option<Spanned<T>>,
    path: &'a Path,
    text: &'a str,
) -> Option<(T, Origin<'a>)> {
    match (flag, file) {
        (Some(v), _) => Some((v, Origin::Flag)),
        (None, Some(s)) => {
            let at = s.span().start;
            Some((s.into_inner(), Origin::File { path, text, at }))
        }
        (None, None) => None,
    }
}

/// A byte size from a flag (checked by [`parse_bytes`]).
fn flag_bytes(key: &str, v: Option<String>) -> Result<Option<ByteSize>> {
    v.map(|v| parse_bytes(&format!("--{}", key.replace('_', "-")), &v).map(ByteSize))
        .transpose()
}

impl Settings {
    /// Resolves flags over the config file over defaults.
    pub fn resolve(flags: Flags) -> Result<Settings> {
        let (file, path, text) = match &flags.config {
            None => (ConfigFile::default(), PathBuf::new(), String::new()),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| Error::Io {
                    op: "read config",
                    path: p.clone(),
                    source,
                })?;
                (ConfigFile::parse(p, &text)?, p.clone(), text)
            }
        };
        let (path, text) = (path.as_path(), text.as_str());
        let workdir = pick(flags.workdir, file.workdir, path, text)
            .map(|(w, _)| w)
            .ok_or_else(|| {
                Error::Config(
                    "--workdir is required (a flag or `workdir` in the config file)".into(),
                )
            })?;
        let cores = match pick(flags.cores, file.cores, path, text) {
            Some((0, origin)) => return Err(origin.error("cores", "must be at least 1".into())),
            Some((n, _)) => Some(n),
            None => None,
        };
        let cpus = pick(flags.cpus, file.cpus, path, text)
            .map(|(s, origin)| {
                parse_cpus(&s).map_err(|_| {
                    origin.error("cpus", format!("{s:?}: expected a list like \"0-3,6\""))
                })
            })
            .transpose()?;
        let (durability, origin) = pick(flags.durability, file.durability, path, text)
            .unwrap_or_else(|| ("sync".to_string(), Origin::Default));
        let durability = match durability.as_str() {
            "sync" => Durability::Sync,
            "relaxed" => Durability::Relaxed,
            other => {
                return Err(
                    origin.error("durability", format!("{other:?}: expected sync or relaxed"))
                )
            }
        };
        let (max_clients, origin) = pick(flags.max_clients, file.max_clients, path, text)
            .unwrap_or((10_000, Origin::Default));
        if max_clients == 0 {
            return Err(origin.error("max_clients", "must be at least 1".into()));
        }
        let (max_bulk_bytes, origin) = pick(
            flag_bytes("max_bulk_bytes", flags.max_bulk_bytes)?,
            file.max_bulk_bytes,
            path,
            text,
        )
        .unwrap_or((ByteSize(16 << 20), Origin::Default));
        let max_bulk_bytes = usize::try_from(max_bulk_bytes.0).unwrap_or(usize::MAX);
        if max_bulk_bytes == 0 {
            return Err(origin.error("max_bulk_bytes", "must be at least 1".into()));
        }
        let memory_limit = pick(
            flag_bytes("memory_limit", flags.memory_limit)?,
            file.memory_limit,
            path,
            text,
        )
        .map(|(b, _)| b.0);
        let client_output_buffer_limit = pick(
            flag_bytes(
                "client_output_buffer_limit",
                flags.client_output_buffer_limit,
            )?,
            file.client_output_buffer_limit,
            path,
            text,
        )
        .map_or(DEFAULT_CLIENT_OUTPUT_BUFFER_LIMIT, |(b, _)| b.0);
        let region_max_bytes = pick(
            flag_bytes("region_max_bytes", flags.region_max_bytes)?,
            file.region_max_bytes,
            path,
            text,
        )
        .map_or(DEFAULT_REGION_MAX_BYTES, |(b, _)| b.0);
        let (split_check_ms, origin) = pick(flags.split_check_ms, file.split_check_ms, path, text)
            .unwrap_or((DEFAULT_SPLIT_CHECK_MS, Origin::Default));
        if !(50..=3_600_000).contains(&split_check_ms) {
            return Err(origin.error(
                "split_check_ms",
                format!("{split_check_ms}: expected 50..=3600000"),
            ));
        }
        let split_load_qps = pick(flags.split_load_qps, file.split_load_qps, path, text)
            .map_or(DEFAULT_SPLIT_LOAD_QPS, |(n, _)| n);
        let split_load_bytes = pick(
            flag_bytes("split_load_bytes", flags.split_load_bytes)?,
            file.split_load_bytes,
            path,
            text,
        )
        .map_or(DEFAULT_SPLIT_LOAD_BYTES, |(b, _)| b.0);
        let merge_max_bytes = pick(
            flag_bytes("merge_max_bytes", flags.merge_max_bytes)?,
            file.merge_max_bytes,
            path,
            text,
        )
        .map_or(DEFAULT_MERGE_MAX_BYTES, |(b, _)| b.0);
        let merge_max_qps = pick(flags.merge_max_qps, file.merge_max_qps, path, text)
            .map_or(DEFAULT_MERGE_MAX_QPS, |(n, _)| n);
        let snapshot_max_bytes_per_sec = pick(
            flag_bytes(
                "snapshot_max_bytes_per_sec",
                flags.snapshot_max_bytes_per_sec,
            )?,
            file.snapshot_max_bytes_per_sec,
            path,
            text,
        )
        .map_or(DEFAULT_SNAPSHOT_MAX_BYTES_PER_SEC, |(b, _)| b.0);
        let (protected_mode, origin) = pick(flags.protected_mode, file.protected_mode, path, text)
            .unwrap_or_else(|| ("yes".to_string(), Origin::Default));
        let protected_mode = match protected_mode.as_str() {
            "yes" => true,
            "no" => false,
            other => {
                return Err(origin.error("protected_mode", format!("{other:?}: expected yes or no")))
            }
        };
        let (balance_cores, origin) = pick(flags.balance_cores, file.balance_cores, path, text)
            .unwrap_or_else(|| ("on".to_string(), Origin::Default));
        let balance_cores = match balance_cores.as_str() {
            "on" => true,
            "off" => false,
            other => {
                return Err(origin.error("balance_cores", format!("{other:?}: expected on or off")))
            }
        };
        let metrics_addr = pick(flags.metrics_addr, file.metrics_addr, path, text)
            .map(|(a, _)| a)
            .filter(|a| !a.is_empty() && a != "off");
        let (background_nice, origin) =
            pick(flags.background_nice, file.background_nice, path, text)
                .unwrap_or((DEFAULT_BACKGROUND_NICE, Origin::Default));
        if !(-20..=19).contains(&background_nice) {
            return Err(origin.error(
                "background_nice",
                format!("{background_nice}: expected a nice value in -20..=19"),
            ));
        }
        let rpc_addr = pick(flags.rpc_addr, file.rpc_addr, path, text)
            .map(|(a, _)| a)
            .filter(|a| !a.is_empty() && a != "off");
        let (cluster_id, origin) = pick(flags.cluster_id, file.cluster_id, path, text)
            .unwrap_or((DEFAULT_CLUSTER_ID, Origin::Default));
        if cluster_id == 0 {
            return Err(origin.error("cluster_id", "must be at least 1".into()));
        }
        let coordinator: Vec<String> = pick(flags.coordinator, file.coordinator, path, text)
            .map(|(a, _)| a)
            .filter(|a| a != "off")
            .map(|a| {
                a.split(',')
                    .map(str::trim)
                    .filter(|e| !e.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        if !coordinator.is_empty() && rpc_addr.is_none() {
            return Err(Error::Config(
                "--coordinator needs --rpc-addr: the other stores reach this one there".into(),
            ));
        }
        let (bootstrap_replicas, origin) = pick(
            flags.bootstrap_replicas,
            file.bootstrap_replicas,
            path,
            text,
        )
        .unwrap_or((DEFAULT_BOOTSTRAP_REPLICAS, Origin::Default));
        if !(1..=7).contains(&bootstrap_replicas) {
            return Err(origin.error(
                "bootstrap_replicas",
                format!("{bootstrap_replicas}: expected 1..=7"),
            ));
        }
        let (redirect, origin) = pick(flags.redirect, file.redirect, path, text)
            .unwrap_or_else(|| ("forward".to_string(), Origin::Default));
        let forward = match redirect.as_str() {
            "forward" => true,
            "moved" => false,
            other => {
                return Err(
                    origin.error("redirect", format!("{other:?}: expected forward or moved"))
                )
            }
        };
        let tls_cert_file = pick(flags.tls_cert_file, file.tls_cert_file, path, text);
        let tls_key_file = pick(flags.tls_key_file, file.tls_key_file, path, text);
        let (tls_cert_file, tls_key_file) = match (tls_cert_file, tls_key_file) {
            (Some((c, _)), Some((k, _))) => (Some(c), Some(k)),
            (None, None) => (None, None),
            (Some((_, origin)), None) | (None, Some((_, origin))) => {
                return Err(origin.error(
                    "tls_cert_file",
                    "--tls-cert-file and --tls-key-file go together".into(),
                ))
            }
        };
        let tls_cluster = pick(
            flags.tls_cluster.then_some(true),
            file.tls_cluster,
            path,
            text,
        );
        let tls_ca_cert_file = pick(flags.tls_ca_cert_file, file.tls_ca_cert_file, path, text);
        let tls_peer_name = pick(flags.tls_peer_name, file.tls_peer_name, path, text);
        let (tls_cluster_ca, tls_peer_name) = match tls_cluster {
            Some((true, origin)) => {
                if tls_cert_file.is_none() {
                    return Err(origin.error(
                        "tls_cluster",
                        "needs --tls-cert-file and --tls-key-file (this store's certificate)"
                            .into(),
                    ));
                }
                let Some((ca, _)) = tls_ca_cert_file else {
                    return Err(origin.error(
                        "tls_cluster",
                        "needs --tls-ca-cert-file (the CA of the stores' certificates)".into(),
                    ));
                };
                if let Some((name, origin)) = &tls_peer_name {
                    if rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
                        return Err(origin.error(
                            "tls_peer_name",
                            format!("{name:?} is not a DNS name or an IP address"),
                        ));
                    }
                }
                (Some(ca), tls_peer_name.map(|(n, _)| n))
            }
            _ => {
                for (key, origin) in [
                    ("tls_ca_cert_file", tls_ca_cert_file.map(|(_, o)| o)),
                    ("tls_peer_name", tls_peer_name.map(|(_, o)| o)),
                ] {
                    if let Some(origin) = origin {
                        return Err(origin.error(key, "needs --tls-cluster".into()));
                    }
                }
                (None, None)
            }
        };
        let flag_users = (!flags.users.is_empty()).then_some(flags.users);
        let users = match pick(flag_users, file.users, path, text) {
            None => Vec::new(),
            Some((list, origin)) => {
                let key = if matches!(origin, Origin::File { .. }) {
                    "users"
                } else {
                    "user"
                };
                let mut users = Vec::with_capacity(list.len());
                for spec in &list {
                    let user = nokv_gateway::session::User::parse(spec)
                        .map_err(|e| origin.error(key, e))?;
                    if users
                        .iter()
                        .any(|u: &nokv_gateway::session::User| u.name == user.name)
                    {
                        return Err(origin.error(
                            key,
                            format!("{} is given twice", String::from_utf8_lossy(&user.name)),
                        ));
                    }
                    users.push(user);
                }
                users
            }
        };
        let labels = match pick(flags.labels, file.labels, path, text) {
            None => Default::default(),
            Some((l, origin)) => parse_labels(&l).map_err(|e| origin.error("labels", e))?,
        };
        let (request_timeout_ms, origin) = pick(
            flags.request_timeout_ms,
            file.request_timeout_ms,
            path,
            text,
        )
        .unwrap_or((DEFAULT_REQUEST_TIMEOUT_MS, Origin::Default));
        if !(100..=600_000).contains(&request_timeout_ms) {
            return Err(origin.error(
                "request_timeout_ms",
                format!("{request_timeout_ms}: expected 100..=600000"),
            ));
        }
        Ok(Settings {
            workdir,
            redis_addr: pick(flags.redis_addr, file.redis_addr, path, text)
                .map_or_else(|| "127.0.0.1:6380".to_string(), |(a, _)| a),
            cores,
            cpus,
            durability,
            max_clients,
            max_bulk_bytes,
            requirepass: pick(flags.requirepass, file.requirepass, path, text).map(|(p, _)| p),
            protected_mode,
            metrics_addr,
            memory_limit,
            client_output_buffer_limit,
            region_max_bytes,
            split_check: std::time::Duration::from_millis(split_check_ms),
            split_load_qps,
            split_load_bytes,
            merge_max_bytes,
            merge_max_qps,
            snapshot_max_bytes_per_sec,
            balance_cores,
            background_nice,
            rpc_addr,
            cluster_id,
            coordinator,
            bootstrap_replicas,
            forward,
            request_timeout: std::time::Duration::from_millis(request_timeout_ms),
            labels,
            users,
            tls_cert_file,
            tls_key_file,
            tls_cluster_ca,
            tls_peer_name,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `text` to a config file in a fresh directory.
    fn config(text: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nokv-server.toml");
        std::fs::write(&path, text).expect("write");
        let p = path.to_str().expect("utf8").to_string();
        (dir, p)
    }

    fn resolve(args: &[&str]) -> Result<Settings> {
        let argv = ["nokv-server"].iter().chain(args).copied();
        Settings::resolve(Flags::try_parse_from(argv).expect("flags parse"))
    }

    #[test]
    fn config_file_and_cpu_lists() {
        let (_d, conf) = config(
            "# c\nredis_addr = \"127.0.0.1:7000\"\ncores = 2 # two\ncpus = \"0-1\"\n\nworkdir = \"/tmp/w\"\n",
        );
        let s = resolve(&["--config", &conf]).expect("resolve");
        assert_eq!(s.redis_addr, "127.0.0.1:7000");
        assert_eq!(s.cores, Some(2));
        assert_eq!(s.cpus, Some(vec![0, 1]));
        assert_eq!(s.workdir, PathBuf::from("/tmp/w"));
        assert_eq!(s.background_nice, DEFAULT_BACKGROUND_NICE);
        assert_eq!(parse_cpus("0-2,5").expect("cpus"), vec![0, 1, 2, 5]);
        assert!(parse_cpus("3-1").is_err());
        assert!(parse_cpus("x").is_err());
        let e = resolve(&[]).expect_err("no workdir");
        assert!(e.to_string().contains("--workdir is required"), "{e}");
    }

    #[test]
    fn flags_override_the_file() {
        let (_d, conf) = config(
            "workdir = \"/tmp/file\"\ncores = 3\ndurability = \"relaxed\"\nmax_clients = 7\nbackground_nice = 5\n",
        );
        let s =
            resolve(&["--workdir", "/tmp/x", "--config", &conf, "--cores", "2"]).expect("resolve");
        assert_eq!(s.workdir, PathBuf::from("/tmp/x"));
        assert_eq!(s.cores, Some(2));
        assert_eq!(s.durability, Durability::Relaxed);
        assert_eq!(s.max_clients, 7);
        assert_eq!(s.background_nice, 5);
        assert_eq!(s.redis_addr, "127.0.0.1:6380");
        assert_eq!(s.metrics_addr, None);
        assert_eq!(s.memory_limit, None);
        assert_eq!(
            s.client_output_buffer_limit,
            DEFAULT_CLIENT_OUTPUT_BUFFER_LIMIT
        );
        let s = resolve(&["--config", &conf, "--background-nice", "-3"]).expect("resolve");
        assert_eq!(s.background_nice, -3);
        assert_eq!(s.workdir, PathBuf::from("/tmp/file"));
    }

    #[test]
    fn byte_sizes_take_units() {
        let p = |v: &str| parse_bytes("x", v);
        assert_eq!(p("4096").unwrap(), 4096);
        assert_eq!(p("512MiB").unwrap(), 512 << 20);
        assert_eq!(p("2GiB").unwrap(), 2 << 30);
        assert_eq!(p("2 gb").unwrap(), 2 << 30);
        assert_eq!(p("64mb").unwrap(), 64 << 20);
        assert_eq!(p("1k").unwrap(), 1000);
        assert_eq!(p("1KB").unwrap(), 1024);
        assert_eq!(p("0").unwrap(), 0);
        for bad in [
            "",
            "MiB",
            "12 parsecs",
            "-1",
            "1.5GiB",
            "99999999999999999999",
        ] {
            assert!(p(bad).is_err(), "{bad}");
        }
        assert!(p("20000000TiB").is_err());
    }

    #[test]
    fn memory_and_metrics_settings_come_from_file_or_flags() {
        let (_d, conf) = config(
            "memory_limit = \"512MiB\"\nmetrics_addr = \"127.0.0.1:0\"\nclient_output_buffer_limit = 8388608\n",
        );
        let s = resolve(&["--workdir", "/tmp/x", "--config", &conf]).expect("resolve");
        assert_eq!(s.memory_limit, Some(512 << 20));
        assert_eq!(s.metrics_addr.as_deref(), Some("127.0.0.1:0"));
        assert_eq!(s.client_output_buffer_limit, 8 << 20);
        let s = resolve(&[
            "--workdir",
            "/tmp/x",
            "--config",
            &conf,
            "--memory-limit",
            "1GiB",
            "--client-output-buffer-limit",
            "0",
        ])
        .expect("resolve");
        assert_eq!(s.memory_limit, Some(1 << 30));
        assert_eq!(s.client_output_buffer_limit, 0);
        assert!(resolve(&["--workdir", "/x", "--memory-limit", "lots"]).is_err());
    }

    #[test]
    fn the_snapshot_rate_limit_comes_from_file_or_flags() {
        let (_d, conf) = config("snapshot_max_bytes_per_sec = \"8MiB\"\n");
        let s = resolve(&["--workdir", "/tmp/x", "--config", &conf]).expect("resolve");
        assert_eq!(s.snapshot_max_bytes_per_sec, 8 << 20);
        let s = resolve(&[
            "--workdir",
            "/tmp/x",
            "--config",
            &conf,
            "--snapshot-max-bytes-per-sec",
            "0",
        ])
        .expect("resolve");
        assert_eq!(s.snapshot_max_bytes_per_sec, 0);
        let s = resolve(&["--workdir", "/tmp/x"]).expect("resolve");
        assert_eq!(s.snapshot_max_bytes_per_sec, 100 << 20);
        assert!(resolve(&["--workdir", "/x", "--snapshot-max-bytes-per-sec", "fast"]).is_err());
    }

    /// The error for `text` as a config file, as the server prints it.
    #[test]
    fn tls_cluster_flags_and_keys_resolve_and_need_their_partners() {
        let tls = [
            "--workdir",
            "/tmp/w",
            "--tls-cert-file",
            "/c.pem",
            "--tls-key-file",
            "/k.pem",
        ];
        let s = resolve(
            &[
                &tls[..],
                &["--tls-cluster", "--tls-ca-cert-file", "/ca.pem"],
            ]
            .concat(),
        )
        .expect("resolve");
        assert_eq!(s.tls_cluster_ca, Some(PathBuf::from("/ca.pem")));
        assert_eq!(s.tls_peer_name, None);
        let s = resolve(&tls).expect("resolve");
        assert_eq!(s.tls_cluster_ca, None, "off by default");
        let (_d, conf) = config(
            "workdir = \"/tmp/w\"\ntls_cert_file = \"/c.pem\"\ntls_key_file = \"/k.pem\"\ntls_cluster = true\n\
             tls_ca_cert_file = \"/ca.pem\"\ntls_peer_name = \"nokv-store\"\n",
        );
        let s = resolve(&["--config", &conf]).expect("resolve the file");
        assert_eq!(s.tls_cluster_ca, Some(PathBuf::from("/ca.pem")));
        assert_eq!(s.tls_peer_name.as_deref(), Some("nokv-store"));
        let err = |args: &[&str]| resolve(args).expect_err("must fail").to_string();
        let m = err(&[
            "--workdir",
            "/tmp/w",
            "--tls-cluster",
            "--tls-ca-cert-file",
            "/ca.pem",
        ]);
        assert!(m.contains("needs --tls-cert-file"), "{m}");
        let m = err(&[&tls[..], &["--tls-cluster"]].concat());
        assert!(m.contains("needs --tls-ca-cert-file"), "{m}");
        let m = err(&["--workdir", "/tmp/w", "--tls-ca-cert-file", "/ca.pem"]);
        assert!(m.contains("--tls-ca-cert-file: needs --tls-cluster"), "{m}");
        let m = err(&[
            &tls[..],
            &["--tls-cluster", "--tls-ca-cert-file", "/ca.pem"],
            &["--tls-peer-name", "not a name!"],
        ]
        .concat());
        assert!(m.contains("--tls-peer-name"), "{m}");
        let m = file_error("tls_cluster = \"yes\"\n");
        assert!(m.contains("tls_cluster"), "{m}");
    }

    fn file_error(text: &str) -> String {
        let (_d, conf) = config(text);
        let e = resolve(&["--workdir", "/tmp/x", "--config", &conf]).expect_err("must fail");
        assert!(matches!(e, Error::ConfigFile { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains("nokv-server.toml"), "names the file: {msg}");
        msg
    }

    #[test]
    fn bad_files_name_the_file_line_and_key() {
        let m = file_error("cores = 2\nmax_clinets = 5\n");
        assert!(m.contains("line 2") && m.contains("max_clinets"), "{m}");
        let m = file_error("cores = 2\n\nmax-clients = 5\n");
        assert!(
            m.contains("line 3") && m.contains("`max_clients`"),
            "hint: {m}"
        );
        let m = file_error("# x\ncores = \"2\"\n");
        assert!(m.contains("line 2") && m.contains("`cores`"), "{m}");
        let m = file_error("durability = \"fast\"\n");
        assert!(
            m.contains("line 1") && m.contains("`durability`") && m.contains("\"fast\""),
            "{m}"
        );
        let m = file_error("memory_limit = \"lots\"\n");
        assert!(
            m.contains("line 1") && m.contains("memory_limit") && m.contains("\"lots\""),
            "{m}"
        );
        let m = file_error("x\n memory_limit = 1\n");
        assert!(m.contains("line 1"), "syntax error: {m}");
        let m = file_error("cores = 1\nbackground_nice = 40\n");
        assert!(m.contains("line 2") && m.contains("background_nice"), "{m}");
        let m = file_error("cores = 0\n");
        assert!(m.contains("line 1") && m.contains("`cores`"), "{m}");
        let m = file_error("requirepass = true\n");
        assert!(m.contains("requirepass"), "{m}");
        let m = file_error("client_output_buffer_limit = -1\n");
        assert!(m.contains("client_output_buffer_limit"), "{m}");
    }

    #[test]
    fn the_sample_deploy_file_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nokv-server.toml");
        let text = std::fs::read_to_string(&path).expect("deploy/nokv-server.toml");
        let file = ConfigFile::parse(&path, &text).expect("the sample parses");
        // Destructured so that a new key fails to compile here until the sample shows it.
        let ConfigFile {
            workdir,
            redis_addr,
            cores,
            cpus,
            durability,
            max_clients,
            max_bulk_bytes,
            requirepass,
            users,
            tls_cert_file,
            tls_key_file,
            tls_cluster,
            tls_ca_cert_file,
            tls_peer_name,
            protected_mode,
            metrics_addr,
            memory_limit,
            client_output_buffer_limit,
            region_max_bytes,
            split_check_ms,
            split_load_qps,
            split_load_bytes,
            merge_max_bytes,
            merge_max_qps,
            snapshot_max_bytes_per_sec,
            balance_cores,
            background_nice,
            rpc_addr,
            cluster_id,
            coordinator,
            bootstrap_replicas,
            redirect,
            request_timeout_ms,
            labels,
        } = file;
        for (key, set) in [
            ("workdir", workdir.is_some()),
            ("redis_addr", redis_addr.is_some()),
            ("durability", durability.is_some()),
            ("max_clients", max_clients.is_some()),
            ("max_bulk_bytes", max_bulk_bytes.is_some()),
            ("metrics_addr", metrics_addr.is_some()),
            ("memory_limit", memory_limit.is_some()),
            (
                "client_output_buffer_limit",
                client_output_buffer_limit.is_some(),
            ),
            ("background_nice", background_nice.is_some()),
            ("region_max_bytes", region_max_bytes.is_some()),
            ("split_check_ms", split_check_ms.is_some()),
            ("split_load_qps", split_load_qps.is_some()),
            ("split_load_bytes", split_load_bytes.is_some()),
            ("merge_max_bytes", merge_max_bytes.is_some()),
            ("merge_max_qps", merge_max_qps.is_some()),
            (
                "snapshot_max_bytes_per_sec",
                snapshot_max_bytes_per_sec.is_some(),
            ),
            ("balance_cores", balance_cores.is_some()),
            ("protected_mode", protected_mode.is_some()),
            ("cluster_id", cluster_id.is_some()),
            ("bootstrap_replicas", bootstrap_replicas.is_some()),
            ("redirect", redirect.is_some()),
            ("request_timeout_ms", request_timeout_ms.is_some()),
        ] {
            assert!(set, "the sample sets {key}");
        }
        // Commented out in the sample (no default value to show), yet documented there.
        for (key, set) in [
            ("cores", cores.is_some()),
            ("cpus", cpus.is_some()),
            ("requirepass", requirepass.is_some()),
            ("users", users.is_some()),
            ("tls_cert_file", tls_cert_file.is_some()),
            ("tls_key_file", tls_key_file.is_some()),
            ("tls_cluster", tls_cluster.is_some()),
            ("tls_ca_cert_file", tls_ca_cert_file.is_some()),
            ("tls_peer_name", tls_peer_name.is_some()),
            ("rpc_addr", rpc_addr.is_some()),
            ("coordinator", coordinator.is_some()),
            ("labels", labels.is_some()),
        ] {
            assert!(!set && text.contains(&format!("# {key} = ")), "{key}");
        }
        let conf = path.to_str().expect("utf8");
        let s = resolve(&["--config", conf]).expect("the sample resolves");
        let d = resolve(&["--workdir", "/var/lib/nokv"]).expect("defaults");
        assert_eq!(s.workdir, d.workdir);
        assert_eq!(s.redis_addr, d.redis_addr);
        assert_eq!(s.durability, d.durability);
        assert_eq!(s.max_clients, d.max_clients);
        assert_eq!(s.max_bulk_bytes, d.max_bulk_bytes);
        assert_eq!(
            s.memory_limit,
            Some(crate::memory::MemoryBudget::default_limit(1))
        );
        assert_eq!(s.client_output_buffer_limit, d.client_output_buffer_limit);
        assert_eq!(s.region_max_bytes, d.region_max_bytes);
        assert_eq!(s.split_check, d.split_check);
        assert_eq!(s.split_load_qps, d.split_load_qps);
        assert_eq!(s.split_load_bytes, d.split_load_bytes);
        assert_eq!(s.merge_max_bytes, d.merge_max_bytes);
        assert_eq!(s.merge_max_qps, d.merge_max_qps);
        assert_eq!(s.snapshot_max_bytes_per_sec, d.snapshot_max_bytes_per_sec);
        assert_eq!(
            d.snapshot_max_bytes_per_sec,
            DEFAULT_SNAPSHOT_MAX_BYTES_PER_SEC
        );
        assert_eq!(s.balance_cores, d.balance_cores);
        assert_eq!(s.protected_mode, d.protected_mode);
        assert!(d.protected_mode);
        assert_eq!(s.background_nice, d.background_nice);
        assert_eq!(s.metrics_addr.as_deref(), Some("127.0.0.1:9180"));
        assert_eq!(s.cluster_id, d.cluster_id);
        assert_eq!(s.rpc_addr, None);
        assert_eq!(d.rpc_addr, None);
        assert!(s.coordinator.is_empty() && d.coordinator.is_empty());
        assert_eq!(s.bootstrap_replicas, d.bootstrap_replicas);
    }

    #[test]
    fn max_bulk_bytes_takes_units() {
        let s = resolve(&["--workdir", "/tmp/x", "--max-bulk-bytes", "1MiB"]).expect("units");
        assert_eq!(s.max_bulk_bytes, 1 << 20);
        let s = resolve(&["--workdir", "/tmp/x", "--max-bulk-bytes", "4096"]).expect("plain");
        assert_eq!(s.max_bulk_bytes, 4096);
        assert!(resolve(&["--workdir", "/tmp/x", "--max-bulk-bytes", "0"]).is_err());
    }

    #[test]
    fn users_parse_and_bad_or_repeated_ones_are_refused() {
        let s = resolve(&[
            "--workdir",
            "/tmp/x",
            "--user",
            "alice:pa:ss",
            "--user",
            "bob:pw:readonly",
        ])
        .expect("users");
        assert_eq!(s.users.len(), 2);
        assert_eq!(
            (s.users[0].password.as_slice(), s.users[0].read_only),
            (&b"pa:ss"[..], false)
        );
        assert_eq!(
            (s.users[1].name.as_slice(), s.users[1].read_only),
            (&b"bob"[..], true)
        );
        for bad in [
            &["--user", "alice"][..],
            &["--user", "default:x"],
            &["--user", "a:"],
            &["--user", "a:x", "--user", "a:y"],
        ] {
            let mut args = vec!["--workdir", "/tmp/x"];
            args.extend_from_slice(bad);
            let e = resolve(&args).expect_err("refused").to_string();
            assert!(e.contains("--user"), "{bad:?}: {e}");
        }
        assert!(resolve(&["--workdir", "/tmp/x"])
            .expect("none")
            .users
            .is_empty());
    }

    #[test]
    fn labels_parse_and_bad_ones_are_refused() {
        let s = resolve(&["--workdir", "/tmp/x", "--labels", "host=h1, zone=z1"]).expect("labels");
        assert_eq!(
            s.labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>(),
            ["host=h1", "zone=z1"]
        );
        assert!(resolve(&["--workdir", "/tmp/x"])
            .expect("none")
            .labels
            .is_empty());
        for bad in ["host", "host=", "=h1", "host=h 1", "host=a,host=b"] {
            assert!(parse_labels(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn coordinator_settings_come_from_file_or_flags() {
        let (_d, conf) = config(
            "rpc_addr = \"127.0.0.1:7380\"\ncoordinator = \"127.0.0.1:2390, 127.0.0.1:2391\"\nbootstrap_replicas = 1\n",
        );
        let s = resolve(&["--workdir", "/tmp/x", "--config", &conf]).expect("resolve");
        assert_eq!(s.coordinator, vec!["127.0.0.1:2390", "127.0.0.1:2391"]);
        assert_eq!(s.bootstrap_replicas, 1);
        let s = resolve(&[
            "--workdir",
            "/tmp/x",
            "--config",
            &conf,
            "--coordinator",
            "off",
        ])
        .expect("resolve");
        assert!(s.coordinator.is_empty());
        let e = resolve(&["--workdir", "/tmp/x", "--coordinator", "127.0.0.1:2390"])
            .expect_err("needs --rpc-addr");
        assert!(e.to_string().contains("--rpc-addr"), "{e}");
        let m = file_error("bootstrap_replicas = 9\n");
        assert!(m.contains("`bootstrap_replicas`"), "{m}");
    }

    #[test]
    fn rpc_settings_come_from_file_or_flags() {
        let (_d, conf) = config("rpc_addr = \"127.0.0.1:7380\"\ncluster_id = 42\n");
        let s = resolve(&["--workdir", "/tmp/x", "--config", &conf]).expect("resolve");
        assert_eq!(s.rpc_addr.as_deref(), Some("127.0.0.1:7380"));
        assert_eq!(s.cluster_id, 42);
        let s = resolve(&[
            "--workdir",
            "/tmp/x",
            "--config",
            &conf,
            "--rpc-addr",
            "off",
            "--cluster-id",
            "7",
        ])
        .expect("resolve");
        assert_eq!(s.rpc_addr, None);
        assert_eq!(s.cluster_id, 7);
        let d = resolve(&["--workdir", "/tmp/x"]).expect("defaults");
        assert_eq!((d.rpc_addr, d.cluster_id), (None, DEFAULT_CLUSTER_ID));
        let m = file_error("cluster_id = 0\n");
        assert!(m.contains("line 1") && m.contains("`cluster_id`"), "{m}");
        let m = file_error("rpc_addr = 7380\n");
        assert!(m.contains("rpc_addr"), "{m}");
    }
}

//! The node: start-up, one pinned glommio executor per core, the channel mesh,
//! each core's raft driver, connections, and graceful shutdown.
//!
//! No executor thread blocks on the engine: it is marked
//! (`nokv::fs::forbid_blocking_io`, asserted in debug builds). Reads run inline
//! through the engine's cache-only tier and go to the core's blocking pool
//! (glommio `spawn_blocking`) only when they need disk IO; the raft driver's
//! engine work (applies, the round's WAL append and fdatasync, checkpoints) and
//! the shutdown flush always run there while the executor keeps serving. Writes
//! are refused with `-BUSY` while the core's engine stops writes.

#[path = "admin.rs"]
mod admin;
#[path = "atomic.rs"]
mod atomic;
#[path = "forward.rs"]
mod forward;
#[path = "load.rs"]
mod load;
#[path = "merge.rs"]
mod merge;
#[path = "moves.rs"]
mod moves;
#[path = "operate.rs"]
mod operate;
#[path = "split.rs"]
mod split;
#[path = "txn.rs"]
pub(crate) mod txn;

use crate::config::{Settings, REGIONS_PER_CORE};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::hooks::NodeHooks;
use crate::knobs::Knobs;
use crate::layout::{self, OpenedCore, RouteTable, StoreMeta, STORE_ID};
use crate::memory::{self, ClientMemory, ConnMemory, MemoryBudget};
use crate::metrics::{CoreMetrics, CoreSample};
use crate::oneshot;
use crate::route::{self, Plan, Work};
use crate::transport::{CoreTransport, NetFaults, StaticResolver, StoreTransport, TransportConfig};
use crate::view::{GroupedApply, HeldWrites, RegionView};
use futures_lite::future;
use futures_lite::AsyncWriteExt;
use glommio::channels::channel_mesh::{MeshBuilder, Senders};
use glommio::channels::local_channel;
use glommio::net::{TcpListener, TcpStream};
use glommio::sync::Semaphore;
use glommio::{CpuSet, LocalExecutorBuilder, Placement, PoolPlacement};
use nokv::{Db, WriteStall};
use nokv_gateway::exec::{self, ReadOp, WriteCommand};
use nokv_gateway::lock::Locked;
use nokv_gateway::model;
use nokv_gateway::{Action, Reply, Session, State};
use nokv_raft::raftpb::{Message, MessageType};
use nokv_raft::transport::RaftEnvelope;
use nokv_raft::{CoreConfig, EntrySink, Outbox, RaftCore, ReadPath, RegionDescriptor};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Capacity of each mesh channel (per ordered pair of cores).
pub const MESH_CHANNEL_CAPACITY: usize = 1024;
/// Most requests from other cores a core works on at once.
pub const MAX_REMOTE_HANDLERS: usize = 4096;
/// Most requests a core waits on from other cores at once.
pub const MAX_REMOTE_WAITING: usize = 8192;
/// Raft tick interval.
pub const TICK: Duration = Duration::from_millis(100);
/// How much shorter than the election timeout a leader's read lease is (clock drift
/// between stores, scheduling delays).
pub const LEASE_DRIFT_MARGIN: Duration = Duration::from_millis(300);
/// How often each core tries to truncate its raft logs.
pub const LOG_COMPACT_INTERVAL: Duration = Duration::from_secs(5);
/// With `--durability relaxed`, the longest acknowledged writes stay without an fdatasync.
pub const RELAXED_SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// Locked-memory budget of one process's io_uring buffers (all executors, 3 rings each): RLIMIT_MEMLOCK
/// is 8 MiB here and io_uring charges it per user, so several servers (tests) must fit together.
pub const IO_MEMORY_BUDGET: usize = 768 << 10;
/// Longest a graceful shutdown waits for connections and other cores.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest a stopping store in a cluster waits for its regions' leadership to move to
/// other stores (two of the shortest election timeouts).
pub const LEADER_HANDOVER_TIMEOUT: Duration = Duration::from_secs(2);
/// Bytes read from a socket at a time.
pub const READ_CHUNK: usize = 16 << 10;
/// How often each core publishes its queue depths as metrics.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// Threads of each core's blocking pool (glommio `spawn_blocking`), pinned to the core's
/// CPU. The raft driver uses one at a time, so reads that need IO still find a thread
/// while a write waits out an engine stall.
pub const BLOCKING_THREADS: usize = 2;
/// Most reads of one core on its blocking pool at once; more wait (on the executor,
/// without blocking it) for a turn.
pub const MAX_BLOCKING_READS: u64 = 64;

/// Starts the reply to writes on a core whose engine failed to write (a full disk, an IO
/// error): Redis's reply when it cannot write its AOF (docs/redis.md, "Disk failures").
pub const WRITE_FAILED: &str = "MISCONF Errors writing to disk";

/// The `-MISCONF` reply of core `core` after `error`, one line.
fn write_failed_reply(core: usize, error: &impl std::fmt::Display) -> String {
    let why = error.to_string().replace(['\r', '\n'], " ");
    format!(
        "{WRITE_FAILED} on core {core}: {why}; writes are refused until nokv-server restarts, reads are served"
    )
}

/// `-TRYAGAIN` when a bounded queue toward another core is full.
const BUSY: &str = "TRYAGAIN core is busy, retry";

/// `-TRYAGAIN` for a write that is known not to be applied (not taken by the leader, or
/// its log entry was replaced after a leadership change): the client can simply retry.
fn not_written_reply(error: &nokv_raft::Error) -> String {
    format!("TRYAGAIN {error}; retry")
}

/// `-BUSY` while the owning core's engine stops writes (docs/redis.md).
pub const WRITE_STALLED: &str =
    "BUSY write stall: the storage engine is catching up on flush and compaction, retry later";

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A request from one core to another.
struct Request {
    from: usize,
    id: u64,
    work: Work,
}

/// The answer to a [`Request`].
struct Response {
    id: u64,
    answer: Answer,
}

/// What running a region's work on this store gave.
enum Answer {
    /// The reply for the client.
    Reply(Reply),
    /// Another store leads the region, or no leader is known: the work comes back unrun,
    /// with the store believed to lead it (see `forward`).
    Elsewhere {
        /// The work, unrun.
        work: Work,
        /// The store believed to lead the region (None: unknown).
        leader: Option<u64>,
    },
    /// The region no longer holds the work's keys (a split moved them to a new region):
    /// the work back, unrun, to be planned again.
    Stale(Work),
}

/// What every core shares (read-mostly).
struct NodeShared {
    knobs: Knobs,
    cores: usize,
    /// Hash slot -> region -> core; replaced when a split applies (and, for regions
    /// without a replica here, from the coordinator's routes).
    routes: Arc<layout::SharedRoutes>,
    /// Ids for splits of a standalone store.
    ids: split::LocalIds,
    /// Split regions whose data grows past this size (0: never by size).
    region_max_bytes: u64,
    /// The store's snapshot send rate (`--snapshot-max-bytes-per-sec`; None: unlimited).
    snapshot_limiter: Option<Arc<nokv_raft::RateLimiter>>,
    /// How often each core checks the sizes of the regions it leads.
    split_check: Duration,
    /// Split regions served more requests per second than this (0: never by rate).
    split_load_qps: u64,
    /// Split regions written more bytes per second than this (0: never by rate).
    split_load_bytes: u64,
    /// Merge adjacent cold regions whose data together is below this (0: never).
    merge_max_bytes: u64,
    /// Regions serving fewer requests per second than this are cold (merges).
    merge_max_qps: u64,
    /// Move regions from busy cores to idle ones (`--balance-cores`).
    balance_cores: bool,
    /// Each core's request rate over its last check interval (requests per second).
    core_ops: Vec<AtomicU64>,
    /// Each core's data size in the regions it leads, as last measured (size balancing).
    core_bytes: Vec<AtomicU64>,
    gateway: Arc<nokv_gateway::Shared>,
    durability: nokv::Durability,
    max_clients: usize,
    /// TLS on the Redis port (`--tls-cert-file`).
    tls: Option<Arc<rustls::ServerConfig>>,
    clients: AtomicUsize,
    shutdown: Arc<AtomicBool>,
    failed: AtomicBool,
    /// The first core whose executor died before its core ran to the end (a panic in
    /// glommio's set-up or in the core), or `usize::MAX`.
    lost_core: AtomicUsize,
    listening: AtomicUsize,
    drained: AtomicUsize,
    client_memory: Arc<ClientMemory>,
    /// The store's place in a cluster (`--coordinator`); None: standalone.
    cluster: Option<ClusterNode>,
    /// Consistency-check hashes and verdicts of this store's replicas.
    checks: crate::consistency::CheckBook,
    /// Regions whose replica was created or removed here while running (the route table
    /// is fixed at start): region -> core.
    hosted: std::sync::RwLock<HashMap<u64, usize>>,
    /// Regions whose replica was removed from this store while running: the store that
    /// led them then (where `-MOVED` sends their requests).
    moved_out: std::sync::RwLock<HashMap<u64, u64>>,
    /// Every core's engine (store-wide operator commands: `NOKV.COMPACT`).
    engines: Vec<nokv::Db>,
}

impl NodeShared {
    /// The core of a replica created here while running.
    fn hosted_core(&self, region: u64) -> Option<usize> {
        self.hosted.read().ok()?.get(&region).copied()
    }

    /// Records (Some) or forgets (None) the core of a replica created here while running.
    fn set_hosted(&self, region: u64, core: Option<usize>) {
        if let Ok(mut m) = self.hosted.write() {
            match core {
                Some(c) => {
                    m.insert(region, c);
                }
                None => {
                    m.remove(&region);
                }
            }
        }
    }
}

/// What the cores of a store in a cluster share.
struct ClusterNode {
    /// This store's id.
    store_id: u64,
    /// Other stores' addresses.
    directory: Arc<crate::cluster::Directory>,
    /// Each replica's core on its store, from the coordinator's routes at start.
    peer_cores: HashMap<u64, u32>,
    /// Regions without a replica here: the store the coordinator named as leader.
    remote_leaders: HashMap<u64, u64>,
    /// Region reports for the heartbeat thread (bounded; try_send).
    reports: crate::cluster::ReportSender,
    /// The coordinator client (blocking: call it on the blocking pool).
    client: Arc<nokv_coordinator::CoordClient>,
    /// AUTH's arguments for this store's queries to the others' Redis ports: the cluster's
    /// `requirepass`, else its first user allowed to write.
    auth: Option<Vec<Vec<u8>>>,
    /// `--tls-cluster`: those queries go over TLS, the others' certificates checked.
    tls: Option<Arc<crate::tls::ClusterTls>>,
    /// Forward commands for regions led elsewhere (false: answer `-MOVED`).
    forward: bool,
    /// How long a command may wait for its region's leader.
    request_timeout: Duration,
    /// The scheduler's operators, per core (filled by the heartbeat thread).
    operators: Arc<crate::cluster::OperatorQueue>,
}

/// Byte size of each executor's io_uring buffer pool: the budget over 3 rings per executor,
/// at least glommio's floor of 64 KiB (so 3 x 64 KiB x cores exceeds the budget above 4 cores,
/// and 8 MiB above 42).
pub fn io_memory_per_executor(cores: usize) -> usize {
    let per = IO_MEMORY_BUDGET / (3 * cores.max(1));
    (per.clamp(64 << 10, 128 << 10)) & !4095
}

/// Runs the node until SIGTERM/SIGINT; returns once every core has stopped.
pub fn run(settings: Settings) -> Result<()> {
    // A panicking core (or blocking-pool job) would leave its regions unserved and its
    // writers waiting: stop the whole process so that a supervisor restarts it.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        std::process::abort();
    }));
    run_with(settings, NodeHooks::default())
}

/// Runs the node with injected pieces (see [`NodeHooks`]) until stopped; returns once
/// every core has stopped.
pub fn run_with(settings: Settings, hooks: NodeHooks) -> Result<()> {
    let knobs = Knobs::from_env();
    let _lock = layout::lock_workdir(&settings.workdir)?;
    // Read before anything else: a bad file stops the start with its name at once.
    let cluster_tls = match (
        &settings.tls_cluster_ca,
        &settings.tls_cert_file,
        &settings.tls_key_file,
    ) {
        (Some(ca), Some(cert), Some(key)) => Some(crate::tls::ClusterTls::load(
            cert,
            key,
            ca,
            settings.tls_peer_name.as_deref(),
        )?),
        (Some(_), _, _) => {
            return Err(Error::Config(
                "--tls-cluster needs --tls-cert-file and --tls-key-file".into(),
            ))
        }
        _ => None,
    };
    // A running server (whose listeners set SO_REUSEPORT) would otherwise silently share
    // the port with ours; connections of a crashed run in TIME_WAIT do not block it.
    let addr = crate::addr::reserve(&settings.redis_addr)?;
    // The same check for the store-to-store port, which also fixes its port for every core.
    let rpc_listen = match &settings.rpc_addr {
        Some(a) => {
            let listen = crate::transport::reserve_addr(a)?;
            if listen == addr {
                return Err(Error::Config(format!(
                    "--rpc-addr {a} is the Redis address {addr}: they need different ports"
                )));
            }
            Some(listen)
        }
        None => None,
    };
    // Before anything waits on the coordinator: SIGTERM must stop that wait too.
    let shutdown = hooks.stop_flag()?;
    let cluster_mode = !settings.coordinator.is_empty();
    let existing = layout::read_store_meta(&settings.workdir)?;
    if let Some(m) = &existing {
        if let Some(c) = settings.cores {
            if c != m.cores {
                return Err(Error::Layout(format!(
                    "{} was created with {} cores; start with --cores {} (moving regions between cores is not supported yet)",
                    settings.workdir.display(),
                    m.cores,
                    m.cores
                )));
            }
        }
        if m.coordinated != cluster_mode {
            return Err(Error::Layout(format!(
                "{} was created {}; start it {}",
                settings.workdir.display(),
                if m.coordinated {
                    "as a store of a cluster (--coordinator)"
                } else {
                    "as a standalone store"
                },
                if m.coordinated {
                    "with --coordinator"
                } else {
                    "without --coordinator"
                }
            )));
        }
    }
    let cores = existing.as_ref().map_or_else(
        || {
            settings
                .cores
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        },
        |m| m.cores,
    );
    let joined = match (cluster_mode, rpc_listen) {
        (false, _) => None,
        (true, None) => {
            return Err(Error::Config(
                "--coordinator needs --rpc-addr: the other stores reach this one there".into(),
            ))
        }
        (true, Some(rpc)) => Some(crate::cluster::join(
            &settings,
            existing.as_ref().map(|m| m.store_id),
            cores,
            rpc,
            addr,
            &shutdown,
        )?),
    };
    let meta = match existing {
        Some(m) => m,
        None => {
            let m = StoreMeta {
                store_id: joined.as_ref().map_or(STORE_ID, |j| j.store_id),
                cores,
                regions_per_core: REGIONS_PER_CORE,
                coordinated: cluster_mode,
            };
            // In a cluster, only once the coordinator gave the id: a crash before this
            // line registers again (the unused id stays down forever).
            layout::write_store_meta(&settings.workdir, &m)?;
            tracing::info!(cores, regions_per_core = REGIONS_PER_CORE, store = m.store_id, workdir = %settings.workdir.display(), "initialised an empty workdir");
            m
        }
    };
    // Each core's seed: the standalone layout, or the replicas placed on it.
    let seeds: Vec<layout::Seed> = match &joined {
        None => vec![layout::Seed::Standalone; cores],
        Some(j) => {
            let mut per_core = vec![Vec::new(); cores];
            for (desc, core) in j.local_regions(cores)? {
                per_core[core].push(desc);
            }
            per_core.into_iter().map(layout::Seed::Assigned).collect()
        }
    };
    let cores = meta.cores;
    // Core n runs on the n-th CPU of the list, round-robin when there are more cores.
    let cpus = settings.cpus.clone().unwrap_or_else(|| {
        (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect()
    });

    let budget = MemoryBudget::split(
        settings
            .memory_limit
            .unwrap_or_else(|| MemoryBudget::default_limit(cores)),
        cores,
    )?;
    tracing::info!(
        limit = budget.limit,
        write_buffer_per_core = budget.write_buffer_bytes,
        memtables_per_core = budget.memtable_bytes_per_core(),
        block_cache_per_core = budget.block_cache_bytes,
        clients = budget.client_bytes,
        client_output_buffer_limit = settings.client_output_buffer_limit,
        "memory split"
    );
    // Before the engines open: metric handles registered earlier stay no-ops.
    let prometheus = match settings.metrics_addr {
        Some(_) => Some(crate::metrics::install()?),
        None => None,
    };
    crate::consistency::register_metrics();
    operate::register_metrics();
    split::register_metrics();
    merge::register_metrics();
    moves::register_metrics();
    txn::register_metrics();

    let mut opened: Vec<OpenedCore> = Vec::with_capacity(cores);
    for (core, seed) in seeds.iter().enumerate() {
        opened.push(layout::open_core(
            &settings.workdir,
            &meta,
            core,
            &settings,
            &hooks,
            &budget,
            &knobs,
            seed,
        )?);
    }
    moves::resolve_duplicates(&mut opened)?;
    let per_core: Vec<Vec<RegionDescriptor>> = opened.iter().map(|o| o.regions.clone()).collect();
    let routes = match &joined {
        None => RouteTable::build(&per_core)?,
        Some(j) => {
            // Every region of the cluster: those with a replica here on their core, the
            // others marked NOT_HERE (their requests get -MOVED).
            // A remote region overlapping a local one is the coordinator's view of a split
            // this store has not re-applied yet (its log will): the local one wins.
            let local_slots: Vec<(u32, u32)> = per_core
                .iter()
                .flatten()
                .filter_map(|l| layout::slot_range(l).ok())
                .collect();
            let remote: Vec<RegionDescriptor> = j
                .routes
                .iter()
                .filter_map(|r| r.region.as_ref())
                .filter(|r| !per_core.iter().flatten().any(|l| l.id == r.id))
                .map(RegionDescriptor::from)
                .filter(|r| {
                    layout::slot_range(r)
                        .is_ok_and(|(s, e)| !local_slots.iter().any(|&(ls, le)| s < le && ls < e))
                })
                .collect();
            let placed = per_core
                .iter()
                .enumerate()
                .flat_map(|(core, regions)| regions.iter().map(move |r| (r, core)))
                .chain(remote.iter().map(|r| (r, layout::NOT_HERE)));
            RouteTable::from_regions(placed)?
        }
    };
    let (cluster, heartbeats) = match joined {
        None => (None, None),
        Some(j) => {
            let (tx, rx) = std::sync::mpsc::sync_channel(crate::cluster::REPORT_QUEUE);
            let (peer_cores, remote_leaders) = (j.peer_cores(), j.leader_stores());
            let client = Arc::new(j.client);
            let operators = Arc::new(crate::cluster::OperatorQueue::new(cores));
            let link = ClusterNode {
                store_id: meta.store_id,
                directory: j.directory.clone(),
                peer_cores,
                remote_leaders,
                reports: tx,
                client: client.clone(),
                auth: match &settings.requirepass {
                    Some(p) => Some(vec![p.as_bytes().to_vec()]),
                    None => settings
                        .users
                        .iter()
                        .find(|u| !u.read_only)
                        .map(|u| vec![u.name.clone(), u.password.clone()]),
                },
                tls: cluster_tls.clone(),
                forward: settings.forward,
                request_timeout: settings.request_timeout,
                operators: operators.clone(),
            };
            (Some(link), Some((client, j.directory, rx, operators)))
        }
    };
    // TLS files are read now: a bad one stops the start with its name.
    let tls = match (&settings.tls_cert_file, &settings.tls_key_file) {
        (Some(cert), Some(key)) => Some(crate::tls::server_config(cert, key)?),
        _ => None,
    };
    let gateway_config = nokv_gateway::Config {
        requirepass: settings.requirepass.as_ref().map(|p| p.as_bytes().to_vec()),
        protected_mode: settings.protected_mode,
        users: settings.users.clone(),
        limits: nokv_gateway::resp::Limits {
            max_bulk_bytes: settings.max_bulk_bytes,
            ..Default::default()
        },
        max_query_buffer_bytes: settings.max_bulk_bytes.saturating_mul(2).max(64 << 20),
        max_clients: settings.max_clients,
        port: addr.port(),
        max_output_bytes: match settings.client_output_buffer_limit {
            0 => usize::MAX,
            n => usize::try_from(n).unwrap_or(usize::MAX),
        },
        maxmemory: budget.limit,
        ..Default::default()
    };
    let client_memory = ClientMemory::new(budget.client_bytes, settings.client_output_buffer_limit);
    let ids = split::LocalIds::new(&opened)?;
    let node = Arc::new(NodeShared {
        knobs,
        cores,
        routes: Arc::new(layout::SharedRoutes::new(routes)),
        ids,
        region_max_bytes: settings.region_max_bytes,
        snapshot_limiter: (settings.snapshot_max_bytes_per_sec > 0).then(|| {
            Arc::new(nokv_raft::RateLimiter::new(
                settings.snapshot_max_bytes_per_sec,
            ))
        }),
        split_check: settings.split_check,
        split_load_qps: settings.split_load_qps,
        split_load_bytes: settings.split_load_bytes,
        merge_max_bytes: settings.merge_max_bytes,
        merge_max_qps: settings.merge_max_qps,
        balance_cores: settings.balance_cores,
        core_ops: (0..cores).map(|_| AtomicU64::new(0)).collect(),
        core_bytes: (0..cores).map(|_| AtomicU64::new(0)).collect(),
        gateway: nokv_gateway::Shared::new(gateway_config, now_ms()),
        durability: settings.durability,
        max_clients: settings.max_clients,
        tls,
        clients: AtomicUsize::new(0),
        shutdown,
        failed: AtomicBool::new(false),
        lost_core: AtomicUsize::new(usize::MAX),
        listening: AtomicUsize::new(0),
        drained: AtomicUsize::new(0),
        client_memory: client_memory.clone(),
        cluster,
        checks: crate::consistency::CheckBook::default(),
        hosted: std::sync::RwLock::new(HashMap::new()),
        moved_out: std::sync::RwLock::new(HashMap::new()),
        engines: opened.iter().map(|o| o.db.clone()).collect(),
    });
    {
        let clients = client_memory.clone();
        node.gateway
            .set_info_hook(Box::new(move |section| match section {
                "memory" => budget.info_lines(&clients),
                _ => Vec::new(),
            }));
    }
    // After the recorder is installed: the transport's counters register with it.
    let rpc = rpc_listen.map(|listen| {
        // Standalone: no other store is known. In a cluster the directory is filled from
        // the coordinator (at start and every few seconds by the heartbeat thread).
        let resolver: Arc<dyn crate::transport::StoreResolver> = match &node.cluster {
            Some(c) => c.directory.resolver(),
            None => Arc::new(StaticResolver::default()),
        };
        let mut config = TransportConfig::new(settings.cluster_id, meta.store_id, cores, listen);
        if node.cluster.is_some() {
            // Region snapshots from other stores land in the cores' snapshot directories.
            config.workdir = Some(settings.workdir.clone());
        }
        config.net_faults = node.knobs.net_faults.clone().map(NetFaults::watch);
        config.tls = cluster_tls.clone();
        StoreTransport::new(config, resolver)
    });
    // Stopped and joined when run_with returns (dropped), after the cores.
    let _heartbeats = match heartbeats {
        Some((client, directory, rx, operators)) => Some(crate::cluster::spawn_heartbeats(
            client,
            meta.store_id,
            directory,
            rx,
            operators,
            node.routes.clone(),
            opened.iter().map(|o| o.db.clone()).collect(),
        )?),
        None => None,
    };
    // Stopped (its threads joined) when this function returns.
    let (metrics_sources, _metrics_server) = match (prometheus, &settings.metrics_addr) {
        (Some(handle), Some(metrics_addr)) => {
            let sources = crate::metrics::Sources::new(
                node.gateway.clone(),
                client_memory,
                budget,
                opened.iter().map(|o| o.db.clone()).collect(),
            );
            let server = crate::metrics::serve(metrics_addr, handle, sources.clone())?;
            let bound = server.addr();
            println!("nokv-server metrics on {bound}");
            tracing::info!(addr = %bound, "metrics endpoint");
            (Some(sources), Some(server))
        }
        _ => (None, None),
    };
    let requests: MeshBuilder<Request, _> = MeshBuilder::full(cores, MESH_CHANNEL_CAPACITY);
    let responses: MeshBuilder<Response, _> = MeshBuilder::full(cores, MESH_CHANNEL_CAPACITY);
    let io_memory = io_memory_per_executor(cores);
    let mut handles = Vec::with_capacity(cores);
    for (core, o) in opened.into_iter().enumerate() {
        let cpu = cpus[core % cpus.len()];
        let node = node.clone();
        let guard = CoreGuard {
            node: node.clone(),
            core,
            done: false,
        };
        let links = CoreLinks {
            requests: requests.clone(),
            responses: responses.clone(),
            rpc: rpc.clone(),
        };
        let this_cpu = CpuSet::online()
            .map_err(|e| Error::Executor {
                core,
                detail: format!("list CPUs: {e}"),
            })?
            .filter(|l| l.cpu == cpu);
        let h = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("core-{core}"))
            .io_memory(io_memory)
            .blocking_thread_pool_placement(PoolPlacement::Fenced(BLOCKING_THREADS, this_cpu))
            .spawn(move || async move {
                // From here on this thread must never block on the engine.
                nokv::fs::forbid_blocking_io();
                let r = core_main(core, node.clone(), o, addr, links).await;
                if let Err(e) = &r {
                    tracing::error!(core, error = %e, "core stopped with an error");
                    node.failed.store(true, Ordering::SeqCst);
                    node.shutdown.store(true, Ordering::SeqCst);
                }
                guard.finished();
                r
            })
            .map_err(|e| Error::Executor {
                core,
                detail: e.to_string(),
            })?;
        handles.push(h);
    }
    // Announce once every core listens (tests and scripts wait for this line).
    loop {
        if node.listening.load(Ordering::SeqCst) == cores {
            if let Some(rpc) = &rpc {
                let rpc_addr = rpc.config().listen;
                println!("nokv-server rpc on {rpc_addr}");
                tracing::info!(addr = %rpc_addr, cluster_id = settings.cluster_id, "store rpc port");
            }
            println!("nokv-server listening on {addr} ({cores} cores)");
            tracing::info!(%addr, cores, io_memory, "listening");
            if let Some(tx) = &hooks.listening {
                let _ = tx.send(addr);
            }
            break;
        }
        if node.failed.load(Ordering::SeqCst) {
            let lost = node.lost_core.load(Ordering::SeqCst);
            if lost != usize::MAX {
                // The other cores may wait for the lost one forever (the channel mesh
                // joins all cores): report without joining them. Nothing was served yet.
                return Err(Error::Executor {
                    core: lost,
                    detail: "the executor died while starting (its panic is above); \
                             if glommio could not set up io_uring, the locked-memory limit \
                             (RLIMIT_MEMLOCK, charged per user) may be used up by other \
                             processes of this user"
                        .into(),
                });
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut first_err = None;
    let joined: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
    if let Some(sources) = &metrics_sources {
        sources.release_engines();
    }
    for (core, h) in joined.into_iter().enumerate() {
        match h {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(e) => {
                first_err.get_or_insert(Error::Executor {
                    core,
                    detail: format!("panicked or failed: {e}"),
                });
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => {
            tracing::info!("stopped cleanly");
            Ok(())
        }
    }
}

/// Owned by a core's executor closure: dropped without [`CoreGuard::finished`] (glommio
/// panicked before or while running the core), it marks the node failed and the core lost.
struct CoreGuard {
    node: Arc<NodeShared>,
    core: usize,
    done: bool,
}

impl CoreGuard {
    /// The core ran to its end (with or without an error it reported itself).
    fn finished(mut self) {
        self.done = true;
    }
}

impl Drop for CoreGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let _ = self.node.lost_core.compare_exchange(
            usize::MAX,
            self.core,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        self.node.failed.store(true, Ordering::SeqCst);
        self.node.shutdown.store(true, Ordering::SeqCst);
    }
}

/// Where a proposal's or a remote request's reply goes.
type ReplyTx = oneshot::Sender<Reply>;

/// What a raft token hands back: a proposal's reply, or a linearizable read's go-ahead.
enum Waiter {
    /// A proposer waiting for its reply.
    Write(ReplyTx),
    /// A read waiting for its ReadIndex round (`Err`: the reply to give instead).
    Read(oneshot::Sender<std::result::Result<(), Reply>>),
    /// A membership change waiting to apply (`Ok`: the region as it is now).
    Conf(oneshot::Sender<std::result::Result<RegionDescriptor, Reply>>),
}

impl Waiter {
    /// Answers the proposer with `reply`, or fails the read with it.
    fn answer(self, reply: Reply) {
        match self {
            Waiter::Write(tx) => tx.send(reply),
            Waiter::Read(tx) => tx.send(Err(reply)),
            Waiter::Conf(tx) => tx.send(Err(reply)),
        }
    }
}

/// One core's state, shared by its tasks.
struct Core {
    id: usize,
    node: Arc<NodeShared>,
    db: Db,
    raft: RefCell<RaftCore<Waiter>>,
    requests: Senders<Request>,
    responses: Senders<Response>,
    waiting: RefCell<HashMap<u64, oneshot::Sender<Answer>>>,
    next_id: Cell<u64>,
    handlers: Cell<usize>,
    connections: Cell<usize>,
    notify: local_channel::LocalSender<()>,
    stop: Event,
    metrics: CoreMetrics,
    /// Turns of reads on the blocking pool ([`MAX_BLOCKING_READS`]).
    blocking_reads: Semaphore,
    /// Fires once every region has re-applied the log it started with; reads wait for it.
    caught_up: Event,
    /// Set (to the `-MISCONF` reply) once the engine failed under the raft log: the core
    /// then refuses writes and serves reads until the process restarts.
    write_failure: Rc<RefCell<Option<String>>>,
    /// Fires with `write_failure`.
    failed: Event,
    /// Raft messages to and from other stores (`--rpc-addr`); its inbox is what the raft
    /// driver will step (multi-replica regions are not built yet).
    transport: Option<Rc<CoreTransport>>,
    /// Raft messages from other stores that were not stepped, by reason.
    step_drops: StepDrops,
    /// Regions this core is asking the coordinator about (raft messages came for them).
    creating: RefCell<HashSet<u64>>,
    /// Merge sources whose merge a call of `merge::merge` is driving now.
    merges_running: RefCell<HashSet<u64>>,
    /// Regions removed from this core while running: (their last membership version,
    /// whether the old replica's data is deleted). Raft messages recreate one only for a
    /// newer membership (the store was added again), once the deletion is done.
    tombstones: RefCell<HashMap<u64, (u64, bool)>>,
    /// Region snapshots being sent to other stores (`crate::snapship`).
    snapshot_sends: Rc<crate::snapship::Sends>,
    /// This core's copy of the route table.
    routes: layout::LocalRoutes,
    /// The load of the regions this core leads (splits by load, the hot report).
    loads: load::Loads,
    /// The size of each region this core leads as the split checker last measured it
    /// (reported in region heartbeats).
    sizes: RefCell<HashMap<u64, u64>>,
}

impl Core {
    /// The route table now (this core's copy, refreshed after a split).
    fn routes(&self) -> Rc<RouteTable> {
        self.routes.get(&self.node.routes)
    }

    /// Enters the read-only state after the engine failed under the raft log (`error`):
    /// every waiting proposal, and every later write, gets the `-MISCONF` reply. No raft
    /// round runs any more.
    fn refuse_writes(&self, error: &nokv_raft::Error) {
        let reply = write_failed_reply(self.id, error);
        tracing::error!(core = self.id, error = %error, "the engine failed to write: this core refuses writes until restarted and keeps serving reads");
        self.raft
            .borrow_mut()
            .abandon_all(None, |t| refuse(t, &reply));
        *self.write_failure.borrow_mut() = Some(reply);
        self.failed.fire();
    }

    /// The `-MISCONF` reply when the core refuses writes.
    fn write_refusal(&self) -> Option<String> {
        self.write_failure.borrow().clone()
    }
}

/// Answers a proposer of a core that refuses writes with its `-MISCONF` `reply`.
fn refuse(token: Waiter, reply: &str) {
    token.answer(Reply::error(reply.to_string()));
}

/// Runs `f` on this core's blocking pool and waits for it without blocking the executor.
/// A panic there aborts the process (see the hook in [`run`]).
async fn blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    glommio::executor().spawn_blocking(f).await
}

/// Applies a round's committed entries (on the blocking pool): small writes of
/// consecutive entries of a region go to the engine as one batch (see [`HeldWrites`]).
/// An engine write that failed is an error, not a reply: the round stops before the
/// region's applied index moves past the entries it carried.
struct RoundApply<'a> {
    db: &'a Db,
    held: RefCell<HeldWrites>,
    /// Consistency checks applied by the round, to hash afterwards.
    checks: Vec<crate::consistency::PendingHash>,
}

impl EntrySink for RoundApply<'_> {
    type Output = Reply;

    fn entry(
        &mut self,
        region: &RegionDescriptor,
        index: u64,
        data: &[u8],
    ) -> std::result::Result<Reply, nokv_raft::Error> {
        if crate::consistency::is_check(data) {
            // Every write before the check reaches the engine, then its state is pinned.
            self.end_region(region)?;
            self.checks.push(crate::consistency::PendingHash {
                desc: region.clone(),
                index,
                snapshot: self.db.snapshot(),
            });
            return Ok(Reply::Int(index as i64));
        }
        if txn::is_entry(data) {
            // Written with the versions it carries, after what the region held back.
            self.end_region(region)?;
            return txn::apply_entry(self.db, region, index, data);
        }
        match WriteCommand::decode(data) {
            // Version = the entry's raft index: fixed by the log, identical on every
            // replica, growing with every write of the region.
            Ok(cmd) => {
                let mut view = GroupedApply::new(self.db, region, index, &self.held);
                let reply = exec::apply(&cmd, &mut view, index);
                match view.write_error() {
                    None => Ok(reply),
                    Some(detail) => Err(nokv_raft::Error::Apply {
                        region: region.id,
                        index,
                        detail,
                    }),
                }
            }
            Err(e) => {
                tracing::error!(region = region.id, index, error = %e, "undecodable raft entry skipped");
                Ok(Reply::error(format!("ERR {e}")))
            }
        }
    }

    fn end_region(
        &mut self,
        region: &RegionDescriptor,
    ) -> std::result::Result<(), nokv_raft::Error> {
        let mut held = self.held.borrow_mut();
        let index = held.last_index();
        held.write(self.db, region.id)
            .map_err(|e| nokv_raft::Error::Apply {
                region: region.id,
                index,
                detail: e.to_string(),
            })
    }
}

/// Answers abandoned proposals and read go-aheads; collects the raft messages of a round
/// phase, which [`send_messages`] addresses and hands to the transport once the raft core
/// is no longer borrowed.
#[derive(Default)]
struct NodeOutbox {
    messages: Vec<(u64, Message)>,
    /// Splits applied: (parent as it is now, new region).
    splits: Vec<(RegionDescriptor, RegionDescriptor)>,
    /// Merges applied: (target as it is now, the source merged into it).
    merges: Vec<(RegionDescriptor, u64)>,
}

impl Outbox<Waiter> for NodeOutbox {
    fn abandon(&mut self, token: Waiter, error: nokv_raft::Error) {
        token.answer(Reply::error(not_written_reply(&error)));
    }

    fn send(&mut self, region: u64, msg: Message) {
        self.messages.push((region, msg));
    }

    fn conf_changed(&mut self, token: Waiter, result: nokv_raft::Result<RegionDescriptor>) {
        match (token, result) {
            (Waiter::Conf(tx), Ok(desc)) => tx.send(Ok(desc)),
            (t, Ok(_)) => t.answer(Reply::ok()),
            (t, Err(e)) => t.answer(Reply::error(format!("ERR membership change refused: {e}"))),
        }
    }

    fn split_done(&mut self, token: Waiter, result: nokv_raft::Result<RegionDescriptor>) {
        match (token, result) {
            (Waiter::Conf(tx), Ok(child)) => tx.send(Ok(child)),
            (t, Ok(_)) => t.answer(Reply::ok()),
            (t, Err(e)) => t.answer(Reply::error(format!("ERR split refused: {e}"))),
        }
    }

    fn region_split(&mut self, parent: &RegionDescriptor, child: &RegionDescriptor) {
        self.splits.push((parent.clone(), child.clone()));
    }

    fn merge_done(&mut self, token: Waiter, result: nokv_raft::Result<RegionDescriptor>) {
        match (token, result) {
            (Waiter::Conf(tx), Ok(desc)) => tx.send(Ok(desc)),
            (t, Ok(_)) => t.answer(Reply::ok()),
            (t, Err(e)) => t.answer(Reply::error(format!("{}: {e}", merge::REFUSED))),
        }
    }

    fn region_merged(&mut self, target: &RegionDescriptor, source: u64) {
        self.merges.push((target.clone(), source));
    }

    fn read_ready(&mut self, token: Waiter, result: nokv_raft::Result<()>) {
        match (token, result) {
            (Waiter::Read(tx), Ok(())) => tx.send(Ok(())),
            (t, Ok(())) => t.answer(Reply::error("ERR internal: a read go-ahead for a write")),
            (t, Err(e)) => t.answer(Reply::error(format!("TRYAGAIN read not confirmed: {e}"))),
        }
    }
}

/// Sends the messages a round phase produced: each to the store of its peer in the
/// region's descriptor and the core the coordinator placed that peer on. Standalone
/// stores have no other replica (nothing is sent). A message the transport drops is
/// reported to raft (`report_unreachable`), which probes the peer again.
fn send_messages(core: &Rc<Core>, out: NodeOutbox) {
    if out.messages.is_empty() {
        return;
    }
    let (Some(transport), Some(cluster)) = (&core.transport, &core.node.cluster) else {
        tracing::debug!(
            messages = out.messages.len(),
            "raft messages dropped: no other replica (standalone store)"
        );
        return;
    };
    let mut unreachable = Vec::new();
    let mut snapshots = Vec::new();
    {
        let raft = core.raft.borrow();
        for (region, msg) in out.messages {
            let Some(desc) = raft.region(region) else {
                continue;
            };
            let Some(to) = desc.peer(msg.to) else {
                core.step_drops.unknown_peer.increment(1);
                continue;
            };
            let is_snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
            if is_snapshot && core.node.knobs.no_snapshot_shipping {
                // Negative control: the replica cannot catch up this way.
                core.step_drops.snapshot.increment(1);
                unreachable.push((region, msg.to, true));
                continue;
            }
            let route = nokv_raft::transport::Route {
                region_id: region,
                epoch: desc.epoch,
                from_store: cluster.store_id,
                to_store: to.store_id,
                to_core: core
                    .node
                    .knobs
                    .raft_to_core
                    // The coordinator's current record first: a replica moved between
                    // the cores of its store since this one started.
                    .or_else(|| cluster.directory.peer_core(msg.to))
                    .or_else(|| cluster.peer_cores.get(&msg.to).copied())
                    .unwrap_or(0),
            };
            let env = match RaftEnvelope::new(route, &msg) {
                Ok(env) => env,
                Err(e) => {
                    tracing::warn!(region, error = %e, "raft message not encodable");
                    continue;
                }
            };
            if is_snapshot {
                let meta = msg.get_snapshot().get_metadata();
                let key = nokv_raft::SnapshotKey {
                    region,
                    term: meta.term,
                    index: meta.index,
                };
                snapshots.push((key, msg.to, env));
                continue;
            }
            if transport.send(env).is_err() {
                unreachable.push((region, msg.to, false));
            }
        }
    }
    for (key, peer, env) in snapshots {
        let Some(dir) = core.raft.borrow().snap_dir(&key) else {
            unreachable.push((key.region, peer, true));
            continue;
        };
        let c = core.clone();
        crate::snapship::ship(
            transport.clone(),
            core.snapshot_sends.clone(),
            dir,
            key,
            env,
            core.node.snapshot_limiter.clone(),
            move |delivered| {
                let mut raft = c.raft.borrow_mut();
                raft.report_snapshot(key.region, peer, delivered);
                if !delivered {
                    raft.report_unreachable(key.region, peer);
                }
                drop(raft);
                let _ = c.notify.try_send(());
            },
        );
    }
    let mut raft = core.raft.borrow_mut();
    for (region, peer, snapshot) in unreachable {
        if snapshot {
            raft.report_snapshot(region, peer, false);
        }
        raft.report_unreachable(region, peer);
    }
}

/// Steps the raft messages waiting in this core's inbox (at most [`MAX_STEP_BATCH`]);
/// returns how many it took. A message for a region another core of this store holds is
/// handed to that core (counted as `rerouted`). Messages for a region no core here holds, from a stale
/// epoch (an older split version, or an older membership from a peer no longer in the
/// region), undecodable, or carrying a snapshot while shipping is off (a debug knob) are dropped and
/// counted (`nokv_raft_messages_dropped_total`).
fn step_inbox(core: &Rc<Core>) -> usize {
    let Some(transport) = &core.transport else {
        return 0;
    };
    let envelopes = transport.inbox().drain(MAX_STEP_BATCH);
    let n = envelopes.len();
    if n == 0 {
        return 0;
    }
    // Regions no core here holds: looked at once the raft core is no longer borrowed.
    let mut unknown = Vec::new();
    let mut raft = core.raft.borrow_mut();
    for env in envelopes {
        let Some(desc) = raft.region(env.region_id) else {
            // Addressed to this core, held by another one here (the sender's idea of the
            // placement is off): one more hop over the transport mesh. Never bounced on.
            match admin::local_core(&core.node, env.region_id) {
                Some(c) if c != core.id && env.to_core as usize == core.id => {
                    hand_on(core, transport, env, c);
                }
                Some(c) if c != core.id => core.step_drops.unknown_region.increment(1),
                _ => {
                    let Ok(msg) = env.message() else {
                        core.step_drops.undecodable.increment(1);
                        continue;
                    };
                    // A replica added to this store: created on the core the coordinator
                    // records for it (else here) once the coordinator lists it.
                    let placed = core
                        .node
                        .cluster
                        .as_ref()
                        .and_then(|c| c.directory.peer_core(msg.to))
                        .map(|c| c as usize)
                        .filter(|c| *c != core.id && *c < core.node.cores);
                    match placed {
                        Some(c) if env.to_core as usize == core.id => {
                            hand_on(core, transport, env, c);
                        }
                        _ => {
                            core.step_drops.unknown_region.increment(1);
                            unknown.push((env.region_id, msg.to, env.from_store, env.epoch()));
                        }
                    }
                }
            }
            continue;
        };
        let epoch = env.epoch();
        if epoch.version < desc.epoch.version
            || (epoch.conf_version < desc.epoch.conf_version && desc.peer(env.from_peer).is_none())
        {
            core.step_drops.stale_epoch.increment(1);
            continue;
        }
        let msg = match env.message() {
            Ok(m) => m,
            Err(_) => {
                core.step_drops.undecodable.increment(1);
                continue;
            }
        };
        if msg.get_msg_type() == MessageType::MsgSnapshot && core.node.knobs.no_snapshot_shipping {
            core.step_drops.snapshot.increment(1);
            continue;
        }
        if let Err(e) = raft.step(env.region_id, msg) {
            core.step_drops.refused.increment(1);
            tracing::debug!(region = env.region_id, error = %e, "raft message refused");
        }
    }
    drop(raft);
    for (region, to_peer, from_store, epoch) in unknown {
        admin::maybe_create(core, region, to_peer, from_store, epoch);
    }
    n
}

/// Hands `env`, addressed to this core, to core `to` of this store over the mesh (counted
/// as `rerouted`). A snapshot's files, which the receiver put in this core's snapshot
/// directory (the one the message was addressed to), move along to `to`'s first: that is
/// where its raft core looks for them (a sender whose idea of the core was off made the
/// target core fail its ingest, and stop taking writes, in CI).
fn hand_on(core: &Core, transport: &CoreTransport, mut env: RaftEnvelope, to: usize) {
    if let Ok(msg) = env.message() {
        if msg.get_msg_type() == MessageType::MsgSnapshot {
            let meta = msg.get_snapshot().get_metadata();
            let key = nokv_raft::SnapshotKey {
                region: env.region_id,
                term: meta.term,
                index: meta.index,
            };
            if let (Some(from), Some(into)) = (transport.snap_dir(core.id), transport.snap_dir(to))
            {
                let (src, dst) = (from.join(key.dir_name()), into.join(key.dir_name()));
                let moved = if !src.exists() {
                    Ok(())
                } else if dst.exists() {
                    // The same snapshot arrived there before: this copy is not needed.
                    std::fs::remove_dir_all(&src)
                } else {
                    std::fs::create_dir_all(&into).and_then(|()| std::fs::rename(&src, &dst))
                };
                if let Err(e) = moved {
                    // Dropped: the leader sends the snapshot again.
                    tracing::warn!(region = env.region_id, from = core.id, to, error = %e, "a snapshot for another core's region could not be moved there: dropped");
                    core.step_drops.snapshot.increment(1);
                    return;
                }
            }
        }
    }
    env.to_core = to as u32;
    core.step_drops.rerouted.increment(1);
    let _ = transport.deliver(env);
}

/// Most inbox messages stepped between two looks at the rest of the driver's work.
const MAX_STEP_BATCH: usize = 4096;

/// Counters of raft messages from other stores that were not stepped.
struct StepDrops {
    unknown_region: metrics::Counter,
    unknown_peer: metrics::Counter,
    stale_epoch: metrics::Counter,
    undecodable: metrics::Counter,
    snapshot: metrics::Counter,
    refused: metrics::Counter,
    /// Not dropped: handed to the core that holds the region.
    rerouted: metrics::Counter,
}

impl StepDrops {
    fn new(core: usize) -> StepDrops {
        let c = |reason: &'static str| metrics::counter!("nokv_raft_messages_dropped_total", "core" => core.to_string(), "reason" => reason);
        StepDrops {
            unknown_region: c("unknown_region"),
            unknown_peer: c("unknown_peer"),
            stale_epoch: c("stale_epoch"),
            undecodable: c("undecodable"),
            snapshot: c("snapshot"),
            refused: c("refused"),
            rerouted: c("rerouted"),
        }
    }
}

/// Before a store in a cluster stops: asks every region this core leads to hand
/// leadership to another voter and waits (at most [`LEADER_HANDOVER_TIMEOUT`]) until it
/// leads none, so that clients find a new leader at once instead of after an election
/// timeout. The raft driver and the transport keep running meanwhile.
async fn hand_over_leadership(core: &Core) {
    if core.node.cluster.is_none() {
        return;
    }
    // Regions led here that have a live voter elsewhere to take over.
    let led = |raft: &RaftCore<Waiter>| -> Vec<(u64, u64)> {
        raft.regions()
            .filter_map(|d| raft.transfer_candidate(d.id).map(|p| (d.id, p)))
            .collect()
    };
    let targets = led(&core.raft.borrow());
    if targets.is_empty() {
        return;
    }
    tracing::info!(
        core = core.id,
        regions = targets.len(),
        "handing leadership to other stores"
    );
    {
        let mut raft = core.raft.borrow_mut();
        for &(region, peer) in &targets {
            if let Err(e) = raft.transfer_leader(region, peer) {
                tracing::debug!(core = core.id, region, error = %e, "leader transfer not started");
            }
        }
    }
    let _ = core.notify.try_send(());
    let deadline = Instant::now() + LEADER_HANDOVER_TIMEOUT;
    while Instant::now() < deadline && !led(&core.raft.borrow()).is_empty() {
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
    let left = led(&core.raft.borrow()).len();
    if left > 0 {
        tracing::warn!(
            core = core.id,
            regions = left,
            "still leading after the handover wait; stopping anyway"
        );
    }
}

/// Reports the regions this core leads to the heartbeat thread (cluster only); never waits.
fn report_leaders(core: &Core) -> usize {
    let Some(cluster) = &core.node.cluster else {
        return 0;
    };
    let raft = core.raft.borrow();
    let sizes = core.sizes.borrow();
    let mut n = 0;
    for desc in raft.regions().filter(|r| raft.is_leader(r.id)) {
        let Some(me) = desc.peer_on_store(cluster.store_id) else {
            continue;
        };
        n += 1;
        let _ = cluster.reports.try_send(crate::cluster::RegionReport {
            desc: desc.clone(),
            leader_peer_id: me.peer_id,
            core: core.id as u32,
            core_peer: None,
            size_bytes: sizes.get(&desc.id).copied(),
            requests_per_sec: core
                .loads
                .ops_per_sec(desc.id)
                .map_or(0, |r| r.round() as u64),
        });
    }
    n
}

/// The reply to a request for `region` on a store whose replica does not lead it:
/// `-MOVED <slot> <leader's Redis address>` (Redis Cluster's redirection), or `-TRYAGAIN`
/// while no leader is known.
fn moved(core: &Core, region: u64, slot: Option<u16>) -> Reply {
    let Some(cluster) = &core.node.cluster else {
        return Reply::error(format!("ERR region {region} has no leader here"));
    };
    let (leader_store, start) = leader_store(core, cluster, region);
    let slot = slot.unwrap_or(start);
    match leader_store
        .filter(|s| *s != cluster.store_id)
        .and_then(|s| cluster.directory.redis_addr(s))
    {
        Some(addr) => Reply::error(format!("MOVED {slot} {addr}")),
        None => Reply::error(format!(
            "TRYAGAIN region {region} has no known leader yet, retry"
        )),
    }
}

/// The store this store believes leads `region` (its replica's view, else what it knew
/// when the replica was removed, else the coordinator's routes) and the region's first
/// slot (0 when it has no replica here).
fn leader_store(core: &Core, cluster: &ClusterNode, region: u64) -> (Option<u64>, u16) {
    {
        let raft = core.raft.borrow();
        match raft.region(region) {
            Some(desc) => (
                raft.leader(region).map(|p| p.store_id),
                layout::start_slot(desc),
            ),
            None => (
                core.node
                    .moved_out
                    .read()
                    .ok()
                    .and_then(|m| m.get(&region).copied())
                    .or_else(|| cluster.directory.region(region).and_then(|(_, l)| l))
                    .or_else(|| cluster.remote_leaders.get(&region).copied()),
                0,
            ),
        }
    }
}

/// The slot a `-MOVED` for `work` names: its (first) key's, None for work over a whole
/// region.
fn work_slot(work: &Work) -> Option<u16> {
    match work {
        Work::Read { op, .. } => route::read_slot(op),
        Work::Write { cmd, .. } => cmd.op.keys().first().map(|k| model::slot(k)),
        Work::Admin { .. } => None,
        Work::Txn { req, .. } => req.keys().first().map(|k| model::slot(k)),
    }
}

/// The work of `region` comes back unrun: another store leads it (or none is known).
fn elsewhere(core: &Core, work: Work) -> Answer {
    let region = work.region();
    let leader = core
        .node
        .cluster
        .as_ref()
        .and_then(|c| leader_store(core, c, region).0);
    Answer::Elsewhere { work, leader }
}

/// How a core reaches the others: the request and response meshes, and the store-to-store
/// transport when `--rpc-addr` is set.
struct CoreLinks {
    requests: MeshBuilder<Request, glommio::channels::channel_mesh::Full>,
    responses: MeshBuilder<Response, glommio::channels::channel_mesh::Full>,
    rpc: Option<StoreTransport>,
}

async fn core_main(
    id: usize,
    node: Arc<NodeShared>,
    opened: OpenedCore,
    addr: std::net::SocketAddr,
    links: CoreLinks,
) -> Result<()> {
    let db = opened.db.clone();
    let write_failure = Rc::new(RefCell::new(None));
    let served = serve_core(id, node, opened, addr, links, write_failure.clone()).await;
    // Close the engine on the blocking pool (WAL sync, background threads joined), so
    // that dropping the last handle here later does no IO.
    let closed = blocking(move || db.close()).await;
    if let (Err(e), Some(_)) = (&closed, write_failure.borrow().as_ref()) {
        // Already reported when the core stopped taking writes; what it acknowledged is
        // in the WAL, which the next start replays.
        tracing::warn!(core = id, error = %e, "closing the engine after a write failure");
        return served;
    }
    served.and(closed.map_err(|source| Error::Engine { core: id, source }))
}

async fn serve_core(
    id: usize,
    node: Arc<NodeShared>,
    opened: OpenedCore,
    addr: std::net::SocketAddr,
    links: CoreLinks,
    write_failure: Rc<RefCell<Option<String>>>,
) -> Result<()> {
    let CoreLinks {
        requests,
        responses,
        rpc,
    } = links;
    let mut cfg = CoreConfig {
        store_id: node.cluster.as_ref().map_or(STORE_ID, |c| c.store_id),
        durability: node.durability,
        data_ranges: crate::layout::region_data,
        ..CoreConfig::default()
    };
    if let Some(n) = node.knobs.raft_cached_entries {
        cfg.max_cached_entries = n;
    }
    if node.cluster.is_some() {
        cfg.snap_dir = rpc
            .as_ref()
            .and_then(|r| r.config().workdir.as_deref())
            .map(|w| crate::snapship::snap_dir(w, id));
        // Below the shortest election timeout (election_tick ticks) by a clock-drift margin.
        cfg.lease = Some((TICK * cfg.election_tick as u32).saturating_sub(LEASE_DRIFT_MARGIN));
    }
    cfg.unsafe_reads_without_quorum = node.knobs.reads_without_quorum;
    let raft = RaftCore::start(opened.db.clone(), cfg, opened.recovered)
        .map_err(|source| Error::Raft { core: id, source })?;
    let (req_tx, mut req_rx) = requests.join().await.map_err(|e| Error::Executor {
        core: id,
        detail: format!("join the request mesh: {e}"),
    })?;
    let (rep_tx, mut rep_rx) = responses.join().await.map_err(|e| Error::Executor {
        core: id,
        detail: format!("join the response mesh: {e}"),
    })?;
    let transport = match rpc {
        Some(rpc) => Some(rpc.start_core(id).await?),
        None => None,
    };
    let (notify_tx, notify_rx) = local_channel::new_bounded::<()>(1);
    let core = Rc::new(Core {
        id,
        node: node.clone(),
        db: opened.db,
        raft: RefCell::new(raft),
        requests: req_tx,
        responses: rep_tx,
        waiting: RefCell::new(HashMap::new()),
        next_id: Cell::new(0),
        handlers: Cell::new(0),
        connections: Cell::new(0),
        notify: notify_tx,
        stop: Event::new(),
        metrics: CoreMetrics::new(id),
        blocking_reads: Semaphore::new(MAX_BLOCKING_READS),
        caught_up: Event::new(),
        write_failure,
        failed: Event::new(),
        transport,
        step_drops: StepDrops::new(id),
        creating: RefCell::new(HashSet::new()),
        merges_running: RefCell::new(HashSet::new()),
        tombstones: RefCell::new(HashMap::new()),
        snapshot_sends: Rc::new(crate::snapship::Sends::default()),
        routes: layout::LocalRoutes::new(&node.routes),
        loads: load::Loads::default(),
        sizes: RefCell::new(HashMap::new()),
    });
    if let Some(t) = &core.transport {
        t.set_kv_service(Rc::new(forward::Service(Rc::downgrade(&core))));
    }
    if node.cluster.is_some() {
        glommio::spawn_local(admin::gc_removed(core.clone())).detach();
        if let Some(c) = &node.cluster {
            glommio::spawn_local(operate::run_operators(core.clone(), c.operators.clone()))
                .detach();
        }
        if let Some(interval) = crate::consistency::check_interval() {
            glommio::spawn_local(admin::periodic_checks(core.clone(), interval)).detach();
        }
    }
    glommio::spawn_local(sample_core(core.clone())).detach();
    glommio::spawn_local(split::checks(core.clone())).detach();

    let driver_stop = Event::new();
    let driver = glommio::spawn_local(raft_driver(core.clone(), notify_rx, driver_stop.clone()));
    for (from, stream) in req_rx.streams() {
        let core = core.clone();
        glommio::spawn_local(async move {
            // Bounded by the channel; ends when the sender side closes.
            while let Some(req) = stream.recv().await {
                if core.handlers.get() >= MAX_REMOTE_HANDLERS {
                    let _ = core
                        .responses
                        .send_to(
                            from,
                            Response {
                                id: req.id,
                                answer: Answer::Reply(Reply::error(BUSY)),
                            },
                        )
                        .await;
                    continue;
                }
                core.handlers.set(core.handlers.get() + 1);
                let c = core.clone();
                glommio::spawn_local(async move {
                    let answer = execute_local(&c, req.work).await;
                    // Response receivers never block, so awaiting here cannot close a cycle.
                    let _ = c
                        .responses
                        .send_to(req.from, Response { id: req.id, answer })
                        .await;
                    c.handlers.set(c.handlers.get() - 1);
                })
                .detach();
            }
        })
        .detach();
    }
    for (_, stream) in rep_rx.streams() {
        let core = core.clone();
        glommio::spawn_local(async move {
            while let Some(rep) = stream.recv().await {
                let waiter = core.waiting.borrow_mut().remove(&rep.id);
                if let Some(w) = waiter {
                    w.send(rep.answer);
                }
            }
        })
        .detach();
    }

    let listener = TcpListener::bind(addr).map_err(|e| Error::Net {
        op: "bind",
        addr: addr.to_string(),
        source: std::io::Error::other(e.to_string()),
    })?;
    node.listening.fetch_add(1, Ordering::SeqCst);
    tracing::debug!(core = id, "accepting");

    // Shutdown watcher: turns the process-wide flag into this core's event.
    {
        let core = core.clone();
        glommio::spawn_local(async move {
            while !core.node.shutdown.load(Ordering::SeqCst) {
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
            core.stop.fire();
        })
        .detach();
    }

    // Accept until shutdown.
    loop {
        let accepted = future::or(async { Some(listener.accept().await) }, async {
            core.stop.wait().await;
            None
        })
        .await;
        let Some(accepted) = accepted else { break };
        let stream = match accepted {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(core = id, error = %e, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if node
            .gateway
            .config
            .refuses_peer(stream.peer_addr().ok().map(|a| a.ip()))
        {
            node.gateway
                .rejected_connections
                .fetch_add(1, Ordering::Relaxed);
            let mut stream = stream;
            let _ = stream
                .write_all(nokv_gateway::session::PROTECTED_MODE_DENIED)
                .await;
            continue;
        }
        if node.clients.fetch_add(1, Ordering::SeqCst) >= node.max_clients {
            node.clients.fetch_sub(1, Ordering::SeqCst);
            node.gateway
                .rejected_connections
                .fetch_add(1, Ordering::Relaxed);
            let mut stream = stream;
            let _ = stream
                .write_all(b"-ERR max number of clients reached\r\n")
                .await;
            continue;
        }
        core.connections.set(core.connections.get() + 1);
        let c = core.clone();
        glommio::spawn_local(async move {
            serve_connection(&c, stream).await;
            c.connections.set(c.connections.get() - 1);
            c.node.clients.fetch_sub(1, Ordering::SeqCst);
        })
        .detach();
    }
    drop(listener);
    tracing::info!(core = id, "draining");

    // Drain: this core's connections finish their current requests and close, while the
    // driver and mesh handlers keep serving every core; then wait for the other cores.
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while core.connections.get() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    node.drained.fetch_add(1, Ordering::SeqCst);
    while node.drained.load(Ordering::SeqCst) < node.cores && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    while (core.handlers.get() > 0 || core.raft.borrow().pending() > 0) && Instant::now() < deadline
    {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    hand_over_leadership(&core).await;
    driver_stop.fire();
    let _ = core.notify.try_send(());
    let driven = driver.await;
    // Flush so that a restart finds every region's data in SSTs and replays nothing
    // (not after a write failure: the engine refuses it, and the WAL has everything).
    let flushed = if core.write_refusal().is_some() {
        Ok(())
    } else {
        let db = core.db.clone();
        blocking(move || db.flush())
            .await
            .map_err(|source| Error::Engine { core: id, source })
    };
    core.requests.close();
    core.responses.close();
    if let Some(t) = &core.transport {
        t.shutdown().await;
    }
    driven?;
    flushed?;
    tracing::info!(core = id, "stopped");
    Ok(())
}

/// Drives the core's raft peers: a poll round whenever something is ready, ticks,
/// periodic log truncation. One round (or truncation) at a time; while its engine work
/// runs on the blocking pool the executor keeps serving connections, whose proposals
/// the next round batches.
async fn raft_driver(
    core: Rc<Core>,
    notify: local_channel::LocalReceiver<()>,
    stop: Event,
) -> Result<()> {
    let mut last_tick = Instant::now();
    let mut last_compact = Instant::now();
    let mut last_sync = Instant::now();
    let relaxed = core.node.durability == nokv::Durability::Relaxed;
    let mut last_report = Instant::now();
    let mut leading = 0usize;
    loop {
        if !core.caught_up.is_fired() && core.raft.borrow().caught_up() {
            tracing::debug!(core = core.id, "the log of the previous run is applied");
            core.caught_up.fire();
        }
        step_inbox(&core);
        let ready = core.raft.borrow().has_ready();
        if !ready {
            if stop.is_fired() {
                return Ok(());
            }
            let wait = TICK.saturating_sub(last_tick.elapsed());
            let inbox = async {
                match &core.transport {
                    Some(t) => t.inbox().ready().await,
                    None => future::pending::<()>().await,
                }
            };
            future::or(
                async {
                    notify.recv().await;
                },
                future::or(inbox, glommio::timer::sleep(wait)),
            )
            .await;
            step_inbox(&core);
        }
        if last_tick.elapsed() >= TICK {
            core.raft.borrow_mut().tick();
            last_tick = Instant::now();
            if core.node.cluster.is_some() {
                // At once when leadership changed here, else periodically.
                let now_leading = {
                    let raft = core.raft.borrow();
                    raft.regions().filter(|r| raft.is_leader(r.id)).count()
                };
                if now_leading != leading
                    || last_report.elapsed() >= crate::cluster::REGION_REPORT_INTERVAL
                {
                    leading = report_leaders(&core);
                    last_report = Instant::now();
                }
            }
        }
        let mut result = run_round(&core).await;
        export_snapshots(&core);
        if result.is_ok() && last_compact.elapsed() >= LOG_COMPACT_INTERVAL {
            last_compact = Instant::now();
            result = compact_log(&core).await;
        }
        if result.is_ok() && relaxed && last_sync.elapsed() >= RELAXED_SYNC_INTERVAL {
            // Relaxed writes are acknowledged before their fdatasync: bound the window in
            // time (the engine bounds it in bytes).
            last_sync = Instant::now();
            let db = core.db.clone();
            result = blocking(move || db.sync_logs())
                .await
                .map_err(|e| nokv_raft::Error::engine("sync relaxed writes", e));
        }
        if let Err(source) = result {
            if matches!(
                source,
                nokv_raft::Error::Engine { .. } | nokv_raft::Error::Apply { .. }
            ) {
                // The engine failed to write (a full disk, an IO error): the raft log cannot
                // grow here. Refuse writes, keep serving reads, until a restart; a full
                // disk would make a restarting node fail its recovery anyway.
                core.refuse_writes(&source);
                stop.wait().await;
                return Ok(());
            }
            // A broken invariant of the raft layer: stop the whole node (exit status 1)
            // rather than leave writes hanging.
            tracing::error!(core = core.id, error = %source, "raft driver failed; stopping the node");
            core.node.failed.store(true, Ordering::SeqCst);
            core.node.shutdown.store(true, Ordering::SeqCst);
            return Err(Error::Raft {
                core: core.id,
                source,
            });
        }
        // Let connections run (and propose more) before the next round.
        glommio::yield_if_needed().await;
    }
}

/// Runs the snapshot exports raft asked for on the blocking pool (one task each) and
/// hands each back to raft, which then sends it (see `crate::snapship`).
fn export_snapshots(core: &Rc<Core>) {
    let tasks = core.raft.borrow_mut().take_snapshot_tasks();
    for task in tasks {
        let c = core.clone();
        glommio::spawn_local(async move {
            let db = c.db.clone();
            let (task, result) = blocking(move || {
                let r = task.run(&db);
                (task, r)
            })
            .await;
            c.raft.borrow_mut().snapshot_exported(task, result);
            let _ = c.notify.try_send(());
        })
        .detach();
    }
}

/// One poll round: apply what is committed (then answer its proposers), then write the
/// new entries and hard states (one WAL write + fdatasync), both on the blocking pool.
async fn run_round(core: &Rc<Core>) -> std::result::Result<(), nokv_raft::Error> {
    let mut out = NodeOutbox::default();
    let round = core.raft.borrow_mut().begin_round(&mut out);
    let splits = std::mem::take(&mut out.splits);
    let merges = std::mem::take(&mut out.merges);
    send_messages(core, out);
    let Some(mut round) = round? else {
        split::applied(core, splits);
        merge::applied(core, merges);
        return Ok(());
    };
    if let Some(batch) = round.take_apply() {
        let db = core.db.clone();
        let (applied, checks) = blocking(move || {
            let mut sink = RoundApply {
                db: &db,
                held: RefCell::new(HeldWrites::default()),
                checks: Vec::new(),
            };
            let applied = batch.run_with(&db, &mut sink);
            (applied, sink.checks)
        })
        .await;
        admin::hash_checks(core, checks);
        let applied = match applied {
            Ok(a) => a,
            Err(e) => return Err(abandon_round(core, round, e)),
        };
        // Applied to the engine (unlogged: the raft log holds it), nobody answered yet.
        nokv::crash_point!("apply::before_reply");
        core.raft
            .borrow_mut()
            .finish_apply(&mut round, applied, |token: Waiter, reply| {
                token.answer(reply);
            });
    }
    // The new regions' data (their parents' entries up to the split) is in the engine now;
    // so is every entry of a merged target before its merge.
    split::applied(core, splits);
    merge::applied(core, merges);
    let written = match round.take_append() {
        None => Ok(None),
        Some(batch) if core.node.knobs.inline_wal => {
            // Negative control (debug knob): the assertion must stop this.
            batch.write(&core.db).map(Some)
        }
        Some(batch) => {
            let db = core.db.clone();
            blocking(move || batch.write(&db)).await.map(Some)
        }
    };
    let segment = match written {
        Ok(s) => s,
        Err(e) => return Err(abandon_round(core, round, e)),
    };
    core.metrics.round(&round.stats());
    let mut out = NodeOutbox::default();
    core.raft
        .borrow_mut()
        .finish_append(round, segment, &mut out);
    send_messages(core, out);
    admin::reap_removed(core);
    Ok(())
}

/// A round that failed with `error`: its proposers get the `-MISCONF` reply (the
/// driver then refuses every other write, see [`Core::refuse_writes`]).
fn abandon_round(
    core: &Rc<Core>,
    round: nokv_raft::Round<Waiter>,
    error: nokv_raft::Error,
) -> nokv_raft::Error {
    let reply = write_failed_reply(core.id, &error);
    core.raft
        .borrow_mut()
        .abandon_all(Some(round), |t| refuse(t, &reply));
    error
}

/// Log truncation (see `RaftCore::plan_checkpoint`): engine steps on the blocking pool.
async fn compact_log(core: &Rc<Core>) -> std::result::Result<(), nokv_raft::Error> {
    let ids: Vec<u64> = core.raft.borrow().regions().map(|r| r.id).collect();
    let db = core.db.clone();
    let durable = blocking(move || nokv_raft::durable_applied(&db, &ids)).await;
    let Some(plan) = core.raft.borrow().plan_checkpoint(&durable) else {
        return Ok(());
    };
    let db = core.db.clone();
    let (plan, segment) = blocking(move || {
        let segment = plan.write(&db);
        (plan, segment)
    })
    .await;
    let Some(floor) = core.raft.borrow_mut().finish_checkpoint(plan, segment?) else {
        return Ok(());
    };
    let db = core.db.clone();
    blocking(move || db.set_opaque_floor(Some(floor)))
        .await
        .map_err(|e| nokv_raft::Error::engine("release raft log segments", e))
}

/// Runs work for a region this core owns: its reply, or the work back when another
/// store leads the region.
async fn execute_local(core: &Rc<Core>, work: Work) -> Answer {
    match work {
        Work::Read { region, op } => {
            // The keys' list is built once for both the check and the load sample.
            let stale = moved_away(core, region) || {
                let keys = route::read_keys(&op);
                let holds =
                    (core.raft.borrow().region(region)).is_none_or(|d| split::holds(d, &keys));
                if holds {
                    core.loads.record(region, &keys, 0);
                }
                !holds
            };
            if stale {
                return Answer::Stale(Work::Read { region, op });
            }
            if core.node.cluster.is_some() {
                match confirm_leadership(core, region).await {
                    Ok(()) => {}
                    Err(Refusal::Reply(reply)) => return Answer::Reply(reply),
                    Err(Refusal::Elsewhere) => return elsewhere(core, Work::Read { region, op }),
                }
            }
            match read_local(core, region, op).await {
                Ok(reply) => Answer::Reply(reply),
                Err(op) => Answer::Stale(Work::Read { region, op }),
            }
        }
        Work::Write { region, cmd } => match propose_local(core, region, cmd) {
            Proposal::Waiting(rx) => Answer::Reply(forward::await_write(core, rx).await),
            Proposal::Refused(reply) => Answer::Reply(reply),
            Proposal::Elsewhere(cmd) => elsewhere(core, Work::Write { region, cmd }),
            Proposal::Stale(cmd) => Answer::Stale(Work::Write { region, cmd }),
        },
        Work::Admin { region, args } => {
            Answer::Reply(admin::execute_region(core, region, args).await)
        }
        Work::Txn { region, req } => txn::execute(core, region, req).await,
    }
}

/// Whether `region` left this core (a move to another core, a merge into another
/// region): its work is planned again.
fn moved_away(core: &Core, region: u64) -> bool {
    core.raft.borrow().region(region).is_none()
        // A standalone store's region gone from its core moved or merged away (the
        // routes follow once the round that did it applied); in a cluster, a replica
        // removed from this store is led elsewhere.
        && (core.node.cluster.is_none()
            || core
                .routes()
                .core_of(region)
                // None: merged into another region.
                .is_none_or(|c| c != core.id && c != layout::NOT_HERE))
}

/// Reads from a region of this core, once a cluster read confirmed leadership; the read
/// back when the region no longer holds its keys (a split or merge re-applied while a
/// restarted core caught up): planned again.
async fn read_local(
    core: &Rc<Core>,
    region: u64,
    op: ReadOp,
) -> std::result::Result<Reply, ReadOp> {
    // In a cluster the leadership check covers this: a lease read needs the region
    // applied up to its commit index, a ReadIndex read up to the confirmed one (and a
    // restarted replica's log may be cut by the new leader, so the length it started
    // with is no target).
    if !core.caught_up.is_fired() && core.node.cluster.is_none() {
        // After a restart, entries of acknowledged writes may still be re-applying.
        let caught_up = future::or(
            async {
                core.caught_up.wait().await;
                true
            },
            future::or(
                async {
                    core.stop.wait().await;
                    false
                },
                async {
                    core.failed.wait().await;
                    false
                },
            ),
        )
        .await;
        if !caught_up {
            return Ok(Reply::error(if core.failed.is_fired() {
                "ERR read refused: the core could not re-apply its log after a write failure (docs/redis.md, \"Disk failures\")"
            } else {
                "ERR read abandoned: the core is stopping"
            }));
        }
    }
    let now = now_ms();
    let desc = {
        let raft = core.raft.borrow();
        let Some(desc) = raft
            .region(region)
            .filter(|d| split::holds(d, &route::read_keys(&op)))
        else {
            return Err(op);
        };
        // Single replica: the leader's engine is the only copy, and a write is
        // answered only after it is applied, so reading it directly is linearizable.
        // First from memory (memtables, block cache), on this thread.
        if core.node.knobs.inline_reads {
            // Negative control (debug knob): the assertion must stop this.
            return Ok(exec::read(&op, &RegionView::read(&core.db, desc), now));
        }
        if let Some(reply) = exec::try_read(&op, &RegionView::read_cached(&core.db, desc), now) {
            return Ok(reply);
        }
        // Pinned now, while the region is known to be here: a move to another core or a
        // merge may delete this copy before the read below runs.
        (desc.clone(), core.db.snapshot())
    };
    // It needs disk IO (a block-cache miss, a value-log read): on the blocking pool.
    let Ok(_turn) = core.blocking_reads.acquire_permit(1).await else {
        return Ok(Reply::error("ERR read abandoned: the core is stopping"));
    };
    if let Some(hold) = &core.node.knobs.hold_disk_reads_while {
        if hold.exists() {
            tracing::warn!(
                region,
                "NOKV_DEBUG_HOLD_DISK_READS_WHILE: a disk read is held"
            );
        }
        // Debug knob: bounded by the test that removes the file, or the core's stop.
        while hold.exists() && !core.stop.is_fired() {
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
    }
    let db = core.db.clone();
    let (desc, snapshot) = desc;
    if core.node.knobs.read_unpinned {
        // Negative control (debug knob): a copy deleted meanwhile reads as empty.
        return Ok(blocking(move || exec::read(&op, &RegionView::read(&db, &desc), now)).await);
    }
    Ok(blocking(move || exec::read(&op, &RegionView::read_at(&db, &desc, snapshot), now)).await)
}

/// Why this core does not run a region's work.
enum Refusal {
    /// The reply to give instead.
    Reply(Reply),
    /// Another store leads the region (or none is known, or the replica left this store).
    Elsewhere,
}

/// Before a read in a cluster: the local replica must lead `region` and its data be
/// current, through the leader lease (at once) or a ReadIndex round (waits for a quorum's
/// confirmation and the apply up to its index).
async fn confirm_leadership(core: &Rc<Core>, region: u64) -> std::result::Result<(), Refusal> {
    let (tx, rx) = oneshot::channel();
    let asked = core
        .raft
        .borrow_mut()
        .read(region, Instant::now(), Waiter::Read(tx));
    match asked {
        Ok(ReadPath::Now(_)) => Ok(()),
        Ok(ReadPath::Waiting) => {
            let _ = core.notify.try_send(());
            match rx.await {
                Some(Ok(())) => Ok(()),
                // Leadership was lost during the round: the region is led elsewhere now.
                Some(Err(_)) => Err(Refusal::Elsewhere),
                None => Err(Refusal::Reply(Reply::error(
                    "ERR read abandoned: the core is stopping",
                ))),
            }
        }
        // A follower, or the replica was removed from this store while running.
        Err((nokv_raft::Error::NotLeader { .. } | nokv_raft::Error::RegionNotFound(_), _)) => {
            Err(Refusal::Elsewhere)
        }
        Err((nokv_raft::Error::Busy { .. }, _)) => Err(Refusal::Reply(Reply::error(BUSY))),
        Err((e, _)) => Err(Refusal::Reply(Reply::error(format!("ERR {e}")))),
    }
}

/// What proposing a write on this core gave.
enum Proposal {
    /// Proposed: the receiver yields its reply once applied.
    Waiting(oneshot::Receiver<Reply>),
    /// Refused with this reply.
    Refused(Reply),
    /// Another store leads the region: the write back, unrun.
    Elsewhere(WriteCommand),
    /// The region no longer holds the keys (split): the write back, unrun.
    Stale(WriteCommand),
}

/// Proposes a write to a region of this core.
fn propose_local(core: &Rc<Core>, region: u64, cmd: WriteCommand) -> Proposal {
    // A core whose engine failed a write refuses writes until restart (-MISCONF).
    if let Some(reply) = core.write_refusal() {
        return Proposal::Refused(Reply::error(reply));
    }
    // Queueing behind a stopped engine would only pile writes up: refuse them.
    if core.db.write_stall() == WriteStall::Stop {
        return Proposal::Refused(Reply::error(WRITE_STALLED));
    }
    // Planned with routes from before a split (the keys now belong to another region) or
    // a move (the region is on another core now).
    let keys = cmd.op.keys();
    if moved_away(core, region)
        || core
            .raft
            .borrow()
            .region(region)
            .is_some_and(|d| !split::holds(d, &keys))
    {
        return Proposal::Stale(cmd);
    }
    let data = cmd.encode();
    core.loads.record(region, &keys, data.len());
    let (tx, rx) = oneshot::channel();
    let proposed = core
        .raft
        .borrow_mut()
        .propose(region, data, Waiter::Write(tx));
    core.metrics.proposal(proposed.is_ok());
    if let Err((e, _)) = proposed {
        return match e {
            nokv_raft::Error::Busy { .. } => Proposal::Refused(Reply::error(BUSY)),
            // A split on its way or a move: planned again once it is done.
            nokv_raft::Error::Paused { .. } => Proposal::Stale(cmd),
            nokv_raft::Error::NotTaken { .. } => {
                Proposal::Refused(Reply::error(not_written_reply(&e)))
            }
            nokv_raft::Error::NotLeader { .. } => Proposal::Elsewhere(cmd),
            // The replica was removed from this store while running.
            nokv_raft::Error::RegionNotFound(_) if core.node.cluster.is_some() => {
                Proposal::Elsewhere(cmd)
            }
            e => Proposal::Refused(Reply::error(format!("ERR {e}"))),
        };
    }
    let _ = core.notify.try_send(());
    Proposal::Waiting(rx)
}

/// Runs work on the owning core of this store: inline here, or over the mesh. Work of a
/// region this store holds no replica of comes back as [`Answer::Elsewhere`].
async fn execute(core: &Rc<Core>, target: usize, work: Work) -> Answer {
    let region = work.region();
    // A replica created here while running (the route table says NOT_HERE).
    let target = match core.node.hosted_core(region) {
        Some(c) if target == layout::NOT_HERE => c,
        _ => target,
    };
    if target == core.id {
        return execute_local(core, work).await;
    }
    if target == layout::NOT_HERE {
        return elsewhere(core, work);
    }
    if core.waiting.borrow().len() >= MAX_REMOTE_WAITING {
        return Answer::Reply(Reply::error(BUSY));
    }
    let id = core.next_id.get();
    core.next_id.set(id + 1);
    let (tx, rx) = oneshot::channel();
    core.waiting.borrow_mut().insert(id, tx);
    let req = Request {
        from: core.id,
        id,
        work,
    };
    // Never await a full channel toward another core: two cores doing that to each
    // other would deadlock. Answer busy instead.
    if core.requests.try_send_to(target, req).is_err() {
        core.waiting.borrow_mut().remove(&id);
        return Answer::Reply(Reply::error(BUSY));
    }
    rx.await.unwrap_or_else(|| {
        Answer::Reply(Reply::error("ERR request abandoned: the core is stopping"))
    })
}

/// Runs a plan's parts concurrently and merges their replies.
async fn run_plan(core: &Rc<Core>, plan: Plan) -> Reply {
    let Plan { mut parts, merge } = plan;
    if parts.len() == 1 {
        if let Some((target, work)) = parts.pop() {
            let reply = forward::run(core, target, work).await;
            return route::merge(merge, vec![reply]);
        }
    }
    let tasks: Vec<_> = parts
        .into_iter()
        .map(|(target, work)| {
            let c = core.clone();
            glommio::spawn_local(async move { forward::run(&c, target, work).await })
        })
        .collect();
    let mut replies = Vec::with_capacity(tasks.len());
    for t in tasks {
        replies.push(t.await);
    }
    route::merge(merge, replies)
}

/// What [`try_inline`] made of a plan.
enum Inline {
    /// Answered on the spot.
    Reply(Reply),
    /// Proposed to a region of this core: the reply comes once it is applied (the plan,
    /// to run again if a key is locked).
    Proposed(oneshot::Receiver<Reply>, Plan),
}

/// Runs a plan of one part on this core without a task of its own: a read served from
/// memory, a write proposed. `Err` gives the plan back when it needs more (other cores,
/// several parts, disk IO, a core still re-applying its log).
fn try_inline(core: &Rc<Core>, plan: Plan) -> std::result::Result<Inline, Plan> {
    let local = plan.parts.len() == 1
        && matches!(plan.merge, route::Merge::Single)
        && plan.parts[0].0 == core.id;
    if !local {
        return Err(plan);
    }
    match &plan.parts[0].1 {
        Work::Read { region, op } => {
            if !core.caught_up.is_fired()
                || core.node.knobs.inline_reads
                || core.node.cluster.is_some()
            {
                // In a cluster a read first confirms leadership (lease or ReadIndex).
                return Err(plan);
            }
            let reply = {
                let raft = core.raft.borrow();
                let Some(desc) = raft.region(*region) else {
                    return Err(plan);
                };
                let keys = route::read_keys(op);
                if !split::holds(desc, &keys) {
                    // Planned before a split: the task path plans it again.
                    return Err(plan);
                }
                exec::try_read(op, &RegionView::read_cached(&core.db, desc), now_ms())
                    .map(|reply| (reply, keys))
            };
            match reply {
                // A locked key: the task path resolves the lock.
                Some((reply, _)) if Locked::of(&reply).is_some() => Err(plan),
                Some((reply, keys)) => {
                    core.loads.record(*region, &keys, 0);
                    Ok(Inline::Reply(reply))
                }
                None => Err(plan),
            }
        }
        Work::Admin { .. } | Work::Txn { .. } => Err(plan),
        Work::Write { .. } => {
            // Kept to run again if apply finds a key locked (see `settle`).
            let again = plan.clone();
            let Plan { mut parts, .. } = plan;
            let Some((_, Work::Write { region, cmd })) = parts.pop() else {
                return Err(Plan {
                    parts,
                    merge: route::Merge::Single,
                });
            };
            match propose_local(core, region, cmd) {
                Proposal::Waiting(rx) => Ok(Inline::Proposed(rx, again)),
                Proposal::Refused(reply) => Ok(Inline::Reply(reply)),
                // Led elsewhere: the task path forwards it (or answers -MOVED); planned
                // before a split: the task path plans it again.
                Proposal::Elsewhere(cmd) | Proposal::Stale(cmd) => Err(Plan {
                    parts: vec![(core.id, Work::Write { region, cmd })],
                    merge: route::Merge::Single,
                }),
            }
        }
    }
}

/// An action of a connection that is still running.
enum Inflight {
    /// A write proposed inline (see [`try_inline`]), and its plan.
    Proposed(nokv_gateway::Ticket, oneshot::Receiver<Reply>, Plan),
    /// Anything else, in a task of its own (its reply already charged).
    Task(glommio::Task<(nokv_gateway::Ticket, Reply)>),
}

/// Runs an action's `work` in a task of its own, its reply charged to the connection.
fn task(
    mem: &Rc<ConnMemory>,
    ticket: nokv_gateway::Ticket,
    work: impl std::future::Future<Output = Reply> + 'static,
) -> Inflight {
    let m = mem.clone();
    Inflight::Task(glommio::spawn_local(async move {
        let reply = work.await;
        (ticket, memory::charge(&m, reply))
    }))
}

/// Waits for every running action, in order, and hands their replies to the session.
async fn settle(
    core: &Rc<Core>,
    inflight: &mut Vec<(Inflight, bool)>,
    session: &mut Session,
    mem: &ConnMemory,
) {
    for (f, _) in inflight.drain(..) {
        let (ticket, reply) = match f {
            Inflight::Proposed(ticket, rx, plan) => {
                let mut reply = forward::await_write(core, rx).await;
                if Locked::of(&reply).is_some() {
                    reply = atomic::run_resolving(core, plan, Some(reply)).await;
                }
                (ticket, memory::charge(mem, reply))
            }
            Inflight::Task(t) => t.await,
        };
        session.complete(ticket, reply);
    }
}

/// Evaluates every action the buffered input yields. A read waits for the writes
/// before it on this connection, so a client always reads its own writes; writes
/// (and reads with no write before them) run concurrently. Single-region work of this
/// core runs inline (reads from memory answered at once, writes proposed); the rest
/// gets a task.
async fn drive(core: &Rc<Core>, session: &mut Session, mem: &Rc<ConnMemory>) {
    let mut inflight: Vec<(Inflight, bool)> = Vec::new();
    while let Some(action) = session.next_action(now_ms()) {
        let is_write = matches!(action, Action::Write { .. });
        if !is_write && inflight.iter().any(|(_, w)| *w) {
            settle(core, &mut inflight, session, mem).await;
        }
        let c = core.clone();
        let (ticket, plan) = match action {
            Action::Read { ticket, op } => match atomic::driven_exists(core, &op) {
                Some(keys) => {
                    let work = async move { atomic::exists(&c, keys).await };
                    inflight.push((task(mem, ticket, work), false));
                    continue;
                }
                None => (ticket, Ok(route::plan_read(&core.routes(), op))),
            },
            Action::Write { ticket, cmd } if atomic::driven(core, &cmd) => {
                let work = async move { atomic::drive(&c, cmd).await };
                inflight.push((task(mem, ticket, work), true));
                continue;
            }
            Action::Write { ticket, cmd } if atomic::split_block(core, &cmd) => {
                let work = async move { atomic::run_split_block(&c, cmd).await };
                inflight.push((task(mem, ticket, work), true));
                continue;
            }
            Action::Write { ticket, cmd } => (ticket, route::plan_write(&core.routes(), cmd)),
            Action::Admin { ticket, args } => {
                let work = async move { admin::execute(&c, args).await };
                // Ordered like a write: later reads of this connection wait for it.
                inflight.push((task(mem, ticket, work), true));
                continue;
            }
        };
        let plan = match plan {
            Ok(plan) => plan,
            Err(reply) => {
                session.complete(ticket, memory::charge(mem, reply));
                continue;
            }
        };
        match try_inline(core, plan) {
            // Each reply is charged to the connection as it arrives (see memory::charge).
            Ok(Inline::Reply(reply)) => session.complete(ticket, memory::charge(mem, reply)),
            Ok(Inline::Proposed(rx, plan)) => {
                inflight.push((Inflight::Proposed(ticket, rx, plan), is_write))
            }
            Err(plan) => {
                let c = core.clone();
                let work = async move { atomic::run_resolving(&c, plan, None).await };
                inflight.push((task(mem, ticket, work), is_write));
            }
        }
    }
    settle(core, &mut inflight, session, mem).await;
}

async fn serve_connection(core: &Rc<Core>, stream: TcpStream) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let local = stream
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let _ = stream.set_nodelay(true);
    let mut stream = match crate::tls::ClientStream::new(stream, core.node.tls.as_ref()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "TLS session not started");
            return;
        }
    };
    let mut session = Session::new(core.node.gateway.clone(), peer, local, now_ms());
    // What this connection holds, charged against the store's client share.
    let mem = core.node.client_memory.connection();
    if memory::evict_if_over(&mut session, &mem) {
        return;
    }
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        if core.stop.is_fired() {
            return;
        }
        let read = future::or(async { Some(stream.read(&mut buf).await) }, async {
            core.stop.wait().await;
            None
        })
        .await;
        let n = match read {
            None | Some(Err(_)) | Some(Ok(0)) => return,
            Some(Ok(n)) => n,
        };
        if let Err(e) = session.feed(&buf[..n]) {
            tracing::debug!(error = %e, "closing connection");
            return;
        }
        if !mem.sync(&session, 0) && memory::evict_if_over(&mut session, &mem) {
            return;
        }
        // Each round parses at most the per-read budget; bounded by the input.
        loop {
            drive(core, &mut session, &mem).await;
            let out = session.take_output();
            if session.state() == State::CloseNow {
                return;
            }
            if !mem.sync(&session, out.capacity()) && memory::evict_if_over(&mut session, &mem) {
                return;
            }
            if !out.is_empty() && stream.write_all(&out).await.is_err() {
                return;
            }
            drop(out);
            mem.sync(&session, 0); // shrinks: cannot fail
            if session.state() == State::CloseAfterFlush {
                stream.close().await;
                return;
            }
            if session.budget_exhausted() {
                session.resume();
            } else {
                break;
            }
        }
    }
}

/// Publishes this core's queue depths every [`SAMPLE_INTERVAL`] until it stops.
async fn sample_core(core: Rc<Core>) {
    while !core.stop.is_fired() {
        let sample = {
            let raft = core.raft.borrow();
            CoreSample {
                connections: core.connections.get(),
                handlers: core.handlers.get(),
                waiting: core.waiting.borrow().len(),
                pending: raft.pending(),
                leaders: raft.regions().filter(|r| raft.is_leader(r.id)).count(),
                regions: raft.regions().count(),
                hibernating: raft.hibernating(),
            }
        };
        core.metrics.sample(&sample);
        future::or(core.stop.wait(), glommio::timer::sleep(SAMPLE_INTERVAL)).await;
    }
}

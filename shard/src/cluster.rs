//! The store in a cluster (`--coordinator`): registration with the coordinator, the
//! cluster's bootstrap, the replicas this store holds (and on which core), the directory of
//! the other stores' addresses, and the heartbeat thread.
//!
//! Everything here that talks to the coordinator blocks (`CoordClient` is blocking), so it
//! runs on the main thread before the executors start, or on the heartbeat thread
//! (`nokv-heartbeat`, a std thread). The cores hand their region heartbeats to that thread
//! over a bounded channel (`try_send`: a full channel drops the report, the next one
//! follows within [`REGION_REPORT_INTERVAL`]).
//!
//! The coordinator's scheduler answers a region heartbeat with at most one operator for
//! the region (a membership change or leader transfer); the heartbeat thread hands it to
//! the core that leads the region through an [`OperatorQueue`], which the cores poll.

use crate::config::{Settings, REGIONS_PER_CORE};
use crate::error::{Error, Result};
use crate::layout;
use nokv_coordinator::proto::{
    Operator, Region, RegionHeartbeat, Route, StoreMeta, StoreState, StoreStats,
};
use nokv_coordinator::{ClientOptions, CoordClient};
use nokv_raft::transport::StaticResolver;
use nokv_raft::RegionDescriptor;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// How often a core reports the regions it leads (also at once when that set changes).
pub const REGION_REPORT_INTERVAL: Duration = Duration::from_secs(2);
/// How often the store sends its own heartbeat (well under `--store-down-after`).
pub const STORE_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
/// How often the store refreshes the other stores' addresses.
pub const DIRECTORY_REFRESH_INTERVAL: Duration = Duration::from_secs(2);
/// Region reports waiting for the heartbeat thread, over all cores.
pub const REPORT_QUEUE: usize = 4096;
/// Pause between two looks at a cluster that is not bootstrapped yet.
const BOOTSTRAP_POLL: Duration = Duration::from_millis(200);
/// Operators waiting for one core (more are dropped: the coordinator sends them again).
pub const OPERATOR_QUEUE: usize = 64;
/// The same operator (re-sent with every heartbeat until done) is handed to a core again
/// only after this long (its previous run may still be waiting for the change).
pub const OPERATOR_RERUN_AFTER: Duration = Duration::from_secs(3);
/// How often a core looks for operators.
pub const OPERATOR_POLL: Duration = Duration::from_millis(200);

/// The scheduler's operators on their way from the heartbeat thread to the cores: one
/// bounded queue per core (short critical sections, never held across a wait).
#[derive(Debug)]
pub struct OperatorQueue {
    cores: Vec<Mutex<VecDeque<Operator>>>,
}

impl OperatorQueue {
    /// Empty queues for `cores` cores.
    pub fn new(cores: usize) -> OperatorQueue {
        OperatorQueue {
            cores: (0..cores).map(|_| Mutex::new(VecDeque::new())).collect(),
        }
    }

    /// Queues `op` for `core`; false when the core is unknown or its queue is full.
    pub fn push(&self, core: usize, op: Operator) -> bool {
        let Some(q) = self.cores.get(core) else {
            return false;
        };
        let Ok(mut q) = q.lock() else {
            return false;
        };
        if q.len() >= OPERATOR_QUEUE {
            return false;
        }
        q.push_back(op);
        true
    }

    /// Takes every operator queued for `core`.
    pub fn take(&self, core: usize) -> Vec<Operator> {
        match self.cores.get(core).map(|q| q.lock()) {
            Some(Ok(mut q)) => q.drain(..).collect(),
            _ => Vec::new(),
        }
    }
}

/// A core's report of a region it leads, for the coordinator.
#[derive(Debug, Clone)]
pub struct RegionReport {
    /// The region as the leader knows it.
    pub desc: RegionDescriptor,
    /// The leader's peer id.
    pub leader_peer_id: u64,
    /// The core holding the leader (the coordinator keeps each replica's core).
    pub core: u32,
    /// The replica whose core `core` is, when not the leader: a replica created on this
    /// store reports its core (the descriptor is then the coordinator's own).
    pub core_peer: Option<u64>,
    /// The region's data size as the leader last measured it (`None`: not measured).
    pub size_bytes: Option<u64>,
    /// Requests per second the leader served over its last load window (0: none).
    pub requests_per_sec: u64,
}

/// The other stores' addresses, refreshed from the coordinator: RPC addresses for the
/// transport (a [`StaticResolver`]) and Redis addresses for `-MOVED` replies. Written by the
/// heartbeat thread every few seconds; read briefly on the executors (the lock is never
/// held across anything that waits).
#[derive(Debug, Default)]
pub struct Directory {
    redis: RwLock<HashMap<u64, String>>,
    resolver: Arc<StaticResolver>,
    /// Every region as the coordinator routes it, with its leader's store (refreshed
    /// with the addresses; empty until the first refresh).
    regions: RwLock<HashMap<u64, (RegionDescriptor, Option<u64>)>>,
    /// Each replica's core as the coordinator records it (peer id -> core).
    peer_cores: RwLock<HashMap<u64, u32>>,
}

impl Directory {
    /// The resolver the transport asks for store addresses.
    pub fn resolver(&self) -> Arc<StaticResolver> {
        self.resolver.clone()
    }

    /// The Redis address of store `store_id`, if known.
    pub fn redis_addr(&self, store_id: u64) -> Option<String> {
        self.redis.read().ok()?.get(&store_id).cloned()
    }

    /// The coordinator's descriptor of `region` and its leader's store, as of the last
    /// refresh.
    pub fn region(&self, region: u64) -> Option<(RegionDescriptor, Option<u64>)> {
        self.regions.read().ok()?.get(&region).cloned()
    }

    /// The core the coordinator records for replica `peer` (refreshed with the routes).
    pub fn peer_core(&self, peer: u64) -> Option<u32> {
        self.peer_cores.read().ok()?.get(&peer).copied()
    }

    /// Replaces the regions with the coordinator's `routes`.
    pub fn set_routes(&self, routes: &[Route]) {
        let cores = routes
            .iter()
            .filter_map(|r| r.region.as_ref())
            .flat_map(|r| r.peers.iter())
            .filter_map(|p| p.core.map(|c| (p.id, c)))
            .collect();
        if let Ok(mut m) = self.peer_cores.write() {
            *m = cores;
        }
        let map = routes
            .iter()
            .filter_map(|r| {
                let region = r.region.as_ref()?;
                let leader = region
                    .peers
                    .iter()
                    .find(|p| p.id == r.leader_peer_id)
                    .map(|p| p.store_id);
                Some((region.id, (RegionDescriptor::from(region), leader)))
            })
            .collect();
        if let Ok(mut m) = self.regions.write() {
            *m = map;
        }
    }

    /// Records the addresses of `stores`.
    pub fn update<'a>(&self, stores: impl IntoIterator<Item = &'a StoreMeta>) {
        for s in stores {
            match s.rpc_addr.parse::<SocketAddr>() {
                Ok(a) => self.resolver.set(s.id, a),
                Err(e) => {
                    tracing::warn!(store = s.id, addr = %s.rpc_addr, error = %e, "unusable rpc address")
                }
            }
            if let Ok(mut m) = self.redis.write() {
                m.insert(s.id, s.redis_addr.clone());
            }
        }
    }
}

/// What a store learned when it joined the cluster.
pub struct Joined {
    /// This store's id (persisted in `<workdir>/STORE`).
    pub store_id: u64,
    /// The coordinator client (blocking; the heartbeat thread takes it).
    pub client: CoordClient,
    /// Every region of the cluster as the coordinator routes it (empty when the
    /// coordinator could not be reached at a restart).
    pub routes: Vec<Route>,
    /// Addresses of the other stores.
    pub directory: Arc<Directory>,
}

impl Joined {
    /// The regions with a replica on this store, with their core.
    pub fn local_regions(&self, cores: usize) -> Result<Vec<(RegionDescriptor, usize)>> {
        let mut out = Vec::new();
        for route in &self.routes {
            let Some(region) = &route.region else {
                continue;
            };
            let Some(peer) = region.peers.iter().find(|p| p.store_id == self.store_id) else {
                continue;
            };
            let core = peer.core.unwrap_or(0) as usize;
            if core >= cores {
                return Err(Error::Cluster(format!(
                    "region {} is placed on core {core} of this store, which has {cores} cores",
                    region.id
                )));
            }
            out.push((RegionDescriptor::from(region), core));
        }
        Ok(out)
    }

    /// Each replica's core on its store (peer id -> core), for addressing raft messages.
    pub fn peer_cores(&self) -> HashMap<u64, u32> {
        self.regions()
            .flat_map(|r| r.peers.iter())
            .map(|p| (p.id, p.core.unwrap_or(0)))
            .collect()
    }

    /// For every region: the store the coordinator names as its leader (else its first
    /// replica's store).
    pub fn leader_stores(&self) -> HashMap<u64, u64> {
        self.routes
            .iter()
            .filter_map(|r| {
                let region = r.region.as_ref()?;
                let leader = region
                    .peers
                    .iter()
                    .find(|p| p.id == r.leader_peer_id)
                    .or(region.peers.first())?;
                Some((region.id, leader.store_id))
            })
            .collect()
    }

    fn regions(&self) -> impl Iterator<Item = &Region> {
        self.routes.iter().filter_map(|r| r.region.as_ref())
    }
}

fn coord_err(op: &'static str) -> impl FnOnce(nokv_coordinator::Error) -> Error {
    move |source| Error::Coordinator { op, source }
}

/// Every route, in key order (several scans when there are more than one answer holds).
fn scan_all(client: &CoordClient) -> nokv_coordinator::Result<Vec<Route>> {
    let mut out: Vec<Route> = Vec::new();
    let mut start = Vec::new();
    // Bounded: each scan moves past at least one region, and the key space is finite.
    loop {
        let batch = client.scan_regions(&start, b"", 0)?;
        let before = out.len();
        for r in batch {
            if let Some(region) = &r.region {
                if out
                    .iter()
                    .any(|o| o.region.as_ref().map(|x| x.id) == Some(region.id))
                {
                    continue;
                }
            }
            out.push(r);
        }
        let end = out
            .last()
            .and_then(|r| r.region.as_ref())
            .map(|r| r.end_key.clone());
        match end {
            Some(end) if !end.is_empty() && out.len() > before => start = end,
            _ => return Ok(out),
        }
    }
}

/// The split keys of a new cluster: the Redis hash-slot space cut into `regions` equal
/// ranges, as a standalone store does (`layout::bootstrap_regions`).
pub fn split_keys(regions: usize) -> Vec<Vec<u8>> {
    layout::slot_split_keys(regions)
}

/// Joins the cluster: registers the store (id 0 the first time; the workdir's id after),
/// waits until the cluster is bootstrapped, bootstrapping it itself once enough stores are
/// up, and reads the routes. `known_id` is the workdir's store id (None: a new store).
/// At a restart an unreachable coordinator is not fatal: the store starts from its local
/// regions (the heartbeat thread keeps trying).
pub fn join(
    settings: &Settings,
    known_id: Option<u64>,
    cores: usize,
    rpc: SocketAddr,
    redis: SocketAddr,
    shutdown: &AtomicBool,
) -> Result<Joined> {
    let client = CoordClient::new(
        settings.coordinator.clone(),
        settings.cluster_id,
        ClientOptions::default(),
    )
    .map_err(coord_err("connect"))?;
    let meta = StoreMeta {
        id: known_id.unwrap_or(0),
        rpc_addr: rpc.to_string(),
        redis_addr: redis.to_string(),
        cores: cores as u32,
        version: env!("CARGO_PKG_VERSION").to_string(),
        labels: settings.labels.clone(),
        ..Default::default()
    };
    let directory = Arc::new(Directory::default());
    let store_id = match (client.register_store(meta.clone()), known_id) {
        (Ok(id), _) => id,
        (Err(e), Some(id)) => {
            tracing::warn!(error = %e, store = id, "coordinator unreachable at start: serving the local regions; the heartbeat thread keeps trying");
            return Ok(Joined {
                store_id: id,
                client,
                routes: Vec::new(),
                directory,
            });
        }
        (Err(e), None) => return Err(coord_err("register the store")(e)),
    };
    if let Some(id) = known_id {
        if id != store_id {
            return Err(Error::Cluster(format!(
                "the workdir is store {id} but the coordinator registered it as {store_id}"
            )));
        }
    }
    tracing::info!(store = store_id, "registered with the coordinator");
    let replicas = settings.bootstrap_replicas;
    let mut waiting_logged = false;
    // A coordinator call that fails for a reason that passes (a timeout under load, a
    // leader change) is tried again at the next poll: a store that gave up here would
    // leave the others waiting for it.
    let transient = |op: &'static str, e: nokv_coordinator::Error| -> Result<()> {
        if e.is_retryable() || matches!(e, nokv_coordinator::Error::DeadlineExceeded { .. }) {
            tracing::warn!(error = %e, op, "coordinator call failed while joining; trying again");
            Ok(())
        } else {
            Err(coord_err(op)(e))
        }
    };
    let routes = loop {
        if shutdown.load(Ordering::SeqCst) {
            return Err(Error::Cluster(
                "stopped while waiting for the cluster's bootstrap".into(),
            ));
        }
        let stores = match scan_all(&client) {
            Ok(routes) if !routes.is_empty() => break routes,
            Ok(_) => client.stores(),
            Err(e) => Err(e),
        };
        let stores = match stores {
            Ok(stores) => stores,
            Err(e) => {
                transient("scan regions and stores", e)?;
                std::thread::sleep(BOOTSTRAP_POLL);
                continue;
            }
        };
        let up = stores
            .iter()
            .filter(|s| {
                s.state == StoreState::Up as i32 && s.meta.as_ref().is_some_and(|m| m.cores > 0)
            })
            .count();
        if up >= replicas as usize {
            let keys = split_keys(cores * REGIONS_PER_CORE);
            match client.bootstrap(keys, replicas) {
                Ok(regions) => {
                    tracing::info!(
                        regions = regions.len(),
                        replicas,
                        "bootstrapped the cluster"
                    );
                    continue;
                }
                Err(nokv_coordinator::Error::AlreadyBootstrapped)
                | Err(nokv_coordinator::Error::NotEnoughStores { .. }) => {}
                Err(e) => transient("bootstrap", e)?,
            }
        } else if !waiting_logged {
            waiting_logged = true;
            tracing::info!(
                up,
                need = replicas,
                "waiting for stores to register before bootstrapping the cluster"
            );
        }
        std::thread::sleep(BOOTSTRAP_POLL);
    };
    let stores = client.stores().map_err(coord_err("list stores"))?;
    directory.update(stores.iter().filter_map(|s| s.meta.as_ref()));
    Ok(Joined {
        store_id,
        client,
        routes,
        directory,
    })
}

/// The running heartbeat thread; dropping it stops the thread and waits for it (at most
/// one coordinator call, bounded by the client's call timeout), so that it is not left
/// running while the process exits.
pub struct Heartbeats {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Heartbeats {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            if h.join().is_err() {
                tracing::warn!("the heartbeat thread panicked");
            }
        }
    }
}

/// Starts the heartbeat thread: store heartbeats, the cores' region reports, and the
/// directory's refresh, until the returned handle is dropped.
pub fn spawn_heartbeats(
    client: Arc<CoordClient>,
    store_id: u64,
    directory: Arc<Directory>,
    reports: Receiver<RegionReport>,
    operators: Arc<OperatorQueue>,
    routes: Arc<crate::layout::SharedRoutes>,
    engines: Vec<nokv::Db>,
) -> Result<Heartbeats> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let handle = std::thread::Builder::new()
        .name("nokv-heartbeat".into())
        .spawn(move || {
            let parts = HeartbeatParts {
                client,
                store_id,
                directory,
                reports,
                operators,
                routes,
                engines,
            };
            heartbeat_loop(parts, flag)
        })
        .map_err(|e| Error::Cluster(format!("start the heartbeat thread: {e}")))?;
    Ok(Heartbeats {
        stop,
        handle: Some(handle),
    })
}

/// What the heartbeat thread works with.
struct HeartbeatParts {
    client: Arc<CoordClient>,
    store_id: u64,
    directory: Arc<Directory>,
    reports: Receiver<RegionReport>,
    operators: Arc<OperatorQueue>,
    routes: Arc<crate::layout::SharedRoutes>,
    /// Every core's engine (the transaction GC's lock census and safe point).
    engines: Vec<nokv::Db>,
}

fn heartbeat_loop(parts: HeartbeatParts, shutdown: Arc<AtomicBool>) {
    let HeartbeatParts {
        client,
        store_id,
        directory,
        reports,
        operators,
        routes,
        engines,
    } = parts;
    let mut pending: HashMap<u64, RegionReport> = HashMap::new();
    // Operator id -> when it was last handed to a core.
    let mut handed: HashMap<u64, Instant> = HashMap::new();
    let mut leaders: HashMap<u64, u64> = HashMap::new();
    // The first store heartbeat goes out at once.
    let mut last_store = Instant::now()
        .checked_sub(STORE_HEARTBEAT_INTERVAL)
        .unwrap_or_else(Instant::now);
    let mut last_directory = Instant::now();
    while !shutdown.load(Ordering::SeqCst) {
        match reports.recv_timeout(Duration::from_millis(100)) {
            Ok(r) => {
                if r.core_peer.is_none() {
                    leaders.insert(r.desc.id, r.leader_peer_id);
                }
                pending.insert(r.desc.id, r);
                // Take whatever else waits (bounded by the channel).
                while let Ok(r) = reports.try_recv() {
                    if r.core_peer.is_none() {
                        leaders.insert(r.desc.id, r.leader_peer_id);
                    }
                    pending.insert(r.desc.id, r);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        for (_, r) in pending.drain() {
            if shutdown.load(Ordering::SeqCst) {
                return;
            }
            let mut region = Region::from(&r.desc);
            let core_peer = r.core_peer.unwrap_or(r.leader_peer_id);
            for p in region.peers.iter_mut() {
                if p.id == core_peer {
                    p.core = Some(r.core);
                }
            }
            let hb = RegionHeartbeat {
                region: Some(region),
                leader_peer_id: r.leader_peer_id,
                approximate_size_bytes: r.size_bytes.unwrap_or(0),
                approximate_keys: 0,
                measured: r.size_bytes.is_some(),
                requests_per_sec: r.requests_per_sec,
            };
            match client.region_heartbeat_op(hb) {
                Ok(None) => {}
                // Only the leader's own reports run operators (a replica created here
                // reports its core with the coordinator's descriptor).
                Ok(Some(op)) if r.core_peer.is_none() => {
                    let due = handed
                        .get(&op.id)
                        .is_none_or(|at| at.elapsed() >= OPERATOR_RERUN_AFTER);
                    if due {
                        tracing::debug!(region = op.region_id, op = op.id, kind = ?op.kind(), core = r.core, "scheduler operator received");
                        handed.insert(op.id, Instant::now());
                        if !operators.push(r.core as usize, op) {
                            tracing::debug!(region = r.desc.id, "operator queue full: dropped");
                        }
                    }
                }
                Ok(Some(_)) => {}
                Err(nokv_coordinator::Error::StaleEpoch { .. }) => {
                    tracing::debug!(region = r.desc.id, "region heartbeat refused: stale epoch")
                }
                Err(e) => {
                    tracing::debug!(region = r.desc.id, error = %e, "region heartbeat failed")
                }
            }
        }
        if last_store.elapsed() >= STORE_HEARTBEAT_INTERVAL {
            last_store = Instant::now();
            handed.retain(|_, at| at.elapsed() < Duration::from_secs(120));
            // The transaction GC's lock census: a store that cannot read its locks does
            // not report, which holds the safe point where it is.
            match crate::node::txn::min_lock_ts(&engines) {
                Ok(min_lock_ts) => {
                    let stats = StoreStats {
                        store_id,
                        leader_count: leaders.len() as u64,
                        min_lock_ts,
                        ..StoreStats::default()
                    };
                    match client.store_heartbeat(stats) {
                        Ok(safe_point) => crate::node::txn::hand_safe_point(&engines, safe_point),
                        Err(e) => tracing::warn!(error = %e, "store heartbeat failed"),
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading the transaction locks failed: no store heartbeat")
                }
            }
            leaders.clear();
        }
        if last_directory.elapsed() >= DIRECTORY_REFRESH_INTERVAL {
            last_directory = Instant::now();
            match client.stores() {
                Ok(stores) => directory.update(stores.iter().filter_map(|s| s.meta.as_ref())),
                Err(e) => tracing::debug!(error = %e, "refreshing store addresses failed"),
            }
            // Membership changes: replicas added to or removed from this store.
            match scan_all(&client) {
                Ok(all) => {
                    directory.set_routes(&all);
                    // Regions without a replica here (split elsewhere, for instance) are
                    // routed as the coordinator says; the local ones as this store knows.
                    let remote: Vec<RegionDescriptor> = all
                        .iter()
                        .filter_map(|r| r.region.as_ref())
                        .map(RegionDescriptor::from)
                        .collect();
                    if routes.replace_with(|t| t.with_remote(&remote)) {
                        tracing::info!("route table refreshed from the coordinator's routes");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "refreshing routes failed"),
            }
        }
    }
}

/// The sending side of the region reports, one clone per core.
pub type ReportSender = SyncSender<RegionReport>;

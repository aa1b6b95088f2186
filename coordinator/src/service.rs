//! The coordinator service: validates requests, turns mutations into [`Command`]s,
//! persists them (synced) in the embedded engine before applying them, and answers.
//!
//! Figures that change with every heartbeat (store stats, liveness, region sizes) are kept
//! in memory only, as are the TSO's and id allocator's positions inside their persisted
//! windows; a restart starts stores' liveness clocks afresh (a store is up until
//! `store_down_after` passes without a heartbeat) and allocation above the windows.

use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::ids::IdAlloc;
use crate::placement::{self, StoreCandidate};
use crate::proto::{
    command, request, response, Ack, AllocIdsResponse, BootstrapRequest, BootstrapResponse,
    Command, GetTsResponse, Operator, OperatorKind, OperatorsResponse, Peer, PendingPeer,
    PlaceReplicaResponse, PutRegions, Region, RegionHeartbeat, RegionRecord, RegisterStoreResponse,
    Request, Response, Route, RouteResponse, ScanRegionsRequest, ScanRegionsResponse,
    StoreAdminState, StoreInfo, StoreMeta, StoreState, StoreStats, StoresResponse,
};
use crate::replica::{LeaderStatus, Replica, ReplicaConfig};
use crate::scheduler::{self, ClusterView, Scheduler, Step, StoreView};
use crate::state::ClusterState;
use crate::tso::{self, Tso};
use nokv::{Db, Options, WriteOptions};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Default time without a heartbeat after which a store is down.
pub const DEFAULT_STORE_DOWN_AFTER: Duration = Duration::from_secs(30);
/// Default longest transaction run time: how far the transaction GC safe point trails
/// the wall clock.
pub const DEFAULT_TXN_GC_LIFE: Duration = Duration::from_secs(600);
/// Largest number of routes one scan returns.
pub const MAX_SCAN_ROUTES: usize = 1024;
/// Largest replica count of a region.
pub const MAX_REPLICAS: u32 = 7;
/// Largest number of regions one bootstrap creates.
pub const MAX_BOOTSTRAP_REGIONS: usize = 1024;
/// Largest core count a store may register.
pub const MAX_CORES: u32 = 1024;
/// The store label placement keeps replicas of one region apart on.
pub const HOST_LABEL: &str = "host";
/// Most labels a store may register.
pub const MAX_LABELS: usize = 16;
/// Longest label key or value.
pub const MAX_LABEL_BYTES: usize = 64;
/// Largest address length a store may register.
pub const MAX_ADDR_BYTES: usize = 256;

/// How to open a coordinator.
#[derive(Clone)]
pub struct Config {
    /// Directory of the embedded engine holding the state.
    pub workdir: PathBuf,
    /// The cluster's id; a workdir of another cluster is refused.
    pub cluster_id: u64,
    /// A store without a heartbeat for this long is down.
    pub store_down_after: Duration,
    /// Time sources.
    pub clock: Arc<dyn Clock>,
    /// `Some`: one of several replicas running commands through a raft log.
    pub replica: Option<ReplicaConfig>,
    /// The scheduler's settings (its `store_down_after_ms` is taken from
    /// `store_down_after`).
    pub scheduler: scheduler::Options,
    /// How long a transaction may run: the transaction GC safe point trails the wall
    /// clock by this much (`None`: no transaction GC).
    pub txn_gc_life: Option<Duration>,
}

impl Config {
    /// A config with the default store-down time and the system clock.
    pub fn new(workdir: impl Into<PathBuf>, cluster_id: u64) -> Config {
        Config {
            workdir: workdir.into(),
            cluster_id,
            store_down_after: DEFAULT_STORE_DOWN_AFTER,
            txn_gc_life: Some(DEFAULT_TXN_GC_LIFE),
            clock: Arc::new(SystemClock::new()),
            replica: None,
            // Off in the library (tests drive heartbeats by hand); the binary's
            // `--schedule` is on by default.
            scheduler: scheduler::Options {
                enabled: false,
                ..scheduler::Options::default()
            },
        }
    }
}

/// A store's volatile figures.
#[derive(Debug, Clone, Default)]
struct Liveness {
    last_heartbeat_mono_ms: u64,
    stats: Option<StoreStats>,
    /// A new store registered at this store's rpc address: this one is gone (its disk was
    /// wiped or it moved), so it counts as down at once instead of after
    /// `store_down_after`. Cleared when the store registers again with its id.
    replaced_by: Option<u64>,
}

/// The persisted state and its engine: changed only by applying commands.
pub(crate) struct Core {
    pub(crate) db: Db,
    pub(crate) state: ClusterState,
}

/// How commands reach the state.
enum Backend {
    /// Written and applied at once (single process).
    Local,
    /// Appended to the replicas' raft log, applied once committed.
    Replicated(Arc<Replica>),
}

/// What the serving side keeps: positions in the TSO and id windows, volatile figures.
/// Its lock serialises every request; it is taken before the [`Core`] lock.
struct Inner {
    tso: Tso,
    ids: IdAlloc,
    live: HashMap<u64, Liveness>,
    region_sizes: HashMap<u64, (u64, u64)>,
    /// Requests per second each region's leader last reported (leader balance by load).
    region_loads: HashMap<u64, u64>,
    /// Monotonic ms from which stores without a heartbeat count as up (start, leadership).
    grace_from_mono_ms: u64,
    /// The transaction GC safe point handed out last (never lowered; 0: none).
    txn_safe_point: u64,
    /// The raft term this replica last became a ready leader in (0: never / single process).
    leader_term: u64,
    /// Operators in flight and the scheduler's counters (volatile).
    scheduler: Scheduler,
}

/// The coordinator: state, TSO, ids; thread-safe (one lock around request handling).
pub struct Coordinator {
    inner: Mutex<Inner>,
    core: Arc<Mutex<Core>>,
    backend: Backend,
    cluster_id: u64,
    store_down_after_ms: u64,
    clock: Arc<dyn Clock>,
    /// `Config::txn_gc_life` in ms (0: off).
    txn_gc_life_ms: u64,
}

fn engine_options() -> Options {
    Options {
        write_buffer_bytes: 4 << 20,
        wal_segment_bytes: 8 << 20,
        wal_recycle_segments: 2,
        block_cache_bytes: 8 << 20,
        target_file_bytes: 8 << 20,
        level_base_bytes: 32 << 20,
        max_batch_bytes: 4 << 20,
        max_value_bytes: 1 << 20,
        ..Options::default()
    }
}

impl Coordinator {
    /// Opens (or creates) the coordinator's state in `config.workdir`.
    pub fn open(config: Config) -> Result<Coordinator> {
        if config.cluster_id == 0 {
            return Err(Error::InvalidArgument("cluster id 0 is reserved".into()));
        }
        let db = Db::open(&config.workdir, engine_options()).map_err(|e| {
            Error::engine(
                format!("open coordinator state in {}", config.workdir.display()),
                e,
            )
        })?;
        let state = ClusterState::load(&db, config.cluster_id)?;
        crate::state::check_mode(&db, &state, config.replica.is_some())?;
        let tso = Tso::restored(state.tso_bound_ms());
        let ids = IdAlloc::restored(state.id_fence());
        tracing::info!(
            workdir = %config.workdir.display(),
            cluster_id = config.cluster_id,
            stores = state.stores().len(),
            regions = state.region_count(),
            bootstrapped = state.bootstrapped(),
            id_fence = state.id_fence(),
            tso_bound_ms = state.tso_bound_ms(),
            "coordinator state loaded"
        );
        let core = Arc::new(Mutex::new(Core { db, state }));
        let backend = match config.replica {
            None => Backend::Local,
            Some(rc) => Backend::Replicated(Replica::start(rc, core.clone(), config.cluster_id)?),
        };
        Ok(Coordinator {
            inner: Mutex::new(Inner {
                tso,
                ids,
                live: HashMap::new(),
                region_sizes: HashMap::new(),
                region_loads: HashMap::new(),
                grace_from_mono_ms: config.clock.mono_ms(),
                txn_safe_point: 0,
                leader_term: 0,
                scheduler: Scheduler::new(scheduler::Options {
                    store_down_after_ms: config.store_down_after.as_millis() as u64,
                    ..config.scheduler
                }),
            }),
            core,
            backend,
            cluster_id: config.cluster_id,
            store_down_after_ms: config.store_down_after.as_millis() as u64,
            txn_gc_life_ms: config
                .txn_gc_life
                .map_or(0, |d| d.as_millis().max(1) as u64),
            clock: config.clock,
        })
    }

    /// The replica, in replicated mode.
    pub fn replica(&self) -> Option<&Arc<Replica>> {
        match &self.backend {
            Backend::Local => None,
            Backend::Replicated(r) => Some(r),
        }
    }

    /// Whether this coordinator serves requests now (always in single-process mode; the
    /// ready leader in replicated mode).
    pub fn is_serving(&self) -> bool {
        match &self.backend {
            Backend::Local => true,
            Backend::Replicated(r) => matches!(r.status(), LeaderStatus::Ready { .. }),
        }
    }

    /// Hands a `RAFT_BATCH` frame's payload to the replica; `Err` if this coordinator is
    /// not replicated or the payload is not raft messages for it.
    pub fn deliver_raft(&self, payload: &[u8]) -> Result<()> {
        match &self.backend {
            Backend::Local => Err(Error::InvalidArgument(
                "raft traffic to a single-process coordinator".into(),
            )),
            Backend::Replicated(r) => r.deliver(payload),
        }
    }

    /// Serves only as the ready leader (see [`Coordinator::gate`]).
    fn check_leader(&self) -> Result<()> {
        if matches!(self.backend, Backend::Local) {
            return Ok(());
        }
        let mut inner = self.inner.lock();
        self.gate(&mut inner)
    }

    /// Under the request lock: `NotLeader` unless this replica is the ready leader. On a new
    /// leadership, restarts the TSO and ids above the replicated bound and fence and gives
    /// stores a fresh liveness grace period. Every mutation passes here with the lock held,
    /// and its proposal is refused if the term changed since.
    fn gate(&self, inner: &mut Inner) -> Result<()> {
        let Backend::Replicated(r) = &self.backend else {
            return Ok(());
        };
        match r.status() {
            LeaderStatus::Ready { term } => {
                if inner.leader_term != term {
                    let core = self.core.lock();
                    inner.tso = Tso::restored(core.state.tso_bound_ms());
                    inner.ids = IdAlloc::restored(core.state.id_fence());
                    inner.live.clear();
                    inner.region_sizes.clear();
                    inner.region_loads.clear();
                    inner.grace_from_mono_ms = self.clock.mono_ms();
                    inner.leader_term = term;
                    inner.scheduler = Scheduler::new(inner.scheduler.options().clone());
                    tracing::info!(term, replica = r.id(), "serving as the coordinator leader");
                }
                Ok(())
            }
            LeaderStatus::NotLeader { leader_addr } => Err(Error::NotLeader { leader_addr }),
        }
    }

    /// The cluster id.
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    /// A copy of the persisted catalog (tests, tools).
    pub fn state(&self) -> ClusterState {
        self.core.lock().state.clone()
    }

    /// Stops the replica (if any), then flushes and closes the embedded engine.
    pub fn close(self) -> Result<()> {
        if let Backend::Replicated(r) = &self.backend {
            r.stop();
        }
        drop(self.backend);
        match Arc::try_unwrap(self.core) {
            Ok(core) => core
                .into_inner()
                .db
                .close()
                .map_err(|e| Error::engine("close coordinator state", e)),
            Err(_) => Err(Error::Busy(
                "coordinator state still in use; closed when the last user drops it".into(),
            )),
        }
    }

    /// Answers one request (errors become an error response).
    pub fn handle(&self, req: Request) -> Response {
        let body = match self.dispatch(req) {
            Ok(b) => b,
            Err(e) => {
                if matches!(e, Error::Engine { .. } | Error::Corrupt { .. }) {
                    tracing::error!(error = %e, "coordinator request failed");
                }
                response::Body::Error(e.to_proto())
            }
        };
        Response { body: Some(body) }
    }

    fn dispatch(&self, req: Request) -> Result<response::Body> {
        use request::Body as Q;
        use response::Body as A;
        let body = req
            .body
            .ok_or_else(|| Error::InvalidArgument("request without a body".into()))?;
        self.check_leader()?;
        Ok(match body {
            Q::RegisterStore(r) => {
                let meta = r
                    .store
                    .ok_or_else(|| Error::InvalidArgument("register without a store".into()))?;
                A::RegisterStore(RegisterStoreResponse {
                    store_id: self.register_store(meta)?,
                })
            }
            Q::StoreHeartbeat(s) => {
                self.store_heartbeat(s)?;
                A::Ack(Ack {
                    operator: None,
                    txn_safe_point: self.txn_safe_point(),
                })
            }
            Q::RegionHeartbeat(h) => A::Ack(Ack {
                operator: self.region_heartbeat_op(h)?,
                txn_safe_point: 0,
            }),
            Q::Bootstrap(b) => A::Bootstrap(BootstrapResponse {
                regions: self.bootstrap(&b)?,
            }),
            Q::GetRegionByKey(k) => A::Route(RouteResponse {
                route: Some(self.route_by_key(&k.key)?),
            }),
            Q::GetRegionById(r) => A::Route(RouteResponse {
                route: Some(self.route_by_id(r.region_id)?),
            }),
            Q::ScanRegions(s) => A::ScanRegions(ScanRegionsResponse {
                routes: self.scan_regions(&s)?,
            }),
            Q::GetStore(s) => A::Stores(StoresResponse {
                stores: vec![self.store_info(s.store_id)?],
            }),
            Q::GetStores(_) => A::Stores(StoresResponse {
                stores: self.stores(),
            }),
            Q::GetTs(t) => {
                let first = self.get_ts(t.count)?;
                A::Ts(GetTsResponse {
                    first,
                    count: t.count,
                })
            }
            Q::AllocIds(a) => {
                let first = self.alloc_ids(a.count)?;
                A::Ids(AllocIdsResponse {
                    first,
                    count: a.count,
                })
            }
            Q::PlaceReplica(p) => A::PlaceReplica(PlaceReplicaResponse {
                peer: Some(self.place_replica(p.region_id)?),
            }),
            Q::GetOperators(_) => A::Operators(self.operators()),
            Q::DecommissionStore(d) => A::Stores(StoresResponse {
                stores: vec![self.decommission_store(d.store_id)?],
            }),
            Q::SetScheduling(s) => {
                self.set_scheduling(s.enabled);
                A::Operators(self.operators())
            }
        })
    }

    /// Registers a store: id 0 gets a new id, a known id updates its addresses. Counts as a
    /// heartbeat.
    pub fn register_store(&self, mut meta: StoreMeta) -> Result<u64> {
        if meta.rpc_addr.is_empty() || meta.rpc_addr.len() > MAX_ADDR_BYTES {
            return Err(Error::InvalidArgument(format!(
                "store rpc_addr must be 1..={MAX_ADDR_BYTES} bytes"
            )));
        }
        if meta.redis_addr.len() > MAX_ADDR_BYTES || meta.version.len() > MAX_ADDR_BYTES {
            return Err(Error::InvalidArgument(format!(
                "store redis_addr and version must be at most {MAX_ADDR_BYTES} bytes"
            )));
        }
        if meta.cores == 0 || meta.cores > MAX_CORES {
            return Err(Error::InvalidArgument(format!(
                "store cores {} not in 1..={MAX_CORES}",
                meta.cores
            )));
        }
        check_labels(&meta)?;
        let mut inner = self.inner.lock();
        self.gate(&mut inner)?;
        // The admin state is the coordinator's: a registration keeps the recorded one.
        meta.admin_state = StoreAdminState::Serving as i32;
        if meta.id == 0 {
            meta.id = self.alloc_locked(&mut inner, 1)?;
            tracing::info!(store_id = meta.id, rpc_addr = %meta.rpc_addr, "new store registered");
            self.mark_replaced(&mut inner, &meta);
        } else {
            match self.core.lock().state.store(meta.id) {
                None => return Err(Error::StoreNotFound(meta.id)),
                Some(old) if old.admin_state() == StoreAdminState::Removed => {
                    return Err(removed(meta.id))
                }
                Some(old) if old.cores > meta.cores => {
                    return Err(Error::InvalidArgument(format!(
                        "store {} registered {} cores, cannot shrink to {}",
                        meta.id, old.cores, meta.cores
                    )))
                }
                Some(old) => meta.admin_state = old.admin_state,
            }
        }
        let id = meta.id;
        let same = self.core.lock().state.store(id) == Some(&meta);
        if !same {
            self.propose(
                &mut inner,
                Command {
                    body: Some(command::Body::PutStore(meta)),
                },
            )?;
        }
        let now = self.clock.mono_ms();
        let live = inner.live.entry(id).or_default();
        live.last_heartbeat_mono_ms = now;
        live.replaced_by = None;
        Ok(id)
    }

    /// A new store listening at another store's rpc address proves that store is gone
    /// (one address, one process): it counts as down from now on, so the scheduler
    /// re-creates its replicas without waiting `store_down_after`.
    fn mark_replaced(&self, inner: &mut Inner, new: &StoreMeta) {
        let old: Vec<u64> = self
            .core
            .lock()
            .state
            .stores()
            .values()
            .filter(|m| m.id != new.id && m.rpc_addr == new.rpc_addr)
            .map(|m| m.id)
            .collect();
        for id in old {
            tracing::warn!(
                store_id = id,
                new_store_id = new.id,
                rpc_addr = %new.rpc_addr,
                "a new store registered at this store's address: the old store counts as down (wiped disk?); its replicas will be re-created"
            );
            inner.live.entry(id).or_default().replaced_by = Some(new.id);
        }
    }

    /// Records a store's heartbeat figures.
    pub fn store_heartbeat(&self, stats: StoreStats) -> Result<()> {
        let mut inner = self.inner.lock();
        self.gate(&mut inner)?;
        match self.core.lock().state.store(stats.store_id) {
            None => return Err(Error::StoreNotFound(stats.store_id)),
            Some(m) if m.admin_state() == StoreAdminState::Removed => {
                return Err(removed(stats.store_id))
            }
            Some(_) => {}
        }
        let now = self.clock.mono_ms();
        let l = inner.live.entry(stats.store_id).or_default();
        l.last_heartbeat_mono_ms = now;
        l.stats = Some(stats);
        self.finish_decommissions(&mut inner);
        Ok(())
    }

    /// The transaction GC safe point stores may collect under: `Config::txn_gc_life`
    /// behind the wall clock (timestamps handed out later are above it), held at or below every
    /// transaction lock the stores last reported. It does not advance while a store that is
    /// not removed is down or has not reported since this coordinator (replica) started
    /// serving: its replicas may hold older locks. Never lowered; 0: none yet.
    pub fn txn_safe_point(&self) -> u64 {
        let mut inner = self.inner.lock();
        if self.txn_gc_life_ms == 0 {
            return 0;
        }
        let now = self.clock.mono_ms();
        let behind = self.clock.wall_ms().saturating_sub(self.txn_gc_life_ms);
        let mut candidate = tso::compose(behind, 0);
        {
            let core = self.core.lock();
            for m in core.state.stores().values() {
                if m.admin_state() == StoreAdminState::Removed {
                    continue;
                }
                let stats = inner.live.get(&m.id).and_then(|l| l.stats.as_ref());
                match stats {
                    Some(s) if self.is_up(&inner, m.id, now) => {
                        if let Some(ts) = s.min_lock_ts {
                            candidate = candidate.min(ts);
                        }
                    }
                    _ => return inner.txn_safe_point,
                }
            }
        }
        inner.txn_safe_point = inner.txn_safe_point.max(candidate);
        inner.txn_safe_point
    }

    /// Marks store `id` `Decommissioning`: it gets no new replica and the scheduler moves
    /// its replicas away; once the catalog shows none on it, it is marked `Removed`.
    /// Refused (`NotEnoughStores`) when the up, serving stores left could not hold a
    /// region's target voter count. Asking again (or for a removed store) changes nothing.
    pub fn decommission_store(&self, id: u64) -> Result<StoreInfo> {
        let mut inner = self.inner.lock();
        self.gate(&mut inner)?;
        let now = self.clock.mono_ms();
        let (meta, others, target) = {
            let core = self.core.lock();
            let st = &core.state;
            let meta = st.store(id).cloned().ok_or(Error::StoreNotFound(id))?;
            let others = st
                .stores()
                .values()
                .filter(|m| m.id != id && m.admin_state() == StoreAdminState::Serving)
                .filter(|m| self.is_up(&inner, m.id, now))
                .count();
            let target = match inner.scheduler.options().replicas {
                0 => st.replicas() as usize,
                n => n,
            };
            (meta, others, target)
        };
        if meta.admin_state() == StoreAdminState::Serving {
            if others < target {
                return Err(Error::NotEnoughStores {
                    need: target,
                    have: others,
                });
            }
            tracing::info!(
                store_id = id,
                "store decommissioning: its replicas move away"
            );
            self.propose(
                &mut inner,
                Command {
                    body: Some(command::Body::PutStore(StoreMeta {
                        admin_state: StoreAdminState::Decommissioning as i32,
                        ..meta
                    })),
                },
            )?;
        }
        self.finish_decommissions(&mut inner);
        let core = self.core.lock();
        let meta = core.state.store(id).ok_or(Error::StoreNotFound(id))?;
        Ok(self.info(&inner, meta, now))
    }

    /// Marks `Removed` every decommissioning store the catalog shows no replica on.
    /// Failures are logged: the next heartbeat tries again.
    fn finish_decommissions(&self, inner: &mut Inner) {
        let drained: Vec<StoreMeta> = {
            let core = self.core.lock();
            let st = &core.state;
            st.stores()
                .values()
                .filter(|m| m.admin_state() == StoreAdminState::Decommissioning)
                .filter(|m| {
                    !st.regions_in_order()
                        .any(|e| e.region.peers.iter().any(|p| p.store_id == m.id))
                })
                .cloned()
                .collect()
        };
        for meta in drained {
            let id = meta.id;
            let cmd = Command {
                body: Some(command::Body::PutStore(StoreMeta {
                    admin_state: StoreAdminState::Removed as i32,
                    ..meta
                })),
            };
            match self.propose(inner, cmd) {
                Ok(()) => tracing::info!(store_id = id, "store decommissioned: removed"),
                Err(e) => {
                    tracing::warn!(store_id = id, error = %e, "decommissioned store not marked removed yet")
                }
            }
        }
    }

    /// Records a region leader's report: a newer descriptor replaces the record (and the
    /// regions it overlaps, when they are older), a stale one is refused with the current
    /// record.
    pub fn region_heartbeat(&self, hb: RegionHeartbeat) -> Result<()> {
        self.region_heartbeat_op(hb).map(|_| ())
    }

    /// [`Coordinator::region_heartbeat`], then the scheduler's operator for the region, if
    /// any (see [`crate::scheduler`]).
    pub fn region_heartbeat_op(&self, hb: RegionHeartbeat) -> Result<Option<Operator>> {
        let leader = hb.leader_peer_id;
        let mut inner = self.inner.lock();
        let region = self.record_region_heartbeat(&mut inner, hb)?;
        let op = self.schedule(&mut inner, &region, leader);
        self.finish_decommissions(&mut inner);
        Ok(op)
    }

    /// Turns the scheduler on or off at run time (operators in flight are still resent).
    pub fn set_scheduling(&self, enabled: bool) {
        self.inner.lock().scheduler.set_enabled(enabled);
        tracing::info!(enabled, "scheduler switched");
    }

    /// The scheduler's operators in flight and counters.
    pub fn operators(&self) -> OperatorsResponse {
        let inner = self.inner.lock();
        let (issued, completed, expired) = inner.scheduler.counters();
        OperatorsResponse {
            operators: inner.scheduler.in_flight(self.clock.mono_ms()),
            issued,
            completed,
            expired,
            enabled: inner.scheduler.options().enabled,
        }
    }

    /// Runs the scheduler for `region` just reported by `leader`; allocates and records
    /// the placement of a new learner. Failures are logged: the next heartbeat tries again.
    fn schedule(&self, inner: &mut Inner, region: &Region, leader: u64) -> Option<Operator> {
        if !inner.scheduler.options().enabled && !inner.scheduler.has_in_flight(region.id) {
            return None;
        }
        let now = self.clock.mono_ms();
        let (regions, stores, candidates, pending, replicas) = {
            let core = self.core.lock();
            let st = &core.state;
            let regions: Vec<_> = st.regions_in_order().cloned().collect();
            let stores: Vec<StoreView> = st
                .stores()
                .values()
                .filter(|m| m.admin_state() != StoreAdminState::Removed)
                .map(|m| StoreView {
                    decommissioning: m.admin_state() == StoreAdminState::Decommissioning,
                    store_id: m.id,
                    since_heartbeat_ms: self.since_heartbeat_ms(inner, m.id, now),
                    core_leaders: inner
                        .live
                        .get(&m.id)
                        .and_then(|l| l.stats.as_ref())
                        .map(|s| {
                            let mut v = vec![0; m.cores as usize];
                            for c in &s.cores {
                                if let Some(slot) = v.get_mut(c.core as usize) {
                                    *slot = c.leaders;
                                }
                            }
                            v
                        })
                        .unwrap_or_default(),
                })
                .collect();
            let pending: Vec<PendingPeer> = st.pending().values().cloned().collect();
            let replicas = st.replicas() as usize;
            (
                regions,
                stores,
                self.candidates(inner, st, now),
                pending,
                replicas,
            )
        };
        let view = ClusterView {
            replicas,
            regions: &regions,
            stores: &stores,
            candidates: &candidates,
            pending: &pending,
            sizes: &inner.region_sizes,
            loads: &inner.region_loads,
        };
        let mut op = match inner.scheduler.on_heartbeat(now, region, leader, &view) {
            Step::Nothing => return None,
            Step::Resend(op) => return Some(op),
            Step::Propose(op) => op,
        };
        if op.kind() == OperatorKind::AddLearner {
            if let Some(peer) = op.peer.as_mut().filter(|p| p.id == 0) {
                match self.alloc_locked(inner, 1) {
                    Ok(id) => peer.id = id,
                    Err(e) => {
                        tracing::warn!(region = region.id, error = %e, "scheduler: no peer id for a new replica");
                        return None;
                    }
                }
                let placed = Command {
                    body: Some(command::Body::PutPendingPeer(PendingPeer {
                        region_id: region.id,
                        peer: Some(Peer {
                            learner: false,
                            ..peer.clone()
                        }),
                    })),
                };
                if let Err(e) = self.propose(inner, placed) {
                    tracing::warn!(region = region.id, error = %e, "scheduler: placement not recorded");
                    return None;
                }
            }
        }
        let op = inner.scheduler.start(op, now);
        let peer = op.peer.clone().unwrap_or_default();
        tracing::info!(
            region = region.id,
            op = op.id,
            kind = ?op.kind(),
            reason = %op.reason,
            peer = peer.id,
            store = peer.store_id,
            core = ?peer.core,
            from_store = op.from_store,
            "scheduler operator issued"
        );
        Some(op)
    }

    /// Validates and records a region heartbeat under the request lock; returns the region
    /// as recorded (cores filled in).
    fn record_region_heartbeat(&self, inner: &mut Inner, hb: RegionHeartbeat) -> Result<Region> {
        let mut region = hb
            .region
            .ok_or_else(|| Error::InvalidArgument("region heartbeat without a region".into()))?;
        if region.id == 0 || region.peers.is_empty() {
            return Err(Error::InvalidArgument(
                "region heartbeat needs a region id and peers".into(),
            ));
        }
        if !region.end_key.is_empty() && region.start_key >= region.end_key {
            return Err(Error::InvalidArgument(format!(
                "region {}: start key is not below the end key",
                region.id
            )));
        }
        if hb.leader_peer_id != 0 && region.peer(hb.leader_peer_id).is_none() {
            return Err(Error::InvalidArgument(format!(
                "region {}: leader peer {} is not one of its peers",
                region.id, hb.leader_peer_id
            )));
        }
        self.gate(inner)?;
        let core = self.core.lock();
        let st = &core.state;
        for (i, p) in region.peers.iter().enumerate() {
            if region.peers[..i]
                .iter()
                .any(|q| q.id == p.id || q.store_id == p.store_id)
            {
                return Err(Error::InvalidArgument(format!(
                    "region {}: peer {} repeats a peer id or store",
                    region.id, p.id
                )));
            }
            if st.store(p.store_id).is_none() {
                return Err(Error::StoreNotFound(p.store_id));
            }
        }
        let existing = st.region(region.id).cloned();
        if let Some(cur) = &existing {
            let (a, b) = (region.epoch(), cur.region.epoch());
            if a.version < b.version || a.conf_version < b.conf_version {
                return Err(Error::StaleEpoch {
                    region: region.id,
                    current: Box::new(cur.region.clone()),
                });
            }
        }
        let mut remove = Vec::new();
        for o in st.overlapping(&region) {
            if o.region.epoch_version >= region.epoch_version {
                return Err(Error::StaleEpoch {
                    region: region.id,
                    current: Box::new(o.region.clone()),
                });
            }
            remove.push(o.region.id);
        }
        // Fill in cores the leader did not send: the placement of a pending peer, else the
        // record of the same peer, else the replica on the same store of an overlapped or
        // adjacent region (a split child lives on the core of its parent's replica).
        let mut resolved = Vec::new();
        let mut kin: Vec<&Region> = Vec::new();
        if region.peers.iter().any(|p| p.core.is_none()) {
            kin.extend(st.overlapping(&region).into_iter().map(|e| &e.region));
            kin.extend(st.adjacent(&region).into_iter().map(|e| &e.region));
        }
        for p in &mut region.peers {
            if let Some(pending) = st.pending().get(&p.id) {
                resolved.push(p.id);
                if p.core.is_none() {
                    p.core = pending.peer.as_ref().and_then(|q| q.core);
                }
            }
            if p.core.is_none() {
                p.core = existing
                    .as_ref()
                    .and_then(|e| e.region.peer(p.id))
                    .and_then(|q| q.core);
            }
            if p.core.is_none() {
                p.core = kin
                    .iter()
                    .flat_map(|r| r.peers.iter())
                    .find(|q| q.store_id == p.store_id && q.core.is_some())
                    .and_then(|q| q.core);
            }
        }
        if hb.measured {
            inner
                .region_sizes
                .insert(region.id, (hb.approximate_size_bytes, hb.approximate_keys));
        }
        // A replica reporting its core carries neither figure: it keeps the leader's.
        if hb.measured || hb.requests_per_sec > 0 {
            inner.region_loads.insert(region.id, hb.requests_per_sec);
        }
        let changed = match &existing {
            Some(e) => e.region != region || e.leader_peer_id != hb.leader_peer_id,
            None => true,
        };
        if !changed && remove.is_empty() && resolved.is_empty() {
            return Ok(region);
        }
        if !remove.is_empty() {
            tracing::info!(region = region.id, replaced = ?remove, "region heartbeat replaces overlapped regions");
        }
        drop(core);
        self.propose(
            inner,
            Command {
                body: Some(command::Body::PutRegions(PutRegions {
                    regions: vec![RegionRecord {
                        region: Some(region.clone()),
                        leader_peer_id: hb.leader_peer_id,
                    }],
                    remove,
                    resolved_pending: resolved,
                    replicas: 0,
                })),
            },
        )?;
        Ok(region)
    }

    /// Creates the first regions: split at `split_keys`, each with `replicas` replicas
    /// placed on distinct stores that are up.
    pub fn bootstrap(&self, req: &BootstrapRequest) -> Result<Vec<Region>> {
        let replicas = if req.replicas == 0 { 3 } else { req.replicas };
        if replicas > MAX_REPLICAS {
            return Err(Error::InvalidArgument(format!(
                "replicas {replicas} not in 1..={MAX_REPLICAS}"
            )));
        }
        if req.split_keys.len() >= MAX_BOOTSTRAP_REGIONS {
            return Err(Error::InvalidArgument(format!(
                "at most {} split keys",
                MAX_BOOTSTRAP_REGIONS - 1
            )));
        }
        for (i, k) in req.split_keys.iter().enumerate() {
            if k.is_empty() || (i > 0 && req.split_keys[i - 1] >= *k) {
                return Err(Error::InvalidArgument(
                    "split keys must be non-empty and strictly increasing".into(),
                ));
            }
        }
        let mut inner = self.inner.lock();
        self.gate(&mut inner)?;
        let now = self.clock.mono_ms();
        let mut candidates = {
            let core = self.core.lock();
            if core.state.bootstrapped() {
                return Err(Error::AlreadyBootstrapped);
            }
            self.candidates(&inner, &core.state, now)
        };
        let n = req.split_keys.len() + 1;
        // Place everything first: a failure allocates nothing.
        let mut placements = Vec::with_capacity(n);
        for _ in 0..n {
            let p = placement::place(&candidates, &[], replicas as usize)?;
            placement::record(&mut candidates, &p);
            placements.push(p);
        }
        let per_region = 1 + replicas;
        let total = u32::try_from(n)
            .unwrap_or(u32::MAX)
            .saturating_mul(per_region);
        let base = self.alloc_locked(&mut inner, total)?;
        let mut regions = Vec::with_capacity(n);
        for (i, placed) in placements.into_iter().enumerate() {
            let start_key = if i == 0 {
                Vec::new()
            } else {
                req.split_keys[i - 1].clone()
            };
            let end_key = req.split_keys.get(i).cloned().unwrap_or_default();
            // Region i takes ids base + i * per_region, its peers the next `replicas`.
            let id = base + i as u64 * u64::from(per_region);
            let peers = placed
                .iter()
                .zip(id + 1..)
                .map(|(p, peer_id)| Peer {
                    id: peer_id,
                    store_id: p.store_id,
                    core: Some(p.core),
                    learner: false,
                })
                .collect();
            regions.push(Region {
                id,
                start_key,
                end_key,
                epoch_version: 1,
                epoch_conf_version: 1,
                peers,
            });
        }
        self.propose(
            &mut inner,
            Command {
                body: Some(command::Body::Bootstrap(PutRegions {
                    regions: regions
                        .iter()
                        .map(|r| RegionRecord {
                            region: Some(r.clone()),
                            leader_peer_id: 0,
                        })
                        .collect(),
                    replicas,
                    ..Default::default()
                })),
            },
        )?;
        tracing::info!(regions = regions.len(), replicas, "cluster bootstrapped");
        Ok(regions)
    }

    /// Chooses a (store, core) and a peer id for a new replica of `region_id`, on a store
    /// that holds no replica of it (nor a pending one); recorded until a heartbeat shows it.
    pub fn place_replica(&self, region_id: u64) -> Result<Peer> {
        let mut inner = self.inner.lock();
        self.gate(&mut inner)?;
        let now = self.clock.mono_ms();
        let (exclude, candidates) = {
            let core = self.core.lock();
            let st = &core.state;
            let entry = st
                .region(region_id)
                .ok_or(Error::RegionNotFound(region_id))?;
            let mut exclude: Vec<u64> = entry.region.peers.iter().map(|p| p.store_id).collect();
            exclude.extend(
                st.pending()
                    .values()
                    .filter(|p| p.region_id == region_id)
                    .filter_map(|p| p.peer.as_ref().map(|q| q.store_id)),
            );
            (exclude, self.candidates(&inner, st, now))
        };
        let placed = placement::place(&candidates, &exclude, 1)?;
        let p = placed
            .first()
            .ok_or(Error::NotEnoughStores { need: 1, have: 0 })?;
        let peer = Peer {
            id: self.alloc_locked(&mut inner, 1)?,
            store_id: p.store_id,
            core: Some(p.core),
            learner: false,
        };
        self.propose(
            &mut inner,
            Command {
                body: Some(command::Body::PutPendingPeer(PendingPeer {
                    region_id,
                    peer: Some(peer.clone()),
                })),
            },
        )?;
        Ok(peer)
    }

    /// The route of the region holding `key`.
    pub fn route_by_key(&self, key: &[u8]) -> Result<Route> {
        let core = self.core.lock();
        if !core.state.bootstrapped() {
            return Err(Error::NotBootstrapped);
        }
        let e = core
            .state
            .region_by_key(key)
            .ok_or_else(|| Error::KeyNotCovered(key.to_vec()))?;
        Ok(core.state.route(e))
    }

    /// The route of region `id`.
    pub fn route_by_id(&self, id: u64) -> Result<Route> {
        let core = self.core.lock();
        let e = core.state.region(id).ok_or(Error::RegionNotFound(id))?;
        Ok(core.state.route(e))
    }

    /// Routes in key order from the region holding `start_key`.
    pub fn scan_regions(&self, req: &ScanRegionsRequest) -> Result<Vec<Route>> {
        let limit = match req.limit as usize {
            0 => MAX_SCAN_ROUTES,
            n => n.min(MAX_SCAN_ROUTES),
        };
        let inner = self.inner.lock();
        let core = self.core.lock();
        let st = &core.state;
        Ok(st
            .regions_from(&req.start_key)
            .take_while(|e| req.end_key.is_empty() || e.region.start_key < req.end_key)
            .take(limit)
            .map(|e| Route {
                approximate_size_bytes: inner.region_sizes.get(&e.region.id).map(|s| s.0),
                ..st.route(e)
            })
            .collect())
    }

    /// One store with its state and last figures.
    pub fn store_info(&self, id: u64) -> Result<StoreInfo> {
        let inner = self.inner.lock();
        let core = self.core.lock();
        let meta = core.state.store(id).ok_or(Error::StoreNotFound(id))?;
        Ok(self.info(&inner, meta, self.clock.mono_ms()))
    }

    /// Every store.
    pub fn stores(&self) -> Vec<StoreInfo> {
        let inner = self.inner.lock();
        let core = self.core.lock();
        let now = self.clock.mono_ms();
        core.state
            .stores()
            .values()
            .map(|m| self.info(&inner, m, now))
            .collect()
    }

    /// `count` timestamps; returns the first (they are `first..first + count`).
    pub fn get_ts(&self, count: u32) -> Result<u64> {
        let mut inner = self.inner.lock();
        self.gate(&mut inner)?;
        let plan = inner.tso.plan(self.clock.wall_ms(), count)?;
        if let Some(bound) = plan.new_bound_ms {
            self.propose(
                &mut inner,
                Command {
                    body: Some(command::Body::RaiseTsoBound(bound)),
                },
            )?;
        }
        inner.tso.commit(&plan);
        Ok(plan.first)
    }

    /// `count` unique ids; returns the first (they are `first..first + count`).
    pub fn alloc_ids(&self, count: u32) -> Result<u64> {
        let mut inner = self.inner.lock();
        self.gate(&mut inner)?;
        self.alloc_locked(&mut inner, count)
    }

    fn alloc_locked(&self, inner: &mut Inner, count: u32) -> Result<u64> {
        let plan = inner.ids.plan(count)?;
        if let Some(fence) = plan.new_fence {
            self.propose(
                inner,
                Command {
                    body: Some(command::Body::RaiseIdFence(fence)),
                },
            )?;
        }
        inner.ids.commit(&plan);
        Ok(plan.first)
    }

    /// Persists `cmd` (single process: a synced write; replicated: committed through the
    /// raft log and applied here), then moves the TSO and id windows it raises.
    fn propose(&self, inner: &mut Inner, cmd: Command) -> Result<()> {
        match &self.backend {
            Backend::Local => {
                let mut core = self.core.lock();
                let batch = core.state.batch_for(&cmd);
                core.db
                    .write(&batch, &WriteOptions::default())
                    .map_err(|e| Error::engine("persist coordinator command", e))?;
                core.state.apply(&cmd);
            }
            Backend::Replicated(r) => r.propose(&cmd, inner.leader_term)?,
        }
        match cmd.body {
            Some(command::Body::RaiseIdFence(v)) => inner.ids.raise_fence(v),
            Some(command::Body::RaiseTsoBound(v)) => inner.tso.raise_bound(v),
            _ => {}
        }
        Ok(())
    }

    /// How long the store has been silent; `u64::MAX` once another store took its address.
    fn since_heartbeat_ms(&self, inner: &Inner, id: u64, now: u64) -> u64 {
        let live = inner.live.get(&id);
        if live.is_some_and(|l| l.replaced_by.is_some()) {
            return u64::MAX;
        }
        let last = live
            .map(|l| l.last_heartbeat_mono_ms)
            .unwrap_or(inner.grace_from_mono_ms);
        now.saturating_sub(last)
    }

    fn is_up(&self, inner: &Inner, id: u64, now: u64) -> bool {
        self.since_heartbeat_ms(inner, id, now) <= self.store_down_after_ms
    }

    fn info(&self, inner: &Inner, meta: &StoreMeta, now: u64) -> StoreInfo {
        let up = self.is_up(inner, meta.id, now);
        StoreInfo {
            meta: Some(meta.clone()),
            stats: inner.live.get(&meta.id).and_then(|l| l.stats.clone()),
            state: if up { StoreState::Up } else { StoreState::Down } as i32,
            since_heartbeat_ms: self.since_heartbeat_ms(inner, meta.id, now),
        }
    }

    /// Placement's view of the stores: replica counts from the catalog (regions and
    /// pending peers), loads from the last heartbeats.
    fn candidates(&self, inner: &Inner, st: &ClusterState, now: u64) -> Vec<StoreCandidate> {
        let mut out: Vec<StoreCandidate> = st
            .stores()
            .values()
            .map(|m| {
                let stats = inner.live.get(&m.id).and_then(|l| l.stats.as_ref());
                let mut cores = vec![(0u64, 0u64); m.cores as usize];
                if let Some(s) = stats {
                    for c in &s.cores {
                        if let Some(slot) = cores.get_mut(c.core as usize) {
                            slot.1 = c.load;
                        }
                    }
                }
                StoreCandidate {
                    store_id: m.id,
                    // Draining and removed stores get no new replica.
                    up: self.is_up(inner, m.id, now) && m.admin_state() == StoreAdminState::Serving,
                    replicas: 0,
                    load: stats.map(|s| s.load).unwrap_or(0),
                    cores,
                    host: m.labels.get(HOST_LABEL).cloned(),
                }
            })
            .collect();
        let mut count = |p: &Peer| {
            if let Some(c) = out.iter_mut().find(|c| c.store_id == p.store_id) {
                c.replicas += 1;
                if let Some(slot) = p.core.and_then(|core| c.cores.get_mut(core as usize)) {
                    slot.0 += 1;
                }
            }
        };
        for e in st.regions_in_order() {
            e.region.peers.iter().for_each(&mut count);
        }
        for p in st.pending().values() {
            if let Some(peer) = &p.peer {
                count(peer);
            }
        }
        out
    }
}

/// The error for a store that was decommissioned.
fn removed(id: u64) -> Error {
    Error::InvalidArgument(format!(
        "store {id} was decommissioned (removed); wipe its workdir to join as a new store"
    ))
}

/// Labels: at most [`MAX_LABELS`], keys and values of 1..=[`MAX_LABEL_BYTES`] bytes of
/// ASCII letters, digits, `-`, `_`, `.`.
fn check_labels(meta: &StoreMeta) -> Result<()> {
    if meta.labels.len() > MAX_LABELS {
        return Err(Error::InvalidArgument(format!(
            "a store has at most {MAX_LABELS} labels, {} given",
            meta.labels.len()
        )));
    }
    let ok = |s: &str| {
        (1..=MAX_LABEL_BYTES).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    match meta.labels.iter().find(|(k, v)| !ok(k) || !ok(v)) {
        Some((k, v)) => Err(Error::InvalidArgument(format!(
            "store label {k:?}={v:?}: keys and values are 1..={MAX_LABEL_BYTES} bytes of letters, digits, '-', '_', '.'"
        ))),
        None => Ok(()),
    }
}

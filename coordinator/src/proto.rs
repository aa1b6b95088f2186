//! Wire and storage messages of the coordinator: hand-written prost structs (no protoc).
//!
//! Requests travel in `wire::kind::COORD_REQUEST` frames, responses in `COORD_RESPONSE`
//! frames with the request's id. [`Command`] is the form of every mutation of the
//! coordinator's persisted state (see `state.rs`).

use nokv_raft::region::{Epoch, PeerMeta, PeerRole, RegionDescriptor};

/// A store as registered: identity and addresses.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct StoreMeta {
    /// Store id (0 in a first registration: the coordinator assigns one).
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Address of the store's internal RPC port (raft transport, KV requests).
    #[prost(string, tag = "2")]
    pub rpc_addr: String,
    /// Address of the store's Redis port.
    #[prost(string, tag = "3")]
    pub redis_addr: String,
    /// Number of cores (executors) the store runs; replicas are placed on cores `0..cores`.
    #[prost(uint32, tag = "4")]
    pub cores: u32,
    /// The store's build version, for operators.
    #[prost(string, tag = "5")]
    pub version: String,
    /// [`StoreAdminState`]: set by the coordinator (decommission), never by the store (a
    /// registration keeps the recorded value).
    #[prost(enumeration = "StoreAdminState", tag = "6")]
    pub admin_state: i32,
    /// Labels (`key=value`, e.g. `host`, `zone`): placement never puts two replicas of a
    /// region on stores with the same `host` label.
    #[prost(btree_map = "string, string", tag = "7")]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// What the operator asked of a store (persisted with its [`StoreMeta`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum StoreAdminState {
    /// Serves and gets replicas (the default).
    Serving = 0,
    /// Being drained: gets no new replica; the scheduler moves every replica off it.
    Decommissioning = 1,
    /// Drained (a tombstone): holds no replica and may not register again under its id.
    Removed = 2,
}

/// Figures of one core of a store.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct CoreStats {
    /// Core index.
    #[prost(uint32, tag = "1")]
    pub core: u32,
    /// Region replicas on the core.
    #[prost(uint64, tag = "2")]
    pub regions: u64,
    /// Region leaders on the core.
    #[prost(uint64, tag = "3")]
    pub leaders: u64,
    /// Load (requests per second over the last interval).
    #[prost(uint64, tag = "4")]
    pub load: u64,
    /// Bytes used by the core's engine.
    #[prost(uint64, tag = "5")]
    pub used_bytes: u64,
}

/// A store's heartbeat figures.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct StoreStats {
    /// The store.
    #[prost(uint64, tag = "1")]
    pub store_id: u64,
    /// Disk capacity in bytes.
    #[prost(uint64, tag = "2")]
    pub capacity_bytes: u64,
    /// Bytes used by the store's data.
    #[prost(uint64, tag = "3")]
    pub used_bytes: u64,
    /// Bytes still free on the disk.
    #[prost(uint64, tag = "4")]
    pub available_bytes: u64,
    /// Load of the whole store (requests per second over the last interval).
    #[prost(uint64, tag = "5")]
    pub load: u64,
    /// Region replicas on the store.
    #[prost(uint64, tag = "6")]
    pub region_count: u64,
    /// Region leaders on the store.
    #[prost(uint64, tag = "7")]
    pub leader_count: u64,
    /// Per-core figures.
    #[prost(message, repeated, tag = "8")]
    pub cores: Vec<CoreStats>,
    /// The oldest start timestamp of a transaction lock (`NS_KV`) on the store's replicas
    /// (none: no lock); the transaction GC safe point stays at or below it.
    #[prost(uint64, optional, tag = "9")]
    pub min_lock_ts: Option<u64>,
}

/// Whether a store is alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum StoreState {
    /// Unknown (never sent by the coordinator).
    Unknown = 0,
    /// A heartbeat arrived within `--store-down-after`.
    Up = 1,
    /// No heartbeat for longer than `--store-down-after`.
    Down = 2,
}

/// A store as the coordinator sees it.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct StoreInfo {
    /// Identity and addresses.
    #[prost(message, optional, tag = "1")]
    pub meta: Option<StoreMeta>,
    /// The last heartbeat's figures (none before the first heartbeat).
    #[prost(message, optional, tag = "2")]
    pub stats: Option<StoreStats>,
    /// Up or down.
    #[prost(enumeration = "StoreState", tag = "3")]
    pub state: i32,
    /// Milliseconds since the last heartbeat (or registration, or coordinator start);
    /// `u64::MAX` once a new store registered at this store's rpc address.
    #[prost(uint64, tag = "4")]
    pub since_heartbeat_ms: u64,
}

/// One replica of a region: raft peer id, store and the store's core that hosts it.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Peer {
    /// Raft peer id (unique in the cluster).
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// The store holding the replica.
    #[prost(uint64, tag = "2")]
    pub store_id: u64,
    /// The core of the store hosting the replica (`None`: not known to the sender).
    #[prost(uint32, optional, tag = "3")]
    pub core: Option<u32>,
    /// A learner (receives the log, does not vote) rather than a voter.
    #[prost(bool, tag = "4")]
    pub learner: bool,
}

/// A region: key range `[start_key, end_key)` (empty end: unbounded), epoch and peers.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Region {
    /// Region id.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// First key (inclusive).
    #[prost(bytes = "vec", tag = "2")]
    pub start_key: Vec<u8>,
    /// End key (exclusive); empty: unbounded.
    #[prost(bytes = "vec", tag = "3")]
    pub end_key: Vec<u8>,
    /// Bumped by split and merge.
    #[prost(uint64, tag = "4")]
    pub epoch_version: u64,
    /// Bumped by membership changes.
    #[prost(uint64, tag = "5")]
    pub epoch_conf_version: u64,
    /// Replicas.
    #[prost(message, repeated, tag = "6")]
    pub peers: Vec<Peer>,
}

impl Region {
    /// Whether `key` is in the region's range.
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start_key.as_slice()
            && (self.end_key.is_empty() || key < self.end_key.as_slice())
    }

    /// Whether the ranges of `self` and `other` share a key.
    pub fn overlaps(&self, other: &Region) -> bool {
        let a_before_b_end = other.end_key.is_empty() || self.start_key < other.end_key;
        let b_before_a_end = self.end_key.is_empty() || other.start_key < self.end_key;
        a_before_b_end && b_before_a_end
    }

    /// The region's epoch.
    pub fn epoch(&self) -> Epoch {
        Epoch {
            version: self.epoch_version,
            conf_version: self.epoch_conf_version,
        }
    }

    /// The peer with this id.
    pub fn peer(&self, peer_id: u64) -> Option<&Peer> {
        self.peers.iter().find(|p| p.id == peer_id)
    }
}

impl From<&RegionDescriptor> for Region {
    fn from(d: &RegionDescriptor) -> Region {
        Region {
            id: d.id,
            start_key: d.start_key.clone(),
            end_key: d.end_key.clone(),
            epoch_version: d.epoch.version,
            epoch_conf_version: d.epoch.conf_version,
            peers: d
                .peers
                .iter()
                .map(|p| Peer {
                    id: p.peer_id,
                    store_id: p.store_id,
                    core: None,
                    learner: p.role == PeerRole::Learner,
                })
                .collect(),
        }
    }
}

impl From<&Region> for RegionDescriptor {
    fn from(r: &Region) -> RegionDescriptor {
        RegionDescriptor {
            id: r.id,
            start_key: r.start_key.clone(),
            end_key: r.end_key.clone(),
            epoch: r.epoch(),
            peers: r
                .peers
                .iter()
                .map(|p| PeerMeta {
                    store_id: p.store_id,
                    peer_id: p.id,
                    role: if p.learner {
                        PeerRole::Learner
                    } else {
                        PeerRole::Voter
                    },
                })
                .collect(),
        }
    }
}

/// A region as persisted by the coordinator: descriptor and leader.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RegionRecord {
    /// The descriptor, cores filled in where known.
    #[prost(message, optional, tag = "1")]
    pub region: Option<Region>,
    /// The leader's peer id (0: not known yet).
    #[prost(uint64, tag = "2")]
    pub leader_peer_id: u64,
}

/// A region leader's report.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RegionHeartbeat {
    /// The leader's descriptor.
    #[prost(message, optional, tag = "1")]
    pub region: Option<Region>,
    /// The sender's peer id (the leader).
    #[prost(uint64, tag = "2")]
    pub leader_peer_id: u64,
    /// Approximate bytes in the region.
    #[prost(uint64, tag = "3")]
    pub approximate_size_bytes: u64,
    /// Approximate keys in the region.
    #[prost(uint64, tag = "4")]
    pub approximate_keys: u64,
    /// Whether the two figures above were measured; a report without them (a replica
    /// reporting its core, a leader that has not measured yet) leaves the recorded ones.
    #[prost(bool, tag = "5")]
    pub measured: bool,
    /// Requests the leader served per second over its last load window (0: idle or not
    /// measured; older stores never send it). Leader balance by load uses it.
    #[prost(uint64, tag = "6")]
    pub requests_per_sec: u64,
}

/// A route: a region, its leader and the stores that hold it.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Route {
    /// The region with each replica's (store, core).
    #[prost(message, optional, tag = "1")]
    pub region: Option<Region>,
    /// The leader's peer id (0: not known yet).
    #[prost(uint64, tag = "2")]
    pub leader_peer_id: u64,
    /// Each store holding a replica, with its addresses (one entry per store).
    #[prost(message, repeated, tag = "3")]
    pub stores: Vec<StoreMeta>,
    /// The region's data size as its leader last measured it (region listings only; `None`:
    /// not reported to this coordinator leader yet).
    #[prost(uint64, optional, tag = "4")]
    pub approximate_size_bytes: Option<u64>,
}

impl Route {
    /// The leader's peer, if known.
    pub fn leader(&self) -> Option<&Peer> {
        self.region.as_ref()?.peer(self.leader_peer_id)
    }

    /// The addresses of store `id`, if it is in the route.
    pub fn store(&self, id: u64) -> Option<&StoreMeta> {
        self.stores.iter().find(|s| s.id == id)
    }
}

/// Register a store (id 0: new store, the coordinator assigns an id).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RegisterStoreRequest {
    /// The store's identity and addresses.
    #[prost(message, optional, tag = "1")]
    pub store: Option<StoreMeta>,
}

/// The registered store's id.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RegisterStoreResponse {
    /// The store id (assigned when the request had 0).
    #[prost(uint64, tag = "1")]
    pub store_id: u64,
}

/// Bootstrap the cluster: the first regions, split at `split_keys`, `replicas` each.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct BootstrapRequest {
    /// Strictly increasing, non-empty keys; `n` keys make `n + 1` regions covering all keys.
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub split_keys: Vec<Vec<u8>>,
    /// Replicas per region (1..=7).
    #[prost(uint32, tag = "2")]
    pub replicas: u32,
}

/// The regions created by a bootstrap.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct BootstrapResponse {
    /// Regions in key order.
    #[prost(message, repeated, tag = "1")]
    pub regions: Vec<Region>,
}

/// Look up the region holding a key.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct GetRegionByKeyRequest {
    /// The key.
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
}

/// Look up a region by id.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct GetRegionByIdRequest {
    /// The region id.
    #[prost(uint64, tag = "1")]
    pub region_id: u64,
}

/// One route.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RouteResponse {
    /// The route.
    #[prost(message, optional, tag = "1")]
    pub route: Option<Route>,
}

/// Routes of regions from the one holding `start_key`, in key order.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ScanRegionsRequest {
    /// First key of interest.
    #[prost(bytes = "vec", tag = "1")]
    pub start_key: Vec<u8>,
    /// Stop before regions starting at or after this key (empty: no bound).
    #[prost(bytes = "vec", tag = "2")]
    pub end_key: Vec<u8>,
    /// At most this many routes (0 or above the server's bound: the bound).
    #[prost(uint32, tag = "3")]
    pub limit: u32,
}

/// Routes in key order.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ScanRegionsResponse {
    /// The routes.
    #[prost(message, repeated, tag = "1")]
    pub routes: Vec<Route>,
}

/// One store by id.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct GetStoreRequest {
    /// The store id.
    #[prost(uint64, tag = "1")]
    pub store_id: u64,
}

/// Stores.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct StoresResponse {
    /// The stores, by id.
    #[prost(message, repeated, tag = "1")]
    pub stores: Vec<StoreInfo>,
}

/// Every store.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct GetStoresRequest {}

/// Timestamps from the TSO.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct GetTsRequest {
    /// How many (1..=[`crate::tso::MAX_BATCH`]).
    #[prost(uint32, tag = "1")]
    pub count: u32,
}

/// `count` consecutive timestamps `first..first + count`, all in one physical millisecond.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct GetTsResponse {
    /// The first timestamp.
    #[prost(uint64, tag = "1")]
    pub first: u64,
    /// How many.
    #[prost(uint32, tag = "2")]
    pub count: u32,
}

/// Unique ids (regions, peers, stores share one space).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct AllocIdsRequest {
    /// How many (1..=[`crate::ids::MAX_BATCH`]).
    #[prost(uint32, tag = "1")]
    pub count: u32,
}

/// Ids `first..first + count`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct AllocIdsResponse {
    /// The first id.
    #[prost(uint64, tag = "1")]
    pub first: u64,
    /// How many.
    #[prost(uint32, tag = "2")]
    pub count: u32,
}

/// Choose a (store, core) and a peer id for a new replica of a region.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct PlaceReplicaRequest {
    /// The region.
    #[prost(uint64, tag = "1")]
    pub region_id: u64,
}

/// The new replica's peer (id, store, core), recorded as pending until a heartbeat shows it.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct PlaceReplicaResponse {
    /// The peer.
    #[prost(message, optional, tag = "1")]
    pub peer: Option<Peer>,
}

/// A success; in answer to a region heartbeat it may carry an operator for the region.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Ack {
    /// Only in answer to a `RegionHeartbeat`: a membership change or leader transfer the
    /// scheduler asks the region's leader to run (older stores ignore the field).
    #[prost(message, optional, tag = "1")]
    pub operator: Option<Operator>,
    /// Only in answer to a `StoreHeartbeat`: the transaction GC safe point the store's
    /// engines may collect `NS_KV`'s write records under (0: none yet; see
    /// docs/transactions.md, "Garbage collection").
    #[prost(uint64, tag = "2")]
    pub txn_safe_point: u64,
}

/// What a scheduler operator does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum OperatorKind {
    /// Unknown (never sent).
    Unknown = 0,
    /// Add `peer` (id, store, core placed by the coordinator) as a learner.
    AddLearner = 1,
    /// Promote the learner `peer` to a voter.
    Promote = 2,
    /// Remove `peer` from the region.
    RemovePeer = 3,
    /// Transfer the region's leadership to `peer`.
    TransferLeader = 4,
}

/// One step the scheduler asks a region's leader to take.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Operator {
    /// The operator's id (unique within one coordinator leadership).
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// The region.
    #[prost(uint64, tag = "2")]
    pub region_id: u64,
    /// [`OperatorKind`].
    #[prost(enumeration = "OperatorKind", tag = "3")]
    pub kind: i32,
    /// The peer the step is about (id, store, core).
    #[prost(message, optional, tag = "4")]
    pub peer: Option<Peer>,
    /// Why (`repair`, `decommission`, `balance-region`, `balance-size`, `balance-leader` or
    /// `balance-leader-load`), for operators.
    #[prost(string, tag = "5")]
    pub reason: String,
    /// The store the step moves away from (the down store of a repair, the decommissioned
    /// or overloaded store of a move, the leader's store of a transfer; 0: none).
    #[prost(uint64, tag = "6")]
    pub from_store: u64,
    /// In `GetOperators`: milliseconds since the operator was issued.
    #[prost(uint64, tag = "7")]
    pub age_ms: u64,
}

/// The scheduler's in-flight operators.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct GetOperatorsRequest {}

/// The scheduler's in-flight operators and counters (since this coordinator leads).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct OperatorsResponse {
    /// In flight, by region.
    #[prost(message, repeated, tag = "1")]
    pub operators: Vec<Operator>,
    /// Operators issued.
    #[prost(uint64, tag = "2")]
    pub issued: u64,
    /// Operators the heartbeats showed done.
    #[prost(uint64, tag = "3")]
    pub completed: u64,
    /// Operators given up after the timeout.
    #[prost(uint64, tag = "4")]
    pub expired: u64,
    /// Whether the scheduler issues operators.
    #[prost(bool, tag = "5")]
    pub enabled: bool,
}

/// Mark a store `Decommissioning`: the scheduler moves its replicas away, then marks it
/// `Removed`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct DecommissionStoreRequest {
    /// The store.
    #[prost(uint64, tag = "1")]
    pub store_id: u64,
}

/// Switch the scheduler on or off (operators in flight are still resent).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct SetSchedulingRequest {
    /// Whether the scheduler issues new operators.
    #[prost(bool, tag = "1")]
    pub enabled: bool,
}

/// Error codes of [`ErrorResponse`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ErrorCode {
    /// A failure inside the coordinator (engine, corruption).
    Internal = 0,
    /// The request is malformed or out of bounds.
    InvalidArgument = 1,
    /// No regions yet.
    NotBootstrapped = 2,
    /// Bootstrap asked twice.
    AlreadyBootstrapped = 3,
    /// Not enough stores for a placement.
    NotEnoughStores = 4,
    /// Unknown store.
    StoreNotFound = 5,
    /// Unknown region.
    RegionNotFound = 6,
    /// No region covers the key.
    KeyNotCovered = 7,
    /// The heartbeat's epoch is older than the record.
    StaleEpoch = 8,
    /// Ask `leader_addr` instead.
    NotLeader = 9,
    /// Try again later.
    Busy = 10,
}

/// A failed request.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ErrorResponse {
    /// [`ErrorCode`].
    #[prost(enumeration = "ErrorCode", tag = "1")]
    pub code: i32,
    /// Human-readable detail.
    #[prost(string, tag = "2")]
    pub message: String,
    /// With `StaleEpoch`: the coordinator's current record.
    #[prost(message, optional, tag = "3")]
    pub current_region: Option<Region>,
    /// With `NotLeader`: the leader's address if known.
    #[prost(string, tag = "4")]
    pub leader_addr: String,
    /// With `StoreNotFound` / `RegionNotFound`: the id.
    #[prost(uint64, tag = "5")]
    pub id: u64,
    /// With `KeyNotCovered`: the key.
    #[prost(bytes = "vec", tag = "6")]
    pub key: Vec<u8>,
    /// With `NotEnoughStores`: stores needed.
    #[prost(uint64, tag = "7")]
    pub need: u64,
    /// With `NotEnoughStores`: stores available.
    #[prost(uint64, tag = "8")]
    pub have: u64,
}

/// A request to the coordinator.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Request {
    /// The call.
    #[prost(
        oneof = "request::Body",
        tags = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15"
    )]
    pub body: Option<request::Body>,
}

/// The calls of [`Request`].
pub mod request {
    use super::*;

    /// One call.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Body {
        /// Register or re-register a store.
        #[prost(message, tag = "1")]
        RegisterStore(RegisterStoreRequest),
        /// A store's heartbeat.
        #[prost(message, tag = "2")]
        StoreHeartbeat(StoreStats),
        /// A region leader's heartbeat.
        #[prost(message, tag = "3")]
        RegionHeartbeat(RegionHeartbeat),
        /// Create the first regions.
        #[prost(message, tag = "4")]
        Bootstrap(BootstrapRequest),
        /// Route of a key.
        #[prost(message, tag = "5")]
        GetRegionByKey(GetRegionByKeyRequest),
        /// Route of a region id.
        #[prost(message, tag = "6")]
        GetRegionById(GetRegionByIdRequest),
        /// Routes in key order.
        #[prost(message, tag = "7")]
        ScanRegions(ScanRegionsRequest),
        /// One store.
        #[prost(message, tag = "8")]
        GetStore(GetStoreRequest),
        /// Every store.
        #[prost(message, tag = "9")]
        GetStores(GetStoresRequest),
        /// Timestamps.
        #[prost(message, tag = "10")]
        GetTs(GetTsRequest),
        /// Ids.
        #[prost(message, tag = "11")]
        AllocIds(AllocIdsRequest),
        /// Placement of a new replica.
        #[prost(message, tag = "12")]
        PlaceReplica(PlaceReplicaRequest),
        /// The scheduler's in-flight operators.
        #[prost(message, tag = "13")]
        GetOperators(GetOperatorsRequest),
        /// Drain a store (answered with the store's `Stores` record).
        #[prost(message, tag = "14")]
        DecommissionStore(DecommissionStoreRequest),
        /// Switch the scheduler (answered with `Operators`).
        #[prost(message, tag = "15")]
        SetScheduling(SetSchedulingRequest),
    }
}

/// The coordinator's answer.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Response {
    /// The result.
    #[prost(oneof = "response::Body", tags = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11")]
    pub body: Option<response::Body>,
}

/// The results of [`Response`].
pub mod response {
    use super::*;

    /// One result.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Body {
        /// The request failed.
        #[prost(message, tag = "1")]
        Error(ErrorResponse),
        /// Success without data (heartbeats).
        #[prost(message, tag = "2")]
        Ack(Ack),
        /// A store id.
        #[prost(message, tag = "3")]
        RegisterStore(RegisterStoreResponse),
        /// Bootstrapped regions.
        #[prost(message, tag = "4")]
        Bootstrap(BootstrapResponse),
        /// One route.
        #[prost(message, tag = "5")]
        Route(RouteResponse),
        /// Routes.
        #[prost(message, tag = "6")]
        ScanRegions(ScanRegionsResponse),
        /// Stores.
        #[prost(message, tag = "7")]
        Stores(StoresResponse),
        /// Timestamps.
        #[prost(message, tag = "8")]
        Ts(GetTsResponse),
        /// Ids.
        #[prost(message, tag = "9")]
        Ids(AllocIdsResponse),
        /// A placed replica.
        #[prost(message, tag = "10")]
        PlaceReplica(PlaceReplicaResponse),
        /// The scheduler's operators.
        #[prost(message, tag = "11")]
        Operators(OperatorsResponse),
    }
}

/// A mutation of the coordinator's persisted state. Every change goes through one, applied
/// by `ClusterState::apply` (deterministic: same commands, same state), so replicas of the
/// coordinator can replicate state by running the same commands through a raft log.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Command {
    /// The mutation.
    #[prost(oneof = "command::Body", tags = "1, 2, 3, 4, 5, 6")]
    pub body: Option<command::Body>,
}

/// The mutations of [`Command`].
pub mod command {
    use super::*;

    /// One mutation.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Body {
        /// Add or update a store.
        #[prost(message, tag = "1")]
        PutStore(StoreMeta),
        /// Add or replace regions, remove others (overlapped by a split or merge), drop
        /// pending peers that the regions now show.
        #[prost(message, tag = "2")]
        PutRegions(PutRegions),
        /// Mark the cluster bootstrapped with its first regions.
        #[prost(message, tag = "3")]
        Bootstrap(PutRegions),
        /// Raise the id fence: ids below `value` may have been handed out.
        #[prost(uint64, tag = "4")]
        RaiseIdFence(u64),
        /// Raise the TSO bound: physical times up to `value` ms may have been handed out.
        #[prost(uint64, tag = "5")]
        RaiseTsoBound(u64),
        /// Record a placed replica that no heartbeat shows yet.
        #[prost(message, tag = "6")]
        PutPendingPeer(PendingPeer),
    }
}

/// Regions to write and to remove.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PutRegions {
    /// Regions to add or replace.
    #[prost(message, repeated, tag = "1")]
    pub regions: Vec<RegionRecord>,
    /// Region ids to remove.
    #[prost(uint64, repeated, tag = "2")]
    pub remove: Vec<u64>,
    /// Pending peer ids to forget.
    #[prost(uint64, repeated, tag = "3")]
    pub resolved_pending: Vec<u64>,
    /// In a `Bootstrap`: the replicas each region was created with (the scheduler's
    /// target; 0 in other commands and in workdirs bootstrapped before it was recorded).
    #[prost(uint32, tag = "4")]
    pub replicas: u32,
}

/// A replica placed by the coordinator that no region heartbeat shows yet.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct PendingPeer {
    /// The region it is for.
    #[prost(uint64, tag = "1")]
    pub region_id: u64,
    /// The peer with its store and core.
    #[prost(message, optional, tag = "2")]
    pub peer: Option<Peer>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use prost::Message;

    fn peer() -> impl Strategy<Value = Peer> {
        (
            any::<u64>(),
            any::<u64>(),
            proptest::option::of(0u32..64),
            any::<bool>(),
        )
            .prop_map(|(id, store_id, core, learner)| Peer {
                id,
                store_id,
                core,
                learner,
            })
    }

    fn region() -> impl Strategy<Value = Region> {
        (
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..16),
            proptest::collection::vec(any::<u8>(), 0..16),
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec(peer(), 0..6),
        )
            .prop_map(|(id, start_key, end_key, v, cv, peers)| Region {
                id,
                start_key,
                end_key,
                epoch_version: v,
                epoch_conf_version: cv,
                peers,
            })
    }

    proptest! {
        #[test]
        fn requests_round_trip(r in region(), leader in any::<u64>(), size in any::<u64>(), key in proptest::collection::vec(any::<u8>(), 0..32), count in any::<u32>()) {
            let reqs = vec![
                request::Body::RegionHeartbeat(RegionHeartbeat { region: Some(r.clone()), leader_peer_id: leader, approximate_size_bytes: size, approximate_keys: size / 3, measured: true, requests_per_sec: 0 }),
                request::Body::GetRegionByKey(GetRegionByKeyRequest { key: key.clone() }),
                request::Body::GetTs(GetTsRequest { count }),
                request::Body::Bootstrap(BootstrapRequest { split_keys: vec![key.clone()], replicas: count }),
                request::Body::RegisterStore(RegisterStoreRequest { store: Some(StoreMeta { id: leader, rpc_addr: "a:1".into(), redis_addr: "b:2".into(), cores: count, version: String::new(), admin_state: StoreAdminState::Decommissioning as i32, labels: [("host".to_string(), "h1".to_string())].into() }) }),
            ];
            for body in reqs {
                let req = Request { body: Some(body) };
                let back = Request::decode(req.encode_to_vec().as_slice()).expect("decode");
                prop_assert_eq!(back, req);
            }
        }

        #[test]
        fn responses_and_commands_round_trip(r in region(), leader in any::<u64>(), first in any::<u64>()) {
            let route = Route { region: Some(r.clone()), leader_peer_id: leader, stores: vec![StoreMeta { id: 1, rpc_addr: "x".into(), ..Default::default() }], approximate_size_bytes: Some(first) };
            let resps = vec![
                response::Body::Route(RouteResponse { route: Some(route) }),
                response::Body::Ts(GetTsResponse { first, count: 3 }),
                response::Body::Ack(Ack { txn_safe_point: 0, operator: Some(Operator { id: first, region_id: r.id, kind: OperatorKind::AddLearner as i32, peer: r.peers.first().cloned(), reason: "repair".into(), from_store: leader, age_ms: 0 }) }),
                response::Body::Error(crate::Error::StaleEpoch { region: r.id, current: Box::new(r.clone()) }.to_proto()),
            ];
            for body in resps {
                let resp = Response { body: Some(body) };
                let back = Response::decode(resp.encode_to_vec().as_slice()).expect("decode");
                prop_assert_eq!(back, resp);
            }
            let cmd = Command { body: Some(command::Body::PutRegions(PutRegions { regions: vec![RegionRecord { region: Some(r.clone()), leader_peer_id: leader }], remove: vec![first], resolved_pending: vec![leader], replicas: 3 })) };
            prop_assert_eq!(Command::decode(cmd.encode_to_vec().as_slice()).expect("decode"), cmd);
        }

        #[test]
        fn region_descriptor_conversion_keeps_everything_but_cores(r in region()) {
            let d = RegionDescriptor::from(&r);
            let back = Region::from(&d);
            let mut without_cores = r.clone();
            for p in &mut without_cores.peers { p.core = None; }
            prop_assert_eq!(back, without_cores);
            prop_assert_eq!(RegionDescriptor::decode(&d.encode()).expect("decode"), d);
        }
    }

    #[test]
    fn error_responses_map_back_to_typed_errors() {
        let cases = [
            crate::Error::StoreNotFound(7),
            crate::Error::RegionNotFound(9),
            crate::Error::NotEnoughStores { need: 3, have: 2 },
            crate::Error::NotLeader {
                leader_addr: "10.0.0.1:2390".into(),
            },
            crate::Error::NotBootstrapped,
        ];
        for e in cases {
            let back = crate::Error::from_proto(e.to_proto());
            assert_eq!(back.to_string(), e.to_string());
        }
    }
}

//! NoKV's regions and their Raft peers.
//!
//! [`region`]: the region model (descriptor, epoch, routing checks) and its
//! persistence in the engine's meta namespace. [`storage`]: a raft-rs
//! `Storage` whose log lives in the engine's WAL as opaque records, with a
//! bounded in-memory cache of recent entries. [`wire`]: the frame every message between
//! NoKV processes travels in (version, cluster id, size bound, checksum). [`transport`]: raft
//! messages between stores (envelopes, batching into frames, bounded send queues, reconnect
//! backoff, store address resolution, checks on arrival). [`core`]: every peer of one core
//! (one engine), driven in poll rounds that persist all peers' Ready in one
//! WAL write and apply committed entries without logging their data twice; a
//! round's engine work can run off the core's thread.

pub mod codec;
pub mod core;
pub mod error;
pub mod kv;
pub mod logger;
pub mod merge;
pub mod rate_limit;
pub mod region;
pub mod snapshot;
pub mod snapshot_stream;
pub mod split;
pub mod storage;
pub mod transport;
pub mod txn_wire;
pub mod wire;

pub use crate::core::{
    durable_applied, AppendBatch, Applied, Apply, ApplyBatch, CheckpointPlan, CoreConfig,
    EntrySink, Outbox, PeerChange, RaftCore, ReadPath, Recovered, Round, RoundStats,
};
pub use error::{Error, Result};
pub use merge::{MergeEntry, MergeState};
pub use rate_limit::RateLimiter;
pub use region::{Epoch, PeerMeta, PeerRole, RegionDescriptor, RegionMap};
pub use snapshot::{ApplySnapshot, SnapshotKey, SnapshotTask};
pub use split::SplitRequest;
pub use storage::{LogReplay, PeerStorage, ReplayedRegion};

/// raft-rs types used in this crate's API (entries, messages, hard state).
pub use raft::prelude as raftpb;

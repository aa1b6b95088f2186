//! NoKV's regions and their Raft peers.
//!
//! [`region`]: the region model (descriptor, epoch, routing checks) and its
//! persistence in the engine's meta namespace. [`storage`]: a raft-rs
//! `Storage` whose log lives in the engine's WAL as opaque records, with a
//! bounded in-memory cache of recent entries. [`core`]: every peer of one core
//! (one engine), driven in poll rounds that persist all peers' Ready in one
//! WAL write and apply committed entries without logging their data twice.

pub mod codec;
pub mod core;
pub mod error;
pub mod logger;
pub mod region;
pub mod storage;

pub use crate::core::{Apply, CoreConfig, RaftCore, RoundStats};
pub use error::{Error, Result};
pub use region::{Epoch, PeerMeta, RegionDescriptor, RegionMap};
pub use storage::{LogReplay, PeerStorage, ReplayedRegion};

/// raft-rs types used in this crate's API (entries, messages, hard state).
pub use raft::prelude as raftpb;

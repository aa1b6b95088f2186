//! The crate's one error type.

use crate::region::{Epoch, RegionDescriptor};
use thiserror::Error;

/// Region routing and Raft failures.
#[derive(Debug, Error)]
pub enum Error {
    /// This peer is not the region's leader; `leader` is the peer id it knows of.
    #[error("region {region}: not leader (leader hint: {leader:?})")]
    NotLeader {
        /// The region.
        region: u64,
        /// The leader's peer id, if known.
        leader: Option<u64>,
    },
    /// The request was routed with a stale view of the region.
    #[error("region {}: epoch {request:?} does not match {:?}", current.id, current.epoch)]
    EpochNotMatch {
        /// The epoch the request carried.
        request: Epoch,
        /// The region as it is now.
        current: Box<RegionDescriptor>,
    },
    /// No region with this id lives here.
    #[error("region {0} not found")]
    RegionNotFound(u64),
    /// The key is outside the region's range.
    #[error("key {key:?} is not in region {region} [{start:?}, {end:?})")]
    KeyNotInRegion {
        /// The key.
        key: Vec<u8>,
        /// The region.
        region: u64,
        /// Its start key.
        start: Vec<u8>,
        /// Its end key (empty: unbounded).
        end: Vec<u8>,
    },
    /// Too many proposals are waiting to be applied in this region.
    #[error("region {region}: {pending} proposals pending, the limit")]
    Busy {
        /// The region.
        region: u64,
        /// Proposals waiting.
        pending: usize,
    },
    /// The leader did not take a proposal into its log (a leader transfer is in progress,
    /// or too much is uncommitted): nothing was written, it can be retried.
    #[error("region {region}: the leader did not take the proposal (leader transfer in progress or too much uncommitted); nothing was written")]
    NotTaken {
        /// The region.
        region: u64,
    },
    /// The region takes no proposal for a moment (a split of it is on its way through the
    /// log, or it is being moved to another core): nothing was written; once the split
    /// applied or the move finished, the proposal belongs elsewhere or may be made again.
    #[error(
        "region {region}: being split or moved, no proposal for a moment; nothing was written"
    )]
    Paused {
        /// The region.
        region: u64,
    },
    /// A proposal was dropped (leadership changed before it was committed).
    #[error("region {region}: proposal at index {index} was dropped")]
    ProposalDropped {
        /// The region.
        region: u64,
        /// The index it had been given.
        index: u64,
    },
    /// A proposal was refused before reaching the log.
    #[error("region {region}: invalid proposal: {reason}")]
    InvalidProposal {
        /// The region.
        region: u64,
        /// Why.
        reason: String,
    },
    /// The storage engine failed.
    #[error("engine: {context}: {source}")]
    Engine {
        /// What was being done.
        context: String,
        /// The engine's error.
        source: nokv::Error,
    },
    /// A committed entry could not be applied (its write failed in the engine).
    #[error("region {region}: applying entry {index} failed: {detail}")]
    Apply {
        /// The region.
        region: u64,
        /// The entry's index.
        index: u64,
        /// What failed.
        detail: String,
    },
    /// raft-rs refused an operation.
    #[error("raft: region {region}: {source}")]
    Raft {
        /// The region.
        region: u64,
        /// raft-rs's error.
        source: raft::Error,
    },
    /// A raft message addressed to another peer than the one hosted here.
    #[error("region {region}: message for peer {to}, this store hosts peer {local}")]
    PeerMismatch {
        /// The region.
        region: u64,
        /// The peer the message is addressed to.
        to: u64,
        /// The local peer.
        local: u64,
    },
    /// A region snapshot could not be made, moved or applied.
    #[error("region {region}: snapshot: {detail}")]
    Snapshot {
        /// The region.
        region: u64,
        /// What failed.
        detail: String,
    },
    /// No address is known for a store (the resolver does not know it).
    #[error("store {store}: no known address")]
    StoreUnknown {
        /// The store.
        store: u64,
    },
    /// A raft message could not be encoded or decoded for the transport.
    #[error("region {region}: raft message: {detail}")]
    Message {
        /// The region.
        region: u64,
        /// What failed.
        detail: String,
    },
    /// A persisted record could not be decoded, or the replayed log is inconsistent.
    #[error("corrupt {what}: {detail}")]
    Corrupt {
        /// What was being decoded.
        what: &'static str,
        /// What was wrong.
        detail: String,
    },
}

impl Error {
    /// Wraps an engine error with what was being done.
    pub fn engine(context: impl Into<String>, source: nokv::Error) -> Error {
        Error::Engine {
            context: context.into(),
            source,
        }
    }
}

/// Shorthand for results with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

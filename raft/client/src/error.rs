//! The crate's one error type.

use std::time::Duration;
use thiserror::Error;

/// Result with the crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Everything a cluster call can fail with; each carries the region and key it was about
/// where there is one (`key` is shown escaped, at most 64 bytes of it).
#[derive(Debug, Error)]
pub enum Error {
    /// The caller passed something unusable (no endpoints, a zero deadline).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The region did not answer in time: its leader may be changing or its stores down.
    /// Retrying later may succeed; a write may or may not have been applied.
    #[error("TRYAGAIN region {region} (key {key}): no answer within the {deadline:?} deadline after {attempts} attempts; last: {last}")]
    TryAgain {
        /// The region the call was for (0: not resolved).
        region: u64,
        /// The key the call was routed by (empty for calls by region).
        key: String,
        /// The call's deadline.
        deadline: Duration,
        /// Attempts made.
        attempts: u32,
        /// The last failure seen.
        last: String,
    },
    /// A write reached the region's leader (or may have) and no answer says whether it
    /// applied: the connection failed or timed out after the request was sent, or the
    /// store answered that it may still apply. It is not sent again, since a retried
    /// non-idempotent write (INCR, APPEND, a SET overtaken by another client's) could apply
    /// twice; the caller decides.
    #[error("TRYAGAIN region {region} (key {key}): the write's outcome is unknown, it may still apply: {detail}")]
    WriteUndetermined {
        /// The region.
        region: u64,
        /// The key the write was routed by.
        key: String,
        /// What happened.
        detail: String,
    },
    /// No route could be learnt from the coordinator before the deadline (coordinators
    /// unreachable, the cluster not bootstrapped, no region covering the key).
    #[error("CLUSTERDOWN no route for {what} within the {deadline:?} deadline; last: {last}")]
    ClusterDown {
        /// The key or region the route was wanted for.
        what: String,
        /// The call's deadline.
        deadline: Duration,
        /// The coordinator's last error.
        last: String,
    },
    /// A store refused the request (undecodable, unknown kind, stopping): not retried.
    #[error("store {store} refused the request for region {region} (key {key}): {message}")]
    Refused {
        /// The store that refused.
        store: u64,
        /// The region.
        region: u64,
        /// The key the call was routed by.
        key: String,
        /// The store's reason.
        message: String,
    },
    /// The command ran and answered a Redis error (e.g. `WRONGTYPE ...`).
    #[error("region {region} (key {key}): {message}")]
    Server {
        /// The region.
        region: u64,
        /// The key.
        key: String,
        /// The error reply's text.
        message: String,
    },
    /// A store's reply does not decode or is not what the call expects.
    #[error("region {region}: unexpected reply: {detail}")]
    UnexpectedReply {
        /// The region.
        region: u64,
        /// What was wrong.
        detail: String,
    },
    /// A coordinator call failed with an error that retrying does not fix.
    #[error("coordinator: {0}")]
    Coordinator(#[from] nokv_coordinator::Error),
    /// A transactional operation failed with a typed error (write conflict, a lock still
    /// held at the deadline, rolled back, ...); see [`Error::is_txn_retryable`].
    #[error("region {region}: transaction: {error}")]
    Txn {
        /// The region that answered.
        region: u64,
        /// The store's error.
        error: Box<nokv_raft::txn_wire::TxnError>,
    },
    /// The commit of a transaction's primary key got no answer: the transaction may or
    /// may not be committed (a later reader decides it for good).
    #[error("transaction {start_ts}: commit outcome unknown: {detail}")]
    CommitUndetermined {
        /// The transaction's start timestamp.
        start_ts: u64,
        /// What happened.
        detail: String,
    },
}

impl Error {
    /// Whether retrying the call later may succeed (the cluster was unavailable).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::TryAgain { .. } | Error::ClusterDown { .. })
    }

    /// The store's transaction error, if this is one.
    pub fn txn_error(&self) -> Option<&nokv_raft::txn_wire::TxnError> {
        match self {
            Error::Txn { error, .. } => Some(error.as_ref()),
            _ => None,
        }
    }

    /// Whether the transaction failed on a conflict with another (write conflict, a lock
    /// that stayed, rolled back by a reader) or ran longer than the GC life time (too
    /// old): running it again from `begin` may succeed.
    pub fn is_txn_retryable(&self) -> bool {
        use nokv_raft::txn_wire::TxnErrorKind as K;
        self.txn_error().is_some_and(|e| {
            matches!(
                e.kind(),
                K::WriteConflict | K::KeyIsLocked | K::RolledBack | K::TxnNotFound | K::TxnTooOld
            )
        })
    }
}

/// A key for error messages: escaped, at most 64 bytes.
pub(crate) fn show_key(key: &[u8]) -> String {
    let cut = &key[..key.len().min(64)];
    let mut s = cut.escape_ascii().to_string();
    if key.len() > cut.len() {
        s.push_str("...");
    }
    s
}

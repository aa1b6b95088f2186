//! The transaction layer's error type: every failure names the key and transaction.

use super::lock::Lock;

/// Result alias of the transaction layer.
pub type TxnResult<T> = std::result::Result<T, TxnError>;

/// Every error a Percolator operation can return; none of them has written anything (an
/// operation returns a batch only when it succeeds).
#[derive(Debug, thiserror::Error)]
pub enum TxnError {
    /// A lock of another transaction (or one that blocks this read) is on the key.
    #[error("key {} is locked by txn {} (primary {})", .key.escape_ascii(), .lock.start_ts, .lock.primary.escape_ascii())]
    KeyIsLocked {
        /// The locked key.
        key: Vec<u8>,
        /// The lock found on it.
        lock: Lock,
    },
    /// A write committed at or after this transaction's start timestamp.
    #[error("write conflict on key {}: txn {start_ts} meets txn {conflict_start_ts} committed at {conflict_commit_ts}", .key.escape_ascii())]
    WriteConflict {
        /// The key.
        key: Vec<u8>,
        /// The transaction that tried to write.
        start_ts: u64,
        /// Start timestamp of the transaction that wrote first.
        conflict_start_ts: u64,
        /// Its commit timestamp (>= `start_ts`).
        conflict_commit_ts: u64,
    },
    /// The transaction was already rolled back on this key.
    #[error("txn {start_ts} was rolled back (key {})", .key.escape_ascii())]
    RolledBack {
        /// The key.
        key: Vec<u8>,
        /// The transaction.
        start_ts: u64,
    },
    /// The transaction is already committed on this key (a rollback is refused).
    #[error("txn {start_ts} is already committed at {commit_ts} (key {})", .key.escape_ascii())]
    AlreadyCommitted {
        /// The key.
        key: Vec<u8>,
        /// The transaction.
        start_ts: u64,
        /// Its commit timestamp.
        commit_ts: u64,
    },
    /// Neither a lock nor a commit or rollback record of the transaction is on the key.
    #[error("txn {start_ts} not found on key {}: no lock and no commit or rollback record", .key.escape_ascii())]
    TxnNotFound {
        /// The key.
        key: Vec<u8>,
        /// The transaction.
        start_ts: u64,
    },
    /// The commit timestamp is below the lock's minimum (a reader pushed it); commit again
    /// with a newer timestamp.
    #[error("commit of txn {start_ts} at {commit_ts} is below the key's min_commit_ts {min_commit_ts} (key {})", .key.escape_ascii())]
    CommitTsExpired {
        /// The key.
        key: Vec<u8>,
        /// The transaction.
        start_ts: u64,
        /// The refused commit timestamp.
        commit_ts: u64,
        /// The smallest commit timestamp the lock allows.
        min_commit_ts: u64,
    },
    /// A commit record points at a value in the default column family that is not there.
    #[error("value of txn {start_ts} missing from the default column family (key {})", .key.escape_ascii())]
    DefaultNotFound {
        /// The key.
        key: Vec<u8>,
        /// Start timestamp the value should be stored at.
        start_ts: u64,
    },
    /// A stored lock or write record failed to decode.
    #[error("bad {what} record on key {}: {msg}", .key.escape_ascii())]
    BadRecord {
        /// "lock" or "write".
        what: &'static str,
        /// The key.
        key: Vec<u8>,
        /// What was wrong.
        msg: String,
    },
    /// An argument is invalid (zero or misordered timestamps, empty or duplicate keys).
    #[error("invalid transaction argument: {0}")]
    InvalidArgument(String),
    /// The engine failed underneath (IO, corruption, a read below the GC safe point, ...).
    #[error(transparent)]
    Engine(#[from] crate::Error),
}

/// Why a record failed to decode (the caller adds the key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CodecError(pub String);

impl CodecError {
    /// The record error for `key` (what: "lock" or "write").
    pub fn on_key(self, what: &'static str, key: &[u8]) -> TxnError {
        TxnError::BadRecord {
            what,
            key: key.to_vec(),
            msg: self.0,
        }
    }
}

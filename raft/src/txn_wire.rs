//! Transactional requests on a store's RPC port: the payload of a `KvKind::Txn`
//! [`crate::kv::KvRequest`], one Percolator operation (`nokv::txn`) on one region, and its
//! answer.
//!
//! Keys are user keys of the ordered-KV namespace (`nokv::NS_KV`). A store keeps each under
//! its cluster position (`slot u16 BE | key`, the Redis hash slot of the key, `{tags}`
//! included), so a region `[start_slot BE, end_slot BE)` holds the transactional keys of its
//! slots as it holds the Redis keys; every key of a request must be in the region. Scan
//! bounds are positions (`nokv_client::position`).
//!
//! The store answers a `KvKind::Txn` request with a `Reply` like any other: an error reply
//! (`-TRYAGAIN ...`, `-BUSY ...`, `-MISCONF ...`: nothing was decided, retry or give up) or
//! a bulk string holding an encoded [`TxnResponse`] (the operation's result or its typed
//! [`TxnError`]).

use nokv::txn;

/// What a mutation does to its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum MutationKind {
    /// Write the value.
    Put = 0,
    /// Delete the key.
    Delete = 1,
    /// Lock the key only.
    Lock = 2,
}

/// One key of a transaction and what it does to it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TxnMutation {
    /// The user key.
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    /// Put, delete or lock.
    #[prost(enumeration = "MutationKind", tag = "2")]
    pub kind: i32,
    /// The value of a put.
    #[prost(bytes = "vec", tag = "3")]
    pub value: Vec<u8>,
}

impl TxnMutation {
    /// A put of `value` to `key`.
    pub fn put(key: &[u8], value: &[u8]) -> TxnMutation {
        TxnMutation {
            key: key.to_vec(),
            kind: MutationKind::Put as i32,
            value: value.to_vec(),
        }
    }

    /// A delete of `key`.
    pub fn delete(key: &[u8]) -> TxnMutation {
        TxnMutation {
            key: key.to_vec(),
            kind: MutationKind::Delete as i32,
            value: Vec::new(),
        }
    }

    /// The engine's mutation, its key given as `stored` (None: an unknown kind).
    pub fn to_engine(&self, stored: Vec<u8>) -> Option<txn::Mutation> {
        let op = match MutationKind::try_from(self.kind).ok()? {
            MutationKind::Put => txn::MutationOp::Put(self.value.clone()),
            MutationKind::Delete => txn::MutationOp::Delete,
            MutationKind::Lock => txn::MutationOp::Lock,
        };
        Some(txn::Mutation { key: stored, op })
    }
}

/// First phase of a two-phase commit: lock every key (`nokv::txn::prewrite`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Prewrite {
    /// The keys of this region and what they become.
    #[prost(message, repeated, tag = "1")]
    pub mutations: Vec<TxnMutation>,
    /// The transaction's primary key (any region).
    #[prost(bytes = "vec", tag = "2")]
    pub primary: Vec<u8>,
    /// The transaction's start timestamp.
    #[prost(uint64, tag = "3")]
    pub start_ts: u64,
    /// The locks' TTL, ms of physical time after `start_ts`.
    #[prost(uint64, tag = "4")]
    pub ttl_ms: u64,
    /// Keys in the whole transaction (0: this request's).
    #[prost(uint64, tag = "5")]
    pub txn_size: u64,
}

/// Second phase: commit keys of a prewritten transaction (`nokv::txn::commit`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Commit {
    /// The keys.
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub keys: Vec<Vec<u8>>,
    /// The transaction's start timestamp.
    #[prost(uint64, tag = "2")]
    pub start_ts: u64,
    /// Its commit timestamp.
    #[prost(uint64, tag = "3")]
    pub commit_ts: u64,
}

/// Rolls keys of a transaction back (`nokv::txn::rollback`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Rollback {
    /// The keys.
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub keys: Vec<Vec<u8>>,
    /// The transaction's start timestamp.
    #[prost(uint64, tag = "2")]
    pub start_ts: u64,
}

/// The state of a transaction, decided on its primary (`nokv::txn::check_txn_status`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct CheckTxnStatus {
    /// The primary key.
    #[prost(bytes = "vec", tag = "1")]
    pub primary: Vec<u8>,
    /// The transaction's start timestamp.
    #[prost(uint64, tag = "2")]
    pub start_ts: u64,
    /// The asking reader's start timestamp (0: none).
    #[prost(uint64, tag = "3")]
    pub caller_start_ts: u64,
    /// A current TSO timestamp (decides the TTL).
    #[prost(uint64, tag = "4")]
    pub current_ts: u64,
}

/// Extends the TTL of a live transaction's primary lock (`nokv::txn::heart_beat`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct HeartBeat {
    /// The primary key.
    #[prost(bytes = "vec", tag = "1")]
    pub primary: Vec<u8>,
    /// The transaction's start timestamp.
    #[prost(uint64, tag = "2")]
    pub start_ts: u64,
    /// The TTL wanted, in ms from the physical time of `start_ts`.
    #[prost(uint64, tag = "3")]
    pub advise_ttl_ms: u64,
}

/// Commits (`commit_ts` > 0) or rolls back (0) secondary keys of a decided transaction
/// (`nokv::txn::resolve_lock`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ResolveLock {
    /// The transaction's start timestamp.
    #[prost(uint64, tag = "1")]
    pub start_ts: u64,
    /// Its commit timestamp, 0: rolled back.
    #[prost(uint64, tag = "2")]
    pub commit_ts: u64,
    /// The keys.
    #[prost(bytes = "vec", repeated, tag = "3")]
    pub keys: Vec<Vec<u8>>,
}

/// A snapshot read of one key (`nokv::txn::get`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Get {
    /// The key.
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    /// The snapshot timestamp.
    #[prost(uint64, tag = "2")]
    pub ts: u64,
}

/// A snapshot read of the region's keys between two positions (`nokv::txn::scan`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Scan {
    /// First position (inclusive; cut to the region's start).
    #[prost(bytes = "vec", tag = "1")]
    pub start: Vec<u8>,
    /// End position (exclusive; empty: none; cut to the region's end).
    #[prost(bytes = "vec", tag = "2")]
    pub end: Vec<u8>,
    /// The snapshot timestamp.
    #[prost(uint64, tag = "3")]
    pub ts: u64,
    /// Most pairs returned.
    #[prost(uint32, tag = "4")]
    pub limit: u32,
}

/// A transaction whose keys are all in this region, committed in one step
/// (`nokv::txn::commit_1pc`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Commit1pc {
    /// The keys and what they become.
    #[prost(message, repeated, tag = "1")]
    pub mutations: Vec<TxnMutation>,
    /// The transaction's start timestamp.
    #[prost(uint64, tag = "2")]
    pub start_ts: u64,
    /// Its commit timestamp.
    #[prost(uint64, tag = "3")]
    pub commit_ts: u64,
}

/// One transactional operation on one region.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TxnRequest {
    /// The operation.
    #[prost(oneof = "TxnOp", tags = "1, 2, 3, 4, 5, 6, 7, 8, 9")]
    pub op: Option<TxnOp>,
}

/// The operations of a [`TxnRequest`].
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum TxnOp {
    /// Prewrite.
    #[prost(message, tag = "1")]
    Prewrite(Prewrite),
    /// Commit.
    #[prost(message, tag = "2")]
    Commit(Commit),
    /// Rollback.
    #[prost(message, tag = "3")]
    Rollback(Rollback),
    /// Check a transaction's status on its primary.
    #[prost(message, tag = "4")]
    CheckTxnStatus(CheckTxnStatus),
    /// Resolve secondary locks.
    #[prost(message, tag = "5")]
    ResolveLock(ResolveLock),
    /// Read one key.
    #[prost(message, tag = "6")]
    Get(Get),
    /// Read a range.
    #[prost(message, tag = "7")]
    Scan(Scan),
    /// One-phase commit.
    #[prost(message, tag = "8")]
    Commit1pc(Commit1pc),
    /// Extend a primary lock's TTL.
    #[prost(message, tag = "9")]
    HeartBeat(HeartBeat),
}

impl TxnRequest {
    /// A request carrying `op`.
    pub fn new(op: TxnOp) -> TxnRequest {
        TxnRequest { op: Some(op) }
    }

    /// Whether the operation only reads (no raft entry).
    pub fn is_read(&self) -> bool {
        matches!(self.op, Some(TxnOp::Get(_) | TxnOp::Scan(_)))
    }

    /// The user keys the operation touches (latched on the store; empty for a scan).
    pub fn keys(&self) -> Vec<&[u8]> {
        match &self.op {
            None | Some(TxnOp::Scan(_)) => Vec::new(),
            Some(TxnOp::Prewrite(p)) => p.mutations.iter().map(|m| m.key.as_slice()).collect(),
            Some(TxnOp::Commit1pc(p)) => p.mutations.iter().map(|m| m.key.as_slice()).collect(),
            Some(TxnOp::Commit(c)) => c.keys.iter().map(Vec::as_slice).collect(),
            Some(TxnOp::Rollback(r)) => r.keys.iter().map(Vec::as_slice).collect(),
            Some(TxnOp::ResolveLock(r)) => r.keys.iter().map(Vec::as_slice).collect(),
            Some(TxnOp::CheckTxnStatus(c)) => vec![c.primary.as_slice()],
            Some(TxnOp::Get(g)) => vec![g.key.as_slice()],
            Some(TxnOp::HeartBeat(h)) => vec![h.primary.as_slice()],
        }
    }

    /// The encoded request.
    pub fn encode(&self) -> Vec<u8> {
        prost::Message::encode_to_vec(self)
    }

    /// Decodes a request.
    pub fn decode(buf: &[u8]) -> Result<TxnRequest, prost::DecodeError> {
        <TxnRequest as prost::Message>::decode(buf)
    }
}

/// A lock as an error carries it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WireLock {
    /// The lock's transaction's primary key.
    #[prost(bytes = "vec", tag = "1")]
    pub primary: Vec<u8>,
    /// Its start timestamp.
    #[prost(uint64, tag = "2")]
    pub start_ts: u64,
    /// Its TTL (ms after `start_ts`).
    #[prost(uint64, tag = "3")]
    pub ttl_ms: u64,
    /// Its minimum commit timestamp.
    #[prost(uint64, tag = "4")]
    pub min_commit_ts: u64,
    /// Keys in its transaction (0: unknown).
    #[prost(uint64, tag = "5")]
    pub txn_size: u64,
}

impl From<&txn::Lock> for WireLock {
    fn from(l: &txn::Lock) -> WireLock {
        WireLock {
            primary: l.primary.clone(),
            start_ts: l.start_ts,
            ttl_ms: l.ttl_ms,
            min_commit_ts: l.min_commit_ts,
            txn_size: l.txn_size,
        }
    }
}

/// The kinds of [`TxnError`] (those of `nokv::txn::TxnError`, and `KeyNotInRegion`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum TxnErrorKind {
    /// Not set.
    Unknown = 0,
    /// Another transaction's lock is on `key` (`lock`).
    KeyIsLocked = 1,
    /// A write committed at or after the start timestamp (`conflict_*`).
    WriteConflict = 2,
    /// The transaction was rolled back.
    RolledBack = 3,
    /// The transaction is already committed (`commit_ts`).
    AlreadyCommitted = 4,
    /// No lock and no record of the transaction.
    TxnNotFound = 5,
    /// The commit timestamp is below the lock's `min_commit_ts`.
    CommitTsExpired = 6,
    /// A committed long value is missing.
    DefaultNotFound = 7,
    /// A stored record failed to decode.
    BadRecord = 8,
    /// An argument was invalid.
    InvalidArgument = 9,
    /// The engine failed.
    Engine = 10,
    /// A key is not in the region (stale routes: look the route up again).
    KeyNotInRegion = 11,
    /// The timestamp is below the transaction GC safe point (`min_commit_ts` holds it):
    /// what it would read may be collected; start the transaction again.
    TxnTooOld = 12,
}

/// An operation's typed failure: nothing of it was written.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TxnError {
    /// What went wrong.
    #[prost(enumeration = "TxnErrorKind", tag = "1")]
    pub kind: i32,
    /// The key (user key).
    #[prost(bytes = "vec", tag = "2")]
    pub key: Vec<u8>,
    /// KeyIsLocked: the lock.
    #[prost(message, optional, tag = "3")]
    pub lock: Option<WireLock>,
    /// The transaction's start timestamp.
    #[prost(uint64, tag = "4")]
    pub start_ts: u64,
    /// WriteConflict: the other transaction's start timestamp.
    #[prost(uint64, tag = "5")]
    pub conflict_start_ts: u64,
    /// WriteConflict: its commit timestamp; AlreadyCommitted, CommitTsExpired: the
    /// commit timestamp.
    #[prost(uint64, tag = "6")]
    pub commit_ts: u64,
    /// CommitTsExpired: the lock's minimum commit timestamp.
    #[prost(uint64, tag = "7")]
    pub min_commit_ts: u64,
    /// The text of the error.
    #[prost(string, tag = "8")]
    pub message: String,
}

impl TxnError {
    /// The wire form of an engine error; `user_key` turns the stored key it names back
    /// into the user key.
    pub fn from_engine(e: &txn::TxnError, user_key: impl Fn(&[u8]) -> Vec<u8>) -> TxnError {
        let mut out = TxnError {
            message: e.to_string(),
            ..TxnError::default()
        };
        let kind = match e {
            txn::TxnError::KeyIsLocked { key, lock } => {
                out.key = user_key(key);
                out.lock = Some(lock.into());
                TxnErrorKind::KeyIsLocked
            }
            txn::TxnError::WriteConflict {
                key,
                start_ts,
                conflict_start_ts,
                conflict_commit_ts,
            } => {
                out.key = user_key(key);
                out.start_ts = *start_ts;
                out.conflict_start_ts = *conflict_start_ts;
                out.commit_ts = *conflict_commit_ts;
                TxnErrorKind::WriteConflict
            }
            txn::TxnError::RolledBack { key, start_ts } => {
                out.key = user_key(key);
                out.start_ts = *start_ts;
                TxnErrorKind::RolledBack
            }
            txn::TxnError::AlreadyCommitted {
                key,
                start_ts,
                commit_ts,
            } => {
                out.key = user_key(key);
                out.start_ts = *start_ts;
                out.commit_ts = *commit_ts;
                TxnErrorKind::AlreadyCommitted
            }
            txn::TxnError::TxnNotFound { key, start_ts } => {
                out.key = user_key(key);
                out.start_ts = *start_ts;
                TxnErrorKind::TxnNotFound
            }
            txn::TxnError::CommitTsExpired {
                key,
                start_ts,
                commit_ts,
                min_commit_ts,
            } => {
                out.key = user_key(key);
                out.start_ts = *start_ts;
                out.commit_ts = *commit_ts;
                out.min_commit_ts = *min_commit_ts;
                TxnErrorKind::CommitTsExpired
            }
            txn::TxnError::DefaultNotFound { key, start_ts } => {
                out.key = user_key(key);
                out.start_ts = *start_ts;
                TxnErrorKind::DefaultNotFound
            }
            txn::TxnError::BadRecord { key, .. } => {
                out.key = user_key(key);
                TxnErrorKind::BadRecord
            }
            txn::TxnError::InvalidArgument(_) => TxnErrorKind::InvalidArgument,
            txn::TxnError::Engine(_) => TxnErrorKind::Engine,
        };
        out.kind = kind as i32;
        out
    }
}

impl std::fmt::Display for TxnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.kind(), self.message)
    }
}

impl std::error::Error for TxnError {}

/// A value read by [`Get`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct Value {
    /// Whether the key has a value at the timestamp.
    #[prost(bool, tag = "1")]
    pub found: bool,
    /// The value.
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// A key and its value.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KvPair {
    /// The user key.
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    /// The value.
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// What [`Scan`] read, in position order.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Pairs {
    /// The pairs.
    #[prost(message, repeated, tag = "1")]
    pub pairs: Vec<KvPair>,
}

/// The kinds of [`Status`] (`nokv::txn::TxnStatus`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum StatusKind {
    /// Not set.
    Unknown = 0,
    /// Committed at `commit_ts`.
    Committed = 1,
    /// Rolled back before.
    RolledBack = 2,
    /// Its lock had expired: rolled back now.
    TtlExpired = 3,
    /// Alive (`ttl_ms`, `min_commit_ts`).
    Locked = 4,
    /// Nothing there: a rollback record was written.
    LockNotExistRolledBack = 5,
}

/// The answer of [`CheckTxnStatus`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct Status {
    /// What the transaction is.
    #[prost(enumeration = "StatusKind", tag = "1")]
    pub kind: i32,
    /// Committed: its commit timestamp.
    #[prost(uint64, tag = "2")]
    pub commit_ts: u64,
    /// Locked: its TTL.
    #[prost(uint64, tag = "3")]
    pub ttl_ms: u64,
    /// Locked: its minimum commit timestamp.
    #[prost(uint64, tag = "4")]
    pub min_commit_ts: u64,
}

impl Status {
    /// The wire form of `s`.
    pub fn from_engine(s: txn::TxnStatus) -> Status {
        let mut out = Status::default();
        let kind = match s {
            txn::TxnStatus::Committed(ts) => {
                out.commit_ts = ts;
                StatusKind::Committed
            }
            txn::TxnStatus::RolledBack => StatusKind::RolledBack,
            txn::TxnStatus::TtlExpired => StatusKind::TtlExpired,
            txn::TxnStatus::Locked {
                ttl_ms,
                min_commit_ts,
            } => {
                out.ttl_ms = ttl_ms;
                out.min_commit_ts = min_commit_ts;
                StatusKind::Locked
            }
            txn::TxnStatus::LockNotExistRolledBack => StatusKind::LockNotExistRolledBack,
        };
        out.kind = kind as i32;
        out
    }
}

/// Success; a one-phase commit also reports its commit timestamp.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Done {
    /// [`Commit1pc`]: the timestamp the transaction committed at, which is an earlier
    /// attempt's when this one found the transaction committed (0 for other operations,
    /// and from stores that predate the field).
    #[prost(uint64, tag = "1")]
    pub commit_ts: u64,
}

/// The answer to a [`TxnRequest`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct TxnResponse {
    /// The result or the error.
    #[prost(oneof = "TxnResult", tags = "1, 2, 3, 4, 5, 6")]
    pub result: Option<TxnResult>,
}

/// The results of a [`TxnResponse`].
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum TxnResult {
    /// Prewrite, commit, rollback, resolve, 1PC succeeded.
    #[prost(message, tag = "1")]
    Done(Done),
    /// Get's value.
    #[prost(message, tag = "2")]
    Value(Value),
    /// Scan's pairs.
    #[prost(message, tag = "3")]
    Pairs(Pairs),
    /// CheckTxnStatus's answer.
    #[prost(message, tag = "4")]
    Status(Status),
    /// The operation failed; nothing was written.
    #[prost(message, tag = "5")]
    Error(TxnError),
    /// HeartBeat's answer: the lock's TTL now.
    #[prost(message, tag = "6")]
    Ttl(Ttl),
}

/// The answer of [`HeartBeat`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct Ttl {
    /// The primary lock's TTL in ms from the physical time of its start_ts.
    #[prost(uint64, tag = "1")]
    pub ttl_ms: u64,
}

impl TxnResponse {
    /// A response carrying `result`.
    pub fn new(result: TxnResult) -> TxnResponse {
        TxnResponse {
            result: Some(result),
        }
    }

    /// The encoded response.
    pub fn encode(&self) -> Vec<u8> {
        prost::Message::encode_to_vec(self)
    }

    /// Decodes a response.
    pub fn decode(buf: &[u8]) -> Result<TxnResponse, prost::DecodeError> {
        <TxnResponse as prost::Message>::decode(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_responses_round_trip() {
        let req = TxnRequest::new(TxnOp::Prewrite(Prewrite {
            mutations: vec![TxnMutation::put(b"a", b"1"), TxnMutation::delete(b"b")],
            primary: b"a".to_vec(),
            start_ts: 5,
            ttl_ms: 3000,
            txn_size: 2,
        }));
        assert_eq!(TxnRequest::decode(&req.encode()).unwrap(), req);
        assert_eq!(req.keys(), vec![&b"a"[..], &b"b"[..]]);
        assert!(!req.is_read());
        let lock = txn::Lock {
            primary: b"p".to_vec(),
            start_ts: 3,
            ttl_ms: 10,
            kind: txn::LockKind::Put,
            short_value: None,
            min_commit_ts: 4,
            txn_size: 1,
        };
        let e = txn::TxnError::KeyIsLocked {
            key: b"\x00\x01k".to_vec(),
            lock,
        };
        let wire = TxnError::from_engine(&e, |k| k[2..].to_vec());
        assert_eq!(wire.kind(), TxnErrorKind::KeyIsLocked);
        assert_eq!(wire.key, b"k");
        assert_eq!(wire.lock.as_ref().map(|l| l.start_ts), Some(3));
        let resp = TxnResponse::new(TxnResult::Error(wire));
        assert_eq!(TxnResponse::decode(&resp.encode()).unwrap(), resp);
        let s = Status::from_engine(txn::TxnStatus::Committed(9));
        assert_eq!((s.kind(), s.commit_ts), (StatusKind::Committed, 9));
        let hb = TxnRequest::new(TxnOp::HeartBeat(HeartBeat {
            primary: b"p".to_vec(),
            start_ts: 5,
            advise_ttl_ms: 9000,
        }));
        assert_eq!(TxnRequest::decode(&hb.encode()).unwrap(), hb);
        assert_eq!(hb.keys(), vec![&b"p"[..]]);
        let ttl = TxnResponse::new(TxnResult::Ttl(Ttl { ttl_ms: 9000 }));
        assert_eq!(TxnResponse::decode(&ttl.encode()).unwrap(), ttl);
    }
}

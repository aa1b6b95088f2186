//! Prewrite, the first phase of a two-phase commit: check each key, then lock it.

use super::error::{TxnError, TxnResult};
use super::lock::{Lock, LockKind};
use super::mvcc::{
    check_args, check_newer_writes, load_lock, NewerWrites, TxnBatch, SHORT_VALUE_MAX_LEN,
};
use super::reader::MvccRead;
use crate::WriteBatch;

/// What a transaction does to one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MutationOp {
    /// Write this value.
    Put(Vec<u8>),
    /// Delete the key.
    Delete,
    /// Change nothing but lock the key (conflicts like a write).
    Lock,
}

/// One key of a transaction and what it does to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mutation {
    /// The user key.
    pub key: Vec<u8>,
    /// The change.
    pub op: MutationOp,
}

impl Mutation {
    /// A put of `value` to `key`.
    pub fn put(key: &[u8], value: &[u8]) -> Mutation {
        Mutation {
            key: key.to_vec(),
            op: MutationOp::Put(value.to_vec()),
        }
    }

    /// A delete of `key`.
    pub fn delete(key: &[u8]) -> Mutation {
        Mutation {
            key: key.to_vec(),
            op: MutationOp::Delete,
        }
    }

    /// A lock-only mutation of `key`.
    pub fn lock(key: &[u8]) -> Mutation {
        Mutation {
            key: key.to_vec(),
            op: MutationOp::Lock,
        }
    }

    /// The lock kind this mutation takes.
    pub fn lock_kind(&self) -> LockKind {
        match self.op {
            MutationOp::Put(_) => LockKind::Put,
            MutationOp::Delete => LockKind::Delete,
            MutationOp::Lock => LockKind::Lock,
        }
    }
}

/// Parameters of a prewrite besides its keys and timestamps.
#[derive(Debug, Clone, Default)]
pub struct PrewriteOptions {
    /// The locks' TTL in milliseconds of physical time after `start_ts`.
    pub lock_ttl_ms: u64,
    /// Keys in the whole transaction (0: the number of mutations of this call).
    pub txn_size: u64,
    /// Smallest commit timestamp the locks allow (0: `start_ts`).
    pub min_commit_ts: u64,
    /// Test only: skip the write-conflict check (the negative control of the isolation
    /// checker). Never set outside tests.
    #[doc(hidden)]
    pub test_skip_write_conflict_check: bool,
}

/// Prewrites `mutations` of the transaction `start_ts` whose primary key is `primary`:
/// every key is checked, then locked (long values go to `CF_DEFAULT` at `start_ts`).
///
/// Per key: another transaction's lock is [`TxnError::KeyIsLocked`]; the transaction's own
/// lock is left as it is (an idempotent retry); a commit record of another transaction at
/// `commit_ts >= start_ts` is [`TxnError::WriteConflict`]; a rollback record of this
/// transaction is [`TxnError::RolledBack`]; a commit record of this transaction (a retry
/// after commit) writes nothing. The first failing key fails the whole call, which then
/// returns no batch.
pub fn prewrite<R: MvccRead + ?Sized>(
    r: &R,
    mutations: &[Mutation],
    primary: &[u8],
    start_ts: u64,
    opts: &PrewriteOptions,
) -> TxnResult<WriteBatch> {
    check_args(start_ts, mutations.iter().map(|m| m.key.as_slice()))?;
    if primary.is_empty() {
        return Err(TxnError::InvalidArgument("empty primary key".into()));
    }
    let mut out = TxnBatch::new(r.ns());
    for m in mutations {
        if let Some(lock) = load_lock(r, &m.key)? {
            if lock.start_ts == start_ts {
                continue;
            }
            return Err(TxnError::KeyIsLocked {
                key: m.key.clone(),
                lock,
            });
        }
        match check_newer_writes(r, &m.key, start_ts, opts.test_skip_write_conflict_check)? {
            NewerWrites::OwnCommit(_) => continue,
            NewerWrites::Clear => {}
        }
        let short_value = match &m.op {
            MutationOp::Put(v) if v.len() <= SHORT_VALUE_MAX_LEN => Some(v.clone()),
            MutationOp::Put(v) => {
                out.put_value(&m.key, start_ts, v);
                None
            }
            MutationOp::Delete | MutationOp::Lock => None,
        };
        let lock = Lock {
            primary: primary.to_vec(),
            start_ts,
            ttl_ms: opts.lock_ttl_ms,
            kind: m.lock_kind(),
            short_value,
            min_commit_ts: opts.min_commit_ts.max(start_ts),
            txn_size: match opts.txn_size {
                0 => mutations.len() as u64,
                n => n,
            },
        };
        out.put_lock(&m.key, &lock);
    }
    Ok(out.into_batch())
}

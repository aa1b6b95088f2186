//! One-phase commit: when every key of a transaction is in one region, check and commit
//! in one batch without locks.

use super::error::{TxnError, TxnResult};
use super::mvcc::{
    check_args, check_commit_ts, check_newer_writes, find_txn_write, load_lock, NewerWrites,
    TxnBatch, SHORT_VALUE_MAX_LEN,
};
use super::prewrite::{Mutation, MutationOp};
use super::reader::MvccRead;
use super::write::{Write, WriteKind};
use crate::WriteBatch;

/// What a one-phase commit computed: the batch to apply and the transaction's commit
/// timestamp.
#[derive(Debug)]
pub struct OnePc {
    /// The records to write (empty when the transaction had committed already).
    pub batch: WriteBatch,
    /// The timestamp the transaction's write records carry: the requested one, or on a
    /// retry the one its earlier attempt committed at.
    pub commit_ts: u64,
}

/// Commits `mutations` of the transaction `start_ts` at `commit_ts` directly: each key gets
/// the checks of a prewrite (any lock is [`TxnError::KeyIsLocked`], a newer commit record
/// [`TxnError::WriteConflict`], a rollback of this transaction [`TxnError::RolledBack`]),
/// then its write record at `commit_ts` (a long value in `CF_DEFAULT` at `start_ts`). A key
/// the transaction already committed (a retry) is skipped. All keys or none.
///
/// A retry after the commit applied (its answer was lost) writes nothing and succeeds,
/// even when other transactions have since committed or locked its keys: its own commit
/// record is looked for first. (Otherwise the caller would see a conflict, take the
/// transaction for not committed and run it again.) Such a retry may come with a newer
/// `commit_ts` than the one that applied: [`OnePc::commit_ts`] is the one the records
/// carry, which is what the caller must report.
pub fn commit_1pc<R: MvccRead + ?Sized>(
    r: &R,
    mutations: &[Mutation],
    start_ts: u64,
    commit_ts: u64,
) -> TxnResult<OnePc> {
    check_args(start_ts, mutations.iter().map(|m| m.key.as_slice()))?;
    check_commit_ts(start_ts, commit_ts)?;
    // The batch wrote every key at once: one record of this transaction settles it.
    for m in mutations {
        match find_txn_write(r, &m.key, start_ts)? {
            Some((_, w)) if w.kind == WriteKind::Rollback => {
                return Err(TxnError::RolledBack {
                    key: m.key.clone(),
                    start_ts,
                })
            }
            Some((applied_ts, _)) => {
                return Ok(OnePc {
                    batch: WriteBatch::new(),
                    commit_ts: applied_ts,
                })
            }
            None => {}
        }
    }
    let mut out = TxnBatch::new(r.ns());
    for m in mutations {
        if let Some(lock) = load_lock(r, &m.key)? {
            return Err(TxnError::KeyIsLocked {
                key: m.key.clone(),
                lock,
            });
        }
        if let NewerWrites::OwnCommit(_) = check_newer_writes(r, &m.key, start_ts, false)? {
            continue;
        }
        let (kind, short_value) = match &m.op {
            MutationOp::Put(v) if v.len() <= SHORT_VALUE_MAX_LEN => {
                (WriteKind::Put, Some(v.clone()))
            }
            MutationOp::Put(v) => {
                out.put_value(&m.key, start_ts, v);
                (WriteKind::Put, None)
            }
            MutationOp::Delete => (WriteKind::Delete, None),
            MutationOp::Lock => (WriteKind::Lock, None),
        };
        let w = Write {
            kind,
            start_ts,
            short_value,
        };
        out.put_write(&m.key, commit_ts, &w);
    }
    Ok(OnePc {
        batch: out.into_batch(),
        commit_ts,
    })
}

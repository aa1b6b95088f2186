//! Commit, the second phase: turn the transaction's locks into write records.

use super::error::{TxnError, TxnResult};
use super::mvcc::{check_args, check_commit_ts, find_txn_write, load_lock, TxnBatch};
use super::reader::MvccRead;
use super::write::{Write, WriteKind};
use crate::WriteBatch;

/// Commits `keys` of the transaction `start_ts` at `commit_ts` (> `start_ts`): each lock of
/// the transaction becomes a write record at version `commit_ts` and is removed.
///
/// A key without the transaction's lock is fine if it already carries the transaction's
/// commit record (an idempotent retry); a rollback record there is
/// [`TxnError::RolledBack`], no record at all [`TxnError::TxnNotFound`]. A `commit_ts`
/// below the lock's `min_commit_ts` is [`TxnError::CommitTsExpired`]. Any error fails the
/// whole call (no batch).
pub fn commit<R: MvccRead + ?Sized>(
    r: &R,
    keys: &[Vec<u8>],
    start_ts: u64,
    commit_ts: u64,
) -> TxnResult<WriteBatch> {
    check_args(start_ts, keys.iter().map(Vec::as_slice))?;
    check_commit_ts(start_ts, commit_ts)?;
    let mut out = TxnBatch::new(r.ns());
    for key in keys {
        commit_key(r, &mut out, key, start_ts, commit_ts, true)?;
    }
    Ok(out.into_batch())
}

/// Commits one key into `out`; `strict` makes a missing lock without any record of the
/// transaction an error (otherwise it is skipped).
pub(crate) fn commit_key<R: MvccRead + ?Sized>(
    r: &R,
    out: &mut TxnBatch,
    key: &[u8],
    start_ts: u64,
    commit_ts: u64,
    strict: bool,
) -> TxnResult<()> {
    if let Some(lock) = load_lock(r, key)? {
        if lock.start_ts == start_ts {
            if commit_ts < lock.min_commit_ts {
                return Err(TxnError::CommitTsExpired {
                    key: key.to_vec(),
                    start_ts,
                    commit_ts,
                    min_commit_ts: lock.min_commit_ts,
                });
            }
            let w = Write {
                kind: WriteKind::of_lock(lock.kind),
                start_ts,
                short_value: lock.short_value,
            };
            out.put_write(key, commit_ts, &w);
            out.delete_lock(key);
            return Ok(());
        }
    }
    match find_txn_write(r, key, start_ts)? {
        Some((_, w)) if w.kind != WriteKind::Rollback => Ok(()),
        Some(_) => Err(TxnError::RolledBack {
            key: key.to_vec(),
            start_ts,
        }),
        None if strict => Err(TxnError::TxnNotFound {
            key: key.to_vec(),
            start_ts,
        }),
        None => Ok(()),
    }
}

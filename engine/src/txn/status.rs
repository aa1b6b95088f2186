//! Checking (and settling) a transaction's fate at its primary key.

use super::error::TxnResult;
use super::mvcc::{find_txn_write, load_lock, TxnBatch};
use super::reader::MvccRead;
use super::rollback::rollback_key;
use super::ts::lock_expired;
use super::write::WriteKind;
use crate::WriteBatch;

/// The state of a transaction as its primary key tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnStatus {
    /// Committed at this timestamp.
    Committed(u64),
    /// Already rolled back (a rollback record is there).
    RolledBack,
    /// The primary's lock had expired: this call rolls it back (apply the batch).
    TtlExpired,
    /// Still alive: the lock's TTL and (possibly raised) minimum commit timestamp.
    Locked {
        /// The lock's TTL in milliseconds after its start_ts.
        ttl_ms: u64,
        /// Its minimum commit timestamp after this call.
        min_commit_ts: u64,
    },
    /// Neither lock nor record: this call writes a rollback record (apply the batch) so
    /// that a prewrite still on its way is refused.
    LockNotExistRolledBack,
}

/// The status of the transaction `start_ts` from its `primary` key at `current_ts` (hybrid
/// timestamps, see [`super::ts`]), with the batch that settles it.
///
/// A live lock whose TTL has passed (physical time of `current_ts` at least the lock's
/// physical time plus `ttl_ms`) is rolled back. A live lock that has not expired is left,
/// but when `caller_start_ts` (a reader's timestamp; 0 for none) is at or above its
/// `min_commit_ts`, that is raised to `caller_start_ts + 1`: the transaction can then only
/// commit after the reader's snapshot, which may read past the primary's lock.
pub fn check_txn_status<R: MvccRead + ?Sized>(
    r: &R,
    primary: &[u8],
    start_ts: u64,
    caller_start_ts: u64,
    current_ts: u64,
) -> TxnResult<(WriteBatch, TxnStatus)> {
    super::mvcc::check_args(start_ts, [primary])?;
    let mut out = TxnBatch::new(r.ns());
    if let Some(mut lock) = load_lock(r, primary)? {
        if lock.start_ts == start_ts {
            if lock_expired(lock.start_ts, lock.ttl_ms, current_ts) {
                rollback_key(r, &mut out, primary, start_ts)?;
                return Ok((out.into_batch(), TxnStatus::TtlExpired));
            }
            let pushed = caller_start_ts
                .checked_add(1)
                .filter(|_| caller_start_ts != 0);
            if let Some(pushed) = pushed.filter(|&p| lock.min_commit_ts < p) {
                lock.min_commit_ts = pushed;
                out.put_lock(primary, &lock);
            }
            let status = TxnStatus::Locked {
                ttl_ms: lock.ttl_ms,
                min_commit_ts: lock.min_commit_ts,
            };
            return Ok((out.into_batch(), status));
        }
    }
    let status = match find_txn_write(r, primary, start_ts)? {
        Some((_, w)) if w.kind == WriteKind::Rollback => TxnStatus::RolledBack,
        Some((commit_ts, _)) => TxnStatus::Committed(commit_ts),
        None => {
            rollback_key(r, &mut out, primary, start_ts)?;
            TxnStatus::LockNotExistRolledBack
        }
    };
    Ok((out.into_batch(), status))
}

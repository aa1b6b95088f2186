//! Heartbeat: a live transaction extends its primary lock's TTL, so that readers do not
//! take a slow commit for a dead client and roll it back.

use super::error::{TxnError, TxnResult};
use super::mvcc::{check_args, find_txn_write, load_lock, TxnBatch};
use super::reader::MvccRead;
use super::write::WriteKind;
use crate::WriteBatch;

/// Raises the TTL of the lock of transaction `start_ts` on `primary` to `advise_ttl_ms`
/// (measured, like every lock TTL, from the physical time of `start_ts`); a TTL already
/// at least that long is kept. Returns the batch (empty when nothing changed) and the
/// lock's TTL. Without the lock: [`TxnError::AlreadyCommitted`] when the transaction
/// committed the key, [`TxnError::RolledBack`] when it was rolled back, else
/// [`TxnError::TxnNotFound`]; the transaction's client stops heartbeating then.
pub fn heart_beat<R: MvccRead + ?Sized>(
    r: &R,
    primary: &[u8],
    start_ts: u64,
    advise_ttl_ms: u64,
) -> TxnResult<(WriteBatch, u64)> {
    check_args(start_ts, [primary])?;
    let mut out = TxnBatch::new(r.ns());
    if let Some(mut lock) = load_lock(r, primary)? {
        if lock.start_ts == start_ts {
            if lock.ttl_ms < advise_ttl_ms {
                lock.ttl_ms = advise_ttl_ms;
                out.put_lock(primary, &lock);
            }
            return Ok((out.into_batch(), lock.ttl_ms));
        }
    }
    Err(match find_txn_write(r, primary, start_ts)? {
        Some((_, w)) if w.kind == WriteKind::Rollback => TxnError::RolledBack {
            key: primary.to_vec(),
            start_ts,
        },
        Some((commit_ts, _)) => TxnError::AlreadyCommitted {
            key: primary.to_vec(),
            start_ts,
            commit_ts,
        },
        None => TxnError::TxnNotFound {
            key: primary.to_vec(),
            start_ts,
        },
    })
}

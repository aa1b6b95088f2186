//! Rollback: remove a transaction's locks and data and leave rollback records behind.

use super::error::{TxnError, TxnResult};
use super::lock::LockKind;
use super::mvcc::{check_args, find_txn_write, load_lock, seek_write, TxnBatch};
use super::reader::MvccRead;
use super::write::{Write, WriteKind};
use crate::WriteBatch;

/// Rolls back `keys` of the transaction `start_ts`: removes its lock and long value and
/// writes a rollback record at version `start_ts`, so that a prewrite arriving late is
/// refused ([`TxnError::RolledBack`]). A key without the lock gets the rollback record too;
/// a key already rolled back is left as it is (idempotent); a key the transaction already
/// committed is [`TxnError::AlreadyCommitted`] and fails the whole call (no batch).
pub fn rollback<R: MvccRead + ?Sized>(
    r: &R,
    keys: &[Vec<u8>],
    start_ts: u64,
) -> TxnResult<WriteBatch> {
    check_args(start_ts, keys.iter().map(Vec::as_slice))?;
    let mut out = TxnBatch::new(r.ns());
    for key in keys {
        rollback_key(r, &mut out, key, start_ts)?;
    }
    Ok(out.into_batch())
}

/// Rolls back one key into `out` (see [`rollback`]).
pub(crate) fn rollback_key<R: MvccRead + ?Sized>(
    r: &R,
    out: &mut TxnBatch,
    key: &[u8],
    start_ts: u64,
) -> TxnResult<()> {
    match load_lock(r, key)? {
        Some(lock) if lock.start_ts == start_ts => {
            if lock.kind == LockKind::Put && lock.short_value.is_none() {
                out.delete_value(key, start_ts);
            }
            out.delete_lock(key);
        }
        _ => match find_txn_write(r, key, start_ts)? {
            Some((_, w)) if w.kind == WriteKind::Rollback => return Ok(()),
            Some((commit_ts, _)) => {
                return Err(TxnError::AlreadyCommitted {
                    key: key.to_vec(),
                    start_ts,
                    commit_ts,
                })
            }
            None => {}
        },
    }
    // With a unique TSO no other transaction commits at exactly `start_ts`; if one did,
    // its record stays (a rollback record there would hide it), and it already makes a
    // late prewrite of this transaction a write conflict.
    let occupied = matches!(seek_write(r, key, start_ts)?, Some((ts, _)) if ts == start_ts);
    if !occupied {
        out.put_write(key, start_ts, &Write::rollback(start_ts));
    }
    Ok(())
}

//! Snapshot reads at a timestamp: point gets and range scans that stop at blocking locks.

use super::error::{TxnError, TxnResult};
use super::lock::{Lock, LockKind};
use super::mvcc::{load_lock, read_committed};
use super::reader::MvccRead;
use crate::key::MAX_VERSION;
use crate::{CF_LOCK, CF_WRITE};

/// True when `lock` hides what a reader at `ts` must see: a put or delete lock taken at or
/// before `ts` whose transaction may still commit at or below `ts` (`min_commit_ts <= ts`).
/// Lock-only locks never block reads.
pub fn lock_blocks_read(lock: &Lock, ts: u64) -> bool {
    lock.kind != LockKind::Lock && lock.start_ts <= ts && lock.min_commit_ts <= ts
}

/// The value of `key` in the snapshot at `ts`; [`TxnError::KeyIsLocked`] when a lock blocks
/// the read (the reader resolves it through the lock's primary and retries).
pub fn get<R: MvccRead + ?Sized>(r: &R, key: &[u8], ts: u64) -> TxnResult<Option<Vec<u8>>> {
    if let Some(lock) = load_lock(r, key)? {
        if lock_blocks_read(&lock, ts) {
            return Err(TxnError::KeyIsLocked {
                key: key.to_vec(),
                lock,
            });
        }
    }
    read_committed(r, key, ts)
}

/// Up to `limit` live `(key, value)` pairs of `[start, end)` (`end` None: to the end) in
/// the snapshot at `ts`, in key order; [`TxnError::KeyIsLocked`] at the first blocking lock.
pub fn scan<R: MvccRead + ?Sized>(
    r: &R,
    start: &[u8],
    end: Option<&[u8]>,
    ts: u64,
    limit: usize,
) -> TxnResult<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut from = start.to_vec();
    while out.len() < limit {
        let w = r.next_key(CF_WRITE, &from, end, ts)?;
        let l = r.next_key(CF_LOCK, &from, end, MAX_VERSION)?;
        let key = match (w, l) {
            (None, None) => break,
            (Some(k), None) | (None, Some(k)) => k,
            (Some(a), Some(b)) => a.min(b),
        };
        if let Some(v) = get(r, &key, ts)? {
            out.push((key.clone(), v));
        }
        from = key;
        from.push(0);
    }
    Ok(out)
}

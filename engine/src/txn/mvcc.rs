//! Shared reads and writes of the three column families: the key's lock, its write records
//! newest first, and the batch an operation builds.

use super::error::{TxnError, TxnResult};
use super::lock::Lock;
use super::reader::MvccRead;
use super::write::{Write, WriteKind};
use crate::key::{KeySpace, MAX_VERSION};
use crate::{WriteBatch, CF_DEFAULT, CF_LOCK, CF_WRITE};

/// The fixed engine version of every lock entry in `CF_LOCK` (one lock per key; a newer
/// write at the same version replaces the older one).
pub const LOCK_VERSION: u64 = 1;

/// Values up to this many bytes ride in the lock and write records; longer ones are stored
/// in `CF_DEFAULT` at version `start_ts`.
pub const SHORT_VALUE_MAX_LEN: usize = 255;

/// The lock on `key`, if any.
pub fn load_lock<R: MvccRead + ?Sized>(r: &R, key: &[u8]) -> TxnResult<Option<Lock>> {
    match r.get_versioned(CF_LOCK, key, MAX_VERSION)? {
        None => Ok(None),
        Some((_, raw)) => Lock::decode(&raw)
            .map(Some)
            .map_err(|e| e.on_key("lock", key)),
    }
}

/// The newest write record of `key` with `commit_ts <= ts`, as `(commit_ts, record)`.
pub fn seek_write<R: MvccRead + ?Sized>(
    r: &R,
    key: &[u8],
    ts: u64,
) -> TxnResult<Option<(u64, Write)>> {
    if ts == 0 {
        return Ok(None);
    }
    match r.get_versioned(CF_WRITE, key, ts)? {
        None => Ok(None),
        Some((commit_ts, raw)) => Write::decode(&raw)
            .map(|w| Some((commit_ts, w)))
            .map_err(|e| e.on_key("write", key)),
    }
}

/// Calls `f` on each write record of `key` with `commit_ts >= floor`, newest first, until
/// it returns `Some`.
pub fn walk_writes_down_to<R: MvccRead + ?Sized, T>(
    r: &R,
    key: &[u8],
    floor: u64,
    mut f: impl FnMut(u64, &Write) -> TxnResult<Option<T>>,
) -> TxnResult<Option<T>> {
    let mut ts = MAX_VERSION;
    while let Some((commit_ts, w)) = seek_write(r, key, ts)? {
        if commit_ts < floor {
            break;
        }
        if let Some(out) = f(commit_ts, &w)? {
            return Ok(Some(out));
        }
        match commit_ts.checked_sub(1) {
            Some(next) => ts = next,
            None => break,
        }
    }
    Ok(None)
}

/// The write record (commit or rollback) of the transaction `start_ts` on `key`, as
/// `(commit_ts, record)`.
pub fn find_txn_write<R: MvccRead + ?Sized>(
    r: &R,
    key: &[u8],
    start_ts: u64,
) -> TxnResult<Option<(u64, Write)>> {
    walk_writes_down_to(r, key, start_ts, |commit_ts, w| {
        Ok((w.start_ts == start_ts).then(|| (commit_ts, w.clone())))
    })
}

/// What the write records of a key say about a transaction that wants to write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewerWrites {
    /// Nothing in the way.
    Clear,
    /// The transaction itself already committed the key at this timestamp (a retry).
    OwnCommit(u64),
}

/// The write-conflict check of a transaction starting at `start_ts` on `key`: a commit
/// record (put, delete or lock) of another transaction at `commit_ts >= start_ts` is a
/// [`TxnError::WriteConflict`]; a rollback record of this transaction is
/// [`TxnError::RolledBack`]. Other transactions' rollback records are no conflict.
/// `skip_conflicts` (a test-only switch) ignores other transactions' commits.
pub fn check_newer_writes<R: MvccRead + ?Sized>(
    r: &R,
    key: &[u8],
    start_ts: u64,
    skip_conflicts: bool,
) -> TxnResult<NewerWrites> {
    let found = walk_writes_down_to(r, key, start_ts, |commit_ts, w| {
        if w.start_ts == start_ts {
            return match w.kind {
                WriteKind::Rollback => Err(TxnError::RolledBack {
                    key: key.to_vec(),
                    start_ts,
                }),
                _ => Ok(Some(NewerWrites::OwnCommit(commit_ts))),
            };
        }
        if w.kind != WriteKind::Rollback && !skip_conflicts {
            return Err(TxnError::WriteConflict {
                key: key.to_vec(),
                start_ts,
                conflict_start_ts: w.start_ts,
                conflict_commit_ts: commit_ts,
            });
        }
        Ok(None)
    })?;
    Ok(found.unwrap_or(NewerWrites::Clear))
}

/// The committed value of `key` visible at `ts` (no lock check): the newest put or delete
/// record at or below `ts`, skipping lock and rollback records.
pub fn read_committed<R: MvccRead + ?Sized>(
    r: &R,
    key: &[u8],
    ts: u64,
) -> TxnResult<Option<Vec<u8>>> {
    let mut at = ts;
    while let Some((commit_ts, w)) = seek_write(r, key, at)? {
        match w.kind {
            WriteKind::Put => return value_of(r, key, w).map(Some),
            WriteKind::Delete => return Ok(None),
            WriteKind::Lock | WriteKind::Rollback => match commit_ts.checked_sub(1) {
                Some(next) => at = next,
                None => break,
            },
        }
    }
    Ok(None)
}

/// The value a put record stands for: its short value or the `CF_DEFAULT` entry at
/// exactly its `start_ts`.
fn value_of<R: MvccRead + ?Sized>(r: &R, key: &[u8], w: Write) -> TxnResult<Vec<u8>> {
    if let Some(v) = w.short_value {
        return Ok(v);
    }
    match r.get_versioned(CF_DEFAULT, key, w.start_ts)? {
        Some((version, v)) if version == w.start_ts => Ok(v),
        _ => Err(TxnError::DefaultNotFound {
            key: key.to_vec(),
            start_ts: w.start_ts,
        }),
    }
}

/// The batch an operation builds, in the reader's namespace.
pub struct TxnBatch {
    ns: u8,
    batch: WriteBatch,
}

impl TxnBatch {
    /// An empty batch for namespace `ns`.
    pub fn new(ns: u8) -> TxnBatch {
        TxnBatch {
            ns,
            batch: WriteBatch::new(),
        }
    }

    fn space(&self, cf: u8) -> KeySpace {
        KeySpace::new(self.ns, cf)
    }

    /// Puts `lock` on `key`.
    pub fn put_lock(&mut self, key: &[u8], lock: &Lock) {
        let s = self.space(CF_LOCK);
        self.batch.put_at(s, key, LOCK_VERSION, &lock.encode());
    }

    /// Removes the lock of `key`.
    pub fn delete_lock(&mut self, key: &[u8]) {
        let s = self.space(CF_LOCK);
        self.batch.delete_at(s, key, LOCK_VERSION);
    }

    /// Puts a write record of `key` at `commit_ts`.
    pub fn put_write(&mut self, key: &[u8], commit_ts: u64, w: &Write) {
        let s = self.space(CF_WRITE);
        self.batch.put_at(s, key, commit_ts, &w.encode());
    }

    /// Puts a long value of `key` at `start_ts`.
    pub fn put_value(&mut self, key: &[u8], start_ts: u64, value: &[u8]) {
        let s = self.space(CF_DEFAULT);
        self.batch.put_at(s, key, start_ts, value);
    }

    /// Deletes the long value of `key` at `start_ts` (a rollback).
    pub fn delete_value(&mut self, key: &[u8], start_ts: u64) {
        let s = self.space(CF_DEFAULT);
        self.batch.delete_at(s, key, start_ts);
    }

    /// The finished batch.
    pub fn into_batch(self) -> WriteBatch {
        self.batch
    }
}

/// Checks `start_ts` (>= 1) and `keys` (non-empty, no duplicates).
pub fn check_args<'a>(start_ts: u64, keys: impl IntoIterator<Item = &'a [u8]>) -> TxnResult<()> {
    if start_ts == 0 {
        return Err(TxnError::InvalidArgument("start_ts 0".into()));
    }
    let mut seen = std::collections::HashSet::new();
    for k in keys {
        if k.is_empty() {
            return Err(TxnError::InvalidArgument("empty key".into()));
        }
        if !seen.insert(k) {
            return Err(TxnError::InvalidArgument(format!(
                "key {} given twice",
                k.escape_ascii()
            )));
        }
    }
    Ok(())
}

/// Checks `commit_ts > start_ts`.
pub fn check_commit_ts(start_ts: u64, commit_ts: u64) -> TxnResult<()> {
    if commit_ts <= start_ts {
        return Err(TxnError::InvalidArgument(format!(
            "commit_ts {commit_ts} not above start_ts {start_ts}"
        )));
    }
    Ok(())
}

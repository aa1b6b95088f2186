//! Apply of the steps of cross-region atomic writes ([`AtomicStep`]): locks, commit,
//! rollback, status. The protocol that drives them is `crate::atomic`; the records are
//! `crate::lock`'s.

use super::{AtomicAction, AtomicStep, Tx};
use crate::error::Result;
use crate::lock::{self, Change, Lock, Locked, Records, COMMITTED, LOCKS, ROLLED_BACK, STATUSES};
use crate::model::{self, Body, Meta, META, SUBKEYS};
use crate::resp::Reply;
use crate::store::{put_logical, Overlay};
use std::collections::BTreeMap;

/// Error code of a step refused because its transaction was rolled back.
pub const ABORTED_CODE: &str = "ABORTED";
/// Error code of a block's lock step whose watched key changed (internal: EXEC answers
/// a null array).
pub const WATCH_FAILED_CODE: &str = "WATCHFAILED a watched key changed";

/// The Redis key a record of a MULTI block belongs to (metadata or hash member), from its
/// logical key.
fn owner_of(logical: &[u8]) -> Option<&[u8]> {
    let stored = logical.get(nokv::key::PREFIX_LEN..)?;
    if logical.starts_with(&META.prefix()) {
        return stored.get(2..);
    }
    if logical.starts_with(&SUBKEYS.prefix()) {
        let len = u32::from_be_bytes(stored.get(2..6)?.try_into().ok()?) as usize;
        return stored.get(6..6 + len);
    }
    None
}

fn aborted() -> Reply {
    Reply::error(format!(
        "{ABORTED_CODE} the transaction was rolled back (a reader found it past its deadline)"
    ))
}

impl Tx<'_> {
    fn lock_of(&self, key: &[u8]) -> Result<Option<Lock>> {
        match self.view.get(LOCKS, &model::meta_key(key))? {
            Some(raw) => Ok(Some(Lock::decode(&raw)?)),
            None => Ok(None),
        }
    }

    fn status_of(&self, step: &AtomicStep) -> Result<Option<u8>> {
        let raw = self
            .view
            .get(STATUSES, &lock::status_key(&step.primary, &step.txn))?;
        Ok(raw.and_then(|r| r.first().copied()))
    }

    fn set_status(&mut self, step: &AtomicStep, status: u8) {
        self.batch.put_at(
            STATUSES,
            &lock::status_key(&step.primary, &step.txn),
            self.version,
            &[status],
        );
    }

    fn unlock(&mut self, key: &[u8]) {
        self.batch
            .delete_at(LOCKS, &model::meta_key(key), self.version);
    }
}

/// Applies one step; writes go to `tx`'s batch.
pub(super) fn apply(step: &AtomicStep, tx: &mut Tx) -> Result<Reply> {
    Ok(match &step.action {
        AtomicAction::Lock {
            deadline_ms,
            changes,
        } => {
            // A rolled-back (or finished) transaction takes no new locks at its primary.
            if changes.iter().any(|(k, _)| *k == step.primary) && tx.status_of(step)?.is_some() {
                return Ok(aborted());
            }
            // The last change of a repeated key wins, as in MSET.
            let mut last = BTreeMap::new();
            for (k, c) in changes {
                last.insert(k.as_slice(), c);
            }
            for k in last.keys() {
                if let Some(l) = tx.lock_of(k)? {
                    if l.txn != step.txn {
                        return Ok(Locked::new(k, &l).reply());
                    }
                }
            }
            for (k, change) in last {
                let record = Lock {
                    txn: step.txn,
                    deadline_ms: *deadline_ms,
                    primary: step.primary.clone(),
                    change: change.clone(),
                };
                tx.batch
                    .put_at(LOCKS, &model::meta_key(k), tx.version, &record.encode());
            }
            // What each key holds now, in the order sent (its value if a string).
            let mut now = Vec::with_capacity(changes.len());
            for (k, _) in changes {
                now.push(match tx.load(k)? {
                    None => Reply::Null,
                    Some(Meta {
                        body: Body::String(v),
                        ..
                    }) => Reply::Bulk(v),
                    Some(_) => Reply::Int(1),
                });
            }
            Reply::Array(now)
        }
        AtomicAction::LockExec {
            deadline_ms,
            watched,
            items,
            positions,
        } => {
            let keys = super::block_keys(watched, items);
            if keys.contains(&step.primary.as_slice()) && tx.status_of(step)?.is_some() {
                return Ok(aborted());
            }
            for k in &keys {
                if let Some(l) = tx.lock_of(k)? {
                    if l.txn != step.txn {
                        return Ok(Locked::new(k, &l).reply());
                    }
                }
            }
            for (k, seen) in watched {
                if tx.view.version(META, &model::meta_key(k))?.unwrap_or(0) != *seen {
                    return Ok(Reply::error(WATCH_FAILED_CODE));
                }
            }
            // Run the block against the locked state; its writes wait in the locks.
            let mut overlay = Overlay::new(&*tx.view, tx.version);
            let replies = super::run_items(items, &mut overlay, tx.now, tx.version)?;
            let mut shares: BTreeMap<Vec<u8>, Records> = BTreeMap::new();
            for (logical, value) in overlay.into_writes() {
                let owner = owner_of(&logical)
                    .filter(|o| keys.contains(o))
                    .or(keys.first().copied())
                    .unwrap_or_default()
                    .to_vec();
                shares.entry(owner).or_default().push((logical, value));
            }
            let distinct: std::collections::BTreeSet<&[u8]> = keys.iter().copied().collect();
            for k in distinct {
                let record = Lock {
                    txn: step.txn,
                    deadline_ms: *deadline_ms,
                    primary: step.primary.clone(),
                    change: shares.remove(k).map_or(Change::Keep, Change::Writes),
                };
                tx.batch
                    .put_at(LOCKS, &model::meta_key(k), tx.version, &record.encode());
            }
            Reply::Array(vec![
                Reply::Array(
                    positions
                        .iter()
                        .map(|p| Reply::Int(i64::from(*p)))
                        .collect(),
                ),
                Reply::Array(replies),
            ])
        }
        AtomicAction::Commit { keys } => {
            if keys.contains(&step.primary) {
                match tx.status_of(step)? {
                    Some(COMMITTED) => {}
                    Some(_) => return Ok(aborted()),
                    None => {
                        // Neither locked nor decided: rolled back and forgotten, or never
                        // locked. Either way this commit must not happen.
                        if tx.lock_of(&step.primary)?.map(|l| l.txn) != Some(step.txn) {
                            return Ok(aborted());
                        }
                        tx.set_status(step, COMMITTED);
                    }
                }
            }
            for k in keys {
                let Some(l) = tx.lock_of(k)? else { continue };
                if l.txn != step.txn {
                    continue;
                }
                match l.change {
                    Change::Put(value) => tx.put_string(k, value, 0),
                    Change::Delete => tx.delete_meta(k),
                    Change::Keep => {}
                    Change::Writes(writes) => {
                        for (logical, value) in &writes {
                            put_logical(&mut tx.batch, logical, value.as_deref(), tx.version);
                        }
                    }
                }
                tx.unlock(k);
            }
            Reply::ok()
        }
        AtomicAction::Rollback { keys } => {
            if keys.contains(&step.primary) {
                match tx.status_of(step)? {
                    Some(COMMITTED) => {
                        return Ok(Reply::error(
                            "ERR the transaction committed: it cannot be rolled back",
                        ))
                    }
                    Some(_) => {}
                    None => tx.set_status(step, ROLLED_BACK),
                }
            }
            for k in keys {
                if tx.lock_of(k)?.is_some_and(|l| l.txn == step.txn) {
                    tx.unlock(k);
                }
            }
            Reply::ok()
        }
        AtomicAction::Check => match tx.status_of(step)? {
            Some(COMMITTED) => Reply::Int(1),
            Some(_) => Reply::Int(2),
            None => match tx.lock_of(&step.primary)? {
                Some(l) if l.txn == step.txn && tx.now < l.deadline_ms => Reply::Int(0),
                held => {
                    if held.is_some_and(|l| l.txn == step.txn) {
                        tx.unlock(&step.primary);
                    }
                    tx.set_status(step, ROLLED_BACK);
                    Reply::Int(2)
                }
            },
        },
        AtomicAction::Forget => {
            tx.batch.delete_at(
                STATUSES,
                &lock::status_key(&step.primary, &step.txn),
                tx.version,
            );
            Reply::ok()
        }
    })
}

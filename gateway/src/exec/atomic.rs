//! Apply of the steps of cross-region atomic writes ([`AtomicStep`]): locks, commit,
//! rollback, status. The protocol that drives them is `crate::atomic`; the records are
//! `crate::lock`'s.

use super::{AtomicAction, AtomicStep, Tx};
use crate::error::Result;
use crate::lock::{self, Change, Lock, Locked, COMMITTED, LOCKS, ROLLED_BACK, STATUSES};
use crate::model::{self, Body, Meta};
use crate::resp::Reply;
use std::collections::BTreeMap;

/// Error code of a step refused because its transaction was rolled back.
pub const ABORTED_CODE: &str = "ABORTED";

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

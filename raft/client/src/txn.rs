//! Percolator transactions through the cluster: [`Client::begin`] and [`Transaction`].
//!
//! A transaction takes its `start_ts` from the coordinator's TSO, reads a snapshot at it
//! (resolving the locks it meets), buffers its writes, and commits them: in one step
//! (`Commit1pc`) when every key is in one region, else in two phases — prewrite every
//! region's keys (the primary's region first), take a `commit_ts`, commit the primary key,
//! then the other keys (which readers would otherwise resolve from the primary). Keys are
//! user keys of the ordered-KV namespace, routed by hash slot like every key
//! (`{tags}` keep keys in one slot, so in one region). See `docs/client.md`.

use crate::backoff::Backoff;
use crate::client::Client;
use crate::error::{Error, Result};
use crate::routes::routing_key;
use nokv_raft::txn_wire::{
    CheckTxnStatus, Commit, Commit1pc, Get, HeartBeat, Prewrite, ResolveLock, Rollback, Scan,
    StatusKind, TxnError, TxnErrorKind, TxnMutation, TxnOp, TxnRequest, TxnResult, WireLock,
};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// First backoff before [`Client::transact`] runs a transaction again (doubling up to
/// [`TXN_RETRY_BACKOFF_MAX`]): about one transaction's time, not a failover's.
pub const TXN_RETRY_BACKOFF_INITIAL: Duration = Duration::from_millis(2);
/// Longest backoff between two attempts of [`Client::transact`].
pub const TXN_RETRY_BACKOFF_MAX: Duration = Duration::from_millis(100);

/// TTL of a transaction's locks (ms of physical time after its start_ts): readers roll
/// back a transaction whose primary lock is older.
pub const DEFAULT_LOCK_TTL_MS: u64 = 3000;

/// A transaction: buffered writes over a snapshot read at its start timestamp.
pub struct Transaction<'a> {
    client: &'a Client,
    start_ts: u64,
    /// Buffered writes: key -> Some(value) for a put, None for a delete.
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    lock_ttl_ms: u64,
    /// When `start_ts` was taken (lock TTLs run from its physical time).
    began: Instant,
}

/// What [`Client::transact`] returns: the body's result, the commit timestamp, and how
/// many attempts it took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transacted<T> {
    /// What the body of the attempt that committed returned.
    pub value: T,
    /// The commit timestamp (the start timestamp of a transaction that wrote nothing).
    pub commit_ts: u64,
    /// Attempts made, the committed one included (at least 1).
    pub attempts: u32,
}

impl Client {
    /// Runs `body` in a fresh transaction and commits it; while an attempt fails with a
    /// retryable error ([`Error::is_txn_retryable`]: a write conflict, a lock held too
    /// long, rolled back), runs it again from a new `begin`, after a jittered backoff
    /// ([`TXN_RETRY_BACKOFF_INITIAL`] doubling up to [`TXN_RETRY_BACKOFF_MAX`]), at most
    /// `max_attempts` times (at least 1). The last error when every attempt failed or an
    /// error is not retryable. `body` may run several times: it must only read and write
    /// through the transaction it is given.
    pub fn transact<T>(
        &self,
        max_attempts: u32,
        mut body: impl FnMut(&mut Transaction<'_>) -> Result<T>,
    ) -> Result<Transacted<T>> {
        let mut backoff = Backoff::new(TXN_RETRY_BACKOFF_INITIAL, TXN_RETRY_BACKOFF_MAX);
        let mut attempts = 0;
        // Bounded by max_attempts.
        loop {
            attempts += 1;
            let run = self.begin().and_then(|mut txn| {
                let value = body(&mut txn)?;
                let commit_ts = txn.commit()?;
                Ok((value, commit_ts))
            });
            match run {
                Ok((value, commit_ts)) => {
                    return Ok(Transacted {
                        value,
                        commit_ts,
                        attempts,
                    })
                }
                Err(e) if e.is_txn_retryable() && attempts < max_attempts.max(1) => {
                    let deadline = Instant::now() + self.options().call_timeout;
                    std::thread::sleep(backoff.next_delay(deadline));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Starts a transaction at a fresh TSO timestamp.
    pub fn begin(&self) -> Result<Transaction<'_>> {
        Ok(Transaction {
            client: self,
            start_ts: self.timestamp()?,
            writes: BTreeMap::new(),
            lock_ttl_ms: DEFAULT_LOCK_TTL_MS,
            began: Instant::now(),
        })
    }

    /// Sends `op` for the region of user key `key`, within `deadline`; a typed error
    /// comes back as [`Error::Txn`]. A `KeyNotInRegion` (stale route) is retried after
    /// dropping the route.
    pub fn txn_op(&self, key: &[u8], op: TxnOp, deadline: Instant) -> Result<TxnResult> {
        let rk = routing_key(key);
        let mut backoff = Backoff::new(self.options().backoff_initial, self.options().backoff_max);
        // Bounded by the deadline.
        loop {
            let (region, resp) = self.txn_request(&rk, TxnRequest::new(op.clone()), deadline)?;
            match resp.result {
                Some(TxnResult::Error(e)) if e.kind() == TxnErrorKind::KeyNotInRegion => {
                    self.forget_region(region);
                    if !backoff.sleep(deadline) {
                        return Err(Error::Txn {
                            region,
                            error: Box::new(e),
                        });
                    }
                }
                Some(TxnResult::Error(e)) => {
                    return Err(Error::Txn {
                        region,
                        error: Box::new(e),
                    })
                }
                Some(r) => return Ok(r),
                None => {
                    return Err(Error::UnexpectedReply {
                        region,
                        detail: "a transaction response without a result".into(),
                    })
                }
            }
        }
    }

    /// Reads `key` at `ts`, resolving the locks it meets (`caller_start_ts` = `ts`) until
    /// `deadline`.
    pub fn snapshot_get(&self, key: &[u8], ts: u64, deadline: Instant) -> Result<Option<Vec<u8>>> {
        let mut backoff = Backoff::new(self.options().backoff_initial, self.options().backoff_max);
        // Bounded by the deadline: every turn resolves a lock or sleeps.
        loop {
            let op = TxnOp::Get(Get {
                key: key.to_vec(),
                ts,
            });
            match self.txn_op(key, op, deadline) {
                Ok(TxnResult::Value(v)) => return Ok(v.found.then_some(v.value)),
                Ok(other) => return Err(unexpected(other)),
                Err(e) => self.after_lock(e, ts, &mut backoff, deadline)?,
            }
        }
    }

    /// Reads up to `limit` pairs with positions in `[start, end)` (`end` empty: no bound;
    /// positions as [`crate::position`]) at `ts`, walking the regions in order, resolving
    /// locks. Pairs come in position order.
    pub fn snapshot_scan(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        ts: u64,
        deadline: Instant,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        let mut pos = start.to_vec();
        let mut backoff = Backoff::new(self.options().backoff_initial, self.options().backoff_max);
        // Bounded by the regions (each turn moves to the next) and the deadline.
        while out.len() < limit {
            let rk = crate::plan::position_routing(&pos);
            let route = self.route_at(&rk, deadline)?;
            let op = TxnOp::Scan(Scan {
                start: pos.clone(),
                end: end.to_vec(),
                ts,
                limit: u32::try_from(limit - out.len()).unwrap_or(u32::MAX),
            });
            match self.txn_op_by_routing(&rk, op, deadline) {
                Ok(TxnResult::Pairs(p)) => {
                    out.extend(p.pairs.into_iter().map(|p| (p.key, p.value)))
                }
                Ok(other) => return Err(unexpected(other)),
                Err(e) => {
                    self.after_lock(e, ts, &mut backoff, deadline)?;
                    continue;
                }
            }
            if route.end_key.is_empty() || (!end.is_empty() && end <= route.end_key.as_slice()) {
                break;
            }
            pos = route.end_key.clone();
        }
        out.truncate(limit);
        Ok(out)
    }

    /// [`Client::txn_op`] routed by routing key `rk` directly, not retried.
    fn txn_op_by_routing(&self, rk: &[u8], op: TxnOp, deadline: Instant) -> Result<TxnResult> {
        let (region, resp) = self.txn_request(rk, TxnRequest::new(op), deadline)?;
        match resp.result {
            Some(TxnResult::Error(e)) => {
                if e.kind() == TxnErrorKind::KeyNotInRegion {
                    self.forget_region(region);
                }
                Err(Error::Txn {
                    region,
                    error: Box::new(e),
                })
            }
            Some(r) => Ok(r),
            None => Err(Error::UnexpectedReply {
                region,
                detail: "a transaction response without a result".into(),
            }),
        }
    }

    /// After a read failed with `e`: a lock is resolved (or waited for with a backoff),
    /// then the caller reads again; any other error, or the deadline, is returned.
    fn after_lock(
        &self,
        e: Error,
        caller_ts: u64,
        backoff: &mut Backoff,
        deadline: Instant,
    ) -> Result<()> {
        let (key, lock) = match e.txn_error() {
            Some(TxnError {
                kind,
                key,
                lock: Some(lock),
                ..
            }) if *kind == TxnErrorKind::KeyIsLocked as i32 => (key.clone(), lock.clone()),
            Some(err) if err.kind() == TxnErrorKind::KeyNotInRegion => {
                return if backoff.sleep(deadline) {
                    Ok(())
                } else {
                    Err(e)
                };
            }
            _ => return Err(e),
        };
        if self.resolve_lock(&key, &lock, caller_ts, deadline)? {
            return Ok(());
        }
        if backoff.sleep(deadline) {
            Ok(())
        } else {
            Err(e)
        }
    }

    /// Resolves the lock `lock` found on `key` by a reader at `caller_ts` (0: a writer):
    /// asks its primary for the transaction's state and commits or rolls the key back.
    /// Whether the key may be read again at once (false: the transaction is alive).
    pub fn resolve_lock(
        &self,
        key: &[u8],
        lock: &WireLock,
        caller_ts: u64,
        deadline: Instant,
    ) -> Result<bool> {
        let current_ts = self.timestamp()?;
        let status = self.txn_op(
            &lock.primary,
            TxnOp::CheckTxnStatus(CheckTxnStatus {
                primary: lock.primary.clone(),
                start_ts: lock.start_ts,
                caller_start_ts: caller_ts,
                current_ts,
            }),
            deadline,
        )?;
        let TxnResult::Status(status) = status else {
            return Err(unexpected(status));
        };
        let commit_ts = match status.kind() {
            StatusKind::Committed => status.commit_ts,
            StatusKind::RolledBack
            | StatusKind::TtlExpired
            | StatusKind::LockNotExistRolledBack => 0,
            // Alive: a pushed primary no longer blocks this reader; a secondary does.
            StatusKind::Locked => {
                return Ok(key == lock.primary.as_slice()
                    && caller_ts != 0
                    && status.min_commit_ts > caller_ts)
            }
            StatusKind::Unknown => {
                return Err(Error::UnexpectedReply {
                    region: 0,
                    detail: "a transaction status of unknown kind".into(),
                })
            }
        };
        if key != lock.primary.as_slice() {
            self.txn_op(
                key,
                TxnOp::ResolveLock(ResolveLock {
                    start_ts: lock.start_ts,
                    commit_ts,
                    keys: vec![key.to_vec()],
                }),
                deadline,
            )?;
        }
        Ok(true)
    }
}

/// Set once a transaction's primary is decided (committed, or given up): stops its
/// heartbeat.
#[derive(Default)]
struct Decided {
    done: std::sync::Mutex<bool>,
    cv: std::sync::Condvar,
}

impl Decided {
    fn set(&self) {
        *self.done.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cv.notify_all();
    }

    /// Waits up to `d`: whether it is set.
    fn wait(&self, d: Duration) -> bool {
        let done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        let (done, _) = self
            .cv
            .wait_timeout_while(done, d, |done| !*done)
            .unwrap_or_else(|e| e.into_inner());
        *done
    }
}

/// Sets a [`Decided`] when dropped.
struct SetOnDrop<'a>(&'a Decided);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.set();
    }
}

/// Runs `f` on every group's mutations, the groups after the first on their own scoped
/// threads (one request each: a transaction's regions are few); results in group order.
fn for_each_group<R: Send>(
    groups: &[(u64, Vec<TxnMutation>)],
    f: impl Fn(&[TxnMutation]) -> R + Sync,
) -> Vec<R> {
    let f = &f;
    std::thread::scope(|s| {
        let others: Vec<_> = groups[1..]
            .iter()
            .map(|(_, muts)| s.spawn(move || f(muts)))
            .collect();
        let mut out = Vec::with_capacity(groups.len());
        out.push(f(&groups[0].1));
        for h in others {
            match h.join() {
                Ok(r) => out.push(r),
                // A panic in a request is a bug: carried to the caller's thread.
                Err(p) => std::panic::resume_unwind(p),
            }
        }
        out
    })
}

fn unexpected(r: TxnResult) -> Error {
    Error::UnexpectedReply {
        region: 0,
        detail: format!("unexpected transaction result {r:?}"),
    }
}

impl Transaction<'_> {
    /// The transaction's start timestamp (its snapshot).
    pub fn start_ts(&self) -> u64 {
        self.start_ts
    }

    /// Sets the TTL of the locks this transaction's commit will take (default
    /// [`DEFAULT_LOCK_TTL_MS`]).
    pub fn set_lock_ttl_ms(&mut self, ttl_ms: u64) {
        self.lock_ttl_ms = ttl_ms;
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.client.options().call_timeout
    }

    /// The value of `key`: this transaction's own write, else the snapshot at start_ts.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(w) = self.writes.get(key) {
            return Ok(w.clone());
        }
        self.client
            .snapshot_get(key, self.start_ts, self.deadline())
    }

    /// Buffers a put.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        if key.is_empty() {
            return Err(Error::InvalidArgument("empty key".into()));
        }
        self.writes.insert(key.to_vec(), Some(value.to_vec()));
        Ok(())
    }

    /// Buffers a delete.
    pub fn delete(&mut self, key: &[u8]) -> Result<()> {
        if key.is_empty() {
            return Err(Error::InvalidArgument("empty key".into()));
        }
        self.writes.insert(key.to_vec(), None);
        Ok(())
    }

    /// Up to `limit` pairs with positions in `[start, end)` (`end` empty: no bound), in
    /// position order: the snapshot with this transaction's writes over it.
    pub fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let stored =
            self.client
                .snapshot_scan(start, end, limit, self.start_ts, self.deadline())?;
        let complete = stored.len() < limit;
        let last = stored.last().map(|(k, _)| crate::position(k));
        let mut merged: BTreeMap<Vec<u8>, (Vec<u8>, Vec<u8>)> = stored
            .into_iter()
            .map(|(k, v)| (crate::position(&k), (k, v)))
            .collect();
        for (k, w) in &self.writes {
            let p = crate::position(k);
            let in_range = p.as_slice() >= start && (end.is_empty() || p.as_slice() < end);
            let covered = complete || last.as_ref().is_some_and(|l| p <= *l);
            if !in_range || !covered {
                continue;
            }
            match w {
                Some(v) => {
                    merged.insert(p, (k.clone(), v.clone()));
                }
                None => {
                    merged.remove(&p);
                }
            }
        }
        Ok(merged.into_values().take(limit).collect())
    }

    /// Drops the buffered writes (nothing was written before `commit`).
    pub fn rollback(self) {}

    /// Commits the buffered writes: the commit timestamp (the start timestamp when there
    /// was nothing to write). On [`Error::is_txn_retryable`] errors nothing was committed
    /// and the transaction may be run again from `begin`.
    pub fn commit(self) -> Result<u64> {
        if self.writes.is_empty() {
            return Ok(self.start_ts);
        }
        let deadline = self.deadline();
        let c = self.client;
        let mutations: Vec<TxnMutation> = self
            .writes
            .iter()
            .map(|(k, w)| match w {
                Some(v) => TxnMutation::put(k, v),
                None => TxnMutation::delete(k),
            })
            .collect();
        // Group by region, the primary's (the first key's) first.
        let mut groups: Vec<(u64, Vec<TxnMutation>)> = Vec::new();
        for m in mutations {
            let route = c.route_at(&routing_key(&m.key), deadline)?;
            match groups.iter_mut().find(|(id, _)| *id == route.id) {
                Some((_, g)) => g.push(m),
                None => groups.push((route.id, vec![m])),
            }
        }
        let primary = groups[0].1[0].key.clone();
        if groups.len() == 1 {
            return self.commit_one_phase(groups.remove(0).1, deadline);
        }
        // From the first prewrite until the primary is decided, a heartbeat keeps the
        // primary lock alive: a commit slowed down (a failover) is not taken for a dead
        // client and rolled back by readers.
        let decided = Decided::default();
        let commit_ts = std::thread::scope(|s| {
            s.spawn(|| self.heartbeat_until(&primary, &decided));
            // Set on every way out (a panic too: the heartbeat must end for the scope to).
            let _decided = SetOnDrop(&decided);
            self.prewrite_and_commit_primary(&groups, &primary, deadline)
        })?;
        // Committed. The other keys, every region at once, sent without waiting for the
        // answers: best effort (readers resolve what is left; the commit point was the
        // primary's).
        for (_, muts) in &groups {
            let keys: Vec<Vec<u8>> = muts
                .iter()
                .map(|m| m.key.clone())
                .filter(|k| *k != primary)
                .collect();
            if keys.is_empty() {
                continue;
            }
            let rk = routing_key(&keys[0]);
            let op = TxnOp::Commit(Commit {
                keys,
                start_ts: self.start_ts,
                commit_ts,
            });
            if let Err(e) = c.txn_send_only(&rk, TxnRequest::new(op)) {
                tracing::debug!(start_ts = self.start_ts, error = %e, "secondary commit left to readers");
            }
        }
        Ok(commit_ts)
    }

    /// Prewrites every group and commits the primary: the commit timestamp. A failed
    /// prewrite or a refused primary commit rolls every key back.
    fn prewrite_and_commit_primary(
        &self,
        groups: &[(u64, Vec<TxnMutation>)],
        primary: &[u8],
        deadline: Instant,
    ) -> Result<u64> {
        let c = self.client;
        let size = self.writes.len() as u64;
        // Every region at once (the order does not matter: nothing commits before all
        // are locked).
        let prewritten = for_each_group(groups, |muts| {
            let op = TxnOp::Prewrite(Prewrite {
                mutations: muts.to_vec(),
                primary: primary.to_vec(),
                start_ts: self.start_ts,
                ttl_ms: self.lock_ttl_ms,
                txn_size: size,
            });
            self.write_resolving(&muts[0].key, op, deadline)
        });
        if let Some(e) = prewritten.into_iter().find_map(Result::err) {
            // Also the failed groups: an unanswered prewrite may have applied.
            self.abort(groups, deadline);
            return Err(e);
        }
        // The primary decides the transaction.
        let mut commit_ts = c.timestamp()?;
        let mut backoff = Backoff::new(c.options().backoff_initial, c.options().backoff_max);
        // Bounded by the deadline: a reader's push only asks for a newer timestamp.
        loop {
            let op = TxnOp::Commit(Commit {
                keys: vec![primary.to_vec()],
                start_ts: self.start_ts,
                commit_ts,
            });
            match c.txn_op(primary, op, deadline) {
                Ok(_) => break,
                Err(e)
                    if e.txn_error()
                        .is_some_and(|t| t.kind() == TxnErrorKind::CommitTsExpired) =>
                {
                    commit_ts = c.timestamp()?;
                    if !backoff.sleep(deadline) {
                        return Err(e);
                    }
                }
                Err(e) if e.txn_error().is_some() => {
                    // Rolled back (a reader found the lock expired) or gone: not committed.
                    self.abort(groups, deadline);
                    return Err(e);
                }
                Err(e) => {
                    return Err(Error::CommitUndetermined {
                        start_ts: self.start_ts,
                        detail: e.to_string(),
                    })
                }
            }
        }
        Ok(commit_ts)
    }

    /// Sends heartbeats for the primary lock every third of its TTL until `decided`: each
    /// asks for a TTL that reaches one full TTL past now. Stops early when the lock is gone.
    fn heartbeat_until(&self, primary: &[u8], decided: &Decided) {
        let every = Duration::from_millis((self.lock_ttl_ms / 3).max(100));
        // Bounded: ends when the commit is decided (the caller sets it on every path).
        while !decided.wait(every) {
            let advise_ttl_ms = self.began.elapsed().as_millis() as u64 + self.lock_ttl_ms;
            let op = TxnOp::HeartBeat(HeartBeat {
                primary: primary.to_vec(),
                start_ts: self.start_ts,
                advise_ttl_ms,
            });
            match self.client.txn_op(primary, op, Instant::now() + every) {
                Ok(_) => {}
                Err(e) if e.txn_error().is_some() => return,
                Err(e) => {
                    tracing::debug!(start_ts = self.start_ts, error = %e, "heartbeat failed; trying again");
                }
            }
        }
    }

    fn commit_one_phase(&self, muts: Vec<TxnMutation>, deadline: Instant) -> Result<u64> {
        let c = self.client;
        let mut backoff = Backoff::new(c.options().backoff_initial, c.options().backoff_max);
        // Bounded by the deadline: every turn resolves a lock or sleeps.
        loop {
            let commit_ts = c.timestamp()?;
            let op = TxnOp::Commit1pc(Commit1pc {
                mutations: muts.clone(),
                start_ts: self.start_ts,
                commit_ts,
            });
            match c.txn_op(&muts[0].key, op, deadline) {
                // An earlier attempt may have applied (its answer lost): the store reports
                // the timestamp the records carry, not this attempt's.
                Ok(TxnResult::Done(d)) if d.commit_ts != 0 => return Ok(d.commit_ts),
                Ok(_) => return Ok(commit_ts),
                // A read at a newer timestamp ran first (or the region's leader is new):
                // nothing was written; a newer commit timestamp is above it.
                Err(e)
                    if e.txn_error()
                        .is_some_and(|t| t.kind() == TxnErrorKind::CommitTsExpired) =>
                {
                    if !backoff.sleep(deadline) {
                        return Err(e);
                    }
                }
                Err(e) => self.after_write_lock(e, &mut backoff, deadline)?,
            }
        }
    }

    /// Sends a write operation, resolving locks of other transactions in the way.
    fn write_resolving(&self, key: &[u8], op: TxnOp, deadline: Instant) -> Result<()> {
        let c = self.client;
        let mut backoff = Backoff::new(c.options().backoff_initial, c.options().backoff_max);
        // Bounded by the deadline.
        loop {
            match c.txn_op(key, op.clone(), deadline) {
                Ok(_) => return Ok(()),
                Err(e) => self.after_write_lock(e, &mut backoff, deadline)?,
            }
        }
    }

    /// A writer that met another transaction's lock: resolve it if its transaction is
    /// decided or expired, else wait; other errors are returned.
    fn after_write_lock(&self, e: Error, backoff: &mut Backoff, deadline: Instant) -> Result<()> {
        let (key, lock) = match e.txn_error() {
            Some(t) if t.kind() == TxnErrorKind::KeyIsLocked => match &t.lock {
                Some(l) => (t.key.clone(), l.clone()),
                None => return Err(e),
            },
            _ => return Err(e),
        };
        if self.client.resolve_lock(&key, &lock, 0, deadline)? {
            return Ok(());
        }
        if backoff.sleep(deadline) {
            Ok(())
        } else {
            Err(e)
        }
    }

    /// Rolls back every key of the transaction (best effort: a reader rolls back what
    /// remains once the TTL passed; keys never prewritten get a rollback record that
    /// refuses a late prewrite). Every region at once: the transaction is not committed
    /// whatever order they land in, and a reader that meets a secondary lock before the
    /// primary's rollback waits a backoff or pushes the primary.
    fn abort(&self, groups: &[(u64, Vec<TxnMutation>)], deadline: Instant) {
        let deadline = deadline.max(Instant::now() + Duration::from_millis(500));
        // Every region at once; waited for, so that a retry does not meet these locks.
        for_each_group(groups, |muts| {
            let keys: Vec<Vec<u8>> = muts.iter().map(|m| m.key.clone()).collect();
            let op = TxnOp::Rollback(Rollback {
                keys: keys.clone(),
                start_ts: self.start_ts,
            });
            let _ = self.client.txn_op(&keys[0], op, deadline);
        });
    }
}

//! Cross-region atomic multi-key commands (MSET, MSETNX, DEL / UNLINK and EXISTS whose
//! keys live in several regions), and the resolution of the locks they leave for other
//! commands.
//!
//! The protocol is Percolator's, on the Redis keys themselves (records: `crate::lock`;
//! apply: `exec::atomic`). Every step is an ordinary write ([`WriteOp::Atomic`]) that the
//! caller routes like any other, split per region by [`WriteOp::split_by`]:
//!
//! 1. **Lock** every key with its pending change, in every region at once. A region's
//!    part locks all its keys or none; it answers what each key holds (MSETNX, DEL and
//!    EXISTS need that; EXISTS then unlocks without a change, so it counts every key
//!    as of one instant). A key locked by another transaction fails the step with `-LOCKED`: the
//!    driver rolls its own locks back, resolves the other lock, backs off and starts again
//!    with a new transaction id.
//! 2. **Commit the primary** (the first key): one raft entry records the commit and
//!    applies the primary's change. This is the commit point: from here the write has
//!    happened, whatever fails next.
//! 3. **Commit the others**, then **forget** the status record.
//!
//! Every other command that meets a lock (reads included) gets `-LOCKED` from apply or
//! read, and its runner calls [`resolving`]: the lock's transaction is checked at its
//! primary ([`AtomicAction::Check`]); committed, the key is rolled forward; rolled back
//! (or found past its deadline, which rolls it back), the key is unlocked; still running,
//! the command waits and tries again. So no reader sees one region's part of a write
//! without the others', and a driver that dies between the steps leaves nothing
//! half-done: its locks end committed or rolled back as a whole.
//!
//! The driver is generic over a [`Runner`] (how writes reach the regions): `nokv-server`
//! runs it on its cores' executors, `nokv-client` on its blocking threads
//! ([`block_on`]).

use crate::exec::atomic::{ABORTED_CODE, WATCH_FAILED_CODE};
use crate::exec::{AtomicAction, AtomicStep, ExecItem, Watched, WriteCommand, WriteOp};
use crate::lock::{Change, Locked, TxnId};
use crate::resp::Reply;
use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

/// How long a lock holds off readers before they may roll its transaction back (ms).
pub const LOCK_TTL_MS: u64 = 3_000;
/// How long the driver keeps trying (conflicts, rollbacks by readers) before giving up.
pub const RUN_LIMIT_MS: u64 = 10_000;
/// How long a command keeps resolving locks before it answers `-TRYAGAIN`.
pub const RESOLVE_LIMIT_MS: u64 = 2 * LOCK_TTL_MS;
/// First and largest backoff between attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(1);
const BACKOFF_MAX: Duration = Duration::from_millis(100);

/// How the driver's steps reach the regions.
pub trait Runner {
    /// Runs a write (routed, split per region and merged as the caller does for any
    /// write) and gives the merged reply; failures as error replies.
    fn write(&self, cmd: WriteCommand) -> impl Future<Output = Reply>;
    /// Waits `d`.
    fn sleep(&self, d: Duration) -> impl Future<Output = ()>;
    /// The caller's clock (unix ms).
    fn now_ms(&self) -> u64;
}

/// Whether a write over keys of several regions must go through [`run`] (MSET, MSETNX,
/// DEL / UNLINK) or [`exec`] (a MULTI block); EXISTS, a read, goes through [`exists`].
pub fn needs_driver(op: &WriteOp) -> bool {
    matches!(
        op,
        WriteOp::MSet { .. } | WriteOp::Del { .. } | WriteOp::Exec { .. }
    )
}

/// Runs a multi-region write with the driver it needs ([`run`] or [`exec`]).
pub async fn drive<R: Runner>(r: &R, cmd: WriteCommand) -> Reply {
    match cmd.op {
        WriteOp::Exec { .. } => exec(r, cmd).await,
        _ => run(r, cmd).await,
    }
}

/// Exponential backoff with jitter.
struct Backoff {
    next: Duration,
    seed: u64,
}

impl Backoff {
    fn new(seed: u64) -> Backoff {
        Backoff {
            next: BACKOFF_MIN,
            seed: seed | 1,
        }
    }

    fn step(&mut self) -> Duration {
        // xorshift64 for the jitter: half to all of the current step.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let cur = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        let half = cur.as_micros() as u64 / 2;
        Duration::from_micros(half + self.seed % (half + 1))
    }
}

/// A fresh transaction id: random (the standard library's randomly keyed hasher over a
/// process-wide counter, the time and the process id).
pub fn new_txn() -> TxnId {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let half = |salt: u64| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(salt);
        h.write_u64(n);
        h.write_u128(nanos);
        h.write_u32(std::process::id());
        h.finish()
    };
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&half(1).to_le_bytes());
    out[8..].copy_from_slice(&half(2).to_le_bytes());
    out
}

fn step(now_ms: u64, txn: TxnId, primary: &[u8], action: AtomicAction) -> WriteCommand {
    WriteCommand {
        now_ms,
        op: WriteOp::Atomic(AtomicStep {
            txn,
            primary: primary.to_vec(),
            action,
        }),
    }
}

fn is_aborted(reply: &Reply) -> bool {
    matches!(reply, Reply::Error(e) if e.starts_with(ABORTED_CODE))
}

/// What [`resolve`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// The lock is gone (rolled forward or back): try the command again now.
    Gone,
    /// Its transaction is still running: wait before trying again.
    Running,
}

/// Resolves one lock a command met: checks its transaction at the primary, then rolls
/// the locked key forward (committed) or unlocks it (rolled back). Err: a step failed
/// (its reply, e.g. `-TRYAGAIN` while a region has no leader).
pub async fn resolve<R: Runner>(r: &R, locked: &Locked) -> Result<Resolution, Reply> {
    let check = r
        .write(step(
            r.now_ms(),
            locked.txn,
            &locked.primary,
            AtomicAction::Check,
        ))
        .await;
    let action = match check {
        Reply::Int(0) => return Ok(Resolution::Running),
        Reply::Int(1) => AtomicAction::Commit {
            keys: vec![locked.key.clone()],
        },
        Reply::Int(2) => AtomicAction::Rollback {
            keys: vec![locked.key.clone()],
        },
        other => return Err(other),
    };
    // Check settled the primary's own lock already.
    if locked.key != locked.primary {
        let done = r
            .write(step(r.now_ms(), locked.txn, &locked.primary, action))
            .await;
        if done.is_error() {
            return Err(done);
        }
    }
    Ok(Resolution::Gone)
}

/// Runs `attempt` until its reply is not `-LOCKED`, resolving each lock it meets
/// (bounded by [`RESOLVE_LIMIT_MS`], then `-TRYAGAIN`). `first`: the reply of an attempt
/// the caller already made.
pub async fn resolving<R, F, Fut>(r: &R, first: Option<Reply>, mut attempt: F) -> Reply
where
    R: Runner,
    F: FnMut() -> Fut,
    Fut: Future<Output = Reply>,
{
    let start = r.now_ms();
    let mut backoff = Backoff::new(start);
    let mut first = first;
    // Bounded by RESOLVE_LIMIT_MS: every turn resolves a lock or sleeps.
    loop {
        let reply = match first.take() {
            Some(reply) => reply,
            None => attempt().await,
        };
        let Some(locked) = Locked::of(&reply) else {
            return reply;
        };
        if r.now_ms().saturating_sub(start) >= RESOLVE_LIMIT_MS {
            return Reply::error(format!(
                "TRYAGAIN a key is locked by a multi-region write that did not finish within {RESOLVE_LIMIT_MS} ms; retry"
            ));
        }
        match resolve(r, &locked).await {
            Ok(Resolution::Gone) => {}
            Ok(Resolution::Running) | Err(_) => r.sleep(backoff.step()).await,
        }
    }
}

/// Keys with their pending changes.
type Changes = Vec<(Vec<u8>, Change)>;

/// Each key once with its change (the last of a repeated key wins, as in MSET).
fn distinct(items: Changes) -> Changes {
    let mut at: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut out: Changes = Vec::new();
    for (k, c) in items {
        match at.get(&k) {
            Some(&i) => out[i].1 = c,
            None => {
                at.insert(k.clone(), out.len());
                out.push((k, c));
            }
        }
    }
    out
}

/// A transaction holding its locks: what its keys held when locked.
struct Held {
    txn: TxnId,
    /// Per key of the changes, in order: null (absent), the value, or `:1` (not a string).
    held: Vec<Reply>,
}

/// The driver of one multi-region write or read: its keys, changes and attempts.
struct Driver<'a, R: Runner> {
    r: &'a R,
    primary: Vec<u8>,
    keys: Vec<Vec<u8>>,
    changes: Changes,
    /// A MULTI block (watched keys, items): locked with `LockExec`, not `Lock`.
    block: Option<(Watched, Vec<ExecItem>)>,
    start: u64,
    backoff: Backoff,
}

impl<'a, R: Runner> Driver<'a, R> {
    /// None when there is no key.
    fn new(r: &'a R, changes: Changes) -> Option<Driver<'a, R>> {
        let changes = distinct(changes);
        let primary = changes.first()?.0.clone();
        let start = r.now_ms();
        Some(Driver {
            r,
            primary,
            keys: changes.iter().map(|(k, _)| k.clone()).collect(),
            changes,
            block: None,
            start,
            backoff: Backoff::new(start ^ 0x9e37_79b9_7f4a_7c15),
        })
    }

    /// The lock step of this driver's command.
    fn lock_action(&self) -> AtomicAction {
        let deadline_ms = self.r.now_ms() + LOCK_TTL_MS;
        match &self.block {
            None => AtomicAction::Lock {
                deadline_ms,
                changes: self.changes.clone(),
            },
            Some((watched, items)) => AtomicAction::LockExec {
                deadline_ms,
                watched: watched.clone(),
                items: items.clone(),
                positions: (0..items.len() as u32).collect(),
            },
        }
    }

    /// What the lock step's (merged) answer says each key holds, or each item of a block
    /// answered (its parts' `[positions, replies]` pairs put back in block order).
    fn held_of(&self, parts: Vec<Reply>) -> Result<Vec<Reply>, Reply> {
        let Some((_, items)) = &self.block else {
            if parts.len() == self.keys.len() {
                return Ok(parts);
            }
            return Err(Reply::error(format!(
                "ERR internal: {} answers for {} locked keys",
                parts.len(),
                self.keys.len()
            )));
        };
        let mut out: Vec<Option<Reply>> = vec![None; items.len()];
        let mut parts = parts.into_iter();
        while let (Some(Reply::Array(at)), Some(Reply::Array(replies))) =
            (parts.next(), parts.next())
        {
            for (p, reply) in at.iter().zip(replies) {
                if let Some(o) = match p {
                    Reply::Int(p) => out.get_mut(*p as usize),
                    _ => None,
                } {
                    *o = Some(reply);
                }
            }
        }
        out.into_iter()
            .collect::<Option<Vec<Reply>>>()
            .ok_or_else(|| Reply::error("ERR internal: a block's item got no answer"))
    }

    fn out_of_time(&self) -> bool {
        self.r.now_ms().saturating_sub(self.start) >= RUN_LIMIT_MS
    }

    async fn step(&self, txn: TxnId, action: AtomicAction) -> Reply {
        self.r
            .write(step(self.r.now_ms(), txn, &self.primary, action))
            .await
    }

    /// Unlocks every key of `txn` and drops its status (best effort: a part that fails is
    /// rolled back by its readers after the deadline).
    async fn release(&self, txn: TxnId) {
        let keys = self.keys.clone();
        if !self
            .step(txn, AtomicAction::Rollback { keys })
            .await
            .is_error()
        {
            self.step(txn, AtomicAction::Forget).await;
        }
    }

    /// Locks every key under a new transaction, retrying (with a new one) after conflicts
    /// and rollbacks by readers until [`RUN_LIMIT_MS`]. Err: the reply to give.
    async fn lock(&mut self) -> Result<Held, Reply> {
        // Bounded by RUN_LIMIT_MS: every turn returns, or sleeps a backoff.
        loop {
            let txn = new_txn();
            let other = match self.step(txn, self.lock_action()).await {
                Reply::Array(parts) => match self.held_of(parts) {
                    Ok(held) => return Ok(Held { txn, held }),
                    Err(e) => e,
                },
                other => other,
            };
            // Some parts may hold locks: undo them.
            self.release(txn).await;
            let again = Locked::of(&other).is_some() || is_aborted(&other);
            if !again {
                return Err(other);
            }
            if self.out_of_time() {
                return Err(Reply::error(format!(
                    "TRYAGAIN the keys stayed locked by other writes for {RUN_LIMIT_MS} ms; retry"
                )));
            }
            if let Some(l) = Locked::of(&other) {
                let _ = resolve(self.r, &l).await;
            }
            self.r.sleep(self.backoff.step()).await;
        }
    }

    /// Commits a locked transaction: the primary (the commit point, retried until
    /// [`RUN_LIMIT_MS`]), then the other keys, then its status is forgotten. Ok(false):
    /// a reader rolled it back first (the caller starts again).
    async fn commit(&mut self, txn: TxnId) -> Result<bool, Reply> {
        // Bounded by RUN_LIMIT_MS.
        loop {
            let keys = vec![self.primary.clone()];
            let done = self.step(txn, AtomicAction::Commit { keys }).await;
            if !done.is_error() {
                break;
            }
            if is_aborted(&done) {
                // A reader found the locks past their deadline and rolled them back.
                self.release(txn).await;
                if self.out_of_time() {
                    return Err(done);
                }
                self.r.sleep(self.backoff.step()).await;
                return Ok(false);
            }
            if self.out_of_time() {
                let got = match &done {
                    Reply::Error(e) => e.as_str(),
                    _ => "",
                };
                return Err(Reply::error(format!(
                    "TRYAGAIN the write's outcome is unknown, it may still apply (its commit got: {got})"
                )));
            }
            self.r.sleep(self.backoff.step()).await;
        }
        // Committed. The other keys follow; whatever fails here, readers roll forward.
        let rest = self.keys[1..].to_vec();
        if !rest.is_empty()
            && self
                .step(txn, AtomicAction::Commit { keys: rest })
                .await
                .is_error()
        {
            return Ok(true);
        }
        self.step(txn, AtomicAction::Forget).await;
        Ok(true)
    }
}

/// Runs an MSET, MSETNX or DEL over keys of several regions atomically (see the module
/// doc) and gives its Redis reply.
pub async fn run<R: Runner>(r: &R, cmd: WriteCommand) -> Reply {
    let (changes, nx, is_del): (Changes, bool, bool) = match cmd.op {
        WriteOp::MSet {
            pairs,
            if_none_exist,
        } => (
            pairs
                .into_iter()
                .map(|(k, v)| (k, Change::Put(v)))
                .collect(),
            if_none_exist,
            false,
        ),
        WriteOp::Del { keys } => (
            keys.into_iter().map(|k| (k, Change::Delete)).collect(),
            false,
            true,
        ),
        _ => return Reply::error("ERR internal: not a multi-key write"),
    };
    let Some(mut d) = Driver::new(r, changes) else {
        return if is_del { Reply::Int(0) } else { Reply::ok() };
    };
    // Bounded by RUN_LIMIT_MS (lock and commit give up then).
    loop {
        let Held { txn, held } = match d.lock().await {
            Ok(h) => h,
            Err(reply) => return reply,
        };
        let live = held.iter().filter(|h| **h != Reply::Null).count() as i64;
        if nx && live > 0 {
            d.release(txn).await;
            return Reply::Int(0);
        }
        match d.commit(txn).await {
            Ok(true) if is_del => return Reply::Int(live),
            Ok(true) if nx => return Reply::Int(1),
            Ok(true) => return Reply::ok(),
            Ok(false) => continue,
            Err(reply) => return reply,
        }
    }
}

/// EXEC of a MULTI block whose keys live in several regions (each command's own keys in
/// one): every key it reads, writes or watches is locked at once, each region runs its
/// share of the block against the locked state, and the writes commit as one (see the
/// module doc). A null array if a watched key changed.
pub async fn exec<R: Runner>(r: &R, cmd: WriteCommand) -> Reply {
    let WriteOp::Exec { watched, items } = cmd.op else {
        return Reply::error("ERR internal: not a MULTI block");
    };
    let changes = crate::exec::block_keys(&watched, &items)
        .into_iter()
        .map(|k| (k.to_vec(), Change::Keep))
        .collect();
    let Some(mut d) = Driver::new(r, changes) else {
        return Reply::error("ERR internal: a multi-region block without keys");
    };
    d.block = Some((watched, items));
    // Bounded by RUN_LIMIT_MS (lock and commit give up then).
    loop {
        let Held { txn, held } = match d.lock().await {
            Ok(h) => h,
            Err(Reply::Error(e)) if e.starts_with(WATCH_FAILED_CODE) => return Reply::NullArray,
            Err(reply) => return reply,
        };
        match d.commit(txn).await {
            Ok(true) => return Reply::Array(held),
            Ok(false) => continue,
            Err(reply) => return reply,
        }
    }
}

/// EXISTS over keys of several regions, as of one instant: every key is locked (no
/// change) at once, counted, and unlocked. Counts a key as often as it is named, as Redis
/// does.
pub async fn exists<R: Runner>(r: &R, keys: Vec<Vec<u8>>) -> Reply {
    let changes = keys.iter().map(|k| (k.clone(), Change::Keep)).collect();
    let Some(mut d) = Driver::new(r, changes) else {
        return Reply::Int(0);
    };
    let Held { txn, held } = match d.lock().await {
        Ok(h) => h,
        Err(reply) => return reply,
    };
    d.release(txn).await;
    let live: HashMap<&[u8], bool> = d
        .keys
        .iter()
        .zip(&held)
        .map(|(k, h)| (k.as_slice(), *h != Reply::Null))
        .collect();
    let n = keys
        .iter()
        .filter(|k| live.get(k.as_slice()).copied().unwrap_or(false))
        .count();
    Reply::Int(n as i64)
}

/// Runs a future whose awaits never wait (a [`Runner`] over blocking calls) to its end.
pub fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    // A future over blocking calls is ready at the first poll; one that is not (a
    // runner that really waits elsewhere) is polled again after a yield.
    loop {
        if let std::task::Poll::Ready(out) = f.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::yield_now();
    }
}

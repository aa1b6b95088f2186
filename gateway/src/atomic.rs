//! Cross-region atomic multi-key writes (MSET, MSETNX, DEL / UNLINK whose keys live in
//! several regions), and the resolution of the locks they leave for other commands.
//!
//! The protocol is Percolator's, on the Redis keys themselves (records: `crate::lock`;
//! apply: `exec::atomic`). Every step is an ordinary write ([`WriteOp::Atomic`]) that the
//! caller routes like any other, split per region by [`WriteOp::split_by`]:
//!
//! 1. **Lock** every key with its pending change, in every region at once. A region's
//!    part locks all its keys or none; it answers how many exist (MSETNX and DEL need
//!    that). A key locked by another transaction fails the step with `-LOCKED`: the
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

use crate::exec::atomic::ABORTED_CODE;
use crate::exec::{AtomicAction, AtomicStep, WriteCommand, WriteOp};
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

/// Whether a write over keys of several regions must go through [`run`]: MSET, MSETNX
/// and DEL / UNLINK.
pub fn needs_driver(op: &WriteOp) -> bool {
    matches!(op, WriteOp::MSet { .. } | WriteOp::Del { .. })
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

/// The keys of a driven write, each once, with their changes (the last value of a
/// repeated key wins, as in MSET); and whether it is MSETNX.
fn changes_of(op: WriteOp) -> Option<(Changes, bool)> {
    let (items, nx): (Changes, bool) = match op {
        WriteOp::MSet {
            pairs,
            if_none_exist,
        } => (
            pairs.into_iter().map(|(k, v)| (k, Some(v))).collect(),
            if_none_exist,
        ),
        WriteOp::Del { keys } => (keys.into_iter().map(|k| (k, None)).collect(), false),
        _ => return None,
    };
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
    Some((out, nx))
}

/// Runs an MSET, MSETNX or DEL over keys of several regions atomically (see the module
/// doc) and gives its Redis reply.
pub async fn run<R: Runner>(r: &R, cmd: WriteCommand) -> Reply {
    let is_del = matches!(cmd.op, WriteOp::Del { .. });
    let Some((changes, nx)) = changes_of(cmd.op) else {
        return Reply::error("ERR internal: not a multi-key write");
    };
    let Some(primary) = changes.first().map(|(k, _)| k.clone()) else {
        return if is_del { Reply::Int(0) } else { Reply::ok() };
    };
    let keys: Vec<Vec<u8>> = changes.iter().map(|(k, _)| k.clone()).collect();
    let secondaries: Vec<Vec<u8>> = keys[1..].to_vec();
    let start = r.now_ms();
    let mut backoff = Backoff::new(start ^ 0x9e37_79b9_7f4a_7c15);
    let out_of_time = |r: &R| r.now_ms().saturating_sub(start) >= RUN_LIMIT_MS;
    // Bounded by RUN_LIMIT_MS: every turn returns, or sleeps a backoff.
    'attempt: loop {
        let txn = new_txn();
        let rollback = || async {
            let done = r
                .write(step(
                    r.now_ms(),
                    txn,
                    &primary,
                    AtomicAction::Rollback { keys: keys.clone() },
                ))
                .await;
            if !done.is_error() {
                r.write(step(r.now_ms(), txn, &primary, AtomicAction::Forget))
                    .await;
            }
        };
        let now = r.now_ms();
        let lock = AtomicAction::Lock {
            deadline_ms: now + LOCK_TTL_MS,
            changes: changes.clone(),
        };
        let live = match r.write(step(now, txn, &primary, lock)).await {
            Reply::Int(n) => n,
            other => {
                // Some parts may hold locks: undo them (a part that fails to undo is
                // rolled back by its readers after the deadline).
                rollback().await;
                let again = Locked::of(&other).is_some() || is_aborted(&other);
                if !again || out_of_time(r) {
                    return if again {
                        Reply::error(format!(
                            "TRYAGAIN the keys stayed locked by other writes for {RUN_LIMIT_MS} ms; retry"
                        ))
                    } else {
                        other
                    };
                }
                if let Some(l) = Locked::of(&other) {
                    let _ = resolve(r, &l).await;
                }
                r.sleep(backoff.step()).await;
                continue;
            }
        };
        if nx && live > 0 {
            rollback().await;
            return Reply::Int(0);
        }
        // The commit point. Bounded by RUN_LIMIT_MS.
        loop {
            let commit = AtomicAction::Commit {
                keys: vec![primary.clone()],
            };
            let done = r.write(step(r.now_ms(), txn, &primary, commit)).await;
            if !done.is_error() {
                break;
            }
            if is_aborted(&done) {
                // A reader found the locks past their deadline and rolled them back.
                rollback().await;
                if out_of_time(r) {
                    return done;
                }
                r.sleep(backoff.step()).await;
                continue 'attempt;
            }
            if out_of_time(r) {
                return Reply::error(format!(
                    "TRYAGAIN the write's outcome is unknown, it may still apply (its commit got: {})",
                    match &done {
                        Reply::Error(e) => e.as_str(),
                        _ => "",
                    }
                ));
            }
            r.sleep(backoff.step()).await;
        }
        // Committed. The other keys follow; whatever fails here, readers roll forward.
        if !secondaries.is_empty() {
            let commit = AtomicAction::Commit {
                keys: secondaries.clone(),
            };
            if r.write(step(r.now_ms(), txn, &primary, commit))
                .await
                .is_error()
            {
                return reply_of(is_del, nx, live);
            }
        }
        r.write(step(r.now_ms(), txn, &primary, AtomicAction::Forget))
            .await;
        return reply_of(is_del, nx, live);
    }
}

fn reply_of(is_del: bool, nx: bool, live: i64) -> Reply {
    if is_del {
        Reply::Int(live)
    } else if nx {
        Reply::Int(1)
    } else {
        Reply::ok()
    }
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

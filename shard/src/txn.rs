//! Transactions through raft: the store side of `KvKind::Txn` requests
//! (`nokv_raft::txn_wire`).
//!
//! On the core of the region's leader: the request's keys are latched (a per-core
//! in-memory table, [`Latches`]; waiters queue, bounded by [`MAX_LATCH_WAITERS`]; an
//! entry in flight holds its keys' latches until applied), leadership is confirmed as
//! for reads (lease or ReadIndex, so every entry committed before is applied), the
//! Percolator operation (`nokv::txn`) runs against the core's
//! engine through a `DbReader` of `NS_KV` and returns a `WriteBatch`, and the batch is
//! proposed as a raft entry of its own format ([`encode_entry`]: the batch's puts and
//! deletes with their explicit versions). Every replica applies the entry with the
//! versions it carries (never the raft index), so they store identical bytes; an entry
//! proposed at an older region epoch is skipped like every other write (raft's
//! `stale_epoch`) and its proposer told to retry. The latches are released once the entry
//! applied or was dropped; the answer follows. Reads (`Get`, `Scan`) propose nothing.
//!
//! Keys live in `NS_KV` under their cluster position (`slot u16 BE | user key`), so a
//! region's slot range covers them as it covers the Redis keys (`layout::region_data`
//! lists the `NS_KV` column families with the Redis ones; splits, moves, snapshots and
//! consistency checks carry them).
//!
//! A child module of `node` (it works on the core's private state).

use super::*;
use nokv::txn::{self as ptxn, DbReader};
use nokv::{KeySpace, ReadOptions, WriteBatch, NS_KV};
use nokv_raft::txn_wire::{
    self as wire, Done, KvPair, Pairs, Status, TxnErrorKind, TxnOp, TxnRequest, TxnResponse,
    TxnResult, Value,
};
use std::collections::BTreeSet;

/// Marks a raft entry that carries a transactional write batch.
const ENTRY_MAGIC: &[u8] = b"\xC7nokv-txn";
/// Tags of the entry's operations.
const OP_PUT: u8 = 1;
const OP_DELETE: u8 = 2;
/// Most requests of one core waiting for latches at once; more are answered `-BUSY`.
pub const MAX_LATCH_WAITERS: usize = 1024;
/// How often a request whose entry is in flight checks that its replica still leads the
/// region (its latches are released when it does not).
const LATCH_LEADER_CHECK: Duration = Duration::from_millis(200);
/// Most pairs one `Scan` returns.
pub const MAX_SCAN_LIMIT: u32 = 10_000;
/// The physical time (ms since the Unix epoch, 2020-01-01 UTC) of every core engine's GC
/// safe point: above every raft index (the Redis namespace's versions) and below every
/// TSO timestamp (the transactional namespace's versions). See [`set_safe_point`].
pub const SAFE_POINT_MS: u64 = 1_577_836_800_000;

/// The stored key (position) of user key `key`: its hash slot, big-endian, then the key.
pub fn stored_key(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 2);
    out.extend_from_slice(&model::slot(key).to_be_bytes());
    out.extend_from_slice(key);
    out
}

/// The user key of a stored key (position).
pub fn user_key(stored: &[u8]) -> Vec<u8> {
    stored.get(2..).unwrap_or_default().to_vec()
}

/// Sets `db`'s GC safe point to [`SAFE_POINT_MS`] in TSO units. The Redis namespace's
/// versions (raft indexes) are all below it, so its keys keep only their newest version
/// as without `retain_versions`; every transactional version is above it, out of the
/// plain version GC's reach. (That GC keeps the newest version at or below the safe point
/// and drops the older ones: for `CF_WRITE` that newest one may be another transaction's
/// rollback record hiding the committed put below it. `NS_KV` is collected by the
/// transaction GC instead: [`hand_safe_point`].)
pub fn set_safe_point(db: &Db) {
    db.set_gc_safe_point(safe_point());
}

/// The transactional namespace's locks.
pub const KV_LOCKS: KeySpace = KeySpace::new(NS_KV, nokv::CF_LOCK);

/// The oldest start timestamp of a transaction lock in any of `dbs` (None: no lock), for
/// the store heartbeat: the coordinator keeps the transaction GC safe point at or below
/// it. Reads every lock: call off the cores.
pub fn min_lock_ts(dbs: &[Db]) -> std::result::Result<Option<u64>, nokv::Error> {
    let mut min: Option<u64> = None;
    for db in dbs.iter().filter(|db| db.may_hold(KV_LOCKS)) {
        let ro = ReadOptions {
            skip_cache_fill: true,
            ..ReadOptions::default()
        };
        let mut it = db.iter_in(KV_LOCKS, ro)?;
        it.seek_to_first();
        while it.valid() {
            // A lock that does not decode holds the safe point at 0: nothing is collected
            // until it is resolved.
            let ts = ptxn::Lock::decode(it.value()).map_or(0, |l| l.start_ts);
            min = Some(min.map_or(ts, |m: u64| m.min(ts)));
            it.next();
        }
        it.status()?;
    }
    Ok(min)
}

/// Hands the coordinator's transaction GC safe point `ts` to every core engine (their
/// compactions collect `NS_KV`'s old versions below it; reads and prewrites below it are
/// refused, see `below_safe_point`).
pub fn hand_safe_point(dbs: &[Db], ts: u64) {
    if ts == 0 {
        return;
    }
    for db in dbs {
        db.set_txn_safe_point(ts);
    }
    metrics::gauge!(TXN_SAFE_POINT_MS).set(ptxn::ts::physical_ms(ts) as f64);
}

/// Gauge: the physical time (ms since the Unix epoch) of the transaction GC safe point.
pub const TXN_SAFE_POINT_MS: &str = "nokv_txn_safe_point_ms";

/// Registers the transaction GC's gauge at 0 (none yet; standalone stores keep it there).
pub(super) fn register_metrics() {
    metrics::gauge!(TXN_SAFE_POINT_MS).set(0.0);
}

/// The engines' GC safe point (see [`set_safe_point`]).
pub fn safe_point() -> u64 {
    ptxn::ts::compose(SAFE_POINT_MS, 0)
}

// ---------------------------------------------------------------------------------------
// Raft entries
// ---------------------------------------------------------------------------------------

/// The raft entry carrying `batch`: the magic, then per entry
/// `[op][ns][cf][varint key len][key][varint version]` and, for a put,
/// `[varint value len][value]`. None when the batch holds anything but versioned point
/// puts and deletes (the Percolator operations never build such batches).
pub fn encode_entry(batch: &WriteBatch) -> Option<Vec<u8>> {
    let mut out = ENTRY_MAGIC.to_vec();
    for op in batch.iter_ops() {
        let nokv::batch::BatchOp::Point(e) = op else {
            return None;
        };
        let version = e.version?;
        let [ns, cf] = *e.logical_key.get(..2)? else {
            return None;
        };
        let key = &e.logical_key[2..];
        match e.kind {
            nokv::key::Kind::Put => out.push(OP_PUT),
            nokv::key::Kind::Delete => out.push(OP_DELETE),
            _ => return None,
        }
        out.push(ns);
        out.push(cf);
        put_varint(&mut out, key.len() as u64);
        out.extend_from_slice(key);
        put_varint(&mut out, version);
        if e.kind == nokv::key::Kind::Put {
            put_varint(&mut out, e.value.len() as u64);
            out.extend_from_slice(e.value);
        }
    }
    Some(out)
}

/// Whether a raft entry carries a transactional batch.
pub fn is_entry(data: &[u8]) -> bool {
    data.starts_with(ENTRY_MAGIC)
}

/// One decoded operation of an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryOp {
    /// Namespace byte.
    pub ns: u8,
    /// Column family.
    pub cf: u8,
    /// User key (here: the stored key).
    pub key: Vec<u8>,
    /// Explicit version.
    pub version: u64,
    /// The value of a put, None: a delete.
    pub value: Option<Vec<u8>>,
}

/// Decodes an entry made by [`encode_entry`]; an error on any malformed input.
pub fn decode_entry(data: &[u8]) -> std::result::Result<Vec<EntryOp>, String> {
    let mut buf = data
        .strip_prefix(ENTRY_MAGIC)
        .ok_or("not a transaction entry")?;
    let mut ops = Vec::new();
    while let Some((&op, rest)) = buf.split_first() {
        buf = rest;
        let (ns, cf) = match buf {
            [ns, cf, ..] => (*ns, *cf),
            _ => return Err("truncated entry".into()),
        };
        buf = &buf[2..];
        let key = take_bytes(&mut buf)?;
        let version = take_varint(&mut buf)?;
        let value = match op {
            OP_PUT => Some(take_bytes(&mut buf)?),
            OP_DELETE => None,
            other => return Err(format!("unknown entry operation {other}")),
        };
        ops.push(EntryOp {
            ns,
            cf,
            key,
            version,
            value,
        });
    }
    Ok(ops)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn take_varint(buf: &mut &[u8]) -> std::result::Result<u64, String> {
    let mut v = 0u64;
    for i in 0..10 {
        let Some((&b, rest)) = buf.split_first() else {
            return Err("truncated varint".into());
        };
        *buf = rest;
        let low = u64::from(b & 0x7f);
        if i == 9 && b > 1 {
            return Err("varint overflow".into());
        }
        v |= low << (7 * i);
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint too long".into())
}

fn take_bytes(buf: &mut &[u8]) -> std::result::Result<Vec<u8>, String> {
    let len = usize::try_from(take_varint(buf)?).map_err(|_| "length overflow")?;
    if buf.len() < len {
        return Err("truncated bytes".into());
    }
    let (head, rest) = buf.split_at(len);
    *buf = rest;
    Ok(head.to_vec())
}

/// Whether stored key `key` is in `desc`'s range.
fn in_region(desc: &RegionDescriptor, key: &[u8]) -> bool {
    key >= desc.start_key.as_slice() && (desc.end_key.is_empty() || key < desc.end_key.as_slice())
}

/// Applies a transaction entry (raft index `index` of `region`) on any replica: its
/// operations with their own versions. An entry with keys outside `NS_KV` or the region
/// is refused whole (nothing written); an engine failure stops the round.
pub(super) fn apply_entry(
    db: &Db,
    region: &RegionDescriptor,
    index: u64,
    data: &[u8],
) -> std::result::Result<Reply, nokv_raft::Error> {
    let ops = match decode_entry(data) {
        Ok(ops) => ops,
        Err(e) => {
            tracing::error!(region = region.id, index, error = %e, "undecodable transaction entry skipped");
            return Ok(Reply::error(format!(
                "ERR undecodable transaction entry: {e}"
            )));
        }
    };
    let mut batch = WriteBatch::new();
    for op in &ops {
        if op.ns != NS_KV || !in_region(region, &op.key) {
            tracing::error!(
                region = region.id,
                index,
                "transaction entry outside the region skipped"
            );
            return Ok(Reply::error(
                "ERR transaction entry outside the region's keys; skipped",
            ));
        }
        let space = KeySpace::new(op.ns, op.cf);
        match &op.value {
            Some(v) => batch.put_at(space, &op.key, op.version, v),
            None => batch.delete_at(space, &op.key, op.version),
        };
    }
    db.apply_unlogged(&batch, Some((region.id, index)))
        .map_err(|e| nokv_raft::Error::Apply {
            region: region.id,
            index,
            detail: e.to_string(),
        })?;
    Ok(Reply::ok())
}

// ---------------------------------------------------------------------------------------
// Latches
// ---------------------------------------------------------------------------------------

/// A core's latch table: stored key -> the event its holder fires on release.
#[derive(Default)]
struct Latches {
    held: RefCell<HashMap<Vec<u8>, Event>>,
    waiting: Cell<usize>,
}

thread_local! {
    /// Each core runs on its own executor thread: one table per core, no cross-core lock.
    static LATCHES: Rc<Latches> = Rc::new(Latches::default());
}

/// Latches held by one request, released on drop (on the core's thread).
pub(super) struct LatchGuard {
    table: Rc<Latches>,
    keys: Vec<Vec<u8>>,
}

impl Drop for LatchGuard {
    fn drop(&mut self) {
        let mut held = self.table.held.borrow_mut();
        for k in &self.keys {
            if let Some(ev) = held.remove(k) {
                ev.fire();
            }
        }
    }
}

/// Takes the latches of `keys` in key order (no deadlock between requests): waits for
/// each holder's release; `Err` when too many requests wait already. A request dropped
/// while waiting holds nothing.
async fn latch(keys: BTreeSet<Vec<u8>>) -> std::result::Result<LatchGuard, Reply> {
    let table = LATCHES.with(Rc::clone);
    let mut guard = LatchGuard {
        table: table.clone(),
        keys: Vec::with_capacity(keys.len()),
    };
    for k in keys {
        // Bounded: each turn waits for a release; a woken waiter tries again.
        loop {
            let busy = {
                let mut held = table.held.borrow_mut();
                match held.get(&k) {
                    Some(ev) => Some(ev.clone()),
                    None => {
                        held.insert(k.clone(), Event::new());
                        None
                    }
                }
            };
            let Some(ev) = busy else { break };
            if table.waiting.get() >= MAX_LATCH_WAITERS {
                return Err(Reply::error(BUSY));
            }
            table.waiting.set(table.waiting.get() + 1);
            let _count = WaitCount(&table);
            ev.wait().await;
        }
        guard.keys.push(k);
    }
    Ok(guard)
}

/// Counts a latch waiter while it waits (also when its future is dropped).
struct WaitCount<'a>(&'a Latches);

impl Drop for WaitCount<'_> {
    fn drop(&mut self) {
        self.0.waiting.set(self.0.waiting.get().saturating_sub(1));
    }
}

/// Waits until no latch of a key in `[lo, hi)` (`hi` empty: unbounded) taken before the
/// call is held: a scan (which latches nothing) then reads what the one-phase commits in
/// flight over its range wrote.
async fn wait_for_latches_in(lo: &[u8], hi: &[u8]) {
    let table = LATCHES.with(Rc::clone);
    let held: Vec<Event> = table
        .held
        .borrow()
        .iter()
        .filter(|(k, _)| k.as_slice() >= lo && (hi.is_empty() || k.as_slice() < hi))
        .map(|(_, ev)| ev.clone())
        .collect();
    for ev in held {
        ev.wait().await;
    }
}

// ---------------------------------------------------------------------------------------
// Read timestamps (one-phase commits)
// ---------------------------------------------------------------------------------------

/// What the leader of a region knows of the reads it must not write under: the newest
/// read timestamp it served in this term and key range (`version`), and a timestamp from
/// the coordinator taken after it confirmed its leadership (newer than every read an
/// earlier leader, or an earlier key range, served). A one-phase commit takes no lock
/// before its commit timestamp is chosen, so it must commit above both: a read at a
/// newer timestamp that ran before it applied would otherwise miss it and see it later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ReadTs {
    term: u64,
    version: u64,
    max_read: u64,
    floor: Option<u64>,
}

/// Most regions whose reads one core remembers before it forgets those it no longer has.
const MAX_READ_TS_REGIONS: usize = 4096;

thread_local! {
    /// Per core (each runs on its own thread): region -> its reads.
    static READ_TS: RefCell<HashMap<u64, ReadTs>> = RefCell::new(HashMap::new());
}

/// The entry of `region` for `term` and `version` (a fresh one when those changed).
fn read_ts_entry(
    m: &mut HashMap<u64, ReadTs>,
    region: u64,
    term: u64,
    version: u64,
) -> &mut ReadTs {
    let fresh = ReadTs {
        term,
        version,
        max_read: 0,
        floor: None,
    };
    let e = m.entry(region).or_insert(fresh);
    if (e.term, e.version) != (term, version) {
        *e = fresh;
    }
    e
}

/// Notes a read of `region` at `ts`, served while leading it in `term` at `version`.
fn note_read(region: u64, term: u64, version: u64, ts: u64) {
    READ_TS.with(|m| {
        let mut m = m.borrow_mut();
        let e = read_ts_entry(&mut m, region, term, version);
        e.max_read = e.max_read.max(ts);
    });
}

/// The timestamp a one-phase commit of `region` must be above (`None`: no floor taken
/// in this term and version yet).
fn one_pc_bound(region: u64, term: u64, version: u64) -> Option<u64> {
    READ_TS.with(|m| {
        let mut m = m.borrow_mut();
        let e = read_ts_entry(&mut m, region, term, version);
        e.floor.map(|f| f.max(e.max_read))
    })
}

/// Sets the floor of `region` for `term` and `version`.
fn set_read_floor(region: u64, term: u64, version: u64, floor: u64) {
    READ_TS.with(|m| {
        let mut m = m.borrow_mut();
        let e = read_ts_entry(&mut m, region, term, version);
        e.floor = Some(e.floor.map_or(floor, |f| f.max(floor)));
    });
}

/// Forgets the regions `keep` rejects, once the table is large.
fn prune_read_ts(keep: impl Fn(u64) -> bool) {
    READ_TS.with(|m| {
        let mut m = m.borrow_mut();
        if m.len() > MAX_READ_TS_REGIONS {
            m.retain(|id, _| keep(*id));
        }
    });
}

/// Before a transactional read or one-phase commit of `region` runs (its leadership
/// confirmed, its keys latched): a read notes its timestamp (a scan also waits for the
/// writes in flight over its range); a one-phase commit at or under the region's bound
/// is refused `CommitTsExpired` (the client takes a newer timestamp), after taking the
/// floor from the coordinator once per term. `Err` is the reply.
async fn guard_read_ts(core: &Rc<Core>, region: u64, op: &TxnOp) -> std::result::Result<(), Reply> {
    let at = {
        let raft = core.raft.borrow();
        prune_read_ts(|id| raft.region(id).is_some());
        raft.leader_term(region)
            .zip(raft.region(region).map(|d| d.epoch.version))
    };
    match op {
        TxnOp::Get(g) => {
            if let Some((term, version)) = at {
                note_read(region, term, version, g.ts);
            }
            Ok(())
        }
        TxnOp::Scan(s) => {
            if let Some((term, version)) = at {
                note_read(region, term, version, s.ts);
            }
            wait_for_latches_in(&s.start, &s.end).await;
            Ok(())
        }
        TxnOp::Commit1pc(p) => {
            let Some((term, version)) = at else {
                return Err(Reply::error(format!(
                    "TRYAGAIN region {region} has no leader here now, retry"
                )));
            };
            let bound = match one_pc_bound(region, term, version) {
                Some(b) => b,
                None => {
                    // Standalone: no coordinator and no earlier leader; the caller's
                    // timestamps only have to be above the reads served since start.
                    let floor = match core.node.cluster.as_ref().map(|c| c.client.clone()) {
                        None => 0,
                        Some(client) => match blocking(move || client.get_timestamp()).await {
                            Ok(ts) => ts,
                            Err(e) => {
                                return Err(Reply::error(format!(
                                    "TRYAGAIN region {region}: no timestamp from the coordinator for a one-phase commit ({e}), retry"
                                )))
                            }
                        },
                    };
                    set_read_floor(region, term, version, floor);
                    one_pc_bound(region, term, version).unwrap_or(u64::MAX)
                }
            };
            if p.commit_ts > bound {
                return Ok(());
            }
            Err(failed(wire::TxnError {
                kind: TxnErrorKind::CommitTsExpired as i32,
                key: p.mutations.first().map(|m| m.key.clone()).unwrap_or_default(),
                start_ts: p.start_ts,
                commit_ts: p.commit_ts,
                min_commit_ts: bound.saturating_add(1),
                message: format!(
                    "one-phase commit at {} is not above the region's reads and leader floor ({bound}): take a newer commit timestamp",
                    p.commit_ts
                ),
                ..Default::default()
            }))
        }
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------

/// The reply carrying `resp`.
fn response(resp: TxnResponse) -> Reply {
    Reply::Bulk(resp.encode())
}

fn failed(e: wire::TxnError) -> Reply {
    response(TxnResponse::new(TxnResult::Error(e)))
}

fn invalid(msg: impl Into<String>, kind: TxnErrorKind) -> Reply {
    failed(wire::TxnError {
        kind: kind as i32,
        message: msg.into(),
        ..Default::default()
    })
}

/// What running the operation against the engine gave: a reply now, or a batch to
/// propose and the result to answer once it applied.
enum Computed {
    Reply(Reply),
    Propose(WriteBatch, TxnResult),
}

/// Runs the operation against `db` (on the blocking pool). Keys are stored keys already.
/// `skip_conflicts` (a debug knob) skips the prewrites' write-conflict check.
fn compute(db: &Db, desc: &RegionDescriptor, op: TxnOp, skip_conflicts: bool) -> Computed {
    if let Some(refused) = below_safe_point(db, &op) {
        return Computed::Reply(refused);
    }
    let r = DbReader::new(db, NS_KV);
    let err =
        |e: ptxn::TxnError| Computed::Reply(failed(wire::TxnError::from_engine(&e, user_key)));
    let done = TxnResult::Done(Done::default());
    match op {
        TxnOp::Prewrite(p) => {
            let mut muts = Vec::with_capacity(p.mutations.len());
            for m in &p.mutations {
                match m.to_engine(m.key.clone()) {
                    Some(x) => muts.push(x),
                    None => {
                        return Computed::Reply(invalid(
                            "unknown mutation kind",
                            TxnErrorKind::InvalidArgument,
                        ))
                    }
                }
            }
            let opts = ptxn::PrewriteOptions {
                lock_ttl_ms: p.ttl_ms,
                txn_size: p.txn_size,
                test_skip_write_conflict_check: skip_conflicts,
                ..Default::default()
            };
            match ptxn::prewrite(&r, &muts, &p.primary, p.start_ts, &opts) {
                Ok(b) => Computed::Propose(b, done),
                Err(e) => err(e),
            }
        }
        TxnOp::Commit1pc(p) => {
            let mut muts = Vec::with_capacity(p.mutations.len());
            for m in &p.mutations {
                match m.to_engine(m.key.clone()) {
                    Some(x) => muts.push(x),
                    None => {
                        return Computed::Reply(invalid(
                            "unknown mutation kind",
                            TxnErrorKind::InvalidArgument,
                        ))
                    }
                }
            }
            match ptxn::commit_1pc(&r, &muts, p.start_ts, p.commit_ts) {
                Ok(c) => Computed::Propose(
                    c.batch,
                    TxnResult::Done(Done {
                        commit_ts: c.commit_ts,
                    }),
                ),
                Err(e) => err(e),
            }
        }
        TxnOp::Commit(c) => match ptxn::commit(&r, &c.keys, c.start_ts, c.commit_ts) {
            Ok(b) => Computed::Propose(b, done),
            Err(e) => err(e),
        },
        TxnOp::Rollback(c) => match ptxn::rollback(&r, &c.keys, c.start_ts) {
            Ok(b) => Computed::Propose(b, done),
            Err(e) => err(e),
        },
        TxnOp::ResolveLock(c) => {
            let commit = (c.commit_ts != 0).then_some(c.commit_ts);
            match ptxn::resolve_lock(&r, c.start_ts, commit, &c.keys) {
                Ok(b) => Computed::Propose(b, done),
                Err(e) => err(e),
            }
        }
        TxnOp::CheckTxnStatus(c) => {
            match ptxn::check_txn_status(
                &r,
                &c.primary,
                c.start_ts,
                c.caller_start_ts,
                c.current_ts,
            ) {
                Ok((b, s)) => Computed::Propose(b, TxnResult::Status(Status::from_engine(s))),
                Err(e) => err(e),
            }
        }
        TxnOp::HeartBeat(h) => {
            match ptxn::heart_beat(&r, &h.primary, h.start_ts, h.advise_ttl_ms) {
                Ok((b, ttl_ms)) => Computed::Propose(b, TxnResult::Ttl(wire::Ttl { ttl_ms })),
                Err(e) => err(e),
            }
        }
        TxnOp::Get(g) => match ptxn::get(&r, &g.key, g.ts) {
            Ok(v) => Computed::Reply(response(TxnResponse::new(TxnResult::Value(Value {
                found: v.is_some(),
                value: v.unwrap_or_default(),
            })))),
            Err(e) => err(e),
        },
        TxnOp::Scan(s) => {
            let lo = s.start.max(desc.start_key.clone());
            let hi = match (s.end.is_empty(), desc.end_key.is_empty()) {
                (true, true) => None,
                (true, false) => Some(desc.end_key.clone()),
                (false, true) => Some(s.end),
                (false, false) => Some(s.end.min(desc.end_key.clone())),
            };
            if hi.as_ref().is_some_and(|h| *h <= lo) || s.limit == 0 {
                return Computed::Reply(response(TxnResponse::new(TxnResult::Pairs(
                    Pairs::default(),
                ))));
            }
            let limit = s.limit.min(MAX_SCAN_LIMIT) as usize;
            match ptxn::scan(&r, &lo, hi.as_deref(), s.ts, limit) {
                Ok(pairs) => Computed::Reply(response(TxnResponse::new(TxnResult::Pairs(Pairs {
                    pairs: pairs
                        .into_iter()
                        .map(|(k, v)| KvPair {
                            key: user_key(&k),
                            value: v,
                        })
                        .collect(),
                })))),
                Err(e) => err(e),
            }
        }
    }
}

/// A `TxnTooOld` refusal of a read or a new write (prewrite, one-phase commit) whose
/// timestamp is below `db`'s transaction GC safe point: what it would read may already be
/// collected. Commits, rollbacks and lock resolution of older transactions still run.
fn below_safe_point(db: &Db, op: &TxnOp) -> Option<Reply> {
    let (ts, key) = match op {
        TxnOp::Prewrite(p) => (p.start_ts, p.primary.clone()),
        TxnOp::Commit1pc(p) => (
            p.start_ts,
            p.mutations
                .first()
                .map(|m| user_key(&m.key))
                .unwrap_or_default(),
        ),
        TxnOp::Get(g) => (g.ts, user_key(&g.key)),
        TxnOp::Scan(s) => (s.ts, Vec::new()),
        _ => return None,
    };
    let safe_point = db.txn_safe_point();
    (ts < safe_point).then(|| {
        failed(wire::TxnError {
            kind: TxnErrorKind::TxnTooOld as i32,
            key,
            start_ts: ts,
            min_commit_ts: safe_point,
            message: format!(
                "timestamp {ts} is below the transaction GC safe point {safe_point}: the transaction ran longer than the coordinator's --txn-gc-life-secs; start it again"
            ),
            ..Default::default()
        })
    })
}

/// The request with every user key replaced by its stored key (the primary of a prewrite
/// stays a user key: it is what lock readers route by).
fn to_stored(mut op: TxnOp) -> TxnOp {
    let conv = |keys: &mut Vec<Vec<u8>>| {
        for k in keys.iter_mut() {
            *k = stored_key(k);
        }
    };
    match &mut op {
        TxnOp::Prewrite(p) => p
            .mutations
            .iter_mut()
            .for_each(|m| m.key = stored_key(&m.key)),
        TxnOp::Commit1pc(p) => p
            .mutations
            .iter_mut()
            .for_each(|m| m.key = stored_key(&m.key)),
        TxnOp::Commit(c) => conv(&mut c.keys),
        TxnOp::Rollback(c) => conv(&mut c.keys),
        TxnOp::ResolveLock(c) => conv(&mut c.keys),
        TxnOp::CheckTxnStatus(c) => c.primary = stored_key(&c.primary),
        TxnOp::Get(g) => g.key = stored_key(&g.key),
        TxnOp::HeartBeat(h) => h.primary = stored_key(&h.primary),
        TxnOp::Scan(_) => {}
    }
    op
}

/// Runs a transactional request for `region` on this core (its owner): the reply, or the
/// request back when another store leads the region.
pub(super) async fn execute(core: &Rc<Core>, region: u64, req: TxnRequest) -> Answer {
    let back = |req| Work::Txn { region, req };
    if moved_away(core, region) {
        return Answer::Stale(back(req));
    }
    let Some(op) = req.op.clone() else {
        return Answer::Reply(invalid(
            "a transaction request without an operation",
            TxnErrorKind::InvalidArgument,
        ));
    };
    let is_read = req.is_read();
    let keys: BTreeSet<Vec<u8>> = req.keys().into_iter().map(stored_key).collect();
    {
        let raft = core.raft.borrow();
        match raft.region(region) {
            None if core.node.cluster.is_some() => return elsewhere(core, back(req)),
            None => return Answer::Reply(Reply::error(format!("ERR region {region} not found"))),
            Some(desc) => {
                if let Some(k) = keys.iter().find(|k| !in_region(desc, k)) {
                    return Answer::Reply(failed(wire::TxnError {
                        kind: TxnErrorKind::KeyNotInRegion as i32,
                        key: user_key(k),
                        message: format!("key not in region {region}: look the route up again"),
                        ..Default::default()
                    }));
                }
            }
        }
    }
    if !is_read {
        if let Some(reply) = core.write_refusal() {
            return Answer::Reply(Reply::error(reply));
        }
        if core.db.write_stall() == WriteStall::Stop {
            return Answer::Reply(Reply::error(WRITE_STALLED));
        }
    }
    if core.node.cluster.is_none() && !core.caught_up.is_fired() {
        return Answer::Reply(Reply::error(
            "TRYAGAIN the core is re-applying its log after a restart, retry",
        ));
    }
    // Latched before the leadership check: everything applied then is what the
    // operation reads (an entry of an earlier term included), and no other request of
    // these keys runs until its entry applied (or this replica stopped leading).
    let guard = if core.node.knobs.txn_no_latches {
        // Negative control (debug knob): the latch test must catch this.
        None
    } else {
        match latch(keys).await {
            Ok(g) => Some(g),
            Err(reply) => return Answer::Reply(reply),
        }
    };
    if core.node.cluster.is_some() {
        match confirm_leadership(core, region).await {
            Ok(()) => {}
            Err(Refusal::Reply(reply)) => return Answer::Reply(reply),
            Err(Refusal::Elsewhere) => return elsewhere(core, back(req)),
        }
    }
    if let Err(reply) = guard_read_ts(core, region, &op).await {
        return Answer::Reply(reply);
    }
    let Some(desc) = core.raft.borrow().region(region).cloned() else {
        return Answer::Stale(back(req));
    };
    let Ok(turn) = core.blocking_reads.acquire_permit(1).await else {
        return Answer::Reply(Reply::error("ERR request abandoned: the core is stopping"));
    };
    let db = core.db.clone();
    let op = to_stored(op);
    let skip_conflicts = core.node.knobs.txn_skip_write_conflicts;
    let computed = blocking(move || compute(&db, &desc, op, skip_conflicts)).await;
    drop(turn);
    let (batch, result) = match computed {
        Computed::Reply(reply) => return Answer::Reply(reply),
        Computed::Propose(b, r) if b.is_empty() => {
            return Answer::Reply(response(TxnResponse::new(r)))
        }
        Computed::Propose(b, r) => (b, r),
    };
    let Some(data) = encode_entry(&batch) else {
        return Answer::Reply(Reply::error(
            "ERR internal: a transaction batch without explicit versions",
        ));
    };
    let (tx, rx) = oneshot::channel();
    let proposed = core
        .raft
        .borrow_mut()
        .propose(region, data, Waiter::Write(tx));
    core.metrics.proposal(proposed.is_ok());
    if let Err((e, _)) = proposed {
        return match e {
            nokv_raft::Error::Busy { .. } => Answer::Reply(Reply::error(BUSY)),
            nokv_raft::Error::NotLeader { .. } => elsewhere(core, back(req)),
            nokv_raft::Error::RegionNotFound(_) if core.node.cluster.is_some() => {
                elsewhere(core, back(req))
            }
            // Paused (a split or move on its way), not taken: nothing was written.
            e => Answer::Reply(Reply::error(not_written_reply(&e))),
        };
    }
    let _ = core.notify.try_send(());
    // The latches stay until the entry applied or was dropped, even when the requester
    // stops waiting: a later request of these keys must read what it wrote. Or until this
    // replica no longer leads the region: the entry then applies before any leader
    // (this one again included) confirms its leadership for a later request, or never.
    let (done_tx, done_rx) = oneshot::channel();
    let holder = core.clone();
    glommio::spawn_local(async move {
        let mut rx = rx;
        // Bounded: ends when the proposal does or leadership is lost.
        let reply = loop {
            let step = future::or(async { Some((&mut rx).await) }, async {
                glommio::timer::sleep(LATCH_LEADER_CHECK).await;
                None
            })
            .await;
            match step {
                Some(reply) => break reply,
                None if !holder.raft.borrow().is_leader(region) => {
                    break Some(Reply::error(format!(
                        "TRYAGAIN region {region} lost its leader while a transaction entry was in flight; it may still apply"
                    )))
                }
                None => {}
            }
        };
        drop(guard);
        if let Some(reply) = reply {
            done_tx.send(reply);
        }
    })
    .detach();
    match forward::await_write(core, done_rx).await {
        Reply::Simple(s) if s == "OK" => Answer::Reply(response(TxnResponse::new(result))),
        other => Answer::Reply(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_malformed_ones_are_refused() {
        let mut b = WriteBatch::new();
        b.put_at(
            KeySpace::new(NS_KV, nokv::CF_LOCK),
            b"\x00\x01k",
            1,
            b"lock",
        );
        b.delete_at(
            KeySpace::new(NS_KV, nokv::CF_DEFAULT),
            b"\x00\x01k",
            1 << 40,
        );
        let e = encode_entry(&b).expect("versioned batch");
        assert!(is_entry(&e));
        let ops = decode_entry(&e).expect("decodes");
        assert_eq!(ops.len(), 2);
        assert_eq!(ops[0].value.as_deref(), Some(&b"lock"[..]));
        assert_eq!((ops[1].version, ops[1].value.clone()), (1 << 40, None));
        // A cut is refused, except at the boundary between the two operations (which
        // leaves a shorter, well-formed entry).
        for cut in ENTRY_MAGIC.len() + 1..e.len() {
            match decode_entry(&e[..cut]) {
                Err(_) => {}
                Ok(short) => assert_eq!(short, ops[..1].to_vec(), "cut at {cut}"),
            }
        }
        assert!(decode_entry(b"\xC7nokv-txn\x09\x6b\x00\x00\x00").is_err());
        let mut unversioned = WriteBatch::new();
        unversioned.put(b"k", b"v");
        assert!(encode_entry(&unversioned).is_none());
    }

    #[test]
    fn the_safe_point_lies_between_raft_indexes_and_tso_timestamps() {
        // Raft indexes: far beyond any a region reaches (a million entries a second for
        // ten thousand years is 3.2e17).
        assert!(safe_point() > 3_000_000_000_000_000 / 10);
        // TSO timestamps: the coordinator's physical time is the wall clock.
        assert!(safe_point() < ptxn::ts::compose(now_ms(), 0));
    }

    #[test]
    fn stored_keys_are_positions() {
        let k = stored_key(b"{user}1");
        assert_eq!(&k[..2], &model::slot(b"user").to_be_bytes());
        assert_eq!(user_key(&k), b"{user}1");
    }
}

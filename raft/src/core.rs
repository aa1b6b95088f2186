//! Every peer of one core, sharing one engine: proposals, poll rounds that
//! persist all peers' Ready in ONE WAL write, apply, and log truncation.
//!
//! A poll round is split so that its engine work can run off the core's thread
//! (an async executor must not block on the WAL's fdatasync or on a write stall):
//!
//! 1. [`RaftCore::begin_round`] (core thread, no IO): for each peer with a Ready,
//!    send the messages that need no persistence, hand the committed entries it
//!    carries to an [`ApplyBatch`] (their proposers' tokens stay in the [`Round`]),
//!    put its new entries in the peer's storage (raft-rs reads them from there) and
//!    gather them and its hard state into an [`AppendBatch`]; then
//!    `advance_append_async`, so proposals may continue while the batch is written.
//! 2. [`ApplyBatch::run`] (any thread): applies the entries in log order through
//!    `Db::apply_unlogged`, then records each region's last index with an empty
//!    unlogged batch, so that the flush which makes the data durable also records
//!    how far the region is applied (`Db::applied_index`, where a restart resumes).
//!    [`RaftCore::finish_apply`] (core thread) advances raft's applied index and
//!    hands each output to its proposer's token.
//! 3. [`AppendBatch::write`] (any thread): ONE `Db::append_opaque` for all peers: one
//!    WAL write, one fdatasync (with `Durability::Sync` when some Ready must sync).
//!    [`RaftCore::finish_append`] (core thread): only now are the messages that
//!    needed persistence sent and `on_persist_ready` called; entries that became
//!    committed are applied by the next round.
//!
//! [`RaftCore::poll_round`] runs the three phases inline (tests, embedded use).
//! Log truncation is split the same way ([`RaftCore::compact_log`] inline).

use crate::codec::{self, TAG_CHECKPOINT, TAG_ENTRY, TAG_HARD_STATE};
use crate::error::{Error, Result};
use crate::merge::{
    check_mergeable, put_merge_state, CommitMerge, MergeEntry, MergeState, PrepareMerge,
    RollbackMerge,
};
use crate::region::{region_key, save_region, PeerMeta, PeerRole, RegionDescriptor, META_SPACE};
use crate::snapshot::{
    applied_snapshot, decode_snapshot_data, kv_ranges, put_log_floor, ApplySnapshot, DataRanges,
    SnapshotKey, SnapshotTask,
};
use crate::split::SplitRequest;
use crate::storage::{PeerStorage, ReplayedRegion};
use nokv::{Db, Durability, WriteBatch, WriteOptions};
use protobuf::Message as _;
use raft::prelude::{
    ConfChange, ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType,
    Message, MessageType,
};
use raft::{RawNode, StateRole};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Settings of a core's peers.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// This store's id (picks the local peer out of each descriptor).
    pub store_id: u64,
    /// Whether the WAL write of a round is fdatasync'ed before anything is acknowledged.
    pub durability: Durability,
    /// Raft ticks without a heartbeat before a follower campaigns.
    pub election_tick: usize,
    /// Raft ticks between leader heartbeats.
    pub heartbeat_tick: usize,
    /// Most proposals waiting to be applied per region.
    pub max_pending_proposals: usize,
    /// Largest proposal accepted (bytes); must stay below the engine's `max_batch_bytes`.
    pub max_proposal_bytes: usize,
    /// Bytes of raft records written per WAL append (a round above it takes several).
    pub max_round_bytes: usize,
    /// Applied entries kept in each peer's in-memory cache.
    pub max_cached_entries: usize,
    /// Bytes of applied entries kept in each peer's in-memory cache.
    pub max_cached_bytes: usize,
    /// Where this core's region snapshots are written and received (`None`: a replica
    /// that needs a snapshot cannot get one).
    pub snap_dir: Option<PathBuf>,
    /// Which engine key ranges hold a region's data (exported and replaced by snapshots).
    pub data_ranges: DataRanges,
    /// How long after a quorum confirmed leadership a leader serves reads without asking
    /// again (a lease read); must stay below the election timeout minus the clock drift
    /// between stores. `None`: every read takes a ReadIndex round.
    pub lease: Option<Duration>,
    /// Test-only (negative control of the stale-read checks): a leader serves every read
    /// from its own state at once, without a lease or a ReadIndex round, and does not step
    /// down when it loses its quorum (`check_quorum` off). Never set it in production.
    pub unsafe_reads_without_quorum: bool,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            store_id: 1,
            durability: Durability::Sync,
            election_tick: 10,
            heartbeat_tick: 3,
            max_pending_proposals: 4096,
            max_proposal_bytes: 20 << 20,
            max_round_bytes: 8 << 20,
            max_cached_entries: 1024,
            max_cached_bytes: 4 << 20,
            snap_dir: None,
            data_ranges: kv_ranges,
            lease: None,
            unsafe_reads_without_quorum: false,
        }
    }
}

/// Where a core's outgoing traffic goes (called on the core's thread).
pub trait Outbox<T> {
    /// A proposal that will never be applied.
    fn abandon(&mut self, token: T, error: Error);
    /// A raft message for another peer of `region` (`msg.to`; the region's descriptor
    /// names its store).
    fn send(&mut self, region: u64, msg: Message);
    /// A membership change proposed through this core with
    /// [`RaftCore::propose_conf_change`] was applied (the region as it is now) or refused.
    fn conf_changed(&mut self, token: T, result: Result<RegionDescriptor>) {
        let _ = (token, result);
    }
    /// A split proposed through this core with [`RaftCore::propose_split`] was applied
    /// (the new region) or refused.
    fn split_done(&mut self, token: T, result: Result<RegionDescriptor>) {
        let _ = (token, result);
    }
    /// A split was applied here (on every replica): `parent` as it is now, and the new
    /// region `child`, whose peer now runs on this core.
    fn region_split(&mut self, parent: &RegionDescriptor, child: &RegionDescriptor) {
        let _ = (parent, child);
    }
    /// A merge step proposed through this core ([`RaftCore::propose_prepare_merge`],
    /// [`RaftCore::propose_commit_merge`], [`RaftCore::propose_rollback_merge`]) was
    /// applied (the region it was proposed to, as it is now) or refused.
    fn merge_done(&mut self, token: T, result: Result<RegionDescriptor>) {
        let _ = (token, result);
    }
    /// A merge was applied here (on every replica): `target` as it is now covers the
    /// range of `source`, whose peer no longer runs on this core (its data is the
    /// target's now: nothing to delete).
    fn region_merged(&mut self, target: &RegionDescriptor, source: u64) {
        let _ = (target, source);
    }
    /// A read queued by [`RaftCore::read`] may now run on the local engine (`Ok`: the
    /// region is applied past the index a quorum confirmed) or failed (leadership lost).
    fn read_ready(&mut self, token: T, result: Result<()>) {
        let _ = (token, result);
    }
}

/// How [`RaftCore::read`] answered.
#[derive(Debug)]
pub enum ReadPath<T> {
    /// The leader's lease holds and its data is current: read the engine now.
    Now(T),
    /// A ReadIndex round was started; [`Outbox::read_ready`] gets the token back.
    Waiting,
}

/// What the owner of a core does with committed entries when rounds run inline
/// ([`RaftCore::poll_round`]).
pub trait Apply<T>: Outbox<T> {
    /// Applies the data of committed entry `index` of `region`; `token` is the
    /// proposer's when this entry is a proposal made through this core.
    fn apply(&mut self, region: &RegionDescriptor, index: u64, data: &[u8], token: Option<T>);
}

/// Counters of one poll round.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RoundStats {
    /// Peers that had a Ready.
    pub readies: usize,
    /// Records written to the WAL (in one append).
    pub records: usize,
    /// Entries applied.
    pub applied: usize,
}

/// The committed entries of one region in a round.
struct RegionEntries {
    region: RegionDescriptor,
    /// (index, data) of the entries that carry data, in log order.
    entries: Vec<(u64, Vec<u8>)>,
    /// The last committed index handed out (data or not).
    last: u64,
    /// The region's descriptor changed (a membership change): persisted with the
    /// applied index, so a restart resumes with the descriptor of that index.
    changed: bool,
    /// The entries end with a split (at `last`): persisted with the applied index.
    split: Option<Box<SplitApplied>>,
    /// The entries end with a merge into this region (at `last`): the region after it and
    /// the source it took over, persisted with the applied index.
    merge: Option<(RegionDescriptor, u64)>,
    /// The region's merge state changed (a prepare or a rollback at `last`).
    merge_state: Option<Option<MergeState>>,
}

/// A split applied in a round: what the apply persists.
struct SplitApplied {
    /// The parent after the split.
    parent: RegionDescriptor,
    /// The new region.
    child: RegionDescriptor,
    /// Term of the split entry (the child's log starts at (`last`, `term`)).
    term: u64,
}

/// A region a split created in a round, started once the round's peers are released.
struct Born {
    parent: RegionDescriptor,
    child: RegionDescriptor,
    index: u64,
    term: u64,
    /// The parent's peer led: the child's campaigns at once.
    campaign: bool,
}

/// The committed entries of a round, to apply in log order on any thread.
pub struct ApplyBatch {
    /// Snapshots received, applied before any entry.
    snapshots: Vec<ApplySnapshot>,
    regions: Vec<RegionEntries>,
}

/// What [`ApplyBatch::run`] produced: one output per entry with data, in order.
pub struct Applied<O> {
    outputs: Vec<O>,
    last: Vec<(u64, u64)>,
}

impl ApplyBatch {
    /// Entries that carry data.
    pub fn len(&self) -> usize {
        self.regions.iter().map(|r| r.entries.len()).sum()
    }

    /// True when no entry carries data (the batch still records applied indexes).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies every entry with data through `f(region, index, data)` in log order,
    /// then records each region's last index (`Db::apply_unlogged` of an empty batch).
    /// Blocks while the engine stalls writes. An error (from the engine, or from `f` when
    /// it could not apply an entry) stops the batch there, before that region's applied
    /// index is recorded, so that the entry is applied again after a restart; the core
    /// must run no further round (see [`RaftCore::abandon_all`]).
    pub fn run<O>(
        &self,
        db: &Db,
        f: impl FnMut(&RegionDescriptor, u64, &[u8]) -> Result<O>,
    ) -> Result<Applied<O>> {
        /// A sink that writes nothing back.
        struct Each<F>(F);
        impl<O, F: FnMut(&RegionDescriptor, u64, &[u8]) -> Result<O>> EntrySink for Each<F> {
            type Output = O;
            fn entry(&mut self, r: &RegionDescriptor, i: u64, d: &[u8]) -> Result<O> {
                (self.0)(r, i, d)
            }
            fn end_region(&mut self, _: &RegionDescriptor) -> Result<()> {
                Ok(())
            }
        }
        self.run_with(db, &mut Each(f))
    }

    /// Like [`ApplyBatch::run`], through a sink that may hold writes back across the
    /// entries of a region (one engine write for many entries): its `end_region` runs
    /// after each region's last entry, before the region's applied index is recorded;
    /// an error from either stops the batch as in `run`.
    pub fn run_with<S: EntrySink>(&self, db: &Db, sink: &mut S) -> Result<Applied<S::Output>> {
        let mut outputs = Vec::with_capacity(self.len());
        let mut last = Vec::with_capacity(self.regions.len());
        for s in &self.snapshots {
            s.run(db)?;
        }
        for r in &self.regions {
            for (index, data) in &r.entries {
                outputs.push(sink.entry(&r.region, *index, data)?);
            }
            sink.end_region(&r.region)?;
            let region = r.region.id;
            let mut meta = WriteBatch::new();
            let mut applied = vec![(region, r.last)];
            if let Some(split) = &r.split {
                // Parent, child and both applied indexes become durable together.
                let child = split.child.id;
                meta.put_in(META_SPACE, &region_key(region), &split.parent.encode());
                meta.put_in(META_SPACE, &region_key(child), &split.child.encode());
                put_log_floor(&mut meta, child, r.last, split.term);
                applied.push((child, r.last));
            } else if let Some((target, source)) = &r.merge {
                // The wider target and the source's removal become durable together.
                meta.put_in(META_SPACE, &region_key(region), &target.encode());
                meta.delete_in(META_SPACE, &region_key(*source));
                put_merge_state(&mut meta, *source, None);
            } else if r.changed {
                meta.put_in(META_SPACE, &region_key(region), &r.region.encode());
            }
            if let Some(state) = r.merge_state {
                put_merge_state(&mut meta, region, state);
            }
            db.apply_unlogged_at(&meta, &applied).map_err(|e| {
                Error::engine(format!("record applied index of region {region}"), e)
            })?;
            last.push((region, r.last));
        }
        Ok(Applied { outputs, last })
    }
}

/// Applies the entries of an [`ApplyBatch`] ([`ApplyBatch::run_with`]).
pub trait EntrySink {
    /// What an entry yields (its proposer's reply).
    type Output;
    /// Applies one entry with data, in log order; an error means it was not applied.
    fn entry(&mut self, region: &RegionDescriptor, index: u64, data: &[u8])
        -> Result<Self::Output>;
    /// After the region's last entry: writes what was held back; an error means those
    /// entries were not applied.
    fn end_region(&mut self, region: &RegionDescriptor) -> Result<()>;
}

/// The raft records of a round, to write to the WAL on any thread.
pub struct AppendBatch {
    records: Vec<(u8, Vec<u8>)>,
    durability: Durability,
    max_bytes: usize,
}

impl AppendBatch {
    /// Records in the batch.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The durability the append uses (`Sync` whenever a term or vote changed).
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Writes the records: one WAL write (and one fdatasync with `Durability::Sync`);
    /// a batch over `CoreConfig::max_round_bytes` takes a few appends, so none exceeds
    /// the engine's batch limit. Returns the WAL segment of the first record.
    pub fn write(&self, db: &Db) -> Result<u64> {
        let mut segment = u64::MAX;
        let wo = WriteOptions {
            durability: Some(self.durability),
        };
        let mut start = 0;
        while start < self.records.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < self.records.len()
                && (end == start || bytes + self.records[end].1.len() <= self.max_bytes)
            {
                bytes += self.records[end].1.len();
                end += 1;
            }
            let refs: Vec<(u8, &[u8])> = self.records[start..end]
                .iter()
                .map(|(t, p)| (*t, p.as_slice()))
                .collect();
            let pos = db
                .append_opaque(&refs, &wo)
                .map_err(|e| Error::engine("append raft records", e))?;
            segment = segment.min(pos.segment);
            start = end;
        }
        Ok(segment)
    }
}

/// One peer's part of a round that waits for the append.
struct Persisting {
    region: u64,
    number: u64,
    messages: Vec<Message>,
}

/// A poll round in flight (see the module docs). Finish it with
/// [`RaftCore::finish_apply`] (when it had an [`ApplyBatch`]) and
/// [`RaftCore::finish_append`], on the core's thread, before the next round begins.
pub struct Round<T> {
    apply: Option<ApplyBatch>,
    append: Option<AppendBatch>,
    /// One per entry with data in the apply batch: the proposer's token, if any.
    tokens: Vec<Option<T>>,
    /// Proposals among `tokens` (counted in [`RaftCore::pending`] until applied).
    proposals: usize,
    persisting: Vec<Persisting>,
    stats: RoundStats,
}

impl<T> Round<T> {
    /// The committed entries to apply (None: none, or already taken).
    pub fn take_apply(&mut self) -> Option<ApplyBatch> {
        self.apply.take()
    }

    /// The records to write (None: nothing to persist, or already taken).
    pub fn take_append(&mut self) -> Option<AppendBatch> {
        self.append.take()
    }

    /// The round's counters.
    pub fn stats(&self) -> RoundStats {
        self.stats
    }
}

/// What a core needs from its engine before it starts, gathered by
/// [`Recovered::load`] (file IO, on any thread) so that [`RaftCore::start`] does none.
pub struct Recovered {
    regions: Vec<RegionDescriptor>,
    replayed: BTreeMap<u64, ReplayedRegion>,
    applied: BTreeMap<u64, u64>,
    /// Regions in a merge's prepared state.
    merging: BTreeMap<u64, MergeState>,
}

impl Recovered {
    /// Retains the whole raft log in the WAL (until the first checkpoint moves the floor)
    /// and reads each region's durable applied index and applied snapshot.
    ///
    /// `db` must have been opened with `LogReplay::hook` as `opaque_replay`, and
    /// [`crate::snapshot::recover_pending`] run before `regions` were loaded.
    pub fn load(
        db: &Db,
        regions: Vec<RegionDescriptor>,
        replayed: BTreeMap<u64, ReplayedRegion>,
    ) -> Result<Recovered> {
        // Keep every live WAL segment until the first checkpoint moves the floor to where
        // the logs really start. Not below the oldest live one: segment files older than
        // that are kept only for reuse, and a restart before that checkpoint would find
        // them part of the log again, with a gap where one was reused (seen in a test
        // that killed a store twice in a few seconds: "WAL segment is missing").
        db.set_opaque_floor(Some(db.oldest_live_wal_segment()))
            .map_err(|e| Error::engine("retain the raft log", e))?;
        let applied = regions
            .iter()
            .map(|d| (d.id, db.applied_index(d.id).unwrap_or(0)))
            .collect();
        let mut replayed = replayed;
        for d in &regions {
            // A snapshot applied after the last checkpoint record: the log starts there.
            let Some((index, term)) = applied_snapshot(db, d.id)? else {
                continue;
            };
            start_log_after(replayed.entry(d.id).or_default(), index, term);
        }
        for d in &regions {
            let Some(r) = replayed.get(&d.id) else {
                continue;
            };
            if let Some((before, after)) = r.gap {
                // Entries after the gap are fine when the log starts right below them.
                let floor = r.checkpoint.as_ref().map_or(0, |c| c.truncated_index);
                if floor + 1 < after {
                    return Err(Error::Corrupt {
                        what: "raft log",
                        detail: format!(
                            "region {}: entry {after} follows entry {before} (gap) and the log starts at {floor}",
                            d.id
                        ),
                    });
                }
            }
        }
        let merging = crate::merge::load_merge_states(db)?;
        Ok(Recovered {
            regions,
            replayed,
            applied,
            merging,
        })
    }
}

/// Makes a replayed log start after (`index`, `term`) (data up to there came from a
/// snapshot or a split's parent), unless its checkpoint is already there.
fn start_log_after(r: &mut ReplayedRegion, index: u64, term: u64) {
    if r.checkpoint
        .as_ref()
        .is_some_and(|c| c.truncated_index >= index)
    {
        return;
    }
    r.entries.retain(|e| e.index > index);
    let mut hs = r.hard_state.clone().unwrap_or_default();
    hs.commit = hs.commit.max(index);
    hs.term = hs.term.max(term);
    r.hard_state = Some(hs.clone());
    r.checkpoint = Some(codec::Checkpoint {
        hard_state: hs,
        truncated_index: index,
        truncated_term: term,
    });
}

impl Recovered {
    /// Forgets `region` (its copy on this core lost to another core's, after a move a crash
    /// cut short): its peer will not start.
    pub fn drop_region(&mut self, region: u64) {
        self.regions.retain(|d| d.id != region);
        self.replayed.remove(&region);
        self.applied.remove(&region);
        self.merging.remove(&region);
    }
}

/// Checkpoint records of a log truncation, to write on any thread
/// ([`RaftCore::plan_checkpoint`]).
pub struct CheckpointPlan {
    targets: Vec<(u64, crate::codec::Checkpoint)>,
    records: Vec<(u8, Vec<u8>)>,
    /// Merge sources whose merge is durable.
    retired_done: Vec<u64>,
}

impl CheckpointPlan {
    /// Writes the checkpoints in one synced WAL append; returns its segment.
    pub fn write(&self, db: &Db) -> Result<u64> {
        let refs: Vec<(u8, &[u8])> = self
            .records
            .iter()
            .map(|(t, p)| (*t, p.as_slice()))
            .collect();
        let wo = WriteOptions {
            durability: Some(Durability::Sync),
        };
        let pos = db
            .append_opaque(&refs, &wo)
            .map_err(|e| Error::engine("append raft checkpoints", e))?;
        Ok(pos.segment)
    }
}

/// How far the engine has made each region's applied data durable (reads the engine's
/// state under its lock: call it where blocking is allowed).
pub fn durable_applied(db: &Db, regions: &[u64]) -> BTreeMap<u64, u64> {
    regions
        .iter()
        .map(|&id| (id, db.applied_index(id).unwrap_or(0)))
        .collect()
}

struct Proposal<T> {
    index: u64,
    term: u64,
    token: T,
}

/// A read waiting for its ReadIndex round and then for the apply to reach the index.
struct PendingRead<T> {
    /// The ReadIndex round's context (0: no round sent yet).
    id: u64,
    token: T,
    /// When the current round was sent (its confirmation renews the lease from then).
    sent: Instant,
    /// Ticks since the current round was sent (or since queued, when none was).
    age: usize,
    index: Option<u64>,
}

struct Peer<T> {
    region: RegionDescriptor,
    node: RawNode<PeerStorage>,
    pending: VecDeque<Proposal<T>>,
    reads: VecDeque<PendingRead<T>>,
    /// The leader's lease: (term, valid until).
    lease: Option<(u64, Instant)>,
    applied: u64,
    /// The last index of the log the peer started with (acknowledged writes of a
    /// previous run may be anywhere up to it).
    recovered_to: u64,
    /// A split created this peer and its parent's entries before the split are not in the
    /// engine yet: no proposal or read until the round's apply finished.
    unborn: bool,
    /// The region is being moved to another core: no new proposal.
    fenced: bool,
    /// The index of a split this leader proposed and has not applied yet: no new proposal
    /// until it is (one would carry the old epoch and be refused after the split). A
    /// merge step this leader proposed pauses proposals the same way.
    splitting: Option<u64>,
    /// The region merges into another (its prepare is applied): no new proposal.
    merging: Option<MergeState>,
    /// Committed entries waiting for a merge source on this core to apply its prepare.
    held: VecDeque<Entry>,
}

/// The peers of one core and the engine they share.
pub struct RaftCore<T> {
    db: Db,
    cfg: CoreConfig,
    peers: BTreeMap<u64, Peer<T>>,
    logger: slog::Logger,
    /// The newest WAL segment an append returned: a lower bound for the next append's,
    /// so entries tagged with it keep the opaque floor at or below their real segment.
    wal_segment: u64,
    /// Proposals whose entries are being applied by a round in flight.
    applying: usize,
    /// Id of the next ReadIndex request.
    next_read: u64,
    /// Snapshot exports for the owner to run ([`RaftCore::take_snapshot_tasks`]).
    snapshot_tasks: Vec<SnapshotTask>,
    /// Regions with an export in flight.
    exporting: BTreeSet<u64>,
    /// Replayed logs of regions without a descriptor: children of splits a crash cut
    /// short, adopted when the split is applied again.
    orphans: BTreeMap<u64, ReplayedRegion>,
    /// Regions that are not hibernating: only these are ticked and polled (see
    /// [`RaftCore::tick`]).
    awake: BTreeSet<u64>,
    /// Sources of merges applied here whose merge may not be durable yet: source ->
    /// (target, index of the merge in the target's log). No log checkpoint until it is.
    retired: BTreeMap<u64, (u64, u64)>,
}

fn conf_state(desc: &RegionDescriptor) -> ConfState {
    let ids = |role| {
        desc.peers
            .iter()
            .filter(|p| p.role == role)
            .map(|p| p.peer_id)
            .collect::<Vec<_>>()
    };
    ConfState::from((ids(PeerRole::Voter), ids(PeerRole::Learner)))
}

/// A membership change of a region: the peers to add or remove (with their stores).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerChange {
    /// Adds a learner, or demotes a voter to learner.
    AddLearner(PeerMeta),
    /// Adds a voter, or promotes a learner.
    AddVoter(PeerMeta),
    /// Removes a replica.
    Remove(PeerMeta),
}

impl PeerChange {
    fn peer(&self) -> PeerMeta {
        match *self {
            PeerChange::AddLearner(p) | PeerChange::AddVoter(p) | PeerChange::Remove(p) => p,
        }
    }
}

/// Encodes the peers a conf change names (the entry's context): `(store, peer)*`.
fn encode_change_context(changes: &[PeerChange]) -> Vec<u8> {
    let mut out = Vec::with_capacity(changes.len() * 16);
    for c in changes {
        codec::put_u64(&mut out, c.peer().store_id);
        codec::put_u64(&mut out, c.peer().peer_id);
    }
    out
}

fn decode_change_context(buf: &[u8]) -> Result<Vec<(u64, u64)>> {
    let mut r = codec::Reader::new(buf, "conf change context");
    let mut out = Vec::with_capacity(buf.len() / 16);
    for _ in 0..buf.len() / 16 {
        out.push((r.u64()?, r.u64()?));
    }
    r.finish()?;
    Ok(out)
}

/// Decodes a committed conf change entry (either raft-rs form) and the peers its context
/// (the entry's, as [`RaftCore::propose_conf_change`] wrote it) names.
fn decode_conf_change(e: &Entry) -> Result<(ConfChangeV2, Vec<(u64, u64)>)> {
    let corrupt = |detail: String| Error::Corrupt {
        what: "conf change entry",
        detail,
    };
    let cc = if e.get_entry_type() == EntryType::EntryConfChange {
        let cc = ConfChange::parse_from_bytes(&e.data).map_err(|x| corrupt(x.to_string()))?;
        let mut single = ConfChangeSingle::default();
        single.set_change_type(cc.get_change_type());
        single.node_id = cc.node_id;
        let mut v2 = ConfChangeV2::default();
        v2.mut_changes().push(single);
        v2
    } else {
        ConfChangeV2::parse_from_bytes(&e.data).map_err(|x| corrupt(x.to_string()))?
    };
    Ok((cc, decode_change_context(&e.context)?))
}

/// The region after a conf change took effect: peers and roles from raft's new
/// configuration (stores from the old descriptor or the change's context), the
/// membership version bumped.
fn changed_descriptor(
    old: &RegionDescriptor,
    cs: &ConfState,
    named: &[(u64, u64)],
) -> RegionDescriptor {
    let store_of = |id: u64| {
        old.peer(id)
            .map(|p| p.store_id)
            .or_else(|| named.iter().find(|(_, p)| *p == id).map(|(s, _)| *s))
            .unwrap_or(0)
    };
    let mut peers: Vec<PeerMeta> = Vec::new();
    let mut push = |id: u64, role: PeerRole| {
        if !peers.iter().any(|p| p.peer_id == id) {
            peers.push(PeerMeta {
                store_id: store_of(id),
                peer_id: id,
                role,
            });
        }
    };
    for &id in cs.get_voters().iter().chain(cs.get_voters_outgoing()) {
        push(id, PeerRole::Voter);
    }
    for &id in cs.get_learners().iter().chain(cs.get_learners_next()) {
        push(id, PeerRole::Learner);
    }
    peers.sort_by_key(|p| p.peer_id);
    let mut desc = old.clone();
    desc.peers = peers;
    desc.epoch.conf_version += 1;
    desc
}

impl<T> RaftCore<T> {
    /// Opens the peers of `regions` from the replayed log and the engine's applied indexes
    /// ([`Recovered::load`] then [`RaftCore::start`]).
    ///
    /// `db` must have been opened with `LogReplay::hook` as `opaque_replay`.
    pub fn open(
        db: Db,
        cfg: CoreConfig,
        regions: Vec<RegionDescriptor>,
        replayed: BTreeMap<u64, ReplayedRegion>,
    ) -> Result<RaftCore<T>> {
        let rec = Recovered::load(&db, regions, replayed)?;
        RaftCore::start(db, cfg, rec)
    }

    /// Starts the peers of a recovered engine; does no IO.
    pub fn start(db: Db, cfg: CoreConfig, rec: Recovered) -> Result<RaftCore<T>> {
        let Recovered {
            regions,
            mut replayed,
            applied,
            merging,
        } = rec;
        let mut core = RaftCore {
            db,
            cfg,
            peers: BTreeMap::new(),
            logger: crate::logger::logger(),
            wal_segment: 0,
            applying: 0,
            next_read: 1,
            snapshot_tasks: Vec::new(),
            exporting: BTreeSet::new(),
            orphans: BTreeMap::new(),
            awake: BTreeSet::new(),
            retired: BTreeMap::new(),
        };
        for desc in regions {
            let applied = applied.get(&desc.id).copied().unwrap_or(0);
            let log = replayed.remove(&desc.id).unwrap_or_default();
            let storage = PeerStorage::from_replay(conf_state(&desc), log, applied)?;
            let id = desc.id;
            core.add_peer(desc, storage, applied)?;
            if let (Some(p), Some(st)) = (core.peers.get_mut(&id), merging.get(&id)) {
                p.merging = Some(*st);
            }
        }
        for region in replayed.keys() {
            tracing::info!(
                region,
                "raft log records of a region without a descriptor are kept until a split creates it"
            );
        }
        core.orphans = replayed;
        Ok(core)
    }

    /// Creates a new region here: persists its descriptor (synced), then starts its peer.
    pub fn create_region(&mut self, desc: RegionDescriptor) -> Result<()> {
        if self.peers.contains_key(&desc.id) {
            return Err(Error::InvalidProposal {
                region: desc.id,
                reason: "region exists".into(),
            });
        }
        save_region(&self.db, &desc)?;
        let storage = PeerStorage::new(conf_state(&desc));
        self.add_peer(desc, storage, 0)
    }

    /// Starts the peer of a region whose descriptor the caller already persisted
    /// ([`crate::region::save_region`], IO: off the executor): a new, empty replica that
    /// catches up from the leader. No IO.
    pub fn start_region(&mut self, desc: RegionDescriptor) -> Result<()> {
        if self.peers.contains_key(&desc.id) {
            return Err(Error::InvalidProposal {
                region: desc.id,
                reason: "region exists".into(),
            });
        }
        let storage = PeerStorage::new(conf_state(&desc));
        self.add_peer(desc, storage, 0)
    }

    /// Stops and forgets the local peer of `region` (its replica was removed); its
    /// proposals and reads are handed to `answer`. Returns the descriptor it had. No IO:
    /// the caller deletes the persisted descriptor and the data.
    pub fn remove_region(
        &mut self,
        region: u64,
        mut answer: impl FnMut(T),
    ) -> Option<RegionDescriptor> {
        self.awake.remove(&region);
        let mut peer = self.peers.remove(&region)?;
        while let Some(p) = peer.pending.pop_front() {
            answer(p.token);
        }
        while let Some(r) = peer.reads.pop_front() {
            answer(r.token);
        }
        self.exporting.remove(&region);
        Some(peer.region)
    }

    /// The leader's view of replica `peer_id` of `region`: (its matched index, the
    /// leader's last index); None when the local peer does not lead or knows no such peer.
    pub fn progress(&self, region: u64, peer_id: u64) -> Option<(u64, u64)> {
        let peer = self.peers.get(&region)?;
        let raft = &peer.node.raft;
        if raft.state != StateRole::Leader {
            return None;
        }
        let pr = raft.prs().get(peer_id)?;
        Some((pr.matched, raft.raft_log.last_index()))
    }

    fn add_peer(
        &mut self,
        desc: RegionDescriptor,
        mut storage: PeerStorage,
        applied: u64,
    ) -> Result<()> {
        let region = desc.id;
        let Some(me) = desc.peer_on_store(self.cfg.store_id) else {
            return Err(Error::RegionNotFound(region));
        };
        storage.compact_cache(applied);
        let recovered_to = storage.last_index();
        let config = raft::Config {
            id: me.peer_id,
            election_tick: self.cfg.election_tick,
            heartbeat_tick: self.cfg.heartbeat_tick,
            applied,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            pre_vote: true,
            check_quorum: !self.cfg.unsafe_reads_without_quorum,
            ..Default::default()
        };
        let logger = self.logger.new(slog::o!("region" => region));
        let mut node = RawNode::new(&config, storage, &logger)
            .map_err(|source| Error::Raft { region, source })?;
        let voters: Vec<&PeerMeta> = desc
            .peers
            .iter()
            .filter(|p| p.role == PeerRole::Voter)
            .collect();
        if voters.len() == 1 && voters[0].peer_id == me.peer_id {
            // The only voter: no need to wait for an election timeout.
            node.campaign()
                .map_err(|source| Error::Raft { region, source })?;
        }
        self.peers.insert(
            region,
            Peer {
                region: desc,
                node,
                pending: VecDeque::new(),
                reads: VecDeque::new(),
                lease: None,
                applied,
                recovered_to,
                unborn: false,
                fenced: false,
                splitting: None,
                merging: None,
                held: VecDeque::new(),
            },
        );
        self.awake.insert(region);
        Ok(())
    }

    /// The engine.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The descriptor of a region hosted here.
    pub fn region(&self, id: u64) -> Option<&RegionDescriptor> {
        self.peers.get(&id).map(|p| &p.region)
    }

    /// Regions hosted here, by id.
    pub fn regions(&self) -> impl Iterator<Item = &RegionDescriptor> {
        self.peers.values().map(|p| &p.region)
    }

    /// Whether the local peer of `region` leads it.
    pub fn is_leader(&self, region: u64) -> bool {
        self.peers
            .get(&region)
            .is_some_and(|p| p.node.raft.state == StateRole::Leader)
    }

    /// The term in which the local peer leads `region` (`None`: it does not lead it).
    pub fn leader_term(&self, region: u64) -> Option<u64> {
        let p = self.peers.get(&region)?;
        (p.node.raft.state == StateRole::Leader).then_some(p.node.raft.term)
    }

    /// Whether a membership change of `region` is in the log but not applied yet (raft
    /// turns a further change proposed meanwhile into an empty entry: it would be dropped).
    pub fn conf_change_pending(&self, region: u64) -> bool {
        self.peers.get(&region).is_some_and(|p| {
            let raft = &p.node.raft;
            raft.pending_conf_index > raft.raft_log.applied
        })
    }

    /// The replica that leads `region` as far as the local peer knows.
    pub fn leader(&self, region: u64) -> Option<PeerMeta> {
        let p = self.peers.get(&region)?;
        p.region.peer(p.node.raft.leader_id)
    }

    /// Hands a raft message from another replica to the local peer of `region`.
    pub fn step(&mut self, region: u64, msg: Message) -> Result<()> {
        self.wake(region);
        let Some(peer) = self.peers.get_mut(&region) else {
            return Err(Error::RegionNotFound(region));
        };
        let local = peer.node.raft.id;
        if msg.to != local {
            return Err(Error::PeerMismatch {
                region,
                to: msg.to,
                local,
            });
        }
        peer.node
            .step(msg)
            .map_err(|source| Error::Raft { region, source })
    }

    /// Tells raft that the replica `peer_id` of `region` could not be reached (the
    /// transport dropped a message), so the leader probes it again.
    pub fn report_unreachable(&mut self, region: u64, peer_id: u64) {
        self.wake(region);
        if let Some(p) = self.peers.get_mut(&region) {
            p.node.report_unreachable(peer_id);
        }
    }

    /// A linearizable read of `region` at time `now`: served at once under a valid leader
    /// lease (no leader transfer in progress, the lease renewed in this term), otherwise
    /// queued behind a ReadIndex round whose quorum confirmation renews the lease.
    pub fn read(
        &mut self,
        region: u64,
        now: Instant,
        token: T,
    ) -> std::result::Result<ReadPath<T>, (Error, T)> {
        self.wake(region);
        // Reads go on while a split or a move pauses proposals.
        let peer = match leading(&mut self.peers, region) {
            Ok(p) => p,
            Err(Error::Paused { .. }) => match self.peers.get_mut(&region) {
                Some(p) => p,
                None => return Err((Error::RegionNotFound(region), token)),
            },
            Err(e) => return Err((e, token)),
        };
        let raft = &peer.node.raft;
        let lease_holds = peer
            .lease
            .is_some_and(|(term, until)| term == raft.term && now < until)
            && raft.lead_transferee.is_none()
            && peer.reads.is_empty();
        if self.cfg.unsafe_reads_without_quorum && raft.state == StateRole::Leader {
            return Ok(ReadPath::Now(token));
        }
        if lease_holds && peer.applied >= raft.raft_log.committed {
            return Ok(ReadPath::Now(token));
        }
        if peer.reads.len() >= self.cfg.max_pending_proposals {
            let pending = peer.reads.len();
            return Err((Error::Busy { region, pending }, token));
        }
        let mut read = PendingRead {
            id: 0,
            token,
            sent: now,
            age: 0,
            index: None,
        };
        send_read_round(peer, &mut read, &mut self.next_read, now);
        peer.reads.push_back(read);
        Ok(ReadPath::Waiting)
    }

    /// The voter of `region` best placed to take leadership from the local leader: the
    /// recently active one furthest along the log (None: not leader, or no such voter).
    pub fn transfer_candidate(&self, region: u64) -> Option<u64> {
        let peer = self.peers.get(&region)?;
        let raft = &peer.node.raft;
        if raft.state != StateRole::Leader {
            return None;
        }
        let voters: Vec<u64> = conf_state(&peer.region).get_voters().to_vec();
        raft.prs()
            .iter()
            .filter(|(id, p)| **id != raft.id && p.recent_active && voters.contains(id))
            .max_by_key(|(id, p)| (p.matched, std::cmp::Reverse(**id)))
            .map(|(id, _)| *id)
    }

    /// Asks the leader of `region` (the local peer) to hand leadership to `peer_id`; its
    /// lease is suspended meanwhile.
    pub fn transfer_leader(&mut self, region: u64, peer_id: u64) -> Result<()> {
        self.wake(region);
        let peer = leading(&mut self.peers, region)?;
        peer.lease = None;
        peer.node.transfer_leader(peer_id);
        Ok(())
    }

    /// Snapshot exports raft asked for (replicas that need entries this core no longer
    /// holds). Run each ([`SnapshotTask::run`], file IO, any thread) and hand it back with
    /// [`RaftCore::snapshot_exported`].
    pub fn take_snapshot_tasks(&mut self) -> Vec<SnapshotTask> {
        std::mem::take(&mut self.snapshot_tasks)
    }

    /// An export finished: on success raft sends it to the replicas that need it (the
    /// owner's transport carries the files of `task.dir` with the message).
    pub fn snapshot_exported(&mut self, task: SnapshotTask, result: Result<()>) {
        let region = task.key.region;
        self.exporting.remove(&region);
        self.wake(region);
        match result {
            Ok(()) => {
                if let Some(p) = self.peers.get_mut(&region) {
                    p.node.mut_store().set_prepared(task.raft_snapshot());
                }
            }
            Err(e) => tracing::warn!(region, error = %e, "snapshot export failed"),
        }
    }

    /// Where the files of snapshot `key` are (exported here, or received for a replica
    /// here); `None` without a snapshot directory.
    pub fn snap_dir(&self, key: &SnapshotKey) -> Option<PathBuf> {
        self.cfg.snap_dir.as_ref().map(|d| d.join(key.dir_name()))
    }

    /// Tells raft whether a snapshot sent to replica `peer_id` of `region` arrived.
    pub fn report_snapshot(&mut self, region: u64, peer_id: u64, delivered: bool) {
        self.wake(region);
        if let Some(p) = self.peers.get_mut(&region) {
            let status = if delivered {
                raft::SnapshotStatus::Finish
            } else {
                raft::SnapshotStatus::Failure
            };
            p.node.report_snapshot(peer_id, status);
        }
    }

    /// Queues exports for peers whose storage raft asked for a snapshot (no IO: the
    /// engine state is pinned here, between rounds, where it matches the applied index).
    fn plan_snapshots(&mut self) {
        let Some(snap_dir) = self.cfg.snap_dir.clone() else {
            return;
        };
        for (&id, peer) in self.peers.iter_mut() {
            if !peer.node.store().take_snapshot_request() || self.exporting.contains(&id) {
                continue;
            }
            let index = peer.applied;
            let Some(term) = peer.node.store().term_of(index) else {
                continue;
            };
            let key = SnapshotKey {
                region: id,
                term,
                index,
            };
            self.exporting.insert(id);
            self.snapshot_tasks.push(SnapshotTask {
                key,
                region: peer.region.clone(),
                conf_state: conf_state(&peer.region),
                engine: self.db.snapshot(),
                dir: snap_dir.join(key.dir_name()),
                ranges: (self.cfg.data_ranges)(&peer.region),
            });
        }
    }

    /// Proposes a membership change of `region` (one change: simple; several: joint
    /// consensus, left automatically); `token` comes back through [`Outbox::conf_changed`].
    pub fn propose_conf_change(
        &mut self,
        region: u64,
        changes: &[PeerChange],
        token: T,
    ) -> std::result::Result<u64, (Error, T)> {
        self.wake(region);
        let peer = match leading(&mut self.peers, region) {
            Ok(p) => p,
            Err(e) => return Err((e, token)),
        };
        if changes.is_empty() {
            let reason = "a conf change needs at least one peer change".to_string();
            return Err((Error::InvalidProposal { region, reason }, token));
        }
        let mut cc = ConfChangeV2::default();
        for c in changes {
            let mut single = ConfChangeSingle::default();
            single.set_change_type(match c {
                PeerChange::AddLearner(_) => ConfChangeType::AddLearnerNode,
                PeerChange::AddVoter(_) => ConfChangeType::AddNode,
                PeerChange::Remove(_) => ConfChangeType::RemoveNode,
            });
            single.node_id = c.peer().peer_id;
            cc.mut_changes().push(single);
        }
        let before = peer.node.raft.raft_log.last_index();
        let taken = peer
            .node
            .propose_conf_change(encode_change_context(changes), cc);
        record_proposal(peer, before, taken, token)
    }

    /// The last applied index of `region`.
    pub fn applied(&self, region: u64) -> Option<u64> {
        self.peers.get(&region).map(|p| p.applied)
    }

    /// Whether every region has applied the whole log it started with. Until then a
    /// read could miss a write acknowledged before a restart (its entry is in the log
    /// but not yet re-applied): the owner must hold reads back.
    pub fn caught_up(&self) -> bool {
        self.peers.values().all(|p| p.applied >= p.recovered_to)
    }

    /// Proposals waiting to be applied, over all regions (those of a round in flight too).
    pub fn pending(&self) -> usize {
        self.peers.values().map(|p| p.pending.len()).sum::<usize>() + self.applying
    }

    /// Proposes `data` to `region`'s log; `token` comes back through [`Apply`].
    pub fn propose(
        &mut self,
        region: u64,
        data: Vec<u8>,
        token: T,
    ) -> std::result::Result<u64, (Error, T)> {
        self.wake(region);
        let peer = match leading(&mut self.peers, region) {
            Ok(p) => p,
            Err(e) => return Err((e, token)),
        };
        if peer.pending.len() >= self.cfg.max_pending_proposals {
            let pending = peer.pending.len();
            return Err((Error::Busy { region, pending }, token));
        }
        if data.is_empty() || data.len() > self.cfg.max_proposal_bytes {
            let reason = format!(
                "{} bytes (must be 1..={})",
                data.len(),
                self.cfg.max_proposal_bytes
            );
            return Err((Error::InvalidProposal { region, reason }, token));
        }
        let before = peer.node.raft.raft_log.last_index();
        let taken = peer.node.propose(epoch_context(&peer.region), data);
        record_proposal(peer, before, taken, token)
    }

    /// Proposes to split `region` at `split_key`: the keys from it on become region
    /// `new_region` with one new peer id per replica (`(store, peer)`); `token` comes back
    /// through [`Outbox::split_done`]. Refused at once while a membership change is pending.
    pub fn propose_split(
        &mut self,
        region: u64,
        split_key: Vec<u8>,
        new_region: u64,
        new_peers: Vec<(u64, u64)>,
        token: T,
    ) -> std::result::Result<u64, (Error, T)> {
        if self.peers.contains_key(&new_region) {
            let reason = format!("region {new_region} exists here");
            return Err((Error::InvalidProposal { region, reason }, token));
        }
        self.wake(region);
        let pending = self.conf_change_pending(region);
        let peer = match leading(&mut self.peers, region) {
            Ok(p) => p,
            Err(e) => return Err((e, token)),
        };
        let req = SplitRequest {
            split_key,
            new_region,
            new_peers,
            epoch: peer.region.epoch,
        };
        if pending {
            let reason = "a membership change is not applied yet".to_string();
            return Err((Error::InvalidProposal { region, reason }, token));
        }
        if let Err(e) = req.apply_to(&peer.region) {
            return Err((e, token));
        }
        let before = peer.node.raft.raft_log.last_index();
        let taken = peer.node.propose(epoch_context(&peer.region), req.encode());
        let index = record_proposal(peer, before, taken, token)?;
        peer.splitting = Some(index);
        Ok(index)
    }

    /// Proposes the first step of merging `source` into `target` (adjacent, with replicas
    /// on the same stores, both on this core): from its apply on, `source` takes no
    /// proposal. `token` comes back through [`Outbox::merge_done`]. Refused at once while a
    /// membership change of either is pending or `source` is already merging.
    pub fn propose_prepare_merge(
        &mut self,
        source: u64,
        target: u64,
        token: T,
    ) -> std::result::Result<u64, (Error, T)> {
        let Some(t) = self.peers.get(&target) else {
            return Err((Error::RegionNotFound(target), token));
        };
        let target_desc = t.region.clone();
        let busy = self.conf_change_pending(source) || self.conf_change_pending(target);
        self.wake(source);
        let peer = match leading(&mut self.peers, source) {
            Ok(p) => p,
            Err(e) => return Err((e, token)),
        };
        if busy {
            let reason = "a membership change is not applied yet".to_string();
            return Err((
                Error::InvalidProposal {
                    region: source,
                    reason,
                },
                token,
            ));
        }
        if let Err(e) = check_mergeable(&target_desc, &peer.region) {
            return Err((e, token));
        }
        let req = PrepareMerge {
            target,
            epoch: peer.region.epoch,
        };
        let before = peer.node.raft.raft_log.last_index();
        let data = MergeEntry::Prepare(req).encode();
        let taken = peer.node.propose(epoch_context(&peer.region), data);
        let index = record_proposal(peer, before, taken, token)?;
        peer.splitting = Some(index);
        Ok(index)
    }

    /// Proposes the second step: `target` takes over `source`, whose prepare this core
    /// has applied. The target's log is first padded with empty entries up to the
    /// source's prepare index (MVCC versions are raft indexes and must keep growing per
    /// key). `token` comes back through [`Outbox::merge_done`].
    pub fn propose_commit_merge(
        &mut self,
        target: u64,
        source: u64,
        token: T,
    ) -> std::result::Result<u64, (Error, T)> {
        let Some(s) = self.peers.get(&source) else {
            return Err((Error::RegionNotFound(source), token));
        };
        let Some(state) = s.merging.filter(|m| m.target == target) else {
            let reason = format!("region {source} is not prepared to merge into {target}");
            return Err((
                Error::InvalidProposal {
                    region: target,
                    reason,
                },
                token,
            ));
        };
        if s.applied < state.prepared_at {
            return Err((Error::Paused { region: source }, token));
        }
        // Every replica of the source must hold the log up to the prepare: once the
        // source's peers are gone, nobody could send it what it misses.
        let raft = &s.node.raft;
        if raft.state != StateRole::Leader {
            let reason = format!("region {source}'s leader must be on this store");
            return Err((
                Error::InvalidProposal {
                    region: target,
                    reason,
                },
                token,
            ));
        }
        if raft
            .prs()
            .iter()
            .any(|(_, p)| p.matched < state.prepared_at)
        {
            return Err((Error::Paused { region: source }, token));
        }
        let Some(prepared_term) = s.node.store().term_of(state.prepared_at) else {
            return Err((Error::Paused { region: source }, token));
        };
        let source_desc = s.region.clone();
        self.wake(target);
        let peer = match leading(&mut self.peers, target) {
            Ok(p) => p,
            Err(e) => return Err((e, token)),
        };
        if let Err(e) = check_mergeable(&peer.region, &source_desc) {
            return Err((e, token));
        }
        let gap = state
            .prepared_at
            .saturating_sub(peer.node.raft.raft_log.last_index());
        if gap > MAX_MERGE_PADDING {
            let reason = format!(
                "the target's log is {gap} entries behind the source's; merge the other way"
            );
            return Err((
                Error::InvalidProposal {
                    region: target,
                    reason,
                },
                token,
            ));
        }
        // Bounded by MAX_MERGE_PADDING.
        while peer.node.raft.raft_log.last_index() < state.prepared_at {
            let before = peer.node.raft.raft_log.last_index();
            match peer.node.propose(Vec::new(), Vec::new()) {
                Ok(()) if peer.node.raft.raft_log.last_index() > before => {}
                Ok(()) => {
                    let index = before;
                    return Err((
                        Error::ProposalDropped {
                            region: target,
                            index,
                        },
                        token,
                    ));
                }
                Err(source) => {
                    return Err((
                        Error::Raft {
                            region: target,
                            source,
                        },
                        token,
                    ))
                }
            }
        }
        let req = CommitMerge {
            source: source_desc,
            prepared_at: state.prepared_at,
            prepared_term,
            epoch: peer.region.epoch,
        };
        let before = peer.node.raft.raft_log.last_index();
        let data = MergeEntry::Commit(req).encode();
        let taken = peer.node.propose(epoch_context(&peer.region), data);
        let index = record_proposal(peer, before, taken, token)?;
        peer.splitting = Some(index);
        Ok(index)
    }

    /// Proposes to undo `source`'s prepared merge (its target cannot take it over): it
    /// takes proposals again once applied. `token` comes back through
    /// [`Outbox::merge_done`].
    pub fn propose_rollback_merge(
        &mut self,
        source: u64,
        token: T,
    ) -> std::result::Result<u64, (Error, T)> {
        self.wake(source);
        let Some(peer) = self.peers.get_mut(&source) else {
            return Err((Error::RegionNotFound(source), token));
        };
        if peer.node.raft.state != StateRole::Leader {
            return Err((not_leader(peer), token));
        }
        let Some(state) = peer.merging else {
            let reason = "no merge is prepared".to_string();
            return Err((
                Error::InvalidProposal {
                    region: source,
                    reason,
                },
                token,
            ));
        };
        let req = RollbackMerge {
            prepared_at: state.prepared_at,
            epoch: peer.region.epoch,
        };
        let before = peer.node.raft.raft_log.last_index();
        let data = MergeEntry::Rollback(req).encode();
        let taken = peer.node.propose(epoch_context(&peer.region), data);
        record_proposal(peer, before, taken, token)
    }

    /// `region`'s merge in progress (its prepare applied here), if any.
    pub fn merge_state(&self, region: u64) -> Option<MergeState> {
        self.peers.get(&region)?.merging
    }

    /// Advances the logical clock of every region that is not hibernating by one tick.
    ///
    /// **Hibernation.** A region whose only voter is the local peer, which leads it with
    /// nothing to do (no proposal, read or Ready waiting, everything applied, no export in
    /// flight), needs no clock: no heartbeat goes anywhere and nobody else could campaign.
    /// It stops being ticked and polled until something reaches it (a proposal, a read, a
    /// message, a membership change, a split, a leader transfer), so an idle store's rounds
    /// cost nothing per region. Regions with other voters keep ticking (their followers'
    /// election clocks need the leader's heartbeats).
    pub fn tick(&mut self) {
        let mut asleep = Vec::new();
        for &id in &self.awake {
            let Some(p) = self.peers.get_mut(&id) else {
                asleep.push(id);
                continue;
            };
            if can_hibernate(p) && !self.exporting.contains(&id) {
                asleep.push(id);
                continue;
            }
            p.node.tick();
            resend_reads(p, &mut self.next_read, self.cfg.election_tick);
        }
        for id in asleep {
            self.awake.remove(&id);
        }
    }

    /// Stops (`true`) or allows again new proposals to `region` (a move to another core);
    /// refused proposals get [`Error::Paused`].
    pub fn fence(&mut self, region: u64, on: bool) {
        self.wake(region);
        if let Some(p) = self.peers.get_mut(&region) {
            p.fenced = on;
        }
    }

    /// Where `region` stands when nothing is in flight (everything in its log committed
    /// and applied, no proposal or read waiting): its applied index and that entry's term.
    pub fn quiet_at(&self, region: u64) -> Option<(u64, u64)> {
        let p = self.peers.get(&region)?;
        let log = &p.node.raft.raft_log;
        let quiet = p.pending.is_empty()
            && p.reads.is_empty()
            && !p.node.has_ready()
            && log.committed == log.last_index()
            && p.applied >= log.committed
            && log.persisted >= log.last_index();
        quiet.then(|| Some((p.applied, p.node.store().term_of(p.applied)?)))?
    }

    /// The raft term and vote of this core's peer of `region` (a move to another core
    /// carries them: a peer that forgot its vote could vote twice in one term).
    pub fn term_and_vote(&self, region: u64) -> Option<(u64, u64)> {
        let raft = &self.peers.get(&region)?.node.raft;
        Some((raft.term, raft.vote))
    }

    /// Starts the peer of a region whose data, descriptor and log floor (`index`, `term`)
    /// the caller made durable (a move from another core): its log starts there, its hard
    /// state at `term_vote` (the moved peer's term and vote; made durable by the caller
    /// too) when given. No IO.
    pub fn adopt_region(
        &mut self,
        desc: RegionDescriptor,
        index: u64,
        term: u64,
        term_vote: Option<(u64, u64)>,
    ) -> Result<()> {
        if self.peers.contains_key(&desc.id) {
            return Err(Error::InvalidProposal {
                region: desc.id,
                reason: "region exists".into(),
            });
        }
        let cs = conf_state(&desc);
        let mut storage = PeerStorage::new(cs.clone());
        storage.apply_snapshot(index, term, cs);
        if let Some((current, vote)) = term_vote {
            let mut hs = storage.hard_state().clone();
            if current >= hs.term {
                hs.term = current;
                hs.vote = vote;
            }
            storage.set_hard_state(hs);
        }
        self.add_peer(desc, storage, index)
    }

    /// Makes this core's peer of `region` campaign at once, as the target of a leadership
    /// transfer does (without pre-vote, past the other replicas' leader lease): for a
    /// replica that led the region on another core of this store and moved here with
    /// every entry of its log committed, so no other replica's log is ahead.
    pub fn campaign_as_transferee(&mut self, region: u64) -> Result<()> {
        self.wake(region);
        let Some(peer) = self.peers.get_mut(&region) else {
            return Err(Error::RegionNotFound(region));
        };
        let mut msg = Message::default();
        msg.set_msg_type(MessageType::MsgTimeoutNow);
        msg.to = peer.node.raft.id;
        msg.from = peer.node.raft.id;
        // Term 0: a local message, stepped whatever the peer's term.
        peer.node
            .step(msg)
            .map_err(|source| Error::Raft { region, source })
    }

    /// Test only: forgets that `region`'s leader has a split on its way (as a new leader
    /// would not know), so proposals are taken again.
    #[doc(hidden)]
    pub fn test_no_split_pause_for(&mut self, region: u64) {
        if let Some(p) = self.peers.get_mut(&region) {
            p.splitting = None;
        }
    }

    /// Regions hibernating now (see [`RaftCore::tick`]).
    pub fn hibernating(&self) -> usize {
        self.peers.len() - self.awake.len()
    }

    /// Ends `region`'s hibernation (something reached it).
    fn wake(&mut self, region: u64) {
        if self.peers.contains_key(&region) {
            self.awake.insert(region);
        }
    }

    /// Whether any peer has work for [`RaftCore::poll_round`].
    pub fn has_ready(&self) -> bool {
        self.awake
            .iter()
            .filter_map(|id| self.peers.get(id))
            .any(|p| {
                p.node.has_ready()
                    || held_commit(p).is_some_and(|c| {
                        self.peers.get(&c.source.id).is_some_and(|s| {
                            let log = &s.node.raft.raft_log;
                            log.committed < c.prepared_at
                                && log.term(c.prepared_at).is_ok_and(|t| t == c.prepared_term)
                        })
                    })
                    || p.held.front().is_some_and(|e| {
                        !waits_for_source(p, e, |id| {
                            let s = self.peers.get(&id)?;
                            Some((s.applied, s.merging?))
                        })
                    })
            })
    }

    /// Runs one poll round with every phase inline (see the module docs). An error means
    /// the engine failed: the core must stop.
    pub fn poll_round(&mut self, apply: &mut dyn Apply<T>) -> Result<RoundStats> {
        let Some(mut round) = self.begin_round(apply)? else {
            return Ok(RoundStats::default());
        };
        if let Some(batch) = round.take_apply() {
            let mut tokens = std::mem::take(&mut round.tokens).into_iter();
            let applied = batch.run(&self.db, |region, index, data| {
                apply.apply(region, index, data, tokens.next().flatten());
                Ok(())
            })?;
            self.finish_apply(&mut round, applied, |_, ()| {});
        }
        let segment = match round.take_append() {
            Some(batch) => Some(batch.write(&self.db)?),
            None => None,
        };
        Ok(self.finish_append(round, segment, apply))
    }

    /// Phase 1 of a round (see the module docs): None when no peer has a Ready. The
    /// round must be finished before the next one begins. An error means the core must stop.
    pub fn begin_round(&mut self, out: &mut dyn Outbox<T>) -> Result<Option<Round<T>>> {
        self.plan_snapshots();
        let mut stats = RoundStats::default();
        let mut snapshots = Vec::new();
        let mut records: Vec<(u8, Vec<u8>)> = Vec::new();
        let mut must_sync = false;
        // A new term or vote is synced even with relaxed durability: forgetting a vote
        // could let this peer vote twice in one term.
        let mut term_or_vote = false;
        let mut regions = Vec::new();
        let mut tokens = Vec::new();
        let mut persisting = Vec::new();
        let mut born = Vec::new();
        self.nudge_merge_sources();
        let mut merges = MergeRound::default();
        for &id in &self.awake {
            if let Some(st) = self
                .peers
                .get(&id)
                .and_then(|p| Some((p.applied, p.merging?)))
            {
                merges.sources.insert(id, st);
            }
        }
        let mut retire_for = self.retire_covered(out);
        let segment = self.wal_segment;
        for &id in &self.awake {
            let Some(peer) = self.peers.get_mut(&id) else {
                continue;
            };
            if !peer.node.has_ready() {
                if !peer.held.is_empty() {
                    // Entries held for a merge source: maybe it has applied its prepare.
                    let held = collect_committed(
                        peer,
                        Vec::new(),
                        &mut tokens,
                        out,
                        &mut born,
                        &mut merges,
                    );
                    for r in held {
                        stats.applied += r.entries.len();
                        regions.push(r);
                    }
                }
                continue;
            }
            let mut rd = peer.node.ready();
            stats.readies += 1;
            if !rd.snapshot().is_empty() {
                // Applied before anything else of this Ready; its checkpoint record is
                // appended after the data is durable (the apply runs before the append).
                let snap = rd.snapshot();
                let meta = snap.get_metadata();
                let (index, term) = (meta.index, meta.term);
                let desc = decode_snapshot_data(&snap.data)?;
                let Some(dir) = &self.cfg.snap_dir else {
                    return Err(Error::Snapshot {
                        region: id,
                        detail: "received a snapshot but no snapshot directory is set".into(),
                    });
                };
                let key = SnapshotKey {
                    region: id,
                    term,
                    index,
                };
                peer.node
                    .mut_store()
                    .apply_snapshot(index, term, meta.get_conf_state().clone());
                peer.region = desc.clone();
                // Committed entries held for a merge source are older than the snapshot.
                peer.held.clear();
                let retire = retire_for.remove(&id).unwrap_or_default();
                for source in &retire {
                    out.region_merged(&desc, *source);
                }
                snapshots.push(ApplySnapshot {
                    key,
                    region: desc.clone(),
                    dir: dir.join(key.dir_name()),
                    ranges: (self.cfg.data_ranges)(&desc),
                    retire,
                });
                regions.push(RegionEntries {
                    region: desc,
                    entries: Vec::new(),
                    last: index,
                    changed: false,
                    split: None,
                    merge: None,
                    merge_state: None,
                });
                let c = codec::Checkpoint {
                    hard_state: peer.node.store().hard_state().clone(),
                    truncated_index: index,
                    truncated_term: term,
                };
                records.push((TAG_CHECKPOINT, codec::encode_checkpoint(id, &c)));
                term_or_vote = true;
            }
            for m in rd.take_messages() {
                out.send(id, m);
            }
            for rs in rd.take_read_states() {
                confirm_read(peer, &rs.request_ctx, rs.index, self.cfg.lease);
            }
            let committed = rd.take_committed_entries();
            for r in collect_committed(peer, committed, &mut tokens, out, &mut born, &mut merges) {
                stats.applied += r.entries.len();
                regions.push(r);
            }
            for e in rd.entries() {
                records.push((TAG_ENTRY, codec::encode_entry(id, e)));
            }
            if let Some(hs) = rd.hs() {
                records.push((TAG_HARD_STATE, codec::encode_hard_state(id, hs)));
                let prev = peer.node.store().hard_state();
                term_or_vote |= hs.term != prev.term || hs.vote != prev.vote;
            }
            must_sync |= rd.must_sync();
            // raft-rs reads the entries from storage once the Ready is advanced; the
            // messages that depend on their persistence wait for the append.
            let store = peer.node.mut_store();
            store.append(rd.entries(), segment)?;
            if let Some(hs) = rd.hs() {
                store.set_hard_state(hs.clone());
            }
            persisting.push(Persisting {
                region: id,
                number: rd.number(),
                messages: rd.take_persisted_messages(),
            });
            peer.node.advance_append_async(rd);
        }
        for &id in &self.awake {
            if let Some(peer) = self.peers.get_mut(&id) {
                release_reads(peer, out);
            }
        }
        for b in born {
            self.start_child(b, out)?;
        }
        for (target, source, index) in merges.merged {
            self.retire_source(&target, source, index, out);
        }
        if persisting.is_empty() && regions.is_empty() {
            return Ok(None);
        }
        stats.records = records.len();
        let proposals = tokens.iter().filter(|t| t.is_some()).count();
        self.applying += proposals;
        // A Ready without new entries or vote changes (a new commit index only) needs no
        // fdatasync: a lost commit index is recomputed on restart.
        let durability = if term_or_vote {
            Durability::Sync
        } else if must_sync {
            self.cfg.durability
        } else {
            Durability::Relaxed
        };
        Ok(Some(Round {
            apply: (!regions.is_empty()).then_some(ApplyBatch { snapshots, regions }),
            append: (!records.is_empty()).then_some(AppendBatch {
                records,
                durability,
                max_bytes: self.cfg.max_round_bytes,
            }),
            tokens,
            proposals,
            persisting,
            stats,
        }))
    }

    /// Regions of this core that a snapshot about to be applied covers with a newer epoch
    /// (its region took them over by a merge this replica missed: the target's snapshot
    /// arrived while the source's replica still runs here). Their peers stop now (what
    /// waits on them is abandoned), before the round takes their Readies; the snapshot's
    /// application deletes their descriptors durably. Returns them by snapshot region.
    fn retire_covered(&mut self, out: &mut dyn Outbox<T>) -> BTreeMap<u64, Vec<u64>> {
        let mut retire: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for &id in &self.awake {
            let Some(snap) = self
                .peers
                .get(&id)
                .and_then(|p| p.node.raft.raft_log.unstable.snapshot.as_ref())
            else {
                continue;
            };
            let Ok(desc) = decode_snapshot_data(&snap.data) else {
                continue;
            };
            let covered: Vec<u64> = self
                .peers
                .iter()
                .filter(|(other, p)| {
                    **other != id
                        && p.region.epoch.version < desc.epoch.version
                        && covers(&desc, &p.region)
                })
                .map(|(other, _)| *other)
                .collect();
            if !covered.is_empty() {
                retire.insert(id, covered);
            }
        }
        for (&target, sources) in &retire {
            for &source in sources {
                tracing::warn!(
                    target,
                    source,
                    "a snapshot of a region covers another region of this core with an older epoch (a merge this replica missed): retiring it"
                );
                let mut waiting = Vec::new();
                self.remove_region(source, |t| waiting.push(t));
                for t in waiting {
                    out.abandon(t, Error::RegionNotFound(source));
                }
            }
        }
        retire
    }

    /// A merge into a region here is committed, so its source's prepare is too: a source
    /// replica that holds the prepare entry (same index and term) but has not heard that
    /// it is committed (its leader may be gone with the merge) counts it committed.
    fn nudge_merge_sources(&mut self) {
        let mut nudges = Vec::new();
        for id in &self.awake {
            let Some(c) = self.peers.get(id).and_then(|p| held_commit(p)) else {
                continue;
            };
            nudges.push((c.source.id, c.prepared_at, c.prepared_term));
        }
        for (source, at, term) in nudges {
            let Some(s) = self.peers.get_mut(&source) else {
                continue;
            };
            let log = &mut s.node.raft.raft_log;
            if log.committed < at && log.term(at).is_ok_and(|t| t == term) {
                log.commit_to(at);
                self.awake.insert(source);
            }
        }
    }

    /// Stops the peer of `source`, which a merge into `target` took over (its data is the
    /// target's now). Its log stays in the WAL until the merge is durable
    /// ([`RaftCore::plan_checkpoint`]): until then a restart applies the merge again.
    fn retire_source(
        &mut self,
        target: &RegionDescriptor,
        source: u64,
        index: u64,
        out: &mut dyn Outbox<T>,
    ) {
        let mut waiting = Vec::new();
        self.remove_region(source, |t| waiting.push(t));
        for t in waiting {
            out.abandon(t, Error::RegionNotFound(source));
        }
        self.retired.insert(source, (target.id, index));
        out.region_merged(target, source);
    }

    /// Starts the peer of a region a split created here: its log starts at the split
    /// entry (or continues a log a crash left without a descriptor).
    fn start_child(&mut self, b: Born, out: &mut dyn Outbox<T>) -> Result<()> {
        let id = b.child.id;
        if self.peers.contains_key(&id) {
            // Cannot happen: propose_split and the shard's creation from messages both
            // refuse an existing id or a range this store's parent still covers.
            tracing::error!(
                region = id,
                "a split created a region that already runs here"
            );
            return Ok(());
        }
        let cs = conf_state(&b.child);
        let storage = match self.orphans.remove(&id) {
            Some(mut log) => {
                tracing::info!(
                    region = id,
                    "a split applied again adopts its child's replayed log"
                );
                start_log_after(&mut log, b.index, b.term);
                PeerStorage::from_replay(cs, log, b.index)?
            }
            None => {
                let mut s = PeerStorage::new(cs.clone());
                s.apply_snapshot(b.index, b.term, cs);
                s
            }
        };
        self.add_peer(b.child.clone(), storage, b.index)?;
        if let Some(p) = self.peers.get_mut(&id) {
            p.unborn = true;
            if b.campaign && p.node.raft.state != StateRole::Leader {
                p.node
                    .campaign()
                    .map_err(|source| Error::Raft { region: id, source })?;
            }
        }
        out.region_split(&b.parent, &b.child);
        Ok(())
    }

    /// Phase 2's end, on the core's thread: records how far each region is applied and
    /// hands each output of [`ApplyBatch::run`] to its entry's proposer.
    pub fn finish_apply<O>(
        &mut self,
        round: &mut Round<T>,
        applied: Applied<O>,
        mut deliver: impl FnMut(T, O),
    ) {
        self.applying = self.applying.saturating_sub(round.proposals);
        round.proposals = 0;
        for peer in self.peers.values_mut() {
            // The round that created it applied its parent's entries up to the split.
            peer.unborn = false;
        }
        let tokens = std::mem::take(&mut round.tokens);
        for (token, output) in tokens.into_iter().zip(applied.outputs) {
            if let Some(t) = token {
                deliver(t, output);
            }
        }
        for (region, last) in applied.last {
            let Some(peer) = self.peers.get_mut(&region) else {
                continue;
            };
            peer.applied = peer.applied.max(last);
            advance_applied(peer);
            let (entries, bytes) = peer.node.store().cached();
            if entries > self.cfg.max_cached_entries || bytes > self.cfg.max_cached_bytes {
                let keep = (self.cfg.max_cached_entries / 2) as u64;
                let mut to = peer
                    .applied
                    .min(peer.node.store().last_index().saturating_sub(keep));
                // A leader keeps what a lagging replica still needs (it could only catch up
                // from a snapshot otherwise), up to 4x the bound.
                let within = entries <= 4 * self.cfg.max_cached_entries
                    && bytes <= 4 * self.cfg.max_cached_bytes;
                if within && peer.node.raft.state == StateRole::Leader {
                    let me = peer.node.raft.id;
                    let lagging = peer
                        .node
                        .raft
                        .prs()
                        .iter()
                        .filter(|(id, _)| **id != me)
                        .map(|(_, p)| p.matched)
                        .min();
                    if let Some(m) = lagging {
                        to = to.min(m);
                    }
                }
                peer.node.mut_store().compact_cache(to);
            }
        }
    }

    /// After a failed round (its [`ApplyBatch::run`] or [`AppendBatch::write`] returned
    /// an error, e.g. a full disk): hands the tokens of the round's proposers (`round`,
    /// when it is still held) and of every proposal still waiting in any region to
    /// `answer`, which tells them. The core must run no further round afterwards: raft-rs
    /// was told the round's entries are being persisted, and they may not be.
    pub fn abandon_all(&mut self, round: Option<Round<T>>, mut answer: impl FnMut(T)) {
        if let Some(mut round) = round {
            self.applying = self.applying.saturating_sub(round.proposals);
            round.proposals = 0;
            for token in std::mem::take(&mut round.tokens).into_iter().flatten() {
                answer(token);
            }
        }
        for peer in self.peers.values_mut() {
            // Bounded by the pending queue.
            while let Some(p) = peer.pending.pop_front() {
                answer(p.token);
            }
        }
    }

    /// Phase 3's end, on the core's thread, once the round's [`AppendBatch`] is durable
    /// (`segment`: what [`AppendBatch::write`] returned; None when there was no batch):
    /// sends the messages that waited for it and tells raft the Readies are persisted.
    pub fn finish_append(
        &mut self,
        round: Round<T>,
        segment: Option<u64>,
        out: &mut dyn Outbox<T>,
    ) -> RoundStats {
        if let Some(s) = segment {
            self.wal_segment = self.wal_segment.max(s);
        }
        for p in round.persisting {
            let Some(peer) = self.peers.get_mut(&p.region) else {
                continue;
            };
            // Only now, after the WAL write (and its fdatasync), may these leave.
            for m in p.messages {
                out.send(p.region, m);
            }
            peer.node.on_persist_ready(p.number);
            // A snapshot's index counts as applied once raft knows it is persisted.
            advance_applied(peer);
            release_reads(peer, out);
        }
        round.stats
    }

    /// Truncates the logs of regions whose applied data a flush made durable: writes a
    /// checkpoint of every region in one WAL append, then releases WAL segments below
    /// the oldest entry any region still needs. Returns whether the floor moved.
    /// Runs the steps of [`RaftCore::plan_checkpoint`] inline.
    pub fn compact_log(&mut self) -> Result<bool> {
        let ids: Vec<u64> = self.peers.keys().copied().collect();
        let durable = durable_applied(&self.db, &ids);
        let Some(plan) = self.plan_checkpoint(&durable) else {
            return Ok(false);
        };
        let segment = plan.write(&self.db)?;
        let Some(floor) = self.finish_checkpoint(plan, segment) else {
            return Ok(false);
        };
        self.db
            .set_opaque_floor(Some(floor))
            .map_err(|e| Error::engine("release raft log segments", e))?;
        Ok(true)
    }

    /// Log truncation on the core's thread, given [`durable_applied`]: the checkpoints to
    /// write (None: no region advanced). Then [`CheckpointPlan::write`] (any thread),
    /// [`RaftCore::finish_checkpoint`], and `Db::set_opaque_floor` with the floor it
    /// returns (any thread). No round may run in between.
    pub fn plan_checkpoint(&self, durable: &BTreeMap<u64, u64>) -> Option<CheckpointPlan> {
        // A merge that is not durable yet may be applied again after a restart, from its
        // source's log: keep every log until it is.
        let mut retired_done = Vec::new();
        for (&source, &(target, index)) in &self.retired {
            match durable.get(&target) {
                Some(&d) if d >= index => retired_done.push(source),
                Some(_) => return None,
                // The target is gone from this core too: nothing to apply again.
                None => retired_done.push(source),
            }
        }
        let mut targets = Vec::new();
        let mut advanced = false;
        for (&id, peer) in &self.peers {
            let store = peer.node.store();
            let durable = durable.get(&id).copied().unwrap_or(0).min(peer.applied);
            let at = durable.max(store.checkpoint_index());
            advanced |= at > store.checkpoint_index();
            // The term is unknown (cannot happen for an index between the checkpoint
            // and the last entry): keep the old checkpoints.
            let c = store.checkpoint_at(at)?;
            targets.push((id, c));
        }
        if !advanced {
            return None;
        }
        let records = targets
            .iter()
            .map(|(id, c)| (TAG_CHECKPOINT, codec::encode_checkpoint(*id, c)))
            .collect();
        Some(CheckpointPlan {
            targets,
            records,
            retired_done,
        })
    }

    /// Records that `plan` is durable in WAL `segment`; returns the new opaque floor, or
    /// None when it cannot move yet.
    pub fn finish_checkpoint(&mut self, plan: CheckpointPlan, segment: u64) -> Option<u64> {
        self.wal_segment = self.wal_segment.max(segment);
        for source in &plan.retired_done {
            self.retired.remove(source);
        }
        let mut floor = segment;
        for (id, c) in &plan.targets {
            let Some(peer) = self.peers.get_mut(id) else {
                continue;
            };
            let store = peer.node.mut_store();
            store.checkpointed(c.truncated_index, c.truncated_term);
            match store.segment_of(c.truncated_index + 1) {
                None => {}
                Some(Some(s)) => floor = floor.min(s),
                // Replayed entries of unknown segments are still needed: keep the floor.
                Some(None) => return None,
            }
        }
        Some(floor)
    }
}

/// Whether `outer`'s key range holds all of `inner`'s (an empty start or end is
/// unbounded).
fn covers(outer: &RegionDescriptor, inner: &RegionDescriptor) -> bool {
    let starts_before = outer.start_key.is_empty()
        || (!inner.start_key.is_empty() && outer.start_key <= inner.start_key);
    let ends_after =
        outer.end_key.is_empty() || (!inner.end_key.is_empty() && inner.end_key <= outer.end_key);
    starts_before && ends_after
}

/// The most empty entries a merge's commit pads the target's log with (see
/// [`RaftCore::propose_commit_merge`]).
const MAX_MERGE_PADDING: u64 = 10_000;

/// Whether `peer` may stop ticking: the only voter, leading, with nothing to do.
fn can_hibernate<T>(peer: &Peer<T>) -> bool {
    let raft = &peer.node.raft;
    let log = &raft.raft_log;
    matches!(peer.region.peers.as_slice(), [only] if only.peer_id == raft.id && only.role == PeerRole::Voter)
        && raft.state == StateRole::Leader
        && !peer.unborn
        && peer.pending.is_empty()
        && peer.reads.is_empty()
        && log.committed == log.last_index()
        && peer.applied >= log.committed
        && log.persisted >= log.last_index()
        && !peer.node.has_ready()
        && peer.merging.is_none()
        && peer.held.is_empty()
}

/// Queues the token of a proposal raft took (`taken`; the log grew past `before`), so it
/// comes back when its entry is applied; the token back with the error otherwise.
fn record_proposal<T>(
    peer: &mut Peer<T>,
    before: u64,
    taken: raft::Result<()>,
    token: T,
) -> std::result::Result<u64, (Error, T)> {
    let region = peer.region.id;
    match taken {
        Ok(()) => {}
        Err(raft::Error::ProposalDropped) => return Err((Error::NotTaken { region }, token)),
        Err(source) => return Err((Error::Raft { region, source }, token)),
    }
    let index = peer.node.raft.raft_log.last_index();
    if index == before {
        return Err((Error::ProposalDropped { region, index }, token));
    }
    let term = peer.node.raft.term;
    peer.pending.push_back(Proposal { index, term, token });
    Ok(index)
}

/// The local peer of `region` if it leads; RegionNotFound or NotLeader (with the leader
/// it knows of) otherwise.
fn leading<T>(peers: &mut BTreeMap<u64, Peer<T>>, region: u64) -> Result<&mut Peer<T>> {
    let Some(peer) = peers.get_mut(&region) else {
        return Err(Error::RegionNotFound(region));
    };
    if peer.node.raft.state != StateRole::Leader {
        return Err(not_leader(peer));
    }
    if peer.unborn || peer.fenced || peer.splitting.is_some() || peer.merging.is_some() {
        return Err(Error::Paused { region });
    }
    Ok(peer)
}

/// NotLeader for `peer`'s region, with the leader it knows of.
fn not_leader<T>(peer: &Peer<T>) -> Error {
    let leader = peer.node.raft.leader_id;
    Error::NotLeader {
        region: peer.region.id,
        leader: (leader != 0).then_some(leader),
    }
}

/// Sends a ReadIndex round for `read` under a fresh context, when raft would take it: a
/// leader that has not committed an entry of its term yet drops the request silently
/// (the read then waits for [`resend_reads`]). A round of an earlier context that comes
/// back later is ignored.
fn send_read_round<T>(peer: &mut Peer<T>, read: &mut PendingRead<T>, next: &mut u64, now: Instant) {
    read.age = 0;
    let raft = &peer.node.raft;
    if raft.state != StateRole::Leader || !raft.commit_to_current_term() {
        read.id = 0;
        return;
    }
    read.id = *next;
    *next += 1;
    read.sent = now;
    peer.node.read_index(read.id.to_be_bytes().to_vec());
}

/// Once a tick: sends the rounds of reads that have none (the leader had not committed
/// in its term) and sends again those unanswered for `patience` ticks (a heartbeat or
/// its response was lost); otherwise a read would wait, and hold every later read of
/// the region behind it, until leadership changes.
fn resend_reads<T>(peer: &mut Peer<T>, next: &mut u64, patience: usize) {
    if peer.reads.is_empty() || peer.node.raft.state != StateRole::Leader {
        return;
    }
    let now = Instant::now();
    let mut reads = std::mem::take(&mut peer.reads);
    for r in reads.iter_mut().filter(|r| r.index.is_none()) {
        r.age += 1;
        if r.id == 0 || r.age >= patience {
            send_read_round(peer, r, next, now);
        }
    }
    peer.reads = reads;
}

/// A ReadIndex round came back: the read may run once the peer applied `index`; the
/// leader held a quorum when the request was sent, so its lease runs from then.
fn confirm_read<T>(peer: &mut Peer<T>, ctx: &[u8], index: u64, lease: Option<Duration>) {
    let Ok(id) = <[u8; 8]>::try_from(ctx).map(u64::from_be_bytes) else {
        return;
    };
    let Some(read) = peer.reads.iter_mut().find(|r| r.id == id && id != 0) else {
        return;
    };
    read.index = Some(index);
    let raft = &peer.node.raft;
    if let Some(lease) = lease {
        if raft.state == StateRole::Leader && raft.lead_transferee.is_none() {
            let until = read.sent + lease;
            let term = raft.term;
            let renewed = match peer.lease {
                Some((t, u)) if t == term => u.max(until),
                _ => until,
            };
            peer.lease = Some((term, renewed));
        }
    }
}

/// Hands back the reads whose index the peer applied, in order; fails them all once the
/// peer is no longer leader (their ReadIndex rounds may never complete).
fn release_reads<T>(peer: &mut Peer<T>, out: &mut dyn Outbox<T>) {
    if peer.node.raft.state != StateRole::Leader {
        peer.lease = None;
        // Bounded by the pending reads.
        while let Some(r) = peer.reads.pop_front() {
            out.read_ready(r.token, Err(not_leader(peer)));
        }
        return;
    }
    while let Some(front) = peer.reads.front() {
        match front.index {
            Some(i) if i <= peer.applied => {}
            _ => break,
        }
        if let Some(r) = peer.reads.pop_front() {
            out.read_ready(r.token, Ok(()));
        }
    }
}

/// Tells raft how far the peer is applied, up to what raft knows is persisted (a snapshot
/// is applied before the append that records it).
fn advance_applied<T>(peer: &mut Peer<T>) {
    let log = &peer.node.raft.raft_log;
    let to = peer.applied.min(log.persisted);
    if to > log.applied {
        peer.node.advance_apply_to(to);
    }
}

/// The 8-byte context of a proposal: the region's epoch version when it was proposed.
fn epoch_context(desc: &RegionDescriptor) -> Vec<u8> {
    desc.epoch.version.to_be_bytes().to_vec()
}

/// Whether an entry was proposed at another epoch version than the region's now (a split
/// applied between its proposal and its apply): it is not applied, on any replica.
fn stale_epoch(peer_region: &RegionDescriptor, e: &Entry) -> bool {
    <[u8; 8]>::try_from(&e.context[..])
        .is_ok_and(|v| u64::from_be_bytes(v) != peer_region.epoch.version)
}

/// Pairs one peer's committed entries with their proposers' tokens (abandoning
/// proposals that were overwritten or turned into no-ops, and entries proposed before a
/// split applied); a split cuts the entries in two parts, and its new region goes to `born`.
///
/// A merge into this region whose source replica here has not applied its prepare yet
/// stops the entries there: the rest wait in `peer.held` for a later round.
fn collect_committed<T>(
    peer: &mut Peer<T>,
    entries: Vec<Entry>,
    tokens: &mut Vec<Option<T>>,
    out: &mut dyn Outbox<T>,
    born: &mut Vec<Born>,
    merges: &mut MergeRound,
) -> Vec<RegionEntries> {
    let region = peer.region.id;
    let mut parts = Vec::new();
    let mut queue = std::mem::take(&mut peer.held);
    queue.extend(entries);
    // The last index handed out (0: none).
    let mut last = 0;
    let mut data = Vec::new();
    let mut changed = false;
    let mut merge_state = None;
    // Bounded by the entries of this Ready and those held before.
    while let Some(e) = queue.pop_front() {
        if waits_for_source(peer, &e, |id| merges.sources.get(&id).copied()) {
            queue.push_front(e);
            peer.held = queue;
            break;
        }
        last = e.index;
        if peer.splitting.is_some_and(|i| e.index >= i) {
            // The split (or whatever replaced it at its index) is being applied.
            peer.splitting = None;
        }
        let mut token = None;
        // Proposals at lower indexes were overwritten; bounded by the pending queue.
        while let Some(front) = peer.pending.front() {
            if front.index > e.index {
                break;
            }
            let Some(p) = peer.pending.pop_front() else {
                break;
            };
            if p.index == e.index && p.term == e.term {
                token = Some(p.token);
                break;
            }
            out.abandon(
                p.token,
                Error::ProposalDropped {
                    region,
                    index: p.index,
                },
            );
        }
        match e.get_entry_type() {
            EntryType::EntryNormal if !e.data.is_empty() && stale_epoch(&peer.region, &e) => {
                if let Some(t) = token {
                    out.abandon(
                        t,
                        Error::EpochNotMatch {
                            request: crate::region::Epoch {
                                version: u64::from_be_bytes(
                                    <[u8; 8]>::try_from(&e.context[..]).unwrap_or_default(),
                                ),
                                conf_version: peer.region.epoch.conf_version,
                            },
                            current: Box::new(peer.region.clone()),
                        },
                    );
                }
            }
            EntryType::EntryNormal if !e.data.is_empty() => match SplitRequest::decode(&e.data) {
                None => match MergeEntry::decode(&e.data) {
                    None => {
                        data.push((e.index, e.data.to_vec()));
                        tokens.push(token);
                    }
                    Some(req) => {
                        let result = req.and_then(|m| apply_merge_entry(peer, m, e.index));
                        match result {
                            Ok(MergeApplied::State(state)) => {
                                changed = true;
                                merge_state = Some(state);
                                if let Some(t) = token {
                                    out.merge_done(t, Ok(peer.region.clone()));
                                }
                            }
                            Ok(MergeApplied::Merged { target, source }) => {
                                parts.push(RegionEntries {
                                    region: peer.region.clone(),
                                    entries: std::mem::take(&mut data),
                                    last: e.index,
                                    changed,
                                    split: None,
                                    merge: Some((target.clone(), source)),
                                    merge_state: merge_state.take(),
                                });
                                changed = false;
                                tracing::info!(region, source, index = e.index, "regions merged");
                                peer.region = target.clone();
                                merges.merged.push((target.clone(), source, e.index));
                                if let Some(t) = token {
                                    out.merge_done(t, Ok(target));
                                }
                            }
                            Err(err) => {
                                tracing::warn!(region, index = e.index, error = %err, "merge step refused");
                                if let Some(t) = token {
                                    out.merge_done(t, Err(err));
                                }
                            }
                        }
                    }
                },
                Some(req) => {
                    let result = req.and_then(|r| r.apply_to(&peer.region));
                    match result {
                        Ok((parent, child)) => {
                            parts.push(RegionEntries {
                                region: peer.region.clone(),
                                entries: std::mem::take(&mut data),
                                last: e.index,
                                changed,
                                split: Some(Box::new(SplitApplied {
                                    parent: parent.clone(),
                                    child: child.clone(),
                                    term: e.term,
                                })),
                                merge: None,
                                merge_state: merge_state.take(),
                            });
                            changed = false;
                            tracing::info!(
                                region,
                                child = child.id,
                                index = e.index,
                                "region split"
                            );
                            peer.region = parent.clone();
                            born.push(Born {
                                parent,
                                child: child.clone(),
                                index: e.index,
                                term: e.term,
                                campaign: peer.node.raft.state == StateRole::Leader,
                            });
                            if let Some(t) = token {
                                out.split_done(t, Ok(child));
                            }
                        }
                        Err(err) => {
                            tracing::warn!(region, index = e.index, error = %err, "split refused");
                            if let Some(t) = token {
                                out.split_done(t, Err(err));
                            }
                        }
                    }
                }
            },
            EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                let result = apply_conf_change(peer, &e);
                changed |= result.is_ok();
                if let Err(err) = &result {
                    tracing::warn!(region, index = e.index, error = %err, "conf change refused");
                }
                if let Some(t) = token {
                    out.conf_changed(t, result);
                }
            }
            _ => {
                // Leader no-ops.
                if let Some(t) = token {
                    out.abandon(
                        t,
                        Error::ProposalDropped {
                            region,
                            index: e.index,
                        },
                    );
                }
            }
        }
    }
    if last > 0 && parts.last().is_none_or(|p| p.last < last) {
        parts.push(RegionEntries {
            region: peer.region.clone(),
            entries: data,
            last,
            changed,
            split: None,
            merge: None,
            merge_state,
        });
    }
    parts
}

/// The merge sources of a core as a round starts, and the merges the round applied.
#[derive(Default)]
struct MergeRound {
    /// Peers in a merge's prepared state: (applied index, merge state).
    sources: BTreeMap<u64, (u64, MergeState)>,
    /// Merges applied: (the target as it is now, the source's id, the merge's index).
    merged: Vec<(RegionDescriptor, u64, u64)>,
}

/// Whether `e` is a merge into `peer`'s region that would apply but whose source replica
/// on this core has not applied its prepare yet.
fn waits_for_source<T>(
    peer: &Peer<T>,
    e: &Entry,
    source: impl Fn(u64) -> Option<(u64, MergeState)>,
) -> bool {
    if e.get_entry_type() != EntryType::EntryNormal
        || e.data.is_empty()
        || stale_epoch(&peer.region, e)
    {
        return false;
    }
    let Some(Ok(MergeEntry::Commit(c))) = MergeEntry::decode(&e.data) else {
        return false;
    };
    if c.apply_to(&peer.region, e.index).is_err() {
        return false;
    }
    let want = MergeState {
        target: peer.region.id,
        prepared_at: c.prepared_at,
    };
    !matches!(source(c.source.id), Some((applied, st)) if st == want && applied >= c.prepared_at)
}

/// The merge into `peer`'s region its held entries wait on, if any.
fn held_commit<T>(peer: &Peer<T>) -> Option<CommitMerge> {
    match MergeEntry::decode(&peer.held.front()?.data)? {
        Ok(MergeEntry::Commit(c)) => Some(c),
        _ => None,
    }
}

/// What a merge entry did to the peer it was applied to.
enum MergeApplied {
    /// A prepare or a rollback: the region's new merge state.
    State(Option<MergeState>),
    /// A commit: the region as it is now, and the source it took over.
    Merged {
        target: RegionDescriptor,
        source: u64,
    },
}

/// Applies merge entry `m` at `index` to `peer` (descriptor and merge state in memory).
fn apply_merge_entry<T>(peer: &mut Peer<T>, m: MergeEntry, index: u64) -> Result<MergeApplied> {
    match m {
        MergeEntry::Prepare(p) => {
            peer.region = p.apply_to(&peer.region)?;
            let state = MergeState {
                target: p.target,
                prepared_at: index,
            };
            peer.merging = Some(state);
            Ok(MergeApplied::State(Some(state)))
        }
        MergeEntry::Rollback(r) => {
            peer.region = r.apply_to(&peer.region, peer.merging)?;
            peer.merging = None;
            Ok(MergeApplied::State(None))
        }
        MergeEntry::Commit(c) => Ok(MergeApplied::Merged {
            target: c.apply_to(&peer.region, index)?,
            source: c.source.id,
        }),
    }
}

/// Applies a committed conf change to the peer's raft configuration and descriptor (the
/// descriptor is persisted with the round's applied index). Every replica applies the
/// same entries in the same order, so they all reach the same membership.
fn apply_conf_change<T>(peer: &mut Peer<T>, e: &Entry) -> Result<RegionDescriptor> {
    let region = peer.region.id;
    let (cc, named) = decode_conf_change(e)?;
    let cs = peer
        .node
        .apply_conf_change(&cc)
        .map_err(|source| Error::Raft { region, source })?;
    peer.region = changed_descriptor(&peer.region, &cs, &named);
    peer.node.mut_store().set_conf_state(cs);
    Ok(peer.region.clone())
}

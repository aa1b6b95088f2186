//! The raft log of one peer: a raft-rs [`Storage`] over entries kept in the
//! engine's WAL, with a bounded in-memory cache of recent entries.
//!
//! Records (see [`crate::codec`]) are appended by [`crate::RaftCore`]; on open
//! the engine hands them back through `Options::opaque_replay` into a
//! [`LogReplay`], from which each peer's storage is rebuilt. The storage also
//! remembers, per index range, which WAL segment holds the entries and where
//! the terms change, so the core can write a checkpoint and release old
//! segments (`Db::set_opaque_floor`) without reading the log back.

use crate::codec::{self, Checkpoint};
use crate::error::{Error, Result};
use raft::prelude::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};
use std::cell::Cell;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

/// What the WAL held for one region on open.
#[derive(Debug, Default, Clone)]
pub struct ReplayedRegion {
    /// Contiguous entries in index order (a suffix of the log).
    pub entries: Vec<Entry>,
    /// The newest hard state seen.
    pub hard_state: Option<HardState>,
    /// The newest checkpoint seen.
    pub checkpoint: Option<Checkpoint>,
    /// The last gap seen (last index before it, first after): entries of an older stint of
    /// the region on this core, then a newer log that starts after a floor (a move back to
    /// this core). `Recovered::load` accepts it only when a floor covers it.
    pub gap: Option<(u64, u64)>,
}

#[derive(Default)]
struct ReplayState {
    regions: BTreeMap<u64, ReplayedRegion>,
    error: Option<Error>,
}

/// Collects raft records replayed by the engine on open.
#[derive(Clone, Default)]
pub struct LogReplay {
    state: Arc<Mutex<ReplayState>>,
}

impl LogReplay {
    /// A collector with nothing in it.
    pub fn new() -> LogReplay {
        LogReplay::default()
    }

    /// The callback to put in `nokv::Options::opaque_replay`.
    pub fn hook(&self) -> nokv::options::OpaqueReplay {
        let state = self.state.clone();
        Arc::new(move |tag, payload| {
            let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
            if st.error.is_some() {
                return;
            }
            if let Err(e) = replay_record(&mut st.regions, tag, payload) {
                st.error = Some(e);
            }
        })
    }

    /// What was replayed, per region; fails on a malformed record (a gap in a log is
    /// recorded, and judged by `Recovered::load` against the floors).
    pub fn take(&self) -> Result<BTreeMap<u64, ReplayedRegion>> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = st.error.take() {
            return Err(e);
        }
        Ok(std::mem::take(&mut st.regions))
    }
}

fn replay_record(
    regions: &mut BTreeMap<u64, ReplayedRegion>,
    tag: u8,
    payload: &[u8],
) -> Result<()> {
    match tag {
        codec::TAG_ENTRY => {
            let (region, e) = codec::decode_entry(payload)?;
            let r = regions.entry(region).or_default();
            if let Some(first) = r.entries.first() {
                if e.index <= first.index {
                    r.entries.clear();
                } else if let Some(last) = r.entries.last() {
                    if e.index > last.index + 1 {
                        // Judged once the floors are known (`Recovered::load`).
                        r.gap = Some((last.index, e.index));
                        r.entries.clear();
                    } else {
                        // A new leader overwrote the suffix from this index on.
                        let keep = (e.index - first.index) as usize;
                        r.entries.truncate(keep);
                    }
                }
            }
            let below_checkpoint = r
                .checkpoint
                .as_ref()
                .is_some_and(|c| e.index <= c.truncated_index);
            if !below_checkpoint {
                r.entries.push(e);
            }
        }
        codec::TAG_HARD_STATE => {
            let (region, hs) = codec::decode_hard_state(payload)?;
            regions.entry(region).or_default().hard_state = Some(hs);
        }
        codec::TAG_CHECKPOINT => {
            let (region, c) = codec::decode_checkpoint(payload)?;
            let r = regions.entry(region).or_default();
            r.entries.retain(|e| e.index > c.truncated_index);
            r.hard_state = Some(c.hard_state.clone());
            r.checkpoint = Some(c);
        }
        other => {
            return Err(Error::Corrupt {
                what: "opaque WAL record",
                detail: format!("unknown tag {other}"),
            })
        }
    }
    Ok(())
}

/// One peer's raft log and state, as raft-rs sees it.
pub struct PeerStorage {
    hard_state: HardState,
    conf_state: ConfState,
    /// Entries at or below this index are gone from the cache (applied).
    truncated_index: u64,
    truncated_term: u64,
    /// Entries `truncated_index + 1 ..= last`.
    entries: VecDeque<Entry>,
    cached_bytes: usize,
    /// The last checkpoint written: entries at or below it are durable in SSTs.
    checkpoint_index: u64,
    /// (first index, term) where the term changes; the first item is at `checkpoint_index`.
    terms: VecDeque<(u64, u64)>,
    /// (first index, WAL segment) of the entries above the checkpoint; None: unknown (replayed).
    segments: VecDeque<(u64, Option<u64>)>,
    /// A snapshot exported for replicas that need one (see [`crate::snapshot`]).
    prepared: Option<Snapshot>,
    /// raft-rs asked for a snapshot that is not prepared (the core exports one).
    snapshot_wanted: Cell<bool>,
}

impl PeerStorage {
    /// A new, empty log for a group with these voters.
    pub fn new(conf_state: ConfState) -> PeerStorage {
        PeerStorage {
            hard_state: HardState::default(),
            conf_state,
            truncated_index: 0,
            truncated_term: 0,
            entries: VecDeque::new(),
            cached_bytes: 0,
            checkpoint_index: 0,
            terms: VecDeque::from([(0, 0)]),
            segments: VecDeque::new(),
            prepared: None,
            snapshot_wanted: Cell::new(false),
        }
    }

    /// Whether raft asked for a snapshot since the last call (clears the request).
    pub fn take_snapshot_request(&self) -> bool {
        self.snapshot_wanted.replace(false)
    }

    /// Offers an exported snapshot to replicas that need one.
    pub fn set_prepared(&mut self, snapshot: Snapshot) {
        self.prepared = Some(snapshot);
    }

    /// Restarts the log after a snapshot applied at (`index`, `term`) with configuration `cs`.
    pub fn apply_snapshot(&mut self, index: u64, term: u64, cs: ConfState) {
        self.entries.clear();
        self.cached_bytes = 0;
        self.truncated_index = index;
        self.truncated_term = term;
        self.checkpoint_index = index;
        self.terms = VecDeque::from([(index, term)]);
        self.segments.clear();
        self.conf_state = cs;
        self.hard_state.commit = self.hard_state.commit.max(index);
        self.hard_state.term = self.hard_state.term.max(term);
        self.prepared = None;
    }

    /// Rebuilds a log from what the WAL replayed; `applied` is the index whose data is
    /// durable in the engine (`Db::applied_index`).
    pub fn from_replay(
        conf_state: ConfState,
        replayed: ReplayedRegion,
        applied: u64,
    ) -> Result<PeerStorage> {
        let mut s = PeerStorage::new(conf_state);
        if let Some(c) = &replayed.checkpoint {
            s.truncated_index = c.truncated_index;
            s.truncated_term = c.truncated_term;
            s.checkpoint_index = c.truncated_index;
            s.terms = VecDeque::from([(c.truncated_index, c.truncated_term)]);
        }
        if let Some(hs) = replayed.hard_state {
            s.hard_state = hs;
        }
        if let Some(first) = replayed.entries.first() {
            if first.index > s.truncated_index + 1 {
                if first.index > applied + 1 {
                    return Err(Error::Corrupt {
                        what: "raft log",
                        detail: format!(
                            "entries start at {} but only {} is applied and checkpointed at {}",
                            first.index, applied, s.truncated_index
                        ),
                    });
                }
                // Entries before the first replayed one are applied and durable: a
                // checkpoint at the entry before it.
                s.truncated_index = first.index - 1;
                s.truncated_term = first.term;
                s.checkpoint_index = s.truncated_index;
                s.terms = VecDeque::from([(s.truncated_index, first.term)]);
            }
        }
        for e in replayed.entries {
            s.push_entry(e, None);
        }
        if applied > s.last_index() {
            // Relaxed durability and a power loss can lose log records whose data a flush
            // had made durable; the data wins. Start the log after it.
            tracing::warn!(
                applied,
                last = s.last_index(),
                "raft log ends before the durable applied index; restarting the log there"
            );
            let term = s.hard_state.term.max(s.last_term());
            s.entries.clear();
            s.cached_bytes = 0;
            s.truncated_index = applied;
            s.truncated_term = term;
            s.checkpoint_index = applied;
            s.terms = VecDeque::from([(applied, term)]);
            s.segments.clear();
        }
        s.hard_state.commit = s.hard_state.commit.max(applied);
        s.hard_state.term = s.hard_state.term.max(s.last_term());
        Ok(s)
    }

    fn push_entry(&mut self, e: Entry, segment: Option<u64>) {
        if self.terms.back().is_none_or(|t| t.1 != e.term) {
            self.terms.push_back((e.index, e.term));
        }
        if self.segments.back().is_none_or(|s| s.1 != segment) {
            self.segments.push_back((e.index, segment));
        }
        self.cached_bytes += e.data.len() + e.context.len() + 32;
        self.entries.push_back(e);
    }

    /// Records the configuration a conf change produced (reported as the initial state).
    pub fn set_conf_state(&mut self, cs: ConfState) {
        self.conf_state = cs;
    }

    /// Appends entries persisted in WAL `segment`, replacing any conflicting suffix.
    pub fn append(&mut self, ents: &[Entry], segment: u64) -> Result<()> {
        let Some(first) = ents.first() else {
            return Ok(());
        };
        if first.index <= self.truncated_index {
            return Err(Error::Corrupt {
                what: "raft append",
                detail: format!(
                    "entry {} is at or below the compacted index {}",
                    first.index, self.truncated_index
                ),
            });
        }
        if first.index > self.last_index() + 1 {
            return Err(Error::Corrupt {
                what: "raft append",
                detail: format!(
                    "entry {} leaves a gap after {}",
                    first.index,
                    self.last_index()
                ),
            });
        }
        // Drop the suffix the new entries replace (bounded by the cache).
        while self.last_index() >= first.index {
            if let Some(e) = self.entries.pop_back() {
                self.cached_bytes -= e.data.len() + e.context.len() + 32;
            }
        }
        while self.terms.len() > 1 && self.terms.back().is_some_and(|t| t.0 >= first.index) {
            self.terms.pop_back();
        }
        while self.segments.back().is_some_and(|s| s.0 >= first.index) {
            self.segments.pop_back();
        }
        for e in ents {
            self.push_entry(e.clone(), Some(segment));
        }
        Ok(())
    }

    /// Records a new hard state (already persisted).
    pub fn set_hard_state(&mut self, hs: HardState) {
        self.hard_state = hs;
    }

    /// Records a new commit index.
    pub fn set_commit(&mut self, commit: u64) {
        self.hard_state.commit = commit;
    }

    /// The current hard state.
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// Index of the last entry.
    pub fn last_index(&self) -> u64 {
        self.truncated_index + self.entries.len() as u64
    }

    fn last_term(&self) -> u64 {
        self.entries.back().map_or(self.truncated_term, |e| e.term)
    }

    /// Entries and bytes in the in-memory cache.
    pub fn cached(&self) -> (usize, usize) {
        (self.entries.len(), self.cached_bytes)
    }

    /// Drops cached entries up to `index` (which must be applied).
    pub fn compact_cache(&mut self, index: u64) {
        let index = index.min(self.last_index());
        if index <= self.truncated_index {
            return;
        }
        if let Some(term) = self.term_of(index) {
            self.truncated_term = term;
        }
        while self.truncated_index < index {
            if let Some(e) = self.entries.pop_front() {
                self.cached_bytes -= e.data.len() + e.context.len() + 32;
            }
            self.truncated_index += 1;
        }
    }

    /// The term of entry `index` from the term boundaries, for any index from the
    /// last checkpoint to the last entry (the entries themselves may be uncached).
    pub fn term_of(&self, index: u64) -> Option<u64> {
        if index < self.checkpoint_index || index > self.last_index() {
            return None;
        }
        self.terms
            .iter()
            .rev()
            .find(|(first, _)| *first <= index)
            .map(|(_, t)| *t)
    }

    /// The index of the last checkpoint.
    pub fn checkpoint_index(&self) -> u64 {
        self.checkpoint_index
    }

    /// The checkpoint to persist for truncating at `index` (`checkpoint_index..=last`).
    pub fn checkpoint_at(&self, index: u64) -> Option<Checkpoint> {
        Some(Checkpoint {
            hard_state: self.hard_state.clone(),
            truncated_index: index,
            truncated_term: self.term_of(index)?,
        })
    }

    /// Records that a checkpoint at `index` was persisted: older bookkeeping is dropped.
    pub fn checkpointed(&mut self, index: u64, term: u64) {
        if index <= self.checkpoint_index {
            return;
        }
        self.checkpoint_index = index;
        while self.terms.len() > 1 && self.terms.get(1).is_some_and(|t| t.0 <= index) {
            self.terms.pop_front();
        }
        if let Some(front) = self.terms.front_mut() {
            *front = (index, term);
        }
        while self.segments.len() > 1 && self.segments.get(1).is_some_and(|s| s.0 <= index + 1) {
            self.segments.pop_front();
        }
        if self.last_index() <= index {
            self.segments.clear();
        }
        if self.truncated_index < index {
            self.compact_cache(index);
        }
    }

    /// The WAL segment holding entry `index`: None if there is no such entry above the
    /// checkpoint, Some(None) if it is unknown (replayed on open).
    pub fn segment_of(&self, index: u64) -> Option<Option<u64>> {
        if index <= self.checkpoint_index || index > self.last_index() {
            return None;
        }
        self.segments
            .iter()
            .rev()
            .find(|(first, _)| *first <= index)
            .map(|(_, s)| *s)
            .or(Some(None))
    }
}

fn unavailable() -> raft::Error {
    raft::Error::Store(StorageError::Unavailable)
}

impl Storage for PeerStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.truncated_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last_index() + 1 || low > high {
            return Err(unavailable());
        }
        let lo = (low - self.truncated_index - 1) as usize;
        let hi = (high - self.truncated_index - 1) as usize;
        let mut out: Vec<Entry> = self.entries.range(lo..hi).cloned().collect();
        raft::util::limit_size(&mut out, max_size.into());
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.truncated_index {
            return Ok(self.truncated_term);
        }
        if idx < self.truncated_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last_index() {
            return Err(unavailable());
        }
        self.entries
            .get((idx - self.truncated_index - 1) as usize)
            .map(|e| e.term)
            .ok_or_else(unavailable)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.truncated_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(PeerStorage::last_index(self))
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        if let Some(s) = &self.prepared {
            let index = s.get_metadata().index;
            // Usable when it reaches what was asked and the log still continues after it.
            if index >= request_index && index >= self.truncated_index {
                return Ok(s.clone());
            }
        }
        // The core sees the request after this round and exports one.
        self.snapshot_wanted.set(true);
        Err(raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Default::default()
        }
    }

    #[test]
    fn append_overwrites_and_tracks_terms_and_segments() {
        let mut s = PeerStorage::new(ConfState::from((vec![1], vec![])));
        s.append(&[entry(1, 1), entry(2, 1), entry(3, 1)], 5)
            .expect("append");
        s.append(&[entry(3, 2), entry(4, 2)], 6).expect("overwrite");
        assert_eq!(s.last_index(), 4);
        assert_eq!(s.term(3).expect("term"), 2);
        assert_eq!(s.term_of(2), Some(1));
        assert_eq!(s.segment_of(2), Some(Some(5)));
        assert_eq!(s.segment_of(3), Some(Some(6)));
        assert!(s.append(&[entry(9, 2)], 6).is_err(), "gap refused");
        s.compact_cache(2);
        assert!(matches!(
            s.entries(1, 3, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        assert_eq!(s.term(2).expect("term at truncation"), 1);
        assert_eq!(s.term_of(1), Some(1), "terms survive cache compaction");
        s.checkpointed(3, 2);
        assert_eq!(s.segment_of(3), None);
        assert_eq!(s.segment_of(4), Some(Some(6)));
    }

    #[test]
    fn replay_keeps_the_newest_suffix_and_honours_checkpoints() {
        let replay = LogReplay::new();
        let hook = replay.hook();
        for (i, t) in [(1, 1), (2, 1), (3, 1), (2, 2), (3, 2)] {
            hook(codec::TAG_ENTRY, &codec::encode_entry(9, &entry(i, t)));
        }
        let c = Checkpoint {
            hard_state: HardState {
                term: 2,
                vote: 1,
                commit: 3,
                ..Default::default()
            },
            truncated_index: 2,
            truncated_term: 2,
        };
        hook(codec::TAG_CHECKPOINT, &codec::encode_checkpoint(9, &c));
        hook(codec::TAG_ENTRY, &codec::encode_entry(9, &entry(4, 2)));
        let got = replay.take().expect("take");
        let r = &got[&9];
        let idx: Vec<(u64, u64)> = r.entries.iter().map(|e| (e.index, e.term)).collect();
        assert_eq!(idx, vec![(3, 2), (4, 2)]);
        let s = PeerStorage::from_replay(ConfState::from((vec![1], vec![])), r.clone(), 2)
            .expect("storage");
        assert_eq!((s.truncated_index, s.last_index()), (2, 4));
        assert_eq!(s.term(2).expect("term"), 2);
        assert_eq!(s.segment_of(3), Some(None), "replayed segments are unknown");

        let bad = LogReplay::new();
        let hook = bad.hook();
        hook(codec::TAG_ENTRY, &codec::encode_entry(1, &entry(1, 1)));
        hook(codec::TAG_ENTRY, &codec::encode_entry(1, &entry(3, 1)));
        let got = bad.take().expect("a gap is recorded, not refused");
        assert_eq!(got[&1].gap, Some((1, 3)));
        // Nothing covers it: the core refuses to start on that log.
        let dir = tempfile::tempdir().expect("tempdir");
        let db = nokv::Db::open(dir.path(), nokv::Options::default()).expect("open");
        let desc = crate::region::RegionDescriptor {
            id: 1,
            start_key: Vec::new(),
            end_key: Vec::new(),
            epoch: Default::default(),
            peers: vec![crate::region::PeerMeta::voter(1, 1)],
        };
        assert!(matches!(
            crate::core::Recovered::load(&db, vec![desc.clone()], got.clone()),
            Err(Error::Corrupt { .. })
        ));
        // A floor right below the entries after the gap (a move back to this core) covers it.
        let mut covered = got;
        if let Some(r) = covered.get_mut(&1) {
            r.checkpoint = Some(Checkpoint {
                hard_state: HardState::default(),
                truncated_index: 2,
                truncated_term: 1,
            });
        }
        assert!(crate::core::Recovered::load(&db, vec![desc], covered).is_ok());
    }
}

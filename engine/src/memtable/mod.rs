//! The in-memory write buffer: an arena-backed concurrent skiplist of internal keys.
//!
//! One writer at a time inserts (callers are serialized by an internal mutex);
//! readers — point lookups and iterators — never take a lock and never block
//! on the writer. Entries are never removed; the whole memtable (with its
//! arena) is freed when the last [`Arc`] to it drops.

mod arena;
mod skiplist;

use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::Result;
use crate::iter::InternalIterator;
use crate::key::{
    encode_trailer, logical_key as logical_key_of, parse_trailer, parse_version, Kind, KIND_SEEK,
    MAX_SEQ,
};
use crate::range_del::{FragmentedTombstones, RangeDelCollector, RangeTombstone};
use skiplist::{NewEntry, Node, NodeRef, SkipList, Target};

/// The entry a point lookup found: the newest one visible to the reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Version of the entry.
    pub version: u64,
    /// Sequence number of the entry.
    pub seq: u64,
    /// Raw kind byte (see [`Kind`]).
    pub kind: u8,
    /// Stored value (`[expiry u64 LE][value]` for `PutWithExpiry`, empty for tombstones).
    pub value: Vec<u8>,
}

impl Found {
    /// Builds a `Found` from an internal key and its stored value.
    pub fn from_entry(ikey: &[u8], value: Vec<u8>) -> Found {
        let (seq, kind) = parse_trailer(ikey);
        Found {
            version: parse_version(ikey),
            seq,
            kind,
            value,
        }
    }

    /// True when this entry sorts before `other` (higher version, then newer sequence).
    pub fn newer_than(&self, other: &Found) -> bool {
        (self.version, self.seq) > (other.version, other.seq)
    }
}

/// A sorted, insert-only in-memory table of internal keys (`Send + Sync`).
///
/// Range tombstones live beside the skiplist in a bounded side list
/// ([`RangeDelCollector`]); they never appear as entries.
pub struct Memtable {
    list: SkipList,
    /// Highest version inserted (lets reads skip a memtable that cannot hold a newer version).
    max_version: AtomicU64,
    /// Range tombstones written into this memtable.
    range_dels: RangeDelCollector,
}

impl Memtable {
    /// Creates an empty memtable expecting about `capacity_hint` bytes (sizes its arena chunks).
    pub fn new(capacity_hint: usize) -> Memtable {
        Memtable {
            list: SkipList::new(capacity_hint),
            max_version: AtomicU64::new(0),
            range_dels: RangeDelCollector::default(),
        }
    }

    /// Like [`Memtable::new`], holding at most `max_range_tombstones` range tombstones.
    pub fn with_range_tombstone_limit(
        capacity_hint: usize,
        max_range_tombstones: usize,
    ) -> Memtable {
        Memtable {
            range_dels: RangeDelCollector::new(max_range_tombstones),
            ..Memtable::new(capacity_hint)
        }
    }

    /// Adds a batch's range tombstones, all or none; a full side list or an invalid range is an error.
    ///
    /// The engine checks [`Memtable::range_tombstone_room`] before it logs a batch.
    pub fn add_range_tombstones(&self, tombstones: Vec<RangeTombstone>) -> Result<()> {
        self.range_dels.add_all(tombstones)
    }

    /// The range tombstones as an index; `None` (one atomic load) when there are none.
    #[inline]
    pub fn range_tombstones(&self) -> Option<Arc<FragmentedTombstones>> {
        self.range_dels.snapshot()
    }

    /// How many more range tombstones fit.
    pub fn range_tombstone_room(&self) -> usize {
        self.range_dels.remaining()
    }

    /// Number of range tombstones added.
    pub fn num_range_tombstones(&self) -> usize {
        self.range_dels.len()
    }

    /// Inserts one entry; concurrent callers are serialized, readers are never blocked.
    ///
    /// Inserting an internal key (logical key, `version`, `seq`, `kind`) that is
    /// already present shadows the older copy; the engine never does this.
    pub fn add(&self, version: u64, seq: u64, kind: Kind, logical_key: &[u8], value: &[u8]) {
        self.max_version.fetch_max(version, Ordering::Relaxed);
        self.list
            .insert(logical_key, encode_trailer(version, seq, kind as u8), value);
    }

    /// Inserts several entries `(version, seq, kind, logical key, value)` as [`Memtable::add`]
    /// would one by one, faster for a batch of scattered keys (see `SkipList::insert_many`).
    pub fn add_many<'a>(
        &self,
        entries: impl IntoIterator<Item = (u64, u64, Kind, &'a [u8], &'a [u8])>,
    ) {
        let mut max_version = 0;
        let mut batch: Vec<NewEntry<'a>> = entries
            .into_iter()
            .map(|(version, seq, kind, logical, value)| {
                max_version = max_version.max(version);
                NewEntry {
                    logical,
                    trailer: encode_trailer(version, seq, kind as u8),
                    value,
                }
            })
            .collect();
        self.max_version.fetch_max(max_version, Ordering::Relaxed);
        self.list.insert_many(&mut batch);
    }

    /// Highest version inserted so far (0 when empty).
    pub fn max_version(&self) -> u64 {
        self.max_version.load(Ordering::Relaxed)
    }

    /// Newest entry for `logical_key` visible at version `ts` and sequence `seq`.
    pub fn get(&self, logical_key: &[u8], ts: u64, seq: u64) -> Option<Found> {
        self.get_from(logical_key, ts, seq, 0)
    }

    /// Like [`Memtable::get`], skipping entries with a sequence number below `min_seq`
    /// (those a range tombstone of sequence `min_seq - 1` hides).
    pub fn get_from(&self, logical_key: &[u8], ts: u64, seq: u64, min_seq: u64) -> Option<Found> {
        let seq = seq.min(MAX_SEQ);
        let trailer = encode_trailer(ts, seq, KIND_SEEK);
        let target = Target {
            logical: logical_key,
            trailer: u128::from_be_bytes(trailer),
        };
        // Start at the key's first entry (hash index, no descent) and walk its versions:
        // skip those above the read version, then those written after the reader's sequence.
        let mut node = self.list.find_first_of(logical_key)?;
        loop {
            let key = node.key();
            if logical_key_of(key) != logical_key {
                return None;
            }
            if node.cmp(&target).is_ge() {
                let entry_seq = parse_trailer(key).0;
                if entry_seq <= seq && entry_seq >= min_seq {
                    return Some(Found::from_entry(key, node.value().to_vec()));
                }
            }
            node = node.next(0)?;
        }
    }

    /// Arena bytes used by entries plus the range tombstones' bytes (drives rotation by size).
    pub fn approximate_bytes(&self) -> usize {
        self.list.bytes() + self.range_dels.approximate_bytes()
    }

    /// Number of entries (versions and tombstones each count).
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// True when nothing was inserted: no entry and no range tombstone.
    pub fn is_empty(&self) -> bool {
        self.len() == 0 && self.range_dels.is_empty()
    }

    /// A cursor over all entries in internal key order; it keeps the memtable alive.
    pub fn iter(self: &Arc<Self>) -> MemtableIterator {
        MemtableIterator {
            mem: Arc::clone(self),
            node: None,
        }
    }
}

impl fmt::Debug for Memtable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Memtable")
            .field("len", &self.len())
            .field("approximate_bytes", &self.approximate_bytes())
            .finish()
    }
}

/// A bidirectional cursor over a memtable; entries inserted while it is open may or may not be seen.
pub struct MemtableIterator {
    /// Keeps the arena (and so `node`) alive.
    mem: Arc<Memtable>,
    /// Current node; None when not valid.
    node: Option<NonNull<Node>>,
}

// SAFETY: `node` points into the arena of `mem`, which this iterator keeps alive
// through the Arc; the node is immutable except for atomic links, so the
// cursor may move to and be used from another thread.
unsafe impl Send for MemtableIterator {}
// SAFETY: `&MemtableIterator` only allows reading immutable node data.
unsafe impl Sync for MemtableIterator {}

impl MemtableIterator {
    /// The current node, if valid.
    #[inline]
    fn current(&self) -> Option<NodeRef<'_>> {
        // SAFETY: `node` was obtained from `self.mem.list` and the list lives as long
        // as `self.mem`, which outlives the returned borrow of `self`.
        self.node.map(|p| unsafe { NodeRef::from_raw(p) })
    }

    /// The current node; panics when the cursor is not valid (a caller bug).
    #[inline]
    fn current_valid(&self) -> NodeRef<'_> {
        match self.current() {
            Some(n) => n,
            None => panic!("MemtableIterator used while not valid"),
        }
    }

    /// The memtable this cursor reads.
    pub fn memtable(&self) -> &Arc<Memtable> {
        &self.mem
    }
}

impl fmt::Debug for MemtableIterator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemtableIterator")
            .field("valid", &self.node.is_some())
            .finish()
    }
}

impl InternalIterator for MemtableIterator {
    fn valid(&self) -> bool {
        self.node.is_some()
    }

    fn seek_to_first(&mut self) {
        self.node = self.mem.list.head().next(0).map(NodeRef::as_raw);
    }

    fn seek_to_last(&mut self) {
        self.node = self.mem.list.find_last().map(NodeRef::as_raw);
    }

    fn seek(&mut self, target: &[u8]) {
        let t = Target::from_internal(target);
        self.node = self.mem.list.find_ge(&t).map(NodeRef::as_raw);
    }

    fn seek_for_prev(&mut self, target: &[u8]) {
        let t = Target::from_internal(target);
        self.node = self.mem.list.find_before(&t, true).map(NodeRef::as_raw);
    }

    fn next(&mut self) {
        self.node = self.current_valid().next(0).map(NodeRef::as_raw);
    }

    fn prev(&mut self) {
        let key = self.current_valid().key();
        let t = Target::from_internal(key);
        self.node = self.mem.list.find_before(&t, false).map(NodeRef::as_raw);
    }

    fn key(&self) -> &[u8] {
        self.current_valid().key()
    }

    fn value(&self) -> &[u8] {
        self.current_valid().value()
    }

    fn status(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests;

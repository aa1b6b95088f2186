//! The gateway's storage boundary on a core's engine, clipped to one region:
//! reads see only the region's keys (from memory only, for reads tried on the
//! executor thread); applies write unlogged at the entry's index.

use nokv::{Db, KeySpace, ReadOptions, ReadTier, Snapshot, WriteBatch};
use nokv_gateway::lock::LOCKS;
use nokv_gateway::store::{scan_db, ReadView, StateView};
use nokv_raft::RegionDescriptor;
use std::cell::RefCell;

/// One region's slice of a core's engine.
pub struct RegionView<'a> {
    db: &'a Db,
    start: &'a [u8],
    end: &'a [u8],
    /// (region, index) recorded with every applied batch; None for reads.
    applied: Option<(u64, u64)>,
    /// Which storage tiers reads may touch.
    tier: ReadTier,
    /// Reads see the engine as of this snapshot (None: as of each read).
    snapshot: Option<Snapshot>,
    /// The first engine error a commit of this view hit (the entry is not applied).
    write_error: Option<String>,
}

impl<'a> RegionView<'a> {
    /// A read-only view of `region`.
    pub fn read(db: &'a Db, region: &'a RegionDescriptor) -> RegionView<'a> {
        RegionView {
            db,
            start: &region.start_key,
            end: &region.end_key,
            applied: None,
            tier: ReadTier::All,
            snapshot: None,
            write_error: None,
        }
    }

    /// A read-only view of `region` as of `snapshot` (taken where the region was known to
    /// hold its data: a read finished elsewhere then cannot see a later deletion of it).
    pub fn read_at(db: &'a Db, region: &'a RegionDescriptor, snapshot: Snapshot) -> RegionView<'a> {
        RegionView {
            snapshot: Some(snapshot),
            ..RegionView::read(db, region)
        }
    }

    /// A read-only view of `region` that never does IO: a read that would need it
    /// fails with `nokv::Error::WouldBlock` (see `exec::try_read`).
    pub fn read_cached(db: &'a Db, region: &'a RegionDescriptor) -> RegionView<'a> {
        RegionView {
            tier: ReadTier::CacheOnly,
            ..RegionView::read(db, region)
        }
    }

    fn options(&self) -> ReadOptions {
        ReadOptions {
            tier: self.tier,
            snapshot: self.snapshot.clone(),
            ..ReadOptions::default()
        }
    }

    /// A view that applies raft entry `index` of `region`.
    pub fn apply(db: &'a Db, region: &'a RegionDescriptor, index: u64) -> RegionView<'a> {
        RegionView {
            db,
            start: &region.start_key,
            end: &region.end_key,
            applied: Some((region.id, index)),
            tier: ReadTier::All,
            snapshot: None,
            write_error: None,
        }
    }

    /// The engine error a commit through this view failed with, if any: the entry was
    /// not (wholly) applied, whatever reply the command produced.
    pub fn write_error(&self) -> Option<&str> {
        self.write_error.as_deref()
    }
}

impl ReadView for RegionView<'_> {
    fn get(&self, space: KeySpace, key: &[u8]) -> nokv_gateway::Result<Option<Vec<u8>>> {
        Ok(self.db.get_in(space, key, &self.options())?)
    }

    fn version(&self, space: KeySpace, key: &[u8]) -> nokv_gateway::Result<Option<u64>> {
        Ok(self
            .db
            .get_entry(space, key, &self.options())?
            .map(|e| e.version))
    }

    fn may_hold_locks(&self) -> bool {
        self.db.may_hold(LOCKS)
    }

    fn scan(
        &self,
        space: KeySpace,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> nokv_gateway::Result<()> {
        let lo = start.max(self.start);
        let hi = match (end, self.end.is_empty()) {
            (None, true) => None,
            (None, false) => Some(self.end),
            (Some(e), true) => Some(e),
            (Some(e), false) => Some(e.min(self.end)),
        };
        if hi.is_some_and(|h| h <= lo) {
            return Ok(());
        }
        scan_db(self.db, self.options(), space, lo, hi, visit)
    }
}

impl StateView for RegionView<'_> {
    fn commit(&mut self, batch: WriteBatch) -> nokv_gateway::Result<()> {
        // The raft entry in the WAL is this data's log record: do not log it again.
        self.db.apply_unlogged(&batch, self.applied).map_err(|e| {
            self.write_error.get_or_insert_with(|| e.to_string());
            e.into()
        })
    }
}

/// Largest write of one entry that joins the held-back batch; larger ones are written
/// on their own (after what is held back).
const GROUP_ENTRY_MAX_BYTES: usize = 64 << 10;
/// Held-back bytes that make the next write go out first.
const GROUP_MAX_BYTES: usize = 1 << 20;

/// The writes of consecutive raft entries of one region, held back so that a round's
/// entries reach the memtable as one engine write (one group commit, not one per
/// entry). A read flushes them first, so an entry always reads what the entries
/// before it wrote.
pub struct HeldWrites {
    batch: WriteBatch,
    /// Index of the newest entry in `batch`.
    last_index: u64,
    /// `batch` puts a lock record of a multi-region write.
    locks: bool,
}

impl Default for HeldWrites {
    fn default() -> Self {
        HeldWrites {
            batch: WriteBatch::new(),
            last_index: 0,
            locks: false,
        }
    }
}

impl HeldWrites {
    /// Index of the newest entry held back (or last written).
    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    /// Writes what is held back for `region` (recording its newest entry's index); on
    /// an error none of those entries is applied.
    pub fn write(&mut self, db: &Db, region: u64) -> nokv::Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let r = db.apply_unlogged(&self.batch, Some((region, self.last_index)));
        self.batch.clear();
        self.locks = false;
        r
    }
}

/// A [`RegionView::apply`] whose small writes join [`HeldWrites`] instead of going to
/// the engine one entry at a time.
pub struct GroupedApply<'a> {
    view: RegionView<'a>,
    held: &'a RefCell<HeldWrites>,
    /// The first engine error writing what was held back (the entries are not applied).
    held_error: RefCell<Option<String>>,
}

impl<'a> GroupedApply<'a> {
    /// A view that applies raft entry `index` of `region`.
    pub fn new(
        db: &'a Db,
        region: &'a RegionDescriptor,
        index: u64,
        held: &'a RefCell<HeldWrites>,
    ) -> GroupedApply<'a> {
        GroupedApply {
            view: RegionView::apply(db, region, index),
            held,
            held_error: RefCell::new(None),
        }
    }

    fn region_and_index(&self) -> (u64, u64) {
        self.view.applied.unwrap_or((0, 0))
    }

    /// Writes what is held back (so that a read sees it, or before a write of its own).
    fn settle(&self) -> nokv_gateway::Result<()> {
        let (region, _) = self.region_and_index();
        self.held
            .borrow_mut()
            .write(self.view.db, region)
            .map_err(|e| {
                self.held_error
                    .borrow_mut()
                    .get_or_insert_with(|| e.to_string());
                e.into()
            })
    }

    /// The engine error a write of this entry (or of those held back before it) failed
    /// with, if any: the entries were not applied, whatever reply the command produced.
    pub fn write_error(&self) -> Option<String> {
        self.held_error
            .borrow()
            .clone()
            .or_else(|| self.view.write_error().map(str::to_string))
    }
}

impl ReadView for GroupedApply<'_> {
    fn get(&self, space: KeySpace, key: &[u8]) -> nokv_gateway::Result<Option<Vec<u8>>> {
        self.settle()?;
        self.view.get(space, key)
    }

    fn version(&self, space: KeySpace, key: &[u8]) -> nokv_gateway::Result<Option<u64>> {
        self.settle()?;
        self.view.version(space, key)
    }

    fn may_hold_locks(&self) -> bool {
        // Held-back writes are not in the engine yet: they count too.
        self.view.may_hold_locks() || self.held.borrow().locks
    }

    fn scan(
        &self,
        space: KeySpace,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> nokv_gateway::Result<()> {
        self.settle()?;
        self.view.scan(space, start, end, visit)
    }
}

impl StateView for GroupedApply<'_> {
    fn commit(&mut self, batch: WriteBatch) -> nokv_gateway::Result<()> {
        let (_, index) = self.region_and_index();
        let mut held = self.held.borrow_mut();
        let alone = batch.encoded_len() > GROUP_ENTRY_MAX_BYTES
            || batch.range_delete_count() > 0
            || held.batch.encoded_len() + batch.encoded_len() > GROUP_MAX_BYTES;
        if alone {
            // Written on its own, after what is held back (log order).
            drop(held);
            self.settle()?;
            return self.view.commit(batch);
        }
        held.locks |= puts_locks(&batch);
        held.batch.append(&batch);
        held.last_index = index;
        Ok(())
    }
}

/// Whether `batch` puts a lock record of a multi-region write (`nokv_gateway::lock`).
fn puts_locks(batch: &WriteBatch) -> bool {
    let prefix = LOCKS.prefix();
    batch
        .iter_entries()
        .any(|e| e.kind != nokv::key::Kind::Delete && e.logical_key.starts_with(&prefix))
}

//! The database side of the value log: the live segment set and the edits that change it,
//! pointer reads, and value-log garbage collection (picking, liveness, the commit).
//!
//! # GC: re-pointing by a relocation table
//!
//! A GC of segment `S` copies the records that are still needed into a new segment `S'`
//! ([`GcJob`], in rounds of bounded IO) and then commits **one manifest edit** that adds
//! `S'`, adds a small L0 table `R` holding, for every moved record, the *same internal key*
//! (logical key, version, sequence, kind) with the new pointer, and removes `S`. Merging
//! yields the copy in the newer table first (L0 newest first, then shallower levels), point
//! reads keep the first copy they find, and compaction drops the second copy of an internal
//! key, so `R` shadows the old entries exactly, for every reader and snapshot, without a new
//! sequence number.
//!
//! A record is moved only if the LSM still holds exactly its internal key with exactly its
//! pointer ([`Liveness`]); records hidden from every reader (a newer version at or below
//! the safe point and the oldest snapshot) are garbage. Placing `R` in L0 puts an old entry
//! above newer ones, which is safe unless something newer than it can later vanish: a
//! tombstone or an expiring value dropped at the bottom while `R` stays above would let the
//! moved entry show through. So an entry is moved only when every entry of its key sorting
//! before it is a plain put; otherwise the segment is postponed. Writes after a liveness
//! check land above `R` (memtable, newer L0 tables, and an L0 compaction merges all of L0);
//! the commit holds back new L0 compactions, waits for a running one, and re-checks every
//! moved key that a compaction installed since the checks may have touched.
//!
//! Crash safety: before the edit is durable, `S'` and `R` are orphans deleted on open and
//! `S` is intact; after it, `S` is an orphan. `S` is deleted once no super version (and so
//! no read or iterator) that could follow its pointers is alive.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{range_del_floor, Inner, State, STEP_ENTRIES};
use crate::error::{Error, IoContext, Result};
use crate::filename;
use crate::fs::{new_queue, FileSystem, OpenMode};
use crate::iter::InternalIterator;
use crate::key::{
    compare_internal, first_key, is_pointer_kind, logical_key, parse_trailer, parse_version,
    pointer_bytes, Kind, EXPIRY_LEN, MAX_SEQ, MAX_VERSION, TRAILER_LEN,
};
use crate::manifest::ManifestState;
use crate::memtable::Found;
use crate::merge::MergingIterator;
use crate::sst::{Table, TableBuilder, TableBuilderOptions};
use crate::stats::{Counters, Stats};
use crate::version::{FileDesc, FileMeta, VersionEdit};
use crate::vlog::{
    GcJob, LiveSegment, ReaderCache, Recycler, SegmentMeta, SegmentReader, SegmentSet,
    SegmentWriter, SegmentWriterOptions, ValueFetcher, ValuePointer,
};

/// Most key ranges a GC watches before it re-checks every moved key instead.
const MAX_WATCHED_RANGES: usize = 64;
/// Most attempts at committing one GC before it is postponed.
const MAX_COMMIT_ATTEMPTS: usize = 16;
/// Longest a GC commit waits for a running L0 compaction.
const L0_WAIT: Duration = Duration::from_secs(30);

/// Key ranges compactions installed while a GC ran (their entries may have moved or gone).
#[derive(Debug, Default)]
pub(super) struct Watch {
    ranges: Vec<(Vec<u8>, Vec<u8>)>,
    /// Too many ranges: every key counts as touched.
    overflow: bool,
}

impl Watch {
    fn is_empty(&self) -> bool {
        self.ranges.is_empty() && !self.overflow
    }

    fn touches(&self, logical: &[u8]) -> bool {
        self.overflow
            || self
                .ranges
                .iter()
                .any(|(lo, hi)| lo.as_slice() <= logical && logical <= hi.as_slice())
    }
}

/// The value-log part of the database state (behind the state lock).
pub(super) struct VlogState {
    /// The live segments; super versions share it.
    pub segments: Arc<SegmentSet>,
    /// Set while a GC runs: ranges of the tables compactions removed since it started.
    pub watch: Option<Watch>,
    /// A GC commit is pending: no new L0 compaction may start.
    pub hold_l0: bool,
    dir: std::path::PathBuf,
    fs: Arc<dyn FileSystem>,
    readers: Arc<ReaderCache>,
    /// Where collected segments' files go for the write path to reuse (`None`: deleted).
    pub recycler: Option<Arc<Recycler>>,
}

impl VlogState {
    /// The live segments `state` lists.
    pub fn new(
        state: &ManifestState,
        dir: &Path,
        fs: &Arc<dyn FileSystem>,
        readers: &Arc<ReaderCache>,
        recycler: Option<Arc<Recycler>>,
    ) -> VlogState {
        let segments = state
            .segments
            .values()
            .map(|m| {
                let seg = LiveSegment::new(*m, dir, fs.clone(), readers.clone())
                    .with_recycler(recycler.clone());
                (m.id, Arc::new(seg))
            })
            .collect();
        VlogState {
            segments: Arc::new(segments),
            watch: None,
            hold_l0: false,
            dir: dir.to_path_buf(),
            fs: fs.clone(),
            readers: readers.clone(),
            recycler,
        }
    }
}

/// Opens every live segment the manifest lists and checks it against its record.
pub(super) fn check_segments(
    fs: &Arc<dyn FileSystem>,
    dir: &Path,
    state: &ManifestState,
) -> Result<()> {
    for m in state.segments.values() {
        let r = SegmentReader::open(&**fs, dir, m.id)?;
        if r.meta() != *m {
            return Err(Error::corruption(
                r.path(),
                0,
                format!("segment holds {:?} but the manifest says {:?}", r.meta(), m),
            ));
        }
    }
    Ok(())
}

/// What GC decides about one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Liveness {
    /// No reader can reach the record: it is not copied.
    Dead,
    /// The record is needed and may be moved; the expiry header of its entry, if any.
    Live(Option<[u8; EXPIRY_LEN]>),
    /// The record is needed but cannot be moved safely yet: postpone the segment.
    Pinned,
}

/// One moved record.
#[derive(Debug, Clone)]
struct Moved {
    /// The internal key stored with the record (the entry to re-point).
    key: Vec<u8>,
    old: ValuePointer,
    new: ValuePointer,
    expiry: Option<[u8; EXPIRY_LEN]>,
}

/// How one GC attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum GcResult {
    /// The segment was collected.
    Collected,
    /// The segment holds values that cannot be moved yet; try again once reads move on.
    Postponed,
    /// The segment is no longer live (collected meanwhile).
    Gone,
}

/// When a postponed segment is worth another attempt: once the safe point or the oldest
/// snapshot moved (what hides a pinned value becomes visible to every reader), or after
/// [`RETRY_AFTER`] (a value can also look pinned behind a delete that was being written).
#[derive(Debug, Clone, Copy)]
struct RetryKey {
    safe_point: u64,
    oldest_snapshot: Option<u64>,
    at: Instant,
}

impl RetryKey {
    fn same_view(&self, other: &RetryKey) -> bool {
        (self.safe_point, self.oldest_snapshot) == (other.safe_point, other.oldest_snapshot)
    }
}

/// Longest a postponed segment waits for another attempt when nothing else changed.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// Stops watching and releases L0 when a GC attempt ends, however it ends.
struct GcGuard<'a> {
    inner: &'a Inner,
}

impl Drop for GcGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.inner.state.lock();
        st.vlog.watch = None;
        st.vlog.hold_l0 = false;
        drop(st);
        self.inner.state_cv.notify_all();
    }
}

impl Inner {
    /// A fetcher over the current super version's segments.
    pub(super) fn value_fetcher(&self) -> ValueFetcher {
        let segments = self.sv.read().vlog.clone();
        ValueFetcher::new(segments, self.readers.clone())
    }

    /// Reads the value an encoded pointer names, through `pinned` (taken before the lookup
    /// that found the pointer) or, for a segment newer than it, the current set.
    pub(super) fn fetch_value(&self, pinned: &ValueFetcher, ptr: &[u8]) -> Result<Vec<u8>> {
        let p = pinned.decode(ptr)?;
        if pinned.contains(p.segment) {
            return pinned.fetch_pointer(p);
        }
        self.value_fetcher().fetch_pointer(p)
    }

    /// Counts values the write path, a flush or a compaction moved to the value log.
    pub(super) fn note_separated(&self, (values, bytes): (u64, u64)) {
        let c = &self.counters;
        Counters::add(
            &c.vlog_values_separated,
            "nokv_vlog_values_separated_total",
            values,
        );
        Counters::add(
            &c.vlog_bytes_separated,
            "nokv_vlog_bytes_separated_total",
            bytes,
        );
    }

    /// Keeps an edit's discards to segments that are live (or added by it), merged by segment.
    pub(super) fn prepare_vlog_edit(&self, st: &State, edit: &mut VersionEdit) {
        if edit.discards.is_empty() {
            return;
        }
        let live = |id: &u64| {
            st.manifest_state.segments.contains_key(id) && !edit.segments_deleted.contains(id)
                || edit.segments_added.iter().any(|m| m.id == *id)
        };
        let mut merged: BTreeMap<u64, u64> = BTreeMap::new();
        for (id, bytes) in &edit.discards {
            if live(id) && *bytes > 0 {
                *merged.entry(*id).or_insert(0) += bytes;
            }
        }
        edit.discards = merged.into_iter().collect();
    }

    /// Follows a durable edit: the segment set, and the ranges a running GC must re-check.
    /// Runs before the version is replaced (the deleted tables are still in `st.version`).
    pub(super) fn apply_vlog_edit(&self, st: &mut State, edit: &VersionEdit) {
        // Only an L0 compaction can carry an entry written after a GC's liveness check below
        // where the GC puts its relocation table; later compactions start from there.
        let l0_compaction = edit.deleted.iter().any(|(level, _)| *level == 0);
        if let Some(w) = st.vlog.watch.as_mut().filter(|_| l0_compaction) {
            for (level, number) in &edit.deleted {
                let Some(f) = st.version.levels[*level]
                    .iter()
                    .find(|f| f.desc.number == *number)
                else {
                    continue;
                };
                if w.ranges.len() >= MAX_WATCHED_RANGES {
                    w.overflow = true;
                } else {
                    w.ranges.push((
                        f.desc.smallest_logical().to_vec(),
                        f.desc.largest_logical().to_vec(),
                    ));
                }
            }
        }
        if edit.segments_added.is_empty() && edit.segments_deleted.is_empty() {
            return;
        }
        let mut set: SegmentSet = (*st.vlog.segments).clone();
        for id in &edit.segments_deleted {
            if let Some(seg) = set.remove(id) {
                // Deleted once the last super version or iterator that can see it is gone.
                seg.mark_obsolete();
            }
        }
        for m in &edit.segments_added {
            let seg = LiveSegment::new(
                *m,
                &st.vlog.dir,
                st.vlog.fs.clone(),
                st.vlog.readers.clone(),
            )
            .with_recycler(st.vlog.recycler.clone());
            set.insert(m.id, Arc::new(seg));
            Counters::add(
                &self.counters.vlog_segments_created,
                "nokv_vlog_segments_created_total",
                1,
            );
            Counters::add(
                &self.counters.vlog_bytes_written,
                "nokv_vlog_bytes_written_total",
                m.file_bytes,
            );
        }
        st.vlog.segments = Arc::new(set);
    }

    /// Fills the value-log and space figures of a stats snapshot.
    pub(super) fn fill_vlog_stats(&self, s: &mut Stats) {
        let c = &self.counters;
        let ld = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let st = self.state.lock();
        let totals = st.manifest_state.discard.totals();
        s.vlog_segments = st.manifest_state.segments.len();
        s.vlog_bytes = st
            .manifest_state
            .segments
            .values()
            .map(|m| m.file_bytes)
            .sum();
        s.vlog_segments_kept = st.vlog.recycler.as_ref().map_or(0, |r| r.len());
        s.vlog_gc_candidates = if over_space_target(&st, self.opts.vlog_gc_space_amp) {
            st.manifest_state
                .discard
                .iter()
                .filter(|(_, u)| u.ratio() >= self.opts.vlog_gc_min_discard_ratio)
                .count()
        } else {
            0
        };
        drop(st);
        s.vlog_live_bytes = totals.total - totals.discarded;
        s.vlog_garbage_bytes = totals.discarded;
        s.vlog_values_separated = ld(&c.vlog_values_separated);
        s.vlog_bytes_separated = ld(&c.vlog_bytes_separated);
        s.vlog_segments_created = ld(&c.vlog_segments_created);
        s.vlog_bytes_written = ld(&c.vlog_bytes_written);
        s.vlog_reads = self.readers.reads().0;
        s.vlog_gc_rounds = ld(&c.vlog_gc_rounds);
        s.vlog_gc_segments = ld(&c.vlog_gc_segments);
        s.vlog_gc_bytes_scanned = ld(&c.vlog_gc_bytes_scanned);
        s.vlog_gc_bytes_rewritten = ld(&c.vlog_gc_bytes_rewritten);
        s.vlog_gc_bytes_reclaimed = ld(&c.vlog_gc_bytes_reclaimed);
        s.vlog_gc_deferred = ld(&c.vlog_gc_deferred);
        s.vlog_write_values = ld(&c.vlog_write_values);
        s.vlog_write_bytes = ld(&c.vlog_write_bytes);
        s.vlog_write_syncs = ld(&c.vlog_write_syncs);
        s.vlog_segments_reused = ld(&c.vlog_segments_reused);
        s.relaxed_sync_waits = ld(&c.relaxed_sync_waits);
        s.relaxed_sync_wait_micros = ld(&c.relaxed_sync_wait_micros);
        let sst: u64 = s.levels.iter().map(|l| l.bytes).sum();
        let largest = s.levels.iter().map(|l| l.bytes).max().unwrap_or(0);
        s.disk_bytes = sst + s.vlog_bytes;
        s.live_bytes_estimate = s.vlog_live_bytes + largest;
    }

    /// The background value-log GC: collects the segment with the most garbage, repeatedly.
    pub(super) fn vlog_gc_loop(&self) {
        let mut postponed: HashMap<u64, RetryKey> = HashMap::new();
        let mut st = self.state.lock();
        loop {
            if st.shutting_down {
                return;
            }
            let retry = self.retry_key();
            postponed.retain(|id, k| {
                k.same_view(&retry)
                    && k.at.elapsed() < RETRY_AFTER
                    && st.vlog.segments.contains_key(id)
            });
            let candidate = if self.is_poisoned.load(Ordering::Acquire)
                || !over_space_target(&st, self.opts.vlog_gc_space_amp)
            {
                None
            } else {
                pick_candidate(&st, self.opts.vlog_gc_min_discard_ratio, &postponed)
            };
            let Some(id) = candidate else {
                self.state_cv.wait_for(&mut st, Duration::from_millis(200));
                continue;
            };
            drop(st);
            match self.collect_segment(id) {
                Ok(GcResult::Postponed) => {
                    postponed.insert(id, retry);
                }
                Ok(_) => {}
                Err(Error::Closed) => return,
                Err(e) => {
                    tracing::error!(segment = id, error = %e, "value-log GC failed");
                    Counters::add(
                        &self.counters.background_errors,
                        "nokv_background_errors_total",
                        1,
                    );
                    // Back off so a failing disk is not hammered; try other segments first.
                    postponed.insert(id, retry);
                    let mut st = self.state.lock();
                    if !st.shutting_down {
                        self.state_cv.wait_for(&mut st, Duration::from_millis(500));
                    }
                }
            }
            st = self.state.lock();
        }
    }

    fn retry_key(&self) -> RetryKey {
        RetryKey {
            safe_point: self.safe_point(),
            oldest_snapshot: self.snapshots.oldest(),
            at: Instant::now(),
        }
    }

    /// Collects the live segment with the most garbage if its ratio reaches `min_ratio`.
    /// Returns whether a segment was collected.
    pub(super) fn run_vlog_gc(&self, min_ratio: f64) -> Result<bool> {
        let id = {
            let st = self.state.lock();
            pick_candidate(&st, min_ratio, &HashMap::new())
        };
        match id {
            Some(id) => Ok(self.collect_segment(id)? == GcResult::Collected),
            None => Ok(false),
        }
    }

    /// Collects segment `id`: copies its needed records, then re-points them (module docs).
    fn collect_segment(&self, id: u64) -> Result<GcResult> {
        let _one = self.vlog_gc.lock();
        self.check_writable()?;
        let seg = {
            let mut st = self.state.lock();
            let Some(seg) = st.vlog.segments.get(&id).cloned() else {
                return Ok(GcResult::Gone);
            };
            // From here on, compactions report the key ranges they rewrite.
            st.vlog.watch = Some(Watch::default());
            seg
        };
        let _guard = GcGuard { inner: self };
        let old = SegmentReader::open(&*self.fs, &self.dir, id)?;
        let new_id = self.next_file_number.fetch_add(1, Ordering::SeqCst);
        let writer = SegmentWriter::create(
            self.fs.clone(),
            &self.dir,
            new_id,
            SegmentWriterOptions {
                target_segment_bytes: u64::MAX,
                unsafe_skip_sync: self.opts.unsafe_vlog_skip_segment_sync,
                ..Default::default()
            },
        )?;
        let mut job = GcJob::new(&old, writer)?;
        let mut moved: Vec<Moved> = Vec::new();
        let mut safe_point_used = 0u64;
        loop {
            if self.closed.load(Ordering::Acquire) {
                let _ = job.abandon();
                return Err(Error::Closed);
            }
            if let Err(e) = self.check_writable() {
                let _ = job.abandon();
                return Err(e);
            }
            // A fresh view each round: the safe point and snapshots only move forward.
            let (sp, ss) = (self.safe_point(), self.smallest_snapshot());
            safe_point_used = safe_point_used.max(sp);
            let mut expiries: HashMap<ValuePointer, Option<[u8; EXPIRY_LEN]>> = HashMap::new();
            let mut pinned = false;
            let res = job.step(self.opts.vlog_gc_bytes_per_round, |key, ptr| {
                match self.classify(key, ptr, sp, ss)? {
                    Liveness::Dead => Ok(false),
                    Liveness::Live(exp) => {
                        expiries.insert(ptr, exp);
                        Ok(true)
                    }
                    Liveness::Pinned => {
                        pinned = true;
                        Err(Error::InvalidArgument("postponed".into()))
                    }
                }
            });
            Counters::add(
                &self.counters.vlog_gc_rounds,
                "nokv_vlog_gc_rounds_total",
                1,
            );
            let step = match res {
                Ok(s) => s,
                Err(e) => {
                    let _ = job.abandon();
                    if pinned {
                        Counters::add(
                            &self.counters.vlog_gc_deferred,
                            "nokv_vlog_gc_deferred_total",
                            1,
                        );
                        return Ok(GcResult::Postponed);
                    }
                    return Err(e);
                }
            };
            Counters::add(
                &self.counters.vlog_gc_bytes_scanned,
                "nokv_vlog_gc_bytes_scanned_total",
                step.scanned_bytes,
            );
            for r in step.relocations {
                let expiry = expiries.get(&r.old).copied().flatten();
                moved.push(Moved {
                    key: r.key,
                    old: r.old,
                    new: r.new,
                    expiry,
                });
            }
            if step.done {
                break;
            }
        }
        let new_path = filename::vlog(&self.dir, new_id);
        let outcome = match job.finish() {
            Ok(o) => o,
            Err(e) => {
                remove_quietly(&*self.fs, &new_path);
                return Err(e);
            }
        };
        if self.opts.unsafe_vlog_delete_before_commit {
            // Negative control for crash tests: the old segment goes (durably) before the
            // edit that re-points its values.
            remove_quietly(&*self.fs, &filename::vlog(&self.dir, id));
            self.fs.sync_dir(&self.dir).ctx("fsync dir", &self.dir)?;
        }
        let res = self.commit_gc(&seg, outcome.new_segment, moved, safe_point_used);
        let committed = matches!(res, Ok(GcResult::Collected));
        // Not committed: the copy is an orphan. After a failed manifest write (which poisons
        // the database) the edit may still be durable: the next open sorts the files out.
        if !committed && outcome.new_segment.is_some() && !self.is_poisoned.load(Ordering::Acquire)
        {
            remove_quietly(&*self.fs, &new_path);
        }
        if let Ok(GcResult::Collected) = res {
            Counters::add(
                &self.counters.vlog_gc_segments,
                "nokv_vlog_gc_segments_total",
                1,
            );
            Counters::add(
                &self.counters.vlog_gc_bytes_reclaimed,
                "nokv_vlog_gc_bytes_reclaimed_total",
                outcome.reclaimed_bytes,
            );
        }
        res
    }

    /// Makes the moved records durable: re-checks what compactions touched, writes the
    /// relocation table, and logs the edit that swaps the segments.
    fn commit_gc(
        &self,
        seg: &Arc<LiveSegment>,
        new_segment: Option<SegmentMeta>,
        mut moved: Vec<Moved>,
        mut safe_point_used: u64,
    ) -> Result<GcResult> {
        moved.sort_by(|a, b| compare_internal(&a.key, &b.key));
        let old_id = seg.meta().id;
        let mut garbage = 0u64;
        // The relocation table built for `moved` (and how many moves it holds); deleted on
        // every way out but the commit.
        let mut table = PendingTable::default();
        for _ in 0..MAX_COMMIT_ATTEMPTS {
            // Entries that hide a record may still be only in the WAL (relaxed writes): make
            // every entry a liveness decision so far rested on durable before the record's
            // segment can go. Not while holding L0 back: a writer stalled on L0 holds the WAL.
            self.state.lock().vlog.hold_l0 = false;
            self.sync_wal()?;
            let touched = {
                let mut st = self.state.lock();
                if st.shutting_down {
                    return Err(Error::Closed);
                }
                // No L0 compaction may start; wait for a running one. Otherwise it could carry
                // an entry newer than a moved one below the relocation table.
                st.vlog.hold_l0 = true;
                let deadline = Instant::now() + L0_WAIT;
                while st.version.levels[0]
                    .iter()
                    .any(|f| f.being_compacted.load(Ordering::Acquire))
                {
                    if Instant::now() > deadline || st.shutting_down {
                        return Ok(GcResult::Postponed);
                    }
                    self.state_cv.wait_for(&mut st, Duration::from_millis(20));
                }
                st.vlog.watch.replace(Watch::default()).unwrap_or_default()
            };
            if !touched.is_empty() {
                self.state.lock().vlog.hold_l0 = false;
                self.state_cv.notify_all();
                let (sp, ss) = (self.safe_point(), self.smallest_snapshot());
                safe_point_used = safe_point_used.max(sp);
                let mut keep = Vec::with_capacity(moved.len());
                for m in moved {
                    if !touched.touches(logical_key(&m.key)) {
                        keep.push(m);
                        continue;
                    }
                    match self.classify(&m.key, m.old, sp, ss)? {
                        Liveness::Dead => garbage += m.new.len as u64,
                        Liveness::Live(expiry) => keep.push(Moved { expiry, ..m }),
                        Liveness::Pinned => {
                            Counters::add(
                                &self.counters.vlog_gc_deferred,
                                "nokv_vlog_gc_deferred_total",
                                1,
                            );
                            return Ok(GcResult::Postponed);
                        }
                    }
                }
                moved = keep;
                continue;
            }
            // Build the relocation table once for this set of moves (rechecks only drop moves).
            if table.moves != Some(moved.len()) {
                table.discard();
                if !moved.is_empty() {
                    table.table = Some(self.write_relocation_table(&moved)?);
                }
                table.moves = Some(moved.len());
                let dir = &self.dir;
                self.fs.sync_dir(dir).ctx("fsync dir", dir)?;
            }
            let mut st = self.state.lock();
            if st.vlog.watch.as_ref().is_some_and(|w| !w.is_empty()) {
                continue;
            }
            let kept_segment = new_segment.filter(|_| !moved.is_empty());
            let mut edit = VersionEdit {
                segments_deleted: vec![old_id],
                segments_added: kept_segment.into_iter().collect(),
                gc_safe_point: self.opts.retain_versions.then_some(safe_point_used),
                ..Default::default()
            };
            if let Some(m) = kept_segment {
                edit.discards.push((m.id, garbage));
            }
            let opened: Vec<Arc<FileMeta>> = table.table.iter().cloned().collect();
            for t in &opened {
                edit.added.push((0, t.desc.clone()));
            }
            // On failure the database is poisoned and the edit may be durable anyway: the
            // relocation table and the new segment stay for the next open to judge.
            table.keep = true;
            self.log_and_apply(&mut st, edit, &opened)?;
            drop(st);
            self.state_cv.notify_all();
            if let (Some(m), None) = (new_segment, kept_segment) {
                // Everything copied turned out dead: the copy was never made live.
                remove_quietly(&*self.fs, &filename::vlog(&self.dir, m.id));
            }
            let rewritten: u64 = moved.iter().map(|m| m.new.len as u64).sum();
            Counters::add(
                &self.counters.vlog_gc_bytes_rewritten,
                "nokv_vlog_gc_bytes_rewritten_total",
                rewritten,
            );
            tracing::debug!(
                segment = old_id,
                new_segment = kept_segment.map(|m| m.id),
                moved = moved.len(),
                "value-log segment collected"
            );
            return Ok(GcResult::Collected);
        }
        Counters::add(
            &self.counters.vlog_gc_deferred,
            "nokv_vlog_gc_deferred_total",
            1,
        );
        Ok(GcResult::Postponed)
    }

    /// Makes every write applied so far durable (GC decides liveness against them).
    fn sync_wal(&self) -> Result<()> {
        let mut ws = self.write.lock();
        self.check_writable()?;
        self.sync_logs(&mut ws)
    }

    /// Writes the L0 table that re-points the moved entries (same internal keys, new pointers).
    fn write_relocation_table(&self, moved: &[Moved]) -> Result<Arc<FileMeta>> {
        let number = self.next_file_number.fetch_add(1, Ordering::SeqCst);
        let path = filename::table(&self.dir, number);
        let file = self
            .fs
            .open(&path, OpenMode::CreateNew)
            .ctx("create", &path)?;
        let settings = crate::compaction::JobSettings::new(
            &self.opts,
            0,
            self.dir.clone(),
            self.fs.clone(),
            self.next_file_number.clone(),
            self.cache.clone(),
        );
        let res = (|| {
            let mut b = TableBuilder::with_queue(
                file,
                path.clone(),
                TableBuilderOptions::from_options(&self.opts, 0),
                new_queue(settings.io_queue),
            );
            let mut value = Vec::with_capacity(EXPIRY_LEN + ValuePointer::ENCODED_LEN);
            for (i, m) in moved.iter().enumerate() {
                value.clear();
                if let Some(e) = m.expiry {
                    value.extend_from_slice(&e);
                }
                m.new.encode_to(&mut value);
                b.add(&m.key, &value)?;
                if i % STEP_ENTRIES == 0 && self.closed.load(Ordering::Acquire) {
                    return Err(Error::Closed);
                }
            }
            let props = b.finish()?;
            let file = self.fs.open(&path, OpenMode::Read).ctx("open", &path)?;
            let table = Table::open(
                file,
                path.clone(),
                number,
                props.file_size,
                self.cache.clone(),
            )?;
            let desc = FileDesc {
                number,
                size: props.file_size,
                entries: props.num_entries,
                smallest: props.smallest,
                largest: props.largest,
                global_seq: None,
            };
            Ok(Arc::new(FileMeta::new(
                desc,
                table,
                self.fs.clone(),
                path.clone(),
            )))
        })();
        if res.is_err() {
            remove_quietly(&*self.fs, &path);
        }
        res
    }

    /// Decides whether the record `key` (an internal key of a pointer kind) at `ptr` is still
    /// needed, for readers at a version >= `sp` and a sequence >= `ss`.
    fn classify(&self, key: &[u8], ptr: ValuePointer, sp: u64, ss: u64) -> Result<Liveness> {
        if key.len() <= TRAILER_LEN {
            return Ok(Liveness::Dead);
        }
        let (seq, kind) = parse_trailer(key);
        if !is_pointer_kind(kind) {
            return Ok(Liveness::Dead);
        }
        let version = parse_version(key);
        let logical = logical_key(key);
        // Range deletes: a tombstone every reader sees hides the record for good; one that
        // only newer readers see leaves it needed by older snapshots but unsafe to move (a
        // moved copy must never outlive the tombstone's reclaim): wait.
        {
            let sv = self.sv.read().clone();
            if seq < range_del_floor(&sv, logical, ss) {
                return Ok(Liveness::Dead);
            }
            if seq < range_del_floor(&sv, logical, MAX_SEQ) {
                return Ok(Liveness::Pinned);
            }
        }
        let same = |f: &Found| f.version == version && f.seq == seq;
        let expiry = |f: &Found| -> Option<[u8; EXPIRY_LEN]> {
            (f.kind == Kind::ValuePointerWithExpiry as u8)
                .then(|| f.value.get(..EXPIRY_LEN).and_then(|e| e.try_into().ok()))
                .flatten()
        };
        let points_here = |f: &Found| {
            f.kind == kind
                && pointer_bytes(f.kind, &f.value).and_then(|p| ValuePointer::decode(p).ok())
                    == Some(ptr)
        };
        // The newest entry of the key: if it is this one, the record is live and movable.
        let Some(newest) = self.find(
            logical,
            MAX_VERSION,
            MAX_SEQ,
            crate::options::BlockRead::NoFill,
        )?
        else {
            return Ok(Liveness::Dead);
        };
        if same(&newest) {
            return Ok(if points_here(&newest) {
                Liveness::Live(expiry(&newest))
            } else {
                Liveness::Dead
            });
        }
        if (newest.version, newest.seq) < (version, seq) {
            // The entry is gone (the newest entry sorts after it).
            return Ok(Liveness::Dead);
        }
        // Hidden from every reader by a newer version they all see?
        if let Some(x) = self.find(logical, sp, ss, crate::options::BlockRead::NoFill)? {
            if (x.version, x.seq) > (version, seq) {
                return Ok(Liveness::Dead);
            }
        }
        // Still held with this pointer (the first copy of the internal key wins)?
        match self.find(logical, version, seq, crate::options::BlockRead::NoFill)? {
            Some(f) if same(&f) && points_here(&f) => {
                if self.only_plain_puts_before(logical, version, seq)? {
                    Ok(Liveness::Live(expiry(&f)))
                } else {
                    Ok(Liveness::Pinned)
                }
            }
            _ => Ok(Liveness::Dead),
        }
    }

    /// True when every entry of `logical` sorting before (`version`, `seq`) is a plain put:
    /// none of them can vanish (a tombstone or an expiring value dropped at the bottom) and
    /// leave a moved copy of the entry uncovered.
    fn only_plain_puts_before(&self, logical: &[u8], version: u64, seq: u64) -> Result<bool> {
        let sv = self.sv.read().clone();
        let mut children: Vec<Box<dyn InternalIterator>> = Vec::new();
        children.push(Box::new(sv.mem.iter()));
        for m in &sv.imms {
            children.push(Box::new(m.iter()));
        }
        for f in sv.version.files_for_key(logical) {
            children.push(Box::new(f.table.iter(crate::options::BlockRead::NoFill)));
        }
        let mut it = MergingIterator::new(children);
        it.seek(&first_key(logical));
        while it.valid() {
            let k = it.key();
            if logical_key(k) != logical {
                break;
            }
            let (s, kind) = parse_trailer(k);
            if (parse_version(k), s) <= (version, seq) {
                break;
            }
            if kind != Kind::Put as u8 && kind != Kind::ValuePointer as u8 {
                return Ok(false);
            }
            it.next();
        }
        it.status()?;
        Ok(true)
    }
}

/// A relocation table written by a GC commit attempt; deleted when dropped unless kept.
#[derive(Default)]
struct PendingTable {
    table: Option<Arc<FileMeta>>,
    /// Number of moves it was built for (`None`: not built).
    moves: Option<usize>,
    /// The commit took it (or may have): never delete it here.
    keep: bool,
}

impl PendingTable {
    /// Deletes the current table (it no longer matches the moves).
    fn discard(&mut self) {
        if let Some(t) = self.table.take() {
            t.mark_obsolete();
        }
        self.moves = None;
    }
}

impl Drop for PendingTable {
    fn drop(&mut self) {
        if !self.keep {
            self.discard();
        }
    }
}

/// True when the value log holds more than `target` record bytes per byte not known to be
/// garbage: background GC has work to do.
fn over_space_target(st: &State, target: f64) -> bool {
    let t = st.manifest_state.discard.totals();
    let live = t.total.saturating_sub(t.discarded);
    t.discarded > 0 && t.total as f64 > target * live as f64
}

/// The live segment with the highest discard ratio at or above `min_ratio`, skipping
/// postponed ones.
fn pick_candidate(st: &State, min_ratio: f64, postponed: &HashMap<u64, RetryKey>) -> Option<u64> {
    let mut best: Option<(u64, f64)> = None;
    for (id, u) in st.manifest_state.discard.iter() {
        let r = u.ratio();
        if r >= min_ratio
            && !postponed.contains_key(&id)
            && st.vlog.segments.contains_key(&id)
            && best.is_none_or(|(_, b)| r > b)
        {
            best = Some((id, r));
        }
    }
    best.map(|(id, _)| id)
}

fn remove_quietly(fs: &dyn FileSystem, p: &Path) {
    if fs.exists(p) {
        if let Err(e) = fs.remove_file(p) {
            tracing::warn!(path = %p.display(), error = %e, "could not remove a value-log GC file");
        }
    }
}

//! Large values on the write path (WiscKey): the commit leader appends each value of at
//! least its column family's threshold to a value-log segment *before* the WAL record that
//! carries only its pointer, so every large value is written once.
//!
//! Ownership and lifetime of a write-path segment:
//!
//! 1. [`WriteLog`] (owned by the commit leader's state) creates the segment lazily, fsyncs
//!    the directory, and appends one buffer per write group ([`WriteLog::write`]) before
//!    the group's WAL record. Every WAL fdatasync is preceded by [`WriteLog::sync`], so a
//!    durable WAL record never points at bytes that are not durable.
//! 2. When the memtable is frozen, [`WriteLog::seal`] finishes the segment (footer,
//!    fdatasync) and hands the frozen memtable its [`MemtableValues`]: the segments written
//!    while it was active and the pointer of every separated entry, by sequence number.
//!    The memtable itself keeps the whole values, so reads never see a pointer into a
//!    segment that is still being written.
//! 3. The flush writes table entries with those pointers (no value is copied) and the
//!    segments become live in the same manifest edit as the table, with the bytes of the
//!    entries the flush dropped counted as discarded.
//!
//! After a crash, recovery ([`RecoveredSegments`]) reads the values the replayed WAL
//! entries point at from the unfinished segments; a record that is missing or torn means
//! that no WAL sync covered its entry (syncs are ordered), so replay stops there (the WAL
//! is cut like a torn tail), and each segment is finished right after the last record
//! replayed. Value-log GC never sees a write-path segment before it is in the manifest.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::live::Recycler;
use super::pointer::ValuePointer;
use super::segment::{
    SegmentMeta, SegmentWriter, SegmentWriterOptions, UnfinishedSegment, RECORD_HEADER_LEN,
};
use super::separate::Thresholds;
use crate::error::{Error, IoContext, Result};
use crate::fs::FileSystem;
use crate::key::{encode_trailer, Kind, EXPIRY_LEN, TRAILER_LEN};

/// What [`WriteLog`] needs from the database.
#[derive(Clone)]
pub struct WriteLogSettings {
    /// The database directory (segments are created there).
    pub dir: PathBuf,
    /// The filesystem.
    pub fs: Arc<dyn FileSystem>,
    /// Allocator of segment ids (shared with table file numbers).
    pub next_file_number: Arc<AtomicU64>,
    /// Which values are separated, per column family.
    pub thresholds: Thresholds,
    /// Segment size.
    pub writer: SegmentWriterOptions,
    /// TEST ONLY: [`WriteLog::sync`] does nothing (finishing a segment still syncs), so
    /// WAL records can become durable before the values they point at.
    pub unsafe_skip_sync: bool,
    /// Files of collected segments to write new segments into (see [`Recycler`]).
    pub recycler: Option<Arc<Recycler>>,
}

impl std::fmt::Debug for WriteLogSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteLogSettings")
            .field("dir", &self.dir)
            .field("thresholds", &self.thresholds)
            .field("writer", &self.writer)
            .finish_non_exhaustive()
    }
}

/// The value-log side of one memtable: the write-path segments written while it was active
/// and the pointers of its separated entries, by sequence number.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MemtableValues {
    /// Finished segments (footer written, fdatasynced), oldest first.
    pub segments: Vec<SegmentMeta>,
    /// (sequence number, pointer), ascending by sequence number.
    pointers: Vec<(u64, ValuePointer)>,
}

impl MemtableValues {
    /// True when no entry of the memtable is in the value log.
    pub fn is_empty(&self) -> bool {
        self.pointers.is_empty() && self.segments.is_empty()
    }

    /// Number of separated entries.
    pub fn len(&self) -> usize {
        self.pointers.len()
    }

    /// True when some entry's value is in the value log.
    pub fn has_pointers(&self) -> bool {
        !self.pointers.is_empty()
    }

    /// Records that the entry with sequence number `seq` has its value at `ptr`.
    pub fn push(&mut self, seq: u64, ptr: ValuePointer) {
        if self.pointers.last().is_some_and(|(s, _)| *s >= seq) {
            // Out of order (never on the write path): keep the list sorted for lookups.
            let at = self.pointers.partition_point(|(s, _)| *s < seq);
            self.pointers.insert(at, (seq, ptr));
        } else {
            self.pointers.push((seq, ptr));
        }
    }

    /// The pointer of the entry with sequence number `seq`, if its value is in the value log.
    pub fn pointer(&self, seq: u64) -> Option<ValuePointer> {
        let i = self.pointers.binary_search_by_key(&seq, |(s, _)| *s).ok()?;
        Some(self.pointers[i].1)
    }

    /// Record bytes of each segment that the table outputs do not reference (`refs`: record
    /// bytes referenced per segment, summed over the outputs): garbage from the start.
    pub fn unreferenced(&self, refs: &BTreeMap<u64, u64>) -> Vec<(u64, u64)> {
        self.segments
            .iter()
            .map(|m| {
                let used = refs.get(&m.id).copied().unwrap_or(0);
                (m.id, m.record_bytes.saturating_sub(used))
            })
            .filter(|(_, bytes)| *bytes > 0)
            .collect()
    }
}

/// The table entry (kind and stored value) for a memtable entry whose value is at `ptr`:
/// `Put` becomes `ValuePointer`, `PutWithExpiry` `ValuePointerWithExpiry` (expiry kept in
/// front of the pointer). `None` for any other kind.
pub fn pointer_entry(
    kind: u8,
    stored: &[u8],
    ptr: ValuePointer,
    out: &mut Vec<u8>,
) -> Option<Kind> {
    out.clear();
    match Kind::from_u8(kind)? {
        Kind::Put => {
            ptr.encode_to(out);
            Some(Kind::ValuePointer)
        }
        Kind::PutWithExpiry if stored.len() >= EXPIRY_LEN => {
            out.extend_from_slice(&stored[..EXPIRY_LEN]);
            ptr.encode_to(out);
            Some(Kind::ValuePointerWithExpiry)
        }
        _ => None,
    }
}

/// The write path's value log: the segment the commit leader appends to, and what the
/// active memtable's entries put there. Not thread-safe: the commit leader owns it.
pub struct WriteLog {
    settings: WriteLogSettings,
    /// Smallest threshold of any column family: a batch with no value this large is skipped.
    min_threshold: usize,
    current: Option<SegmentWriter>,
    values: MemtableValues,
    key: Vec<u8>,
    /// Since open: values appended, their value bytes and their record bytes.
    appended: (u64, u64, u64),
    /// fdatasync calls, since open.
    syncs: u64,
    /// Segments written into a collected segment's file, since open.
    reused: u64,
}

impl std::fmt::Debug for WriteLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteLog")
            .field("current", &self.current)
            .field("separated", &self.values.len())
            .finish_non_exhaustive()
    }
}

impl WriteLog {
    /// A write log that separates values by `settings.thresholds`.
    pub fn new(settings: WriteLogSettings) -> WriteLog {
        let t = &settings.thresholds;
        let min_threshold = t
            .per_cf
            .values()
            .chain(std::iter::once(&t.default))
            .flatten()
            .copied()
            .min()
            .unwrap_or(usize::MAX);
        WriteLog {
            settings,
            min_threshold,
            current: None,
            values: MemtableValues::default(),
            key: Vec::new(),
            appended: (0, 0, 0),
            syncs: 0,
            reused: 0,
        }
    }

    /// True when a value of `len` stored bytes may be separated (a cheap pre-check).
    pub fn may_separate(&self, len: usize) -> bool {
        len >= self.min_threshold
    }

    /// Appends the value of a logged entry to the segment (buffered until
    /// [`WriteLog::write`]) if it belongs in the value log: a `Put` or `PutWithExpiry` whose
    /// value (without the expiry) reaches the threshold of its column family. Returns the
    /// entry's new kind, with the stored bytes for the WAL (`[expiry]` and pointer) in `out`.
    pub fn append(
        &mut self,
        logical: &[u8],
        version: u64,
        seq: u64,
        kind: Kind,
        stored: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Option<Kind>> {
        let (new_kind, value) = match kind {
            Kind::Put => (Kind::ValuePointer, stored),
            Kind::PutWithExpiry if stored.len() >= EXPIRY_LEN => {
                (Kind::ValuePointerWithExpiry, &stored[EXPIRY_LEN..])
            }
            _ => return Ok(None),
        };
        match self.settings.thresholds.for_logical(logical) {
            Some(t) if value.len() >= t => {}
            _ => return Ok(None),
        }
        // A full segment is finished before anything of this group is written, so an error
        // leaves no logged entry pointing at it.
        if self.current.as_ref().is_some_and(|w| w.is_full()) {
            self.finish_current()?;
        }
        if self.current.is_none() {
            self.current = Some(self.create()?);
        }
        let w = self
            .current
            .as_mut()
            .ok_or_else(|| Error::InvalidArgument("no value-log segment".into()))?;
        self.key.clear();
        self.key.extend_from_slice(logical);
        self.key
            .extend_from_slice(&encode_trailer(version, seq, new_kind as u8));
        let ptr = w.add(&self.key, value)?;
        self.values.push(seq, ptr);
        self.appended.0 += 1;
        self.appended.1 += value.len() as u64;
        self.appended.2 += ptr.len as u64;
        out.clear();
        if new_kind == Kind::ValuePointerWithExpiry {
            out.extend_from_slice(&stored[..EXPIRY_LEN]);
        }
        ptr.encode_to(out);
        Ok(Some(new_kind))
    }

    /// Creates the next segment (in a collected segment's file when one is kept) and makes
    /// its directory entry durable (a WAL record may point into it as soon as the next sync).
    ///
    /// A recycled file still holds the old segment's records past what is written; they
    /// never pass for new ones: recovery checks the header (with the new id) and each record's
    /// key, which names its entry's sequence number, and cuts the file after the last
    /// replayed record.
    fn create(&mut self) -> Result<SegmentWriter> {
        let s = &self.settings;
        let id = s.next_file_number.fetch_add(1, Ordering::SeqCst);
        let recycled = s.recycler.as_ref().and_then(|r| r.take());
        let w = match recycled {
            Some(from) => {
                match SegmentWriter::create_recycled(s.fs.clone(), &s.dir, id, &from, s.writer) {
                    Ok(w) => {
                        self.reused += 1;
                        w
                    }
                    Err(e) => {
                        tracing::warn!(path = %from.display(), error = %e,
                            "could not reuse a collected value-log segment; creating a new one");
                        if s.fs.exists(&from) {
                            let _ = s.fs.remove_file(&from);
                        }
                        SegmentWriter::create(s.fs.clone(), &s.dir, id, s.writer)?
                    }
                }
            }
            None => SegmentWriter::create(s.fs.clone(), &s.dir, id, s.writer)?,
        };
        s.fs.sync_dir(&s.dir).ctx("fsync dir", &s.dir)?;
        Ok(w)
    }

    /// Writes what the current group appended (one positional write); not yet durable.
    pub fn write(&mut self) -> Result<()> {
        match self.current.as_mut() {
            Some(w) => w.write_buffered(),
            None => Ok(()),
        }
    }

    /// Makes everything appended so far durable. Call before every WAL fdatasync.
    pub fn sync(&mut self) -> Result<()> {
        if self.settings.unsafe_skip_sync {
            return Ok(());
        }
        match self.current.as_mut() {
            Some(w) if w.unsynced_bytes() > 0 => {
                w.sync()?;
                self.syncs += 1;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The current segment's file and path, unless fdatasyncs are skipped (test-only):
    /// what a background sync of the written bytes must fdatasync.
    pub fn current_file(&self) -> Option<(Arc<dyn crate::fs::File>, PathBuf)> {
        if self.settings.unsafe_skip_sync {
            return None;
        }
        let w = self.current.as_ref()?;
        Some((w.file().clone(), w.path().to_path_buf()))
    }

    /// Bytes appended and not yet durable.
    pub fn unsynced_bytes(&self) -> u64 {
        self.current.as_ref().map_or(0, |w| w.unsynced_bytes())
    }

    /// Finishes the current segment (footer, fdatasync).
    fn finish_current(&mut self) -> Result<()> {
        if let Some(w) = self.current.take() {
            let meta = w.finish()?;
            self.syncs += 1;
            self.values.segments.push(meta);
        }
        Ok(())
    }

    /// Finishes the current segment and returns what the active memtable put in the value
    /// log (called when it is frozen; the next memtable starts a new segment).
    pub fn seal(&mut self) -> Result<MemtableValues> {
        self.finish_current()?;
        Ok(std::mem::take(&mut self.values))
    }

    /// Since open: values appended, their value bytes and their record bytes.
    pub fn appended(&self) -> (u64, u64, u64) {
        self.appended
    }

    /// fdatasync calls (syncs and finished segments), since open.
    pub fn syncs(&self) -> u64 {
        self.syncs
    }

    /// Segments written into a collected segment's file, since open.
    pub fn reused(&self) -> u64 {
        self.reused
    }
}

/// Recovery's view of the write-path segments the replayed WAL points into.
pub struct RecoveredSegments {
    dir: PathBuf,
    fs: Arc<dyn FileSystem>,
    /// Opened segments (`None`: missing or unreadable header).
    open: BTreeMap<u64, Option<UnfinishedSegment>>,
    /// End of the last record read, per segment.
    ends: BTreeMap<u64, u64>,
    /// Pointers of the replayed entries.
    values: MemtableValues,
    key: Vec<u8>,
}

impl std::fmt::Debug for RecoveredSegments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecoveredSegments")
            .field("dir", &self.dir)
            .field("ends", &self.ends)
            .finish_non_exhaustive()
    }
}

impl RecoveredSegments {
    /// Nothing opened yet; segments live in `dir`.
    pub fn new(fs: Arc<dyn FileSystem>, dir: PathBuf) -> RecoveredSegments {
        RecoveredSegments {
            dir,
            fs,
            open: BTreeMap::new(),
            ends: BTreeMap::new(),
            values: MemtableValues::default(),
            key: Vec::new(),
        }
    }

    /// Reads the value of a replayed WAL entry of kind `ValuePointer` /
    /// `ValuePointerWithExpiry` (`stored`: `[expiry]` and pointer). Returns the entry as the
    /// memtable holds it (`Put` / `PutWithExpiry` and the whole stored value), or `None` when
    /// the record is missing or torn (the entry was never covered by a sync).
    pub fn resolve(
        &mut self,
        logical: &[u8],
        version: u64,
        seq: u64,
        kind: Kind,
        stored: &[u8],
    ) -> Result<Option<(Kind, Vec<u8>, ValuePointer)>> {
        let (mem_kind, expiry, raw) = match kind {
            Kind::ValuePointer => (Kind::Put, &[][..], stored),
            Kind::ValuePointerWithExpiry if stored.len() >= EXPIRY_LEN => (
                Kind::PutWithExpiry,
                &stored[..EXPIRY_LEN],
                &stored[EXPIRY_LEN..],
            ),
            _ => {
                return Err(Error::corruption(
                    &self.dir,
                    0,
                    format!("WAL entry of kind {kind:?} is not a value pointer"),
                ))
            }
        };
        let ptr = ValuePointer::decode(raw).map_err(|e| {
            Error::corruption(
                &self.dir,
                0,
                format!("malformed value pointer in the WAL: {e}"),
            )
        })?;
        if !self.open.contains_key(&ptr.segment) {
            let seg = UnfinishedSegment::open(&*self.fs, &self.dir, ptr.segment)?;
            self.open.insert(ptr.segment, seg);
        }
        let Some(Some(seg)) = self.open.get(&ptr.segment) else {
            return Ok(None);
        };
        self.key.clear();
        self.key.extend_from_slice(logical);
        self.key
            .extend_from_slice(&encode_trailer(version, seq, kind as u8));
        debug_assert_eq!(self.key.len(), logical.len() + TRAILER_LEN);
        let Some(value) = seg.read_value(ptr, &self.key)? else {
            return Ok(None);
        };
        debug_assert_eq!(
            ptr.len as usize,
            RECORD_HEADER_LEN + self.key.len() + value.len()
        );
        let mut v = Vec::with_capacity(expiry.len() + value.len());
        v.extend_from_slice(expiry);
        v.extend_from_slice(&value);
        Ok(Some((mem_kind, v, ptr)))
    }

    /// Keeps the pointer of a replayed entry (after every entry of its batch resolved).
    pub fn keep(&mut self, seq: u64, ptr: ValuePointer) {
        let end = self.ends.entry(ptr.segment).or_insert(0);
        *end = (*end).max(ptr.end());
        self.values.push(seq, ptr);
    }

    /// Finishes every segment a kept entry points into, right after its last such record,
    /// and returns the replayed memtable's values.
    pub fn finish(mut self) -> Result<MemtableValues> {
        for (id, end) in std::mem::take(&mut self.ends) {
            let Some(Some(seg)) = self.open.remove(&id) else {
                return Err(Error::corruption(
                    crate::filename::vlog(&self.dir, id),
                    0,
                    "a replayed value pointer names a segment that was not read",
                ));
            };
            let meta = seg.finish(end)?;
            self.values.segments.push(meta);
        }
        Ok(self.values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::{FaultFs, PowerLoss};
    use crate::key::KeySpace;
    use crate::vlog::SegmentReader;
    use std::path::Path;

    fn settings(fs: &FaultFs, threshold: usize, segment_bytes: u64) -> WriteLogSettings {
        WriteLogSettings {
            dir: PathBuf::from("/db"),
            fs: Arc::new(fs.clone()),
            next_file_number: Arc::new(AtomicU64::new(10)),
            thresholds: Thresholds {
                default: Some(threshold),
                per_cf: BTreeMap::from([(7, None)]),
            },
            writer: SegmentWriterOptions {
                target_segment_bytes: segment_bytes,
                ..Default::default()
            },
            unsafe_skip_sync: false,
            recycler: None,
        }
    }

    fn fs() -> FaultFs {
        let fs = FaultFs::new();
        fs.create_dir_all(Path::new("/db")).unwrap();
        fs
    }

    fn logical(k: &str) -> Vec<u8> {
        KeySpace::KV.logical(k.as_bytes())
    }

    #[test]
    fn separates_by_threshold_kind_and_column_family() {
        let fs = fs();
        let mut log = WriteLog::new(settings(&fs, 100, 1 << 20));
        let mut out = Vec::new();
        let big = vec![7u8; 100];
        assert!(!log.may_separate(99));
        assert!(log.may_separate(100));
        let small = log
            .append(&logical("a"), 1, 1, Kind::Put, &big[..99], &mut out)
            .unwrap();
        assert_eq!(small, None);
        let del = log
            .append(&logical("a"), 1, 1, Kind::Delete, &[], &mut out)
            .unwrap();
        assert_eq!(del, None);
        let other_cf = KeySpace::kv(7).logical(b"a");
        let cf = log
            .append(&other_cf, 1, 1, Kind::Put, &big, &mut out)
            .unwrap();
        assert_eq!(cf, None);
        let put = log
            .append(&logical("a"), 5, 2, Kind::Put, &big, &mut out)
            .unwrap();
        assert_eq!(put, Some(Kind::ValuePointer));
        let p1 = ValuePointer::decode(&out).unwrap();
        let mut with_expiry = 42u64.to_le_bytes().to_vec();
        with_expiry.extend_from_slice(&big);
        let exp = log
            .append(
                &logical("b"),
                3,
                3,
                Kind::PutWithExpiry,
                &with_expiry,
                &mut out,
            )
            .unwrap();
        assert_eq!(exp, Some(Kind::ValuePointerWithExpiry));
        assert_eq!(&out[..8], &42u64.to_le_bytes());
        let p2 = ValuePointer::decode(&out[8..]).unwrap();
        log.write().unwrap();
        let values = log.seal().unwrap();
        assert_eq!(values.pointer(2), Some(p1));
        assert_eq!(values.pointer(3), Some(p2));
        assert_eq!(values.pointer(1), None);
        assert_eq!(values.segments.len(), 1);
        assert_eq!(log.appended(), (2, 200, p1.len as u64 + p2.len as u64));
        // The sealed segment is a normal finished segment holding the pointer-kind keys.
        let r = SegmentReader::open(&fs, Path::new("/db"), values.segments[0].id).unwrap();
        let rec = r.read(p1).unwrap();
        assert_eq!(rec.value, big);
        let mut key = logical("a");
        key.extend_from_slice(&encode_trailer(5, 2, Kind::ValuePointer as u8));
        assert_eq!(rec.key, key);
        assert_eq!(r.read_value(p2).unwrap(), big);
    }

    #[test]
    fn full_segments_roll_over_within_one_memtable() {
        let fs = fs();
        let mut log = WriteLog::new(settings(&fs, 10, 4096));
        let mut out = Vec::new();
        for seq in 1..=20u64 {
            log.append(&logical("k"), seq, seq, Kind::Put, &[1u8; 1000], &mut out)
                .unwrap();
            log.write().unwrap();
        }
        let values = log.seal().unwrap();
        assert!(values.segments.len() >= 4, "{:?}", values.segments);
        let total: u64 = values.segments.iter().map(|m| m.records).sum();
        assert_eq!(total, 20);
        let refs = BTreeMap::from([(values.segments[0].id, 0)]);
        let garbage = values.unreferenced(&refs);
        assert_eq!(garbage.len(), values.segments.len());
    }

    #[test]
    fn recovery_reads_synced_records_and_cuts_the_rest() {
        let fs = fs();
        let mut log = WriteLog::new(settings(&fs, 10, 1 << 20));
        let mut out = Vec::new();
        let mut ptrs = Vec::new();
        for seq in 1..=6u64 {
            log.append(
                &logical("k"),
                seq,
                seq,
                Kind::Put,
                &[seq as u8; 3000],
                &mut out,
            )
            .unwrap();
            log.write().unwrap();
            ptrs.push(ValuePointer::decode(&out).unwrap());
            if seq == 3 {
                log.sync().unwrap();
            }
        }
        fs.power_loss(PowerLoss::default());
        let mut rec = RecoveredSegments::new(Arc::new(fs.clone()), PathBuf::from("/db"));
        for (i, p) in ptrs.iter().enumerate() {
            let seq = i as u64 + 1;
            let got = rec
                .resolve(&logical("k"), seq, seq, Kind::ValuePointer, &p.encode())
                .unwrap();
            if seq <= 3 {
                let (kind, v, ptr) = got.expect("synced record");
                assert_eq!((kind, v, ptr), (Kind::Put, vec![seq as u8; 3000], *p));
                rec.keep(seq, ptr);
            } else {
                assert!(got.is_none(), "record {seq} was never synced");
            }
        }
        // The wrong key at a good offset is not the entry's record.
        let wrong = rec
            .resolve(&logical("x"), 1, 1, Kind::ValuePointer, &ptrs[0].encode())
            .unwrap();
        assert!(wrong.is_none());
        let values = rec.finish().unwrap();
        assert_eq!(values.segments.len(), 1);
        let m = values.segments[0];
        assert_eq!(m.records, 3);
        assert_eq!(m.record_bytes + 24, ptrs[2].end());
        let r = SegmentReader::open(&fs, Path::new("/db"), m.id).unwrap();
        assert_eq!(r.meta(), m);
        assert_eq!(r.iter().count(), 3);
        // Finishing again (a crash during recovery) gives the same segment.
        fs.power_loss(PowerLoss::default());
        let mut again = RecoveredSegments::new(Arc::new(fs.clone()), PathBuf::from("/db"));
        let (_, _, p) = again
            .resolve(&logical("k"), 3, 3, Kind::ValuePointer, &ptrs[2].encode())
            .unwrap()
            .unwrap();
        again.keep(3, p);
        assert_eq!(again.finish().unwrap().segments, vec![m]);
    }

    #[test]
    fn recycled_files_hold_only_the_new_segment() {
        let fs = fs();
        // An old segment with many records, collected: its file goes to the pool.
        let mut old = WriteLog::new(settings(&fs, 10, 1 << 20));
        let mut out = Vec::new();
        for seq in 1..=30u64 {
            old.append(&logical("old"), seq, seq, Kind::Put, &[9u8; 2000], &mut out)
                .unwrap();
        }
        old.write().unwrap();
        let old_values = old.seal().unwrap();
        let old_id = old_values.segments[0].id;
        let recycler = Arc::new(Recycler::new(1));
        assert!(recycler.offer(&crate::filename::vlog(Path::new("/db"), old_id)));
        assert!(
            !recycler.offer(Path::new("/db/other.vlog")),
            "the pool is full"
        );
        let mut st = settings(&fs, 10, 1 << 20);
        st.next_file_number = Arc::new(AtomicU64::new(50));
        st.recycler = Some(recycler.clone());
        let mut log = WriteLog::new(st);
        let mut ptrs = Vec::new();
        for seq in 100..103u64 {
            log.append(
                &logical("new"),
                seq,
                seq,
                Kind::Put,
                &[seq as u8; 1500],
                &mut out,
            )
            .unwrap();
            log.write().unwrap();
            ptrs.push(ValuePointer::decode(&out).unwrap());
        }
        assert!(recycler.is_empty(), "the kept file was reused");
        assert!(!fs.exists(&crate::filename::vlog(Path::new("/db"), old_id)));
        // Unfinished: recovery finds the new records, and an old record is not an entry's.
        log.sync().unwrap();
        fs.power_loss(PowerLoss::default());
        let mut rec = RecoveredSegments::new(Arc::new(fs.clone()), PathBuf::from("/db"));
        let stale = ValuePointer {
            segment: 50,
            offset: ptrs[2].end(),
            len: old_values.segments[0].record_bytes as u32 / 30,
        };
        let got = rec
            .resolve(&logical("old"), 5, 5, Kind::ValuePointer, &stale.encode())
            .unwrap();
        assert!(got.is_none(), "a stale record of the old segment");
        for (i, p) in ptrs.iter().enumerate() {
            let seq = 100 + i as u64;
            let (_, v, ptr) = rec
                .resolve(&logical("new"), seq, seq, Kind::ValuePointer, &p.encode())
                .unwrap()
                .expect("synced");
            assert_eq!(v, vec![seq as u8; 1500]);
            rec.keep(seq, ptr);
        }
        let values = rec.finish().unwrap();
        let m = values.segments[0];
        assert_eq!((m.id, m.records), (50, 3));
        let r = SegmentReader::open(&fs, Path::new("/db"), 50).unwrap();
        assert_eq!(r.meta(), m);
        assert_eq!(r.iter().count(), 3);
        // Sealed normally, a recycled segment is cut to its own size too.
        let mut st = settings(&fs, 10, 1 << 20);
        st.next_file_number = Arc::new(AtomicU64::new(60));
        st.recycler = Some(recycler.clone());
        assert!(recycler.offer(&crate::filename::vlog(Path::new("/db"), 50)));
        let mut log = WriteLog::new(st);
        log.append(&logical("x"), 1, 1, Kind::Put, &[1u8; 100], &mut out)
            .unwrap();
        let sealed = log.seal().unwrap();
        let r = SegmentReader::open(&fs, Path::new("/db"), 60).unwrap();
        assert_eq!(r.meta(), sealed.segments[0]);
        assert_eq!(r.iter().count(), 1);
    }

    #[test]
    fn a_missing_segment_resolves_to_none() {
        let fs = fs();
        let mut rec = RecoveredSegments::new(Arc::new(fs.clone()), PathBuf::from("/db"));
        let p = ValuePointer {
            segment: 99,
            offset: 24,
            len: 100,
        };
        let got = rec
            .resolve(&logical("k"), 1, 1, Kind::ValuePointer, &p.encode())
            .unwrap();
        assert!(got.is_none());
        assert!(rec.finish().unwrap().is_empty());
    }
}

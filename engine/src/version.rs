//! The set of live SST files by level ([`Version`]) and the edits that change it.

use std::cmp::Ordering;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::Arc;

use crate::codec::{put_bytes, put_varint, Reader};
use crate::fs::FileSystem;
use crate::key::{compare_internal, logical_key};
use crate::sst::Table;
use crate::vlog::segment::{RECORD_HEADER_LEN, SEGMENT_FOOTER_LEN, SEGMENT_HEADER_LEN};
use crate::vlog::SegmentMeta;

/// Persistent description of one SST file, as recorded in the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDesc {
    /// File number (names the file).
    pub number: u64,
    /// File size in bytes.
    pub size: u64,
    /// Number of entries.
    pub entries: u64,
    /// Smallest internal key.
    pub smallest: Vec<u8>,
    /// Largest internal key.
    pub largest: Vec<u8>,
    /// For an ingested file: the sequence number every entry reads as (the file stores 0).
    pub global_seq: Option<u64>,
}

impl FileDesc {
    /// Smallest logical key.
    pub fn smallest_logical(&self) -> &[u8] {
        logical_key(&self.smallest)
    }
    /// Largest logical key.
    pub fn largest_logical(&self) -> &[u8] {
        logical_key(&self.largest)
    }
    /// True when the file's logical key range intersects `[lo, hi]` (inclusive; `None` = unbounded).
    pub fn overlaps(&self, lo: Option<&[u8]>, hi: Option<&[u8]>) -> bool {
        !(lo.is_some_and(|lo| self.largest_logical() < lo)
            || hi.is_some_and(|hi| self.smallest_logical() > hi))
    }
}

/// A live SST file: its description, its open table, and its deletion state.
pub struct FileMeta {
    /// What the manifest says about the file.
    pub desc: FileDesc,
    /// The open table reader.
    pub table: Arc<Table>,
    /// Set while a compaction has the file as input.
    pub being_compacted: AtomicBool,
    obsolete: AtomicBool,
    fs: Arc<dyn FileSystem>,
    path: PathBuf,
}

impl std::fmt::Debug for FileMeta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileMeta")
            .field("desc", &self.desc)
            .finish()
    }
}

impl FileMeta {
    /// Wraps an opened table.
    pub fn new(desc: FileDesc, table: Arc<Table>, fs: Arc<dyn FileSystem>, path: PathBuf) -> Self {
        FileMeta {
            desc,
            table,
            being_compacted: AtomicBool::new(false),
            obsolete: AtomicBool::new(false),
            fs,
            path,
        }
    }

    /// Marks the file for deletion once no version references it.
    pub fn mark_obsolete(&self) {
        self.obsolete.store(true, AtomicOrdering::Release);
    }
}

impl Drop for FileMeta {
    fn drop(&mut self) {
        if self.obsolete.load(AtomicOrdering::Acquire) {
            // The last reader may be an executor thread: delete from a background thread then.
            let (fs, path) = (self.fs.clone(), std::mem::take(&mut self.path));
            crate::fs::guard::run_off_marked_thread(move || {
                if let Err(e) = fs.remove_file(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "could not delete obsolete table");
                }
            });
        }
    }
}

/// An immutable snapshot of the LSM tree's files.
#[derive(Debug, Clone, Default)]
pub struct Version {
    /// `levels[0]` holds overlapping files newest first; deeper levels hold
    /// non-overlapping files sorted by smallest key.
    pub levels: Vec<Vec<Arc<FileMeta>>>,
}

impl Version {
    /// An empty version with `num_levels` levels.
    pub fn new(num_levels: usize) -> Version {
        Version {
            levels: vec![Vec::new(); num_levels],
        }
    }

    /// Total bytes of the files in `level`.
    pub fn level_bytes(&self, level: usize) -> u64 {
        self.levels[level].iter().map(|f| f.desc.size).sum()
    }

    /// Index of the file in sorted `level` (>= 1) that may hold `logical`, if any.
    pub fn find_file(&self, level: usize, logical: &[u8]) -> Option<usize> {
        let files = &self.levels[level];
        let i = files.partition_point(|f| f.desc.largest_logical() < logical);
        (i < files.len() && files[i].desc.smallest_logical() <= logical).then_some(i)
    }

    /// The files that may hold `logical`: overlapping L0 files (newest first), then the one
    /// file of each deeper level whose range contains it.
    pub fn files_for_key<'a>(
        &'a self,
        logical: &'a [u8],
    ) -> impl Iterator<Item = &'a Arc<FileMeta>> + 'a {
        self.levels[0]
            .iter()
            .filter(move |f| f.desc.overlaps(Some(logical), Some(logical)))
            .chain(
                (1..self.levels.len())
                    .filter_map(move |l| self.find_file(l, logical).map(|i| &self.levels[l][i])),
            )
    }

    /// Files of `level` whose logical range intersects `[lo, hi]`.
    pub fn overlapping(
        &self,
        level: usize,
        lo: Option<&[u8]>,
        hi: Option<&[u8]>,
    ) -> Vec<Arc<FileMeta>> {
        self.levels[level]
            .iter()
            .filter(|f| f.desc.overlaps(lo, hi))
            .cloned()
            .collect()
    }

    /// Applies an edit, producing the next version. `opened` supplies the new files.
    pub fn apply(&self, edit: &VersionEdit, opened: &[Arc<FileMeta>]) -> Version {
        let mut next = self.clone();
        for (level, number) in &edit.deleted {
            next.levels[*level].retain(|f| f.desc.number != *number);
        }
        for (level, desc) in &edit.added {
            let meta = opened
                .iter()
                .find(|m| m.desc.number == desc.number)
                .expect("every added file is opened before the edit is applied");
            next.levels[*level].push(meta.clone());
        }
        next.levels[0].sort_by_key(|f| std::cmp::Reverse(f.desc.number));
        for files in next.levels.iter_mut().skip(1) {
            files.sort_by(|a, b| compare_internal(&a.desc.smallest, &b.desc.smallest));
        }
        next.check_invariants();
        next
    }

    /// Asserts that levels >= 1 hold non-overlapping files (debug builds).
    pub fn check_invariants(&self) {
        if cfg!(debug_assertions) {
            for files in self.levels.iter().skip(1) {
                for w in files.windows(2) {
                    assert!(
                        w[0].desc
                            .largest_logical()
                            .cmp(w[1].desc.smallest_logical())
                            == Ordering::Less,
                        "overlapping files {} and {} in one level",
                        w[0].desc.number,
                        w[1].desc.number
                    );
                }
            }
        }
    }
}

/// A change to the database's persistent state, recorded in the manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VersionEdit {
    /// Files added, with their level.
    pub added: Vec<(usize, FileDesc)>,
    /// Files removed: (level, number).
    pub deleted: Vec<(usize, u64)>,
    /// Next unused file number.
    pub next_file_number: Option<u64>,
    /// Highest sequence number whose data is in SST files.
    pub last_seq: Option<u64>,
    /// Oldest WAL generation whose batches are not yet in SST files.
    pub log_floor: Option<u64>,
    /// Oldest WAL generation whose opaque records the owner still needs.
    pub opaque_floor: Option<u64>,
    /// Per-region applied raft index covered by SST files: (region, index).
    pub applied: Vec<(u64, u64)>,
    /// Manifest format version (present in the first edit of each manifest).
    pub format_version: Option<u64>,
    /// Sequence numbers up to this one are used (by ingested files): recovery starts above it.
    pub seq_floor: Option<u64>,
    /// Value-log segments that become live with this edit.
    pub segments_added: Vec<SegmentMeta>,
    /// Value-log segments that stop being live (collected by GC).
    pub segments_deleted: Vec<u64>,
    /// Garbage found in live segments: (segment, record bytes) added to its discard count.
    pub discards: Vec<(u64, u64)>,
    /// The GC safe point a value-log GC relied on; the safe point never restarts below it.
    pub gc_safe_point: Option<u64>,
    /// The transaction GC safe point a flush or compaction collected `NS_KV`'s write
    /// records under; the transaction safe point never restarts below it.
    pub txn_safe_point: Option<u64>,
}

const TAG_NEXT_FILE: u64 = 1;
const TAG_LAST_SEQ: u64 = 2;
const TAG_LOG_FLOOR: u64 = 3;
const TAG_ADD_FILE: u64 = 4;
const TAG_DELETE_FILE: u64 = 5;
const TAG_APPLIED: u64 = 6;
const TAG_OPAQUE_FLOOR: u64 = 7;
const TAG_FORMAT: u64 = 8;
const TAG_ADD_SEGMENT: u64 = 9;
const TAG_DELETE_SEGMENT: u64 = 10;
const TAG_DISCARD: u64 = 11;
const TAG_GC_SAFE_POINT: u64 = 12;
const TAG_SEQ_FLOOR: u64 = 13;
const TAG_ADD_INGESTED_FILE: u64 = 14;
const TAG_TXN_SAFE_POINT: u64 = 15;

/// The manifest format this build writes and the highest it reads.
pub const MANIFEST_FORMAT: u64 = 2;

impl VersionEdit {
    /// Serializes the edit.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(v) = self.format_version {
            put_varint(&mut out, TAG_FORMAT);
            put_varint(&mut out, v);
        }
        for (tag, v) in [
            (TAG_NEXT_FILE, self.next_file_number),
            (TAG_LAST_SEQ, self.last_seq),
            (TAG_LOG_FLOOR, self.log_floor),
            (TAG_OPAQUE_FLOOR, self.opaque_floor),
            (TAG_SEQ_FLOOR, self.seq_floor),
            (TAG_GC_SAFE_POINT, self.gc_safe_point),
            (TAG_TXN_SAFE_POINT, self.txn_safe_point),
        ] {
            if let Some(v) = v {
                put_varint(&mut out, tag);
                put_varint(&mut out, v);
            }
        }
        for (level, number) in &self.deleted {
            put_varint(&mut out, TAG_DELETE_FILE);
            put_varint(&mut out, *level as u64);
            put_varint(&mut out, *number);
        }
        for (level, f) in &self.added {
            let tag = match f.global_seq {
                Some(_) => TAG_ADD_INGESTED_FILE,
                None => TAG_ADD_FILE,
            };
            put_varint(&mut out, tag);
            put_varint(&mut out, *level as u64);
            put_varint(&mut out, f.number);
            put_varint(&mut out, f.size);
            put_varint(&mut out, f.entries);
            put_bytes(&mut out, &f.smallest);
            put_bytes(&mut out, &f.largest);
            if let Some(g) = f.global_seq {
                put_varint(&mut out, g);
            }
        }
        for (region, index) in &self.applied {
            put_varint(&mut out, TAG_APPLIED);
            put_varint(&mut out, *region);
            put_varint(&mut out, *index);
        }
        self.encode_value_log(&mut out);
        out
    }

    /// Appends the value-log tags (segments deleted, added, then discards).
    fn encode_value_log(&self, out: &mut Vec<u8>) {
        for id in &self.segments_deleted {
            put_varint(out, TAG_DELETE_SEGMENT);
            put_varint(out, *id);
        }
        for m in &self.segments_added {
            put_varint(out, TAG_ADD_SEGMENT);
            put_varint(out, m.id);
            put_varint(out, m.file_bytes);
            put_varint(out, m.records);
            put_varint(out, m.record_bytes);
        }
        for (id, bytes) in &self.discards {
            put_varint(out, TAG_DISCARD);
            put_varint(out, *id);
            put_varint(out, *bytes);
        }
    }

    /// Decodes the fields of value-log tag `tag`; `Ok(false)` when `tag` is not one of them.
    fn decode_value_log(&mut self, tag: u64, r: &mut Reader) -> Result<bool, String> {
        let trunc = || "truncated edit".to_string();
        match tag {
            TAG_GC_SAFE_POINT => self.gc_safe_point = Some(r.varint().ok_or_else(trunc)?),
            TAG_TXN_SAFE_POINT => self.txn_safe_point = Some(r.varint().ok_or_else(trunc)?),
            TAG_DELETE_SEGMENT => self.segments_deleted.push(r.varint().ok_or_else(trunc)?),
            TAG_ADD_SEGMENT => {
                let id = r.varint().ok_or_else(trunc)?;
                let file_bytes = r.varint().ok_or_else(trunc)?;
                let records = r.varint().ok_or_else(trunc)?;
                let record_bytes = r.varint().ok_or_else(trunc)?;
                let frame = (SEGMENT_HEADER_LEN + SEGMENT_FOOTER_LEN) as u64;
                if record_bytes.checked_add(frame) != Some(file_bytes)
                    || records.saturating_mul(RECORD_HEADER_LEN as u64) > record_bytes
                {
                    return Err(format!(
                        "segment {id}: {records} records of {record_bytes} bytes do not fit a \
                         file of {file_bytes} bytes"
                    ));
                }
                self.segments_added.push(SegmentMeta {
                    id,
                    file_bytes,
                    records,
                    record_bytes,
                });
            }
            TAG_DISCARD => {
                let id = r.varint().ok_or_else(trunc)?;
                let bytes = r.varint().ok_or_else(trunc)?;
                self.discards.push((id, bytes));
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Parses an edit; `Err` carries what was wrong.
    pub fn decode(buf: &[u8]) -> Result<VersionEdit, String> {
        let mut r = Reader::new(buf);
        let mut e = VersionEdit::default();
        let trunc = || "truncated edit".to_string();
        while !r.is_empty() {
            let tag = r.varint().ok_or_else(trunc)?;
            match tag {
                TAG_FORMAT => e.format_version = Some(r.varint().ok_or_else(trunc)?),
                TAG_NEXT_FILE => e.next_file_number = Some(r.varint().ok_or_else(trunc)?),
                TAG_LAST_SEQ => e.last_seq = Some(r.varint().ok_or_else(trunc)?),
                TAG_LOG_FLOOR => e.log_floor = Some(r.varint().ok_or_else(trunc)?),
                TAG_OPAQUE_FLOOR => e.opaque_floor = Some(r.varint().ok_or_else(trunc)?),
                TAG_SEQ_FLOOR => e.seq_floor = Some(r.varint().ok_or_else(trunc)?),
                TAG_DELETE_FILE => {
                    let level = r.varint().ok_or_else(trunc)? as usize;
                    let number = r.varint().ok_or_else(trunc)?;
                    e.deleted.push((level, number));
                }
                TAG_ADD_FILE | TAG_ADD_INGESTED_FILE => {
                    let level = r.varint().ok_or_else(trunc)? as usize;
                    let number = r.varint().ok_or_else(trunc)?;
                    let size = r.varint().ok_or_else(trunc)?;
                    let entries = r.varint().ok_or_else(trunc)?;
                    let smallest = r.bytes().ok_or_else(trunc)?.to_vec();
                    let largest = r.bytes().ok_or_else(trunc)?.to_vec();
                    if smallest.len() <= crate::key::TRAILER_LEN
                        || largest.len() <= crate::key::TRAILER_LEN
                    {
                        return Err(format!("file {number} has a malformed key range"));
                    }
                    let global_seq = if tag == TAG_ADD_INGESTED_FILE {
                        Some(r.varint().ok_or_else(trunc)?)
                    } else {
                        None
                    };
                    e.added.push((
                        level,
                        FileDesc {
                            number,
                            size,
                            entries,
                            smallest,
                            largest,
                            global_seq,
                        },
                    ));
                }
                TAG_APPLIED => {
                    let region = r.varint().ok_or_else(trunc)?;
                    let index = r.varint().ok_or_else(trunc)?;
                    e.applied.push((region, index));
                }
                t => {
                    if !e.decode_value_log(t, &mut r)? {
                        return Err(format!("unknown edit tag {t}"));
                    }
                }
            }
        }
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ikey() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 17..40)
    }

    proptest! {
        #[test]
        fn edit_roundtrip(
            added in proptest::collection::vec((0usize..7, any::<u64>(), any::<u64>(), any::<u64>(), ikey(), ikey()), 0..5),
            deleted in proptest::collection::vec((0usize..7, any::<u64>()), 0..5),
            nf in proptest::option::of(any::<u64>()), ls in proptest::option::of(any::<u64>()),
            lf in proptest::option::of(any::<u64>()), of in proptest::option::of(any::<u64>()),
            applied in proptest::collection::vec((any::<u64>(), any::<u64>()), 0..4),
            segs in proptest::collection::vec((any::<u64>(), 0u64..1 << 40, 0u64..1000), 0..4),
            seg_del in proptest::collection::vec(any::<u64>(), 0..3),
            discards in proptest::collection::vec((any::<u64>(), any::<u64>()), 0..4),
            gsp in proptest::option::of(any::<u64>()),
            tsp in proptest::option::of(any::<u64>()),
        ) {
            let e = VersionEdit {
                added: added.into_iter().map(|(l, n, s, c, a, b)| (l, FileDesc { number: n, size: s, entries: c, smallest: a, largest: b, global_seq: (n % 3 == 0).then_some(n / 3) })).collect(),
                deleted, next_file_number: nf, last_seq: ls, log_floor: lf, opaque_floor: of, applied,
                format_version: Some(MANIFEST_FORMAT),
                seq_floor: ls.map(|x| x / 2),
                segments_added: segs.into_iter().map(|(id, rb, n)| SegmentMeta {
                    id, file_bytes: rb + 52, records: n.min(rb / 12), record_bytes: rb,
                }).collect(),
                segments_deleted: seg_del,
                discards,
                gc_safe_point: gsp,
                txn_safe_point: tsp,
            };
            prop_assert_eq!(VersionEdit::decode(&e.encode()), Ok(e));
        }

        #[test]
        fn garbage_edit_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = VersionEdit::decode(&buf);
        }
    }

    fn seg(id: u64, record_bytes: u64) -> SegmentMeta {
        SegmentMeta {
            id,
            file_bytes: record_bytes + 52,
            records: record_bytes / 100,
            record_bytes,
        }
    }

    #[test]
    fn segment_tags_match_docs_format_md() {
        let e = VersionEdit {
            segments_deleted: vec![3],
            segments_added: vec![SegmentMeta {
                id: 9,
                file_bytes: 252,
                records: 2,
                record_bytes: 200,
            }],
            discards: vec![(9, 130)],
            gc_safe_point: Some(5),
            ..Default::default()
        };
        // Tags: 12 safe point, 10 delete, 9 add (id, file, records, record bytes), 11 discard.
        let want = [12, 5, 10, 3, 9, 9, 252, 1, 2, 200, 1, 11, 9, 130, 1];
        assert_eq!(e.encode(), want);
        assert_eq!(VersionEdit::decode(&want), Ok(e));
    }

    #[test]
    fn segment_tags_are_checked_strictly() {
        let mut e = VersionEdit {
            segments_added: vec![seg(7, 1000)],
            ..Default::default()
        };
        assert!(VersionEdit::decode(&e.encode()).is_ok());
        e.segments_added[0].file_bytes += 1;
        let err = VersionEdit::decode(&e.encode()).unwrap_err();
        assert!(err.contains("segment 7"), "{err}");
        e.segments_added[0] = SegmentMeta {
            records: 1000,
            ..seg(7, 1000)
        };
        assert!(
            VersionEdit::decode(&e.encode()).is_err(),
            "too many records"
        );
        let mut enc = VersionEdit {
            discards: vec![(7, 5)],
            ..Default::default()
        }
        .encode();
        enc.pop();
        assert!(VersionEdit::decode(&enc).is_err(), "truncated discard");
    }

    #[test]
    fn manifest_state_tracks_segments_and_refuses_inconsistent_edits() {
        use crate::manifest::ManifestState;
        let mut st = ManifestState::new(7);
        let add = VersionEdit {
            segments_added: vec![seg(3, 1000), seg(4, 500)],
            discards: vec![(3, 200)],
            gc_safe_point: Some(9),
            txn_safe_point: Some(11),
            ..Default::default()
        };
        st.apply(&add).unwrap();
        st.apply(&VersionEdit {
            discards: vec![(3, 5000)],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            st.discard.usage(3).unwrap().discarded,
            1000,
            "capped at the total"
        );
        for bad in [
            VersionEdit {
                segments_added: vec![seg(4, 10)],
                ..Default::default()
            },
            VersionEdit {
                segments_deleted: vec![5],
                ..Default::default()
            },
            VersionEdit {
                discards: vec![(5, 1)],
                ..Default::default()
            },
        ] {
            assert!(st.clone().apply(&bad).is_err(), "{bad:?}");
        }
        // The snapshot edit recreates segments, discards and the safe point.
        let mut again = ManifestState::new(7);
        again.apply(&st.snapshot_edit()).unwrap();
        assert_eq!(again.segments, st.segments);
        assert_eq!(again.discard, st.discard);
        assert_eq!(again.gc_safe_point, 9);
        assert_eq!(again.txn_safe_point, 11);
        // GC swaps segments in one edit: delete the old, add the new with its garbage.
        st.apply(&VersionEdit {
            segments_deleted: vec![3],
            segments_added: vec![seg(8, 300)],
            discards: vec![(8, 100)],
            ..Default::default()
        })
        .unwrap();
        assert!(!st.segments.contains_key(&3));
        assert_eq!(st.discard.usage(3), None);
        assert_eq!(st.discard.usage(8).unwrap().discarded, 100);
    }
}

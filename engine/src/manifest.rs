//! The manifest: a checksummed log of [`VersionEdit`]s, and `CURRENT`, which names it.
//!
//! `CURRENT` is replaced atomically (write temp, fdatasync, rename, fsync dir).
//! Each open writes a fresh manifest holding one snapshot edit, so a torn tail
//! of the previous manifest is never appended to.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, IoContext, Result};
use crate::filename::{self, CURRENT};
use crate::fs::{File, FileSystem, OpenMode};
use crate::record;
use crate::version::{FileDesc, VersionEdit, MANIFEST_FORMAT};
use crate::vlog::{DiscardStats, SegmentMeta};

const EDIT_RECORD: u8 = 1;

/// The database state that the manifest describes, folded from all its edits.
#[derive(Debug, Clone, Default)]
pub struct ManifestState {
    /// Files per level, keyed by file number.
    pub levels: Vec<BTreeMap<u64, FileDesc>>,
    /// Next unused file number.
    pub next_file_number: u64,
    /// Highest sequence number stored in SST files.
    pub last_seq: u64,
    /// Oldest WAL generation with unflushed batches.
    pub log_floor: u64,
    /// Oldest WAL generation whose opaque records the owner still needs.
    pub opaque_floor: Option<u64>,
    /// Applied raft index per region covered by SST files.
    pub applied: BTreeMap<u64, u64>,
    /// Highest sequence number used by ingested files (recovery starts above it).
    pub seq_floor: u64,
    /// Live value-log segments by id.
    pub segments: BTreeMap<u64, SegmentMeta>,
    /// Total and discarded record bytes of each live segment.
    pub discard: DiscardStats,
    /// Highest GC safe point a value-log GC relied on (0: none).
    pub gc_safe_point: u64,
    /// Highest transaction GC safe point a flush or compaction collected under (0: none).
    pub txn_safe_point: u64,
}

impl ManifestState {
    /// An empty state with `num_levels` levels.
    pub fn new(num_levels: usize) -> Self {
        ManifestState {
            levels: vec![BTreeMap::new(); num_levels],
            next_file_number: 1,
            ..Default::default()
        }
    }

    /// Folds one edit into the state; `Err` names what is inconsistent.
    pub fn apply(&mut self, e: &VersionEdit) -> Result<(), String> {
        if let Some(v) = e.format_version {
            if v != MANIFEST_FORMAT {
                return Err(format!(
                    "manifest format {v} is not this build's ({MANIFEST_FORMAT})"
                ));
            }
        }
        for (level, number) in &e.deleted {
            let files = self
                .levels
                .get_mut(*level)
                .ok_or_else(|| format!("level {level} out of range"))?;
            if files.remove(number).is_none() {
                return Err(format!(
                    "edit deletes unknown file {number} from level {level}"
                ));
            }
        }
        for (level, f) in &e.added {
            let files = self
                .levels
                .get_mut(*level)
                .ok_or_else(|| format!("level {level} out of range"))?;
            files.insert(f.number, f.clone());
        }
        if let Some(v) = e.next_file_number {
            self.next_file_number = self.next_file_number.max(v);
        }
        if let Some(v) = e.last_seq {
            self.last_seq = self.last_seq.max(v);
        }
        if let Some(v) = e.log_floor {
            self.log_floor = self.log_floor.max(v);
        }
        if let Some(v) = e.seq_floor {
            self.seq_floor = self.seq_floor.max(v);
        }
        if let Some(v) = e.opaque_floor {
            self.opaque_floor = Some(v);
        }
        for (region, index) in &e.applied {
            let slot = self.applied.entry(*region).or_insert(0);
            *slot = (*slot).max(*index);
        }
        self.apply_value_log(e)
    }

    /// Folds the value-log part of an edit: segments deleted, then added, then discards.
    fn apply_value_log(&mut self, e: &VersionEdit) -> Result<(), String> {
        for id in &e.segments_deleted {
            if self.segments.remove(id).is_none() {
                return Err(format!("edit deletes unknown value-log segment {id}"));
            }
            self.discard.remove_segment(*id);
        }
        for m in &e.segments_added {
            if self.segments.insert(m.id, *m).is_some() {
                return Err(format!("edit adds value-log segment {} twice", m.id));
            }
            self.discard.add_segment(m.id, m.record_bytes);
        }
        for (id, bytes) in &e.discards {
            if !self.discard.add_discard(*id, *bytes) {
                return Err(format!(
                    "edit discards bytes of unknown value-log segment {id}"
                ));
            }
        }
        if let Some(v) = e.gc_safe_point {
            self.gc_safe_point = self.gc_safe_point.max(v);
        }
        if let Some(v) = e.txn_safe_point {
            self.txn_safe_point = self.txn_safe_point.max(v);
        }
        Ok(())
    }

    /// One edit that recreates this whole state.
    pub fn snapshot_edit(&self) -> VersionEdit {
        VersionEdit {
            added: self
                .levels
                .iter()
                .enumerate()
                .flat_map(|(l, files)| files.values().map(move |f| (l, f.clone())))
                .collect(),
            deleted: Vec::new(),
            next_file_number: Some(self.next_file_number),
            last_seq: Some(self.last_seq),
            log_floor: Some(self.log_floor),
            opaque_floor: self.opaque_floor,
            applied: self.applied.iter().map(|(r, i)| (*r, *i)).collect(),
            format_version: Some(MANIFEST_FORMAT),
            seq_floor: (self.seq_floor > 0).then_some(self.seq_floor),
            segments_added: self.segments.values().copied().collect(),
            segments_deleted: Vec::new(),
            discards: self
                .discard
                .iter()
                .filter(|(_, u)| u.discarded > 0)
                .map(|(id, u)| (id, u.discarded))
                .collect(),
            gc_safe_point: (self.gc_safe_point > 0).then_some(self.gc_safe_point),
            txn_safe_point: (self.txn_safe_point > 0).then_some(self.txn_safe_point),
        }
    }
}

/// Reads `CURRENT` and folds the manifest it names; `None` when there is no database yet.
pub fn load(
    fs: &dyn FileSystem,
    dir: &Path,
    num_levels: usize,
) -> Result<Option<(ManifestState, u64)>> {
    let current = dir.join(CURRENT);
    if !fs.exists(&current) {
        return Ok(None);
    }
    let name = read_all(fs, &current)?;
    let name = std::str::from_utf8(&name)
        .ok()
        .and_then(|s| s.strip_suffix('\n'))
        .filter(|s| !s.contains('/'))
        .ok_or_else(|| Error::corruption(&current, 0, "CURRENT does not name a manifest"))?
        .to_string();
    let number = match filename::parse(&name) {
        Some(filename::FileKind::Manifest(n)) => n,
        _ => {
            return Err(Error::corruption(
                &current,
                0,
                format!("CURRENT names {name:?}, not a manifest"),
            ))
        }
    };
    let path = dir.join(&name);
    let buf = read_all(fs, &path)?;
    let scan = record::scan(&buf, 0);
    if let Some((off, reason)) = scan.bad {
        if scan.mid_log {
            return Err(Error::corruption(&path, off as u64, reason));
        }
        tracing::warn!(path = %path.display(), offset = off, reason, "ignoring torn manifest tail");
    }
    let mut state = ManifestState::new(num_levels);
    if scan.records.is_empty() {
        return Err(Error::corruption(&path, 0, "manifest holds no edit"));
    }
    for (rtype, range) in scan.records {
        if rtype != EDIT_RECORD {
            return Err(Error::corruption(
                &path,
                range.start as u64,
                format!("unknown record type {rtype}"),
            ));
        }
        let edit = VersionEdit::decode(&buf[range.clone()])
            .map_err(|m| Error::corruption(&path, range.start as u64, m))?;
        // Format 1 (8-byte key trailers, no column families) is not readable by this build.
        if let Some(v) = edit.format_version.filter(|v| *v != MANIFEST_FORMAT) {
            return Err(Error::UnsupportedFormat {
                path,
                version: v as u32,
                max: MANIFEST_FORMAT as u32,
            });
        }
        state
            .apply(&edit)
            .map_err(|m| Error::corruption(&path, range.start as u64, m))?;
    }
    Ok(Some((state, number)))
}

fn read_all(fs: &dyn FileSystem, path: &Path) -> Result<Vec<u8>> {
    let f = fs.open(path, OpenMode::Read).ctx("open", path)?;
    let len = f.len().ctx("stat", path)?;
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, 0).ctx("read", path)?;
    Ok(buf)
}

/// Appends edits to the live manifest, each made durable before it returns.
pub struct ManifestWriter {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    number: u64,
    path: PathBuf,
    file: Arc<dyn File>,
    offset: u64,
}

impl ManifestWriter {
    /// Writes manifest `number` holding `snapshot`, makes it durable and points `CURRENT` at it.
    pub fn create(
        fs: Arc<dyn FileSystem>,
        dir: &Path,
        number: u64,
        snapshot: &VersionEdit,
    ) -> Result<Self> {
        let path = dir.join(filename::manifest_name(number));
        let file = fs
            .open(&path, OpenMode::CreateTruncate)
            .ctx("create", &path)?;
        let mut w = ManifestWriter {
            fs,
            dir: dir.to_path_buf(),
            number,
            path,
            file,
            offset: 0,
        };
        w.append(snapshot)?;
        w.fs.sync_dir(dir).ctx("fsync dir", dir)?;
        set_current(&*w.fs, dir, &filename::manifest_name(number))?;
        Ok(w)
    }

    /// Appends one edit and fdatasyncs it.
    pub fn append(&mut self, edit: &VersionEdit) -> Result<()> {
        let mut buf = Vec::new();
        record::encode(&mut buf, 0, EDIT_RECORD, &edit.encode());
        self.file
            .write_all_at(&buf, self.offset)
            .ctx("write", &self.path)?;
        self.file.sync_data().ctx("fdatasync", &self.path)?;
        self.offset += buf.len() as u64;
        Ok(())
    }

    /// Bytes written to this manifest.
    pub fn len(&self) -> u64 {
        self.offset
    }

    /// True when nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.offset == 0
    }

    /// This manifest's file number.
    pub fn number(&self) -> u64 {
        self.number
    }

    /// Removes manifests other than this one (after `CURRENT` points here).
    pub fn remove_others(&self) -> Result<()> {
        let names = self.fs.list_dir(&self.dir).ctx("list", &self.dir)?;
        for name in names {
            if let Some(filename::FileKind::Manifest(n)) = filename::parse(&name) {
                if n != self.number {
                    let p = self.dir.join(&name);
                    self.fs.remove_file(&p).ctx("remove", &p)?;
                }
            }
        }
        Ok(())
    }
}

/// Atomically points `CURRENT` at `manifest_name`.
fn set_current(fs: &dyn FileSystem, dir: &Path, manifest_name: &str) -> Result<()> {
    let tmp = dir.join("CURRENT.tmp");
    let f = fs
        .open(&tmp, OpenMode::CreateTruncate)
        .ctx("create", &tmp)?;
    f.write_all_at(format!("{manifest_name}\n").as_bytes(), 0)
        .ctx("write", &tmp)?;
    f.sync_data().ctx("fdatasync", &tmp)?;
    drop(f);
    let current = dir.join(CURRENT);
    fs.rename(&tmp, &current).ctx("rename", &current)?;
    fs.sync_dir(dir).ctx("fsync dir", dir)?;
    Ok(())
}

//! [`ValueSeparator`]: moves large values out of the entries a flush or compaction writes.
//!
//! An entry of kind `Put` (or `PutWithExpiry`) whose value is at least its column family's
//! threshold is appended to the job's current segment, keyed by the entry's internal key
//! with the pointer kind; the table then stores kind `ValuePointer` with the 20-byte pointer
//! (or `ValuePointerWithExpiry` with `[expiry][pointer]`). Segments are finished (fdatasync)
//! when full and when the job finishes; they become live in the job's manifest edit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::segment::{SegmentMeta, SegmentWriter, SegmentWriterOptions};
use crate::error::Result;
use crate::filename;
use crate::fs::FileSystem;
use crate::key::{
    encode_trailer, logical_key, parse_trailer, parse_version, Kind, EXPIRY_LEN, PREFIX_LEN,
};
use crate::options::Options;

/// Which values go to the value log: thresholds per column family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thresholds {
    /// Threshold of column families without an override (`None`: values stay inline).
    pub default: Option<usize>,
    /// Overrides by column family byte.
    pub per_cf: BTreeMap<u8, Option<usize>>,
}

impl Thresholds {
    /// The thresholds `opts` configures; `None` when no column family separates values.
    pub fn from_options(opts: &Options) -> Option<Thresholds> {
        if !opts.value_log_enabled() {
            return None;
        }
        Some(Thresholds {
            default: Some(opts.value_threshold_bytes).filter(|t| *t != 0 && *t != usize::MAX),
            per_cf: opts
                .value_threshold_per_cf
                .keys()
                .map(|cf| (*cf, opts.value_threshold_for(*cf)))
                .collect(),
        })
    }

    /// The threshold of the column family of `logical` (`None`: keep values inline).
    pub fn for_logical(&self, logical: &[u8]) -> Option<usize> {
        match logical.get(PREFIX_LEN - 1) {
            Some(cf) => self.per_cf.get(cf).copied().unwrap_or(self.default),
            None => self.default,
        }
    }
}

/// What a job needs to write segments.
#[derive(Clone)]
pub struct SeparatorSettings {
    /// The database directory.
    pub dir: PathBuf,
    /// The filesystem.
    pub fs: Arc<dyn FileSystem>,
    /// Allocator of segment ids (shared with table numbers).
    pub next_file_number: Arc<AtomicU64>,
    /// Which values are separated.
    pub thresholds: Thresholds,
    /// Segment size and buffering.
    pub writer: SegmentWriterOptions,
}

impl std::fmt::Debug for SeparatorSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeparatorSettings")
            .field("dir", &self.dir)
            .field("thresholds", &self.thresholds)
            .field("writer", &self.writer)
            .finish_non_exhaustive()
    }
}

/// Separates large values of one job into segments (see the module docs).
pub struct ValueSeparator {
    settings: SeparatorSettings,
    current: Option<SegmentWriter>,
    finished: Vec<SegmentMeta>,
    key: Vec<u8>,
    value: Vec<u8>,
    /// Values moved to the value log by this job, and their bytes.
    pub separated: (u64, u64),
}

impl ValueSeparator {
    /// A separator writing new segments with `settings`.
    pub fn new(settings: SeparatorSettings) -> ValueSeparator {
        ValueSeparator {
            settings,
            current: None,
            finished: Vec::new(),
            key: Vec::new(),
            value: Vec::new(),
            separated: (0, 0),
        }
    }

    /// If the entry (`ikey`, stored `value`) is separated, appends its value to a segment and
    /// returns the key and value the table stores instead; `None` keeps the entry as is.
    pub fn separate(&mut self, ikey: &[u8], value: &[u8]) -> Result<Option<(&[u8], &[u8])>> {
        let (seq, kind) = parse_trailer(ikey);
        let (new_kind, expiry, user_value) = match Kind::from_u8(kind) {
            Some(Kind::Put) => (Kind::ValuePointer, None, value),
            Some(Kind::PutWithExpiry) if value.len() >= EXPIRY_LEN => (
                Kind::ValuePointerWithExpiry,
                Some(&value[..EXPIRY_LEN]),
                &value[EXPIRY_LEN..],
            ),
            _ => return Ok(None),
        };
        let logical = logical_key(ikey);
        match self.settings.thresholds.for_logical(logical) {
            Some(t) if user_value.len() >= t => {}
            _ => return Ok(None),
        }
        self.key.clear();
        self.key.extend_from_slice(logical);
        self.key
            .extend_from_slice(&encode_trailer(parse_version(ikey), seq, new_kind as u8));
        if self.current.is_none() {
            let id = self
                .settings
                .next_file_number
                .fetch_add(1, Ordering::SeqCst);
            self.current = Some(SegmentWriter::create(
                self.settings.fs.clone(),
                &self.settings.dir,
                id,
                self.settings.writer,
            )?);
        }
        let w = self.current.as_mut().expect("a writer was just created");
        let ptr = w.add(&self.key, user_value)?;
        self.separated.0 += 1;
        self.separated.1 += user_value.len() as u64;
        if w.is_full() {
            self.finish_current()?;
        }
        self.value.clear();
        if let Some(e) = expiry {
            self.value.extend_from_slice(e);
        }
        ptr.encode_to(&mut self.value);
        Ok(Some((&self.key, &self.value)))
    }

    fn finish_current(&mut self) -> Result<()> {
        if let Some(w) = self.current.take() {
            let path = w.path().to_path_buf();
            match w.finish() {
                Ok(m) => self.finished.push(m),
                Err(e) => {
                    remove_quietly(&*self.settings.fs, &path);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Finishes (fdatasyncs) the segment being written; the caller syncs the directory.
    pub fn finish(&mut self) -> Result<()> {
        self.finish_current()
    }

    /// The finished segments, in the order written.
    pub fn segments(&self) -> &[SegmentMeta] {
        &self.finished
    }

    /// Deletes every segment file this job wrote (after a failure or cancellation).
    pub fn abandon(&mut self) {
        if let Some(w) = self.current.take() {
            let path = w.path().to_path_buf();
            if w.abandon().is_err() {
                remove_quietly(&*self.settings.fs, &path);
            }
        }
        for m in self.finished.drain(..) {
            remove_quietly(
                &*self.settings.fs,
                &filename::vlog(&self.settings.dir, m.id),
            );
        }
    }
}

fn remove_quietly(fs: &dyn FileSystem, p: &Path) {
    if fs.exists(p) {
        if let Err(e) = fs.remove_file(p) {
            tracing::warn!(path = %p.display(), error = %e, "could not remove an abandoned value-log segment");
        }
    }
}

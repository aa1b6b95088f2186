//! The value log: key-value separation for large values (WiscKey).
//!
//! Values of at least [`DEFAULT_VALUE_THRESHOLD`] bytes are appended to a value-log
//! *segment* by a [`SegmentWriter`] and the table stores the returned [`ValuePointer`]
//! (20 bytes) instead. Logged writes are separated at commit ([`write_path`]: the WAL holds
//! the pointer, the value is written once); values that reach a flush or compaction whole
//! (applied without the WAL, or written before separation was on) are separated there.
//! A segment is immutable once [`SegmentWriter::finish`]ed and becomes live through the same
//! manifest edit as the table that points into it. Reads resolve a pointer with
//! [`SegmentReader::read_value`]: one positional read of the whole record, checksum verified.
//!
//! Garbage: compaction reports the records it drops or overwrites to [`DiscardStats`];
//! [`gc::GcJob`] rewrites the live records of the segment with the most garbage into a new
//! segment and returns the relocations for the caller to re-point (see [`gc`] for the
//! protocol and its crash safety).
//!
//! Modules: [`pointer`](mod@pointer) (the pointer and its encoding), [`segment`] (file format, writer,
//! reader, iterator), [`discard`] (garbage accounting), [`gc`], [`separate`] (moving values
//! out of a flush or compaction), [`write_path`] (separation at commit and its recovery),
//! [`live`] (live segment handles, the reader cache, pointer reads). The byte format is in `docs/format.md`, "Value-log segments"; how the database
//! drives all of it (the manifest tags, the GC commit with its L0 relocation table) is in
//! `docs/architecture.md`, "Value log", and `db/vlog_gc.rs`.
//!
//! This module owns no database state: which segments are live, the discard statistics
//! and the id allocation belong to the caller (the manifest).

pub mod discard;
pub mod gc;
pub mod live;
pub mod pointer;
pub mod segment;
pub mod separate;
pub mod write_path;

#[cfg(test)]
mod tests;

use std::path::Path;

pub use discard::{DiscardStats, SegmentUsage};
pub use gc::{GcJob, GcOutcome, GcStep, Relocation};
pub use live::{LiveSegment, ReaderCache, Recycler, SegmentSet, ValueFetcher};
pub use pointer::{PointerError, ValuePointer};
pub use segment::{
    Record, RecordRef, SegmentIter, SegmentMeta, SegmentReader, SegmentWriter,
    SegmentWriterOptions, UnfinishedSegment,
};
pub use separate::{SeparatorSettings, Thresholds, ValueSeparator};
pub use write_path::{MemtableValues, RecoveredSegments, WriteLog, WriteLogSettings};

use crate::error::{IoContext, Result};
use crate::filename::{self, FileKind};
use crate::fs::FileSystem;

/// Default size from which a value is stored in the value log rather than in the table.
pub const DEFAULT_VALUE_THRESHOLD: usize = 2048;

/// Deletes segment `id` from `dir` (an orphan, an abandoned output, or a collected segment).
pub fn remove_segment(fs: &dyn FileSystem, dir: &Path, id: u64) -> Result<()> {
    let path = filename::vlog(dir, id);
    fs.remove_file(&path).ctx("remove", &path)
}

/// Ids of the segment files in `dir`, ascending (to find orphans on open).
pub fn list_segments(fs: &dyn FileSystem, dir: &Path) -> Result<Vec<u64>> {
    let mut ids: Vec<u64> = fs
        .list_dir(dir)
        .ctx("list", dir)?
        .iter()
        .filter_map(|n| match filename::parse(n) {
            Some(FileKind::ValueLog(id)) => Some(id),
            _ => None,
        })
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

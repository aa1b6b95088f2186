//! The write-ahead log: preallocated, recycled segments of checksummed records.
//!
//! Each segment `wal-<gen>.log` is preallocated to `Options::wal_segment_bytes`
//! (or is an obsolete segment renamed for reuse), so an fdatasync after an
//! append never has to commit a file-size change. Records carry the segment's
//! generation, which makes the stale contents of a recycled file read as the
//! end of the log. A segment that was rotated away from ends with an
//! end-of-segment record; only the newest segment may end in a torn tail.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, IoContext, Result};
use crate::filename::{self, FileKind};
use crate::fs::{File, FileSystem, OpenMode};
use crate::record::{self, HEADER_LEN};

/// A batch of key-value writes (payload: see [`crate::batch`]).
pub const REC_BATCH: u8 = 1;
/// An opaque record stored for the owner: payload `[tag u8][bytes]`.
pub const REC_OPAQUE: u8 = 2;
/// Marks the clean end of a segment that was rotated away from.
pub const REC_END_OF_SEGMENT: u8 = 3;

/// Where a record landed in the WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct WalPosition {
    /// Segment generation.
    pub segment: u64,
    /// Byte offset of the record within the segment.
    pub offset: u64,
}

/// The WAL writer: appends records to the active segment and rotates segments.
pub struct Wal {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    segment_bytes: u64,
    recycle_max: usize,
    gen: u64,
    path: PathBuf,
    file: Arc<dyn File>,
    offset: u64,
    synced_offset: u64,
    /// Generations of live segments, oldest first (the active one last).
    live: VecDeque<u64>,
    /// Obsolete segment files kept for reuse.
    recycle: Vec<u64>,
    buf: Vec<u8>,
}

impl Wal {
    /// Starts a new active segment `gen`; `live` lists older segments still needed, `recycle` reusable ones.
    pub fn create(
        fs: Arc<dyn FileSystem>,
        dir: &Path,
        gen: u64,
        segment_bytes: u64,
        recycle_max: usize,
        live: Vec<u64>,
        recycle: Vec<u64>,
    ) -> Result<Wal> {
        let mut recycle = recycle;
        recycle.sort_unstable();
        let (path, file) = new_segment(&*fs, dir, gen, segment_bytes, &mut recycle)?;
        let mut live: VecDeque<u64> = live.into();
        live.push_back(gen);
        let mut wal = Wal {
            fs,
            dir: dir.to_path_buf(),
            segment_bytes,
            recycle_max,
            gen,
            path,
            file,
            offset: 0,
            synced_offset: 0,
            live,
            recycle,
            buf: Vec::new(),
        };
        wal.trim_recycle()?;
        Ok(wal)
    }

    /// Generation of the active segment.
    pub fn active_segment(&self) -> u64 {
        self.gen
    }

    /// The active segment's file and path (for a background sync).
    pub fn active_file(&self) -> (Arc<dyn File>, PathBuf) {
        (self.file.clone(), self.path.clone())
    }

    /// Bytes written to the active segment but not yet fdatasync'ed.
    pub fn unsynced_bytes(&self) -> u64 {
        self.offset - self.synced_offset
    }

    /// True when appending `framed_bytes` (records with their headers) would first rotate to
    /// a new segment (which fdatasyncs the current one).
    pub fn append_rotates(&self, framed_bytes: usize) -> bool {
        self.offset + framed_bytes as u64 > self.segment_bytes - HEADER_LEN as u64
    }

    /// Appends records as one write; rotates first if they do not fit. Returns the first record's position.
    pub fn append(&mut self, records: &[(u8, &[u8])]) -> Result<WalPosition> {
        let framed: usize = records.iter().map(|(_, p)| HEADER_LEN + p.len()).sum();
        let limit = self.segment_bytes - HEADER_LEN as u64;
        if framed as u64 > limit {
            return Err(Error::InvalidArgument(format!(
                "a WAL write of {framed} bytes does not fit a {} byte segment",
                self.segment_bytes
            )));
        }
        if self.offset + framed as u64 > limit {
            self.rotate()?;
        }
        self.buf.clear();
        for (t, p) in records {
            record::encode(&mut self.buf, self.gen, *t, p);
        }
        let pos = WalPosition {
            segment: self.gen,
            offset: self.offset,
        };
        self.file
            .write_all_at(&self.buf, self.offset)
            .ctx("write", &self.path)?;
        self.offset += self.buf.len() as u64;
        Ok(pos)
    }

    /// Makes everything appended so far durable.
    pub fn sync(&mut self) -> Result<()> {
        if self.synced_offset < self.offset {
            crate::crash_point!("wal::before_sync");
            self.file.sync_data().ctx("fdatasync", &self.path)?;
            crate::crash_point!("wal::after_sync");
            self.synced_offset = self.offset;
        }
        Ok(())
    }

    /// Closes the active segment with an end marker and starts the next one.
    pub fn rotate(&mut self) -> Result<u64> {
        self.buf.clear();
        record::encode(&mut self.buf, self.gen, REC_END_OF_SEGMENT, &[]);
        self.file
            .write_all_at(&self.buf, self.offset)
            .ctx("write", &self.path)?;
        self.offset += self.buf.len() as u64;
        self.sync()?;
        let gen = self.gen + 1;
        let (path, file) = new_segment(
            &*self.fs,
            &self.dir,
            gen,
            self.segment_bytes,
            &mut self.recycle,
        )?;
        self.gen = gen;
        self.path = path;
        self.file = file;
        self.offset = 0;
        self.synced_offset = 0;
        self.live.push_back(gen);
        metrics::counter!("nokv_wal_segments_rotated_total").increment(1);
        Ok(gen)
    }

    /// Releases segments older than `floor` (never the active one): recycled or removed.
    pub fn release_below(&mut self, floor: u64) -> Result<()> {
        while let Some(&g) = self.live.front() {
            if g >= floor || g == self.gen {
                break;
            }
            self.live.pop_front();
            self.recycle.push(g);
        }
        self.trim_recycle()
    }

    /// The oldest live segment (the active one when no older one is needed).
    pub fn oldest_live(&self) -> u64 {
        self.live.front().copied().unwrap_or(self.gen)
    }

    /// Number of live segments (active included).
    pub fn live_segments(&self) -> usize {
        self.live.len()
    }

    fn trim_recycle(&mut self) -> Result<()> {
        self.recycle.sort_unstable();
        while self.recycle.len() > self.recycle_max {
            let g = self.recycle.remove(0);
            let p = filename::wal(&self.dir, g);
            self.fs.remove_file(&p).ctx("remove", &p)?;
        }
        Ok(())
    }
}

/// Opens segment `gen`: a recycled file renamed into place, or a new preallocated one.
fn new_segment(
    fs: &dyn FileSystem,
    dir: &Path,
    gen: u64,
    segment_bytes: u64,
    recycle: &mut Vec<u64>,
) -> Result<(PathBuf, Arc<dyn File>)> {
    let path = filename::wal(dir, gen);
    let file = if let Some(old) = recycle.pop() {
        let old_path = filename::wal(dir, old);
        fs.rename(&old_path, &path).ctx("rename", &old_path)?;
        let f = fs.open(&path, OpenMode::ReadWrite).ctx("open", &path)?;
        if f.len().ctx("stat", &path)? < segment_bytes {
            f.allocate(segment_bytes).ctx("fallocate", &path)?;
            f.sync_all().ctx("fsync", &path)?;
        }
        f
    } else {
        let f = fs.open(&path, OpenMode::CreateNew).ctx("create", &path)?;
        f.allocate(segment_bytes).ctx("fallocate", &path)?;
        f.sync_all().ctx("fsync", &path)?;
        f
    };
    fs.sync_dir(dir).ctx("fsync dir", dir)?;
    Ok((path, file))
}

/// One record met while replaying the WAL.
pub enum Replayed<'a> {
    /// A batch payload from a segment at or above the log floor.
    Batch(&'a [u8]),
    /// An opaque record: (tag, payload).
    Opaque(u8, &'a [u8]),
}

/// What recovery found in the WAL directory.
#[derive(Debug, Default)]
pub struct ReplayOutcome {
    /// Highest segment generation present (0 if none).
    pub max_gen: u64,
    /// Segments at or above the floor, oldest first.
    pub live: Vec<u64>,
    /// Segments below the floor, reusable.
    pub obsolete: Vec<u64>,
    /// A torn tail that was cut off: (segment path, offset).
    pub torn_tail: Option<(PathBuf, u64)>,
    /// Where the caller cut the log (its callback returned `false`): (segment path, offset
    /// of the first record dropped).
    pub cut: Option<(PathBuf, u64)>,
}

/// Replays every segment at or above `min(log_floor, opaque_floor)` in order.
///
/// Batches are reported only from segments at or above `log_floor`. A torn
/// tail of the newest segment is sealed with an end marker; damage anywhere
/// else fails with [`Error::Corruption`] naming the file and offset.
///
/// `on_record` returns `false` to cut the log at that record (a batch whose value-log
/// values never became durable, so no sync covered it or anything after it): the record's
/// segment is sealed at its offset and every later segment at offset 0, durably, so no
/// later recovery replays what was dropped.
pub fn replay(
    fs: &dyn FileSystem,
    dir: &Path,
    log_floor: u64,
    opaque_floor: Option<u64>,
    max_segment_bytes: u64,
    mut on_record: impl FnMut(Replayed<'_>, &Path, u64) -> Result<bool>,
) -> Result<ReplayOutcome> {
    let floor = opaque_floor.map_or(log_floor, |o| o.min(log_floor));
    let mut gens: Vec<u64> = fs
        .list_dir(dir)
        .ctx("list", dir)?
        .iter()
        .filter_map(|n| match filename::parse(n) {
            Some(FileKind::Wal(g)) => Some(g),
            _ => None,
        })
        .collect();
    gens.sort_unstable();
    let mut out = ReplayOutcome {
        max_gen: gens.last().copied().unwrap_or(0),
        ..Default::default()
    };
    out.obsolete = gens.iter().copied().filter(|g| *g < floor).collect();
    let live: Vec<u64> = gens.iter().copied().filter(|g| *g >= floor).collect();
    for w in live.windows(2) {
        if w[1] != w[0] + 1 {
            let p = filename::wal(dir, w[0] + 1);
            return Err(Error::corruption(p, 0, "WAL segment is missing"));
        }
    }
    for (i, &gen) in live.iter().enumerate() {
        let newest = i + 1 == live.len();
        let path = filename::wal(dir, gen);
        let file = fs.open(&path, OpenMode::ReadWrite).ctx("open", &path)?;
        let len = file.len().ctx("stat", &path)?;
        if len > max_segment_bytes.max(1 << 30) {
            return Err(Error::corruption(
                &path,
                0,
                format!("segment of {len} bytes is larger than any segment the engine writes"),
            ));
        }
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, 0).ctx("read", &path)?;
        let scan = record::scan(&buf, gen);
        let mut sealed = false;
        for (rtype, range) in &scan.records {
            let off = (range.start - HEADER_LEN) as u64;
            if sealed {
                // Whatever follows the marker was written by an attempt that never completed.
                break;
            }
            let keep = match *rtype {
                REC_BATCH if gen >= log_floor => {
                    on_record(Replayed::Batch(&buf[range.clone()]), &path, off)?
                }
                REC_BATCH => true,
                REC_OPAQUE => {
                    let p = &buf[range.clone()];
                    let (&tag, rest) = p.split_first().ok_or_else(|| {
                        Error::corruption(&path, off, "opaque record without a tag")
                    })?;
                    on_record(Replayed::Opaque(tag, rest), &path, off)?
                }
                REC_END_OF_SEGMENT => {
                    sealed = true;
                    true
                }
                t => {
                    return Err(Error::corruption(
                        &path,
                        off,
                        format!("unknown WAL record type {t}"),
                    ))
                }
            };
            if !keep {
                tracing::warn!(path = %path.display(), offset = off,
                    "cutting the WAL at a batch whose value-log values are not durable");
                seal_at(&*file, &path, gen, off)?;
                for &later in &live[i + 1..] {
                    let p = filename::wal(dir, later);
                    let f = fs.open(&p, OpenMode::ReadWrite).ctx("open", &p)?;
                    seal_at(&*f, &p, later, 0)?;
                }
                out.cut = Some((path.clone(), off));
                out.live = live;
                return Ok(out);
            }
        }
        if sealed {
            // The segment was closed cleanly; bytes after the marker do not matter.
        } else if let Some((off, reason)) = scan.bad {
            if scan.mid_log || !newest {
                return Err(Error::corruption(&path, off as u64, reason));
            }
        } else if !newest {
            return Err(Error::corruption(
                &path,
                scan.end as u64,
                "segment ends without its end marker",
            ));
        }
        if newest && !sealed {
            if let Some((off, reason)) = scan.bad {
                tracing::warn!(path = %path.display(), offset = off, reason, "truncating torn WAL tail");
                out.torn_tail = Some((path.clone(), off as u64));
            }
            // Seal the segment so that the next recovery reads it as a closed one.
            seal_at(&*file, &path, gen, scan.end as u64)?;
        }
    }
    out.live = live;
    Ok(out)
}

/// Writes an end-of-segment record for generation `gen` at `offset` and fdatasyncs: the
/// segment reads as ending there.
fn seal_at(file: &dyn File, path: &Path, gen: u64, offset: u64) -> Result<()> {
    let mut b = Vec::new();
    record::encode(&mut b, gen, REC_END_OF_SEGMENT, &[]);
    file.write_all_at(&b, offset).ctx("write", path)?;
    file.sync_data().ctx("fdatasync", path)
}

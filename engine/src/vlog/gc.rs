//! Value-log garbage collection: [`GcJob`] rewrites the live records of one segment into a
//! new segment, in steps of bounded IO.
//!
//! The job reads the old segment front to back and asks the caller, per record, whether the
//! record is still live (`is_live(key, pointer)`: does the LSM still hold an entry whose value
//! is this pointer?). Live records are appended to the new segment and reported as
//! [`Relocation`]s; dead ones are skipped. The job never deletes or re-points anything.
//!
//! # Protocol and crash safety
//!
//! 1. Pick the old segment (`DiscardStats::pick_gc_candidate`), create a `SegmentWriter`
//!    with a fresh id, and build the job.
//! 2. Call [`GcJob::step`] until it reports `done`, collecting the relocations.
//! 3. [`GcJob::finish`] seals and fdatasyncs the new segment (or, when nothing was live,
//!    deletes it and returns no segment).
//! 4. The caller fsyncs the directory, then makes the new pointers durable **in one atomic
//!    manifest edit** that adds the new segment and re-points the keys (for each relocation,
//!    only if the key still points at `old`; a key overwritten meanwhile keeps its newer
//!    value, and its relocated copy is garbage in the new segment, reported as a discard).
//!    The database re-points with an L0 table repeating the moved entries' internal keys
//!    with the new pointers (`db/vlog_gc.rs`).
//! 5. Once no reader can still hold the old pointers (no version or iterator references
//!    the old segment), the caller deletes the old segment and drops it from the stats.
//!
//! A crash at any point leaves one of two states, both consistent:
//! - before the edit of step 4 is durable: the old segment is still the one referenced, and
//!   the new segment file is an **orphan** (no manifest entry) that the caller deletes on
//!   open;
//! - after it: the new pointers are durable and the old segment is the orphan (nothing
//!   references it), deleted on open or after step 5.
//!
//! Nothing is ever deleted while a durable entry might still point into it.

use super::pointer::ValuePointer;
use super::segment::{SegmentIter, SegmentMeta, SegmentReader, SegmentWriter};
use crate::error::{Error, Result};

/// One live record moved by GC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relocation {
    /// The key stored with the record.
    pub key: Vec<u8>,
    /// Where the value was.
    pub old: ValuePointer,
    /// Where it is now (valid once the new segment is finished).
    pub new: ValuePointer,
}

/// What one [`GcJob::step`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcStep {
    /// The live records copied in this step.
    pub relocations: Vec<Relocation>,
    /// Record bytes read from the old segment in this step (live and dead).
    pub scanned_bytes: u64,
    /// Record bytes copied to the new segment in this step.
    pub copied_bytes: u64,
    /// True when the whole old segment has been scanned.
    pub done: bool,
}

/// The result of a finished [`GcJob`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcOutcome {
    /// The segment that was collected.
    pub old_segment: u64,
    /// The new segment, or `None` when no record was live (its file was deleted).
    pub new_segment: Option<SegmentMeta>,
    /// Records copied.
    pub live_records: u64,
    /// Record bytes copied.
    pub live_bytes: u64,
    /// Records dropped.
    pub dead_records: u64,
    /// Record bytes dropped.
    pub dead_bytes: u64,
    /// Disk bytes freed once the old segment is deleted (old file size minus new file size).
    pub reclaimed_bytes: u64,
}

/// Rewrites the live records of one segment into a new one, in bounded steps.
#[derive(Debug)]
pub struct GcJob {
    old: SegmentMeta,
    source: SegmentIter,
    writer: SegmentWriter,
    live_records: u64,
    live_bytes: u64,
    dead_records: u64,
    dead_bytes: u64,
    done: bool,
    failed: bool,
}

/// Smallest read-ahead a step uses, so tiny step bounds do not mean tiny reads.
const MIN_READAHEAD: u64 = 4096;
/// Largest read-ahead a step uses.
const MAX_READAHEAD: u64 = 1 << 20;

impl GcJob {
    /// A job copying the live records of `old` into `writer` (a new, empty segment).
    pub fn new(old: &SegmentReader, writer: SegmentWriter) -> Result<GcJob> {
        if writer.records() != 0 {
            return Err(Error::InvalidArgument(format!(
                "GC of segment {} needs an empty output segment, {} holds {} records",
                old.id(),
                writer.id(),
                writer.records()
            )));
        }
        if writer.id() == old.id() {
            return Err(Error::InvalidArgument(format!(
                "GC output segment id {} equals the collected segment's",
                writer.id()
            )));
        }
        Ok(GcJob {
            old: old.meta(),
            source: old.iter(),
            writer,
            live_records: 0,
            live_bytes: 0,
            dead_records: 0,
            dead_bytes: 0,
            done: false,
            failed: false,
        })
    }

    /// The segment being collected.
    pub fn old_segment(&self) -> u64 {
        self.old.id
    }

    /// The segment being written.
    pub fn new_segment(&self) -> u64 {
        self.writer.id()
    }

    /// True when the whole old segment has been scanned.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Scans records of the old segment until about `max_bytes` record bytes were read,
    /// copying the ones `is_live` accepts.
    ///
    /// A step takes a record only if it fits in what is left of `max_bytes`, except the first
    /// record of a step (so a record larger than the bound still makes progress): the
    /// record bytes scanned, and so copied, by one step are at most `max(max_bytes, one
    /// record)`. Reads go through a read-ahead of `max_bytes` (clamped to 4 KiB..1 MiB);
    /// writes happen when the new segment's buffer fills. An error from `is_live` or from IO
    /// fails the job; the caller then calls [`GcJob::abandon`].
    pub fn step<F>(&mut self, max_bytes: u64, mut is_live: F) -> Result<GcStep>
    where
        F: FnMut(&[u8], ValuePointer) -> Result<bool>,
    {
        if self.failed {
            return Err(Error::InvalidArgument(format!(
                "GC of segment {} failed earlier",
                self.old.id
            )));
        }
        let mut out = GcStep::default();
        if self.done {
            out.done = true;
            return Ok(out);
        }
        let r = self.step_inner(max_bytes, &mut is_live, &mut out);
        if r.is_err() {
            self.failed = true;
        }
        r.map(|()| out)
    }

    fn step_inner(
        &mut self,
        max_bytes: u64,
        is_live: &mut dyn FnMut(&[u8], ValuePointer) -> Result<bool>,
        out: &mut GcStep,
    ) -> Result<()> {
        self.source
            .set_readahead(max_bytes.clamp(MIN_READAHEAD, MAX_READAHEAD) as usize);
        loop {
            let Some(len) = self.source.peek_len()? else {
                self.done = true;
                out.done = true;
                return Ok(());
            };
            if out.scanned_bytes > 0 && out.scanned_bytes + len as u64 > max_bytes {
                return Ok(());
            }
            let Some(rec) = self.source.next_record()? else {
                // peek_len saw a record; the cursor cannot have ended in between.
                return Err(Error::corruption(
                    self.source.path(),
                    self.source.position(),
                    "segment iteration ended unexpectedly",
                ));
            };
            out.scanned_bytes += len as u64;
            if is_live(rec.key, rec.pointer)? {
                let new = self.writer.add(rec.key, rec.value)?;
                out.copied_bytes += len as u64;
                self.live_records += 1;
                self.live_bytes += len as u64;
                out.relocations.push(Relocation {
                    key: rec.key.to_vec(),
                    old: rec.pointer,
                    new,
                });
            } else {
                self.dead_records += 1;
                self.dead_bytes += len as u64;
            }
        }
    }

    /// Seals the new segment (fdatasync, no directory sync) once every step is done; when no
    /// record was live, deletes the empty new segment instead.
    pub fn finish(self) -> Result<GcOutcome> {
        if self.failed || !self.done {
            let why = if self.failed {
                "it failed"
            } else {
                "not all of it was scanned"
            };
            return Err(Error::InvalidArgument(format!(
                "GC of segment {} cannot finish: {why}",
                self.old.id
            )));
        }
        let new_segment = if self.live_records == 0 {
            self.writer.abandon()?;
            None
        } else {
            Some(self.writer.finish()?)
        };
        let new_bytes = new_segment.map_or(0, |m| m.file_bytes);
        Ok(GcOutcome {
            old_segment: self.old.id,
            new_segment,
            live_records: self.live_records,
            live_bytes: self.live_bytes,
            dead_records: self.dead_records,
            dead_bytes: self.dead_bytes,
            reclaimed_bytes: self.old.file_bytes.saturating_sub(new_bytes),
        })
    }

    /// Gives up: deletes the partial new segment. The old segment is untouched.
    pub fn abandon(self) -> Result<()> {
        self.writer.abandon()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::{FaultFs, FaultRule, FileSystem, Op};
    use crate::vlog::segment::SegmentWriterOptions;
    use std::collections::HashSet;
    use std::path::Path;
    use std::sync::Arc;

    fn setup() -> (Arc<dyn FileSystem>, FaultFs) {
        let fs = FaultFs::new();
        fs.create_dir_all(Path::new("/db")).unwrap();
        (Arc::new(fs.clone()), fs)
    }

    /// Writes segment `id` with `n` records of varied sizes; returns (key, value, pointer).
    fn write_segment(
        fs: &Arc<dyn FileSystem>,
        id: u64,
        n: usize,
    ) -> Vec<(Vec<u8>, Vec<u8>, ValuePointer)> {
        let opts = SegmentWriterOptions {
            write_buffer_bytes: 8192,
            ..Default::default()
        };
        let mut w = SegmentWriter::create(fs.clone(), Path::new("/db"), id, opts).unwrap();
        let mut out = Vec::new();
        for i in 0..n {
            let key = format!("key-{i:05}").into_bytes();
            let value = vec![(i % 251) as u8; (i * 37) % 3000];
            let p = w.add(&key, &value).unwrap();
            out.push((key, value, p));
        }
        w.finish().unwrap();
        out
    }

    fn new_writer(fs: &Arc<dyn FileSystem>, id: u64) -> SegmentWriter {
        let opts = SegmentWriterOptions {
            write_buffer_bytes: 8192,
            ..Default::default()
        };
        SegmentWriter::create(fs.clone(), Path::new("/db"), id, opts).unwrap()
    }

    #[test]
    fn keeps_exactly_the_live_records_within_the_step_bound() {
        let (fs, _) = setup();
        let recs = write_segment(&fs, 5, 400);
        let old = SegmentReader::open(&*fs, Path::new("/db"), 5).unwrap();
        let live: HashSet<Vec<u8>> = recs
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 3 != 0)
            .map(|(_, r)| r.0.clone())
            .collect();
        let mut job = GcJob::new(&old, new_writer(&fs, 6)).unwrap();
        let max_bytes = 10_000u64;
        let mut relocs = Vec::new();
        let mut asked = Vec::new();
        let mut steps = 0;
        loop {
            let mut in_step = Vec::new();
            let s = job
                .step(max_bytes, |k, p| {
                    in_step.push(p);
                    Ok(live.contains(k))
                })
                .unwrap();
            steps += 1;
            assert_eq!(
                s.scanned_bytes,
                in_step.iter().map(|p| p.len as u64).sum::<u64>()
            );
            // At most the bound, unless a single record is larger than it.
            assert!(
                s.scanned_bytes <= max_bytes || in_step.len() == 1,
                "step scanned {} bytes in {} records",
                s.scanned_bytes,
                in_step.len()
            );
            asked.extend(in_step);
            assert!(s.copied_bytes <= s.scanned_bytes);
            relocs.extend(s.relocations);
            if s.done {
                break;
            }
            assert!(
                s.scanned_bytes > 0,
                "a step that is not done makes progress"
            );
        }
        assert!(steps > 10, "{steps} steps");
        assert!(job.is_done());
        // Every record was asked about exactly once, with its own pointer, in order.
        assert_eq!(asked, recs.iter().map(|r| r.2).collect::<Vec<_>>());
        let out = job.finish().unwrap();
        assert_eq!(out.old_segment, 5);
        assert_eq!(out.live_records as usize, live.len());
        assert_eq!(out.dead_records as usize, recs.len() - live.len());
        assert_eq!(
            out.live_bytes + out.dead_bytes,
            recs.iter().map(|r| r.2.len as u64).sum::<u64>()
        );
        let meta = out.new_segment.unwrap();
        assert_eq!(meta.id, 6);
        assert_eq!(meta.records, out.live_records);
        assert_eq!(meta.record_bytes, out.live_bytes);
        assert_eq!(out.reclaimed_bytes, old.meta().file_bytes - meta.file_bytes);
        // The relocations are exactly the live records, and the new pointers read back.
        let new = SegmentReader::open(&*fs, Path::new("/db"), 6).unwrap();
        assert_eq!(relocs.len(), live.len());
        let by_key: std::collections::HashMap<_, _> =
            recs.iter().map(|r| (r.0.clone(), r)).collect();
        for r in &relocs {
            let orig = by_key[&r.key];
            assert!(live.contains(&r.key));
            assert_eq!(r.old, orig.2);
            assert_eq!(r.new.segment, 6);
            let got = new.read(r.new).unwrap();
            assert_eq!(got.key, r.key);
            assert_eq!(got.value, orig.1);
        }
        let copied: Vec<_> = new.iter().map(|r| r.unwrap().key).collect();
        assert_eq!(
            copied,
            relocs.iter().map(|r| r.key.clone()).collect::<Vec<_>>()
        );
        // The job deleted nothing.
        assert!(fs.exists(&crate::filename::vlog(Path::new("/db"), 5)));
    }

    #[test]
    fn nothing_live_leaves_no_new_segment() {
        let (fs, _) = setup();
        write_segment(&fs, 1, 50);
        let old = SegmentReader::open(&*fs, Path::new("/db"), 1).unwrap();
        let mut job = GcJob::new(&old, new_writer(&fs, 2)).unwrap();
        while !job.step(1 << 20, |_, _| Ok(false)).unwrap().done {}
        let out = job.finish().unwrap();
        assert_eq!(out.new_segment, None);
        assert_eq!(out.live_records, 0);
        assert_eq!(out.reclaimed_bytes, old.meta().file_bytes);
        assert!(!fs.exists(&crate::filename::vlog(Path::new("/db"), 2)));
        assert!(fs.exists(&crate::filename::vlog(Path::new("/db"), 1)));
    }

    #[test]
    fn tiny_bound_still_progresses_one_record_per_step() {
        let (fs, _) = setup();
        let recs = write_segment(&fs, 1, 20);
        let old = SegmentReader::open(&*fs, Path::new("/db"), 1).unwrap();
        let mut job = GcJob::new(&old, new_writer(&fs, 2)).unwrap();
        let mut steps = 0;
        loop {
            let s = job.step(1, |_, _| Ok(true)).unwrap();
            if s.done && s.scanned_bytes == 0 {
                break;
            }
            steps += 1;
            assert_eq!(s.relocations.len(), 1);
        }
        assert_eq!(steps, recs.len());
        assert_eq!(job.finish().unwrap().live_records, 20);
    }

    #[test]
    fn errors_fail_the_job_and_abandon_cleans_up() {
        let (fs, ffs) = setup();
        write_segment(&fs, 1, 100);
        let old = SegmentReader::open(&*fs, Path::new("/db"), 1).unwrap();
        let new_path = crate::filename::vlog(Path::new("/db"), 2);

        // A failing liveness callback.
        let mut job = GcJob::new(&old, new_writer(&fs, 2)).unwrap();
        let mut n = 0;
        let err = job
            .step(1 << 20, |_, _| {
                n += 1;
                if n == 10 {
                    Err(Error::Closed)
                } else {
                    Ok(true)
                }
            })
            .unwrap_err();
        assert!(matches!(err, Error::Closed));
        assert!(job.step(1 << 20, |_, _| Ok(true)).is_err());
        assert!(fs.exists(&new_path));
        job.abandon().unwrap();
        assert!(!fs.exists(&new_path));

        // A failing write to the new segment.
        let mut job = GcJob::new(&old, new_writer(&fs, 2)).unwrap();
        ffs.add_rule(FaultRule::once(Op::Write).path_contains("000002.vlog"));
        let err = loop {
            match job.step(1 << 20, |_, _| Ok(true)) {
                Ok(s) if s.done => panic!("write fault not reported"),
                Ok(_) => {}
                Err(e) => break e,
            }
        };
        match err {
            Error::Io { op, path, .. } => {
                assert_eq!(op, "write");
                assert_eq!(path, new_path);
            }
            other => panic!("expected an io error, got {other:?}"),
        }
        assert!(job.finish().is_err(), "a failed job cannot finish");
        ffs.clear_rules();
        crate::vlog::remove_segment(&*fs, Path::new("/db"), 2).unwrap();
        assert!(!fs.exists(&new_path));

        // Finishing early is refused; misuse of ids is refused.
        let mut job = GcJob::new(&old, new_writer(&fs, 2)).unwrap();
        job.step(100, |_, _| Ok(true)).unwrap();
        assert!(job.finish().is_err());
        crate::vlog::remove_segment(&*fs, Path::new("/db"), 2).unwrap();
        assert!(GcJob::new(&old, new_writer(&fs, 2)).is_ok());
        crate::vlog::remove_segment(&*fs, Path::new("/db"), 2).unwrap();
        let mut used = new_writer(&fs, 3);
        used.add(b"k", b"v").unwrap();
        assert!(GcJob::new(&old, used).is_err());
    }

    #[test]
    fn damaged_source_fails_the_job() {
        let (fs, _) = setup();
        let recs = write_segment(&fs, 1, 30);
        let f = fs
            .open(
                &crate::filename::vlog(Path::new("/db"), 1),
                crate::fs::OpenMode::ReadWrite,
            )
            .unwrap();
        let victim = recs[17].2;
        f.write_all_at(&[0xee], victim.offset + victim.len as u64 - 1)
            .unwrap();
        let old = SegmentReader::open(&*fs, Path::new("/db"), 1).unwrap();
        let mut job = GcJob::new(&old, new_writer(&fs, 2)).unwrap();
        let err = loop {
            match job.step(4096, |_, _| Ok(true)) {
                Ok(s) => assert!(!s.done, "damage not reported"),
                Err(e) => break e,
            }
        };
        match err {
            Error::Corruption { path, offset, .. } => {
                assert_eq!(path, crate::filename::vlog(Path::new("/db"), 1));
                assert_eq!(offset, victim.offset);
            }
            other => panic!("expected corruption, got {other:?}"),
        }
        job.abandon().unwrap();
    }
}

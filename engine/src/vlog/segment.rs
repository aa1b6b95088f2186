//! Value-log segment files: the byte format, [`SegmentWriter`], [`SegmentReader`] and
//! [`SegmentIter`]. The format is specified in `docs/format.md` ("Value-log segments").
//!
//! ```text
//! header  (24 B)  magic "NoKVVLG1" | version u32 | segment id u64 | crc u32 (of bytes 0..20)
//! record*         crc u32 | key_len u32 | value_len u32 | key | value   (crc of all after it)
//! footer  (28 B)  record count u64 | records end u64 | crc u32 (of bytes 0..16) | magic "NoKVVEND"
//! ```
//!
//! A segment is written once, front to back, and is immutable after [`SegmentWriter::finish`].
//! Every read verifies what it returns: a point read checks the record's crc and that its
//! lengths match the pointer; iteration checks every record and that they end exactly where
//! the footer says, with the footer's record count.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::pointer::ValuePointer;
use crate::error::{Error, IoContext, Result};
use crate::filename;
use crate::fs::{File, FileSystem, OpenMode};

/// Bytes in the segment header.
pub const SEGMENT_HEADER_LEN: usize = 24;
/// Bytes in a record header (crc, key length, value length).
pub const RECORD_HEADER_LEN: usize = 12;
/// Bytes in the segment footer.
pub const SEGMENT_FOOTER_LEN: usize = 28;
/// Segment format version this build writes and the highest it reads.
pub const SEGMENT_FORMAT_VERSION: u32 = 1;
/// Header magic: the ASCII bytes `NoKVVLG1` read as a little-endian u64.
pub const SEGMENT_MAGIC: u64 = u64::from_le_bytes(*b"NoKVVLG1");
/// Footer magic: the ASCII bytes `NoKVVEND` read as a little-endian u64.
pub const SEGMENT_FOOTER_MAGIC: u64 = u64::from_le_bytes(*b"NoKVVEND");
/// Default size at which a writer reports itself full ([`SegmentWriter::is_full`]).
pub const DEFAULT_TARGET_SEGMENT_BYTES: u64 = 64 << 20;
/// Default size of a writer's buffer (one `write_all_at` per full buffer).
pub const DEFAULT_WRITE_BUFFER_BYTES: usize = 1 << 20;
/// Default read-ahead of a [`SegmentIter`].
pub const DEFAULT_READAHEAD_BYTES: usize = 1 << 20;
/// Largest record (header + key + value) a segment can hold: its length must fit a `u32`.
pub const MAX_RECORD_LEN: u64 = u32::MAX as u64;

/// Knobs for [`SegmentWriter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentWriterOptions {
    /// [`SegmentWriter::is_full`] turns true once the segment reaches this many bytes.
    pub target_segment_bytes: u64,
    /// Appends are buffered and written in chunks of about this many bytes.
    pub write_buffer_bytes: usize,
    /// TEST ONLY: `finish` skips the fdatasync (crash tests' negative control).
    #[doc(hidden)]
    pub unsafe_skip_sync: bool,
}

impl Default for SegmentWriterOptions {
    fn default() -> Self {
        SegmentWriterOptions {
            target_segment_bytes: DEFAULT_TARGET_SEGMENT_BYTES,
            write_buffer_bytes: DEFAULT_WRITE_BUFFER_BYTES,
            unsafe_skip_sync: false,
        }
    }
}

/// What a finished segment holds; returned by [`SegmentWriter::finish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentMeta {
    /// The segment id (its file is `filename::vlog(dir, id)`).
    pub id: u64,
    /// Size of the file: header + records + footer.
    pub file_bytes: u64,
    /// Number of records.
    pub records: u64,
    /// Sum of the records' lengths (what [`ValuePointer::len`]s add up to).
    pub record_bytes: u64,
}

/// One record, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Where the record is.
    pub pointer: ValuePointer,
    /// The key stored with the value (opaque to the value log).
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
}

/// One record, borrowed from a [`SegmentIter`]'s buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// Where the record is.
    pub pointer: ValuePointer,
    /// The key stored with the value.
    pub key: &'a [u8],
    /// The value.
    pub value: &'a [u8],
}

impl RecordRef<'_> {
    /// Copies the record out of the iterator's buffer.
    pub fn to_record(&self) -> Record {
        Record {
            pointer: self.pointer,
            key: self.key.to_vec(),
            value: self.value.to_vec(),
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The header bytes of segment `id`.
fn encode_header(id: u64) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[0..8].copy_from_slice(&SEGMENT_MAGIC.to_le_bytes());
    h[8..12].copy_from_slice(&SEGMENT_FORMAT_VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&id.to_le_bytes());
    let crc = crc32fast::hash(&h[0..20]);
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The footer bytes for `records` records ending at file offset `records_end`.
fn encode_footer(records: u64, records_end: u64) -> [u8; SEGMENT_FOOTER_LEN] {
    let mut f = [0u8; SEGMENT_FOOTER_LEN];
    f[0..8].copy_from_slice(&records.to_le_bytes());
    f[8..16].copy_from_slice(&records_end.to_le_bytes());
    let crc = crc32fast::hash(&f[0..16]);
    f[16..20].copy_from_slice(&crc.to_le_bytes());
    f[20..28].copy_from_slice(&SEGMENT_FOOTER_MAGIC.to_le_bytes());
    f
}

/// Reads exactly `buf.len()` bytes at `offset`; a short file is corruption, not an IO error.
fn read_exact(file: &dyn File, path: &Path, buf: &mut [u8], offset: u64) -> Result<()> {
    match file.read_exact_at(buf, offset) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(Error::corruption(
            path,
            offset,
            format!("segment ends inside a read of {} bytes", buf.len()),
        )),
        Err(e) => Err(Error::io("read", path, e)),
    }
}

/// Checks a whole record held in `rec` (read from file offset `offset`) and returns its key
/// length: the stated lengths must add up to `rec.len()` and the crc must match.
fn check_record(rec: &[u8], path: &Path, offset: u64) -> Result<usize> {
    if rec.len() < RECORD_HEADER_LEN {
        return Err(Error::corruption(
            path,
            offset,
            format!("record of {} bytes is shorter than its header", rec.len()),
        ));
    }
    let key_len = u32_at(rec, 4) as u64;
    let value_len = u32_at(rec, 8) as u64;
    let total = RECORD_HEADER_LEN as u64 + key_len + value_len;
    if total != rec.len() as u64 {
        return Err(Error::corruption(
            path,
            offset,
            format!(
                "record lengths (key {key_len}, value {value_len}) do not add up to the \
                 {} bytes addressed",
                rec.len()
            ),
        ));
    }
    if crc32fast::hash(&rec[4..]) != u32_at(rec, 0) {
        return Err(Error::corruption(path, offset, "record checksum mismatch"));
    }
    Ok(key_len as usize)
}

/// Appends records to a new segment file; [`SegmentWriter::finish`] seals it.
///
/// Appends are buffered ([`SegmentWriterOptions::write_buffer_bytes`]) and written with
/// `write_all_at`; nothing is durable until `finish` returns. After an IO error the writer
/// refuses further appends; the caller then calls [`SegmentWriter::abandon`].
pub struct SegmentWriter {
    fs: Arc<dyn FileSystem>,
    file: Arc<dyn File>,
    path: PathBuf,
    id: u64,
    opts: SegmentWriterOptions,
    /// Bytes not yet written; they start at file offset `written`.
    buf: Vec<u8>,
    written: u64,
    /// Bytes known durable (fdatasynced) from offset 0.
    synced: u64,
    records: u64,
    failed: bool,
    /// The file was a collected segment's: whatever lies past the footer is cut off when
    /// the segment is finished.
    recycled: bool,
}

impl std::fmt::Debug for SegmentWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentWriter")
            .field("path", &self.path)
            .field("records", &self.records)
            .field("bytes", &self.bytes())
            .finish_non_exhaustive()
    }
}

impl SegmentWriter {
    /// Creates segment `id` in `dir` (the file must not exist) and buffers its header.
    pub fn create(
        fs: Arc<dyn FileSystem>,
        dir: &Path,
        id: u64,
        opts: SegmentWriterOptions,
    ) -> Result<SegmentWriter> {
        let path = filename::vlog(dir, id);
        let file = fs.open(&path, OpenMode::CreateNew).ctx("create", &path)?;
        Ok(SegmentWriter::start(fs, file, path, id, opts, false))
    }

    /// Creates segment `id` in `dir` in the file of a collected segment (`from`, renamed to
    /// the new name): its blocks are overwritten in place and the file is cut to size when
    /// the segment is finished. The directory entry is not synced.
    pub fn create_recycled(
        fs: Arc<dyn FileSystem>,
        dir: &Path,
        id: u64,
        from: &Path,
        opts: SegmentWriterOptions,
    ) -> Result<SegmentWriter> {
        let path = filename::vlog(dir, id);
        fs.rename(from, &path).ctx("rename", from)?;
        let file = fs.open(&path, OpenMode::ReadWrite).ctx("open", &path)?;
        Ok(SegmentWriter::start(fs, file, path, id, opts, true))
    }

    /// A writer of segment `id` in `file`, with its header buffered.
    fn start(
        fs: Arc<dyn FileSystem>,
        file: Arc<dyn File>,
        path: PathBuf,
        id: u64,
        opts: SegmentWriterOptions,
        recycled: bool,
    ) -> SegmentWriter {
        let cap = opts.write_buffer_bytes.max(4096);
        let mut buf = Vec::with_capacity(cap);
        buf.extend_from_slice(&encode_header(id));
        SegmentWriter {
            fs,
            file,
            path,
            id,
            opts: SegmentWriterOptions {
                write_buffer_bytes: cap,
                ..opts
            },
            buf,
            written: 0,
            synced: 0,
            records: 0,
            failed: false,
            recycled,
        }
    }

    /// The segment id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The segment's file path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The segment's open file (for a background sync of what was written).
    pub fn file(&self) -> &Arc<dyn File> {
        &self.file
    }

    /// Records appended so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Size the file would have if it were finished now (header, records and footer).
    pub fn bytes(&self) -> u64 {
        self.written + self.buf.len() as u64 + SEGMENT_FOOTER_LEN as u64
    }

    /// True once the segment has reached `target_segment_bytes`: the caller should finish
    /// it and continue in a new one.
    pub fn is_full(&self) -> bool {
        self.bytes() >= self.opts.target_segment_bytes
    }

    fn check_failed(&self) -> Result<()> {
        if self.failed {
            return Err(Error::io(
                "write",
                &self.path,
                io::Error::other("segment writer failed earlier"),
            ));
        }
        Ok(())
    }

    /// Appends one record and returns its pointer (valid for reads once the segment is finished).
    pub fn add(&mut self, key: &[u8], value: &[u8]) -> Result<ValuePointer> {
        self.check_failed()?;
        let total = RECORD_HEADER_LEN as u64 + key.len() as u64 + value.len() as u64;
        if total > MAX_RECORD_LEN {
            return Err(Error::InvalidArgument(format!(
                "value-log record of {total} bytes (key {}, value {}) exceeds {MAX_RECORD_LEN}",
                key.len(),
                value.len()
            )));
        }
        let cap = self.opts.write_buffer_bytes;
        if !self.buf.is_empty() && self.buf.len() as u64 + total > cap as u64 {
            self.flush()?;
        }
        let offset = self.written + self.buf.len() as u64;
        let start = self.buf.len();
        self.buf.reserve(total as usize);
        self.buf.extend_from_slice(&[0u8; 4]);
        self.buf
            .extend_from_slice(&(key.len() as u32).to_le_bytes());
        self.buf
            .extend_from_slice(&(value.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(key);
        self.buf.extend_from_slice(value);
        let crc = crc32fast::hash(&self.buf[start + 4..]);
        self.buf[start..start + 4].copy_from_slice(&crc.to_le_bytes());
        self.records += 1;
        if self.buf.len() >= cap {
            self.flush()?;
        }
        Ok(ValuePointer {
            segment: self.id,
            offset,
            len: total as u32,
        })
    }

    /// Writes the buffered bytes to the file now: the records added so far become readable
    /// by offset (not durable; see [`SegmentWriter::sync`]).
    pub fn write_buffered(&mut self) -> Result<()> {
        self.check_failed()?;
        self.flush()
    }

    /// Writes the buffered bytes and fdatasyncs the file (without finishing it): every
    /// record added so far is durable when this returns.
    pub fn sync(&mut self) -> Result<()> {
        self.write_buffered()?;
        if self.synced < self.written {
            if !self.opts.unsafe_skip_sync {
                if let Err(e) = self.file.sync_data() {
                    self.failed = true;
                    return Err(Error::io("fdatasync", &self.path, e));
                }
            }
            self.synced = self.written;
        }
        Ok(())
    }

    /// Bytes added (header and records) that are not durable yet.
    pub fn unsynced_bytes(&self) -> u64 {
        self.written + self.buf.len() as u64 - self.synced
    }

    /// Writes the buffer to the file.
    fn flush(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.file.write_all_at(&self.buf, self.written) {
            self.failed = true;
            return Err(Error::io("write", &self.path, e));
        }
        self.written += self.buf.len() as u64;
        self.buf.clear();
        // A record larger than the buffer grew it: give the memory back.
        if self.buf.capacity() > 2 * self.opts.write_buffer_bytes {
            self.buf.shrink_to(self.opts.write_buffer_bytes);
        }
        Ok(())
    }

    /// Writes the footer and the remaining bytes, then fdatasyncs the file.
    ///
    /// The directory entry is **not** synced: the caller fsyncs the directory (once for
    /// the table and the segments of one flush) before a manifest edit references the
    /// segment. On error the partial file stays; remove it with `vlog::remove_segment`.
    pub fn finish(mut self) -> Result<SegmentMeta> {
        self.check_failed()?;
        let records_end = self.written + self.buf.len() as u64;
        self.buf
            .extend_from_slice(&encode_footer(self.records, records_end));
        self.flush()?;
        if self.recycled {
            // The old segment's bytes past the footer go; the footer ends the file.
            self.file
                .set_len(self.written)
                .ctx("truncate", &self.path)?;
        }
        if !self.opts.unsafe_skip_sync {
            self.file.sync_data().ctx("fdatasync", &self.path)?;
        }
        Ok(SegmentMeta {
            id: self.id,
            file_bytes: self.written,
            records: self.records,
            record_bytes: records_end - SEGMENT_HEADER_LEN as u64,
        })
    }

    /// Stops writing and deletes the partial file.
    pub fn abandon(self) -> Result<()> {
        let SegmentWriter { fs, file, path, .. } = self;
        drop(file);
        fs.remove_file(&path).ctx("remove", &path)
    }
}

/// A finished segment opened for reading; header and footer are verified by `open`.
pub struct SegmentReader {
    file: Arc<dyn File>,
    path: PathBuf,
    meta: SegmentMeta,
}

impl std::fmt::Debug for SegmentReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentReader")
            .field("path", &self.path)
            .field("meta", &self.meta)
            .finish_non_exhaustive()
    }
}

impl SegmentReader {
    /// Opens segment `id` in `dir` and verifies its header and footer.
    pub fn open(fs: &dyn FileSystem, dir: &Path, id: u64) -> Result<SegmentReader> {
        let path = filename::vlog(dir, id);
        let file = fs.open(&path, OpenMode::Read).ctx("open", &path)?;
        SegmentReader::from_file(file, path, id)
    }

    /// Verifies the header and footer of segment `id` held in the open `file` (named `path`).
    pub fn from_file(file: Arc<dyn File>, path: PathBuf, id: u64) -> Result<SegmentReader> {
        let p: &Path = &path;
        let file_bytes = file.len().ctx("stat", p)?;
        let min = (SEGMENT_HEADER_LEN + SEGMENT_FOOTER_LEN) as u64;
        if file_bytes < min {
            return Err(Error::corruption(
                p,
                0,
                format!(
                    "file of {file_bytes} bytes is too short for a segment \
                     (header and footer take {min}): unfinished or truncated"
                ),
            ));
        }
        let mut h = [0u8; SEGMENT_HEADER_LEN];
        read_exact(&*file, p, &mut h, 0)?;
        if u64_at(&h, 0) != SEGMENT_MAGIC {
            return Err(Error::corruption(p, 0, "bad segment header magic"));
        }
        let version = u32_at(&h, 8);
        if version > SEGMENT_FORMAT_VERSION {
            return Err(Error::UnsupportedFormat {
                path: path.clone(),
                version,
                max: SEGMENT_FORMAT_VERSION,
            });
        }
        if version == 0 {
            return Err(Error::corruption(p, 8, "segment format version 0"));
        }
        if crc32fast::hash(&h[0..20]) != u32_at(&h, 20) {
            return Err(Error::corruption(p, 0, "segment header checksum mismatch"));
        }
        let header_id = u64_at(&h, 12);
        if header_id != id {
            return Err(Error::corruption(
                p,
                12,
                format!("header names segment {header_id}, expected {id}"),
            ));
        }
        let footer_at = file_bytes - SEGMENT_FOOTER_LEN as u64;
        let mut f = [0u8; SEGMENT_FOOTER_LEN];
        read_exact(&*file, p, &mut f, footer_at)?;
        if u64_at(&f, 20) != SEGMENT_FOOTER_MAGIC {
            return Err(Error::corruption(
                p,
                file_bytes - 8,
                "no segment footer magic: unfinished or truncated segment",
            ));
        }
        if crc32fast::hash(&f[0..16]) != u32_at(&f, 16) {
            return Err(Error::corruption(
                p,
                footer_at,
                "segment footer checksum mismatch",
            ));
        }
        let records = u64_at(&f, 0);
        let records_end = u64_at(&f, 8);
        if records_end != footer_at {
            return Err(Error::corruption(
                p,
                footer_at,
                format!(
                    "footer says records end at {records_end}, but the footer is at {footer_at}"
                ),
            ));
        }
        let record_bytes = records_end - SEGMENT_HEADER_LEN as u64;
        if records
            .checked_mul(RECORD_HEADER_LEN as u64)
            .is_none_or(|m| m > record_bytes)
        {
            return Err(Error::corruption(
                p,
                footer_at,
                format!("footer claims {records} records in {record_bytes} bytes"),
            ));
        }
        Ok(SegmentReader {
            file,
            path,
            meta: SegmentMeta {
                id,
                file_bytes,
                records,
                record_bytes,
            },
        })
    }

    /// The segment id.
    pub fn id(&self) -> u64 {
        self.meta.id
    }

    /// The segment's file path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size and record count, as read from the footer.
    pub fn meta(&self) -> SegmentMeta {
        self.meta
    }

    /// Reads and verifies the record at `ptr`; returns (key length, record bytes).
    fn read_raw(&self, ptr: ValuePointer) -> Result<(usize, Vec<u8>)> {
        if ptr.segment != self.meta.id {
            return Err(Error::InvalidArgument(format!(
                "pointer into segment {} given to the reader of segment {}",
                ptr.segment, self.meta.id
            )));
        }
        let records_end = SEGMENT_HEADER_LEN as u64 + self.meta.record_bytes;
        if ptr.offset < SEGMENT_HEADER_LEN as u64
            || (ptr.len as usize) < RECORD_HEADER_LEN
            || ptr
                .offset
                .checked_add(ptr.len as u64)
                .is_none_or(|e| e > records_end)
        {
            return Err(Error::corruption(
                &self.path,
                ptr.offset,
                format!(
                    "pointer to {} bytes at {} lies outside the records [{SEGMENT_HEADER_LEN}, {records_end})",
                    ptr.len, ptr.offset
                ),
            ));
        }
        let mut buf = vec![0u8; ptr.len as usize];
        read_exact(&*self.file, &self.path, &mut buf, ptr.offset)?;
        let key_len = check_record(&buf, &self.path, ptr.offset)?;
        Ok((key_len, buf))
    }

    /// Reads the record at `ptr` with one positional read and verifies it.
    pub fn read(&self, ptr: ValuePointer) -> Result<Record> {
        let (key_len, mut buf) = self.read_raw(ptr)?;
        let key = buf[RECORD_HEADER_LEN..RECORD_HEADER_LEN + key_len].to_vec();
        buf.drain(..RECORD_HEADER_LEN + key_len);
        Ok(Record {
            pointer: ptr,
            key,
            value: buf,
        })
    }

    /// Reads just the value of the record at `ptr` (the whole record is still verified).
    pub fn read_value(&self, ptr: ValuePointer) -> Result<Vec<u8>> {
        let (key_len, mut buf) = self.read_raw(ptr)?;
        buf.drain(..RECORD_HEADER_LEN + key_len);
        Ok(buf)
    }

    /// A cursor over every record, in file order, verifying each and the footer's count.
    pub fn iter(&self) -> SegmentIter {
        SegmentIter {
            file: self.file.clone(),
            path: self.path.clone(),
            id: self.meta.id,
            pos: SEGMENT_HEADER_LEN as u64,
            records_end: SEGMENT_HEADER_LEN as u64 + self.meta.record_bytes,
            expected: Some(self.meta.records),
            seen: 0,
            buf: Vec::new(),
            buf_start: 0,
            readahead: DEFAULT_READAHEAD_BYTES,
            failed: false,
        }
    }
}

/// A segment the write path was appending to when the database stopped: it has no footer
/// (or one that recovery replaces), and its tail may be torn.
///
/// Recovery reads the records that replayed WAL entries point at
/// ([`UnfinishedSegment::read_value`]), then [`UnfinishedSegment::finish`]es the segment
/// right after the last of them: records past that point were never acknowledged.
pub struct UnfinishedSegment {
    file: Arc<dyn File>,
    path: PathBuf,
    id: u64,
    len: u64,
}

impl std::fmt::Debug for UnfinishedSegment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnfinishedSegment")
            .field("path", &self.path)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl UnfinishedSegment {
    /// Opens segment `id` of `dir` for recovery; `None` when the file is missing or its
    /// header is not intact (then no record of it was ever durable).
    pub fn open(fs: &dyn FileSystem, dir: &Path, id: u64) -> Result<Option<UnfinishedSegment>> {
        let path = filename::vlog(dir, id);
        if !fs.exists(&path) {
            return Ok(None);
        }
        let file = fs.open(&path, OpenMode::ReadWrite).ctx("open", &path)?;
        let len = file.len().ctx("stat", &path)?;
        if len < SEGMENT_HEADER_LEN as u64 {
            return Ok(None);
        }
        let mut h = [0u8; SEGMENT_HEADER_LEN];
        read_exact(&*file, &path, &mut h, 0)?;
        if h != encode_header(id) {
            return Ok(None);
        }
        Ok(Some(UnfinishedSegment {
            file,
            path,
            id,
            len,
        }))
    }

    /// The segment id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The segment's file path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The value of the record at `ptr` if the record is there whole (crc verified) and was
    /// stored with exactly `key`; `None` when it is missing, torn or another record.
    pub fn read_value(&self, ptr: ValuePointer, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let inside = ptr.segment == self.id
            && ptr.offset >= SEGMENT_HEADER_LEN as u64
            && ptr.len as usize >= RECORD_HEADER_LEN
            && ptr
                .offset
                .checked_add(ptr.len as u64)
                .is_some_and(|e| e <= self.len);
        if !inside {
            return Ok(None);
        }
        let mut buf = vec![0u8; ptr.len as usize];
        match self.file.read_exact_at(&mut buf, ptr.offset) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(Error::io("read", &self.path, e)),
        }
        let Ok(key_len) = check_record(&buf, &self.path, ptr.offset) else {
            return Ok(None);
        };
        if &buf[RECORD_HEADER_LEN..RECORD_HEADER_LEN + key_len] != key {
            return Ok(None);
        }
        buf.drain(..RECORD_HEADER_LEN + key_len);
        Ok(Some(buf))
    }

    /// Seals the segment with its records ending at `end`: verifies every record in
    /// `[header, end)`, cuts off whatever follows, writes the footer and fdatasyncs.
    /// Damage before `end` is corruption. Running it again after a crash gives the same
    /// segment.
    pub fn finish(self, end: u64) -> Result<SegmentMeta> {
        if end < SEGMENT_HEADER_LEN as u64 || end > self.len {
            return Err(Error::corruption(
                &self.path,
                end,
                format!(
                    "records cannot end at {end} in a segment file of {} bytes",
                    self.len
                ),
            ));
        }
        let mut it = SegmentIter {
            file: self.file.clone(),
            path: self.path.clone(),
            id: self.id,
            pos: SEGMENT_HEADER_LEN as u64,
            records_end: end,
            expected: None,
            seen: 0,
            buf: Vec::new(),
            buf_start: 0,
            readahead: DEFAULT_READAHEAD_BYTES,
            failed: false,
        };
        // Bounded: each record advances the position by at least its header.
        while it.next_record()?.is_some() {}
        let records = it.records_seen();
        let p: &Path = &self.path;
        self.file.set_len(end).ctx("truncate", p)?;
        self.file
            .write_all_at(&encode_footer(records, end), end)
            .ctx("write", p)?;
        self.file.sync_data().ctx("fdatasync", p)?;
        Ok(SegmentMeta {
            id: self.id,
            file_bytes: end + SEGMENT_FOOTER_LEN as u64,
            records,
            record_bytes: end - SEGMENT_HEADER_LEN as u64,
        })
    }
}

/// Iterates a segment's records in file order (see [`SegmentReader::iter`]).
///
/// [`SegmentIter::next_record`] lends each record from an internal read-ahead buffer;
/// the `Iterator` implementation copies them out. Damage is reported as
/// [`Error::Corruption`] naming the file and the record's offset, never skipped; after an
/// error the cursor stays failed.
pub struct SegmentIter {
    file: Arc<dyn File>,
    path: PathBuf,
    id: u64,
    /// File offset of the next record.
    pos: u64,
    records_end: u64,
    /// Records the footer counts (`None` for a segment being recovered: no footer yet).
    expected: Option<u64>,
    seen: u64,
    /// Bytes of the file starting at offset `buf_start`.
    buf: Vec<u8>,
    buf_start: u64,
    readahead: usize,
    failed: bool,
}

impl std::fmt::Debug for SegmentIter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentIter")
            .field("path", &self.path)
            .field("pos", &self.pos)
            .field("seen", &self.seen)
            .finish_non_exhaustive()
    }
}

impl SegmentIter {
    /// Sets how many bytes each refill reads at least (bounded by the records' end).
    pub fn set_readahead(&mut self, bytes: usize) {
        self.readahead = bytes.max(RECORD_HEADER_LEN);
    }

    /// The segment's file path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// File offset of the next record (the records' end once done).
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Records returned so far.
    pub fn records_seen(&self) -> u64 {
        self.seen
    }

    /// Makes `[pos, pos + need)` available in `buf`, reading ahead.
    fn fill(&mut self, need: usize) -> Result<()> {
        let have_end = self.buf_start + self.buf.len() as u64;
        if self.pos >= self.buf_start && self.pos + need as u64 <= have_end {
            return Ok(());
        }
        let left = self.records_end - self.pos;
        let len = (need.max(self.readahead) as u64).min(left) as usize;
        self.buf.clear();
        self.buf.resize(len, 0);
        self.buf_start = self.pos;
        if let Err(e) = read_exact(&*self.file, &self.path, &mut self.buf, self.pos) {
            self.buf.clear();
            return Err(e);
        }
        Ok(())
    }

    /// Length of the next record (validated against the records' end), `None` at the end.
    fn next_len(&mut self) -> Result<Option<u64>> {
        if self.pos == self.records_end {
            if let Some(expected) = self.expected.filter(|e| *e != self.seen) {
                return Err(Error::corruption(
                    &self.path,
                    self.records_end,
                    format!(
                        "footer counts {expected} records, the segment holds {}",
                        self.seen
                    ),
                ));
            }
            return Ok(None);
        }
        if self.records_end - self.pos < RECORD_HEADER_LEN as u64 {
            return Err(Error::corruption(
                &self.path,
                self.pos,
                "record header runs past the end of the records",
            ));
        }
        self.fill(RECORD_HEADER_LEN)?;
        let at = (self.pos - self.buf_start) as usize;
        let total = RECORD_HEADER_LEN as u64
            + u32_at(&self.buf, at + 4) as u64
            + u32_at(&self.buf, at + 8) as u64;
        if total > self.records_end - self.pos || total > MAX_RECORD_LEN {
            return Err(Error::corruption(
                &self.path,
                self.pos,
                format!("record of {total} bytes runs past the end of the records"),
            ));
        }
        Ok(Some(total))
    }

    fn guard<T>(&mut self, r: Result<T>) -> Result<T> {
        if r.is_err() {
            self.failed = true;
        }
        r
    }

    fn check_not_failed(&self) -> Result<()> {
        if self.failed {
            return Err(Error::corruption(
                &self.path,
                self.pos,
                "segment iteration already failed",
            ));
        }
        Ok(())
    }

    /// Length of the next record without consuming it; `None` at the (verified) end.
    pub fn peek_len(&mut self) -> Result<Option<u32>> {
        self.check_not_failed()?;
        let r = self.next_len();
        Ok(self.guard(r)?.map(|l| l as u32))
    }

    /// The next verified record, borrowed from the cursor; `None` at the (verified) end.
    pub fn next_record(&mut self) -> Result<Option<RecordRef<'_>>> {
        self.check_not_failed()?;
        let r = self.next_len();
        let Some(total) = self.guard(r)? else {
            return Ok(None);
        };
        let r = self.fill(total as usize);
        self.guard(r)?;
        let at = (self.pos - self.buf_start) as usize;
        let end = at + total as usize;
        let r = check_record(&self.buf[at..end], &self.path, self.pos);
        let key_len = self.guard(r)?;
        self.seen += 1;
        if let Some(expected) = self.expected.filter(|e| self.seen > *e) {
            self.failed = true;
            return Err(Error::corruption(
                &self.path,
                self.pos,
                format!("more records than the {expected} the footer counts"),
            ));
        }
        let pointer = ValuePointer {
            segment: self.id,
            offset: self.pos,
            len: total as u32,
        };
        self.pos += total;
        let key_start = at + RECORD_HEADER_LEN;
        Ok(Some(RecordRef {
            pointer,
            key: &self.buf[key_start..key_start + key_len],
            value: &self.buf[key_start + key_len..end],
        }))
    }
}

impl Iterator for SegmentIter {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Result<Record>> {
        if self.failed {
            return None;
        }
        match self.next_record() {
            Ok(Some(r)) => Some(Ok(r.to_record())),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        }
    }
}

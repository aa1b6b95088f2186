//! Writes a table file from internal keys added in order.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use super::block::BlockBuilder;
use super::filter::{bloom_hash, FilterBuilder};
use super::{
    block_crc, BlockHandle, Footer, TableProperties, BLOCK_TRAILER_LEN, COMPRESSION_LZ4,
    COMPRESSION_NONE,
};
use crate::error::{Error, Result};
use crate::fs::{Completion, File, InlineQueue, IoQueue, Ticket};
use crate::key::{
    compare_internal, encode_trailer, logical_key, parse_trailer, parse_version, Kind, KIND_SEEK,
    MAX_SEQ, MAX_VERSION,
};
use crate::options::{Compression, Options};
use crate::range_del::{self, RangeTombstone};

/// Output is handed to the file in chunks of at least this many bytes.
const WRITE_CHUNK: usize = 1 << 20;
/// Chunk writes a builder keeps in flight while it fills the next chunk.
const MAX_WRITES_IN_FLIGHT: usize = 2;

/// Knobs for [`TableBuilder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableBuilderOptions {
    /// Target size of an uncompressed data block.
    pub block_bytes: usize,
    /// Keys between restart points inside a data block.
    pub restart_interval: usize,
    /// Bloom filter bits per key (0 = no filter).
    pub bloom_bits_per_key: usize,
    /// Data block compression.
    pub compression: Compression,
}

impl Default for TableBuilderOptions {
    fn default() -> Self {
        TableBuilderOptions {
            block_bytes: 4096,
            restart_interval: 16,
            bloom_bits_per_key: 10,
            compression: Compression::None,
        }
    }
}

impl TableBuilderOptions {
    /// Builder options from the database options for a table written to `level`.
    pub fn from_options(opts: &Options, level: usize) -> TableBuilderOptions {
        let compression = opts
            .compression_per_level
            .get(level)
            .or(opts.compression_per_level.last())
            .copied()
            .unwrap_or_default();
        TableBuilderOptions {
            block_bytes: opts.block_bytes.max(64),
            restart_interval: opts.block_restart_interval.max(1),
            bloom_bits_per_key: opts.bloom_bits_per_key,
            compression,
        }
    }
}

/// Streams sorted entries into a new table file.
///
/// Full chunks are submitted to an [`IoQueue`] and the builder keeps filling another
/// buffer while they are written (at most [`MAX_WRITES_IN_FLIGHT`] chunks in flight).
/// The first IO error is returned by the call that observes it; later calls fail.
pub struct TableBuilder {
    file: Arc<dyn File>,
    path: PathBuf,
    opts: TableBuilderOptions,
    /// Bytes not yet submitted; they start at `written`.
    out: Vec<u8>,
    /// Bytes submitted to the queue so far.
    written: u64,
    queue: Box<dyn IoQueue>,
    /// Buffers handed back by completed writes, reused for `out`.
    spare: Vec<Vec<u8>>,
    /// The ticket of the final fdatasync, once submitted.
    sync_ticket: Option<Ticket>,
    block: BlockBuilder,
    index: BlockBuilder,
    pending: Option<BlockHandle>,
    filter: Option<FilterBuilder>,
    scratch: Vec<u8>,
    sep: Vec<u8>,
    handle_buf: Vec<u8>,
    props: TableProperties,
    /// Value-log record bytes referenced by pointer entries, per segment.
    vlog_refs: std::collections::BTreeMap<u64, u64>,
    failed: bool,
    /// Range tombstones for the range-deletion block.
    range_dels: Vec<RangeTombstone>,
}

impl std::fmt::Debug for TableBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableBuilder")
            .field("path", &self.path)
            .field("num_entries", &self.props.num_entries)
            .finish_non_exhaustive()
    }
}

/// Writes `contents` as a block (compressed if worthwhile) to `out`, returning its handle.
fn emit_block(
    out: &mut Vec<u8>,
    base: u64,
    contents: &[u8],
    compression: Compression,
    scratch: &mut Vec<u8>,
) -> BlockHandle {
    let offset = base + out.len() as u64;
    let mut ty = COMPRESSION_NONE;
    let mut stored: &[u8] = contents;
    if compression == Compression::Lz4 && contents.len() <= u32::MAX as usize {
        scratch.clear();
        scratch.resize(
            4 + lz4_flex::block::get_maximum_output_size(contents.len()),
            0,
        );
        scratch[..4].copy_from_slice(&(contents.len() as u32).to_le_bytes());
        if let Ok(n) = lz4_flex::block::compress_into(contents, &mut scratch[4..]) {
            if 4 + n <= contents.len() - contents.len() / 8 {
                ty = COMPRESSION_LZ4;
                stored = &scratch[..4 + n];
            }
        }
    }
    out.reserve(stored.len() + BLOCK_TRAILER_LEN);
    out.extend_from_slice(stored);
    out.push(ty);
    out.extend_from_slice(&block_crc(stored, ty).to_le_bytes());
    BlockHandle {
        offset,
        size: stored.len() as u64,
    }
}

/// Writes into `out` a key `s` with `last <= s < next`, shorter than `last` when possible.
fn separator(last: &[u8], next: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let (la, ln) = (logical_key(last), logical_key(next));
    let n = la.len().min(ln.len());
    let diff = la.iter().zip(ln).take_while(|(a, b)| a == b).count();
    if diff < n {
        let b = la[diff];
        if b < 0xff && b + 1 < ln[diff] && diff + 1 < la.len() {
            out.extend_from_slice(&la[..=diff]);
            out[diff] += 1;
            // The smallest trailer: sorts before every real entry of this logical key.
            out.extend_from_slice(&encode_trailer(MAX_VERSION, MAX_SEQ, KIND_SEEK));
            return;
        }
    }
    out.extend_from_slice(last);
}

impl TableBuilder {
    /// Starts a table written to `file` (named `path` in errors) from offset 0, with synchronous IO.
    pub fn new(file: Arc<dyn File>, path: PathBuf, opts: TableBuilderOptions) -> TableBuilder {
        TableBuilder::with_queue(file, path, opts, Box::new(InlineQueue::new()))
    }

    /// Like [`TableBuilder::new`], submitting writes and the final sync through `queue`
    /// (which must have nothing in flight).
    pub fn with_queue(
        file: Arc<dyn File>,
        path: PathBuf,
        opts: TableBuilderOptions,
        queue: Box<dyn IoQueue>,
    ) -> TableBuilder {
        debug_assert_eq!(queue.in_flight(), 0, "table builder needs an idle queue");
        let block_bytes = opts.block_bytes.max(64);
        TableBuilder {
            file,
            path,
            out: Vec::with_capacity(Self::chunk_capacity(block_bytes)),
            written: 0,
            queue,
            spare: Vec::new(),
            sync_ticket: None,
            block: BlockBuilder::new(opts.restart_interval, block_bytes + block_bytes / 4),
            index: BlockBuilder::new(1, 4096),
            pending: None,
            filter: (opts.bloom_bits_per_key > 0)
                .then(|| FilterBuilder::new(opts.bloom_bits_per_key)),
            scratch: Vec::new(),
            sep: Vec::new(),
            handle_buf: Vec::with_capacity(20),
            props: TableProperties::default(),
            vlog_refs: std::collections::BTreeMap::new(),
            failed: false,
            range_dels: Vec::new(),
            opts: TableBuilderOptions {
                block_bytes,
                ..opts
            },
        }
    }

    /// Capacity of an output buffer: a chunk plus the block that overflows it.
    fn chunk_capacity(block_bytes: usize) -> usize {
        WRITE_CHUNK + 2 * block_bytes
    }

    fn check_failed(&self) -> Result<()> {
        if self.failed {
            return Err(Error::io(
                "write",
                &self.path,
                io::Error::other("table builder failed earlier"),
            ));
        }
        Ok(())
    }

    /// Appends an entry; `ikey` must sort strictly after the previous key.
    pub fn add(&mut self, ikey: &[u8], value: &[u8]) -> Result<()> {
        self.check_failed()?;
        debug_assert!(
            ikey.len() >= crate::key::TRAILER_LEN,
            "internal key too short"
        );
        debug_assert!(
            self.props.num_entries == 0
                || crate::key::compare_internal(self.block.last_key(), ikey)
                    == std::cmp::Ordering::Less,
            "keys added out of order"
        );
        if let Some(h) = self.pending.take() {
            separator(self.block.last_key(), ikey, &mut self.sep);
            self.handle_buf.clear();
            h.encode_to(&mut self.handle_buf);
            self.index.add(&self.sep, &self.handle_buf);
        }
        let logical = logical_key(ikey);
        if self.props.num_entries == 0 {
            self.props.smallest.clear();
            self.props.smallest.extend_from_slice(ikey);
            if let Some(f) = &mut self.filter {
                f.add_hash(bloom_hash(logical));
            }
        } else if let Some(f) = &mut self.filter {
            if logical_key(self.block.last_key()) != logical {
                f.add_hash(bloom_hash(logical));
            }
        }
        let (seq, kind) = parse_trailer(ikey);
        if kind == Kind::Delete as u8 {
            self.props.num_deletions += 1;
        }
        self.props.max_seq = self.props.max_seq.max(seq);
        if let Some(p) = crate::key::pointer_bytes(kind, value)
            .and_then(|p| crate::vlog::ValuePointer::decode(p).ok())
        {
            *self.vlog_refs.entry(p.segment).or_insert(0) += p.len as u64;
        }
        self.props.max_version = self.props.max_version.max(parse_version(ikey));
        self.block.add(ikey, value);
        self.props.num_entries += 1;
        if self.block.estimated_size() >= self.opts.block_bytes {
            self.flush_block()?;
        }
        Ok(())
    }

    fn flush_block(&mut self) -> Result<()> {
        if self.block.is_empty() {
            return Ok(());
        }
        let contents = self.block.finish();
        let h = emit_block(
            &mut self.out,
            self.written,
            contents,
            self.opts.compression,
            &mut self.scratch,
        );
        self.block.reset();
        self.props.data_bytes += h.size + BLOCK_TRAILER_LEN as u64;
        self.pending = Some(h);
        if self.out.len() >= WRITE_CHUNK {
            self.flush_out()?;
        }
        Ok(())
    }

    /// Submits `out` as one write and continues in a fresh buffer.
    fn flush_out(&mut self) -> Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let limit = MAX_WRITES_IN_FLIGHT.min(self.queue.depth()).max(1);
        while self.queue.in_flight() >= limit {
            let done = self.queue.complete(1);
            self.absorb(done)?;
        }
        let next = match self.spare.pop() {
            Some(buf) => buf,
            None => Vec::with_capacity(Self::chunk_capacity(self.opts.block_bytes)),
        };
        let buf = std::mem::replace(&mut self.out, next);
        let len = buf.len() as u64;
        self.queue
            .submit_write(self.file.clone(), self.written, buf);
        self.written += len;
        let done = self.queue.complete(0);
        self.absorb(done)
    }

    /// Waits for every operation in flight, returning the first error.
    fn drain(&mut self) -> Result<()> {
        while self.queue.in_flight() > 0 {
            let n = self.queue.in_flight();
            let done = self.queue.complete(n);
            self.absorb(done)?;
        }
        Ok(())
    }

    /// Takes completions: keeps their buffers for reuse and fails on the first error.
    fn absorb(&mut self, done: Vec<Completion>) -> Result<()> {
        let mut first = None;
        for c in done {
            if let Some(mut buf) = c.buf {
                if self.spare.len() < MAX_WRITES_IN_FLIGHT {
                    buf.clear();
                    self.spare.push(buf);
                }
            }
            if let Err(e) = c.result {
                if first.is_none() {
                    let op = if Some(c.ticket) == self.sync_ticket {
                        "fdatasync"
                    } else {
                        "write"
                    };
                    first = Some(Error::io(op, &self.path, e));
                }
            }
        }
        match first {
            Some(e) => {
                self.failed = true;
                Err(e)
            }
            None => Ok(()),
        }
    }

    /// Approximate size of the file if it were finished now.
    pub fn estimated_size(&self) -> u64 {
        let filter = self.filter.as_ref().map_or(0, |f| f.estimated_size());
        self.written
            + self.out.len() as u64
            + self.block.estimated_size() as u64
            + self.index.estimated_size() as u64
            + filter as u64
    }

    /// Number of entries added so far.
    pub fn num_entries(&self) -> u64 {
        self.props.num_entries
    }

    /// The last internal key added (empty before the first).
    pub fn last_key(&self) -> &[u8] {
        self.block.last_key()
    }

    /// Adds range tombstones (valid, any order) for the range-deletion block.
    ///
    /// The table's smallest and largest keys widen to cover them
    /// ([`range_del::smallest_bound`], [`range_del::largest_bound`]); a table
    /// may hold tombstones and no entries.
    pub fn add_range_tombstones(&mut self, tombstones: impl IntoIterator<Item = RangeTombstone>) {
        for t in tombstones {
            debug_assert!(t.validate().is_ok(), "invalid range tombstone");
            self.range_dels.push(t);
        }
    }

    /// Number of range tombstones added so far.
    pub fn num_range_tombstones(&self) -> usize {
        self.range_dels.len()
    }

    /// Writes the range-deletion block (if any) and widens the key range over its tombstones.
    fn finish_range_dels(&mut self) {
        if self.range_dels.is_empty() {
            return;
        }
        let mut ts = std::mem::take(&mut self.range_dels);
        ts.sort_unstable_by(range_del::canonical_order);
        let contents = range_del::encode_block(&ts);
        self.props.range_del = emit_block(
            &mut self.out,
            self.written,
            &contents,
            Compression::None,
            &mut self.scratch,
        );
        self.props.num_range_deletions = ts.len() as u64;
        // An empty key range (a table without entries) takes the first tombstone's bounds.
        for t in &ts {
            self.props.max_seq = self.props.max_seq.max(t.seq);
            let lo = range_del::smallest_bound(&t.start);
            if self.props.smallest.is_empty() || compare_internal(&lo, &self.props.smallest).is_lt()
            {
                self.props.smallest = lo;
            }
            let hi = range_del::largest_bound(&t.end);
            if self.props.largest.is_empty() || compare_internal(&hi, &self.props.largest).is_gt() {
                self.props.largest = hi;
            }
        }
    }

    /// Writes the remaining blocks, filter, index, properties and footer, then syncs the data.
    pub fn finish(mut self) -> Result<TableProperties> {
        self.check_failed()?;
        self.flush_block()?;
        self.props.largest.clear();
        self.props.largest.extend_from_slice(self.block.last_key());
        if let Some(h) = self.pending.take() {
            self.handle_buf.clear();
            h.encode_to(&mut self.handle_buf);
            self.index.add(&self.props.largest, &self.handle_buf);
        }
        let filter = match self.filter.take() {
            Some(f) => {
                let contents = f.finish();
                let h = emit_block(
                    &mut self.out,
                    self.written,
                    &contents,
                    Compression::None,
                    &mut self.scratch,
                );
                self.props.filter_bytes = h.size + BLOCK_TRAILER_LEN as u64;
                h
            }
            None => BlockHandle::default(),
        };
        let contents = self.index.finish();
        let index = emit_block(
            &mut self.out,
            self.written,
            contents,
            Compression::None,
            &mut self.scratch,
        );
        self.props.index_bytes = index.size + BLOCK_TRAILER_LEN as u64;
        self.finish_range_dels();
        self.props.vlog_refs = std::mem::take(&mut self.vlog_refs).into_iter().collect();
        let pcontents = self.props.encode();
        let props = emit_block(
            &mut self.out,
            self.written,
            &pcontents,
            Compression::None,
            &mut self.scratch,
        );
        let footer = Footer {
            index,
            filter,
            props,
        };
        self.out.extend_from_slice(&footer.encode());
        self.flush_out()?;
        // A sync covers only writes already completed: wait for them first.
        self.drain()?;
        self.sync_ticket = Some(self.queue.submit_sync_data(self.file.clone()));
        self.drain()?;
        self.props.file_size = self.written;
        Ok(std::mem::take(&mut self.props))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::{new_queue, FileSystem, OpenMode, QueueKind, StdFs};
    use crate::key::{compare_internal, make_internal_key};
    use std::cmp::Ordering;

    #[test]
    fn separator_is_between() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"kabc", b"kabd"),
            (b"kabc", b"kazz"),
            (b"kab", b"kabzz"),
            (b"kab\xff", b"kac"),
            (b"kabcdef", b"kb"),
            (b"kfoo", b"kfoo"),
        ];
        let mut out = Vec::new();
        for (a, b) in cases {
            let last = make_internal_key(a, 9, 9, 1);
            let next = make_internal_key(b, 3, 3, 1);
            separator(&last, &next, &mut out);
            assert_ne!(compare_internal(&out, &last), Ordering::Less, "{a:?} {b:?}");
            assert_eq!(compare_internal(&out, &next), Ordering::Less, "{a:?} {b:?}");
        }
        separator(
            &make_internal_key(b"kabcdef", 1, 1, 1),
            &make_internal_key(b"kd", 1, 1, 1),
            &mut out,
        );
        assert_eq!(logical_key(&out), b"kb");
    }

    /// Builds a ~5 MB table through a queue of `kind`; returns its size.
    fn build_with(kind: QueueKind, file: Arc<dyn File>, path: &std::path::Path) -> Result<u64> {
        let opts = TableBuilderOptions::default();
        let mut b = TableBuilder::with_queue(file, path.to_path_buf(), opts, new_queue(kind));
        for i in 0..5000u32 {
            let key = make_internal_key(format!("k{i:08}").as_bytes(), 1, 1, 1);
            b.add(&key, &vec![(i % 251) as u8; 1000])?;
        }
        Ok(b.finish()?.file_size)
    }

    #[test]
    fn every_queue_writes_the_same_table() {
        let tmp = tempfile::tempdir().unwrap();
        let fs = StdFs::new();
        let mut images = Vec::new();
        for kind in [QueueKind::Inline, QueueKind::Thread, QueueKind::Uring] {
            let p = tmp.path().join(format!("{kind:?}.sst"));
            let f = fs.open(&p, OpenMode::CreateNew).unwrap();
            let size = build_with(kind, f, &p).unwrap();
            assert!(size > 4 << 20, "{kind:?}: {size}");
            let bytes = std::fs::read(&p).unwrap();
            assert_eq!(bytes.len() as u64, size, "{kind:?}");
            images.push(bytes);
        }
        assert!(images.windows(2).all(|w| w[0] == w[1]), "queues disagree");
    }

    #[test]
    fn queued_write_errors_carry_the_path_and_stick() {
        let tmp = tempfile::tempdir().unwrap();
        let fs = StdFs::new();
        for kind in [QueueKind::Inline, QueueKind::Thread, QueueKind::Uring] {
            let p = tmp.path().join(format!("{kind:?}.sst"));
            fs.open(&p, OpenMode::CreateNew).unwrap();
            let ro = fs.open(&p, OpenMode::Read).unwrap();
            let opts = TableBuilderOptions::default();
            let mut b = TableBuilder::with_queue(ro, p.clone(), opts, new_queue(kind));
            let mut first = None;
            for i in 0..5000u32 {
                let key = make_internal_key(format!("k{i:08}").as_bytes(), 1, 1, 1);
                if let Err(e) = b.add(&key, &[7u8; 1000]) {
                    first = Some(e);
                    break;
                }
            }
            let err = match first {
                Some(e) => {
                    // The builder refuses further work once it failed.
                    let key = make_internal_key(b"zz", 1, 1, 1);
                    assert!(b.add(&key, b"v").is_err(), "{kind:?}");
                    assert!(b.finish().is_err(), "{kind:?}");
                    e
                }
                // The error may only surface when finish waits for the writes.
                None => b.finish().unwrap_err(),
            };
            match err {
                Error::Io { op, path, source } => {
                    assert_eq!(path, p, "{kind:?}");
                    assert_eq!(op, "write", "{kind:?}");
                    assert_eq!(source.raw_os_error(), Some(libc::EBADF), "{kind:?}");
                }
                other => panic!("{kind:?}: expected an io error, got {other:?}"),
            }
        }
    }
}

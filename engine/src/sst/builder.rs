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
use crate::error::{Error, IoContext, Result};
use crate::fs::File;
use crate::key::{encode_trailer, logical_key, parse_trailer, Kind, KIND_SEEK, MAX_SEQ};
use crate::options::{Compression, Options};

/// Output is handed to the file in chunks of at least this many bytes.
const WRITE_CHUNK: usize = 1 << 20;

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
pub struct TableBuilder {
    file: Arc<dyn File>,
    path: PathBuf,
    opts: TableBuilderOptions,
    /// Bytes not yet handed to the file; they start at `written`.
    out: Vec<u8>,
    written: u64,
    block: BlockBuilder,
    index: BlockBuilder,
    pending: Option<BlockHandle>,
    filter: Option<FilterBuilder>,
    scratch: Vec<u8>,
    sep: Vec<u8>,
    handle_buf: Vec<u8>,
    props: TableProperties,
    failed: bool,
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
            out.extend_from_slice(&encode_trailer(MAX_SEQ, KIND_SEEK));
            return;
        }
    }
    out.extend_from_slice(last);
}

impl TableBuilder {
    /// Starts a table written to `file` (named `path` in errors) from offset 0.
    pub fn new(file: Arc<dyn File>, path: PathBuf, opts: TableBuilderOptions) -> TableBuilder {
        let block_bytes = opts.block_bytes.max(64);
        TableBuilder {
            file,
            path,
            out: Vec::with_capacity(WRITE_CHUNK + 2 * block_bytes),
            written: 0,
            block: BlockBuilder::new(opts.restart_interval, block_bytes + block_bytes / 4),
            index: BlockBuilder::new(1, 4096),
            pending: None,
            filter: (opts.bloom_bits_per_key > 0)
                .then(|| FilterBuilder::new(opts.bloom_bits_per_key)),
            scratch: Vec::new(),
            sep: Vec::new(),
            handle_buf: Vec::with_capacity(20),
            props: TableProperties::default(),
            failed: false,
            opts: TableBuilderOptions {
                block_bytes,
                ..opts
            },
        }
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
        if parse_trailer(ikey).1 == Kind::Delete as u8 {
            self.props.num_deletions += 1;
        }
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

    fn flush_out(&mut self) -> Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        if let Err(e) = self
            .file
            .write_all_at(&self.out, self.written)
            .ctx("write", &self.path)
        {
            self.failed = true;
            return Err(e);
        }
        self.written += self.out.len() as u64;
        self.out.clear();
        Ok(())
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
        self.file.sync_data().ctx("fdatasync", &self.path)?;
        self.props.file_size = self.written;
        Ok(std::mem::take(&mut self.props))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
            let last = make_internal_key(a, 9, 1);
            let next = make_internal_key(b, 3, 1);
            separator(&last, &next, &mut out);
            assert_ne!(compare_internal(&out, &last), Ordering::Less, "{a:?} {b:?}");
            assert_eq!(compare_internal(&out, &next), Ordering::Less, "{a:?} {b:?}");
        }
        separator(
            &make_internal_key(b"kabcdef", 1, 1),
            &make_internal_key(b"kd", 1, 1),
            &mut out,
        );
        assert_eq!(logical_key(&out), b"kb");
    }
}

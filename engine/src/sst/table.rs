//! Reading a table: point lookups, two-level iteration, checksum verification.

use std::cmp::Ordering;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::block::{Block, BlockCursor};
use super::filter::{bloom_hash, BloomFilter};
use super::{
    clone_error, decode_block_contents, read_error, BlockHandle, Footer, TableProperties,
    FOOTER_LEN,
};
use crate::cache::BlockCache;
use crate::error::{Error, IoContext, Result};
use crate::fs::File;
use crate::iter::InternalIterator;
use crate::key::{compare_internal, logical_key, parse_trailer, MAX_SEQ, TRAILER_LEN};
use crate::options::BlockRead;
use crate::range_del::{self, FragmentedTombstones, RangeTombstone};

/// An open, immutable table file. Index and filter stay in memory; data blocks
/// are read on demand (through the block cache when one is given).
pub struct Table {
    file: Arc<dyn File>,
    path: PathBuf,
    file_number: u64,
    /// End of the data block region (start of the first meta block).
    data_end: u64,
    index_handle: BlockHandle,
    filter_handle: BlockHandle,
    props_handle: BlockHandle,
    index: Arc<Block>,
    filter: Option<BloomFilter>,
    props: TableProperties,
    cache: Option<Arc<BlockCache>>,
    /// For an ingested table: the sequence number every entry reads as.
    global_seq: Option<u64>,
    /// The range-deletion block, fragmented; `None` when the table has none.
    range_dels: Option<Arc<FragmentedTombstones>>,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("path", &self.path)
            .field("file_number", &self.file_number)
            .field("props", &self.props)
            .finish_non_exhaustive()
    }
}

impl Table {
    /// Opens the table in `file` of `file_size` bytes, verifying footer, index, filter and properties.
    pub fn open(
        file: Arc<dyn File>,
        path: PathBuf,
        file_number: u64,
        file_size: u64,
        cache: Option<Arc<BlockCache>>,
    ) -> Result<Arc<Table>> {
        Table::open_with_global_seq(file, path, file_number, file_size, cache, None)
    }

    /// [`Table::open`] for a table whose entries all read as sequence `global_seq`
    /// (an ingested table, written with sequence 0 and unique (key, version) pairs).
    pub fn open_with_global_seq(
        file: Arc<dyn File>,
        path: PathBuf,
        file_number: u64,
        file_size: u64,
        cache: Option<Arc<BlockCache>>,
        global_seq: Option<u64>,
    ) -> Result<Arc<Table>> {
        let p: &Path = &path;
        if file_size < FOOTER_LEN as u64 {
            return Err(Error::corruption(
                p,
                0,
                format!("file of {file_size} bytes is too short for a table footer"),
            ));
        }
        let actual = file.len().ctx("stat", p)?;
        if actual < file_size {
            return Err(Error::corruption(
                p,
                actual,
                format!("table truncated: {actual} bytes on disk, expected {file_size}"),
            ));
        }
        let footer_off = file_size - FOOTER_LEN as u64;
        let mut fbuf = [0u8; FOOTER_LEN];
        file.read_exact_at(&mut fbuf, footer_off)
            .map_err(|e| read_error(e, p, footer_off, "footer"))?;
        let footer = Footer::decode(&fbuf, p, footer_off)?;

        let mut meta_start = footer_off;
        for (h, what) in [
            (footer.index, "index"),
            (footer.props, "properties"),
            (footer.filter, "filter"),
        ] {
            if what == "filter" && h.size == 0 {
                continue;
            }
            match h.end() {
                Some(end) if end <= footer_off => meta_start = meta_start.min(h.offset),
                _ => {
                    return Err(Error::corruption(
                        p,
                        footer_off,
                        format!(
                            "{what} block handle (offset {}, size {}) out of range",
                            h.offset, h.size
                        ),
                    ))
                }
            }
        }
        let region_len = usize::try_from(footer_off - meta_start)
            .map_err(|_| Error::corruption(p, meta_start, "meta region too large"))?;
        let mut region = vec![0u8; region_len];
        file.read_exact_at(&mut region, meta_start)
            .map_err(|e| read_error(e, p, meta_start, "meta blocks"))?;
        let slice = |h: BlockHandle| -> Vec<u8> {
            let s = (h.offset - meta_start) as usize;
            let e = s + h.size as usize + super::BLOCK_TRAILER_LEN;
            region[s..e].to_vec()
        };

        let index_contents = decode_block_contents(slice(footer.index), p, footer.index.offset)?;
        let index = Block::new(index_contents)
            .ok_or_else(|| Error::corruption(p, footer.index.offset, "malformed index block"))?
            .with_restart_sample();
        let filter = if footer.filter.size == 0 {
            None
        } else {
            let c = decode_block_contents(slice(footer.filter), p, footer.filter.offset)?;
            Some(BloomFilter::new(c).ok_or_else(|| {
                Error::corruption(p, footer.filter.offset, "malformed filter block")
            })?)
        };
        let pc = decode_block_contents(slice(footer.props), p, footer.props.offset)?;
        let props = TableProperties::decode(&pc, file_size).ok_or_else(|| {
            Error::corruption(p, footer.props.offset, "malformed properties block")
        })?;
        let range_dels = read_range_dels(&region, meta_start, &props, p, footer.props.offset)?;
        drop(region);
        Ok(Arc::new(Table {
            file,
            path,
            file_number,
            data_end: meta_start,
            index_handle: footer.index,
            filter_handle: footer.filter,
            props_handle: footer.props,
            index: Arc::new(index),
            filter,
            props: match global_seq {
                Some(g) => TableProperties {
                    smallest: with_seq(&props.smallest, g),
                    largest: with_seq(&props.largest, g),
                    max_seq: g,
                    ..props
                },
                None => props,
            },
            cache,
            global_seq,
            range_dels,
        }))
    }

    /// The sequence number every entry reads as, for an ingested table.
    pub fn global_seq(&self) -> Option<u64> {
        self.global_seq
    }

    /// The table's range tombstones, fragmented; `None` (no cost) when it has none.
    #[inline]
    pub fn range_tombstones(&self) -> Option<&Arc<FragmentedTombstones>> {
        self.range_dels.as_ref()
    }

    /// The table's properties.
    pub fn properties(&self) -> &TableProperties {
        &self.props
    }

    /// The file number given at open (the block cache key).
    pub fn file_number(&self) -> u64 {
        self.file_number
    }

    /// The path used in errors.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes of index, filter and range tombstones held in memory.
    pub fn memory_usage(&self) -> usize {
        self.index.charge()
            + self.filter.as_ref().map_or(0, |f| f.memory())
            + self
                .range_dels
                .as_ref()
                .map_or(0, |r| r.approximate_bytes())
    }

    /// False when the bloom filter proves `logical_key` (namespace + user key) absent.
    #[inline]
    pub fn may_contain(&self, logical_key: &[u8]) -> bool {
        match &self.filter {
            Some(f) => f.may_contain_hash(bloom_hash(logical_key)),
            None => true,
        }
    }

    /// Like [`Table::may_contain`] with a precomputed [`bloom_hash`] of the logical key.
    #[inline]
    pub fn may_contain_hash(&self, hash: u64) -> bool {
        match &self.filter {
            Some(f) => f.may_contain_hash(hash),
            None => true,
        }
    }

    /// The first entry with internal key >= `lookup`, if its logical key equals `lookup`'s.
    pub fn get(&self, lookup: &[u8], mode: BlockRead) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        if lookup.len() < TRAILER_LEN || !self.may_contain(logical_key(lookup)) {
            return Ok(None);
        }
        self.get_unfiltered(lookup, mode)
    }

    /// Like [`Table::get`], skipping entries with a sequence number below `min_seq`.
    ///
    /// Point reads under a range tombstone of sequence `t` pass `t + 1`: the
    /// first entry at or after `lookup` with a sequence number in
    /// `min_seq..=read seq` (the read sequence is `lookup`'s).
    pub fn get_from(
        &self,
        lookup: &[u8],
        min_seq: u64,
        mode: BlockRead,
    ) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        if lookup.len() < TRAILER_LEN || !self.may_contain(logical_key(lookup)) {
            return Ok(None);
        }
        self.get_unfiltered_from(lookup, min_seq, mode)
    }

    /// [`Table::get`] with the bloom check done by the caller via [`Table::may_contain_hash`].
    pub fn get_unfiltered(
        &self,
        lookup: &[u8],
        mode: BlockRead,
    ) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        self.get_unfiltered_from(lookup, 0, mode)
    }

    /// [`Table::get_from`] without the bloom check.
    pub fn get_unfiltered_from(
        &self,
        lookup: &[u8],
        min_seq: u64,
        mode: BlockRead,
    ) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        if lookup.len() < TRAILER_LEN {
            return Ok(None);
        }
        let logical = logical_key(lookup);
        let mut key = Vec::with_capacity(lookup.len() + 16);
        let mut icur = BlockCursor::default();
        icur.seek(&self.index, &mut key, lookup);
        if icur.corrupt {
            return Err(self.index_corruption("malformed index entry"));
        }
        if !icur.valid {
            return Ok(None);
        }
        let h = self.decode_handle(icur.value(&self.index))?;
        key = match self.search_block(h, lookup, logical, key, min_seq, mode)? {
            Probe::Found(k, v) => return Ok(Some((k, v))),
            Probe::Absent => return Ok(None),
            Probe::PastEnd(k) => k,
        };
        // Only reachable when a separator is not tight: continue in the following blocks.
        let mut ikey = Vec::new();
        icur.seek(&self.index, &mut ikey, lookup);
        loop {
            icur.next(&self.index, &mut ikey);
            if icur.corrupt {
                return Err(self.index_corruption("malformed index entry"));
            }
            if !icur.valid {
                return Ok(None);
            }
            let h = self.decode_handle(icur.value(&self.index))?;
            key = match self.search_block(h, lookup, logical, key, min_seq, mode)? {
                Probe::Found(k, v) => return Ok(Some((k, v))),
                Probe::Absent => return Ok(None),
                Probe::PastEnd(k) => k,
            };
        }
    }

    /// Seeks `lookup` inside the data block `h`, using `key` as the key buffer.
    #[inline]
    fn search_block(
        &self,
        h: BlockHandle,
        lookup: &[u8],
        logical: &[u8],
        mut key: Vec<u8>,
        min_seq: u64,
        mode: BlockRead,
    ) -> Result<Probe> {
        let block = self.read_block(h, mode)?;
        let mut c = BlockCursor::default();
        c.seek(&block, &mut key, lookup);
        if c.corrupt {
            return Err(Error::corruption(
                &self.path,
                h.offset,
                "malformed data block entry",
            ));
        }
        let read_seq = parse_trailer(lookup).0;
        // Entries of lower versions written after the reader's sequence may sort first: step
        // past them (and past entries below `min_seq`, which a range tombstone hides).
        loop {
            if c.corrupt {
                return Err(Error::corruption(
                    &self.path,
                    h.offset,
                    "malformed data block entry",
                ));
            }
            if !c.valid {
                return Ok(Probe::PastEnd(key));
            }
            if logical_key(&key) != logical {
                return Ok(Probe::Absent);
            }
            if let Some(g) = self.global_seq {
                if g > read_seq || g < min_seq {
                    // Every entry of an ingested table has this sequence: none is visible.
                    return Ok(Probe::Absent);
                }
                let v = c.value(&block).to_vec();
                return Ok(Probe::Found(with_seq(&key, g), v));
            }
            let seq = parse_trailer(&key).0;
            if seq <= read_seq && seq >= min_seq {
                let v = c.value(&block).to_vec();
                return Ok(Probe::Found(key, v));
            }
            c.next(&block, &mut key);
        }
    }

    /// Approximate file offset where entries >= `ikey` begin.
    pub fn approximate_offset(&self, ikey: &[u8]) -> u64 {
        let mut key = Vec::new();
        let mut c = BlockCursor::default();
        c.seek(&self.index, &mut key, ikey);
        if c.valid {
            if let Some(h) = BlockHandle::decode(c.value(&self.index)) {
                return h.offset;
            }
        }
        self.data_end
    }

    /// A cursor over all entries.
    pub fn iter(self: &Arc<Self>, mode: BlockRead) -> TableIterator {
        TableIterator {
            table: Arc::clone(self),
            mode,
            index_cur: BlockCursor::default(),
            index_key: Vec::new(),
            data_block: None,
            data_offset: 0,
            data_cur: BlockCursor::default(),
            data_key: Vec::new(),
            patched_key: Vec::new(),
            readahead: Readahead::new(),
            err: None,
        }
    }

    /// Reads every block from disk and verifies checksums, structure and key order.
    pub fn verify_checksums(&self) -> Result<()> {
        let p = &self.path;
        let meta_end = self.file_size_of_meta();
        let mut region = vec![0u8; (meta_end - self.data_end) as usize];
        self.file
            .read_exact_at(&mut region, self.data_end)
            .map_err(|e| read_error(e, p, self.data_end, "meta blocks"))?;
        for h in [self.index_handle, self.filter_handle, self.props_handle] {
            if h.size == 0 && h == self.filter_handle {
                continue;
            }
            let s = (h.offset - self.data_end) as usize;
            let e = s + h.size as usize + super::BLOCK_TRAILER_LEN;
            decode_block_contents(region[s..e].to_vec(), p, h.offset)?;
        }
        read_range_dels(
            &region,
            self.data_end,
            &self.props,
            p,
            self.props_handle.offset,
        )?;
        drop(region);

        let mut ikey = Vec::new();
        let mut icur = BlockCursor::default();
        icur.seek_to_first(&self.index, &mut ikey);
        let mut key = Vec::new();
        let mut prev: Vec<u8> = Vec::new();
        let mut entries = 0u64;
        let mut expected_offset = 0u64;
        while icur.valid {
            let h = self.decode_handle(icur.value(&self.index))?;
            if h.offset != expected_offset {
                return Err(self.index_corruption("index block handles are not contiguous"));
            }
            expected_offset = h.end().unwrap_or(u64::MAX);
            let block = self.read_block_uncached(h)?;
            let mut c = BlockCursor::default();
            c.seek_to_first(&block, &mut key);
            while c.valid {
                if entries > 0 && compare_internal(&prev, &key) != Ordering::Less {
                    return Err(Error::corruption(p, h.offset, "keys out of order"));
                }
                if compare_internal(&key, &ikey) == Ordering::Greater {
                    return Err(Error::corruption(
                        p,
                        h.offset,
                        "key above its index separator",
                    ));
                }
                prev.clear();
                prev.extend_from_slice(&key);
                entries += 1;
                c.next(&block, &mut key);
            }
            if c.corrupt {
                return Err(Error::corruption(p, h.offset, "malformed data block entry"));
            }
            icur.next(&self.index, &mut ikey);
        }
        if icur.corrupt {
            return Err(self.index_corruption("malformed index entry"));
        }
        if entries != self.props.num_entries {
            return Err(Error::corruption(
                p,
                self.props_handle.offset,
                format!(
                    "properties claim {} entries, data blocks hold {entries}",
                    self.props.num_entries
                ),
            ));
        }
        Ok(())
    }

    /// (offset, size) of every data block, in order.
    #[cfg(test)]
    pub(crate) fn data_block_handles(&self) -> Vec<(u64, u64)> {
        let mut key = Vec::new();
        let mut c = BlockCursor::default();
        let mut out = Vec::new();
        c.seek_to_first(&self.index, &mut key);
        while c.valid {
            if let Some(h) = BlockHandle::decode(c.value(&self.index)) {
                out.push((h.offset, h.size));
            }
            c.next(&self.index, &mut key);
        }
        out
    }

    /// Offset of the index block.
    #[cfg(test)]
    pub(crate) fn index_offset(&self) -> u64 {
        self.index_handle.offset
    }

    fn file_size_of_meta(&self) -> u64 {
        self.props.file_size - FOOTER_LEN as u64
    }

    fn index_corruption(&self, msg: &str) -> Error {
        Error::corruption(&self.path, self.index_handle.offset, msg)
    }

    #[inline]
    fn decode_handle(&self, v: &[u8]) -> Result<BlockHandle> {
        BlockHandle::decode(v).ok_or_else(|| self.index_corruption("bad block handle in index"))
    }

    /// Returns a data block from the cache or, unless `mode` is cache-only, from disk
    /// (inserting it into the cache with `BlockRead::Fill`).
    fn read_block(&self, h: BlockHandle, mode: BlockRead) -> Result<Arc<Block>> {
        if let Some(c) = &self.cache {
            if let Some(b) = c.lookup(self.file_number, h.offset) {
                return Ok(b);
            }
        }
        if mode == BlockRead::CacheOnly {
            return Err(Error::WouldBlock(
                "a table block missing from the block cache",
            ));
        }
        let b = Arc::new(self.read_block_uncached(h)?);
        if mode == BlockRead::Fill {
            if let Some(c) = &self.cache {
                c.insert(self.file_number, h.offset, Arc::clone(&b));
            }
        }
        Ok(b)
    }

    fn read_block_uncached(&self, h: BlockHandle) -> Result<Block> {
        let p = &self.path;
        match h.end() {
            Some(end) if end <= self.data_end => {}
            _ => {
                return Err(Error::corruption(
                    p,
                    h.offset,
                    format!("data block handle (size {}) out of range", h.size),
                ))
            }
        }
        let raw = self
            .file
            .read_exact_vec(h.size as usize + super::BLOCK_TRAILER_LEN, h.offset)
            .map_err(|e| read_error(e, p, h.offset, "data block"))?;
        self.decode_data_block(h, raw)
    }

    /// Verifies and parses the raw bytes (block plus trailer) of data block `h`.
    fn decode_data_block(&self, h: BlockHandle, raw: Vec<u8>) -> Result<Block> {
        let p = &self.path;
        let contents = decode_block_contents(raw, p, h.offset)?;
        Block::new(contents)
            .ok_or_else(|| Error::corruption(p, h.offset, "malformed block restart array"))
    }

    /// Like `read_block`, but a miss is served from (or refills) `ra`, which holds the
    /// bytes of several consecutive data blocks read with one call.
    fn read_block_ahead(
        &self,
        h: BlockHandle,
        mode: BlockRead,
        ra: &mut Readahead,
    ) -> Result<Arc<Block>> {
        if mode == BlockRead::CacheOnly {
            return self.read_block(h, mode);
        }
        if let Some(c) = &self.cache {
            if let Some(b) = c.lookup(self.file_number, h.offset) {
                return Ok(b);
            }
        }
        let p = &self.path;
        let len = h.size as usize + super::BLOCK_TRAILER_LEN;
        let end = match h.end() {
            Some(end) if end <= self.data_end => end,
            _ => {
                return Err(Error::corruption(
                    p,
                    h.offset,
                    format!("data block handle (size {}) out of range", h.size),
                ))
            }
        };
        let buffered = ra.offset <= h.offset && end <= ra.offset + ra.buf.len() as u64;
        if !buffered {
            let want = (ra.next_len.max(len) as u64).min(self.data_end - h.offset) as usize;
            ra.buf.resize(want, 0);
            if let Err(e) = self.file.read_exact_at(&mut ra.buf, h.offset) {
                ra.buf.clear();
                return Err(read_error(e, p, h.offset, "data blocks (readahead)"));
            }
            ra.offset = h.offset;
            ra.next_len = (ra.next_len * 2).min(READAHEAD_MAX);
        }
        let s = (h.offset - ra.offset) as usize;
        let b = Arc::new(self.decode_data_block(h, ra.buf[s..s + len].to_vec())?);
        if mode == BlockRead::Fill {
            if let Some(c) = &self.cache {
                c.insert(self.file_number, h.offset, Arc::clone(&b));
            }
        }
        Ok(b)
    }
}

/// Data blocks a forward scan must cross in a row before it reads ahead.
const READAHEAD_AFTER: u32 = 2;
/// First readahead size; it doubles on each refill up to [`READAHEAD_MAX`].
const READAHEAD_MIN: usize = 16 << 10;
/// Largest readahead of one table cursor.
const READAHEAD_MAX: usize = 256 << 10;

/// A table cursor's readahead: consecutive data blocks read with one call for a bulk
/// scan (`BlockRead::NoFill`: compaction, exports, GC) that keeps moving forward.
#[derive(Debug)]
struct Readahead {
    /// File offset of `buf[0]`.
    offset: u64,
    /// Raw bytes (blocks with trailers) from `offset`.
    buf: Vec<u8>,
    /// Bytes the next refill reads.
    next_len: usize,
    /// Data blocks loaded in a row by forward steps since the last seek.
    sequential: u32,
}

impl Readahead {
    fn new() -> Readahead {
        Readahead {
            offset: 0,
            buf: Vec::new(),
            next_len: READAHEAD_MIN,
            sequential: 0,
        }
    }

    /// A seek: the next block is not part of a forward run.
    fn reset(&mut self) {
        self.sequential = 0;
        self.next_len = READAHEAD_MIN;
    }
}

/// Reads, verifies and fragments the range-deletion block named by `props`, if any.
///
/// `region` holds the file from `meta_start` to the footer; the block must lie
/// inside it. Besides the block's own checks (`range_del::decode_block`), every
/// tombstone must carry the engine's version, a sequence number within the
/// table's `max_seq`, and lie inside the table's key range; the count must
/// match the properties. Failures are corruption at the block (or, for a bad
/// handle, at the properties block `props_offset`).
fn read_range_dels(
    region: &[u8],
    meta_start: u64,
    props: &TableProperties,
    p: &Path,
    props_offset: u64,
) -> Result<Option<Arc<FragmentedTombstones>>> {
    let h = props.range_del;
    if h.size == 0 {
        if h.offset != 0 || props.num_range_deletions != 0 {
            return Err(Error::corruption(
                p,
                props_offset,
                "range-deletion properties without a range-deletion block",
            ));
        }
        return Ok(None);
    }
    let footer_off = meta_start + region.len() as u64;
    let in_region = h.offset >= meta_start && h.end().is_some_and(|end| end <= footer_off);
    if !in_region {
        return Err(Error::corruption(
            p,
            props_offset,
            format!(
                "range-deletion block handle (offset {}, size {}) outside the meta blocks",
                h.offset, h.size
            ),
        ));
    }
    let s = (h.offset - meta_start) as usize;
    let e = s + h.size as usize + super::BLOCK_TRAILER_LEN;
    let contents = decode_block_contents(region[s..e].to_vec(), p, h.offset)?;
    let tombstones = range_del::decode_block(&contents, p, h.offset)?;
    let bad = |msg: String| Error::corruption(p, h.offset, format!("range-deletion block: {msg}"));
    if tombstones.len() as u64 != props.num_range_deletions {
        return Err(bad(format!(
            "{} tombstones, the properties say {}",
            tombstones.len(),
            props.num_range_deletions
        )));
    }
    for (i, t) in tombstones.iter().enumerate() {
        check_tombstone(t, props).map_err(|m| bad(format!("tombstone {i}: {m}")))?;
    }
    let refs: Vec<&RangeTombstone> = tombstones.iter().collect();
    Ok(Some(Arc::new(FragmentedTombstones::from_valid(refs))))
}

/// [`read_range_dels`] over an empty meta region (unit tests of the property checks).
#[cfg(test)]
pub(crate) fn read_range_dels_for_test(
    props: &TableProperties,
) -> Result<Option<Arc<FragmentedTombstones>>> {
    read_range_dels(&[], 0, props, Path::new("t.sst"), 0)
}

/// Checks one decoded tombstone against the engine's stamp convention and the table's bounds.
fn check_tombstone(t: &RangeTombstone, props: &TableProperties) -> std::result::Result<(), String> {
    if t.version != range_del::ENGINE_VERSION {
        return Err(format!(
            "version {} (the engine writes {})",
            t.version,
            range_del::ENGINE_VERSION
        ));
    }
    if t.seq > MAX_SEQ || t.seq > props.max_seq {
        return Err(format!(
            "sequence {} above the table's max_seq {}",
            t.seq, props.max_seq
        ));
    }
    let inside = props.smallest.len() >= TRAILER_LEN
        && props.largest.len() >= TRAILER_LEN
        && compare_internal(&props.smallest, &range_del::smallest_bound(&t.start)).is_le()
        && compare_internal(&range_del::largest_bound(&t.end), &props.largest).is_le();
    if !inside {
        return Err("outside the table's key range".into());
    }
    Ok(())
}

/// Outcome of searching one data block.
enum Probe {
    Found(Vec<u8>, Vec<u8>),
    Absent,
    PastEnd(Vec<u8>),
}

/// Two-level cursor over a table: an index cursor selecting data blocks and a
/// cursor inside the current data block.
pub struct TableIterator {
    table: Arc<Table>,
    mode: BlockRead,
    index_cur: BlockCursor,
    index_key: Vec<u8>,
    data_block: Option<Arc<Block>>,
    data_offset: u64,
    data_cur: BlockCursor,
    data_key: Vec<u8>,
    /// `data_key` with the table's global sequence number (ingested tables only).
    patched_key: Vec<u8>,
    readahead: Readahead,
    err: Option<Error>,
}

impl std::fmt::Debug for TableIterator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableIterator")
            .field("path", &self.table.path)
            .field("valid", &self.data_cur.valid)
            .finish_non_exhaustive()
    }
}

impl TableIterator {
    /// The table this cursor reads.
    pub fn table(&self) -> &Arc<Table> {
        &self.table
    }

    fn fail(&mut self, e: Error) {
        if self.err.is_none() {
            self.err = Some(e);
        }
        self.data_cur.valid = false;
        self.index_cur.valid = false;
    }

    /// Checks the cursors for malformed entries; false (and failed) if any.
    #[inline]
    fn check(&mut self) -> bool {
        if self.index_cur.corrupt {
            let e = self.table.index_corruption("malformed index entry");
            self.fail(e);
            return false;
        }
        if self.data_cur.corrupt {
            let e = Error::corruption(
                &self.table.path,
                self.data_offset,
                "malformed data block entry",
            );
            self.fail(e);
            return false;
        }
        true
    }

    /// Loads the data block the index cursor points at; false when there is none.
    fn load_block(&mut self) -> bool {
        self.data_cur.valid = false;
        if !self.check() || !self.index_cur.valid {
            return false;
        }
        let h = match self
            .table
            .decode_handle(self.index_cur.value(&self.table.index))
        {
            Ok(h) => h,
            Err(e) => {
                self.fail(e);
                return false;
            }
        };
        if self.data_block.is_some() && self.data_offset == h.offset {
            return true;
        }
        // Bulk readers only (compaction, exports, GC, scans that skip the cache): short
        // scans from the page cache lose more to the extra copy than the preads cost.
        let read = if self.mode == BlockRead::NoFill && self.readahead.sequential > READAHEAD_AFTER
        {
            self.table
                .read_block_ahead(h, self.mode, &mut self.readahead)
        } else {
            self.table.read_block(h, self.mode)
        };
        match read {
            Ok(b) => {
                self.data_block = Some(b);
                self.data_offset = h.offset;
                true
            }
            Err(e) => {
                self.data_block = None;
                self.fail(e);
                false
            }
        }
    }

    fn skip_forward(&mut self) {
        while !self.data_cur.valid {
            if !self.check() || !self.index_cur.valid {
                return;
            }
            self.index_cur.next(&self.table.index, &mut self.index_key);
            self.readahead.sequential = self.readahead.sequential.saturating_add(1);
            if !self.load_block() {
                return;
            }
            if let Some(b) = &self.data_block {
                self.data_cur.seek_to_first(b, &mut self.data_key);
            }
        }
    }

    fn skip_backward(&mut self) {
        while !self.data_cur.valid {
            if !self.check() || !self.index_cur.valid {
                return;
            }
            self.index_cur.prev(&self.table.index, &mut self.index_key);
            self.readahead.reset();
            if !self.load_block() {
                return;
            }
            if let Some(b) = &self.data_block {
                self.data_cur.seek_to_last(b, &mut self.data_key);
            }
        }
    }
}

impl TableIterator {
    /// Refreshes `patched_key` after a move (ingested tables only).
    #[inline]
    fn patch(&mut self) {
        if let Some(g) = self.table.global_seq {
            if self.data_cur.valid {
                self.patched_key.clear();
                self.patched_key.extend_from_slice(&self.data_key);
                let n = self.patched_key.len();
                let (_, kind) = parse_trailer(&self.data_key);
                self.patched_key[n - 8..]
                    .copy_from_slice(&(!((g << 8) | kind as u64)).to_be_bytes());
            }
        }
    }
}

/// `ikey` with its sequence number replaced by `seq` (kind kept).
fn with_seq(ikey: &[u8], seq: u64) -> Vec<u8> {
    if ikey.len() < TRAILER_LEN {
        return ikey.to_vec();
    }
    let mut out = ikey.to_vec();
    let n = out.len();
    let (_, kind) = parse_trailer(ikey);
    out[n - 8..].copy_from_slice(&(!((seq << 8) | kind as u64)).to_be_bytes());
    out
}

impl InternalIterator for TableIterator {
    #[inline]
    fn valid(&self) -> bool {
        self.data_cur.valid
    }

    fn seek_to_first(&mut self) {
        if self.err.is_some() {
            return;
        }
        self.index_cur
            .seek_to_first(&self.table.index, &mut self.index_key);
        self.readahead.reset();
        if self.load_block() {
            if let Some(b) = &self.data_block {
                self.data_cur.seek_to_first(b, &mut self.data_key);
            }
        }
        self.skip_forward();
        self.patch();
    }

    fn seek_to_last(&mut self) {
        if self.err.is_some() {
            return;
        }
        self.index_cur
            .seek_to_last(&self.table.index, &mut self.index_key);
        self.readahead.reset();
        if self.load_block() {
            if let Some(b) = &self.data_block {
                self.data_cur.seek_to_last(b, &mut self.data_key);
            }
        }
        self.skip_backward();
        self.patch();
    }

    fn seek(&mut self, target: &[u8]) {
        if self.err.is_some() {
            return;
        }
        if target.len() < TRAILER_LEN {
            // Shorter than any internal key: sorts before everything with the same prefix.
            self.fail(Error::InvalidArgument(
                "seek target shorter than an internal key trailer".into(),
            ));
            return;
        }
        self.index_cur
            .seek(&self.table.index, &mut self.index_key, target);
        self.readahead.reset();
        if self.load_block() {
            if let Some(b) = &self.data_block {
                self.data_cur.seek(b, &mut self.data_key, target);
            }
        }
        self.skip_forward();
        self.patch();
    }

    fn seek_for_prev(&mut self, target: &[u8]) {
        self.seek(target);
        if self.data_cur.valid {
            if compare_internal(&self.data_key, target) == Ordering::Greater {
                self.prev();
            }
        } else if self.err.is_none() {
            self.seek_to_last();
        }
    }

    #[inline]
    fn next(&mut self) {
        debug_assert!(self.data_cur.valid);
        if let Some(b) = &self.data_block {
            self.data_cur.next(b, &mut self.data_key);
        }
        if !self.data_cur.valid {
            self.skip_forward();
        }
        self.patch();
    }

    fn prev(&mut self) {
        debug_assert!(self.data_cur.valid);
        if let Some(b) = &self.data_block {
            self.data_cur.prev(b, &mut self.data_key);
        }
        if !self.data_cur.valid {
            self.skip_backward();
        }
        self.patch();
    }

    #[inline]
    fn key(&self) -> &[u8] {
        if self.table.global_seq.is_some() {
            &self.patched_key
        } else {
            &self.data_key
        }
    }

    #[inline]
    fn value(&self) -> &[u8] {
        match &self.data_block {
            Some(b) => self.data_cur.value(b),
            None => &[],
        }
    }

    fn status(&self) -> Result<()> {
        match &self.err {
            Some(e) => Err(clone_error(e)),
            None => Ok(()),
        }
    }
}

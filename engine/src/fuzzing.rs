//! Thin entry points for the fuzz targets in `engine/fuzz/` (cargo-fuzz), for decoders that
//! are private to the crate. Not a stable API: nothing in the engine or its users calls it,
//! and it exposes no internals beyond what the targets feed bytes to.

use std::path::Path;
use std::sync::Arc;

use crate::error::Result;
use crate::fs::FileSystem;
use crate::region_snapshot::{self, SnapshotManifest};
use crate::sst::{self, Block, BlockCursor, BloomFilter, TableProperties};

/// A decoded block and a cursor over it ([`crate::sst`]'s data and index blocks).
pub struct BlockReader {
    block: Block,
    cursor: BlockCursor,
    key: Vec<u8>,
}

impl BlockReader {
    /// Validates `data` as block contents (`None`: malformed restart array); `sample`
    /// samples the restart keys as an index block does.
    pub fn new(data: Vec<u8>, sample: bool) -> Option<BlockReader> {
        let block = Block::new(data)?;
        let block = if sample {
            block.with_restart_sample()
        } else {
            block
        };
        Some(BlockReader {
            block,
            cursor: BlockCursor::default(),
            key: Vec::new(),
        })
    }

    /// Positions at the first entry.
    pub fn seek_to_first(&mut self) {
        self.cursor.seek_to_first(&self.block, &mut self.key);
    }

    /// Positions at the last entry.
    pub fn seek_to_last(&mut self) {
        self.cursor.seek_to_last(&self.block, &mut self.key);
    }

    /// Positions at the first entry with key >= `target` (an internal key).
    pub fn seek(&mut self, target: &[u8]) {
        self.cursor.seek(&self.block, &mut self.key, target);
    }

    /// Moves to the next entry (requires `valid`).
    pub fn next(&mut self) {
        self.cursor.next(&self.block, &mut self.key);
    }

    /// Moves to the previous entry (requires `valid`).
    pub fn prev(&mut self) {
        self.cursor.prev(&self.block, &mut self.key);
    }

    /// True when positioned at an entry.
    pub fn valid(&self) -> bool {
        self.cursor.valid
    }

    /// True when a malformed entry was met.
    pub fn corrupt(&self) -> bool {
        self.cursor.corrupt
    }

    /// The current key (requires `valid`).
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The current value (requires `valid`).
    pub fn value(&self) -> &[u8] {
        self.cursor.value(&self.block)
    }
}

/// Builds block contents from `entries` (internal keys in increasing order) with a
/// restart point every `interval` entries, as the table builder does.
pub fn build_block(entries: &[(Vec<u8>, Vec<u8>)], interval: usize) -> Vec<u8> {
    let mut b = sst::BlockBuilder::new(interval, 4096);
    for (k, v) in entries {
        b.add(k, v);
    }
    b.finish().to_vec()
}

/// Checks a block's trailer (`stored | type u8 | crc32 u32 LE`) and decompresses it.
pub fn decode_block_contents(raw: Vec<u8>) -> Result<Vec<u8>> {
    sst::decode_block_contents(raw, Path::new("fuzz.sst"), 0)
}

/// Parses bloom filter block contents and probes it with `hashes` (`None`: malformed).
pub fn bloom_probe(data: Vec<u8>, hashes: &[u64]) -> Option<Vec<bool>> {
    let f = BloomFilter::new(data)?;
    Some(hashes.iter().map(|h| f.may_contain_hash(*h)).collect())
}

/// Decodes a table properties block (`None`: malformed).
pub fn decode_table_properties(buf: &[u8]) -> Option<TableProperties> {
    TableProperties::decode(buf, 0)
}

/// Encodes table properties as the builder writes them (`file_size` is not stored).
pub fn encode_table_properties(p: &TableProperties) -> Vec<u8> {
    p.encode()
}

/// Decodes a WAL batch payload: (first sequence number, number of operations); `None`
/// when it is malformed.
pub fn decode_batch(payload: &[u8]) -> Option<(u64, usize)> {
    crate::batch::decode_batch(payload).map(|b| (b.seq, b.ops.len()))
}

/// Checks a region snapshot directory as [`crate::Db::ingest`] does before it changes
/// anything: returns the manifest and the number of tables.
pub fn verify_snapshot(
    fs: &Arc<dyn FileSystem>,
    dir: &Path,
    expected: Option<&region_snapshot::RegionRange>,
) -> Result<(SnapshotManifest, usize)> {
    region_snapshot::verify(fs, dir, expected).map(|(m, t)| (m, t.len()))
}

//! Sorted string tables: immutable files of sorted internal keys.
//!
//! Layout (see `docs/format.md`): data blocks, filter block, index block,
//! range-deletion block (when the table holds range tombstones), properties
//! block, 64-byte footer. Every block carries a 5-byte trailer
//! (compression type + crc32).

mod block;
mod builder;
mod filter;
mod table;

#[cfg(test)]
pub(crate) mod tests;

use std::io;
use std::path::Path;

pub use block::Block;
pub(crate) use block::{BlockBuilder, BlockCursor};
pub use builder::{TableBuilder, TableBuilderOptions};
pub use filter::bloom_hash;
pub(crate) use filter::BloomFilter;
pub use table::{Table, TableIterator};

use crate::codec::{put_bytes, put_varint, Reader};
use crate::error::{Error, Result};
use crate::key::TRAILER_LEN;

/// Magic number at the end of every table file ("NoKVSST1" as bytes, little-endian u64).
pub const TABLE_MAGIC: u64 = u64::from_le_bytes(*b"NoKVSST1");
/// Table format version written by this build (and the highest it reads).
pub const FORMAT_VERSION: u32 = 2;
/// Size of the fixed footer at the end of the file.
pub const FOOTER_LEN: usize = 64;
/// Size of the trailer after every block: compression type (1) + crc32 (4).
pub const BLOCK_TRAILER_LEN: usize = 5;

/// Block trailer compression type: stored as is.
const COMPRESSION_NONE: u8 = 0;
/// Block trailer compression type: `u32 LE raw length | LZ4 block`.
const COMPRESSION_LZ4: u8 = 1;

/// Summary of a table, written in its properties block.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TableProperties {
    /// Total file size in bytes.
    pub file_size: u64,
    /// Number of entries (puts and tombstones).
    pub num_entries: u64,
    /// Smallest internal key (empty for an empty table).
    pub smallest: Vec<u8>,
    /// Largest internal key (empty for an empty table).
    pub largest: Vec<u8>,
    /// Bytes of data blocks on disk, trailers included.
    pub data_bytes: u64,
    /// Bytes of the index block on disk, trailer included.
    pub index_bytes: u64,
    /// Bytes of the filter block on disk, trailer included (0 without a filter).
    pub filter_bytes: u64,
    /// Number of tombstones.
    pub num_deletions: u64,
    /// Highest entry version (reads skip a table that cannot hold a newer version).
    pub max_version: u64,
    /// Highest sequence number of an entry or range tombstone (0 for an empty table).
    pub max_seq: u64,
    /// Number of range tombstones in the range-deletion block.
    pub num_range_deletions: u64,
    /// Where the range-deletion block is (size 0: no block).
    pub(crate) range_del: BlockHandle,
    /// Value-log record bytes the table's pointer entries reference, per segment (ascending):
    /// what becomes garbage if the table is dropped unread.
    pub vlog_refs: Vec<(u64, u64)>,
}

impl TableProperties {
    /// Encodes everything except `file_size` (known from the file itself).
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.smallest.len() + self.largest.len());
        put_varint(&mut out, self.num_entries);
        put_varint(&mut out, self.num_deletions);
        put_varint(&mut out, self.data_bytes);
        put_varint(&mut out, self.index_bytes);
        put_varint(&mut out, self.filter_bytes);
        put_bytes(&mut out, &self.smallest);
        put_bytes(&mut out, &self.largest);
        put_varint(&mut out, self.max_version);
        put_varint(&mut out, self.max_seq);
        put_varint(&mut out, self.num_range_deletions);
        self.range_del.encode_to(&mut out);
        put_varint(&mut out, self.vlog_refs.len() as u64);
        for (segment, bytes) in &self.vlog_refs {
            put_varint(&mut out, *segment);
            put_varint(&mut out, *bytes);
        }
        out
    }

    /// Decodes a properties block; trailing bytes are ignored (reserved for extensions).
    pub(crate) fn decode(buf: &[u8], file_size: u64) -> Option<TableProperties> {
        let mut r = Reader::new(buf);
        let props = TableProperties {
            file_size,
            num_entries: r.varint()?,
            num_deletions: r.varint()?,
            data_bytes: r.varint()?,
            index_bytes: r.varint()?,
            filter_bytes: r.varint()?,
            smallest: r.bytes()?.to_vec(),
            largest: r.bytes()?.to_vec(),
            max_version: r.varint()?,
            max_seq: r.varint()?,
            num_range_deletions: r.varint()?,
            range_del: BlockHandle {
                offset: r.varint()?,
                size: r.varint()?,
            },
            vlog_refs: {
                let n = r.varint()?;
                // Each pair takes at least two bytes: a count beyond that is damage.
                if n > buf.len() as u64 {
                    return None;
                }
                let mut refs = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    let segment = r.varint()?;
                    if refs.last().is_some_and(|(s, _)| *s >= segment) {
                        return None;
                    }
                    refs.push((segment, r.varint()?));
                }
                refs
            },
        };
        // The key bounds are internal keys, or both empty in a table without entries:
        // shorter ones would be cut into logical key and trailer by whoever reads them.
        let bounded = props.smallest.len() >= TRAILER_LEN && props.largest.len() >= TRAILER_LEN;
        let unbounded =
            props.smallest.is_empty() && props.largest.is_empty() && props.num_entries == 0;
        (bounded || unbounded).then_some(props)
    }
}

/// Location of a block: offset and size of its stored bytes (trailer excluded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct BlockHandle {
    pub(crate) offset: u64,
    pub(crate) size: u64,
}

impl BlockHandle {
    fn encode_to(&self, out: &mut Vec<u8>) {
        put_varint(out, self.offset);
        put_varint(out, self.size);
    }

    fn decode(buf: &[u8]) -> Option<BlockHandle> {
        let mut r = Reader::new(buf);
        Some(BlockHandle {
            offset: r.varint()?,
            size: r.varint()?,
        })
    }

    /// End of the block including its trailer; `None` on overflow.
    fn end(&self) -> Option<u64> {
        self.offset
            .checked_add(self.size)?
            .checked_add(BLOCK_TRAILER_LEN as u64)
    }
}

/// The decoded footer.
#[derive(Debug, Clone, Copy)]
struct Footer {
    index: BlockHandle,
    filter: BlockHandle,
    props: BlockHandle,
}

impl Footer {
    fn encode(&self) -> [u8; FOOTER_LEN] {
        let mut f = [0u8; FOOTER_LEN];
        let fields = [
            self.index.offset,
            self.index.size,
            self.filter.offset,
            self.filter.size,
            self.props.offset,
            self.props.size,
        ];
        for (i, v) in fields.iter().enumerate() {
            f[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        f[48..52].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        let crc = crc32fast::hash(&f[..52]);
        f[52..56].copy_from_slice(&crc.to_le_bytes());
        f[56..64].copy_from_slice(&TABLE_MAGIC.to_le_bytes());
        f
    }

    /// Decodes and verifies a footer read at `offset` of `path`.
    fn decode(f: &[u8; FOOTER_LEN], path: &Path, offset: u64) -> Result<Footer> {
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&f[i..i + 8]);
            u64::from_le_bytes(a)
        };
        let u32_at = |i: usize| u32::from_le_bytes([f[i], f[i + 1], f[i + 2], f[i + 3]]);
        if u64_at(56) != TABLE_MAGIC {
            return Err(Error::corruption(
                path,
                offset + 56,
                "bad table magic (not an SST file or truncated)",
            ));
        }
        let version = u32_at(48);
        // Version 1 tables (8-byte key trailers) are not readable by this build either.
        if version > FORMAT_VERSION || version == 1 {
            return Err(Error::UnsupportedFormat {
                path: path.to_path_buf(),
                version,
                max: FORMAT_VERSION,
            });
        }
        if version == 0 {
            return Err(Error::corruption(
                path,
                offset + 48,
                "table format version 0",
            ));
        }
        if crc32fast::hash(&f[..52]) != u32_at(52) {
            return Err(Error::corruption(path, offset, "footer checksum mismatch"));
        }
        Ok(Footer {
            index: BlockHandle {
                offset: u64_at(0),
                size: u64_at(8),
            },
            filter: BlockHandle {
                offset: u64_at(16),
                size: u64_at(24),
            },
            props: BlockHandle {
                offset: u64_at(32),
                size: u64_at(40),
            },
        })
    }
}

/// crc32 of a block's stored bytes followed by its type byte.
#[inline]
fn block_crc(stored: &[u8], ty: u8) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(stored);
    h.update(&[ty]);
    h.finalize()
}

/// Verifies the trailer of `raw` (stored bytes + trailer) and returns the decoded contents.
///
/// `raw` is consumed so that uncompressed blocks are returned without a copy.
pub(crate) fn decode_block_contents(mut raw: Vec<u8>, path: &Path, offset: u64) -> Result<Vec<u8>> {
    if raw.len() < BLOCK_TRAILER_LEN {
        return Err(Error::corruption(
            path,
            offset,
            "block shorter than its trailer",
        ));
    }
    let n = raw.len() - BLOCK_TRAILER_LEN;
    let ty = raw[n];
    let stored_crc = u32::from_le_bytes([raw[n + 1], raw[n + 2], raw[n + 3], raw[n + 4]]);
    if block_crc(&raw[..n], ty) != stored_crc {
        return Err(Error::corruption(path, offset, "block checksum mismatch"));
    }
    match ty {
        COMPRESSION_NONE => {
            raw.truncate(n);
            Ok(raw)
        }
        COMPRESSION_LZ4 => {
            if n < 4 {
                return Err(Error::corruption(path, offset, "lz4 block too short"));
            }
            let raw_len = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize;
            // LZ4 cannot expand data by more than ~255x; reject absurd lengths before allocating.
            if raw_len > (n - 4).saturating_mul(256).saturating_add(64) {
                return Err(Error::corruption(
                    path,
                    offset,
                    "lz4 block length implausible",
                ));
            }
            let mut out = vec![0u8; raw_len];
            match lz4_flex::block::decompress_into(&raw[4..n], &mut out) {
                Ok(m) if m == raw_len => Ok(out),
                Ok(_) => Err(Error::corruption(path, offset, "lz4 block length mismatch")),
                Err(e) => Err(Error::corruption(
                    path,
                    offset,
                    format!("lz4 decompression failed: {e}"),
                )),
            }
        }
        t => Err(Error::corruption(
            path,
            offset,
            format!("unknown block compression type {t}"),
        )),
    }
}

/// Converts a read failure at `offset` into an engine error (short reads are corruption).
fn read_error(e: io::Error, path: &Path, offset: u64, what: &str) -> Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        Error::corruption(path, offset, format!("{what} extends past end of file"))
    } else {
        Error::io(
            "read sst",
            path,
            io::Error::new(e.kind(), format!("{what} at offset {offset}: {e}")),
        )
    }
}

/// Rebuilds an equivalent error (the engine error type is not `Clone`).
fn clone_error(e: &Error) -> Error {
    e.duplicate()
}

//! Atomic write batches and their WAL encoding.
//!
//! Encoding (also the WAL `Batch` record payload):
//! `[first seq u64 LE][count u32 LE]` then per entry
//! `[kind u8 | 0x80 if versioned][varint key len][logical key]`
//! `[varint version, if versioned][varint value len][value]` (no value for deletes).
//! An entry without an explicit version gets its sequence number as version.
//! A range delete is `[5][varint len][start logical key][varint len][end logical key]`
//! (batch-only: it becomes a range tombstone, never a point entry).
//! Every entry, range deletes included, takes the next sequence number.
//! In WAL payloads (never in a [`WriteBatch`]) a put may be logged as kind 3 (value
//! pointer, 20 bytes) or 4 (`[expiry][pointer]`) when the write path moved its value to
//! the value log ([`WriteBatch::encode_separating`]).

use crate::codec::{put_bytes, put_varint, Reader};
use crate::error::{Error, Result};
use crate::key::{KeySpace, Kind, MAX_SEQ, PREFIX_LEN};
use crate::range_del::{self, RangeTombstone};
use crate::vlog::ValuePointer;

const HEADER: usize = 12;
/// Flag on the kind byte: an explicit version follows the key.
const VERSIONED: u8 = 0x80;
/// Entry tag of a range delete. Tags 3 and 4 belong to value pointers.
pub const RANGE_DELETE: u8 = 5;
/// Range deletes one batch may hold (a memtable holds at most this many).
pub const MAX_RANGE_DELETES_PER_BATCH: usize = range_del::DEFAULT_MAX_RANGE_TOMBSTONES;

/// A set of writes applied atomically: all of them or none survive a crash.
#[derive(Clone, PartialEq, Eq)]
pub struct WriteBatch {
    rep: Vec<u8>,
    count: u32,
    has_empty_key: bool,
    has_zero_version: bool,
    /// Range deletes among the entries.
    range_deletes: u32,
    /// Longest stored value of an entry (decides cheaply whether a batch has a value for the
    /// value log).
    max_value_len: usize,
}

impl std::fmt::Debug for WriteBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteBatch")
            .field("count", &self.count)
            .field("bytes", &self.rep.len())
            .finish()
    }
}

impl Default for WriteBatch {
    fn default() -> Self {
        Self::new()
    }
}

/// A decoded range delete: the logical keys `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeDeleteEntry<'a> {
    /// First logical key deleted (namespace + column family + user key).
    pub start: &'a [u8],
    /// First logical key not deleted; the key space's end for "to the end of the space".
    pub end: &'a [u8],
}

impl RangeDeleteEntry<'_> {
    /// The range tombstone this delete becomes at sequence number `seq`.
    pub fn tombstone(&self, seq: u64) -> RangeTombstone {
        RangeTombstone {
            start: self.start.to_vec(),
            end: self.end.to_vec(),
            version: range_del::ENGINE_VERSION,
            seq,
        }
    }
}

/// One decoded batch operation, in batch order; each takes the next sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOp<'a> {
    /// A put or delete of one key.
    Point(BatchEntry<'a>),
    /// A delete of a key range.
    RangeDelete(RangeDeleteEntry<'a>),
}

/// One decoded batch entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchEntry<'a> {
    /// Put or delete.
    pub kind: Kind,
    /// Namespace byte + column family byte + user key.
    pub logical_key: &'a [u8],
    /// Explicit version; `None` means the entry's sequence number.
    pub version: Option<u64>,
    /// Stored value: empty for deletes, `[expiry u64 LE][value]` for `PutWithExpiry`.
    pub value: &'a [u8],
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> WriteBatch {
        WriteBatch {
            rep: vec![0u8; HEADER],
            count: 0,
            has_empty_key: false,
            has_zero_version: false,
            range_deletes: 0,
            max_value_len: 0,
        }
    }

    /// An empty batch with room for about `bytes` of keys and values (no reallocation while
    /// they are added).
    pub fn with_capacity(bytes: usize) -> WriteBatch {
        let mut b = WriteBatch::new();
        // Per entry: kind, two varint lengths, the key prefix and an optional expiry.
        b.rep.reserve(bytes.saturating_add(32));
        b
    }

    /// Adds a put of `key` in the ordered-KV namespace's default column family.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> &mut Self {
        self.put_in(KeySpace::KV, key, value)
    }

    /// Adds a delete of `key` in the ordered-KV namespace's default column family.
    pub fn delete(&mut self, key: &[u8]) -> &mut Self {
        self.delete_in(KeySpace::KV, key)
    }

    /// Adds a delete of every key in `[start, end)` of the ordered-KV namespace's default column family.
    ///
    /// See [`WriteBatch::delete_range_in`].
    pub fn delete_range(&mut self, start: &[u8], end: &[u8]) -> &mut Self {
        self.delete_range_in(KeySpace::KV, start, Some(end))
    }

    /// Adds a delete of every key in `[start, end)` of `space` (`end` `None`: to the end of the space).
    ///
    /// The delete is physical: it removes every version of every key in the
    /// range written before it (lower sequence number, whatever the version),
    /// for readers at or after it; snapshots taken before it still see them.
    /// It is atomic with the rest of the batch and, like any entry, takes the
    /// batch's next sequence number, so a put after it in the same batch
    /// survives. `start` follows the key rules of puts (not empty, at most
    /// `Options::max_key_bytes`); `start < end` is required
    /// (`Error::InvalidArgument` otherwise, when the batch is written). Keys
    /// are never empty, so `b"\0"` is the smallest `start`.
    pub fn delete_range_in(
        &mut self,
        space: KeySpace,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> &mut Self {
        self.has_empty_key |= start.is_empty();
        self.rep.push(RANGE_DELETE);
        put_varint(&mut self.rep, (start.len() + PREFIX_LEN) as u64);
        self.rep.extend_from_slice(&space.prefix());
        self.rep.extend_from_slice(start);
        match end {
            Some(end) => {
                put_varint(&mut self.rep, (end.len() + PREFIX_LEN) as u64);
                self.rep.extend_from_slice(&space.prefix());
                self.rep.extend_from_slice(end);
            }
            None => put_bytes(&mut self.rep, &space.end()),
        }
        self.count += 1;
        self.range_deletes += 1;
        self
    }

    /// Adds a put in `space` (see [`crate::key`] for the reserved namespaces and column families).
    pub fn put_in(&mut self, space: KeySpace, key: &[u8], value: &[u8]) -> &mut Self {
        self.push(Kind::Put, space, key, None, Some(value));
        self
    }

    /// Adds a delete in `space`.
    pub fn delete_in(&mut self, space: KeySpace, key: &[u8]) -> &mut Self {
        self.push(Kind::Delete, space, key, None, None);
        self
    }

    /// Adds a put of `key` (ordered-KV namespace) that expires at `expiry_unix_ms`.
    ///
    /// The expiry is absolute so that every replica applying the batch stores the same data.
    pub fn put_with_expiry(&mut self, key: &[u8], value: &[u8], expiry_unix_ms: u64) -> &mut Self {
        self.put_in_with_expiry(KeySpace::KV, key, None, value, expiry_unix_ms)
    }

    /// Adds a put in `space`, at `version` (`None`: the write's sequence number), expiring at `expiry_unix_ms`.
    pub fn put_in_with_expiry(
        &mut self,
        space: KeySpace,
        key: &[u8],
        version: Option<u64>,
        value: &[u8],
        expiry_unix_ms: u64,
    ) -> &mut Self {
        let mut v = Vec::with_capacity(crate::key::EXPIRY_LEN + value.len());
        v.extend_from_slice(&expiry_unix_ms.to_le_bytes());
        v.extend_from_slice(value);
        self.push(Kind::PutWithExpiry, space, key, version, Some(&v));
        self
    }

    /// Adds a put in `space` at an explicit `version` (>= 1), as replicas applying one log must.
    pub fn put_at(&mut self, space: KeySpace, key: &[u8], version: u64, value: &[u8]) -> &mut Self {
        self.push(Kind::Put, space, key, Some(version), Some(value));
        self
    }

    /// Adds a delete in `space` at an explicit `version` (>= 1): readers at or after it see no value.
    pub fn delete_at(&mut self, space: KeySpace, key: &[u8], version: u64) -> &mut Self {
        self.push(Kind::Delete, space, key, Some(version), None);
        self
    }

    fn push(
        &mut self,
        kind: Kind,
        space: KeySpace,
        key: &[u8],
        version: Option<u64>,
        value: Option<&[u8]>,
    ) {
        self.has_empty_key |= key.is_empty();
        self.has_zero_version |= version == Some(0);
        let flag = if version.is_some() { VERSIONED } else { 0 };
        self.rep.push(kind as u8 | flag);
        put_varint(&mut self.rep, (key.len() + PREFIX_LEN) as u64);
        self.rep.extend_from_slice(&space.prefix());
        self.rep.extend_from_slice(key);
        if let Some(v) = version {
            put_varint(&mut self.rep, v);
        }
        if let Some(v) = value {
            put_bytes(&mut self.rep, v);
            self.max_value_len = self.max_value_len.max(v.len());
        }
        self.count += 1;
    }

    /// Appends every entry of `other` after this batch's entries (in order; each takes
    /// the next sequence number when written, as if added here one by one).
    pub fn append(&mut self, other: &WriteBatch) {
        self.rep.extend_from_slice(&other.rep[HEADER..]);
        self.count += other.count;
        self.has_empty_key |= other.has_empty_key;
        self.has_zero_version |= other.has_zero_version;
        self.range_deletes += other.range_deletes;
        self.max_value_len = self.max_value_len.max(other.max_value_len);
    }

    /// Number of entries (range deletes included).
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Number of range deletes.
    pub fn range_delete_count(&self) -> usize {
        self.range_deletes as usize
    }

    /// True when the batch holds no entries.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Encoded size in bytes.
    pub fn encoded_len(&self) -> usize {
        self.rep.len()
    }

    /// Removes every entry.
    pub fn clear(&mut self) {
        self.rep.truncate(HEADER);
        self.count = 0;
        self.has_empty_key = false;
        self.has_zero_version = false;
        self.range_deletes = 0;
        self.max_value_len = 0;
    }

    /// Length of the longest stored value (`[expiry][value]` for puts with expiry).
    pub fn max_value_len(&self) -> usize {
        self.max_value_len
    }

    /// Checks every entry against the limits and returns the first violation.
    pub(crate) fn validate(
        &self,
        max_key: usize,
        max_value: usize,
        max_batch: usize,
    ) -> Result<()> {
        if self.has_empty_key {
            return Err(Error::EmptyKey);
        }
        if self.has_zero_version {
            return Err(Error::InvalidVersion);
        }
        if self.rep.len() > max_batch {
            return Err(Error::BatchTooLarge {
                len: self.rep.len(),
                max: max_batch,
            });
        }
        if self.range_delete_count() > MAX_RANGE_DELETES_PER_BATCH {
            return Err(Error::InvalidArgument(format!(
                "a batch holds at most {MAX_RANGE_DELETES_PER_BATCH} range deletes, this one {}",
                self.range_deletes
            )));
        }
        for op in self.iter_ops() {
            let e = match op {
                BatchOp::Point(e) => e,
                BatchOp::RangeDelete(d) => {
                    validate_range(d, max_key)?;
                    continue;
                }
            };
            let klen = e.logical_key.len() - PREFIX_LEN;
            if klen > max_key {
                return Err(Error::KeyTooLarge {
                    len: klen,
                    max: max_key,
                });
            }
            if e.value.len() > max_value {
                return Err(Error::ValueTooLarge {
                    len: e.value.len(),
                    max: max_value,
                });
            }
        }
        Ok(())
    }

    /// The WAL payload for this batch with its first sequence number set.
    pub(crate) fn encode_with_seq(&self, seq: u64, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&self.rep);
        out[start..start + 8].copy_from_slice(&seq.to_le_bytes());
        out[start + 8..start + 12].copy_from_slice(&self.count.to_le_bytes());
    }

    /// The WAL payload for this batch with its first sequence number set, letting `separate`
    /// replace the value of any point entry: given the entry and its sequence number, it
    /// returns the new kind (a value-pointer kind) with the new stored value in its buffer,
    /// or `None` to keep the entry as it is. Stops at the first error.
    pub(crate) fn encode_separating(
        &self,
        seq: u64,
        out: &mut Vec<u8>,
        mut separate: impl FnMut(&BatchEntry<'_>, u64, &mut Vec<u8>) -> Result<Option<Kind>>,
    ) -> Result<()> {
        out.extend_from_slice(&seq.to_le_bytes());
        out.extend_from_slice(&self.count.to_le_bytes());
        let mut value = Vec::new();
        for (i, op) in self.iter_ops().enumerate() {
            let e = match op {
                BatchOp::Point(e) => e,
                BatchOp::RangeDelete(d) => {
                    out.push(RANGE_DELETE);
                    put_bytes(out, d.start);
                    put_bytes(out, d.end);
                    continue;
                }
            };
            let (kind, stored) = match separate(&e, seq + i as u64, &mut value)? {
                Some(k) => (k, &value[..]),
                None => (e.kind, e.value),
            };
            let flag = if e.version.is_some() { VERSIONED } else { 0 };
            out.push(kind as u8 | flag);
            put_bytes(out, e.logical_key);
            if let Some(v) = e.version {
                put_varint(out, v);
            }
            if kind != Kind::Delete {
                put_bytes(out, stored);
            }
        }
        Ok(())
    }

    /// Iterates over the point entries (puts and deletes) in insertion order, skipping range deletes.
    ///
    /// Sequence numbers count every entry: use [`WriteBatch::iter_ops`] to number them.
    pub fn iter_entries(&self) -> impl Iterator<Item = BatchEntry<'_>> {
        self.iter_ops().filter_map(|op| match op {
            BatchOp::Point(e) => Some(e),
            BatchOp::RangeDelete(_) => None,
        })
    }

    /// Iterates over every operation in insertion order (each takes the next sequence number).
    pub fn iter_ops(&self) -> impl Iterator<Item = BatchOp<'_>> {
        // The in-memory representation is always well formed.
        EntryIter {
            r: Reader::new(&self.rep[HEADER..]),
            left: self.count,
        }
        .map(|e| e.expect("in-memory batch is well formed"))
    }
}

/// Checks a range delete's keys: the start's length, the end's, and `start < end`.
fn validate_range(d: RangeDeleteEntry<'_>, max_key: usize) -> Result<()> {
    let user = |k: &[u8]| k.len().saturating_sub(PREFIX_LEN);
    for k in [d.start, d.end] {
        if user(k) > max_key {
            return Err(Error::KeyTooLarge {
                len: user(k),
                max: max_key,
            });
        }
    }
    if d.start >= d.end {
        return Err(Error::InvalidArgument(format!(
            "delete_range: start {} must sort before end {}",
            range_del::show_key(&d.start[PREFIX_LEN.min(d.start.len())..]),
            range_del::show_key(&d.end[PREFIX_LEN.min(d.end.len())..])
        )));
    }
    Ok(())
}

struct EntryIter<'a> {
    r: Reader<'a>,
    left: u32,
}

impl<'a> Iterator for EntryIter<'a> {
    type Item = Option<BatchOp<'a>>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        Some(decode_op(&mut self.r))
    }
}

/// Decodes one operation: a range delete (tag [`RANGE_DELETE`]) or a point entry.
///
/// Only the structure is checked here (an unvalidated in-memory batch may hold an
/// inverted range); [`decode_batch`] also checks the range ([`range_is_valid`]).
fn decode_op<'a>(r: &mut Reader<'a>) -> Option<BatchOp<'a>> {
    if r.clone().u8()? != RANGE_DELETE {
        return decode_entry(r).map(BatchOp::Point);
    }
    r.u8()?;
    let start = r.bytes()?;
    let end = r.bytes()?;
    Some(BatchOp::RangeDelete(RangeDeleteEntry { start, end }))
}

/// A logged range delete starts at a key of some space (non-empty user key) and ends after
/// it, at most at that space's end.
fn range_is_valid(d: &RangeDeleteEntry<'_>) -> bool {
    d.start.len() > PREFIX_LEN
        && d.start < d.end
        && d.end <= KeySpace::new(d.start[0], d.start[1]).end().as_slice()
}

fn decode_entry<'a>(r: &mut Reader<'a>) -> Option<BatchEntry<'a>> {
    let tag = r.u8()?;
    let kind = Kind::from_u8(tag & !VERSIONED)?;
    let logical_key = r.bytes()?;
    if logical_key.len() <= PREFIX_LEN {
        return None;
    }
    let version = if tag & VERSIONED != 0 {
        Some(r.varint().filter(|v| *v != 0)?)
    } else {
        None
    };
    let value = match kind {
        Kind::Put => r.bytes()?,
        Kind::PutWithExpiry => Some(r.bytes()?).filter(|v| v.len() >= crate::key::EXPIRY_LEN)?,
        Kind::Delete => &[][..],
        // A value the write path moved to the value log (WAL payloads only).
        Kind::ValuePointer => Some(r.bytes()?).filter(|v| v.len() == ValuePointer::ENCODED_LEN)?,
        Kind::ValuePointerWithExpiry => Some(r.bytes()?)
            .filter(|v| v.len() == crate::key::EXPIRY_LEN + ValuePointer::ENCODED_LEN)?,
    };
    Some(BatchEntry {
        kind,
        logical_key,
        version,
        value,
    })
}

/// A batch decoded from a WAL payload.
pub(crate) struct DecodedBatch<'a> {
    /// Sequence number of the first entry.
    pub seq: u64,
    /// Operations in order; operation `i` has sequence number `seq + i`.
    pub ops: Vec<BatchOp<'a>>,
}

/// Decodes a WAL batch payload; `None` when it is malformed.
pub(crate) fn decode_batch(payload: &[u8]) -> Option<DecodedBatch<'_>> {
    let mut r = Reader::new(payload);
    let seq = r.u64_le()?;
    let count = r.u32_le()?;
    // Operation `i` is sequence number `seq + i`: the last one must be a valid sequence
    // number (a larger one overflowed the replay's arithmetic or the key trailer).
    let last = seq.checked_add(u64::from(count.saturating_sub(1)))?;
    if count > 0 && last > MAX_SEQ {
        return None;
    }
    let mut ops = Vec::with_capacity(count.min(1 << 16) as usize);
    for _ in 0..count {
        let op = decode_op(&mut r)?;
        if let BatchOp::RangeDelete(d) = &op {
            if !range_is_valid(d) {
                return None;
            }
        }
        ops.push(op);
    }
    if !r.is_empty() {
        return None;
    }
    Some(DecodedBatch { seq, ops })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Reproduced with the `wal_replay` fuzz target (from an input written for its framed
    /// mode; 60 s of fuzzing did not reach it alone): a checksummed WAL batch whose sequence
    /// numbers overflowed u64 (replay panicked adding the operation index) or went above
    /// `MAX_SEQ` (a debug assertion in the key trailer; silently wrong keys in release).
    #[test]
    fn batches_with_sequence_numbers_past_max_seq_are_malformed() {
        let mut b = WriteBatch::new();
        b.put(b"a", b"1").put(b"b", b"2");
        let payload = |seq: u64| {
            let mut out = Vec::new();
            b.encode_with_seq(seq, &mut out);
            out
        };
        for seq in [u64::MAX, u64::MAX - 1, MAX_SEQ, 1 << 60] {
            assert!(decode_batch(&payload(seq)).is_none(), "seq {seq}");
        }
        let ok = payload(MAX_SEQ - 1);
        assert_eq!(
            decode_batch(&ok).map(|d| (d.seq, d.ops.len())),
            Some((MAX_SEQ - 1, 2))
        );
        assert!(decode_batch(&payload(1)).is_some());
    }

    #[test]
    fn limits_are_enforced() {
        let mut b = WriteBatch::new();
        b.put(b"", b"v");
        assert!(matches!(b.validate(10, 10, 100), Err(Error::EmptyKey)));
        let mut b = WriteBatch::new();
        b.put(b"kkkkkkkkkkkk", b"v");
        assert!(matches!(
            b.validate(10, 10, 100),
            Err(Error::KeyTooLarge { len: 12, .. })
        ));
        let mut b = WriteBatch::new();
        b.put(b"k", &[0u8; 11]);
        assert!(matches!(
            b.validate(10, 10, 100),
            Err(Error::ValueTooLarge { len: 11, .. })
        ));
        let mut b = WriteBatch::new();
        b.put_at(KeySpace::KV, b"k", 0, b"v");
        assert!(matches!(
            b.validate(10, 10, 100),
            Err(Error::InvalidVersion)
        ));
        let mut b = WriteBatch::new();
        for _ in 0..20 {
            b.put(b"k", b"v");
        }
        assert!(matches!(
            b.validate(10, 10, 50),
            Err(Error::BatchTooLarge { .. })
        ));
    }

    #[test]
    fn append_equals_adding_one_by_one() {
        let mut a = WriteBatch::new();
        a.put_at(KeySpace::KV, b"a", 3, b"1");
        let mut b = WriteBatch::new();
        b.delete_at(KeySpace::KV, b"b", 4);
        b.delete_range(b"c", b"d");
        b.put(b"e", &[7u8; 40]);
        let mut joined = a.clone();
        joined.append(&b);
        let mut direct = WriteBatch::new();
        direct.put_at(KeySpace::KV, b"a", 3, b"1");
        direct.delete_at(KeySpace::KV, b"b", 4);
        direct.delete_range(b"c", b"d");
        direct.put(b"e", &[7u8; 40]);
        assert_eq!(joined, direct);
        assert_eq!(joined.len(), 4);
        assert_eq!(joined.range_delete_count(), 1);
        assert_eq!(joined.max_value_len(), 40);
    }

    proptest! {
        #[test]
        fn encode_decode_roundtrip(
            ops in proptest::collection::vec(
                (any::<bool>(), any::<u8>(), proptest::option::of(1u64..), proptest::collection::vec(any::<u8>(), 1..20), proptest::collection::vec(any::<u8>(), 0..50)),
                0..30,
            ),
            seq in 0u64..1<<50,
        ) {
            let mut b = WriteBatch::new();
            for (put, cf, version, k, v) in &ops {
                let space = KeySpace::kv(*cf);
                match (put, version) {
                    (true, Some(ver)) => b.put_at(space, k, *ver, v),
                    (true, None) => b.put_in(space, k, v),
                    (false, Some(ver)) => b.delete_at(space, k, *ver),
                    (false, None) => b.delete_in(space, k),
                };
            }
            let mut out = Vec::new();
            b.encode_with_seq(seq, &mut out);
            let d = decode_batch(&out).expect("decodes");
            prop_assert_eq!(d.seq, seq);
            prop_assert_eq!(d.ops.len(), ops.len());
            let entries: Vec<BatchEntry> = d
                .ops
                .iter()
                .filter_map(|o| match o {
                    BatchOp::Point(e) => Some(*e),
                    BatchOp::RangeDelete(_) => None,
                })
                .collect();
            prop_assert_eq!(entries.len(), ops.len());
            for (e, (put, cf, version, k, v)) in entries.iter().zip(&ops) {
                prop_assert_eq!(e.kind, if *put { Kind::Put } else { Kind::Delete });
                prop_assert_eq!(&e.logical_key[PREFIX_LEN..], &k[..]);
                prop_assert_eq!(&e.logical_key[..PREFIX_LEN], &KeySpace::kv(*cf).prefix()[..]);
                prop_assert_eq!(e.version, *version);
                if *put { prop_assert_eq!(e.value, &v[..]); }
            }
        }

        #[test]
        fn garbage_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_batch(&buf);
        }

        /// Range deletes interleave with point entries and keep their positions (sequence numbers).
        #[test]
        fn range_deletes_round_trip_in_order(
            ops in proptest::collection::vec(
                (any::<bool>(), any::<u8>(), proptest::collection::vec(any::<u8>(), 1..8), proptest::option::of(proptest::collection::vec(any::<u8>(), 1..8))),
                0..20,
            ),
        ) {
            let mut b = WriteBatch::new();
            for (range, cf, k, end) in &ops {
                let space = KeySpace::kv(*cf);
                if *range {
                    b.delete_range_in(space, k, end.as_deref());
                } else {
                    b.put_in(space, k, b"v");
                }
            }
            let ranges = ops.iter().filter(|o| o.0).count();
            prop_assert_eq!(b.range_delete_count(), ranges);
            prop_assert_eq!(b.iter_entries().count(), ops.len() - ranges);
            let valid = ops.iter().all(|(range, _, k, end)| !range || end.as_ref().is_none_or(|e| k < e));
            prop_assert_eq!(b.validate(100, 100, 1 << 20).is_ok(), valid);
            let mut out = Vec::new();
            b.encode_with_seq(40, &mut out);
            match decode_batch(&out) {
                // An inverted range is never logged (validation refuses it first), and the
                // decoder refuses it too.
                None => prop_assert!(!valid),
                Some(d) => {
                    prop_assert!(valid);
                    prop_assert_eq!(&d.ops, &b.iter_ops().collect::<Vec<_>>());
                    for (op, (range, cf, k, end)) in d.ops.iter().zip(&ops) {
                        let space = KeySpace::kv(*cf);
                        match op {
                            BatchOp::RangeDelete(r) => {
                                prop_assert!(*range);
                                prop_assert_eq!(r.start, &space.logical(k)[..]);
                                let want_end = end.as_ref().map_or_else(|| space.end(), |e| space.logical(e));
                                prop_assert_eq!(r.end, &want_end[..]);
                                let t = r.tombstone(77);
                                prop_assert_eq!((t.version, t.seq), (0, 77));
                            }
                            BatchOp::Point(e) => {
                                prop_assert!(!*range);
                                prop_assert_eq!(e.logical_key, &space.logical(k)[..]);
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn range_delete_rules() {
        let check = |f: &dyn Fn(&mut WriteBatch)| {
            let mut b = WriteBatch::new();
            f(&mut b);
            b.validate(10, 10, 1 << 20)
        };
        assert!(check(&|b| {
            b.delete_range(b"a", b"b");
        })
        .is_ok());
        assert!(matches!(
            check(&|b| {
                b.delete_range(b"", b"b");
            }),
            Err(Error::EmptyKey)
        ));
        for (s, e) in [(&b"b"[..], &b"b"[..]), (b"b", b"a"), (b"ab", b"a")] {
            let err = check(&|b| {
                b.delete_range(s, e);
            })
            .unwrap_err();
            assert!(
                matches!(&err, Error::InvalidArgument(m) if m.contains("must sort before")),
                "{err}"
            );
        }
        assert!(matches!(
            check(&|b| {
                b.delete_range(b"a", &[b'z'; 11]);
            }),
            Err(Error::KeyTooLarge { len: 11, .. })
        ));
        assert!(matches!(
            check(&|b| {
                b.delete_range(&[b'a'; 11], b"z");
            }),
            Err(Error::KeyTooLarge { len: 11, .. })
        ));
        // To the end of the space: the end is the next space's prefix.
        let mut b = WriteBatch::new();
        b.delete_range_in(KeySpace::kv(CF_WRITE_TEST), b"\0", None);
        let ops: Vec<BatchOp> = b.iter_ops().collect();
        assert_eq!(
            ops,
            vec![BatchOp::RangeDelete(RangeDeleteEntry {
                start: &[b'k', CF_WRITE_TEST, 0],
                end: &[b'k', CF_WRITE_TEST + 1],
            })]
        );
        assert_eq!(b.len(), 1);
        assert!(b.validate(10, 10, 1 << 20).is_ok());
        b.clear();
        assert_eq!(b.range_delete_count(), 0);
        // At most MAX_RANGE_DELETES_PER_BATCH per batch.
        for i in 0..=MAX_RANGE_DELETES_PER_BATCH as u32 {
            b.delete_range(&i.to_be_bytes(), &(i + 1).to_be_bytes());
        }
        assert!(matches!(
            b.validate(10, 10, 1 << 30),
            Err(Error::InvalidArgument(m)) if m.contains("at most")
        ));
    }

    const CF_WRITE_TEST: u8 = crate::key::CF_WRITE;

    #[test]
    fn separating_replaces_values_with_pointers_and_keeps_the_rest() {
        let mut b = WriteBatch::with_capacity(4096);
        b.put(b"small", b"v");
        b.put_at(KeySpace::KV, b"big", 7, &[1u8; 3000]);
        b.delete_range(b"a", b"b");
        b.put_with_expiry(b"ttl", &[2u8; 3000], 99);
        b.delete(b"gone");
        assert_eq!(b.max_value_len(), 3008);
        let ptr = ValuePointer {
            segment: 4,
            offset: 24,
            len: 3030,
        };
        let mut seen = Vec::new();
        let mut out = Vec::new();
        b.encode_separating(100, &mut out, |e, seq, v| {
            seen.push(seq);
            Ok(match e.kind {
                Kind::Put if e.value.len() > 100 => {
                    v.clear();
                    ptr.encode_to(v);
                    Some(Kind::ValuePointer)
                }
                Kind::PutWithExpiry => {
                    v.clear();
                    v.extend_from_slice(&e.value[..8]);
                    ptr.encode_to(v);
                    Some(Kind::ValuePointerWithExpiry)
                }
                _ => None,
            })
        })
        .unwrap();
        // Every point entry is offered, numbered like the memtable numbers them.
        assert_eq!(seen, vec![100, 101, 103, 104]);
        let d = decode_batch(&out).expect("decodes");
        assert_eq!(d.seq, 100);
        assert_eq!(d.ops.len(), 5);
        let point = |i: usize| match d.ops[i] {
            BatchOp::Point(e) => e,
            BatchOp::RangeDelete(_) => panic!("op {i} is a range delete"),
        };
        assert_eq!((point(0).kind, point(0).value), (Kind::Put, &b"v"[..]));
        assert_eq!(point(1).kind, Kind::ValuePointer);
        assert_eq!(point(1).version, Some(7));
        assert_eq!(ValuePointer::decode(point(1).value), Ok(ptr));
        assert!(matches!(d.ops[2], BatchOp::RangeDelete(_)));
        assert_eq!(point(3).kind, Kind::ValuePointerWithExpiry);
        assert_eq!(&point(3).value[..8], &99u64.to_le_bytes());
        assert_eq!(point(4).kind, Kind::Delete);
        // Without replacements the encoding is the plain one.
        let mut plain = Vec::new();
        b.encode_with_seq(100, &mut plain);
        let mut same = Vec::new();
        b.encode_separating(100, &mut same, |_, _, _| Ok(None))
            .unwrap();
        assert_eq!(plain, same);
    }

    #[test]
    fn logged_pointers_must_have_their_exact_length() {
        let encode = |kind: u8, value: &[u8]| {
            let mut p = Vec::new();
            p.extend_from_slice(&9u64.to_le_bytes());
            p.extend_from_slice(&1u32.to_le_bytes());
            p.push(kind);
            put_bytes(&mut p, b"k\0a");
            put_bytes(&mut p, value);
            p
        };
        assert!(decode_batch(&encode(3, &[0u8; 20])).is_some());
        assert!(decode_batch(&encode(3, &[0u8; 19])).is_none());
        assert!(decode_batch(&encode(3, &[0u8; 28])).is_none());
        assert!(decode_batch(&encode(4, &[0u8; 28])).is_some());
        assert!(decode_batch(&encode(4, &[0u8; 20])).is_none());
    }

    #[test]
    fn malformed_range_deletes_are_refused() {
        let encode = |start: &[u8], end: &[u8]| {
            let mut p = Vec::new();
            p.extend_from_slice(&9u64.to_le_bytes());
            p.extend_from_slice(&1u32.to_le_bytes());
            p.push(RANGE_DELETE);
            put_bytes(&mut p, start);
            put_bytes(&mut p, end);
            p
        };
        assert!(decode_batch(&encode(b"k\0a", b"k\0b")).is_some());
        assert!(
            decode_batch(&encode(b"k\0a", b"k\x01")).is_some(),
            "to the end of the space"
        );
        assert!(
            decode_batch(&encode(b"k\0a", b"k\0a")).is_none(),
            "empty range"
        );
        assert!(
            decode_batch(&encode(b"k\0b", b"k\0a")).is_none(),
            "inverted range"
        );
        assert!(
            decode_batch(&encode(b"k\0", b"k\0b")).is_none(),
            "empty start key"
        );
        assert!(
            decode_batch(&encode(b"k\0a", b"k\x01\0")).is_none(),
            "past its space"
        );
        let mut versioned = encode(b"k\0a", b"k\0b");
        versioned[12] |= VERSIONED;
        assert!(
            decode_batch(&versioned).is_none(),
            "kind 5 takes no version"
        );
    }
}

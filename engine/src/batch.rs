//! Atomic write batches and their WAL encoding.
//!
//! Encoding (also the WAL `Batch` record payload):
//! `[first seq u64 LE][count u32 LE]` then per entry
//! `[kind u8 | 0x80 if versioned][varint key len][logical key]`
//! `[varint version, if versioned][varint value len][value]` (no value for deletes).
//! An entry without an explicit version gets its sequence number as version.

use crate::codec::{put_bytes, put_varint, Reader};
use crate::error::{Error, Result};
use crate::key::{KeySpace, Kind, PREFIX_LEN};

const HEADER: usize = 12;
/// Flag on the kind byte: an explicit version follows the key.
const VERSIONED: u8 = 0x80;

/// A set of writes applied atomically: all of them or none survive a crash.
#[derive(Clone, PartialEq, Eq)]
pub struct WriteBatch {
    rep: Vec<u8>,
    count: u32,
    has_empty_key: bool,
    has_zero_version: bool,
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
        }
    }

    /// Adds a put of `key` in the ordered-KV namespace's default column family.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> &mut Self {
        self.put_in(KeySpace::KV, key, value)
    }

    /// Adds a delete of `key` in the ordered-KV namespace's default column family.
    pub fn delete(&mut self, key: &[u8]) -> &mut Self {
        self.delete_in(KeySpace::KV, key)
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
        }
        self.count += 1;
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.count as usize
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
        for e in self.iter_entries() {
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

    /// Iterates over the entries in insertion order.
    pub fn iter_entries(&self) -> impl Iterator<Item = BatchEntry<'_>> {
        // The in-memory representation is always well formed.
        EntryIter {
            r: Reader::new(&self.rep[HEADER..]),
            left: self.count,
        }
        .map(|e| e.expect("in-memory batch is well formed"))
    }
}

struct EntryIter<'a> {
    r: Reader<'a>,
    left: u32,
}

impl<'a> Iterator for EntryIter<'a> {
    type Item = Option<BatchEntry<'a>>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        Some(decode_entry(&mut self.r))
    }
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
        // Value pointers exist only in tables: the WAL always holds whole values.
        Kind::ValuePointer | Kind::ValuePointerWithExpiry => return None,
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
    /// Entries in order.
    pub entries: Vec<BatchEntry<'a>>,
}

/// Decodes a WAL batch payload; `None` when it is malformed.
pub(crate) fn decode_batch(payload: &[u8]) -> Option<DecodedBatch<'_>> {
    let mut r = Reader::new(payload);
    let seq = r.u64_le()?;
    let count = r.u32_le()?;
    let mut entries = Vec::with_capacity(count.min(1 << 16) as usize);
    for _ in 0..count {
        entries.push(decode_entry(&mut r)?);
    }
    if !r.is_empty() {
        return None;
    }
    Some(DecodedBatch { seq, entries })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
            prop_assert_eq!(d.entries.len(), ops.len());
            for (e, (put, cf, version, k, v)) in d.entries.iter().zip(&ops) {
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
    }
}

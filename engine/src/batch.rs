//! Atomic write batches and their WAL encoding.
//!
//! Encoding (also the WAL `Batch` record payload):
//! `[first seq u64 LE][count u32 LE]` then per entry
//! `[kind u8][varint key len][logical key][varint value len][value]` (no value for deletes).

use crate::codec::{put_bytes, Reader};
use crate::error::{Error, Result};
use crate::key::{Kind, NS_KV};

const HEADER: usize = 12;

/// A set of writes applied atomically: all of them or none survive a crash.
#[derive(Clone, PartialEq, Eq)]
pub struct WriteBatch {
    rep: Vec<u8>,
    count: u32,
    has_empty_key: bool,
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
    /// Namespace byte + user key.
    pub logical_key: &'a [u8],
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
        }
    }

    /// Adds a put of `key` in the ordered-KV namespace.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> &mut Self {
        self.put_ns(NS_KV, key, value)
    }

    /// Adds a delete of `key` in the ordered-KV namespace.
    pub fn delete(&mut self, key: &[u8]) -> &mut Self {
        self.delete_ns(NS_KV, key)
    }

    /// Adds a put in namespace `ns` (see [`crate::key`] for the reserved namespaces).
    pub fn put_ns(&mut self, ns: u8, key: &[u8], value: &[u8]) -> &mut Self {
        self.has_empty_key |= key.is_empty();
        self.push(Kind::Put, ns, key, Some(value));
        self
    }

    /// Adds a put of `key` (ordered-KV namespace) that expires at `expiry_unix_ms`.
    ///
    /// The expiry is absolute so that every replica applying the batch stores the same data.
    pub fn put_with_expiry(&mut self, key: &[u8], value: &[u8], expiry_unix_ms: u64) -> &mut Self {
        self.put_ns_with_expiry(NS_KV, key, value, expiry_unix_ms)
    }

    /// Adds a put in namespace `ns` that expires at `expiry_unix_ms`.
    pub fn put_ns_with_expiry(
        &mut self,
        ns: u8,
        key: &[u8],
        value: &[u8],
        expiry_unix_ms: u64,
    ) -> &mut Self {
        self.has_empty_key |= key.is_empty();
        let mut v = Vec::with_capacity(crate::key::EXPIRY_LEN + value.len());
        v.extend_from_slice(&expiry_unix_ms.to_le_bytes());
        v.extend_from_slice(value);
        self.push(Kind::PutWithExpiry, ns, key, Some(&v));
        self
    }

    /// Adds a delete in namespace `ns`.
    pub fn delete_ns(&mut self, ns: u8, key: &[u8]) -> &mut Self {
        self.has_empty_key |= key.is_empty();
        self.push(Kind::Delete, ns, key, None);
        self
    }

    fn push(&mut self, kind: Kind, ns: u8, key: &[u8], value: Option<&[u8]>) {
        self.rep.push(kind as u8);
        crate::codec::put_varint(&mut self.rep, key.len() as u64 + 1);
        self.rep.push(ns);
        self.rep.extend_from_slice(key);
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
        if self.rep.len() > max_batch {
            return Err(Error::BatchTooLarge {
                len: self.rep.len(),
                max: max_batch,
            });
        }
        for e in self.iter_entries() {
            let klen = e.logical_key.len() - 1;
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
    let kind = Kind::from_u8(r.u8()?)?;
    let logical_key = r.bytes()?;
    if logical_key.is_empty() {
        return None;
    }
    let value = match kind {
        Kind::Put => r.bytes()?,
        Kind::PutWithExpiry => Some(r.bytes()?).filter(|v| v.len() >= crate::key::EXPIRY_LEN)?,
        Kind::Delete => &[][..],
    };
    Some(BatchEntry {
        kind,
        logical_key,
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
        fn encode_decode_roundtrip(ops in proptest::collection::vec((any::<bool>(), proptest::collection::vec(any::<u8>(), 1..20), proptest::collection::vec(any::<u8>(), 0..50)), 0..30), seq in 0u64..1<<50) {
            let mut b = WriteBatch::new();
            for (put, k, v) in &ops {
                if *put { b.put(k, v); } else { b.delete(k); }
            }
            let mut out = Vec::new();
            b.encode_with_seq(seq, &mut out);
            let d = decode_batch(&out).expect("decodes");
            prop_assert_eq!(d.seq, seq);
            prop_assert_eq!(d.entries.len(), ops.len());
            for (e, (put, k, v)) in d.entries.iter().zip(&ops) {
                prop_assert_eq!(e.kind, if *put { Kind::Put } else { Kind::Delete });
                prop_assert_eq!(&e.logical_key[1..], &k[..]);
                prop_assert_eq!(e.logical_key[0], NS_KV);
                if *put { prop_assert_eq!(e.value, &v[..]); }
            }
        }

        #[test]
        fn garbage_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_batch(&buf);
        }
    }
}

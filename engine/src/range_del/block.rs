//! The range tombstone meta block of an SST (`docs/format.md`, "Range tombstones").
//!
//! ```text
//! varint count
//! count x ( varint start_len | start | varint end_len | end | version u64 LE | seq u64 LE )
//! crc u32 LE     CRC-32 of every preceding byte of the block
//! ```

use std::path::Path;

use super::{show_key, RangeTombstone};
use crate::codec::{put_bytes, put_varint, Reader};
use crate::error::{Error, Result};

/// Bytes of the checksum at the end of the block.
const CRC_LEN: usize = 4;
/// Smallest encoding of one tombstone: two one-byte lengths, a one-byte end, two u64s.
const MIN_TOMBSTONE_LEN: usize = 1 + 1 + 1 + 8 + 8;

/// Encodes tombstones (any order; the writer passes them in canonical order) as a meta block.
pub fn encode_block(tombstones: &[RangeTombstone]) -> Vec<u8> {
    let body: usize = tombstones
        .iter()
        .map(|t| t.start.len() + t.end.len() + 2 * 10 + 16)
        .sum();
    let mut out = Vec::with_capacity(10 + body + CRC_LEN);
    put_varint(&mut out, tombstones.len() as u64);
    for t in tombstones {
        debug_assert!(t.validate().is_ok(), "encoding an invalid range tombstone");
        put_bytes(&mut out, &t.start);
        put_bytes(&mut out, &t.end);
        out.extend_from_slice(&t.version.to_le_bytes());
        out.extend_from_slice(&t.seq.to_le_bytes());
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes a meta block read from `path` at file offset `offset`, checking everything.
///
/// Any damage (checksum, truncation, trailing bytes, a count that does not
/// match, a range with `start >= end`) is `Error::Corruption` at `offset`.
pub fn decode_block(bytes: &[u8], path: &Path, offset: u64) -> Result<Vec<RangeTombstone>> {
    let bad =
        |msg: String| Error::corruption(path, offset, format!("range tombstone block: {msg}"));
    let Some(body_len) = bytes.len().checked_sub(CRC_LEN) else {
        return Err(bad(format!(
            "{} bytes, shorter than its checksum",
            bytes.len()
        )));
    };
    let (body, crc) = bytes.split_at(body_len);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let actual = crc32fast::hash(body);
    if stored != actual {
        return Err(bad(format!(
            "checksum mismatch (stored {stored:#010x}, computed {actual:#010x})"
        )));
    }
    let mut r = Reader::new(body);
    let count = r
        .varint()
        .ok_or_else(|| bad("truncated tombstone count".into()))?;
    let room = (body.len() - r.position()) / MIN_TOMBSTONE_LEN;
    let count = usize::try_from(count)
        .ok()
        .filter(|&c| c <= room)
        .ok_or_else(|| {
            bad(format!(
                "count {count} does not fit in {} bytes",
                body.len()
            ))
        })?;
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let at = r.position();
        let field = |what: &str| bad(format!("tombstone {i} at byte {at}: truncated {what}"));
        let start = r.bytes().ok_or_else(|| field("start key"))?.to_vec();
        let end = r.bytes().ok_or_else(|| field("end key"))?.to_vec();
        let version = r.u64_le().ok_or_else(|| field("version"))?;
        let seq = r.u64_le().ok_or_else(|| field("seq"))?;
        if start >= end {
            return Err(bad(format!(
                "tombstone {i} at byte {at}: start {} does not sort before end {}",
                show_key(&start),
                show_key(&end)
            )));
        }
        out.push(RangeTombstone {
            start,
            end,
            version,
            seq,
        });
    }
    if !r.is_empty() {
        return Err(bad(format!(
            "{} bytes after the last tombstone",
            body.len() - r.position()
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(s: &[u8], e: &[u8], v: u64, q: u64) -> RangeTombstone {
        RangeTombstone::new(s.to_vec(), e.to_vec(), v, q).unwrap()
    }

    fn decode(b: &[u8]) -> Result<Vec<RangeTombstone>> {
        decode_block(b, Path::new("000007.sst"), 4096)
    }

    fn sample() -> Vec<RangeTombstone> {
        vec![
            t(b"", b"a", 0, 0),
            t(b"kabc", b"kabd", 7, 9),
            t(&[0x6b; 40], &[0x6c], u64::MAX, u64::MAX),
            t(b"r\x00\xff", b"r\x01", 1 << 40, 3),
        ]
    }

    #[test]
    fn layout_is_as_documented() {
        let b = encode_block(&[t(b"ka", b"kc", 5, 0x0102)]);
        let mut want = vec![1, 2, b'k', b'a', 2, b'k', b'c'];
        want.extend_from_slice(&5u64.to_le_bytes());
        want.extend_from_slice(&0x0102u64.to_le_bytes());
        let crc = crc32fast::hash(&want);
        want.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(b, want);
        let empty = encode_block(&[]);
        assert_eq!(empty.len(), 5);
        assert_eq!(decode(&empty).unwrap(), vec![]);
    }

    #[test]
    fn every_single_byte_corruption_is_detected() {
        let good = encode_block(&sample());
        assert_eq!(decode(&good).unwrap(), sample());
        let mut b = good.clone();
        for i in 0..good.len() {
            for x in 1..=255u8 {
                b[i] = good[i] ^ x;
                match decode(&b) {
                    Err(Error::Corruption {
                        offset: 4096, path, ..
                    }) => {
                        assert_eq!(path, Path::new("000007.sst"))
                    }
                    other => panic!("byte {i} ^ {x:#04x}: {other:?}"),
                }
            }
            b[i] = good[i];
        }
        for n in 0..good.len() {
            assert!(decode(&good[..n]).is_err(), "truncated to {n} bytes");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
    }

    /// Damage that a checksum cannot catch (the writer's own bug) is still rejected.
    #[test]
    fn structural_checks_behind_a_valid_checksum() {
        let seal = |mut body: Vec<u8>| {
            let crc = crc32fast::hash(&body);
            body.extend_from_slice(&crc.to_le_bytes());
            body
        };
        let msg = |b: Vec<u8>| decode(&seal(b)).unwrap_err().to_string();
        assert!(msg(vec![]).contains("count"));
        assert!(msg(vec![0x80]).contains("count"));
        assert!(msg(vec![0xff; 11]).contains("count"));
        assert!(msg(vec![5, 0, 1, b'a']).contains("does not fit"));
        let mut one = vec![1, 1, b'b', 1, b'a'];
        one.extend_from_slice(&[0; 16]);
        assert!(msg(one.clone()).contains("does not sort before"));
        one[2] = b'a';
        assert!(
            msg(one.clone()).contains("does not sort before"),
            "start == end"
        );
        one[4] = b'b';
        assert!(decode(&seal(one.clone())).is_ok());
        let mut extra = one.clone();
        extra.push(0);
        assert!(msg(extra).contains("after the last"));
        let mut short = one.clone();
        short[1] = 60; // the count fits, but the start key runs past the end
        assert!(msg(short).contains("truncated start key"));
        let mut two = vec![2];
        two.extend_from_slice(&one[1..]);
        two.extend_from_slice(&[1, b'x', 0x7f, b'y']); // claims a 127-byte end key
        two.extend_from_slice(&[0; 16]);
        assert!(msg(two).contains("truncated end key"));
    }

    proptest! {
        #[test]
        fn roundtrip(ts in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 0..20),
             proptest::collection::vec(any::<u8>(), 0..20),
             any::<u64>(), any::<u64>()), 0..20)) {
            let ts: Vec<RangeTombstone> = ts
                .into_iter()
                .filter_map(|(a, b, v, s)| {
                    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
                    RangeTombstone::new(lo, hi, v, s).ok()
                })
                .collect();
            let enc = encode_block(&ts);
            prop_assert_eq!(decode(&enc).unwrap(), ts);
        }

        #[test]
        fn garbage_never_panics(b in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = decode(&b);
        }
    }
}

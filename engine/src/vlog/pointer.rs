//! [`ValuePointer`]: where a separated value lives, in a fixed 20-byte encoding.
//!
//! ```text
//! +----------------+---------------+------------+
//! | segment u64 LE | offset u64 LE | len u32 LE |
//! +----------------+---------------+------------+
//! ```
//!
//! The pointer addresses a whole segment *record* (its 12-byte header, key and value), not
//! just the value bytes: a read is one positional read of exactly `len` bytes, after which the
//! record checksum is verified before any byte is handed out.

use super::segment::{RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};

/// The location of one record in a value-log segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValuePointer {
    /// Id of the segment file (`filename::vlog(dir, segment)`).
    pub segment: u64,
    /// File offset of the record's first byte (its crc).
    pub offset: u64,
    /// Length of the whole record: 12-byte header + key + value.
    pub len: u32,
}

/// Why bytes do not decode as a [`ValuePointer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PointerError {
    /// The encoding is not exactly [`ValuePointer::ENCODED_LEN`] bytes.
    #[error("value pointer of {0} bytes, expected {len}", len = ValuePointer::ENCODED_LEN)]
    WrongLength(usize),
    /// The record length is below the 12-byte record header.
    #[error("value pointer record length {0} is shorter than a record header")]
    RecordTooShort(u32),
    /// The offset points into the segment header.
    #[error("value pointer offset {0} lies inside the segment header")]
    OffsetInHeader(u64),
    /// `offset + len` overflows a u64.
    #[error("value pointer offset {0} plus its length overflows")]
    Overflow(u64),
}

impl ValuePointer {
    /// Bytes in an encoded pointer.
    pub const ENCODED_LEN: usize = 20;

    /// Length of the value bytes, given the length of the key stored with it (`None` if too long).
    pub fn value_len(&self, key_len: usize) -> Option<usize> {
        (self.len as usize).checked_sub(RECORD_HEADER_LEN + key_len)
    }

    /// File offset just past the record.
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.len as u64)
    }

    /// The fixed 20-byte little-endian encoding.
    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        out[0..8].copy_from_slice(&self.segment.to_le_bytes());
        out[8..16].copy_from_slice(&self.offset.to_le_bytes());
        out[16..20].copy_from_slice(&self.len.to_le_bytes());
        out
    }

    /// Appends the encoding to `out`.
    pub fn encode_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.encode());
    }

    /// Decodes exactly [`Self::ENCODED_LEN`] bytes, rejecting impossible lengths and offsets.
    pub fn decode(buf: &[u8]) -> Result<ValuePointer, PointerError> {
        let b: &[u8; Self::ENCODED_LEN] = buf
            .try_into()
            .map_err(|_| PointerError::WrongLength(buf.len()))?;
        let mut seg = [0u8; 8];
        seg.copy_from_slice(&b[0..8]);
        let mut off = [0u8; 8];
        off.copy_from_slice(&b[8..16]);
        let p = ValuePointer {
            segment: u64::from_le_bytes(seg),
            offset: u64::from_le_bytes(off),
            len: u32::from_le_bytes([b[16], b[17], b[18], b[19]]),
        };
        if (p.len as usize) < RECORD_HEADER_LEN {
            return Err(PointerError::RecordTooShort(p.len));
        }
        if p.offset < SEGMENT_HEADER_LEN as u64 {
            return Err(PointerError::OffsetInHeader(p.offset));
        }
        if p.offset.checked_add(p.len as u64).is_none() {
            return Err(PointerError::Overflow(p.offset));
        }
        Ok(p)
    }

    /// Like [`Self::decode`], reporting a failure as corruption of `path` at `offset`
    /// (the file and position the pointer bytes were read from, e.g. an SST block).
    pub fn decode_in(buf: &[u8], path: &std::path::Path, offset: u64) -> crate::Result<Self> {
        Self::decode(buf).map_err(|e| crate::Error::corruption(path, offset, e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn layout_is_little_endian_and_fixed() {
        let p = ValuePointer {
            segment: 0x0102030405060708,
            offset: 0x1122334455667788,
            len: 0xa1b2c3d4,
        };
        let e = p.encode();
        assert_eq!(
            e,
            [
                8, 7, 6, 5, 4, 3, 2, 1, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0xd4, 0xc3,
                0xb2, 0xa1
            ]
        );
        assert_eq!(ValuePointer::decode(&e), Ok(p));
        let mut v = vec![9u8];
        p.encode_to(&mut v);
        assert_eq!(&v[1..], &e[..]);
    }

    #[test]
    fn rejects_bad_lengths_and_offsets() {
        let good = ValuePointer {
            segment: 3,
            offset: SEGMENT_HEADER_LEN as u64,
            len: RECORD_HEADER_LEN as u32,
        };
        let e = good.encode();
        assert_eq!(ValuePointer::decode(&e), Ok(good));
        assert_eq!(
            ValuePointer::decode(&e[..19]),
            Err(PointerError::WrongLength(19))
        );
        assert_eq!(ValuePointer::decode(&[]), Err(PointerError::WrongLength(0)));
        let mut long = e.to_vec();
        long.push(0);
        assert_eq!(
            ValuePointer::decode(&long),
            Err(PointerError::WrongLength(21))
        );
        let short = ValuePointer { len: 11, ..good };
        assert_eq!(
            ValuePointer::decode(&short.encode()),
            Err(PointerError::RecordTooShort(11))
        );
        let in_header = ValuePointer { offset: 23, ..good };
        assert_eq!(
            ValuePointer::decode(&in_header.encode()),
            Err(PointerError::OffsetInHeader(23))
        );
        let overflow = ValuePointer {
            offset: u64::MAX - 5,
            ..good
        };
        assert_eq!(
            ValuePointer::decode(&overflow.encode()),
            Err(PointerError::Overflow(u64::MAX - 5))
        );
        let err = ValuePointer::decode_in(&e[..3], std::path::Path::new("/db/000007.sst"), 4096)
            .unwrap_err();
        match err {
            crate::Error::Corruption { path, offset, msg } => {
                assert_eq!(path, std::path::Path::new("/db/000007.sst"));
                assert_eq!(offset, 4096);
                assert!(msg.contains("3 bytes"), "{msg}");
            }
            other => panic!("expected corruption, got {other:?}"),
        }
    }

    #[test]
    fn value_len_and_end() {
        let p = ValuePointer {
            segment: 1,
            offset: 100,
            len: 30,
        };
        assert_eq!(p.value_len(8), Some(10));
        assert_eq!(p.value_len(18), Some(0));
        assert_eq!(p.value_len(19), None);
        assert_eq!(p.end(), 130);
    }

    proptest! {
        #[test]
        fn codec_roundtrip(segment in any::<u64>(), offset in any::<u64>(), len in any::<u32>()) {
            let p = ValuePointer { segment, offset, len };
            let valid = len as usize >= RECORD_HEADER_LEN
                && offset >= SEGMENT_HEADER_LEN as u64
                && offset.checked_add(len as u64).is_some();
            match ValuePointer::decode(&p.encode()) {
                Ok(d) => { prop_assert!(valid); prop_assert_eq!(d, p); }
                Err(_) => prop_assert!(!valid),
            }
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..48)) {
            let r = ValuePointer::decode(&bytes);
            if bytes.len() != ValuePointer::ENCODED_LEN {
                prop_assert_eq!(r, Err(PointerError::WrongLength(bytes.len())));
            } else if let Ok(p) = r {
                prop_assert_eq!(&p.encode()[..], &bytes[..]);
            }
        }
    }
}

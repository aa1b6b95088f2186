//! Checksummed record framing shared by WAL segments and the manifest.
//!
//! A record is `[crc32 u32 LE][len u32 LE][gen u32 LE][type u8][payload; len]`.
//! The crc covers everything after it (len, gen, type, payload). `gen` is the
//! low 32 bits of the segment generation, so that a recycled segment's stale
//! records from an earlier life are recognised as the end of the log.

/// Bytes in a record header.
pub const HEADER_LEN: usize = 13;

/// Appends one framed record to `out`.
pub fn encode(out: &mut Vec<u8>, gen: u64, rtype: u8, payload: &[u8]) {
    let len =
        u32::try_from(payload.len()).expect("record payload above 4 GiB: caller must bound it");
    let start = out.len();
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(gen as u32).to_le_bytes());
    out.push(rtype);
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// What [`decode`] found at an offset.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A whole, valid record of the expected generation.
    Record {
        /// Record type byte.
        rtype: u8,
        /// Payload bytes.
        payload: &'a [u8],
        /// Total framed length (header + payload).
        framed_len: usize,
    },
    /// Zeros, a stale generation, or no room for a header: the clean end of the log.
    End,
    /// The bytes do not form a valid record of this generation.
    Bad {
        /// Why.
        reason: &'static str,
        /// The length field, when it fits in the buffer (used to probe what follows).
        claimed_len: Option<usize>,
    },
}

/// Decodes the record at the start of `buf`, expecting generation `gen`.
pub fn decode(buf: &[u8], gen: u64) -> Decoded<'_> {
    if buf.len() < HEADER_LEN {
        return if buf.iter().all(|b| *b == 0) {
            Decoded::End
        } else {
            Decoded::Bad {
                reason: "truncated record header",
                claimed_len: None,
            }
        };
    }
    let h = Header::parse(buf);
    let (len, rgen) = (h.len, h.gen);
    if h.crc == 0 && len == 0 && rgen == 0 && buf[12] == 0 {
        return Decoded::End;
    }
    match h.intact_end(buf) {
        Some(end) if h.checksum_ok(buf, end) => {
            if rgen != gen as u32 {
                return Decoded::End;
            }
            Decoded::Record {
                rtype: buf[12],
                payload: &buf[HEADER_LEN..end],
                framed_len: end,
            }
        }
        // Not of this generation and not intact: the stale bytes of a recycled segment
        // past the log's end, unless a record of this generation follows, which makes it
        // a damaged record in the middle of the log (a flipped bit in its `gen`).
        Some(end) if rgen != gen as u32 && !is_record_of(&buf[end..], gen) => Decoded::End,
        Some(_) => Decoded::Bad {
            reason: "checksum mismatch",
            claimed_len: Some(len),
        },
        None if rgen != gen as u32 => Decoded::End,
        None => Decoded::Bad {
            reason: "record runs past the end of the file",
            claimed_len: None,
        },
    }
}

/// Whether `buf` starts with an intact record of generation `gen` (no probing further).
fn is_record_of(buf: &[u8], gen: u64) -> bool {
    if buf.len() < HEADER_LEN {
        return false;
    }
    let h = Header::parse(buf);
    h.gen == gen as u32 && h.intact_end(buf).is_some_and(|end| h.checksum_ok(buf, end))
}

/// A record header's fields, as stored.
struct Header {
    crc: u32,
    len: usize,
    gen: u32,
}

impl Header {
    /// The header at the start of `buf` (at least [`HEADER_LEN`] bytes).
    fn parse(buf: &[u8]) -> Header {
        let word = |at: usize| u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
        Header {
            crc: word(0),
            len: word(4) as usize,
            gen: word(8),
        }
    }

    /// Where the record ends, when the buffer holds all of it.
    fn intact_end(&self, buf: &[u8]) -> Option<usize> {
        HEADER_LEN.checked_add(self.len).filter(|e| *e <= buf.len())
    }

    /// Whether the checksum covers `buf[4..end]` (length, generation, type and payload).
    fn checksum_ok(&self, buf: &[u8], end: usize) -> bool {
        crc32fast::hash(&buf[4..end]) == self.crc
    }
}

/// The outcome of scanning a buffer of records with [`scan`].
#[derive(Debug, Default)]
pub struct Scan {
    /// Each valid record: (type, payload byte range within the buffer).
    pub records: Vec<(u8, std::ops::Range<usize>)>,
    /// Offset just past the last valid record.
    pub end: usize,
    /// The first invalid bytes, when the scan stopped on them: (offset, reason).
    pub bad: Option<(usize, &'static str)>,
    /// True when a valid record follows the invalid one: damage in the middle of the log,
    /// not a torn tail.
    pub mid_log: bool,
}

/// Decodes records of generation `gen` from the start of `buf` until the end of the log.
pub fn scan(buf: &[u8], gen: u64) -> Scan {
    let mut out = Scan::default();
    let mut off = 0;
    loop {
        match decode(&buf[off..], gen) {
            Decoded::Record {
                rtype,
                payload,
                framed_len,
            } => {
                let start = off + HEADER_LEN;
                out.records.push((rtype, start..start + payload.len()));
                off += framed_len;
            }
            Decoded::End => break,
            Decoded::Bad {
                reason,
                claimed_len,
            } => {
                out.bad = Some((off, reason));
                if let Some(next) = claimed_len.and_then(|l| off.checked_add(HEADER_LEN + l)) {
                    if next < buf.len() {
                        out.mid_log = matches!(decode(&buf[next..], gen), Decoded::Record { .. });
                    }
                }
                // A damaged length field points the probe above at the wrong place: any
                // intact record of this generation further on also makes it mid-log
                // damage, not a torn tail (found by tests/corruption.rs).
                out.mid_log =
                    out.mid_log || (off + 1..buf.len()).any(|at| is_record_of(&buf[at..], gen));
                break;
            }
        }
    }
    out.end = off;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn stale_generation_is_end() {
        let mut b = Vec::new();
        encode(&mut b, 7, 1, b"hello");
        assert!(matches!(decode(&b, 7), Decoded::Record { rtype: 1, .. }));
        assert_eq!(decode(&b, 8), Decoded::End);
        assert_eq!(decode(&[0u8; 40], 8), Decoded::End);
    }

    #[test]
    fn a_flipped_generation_bit_mid_log_is_damage_not_the_end() {
        // Found by tests/corruption.rs: the log silently ended at the damaged record and
        // the records after it were lost.
        let mut b = Vec::new();
        for p in [&b"one"[..], b"two", b"three"] {
            encode(&mut b, 5, 1, p);
        }
        let second = HEADER_LEN + 3;
        b[second + 8] ^= 1; // the second record's gen
        let s = scan(&b, 5);
        assert_eq!(s.records.len(), 1);
        assert_eq!(s.bad.map(|b| b.0), Some(second));
        assert!(s.mid_log);
        // Garbage of another generation with nothing valid after it is still the end.
        let mut tail = Vec::new();
        encode(&mut tail, 5, 1, b"one");
        let mut stale = Vec::new();
        encode(&mut stale, 4, 1, b"old record");
        stale[2] ^= 0xff; // not even intact
        tail.extend_from_slice(&stale);
        let s = scan(&tail, 5);
        assert_eq!((s.records.len(), s.bad), (1, None));
    }

    #[test]
    fn a_flipped_length_bit_mid_log_is_damage_not_a_torn_tail() {
        let mut b = Vec::new();
        for p in [&b"first record"[..], b"second record", b"third record"] {
            encode(&mut b, 5, 1, p);
        }
        let second = HEADER_LEN + 12;
        b[second + 4] ^= 1; // the second record's length: 13 becomes 12
        let s = scan(&b, 5);
        assert_eq!(s.records.len(), 1);
        assert_eq!(s.bad.map(|b| b.0), Some(second));
        assert!(s.mid_log);
    }

    #[test]
    fn flipped_byte_is_bad() {
        let mut b = Vec::new();
        encode(&mut b, 3, 2, b"payload bytes");
        let n = b.len();
        b[n - 2] ^= 0x40;
        assert!(matches!(decode(&b, 3), Decoded::Bad { .. }));
    }

    #[test]
    fn scan_tells_torn_tail_from_mid_log_damage() {
        let mut b = Vec::new();
        for p in [&b"one"[..], b"two", b"three"] {
            encode(&mut b, 1, 1, p);
        }
        let second = HEADER_LEN + 3;
        let mut torn = b.clone();
        let n = torn.len();
        torn[n - 1] ^= 1;
        let s = scan(&torn, 1);
        assert_eq!(s.records.len(), 2);
        assert!(s.bad.is_some() && !s.mid_log);
        let mut mid = b.clone();
        mid[second + HEADER_LEN] ^= 1;
        let s = scan(&mid, 1);
        assert_eq!(s.records.len(), 1);
        assert_eq!(s.bad.map(|b| b.0), Some(second));
        assert!(s.mid_log);
    }

    proptest! {
        #[test]
        fn roundtrip_and_truncation(payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..8), gen in any::<u64>(), cut in any::<prop::sample::Index>()) {
            let mut buf = Vec::new();
            for (i, p) in payloads.iter().enumerate() { encode(&mut buf, gen, i as u8 + 1, p); }
            let mut off = 0;
            for (i, p) in payloads.iter().enumerate() {
                match decode(&buf[off..], gen) {
                    Decoded::Record { rtype, payload, framed_len } => {
                        prop_assert_eq!(rtype, i as u8 + 1);
                        prop_assert_eq!(payload, &p[..]);
                        off += framed_len;
                    }
                    other => prop_assert!(false, "unexpected {:?}", other),
                }
            }
            // Any strict prefix of the last record never decodes as a record.
            let last_start = buf.len() - HEADER_LEN - payloads[payloads.len() - 1].len();
            let cut_at = last_start + cut.index(buf.len() - last_start);
            let torn = decode(&buf[last_start..cut_at], gen);
            prop_assert!(!matches!(torn, Decoded::Record { .. }), "a torn record decoded");
        }
    }
}

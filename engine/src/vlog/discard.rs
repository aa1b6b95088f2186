//! [`DiscardStats`]: how many of each live segment's record bytes are garbage.
//!
//! Compaction reports a discard whenever it drops or overwrites an entry whose value lives
//! in a segment (the pointer's `len`, i.e. the whole record). GC picks the segment with the
//! highest discarded/total ratio.
//!
//! Encoding (for a manifest edit), all little-endian:
//!
//! ```text
//! count u32 | count x (segment u64, total u64, discarded u64), segments ascending | crc u32
//! ```
//!
//! `crc` covers every byte before it. Decoding requires the exact length, the crc,
//! strictly ascending segment ids and `discarded <= total`.

use std::collections::BTreeMap;

/// Byte counts of one segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SegmentUsage {
    /// Record bytes the segment holds ([`super::SegmentMeta::record_bytes`]).
    pub total: u64,
    /// Record bytes no longer referenced (at most `total`).
    pub discarded: u64,
}

impl SegmentUsage {
    /// `discarded / total`, in `[0, 1]`; an empty segment counts as all garbage (1.0).
    pub fn ratio(&self) -> f64 {
        if self.total == 0 {
            1.0
        } else {
            self.discarded as f64 / self.total as f64
        }
    }
}

/// Per-segment totals and discarded bytes of the live value-log segments.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DiscardStats {
    segments: BTreeMap<u64, SegmentUsage>,
}

/// Bytes per segment entry in the encoding.
const ENTRY_LEN: usize = 24;

impl DiscardStats {
    /// No segments.
    pub fn new() -> DiscardStats {
        DiscardStats::default()
    }

    /// Starts tracking `segment` holding `total_bytes` record bytes (nothing discarded).
    /// Re-adding a tracked segment resets it.
    pub fn add_segment(&mut self, segment: u64, total_bytes: u64) {
        self.segments.insert(
            segment,
            SegmentUsage {
                total: total_bytes,
                discarded: 0,
            },
        );
    }

    /// Stops tracking `segment` (it was deleted); returns its last usage.
    pub fn remove_segment(&mut self, segment: u64) -> Option<SegmentUsage> {
        self.segments.remove(&segment)
    }

    /// Records `bytes` more garbage in `segment` (capped at its total). Returns false, and
    /// changes nothing, when the segment is not tracked.
    pub fn add_discard(&mut self, segment: u64, bytes: u64) -> bool {
        match self.segments.get_mut(&segment) {
            Some(u) => {
                u.discarded = u.discarded.saturating_add(bytes).min(u.total);
                true
            }
            None => false,
        }
    }

    /// The usage of `segment`, if tracked.
    pub fn usage(&self, segment: u64) -> Option<SegmentUsage> {
        self.segments.get(&segment).copied()
    }

    /// Discarded / total bytes of `segment`, if tracked.
    pub fn ratio(&self, segment: u64) -> Option<f64> {
        self.usage(segment).map(|u| u.ratio())
    }

    /// The segment with the highest ratio that is at least `min_ratio` (the oldest, i.e.
    /// lowest id, on ties); `None` when no segment qualifies.
    pub fn pick_gc_candidate(&self, min_ratio: f64) -> Option<u64> {
        let mut best: Option<(u64, f64)> = None;
        for (&seg, u) in &self.segments {
            let r = u.ratio();
            if r >= min_ratio && best.is_none_or(|(_, b)| r > b) {
                best = Some((seg, r));
            }
        }
        best.map(|(seg, _)| seg)
    }

    /// Number of tracked segments.
    pub fn len(&self) -> usize {
        self.segments.len()
    }

    /// True when no segment is tracked.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Tracked segments and their usage, by ascending id.
    pub fn iter(&self) -> impl Iterator<Item = (u64, SegmentUsage)> + '_ {
        self.segments.iter().map(|(s, u)| (*s, *u))
    }

    /// Sum of total and of discarded bytes over all segments.
    pub fn totals(&self) -> SegmentUsage {
        self.segments
            .values()
            .fold(SegmentUsage::default(), |a, u| SegmentUsage {
                total: a.total.saturating_add(u.total),
                discarded: a.discarded.saturating_add(u.discarded),
            })
    }

    /// Appends the encoding (see the module docs) to `out`.
    pub fn encode_to(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.reserve(8 + ENTRY_LEN * self.segments.len());
        // A u32 count bounds the table at 4 billion segments, far past any real database.
        out.extend_from_slice(&(self.segments.len() as u32).to_le_bytes());
        for (seg, u) in &self.segments {
            out.extend_from_slice(&seg.to_le_bytes());
            out.extend_from_slice(&u.total.to_le_bytes());
            out.extend_from_slice(&u.discarded.to_le_bytes());
        }
        let crc = crc32fast::hash(&out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
    }

    /// The encoding (see the module docs).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_to(&mut out);
        out
    }

    /// Decodes exactly one encoding; the error says what was wrong.
    pub fn decode(buf: &[u8]) -> Result<DiscardStats, String> {
        let u64_at = |at: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&buf[at..at + 8]);
            u64::from_le_bytes(a)
        };
        let u32_at = |at: usize| {
            let mut a = [0u8; 4];
            a.copy_from_slice(&buf[at..at + 4]);
            u32::from_le_bytes(a)
        };
        if buf.len() < 8 {
            return Err(format!(
                "discard stats of {} bytes, at least 8 needed",
                buf.len()
            ));
        }
        let count = u32_at(0) as usize;
        let want = (count as u64) * ENTRY_LEN as u64 + 8;
        if buf.len() as u64 != want {
            return Err(format!(
                "discard stats of {} bytes, {count} segments need {want}",
                buf.len()
            ));
        }
        let body = buf.len() - 4;
        if crc32fast::hash(&buf[..body]) != u32_at(body) {
            return Err("discard stats checksum mismatch".to_string());
        }
        let mut segments = BTreeMap::new();
        let mut prev: Option<u64> = None;
        for i in 0..count {
            let at = 4 + i * ENTRY_LEN;
            let (seg, total, discarded) = (u64_at(at), u64_at(at + 8), u64_at(at + 16));
            if prev.is_some_and(|p| seg <= p) {
                return Err(format!("discard stats: segment {seg} out of order"));
            }
            if discarded > total {
                return Err(format!(
                    "discard stats: segment {seg} discards {discarded} of {total} bytes"
                ));
            }
            prev = Some(seg);
            segments.insert(seg, SegmentUsage { total, discarded });
        }
        Ok(DiscardStats { segments })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ratios_and_candidate() {
        let mut s = DiscardStats::new();
        assert_eq!(s.pick_gc_candidate(0.0), None);
        s.add_segment(1, 1000);
        s.add_segment(2, 1000);
        s.add_segment(3, 500);
        assert!(s.add_discard(1, 300));
        assert!(s.add_discard(2, 600));
        assert!(s.add_discard(3, 300));
        assert!(!s.add_discard(9, 10), "unknown segment");
        assert_eq!(s.ratio(1), Some(0.3));
        assert_eq!(s.ratio(9), None);
        // Segments 2 and 3 tie at 0.6: the older one wins.
        assert_eq!(s.pick_gc_candidate(0.5), Some(2));
        assert_eq!(s.pick_gc_candidate(0.61), None);
        assert!(s.add_discard(3, 100));
        assert_eq!(s.pick_gc_candidate(0.5), Some(3));
        // Discards are capped at the total.
        assert!(s.add_discard(1, u64::MAX));
        assert_eq!(
            s.usage(1),
            Some(SegmentUsage {
                total: 1000,
                discarded: 1000
            })
        );
        assert_eq!(s.pick_gc_candidate(0.99), Some(1));
        assert_eq!(s.remove_segment(1).map(|u| u.discarded), Some(1000));
        assert_eq!(s.len(), 2);
        assert_eq!(
            s.totals(),
            SegmentUsage {
                total: 1500,
                discarded: 1000
            }
        );
        // An empty segment is all garbage.
        s.add_segment(7, 0);
        assert_eq!(s.ratio(7), Some(1.0));
        assert_eq!(s.pick_gc_candidate(1.0), Some(7));
    }

    #[test]
    fn decode_rejects_damage() {
        let mut s = DiscardStats::new();
        s.add_segment(4, 100);
        s.add_segment(9, 200);
        s.add_discard(9, 50);
        let e = s.encode();
        assert_eq!(e.len(), 8 + 2 * ENTRY_LEN);
        assert_eq!(DiscardStats::decode(&e), Ok(s.clone()));
        assert_eq!(
            DiscardStats::decode(&DiscardStats::new().encode()),
            Ok(DiscardStats::new())
        );
        for i in 0..e.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bad = e.clone();
                bad[i] ^= flip;
                assert!(DiscardStats::decode(&bad).is_err(), "byte {i} ^ {flip:#x}");
            }
        }
        for cut in 0..e.len() {
            assert!(DiscardStats::decode(&e[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = e.clone();
        long.push(0);
        assert!(DiscardStats::decode(&long).is_err());
        // Structurally wrong but correctly checksummed tables are rejected too.
        let forge = |entries: &[(u64, u64, u64)]| {
            let mut b = (entries.len() as u32).to_le_bytes().to_vec();
            for (s, t, d) in entries {
                for v in [s, t, d] {
                    b.extend_from_slice(&v.to_le_bytes());
                }
            }
            let crc = crc32fast::hash(&b);
            b.extend_from_slice(&crc.to_le_bytes());
            b
        };
        assert!(DiscardStats::decode(&forge(&[(1, 10, 0), (2, 10, 0)])).is_ok());
        let err = DiscardStats::decode(&forge(&[(2, 10, 0), (1, 10, 0)])).unwrap_err();
        assert!(err.contains("out of order"), "{err}");
        assert!(DiscardStats::decode(&forge(&[(2, 10, 0), (2, 10, 0)])).is_err());
        let err = DiscardStats::decode(&forge(&[(2, 10, 11)])).unwrap_err();
        assert!(err.contains("discards 11 of 10"), "{err}");
    }

    proptest! {
        #[test]
        fn codec_roundtrip(entries in proptest::collection::btree_map(any::<u64>(), (any::<u64>(), any::<u64>()), 0..40), extra in any::<u64>()) {
            let mut s = DiscardStats::new();
            for (seg, (total, disc)) in &entries {
                s.add_segment(*seg, *total);
                s.add_discard(*seg, *disc);
            }
            let mut out = extra.to_le_bytes().to_vec();
            s.encode_to(&mut out);
            let d = DiscardStats::decode(&out[8..]);
            prop_assert_eq!(d.as_ref(), Ok(&s));
            for (seg, u) in s.iter() {
                prop_assert!(u.discarded <= u.total);
                prop_assert_eq!(Some(u), entries.get(&seg).map(|(t, d)| SegmentUsage { total: *t, discarded: (*d).min(*t) }));
            }
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            if let Ok(s) = DiscardStats::decode(&bytes) {
                prop_assert_eq!(s.encode(), bytes);
            }
        }
    }
}

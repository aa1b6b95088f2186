//! The immutable, fragmented tombstone index.
//!
//! Any set of (possibly overlapping) tombstones is cut at every start and end
//! key into fragments `[a, b)` that do not overlap; each fragment lists the
//! distinct stamps of the tombstones covering it, newest first. The form is
//! canonical: fragments are sorted, non-empty, and two touching fragments
//! never carry the same stamp list (they are merged), so equal coverage gives
//! equal indexes.
//!
//! Size: `n` tombstones give at most `2n - 1` fragments; the stamp lists hold
//! at most one entry per (tombstone, fragment) pair, which is `O(n)` for
//! disjoint or lightly overlapping ranges and `O(n^2)` in the worst case
//! (deeply nested ranges). The memtable bounds `n`
//! ([`super::RangeDelCollector`]); compaction keeps lists short with
//! [`FragmentedTombstones::collect_garbage`].

use std::collections::BTreeMap;

use super::gc::GcPolicy;
use super::{canonical_order, is_visible, RangeTombstone, Stamp};
use crate::error::Result;

/// One fragment in the index (internal form).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Frag {
    start: Box<[u8]>,
    end: Box<[u8]>,
    /// Range of `FragmentedTombstones::stamps` holding this fragment's stamps.
    lo: usize,
    hi: usize,
}

/// An immutable index over range tombstones: non-overlapping fragments, each with its stamps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FragmentedTombstones {
    frags: Vec<Frag>,
    stamps: Vec<Stamp>,
}

/// A borrowed fragment `[start, end)` and the stamps covering it, sorted descending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment<'a> {
    start: &'a [u8],
    end: &'a [u8],
    stamps: &'a [Stamp],
}

impl<'a> Fragment<'a> {
    /// First key of the fragment (inclusive).
    pub fn start(&self) -> &'a [u8] {
        self.start
    }

    /// End of the fragment (exclusive): an iterator skipping the fragment seeks here.
    pub fn end(&self) -> &'a [u8] {
        self.end
    }

    /// The distinct stamps covering the fragment, strictly descending (never empty).
    pub fn stamps(&self) -> &'a [Stamp] {
        self.stamps
    }

    /// True when `key` lies in `[start, end)`.
    pub fn contains(&self, key: &[u8]) -> bool {
        self.start <= key && key < self.end
    }

    /// The newest stamp here that a reader at (`read_ts`, `read_seq`) sees.
    ///
    /// Binary search past versions above `read_ts`, then the first stamp with
    /// `seq <= read_seq`; linear in the stamps of that version range only when
    /// seqs are out of version order.
    #[inline]
    pub fn covering(&self, read_ts: u64, read_seq: u64) -> Option<Stamp> {
        let from = self.stamps.partition_point(|&(v, _)| v > read_ts);
        self.stamps[from..]
            .iter()
            .find(|&&st| is_visible(st, read_ts, read_seq))
            .copied()
    }

    /// True when an entry stamped (`version`, `seq`) in this fragment is hidden from that reader.
    #[inline]
    pub fn hides(&self, version: u64, seq: u64, read_ts: u64, read_seq: u64) -> bool {
        self.covering(read_ts, read_seq)
            .is_some_and(|t| (version, seq) < t)
    }

    /// True when an entry stamped (`version`, `seq`) here is hidden from every reader that sees it.
    ///
    /// Compaction may drop such an entry (see [`GcPolicy::supersedes`]).
    pub fn hides_for_every_reader(&self, version: u64, seq: u64, policy: &GcPolicy) -> bool {
        let entry = (version, seq);
        self.stamps
            .iter()
            .take_while(|&&t| t > entry)
            .any(|&t| policy.supersedes(t, entry))
    }

    /// The stamps of this fragment that a newer stamp of it supersedes under `policy`.
    pub fn superseded(&self, policy: &GcPolicy) -> Vec<Stamp> {
        policy
            .superseded(self.stamps)
            .into_iter()
            .zip(self.stamps)
            .filter_map(|(drop, &st)| drop.then_some(st))
            .collect()
    }
}

impl FragmentedTombstones {
    /// Fragments `tombstones` (any order, overlaps allowed); an invalid range is an error.
    pub fn new<'t, I>(tombstones: I) -> Result<FragmentedTombstones>
    where
        I: IntoIterator<Item = &'t RangeTombstone>,
    {
        let list: Vec<&RangeTombstone> = tombstones.into_iter().collect();
        for t in &list {
            t.validate()?;
        }
        Ok(Self::from_valid(list))
    }

    /// Fragments tombstones already known to satisfy `start < end`.
    pub(crate) fn from_valid(mut by_start: Vec<&RangeTombstone>) -> FragmentedTombstones {
        let mut out = FragmentedTombstones::default();
        if by_start.is_empty() {
            return out;
        }
        let mut bounds: Vec<&[u8]> = by_start
            .iter()
            .flat_map(|t| [t.start.as_slice(), t.end.as_slice()])
            .collect();
        bounds.sort_unstable();
        bounds.dedup();
        by_start.sort_unstable_by(|a, b| a.start.cmp(&b.start));
        let mut by_end = by_start.clone();
        by_end.sort_unstable_by(|a, b| a.end.cmp(&b.end));

        // Sweep the boundaries, keeping the multiset of stamps of open tombstones.
        let mut open: BTreeMap<Stamp, usize> = BTreeMap::new();
        let (mut si, mut ei) = (0, 0);
        for (i, &b) in bounds.iter().enumerate() {
            while let Some(t) = by_end.get(ei).filter(|t| t.end.as_slice() == b) {
                if let Some(c) = open.get_mut(&t.stamp()) {
                    *c -= 1;
                    if *c == 0 {
                        open.remove(&t.stamp());
                    }
                }
                ei += 1;
            }
            while let Some(t) = by_start.get(si).filter(|t| t.start.as_slice() == b) {
                *open.entry(t.stamp()).or_insert(0) += 1;
                si += 1;
            }
            if let Some(&next) = bounds.get(i + 1) {
                if !open.is_empty() {
                    out.push(b, next, open.keys().rev().copied());
                }
            }
        }
        out
    }

    /// Appends fragment `[start, end)` (after every existing one), merging it into an equal neighbour.
    fn push<I>(&mut self, start: &[u8], end: &[u8], stamps: I)
    where
        I: Iterator<Item = Stamp> + Clone,
    {
        debug_assert!(start < end);
        if let Some(last) = self.frags.last_mut() {
            debug_assert!(*last.end <= *start);
            if *last.end == *start
                && self.stamps[last.lo..last.hi]
                    .iter()
                    .copied()
                    .eq(stamps.clone())
            {
                last.end = end.into();
                return;
            }
        }
        let lo = self.stamps.len();
        self.stamps.extend(stamps);
        let hi = self.stamps.len();
        if hi == lo {
            return;
        }
        self.frags.push(Frag {
            start: start.into(),
            end: end.into(),
            lo,
            hi,
        });
    }

    #[inline]
    fn view<'a>(&'a self, f: &'a Frag) -> Fragment<'a> {
        Fragment {
            start: &f.start,
            end: &f.end,
            stamps: &self.stamps[f.lo..f.hi],
        }
    }

    /// Number of fragments.
    pub fn len(&self) -> usize {
        self.frags.len()
    }

    /// True when no key is covered.
    pub fn is_empty(&self) -> bool {
        self.frags.is_empty()
    }

    /// Total number of stamps over all fragments (the index's size driver).
    pub fn stamp_count(&self) -> usize {
        self.stamps.len()
    }

    /// Bytes held by the index, for memory accounting.
    pub fn approximate_bytes(&self) -> usize {
        self.frags
            .iter()
            .map(|f| f.start.len() + f.end.len() + std::mem::size_of::<Frag>())
            .sum::<usize>()
            + self.stamps.len() * std::mem::size_of::<Stamp>()
    }

    /// Fragment number `i` in key order.
    pub fn get(&self, i: usize) -> Option<Fragment<'_>> {
        self.frags.get(i).map(|f| self.view(f))
    }

    /// The fragments in key order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = Fragment<'_>> + ExactSizeIterator + '_ {
        self.frags.iter().map(|f| self.view(f))
    }

    /// Index of the first fragment ending after `key` (it contains `key` or starts after it); `len()` if none.
    ///
    /// A forward iterator keeps this index and moves to `i + 1` once its key reaches `end`.
    pub fn seek(&self, key: &[u8]) -> usize {
        self.frags.partition_point(|f| &*f.end <= key)
    }

    /// Index of the last fragment starting at or before `key` (it contains `key` or ends before it).
    ///
    /// A backward iterator keeps this index and moves to `i - 1` once its key drops below `start`.
    pub fn seek_for_prev(&self, key: &[u8]) -> Option<usize> {
        self.frags
            .partition_point(|f| &*f.start <= key)
            .checked_sub(1)
    }

    /// The fragment containing `key`.
    #[inline]
    pub fn fragment_at(&self, key: &[u8]) -> Option<Fragment<'_>> {
        let i = self.seek_for_prev(key)?;
        let f = self.view(&self.frags[i]);
        (key < f.end).then_some(f)
    }

    /// The newest stamp covering `key` that a reader at (`read_ts`, `read_seq`) sees.
    ///
    /// An entry stamped `(v, s)` at `key` is hidden from that reader iff `(v, s)` is below it.
    #[inline]
    pub fn covering(&self, key: &[u8], read_ts: u64, read_seq: u64) -> Option<Stamp> {
        self.fragment_at(key)?.covering(read_ts, read_seq)
    }

    /// True when the entry (`key`, `version`, `seq`) is hidden from a reader at (`read_ts`, `read_seq`).
    #[inline]
    pub fn is_covered(
        &self,
        key: &[u8],
        version: u64,
        seq: u64,
        read_ts: u64,
        read_seq: u64,
    ) -> bool {
        self.covering(key, read_ts, read_seq)
            .is_some_and(|t| (version, seq) < t)
    }

    /// True when compaction may drop the entry (`key`, `version`, `seq`): no reader under `policy` sees it.
    pub fn hides_for_every_reader(
        &self,
        key: &[u8],
        version: u64,
        seq: u64,
        policy: &GcPolicy,
    ) -> bool {
        self.fragment_at(key)
            .is_some_and(|f| f.hides_for_every_reader(version, seq, policy))
    }

    /// The tombstones restricted to `[lo, hi)` (`None` = unbounded), in canonical order.
    ///
    /// Each stamp's maximal runs of touching fragments become one tombstone, so
    /// the result never has more tombstones than were fragmented. Compaction
    /// gives each output table the tombstones clipped to its key range.
    pub fn clip(&self, lo: Option<&[u8]>, hi: Option<&[u8]>) -> Vec<RangeTombstone> {
        let first = lo.map_or(0, |k| self.seek(k));
        let mut out = Vec::new();
        // Stamp -> start key of its run, for runs reaching `run_end`.
        let mut open: BTreeMap<Stamp, Vec<u8>> = BTreeMap::new();
        let mut run_end: Vec<u8> = Vec::new();
        for f in self.frags[first..].iter().map(|f| self.view(f)) {
            let start = match lo {
                Some(lo) if lo > f.start => lo,
                _ => f.start,
            };
            let end = match hi {
                Some(hi) if hi < f.end => hi,
                _ => f.end,
            };
            if start >= end {
                break; // at or past `hi`
            }
            let touching = run_end.as_slice() == start;
            let close: Vec<Stamp> = open
                .keys()
                .filter(|st| !touching || f.stamps.binary_search_by(|x| (*st).cmp(x)).is_err())
                .copied()
                .collect();
            for st in close {
                if let Some(run_start) = open.remove(&st) {
                    out.push(tombstone(run_start, run_end.clone(), st));
                }
            }
            for &st in f.stamps {
                open.entry(st).or_insert_with(|| start.to_vec());
            }
            run_end.clear();
            run_end.extend_from_slice(end);
        }
        for (st, run_start) in open {
            out.push(tombstone(run_start, run_end.clone(), st));
        }
        out.sort_unstable_by(canonical_order);
        out
    }

    /// Every tombstone the index represents, merged where touching, in canonical order.
    pub fn to_tombstones(&self) -> Vec<RangeTombstone> {
        self.clip(None, None)
    }

    /// One index over several (a read view's layers, a compaction's inputs), restricted to `[lo, hi)`.
    pub fn union_clipped<'a, I>(
        parts: I,
        lo: Option<&[u8]>,
        hi: Option<&[u8]>,
    ) -> FragmentedTombstones
    where
        I: IntoIterator<Item = &'a FragmentedTombstones>,
    {
        let all: Vec<RangeTombstone> = parts.into_iter().flat_map(|p| p.clip(lo, hi)).collect();
        Self::from_valid(all.iter().collect())
    }

    /// The index without the stamps compaction may drop under `policy`.
    ///
    /// Drops every stamp a newer stamp of its fragment supersedes; readers under
    /// `policy` get the same [`FragmentedTombstones::covering`] answer from the
    /// result. With `bottommost`, also drops stamps every reader sees: they hide
    /// only entries that compaction drops anyway ([`Self::hides_for_every_reader`]).
    /// `bottommost` is only safe when no entry those stamps hide exists outside
    /// the compaction's inputs: no deeper level overlaps, and (with explicit
    /// versions, where a newer seq can carry an older version) no upper level,
    /// memtable or future write holds an entry of that key range stamped below
    /// them.
    pub fn collect_garbage(&self, policy: &GcPolicy, bottommost: bool) -> FragmentedTombstones {
        let mut out = FragmentedTombstones::default();
        for f in self.iter() {
            let drop = policy.superseded(f.stamps);
            let keep: Vec<Stamp> = f
                .stamps
                .iter()
                .zip(drop)
                .filter(|&(&st, superseded)| {
                    let gone = superseded || (bottommost && policy.seen_by_every_reader(st));
                    !gone
                })
                .map(|(&st, _)| st)
                .collect();
            out.push(f.start, f.end, keep.into_iter());
        }
        out
    }
}

fn tombstone(start: Vec<u8>, end: Vec<u8>, (version, seq): Stamp) -> RangeTombstone {
    RangeTombstone {
        start,
        end,
        version,
        seq,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(s: &str, e: &str, v: u64, q: u64) -> RangeTombstone {
        RangeTombstone::new(s.as_bytes().to_vec(), e.as_bytes().to_vec(), v, q).unwrap()
    }

    fn frags(x: &FragmentedTombstones) -> Vec<(String, String, Vec<Stamp>)> {
        x.iter()
            .map(|f| {
                (
                    String::from_utf8_lossy(f.start()).into_owned(),
                    String::from_utf8_lossy(f.end()).into_owned(),
                    f.stamps().to_vec(),
                )
            })
            .collect()
    }

    fn fr(s: &str, e: &str, st: &[Stamp]) -> (String, String, Vec<Stamp>) {
        (s.to_string(), e.to_string(), st.to_vec())
    }

    #[test]
    fn overlapping_nested_adjacent() {
        // overlapping
        let x = FragmentedTombstones::new(&[t("a", "e", 1, 1), t("c", "g", 2, 2)]).unwrap();
        assert_eq!(
            frags(&x),
            vec![
                fr("a", "c", &[(1, 1)]),
                fr("c", "e", &[(2, 2), (1, 1)]),
                fr("e", "g", &[(2, 2)]),
            ]
        );
        // nested, newest inside
        let x = FragmentedTombstones::new(&[t("a", "z", 1, 1), t("m", "n", 3, 3)]).unwrap();
        assert_eq!(
            frags(&x),
            vec![
                fr("a", "m", &[(1, 1)]),
                fr("m", "n", &[(3, 3), (1, 1)]),
                fr("n", "z", &[(1, 1)]),
            ]
        );
        // adjacent with the same stamp merge; with different stamps they stay apart
        let x = FragmentedTombstones::new(&[t("c", "e", 1, 1), t("a", "c", 1, 1)]).unwrap();
        assert_eq!(frags(&x), vec![fr("a", "e", &[(1, 1)])]);
        let x = FragmentedTombstones::new(&[t("a", "c", 1, 1), t("c", "e", 2, 1)]).unwrap();
        assert_eq!(
            frags(&x),
            vec![fr("a", "c", &[(1, 1)]), fr("c", "e", &[(2, 1)])]
        );
        // a gap stays a gap; duplicates collapse
        let x =
            FragmentedTombstones::new(&[t("a", "b", 1, 1), t("d", "e", 1, 1), t("d", "e", 1, 1)])
                .unwrap();
        assert_eq!(
            frags(&x),
            vec![fr("a", "b", &[(1, 1)]), fr("d", "e", &[(1, 1)])]
        );
        assert_eq!(x.stamp_count(), 2);
        assert!(x.covering(b"c", 9, 9).is_none());
        // identical ranges with different stamps, same start different ends
        let x = FragmentedTombstones::new(&[t("a", "c", 1, 5), t("a", "b", 1, 7)]).unwrap();
        assert_eq!(
            frags(&x),
            vec![fr("a", "b", &[(1, 7), (1, 5)]), fr("b", "c", &[(1, 5)])]
        );
        // the empty key is a key; prefixes order before extensions
        let x = FragmentedTombstones::new(&[t("", "a", 1, 1), t("a", "a\0", 2, 2)]).unwrap();
        assert_eq!(x.covering(b"", 9, 9), Some((1, 1)));
        assert_eq!(x.covering(b"a", 9, 9), Some((2, 2)));
        assert_eq!(x.covering(b"a\0", 9, 9), None);
        // invalid input is rejected
        assert!(FragmentedTombstones::new(&[RangeTombstone {
            start: b"b".to_vec(),
            end: b"a".to_vec(),
            version: 1,
            seq: 1
        }])
        .is_err());
        assert!(FragmentedTombstones::new(&[]).unwrap().is_empty());
    }

    #[test]
    fn visibility_by_ts_and_seq() {
        // version 10 at seq 5, version 20 at seq 3 (versions out of apply order), version 15 at seq 9
        let x = FragmentedTombstones::new(&[
            t("a", "z", 10, 5),
            t("a", "z", 20, 3),
            t("k", "m", 15, 9),
        ])
        .unwrap();
        assert_eq!(x.covering(b"b", 9, 100), None, "below every version");
        assert_eq!(
            x.covering(b"b", 10, 4),
            None,
            "below every seq of version <= 10"
        );
        assert_eq!(x.covering(b"b", 10, 5), Some((10, 5)));
        assert_eq!(x.covering(b"b", 19, 100), Some((10, 5)));
        assert_eq!(x.covering(b"b", 20, 4), Some((20, 3)));
        assert_eq!(x.covering(b"b", 20, 2), None);
        assert_eq!(x.covering(b"l", 16, 9), Some((15, 9)));
        assert_eq!(x.covering(b"l", 16, 8), Some((10, 5)));
        assert_eq!(x.covering(b"l", 100, 100), Some((20, 3)));
        // entries: hidden iff below the covering stamp
        assert!(x.is_covered(b"l", 15, 8, 16, 9));
        assert!(!x.is_covered(b"l", 15, 9, 16, 9), "same stamp");
        assert!(
            !x.is_covered(b"l", 21, 0, 100, 100),
            "newer version than every tombstone"
        );
        assert!(
            x.is_covered(b"l", 16, 0, 100, 100),
            "(16, 0) is below (20, 3), the newest stamp this reader sees"
        );
        assert!(
            !x.is_covered(b"l", 16, 0, 19, 100),
            "this reader sees only (15, 9)"
        );
        assert!(
            x.is_covered(b"l", 14, 1000, 100, 100),
            "older version hidden whatever its seq"
        );
        assert!(!x.is_covered(b"z", 1, 1, 100, 100), "end is exclusive");
    }

    #[test]
    fn seek_and_iterate() {
        let x =
            FragmentedTombstones::new(&[t("b", "d", 1, 1), t("f", "h", 1, 1), t("c", "e", 2, 2)])
                .unwrap();
        // fragments: [b,c) [c,d) [d,e) [f,h)
        assert_eq!(x.len(), 4);
        assert_eq!(x.iter().next_back().map(|f| f.start()), Some(&b"f"[..]));
        assert_eq!(x.seek(b"a"), 0);
        assert_eq!(x.seek(b"b"), 0);
        assert_eq!(x.seek(b"c"), 1);
        assert_eq!(x.seek(b"e"), 3, "in the gap: the next fragment");
        assert_eq!(x.seek(b"h"), 4);
        assert_eq!(x.seek_for_prev(b"a"), None);
        assert_eq!(x.seek_for_prev(b"c"), Some(1));
        assert_eq!(
            x.seek_for_prev(b"e"),
            Some(2),
            "in the gap: the previous fragment"
        );
        assert_eq!(x.seek_for_prev(b"z"), Some(3));
        let f = x.fragment_at(b"cc").unwrap();
        assert_eq!((f.start(), f.end()), (&b"c"[..], &b"d"[..]));
        assert_eq!(f.stamps(), &[(2, 2), (1, 1)]);
        assert!(x.fragment_at(b"e").is_none());
        assert_eq!(x.get(3).map(|f| f.end()), Some(&b"h"[..]));
        assert!(x.get(4).is_none());
    }

    #[test]
    fn clip_cuts_and_merges() {
        let x = FragmentedTombstones::new(&[t("a", "m", 1, 1), t("f", "z", 2, 2)]).unwrap();
        assert_eq!(
            x.to_tombstones(),
            vec![t("a", "m", 1, 1), t("f", "z", 2, 2)],
            "runs rebuilt across fragments"
        );
        assert_eq!(
            x.clip(Some(b"c"), Some(b"h")),
            vec![t("c", "h", 1, 1), t("f", "h", 2, 2)]
        );
        assert_eq!(x.clip(Some(b"m"), None), vec![t("m", "z", 2, 2)]);
        assert_eq!(x.clip(None, Some(b"f")), vec![t("a", "f", 1, 1)]);
        assert_eq!(x.clip(Some(b"z"), None), vec![]);
        assert_eq!(x.clip(None, Some(b"a")), vec![]);
        assert_eq!(x.clip(Some(b"g"), Some(b"g")), vec![]);
        assert_eq!(x.clip(Some(b"h"), Some(b"c")), vec![]);
        // a gap splits a stamp's run
        let x = FragmentedTombstones::new(&[t("a", "c", 1, 1), t("d", "f", 1, 1)]).unwrap();
        assert_eq!(
            x.clip(Some(b"b"), Some(b"e")),
            vec![t("b", "c", 1, 1), t("d", "e", 1, 1)]
        );
    }

    #[test]
    fn union_clipped_equals_fragmenting_everything() {
        let a = FragmentedTombstones::new(&[t("a", "m", 0, 3), t("f", "z", 0, 9)]).unwrap();
        let b = FragmentedTombstones::new(&[t("c", "h", 0, 5)]).unwrap();
        let all =
            FragmentedTombstones::new(&[t("a", "m", 0, 3), t("f", "z", 0, 9), t("c", "h", 0, 5)])
                .unwrap();
        assert_eq!(
            FragmentedTombstones::union_clipped([&a, &b], None, None),
            all
        );
        let clipped = FragmentedTombstones::union_clipped([&a, &b], Some(b"d"), Some(b"g"));
        assert_eq!(
            clipped,
            FragmentedTombstones::new(&all.clip(Some(b"d"), Some(b"g"))).unwrap()
        );
        assert!(FragmentedTombstones::union_clipped([], None, None).is_empty());
    }

    #[test]
    fn garbage_collection_keeps_answers() {
        // snapshots at 10: stripe 0 = seq <= 10
        let p = GcPolicy::new([10], 50);
        let x = FragmentedTombstones::new(&[
            t("a", "z", 40, 5),  // every reader sees it
            t("a", "z", 30, 8),  // superseded by (40, 5)
            t("m", "n", 60, 20), // above the safe point
            t("m", "n", 45, 30), // newer than (40, 5) but in a younger stripe: both kept
        ])
        .unwrap();
        let g = x.collect_garbage(&p, false);
        assert_eq!(
            frags(&g),
            vec![
                fr("a", "m", &[(40, 5)]),
                fr("m", "n", &[(60, 20), (45, 30), (40, 5)]),
                fr("n", "z", &[(40, 5)]),
            ]
        );
        let f = x.fragment_at(b"b").unwrap();
        assert_eq!(f.superseded(&p), vec![(30, 8)]);
        let b = x.collect_garbage(&p, true);
        assert_eq!(
            frags(&b),
            vec![fr("m", "n", &[(60, 20), (45, 30)])],
            "at the bottom the all-seen stamp goes"
        );
        assert!(x.hides_for_every_reader(b"b", 39, 100, &p));
        assert!(!x.hides_for_every_reader(b"b", 40, 5, &p));
        assert!(!x.hides_for_every_reader(b"z", 1, 1, &p));
    }

    // ---- property tests against a naive model -------------------------------------------

    fn key() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(b'a'..=b'c', 0..3)
    }

    fn tombstones() -> impl Strategy<Value = Vec<RangeTombstone>> {
        proptest::collection::vec((key(), key(), 0u64..6, 0u64..10), 0..10).prop_map(|v| {
            v.into_iter()
                .filter_map(|(a, b, ver, seq)| {
                    let (s, e) = if a < b { (a, b) } else { (b, a) };
                    RangeTombstone::new(s, e, ver, seq).ok()
                })
                .collect()
        })
    }

    /// Every key of the test key space (alphabet a..c, length < 3) plus some outside it.
    fn all_keys() -> Vec<Vec<u8>> {
        let mut keys = vec![Vec::new()];
        for a in b'a'..=b'c' {
            keys.push(vec![a]);
            for b in b'a'..=b'c' {
                keys.push(vec![a, b]);
                keys.push(vec![a, b, b'a']);
            }
            keys.push(vec![a, 0]);
        }
        keys.push(vec![b'd']);
        keys
    }

    fn model_covering(ts: &[RangeTombstone], key: &[u8], rt: u64, rs: u64) -> Option<Stamp> {
        ts.iter()
            .filter(|t| t.contains(key) && is_visible(t.stamp(), rt, rs))
            .map(|t| t.stamp())
            .max()
    }

    fn check_canonical(x: &FragmentedTombstones) -> std::result::Result<(), TestCaseError> {
        for (i, f) in x.iter().enumerate() {
            prop_assert!(f.start() < f.end());
            prop_assert!(!f.stamps().is_empty());
            prop_assert!(f.stamps().windows(2).all(|w| w[0] > w[1]));
            if let Some(p) = i.checked_sub(1).and_then(|p| x.get(p)) {
                prop_assert!(p.end() <= f.start());
                prop_assert!(p.end() != f.start() || p.stamps() != f.stamps());
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(160))]

        #[test]
        fn covering_matches_naive_model(ts in tombstones()) {
            let x = FragmentedTombstones::new(&ts).unwrap();
            check_canonical(&x)?;
            for k in all_keys() {
                for rt in 0..7 {
                    for rs in 0..11 {
                        let want = model_covering(&ts, &k, rt, rs);
                        prop_assert_eq!(x.covering(&k, rt, rs), want, "key {:?} at ({}, {})", k, rt, rs);
                        for v in 0..7 {
                            for s in [0, 4, 10] {
                                let naive = ts.iter().any(|t| {
                                    t.hides(&k, v, s) && is_visible(t.stamp(), rt, rs)
                                });
                                prop_assert_eq!(x.is_covered(&k, v, s, rt, rs), naive);
                            }
                        }
                    }
                }
                // seek / seek_for_prev against a scan
                let seek = x.iter().position(|f| f.end() > k.as_slice()).unwrap_or(x.len());
                prop_assert_eq!(x.seek(&k), seek);
                let prev = x.iter().rposition(|f| f.start() <= k.as_slice());
                prop_assert_eq!(x.seek_for_prev(&k), prev);
                let at = x.iter().find(|f| f.contains(&k));
                prop_assert_eq!(x.fragment_at(&k), at);
            }
            // rebuilding from the merged tombstones gives the same index, with no more tombstones
            let back = x.to_tombstones();
            prop_assert!(back.len() <= ts.len());
            prop_assert_eq!(FragmentedTombstones::new(&back).unwrap(), x.clone());
            // and input order does not matter
            let mut rev = ts.clone();
            rev.reverse();
            prop_assert_eq!(FragmentedTombstones::new(&rev).unwrap(), x);
        }

        #[test]
        fn clip_restricts_to_the_range(ts in tombstones(), lo in proptest::option::of(key()), hi in proptest::option::of(key())) {
            let x = FragmentedTombstones::new(&ts).unwrap();
            let clipped = x.clip(lo.as_deref(), hi.as_deref());
            prop_assert!(clipped.len() <= ts.len());
            prop_assert!(clipped.iter().all(|t| t.validate().is_ok()));
            prop_assert!(clipped.windows(2).all(|w| canonical_order(&w[0], &w[1]).is_lt()));
            let c = FragmentedTombstones::new(&clipped).unwrap();
            for k in all_keys() {
                let inside = lo.as_deref().is_none_or(|l| l <= k.as_slice())
                    && hi.as_deref().is_none_or(|h| k.as_slice() < h);
                for rt in 0..7 {
                    for rs in [0, 3, 6, 9] {
                        let want = if inside { x.covering(&k, rt, rs) } else { None };
                        prop_assert_eq!(c.covering(&k, rt, rs), want);
                    }
                }
            }
        }

        #[test]
        fn garbage_collection_matches_readers(
            ts in tombstones(),
            snaps in proptest::collection::vec(0u64..10, 0..3),
            sp in 0u64..6,
        ) {
            let p = GcPolicy::new(snaps, sp);
            let x = FragmentedTombstones::new(&ts).unwrap();
            let g = x.collect_garbage(&p, false);
            let b = x.collect_garbage(&p, true);
            check_canonical(&g)?;
            check_canonical(&b)?;
            let mut seqs: Vec<u64> = p.snapshots().to_vec();
            seqs.push(u64::MAX);
            for k in all_keys() {
                for rt in sp..8 {
                    for &rs in &seqs {
                        // Dropping superseded stamps changes no allowed reader's answer.
                        prop_assert_eq!(g.covering(&k, rt, rs), x.covering(&k, rt, rs));
                        for v in 0..7 {
                            for s in 0..11 {
                                let hidden = x.is_covered(&k, v, s, rt, rs);
                                let droppable = x.hides_for_every_reader(&k, v, s, &p);
                                // An entry compaction drops is invisible to every reader that sees it.
                                if droppable && is_visible((v, s), rt, rs) {
                                    prop_assert!(hidden);
                                }
                                // At the bottom, whatever the index stops hiding, compaction drops.
                                if hidden && is_visible((v, s), rt, rs) && !b.is_covered(&k, v, s, rt, rs) {
                                    prop_assert!(droppable, "({}, {}) at {:?} exposed", v, s, k);
                                }
                            }
                        }
                    }
                }
            }
            // Drop decision per entry matches the brute force over the allowed readers.
            for k in all_keys() {
                for v in 0..7 {
                    for s in 0..11 {
                        let mut model = true;
                        for rt in sp..8 {
                            for &rs in &seqs {
                                if is_visible((v, s), rt, rs) && !x.is_covered(&k, v, s, rt, rs) {
                                    model = false;
                                }
                            }
                        }
                        prop_assert_eq!(x.hides_for_every_reader(&k, v, s, &p), model);
                    }
                }
            }
        }
    }
}

//! What compaction may drop: the readers that can still exist, and which stamps they cannot miss.
//!
//! # The readers
//!
//! A compaction runs under a GC safe point `sp` and a set of live snapshot
//! sequence numbers. Every reader that exists now or later reads at some
//! `(ts, seq)` with `ts >= sp` and `seq` either one of the snapshots or
//! "infinity" (a new reader sees every sequence number already written).
//!
//! Snapshots cut sequence numbers into *stripes*: `stripe(s)` is the index of
//! the smallest snapshot `>= s` (the number of snapshots when there is none),
//! so stripe 0 is the oldest. A reader at snapshot `snaps[j]` (or infinity,
//! `j = len`) sees exactly the sequence numbers whose stripe is `<= j`.
//!
//! # The rule
//!
//! Take two stamps `F > E` (F sorts first). F *supersedes* E when every
//! reader that sees E also sees F: such a reader then gets a covering stamp at
//! least F, so E changes nothing for it, and readers that do not see E are not
//! affected by E at all. Visibility is monotone in `(ts, seq)`, and the readers
//! that see E have `ts >= max(sp, E.version)` and `seq >= snaps[stripe(E.seq)]`
//! (or infinity), so the weakest of them is exactly that pair. F is visible to
//! it iff
//!
//! ```text
//! F.version <= max(sp, E.version)   and   stripe(F.seq) <= stripe(E.seq)
//! ```
//!
//! Because `F > E` implies `F.version >= E.version`, the first condition is
//! `F.version <= sp` or `F.version == E.version`. (The usual statement, "F is at
//! or below the safe point and in the same or an older stripe", is the special
//! case that forgets the equal-version one: F and E of the same version in the
//! same stripe always agree for every reader.) The condition is necessary as
//! well: if the weakest reader of E does not see F, F does nothing for it.
//!
//! The same rule decides point entries: an entry X at a key whose fragment
//! holds a stamp T with `T` superseding `X` is hidden from every reader that can
//! see X, so compaction may drop X.
//!
//! At the bottom of the tree a stamp E that *every* reader sees
//! (`E.version <= sp` and `stripe(E.seq) == 0`) hides everything below it from
//! everybody; once compaction has dropped those entries, E can go too (see
//! `FragmentedTombstones::collect_garbage` for the precondition).

use super::Stamp;

/// The readers compaction must preserve: a GC safe point and the live snapshot sequence numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcPolicy {
    snapshots: Vec<u64>,
    safe_point: u64,
}

impl GcPolicy {
    /// A policy for readers at `ts >= safe_point` and seq in `snapshots` (any order) or infinity.
    pub fn new(snapshots: impl IntoIterator<Item = u64>, safe_point: u64) -> GcPolicy {
        let mut snapshots: Vec<u64> = snapshots.into_iter().collect();
        snapshots.sort_unstable();
        snapshots.dedup();
        GcPolicy {
            snapshots,
            safe_point,
        }
    }

    /// The live snapshot sequence numbers, ascending and distinct.
    pub fn snapshots(&self) -> &[u64] {
        &self.snapshots
    }

    /// The GC safe point: no reader reads at a version below it.
    pub fn safe_point(&self) -> u64 {
        self.safe_point
    }

    /// Index of the smallest snapshot `>= seq`; the snapshot count when none is.
    #[inline]
    pub fn stripe(&self, seq: u64) -> usize {
        self.snapshots.partition_point(|&s| s < seq)
    }

    /// True when every reader that sees `older` also sees `newer` and `newer` sorts first.
    ///
    /// For a tombstone stamp `older` this means it can be dropped from a fragment
    /// holding `newer`; for an entry stamp it means a tombstone `newer` covering
    /// the entry's key hides it from every reader, so the entry can be dropped.
    #[inline]
    pub fn supersedes(&self, newer: Stamp, older: Stamp) -> bool {
        newer > older
            && newer.0 <= self.safe_point.max(older.0)
            && self.stripe(newer.1) <= self.stripe(older.1)
    }

    /// True when every reader sees `stamp` (at or below the safe point, in the oldest stripe).
    #[inline]
    pub fn seen_by_every_reader(&self, stamp: Stamp) -> bool {
        stamp.0 <= self.safe_point && self.stripe(stamp.1) == 0
    }

    /// For stamps sorted strictly descending: which ones a newer stamp of the list supersedes.
    ///
    /// One pass: the smallest stripe among earlier stamps at or below the safe
    /// point, and among earlier stamps of the current version.
    pub(crate) fn superseded(&self, stamps: &[Stamp]) -> Vec<bool> {
        let mut out = Vec::with_capacity(stamps.len());
        let mut best_below_sp = usize::MAX;
        let mut version = None;
        let mut best_same_version = usize::MAX;
        for &(v, s) in stamps {
            let stripe = self.stripe(s);
            if version != Some(v) {
                version = Some(v);
                best_same_version = usize::MAX;
            }
            out.push(best_below_sp.min(best_same_version) <= stripe);
            if v <= self.safe_point {
                best_below_sp = best_below_sp.min(stripe);
            }
            best_same_version = best_same_version.min(stripe);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The readers a brute force must try: every ts where visibility can change, every seq class.
    fn readers(p: &GcPolicy, max_version: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        for ts in p.safe_point()..=max_version.max(p.safe_point()) + 1 {
            for &s in p.snapshots() {
                out.push((ts, s));
            }
            out.push((ts, u64::MAX));
        }
        out
    }

    fn visible(st: Stamp, r: (u64, u64)) -> bool {
        st.0 <= r.0 && st.1 <= r.1
    }

    /// Brute force: every reader that sees `older` sees some stamp of `others` above it.
    fn model_superseded(p: &GcPolicy, others: &[Stamp], older: Stamp, max_v: u64) -> bool {
        readers(p, max_v)
            .into_iter()
            .all(|r| !visible(older, r) || others.iter().any(|&f| f > older && visible(f, r)))
    }

    #[test]
    fn stripes() {
        let p = GcPolicy::new([30, 10, 20, 10], 0);
        assert_eq!(p.snapshots(), &[10, 20, 30]);
        assert_eq!(p.stripe(0), 0);
        assert_eq!(p.stripe(10), 0);
        assert_eq!(p.stripe(11), 1);
        assert_eq!(p.stripe(30), 2);
        assert_eq!(p.stripe(31), 3);
        assert_eq!(GcPolicy::new([], 5).stripe(u64::MAX), 0);
    }

    #[test]
    fn equal_version_in_one_stripe_supersedes_above_the_safe_point() {
        // The textbook rule (F.version <= safe point) misses this; every reader agrees.
        let p = GcPolicy::new([100], 5);
        assert!(p.supersedes((8, 20), (8, 10)));
        assert!(model_superseded(&p, &[(8, 20)], (8, 10), 9));
        // A different version above the safe point: a reader at ts 7 sees only E.
        assert!(!p.supersedes((8, 20), (7, 10)));
        assert!(!model_superseded(&p, &[(8, 20)], (7, 10), 9));
        // Same version, but a snapshot between the seqs: the snapshot reader sees only E.
        let p = GcPolicy::new([15], 5);
        assert!(!p.supersedes((8, 20), (8, 10)));
        assert!(!model_superseded(&p, &[(8, 20)], (8, 10), 9));
        // Older stripe, newer version at the safe point: supersedes.
        assert!(p.supersedes((5, 3), (4, 40)));
        assert!(p.seen_by_every_reader((5, 3)));
        assert!(!p.seen_by_every_reader((5, 16)));
        assert!(!p.seen_by_every_reader((6, 3)));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// `supersedes` and `superseded` agree with trying every reader.
        #[test]
        fn rule_matches_brute_force(
            stamps in proptest::collection::btree_set((0u64..6, 0u64..12), 1..8),
            snaps in proptest::collection::vec(0u64..12, 0..4),
            sp in 0u64..7,
            entry in (0u64..7, 0u64..13),
        ) {
            let p = GcPolicy::new(snaps, sp);
            let desc: Vec<Stamp> = stamps.iter().rev().copied().collect();
            let max_v = 7;
            let flags = p.superseded(&desc);
            for (i, &e) in desc.iter().enumerate() {
                let model = model_superseded(&p, &desc, e, max_v);
                prop_assert_eq!(flags[i], model, "stamp {:?} in {:?} under {:?}", e, desc, p);
                for &f in &desc {
                    prop_assert_eq!(p.supersedes(f, e), model_superseded(&p, &[f], e, max_v));
                }
                let every = readers(&p, max_v).into_iter().all(|r| visible(e, r));
                prop_assert_eq!(p.seen_by_every_reader(e), every);
            }
            // Point entries: hidden from every reader that sees them iff some stamp supersedes.
            let rule = desc.iter().any(|&t| p.supersedes(t, entry));
            prop_assert_eq!(rule, model_superseded(&p, &desc, entry, max_v));
        }
    }
}

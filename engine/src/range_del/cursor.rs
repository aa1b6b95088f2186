//! A cursor over a [`FragmentedTombstones`] for one reader, for keys met in (mostly) sorted order.
//!
//! Iterators and compaction ask "which stamp covers this key" for every entry
//! they pass. Keys arrive in ascending (forward) or descending (reverse)
//! order, so the cursor remembers the fragment it found last and the answer
//! for it: the next key costs a comparison or a step to a neighbouring
//! fragment, and a binary search only after a jump. Any key order is correct.

use std::sync::Arc;

use super::{Fragment, FragmentedTombstones, Stamp};

/// Neighbouring fragments tried before falling back to a binary search.
const STEPS: usize = 2;

/// Finds the fragment and covering stamp of keys for a reader at a fixed (`read_ts`, `read_seq`).
#[derive(Debug, Clone)]
pub struct RangeDelCursor {
    index: Arc<FragmentedTombstones>,
    read_ts: u64,
    read_seq: u64,
    /// The fragment found last (any valid index when the index is not empty).
    at: usize,
    /// The stamp `index[at]` shows this reader, if computed: `(at, stamp)`.
    cached: Option<(usize, Option<Stamp>)>,
}

impl RangeDelCursor {
    /// A cursor over `index` for a reader at (`read_ts`, `read_seq`).
    pub fn new(index: Arc<FragmentedTombstones>, read_ts: u64, read_seq: u64) -> RangeDelCursor {
        RangeDelCursor {
            index,
            read_ts,
            read_seq,
            at: 0,
            cached: None,
        }
    }

    /// The index this cursor walks.
    pub fn index(&self) -> &Arc<FragmentedTombstones> {
        &self.index
    }

    /// Position of the fragment containing `key`, moving from the last one found.
    fn locate(&mut self, key: &[u8]) -> Option<usize> {
        let n = self.index.len();
        if n == 0 {
            return None;
        }
        let mut i = self.at.min(n - 1);
        let index: &FragmentedTombstones = &self.index;
        let frag = |i: usize| index.get(i).expect("index in range");
        for _ in 0..=STEPS {
            let f = frag(i);
            if key < f.start() {
                match i.checked_sub(1) {
                    // In the gap before fragment i.
                    Some(p) if frag(p).end() <= key => {
                        self.at = i;
                        return None;
                    }
                    Some(p) => i = p,
                    None => {
                        self.at = 0;
                        return None;
                    }
                }
            } else if key >= f.end() {
                if i + 1 == n || key < frag(i + 1).start() {
                    // In the gap after fragment i.
                    self.at = i;
                    return None;
                }
                i += 1;
            } else {
                self.at = i;
                return Some(i);
            }
        }
        // A jump: binary search.
        let i = index.seek(key);
        self.at = i.min(n - 1);
        (i < n && frag(i).contains(key)).then_some(i)
    }

    /// The fragment containing `key`, if any.
    pub fn fragment(&mut self, key: &[u8]) -> Option<Fragment<'_>> {
        let i = self.locate(key)?;
        self.index.get(i)
    }

    /// The newest stamp covering `key` that this cursor's reader sees.
    #[inline]
    pub fn covering(&mut self, key: &[u8]) -> Option<Stamp> {
        let i = self.locate(key)?;
        if let Some((at, stamp)) = self.cached {
            if at == i {
                return stamp;
            }
        }
        let stamp = self
            .index
            .get(i)
            .and_then(|f| f.covering(self.read_ts, self.read_seq));
        self.cached = Some((i, stamp));
        stamp
    }

    /// True when this reader cannot see the entry (`key`, `entry`) because a tombstone hides it.
    #[inline]
    pub fn hides(&mut self, key: &[u8], entry: Stamp) -> bool {
        self.covering(key).is_some_and(|t| entry < t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::range_del::RangeTombstone;
    use proptest::prelude::*;

    fn t(s: &str, e: &str, v: u64, q: u64) -> RangeTombstone {
        RangeTombstone::new(s.as_bytes().to_vec(), e.as_bytes().to_vec(), v, q).unwrap()
    }

    #[test]
    fn walks_both_ways_and_jumps() {
        let x = FragmentedTombstones::new(&[
            t("b", "d", 0, 5),
            t("f", "h", 0, 7),
            t("c", "e", 0, 9),
            t("x", "y", 0, 3),
        ])
        .unwrap();
        let mut c = RangeDelCursor::new(Arc::new(x.clone()), u64::MAX, 8);
        assert_eq!(c.covering(b"a"), None);
        assert_eq!(c.covering(b"b"), Some((0, 5)));
        assert_eq!(c.covering(b"c"), Some((0, 5)), "(0, 9) is after the reader");
        assert_eq!(c.covering(b"dd"), None, "[d, e) only has (0, 9)");
        assert_eq!(c.covering(b"ee"), None, "gap");
        assert_eq!(c.covering(b"g"), Some((0, 7)));
        assert_eq!(c.covering(b"xa"), Some((0, 3)), "jump");
        assert_eq!(c.covering(b"z"), None);
        assert_eq!(c.covering(b"bb"), Some((0, 5)), "jump back");
        assert_eq!(c.covering(b"a"), None);
        assert!(c.hides(b"g", (0, 6)));
        assert!(!c.hides(b"g", (0, 7)));
        assert_eq!(c.fragment(b"g").map(|f| f.start()), Some(&b"f"[..]));
        let mut empty = RangeDelCursor::new(Arc::default(), u64::MAX, u64::MAX);
        assert_eq!(empty.covering(b"a"), None);
        assert!(empty.fragment(b"a").is_none());
    }

    proptest! {
        #[test]
        fn agrees_with_the_index_in_any_key_order(
            ts in proptest::collection::vec((0u8..20, 1u8..6, 0u64..10), 0..12),
            keys in proptest::collection::vec(0u8..26, 0..60),
            seq in 0u64..12,
        ) {
            let ts: Vec<RangeTombstone> = ts
                .into_iter()
                .map(|(s, len, q)| RangeTombstone::new(vec![b'a' + s], vec![b'a' + s + len], 0, q).unwrap())
                .collect();
            let x = Arc::new(FragmentedTombstones::new(&ts).unwrap());
            let mut c = RangeDelCursor::new(x.clone(), u64::MAX, seq);
            let mut sorted = keys.clone();
            sorted.sort_unstable();
            let mut rev = sorted.clone();
            rev.reverse();
            for k in keys.iter().chain(&sorted).chain(&rev) {
                let key = [b'a' + k];
                prop_assert_eq!(c.covering(&key), x.covering(&key, u64::MAX, seq));
                prop_assert_eq!(c.fragment(&key), x.fragment_at(&key));
            }
        }
    }
}

//! Range tombstones: deletes of a logical key range `[start, end)` as of a (version, seq) stamp.
//!
//! Entries are identified by (logical key, version, seq) and ordered logical
//! key ascending, then version descending, then seq descending. A reader at
//! `(read_ts, read_seq)` sees a stamp `(v, s)` iff `v <= read_ts && s <= read_seq`.
//! A range tombstone with stamp `T` hides, for a reader that sees it, every
//! entry in its range whose stamp is `< T` (tuples compare lexicographically,
//! version first), exactly like a point tombstone hides everything after it.
//!
//! Pieces:
//! - [`RangeTombstone`]: one tombstone, validated (`start < end`).
//! - [`FragmentedTombstones`]: an immutable index over any set of tombstones,
//!   cut into non-overlapping fragments; answers "which tombstone stamp covers
//!   this key for this reader" by binary search, and serves iterators, flush
//!   (`to_tombstones`) and compaction (`clip`, `collect_garbage`).
//! - [`GcPolicy`]: the compaction rule for dropping stamps and entries that no
//!   reader at or above the GC safe point can tell apart from their absence.
//! - [`RangeDelCollector`]: the memtable side list (bounded, thread-safe).
//! - [`encode_block`] / [`decode_block`]: the SST meta block (`docs/format.md`,
//!   "Range tombstones").
//!
//! - [`RangeDelCursor`]: the per-reader walk over an index that iterators and
//!   compaction use (amortised O(1) per key in key order).
//!
//! Logical keys are opaque byte strings compared bytewise; they already carry
//! the namespace / column-family prefix.
//!
//! # How the engine stamps range deletes
//!
//! `Db::delete_range` is *physical*: it removes every entry of the range that
//! was written before it (lower sequence number), whatever its version, for
//! readers whose sequence number is at or after it. The engine gets this from
//! the (version, seq) machinery by giving every range tombstone version 0
//! ([`ENGINE_VERSION`]) and asking about point entries as `(0, seq)`
//! ([`entry_stamp`]): an entry is hidden iff `entry.seq < tombstone.seq` and
//! the reader's sequence is at or past `tombstone.seq`; the read timestamp
//! plays no part (version 0 is at or below every timestamp), and [`GcPolicy`]
//! reduces to the snapshot stripes. Tables refuse tombstones of any other
//! version, so the stamp's meaning cannot change under a reader.
//!
//! # Table bounds
//!
//! A table holding a tombstone `[start, end)` reports a key range covering it:
//! its smallest internal key is at most [`smallest_bound`]`(start)`, its
//! largest at least [`largest_bound`]`(end)`. `end` is exclusive, so the bound
//! is the *exclusive sentinel* `first_key(end)` (it sorts before every real
//! entry of `end`; the table's logical range then names `end` although it
//! holds nothing there, which only makes overlap checks conservative), except
//! when `end` is `k || 0x00` for some non-empty `k`: then the last key covered
//! is exactly `k` and the bound is `last_key(k)`. Compaction cuts tombstones
//! between two outputs at `last || 0x00` (`last` the first output's last key),
//! so outputs of one level never share a logical boundary key.

mod block;
mod collector;
mod cursor;
mod fragmented;
mod gc;

pub use block::{decode_block, encode_block};
pub use collector::{RangeDelCollector, DEFAULT_MAX_RANGE_TOMBSTONES};
pub use cursor::RangeDelCursor;
pub use fragmented::{Fragment, FragmentedTombstones};
pub use gc::GcPolicy;

use crate::error::{Error, Result};
use crate::key::{first_key, last_key};

/// The version of every range tombstone the engine writes (see the module docs).
pub const ENGINE_VERSION: u64 = 0;

/// The stamp the engine compares a point entry of sequence `seq` with (see the module docs).
#[inline]
pub fn entry_stamp(seq: u64) -> Stamp {
    (ENGINE_VERSION, seq)
}

/// The internal key a table's smallest key must not exceed when it holds a tombstone from `start`.
pub fn smallest_bound(start: &[u8]) -> Vec<u8> {
    first_key(start)
}

/// The internal key a table's largest key must reach when it holds a tombstone ending at `end`.
pub fn largest_bound(end: &[u8]) -> Vec<u8> {
    match end.split_last() {
        Some((0, covered)) if !covered.is_empty() => last_key(covered),
        _ => first_key(end),
    }
}

/// The smallest key after `key`: `key || 0x00` (where compaction cuts tombstones between outputs).
pub fn successor(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 1);
    out.extend_from_slice(key);
    out.push(0);
    out
}

/// A `(version, seq)` pair; tuples order lexicographically, which is the entry order reversed.
pub type Stamp = (u64, u64);

/// True when a reader at (`read_ts`, `read_seq`) sees something stamped `stamp`.
#[inline]
pub fn is_visible(stamp: Stamp, read_ts: u64, read_seq: u64) -> bool {
    stamp.0 <= read_ts && stamp.1 <= read_seq
}

/// Deletes the logical keys in `[start, end)` for entries stamped below `(version, seq)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RangeTombstone {
    /// First logical key deleted (inclusive).
    pub start: Vec<u8>,
    /// First logical key after the range (exclusive); must sort after `start`.
    pub end: Vec<u8>,
    /// Version of the delete: readers with `read_ts >= version` may see it.
    pub version: u64,
    /// Sequence number of the delete: readers with `read_seq >= seq` may see it.
    pub seq: u64,
}

impl RangeTombstone {
    /// Builds a tombstone, rejecting an empty or inverted range (`start >= end`).
    pub fn new(
        start: impl Into<Vec<u8>>,
        end: impl Into<Vec<u8>>,
        version: u64,
        seq: u64,
    ) -> Result<RangeTombstone> {
        let t = RangeTombstone {
            start: start.into(),
            end: end.into(),
            version,
            seq,
        };
        t.validate()?;
        Ok(t)
    }

    /// Checks `start < end`; an empty or inverted range is `Error::InvalidArgument`.
    pub fn validate(&self) -> Result<()> {
        if self.start < self.end {
            Ok(())
        } else {
            Err(Error::InvalidArgument(format!(
                "range tombstone start {} must sort before its end {}",
                show_key(&self.start),
                show_key(&self.end)
            )))
        }
    }

    /// The tombstone's `(version, seq)`.
    #[inline]
    pub fn stamp(&self) -> Stamp {
        (self.version, self.seq)
    }

    /// True when `key` lies in `[start, end)`.
    #[inline]
    pub fn contains(&self, key: &[u8]) -> bool {
        self.start.as_slice() <= key && key < self.end.as_slice()
    }

    /// True when this tombstone hides the entry (`key`, `version`, `seq`) from readers that see it.
    #[inline]
    pub fn hides(&self, key: &[u8], version: u64, seq: u64) -> bool {
        self.contains(key) && (version, seq) < self.stamp()
    }

    /// Bytes this tombstone holds (keys plus the stamp), for memory accounting.
    pub fn approximate_bytes(&self) -> usize {
        self.start.len() + self.end.len() + 16
    }
}

/// The canonical order of tombstone lists: start ascending, newest stamp first, then end.
pub(crate) fn canonical_order(a: &RangeTombstone, b: &RangeTombstone) -> std::cmp::Ordering {
    a.start
        .cmp(&b.start)
        .then(b.stamp().cmp(&a.stamp()))
        .then(a.end.cmp(&b.end))
}

/// A key for error messages: escaped, at most 64 bytes.
pub(crate) fn show_key(key: &[u8]) -> String {
    const MAX: usize = 64;
    let shown = &key[..key.len().min(MAX)];
    let more = if key.len() > MAX { "..." } else { "" };
    format!("\"{}\"{more}", shown.escape_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_rejects_empty_and_inverted_ranges() {
        assert!(RangeTombstone::new(b"a".to_vec(), b"b".to_vec(), 1, 1).is_ok());
        assert!(RangeTombstone::new(Vec::new(), b"\0".to_vec(), 1, 1).is_ok());
        for (s, e) in [
            (&b"a"[..], &b"a"[..]),
            (b"b", b"a"),
            (b"ab", b"a"),
            (b"", b""),
        ] {
            let err = RangeTombstone::new(s.to_vec(), e.to_vec(), 1, 1).unwrap_err();
            assert!(
                matches!(&err, Error::InvalidArgument(m) if m.contains("must sort before")),
                "{err}"
            );
        }
        let long = RangeTombstone {
            start: vec![b'z'; 100],
            end: b"a".to_vec(),
            version: 0,
            seq: 0,
        };
        let msg = long.validate().unwrap_err().to_string();
        assert!(msg.contains("...") && msg.len() < 200, "{msg}");
    }

    #[test]
    fn table_bounds_cover_exactly_the_range() {
        use crate::key::{compare_internal, logical_key, make_internal_key};
        let entry = |k: &[u8]| make_internal_key(k, 7, 7, 1);
        // Exclusive sentinel: before every entry of `end`, after every entry below it.
        let hi = largest_bound(b"kc");
        assert_eq!(logical_key(&hi), b"kc");
        assert!(compare_internal(&hi, &entry(b"kc")).is_lt());
        assert!(compare_internal(&hi, &entry(b"kb\xff\xff")).is_gt());
        // `k || 0`: the last covered key is exactly `k`.
        let hi = largest_bound(&successor(b"kb"));
        assert_eq!(logical_key(&hi), b"kb");
        assert!(compare_internal(&hi, &entry(b"kb")).is_gt());
        assert!(compare_internal(&hi, &entry(b"kb\0")).is_lt());
        assert_eq!(
            logical_key(&largest_bound(b"\0")),
            b"\0",
            "nothing before a lone zero byte"
        );
        let lo = smallest_bound(b"kb");
        assert!(compare_internal(&lo, &entry(b"kb")).is_lt());
        assert!(compare_internal(&lo, &entry(b"ka\xff")).is_gt());
        assert_eq!(entry_stamp(9), (0, 9));
    }

    #[test]
    fn hides_is_strictly_below_the_stamp() {
        let t = RangeTombstone::new(b"b".to_vec(), b"d".to_vec(), 5, 10).unwrap();
        assert!(t.hides(b"b", 5, 9));
        assert!(
            t.hides(b"c", 4, 100),
            "older version, newer seq: still below"
        );
        assert!(!t.hides(b"c", 5, 10), "same stamp is not below");
        assert!(!t.hides(b"c", 6, 0));
        assert!(!t.hides(b"d", 1, 1), "end is exclusive");
        assert!(!t.hides(b"a", 1, 1));
        assert!(is_visible(t.stamp(), 5, 10));
        assert!(!is_visible(t.stamp(), 4, 10));
        assert!(!is_visible(t.stamp(), 5, 9));
    }
}

//! The user-facing iterator: newest visible version of each key, bounded, both directions.

use crate::error::{Error, Result};
use crate::iter::InternalIterator;
use crate::key::{
    first_key, last_key, logical_key, lookup_key, parse_trailer, parse_version, resolve, KeySpace,
    Resolved, PREFIX_LEN,
};
use crate::options::{ReadOptions, ReadTier};
use crate::range_del::{self, FragmentedTombstones, RangeDelCursor};
use crate::snapshot::SnapshotGuard;
use crate::vlog::ValueFetcher;
use std::sync::Arc;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Forward,
    Reverse,
}

/// Iterates over the user keys of one key space as of a fixed version and sequence number.
///
/// In the forward direction the cursor reads key and value from the merged
/// internal cursor; in reverse it copies the newest visible entry of the
/// current key (entries of one key are met oldest first when moving back).
pub struct DbIterator {
    inner: Box<dyn InternalIterator>,
    seq: u64,
    /// Highest version visible (the read timestamp).
    ts: u64,
    space: KeySpace,
    /// Inclusive lower bound as a logical key (namespace byte included).
    lower: Vec<u8>,
    /// Exclusive upper bound as a logical key.
    upper: Vec<u8>,
    direction: Direction,
    valid: bool,
    /// Wall-clock time the iterator reads at: entries expired by then are absent.
    now_ms: u64,
    /// Forward direction: bytes of expiry header in front of the current value.
    value_skip: usize,
    saved_key: Vec<u8>,
    saved_value: Vec<u8>,
    _snapshot: SnapshotGuard,
    /// The read view's range tombstones, when there are any: covered entries are skipped.
    range_dels: Option<RangeDelCursor>,
    /// Reads values stored in the value log (and keeps their segments alive).
    vlog: Option<ValueFetcher>,
    /// Forward direction: the current value, read from the value log.
    fetched: Option<Vec<u8>>,
    /// Reverse direction: `saved_value` holds a value pointer, not yet read.
    saved_is_pointer: bool,
    /// The first value-log read error; the iterator stays invalid after it.
    vlog_error: Option<Error>,
    /// `ReadTier::CacheOnly`: a value-log read is `Error::WouldBlock` instead.
    cache_only: bool,
}

/// The smallest byte string greater than every string starting with `prefix`, if any.
pub fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut p = prefix.to_vec();
    while let Some(last) = p.pop() {
        if last != 0xff {
            p.push(last + 1);
            return Some(p);
        }
    }
    None
}

impl DbIterator {
    /// Wraps a merged internal cursor reading at version `ts`, `snapshot`'s sequence and
    /// `now_ms`; `ro`'s bounds and prefix are user keys within `space`.
    pub(crate) fn new(
        inner: Box<dyn InternalIterator>,
        space: KeySpace,
        ro: &ReadOptions,
        ts: u64,
        snapshot: SnapshotGuard,
        now_ms: u64,
    ) -> DbIterator {
        let (lower, upper, prefix) = (
            ro.lower_bound.as_deref(),
            ro.upper_bound.as_deref(),
            ro.prefix.as_deref(),
        );
        let seq = snapshot.seq();
        let mut lo = space.prefix().to_vec();
        let mut lo_user: &[u8] = lower.unwrap_or(&[]);
        if let Some(p) = prefix {
            lo_user = lo_user.max(p);
        }
        lo.extend_from_slice(lo_user);
        let mut up_user: Option<Vec<u8>> = upper.map(|u| u.to_vec());
        if let Some(succ) = prefix.and_then(prefix_successor) {
            up_user = Some(match up_user {
                Some(u) if u < succ => u,
                _ => succ,
            });
        }
        let up = match up_user {
            Some(u) => space.logical(&u),
            None => space.end(),
        };
        DbIterator {
            inner,
            seq,
            ts,
            space,
            lower: lo,
            upper: up,
            direction: Direction::Forward,
            valid: false,
            now_ms,
            value_skip: 0,
            saved_key: Vec::new(),
            saved_value: Vec::new(),
            _snapshot: snapshot,
            range_dels: None,
            vlog: None,
            fetched: None,
            saved_is_pointer: false,
            vlog_error: None,
            cache_only: ro.tier == ReadTier::CacheOnly,
        }
    }

    /// Resolves value pointers through `fetcher` (the segment set of the iterator's version).
    pub(crate) fn with_value_log(mut self, fetcher: ValueFetcher) -> DbIterator {
        self.vlog = Some(fetcher);
        self
    }

    /// Reads the value `ptr` names; on failure records the error and returns `None`.
    fn fetch(&mut self, ptr: &[u8]) -> Option<Vec<u8>> {
        let res = match &self.vlog {
            Some(_) if self.cache_only => Err(Error::WouldBlock("a value in the value log")),
            Some(f) => f.fetch(ptr),
            None => Err(Error::InvalidArgument(
                "a table entry points into the value log, but the iterator has no value log".into(),
            )),
        };
        match res {
            Ok(v) => Some(v),
            Err(e) => {
                self.vlog_error.get_or_insert(e);
                None
            }
        }
    }

    /// Hides the entries that `tombstones` (the read view's range tombstones, built once
    /// per iterator) cover for this iterator's sequence number.
    pub(crate) fn with_range_tombstones(
        mut self,
        tombstones: Option<Arc<FragmentedTombstones>>,
    ) -> DbIterator {
        self.range_dels = tombstones.map(|t| RangeDelCursor::new(t, u64::MAX, self.seq));
        self
    }

    /// True when the iterator points at a key.
    pub fn valid(&self) -> bool {
        self.valid
    }

    /// The current user key; requires `valid()`.
    pub fn key(&self) -> &[u8] {
        assert!(self.valid, "key() on an invalid iterator");
        match self.direction {
            Direction::Forward => &logical_key(self.inner.key())[PREFIX_LEN..],
            Direction::Reverse => &self.saved_key[PREFIX_LEN..],
        }
    }

    /// The current value; requires `valid()`.
    pub fn value(&self) -> &[u8] {
        assert!(self.valid, "value() on an invalid iterator");
        match (self.direction, &self.fetched) {
            (Direction::Forward, Some(v)) => v,
            (Direction::Forward, None) => &self.inner.value()[self.value_skip..],
            (Direction::Reverse, _) => &self.saved_value,
        }
    }

    /// The first IO or corruption error met, if any.
    pub fn status(&self) -> Result<()> {
        if let Some(e) = &self.vlog_error {
            return Err(e.duplicate());
        }
        self.inner.status()
    }

    /// Positions at the first key within the bounds.
    pub fn seek_to_first(&mut self) {
        let lo = self.lower.clone();
        self.seek_logical(&lo);
    }

    /// Positions at the last key within the bounds.
    pub fn seek_to_last(&mut self) {
        let target = first_key(&self.upper);
        self.inner.seek_for_prev(&target);
        self.direction = Direction::Reverse;
        self.find_prev_user_entry();
    }

    /// Positions at the first key >= `key` (clamped to the bounds).
    pub fn seek(&mut self, key: &[u8]) {
        let mut logical = self.space.logical(key);
        if logical < self.lower {
            logical = self.lower.clone();
        }
        self.seek_logical(&logical);
    }

    /// Positions at the last key <= `key` (clamped to the bounds).
    pub fn seek_for_prev(&mut self, key: &[u8]) {
        let logical = self.space.logical(key);
        if logical >= self.upper {
            self.seek_to_last();
            return;
        }
        self.inner.seek_for_prev(&last_key(&logical));
        self.direction = Direction::Reverse;
        self.find_prev_user_entry();
    }

    /// Moves to the next key; requires `valid()`.
    pub fn next(&mut self) {
        assert!(self.valid, "next() on an invalid iterator");
        if self.direction == Direction::Reverse {
            self.direction = Direction::Forward;
            let target = first_key(&self.saved_key);
            self.inner.seek(&target);
        } else {
            self.saved_key.clear();
            self.saved_key
                .extend_from_slice(logical_key(self.inner.key()));
        }
        // The inner cursor is at some entry of saved_key: skip all of them.
        self.find_next_user_entry(true);
    }

    /// Moves to the previous key; requires `valid()`.
    pub fn prev(&mut self) {
        assert!(self.valid, "prev() on an invalid iterator");
        if self.direction == Direction::Forward {
            self.saved_key.clear();
            self.saved_key
                .extend_from_slice(logical_key(self.inner.key()));
            loop {
                self.inner.prev();
                if !self.inner.valid() {
                    self.valid = false;
                    self.saved_key.clear();
                    return;
                }
                if logical_key(self.inner.key()) < &self.saved_key[..] {
                    break;
                }
            }
            self.direction = Direction::Reverse;
        }
        self.find_prev_user_entry();
    }

    fn seek_logical(&mut self, logical: &[u8]) {
        self.direction = Direction::Forward;
        self.inner.seek(&lookup_key(logical, self.ts, self.seq));
        self.find_next_user_entry(false);
    }

    /// Advances the inner cursor to the newest visible put of a key not yet returned.
    fn find_next_user_entry(&mut self, mut skipping: bool) {
        self.fetched = None;
        if self.vlog_error.is_some() {
            self.valid = false;
            return;
        }
        while self.inner.valid() {
            let ikey = self.inner.key();
            let logical = logical_key(ikey);
            if logical >= &self.upper[..] {
                break;
            }
            let (seq, kind) = parse_trailer(ikey);
            let visible = seq <= self.seq
                && parse_version(ikey) <= self.ts
                && !self
                    .range_dels
                    .as_mut()
                    .is_some_and(|c| c.hides(logical, range_del::entry_stamp(seq)));
            if visible && !(skipping && logical <= &self.saved_key[..]) {
                let raw = self.inner.value();
                match resolve(kind, raw, self.now_ms) {
                    Resolved::Gone => {
                        self.saved_key.clear();
                        self.saved_key.extend_from_slice(logical);
                        skipping = true;
                    }
                    Resolved::Value(v) => {
                        self.value_skip = raw.len() - v.len();
                        self.valid = true;
                        return;
                    }
                    Resolved::Pointer(p) => {
                        let p = p.to_vec();
                        self.fetched = self.fetch(&p);
                        self.valid = self.fetched.is_some();
                        return;
                    }
                }
            }
            self.inner.next();
        }
        self.valid = false;
    }

    /// Moves back to the newest visible put of the previous key and copies it.
    fn find_prev_user_entry(&mut self) {
        self.fetched = None;
        if self.vlog_error.is_some() {
            self.valid = false;
            self.direction = Direction::Forward;
            return;
        }
        let mut found_put = false;
        while self.inner.valid() {
            let ikey = self.inner.key();
            let logical = logical_key(ikey);
            if found_put && logical < &self.saved_key[..] {
                break;
            }
            if logical < &self.lower[..] {
                break;
            }
            let (seq, kind) = parse_trailer(ikey);
            let visible = seq <= self.seq
                && parse_version(ikey) <= self.ts
                && !self
                    .range_dels
                    .as_mut()
                    .is_some_and(|c| c.hides(logical, range_del::entry_stamp(seq)));
            if visible && logical < &self.upper[..] {
                match resolve(kind, self.inner.value(), self.now_ms) {
                    Resolved::Gone => {
                        found_put = false;
                        self.saved_key.clear();
                        self.saved_value.clear();
                    }
                    Resolved::Value(v) => {
                        found_put = true;
                        self.saved_key.clear();
                        self.saved_key.extend_from_slice(logical);
                        self.saved_value.clear();
                        self.saved_value.extend_from_slice(v);
                        self.saved_is_pointer = false;
                    }
                    Resolved::Pointer(p) => {
                        // Read only the value that ends up current, once the key is passed.
                        found_put = true;
                        self.saved_key.clear();
                        self.saved_key.extend_from_slice(logical);
                        self.saved_value.clear();
                        self.saved_value.extend_from_slice(p);
                        self.saved_is_pointer = true;
                    }
                }
            }
            self.inner.prev();
        }
        if found_put && self.saved_is_pointer {
            self.saved_is_pointer = false;
            let p = std::mem::take(&mut self.saved_value);
            match self.fetch(&p) {
                Some(v) => self.saved_value = v,
                None => found_put = false,
            }
        }
        if found_put {
            self.valid = true;
        } else {
            self.valid = false;
            self.saved_key.clear();
            self.saved_value.clear();
            self.direction = Direction::Forward;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn successor() {
        assert_eq!(prefix_successor(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_successor(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_successor(b"\xff\xff"), None);
    }
}

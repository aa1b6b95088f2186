//! The memtable side list of range tombstones.
//!
//! Writers append; readers take an `Arc<FragmentedTombstones>` that is rebuilt
//! only when something was added since the last build. A memtable without range
//! deletes costs a reader one atomic load (no reference count is touched: the
//! answer is `None`).
//!
//! # Size
//!
//! Range deletes are rare next to point writes: dropping a region, a table or
//! a Redis collection, clearing a prefix. Expect a handful to a few dozen per
//! memtable. The list is capped at a configurable count
//! ([`DEFAULT_MAX_RANGE_TOMBSTONES`] by default) and an insert that would pass
//! it is rejected with an error, rather than letting it grow, because:
//!
//! - the index is rebuilt from the whole list (`O(n log n)`) on the first read
//!   after each insert, and its stamp lists grow as `O(n^2)` for nested ranges
//!   (1024 nested tombstones: about a million stamps, 16 MiB), so an unbounded
//!   list turns a pathological workload into unbounded memory and read latency;
//! - the right response to a full list is the same as to a full write buffer:
//!   freeze the memtable and flush. The engine checks [`RangeDelCollector::remaining`]
//!   before it writes a batch to the WAL and rotates the memtable when the batch
//!   would not fit, so the error is a safety net that never fires after the WAL
//!   accepted the batch (a logged but unappliable batch would fail recovery).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use super::{FragmentedTombstones, RangeTombstone};
use crate::error::{Error, Result};

/// Default cap on the range tombstones one memtable holds.
pub const DEFAULT_MAX_RANGE_TOMBSTONES: usize = 1024;

/// A bounded, thread-safe list of range tombstones with a lazily rebuilt index.
#[derive(Debug)]
pub struct RangeDelCollector {
    max: usize,
    /// Tombstones in `list`, published after they are pushed; 0 lets readers skip everything.
    added: AtomicUsize,
    /// Key and stamp bytes of the tombstones in `list`.
    bytes: AtomicUsize,
    /// Every tombstone added, in insert order (append-only).
    list: Mutex<Vec<Arc<RangeTombstone>>>,
    /// The last index built and how many tombstones of `list` it holds.
    built: RwLock<(usize, Arc<FragmentedTombstones>)>,
    /// Serializes rebuilds so that readers racing after an insert build once.
    building: Mutex<()>,
}

impl Default for RangeDelCollector {
    fn default() -> Self {
        RangeDelCollector::new(DEFAULT_MAX_RANGE_TOMBSTONES)
    }
}

impl RangeDelCollector {
    /// An empty collector that holds at most `max_count` tombstones.
    pub fn new(max_count: usize) -> RangeDelCollector {
        RangeDelCollector {
            max: max_count,
            added: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            list: Mutex::new(Vec::new()),
            built: RwLock::new((0, Arc::new(FragmentedTombstones::default()))),
            building: Mutex::new(()),
        }
    }

    /// Adds one tombstone; an invalid range or a full collector is an error and changes nothing.
    pub fn add(&self, tombstone: RangeTombstone) -> Result<()> {
        self.add_all([tombstone])
    }

    /// Adds every tombstone or none (one batch's range deletes), then publishes them together.
    pub fn add_all(&self, tombstones: impl IntoIterator<Item = RangeTombstone>) -> Result<()> {
        let new: Vec<RangeTombstone> = tombstones.into_iter().collect();
        for t in &new {
            t.validate()?;
        }
        let mut list = self.list.lock();
        if new.len() > self.max.saturating_sub(list.len()) {
            return Err(Error::InvalidArgument(format!(
                "{} range tombstones do not fit: the memtable holds {} of at most {} \
                 (freeze the memtable before adding more)",
                new.len(),
                list.len(),
                self.max
            )));
        }
        let bytes: usize = new.iter().map(RangeTombstone::approximate_bytes).sum();
        list.extend(new.into_iter().map(Arc::new));
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        // Release pairs with the Acquire in `snapshot`: a reader that sees the
        // count sees the pushed tombstones (the engine publishes the batch's
        // sequence numbers only after this returns).
        self.added.store(list.len(), Ordering::Release);
        Ok(())
    }

    /// The index over every tombstone added so far; `None` (one atomic load) when there is none.
    ///
    /// Rebuilt on the first call after an insert; later calls share the result.
    pub fn snapshot(&self) -> Option<Arc<FragmentedTombstones>> {
        let n = self.added.load(Ordering::Acquire);
        if n == 0 {
            return None;
        }
        if let Some(idx) = self.built_with(n) {
            return Some(idx);
        }
        let _one_builder = self.building.lock();
        if let Some(idx) = self.built_with(n) {
            return Some(idx);
        }
        // Clone the Arcs and build without the list lock, so writers do not wait.
        let list: Vec<Arc<RangeTombstone>> = self.list.lock().clone();
        let idx = Arc::new(FragmentedTombstones::from_valid(
            list.iter().map(|t| &**t).collect(),
        ));
        let mut built = self.built.write();
        if list.len() > built.0 {
            *built = (list.len(), idx.clone());
        }
        Some(idx)
    }

    /// The cached index if it holds at least the first `n` tombstones.
    fn built_with(&self, n: usize) -> Option<Arc<FragmentedTombstones>> {
        let built = self.built.read();
        (built.0 >= n).then(|| built.1.clone())
    }

    /// Number of tombstones added.
    pub fn len(&self) -> usize {
        self.added.load(Ordering::Acquire)
    }

    /// True when no tombstone was added.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The configured cap on the number of tombstones.
    pub fn max_count(&self) -> usize {
        self.max
    }

    /// How many more tombstones fit; the engine checks it before logging a batch.
    pub fn remaining(&self) -> usize {
        self.max.saturating_sub(self.len())
    }

    /// Key and stamp bytes of the tombstones, to count toward the memtable's size.
    pub fn approximate_bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// The tombstones as added, in insert order.
    pub fn tombstones(&self) -> Vec<RangeTombstone> {
        self.list.lock().iter().map(|t| (**t).clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    fn t(s: &str, e: &str, v: u64, q: u64) -> RangeTombstone {
        RangeTombstone::new(s.as_bytes().to_vec(), e.as_bytes().to_vec(), v, q).unwrap()
    }

    #[test]
    fn lazy_rebuild_and_sharing() {
        let c = RangeDelCollector::new(8);
        assert!(c.snapshot().is_none());
        assert!(c.is_empty());
        c.add(t("a", "c", 1, 1)).unwrap();
        let s1 = c.snapshot().unwrap();
        let s2 = c.snapshot().unwrap();
        assert!(
            Arc::ptr_eq(&s1, &s2),
            "no insert in between: the same index"
        );
        assert_eq!(s1.covering(b"b", 1, 1), Some((1, 1)));
        c.add(t("b", "d", 2, 2)).unwrap();
        let s3 = c.snapshot().unwrap();
        assert!(!Arc::ptr_eq(&s1, &s3));
        assert_eq!(s3.covering(b"b", 9, 9), Some((2, 2)));
        assert_eq!(
            s1.covering(b"b", 9, 9),
            Some((1, 1)),
            "old snapshots stay as they were"
        );
        assert_eq!(c.len(), 2);
        assert_eq!(c.approximate_bytes(), 2 * (2 + 16));
        assert_eq!(c.tombstones(), vec![t("a", "c", 1, 1), t("b", "d", 2, 2)]);
    }

    #[test]
    fn cap_and_validation_reject_without_side_effects() {
        let c = RangeDelCollector::new(3);
        c.add(t("a", "b", 1, 1)).unwrap();
        let bad = RangeTombstone {
            start: b"z".to_vec(),
            end: b"a".to_vec(),
            version: 1,
            seq: 2,
        };
        assert!(c.add_all([t("c", "d", 1, 2), bad]).is_err());
        assert_eq!(c.len(), 1, "a batch with an invalid range adds nothing");
        let err = c
            .add_all([t("c", "d", 1, 2), t("e", "f", 1, 3), t("g", "h", 1, 4)])
            .unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument(m) if m.contains("at most 3")),
            "{err}"
        );
        assert_eq!(c.len(), 1, "a batch that does not fit adds nothing");
        assert_eq!(c.remaining(), 2);
        c.add_all([t("c", "d", 1, 2), t("e", "f", 1, 3)]).unwrap();
        assert_eq!(c.remaining(), 0);
        assert!(c.add(t("x", "y", 1, 5)).is_err());
        assert_eq!(c.snapshot().unwrap().len(), 3);
        assert!(RangeDelCollector::new(0).add(t("a", "b", 1, 1)).is_err());
        assert_eq!(
            RangeDelCollector::default().max_count(),
            DEFAULT_MAX_RANGE_TOMBSTONES
        );
    }

    /// A reader that saw a tombstone's publication always finds it in its snapshot.
    #[test]
    fn concurrent_readers_see_published_tombstones() {
        const N: u64 = 200;
        let c = Arc::new(RangeDelCollector::new(N as usize));
        let published = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (c, published, done) = (c.clone(), published.clone(), done.clone());
                std::thread::spawn(move || {
                    let mut last = 0;
                    while !done.load(Ordering::Acquire) {
                        let p = published.load(Ordering::Acquire) as u64;
                        if p == 0 {
                            continue;
                        }
                        let s = c.snapshot().expect("published tombstones exist");
                        let key = format!("k{:04}", p - 1);
                        assert_eq!(s.covering(key.as_bytes(), p, p), Some((p, p)));
                        assert!(s.len() >= last, "snapshots never go back");
                        last = s.len();
                    }
                })
            })
            .collect();
        for i in 0..N {
            let (s, e) = (format!("k{i:04}"), format!("k{i:04}\0"));
            c.add(t(&s, &e, i + 1, i + 1)).unwrap();
            published.store(i as usize + 1, Ordering::Release);
        }
        done.store(true, Ordering::Release);
        for r in readers {
            r.join().unwrap();
        }
        assert_eq!(c.snapshot().unwrap().len(), N as usize);
    }
}

//! Registry of sequence numbers that live readers still see; compaction keeps their versions.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;

/// The live read snapshots, counted per sequence number.
#[derive(Debug, Default)]
pub struct SnapshotList {
    live: Mutex<BTreeMap<u64, usize>>,
}

impl SnapshotList {
    /// Registers a reader at `seq`; it is released when the guard drops.
    pub fn acquire(self: &Arc<Self>, seq: u64) -> SnapshotGuard {
        *self.live.lock().entry(seq).or_insert(0) += 1;
        SnapshotGuard {
            list: Some(self.clone()),
            seq,
        }
    }

    /// The oldest sequence number a live reader sees.
    pub fn oldest(&self) -> Option<u64> {
        self.live.lock().keys().next().copied()
    }

    /// All live snapshot sequence numbers, ascending.
    pub fn all(&self) -> Vec<u64> {
        self.live.lock().keys().copied().collect()
    }
}

/// A pinned point-in-time view of the database (see `Db::snapshot`); cheap to clone.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub(crate) guard: Arc<SnapshotGuard>,
}

impl Snapshot {
    /// The last sequence number this snapshot sees.
    pub fn sequence(&self) -> u64 {
        self.guard.seq()
    }
}

/// Keeps one snapshot registered while it lives.
#[derive(Debug)]
pub struct SnapshotGuard {
    list: Option<Arc<SnapshotList>>,
    seq: u64,
}

impl SnapshotGuard {
    /// The sequence number this guard pins.
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

impl Drop for SnapshotGuard {
    fn drop(&mut self) {
        if let Some(list) = self.list.take() {
            let mut live = list.live.lock();
            if let Some(n) = live.get_mut(&self.seq) {
                *n -= 1;
                if *n == 0 {
                    live.remove(&self.seq);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_tracks_guards() {
        let l = Arc::new(SnapshotList::default());
        let a = l.acquire(5);
        let b = l.acquire(3);
        let c = l.acquire(3);
        assert_eq!(l.oldest(), Some(3));
        drop(b);
        assert_eq!(l.oldest(), Some(3));
        drop(c);
        assert_eq!(l.oldest(), Some(5));
        assert_eq!(a.seq(), 5);
        drop(a);
        assert_eq!(l.oldest(), None);
    }
}

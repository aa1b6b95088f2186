//! The storage boundary: what commands read and write through, and an
//! implementation on one `nokv::Db` for single-process use and tests.

use crate::error::Result;
use crate::exec::{self, ReadOp, WriteCommand};
use crate::model::{META, SUBKEYS};
use crate::resp::Reply;
use nokv::clock::Clock;
use nokv::{Db, KeySpace, ReadOptions, WriteBatch, WriteOptions};
use std::sync::{Arc, Mutex};

/// Reads of the Redis key spaces.
pub trait ReadView {
    /// The newest value of `key` in `space`.
    fn get(&self, space: KeySpace, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Visits keys of `space` in `[start, end)` (`end` None: to the end of the space)
    /// in order, until `visit` returns false.
    fn scan(
        &self,
        space: KeySpace,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()>;
}

/// Reads and writes at apply time.
///
/// An implementation that groups several commands into one engine write must
/// let later commands read the writes of earlier ones (commands are applied
/// in log order and read-modify-write against what came before).
pub trait StateView: ReadView {
    /// Makes one command's batch part of the state (all of it, or fail).
    fn commit(&mut self, batch: WriteBatch) -> Result<()>;

    /// Removes every Redis key at `version` (FLUSHDB). The default iterates and
    /// deletes in batches of [`FLUSH_BATCH_KEYS`]: not atomic, to be replaced by
    /// range deletes once the engine has them.
    fn clear(&mut self, version: u64) -> Result<()> {
        clear_by_iteration(self, version)
    }
}

/// Keys deleted per batch by [`clear_by_iteration`].
pub const FLUSH_BATCH_KEYS: usize = 1024;

/// FLUSHDB by iteration: deletes every key of the Redis key spaces, a batch at a time.
pub fn clear_by_iteration<V: StateView + ?Sized>(view: &mut V, version: u64) -> Result<()> {
    for space in [META, SUBKEYS] {
        let mut start: Vec<u8> = Vec::new();
        // Each round deletes at least one key or ends: bounded by the number of keys.
        loop {
            let mut keys = Vec::new();
            view.scan(space, &start, None, &mut |k, _| {
                keys.push(k.to_vec());
                keys.len() < FLUSH_BATCH_KEYS
            })?;
            let Some(last) = keys.last() else { break };
            start = last.clone();
            start.push(0);
            let mut batch = WriteBatch::new();
            for k in &keys {
                batch.delete_at(space, k, version);
            }
            view.commit(batch)?;
            if keys.len() < FLUSH_BATCH_KEYS {
                break;
            }
        }
    }
    Ok(())
}

impl ReadView for Db {
    fn get(&self, space: KeySpace, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.get_in(space, key, &ReadOptions::default())?)
    }

    fn scan(
        &self,
        space: KeySpace,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        scan_db(self, ReadOptions::default(), space, start, end, visit)
    }
}

/// [`ReadView::scan`] on `db` reading with `ro` (its tier, timestamp and snapshot; the
/// bounds are replaced by `[start, end)`). With `ReadTier::CacheOnly` a scan that needs
/// disk IO fails with `nokv::Error::WouldBlock` (after visiting what it could: the
/// caller must discard what it collected).
pub fn scan_db(
    db: &Db,
    ro: ReadOptions,
    space: KeySpace,
    start: &[u8],
    end: Option<&[u8]>,
    visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
) -> Result<()> {
    let ro = ReadOptions {
        lower_bound: (!start.is_empty()).then(|| start.to_vec()),
        upper_bound: end.map(<[u8]>::to_vec),
        ..ro
    };
    let mut it = db.iter_in(space, ro)?;
    it.seek_to_first();
    // Bounded by the keys in range; `visit` stops it early.
    while it.valid() {
        if !visit(it.key(), it.value()) {
            break;
        }
        it.next();
    }
    it.status()?;
    Ok(())
}

impl StateView for Db {
    fn commit(&mut self, batch: WriteBatch) -> Result<()> {
        Ok(self.write(&batch, &WriteOptions::default())?)
    }
}

/// What a synchronous session driver needs: the time, reads and writes.
pub trait Backend {
    /// The clock reads and proposals use (unix ms).
    fn now_ms(&self) -> u64;
    /// Evaluates a read.
    fn read(&self, op: &ReadOp) -> Reply;
    /// Applies a write in order with every other write.
    fn write(&self, cmd: &WriteCommand) -> Reply;
}

/// Serves the Redis model from one `nokv::Db` in this process: writes are
/// applied one at a time under a lock (the single-process stand-in for
/// "in log order on the owning shard"), each at a fresh version.
pub struct DbStore {
    db: Db,
    clock: Arc<dyn Clock>,
    /// The last version handed out; the lock orders applies.
    apply: Mutex<u64>,
}

impl DbStore {
    /// Wraps `db`; `clock` should be the one in the engine's `Options::clock`.
    pub fn new(db: Db, clock: Arc<dyn Clock>) -> DbStore {
        DbStore {
            db,
            clock,
            apply: Mutex::new(0),
        }
    }

    /// The engine handle.
    pub fn db(&self) -> &Db {
        &self.db
    }
}

impl Backend for DbStore {
    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    fn read(&self, op: &ReadOp) -> Reply {
        exec::read(op, &self.db, self.clock.now_ms())
    }

    fn write(&self, cmd: &WriteCommand) -> Reply {
        let mut last = self.apply.lock().unwrap_or_else(|p| p.into_inner());
        // Versions grow with the clock (ms << 20) and never repeat, across restarts
        // too as long as the clock does not step back by more than the write rate.
        let version = (*last + 1).max(self.clock.now_ms() << 20);
        *last = version;
        let mut db = self.db.clone();
        exec::apply(cmd, &mut db, version)
    }
}

/// An in-memory [`StateView`] (a sorted map per key space), for tests and models.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MemView {
    /// Logical key (namespace, column family, key) -> value.
    pub map: std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
    /// Batches committed so far.
    pub commits: u64,
}

impl ReadView for MemView {
    fn get(&self, space: KeySpace, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.map.get(&space.logical(key)).cloned())
    }

    fn scan(
        &self,
        space: KeySpace,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        let lo = space.logical(start);
        let hi = end.map_or_else(|| space.end(), |e| space.logical(e));
        for (k, v) in self.map.range(lo..hi) {
            if !visit(&k[2..], v) {
                break;
            }
        }
        Ok(())
    }
}

impl StateView for MemView {
    fn commit(&mut self, batch: WriteBatch) -> Result<()> {
        for e in batch.iter_entries() {
            match e.kind {
                nokv::key::Kind::Delete => {
                    self.map.remove(e.logical_key);
                }
                _ => {
                    self.map.insert(e.logical_key.to_vec(), e.value.to_vec());
                }
            }
        }
        self.commits += 1;
        Ok(())
    }
}

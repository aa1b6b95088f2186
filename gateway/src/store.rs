//! The storage boundary: what commands read and write through, and an
//! implementation on one `nokv::Db` for single-process use and tests.

use crate::error::Result;
use crate::exec::{self, ReadOp, WriteCommand};
use crate::model::{Body, Meta, META, SUBKEYS};
use crate::resp::Reply;
use nokv::clock::Clock;
use nokv::{Db, KeySpace, ReadOptions, WriteBatch, WriteOptions};
use std::sync::{Arc, Mutex};

/// Reads of the Redis key spaces.
pub trait ReadView {
    /// The newest value of `key` in `space`.
    fn get(&self, space: KeySpace, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// The version the newest value of `key` in `space` was written at (None: absent).
    fn version(&self, space: KeySpace, key: &[u8]) -> Result<Option<u64>>;

    /// Whether lock records of multi-region writes (`crate::lock`) may exist here: false
    /// lets reads and writes skip looking for them. Must not answer false while one does.
    fn may_hold_locks(&self) -> bool {
        true
    }

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

    fn version(&self, space: KeySpace, key: &[u8]) -> Result<Option<u64>> {
        Ok(self
            .get_entry(space, key, &ReadOptions::default())?
            .map(|e| e.version))
    }

    fn may_hold_locks(&self) -> bool {
        self.may_hold(crate::lock::LOCKS)
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

/// The logical keys `[lo, hi)` of a scan of `space` from `start` to `end` (None: the
/// end of the space); None when the range is empty.
fn logical_range(space: KeySpace, start: &[u8], end: Option<&[u8]>) -> Option<(Vec<u8>, Vec<u8>)> {
    let lo = space.logical(start);
    let hi = end.map_or_else(|| space.end(), |e| space.logical(e));
    (lo < hi).then_some((lo, hi))
}

/// An in-memory [`StateView`] (a sorted map per key space), for tests and models.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MemView {
    /// Logical key (namespace, column family, key) -> value.
    pub map: std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
    /// Logical key -> the version its value was written at.
    pub versions: std::collections::BTreeMap<Vec<u8>, u64>,
    /// Batches committed so far.
    pub commits: u64,
}

impl ReadView for MemView {
    fn get(&self, space: KeySpace, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.map.get(&space.logical(key)).cloned())
    }

    fn version(&self, space: KeySpace, key: &[u8]) -> Result<Option<u64>> {
        let logical = space.logical(key);
        Ok(self
            .map
            .contains_key(&logical)
            .then(|| self.versions.get(&logical).copied().unwrap_or(0)))
    }

    fn scan(
        &self,
        space: KeySpace,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        let Some((lo, hi)) = logical_range(space, start, end) else {
            return Ok(());
        };
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
                    self.versions.remove(e.logical_key);
                }
                _ => {
                    self.map.insert(e.logical_key.to_vec(), e.value.to_vec());
                    self.versions
                        .insert(e.logical_key.to_vec(), e.version.unwrap_or(0));
                }
            }
        }
        self.commits += 1;
        Ok(())
    }
}

/// Adds a write of `logical` (namespace, column family, key) to `batch`: a put of
/// `value`, or a delete (None).
pub fn put_logical(batch: &mut WriteBatch, logical: &[u8], value: Option<&[u8]>, version: u64) {
    let Some(key) = logical.get(nokv::key::PREFIX_LEN..) else {
        return;
    };
    let space = KeySpace::new(logical[0], logical[1]);
    match value {
        Some(v) => batch.put_at(space, key, version, v),
        None => batch.delete_at(space, key, version),
    };
}

/// The writes of an EXEC block so far, over the state below: its reads see them, and they
/// become one batch at the end ([`Overlay::into_batch`]), so the block is one write.
pub struct Overlay<'a> {
    base: &'a dyn ReadView,
    version: u64,
    /// Logical key -> value (None: deleted).
    writes: std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl<'a> Overlay<'a> {
    /// No writes yet over `base`; the block writes at `version`.
    pub fn new(base: &'a dyn ReadView, version: u64) -> Overlay<'a> {
        Overlay {
            base,
            version,
            writes: std::collections::BTreeMap::new(),
        }
    }

    /// Every write of the block, as one batch at its version.
    pub fn into_batch(self) -> WriteBatch {
        let version = self.version;
        let mut batch = WriteBatch::new();
        for (logical, value) in &self.into_writes() {
            put_logical(&mut batch, logical, value.as_deref(), version);
        }
        batch
    }

    /// Every write of the block: logical key and value (None: delete), in key order.
    pub fn into_writes(self) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        self.writes.into_iter().collect()
    }

    /// A hash created by this block gets the block's version as generation; created again
    /// after a DEL in the same block, it would get the same one, and the fields the
    /// first creation wrote would show through. They are dropped when that happens.
    fn drop_fields_of_recreated_hash(&mut self, meta_logical: &[u8], value: &[u8]) {
        let Ok(Meta {
            body: Body::Hash { generation, .. },
            ..
        }) = Meta::decode(value)
        else {
            return;
        };
        if generation != self.version {
            return;
        }
        let same = |raw: &[u8]| {
            matches!(
                Meta::decode(raw),
                Ok(Meta { body: Body::Hash { generation: g, .. }, .. }) if g == generation
            )
        };
        if self
            .writes
            .get(meta_logical)
            .is_some_and(|v| v.as_deref().is_some_and(same))
        {
            return;
        }
        let user = crate::model::user_key(&meta_logical[nokv::key::PREFIX_LEN..]);
        let prefix = SUBKEYS.logical(&crate::model::subkey_prefix(user, generation));
        let stale: Vec<Vec<u8>> = self
            .writes
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            self.writes.insert(k, None);
        }
    }
}

impl ReadView for Overlay<'_> {
    fn get(&self, space: KeySpace, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.writes.get(&space.logical(key)) {
            Some(v) => Ok(v.clone()),
            None => self.base.get(space, key),
        }
    }

    fn version(&self, space: KeySpace, key: &[u8]) -> Result<Option<u64>> {
        match self.writes.get(&space.logical(key)) {
            Some(v) => Ok(v.as_ref().map(|_| self.version)),
            None => self.base.version(space, key),
        }
    }

    fn may_hold_locks(&self) -> bool {
        self.base.may_hold_locks()
    }

    fn scan(
        &self,
        space: KeySpace,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        let Some((lo, hi)) = logical_range(space, start, end) else {
            return Ok(());
        };
        let mut mine = self.writes.range(lo..hi).peekable();
        let mut stopped = false;
        let cut = nokv::key::PREFIX_LEN;
        self.base.scan(space, start, end, &mut |k, v| {
            let logical = space.logical(k);
            // The block's keys before this one, then this one (the block's value wins).
            while let Some((mk, mv)) = mine.next_if(|(mk, _)| mk.as_slice() < logical.as_slice()) {
                if let Some(mv) = mv {
                    if !visit(&mk[cut..], mv) {
                        stopped = true;
                        return false;
                    }
                }
            }
            let go = match mine.next_if(|(mk, _)| mk.as_slice() == logical.as_slice()) {
                Some((_, Some(mv))) => visit(k, mv),
                Some((_, None)) => true,
                None => visit(k, v),
            };
            stopped = !go;
            go
        })?;
        if !stopped {
            for (mk, mv) in mine {
                if let Some(mv) = mv {
                    if !visit(&mk[cut..], mv) {
                        break;
                    }
                }
            }
        }
        Ok(())
    }
}

impl StateView for Overlay<'_> {
    fn commit(&mut self, batch: WriteBatch) -> Result<()> {
        let meta_prefix = META.prefix();
        for e in batch.iter_entries() {
            if e.kind != nokv::key::Kind::Delete && e.logical_key.starts_with(&meta_prefix) {
                self.drop_fields_of_recreated_hash(e.logical_key, e.value);
            }
        }
        for e in batch.iter_entries() {
            let value = (e.kind != nokv::key::Kind::Delete).then(|| e.value.to_vec());
            self.writes.insert(e.logical_key.to_vec(), value);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn scan_all(
        view: &dyn ReadView,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        view.scan(SUBKEYS, start, end, &mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            out.len() < limit
        })
        .unwrap_or_else(|e| panic!("scan: {e}"));
        out
    }

    proptest! {
        /// Reads through an overlay equal reads of the state with its writes applied.
        #[test]
        fn overlay_reads_match_the_state_with_its_writes(
            base in proptest::collection::btree_map(0u8..16, any::<u8>(), 0..12),
            writes in proptest::collection::vec((0u8..16, proptest::option::of(any::<u8>())), 0..12),
            start in 0u8..16,
            end in proptest::option::of(0u8..17),
            limit in 1usize..20,
        ) {
            let mut state = MemView::default();
            let mut b = WriteBatch::new();
            for (k, v) in &base {
                b.put_at(SUBKEYS, &[*k], 1, &[*v]);
            }
            state.commit(b).unwrap_or_else(|e| panic!("{e}"));
            let mut batch = WriteBatch::new();
            for (k, v) in &writes {
                match v {
                    Some(v) => batch.put_at(SUBKEYS, &[*k], 2, &[*v]),
                    None => batch.delete_at(SUBKEYS, &[*k], 2),
                };
            }
            let mut expected = state.clone();
            let mut overlay = Overlay::new(&state, 2);
            // One write per batch, as EXEC's commands commit one after another.
            for e in batch.iter_entries() {
                let mut one = WriteBatch::new();
                match e.kind {
                    nokv::key::Kind::Delete => one.delete_at(SUBKEYS, &e.logical_key[2..], 2),
                    _ => one.put_at(SUBKEYS, &e.logical_key[2..], 2, e.value),
                };
                overlay.commit(one.clone()).unwrap_or_else(|e| panic!("{e}"));
                expected.commit(one).unwrap_or_else(|e| panic!("{e}"));
            }
            let end_key = end.map(|e| vec![e]);
            prop_assert_eq!(
                scan_all(&overlay, &[start], end_key.as_deref(), limit),
                scan_all(&expected, &[start], end_key.as_deref(), limit)
            );
            for k in 0u8..16 {
                prop_assert_eq!(overlay.get(SUBKEYS, &[k]).ok(), expected.get(SUBKEYS, &[k]).ok());
            }
            // The batch the overlay makes brings the state to the same place.
            let mut applied = state.clone();
            applied.commit(overlay.into_batch()).unwrap_or_else(|e| panic!("{e}"));
            prop_assert_eq!(applied.map, expected.map);
        }
    }
}

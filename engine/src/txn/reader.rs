//! What the Percolator operations read through: [`MvccRead`], implemented by the engine
//! ([`DbReader`], optionally pinned to a snapshot) and by an in-memory store ([`MemStore`])
//! that models and tests can apply the operations' batches to.

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::batch::BatchOp;
use crate::key::{KeySpace, Kind, PREFIX_LEN};
use crate::{Db, Error, ReadOptions, Result, Snapshot, WriteBatch};

/// Versioned reads over the three column families of one namespace.
pub trait MvccRead {
    /// The namespace byte of the keys read (the operations write their batches there too).
    fn ns(&self) -> u8;

    /// The newest entry of `key` in column family `cf` with version <= `ts`, as
    /// `(version, value)`; `None` when there is none or the newest is a delete.
    fn get_versioned(&self, cf: u8, key: &[u8], ts: u64) -> Result<Option<(u64, Vec<u8>)>>;

    /// The first user key in `[from, end)` (`end` None: to the end of the column family)
    /// that has a live entry at version <= `ts` in `cf`.
    fn next_key(&self, cf: u8, from: &[u8], end: Option<&[u8]>, ts: u64)
        -> Result<Option<Vec<u8>>>;
}

/// A [`MvccRead`] over an open [`Db`]: one namespace, as of now or of a pinned snapshot.
#[derive(Clone)]
pub struct DbReader<'a> {
    db: &'a Db,
    ns: u8,
    snapshot: Option<Snapshot>,
}

impl<'a> DbReader<'a> {
    /// Reads namespace `ns` of `db` as of each call (the caller serialises writers of the
    /// keys involved, e.g. with latches).
    pub fn new(db: &'a Db, ns: u8) -> DbReader<'a> {
        DbReader {
            db,
            ns,
            snapshot: None,
        }
    }

    /// Reads namespace `ns` of `db` as of a snapshot taken now: every call sees one state.
    pub fn pinned(db: &'a Db, ns: u8) -> DbReader<'a> {
        DbReader {
            db,
            ns,
            snapshot: Some(db.snapshot()),
        }
    }

    fn options(&self, ts: u64) -> ReadOptions {
        ReadOptions {
            read_ts: Some(ts),
            snapshot: self.snapshot.clone(),
            ..Default::default()
        }
    }
}

impl MvccRead for DbReader<'_> {
    fn ns(&self) -> u8 {
        self.ns
    }

    fn get_versioned(&self, cf: u8, key: &[u8], ts: u64) -> Result<Option<(u64, Vec<u8>)>> {
        let e = self
            .db
            .get_entry(KeySpace::new(self.ns, cf), key, &self.options(ts))?;
        Ok(e.map(|e| (e.version, e.value)))
    }

    fn next_key(
        &self,
        cf: u8,
        from: &[u8],
        end: Option<&[u8]>,
        ts: u64,
    ) -> Result<Option<Vec<u8>>> {
        let ro = ReadOptions {
            lower_bound: Some(from.to_vec()),
            upper_bound: end.map(<[u8]>::to_vec),
            ..self.options(ts)
        };
        let mut it = self.db.iter_in(KeySpace::new(self.ns, cf), ro)?;
        it.seek_to_first();
        if it.valid() {
            return Ok(Some(it.key().to_vec()));
        }
        it.status()?;
        Ok(None)
    }
}

/// Versions of one key in [`MemStore`]: version -> value (`None`: a delete).
type Versions = BTreeMap<u64, Option<Vec<u8>>>;

/// An in-memory multi-version store of one namespace: applies the operations' batches
/// (explicit versions only; a later write at the same version replaces the earlier one,
/// as in the engine) and reads them back through [`MvccRead`].
#[derive(Debug, Clone, Default)]
pub struct MemStore {
    ns: u8,
    /// (column family, user key) -> its versions.
    data: BTreeMap<(u8, Vec<u8>), Versions>,
}

impl MemStore {
    /// An empty store of namespace `ns`.
    pub fn new(ns: u8) -> MemStore {
        MemStore {
            ns,
            data: BTreeMap::new(),
        }
    }

    /// Applies `batch`; refuses (changing nothing) range deletes, entries without an
    /// explicit version, expiring values and other namespaces.
    pub fn apply(&mut self, batch: &WriteBatch) -> Result<()> {
        let mut staged = Vec::with_capacity(batch.len());
        for op in batch.iter_ops() {
            let e = match op {
                BatchOp::Point(e) => e,
                BatchOp::RangeDelete(_) => {
                    return Err(Error::InvalidArgument("MemStore: range delete".into()))
                }
            };
            let (Some(version), Some(&[ns, cf])) = (e.version, e.logical_key.get(..PREFIX_LEN))
            else {
                return Err(Error::InvalidArgument(
                    "MemStore: entry without an explicit version".into(),
                ));
            };
            if ns != self.ns {
                return Err(Error::InvalidArgument(format!(
                    "MemStore of namespace {} got namespace {ns}",
                    self.ns
                )));
            }
            let value = match e.kind {
                Kind::Put => Some(e.value.to_vec()),
                Kind::Delete => None,
                k => {
                    return Err(Error::InvalidArgument(format!(
                        "MemStore: entry kind {k:?}"
                    )))
                }
            };
            staged.push(((cf, e.logical_key[PREFIX_LEN..].to_vec()), version, value));
        }
        for (k, version, value) in staged {
            self.data.entry(k).or_default().insert(version, value);
        }
        Ok(())
    }
}

impl MvccRead for MemStore {
    fn ns(&self) -> u8 {
        self.ns
    }

    fn get_versioned(&self, cf: u8, key: &[u8], ts: u64) -> Result<Option<(u64, Vec<u8>)>> {
        let newest = self
            .data
            .get(&(cf, key.to_vec()))
            .and_then(|versions| versions.range(..=ts).next_back());
        Ok(newest.and_then(|(v, value)| value.clone().map(|value| (*v, value))))
    }

    fn next_key(
        &self,
        cf: u8,
        from: &[u8],
        end: Option<&[u8]>,
        ts: u64,
    ) -> Result<Option<Vec<u8>>> {
        let range = self
            .data
            .range((Bound::Included((cf, from.to_vec())), Bound::Unbounded));
        for ((c, key), versions) in range {
            if *c != cf || end.is_some_and(|end| key.as_slice() >= end) {
                break;
            }
            if let Some((_, Some(_))) = versions.range(..=ts).next_back() {
                return Ok(Some(key.clone()));
            }
        }
        Ok(None)
    }
}

//! The region model: a key range replicated by one Raft group, its epoch and
//! peers, routing checks, and its persistence in the engine's meta namespace.

use crate::codec::{put_bytes, put_u64, Reader};
use crate::error::{Error, Result};
use nokv::{Db, Durability, KeySpace, ReadOptions, WriteBatch, WriteOptions};
use std::collections::{BTreeMap, HashMap};

/// Region versions: `version` grows with splits and merges, `conf_version` with membership changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Epoch {
    /// Bumped by split and merge.
    pub version: u64,
    /// Bumped by conf changes.
    pub conf_version: u64,
}

/// Whether a replica votes or only receives the log (a new replica catching up).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PeerRole {
    /// Counts toward quorum and may lead.
    #[default]
    Voter,
    /// Receives the log; neither votes nor counts toward quorum.
    Learner,
}

/// One replica of a region: which store holds it, its raft peer id and its role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerMeta {
    /// The store (node) holding the replica.
    pub store_id: u64,
    /// The raft peer id (unique in the cluster).
    pub peer_id: u64,
    /// Voter or learner.
    pub role: PeerRole,
}

impl PeerMeta {
    /// A voting replica.
    pub fn voter(store_id: u64, peer_id: u64) -> PeerMeta {
        PeerMeta {
            store_id,
            peer_id,
            role: PeerRole::Voter,
        }
    }

    /// A learner replica.
    pub fn learner(store_id: u64, peer_id: u64) -> PeerMeta {
        PeerMeta {
            store_id,
            peer_id,
            role: PeerRole::Learner,
        }
    }
}

/// A region: the key range `[start_key, end_key)` (empty end: unbounded), its epoch and peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionDescriptor {
    /// Region id (unique in the cluster).
    pub id: u64,
    /// First key of the range (inclusive).
    pub start_key: Vec<u8>,
    /// End of the range (exclusive); empty means no upper bound.
    pub end_key: Vec<u8>,
    /// Split/merge and membership versions.
    pub epoch: Epoch,
    /// Replicas.
    pub peers: Vec<PeerMeta>,
}

/// Key space of region descriptors: namespace `nokv::NS_META`, default column family.
pub const META_SPACE: KeySpace = KeySpace::new(nokv::NS_META, nokv::CF_DEFAULT);
/// Prefix of region descriptor keys in [`META_SPACE`]; followed by the region id (u64 BE).
pub const REGION_KEY_PREFIX: &[u8] = b"region/";
/// Descriptor format: 2 adds each peer's role (format 1, all voters, still decodes).
const FORMAT: u8 = 2;

impl RegionDescriptor {
    /// Whether `key` falls in the region's range.
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start_key.as_slice()
            && (self.end_key.is_empty() || key < self.end_key.as_slice())
    }

    /// `KeyNotInRegion` unless the region holds `key`.
    pub fn check_key(&self, key: &[u8]) -> Result<()> {
        if self.contains(key) {
            Ok(())
        } else {
            Err(Error::KeyNotInRegion {
                key: key.to_vec(),
                region: self.id,
                start: self.start_key.clone(),
                end: self.end_key.clone(),
            })
        }
    }

    /// `EpochNotMatch` unless `epoch` is the region's current epoch.
    pub fn check_epoch(&self, epoch: &Epoch) -> Result<()> {
        if *epoch == self.epoch {
            Ok(())
        } else {
            Err(Error::EpochNotMatch {
                request: *epoch,
                current: Box::new(self.clone()),
            })
        }
    }

    /// The replica on `store_id`, if any.
    pub fn peer_on_store(&self, store_id: u64) -> Option<PeerMeta> {
        self.peers.iter().copied().find(|p| p.store_id == store_id)
    }

    /// The replica with raft peer id `peer_id`, if any.
    pub fn peer(&self, peer_id: u64) -> Option<PeerMeta> {
        self.peers.iter().copied().find(|p| p.peer_id == peer_id)
    }

    /// `format u8 | id | version | conf_version | start | end | peer count u32 |
    /// (store, peer, role u8)*` (role: 0 voter, 1 learner).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.start_key.len() + self.end_key.len());
        out.push(FORMAT);
        put_u64(&mut out, self.id);
        put_u64(&mut out, self.epoch.version);
        put_u64(&mut out, self.epoch.conf_version);
        put_bytes(&mut out, &self.start_key);
        put_bytes(&mut out, &self.end_key);
        out.extend_from_slice(&(self.peers.len() as u32).to_be_bytes());
        for p in &self.peers {
            put_u64(&mut out, p.store_id);
            put_u64(&mut out, p.peer_id);
            out.push(match p.role {
                PeerRole::Voter => 0,
                PeerRole::Learner => 1,
            });
        }
        out
    }

    /// Decodes [`RegionDescriptor::encode`]'s output.
    pub fn decode(buf: &[u8]) -> Result<RegionDescriptor> {
        let mut r = Reader::new(buf, "region descriptor");
        let format = r.u8()?;
        if format != FORMAT && format != 1 {
            return Err(Error::Corrupt {
                what: "region descriptor",
                detail: format!("unknown format {format}"),
            });
        }
        let id = r.u64()?;
        let epoch = Epoch {
            version: r.u64()?,
            conf_version: r.u64()?,
        };
        let start_key = r.bytes()?.to_vec();
        let end_key = r.bytes()?.to_vec();
        let n = r.u32()? as usize;
        let mut peers = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            let (store_id, peer_id) = (r.u64()?, r.u64()?);
            let role = match format {
                1 => PeerRole::Voter,
                _ => match r.u8()? {
                    0 => PeerRole::Voter,
                    1 => PeerRole::Learner,
                    other => {
                        return Err(Error::Corrupt {
                            what: "region descriptor",
                            detail: format!("unknown peer role {other}"),
                        })
                    }
                },
            };
            peers.push(PeerMeta {
                store_id,
                peer_id,
                role,
            });
        }
        r.finish()?;
        Ok(RegionDescriptor {
            id,
            start_key,
            end_key,
            epoch,
            peers,
        })
    }
}

/// The meta key of region `id`.
pub fn region_key(id: u64) -> Vec<u8> {
    let mut k = REGION_KEY_PREFIX.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// Writes `desc` to the meta namespace, synced (it must be durable before anyone acts on it).
pub fn save_region(db: &Db, desc: &RegionDescriptor) -> Result<()> {
    let mut b = WriteBatch::new();
    b.put_in(META_SPACE, &region_key(desc.id), &desc.encode());
    let wo = WriteOptions {
        durability: Some(Durability::Sync),
    };
    db.write(&b, &wo)
        .map_err(|e| Error::engine(format!("persist region {}", desc.id), e))
}

/// Deletes the persisted descriptor of region `id` (synced): a removed replica.
pub fn delete_region(db: &Db, id: u64) -> Result<()> {
    let mut b = WriteBatch::new();
    b.delete_in(META_SPACE, &region_key(id));
    let wo = WriteOptions {
        durability: Some(Durability::Sync),
    };
    db.write(&b, &wo)
        .map_err(|e| Error::engine(format!("delete region {id}"), e))
}

/// Every region descriptor persisted in `db`, by id.
pub fn load_regions(db: &Db) -> Result<Vec<RegionDescriptor>> {
    let ro = ReadOptions {
        prefix: Some(REGION_KEY_PREFIX.to_vec()),
        ..Default::default()
    };
    let mut it = db
        .iter_in(META_SPACE, ro)
        .map_err(|e| Error::engine("read region descriptors", e))?;
    it.seek_to_first();
    let mut out = Vec::new();
    // Bounded by the number of persisted regions.
    while it.valid() {
        out.push(RegionDescriptor::decode(it.value())?);
        it.next();
    }
    it.status()
        .map_err(|e| Error::engine("read region descriptors", e))?;
    Ok(out)
}

/// Regions by id and by start key; changes are persisted before memory is updated.
#[derive(Debug, Default, Clone)]
pub struct RegionMap {
    by_start: BTreeMap<Vec<u8>, u64>,
    regions: HashMap<u64, RegionDescriptor>,
}

impl RegionMap {
    /// An empty map.
    pub fn new() -> RegionMap {
        RegionMap::default()
    }

    /// Adds or replaces a region in memory only (it is already persisted, e.g. just loaded).
    pub fn insert_loaded(&mut self, desc: RegionDescriptor) {
        if let Some(old) = self.regions.get(&desc.id) {
            self.by_start.remove(&old.start_key);
        }
        self.by_start.insert(desc.start_key.clone(), desc.id);
        self.regions.insert(desc.id, desc);
    }

    /// Persists `desc` in `db` (synced), then adds or replaces it in memory.
    pub fn insert(&mut self, db: &Db, desc: RegionDescriptor) -> Result<()> {
        save_region(db, &desc)?;
        self.insert_loaded(desc);
        Ok(())
    }

    /// The region with this id.
    pub fn get(&self, id: u64) -> Option<&RegionDescriptor> {
        self.regions.get(&id)
    }

    /// The region whose range holds `key`.
    pub fn locate(&self, key: &[u8]) -> Option<&RegionDescriptor> {
        let (_, id) = self.by_start.range(..=key.to_vec()).next_back()?;
        self.regions.get(id).filter(|r| r.contains(key))
    }

    /// Regions in key order.
    pub fn iter(&self) -> impl Iterator<Item = &RegionDescriptor> {
        self.by_start.values().filter_map(|id| self.regions.get(id))
    }

    /// Number of regions.
    pub fn len(&self) -> usize {
        self.regions.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(id: u64, start: &[u8], end: &[u8]) -> RegionDescriptor {
        RegionDescriptor {
            id,
            start_key: start.to_vec(),
            end_key: end.to_vec(),
            epoch: Epoch {
                version: 1,
                conf_version: 1,
            },
            peers: vec![PeerMeta::voter(1, id)],
        }
    }

    #[test]
    fn ranges_epochs_and_codec() {
        let r = region(3, b"b", b"d");
        assert!(r.contains(b"b") && r.contains(b"c") && !r.contains(b"d") && !r.contains(b"a"));
        assert!(matches!(
            r.check_key(b"z"),
            Err(Error::KeyNotInRegion { region: 3, .. })
        ));
        assert!(r.check_epoch(&r.epoch).is_ok());
        let stale = Epoch {
            version: 0,
            conf_version: 1,
        };
        assert!(matches!(
            r.check_epoch(&stale),
            Err(Error::EpochNotMatch { .. })
        ));
        assert_eq!(RegionDescriptor::decode(&r.encode()).expect("decode"), r);
        let mut mixed = r.clone();
        mixed.peers.push(PeerMeta::learner(2, 30));
        assert_eq!(
            RegionDescriptor::decode(&mixed.encode()).expect("decode"),
            mixed
        );
        // Format 1 (before roles): every peer a voter.
        let mut v1 = vec![1u8];
        v1.extend_from_slice(&r.encode()[1..r.encode().len() - 1]);
        assert_eq!(RegionDescriptor::decode(&v1).expect("format 1"), r);
        assert!(RegionDescriptor::decode(&r.encode()[..10]).is_err());
        let open = region(4, b"d", b"");
        assert!(open.contains(b"zzzz"));
    }

    #[test]
    fn descriptors_persist_and_locate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(dir.path(), nokv::Options::default()).expect("open");
        let mut map = RegionMap::new();
        map.insert(&db, region(1, b"", b"m")).expect("insert");
        map.insert(&db, region(2, b"m", b"")).expect("insert");
        assert_eq!(map.locate(b"a").map(|r| r.id), Some(1));
        assert_eq!(map.locate(b"m").map(|r| r.id), Some(2));
        assert_eq!(map.locate(b"zz").map(|r| r.id), Some(2));
        drop(db);
        let db = Db::open(dir.path(), nokv::Options::default()).expect("reopen");
        let loaded = load_regions(&db).expect("load");
        assert_eq!(loaded.len(), 2);
        assert_eq!(loaded[0], region(1, b"", b"m"));
    }
}

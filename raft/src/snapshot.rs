//! Raft snapshots of a region, for a replica that is new or lags behind the log the
//! leader still holds: the leader exports the region's data as of an applied index (engine
//! II's logical region snapshot: SST files plus a checksummed manifest, one directory per
//! data range), the replica ingests it in place of what it had.
//!
//! raft-rs's snapshot message carries only metadata (index, term, configuration) and the
//! region descriptor ([`encode_snapshot_data`]); the files travel beside it (the transport
//! streams the directory named by [`SnapshotKey::dir_name`] before it delivers the message).
//!
//! Applying is crash-safe ([`ApplySnapshot::run`]): a synced marker names the snapshot
//! before the region's old data is deleted; the data is ingested, the region's applied
//! index (and the snapshot's term) made durable by a flush, and only then the marker
//! removed. A restart that finds a marker applies the snapshot again from its directory
//! ([`recover_pending`]) before the region's peer starts.

use crate::codec::{put_bytes, put_u64, Reader};
use crate::error::{Error, Result};
use crate::region::{region_key, RegionDescriptor, META_SPACE};
use nokv::{Db, Durability, ExportOptions, KeySpace, RegionRange, WriteBatch, WriteOptions};
use raft::prelude::{ConfState, Snapshot};
use std::path::{Path, PathBuf};

/// Engine keys that hold a region's data: a key range of one namespace, and the column
/// families the owner writes there (a snapshot replaces exactly these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataRange {
    /// Namespace and user-key bounds (every column family is exported).
    pub range: RegionRange,
    /// Column families whose old data an applied snapshot deletes.
    pub cfs: &'static [u8],
}

/// Which engine key ranges hold a region's data.
pub type DataRanges = fn(&RegionDescriptor) -> Vec<DataRange>;

/// The data of a region of the ordered-KV namespace: its bounds in `NS_KV`, in the
/// default, lock and write column families.
pub fn kv_ranges(desc: &RegionDescriptor) -> Vec<DataRange> {
    vec![DataRange {
        range: RegionRange {
            ns: nokv::NS_KV,
            start: desc.start_key.clone(),
            end: (!desc.end_key.is_empty()).then(|| desc.end_key.clone()),
        },
        cfs: &[nokv::CF_DEFAULT, nokv::CF_LOCK, nokv::CF_WRITE],
    }]
}

/// Names one snapshot: a region's data at an applied index and its term.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotKey {
    /// The region.
    pub region: u64,
    /// The term of the entry at `index`.
    pub term: u64,
    /// The applied index the data stands for.
    pub index: u64,
}

impl SnapshotKey {
    /// The directory name of the snapshot's files (under the core's snapshot directory).
    pub fn dir_name(&self) -> String {
        format!("r{}-t{}-i{}", self.region, self.term, self.index)
    }
}

/// `format u8 (1) | descriptor bytes`: what a raft snapshot message carries besides its metadata.
pub fn encode_snapshot_data(desc: &RegionDescriptor) -> Vec<u8> {
    let mut out = vec![1u8];
    put_bytes(&mut out, &desc.encode());
    out
}

/// Decodes [`encode_snapshot_data`]'s output.
pub fn decode_snapshot_data(buf: &[u8]) -> Result<RegionDescriptor> {
    let mut r = Reader::new(buf, "raft snapshot data");
    let format = r.u8()?;
    if format != 1 {
        return Err(Error::Corrupt {
            what: "raft snapshot data",
            detail: format!("unknown format {format}"),
        });
    }
    let desc = RegionDescriptor::decode(r.bytes()?)?;
    r.finish()?;
    Ok(desc)
}

/// A leader's export of a region at an applied index (file IO: run it off the core's
/// thread, then hand it back with [`crate::RaftCore::snapshot_exported`]).
pub struct SnapshotTask {
    /// Which snapshot this is.
    pub key: SnapshotKey,
    /// The region as of `key.index`.
    pub region: RegionDescriptor,
    pub(crate) conf_state: ConfState,
    /// The engine's state when the region was applied through `key.index`.
    pub(crate) engine: nokv::Snapshot,
    /// Where the files go.
    pub dir: PathBuf,
    pub(crate) ranges: Vec<DataRange>,
}

impl SnapshotTask {
    /// Exports the region's data (every version) into `dir`, one sub-directory per range;
    /// an older export in `dir` is replaced.
    pub fn run(&self, db: &Db) -> Result<()> {
        export_ranges(db, self.key.region, &self.engine, &self.dir, &self.ranges)
    }

    /// The raft snapshot message body for this export.
    pub(crate) fn raft_snapshot(&self) -> Snapshot {
        let mut s = Snapshot::default();
        let m = s.mut_metadata();
        m.index = self.key.index;
        m.term = self.key.term;
        m.set_conf_state(self.conf_state.clone());
        s.data = encode_snapshot_data(&self.region).into();
        s
    }
}

/// Exports `ranges` of `region` as of `engine` into `dir` (one sub-directory per range), as
/// a raft snapshot or a move to another core does; an older export in `dir` is replaced.
pub fn export_ranges(
    db: &Db,
    region: u64,
    engine: &nokv::Snapshot,
    dir: &Path,
    ranges: &[DataRange],
) -> Result<()> {
    let io = |what: &str, e: std::io::Error| Error::Snapshot {
        region,
        detail: format!("{what} {}: {e}", dir.display()),
    };
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| io("remove", e))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| io("create", e))?;
    for (i, range) in ranges.iter().enumerate() {
        let opts = ExportOptions {
            snapshot: Some(engine.clone()),
            ..ExportOptions::default()
        };
        db.export_range(&range.range, &part_dir(dir, i), &opts)
            .map_err(|e| Error::engine(format!("export region {region}"), e))?;
    }
    Ok(())
}

fn part_dir(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("part-{i}"))
}

/// Prefix of the markers of snapshots being applied, in [`META_SPACE`]; followed by the region id.
const APPLYING_PREFIX: &[u8] = b"snapshot-applying/";
/// Prefix of the (index, term) of the last snapshot applied per region, in [`META_SPACE`].
const APPLIED_PREFIX: &[u8] = b"snapshot-applied/";

fn meta_key(prefix: &[u8], region: u64) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(&region.to_be_bytes());
    k
}

/// A replica's application of a received snapshot (file IO: part of a round's apply).
#[derive(Debug, Clone)]
pub struct ApplySnapshot {
    /// Which snapshot.
    pub key: SnapshotKey,
    /// The region as the snapshot describes it.
    pub region: RegionDescriptor,
    /// Where its files are (received by the transport).
    pub dir: PathBuf,
    pub(crate) ranges: Vec<DataRange>,
    /// Other regions of the core that the snapshot's region covers with a newer epoch (a
    /// merge into it that this replica missed): their descriptors and merge states are
    /// deleted in the same durable step (recorded in the marker too).
    pub(crate) retire: Vec<u64>,
}

impl ApplySnapshot {
    /// The application of the export in `dir` of `region` at `key` (a move between cores
    /// builds one; a received raft snapshot is built by the core).
    pub fn new(
        key: SnapshotKey,
        region: RegionDescriptor,
        dir: PathBuf,
        ranges: DataRanges,
    ) -> ApplySnapshot {
        let ranges = ranges(&region);
        ApplySnapshot {
            key,
            region,
            dir,
            ranges,
            retire: Vec::new(),
        }
    }

    fn marker(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_u64(&mut out, self.key.term);
        put_u64(&mut out, self.key.index);
        put_bytes(&mut out, self.dir.to_string_lossy().as_bytes());
        put_bytes(&mut out, &self.region.encode());
        // Absent when empty: markers written before the field read the same.
        if !self.retire.is_empty() {
            put_u64(&mut out, self.retire.len() as u64);
            for r in &self.retire {
                put_u64(&mut out, *r);
            }
        }
        out
    }

    /// Replaces the region's data with the snapshot's (see the module docs for the order
    /// that makes it crash-safe); removes the files afterwards.
    pub fn run(&self, db: &Db) -> Result<()> {
        let region = self.key.region;
        let synced = WriteOptions {
            durability: Some(Durability::Sync),
        };
        let engine =
            |what: &str, e| Error::engine(format!("{what} (snapshot of region {region})"), e);
        let mut mark = WriteBatch::new();
        mark.put_in(
            META_SPACE,
            &meta_key(APPLYING_PREFIX, region),
            &self.marker(),
        );
        db.write(&mark, &synced)
            .map_err(|e| engine("record the snapshot being applied", e))?;
        self.replace_data(db)?;
        let mut done = WriteBatch::new();
        done.delete_in(META_SPACE, &meta_key(APPLYING_PREFIX, region));
        db.write(&done, &synced)
            .map_err(|e| engine("clear the snapshot marker", e))?;
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(region, dir = %self.dir.display(), error = %e, "could not remove an applied snapshot");
        }
        Ok(())
    }

    /// Deletes the region's data, ingests the snapshot's, and makes the applied index,
    /// the descriptor and the snapshot's (index, term) durable. Idempotent.
    fn replace_data(&self, db: &Db) -> Result<()> {
        let region = self.key.region;
        let engine =
            |what: &str, e| Error::engine(format!("{what} (snapshot of region {region})"), e);
        let mut del = WriteBatch::new();
        for DataRange { range: r, cfs } in &self.ranges {
            // Keys are never empty: "\0" is the smallest start.
            let start: &[u8] = if r.start.is_empty() { b"\0" } else { &r.start };
            for &cf in *cfs {
                del.delete_range_in(KeySpace::new(r.ns, cf), start, r.end.as_deref());
            }
        }
        db.write(
            &del,
            &WriteOptions {
                durability: Some(Durability::Sync),
            },
        )
        .map_err(|e| engine("delete the old data", e))?;
        for (i, r) in self.ranges.iter().enumerate() {
            db.ingest(&part_dir(&self.dir, i), Some(&r.range))
                .map_err(|e| engine("ingest", e))?;
        }
        let mut meta = WriteBatch::new();
        meta.put_in(META_SPACE, &region_key(region), &self.region.encode());
        put_log_floor(&mut meta, region, self.key.index, self.key.term);
        for r in &self.retire {
            meta.delete_in(META_SPACE, &region_key(*r));
            crate::merge::put_merge_state(&mut meta, *r, None);
        }
        db.apply_unlogged(&meta, Some((region, self.key.index)))
            .map_err(|e| engine("record the applied index", e))?;
        db.flush().map_err(|e| engine("flush", e))
    }
}

/// Records in `batch` that `region`'s log starts after (`index`, `term`): its data up to
/// there came from elsewhere (a snapshot, or the parent of a split).
pub(crate) fn put_log_floor(batch: &mut WriteBatch, region: u64, index: u64, term: u64) {
    let mut at = Vec::with_capacity(16);
    put_u64(&mut at, index);
    put_u64(&mut at, term);
    batch.put_in(META_SPACE, &meta_key(APPLIED_PREFIX, region), &at);
}

/// Appends (synced) a checkpoint record that starts `region`'s raft log after (`index`,
/// `term`) in the WAL, so that a replay drops whatever older entries of the region the WAL
/// still holds (it was on this core before) instead of finding a gap. For a region whose
/// data arrived at that index from elsewhere (a move between cores), before its peer starts;
/// `term_vote`: the moved peer's raft term and vote, kept over a restart (else the term of
/// the entry at `index` and no vote).
pub fn write_log_start(
    db: &Db,
    region: u64,
    index: u64,
    term: u64,
    term_vote: Option<(u64, u64)>,
) -> Result<()> {
    let (current, vote) = term_vote.filter(|(t, _)| *t >= term).unwrap_or((term, 0));
    let c = crate::codec::Checkpoint {
        hard_state: raft::prelude::HardState {
            term: current,
            vote,
            commit: index,
            ..Default::default()
        },
        truncated_index: index,
        truncated_term: term,
    };
    let record = crate::codec::encode_checkpoint(region, &c);
    db.append_opaque(
        &[(crate::codec::TAG_CHECKPOINT, record.as_slice())],
        &WriteOptions {
            durability: Some(Durability::Sync),
        },
    )
    .map(|_| ())
    .map_err(|e| Error::engine(format!("record where region {region}'s log starts"), e))
}

/// The (index, term) of the last snapshot applied to `region` (a floor for its log).
pub fn applied_snapshot(db: &Db, region: u64) -> Result<Option<(u64, u64)>> {
    let v = db
        .get_in(
            META_SPACE,
            &meta_key(APPLIED_PREFIX, region),
            &Default::default(),
        )
        .map_err(|e| Error::engine(format!("read the snapshot floor of region {region}"), e))?;
    let Some(v) = v else {
        return Ok(None);
    };
    let mut r = Reader::new(&v, "snapshot floor");
    let at = (r.u64()?, r.u64()?);
    r.finish()?;
    Ok(Some(at))
}

/// Finishes every snapshot application a crash interrupted (a marker without its end):
/// ingests it again from its directory. Call before the core's peers start.
pub fn recover_pending(db: &Db, ranges: DataRanges) -> Result<usize> {
    let ro = nokv::ReadOptions {
        prefix: Some(APPLYING_PREFIX.to_vec()),
        ..Default::default()
    };
    let mut pending = Vec::new();
    {
        let mut it = db
            .iter_in(META_SPACE, ro)
            .map_err(|e| Error::engine("read snapshot markers", e))?;
        it.seek_to_first();
        while it.valid() {
            let mut r = Reader::new(it.value(), "snapshot marker");
            let (term, index) = (r.u64()?, r.u64()?);
            let dir = PathBuf::from(String::from_utf8_lossy(r.bytes()?).into_owned());
            let region = RegionDescriptor::decode(r.bytes()?)?;
            let mut retire = Vec::new();
            if !r.is_empty() {
                // Bounded by the marker's length: each id takes 8 bytes.
                for _ in 0..r.u64()? {
                    retire.push(r.u64()?);
                }
            }
            r.finish()?;
            pending.push(ApplySnapshot {
                key: SnapshotKey {
                    region: region.id,
                    term,
                    index,
                },
                ranges: ranges(&region),
                region,
                dir,
                retire,
            });
            it.next();
        }
        it.status()
            .map_err(|e| Error::engine("read snapshot markers", e))?;
    }
    for p in &pending {
        tracing::warn!(
            region = p.key.region,
            index = p.key.index,
            "finishing a snapshot a crash interrupted"
        );
        p.run(db)?;
    }
    Ok(pending.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::PeerMeta;
    use nokv::{Options, ReadOptions};

    fn region() -> RegionDescriptor {
        RegionDescriptor {
            id: 9,
            start_key: b"a".to_vec(),
            end_key: b"m".to_vec(),
            epoch: Default::default(),
            peers: vec![PeerMeta::voter(1, 90)],
        }
    }

    fn get(db: &Db, key: &[u8]) -> Option<Vec<u8>> {
        db.get_in(KeySpace::KV, key, &ReadOptions::default())
            .expect("get")
    }

    #[test]
    fn a_snapshot_interrupted_after_the_range_delete_is_finished_on_reopen() {
        let src_dir = tempfile::tempdir().expect("tempdir");
        let dst_dir = tempfile::tempdir().expect("tempdir");
        let src = Db::open(src_dir.path(), Options::default()).expect("open");
        for k in [&b"b"[..], b"c", b"z"] {
            src.put(k, b"new").expect("put");
        }
        let desc = region();
        let task = SnapshotTask {
            key: SnapshotKey {
                region: 9,
                term: 2,
                index: 40,
            },
            region: desc.clone(),
            conf_state: ConfState::default(),
            engine: src.snapshot(),
            dir: dst_dir.path().join("snap").join("r9-t2-i40"),
            ranges: kv_ranges(&desc),
        };
        task.run(&src).expect("export");

        let db_dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(db_dir.path(), Options::default()).expect("open");
        db.put(b"b", b"old").expect("put");
        db.put(b"d", b"stale").expect("put");
        db.put(b"x", b"outside").expect("put");
        // A region the snapshot's covers with an older epoch: retired with the snapshot.
        let covered = RegionDescriptor {
            id: 5,
            start_key: b"f".to_vec(),
            end_key: b"m".to_vec(),
            ..region()
        };
        crate::region::save_region(&db, &covered).expect("save");
        let apply = ApplySnapshot {
            key: task.key,
            region: desc.clone(),
            dir: task.dir.clone(),
            ranges: kv_ranges(&desc),
            retire: vec![5],
        };
        // The steps of `run` up to the crash: the marker, then the range delete.
        let synced = WriteOptions {
            durability: Some(Durability::Sync),
        };
        let mut mark = WriteBatch::new();
        mark.put_in(META_SPACE, &meta_key(APPLYING_PREFIX, 9), &apply.marker());
        db.write(&mark, &synced).expect("marker");
        let mut del = WriteBatch::new();
        del.delete_range_in(KeySpace::KV, b"a", Some(b"m"));
        db.write(&del, &synced).expect("delete");
        drop(db);

        let db = Db::open(db_dir.path(), Options::default()).expect("reopen");
        assert_eq!(get(&db, b"b"), None, "the crash left the range empty");
        assert_eq!(recover_pending(&db, kv_ranges).expect("recover"), 1);
        assert_eq!(get(&db, b"b"), Some(b"new".to_vec()));
        assert_eq!(get(&db, b"c"), Some(b"new".to_vec()));
        assert_eq!(get(&db, b"d"), None, "stale data in the range is gone");
        assert_eq!(
            get(&db, b"x"),
            Some(b"outside".to_vec()),
            "outside the range"
        );
        assert_eq!(get(&db, b"z"), None, "the source's key outside the range");
        assert_eq!(applied_snapshot(&db, 9).expect("floor"), Some((40, 2)));
        assert_eq!(db.applied_index(9), Some(40));
        let ids: Vec<u64> = crate::region::load_regions(&db)
            .expect("regions")
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(
            ids,
            vec![9],
            "the covered region is retired by the marker's list"
        );
        assert_eq!(
            recover_pending(&db, kv_ranges).expect("again"),
            0,
            "marker cleared"
        );
        assert!(
            !task.dir.exists(),
            "the applied snapshot's files are removed"
        );
    }

    #[test]
    fn snapshot_data_round_trips_and_rejects_garbage() {
        let d = region();
        assert_eq!(
            decode_snapshot_data(&encode_snapshot_data(&d)).expect("decode"),
            d
        );
        assert!(decode_snapshot_data(b"\x07junk").is_err());
        assert!(decode_snapshot_data(&encode_snapshot_data(&d)[..5]).is_err());
    }
}
